//! keyrack driven as an attacker with a network path would drive it: forged
//! tokens for public key ids, floods of known-wrong tokens, slow clients. Each
//! test is one finding of the adversarial review, on a real redis-server.

use crate::support::{
    Backend, RedisServer, TestServer, authed, eventually, test_server_options, verify_directly,
};
use axum::http::{StatusCode, header};
use keyrack::domain::KeyId;
use keyrack::proto::{self, VerifyCode};
use keyrack::server::ServerOptions;
use keyrack::service::AuthorityOptions;
use keyrack::service::guard::GuardOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// Forgeries sent before the real token: past the default failure budget.
const FORGERIES: usize = 30;

/// A token with the right shape and checksum for `key_id`, and a random secret.
fn forged_for(key_id: &KeyId) -> String {
    keyrack::domain::token::mint(&Default::default(), key_id)
        .token
        .expose()
        .to_owned()
}

/// The key id a token names.
fn key_id_of(token: &str) -> KeyId {
    keyrack::domain::token::parse(&Default::default(), token)
        .unwrap()
        .key_id
}

/// A fresh admin key that this server has not verified yet.
async fn fresh_admin(server: &TestServer, name: &str) -> String {
    let (_, minted) = server.authority.create_admin(name, "").await.unwrap();
    minted.token.expose().to_owned()
}

/// The status SCIM answers `GET /Users` with, as `token`.
async fn scim_status(server: &TestServer, token: &str) -> StatusCode {
    crate::scim::call_as(server, token, axum::http::Method::GET, "/Users", None, &[])
        .await
        .status
}

