//! TOTP step-up for admins (RFC 6238): the policy and the stored state.

use super::time::UnixMillis;
use std::time::Duration;

/// Seconds per time step.
pub const STEP_SECONDS: u64 = 30;
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Steps of clock skew accepted on either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Bytes in a seed: 160 bits, RFC 4226's recommendation.
pub const SEED_BYTES: usize = 20;
/// Wrong codes in a row that lock an admin out.
pub const MAX_FAILURES: u32 = 5;
/// How long a lockout lasts.
pub const LOCKOUT: Duration = Duration::from_secs(5 * 60);

/// An admin's authenticator as stored. The seed is sealed (encrypted with a
/// key derived from the server secret), never in clear.
#[derive(Clone, PartialEq)]
pub struct TotpRecord {
    /// The sealed seed.
    pub sealed_seed: String,
    /// Whether ConfirmTotp has proven the authenticator works.
    pub confirmed: bool,
    /// The last time step whose code was accepted: a code is accepted at
    /// most once (RFC 6238 §5.2), so later codes must be of a later step.
    pub last_step: u64,
    /// Wrong codes since the last accepted one.
    pub failures: u32,
    /// Until when TOTP-guarded calls are refused.
    pub locked_until: Option<UnixMillis>,
}

impl TotpRecord {
    /// A fresh, unconfirmed enrollment.
    pub fn enrolled(sealed_seed: String) -> Self {
        Self {
            sealed_seed,
            confirmed: false,
            last_step: 0,
            failures: 0,
            locked_until: None,
        }
    }

    /// Whether the admin is locked out at `now`.
    pub fn locked_at(&self, now: UnixMillis) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// Accepts, or not, a code of time step `step` checked at `now` (the
    /// instant of [`lockout_checked_at`]): the one home of "a code is
    /// accepted at most once" and of the lockout. `confirm` also marks the
    /// authenticator confirmed; without it an unconfirmed one counts as not
    /// enrolled. An accepted step is recorded and ends any failure count and
    /// lockout; any other outcome changes nothing. (The Redis script
    /// `ACCEPT_TOTP_STEP` mirrors this.)
    pub fn accept_step(&mut self, step: u64, confirm: bool, now: UnixMillis) -> StepOutcome {
        if !confirm && !self.confirmed {
            return StepOutcome::NotEnrolled;
        }
        if let Some(until) = self.locked_until.filter(|until| *until > now) {
            return StepOutcome::Locked(until);
        }
        if step <= self.last_step {
            return StepOutcome::Replayed;
        }
        self.last_step = step;
        self.failures = 0;
        self.locked_until = None;
        self.confirmed |= confirm;
        StepOutcome::Accepted
    }

    /// Counts a wrong code; the `max_failures`-th in a row starts a lockout
    /// of `lockout` from `starts_at` (the instant of [`lockout_starts_at`])
    /// and starts the count again. Returns the lockout's end when this
    /// failure started one. (The Redis script `RECORD_TOTP_FAILURE` mirrors
    /// this.)
    pub fn record_failure(
        &mut self,
        starts_at: UnixMillis,
        max_failures: u32,
        lockout: Duration,
    ) -> Option<UnixMillis> {
        self.failures = self.failures.saturating_add(1);
        if self.failures < max_failures {
            return None;
        }
        self.failures = 0;
        self.locked_until = Some(starts_at.plus(lockout));
        self.locked_until
    }

    /// Replaces the sealed seed with `resealed` (the same seed sealed under
    /// the current server secret) only while it still is `sealed_was`, the
    /// one the caller opened: a seed enrolled meanwhile is never overwritten
    /// with an older one. The step, failures and lockout are left as they
    /// are. Whether it replaced it. (The Redis script `RESEAL_TOTP_SEED`
    /// mirrors this.)
    pub fn reseal(&mut self, sealed_was: &str, resealed: &str) -> bool {
        if self.sealed_seed != sealed_was {
            return false;
        }
        resealed.clone_into(&mut self.sealed_seed);
        true
    }
}

/// The instant a lockout is checked at: the earlier of the caller's clock and
/// the store's, so a replica whose clock runs ahead cannot end a lockout
/// early. (The Redis scripts mirror this with `TIME`.)
pub fn lockout_checked_at(caller: UnixMillis, store: UnixMillis) -> UnixMillis {
    caller.min(store)
}

/// The instant a lockout starts from: the later of the caller's clock and the
/// store's, so a replica whose clock runs behind cannot start a shorter one.
pub fn lockout_starts_at(caller: UnixMillis, store: UnixMillis) -> UnixMillis {
    caller.max(store)
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("sealed_seed", &"[redacted]")
            .field("confirmed", &self.confirmed)
            .field("last_step", &self.last_step)
            .field("failures", &self.failures)
            .field("locked_until", &self.locked_until)
            .finish()
    }
}

/// What the store says about a code of a given time step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Accepted: recorded as the last step used.
    Accepted,
    /// A code of this step or an earlier one was already accepted.
    Replayed,
    /// Locked out until then.
    Locked(UnixMillis),
    /// No (confirmed, where required) authenticator.
    NotEnrolled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_resealed_only_while_unchanged() {
        let mut record = TotpRecord::enrolled("1.old".into());
        record.last_step = 7;
        assert!(!record.reseal("1.other", "2.new"));
        assert_eq!(record.sealed_seed, "1.old");
        assert!(record.reseal("1.old", "2.new"));
        assert_eq!(record.sealed_seed, "2.new");
        assert_eq!(record.last_step, 7, "the accepted step is kept");
        assert!(
            !record.reseal("1.old", "2.newer"),
            "a second re-seal of the same read loses"
        );
    }
}
