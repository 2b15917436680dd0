//! The server-wide concurrency limit, and what stays outside it.
//!
//! - Health checks: a probe shed by a Verify flood would have the pod
//!   restarted, taking away capacity exactly when it is needed.
//! - The wait of a held-back answer (`service::tarpit`): a call that noted a
//!   delay gives its slot back first, so known-wrong tokens in flight take no
//!   capacity from good calls.

use crate::service::tarpit;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tower::limit::ConcurrencyLimit as SharedConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::{BoxError, Layer, Service, ServiceExt};

/// The path prefix of `grpc.health.v1.Health`'s methods.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// Sheds calls beyond `max_concurrent` (RESOURCE_EXHAUSTED) except health
/// checks, and holds back answers after the call's slot is free.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    limit: tower::limit::GlobalConcurrencyLimitLayer,
}

impl ConcurrencyLimitLayer {
    /// At most `max_concurrent` calls other than health checks at once.
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            limit: tower::limit::GlobalConcurrencyLimitLayer::new(max_concurrent.max(1)),
        }
    }
}

impl<S: Clone> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            limited: LoadShed::new(self.limit.layer(inner.clone())),
            unlimited: inner,
        }
    }
}

/// See [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    limited: LoadShed<SharedConcurrencyLimit<S>>,
    unlimited: S,
}

impl<S, B> Service<http::Request<B>> for ConcurrencyLimit<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call: the limit applies to some calls only,
        // and a full limit sheds the call rather than waiting.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PATH) {
            let unlimited = self.unlimited.clone();
            return Box::pin(async move { unlimited.oneshot(request).await.map_err(Into::into) });
        }
        let limited = self.limited.clone();
        Box::pin(tarpit::deferred(limited.oneshot(request)))
    }
}
