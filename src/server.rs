//! Assembles the tonic server: Verify and Admin services with their message
//! limits, grpc.health.v1 driven by store pings, reflection (gated by
//! default), and a graceful shutdown with a hard bound.

use crate::grpc::limits::MessageLimitLayer;
use crate::grpc::reflection::{AdminGate, ReflectionAccess};
use crate::grpc::{AdminApi, ExtAuthzApi, ExtAuthzOptions, ExtAuthzServer, VerifyApi};
use crate::http_listener::IdleTimeout;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::verify_service_server::VerifyServiceServer;
use crate::service::Authority;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Largest Verify request accepted: a token and two short fields.
pub const MAX_VERIFY_MESSAGE_BYTES: usize = 4 * 1024;
/// Largest Admin request accepted.
pub const MAX_ADMIN_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest ext_authz Check accepted: Envoy sends every request header (and,
/// only when configured, some of the body), so it is larger than Verify's.
pub const MAX_EXT_AUTHZ_MESSAGE_BYTES: usize = 256 * 1024;

/// What tonic accepts from services given no limit (health, reflection).
const TONIC_DEFAULT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The path prefix of a service's methods.
fn methods_of<S: NamedService>() -> String {
    format!("/{}/", S::NAME)
}

/// How the server runs. There is no `Default`: the defaults are the flags'
/// (`config.rs`), and `app::default_server_options` builds options from them.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Who may use server reflection.
    pub reflection: ReflectionAccess,
    /// How long in-flight calls may take to finish once shutdown starts.
    pub shutdown_timeout: Duration,
    /// How often the store is pinged for health.
    pub health_interval: Duration,
    /// How often key last-use times are written to the store.
    pub last_use_flush_interval: Duration,
    /// Calls in progress across all connections; beyond it calls are shed
    /// at once with RESOURCE_EXHAUSTED rather than queued.
    pub max_concurrent_requests: usize,
    /// Longest a call may take.
    pub request_timeout: Duration,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval; a peer that does not answer within
    /// `http2_keepalive_timeout` is disconnected.
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Connections open at once; past it, further clients wait in the
    /// kernel's accept backlog (holding no descriptor) until one closes.
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is closed:
    /// one that never sends the HTTP/2 preface or stalls a TLS handshake
    /// (HTTP/2 keepalive starts only after the preface). Longer than
    /// `http2_keepalive_interval`, whose pings keep live connections moving.
    pub connection_idle_timeout: Duration,
    /// TLS (and, with a client CA, mutual TLS); plaintext without it.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Audit events older than this are dropped (checked with each
    /// last-use flush); `None` keeps them until the count bound drops them.
    pub audit_max_age: Option<Duration>,
    /// Where Envoy's ext_authz Check finds the credential, and whether it
    /// passes upstream.
    pub ext_authz: ExtAuthzOptions,
    /// Where events are POSTed, if anywhere.
    pub webhooks: Option<crate::service::webhooks::WebhookOptions>,
    /// When KEY_EXPIRING warnings go out, and how soon after a key's end
    /// its event comes.
    pub expiry: crate::service::expiry::ExpiryOptions,
}

/// How often a replica asks whether tokens were ever imported, until they
/// were: how soon another replica's first import is looked up here.
const IMPORTS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often the store is pinged for health (no flag sets it).
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How long an HTTP/2 keepalive ping may go unanswered (no flag sets it).
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The names health is reported under: the server as a whole and each service.
fn health_names() -> [&'static str; 4] {
    [
        "",
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
        <VerifyServiceServer<VerifyApi> as NamedService>::NAME,
        <ExtAuthzServer as NamedService>::NAME,
    ]
}

async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for name in health_names() {
        reporter.set_service_status(name, status).await;
    }
}

