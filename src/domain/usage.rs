//! Usage control: rate limits and credits, and the one rule that settles a
//! Verify against them.
//!
//! **Rate limits are GCRA** (the generic cell rate algorithm, a token bucket
//! kept as one number): a limit of `limit` per `duration` admits a burst of
//! `limit` calls and then one call every `duration / limit`. The bucket's
//! state is its theoretical arrival time (TAT): the instant it is full again.
//! A call of cost `c` is admitted when, after it, the bucket would be full
//! again no later than `duration` from now.
//!
//! Time is kept in *units* of `1 / limit` milliseconds, so that one call
//! costs exactly `duration_ms` units and every quantity is an integer: a
//! state is the TAT's milliseconds plus a remainder of units. The bounds on
//! `limit`, `duration` and `cost` keep every quantity below 2^53, so the Lua
//! mirror (doubles) computes exactly what this module computes.
//!
//! **Credits** are a balance spent by each admitted call's cost. A refill
//! raises the balance to `amount` at every whole `interval` since the last
//! refill, computed when the balance is next read (never lowering a larger
//! balance). Setting the balance (at creation or by UpdateKey) stamps it
//! with `granted_at`; a stored balance older than the record's grant gives
//! way to the grant.
//!
//! **Settling** checks credits first (waiting does not help an exhausted
//! balance that has no refill), then every rate limit, the identity's and the
//! key's: the stricter wins, and nothing is charged unless everything admits.
//!
//! The store keeps the states as strings under the field names below, in one
//! map per identity. `store::redis::scripts::CHARGE_USAGE` is this module's
//! mirror in Lua; the memory store calls [`settle`] itself.

use super::time::UnixMillis;

/// Most rate limits on one identity, or on one key.
pub const MAX_RATE_LIMITS: usize = 8;
/// The largest `limit` of a rate limit.
pub const MAX_LIMIT: u64 = 1_000_000;
/// The shortest `duration` of a rate limit.
pub const MIN_DURATION_MS: u64 = 1_000;
/// The longest `duration` of a rate limit (30 days).
pub const MAX_DURATION_MS: u64 = 30 * 86_400_000;
/// The largest cost of one Verify, and the largest credit balance or refill.
pub const MAX_COST: u64 = 1_000_000;
/// The largest credit balance.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;
/// The shortest refill interval.
pub const MIN_REFILL_INTERVAL_MS: u64 = 1_000;
/// The longest refill interval (366 days).
pub const MAX_REFILL_INTERVAL_MS: u64 = 366 * 86_400_000;

/// At most `limit` admitted calls per `duration` (GCRA, see the module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// `^[a-z][a-z0-9_]{0,30}$`, unique among its owner's limits.
    pub name: String,
    /// Calls per duration, 1 to [`MAX_LIMIT`].
    pub limit: u64,
    /// The window, [`MIN_DURATION_MS`] to [`MAX_DURATION_MS`].
    pub duration_ms: u64,
}

/// A key's balance of uses, with an optional refill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    /// The balance as last set by an admin.
    pub remaining: u64,
    /// When that balance was set: a stored balance older than this gives way.
    pub granted_at: UnixMillis,
    /// Raises the balance back up on a schedule.
    pub refill: Option<Refill>,
}

/// Raises a balance to `amount` every `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    /// The balance after a refill (a larger one is kept).
    pub amount: u64,
    /// How often.
    pub interval_ms: u64,
}

/// Checks a rate limit's name: `^[a-z][a-z0-9_]{0,30}$`.
pub fn parse_limit_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 31
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!("name {name:?} must match ^[a-z][a-z0-9_]{{0,30}}$"))
    }
}

/// Checks a rate limit's `limit`.
pub fn check_limit(limit: i64) -> Result<u64, String> {
    u64::try_from(limit)
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| format!("must be between 1 and {MAX_LIMIT}"))
}

/// Checks a rate limit's `duration`.
pub fn check_duration(duration_ms: u64) -> Result<u64, String> {
    if (MIN_DURATION_MS..=MAX_DURATION_MS).contains(&duration_ms) {
        Ok(duration_ms)
    } else {
        Err("must be between 1 second and 30 days".into())
    }
}

