//! The command line as data: flags, their `KEYRACK_*` variables, and the
//! checks that run before anything binds a port or contacts Redis.
//!
//! Each default lives here, in its clap attribute, and nowhere else. This
//! module builds no store, service or server (`app.rs` wires those from what
//! it checked) and imports nothing of keyrack but `domain/`, so every other
//! module may read it without closing a circle.

use crate::domain::expiry::LeadTimes;
use crate::domain::token::TokenPrefix;
use crate::domain::{Durability, ServerSecret};
use clap::{Args, FromArgMatches, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// keyrack: a credential authority for internal microservices.
#[derive(Parser)]
#[command(
    name = "keyrack",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log lines as text for people or JSON for log pipelines (`RUST_LOG`
    /// filters both).
    #[arg(
        long,
        env = "KEYRACK_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The subcommands of the server. The binary adds `bench` (src/main.rs),
/// which is no part of the library.
// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Serve the gRPC API (the default).
    Serve(ServeArgs),
    /// Create the first admin identity and print its token on stdout.
    BootstrapAdmin(BootstrapArgs),
    /// Write the protobuf descriptor set, for `grpcurl -protoset`.
    Protoset(ProtosetArgs),
    /// Ask a running keyrack's grpc.health.v1 whether it serves; exit 0 only
    /// when it does (for container health checks).
    Health(HealthArgs),
    /// Import the tokens of an AWS API Gateway API key file
    /// (`Name,Key,Description,Enabled`) as keys of one identity.
    Import(ImportArgs),
}

/// Flags of `keyrack import`.
#[derive(Clone, Args)]
pub struct ImportArgs {
    /// The CSV file: a header `Name,Key,Description,Enabled` (further columns
    /// ignored); `Enabled=false` imports a disabled key.
    #[arg(long, env = "KEYRACK_IMPORT_CSV")]
    pub csv: PathBuf,
    /// The identity the keys will belong to.
    #[arg(long, env = "KEYRACK_IMPORT_IDENTITY")]
    pub identity: String,
    /// Store and secret flags.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `keyrack health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The keyrack to ask (plaintext gRPC).
    #[arg(long, env = "KEYRACK_HEALTH_TARGET", default_value = "127.0.0.1:50051")]
    pub target: String,
    /// The service to ask about: "" (the server), keyrack.v1.VerifyService or
    /// keyrack.v1.AdminService.
    #[arg(long, env = "KEYRACK_HEALTH_SERVICE", default_value = "")]
    pub service: String,
    /// How long to wait for the answer.
    #[arg(long, env = "KEYRACK_HEALTH_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Where state lives and how secrets are keyed.
#[derive(Clone, Args)]
pub struct StoreArgs {
    /// Redis URL (redis://, rediss:// or unix://). Without it keyrack runs in
    /// dev mode on an embedded in-memory store whose state is lost on exit.
    #[arg(long, env = "KEYRACK_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated
    /// (`redis://h1:p1,redis://h2:p2,...`), instead of --redis-url.
    #[arg(
        long,
        env = "KEYRACK_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster_nodes: Vec<String>,
    /// Redis Sentinel nodes, comma-separated (`redis://s1:26379,...`):
    /// keyrack asks them for the primary of --redis-sentinel-master and
    /// follows it across failovers.
    #[arg(
        long,
        env = "KEYRACK_REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with_all = ["redis_url", "redis_cluster_nodes"],
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinel: Vec<String>,
    /// The Sentinel master name (`sentinel monitor <name> ...`).
    #[arg(long, env = "KEYRACK_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Prefix of every Redis key keyrack writes.
    #[arg(long, env = "KEYRACK_REDIS_PREFIX", default_value = "keyrack:")]
    pub redis_prefix: String,
    /// Audit events kept (the oldest are dropped beyond it).
    #[arg(long, env = "KEYRACK_AUDIT_MAX_EVENTS", default_value_t = 1_000_000)]
    pub audit_max_events: usize,
    /// Bound on each Redis connection attempt and each reply.
    #[arg(long, env = "KEYRACK_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// How long to keep trying to reach Redis at start before giving up.
    #[arg(long, env = "KEYRACK_REDIS_CONNECT_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub redis_connect_wait: Duration,
    /// File holding the server secret (at least 32 bytes, e.g. `openssl rand
    /// -base64 32`; a trailing newline is ignored). Required with Redis. It is
    /// argon2's pepper and never enters Redis.
    #[arg(long, env = "KEYRACK_SERVER_SECRET_FILE")]
    pub server_secret_file: Option<PathBuf>,
    /// Version of the server secret, written into every new hash.
    #[arg(long, env = "KEYRACK_SERVER_SECRET_VERSION", default_value_t = 1)]
    pub server_secret_version: u32,
    /// The previous server secret, still accepted for hashes made under
    /// version `--server-secret-version` minus one (for rotation).
    #[arg(long, env = "KEYRACK_PREVIOUS_SERVER_SECRET_FILE")]
    pub previous_server_secret_file: Option<PathBuf>,
    /// When a change (a create, update, revoke, roll or delete) counts as
    /// done: `none` (the primary applied it), `replica` (WAIT: replicas
    /// acknowledged it) or `aof` (WAITAOF: fsynced to the AOF, Redis 7.2+).
    /// Unconfirmed changes fail with UNAVAILABLE.
    #[arg(long, env = "KEYRACK_DURABILITY", value_enum, default_value = "none")]
    pub durability: DurabilityMode,
    /// Replicas that must acknowledge a change (replica mode), or whose AOF
    /// must have it too (aof mode).
    #[arg(long, env = "KEYRACK_DURABILITY_REPLICAS", default_value_t = 1)]
    pub durability_replicas: u32,
    /// How long to wait for the acknowledgement; below --redis-timeout.
    #[arg(long, env = "KEYRACK_DURABILITY_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub durability_timeout: Duration,
    /// Writer connections kept for changes under `--durability replica|aof`,
    /// opened as concurrent changes need them: each change holds one through
    /// its WAIT or WAITAOF, so this many changes wait for their
    /// acknowledgement side by side (standalone and Sentinel; Cluster takes
    /// no durability mode).
    #[arg(long, env = "KEYRACK_REDIS_WRITER_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_writer_pool_size: u16,
    /// The prefix of minted tokens: 1 to 16 lowercase letters or digits.
    #[arg(long, env = "KEYRACK_TOKEN_PREFIX", default_value = "kr")]
    pub token_prefix: String,
    /// Verify's record cache: `tracked` keeps the key and identity records
    /// Verify reads while Redis tracks them for this replica (each Cluster
    /// master on a link of its own); `off` reads Redis on every Verify.
    #[arg(
        long,
        env = "KEYRACK_VERIFY_CACHE",
        value_enum,
        default_value = "tracked"
    )]
    pub verify_cache: VerifyCacheMode,
    /// The bound on a cached answer: the record cache serves only while its
    /// last fence on the tracking link completed less than this ago.
    #[arg(long, env = "KEYRACK_VERIFY_CACHE_MAX_STALENESS", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub verify_cache_max_staleness: Duration,
}