/// Finding 1: key ids are public, so wrong guesses must never lock the
/// correct token out, on any of the three doors an admin token opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_never_lock_out_the_real_token() {
    let server = TestServer::redis().await;

    let real = server.admin_token.clone();
    for _ in 0..FORGERIES {
        let forged = forged_for(&key_id_of(&real));
        assert_eq!(server.verify_code(&forged).await, Ok(VerifyCode::Unknown));
    }
    assert_eq!(server.verify_code(&real).await, Ok(VerifyCode::Valid));

    let real = fresh_admin(&server, "second_admin").await;
    let mut admin = server.admin().await;
    for _ in 0..FORGERIES {
        let forged = forged_for(&key_id_of(&real));
        let refused = admin
            .list_identities(authed(&forged, proto::ListIdentitiesRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    admin
        .list_identities(authed(&real, proto::ListIdentitiesRequest::default()))
        .await
        .expect("the real admin token is accepted");

    let real = fresh_admin(&server, "third_admin").await;
    for _ in 0..FORGERIES {
        let forged = forged_for(&key_id_of(&real));
        assert_eq!(
            scim_status(&server, &forged).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(scim_status(&server, &real).await, StatusCode::OK);
    server.stop().await;
}

/// Finding 3: a live key id and an absent one get the same answers to the
/// same forgeries, held back alike once past the failure budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_absent_key_ids_answer_forgeries_alike() {
    const BUDGET: u32 = 3;
    const DELAY: Duration = Duration::from_millis(400);
    let server = TestServer::start_serving(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions {
            guard: GuardOptions {
                failures_per_window: BUDGET,
                refusal_delay: DELAY,
                ..GuardOptions::default()
            },
            ..AuthorityOptions::default()
        },
        test_server_options(),
    )
    .await;
    let live = server.create_service("svc").await;
    let live_identity = keyrack::domain::IdentityId::parse(&live.identity.unwrap().id).unwrap();
    let live_key = KeyId::parse(&live.key.unwrap().id).unwrap();
    let absent_key_of_live_identity = KeyId::generate(&live_identity);
    let absent_key_of_absent_identity = KeyId::generate(&keyrack::domain::IdentityId::generate());

    // Six fresh forgeries, then the first one again.
    let answers_to_forgeries = |key: KeyId| {
        let server = &server;
        async move {
            let forgeries: Vec<String> = (0..6).map(|_| forged_for(&key)).collect();
            let mut answers = Vec::new();
            for forged in forgeries.iter().chain(forgeries.first()) {
                let started = Instant::now();
                let code = server.verify_code(forged).await;
                answers.push((code, started.elapsed() >= DELAY));
            }
            answers
        }
    };
    let live_answers = answers_to_forgeries(live_key).await;
    for absent in [absent_key_of_live_identity, absent_key_of_absent_identity] {
        let absent_answers = answers_to_forgeries(absent).await;
        let codes = |answers: &[(Result<VerifyCode, Code>, bool)]| {
            answers.iter().map(|(code, _)| *code).collect::<Vec<_>>()
        };
        assert_eq!(codes(&live_answers), codes(&absent_answers));
        assert!(
            codes(&live_answers)
                .iter()
                .all(|code| *code == Ok(VerifyCode::Unknown)),
            "{live_answers:?}"
        );
        // Past the budget and for the repeat, both are held back.
        for answers in [&live_answers, &absent_answers] {
            let held_back: Vec<bool> = answers.iter().map(|(_, held)| *held).collect();
            assert!(
                held_back[BUDGET as usize..].iter().all(|held| *held),
                "answers past the budget are held back: {held_back:?}"
            );
        }
    }
    server.stop().await;
}

/// Finding 4: answers held back for known-wrong tokens take no capacity from
/// good calls, and health checks are never shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_good_calls_pass_during_a_known_wrong_flood() {
    const FLOODERS: usize = 16;
    let server = TestServer::start_serving(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions {
            guard: GuardOptions {
                refusal_delay: Duration::from_millis(300),
                ..GuardOptions::default()
            },
            ..AuthorityOptions::default()
        },
        ServerOptions {
            max_concurrent_requests: 8,
            ..test_server_options()
        },
    )
    .await;
    let good = server.create_service("svc").await;
    let good_key = KeyId::parse(&good.key.unwrap().id).unwrap();
    assert_eq!(server.verify_code(&good.token).await, Ok(VerifyCode::Valid));
    let known_wrong = forged_for(&good_key);
    assert_eq!(
        server.verify_code(&known_wrong).await,
        Ok(VerifyCode::Unknown)
    );
    let mut health = server.health().await;
    eventually(
        "the server reports SERVING",
        Duration::from_secs(10),
        || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok_and(|answer| answer.into_inner().status() == ServingStatus::Serving)
            }
        },
    )
    .await;

    let verifier = server.verifier().await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let mut verifier = verifier.clone();
        let (stop, answered, known_wrong) = (stop.clone(), answered.clone(), known_wrong.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = verifier
                    .verify(proto::VerifyRequest {
                        token: known_wrong.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(|answer| answer.into_inner().code())
                    .map_err(|status| status.code());
                // Flooders arriving all at once may find the limit full; like
                // any client with bounded concurrency they back off then.
                match answer {
                    Ok(VerifyCode::Unknown) => {}
                    Err(Code::ResourceExhausted) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("{other:?}"),
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually("the flood is in flight", Duration::from_secs(10), || {
        let answered = answered.load(Ordering::Relaxed);
        async move { answered >= FLOODERS }
    })
    .await;

    let mut good_verifier = verifier.clone();
    for _ in 0..20 {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health is never shed")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
        let code = good_verifier
            .verify(proto::VerifyRequest {
                token: good.token.clone(),
                ..Default::default()
            })
            .await
            .expect("a good call is not shed by held-back refusals")
            .into_inner()
            .code();
        assert_eq!(code, VerifyCode::Valid);
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    server.stop().await;
}

/// Finding 2: clients that send half a request are disconnected within the
/// header-read timeout, on the SCIM and the metrics listener, and SCIM keeps
/// answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off_while_scim_keeps_answering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SLOW_CLIENTS: usize = 50;
    // The default header-read timeout is 10 s; allow for a loaded machine.
    const CLOSED_WITHIN: Duration = Duration::from_secs(20);
    let server = TestServer::redis().await;
    let scim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scim_address = scim.local_addr().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(());
    let stopped_scim = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let stopped_metrics = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let scim_task = tokio::spawn(keyrack::scim::serve(
        scim,
        server.authority.clone(),
        keyrack::scim::ScimOptions {
            request_timeout: Duration::from_secs(10),
            tls: None,
        },
        stopped_scim,
    ));
    let metrics_task = tokio::spawn(keyrack::metrics::serve(metrics, stopped_metrics));

    let started = Instant::now();
    let mut slow = Vec::new();
    for address in [scim_address, metrics_address] {
        for _ in 0..SLOW_CLIENTS {
            let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
            socket
                .write_all(b"GET /scim/v2/Users HTTP/1.1\r\nHost: keyrack.test\r\n")
                .await
                .unwrap();
            slow.push(socket);
        }
    }

    let request = format!(
        "GET /scim/v2/ServiceProviderConfig HTTP/1.1\r\nHost: keyrack.test\r\n\
         Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.admin_token
    );
    let mut client = tokio::net::TcpStream::connect(scim_address).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("SCIM answers while slow clients hold connections")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    for mut socket in slow {
        let mut rest = Vec::new();
        let remaining = CLOSED_WITHIN.saturating_sub(started.elapsed());
        let closed = tokio::time::timeout(remaining, socket.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a half-sent request still holds its connection"
        );
    }
    let _ = stop.send(());
    scim_task.await.unwrap().unwrap();
    metrics_task.await.unwrap().unwrap();
    server.stop().await;
}

/// A server secret of one repeated byte.
fn server_secret(version: u32, fill: u8) -> keyrack::service::hashing::ServerSecret {
    keyrack::service::hashing::ServerSecret {
        version,
        bytes: zeroize::Zeroizing::new(vec![fill; 32]),
    }
}

/// Finding 10: a key used while the new secret and the previous one are both
/// configured keeps working once the previous one is dropped; the count of
/// keys left under the previous secret says when that is safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_during_rotation_works_after_the_previous_secret_is_dropped() {
    use keyrack::service::Authority;
    use keyrack::service::hashing::{HashPolicy, ServerSecret};
    use keyrack::service::keyring::Keyring;
    let backend = Backend::Redis(RedisServer::start());
    let store = crate::support::open_store(&backend).await;
    let authority = |current: ServerSecret, previous: Vec<ServerSecret>| {
        let keyring = Keyring::new(current, previous, HashPolicy::default()).unwrap();
        Authority::new(store.clone(), keyring, AuthorityOptions::default())
    };

    let before = authority(server_secret(1, 1), vec![]);
    let (_, used) = before.create_admin("used", "").await.unwrap();
    let (_, unused) = before.create_admin("unused", "").await.unwrap();
    let (used, unused) = (
        used.token.expose().to_owned(),
        unused.token.expose().to_owned(),
    );

    let during = authority(server_secret(2, 2), vec![server_secret(1, 1)]);
    assert_eq!(during.count_under_older_secret().await.unwrap().keys, 2);
    assert_eq!(
        verify_directly(&during, &used).await.unwrap(),
        keyrack::domain::VerifyCode::Valid
    );
    assert_eq!(during.count_under_older_secret().await.unwrap().keys, 1);
    assert_eq!(
        verify_directly(&during, &used).await.unwrap(),
        keyrack::domain::VerifyCode::Valid
    );

    let after = authority(server_secret(2, 2), vec![]);
    assert_eq!(
        verify_directly(&after, &used).await.unwrap(),
        keyrack::domain::VerifyCode::Valid
    );
    // The key nobody used is still under the dropped secret, as counted.
    assert_eq!(
        verify_directly(&after, &unused).await.unwrap(),
        keyrack::domain::VerifyCode::Unknown
    );
}

/// The current TOTP time step, once at least `margin` of it is left: codes
/// of the step before and the one after it then stay acceptable (the server
/// allows one step of skew) for the next `margin`.
async fn totp_step_with_margin(margin: Duration) -> u64 {
    let step = Duration::from_secs(30);
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_step = Duration::from_nanos((since_epoch.as_nanos() % step.as_nanos()) as u64);
    if step - into_step < margin {
        tokio::time::sleep(step - into_step).await;
    }
    crate::roll::current_step()
}

/// Finding 10, TOTP seeds: an admin who steps up while the new secret and
/// the previous one are both configured still steps up once the previous one
/// is dropped, because that step-up re-sealed the seed under the new secret.
async fn a_totp_seed_used_during_rotation_works_after_the_previous_secret_is_dropped(
    backend: Backend,
) {
    use keyrack::service::hashing::{HashPolicy, ServerSecret};
    use keyrack::service::keyring::Keyring;
    use keyrack::service::{Authority, OldKeyEnd, RollRequest};
    let store = crate::support::open_store(&backend).await;
    let authority = |current: ServerSecret, previous: Vec<ServerSecret>| {
        let keyring = Keyring::new(current, previous, HashPolicy::default()).unwrap();
        Authority::new(store.clone(), keyring, AuthorityOptions::default())
    };
    let opens_under_the_new_secret_alone = |sealed: &str, identity| {
        Keyring::new(server_secret(2, 2), Vec::new(), HashPolicy::default())
            .unwrap()
            .sealer()
            .open(identity, sealed)
            .is_ok()
    };
    let roll = |key_id: &KeyId, code: String| RollRequest {
        key_id: key_id.clone(),
        old_key_end: OldKeyEnd::Now,
        totp_code: keyrack::domain::SecretString::new(code),
        new_key_expire_time: None,
    };
    // Three codes, of the step before, this one and the next, each used once.
    let step = totp_step_with_margin(Duration::from_secs(10)).await;

    let before = authority(server_secret(1, 1), vec![]);
    let (_, operator) = before.create_admin("operator", "").await.unwrap();
    let (_, target) = before.create_admin("target", "").await.unwrap();
    let caller = before
        .authenticate_admin(Some(operator.token.expose()), Default::default())
        .await
        .unwrap();
    let enrollment = before.enroll_totp(&caller).await.unwrap();
    let seed = totp_rs::Secret::Encoded(enrollment.secret.expose().to_owned())
        .to_bytes()
        .unwrap();
    before
        .confirm_totp(&caller, &crate::roll::code_at(&seed, step - 1))
        .await
        .unwrap();
    let stored_seed = || async {
        store
            .get_totp(&caller.identity.id)
            .await
            .unwrap()
            .unwrap()
            .sealed_seed
    };
    assert!(!opens_under_the_new_secret_alone(
        &stored_seed().await,
        &caller.identity.id
    ));

    let during = authority(server_secret(2, 2), vec![server_secret(1, 1)]);
    assert_eq!(
        during.count_under_older_secret().await.unwrap().totp_seeds,
        1
    );
    let rolled = during
        .roll_key(
            &caller,
            roll(&target.key.id, crate::roll::code_at(&seed, step)),
        )
        .await
        .expect("the seed opens under the previous secret");
    assert!(
        opens_under_the_new_secret_alone(&stored_seed().await, &caller.identity.id),
        "the step-up re-sealed the seed under the new secret"
    );
    assert_eq!(
        during.count_under_older_secret().await.unwrap().totp_seeds,
        0
    );

    let after = authority(server_secret(2, 2), vec![]);
    after
        .roll_key(
            &caller,
            roll(&rolled.minted.key.id, crate::roll::code_at(&seed, step + 1)),
        )
        .await
        .expect("the re-sealed seed opens without the previous secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_seed_used_during_rotation_works_after_the_previous_secret_is_dropped_on_redis() {
    a_totp_seed_used_during_rotation_works_after_the_previous_secret_is_dropped(Backend::Redis(
        RedisServer::start(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_seed_used_during_rotation_works_after_the_previous_secret_is_dropped_in_memory() {
    a_totp_seed_used_during_rotation_works_after_the_previous_secret_is_dropped(Backend::Memory)
        .await;
}

/// Finding 6: an If-Match that names no single version is a precondition
/// that fails (412), not an absent one; the write does not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_if_match_garbage_is_412_and_writes_nothing() {
    use axum::http::Method;
    use serde_json::json;
    let server = TestServer::redis().await;
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "ada",
    });
    let admin = server.admin_token.clone();
    let scim_call = |method: Method,
                     path: String,
                     body: Option<serde_json::Value>,
                     if_match: Option<String>| {
        let (server, admin) = (&server, admin.clone());
        async move {
            let extra: Vec<(header::HeaderName, &str)> = if_match
                .as_deref()
                .map(|value| (header::IF_MATCH, value))
                .into_iter()
                .collect();
            let answer = crate::scim::call_as(server, &admin, method, &path, body, &extra).await;
            let etag = answer
                .headers
                .get(header::ETAG)
                .map(|etag| etag.to_str().unwrap().to_owned());
            (answer.status, etag, answer.body)
        }
    };
    let (status, _, created) = scim_call(Method::POST, "/Users".into(), Some(user), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/Users/{}", created["id"].as_str().unwrap());
    let (_, version, _) = scim_call(Method::GET, path.clone(), None, None).await;
    let version = version.unwrap();

    let renamed = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "grace",
    });
    let deactivate = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}],
    });
    let garbage = [
        format!("{version}, W/\"999\""),
        "\"1\", \"2\"".to_owned(),
        "\"not-a-version\"".to_owned(),
        "W/\"-1\"".to_owned(),
    ];
    for if_match in &garbage {
        for (method, body) in [
            (Method::PUT, Some(renamed.clone())),
            (Method::PATCH, Some(deactivate.clone())),
            (Method::DELETE, None),
        ] {
            let (status, _, _) =
                scim_call(method.clone(), path.clone(), body, Some(if_match.clone())).await;
            assert_eq!(
                status,
                StatusCode::PRECONDITION_FAILED,
                "{method} If-Match {if_match}"
            );
        }
    }
    let (status, unchanged, _) = scim_call(Method::GET, path.clone(), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unchanged.unwrap(), version, "nothing was written");
    // The version it carries still works.
    let (status, _, _) = scim_call(Method::DELETE, path, None, Some(version)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.stop().await;
}

/// Rounds of the dataset delete race: enough that the old check-then-write
/// window is hit several times (it was, about one round in three).
const DATASET_RACE_ROUNDS: usize = 40;

/// Finding 7: a grant written while its dataset is deleted must not outlive
/// the dataset, or re-creating a dataset of that name would silently grant it.
/// Each round races UpdateIdentity (granting the dataset) against
/// DeleteDataset; whichever wins, a deleted dataset is held by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_racing_a_dataset_delete_never_outlives_it() {
    use keyrack::service::{IdentityChanges, NewDataset, NewIdentity};
    let server = TestServer::redis().await;
    let authority = server.authority.clone();
    let mut survivors = 0;
    for round in 0..DATASET_RACE_ROUNDS {
        let name = format!("raced_{round}");
        authority
            .create_dataset(NewDataset {
                name: keyrack::domain::names::DatasetName::parse(&name).unwrap(),
                description: String::new(),
                skip_key: true,
            })
            .await
            .unwrap();
        let (holder, _) = authority
            .create_identity(NewIdentity::named(
                keyrack::domain::names::IdentityName::parse_service(&format!("holder_{round}"))
                    .unwrap(),
            ))
            .await
            .unwrap();
        let grant = authority.update_identity(
            &holder.id,
            IdentityChanges {
                datasets: Some(vec![name.clone()]),
                ..IdentityChanges::default()
            },
        );
        let delete = authority.delete_dataset(&name, false);
        let (granted, deleted) = tokio::join!(grant, delete);
        let held = authority.get_identity(&holder.id).await.unwrap().datasets;
        if deleted.is_ok() {
            assert!(
                held.is_empty(),
                "round {round}: dataset deleted but still granted (update answered {granted:?})"
            );
            authority
                .create_dataset(NewDataset {
                    name: keyrack::domain::names::DatasetName::parse(&name).unwrap(),
                    description: String::new(),
                    skip_key: true,
                })
                .await
                .unwrap();
            assert!(
                authority
                    .get_identity(&holder.id)
                    .await
                    .unwrap()
                    .datasets
                    .is_empty(),
                "round {round}: the re-created dataset is granted to nobody"
            );
        } else {
            survivors += 1;
            assert!(
                granted.is_ok(),
                "round {round}: neither the grant nor the delete happened"
            );
            assert_eq!(held, std::slice::from_ref(&name));
        }
    }
    // Both outcomes happen; a test where one side always wins proves little.
    assert!(survivors < DATASET_RACE_ROUNDS, "every delete was refused");
    server.stop().await;
}

