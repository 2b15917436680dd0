//! Verify's record cache: the key and identity records Verify reads, kept in
//! memory while Redis tracks them for this replica (server-assisted
//! client-side caching, `CLIENT TRACKING` in its default mode).
//!
//! One RESP3 connection, the *tracking link*, does three things in order:
//! it carries every read whose reply may be cached (so Redis tracks exactly
//! those keys for this connection), it receives Redis's `invalidate` pushes
//! for them, and it carries the fence: a `PING` every quarter of the bound.
//! Redis writes an invalidation into the link before it answers the write
//! that caused it, and replies on one connection arrive in order, so a PING
//! that Redis answered after a change proves the change's invalidation was
//! read. redis-rs hands pushes to [`RecordCache::on_push`] synchronously from
//! the link's reader, before the replies that follow them, so "read" means
//! "applied to the cache".
//!
//! Under Redis Cluster there is one link per master, each carrying the reads
//! of the hash slots that master serves, and fenced on its own: a shard
//! that stalls stops only its own records from being served. A link lost,
//! or a read answered MOVED or ASK (the slots moved), empties the cache and
//! finds the masters again.
//!
//! The bound: an entry is served only while the last completed fence of its
//! shard's link was *sent* less than `max_staleness` ago. A change acknowledged at T is
//! therefore gone from the cache for every Verify starting after
//! T + `max_staleness`, even if the link stalls silently.
//!
//! Races between a read and an invalidation are settled by a counter of
//! removals: a reply is cached only if nothing was removed (by a push, a
//! local change or a link reset) between sending the read and inserting its
//! reply. Removals bump the counter under the write half of a lock that
//! inserts take for reading, so no removal can fall between the check and the
//! insert.

use super::cached_key::CachedKey;
use super::keys::{Keyspace, VerifyRecordName};
use crate::domain::{ApiKey, Identity, IdentityId, KeyId, Subject, UnixMillis};
use crate::metrics::metrics;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisResult, Value};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// How Verify's record cache is set up.
#[derive(Debug, Clone, Copy)]
pub struct VerifyCacheOptions {
    /// Serve from the cache only while the last completed fence is younger
    /// than this.
    pub max_staleness: Duration,
    /// Records kept at most (a key and its identity are two).
    pub max_records: u64,
}

/// What one store's record cache has done, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyCacheStats {
    /// Records held now.
    pub entries: u64,
    /// Verify reads answered from the cache.
    pub hits: u64,
    /// Times the tracking link was lost and the cache emptied.
    pub link_resets: u64,
}

/// One cached record. A key keeps only what Verify decides on (see
/// `cached_key.rs`); an identity is kept whole, once for all its keys.
#[derive(Clone)]
enum CachedRecord {
    Key(CachedKey),
    Identity(Arc<Identity>),
}

/// A server the cache keeps a tracking link to, and the hash slots whose
/// records it reads there.
pub(super) struct Shard {
    /// Inclusive ranges of hash slots; every slot but under Cluster.
    pub(super) slots: Vec<(u16, u16)>,
    pub(super) client: redis::Client,
}

impl Shard {
    /// The one server holding every record: a standalone Redis, or the
    /// primary Sentinel names.
    pub(super) fn whole(client: redis::Client) -> Vec<Shard> {
        vec![Shard {
            slots: vec![(0, SLOTS - 1)],
            client,
        }]
    }
}

impl Shard {
    /// The masters of the Cluster `connection` reaches and the slots each
    /// serves (`CLUSTER SLOTS`), to be reached as `seed` is (its user,
    /// password and TLS settings, at each master's address).
    pub(super) async fn of_cluster(
        connection: &mut impl redis::aio::ConnectionLike,
        seed: &redis::ConnectionInfo,
    ) -> RedisResult<Vec<Shard>> {
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(connection)
            .await?;
        let mut masters: Vec<Master> = Vec::new();
        for range in ranges {
            let Some((first, last, host, port)) = slot_range(&range) else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "an unexpected CLUSTER SLOTS entry",
                )));
            };
            let host = if host.is_empty() {
                // A node that does not know its own address; reach it as
                // the seed was reached.
                match seed.addr() {
                    redis::ConnectionAddr::Tcp(host, _)
                    | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                    _ => host,
                }
            } else {
                host
            };
            match masters
                .iter_mut()
                .find(|master| master.host == host && master.port == port)
            {
                Some(master) => master.slots.push((first, last)),
                None => masters.push(Master {
                    host,
                    port,
                    slots: vec![(first, last)],
                }),
            }
        }
        masters
            .into_iter()
            .map(|Master { host, port, slots }| {
                let addr = match seed.addr() {
                    redis::ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => redis::ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => redis::ConnectionAddr::Tcp(host, port),
                };
                Ok(Shard {
                    slots,
                    client: redis::Client::open(seed.clone().set_addr(addr))?,
                })
            })
            .collect()
    }
}

