//! The command line finds the store its data directory belongs to, and refuses a
//! command that names another one instead of quietly starting a second, empty vault.

use std::path::Path;
use std::process::{Command, Output};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

/// Runs the binary with `args` and no store named in the environment.
fn piivault(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piivault"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("PIIVAULT_DATABASE_URL")
        .env_remove("PIIVAULT_CONFIG")
        .output()
        .expect("piivault runs")
}

const ISSUE: [&str; 8] = [
    "token",
    "issue",
    "--role",
    "customer_service",
    "--purpose",
    "service",
    "--ttl",
    "1h",
];

both_stores!(
    the_cli_uses_the_store_its_data_directory_belongs_to,
    |db| async move {
        let t = spawn_app(db).await;
        let record = std::fs::read_to_string(t.dir.path().join("piivault.toml")).unwrap();
        assert!(
            record.contains(&format!("database_url = \"{}\"", t.database_url)),
            "{record}"
        );

        // Only the data directory: the token is issued in the vault's own store, and the
        // running server accepts it.
        let out = piivault(&ISSUE, t.dir.path());
        assert!(out.status.success(), "{}", output_text(&out));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let dsr = t.dsr().await;
        let id = t
            .create(&dsr, json!({"name": "张三", "phone": "13812345678"}))
            .await;
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                Some(&token),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Naming another store is refused, and nothing is created there.
        let elsewhere = tempfile::tempdir().unwrap();
        let other_db = elsewhere.path().join("other.db");
        let other_url = format!("sqlite://{}?mode=rwc", other_db.display());
        let mut named = ISSUE.to_vec();
        named.extend(["--database-url", &other_url]);
        let out = piivault(&named, t.dir.path());
        let said = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("belongs to the store"), "{said}");
        assert!(said.contains(&t.database_url), "{said}");
        assert!(!other_db.exists(), "a second store was created");

        // Opening the vault directly with another store is refused the same way.
        let mut wrong = settings(t.dir.path(), other_url.clone());
        wrong.policy_dir = t.settings.policy_dir.clone();
        let Err(err) = piivault::open(&wrong).await else {
            panic!("a vault opened on another store");
        };
        assert!(
            format!("{err:#}").contains("belongs to the store"),
            "{err:#}"
        );
        assert!(!other_db.exists());

        // The same store named again (other connection options) is fine.
        let same = if db == Db::Sqlite {
            t.database_url.replace("?mode=rwc", "")
        } else {
            format!("{}?sslmode=disable", t.database_url)
        };
        let mut named = ISSUE.to_vec();
        named.extend(["--database-url", &same]);
        let out = piivault(&named, t.dir.path());
        assert!(out.status.success(), "{}", output_text(&out));
    }
);

#[test]
fn a_data_directory_without_a_vault_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = piivault(&ISSUE, dir.path());
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("there is no vault in"), "{said}");
    assert!(said.contains("piivault serve --data-dir"), "{said}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files were created"
    );
}

both_stores!(
    keys_list_shows_the_inventory_without_key_material,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        for i in 0..3 {
            t.create(
                &dsr,
                json!({"name": format!("钥匙{i}"), "phone": "13812345678"}),
            )
            .await;
        }
        let out = piivault(&["keys", "list", "--json"], t.dir.path());
        assert!(out.status.success(), "{}", output_text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let keys = list["keys"].as_array().unwrap();
        let find = |kind: &str| keys.iter().find(|k| k["kind"] == kind).cloned().unwrap();
        assert_eq!(find("master")["state"], "active");
        assert_eq!(find("master")["version"], 1);
        assert_eq!(find("blind_index")["wrapped_by"], 1);
        assert_eq!(find("token_hash")["wrapped_by"], 1);
        let data = find("data");
        assert_eq!(data["keys"], 3);
        assert_eq!(data["encryptions"], 6);
        let audit = list["audit"].as_array().unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["key_id"], t.app.trusted_audit_keys()[0].key_id());
        // No key material: the master key file's text and the wrapped keys stay out.
        let master = std::fs::read_to_string(t.dir.path().join("master.key")).unwrap();
        let secret = master.trim().rsplit(':').next().unwrap();
        assert!(!output_text(&out).contains(secret));
        let table = piivault(&["keys", "list"], t.dir.path());
        assert!(table.status.success());
        assert!(
            output_text(&table).contains("decrypt-only") || output_text(&table).contains("active")
        );
    }
);
