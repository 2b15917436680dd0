//! Limits applied to every call: a global concurrency cap with load
//! shedding, and the status of an oversized request.

use tonic::body::Body;
use tonic::codegen::http;

/// gRPC says a request larger than the server accepts is RESOURCE_EXHAUSTED;
/// tonic answers OUT_OF_RANGE. The decode error happens before the handler
/// runs, so it comes back as a trailers-only response whose status is in the
/// headers, where this rewrites it.
pub fn oversized_is_resource_exhausted(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let oversized = headers
        .get("grpc-status")
        .is_some_and(|status| status == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                message.contains("message%20length%20too%20large")
                    || message.contains("message length too large")
            });
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
