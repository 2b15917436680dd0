//! The records keyrack keeps in Redis: their JSON, owned here and nowhere
//! else. Domain types carry no serde; each stored type below is converted to
//! and from its domain type, so renaming a domain field cannot change what is
//! stored, and the Lua scripts (`scripts.rs`), which read records by field
//! name, keep reading what they expect.
//!
//! What the scripts rely on:
//! - field names: `id`, `name`, `expire_time`, `grace_expire_time`,
//!   `rolled_to`, `rolled_from`, `usage_account`, `rate_limits[].name`,
//!   `datasets`, `revision` (keys and identities), `confirmed`, `last_step`,
//!   `failures`, `locked_until`, `sealed_seed` (TOTP);
//! - order: `revision` is the last member of a key or identity record, since
//!   CHARGE_USAGE reads it from the last 32 bytes without decoding the record.
//!
//! **Schema versions.** Every record carries `schema` first. A record
//! without it was written before the field existed and is of version 1,
//! the same shape. A change that old readers would misread (a field renamed
//! or retyped, a meaning changed) takes the next version and a conversion of
//! the older ones here; a field added with a default keeps the version
//! (older readers ignore it). A record of a version newer than this build
//! knows is refused as corrupt rather than misread. The golden tests below
//! pin each record's exact JSON, so any change to it is deliberate.

use crate::domain::identity::{IdentityKind, State};
use crate::domain::key::Origin;
use crate::domain::names::{DatasetName, IdentityName};
use crate::domain::session::ConsoleSession;
use crate::domain::totp::TotpRecord;
use crate::domain::usage::{Credits, RateLimit, Refill};
use crate::domain::{ApiKey, AuditEvent, Dataset, Identity, IdentityId, KeyId, UnixMillis};
use crate::domain::{SecretHash, labels::Labels};
use crate::store::{StoreError, StoreResult};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The schema version this build writes, and the newest it reads.
pub(super) const SCHEMA: u32 = 1;

/// A domain type kept in Redis as JSON, through its stored form.
pub(super) trait Record: Sized {
    /// The stored form: the JSON's shape.
    type Stored: Serialize + DeserializeOwned;
    /// The stored form of `self`.
    fn to_stored(&self) -> StoreResult<Self::Stored>;
    /// The domain value of a stored form already checked for its version.
    fn from_stored(stored: Self::Stored) -> StoreResult<Self>;
    /// The stored form's schema version.
    fn schema_of(stored: &Self::Stored) -> u32;
}

/// The JSON of `value`'s record.
pub(super) fn encode<T: Record>(value: &T) -> StoreResult<String> {
    serde_json::to_string(&value.to_stored()?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The domain value of a record's JSON.
pub(super) fn decode<T: Record>(raw: &str) -> StoreResult<T> {
    let stored: T::Stored =
        serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let schema = T::schema_of(&stored);
    if schema > SCHEMA {
        return Err(StoreError::Corrupt(format!(
            "a record of schema {schema}, newer than this build's {SCHEMA}"
        )));
    }
    T::from_stored(stored)
}

/// Records written before the `schema` field existed are of version 1.
fn first_schema() -> u32 {
    1
}

fn corrupt_id(error: crate::domain::ids::IdError) -> StoreError {
    StoreError::Corrupt(format!("a stored id {error}"))
}

fn corrupt_name(error: crate::domain::names::NameError) -> StoreError {
    StoreError::Corrupt(format!("a stored name {error}"))
}

fn identity_id(text: String) -> StoreResult<IdentityId> {
    IdentityId::parse_owned(text).map_err(corrupt_id)
}

fn key_id(text: String) -> StoreResult<KeyId> {
    KeyId::parse_owned(text).map_err(corrupt_id)
}

fn optional_key_id(text: Option<String>) -> StoreResult<Option<KeyId>> {
    text.map(key_id).transpose()
}

fn millis(time: Option<i64>) -> Option<UnixMillis> {
    time.map(UnixMillis)
}

fn millis_of(time: Option<UnixMillis>) -> Option<i64> {
    time.map(|time| time.0)
}

/// `State` as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredState {
    Active,
    Disabled,
}

impl From<State> for StoredState {
    fn from(state: State) -> Self {
        match state {
            State::Active => Self::Active,
            State::Disabled => Self::Disabled,
        }
    }
}

impl From<StoredState> for State {
    fn from(state: StoredState) -> Self {
        match state {
            StoredState::Active => Self::Active,
            StoredState::Disabled => Self::Disabled,
        }
    }
}

/// `IdentityKind` as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredKind {
    Service,
    Person,
}

