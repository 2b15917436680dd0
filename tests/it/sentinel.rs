//! keyrack over a Sentinel-managed primary with `--durability replica`: when
//! the primary dies, Sentinel promotes the replica and keyrack follows it
//! without a restart; no revoke it acknowledged is lost, and nothing revoked
//! ever verifies, not even during the failover.

use crate::support::{Backend, RedisSentinels, TestServer, authed, eventually};
use keyrack::proto::{self, VerifyCode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_no_acknowledged_revoke() {
    let mut server = TestServer::start(Backend::Sentinel(RedisSentinels::start())).await;
    let kept = server.create_service("kept").await;
    let revoked = server.create_service("revoked").await;
    server
        .admin()
        .await
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: revoked.key.unwrap().id,
            },
        ))
        .await
        .expect("the revoke is acknowledged once the replica has it");
    assert_eq!(server.verify_code(&kept.token).await, Ok(VerifyCode::Valid));
    assert_eq!(
        server.verify_code(&revoked.token).await,
        Ok(VerifyCode::Unknown)
    );

    match &mut server.backend {
        Backend::Sentinel(sentinels) => sentinels.kill_primary(),
        _ => unreachable!(),
    }
    // Until Sentinel promotes the replica, calls fail closed.
    let during = server.verify_code(&kept.token).await;
    assert!(
        matches!(
            during,
            Err(tonic::Code::Unavailable) | Ok(VerifyCode::Valid)
        ),
        "{during:?}"
    );
    match &server.backend {
        Backend::Sentinel(sentinels) => sentinels.wait_for_failover(),
        _ => unreachable!(),
    }
    eventually(
        "keyrack follows the promoted replica",
        Duration::from_secs(15),
        || async {
            assert_ne!(
                server.verify_code(&revoked.token).await,
                Ok(VerifyCode::Valid),
                "a revoked key never verifies"
            );
            server.verify_code(&kept.token).await == Ok(VerifyCode::Valid)
        },
    )
    .await;
    assert_eq!(
        server.verify_code(&revoked.token).await,
        Ok(VerifyCode::Unknown),
        "the acknowledged revoke survived the failover"
    );
    // Writes go to the new primary (and wait for no replica: there is none
    // left, so the durability wait fails closed rather than pretend).
    let written = server
        .admin()
        .await
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "after_failover".into(),
                ..Default::default()
            },
        ))
        .await;
    match written {
        Ok(_) => {}
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
    }
    assert!(
        server
            .store
            .find_identity_by_name("after_failover")
            .await
            .unwrap()
            .is_some(),
        "the write reached the new primary"
    );
    server.stop().await;
}