/// Rounds of the SCIM delete race, each with the DELETE a little later.
const SCIM_DELETE_RACE_ROUNDS: usize = 40;

/// How much later each round's DELETE starts than the last one's.
const DELETE_LAG_YIELDS: usize = 3;

/// Finding 6: DELETE with If-Match checks the version and deletes in one
/// atomic step. Each round races a PATCH against a DELETE carrying the
/// version read before it: both may not succeed, since a DELETE that comes
/// after the PATCH names a version that is gone (412), and a PATCH that
/// comes after the DELETE finds nobody (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_delete_if_match_never_deletes_a_changed_user() {
    use axum::http::Method;
    use serde_json::json;
    let server = TestServer::redis().await;
    let admin = server.admin_token.clone();
    let rename = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "displayName", "value": "Renamed"}],
    });
    let mut precondition_failures = 0;
    for round in 0..SCIM_DELETE_RACE_ROUNDS {
        let user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("racer{round}"),
        });
        let created =
            crate::scim::call_as(&server, &admin, Method::POST, "/Users", Some(user), &[]).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let path = format!("/Users/{}", created.body["id"].as_str().unwrap());
        let version = created.headers[header::ETAG].to_str().unwrap().to_owned();
        let patch = crate::scim::call_as(
            &server,
            &admin,
            Method::PATCH,
            &path,
            Some(rename.clone()),
            &[],
        );
        // The DELETE starts a little later each round, so that its read
        // and its write fall on either side of the PATCH in some rounds.
        let delete = async {
            for _ in 0..round * DELETE_LAG_YIELDS {
                tokio::task::yield_now().await;
            }
            crate::scim::call_as(
                &server,
                &admin,
                Method::DELETE,
                &path,
                None,
                &[(header::IF_MATCH, version.as_str())],
            )
            .await
        };
        let (patched, deleted) = tokio::join!(patch, delete);
        assert!(
            !(patched.status == StatusCode::OK && deleted.status == StatusCode::NO_CONTENT),
            "round {round}: a user changed after version {version} was deleted under it"
        );
        if deleted.status == StatusCode::PRECONDITION_FAILED {
            precondition_failures += 1;
        }
    }
    assert!(precondition_failures > 0, "the race never happened");
    server.stop().await;
}