/// Whether Verify caches the records it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyCacheMode {
    /// Cache records Redis tracks for this replica, within the staleness bound.
    Tracked,
    /// One Redis read per Verify.
    Off,
}

/// When a change counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityMode {
    /// When the primary applied it.
    None,
    /// When replicas acknowledged it (WAIT).
    Replica,
    /// When it was fsynced to the AOF (WAITAOF).
    Aof,
}

/// Who may use gRPC server reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReflectionMode {
    /// Callers with an admin token.
    Gated,
    /// Anyone who can reach the port.
    Open,
    /// Nobody: reflection is not served.
    Off,
}

/// Flags of `keyrack serve`.
#[derive(Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYRACK_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Dev mode only: also write the dev admin token to this file (mode 0600).
    #[arg(long, env = "KEYRACK_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Who may use gRPC server reflection: callers with an admin token
    /// (gated), anyone (open), or nobody (off).
    #[arg(long, env = "KEYRACK_REFLECTION", value_enum, default_value = "gated")]
    pub reflection: ReflectionMode,
    /// Let RollKey proceed without the caller's TOTP code. For dev setups
    /// only: a stolen admin token then suffices to roll any key.
    #[arg(long, env = "KEYRACK_NO_TOTP_FOR_ROLL")]
    pub no_totp_for_roll: bool,
    /// Most verified tokens remembered, so steady-state Verify runs no argon2.
    #[arg(long, env = "KEYRACK_VERIFY_CACHE_ENTRIES", default_value_t = crate::service::guard::DEFAULT_VERIFIED_ENTRIES)]
    pub verify_cache_entries: u64,
    /// How often key last-use times are written to the store.
    #[arg(long, env = "KEYRACK_LAST_USE_FLUSH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub last_use_flush_interval: Duration,
    /// Calls in progress at once across all connections; more are refused
    /// at once with RESOURCE_EXHAUSTED (load shedding).
    #[arg(long, env = "KEYRACK_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,
    /// Longest any one call may take.
    #[arg(long, env = "KEYRACK_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "KEYRACK_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keepalive pings; a peer silent for 10 s more is dropped.
    #[arg(long, env = "KEYRACK_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// Most gRPC connections open at once; past it, further clients wait in
    /// the kernel's accept backlog until one closes.
    #[arg(long, env = "KEYRACK_GRPC_MAX_CONNECTIONS", default_value_t = 512)]
    pub grpc_max_connections: usize,
    /// A gRPC connection that moves no byte either way for this long is
    /// closed (one that never sends the HTTP/2 preface, say). Must exceed
    /// --http2-keepalive-interval: the pings keep live clients' connections
    /// moving.
    #[arg(long, env = "KEYRACK_GRPC_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub grpc_idle_timeout: Duration,
    /// PEM certificate chain: serve TLS (with --tls-key-file).
    #[arg(long, env = "KEYRACK_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "KEYRACK_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: require client certificates signed by them (mutual TLS).
    #[arg(long, env = "KEYRACK_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Also serve SCIM 2.0 provisioning (HTTP, under /scim/v2) on this address.
    #[arg(long, env = "KEYRACK_SCIM_LISTEN")]
    pub scim_listen: Option<SocketAddr>,
    /// Also serve the admin web console (HTTP, TLS with --tls-cert-file) on this address.
    #[arg(long, env = "KEYRACK_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// How long a console sign-in lasts.
    #[arg(long, env = "KEYRACK_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = humantime::parse_duration)]
    pub console_session_ttl: Duration,
    /// Drop audit events older than this (checked with each last-use flush);
    /// without it only --audit-max-events bounds the log.
    #[arg(long, env = "KEYRACK_AUDIT_MAX_AGE", value_parser = humantime::parse_duration)]
    pub audit_max_age: Option<Duration>,
    /// Serve Prometheus metrics (HTTP, at /metrics) on this address.
    #[arg(long, env = "KEYRACK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The request header Envoy's ext_authz Check reads the token from:
    /// `authorization` (as `Bearer <token>`) or another, e.g. `x-api-key`,
    /// holding the raw token.
    #[arg(
        long,
        env = "KEYRACK_EXT_AUTHZ_TOKEN_HEADER",
        default_value = "authorization"
    )]
    pub ext_authz_token_header: http::HeaderName,
    /// Let the credential header of an allowed ext_authz request pass
    /// upstream; by default it is removed so upstreams never see tokens.
    #[arg(long, env = "KEYRACK_EXT_AUTHZ_KEEP_CREDENTIAL")]
    pub ext_authz_keep_credential: bool,
    /// POST every event to this http:// or https:// URL, signed per
    /// Standard Webhooks.
    #[arg(long, env = "KEYRACK_WEBHOOK_URL", requires = "webhook_secret_file")]
    pub webhook_url: Option<String>,
    /// The webhook signing secret: a file holding `whsec_<base64>`.
    #[arg(long, env = "KEYRACK_WEBHOOK_SECRET_FILE", requires = "webhook_url")]
    pub webhook_secret_file: Option<PathBuf>,
    /// PEM certificates of authorities an https:// webhook endpoint may be
    /// certified by, besides the Mozilla roots keyrack ships with.
    #[arg(long, env = "KEYRACK_WEBHOOK_CA_FILE", requires = "webhook_url")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Lead times of KEY_EXPIRING: a comma-separated list of durations
    /// (`14d`, `1d`, `12h`, `30m`, `45s`); each key gets one warning per
    /// lead time, sent by one replica.
    #[arg(long, env = "KEYRACK_EXPIRY_WARNINGS", default_value = crate::domain::expiry::DEFAULT_LEAD_TIMES)]
    pub expiry_warnings: String,
    /// How often one replica sweeps for keys to warn of; a warning comes
    /// between its lead time and its lead time plus this before the end.
    #[arg(long, env = "KEYRACK_EXPIRY_SWEEP_INTERVAL", default_value = crate::service::expiry::DEFAULT_SWEEP_INTERVAL, value_parser = humantime::parse_duration)]
    pub expiry_sweep_interval: Duration,
    /// How long in-flight calls may take to finish at shutdown.
    #[arg(long, env = "KEYRACK_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Store and secret flags.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `keyrack bootstrap-admin`.
