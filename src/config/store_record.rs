//! Which store a data directory belongs to. The data directory holds the master key
//! file, the TLS material and the audit signing key of one vault; that vault's data is
//! in one store. On first open the store's URL is recorded in `DATA_DIR/piivault.toml`
//! (without a password), every command after that uses it, and a command that names a
//! different store is refused instead of quietly starting a second, empty vault.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use super::ConfigError;

/// The file in the data directory.
pub const RECORD_FILE: &str = "piivault.toml";

/// What `piivault.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRecord {
    /// The store's URL, without a password.
    pub database_url: String,
}

impl StoreRecord {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(RECORD_FILE)
    }

    /// The record in `data_dir`, if there is one.
    pub fn read(data_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = Self::path(data_dir);
        let bad = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let record: Self = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        Ok(Some(record))
    }

    /// Records `url` (its password left out; a relative SQLite path made absolute) as
    /// the store of `data_dir`. Written whole or not at all.
    pub fn write(data_dir: &Path, url: &str) -> Result<Self, ConfigError> {
        let record = Self {
            database_url: canonical(url)?,
        };
        let path = Self::path(data_dir);
        let fail = |e: std::io::Error| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let body = toml::to_string(&record).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let text = format!(
            "# The store this piivault data directory belongs to, recorded on first start.\n\
             # Every command run with this data directory uses it. No secrets here: a\n\
             # database password comes from PIIVAULT_DATABASE_PASSWORD or\n\
             # PIIVAULT_DATABASE_PASSWORD_FILE.\n{body}"
        );
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(record)
    }

    /// Whether `url` names this store (passwords and connection options aside).
    pub fn names_same_store(&self, url: &str) -> Result<bool, ConfigError> {
        Ok(identity(&self.database_url)? == identity(url)?)
    }
}

/// A store URL as the vault uses it: it may carry a password, so it never shows one
/// (`Debug` and `Display` leave it out).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Zeroizing<String>);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(Zeroizing::new(url))
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", redacted(&self.0))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redacted(&self.0))
    }
}

/// Query parameters that carry a secret (sqlx reads `password` from the query too).
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// `url` with every secret in it (the password, and a password given as a query
/// parameter) replaced by `replacement`, or left out when it is `None`.
fn scrub(u: &mut Url, replacement: Option<&str>) {
    if u.password().is_some() {
        let _ = u.set_password(replacement);
    }
    if u.query_pairs()
        .any(|(k, _)| SECRET_PARAMS.contains(&k.as_ref()))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter_map(
                |(k, v)| match (SECRET_PARAMS.contains(&k.as_ref()), replacement) {
                    (false, _) => Some((k.into_owned(), v.into_owned())),
                    (true, Some(r)) => Some((k.into_owned(), r.to_owned())),
                    (true, None) => None,
                },
            )
            .collect();
        if pairs.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
}

/// `url` without its secrets, for messages.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            scrub(&mut u, Some("***"));
            u.to_string()
        }
        Err(_) => "(an unreadable URL)".into(),
    }
}

/// The URL as recorded: no secret; SQLite paths absolute.
fn canonical(url: &str) -> Result<String, ConfigError> {
    let mut u = parse(url)?;
    scrub(&mut u, None);
    if u.scheme() == "sqlite" {
        let (path, query) = sqlite_parts(url);
        let absolute = std::path::absolute(&path)
            .map_err(|e| ConfigError::Invalid(format!("SQLite path {}: {e}", path.display())))?;
        return Ok(match query {
            Some(q) => format!("sqlite://{}?{q}", absolute.display()),
            None => format!("sqlite://{}", absolute.display()),
        });
    }
    Ok(u.to_string())
}

/// What makes two URLs the same store: for SQLite the database file, for PostgreSQL
/// the user, host, port and database.
fn identity(url: &str) -> Result<String, ConfigError> {
    let u = parse(url)?;
    Ok(match u.scheme() {
        "sqlite" => {
            let (path, _) = sqlite_parts(url);
            let path = std::fs::canonicalize(&path)
                .or_else(|_| std::path::absolute(&path))
                .unwrap_or(path);
            format!("sqlite:{}", path.display())
        }
        _ => format!(
            "postgres:{}@{}:{}/{}",
            u.username(),
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path().trim_start_matches('/')
        ),
    })
}

fn parse(url: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(url).map_err(|_| {
        ConfigError::Invalid(format!(
            "database URL {} cannot be read (use sqlite://PATH or postgres://USER@HOST/DB)",
            redacted(url)
        ))
    })?;
    match u.scheme() {
        "sqlite" | "postgres" | "postgresql" => Ok(u),
        other => Err(ConfigError::Invalid(format!(
            "database URL scheme {other:?} is not supported (use sqlite:// or postgres://)"
        ))),
    }
}

