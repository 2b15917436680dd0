//! The one path every change takes: the audit event the service armed, the
//! change's script on a writer connection, the script's outcome, the event
//! committed, and the wait until the change is as durable as configured
//! (`--durability`), on the connection that made it.
//!
//! WAIT and WAITAOF block the connection they run on until replicas or the
//! AOF confirm, and they confirm what *that connection* wrote. Under a
//! durability mode every change therefore takes a connection of its own from
//! a pool of writers (deadpool-redis), runs its script and its wait there,
//! and gives the connection back: concurrent changes wait side by side
//! instead of queueing behind each other's WAIT, and Verify's reads, on the
//! store's shared connection, never wait behind any of them. Without a
//! durability mode nothing blocks, and changes pipeline on the shared
//! connection.

use super::sentinel::SentinelConnection;
use super::{RedisStore, encode, journal, unavailable};
pub use crate::domain::Durability;
use crate::domain::IdentityId;
use crate::store::{StoreError, StoreResult};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Value};
use std::time::Duration;

/// The arguments every audited script takes last: the deadline index and
/// whether to write it, the stream, the armed event (empty when none) and
/// the stream's length bound. Under Redis Cluster the stream and the index
/// live in other slots than the change, so the script gets keys of its own
/// slot that it never writes, the index is not kept, and the event waits in
/// `deferred` until the change has committed.
struct AuditArgs {
    key_ends: String,
    index_key_ends: bool,
    stream: String,
    event: String,
    max_events: usize,
    deferred: Option<String>,
    key_end_identity: Option<IdentityId>,
}

impl AuditArgs {
    /// Whether this change carries an event, in its script or after it.
    fn carries_event(&self) -> bool {
        !self.event.is_empty() || self.deferred.is_some()
    }
}

/// Passes [`AuditArgs`] to a script invocation.
trait WithAudit {
    fn with_audit(&mut self, audit: &AuditArgs) -> &mut Self;
}

impl WithAudit for redis::ScriptInvocation<'_> {
    fn with_audit(&mut self, audit: &AuditArgs) -> &mut Self {
        self.key(&audit.key_ends)
            .key(&audit.stream)
            .arg(if audit.index_key_ends { "1" } else { "0" })
            .arg(&audit.event)
            .arg(audit.max_events)
    }
}

/// Where changes get their connection.
pub(super) enum Writers<C> {
    /// No durability wait: changes pipeline on the store's shared connection.
    Shared(C),
    /// A standalone Redis under a durability mode: deadpool-redis's pool of
    /// multiplexed connections, each checked with a PING as it is taken (a
    /// connection that lost its server is replaced, not handed out).
    Standalone(deadpool_redis::Pool),
    /// A Sentinel-managed primary under a durability mode: a pool of
    /// siblings of the store's connection, each following the primary
    /// across failovers (see [`FollowingWriters`]).
    Sentinel(deadpool::managed::Pool<FollowingWriters>),
}

impl<C: Clone> Writers<C> {
    /// A connection for one change, held until the change is confirmed.
    async fn take(&self) -> StoreResult<Writer<C>> {
        match self {
            Self::Shared(connection) => Ok(Writer::Shared(connection.clone())),
            Self::Standalone(pool) => pool
                .get()
                .await
                .map(Writer::Standalone)
                .map_err(writer_unavailable),
            Self::Sentinel(pool) => pool
                .get()
                .await
                .map(Writer::Sentinel)
                .map_err(writer_unavailable),
        }
    }
}

/// A pool that could not hand out a connection in time (all busy, or Redis
/// unreachable): the change has not run.
fn writer_unavailable(error: deadpool::managed::PoolError<RedisError>) -> StoreError {
    crate::metrics::metrics().redis_errors.inc();
    StoreError::Unavailable(format!("no writer connection: {error}"))
}