/// `Origin` as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredOrigin {
    CreateIdentity,
    CreateKey,
    Dataset,
    Roll,
    Import,
}

impl From<Origin> for StoredOrigin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::CreateIdentity => Self::CreateIdentity,
            Origin::CreateKey => Self::CreateKey,
            Origin::Dataset => Self::Dataset,
            Origin::Roll => Self::Roll,
            Origin::Import => Self::Import,
        }
    }
}

impl From<StoredOrigin> for Origin {
    fn from(origin: StoredOrigin) -> Self {
        match origin {
            StoredOrigin::CreateIdentity => Self::CreateIdentity,
            StoredOrigin::CreateKey => Self::CreateKey,
            StoredOrigin::Dataset => Self::Dataset,
            StoredOrigin::Roll => Self::Roll,
            StoredOrigin::Import => Self::Import,
        }
    }
}

/// `RateLimit` as stored (CHARGE_USAGE's field names come from `name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredRateLimit {
    name: String,
    limit: u64,
    duration_ms: u64,
}

fn stored_limits(limits: &[RateLimit]) -> Vec<StoredRateLimit> {
    limits
        .iter()
        .map(|limit| StoredRateLimit {
            name: limit.name.clone(),
            limit: limit.limit,
            duration_ms: limit.duration_ms,
        })
        .collect()
}

fn domain_limits(limits: Vec<StoredRateLimit>) -> Vec<RateLimit> {
    limits
        .into_iter()
        .map(|limit| RateLimit {
            name: limit.name,
            limit: limit.limit,
            duration_ms: limit.duration_ms,
        })
        .collect()
}

/// `Credits` as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredCredits {
    remaining: u64,
    granted_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refill: Option<StoredRefill>,
}

/// `Refill` as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredRefill {
    amount: u64,
    interval_ms: u64,
}

impl From<&Credits> for StoredCredits {
    fn from(credits: &Credits) -> Self {
        Self {
            remaining: credits.remaining,
            granted_at: credits.granted_at.0,
            refill: credits.refill.map(|refill| StoredRefill {
                amount: refill.amount,
                interval_ms: refill.interval_ms,
            }),
        }
    }
}

impl From<StoredCredits> for Credits {
    fn from(credits: StoredCredits) -> Self {
        Self {
            remaining: credits.remaining,
            granted_at: UnixMillis(credits.granted_at),
            refill: credits.refill.map(|refill| Refill {
                amount: refill.amount,
                interval_ms: refill.interval_ms,
            }),
        }
    }
}

/// An identity record: `<prefix>{<identity id>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredIdentity {
    #[serde(default = "first_schema")]
    schema: u32,
    id: String,
    name: String,
    description: String,
    kind: StoredKind,
    state: StoredState,
    datasets: Vec<String>,
    allowed_cidrs: Vec<IpNet>,
    /// Records written before scopes existed read as none.
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<StoredRateLimit>,
    admin: bool,
    expire_time: Option<i64>,
    create_time: i64,
    update_time: i64,
    external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider_active: Option<bool>,
    /// Last: see the module documentation.
    revision: u64,
}

impl Record for Identity {
    type Stored = StoredIdentity;

