//! Expiry events, with two keyrack replicas on one store (a real
//! redis-server, a real three-master Redis Cluster, and one shared memory
//! store): KEY_EXPIRING once per key and lead time, KEY_EXPIRED shortly
//! after a key's end and GRACE_ENDED after a roll's grace, each once; a revoked key, or a key of a deleted identity, is
//! never reported expired; keys written before the deadline index existed
//! are indexed by the next replica to start.

use crate::support::{
    Backend, RedisServer, TestServer, authed, eventually, open_store, test_authority,
    test_server_options,
};
use keyrack::domain::expiry::LeadTimes;
use keyrack::proto::{self, watch_events_response::Payload};
use keyrack::server::ServerOptions;
use keyrack::service::AuthorityOptions;
use keyrack::service::expiry::ExpiryOptions;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Streaming;

/// How long after a key's end its event may take to show: the check
/// interval, the watch poll and slack for a loaded machine.
const SHORTLY: Duration = Duration::from_secs(3);
/// How long the tests wait for a duplicate that must not come.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(1500);

/// Expiry as the tests run it: a sweep every second, ends looked for every
/// 200 ms.
fn quick_expiry(lead_times: &str) -> ExpiryOptions {
    ExpiryOptions {
        lead_times: LeadTimes::parse(lead_times).unwrap(),
        sweep_interval: Duration::from_secs(1),
        check_interval: Duration::from_millis(200),
        ..ExpiryOptions::default()
    }
}

/// A second keyrack on the test server's store: its own authority, server
/// and expiry task (a memory store is shared, as one Redis would be).
struct Replica {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn beside(server: &TestServer, expiry: ExpiryOptions) -> Self {
        let store = match &server.backend {
            Backend::Memory => Arc::clone(&server.store),
            backend => open_store(backend).await,
        };
        let authority = Arc::new(test_authority(store, AuthorityOptions::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ServerOptions {
            expiry,
            ..test_server_options()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            keyrack::server::serve(listener, authority, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("the second replica serves");
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap();
    }
}

/// A test server (rolls without TOTP) running `expiry`.
async fn server_with(backend: Backend, expiry: ExpiryOptions) -> TestServer {
    TestServer::start_serving(
        backend,
        AuthorityOptions {
            totp_for_roll: false,
            ..AuthorityOptions::default()
        },
        ServerOptions {
            expiry,
            ..test_server_options()
        },
    )
    .await
}

fn timestamp_in(from_now: Duration) -> prost_types::Timestamp {
    let at = SystemTime::now() + from_now;
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap(),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap(),
    }
}

async fn create_key(
    server: &TestServer,
    identity_id: &str,
    name: &str,
    expire_in: Option<Duration>,
) -> proto::ApiKey {
    server
        .admin()
        .await
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: identity_id.into(),
                name: name.into(),
                expire_time: expire_in.map(timestamp_in),
                ..Default::default()
            },
        ))
        .await
        .expect("create key")
        .into_inner()
        .key
        .unwrap()
}

async fn watch(
    server: &TestServer,
    identity_id: &str,
    kinds: &[proto::EventKind],
) -> Streaming<proto::WatchEventsResponse> {
    server
        .admin()
        .await
        .watch_events(authed(
            &server.admin_token,
            proto::WatchEventsRequest {
                kinds: kinds.iter().map(|kind| i32::from(*kind)).collect(),
                identity_id: identity_id.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("watch")
        .into_inner()
}

/// The next event on `stream` within `within`, skipping heartbeats.
async fn next_event(
    stream: &mut Streaming<proto::WatchEventsResponse>,
    within: Duration,
) -> proto::Event {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("an event in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if let Some(Payload::Event(event)) = message.payload {
            return event;
        }
    }
}

/// The audit log's events `action` about `target`, newest first.
async fn logged(server: &TestServer, target: &str, action: &str) -> Vec<proto::AuditEvent> {
    crate::audit::all_events(
        server,
        proto::ListAuditEventsRequest {
            target_id: target.into(),
            action: action.into(),
            ..Default::default()
        },
    )
    .await
}

fn record(event: &proto::Event) -> &proto::AuditEvent {
    event.audit_event.as_ref().expect("an audit record")
}

/// Runs a test body on a fresh memory store, a fresh redis-server and a
/// fresh three-master Redis Cluster (where each identity keeps its own
/// deadline index).
macro_rules! on_every_backend {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$body($crate::support::Backend::Memory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body($crate::support::Backend::Redis(
                    $crate::support::RedisServer::start(),
                ))
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body($crate::support::Backend::Cluster(
                    $crate::support::RedisCluster::start(),
                ))
                .await;
            }
        }
    };
}

