//! Server reflection behind an admin token. Reflection reveals the whole API
//! surface; by default only admins (grpcurl `-H 'authorization: Bearer …'`
//! sends the header on reflection calls too) may use it.

use super::bearer_token;
use crate::service::Authority;
use crate::service::CallContext;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Who may use server reflection (`--reflection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflectionAccess {
    /// Callers with an admin token.
    Gated,
    /// Anyone who can reach the port.
    Open,
    /// Nobody: reflection is not served.
    Off,
}

/// Wraps a gRPC service so every call first authenticates an admin.
#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    authority: Arc<Authority>,
}

impl<S> AdminGate<S> {
    /// Gates `inner` behind an admin token checked by `authority`.
    pub fn new(inner: S, authority: Arc<Authority>) -> Self {
        Self { inner, authority }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for AdminGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone
        // stays behind for the next one (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authority = Arc::clone(&self.authority);
        Box::pin(async move {
            let metadata = MetadataMap::from_headers(request.headers().clone());
            let peer = peer_address(request.extensions());
            let context = CallContext::from_headers(peer, |name| {
                metadata.get(name).and_then(|value| value.to_str().ok())
            });
            match authority
                .authenticate_admin(bearer_token(&metadata), context)
                .await
            {
                Ok(_) => inner.call(request).await,
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

/// The caller's address, over plain TCP or TLS (where tonic files it under
/// `TlsConnectInfo`), as `tonic::Request::remote_addr` finds it.
fn peer_address(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}
