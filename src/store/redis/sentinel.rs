//! A connection that follows a Sentinel-managed primary. It sends commands
//! through a `ConnectionManager` to the primary Sentinel named; when a command
//! fails in a way a failover explains (connection lost or refused, a timeout,
//! READONLY from a demoted primary, MASTERDOWN), it asks Sentinel again and,
//! if the primary moved, switches to it. The failing command itself still
//! fails (the caller answers UNAVAILABLE: fail closed); the next one goes to
//! the new primary. No home-made replication: Sentinel decides.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::sync::{Arc, RwLock};

/// See the module documentation.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
    own: Arc<RwLock<(String, ConnectionManager)>>,
}

/// What sibling connections (keyrack's reader and writer) share: the
/// Sentinel client and the primary last named, so when one follows a
/// failover the other switches before its next command instead of failing it.
struct Shared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    primary: RwLock<String>,
    config: ConnectionManagerConfig,
}

/// Whether `error` may mean the primary changed.
fn may_be_failover(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl Shared {
    /// A connection to the primary Sentinel names now.
    async fn open(&self) -> RedisResult<ConnectionManager> {
        let client = self.sentinel.lock().await.async_get_client().await?;
        ConnectionManager::new_with_config(client, self.config.clone()).await
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(value) => value.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl SentinelConnection {
    /// Asks `sentinels` for the primary of `master_name` and connects to it.
    pub async fn connect(
        sentinels: &[String],
        master_name: &str,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Self> {
        let node = SentinelNodeConnectionInfo::default()
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let mut sentinel = SentinelClient::build(
            sentinels.to_vec(),
            master_name.to_owned(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        let connection = ConnectionManager::new_with_config(client, config.clone()).await?;
        tracing::info!(primary = %address, "connected to the primary Sentinel names");
        Ok(Self {
            shared: Arc::new(Shared {
                sentinel: tokio::sync::Mutex::new(sentinel),
                primary: RwLock::new(address.clone()),
                config,
            }),
            own: Arc::new(RwLock::new((address, connection))),
        })
    }

    /// Another connection to the same primary, following it together with
    /// this one.
    pub async fn sibling(&self) -> RedisResult<Self> {
        let (address, _) = read(&self.own);
        let connection = self.shared.open().await?;
        Ok(Self {
            shared: Arc::clone(&self.shared),
            own: Arc::new(RwLock::new((address, connection))),
        })
    }

    /// A client for the primary the sentinels name now (Verify's tracking
    /// link opens its own connection with it).
    /// This connection and its siblings switch to it too, before their next
    /// command rather than by failing one: Verify's reads go through the
    /// link, so the link may be the first to see a failover.
    pub async fn primary_client(&self) -> RedisResult<redis::Client> {
        let client = self.shared.sentinel.lock().await.async_get_client().await?;
        self.switch_to(client.clone()).await;
        Ok(client)
    }

    /// This connection's manager, switched first to the primary a sibling
    /// has followed, if any.
    async fn connection(&self) -> ConnectionManager {
        let (address, connection) = read(&self.own);
        let primary = read(&self.shared.primary);
        if primary == address {
            return connection;
        }
        match self.shared.open().await {
            Ok(switched) => {
                if let Ok(mut own) = self.own.write() {
                    *own = (primary, switched.clone());
                }
                switched
            }
            Err(_) => connection,
        }
    }

    /// Asks Sentinel for the primary again and switches when it moved. One
    /// caller at a time asks; the others find the switch done.
    async fn follow_primary(&self) {
        let client = {
            let mut sentinel = self.shared.sentinel.lock().await;
            match sentinel.async_get_client().await {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(%error, "Sentinel cannot name a primary yet");
                    return;
                }
            }
        };
        self.switch_to(client).await;
    }

    /// Switches to the primary `client` reaches, when it is not the one this
    /// connection uses.
    async fn switch_to(&self, client: redis::Client) {
        let address = client.get_connection_info().addr().to_string();
        if read(&self.own).0 == address {
            return;
        }
        match ConnectionManager::new_with_config(client, self.shared.config.clone()).await {
            Ok(connection) => {
                tracing::warn!(primary = %address, "Sentinel promoted a new primary; following it");
                if let Ok(mut primary) = self.shared.primary.write() {
                    primary.clone_from(&address);
                }
                if let Ok(mut own) = self.own.write() {
                    *own = (address, connection);
                }
            }
            Err(error) => {
                tracing::warn!(%error, primary = %address, "cannot reach the new primary yet");
            }
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.connection().await.req_packed_command(cmd).await;
            if let Err(error) = &result
                && may_be_failover(error)
            {
                self.follow_primary().await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .connection()
                .await
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(error) = &result
                && may_be_failover(error)
            {
                self.follow_primary().await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        read(&self.own).1.get_db()
    }
}
