//! What Verify's record cache keeps of a key record: only what a cached
//! Verify decides on, so that 100,000 cached keys fit the memory budget
//! (BENCHMARKS.md, Verify's record cache).
//!
//! A decoded [`ApiKey`] takes about 500 bytes with its strings; most of it
//! (name, description, hint, times, roll links, and the ~100-byte PHC
//! string) no cached Verify reads. [`CachedKey`] keeps the deadlines, state,
//! revision (a usage charge names it), a fingerprint of the PHC string (all
//! a token accepted before is compared with) and, behind one shared pointer
//! that most keys leave empty, the settings that narrow or meter the key.
//! Its id and its identity's id are the cache entry's name and its
//! identity's record, so they are not stored again.

use crate::domain::labels::Labels;
use crate::domain::usage::{Credits, RateLimit};
use crate::domain::{ApiKey, HashFingerprint, IdentityId, KeyId, SecretHash, State, UnixMillis};
use ipnet::IpNet;
use std::sync::Arc;

/// See the module documentation.
#[derive(Clone)]
pub(super) struct CachedKey {
    secret_fingerprint: HashFingerprint,
    revision: u64,
    expire_time: Option<UnixMillis>,
    grace_expire_time: Option<UnixMillis>,
    state: State,
    honeytoken: bool,
    /// None when the key has none of them, as most keys have not.
    settings: Option<Arc<KeySettings>>,
}

/// The settings a key may carry that Verify applies.
struct KeySettings {
    allowed_cidrs: Vec<IpNet>,
    scopes: Vec<String>,
    datasets: Vec<String>,
    labels: Labels,
    rate_limits: Vec<RateLimit>,
    credits: Option<Credits>,
    usage_account: Option<KeyId>,
}

impl CachedKey {
    /// The cached form of a key record read from Redis.
    pub(super) fn of(key: &ApiKey) -> Self {
        // Every field is named, so a field added to `ApiKey` must be decided
        // on here: kept because Verify reads it, or left out.
        let ApiKey {
            id: _,
            identity_id: _,
            name: _,
            description: _,
            state,
            create_time: _,
            expire_time,
            last_use_time: _,
            rolled_from: _,
            rolled_to: _,
            grace_expire_time,
            token_hint: _,
            allowed_cidrs,
            scopes,
            datasets,
            labels,
            origin: _,
            honeytoken,
            rate_limits,
            credits,
            usage_account,
            secret_hash,
            revision,
        } = key;
        let has_settings = !allowed_cidrs.is_empty()
            || !scopes.is_empty()
            || !datasets.is_empty()
            || !labels.is_empty()
            || !rate_limits.is_empty()
            || credits.is_some()
            || usage_account.is_some();
        Self {
            secret_fingerprint: secret_hash.fingerprint(),
            revision: *revision,
            expire_time: *expire_time,
            grace_expire_time: *grace_expire_time,
            state: *state,
            honeytoken: *honeytoken,
            settings: has_settings.then(|| {
                Arc::new(KeySettings {
                    allowed_cidrs: allowed_cidrs.clone(),
                    scopes: scopes.clone(),
                    datasets: datasets.clone(),
                    labels: labels.clone(),
                    rate_limits: rate_limits.clone(),
                    credits: credits.clone(),
                    usage_account: usage_account.clone(),
                })
            }),
        }
    }

