//! WatchEvents and honeytokens, through a tonic client: a change shows on
//! the stream within a second; a client that resumes from its last cursor,
//! across a keyrack restart, misses nothing; trimmed cursors are OUT_OF_RANGE;
//! filters and heartbeats; a honeytoken's answer is byte for byte an unknown
//! token's, and its every use is recorded with where it came from.

use crate::on_both_stores;
use crate::support::{Backend, RedisServer, TestServer, authed};
use keyrack::proto::{self, watch_events_response::Payload};
use keyrack::service::AuthorityOptions;
use keyrack::service::events::EventOptions;
use prost::Message as _;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::Streaming;

/// How long a test waits for an event that should come at once.
const PATIENCE: Duration = Duration::from_secs(5);

async fn watch(
    server: &TestServer,
    request: proto::WatchEventsRequest,
) -> Result<Streaming<proto::WatchEventsResponse>, tonic::Status> {
    server
        .admin()
        .await
        .watch_events(authed(&server.admin_token, request))
        .await
        .map(tonic::Response::into_inner)
}

/// The next event on `stream`, skipping heartbeats.
async fn next_event(stream: &mut Streaming<proto::WatchEventsResponse>) -> proto::Event {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an event in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if let Some(Payload::Event(event)) = message.payload {
            return event;
        }
    }
}

/// The action of `event`'s audit record.
fn action(event: &proto::Event) -> &str {
    &event.audit_event.as_ref().expect("an audit record").action
}

async fn revoke(server: &TestServer, key_id: &str) {
    server
        .admin()
        .await
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: key_id.into(),
            },
        ))
        .await
        .expect("revoke");
}

async fn a_revoke_shows_within_a_second(server: TestServer) {
    let service = server.create_service("watched").await;
    let key_id = service.key.unwrap().id;
    let mut stream = watch(&server, proto::WatchEventsRequest::default())
        .await
        .unwrap();
    let revoked_at = Instant::now();
    revoke(&server, &key_id).await;
    let event = next_event(&mut stream).await;
    let took = revoked_at.elapsed();
    assert_eq!(action(&event), "RevokeKey");
    assert_eq!(event.kind(), proto::EventKind::Audit);
    let record = event.audit_event.as_ref().unwrap();
    assert!(record.target_ids.contains(&key_id), "{record:?}");
    assert_eq!(record.id, event.cursor, "the cursor is the event's id");
    assert!(
        took < Duration::from_secs(1),
        "the revoke took {took:?} to show"
    );
    // Shutdown ends open streams rather than waiting out its timeout.
    let stopping = Instant::now();
    server.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "an open watch held shutdown up for {:?}",
        stopping.elapsed()
    );
    assert!(!matches!(stream.message().await, Ok(Some(_))));
}
on_both_stores!(
    a_revoke_shows_within_a_second_on,
    a_revoke_shows_within_a_second
);

/// The ids of every audit event after `cursor` (all of them for an empty
/// one), oldest first.
async fn ids_after(server: &TestServer, cursor: &str) -> Vec<String> {
    let newest_first = crate::audit::all_events(server, Default::default()).await;
    let mut ids: Vec<String> = newest_first
        .into_iter()
        .map(|event| event.id)
        .take_while(|id| id != cursor)
        .collect();
    ids.reverse();
    ids
}

