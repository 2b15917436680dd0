//! API keys: credentials of one identity, stored as argon2id hashes only.

use super::identity::{Identity, State};
use super::ids::{IdentityId, KeyId};
use super::labels::{self, Labels};
use super::revision::{self, RevisionConflict};
use super::scope;
use super::time::UnixMillis;
use super::usage::{self, Credits, LimitCheck, RateLimit, UsageCheck};
use ipnet::IpNet;

/// A fingerprint of a stored PHC string (128 bits of its SHA-256): what a
/// verified token is remembered against, and all a cached copy of a key
/// record keeps of its hash.
pub type HashFingerprint = [u8; 16];

/// The argon2id hash a key's secret is checked against.
///
/// A record read from the store carries the PHC string itself. A copy that
/// Verify's record cache returns carries only the string's fingerprint: that
/// is all a token accepted before is compared with, and 16 bytes in place of
/// about 100 a cached key. A check that needs argon2 needs the string, and
/// so a record read from the store. A key with only a fingerprint cannot be
/// written back: the store's record conversion refuses it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretHash {
    /// The PHC string, as stored.
    Phc(String),
    /// Only the PHC string's fingerprint.
    Fingerprint(HashFingerprint),
}

impl SecretHash {
    /// The fingerprint of a PHC string.
    pub fn fingerprint_of(phc: &str) -> HashFingerprint {
        let full = <sha2::Sha256 as sha2::Digest>::digest(phc.as_bytes());
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&full[..16]);
        fingerprint
    }

    /// This hash's fingerprint.
    pub fn fingerprint(&self) -> HashFingerprint {
        match self {
            Self::Phc(phc) => Self::fingerprint_of(phc),
            Self::Fingerprint(fingerprint) => *fingerprint,
        }
    }

    /// The PHC string, when this copy of the record has it.
    pub fn phc(&self) -> Option<&str> {
        match self {
            Self::Phc(phc) => Some(phc),
            Self::Fingerprint(_) => None,
        }
    }
}

impl std::fmt::Debug for SecretHash {
    // Like the PHC string in `ApiKey`'s `Debug`: what an attacker would
    // brute-force stays out of logs, and so does its fingerprint.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Phc(_) => f.write_str("SecretHash::Phc([redacted])"),
            Self::Fingerprint(_) => f.write_str("SecretHash::Fingerprint([redacted])"),
        }
    }
}

/// How a key came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The first key of CreateIdentity.
    CreateIdentity,
    /// CreateKey.
    CreateKey,
    /// The first key of a dataset's identity (the dataset wizard).
    Dataset,
    /// The replacement minted by RollKey.
    Roll,
    /// A token of another system brought in by ImportKeys.
    Import,
}

/// Why a key's record ends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyEndKind {
    /// Its `expire_time`, or its identity's, came.
    Expired,
    /// The grace period after its roll ended.
    GraceEnded,
}

/// When and why a key's record ends on its own: an entry of the deadline
/// index, from which KEY_EXPIRING, KEY_EXPIRED and GRACE_ENDED come.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyEnd {
    /// The key.
    pub key_id: KeyId,
    /// Why it ends.
    pub kind: KeyEndKind,
    /// When.
    pub at: UnixMillis,
}

/// An API key as stored. There is no secret here, only its hash.
#[derive(Clone, PartialEq)]
pub struct ApiKey {
    /// Public access key id (its identity's id plus a suffix).
    pub id: KeyId,
    /// The owner.
    pub identity_id: IdentityId,
    /// Unique among the identity's keys that have not been rolled.
    pub name: String,
    /// Free text for operators.
    pub description: String,
    /// Active or disabled.
    pub state: State,
    /// When it was created.
    pub create_time: UnixMillis,
    /// When it stops working, if ever.
    pub expire_time: Option<UnixMillis>,
    /// Approximate time of the last successful Verify.
    pub last_use_time: Option<UnixMillis>,
    /// The key this one replaced.
    pub rolled_from: Option<KeyId>,
    /// The key that replaced this one.
    pub rolled_to: Option<KeyId>,
    /// After a roll with a grace period: when this key stops working.
    pub grace_expire_time: Option<UnixMillis>,
    /// Prefix, key id and first characters of the secret, for display.
    pub token_hint: String,
    /// Narrows the identity's allow-list; empty means no narrowing.
    pub allowed_cidrs: Vec<IpNet>,
    /// Narrows the identity's scopes; empty means no narrowing.
    pub scopes: Vec<String>,
    /// Narrows the identity's datasets; empty means no narrowing.
    pub datasets: Vec<String>,
    /// Operator-chosen facts; Verify lays them over the identity's.
    pub labels: Labels,
    /// How the key came to be (`None` for keys written before origins were
    /// recorded).
    pub origin: Option<Origin>,
    /// A decoy: Verify answers it as an unknown token and records its use.
    pub honeytoken: bool,
    /// The key's own rate limits, on top of its identity's.
    pub rate_limits: Vec<RateLimit>,
    /// The key's balance of uses, if it has one.
    pub credits: Option<Credits>,
    /// The key whose budget (own rate limits and credits) this key draws on,
    /// when not its own: a replacement minted by RollKey keeps drawing on the
    /// budget of the key it replaced, which the old key, in its grace period,
    /// shares. Rolling never grants a fresh budget.
    pub usage_account: Option<KeyId>,
    /// The argon2id hash of the secret.
    pub secret_hash: SecretHash,
    /// Incremented by every write (see `Identity::revision`).
    pub revision: u64,
}

