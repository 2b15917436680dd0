//! Verify's tracked record cache with two keyrack replicas on one Redis: a
//! change made through replica A is refused by replica B on B's next Verify,
//! although B answered that token from its cache just before; a frozen Redis,
//! killed links and a Sentinel failover never leave B answering from records
//! Redis no longer vouches for.

use crate::support::{
    RedisSentinels, RedisServer, TestServer, authed, capture_logs, command_calls, eventually, mask,
    redis_options, test_authority, test_verify_cache_options, two_replicas, verify_directly,
};
use keyrack::proto::admin_service_client::AdminServiceClient;
use keyrack::proto::verify_service_client::VerifyServiceClient;
use keyrack::proto::{self, VerifyCode};
use keyrack::store::Store;
use keyrack::store::redis::RedisStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

/// The bound the replicas run with (the product default).
const BOUND: Duration = Duration::from_millis(100);

/// A fresh identity (dataset `sales`, any address) and its first key.
async fn service(a: &TestServer, name: &str) -> proto::CreateIdentityResponse {
    a.create_identity(proto::CreateIdentityRequest {
        name: name.into(),
        datasets: vec!["sales".into()],
        ..Default::default()
    })
    .await
}

/// One kind of change made through A, and what B must answer right after.
#[derive(Debug, Clone, Copy)]
enum Change {
    Revoke,
    DisableKey,
    DisableIdentity,
    DeleteIdentity,
    NarrowCidrs,
    DropDataset,
}

impl Change {
    fn refusal(self) -> VerifyCode {
        match self {
            Change::Revoke | Change::DeleteIdentity => VerifyCode::Unknown,
            Change::DisableKey | Change::DisableIdentity => VerifyCode::Disabled,
            Change::NarrowCidrs => VerifyCode::IpNotAllowed,
            Change::DropDataset => VerifyCode::DatasetNotAllowed,
        }
    }

    async fn apply(self, a: &TestServer, created: &proto::CreateIdentityResponse) {
        let mut admin = a.admin().await;
        let token = &a.admin_token;
        let key_id = created.key.as_ref().unwrap().id.clone();
        let identity_id = created.identity.as_ref().unwrap().id.clone();
        let outcome = match self {
            Change::Revoke => admin
                .revoke_key(authed(token, proto::RevokeKeyRequest { key_id }))
                .await
                .map(drop),
            Change::DisableKey => admin
                .disable_key(authed(token, proto::DisableKeyRequest { key_id }))
                .await
                .map(drop),
            Change::DisableIdentity => admin
                .disable_identity(authed(token, proto::DisableIdentityRequest { identity_id }))
                .await
                .map(drop),
            Change::DeleteIdentity => admin
                .delete_identity(authed(token, proto::DeleteIdentityRequest { identity_id }))
                .await
                .map(drop),
            Change::NarrowCidrs | Change::DropDataset => {
                let mut identity = proto::Identity {
                    id: identity_id,
                    ..Default::default()
                };
                let path = if matches!(self, Change::NarrowCidrs) {
                    identity.allowed_cidrs = vec!["10.0.0.0/8".into()];
                    "allowed_cidrs"
                } else {
                    identity.datasets = vec!["audit".into()];
                    "datasets"
                };
                admin
                    .update_identity(authed(
                        token,
                        proto::UpdateIdentityRequest {
                            identity: Some(identity),
                            update_mask: mask(&[path]),
                        },
                    ))
                    .await
                    .map(drop)
            }
        };
        outcome.unwrap_or_else(|status| panic!("{self:?} through A: {status:?}"));
    }
}

