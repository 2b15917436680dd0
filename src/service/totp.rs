//! TOTP step-up (RFC 6238): enrollment, confirmation, and the check that
//! guards sensitive calls such as RollKey. Codes are accepted at most once per
//! admin, atomically in the store, so two replicas cannot both accept one.

use super::{Authority, Caller};
use crate::domain::totp::{self, StepOutcome, TotpRecord};
use crate::domain::{Error, IdentityId, SecretString, UnixMillis};
use crate::store::journal;
use rand::TryRngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// What EnrollTotp returns: shown once.
#[derive(Debug)]
pub struct TotpEnrollment {
    /// The seed in base32.
    pub secret: SecretString,
    /// The `otpauth://` URL (it contains the seed).
    pub otpauth_url: SecretString,
}

/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "keyrack";

fn authenticator(seed: &[u8], account: &str) -> Result<TOTP, Error> {
    // An otpauth label may not contain ':' (it separates issuer and account).
    let account = account.replace(':', "_");
    TOTP::new(
        Algorithm::SHA1,
        totp::DIGITS,
        0,
        totp::STEP_SECONDS,
        seed.to_vec(),
        Some(ISSUER.to_owned()),
        account,
    )
    .map_err(|e| Error::Internal(format!("TOTP setup failed: {e}")))
}

impl Authority {
    /// Starts (or restarts, while unconfirmed) enrollment for the caller.
    pub async fn enroll_totp(&self, caller: &Caller) -> Result<TotpEnrollment, Error> {
        let mut seed = zeroize::Zeroizing::new([0u8; totp::SEED_BYTES]);
        OsRng
            .try_fill_bytes(seed.as_mut())
            .map_err(|e| Error::Internal(format!("the OS random number generator failed: {e}")))?;
        let authenticator = authenticator(seed.as_ref(), &caller.identity.name)?;
        let sealed = self.sealer.seal(&caller.identity.id, seed.as_ref())?;
        journal::arm();
        self.store
            .enroll_totp(&caller.identity.id, &TotpRecord::enrolled(sealed))
            .await
            .map_err(|error| match Error::from(error) {
                Error::Aborted(_) => Error::FailedPrecondition(
                    "an authenticator is already confirmed for this admin; it cannot be replaced through the API".into(),
                ),
                other => other,
            })?;
        tracing::info!(identity_id = %caller.identity.id, "TOTP enrollment started");
        Ok(TotpEnrollment {
            secret: SecretString::new(authenticator.get_secret_base32()),
            otpauth_url: SecretString::new(authenticator.get_url()),
        })
    }

    /// Activates the caller's enrolled authenticator with a current code.
    pub async fn confirm_totp(&self, caller: &Caller, code: &str) -> Result<(), Error> {
        let record = self
            .store
            .get_totp(&caller.identity.id)
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition(
                    "no authenticator is enrolled; call EnrollTotp first".into(),
                )
            })?;
        self.check_code(
            &caller.identity.id,
            &caller.identity.name,
            &record,
            code,
            true,
        )
        .await?;
        tracing::info!(identity_id = %caller.identity.id, "TOTP confirmed");
        Ok(())
    }

    /// The step-up check: the caller's current code, accepted once.
    pub(super) async fn require_totp(&self, caller: &Caller, code: &str) -> Result<(), Error> {
        let record = self
            .store
            .get_totp(&caller.identity.id)
            .await?
            .filter(|record| record.confirmed)
            .ok_or_else(|| {
                Error::FailedPrecondition(
                    "this call needs a TOTP code: enroll an authenticator first (EnrollTotp, then ConfirmTotp)".into(),
                )
            })?;
        self.check_code(
            &caller.identity.id,
            &caller.identity.name,
            &record,
            code,
            false,
        )
        .await
    }

    async fn check_code(
        &self,
        identity: &IdentityId,
        account: &str,
        record: &TotpRecord,
        code: &str,
        confirm: bool,
    ) -> Result<(), Error> {
        let now = UnixMillis::now();
        if record.locked_at(now) {
            return Err(locked_out());
        }
        if code.is_empty() {
            return Err(Error::PermissionDenied(
                "a current TOTP code is required".into(),
            ));
        }
        let seed = self.sealer.open(identity, &record.sealed_seed)?;
        let authenticator = authenticator(&seed, account)?;
        let current = u64::try_from(now.0).unwrap_or(0) / 1000 / totp::STEP_SECONDS;
        // Newest first, so a code that matches two steps records the later one.
        let matched = (current.saturating_sub(totp::SKEW_STEPS)..=current + totp::SKEW_STEPS)
            .rev()
            .find(|step| {
                let expected = authenticator.generate(step * totp::STEP_SECONDS);
                code.len() == expected.len()
                    && bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
            });
        let outcome = match matched {
            Some(step) => {
                // Confirming is the operation's change; a roll's step-up is
                // not (the roll's own write is).
                if confirm {
                    journal::arm();
                }
                self.store
                    .accept_totp_step(identity, step, confirm, now)
                    .await?
            }
            None => StepOutcome::Replayed,
        };
        match outcome {
            StepOutcome::Accepted => {
                self.reseal_if_outdated(identity, &record.sealed_seed, &seed)
                    .await;
                Ok(())
            }
            StepOutcome::Locked(_) => Err(locked_out()),
            StepOutcome::NotEnrolled => Err(Error::FailedPrecondition(
                "no confirmed authenticator; enroll one first (EnrollTotp, then ConfirmTotp)"
                    .into(),
            )),
            StepOutcome::Replayed => {
                let locked = self
                    .store
                    .record_totp_failure(identity, now, totp::MAX_FAILURES, totp::LOCKOUT)
                    .await?;
                tracing::warn!(identity_id = %identity, reused = matched.is_some(), locked = locked.is_some(), "TOTP code refused");
                let lockout_note = if locked.is_some() {
                    "; too many wrong codes, TOTP is now locked for 5 minutes"
                } else {
                    ""
                };
                let what = if matched.is_some() {
                    "that TOTP code was already used; wait for the next one"
                } else {
                    "wrong TOTP code"
                };
                Err(Error::PermissionDenied(format!("{what}{lockout_note}")))
            }
        }
    }
}

fn locked_out() -> Error {
    Error::ResourceExhausted(
        "too many wrong TOTP codes: TOTP-guarded calls are locked for a few minutes".into(),
    )
}
