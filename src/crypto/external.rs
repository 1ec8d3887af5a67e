//! Master keys held by an external key source: a PKCS#11 module (an HSM) or a key
//! service speaking the HashiCorp Vault / OpenBao transit API.
//!
//! Each master-key version is 32 random bytes made here, wrapped by the source and
//! stored wrapped in the database (`master_keys.wrapped`); only the source can unwrap
//! it. With PKCS#11 each version has its own AES-256 key object in the module
//! (`<key_label>-v<N>`, sensitive and not extractable: it never leaves the module), and
//! wrapping and unwrapping are AES-GCM inside the module. With transit each version is
//! wrapped under the transit key's newest version at the time (a new master version
//! rotates the transit key first), and the transit key never leaves the service.
//! Destroying a master version destroys what unwraps it: the module's key object, or
//! the transit key versions below every live one (the transit `trim`).
//!
//! The vault unwraps its versions through the source when it starts, when a version is
//! added or destroyed, and periodically to confirm the source still grants them (see
//! `keys::SourceWatch`). Data keys are wrapped under the master key in memory, so a
//! read or a write never waits for the source.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::{random_bytes, CryptoError, MasterKeyRing};

/// Settings of a PKCS#11 key source.
pub struct Pkcs11Config {
    /// The module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token (slot) holding the keys.
    pub token_label: String,
    /// Key objects are labelled `<key_label>-v<N>`.
    pub key_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
}

/// Settings of a transit key source.
pub struct TransitConfig {
    /// `https://host:port`; plain HTTP is refused.
    pub address: url::Url,
    /// The transit engine's mount path (`transit`).
    pub mount: String,
    /// The transit key's name.
    pub key: String,
    /// The token sent as `X-Vault-Token`.
    pub token: Zeroizing<String>,
    /// A PEM file of CA certificates to trust instead of the public web roots.
    pub ca_file: Option<PathBuf>,
    /// How long one call may take before the source counts as unavailable.
    pub timeout: Duration,
}

/// Where an external master key lives.
pub enum ExternalKeyConfig {
    Pkcs11(Pkcs11Config),
    Transit(TransitConfig),
}

impl std::fmt::Debug for ExternalKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ExternalKeyConfig {
    /// Names the source without its secrets (PIN, token).
    pub fn describe(&self) -> String {
        match self {
            Self::Pkcs11(c) => format!(
                "PKCS#11 module {} token {:?} key {:?}",
                c.module.display(),
                c.token_label,
                c.key_label
            ),
            Self::Transit(c) => format!(
                "transit key {:?} at {}{}",
                c.key,
                c.address.as_str().trim_end_matches('/'),
                format_args!("/v1/{}", c.mount)
            ),
        }
    }
}

/// A connected external key source.
pub struct ExternalKey {
    name: String,
    inner: Inner,
}

enum Inner {
    Pkcs11(std::sync::Arc<Hsm>),
    Transit(Transit),
}

impl std::fmt::Debug for ExternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// A source's failure, named by the source and never with a secret in it.
fn unavailable(name: &str, what: impl std::fmt::Display) -> CryptoError {
    CryptoError::KeySource(format!("{name}: {what}"))
}

/// The associated data a master-key version is wrapped with (PKCS#11).
fn version_aad(version: i64) -> Vec<u8> {
    format!("piivault/master-key/v{version}").into_bytes()
}

impl ExternalKey {
    /// Connects to the source (loads and logs in to the module; builds the HTTPS client).
    /// Nothing is created here.
    pub async fn connect(config: &ExternalKeyConfig) -> Result<Self, CryptoError> {
        let name = config.describe();
        let inner = match config {
            ExternalKeyConfig::Pkcs11(c) => {
                let config = Pkcs11Config {
                    module: c.module.clone(),
                    token_label: c.token_label.clone(),
                    key_label: c.key_label.clone(),
                    pin: c.pin.clone(),
                };
                let n = name.clone();
                let hsm = tokio::task::spawn_blocking(move || Hsm::open(config, &n))
                    .await
                    .map_err(|e| unavailable(&name, e))??;
                Inner::Pkcs11(std::sync::Arc::new(hsm))
            }
            ExternalKeyConfig::Transit(c) => Inner::Transit(Transit::new(c, &name)?),
        };
        Ok(Self { name, inner })
    }