/// Checks a list of rate limits as a whole, given the names of all its
/// entries in order: how many, and unique names. Returns the (field, reason)
/// of each problem.
pub fn check_rate_limits(field: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if names.len() > MAX_RATE_LIMITS {
        problems.push((
            field.to_owned(),
            format!("at most {MAX_RATE_LIMITS} rate limits"),
        ));
    }
    for (index, name) in names.iter().enumerate() {
        if names[..index].contains(name) {
            problems.push((
                format!("{field}[{index}].name"),
                format!("{name:?} is used twice"),
            ));
        }
    }
    problems
}

/// Checks a credit balance.
pub fn check_balance(remaining: i64) -> Result<u64, String> {
    u64::try_from(remaining)
        .ok()
        .filter(|remaining| *remaining <= MAX_CREDITS)
        .ok_or_else(|| format!("must be between 0 and {MAX_CREDITS}"))
}

/// Checks a refill's amount.
pub fn check_refill_amount(amount: i64) -> Result<u64, String> {
    u64::try_from(amount)
        .ok()
        .filter(|amount| (1..=MAX_CREDITS).contains(amount))
        .ok_or_else(|| format!("must be between 1 and {MAX_CREDITS}"))
}

/// Checks a refill's interval.
pub fn check_refill_interval(interval_ms: u64) -> Result<u64, String> {
    if (MIN_REFILL_INTERVAL_MS..=MAX_REFILL_INTERVAL_MS).contains(&interval_ms) {
        Ok(interval_ms)
    } else {
        Err("must be between 1 second and 366 days".into())
    }
}

/// The field of the usage map holding the state of the identity's limit
/// `name` (one budget for all its keys).
pub fn identity_limit_field(name: &str) -> String {
    format!("rate:identity:{name}")
}

/// The field holding the state of a key's own limit `name`, for the key
/// whose budget it is (see `ApiKey::usage_account`).
pub fn key_limit_field(account: &str, name: &str) -> String {
    format!("rate:key:{account}:{name}")
}

/// The field holding a key's credit balance.
pub fn credits_field(account: &str) -> String {
    format!("credits:{account}")
}

/// One rate limit to settle: where its state lives and what it allows.
#[derive(Debug, Clone)]
pub struct LimitCheck<'a> {
    /// The field of its state in the identity's usage map.
    pub field: String,
    /// The limit.
    pub limit: &'a RateLimit,
    /// True for the identity's limits (shared by all its keys).
    pub shared: bool,
}

/// Everything a Verify must be settled against.
#[derive(Debug, Clone)]
pub struct UsageCheck<'a> {
    /// What the call spends: 0 only checks that a call of 1 would pass.
    pub cost: u64,
    /// The key's credits and the field of their balance.
    pub credits: Option<(String, &'a Credits)>,
    /// The identity's limits, then the key's.
    pub limits: Vec<LimitCheck<'a>>,
}

/// What a settled call reports of one rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit's name.
    pub name: String,
    /// Its limit.
    pub limit: u64,
    /// Calls of cost 1 it would still admit now.
    pub remaining: u64,
    /// When its bucket is full again.
    pub reset_time: UnixMillis,
    /// True for the identity's limits.
    pub shared: bool,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rate limit: retry after the wait.
    RateLimited,
    /// The credits are spent.
    UsageExceeded,
}

/// The outcome of settling a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settlement {
    /// `None` when the call was admitted (and charged).
    pub refusal: Option<Refusal>,
    /// When a retry can succeed, if one can.
    pub retry_after_ms: Option<u64>,
    /// Each limit, in the order checked.
    pub limits: Vec<LimitReport>,
    /// The balance left, for a key with credits.
    pub credits_remaining: Option<u64>,
}

/// A rate limit's stored state (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    limit: u64,
    duration_ms: u64,
    full_at_ms: i64,
    full_at_units: u64,
}

impl Bucket {
    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let bucket = Bucket {
            limit: parts.next()?.parse().ok()?,
            duration_ms: parts.next()?.parse().ok()?,
            full_at_ms: parts.next()?.parse().ok()?,
            full_at_units: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(bucket)
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.limit, self.duration_ms, self.full_at_ms, self.full_at_units
        )
    }
}

/// Units (1/limit ms) until the bucket of `limit` is full again, from its
/// stored state: 0 for none, or for a state of other numbers (a changed
/// limit starts full).
fn units_until_full(state: Option<&str>, limit: &RateLimit, now: i64) -> u64 {
    let Some(bucket) = state.and_then(Bucket::decode) else {
        return 0;
    };
    if bucket.limit != limit.limit || bucket.duration_ms != limit.duration_ms {
        return 0;
    }
    let units =
        (bucket.full_at_ms - now).saturating_mul(limit.limit as i64) + bucket.full_at_units as i64;
    units.max(0) as u64
}