#[derive(Clone, Args)]
pub struct BootstrapArgs {
    /// Name of the admin identity to create.
    #[arg(long, env = "KEYRACK_BOOTSTRAP_NAME")]
    pub name: String,
    /// Create it even when an admin already exists.
    #[arg(long, env = "KEYRACK_BOOTSTRAP_FORCE")]
    pub force: bool,
    /// Store and secret flags.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `keyrack protoset`.
#[derive(Debug, Clone, Args)]
pub struct ProtosetArgs {
    /// Write here instead of standard output.
    #[arg(long, short, env = "KEYRACK_PROTOSET_OUTPUT")]
    pub output: Option<PathBuf>,
}

/// A configuration problem, reported in one line before anything binds.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The store a process will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// Dev mode.
    Memory,
    /// A standalone Redis at this URL.
    Redis(String),
    /// A Redis Cluster reached through these seed nodes.
    Cluster(Vec<String>),
    /// The primary these Sentinels name for `master`.
    Sentinel {
        /// Sentinel node URLs.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
}

/// The server secrets the hasher and the TOTP sealer are keyed with.
#[derive(Debug)]
pub enum ServerSecrets {
    /// Dev mode: a random secret, which dies with the embedded store.
    Random,
    /// Read from `--server-secret-file` (and the previous one, for rotation).
    Files {
        /// Hashes and seals new values.
        current: ServerSecret,
        /// Still accepted for what version `current - 1` hashed or sealed.
        previous: Vec<ServerSecret>,
    },
}

/// Store and secret settings, checked.
#[derive(Debug)]
pub struct StoreConfig {
    /// Which store.
    pub store: StoreChoice,
    /// The secrets keys are hashed and seeds sealed under.
    pub secrets: ServerSecrets,
    /// The token prefix.
    pub token_prefix: TokenPrefix,
    /// When a change counts as done.
    pub durability: Durability,
    /// Verify's record cache: the bound on a cached answer, `None` when off.
    pub verify_cache_max_staleness: Option<Duration>,
}

impl StoreConfig {
    /// Whether the store is the embedded one (dev mode).
    pub fn is_dev_mode(&self) -> bool {
        self.store == StoreChoice::Memory
    }
}

fn read_secret(path: &Path, version: u32) -> Result<ServerSecret, ConfigError> {
    let content = std::fs::read(path).map_err(|e| {
        ConfigError(format!(
            "cannot read server secret file {}: {e}",
            path.display()
        ))
    })?;
    let mut bytes = Zeroizing::new(content);
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(ServerSecret { version, bytes })
}

impl StoreArgs {
    /// Checks the flags and reads the server secret(s); contacts nothing.
    pub fn load(&self) -> Result<StoreConfig, ConfigError> {
        let token_prefix = TokenPrefix::parse(&self.token_prefix)
            .map_err(|e| ConfigError(format!("--token-prefix: {e}")))?;
        if self.redis_prefix.contains(['{', '}']) {
            return Err(ConfigError(
                "--redis-prefix must not contain { or } (hash tags are keyrack's)".into(),
            ));
        }
        let store = self.store_choice()?;
        let durability = self.durability()?;
        let verify_cache_max_staleness = self.verify_cache_max_staleness()?;
        let secrets = if store == StoreChoice::Memory {
            if self.server_secret_file.is_some() {
                tracing::warn!(
                    "--server-secret-file is ignored in dev mode: a random secret is used"
                );
            }
            ServerSecrets::Random
        } else {
            self.server_secrets()?
        };
        Ok(StoreConfig {
            store,
            secrets,
            token_prefix,
            durability,
            verify_cache_max_staleness,
        })
    }

