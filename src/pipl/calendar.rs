//! Working days on the mainland calendar: weekends off, public holidays off, make-up
//! working days (调休) on. Loaded from `policies/holidays.toml`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use time::{Date, Weekday};

const BUILTIN: &str = include_str!("../../policies/holidays.toml");

#[derive(Debug, thiserror::Error)]
#[error("holidays.toml: {0}")]
pub struct CalendarError(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    #[serde(default)]
    years: Vec<i32>,
    #[serde(default)]
    holidays: Vec<String>,
    #[serde(default)]
    workdays: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WorkCalendar {
    holidays: BTreeSet<Date>,
    workdays: BTreeSet<Date>,
    years: BTreeSet<i32>,
}

fn parse_date(s: &str) -> Result<Date, CalendarError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).map_err(|_| CalendarError(format!("{s:?} is not a date YYYY-MM-DD")))
}

impl WorkCalendar {
    pub fn load(dir: Option<&Path>) -> Result<Self, CalendarError> {
        let text = match dir.map(|d| d.join("holidays.toml")) {
            Some(path) if path.exists() => {
                std::fs::read_to_string(&path).map_err(|e| CalendarError(e.to_string()))?
            }
            Some(path) => {
                tracing::warn!(path = %path.display(), "no holidays.toml; using the built-in calendar");
                BUILTIN.to_owned()
            }
            None => BUILTIN.to_owned(),
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        let raw: RawCalendar = toml::from_str(text).map_err(|e| CalendarError(e.to_string()))?;
        let holidays = raw
            .holidays
            .iter()
            .map(|d| parse_date(d))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let workdays = raw
            .workdays
            .iter()
            .map(|d| parse_date(d))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if let Some(d) = holidays.intersection(&workdays).next() {
            return Err(CalendarError(format!(
                "{d} is both a holiday and a working day"
            )));
        }
        Ok(Self {
            holidays,
            workdays,
            years: raw.years.into_iter().collect(),
        })
    }

    pub fn is_working_day(&self, d: Date) -> bool {
        if self.workdays.contains(&d) {
            return true;
        }
        if self.holidays.contains(&d) {
            return false;
        }
        !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
    }

    /// Whether the calendar lists holidays for this year (a deadline in an unlisted
    /// year counts weekends only, and the vault warns).
    pub fn covers(&self, year: i32) -> bool {
        self.years.contains(&year)
    }

    /// The date `n` working days after `received` (the day of receipt does not count).
    pub fn add_working_days(&self, received: Date, n: u32) -> Date {
        let mut d = received;
        let mut left = n;
        while left > 0 {
            d = d.next_day().unwrap_or(d);
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn weekends_holidays_and_make_up_days() {
        let c = WorkCalendar::load(None).unwrap();
        assert!(c.covers(2026));
        assert!(!c.is_working_day(date!(2026 - 11 - 21)), "Saturday");
        assert!(c.is_working_day(date!(2026 - 11 - 23)), "Monday");
        assert!(!c.is_working_day(date!(2026 - 10 - 01)), "National Day");
        assert!(c.is_working_day(date!(2026 - 10 - 10)), "make-up Saturday");
        // Ordinary weeks: 15 working days is three calendar weeks.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 23), 15),
            date!(2026 - 12 - 14)
        );
        // Across weekends only: from Friday, 1 working day is Monday.
        assert_eq!(
            c.add_working_days(date!(2026 - 11 - 20), 1),
            date!(2026 - 11 - 23)
        );
        // Across the National Day holiday with its make-up days: received Wed 30 Sep;
        // Oct 1-7 are off, Sun 20 Sep is behind us, Sat 10 Oct counts.
        assert_eq!(
            c.add_working_days(date!(2026 - 09 - 30), 1),
            date!(2026 - 10 - 08)
        );
        assert_eq!(
            c.add_working_days(date!(2026 - 09 - 30), 3),
            date!(2026 - 10 - 10)
        );
        assert_eq!(
            c.add_working_days(date!(2026 - 09 - 30), 15),
            date!(2026 - 10 - 27)
        );
        // Spring Festival: received Fri 13 Feb; Sat 14 Feb is a make-up working day,
        // 15-23 Feb off.
        assert_eq!(
            c.add_working_days(date!(2026 - 02 - 13), 1),
            date!(2026 - 02 - 14)
        );
        assert_eq!(
            c.add_working_days(date!(2026 - 02 - 13), 2),
            date!(2026 - 02 - 24)
        );
    }

    #[test]
    fn broken_calendars_are_refused() {
        assert!(WorkCalendar::parse("holidays = [\"2026-13-01\"]").is_err());
        assert!(
            WorkCalendar::parse("holidays = [\"2026-01-01\"]\nworkdays = [\"2026-01-01\"]")
                .is_err()
        );
        assert!(WorkCalendar::parse("holiday = []").is_err());
    }
}