    fn to_stored(&self) -> StoreResult<StoredIdentity> {
        // Every field is named, so a field added to `Identity` must be
        // decided on here: stored, or not.
        let Identity {
            id,
            name,
            description,
            kind,
            state,
            datasets,
            allowed_cidrs,
            scopes,
            labels,
            rate_limits,
            key_count: _,
            admin,
            expire_time,
            create_time,
            update_time,
            external_id,
            provider_active,
            revision,
        } = self;
        Ok(StoredIdentity {
            schema: SCHEMA,
            id: id.as_str().to_owned(),
            name: name.to_string(),
            description: description.clone(),
            kind: match kind {
                IdentityKind::Service => StoredKind::Service,
                IdentityKind::Person => StoredKind::Person,
            },
            state: (*state).into(),
            datasets: datasets.clone(),
            allowed_cidrs: allowed_cidrs.clone(),
            scopes: scopes.clone(),
            labels: labels.clone(),
            rate_limits: stored_limits(rate_limits),
            admin: *admin,
            expire_time: millis_of(*expire_time),
            create_time: create_time.0,
            update_time: update_time.0,
            external_id: external_id.clone(),
            provider_active: *provider_active,
            revision: *revision,
        })
    }

    fn from_stored(stored: StoredIdentity) -> StoreResult<Identity> {
        let kind = match stored.kind {
            StoredKind::Service => IdentityKind::Service,
            StoredKind::Person => IdentityKind::Person,
        };
        Ok(Identity {
            id: identity_id(stored.id)?,
            name: IdentityName::parse_owned(kind, stored.name).map_err(corrupt_name)?,
            description: stored.description,
            kind,
            state: stored.state.into(),
            datasets: stored.datasets,
            allowed_cidrs: stored.allowed_cidrs,
            scopes: stored.scopes,
            labels: stored.labels,
            rate_limits: domain_limits(stored.rate_limits),
            key_count: 0,
            admin: stored.admin,
            expire_time: millis(stored.expire_time),
            create_time: UnixMillis(stored.create_time),
            update_time: UnixMillis(stored.update_time),
            external_id: stored.external_id,
            provider_active: stored.provider_active,
            revision: stored.revision,
        })
    }

    fn schema_of(stored: &StoredIdentity) -> u32 {
        stored.schema
    }
}

/// A key record: `<prefix>{<identity id>}:key:<key id>`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredKey {
    #[serde(default = "first_schema")]
    schema: u32,
    id: String,
    identity_id: String,
    name: String,
    description: String,
    state: StoredState,
    create_time: i64,
    expire_time: Option<i64>,
    last_use_time: Option<i64>,
    rolled_from: Option<String>,
    rolled_to: Option<String>,
    grace_expire_time: Option<i64>,
    token_hint: String,
    allowed_cidrs: Vec<IpNet>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    datasets: Vec<String>,
    #[serde(default)]
    labels: Labels,
    /// Absent for keys written before origins were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<StoredOrigin>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    honeytoken: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<StoredRateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<StoredCredits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage_account: Option<String>,
    /// The argon2id PHC string.
    secret_hash: String,
    /// Last: see the module documentation.
    revision: u64,
}

impl std::fmt::Debug for StoredKey {
    // As `ApiKey`'s: the PHC string stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Record for ApiKey {
    type Stored = StoredKey;