    /// Whether any Redis flag was given (else the store is the embedded one).
    pub fn names_redis(&self) -> bool {
        self.redis_url.is_some()
            || !self.redis_cluster_nodes.is_empty()
            || !self.redis_sentinel.is_empty()
    }

    fn store_choice(&self) -> Result<StoreChoice, ConfigError> {
        Ok(
            match (&self.redis_url, self.redis_cluster_nodes.as_slice()) {
                (None, []) if !self.redis_sentinel.is_empty() => {
                    let sentinels = parse_node_urls("--redis-sentinel", &self.redis_sentinel)?;
                    let master = self
                        .redis_sentinel_master
                        .clone()
                        .filter(|name| !name.trim().is_empty())
                        .ok_or_else(|| {
                            ConfigError("--redis-sentinel needs --redis-sentinel-master".into())
                        })?;
                    StoreChoice::Sentinel { sentinels, master }
                }
                (Some(url), _) => {
                    // The URL may hold a password: the message does not repeat it.
                    redis::parse_redis_url(url).ok_or_else(|| {
                        ConfigError(
                            "--redis-url is not a redis://, rediss:// or redis+unix:// URL".into(),
                        )
                    })?;
                    StoreChoice::Redis(url.clone())
                }
                (None, []) => StoreChoice::Memory,
                (None, nodes) => {
                    StoreChoice::Cluster(parse_node_urls("--redis-cluster-nodes", nodes)?)
                }
            },
        )
    }

