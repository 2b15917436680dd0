//! The Redis store: the system of record. This module and its children are the
//! only code that knows Redis key names, commands and scripts.

mod cached_key;
mod connect;
mod deadlines;
mod keys;
mod names;
mod record_cache;
mod records;
mod scripts;
mod sentinel;
mod usage;
mod write;

pub use record_cache::{VerifyCacheOptions, VerifyCacheStats};

pub use sentinel::SentinelConnection;

pub use keys::Keyspace;

pub use connect::{RedisOptions, client};
pub use names::NAME_CLAIM_LEASE;
pub use write::Durability;

use super::{Store, StoreError, StoreResult, journal};
use crate::domain::dataset;
use crate::domain::key::Origin;
use crate::domain::session::ConsoleSession;
use crate::domain::totp::{StepOutcome, TotpRecord};
use crate::domain::{
    ApiKey, AuditEvent, Dataset, Identity, IdentityId, KeyEnd, KeyId, Subject, UnixMillis,
};
use async_trait::async_trait;
use names::parse_claim;
use records::{decode, encode};
use redis::AsyncCommands;
use redis::RedisError;
use redis::aio::{ConnectionLike, ConnectionManager};
use std::sync::Arc;
use std::time::Duration;
use write::{Outcome, Writers};

/// Keyrack's records in Redis, over any connection redis-rs offers (one
/// shared multiplexed connection for a standalone server).
pub struct RedisStore<C = ConnectionManager> {
    connection: C,
    // Changes take their connection from here (see `write.rs`): WAIT and
    // WAITAOF block the connection they run on, and Verify's reads must not
    // queue behind them.
    writers: Writers<C>,
    keyspace: Keyspace,
    durability: Durability,
    audit_max_events: usize,
    /// Whether `connection` is a Redis Cluster connection.
    cluster: bool,
    /// Verify's tracked record cache (`--verify-cache tracked`), if on.
    record_cache: Option<Arc<record_cache::RecordCache>>,
    /// How a tracking link reaches this store's Redis; None under Cluster.
    link_opener: Option<record_cache::LinkOpener>,
    response_timeout: Duration,
    /// Verify's charges waiting behind one in flight, per identity
    /// (`usage.rs`).
    usage_charges: Arc<usage::ChargeQueues>,
}

/// Attempts to take back, under Cluster, a grant written for a dataset being
/// deleted, when other writes to the identity keep moving its revision.
const UNDO_ATTEMPTS: usize = 5;

fn unavailable(error: RedisError) -> StoreError {
    crate::metrics::metrics().redis_errors.inc();
    StoreError::Unavailable(error.to_string())
}

/// The events of a range of audit stream entries.
fn audit_events_of(entries: Vec<redis::streams::StreamId>) -> StoreResult<Vec<AuditEvent>> {
    entries
        .into_iter()
        .map(|entry| {
            let raw: String = entry.get("event").ok_or_else(|| {
                StoreError::Corrupt(format!("audit entry {} has no event", entry.id))
            })?;
            let mut event: AuditEvent = decode(&raw)?;
            event.id = entry.id;
            Ok(event)
        })
        .collect()
}

/// Maps a script's status reply to the store's outcome.
fn script_outcome(reply: &str, name: &str, missing: &'static str) -> StoreResult<()> {
    match reply {
        "OK" => Ok(()),
        "NOTFOUND" => Err(StoreError::NotFound(missing)),
        "CONFLICT" | "EXISTS" => Err(StoreError::Conflict),
        "NAMETAKEN" => Err(StoreError::NameTaken(name.to_owned())),
        other if other.starts_with("NODATASET:") => Err(StoreError::DatasetUnavailable(
            other["NODATASET:".len()..].to_owned(),
        )),
        other => Err(StoreError::Corrupt(format!(
            "unexpected script reply {other:?}"
        ))),
    }
}

/// The outcome of a change whose script answers a status (`OK` when it
/// changed the records).
fn changed(reply: &str, name: &str, missing: &'static str) -> StoreResult<Outcome<()>> {
    script_outcome(reply, name, missing).map(Outcome::Changed)
}

