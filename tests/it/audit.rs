//! The audit log on both stores: every Admin mutation leaves exactly one
//! event with the right actor, targets, outcome, address and request id;
//! refusals are recorded with their code; ListAuditEvents pages newest first
//! and filters by target, actor and action.

use crate::on_both_stores;
use crate::roll::enrolled_admin;
use crate::support::{TestServer, authed};
use keyrack::proto;
use std::collections::HashMap;
use tonic::Code;

/// A request as `token`, tagged with `x-request-id: id`.
fn tagged<T>(token: &str, id: &str, message: T) -> tonic::Request<T> {
    let mut request = authed(token, message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// Every event, newest first, read in pages of three.
pub(crate) async fn all_events(
    server: &TestServer,
    filter: proto::ListAuditEventsRequest,
) -> Vec<proto::AuditEvent> {
    let mut admin = server.admin().await;
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit_events(authed(
                &server.admin_token,
                proto::ListAuditEventsRequest {
                    page_size: 3,
                    page_token: page_token.clone(),
                    ..filter.clone()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 3);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// Orders stream ids `<ms>-<seq>`.
fn position(id: &str) -> (u64, u64) {
    let (millis, seq) = id.split_once('-').unwrap();
    (millis.parse().unwrap(), seq.parse().unwrap())
}

async fn every_mutation_leaves_exactly_one_event(server: TestServer) {
    let auditor = enrolled_admin(&server, "auditor").await;
    let token = auditor.token.as_str();
    let mut admin = server.admin().await;

    let created = admin
        .create_identity(tagged(
            token,
            "r-create",
            proto::CreateIdentityRequest {
                name: "audited_svc".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let identity = created.identity.unwrap().id;
    let first_key = created.key.unwrap().id;
    admin
        .update_identity(tagged(
            token,
            "r-update",
            proto::UpdateIdentityRequest {
                identity: Some(proto::Identity {
                    id: identity.clone(),
                    description: "audited".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap();
    admin
        .disable_identity(tagged(
            token,
            "r-disable",
            proto::DisableIdentityRequest {
                identity_id: identity.clone(),
            },
        ))
        .await
        .unwrap();
    admin
        .enable_identity(tagged(
            token,
            "r-enable",
            proto::EnableIdentityRequest {
                identity_id: identity.clone(),
            },
        ))
        .await
        .unwrap();
    let second_key = admin
        .create_key(tagged(
            token,
            "r-key",
            proto::CreateKeyRequest {
                identity_id: identity.clone(),
                name: "second".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .id;
    admin
        .update_key(tagged(
            token,
            "r-key-update",
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: second_key.clone(),
                    description: "renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap();
    admin
        .disable_key(tagged(
            token,
            "r-key-disable",
            proto::DisableKeyRequest {
                key_id: second_key.clone(),
            },
        ))
        .await
        .unwrap();
    admin
        .enable_key(tagged(
            token,
            "r-key-enable",
            proto::EnableKeyRequest {
                key_id: second_key.clone(),
            },
        ))
        .await
        .unwrap();
    let rolled = admin
        .roll_key(tagged(
            token,
            "r-roll",
            proto::RollKeyRequest {
                key_id: second_key.clone(),
                totp_code: auditor.next_code(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .id;
    let wrong_code = admin
        .roll_key(tagged(
            token,
            "r-wrong-code",
            proto::RollKeyRequest {
                key_id: rolled.clone(),
                totp_code: "000000".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_code.code(), Code::PermissionDenied);
    admin
        .revoke_key(tagged(
            token,
            "r-revoke",
            proto::RevokeKeyRequest {
                key_id: first_key.clone(),
            },
        ))
        .await
        .unwrap();
    admin
        .create_dataset(tagged(
            token,
            "r-dataset",
            proto::CreateDatasetRequest {
                name: "ledger".into(),
                skip_key: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let wizard = admin
        .create_dataset(tagged(
            token,
            "r-wizard",
            proto::CreateDatasetRequest {
                name: "invoices".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let wizard_identity = wizard.identity.unwrap().id;
    admin
        .delete_dataset(tagged(
            token,
            "r-dataset-delete",
            proto::DeleteDatasetRequest {
                dataset: "invoices".into(),
                force: true,
            },
        ))
        .await
        .unwrap();
    admin
        .delete_identity(tagged(
            token,
            "r-delete",
            proto::DeleteIdentityRequest {
                identity_id: identity.clone(),
            },
        ))
        .await
        .unwrap();

    // Refusals are recorded with their code.
    let missing = admin
        .delete_identity(tagged(
            token,
            "r-missing",
            proto::DeleteIdentityRequest {
                identity_id: identity.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = admin
        .create_identity(tagged(
            token,
            "r-bad-name",
            proto::CreateIdentityRequest {
                name: "no spaces allowed".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let events = all_events(&server, proto::ListAuditEventsRequest::default()).await;
    assert!(
        events
            .windows(2)
            .all(|pair| position(&pair[0].id) > position(&pair[1].id)),
        "newest first"
    );
    let mut by_request: HashMap<&str, Vec<&proto::AuditEvent>> = HashMap::new();
    for event in &events {
        by_request
            .entry(event.request_id.as_str())
            .or_default()
            .push(event);
    }
    let auditor_identity = events
        .iter()
        .find(|e| e.request_id == "r-create")
        .expect("r-create was audited")
        .actor_identity_id
        .clone();
    let (identity, first_key, second_key, rolled, wizard_identity) = (
        identity.as_str(),
        first_key.as_str(),
        second_key.as_str(),
        rolled.as_str(),
        wizard_identity.as_str(),
    );
    let expected: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            "r-create",
            "CreateIdentity",
            "OK",
            vec![identity, first_key],
        ),
        ("r-update", "UpdateIdentity", "OK", vec![identity]),
        ("r-disable", "DisableIdentity", "OK", vec![identity]),
        ("r-enable", "EnableIdentity", "OK", vec![identity]),
        ("r-key", "CreateKey", "OK", vec![identity, second_key]),
        ("r-key-update", "UpdateKey", "OK", vec![second_key]),
        ("r-key-disable", "DisableKey", "OK", vec![second_key]),
        ("r-key-enable", "EnableKey", "OK", vec![second_key]),
        ("r-roll", "RollKey", "OK", vec![second_key, rolled]),
        ("r-revoke", "RevokeKey", "OK", vec![first_key]),
        ("r-dataset", "CreateDataset", "OK", vec!["ledger"]),
        (
            "r-wizard",
            "CreateDataset",
            "OK",
            vec!["invoices", wizard_identity],
        ),
        ("r-dataset-delete", "DeleteDataset", "OK", vec!["invoices"]),
        ("r-delete", "DeleteIdentity", "OK", vec![identity]),
        ("r-missing", "DeleteIdentity", "NOT_FOUND", vec![identity]),
        ("r-bad-name", "CreateIdentity", "INVALID_ARGUMENT", vec![]),
        ("r-wrong-code", "RollKey", "PERMISSION_DENIED", vec![rolled]),
    ];
    for (request_id, action, outcome, targets) in &expected {
        let found = by_request
            .get(request_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{request_id}: exactly one event, got {found:?}"
        );
        let event = found[0];
        assert_eq!(&event.action, action, "{request_id}");
        assert_eq!(&event.outcome, outcome, "{request_id}");
        assert_eq!(event.actor_identity_id, auditor_identity, "{request_id}");
        assert!(!event.actor_key_id.is_empty(), "{request_id}");
        assert!(
            event.caller_address.starts_with("127.0.0.1:"),
            "{request_id}: {}",
            event.caller_address
        );
        assert!(event.time.is_some());
        for target in targets {
            assert!(
                event.target_ids.iter().any(|t| t == target),
                "{request_id}: {target} missing from {:?}",
                event.target_ids
            );
        }
    }
    // The auditor's own setup: EnrollTotp, a wrong ConfirmTotp, a right one.
    let confirmations: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "ConfirmTotp")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(confirmations, ["OK", "PERMISSION_DENIED"]);
    assert!(
        events
            .iter()
            .any(|e| e.action == "EnrollTotp" && e.outcome == "OK")
    );
    // The first admin was created without a caller.
    let bootstrap = events
        .iter()
        .find(|e| e.action == "BootstrapAdmin")
        .expect("the first admin's creation is audited");
    assert!(bootstrap.actor_identity_id.is_empty() && bootstrap.target_ids.len() == 2);

    // Filters.
    let about_identity = all_events(
        &server,
        proto::ListAuditEventsRequest {
            target_id: identity.to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        about_identity
            .iter()
            .all(|e| e.target_ids.iter().any(|t| t == identity))
    );
    assert_eq!(about_identity.len(), 7, "{about_identity:#?}");
    let rolls = all_events(
        &server,
        proto::ListAuditEventsRequest {
            action: "RollKey".into(),
            ..Default::default()
        },
    )
    .await;
    let roll_ids: Vec<&str> = rolls.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(roll_ids, ["r-wrong-code", "r-roll"]);
    let by_root = all_events(
        &server,
        proto::ListAuditEventsRequest {
            actor_identity_id: auditor_identity.clone(),
            action: "CreateIdentity".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_root.len(), 2, "r-create and r-bad-name");

    let bad_token = admin
        .list_audit_events(authed(
            &server.admin_token,
            proto::ListAuditEventsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    let not_admin = admin
        .list_audit_events(authed(
            &created.token,
            proto::ListAuditEventsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        not_admin.code(),
        Code::Unauthenticated,
        "the identity is gone"
    );
    server.stop().await;
}
on_both_stores!(
    every_mutation_is_audited,
    every_mutation_leaves_exactly_one_event
);

async fn the_log_is_bounded_by_age(server: TestServer) {
    server.create_service("old_news").await;
    let before = server.store.list_audit(None, 100).await.unwrap();
    assert!(before.len() >= 2, "bootstrap and the creation");
    std::thread::sleep(std::time::Duration::from_millis(20));
    server
        .authority
        .trim_audit(std::time::Duration::from_millis(10))
        .await
        .unwrap();
    let after = server.store.list_audit(None, 100).await.unwrap();
    assert!(
        after.is_empty(),
        "everything was older than 10 ms: {after:?}"
    );
    server.create_service("fresh_news").await;
    let latest = server.store.list_audit(None, 1).await.unwrap();
    assert_eq!(latest[0].action, "CreateIdentity");
    server.stop().await;
}
on_both_stores!(age_bound, the_log_is_bounded_by_age);
