//! API keys: credentials of one identity, stored as argon2id hashes only.

use super::identity::{Identity, State};
use super::scope;
use super::ids::{IdentityId, KeyId};
use super::time::UnixMillis;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An API key as stored. There is no secret here, only its hash.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Narrows the identity's datasets; empty means no narrowing.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// A decoy: Verify answers it as an unknown token and records its use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub honeytoken: bool,
    /// The argon2id PHC string of the secret.
    pub secret_hash: String,
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

    /// The scopes this key grants as a key of `identity`.
    pub fn effective_scopes(&self, identity: &Identity) -> Vec<String> {
        scope::effective(&identity.scopes, &self.scopes)
    }

    /// The datasets this key may access as a key of `identity`.
    pub fn effective_datasets(&self, identity: &Identity) -> Vec<String> {
        scope::effective_datasets(&identity.datasets, &self.datasets)
    }

    /// Whether this key, as a key of `identity`, holds `wanted`.
    pub fn holds_scope(&self, identity: &Identity, wanted: &str) -> bool {
        scope::holds(&identity.scopes, &self.scopes, wanted)
    }

    /// Whether this key, as a key of `identity`, may access `dataset`.
    pub fn may_access_dataset(&self, identity: &Identity, dataset: &str) -> bool {
        scope::may_access(&identity.datasets, &self.datasets, dataset)
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
}

impl KeyFilter {
    /// Whether `key`, a key of `identity`, passes.
    pub fn matches(&self, key: &ApiKey, identity: &Identity) -> bool {
        self.state.is_none_or(|state| key.state == state)
            && self
                .scope
                .as_ref()
                .is_none_or(|wanted| key.holds_scope(identity, wanted))
    }
}
