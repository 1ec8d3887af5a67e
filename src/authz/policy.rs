//! The access policy: casbin over `policies/model.conf` and `policies/policy.csv`, with
//! purposes from `policies/purposes.toml`. Default deny.
//!
//! At load, casbin decides every (role, object, action, purpose) combination once and the
//! answers are kept in a table, so a request costs one hash lookup. The table is rebuilt
//! with each reload and swapped atomically; a file that does not load is refused and the
//! last good policy stays in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi, RbacApi};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::classify::{Catalogue, Category};

/// Actions a policy line may grant.
pub const ACTIONS: &[&str] = &[
    "read",
    "read_masked",
    "write",
    "delete",
    "export",
    "audit",
    "admin",
    "provide",
];

/// Objects that are not fields or collections.
pub const SPECIAL_OBJECTS: &[&str] = &[
    "subject",
    "consent",
    "tokens",
    "keys",
    "policies",
    "audit_trail",
    "requests",
    "legal_hold",
    "deletion_notices",
    "bulk_export",
];

const CATEGORIES: &[Category] = &[
    Category::Identity,
    Category::Contact,
    Category::Payment,
    Category::Profile,
    Category::Service,
];

const BUILTIN_MODEL: &str = include_str!("../../policies/model.conf");
const BUILTIN_POLICY: &str = include_str!("../../policies/policy.csv");
const BUILTIN_PURPOSES: &str = include_str!("../../policies/purposes.toml");
const BUILTIN_RECIPIENTS: &str = include_str!("../../policies/recipients.toml");
const BUILTIN_PIPIA: &str = include_str!("../../policies/pipia.toml");

/// The policy files; the last two (the recipient registry and the PIPIA records) may be
/// missing from a policy directory, which then registers no recipient.
const FILES: [&str; 5] = [
    "model.conf",
    "policy.csv",
    "purposes.toml",
    "recipients.toml",
    "pipia.toml",
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("model.conf: {0}")]
    Model(String),
    #[error("policy.csv line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("purposes.toml: {0}")]
    Purposes(String),
    /// recipients.toml or pipia.toml (the message names which).
    #[error("{0}")]
    Recipients(String),
    #[error("policy: {0}")]
    Casbin(String),
}

/// A declared purpose.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeSpec {
    pub description: String,
    pub legal_basis: LegalBasis,
    /// Raised when the purpose's scope changes; consents to earlier versions no longer
    /// count (PIPL Art. 14) until the subject consents again.
    #[serde(default = "first_version")]
    pub version: i64,
    /// When a consent-based purpose needs separate consent: for sensitive personal
    /// information (Art. 29, the default) or always (e.g. transfer abroad, Art. 39).
    #[serde(default)]
    pub separate_consent: SeparateConsent,
    /// The subject may refuse processing for this purpose outright (Art. 24 ¶2:
    /// personalised marketing), whatever its legal basis: recorded as the consent purpose
    /// `opt_out:NAME`, it blocks every read, lookup and provision for the purpose at once,
    /// until lifted.
    #[serde(default)]
    pub refusable: bool,
    /// Decisions for this purpose are made by automated evaluation of the subject (Art.
    /// 24: segmentation, scoring): the subject may ask for an explanation.
    #[serde(default)]
    pub automated_decision: bool,
    /// The impact assessment (in `pipia.toml`) behind this purpose: required when it
    /// decides by automated evaluation or uses sensitive personal information (Art. 55).
    #[serde(default)]
    pub pipia: Option<String>,
}

fn first_version() -> i64 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeparateConsent {
    #[default]
    Sensitive,
    Always,
}

impl PurposeSpec {
    pub fn requires_consent(&self) -> bool {
        self.legal_basis == LegalBasis::Consent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    Contract,
    LegalObligation,
    Consent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposesFile {
    purposes: BTreeMap<String, PurposeSpec>,
}

/// The purposes declared in `purposes.toml` text.
pub(crate) fn parse_purposes(text: &str) -> Result<BTreeMap<String, PurposeSpec>, PolicyError> {
    toml::from_str::<PurposesFile>(text)
        .map(|f| f.purposes)
        .map_err(|e| PolicyError::Purposes(e.to_string()))
}

/// How a caller may see a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldAccess {
    Clear,
    Masked,
}

/// Why a decision came out as it did, for people who write policies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub allowed: bool,
    /// The policy lines that matched (`role, object, action, purpose`).
    pub matched: Vec<String>,
    /// The category the object belongs to, when it is a field or collection.
    pub category: Option<String>,
    pub note: Option<String>,
}

