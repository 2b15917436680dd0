//! The authority's operations over a [`Store`]: what an admin may do to
//! identities and keys, and how a token is verified. Transport-free: the gRPC
//! layer converts requests into the inputs here and errors into statuses.

pub mod audit;
mod datasets;
pub mod events;
pub mod expiry;
pub mod guard;
mod hash_pool;
pub mod hashing;
mod identities;
pub mod keyring;
mod keys;
mod last_use;
mod people;
mod rotation;
pub mod sealing;
pub mod sessions;
pub mod tarpit;
mod totp;
mod verify;
pub mod webhooks;

pub use datasets::{CreatedDataset, NewDataset};
pub use identities::{IdentityChanges, NewIdentity};
pub use keys::{
    ImportedKey, KeyChanges, KeyOrder, KeyOrderField, KeyPage, KeyQuery, MAX_BATCH_REVOKE,
    MAX_GRACE_PERIOD, MAX_IMPORTED_KEYS, NewKey, OldKeyEnd, RollRequest, Rolled,
};
pub use people::{MAX_EXTERNAL_ID_CHARS, PersonProfile};
pub use rotation::UnderOlderSecret;
pub use totp::TotpEnrollment;
pub use verify::{CallContext, Caller, VerifyQuery};

use crate::domain::key::Origin;
use crate::domain::token::{self, TokenPrefix};
use crate::domain::{ApiKey, Error, IdentityId, KeyId, SecretString, Subject, UnixMillis};
use crate::store::{Store, StoreError};
use guard::{GuardOptions, VerifyGuard};
use hash_pool::HashPool;
use hashing::SecretHasher;
use keyring::Keyring;
use last_use::LastUseTracker;
use sealing::SeedSealer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tracing::Instrument;

/// Most items one List call returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Items a List call returns when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// How often a read-modify-write is retried when a concurrent change wins.
const WRITE_ATTEMPTS: usize = 3;

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => Error::Unavailable(cause),
            StoreError::NotFound(what) => Error::NotFound(what.to_owned()),
            StoreError::NameTaken(name) => Error::AlreadyExists(format!("name {name:?}")),
            StoreError::Conflict => Error::Aborted("the record".to_owned()),
            StoreError::Corrupt(cause) => Error::Internal(cause),
            StoreError::NotDurable(why) => Error::NotDurable(why),
            refused @ StoreError::DatasetUnavailable(_) => {
                datasets::refused_grant("datasets")(refused)
            }
        }
    }
}

/// A page of results and where the next one starts.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, ordered by id.
    pub items: Vec<T>,
    /// The token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A page request as the caller made it.
#[derive(Debug, Default, Clone)]
pub struct PageRequest {
    /// 0 means the default.
    pub page_size: usize,
    /// Empty for the first page.
    pub page_token: String,
}

impl PageRequest {
    fn limit(&self) -> usize {
        match self.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }
}

/// Reads batches of `limit` items after a cursor and keeps those that pass
/// `filter` until a page is full or the listing ends, so a short page always
/// means the last page. `cursor_of` names an item for the next page token.
async fn filtered_page<T, C, Fut>(
    limit: usize,
    mut after: Option<C>,
    mut fetch: impl FnMut(Option<C>, usize) -> Fut,
    cursor_of: impl Fn(&T) -> C,
    filter: impl Fn(&T) -> bool,
) -> Result<Page<T>, Error>
where
    C: Clone + std::fmt::Display,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut items = Vec::with_capacity(limit);
    loop {
        let batch = fetch(after.clone(), limit).await?;
        let exhausted = batch.len() < limit;
        for item in batch {
            after = Some(cursor_of(&item));
            if filter(&item) {
                items.push(item);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next_page_token: after.map(|cursor| cursor.to_string()),
                    });
                }
            }
        }
        if exhausted {
            return Ok(Page {
                items,
                next_page_token: None,
            });
        }
    }
}

