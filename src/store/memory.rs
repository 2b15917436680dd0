//! The embedded store: all state in one mutex-guarded structure, deadlines
//! honoured on every read. Dev mode and tests run on it.

use super::{Charge, Store, StoreError, StoreResult, journal};
use crate::domain::audit::entry_position;
use crate::domain::dataset;
use crate::domain::names::{DatasetName, IdentityName};
use crate::domain::revision;
use crate::domain::session::ConsoleSession;
use crate::domain::totp::{self, StepOutcome, TotpRecord};
use crate::domain::usage::{self, UsageCheck};
use crate::domain::{
    ApiKey, AuditEvent, Dataset, Identity, IdentityId, KeyEnd, KeyEndKind, KeyId, Subject,
    UnixMillis,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// A record with the instant it disappears, like a Redis key with a TTL.
struct Expiring<T> {
    value: T,
    deadline: Option<UnixMillis>,
}

impl<T> Expiring<T> {
    fn live(&self, now: UnixMillis) -> bool {
        self.deadline.is_none_or(|deadline| deadline > now)
    }
}

#[derive(Default)]
struct State {
    identities: BTreeMap<IdentityId, Expiring<Identity>>,
    names: HashMap<IdentityName, IdentityId>,
    // Key ids start with their identity's id, so one identity's keys are a
    // contiguous range of this map.
    keys: BTreeMap<KeyId, Expiring<ApiKey>>,
    /// Authenticators; they live and die with their identity.
    totp: HashMap<IdentityId, TotpRecord>,
    datasets: BTreeMap<DatasetName, Dataset>,
    /// Datasets a DeleteDataset has marked: no new grants of them.
    datasets_being_deleted: HashSet<String>,
    /// When keys were last used; kept apart from the key records.
    last_use: HashMap<KeyId, UnixMillis>,
    /// Console sessions by handle, each gone at its `expire_time`.
    sessions: HashMap<String, ConsoleSession>,
    /// Each identity's rate limit and credit states (`domain::usage`), as
    /// Redis keeps them in one hash per identity.
    usage: HashMap<IdentityId, HashMap<String, String>>,
    /// Keyed digests of imported tokens -> their keys.
    imports: HashMap<String, KeyId>,
    /// Whether a token was ever imported (the Redis marker's twin).
    imported_ever: bool,
    /// The time of the operation under way: every read honours deadlines at it.
    now: UnixMillis,
    last_purge: UnixMillis,
    /// Audit events, oldest first, at most `audit_max_events`.
    audit: VecDeque<AuditEvent>,
    audit_max_events: usize,
    /// The last event id given out, as (milliseconds, sequence).
    last_audit_id: (i64, u64),
    /// Delivery groups on the audit log, by name.
    deliveries: HashMap<String, DeliveryGroup>,
    /// The deadline index, ordered by when: (end, kind, key).
    key_ends: BTreeSet<(UnixMillis, KeyEndKind, KeyId)>,
    /// Each indexed key's entry, to replace or remove it.
    key_end_of: HashMap<KeyId, (UnixMillis, KeyEndKind)>,
    /// Warnings sent: (key, its end, lead time); dropped once the end passed.
    expiry_warned: HashSet<(KeyId, UnixMillis, Duration)>,
    /// Until when the expiry sweep is taken.
    expiry_sweep_until: UnixMillis,
}

/// A consumer group on the audit log, as Redis Streams keeps one.
struct DeliveryGroup {
    /// The newest event given to a consumer.
    last_given: (i64, u64),
    /// Events given but not acknowledged: their consumer and when it last
    /// touched them (ms).
    pending: BTreeMap<(i64, u64), (String, i64)>,
}

impl State {
    /// The group `name`, created at the log's current end.
    fn delivery_group(&mut self, name: &str) -> &mut DeliveryGroup {
        let end = self.last_audit_id;
        self.deliveries
            .entry(name.to_owned())
            .or_insert_with(|| DeliveryGroup {
                last_given: end,
                pending: BTreeMap::new(),
            })
    }

    /// The audit event at `position`, if still kept.
    fn audit_event_at(&self, position: (i64, u64)) -> Option<&AuditEvent> {
        self.audit
            .iter()
            .find(|event| entry_position(&event.id) == Some(position))
    }
}

impl State {
    /// Appends an event with the next `<ms>-<seq>` id, dropping the oldest
    /// beyond the bound.
    fn append_audit(&mut self, mut event: AuditEvent) {
        let now = UnixMillis::now().0.max(self.last_audit_id.0);
        let seq = if now == self.last_audit_id.0 {
            self.last_audit_id.1 + 1
        } else {
            0
        };
        self.last_audit_id = (now, seq);
        event.id = format!("{now}-{seq}");
        self.audit.push_back(event);
        while self.audit.len() > self.audit_max_events.max(1) {
            self.audit.pop_front();
        }
    }
}

/// How often expired records are swept out; reads never see them regardless.
const PURGE_INTERVAL_MILLIS: i64 = 1_000;

impl State {
    /// Refuses a write of `identity` that newly grants a dataset that does
    /// not exist or is being deleted; `held` is what it held before.
    fn require_grantable(&self, held: &[String], identity: &Identity) -> StoreResult<()> {
        match dataset::newly_granted(held, &identity.datasets)
            .into_iter()
            .find(|name| {
                !self.datasets.contains_key(*name) || self.datasets_being_deleted.contains(*name)
            }) {
            Some(name) => Err(StoreError::DatasetUnavailable(name.to_owned())),
            None => Ok(()),
        }
    }

    fn identity(&self, id: &IdentityId) -> Option<&Identity> {
        self.identities
            .get(id)
            .filter(|e| e.live(self.now))
            .map(|e| &e.value)
    }

    fn key(&self, id: &KeyId) -> Option<&ApiKey> {
        self.keys
            .get(id)
            .filter(|e| e.live(self.now))
            .map(|e| &e.value)
    }

    /// A key as reported, with its last use.
    fn key_with_use(&self, key: &ApiKey) -> ApiKey {
        let mut key = key.clone();
        key.last_use_time = self.last_use.get(&key.id).copied();
        let field = usage::credits_field(key.budget_key().as_str());
        let stored = self
            .usage
            .get(&key.identity_id)
            .and_then(|usage| usage.get(&field));
        if let Some(credits) = &mut key.credits {
            credits.remaining = usage::credits_left(stored.map(String::as_str), credits, self.now);
        }
        key
    }

    fn identity_named(&self, name: &str) -> Option<&Identity> {
        self.names.get(name).and_then(|id| self.identity(id))
    }

    /// Drops whatever has passed its deadline: what Redis does natively.
    fn purge(&mut self, now: UnixMillis) {
        let expired: Vec<IdentityId> = self
            .identities
            .iter()
            .filter(|(_, entry)| !entry.live(now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_identity(&id);
        }
        self.keys.retain(|_, entry| entry.live(now));
        self.expiry_warned.retain(|(_, end, _)| *end > now);
        let keys = &self.keys;
        self.last_use.retain(|id, _| keys.contains_key(id));
        self.sessions.retain(|_, session| session.expire_time > now);
    }

    fn remove_identity(&mut self, id: &IdentityId) -> bool {
        let Some(entry) = self.identities.remove(id) else {
            return false;
        };
        let was_live = entry.live(self.now);
        self.totp.remove(id);
        self.usage.remove(id);
        if self.names.get(entry.value.name.as_str()) == Some(id) {
            self.names.remove(entry.value.name.as_str());
        }
        let key_ids: Vec<KeyId> = self.keys_of(id).map(|k| k.id.clone()).collect();
        for key_id in key_ids {
            self.keys.remove(&key_id);
        }
        was_live
    }

    fn keys_of<'a>(&'a self, identity: &'a IdentityId) -> impl Iterator<Item = &'a ApiKey> + 'a {
        self.keys
            .range::<str, _>((
                std::ops::Bound::Included(identity.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(id, _)| id.identity_id() == *identity)
            .filter(|(_, entry)| entry.live(self.now))
            .map(|(_, entry)| &entry.value)
    }

    fn key_name_taken(&self, key: &ApiKey) -> bool {
        key.holds_name()
            && self
                .keys_of(&key.identity_id)
                .any(|other| other.id != key.id && other.holds_name() && other.name == key.name)
    }

    fn put_key(&mut self, key: ApiKey, identity_expire: Option<UnixMillis>) {
        let deadline = key.record_deadline(identity_expire);
        self.unindex_key_end(&key.id);
        if let Some(end) = key.end(identity_expire) {
            self.key_ends.insert((end.at, end.kind, end.key_id.clone()));
            self.key_end_of.insert(end.key_id, (end.at, end.kind));
        }
        self.keys.insert(
            key.id.clone(),
            Expiring {
                value: key,
                deadline,
            },
        );
    }
}

impl State {
    /// Drops `id`'s deadline index entry (the key was deleted while live).
    fn unindex_key_end(&mut self, id: &KeyId) {
        if let Some((at, kind)) = self.key_end_of.remove(id) {
            self.key_ends.remove(&(at, kind, id.clone()));
        }
    }

    /// Whether the deadline index holds exactly `end`.
    fn holds_key_end(&self, end: &KeyEnd) -> bool {
        self.key_end_of.get(&end.key_id) == Some(&(end.at, end.kind))
    }

    /// Deletes a key record; true when it was live (its end is then not to
    /// be reported; a key that ended already keeps its entry).
    fn delete_key(&mut self, id: &KeyId) -> bool {
        let live = self.keys.remove(id).is_some_and(|e| e.live(self.now));
        if live {
            self.unindex_key_end(id);
        }
        live
    }
}

impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// The embedded in-memory store.
pub struct MemoryStore {
    state: Mutex<State>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_audit_limit(super::DEFAULT_AUDIT_MAX_EVENTS)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping at most `audit_max_events` audit events.
    pub fn with_audit_limit(audit_max_events: usize) -> Self {
        Self {
            state: Mutex::new(State {
                audit_max_events,
                ..State::default()
            }),
        }
    }

    /// Runs a change; when it `changed` something and the audit scope armed
    /// an event for it, the event is appended in the same critical section.
    fn audited<T>(
        &self,
        change: impl FnOnce(&mut State) -> StoreResult<T>,
        changed: impl FnOnce(&T) -> bool,
    ) -> StoreResult<T> {
        let armed = journal::armed_event();
        self.with_state(|state| {
            let outcome = change(state)?;
            if changed(&outcome)
                && let Some(event) = armed
            {
                state.append_audit(event);
                journal::committed();
            }
            Ok(outcome)
        })
    }

    // Every operation is short and never awaits while holding the lock, so a
    // std mutex is the right tool; a poisoned lock means a panic mid-change,
    // which the store reports rather than trusting the state.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> StoreResult<T>) -> StoreResult<T> {
        let mut state = self.state.lock().map_err(|_| {
            StoreError::Unavailable("memory store poisoned by an earlier panic".into())
        })?;
        let now = UnixMillis::now();
        state.now = now;
        if now.0 - state.last_purge.0 >= PURGE_INTERVAL_MILLIS {
            state.purge(now);
            state.last_purge = now;
        }
        f(&mut state)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        self.with_state(|_| Ok(()))
    }

    async fn create_identity(&self, identity: &Identity, keys: &[ApiKey]) -> StoreResult<()> {
        self.audited(
            |state| {
                if state.identity_named(&identity.name).is_some() {
                    return Err(StoreError::NameTaken(identity.name.to_string()));
                }
                if state.identity(&identity.id).is_some() {
                    return Err(StoreError::Conflict);
                }
                state.require_grantable(&[], identity)?;
                state
                    .names
                    .insert(identity.name.clone(), identity.id.clone());
                state.identities.insert(
                    identity.id.clone(),
                    Expiring {
                        value: identity.clone(),
                        deadline: identity.expire_time,
                    },
                );
                for key in keys {
                    state.put_key(key.clone(), identity.expire_time);
                }
                Ok(())
            },
            |_| true,
        )
    }

    async fn get_identity(&self, id: &IdentityId) -> StoreResult<Option<Identity>> {
        self.with_state(|state| Ok(state.identity(id).cloned()))
    }

    async fn find_identity_by_name(&self, name: &str) -> StoreResult<Option<Identity>> {
        self.with_state(|state| Ok(state.identity_named(name).cloned()))
    }

    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> StoreResult<Vec<Identity>> {
        self.with_state(|state| {
            Ok(state
                .identities
                .iter()
                .filter(|(id, e)| after.is_none_or(|after| *id > after) && e.live(state.now))
                .take(limit)
                .map(|(_, e)| e.value.clone())
                .collect())
        })
    }

    async fn update_identity(&self, identity: &Identity) -> StoreResult<Identity> {
        self.audited(
            |state| {
                let current = state
                    .identity(&identity.id)
                    .ok_or(StoreError::NotFound("identity"))?;
                let stored = current
                    .updated(identity)
                    .map_err(|_| StoreError::Conflict)?;
                state.require_grantable(&current.datasets, identity)?;
                let old_name = current.name.clone();
                if old_name != identity.name {
                    if state.identity_named(&identity.name).is_some() {
                        return Err(StoreError::NameTaken(identity.name.to_string()));
                    }
                    state.names.remove(old_name.as_str());
                    state
                        .names
                        .insert(identity.name.clone(), identity.id.clone());
                }
                state.identities.insert(
                    stored.id.clone(),
                    Expiring {
                        value: stored.clone(),
                        deadline: stored.expire_time,
                    },
                );
                let keys: Vec<ApiKey> = state.keys_of(&stored.id).cloned().collect();
                for key in keys {
                    state.put_key(key, stored.expire_time);
                }
                Ok(stored)
            },
            |_| true,
        )
    }

    async fn delete_identity(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
    ) -> StoreResult<bool> {
        self.audited(
            |state| {
                if let (Some(current), Some(revision)) = (state.identity(id), if_revision)
                    && !revision::admits(current.revision, revision)
                {
                    return Err(StoreError::Conflict);
                }
                let live_keys: Vec<KeyId> = state.keys_of(id).map(|k| k.id.clone()).collect();
                for key_id in &live_keys {
                    state.unindex_key_end(key_id);
                }
                Ok(state.remove_identity(id))
            },
            |deleted| *deleted,
        )
    }

    async fn create_key(&self, key: &ApiKey) -> StoreResult<()> {
        self.audited(
            |state| {
                let identity_expire = state
                    .identity(&key.identity_id)
                    .ok_or(StoreError::NotFound("identity"))?
                    .expire_time;
                if state.key(&key.id).is_some() {
                    return Err(StoreError::Conflict);
                }
                if state.key_name_taken(key) {
                    return Err(StoreError::NameTaken(key.name.clone()));
                }
                state.put_key(key.clone(), identity_expire);
                Ok(())
            },
            |_| true,
        )
    }

    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<ApiKey>> {
        self.with_state(|state| Ok(state.key(id).map(|key| state.key_with_use(key))))
    }

    async fn list_keys(
        &self,
        identity: &IdentityId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> StoreResult<Vec<ApiKey>> {
        self.with_state(|state| {
            Ok(state
                .keys_of(identity)
                .filter(|key| after.is_none_or(|after| key.id > *after))
                .take(limit)
                .map(|key| state.key_with_use(key))
                .collect())
        })
    }

    async fn update_key(&self, key: &ApiKey) -> StoreResult<ApiKey> {
        self.audited(
            |state| {
                let identity_expire = state
                    .identity(&key.identity_id)
                    .ok_or(StoreError::NotFound("key"))?
                    .expire_time;
                let current = state.key(&key.id).ok_or(StoreError::NotFound("key"))?;
                let stored = current.edited(key).map_err(|_| StoreError::Conflict)?;
                if state.key_name_taken(key) {
                    return Err(StoreError::NameTaken(key.name.clone()));
                }
                state.put_key(stored.clone(), identity_expire);
                Ok(stored)
            },
            |_| true,
        )
    }

    async fn delete_key(&self, id: &KeyId) -> StoreResult<bool> {
        self.audited(
            |state| {
                let Some(key) = state.key(id).cloned() else {
                    return Ok(false);
                };
                state.delete_key(id);
                // The budget goes with its last key (see `ApiKey::budget_sharers`).
                if !key.budget_sharers().any(|other| state.key(other).is_some())
                    && let Some(usage) = state.usage.get_mut(&key.identity_id)
                {
                    for field in key.budget_fields() {
                        usage.remove(&field);
                    }
                }
                Ok(true)
            },
            |deleted| *deleted,
        )
    }

    async fn roll_key(&self, old: &ApiKey, replacement: &ApiKey) -> StoreResult<Option<ApiKey>> {
        self.audited(
            |state| {
                let identity_expire = state
                    .identity(&old.identity_id)
                    .ok_or(StoreError::NotFound("identity"))?
                    .expire_time;
                let current = state.key(&old.id).ok_or(StoreError::NotFound("key"))?;
                let kept = current.rolled(old).map_err(|_| StoreError::Conflict)?;
                if state.key(&replacement.id).is_some() {
                    return Err(StoreError::Conflict);
                }
                match &kept {
                    Some(stored) => state.put_key(stored.clone(), identity_expire),
                    None => {
                        state.delete_key(&old.id);
                    }
                }
                state.put_key(replacement.clone(), identity_expire);
                Ok(kept)
            },
            |_| true,
        )
    }

    async fn key_with_identity(&self, id: &KeyId) -> StoreResult<Option<Subject>> {
        self.with_state(|state| {
            let key = state.key(id).cloned();
            let identity = state.identity(&id.identity_id()).cloned();
            Ok(key.zip(identity).map(Box::new))
        })
    }

    async fn charge_usage(
        &self,
        key: &ApiKey,
        identity: &Identity,
        check: &UsageCheck<'_>,
    ) -> StoreResult<Charge> {
        self.with_state(|state| {
            let current = state
                .key(&key.id)
                .map(|stored| stored.revision)
                .zip(state.identity(&identity.id).map(|stored| stored.revision));
            let unchanged = current.is_some_and(|(key_at, identity_at)| {
                revision::admits(key_at, key.revision)
                    && revision::admits(identity_at, identity.revision)
            });
            if !unchanged {
                return Ok(Charge::Stale);
            }
            let usage = state.usage.entry(identity.id.clone()).or_default();
            let (settlement, writes) =
                usage::settle(state.now, check, |field| usage.get(field).cloned());
            usage.extend(writes);
            Ok(Charge::Settled(settlement))
        })
    }

    async fn enroll_totp(&self, identity: &IdentityId, record: &TotpRecord) -> StoreResult<()> {
        self.audited(
            |state| {
                state
                    .identity(identity)
                    .ok_or(StoreError::NotFound("identity"))?;
                if state
                    .totp
                    .get(identity)
                    .is_some_and(|current| current.confirmed)
                {
                    return Err(StoreError::Conflict);
                }
                state.totp.insert(identity.clone(), record.clone());
                Ok(())
            },
            |_| true,
        )
    }

    async fn get_totp(&self, identity: &IdentityId) -> StoreResult<Option<TotpRecord>> {
        self.with_state(|state| {
            Ok(state
                .identity(identity)
                .and_then(|_| state.totp.get(identity))
                .cloned())
        })
    }

    async fn accept_totp_step(
        &self,
        identity: &IdentityId,
        step: u64,
        confirm: bool,
        now: UnixMillis,
    ) -> StoreResult<StepOutcome> {
        self.audited(
            |state| {
                if state.identity(identity).is_none() {
                    return Ok(StepOutcome::NotEnrolled);
                }
                let Some(record) = state.totp.get_mut(identity) else {
                    return Ok(StepOutcome::NotEnrolled);
                };
                let now = totp::lockout_checked_at(now, UnixMillis::now());
                Ok(record.accept_step(step, confirm, now))
            },
            |outcome| *outcome == StepOutcome::Accepted,
        )
    }

    async fn reseal_totp_seed(
        &self,
        identity: &IdentityId,
        sealed_was: &str,
        resealed: &str,
    ) -> StoreResult<bool> {
        self.with_state(|state| {
            if state.identity(identity).is_none() {
                return Ok(false);
            }
            Ok(state
                .totp
                .get_mut(identity)
                .is_some_and(|record| record.reseal(sealed_was, resealed)))
        })
    }

    async fn record_totp_failure(
        &self,
        identity: &IdentityId,
        now: UnixMillis,
        max_failures: u32,
        lockout: std::time::Duration,
    ) -> StoreResult<Option<UnixMillis>> {
        self.with_state(|state| {
            let Some(record) = state.totp.get_mut(identity) else {
                return Ok(None);
            };
            let starts_at = totp::lockout_starts_at(now, UnixMillis::now());
            Ok(record.record_failure(starts_at, max_failures, lockout))
        })
    }

    async fn create_dataset(&self, dataset: &Dataset) -> StoreResult<()> {
        self.audited(
            |state| {
                if state.datasets.contains_key(dataset.name.as_str()) {
                    return Err(StoreError::NameTaken(dataset.name.to_string()));
                }
                state.datasets.insert(dataset.name.clone(), dataset.clone());
                Ok(())
            },
            |_| true,
        )
    }

    async fn get_dataset(&self, name: &str) -> StoreResult<Option<Dataset>> {
        self.with_state(|state| Ok(state.datasets.get(name).cloned()))
    }

    async fn list_datasets(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Dataset>> {
        self.with_state(|state| {
            Ok(state
                .datasets
                .values()
                .filter(|dataset| after.is_none_or(|after| dataset.name.as_str() > after))
                .take(limit)
                .cloned()
                .collect())
        })
    }

    async fn begin_dataset_delete(&self, name: &str) -> StoreResult<bool> {
        self.with_state(|state| {
            let exists = state.datasets.contains_key(name);
            if exists {
                state.datasets_being_deleted.insert(name.to_owned());
            }
            Ok(exists)
        })
    }

    async fn cancel_dataset_delete(&self, name: &str) -> StoreResult<()> {
        self.with_state(|state| {
            state.datasets_being_deleted.remove(name);
            Ok(())
        })
    }

    async fn delete_dataset(&self, name: &str) -> StoreResult<bool> {
        self.audited(
            |state| {
                state.datasets_being_deleted.remove(name);
                Ok(state.datasets.remove(name).is_some())
            },
            |deleted| *deleted,
        )
    }

    async fn claim_import(&self, digest: &str, key: &KeyId) -> StoreResult<bool> {
        self.with_state(|state| {
            state.imported_ever = true;
            if state.imports.contains_key(digest) {
                return Ok(false);
            }
            state.imports.insert(digest.to_owned(), key.clone());
            Ok(true)
        })
    }

    async fn has_imports(&self) -> StoreResult<bool> {
        self.with_state(|state| Ok(state.imported_ever))
    }

    async fn find_imported(&self, digests: &[String]) -> StoreResult<Option<KeyId>> {
        self.with_state(|state| {
            Ok(digests
                .iter()
                .find_map(|digest| state.imports.get(digest).cloned()))
        })
    }

    async fn release_import(&self, digest: &str) -> StoreResult<()> {
        self.with_state(|state| {
            state.imports.remove(digest);
            Ok(())
        })
    }

    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        self.with_state(|state| {
            state.append_audit(event.clone());
            Ok(())
        })?;
        crate::metrics::metrics().audit_events.inc();
        Ok(())
    }

    async fn list_audit(&self, before: Option<&str>, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        let before = before.map(|id| entry_position(id).unwrap_or((i64::MIN, 0)));
        self.with_state(|state| {
            Ok(state
                .audit
                .iter()
                .rev()
                .filter(|event| {
                    before.is_none_or(|before| {
                        entry_position(&event.id).is_some_and(|position| position < before)
                    })
                })
                .take(limit)
                .cloned()
                .collect())
        })
    }

    async fn trim_audit(&self, cutoff: UnixMillis) -> StoreResult<()> {
        self.with_state(|state| {
            while state
                .audit
                .front()
                .and_then(|event| entry_position(&event.id))
                .is_some_and(|(millis, _)| millis < cutoff.0)
            {
                state.audit.pop_front();
            }
            Ok(())
        })
    }

    async fn read_audit_after(&self, after: &str, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        let after = entry_position(after).unwrap_or((i64::MAX, u64::MAX));
        self.with_state(|state| {
            Ok(state
                .audit
                .iter()
                .filter(|event| entry_position(&event.id).is_some_and(|position| position > after))
                .take(limit)
                .cloned()
                .collect())
        })
    }

    async fn audit_bounds(&self) -> StoreResult<Option<(String, String)>> {
        self.with_state(|state| {
            Ok(state
                .audit
                .front()
                .zip(state.audit.back())
                .map(|(first, last)| (first.id.clone(), last.id.clone())))
        })
    }

    async fn last_audit_id(&self) -> StoreResult<Option<String>> {
        self.with_state(|state| {
            let (millis, seq) = state.last_audit_id;
            Ok((millis > 0).then(|| format!("{millis}-{seq}")))
        })
    }

    async fn take_deliveries(
        &self,
        group: &str,
        consumer: &str,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>> {
        let now = UnixMillis::now().0;
        self.with_state(|state| {
            let after = state.delivery_group(group).last_given;
            let taken: Vec<AuditEvent> = state
                .audit
                .iter()
                .filter(|event| entry_position(&event.id).is_some_and(|at| at > after))
                .take(limit)
                .cloned()
                .collect();
            let group = state.delivery_group(group);
            for event in &taken {
                if let Some(position) = entry_position(&event.id) {
                    group.last_given = position;
                    group.pending.insert(position, (consumer.to_owned(), now));
                }
            }
            Ok(taken)
        })
    }

    async fn claim_deliveries(
        &self,
        group: &str,
        consumer: &str,
        min_idle: std::time::Duration,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>> {
        let now = UnixMillis::now().0;
        let min_idle = i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX);
        self.with_state(|state| {
            let idle: Vec<(i64, u64)> = state
                .delivery_group(group)
                .pending
                .iter()
                .filter(|(_, (_, touched))| now.saturating_sub(*touched) >= min_idle)
                .map(|(position, _)| *position)
                .take(limit)
                .collect();
            let mut claimed = Vec::new();
            for position in idle {
                match state.audit_event_at(position).cloned() {
                    Some(event) => {
                        claimed.push(event);
                        state
                            .delivery_group(group)
                            .pending
                            .insert(position, (consumer.to_owned(), now));
                    }
                    // Trimmed from the log before delivery, as in Redis.
                    None => {
                        state.delivery_group(group).pending.remove(&position);
                    }
                }
            }
            Ok(claimed)
        })
    }

    async fn touch_deliveries(&self, group: &str, consumer: &str, ids: &[&str]) -> StoreResult<()> {
        let now = UnixMillis::now().0;
        self.with_state(|state| {
            let pending = &mut state.delivery_group(group).pending;
            for position in ids.iter().filter_map(|id| entry_position(id)) {
                if let Some(entry) = pending.get_mut(&position) {
                    *entry = (consumer.to_owned(), now);
                }
            }
            Ok(())
        })
    }

    async fn ack_delivery(&self, group: &str, id: &str) -> StoreResult<()> {
        self.with_state(|state| {
            if let Some(position) = entry_position(id) {
                state.delivery_group(group).pending.remove(&position);
            }
            Ok(())
        })
    }

    async fn key_ends_between(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<KeyEnd>> {
        self.with_state(|state| {
            Ok(state
                .key_ends
                .iter()
                .skip_while(|(at, _, _)| *at < from)
                .take_while(|(at, _, _)| *at <= until)
                .take(limit)
                .map(|(at, kind, key_id)| KeyEnd {
                    key_id: key_id.clone(),
                    kind: *kind,
                    at: *at,
                })
                .collect())
        })
    }

    async fn record_key_end(&self, end: &KeyEnd, event: &AuditEvent) -> StoreResult<bool> {
        let claimed = self.with_state(|state| {
            if !state.holds_key_end(end) {
                return Ok(false);
            }
            state.unindex_key_end(&end.key_id);
            state.append_audit(event.clone());
            Ok(true)
        })?;
        if claimed {
            crate::metrics::metrics().audit_events.inc();
        }
        Ok(claimed)
    }

    async fn record_expiry_warning(
        &self,
        end: &KeyEnd,
        lead: Duration,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let sent = self.with_state(|state| {
            if !state.holds_key_end(end)
                || !state
                    .expiry_warned
                    .insert((end.key_id.clone(), end.at, lead))
            {
                return Ok(false);
            }
            state.append_audit(event.clone());
            Ok(true)
        })?;
        if sent {
            crate::metrics::metrics().audit_events.inc();
        }
        Ok(sent)
    }

    async fn claim_expiry_sweep(&self, _holder: &str, interval: Duration) -> StoreResult<bool> {
        self.with_state(|state| {
            if state.expiry_sweep_until > state.now {
                return Ok(false);
            }
            state.expiry_sweep_until = state.now.plus(interval);
            Ok(true)
        })
    }

    async fn index_key_ends_once(&self) -> StoreResult<usize> {
        // Every key this store ever held was indexed when written.
        Ok(0)
    }

    async fn record_key_use(&self, uses: &[(KeyId, UnixMillis)]) -> StoreResult<()> {
        self.with_state(|state| {
            for (id, when) in uses {
                if state.key(id).is_some() {
                    let last = state.last_use.entry(id.clone()).or_insert(*when);
                    *last = (*last).max(*when);
                }
            }
            Ok(())
        })
    }

    async fn create_session(&self, handle: &str, session: &ConsoleSession) -> StoreResult<()> {
        self.with_state(|state| {
            state.sessions.insert(handle.to_owned(), session.clone());
            Ok(())
        })
    }

    async fn get_session(&self, handle: &str) -> StoreResult<Option<ConsoleSession>> {
        self.with_state(|state| {
            Ok(state
                .sessions
                .get(handle)
                .filter(|session| session.expire_time > state.now)
                .cloned())
        })
    }

    async fn delete_session(&self, handle: &str) -> StoreResult<bool> {
        self.with_state(|state| {
            let now = state.now;
            Ok(state
                .sessions
                .remove(handle)
                .is_some_and(|session| session.expire_time > now))
        })
    }
}
