//! Storage: the [`Store`] trait, in domain terms, and its two backends.
//!
//! - [`memory::MemoryStore`]: embedded, for dev mode and tests; same semantics,
//!   TTLs included.
//! - [`redis::RedisStore`]: the system of record; the only code that knows
//!   Redis key names and scripts.
//!
//! Semantics every backend honours (the contract suite in `tests/` checks both):
//! - A record whose deadline has passed is gone: an identity at its
//!   `expire_time`; a key at the earliest of its `expire_time`, its grace
//!   deadline and its identity's `expire_time`.
//! - Updates name the revision they read and fail with
//!   [`StoreError::Conflict`] when the record changed since.
//! - Identity names are unique; key names are unique among an identity's keys
//!   that have not been rolled.
//! - Every change to one identity's records is atomic.
//! - An identity write that newly grants a dataset checks, in the same atomic
//!   step, that the dataset exists and is not being deleted
//!   ([`StoreError::DatasetUnavailable`] otherwise), so a grant never outlives
//!   the dataset it named: DeleteDataset marks the dataset first and then
//!   finds every grant that can still exist.
//! - A change made inside an armed audit scope ([`journal`]) appends its
//!   audit event in the same atomic step.
//! - Every write of a key record keeps its entry in the deadline index
//!   ([`KeyEnd`], from `ApiKey::end`) in the same atomic step; deleting a
//!   live key (revoke, identity delete, a roll without grace) removes it.
//!   An entry stays until a replica claims it with
//!   [`Store::record_key_end`], so a key that ended on its own is reported
//!   once, and one deleted before its end never.

pub mod journal;
pub mod memory;
pub mod redis;

use crate::domain::session::ConsoleSession;
use crate::domain::totp::{StepOutcome, TotpRecord};
use crate::domain::usage::{Settlement, UsageCheck};
use crate::domain::{
    ApiKey, AuditEvent, Dataset, Identity, IdentityId, KeyEnd, KeyId, Subject, UnixMillis,
};
use async_trait::async_trait;
use std::time::Duration;

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer (connection, timeout, server error).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The record to change does not exist (or has expired).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The unique name is held by another record.
    #[error("name {0:?} is already taken")]
    NameTaken(String),
    /// The record changed since it was read.
    #[error("the record changed concurrently")]
    Conflict,
    /// The change was applied but not confirmed as durable as configured
    /// (replicas or AOF fsync did not acknowledge it in time).
    #[error("the change may not be durable: {0}")]
    NotDurable(String),
    /// A write would newly grant a dataset that does not exist or is being
    /// deleted (named).
    #[error("dataset {0:?} does not exist or is being deleted")]
    DatasetUnavailable(String),
    /// A stored record could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The outcome of settling a Verify against its key's usage controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Settled (and charged, unless refused).
    Settled(Settlement),
    /// The key or its identity changed since Verify read them: nothing was
    /// charged; read them again.
    Stale,
}