impl ApiKey {
    /// When this key's record must be gone: the earliest of its expiry, its
    /// grace deadline and its identity's expiry. Stores set this as the
    /// record's native TTL.
    pub fn record_deadline(&self, identity_expire_time: Option<UnixMillis>) -> Option<UnixMillis> {
        UnixMillis::earliest([
            self.expire_time,
            self.grace_expire_time,
            identity_expire_time,
        ])
    }

    /// When and why this key's record ends on its own (see
    /// `record_deadline`): at its grace deadline the grace period ended,
    /// at any other deadline the key expired. The deadline index holds it.
    pub fn end(&self, identity_expire_time: Option<UnixMillis>) -> Option<KeyEnd> {
        let at = self.record_deadline(identity_expire_time)?;
        let kind = if self.grace_expire_time == Some(at) {
            KeyEndKind::GraceEnded
        } else {
            KeyEndKind::Expired
        };
        Some(KeyEnd {
            key_id: self.id.clone(),
            kind,
            at,
        })
    }

    /// The scopes this key grants as a key of `identity`.
    pub fn effective_scopes(&self, identity: &Identity) -> Vec<String> {
        scope::effective(&identity.scopes, &self.scopes)
    }

    /// The datasets this key may access as a key of `identity`.
    pub fn effective_datasets(&self, identity: &Identity) -> Vec<String> {
        scope::effective_datasets(&identity.datasets, &self.datasets)
    }

    /// The labels Verify answers with: the identity's, the key's winning.
    pub fn effective_labels(&self, identity: &Identity) -> Labels {
        labels::merged(&identity.labels, &self.labels)
    }

    /// Whether this key, as a key of `identity`, holds `wanted`.
    pub fn holds_scope(&self, identity: &Identity, wanted: &str) -> bool {
        scope::holds(&identity.scopes, &self.scopes, wanted)
    }

    /// Whether this key, as a key of `identity`, may access `dataset`.
    pub fn may_access_dataset(&self, identity: &Identity, dataset: &str) -> bool {
        scope::may_access(&identity.datasets, &self.datasets, dataset)
    }

    /// The key whose budget this key draws on (see `usage_account`).
    pub fn budget_key(&self) -> &KeyId {
        self.usage_account.as_ref().unwrap_or(&self.id)
    }

    /// The keys that may draw on this key's budget besides itself: the key
    /// it replaced, its replacement, and the budget's first key. Deleting a
    /// key drops its budget's states (`budget_fields`) unless one of them is
    /// still alive.
    pub fn budget_sharers(&self) -> impl Iterator<Item = &KeyId> {
        [&self.rolled_from, &self.rolled_to, &self.usage_account]
            .into_iter()
            .flatten()
            .filter(|other| **other != self.id)
    }

    /// The fields of the identity's usage map that hold this key's budget.
    pub fn budget_fields(&self) -> Vec<String> {
        let account = self.budget_key().as_str();
        std::iter::once(usage::credits_field(account))
            .chain(
                self.rate_limits
                    .iter()
                    .map(|limit| usage::key_limit_field(account, &limit.name)),
            )
            .collect()
    }

    /// What a Verify of this key, as a key of `identity`, must be settled
    /// against; `None` when neither has limits or credits (such a Verify
    /// costs the store nothing).
    pub fn usage_check<'a>(&'a self, identity: &'a Identity, cost: u64) -> Option<UsageCheck<'a>> {
        if self.rate_limits.is_empty() && self.credits.is_none() && identity.rate_limits.is_empty()
        {
            return None;
        }
        let account = self.budget_key().as_str();
        let shared = identity.rate_limits.iter().map(|limit| LimitCheck {
            field: usage::identity_limit_field(&limit.name),
            limit,
            shared: true,
        });
        let own = self.rate_limits.iter().map(|limit| LimitCheck {
            field: usage::key_limit_field(account, &limit.name),
            limit,
            shared: false,
        });
        Some(UsageCheck {
            cost,
            credits: self
                .credits
                .as_ref()
                .map(|credits| (usage::credits_field(account), credits)),
            limits: shared.chain(own).collect(),
        })
    }

    /// Whether `edit` keeps this key's grace fields, which only a roll sets:
    /// once a key was rolled, `rolled_to` and `grace_expire_time` never
    /// change, since an edit that moved them would move (or clear) a grace
    /// deadline. (UPDATE_KEY and ROLL_KEY in `store/redis/scripts.rs` mirror
    /// this.)
    pub fn keeps_grace_of(&self, edit: &ApiKey) -> bool {
        self.rolled_to == edit.rolled_to && self.grace_expire_time == edit.grace_expire_time
    }

