//! Transport limits and TLS: oversized requests, load shedding, request
//! timeouts, TLS and mutual TLS (an untrusted client certificate is refused).

use crate::support::{Backend, TestServer, authed, test_server_options};
use keyrack::proto::{self, VerifyCode, verify_service_client::VerifyServiceClient};
use keyrack::service::AuthorityOptions;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

pub(crate) fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `name` signed by `issuer`: (certificate PEM, key PEM).
pub(crate) fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (certificate.pem(), key.serialize_pem())
}

/// A test CA and a certificate for 127.0.0.1 signed by it, written to `dir`:
/// the paths of (CA PEM, certificate PEM, key PEM).
pub(crate) fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    let authority = certificate_authority("keyrack test CA");
    let (certificate, key) = leaf(&authority, "127.0.0.1");
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (
        write("ca.pem", &authority.pem()),
        write("server.pem", &certificate),
        write("server.key", &key),
    )
}

async fn tls_client(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", server.address.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn verify_over(channel: Channel, token: &str) -> Result<VerifyCode, tonic::Status> {
    VerifyServiceClient::new(channel)
        .verify(proto::VerifyRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().code())
}

async fn tls_server(client_ca: Option<&str>) -> (TestServer, CertifiedIssuer<'static, KeyPair>) {
    let server_ca = certificate_authority("keyrack test server CA");
    let (cert, key) = leaf(&server_ca, "localhost");
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    let options = keyrack::server::ServerOptions {
        tls: Some(tls),
        ..test_server_options()
    };
    (
        TestServer::start_serving(Backend::Memory, AuthorityOptions::default(), options).await,
        server_ca,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_plaintext_is_refused() {
    let (server, server_ca) = tls_server(None).await;
    let channel = tls_client(&server, &server_ca.pem(), None).await.unwrap();
    assert_eq!(
        verify_over(channel, &server.admin_token).await.unwrap(),
        VerifyCode::Valid
    );
    let plaintext = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(
            verify_over(channel, &server.admin_token).await.is_err(),
            "plaintext got an answer from a TLS port"
        );
    }
    let stranger = certificate_authority("someone else");
    assert!(
        tls_client(&server, &stranger.pem(), None).await.is_err(),
        "a client trusting another CA connected"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_missing_and_untrusted_client_certificates() {
    let client_ca = certificate_authority("keyrack test client CA");
    let (server, server_ca) = tls_server(Some(&client_ca.pem())).await;
    let trusted = leaf(&client_ca, "billing.internal");
    let channel = tls_client(&server, &server_ca.pem(), Some(&trusted))
        .await
        .unwrap();
    assert_eq!(
        verify_over(channel, &server.admin_token).await.unwrap(),
        VerifyCode::Valid
    );

    let refused = |outcome: Result<Channel, String>| async move {
        match outcome {
            Err(_) => true,
            Ok(channel) => verify_over(channel, "kr_x").await.is_err(),
        }
    };
    assert!(
        refused(tls_client(&server, &server_ca.pem(), None).await).await,
        "no client certificate was accepted"
    );
    let rogue_ca = certificate_authority("rogue CA");
    let untrusted = leaf(&rogue_ca, "billing.internal");
    assert!(
        refused(tls_client(&server, &server_ca.pem(), Some(&untrusted)).await).await,
        "an untrusted client certificate was accepted"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_resource_exhausted() {
    let server = TestServer::memory().await;
    let mut verifier = server.verifier().await;
    let huge = verifier
        .verify(proto::VerifyRequest {
            token: "x".repeat(8 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    let big_admin = server
        .admin()
        .await
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "x".into(),
                description: "d".repeat(128 * 1024),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(big_admin.code(), Code::ResourceExhausted);
    // The server keeps answering.
    assert_eq!(
        verify_over(
            Channel::from_shared(format!("http://{}", server.address))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            &server.admin_token
        )
        .await
        .unwrap(),
        VerifyCode::Valid
    );
    server.stop().await;
}

async fn fresh_tokens(server: &TestServer, count: usize) -> Vec<String> {
    let mut admin = server.admin().await;
    let created = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "many".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let identity = created.identity.unwrap().id;
    let mut tokens = vec![created.token];
    for index in 1..count {
        let key = admin
            .create_key(authed(
                &server.admin_token,
                proto::CreateKeyRequest {
                    identity_id: identity.clone(),
                    name: format!("k{index}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        tokens.push(key.token);
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_global_limit_are_shed() {
    let options = keyrack::server::ServerOptions {
        max_concurrent_requests: 1,
        ..test_server_options()
    };
    let server =
        TestServer::start_serving(Backend::Memory, AuthorityOptions::default(), options).await;
    let tokens = fresh_tokens(&server, 24).await;
    let mut calls = Vec::new();
    for token in tokens {
        let mut verifier = server.verifier().await;
        calls.push(tokio::spawn(async move {
            verifier
                .verify(proto::VerifyRequest {
                    token,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().code())
        }));
    }
    let mut shed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(code) => assert_eq!(code, VerifyCode::Valid),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                shed += 1;
            }
        }
    }
    assert!(
        shed > 0,
        "with one slot and 24 concurrent cold calls, some were shed"
    );
    server.stop().await;
}

/// A stalled Redis cannot hang a call: it ends within the request timeout,
/// and Verify says nothing is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_cannot_hang_a_call() {
    let options = keyrack::server::ServerOptions {
        request_timeout: Duration::from_millis(300),
        ..test_server_options()
    };
    let backend = Backend::Redis(crate::support::RedisServer::start());
    let server = TestServer::start_serving(backend, AuthorityOptions::default(), options).await;
    let mut verifier = server.verifier().await;
    let ask = || proto::VerifyRequest {
        token: server.admin_token.clone(),
        ..Default::default()
    };
    assert_eq!(
        verifier.verify(ask()).await.unwrap().into_inner().code(),
        VerifyCode::Valid
    );
    server.backend.redis().signal("STOP");
    // Verify's record cache may answer until its last fence is 100 ms old
    // (--verify-cache-max-staleness); past that, only Redis can.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    let outcome = verifier.verify(ask()).await;
    let elapsed = started.elapsed();
    server.backend.redis().signal("CONT");
    let status = outcome.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::Unavailable),
        "{status:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "the call took {elapsed:?}"
    );
    server.stop().await;
}

/// Reflection over TLS sees the caller's address, so an admin whose identity
/// is limited to an address range may use it from inside that range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_over_tls_admits_an_address_restricted_admin() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_response};
    let (server, ca) = tls_server(None).await;
    let admin_key = keyrack::domain::token::parse(&Default::default(), &server.admin_token)
        .unwrap()
        .key_id;
    let mut admin = server
        .store
        .get_identity(&admin_key.identity_id())
        .await
        .unwrap()
        .unwrap();
    admin.allowed_cidrs = vec!["127.0.0.1/32".parse().unwrap()];
    server.store.update_identity(&admin).await.unwrap();

    let channel = tls_client(&server, &ca.pem(), None).await.unwrap();
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(authed(&server.admin_token, tokio_stream::once(list)))
        .await
        .expect("reflection admits the admin from its allowed range")
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    assert!(
        services
            .service
            .iter()
            .any(|service| service.name == "keyrack.v1.VerifyService")
    );
    server.stop().await;
}