/// A Cluster master and the slot ranges it serves.
struct Master {
    host: String,
    port: u16,
    slots: Vec<(u16, u16)>,
}

/// One `CLUSTER SLOTS` entry: its first and last slot and its master's
/// host and port.
fn slot_range(entry: &Value) -> Option<(u16, u16, String, u16)> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let slot = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok().filter(|slot| *slot < SLOTS),
        _ => None,
    };
    let (first, last) = (slot(fields.first()?)?, slot(fields.get(1)?)?);
    let Value::Array(master) = fields.get(2)? else {
        return None;
    };
    let host = match master.first()? {
        Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let port = match master.get(1)? {
        Value::Int(port) => u16::try_from(*port).ok()?,
        _ => return None,
    };
    Some((first, last, host, port))
}

/// Finds the servers the cache tracks: the standalone server, the primary
/// Sentinel names now, or the masters of a Cluster and their slots.
pub(super) type LinkOpener = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, RedisResult<Vec<Shard>>> + Send + Sync,
>;

/// Redis Cluster's hash slots.
const SLOTS: u16 = 16384;
/// The most shards (Cluster masters) the cache tracks; more, and it stays
/// off until the Cluster shrinks (see `install`).
const MAX_SHARDS: usize = 256;

/// The hash slot of `identity`'s records, whose hash tag is the identity's
/// id (CRC16/XMODEM, as Redis Cluster computes it).
fn slot_of(identity: &IdentityId) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(identity.as_str().as_bytes()) % SLOTS
}

/// Links just opened by `open_links`, for `install`.
struct OpenedLinks {
    generation: u64,
    shards: Vec<Shard>,
    connections: Vec<MultiplexedConnection>,
}

/// The current tracking links, one per shard; none while they are down.
struct Links {
    /// Bumped on every reset, so a fence or a read of an older link never
    /// counts for the current ones.
    generation: u64,
    connections: Vec<MultiplexedConnection>,
}

/// See the module documentation.
pub(super) struct RecordCache {
    records: quick_cache::sync::Cache<VerifyRecordName, CachedRecord>,
    /// Reads the record names in Redis's invalidations.
    keyspace: Keyspace,
    /// Removals so far; see the module documentation for why inserts check it.
    removals: RwLock<u64>,
    links: Mutex<Links>,
    /// Which shard serves each hash slot, when there is more than one.
    shard_of_slot: Box<[AtomicU8]>,
    sharded: AtomicBool,
    /// Per shard, when its last completed fence was sent, in nanoseconds
    /// since `epoch` (0: no fence completed on the current link).
    fenced_at: Box<[AtomicU64]>,
    epoch: Instant,
    max_staleness: Duration,
    response_timeout: Duration,
    link_lost: tokio::sync::Notify,
    hits: AtomicU64,
    link_resets: AtomicU64,
}

