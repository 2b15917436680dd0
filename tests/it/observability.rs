//! What an operator sees of a running keyrack binary: OTLP traces received by
//! a collector of the test's own (gRPC and HTTP), joined to the caller's
//! traceparent and free of secrets; Prometheus metrics scraped and parsed;
//! JSON logs; and the `health` subcommand.

use crate::cli::{Served, free_port, grpcurl, keyrack, text};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Spans a collector received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1:0, in a runtime of its own.
fn grpc_collector() -> (String, Received, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = Received::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(received.clone());
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{address}"), received, runtime)
}

/// An OTLP/HTTP (protobuf) collector on 127.0.0.1:0.
fn http_collector() -> (String, Received, tokio::runtime::Runtime) {
    use prost::Message;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = Received::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        sink.add(request);
                        (axum::http::StatusCode::OK, Vec::new())
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), received, runtime)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(text) => Some(text.clone()),
            AnyValue::IntValue(number) => Some(number.to_string()),
            AnyValue::BoolValue(flag) => Some(flag.to_string()),
            _ => None,
        })
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a Verify and a CreateIdentity with a traceparent against a binary
/// exporting to `endpoint` over `protocol`, and checks what the collector got.
fn traces_reach_the_collector(endpoint: &str, protocol: &str, received: &Received) {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", "keyrack-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info"),
        ],
        true,
    );
    let token = served.dev_admin_token();
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    let authorization = format!("authorization: Bearer {token}");
    let verified = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-H",
        &traceparent,
        "-d",
        &format!(r#"{{"token": "{token}"}}"#),
        &served.address(),
        "keyrack.v1.VerifyService/Verify",
    ]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    let created = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"name": "traced_service"}"#,
        &served.address(),
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let minted = text(&created.stdout);

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let verify_span = loop {
        let spans = received.spans();
        if let Some(span) = spans
            .iter()
            .find(|span| span.name == "/keyrack.v1.VerifyService/Verify")
        {
            break span.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Verify span reached the collector; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        hex(&verify_span.trace_id),
        TRACE_ID,
        "joins the caller's trace"
    );
    assert_eq!(hex(&verify_span.parent_span_id), PARENT_ID);
    assert_eq!(
        attribute(&verify_span, "keyrack.verify_code").as_deref(),
        Some("VALID")
    );
    assert_eq!(
        attribute(&verify_span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(attribute(&verify_span, "keyrack.key_id").is_some());
    assert!(attribute(&verify_span, "keyrack.identity_id").is_some());

    let (exit, _) = served.terminate();
    assert!(exit.success());
    // Shutdown flushes the rest: the Admin call and the store and argon2
    // work under it are children of their RPC span.
    let spans = received.spans();
    let create = spans
        .iter()
        .find(|span| span.name == "/keyrack.v1.AdminService/CreateIdentity")
        .expect("the CreateIdentity span was flushed at shutdown");
    assert!(
        spans
            .iter()
            .any(|span| span.parent_span_id == create.span_id && span.trace_id == create.trace_id),
        "store or hashing work shows as children of the RPC span"
    );
    let everything = format!("{spans:?}");
    assert!(!everything.contains(&token), "a token reached a span");
    assert!(!everything.contains("$argon2"), "a key hash reached a span");
    let new_token = minted
        .split('"')
        .find(|part| part.starts_with("kr_"))
        .expect("the new token");
    assert!(
        !everything.contains(new_token),
        "a minted token reached a span"
    );
}

#[test]
fn traces_reach_an_otlp_grpc_collector() {
    let (endpoint, received, _runtime) = grpc_collector();
    traces_reach_the_collector(&endpoint, "grpc", &received);
}

#[test]
fn traces_reach_an_otlp_http_collector() {
    let (endpoint, received, _runtime) = http_collector();
    traces_reach_the_collector(&endpoint, "http/protobuf", &received);
}

#[test]
fn a_collector_that_is_down_does_not_stop_keyrack() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let served = Served::start(
        dir.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nobody.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        true,
    );
    let health = keyrack()
        .args(["health", "--target", &served.address()])
        .output()
        .unwrap();
    assert!(health.status.success(), "{}", text(&health.stderr));
    assert_eq!(text(&health.stdout).trim(), "SERVING");
    let (exit, _) = served.terminate();
    assert!(exit.success());
}

/// One sample of the text exposition: name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics/Prometheus text format, failing on any line that is
/// not a comment or a well-formed sample.
fn parse_exposition(body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels close");
                let labels = rest
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn scrape(address: &str) -> Vec<Sample> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
    );
    // axum may send a chunked body; the samples are what matters.
    let body: String = body
        .lines()
        .filter(|line| line.is_empty() || line.starts_with('#') || line.starts_with("keyrack_"))
        .collect::<Vec<_>>()
        .join("\n");
    parse_exposition(&body)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
}