/// Audit events kept when no other bound is configured.
pub const DEFAULT_AUDIT_MAX_EVENTS: usize = 1_000_000;

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The authority's storage, in domain operations.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Ok while the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a new identity together with its first keys, atomically.
    /// `NameTaken` when another identity has the name; `DatasetUnavailable`
    /// when one of its datasets does not exist or is being deleted.
    async fn create_identity(&self, identity: &Identity, keys: &[ApiKey]) -> StoreResult<()>;

    /// One identity, if it exists.
    async fn get_identity(&self, id: &IdentityId) -> StoreResult<Option<Identity>>;

    /// The identity holding `name`, if any.
    async fn find_identity_by_name(&self, name: &str) -> StoreResult<Option<Identity>>;

    /// Up to `limit` identities with ids greater than `after`, ordered by id.
    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> StoreResult<Vec<Identity>>;

    /// Replaces an identity read at `identity.revision`; returns it as stored
    /// (next revision). Re-applies the deadlines of all its keys.
    /// `DatasetUnavailable` when it newly grants a dataset that does not
    /// exist or is being deleted.
    async fn update_identity(&self, identity: &Identity) -> StoreResult<Identity>;

    /// Deletes an identity and all its keys; false when it did not exist.
    /// With `if_revision`, only the identity at that revision, checked in
    /// the same atomic step: `Conflict` when it changed since.
    async fn delete_identity(&self, id: &IdentityId, if_revision: Option<u64>)
    -> StoreResult<bool>;

    /// Stores a new key. `NotFound` without its identity; `NameTaken` when
    /// another of the identity's keys holds the name.
    async fn create_key(&self, key: &ApiKey) -> StoreResult<()>;

    /// One key, if it exists.
    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<ApiKey>>;

    /// Up to `limit` keys of `identity` with ids greater than `after`, by id.
    async fn list_keys(
        &self,
        identity: &IdentityId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> StoreResult<Vec<ApiKey>>;

    /// Every key of `identity`, in id order, read a page at a time (an
    /// identity has few keys).
    async fn all_keys_of(&self, identity: &IdentityId) -> StoreResult<Vec<ApiKey>> {
        const PAGE: usize = 256;
        let mut keys: Vec<ApiKey> = Vec::new();
        loop {
            let batch = self
                .list_keys(identity, keys.last().map(|key| &key.id), PAGE)
                .await?;
            let exhausted = batch.len() < PAGE;
            keys.extend(batch);
            if exhausted {
                return Ok(keys);
            }
        }
    }

    /// Replaces a key read at `key.revision`; returns it as stored. Its
    /// deadline is recomputed from the record, so a grace period survives.
    async fn update_key(&self, key: &ApiKey) -> StoreResult<ApiKey>;

    /// Deletes a key; false when it did not exist.
    async fn delete_key(&self, id: &KeyId) -> StoreResult<bool>;

    /// Atomically stores `replacement` and either removes `old` (when it has
    /// no grace deadline) or replaces it (read at `old.revision`, now carrying
    /// `rolled_to` and its grace deadline as its native TTL). `Conflict` when
    /// the old key changed or was already rolled. Returns the old key as
    /// written (at its next revision) when it stays for its grace period.
    async fn roll_key(&self, old: &ApiKey, replacement: &ApiKey) -> StoreResult<Option<ApiKey>>;

    /// A key and its identity, read together (one round trip on Redis): the
    /// lookup behind Verify. An answer from Verify's record cache carries
    /// only what Verify decides on: the key's hash is then its fingerprint
    /// alone ([`crate::domain::SecretHash::Fingerprint`]), and its name, description, hint,
    /// times and roll links are empty. Read uncached to write a key back.
    async fn key_with_identity(&self, id: &KeyId) -> StoreResult<Option<Subject>>;

    /// Whether every [`Store::key_with_identity`] is a round trip to the
    /// system of record (Redis without Verify's record cache). Verify then
    /// decides a limited key's call on the records it charged the last time
    /// and lets the charge confirm them, rather than read them first.
    fn reads_records_every_time(&self) -> bool {
        false
    }

    /// [`Store::key_with_identity`] from the system of record itself, past
    /// any cache: what Verify reads after a [`Charge::Stale`].
    async fn key_with_identity_uncached(&self, id: &KeyId) -> StoreResult<Option<Subject>> {
        self.key_with_identity(id).await
    }

    /// Settles a Verify of `key`, a key of `identity` as Verify read them,
    /// against `check` (see `domain::usage::settle`), atomically and exactly
    /// across replicas: one round trip on Redis. `Stale` when either record
    /// changed since (nothing is charged then).
    async fn charge_usage(
        &self,
        key: &ApiKey,
        identity: &Identity,
        check: &UsageCheck<'_>,
    ) -> StoreResult<Charge>;

    /// Stores a new, unconfirmed authenticator for an identity, replacing an
    /// unconfirmed one. `Conflict` when a confirmed one exists; `NotFound`
    /// without the identity. It lives and dies with the identity.
    async fn enroll_totp(&self, identity: &IdentityId, record: &TotpRecord) -> StoreResult<()>;

    /// The identity's authenticator, if any.
    async fn get_totp(&self, identity: &IdentityId) -> StoreResult<Option<TotpRecord>>;

    /// Atomically accepts a code of time step `step` unless the admin is
    /// locked out at `now` or a code of that step or a later one was accepted
    /// already; `confirm` also marks the authenticator confirmed (otherwise an
    /// unconfirmed one counts as not enrolled). Resets the failure count.
    async fn accept_totp_step(
        &self,
        identity: &IdentityId,
        step: u64,
        confirm: bool,
        now: UnixMillis,
    ) -> StoreResult<StepOutcome>;

    /// Atomically replaces the identity's sealed seed `sealed_was` with
    /// `resealed` (see `TotpRecord::reseal`): false when the authenticator is
    /// gone or holds another seed by now. Not an audited change: the seed is
    /// the same, only the secret sealing it moved.
    async fn reseal_totp_seed(
        &self,
        identity: &IdentityId,
        sealed_was: &str,
        resealed: &str,
    ) -> StoreResult<bool>;

    /// Atomically counts a wrong code; at `max_failures` in a row the admin is
    /// locked out until `now + lockout`, which is returned.
    async fn record_totp_failure(
        &self,
        identity: &IdentityId,
        now: UnixMillis,
        max_failures: u32,
        lockout: std::time::Duration,
    ) -> StoreResult<Option<UnixMillis>>;

    /// Stores a new dataset; `NameTaken` when one has the name.
    async fn create_dataset(&self, dataset: &Dataset) -> StoreResult<()>;

    /// One dataset, if it exists.
    async fn get_dataset(&self, name: &str) -> StoreResult<Option<Dataset>>;

    /// Up to `limit` datasets with names after `after`, ordered by name.
    async fn list_datasets(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Dataset>>;

    /// Marks a dataset as being deleted: from now on no identity write may
    /// newly grant it. False when it does not exist. The mark goes with the
    /// record, or with [`Store::cancel_dataset_delete`].
    async fn begin_dataset_delete(&self, name: &str) -> StoreResult<bool>;

    /// Lifts the mark of [`Store::begin_dataset_delete`]: the delete was
    /// refused or failed.
    async fn cancel_dataset_delete(&self, name: &str) -> StoreResult<()>;

    /// Deletes a dataset record and its delete mark; false when it did not
    /// exist. Detaching it from identities is the caller's business (the
    /// records are elsewhere).
    async fn delete_dataset(&self, name: &str) -> StoreResult<bool>;

    /// Records when keys were last used (approximate, batched by the caller).
    /// Never touches a key's record, so no TTL is disturbed; a key that no
    /// longer exists is skipped. `get_key` and `list_keys` report it.
    async fn record_key_use(&self, uses: &[(KeyId, UnixMillis)]) -> StoreResult<()>;

    /// Points the import index entry `digest` (a keyed digest of an imported
    /// token) at `key`, unless it already points somewhere: false then.
    /// The store notes, before the entry, that tokens have been imported.
    async fn claim_import(&self, digest: &str, key: &KeyId) -> StoreResult<bool>;

    /// Whether any token was ever imported into this store: until one is,
    /// a token not in keyrack's format needs no import lookup.
    async fn has_imports(&self) -> StoreResult<bool>;

    /// The key the first of `digests` that is indexed points at. One round
    /// trip on Redis.
    async fn find_imported(&self, digests: &[String]) -> StoreResult<Option<KeyId>>;

    /// Drops an import index entry (an import that failed, or one whose key
    /// is gone).
    async fn release_import(&self, digest: &str) -> StoreResult<()>;

    /// Appends an audit event that no change carried (a refusal, a failure,
    /// a no-op), and assigns its id.
    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()>;

    /// Up to `limit` audit events, newest first, strictly older than the
    /// event id `before` when given.
    async fn list_audit(&self, before: Option<&str>, limit: usize) -> StoreResult<Vec<AuditEvent>>;

    /// Drops audit events older than `cutoff` (retention by age; retention by
    /// count is applied on every append).
    async fn trim_audit(&self, cutoff: UnixMillis) -> StoreResult<()>;

    /// Up to `limit` audit events strictly newer than the event id `after`,
    /// oldest first: how watchers follow the log.
    async fn read_audit_after(&self, after: &str, limit: usize) -> StoreResult<Vec<AuditEvent>>;

    /// The ids of the oldest and the newest audit event kept; `None` while
    /// the log is empty.
    async fn audit_bounds(&self) -> StoreResult<Option<(String, String)>>;

    /// The id of the newest audit event ever appended, kept or trimmed away;
    /// `None` before the first.
    async fn last_audit_id(&self) -> StoreResult<Option<String>>;

    /// Up to `limit` audit events that no consumer of the delivery `group`
    /// has been given yet, now pending for `consumer`, oldest first. The
    /// group is created on first use and starts with the events appended
    /// after that.
    async fn take_deliveries(
        &self,
        group: &str,
        consumer: &str,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>>;

    /// Up to `limit` events pending in `group` for any consumer that has not
    /// touched them for `min_idle` (a replica that died before delivering),
    /// now pending for `consumer`, oldest first.
    async fn claim_deliveries(
        &self,
        group: &str,
        consumer: &str,
        min_idle: std::time::Duration,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>>;

    /// Resets the idle time of `consumer`'s pending events `ids`, so no
    /// other consumer claims them while they wait for a retry.
    async fn touch_deliveries(&self, group: &str, consumer: &str, ids: &[&str]) -> StoreResult<()>;

    /// Marks an event delivered: it leaves the group's pending entries.
    async fn ack_delivery(&self, group: &str, id: &str) -> StoreResult<()>;

    /// Up to `limit` entries of the deadline index ending from `from` to
    /// `until` (both included), earliest first.
    async fn key_ends_between(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<KeyEnd>>;

    /// Claims the deadline index entry `end` and appends `event` in the
    /// same atomic step; false when the entry no longer says exactly that
    /// (another replica claimed it, or the key changed or went away).
    async fn record_key_end(&self, end: &KeyEnd, event: &AuditEvent) -> StoreResult<bool>;

    /// Appends `event`, the warning `lead` ahead of `end`, in the same
    /// atomic step as a marker that makes it once per key, end and lead
    /// time across replicas; false when it was sent already or the index no
    /// longer holds `end`.
    async fn record_expiry_warning(
        &self,
        end: &KeyEnd,
        lead: Duration,
        event: &AuditEvent,
    ) -> StoreResult<bool>;

    /// Takes the expiry sweep unless some replica took it less than
    /// `interval` ago (a lease that lapses on its own): true when the
    /// caller should sweep now.
    async fn claim_expiry_sweep(&self, holder: &str, interval: Duration) -> StoreResult<bool>;

    /// Gives keys written before the deadline index existed their entries;
    /// once per store (a marker remembers it), harmless when repeated.
    /// Returns how many keys were indexed.
    async fn index_key_ends_once(&self) -> StoreResult<usize>;

    /// Stores a console session under `handle` (a digest of its cookie)
    /// until its `expire_time`.
    async fn create_session(&self, handle: &str, session: &ConsoleSession) -> StoreResult<()>;

    /// The console session filed under `handle`, unless it ended.
    async fn get_session(&self, handle: &str) -> StoreResult<Option<ConsoleSession>>;

    /// Ends a console session; false when there was none.
    async fn delete_session(&self, handle: &str) -> StoreResult<bool>;
}
