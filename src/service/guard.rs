//! What keeps Verify fast and argon2 affordable.
//!
//! - A verified-token cache: once argon2 accepts a token, a keyed digest of
//!   the token (HMAC-SHA-256 under a per-process random key, so the cache
//!   holds nothing usable) is remembered with the PHC string it matched. A
//!   later Verify that reads the same PHC string for that digest accepts
//!   without argon2. The record is still read on every call, so revocation,
//!   disabling and expiry are seen at once; a changed hash is a miss.
//! - A rejected-token cache: digests argon2 refused. A key id is never
//!   reused with another secret, so a wrong token stays wrong.
//! - A per-key-id throttle on argon2 failures, so a flood of wrong secrets
//!   for one key costs a bounded amount of CPU.
//! - A semaphore sized to the cores around argon2, so a cold storm queues
//!   briefly and is then refused rather than piling up without bound.

use crate::domain::{Error, KeyId};
use hmac::{Hmac, Mac};
use moka::sync::Cache;
use rand::TryRngCore;
use rand::rngs::OsRng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use zeroize::Zeroizing;

/// Settings of the guard.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// Most verified tokens remembered.
    pub verified_entries: u64,
    /// Most rejected tokens remembered.
    pub rejected_entries: u64,
    /// argon2 failures per key id per window before further attempts for
    /// that key id are refused until the window ends.
    pub failures_per_window: u32,
    /// The throttle's window.
    pub failure_window: Duration,
    /// Concurrent argon2 checks (defaults to half the cores, at least one).
    pub hash_slots: usize,
    /// How long a Verify may wait for an argon2 slot before it is refused.
    pub hash_slot_wait: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            verified_entries: 100_000,
            rejected_entries: 100_000,
            failures_per_window: 20,
            failure_window: Duration::from_secs(60),
            // Half the cores: a storm of fresh tokens then leaves the other
            // half to cached Verify traffic (see BENCHMARKS.md).
            hash_slots: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            hash_slot_wait: Duration::from_millis(100),
        }
    }
}

/// A keyed digest of a token: what the caches hold instead of the token.
pub type TokenDigest = [u8; 32];

/// The caches, throttle and argon2 slots of one process.
pub struct VerifyGuard {
    mac_key: Zeroizing<[u8; 32]>,
    verified: Cache<TokenDigest, Arc<str>>,
    rejected: Cache<TokenDigest, ()>,
    failures: Cache<KeyId, Arc<AtomicU32>>,
    hash_slots: Semaphore,
    options: GuardOptions,
}

impl std::fmt::Debug for VerifyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyGuard")
            .field("verified", &self.verified.entry_count())
            .field("rejected", &self.rejected.entry_count())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl VerifyGuard {
    /// A guard with a fresh random digest key.
    pub fn new(options: GuardOptions) -> Self {
        let mut mac_key = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(mac_key.as_mut())
            .expect("the operating system's random number generator failed");
        Self {
            mac_key,
            verified: Cache::builder()
                .max_capacity(options.verified_entries)
                .build(),
            rejected: Cache::builder()
                .max_capacity(options.rejected_entries)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            failures: Cache::builder()
                .max_capacity(options.rejected_entries)
                .time_to_live(options.failure_window)
                .build(),
            hash_slots: Semaphore::new(options.hash_slots.max(1)),
            options,
        }
    }

    /// The keyed digest of a token.
    pub fn digest(&self, token: &str) -> TokenDigest {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.mac_key.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The PHC string argon2 accepted this token against, if remembered.
    pub fn verified_hash(&self, digest: &TokenDigest) -> Option<Arc<str>> {
        self.verified.get(digest)
    }

    /// Whether argon2 refused this token before.
    pub fn was_rejected(&self, digest: &TokenDigest) -> bool {
        self.rejected.contains_key(digest)
    }

    /// Refuses another argon2 check for `key` while its failures in the
    /// current window are at the limit.
    pub fn check_throttle(&self, key: &KeyId) -> Result<(), Error> {
        let failures = self
            .failures
            .get(key)
            .map_or(0, |count| count.load(Ordering::Relaxed));
        if failures >= self.options.failures_per_window {
            return Err(Error::ResourceExhausted(format!(
                "too many failed attempts for key {key}; retry later"
            )));
        }
        Ok(())
    }

    /// Waits briefly for an argon2 slot; refuses when all stay busy.
    pub async fn hash_slot(&self) -> Result<SemaphorePermit<'_>, Error> {
        match tokio::time::timeout(self.options.hash_slot_wait, self.hash_slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::ResourceExhausted(
                "verification capacity is exhausted (too many uncached tokens at once); retry shortly".into(),
            )),
        }
    }

    /// Remembers argon2's decision.
    pub fn remember(&self, key: &KeyId, digest: TokenDigest, phc: &str, matched: bool) {
        if matched {
            self.verified.insert(digest, Arc::from(phc));
        } else {
            self.rejected.insert(digest, ());
            self.failures
                .get_with(key.clone(), || Arc::new(AtomicU32::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries in the verified-token cache (approximate).
    pub fn verified_entries(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }
}