    /// The key as Verify sees it. What the cache does not keep is left
    /// empty, and the hash is only its fingerprint, so this copy cannot be
    /// written back (see [`SecretHash`]).
    pub(super) fn to_key(&self, id: &KeyId, identity_id: &IdentityId) -> ApiKey {
        let settings = self.settings.as_deref();
        ApiKey {
            id: id.clone(),
            identity_id: identity_id.clone(),
            name: String::new(),
            description: String::new(),
            state: self.state,
            create_time: UnixMillis(0),
            expire_time: self.expire_time,
            last_use_time: None,
            rolled_from: None,
            rolled_to: None,
            grace_expire_time: self.grace_expire_time,
            token_hint: String::new(),
            allowed_cidrs: settings.map_or_else(Vec::new, |s| s.allowed_cidrs.clone()),
            scopes: settings.map_or_else(Vec::new, |s| s.scopes.clone()),
            datasets: settings.map_or_else(Vec::new, |s| s.datasets.clone()),
            labels: settings.map_or_else(Labels::new, |s| s.labels.clone()),
            origin: None,
            honeytoken: self.honeytoken,
            rate_limits: settings.map_or_else(Vec::new, |s| s.rate_limits.clone()),
            credits: settings.and_then(|s| s.credits.clone()),
            usage_account: settings.and_then(|s| s.usage_account.clone()),
            secret_hash: SecretHash::Fingerprint(self.secret_fingerprint),
            revision: self.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::Origin;
    use crate::domain::usage::Refill;

    fn key(identity: &IdentityId) -> ApiKey {
        ApiKey {
            id: KeyId::generate(identity),
            identity_id: identity.clone(),
            name: "ci".into(),
            description: "the CI runner".into(),
            state: State::Disabled,
            create_time: UnixMillis(1),
            expire_time: Some(UnixMillis(9_000)),
            last_use_time: Some(UnixMillis(2)),
            rolled_from: None,
            rolled_to: None,
            grace_expire_time: Some(UnixMillis(8_000)),
            token_hint: "kr_…".into(),
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            datasets: Vec::new(),
            labels: Labels::new(),
            origin: Some(Origin::CreateKey),
            honeytoken: true,
            rate_limits: Vec::new(),
            credits: None,
            usage_account: None,
            secret_hash: SecretHash::Phc("$argon2id$v=19$m=2048,t=2,p=1$c2FsdA$aGFzaA".into()),
            revision: 7,
        }
    }

    #[test]
    fn keeps_what_verify_decides_on_and_only_the_hash_fingerprint() {
        let identity = IdentityId::generate();
        let mut full = key(&identity);
        full.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        full.scopes = vec!["read".into()];
        full.datasets = vec!["sales".into()];
        full.labels.insert("team".into(), "data".into());
        full.rate_limits = vec![RateLimit {
            name: "burst".into(),
            limit: 5,
            duration_ms: 1_000,
        }];
        full.credits = Some(Credits {
            remaining: 10,
            granted_at: UnixMillis(3),
            refill: Some(Refill {
                amount: 10,
                interval_ms: 60_000,
            }),
        });
        full.usage_account = Some(KeyId::generate(&identity));
        let cached = CachedKey::of(&full).to_key(&full.id, &identity);
        assert_eq!(cached.state, full.state);
        assert_eq!(cached.expire_time, full.expire_time);
        assert_eq!(cached.grace_expire_time, full.grace_expire_time);
        assert_eq!(cached.honeytoken, full.honeytoken);
        assert_eq!(cached.revision, full.revision);
        assert_eq!(cached.allowed_cidrs, full.allowed_cidrs);
        assert_eq!(cached.scopes, full.scopes);
        assert_eq!(cached.datasets, full.datasets);
        assert_eq!(cached.labels, full.labels);
        assert_eq!(cached.rate_limits, full.rate_limits);
        assert_eq!(cached.credits, full.credits);
        assert_eq!(cached.usage_account, full.usage_account);
        assert_eq!(
            cached.secret_hash,
            SecretHash::Fingerprint(full.secret_hash.fingerprint())
        );
        assert!(cached.name.is_empty() && cached.token_hint.is_empty());
    }

    #[test]
    fn a_key_without_settings_keeps_no_settings_and_cannot_be_written_back() {
        let identity = IdentityId::generate();
        let full = key(&identity);
        let cached = CachedKey::of(&full);
        assert!(cached.settings.is_none());
        assert!(super::super::records::encode(&cached.to_key(&full.id, &identity)).is_err());
    }
}