    /// The source's name (no secrets), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes master-key `version`: fresh random key material, wrapped by the source under
    /// a key of its own for this version (a new key object in the module; the transit key
    /// rotated, unless this is the vault's first version and the transit key is new).
    /// Returns the wrapped form to store and the version's check value.
    pub async fn new_version(
        &self,
        version: i64,
        first: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let material = Zeroizing::new(random_bytes::<32>().to_vec());
        let check = MasterKeyRing::from_versions([(version, material.clone())].into())?
            .check_value(version)?;
        let wrapped = match &self.inner {
            Inner::Pkcs11(hsm) => {
                let hsm = hsm.clone();
                self.blocking(move || hsm.wrap_new(version, &material))
                    .await?
            }
            Inner::Transit(t) => {
                t.prepare(first).await?;
                t.encrypt(&material).await?
            }
        };
        Ok((wrapped, check))
    }

    /// Unwraps stored versions (`(version, wrapped)`) into a keyring.
    pub async fn unwrap_ring(&self, rows: &[(i64, Vec<u8>)]) -> Result<MasterKeyRing, CryptoError> {
        let mut raw = std::collections::BTreeMap::new();
        for (version, wrapped) in rows {
            let material = match &self.inner {
                Inner::Pkcs11(hsm) => {
                    let (hsm, version, wrapped) = (hsm.clone(), *version, wrapped.clone());
                    self.blocking(move || hsm.unwrap(version, &wrapped)).await?
                }
                Inner::Transit(t) => t.decrypt(wrapped).await?,
            };
            raw.insert(*version, material);
        }
        MasterKeyRing::from_versions(raw)
    }

    /// Destroys what unwraps master-key `version` in the source, once the store no longer
    /// holds anything under it. `live` are the versions still in use, wrapped. Returns
    /// what was done, for the operator.
    pub async fn destroy_version(
        &self,
        version: i64,
        live: &[(i64, Vec<u8>)],
    ) -> Result<String, CryptoError> {
        match &self.inner {
            Inner::Pkcs11(hsm) => {
                let hsm = hsm.clone();
                self.blocking(move || hsm.destroy(version)).await
            }
            Inner::Transit(t) => t.trim_below(live).await,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
    ) -> Result<T, CryptoError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| unavailable(&self.name, e))?
    }
}

/// A logged-in PKCS#11 token. One session, used by one call at a time. After a failed
/// call the session is closed and the module finalised, so the next call loads it
/// afresh (a restarted module, a re-inserted token or a network HSM that came back).
struct Hsm {
    name: String,
    config: Pkcs11Config,
    conn: Mutex<Option<HsmConn>>,
}

struct HsmConn {
    session: cryptoki::session::Session,
    context: cryptoki::context::Pkcs11,
}

impl HsmConn {
    fn close(self) {
        let Self { session, context } = self;
        drop(session);
        let _ = context.finalize();
    }
}

impl Hsm {
    fn open(config: Pkcs11Config, name: &str) -> Result<Self, CryptoError> {
        let hsm = Self {
            name: name.to_owned(),
            config,
            conn: Mutex::new(None),
        };
        hsm.with_session(|_| Ok(()))?;
        Ok(hsm)
    }