    /// The record an edit of this stored key writes: `edit` at the next
    /// revision, when it was read at this key's revision and keeps its grace
    /// fields (see [`ApiKey::keeps_grace_of`]). (UPDATE_KEY mirrors this.)
    pub fn edited(&self, edit: &ApiKey) -> Result<ApiKey, RevisionConflict> {
        let next = revision::check_and_bump(self.revision, edit.revision)?;
        if !self.keeps_grace_of(edit) {
            return Err(RevisionConflict);
        }
        Ok(ApiKey {
            revision: next,
            ..edit.clone()
        })
    }

    /// What rolling this stored key writes of it: `retiring` (this key as
    /// read, now carrying `rolled_to` and maybe a grace deadline) at the next
    /// revision when it keeps a grace period, `None` when the key goes at
    /// once. Only a key still holding its name, read at its revision, may be
    /// rolled: a key rolls once. (ROLL_KEY mirrors this.)
    pub fn rolled(&self, retiring: &ApiKey) -> Result<Option<ApiKey>, RevisionConflict> {
        let next = revision::check_and_bump(self.revision, retiring.revision)?;
        if !self.holds_name() {
            return Err(RevisionConflict);
        }
        Ok(retiring.grace_expire_time.is_some().then(|| ApiKey {
            revision: next,
            ..retiring.clone()
        }))
    }

    /// This key as a write that read it stores it: at the next revision.
    /// (Where the store checks the revision elsewhere, in a script.)
    pub fn at_next_revision(&self) -> ApiKey {
        ApiKey {
            revision: revision::next(self.revision),
            ..self.clone()
        }
    }

    /// Whether the key was rolled and still works until its grace deadline.
    pub fn in_grace(&self) -> bool {
        self.grace_expire_time.is_some()
    }

    /// Whether the key holds its name among the identity's keys: a rolled key
    /// hands its name to its replacement.
    pub fn holds_name(&self) -> bool {
        self.rolled_to.is_none()
    }
}

impl std::fmt::Debug for ApiKey {
    // The PHC string is not a secret, but it is what an attacker would
    // brute-force; it stays out of logs like the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("identity_id", &self.identity_id)
            .field("name", &self.name)
            .field("state", &self.state)
            .field("expire_time", &self.expire_time)
            .field("rolled_from", &self.rolled_from)
            .field("rolled_to", &self.rolled_to)
            .field("grace_expire_time", &self.grace_expire_time)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Which keys a listing returns: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Only keys that hold this scope (as keys of their identity).
    pub scope: Option<String>,
    /// Only keys of this origin.
    pub origin: Option<Origin>,
    /// Only keys in (or out of) a grace period.
    pub in_grace: Option<bool>,
    /// Only honeytokens, or only real keys.
    pub honeytoken: Option<bool>,
    /// Only keys of this identity.
    pub identity_id: Option<IdentityId>,
    /// Only keys carrying every one of these labels (their own).
    pub labels: Vec<(String, String)>,
    /// Only keys that expire, before / after these instants.
    pub expire_before: Option<UnixMillis>,
    /// See `expire_before`.
    pub expire_after: Option<UnixMillis>,
    /// Only keys used, before / after these instants.
    pub last_use_before: Option<UnixMillis>,
    /// See `last_use_before`.
    pub last_use_after: Option<UnixMillis>,
}

fn within(time: Option<UnixMillis>, before: Option<UnixMillis>, after: Option<UnixMillis>) -> bool {
    if before.is_none() && after.is_none() {
        return true;
    }
    time.is_some_and(|time| {
        before.is_none_or(|before| time < before) && after.is_none_or(|after| time > after)
    })
}

impl KeyFilter {
    /// Whether the filter needs each key's identity (to judge scopes).
    pub fn needs_identity(&self) -> bool {
        self.scope.is_some()
    }

    /// Whether `key`, a key of `identity`, passes.
    pub fn matches(&self, key: &ApiKey, identity: Option<&Identity>) -> bool {
        self.state.is_none_or(|state| key.state == state)
            && self.origin.is_none_or(|origin| key.origin == Some(origin))
            && self
                .in_grace
                .is_none_or(|in_grace| key.in_grace() == in_grace)
            && self
                .honeytoken
                .is_none_or(|honeytoken| key.honeytoken == honeytoken)
            && self
                .identity_id
                .as_ref()
                .is_none_or(|id| key.identity_id == *id)
            && labels::matches_all(&key.labels, &self.labels)
            && within(key.expire_time, self.expire_before, self.expire_after)
            && within(key.last_use_time, self.last_use_before, self.last_use_after)
            && self.scope.as_ref().is_none_or(|wanted| {
                identity.is_some_and(|identity| key.holds_scope(identity, wanted))
            })
    }
}