/// A key just minted, with its token: the only time the token exists outside
/// the caller.
#[derive(Debug)]
pub struct MintedKey {
    /// The key as stored.
    pub key: ApiKey,
    /// The whole token.
    pub token: SecretString,
}

/// Configuration of the authority's behaviour.
#[derive(Debug, Clone)]
pub struct AuthorityOptions {
    /// The prefix of minted tokens.
    pub token_prefix: TokenPrefix,
    /// Whether RollKey needs the caller's TOTP code (dev setups may turn it off).
    pub totp_for_roll: bool,
    /// Caches, throttle and argon2 slots of the Verify path.
    pub guard: GuardOptions,
    /// Most keys whose last use is held between flushes.
    pub last_use_capacity: usize,
    /// How event watchers are fed.
    pub events: events::EventOptions,
}

impl Default for AuthorityOptions {
    fn default() -> Self {
        Self {
            token_prefix: TokenPrefix::default(),
            totp_for_roll: true,
            guard: GuardOptions::default(),
            last_use_capacity: 200_000,
            events: events::EventOptions::default(),
        }
    }
}

/// What `Authority::imports` knows: not yet asked (imported tokens are
/// looked up), none ever imported, some imported.
const IMPORTS_UNKNOWN: u8 = 0;
const IMPORTS_NONE: u8 = 1;
const IMPORTS_SEEN: u8 = 2;

/// Most limited keys whose charged records Verify keeps (`charged_records`).
const CHARGED_RECORDS: usize = 10_000;

/// The credential authority: every operation the API offers.
pub struct Authority {
    store: Arc<dyn Store>,
    hasher: Arc<SecretHasher>,
    sealer: SeedSealer,
    guard: VerifyGuard,
    hash_pool: HashPool,
    last_use: LastUseTracker,
    /// A hash of a random secret under the current server secret: what a
    /// token naming an absent key id is checked against, so that it costs
    /// what a wrong secret for a live key costs.
    decoy_hash: String,
    events: events::EventFeed,
    /// With a store that reads every record from Redis: the records of
    /// limited keys as their last charge confirmed them (see `verify.rs`).
    charged_records: Option<quick_cache::sync::Cache<KeyId, Subject>>,
    /// Whether tokens were ever imported into the store, as this replica
    /// last learned (`watch_for_imports`): while the store says none were,
    /// a token not in keyrack's format is refused without an import lookup.
    imports: AtomicU8,
    options: AuthorityOptions,
}

