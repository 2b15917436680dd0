//! What keeps Verify fast and argon2 affordable.
//!
//! - A verified-token cache: once argon2 accepts a token, a keyed digest of
//!   the token (HMAC-SHA-256 under a per-process random key, so the cache
//!   holds nothing usable) is remembered with a fingerprint of the PHC
//!   string it matched. A later Verify that reads a record whose hash has
//!   the same fingerprint accepts without argon2. The record is still read
//!   on every call (from Redis, or from Verify's record cache within its
//!   bound), so revocation, disabling and expiry are seen; a changed hash is
//!   a miss.
//! - A rejected-token cache: digests argon2 refused. A key id is never
//!   reused with another secret, so a wrong token stays wrong.
//! - A per-key-id failure budget. Past it, wrong answers for that key id are
//!   held back briefly (a tarpit), as are answers to known-wrong tokens, so a
//!   flood with bounded concurrency sends few requests. It never refuses a
//!   check: key ids are public, and a budget that refused would let anyone
//!   lock a key's owner out by guessing wrong (the correct secret always
//!   gets its argon2 check and its answer at once).
//! - A semaphore sized to the cores around argon2, so a cold storm queues
//!   briefly and is then refused rather than piling up without bound. This,
//!   not the budget, is what bounds argon2's CPU.

use crate::domain::{Error, HashFingerprint, KeyId, SecretHash, UnixMillis};
use hmac::{Hmac, Mac};
use quick_cache::sync::Cache;
use rand::TryRngCore;
use rand::rngs::OsRng;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use zeroize::Zeroizing;

/// Verified tokens remembered when `--verify-cache-entries` is not given.
pub const DEFAULT_VERIFIED_ENTRIES: u64 = 100_000;

/// Settings of the guard.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// Most verified tokens remembered.
    pub verified_entries: u64,
    /// Most rejected tokens remembered.
    pub rejected_entries: u64,
    /// argon2 failures per key id per window before further wrong answers
    /// for that key id are held back until the window ends.
    pub failures_per_window: u32,
    /// The throttle's window.
    pub failure_window: Duration,
    /// Concurrent argon2 checks (defaults to half the cores, at least one).
    pub hash_slots: usize,
    /// How long a Verify may wait for an argon2 slot before it is refused.
    pub hash_slot_wait: Duration,
    /// How long an answer to a known-wrong or throttled token is held back:
    /// a flooding client with bounded concurrency then sends few requests,
    /// and a waiting future costs no CPU.
    pub refusal_delay: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            verified_entries: DEFAULT_VERIFIED_ENTRIES,
            rejected_entries: 100_000,
            failures_per_window: 20,
            failure_window: Duration::from_secs(60),
            // Half the cores: a storm of fresh tokens then leaves the other
            // half to cached Verify traffic (see BENCHMARKS.md).
            hash_slots: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            hash_slot_wait: Duration::from_millis(100),
            refusal_delay: Duration::from_millis(50),
        }
    }
}

/// A keyed digest of a token: what the caches hold instead of the token.
/// 128 bits of HMAC-SHA-256: a collision would need a forgery under a key
/// that never leaves the process.
pub type TokenDigest = [u8; 16];

/// The caches, throttle and argon2 slots of one process.
pub struct VerifyGuard {
    mac_key: Zeroizing<[u8; 32]>,
    // quick_cache: tens of bytes of overhead an entry, where the first
    // choice (moka) cost hundreds and broke the memory budget at 100k tokens.
    verified: Cache<TokenDigest, HashFingerprint>,
    rejected: Cache<TokenDigest, ()>,
    failures: Cache<KeyId, Arc<FailureWindow>>,
    hash_slots: Semaphore,
    options: GuardOptions,
}