#[test]
fn metrics_are_scraped_and_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let served = Served::start(
        dir.path(),
        &["--metrics-listen", &metrics_address, "--log-format", "json"],
        &[],
        true,
    );
    let token = served.dev_admin_token();
    let verify = |candidate: &str| {
        let answer = grpcurl(&[
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
            &format!(r#"{{"token": "{candidate}"}}"#),
            &served.address(),
            "keyrack.v1.VerifyService/Verify",
        ]);
        assert!(answer.status.success(), "{}", text(&answer.stderr));
    };
    verify(&token);
    verify(&token);
    verify("kr_not_a_token");
    let samples = scrape(&metrics_address);
    assert_eq!(
        value(
            &samples,
            "keyrack_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "keyrack_verify_outcomes_total",
            &[("code", "VALID")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "keyrack_verify_outcomes_total",
            &[("code", "MALFORMED")]
        ),
        1.0
    );
    let verify_method = "/keyrack.v1.VerifyService/Verify";
    assert_eq!(
        value(
            &samples,
            "keyrack_grpc_server_requests_total",
            &[("method", verify_method), ("code", "OK")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "keyrack_grpc_server_duration_seconds_count",
            &[("method", verify_method)]
        ),
        3.0
    );
    // The admin's token was checked with argon2 once (dev mode's creation
    // does not verify it), then served from the cache.
    assert!(value(&samples, "keyrack_verify_cache_misses_total", &[]) >= 1.0);
    assert!(value(&samples, "keyrack_verify_cache_hits_total", &[]) >= 1.0);
    for gauge in [
        "keyrack_argon2_waiting",
        "keyrack_argon2_running",
        "keyrack_verify_throttled_total",
        "keyrack_argon2_rejected_total",
        "keyrack_redis_errors_total",
        "keyrack_redis_reconnects_total",
        "keyrack_audit_events_total",
    ] {
        assert!(
            samples.iter().any(|s| s.name == gauge),
            "{gauge} is exposed"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while value(&scrape(&metrics_address), "keyrack_health_serving", &[]) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "health_serving never became 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (exit, logged) = served.terminate();
    assert!(exit.success());
    // --log-format json: every line is one JSON object with a level.
    for line in logged.lines().filter(|line| !line.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert!(event["level"].is_string(), "{line}");
    }
    assert!(!logged.contains(&token), "the token reached the log");
}

#[test]
fn the_health_subcommand_reports_and_exits_accordingly() {
    let unreachable = keyrack()
        .args(["health", "--target", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(
        text(&unreachable.stderr).contains("cannot reach"),
        "{}",
        text(&unreachable.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[], &[], true);
    for service in ["", "keyrack.v1.VerifyService", "keyrack.v1.AdminService"] {
        let asked = keyrack()
            .args([
                "health",
                "--target",
                &served.address(),
                "--service",
                service,
            ])
            .output()
            .unwrap();
        assert!(asked.status.success(), "{service}: {}", text(&asked.stderr));
        assert_eq!(text(&asked.stdout).trim(), "SERVING");
    }
    let unknown = keyrack()
        .args(["health", "--target", &served.address(), "--service", "nope"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}
