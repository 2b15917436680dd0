//! What the integration tests share: a redis-server of their own, an
//! in-process keyrack on 127.0.0.1:0, clients, and polling helpers.

use keyrack::domain::{ApiKey, Identity, KeyId, State, UnixMillis};
use keyrack::proto::admin_service_client::AdminServiceClient;
use keyrack::proto::verify_service_client::VerifyServiceClient;
use keyrack::proto::{self, VerifyCode};
use keyrack::server::{self, ServerOptions};
use keyrack::service::hashing::{HashPolicy, ServerSecret};
use keyrack::service::keyring::Keyring;
use keyrack::service::{Authority, AuthorityOptions};
use keyrack::store::Store;
use keyrack::store::memory::MemoryStore;
use keyrack::store::redis::{Durability, Keyspace, RedisOptions, RedisStore, VerifyCacheStats};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// Finds a program on PATH; a test that needs one fails without it.
pub fn require_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH; run the README's test command, which installs it")
        })
}

/// A redis-server owned by one test: its own directory and unix socket, gone
/// when dropped.
pub struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh server and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(dir.path(), &extra_args);
        let server = Self {
            child,
            dir,
            extra_args,
        };
        server.wait_ready();
        server
    }

    fn spawn(dir: &Path, extra_args: &[String]) -> Child {
        Command::new(require_program("redis-server"))
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocketperm",
                "700",
            ])
            .arg("--unixsocket")
            .arg(dir.join("redis.sock"))
            .arg("--dir")
            .arg(dir)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn wait_ready(&self) {
        wait_for_redis("redis-server starts", &self.url(), answers_ping);
    }

    /// The URL keyrack connects with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the server, as a stalled host would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts it again on the same socket.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        self.child = Self::spawn(self.dir.path(), &self.extra_args);
        self.wait_ready();
    }

    /// A plain connection for inspecting what keyrack wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Every key and its value (strings, hashes, sorted sets, streams), for
    /// leak checks.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
                let value = match kind.as_str() {
                    "string" => redis::cmd("GET")
                        .arg(&key)
                        .query::<String>(&mut connection)
                        .unwrap(),
                    "hash" => format!(
                        "{:?}",
                        redis::cmd("HGETALL")
                            .arg(&key)
                            .query::<Vec<String>>(&mut connection)
                            .unwrap()
                    ),
                    "zset" => format!(
                        "{:?}",
                        redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .query::<Vec<String>>(&mut connection)
                            .unwrap()
                    ),
                    "stream" => format!(
                        "{:?}",
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg("-")
                            .arg("+")
                            .query::<redis::Value>(&mut connection)
                            .unwrap()
                    ),
                    other => format!("<{other}>"),
                };
                (key, value)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fixed 32-byte server secret for tests.
pub fn test_secret() -> ServerSecret {
    ServerSecret {
        version: 1,
        bytes: zeroize::Zeroizing::new(b"test-server-secret-of-32-bytes!!".to_vec()),
    }
}

/// An authority over `store` keyed with the test secret.
pub fn test_authority(store: Arc<dyn Store>, options: AuthorityOptions) -> Authority {
    let keyring = Keyring::new(test_secret(), Vec::new(), HashPolicy::default()).unwrap();
    Authority::new(store, keyring, options)
}

/// Which backend a test runs on.
pub enum Backend {
    /// The embedded store.
    Memory,
    /// A redis-server of the test's own.
    Redis(RedisServer),
    /// A three-master Redis Cluster of the test's own.
    Cluster(RedisCluster),
    /// A Sentinel-managed primary and replica of the test's own; keyrack
    /// waits for the replica to acknowledge every change (`--durability
    /// replica`).
    Sentinel(RedisSentinels),
}

impl Backend {
    /// A Redis store over this backend's server (panics on Memory).
    pub fn redis(&self) -> &RedisServer {
        match self {
            Backend::Redis(server) => server,
            _ => panic!("not a standalone Redis backend"),
        }
    }
}