fn report(limit: &LimitCheck<'_>, units: u64, now: i64) -> LimitReport {
    let capacity = limit.limit.limit * limit.limit.duration_ms;
    LimitReport {
        name: limit.limit.name.clone(),
        limit: limit.limit.limit,
        remaining: capacity.saturating_sub(units) / limit.limit.duration_ms,
        reset_time: UnixMillis(now + units.div_ceil(limit.limit.limit) as i64),
        shared: limit.shared,
    }
}

/// A key's stored credit balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Balance {
    remaining: u64,
    refilled_at_ms: i64,
    granted_at_ms: i64,
}

impl Balance {
    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let balance = Balance {
            remaining: parts.next()?.parse().ok()?,
            refilled_at_ms: parts.next()?.parse().ok()?,
            granted_at_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(balance)
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {}",
            self.remaining, self.refilled_at_ms, self.granted_at_ms
        )
    }

    /// The stored balance, or the record's grant when that is newer, with
    /// the refills due by `now` applied.
    fn current(state: Option<&str>, credits: &Credits, now: i64) -> Self {
        let granted = Balance {
            remaining: credits.remaining,
            refilled_at_ms: credits.granted_at.0,
            granted_at_ms: credits.granted_at.0,
        };
        let mut balance = match state.and_then(Balance::decode) {
            Some(stored) if stored.granted_at_ms >= granted.granted_at_ms => stored,
            _ => granted,
        };
        if let Some(refill) = credits.refill {
            let interval = refill.interval_ms as i64;
            let due = now - balance.refilled_at_ms;
            if due >= interval {
                balance.refilled_at_ms += due / interval * interval;
                balance.remaining = balance.remaining.max(refill.amount);
            }
        }
        balance
    }
}

/// The balance `credits` hold at `now`, from its stored state: what admins
/// are shown as `remaining`.
pub fn credits_left(state: Option<&str>, credits: &Credits, now: UnixMillis) -> u64 {
    Balance::current(state, credits, now.0).remaining
}

