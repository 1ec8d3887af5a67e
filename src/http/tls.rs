//! TLS material: on first start a local CA and a server certificate signed by it
//! (`<data-dir>/tls/ca.pem` is what clients trust). The CA's private key is never
//! written anywhere, so nobody can mint further certificates under it.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS files in {dir}: {message}")]
    Files { dir: String, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    pub fn in_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

fn generate(paths: &TlsPaths) -> Result<(), TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "piivault local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            leaf.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    leaf.distinguished_name.push(DnType::CommonName, "piivault");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(825);
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;

    let files = |e: std::io::Error| TlsError::Files {
        dir: paths
            .ca
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        message: e.to_string(),
    };
    if let Some(dir) = paths.ca.parent() {
        std::fs::create_dir_all(dir).map_err(files)?;
    }
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_file(&paths.key, key_pem.as_bytes(), 0o600).map_err(files)?;
    write_file(
        &paths.cert,
        format!("{}{}", cert.pem(), ca_cert.pem()).as_bytes(),
        0o644,
    )
    .map_err(files)?;
    write_file(&paths.ca, ca_cert.pem().as_bytes(), 0o644).map_err(files)?;
    tracing::info!(ca = %paths.ca.display(), "created TLS certificate and client CA file");
    Ok(())
}

/// Loads the server certificate and key, creating them on first start.
pub fn server_config(data_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let paths = TlsPaths::in_dir(data_dir);
    let present = [&paths.cert, &paths.key, &paths.ca].map(|p| p.exists());
    if present == [false; 3] {
        generate(&paths)?;
    } else if present.contains(&false) {
        // Making new ones would replace the CA every client trusts: refuse instead.
        let missing: Vec<String> = [&paths.cert, &paths.key, &paths.ca]
            .iter()
            .zip(present)
            .filter(|(_, here)| !here)
            .map(|(p, _)| p.display().to_string())
            .collect();
        return Err(TlsError::Files {
            dir: paths
                .cert
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            message: format!(
                "{} missing; restore it, or remove all three files to make a new certificate \
                 and CA (clients must then trust the new ca.pem)",
                missing.join(" and ")
            ),
        });
    }
    let files = |e: rustls::pki_types::pem::Error| TlsError::Files {
        dir: paths
            .cert
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(files)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(files)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