    fn to_stored(&self) -> StoreResult<StoredKey> {
        // Every field is named, so a field added to `ApiKey` must be decided
        // on here: stored, or not.
        let ApiKey {
            id,
            identity_id,
            name,
            description,
            state,
            create_time,
            expire_time,
            last_use_time,
            rolled_from,
            rolled_to,
            grace_expire_time,
            token_hint,
            allowed_cidrs,
            scopes,
            datasets,
            labels,
            origin,
            honeytoken,
            rate_limits,
            credits,
            usage_account,
            secret_hash,
            revision,
        } = self;
        let SecretHash::Phc(phc) = secret_hash else {
            return Err(StoreError::Corrupt(
                "a cached copy of a key record, which keeps only its hash's fingerprint, is never written"
                    .into(),
            ));
        };
        let text = |id: &Option<KeyId>| id.as_ref().map(|id| id.as_str().to_owned());
        Ok(StoredKey {
            schema: SCHEMA,
            id: id.as_str().to_owned(),
            identity_id: identity_id.as_str().to_owned(),
            name: name.clone(),
            description: description.clone(),
            state: (*state).into(),
            create_time: create_time.0,
            expire_time: millis_of(*expire_time),
            last_use_time: millis_of(*last_use_time),
            rolled_from: text(rolled_from),
            rolled_to: text(rolled_to),
            grace_expire_time: millis_of(*grace_expire_time),
            token_hint: token_hint.clone(),
            allowed_cidrs: allowed_cidrs.clone(),
            scopes: scopes.clone(),
            datasets: datasets.clone(),
            labels: labels.clone(),
            origin: origin.map(StoredOrigin::from),
            honeytoken: *honeytoken,
            rate_limits: stored_limits(rate_limits),
            credits: credits.as_ref().map(StoredCredits::from),
            usage_account: text(usage_account),
            secret_hash: phc.clone(),
            revision: *revision,
        })
    }

    fn from_stored(stored: StoredKey) -> StoreResult<ApiKey> {
        // Moves every string: decoding a key record allocates what serde
        // allocated for it and nothing more (Verify's record cache decodes
        // through here on every miss).
        Ok(ApiKey {
            id: key_id(stored.id)?,
            identity_id: identity_id(stored.identity_id)?,
            name: stored.name,
            description: stored.description,
            state: stored.state.into(),
            create_time: UnixMillis(stored.create_time),
            expire_time: millis(stored.expire_time),
            last_use_time: millis(stored.last_use_time),
            rolled_from: optional_key_id(stored.rolled_from)?,
            rolled_to: optional_key_id(stored.rolled_to)?,
            grace_expire_time: millis(stored.grace_expire_time),
            token_hint: stored.token_hint,
            allowed_cidrs: stored.allowed_cidrs,
            scopes: stored.scopes,
            datasets: stored.datasets,
            labels: stored.labels,
            origin: stored.origin.map(Origin::from),
            honeytoken: stored.honeytoken,
            rate_limits: domain_limits(stored.rate_limits),
            credits: stored.credits.map(Credits::from),
            usage_account: optional_key_id(stored.usage_account)?,
            secret_hash: SecretHash::Phc(stored.secret_hash),
            revision: stored.revision,
        })
    }

    fn schema_of(stored: &StoredKey) -> u32 {
        stored.schema
    }
}

/// An admin's authenticator: `<prefix>{<identity id>}:totp`. ACCEPT_TOTP_STEP
/// and RECORD_TOTP_FAILURE rewrite it with `cjson.encode`, which keeps every
/// member but not their order; nothing reads it by position.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredTotp {
    #[serde(default = "first_schema")]
    schema: u32,
    sealed_seed: String,
    confirmed: bool,
    last_step: u64,
    failures: u32,
    locked_until: Option<i64>,
}

impl Record for TotpRecord {
    type Stored = StoredTotp;

    fn to_stored(&self) -> StoreResult<StoredTotp> {
        Ok(StoredTotp {
            schema: SCHEMA,
            sealed_seed: self.sealed_seed.clone(),
            confirmed: self.confirmed,
            last_step: self.last_step,
            failures: self.failures,
            locked_until: millis_of(self.locked_until),
        })
    }

    fn from_stored(stored: StoredTotp) -> StoreResult<TotpRecord> {
        Ok(TotpRecord {
            sealed_seed: stored.sealed_seed,
            confirmed: stored.confirmed,
            last_step: stored.last_step,
            failures: stored.failures,
            locked_until: millis(stored.locked_until),
        })
    }

    fn schema_of(stored: &StoredTotp) -> u32 {
        stored.schema
    }
}

/// A dataset record: `<prefix>{dataset:<name>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredDataset {
    #[serde(default = "first_schema")]
    schema: u32,
    name: String,
    description: String,
    create_time: i64,
}

