//! Subjects and their records: create, read (clear or masked), correct, erase,
//! look up, add and list records. Validation comes from `classify`, keys and
//! ciphers from `crypto`, persistence from `store`. Every change is committed in one
//! transaction with the audit events that describe it (`Audit::record_with`).

mod ids;

pub use ids::{IdSequence, RecordId, SubjectId};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::{Audit, AuditError, CommitError, Event};
use crate::cache::Cache;
use crate::classify::{Catalogue, ValidationError};
use crate::crypto::{Aad, CryptoError, DataKey, KeyError, Keys};
use crate::keys::KeyWatch;
use crate::store::{
    now_ms, FieldRow, IndexEntry, NewSubject, RecordRow, Store, StoreError, SubjectKeyRow,
    SubjectSnapshot, SubjectWrite, WriteOp,
};

/// Encryptions allowed under one DEK before a new DEK version is made. Far below the
/// 2^32 bound NIST SP 800-38D sets for random 96-bit nonces.
pub const DEFAULT_KEY_USAGE_LIMIT: i64 = 1 << 24;

/// How many times a write is retried when a concurrent write made the same DEK version.
const WRITE_ATTEMPTS: usize = 3;

/// Subjects whose ciphertexts, wrapped keys and hold state are kept in memory, and for
/// how long at most. A change to a subject forgets it at once on this node, and through
/// the change feed on others.
pub const DEFAULT_SNAPSHOT_CACHE_ENTRIES: usize = 50_000;
const SNAPSHOT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no such subject")]
    NotFound,
    #[error("no such record collection")]
    UnknownCollection,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A stored ciphertext failed authentication: moved, altered or under a lost key.
    #[error("stored data failed its integrity check ({what})")]
    Integrity { what: String },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The audit events could not be written, so the change was not made.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The subject's key is wrapped under a master-key version this node has not
    /// loaded: answered as unavailable until its key source has it.
    #[error("master key version {0} is not loaded on this node")]
    KeyUnavailable(i64),
}

impl From<KeyError> for VaultError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unavailable(v) => Self::KeyUnavailable(v),
            KeyError::Store(s) => s.into(),
            KeyError::Crypto(c) => Self::Crypto(c),
            KeyError::Setup(m) => Self::Integrity { what: m },
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

impl From<CommitError> for VaultError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Audit(e) => Self::Audit(e),
            CommitError::Change(e) => e.into(),
        }
    }
}

/// How a caller may see a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Clear,
    Masked,
}

/// A field value as handed out.
#[derive(Debug, serde::Serialize)]
pub struct FieldOut {
    pub value: Value,
    pub masked: bool,
}

/// A record document as handed out.
#[derive(Debug, serde::Serialize)]
pub struct RecordOut {
    pub id: String,
    pub created_at: String,
    pub document: Value,
}

/// A subject as a read needs it: its snapshot (hold state, wrapped keys, ciphertexts),
/// and its data keys once a read has unwrapped them. Cached as one entry, so whatever
/// forgets the subject (a change here, or one another node made) drops its unwrapped
/// keys too; they are zeroised when the last reader lets go.
#[derive(Debug)]
pub struct Subject {
    snapshot: SubjectSnapshot,
    data_keys: std::sync::OnceLock<BTreeMap<i64, DataKey>>,
}

impl std::ops::Deref for Subject {
    type Target = SubjectSnapshot;

    fn deref(&self) -> &SubjectSnapshot {
        &self.snapshot
    }
}

/// The vault's data operations.
#[derive(Debug, Clone)]
pub struct Vault {
    store: Store,
    audit: Audit,
    /// Subjects as last read: ciphertexts, wrapped keys and, once read, their unwrapped
    /// data keys; never plaintext.
    snapshots: Arc<Cache<String, Arc<Subject>>>,
    keys: Arc<Keys>,
    /// Reads the master key source again when a version is added or destroyed.
    key_watch: Arc<KeyWatch>,
    catalogue: Arc<Catalogue>,
    key_usage_limit: i64,
    /// Ids for the subjects this process creates.
    ids: Arc<IdSequence>,
    /// Where "today" comes from: dates in values may not lie after it, and a subject's
    /// age is reckoned on it.
    clock: crate::clock::Clock,
}