    /// Loads the module, finds the token and logs in.
    fn connect(&self) -> Result<HsmConn, CryptoError> {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        use cryptoki::error::{Error, RvError};
        use cryptoki::session::UserType;
        let name = &self.name;
        let fail = |what: &str, e: Error| unavailable(name, format!("{what}: {e}"));
        let context =
            Pkcs11::new(&self.config.module).map_err(|e| fail("loading the module", e))?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail("initialising the module", e)),
        }
        let slot = context
            .get_slots_with_token()
            .map_err(|e| fail("listing slots", e))?
            .into_iter()
            .find(|s| {
                context
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == self.config.token_label)
            })
            .ok_or_else(|| {
                unavailable(
                    name,
                    format!(
                        "no token labelled {:?} in the module",
                        self.config.token_label
                    ),
                )
            })?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| fail("opening a session", e))?;
        let pin = cryptoki::types::AuthPin::new(self.config.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(fail("logging in", e)),
        }
        Ok(HsmConn { session, context })
    }

    /// Closes the session and finalises the module: the next call starts afresh.
    fn reset(&self) {
        if let Ok(mut conn) = self.conn.lock() {
            if let Some(conn) = conn.take() {
                conn.close();
            }
        }
    }

    /// Runs `f` on the logged-in session, connecting if needed. A call that fails is
    /// tried once more on a fresh connection.
    fn with_session<T>(
        &self,
        f: impl Fn(&cryptoki::session::Session) -> Result<T, cryptoki::error::Error>,
    ) -> Result<T, CryptoError> {
        let mut slot = self
            .conn
            .lock()
            .map_err(|_| unavailable(&self.name, "session lock poisoned"))?;
        let mut last = None;
        for _ in 0..2 {
            let conn = match slot.take() {
                Some(conn) => conn,
                None => self.connect()?,
            };
            match f(&conn.session) {
                Ok(v) => {
                    *slot = Some(conn);
                    return Ok(v);
                }
                Err(e) => {
                    conn.close();
                    last = Some(e);
                }
            }
        }
        Err(unavailable(
            &self.name,
            last.map_or_else(|| "no session".to_owned(), |e| e.to_string()),
        ))
    }

    fn label(&self, version: i64) -> Vec<u8> {
        format!("{}-v{version}", self.config.key_label).into_bytes()
    }

    fn find_all(
        &self,
        session: &cryptoki::session::Session,
        version: i64,
    ) -> Result<Vec<cryptoki::object::ObjectHandle>, cryptoki::error::Error> {
        use cryptoki::object::{Attribute, ObjectClass};
        session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(self.label(version)),
        ])
    }

    fn find(
        &self,
        session: &cryptoki::session::Session,
        version: i64,
    ) -> Result<Option<cryptoki::object::ObjectHandle>, cryptoki::error::Error> {
        Ok(self.find_all(session, version)?.into_iter().next())
    }

    /// Wraps `material` under version `version`'s key object, made in the module (AES-256,
    /// sensitive, not extractable) if the token does not hold it yet.
    fn wrap_new(&self, version: i64, material: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use cryptoki::mechanism::Mechanism;
        use cryptoki::object::{Attribute, KeyType, ObjectClass};
        self.with_session(|session| {
            let key = match self.find(session, version)? {
                Some(key) => key,
                None => session.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Label(self.label(version)),
                    ],
                )?,
            };
            let mut iv = random_bytes::<12>();
            let aad = version_aad(version);
            let sealed = {
                let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, &aad, 128.into())?;
                session.encrypt(&Mechanism::AesGcm(params), key, material)?
            };
            Ok([&[1u8][..], &iv, &sealed].concat())
        })
    }

    fn unwrap(&self, version: i64, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use cryptoki::mechanism::Mechanism;
        let [1, rest @ ..] = wrapped else {
            return Err(CryptoError::Malformed);
        };
        if rest.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (iv, sealed) = rest.split_at(12);
        let missing = || {
            unavailable(
                &self.name,
                format!(
                    "the token holds no key object {:?} (master key version {version})",
                    String::from_utf8_lossy(&self.label(version))
                ),
            )
        };
        let opened = self.with_session(|session| {
            // Normally one object; two if two nodes made the vault's first version at
            // once (the store kept one node's): the one that opens it is the right one.
            let mut found = None;
            for key in self.find_all(session, version)? {
                let mut iv = iv.to_vec();
                let aad = version_aad(version);
                let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, &aad, 128.into())?;
                match session.decrypt(&Mechanism::AesGcm(params), key, sealed) {
                    Ok(plain) => return Ok(Some(Ok(Zeroizing::new(plain)))),
                    // The key is there but does not open it: not an outage.
                    Err(cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::EncryptedDataInvalid
                        | cryptoki::error::RvError::EncryptedDataLenRange,
                        _,
                    )) => found = Some(Err(CryptoError::Decrypt)),
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        })?;
        match opened {
            Some(result) => result,
            None => {
                // Perhaps the module lost sight of its objects: look afresh next time.
                self.reset();
                Err(missing())
            }
        }
    }

    fn destroy(&self, version: i64) -> Result<String, CryptoError> {
        let label = String::from_utf8_lossy(&self.label(version)).into_owned();
        let destroyed = self.with_session(|session| {
            let keys = self.find_all(session, version)?;
            for key in &keys {
                session.destroy_object(*key)?;
            }
            Ok(!keys.is_empty())
        })?;
        Ok(if destroyed {
            format!("key object {label:?} destroyed in the token")
        } else {
            format!("the token held no key object {label:?} any more")
        })
    }
}

