//! Server-secret rotation: keys move to the current secret as they are used.
//!
//! A key hashed under an older secret is re-hashed under the current one the
//! first time Verify accepts it (its secret is then at hand; it is nowhere
//! else). The write names the revision Verify read, so it lands only if the
//! record, hash included, is unchanged. Once no key is left under the
//! previous secret, that secret can be dropped (README: Rotating the server
//! secret).

use super::Authority;
use super::guard::TokenDigest;
use crate::domain::{ApiKey, Error, IdentityId, KeyId, SecretHash, SecretString};
use crate::store::StoreError;
use std::sync::Arc;

/// Identities or keys read per store call while counting.
const COUNT_PAGE: usize = 500;

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

    /// Counts the keys still hashed under an older server secret, sets the
    /// `keyrack_keys_under_older_secret` gauge and logs the count when any
    /// remain. Reads every key: run it once, at start.
    pub async fn count_keys_under_older_secret(&self) -> Result<u64, Error> {
        let mut count = 0u64;
        let mut after_identity: Option<IdentityId> = None;
        loop {
            let identities = self
                .store
                .list_identities(after_identity.as_ref(), COUNT_PAGE)
                .await?;
            for identity in &identities {
                let mut after_key: Option<KeyId> = None;
                loop {
                    let keys = self
                        .store
                        .list_keys(&identity.id, after_key.as_ref(), COUNT_PAGE)
                        .await?;
                    count += keys
                        .iter()
                        .filter(|key| {
                            key.secret_hash
                                .phc()
                                .is_some_and(|phc| !self.hasher.is_current(phc))
                        })
                        .count() as u64;
                    match keys.last() {
                        Some(last) if keys.len() == COUNT_PAGE => after_key = Some(last.id.clone()),
                        _ => break,
                    }
                }
            }
            match identities.last() {
                Some(last) if identities.len() == COUNT_PAGE => {
                    after_identity = Some(last.id.clone());
                }
                _ => break,
            }
        }
        crate::metrics::metrics()
            .keys_under_older_secret
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if count > 0 {
            tracing::info!(
                keys = count,
                "keys still hashed under an older server secret; each moves to the current one when next verified"
            );
        }
        Ok(count)
    }
}