    fn server_secrets(&self) -> Result<ServerSecrets, ConfigError> {
        let path = self.server_secret_file.as_deref().ok_or_else(|| {
            ConfigError(
                "--server-secret-file (KEYRACK_SERVER_SECRET_FILE) is required with Redis: \
                 a file of at least 32 bytes, e.g. from `openssl rand -base64 32`"
                    .into(),
            )
        })?;
        let current = read_secret(path, self.server_secret_version)?;
        let previous = match &self.previous_server_secret_file {
            Some(path) if self.server_secret_version > 1 => {
                vec![read_secret(path, self.server_secret_version - 1)?]
            }
            Some(_) => {
                return Err(ConfigError(
                    "--previous-server-secret-file needs --server-secret-version of 2 or more"
                        .into(),
                ));
            }
            None => Vec::new(),
        };
        Ok(ServerSecrets::Files { current, previous })
    }

    /// The record cache's bound, `None` when off; a bound outside 1 ms to
    /// 10 s is refused (a fence every quarter of it must be possible, and a
    /// longer one would make revocation slow).
    fn verify_cache_max_staleness(&self) -> Result<Option<Duration>, ConfigError> {
        if self.verify_cache == VerifyCacheMode::Off {
            return Ok(None);
        }
        let bound = self.verify_cache_max_staleness;
        if bound < Duration::from_millis(1) || bound > Duration::from_secs(10) {
            return Err(ConfigError(
                "--verify-cache-max-staleness must be between 1ms and 10s".into(),
            ));
        }
        Ok(Some(bound))
    }

