//! keyrack on a three-master Redis Cluster of the test's own: identities
//! spread over every shard; Verify, roll and the audit log work end to end;
//! with one master dead, keys on live shards still verify and keys on the
//! dead shard fail closed (UNAVAILABLE), never valid; with the record cache
//! on, a frozen master fences only its own keys. (The store contract
//! suite runs on a cluster too, in store_contract.rs.)

use crate::roll::enrolled_admin;
use crate::support::{Backend, RedisCluster, TestServer, authed, keyspace};
use keyrack::domain::IdentityId;
use keyrack::proto::{self, VerifyCode};
use tonic::Code;

/// A server on a fresh cluster with `count` services: (token, shard) each.
async fn services_on_a_cluster(count: usize) -> (TestServer, Vec<(String, usize)>) {
    let server = TestServer::start(Backend::Cluster(RedisCluster::start())).await;
    let mut services: Vec<(String, usize)> = Vec::new();
    // Ids are random: past `count`, more until every master holds one (12
    // ids miss a master about once in 40 runs).
    let every_shard_held = |services: &[(String, usize)]| {
        (0..3).all(|shard| services.iter().any(|(_, held)| *held == shard))
    };
    let mut n = 0;
    while services.len() < count || !every_shard_held(&services) {
        assert!(n < count + 100, "no identity landed on some master");
        n += 1;
        let created = server.create_service(&format!("svc_{n}")).await;
        let id = IdentityId::parse(&created.identity.unwrap().id).unwrap();
        let shard = match &server.backend {
            Backend::Cluster(cluster) => cluster.node_of(&keyspace().identity(&id)),
            _ => unreachable!(),
        };
        services.push((created.token, shard));
    }
    (server, services)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_roll_and_audit_work_across_shards() {
    let (server, services) = services_on_a_cluster(24).await;
    let mut shards: Vec<usize> = services.iter().map(|(_, shard)| *shard).collect();
    shards.sort_unstable();
    shards.dedup();
    assert_eq!(shards, [0, 1, 2], "identities spread over every shard");
    for (token, _) in &services {
        assert_eq!(server.verify_code(token).await, Ok(VerifyCode::Valid));
    }

    let admin = enrolled_admin(&server, "cluster_admin").await;
    let target = server.create_service("rolled_on_cluster").await;
    let rolled = server
        .admin()
        .await
        .roll_key(authed(
            &admin.token,
            proto::RollKeyRequest {
                key_id: target.key.unwrap().id,
                totp_code: admin.next_code(),
                new_key_expire_time: None,
                old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                    prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    },
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        server.verify_code(&rolled.token).await,
        Ok(VerifyCode::Valid)
    );
    assert_eq!(
        server.verify_code(&target.token).await,
        Ok(VerifyCode::Valid),
        "in grace"
    );

    // Under Cluster the event follows its change instead of sharing its script.
    let events = server
        .admin()
        .await
        .list_audit_events(authed(
            &server.admin_token,
            proto::ListAuditEventsRequest {
                action: "RollKey".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, "OK");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_fails_closed_and_live_shards_serve() {
    let (mut server, services) = services_on_a_cluster(18).await;
    match &mut server.backend {
        Backend::Cluster(cluster) => cluster.kill_node(0),
        _ => unreachable!(),
    }
    let (mut live, mut dead) = (0, 0);
    for (token, shard) in &services {
        let answer = server.verify_code(token).await;
        if *shard == 0 {
            assert_eq!(
                answer,
                Err(Code::Unavailable),
                "a key on the dead shard is never valid"
            );
            dead += 1;
        } else {
            assert_eq!(
                answer,
                Ok(VerifyCode::Valid),
                "a key on a live shard still verifies"
            );
            live += 1;
        }
    }
    assert!(live > 0 && dead > 0, "live {live}, dead {dead}");
    server.stop().await;
}

/// With the record cache on, each master's tracking link is fenced on its
/// own: a frozen master stops the cache from serving its keys within the
/// bound (they fail closed), while keys on the other shards are still
/// answered from the cache without a read; thawed, every key verifies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_shard_fences_only_its_own_keys() {
    if std::env::var("KEYRACK_TEST_VERIFY_CACHE").as_deref() == Ok("off") {
        return; // the cache is what this is about
    }
    let (server, services) = services_on_a_cluster(18).await;
    let Backend::Cluster(cluster) = &server.backend else {
        unreachable!()
    };
    for (token, _) in &services {
        assert_eq!(server.verify_code(token).await, Ok(VerifyCode::Valid));
    }
    let reads_before: Vec<u64> = (0..3)
        .map(|node| cluster.node_command_calls(node, "mget"))
        .collect();
    cluster.signal_node(0, "STOP");
    // Past the staleness bound (100 ms), with room for a loaded machine.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut live, mut frozen) = (0, 0);
    for (token, shard) in &services {
        let answer = server.verify_code(token).await;
        if *shard == 0 {
            assert_eq!(
                answer,
                Err(Code::Unavailable),
                "a key on the frozen shard is not answered from the cache"
            );
            frozen += 1;
        } else {
            assert_eq!(answer, Ok(VerifyCode::Valid), "a live shard's key");
            live += 1;
        }
    }
    assert!(live > 0 && frozen > 0, "live {live}, frozen {frozen}");
    for (node, before) in reads_before.iter().enumerate().skip(1) {
        assert_eq!(
            cluster.node_command_calls(node, "mget"),
            *before,
            "keys on a live shard are served from the cache"
        );
    }
    cluster.signal_node(0, "CONT");
    crate::support::eventually(
        "the thawed shard's keys verify again",
        std::time::Duration::from_secs(10),
        || async {
            for (token, _) in &services {
                if server.verify_code(token).await != Ok(VerifyCode::Valid) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    server.stop().await;
}

#[test]
fn the_binary_bootstraps_and_serves_on_a_cluster() {
    use crate::cli::{Served, bootstrap_admin, grpcurl, keyrack, text, write_secret};
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let nodes = cluster.urls().join(",");
    let store_args = [
        "--redis-cluster-nodes",
        nodes.as_str(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let token = bootstrap_admin("ops", &store_args);
    let served = Served::start(dir.path(), &store_args, &[], false);
    let verified = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-d",
        &format!(r#"{{"token": "{token}"}}"#),
        &served.address(),
        "keyrack.v1.VerifyService/Verify",
    ]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert!(text(&verified.stdout).contains("VERIFY_CODE_VALID"));
    let refused = keyrack()
        .arg("serve")
        .args(store_args)
        .args(["--durability", "replica"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("not supported with --redis-cluster-nodes"));
    let (exit, _) = served.terminate();
    assert!(exit.success());
}

/// ListKeys across the authority reads every shard: keys of identities on
/// all three masters, filtered, ordered and counted in one listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_wide_key_listing_spans_every_shard() {
    let (server, services) = services_on_a_cluster(12).await;
    let mut shards: Vec<usize> = services.iter().map(|(_, shard)| *shard).collect();
    shards.sort_unstable();
    shards.dedup();
    assert_eq!(shards, [0, 1, 2], "identities spread over every shard");
    let list = |filter: &str, order_by: &str| {
        let request = proto::ListKeysRequest {
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 5,
            ..Default::default()
        };
        let server = &server;
        async move {
            let mut names = Vec::new();
            let mut request = request;
            loop {
                let page = server
                    .admin()
                    .await
                    .list_keys(authed(&server.admin_token, request.clone()))
                    .await
                    .unwrap()
                    .into_inner();
                names.extend(page.keys.into_iter().map(|key| key.identity_id));
                if page.next_page_token.is_empty() {
                    return (names, page.total_size);
                }
                request.page_token = page.next_page_token;
            }
        }
    };
    // The services (twelve or a few more) and the root admin, one key each.
    let keys = services.len() + 1;
    let (all, total) = list("", "create_time").await;
    assert_eq!((all.len(), total), (keys, i32::try_from(keys).unwrap()));
    let (created, total) = list("origin = CREATE_IDENTITY", "name desc").await;
    assert_eq!((created.len(), total), (keys, i32::try_from(keys).unwrap()));
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys, "no key twice across pages");
    server.stop().await;
}

/// Usage control on a cluster: each identity's check-and-charge is one
/// script in its own slot, so limited identities on every shard keep their
/// budgets exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_credits_hold_on_every_shard() {
    let server = TestServer::start(Backend::Cluster(RedisCluster::start())).await;
    let mut shards = std::collections::BTreeSet::new();
    let mut n = 0;
    while shards.len() < 3 {
        n += 1;
        let created = server
            .create_identity(proto::CreateIdentityRequest {
                name: format!("limited_{n}"),
                rate_limits: vec![proto::RateLimit {
                    name: "hourly".into(),
                    limit: 2,
                    duration: Some(prost_types::Duration {
                        seconds: 3_600,
                        nanos: 0,
                    }),
                }],
                ..Default::default()
            })
            .await;
        let id = IdentityId::parse(&created.identity.as_ref().unwrap().id).unwrap();
        let shard = match &server.backend {
            Backend::Cluster(cluster) => cluster.node_of(&keyspace().identity(&id)),
            _ => unreachable!(),
        };
        if !shards.insert(shard) {
            continue;
        }
        let codes = [
            server.verify_code(&created.token).await,
            server.verify_code(&created.token).await,
            server.verify_code(&created.token).await,
        ];
        assert_eq!(
            codes,
            [
                Ok(VerifyCode::Valid),
                Ok(VerifyCode::Valid),
                Ok(VerifyCode::RateLimited)
            ],
            "shard {shard}"
        );
    }
    server.stop().await;
}