/// Opens a store for `backend`.
pub async fn open_store(backend: &Backend) -> Arc<dyn Store> {
    capture_logs();
    match backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        Backend::Cluster(cluster) => cluster.open_store("keyrack").await,
        Backend::Sentinel(sentinels) => {
            sentinels
                .open_store(keyrack::store::redis::Durability::Replica {
                    replicas: 1,
                    timeout: Duration::from_secs(1),
                })
                .await
        }
        Backend::Redis(server) => {
            let options = RedisOptions {
                url: server.url(),
                key_prefix: "keyrack:".into(),
                connect_timeout: Duration::from_millis(500),
                response_timeout: Duration::from_millis(500),
                durability: keyrack::store::redis::Durability::None,
                writer_pool_size: 8,
                audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
            };
            let mut store = RedisStore::connect(&options, Duration::from_secs(5))
                .await
                .expect("connect to test redis");
            enable_test_verify_cache(&mut store).await;
            Arc::new(store)
        }
    }
}

/// Turns on Verify's record cache as `keyrack serve` does by default, unless
/// `KEYRACK_TEST_VERIFY_CACHE=off` (scripts/test runs the Verify suites once
/// that way too).
pub async fn enable_test_verify_cache<C>(store: &mut RedisStore<C>)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    if std::env::var("KEYRACK_TEST_VERIFY_CACHE").as_deref() == Ok("off") {
        return;
    }
    store
        .enable_verify_cache(test_verify_cache_options())
        .await
        .expect("start Verify's record cache");
}

/// The record cache settings tests run with: the product's default bound.
pub fn test_verify_cache_options() -> keyrack::store::redis::VerifyCacheOptions {
    keyrack::store::redis::VerifyCacheOptions {
        max_staleness: Duration::from_millis(100),
        max_records: 10_000,
    }
}

/// The keyspace tests see in Redis.
pub fn keyspace() -> Keyspace {
    Keyspace::new("keyrack:")
}

