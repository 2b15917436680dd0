//! Usage control: rate limits and credits, exact across two replicas of one
//! Redis (replica A, the test server, and replica B with its record cache
//! on), and the same rules on the embedded store.

use crate::support::{
    Backend, RedisServer, Replica, TestServer, authed, command_calls, mask, two_replicas,
    unlimited_key,
};
use keyrack::domain::{ApiKey, Identity, UnixMillis};
use keyrack::proto::verify_service_client::VerifyServiceClient;
use keyrack::proto::{self, VerifyCode};
use keyrack::store::{Charge, Store};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

fn per(limit: i64, name: &str, seconds: i64) -> proto::RateLimit {
    proto::RateLimit {
        name: name.into(),
        limit,
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

fn credits(remaining: i64, refill: Option<(i64, Duration)>) -> proto::Credits {
    proto::Credits {
        remaining,
        refill: refill.map(|(amount, interval)| proto::CreditRefill {
            amount,
            interval: Some(prost_types::Duration {
                seconds: interval.as_secs() as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
        }),
    }
}

async fn verify(
    client: &VerifyServiceClient<Channel>,
    request: proto::VerifyRequest,
) -> proto::VerifyResponse {
    client
        .clone()
        .verify(request)
        .await
        .expect("Verify answers")
        .into_inner()
}

async fn verify_token(client: &VerifyServiceClient<Channel>, token: &str) -> proto::VerifyResponse {
    verify(
        client,
        proto::VerifyRequest {
            token: token.into(),
            ..Default::default()
        },
    )
    .await
}

/// A second key of an identity, with its token.
async fn create_key(
    server: &TestServer,
    request: proto::CreateKeyRequest,
) -> (proto::ApiKey, String) {
    let created = server
        .admin()
        .await
        .create_key(authed(&server.admin_token, request))
        .await
        .expect("create key")
        .into_inner();
    (created.key.unwrap(), created.token)
}

/// Has each replica check `token` once (cost 0 spends nothing), so the
/// concurrent calls that follow find it verified rather than all queueing
/// for argon2 at once.
async fn warm_both(
    a: &VerifyServiceClient<Channel>,
    b: &VerifyServiceClient<Channel>,
    token: &str,
) {
    for client in [a, b] {
        let checked = verify(
            client,
            proto::VerifyRequest {
                token: token.into(),
                cost: Some(0),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(checked.code(), VerifyCode::Valid);
    }
}

/// Sends `calls` Verify calls of `token` at once, alternating between the
/// two replicas, and counts the answers by code.
async fn concurrent_verifies(
    a: &VerifyServiceClient<Channel>,
    b: &VerifyServiceClient<Channel>,
    token: &str,
    calls: usize,
) -> Vec<proto::VerifyResponse> {
    warm_both(a, b, token).await;
    let tasks: Vec<_> = (0..calls)
        .map(|index| {
            let client = if index % 2 == 0 { a.clone() } else { b.clone() };
            let token = token.to_owned();
            tokio::spawn(async move { verify_token(&client, &token).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn count(answers: &[proto::VerifyResponse], code: VerifyCode) -> usize {
    answers
        .iter()
        .filter(|answer| answer.code() == code)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identity_limit_is_one_exact_budget_across_replicas_and_keys() {
    let (a, b) = two_replicas().await;
    let created = a
        .create_identity(proto::CreateIdentityRequest {
            name: "metered".into(),
            rate_limits: vec![per(10, "hourly", 3_600)],
            ..Default::default()
        })
        .await;
    // The second key exists before the first call, so its record is read
    // while the budget is still whole.
    let (_, second) = create_key(
        &a,
        proto::CreateKeyRequest {
            identity_id: created.identity.as_ref().unwrap().id.clone(),
            name: "second".into(),
            ..Default::default()
        },
    )
    .await;
    let answers = concurrent_verifies(&a.verifier().await, &b.verifier, &created.token, 40).await;
    assert_eq!(count(&answers, VerifyCode::Valid), 10, "{answers:?}");
    assert_eq!(count(&answers, VerifyCode::RateLimited), 30);
    for refused in answers
        .iter()
        .filter(|answer| answer.code() == VerifyCode::RateLimited)
    {
        let retry = refused
            .retry_after
            .expect("RATE_LIMITED carries retry_after");
        // One call in ten per hour: the next one is due within six minutes.
        assert!(retry.seconds > 0 && retry.seconds <= 360, "{retry:?}");
        assert!(!refused.valid);
        let state = &refused.rate_limits[0];
        assert_eq!(
            (
                state.name.as_str(),
                state.limit,
                state.remaining,
                state.shared
            ),
            ("hourly", 10, 0, true)
        );
    }
    let remaining: Vec<i64> = answers
        .iter()
        .filter(|answer| answer.valid)
        .map(|answer| answer.rate_limits[0].remaining)
        .collect();
    let mut sorted = remaining.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..10).collect::<Vec<_>>(),
        "each valid call saw its own place in the budget"
    );
    // The identity's other key draws on the same budget.
    assert_eq!(
        verify_token(&b.verifier, &second).await.code(),
        VerifyCode::RateLimited
    );
    assert_eq!(
        verify_token(&a.verifier().await, &second).await.code(),
        VerifyCode::RateLimited
    );
    let metrics = keyrack::metrics::metrics().render();
    assert!(metrics.contains(r#"code="RATE_LIMITED""#), "{metrics}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stricter_of_a_key_and_an_identity_limit_wins_and_charges_nothing_else() {
    let (a, b) = two_replicas().await;
    let created = a
        .create_identity(proto::CreateIdentityRequest {
            name: "layered".into(),
            rate_limits: vec![per(5, "shared", 3_600)],
            ..Default::default()
        })
        .await;
    let identity_id = created.identity.as_ref().unwrap().id.clone();
    let (narrow_key, narrow) = create_key(
        &a,
        proto::CreateKeyRequest {
            identity_id: identity_id.clone(),
            name: "narrow".into(),
            rate_limits: vec![per(2, "own", 3_600)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(narrow_key.rate_limits, vec![per(2, "own", 3_600)]);
    let first = verify_token(&a.verifier().await, &narrow).await;
    assert_eq!(first.code(), VerifyCode::Valid);
    let reported: Vec<(&str, i64, bool)> = first
        .rate_limits
        .iter()
        .map(|state| (state.name.as_str(), state.remaining, state.shared))
        .collect();
    assert_eq!(reported, vec![("shared", 4, true), ("own", 1, false)]);
    assert_eq!(
        verify_token(&b.verifier, &narrow).await.code(),
        VerifyCode::Valid
    );
    // The key's own limit refuses; the identity's budget is not charged.
    for _ in 0..3 {
        let refused = verify_token(&b.verifier, &narrow).await;
        assert_eq!(refused.code(), VerifyCode::RateLimited);
        assert_eq!(refused.rate_limits[0].remaining, 3);
    }
    // The first key, without limits of its own, has the identity's 3 left.
    for left in (0..3).rev() {
        let answer = verify_token(&a.verifier().await, &created.token).await;
        assert_eq!(answer.code(), VerifyCode::Valid);
        assert_eq!(answer.rate_limits.len(), 1);
        assert_eq!(answer.rate_limits[0].remaining, left);
    }
    assert_eq!(
        verify_token(&b.verifier, &created.token).await.code(),
        VerifyCode::RateLimited
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_are_exact_under_concurrency_across_replicas() {
    const CREDITS: i64 = 12;
    let (a, b) = two_replicas().await;
    let created = a.create_service("prepaid").await;
    let (key, token) = create_key(
        &a,
        proto::CreateKeyRequest {
            identity_id: created.identity.as_ref().unwrap().id.clone(),
            name: "prepaid".into(),
            credits: Some(credits(CREDITS, None)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(key.credits, Some(credits(CREDITS, None)));
    let answers = concurrent_verifies(
        &a.verifier().await,
        &b.verifier,
        &token,
        4 * CREDITS as usize,
    )
    .await;
    assert_eq!(
        count(&answers, VerifyCode::Valid),
        CREDITS as usize,
        "{answers:?}"
    );
    assert_eq!(
        count(&answers, VerifyCode::UsageExceeded),
        3 * CREDITS as usize
    );
    let mut left: Vec<i64> = answers
        .iter()
        .filter(|answer| answer.valid)
        .map(|answer| answer.credits_remaining.unwrap())
        .collect();
    left.sort();
    assert_eq!(left, (0..CREDITS).collect::<Vec<_>>());
    let exhausted = answers
        .iter()
        .find(|answer| answer.code() == VerifyCode::UsageExceeded)
        .unwrap();
    assert_eq!(exhausted.credits_remaining, Some(0));
    assert_eq!(exhausted.retry_after, None, "no refill will come");
    // Admins read the live balance.
    let read = a
        .admin()
        .await
        .get_key(authed(
            &a.admin_token,
            proto::GetKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.credits.unwrap().remaining, 0);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_for_its_dataset_or_scope_is_not_charged() {
    for backend in [Backend::Memory, Backend::Redis(RedisServer::start())] {
        let server = TestServer::start(backend).await;
        let admin = server.admin().await;
        admin
            .clone()
            .create_dataset(authed(
                &server.admin_token,
                proto::CreateDatasetRequest {
                    name: "sales".into(),
                    skip_key: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        let created = server
            .create_identity(proto::CreateIdentityRequest {
                name: "careful".into(),
                datasets: vec!["sales".into()],
                scopes: vec!["invoices:read".into()],
                ..Default::default()
            })
            .await;
        let (_, token) = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: created.identity.as_ref().unwrap().id.clone(),
                name: "one_use".into(),
                credits: Some(credits(1, None)),
                rate_limits: vec![per(1, "once", 3_600)],
                ..Default::default()
            },
        )
        .await;
        let verifier = server.verifier().await;
        let wrong_dataset = verify(
            &verifier,
            proto::VerifyRequest {
                token: token.clone(),
                dataset: "hr".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(wrong_dataset.code(), VerifyCode::DatasetNotAllowed);
        assert_eq!(wrong_dataset.credits_remaining, None, "nothing was settled");
        let wrong_scope = verify(
            &verifier,
            proto::VerifyRequest {
                token: token.clone(),
                required_scopes: vec!["invoices:write".into()],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(wrong_scope.code(), VerifyCode::ScopeNotAllowed);
        // A check (cost 0) is not a use either.
        let checked = verify(
            &verifier,
            proto::VerifyRequest {
                token: token.clone(),
                cost: Some(0),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            (checked.code(), checked.credits_remaining),
            (VerifyCode::Valid, Some(1))
        );
        assert_eq!(checked.rate_limits[0].remaining, 1);
        let used = verify(
            &verifier,
            proto::VerifyRequest {
                token: token.clone(),
                dataset: "sales".into(),
                required_scopes: vec!["invoices:read".into()],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            (used.code(), used.credits_remaining),
            (VerifyCode::Valid, Some(0))
        );
        // Spent credits refuse first: waiting would not help.
        assert_eq!(
            verify_token(&verifier, &token).await.code(),
            VerifyCode::UsageExceeded
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_refill_after_their_interval_and_costs_spend_several() {
    for backend in [Backend::Memory, Backend::Redis(RedisServer::start())] {
        let server = TestServer::start(backend).await;
        let created = server.create_service("refilled").await;
        let (_, token) = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: created.identity.as_ref().unwrap().id.clone(),
                name: "refilled".into(),
                credits: Some(credits(3, Some((5, Duration::from_secs(1))))),
                ..Default::default()
            },
        )
        .await;
        let verifier = server.verifier().await;
        let costly = |cost| proto::VerifyRequest {
            token: token.clone(),
            cost: Some(cost),
            ..Default::default()
        };
        let spent = verify(&verifier, costly(3)).await;
        assert_eq!(
            (spent.code(), spent.credits_remaining),
            (VerifyCode::Valid, Some(0))
        );
        let refused = verify(&verifier, costly(1)).await;
        assert_eq!(refused.code(), VerifyCode::UsageExceeded);
        let wait = refused.retry_after.expect("the refill's time");
        let wait = Duration::new(wait.seconds as u64, wait.nanos as u32);
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        let refilled = verify(&verifier, costly(2)).await;
        assert_eq!(
            (refilled.code(), refilled.credits_remaining),
            (VerifyCode::Valid, Some(3))
        );
        // A cost above the balance is refused whole, and charges nothing.
        assert_eq!(
            verify(&verifier, costly(4)).await.code(),
            VerifyCode::UsageExceeded
        );
        assert_eq!(
            verify(&verifier, costly(0)).await.credits_remaining,
            Some(3)
        );
        // A cost out of range is the caller's mistake.
        let status = verifier.clone().verify(costly(-1)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("cost"), "{}", status.message());
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_through_update_key_is_seen_by_the_other_replica() {
    let (a, b) = two_replicas().await;
    let created = a.create_service("topped").await;
    let (key, token) = create_key(
        &a,
        proto::CreateKeyRequest {
            identity_id: created.identity.as_ref().unwrap().id.clone(),
            name: "topped".into(),
            credits: Some(credits(1, None)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        verify_token(&b.verifier, &token).await.code(),
        VerifyCode::Valid
    );
    assert_eq!(
        verify_token(&b.verifier, &token).await.code(),
        VerifyCode::UsageExceeded
    );
    let updated = a
        .admin()
        .await
        .update_key(authed(
            &a.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: key.id.clone(),
                    credits: Some(credits(5, None)),
                    ..Default::default()
                }),
                update_mask: mask(&["credits.remaining"]),
            },
        ))
        .await
        .expect("top up")
        .into_inner();
    assert_eq!(updated.credits.unwrap().remaining, 5);
    // B may still hold the old record in its cache: the charge notices and
    // B decides again on the record Redis has now.
    let answer = verify_token(&b.verifier, &token).await;
    assert_eq!(
        (answer.code(), answer.credits_remaining),
        (VerifyCode::Valid, Some(4))
    );
    assert_eq!(
        verify_token(&a.verifier().await, &token)
            .await
            .credits_remaining,
        Some(3)
    );
    // A key without credits cannot be topped up.
    let status = a
        .admin()
        .await
        .update_key(authed(
            &a.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: created.key.as_ref().unwrap().id.clone(),
                    credits: Some(credits(5, None)),
                    ..Default::default()
                }),
                update_mask: mask(&["credits.remaining"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_key_and_its_replacement_draw_on_one_budget() {
    let (a, b) = two_replicas().await;
    let created = a.create_service("rolling").await;
    let (key, old_token) = create_key(
        &a,
        proto::CreateKeyRequest {
            identity_id: created.identity.as_ref().unwrap().id.clone(),
            name: "rolling".into(),
            credits: Some(credits(4, None)),
            rate_limits: vec![per(100, "minute", 60)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        verify_token(&b.verifier, &old_token)
            .await
            .credits_remaining,
        Some(3)
    );
    let rolled = a
        .admin()
        .await
        .roll_key(authed(
            &a.admin_token,
            proto::RollKeyRequest {
                key_id: key.id.clone(),
                old_key_end: Some(proto::roll_key_request::OldKeyEnd::GracePeriod(
                    prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    },
                )),
                ..Default::default()
            },
        ))
        .await
        .expect("roll")
        .into_inner();
    let replacement = rolled.key.unwrap();
    assert_eq!(
        replacement.rate_limits, key.rate_limits,
        "the limits carry over"
    );
    let new = verify_token(&a.verifier().await, &rolled.token).await;
    assert_eq!(
        (new.code(), new.credits_remaining),
        (VerifyCode::Valid, Some(2))
    );
    assert_eq!(new.rate_limits[0].remaining, 98, "the old key's use counts");
    let old = verify_token(&b.verifier, &old_token).await;
    assert_eq!(
        (old.code(), old.credits_remaining),
        (VerifyCode::Valid, Some(1))
    );
    assert_eq!(
        verify_token(&b.verifier, &rolled.token)
            .await
            .credits_remaining,
        Some(0)
    );
    assert_eq!(
        verify_token(&a.verifier().await, &old_token).await.code(),
        VerifyCode::UsageExceeded
    );
    // Revoking the old key leaves the budget to the replacement.
    a.admin()
        .await
        .revoke_key(authed(
            &a.admin_token,
            proto::RevokeKeyRequest {
                key_id: key.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        verify_token(&a.verifier().await, &rolled.token)
            .await
            .code(),
        VerifyCode::UsageExceeded
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_credits_are_checked_field_by_field() {
    let server = TestServer::memory().await;
    let status = server
        .admin()
        .await
        .create_identity(authed(
            &server.admin_token,
            proto::CreateIdentityRequest {
                name: "bad_limits".into(),
                rate_limits: vec![
                    per(0, "zero", 60),
                    per(10, "Upper", 60),
                    per(10, "short", 0),
                    per(10, "dup", 60),
                    per(10, "dup", 120),
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = crate::api::violated_fields(&status);
    for expected in [
        "rate_limits[0].limit",
        "rate_limits[1].name",
        "rate_limits[2].duration",
        "rate_limits[4].name",
    ] {
        assert!(
            fields.iter().any(|field| field == expected),
            "{expected} in {fields:?}"
        );
    }
    let created = server.create_service("good").await;
    let status = server
        .admin()
        .await
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: created.identity.unwrap().id,
                name: "bad_credits".into(),
                credits: Some(credits(-1, Some((0, Duration::from_millis(10))))),
                rate_limits: (0..9).map(|i| per(1, &format!("l{i}"), 60)).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    let fields = crate::api::violated_fields(&status);
    for expected in [
        "credits.remaining",
        "credits.refill.amount",
        "credits.refill.interval",
        "rate_limits",
    ] {
        assert!(
            fields.iter().any(|field| field == expected),
            "{expected} in {fields:?}"
        );
    }
    server.stop().await;
}

/// Every command Redis has served so far but the record cache's fence
/// (PING) and these tests' own INFO.
fn all_calls(redis: &RedisServer) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.connection())
        .unwrap();
    stats
        .lines()
        .filter(|line| !line.starts_with("cmdstat_ping:") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| line.split_once(":calls=").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlimited_keys_keep_zero_redis_commands_and_limited_ones_take_one_script() {
    const CALLS: u64 = 50;
    let (a, b) = two_replicas().await;
    let redis = a.backend.redis();
    let free = a.create_service("free").await;
    let metered = a
        .create_identity(proto::CreateIdentityRequest {
            name: "metered_cmds".into(),
            rate_limits: vec![per(1_000, "minute", 60)],
            ..Default::default()
        })
        .await;
    // The first calls run argon2 and fill B's caches.
    let hits = b.stats().hits;
    crate::support::eventually(
        "B answers from its cache",
        Duration::from_secs(5),
        || async {
            assert_eq!(
                verify_token(&b.verifier, &free.token).await.code(),
                VerifyCode::Valid
            );
            b.stats().hits > hits
        },
    )
    .await;
    let steady = |b: &Replica, token: String| {
        let client = b.verifier.clone();
        async move {
            for _ in 0..CALLS {
                assert_eq!(
                    verify_token(&client, &token).await.code(),
                    VerifyCode::Valid
                );
            }
        }
    };
    // A stall of the shared test machine past the staleness bound may cost
    // a read or two; there is no script for an unlimited key at all.
    let (before, scripts_before) = (all_calls(redis), command_calls(redis, "evalsha"));
    steady(&b, free.token.clone()).await;
    let (after, scripts_after) = (all_calls(redis), command_calls(redis, "evalsha"));
    assert_eq!(
        scripts_after, scripts_before,
        "no charge for an unlimited key"
    );
    assert!(
        after - before <= CALLS / 10,
        "{} commands for {CALLS} Verify calls",
        after - before
    );
    // A limited key: its charge is its one round trip.
    verify_token(&b.verifier, &metered.token).await;
    let scripts_before = command_calls(redis, "evalsha") + command_calls(redis, "eval");
    let reads_before = command_calls(redis, "mget");
    steady(&b, metered.token.clone()).await;
    let scripts = command_calls(redis, "evalsha") + command_calls(redis, "eval") - scripts_before;
    assert_eq!(scripts, CALLS, "one charge per Verify");
    assert!(command_calls(redis, "mget") - reads_before <= CALLS / 10);
    b.stop().await;
    a.stop().await;
}

/// Polls `charges` in their order on every turn until all have answered,
/// so each makes its request (and joins its identity's queue) in that
/// order: the first finds nothing in flight and goes alone, the rest queue
/// behind it and go as one batch.
async fn in_order<F: std::future::Future>(charges: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = charges.into_iter().map(Box::pin).collect();
    let mut answers: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        for (charge, answer) in pending.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none()
                && let std::task::Poll::Ready(output) = charge.as_mut().poll(context)
            {
                *answer = Some(output);
            }
        }
        if answers.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    answers.into_iter().map(Option::unwrap).collect()
}

/// An identity limited to 10 calls an hour with two keys: `prepaid` holding
/// 7 credits and `narrow` limited to 3 calls an hour of its own, written
/// straight to `store`. Returns both keys as Redis holds them, with the
/// identity.
async fn metered_pair(
    store: &keyrack::store::redis::RedisStore,
    name: &str,
) -> (ApiKey, ApiKey, Identity) {
    use keyrack::domain::usage::{Credits, RateLimit};
    let hourly = |limit: u64, name: &str| RateLimit {
        name: name.into(),
        limit,
        duration_ms: 3_600_000,
    };
    let now = UnixMillis::now();
    let mut identity = Identity::new_service(
        keyrack::domain::names::IdentityName::parse_service(name).unwrap(),
        String::new(),
        now,
    );
    identity.rate_limits = vec![hourly(10, "hourly")];
    let key = |name: &str| unlimited_key(&identity, name);
    let mut prepaid = key("prepaid");
    prepaid.credits = Some(Credits {
        remaining: 7,
        granted_at: now,
        refill: None,
    });
    let mut narrow = key("narrow");
    narrow.rate_limits = vec![hourly(3, "own")];
    store
        .create_identity(&identity, &[prepaid.clone(), narrow.clone()])
        .await
        .unwrap();
    let (prepaid, identity) = *store
        .key_with_identity_uncached(&prepaid.id)
        .await
        .unwrap()
        .unwrap();
    let (narrow, _) = *store
        .key_with_identity_uncached(&narrow.id)
        .await
        .unwrap()
        .unwrap();
    (prepaid, narrow, identity)
}

/// The charges of `coalesced_charges_answer_as_the_same_charges_one_by_one`:
/// (which key: 0 prepaid, 1 narrow; cost; read a record that has changed
/// since).
fn mixed_charges() -> Vec<(usize, u64, bool)> {
    (0..30)
        .map(|index| {
            let cost = match index {
                _ if index % 5 == 4 => 0,
                _ if index % 7 == 3 => 2,
                _ => 1,
            };
            (index % 3 / 2, cost, index == 1 || index == 14)
        })
        .collect()
}

/// What a charge answered, less what depends on the instant it was settled.
fn comparable(charge: &Charge) -> String {
    match charge {
        Charge::Stale => "STALE".into(),
        Charge::Settled(settled) => format!(
            "{:?} credits {:?} retry {} limits {:?}",
            settled.refusal,
            settled.credits_remaining,
            settled.retry_after_ms.is_some(),
            settled
                .limits
                .iter()
                .map(|limit| (&limit.name, limit.limit, limit.remaining, limit.shared))
                .collect::<Vec<_>>()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_charges_answer_as_the_same_charges_one_by_one() {
    // A store alone on its Redis: no server beside it runs scripts of its
    // own, so Redis's count of script calls is the charges' alone.
    let redis = RedisServer::start();
    let options = crate::support::redis_options(redis.url(), Duration::from_secs(2));
    let store = keyrack::store::redis::RedisStore::connect(&options, Duration::from_secs(5))
        .await
        .unwrap();
    let (prepaid, narrow, identity) = metered_pair(&store, "coalesced").await;
    let (twin_prepaid, twin_narrow, twin_identity) = metered_pair(&store, "one_by_one").await;

    // Two charges read a key record that has changed since: a Stale answer,
    // nothing charged, and the others answered as if it had not been made.
    let stale = |key: &ApiKey| {
        let mut changed = key.clone();
        changed.revision += 1;
        changed
    };
    let charges = mixed_charges();
    let keys_of = |prepaid: &ApiKey, narrow: &ApiKey| {
        charges
            .iter()
            .map(|(which, _, changed)| {
                let key = if *which == 0 { prepaid } else { narrow };
                if *changed { stale(key) } else { key.clone() }
            })
            .collect::<Vec<_>>()
    };
    let batched_keys = keys_of(&prepaid, &narrow);
    // Redis learns the script on its first call (a NOSCRIPT, then a load):
    // a check of each identity, which charges nothing, comes first.
    for (key, identity) in [(&prepaid, &identity), (&twin_prepaid, &twin_identity)] {
        let check = key.usage_check(identity, 0).unwrap();
        store.charge_usage(key, identity, &check).await.unwrap();
    }
    let scripts_before = command_calls(&redis, "evalsha") + command_calls(&redis, "eval");
    let batched = in_order(
        batched_keys
            .iter()
            .zip(&charges)
            .map(|(key, (_, cost, _))| {
                let store = &store;
                let identity = &identity;
                async move {
                    let check = key.usage_check(identity, *cost).unwrap();
                    store.charge_usage(key, identity, &check).await.unwrap()
                }
            })
            .collect(),
    )
    .await;
    let scripts = command_calls(&redis, "evalsha") + command_calls(&redis, "eval") - scripts_before;
    // The first charge goes alone and the 29 queued behind it go as one
    // call: 2. Under a loaded machine the count has once been seen higher,
    // so only coalescing itself is asserted.
    assert!(
        scripts < charges.len() as u64 / 2,
        "{scripts} script calls for {} charges",
        charges.len()
    );

    let mut one_by_one = Vec::new();
    for (key, (_, cost, _)) in keys_of(&twin_prepaid, &twin_narrow).iter().zip(&charges) {
        let check = key.usage_check(&twin_identity, *cost).unwrap();
        one_by_one.push(
            store
                .charge_usage(key, &twin_identity, &check)
                .await
                .unwrap(),
        );
    }
    let batched: Vec<String> = batched.iter().map(comparable).collect();
    let one_by_one: Vec<String> = one_by_one.iter().map(comparable).collect();
    assert_eq!(batched, one_by_one);
    // The batch ran out of both budgets as one call at a time would, and
    // the stale charges were not charged.
    assert_eq!(
        batched.iter().filter(|answer| *answer == "STALE").count(),
        2
    );
    assert!(
        batched
            .iter()
            .any(|answer| answer.starts_with("Some(RateLimited)"))
    );
    assert!(
        batched
            .iter()
            .any(|answer| answer.starts_with("Some(UsageExceeded)"))
    );
    let admitted = |answers: &[String]| {
        answers
            .iter()
            .filter(|answer| answer.starts_with("None"))
            .count()
    };
    assert_eq!(admitted(&batched), admitted(&one_by_one));
    // Both identities were left the same: one more check of each key reads
    // the same states.
    for (key, twin) in [(&prepaid, &twin_prepaid), (&narrow, &twin_narrow)] {
        let check = key.usage_check(&identity, 0).unwrap();
        let left = store.charge_usage(key, &identity, &check).await.unwrap();
        let check = twin.usage_check(&twin_identity, 0).unwrap();
        let twin_left = store
            .charge_usage(twin, &twin_identity, &check)
            .await
            .unwrap();
        assert_eq!(comparable(&left), comparable(&twin_left));
        assert_ne!(left, Charge::Stale);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_verifies_share_charge_scripts_and_stay_exact() {
    const CALLS: usize = 200;
    const LIMIT: i64 = 50;
    let server = TestServer::redis().await;
    let redis = server.backend.redis();
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "busy".into(),
            rate_limits: vec![per(LIMIT, "hourly", 3_600)],
            ..Default::default()
        })
        .await;
    let client = server.verifier().await;
    let checked = verify(
        &client,
        proto::VerifyRequest {
            token: created.token.clone(),
            cost: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(checked.code(), VerifyCode::Valid);
    let scripts_before = command_calls(redis, "evalsha") + command_calls(redis, "eval");
    let tasks: Vec<_> = (0..CALLS)
        .map(|_| {
            let client = client.clone();
            let token = created.token.clone();
            tokio::spawn(async move { verify_token(&client, &token).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(CALLS);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let scripts = command_calls(redis, "evalsha") + command_calls(redis, "eval") - scripts_before;
    assert_eq!(
        count(&answers, VerifyCode::Valid),
        LIMIT as usize,
        "{answers:?}"
    );
    assert_eq!(
        count(&answers, VerifyCode::RateLimited),
        CALLS - LIMIT as usize
    );
    let mut remaining: Vec<i64> = answers
        .iter()
        .filter(|answer| answer.valid)
        .map(|answer| answer.rate_limits[0].remaining)
        .collect();
    remaining.sort();
    assert_eq!(remaining, (0..LIMIT).collect::<Vec<_>>());
    assert!(
        (scripts as usize) < CALLS,
        "{scripts} scripts for {CALLS} concurrent charges"
    );
    server.stop().await;
}

/// An admin's AdminService calls spend its limits as its Verify calls do;
/// a spent limit is RESOURCE_EXHAUSTED with when to retry, not a bad token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_past_its_rate_limit_is_told_so_and_when_to_retry() {
    let server = TestServer::memory().await;
    let limited_admin = server
        .create_identity(proto::CreateIdentityRequest {
            name: "limited_ops".into(),
            admin: true,
            rate_limits: vec![per(2, "admin_calls", 60)],
            ..Default::default()
        })
        .await;
    let mut admin = server.admin().await;
    let list =
        || crate::support::authed(&limited_admin.token, proto::ListDatasetsRequest::default());
    for _ in 0..2 {
        admin.list_datasets(list()).await.unwrap();
    }
    let spent = admin.list_datasets(list()).await.unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted, "{spent:?}");
    assert!(spent.message().contains("retry in"), "{}", spent.message());
    // Another admin is unaffected.
    admin
        .list_datasets(crate::support::authed(
            &server.admin_token,
            proto::ListDatasetsRequest::default(),
        ))
        .await
        .unwrap();
    server.stop().await;
}

/// A cost no wait can cover (more than a limit's whole bucket, or more than
/// a refill grants) is refused without a time to retry; a cost a wait can
/// cover gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_no_wait_can_cover_gets_no_retry_time() {
    for backend in [Backend::Memory, Backend::Redis(RedisServer::start())] {
        let server = TestServer::start(backend).await;
        let identity_id = server.create_service("metered").await.identity.unwrap().id;
        let (_, limited) = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id: identity_id.clone(),
                name: "limited".into(),
                rate_limits: vec![per(2, "per_minute", 60)],
                ..Default::default()
            },
        )
        .await;
        let (_, refilled) = create_key(
            &server,
            proto::CreateKeyRequest {
                identity_id,
                name: "refilled".into(),
                credits: Some(credits(3, Some((5, Duration::from_secs(3600))))),
                ..Default::default()
            },
        )
        .await;
        let verifier = server.verifier().await;
        let costing = |token: &str, cost| proto::VerifyRequest {
            token: token.to_owned(),
            cost: Some(cost),
            ..Default::default()
        };

        let beyond_the_bucket = verify(&verifier, costing(&limited, 3)).await;
        assert_eq!(beyond_the_bucket.code(), VerifyCode::RateLimited);
        assert_eq!(beyond_the_bucket.retry_after, None, "{beyond_the_bucket:?}");
        assert_eq!(
            verify(&verifier, costing(&limited, 2)).await.code(),
            VerifyCode::Valid
        );
        let after_the_burst = verify(&verifier, costing(&limited, 1)).await;
        assert_eq!(after_the_burst.code(), VerifyCode::RateLimited);
        assert!(after_the_burst.retry_after.is_some(), "{after_the_burst:?}");

        let beyond_the_refill = verify(&verifier, costing(&refilled, 6)).await;
        assert_eq!(beyond_the_refill.code(), VerifyCode::UsageExceeded);
        assert_eq!(beyond_the_refill.retry_after, None, "{beyond_the_refill:?}");
        let until_the_refill = verify(&verifier, costing(&refilled, 4)).await;
        assert_eq!(until_the_refill.code(), VerifyCode::UsageExceeded);
        assert!(
            until_the_refill.retry_after.is_some(),
            "{until_the_refill:?}"
        );
        server.stop().await;
    }
}

/// A limited key answers every change at once: a disable, an enable, a new
/// allow-list and a revoke each decide the very next Verify, whether its
/// records come from the record cache or, with the cache off, from its last
/// confirmed charge (scripts/test runs this suite both ways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_answers_every_change_at_once() {
    let server = TestServer::start(Backend::Redis(RedisServer::start())).await;
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "limited_changes".into(),
            rate_limits: vec![per(1_000_000, "per_second", 1)],
            ..Default::default()
        })
        .await;
    let identity_id = created.identity.unwrap().id;
    let key_id = created.key.unwrap().id;
    let verifier = server.verifier().await;
    let code = || async { verify_token(&verifier, &created.token).await.code() };
    for _ in 0..3 {
        assert_eq!(code().await, VerifyCode::Valid);
    }
    let mut admin = server.admin().await;
    admin
        .disable_identity(authed(
            &server.admin_token,
            proto::DisableIdentityRequest {
                identity_id: identity_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(code().await, VerifyCode::Disabled);
    admin
        .enable_identity(authed(
            &server.admin_token,
            proto::EnableIdentityRequest {
                identity_id: identity_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(code().await, VerifyCode::Valid);
    assert_eq!(code().await, VerifyCode::Valid);
    admin
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: key_id.clone(),
                    allowed_cidrs: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                }),
                update_mask: mask(&["allowed_cidrs"]),
            },
        ))
        .await
        .unwrap();
    let elsewhere = verify(
        &verifier,
        proto::VerifyRequest {
            token: created.token.clone(),
            client_ip: "198.51.100.7".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(elsewhere.code(), VerifyCode::IpNotAllowed);
    // Charged from inside the allow-list, then the allow-list goes: the
    // records the last charge settled on would refuse the outsider, the
    // store's admit it.
    let inside = proto::VerifyRequest {
        token: created.token.clone(),
        client_ip: "192.0.2.7".into(),
        ..Default::default()
    };
    for _ in 0..2 {
        assert_eq!(
            verify(&verifier, inside.clone()).await.code(),
            VerifyCode::Valid
        );
    }
    admin
        .update_key(authed(
            &server.admin_token,
            proto::UpdateKeyRequest {
                key: Some(proto::ApiKey {
                    id: key_id.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["allowed_cidrs"]),
            },
        ))
        .await
        .unwrap();
    let outsider = proto::VerifyRequest {
        client_ip: "198.51.100.7".into(),
        ..inside
    };
    assert_eq!(verify(&verifier, outsider).await.code(), VerifyCode::Valid);
    admin
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest { key_id },
        ))
        .await
        .unwrap();
    assert_eq!(code().await, VerifyCode::Unknown);
    server.stop().await;
}
