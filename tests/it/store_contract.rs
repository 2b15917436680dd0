//! The Store contract: one suite, run against the memory store and a real
//! redis-server, so both backends mean the same thing.

use crate::support::{
    Backend, RedisServer, eventually, open_store, service_identity as identity,
    unlimited_key as key,
};
use keyrack::domain::names::{DatasetName, IdentityName};
use keyrack::domain::session::ConsoleSession;
use keyrack::domain::{ApiKey, Identity, IdentityId, KeyEnd, KeyEndKind, KeyId, State, UnixMillis};
use keyrack::store::{Store, StoreError};
use std::time::Duration;

fn soon(millis: i64) -> Option<UnixMillis> {
    Some(UnixMillis(UnixMillis::now().0 + millis))
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = crate::support::Backend::Memory;
                    super::$name(&*crate::support::open_store(&backend).await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = crate::support::Backend::Redis(crate::support::RedisServer::start());
                    super::$name(&*crate::support::open_store(&backend).await).await;
                }
            )*
        }
        mod cluster {
            // One cluster for the whole suite (three redis-servers take a
            // while to form one); each case runs under its own key prefix.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_whole_contract() {
                let cluster = crate::support::RedisCluster::start();
                $(
                    super::$name(&*cluster.open_store(stringify!($name)).await).await;
                )*
            }
        }
    };
}

contract!(
    identities_are_created_found_and_listed,
    identity_updates_check_revisions_and_names,
    deleting_an_identity_removes_its_keys,
    keys_are_unique_by_name_within_an_identity,
    key_updates_check_revisions,
    expired_records_are_gone,
    identity_expiry_caps_its_keys_and_moves_with_it,
    rolling_with_grace_keeps_the_old_key_until_its_deadline,
    rolling_without_grace_removes_the_old_key_at_once,
    a_later_write_cannot_clear_a_grace_period,
    totp_codes_are_accepted_once_and_failures_lock_out,
    totp_state_lives_and_dies_with_its_identity,
    a_totp_seed_is_resealed_only_while_unchanged,
    datasets_are_unique_and_listed_by_name,
    grants_need_a_dataset_that_exists_and_is_not_being_deleted,
    the_audit_log_is_followed_and_shared_by_a_delivery_group,
    console_sessions_end_at_their_deadline_or_on_delete,
    the_deadline_index_follows_every_key_write,
    totp_rules_hold_case_by_case,
    key_grace_and_revision_rules_hold_case_by_case,
    identity_revisions_hold_case_by_case,
    imported_tokens_are_claimed_once_and_noted_for_good,
    the_last_audit_id_outlives_trimming,
);

/// The actions of `events`, in order.
fn actions(events: &[keyrack::domain::AuditEvent]) -> Vec<&str> {
    events.iter().map(|event| event.action.as_str()).collect()
}