/// The builder of a standalone Redis's writer pool: `size` connections,
/// connected and answering within the store's bounds, and a change waits at
/// most `response_timeout` for one to come free.
pub(super) fn standalone_writers(
    url: &str,
    size: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> StoreResult<deadpool_redis::Pool> {
    let info = super::connect::connection_info(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let manager = deadpool_redis::Manager::new_with_config(info, config)
        .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .wait_timeout(Some(response_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(response_timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot build the writer pool: {e}")))
}

/// The manager of a Sentinel writer pool. deadpool-redis's own Sentinel
/// manager is not used: its connections stay with the server they opened on
/// (a demoted primary still answers its PING, then refuses every write with
/// READONLY), while a [`SentinelConnection`] sibling switches to the primary
/// Sentinel names, together with the store's other connections.
pub(super) struct FollowingWriters {
    primary: SentinelConnection,
}

impl deadpool::managed::Manager for FollowingWriters {
    type Type = SentinelConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<SentinelConnection, RedisError> {
        self.primary.sibling().await
    }

    async fn recycle(
        &self,
        _: &mut SentinelConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        // It reconnects and follows failovers by itself.
        Ok(())
    }
}

/// The builder of a Sentinel writer pool of `size` siblings of `primary`.
pub(super) fn sentinel_writers(
    primary: &SentinelConnection,
    size: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> StoreResult<deadpool::managed::Pool<FollowingWriters>> {
    deadpool::managed::Pool::builder(FollowingWriters {
        primary: primary.clone(),
    })
    .max_size(size)
    .runtime(deadpool::Runtime::Tokio1)
    .wait_timeout(Some(response_timeout))
    .create_timeout(Some(connect_timeout))
    .build()
    .map_err(|e| StoreError::Unavailable(format!("cannot build the writer pool: {e}")))
}

/// The connection one change runs on, given back to its pool when dropped.
pub(super) enum Writer<C> {
    Shared(C),
    Standalone(deadpool_redis::Connection),
    Sentinel(deadpool::managed::Object<FollowingWriters>),
}

impl<C: ConnectionLike> Writer<C> {
    fn connection(&mut self) -> &mut (dyn ConnectionLike + Send)
    where
        C: Send,
    {
        match self {
            Self::Shared(connection) => connection,
            Self::Standalone(connection) => connection,
            Self::Sentinel(connection) => &mut **connection,
        }
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for Writer<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.connection().req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.connection()
            .req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Shared(connection) => connection.get_db(),
            Self::Standalone(connection) => connection.get_db(),
            Self::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// What a change's script did, as its reply says.
pub(super) enum Outcome<T> {
    /// It changed records: the event commits and the change waits until it
    /// is durable.
    Changed(T),
    /// It found nothing to change (a delete of what is gone): no event, and
    /// still the durability wait a delete always had.
    Unchanged(T),
    /// It refused with an answer rather than an error (a replayed TOTP
    /// step): nothing to commit and nothing to wait for.
    Declined(T),
}

/// One change under way: its armed event and the connection it runs on.
/// Dropped without [`Change::commit`], it commits nothing: the event stays
/// armed for a later write of the same operation, or is never written.
pub(super) struct Change<'s, C> {
    store: &'s RedisStore<C>,
    audit: AuditArgs,
    writer: Writer<C>,
}

impl<C> Change<'_, C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs the change's script, with the audit arguments last, on this
    /// change's connection. `touches` loses its cached records whatever the
    /// reply (this replica changed them, or may have).
    pub(super) async fn run<R: FromRedisValue>(
        &mut self,
        invocation: &mut redis::ScriptInvocation<'_>,
        touches: Option<&IdentityId>,
    ) -> redis::RedisResult<R> {
        let reply = invocation
            .with_audit(&self.audit)
            .invoke_async(&mut self.writer)
            .await;
        if let Some(identity) = touches {
            self.store.forget_cached(identity);
        }
        reply
    }

    /// This change's connection, for a further write the durability wait
    /// must cover.
    pub(super) fn writer(&mut self) -> &mut Writer<C> {
        &mut self.writer
    }

    /// The change committed: its event is written (in the script, or after
    /// it under Cluster), then the change waits until it is durable.
    pub(super) async fn commit(mut self) -> StoreResult<()> {
        self.commit_event().await;
        self.confirm_durable().await
    }

    /// The script committed the change: its event counts as written (under
    /// Cluster it is appended now). A change that goes on writing calls
    /// [`Self::confirm_durable`] once it is done.
    pub(super) async fn commit_event(&mut self) {
        self.store.commit_audit(&self.audit).await;
    }

    /// Waits until everything this change wrote on its connection is as
    /// durable as configured, then gives the connection back.
    pub(super) async fn confirm_durable(mut self) -> StoreResult<()> {
        self.store.confirm_durable(&mut self.writer).await
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Starts a change whose keys share `slot_key`'s slot: takes the event
    /// the audit scope armed for it, if any, and a writer connection.
    pub(super) async fn begin_change(&self, slot_key: String) -> StoreResult<Change<'_, C>> {
        let audit = self.armed_audit(slot_key)?;
        let writer = self.writers.take().await?;
        Ok(Change {
            store: self,
            audit,
            writer,
        })
    }

    /// Every change whose reply alone decides its outcome: begins it in
    /// `slot_key`'s slot, runs `invocation`, reads the reply with `outcome`,
    /// commits the event and waits for durability as the outcome says.
    pub(super) async fn change<R, T>(
        &self,
        slot_key: String,
        invocation: &mut redis::ScriptInvocation<'_>,
        touches: Option<&IdentityId>,
        outcome: impl FnOnce(R) -> StoreResult<Outcome<T>>,
    ) -> StoreResult<T>
    where
        R: FromRedisValue,
    {
        let mut change = self.begin_change(slot_key).await?;
        let reply: R = change.run(invocation, touches).await.map_err(unavailable)?;
        match outcome(reply)? {
            Outcome::Changed(value) => {
                change.commit().await?;
                Ok(value)
            }
            Outcome::Unchanged(value) => {
                change.confirm_durable().await?;
                Ok(value)
            }
            Outcome::Declined(value) => Ok(value),
        }
    }

    /// A connection for a write that is not an audited change (claims,
    /// marks, the deadline index): one of the writers, so it never waits
    /// behind Verify's reads nor they behind it.
    pub(super) async fn writer(&self) -> StoreResult<Writer<C>> {
        self.writers.take().await
    }

    /// The audit arguments for the change about to run, whose keys share
    /// `slot_key`'s slot: the event the audit scope armed for it, if any.
    fn armed_audit(&self, slot_key: String) -> StoreResult<AuditArgs> {
        let event = journal::armed_event()
            .map(|event| encode(&event))
            .transpose()?;
        Ok(if self.cluster {
            let identity = self.keyspace.identity_of_slot_key(&slot_key);
            AuditArgs {
                key_ends: identity.as_ref().map_or_else(
                    || format!("{slot_key}:key-ends-unused"),
                    |identity| self.key_ends_of(identity),
                ),
                index_key_ends: identity.is_some(),
                stream: format!("{slot_key}:audit-deferred"),
                event: String::new(),
                max_events: self.audit_max_events,
                deferred: event,
                key_end_identity: identity,
            }
        } else {
            AuditArgs {
                key_ends: self.keyspace.key_ends(),
                index_key_ends: true,
                stream: self.keyspace.audit(),
                event: event.unwrap_or_default(),
                max_events: self.audit_max_events,
                deferred: None,
                key_end_identity: None,
            }
        })
    }

    /// The change succeeded: its script appended the event, or, under
    /// Cluster, it is appended now, right after the change.
    async fn commit_audit(&self, audit: &AuditArgs) {
        if let Some(identity) = &audit.key_end_identity {
            self.list_key_end_identity(identity).await;
        }
        if !audit.carries_event() {
            return;
        }
        if let Some(event) = &audit.deferred
            && let Err(error) = self.append_encoded_audit(event).await
        {
            // The change stands; the gap shows in the log and the metrics.
            tracing::error!(%error, "a change committed but its audit event could not be written");
        }
        journal::committed();
    }

    /// Refuses a durability mode this Redis cannot provide, before serving;
    /// the first writer connection opens here, so an unreachable writer
    /// shows at start rather than at the first change.
    pub(super) async fn check_durability_support(&self) -> StoreResult<()> {
        let mut writer = self.writer().await?;
        if let Durability::Aof { .. } = self.durability {
            let info: Vec<redis::Value> = redis::cmd("COMMAND")
                .arg("INFO")
                .arg("WAITAOF")
                .query_async(&mut writer)
                .await
                .map_err(unavailable)?;
            if info
                .first()
                .is_none_or(|entry| matches!(entry, redis::Value::Nil))
            {
                return Err(StoreError::Unavailable(
                    "--durability aof needs WAITAOF, which Redis 7.2 and later provide".into(),
                ));
            }
        }
        Ok(())
    }

    /// Waits until the changes made on `writer` are as durable as
    /// configured; `NotDurable` when that is not confirmed in time (the
    /// change itself has been applied).
    pub(super) async fn confirm_durable(&self, writer: &mut Writer<C>) -> StoreResult<()> {
        match self.durability {
            Durability::None => Ok(()),
            Durability::Replica { replicas, timeout } => {
                let acknowledged: i64 = redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(timeout.as_millis() as u64)
                    .query_async(writer)
                    .await
                    .map_err(unavailable)?;
                if acknowledged < i64::from(replicas) {
                    return Err(StoreError::NotDurable(format!(
                        "{acknowledged} of {replicas} replicas acknowledged the change in time"
                    )));
                }
                Ok(())
            }
            Durability::Aof { replicas, timeout } => {
                let (local, remote): (i64, i64) = redis::cmd("WAITAOF")
                    .arg(1)
                    .arg(replicas)
                    .arg(timeout.as_millis() as u64)
                    .query_async(writer)
                    .await
                    .map_err(|e| StoreError::NotDurable(format!("WAITAOF failed: {e}")))?;
                if local < 1 || remote < i64::from(replicas) {
                    return Err(StoreError::NotDurable(format!(
                        "the AOF fsync was confirmed locally {local} time(s) and by {remote} of {replicas} replicas"
                    )));
                }
                Ok(())
            }
        }
    }
}