/// The DEK a write will use, and the new key row if it had to be made.
struct WriteKey {
    key: DataKey,
    version: i64,
    new_row: Option<SubjectKeyRow>,
}

impl Vault {
    pub fn new(store: Store, audit: Audit, keys: Arc<Keys>, catalogue: Arc<Catalogue>) -> Self {
        Self {
            store,
            audit,
            snapshots: Arc::new(Cache::new(
                "subjects",
                DEFAULT_SNAPSHOT_CACHE_ENTRIES,
                SNAPSHOT_CACHE_TTL,
            )),
            keys,
            key_watch: Arc::new(KeyWatch::default()),
            catalogue,
            key_usage_limit: DEFAULT_KEY_USAGE_LIMIT,
            ids: Arc::new(IdSequence::default()),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Keeps at most `entries` subject snapshots in memory (0: none; every read asks the
    /// store). The new cache is this vault's own; clones made before keep the old one.
    pub fn with_snapshot_cache(mut self, entries: usize) -> Self {
        let cache = Cache::new("subjects", entries, SNAPSHOT_CACHE_TTL);
        cache.set_enabled(self.snapshots.enabled());
        self.snapshots = Arc::new(cache);
        self
    }

    /// Lowers the DEK usage bound (tests use this to exercise automatic DEK rotation).
    pub fn with_key_usage_limit(mut self, limit: i64) -> Self {
        self.key_usage_limit = limit.max(1);
        self
    }

    /// Reads today's date from `clock` (tests move it by hand).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Today, by this vault's clock.
    pub fn today(&self) -> time::Date {
        self.clock.today()
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates every field; a single bad one refuses the whole input.
    fn parse_fields(
        &self,
        fields: &Map<String, Value>,
        allow_null: bool,
    ) -> Result<Vec<(String, Option<crate::classify::FieldValue>)>, VaultError> {
        if fields.is_empty() {
            return Err(
                ValidationError::new("fields", "empty", "at least one field is required").into(),
            );
        }
        let mut out = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            let spec = self.catalogue.field(name)?;
            if value.is_null() {
                if !allow_null {
                    return Err(ValidationError::new(name, "required", "must not be null").into());
                }
                out.push((name.clone(), None));
            } else {
                out.push((
                    name.clone(),
                    Some(spec.kind.parse_on(name, value, self.today())?),
                ));
            }
        }
        Ok(out)
    }

    fn seal_fields(
        &self,
        subject: &str,
        key: &DataKey,
        version: i64,
        values: &[(String, Option<crate::classify::FieldValue>)],
    ) -> Result<(Vec<FieldRow>, Vec<IndexEntry>), VaultError> {
        let mut rows = Vec::new();
        let mut index = Vec::new();
        for (name, value) in values {
            let Some(value) = value else { continue };
            let spec = self.catalogue.field(name)?;
            rows.push(FieldRow {
                field: name.clone(),
                dek_version: version,
                sealed: key.seal(
                    &Aad::field(subject, name, version),
                    value.canonical().as_bytes(),
                ),
            });
            if spec.searchable {
                let (key_version, digest) = self.keys.blind_index(name, value.canonical());
                index.push(IndexEntry {
                    field: name.clone(),
                    digest,
                    key_version,
                });
            }
        }
        Ok((rows, index))
    }

    /// Creates a subject with a fresh id ([`Vault::new_subject_id`]) from validated fields,
    /// committed with `events`.
    pub async fn create(
        &self,
        id: &SubjectId,
        fields: &Map<String, Value>,
        events: Vec<Event>,
    ) -> Result<(), VaultError> {
        let (subject, _) = self.prepare_subject(id, fields, &[])?;
        let op = self.store.create_subject_op(subject);
        Ok(self.commit(id, events, op).await?)
    }

    /// Validates and encrypts a new subject (fields and records under a new data key)
    /// without storing it: a create stores one, an import many at once
    /// ([`Vault::import`]).
    pub fn prepare_subject(
        &self,
        id: &SubjectId,
        fields: &Map<String, Value>,
        records: &[(String, Value)],
    ) -> Result<(NewSubject, Vec<RecordRow>), VaultError> {
        let values = self.parse_fields(fields, false)?;
        let key = self.keys.new_data_key();
        let (kek_version, wrapped) = self.keys.master().wrap_subject_key(id.as_str(), 1, &key)?;
        let (rows, index) = self.seal_fields(id.as_str(), &key, 1, &values)?;
        let mut sealed_records = Vec::with_capacity(records.len());
        for (collection, document) in records {
            let bytes = self.record_bytes(collection, document)?;
            let record_id = RecordId::generate();
            sealed_records.push(RecordRow {
                sealed: key.seal(
                    &Aad::record(id.as_str(), collection, &record_id.0, 1),
                    &bytes,
                ),
                id: record_id.0,
                collection: collection.clone(),
                dek_version: 1,
                created_at: crate::store::now_ms(),
            });
        }
        let subject = NewSubject {
            id: id.as_str().to_owned(),
            key: SubjectKeyRow {
                version: 1,
                kek_version,
                wrapped,
                encryptions: 0,
            },
            fields: rows,
            index,
        };
        Ok((subject, sealed_records))
    }

    /// Validates without encrypting: what an import checks in its first pass.
    pub fn validate_fields(&self, fields: &Map<String, Value>) -> Result<(), VaultError> {
        self.parse_fields(fields, false).map(|_| ())
    }

    /// Stores prepared subjects (with their records and consents) and their events in
    /// one transaction: all or none.
    pub async fn import(
        &self,
        subjects: crate::store::ImportRows,
        events: Vec<Event>,
    ) -> Result<(), VaultError> {
        if events.len() < subjects.subjects() {
            return Err(
                AuditError::Unavailable("a change must carry its audit events".into()).into(),
            );
        }
        let op = self.store.import_subjects_op(subjects);
        Ok(self.audit.record_with(events, op).await?)
    }

    /// Makes a change to subject `id` and appends its events, in one transaction, then
    /// forgets the cached snapshot. A change without an event is refused: nothing
    /// changes unrecorded.
    async fn commit(
        &self,
        id: &SubjectId,
        events: Vec<Event>,
        op: WriteOp,
    ) -> Result<(), CommitError> {
        if events.is_empty() {
            return Err(
                AuditError::Unavailable("a change must carry its audit events".into()).into(),
            );
        }
        let result = self.audit.record_with(events, op).await;
        self.forget(id.as_str());
        result
    }

    /// Forgets what is cached about a subject (it changed, here or on another node).
    pub fn forget(&self, subject: &str) {
        self.snapshots.remove(&subject.to_owned());
    }

    pub(crate) fn cache_enabled(&self, on: bool) {
        self.snapshots.set_enabled(on);
    }

    /// A new subject id, from this process's run (see [`IdSequence`]).
    pub fn new_subject_id(&self) -> SubjectId {
        self.ids.next()
    }

    /// Decrypts one stored field with the subject's data keys.
    fn open_field(
        id: &SubjectId,
        keys: &BTreeMap<i64, DataKey>,
        row: &crate::store::FieldRow,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        keys.get(&row.dek_version)
        .ok_or(CryptoError::Decrypt)
        .and_then(|k| k.open(&Aad::field(id.as_str(), &row.field, row.dek_version), &row.sealed))
        .map_err(|e| {
            tracing::error!(subject = %id, field = %row.field, error = %e, "field failed to decrypt");
            VaultError::Integrity {
                what: format!("field {}", row.field),
            }
        })
    }

    /// What a read needs of a subject (hold state, keys, ciphertexts), in one round
    /// trip or from the cache; `None` if it does not exist or was erased.
    pub async fn snapshot(&self, id: &SubjectId) -> Result<Option<Arc<Subject>>, VaultError> {
        let key = id.as_str().to_owned();
        if let Some(hit) = self.snapshots.get(&key) {
            return Ok(Some(hit));
        }
        let generation = self.snapshots.generation();
        let Some(snapshot) = self.store.subject_snapshot(id.as_str()).await? else {
            return Ok(None);
        };
        self.ensure_keks(&snapshot.keys).await?;
        let found = Arc::new(Subject {
            snapshot,
            data_keys: std::sync::OnceLock::new(),
        });
        self.snapshots.insert(generation, key, found.clone());
        Ok(Some(found))
    }

    fn unwrap_keys(
        &self,
        id: &SubjectId,
        rows: &[SubjectKeyRow],
    ) -> Result<BTreeMap<i64, DataKey>, VaultError> {
        let mut keys = BTreeMap::new();
        for row in rows {
            let key = self
                .keys
                .master()
                .unwrap_subject_key(id.as_str(), row.version, row.kek_version, &row.wrapped)
                .map_err(|e| {
                    tracing::error!(subject = %id, dek_version = row.version, error = %e, "cannot unwrap subject key");
                    VaultError::Integrity {
                        what: "subject key".into(),
                    }
                })?;
            keys.insert(row.version, key);
        }
        Ok(keys)
    }

    async fn unwrap_all(&self, id: &SubjectId) -> Result<BTreeMap<i64, DataKey>, VaultError> {
        let rows = self.store.subject_keys(id.as_str()).await?;
        self.ensure_keks(&rows).await?;
        self.unwrap_keys(id, &rows)
    }

    /// Makes sure the master-key versions wrapping `rows` are loaded (see [`KeyWatch`]).
    async fn ensure_keks(&self, rows: &[SubjectKeyRow]) -> Result<(), VaultError> {
        Ok(self
            .key_watch
            .ensure(&self.keys, &self.store, rows.iter().map(|r| r.kek_version))
            .await?)
    }

    /// The keys this vault holds, and what keeps its master keyring current.
    pub fn keys(&self) -> (&Keys, &KeyWatch) {
        (&self.keys, &self.key_watch)
    }

    /// Reads the master key source again (a version was added or destroyed) and
    /// forgets every cached subject, whose keys may be wrapped differently now.
    pub async fn reload_keys(&self) -> Result<(), KeyError> {
        let result = self.key_watch.reload(&self.keys, &self.store).await;
        self.drop_cached_subjects();
        result
    }

    /// Confirms, every quarter of `hold`, that the external key source still unwraps
    /// this vault's master keys. With no confirmation for longer than `hold` the vault
    /// seals: the master keys and every cached data key are dropped from memory, and
    /// requests are answered `503 key_unavailable`. The next confirmation unseals it.
    /// Nothing is watched when the master key does not come from an external source.
    pub fn spawn_key_source_watch(
        &self,
        hold: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let source = self.keys.external()?.name().to_owned();
        let vault = self.clone();
        let every = (hold / 4).max(std::time::Duration::from_millis(100));
        Some(tokio::spawn(async move {
            let mut confirmed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let keys = &vault.keys;
                match vault.key_watch.reload(keys, &vault.store).await {
                    Ok(()) => {
                        confirmed = tokio::time::Instant::now();
                        if keys.is_sealed() {
                            keys.unseal();
                            vault.drop_cached_subjects();
                            tracing::warn!(%source, "the master key source answers again: serving");
                        }
                    }
                    Err(e) if !keys.is_sealed() && confirmed.elapsed() > hold => {
                        keys.seal();
                        vault.drop_cached_subjects();
                        tracing::error!(
                            %source,
                            error = %e,
                            hold_secs = hold.as_secs(),
                            "the master key source has not confirmed the master keys for longer than the vault may hold them: sealed (every request is answered 503 key_unavailable until it answers)"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%source, error = %e, "the master key source did not confirm the master keys");
                    }
                }
            }
        }))
    }

    /// Forgets every cached subject (with its unwrapped data keys).
    fn drop_cached_subjects(&self) {
        self.snapshots.clear();
    }

    /// The DEK for `n` new encryptions: the current one, or a new version once the
    /// current one has reached its usage bound.
    async fn write_key(&self, id: &SubjectId, n: usize) -> Result<WriteKey, VaultError> {
        let rows = self.store.subject_keys(id.as_str()).await?;
        self.ensure_keks(&rows).await?;
        let Some(current) = rows.last() else {
            return Err(VaultError::NotFound);
        };
        if current.encryptions.saturating_add(n as i64) <= self.key_usage_limit {
            let key = self
                .keys
                .master()
                .unwrap_subject_key(id.as_str(), current.version, current.kek_version, &current.wrapped)
                .map_err(|e| {
                    tracing::error!(subject = %id, dek_version = current.version, error = %e, "cannot unwrap subject key");
                    VaultError::Integrity {
                        what: "subject key".into(),
                    }
                })?;
            return Ok(WriteKey {
                key,
                version: current.version,
                new_row: None,
            });
        }
        let version = current.version + 1;
        let key = self.keys.new_data_key();
        let (kek_version, wrapped) =
            self.keys
                .master()
                .wrap_subject_key(id.as_str(), version, &key)?;
        tracing::info!(subject = %id, dek_version = version, "subject key reached its usage bound; new version made");
        Ok(WriteKey {
            key,
            version,
            new_row: Some(SubjectKeyRow {
                version,
                kek_version,
                wrapped,
                encryptions: 0,
            }),
        })
    }

    /// Reads the requested fields the subject has, each in clear or masked.
    /// Fields the subject has no value for are left out.
    pub async fn read(
        &self,
        id: &SubjectId,
        wanted: &[(String, View)],
    ) -> Result<BTreeMap<String, FieldOut>, VaultError> {
        for (name, _) in wanted {
            self.catalogue.field(name)?;
        }
        let snapshot = self.snapshot(id).await?.ok_or(VaultError::NotFound)?;
        self.open(id, &snapshot, wanted)
    }

    /// Decrypts the requested fields of a snapshot, each in clear or masked. Fields the
    /// subject has no value for are left out.
    pub fn open(
        &self,
        id: &SubjectId,
        snapshot: &Subject,
        wanted: &[(String, View)],
    ) -> Result<BTreeMap<String, FieldOut>, VaultError> {
        let keys = self.data_keys(id, snapshot)?;
        let mut out = BTreeMap::new();
        for (name, view) in wanted {
            let Some(row) = snapshot.fields.iter().find(|r| &r.field == name) else {
                continue;
            };
            let spec = self.catalogue.field(name)?;
            let plain = Self::open_field(id, keys, row)?;
            let canonical = std::str::from_utf8(&plain).map_err(|_| VaultError::Integrity {
                what: format!("field {name}"),
            })?;
            let clear = spec.kind.to_json(canonical);
            let field = match view {
                View::Clear => FieldOut {
                    value: clear,
                    masked: false,
                },
                View::Masked => FieldOut {
                    value: spec.mask.apply(canonical, &clear),
                    masked: true,
                },
            };
            out.insert(name.clone(), field);
        }
        Ok(out)
    }

    /// The subject's data keys, unwrapped once per snapshot.
    fn data_keys<'s>(
        &self,
        id: &SubjectId,
        snapshot: &'s Subject,
    ) -> Result<&'s BTreeMap<i64, DataKey>, VaultError> {
        if let Some(keys) = snapshot.data_keys.get() {
            return Ok(keys);
        }
        let keys = self.unwrap_keys(id, &snapshot.keys)?;
        // Another reader may have set them first: the same keys either way.
        let _ = snapshot.data_keys.set(keys);
        snapshot
            .data_keys
            .get()
            .ok_or_else(|| VaultError::Integrity {
                what: "subject key".into(),
            })
    }