impl Record for Dataset {
    type Stored = StoredDataset;

    fn to_stored(&self) -> StoreResult<StoredDataset> {
        Ok(StoredDataset {
            schema: SCHEMA,
            name: self.name.to_string(),
            description: self.description.clone(),
            create_time: self.create_time.0,
        })
    }

    fn from_stored(stored: StoredDataset) -> StoreResult<Dataset> {
        Ok(Dataset {
            name: DatasetName::parse_owned(stored.name).map_err(corrupt_name)?,
            description: stored.description,
            create_time: UnixMillis(stored.create_time),
        })
    }

    fn schema_of(stored: &StoredDataset) -> u32 {
        stored.schema
    }
}

/// A console session, filed under a digest of its cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredSession {
    #[serde(default = "first_schema")]
    schema: u32,
    identity_id: String,
    key_id: String,
    create_time: i64,
    expire_time: i64,
}

impl Record for ConsoleSession {
    type Stored = StoredSession;

    fn to_stored(&self) -> StoreResult<StoredSession> {
        Ok(StoredSession {
            schema: SCHEMA,
            identity_id: self.identity_id.as_str().to_owned(),
            key_id: self.key_id.as_str().to_owned(),
            create_time: self.create_time.0,
            expire_time: self.expire_time.0,
        })
    }

    fn from_stored(stored: StoredSession) -> StoreResult<ConsoleSession> {
        Ok(ConsoleSession {
            identity_id: identity_id(stored.identity_id)?,
            key_id: key_id(stored.key_id)?,
            create_time: UnixMillis(stored.create_time),
            expire_time: UnixMillis(stored.expire_time),
        })
    }

    fn schema_of(stored: &StoredSession) -> u32 {
        stored.schema
    }
}

/// An audit event: the `event` field of an audit stream entry. Its id is the
/// entry's id, not part of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredEvent {
    #[serde(default = "first_schema")]
    schema: u32,
    time: i64,
    actor_identity_id: Option<String>,
    actor_key_id: Option<String>,
    action: String,
    target_ids: Vec<String>,
    outcome: String,
    caller_address: Option<String>,
    request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lead_time_seconds: Option<u64>,
}

impl Record for AuditEvent {
    type Stored = StoredEvent;

    fn to_stored(&self) -> StoreResult<StoredEvent> {
        let AuditEvent {
            id: _,
            time,
            actor_identity_id,
            actor_key_id,
            action,
            target_ids,
            outcome,
            caller_address,
            request_id,
            client_ip,
            trace_id,
            deadline,
            lead_time_seconds,
        } = self;
        Ok(StoredEvent {
            schema: SCHEMA,
            time: time.0,
            actor_identity_id: actor_identity_id.clone(),
            actor_key_id: actor_key_id.clone(),
            action: action.clone(),
            target_ids: target_ids.clone(),
            outcome: outcome.clone(),
            caller_address: caller_address.clone(),
            request_id: request_id.clone(),
            client_ip: client_ip.clone(),
            trace_id: trace_id.clone(),
            deadline: millis_of(*deadline),
            lead_time_seconds: *lead_time_seconds,
        })
    }

    fn from_stored(stored: StoredEvent) -> StoreResult<AuditEvent> {
        Ok(AuditEvent {
            id: String::new(),
            time: UnixMillis(stored.time),
            actor_identity_id: stored.actor_identity_id,
            actor_key_id: stored.actor_key_id,
            action: stored.action,
            target_ids: stored.target_ids,
            outcome: stored.outcome,
            caller_address: stored.caller_address,
            request_id: stored.request_id,
            client_ip: stored.client_ip,
            trace_id: stored.trace_id,
            deadline: millis(stored.deadline),
            lead_time_seconds: stored.lead_time_seconds,
        })
    }

