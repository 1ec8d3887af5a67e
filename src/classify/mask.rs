//! Masking rules: what a caller allowed only `read_masked` sees.

use serde::Deserialize;
use serde_json::Value;

/// A masking rule from the classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Keep the first `start` and last `end` characters, replace the rest with `*`
    /// (`138****5678` is `{ keep_start = 3, keep_end = 4 }`).
    Keep { start: usize, end: usize },
    /// `z***@example.com`: first character of the local part and the domain.
    Email,
    /// `1990-**-**`: a date reduced to its year.
    YearOnly,
    /// The whole value replaced by `***`.
    Redact,
    /// Shown as is: the field is not sensitive enough to mask (e.g. a tier).
    None,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMask {
    Named(String),
    Keep { keep_start: usize, keep_end: usize },
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawMask::deserialize(d)? {
            RawMask::Keep {
                keep_start,
                keep_end,
            } => Ok(Self::Keep {
                start: keep_start,
                end: keep_end,
            }),
            RawMask::Named(name) => match name.as_str() {
                "email" => Ok(Self::Email),
                "year_only" => Ok(Self::YearOnly),
                "redact" => Ok(Self::Redact),
                "none" => Ok(Self::None),
                other => Err(serde::de::Error::custom(format!(
                    "unknown mask {other:?} (known: email, year_only, redact, none, or {{ keep_start, keep_end }})"
                ))),
            },
        }
    }
}

fn keep(s: &str, start: usize, end: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    // Never reveal more than half of a short value.
    let (start, end) = if start + end >= n {
        let half = n / 2;
        (start.min(half), 0)
    } else {
        (start, end)
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < start || i >= n - end { *c } else { '*' })
        .collect()
}

impl Mask {
    /// Masks a canonical value. `tags` values (JSON arrays) are masked item by item.
    pub fn apply(&self, canonical: &str, json: &Value) -> Value {
        match json {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => self.apply(s, &Value::Null),
                        _ => Value::String("***".into()),
                    })
                    .collect(),
            ),
            _ => Value::String(self.apply_str(canonical)),
        }
    }

    fn apply_str(&self, s: &str) -> String {
        match self {
            Self::Keep { start, end } => keep(s, *start, *end),
            Self::Email => match s.split_once('@') {
                Some((local, domain)) => {
                    format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
                }
                None => "***".into(),
            },
            Self::YearOnly => match s.get(0..4) {
                Some(y) if s.len() == 10 => format!("{y}-**-**"),
                _ => "***".into(),
            },
            Self::Redact => "***".into(),
            Self::None => s.to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(mask: &Mask, s: &str) -> Value {
        mask.apply(s, &Value::String(s.into()))
    }

    #[test]
    fn masks() {
        let phone = Mask::Keep { start: 3, end: 4 };
        assert_eq!(m(&phone, "13812345678"), json!("138****5678"));
        let name = Mask::Keep { start: 1, end: 0 };
        assert_eq!(m(&name, "张三丰"), json!("张**"));
        assert_eq!(m(&name, "张三"), json!("张*"));
        let id = Mask::Keep { start: 3, end: 4 };
        assert_eq!(m(&id, "11010519491231002X"), json!("110***********002X"));
        let card = Mask::Keep { start: 0, end: 4 };
        assert_eq!(m(&card, "6222021234567894"), json!("************7894"));
        assert_eq!(
            m(&Mask::Email, "li.wei@example.com"),
            json!("l***@example.com")
        );
        assert_eq!(m(&Mask::YearOnly, "1990-02-28"), json!("1990-**-**"));
        assert_eq!(m(&Mask::Redact, "anything"), json!("***"));
        assert_eq!(m(&Mask::None, "gold"), json!("gold"));
        // Short values never show more than half.
        assert_eq!(m(&phone, "1234"), json!("12**"));
        let tags = json!(["vip", "new"]);
        assert_eq!(Mask::Redact.apply("", &tags), json!(["***", "***"]));
    }
}
