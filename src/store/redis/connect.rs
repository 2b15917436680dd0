//! Reaching Redis: a standalone server, a Sentinel-managed primary or a
//! Cluster, each with bounded connects and replies and a retry window at
//! start; under a durability mode, the pool of writer connections too.

use super::sentinel::SentinelConnection;
use super::write::{self, Durability, Writers};
use super::{Keyspace, RedisStore, record_cache, unavailable};
use crate::store::{StoreError, StoreResult};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;

/// The oldest Redis keyrack runs on (major, minor).
const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// How a standalone Redis is reached. No `Debug`: the URL may hold a password.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://`, `rediss://` or `unix://` URL.
    pub url: String,
    /// Prefix of every key keyrack writes.
    pub key_prefix: String,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on any one command's reply.
    pub response_timeout: Duration,
    /// When a change counts as done.
    pub durability: Durability,
    /// Writer connections kept for changes under a durability mode (each
    /// change holds one through its WAIT or WAITAOF); unused without one.
    pub writer_pool_size: usize,
    /// Audit events the stream keeps (approximately: Redis trims whole
    /// nodes of the stream).
    pub audit_max_events: usize,
}

/// The connection settings of a standalone Redis at `url`, set up as Verify
/// needs them.
pub(super) fn connection_info(url: &str) -> StoreResult<redis::ConnectionInfo> {
    // Verify sends one small command and waits for it: Nagle's algorithm
    // would hold it back behind any unacknowledged pipelined write.
    Ok(redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// A client for a standalone Redis at `url`, set up as Verify needs it.
pub fn client(url: &str) -> StoreResult<redis::Client> {
    redis::Client::open(connection_info(url)?)
        .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))
}

impl RedisStore<ConnectionManager> {
    /// Connects to a standalone Redis, retrying until `wait` has passed.
    pub async fn connect(options: &RedisOptions, wait: Duration) -> StoreResult<Self> {
        let client = client(&options.url)?;
        let config = manager_config(options);
        let connection = keep_trying(wait, "Redis", || {
            ConnectionManager::new_with_config(client.clone(), config.clone())
        })
        .await?;
        let link_client = client.clone();
        Self::opened(
            connection,
            options,
            Arc::new(move || {
                let client = link_client.clone();
                Box::pin(async move { Ok(record_cache::Shard::whole(client)) })
            }),
        )
        .ready(options, || {
            Ok(Writers::Standalone(write::standalone_writers(
                &options.url,
                options.writer_pool_size,
                options.connect_timeout,
                options.response_timeout,
            )?))
        })
        .await
    }
}