    fn schema_of(stored: &StoredEvent) -> u32 {
        stored.schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY_ID: &str = "abcdefghijkl";
    const KEY_ID: &str = "abcdefghijklKEY001";
    const OTHER_KEY_ID: &str = "abcdefghijklKEY002";

    fn identity() -> Identity {
        let mut identity = Identity::new_service(
            IdentityName::parse_service("billing").unwrap(),
            "the billing service".into(),
            UnixMillis(1),
        );
        identity.id = IdentityId::parse(IDENTITY_ID).unwrap();
        identity.datasets = vec!["sales".into()];
        identity.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        identity.scopes = vec!["read".into()];
        identity.labels.insert("team".into(), "data".into());
        identity.rate_limits = vec![RateLimit {
            name: "burst".into(),
            limit: 5,
            duration_ms: 1_000,
        }];
        identity.key_count = 3;
        identity.admin = true;
        identity.expire_time = Some(UnixMillis(9_000));
        identity.update_time = UnixMillis(2);
        identity.revision = 4;
        identity
    }

    fn key() -> ApiKey {
        ApiKey {
            id: KeyId::parse(KEY_ID).unwrap(),
            identity_id: IdentityId::parse(IDENTITY_ID).unwrap(),
            name: "ci".into(),
            description: "the CI runner".into(),
            state: State::Disabled,
            create_time: UnixMillis(1),
            expire_time: Some(UnixMillis(9_000)),
            last_use_time: Some(UnixMillis(2)),
            rolled_from: Some(KeyId::parse(OTHER_KEY_ID).unwrap()),
            rolled_to: None,
            grace_expire_time: Some(UnixMillis(8_000)),
            token_hint: "kr_abcdefghijklKEY001_ab".into(),
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            scopes: vec!["read".into()],
            datasets: vec!["sales".into()],
            labels: [("team".to_owned(), "data".to_owned())].into(),
            origin: Some(Origin::Roll),
            honeytoken: true,
            rate_limits: vec![RateLimit {
                name: "burst".into(),
                limit: 5,
                duration_ms: 1_000,
            }],
            credits: Some(Credits {
                remaining: 10,
                granted_at: UnixMillis(3),
                refill: Some(Refill {
                    amount: 10,
                    interval_ms: 60_000,
                }),
            }),
            usage_account: Some(KeyId::parse(OTHER_KEY_ID).unwrap()),
            secret_hash: SecretHash::Phc("$argon2id$v=19$m=2048,t=1,p=1$c2FsdA$aGFzaA".into()),
            revision: 7,
        }
    }

    /// Each record's JSON exactly as stored: a change here changes what
    /// Redis holds and what the scripts read, and must be deliberate.
    #[test]
    fn golden_identity() {
        assert_eq!(
            encode(&identity()).unwrap(),
            r#"{"schema":1,"id":"abcdefghijkl","name":"billing","description":"the billing service","kind":"service","state":"active","datasets":["sales"],"allowed_cidrs":["10.0.0.0/8"],"scopes":["read"],"labels":{"team":"data"},"rate_limits":[{"name":"burst","limit":5,"duration_ms":1000}],"admin":true,"expire_time":9000,"create_time":1,"update_time":2,"external_id":null,"revision":4}"#
        );
        let mut person = Identity::new_person(
            IdentityName::parse_person("ada@example.com").unwrap(),
            String::new(),
            Some("ext-1".into()),
            Some(false),
            UnixMillis(1),
        );
        person.id = IdentityId::parse(IDENTITY_ID).unwrap();
        assert_eq!(
            encode(&person).unwrap(),
            r#"{"schema":1,"id":"abcdefghijkl","name":"ada@example.com","description":"","kind":"person","state":"disabled","datasets":[],"allowed_cidrs":[],"scopes":[],"labels":{},"admin":false,"expire_time":null,"create_time":1,"update_time":1,"external_id":"ext-1","provider_active":false,"revision":0}"#
        );
    }

    #[test]
    fn golden_key() {
        assert_eq!(
            encode(&key()).unwrap(),
            r#"{"schema":1,"id":"abcdefghijklKEY001","identity_id":"abcdefghijkl","name":"ci","description":"the CI runner","state":"disabled","create_time":1,"expire_time":9000,"last_use_time":2,"rolled_from":"abcdefghijklKEY002","rolled_to":null,"grace_expire_time":8000,"token_hint":"kr_abcdefghijklKEY001_ab","allowed_cidrs":["10.0.0.0/8"],"scopes":["read"],"datasets":["sales"],"labels":{"team":"data"},"origin":"roll","honeytoken":true,"rate_limits":[{"name":"burst","limit":5,"duration_ms":1000}],"credits":{"remaining":10,"granted_at":3,"refill":{"amount":10,"interval_ms":60000}},"usage_account":"abcdefghijklKEY002","secret_hash":"$argon2id$v=19$m=2048,t=1,p=1$c2FsdA$aGFzaA","revision":7}"#
        );
    }

    #[test]
    fn golden_totp_dataset_session_and_event() {
        let mut totp = TotpRecord::enrolled("1.sealed".into());
        totp.locked_until = Some(UnixMillis(5));
        assert_eq!(
            encode(&totp).unwrap(),
            r#"{"schema":1,"sealed_seed":"1.sealed","confirmed":false,"last_step":0,"failures":0,"locked_until":5}"#
        );
        let dataset = Dataset {
            name: DatasetName::parse("sales").unwrap(),
            description: "sales data".into(),
            create_time: UnixMillis(1),
        };
        assert_eq!(
            encode(&dataset).unwrap(),
            r#"{"schema":1,"name":"sales","description":"sales data","create_time":1}"#
        );
        let session = ConsoleSession {
            identity_id: IdentityId::parse(IDENTITY_ID).unwrap(),
            key_id: KeyId::parse(KEY_ID).unwrap(),
            create_time: UnixMillis(1),
            expire_time: UnixMillis(2),
        };
        assert_eq!(
            encode(&session).unwrap(),
            r#"{"schema":1,"identity_id":"abcdefghijkl","key_id":"abcdefghijklKEY001","create_time":1,"expire_time":2}"#
        );
        let mut event = AuditEvent::new("RollKey", "req-1");
        event.id = "1-0".into();
        event.time = UnixMillis(1);
        event.actor_identity_id = Some(IDENTITY_ID.into());
        event.target_ids = vec![KEY_ID.into()];
        event.deadline = Some(UnixMillis(2));
        assert_eq!(
            encode(&event).unwrap(),
            r#"{"schema":1,"time":1,"actor_identity_id":"abcdefghijkl","actor_key_id":null,"action":"RollKey","target_ids":["abcdefghijklKEY001"],"outcome":"OK","caller_address":null,"request_id":"req-1","deadline":2}"#
        );
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let mut identity = identity();
        identity.key_count = 0; // never stored: counted when read
        assert_eq!(
            decode::<Identity>(&encode(&identity).unwrap()).unwrap(),
            identity
        );
        assert_eq!(decode::<ApiKey>(&encode(&key()).unwrap()).unwrap(), key());
        let mut event = AuditEvent::new("CreateKey", "req");
        event.client_ip = Some("10.0.0.1".into());
        event.lead_time_seconds = Some(60);
        assert_eq!(
            decode::<AuditEvent>(&encode(&event).unwrap()).unwrap(),
            event
        );
    }

    /// Records as the release before schema versions wrote them (no
    /// `schema`, and the optional members left out as it left them out)
    /// still read, as version 1.
    #[test]
    fn records_without_a_schema_version_still_read() {
        let identity: Identity = decode(
            r#"{"id":"abcdefghijkl","name":"billing","description":"","kind":"service","state":"active","datasets":[],"allowed_cidrs":["10.0.0.0/8"],"scopes":["read"],"labels":{"team":"data"},"admin":false,"expire_time":null,"create_time":1,"update_time":2,"external_id":null,"revision":4}"#,
        )
        .unwrap();
        assert_eq!(identity.id.as_str(), IDENTITY_ID);
        assert_eq!(identity.allowed_cidrs.len(), 1);
        assert_eq!(identity.revision, 4);
        assert!(identity.rate_limits.is_empty() && identity.provider_active.is_none());

        let key: ApiKey = decode(
            r#"{"id":"abcdefghijklKEY001","identity_id":"abcdefghijkl","name":"ci","description":"","state":"active","create_time":1,"expire_time":null,"last_use_time":null,"rolled_from":null,"rolled_to":"abcdefghijklKEY002","grace_expire_time":8000,"token_hint":"kr_x","allowed_cidrs":[],"scopes":[],"datasets":[],"labels":{},"secret_hash":"$argon2id$x","revision":3}"#,
        )
        .unwrap();
        assert_eq!(
            key.rolled_to.as_ref().map(KeyId::as_str),
            Some(OTHER_KEY_ID)
        );
        assert_eq!(key.grace_expire_time, Some(UnixMillis(8_000)));
        assert_eq!(key.secret_hash, SecretHash::Phc("$argon2id$x".into()));
        assert!(key.origin.is_none() && !key.honeytoken && key.credits.is_none());

        // Older still: before scopes, datasets on keys and labels.
        let key: ApiKey = decode(
            r#"{"id":"abcdefghijklKEY001","identity_id":"abcdefghijkl","name":"ci","description":"","state":"disabled","create_time":1,"expire_time":5,"last_use_time":null,"rolled_from":null,"rolled_to":null,"grace_expire_time":null,"token_hint":"","allowed_cidrs":[],"secret_hash":"$argon2id$x","revision":0}"#,
        )
        .unwrap();
        assert_eq!(key.state, State::Disabled);
        assert!(key.scopes.is_empty() && key.labels.is_empty());

        // As ACCEPT_TOTP_STEP's cjson.encode leaves it: any order.
        let totp: TotpRecord = decode(
            r#"{"failures":0,"last_step":57,"confirmed":true,"locked_until":null,"sealed_seed":"1.x"}"#,
        )
        .unwrap();
        assert!(totp.confirmed && totp.last_step == 57 && totp.locked_until.is_none());

        let dataset: Dataset =
            decode(r#"{"name":"sales","description":"","create_time":1}"#).unwrap();
        assert_eq!(dataset.name, "sales");
        let session: ConsoleSession = decode(
            r#"{"identity_id":"abcdefghijkl","key_id":"abcdefghijklKEY001","create_time":1,"expire_time":2}"#,
        )
        .unwrap();
        assert_eq!(session.expire_time, UnixMillis(2));
        let event: AuditEvent = decode(
            r#"{"time":1,"actor_identity_id":null,"actor_key_id":null,"action":"BootstrapAdmin","target_ids":[],"outcome":"OK","caller_address":null,"request_id":"r"}"#,
        )
        .unwrap();
        assert_eq!(event.action, "BootstrapAdmin");
    }

    #[test]
    fn a_newer_schema_or_a_bad_id_is_refused_not_misread() {
        let newer = encode(&key())
            .unwrap()
            .replace(r#""schema":1"#, r#""schema":2"#);
        assert!(matches!(
            decode::<ApiKey>(&newer),
            Err(StoreError::Corrupt(_))
        ));
        let bad_id = encode(&key()).unwrap().replace(KEY_ID, "not-an-id");
        assert!(matches!(
            decode::<ApiKey>(&bad_id),
            Err(StoreError::Corrupt(_))
        ));
        let bad_name = encode(&identity())
            .unwrap()
            .replace(r#""name":"billing""#, r#""name":"bill ing""#);
        assert!(matches!(
            decode::<Identity>(&bad_name),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_key_with_only_a_fingerprint_is_never_written() {
        let mut cached = key();
        cached.secret_hash = SecretHash::Fingerprint(cached.secret_hash.fingerprint());
        assert!(encode(&cached).is_err());
    }
}
