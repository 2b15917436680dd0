//! Server-secret rotation: keys and TOTP seeds move to the current secret as
//! they are used.
//!
//! A key hashed under an older secret is re-hashed under the current one the
//! first time Verify accepts it (its secret is then at hand; it is nowhere
//! else). The write names the revision Verify read, so it lands only if the
//! record, hash included, is unchanged. An admin's TOTP seed sealed under an
//! older secret is re-sealed under the current one when a step-up accepts
//! its code; the write lands only if the stored seed is still the one that
//! was opened. Once no key and no seed is left under the previous secret,
//! that secret can be dropped (README: Rotating the server secret).

use super::Authority;
use super::guard::TokenDigest;
use crate::domain::{ApiKey, Error, Identity, IdentityId, SecretHash, SecretString};
use crate::store::StoreError;
use std::sync::Arc;

/// Identities or keys read per store call while counting.
const COUNT_PAGE: usize = 500;

/// What still depends on an older server secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnderOlderSecret {
    /// Keys whose hash was made under an older secret.
    pub keys: u64,
    /// Admins' TOTP seeds sealed under an older secret.
    pub totp_seeds: u64,
}

impl Authority {
    /// Re-hashes `key` under the current server secret when its hash was made
    /// under an older one. `secret` just matched it. Failing is harmless (the
    /// next use tries again), so it is logged, never returned.
    pub(super) async fn rehash_if_outdated(&self, key: &ApiKey, secret: &str, digest: TokenDigest) {
        // Verify calls this only after argon2, which had the PHC string.
        let Some(phc) = key.secret_hash.phc() else {
            return;
        };
        if self.hasher.is_current(phc) {
            return;
        }
        let hasher = Arc::clone(&self.hasher);
        let secret = SecretString::new(secret.to_owned());
        let rehashed = match self.hash_pool.run(move || hasher.hash(&secret)).await {
            Ok(Ok(phc)) => phc,
            Ok(Err(error)) | Err(error) => {
                tracing::warn!(key = %key.id, %error, "could not re-hash a key under the current server secret");
                return;
            }
        };
        let mut updated = key.clone();
        updated.secret_hash = SecretHash::Phc(rehashed);
        match self.store.update_key(&updated).await {
            Ok(stored) => {
                if let Some(phc) = stored.secret_hash.phc() {
                    self.guard.remember(&key.id, digest, phc, true).await;
                }
                let remaining = &crate::metrics::metrics().keys_under_older_secret;
                if remaining.get() > 0 {
                    remaining.dec();
                }
                tracing::info!(key = %key.id, "re-hashed a key under the current server secret");
            }
            // Changed or gone since Verify read it: the next use tries again.
            Err(StoreError::Conflict | StoreError::NotFound(_)) => {}
            Err(error) => {
                tracing::warn!(key = %key.id, %error, "could not store a key's re-hashed secret");
            }
        }
    }

    /// Re-seals `identity`'s TOTP seed under the current server secret when
    /// `sealed_was`, the stored form of `seed` a step-up just accepted a code
    /// of, was sealed under an older one. Failing is harmless (the seed
    /// still opens while the previous secret is configured, and the next
    /// step-up tries again), so it is logged, never returned; neither the
    /// seed nor its sealed form is.
    pub(super) async fn reseal_if_outdated(
        &self,
        identity: &IdentityId,
        sealed_was: &str,
        seed: &[u8],
    ) {
        if self.sealer.is_current(sealed_was) {
            return;
        }
        let resealed = match self.sealer.seal(identity, seed) {
            Ok(resealed) => resealed,
            Err(error) => {
                tracing::warn!(identity_id = %identity, %error, "could not re-seal a TOTP seed under the current server secret");
                return;
            }
        };
        match self
            .store
            .reseal_totp_seed(identity, sealed_was, &resealed)
            .await
        {
            Ok(true) => {
                let remaining = &crate::metrics::metrics().totp_seeds_under_older_secret;
                if remaining.get() > 0 {
                    remaining.dec();
                }
                tracing::info!(identity_id = %identity, "re-sealed a TOTP seed under the current server secret");
            }
            // Re-enrolled or gone since the step-up read it: nothing to move.
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(identity_id = %identity, %error, "could not store a re-sealed TOTP seed");
            }
        }
    }

    /// Counts the keys still hashed, and the admins' TOTP seeds still sealed,
    /// under an older server secret; sets the
    /// `keyrack_keys_under_older_secret` and
    /// `keyrack_totp_seeds_under_older_secret` gauges and logs the counts
    /// that are not zero. Reads every key: run it once, at start.
    pub async fn count_under_older_secret(&self) -> Result<UnderOlderSecret, Error> {
        let mut count = UnderOlderSecret::default();
        let mut after_identity: Option<IdentityId> = None;
        loop {
            let identities = self
                .store
                .list_identities(after_identity.as_ref(), COUNT_PAGE)
                .await?;
            for identity in &identities {
                if self.totp_seed_under_older_secret(identity).await? {
                    count.totp_seeds += 1;
                }
                let keys = self.store.all_keys_of(&identity.id).await?;
                count.keys += keys
                    .iter()
                    .filter(|key| {
                        key.secret_hash
                            .phc()
                            .is_some_and(|phc| !self.hasher.is_current(phc))
                    })
                    .count() as u64;
            }
            match identities.last() {
                Some(last) if identities.len() == COUNT_PAGE => {
                    after_identity = Some(last.id.clone());
                }
                _ => break,
            }
        }
        let metrics = crate::metrics::metrics();
        let gauge = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
        metrics.keys_under_older_secret.set(gauge(count.keys));
        metrics
            .totp_seeds_under_older_secret
            .set(gauge(count.totp_seeds));
        if count.keys > 0 {
            tracing::info!(
                keys = count.keys,
                "keys still hashed under an older server secret; each moves to the current one when next verified"
            );
        }
        if count.totp_seeds > 0 {
            tracing::info!(
                totp_seeds = count.totp_seeds,
                "admins' TOTP seeds still sealed under an older server secret; each moves to the current one at its admin's next step-up"
            );
        }
        Ok(count)
    }

    /// Whether `identity` is an admin whose TOTP seed is sealed under an
    /// older server secret. Only admins step up, so only their seeds are
    /// read (one read each; admins are few).
    async fn totp_seed_under_older_secret(&self, identity: &Identity) -> Result<bool, Error> {
        if !identity.admin {
            return Ok(false);
        }
        Ok(self
            .store
            .get_totp(&identity.id)
            .await?
            .is_some_and(|record| !self.sealer.is_current(&record.sealed_seed)))
    }
}