impl std::fmt::Debug for VerifyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyGuard")
            .field("verified", &self.verified.len())
            .field("rejected", &self.rejected.len())
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
            verified: Cache::new(options.verified_entries.max(1) as usize),
            rejected: Cache::new(options.rejected_entries.max(1) as usize),
            failures: Cache::new(options.rejected_entries.max(1) as usize),
            hash_slots: Semaphore::new(options.hash_slots.max(1)),
            options,
        }
    }

    /// The keyed digest of a token.
    pub fn digest(&self, token: &str) -> TokenDigest {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.mac_key.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(token.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        digest
    }

    /// The fingerprint of the PHC string argon2 accepted this token against,
    /// if remembered.
    pub fn verified_fingerprint(&self, digest: &TokenDigest) -> Option<HashFingerprint> {
        self.verified.get(digest)
    }

    /// Whether argon2 refused this token before.
    pub fn was_rejected(&self, digest: &TokenDigest) -> bool {
        self.rejected.contains_key(digest)
    }

    /// Whether `key`'s failures in the current window passed the budget.
    fn over_failure_budget(&self, key: &KeyId) -> bool {
        let now = UnixMillis::now();
        let failures = self.failures.get(key).map_or(0, |window| {
            window.failures_at(now, self.options.failure_window)
        });
        failures > self.options.failures_per_window
    }

    /// Waits briefly for an argon2 slot; refuses when all stay busy.
    pub async fn hash_slot(&self) -> Result<HashSlot<'_>, Error> {
        let metrics = crate::metrics::metrics();
        metrics.argon2_waiting.inc();
        let acquired =
            tokio::time::timeout(self.options.hash_slot_wait, self.hash_slots.acquire()).await;
        metrics.argon2_waiting.dec();
        match acquired {
            Ok(Ok(permit)) => {
                metrics.argon2_running.inc();
                Ok(HashSlot { _permit: permit })
            }
            _ => {
                metrics.argon2_rejected.inc();
                Err(Error::ResourceExhausted(
                "verification capacity is exhausted (too many uncached tokens at once); retry shortly".into(),
                ))
            }
        }
    }

    /// Holds back an answer to a known-wrong token.
    pub async fn hold_back(&self) {
        crate::metrics::metrics().verify_throttled.inc();
        super::tarpit::hold_back(self.options.refusal_delay).await;
    }

    /// Remembers argon2's decision, and holds a wrong answer back once its
    /// key id is past its failure budget.
    pub async fn remember(&self, key: &KeyId, digest: TokenDigest, phc: &str, matched: bool) {
        if matched {
            self.verified
                .insert(digest, SecretHash::fingerprint_of(phc));
        } else {
            self.rejected.insert(digest, ());
            let window = match self.failures.get(key) {
                Some(window) => window,
                None => {
                    let window = Arc::new(FailureWindow::default());
                    self.failures.insert(key.clone(), Arc::clone(&window));
                    window
                }
            };
            window.record(UnixMillis::now(), self.options.failure_window);
            if self.over_failure_budget(key) {
                self.hold_back().await;
            }
        }
    }

    /// Entries in the verified-token cache.
    pub fn verified_entries(&self) -> u64 {
        self.verified.len() as u64
    }
}

/// An argon2 slot, counted in `keyrack_argon2_running` while held.
pub struct HashSlot<'a> {
    _permit: SemaphorePermit<'a>,
}

impl Drop for HashSlot<'_> {
    fn drop(&mut self) {
        crate::metrics::metrics().argon2_running.dec();
    }
}

/// argon2 failures of one key id in a fixed window.
#[derive(Debug, Default)]
struct FailureWindow {
    started: AtomicI64,
    failures: AtomicU32,
}

impl FailureWindow {
    /// Failures in the window that contains `now` (0 once it has ended).
    fn failures_at(&self, now: UnixMillis, window: Duration) -> u32 {
        if now.0 - self.started.load(Ordering::Relaxed) >= window.as_millis() as i64 {
            0
        } else {
            self.failures.load(Ordering::Relaxed)
        }
    }

    /// Counts a failure, opening a new window when the last one ended.
    fn record(&self, now: UnixMillis, window: Duration) {
        let started = self.started.load(Ordering::Relaxed);
        if now.0 - started >= window.as_millis() as i64 {
            // Races between two failures here only lose a count or two.
            self.started.store(now.0, Ordering::Relaxed);
            self.failures.store(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether an acceptance (`VerifyGuard::verified_fingerprint`) was made
/// against this very hash: a cached acceptance counts for nothing else.
pub fn accepted_against(accepted: Option<HashFingerprint>, hash: &SecretHash) -> bool {
    accepted.is_some_and(|fingerprint| fingerprint == hash.fingerprint())
}
