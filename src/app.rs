//! Wiring for the binary: turns the checked configuration (`config.rs`, plain
//! data) into the keyring, the store, the authority and the servers, and runs
//! the chosen command.

use crate::config::{
    BootstrapArgs, Cli, Command, ConfigError, HealthArgs, ImportArgs, ProtosetArgs, ReflectionMode,
    ServeArgs, ServeConfig, ServerSecrets, StoreArgs, StoreChoice, StoreConfig, TlsMaterial,
};
use crate::grpc::reflection::ReflectionAccess;
use crate::server::{self, ServerOptions};
use crate::service::expiry::ExpiryOptions;
use crate::service::hashing::HashPolicy;
use crate::service::keyring::Keyring;
use crate::service::webhooks::{WebhookOptions, WebhookSecret};
use crate::service::{Authority, AuthorityOptions};
use crate::store::Store;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore, VerifyCacheOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Name of the admin identity dev mode creates.
pub const DEV_ADMIN_NAME: &str = "dev_admin";

/// Why the binary stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// The authority refused (e.g. bootstrap when an admin exists).
    #[error("{0}")]
    Refused(String),
}

/// Runs the command the command line chose.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::BootstrapAdmin(args)) => bootstrap_admin(args).await,
        Some(Command::Protoset(args)) => protoset(args),
        Some(Command::Health(args)) => health(args).await,
        Some(Command::Import(args)) => import(args).await,
    }
}

/// The hasher and the TOTP sealer, keyed with the configured secrets.
fn keyring(secrets: ServerSecrets) -> Result<Keyring, ConfigError> {
    match secrets {
        ServerSecrets::Random => Ok(Keyring::random()),
        ServerSecrets::Files { current, previous } => {
            Keyring::new(current, previous, HashPolicy::default())
                .map_err(|e| ConfigError(format!("--server-secret-file: {e}")))
        }
    }
}

/// Builds the authority over the configured store; `options` says all but
/// the token prefix, which comes from the store flags. The keyring is built
/// before Redis is contacted, so a bad secret stops the start first.
async fn open_authority(
    args: &StoreArgs,
    config: StoreConfig,
    mut options: AuthorityOptions,
) -> Result<(Arc<Authority>, bool), RunError> {
    let keyring = keyring(config.secrets)?;
    let durability = config.durability;
    // Each verified token needs its key and its identity record.
    let verify_cache = config
        .verify_cache_max_staleness
        .map(|max_staleness| VerifyCacheOptions {
            max_staleness,
            max_records: options.guard.verified_entries.saturating_mul(2),
        });
    options.token_prefix = config.token_prefix;
    // Sentinel and Cluster find their servers themselves: no URL.
    let redis_options = |url: String| RedisOptions {
        url,
        key_prefix: args.redis_prefix.clone(),
        connect_timeout: args.redis_timeout,
        response_timeout: args.redis_timeout,
        durability,
        writer_pool_size: usize::from(args.redis_writer_pool_size),
        audit_max_events: args.audit_max_events,
    };
    let (store, dev_mode): (Arc<dyn Store>, bool) = match config.store {
        StoreChoice::Memory => (
            Arc::new(MemoryStore::with_audit_limit(args.audit_max_events)),
            true,
        ),
        StoreChoice::Redis(url) => {
            let mut store = RedisStore::connect(&redis_options(url), args.redis_connect_wait)
                .await
                .map_err(|e| ConfigError(format!("cannot reach Redis: {e}")))?;
            enable_verify_cache(&mut store, verify_cache).await?;
            warn_unless_noeviction(store.maxmemory_policy().await.as_deref());
            (Arc::new(store), false)
        }
        StoreChoice::Sentinel { sentinels, master } => {
            let options = redis_options(String::new());
            let mut store = RedisStore::connect_sentinel(
                &sentinels,
                &master,
                &options,
                args.redis_connect_wait,
            )
            .await
            .map_err(|e| ConfigError(format!("cannot reach Redis through Sentinel: {e}")))?;
            enable_verify_cache(&mut store, verify_cache).await?;
            warn_unless_noeviction(store.maxmemory_policy().await.as_deref());
            (Arc::new(store), false)
        }
        StoreChoice::Cluster(nodes) => {
            let options = redis_options(String::new());
            let mut store = RedisStore::connect_cluster(&nodes, &options, args.redis_connect_wait)
                .await
                .map_err(|e| ConfigError(format!("cannot reach Redis Cluster: {e}")))?;
            enable_verify_cache(&mut store, verify_cache).await?;
            warn_unless_noeviction(store.maxmemory_policy().await.as_deref());
            (Arc::new(store), false)
        }
    };
    Ok((Arc::new(Authority::new(store, keyring, options)), dev_mode))
}

