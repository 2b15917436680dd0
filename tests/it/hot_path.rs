//! The Verify hot path: the caches never outlive what the records say, the
//! failure budget holds floods back without touching cached tokens, and last-use times
//! arrive in batches without disturbing TTLs.

use crate::on_both_stores;
use crate::support::{Backend, RedisServer, TestServer, authed, eventually};
use keyrack::proto::{self, VerifyCode};
use keyrack::service::AuthorityOptions;
use keyrack::service::guard::GuardOptions;
use std::time::Duration;

/// A token with the right shape and checksum but another secret.
fn wrong_secret_for(key_id: &str) -> String {
    let key_id = keyrack::domain::KeyId::parse(key_id).unwrap();
    keyrack::domain::token::mint(&Default::default(), &key_id)
        .token
        .expose()
        .to_owned()
}

on_both_stores!(the_cache_never_outlives_the_record, cache_body);
async fn cache_body(server: TestServer) {
    let created = server.create_service("svc").await;
    let key_id = created.key.as_ref().unwrap().id.clone();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid)
    );
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid),
        "cached"
    );

    // The record's hash changes underneath (as a restore or tampering would):
    // the cached acceptance no longer applies and argon2 decides again.
    let other = server.create_service("other").await;
    let other_hash = server
        .store
        .get_key(&keyrack::domain::KeyId::parse(&other.key.unwrap().id).unwrap())
        .await
        .unwrap()
        .unwrap()
        .secret_hash;
    let mut record = server
        .store
        .get_key(&keyrack::domain::KeyId::parse(&key_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let original_hash = std::mem::replace(&mut record.secret_hash, other_hash);
    let record = server.store.update_key(&record).await.unwrap();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Unknown)
    );
    let mut restored = record.clone();
    restored.secret_hash = original_hash;
    server.store.update_key(&restored).await.unwrap();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid)
    );

    // Disable, enable and revoke are seen on the very next call.
    let mut admin = server.admin().await;
    admin
        .disable_key(authed(
            &server.admin_token,
            proto::DisableKeyRequest {
                key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Disabled)
    );
    admin
        .enable_key(authed(
            &server.admin_token,
            proto::EnableKeyRequest {
                key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid)
    );
    admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest { key_id },
        ))
        .await
        .unwrap();
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Unknown)
    );
    server.stop().await;
}

on_both_stores!(
    a_wrong_secret_flood_is_held_back_but_cached_tokens_pass,
    flood_body
);
async fn flood_body(server: TestServer) {
    let created = server.create_service("svc").await;
    let key_id = created.key.unwrap().id;
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid)
    );
    let mut held_back = 0;
    for _ in 0..40 {
        let started = std::time::Instant::now();
        assert_eq!(
            server.verify_code(&wrong_secret_for(&key_id)).await,
            Ok(VerifyCode::Unknown)
        );
        if started.elapsed() >= GuardOptions::default().refusal_delay {
            held_back += 1;
        }
        // The cached correct token is never held back.
        let started = std::time::Instant::now();
        assert_eq!(
            server.verify_code(&created.token).await,
            Ok(VerifyCode::Valid)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Past the budget of 20, wrong answers were held back.
    assert!(
        held_back >= 20,
        "the flood was held back: {held_back} of 40"
    );
    // A repeated wrong token is answered from the rejected cache.
    let wrong = wrong_secret_for(&key_id);
    assert_eq!(server.verify_code(&wrong).await, Ok(VerifyCode::Unknown));
    assert_eq!(server.verify_code(&wrong).await, Ok(VerifyCode::Unknown));
    server.stop().await;
}

/// last_use_time is flushed in batches and never disturbs a grace TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_is_recorded_without_touching_ttls() {
    let backend = Backend::Redis(RedisServer::start());
    let server = TestServer::start_with(
        backend,
        AuthorityOptions {
            totp_for_roll: false,
            ..Default::default()
        },
        Duration::from_millis(200),
    )
    .await;
    let created = server.create_service("svc").await;
    let key_id = created.key.unwrap().id;
    let get = || async {
        server
            .admin()
            .await
            .get_key(authed(
                &server.admin_token,
                proto::GetKeyRequest {
                    key_id: key_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    };
    assert!(get().await.last_use_time.is_none());
    assert_eq!(
        server.verify_code(&created.token).await,
        Ok(VerifyCode::Valid)
    );
    eventually("last use recorded", Duration::from_secs(5), || async {
        get().await.last_use_time.is_some()
    })
    .await;
    let listed = server
        .admin()
        .await
        .list_keys(authed(
            &server.admin_token,
            proto::ListKeysRequest {
                identity_id: created.identity.unwrap().id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .keys
            .iter()
            .any(|k| k.id == key_id && k.last_use_time.is_some())
    );

    // Roll with a grace period, keep using the old key, and watch its TTL.
    server
        .admin()
        .await
        .roll_key(authed(
            &server.admin_token,
            proto::RollKeyRequest {
                key_id: key_id.clone(),
                new_key_expire_time: None,
                old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                    prost_types::Duration {
                        seconds: 3,
                        nanos: 0,
                    },
                )),
                totp_code: String::new(),
            },
        ))
        .await
        .unwrap();
    let record = crate::support::keyspace().key(&keyrack::domain::KeyId::parse(&key_id).unwrap());
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(&record)
        .query(&mut server.backend.redis().connection())
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            server.verify_code(&created.token).await,
            Ok(VerifyCode::Valid)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let ttl_after: i64 = redis::cmd("PTTL")
        .arg(&record)
        .query(&mut server.backend.redis().connection())
        .unwrap();
    assert!(
        ttl_before > 0 && ttl_after > 0 && ttl_after < ttl_before,
        "TTL kept counting down: {ttl_before} -> {ttl_after}"
    );
    eventually(
        "grace ends despite recent use",
        Duration::from_secs(10),
        || async { server.verify_code(&created.token).await == Ok(VerifyCode::Unknown) },
    )
    .await;
    server.stop().await;
}