/// A keyrack serving on 127.0.0.1:0 in this process, with an admin.
pub struct TestServer {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// The first admin's token.
    pub admin_token: String,
    /// The backend it runs on.
    pub backend: Backend,
    /// The store behind it, for tests that change records underneath.
    pub store: Arc<dyn Store>,
    /// The authority it serves, for servers beside it (SCIM).
    pub authority: Arc<Authority>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(
            backend,
            AuthorityOptions::default(),
            Duration::from_secs(60),
        )
        .await
    }

    /// Starts a server with these authority options, flushing last-use times
    /// every `flush_interval`.
    pub async fn start_with(
        backend: Backend,
        authority_options: AuthorityOptions,
        flush_interval: Duration,
    ) -> Self {
        let options = ServerOptions {
            last_use_flush_interval: flush_interval,
            ..test_server_options()
        };
        Self::start_serving(backend, authority_options, options).await
    }

    /// Starts a server with these authority and server options.
    pub async fn start_serving(
        backend: Backend,
        authority_options: AuthorityOptions,
        options: ServerOptions,
    ) -> Self {
        capture_logs();
        let store = open_store(&backend).await;
        let authority = Arc::new(test_authority(Arc::clone(&store), authority_options));
        let (_, minted) = authority.create_admin("root", "test admin").await.unwrap();
        Self::serve(
            backend,
            store,
            authority,
            minted.token.expose().to_owned(),
            options,
        )
        .await
    }

    /// Starts a server on a backend that already holds keyrack's records,
    /// as a restarted keyrack would, with the admin `admin_token` names.
    pub async fn resume(
        backend: Backend,
        admin_token: String,
        authority_options: AuthorityOptions,
    ) -> Self {
        let store = open_store(&backend).await;
        let authority = Arc::new(test_authority(Arc::clone(&store), authority_options));
        Self::serve(
            backend,
            store,
            authority,
            admin_token,
            test_server_options(),
        )
        .await
    }

    async fn serve(
        backend: Backend,
        store: Arc<dyn Store>,
        authority: Arc<Authority>,
        admin_token: String,
        options: ServerOptions,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = Arc::clone(&authority);
        let task = tokio::spawn(async move {
            server::serve(listener, served, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            address,
            admin_token,
            store,
            authority,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts on the memory store.
    pub async fn memory() -> Self {
        Self::start(Backend::Memory).await
    }

    /// Starts on a fresh redis-server.
    pub async fn redis() -> Self {
        Self::start(Backend::Redis(RedisServer::start())).await
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// An Admin client.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    /// A Verify client.
    pub async fn verifier(&self) -> VerifyServiceClient<Channel> {
        VerifyServiceClient::new(self.channel().await)
    }

    /// A health client.
    pub async fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel().await)
    }

    /// Verify's code for `token`, or the gRPC code the call failed with.
    pub async fn verify_code(
        &self,
        token: &str,
    ) -> Result<keyrack::proto::VerifyCode, tonic::Code> {
        self.verifier()
            .await
            .verify(keyrack::proto::VerifyRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .map(|answer| answer.into_inner().code())
            .map_err(|status| status.code())
    }

    /// Creates an identity as the root admin.
    pub async fn create_identity(
        &self,
        request: keyrack::proto::CreateIdentityRequest,
    ) -> keyrack::proto::CreateIdentityResponse {
        self.admin()
            .await
            .create_identity(authed(&self.admin_token, request))
            .await
            .expect("create identity")
            .into_inner()
    }

    /// Creates a plain service identity named `name`, with its first key.
    pub async fn create_service(&self, name: &str) -> keyrack::proto::CreateIdentityResponse {
        self.create_identity(keyrack::proto::CreateIdentityRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
    }

    /// Stops the server and hands back its backend, data and all, with the
    /// admin token, for [`TestServer::resume`].
    pub async fn stop_keeping_backend(mut self) -> (Backend, String) {
        let backend = std::mem::replace(&mut self.backend, Backend::Memory);
        let admin_token = std::mem::take(&mut self.admin_token);
        self.stop().await;
        (backend, admin_token)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        assert_no_secret_logged();
    }
}

/// Everything the in-process servers log, at TRACE: the whole suite runs with
/// tracing on, and every stopped server checks that nothing logged so far
/// looks like a token, a key hash or a TOTP seed.
static CAPTURED_LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

struct CapturedWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing TRACE subscriber (once per test binary).
pub fn capture_logs() {
    CAPTURED_LOGS.get_or_init(|| {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || CapturedWriter(Arc::clone(&writer)))
            .try_init();
        buffer
    });
}

/// Where `text` holds `kr_` + 18 base62 + `_` + 49 base62: a whole token.
fn find_token(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let alnum = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|run| run.iter().all(u8::is_ascii_alphanumeric))
    };
    text.match_indices("kr_").map(|(at, _)| at).find(|&at| {
        let id = at + 3;
        alnum(id..id + 18) && bytes.get(id + 18) == Some(&b'_') && alnum(id + 19..id + 19 + 49)
    })
}

/// Fails when anything logged so far contains a token or a key hash.
pub fn assert_no_secret_logged() {
    let Some(buffer) = CAPTURED_LOGS.get() else {
        return;
    };
    let logged = std::mem::take(&mut *buffer.lock().unwrap());
    let text = String::from_utf8_lossy(&logged);
    if let Some(at) = find_token(&text) {
        panic!("a token reached the TRACE log near byte {at}");
    }
    assert!(
        !text.contains("$argon2"),
        "a key hash reached the TRACE log"
    );
    assert!(
        !text.contains("otpauth://"),
        "a TOTP seed URL reached the TRACE log"
    );
}

/// Server options for tests: quick health checks and shutdown.
pub fn test_server_options() -> ServerOptions {
    ServerOptions {
        health_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(2),
        ..keyrack::app::default_server_options()
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Polls `check` until it returns true or `within` passes; fails the test then.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a test body on both backends, each in its own test.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$body($crate::support::TestServer::memory().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body($crate::support::TestServer::redis().await).await;
            }
        }
    };
}

