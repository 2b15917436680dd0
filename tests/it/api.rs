//! The gRPC API end to end through a tonic client, on both stores.

use crate::on_both_stores;
use crate::support::{TestServer, authed, eventually};
use keyrack::proto::{self, VerifyCode};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

async fn service(server: &TestServer, name: &str) -> proto::CreateIdentityResponse {
    server.create_service(name).await
}

async fn verify(server: &TestServer, request: proto::VerifyRequest) -> proto::VerifyResponse {
    server
        .verifier()
        .await
        .verify(request)
        .await
        .expect("verify answers")
        .into_inner()
}

async fn verify_token(server: &TestServer, token: &str) -> VerifyCode {
    verify(
        server,
        proto::VerifyRequest {
            token: token.into(),
            ..Default::default()
        },
    )
    .await
    .code()
}

/// The field names of an INVALID_ARGUMENT's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

on_both_stores!(
    verify_follows_the_key_lifecycle,
    verify_follows_the_key_lifecycle_body
);
async fn verify_follows_the_key_lifecycle_body(server: TestServer) {
    let created = service(&server, "billing").await;
    let identity = created.identity.unwrap();
    let key = created.key.unwrap();
    let token = created.token;
    assert!(token.starts_with(&format!("kr_{}_", key.id)));
    assert_eq!(key.identity_id, identity.id);
    assert!(key.token_hint.starts_with("kr_") && !key.token_hint.contains(&token[30..]));

    let answer = verify(
        &server,
        proto::VerifyRequest {
            token: token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(answer.valid);
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.key_id, key.id);
    let who = answer.identity.unwrap();
    assert_eq!(
        (who.id.as_str(), who.name.as_str(), who.kind()),
        (
            identity.id.as_str(),
            "billing",
            proto::IdentityKind::Service
        )
    );
    assert!(!answer.in_grace && answer.expire_time.is_none());

    // The token may come from the authorization metadata instead.
    let from_header = server
        .verifier()
        .await
        .verify(authed(&token, proto::VerifyRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_header.code(), VerifyCode::Valid);

    // Wrong secret (checksum fixed up) and unknown key are the same answer.
    let mut wrong = keyrack::domain::token::mint(
        &Default::default(),
        &keyrack::domain::KeyId::parse(&key.id).unwrap(),
    );
    let wrong_token = std::mem::take(&mut wrong.token);
    assert_eq!(
        verify_token(&server, wrong_token.expose()).await,
        VerifyCode::Unknown
    );
    let elsewhere = keyrack::domain::KeyId::generate(&keyrack::domain::IdentityId::generate());
    let unknown = keyrack::domain::token::mint(&Default::default(), &elsewhere);
    assert_eq!(
        verify_token(&server, unknown.token.expose()).await,
        VerifyCode::Unknown
    );
    // A typo never reaches the store.
    let mut typo = token.clone().into_bytes();
    typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        verify_token(&server, std::str::from_utf8(&typo).unwrap()).await,
        VerifyCode::Malformed
    );
    assert_eq!(
        verify_token(&server, "Bearer nonsense").await,
        VerifyCode::Malformed
    );
    let refused = verify(
        &server,
        proto::VerifyRequest {
            token: "kr_nonsense".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!refused.valid && refused.identity.is_none() && refused.key_id.is_empty());

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
    let disabled = verify(
        &server,
        proto::VerifyRequest {
            token: token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(disabled.code(), VerifyCode::Disabled);
    assert!(!disabled.valid);
    admin
        .enable_identity(authed(
            &server.admin_token,
            proto::EnableIdentityRequest {
                identity_id: identity.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(verify_token(&server, &token).await, VerifyCode::Valid);
    let off = admin
        .disable_key(authed(
            &server.admin_token,
            proto::DisableKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.state(), proto::State::Disabled);
    assert_eq!(verify_token(&server, &token).await, VerifyCode::Disabled);
    admin
        .enable_key(authed(
            &server.admin_token,
            proto::EnableKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(verify_token(&server, &token).await, VerifyCode::Valid);

    // A second key works independently; revoking one leaves the other.
    let second = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: identity.id.clone(),
                name: "worker".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verify_token(&server, &second.token).await,
        VerifyCode::Valid
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
    assert_eq!(verify_token(&server, &token).await, VerifyCode::Unknown);
    assert_eq!(
        verify_token(&server, &second.token).await,
        VerifyCode::Valid
    );
    let again = admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    admin
        .delete_identity(authed(
            &server.admin_token,
            proto::DeleteIdentityRequest {
                identity_id: identity.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        verify_token(&server, &second.token).await,
        VerifyCode::Unknown
    );
    let gone = admin
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: identity.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await;
}

on_both_stores!(
    admin_calls_need_an_admin_token,
    admin_calls_need_an_admin_token_body
);
async fn admin_calls_need_an_admin_token_body(server: TestServer) {
    let mut admin = server.admin().await;
    let list = || proto::ListIdentitiesRequest::default();
    let missing = admin.list_identities(list()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let garbage = admin
        .list_identities(authed("kr_garbage", list()))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);

    let plain = service(&server, "plain").await;
    let denied = admin
        .list_identities(authed(&plain.token, list()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let second_admin = server
        .create_identity(proto::CreateIdentityRequest {
            name: "ops".into(),
            admin: true,
            ..Default::default()
        })
        .await;
    admin
        .list_identities(authed(&second_admin.token, list()))
        .await
        .unwrap();
    admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: second_admin.key.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let revoked = admin
        .list_identities(authed(&second_admin.token, list()))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);

    // Unimplemented operations still check the caller first.
    let roll = proto::RollKeyRequest {
        key_id: "x".into(),
        ..Default::default()
    };
    assert_eq!(
        admin.roll_key(roll.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.stop().await;
}

on_both_stores!(
    identities_are_managed_with_clear_errors,
    identities_are_managed_with_clear_errors_body
);
async fn identities_are_managed_with_clear_errors_body(server: TestServer) {
    let mut admin = server.admin().await;
    let created = service(&server, "reports").await.identity.unwrap();

    let duplicate = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "reports".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let bad = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "no spaces allowed".into(),
                description: "d".repeat(257),
                allowed_cidrs: vec!["10.0.0.0/33".into()],
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        ["name", "description", "allowed_cidrs[0]"]
    );
    let past = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "late".into(),
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&past), ["expire_time"]);
    let unknown_dataset = admin
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "ds".into(),
                datasets: vec!["sales".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown_dataset), ["datasets"]);
    let bad_id = admin
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_id), ["identity_id"]);
    let no_such = admin
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: "AAAAAAAAAAAA".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(no_such.code(), Code::NotFound);

    let got = admin
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: created.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // Update through a field mask, in the JSON spelling too.
    let updated = admin
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: created.id.clone(),
                    name: "reporting".into(),
                    description: "nightly reports".into(),
                    allowed_cidrs: vec!["10.1.0.0/16".into()],
                    kind: proto::IdentityKind::Person.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "description".into(), "allowedCidrs".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.description.as_str()),
        ("reporting", "nightly reports")
    );
    assert_eq!(updated.allowed_cidrs, ["10.1.0.0/16"]);
    assert_eq!(
        updated.kind(),
        proto::IdentityKind::Service,
        "kind is not updatable"
    );
    let unknown_path = admin
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: created.id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["kind".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown_path), ["update_mask.paths[0]"]);
    let bad_name = admin
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: created.id.clone(),
                    name: "bad name".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_name), ["identity.name"]);
    let taken = admin
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: created.id.clone(),
                    name: "root".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    // Pagination walks every identity once.
    for index in 0..5 {
        service(&server, &format!("svc{index}")).await;
    }
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_identities(authed(
                &server.admin_token,
                proto::ListIdentitiesRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.identities.len() <= 2);
        names.extend(page.identities.into_iter().map(|i| i.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    names.sort();
    assert_eq!(
        names,
        ["reporting", "root", "svc0", "svc1", "svc2", "svc3", "svc4"]
    );
    let negative = admin
        .list_identities(authed(
            &server.admin_token,
            proto::ListIdentitiesRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&negative), ["page_size"]);
    server.stop().await;
}

on_both_stores!(
    keys_are_managed_with_clear_errors,
    keys_are_managed_with_clear_errors_body
);
async fn keys_are_managed_with_clear_errors_body(server: TestServer) {
    let mut admin = server.admin().await;
    let identity = service(&server, "api").await.identity.unwrap();
    let new_key = |name: &str| proto::CreateKeyRequest {
        identity_id: identity.id.clone(),
        name: name.into(),
        ..Default::default()
    };

    let duplicate = admin
        .create_key(authed(&server.admin_token, new_key("default")))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let orphan = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: "AAAAAAAAAAAA".into(),
                name: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(orphan.code(), Code::NotFound);
    let bad = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: "bad".into(),
                name: "".into(),
                allowed_cidrs: vec!["nope".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        ["identity_id", "name", "allowed_cidrs[0]"]
    );

    let expiring = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                expire_time: Some(keyrack::grpc::convert::timestamp_out(
                    keyrack::domain::UnixMillis(keyrack::domain::UnixMillis::now().0 + 1_000),
                )),
                ..new_key("short")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let answer = verify(
        &server,
        proto::VerifyRequest {
            token: expiring.token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert!(answer.expire_time.is_some());
    eventually("the key expires", Duration::from_secs(5), || async {
        verify_token(&server, &expiring.token).await == VerifyCode::Unknown
    })
    .await;

    for index in 0..3 {
        admin
            .create_key(authed(&server.admin_token, new_key(&format!("k{index}"))))
            .await
            .unwrap();
    }
    let first = admin
        .list_keys(authed(
            &server.admin_token,
            proto::ListKeysRequest {
                identity_id: identity.id.clone(),
                page_size: 3,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.keys.len(), 3);
    let rest = admin
        .list_keys(authed(
            &server.admin_token,
            proto::ListKeysRequest {
                identity_id: identity.id.clone(),
                page_size: 3,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.keys.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let key_id = first.keys[0].id.clone();
    let updated = admin
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: key_id.clone(),
                    description: "renamed".into(),
                    name: "edge".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into(), "name".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.description.as_str()),
        ("edge", "renamed")
    );
    let got = admin
        .get_key(authed(
            &server.admin_token,
            proto::GetKeyRequest {
                key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated);
    let missing_mask = admin
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: key_id,
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&missing_mask), ["update_mask"]);
    server.stop().await;
}

on_both_stores!(
    verify_checks_addresses_and_requests,
    verify_checks_addresses_and_requests_body
);
async fn verify_checks_addresses_and_requests_body(server: TestServer) {
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "edge".into(),
            allowed_cidrs: vec!["10.0.0.0/24".into(), "2001:db8::/32".into()],
            ..Default::default()
        })
        .await;
    let ask = |ip: &str, dataset: &str| proto::VerifyRequest {
        token: created.token.clone(),
        client_ip: ip.into(),
        dataset: dataset.into(),
        ..Default::default()
    };
    assert_eq!(
        verify(&server, ask("10.0.0.255", "")).await.code(),
        VerifyCode::Valid
    );
    assert_eq!(
        verify(&server, ask("::ffff:10.0.0.1", "")).await.code(),
        VerifyCode::Valid
    );
    assert_eq!(
        verify(&server, ask("2001:db8::1", "")).await.code(),
        VerifyCode::Valid
    );
    assert_eq!(
        verify(&server, ask("10.0.1.0", "")).await.code(),
        VerifyCode::IpNotAllowed
    );
    assert_eq!(
        verify(&server, ask("", "")).await.code(),
        VerifyCode::IpNotAllowed,
        "no address, fail closed"
    );
    assert_eq!(
        verify(&server, ask("10.0.0.1", "sales")).await.code(),
        VerifyCode::DatasetNotAllowed
    );

    let mut verifier = server.verifier().await;
    let bad = verifier
        .verify(ask("10.0.0.300", "bad dataset"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["dataset", "client_ip"]);
    let empty = verifier
        .verify(proto::VerifyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&empty), ["token"]);
    let huge = verifier
        .verify(proto::VerifyRequest {
            token: "x".repeat(64 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(huge.code(), Code::Ok);
    assert_ne!(huge.code(), Code::Unknown);
    server.stop().await;
}

async fn health_of(server: &TestServer) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    server
        .health()
        .await
        .check(HealthCheckRequest {
            service: "keyrack.v1.VerifyService".into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(ServingStatus::Unknown)
}

/// Redis going away makes every token invalid (UNAVAILABLE, never valid) and
/// health NOT_SERVING; both recover when it returns, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_closed_while_redis_is_down() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // The production health interval, to hold it to "NOT_SERVING within a second".
    let options = keyrack::server::ServerOptions {
        health_interval: keyrack::server::HEALTH_INTERVAL,
        ..crate::support::test_server_options()
    };
    let backend = crate::support::Backend::Redis(crate::support::RedisServer::start());
    let mut server = TestServer::start_serving(backend, Default::default(), options).await;
    let token = service(&server, "svc").await.token;
    eventually("serving", Duration::from_secs(5), || async {
        health_of(&server).await == ServingStatus::Serving
    })
    .await;

    match &mut server.backend {
        crate::support::Backend::Redis(redis) => redis.kill(),
        _ => unreachable!("a standalone Redis test"),
    }
    let outage = server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(outage.code(), Code::Unavailable);
    eventually(
        "not serving within a second",
        Duration::from_secs(1),
        || async { health_of(&server).await == ServingStatus::NotServing },
    )
    .await;

    match &mut server.backend {
        crate::support::Backend::Redis(redis) => redis.restart(),
        _ => unreachable!("a standalone Redis test"),
    }
    eventually(
        "serving again within a few seconds",
        Duration::from_secs(5),
        || async { health_of(&server).await == ServingStatus::Serving },
    )
    .await;
    // The restarted Redis is empty (no persistence in this test): the token
    // is now unknown, and Verify answers rather than failing.
    eventually("verify answers again", Duration::from_secs(10), || async {
        server
            .verifier()
            .await
            .verify(proto::VerifyRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.into_inner().code() == VerifyCode::Unknown)
    })
    .await;
    server.stop().await;
}

/// No value keyrack stores in Redis contains a minted secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_holds_a_secret() {
    let server = TestServer::redis().await;
    let mut tokens = vec![server.admin_token.clone()];
    for index in 0..3 {
        let created = service(&server, &format!("svc{index}")).await;
        let extra = server
            .admin()
            .await
            .create_key(authed(
                &server.admin_token,
                proto::CreateKeyRequest {
                    identity_id: created.identity.unwrap().id,
                    name: "extra".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        tokens.push(created.token);
        tokens.push(extra.token);
    }
    let dump = server.backend.redis().dump();
    assert!(dump.len() > 10, "keyrack wrote its records: {}", dump.len());
    for token in &tokens {
        // The secret is the 43 characters after the key id; none of it may be stored.
        let secret = &token[token.len() - 49..token.len() - 6];
        for (key, value) in &dump {
            assert!(
                !value.contains(secret) && !key.contains(secret),
                "secret found in {key}"
            );
        }
    }
    server.stop().await;
}
