//! Rolling keys with native grace periods, and the TOTP step-up that guards
//! it, on both stores. Codes are computed with totp-rs as an authenticator
//! app would.

use crate::on_both_stores;
use crate::support::{TestServer, authed, eventually};
use keyrack::proto::{self, VerifyCode, roll_key_request::OldKeyEnd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;

/// An admin with a confirmed authenticator.
pub(crate) struct Admin {
    pub(crate) token: String,
    pub(crate) seed: Vec<u8>,
}

pub(crate) fn current_step() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

pub(crate) fn code_at(seed: &[u8], step: u64) -> String {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        seed.to_vec(),
        Some("keyrack".into()),
        "test".into(),
    )
    .unwrap()
    .generate(step * 30)
}

impl Admin {
    /// The code an authenticator shows one step from now: a fresh step that
    /// the confirmation (which used the current one) did not consume.
    pub(crate) fn next_code(&self) -> String {
        code_at(&self.seed, current_step() + 1)
    }
}

async fn new_admin(server: &TestServer, name: &str) -> String {
    server
        .admin()
        .await
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: name.into(),
                admin: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
}

pub(crate) async fn enrolled_admin(server: &TestServer, name: &str) -> Admin {
    let token = new_admin(server, name).await;
    let mut admin = server.admin().await;
    let enrollment = admin
        .enroll_totp(authed(&token, proto::EnrollTotpRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        enrollment
            .otpauth_url
            .starts_with("otpauth://totp/keyrack:"),
        "{}",
        enrollment.otpauth_url
    );
    assert!(
        enrollment.otpauth_url.contains("issuer=keyrack") && enrollment.otpauth_url.contains(name)
    );
    let seed = totp_rs::Secret::Encoded(enrollment.secret.clone())
        .to_bytes()
        .unwrap();
    assert!(seed.len() * 8 >= 160, "seed of at least 160 bits");
    let confirm = |code: String| authed(&token, proto::ConfirmTotpRequest { code });
    let wrong = admin.confirm_totp(confirm("000000".into())).await;
    if let Err(status) = wrong {
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    admin
        .confirm_totp(confirm(code_at(&seed, current_step())))
        .await
        .unwrap();
    Admin { token, seed }
}

async fn service_key(server: &TestServer, name: &str) -> (proto::ApiKey, String) {
    let created = server.create_service(name).await;
    (created.key.unwrap(), created.token)
}

async fn verify(server: &TestServer, token: &str) -> proto::VerifyResponse {
    server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn roll(key_id: &str, end: Option<OldKeyEnd>, code: String) -> proto::RollKeyRequest {
    proto::RollKeyRequest {
        key_id: key_id.into(),
        old_key_end: end,
        totp_code: code,
        new_key_expire_time: None,
    }
}

fn grace(seconds: i64) -> Option<OldKeyEnd> {
    Some(OldKeyEnd::GracePeriod(prost_types::Duration {
        seconds,
        nanos: 0,
    }))
}

on_both_stores!(
    roll_with_grace_keeps_both_keys_until_the_deadline,
    roll_with_grace_body
);
async fn roll_with_grace_body(server: TestServer) {
    let operator = enrolled_admin(&server, "operator").await;
    let (old_key, old_token) = service_key(&server, "billing").await;
    let rolled = server
        .admin()
        .await
        .roll_key(authed(
            &operator.token,
            roll(&old_key.id, grace(3), operator.next_code()),
        ))
        .await
        .unwrap()
        .into_inner();
    let new_key = rolled.key.unwrap();
    let previous = rolled.previous_key.unwrap();
    assert_eq!(new_key.identity_id, old_key.identity_id);
    assert_eq!(new_key.name, old_key.name);
    assert_eq!(new_key.rolled_from, old_key.id);
    assert_eq!(previous.rolled_to, new_key.id);
    assert!(previous.in_grace && previous.grace_expire_time.is_some());

    let old_answer = verify(&server, &old_token).await;
    assert_eq!(old_answer.code(), VerifyCode::Valid);
    assert!(old_answer.in_grace);
    assert_eq!(old_answer.expire_time, previous.grace_expire_time);
    let new_answer = verify(&server, &rolled.token).await;
    assert_eq!(new_answer.code(), VerifyCode::Valid);
    assert!(!new_answer.in_grace);

    // Rolling the old key again is refused; so is editing away its grace.
    let again = server
        .admin()
        .await
        .roll_key(authed(
            &operator.token,
            roll(&old_key.id, None, operator.next_code()),
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    server
        .admin()
        .await
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: old_key.id.clone(),
                    description: "retiring".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap();

    let deadline = SystemTime::UNIX_EPOCH
        + Duration::from_secs(previous.grace_expire_time.unwrap().seconds as u64);
    eventually(
        "the old key stops on its own",
        Duration::from_secs(10),
        || async { verify(&server, &old_token).await.code() == VerifyCode::Unknown },
    )
    .await;
    let stopped_at = SystemTime::now();
    assert!(
        stopped_at + Duration::from_secs(1) >= deadline,
        "stopped before its deadline"
    );
    assert_eq!(
        verify(&server, &rolled.token).await.code(),
        VerifyCode::Valid
    );
    server.stop().await;
}

on_both_stores!(
    roll_without_grace_stops_the_old_key_at_once,
    roll_without_grace_body
);
async fn roll_without_grace_body(server: TestServer) {
    let operator = enrolled_admin(&server, "operator").await;
    let (old_key, old_token) = service_key(&server, "billing").await;
    let rolled = server
        .admin()
        .await
        .roll_key(authed(
            &operator.token,
            roll(&old_key.id, None, operator.next_code()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(rolled.previous_key.is_none());
    assert_eq!(
        verify(&server, &old_token).await.code(),
        VerifyCode::Unknown
    );
    assert_eq!(
        verify(&server, &rolled.token).await.code(),
        VerifyCode::Valid
    );
    server.stop().await;
}

on_both_stores!(
    roll_needs_a_fresh_totp_code,
    roll_needs_a_fresh_totp_code_body
);
async fn roll_needs_a_fresh_totp_code_body(server: TestServer) {
    let mut admin = server.admin().await;
    let (key, _) = service_key(&server, "billing").await;

    // Not enrolled: FAILED_PRECONDITION, whatever the code.
    let novice = new_admin(&server, "novice").await;
    let refused = admin
        .roll_key(authed(&novice, roll(&key.id, None, "123456".into())))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("enroll"),
        "{}",
        refused.message()
    );
    let confirm = admin
        .confirm_totp(authed(
            &novice,
            proto::ConfirmTotpRequest {
                code: "123456".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(confirm.code(), Code::FailedPrecondition);

    let operator = enrolled_admin(&server, "operator").await;
    // A confirmed authenticator cannot be swapped through the API.
    let swap = admin
        .enroll_totp(authed(&operator.token, proto::EnrollTotpRequest {}))
        .await
        .unwrap_err();
    assert_eq!(swap.code(), Code::FailedPrecondition);
    let missing = admin
        .roll_key(authed(&operator.token, roll(&key.id, None, String::new())))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::PermissionDenied);
    let code = operator.next_code();
    let rolled = admin
        .roll_key(authed(
            &operator.token,
            roll(&key.id, grace(60), code.clone()),
        ))
        .await
        .unwrap()
        .into_inner();
    // The same code again, on another key: a replay.
    let replay = admin
        .roll_key(authed(
            &operator.token,
            roll(&rolled.key.unwrap().id, None, code),
        ))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::PermissionDenied);
    assert!(
        replay.message().contains("already used"),
        "{}",
        replay.message()
    );

    // Bad requests are refused before the code is spent.
    let bad = admin
        .roll_key(authed(
            &operator.token,
            roll("nope", grace(-5), operator.next_code()),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let past = Some(OldKeyEnd::OldKeyExpireTime(prost_types::Timestamp {
        seconds: 1_000,
        nanos: 0,
    }));
    let (other, _) = service_key(&server, "other").await;
    let bad = admin
        .roll_key(authed(
            &operator.token,
            roll(&other.id, past, operator.next_code()),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

on_both_stores!(
    one_code_rolls_one_key_even_concurrently,
    one_code_rolls_one_key_body
);
async fn one_code_rolls_one_key_body(server: TestServer) {
    let operator = enrolled_admin(&server, "operator").await;
    let (first, _) = service_key(&server, "first").await;
    let (second, _) = service_key(&server, "second").await;
    let code = operator.next_code();
    let mut left = server.admin().await;
    let mut right = server.admin().await;
    let (a, b) = tokio::join!(
        left.roll_key(authed(&operator.token, roll(&first.id, None, code.clone()))),
        right.roll_key(authed(
            &operator.token,
            roll(&second.id, None, code.clone())
        )),
    );
    let outcomes = [
        a.map(|_| ()).map_err(|s| s.code()),
        b.map(|_| ()).map_err(|s| s.code()),
    ];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&Err(Code::PermissionDenied)),
        "{outcomes:?}"
    );
    server.stop().await;
}

on_both_stores!(
    wrong_codes_lock_the_admin_out,
    wrong_codes_lock_the_admin_out_body
);
async fn wrong_codes_lock_the_admin_out_body(server: TestServer) {
    let operator = enrolled_admin(&server, "operator").await;
    let (key, _) = service_key(&server, "billing").await;
    let mut admin = server.admin().await;
    let right = operator.next_code();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for attempt in 1..=5 {
        let refused = admin
            .roll_key(authed(&operator.token, roll(&key.id, None, wrong.into())))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "attempt {attempt}");
    }
    let locked = admin
        .roll_key(authed(&operator.token, roll(&key.id, None, right)))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted);
    // Another admin is not affected.
    let colleague = enrolled_admin(&server, "colleague").await;
    admin
        .roll_key(authed(
            &colleague.token,
            roll(&key.id, None, colleague.next_code()),
        ))
        .await
        .unwrap();
    server.stop().await;
}

on_both_stores!(
    disabled_keys_are_not_rolled,
    disabled_keys_are_not_rolled_body
);
async fn disabled_keys_are_not_rolled_body(server: TestServer) {
    let operator = enrolled_admin(&server, "operator").await;
    let (key, _) = service_key(&server, "billing").await;
    let mut admin = server.admin().await;
    admin
        .disable_key(authed(
            &server.admin_token,
            proto::DisableKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap();
    let refused = admin
        .roll_key(authed(
            &operator.token,
            roll(&key.id, None, operator.next_code()),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let unknown = admin
        .roll_key(authed(
            &operator.token,
            roll("AAAAAAAAAAAAAAAAAA", None, operator.next_code()),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

/// A grace deadline can never outlive the old key's own expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_is_capped_at_the_old_keys_expiry() {
    let server = TestServer::memory().await;
    let operator = enrolled_admin(&server, "operator").await;
    let (key, _) = service_key(&server, "billing").await;
    let mut admin = server.admin().await;
    let expiry = keyrack::grpc::convert::timestamp_out(keyrack::domain::UnixMillis(
        keyrack::domain::UnixMillis::now().0 + 60_000,
    ));
    let expiring = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: key.identity_id.clone(),
                name: "expiring".into(),
                expire_time: Some(expiry),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let rolled = admin
        .roll_key(authed(
            &operator.token,
            roll(&expiring.id, grace(3600), operator.next_code()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.previous_key.unwrap().grace_expire_time, Some(expiry));
    server.stop().await;
}