/// Settles a call against its credits and limits, reading each state with
/// `read` and returning the states to write (none when refused). The store
/// runs this, or its Lua mirror, atomically: read, decide, write.
pub fn settle(
    now: UnixMillis,
    check: &UsageCheck<'_>,
    read: impl Fn(&str) -> Option<String>,
) -> (Settlement, Vec<(String, String)>) {
    let now = now.0;
    // A check (cost 0) asks whether a call would pass: it needs one unit.
    let needed = check.cost.max(1);
    let mut settlement = Settlement::default();
    let mut writes = Vec::new();
    // Whether a later call of this cost can pass at all: not when it needs
    // more than a refill grants or a limit's whole bucket holds. A refusal
    // that waiting cannot cure says no time to retry.
    let mut attainable = true;

    let balance = check.credits.as_ref().map(|(field, credits)| {
        let balance = Balance::current(read(field).as_deref(), credits, now);
        (field, credits, balance)
    });
    if let Some((_, credits, balance)) = &balance {
        settlement.credits_remaining = Some(balance.remaining);
        if balance.remaining < needed {
            settlement.refusal = Some(Refusal::UsageExceeded);
            match credits.refill.filter(|refill| refill.amount >= needed) {
                Some(refill) => {
                    settlement.retry_after_ms =
                        Some((balance.refilled_at_ms + refill.interval_ms as i64 - now) as u64);
                }
                None => attainable = false,
            }
        }
    }

    let mut units = Vec::with_capacity(check.limits.len());
    for limit in &check.limits {
        let before = units_until_full(read(&limit.field).as_deref(), limit.limit, now);
        let capacity = limit.limit.limit * limit.limit.duration_ms;
        let after_needed = before + needed * limit.limit.duration_ms;
        if needed > limit.limit.limit {
            attainable = false;
        }
        if after_needed > capacity && settlement.refusal != Some(Refusal::UsageExceeded) {
            settlement.refusal = Some(Refusal::RateLimited);
            let wait = (after_needed - capacity).div_ceil(limit.limit.limit);
            settlement.retry_after_ms = Some(settlement.retry_after_ms.unwrap_or(0).max(wait));
        }
        units.push(before);
    }

    if !attainable {
        settlement.retry_after_ms = None;
    }
    if settlement.refusal.is_some() {
        settlement.limits = check
            .limits
            .iter()
            .zip(&units)
            .map(|(limit, units)| report(limit, *units, now))
            .collect();
        return (settlement, writes);
    }

    if let Some((field, _, mut balance)) = balance {
        balance.remaining -= check.cost;
        settlement.credits_remaining = Some(balance.remaining);
        writes.push((field.clone(), balance.encode()));
    }
    for (limit, before) in check.limits.iter().zip(units) {
        let after = before + check.cost * limit.limit.duration_ms;
        let per_ms = limit.limit.limit;
        let bucket = Bucket {
            limit: per_ms,
            duration_ms: limit.limit.duration_ms,
            full_at_ms: now + (after / per_ms) as i64,
            full_at_units: after % per_ms,
        };
        writes.push((limit.field.clone(), bucket.encode()));
        settlement.limits.push(report(limit, after, now));
    }
    (settlement, writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn limit(name: &str, limit: u64, duration_ms: u64) -> RateLimit {
        RateLimit {
            name: name.into(),
            limit,
            duration_ms,
        }
    }

    /// Settles against an in-memory map, as the memory store does.
    fn settle_in(
        map: &Mutex<HashMap<String, String>>,
        now: i64,
        check: &UsageCheck<'_>,
    ) -> Settlement {
        let (settlement, writes) = settle(UnixMillis(now), check, |field| {
            map.lock().unwrap().get(field).cloned()
        });
        map.lock().unwrap().extend(writes);
        settlement
    }

    fn limited<'a>(limits: &'a [RateLimit], cost: u64) -> UsageCheck<'a> {
        UsageCheck {
            cost,
            credits: None,
            limits: limits
                .iter()
                .map(|limit| LimitCheck {
                    field: identity_limit_field(&limit.name),
                    limit,
                    shared: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_limit_admits_its_burst_then_one_call_per_interval() {
        let map = Mutex::new(HashMap::new());
        let limits = [limit("hourly", 10, 3_600_000)];
        let now = 1_700_000_000_000;
        for expected_remaining in (0..10).rev() {
            let settled = settle_in(&map, now, &limited(&limits, 1));
            assert_eq!(settled.refusal, None);
            assert_eq!(settled.limits[0].remaining, expected_remaining);
        }
        let refused = settle_in(&map, now, &limited(&limits, 1));
        assert_eq!(refused.refusal, Some(Refusal::RateLimited));
        assert_eq!(refused.retry_after_ms, Some(360_000));
        assert_eq!(refused.limits[0].reset_time, UnixMillis(now + 3_600_000));
        // One interval later, exactly one more.
        assert_eq!(
            settle_in(&map, now + 360_000, &limited(&limits, 1)).refusal,
            None
        );
        assert!(
            settle_in(&map, now + 360_000, &limited(&limits, 1))
                .refusal
                .is_some()
        );
    }

    #[test]
    fn intervals_that_do_not_divide_evenly_stay_exact() {
        let map = Mutex::new(HashMap::new());
        let limits = [limit("odd", 7, 1_000)];
        let now = 1_700_000_000_000;
        for _ in 0..7 {
            assert_eq!(settle_in(&map, now, &limited(&limits, 1)).refusal, None);
        }
        let refused = settle_in(&map, now, &limited(&limits, 1));
        // 1000/7 ms = 142.86 ms, rounded up.
        assert_eq!(refused.retry_after_ms, Some(143));
        assert!(
            settle_in(&map, now + 142, &limited(&limits, 1))
                .refusal
                .is_some()
        );
        assert_eq!(
            settle_in(&map, now + 143, &limited(&limits, 1)).refusal,
            None
        );
    }

    #[test]
    fn the_stricter_limit_wins_and_a_refusal_charges_nothing() {
        let map = Mutex::new(HashMap::new());
        let limits = [limit("wide", 100, 60_000), limit("narrow", 2, 60_000)];
        let now = 1_700_000_000_000;
        settle_in(&map, now, &limited(&limits, 1));
        settle_in(&map, now, &limited(&limits, 1));
        let refused = settle_in(&map, now, &limited(&limits, 1));
        assert_eq!(refused.refusal, Some(Refusal::RateLimited));
        assert_eq!(
            refused.limits[0].remaining, 98,
            "the wide limit was not charged"
        );
    }

    #[test]
    fn cost_zero_checks_without_charging() {
        let map = Mutex::new(HashMap::new());
        let limits = [limit("one", 1, 60_000)];
        let now = 1_700_000_000_000;
        let checked = settle_in(&map, now, &limited(&limits, 0));
        assert_eq!((checked.refusal, checked.limits[0].remaining), (None, 1));
        assert_eq!(settle_in(&map, now, &limited(&limits, 1)).refusal, None);
        assert!(settle_in(&map, now, &limited(&limits, 0)).refusal.is_some());
    }

    #[test]
    fn a_changed_limit_starts_full() {
        let map = Mutex::new(HashMap::new());
        let now = 1_700_000_000_000;
        let before = [limit("l", 1, 60_000)];
        settle_in(&map, now, &limited(&before, 1));
        let after = [limit("l", 2, 60_000)];
        assert_eq!(
            settle_in(&map, now, &limited(&after, 1)).limits[0].remaining,
            1
        );
    }

    fn with_credits(credits: &Credits, cost: u64) -> UsageCheck<'_> {
        UsageCheck {
            cost,
            credits: Some((credits_field("k"), credits)),
            limits: Vec::new(),
        }
    }

    #[test]
    fn credits_are_spent_refilled_lazily_and_regranted() {
        let map = Mutex::new(HashMap::new());
        let start = 1_700_000_000_000;
        let mut credits = Credits {
            remaining: 3,
            granted_at: UnixMillis(start),
            refill: Some(Refill {
                amount: 2,
                interval_ms: 10_000,
            }),
        };
        assert_eq!(
            settle_in(&map, start + 1, &with_credits(&credits, 2)).credits_remaining,
            Some(1)
        );
        let refused = settle_in(&map, start + 2, &with_credits(&credits, 2));
        assert_eq!(refused.refusal, Some(Refusal::UsageExceeded));
        assert_eq!(refused.retry_after_ms, Some(9_998));
        // The refill raises the balance to its amount, once per interval.
        let refilled = settle_in(&map, start + 25_000, &with_credits(&credits, 1));
        assert_eq!(refilled.credits_remaining, Some(1));
        assert_eq!(
            settle_in(&map, start + 29_999, &with_credits(&credits, 1)).credits_remaining,
            Some(0)
        );
        assert_eq!(
            settle_in(&map, start + 30_000, &with_credits(&credits, 0)).credits_remaining,
            Some(2)
        );
        // A new grant replaces the stored balance.
        credits.remaining = 50;
        credits.granted_at = UnixMillis(start + 30_001);
        credits.refill = None;
        let topped_up = settle_in(&map, start + 30_002, &with_credits(&credits, 5));
        assert_eq!(topped_up.credits_remaining, Some(45));
    }

    #[test]
    fn exhausted_credits_without_refill_give_no_retry_time() {
        let map = Mutex::new(HashMap::new());
        let credits = Credits {
            remaining: 0,
            granted_at: UnixMillis(1),
            refill: None,
        };
        let refused = settle_in(&map, 10, &with_credits(&credits, 1));
        assert_eq!(
            (refused.refusal, refused.retry_after_ms),
            (Some(Refusal::UsageExceeded), None)
        );
    }

    #[test]
    fn names_and_bounds_are_checked() {
        assert!(parse_limit_name("per_minute").is_ok());
        assert!(parse_limit_name("PerMinute").is_err());
        assert!(parse_limit_name("1st").is_err());
        assert!(parse_limit_name(&"a".repeat(32)).is_err());
        assert!(check_limit(0).is_err());
        assert!(check_limit(-1).is_err());
        assert!(check_duration(999).is_err());
        assert!(check_limit(MAX_LIMIT as i64).is_ok() && check_duration(MAX_DURATION_MS).is_ok());
        // The largest quantities stay exact in a double.
        const { assert!(MAX_LIMIT * MAX_DURATION_MS + MAX_COST * MAX_DURATION_MS < 1 << 53) };
        assert_eq!(
            check_rate_limits("rate_limits", &["a", "b", "a"]),
            vec![(
                "rate_limits[2].name".to_owned(),
                "\"a\" is used twice".to_owned()
            )]
        );
    }
}