impl Authority {
    /// An authority over `store`, hashing key secrets and sealing TOTP
    /// seeds with `keyring`.
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, options: AuthorityOptions) -> Self {
        let (hasher, sealer) = keyring.into_parts();
        let store_reads_every_time = store.reads_records_every_time();
        let decoy_key = KeyId::generate(&IdentityId::generate());
        let decoy_secret = token::mint(&options.token_prefix, &decoy_key).secret;
        // `Keyring::new` checked the parameters; hashing fails only if
        // argon2 itself is broken, and nothing could be verified then.
        let decoy_hash = hasher
            .hash(&decoy_secret)
            .expect("argon2 hashes with the parameters it accepted");
        Self {
            store,
            decoy_hash,
            hasher: Arc::new(hasher),
            sealer,
            guard: VerifyGuard::new(options.guard.clone()),
            hash_pool: HashPool::new(options.guard.hash_slots),
            last_use: LastUseTracker::new(options.last_use_capacity),
            events: events::EventFeed::new(options.events.clone()),
            imports: AtomicU8::new(IMPORTS_UNKNOWN),
            charged_records: store_reads_every_time
                .then(|| quick_cache::sync::Cache::new(CHARGED_RECORDS)),
            options,
        }
    }

    /// Learns whether tokens were ever imported into the store: asks every
    /// `interval` until they were (an import through this replica tells it
    /// at once), then returns. Another replica's first import is thus looked
    /// up here within about `interval`.
    pub async fn watch_for_imports(&self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.imports.load(Ordering::Relaxed) != IMPORTS_SEEN {
            ticks.tick().await;
            match self.store.has_imports().await {
                Ok(true) => self.imports.store(IMPORTS_SEEN, Ordering::Relaxed),
                Ok(false) => {
                    // Never over an import this replica made meanwhile.
                    let _ = self.imports.compare_exchange(
                        IMPORTS_UNKNOWN,
                        IMPORTS_NONE,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, "could not learn whether tokens were imported")
                }
            }
        }
    }

    /// Whether a token not in keyrack's format may be an imported one, so
    /// worth an import lookup: unless the store said none was ever imported.
    fn imports_possible(&self) -> bool {
        self.imports.load(Ordering::Relaxed) != IMPORTS_NONE
    }

    /// This replica imports tokens: it looks them up from now on (the
    /// store's marker tells the others).
    fn note_imports(&self) {
        self.imports.store(IMPORTS_SEEN, Ordering::Relaxed);
    }

    /// Writes the key uses noted since the last flush to the store. On
    /// failure they are dropped: last-use times are approximate, and a store
    /// that cannot take them will not take them later either.
    pub async fn flush_last_use(&self) {
        let uses = self.last_use.take();
        if uses.is_empty() {
            return;
        }
        if let Err(error) = self.store.record_key_use(&uses).await {
            tracing::warn!(%error, keys = uses.len(), "could not record key last-use times");
        }
    }

    /// Entries in the verified-token cache, for the benchmark's memory figures.
    pub fn cached_tokens(&self) -> u64 {
        self.guard.verified_entries()
    }

    /// The store, for health checks.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Mints a token and hashes its secret (on the hashing pool) for a new key
    /// of `identity`; the caller fills in the key's other fields.
    async fn mint(
        &self,
        identity: &IdentityId,
        name: String,
        now: UnixMillis,
        origin: Origin,
    ) -> Result<MintedKey, Error> {
        let id = KeyId::generate(identity);
        let minted = token::mint(&self.options.token_prefix, &id);
        let hasher = Arc::clone(&self.hasher);
        let secret = minted.secret;
        let secret_hash = self
            .hash_pool
            .run(move || hasher.hash(&secret))
            .instrument(tracing::debug_span!("argon2.hash"))
            .await??;
        let key = ApiKey {
            id,
            identity_id: identity.clone(),
            name,
            description: String::new(),
            state: crate::domain::State::Active,
            create_time: now,
            expire_time: None,
            last_use_time: None,
            rolled_from: None,
            rolled_to: None,
            grace_expire_time: None,
            token_hint: minted.hint,
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            datasets: Vec::new(),
            labels: Default::default(),
            origin: Some(origin),
            honeytoken: false,
            rate_limits: Vec::new(),
            credits: None,
            usage_account: None,
            secret_hash: crate::domain::SecretHash::Phc(secret_hash),
            revision: 0,
        };
        Ok(MintedKey {
            key,
            token: minted.token,
        })
    }

    /// Checks a secret against a PHC string on the hashing pool.
    async fn secret_matches(&self, secret: &str, phc: &str) -> Result<bool, Error> {
        let hasher = Arc::clone(&self.hasher);
        let secret = SecretString::new(secret.to_owned());
        let phc = phc.to_owned();
        self.hash_pool
            .run(move || hasher.verify(secret.expose(), &phc))
            .instrument(tracing::debug_span!("argon2.verify"))
            .await
    }
}

/// Refuses a time that is not in the future.
fn require_future(field: &str, time: Option<UnixMillis>, now: UnixMillis) -> Result<(), Error> {
    match time {
        Some(time) if time <= now => Err(Error::invalid(field, "must be in the future")),
        _ => Ok(()),
    }
}

/// Runs a read-modify-write, retrying when a concurrent change wins the race.
async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    for _ in 1..WRITE_ATTEMPTS {
        match attempt().await {
            Err(Error::Aborted(_)) => continue,
            other => return other,
        }
    }
    attempt().await.map_err(|error| match error {
        Error::Aborted(_) => Error::Aborted(what.to_owned()),
        other => other,
    })
}