/// A three-master Redis Cluster of the test's own, on loopback TCP ports, with
/// `cluster-require-full-coverage no` so live shards keep answering when one
/// master dies.
pub struct RedisCluster {
    nodes: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three masters, joins them with `redis-cli --cluster create`,
    /// and waits until every slot is served.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new(require_program("redis-server"))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push((port, child));
        }
        let cluster = Self { nodes, _dir: dir };
        for (port, _) in &cluster.nodes {
            wait_until("the cluster node starts", *port, answers_ping);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new(require_program("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for (port, _) in &cluster.nodes {
            wait_until("the cluster node serves every slot", *port, |connection| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(connection)
                    .is_ok_and(|info| {
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    })
            });
        }
        cluster
    }

    /// The seed node URLs keyrack is given.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Which node (by index) serves `key`'s slot.
    pub fn node_of(&self, key: &str) -> usize {
        let mut connection = redis::Client::open(self.urls()[0].as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut connection)
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut connection)
            .unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            for range in &fields[8..] {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(low), Ok(high)) = (low.parse::<i64>(), high.parse::<i64>())
                    && (low..=high).contains(&slot)
                {
                    return self.nodes.iter().position(|(p, _)| *p == port).unwrap();
                }
            }
        }
        panic!("no node serves slot {slot}");
    }

    /// Freezes (`STOP`) or thaws (`CONT`) one master, as a stalled host
    /// would.
    pub fn signal_node(&self, index: usize, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.nodes[index].1.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Calls of `command` one master has served so far (INFO commandstats).
    pub fn node_command_calls(&self, index: usize, command: &str) -> u64 {
        let mut connection = redis::Client::open(self.urls()[index].as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        calls_served(&mut connection, command)
    }

    /// Kills one master, as a crash would.
    pub fn kill_node(&mut self, index: usize) {
        let (_, child) = &mut self.nodes[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A store on this cluster under its own key prefix, so tests sharing
    /// the cluster never see each other's records.
    pub async fn open_store(&self, prefix: &str) -> Arc<dyn Store> {
        capture_logs();
        let options = RedisOptions {
            url: String::new(),
            key_prefix: format!("{prefix}:"),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            durability: keyrack::store::redis::Durability::None,
            writer_pool_size: 8,
            audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
        };
        let mut store = RedisStore::connect_cluster(&self.urls(), &options, Duration::from_secs(5))
            .await
            .expect("connect to the test cluster");
        enable_test_verify_cache(&mut store).await;
        Arc::new(store)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill_node(index);
        }
    }
}

/// A Sentinel-managed Redis of the test's own: a primary, one replica and
/// three sentinels (quorum 2), on loopback TCP ports, failing over a second
/// after the primary stops answering.
pub struct RedisSentinels {
    primary: (u16, Child),
    replica: (u16, Child),
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

/// The master name the test sentinels monitor.
pub const SENTINEL_MASTER: &str = "keyrack-primary";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls the Redis on local `port` until `ready` holds; fails the test after 30 s.
pub fn wait_until(what: &str, port: u16, ready: impl Fn(&mut redis::Connection) -> bool) {
    wait_for_redis(what, &format!("redis://127.0.0.1:{port}"), ready);
}

/// Polls the Redis at `url` until `ready` holds; fails the test after 30 s.
fn wait_for_redis(what: &str, url: &str, ready: impl Fn(&mut redis::Connection) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = redis::Client::open(url)
            .and_then(|client| client.get_connection())
            .is_ok_and(|mut connection| ready(&mut connection));
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {what} ({url})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn answers_ping(connection: &mut redis::Connection) -> bool {
    redis::cmd("PING").query::<String>(connection).is_ok()
}

impl RedisSentinels {
    /// Starts the primary, the replica and the sentinels, and waits until
    /// every sentinel knows the replica and the other sentinels.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = |port: u16, extra: &[String]| {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            Command::new(require_program("redis-server"))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server")
        };
        let primary_port = free_tcp_port();
        let primary = (primary_port, redis(primary_port, &[]));
        wait_until("the primary starts", primary_port, answers_ping);
        let replica_port = free_tcp_port();
        let replica = (
            replica_port,
            redis(
                replica_port,
                &[
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary_port.to_string(),
                ],
            ),
        );
        wait_until("the replica syncs", replica_port, |c| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(c)
                .is_ok_and(|info| info.contains("master_link_status:up"))
        });
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_tcp_port();
            let config = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new(require_program("redis-server"))
                .arg(&config)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a sentinel");
            sentinels.push((port, child));
        }
        for (port, _) in &sentinels {
            wait_until("a sentinel knows the replica and its peers", *port, |c| {
                let replicas: Result<Vec<redis::Value>, _> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(SENTINEL_MASTER)
                    .query(c);
                let peers: Result<Vec<redis::Value>, _> = redis::cmd("SENTINEL")
                    .arg("SENTINELS")
                    .arg(SENTINEL_MASTER)
                    .query(c);
                replicas.is_ok_and(|r| r.len() == 1) && peers.is_ok_and(|p| p.len() == 2)
            });
        }
        Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// The sentinel URLs keyrack is given.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Kills the primary, as a crash would.
    pub fn kill_primary(&mut self) {
        let _ = self.primary.1.kill();
        let _ = self.primary.1.wait();
    }

    /// Waits until the sentinels name the replica as the primary.
    pub fn wait_for_failover(&self) {
        let replica = self.replica.0.to_string();
        wait_until(
            "the sentinels promote the replica",
            self.sentinels[0].0,
            |c| {
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER)
                    .query::<Vec<String>>(c)
                    .is_ok_and(|addr| addr.get(1) == Some(&replica))
            },
        );
    }

    /// A store following the primary, with `durability`.
    pub async fn open_store(
        &self,
        durability: keyrack::store::redis::Durability,
    ) -> Arc<dyn Store> {
        capture_logs();
        let options = RedisOptions {
            url: String::new(),
            key_prefix: "keyrack:".into(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(2),
            durability,
            writer_pool_size: 8,
            audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
        };
        let mut store = RedisStore::connect_sentinel(
            &self.urls(),
            SENTINEL_MASTER,
            &options,
            Duration::from_secs(10),
        )
        .await
        .expect("connect through the test sentinels");
        enable_test_verify_cache(&mut store).await;
        Arc::new(store)
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (_, child) in self
            .sentinels
            .iter_mut()
            .chain([&mut self.primary, &mut self.replica])
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replica B: a second keyrack on replica A's Redis (see `two_replicas`), with its record cache
/// on, and a handle on its store to read what the cache did.
pub struct Replica {
    /// B's store, to read what its record cache did.
    pub store: Arc<RedisStore>,
    /// B's VerifyService.
    pub verifier: VerifyServiceClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    pub async fn start(redis_url: String) -> Self {
        capture_logs();
        let options = redis_options(redis_url, Duration::from_millis(500));
        let mut store = RedisStore::connect(&options, Duration::from_secs(5))
            .await
            .expect("connect replica B");
        store
            .enable_verify_cache(test_verify_cache_options())
            .await
            .expect("start B's record cache");
        let store = Arc::new(store);
        let authority = Arc::new(test_authority(
            Arc::clone(&store) as Arc<dyn Store>,
            AuthorityOptions::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            keyrack::server::serve(listener, authority, test_server_options(), async {
                let _ = stopped.await;
            })
            .await
            .expect("replica B serves");
        });
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            store,
            verifier: VerifyServiceClient::new(channel),
            stop: Some(stop),
            task,
        }
    }

    pub fn stats(&self) -> VerifyCacheStats {
        self.store.verify_cache_stats().expect("B's cache is on")
    }

    pub async fn verify_with(&self, request: proto::VerifyRequest) -> Result<VerifyCode, Code> {
        self.verifier
            .clone()
            .verify(request)
            .await
            .map(|answer| answer.into_inner().code())
            .map_err(|status| status.code())
    }

    pub async fn verify(&self, token: &str) -> Result<VerifyCode, Code> {
        self.verify_with(proto::VerifyRequest {
            token: token.into(),
            client_ip: "192.0.2.7".into(),
            dataset: "sales".into(),
            ..Default::default()
        })
        .await
    }

    /// Verifies `token` until B answers it from its cache (the first call
    /// may read Redis and run argon2), and checks the answer is VALID.
    pub async fn warm(&self, token: &str) {
        assert_eq!(self.verify(token).await, Ok(VerifyCode::Valid));
        let before = self.stats().hits;
        eventually(
            "B answers from its cache",
            Duration::from_secs(5),
            || async {
                assert_eq!(self.verify(token).await, Ok(VerifyCode::Valid));
                self.stats().hits > before
            },
        )
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap();
        assert_no_secret_logged();
    }
}

/// How the tests' own stores reach Redis: no durability wait, the tests'
/// key prefix.
pub fn redis_options(url: String, response_timeout: Duration) -> RedisOptions {
    RedisOptions {
        url,
        key_prefix: "keyrack:".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout,
        durability: Durability::None,
        writer_pool_size: 8,
        audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
    }
}

/// Replica A (the test server, rolls without TOTP) and replica B.
pub async fn two_replicas() -> (TestServer, Replica) {
    let a = TestServer::start_with(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions {
            totp_for_roll: false,
            ..AuthorityOptions::default()
        },
        Duration::from_secs(60),
    )
    .await;
    let b = Replica::start(a.backend.redis().url()).await;
    (a, b)
}

/// An update mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|path| (*path).to_owned()).collect(),
    })
}