/// Finding 2, the gRPC listener: connections that never send the HTTP/2
/// preface are closed after the idle timeout (HTTP/2 keepalive only starts
/// after the preface), and past the connection cap a health check gets in as
/// soon as a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_grpc_connections_are_closed_and_health_gets_through() {
    use tokio::io::AsyncReadExt;
    use tonic_health::pb::health_client::HealthClient;
    const CAP: usize = 4;
    const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
    // Generous for a loaded machine, far below "never".
    const CLOSED_WITHIN: Duration = Duration::from_secs(8);
    let server = TestServer::start_serving(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions::default(),
        ServerOptions {
            max_connections: CAP,
            connection_idle_timeout: IDLE_TIMEOUT,
            http2_keepalive_interval: Duration::from_millis(300),
            ..test_server_options()
        },
    )
    .await;
    let health_check = |address: std::net::SocketAddr| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .ok()?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?;
        Some(answer.into_inner().status())
    };
    eventually(
        "the server reports SERVING",
        Duration::from_secs(10),
        || async { health_check(server.address).await == Some(ServingStatus::Serving) },
    )
    .await;

    // Twice the cap: half take every slot, half wait in the backlog.
    let mut silent = Vec::new();
    for _ in 0..2 * CAP {
        silent.push(
            tokio::net::TcpStream::connect(server.address)
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let answered = tokio::time::timeout(CLOSED_WITHIN, health_check(server.address))
        .await
        .expect("a health check gets a slot once silent connections are closed");
    assert_eq!(answered, Some(ServingStatus::Serving));
    for (index, socket) in silent.iter_mut().enumerate() {
        // The server's SETTINGS frame may come first; then the close.
        let mut sent = Vec::new();
        tokio::time::timeout(CLOSED_WITHIN, socket.read_to_end(&mut sent))
            .await
            .unwrap_or_else(|_| panic!("silent connection {index} still open"))
            .ok();
    }
    assert!(
        started.elapsed() >= IDLE_TIMEOUT / 2,
        "closed too early to be the idle timeout: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

/// A honeytoken's uses are timed as an unknown token's are: the first runs
/// argon2, and every later one is held back as a known-wrong token is, so
/// timing cannot tell a decoy from a token that was never valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_honeytoken_is_held_back_on_reuse_as_an_unknown_token_is() {
    const DELAY: Duration = Duration::from_millis(400);
    let server = TestServer::start_serving(
        Backend::Redis(RedisServer::start()),
        AuthorityOptions {
            guard: GuardOptions {
                refusal_delay: DELAY,
                ..GuardOptions::default()
            },
            ..AuthorityOptions::default()
        },
        test_server_options(),
    )
    .await;
    let owner = server.create_service("payroll").await;
    let honeytoken = server
        .admin()
        .await
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: owner.identity.unwrap().id,
                name: "backup_2019".into(),
                honeytoken: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let unknown = forged_for(&KeyId::generate(&keyrack::domain::IdentityId::generate()));
    for token in [&honeytoken, &unknown] {
        server.verify_code(token).await.unwrap();
        for _ in 0..2 {
            let started = Instant::now();
            assert_eq!(server.verify_code(token).await, Ok(VerifyCode::Unknown));
            assert!(started.elapsed() >= DELAY, "a reuse was answered at once");
        }
    }
    server.stop().await;
}