impl RecordCache {
    /// Starts the tracking link (and keeps it up) and the fence. Returns once
    /// the first link is up, or with its error.
    pub(super) async fn start(
        options: VerifyCacheOptions,
        response_timeout: Duration,
        opener: LinkOpener,
        keyspace: Keyspace,
    ) -> RedisResult<Arc<Self>> {
        let cache = Arc::new(Self {
            records: quick_cache::sync::Cache::new(options.max_records.max(2) as usize),
            keyspace,
            removals: RwLock::new(0),
            links: Mutex::new(Links {
                generation: 0,
                connections: Vec::new(),
            }),
            shard_of_slot: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
            sharded: AtomicBool::new(false),
            fenced_at: (0..MAX_SHARDS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            max_staleness: options.max_staleness,
            response_timeout,
            link_lost: tokio::sync::Notify::new(),
            hits: AtomicU64::new(0),
            link_resets: AtomicU64::new(0),
        });
        let first = cache.open_links(&opener).await?;
        // A link lost this early is reopened by `keep_link_up` like any other.
        cache.install(first);
        tokio::spawn(keep_link_up(Arc::downgrade(&cache), opener));
        tokio::spawn(fence(Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// Finds the shards and opens a RESP3 connection with tracking on to
    /// each, whose pushes this cache applies. Returns the generation they
    /// are meant for, the shards and their connections.
    async fn open_links(self: &Arc<Self>, opener: &LinkOpener) -> RedisResult<OpenedLinks> {
        let shards = opener().await?;
        // The generation is taken now, so a disconnection while the links
        // are still being set up resets them like any other (see `install`).
        let generation = {
            let mut links = self.lock_link();
            links.generation += 1;
            links.generation
        };
        let mut connections = Vec::with_capacity(shards.len());
        for (index, shard) in shards.iter().enumerate() {
            connections.push(self.open_link(&shard.client, generation, index).await?);
        }
        Ok(OpenedLinks {
            generation,
            shards,
            connections,
        })
    }

    async fn open_link(
        self: &Arc<Self>,
        client: &redis::Client,
        generation: u64,
        shard: usize,
    ) -> RedisResult<MultiplexedConnection> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let weak = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.response_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(move |push: PushInfo| -> Result<(), ()> {
                if let Some(cache) = weak.upgrade() {
                    cache.on_push(generation, push);
                }
                Ok(())
            });
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Default mode: Redis remembers the keys this connection reads and
        // sends one invalidation per key when it next changes (not BCAST,
        // which would push every change under the prefix to every replica).
        let _: () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async(&mut connection)
            .await?;
        tracing::debug!(shard, "tracking link open");
        Ok(connection)
    }

    /// Makes freshly opened links current, unless they were lost while being
    /// set up (their generation is gone then). The cache was emptied when
    /// the previous links were lost; nothing is served until each new link's
    /// first fence.
    fn install(&self, opened: OpenedLinks) -> bool {
        let mut links = self.lock_link();
        if links.generation != opened.generation || opened.shards.len() > MAX_SHARDS {
            if opened.shards.len() > MAX_SHARDS {
                tracing::warn!(
                    shards = opened.shards.len(),
                    "too many Redis Cluster masters to track; Verify reads uncached"
                );
            }
            return false;
        }
        for (index, shard) in opened.shards.iter().enumerate() {
            for &(first, last) in &shard.slots {
                for slot in first..=last.min(SLOTS - 1) {
                    // MAX_SHARDS fits in a byte.
                    self.shard_of_slot[usize::from(slot)].store(index as u8, Ordering::Release);
                }
            }
        }
        self.sharded
            .store(opened.shards.len() > 1, Ordering::Release);
        links.connections = opened.connections;
        true
    }

    /// The shard holding `identity`'s records.
    fn shard_of(&self, identity: &IdentityId) -> usize {
        if self.sharded.load(Ordering::Acquire) {
            usize::from(self.shard_of_slot[usize::from(slot_of(identity))].load(Ordering::Acquire))
        } else {
            0
        }
    }

    fn lock_link(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The link to read `identity`'s records through, its generation and
    /// the removal count before the read; None while no link is up for its
    /// shard, or while that link has answered no fence for the response
    /// timeout (a link that stalled silently: the read then goes through the
    /// ordinary connection rather than wait on it).
    pub(super) fn begin_read(
        &self,
        identity: &IdentityId,
    ) -> Option<(MultiplexedConnection, u64, u64)> {
        let shard = self.shard_of(identity);
        if !self.answering(shard) {
            return None;
        }
        let (connection, generation) = {
            let links = self.lock_link();
            let connection = links.connections.get(shard)?.clone();
            (connection, links.generation)
        };
        Some((connection, generation, self.removal_count()))
    }

    /// Whether `shard`'s link answered a fence within the response timeout.
    fn answering(&self, shard: usize) -> bool {
        self.fenced_within(shard, self.response_timeout.max(self.max_staleness))
    }

    /// A read through the links of `generation` was answered MOVED or ASK:
    /// the Cluster's slots moved, so the links are rebuilt on the new map.
    pub(super) fn slots_moved(&self, generation: u64) {
        self.reset(generation);
    }

    /// A read or a fence on a link of `generation` failed (an error, or no
    /// answer within the response timeout): the link may have stalled
    /// silently. A single Redis's link is dropped and reopened. Under
    /// Cluster the links stay, so the other masters' records keep being
    /// served: reads of the failing shard bypass its link until it answers
    /// a fence again (`begin_read`), and a lost link resets them all.
    pub(super) fn link_failed(&self, generation: u64) {
        let single = self.lock_link().connections.len() == 1;
        if single {
            self.reset(generation);
        }
    }

    fn removal_count(&self) -> u64 {
        *self.removals.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether entries of `shard` may be served now: its link is up and its
    /// last fence completed within the bound.
    fn fresh(&self, shard: usize) -> bool {
        self.fenced_within(shard, self.max_staleness)
    }

    /// Whether `shard`'s link is up and its last fence completed less than
    /// `limit` ago.
    fn fenced_within(&self, shard: usize, limit: Duration) -> bool {
        let Some(fenced_at) = self.fenced_at.get(shard) else {
            return false;
        };
        let fenced_at = fenced_at.load(Ordering::Acquire);
        fenced_at != 0 && self.nanos_now().saturating_sub(fenced_at) < limit.as_nanos() as u64
    }

    fn nanos_now(&self) -> u64 {
        // Never 0, which means "no fence".
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// The key and its identity, if both are cached and the fence is fresh.
    /// The key is the cached form: see `CachedKey::to_key`.
    pub(super) fn lookup(&self, id: &KeyId) -> Option<Subject> {
        let identity_id = id.identity_id();
        let found = self.fresh(self.shard_of(&identity_id)).then(|| {
            match (
                self.records.get(&VerifyRecordName::key(id)),
                self.records.get(&VerifyRecordName::identity(&identity_id)),
            ) {
                (Some(CachedRecord::Key(key)), Some(CachedRecord::Identity(identity))) => {
                    let key = key.to_key(id, &identity_id);
                    // Redis deletes a record at its deadline (and then pushes
                    // an invalidation) only when its expiry cycle gets to it:
                    // the deadline is checked here on every hit, as the store
                    // contract promises.
                    key.record_deadline(identity.expire_time)
                        .is_none_or(|deadline| deadline > UnixMillis::now())
                        .then(|| Box::new((key, Identity::clone(&identity))))
                }
                _ => None,
            }
        });
        match found.flatten() {
            Some(records) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                metrics().record_cache_hits.inc();
                Some(records)
            }
            None => {
                metrics().record_cache_misses.inc();
                None
            }
        }
    }

    /// Caches what a read through the link returned, unless anything was
    /// removed since the read was sent (`removals_before`). A key whose
    /// record names another identity is not cached (Verify refuses it).
    pub(super) fn insert(&self, removals_before: u64, key: &ApiKey, identity: &Identity) {
        if key.identity_id != identity.id {
            return;
        }
        let removals = self.removals.read().unwrap_or_else(|p| p.into_inner());
        if *removals != removals_before {
            return;
        }
        self.records.insert(
            VerifyRecordName::key(&key.id),
            CachedRecord::Key(CachedKey::of(key)),
        );
        // One entry for all the identity's keys.
        self.records.insert(
            VerifyRecordName::identity(&identity.id),
            CachedRecord::Identity(Arc::new(identity.clone())),
        );
    }

    /// Drops `identity`'s record: this replica changed it or one of its
    /// keys, and does not wait for the push. A hit needs the identity's
    /// record, so this sends every key of the identity back to Redis.
    pub(super) fn forget(&self, identity: &IdentityId) {
        let mut removals = self.removals.write().unwrap_or_else(|p| p.into_inner());
        *removals += 1;
        self.records.remove(&VerifyRecordName::identity(identity));
    }

    /// Applies a push from the link of `generation`.
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let mut removals = self.removals.write().unwrap_or_else(|p| p.into_inner());
                *removals += 1;
                match push.data.first() {
                    Some(Value::Array(names)) => {
                        for name in names {
                            let record = match name {
                                Value::BulkString(name) => self.keyspace.verify_record_name(name),
                                _ => None,
                            };
                            match record {
                                Some(record) => {
                                    self.records.remove(&record);
                                }
                                // The link reads only Verify's records; a name
                                // that is not one of them empties the cache
                                // rather than be missed.
                                None => self.records.clear(),
                            }
                            metrics().record_cache_invalidations.inc();
                        }
                    }
                    // Redis sends a null instead of names after FLUSHALL and
                    // FLUSHDB; anything else unexpected is treated the same.
                    _ => {
                        self.records.clear();
                        metrics().record_cache_invalidations.inc();
                    }
                }
            }
            PushKind::Disconnection => self.reset(generation),
            _ => {}
        }
    }

    /// A link of `generation` is gone: whatever it tracked may change
    /// unseen from now on, so the cache is emptied and nothing is served
    /// until new links complete a fence.
    fn reset(&self, generation: u64) {
        {
            let mut links = self.lock_link();
            if links.generation != generation {
                return;
            }
            links.generation += 1;
            links.connections.clear();
            let mut removals = self.removals.write().unwrap_or_else(|p| p.into_inner());
            *removals += 1;
            for fenced_at in &self.fenced_at {
                fenced_at.store(0, Ordering::Release);
            }
            self.records.clear();
        }
        self.link_resets.fetch_add(1, Ordering::Relaxed);
        metrics().record_cache_link_resets.inc();
        tracing::warn!("the Redis tracking link was lost; Verify's record cache is emptied");
        self.link_lost.notify_one();
    }

    /// A fence sent at `sent_at` on `shard`'s link of `generation` was
    /// answered.
    fn fenced(&self, generation: u64, shard: usize, sent_at: u64) {
        let links = self.lock_link();
        if links.generation == generation
            && let Some(fenced_at) = self.fenced_at.get(shard)
        {
            fenced_at.fetch_max(sent_at, Ordering::AcqRel);
        }
    }

    pub(super) fn stats(&self) -> VerifyCacheStats {
        VerifyCacheStats {
            entries: self.records.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            link_resets: self.link_resets.load(Ordering::Relaxed),
        }
    }
}

/// Reopens the link whenever it is lost, for as long as the cache lives.
async fn keep_link_up(cache: Weak<RecordCache>, opener: LinkOpener) {
    loop {
        let Some(strong) = cache.upgrade() else {
            return;
        };
        let up = !strong.lock_link().connections.is_empty();
        if up {
            // Holding only the notification, not the cache, while waiting.
            let lost = async {
                strong.link_lost.notified().await;
            };
            let wait = tokio::time::timeout(Duration::from_secs(1), lost);
            let _ = wait.await;
            drop(strong);
            continue;
        }
        match strong.open_links(&opener).await {
            Ok(opened) => {
                if strong.install(opened) {
                    tracing::info!("the Redis tracking link is up again");
                } else {
                    drop(strong);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open the Redis tracking link yet; Verify reads uncached");
                drop(strong);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Sends a PING on the link every quarter of the bound; each reply moves the
/// fence to the moment its PING was sent. PINGs are not awaited one by one, so
/// a stalled Redis stops the fence without stopping the ticks; a PING that
/// fails or times out drops the links, which are then reopened.
async fn fence(cache: Weak<RecordCache>) {
    let period = match cache.upgrade() {
        Some(cache) => (cache.max_staleness / 4).max(Duration::from_millis(1)),
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        let (generation, connections) = {
            let links = cache.lock_link();
            (links.generation, links.connections.clone())
        };
        // The oldest fence among the shards: what bounds the staleness of
        // the worst-served records.
        let oldest = cache.fenced_at[..connections.len().max(1)]
            .iter()
            .map(|fenced_at| fenced_at.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let age = if oldest == 0 {
            cache.max_staleness
        } else {
            Duration::from_nanos(cache.nanos_now().saturating_sub(oldest))
        };
        metrics().record_cache_fence_age.set(age.as_secs_f64());
        // Reported with the fence rather than on every insert and removal,
        // which would cost the hot path a length count each time.
        metrics()
            .record_cache_entries
            .set(cache.records.len() as i64);
        let sent_at = cache.nanos_now();
        for (shard, mut connection) in connections.into_iter().enumerate() {
            let weak = Arc::downgrade(&cache);
            tokio::spawn(async move {
                let answered: RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if let Some(cache) = weak.upgrade() {
                    match answered {
                        Ok(_) => cache.fenced(generation, shard, sent_at),
                        Err(_) => cache.link_failed(generation),
                    }
                }
            });
        }
    }
}
