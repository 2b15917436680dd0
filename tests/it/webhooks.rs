//! Webhooks against a real HTTP endpoint on loopback, with signatures checked
//! by the Standard Webhooks reference library (PyPI `standardwebhooks`, which
//! the test command installs): two replicas deliver each event once; a
//! killed replica's taken events are delivered by the other; an endpoint
//! that is down for a while receives every event once it is back; an
//! https:// endpoint is verified against the authorities keyrack trusts.

use crate::support::{
    Backend, RedisServer, TestServer, open_store, require_program, test_server_options,
};
use base64::Engine as _;
use keyrack::service::AuthorityOptions;
use keyrack::service::webhooks::{self, WebhookOptions, WebhookSecret};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The signing secret of these tests.
fn secret_text() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"webhook-test-secret-32-bytes-ok!")
    )
}

/// One POST as the endpoint received it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// An HTTP endpoint that keeps what it is sent.
#[derive(Clone, Default)]
struct Endpoint {
    received: Arc<Mutex<Vec<Received>>>,
}

impl Endpoint {
    /// Serves on `address` (a port picked earlier, so keyrack can be told
    /// the URL before the endpoint is up).
    async fn serve_on(&self, address: SocketAddr) {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let app = self.app();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    /// Serves HTTPS on `address` with the certificate and key given (PEM).
    async fn serve_tls_on(&self, address: SocketAddr, certificate: &str, key: &str) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let app = self.app();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // An untrusting client gives up mid-handshake: not ours to report.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
    }

    /// The endpoint's one route, `POST /hook`, keeping what it is sent.
    fn app(&self) -> axum::Router {
        let received = Arc::clone(&self.received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let received = Arc::clone(&received);
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    received.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                    });
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The distinct event ids received.
    fn ids(&self) -> HashSet<String> {
        self.received().into_iter().map(|r| r.id).collect()
    }
}

/// A loopback address nobody listens on (yet).
async fn free_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Delivery options for a replica named `consumer`, quick to retry and to
/// claim.
fn options(address: SocketAddr, consumer: &str) -> WebhookOptions {
    let mut options = WebhookOptions::new(
        format!("http://{address}/hook").parse().unwrap(),
        WebhookSecret::parse(&secret_text()).unwrap(),
    );
    options.consumer = consumer.to_owned();
    options.claim_after = Duration::from_secs(1);
    options.poll_interval = Duration::from_millis(50);
    options.min_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(200);
    options
}

/// Checks every message with the reference library and returns, per
/// message, `<type> <data.cursor> <data.action>`; also checks that a
/// tampered body is refused.
fn verified_with_reference_library(messages: &[Received]) -> Vec<String> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
secret, messages = sys.argv[1], json.load(sys.stdin)
hook = Webhook(secret)
for m in messages:
    headers = {"webhook-id": m["id"], "webhook-timestamp": m["timestamp"], "webhook-signature": m["signature"]}
    payload = hook.verify(m["body"], headers)
    print(payload["type"], payload["data"]["cursor"], payload["data"]["action"], payload["timestamp"])
    try:
        hook.verify(m["body"] + " ", headers)
        sys.exit("a tampered body was accepted")
    except WebhookVerificationError:
        pass
"#;
    let input = serde_json::to_string(
        &messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "timestamp": m.timestamp, "signature": m.signature, "body": m.body,
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut child = std::process::Command::new(require_program("python3"))
        .arg("-c")
        .arg(script)
        .arg(secret_text())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "standardwebhooks refused a message (is it installed? run scripts/test): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the endpoint holds `count` distinct events.
async fn wait_for(endpoint: &Endpoint, count: usize, within: Duration) {
    crate::support::eventually(
        &format!("{count} events at the endpoint"),
        within,
        || async { endpoint.ids().len() >= count },
    )
    .await;
}

/// Waits until the replicas' delivery group exists: it starts with the
/// events appended after it was made.
async fn wait_for_group(redis: &RedisServer) {
    crate::support::eventually("the delivery group", Duration::from_secs(5), || async {
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("keyrack:audit")
            .query(&mut redis.connection())
            .unwrap_or(redis::Value::Nil);
        format!("{groups:?}").contains("webhooks")
    })
    .await;
}

/// A keyrack on a fresh Redis whose webhook replica is named `one`.
async fn server_delivering_to(address: SocketAddr) -> TestServer {
    server_delivering_with(options(address, "one")).await
}

async fn server_delivering_with(webhooks: WebhookOptions) -> TestServer {
    let server = TestServer::start_serving(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions::default(),
        keyrack::server::ServerOptions {
            webhooks: Some(webhooks),
            ..test_server_options()
        },
    )
    .await;
    wait_for_group(server.backend.redis()).await;
    server
}

async fn create_services(server: &TestServer, prefix: &str, count: usize) {
    for n in 0..count {
        server.create_service(&format!("{prefix}{n}")).await;
    }
}

/// Two replicas share the work: every event arrives exactly once, signed
/// so that the reference library accepts it and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    let address = free_address().await;
    let endpoint = Endpoint::default();
    endpoint.serve_on(address).await;
    let server = server_delivering_to(address).await;
    let second_store = open_store(&server.backend).await;
    let second = tokio::spawn(webhooks::deliver(second_store, options(address, "two")));

    create_services(&server, "svc", 20).await;
    wait_for(&endpoint, 20, Duration::from_secs(10)).await;
    // A moment for any duplicate to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = endpoint.received();
    assert_eq!(received.len(), 20, "each event once: {received:?}");
    let lines = verified_with_reference_library(&received);
    assert_eq!(lines.len(), 20);
    for (line, message) in lines.iter().zip(&received) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "AUDIT");
        assert_eq!(
            fields[1], message.id,
            "the webhook id is the event's cursor"
        );
        assert_eq!(fields[2], "CreateIdentity");
        assert!(fields[3].ends_with('Z'), "an RFC 3339 timestamp: {line}");
    }
    second.abort();
    server.stop().await;
}