/// Turns on Verify's record cache when `--verify-cache tracked` asked for it.
async fn enable_verify_cache<C>(
    store: &mut RedisStore<C>,
    options: Option<VerifyCacheOptions>,
) -> Result<(), RunError>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    if let Some(options) = options {
        store
            .enable_verify_cache(options)
            .await
            .map_err(|e| ConfigError(format!("cannot start Verify's record cache: {e}")))?;
    }
    Ok(())
}

/// Warns when Redis may evict keyrack's records.
fn warn_unless_noeviction(policy: Option<&str>) {
    match policy {
        Some("noeviction") => {}
        Some(policy) => tracing::warn!(
            policy,
            "Redis maxmemory-policy is not noeviction: under memory pressure Redis may evict keyrack's records, \
             including rolled keys in grace; set `maxmemory-policy noeviction`"
        ),
        None => tracing::warn!(
            "cannot read Redis maxmemory-policy (CONFIG GET refused); make sure it is noeviction"
        ),
    }
}

/// Who may use reflection, as the server takes it.
fn reflection_access(mode: ReflectionMode) -> ReflectionAccess {
    match mode {
        ReflectionMode::Gated => ReflectionAccess::Gated,
        ReflectionMode::Open => ReflectionAccess::Open,
        ReflectionMode::Off => ReflectionAccess::Off,
    }
}

