//! Scopes, and datasets per key: what a token may do, as Verify checks it,
//! on both stores and across two replicas of one Redis.

use crate::on_both_stores;
use crate::support::{Backend, RedisServer, TestServer, authed, mask, open_store, test_authority};
use keyrack::proto::{self, VerifyCode};
use keyrack::service::{Authority, AuthorityOptions, PersonProfile, VerifyQuery};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn strings(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|e| e.to_string()).collect()
}

async fn verify(
    server: &TestServer,
    token: &str,
    dataset: &str,
    required: &[&str],
) -> proto::VerifyResponse {
    server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: token.into(),
            dataset: dataset.into(),
            required_scopes: strings(required),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner()
}

async fn code(server: &TestServer, token: &str, required: &[&str]) -> VerifyCode {
    verify(server, token, "", required).await.code()
}

async fn create_key(
    server: &TestServer,
    request: proto::CreateKeyRequest,
) -> Result<proto::CreateKeyResponse, tonic::Status> {
    server
        .admin()
        .await
        .create_key(authed(&server.admin_token, request))
        .await
        .map(|r| r.into_inner())
}

async fn update_identity(
    server: &TestServer,
    identity: proto::Identity,
    paths: &[&str],
) -> Result<proto::Identity, tonic::Status> {
    server
        .admin()
        .await
        .update_identity(authed(
            &server.admin_token,
            proto::UpdateIdentityRequest {
                identity: Some(identity),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn update_key(
    server: &TestServer,
    key: proto::ApiKey,
    paths: &[&str],
) -> Result<proto::ApiKey, tonic::Status> {
    server
        .admin()
        .await
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(key),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn create_dataset(server: &TestServer, name: &str) {
    server
        .admin()
        .await
        .create_dataset(authed(
            &server.admin_token,
            proto::CreateDatasetRequest {
                name: name.into(),
                skip_key: true,
                ..Default::default()
            },
        ))
        .await
        .expect("create dataset");
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

on_both_stores!(a_key_narrows_its_identitys_scopes, narrowing_body);
async fn narrowing_body(server: TestServer) {
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "billing".into(),
            scopes: strings(&["billing:*", "reports:read"]),
            ..Default::default()
        })
        .await;
    let identity = created.identity.unwrap();
    assert_eq!(identity.scopes, ["billing:*", "reports:read"]);
    let broad = created.token;

    // The first key holds the identity's scopes, wildcards by prefix only.
    let answer = verify(&server, &broad, "", &["billing:read", "reports:read"]).await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.scopes, ["billing:*", "reports:read"]);
    assert_eq!(
        code(&server, &broad, &["billing:invoices:*"]).await,
        VerifyCode::Valid
    );
    for refused in [
        &["billingX"][..],
        &["billing"],
        &["reports:write"],
        &["reports:*"],
    ] {
        assert_eq!(
            code(&server, &broad, refused).await,
            VerifyCode::ScopeNotAllowed,
            "{refused:?}"
        );
    }
    // Every required scope must be held, not just one.
    assert_eq!(
        code(&server, &broad, &["billing:read", "admin:all"]).await,
        VerifyCode::ScopeNotAllowed
    );

    // A key narrowed to one scope holds only that one.
    let narrow = create_key(
        &server,
        proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            name: "reader".into(),
            scopes: strings(&["billing:read"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(narrow.key.as_ref().unwrap().scopes, ["billing:read"]);
    let answer = verify(&server, &narrow.token, "", &["billing:read"]).await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.scopes, ["billing:read"]);
    assert_eq!(
        code(&server, &narrow.token, &["billing:write"]).await,
        VerifyCode::ScopeNotAllowed
    );
    assert_eq!(
        code(&server, &narrow.token, &["reports:read"]).await,
        VerifyCode::ScopeNotAllowed
    );

    // A key may not exceed its identity, on create or update.
    let refused = create_key(
        &server,
        proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            name: "wider".into(),
            scopes: strings(&["billing:read", "payroll:read", "reports:*"]),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&refused), ["scopes[1]", "scopes[2]"]);
    let why = refused.get_details_bad_request().unwrap().field_violations[0]
        .description
        .clone();
    assert!(why.contains("payroll:read"), "{why}");
    let mut widened = narrow.key.clone().unwrap();
    widened.scopes = strings(&["payroll:read"]);
    let refused = update_key(&server, widened, &["scopes"]).await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["key.scopes[0]"]);

    // Narrowing a key further through UpdateKey takes effect at once.
    let mut narrower = narrow.key.clone().unwrap();
    narrower.scopes = strings(&["billing:read:own"]);
    let updated = update_key(&server, narrower, &["scopes"]).await.unwrap();
    assert_eq!(updated.scopes, ["billing:read:own"]);
    assert_eq!(
        code(&server, &narrow.token, &["billing:read"]).await,
        VerifyCode::ScopeNotAllowed
    );
    assert_eq!(
        code(&server, &narrow.token, &["billing:read:own"]).await,
        VerifyCode::Valid
    );

    // An identity that loses a grant takes it from the keys narrowed to it.
    update_identity(
        &server,
        proto::Identity {
            id: identity.id.clone(),
            scopes: strings(&["reports:read"]),
            ..Default::default()
        },
        &["scopes"],
    )
    .await
    .unwrap();
    let answer = verify(&server, &narrow.token, "", &[]).await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert!(answer.scopes.is_empty(), "{:?}", answer.scopes);
    assert_eq!(
        code(&server, &narrow.token, &["billing:read:own"]).await,
        VerifyCode::ScopeNotAllowed
    );
    assert_eq!(
        code(&server, &broad, &["billing:read"]).await,
        VerifyCode::ScopeNotAllowed
    );
    assert_eq!(
        code(&server, &broad, &["reports:read"]).await,
        VerifyCode::Valid
    );
    server.stop().await;
}

on_both_stores!(
    scopes_come_after_secret_state_address_and_dataset,
    order_body
);
async fn order_body(server: TestServer) {
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "ordered".into(),
            allowed_cidrs: strings(&["10.0.0.0/8"]),
            ..Default::default()
        })
        .await;
    let token = created.token;
    let identity_id = created.identity.unwrap().id;
    let ask = |token: String, ip: &str, dataset: &str| proto::VerifyRequest {
        token,
        client_ip: ip.into(),
        dataset: dataset.into(),
        required_scopes: strings(&["missing:scope"]),
        cost: None,
    };
    let answer = |request| async {
        server
            .verifier()
            .await
            .verify(request)
            .await
            .unwrap()
            .into_inner()
            .code()
    };
    // A wrong secret is UNKNOWN whatever the scopes.
    let mut wrong = token.clone();
    wrong.replace_range(30..31, if &wrong[30..31] == "A" { "B" } else { "A" });
    let wrong_code = answer(ask(wrong, "10.0.0.1", "")).await;
    assert!(
        matches!(wrong_code, VerifyCode::Unknown | VerifyCode::Malformed),
        "{wrong_code:?}"
    );
    assert_eq!(
        answer(ask(token.clone(), "192.0.2.1", "")).await,
        VerifyCode::IpNotAllowed
    );
    assert_eq!(
        answer(ask(token.clone(), "10.0.0.1", "sales")).await,
        VerifyCode::DatasetNotAllowed
    );
    assert_eq!(
        answer(ask(token.clone(), "10.0.0.1", "")).await,
        VerifyCode::ScopeNotAllowed
    );
    server
        .admin()
        .await
        .disable_identity(authed(
            &server.admin_token,
            proto::DisableIdentityRequest { identity_id },
        ))
        .await
        .unwrap();
    assert_eq!(
        answer(ask(token.clone(), "10.0.0.1", "")).await,
        VerifyCode::Disabled
    );
    server.stop().await;
}

on_both_stores!(a_key_narrows_its_identitys_datasets, datasets_body);
async fn datasets_body(server: TestServer) {
    create_dataset(&server, "sales").await;
    create_dataset(&server, "hr").await;
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "analyst".into(),
            datasets: strings(&["sales", "hr"]),
            ..Default::default()
        })
        .await;
    let identity = created.identity.unwrap();
    let hr_only = create_key(
        &server,
        proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            name: "hr_only".into(),
            datasets: strings(&["hr"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(hr_only.key.as_ref().unwrap().datasets, ["hr"]);
    let answer = verify(&server, &hr_only.token, "hr", &[]).await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.datasets, ["hr"]);
    assert_eq!(
        verify(&server, &hr_only.token, "sales", &[]).await.code(),
        VerifyCode::DatasetNotAllowed
    );
    let answer = verify(&server, &created.token, "sales", &[]).await;
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.datasets, ["sales", "hr"]);

    // A dataset the identity does not hold is refused, naming it.
    let refused = create_key(
        &server,
        proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            name: "elsewhere".into(),
            datasets: strings(&["hr", "finance"]),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&refused), ["datasets[1]"]);

    // UpdateKey with mask `datasets` re-narrows it.
    let mut key = hr_only.key.unwrap();
    key.datasets = strings(&["sales"]);
    update_key(&server, key, &["datasets"]).await.unwrap();
    assert_eq!(
        verify(&server, &hr_only.token, "hr", &[]).await.code(),
        VerifyCode::DatasetNotAllowed
    );
    assert_eq!(
        verify(&server, &hr_only.token, "sales", &[]).await.code(),
        VerifyCode::Valid
    );
    // The identity losing the dataset takes it from the key.
    update_identity(
        &server,
        proto::Identity {
            id: identity.id.clone(),
            datasets: strings(&["hr"]),
            ..Default::default()
        },
        &["datasets"],
    )
    .await
    .unwrap();
    let answer = verify(&server, &hr_only.token, "sales", &[]).await;
    assert_eq!(answer.code(), VerifyCode::DatasetNotAllowed);
    assert!(answer.datasets.is_empty());
    server.stop().await;
}