    /// The durability the flags ask for, checked against the other flags.
    fn durability(&self) -> Result<Durability, ConfigError> {
        if self.durability == DurabilityMode::None {
            return Ok(Durability::None);
        }
        if !self.redis_cluster_nodes.is_empty() {
            // WAIT must run on the primary that took the write; with Cluster
            // that is a different node per identity, which redis-rs does not
            // expose for an unkeyed command.
            return Err(ConfigError(
                "--durability is not supported with --redis-cluster-nodes; use a standalone or Sentinel-managed Redis, or AOF on every shard".into(),
            ));
        }
        if self.redis_url.is_none() && self.redis_sentinel.is_empty() {
            return Err(ConfigError(
                "--durability needs --redis-url or --redis-sentinel (the embedded store keeps nothing)".into(),
            ));
        }
        if self.durability_timeout >= self.redis_timeout {
            return Err(ConfigError(
                "--durability-timeout must be shorter than --redis-timeout".into(),
            ));
        }
        let (replicas, timeout) = (self.durability_replicas, self.durability_timeout);
        Ok(match self.durability {
            DurabilityMode::Replica if replicas == 0 => {
                return Err(ConfigError(
                    "--durability replica needs --durability-replicas of 1 or more".into(),
                ));
            }
            DurabilityMode::Replica => Durability::Replica { replicas, timeout },
            _ => Durability::Aof { replicas, timeout },
        })
    }
}

/// Node URLs of a multi-node flag, checked; errors name the entry, not the
/// URL (it may hold a password).
fn parse_node_urls(flag: &str, nodes: &[String]) -> Result<Vec<String>, ConfigError> {
    nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let node = node.trim();
            redis::parse_redis_url(node)
                .map(|_| node.to_owned())
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{flag} entry {} is not a redis:// or rediss:// URL",
                        index + 1
                    ))
                })
        })
        .collect()
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{flag} {}: {e}", path.display())))
}

/// The TLS files `serve` was given, read at start.
pub struct TlsMaterial {
    /// PEM certificate chain.
    pub cert_chain: Vec<u8>,
    /// PEM private key of the chain.
    pub key: Vec<u8>,
    /// PEM CA certificates client certificates must be signed by (mutual
    /// TLS), if any.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("key", &"[redacted]")
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Webhook delivery as the flags ask for it.
pub struct WebhookConfig {
    /// The http:// or https:// URL events are POSTed to.
    pub url: http::Uri,
    /// The PEM certificates of `--webhook-ca-file`, if given: authorities
    /// an https:// endpoint may be certified by besides the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The signing secret file's content (`whsec_<base64>`), trailing
    /// whitespace removed; `service::webhooks::WebhookSecret::parse` reads it.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Expiry warnings as the flags ask for them.
#[derive(Debug, Clone)]
pub struct ExpiryConfig {
    /// Lead times of KEY_EXPIRING.
    pub lead_times: LeadTimes,
    /// How often one replica sweeps for keys to warn of.
    pub sweep_interval: Duration,
}

/// Everything `serve` reads at start, checked: files read, flags checked
/// against each other. Flags that need no check are read from `ServeArgs`.
#[derive(Debug)]
pub struct ServeConfig {
    /// Store and secrets.
    pub store: StoreConfig,
    /// TLS for gRPC (and SCIM and the console); plaintext when `None`.
    pub tls: Option<TlsMaterial>,
    /// Webhook delivery, if asked for.
    pub webhooks: Option<WebhookConfig>,
    /// Expiry warnings.
    pub expiry: ExpiryConfig,
    /// Most gRPC connections open at once.
    pub grpc_max_connections: usize,
    /// When an idle gRPC connection is closed.
    pub grpc_idle_timeout: Duration,
}

impl ServeArgs {
    /// Every flag of `serve` at its default, whatever the environment's
    /// `KEYRACK_*` variables say: the defaults of the library's callers
    /// (tests, the embedded benchmark), from the one place they are written.
    pub fn defaults() -> Self {
        let command = Self::augment_args(clap::Command::new("keyrack"))
            .mut_args(|arg| arg.env(None::<&'static str>));
        // No argument and no variable: the parse can only fail if a default
        // itself does not parse, which the unit tests below would show.
        command
            .try_get_matches_from(["keyrack"])
            .and_then(|matches| Self::from_arg_matches(&matches))
            .expect("the defaults of serve's flags parse")
    }

    /// Checks the flags and reads the files they name; contacts nothing.
    pub fn load(&self) -> Result<ServeConfig, ConfigError> {
        let store = self.store.load()?;
        if !store.is_dev_mode() && self.admin_token_file.is_some() {
            return Err(ConfigError(
                "--admin-token-file is for dev mode; use `keyrack bootstrap-admin` with Redis"
                    .into(),
            ));
        }
        let (grpc_max_connections, grpc_idle_timeout) = self.grpc_connection_limits()?;
        Ok(ServeConfig {
            store,
            tls: self.tls()?,
            webhooks: self.webhooks()?,
            expiry: self.expiry()?,
            grpc_max_connections,
            grpc_idle_timeout,
        })
    }

    /// The gRPC listener's connection bounds, checked against each other.
    fn grpc_connection_limits(&self) -> Result<(usize, Duration), ConfigError> {
        if self.grpc_max_connections == 0 {
            return Err(ConfigError(
                "--grpc-max-connections must be at least 1".into(),
            ));
        }
        if self.grpc_idle_timeout <= self.http2_keepalive_interval {
            return Err(ConfigError(
                "--grpc-idle-timeout must exceed --http2-keepalive-interval, or idle clients' connections are closed between pings".into(),
            ));
        }
        Ok((self.grpc_max_connections, self.grpc_idle_timeout))
    }

    /// Webhook delivery as the flags ask for it; `None` without a URL.
    fn webhooks(&self) -> Result<Option<WebhookConfig>, ConfigError> {
        let (Some(url), Some(secret_file)) = (&self.webhook_url, &self.webhook_secret_file) else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ConfigError(format!("--webhook-url {url:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError(format!(
                "--webhook-url {url:?}: must be an http:// or https:// URL"
            )));
        }
        let mut content = Zeroizing::new(std::fs::read_to_string(secret_file).map_err(|e| {
            ConfigError(format!(
                "cannot read webhook secret file {}: {e}",
                secret_file.display()
            ))
        })?);
        let kept = content.trim_end().len();
        content.truncate(kept);
        let ca_pem = self
            .webhook_ca_file
            .as_deref()
            .map(|ca_file| read_pem("--webhook-ca-file", ca_file))
            .transpose()?;
        Ok(Some(WebhookConfig {
            url: uri,
            ca_pem,
            secret: content,
        }))
    }

