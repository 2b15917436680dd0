//! Verify's check-and-charge of rate limits and credits, and the live
//! credit balances admins read.
//!
//! A charge is one call of [`scripts::CHARGE_USAGE`] on the identity's hash
//! tag, and concurrent charges of one identity share calls ("group
//! commit"): while a charge of an identity is in flight, further charges of
//! it wait in a queue, and when it returns, a task of their own sends the
//! queue as one script call (at most [`MAX_BATCH`] charges), in arrival
//! order, until the queue is empty. The script settles each charge as a call
//! of its own would be settled, so every charge gets the answer it would
//! have got alone, one after another; a charge with nothing in flight before
//! it goes at once, alone, so a single stream waits for nothing. Under load
//! Redis runs one script for many Verify calls: the script's fixed cost (the
//! records, the clock, the writes) was most of its cost per call.

use super::{RedisStore, scripts, unavailable};
use crate::domain::usage::{self, LimitReport, Refusal, Settlement, UsageCheck};
use crate::domain::{ApiKey, Identity, IdentityId, UnixMillis};
use crate::store::{Charge, StoreError, StoreResult};
use redis::aio::ConnectionLike;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The most charges one script call carries. It bounds the call's size
/// (arguments, states written at once) and how long it holds Redis, which
/// runs nothing else meanwhile.
const MAX_BATCH: usize = 64;

/// The charges waiting, per identity with a charge in flight. An identity
/// is present exactly while a charge of it is in flight (or a task is
/// sending its queue); its queue may be empty.
#[derive(Default)]
pub(super) struct ChargeQueues {
    waiting: Mutex<HashMap<IdentityId, VecDeque<Queued>>>,
}

impl ChargeQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<IdentityId, VecDeque<Queued>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A charge waiting for its turn, and where its answer goes.
struct Queued {
    charge: ChargeArgs,
    answer: oneshot::Sender<Result<Vec<redis::Value>, Failure>>,
}

/// Why a batch failed, for each of its charges (a `StoreError` is not
/// `Clone`).
#[derive(Debug, Clone)]
enum Failure {
    Unavailable(String),
    Corrupt(String),
}

impl Failure {
    fn of(error: &StoreError) -> Self {
        match error {
            StoreError::Corrupt(message) => Failure::Corrupt(message.clone()),
            other => Failure::Unavailable(other.to_string()),
        }
    }

    fn into_error(self) -> StoreError {
        match self {
            Failure::Unavailable(message) => StoreError::Unavailable(message),
            Failure::Corrupt(message) => StoreError::Corrupt(message),
        }
    }
}

/// One charge as CHARGE_USAGE takes it, owned, so that it can wait in a
/// queue and be sent by another task.
struct ChargeArgs {
    key_record: String,
    key_revision: u64,
    identity_revision: u64,
    cost: u64,
    /// Field, granted balance, granted_at, refill amount, refill interval.
    credits: Option<(String, u64, i64, u64, u64)>,
    /// Field, limit, duration (ms).
    limits: Vec<(String, u64, u64)>,
}

impl ChargeArgs {
    fn new(key_record: String, key: &ApiKey, identity: &Identity, check: &UsageCheck<'_>) -> Self {
        Self {
            key_record,
            key_revision: key.revision,
            identity_revision: identity.revision,
            cost: check.cost,
            credits: check.credits.as_ref().map(|(field, credits)| {
                let refill = credits.refill.unwrap_or(usage::Refill {
                    amount: 0,
                    interval_ms: 0,
                });
                (
                    field.clone(),
                    credits.remaining,
                    credits.granted_at.0,
                    refill.amount,
                    refill.interval_ms,
                )
            }),
            limits: check
                .limits
                .iter()
                .map(|limit| {
                    (
                        limit.field.clone(),
                        limit.limit.limit,
                        limit.limit.duration_ms,
                    )
                })
                .collect(),
        }
    }
}

/// The names of an identity's records a batch needs besides its keys'.
#[derive(Clone)]
struct TagNames {
    identity: String,
    usage: String,
}