async fn create_datasets(a: &TestServer) {
    for name in ["sales", "audit"] {
        a.admin()
            .await
            .create_dataset(authed(
                &a.admin_token,
                proto::CreateDatasetRequest {
                    name: name.into(),
                    description: String::new(),
                    skip_key: true,
                },
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_replica_are_refused_by_the_other_on_its_next_verify() {
    const TRIALS: usize = 8;
    let (a, b) = two_replicas().await;
    create_datasets(&a).await;
    for change in [
        Change::Revoke,
        Change::DisableKey,
        Change::DisableIdentity,
        Change::DeleteIdentity,
        Change::NarrowCidrs,
        Change::DropDataset,
    ] {
        for trial in 0..TRIALS {
            let created = service(&a, &format!("svc_{change:?}_{trial}")).await;
            b.warm(&created.token).await;
            change.apply(&a, &created).await;
            assert_eq!(
                b.verify(&created.token).await,
                Ok(change.refusal()),
                "{change:?}, trial {trial}: B's next Verify after the change"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Deadlines are checked on every hit: a rolled key's grace and a key's
/// expiry end on time at B even though nothing invalidates B's entry first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_and_expiry_end_on_time_on_cached_records() {
    const TRIALS: usize = 4;
    let (a, b) = two_replicas().await;
    create_datasets(&a).await;
    let mut admin = a.admin().await;
    for trial in 0..TRIALS {
        // Roll with a grace period that ends.
        let created = service(&a, &format!("rolled_{trial}")).await;
        b.warm(&created.token).await;
        let rolled = admin
            .roll_key(authed(
                &a.admin_token,
                proto::RollKeyRequest {
                    key_id: created.key.as_ref().unwrap().id.clone(),
                    new_key_expire_time: None,
                    old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                        prost_types::Duration {
                            seconds: 0,
                            nanos: 400_000_000,
                        },
                    )),
                    totp_code: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let grace_ends = rolled
            .previous_key
            .as_ref()
            .and_then(|old| old.grace_expire_time.as_ref())
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .expect("the old key carries its grace deadline");
        b.warm(&created.token).await;
        b.warm(&rolled.token).await;
        wait_until_unix_millis(grace_ends).await;
        assert_eq!(
            b.verify(&created.token).await,
            Ok(VerifyCode::Unknown),
            "trial {trial}: the old key after its grace"
        );
        assert_eq!(b.verify(&rolled.token).await, Ok(VerifyCode::Valid));

        // A key that expires.
        let expires = keyrack::domain::UnixMillis::now().0 + 400;
        let expiring = admin
            .create_key(authed(
                &a.admin_token,
                proto::CreateKeyRequest {
                    identity_id: rolled.key.as_ref().unwrap().identity_id.clone(),
                    name: format!("expiring_{trial}"),
                    expire_time: Some(prost_types::Timestamp {
                        seconds: expires / 1000,
                        nanos: ((expires % 1000) * 1_000_000) as i32,
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        b.warm(&expiring.token).await;
        wait_until_unix_millis(expires).await;
        assert_eq!(
            b.verify(&expiring.token).await,
            Ok(VerifyCode::Unknown),
            "trial {trial}: the key after its expiry"
        );
    }
    a.stop().await;
    b.stop().await;
}

async fn wait_until_unix_millis(deadline: i64) {
    let now = keyrack::domain::UnixMillis::now().0;
    if deadline >= now {
        tokio::time::sleep(Duration::from_millis((deadline - now) as u64 + 1)).await;
    }
}

/// An unknown key id is never cached as absent: it leaves no entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_not_cached() {
    let (a, b) = two_replicas().await;
    create_datasets(&a).await;
    let created = service(&a, "known").await;
    b.warm(&created.token).await;
    let entries = b.stats().entries;
    let unknown_key = keyrack::domain::KeyId::parse(&created.key.as_ref().unwrap().id)
        .unwrap()
        .identity_id();
    for _ in 0..5 {
        let stranger = keyrack::domain::token::mint(
            &Default::default(),
            &keyrack::domain::KeyId::generate(&unknown_key),
        );
        assert_eq!(
            b.verify(stranger.token.expose()).await,
            Ok(VerifyCode::Unknown)
        );
    }
    assert_eq!(
        b.stats().entries,
        entries,
        "nothing cached for unknown keys"
    );
    a.stop().await;
    b.stop().await;
}

/// A frozen Redis: B answers from its cache only within the bound of the
/// freeze, then fails closed (UNAVAILABLE); after SIGCONT it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_stops_cached_answers_within_the_bound() {
    let (a, b) = two_replicas().await;
    create_datasets(&a).await;
    let created = service(&a, "frozen").await;
    b.warm(&created.token).await;

    a.backend.redis().signal("STOP");
    let frozen_at = Instant::now();
    let mut refused = None;
    while frozen_at.elapsed() < Duration::from_secs(5) {
        let started = Instant::now();
        match b.verify(&created.token).await {
            Ok(VerifyCode::Valid) => assert!(
                started.duration_since(frozen_at) < BOUND,
                "a cached VALID {:?} into the freeze",
                started.duration_since(frozen_at)
            ),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    assert_eq!(refused, Some(Err(Code::Unavailable)), "fails closed");

    a.backend.redis().signal("CONT");
    eventually("B serves again", Duration::from_secs(5), || async {
        b.verify(&created.token).await == Ok(VerifyCode::Valid)
    })
    .await;
    b.warm(&created.token).await;
    a.stop().await;
    b.stop().await;
}

/// Killing B's tracking link empties B's cache; a revoke made meanwhile is
/// never answered from it, and the cache fills again on a new link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_links_empty_the_cache() {
    let (a, b) = two_replicas().await;
    create_datasets(&a).await;
    let revoked = service(&a, "revoked").await;
    let kept = service(&a, "kept").await;
    b.warm(&revoked.token).await;
    b.warm(&kept.token).await;
    let resets = b.stats().link_resets;

    // Every connection with tracking on (A's link and B's).
    let mut redis = a.backend.redis().connection();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut redis).unwrap();
    let tracking: Vec<&str> = clients
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.starts_with("flags=") && field.contains('t'))
        })
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .collect();
    assert_eq!(
        tracking.len(),
        2,
        "one tracking link per replica: {clients}"
    );
    for id in tracking {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut redis)
            .unwrap();
    }
    Change::Revoke.apply(&a, &revoked).await;
    eventually("B's link reset", Duration::from_secs(5), || async {
        b.stats().link_resets > resets
    })
    .await;
    assert_eq!(b.verify(&revoked.token).await, Ok(VerifyCode::Unknown));
    b.warm(&kept.token).await;
    a.stop().await;
    b.stop().await;
}

/// A Sentinel failover empties the cache, and the cache fills again from the
/// new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_empties_the_cache() {
    capture_logs();
    let mut sentinels = RedisSentinels::start();
    // Sentinel names the primary: no URL.
    let options = redis_options(String::new(), Duration::from_secs(2));
    let mut store = RedisStore::connect_sentinel(
        &sentinels.urls(),
        crate::support::SENTINEL_MASTER,
        &options,
        Duration::from_secs(10),
    )
    .await
    .expect("connect through the sentinels");
    store
        .enable_verify_cache(test_verify_cache_options())
        .await
        .unwrap();
    let store = Arc::new(store);
    let authority = test_authority(Arc::clone(&store) as Arc<dyn Store>, Default::default());
    let (_, minted) = authority.create_admin("root", "admin").await.unwrap();
    let verify = || verify_directly(&authority, minted.token.expose());
    // Let the replica have the records before the primary dies.
    let hits = store.verify_cache_stats().unwrap().hits;
    eventually(
        "answered from the cache",
        Duration::from_secs(5),
        || async {
            assert_eq!(verify().await.unwrap(), keyrack::domain::VerifyCode::Valid);
            store.verify_cache_stats().unwrap().hits > hits
        },
    )
    .await;
    assert!(store.verify_cache_stats().unwrap().entries > 0);

    sentinels.kill_primary();
    eventually("the cache is emptied", Duration::from_secs(5), || async {
        let stats = store.verify_cache_stats().unwrap();
        stats.link_resets > 0 && stats.entries == 0
    })
    .await;
    sentinels.wait_for_failover();
    let hits = store.verify_cache_stats().unwrap().hits;
    eventually(
        "cached answers again from the new primary",
        Duration::from_secs(30),
        || async {
            matches!(verify().await, Ok(keyrack::domain::VerifyCode::Valid))
                && store.verify_cache_stats().unwrap().hits > hits
        },
    )
    .await;
    crate::support::assert_no_secret_logged();
}

/// `keyrack serve` caches by default: steady-state Verify sends Redis no
/// read; with `--verify-cache off` every Verify reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_redis_only_with_the_cache_off() {
    use crate::cli::{Served, bootstrap_admin, write_secret};
    const CALLS: u64 = 200;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let url = redis.url();
    let store_args = [
        "--redis-url",
        url.as_str(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let token = bootstrap_admin("root", &store_args);
    // A stall of the shared test machine past the bound may cost a read; the
    // benchmark, not this test, holds the figure (BENCHMARKS.md).
    for (mode, most_reads) in [("tracked", CALLS / 10), ("off", CALLS)] {
        let mut args = store_args.to_vec();
        args.extend(["--verify-cache", mode]);
        let served = Served::start(dir.path(), &args, &[], false);
        let channel = Channel::from_shared(format!("http://{}", served.address()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut verifier = VerifyServiceClient::new(channel.clone());
        let mut verify = async |token: &str| {
            verifier
                .verify(proto::VerifyRequest {
                    token: token.to_owned(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .code()
        };
        // The first calls run argon2 and fill the caches.
        for _ in 0..3 {
            assert_eq!(verify(&token).await, VerifyCode::Valid);
        }
        let before = command_calls(&redis, "mget");
        for _ in 0..CALLS {
            assert_eq!(verify(&token).await, VerifyCode::Valid);
        }
        let reads = command_calls(&redis, "mget") - before;
        assert!(
            reads <= most_reads && (mode == "tracked" || reads == CALLS),
            "--verify-cache {mode}: {reads} reads for {CALLS} Verify calls"
        );

        // A limited key: one round trip per Verify, the charge, in either
        // mode (with the cache off, the charge confirms the records it
        // charged the last time instead of a read before it).
        let limited = AdminServiceClient::new(channel.clone())
            .create_identity(authed(
                &token,
                proto::CreateIdentityRequest {
                    name: format!("limited_{mode}"),
                    rate_limits: vec![proto::RateLimit {
                        name: "per_second".into(),
                        limit: 1_000_000,
                        duration: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    }],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token;
        for _ in 0..3 {
            assert_eq!(verify(&limited).await, VerifyCode::Valid);
        }
        let (reads_before, charges_before) = (
            command_calls(&redis, "mget"),
            command_calls(&redis, "evalsha"),
        );
        for _ in 0..CALLS {
            assert_eq!(verify(&limited).await, VerifyCode::Valid);
        }
        let reads = command_calls(&redis, "mget") - reads_before;
        let charges = command_calls(&redis, "evalsha") - charges_before;
        assert_eq!(charges, CALLS, "--verify-cache {mode}: one charge per call");
        assert!(
            reads <= CALLS / 10 && (mode == "tracked" || reads == 0),
            "--verify-cache {mode}: {reads} reads besides the charges of {CALLS} limited Verify calls"
        );
        let (exit, _) = served.terminate();
        assert!(exit.success());
    }
}

/// A Redis that refuses `CLIENT TRACKING` (here an ACL without
/// `client|tracking`) leaves the record cache off, with a warning, and
/// keyrack serves, reading Redis on every Verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_refusing_tracking_leaves_the_cache_off() {
    let redis = RedisServer::start();
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("untracked")
        .arg("on")
        .arg(">untracked-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-client|tracking")
        .query(&mut redis.connection())
        .unwrap();
    let url = format!("{}?user=untracked&pass=untracked-password", redis.url());
    let mut store = RedisStore::connect(
        &redis_options(url, Duration::from_millis(500)),
        Duration::from_secs(5),
    )
    .await
    .expect("connect as the user without tracking");
    store
        .enable_verify_cache(test_verify_cache_options())
        .await
        .expect("no tracking is no reason to stop");
    assert!(store.verify_cache_stats().is_none(), "the cache is off");
    let authority = test_authority(
        Arc::new(store) as Arc<dyn Store>,
        keyrack::service::AuthorityOptions::default(),
    );
    let (_, minted) = authority.create_admin("untracked_admin", "").await.unwrap();
    assert_eq!(
        verify_directly(&authority, minted.token.expose())
            .await
            .unwrap(),
        keyrack::domain::VerifyCode::Valid
    );
}

/// Forwards connections from a Unix socket to Redis's, and can stop passing
/// Redis's replies to the connections that turned tracking on: a tracking
/// link that stalls silently while Redis itself answers.
struct TrackingStaller {
    path: std::path::PathBuf,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TrackingStaller {
    fn start(redis: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let upstream = redis.socket();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::UnixStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let tracking = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let seen = Arc::clone(&tracking);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(read @ 1..) = client_read.read(&mut buffer).await {
                        let sent = &buffer[..read];
                        if sent
                            .windows(8)
                            .any(|window| window.eq_ignore_ascii_case(b"TRACKING"))
                        {
                            seen.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if server_write.write_all(sent).await.is_err() {
                            return;
                        }
                    }
                });
                let stall = Arc::clone(&stall);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(read @ 1..) = server_read.read(&mut buffer).await {
                        let frozen = || {
                            tracking.load(std::sync::atomic::Ordering::SeqCst)
                                && stall.load(std::sync::atomic::Ordering::SeqCst)
                        };
                        if frozen() {
                            // Replies are swallowed: the connection stays
                            // open and silent, as a stalled link would.
                            continue;
                        }
                        if client_write.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            path,
            stalled,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.path.display())
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A tracking link that stalls silently while Redis answers: the cache
/// stops serving within its bound, the link is dropped and reopened, and
/// Verify keeps answering from Redis meanwhile (a new link stalls too here,
/// so every answer comes through the main connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tracking_link_is_replaced_and_verify_keeps_answering() {
    let redis = RedisServer::start();
    let staller = TrackingStaller::start(&redis);
    let mut store = RedisStore::connect(
        &redis_options(staller.url(), Duration::from_millis(500)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    store
        .enable_verify_cache(test_verify_cache_options())
        .await
        .unwrap();
    let store = Arc::new(store);
    let authority = test_authority(
        Arc::clone(&store) as Arc<dyn Store>,
        keyrack::service::AuthorityOptions::default(),
    );
    let (_, minted) = authority.create_admin("stalled_admin", "").await.unwrap();
    let token = minted.token.expose().to_owned();
    let verify = || verify_directly(&authority, &token);
    eventually("the record is cached", Duration::from_secs(5), || async {
        verify().await.is_ok() && store.verify_cache_stats().unwrap().hits > 0
    })
    .await;
    let resets = store.verify_cache_stats().unwrap().link_resets;

    staller.stall();
    let stalled_at = Instant::now();
    eventually(
        "the stalled link is dropped",
        Duration::from_secs(5),
        || async { store.verify_cache_stats().unwrap().link_resets > resets },
    )
    .await;
    assert!(stalled_at.elapsed() < Duration::from_secs(3));
    for _ in 0..5 {
        assert_eq!(
            verify().await.map_err(|error| error.to_string()),
            Ok(keyrack::domain::VerifyCode::Valid),
            "Verify answers from Redis while the link is stalled"
        );
    }
}
