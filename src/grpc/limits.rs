//! Statuses of requests refused before any handler runs.
//!
//! tonic answers a request larger than its service accepts with OUT_OF_RANGE,
//! where gRPC says RESOURCE_EXHAUSTED. [`MessageLimitLayer`] reads the length
//! prefix of each request's message as it streams past, and when that length
//! is over the service's limit, it answers RESOURCE_EXHAUSTED in place of
//! tonic's OUT_OF_RANGE: the correction rests on what the layer saw on the
//! wire, never on the text of tonic's message. (A body that is not valid
//! protobuf is INVALID_ARGUMENT through `grpc::codec`.)

use bytes::Buf;
use hyper::body::Frame;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

/// Length of a gRPC message's prefix: a compression flag and a big-endian
/// u32 length.
const PREFIX_BYTES: usize = 5;

/// The largest request message each service accepts, by path prefix; any
/// other path gets `default_limit` (tonic's own default for health and
/// reflection).
#[derive(Debug, Clone)]
pub struct MessageLimitLayer {
    limits: Arc<[(String, usize)]>,
    default_limit: usize,
}

impl MessageLimitLayer {
    /// `limits` pairs a path prefix (`/keyrack.v1.VerifyService/`) with the
    /// limit its service was given; `default_limit` covers the rest.
    pub fn new(limits: Vec<(String, usize)>, default_limit: usize) -> Self {
        Self {
            limits: limits.into(),
            default_limit,
        }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    layer: MessageLimitLayer,
}

impl<S, ResponseBody> Service<http::Request<Body>> for MessageLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let limit = self
            .layer
            .limits
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(self.layer.default_limit, |(_, limit)| *limit);
        let oversized = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(PrefixWatch {
                inner: body,
                prefix: Vec::with_capacity(PREFIX_BYTES),
                limit,
                oversized: Arc::clone(&oversized),
            })
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            let out_of_range = headers
                .get(tonic::Status::GRPC_STATUS)
                .is_some_and(|status| status.as_bytes() == b"11");
            if out_of_range && oversized.load(Ordering::Acquire) {
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    http::HeaderValue::from(i32::from(tonic::Code::ResourceExhausted)),
                );
            }
            Ok(response)
        })
    }
}

/// A request body that notes whether its first message's length prefix is
/// over `limit`; the bytes pass through unchanged.
struct PrefixWatch {
    inner: Body,
    /// The prefix bytes seen so far, until there are five.
    prefix: Vec<u8>,
    limit: usize,
    oversized: Arc<AtomicBool>,
}

impl PrefixWatch {
    fn watch(&mut self, data: &[u8]) {
        let wanted = PREFIX_BYTES - self.prefix.len();
        if wanted == 0 {
            return;
        }
        self.prefix
            .extend_from_slice(&data[..wanted.min(data.len())]);
        if let [_, a, b, c, d] = self.prefix[..] {
            let length = u32::from_be_bytes([a, b, c, d]);
            if usize::try_from(length).map_or(true, |length| length > self.limit) {
                self.oversized.store(true, Ordering::Release);
            }
        }
    }
}

impl hyper::body::Body for PrefixWatch {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.prefix.len() < PREFIX_BYTES
            && let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.watch(data.chunk());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]], limit: usize) -> bool {
        let mut watch = PrefixWatch {
            inner: Body::default(),
            prefix: Vec::new(),
            limit,
            oversized: Arc::new(AtomicBool::new(false)),
        };
        for chunk in chunks {
            watch.watch(chunk);
        }
        watch.oversized.load(Ordering::Acquire)
    }

    #[test]
    fn a_length_over_the_limit_is_noted_even_across_chunks() {
        let prefix = [0, 0, 0, 0x10, 0x01]; // 4,097 bytes
        assert!(watch(&[&prefix], 4096));
        assert!(watch(&[&prefix[..2], &prefix[2..]], 4096));
        assert!(!watch(&[&prefix], 4097));
        assert!(!watch(&[&[0, 0, 0, 0x10, 0x00]], 4096));
        // A later message's prefix is not read as the first's.
        assert!(!watch(
            &[&[0, 0, 0, 0, 1, 7], &[0, 0xff, 0xff, 0xff, 0xff]],
            4096
        ));
    }
}