/// Sends `charges` (of one identity, in order) as one CHARGE_USAGE call and
/// returns each one's answer, in the same order.
async fn charge_batch<C: ConnectionLike>(
    connection: &mut C,
    names: &TagNames,
    charges: &[&ChargeArgs],
) -> StoreResult<Vec<Vec<redis::Value>>> {
    let mut invocation = scripts::CHARGE_USAGE.prepare_invoke();
    invocation.key(&names.identity).key(&names.usage);
    // Each key record once in KEYS; a charge names its record's index.
    let mut key_records: Vec<&str> = Vec::with_capacity(charges.len().min(4));
    invocation.arg(charges.len());
    for charge in charges {
        let index = match key_records
            .iter()
            .position(|name| *name == charge.key_record)
        {
            Some(index) => index,
            None => {
                invocation.key(&charge.key_record);
                key_records.push(&charge.key_record);
                key_records.len() - 1
            }
        };
        invocation
            .arg(3 + index)
            .arg(charge.key_revision)
            .arg(charge.identity_revision)
            .arg(charge.cost);
        match &charge.credits {
            Some((field, remaining, granted_at, amount, interval)) => {
                invocation
                    .arg(field)
                    .arg(remaining)
                    .arg(granted_at)
                    .arg(amount)
                    .arg(interval);
            }
            None => {
                invocation.arg("").arg(0).arg(0).arg(0).arg(0);
            }
        }
        invocation.arg(charge.limits.len());
        for (field, limit, duration) in &charge.limits {
            invocation.arg(field).arg(limit).arg(duration);
        }
    }
    // A charge is not an audited change: no durability wait on Verify.
    let replies: Vec<Vec<redis::Value>> = invocation
        .invoke_async(connection)
        .await
        .map_err(unavailable)?;
    if replies.len() != charges.len() {
        return Err(StoreError::Corrupt(
            "a usage charge answered for another number of calls".into(),
        ));
    }
    Ok(replies)
}

/// Sends the queue of `tag`, a batch at a time, until it is empty; then
/// marks nothing in flight for `tag`.
async fn send_queue<C: ConnectionLike>(
    queues: Arc<ChargeQueues>,
    mut connection: C,
    tag: IdentityId,
    names: TagNames,
) {
    loop {
        let batch: Vec<Queued> = {
            let mut waiting = queues.lock();
            let Some(queue) = waiting.get_mut(&tag) else {
                return;
            };
            if queue.is_empty() {
                waiting.remove(&tag);
                return;
            }
            let size = queue.len().min(MAX_BATCH);
            queue.drain(..size).collect()
        };
        let charges: Vec<&ChargeArgs> = batch.iter().map(|queued| &queued.charge).collect();
        let answers = charge_batch(&mut connection, &names, &charges).await;
        // A caller that gave up has dropped its receiver; its charge stands,
        // as a lone charge sent before its caller gave up would.
        match answers {
            Ok(replies) => {
                for (queued, reply) in batch.into_iter().zip(replies) {
                    let _ = queued.answer.send(Ok(reply));
                }
            }
            Err(error) => {
                let failure = Failure::of(&error);
                for queued in batch {
                    let _ = queued.answer.send(Err(failure.clone()));
                }
            }
        }
    }
}

/// The charge in flight for an identity, run by its caller. However it
/// ends (answered, failed or its caller gone), the charges queued behind
/// it are handed to a task of their own, or the identity is marked idle.
struct InFlight<'a, C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    store: &'a RedisStore<C>,
    tag: &'a IdentityId,
    names: &'a TagNames,
}

impl<C> Drop for InFlight<'_, C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let queues = &self.store.usage_charges;
        {
            let mut waiting = queues.lock();
            if waiting.get(self.tag).is_none_or(VecDeque::is_empty) {
                waiting.remove(self.tag);
                return;
            }
        }
        let sender = send_queue(
            Arc::clone(queues),
            self.store.connection(),
            self.tag.clone(),
            self.names.clone(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(sender);
            }
            // No runtime to send them on (it is shutting down): dropping the
            // queue answers each waiting charge as unavailable.
            Err(_) => {
                queues.lock().remove(self.tag);
            }
        }
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// See `Store::charge_usage`.
    pub(super) async fn run_charge_usage(
        &self,
        key: &ApiKey,
        identity: &Identity,
        check: &UsageCheck<'_>,
    ) -> StoreResult<Charge> {
        let tag = &identity.id;
        let charge = ChargeArgs::new(self.keyspace.key(&key.id), key, identity, check);
        let queued = {
            let mut waiting = self.usage_charges.lock();
            match waiting.get_mut(tag) {
                Some(queue) => {
                    let (answer, answered) = oneshot::channel();
                    queue.push_back(Queued { charge, answer });
                    Err(answered)
                }
                None => {
                    waiting.insert(tag.clone(), VecDeque::new());
                    Ok(charge)
                }
            }
        };
        let reply = match queued {
            Ok(charge) => {
                let names = TagNames {
                    identity: self.keyspace.identity(tag),
                    usage: self.keyspace.usage(tag),
                };
                let _in_flight = InFlight {
                    store: self,
                    tag,
                    names: &names,
                };
                charge_batch(&mut self.connection(), &names, &[&charge])
                    .await?
                    .pop()
                    .ok_or_else(|| {
                        StoreError::Corrupt("an empty reply to the usage charge".into())
                    })?
            }
            Err(answered) => answered
                .await
                .map_err(|_| {
                    StoreError::Unavailable("the usage charge was dropped unanswered".into())
                })?
                .map_err(Failure::into_error)?,
        };
        settlement_of(&reply, check)
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Puts each key's live credit balance in `credits.remaining` (keys of
    /// one identity: one round trip, only when some key has credits).
    pub(super) async fn with_live_credits(&self, keys: &mut [ApiKey]) -> StoreResult<()> {
        let Some(identity) = keys
            .iter()
            .find(|key| key.credits.is_some())
            .map(|key| key.identity_id.clone())
        else {
            return Ok(());
        };
        let fields: Vec<String> = keys
            .iter()
            .filter(|key| key.credits.is_some())
            .map(|key| usage::credits_field(key.budget_key().as_str()))
            .collect();
        let states: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keyspace.usage(&identity))
            .arg(&fields)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let now = UnixMillis::now();
        let with_credits = keys.iter_mut().filter_map(|key| key.credits.as_mut());
        for (credits, state) in with_credits.zip(states) {
            credits.remaining = usage::credits_left(state.as_deref(), credits, now);
        }
        Ok(())
    }
}