    /// Expiry warnings as the flags ask for them.
    fn expiry(&self) -> Result<ExpiryConfig, ConfigError> {
        let lead_times = LeadTimes::parse(&self.expiry_warnings)
            .map_err(|why| ConfigError(format!("--expiry-warnings: {why}")))?;
        if self.expiry_sweep_interval < Duration::from_secs(1) {
            return Err(ConfigError(
                "--expiry-sweep-interval must be at least 1s".into(),
            ));
        }
        Ok(ExpiryConfig {
            lead_times,
            sweep_interval: self.expiry_sweep_interval,
        })
    }

    /// The TLS files the flags name, read now; `None` serves plaintext.
    fn tls(&self) -> Result<Option<TlsMaterial>, ConfigError> {
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) if self.tls_client_ca_file.is_some() => {
                return Err(ConfigError(
                    "--tls-client-ca-file needs --tls-cert-file and --tls-key-file".into(),
                ));
            }
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(ConfigError(
                    "--tls-cert-file and --tls-key-file go together".into(),
                ));
            }
        };
        Ok(Some(TlsMaterial {
            cert_chain: read_pem("--tls-cert-file", cert)?,
            key: read_pem("--tls-key-file", key)?,
            client_ca: self
                .tls_client_ca_file
                .as_deref()
                .map(|ca| read_pem("--tls-client-ca-file", ca))
                .transpose()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_pass_their_own_checks() {
        let args = ServeArgs::defaults();
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        let config = args.load().unwrap();
        assert!(config.store.is_dev_mode());
        assert_eq!(config.store.durability, Durability::None);
    }

    #[test]
    fn the_audit_bound_default_is_the_stores_own() {
        // The store keeps a default for callers that build it directly
        // (tests); the flag's default must say the same.
        assert_eq!(
            ServeArgs::defaults().store.audit_max_events,
            crate::store::DEFAULT_AUDIT_MAX_EVENTS
        );
    }

    #[test]
    fn an_admin_token_file_with_redis_is_refused_before_redis_is_contacted() {
        // Nothing listens on port 1: a check that contacted Redis would fail
        // with another message, after its connect timeout.
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), b"0123456789abcdef0123456789abcdef").unwrap();
        let mut args = ServeArgs::defaults();
        args.admin_token_file = Some("/nonexistent/token".into());
        args.store.redis_url = Some("redis://127.0.0.1:1".into());
        args.store.server_secret_file = Some(secret.path().to_owned());
        let error = args.load().unwrap_err();
        assert!(error.0.contains("--admin-token-file"), "{error}");
    }
}