async fn the_audit_log_is_followed_and_shared_by_a_delivery_group(store: &dyn Store) {
    let group = "webhooks";
    // The group starts at the log's end when it is first used.
    assert!(
        store
            .take_deliveries(group, "a", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.audit_bounds().await.unwrap(), None);
    for action in ["e1", "e2", "e3"] {
        store
            .append_audit(&keyrack::domain::AuditEvent::new(action, "r"))
            .await
            .unwrap();
    }
    let mut log = store.list_audit(None, 10).await.unwrap();
    log.reverse();
    assert_eq!(actions(&log), ["e1", "e2", "e3"]);
    assert_eq!(
        store.audit_bounds().await.unwrap(),
        Some((log[0].id.clone(), log[2].id.clone()))
    );
    assert_eq!(
        actions(&store.read_audit_after(&log[0].id, 10).await.unwrap()),
        ["e2", "e3"]
    );
    assert!(
        store
            .read_audit_after(&log[2].id, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Each event is taken by one consumer.
    assert_eq!(
        actions(&store.take_deliveries(group, "a", 2).await.unwrap()),
        ["e1", "e2"]
    );
    assert_eq!(
        actions(&store.take_deliveries(group, "b", 10).await.unwrap()),
        ["e3"]
    );
    assert!(
        store
            .take_deliveries(group, "a", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Pending events are claimed only once idle; a touch keeps one held.
    assert!(
        store
            .claim_deliveries(group, "c", Duration::from_secs(3600), 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .touch_deliveries(group, "a", &[&log[0].id])
        .await
        .unwrap();
    let claimed = store
        .claim_deliveries(group, "c", Duration::from_millis(50), 10)
        .await
        .unwrap();
    assert_eq!(actions(&claimed), ["e2", "e3"]);
    assert_eq!(claimed[0].id, log[1].id);

    // Acknowledged events are never handed out again.
    for event in &log {
        store.ack_delivery(group, &event.id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .claim_deliveries(group, "d", Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn identities_are_created_found_and_listed(store: &dyn Store) {
    let alpha = identity("alpha");
    let first = key(&alpha, "default");
    store
        .create_identity(&alpha, std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(
        store.get_identity(&alpha.id).await.unwrap(),
        Some(alpha.clone())
    );
    assert_eq!(
        store.find_identity_by_name("alpha").await.unwrap(),
        Some(alpha.clone())
    );
    assert_eq!(store.find_identity_by_name("nobody").await.unwrap(), None);
    let (found_key, found_identity) = *store.key_with_identity(&first.id).await.unwrap().unwrap();
    assert_eq!((found_key, found_identity), (first.clone(), alpha.clone()));

    let duplicate = identity("alpha");
    assert!(matches!(
        store.create_identity(&duplicate, &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        store.get_identity(&duplicate.id).await.unwrap(),
        None,
        "nothing half-written"
    );

    for index in 0..6 {
        store
            .create_identity(&identity(&format!("svc{index}")), &[])
            .await
            .unwrap();
    }
    let mut seen: Vec<IdentityId> = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_identities(after.as_ref(), 3).await.unwrap();
        seen.extend(page.iter().map(|i| i.id.clone()));
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|i| i.id.clone());
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "listed in id order");
}

async fn identity_updates_check_revisions_and_names(store: &dyn Store) {
    let alpha = identity("alpha");
    let beta = identity("beta");
    store.create_identity(&alpha, &[]).await.unwrap();
    store.create_identity(&beta, &[]).await.unwrap();

    let mut renamed = alpha.clone();
    renamed.name = IdentityName::parse_service("gamma").unwrap();
    let stored = store.update_identity(&renamed).await.unwrap();
    assert_eq!(stored.revision, alpha.revision + 1);
    assert_eq!(
        store
            .find_identity_by_name("gamma")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(alpha.id.clone())
    );
    assert_eq!(store.find_identity_by_name("alpha").await.unwrap(), None);
    // The freed name can be taken again.
    store
        .create_identity(&identity("alpha"), &[])
        .await
        .unwrap();

    // A write based on a stale read loses.
    assert!(matches!(
        store.update_identity(&renamed).await,
        Err(StoreError::Conflict)
    ));
    // A name held by another identity cannot be taken.
    let mut clash = stored.clone();
    clash.name = IdentityName::parse_service("beta").unwrap();
    assert!(matches!(
        store.update_identity(&clash).await,
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        store.get_identity(&alpha.id).await.unwrap().unwrap().name,
        "gamma"
    );
    assert_eq!(
        store
            .find_identity_by_name("beta")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(beta.id.clone())
    );

    let ghost = identity("ghost");
    assert!(matches!(
        store.update_identity(&ghost).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn deleting_an_identity_removes_its_keys(store: &dyn Store) {
    let alpha = identity("alpha");
    let first = key(&alpha, "default");
    store
        .create_identity(&alpha, std::slice::from_ref(&first))
        .await
        .unwrap();
    let second = key(&alpha, "second");
    store.create_key(&second).await.unwrap();
    // A delete pinned to a revision is checked in the same step: the
    // identity changed since, so it stays, keys and all.
    let mut changed = alpha.clone();
    changed.description = "changed".into();
    let changed = store.update_identity(&changed).await.unwrap();
    assert!(matches!(
        store.delete_identity(&alpha.id, Some(alpha.revision)).await,
        Err(StoreError::Conflict)
    ));
    let kept = store.get_identity(&alpha.id).await.unwrap().unwrap();
    assert_eq!(kept.description, "changed");
    assert!(store.get_key(&second.id).await.unwrap().is_some());
    assert!(
        store
            .delete_identity(&alpha.id, Some(changed.revision))
            .await
            .unwrap()
    );
    assert!(!store.delete_identity(&alpha.id, None).await.unwrap());
    store
        .create_identity(&alpha, std::slice::from_ref(&first))
        .await
        .unwrap();
    store.create_key(&second).await.unwrap();
    assert!(store.delete_identity(&alpha.id, None).await.unwrap());
    assert!(!store.delete_identity(&alpha.id, None).await.unwrap());
    assert_eq!(store.get_identity(&alpha.id).await.unwrap(), None);
    assert_eq!(store.get_key(&first.id).await.unwrap(), None);
    assert_eq!(store.get_key(&second.id).await.unwrap(), None);
    assert_eq!(store.key_with_identity(&first.id).await.unwrap(), None);
    assert!(store.list_identities(None, 10).await.unwrap().is_empty());
    // Its name is free again.
    store
        .create_identity(&identity("alpha"), &[])
        .await
        .unwrap();
}

async fn keys_are_unique_by_name_within_an_identity(store: &dyn Store) {
    let alpha = identity("alpha");
    let beta = identity("beta");
    store.create_identity(&alpha, &[]).await.unwrap();
    store.create_identity(&beta, &[]).await.unwrap();
    let one = key(&alpha, "web");
    store.create_key(&one).await.unwrap();
    assert!(matches!(
        store.create_key(&key(&alpha, "web")).await,
        Err(StoreError::NameTaken(_))
    ));
    store.create_key(&key(&beta, "web")).await.unwrap();

    let orphan = key(&identity("ghost"), "web");
    assert!(matches!(
        store.create_key(&orphan).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_key(&orphan.id).await.unwrap(), None);

    for index in 0..4 {
        store
            .create_key(&key(&alpha, &format!("k{index}")))
            .await
            .unwrap();
    }
    let first_page = store.list_keys(&alpha.id, None, 3).await.unwrap();
    let second_page = store
        .list_keys(&alpha.id, first_page.last().map(|k| &k.id), 3)
        .await
        .unwrap();
    assert_eq!((first_page.len(), second_page.len()), (3, 2));
    assert!(first_page.iter().all(|k| k.identity_id == alpha.id));

    assert!(store.delete_key(&one.id).await.unwrap());
    assert!(!store.delete_key(&one.id).await.unwrap());
    store.create_key(&key(&alpha, "web")).await.unwrap();
}

async fn key_updates_check_revisions(store: &dyn Store) {
    let alpha = identity("alpha");
    let one = key(&alpha, "one");
    let two = key(&alpha, "two");
    store
        .create_identity(&alpha, &[one.clone(), two.clone()])
        .await
        .unwrap();
    let mut changed = one.clone();
    changed.state = State::Disabled;
    let stored = store.update_key(&changed).await.unwrap();
    assert_eq!(stored.revision, 1);
    assert_eq!(
        store.get_key(&one.id).await.unwrap().unwrap().state,
        State::Disabled
    );
    assert!(matches!(
        store.update_key(&changed).await,
        Err(StoreError::Conflict)
    ));
    let mut clash = stored.clone();
    clash.name = "two".into();
    assert!(matches!(
        store.update_key(&clash).await,
        Err(StoreError::NameTaken(_))
    ));
    let mut renamed = stored.clone();
    renamed.name = "three".into();
    store.update_key(&renamed).await.unwrap();
    store.create_key(&key(&alpha, "one")).await.unwrap();
}

async fn expired_records_are_gone(store: &dyn Store) {
    let mut short = identity("short");
    short.expire_time = soon(800);
    let short_key = key(&short, "default");
    store
        .create_identity(&short, std::slice::from_ref(&short_key))
        .await
        .unwrap();
    let long = identity("long");
    let mut expiring = key(&long, "expiring");
    expiring.expire_time = soon(800);
    store
        .create_identity(&long, std::slice::from_ref(&expiring))
        .await
        .unwrap();
    assert!(
        store
            .key_with_identity(&short_key.id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .key_with_identity(&expiring.id)
            .await
            .unwrap()
            .is_some()
    );
    eventually("records expire", Duration::from_secs(5), || async {
        store.get_identity(&short.id).await.unwrap().is_none()
            && store.get_key(&short_key.id).await.unwrap().is_none()
            && store.get_key(&expiring.id).await.unwrap().is_none()
    })
    .await;
    assert_eq!(store.key_with_identity(&expiring.id).await.unwrap(), None);
    assert!(store.get_identity(&long.id).await.unwrap().is_some());
    let listed: Vec<_> = store
        .list_identities(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["long"], "the listing drops expired identities");
    assert!(
        store
            .list_keys(&long.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // An expired identity's name is free.
    store
        .create_identity(&identity("short"), &[])
        .await
        .unwrap();
}

async fn identity_expiry_caps_its_keys_and_moves_with_it(store: &dyn Store) {
    let mut alpha = identity("alpha");
    alpha.expire_time = soon(1_000);
    let first = key(&alpha, "default");
    store
        .create_identity(&alpha, std::slice::from_ref(&first))
        .await
        .unwrap();
    // Extending the identity extends what capped its keys.
    let mut extended = alpha.clone();
    extended.expire_time = soon(60_000);
    store.update_identity(&extended).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        store.key_with_identity(&first.id).await.unwrap().is_some(),
        "key outlives the old identity deadline"
    );
}

async fn rolling_with_grace_keeps_the_old_key_until_its_deadline(store: &dyn Store) {
    let alpha = identity("alpha");
    let old = key(&alpha, "web");
    store
        .create_identity(&alpha, std::slice::from_ref(&old))
        .await
        .unwrap();
    let mut replacement = key(&alpha, "web");
    replacement.rolled_from = Some(old.id.clone());
    let mut retiring = old.clone();
    retiring.rolled_to = Some(replacement.id.clone());
    retiring.grace_expire_time = soon(1_000);
    store.roll_key(&retiring, &replacement).await.unwrap();

    let (stored_old, _) = *store.key_with_identity(&old.id).await.unwrap().unwrap();
    assert_eq!(stored_old.rolled_to.as_ref(), Some(&replacement.id));
    assert!(stored_old.in_grace());
    assert!(
        store
            .key_with_identity(&replacement.id)
            .await
            .unwrap()
            .is_some()
    );
    // The name passed to the replacement; rolling the old key again loses.
    assert!(matches!(
        store.create_key(&key(&alpha, "web")).await,
        Err(StoreError::NameTaken(_))
    ));
    assert!(matches!(
        store.roll_key(&stored_old, &key(&alpha, "web")).await,
        Err(StoreError::Conflict)
    ));

    eventually("grace ends", Duration::from_secs(5), || async {
        store.get_key(&old.id).await.unwrap().is_none()
    })
    .await;
    assert!(store.get_key(&replacement.id).await.unwrap().is_some());
}

async fn rolling_without_grace_removes_the_old_key_at_once(store: &dyn Store) {
    let alpha = identity("alpha");
    let old = key(&alpha, "web");
    store
        .create_identity(&alpha, std::slice::from_ref(&old))
        .await
        .unwrap();
    let replacement = key(&alpha, "web");
    let mut retiring = old.clone();
    retiring.rolled_to = Some(replacement.id.clone());
    store.roll_key(&retiring, &replacement).await.unwrap();
    assert_eq!(store.get_key(&old.id).await.unwrap(), None);
    let listed: Vec<_> = store
        .list_keys(&alpha.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&replacement.id));
    // A roll based on a stale read of the old key loses.
    assert!(matches!(
        store.roll_key(&retiring, &key(&alpha, "x")).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_later_write_cannot_clear_a_grace_period(store: &dyn Store) {
    let alpha = identity("alpha");
    let old = key(&alpha, "web");
    store
        .create_identity(&alpha, std::slice::from_ref(&old))
        .await
        .unwrap();
    let replacement = key(&alpha, "web");
    let mut retiring = old.clone();
    retiring.rolled_to = Some(replacement.id.clone());
    retiring.grace_expire_time = soon(1_000);
    store.roll_key(&retiring, &replacement).await.unwrap();
    // An edit of the old key, and an edit of its identity, both rewrite records.
    let mut edited = store.get_key(&old.id).await.unwrap().unwrap();
    edited.description = "edited during grace".into();
    store.update_key(&edited).await.unwrap();
    let mut identity_edit = store.get_identity(&alpha.id).await.unwrap().unwrap();
    identity_edit.description = "edited".into();
    store.update_identity(&identity_edit).await.unwrap();
    eventually("grace still ends", Duration::from_secs(5), || async {
        store.get_key(&old.id).await.unwrap().is_none()
    })
    .await;
}

/// Under Redis, the records of one identity share a hash tag and a listing
/// entry whose record expired is repaired on read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_layout_shares_hash_tags_and_repairs_the_listing() {
    let server = RedisServer::start();
    let backend = Backend::Redis(server);
    let store = open_store(&backend).await;
    let mut alpha = identity("alpha");
    alpha.expire_time = soon(500);
    let first = key(&alpha, "default");
    store
        .create_identity(&alpha, std::slice::from_ref(&first))
        .await
        .unwrap();
    let tag = format!("{{{}}}", alpha.id);
    let dump = backend.redis().dump();
    let tagged: Vec<_> = dump
        .iter()
        .filter(|(k, _)| k.contains(&tag))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        tagged.len(),
        4,
        "identity, key, key index and key names: {tagged:?}"
    );
    let mut connection = backend.redis().connection();
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(crate::support::keyspace().key(&first.id))
        .query(&mut connection)
        .unwrap();
    assert!(ttl > 0 && ttl <= 500, "native TTL on the key record: {ttl}");
    eventually(
        "identity expires natively",
        Duration::from_secs(5),
        || async { store.get_identity(&alpha.id).await.unwrap().is_none() },
    )
    .await;
    assert!(store.list_identities(None, 10).await.unwrap().is_empty());
    let listed: Vec<String> = ::redis::cmd("ZRANGE")
        .arg("keyrack:identities")
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert!(
        listed.is_empty(),
        "stale listing entry repaired: {listed:?}"
    );
}

async fn totp_codes_are_accepted_once_and_failures_lock_out(store: &dyn Store) {
    use keyrack::domain::totp::{StepOutcome, TotpRecord};
    let admin = identity("admin");
    store.create_identity(&admin, &[]).await.unwrap();
    let now = UnixMillis::now();
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 10, true, now)
            .await
            .unwrap(),
        StepOutcome::NotEnrolled
    );
    store
        .enroll_totp(&admin.id, &TotpRecord::enrolled("1.sealed".into()))
        .await
        .unwrap();
    // Unconfirmed: only a confirming call may use it.
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 10, false, now)
            .await
            .unwrap(),
        StepOutcome::NotEnrolled
    );
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 10, true, now)
            .await
            .unwrap(),
        StepOutcome::Accepted
    );
    let record = store.get_totp(&admin.id).await.unwrap().unwrap();
    assert!(record.confirmed && record.last_step == 10);
    // A code of the same or an earlier step is a replay; a later one is fine.
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 10, false, now)
            .await
            .unwrap(),
        StepOutcome::Replayed
    );
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 9, false, now)
            .await
            .unwrap(),
        StepOutcome::Replayed
    );
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 11, false, now)
            .await
            .unwrap(),
        StepOutcome::Accepted
    );
    // A confirmed authenticator cannot be replaced.
    assert!(matches!(
        store
            .enroll_totp(&admin.id, &TotpRecord::enrolled("1.other".into()))
            .await,
        Err(StoreError::Conflict)
    ));

    // The failures come from a replica whose clock runs an hour behind: the
    // lockout still starts from the store's clock.
    let lockout = Duration::from_secs(1);
    let behind = UnixMillis(now.0 - 3_600_000);
    for _ in 0..4 {
        assert_eq!(
            store
                .record_totp_failure(&admin.id, behind, 5, lockout)
                .await
                .unwrap(),
            None
        );
    }
    let until = store
        .record_totp_failure(&admin.id, behind, 5, lockout)
        .await
        .unwrap()
        .expect("fifth failure locks");
    assert!(
        until >= now.plus(lockout),
        "{until:?} starts from the store's clock"
    );
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 12, false, now)
            .await
            .unwrap(),
        StepOutcome::Locked(until)
    );
    // A replica whose clock runs a day ahead cannot end the lockout early.
    let ahead = UnixMillis(now.0 + 86_400_000);
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 12, false, ahead)
            .await
            .unwrap(),
        StepOutcome::Locked(until)
    );
    // After the lockout the right code works again, and resets the count.
    crate::support::eventually("the lockout ends", Duration::from_secs(10), || async {
        UnixMillis::now() > until
    })
    .await;
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 12, false, UnixMillis::now())
            .await
            .unwrap(),
        StepOutcome::Accepted
    );
    assert_eq!(
        store.get_totp(&admin.id).await.unwrap().unwrap().failures,
        0
    );
}

async fn totp_state_lives_and_dies_with_its_identity(store: &dyn Store) {
    use keyrack::domain::totp::TotpRecord;
    let ghost = identity("ghost");
    assert!(matches!(
        store
            .enroll_totp(&ghost.id, &TotpRecord::enrolled("1.x".into()))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let admin = identity("admin");
    store.create_identity(&admin, &[]).await.unwrap();
    store
        .enroll_totp(&admin.id, &TotpRecord::enrolled("1.x".into()))
        .await
        .unwrap();
    // An unconfirmed enrollment may be restarted.
    store
        .enroll_totp(&admin.id, &TotpRecord::enrolled("1.y".into()))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_totp(&admin.id)
            .await
            .unwrap()
            .unwrap()
            .sealed_seed,
        "1.y"
    );
    assert!(store.delete_identity(&admin.id, None).await.unwrap());
    assert_eq!(store.get_totp(&admin.id).await.unwrap(), None);

    let mut brief = identity("brief");
    brief.expire_time = soon(600);
    store.create_identity(&brief, &[]).await.unwrap();
    store
        .enroll_totp(&brief.id, &TotpRecord::enrolled("1.z".into()))
        .await
        .unwrap();
    eventually(
        "authenticator expires with its identity",
        Duration::from_secs(5),
        || async { store.get_totp(&brief.id).await.unwrap().is_none() },
    )
    .await;
}

async fn a_totp_seed_is_resealed_only_while_unchanged(store: &dyn Store) {
    use keyrack::domain::totp::{StepOutcome, TotpRecord};
    let ghost = identity("ghost");
    assert!(
        !store
            .reseal_totp_seed(&ghost.id, "1.old", "2.new")
            .await
            .unwrap()
    );
    let mut admin = identity("admin");
    admin.expire_time = soon(1_500);
    store.create_identity(&admin, &[]).await.unwrap();
    store
        .enroll_totp(&admin.id, &TotpRecord::enrolled("1.old".into()))
        .await
        .unwrap();
    assert_eq!(
        store
            .accept_totp_step(&admin.id, 10, true, UnixMillis::now())
            .await
            .unwrap(),
        StepOutcome::Accepted
    );
    // Another seed was read: the stored one is not replaced.
    assert!(
        !store
            .reseal_totp_seed(&admin.id, "1.other", "2.new")
            .await
            .unwrap()
    );
    assert!(
        store
            .reseal_totp_seed(&admin.id, "1.old", "2.new")
            .await
            .unwrap()
    );
    let record = store.get_totp(&admin.id).await.unwrap().unwrap();
    assert_eq!(record.sealed_seed, "2.new");
    assert!(
        record.confirmed && record.last_step == 10,
        "only the seed moved"
    );
    // A second replica that read the same old seed loses.
    assert!(
        !store
            .reseal_totp_seed(&admin.id, "1.old", "2.newer")
            .await
            .unwrap()
    );
    eventually(
        "a re-sealed authenticator still expires with its identity",
        Duration::from_secs(5),
        || async { store.get_totp(&admin.id).await.unwrap().is_none() },
    )
    .await;
}

async fn datasets_are_unique_and_listed_by_name(store: &dyn Store) {
    use keyrack::domain::Dataset;
    let dataset = |name: &str| Dataset {
        name: DatasetName::parse(name).unwrap(),
        description: String::new(),
        create_time: UnixMillis::now(),
    };
    for name in ["sales", "audit", "metrics", "billing"] {
        store.create_dataset(&dataset(name)).await.unwrap();
    }
    assert!(matches!(
        store.create_dataset(&dataset("sales")).await,
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        store.get_dataset("sales").await.unwrap().unwrap().name,
        "sales"
    );
    assert_eq!(store.get_dataset("nothing").await.unwrap(), None);
    let first: Vec<_> = store
        .list_datasets(None, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(first, ["audit", "billing", "metrics"]);
    let rest: Vec<_> = store
        .list_datasets(Some("metrics"), 3)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(rest, ["sales"]);
    assert!(store.delete_dataset("audit").await.unwrap());
    assert!(!store.delete_dataset("audit").await.unwrap());
    let names: Vec<_> = store
        .list_datasets(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["billing", "metrics", "sales"]);
    store.create_dataset(&dataset("audit")).await.unwrap();
}

async fn console_sessions_end_at_their_deadline_or_on_delete(store: &dyn Store) {
    let admin = identity("console_admin");
    let admin_key = key(&admin, "default");
    let now = UnixMillis::now();
    let long = ConsoleSession {
        identity_id: admin.id.clone(),
        key_id: admin_key.id.clone(),
        create_time: now,
        expire_time: UnixMillis(now.0 + 60_000),
    };
    store.create_session("handle-long", &long).await.unwrap();
    assert_eq!(
        store.get_session("handle-long").await.unwrap(),
        Some(long.clone())
    );
    assert_eq!(store.get_session("handle-unknown").await.unwrap(), None);
    let short = ConsoleSession {
        expire_time: soon(800).unwrap(),
        ..long.clone()
    };
    store.create_session("handle-short", &short).await.unwrap();
    assert!(store.get_session("handle-short").await.unwrap().is_some());
    eventually("the short session ends", Duration::from_secs(5), || async {
        store.get_session("handle-short").await.unwrap().is_none()
    })
    .await;
    assert!(store.delete_session("handle-long").await.unwrap());
    assert!(!store.delete_session("handle-long").await.unwrap());
    assert_eq!(store.get_session("handle-long").await.unwrap(), None);
}

/// The check that a granted dataset exists is part of the identity write
/// itself, and DeleteDataset's mark stops new grants: a grant can neither name
/// a dataset deleted after a caller looked nor appear while a delete scans
/// for grants, so a dataset re-created under the same name grants nothing.
async fn grants_need_a_dataset_that_exists_and_is_not_being_deleted(store: &dyn Store) {
    use keyrack::domain::Dataset;
    let dataset = |name: &str| Dataset {
        name: DatasetName::parse(name).unwrap(),
        description: String::new(),
        create_time: UnixMillis::now(),
    };
    let refused = |outcome: Result<(), StoreError>, name: &str| match outcome {
        Err(StoreError::DatasetUnavailable(refused)) => assert_eq!(refused, name),
        other => panic!("expected {name:?} refused, got {other:?}"),
    };
    store.create_dataset(&dataset("held")).await.unwrap();
    store.create_dataset(&dataset("doomed")).await.unwrap();

    // Deleted between a caller's check and its write: the write is refused,
    // and leaves nothing behind.
    let mut orphan = identity("orphan");
    orphan.datasets = vec!["held".into(), "gone".into()];
    refused(store.create_identity(&orphan, &[]).await, "gone");
    assert_eq!(store.get_identity(&orphan.id).await.unwrap(), None);
    assert_eq!(store.find_identity_by_name("orphan").await.unwrap(), None);

    let mut granted = identity("granted");
    granted.datasets = vec!["held".into()];
    store.create_identity(&granted, &[]).await.unwrap();

    // Marked for deletion: no new grant, on create or update.
    assert!(store.begin_dataset_delete("doomed").await.unwrap());
    assert!(!store.begin_dataset_delete("never").await.unwrap());
    let mut late = identity("late");
    late.datasets = vec!["doomed".into()];
    refused(store.create_identity(&late, &[]).await, "doomed");
    let mut widened = granted.clone();
    widened.datasets.push("doomed".into());
    refused(store.update_identity(&widened).await.map(drop), "doomed");
    // (Under Cluster the grant was written and taken back: same datasets,
    // a later revision.)
    let granted = store.get_identity(&granted.id).await.unwrap().unwrap();
    assert_eq!(
        granted.datasets,
        ["held"],
        "a refused update leaves the identity's grants as they were"
    );

    // A grant the identity already holds does not stop other edits while
    // its dataset is being deleted.
    assert!(store.begin_dataset_delete("held").await.unwrap());
    let mut renamed = granted.clone();
    renamed.description = "still held".into();
    let granted = store.update_identity(&renamed).await.unwrap();
    store.cancel_dataset_delete("held").await.unwrap();

    // A refused delete lifts its mark; a completed one takes it with the
    // record, so a dataset created again under the name is grantable.
    store.cancel_dataset_delete("doomed").await.unwrap();
    let mut widened = granted.clone();
    widened.datasets.push("doomed".into());
    let granted = store.update_identity(&widened).await.unwrap();
    assert_eq!(granted.datasets, ["held", "doomed"]);

    assert!(store.begin_dataset_delete("held").await.unwrap());
    assert!(store.delete_dataset("held").await.unwrap());
    let mut regranted = identity("regranted");
    regranted.datasets = vec!["held".into()];
    refused(store.create_identity(&regranted, &[]).await, "held");
    store.create_dataset(&dataset("held")).await.unwrap();
    store.create_identity(&regranted, &[]).await.unwrap();
}

/// The deadline index entries of `identity`'s keys, as (kind, key, end).
async fn key_ends_of(
    store: &dyn Store,
    identity: &Identity,
) -> Vec<(KeyEndKind, KeyId, UnixMillis)> {
    let mut ends: Vec<_> = store
        .key_ends_between(UnixMillis(0), UnixMillis(i64::MAX), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|end| end.key_id.identity_id() == identity.id)
        .map(|end| (end.kind, end.key_id, end.at))
        .collect();
    ends.sort();
    ends
}

async fn the_deadline_index_follows_every_key_write(store: &dyn Store) {
    let mut alpha = identity("alpha");
    let mut expiring = key(&alpha, "expiring");
    expiring.expire_time = soon(600_000);
    let lasting = key(&alpha, "lasting");
    store
        .create_identity(&alpha, &[expiring.clone(), lasting.clone()])
        .await
        .unwrap();
    assert_eq!(
        key_ends_of(store, &alpha).await,
        [(
            KeyEndKind::Expired,
            expiring.id.clone(),
            expiring.expire_time.unwrap()
        )],
        "only a key with a deadline has an end"
    );

    // The identity's expiry caps every key's end.
    alpha.expire_time = soon(300_000);
    let alpha = store.update_identity(&alpha).await.unwrap();
    let capped = alpha.expire_time.unwrap();
    let mut expected = vec![
        (KeyEndKind::Expired, expiring.id.clone(), capped),
        (KeyEndKind::Expired, lasting.id.clone(), capped),
    ];
    expected.sort();
    assert_eq!(key_ends_of(store, &alpha).await, expected);

    // A roll with grace: the old key's end is its grace's; the replacement
    // ends with its identity.
    let mut replacement = key(&alpha, "expiring");
    replacement.rolled_from = Some(expiring.id.clone());
    let mut retiring = store.get_key(&expiring.id).await.unwrap().unwrap();
    retiring.rolled_to = Some(replacement.id.clone());
    retiring.grace_expire_time = soon(100_000);
    store.roll_key(&retiring, &replacement).await.unwrap();
    let grace_end = KeyEnd {
        key_id: expiring.id.clone(),
        kind: KeyEndKind::GraceEnded,
        at: retiring.grace_expire_time.unwrap(),
    };
    // Deleting a live key removes its end.
    assert!(store.delete_key(&lasting.id).await.unwrap());
    let mut expected = vec![
        (grace_end.kind, grace_end.key_id.clone(), grace_end.at),
        (KeyEndKind::Expired, replacement.id.clone(), capped),
    ];
    expected.sort();
    assert_eq!(key_ends_of(store, &alpha).await, expected);

    // An end is claimed once, and only as the index holds it.
    let before = store.list_audit(None, 1000).await.unwrap().len();
    let event = keyrack::domain::expiry::end_event(&grace_end);
    let stale = KeyEnd {
        at: UnixMillis(grace_end.at.0 + 1),
        ..grace_end.clone()
    };
    assert!(!store.record_key_end(&stale, &event).await.unwrap());
    assert!(store.record_key_end(&grace_end, &event).await.unwrap());
    assert!(!store.record_key_end(&grace_end, &event).await.unwrap());
    let logged = store.list_audit(None, 1000).await.unwrap();
    assert_eq!(logged.len(), before + 1);
    assert_eq!(logged[0].action, "GRACE_ENDED");

    // A warning is sent once per end and lead time.
    let replacement_end = KeyEnd {
        key_id: replacement.id.clone(),
        kind: KeyEndKind::Expired,
        at: capped,
    };
    let day = Duration::from_secs(86_400);
    let hour = Duration::from_secs(3_600);
    let warning = keyrack::domain::expiry::warning_event(&replacement_end, day);
    assert!(
        store
            .record_expiry_warning(&replacement_end, day, &warning)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_expiry_warning(&replacement_end, day, &warning)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_expiry_warning(&replacement_end, hour, &warning)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_expiry_warning(&stale, hour, &warning)
            .await
            .unwrap(),
        "no warning for an end the index does not hold"
    );

    // The sweep's lease is taken once per interval.
    assert!(
        store
            .claim_expiry_sweep("one", Duration::from_secs(3_600))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_expiry_sweep("two", Duration::from_secs(3_600))
            .await
            .unwrap()
    );

    // Deleting the identity removes its keys' ends.
    assert!(store.delete_identity(&alpha.id, None).await.unwrap());
    assert!(key_ends_of(store, &alpha).await.is_empty());
}

/// Under Redis Cluster each identity keeps its deadline index in its own
/// slot, and the expiry task reads every listed identity's: an identity is
/// listed by its first change, and leaves the list once it is gone and its
/// index is empty, when no write can index a key of it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_deadline_indexes_are_per_identity_and_listed_until_gone() {
    let cluster = crate::support::RedisCluster::start();
    let store = cluster.open_store("ends").await;
    let listed = |cluster: &crate::support::RedisCluster| {
        let name = "ends:key-end-identities";
        let url = &cluster.urls()[cluster.node_of(name)];
        let mut connection = ::redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        ::redis::cmd("ZRANGE")
            .arg(name)
            .arg(0)
            .arg(-1)
            .query::<Vec<String>>(&mut connection)
            .unwrap()
    };
    let mut ends = Vec::new();
    let mut identities = Vec::new();
    for n in 0..6 {
        let alpha = identity(&format!("ending_{n}"));
        let mut expiring = key(&alpha, "expiring");
        expiring.expire_time = soon(600_000 + n);
        store
            .create_identity(&alpha, std::slice::from_ref(&expiring))
            .await
            .unwrap();
        ends.push((expiring.id.clone(), expiring.expire_time.unwrap()));
        identities.push(alpha);
    }
    let mut expected: Vec<String> = identities.iter().map(|i| i.id.to_string()).collect();
    expected.sort();
    assert_eq!(listed(&cluster), expected);

    // Every shard's entries, merged earliest first, and cut at the limit.
    let read = store
        .key_ends_between(UnixMillis(0), UnixMillis(i64::MAX), 4)
        .await
        .unwrap();
    let read: Vec<_> = read.into_iter().map(|end| (end.key_id, end.at)).collect();
    assert_eq!(read, ends[..4]);

    // A deleted identity's index is emptied with its keys, and the next read
    // drops it from the list; the others stay.
    let gone = identities.remove(0);
    assert!(store.delete_identity(&gone.id, None).await.unwrap());
    let read = store
        .key_ends_between(UnixMillis(0), UnixMillis(i64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 5);
    expected.retain(|id| *id != gone.id.to_string());
    assert_eq!(listed(&cluster), expected);
}

// ---------------------------------------------------------------------------
// The rules with one home in domain/ and one mirror in Lua, as tables of
// cases. Each case runs on the store under test and, step by step, on the
// domain function itself (the memory store calls it; the Redis scripts mirror
// it): both must give the case's expected outcome, so the two copies cannot
// drift apart without a case failing on one backend.

/// One step of a TOTP case.
#[derive(Clone, Copy, Debug)]
enum TotpStep {
    /// A fresh, unconfirmed authenticator.
    Enroll,
    /// A code of this time step, confirming or not, and what it must give.
    Accept(u64, bool, TotpExpect),
    /// A wrong code, and whether it must start a lockout.
    Fail(bool),
}

/// What a code must give (a lockout's end depends on the clock).
#[derive(Clone, Copy, Debug, PartialEq)]
enum TotpExpect {
    Accepted,
    Replayed,
    Locked,
    NotEnrolled,
}

fn totp_expect(outcome: keyrack::domain::totp::StepOutcome) -> TotpExpect {
    use keyrack::domain::totp::StepOutcome;
    match outcome {
        StepOutcome::Accepted => TotpExpect::Accepted,
        StepOutcome::Replayed => TotpExpect::Replayed,
        StepOutcome::Locked(_) => TotpExpect::Locked,
        StepOutcome::NotEnrolled => TotpExpect::NotEnrolled,
    }
}

const TOTP_CASES: &[(&str, &[TotpStep])] = {
    use TotpExpect::*;
    use TotpStep::*;
    &[
        (
            "a code is accepted once, and an unconfirmed authenticator only to confirm it",
            &[
                Accept(10, true, NotEnrolled),
                Enroll,
                Accept(10, false, NotEnrolled),
                Accept(10, true, Accepted),
                Accept(10, false, Replayed),
                Accept(9, false, Replayed),
                Accept(11, false, Accepted),
                Accept(11, true, Replayed),
            ],
        ),
        (
            "the fifth wrong code in a row locks out even a code never used",
            &[
                Enroll,
                Accept(5, true, Accepted),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(true),
                Accept(6, false, Locked),
                Accept(5, false, Locked),
            ],
        ),
        (
            "an accepted code starts the count of wrong ones again",
            &[
                Enroll,
                Accept(5, true, Accepted),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(false),
                Accept(6, false, Accepted),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(true),
            ],
        ),
        (
            "a replayed code changes nothing: the count goes on",
            &[
                Enroll,
                Accept(5, true, Accepted),
                Fail(false),
                Fail(false),
                Fail(false),
                Fail(false),
                Accept(5, false, Replayed),
                Fail(true),
            ],
        ),
    ]
};

async fn totp_rules_hold_case_by_case(store: &dyn Store) {
    use keyrack::domain::totp::{self, TotpRecord};
    let lockout = Duration::from_secs(600);
    for (index, (case, steps)) in TOTP_CASES.iter().enumerate() {
        let admin = identity(&format!("totp_case_{index}"));
        store.create_identity(&admin, &[]).await.unwrap();
        let mut model: Option<TotpRecord> = None;
        for (at, step) in steps.iter().enumerate() {
            let now = UnixMillis::now();
            let context = format!("{case}: step {at} ({step:?})");
            match *step {
                TotpStep::Enroll => {
                    let record = TotpRecord::enrolled("1.sealed".into());
                    store.enroll_totp(&admin.id, &record).await.unwrap();
                    model = Some(record);
                }
                TotpStep::Accept(step, confirm, expected) => {
                    let stored = totp_expect(
                        store
                            .accept_totp_step(&admin.id, step, confirm, now)
                            .await
                            .unwrap(),
                    );
                    let modelled = model.as_mut().map_or(TotpExpect::NotEnrolled, |record| {
                        totp_expect(record.accept_step(step, confirm, now))
                    });
                    assert_eq!(stored, expected, "store, {context}");
                    assert_eq!(modelled, expected, "domain, {context}");
                }
                TotpStep::Fail(locks) => {
                    let stored = store
                        .record_totp_failure(&admin.id, now, totp::MAX_FAILURES, lockout)
                        .await
                        .unwrap();
                    let modelled = model
                        .as_mut()
                        .and_then(|record| record.record_failure(now, totp::MAX_FAILURES, lockout));
                    assert_eq!(stored.is_some(), locks, "store, {context}");
                    assert_eq!(modelled.is_some(), locks, "domain, {context}");
                }
            }
            if let Some(record) = &model {
                let stored = store.get_totp(&admin.id).await.unwrap().unwrap();
                assert_eq!(
                    (stored.confirmed, stored.last_step, stored.failures),
                    (record.confirmed, record.last_step, record.failures),
                    "stored state, {context}"
                );
                assert_eq!(
                    stored.locked_until.is_some(),
                    record.locked_until.is_some(),
                    "lockout, {context}"
                );
            }
        }
    }
}

/// One step of a key case: a write based on the key as last written
/// (`Current`) or on the read before that (`Stale`).
#[derive(Clone, Copy, Debug)]
enum KeyStep {
    /// An edit of the description.
    Edit(Read, KeyExpect),
    /// An edit that also sets a grace deadline.
    EditGrace(Read, KeyExpect),
    /// An edit that also names a successor.
    EditRolledTo(Read, KeyExpect),
    /// An edit that clears the grace deadline a roll set.
    ClearGrace(Read, KeyExpect),
    /// A roll, keeping the old key for a grace period or not.
    Roll(Read, bool, KeyExpect),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Read {
    Current,
    Stale,
}

/// What a key write must give: written at a revision (and kept or not, for
/// a roll), or refused.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyExpect {
    Written(u64),
    Removed,
    Conflict,
}

const KEY_CASES: &[(&str, &[KeyStep])] = {
    use KeyExpect::*;
    use KeyStep::*;
    use Read::*;
    &[
        (
            "an edit lands only on the revision it read, at the next one",
            &[
                Edit(Current, Written(1)),
                Edit(Stale, Conflict),
                Edit(Current, Written(2)),
            ],
        ),
        (
            "an edit may not set the grace fields only a roll sets",
            &[
                EditGrace(Current, Conflict),
                EditRolledTo(Current, Conflict),
                Edit(Current, Written(1)),
            ],
        ),
        (
            "a roll with grace keeps the key at the next revision, and its grace fields never change",
            &[
                Roll(Current, true, Written(1)),
                Edit(Current, Written(2)),
                ClearGrace(Current, Conflict),
                EditGrace(Current, Conflict),
                Roll(Current, true, Conflict),
                Edit(Current, Written(3)),
            ],
        ),
        (
            "a roll without grace removes the key",
            &[Edit(Current, Written(1)), Roll(Current, false, Removed)],
        ),
        (
            "a roll based on a stale read is refused",
            &[
                Edit(Current, Written(1)),
                Roll(Stale, true, Conflict),
                Roll(Current, true, Written(2)),
            ],
        ),
    ]
};

async fn key_grace_and_revision_rules_hold_case_by_case(store: &dyn Store) {
    for (index, (case, steps)) in KEY_CASES.iter().enumerate() {
        let owner = identity(&format!("key_case_{index}"));
        let first = key(&owner, "web");
        store
            .create_identity(&owner, std::slice::from_ref(&first))
            .await
            .unwrap();
        // The key as last written, and as read before that.
        let mut current = first.clone();
        let mut stale = first.clone();
        for (at, step) in steps.iter().enumerate() {
            let context = format!("{case}: step {at} ({step:?})");
            let base = |read: Read| match read {
                Read::Current => current.clone(),
                Read::Stale => stale.clone(),
            };
            let (stored, modelled, expected, written) = match *step {
                KeyStep::Edit(read, expected)
                | KeyStep::EditGrace(read, expected)
                | KeyStep::EditRolledTo(read, expected)
                | KeyStep::ClearGrace(read, expected) => {
                    let mut edit = base(read);
                    edit.description = format!("step {at}");
                    match *step {
                        // A deadline other than any the key has.
                        KeyStep::EditGrace(..) => {
                            edit.grace_expire_time = Some(edit.grace_expire_time.map_or_else(
                                || UnixMillis(UnixMillis::now().0 + 60_000),
                                |deadline| UnixMillis(deadline.0 + 1_000),
                            ));
                        }
                        KeyStep::EditRolledTo(..) => {
                            edit.rolled_to = Some(KeyId::generate(&owner.id));
                        }
                        KeyStep::ClearGrace(..) => edit.grace_expire_time = None,
                        _ => {}
                    }
                    let outcome = |result: Result<ApiKey, bool>| match result {
                        Ok(written) => (KeyExpect::Written(written.revision), Some(written)),
                        Err(_) => (KeyExpect::Conflict, None),
                    };
                    let (stored, written) = outcome(match store.update_key(&edit).await {
                        Ok(written) => Ok(written),
                        Err(StoreError::Conflict) => Err(true),
                        Err(other) => panic!("{context}: {other}"),
                    });
                    let (modelled, _) = outcome(current.edited(&edit).map_err(|_| true));
                    (stored, modelled, expected, written)
                }
                KeyStep::Roll(read, grace, expected) => {
                    let replacement = key(&owner, "web");
                    let mut retiring = base(read);
                    retiring.rolled_to = Some(replacement.id.clone());
                    retiring.grace_expire_time = grace.then(|| soon(60_000)).flatten();
                    let outcome = |result: Result<Option<ApiKey>, bool>| match result {
                        Ok(Some(kept)) => (KeyExpect::Written(kept.revision), Some(kept)),
                        Ok(None) => (KeyExpect::Removed, None),
                        Err(_) => (KeyExpect::Conflict, None),
                    };
                    let (stored, written) =
                        outcome(match store.roll_key(&retiring, &replacement).await {
                            Ok(kept) => Ok(kept),
                            Err(StoreError::Conflict) => Err(true),
                            Err(other) => panic!("{context}: {other}"),
                        });
                    let (modelled, _) = outcome(current.rolled(&retiring).map_err(|_| true));
                    (stored, modelled, expected, written)
                }
            };
            assert_eq!(stored, expected, "store, {context}");
            assert_eq!(modelled, expected, "domain, {context}");
            // What the store said it wrote is what it holds.
            let held = store.get_key(&first.id).await.unwrap();
            match (&written, expected) {
                (Some(written), _) => {
                    let held = held.expect("the written key is held");
                    assert_eq!(held.revision, written.revision, "held, {context}");
                    assert_eq!(held.grace_expire_time, written.grace_expire_time);
                    stale = std::mem::replace(&mut current, held);
                }
                (None, KeyExpect::Removed) => assert!(held.is_none(), "removed, {context}"),
                (None, _) => {
                    let held = held.expect("a refused write leaves the key");
                    assert_eq!(held.revision, current.revision, "unchanged, {context}");
                }
            }
        }
    }
}

async fn identity_revisions_hold_case_by_case(store: &dyn Store) {
    // (read the current revision?, expected revision written or None for
    // a conflict), in order on one identity.
    let cases: &[(bool, Option<u64>)] = &[
        (true, Some(1)),
        (false, None),
        (true, Some(2)),
        (true, Some(3)),
        (false, None),
    ];
    let alpha = identity("revisions");
    store.create_identity(&alpha, &[]).await.unwrap();
    let mut current = alpha.clone();
    let mut stale = alpha.clone();
    for (at, (fresh, expected)) in cases.iter().enumerate() {
        let mut update = if *fresh {
            current.clone()
        } else {
            stale.clone()
        };
        update.description = format!("step {at}");
        let modelled = current
            .updated(&update)
            .ok()
            .map(|written| written.revision);
        let stored = match store.update_identity(&update).await {
            Ok(written) => Some(written),
            Err(StoreError::Conflict) => None,
            Err(other) => panic!("step {at}: {other}"),
        };
        assert_eq!(
            stored.as_ref().map(|w| w.revision),
            *expected,
            "store, step {at}"
        );
        assert_eq!(modelled, *expected, "domain, step {at}");
        let held = store.get_identity(&alpha.id).await.unwrap().unwrap();
        if let Some(written) = stored {
            assert_eq!(held.revision, written.revision);
            stale = std::mem::replace(&mut current, held);
        } else {
            assert_eq!(held.revision, current.revision);
        }
    }
    // A delete names a revision too.
    assert!(matches!(
        store.delete_identity(&alpha.id, Some(stale.revision)).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        store
            .delete_identity(&alpha.id, Some(current.revision))
            .await
            .unwrap()
    );
}

async fn imported_tokens_are_claimed_once_and_noted_for_good(store: &dyn Store) {
    assert!(
        !store.has_imports().await.unwrap(),
        "a fresh store has no imports"
    );
    let key = KeyId::generate(&IdentityId::generate());
    let other = KeyId::generate(&IdentityId::generate());
    assert!(store.claim_import("digest-1", &key).await.unwrap());
    assert!(store.has_imports().await.unwrap());
    assert!(!store.claim_import("digest-1", &other).await.unwrap());
    let digests = ["absent".to_owned(), "digest-1".to_owned()];
    assert_eq!(store.find_imported(&digests).await.unwrap(), Some(key));
    store.release_import("digest-1").await.unwrap();
    assert_eq!(store.find_imported(&digests).await.unwrap(), None);
    assert!(
        store.has_imports().await.unwrap(),
        "the marker outlives the index entries"
    );
}

async fn the_last_audit_id_outlives_trimming(store: &dyn Store) {
    assert_eq!(store.last_audit_id().await.unwrap(), None);
    store
        .append_audit(&keyrack::domain::AuditEvent::new(
            "CreateIdentity",
            "trim-1",
        ))
        .await
        .unwrap();
    let (_, newest) = store.audit_bounds().await.unwrap().unwrap();
    assert_eq!(store.last_audit_id().await.unwrap(), Some(newest.clone()));
    store.trim_audit(UnixMillis(i64::MAX)).await.unwrap();
    assert_eq!(store.audit_bounds().await.unwrap(), None);
    assert_eq!(store.last_audit_id().await.unwrap(), Some(newest));
}