/// A key ending in 8 s, lead times of an hour and 3 s, sweeps every second
/// by whichever replica holds the lease: the hour's warning comes at once
/// (the key was made inside it), the 3 s one when the end is that close,
/// then KEY_EXPIRED; each exactly once, in that order.
async fn key_expiring_once_per_lead_time_across_two_replicas(backend: Backend) {
    let server = server_with(backend, quick_expiry("1h,3s")).await;
    let replica = Replica::beside(&server, quick_expiry("1h,3s")).await;
    let identity = server.create_service("expiring").await.identity.unwrap();
    let mut stream = watch(
        &server,
        &identity.id,
        &[proto::EventKind::KeyExpiring, proto::EventKind::KeyExpired],
    )
    .await;
    let key = create_key(&server, &identity.id, "short", Some(Duration::from_secs(8))).await;
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut stream, Duration::from_secs(8) + SHORTLY).await;
        let done = event.kind() == proto::EventKind::KeyExpired;
        seen.push(event);
        if done {
            break;
        }
    }
    let described: Vec<(proto::EventKind, i64)> = seen
        .iter()
        .map(|event| {
            let lead = record(event).lead_time.map_or(0, |lead| lead.seconds);
            (event.kind(), lead)
        })
        .collect();
    assert_eq!(
        described,
        [
            (proto::EventKind::KeyExpiring, 3600),
            (proto::EventKind::KeyExpiring, 3),
            (proto::EventKind::KeyExpired, 0),
        ]
    );
    for event in &seen {
        let record = record(event);
        assert_eq!(record.target_ids, [key.id.clone(), identity.id.clone()]);
        assert_eq!(record.deadline_time, key.expire_time, "{record:?}");
    }

    tokio::time::sleep(DUPLICATE_WINDOW).await;
    let warnings = logged(&server, &key.id, "KEY_EXPIRING").await;
    assert_eq!(warnings.len(), 2, "one warning per lead time: {warnings:?}");
    assert_eq!(logged(&server, &key.id, "KEY_EXPIRED").await.len(), 1);
    replica.stop().await;
    server.stop().await;
}
on_every_backend!(
    key_expiring_once_per_lead_time_across_two_replicas_on,
    key_expiring_once_per_lead_time_across_two_replicas
);

/// A key with a 3 s expiry and a key rolled with a 2 s grace: KEY_EXPIRED
/// and GRACE_ENDED show on the stream shortly after, once each across both
/// replicas, and nothing else ends.
async fn ends_are_reported_once_across_two_replicas(backend: Backend) {
    let server = server_with(backend, quick_expiry("1d")).await;
    let replica = Replica::beside(&server, quick_expiry("1d")).await;
    let created = server.create_service("ending").await;
    let identity = created.identity.unwrap();
    let rolled = created.key.unwrap();
    let mut stream = watch(
        &server,
        &identity.id,
        &[proto::EventKind::KeyExpired, proto::EventKind::GraceEnded],
    )
    .await;
    let expiring = create_key(&server, &identity.id, "brief", Some(Duration::from_secs(3))).await;
    let replacement = server
        .admin()
        .await
        .roll_key(authed(
            &server.admin_token,
            proto::RollKeyRequest {
                key_id: rolled.id.clone(),
                old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                    prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    },
                )),
                ..Default::default()
            },
        ))
        .await
        .expect("roll")
        .into_inner()
        .key
        .unwrap();

    let mut ended = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut stream, Duration::from_secs(3) + SHORTLY).await;
        ended.push((event.kind(), record(&event).target_ids[0].clone()));
    }
    ended.sort();
    assert_eq!(
        ended,
        [
            (proto::EventKind::KeyExpired, expiring.id.clone()),
            (proto::EventKind::GraceEnded, rolled.id.clone()),
        ]
    );

    tokio::time::sleep(DUPLICATE_WINDOW).await;
    assert_eq!(logged(&server, &expiring.id, "KEY_EXPIRED").await.len(), 1);
    assert_eq!(logged(&server, &rolled.id, "GRACE_ENDED").await.len(), 1);
    assert!(logged(&server, &rolled.id, "KEY_EXPIRED").await.is_empty());
    for action in ["KEY_EXPIRED", "GRACE_ENDED"] {
        assert!(
            logged(&server, &replacement.id, action).await.is_empty(),
            "the replacement has no end"
        );
    }
    replica.stop().await;
    server.stop().await;
}
on_every_backend!(
    ends_are_reported_once_across_two_replicas_on,
    ends_are_reported_once_across_two_replicas
);