/// Reads CHARGE_USAGE's reply.
fn settlement_of(reply: &[redis::Value], check: &UsageCheck<'_>) -> StoreResult<Charge> {
    let corrupt = || StoreError::Corrupt("an unexpected reply to the usage charge".into());
    let text = |value: &redis::Value| -> Option<String> { redis::from_redis_value_ref(value).ok() };
    let number = |index: usize| -> StoreResult<i64> {
        reply
            .get(index)
            .and_then(|value| redis::from_redis_value_ref::<i64>(value).ok())
            .ok_or_else(corrupt)
    };
    let status = reply.first().and_then(text).ok_or_else(corrupt)?;
    let refusal = match status.as_str() {
        "STALE" => return Ok(Charge::Stale),
        "OK" => None,
        "RATE_LIMITED" => Some(Refusal::RateLimited),
        "USAGE_EXCEEDED" => Some(Refusal::UsageExceeded),
        _ => return Err(corrupt()),
    };
    if reply.len() != 3 + 2 * check.limits.len() {
        return Err(corrupt());
    }
    let optional = |value: i64| u64::try_from(value).ok();
    let mut limits = Vec::with_capacity(check.limits.len());
    for (index, limit) in check.limits.iter().enumerate() {
        limits.push(LimitReport {
            name: limit.limit.name.clone(),
            limit: limit.limit.limit,
            remaining: optional(number(3 + 2 * index)?).ok_or_else(corrupt)?,
            reset_time: UnixMillis(number(4 + 2 * index)?),
            shared: limit.shared,
        });
    }
    Ok(Charge::Settled(Settlement {
        refusal,
        retry_after_ms: optional(number(1)?),
        limits,
        credits_remaining: optional(number(2)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::encode;
    use crate::domain::{ApiKey, Identity, IdentityId, KeyId, State, UnixMillis};

    /// CHARGE_USAGE reads a record's revision as the last member of its JSON
    /// without decoding it: a change of field order must fail here first.
    #[test]
    fn revision_is_last() {
        let mut identity = Identity::new_service(
            crate::domain::names::IdentityName::parse_service("svc").unwrap(),
            String::new(),
            UnixMillis(1),
        );
        identity.revision = 41;
        identity
            .labels
            .insert("trap".into(), "\"revision\":1}".into());
        let identity_id = IdentityId::parse("abcdefghijkl").unwrap();
        let key = ApiKey {
            id: KeyId::generate(&identity_id),
            identity_id,
            name: "k".into(),
            description: "\"revision\":7}".into(),
            state: State::Active,
            create_time: UnixMillis(1),
            expire_time: None,
            last_use_time: None,
            rolled_from: None,
            rolled_to: None,
            grace_expire_time: None,
            token_hint: String::new(),
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            datasets: Vec::new(),
            labels: Default::default(),
            origin: None,
            honeytoken: false,
            rate_limits: Vec::new(),
            credits: None,
            usage_account: None,
            secret_hash: crate::domain::SecretHash::Phc("$argon2id$x".into()),
            revision: 42,
        };
        assert!(encode(&identity).unwrap().ends_with(",\"revision\":41}"));
        assert!(encode(&key).unwrap().ends_with(",\"revision\":42}"));
    }
}