/// A transit key service client (HTTPS, token in `X-Vault-Token`).
struct Transit {
    name: String,
    client: reqwest::Client,
    base: url::Url,
    key: String,
    token: Zeroizing<String>,
}

impl Transit {
    fn new(config: &TransitConfig, name: &str) -> Result<Self, CryptoError> {
        if config.address.scheme() != "https" {
            return Err(CryptoError::KeySource(format!(
                "{name}: the transit address must be https:// (the master key travels over it, wrapped or not)"
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                use rustls::pki_types::{pem::PemObject, CertificateDer};
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| unavailable(name, format!("CA file {}: {e}", path.display())))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        unavailable(name, format!("CA file {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(name, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .build()
            .map_err(|e| unavailable(name, e))?;
        let mut base = config.address.clone();
        base.set_path(&format!("/v1/{}/", config.mount.trim_matches('/')));
        Ok(Self {
            name: name.to_owned(),
            client,
            base,
            key: config.key.clone(),
            token: config.token.clone(),
        })
    }

    /// Calls `path` (under the mount) with a JSON body; `Ok(None)` for 404. For answers
    /// that hold no key: see [`Self::call_secret`] for those that do.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, CryptoError> {
        let body = body.map(|b| Zeroizing::new(b.to_string()));
        let Some(text) = self.call_secret(method, path, body).await? else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(Some(serde_json::Value::Null));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| unavailable(&self.name, "answered with something that is not JSON"))
    }

    /// Calls `path` with a body (JSON text) that may hold a key, and answers the body as
    /// text; both stay in memory that is wiped when dropped (what the HTTP stack buffers
    /// on the way is out of reach). `Ok(None)` for 404.
    async fn call_secret(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Zeroizing<String>>,
    ) -> Result<Option<Zeroizing<String>>, CryptoError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| unavailable(&self.name, e))?;
        let mut request = self
            .client
            .request(method, url)
            .header("X-Vault-Token", self.token.as_str());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.as_bytes().to_vec());
        }
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "did not answer in time".to_owned()
            } else if e.is_connect() {
                "cannot be reached".to_owned()
            } else {
                e.to_string()
            };
            unavailable(&self.name, what)
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = Zeroizing::new(
            response
                .text()
                .await
                .map_err(|e| unavailable(&self.name, e))?,
        );
        if !status.is_success() {
            // Transit's errors name the problem ("permission denied"), never a secret.
            let errors = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(unavailable(
                &self.name,
                format!("answered {status} {errors}"),
            ));
        }
        Ok(Some(text))
    }

    /// Makes the transit key ready for a new master-key version: creates it if it does
    /// not exist (the vault's first version only), else rotates it so that the new
    /// version has a transit key version of its own.
    async fn prepare(&self, first: bool) -> Result<(), CryptoError> {
        let key = format!("keys/{}", self.key);
        let exists = self.call(reqwest::Method::GET, &key, None).await?.is_some();
        if !exists {
            if !first {
                return Err(unavailable(&self.name, "the transit key does not exist"));
            }
            self.call(
                reqwest::Method::POST,
                &key,
                Some(serde_json::json!({ "type": "aes256-gcm96" })),
            )
            .await?;
        } else if !first {
            self.call(reqwest::Method::POST, &format!("{key}/rotate"), None)
                .await?;
        }
        Ok(())
    }

    async fn encrypt(&self, material: &[u8]) -> Result<Vec<u8>, CryptoError> {
        // Base64 needs no JSON escaping.
        let body = Zeroizing::new(format!("{{\"plaintext\":\"{}\"}}", B64.encode(material)));
        let answer = self
            .call_secret(
                reqwest::Method::POST,
                &format!("encrypt/{}", self.key),
                Some(body),
            )
            .await?
            .ok_or_else(|| unavailable(&self.name, "the transit key does not exist"))?;
        let answer: serde_json::Value = serde_json::from_str(&answer)
            .map_err(|_| unavailable(&self.name, "answered with something that is not JSON"))?;
        answer
            .pointer("/data/ciphertext")
            .and_then(|c| c.as_str())
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| unavailable(&self.name, "the answer holds no ciphertext"))
    }

    async fn decrypt(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            data: Plain<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Plain<'a> {
            // Borrowed from the wiped answer text (base64 needs no unescaping).
            #[serde(borrow)]
            plaintext: std::borrow::Cow<'a, str>,
        }
        let ciphertext = std::str::from_utf8(wrapped).map_err(|_| CryptoError::Malformed)?;
        let answer = self
            .call_secret(
                reqwest::Method::POST,
                &format!("decrypt/{}", self.key),
                Some(Zeroizing::new(
                    serde_json::json!({ "ciphertext": ciphertext }).to_string(),
                )),
            )
            .await?
            .ok_or_else(|| unavailable(&self.name, "the transit key does not exist"))?;
        let parsed: Answer<'_> = serde_json::from_str(&answer)
            .map_err(|_| unavailable(&self.name, "the answer holds no plaintext"))?;
        B64.decode(parsed.data.plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| unavailable(&self.name, "the plaintext is not base64"))
    }

    /// Makes every transit key version older than the oldest one a live master-key
    /// version is wrapped under unusable, then deletes them (`trim`).
    async fn trim_below(&self, live: &[(i64, Vec<u8>)]) -> Result<String, CryptoError> {
        let oldest = live
            .iter()
            .filter_map(|(_, w)| transit_version(w))
            .min()
            .ok_or_else(|| unavailable(&self.name, "no live master key version to keep"))?;
        let key = format!("keys/{}", self.key);
        let info = self
            .call(reqwest::Method::GET, &key, None)
            .await?
            .ok_or_else(|| unavailable(&self.name, "the transit key does not exist"))?;
        let min_available = info
            .pointer("/data/min_available_version")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        if min_available >= oldest {
            return Ok(format!(
                "the transit key holds no version below {oldest} already"
            ));
        }
        self.call(
            reqwest::Method::POST,
            &format!("{key}/config"),
            Some(serde_json::json!({
                "min_decryption_version": oldest,
                "min_encryption_version": oldest,
            })),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            &format!("{key}/trim"),
            Some(serde_json::json!({ "min_available_version": oldest })),
        )
        .await?;
        Ok(format!(
            "transit key versions below {oldest} made unusable and trimmed"
        ))
    }
}

/// The transit key version a ciphertext (`vault:v<N>:...`) was made under.
fn transit_version(wrapped: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(wrapped).ok()?;
    let rest = text.strip_prefix("vault:v")?;
    rest.split(':').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_transit_ciphertext_names_its_key_version() {
        assert_eq!(transit_version(b"vault:v3:AAAA"), Some(3));
        assert_eq!(transit_version(b"vault:v12:AAAA"), Some(12));
        assert_eq!(transit_version(b"vault:x:AAAA"), None);
        assert_eq!(transit_version(&[1, 2, 3]), None);
    }

    #[tokio::test]
    async fn plain_http_transit_is_refused() {
        let config = ExternalKeyConfig::Transit(TransitConfig {
            address: "http://127.0.0.1:8200".parse().unwrap(),
            mount: "transit".into(),
            key: "piivault".into(),
            token: Zeroizing::new("s.secret-token".into()),
            ca_file: None,
            timeout: Duration::from_secs(1),
        });
        let e = ExternalKey::connect(&config).await.unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        assert!(!e.contains("secret-token"), "{e}");
        assert!(!format!("{config:?}").contains("secret-token"));
    }
}