/// A watcher that goes away, while keyrack restarts and changes go on, and
/// comes back with its last cursor gets every event it missed, in order,
/// and then the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_a_restart_misses_nothing() {
    let server = TestServer::start(Backend::Redis(RedisServer::start())).await;
    let mut stream = watch(&server, proto::WatchEventsRequest::default())
        .await
        .unwrap();
    server.create_service("before").await;
    let seen = next_event(&mut stream).await;
    assert_eq!(action(&seen), "CreateIdentity");
    drop(stream);

    // Missed: one change before the restart and two after it.
    let missed = server.create_service("during").await;
    let (backend, admin_token) = server.stop_keeping_backend().await;
    let server = TestServer::resume(backend, admin_token, AuthorityOptions::default()).await;
    revoke(&server, &missed.key.unwrap().id).await;
    server.create_service("after").await;

    let expected = ids_after(&server, &seen.cursor).await;
    assert_eq!(expected.len(), 3, "three changes happened while away");
    let mut stream = watch(
        &server,
        proto::WatchEventsRequest {
            after_cursor: seen.cursor.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut resumed = Vec::new();
    for _ in 0..expected.len() {
        resumed.push(next_event(&mut stream).await);
    }
    let resumed_ids: Vec<String> = resumed.iter().map(|event| event.cursor.clone()).collect();
    assert_eq!(resumed_ids, expected);
    let actions: Vec<&str> = resumed.iter().map(action).collect();
    assert_eq!(actions, ["CreateIdentity", "RevokeKey", "CreateIdentity"]);

    // And it goes on live from there.
    server.create_service("later").await;
    let live = next_event(&mut stream).await;
    assert_eq!(action(&live), "CreateIdentity");
    assert!(
        !live.audit_event.unwrap().target_ids.is_empty(),
        "the new identity is named"
    );
    drop(stream);
    server.stop().await;
}

async fn trimmed_cursors_are_out_of_range(server: TestServer) {
    server.create_service("first").await;
    let first = ids_after(&server, "").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    server.create_service("second").await;
    let all = ids_after(&server, "").await;
    let (oldest_kept, _) = all.last().unwrap().split_once('-').unwrap();
    // Trim everything older than the second change.
    server
        .store
        .trim_audit(keyrack::domain::UnixMillis(oldest_kept.parse().unwrap()))
        .await
        .unwrap();
    let watch_from = |cursor: String| {
        watch(
            &server,
            proto::WatchEventsRequest {
                after_cursor: cursor,
                ..Default::default()
            },
        )
    };
    let status = watch_from(first.last().unwrap().clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // With every event trimmed away the log is empty: a cursor before the
    // newest event ever written missed some, the newest one missed none.
    let newest = ids_after(&server, "").await.last().unwrap().clone();
    server
        .store
        .trim_audit(keyrack::domain::UnixMillis(i64::MAX))
        .await
        .unwrap();
    assert!(ids_after(&server, "").await.is_empty(), "the log is empty");
    let status = watch_from(first.last().unwrap().clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    watch_from(newest)
        .await
        .expect("the newest cursor missed nothing");

    // Bad requests are refused with the field named.
    for (request, field) in [
        (
            proto::WatchEventsRequest {
                after_cursor: "yesterday".into(),
                ..Default::default()
            },
            "after_cursor",
        ),
        (
            proto::WatchEventsRequest {
                kinds: vec![proto::EventKind::Unspecified.into()],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            proto::WatchEventsRequest {
                kinds: vec![proto::EventKind::Audit.into(), 99],
                ..Default::default()
            },
            "kinds[1]",
        ),
        (
            proto::WatchEventsRequest {
                identity_id: "not an id".into(),
                ..Default::default()
            },
            "identity_id",
        ),
    ] {
        let status = watch(&server, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }
    // Only admins watch.
    let stranger = server.create_service("stranger").await;
    let status = server
        .admin()
        .await
        .watch_events(authed(
            &stranger.token,
            proto::WatchEventsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await;
}
on_both_stores!(
    trimmed_cursors_are_out_of_range_on,
    trimmed_cursors_are_out_of_range
);

/// A server whose idle streams beat every 200 ms.
async fn server_with_fast_heartbeats() -> TestServer {
    let options = AuthorityOptions {
        events: EventOptions {
            heartbeat_interval: Duration::from_millis(200),
            ..EventOptions::default()
        },
        ..AuthorityOptions::default()
    };
    TestServer::start_with(
        Backend::Redis(RedisServer::start()),
        options,
        Duration::from_secs(60),
    )
    .await
}

/// A stream lasts only as long as its admin's token would still be
/// accepted: once the key it was opened with is revoked, the stream ends
/// with UNAUTHENTICATED and carries nothing more, not even that revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_admin_is_revoked() {
    let server = server_with_fast_heartbeats().await;
    let second = server
        .create_identity(proto::CreateIdentityRequest {
            name: "second_admin".into(),
            admin: true,
            ..Default::default()
        })
        .await;
    let mut stream = server
        .admin()
        .await
        .watch_events(authed(&second.token, proto::WatchEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    // Live, it sees what happens.
    let watched = server.create_service("watched").await;
    assert_eq!(action(&next_event(&mut stream).await), "CreateIdentity");
    revoke(&server, &second.key.unwrap().id).await;
    revoke(&server, &watched.key.unwrap().id).await;
    let ended = loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the stream ends in time");
        match message {
            Ok(Some(proto::WatchEventsResponse {
                payload: Some(Payload::Heartbeat(_)),
            })) => {}
            Ok(other) => panic!("a revoked admin was sent {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    server.stop().await;
}

/// Filters by identity and kind hold; events that do not pass still move
/// the heartbeat's cursor, and an idle stream keeps beating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_heartbeats() {
    let server = server_with_fast_heartbeats().await;
    let watched = server.create_service("watched").await;
    let other = server.create_service("other").await;
    let watched_identity = watched.identity.unwrap().id;
    let mut stream = watch(
        &server,
        proto::WatchEventsRequest {
            identity_id: watched_identity.clone(),
            kinds: vec![proto::EventKind::Audit.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    revoke(&server, &other.key.unwrap().id).await;
    revoke(&server, &watched.key.unwrap().id).await;
    let event = next_event(&mut stream).await;
    assert_eq!(action(&event), "RevokeKey");
    assert!(
        event.audit_event.as_ref().unwrap().target_ids[0].starts_with(&watched_identity),
        "only the watched identity's revoke passes: {event:?}"
    );
    // Nothing else passes; heartbeats come, and the last one has read past
    // the event.
    let mut beats = 0;
    while beats < 2 {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a heartbeat in time")
            .unwrap()
            .unwrap();
        match message.payload {
            Some(Payload::Heartbeat(beat)) => {
                assert!(beat.time.is_some());
                assert_eq!(beat.cursor, event.cursor);
                beats += 1;
            }
            other => panic!("only heartbeats should follow, got {other:?}"),
        }
    }
    drop(stream);
    server.stop().await;
}

/// A well-formed token of a key that does not exist.
fn unknown_token() -> String {
    let elsewhere = keyrack::domain::KeyId::generate(&keyrack::domain::IdentityId::generate());
    keyrack::domain::token::mint(&Default::default(), &elsewhere)
        .token
        .expose()
        .to_owned()
}

async fn honeytokens_answer_as_unknown_and_are_recorded(server: TestServer) {
    let owner = server.create_service("payroll").await;
    let owner_id = owner.identity.unwrap().id;
    let mut admin = server.admin().await;
    let created = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: owner_id.clone(),
                name: "backup_2019".into(),
                honeytoken: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let decoy = created.key.unwrap();
    assert!(decoy.honeytoken, "admins see it is a decoy");
    assert_eq!(
        created.token.len(),
        owner.token.len(),
        "it looks like any other token"
    );
    let fetched = admin
        .get_key(authed(
            &server.admin_token,
            proto::GetKeyRequest {
                key_id: decoy.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.honeytoken);

    let mut events = watch(
        &server,
        proto::WatchEventsRequest {
            kinds: vec![proto::EventKind::HoneytokenUsed.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let uses_before = keyrack::metrics::metrics().honeytoken_uses.get();
    let mut verifier = server.verifier().await;
    let ask = |token: &str, use_number: usize| {
        let mut request = tonic::Request::new(proto::VerifyRequest {
            token: token.to_owned(),
            client_ip: "203.0.113.7".into(),
            ..Default::default()
        });
        let metadata = request.metadata_mut();
        metadata.insert(
            "x-request-id",
            format!("probe-{use_number}").parse().unwrap(),
        );
        metadata.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        request
    };
    let unknown = verifier
        .verify(ask(&unknown_token(), 0))
        .await
        .unwrap()
        .into_inner();
    // Three uses: the first runs argon2, the later ones hit the guard's
    // caches; none is ever valid, every one is recorded.
    for use_number in 1..=3 {
        let answer = verifier
            .verify(ask(&created.token, use_number))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.code(), proto::VerifyCode::Unknown);
        assert_eq!(
            answer.encode_to_vec(),
            unknown.encode_to_vec(),
            "byte for byte the answer to an unknown token"
        );
        let event = next_event(&mut events).await;
        assert_eq!(event.kind(), proto::EventKind::HoneytokenUsed);
        let record = event.audit_event.unwrap();
        assert_eq!(record.action, "HONEYTOKEN_USED");
        assert_eq!(record.target_ids, [decoy.id.clone(), owner_id.clone()]);
        assert_eq!(record.client_ip, "203.0.113.7");
        assert!(
            record.caller_address.starts_with("127.0.0.1:"),
            "the peer: {record:?}"
        );
        assert_eq!(record.request_id, format!("probe-{use_number}"));
        assert_eq!(record.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    assert!(keyrack::metrics::metrics().honeytoken_uses.get() >= uses_before + 3);

    // As an admin token it is just as unknown, and just as recorded, with
    // the call's peer, request id and trace id.
    let mut as_admin = authed(
        &created.token,
        proto::ListKeysRequest {
            identity_id: owner_id.clone(),
            ..Default::default()
        },
    );
    as_admin
        .metadata_mut()
        .insert("x-request-id", "admin-probe".parse().unwrap());
    as_admin.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let status = admin.list_keys(as_admin).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let record = next_event(&mut events).await.audit_event.unwrap();
    assert_eq!(record.target_ids[0], decoy.id);
    assert!(
        record.caller_address.starts_with("127.0.0.1:"),
        "the peer: {record:?}"
    );
    assert_eq!(record.client_ip, "127.0.0.1");
    assert_eq!(record.request_id, "admin-probe");
    assert_eq!(record.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

    // Rolling a decoy would mint a working twin: refused.
    let status = admin
        .roll_key(authed(
            &server.admin_token,
            proto::RollKeyRequest {
                key_id: decoy.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("honeytoken"));
    // The owner's real key is untouched by all this.
    assert_eq!(
        server.verify_code(&owner.token).await,
        Ok(proto::VerifyCode::Valid)
    );
    drop(events);
    server.stop().await;
}
on_both_stores!(
    honeytokens_answer_as_unknown_and_are_recorded_on,
    honeytokens_answer_as_unknown_and_are_recorded
);