/// A key revoked before its end, and a key of an identity deleted before
/// it, are never reported expired; a key ending after both, left alone, is
/// (so the check did run past their ends).
async fn a_revoked_key_is_never_reported_expired(backend: Backend) {
    // Long enough for the setup below on a loaded two-core machine: the
    // revoke and the delete must land before the doomed keys end.
    const DOOMED_LIFE: Duration = Duration::from_secs(5);
    const CONTROL_LIFE: Duration = Duration::from_secs(7);
    let server = server_with(backend, quick_expiry("1d")).await;
    let identity = server.create_service("revoking").await.identity.unwrap();
    let doomed_identity = server.create_service("doomed").await.identity.unwrap();
    let mut stream = watch(&server, "", &[proto::EventKind::KeyExpired]).await;
    let revoked = create_key(&server, &identity.id, "revoked", Some(DOOMED_LIFE)).await;
    let orphaned = create_key(&server, &doomed_identity.id, "orphaned", Some(DOOMED_LIFE)).await;
    let control = create_key(&server, &identity.id, "control", Some(CONTROL_LIFE)).await;
    let mut admin = server.admin().await;
    admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: revoked.id.clone(),
            },
        ))
        .await
        .expect("revoked before its end (the setup outlived DOOMED_LIFE)");
    admin
        .delete_identity(authed(
            &server.admin_token,
            proto::DeleteIdentityRequest {
                identity_id: doomed_identity.id.clone(),
            },
        ))
        .await
        .expect("delete identity");

    let event = next_event(&mut stream, CONTROL_LIFE + SHORTLY).await;
    assert_eq!(record(&event).target_ids[0], control.id, "{event:?}");
    assert!(logged(&server, &revoked.id, "KEY_EXPIRED").await.is_empty());
    assert!(
        logged(&server, &orphaned.id, "KEY_EXPIRED")
            .await
            .is_empty()
    );
    if let Backend::Redis(redis) = &server.backend {
        let entries: Vec<String> = ::redis::cmd("ZRANGE")
            .arg("keyrack:key-ends")
            .arg(0)
            .arg(-1)
            .query(&mut redis.connection())
            .unwrap();
        assert!(
            entries.iter().all(|entry| !entry.contains(&revoked.id)
                && !entry.contains(&orphaned.id)
                && !entry.contains(&control.id)),
            "nothing left of them in the deadline index: {entries:?}"
        );
    }
    server.stop().await;
}
on_every_backend!(
    a_revoked_key_is_never_reported_expired_on,
    a_revoked_key_is_never_reported_expired
);

/// A key whose record predates the deadline index (its entry and the
/// backfill marker removed, as before this release) gets its entry from the
/// next replica to start, and its KEY_EXPIRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_before_the_index_are_indexed_by_the_next_replica() {
    let server = server_with(Backend::Redis(RedisServer::start()), quick_expiry("1d")).await;
    let redis = server.backend.redis();
    eventually(
        "the first replica indexed the keys already there",
        Duration::from_secs(5),
        || async {
            ::redis::cmd("EXISTS")
                .arg("keyrack:expiry:indexed")
                .query::<bool>(&mut redis.connection())
                .unwrap()
        },
    )
    .await;
    let identity = server.create_service("old").await.identity.unwrap();
    let mut stream = watch(&server, &identity.id, &[proto::EventKind::KeyExpired]).await;
    let old = create_key(&server, &identity.id, "old", Some(Duration::from_secs(4))).await;
    let mut connection = redis.connection();
    let removed: i64 = ::redis::cmd("ZREM")
        .arg("keyrack:key-ends")
        .arg(format!("expired:{}", old.id))
        .query(&mut connection)
        .unwrap();
    assert_eq!(removed, 1, "the key was indexed when written");
    let _: i64 = ::redis::cmd("DEL")
        .arg("keyrack:expiry:indexed")
        .query(&mut connection)
        .unwrap();

    let replica = Replica::beside(&server, quick_expiry("1d")).await;
    let event = next_event(&mut stream, Duration::from_secs(4) + SHORTLY).await;
    assert_eq!(record(&event).target_ids[0], old.id);
    assert_eq!(record(&event).deadline_time, old.expire_time);
    replica.stop().await;
    server.stop().await;
}