/// Calls of `command` Redis has served so far (INFO commandstats).
pub fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    calls_served(&mut redis.connection(), command)
}

/// Calls of `command` the server behind `connection` has served so far.
fn calls_served(connection: &mut redis::Connection, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A service identity with nothing set, as a store test writes it directly.
pub fn service_identity(name: &str) -> Identity {
    Identity::new_service(
        keyrack::domain::names::IdentityName::parse_service(name).unwrap(),
        String::new(),
        UnixMillis::now(),
    )
}

/// An active key of `identity` with no limits, grants or settings, as a
/// store test writes it directly.
pub fn unlimited_key(identity: &Identity, name: &str) -> ApiKey {
    ApiKey {
        id: KeyId::generate(&identity.id),
        identity_id: identity.id.clone(),
        name: name.to_owned(),
        description: String::new(),
        state: State::Active,
        create_time: UnixMillis::now(),
        expire_time: None,
        last_use_time: None,
        rolled_from: None,
        rolled_to: None,
        grace_expire_time: None,
        token_hint: String::new(),
        allowed_cidrs: Vec::new(),
        scopes: Vec::new(),
        datasets: Vec::new(),
        labels: Default::default(),
        origin: None,
        honeytoken: false,
        rate_limits: Vec::new(),
        credits: None,
        usage_account: None,
        secret_hash: keyrack::domain::SecretHash::Phc("$argon2id$placeholder".into()),
        revision: 0,
    }
}

/// Verify of `token` on `authority` itself, with nothing asked but the token.
pub async fn verify_directly(
    authority: &keyrack::service::Authority,
    token: &str,
) -> Result<keyrack::domain::VerifyCode, keyrack::domain::Error> {
    authority
        .verify(keyrack::service::VerifyQuery {
            token,
            dataset: None,
            client_ip: None,
            required_scopes: &[],
            context: Default::default(),
            cost: 1,
        })
        .await
        .map(|verdict| verdict.code)
}
