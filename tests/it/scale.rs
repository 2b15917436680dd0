//! Operating at scale: authority-wide key listing with filters, orders and
//! totals; labels; batch revoke; rolls with a new expiry; imports.

use crate::support::{Backend, RedisServer, TestServer, authed, eventually};
use keyrack::proto::{self, Origin, VerifyCode};
use keyrack::service::AuthorityOptions;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;
use tonic_types::StatusExt;

fn labels(entries: &[(&str, &str)]) -> HashMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn in_days(days: i64) -> Option<prost_types::Timestamp> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Some(prost_types::Timestamp {
        seconds: now + days * 86_400,
        nanos: 0,
    })
}

/// A server on each backend that rolls without TOTP (the codes are covered by
/// the roll tests) and flushes last-use times quickly.
async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for backend in [Backend::Memory, Backend::Redis(RedisServer::start())] {
        servers.push(
            TestServer::start_with(
                backend,
                AuthorityOptions {
                    totp_for_roll: false,
                    ..Default::default()
                },
                Duration::from_millis(100),
            )
            .await,
        );
    }
    servers
}

async fn list(server: &TestServer, request: proto::ListKeysRequest) -> proto::ListKeysResponse {
    server
        .admin()
        .await
        .list_keys(authed(&server.admin_token, request))
        .await
        .unwrap_or_else(|status| panic!("ListKeys: {status:?}"))
        .into_inner()
}

async fn names(server: &TestServer, filter: &str, order_by: &str) -> Vec<String> {
    list(
        server,
        proto::ListKeysRequest {
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 1000,
            ..Default::default()
        },
    )
    .await
    .keys
    .into_iter()
    .map(|key| key.name)
    .collect()
}

