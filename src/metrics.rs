//! Prometheus metrics: one process-wide registry that every layer counts into
//! (counters are atomics, so the hot path pays a few relaxed increments), and
//! the `/metrics` endpoint `--metrics-listen` serves. Every metric is listed
//! in the README.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::LazyLock;
use tokio::net::TcpListener;

/// A gRPC method and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`, or `unknown`.
    pub method: &'static str,
    /// The gRPC status code name, e.g. `OK`, `UNAVAILABLE`.
    pub code: &'static str,
}

/// A gRPC method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `/package.Service/Method`, or `unknown`.
    pub method: &'static str,
}

/// A Verify outcome: the verdict's code, or the error that stopped it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `VALID`, `UNKNOWN`, ... or a gRPC code for errors.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s: Verify's cached path sits at the bottom,
    // argon2 and Admin writes in the middle, timeouts at the top.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Everything keyrack measures.
pub struct Metrics {
    registry: Registry,
    /// Finished gRPC calls by method and status.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// gRPC call latency by method (Verify and every Admin method).
    pub rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Verify outcomes by code.
    pub verify_outcomes: Family<OutcomeLabels, Counter>,
    /// Verifications settled without argon2 (the record's hash was the one
    /// the token matched before).
    pub verify_cache_hits: Counter,
    /// Verifications that needed argon2.
    pub verify_cache_misses: Counter,
    /// Entries in the verified-token cache.
    pub verify_cache_entries: Gauge,
    /// Verifications waiting for an argon2 slot.
    pub argon2_waiting: Gauge,
    /// argon2 checks running.
    pub argon2_running: Gauge,
    /// Verifications refused because every argon2 slot stayed busy.
    pub argon2_rejected: Counter,
    /// Wrong answers held back: known-wrong tokens, and key ids past their
    /// failure budget.
    pub verify_throttled: Counter,
    /// Redis commands that failed (connection lost, timeout, refused).
    pub redis_errors: Counter,
    /// Times the store answered again after health pings had failed: the
    /// connection was re-established. (redis-rs reports lost connections
    /// only to RESP3 clients, so recoveries are counted where they show.)
    pub redis_reconnects: Counter,
    /// 1 while the store answers health pings, else 0.
    pub health_serving: Gauge,
    /// Audit events appended.
    pub audit_events: Counter,
    /// Keys whose hash was made under an older server secret: counted at
    /// start, less each one re-hashed since.
    pub keys_under_older_secret: Gauge,
    /// Admins' TOTP seeds sealed under an older server secret: counted at
    /// start, less each one re-sealed since.
    pub totp_seeds_under_older_secret: Gauge,
    /// SCIM requests by HTTP status.
    pub scim_requests: Family<ScimLabels, Counter>,
    /// Verify reads answered from the tracked record cache.
    pub record_cache_hits: Counter,
    /// Verify reads the tracked record cache could not answer.
    pub record_cache_misses: Counter,
    /// Records Redis invalidated (one per key named in a push).
    pub record_cache_invalidations: Counter,
    /// Times the tracking link was lost and the record cache emptied.
    pub record_cache_link_resets: Counter,
    /// Records in the tracked record cache.
    pub record_cache_entries: Gauge,
    /// Age of the tracking link's last completed fence.
    pub record_cache_fence_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Honeytokens presented to Verify (or as an admin token).
    pub honeytoken_uses: Counter,
    /// Events the webhook endpoint accepted.
    pub webhook_deliveries: Counter,
    /// Webhook attempts that failed (refused, unreachable, timed out); each
    /// is retried.
    pub webhook_failures: Counter,
}

/// A SCIM request's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScimLabels {
    /// The HTTP method: a standard one, or `OTHER`, so callers cannot invent
    /// labels.
    pub method: &'static str,
    /// The HTTP status code.
    pub status: u16,
}