/// Runs `attempt` until it connects or `wait` has passed: at start Redis
/// may still be coming up beside keyrack.
pub(super) async fn keep_trying<T, Fut>(
    wait: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> StoreResult<T>
where
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match attempt().await {
            Ok(connected) => return Ok(connected),
            Err(error) if started.elapsed() < wait => {
                tracing::warn!(%error, "{what} is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(unavailable(error)),
        }
    }
}

/// How every connection manager keyrack opens behaves: bounded connects and
/// replies, a few quick reconnection attempts.
pub(super) fn manager_config(options: &RedisOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl RedisStore<SentinelConnection> {
    /// Connects to the primary `sentinels` name for `master_name`, retrying
    /// until `wait` has passed, and follows it across failovers.
    pub async fn connect_sentinel(
        sentinels: &[String],
        master_name: &str,
        options: &RedisOptions,
        wait: Duration,
    ) -> StoreResult<Self> {
        let config = manager_config(options);
        let connection = keep_trying(wait, "the primary Sentinel names", || {
            SentinelConnection::connect(sentinels, master_name, config.clone())
        })
        .await?;
        let following = connection.clone();
        Self::opened(
            connection.clone(),
            options,
            Arc::new(move || {
                let following = following.clone();
                Box::pin(async move {
                    Ok(record_cache::Shard::whole(
                        following.primary_client().await?,
                    ))
                })
            }),
        )
        .ready(options, || {
            Ok(Writers::Sentinel(write::sentinel_writers(
                &connection,
                options.writer_pool_size,
                options.connect_timeout,
                options.response_timeout,
            )?))
        })
        .await
    }
}

impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through its seed `nodes`, retrying until
    /// `wait` has passed. `options.url` is not used; durability modes are
    /// refused before this (WAIT cannot be routed to the writing primary), so
    /// changes share the one cluster connection and no writer pool is kept.
    pub async fn connect_cluster(
        nodes: &[String],
        options: &RedisOptions,
        wait: Duration,
    ) -> StoreResult<Self> {
        let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
            .retries(2)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("bad cluster nodes: {e}")))?;
        let connection =
            keep_trying(wait, "Redis Cluster", || client.get_async_connection()).await?;
        let seed = nodes
            .first()
            .ok_or_else(|| StoreError::Unavailable("no cluster nodes".into()))
            .and_then(|node| {
                redis::IntoConnectionInfo::into_connection_info(node.as_str())
                    .map_err(|e| StoreError::Unavailable(format!("bad cluster nodes: {e}")))
            })?;
        let mut store = Self::opened(
            connection.clone(),
            options,
            Arc::new(move || {
                let (mut connection, seed) = (connection.clone(), seed.clone());
                Box::pin(
                    async move { record_cache::Shard::of_cluster(&mut connection, &seed).await },
                )
            }),
        );
        store.cluster = true;
        store
            .ready(options, || {
                Err(StoreError::Unavailable(
                    "--durability is not available with Redis Cluster".into(),
                ))
            })
            .await
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `connection` with `options`' bounds, whose record cache
    /// opens its tracking links through `link_opener`.
    fn opened(
        connection: C,
        options: &RedisOptions,
        link_opener: record_cache::LinkOpener,
    ) -> Self {
        let mut store = Self::with_connection(connection, Keyspace::new(&options.key_prefix));
        store.audit_max_events = options.audit_max_events;
        store.response_timeout = options.response_timeout;
        store.link_opener = Some(link_opener);
        store
    }

    /// Finishes a connect: under a durability mode, changes take their
    /// connections from `writers` and the mode is checked against the
    /// server; then the server's version is.
    async fn ready(
        mut self,
        options: &RedisOptions,
        writers: impl FnOnce() -> StoreResult<Writers<C>>,
    ) -> StoreResult<Self> {
        if options.durability != Durability::None {
            self.writers = writers()?;
            self.durability = options.durability;
            self.check_durability_support().await?;
        }
        self.require_supported_redis().await?;
        Ok(self)
    }
    /// Refuses a Redis older than 6.2, whose missing commands keyrack uses
    /// (`SET ... PXAT`, exclusive `XRANGE` bounds, `XAUTOCLAIM`, and the
    /// record cache's RESP3 and `CLIENT TRACKING`): better a clear refusal at
    /// start than features failing one by one later. Under Cluster every
    /// master answers, and each must be recent enough.
    async fn require_supported_redis(&self) -> StoreResult<()> {
        let info: redis::Value = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let answers: Vec<String> = match info {
            redis::Value::Map(answers) => answers
                .into_iter()
                .filter_map(|(_, answer)| redis::from_redis_value(answer).ok())
                .collect(),
            answer => redis::from_redis_value(answer).into_iter().collect(),
        };
        for answer in &answers {
            let version = answer
                .lines()
                .find_map(|line| line.strip_prefix("redis_version:"))
                .map(str::trim)
                .unwrap_or("unknown");
            let mut numbers = version.split('.').map(|part| part.parse::<u32>().ok());
            let (major, minor) = (numbers.next().flatten(), numbers.next().flatten());
            if !matches!((major, minor), (Some(major), Some(minor)) if (major, minor) >= MIN_REDIS_VERSION)
            {
                return Err(StoreError::Unavailable(format!(
                    "Redis {version} is too old: keyrack needs Redis {}.{} or later",
                    MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
                )));
            }
        }
        Ok(())
    }
}
