//! One span and one set of metrics per gRPC call: a tower layer around every
//! service. The span joins the caller's W3C `traceparent`; handlers add the
//! verify code and the ids involved; the layer records the gRPC status and
//! the latency. Method labels come from a fixed list, so no caller can grow
//! the metrics without bound by inventing paths.

use crate::metrics::{MethodLabels, RpcLabels, metrics};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// Span fields handlers fill in.
pub mod field {
    /// The verify code (Verify only).
    pub const VERIFY_CODE: &str = "keyrack.verify_code";
    /// The key the call was about: the verified key, or the caller's key.
    pub const KEY_ID: &str = "keyrack.key_id";
    /// The identity the call was about: the verified identity, or the caller.
    pub const IDENTITY_ID: &str = "keyrack.identity_id";
}

/// Every method keyrack serves, as `/package.Service/Method`.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    use prost::Message;
    let mut methods = HashSet::new();
    for encoded in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        crate::proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    methods
});

/// The label for `path`: itself when keyrack serves it, else `unknown`.
fn method_label(path: &str) -> &'static str {
    KNOWN_METHODS
        .get(path)
        .map_or("unknown", |known| known.as_str())
}

/// The gRPC status of a response: `grpc-status` in the headers (a
/// trailers-only answer, i.e. an error), else OK (keyrack's methods are unary,
/// so a response with a body ends OK or with an error before it).
fn status_of(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// The `SCREAMING_CASE` name of a status code, for metric labels.
pub use super::status::code_name;

/// Wraps services in [`RpcTelemetry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTelemetryLayer;

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        // Debug level: with trace export off and RUST_LOG at info, no span is
        // built on the hot path; with export on, keyrack's debug spans are on.
        let span = tracing::debug_span!(
            "rpc",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            keyrack.verify_code = tracing::field::Empty,
            keyrack.key_id = tracing::field::Empty,
            keyrack.identity_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            crate::telemetry::join_caller_trace(&span, request.headers());
        }
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = response.await;
                let code = match &result {
                    Ok(response) => status_of(response.headers()),
                    Err(_) => tonic::Code::Internal,
                };
                tracing::Span::current().record("rpc.grpc.status_code", code as i32);
                metrics()
                    .rpc_requests
                    .get_or_create(&RpcLabels {
                        method,
                        code: code_name(code),
                    })
                    .inc();
                metrics()
                    .rpc_duration
                    .get_or_create(&MethodLabels { method })
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/keyrack.v1.VerifyService/Verify"),
            "/keyrack.v1.VerifyService/Verify"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            method_label("/keyrack.v1.VerifyService/Invented"),
            "unknown"
        );
    }

    #[test]
    fn envoy_ext_authz_check_is_a_known_method() {
        assert_eq!(
            method_label("/envoy.service.auth.v3.Authorization/Check"),
            "/envoy.service.auth.v3.Authorization/Check"
        );
    }

    #[test]
    fn trailers_only_answers_carry_their_code() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_of(&headers), tonic::Code::Unavailable);
    }
}