on_both_stores!(listings_filter_by_scope, listing_body);
async fn listing_body(server: TestServer) {
    let billing = server
        .create_identity(proto::CreateIdentityRequest {
            name: "billing".into(),
            scopes: strings(&["billing:*"]),
            ..Default::default()
        })
        .await;
    server
        .create_identity(proto::CreateIdentityRequest {
            name: "reports".into(),
            scopes: strings(&["reports:read"]),
            ..Default::default()
        })
        .await;
    let names_for = |filter: &str| {
        let filter = filter.to_owned();
        let server = &server;
        async move {
            let mut names: Vec<String> = server
                .admin()
                .await
                .list_identities(authed(
                    &server.admin_token,
                    proto::ListIdentitiesRequest {
                        filter,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .identities
                .into_iter()
                .map(|i| i.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names_for(r#"scope = "billing:read""#).await, ["billing"]);
    assert_eq!(names_for("scope = reports:read").await, ["reports"]);
    assert!(names_for(r#"scope = "reports:*""#).await.is_empty());

    let identity_id = billing.identity.unwrap().id;
    create_key(
        &server,
        proto::CreateKeyRequest {
            identity_id: identity_id.clone(),
            name: "invoices".into(),
            scopes: strings(&["billing:invoices:*"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let keys_for = |filter: &str| {
        let request = proto::ListKeysRequest {
            identity_id: identity_id.clone(),
            filter: filter.to_owned(),
            ..Default::default()
        };
        let server = &server;
        async move {
            let mut names: Vec<String> = server
                .admin()
                .await
                .list_keys(authed(&server.admin_token, request))
                .await
                .unwrap()
                .into_inner()
                .keys
                .into_iter()
                .map(|k| k.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(
        keys_for(r#"scope = "billing:invoices:get""#).await,
        ["default", "invoices"]
    );
    assert_eq!(keys_for(r#"scope = "billing:payments""#).await, ["default"]);
    assert_eq!(
        keys_for(r#"scope = "billing:payments" AND state = DISABLED"#).await,
        Vec::<String>::new()
    );
    server.stop().await;
}

/// Rolled keys keep their narrowing; a person holds scopes an admin granted,
/// and the identity provider's updates leave them alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_and_people_keep_their_grants() {
    for backend in [Backend::Memory, Backend::Redis(RedisServer::start())] {
        let server = TestServer::start_with(
            backend,
            AuthorityOptions {
                totp_for_roll: false,
                ..Default::default()
            },
            Duration::from_secs(60),
        )
        .await;
        create_dataset(&server, "sales").await;
        let created = server
            .create_identity(proto::CreateIdentityRequest {
                name: "roller".into(),
                scopes: strings(&["orders:*"]),
                datasets: strings(&["sales"]),
                ..Default::default()
            })
            .await;
        let narrow = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: created.identity.unwrap().id,
                name: "narrow".into(),
                scopes: strings(&["orders:read"]),
                datasets: strings(&["sales"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let rolled = server
            .admin()
            .await
            .roll_key(authed(
                &server.admin_token,
                proto::RollKeyRequest {
                    key_id: narrow.key.unwrap().id,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let replacement = rolled.key.unwrap();
        assert_eq!(replacement.scopes, ["orders:read"]);
        assert_eq!(replacement.datasets, ["sales"]);
        let answer = verify(&server, &rolled.token, "sales", &["orders:read"]).await;
        assert_eq!(answer.code(), VerifyCode::Valid);
        assert_eq!(answer.scopes, ["orders:read"]);
        assert_eq!(
            code(&server, &rolled.token, &["orders:write"]).await,
            VerifyCode::ScopeNotAllowed
        );

        // People: an admin grants scopes; SCIM updates keep them.
        let person = server
            .authority
            .provision_person(PersonProfile {
                user_name: "ada@example.com".into(),
                external_id: None,
                display_name: "Ada".into(),
                active: Some(true),
            })
            .await
            .unwrap();
        let granted = update_identity(
            &server,
            proto::Identity {
                id: person.id.to_string(),
                scopes: strings(&["console:read"]),
                ..Default::default()
            },
            &["scopes"],
        )
        .await
        .unwrap();
        assert_eq!(granted.scopes, ["console:read"]);
        let person_key = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: person.id.to_string(),
                name: "laptop".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        server
            .authority
            .update_person(&person.id, None, |mut profile| {
                profile.display_name = "Ada Lovelace".into();
                Ok(profile)
            })
            .await
            .unwrap();
        let answer = verify(&server, &person_key.token, "", &["console:read"]).await;
        assert_eq!(answer.code(), VerifyCode::Valid);
        assert_eq!(answer.scopes, ["console:read"]);
        server.stop().await;
    }
}

/// Verify's code from an authority called directly, as a replica serves it.
async fn verify_on(
    authority: &Authority,
    token: &str,
    required_scopes: &[String],
) -> keyrack::domain::VerifyCode {
    authority
        .verify(VerifyQuery {
            token,
            dataset: None,
            client_ip: None,
            required_scopes,
            context: Default::default(),
            cost: 1,
        })
        .await
        .expect("the replica answers")
        .code
}

/// Two replicas over one Redis: a change of scopes through one is what the
/// other answers by within the consistency bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_change_through_one_replica_is_seen_by_another() {
    let a = TestServer::redis().await;
    // Replica B: its own store connection, caches and guard on the same Redis.
    let b = test_authority(open_store(&a.backend).await, AuthorityOptions::default());
    let created = a
        .create_identity(proto::CreateIdentityRequest {
            name: "shared".into(),
            scopes: strings(&["jobs:run"]),
            ..Default::default()
        })
        .await;
    let identity_id = created.identity.unwrap().id;
    let required = strings(&["jobs:run"]);
    for round in 0..20 {
        // B has just answered for the token, so whatever it keeps is warm.
        assert_eq!(
            verify_on(&b, &created.token, &[]).await,
            keyrack::domain::VerifyCode::Valid
        );
        let (scopes, expected) = if round % 2 == 0 {
            (
                strings(&["jobs:list"]),
                keyrack::domain::VerifyCode::ScopeNotAllowed,
            )
        } else {
            (strings(&["jobs:*"]), keyrack::domain::VerifyCode::Valid)
        };
        update_identity(
            &a,
            proto::Identity {
                id: identity_id.clone(),
                scopes,
                ..Default::default()
            },
            &["scopes"],
        )
        .await
        .unwrap();
        // B called in-process has no network hop before it answers, so it
        // may ask before Redis's invalidation has been read; the promise is
        // the staleness bound (100 ms), which is what is held here.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
        loop {
            let seen = verify_on(&b, &created.token, &required).await;
            if seen == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: B still answers {seen:?} past the staleness bound"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    a.stop().await;
}
