//! `--durability`: a change (create, revoke, disable, roll, delete) is
//! acknowledged only once replicas (WAIT) or the AOF (WAITAOF) confirm it;
//! otherwise it fails UNAVAILABLE saying the change may not be durable.

use crate::support::{RedisServer, eventually, test_authority};
use keyrack::domain::{Error, KeyId, State};
use keyrack::service::AuthorityOptions;
use keyrack::store::redis::{Durability, Keyspace, RedisOptions, RedisStore};
use std::sync::Arc;
use std::time::Duration;

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

async fn store_with(
    server: &RedisServer,
    durability: Durability,
) -> Result<RedisStore, keyrack::store::StoreError> {
    let options = RedisOptions {
        url: server.url(),
        key_prefix: "keyrack:".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        durability,
        writer_pool_size: 8,
        audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
    };
    RedisStore::connect(&options, Duration::from_secs(5)).await
}

fn connected_replicas(primary: &RedisServer) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut primary.connection())
        .unwrap();
    // A replica counts once its initial sync is done.
    info.lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .count() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_durability_acknowledges_only_what_a_replica_has() {
    let port = free_port();
    let primary = RedisServer::start_with(&["--port", &port]);
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    eventually("the replica is linked", Duration::from_secs(10), || async {
        connected_replicas(&primary) == 1
    })
    .await;

    // A second of patience: the suite runs many servers at once on two
    // cores, and a healthy replica must never be mistaken for a missing one.
    let durability = Durability::Replica {
        replicas: 1,
        timeout: Duration::from_secs(1),
    };
    let store = Arc::new(store_with(&primary, durability).await.unwrap());
    let authority = test_authority(store, AuthorityOptions::default());
    let (identity, first) = authority.create_admin("ops", "").await.unwrap();
    let second = authority
        .create_key(keyrack::service::NewKey {
            identity_id: identity.id.clone(),
            name: "second".into(),
            description: String::new(),
            expire_time: None,
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            datasets: Vec::new(),
            labels: Default::default(),
            honeytoken: false,
            rate_limits: Vec::new(),
            credits: None,
        })
        .await
        .unwrap();

    // With the replica up, changes are acknowledged, and the replica has them.
    authority
        .set_key_state(&first.key.id, State::Disabled)
        .await
        .unwrap();
    authority.revoke_key(&first.key.id).await.unwrap();
    let key_record = Keyspace::new("keyrack:").key(&first.key.id);
    let on_replica: bool = redis::cmd("EXISTS")
        .arg(&key_record)
        .query(&mut replica.connection())
        .unwrap();
    assert!(
        !on_replica,
        "the replica already saw the revoke when it was acknowledged"
    );

    // Without it, the change is applied but reported as not durable.
    replica.kill();
    eventually("the replica is gone", Duration::from_secs(10), || async {
        connected_replicas(&primary) == 0
    })
    .await;
    let refused = authority.revoke_key(&second.key.id).await.unwrap_err();
    assert!(matches!(refused, Error::NotDurable(_)), "{refused:?}");
    assert!(
        refused.to_string().contains("may not be durable"),
        "{refused}"
    );
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let gone: Option<KeyId> = authority.get_key(&second.key.id).await.ok().map(|k| k.id);
    assert_eq!(gone, None, "the revoke itself was applied");
}

/// aof durability needs WAITAOF (Redis 7.2+): on an older Redis keyrack
/// refuses to start; on a newer one a change waits for the fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_durability_needs_waitaof() {
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut server.connection())
        .unwrap();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    let numbers: Vec<u32> = version.split('.').filter_map(|n| n.parse().ok()).collect();
    let has_waitaof = numbers.as_slice() >= [7, 2].as_slice();
    let durability = Durability::Aof {
        replicas: 0,
        timeout: Duration::from_millis(500),
    };
    match store_with(&server, durability).await {
        Err(error) => {
            assert!(
                !has_waitaof,
                "Redis {version} has WAITAOF yet was refused: {error}"
            );
            assert!(error.to_string().contains("7.2"), "{error}");
        }
        Ok(store) => {
            assert!(
                has_waitaof,
                "Redis {version} lacks WAITAOF yet was accepted"
            );
            let authority = test_authority(Arc::new(store), AuthorityOptions::default());
            let (_, minted) = authority.create_admin("ops", "").await.unwrap();
            authority.revoke_key(&minted.key.id).await.unwrap();
        }
    }
}