impl Metrics {
    fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("keyrack"),
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            verify_outcomes: Family::default(),
            verify_cache_hits: Counter::default(),
            verify_cache_misses: Counter::default(),
            verify_cache_entries: Gauge::default(),
            argon2_waiting: Gauge::default(),
            argon2_running: Gauge::default(),
            argon2_rejected: Counter::default(),
            verify_throttled: Counter::default(),
            redis_errors: Counter::default(),
            redis_reconnects: Counter::default(),
            health_serving: Gauge::default(),
            audit_events: Counter::default(),
            keys_under_older_secret: Gauge::default(),
            totp_seeds_under_older_secret: Gauge::default(),
            scim_requests: Family::default(),
            record_cache_hits: Counter::default(),
            record_cache_misses: Counter::default(),
            record_cache_invalidations: Counter::default(),
            record_cache_link_resets: Counter::default(),
            record_cache_entries: Gauge::default(),
            record_cache_fence_age: Gauge::default(),
            honeytoken_uses: Counter::default(),
            webhook_deliveries: Counter::default(),
            webhook_failures: Counter::default(),
        };
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        metrics
            .registry
            .register("build_info", "keyrack's version; always 1", build_info);
        metrics.registry.register(
            "grpc_server_requests",
            "Finished gRPC calls by method and status code",
            metrics.rpc_requests.clone(),
        );
        metrics.registry.register(
            "grpc_server_duration_seconds",
            "gRPC call latency by method",
            metrics.rpc_duration.clone(),
        );
        metrics.registry.register(
            "verify_outcomes",
            "Verify and ext_authz Check answers by code (VALID, UNKNOWN, ...) or the gRPC error that stopped it",
            metrics.verify_outcomes.clone(),
        );
        metrics.registry.register(
            "verify_cache_hits",
            "Verifications settled without argon2",
            metrics.verify_cache_hits.clone(),
        );
        metrics.registry.register(
            "verify_cache_misses",
            "Verifications that ran argon2",
            metrics.verify_cache_misses.clone(),
        );
        metrics.registry.register(
            "verify_cache_entries",
            "Tokens in the verified-token cache",
            metrics.verify_cache_entries.clone(),
        );
        metrics.registry.register(
            "argon2_waiting",
            "Verifications waiting for an argon2 slot",
            metrics.argon2_waiting.clone(),
        );
        metrics.registry.register(
            "argon2_running",
            "argon2 checks running",
            metrics.argon2_running.clone(),
        );
        metrics.registry.register(
            "argon2_rejected",
            "Verifications refused because every argon2 slot stayed busy",
            metrics.argon2_rejected.clone(),
        );
        metrics.registry.register(
            "verify_throttled",
            "Wrong answers held back: known-wrong tokens, and key ids past their failure budget",
            metrics.verify_throttled.clone(),
        );
        metrics.registry.register(
            "redis_errors",
            "Redis commands that failed",
            metrics.redis_errors.clone(),
        );
        metrics.registry.register(
            "redis_reconnects",
            "Times the store answered health pings again after failing them (connection re-established)",
            metrics.redis_reconnects.clone(),
        );
        metrics.registry.register(
            "health_serving",
            "1 while the store answers health pings, else 0",
            metrics.health_serving.clone(),
        );
        metrics.registry.register(
            "webhook_deliveries",
            "Events the webhook endpoint accepted",
            metrics.webhook_deliveries.clone(),
        );
        metrics.registry.register(
            "webhook_failures",
            "Webhook delivery attempts that failed; each is retried with backoff",
            metrics.webhook_failures.clone(),
        );
        metrics.registry.register(
            "honeytoken_uses",
            "Honeytokens presented to Verify or as an admin token",
            metrics.honeytoken_uses.clone(),
        );
        metrics.registry.register(
            "audit_events",
            "Audit events appended",
            metrics.audit_events.clone(),
        );
        metrics.registry.register(
            "keys_under_older_secret",
            "Keys hashed under an older server secret (counted at start, less those re-hashed since)",
            metrics.keys_under_older_secret.clone(),
        );
        metrics.registry.register(
            "totp_seeds_under_older_secret",
            "Admins' TOTP seeds sealed under an older server secret (counted at start, less those re-sealed since)",
            metrics.totp_seeds_under_older_secret.clone(),
        );
        metrics.registry.register(
            "scim_requests",
            "SCIM requests by method and HTTP status",
            metrics.scim_requests.clone(),
        );
        metrics.registry.register(
            "record_cache_hits",
            "Verify reads answered from the tracked record cache",
            metrics.record_cache_hits.clone(),
        );
        metrics.registry.register(
            "record_cache_misses",
            "Verify reads the tracked record cache could not answer (read from Redis)",
            metrics.record_cache_misses.clone(),
        );
        metrics.registry.register(
            "record_cache_invalidations",
            "Cached records Redis invalidated",
            metrics.record_cache_invalidations.clone(),
        );
        metrics.registry.register(
            "record_cache_link_resets",
            "Times the Redis tracking link was lost and the record cache emptied",
            metrics.record_cache_link_resets.clone(),
        );
        metrics.registry.register(
            "record_cache_entries",
            "Records in the tracked record cache",
            metrics.record_cache_entries.clone(),
        );
        metrics.registry.register(
            "record_cache_fence_age_seconds",
            "Age of the tracking link's last completed fence; the cache serves only below --verify-cache-max-staleness",
            metrics.record_cache_fence_age.clone(),
        );
        metrics
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The `/metrics` endpoint.
pub fn router() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    )],
                    metrics().render(),
                )
            }),
        )
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "metrics are served at /metrics\n").into_response()
        })
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http_listener::serve(
        listener,
        router(),
        crate::http_listener::HttpLimits::default(),
        shutdown,
    )
    .await
}
