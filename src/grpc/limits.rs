//! Statuses of requests refused before any handler runs.

use tonic::body::Body;
use tonic::codegen::http;

/// Corrects two statuses tonic gives requests it cannot decode. The decode
/// fails before the handler runs, so the answer is a trailers-only response
/// with the status in its headers, where this rewrites it:
/// - a request larger than the server accepts: gRPC says RESOURCE_EXHAUSTED,
///   tonic says OUT_OF_RANGE;
/// - a body that is not valid protobuf: tonic says INTERNAL, which reads as a
///   server fault and pages someone; it is the caller's malformed request,
///   INVALID_ARGUMENT like every other bad input.
pub fn decode_errors_as_client_errors(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .map(|message| message.replace("%20", " "))
        .unwrap_or_default();
    let status = headers
        .get("grpc-status")
        .and_then(|status| status.to_str().ok())
        .unwrap_or_default();
    let corrected = match status {
        "11" if message.contains("message length too large") => Some("8"),
        "13" if message.starts_with("failed to decode Protobuf message") => Some("3"),
        _ => None,
    };
    if let Some(code) = corrected {
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}