async fn create_key(
    server: &TestServer,
    request: proto::CreateKeyRequest,
) -> proto::CreateKeyResponse {
    server
        .admin()
        .await
        .create_key(authed(&server.admin_token, request))
        .await
        .expect("create key")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_wide_listing_filters_orders_and_counts() {
    for server in servers().await {
        let team = server
            .create_identity(proto::CreateIdentityRequest {
                name: "team".into(),
                labels: labels(&[("tenant", "acme"), ("team", "billing")]),
                ..Default::default()
            })
            .await;
        let team_id = team.identity.unwrap().id;
        let other = server.create_service("other").await;
        let soon = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: team_id.clone(),
                name: "soon".into(),
                expire_time: in_days(1),
                labels: labels(&[("team", "payments")]),
                ..Default::default()
            },
        )
        .await;
        create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: team_id.clone(),
                name: "later".into(),
                expire_time: in_days(30),
                ..Default::default()
            },
        )
        .await;
        // A roll with a grace period: the old key is in grace, the new one is ORIGIN_ROLL.
        let rolled = server
            .admin()
            .await
            .roll_key(authed(
                &server.admin_token,
                proto::RollKeyRequest {
                    key_id: other.key.unwrap().id,
                    old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                        prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        },
                    )),
                    new_key_expire_time: in_days(7),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let replacement = rolled.key.unwrap();
        assert_eq!(replacement.origin(), Origin::Roll);
        assert!(
            replacement.expire_time.is_some(),
            "new_key_expire_time applies"
        );
        server
            .admin()
            .await
            .disable_key(authed(
                &server.admin_token,
                proto::DisableKeyRequest {
                    key_id: soon.key.as_ref().unwrap().id.clone(),
                },
            ))
            .await
            .unwrap();

        // Everything: root's key, team's three, other's old and new key.
        let everything = list(&server, proto::ListKeysRequest::default()).await;
        assert_eq!(everything.total_size, 6, "{:?}", everything.keys);
        assert_eq!(everything.keys.len(), 6);
        let mut ids: Vec<&str> = everything.keys.iter().map(|k| k.id.as_str()).collect();
        let listed = ids.clone();
        ids.sort();
        assert_eq!(ids, listed, "the default order is by key id");

        assert_eq!(names(&server, "state = DISABLED", "").await, ["soon"]);
        let decoy = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: team_id.clone(),
                name: "decoy".into(),
                honeytoken: true,
                ..Default::default()
            },
        )
        .await;
        assert!(decoy.key.as_ref().unwrap().honeytoken);
        assert_eq!(names(&server, "honeytoken = true", "").await, ["decoy"]);
        assert_eq!(names(&server, "honeytoken = false", "").await.len(), 6);
        server
            .admin()
            .await
            .revoke_key(authed(
                &server.admin_token,
                proto::RevokeKeyRequest {
                    key_id: decoy.key.unwrap().id,
                },
            ))
            .await
            .unwrap();
        assert_eq!(names(&server, "in_grace = true", "").await, ["default"]);
        assert_eq!(
            names(&server, "origin = ROLL", "").await,
            std::slice::from_ref(&replacement.name)
        );
        assert_eq!(
            names(&server, "origin = ORIGIN_CREATE_KEY", "name").await,
            ["later", "soon"]
        );
        assert_eq!(
            names(&server, &format!("identity_id = {team_id}"), "name desc").await,
            ["soon", "later", "default"]
        );
        assert_eq!(names(&server, "labels.team = payments", "").await, ["soon"]);
        // Expiry comparisons and order: keys without expiry never match a
        // comparison and sort last.
        let in_3_days = {
            let t = in_days(3).unwrap();
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.seconds as u64))
                .to_string()
        };
        assert_eq!(
            names(&server, &format!("expire_time < \"{in_3_days}\""), "").await,
            ["soon"]
        );
        assert_eq!(
            names(
                &server,
                &format!("expire_time > {in_3_days}"),
                "expire_time"
            )
            .await,
            [replacement.name.as_str(), "later"]
        );
        let by_expiry = names(&server, "", "expire_time").await;
        assert_eq!(
            &by_expiry[..3],
            ["soon", replacement.name.as_str(), "later"]
        );
        let by_creation = names(&server, "", "create_time desc").await;
        assert_eq!(by_creation.len(), 6);

        // last_use_time: used keys only, once the flush has written them.
        let verifier = |token: String| async {
            server
                .verifier()
                .await
                .verify(proto::VerifyRequest {
                    token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        };
        assert_eq!(
            verifier(rolled.token.clone()).await.code(),
            VerifyCode::Valid
        );
        let an_hour_ago =
            humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3600))
                .to_string();
        eventually("the use is flushed", Duration::from_secs(10), || async {
            names(&server, &format!("last_use_time > {an_hour_ago}"), "")
                .await
                .contains(&replacement.name)
        })
        .await;

        // Labels reach Verify merged, the key's value winning.
        let answer = verifier(soon.token.clone()).await;
        assert_eq!(answer.code(), VerifyCode::Disabled);
        server
            .admin()
            .await
            .enable_key(authed(
                &server.admin_token,
                proto::EnableKeyRequest {
                    key_id: soon.key.as_ref().unwrap().id.clone(),
                },
            ))
            .await
            .unwrap();
        let answer = verifier(soon.token.clone()).await;
        assert_eq!(answer.code(), VerifyCode::Valid);
        assert_eq!(
            answer.labels,
            labels(&[("tenant", "acme"), ("team", "payments")])
        );
        let identities = server
            .admin()
            .await
            .list_identities(authed(
                &server.admin_token,
                proto::ListIdentitiesRequest {
                    filter: "labels.tenant = acme".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .identities;
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0].key_count, 3);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_while_keys_are_created() {
    for server in servers().await {
        let identity = server.create_service("pager").await.identity.unwrap().id;
        for i in 0..9 {
            create_key(
                &server,
                proto::CreateKeyRequest {
                    identity_id: identity.clone(),
                    name: format!("k{i}"),
                    ..Default::default()
                },
            )
            .await;
        }
        for order_by in ["", "name", "create_time desc"] {
            let mut seen: Vec<String> = Vec::new();
            let mut token = String::new();
            let mut round = 0;
            loop {
                let page = list(
                    &server,
                    proto::ListKeysRequest {
                        page_size: 4,
                        page_token: token.clone(),
                        order_by: order_by.into(),
                        filter: format!("identity_id = {identity}"),
                        ..Default::default()
                    },
                )
                .await;
                seen.extend(page.keys.iter().map(|k| k.id.clone()));
                // A key created between pages must not make any other key
                // appear twice or go missing.
                create_key(
                    &server,
                    proto::CreateKeyRequest {
                        identity_id: identity.clone(),
                        name: format!("x{}{round}", order_by.len()),
                        ..Default::default()
                    },
                )
                .await;
                round += 1;
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), seen.len(), "{order_by}: a key came twice");
            assert!(
                seen.len() >= 10,
                "{order_by}: keys went missing: {}",
                seen.len()
            );
        }
        // A token of one order is refused under another.
        let first = list(
            &server,
            proto::ListKeysRequest {
                page_size: 2,
                order_by: "name".into(),
                ..Default::default()
            },
        )
        .await;
        let refused = server
            .admin()
            .await
            .list_keys(authed(
                &server.admin_token,
                proto::ListKeysRequest {
                    page_size: 2,
                    page_token: first.next_page_token,
                    order_by: "expire_time".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_revoke_previews_then_revokes_each_with_an_audit_event() {
    // TOTP enforced: the real revoke needs a code, the preview does not.
    let guarded = TestServer::memory().await;
    let refused = guarded
        .admin()
        .await
        .batch_revoke_keys(authed(
            &guarded.admin_token,
            proto::BatchRevokeKeysRequest {
                filter: "origin = CREATE_KEY".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    guarded.stop().await;

    for server in servers().await {
        let identity = server.create_service("batch").await.identity.unwrap().id;
        let mut tokens = Vec::new();
        for (name, team) in [("a", "old"), ("b", "old"), ("c", "new")] {
            let created = create_key(
                &server,
                proto::CreateKeyRequest {
                    identity_id: identity.clone(),
                    name: name.into(),
                    labels: labels(&[("team", team)]),
                    ..Default::default()
                },
            )
            .await;
            tokens.push(created.token);
        }
        let batch = |filter: &str, validate_only: bool| {
            let request = proto::BatchRevokeKeysRequest {
                filter: filter.into(),
                validate_only,
                ..Default::default()
            };
            let server = &server;
            async move {
                server
                    .admin()
                    .await
                    .batch_revoke_keys(authed(&server.admin_token, request))
                    .await
            }
        };
        let empty = batch("  ", false).await.unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert_eq!(
            empty.get_details_bad_request().unwrap().field_violations[0].field,
            "filter"
        );
        let before = server.store.list_audit(None, 1000).await.unwrap().len();
        let preview = batch("labels.team = old", true).await.unwrap().into_inner();
        assert_eq!(preview.revoked_count, 0);
        assert_eq!(preview.keys.len(), 2);
        for token in &tokens {
            assert_eq!(server.verify_code(token).await, Ok(VerifyCode::Valid));
        }
        let done = batch("labels.team = old", false)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.revoked_count, 2);
        assert_eq!(
            server.verify_code(&tokens[0]).await,
            Ok(VerifyCode::Unknown)
        );
        assert_eq!(
            server.verify_code(&tokens[1]).await,
            Ok(VerifyCode::Unknown)
        );
        assert_eq!(server.verify_code(&tokens[2]).await, Ok(VerifyCode::Valid));
        let events = server.store.list_audit(None, 1000).await.unwrap();
        let revokes: Vec<_> = events[..events.len() - before]
            .iter()
            .filter(|event| event.action == "RevokeKey")
            .collect();
        assert_eq!(revokes.len(), 2, "{events:?}");
        let mut revoked: Vec<&String> = revokes.iter().flat_map(|e| &e.target_ids).collect();
        let mut previewed: Vec<&String> = preview.keys.iter().map(|k| &k.id).collect();
        revoked.sort();
        previewed.sort();
        assert_eq!(revoked, previewed);
        assert!(
            revokes
                .iter()
                .all(|e| e.outcome == "OK" && e.actor_identity_id.is_some())
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_lifetimes_belong_to_the_identity_provider() {
    for server in servers().await {
        let person = server
            .authority
            .provision_person(keyrack::service::PersonProfile {
                user_name: "grace@example.com".into(),
                external_id: None,
                display_name: "Grace".into(),
                active: Some(true),
            })
            .await
            .unwrap();
        let refused = server
            .admin()
            .await
            .update_identity(authed(
                &server.admin_token,
                proto::UpdateIdentityRequest {
                    identity: Some(proto::Identity {
                        id: person.id.to_string(),
                        expire_time: in_days(3),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["expire_time".into()],
                    }),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let refused = server
            .admin()
            .await
            .create_key(authed(
                &server.admin_token,
                proto::CreateKeyRequest {
                    identity_id: person.id.to_string(),
                    name: "laptop".into(),
                    expire_time: in_days(3),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let refused = server
            .admin()
            .await
            .import_keys(authed(
                &server.admin_token,
                proto::ImportKeysRequest {
                    identity_id: person.id.to_string(),
                    keys: vec![proto::ImportedKey {
                        name: "legacy".into(),
                        token: "a-legacy-token-of-a-person-0000".into(),
                        expire_time: in_days(3),
                        ..Default::default()
                    }],
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        server.stop().await;
    }
}

const LEGACY_TOKEN: &str = "AbCdEf0123456789legacyGatewayKey42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_tokens_verify_and_nothing_of_them_is_stored() {
    for server in servers().await {
        let identity = server.create_service("importer").await.identity.unwrap().id;
        let import = |keys: Vec<proto::ImportedKey>| {
            let request = proto::ImportKeysRequest {
                identity_id: identity.clone(),
                keys,
            };
            let server = &server;
            async move {
                server
                    .admin()
                    .await
                    .import_keys(authed(&server.admin_token, request))
                    .await
            }
        };
        let key = |name: &str, token: &str| proto::ImportedKey {
            name: name.into(),
            token: token.into(),
            ..Default::default()
        };
        // Bad input: too short, too long, twice, keyrack's own format.
        let own = server.create_service("own").await.token;
        let refused = import(vec![
            key("a", "short"),
            key("b", &"x".repeat(257)),
            key("c", "duplicate-token-0123456789"),
            key("d", "duplicate-token-0123456789"),
            key("e", &own),
        ])
        .await
        .unwrap_err();
        let fields: Vec<String> = refused
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "keys[0].token",
                "keys[1].token",
                "keys[3].token",
                "keys[4].token"
            ]
        );
        let imported = import(vec![
            key("gateway", LEGACY_TOKEN),
            proto::ImportedKey {
                disabled: true,
                ..key("off", "another-legacy-token-0000")
            },
        ])
        .await
        .unwrap()
        .into_inner()
        .keys;
        assert_eq!(imported[0].origin(), Origin::Import);
        assert_eq!(imported[1].state(), proto::State::Disabled);
        assert_eq!(
            server.verify_code(LEGACY_TOKEN).await,
            Ok(VerifyCode::Valid)
        );
        assert_eq!(
            server.verify_code("another-legacy-token-0000").await,
            Ok(VerifyCode::Disabled)
        );
        // A near miss is not a key.
        let near = format!("{}3", &LEGACY_TOKEN[..LEGACY_TOKEN.len() - 1]);
        assert_ne!(server.verify_code(&near).await, Ok(VerifyCode::Valid));
        // Importing the same token again is refused.
        let again = import(vec![key("twice", LEGACY_TOKEN)]).await.unwrap_err();
        assert_eq!(again.code(), Code::InvalidArgument);
        // An imported key is a key like any other: revoke ends it.
        server
            .admin()
            .await
            .revoke_key(authed(
                &server.admin_token,
                proto::RevokeKeyRequest {
                    key_id: imported[0].id.clone(),
                },
            ))
            .await
            .unwrap();
        assert_ne!(
            server.verify_code(LEGACY_TOKEN).await,
            Ok(VerifyCode::Valid)
        );

        // Two imports race for one token: the one that loses it fails as a
        // whole, and the keys it had written before are taken back.
        const SHARED: &str = "a-token-both-imports-list-0000";
        let batch = |prefix: &str, shared_at: usize| -> Vec<proto::ImportedKey> {
            (0..8)
                .map(|index| {
                    let token = if index == shared_at {
                        SHARED.to_owned()
                    } else {
                        format!("{prefix}-legacy-token-number-{index:04}")
                    };
                    key(&format!("{prefix}_{index}"), &token)
                })
                .collect()
        };
        let (late, early) = (batch("late", 7), batch("early", 0));
        let (late_answer, early_answer) = tokio::join!(import(late.clone()), import(early.clone()));
        let (winner, loser) = match (&late_answer, &early_answer) {
            (Ok(_), Err(status)) | (Err(status), Ok(_)) => {
                // Lost while writing, or found taken while checking.
                assert!(
                    [Code::AlreadyExists, Code::InvalidArgument].contains(&status.code()),
                    "{status:?}"
                );
                if late_answer.is_ok() {
                    (&late, &early)
                } else {
                    (&early, &late)
                }
            }
            answers => panic!("exactly one import should win the shared token: {answers:?}"),
        };
        for key in winner {
            assert_eq!(server.verify_code(&key.token).await, Ok(VerifyCode::Valid));
        }
        for key in loser.iter().filter(|key| key.token != SHARED) {
            assert_eq!(
                server.verify_code(&key.token).await,
                Ok(VerifyCode::Malformed),
                "{} outlived its failed import",
                key.name
            );
        }
        if let Backend::Redis(redis) = &server.backend {
            for (name, value) in redis.dump() {
                assert!(
                    !name.contains("legacy")
                        && !value.contains("legacy")
                        && !value.contains("another-legacy"),
                    "{name} holds an imported token"
                );
            }
        }
        server.stop().await;
    }
}

/// Imports `LEGACY_TOKEN` as the key `gateway` of a new identity.
async fn import_legacy_token(server: &TestServer) {
    let identity = server.create_service("importer").await.identity.unwrap().id;
    server
        .admin()
        .await
        .import_keys(authed(
            &server.admin_token,
            proto::ImportKeysRequest {
                identity_id: identity,
                keys: vec![proto::ImportedKey {
                    name: "gateway".into(),
                    token: LEGACY_TOKEN.into(),
                    ..Default::default()
                }],
            },
        ))
        .await
        .unwrap();
}

/// Until a token is imported, a token that is not in keyrack's format (or
/// fails its checksum) is refused without an import lookup; once one replica
/// imports, another looks imported tokens up within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_cost_no_lookup_until_tokens_are_imported() {
    let (a, b) = crate::support::two_replicas().await;
    let redis = a.backend.redis();
    let keyrack_token = a.create_service("typo").await.token;
    let mut typo = keyrack_token.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let reads = || {
        crate::support::command_calls(redis, "get") + crate::support::command_calls(redis, "mget")
    };
    let before = reads();
    for token in [
        typo.as_str(),
        "not-a-keyrack-token-at-all-xyz",
        LEGACY_TOKEN,
    ] {
        assert_eq!(a.verify_code(token).await, Ok(VerifyCode::Malformed));
        assert_eq!(b.verify(token).await, Ok(VerifyCode::Malformed));
    }
    assert_eq!(reads(), before, "a malformed token was looked up");

    import_legacy_token(&a).await;
    assert_eq!(a.verify_code(LEGACY_TOKEN).await, Ok(VerifyCode::Valid));
    eventually(
        "replica B looks imported tokens up",
        Duration::from_secs(5),
        || async {
            let request = proto::VerifyRequest {
                token: LEGACY_TOKEN.into(),
                ..Default::default()
            };
            b.verify_with(request).await == Ok(VerifyCode::Valid)
        },
    )
    .await;
    b.stop().await;
    a.stop().await;
}

/// A store whose tokens were imported before the imports marker existed is
/// walked once for imported keys: they are found, the marker is set, and
/// every replica looks imported tokens up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_made_before_the_marker_are_found_by_one_walk() {
    let server = TestServer::start(Backend::Redis(RedisServer::start())).await;
    let redis = server.backend.redis();
    assert!(!server.store.has_imports().await.unwrap());
    let walked: bool = ::redis::cmd("EXISTS")
        .arg("keyrack:{imports}:checked")
        .query(&mut redis.connection())
        .unwrap();
    assert!(
        walked,
        "a store without imports is walked once, and says so"
    );

    import_legacy_token(&server).await;
    // As an older release left it: the index entry, no marker, no walk.
    let _: () = ::redis::cmd("DEL")
        .arg("keyrack:{imports}")
        .arg("keyrack:{imports}:checked")
        .query(&mut redis.connection())
        .unwrap();
    assert!(
        server.store.has_imports().await.unwrap(),
        "the walk finds it"
    );
    let marked: bool = ::redis::cmd("EXISTS")
        .arg("keyrack:{imports}")
        .query(&mut redis.connection())
        .unwrap();
    assert!(marked, "and marks the store");
    server.stop().await;
}