/// A sqlite:// URL's file path and query, as sqlx reads them (`sqlite://rel/path` is
/// relative to the working directory, `sqlite:///abs` absolute).
fn sqlite_parts(url: &str) -> (PathBuf, Option<&str>) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    match rest.split_once('?') {
        Some((path, query)) => (PathBuf::from(path), Some(query)),
        None => (PathBuf::from(rest), None),
    }
}

/// The recorded URL with the password from the environment, if one is set there.
pub fn with_password(url: &str) -> Result<DatabaseUrl, ConfigError> {
    let password = match super::env_secret("PIIVAULT_DATABASE_PASSWORD") {
        Some(p) => Some(p),
        None => match std::env::var_os("PIIVAULT_DATABASE_PASSWORD_FILE") {
            Some(path) => Some(super::read_secret_file(Path::new(&path))?),
            None => None,
        },
    };
    add_password(url, password.as_ref().map(|p| p.as_str()))
}

/// `url` with `password` (none, or a SQLite URL: as it is).
fn add_password(url: &str, password: Option<&str>) -> Result<DatabaseUrl, ConfigError> {
    let mut u = parse(url)?;
    let Some(password) = password.filter(|_| u.scheme() != "sqlite") else {
        return Ok(url.to_owned().into());
    };
    u.set_password(Some(password))
        .map_err(|()| ConfigError::Invalid("the database URL cannot carry a password".into()))?;
    Ok(u.to_string().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_record_never_holds_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let r =
            StoreRecord::write(dir.path(), "postgres://vault:s3cret@db.example:6432/pv").unwrap();
        assert_eq!(r.database_url, "postgres://vault@db.example:6432/pv");
        let text = std::fs::read_to_string(StoreRecord::path(dir.path())).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(StoreRecord::read(dir.path()).unwrap(), Some(r));
        assert_eq!(
            redacted("postgres://vault:s3cret@db/pv"),
            "postgres://vault:***@db/pv"
        );
        // A password given as a query parameter (sqlx reads it there too).
        let q = StoreRecord::write(
            dir.path(),
            "postgres://vault@db/pv?sslmode=require&password=s3cret",
        )
        .unwrap();
        assert_eq!(q.database_url, "postgres://vault@db/pv?sslmode=require");
        assert!(!redacted("postgres://vault@db/pv?password=s3cret").contains("s3cret"));
    }

    #[test]
    fn same_store_is_judged_by_file_or_by_user_host_port_and_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("piivault.db");
        let r =
            StoreRecord::write(dir.path(), &format!("sqlite://{}?mode=rwc", db.display())).unwrap();
        assert!(r
            .names_same_store(&format!("sqlite://{}", db.display()))
            .unwrap());
        assert!(!r
            .names_same_store(&format!("sqlite://{}/other.db", dir.path().display()))
            .unwrap());
        assert!(!r.names_same_store("postgres://u@h/db").unwrap());

        let pg = StoreRecord::write(dir.path(), "postgres://u:pw@h/db").unwrap();
        assert!(pg
            .names_same_store("postgres://u:other@h:5432/db?sslmode=disable")
            .unwrap());
        assert!(pg.names_same_store("postgresql://u@h/db").unwrap());
        assert!(!pg.names_same_store("postgres://u@h/db2").unwrap());
        assert!(!pg.names_same_store("postgres://u@h2/db").unwrap());
        assert!(!pg.names_same_store("postgres://root@h/db").unwrap());
        assert!(pg.names_same_store("mysql://u@h/db").is_err());
    }

    #[test]
    fn the_password_comes_from_outside_and_never_shows() {
        let url = add_password("postgres://vault@db/pv", Some("p@ss/w:rd")).unwrap();
        let u = Url::parse(url.as_str()).unwrap();
        assert_eq!(
            percent_decode(u.password().unwrap()),
            "p@ss/w:rd",
            "{}",
            url.as_str()
        );
        assert!(!format!("{url} {url:?}").contains("w:rd"));
        let sqlite = add_password("sqlite:///tmp/x.db", Some("pw")).unwrap();
        assert_eq!(sqlite.as_str(), "sqlite:///tmp/x.db");
        assert_eq!(
            add_password("postgres://vault@db/pv", None)
                .unwrap()
                .as_str(),
            "postgres://vault@db/pv"
        );
    }

    fn percent_decode(s: &str) -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned()
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(StoreRecord::path(dir.path()), "database_url = 3\n").unwrap();
        assert!(StoreRecord::read(dir.path()).is_err());
    }
}
