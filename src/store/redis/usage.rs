//! Verify's check-and-charge of rate limits and credits: one call of
//! [`scripts::CHARGE_USAGE`] on the identity's hash tag, and the live
//! credit balances admins read.

use super::{RedisStore, scripts, unavailable};
use crate::domain::usage::{self, LimitReport, Refusal, Settlement, UsageCheck};
use crate::domain::{ApiKey, Identity, UnixMillis};
use crate::store::{Charge, StoreError, StoreResult};
use redis::aio::ConnectionLike;

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
        let mut invocation = scripts::CHARGE_USAGE.key(self.keyspace.key(&key.id));
        invocation
            .key(self.keyspace.identity(tag))
            .key(self.keyspace.usage(tag))
            .arg(key.revision)
            .arg(identity.revision)
            .arg(check.cost);
        match &check.credits {
            Some((field, credits)) => {
                let refill = credits.refill.unwrap_or(usage::Refill {
                    amount: 0,
                    interval_ms: 0,
                });
                invocation
                    .arg(field)
                    .arg(credits.remaining)
                    .arg(credits.granted_at.0)
                    .arg(refill.amount)
                    .arg(refill.interval_ms);
            }
            None => {
                invocation.arg("").arg(0).arg(0).arg(0).arg(0);
            }
        }
        invocation.arg(check.limits.len());
        for limit in &check.limits {
            invocation
                .arg(&limit.field)
                .arg(limit.limit.limit)
                .arg(limit.limit.duration_ms);
        }
        // A charge is not an audited change: no durability wait on Verify.
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
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