/// One loaded policy: the enforcer, its decision table and the declared purposes.
pub struct PolicySet {
    enforcer: Enforcer,
    rules: Vec<Vec<String>>,
    /// role → purpose → object → bit set of allowed actions (bit i is `ACTIONS[i]`).
    allowed: HashMap<String, HashMap<String, HashMap<String, u8>>>,
    claimable: BTreeMap<String, BTreeSet<String>>,
    purposes: BTreeMap<String, PurposeSpec>,
    objects: BTreeMap<String, Option<String>>,
    digest: String,
    recipients: Arc<crate::pipl::Recipients>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("digest", &self.digest)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The only policy effect piivault runs with: allow what some line allows, deny the
/// rest. Any other effect (say `!some(where (p.eft == deny))`, allow by default) is
/// refused, as is text casbin does not know (it panics on an unknown effect).
const DEFAULT_DENY_EFFECT: &str = "some(where (p.eft == allow))";

/// Refuses a model whose `[policy_effect]` is not [`DEFAULT_DENY_EFFECT`].
fn check_effect(model_text: &str) -> Result<(), PolicyError> {
    let mut section = "";
    let mut effects = Vec::new();
    for line in model_text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[policy_effect]" && !line.is_empty() && !line.starts_with('#') {
            effects.push(line);
        }
    }
    // casbin compares the text itself, so its spacing must be exactly this too.
    let is_default_deny = |line: &str| {
        line.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "e" && v.trim() == DEFAULT_DENY_EFFECT)
    };
    match effects.as_slice() {
        [one] if is_default_deny(one) => Ok(()),
        _ => Err(PolicyError::Model(format!(
            "[policy_effect] must be exactly `e = {DEFAULT_DENY_EFFECT}`: piivault denies whatever no policy line allows"
        ))),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

struct Texts {
    model: String,
    policy: String,
    purposes: String,
    recipients: String,
    pipia: String,
}

fn read_texts(dir: Option<&Path>) -> Result<Texts, PolicyError> {
    let Some(dir) = dir else {
        return Ok(Texts {
            model: BUILTIN_MODEL.into(),
            policy: BUILTIN_POLICY.into(),
            purposes: BUILTIN_PURPOSES.into(),
            recipients: BUILTIN_RECIPIENTS.into(),
            pipia: BUILTIN_PIPIA.into(),
        });
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| PolicyError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let optional = |name: &str| match std::fs::read_to_string(dir.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        _ => read(name),
    };
    Ok(Texts {
        model: read(FILES[0])?,
        policy: read(FILES[1])?,
        purposes: read(FILES[2])?,
        recipients: optional(FILES[3])?,
        pipia: optional(FILES[4])?,
    })
}

impl PolicySet {
    /// Loads the policy from `dir` (or the built-in copy) against the classification.
    pub async fn load(dir: Option<&Path>, catalogue: &Catalogue) -> Result<Self, PolicyError> {
        let texts = read_texts(dir)?;
        let set = Self::from_texts(&texts.model, &texts.policy, &texts.purposes, catalogue).await?;
        set.with_registry(&texts.recipients, &texts.pipia, catalogue)
    }

    /// The same policy with the recipient registry and the PIPIA records from these
    /// texts, checked against its purposes and the classification; the digest covers
    /// them too.
    pub(crate) fn with_registry(
        mut self,
        recipients_text: &str,
        pipia_text: &str,
        catalogue: &Catalogue,
    ) -> Result<Self, PolicyError> {
        let registry =
            crate::pipl::Recipients::parse(recipients_text, pipia_text, &self.purposes, catalogue)
                .map_err(PolicyError::Recipients)?;
        // Art. 55: a purpose that uses sensitive personal information or decides by
        // automated evaluation needs an impact assessment first.
        for (name, spec) in &self.purposes {
            let sensitive = self.objects_used_for(name).iter().any(|o| {
                catalogue.field(o).is_ok_and(|f| f.sensitive)
                    || catalogue.collection(o).is_some_and(|c| c.sensitive)
            });
            match &spec.pipia {
                Some(p) if !registry.pipia.contains_key(p) => {
                    return Err(PolicyError::Purposes(format!(
                        "purpose {name:?} names PIPIA {p:?}, which is not recorded in pipia.toml"
                    )))
                }
                None if sensitive || spec.automated_decision => {
                    let why = if spec.automated_decision {
                        "decides by automated evaluation"
                    } else {
                        "is granted sensitive personal information in policy.csv"
                    };
                    return Err(PolicyError::Purposes(format!(
                        "purpose {name:?} {why}, so it needs a PIPIA (PIPL Art. 55): record one in pipia.toml and name it with pipia = \"...\""
                    )));
                }
                _ => {}
            }
        }
        if !recipients_text.is_empty() || !pipia_text.is_empty() {
            let mut hash = Sha256::new();
            hash.update(self.digest.as_bytes());
            for t in [recipients_text, pipia_text] {
                hash.update((t.len() as u64).to_be_bytes());
                hash.update(t.as_bytes());
            }
            self.digest = hex::encode(&hash.finalize()[..8]);
        }
        self.recipients = Arc::new(registry);
        Ok(self)
    }

    pub(crate) async fn from_texts(
        model_text: &str,
        policy_text: &str,
        purposes_text: &str,
        catalogue: &Catalogue,
    ) -> Result<Self, PolicyError> {
        let purposes = parse_purposes(purposes_text)?;
        if let Some(bad) = purposes.keys().find(|p| !valid_name(p)) {
            return Err(PolicyError::Purposes(format!(
                "purpose name {bad:?} must be lower_snake_case"
            )));
        }

        // Every object a request can name, with its category.
        let mut objects: BTreeMap<String, Option<String>> = BTreeMap::new();
        for f in catalogue.fields() {
            objects.insert(
                f.name.clone(),
                Some(format!("category:{}", f.category.as_str())),
            );
        }
        for c in catalogue.collections() {
            objects.insert(
                c.name.clone(),
                Some(format!("category:{}", c.category.as_str())),
            );
        }
        for o in SPECIAL_OBJECTS {
            objects.insert((*o).to_owned(), None);
        }
        let categories: BTreeSet<String> = CATEGORIES
            .iter()
            .map(|c| format!("category:{}", c.as_str()))
            .collect();

        let mut rules = Vec::new();
        let mut inherits = Vec::new();
        let mut roles = BTreeSet::new();
        for (i, raw) in policy_text.lines().enumerate() {
            let line = i + 1;
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let parts: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
            let err = |message: String| PolicyError::Line { line, message };
            match parts.first().map(String::as_str) {
                Some("p") => {
                    let [_, role, object, action, purpose] = parts.as_slice() else {
                        return Err(err("a p line is: p, ROLE, OBJECT, ACTION, PURPOSE".into()));
                    };
                    if !valid_name(role) {
                        return Err(err(format!("role {role:?} must be lower_snake_case")));
                    }
                    if !objects.contains_key(object) && !categories.contains(object) {
                        return Err(err(format!(
                            "unknown object {object:?}: not a classified field or collection, a category:NAME, or one of {}",
                            SPECIAL_OBJECTS.join(", ")
                        )));
                    }
                    if !ACTIONS.contains(&action.as_str()) {
                        return Err(err(format!(
                            "unknown action {action:?} (known: {})",
                            ACTIONS.join(", ")
                        )));
                    }
                    if !purposes.contains_key(purpose) {
                        return Err(err(format!(
                            "purpose {purpose:?} is not declared in purposes.toml"
                        )));
                    }
                    roles.insert(role.clone());
                    rules.push(parts[1..].to_vec());
                }
                Some("g") => {
                    let [_, role, parent] = parts.as_slice() else {
                        return Err(err("a g line is: g, ROLE, PARENT_ROLE".into()));
                    };
                    if !valid_name(role) || !valid_name(parent) {
                        return Err(err("role names must be lower_snake_case".into()));
                    }
                    roles.insert(role.clone());
                    roles.insert(parent.clone());
                    inherits.push(parts[1..].to_vec());
                }
                _ => return Err(err("a line starts with p or g (or # for a comment)".into())),
            }
        }
        if rules.is_empty() {
            return Err(PolicyError::Line {
                line: 0,
                message: "the policy allows nothing".into(),
            });
        }

        check_effect(model_text)?;
        let model = DefaultModel::from_str(model_text)
            .await
            .map_err(|e| PolicyError::Model(e.to_string()))?;
        let mut enforcer = Enforcer::new(model, MemoryAdapter::default())
            .await
            .map_err(|e| PolicyError::Model(e.to_string()))?;
        let casbin_err = |e: casbin::Error| PolicyError::Casbin(e.to_string());
        enforcer
            .add_policies(rules.clone())
            .await
            .map_err(casbin_err)?;
        if !inherits.is_empty() {
            enforcer
                .add_grouping_policies(inherits)
                .await
                .map_err(casbin_err)?;
        }
        let groups: Vec<Vec<String>> = objects
            .iter()
            .filter_map(|(o, c)| c.as_ref().map(|c| vec![o.clone(), c.clone()]))
            .collect();
        enforcer
            .add_named_grouping_policies("g2", groups)
            .await
            .map_err(casbin_err)?;

        // A role can only be granted something for a purpose named in its own lines or
        // in those of a role it inherits from; casbin decides the rest.
        let mut allowed: HashMap<String, HashMap<String, HashMap<String, u8>>> = HashMap::new();
        let mut claimable: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for role in &roles {
            let mut lineage = enforcer.get_implicit_roles_for_user(role, None);
            lineage.push(role.clone());
            let named: BTreeSet<&String> = rules
                .iter()
                .filter(|r| lineage.contains(&r[0]))
                .map(|r| &r[3])
                .collect();
            let entry = claimable.entry(role.clone()).or_default();
            for purpose in named {
                for object in objects.keys() {
                    for (bit, action) in ACTIONS.iter().enumerate() {
                        let yes = enforcer
                            .enforce((role.as_str(), object.as_str(), *action, purpose.as_str()))
                            .map_err(|e| {
                                PolicyError::Model(format!(
                                    "the model cannot decide (role, object, action, purpose) requests: {e}"
                                ))
                            })?;
                        if yes {
                            *allowed
                                .entry(role.clone())
                                .or_default()
                                .entry(purpose.clone())
                                .or_default()
                                .entry(object.clone())
                                .or_default() |= 1 << bit;
                            entry.insert(purpose.clone());
                        }
                    }
                }
            }
        }

        let mut hash = Sha256::new();
        for t in [model_text, policy_text, purposes_text] {
            hash.update((t.len() as u64).to_be_bytes());
            hash.update(t.as_bytes());
        }
        Ok(Self {
            enforcer,
            rules,
            allowed,
            claimable,
            purposes,
            objects,
            digest: hex::encode(&hash.finalize()[..8]),
            recipients: Arc::default(),
        })
    }

    /// Whether `role` may do `action` on `object` for `purpose`.
    pub fn allows(&self, role: &str, object: &str, action: &str, purpose: &str) -> bool {
        let Some(bit) = ACTIONS.iter().position(|a| *a == action) else {
            return false;
        };
        self.allowed
            .get(role)
            .and_then(|p| p.get(purpose))
            .and_then(|o| o.get(object))
            .is_some_and(|bits| bits & (1 << bit) != 0)
    }

    /// The fields and collections any role may use for `purpose` (read, read masked or
    /// provide), by name.
    pub fn objects_used_for(&self, purpose: &str) -> BTreeSet<String> {
        let mask = ["read", "read_masked", "provide"]
            .iter()
            .filter_map(|a| ACTIONS.iter().position(|x| x == a))
            .fold(0u8, |m, bit| m | (1 << bit));
        self.allowed
            .values()
            .filter_map(|p| p.get(purpose))
            .flat_map(|objects| objects.iter())
            .filter(|(_, bits)| **bits & mask != 0)
            .map(|(object, _)| object.clone())
            .collect()
    }

    /// Asks casbin directly, bypassing the decision table (for benchmarks and checks).
    pub fn enforce(&self, role: &str, object: &str, action: &str, purpose: &str) -> bool {
        self.enforcer
            .enforce((role, object, action, purpose))
            .unwrap_or(false)
    }

    /// How `role` may see `field` for `purpose`: in clear, masked, or not at all.
    pub fn field_access(&self, role: &str, field: &str, purpose: &str) -> Option<FieldAccess> {
        if self.allows(role, field, "read", purpose) {
            Some(FieldAccess::Clear)
        } else if self.allows(role, field, "read_masked", purpose) {
            Some(FieldAccess::Masked)
        } else {
            None
        }
    }

    pub fn is_role(&self, role: &str) -> bool {
        self.claimable.contains_key(role)
    }

    pub fn roles(&self) -> impl Iterator<Item = &String> {
        self.claimable.keys()
    }

    /// The purposes a token of `role` may be issued for.
    pub fn claimable(&self, role: &str) -> Option<&BTreeSet<String>> {
        self.claimable.get(role)
    }

    pub fn purposes(&self) -> &BTreeMap<String, PurposeSpec> {
        &self.purposes
    }

    /// The registered recipients and PIPIA records.
    pub fn recipients(&self) -> &crate::pipl::Recipients {
        &self.recipients
    }

    /// What a consent to `purpose` is: a declared purpose; `opt_out:NAME`, the subject's
    /// refusal of a refusable purpose; or `recipient:ID`, the subject's separate consent
    /// to provision to a registered recipient that needs it (independent, or abroad).
    pub fn consent_spec(&self, purpose: &str) -> Option<PurposeSpec> {
        if let Some(spec) = self.purposes.get(purpose) {
            return Some(spec.clone());
        }
        if let Some(name) = purpose.strip_prefix("opt_out:") {
            let refused = self.purposes.get(name).filter(|p| p.refusable)?;
            return Some(PurposeSpec {
                description: format!("The subject refuses: {}", refused.description),
                legal_basis: LegalBasis::Consent,
                version: 1,
                separate_consent: SeparateConsent::Sensitive,
                refusable: false,
                automated_decision: false,
                pipia: None,
            });
        }
        let id = purpose.strip_prefix("recipient:")?;
        let r = self
            .recipients
            .get(id)
            .filter(|r| r.needs_separate_consent())?;
        Some(PurposeSpec {
            description: format!("Provision of personal information to {}", r.name),
            legal_basis: LegalBasis::Consent,
            version: 1,
            separate_consent: SeparateConsent::Always,
            refusable: false,
            automated_decision: false,
            pipia: None,
        })
    }

    /// A short hash of the three policy files, to tell versions apart in logs.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Asks casbin itself, and says which lines matched.
    pub fn explain(
        &self,
        role: &str,
        object: &str,
        action: &str,
        purpose: &str,
    ) -> Result<Explanation, PolicyError> {
        let category = self.objects.get(object).cloned().flatten();
        let note = if !self.objects.contains_key(object) {
            Some(format!(
                "{object:?} is not a classified field or collection nor a special object"
            ))
        } else if !self.purposes.contains_key(purpose) {
            Some(format!(
                "purpose {purpose:?} is not declared in purposes.toml"
            ))
        } else if !ACTIONS.contains(&action) {
            Some(format!(
                "unknown action {action:?} (known: {})",
                ACTIONS.join(", ")
            ))
        } else if !self.is_role(role) {
            Some(format!("role {role:?} appears nowhere in policy.csv"))
        } else {
            None
        };
        let allowed = self
            .enforcer
            .enforce((role, object, action, purpose))
            .map_err(|e| PolicyError::Casbin(e.to_string()))?;
        // The lines that grant it, read the way the shipped matcher reads them.
        let mut roles = self.enforcer.get_implicit_roles_for_user(role, None);
        roles.push(role.to_owned());
        let lines: Vec<&Vec<String>> = self
            .rules
            .iter()
            .filter(|r| {
                roles.contains(&r[0])
                    && (r[1] == object || category.as_deref() == Some(r[1].as_str()))
                    && r[2] == action
                    && r[3] == purpose
            })
            .collect();
        Ok(Explanation {
            allowed,
            matched: lines
                .iter()
                .map(|l| format!("p, {}", l.join(", ")))
                .collect(),
            category,
            note,
        })
    }
}

/// The policy in force, reloadable while the vault runs.
pub struct Policy {
    current: RwLock<Arc<PolicySet>>,
    dir: Option<PathBuf>,
    catalogue: Arc<Catalogue>,
    stamp: RwLock<Vec<Option<[u8; 32]>>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What the policy files hold now: the SHA-256 of each one's contents (`None` for a
/// missing file). Contents, not modification times: an editor that truncates a file and
/// then writes it can leave two versions with the same mtime (its resolution is coarse on
/// some filesystems), and a reload that caught the first, half-written one would never
/// see the second.
fn stamps(dir: Option<&Path>) -> Vec<Option<[u8; 32]>> {
    use sha2::Digest as _;
    let Some(dir) = dir else { return Vec::new() };
    FILES
        .iter()
        .map(|f| {
            std::fs::read(dir.join(f))
                .ok()
                .map(|b| sha2::Sha256::digest(b).into())
        })
        .collect()
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Applied { digest: String },
    Refused(PolicyError),
}

impl Policy {
    pub async fn load(
        dir: Option<PathBuf>,
        catalogue: Arc<Catalogue>,
    ) -> Result<Self, PolicyError> {
        let stamp = stamps(dir.as_deref());
        let set = PolicySet::load(dir.as_deref(), &catalogue).await?;
        Ok(Self {
            current: RwLock::new(Arc::new(set)),
            dir,
            catalogue,
            stamp: RwLock::new(stamp),
        })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads the files; a policy that does not load is refused and the old one stays.
    pub async fn reload(&self) -> Reload {
        let stamp = stamps(self.dir.as_deref());
        if let Ok(mut s) = self.stamp.write() {
            *s = stamp;
        }
        match PolicySet::load(self.dir.as_deref(), &self.catalogue).await {
            Ok(set) => {
                if set.digest() == self.current().digest() {
                    return Reload::Unchanged;
                }
                let digest = set.digest().to_owned();
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
                tracing::info!(policy = %digest, "policy reloaded");
                metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "loaded")
                    .increment(1);
                Reload::Applied { digest }
            }
            Err(e) => {
                tracing::error!(error = %e, policy = %self.current().digest(), "policy reload refused; the last good policy stays in force");
                metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "refused")
                    .increment(1);
                Reload::Refused(e)
            }
        }
    }

    /// Whether the policy files changed on disk since the last load.
    fn changed(&self) -> bool {
        let now = stamps(self.dir.as_deref());
        self.stamp.read().map(|s| *s != now).unwrap_or(true)
    }

    /// Reloads when the files change (checked every `interval`) or on SIGHUP; every
    /// reload that applies or is refused is recorded in the audit trail.
    pub fn watch(self: Arc<Self>, interval: Duration, audit: crate::audit::Audit) {
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval);
            loop {
                let forced = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = tick.tick() => false,
                        _ = h.recv() => true,
                    },
                    None => {
                        tick.tick().await;
                        false
                    }
                };
                if forced || self.changed() {
                    let event = crate::audit::Event::new(
                        "system",
                        "vault",
                        "admin",
                        &crate::crypto::random_id("sys"),
                        "policy.reload",
                    );
                    let event = match self.reload().await {
                        Reload::Unchanged => None,
                        Reload::Applied { digest } => Some(event.target(&digest)),
                        Reload::Refused(_) => Some(
                            event
                                .target(self.current().digest())
                                .outcome(crate::audit::Decision::Error, "policy_refused"),
                        ),
                    };
                    if let Some(event) = event {
                        if let Err(e) = audit.record_one(event).await {
                            tracing::error!(error = %e, "policy reload not audited");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shipped_policy_loads_and_decides() {
        let cat = Catalogue::builtin().unwrap();
        let p = PolicySet::load(None, &cat).await.unwrap();
        assert_eq!(
            p.field_access("billing", "bank_card", "billing"),
            Some(FieldAccess::Clear)
        );
        assert_eq!(p.field_access("billing", "bank_card", "service"), None);
        assert_eq!(
            p.field_access("customer_service", "phone", "service"),
            Some(FieldAccess::Masked)
        );
        assert_eq!(
            p.field_access("dsr_handler", "id_number", "dsr"),
            Some(FieldAccess::Clear)
        );
        assert_eq!(p.field_access("admin", "name", "admin"), None);
        assert!(p.allows("admin", "tokens", "admin", "admin"));
        let claim: Vec<_> = p.claimable("billing").unwrap().iter().cloned().collect();
        assert_eq!(claim, vec!["billing".to_owned()]);
        let e = p
            .explain("customer_service", "phone", "read_masked", "service")
            .unwrap();
        assert!(e.allowed);
        assert_eq!(
            e.matched,
            vec!["p, customer_service, phone, read_masked, service"]
        );
        let e = p.explain("dsr_handler", "phone", "read", "dsr").unwrap();
        assert_eq!(
            e.matched,
            vec!["p, dsr_handler, category:contact, read, dsr"]
        );
        assert_eq!(e.category.as_deref(), Some("category:contact"));
    }

    /// Found by the policy fuzz target: casbin panics on an effect it does not know.
    /// Only the default-deny effect is accepted, spelt as casbin knows it.
    #[tokio::test]
    async fn a_model_without_default_deny_is_refused_not_a_panic() {
        let cat = Catalogue::builtin().unwrap();
        let with_effect = |e: &str| BUILTIN_MODEL.replace("e = some(where (p.eft == allow))", e);
        assert_ne!(
            with_effect("x"),
            BUILTIN_MODEL,
            "the shipped model names the effect"
        );
        for bad in [
            "e = some(wherpe. (eft == allow))",
            "e = !some(where (p.eft == deny))",
            "e = priority(p.eft) || deny",
            "",
            "e = some( where ( p.eft == allow ) )",
        ] {
            let err = PolicySet::from_texts(
                &with_effect(bad),
                "p, admin, tokens, admin, admin",
                BUILTIN_PURPOSES,
                &cat,
            )
            .await
            .unwrap_err();
            assert!(matches!(err, PolicyError::Model(_)), "{bad}: {err}");
        }
        let spaced = with_effect("e  =  some(where (p.eft == allow))");
        assert!(PolicySet::from_texts(
            &spaced,
            "p, admin, tokens, admin, admin",
            BUILTIN_PURPOSES,
            &cat
        )
        .await
        .is_ok());
    }

    #[tokio::test]
    async fn broken_policies_are_refused_with_the_line() {
        let cat = Catalogue::builtin().unwrap();
        let err = PolicySet::from_texts(
            BUILTIN_MODEL,
            "p, billing, bank_cart, read, billing",
            BUILTIN_PURPOSES,
            &cat,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PolicyError::Line { line: 1, .. }), "{err}");
        let err = PolicySet::from_texts(
            BUILTIN_MODEL,
            "# c\np, billing, name, peek, billing",
            BUILTIN_PURPOSES,
            &cat,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PolicyError::Line { line: 2, .. }), "{err}");
        let err = PolicySet::from_texts(
            BUILTIN_MODEL,
            "p, billing, name, read, fun",
            BUILTIN_PURPOSES,
            &cat,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("not declared"), "{err}");
        assert!(
            PolicySet::from_texts("[nonsense", BUILTIN_POLICY, BUILTIN_PURPOSES, &cat)
                .await
                .is_err()
        );
        assert!(PolicySet::from_texts(
            BUILTIN_MODEL,
            BUILTIN_POLICY,
            "[purposes.x]\nfoo = 1",
            &cat
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn role_inheritance() {
        let cat = Catalogue::builtin().unwrap();
        let text = format!("{BUILTIN_POLICY}\ng, senior_billing, billing\np, senior_billing, id_number, read_masked, billing\n");
        let p = PolicySet::from_texts(BUILTIN_MODEL, &text, BUILTIN_PURPOSES, &cat)
            .await
            .unwrap();
        assert_eq!(
            p.field_access("senior_billing", "bank_card", "billing"),
            Some(FieldAccess::Clear)
        );
        assert_eq!(
            p.field_access("senior_billing", "id_number", "billing"),
            Some(FieldAccess::Masked)
        );
        assert_eq!(p.field_access("billing", "id_number", "billing"), None);
    }
}