/// The gRPC listener's TLS: mutual when a client CA was given.
fn grpc_tls(material: &TlsMaterial) -> tonic::transport::ServerTlsConfig {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let config =
        ServerTlsConfig::new().identity(Identity::from_pem(&material.cert_chain, &material.key));
    match &material.client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// The HTTP listeners' TLS (SCIM and the console): the same certificate, no
/// client certificate (identity providers and browsers authenticate
/// otherwise), HTTP/1.1.
fn http_tls(material: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(&material.cert_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("--tls-cert-file is not PEM certificates: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| ConfigError(format!("--tls-key-file is not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| ConfigError(format!("--tls-cert-file and --tls-key-file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The gRPC server's options for checked flags. Webhooks are left out: `serve`
/// adds them once their secret is parsed.
fn server_options(args: &ServeArgs, config: &ServeConfig) -> ServerOptions {
    ServerOptions {
        reflection: reflection_access(args.reflection),
        shutdown_timeout: args.shutdown_timeout,
        health_interval: server::HEALTH_INTERVAL,
        last_use_flush_interval: args.last_use_flush_interval,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: args.request_timeout,
        max_concurrent_streams: args.max_concurrent_streams,
        http2_keepalive_interval: args.http2_keepalive_interval,
        http2_keepalive_timeout: server::HTTP2_KEEPALIVE_TIMEOUT,
        max_connections: config.grpc_max_connections,
        connection_idle_timeout: config.grpc_idle_timeout,
        tls: config.tls.as_ref().map(grpc_tls),
        audit_max_age: args.audit_max_age,
        ext_authz: crate::grpc::ExtAuthzOptions {
            token_header: args.ext_authz_token_header.clone(),
            keep_credential: args.ext_authz_keep_credential,
        },
        webhooks: None,
        expiry: ExpiryOptions {
            lead_times: config.expiry.lead_times.clone(),
            sweep_interval: config.expiry.sweep_interval,
            ..ExpiryOptions::default()
        },
    }
}

/// The gRPC server's options with every flag at its default: what the
/// library's callers that build a server themselves (tests, the embedded
/// benchmark) start from, so the defaults stay written once, in clap.
pub fn default_server_options() -> ServerOptions {
    let args = ServeArgs::defaults();
    // The defaults pass their own checks (a unit test in config.rs holds it).
    let config = args.load().expect("the default flags pass their checks");
    server_options(&args, &config)
}

async fn serve(args: ServeArgs) -> Result<(), RunError> {
    // Signal handlers go in before anything else, so a SIGTERM that arrives
    // while starting still means a graceful stop rather than the default kill.
    let shutdown = shutdown_signal()
        .map_err(|e| ConfigError(format!("cannot watch shutdown signals: {e}")))?;
    // Every flag and file is checked before Redis is contacted or a port bound.
    let mut config = args.load()?;
    let mut options = server_options(&args, &config);
    options.webhooks = match config.webhooks.take() {
        Some(webhooks) => {
            let secret = WebhookSecret::parse(&webhooks.secret)
                .map_err(|why| ConfigError(format!("--webhook-secret-file: {why}")))?;
            let mut options = WebhookOptions::new(webhooks.url, secret);
            if let Some(ca_pem) = &webhooks.ca_pem {
                options
                    .trust_ca_pem(ca_pem)
                    .map_err(|why| ConfigError(format!("--webhook-ca-file: {why}")))?;
            }
            Some(options)
        }
        None => None,
    };
    let scim_tls = match (&config.tls, args.scim_listen) {
        (Some(material), Some(_)) => Some(http_tls(material)?),
        _ => None,
    };
    // The console speaks HTTP/1.1 with the same certificate as SCIM.
    let console_tls = match (&config.tls, args.console_listen) {
        (Some(material), Some(_)) => Some(http_tls(material)?),
        _ => None,
    };
    let mut authority_options = AuthorityOptions {
        totp_for_roll: !args.no_totp_for_roll,
        ..AuthorityOptions::default()
    };
    authority_options.guard.verified_entries = args.verify_cache_entries;
    let (authority, dev_mode) =
        open_authority(&args.store, config.store, authority_options).await?;
    if args.no_totp_for_roll {
        tracing::warn!(
            "--no-totp-for-roll: RollKey will NOT ask for a TOTP code; any admin token can roll any key. Use only in development."
        );
    }
    // Created before anything binds, so a path that is taken stops the start.
    // (`ServeArgs::load` refused the flag outside dev mode.)
    let admin_token_file = match &args.admin_token_file {
        Some(path) => Some(create_private_file(path).map_err(|e| {
            ConfigError(format!(
                "cannot create --admin-token-file {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| ConfigError(format!("cannot listen on {}: {e}", args.listen)))?;
    let scim_listener = bind_optional("--scim-listen", args.scim_listen).await?;
    let console_listener = bind_optional("--console-listen", args.console_listen).await?;
    let metrics_listener = bind_optional("--metrics-listen", args.metrics_listen).await?;
    if dev_mode {
        tracing::warn!(
            "dev mode: embedded in-memory store; all state is lost on exit (use --redis-url in production)"
        );
        let (_, minted) = authority
            .create_admin(DEV_ADMIN_NAME, "created by dev mode")
            .await
            .map_err(|e| RunError::Refused(format!("cannot create the dev admin: {e}")))?;
        if let Some(mut file) = admin_token_file {
            writeln!(file, "{}", minted.token.expose())
                .map_err(|e| ConfigError(format!("cannot write --admin-token-file: {e}")))?;
        }
        println!("dev admin token: {}", minted.token.expose());
        let _ = std::io::stdout().flush();
    }
    tracing::info!(address = %listener.local_addr().map_err(|e| ConfigError(e.to_string()))?, "keyrack listening");
    // One signal stops both servers: gRPC drains its calls while SCIM
    // finishes its requests.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let scim = match scim_listener {
        Some(scim_listener) => {
            let address = scim_listener
                .local_addr()
                .map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(%address, path = crate::scim::SCIM_ROOT, "SCIM listening");
            let scim_options = crate::scim::ScimOptions {
                request_timeout: args.request_timeout,
                tls: scim_tls,
            };
            Some(tokio::spawn(crate::scim::serve(
                scim_listener,
                Arc::clone(&authority),
                scim_options,
                stopped(stopping.clone()),
            )))
        }
        None => None,
    };
    let console = match console_listener {
        Some(console_listener) => {
            let address = console_listener
                .local_addr()
                .map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(%address, "admin console listening");
            let console_options = crate::console::ConsoleOptions {
                request_timeout: args.request_timeout,
                session_ttl: args.console_session_ttl,
                tls: console_tls,
            };
            Some(tokio::spawn(crate::console::serve(
                console_listener,
                Arc::clone(&authority),
                console_options,
                stopped(stopping.clone()),
            )))
        }
        None => None,
    };
    if let Some(metrics_listener) = metrics_listener {
        let address = metrics_listener
            .local_addr()
            .map_err(|e| ConfigError(e.to_string()))?;
        tracing::info!(%address, "metrics at /metrics");
        let shutdown = stopped(stopping.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(metrics_listener, shutdown).await {
                tracing::error!(%error, "metrics server failed");
            }
        });
    }
    server::serve(listener, authority, options, stopped(stopping)).await?;
    if let Some(scim) = scim {
        match tokio::time::timeout(args.shutdown_timeout, scim).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "SCIM server failed"),
            Ok(Err(error)) => tracing::error!(%error, "SCIM server task failed"),
            Err(_) => tracing::warn!("SCIM requests still running at the shutdown timeout"),
        }
    }
    if let Some(console) = console {
        match tokio::time::timeout(args.shutdown_timeout, console).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "console server failed"),
            Ok(Err(error)) => tracing::error!(%error, "console server task failed"),
            Err(_) => tracing::warn!("console requests still running at the shutdown timeout"),
        }
    }
    tracing::info!("keyrack stopped");
    Ok(())
}

/// Binds `address` when the flag `flag` gave one.
async fn bind_optional(
    flag: &str,
    address: Option<std::net::SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, ConfigError> {
    match address {
        Some(address) => tokio::net::TcpListener::bind(address)
            .await
            .map(Some)
            .map_err(|e| ConfigError(format!("cannot listen on {flag} {address}: {e}"))),
        None => Ok(None),
    }
}

/// Completes once `stopping` turns true.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

async fn bootstrap_admin(args: BootstrapArgs) -> Result<(), RunError> {
    if !args.store.names_redis() {
        return Err(ConfigError(
            "bootstrap-admin needs Redis (--redis-url, --redis-cluster-nodes or --redis-sentinel): the embedded store lives only inside `keyrack serve`, which prints its own dev admin token".into(),
        )
        .into());
    }
    crate::domain::names::parse_name(&args.name).map_err(|e| ConfigError(format!("--name {e}")))?;
    let config = args.store.load()?;
    let (authority, _) = open_authority(&args.store, config, AuthorityOptions::default()).await?;
    let refused = |e: crate::domain::Error| RunError::Refused(e.to_string());
    if !args.force && authority.admin_exists().await.map_err(refused)? {
        return Err(RunError::Refused(
            "an admin identity already exists; pass --force to create another".into(),
        ));
    }
    let (identity, minted) = authority
        .create_admin(&args.name, "created by keyrack bootstrap-admin")
        .await
        .map_err(refused)?;
    tracing::info!(identity_id = %identity.id, name = %identity.name, "admin created");
    println!("{}", minted.token.expose());
    Ok(())
}

/// Reads an AWS API Gateway API key file: a header naming at least `Name`
/// and `Key` (`Description` and `Enabled` optional; other columns ignored).
fn read_api_key_file(path: &std::path::Path) -> Result<Vec<crate::service::ImportedKey>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|header| header.eq_ignore_ascii_case(name))
    };
    let (Some(name_at), Some(key_at)) = (column("Name"), column("Key")) else {
        return Err(format!(
            "{}: the header must name the columns Name and Key (Name,Key,Description,Enabled)",
            path.display()
        ));
    };
    let (description_at, enabled_at) = (column("Description"), column("Enabled"));
    let mut keys = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("row {}: {e}", row + 2))?;
        let field = |at: Option<usize>| at.and_then(|at| record.get(at)).unwrap_or("");
        let disabled = match field(enabled_at).to_ascii_lowercase().as_str() {
            "" | "true" => false,
            "false" => true,
            other => {
                return Err(format!(
                    "row {}: Enabled must be true or false, not {other:?}",
                    row + 2
                ));
            }
        };
        keys.push(crate::service::ImportedKey {
            name: field(Some(name_at)).to_owned(),
            description: field(description_at).to_owned(),
            expire_time: None,
            token: crate::domain::SecretString::new(field(Some(key_at)).to_owned()),
            disabled,
        });
    }
    Ok(keys)
}

async fn import(args: ImportArgs) -> Result<(), RunError> {
    let identity = crate::domain::IdentityId::parse(&args.identity)
        .map_err(|e| ConfigError(format!("--identity {e}")))?;
    let keys = read_api_key_file(&args.csv).map_err(ConfigError)?;
    let mut violations = crate::domain::Violations::new();
    for (index, key) in keys.iter().enumerate() {
        violations.check(
            &format!("row {} Name", index + 2),
            crate::domain::names::parse_name(&key.name),
        );
        violations.check(
            &format!("row {} Description", index + 2),
            crate::domain::names::parse_description(&key.description),
        );
    }
    violations
        .finish()
        .map_err(|e| ConfigError(e.to_string()))?;
    let config = args.store.load()?;
    let (authority, _) = open_authority(&args.store, config, AuthorityOptions::default()).await?;
    // No caller: the operator of the host ran it, as with bootstrap-admin.
    let event = crate::service::audit::event(
        "ImportKeys",
        None,
        None,
        crate::service::audit::request_id(None),
    );
    let imported = authority
        .audited(event, authority.import_keys(&identity, keys), |error| {
            error.code_name().to_owned()
        })
        .await
        .map_err(|e| RunError::Refused(e.to_string()))?;
    for key in &imported {
        println!("{}\t{}", key.id, key.name);
    }
    tracing::info!(count = imported.len(), identity_id = %identity, "keys imported");
    Ok(())
}

/// Asks a running keyrack whether it serves; prints its answer.
async fn health(args: HealthArgs) -> Result<(), RunError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ask = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.target))
            .map_err(|e| format!("--target {}: {e}", args.target))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", args.target))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        Ok::<_, String>(answer.into_inner().status())
    };
    let status = tokio::time::timeout(args.timeout, ask)
        .await
        .map_err(|_| {
            RunError::Refused(format!(
                "no answer from {} within {:?}",
                args.target, args.timeout
            ))
        })?
        .map_err(RunError::Refused)?;
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(RunError::Refused(format!("{} is not serving", args.target)))
    }
}

fn protoset(args: ProtosetArgs) -> Result<(), RunError> {
    let bytes = crate::proto::protoset();
    let written = match &args.output {
        Some(path) => std::fs::write(path, &bytes),
        None => std::io::stdout()
            .write_all(&bytes)
            .and_then(|()| std::io::stdout().flush()),
    };
    written.map_err(|e| ConfigError(format!("cannot write the descriptor set: {e}")).into())
}

/// Writes `content` to a file only its owner can read.
/// Creates `path` for a secret: a new file (`O_CREAT | O_EXCL`, which also
/// refuses a symbolic link, dangling or not), readable by its owner only. An
/// existing file is refused rather than reused: another user could have
/// created it, opened it, or linked it elsewhere.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => std::io::Error::new(
                error.kind(),
                "it already exists (a file or link); it must be a new file, so remove it first",
            ),
            _ => error,
        })
}

/// Registers for Ctrl-C and SIGTERM now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