/// Pings the store and reports SERVING only while it answers within the interval.
async fn watch_store_health(
    authority: Arc<Authority>,
    reporter: HealthReporter,
    interval: Duration,
) {
    let mut last = None;
    loop {
        let answered = tokio::time::timeout(interval, authority.store().ping()).await;
        let status = match answered {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(error)) => {
                tracing::warn!(%error, "store ping failed");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!("store ping timed out");
                ServingStatus::NotServing
            }
        };
        let metrics = crate::metrics::metrics();
        metrics
            .health_serving
            .set(i64::from(status == ServingStatus::Serving));
        metrics
            .verify_cache_entries
            .set(i64::try_from(authority.cached_tokens()).unwrap_or(i64::MAX));
        if last == Some(ServingStatus::NotServing) && status == ServingStatus::Serving {
            metrics.redis_reconnects.inc();
        }
        if last != Some(status) {
            tracing::info!(?status, "health changed");
            report(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves keyrack on an already-bound listener until `shutdown` completes,
/// then drains in-flight calls for at most `options.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    authority: Arc<Authority>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    report(&reporter, ServingStatus::NotServing).await;
    let health_task = tokio::spawn(watch_store_health(
        Arc::clone(&authority),
        reporter.clone(),
        options.health_interval,
    ));

    let flusher = tokio::spawn(flush_last_use_periodically(
        Arc::clone(&authority),
        options.last_use_flush_interval,
        options.audit_max_age,
    ));

    let counted = Arc::clone(&authority);
    let count_under_older_secret = tokio::spawn(async move {
        if let Err(error) = counted.count_under_older_secret().await {
            tracing::warn!(%error, "could not count keys and TOTP seeds under an older server secret");
        }
    });

    let webhooks = options.webhooks.clone().map(|webhooks| {
        tokio::spawn(crate::service::webhooks::deliver(
            Arc::clone(authority.store()),
            webhooks,
        ))
    });

    let watched = Arc::clone(&authority);
    let imports_watch =
        tokio::spawn(async move { watched.watch_for_imports(IMPORTS_POLL_INTERVAL).await });

    let expiry = tokio::spawn(crate::service::expiry::run(
        Arc::clone(authority.store()),
        options.expiry.clone(),
    ));

    let verify = VerifyServiceServer::new(VerifyApi::new(Arc::clone(&authority)))
        .max_decoding_message_size(MAX_VERIFY_MESSAGE_BYTES);
    let admin = AdminServiceServer::new(AdminApi::new(Arc::clone(&authority)))
        .max_decoding_message_size(MAX_ADMIN_MESSAGE_BYTES);
    let ext_authz = ExtAuthzServer::new(
        ExtAuthzApi::new(Arc::clone(&authority), options.ext_authz.clone()),
        MAX_EXT_AUTHZ_MESSAGE_BYTES,
    );

    let limits = tower::ServiceBuilder::new()
        .layer(crate::grpc::telemetry::RpcTelemetryLayer)
        .layer(MessageLimitLayer::new(
            vec![
                (
                    methods_of::<VerifyServiceServer<VerifyApi>>(),
                    MAX_VERIFY_MESSAGE_BYTES,
                ),
                (
                    methods_of::<AdminServiceServer<AdminApi>>(),
                    MAX_ADMIN_MESSAGE_BYTES,
                ),
                (methods_of::<ExtAuthzServer>(), MAX_EXT_AUTHZ_MESSAGE_BYTES),
            ],
            TONIC_DEFAULT_MESSAGE_BYTES,
        ))
        .layer(crate::grpc::shedding::ConcurrencyLimitLayer::new(
            options.max_concurrent_requests,
        ));
    let mut builder = Server::builder()
        .timeout(options.request_timeout)
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_keepalive_interval(Some(options.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout));
    if let Some(tls) = options.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let mut routes = builder
        .layer(limits)
        .add_service(health)
        .add_service(verify)
        .add_service(admin)
        .add_service(ext_authz);
    if options.reflection != ReflectionAccess::Off {
        // Both versions describe everything served, error details included,
        // so grpcurl can decode google.rpc.BadRequest.
        let describe_all = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(crate::proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        let v1 = describe_all().build_v1()?;
        let v1alpha = describe_all().build_v1alpha()?;
        routes = match options.reflection {
            ReflectionAccess::Open => routes.add_service(v1).add_service(v1alpha),
            _ => routes
                .add_service(AdminGate::new(v1, Arc::clone(&authority)))
                .add_service(AdminGate::new(v1alpha, Arc::clone(&authority))),
        };
    }

    let incoming = bounded_incoming(
        listener,
        options.max_connections,
        options.connection_idle_timeout,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = routes.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    });
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => Some(result),
        () = shutdown => None,
    };
    let result = match result {
        Some(result) => result.map_err(ServeError::from),
        None => {
            tracing::info!(timeout = ?options.shutdown_timeout, "shutting down: draining in-flight calls");
            health_task.abort();
            crate::metrics::metrics().health_serving.set(0);
            report(&reporter, ServingStatus::NotServing).await;
            authority.end_event_streams();
            let _ = stop.send(());
            match tokio::time::timeout(options.shutdown_timeout, &mut server).await {
                Ok(result) => result.map_err(ServeError::from),
                Err(_) => {
                    tracing::warn!("shutdown timeout reached; closing remaining connections");
                    Ok(())
                }
            }
        }
    };
    health_task.abort();
    flusher.abort();
    count_under_older_secret.abort();
    imports_watch.abort();
    expiry.abort();
    if let Some(webhooks) = webhooks {
        webhooks.abort();
    }
    // What was noted since the last flush is not lost to a restart.
    authority.flush_last_use().await;
    result
}

/// Writes noted key uses every `interval`, and drops audit events past
/// `audit_max_age`.
async fn flush_last_use_periodically(
    authority: Arc<Authority>,
    interval: Duration,
    audit_max_age: Option<Duration>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        authority.flush_last_use().await;
        if let Some(max_age) = audit_max_age
            && let Err(error) = authority.trim_audit(max_age).await
        {
            tracing::warn!(%error, "could not trim the audit log");
        }
    }
}

/// How long accepting pauses after an accept error (out of descriptors, say),
/// rather than spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The connections of `listener`, at most `max_connections` open at once, each
/// closed once it moves no byte for `idle_timeout`. A connection is accepted
/// only when a slot is free, so clients past the cap wait in the kernel's
/// backlog and get in as soon as one closes, instead of being refused or
/// taking a descriptor; the idle timeout frees slots that clients hold
/// without speaking (no preface, a stalled TLS handshake), which HTTP/2
/// keepalive does not cover.
fn bounded_incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<BoundedConnection>> + Send + 'static {
    let open = Arc::new(Semaphore::new(max_connections.max(1)));
    futures_util::stream::unfold((listener, open), move |(listener, open)| async move {
        // The semaphore is never closed, so acquiring cannot fail.
        let slot = Arc::clone(&open).acquire_owned().await.ok()?;
        let accepted = match listener.accept().await {
            Ok((stream, _)) => {
                // Nagle's algorithm would hold small gRPC frames back for an ACK.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
                Ok(BoundedConnection {
                    io: IdleTimeout::new(stream, idle_timeout),
                    _slot: slot,
                })
            }
            Err(error) => {
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(error)
            }
        };
        Some((accepted, (listener, open)))
    })
}

/// An accepted gRPC connection: frees its slot when dropped, and reports its
/// peer like a plain TCP stream (reflection's gate and the CIDR checks read it).
struct BoundedConnection {
    io: IdleTimeout<tokio::net::TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for BoundedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.get_ref().connect_info()
    }
}

impl AsyncRead for BoundedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