    /// The correction digest ([`Keys::correction_digest`]) of each of `names` as stored
    /// now (`-` for a field the subject does not have).
    async fn stored_digests<'n>(
        &self,
        id: &SubjectId,
        names: impl Iterator<Item = &'n String>,
    ) -> Result<BTreeMap<String, String>, VaultError> {
        let snapshot = self.snapshot(id).await?.ok_or(VaultError::NotFound)?;
        let keys = self.data_keys(id, &snapshot)?;
        let mut out = BTreeMap::new();
        for name in names {
            let digest = match snapshot.fields.iter().find(|r| &r.field == name) {
                Some(row) => {
                    let plain = Self::open_field(id, keys, row)?;
                    let canonical =
                        std::str::from_utf8(&plain).map_err(|_| VaultError::Integrity {
                            what: format!("field {name}"),
                        })?;
                    self.keys.correction_digest(name, canonical)
                }
                None => "-".into(),
            };
            out.insert(name.clone(), digest);
        }
        Ok(out)
    }

    /// Whether the subject is a minor under PIPL Art. 31 (under 14) on `today`: the
    /// explicit `is_minor` field when set, else the `birth_date` field. Unknown (or no
    /// such subject) counts as not a minor.
    pub async fn is_minor(&self, id: &SubjectId, today: time::Date) -> Result<bool, VaultError> {
        match self.snapshot(id).await? {
            Some(snapshot) => self.is_minor_in(id, &snapshot, today),
            None => Ok(false),
        }
    }

    /// [`Vault::is_minor`] on a snapshot already read.
    pub fn is_minor_in(
        &self,
        id: &SubjectId,
        snapshot: &Subject,
        today: time::Date,
    ) -> Result<bool, VaultError> {
        let wanted: Vec<(String, View)> = ["is_minor", "birth_date"]
            .iter()
            .filter(|f| self.catalogue.field(f).is_ok())
            .map(|f| ((*f).to_owned(), View::Clear))
            .collect();
        let fields = self.open(id, snapshot, &wanted)?;
        if let Some(flag) = fields.get("is_minor").and_then(|f| f.value.as_str()) {
            return Ok(flag == "yes");
        }
        let Some(birth) = fields.get("birth_date").and_then(|f| f.value.as_str()) else {
            return Ok(false);
        };
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let Ok(birth) = time::Date::parse(birth, &fmt) else {
            return Ok(false);
        };
        let fourteenth = time::Date::from_calendar_date(birth.year() + 14, birth.month(), 1)
            .ok()
            .and_then(|d| {
                d.replace_day(birth.day().min(d.month().length(d.year())))
                    .ok()
            });
        Ok(fourteenth.is_some_and(|d| today < d))
    }

    /// Corrects fields (a `null` value removes the field), committed with `events`.
    pub async fn correct(
        &self,
        id: &SubjectId,
        fields: &Map<String, Value>,
        events: Vec<Event>,
    ) -> Result<(), VaultError> {
        let values = self.parse_fields(fields, true)?;
        let n = values.iter().filter(|(_, v)| v.is_some()).count();
        // Art. 46: each field's event carries keyed digests of its value before and
        // after (never the values), so a correction can be shown without them.
        let old = self
            .stored_digests(id, values.iter().map(|(n, _)| n))
            .await?;
        let events: Vec<Event> = events
            .into_iter()
            .map(|e| {
                let Some(name) = e.field.clone() else {
                    return e;
                };
                let new = values
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, v)| v.as_ref())
                    .map_or_else(
                        || "-".into(),
                        |v| self.keys.correction_digest(&name, v.canonical()),
                    );
                let before = old.get(&name).map_or("-", String::as_str);
                e.target(&format!("old={before},new={new}"))
            })
            .collect();
        for attempt in 1..=WRITE_ATTEMPTS {
            let wk = self.write_key(id, n).await?;
            let (set, index) = self.seal_fields(id.as_str(), &wk.key, wk.version, &values)?;
            let write = SubjectWrite {
                subject_id: id.as_str().to_owned(),
                new_key: wk.new_row,
                key_version: wk.version,
                set,
                remove: values
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(name, _)| name.clone())
                    .collect(),
                index,
            };
            let op = self.store.write_subject_op(write);
            match self.commit(id, events.clone(), op).await {
                Err(CommitError::Change(StoreError::Conflict)) if attempt < WRITE_ATTEMPTS => {
                    continue
                }
                other => return Ok(other?),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Erasure by crypto-shredding: the subject's DEKs are destroyed and its fields,
    /// records and index entries removed; committed with `events`.
    pub async fn erase(&self, id: &SubjectId, events: Vec<Event>) -> Result<(), VaultError> {
        self.commit(id, events, self.store.erase_subject_op(id.as_str()))
            .await?;
        self.store.checkpoint().await;
        Ok(())
    }

    /// Places (`Some(case)`) or lifts a legal hold (PIPL Art. 47 ¶2), committed with
    /// `events`.
    pub async fn set_legal_hold(
        &self,
        id: &SubjectId,
        case: Option<&str>,
        events: Vec<Event>,
    ) -> Result<(), VaultError> {
        Ok(self
            .commit(id, events, self.store.set_legal_hold_op(id.as_str(), case))
            .await?)
    }

    /// Subjects whose searchable `field` equals `value` after normalisation, each with
    /// whether it is under a legal hold.
    pub async fn lookup(
        &self,
        field: &str,
        value: &Value,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, VaultError> {
        let spec = self.catalogue.field(field)?;
        if !spec.searchable {
            return Err(ValidationError::new(
                field,
                "not_searchable",
                "this field has no blind index",
            )
            .into());
        }
        let parsed = spec.kind.parse_on(field, value, self.today())?;
        let digests = self.keys.blind_indexes(field, parsed.canonical());
        Ok(self.store.lookup(field, &digests, after, limit).await?)
    }

    fn collection(&self, name: &str) -> Result<&crate::classify::CollectionSpec, VaultError> {
        self.catalogue
            .collection(name)
            .ok_or(VaultError::UnknownCollection)
    }

    /// Adds a JSON document to one of the subject's collections under `record_id`
    /// (`RecordId::generate`), committed with `events`.
    /// A record document checked (its collection exists, it is an object within the
    /// collection's size) and serialised for sealing.
    pub fn record_bytes(
        &self,
        collection: &str,
        document: &Value,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        let spec = self.collection(collection)?;
        if !document.is_object() {
            return Err(ValidationError::new(
                collection,
                "document_type",
                "a record must be a JSON object",
            )
            .into());
        }
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(document).map_err(|_| {
            ValidationError::new(
                collection,
                "document_type",
                "a record must be a JSON object",
            )
        })?);
        if bytes.len() > spec.max_bytes {
            return Err(ValidationError::new(
                collection,
                "document_too_large",
                format!("a record may be at most {} bytes", spec.max_bytes),
            )
            .into());
        }
        Ok(bytes)
    }

    pub async fn add_record(
        &self,
        id: &SubjectId,
        collection: &str,
        record_id: &RecordId,
        document: &Value,
        events: Vec<Event>,
    ) -> Result<(), VaultError> {
        let bytes = self.record_bytes(collection, document)?;
        for attempt in 1..=WRITE_ATTEMPTS {
            let wk = self.write_key(id, 1).await?;
            let row = RecordRow {
                id: record_id.0.clone(),
                collection: collection.to_owned(),
                dek_version: wk.version,
                sealed: wk.key.seal(
                    &Aad::record(id.as_str(), collection, &record_id.0, wk.version),
                    &bytes,
                ),
                created_at: now_ms(),
            };
            let op = self.store.insert_record_op(id.as_str(), wk.new_row, row);
            match self.commit(id, events.clone(), op).await {
                Err(CommitError::Change(StoreError::Conflict)) if attempt < WRITE_ATTEMPTS => {
                    continue
                }
                other => return Ok(other?),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// All documents of one of the subject's collections, oldest first.
    pub async fn records(
        &self,
        id: &SubjectId,
        collection: &str,
    ) -> Result<Vec<RecordOut>, VaultError> {
        self.collection(collection)?;
        if !self.store.subject_active(id.as_str()).await? {
            return Err(VaultError::NotFound);
        }
        // Records and keys are read one after the other: a re-encryption landing in
        // between replaces the keys the records were sealed under. Read both again then.
        let mut attempt = 1;
        let (rows, keys) = loop {
            let rows = self.store.records(id.as_str(), collection).await?;
            let keys = self.unwrap_all(id).await?;
            if attempt >= WRITE_ATTEMPTS || rows.iter().all(|r| keys.contains_key(&r.dek_version)) {
                break (rows, keys);
            }
            attempt += 1;
        };
        rows.into_iter()
            .map(|row| {
                let aad = Aad::record(id.as_str(), collection, &row.id, row.dek_version);
                let plain = keys
                    .get(&row.dek_version)
                    .ok_or(CryptoError::Decrypt)
                    .and_then(|k| k.open(&aad, &row.sealed))
                    .map_err(|e| {
                        tracing::error!(subject = %id, record = %row.id, error = %e, "record failed to decrypt");
                        VaultError::Integrity {
                            what: format!("record {}", row.id),
                        }
                    })?;
                let document = serde_json::from_slice(&plain).map_err(|_| VaultError::Integrity {
                    what: format!("record {}", row.id),
                })?;
                Ok(RecordOut {
                    created_at: crate::store::rfc3339(row.created_at),
                    id: row.id,
                    document,
                })
            })
            .collect()
    }
}