/// The outcome of a delete whose script answers whether the record existed.
fn deleted(existed: i64) -> Outcome<bool> {
    if existed == 1 {
        Outcome::Changed(true)
    } else {
        Outcome::Unchanged(false)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over an established connection.
    pub fn with_connection(connection: C, keyspace: Keyspace) -> Self {
        Self {
            writers: Writers::Shared(connection.clone()),
            connection,
            durability: Durability::None,
            keyspace,
            audit_max_events: super::DEFAULT_AUDIT_MAX_EVENTS,
            cluster: false,
            record_cache: None,
            link_opener: None,
            response_timeout: Duration::from_secs(2),
            usage_charges: Arc::default(),
        }
    }

    /// Turns on Verify's tracked record cache (see `record_cache.rs`); under
    /// Cluster it tracks each master on its own link. Every Redis keyrack
    /// accepts can track reads (see `require_supported_redis`); one whose
    /// ACL refuses `CLIENT TRACKING` leaves the cache off, with a warning.
    pub async fn enable_verify_cache(&mut self, options: VerifyCacheOptions) -> StoreResult<()> {
        let Some(opener) = self.link_opener.clone() else {
            return Ok(());
        };
        let started = record_cache::RecordCache::start(
            options,
            self.response_timeout,
            opener,
            self.keyspace.clone(),
        )
        .await;
        match started {
            Ok(cache) => self.record_cache = Some(cache),
            // Redis answered, and refused: no tracking there (an ACL without
            // `client|tracking`, a server without it). Verify then reads
            // Redis every time, as `--verify-cache off` does.
            Err(error)
                if matches!(
                    error.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::NoPerm | redis::ServerErrorKind::ResponseError
                    )
                ) =>
            {
                tracing::warn!(
                    %error,
                    "Redis refused CLIENT TRACKING: Verify's record cache is off, and every Verify reads Redis (as with --verify-cache off)"
                );
            }
            Err(error) => return Err(unavailable(error)),
        }
        Ok(())
    }

    /// Whether any key record says it was imported: a walk over every
    /// identity's keys, for `has_imports` on a store older than its marker.
    async fn any_imported_key(&self) -> StoreResult<bool> {
        const PAGE: usize = 256;
        let mut after_identity: Option<IdentityId> = None;
        loop {
            let identities = Store::list_identities(self, after_identity.as_ref(), PAGE).await?;
            for identity in &identities {
                let keys = Store::all_keys_of(self, &identity.id).await?;
                if keys.iter().any(|key| key.origin == Some(Origin::Import)) {
                    return Ok(true);
                }
            }
            match identities.last() {
                Some(last) if identities.len() == PAGE => after_identity = Some(last.id.clone()),
                _ => return Ok(false),
            }
        }
    }

    /// What the record cache has done; None while it is off.
    pub fn verify_cache_stats(&self) -> Option<VerifyCacheStats> {
        self.record_cache.as_ref().map(|cache| cache.stats())
    }

    /// This replica changed `identity`'s records: its cached entries go now,
    /// whatever the write's outcome, rather than when the push arrives. A
    /// Verify hit needs the identity's record, so dropping that one entry
    /// sends every key of the identity back to Redis.
    fn forget_cached(&self, identity: &IdentityId) {
        if let Some(cache) = &self.record_cache {
            cache.forget(identity);
        }
    }

    /// Verify's read through the tracking link, cached when Redis returned
    /// both records and nothing changed meanwhile; None when no link is up
    /// or the read on it failed (the caller then reads uncached).
    async fn tracked_key_with_identity(
        &self,
        cache: &record_cache::RecordCache,
        id: &KeyId,
    ) -> Option<StoreResult<Option<Subject>>> {
        if let Some(found) = cache.lookup(id) {
            return Some(Ok(Some(found)));
        }
        let [key_name, identity_name] = self.keyspace.verify_records(id);
        let (mut link, generation, removals_before) = cache.begin_read(&id.identity_id())?;
        let read: Result<(Option<String>, Option<String>), _> =
            link.mget(&[&key_name, &identity_name]).await;
        let (raw_key, raw_identity) = match read {
            Ok(raw) => raw,
            Err(error) if error.is_cluster_error() => {
                // The Cluster's slots moved (or are moving): the links are
                // rebuilt, and this read goes through the Cluster connection,
                // which follows the redirection.
                cache.slots_moved(generation);
                return None;
            }
            Err(error) => {
                // A link that fails a read (a timeout on a link stalled
                // silently, say) is dropped and replaced; this read goes
                // through the main connection, so one bad link costs no
                // answer that Redis itself could give.
                tracing::debug!(%error, "a read on the tracking link failed");
                cache.link_failed(generation);
                return None;
            }
        };
        let (Some(raw_key), Some(raw_identity)) = (raw_key, raw_identity) else {
            // An unknown key id is never cached as absent.
            return Some(Ok(None));
        };
        Some((|| {
            let key: ApiKey = decode(&raw_key)?;
            let identity: Identity = decode(&raw_identity)?;
            cache.insert(removals_before, &key, &identity);
            Ok(Some(Box::new((key, identity))))
        })())
    }

    /// Up to `limit` audit events of an `XRANGE` or `XREVRANGE` from `start`
    /// to `end`.
    async fn audit_range(
        &self,
        command: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>> {
        let entries: redis::streams::StreamRangeReply = redis::cmd(command)
            .arg(self.keyspace.audit())
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        audit_events_of(entries.ids)
    }

    async fn append_encoded_audit(&self, event: &str) -> StoreResult<()> {
        let _: String = redis::cmd("XADD")
            .arg(self.keyspace.audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.audit_max_events)
            .arg("*")
            .arg("event")
            .arg(event)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// GETs of keys in different slots, sent at once: the multiplexed
    /// connection pipelines them, and under Cluster each goes to its own
    /// shard (a pipeline object would have to stay in one slot).
    async fn get_each(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> StoreResult<Vec<Option<String>>> {
        futures_util::future::try_join_all(keys.map(|key| {
            let mut connection = self.connection();
            async move { connection.get::<_, Option<String>>(key).await }
        }))
        .await
        .map_err(unavailable)
    }

    fn connection(&self) -> C {
        // Cloning a multiplexed connection shares it; commands pipeline on it.
        self.connection.clone()
    }

    /// The `maxmemory-policy` Redis reports, when CONFIG GET is allowed.
    pub async fn maxmemory_policy(&self) -> Option<String> {
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut self.connection())
            .await
            .ok()?;
        reply.get(1).cloned()
    }

    /// The dataset keys an identity write script checks its new grants
    /// against (see `scripts::ungrantable_dataset`): each dataset's record
    /// and delete mark. None under Cluster, where they sit in other slots
    /// and [`Self::ungrantable_after_write`] checks instead.
    fn dataset_gate_keys(&self, identity: &Identity) -> Vec<String> {
        if self.cluster {
            return Vec::new();
        }
        identity
            .datasets
            .iter()
            .flat_map(|name| {
                [
                    self.keyspace.dataset(name),
                    self.keyspace.dataset_delete_mark(name),
                ]
            })
            .collect()
    }

    /// Under Cluster, the first dataset a write just newly granted that is
    /// missing or being deleted, read after the write. DeleteDataset marks
    /// the dataset before it looks for grants, and this looks at the mark
    /// after the grant is written, so one of the two always sees the other:
    /// either DeleteDataset finds the grant or the writer undoes it.
    async fn ungrantable_after_write(
        &self,
        held: &[String],
        written: &Identity,
    ) -> StoreResult<Option<String>> {
        if !self.cluster {
            return Ok(None);
        }
        let granted = dataset::newly_granted(held, &written.datasets);
        let states = self
            .get_each(granted.iter().flat_map(|name| {
                [
                    self.keyspace.dataset(name),
                    self.keyspace.dataset_delete_mark(name),
                ]
            }))
            .await?;
        Ok(granted
            .iter()
            .zip(states.chunks(2))
            .find(|(_, state)| state[0].is_none() || state[1].is_some())
            .map(|(name, _)| (*name).to_owned()))
    }

    /// Under Cluster, takes back the grants of a dataset being deleted that
    /// an update of `current` just wrote (see
    /// [`Self::ungrantable_after_write`]); otherwise returns `stored`.
    async fn undo_ungrantable(
        &self,
        current: &Identity,
        stored: Identity,
    ) -> StoreResult<Identity> {
        let Some(refused) = self
            .ungrantable_after_write(&current.datasets, &stored)
            .await?
        else {
            return Ok(stored);
        };
        let added: Vec<String> = dataset::newly_granted(&current.datasets, &stored.datasets)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut latest = stored;
        for _ in 0..UNDO_ATTEMPTS {
            let mut reverted = latest.clone();
            reverted.datasets.retain(|name| !added.contains(name));
            match self.run_update_identity(&reverted).await {
                Ok(_) | Err(StoreError::NotFound(_)) => break,
                Err(StoreError::Conflict) => match self.get_identity(&latest.id).await? {
                    Some(fresh) => latest = fresh,
                    None => break,
                },
                Err(other) => return Err(other),
            }
        }
        Err(StoreError::DatasetUnavailable(refused))
    }

    async fn run_update_identity(&self, identity: &Identity) -> StoreResult<Identity> {
        // UPDATE_IDENTITY checks the revision `identity` was read at (the
        // Lua mirror of `Identity::updated`) and stores this record.
        let stored = identity.at_next_revision();
        let mut invocation = scripts::UPDATE_IDENTITY.prepare_invoke();
        invocation
            .key(self.keyspace.identity(&identity.id))
            .key(self.keyspace.key_index(&identity.id))
            .key(self.keyspace.key_names(&identity.id))
            .key(self.keyspace.totp(&identity.id))
            .key(self.keyspace.last_use(&identity.id))
            .key(self.keyspace.usage(&identity.id));
        for dataset_key in self.dataset_gate_keys(identity) {
            invocation.key(dataset_key);
        }
        invocation
            .arg(self.keyspace.key_prefix(&identity.id))
            .arg(encode(&stored)?)
            .arg(identity.revision);
        self.change(
            self.keyspace.identity(&identity.id),
            &mut invocation,
            Some(&identity.id),
            |reply: String| changed(&reply, &identity.name, "identity"),
        )
        .await?;
        Ok(stored)
    }

    async fn run_delete_identity(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
    ) -> StoreResult<bool> {
        self.change(
            self.keyspace.identity(id),
            scripts::DELETE_IDENTITY
                .key(self.keyspace.identity(id))
                .key(self.keyspace.key_index(id))
                .key(self.keyspace.key_names(id))
                .key(self.keyspace.totp(id))
                .key(self.keyspace.last_use(id))
                .key(self.keyspace.usage(id))
                .arg(self.keyspace.key_prefix(id))
                .arg(
                    if_revision
                        .map(|revision| revision.to_string())
                        .unwrap_or_default(),
                ),
            Some(id),
            |existed: i64| match existed {
                -1 => Err(StoreError::Conflict),
                _ => Ok(deleted(existed)),
            },
        )
        .await
    }

    async fn forget_listed_identity(&self, id: &IdentityId) {
        let removed: Result<i64, _> = self
            .connection()
            .zrem(self.keyspace.identities(), id.as_str())
            .await;
        if let Err(error) = removed {
            tracing::warn!(%error, identity_id = %id, "could not repair the identity listing");
        }
    }
}

#[async_trait]
impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.create_identity", skip_all)]
    async fn create_identity(&self, identity: &Identity, keys: &[ApiKey]) -> StoreResult<()> {
        // Order matters for repair on read: the name claim and the listing entry
        // come first, so an interrupted create leaves only index entries that
        // point at nothing, which readers drop.
        self.claim_identity_name(&identity.name, &identity.id)
            .await?;
        let listed: Result<i64, _> = self
            .connection()
            .zadd(self.keyspace.identities(), identity.id.as_str(), 0)
            .await;
        if let Err(error) = listed {
            self.release_identity_name(&identity.name, &identity.id)
                .await;
            return Err(unavailable(error));
        }
        let mut invocation = scripts::CREATE_IDENTITY.prepare_invoke();
        invocation
            .key(self.keyspace.identity(&identity.id))
            .key(self.keyspace.key_index(&identity.id))
            .key(self.keyspace.key_names(&identity.id));
        for dataset_key in self.dataset_gate_keys(identity) {
            invocation.key(dataset_key);
        }
        invocation
            .arg(self.keyspace.key_prefix(&identity.id))
            .arg(encode(identity)?);
        for key in keys {
            invocation.arg(encode(key)?);
        }
        let mut change = self
            .begin_change(self.keyspace.identity(&identity.id))
            .await?;
        let created: Result<String, _> = change.run(&mut invocation, None).await;
        match created {
            Ok(reply) if reply == "OK" => change.commit_event().await,
            // An id collision (about 2^-71): the other identity keeps its entries.
            Ok(reply) if reply == "EXISTS" => return Err(StoreError::Conflict),
            Ok(reply) => {
                drop(change);
                self.release_identity_name(&identity.name, &identity.id)
                    .await;
                self.forget_listed_identity(&identity.id).await;
                return Err(script_outcome(&reply, &identity.name, "identity")
                    .err()
                    .unwrap_or(StoreError::Conflict));
            }
            Err(error) => {
                // The script may have run before its reply was lost: undo only
                // what certainly did not happen.
                let written = matches!(self.get_identity(&identity.id).await, Ok(Some(_)));
                if !written {
                    drop(change);
                    self.release_identity_name(&identity.name, &identity.id)
                        .await;
                    self.forget_listed_identity(&identity.id).await;
                    return Err(unavailable(error));
                }
            }
        }
        // A concurrent creator may have judged our fresh claim stale between
        // the claim and the write; exactly one of us still holds it. The
        // confirmation goes on the change's connection, so that the
        // durability wait covers it too.
        if !self
            .confirm_identity_name(&identity.name, &identity.id, change.writer())
            .await?
        {
            // The undo takes a writer of its own: give this one back first.
            drop(change);
            self.run_delete_identity(&identity.id, None).await?;
            self.forget_listed_identity(&identity.id).await;
            return Err(StoreError::NameTaken(identity.name.to_string()));
        }
        if let Some(refused) = self.ungrantable_after_write(&[], identity).await? {
            drop(change);
            self.run_delete_identity(&identity.id, None).await?;
            self.release_identity_name(&identity.name, &identity.id)
                .await;
            self.forget_listed_identity(&identity.id).await;
            return Err(StoreError::DatasetUnavailable(refused));
        }
        change.confirm_durable().await
    }

    #[tracing::instrument(level = "debug", name = "redis.get_identity", skip_all)]
    async fn get_identity(&self, id: &IdentityId) -> StoreResult<Option<Identity>> {
        let raw: Option<String> = self
            .connection()
            .get(self.keyspace.identity(id))
            .await
            .map_err(unavailable)?;
        raw.as_deref().map(decode).transpose()
    }

    #[tracing::instrument(level = "debug", name = "redis.find_identity_by_name", skip_all)]
    async fn find_identity_by_name(&self, name: &str) -> StoreResult<Option<Identity>> {
        let holder: Option<String> = self
            .connection()
            .hget(self.keyspace.identity_names(), name)
            .await
            .map_err(unavailable)?;
        let Some((id, _)) = holder.as_deref().and_then(parse_claim) else {
            return Ok(None);
        };
        Ok(self
            .get_identity(&id)
            .await?
            .filter(|identity| identity.name == name))
    }

    #[tracing::instrument(level = "debug", name = "redis.list_identities", skip_all)]
    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> StoreResult<Vec<Identity>> {
        let mut found = Vec::with_capacity(limit);
        let mut cursor = after
            .map(|id| format!("({id}"))
            .unwrap_or_else(|| "-".to_owned());
        while found.len() < limit {
            let wanted = limit - found.len();
            let ids: Vec<String> = self
                .connection()
                .zrangebylex_limit(self.keyspace.identities(), &cursor, "+", 0, wanted as isize)
                .await
                .map_err(unavailable)?;
            let Some(last) = ids.last() else { break };
            cursor = format!("({last}");
            let ids: Vec<IdentityId> = ids
                .iter()
                .filter_map(|id| IdentityId::parse(id).ok())
                .collect();
            let records = self
                .get_each(ids.iter().map(|id| self.keyspace.identity(id)))
                .await?;
            for (id, raw) in ids.iter().zip(records) {
                match raw {
                    Some(raw) => found.push(decode(&raw)?),
                    // Expired natively or an interrupted delete: repair the index.
                    None => self.forget_listed_identity(id).await,
                }
            }
            if ids.len() < wanted {
                break;
            }
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", name = "redis.update_identity", skip_all)]
    async fn update_identity(&self, identity: &Identity) -> StoreResult<Identity> {
        let Some(current) = self.get_identity(&identity.id).await? else {
            return Err(StoreError::NotFound("identity"));
        };
        if current.name == identity.name {
            let stored = self.run_update_identity(identity).await?;
            return self.undo_ungrantable(&current, stored).await;
        }
        self.claim_identity_name(&identity.name, &identity.id)
            .await?;
        let stored = match self.run_update_identity(identity).await {
            Ok(stored) => stored,
            Err(error) => {
                self.release_identity_name(&identity.name, &identity.id)
                    .await;
                return Err(error);
            }
        };
        if !self
            .confirm_identity_name(&identity.name, &identity.id, &mut self.connection())
            .await?
        {
            // Lost the new name to a concurrent claim: put the old name back.
            let mut reverted = stored.clone();
            reverted.name = current.name.clone();
            self.run_update_identity(&reverted).await?;
            return Err(StoreError::NameTaken(identity.name.to_string()));
        }
        self.release_identity_name(&current.name, &identity.id)
            .await;
        self.undo_ungrantable(&current, stored).await
    }

    #[tracing::instrument(level = "debug", name = "redis.delete_identity", skip_all)]
    async fn delete_identity(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
    ) -> StoreResult<bool> {
        let name = self.get_identity(id).await?.map(|identity| identity.name);
        let existed = self.run_delete_identity(id, if_revision).await?;
        if let Some(name) = name {
            self.release_identity_name(&name, id).await;
        }
        self.forget_listed_identity(id).await;
        Ok(existed)
    }

    #[tracing::instrument(level = "debug", name = "redis.create_key", skip_all)]
    async fn create_key(&self, key: &ApiKey) -> StoreResult<()> {
        let identity = &key.identity_id;
        self.change(
            self.keyspace.identity(identity),
            scripts::CREATE_KEY
                .key(self.keyspace.identity(identity))
                .key(self.keyspace.key_index(identity))
                .key(self.keyspace.key_names(identity))
                .key(self.keyspace.key(&key.id))
                .arg(self.keyspace.key_prefix(identity))
                .arg(encode(key)?),
            None,
            |reply: String| changed(&reply, &key.name, "identity"),
        )
        .await
    }

    #[tracing::instrument(level = "debug", name = "redis.get_key", skip_all)]
    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<ApiKey>> {
        let (raw, last_use): (Option<String>, Option<i64>) = redis::pipe()
            .get(self.keyspace.key(id))
            .hget(self.keyspace.last_use(&id.identity_id()), id.as_str())
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let Some(mut key) = raw.as_deref().map(decode::<ApiKey>).transpose()? else {
            return Ok(None);
        };
        key.last_use_time = last_use.map(UnixMillis);
        self.with_live_credits(std::slice::from_mut(&mut key))
            .await?;
        Ok(Some(key))
    }

    #[tracing::instrument(level = "debug", name = "redis.list_keys", skip_all)]
    async fn list_keys(
        &self,
        identity: &IdentityId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> StoreResult<Vec<ApiKey>> {
        let index = self.keyspace.key_index(identity);
        let mut found = Vec::with_capacity(limit);
        let mut cursor = after
            .map(|id| format!("({id}"))
            .unwrap_or_else(|| "-".to_owned());
        while found.len() < limit {
            let wanted = limit - found.len();
            let ids: Vec<String> = self
                .connection()
                .zrangebylex_limit(&index, &cursor, "+", 0, wanted as isize)
                .await
                .map_err(unavailable)?;
            let Some(last) = ids.last() else { break };
            cursor = format!("({last}");
            let ids: Vec<KeyId> = ids.iter().filter_map(|id| KeyId::parse(id).ok()).collect();
            let (records, last_uses): (Vec<Option<String>>, Vec<Option<i64>>) = if ids.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                // One identity's records share a slot: one pipelined call.
                let names: Vec<String> = ids.iter().map(|id| self.keyspace.key(id)).collect();
                let fields: Vec<&str> = ids.iter().map(KeyId::as_str).collect();
                redis::pipe()
                    .mget(names)
                    .hmget(self.keyspace.last_use(identity), fields)
                    .query_async(&mut self.connection())
                    .await
                    .map_err(unavailable)?
            };
            for ((id, raw), last_use) in ids.iter().zip(records).zip(last_uses) {
                match raw {
                    Some(raw) => {
                        let mut key: ApiKey = decode(&raw)?;
                        key.last_use_time = last_use.map(UnixMillis);
                        found.push(key);
                    }
                    None => {
                        let _: Result<i64, _> = self.connection().zrem(&index, id.as_str()).await;
                    }
                }
            }
            if ids.len() < wanted {
                break;
            }
        }
        self.with_live_credits(&mut found).await?;
        Ok(found)
    }

    #[tracing::instrument(level = "debug", name = "redis.update_key", skip_all)]
    async fn update_key(&self, key: &ApiKey) -> StoreResult<ApiKey> {
        let identity = &key.identity_id;
        // UPDATE_KEY checks the revision and the grace fields (the Lua
        // mirror of `ApiKey::edited`) and stores this record.
        let stored = key.at_next_revision();
        self.change(
            self.keyspace.identity(identity),
            scripts::UPDATE_KEY
                .key(self.keyspace.identity(identity))
                .key(self.keyspace.key_index(identity))
                .key(self.keyspace.key_names(identity))
                .key(self.keyspace.key(&key.id))
                .arg(self.keyspace.key_prefix(identity))
                .arg(encode(&stored)?)
                .arg(key.revision),
            Some(identity),
            |reply: String| changed(&reply, &key.name, "key"),
        )
        .await?;
        Ok(stored)
    }

    #[tracing::instrument(level = "debug", name = "redis.delete_key", skip_all)]
    async fn delete_key(&self, id: &KeyId) -> StoreResult<bool> {
        let identity = id.identity_id();
        self.change(
            self.keyspace.key_index(&identity),
            scripts::DELETE_KEY
                .key(self.keyspace.key_index(&identity))
                .key(self.keyspace.key_names(&identity))
                .key(self.keyspace.key(id))
                .key(self.keyspace.last_use(&identity))
                .key(self.keyspace.usage(&identity))
                .arg(id.as_str())
                .arg(self.keyspace.key_prefix(&identity)),
            Some(&identity),
            |existed: i64| Ok(deleted(existed)),
        )
        .await
    }

    #[tracing::instrument(level = "debug", name = "redis.roll_key", skip_all)]
    async fn roll_key(&self, old: &ApiKey, replacement: &ApiKey) -> StoreResult<Option<ApiKey>> {
        let identity = &old.identity_id;
        // ROLL_KEY checks the revision and that the key was not rolled yet
        // (the Lua mirror of `ApiKey::rolled`), and keeps this record only
        // when it carries a grace deadline.
        let stored_old = old.at_next_revision();
        self.change(
            self.keyspace.identity(identity),
            scripts::ROLL_KEY
                .key(self.keyspace.identity(identity))
                .key(self.keyspace.key_index(identity))
                .key(self.keyspace.key_names(identity))
                .key(self.keyspace.key(&old.id))
                .key(self.keyspace.key(&replacement.id))
                .arg(self.keyspace.key_prefix(identity))
                .arg(encode(&stored_old)?)
                .arg(old.revision)
                .arg(encode(replacement)?),
            Some(identity),
            |reply: String| changed(&reply, &replacement.name, "key"),
        )
        .await?;
        Ok(stored_old.grace_expire_time.is_some().then_some(stored_old))
    }

    #[tracing::instrument(level = "debug", name = "redis.key_with_identity", skip_all)]
    async fn key_with_identity(&self, id: &KeyId) -> StoreResult<Option<Subject>> {
        if let Some(cache) = &self.record_cache
            && let Some(found) = self.tracked_key_with_identity(cache, id).await
        {
            return found;
        }
        self.key_with_identity_uncached(id).await
    }

    fn reads_records_every_time(&self) -> bool {
        self.record_cache.is_none()
    }

    async fn key_with_identity_uncached(&self, id: &KeyId) -> StoreResult<Option<Subject>> {
        let (raw_key, raw_identity): (Option<String>, Option<String>) = self
            .connection()
            .mget(&self.keyspace.verify_records(id))
            .await
            .map_err(unavailable)?;
        match (raw_key, raw_identity) {
            (Some(key), Some(identity)) => Ok(Some(Box::new((decode(&key)?, decode(&identity)?)))),
            _ => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", name = "redis.charge_usage", skip_all)]
    async fn charge_usage(
        &self,
        key: &ApiKey,
        identity: &Identity,
        check: &crate::domain::usage::UsageCheck<'_>,
    ) -> StoreResult<super::Charge> {
        self.run_charge_usage(key, identity, check).await
    }

    #[tracing::instrument(level = "debug", name = "redis.enroll_totp", skip_all)]
    async fn enroll_totp(&self, identity: &IdentityId, record: &TotpRecord) -> StoreResult<()> {
        self.change(
            self.keyspace.identity(identity),
            scripts::ENROLL_TOTP
                .key(self.keyspace.identity(identity))
                .key(self.keyspace.totp(identity))
                .arg(encode(record)?),
            None,
            |reply: String| changed(&reply, "", "identity"),
        )
        .await
    }

    #[tracing::instrument(level = "debug", name = "redis.get_totp", skip_all)]
    async fn get_totp(&self, identity: &IdentityId) -> StoreResult<Option<TotpRecord>> {
        let (raw_identity, raw_totp): (Option<String>, Option<String>) = self
            .connection()
            .mget(&[
                self.keyspace.identity(identity),
                self.keyspace.totp(identity),
            ])
            .await
            .map_err(unavailable)?;
        match (raw_identity, raw_totp) {
            (Some(_), Some(raw)) => Ok(Some(decode(&raw)?)),
            _ => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", name = "redis.accept_totp_step", skip_all)]
    async fn accept_totp_step(
        &self,
        identity: &IdentityId,
        step: u64,
        confirm: bool,
        now: UnixMillis,
    ) -> StoreResult<StepOutcome> {
        self.change(
            self.keyspace.totp(identity),
            scripts::ACCEPT_TOTP_STEP
                .key(self.keyspace.totp(identity))
                .arg(step)
                .arg(if confirm { "1" } else { "0" })
                .arg(now.0),
            None,
            |reply: String| match reply.as_str() {
                "OK" => Ok(Outcome::Changed(StepOutcome::Accepted)),
                "REPLAYED" => Ok(Outcome::Declined(StepOutcome::Replayed)),
                "NOTENROLLED" => Ok(Outcome::Declined(StepOutcome::NotEnrolled)),
                other => other
                    .strip_prefix("LOCKED:")
                    .and_then(|until| until.parse().ok())
                    .map(|until| Outcome::Declined(StepOutcome::Locked(UnixMillis(until))))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("unexpected script reply {other:?}"))
                    }),
            },
        )
        .await
    }

    #[tracing::instrument(level = "debug", name = "redis.reseal_totp_seed", skip_all)]
    async fn reseal_totp_seed(
        &self,
        identity: &IdentityId,
        sealed_was: &str,
        resealed: &str,
    ) -> StoreResult<bool> {
        let mut writer = self.writer().await?;
        let replaced: i64 = scripts::RESEAL_TOTP_SEED
            .key(self.keyspace.totp(identity))
            .arg(sealed_was)
            .arg(resealed)
            .invoke_async(&mut writer)
            .await
            .map_err(unavailable)?;
        // A re-seal lost in a failover would leave the seed under a secret
        // the operator may drop once the count says none is left, so it is
        // reported only once it is as durable as any change.
        if replaced == 1 {
            self.confirm_durable(&mut writer).await?;
        }
        Ok(replaced == 1)
    }

    #[tracing::instrument(level = "debug", name = "redis.record_totp_failure", skip_all)]
    async fn record_totp_failure(
        &self,
        identity: &IdentityId,
        now: UnixMillis,
        max_failures: u32,
        lockout: Duration,
    ) -> StoreResult<Option<UnixMillis>> {
        let locked_until: i64 = scripts::RECORD_TOTP_FAILURE
            .key(self.keyspace.totp(identity))
            .arg(now.0)
            .arg(max_failures)
            .arg(lockout.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok((locked_until > 0).then_some(UnixMillis(locked_until)))
    }

    #[tracing::instrument(level = "debug", name = "redis.create_dataset", skip_all)]
    async fn create_dataset(&self, dataset: &Dataset) -> StoreResult<()> {
        // The listing entry goes first, so an interrupted create leaves only an
        // entry that readers drop.
        let _: i64 = self
            .connection()
            .zadd(self.keyspace.datasets(), dataset.name.as_str(), 0)
            .await
            .map_err(unavailable)?;
        self.change(
            self.keyspace.dataset(&dataset.name),
            scripts::CREATE_DATASET
                .key(self.keyspace.dataset(&dataset.name))
                .arg(encode(dataset)?),
            None,
            |reply: String| changed(&reply, &dataset.name, "dataset"),
        )
        .await
    }

    #[tracing::instrument(level = "debug", name = "redis.get_dataset", skip_all)]
    async fn get_dataset(&self, name: &str) -> StoreResult<Option<Dataset>> {
        let raw: Option<String> = self
            .connection()
            .get(self.keyspace.dataset(name))
            .await
            .map_err(unavailable)?;
        raw.as_deref().map(decode).transpose()
    }

    #[tracing::instrument(level = "debug", name = "redis.list_datasets", skip_all)]
    async fn list_datasets(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Dataset>> {
        let mut found = Vec::with_capacity(limit);
        let mut cursor = after
            .map(|name| format!("({name}"))
            .unwrap_or_else(|| "-".to_owned());
        while found.len() < limit {
            let wanted = limit - found.len();
            let names: Vec<String> = self
                .connection()
                .zrangebylex_limit(self.keyspace.datasets(), &cursor, "+", 0, wanted as isize)
                .await
                .map_err(unavailable)?;
            let Some(last) = names.last() else { break };
            cursor = format!("({last}");
            let records = self
                .get_each(names.iter().map(|name| self.keyspace.dataset(name)))
                .await?;
            for (name, raw) in names.iter().zip(records) {
                match raw {
                    Some(raw) => found.push(decode(&raw)?),
                    None => {
                        let _: Result<i64, _> =
                            self.connection().zrem(self.keyspace.datasets(), name).await;
                    }
                }
            }
            if names.len() < wanted {
                break;
            }
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", name = "redis.begin_dataset_delete", skip_all)]
    async fn begin_dataset_delete(&self, name: &str) -> StoreResult<bool> {
        let marked: i64 = scripts::BEGIN_DATASET_DELETE
            .key(self.keyspace.dataset(name))
            .key(self.keyspace.dataset_delete_mark(name))
            .invoke_async(&mut self.writer().await?)
            .await
            .map_err(unavailable)?;
        Ok(marked == 1)
    }

    #[tracing::instrument(level = "debug", name = "redis.cancel_dataset_delete", skip_all)]
    async fn cancel_dataset_delete(&self, name: &str) -> StoreResult<()> {
        let _: i64 = self
            .writer()
            .await?
            .del(self.keyspace.dataset_delete_mark(name))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.delete_dataset", skip_all)]
    async fn delete_dataset(&self, name: &str) -> StoreResult<bool> {
        let existed = self
            .change(
                self.keyspace.dataset(name),
                scripts::DELETE_DATASET
                    .key(self.keyspace.dataset(name))
                    .key(self.keyspace.dataset_delete_mark(name)),
                None,
                |existed: i64| Ok(deleted(existed)),
            )
            .await;
        // The listing entry goes whether or not the wait confirmed the delete:
        // the record is gone either way.
        if !matches!(existed, Err(StoreError::Unavailable(_))) {
            let _: Result<i64, _> = self.connection().zrem(self.keyspace.datasets(), name).await;
        }
        existed
    }

    #[tracing::instrument(level = "debug", name = "redis.claim_import", skip_all)]
    async fn claim_import(&self, digest: &str, key: &KeyId) -> StoreResult<bool> {
        let mut writer = self.writer().await?;
        // The marker first: an index entry never exists without it. (Two
        // slots under Cluster, so two commands.)
        let () = writer
            .set(self.keyspace.imports_marker(), 1)
            .await
            .map_err(unavailable)?;
        let claimed: bool = writer
            .set_nx(self.keyspace.import(digest), key.as_str())
            .await
            .map_err(unavailable)?;
        Ok(claimed)
    }

    #[tracing::instrument(level = "debug", name = "redis.has_imports", skip_all)]
    async fn has_imports(&self) -> StoreResult<bool> {
        let (marked, checked): (bool, bool) = redis::pipe()
            .exists(self.keyspace.imports_marker())
            .exists(self.keyspace.imports_checked())
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        if marked {
            return Ok(true);
        }
        if checked {
            return Ok(false);
        }
        // A store written before the marker existed: its keys are walked
        // once for an imported one. An import meanwhile sets the marker,
        // which is read first next time.
        let found = self.any_imported_key().await?;
        let marker = if found {
            self.keyspace.imports_marker()
        } else {
            self.keyspace.imports_checked()
        };
        let () = self
            .writer()
            .await?
            .set(marker, 1)
            .await
            .map_err(unavailable)?;
        Ok(found)
    }

    #[tracing::instrument(level = "debug", name = "redis.find_imported", skip_all)]
    async fn find_imported(&self, digests: &[String]) -> StoreResult<Option<KeyId>> {
        // One GET per digest, sent at once (each is its own slot).
        let found = self
            .get_each(digests.iter().map(|digest| self.keyspace.import(digest)))
            .await?;
        Ok(found
            .into_iter()
            .flatten()
            .find_map(|id| KeyId::parse(&id).ok()))
    }

    #[tracing::instrument(level = "debug", name = "redis.release_import", skip_all)]
    async fn release_import(&self, digest: &str) -> StoreResult<()> {
        let _: i64 = self
            .writer()
            .await?
            .del(self.keyspace.import(digest))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.append_audit", skip_all)]
    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        self.append_encoded_audit(&encode(event)?).await?;
        crate::metrics::metrics().audit_events.inc();
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.list_audit", skip_all)]
    async fn list_audit(&self, before: Option<&str>, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        // Entries strictly older than `before` (exclusive ranges: Redis 6.2+).
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        self.audit_range("XREVRANGE", &end, "-", limit).await
    }

    #[tracing::instrument(level = "debug", name = "redis.trim_audit", skip_all)]
    async fn trim_audit(&self, cutoff: UnixMillis) -> StoreResult<()> {
        // Exact trimming: it runs once per flush interval, not per event.
        let _: i64 = redis::cmd("XTRIM")
            .arg(self.keyspace.audit())
            .arg("MINID")
            .arg(cutoff.0)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.read_audit_after", skip_all)]
    async fn read_audit_after(&self, after: &str, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.audit_range("XRANGE", &format!("({after}"), "+", limit)
            .await
    }

    #[tracing::instrument(level = "debug", name = "redis.audit_bounds", skip_all)]
    async fn audit_bounds(&self) -> StoreResult<Option<(String, String)>> {
        let stream = self.keyspace.audit();
        let (first, last): (
            redis::streams::StreamRangeReply,
            redis::streams::StreamRangeReply,
        ) = redis::pipe()
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(first
            .ids
            .into_iter()
            .next()
            .zip(last.ids.into_iter().next())
            .map(|(first, last)| (first.id, last.id)))
    }

    #[tracing::instrument(level = "debug", name = "redis.last_audit_id", skip_all)]
    async fn last_audit_id(&self) -> StoreResult<Option<String>> {
        let info: Result<std::collections::HashMap<String, redis::Value>, RedisError> =
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(self.keyspace.audit())
                .query_async(&mut self.connection())
                .await;
        let info = match info {
            Ok(info) => info,
            // Redis answered: there is no stream, so nothing was appended.
            Err(error)
                if error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(unavailable(error)),
        };
        let last: Option<String> = info
            .get("last-generated-id")
            .map(<String as redis::FromRedisValue>::from_redis_value_ref)
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("XINFO STREAM: {error}")))?;
        Ok(last.filter(|id| id != "0-0"))
    }

    #[tracing::instrument(level = "debug", name = "redis.take_deliveries", skip_all)]
    async fn take_deliveries(
        &self,
        group: &str,
        consumer: &str,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>> {
        let stream = self.keyspace.audit();
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(limit)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .to_owned();
        let reply: Option<redis::streams::StreamReadReply> =
            match read.query_async(&mut self.connection()).await {
                Ok(reply) => reply,
                // The group is made on first use, and again after a Redis
                // that lost its data; it starts with the events to come.
                Err(error) if error.code() == Some("NOGROUP") => {
                    let created: Result<(), RedisError> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&stream)
                        .arg(group)
                        .arg("$")
                        .arg("MKSTREAM")
                        .query_async(&mut self.connection())
                        .await;
                    match created {
                        Err(error) if error.code() != Some("BUSYGROUP") => {
                            return Err(unavailable(error));
                        }
                        _ => read
                            .query_async(&mut self.connection())
                            .await
                            .map_err(unavailable)?,
                    }
                }
                Err(error) => return Err(unavailable(error)),
            };
        let entries = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .collect();
        audit_events_of(entries)
    }

    #[tracing::instrument(level = "debug", name = "redis.claim_deliveries", skip_all)]
    async fn claim_deliveries(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        limit: usize,
    ) -> StoreResult<Vec<AuditEvent>> {
        let reply: Result<redis::streams::StreamAutoClaimReply, RedisError> =
            redis::cmd("XAUTOCLAIM")
                .arg(self.keyspace.audit())
                .arg(group)
                .arg(consumer)
                .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg("0-0")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut self.connection())
                .await;
        match reply {
            Ok(reply) => audit_events_of(reply.claimed),
            // No group yet: nothing was ever taken, so nothing is pending.
            Err(error) if error.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn touch_deliveries(&self, group: &str, consumer: &str, ids: &[&str]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(self.keyspace.audit())
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ack_delivery(&self, group: &str, id: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("XACK")
            .arg(self.keyspace.audit())
            .arg(group)
            .arg(id)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.key_ends_between", skip_all)]
    async fn key_ends_between(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<KeyEnd>> {
        self.read_key_ends(from, until, limit).await
    }

    #[tracing::instrument(level = "debug", name = "redis.record_key_end", skip_all)]
    async fn record_key_end(&self, end: &KeyEnd, event: &AuditEvent) -> StoreResult<bool> {
        self.claim_key_end(end, event).await
    }

    #[tracing::instrument(level = "debug", name = "redis.record_expiry_warning", skip_all)]
    async fn record_expiry_warning(
        &self,
        end: &KeyEnd,
        lead: Duration,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        self.claim_expiry_warning(end, lead, event).await
    }

    #[tracing::instrument(level = "debug", name = "redis.claim_expiry_sweep", skip_all)]
    async fn claim_expiry_sweep(&self, holder: &str, interval: Duration) -> StoreResult<bool> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.keyspace.expiry_sweep())
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(
                u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .query_async(&mut self.writer().await?)
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some())
    }

    #[tracing::instrument(level = "debug", name = "redis.index_key_ends_once", skip_all)]
    async fn index_key_ends_once(&self) -> StoreResult<usize> {
        self.backfill_key_ends().await
    }

    async fn record_key_use(&self, uses: &[(KeyId, UnixMillis)]) -> StoreResult<()> {
        for (id, when) in uses {
            let identity = id.identity_id();
            let _: i64 = scripts::RECORD_KEY_USE
                .key(self.keyspace.identity(&identity))
                .key(self.keyspace.last_use(&identity))
                .key(self.keyspace.key(id))
                .arg(id.as_str())
                .arg(when.0)
                .invoke_async(&mut self.connection())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
    #[tracing::instrument(level = "debug", name = "redis.create_session", skip_all)]
    async fn create_session(&self, handle: &str, session: &ConsoleSession) -> StoreResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keyspace.console_session(handle))
            .arg(encode(session)?)
            .arg("PXAT")
            .arg(session.expire_time.0)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.get_session", skip_all)]
    async fn get_session(&self, handle: &str) -> StoreResult<Option<ConsoleSession>> {
        let raw: Option<String> = self
            .connection()
            .get(self.keyspace.console_session(handle))
            .await
            .map_err(unavailable)?;
        raw.as_deref().map(decode).transpose()
    }

    #[tracing::instrument(level = "debug", name = "redis.delete_session", skip_all)]
    async fn delete_session(&self, handle: &str) -> StoreResult<bool> {
        let deleted: i64 = self
            .connection()
            .del(self.keyspace.console_session(handle))
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }
}
