//! The gRPC glue of `envoy.service.auth.v3.Authorization`, written by hand.
//! envoy-types' generated `AuthorizationServer` decodes Check's request as
//! its own `CheckRequest`; this serves the same method the way tonic's
//! generated code does, decoding [`CheckRequestView`] and encoding
//! [`CheckAnswer`] instead. Reflection,
//! health and `keyrack protoset` still describe the service with Envoy's own
//! descriptors: on the wire nothing differs.

use super::ExtAuthzApi;
use super::answer::CheckAnswer;
use super::request_view::CheckRequestView;
use envoy_types::pb::envoy::service::auth::v3::authorization_server;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tonic::server::{Grpc, NamedService, UnaryService};

/// The one method of the service.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// `envoy.service.auth.v3.Authorization`, answered by an [`ExtAuthzApi`].
#[derive(Clone)]
pub struct ExtAuthzServer {
    api: Arc<ExtAuthzApi>,
    max_decoding_message_size: usize,
}

impl ExtAuthzServer {
    /// Serves Check from `api`, refusing requests larger than
    /// `max_decoding_message_size` bytes.
    pub fn new(api: ExtAuthzApi, max_decoding_message_size: usize) -> Self {
        Self {
            api: Arc::new(api),
            max_decoding_message_size,
        }
    }
}

impl NamedService for ExtAuthzServer {
    const NAME: &'static str = authorization_server::SERVICE_NAME;
}

/// Check as tonic's unary call machinery runs it.
struct CheckMethod(Arc<ExtAuthzApi>);

impl UnaryService<CheckRequestView> for CheckMethod {
    type Response = CheckAnswer;
    type Future = BoxFuture<tonic::Response<CheckAnswer>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckRequestView>) -> Self::Future {
        let api = Arc::clone(&self.0);
        Box::pin(async move {
            api.check(request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl tower::Service<http::Request<Body>> for ExtAuthzServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            // The answer tonic's generated services give a method they lack.
            return Box::pin(async {
                let mut response = http::Response::new(Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = CheckMethod(Arc::clone(&self.api));
        let max_decoding_message_size = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(crate::grpc::codec::RequestCodec::<
                CheckAnswer,
                CheckRequestView,
            >::default())
            .apply_max_message_size_config(Some(max_decoding_message_size), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}
