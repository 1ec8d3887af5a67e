//! The real binary as a child process: started on a random port with its own data
//! directory, stopped with SIGTERM, or killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::helpers::policy_dir;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_piivault")
}

pub struct Running {
    pub child: Child,
    pub port: u16,
    pub stdout: PathBuf,
}

/// A test that fails half-way leaves no server running behind it.
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn base_args(dir: &Path, url: &Option<String>) -> Vec<String> {
    let mut args = vec![
        "--data-dir".to_owned(),
        dir.join("data").display().to_string(),
        "--policy-dir".to_owned(),
        policy_dir().display().to_string(),
    ];
    if let Some(url) = url {
        args.extend(["--database-url".to_owned(), url.clone()]);
    }
    args
}

pub fn start(dir: &Path, url: &Option<String>, run: usize) -> Running {
    start_with(dir, url, run, &[])
}

/// `start`, with more arguments for `serve`.
pub fn start_with(dir: &Path, url: &Option<String>, run: usize, extra: &[&str]) -> Running {
    start_env(dir, url, run, extra, &[])
}

/// `start_with`, with environment variables for the server.
pub fn start_env(
    dir: &Path,
    url: &Option<String>,
    run: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let stdout = dir.join(format!("stdout-{run}.log"));
    let stderr = dir.join(format!("stderr-{run}.log"));
    let mut child = Command::new(bin())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(base_args(dir, url))
        .args(extra)
        .env("RUST_LOG", "debug")
        .env_remove("PIIVAULT_MASTER_KEY")
        .env_remove("PIIVAULT_MASTER_PASSPHRASE")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("piivault serve starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if let Some(rest) = text
            .split("piivault listening on https://127.0.0.1:")
            .nth(1)
        {
            let port = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            return Running {
                child,
                port,
                stdout,
            };
        }
        if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stop(mut r: Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = r.child.try_wait() {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = r.child.kill();
    let _ = r.child.wait();
    panic!("serve did not stop on SIGTERM");
}

impl Running {
    /// SIGKILL: no shutdown, no flush; what was not durable is gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issues a token with the CLI against a data directory whose server runs (or ran);
/// returns its secret.
pub fn issue_token(
    dir: &Path,
    url: &Option<String>,
    role: &str,
    purpose: &str,
    description: &str,
) -> String {
    issue_token_env(dir, url, role, purpose, description, &[], &[])
}

/// `issue_token`, with more arguments (`--config`) and environment variables.
pub fn issue_token_env(
    dir: &Path,
    url: &Option<String>,
    role: &str,
    purpose: &str,
    description: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> String {
    let out = Command::new(bin())
        .args([
            "token",
            "issue",
            "--role",
            role,
            "--purpose",
            purpose,
            "--ttl",
            "1h",
        ])
        .args(["--description", description])
        .args(base_args(dir, url))
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The secret alone on standard output.
    let secret = String::from_utf8(out.stdout).unwrap();
    assert_eq!(secret.lines().count(), 1, "{secret}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("pvt_"));
    secret
}

/// The store a child server uses: SQLite in its data directory (`None`), or a fresh
/// PostgreSQL database (its URL, and its name to drop afterwards).
pub async fn child_store(db: crate::helpers::Db) -> (Option<String>, Option<String>) {
    match db {
        crate::helpers::Db::Sqlite => (None, None),
        crate::helpers::Db::Postgres => {
            let (url, name) = crate::helpers::create_pg_database().await;
            (Some(url), Some(name))
        }
    }
}