fn new_key(identity: &keyrack::domain::IdentityId, name: String) -> keyrack::service::NewKey {
    keyrack::service::NewKey {
        identity_id: identity.clone(),
        name,
        description: String::new(),
        expire_time: None,
        allowed_cidrs: Vec::new(),
        scopes: Vec::new(),
        datasets: Vec::new(),
        labels: Default::default(),
        honeytoken: false,
        rate_limits: Vec::new(),
        credits: None,
    }
}

fn new_dataset(name: String) -> keyrack::service::NewDataset {
    keyrack::service::NewDataset {
        name: keyrack::domain::names::DatasetName::parse_owned(name).unwrap(),
        description: String::new(),
        skip_key: true,
    }
}

async fn pooled_store(primary: &RedisServer, pool: usize, timeout: Duration) -> RedisStore {
    let options = RedisOptions {
        url: primary.url(),
        key_prefix: "keyrack:".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(3),
        durability: Durability::Replica {
            replicas: 1,
            timeout,
        },
        writer_pool_size: pool,
        audit_max_events: keyrack::store::DEFAULT_AUDIT_MAX_EVENTS,
    };
    RedisStore::connect(&options, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Concurrent durable changes each hold a writer of the pool through their
/// WAIT: all are acknowledged with the replica up, and with it gone each
/// is applied and reported as not durable, as a lone change is. The four
/// changes that once skipped the wait (datasets and TOTP) now wait too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_writes_each_wait_on_a_writer_of_the_pool() {
    const CHANGES: usize = 8;
    let port = free_port();
    let primary = RedisServer::start_with(&["--port", &port]);
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    eventually("the replica is linked", Duration::from_secs(10), || async {
        connected_replicas(&primary) == 1
    })
    .await;
    let store = Arc::new(pooled_store(&primary, 4, Duration::from_secs(1)).await);
    let authority = test_authority(store, AuthorityOptions::default());
    let (identity, _) = authority.create_admin("ops", "").await.unwrap();
    let mut keys = Vec::new();
    for index in 0..2 * CHANGES {
        let minted = authority
            .create_key(new_key(&identity.id, format!("k{index}")))
            .await
            .unwrap();
        keys.push(minted.key.id);
    }

    // With the replica up: twice as many changes as writers, all acknowledged,
    // and the replica has each one.
    let revoked =
        futures_util::future::join_all(keys[..CHANGES].iter().map(|id| authority.revoke_key(id)))
            .await;
    for outcome in &revoked {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    let created = futures_util::future::join_all(
        (0..CHANGES).map(|index| authority.create_dataset(new_dataset(format!("ds{index}")))),
    )
    .await;
    for outcome in &created {
        assert!(outcome.is_ok(), "{:?}", outcome.as_ref().err());
    }
    let keyspace = Keyspace::new("keyrack:");
    for id in &keys[..CHANGES] {
        let on_replica: bool = redis::cmd("EXISTS")
            .arg(keyspace.key(id))
            .query(&mut replica.connection())
            .unwrap();
        assert!(!on_replica, "the replica saw the revoke of {id}");
    }
    for index in 0..CHANGES {
        let on_replica: bool = redis::cmd("EXISTS")
            .arg(keyspace.dataset(&format!("ds{index}")))
            .query(&mut replica.connection())
            .unwrap();
        assert!(on_replica, "the replica has dataset ds{index}");
    }

    // Without it: every one is applied, and every one says it may not be.
    replica.kill();
    eventually("the replica is gone", Duration::from_secs(10), || async {
        connected_replicas(&primary) == 0
    })
    .await;
    let refused =
        futures_util::future::join_all(keys[CHANGES..].iter().map(|id| authority.revoke_key(id)))
            .await;
    for outcome in refused {
        let error = outcome.unwrap_err();
        assert!(matches!(error, Error::NotDurable(_)), "{error:?}");
    }
    for id in &keys[CHANGES..] {
        let found = authority.get_key(id).await.ok().map(|key| key.id);
        assert_eq!(found, None, "the revoke of {id} was applied");
    }
    let refused = authority
        .create_dataset(new_dataset("after".into()))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::NotDurable(_)), "{refused:?}");
    assert!(
        authority.get_dataset("after").await.is_ok(),
        "the dataset was created"
    );
}