/// Redis' count of events `consumer` holds taken but unacknowledged.
fn pending_for(redis: &RedisServer, consumer: &str) -> usize {
    let mut connection = redis.connection();
    let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("keyrack:audit")
        .arg("webhooks")
        .query(&mut connection)
        .unwrap_or_default();
    consumers
        .iter()
        .find_map(|fields| {
            let name = fields.iter().position(
                |v| matches!(v, redis::Value::BulkString(b) if b.as_slice() == b"name"),
            )?;
            let is_it = matches!(&fields[name + 1], redis::Value::BulkString(b) if b.as_slice() == consumer.as_bytes());
            let pending = fields.iter().position(
                |v| matches!(v, redis::Value::BulkString(b) if b.as_slice() == b"pending"),
            )?;
            match (is_it, &fields[pending + 1]) {
                (true, redis::Value::Int(n)) => Some(usize::try_from(*n).unwrap()),
                _ => None,
            }
        })
        .unwrap_or(0)
}

/// A replica takes events, cannot deliver them and is killed: the other
/// replica claims and delivers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_events_are_delivered_by_the_other() {
    let server = TestServer::start(Backend::Redis(RedisServer::start())).await;
    let endpoint_address = free_address().await;
    // The doomed replica sees an endpoint that refuses connections.
    let nowhere = free_address().await;
    let redis = server.backend.redis();
    // The group exists before the changes, and the doomed replica takes
    // them all at once when it starts.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("keyrack:audit")
        .arg("webhooks")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut redis.connection())
        .unwrap();
    create_services(&server, "svc", 5).await;
    let doomed = tokio::spawn(webhooks::deliver(
        open_store(&server.backend).await,
        options(nowhere, "doomed"),
    ));
    crate::support::eventually(
        "the doomed replica holds every event",
        Duration::from_secs(10),
        || async { pending_for(redis, "doomed") == 5 },
    )
    .await;
    // It keeps hold while it retries, longer than the claim delay.
    let endpoint = Endpoint::default();
    endpoint.serve_on(endpoint_address).await;
    let survivor = tokio::spawn(webhooks::deliver(
        open_store(&server.backend).await,
        options(endpoint_address, "survivor"),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        endpoint.ids().len(),
        0,
        "nothing is claimed from a live replica that is retrying"
    );
    doomed.abort();
    wait_for(&endpoint, 5, Duration::from_secs(10)).await;
    let lines = verified_with_reference_library(&endpoint.received());
    assert!(lines.iter().all(|line| line.contains(" CreateIdentity ")));
    assert_eq!(pending_for(redis, "doomed"), 0);
    crate::support::eventually(
        "the survivor acknowledged all",
        Duration::from_secs(5),
        || async { pending_for(redis, "survivor") == 0 },
    )
    .await;
    survivor.abort();
    server.stop().await;
}

/// An endpoint that is down for a while gets every event once it is back,
/// and the failed attempts show in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_comes_back_receives_every_event() {
    let address = free_address().await;
    let server = server_delivering_to(address).await;
    let failures_before = keyrack::metrics::metrics().webhook_failures.get();
    create_services(&server, "svc", 8).await;
    crate::support::eventually(
        "failed attempts counted",
        Duration::from_secs(5),
        || async { keyrack::metrics::metrics().webhook_failures.get() >= failures_before + 3 },
    )
    .await;
    // Admin calls are not held up by the endpoint being down.
    let started = std::time::Instant::now();
    server.create_service("meanwhile").await;
    assert!(started.elapsed() < Duration::from_secs(2));

    let endpoint = Endpoint::default();
    endpoint.serve_on(address).await;
    wait_for(&endpoint, 9, Duration::from_secs(15)).await;
    let lines = verified_with_reference_library(&endpoint.received());
    assert!(lines.len() >= 9);
    server.stop().await;
}

/// An https:// endpoint whose certificate a private CA issued: events
/// arrive, signed, once keyrack trusts that CA (`--webhook-ca-file`);
/// without it the endpoint's certificate is refused and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_against_the_trusted_authorities() {
    let authority = crate::transport::certificate_authority("webhook test CA");
    let (certificate, key) = crate::transport::leaf(&authority, "127.0.0.1");
    let https = |address: SocketAddr| {
        let mut options = options(address, "one");
        options.url = format!("https://{address}/hook").parse().unwrap();
        options
    };

    let untrusted = Endpoint::default();
    let untrusted_address = free_address().await;
    untrusted
        .serve_tls_on(untrusted_address, &certificate, &key)
        .await;
    let server = server_delivering_with(https(untrusted_address)).await;
    create_services(&server, "refused", 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        untrusted.received().is_empty(),
        "a certificate of an authority keyrack does not trust is refused"
    );
    server.stop().await;

    let trusted = Endpoint::default();
    let trusted_address = free_address().await;
    trusted
        .serve_tls_on(trusted_address, &certificate, &key)
        .await;
    let mut options = https(trusted_address);
    options.trust_ca_pem(authority.pem().as_bytes()).unwrap();
    let server = server_delivering_with(options).await;
    create_services(&server, "svc", 3).await;
    wait_for(&trusted, 3, Duration::from_secs(10)).await;
    let lines = verified_with_reference_library(&trusted.received());
    assert_eq!(lines.len(), 3);
    server.stop().await;
}
