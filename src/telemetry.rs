//! Logs and traces: human-readable or JSON logs filtered by `RUST_LOG`, and,
//! when the standard `OTEL_*` variables name a collector, OpenTelemetry traces
//! exported over OTLP. Secrets never reach either: spans skip request
//! arguments, and only ids, codes and names are recorded.

use crate::config::{ConfigError, LogFormat};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long an OTLP export may take before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the trace pipeline alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Bounded by the exporter's timeout; a dead collector costs at most that.
            let _ = provider.shutdown();
        }
    }
}

/// Which OTLP transport the environment asks for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    Grpc,
    HttpProtobuf,
}

/// Reads the standard variables: export only when an endpoint is set and
/// neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says
/// otherwise. The protocol defaults to `http/protobuf`, as the OTLP spec says.
fn export_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Export>, ConfigError> {
    let set = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    match protocol.trim() {
        "grpc" => Ok(Some(Export::Grpc)),
        "http/protobuf" => Ok(Some(Export::HttpProtobuf)),
        other => Err(ConfigError(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use grpc or http/protobuf"
        ))),
    }
}

/// Sends OTLP/HTTP requests on the server's runtime: the SDK exports from its
/// own thread, where hyper would find no reactor.
#[derive(Debug, Clone)]
struct OnRuntime {
    client: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

fn tracer_provider(export: Export) -> Result<SdkTracerProvider, ConfigError> {
    let exporter = match export {
        Export::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        Export::HttpProtobuf => {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError("OTLP export must start inside the async runtime".into())
            })?;
            let client = OnRuntime {
                client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
                runtime,
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
    }
    .map_err(|e| ConfigError(format!("cannot set up OTLP trace export: {e}")))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("keyrack");
    }
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the global subscriber: logs to stderr (stdout carries tokens a
/// script may capture) filtered by `RUST_LOG` (default `info`), and OTLP trace
/// export when configured. Call inside the runtime. A collector that is down
/// costs dropped spans, never a failed start.
pub fn init(format: LogFormat) -> Result<TelemetryGuard, ConfigError> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let export = export_from_env(|name| std::env::var(name).ok())?;
    let provider = export.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        // RPC spans are INFO, store and argon2 spans DEBUG: all of keyrack's
        // go to the collector whatever RUST_LOG says; the sampler decides.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("keyrack"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("keyrack", tracing::Level::DEBUG),
            )
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let Some(export) = export {
        tracing::info!(?export, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// Reads W3C trace context from HTTP headers (gRPC metadata included).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the caller's `traceparent`, when there is one and
/// trace export is on.
pub fn join_caller_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
    }
}

/// The trace id a call belongs to: its caller's `traceparent`, else the
/// current span's when trace export is on; `None` for an untraced call.
pub fn trace_id(traceparent: Option<&str>) -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    let mut headers = http::HeaderMap::new();
    if let Some(value) = traceparent.and_then(|text| http::HeaderValue::from_str(text).ok()) {
        headers.insert("traceparent", value);
    }
    // W3C trace context is read even when export is off (there is no global
    // propagator then): the id still ties the event to the caller's trace.
    let from_caller = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
    let from_span = tracing::Span::current().context();
    [from_caller, from_span]
        .iter()
        .map(|context| context.span().span_context().clone())
        .find(|span| span.is_valid())
        .map(|span| span.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn export_follows_the_standard_variables() {
        assert_eq!(export_from_env(env(&[])).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            export_from_env(env(&[endpoint])).unwrap(),
            Some(Export::HttpProtobuf)
        );
        assert_eq!(
            export_from_env(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap(),
            Some(Export::Grpc)
        );
        assert_eq!(
            export_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
            .unwrap(),
            Some(Export::Grpc)
        );
        assert_eq!(
            export_from_env(env(&[endpoint, ("OTEL_SDK_DISABLED", "true")])).unwrap(),
            None
        );
        assert_eq!(
            export_from_env(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).unwrap(),
            None
        );
        assert!(
            export_from_env(env(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ]))
            .is_err()
        );
    }
}
