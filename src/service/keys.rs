//! Operations on API keys.

use super::{Authority, Caller, MintedKey, PageRequest, require_future, with_retries};
use crate::domain::key::{Origin, SecretHash};
use crate::domain::labels::Labels;
use crate::domain::scope;
use crate::domain::usage::{Credits, RateLimit};
use crate::domain::{
    ApiKey, Error, Identity, IdentityId, IdentityKind, KeyId, SecretString, State, UnixMillis,
    Violations,
};
use crate::store::StoreError;
use crate::store::journal;
use ipnet::IpNet;
use std::sync::Arc;
use std::time::Duration;

/// Longest grace period a roll may give the old key.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// When the old key of a roll stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKeyEnd {
    /// At once: it is removed in the same atomic change.
    Now,
    /// After this long.
    After(Duration),
    /// At this time.
    At(UnixMillis),
}

/// A roll to perform.
#[derive(Debug)]
pub struct RollRequest {
    /// The key to replace.
    pub key_id: KeyId,
    /// When the old key stops.
    pub old_key_end: OldKeyEnd,
    /// The caller's current TOTP code.
    pub totp_code: SecretString,
    /// When the replacement stops working.
    pub new_key_expire_time: Option<UnixMillis>,
}

/// The outcome of a roll.
#[derive(Debug)]
pub struct Rolled {
    /// The replacement and its token.
    pub minted: MintedKey,
    /// The old key as it stands in grace; `None` when it stopped at once.
    pub previous: Option<ApiKey>,
}

/// A key to mint, already validated at the edge.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The owner.
    pub identity_id: IdentityId,
    /// `^[A-Za-z0-9_]{1,30}$`, unique within the identity.
    pub name: String,
    /// At most 256 characters.
    pub description: String,
    /// When it stops working.
    pub expire_time: Option<UnixMillis>,
    /// Narrows the identity's allow-list.
    pub allowed_cidrs: Vec<IpNet>,
    /// Narrows the identity's scopes; each must be one the identity grants.
    pub scopes: Vec<String>,
    /// Narrows the identity's datasets; each must be one the identity holds.
    pub datasets: Vec<String>,
    /// Labels.
    pub labels: Labels,
    /// Mints a decoy (see `ApiKey::honeytoken`).
    pub honeytoken: bool,
    /// The key's own rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// The key's starting balance of uses.
    pub credits: Option<Credits>,
}

/// Fields to change on a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new expiry; `Some(None)` clears it.
    pub expire_time: Option<Option<UnixMillis>>,
    /// A new allow-list.
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// A new scope list (within the identity's).
    pub scopes: Option<Vec<String>>,
    /// A new dataset list (within the identity's).
    pub datasets: Option<Vec<String>>,
    /// New labels (replacing all).
    pub labels: Option<Labels>,
    /// New rate limits (replacing all).
    pub rate_limits: Option<Vec<RateLimit>>,
    /// New credits (a new grant, or none); `Some(None)` removes them.
    pub credits: Option<Option<Credits>>,
    /// A new balance for the key's credits (a top-up), granted now.
    pub credits_remaining: Option<u64>,
}

/// A key may narrow its identity's scopes and datasets, never widen them:
/// each entry must be one the identity grants. `prefix` is the request's path
/// to the key's fields (`""` or `"key."`).
fn require_within_identity(
    identity: &Identity,
    prefix: &str,
    scopes: &[String],
    datasets: &[String],
) -> Result<(), Error> {
    let mut violations = Violations::new();
    for (index, wanted) in scopes.iter().enumerate() {
        if !scope::any_covers(&identity.scopes, wanted) {
            violations.add(
                format!("{prefix}scopes[{index}]"),
                format!(
                    "{wanted:?} is not granted to identity {}; a key may only narrow its identity's scopes",
                    identity.id
                ),
            );
        }
    }
    for (index, wanted) in datasets.iter().enumerate() {
        if !identity.datasets.contains(wanted) {
            violations.add(
                format!("{prefix}datasets[{index}]"),
                format!(
                    "identity {} has no access to dataset {wanted:?}; a key may only narrow its identity's datasets",
                    identity.id
                ),
            );
        }
    }
    violations.finish()
}

/// A person's lifetime, and so its keys', belongs to the identity provider:
/// admins may not give them an expiry.
pub(super) fn require_lifetime_owned_by_admins(identity: &Identity) -> Result<(), Error> {
    if identity.kind == IdentityKind::Person {
        return Err(Error::FailedPrecondition(
            "the expiry of a person identity and its keys is owned by the identity provider".into(),
        ));
    }
    Ok(())
}

impl Authority {
    /// Mints a key for an existing identity.
    pub async fn create_key(&self, request: NewKey) -> Result<MintedKey, Error> {
        let now = UnixMillis::now();
        require_future("expire_time", request.expire_time, now)?;
        // Reading the identity first gives a clear NOT_FOUND before any hashing;
        // the store re-checks atomically when it writes.
        let identity = self.get_identity(&request.identity_id).await?;
        require_within_identity(&identity, "", &request.scopes, &request.datasets)?;
        if request.expire_time.is_some() {
            require_lifetime_owned_by_admins(&identity)?;
        }
        let mut minted = self
            .mint(&request.identity_id, request.name, now, Origin::CreateKey)
            .await?;
        minted.key.description = request.description;
        minted.key.expire_time = request.expire_time;
        minted.key.allowed_cidrs = request.allowed_cidrs;
        minted.key.scopes = request.scopes;
        minted.key.datasets = request.datasets;
        minted.key.labels = request.labels;
        minted.key.honeytoken = request.honeytoken;
        minted.key.rate_limits = request.rate_limits;
        minted.key.credits = request.credits;
        journal::add_target(minted.key.id.as_str());
        journal::arm();
        self.store
            .create_key(&minted.key)
            .await
            .map_err(|error| match Error::from(error) {
                Error::NotFound(_) => Error::NotFound(format!("identity {}", request.identity_id)),
                other => other,
            })?;
        tracing::info!(key_id = %minted.key.id, identity_id = %request.identity_id, "key created");
        Ok(minted)
    }

    /// One key.
    pub async fn get_key(&self, id: &KeyId) -> Result<ApiKey, Error> {
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key {id}")))
    }

    /// Applies `changes` to a key.
    pub async fn update_key(&self, id: &KeyId, changes: KeyChanges) -> Result<ApiKey, Error> {
        let now = UnixMillis::now();
        if let Some(expire_time) = changes.expire_time {
            require_future("key.expire_time", expire_time, now)?;
        }
        with_retries("key", || async {
            let mut key = self.get_key(id).await?;
            if let Some(name) = &changes.name {
                key.name = name.clone();
            }
            if let Some(description) = &changes.description {
                key.description = description.clone();
            }
            if let Some(expire_time) = changes.expire_time {
                require_lifetime_owned_by_admins(&self.get_identity(&key.identity_id).await?)?;
                key.expire_time = expire_time;
            }
            if let Some(cidrs) = &changes.allowed_cidrs {
                key.allowed_cidrs = cidrs.clone();
            }
            if changes.scopes.is_some() || changes.datasets.is_some() {
                let identity = self.get_identity(&key.identity_id).await?;
                require_within_identity(
                    &identity,
                    "key.",
                    changes.scopes.as_deref().unwrap_or_default(),
                    changes.datasets.as_deref().unwrap_or_default(),
                )?;
            }
            if let Some(scopes) = &changes.scopes {
                key.scopes = scopes.clone();
            }
            if let Some(datasets) = &changes.datasets {
                key.datasets = datasets.clone();
            }
            if let Some(labels) = &changes.labels {
                key.labels = labels.clone();
            }
            if let Some(rate_limits) = &changes.rate_limits {
                key.rate_limits = rate_limits.clone();
            }
            if let Some(credits) = &changes.credits {
                key.credits = credits.clone();
            }
            // A whole new `credits` already grants its own balance.
            if let Some(remaining) = changes
                .credits_remaining
                .filter(|_| changes.credits.is_none())
            {
                let Some(credits) = &mut key.credits else {
                    return Err(Error::FailedPrecondition(format!(
                        "key {id} has no credits; set `credits` to give it a balance"
                    )));
                };
                credits.remaining = remaining;
                credits.granted_at = now;
            }
            journal::arm();
            Ok(self.store.update_key(&key).await?)
        })
        .await
    }

    /// Disables or enables a key.
    pub async fn set_key_state(&self, id: &KeyId, state: State) -> Result<ApiKey, Error> {
        with_retries("key", || async {
            let mut key = self.get_key(id).await?;
            self.require_service_owner(&key.identity_id).await?;
            if key.state == state {
                return Ok(key);
            }
            key.state = state;
            journal::arm();
            let stored = self.store.update_key(&key).await?;
            tracing::info!(key_id = %id, ?state, "key state changed");
            Ok(stored)
        })
        .await
    }

    /// Removes a key for good.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<(), Error> {
        journal::arm();
        if self.store.delete_key(id).await? {
            tracing::info!(key_id = %id, "key revoked");
            Ok(())
        } else {
            Err(Error::NotFound(format!("key {id}")))
        }
    }

    /// Replaces a key: a new key on the same identity (so with its datasets,
    /// CIDRs and admin flag), the old one removed now or kept until a grace
    /// deadline that is its record's native TTL. Needs the caller's TOTP code.
    pub async fn roll_key(&self, caller: &Caller, request: RollRequest) -> Result<Rolled, Error> {
        let now = UnixMillis::now();
        let old = self.get_key(&request.key_id).await?;
        self.require_service_owner(&old.identity_id).await?;
        if let Some(successor) = &old.rolled_to {
            return Err(Error::FailedPrecondition(format!(
                "key {} was already rolled to {successor}; roll the replacement instead",
                old.id
            )));
        }
        if old.honeytoken {
            // A decoy has no user who needs a replacement; a roll would only
            // mint a working twin of it.
            return Err(Error::FailedPrecondition(format!(
                "key {} is a honeytoken; honeytokens cannot be rolled",
                old.id
            )));
        }
        if old.state == State::Disabled {
            return Err(Error::FailedPrecondition(format!(
                "key {} is disabled; enable it before rolling",
                old.id
            )));
        }
        let requested_deadline = match request.old_key_end {
            OldKeyEnd::Now => None,
            OldKeyEnd::After(period) if period.is_zero() => None,
            OldKeyEnd::After(period) => Some(now.plus(period)),
            OldKeyEnd::At(time) => {
                require_future("old_key_expire_time", Some(time), now)?;
                // The same bound as a grace period: a deadline is a grace
                // period written as a time.
                if time > now.plus(MAX_GRACE_PERIOD) {
                    return Err(Error::invalid(
                        "old_key_expire_time",
                        format!(
                            "must be at most {} days from now",
                            MAX_GRACE_PERIOD.as_secs() / 86_400
                        ),
                    ));
                }
                Some(time)
            }
        };
        require_future("new_key_expire_time", request.new_key_expire_time, now)?;
        // The grace can never outlive the old key's own expiry.
        let grace_deadline = requested_deadline.map(|deadline| {
            UnixMillis::earliest([Some(deadline), old.expire_time]).unwrap_or(deadline)
        });
        if self.options.totp_for_roll {
            self.require_totp(caller, request.totp_code.expose())
                .await?;
        }
        let mut minted = self
            .mint(&old.identity_id, old.name.clone(), now, Origin::Roll)
            .await?;
        minted.key.description = old.description.clone();
        minted.key.allowed_cidrs = old.allowed_cidrs.clone();
        // The replacement keeps the old key's narrowing as it was, even where
        // the identity has since lost a grant: Verify intersects anyway.
        minted.key.scopes = old.scopes.clone();
        minted.key.datasets = old.datasets.clone();
        minted.key.labels = old.labels.clone();
        minted.key.expire_time = request.new_key_expire_time;
        minted.key.rolled_from = Some(old.id.clone());
        // The replacement keeps the limits and draws on the old key's very
        // budget, which the old key shares while in grace: a roll is never a
        // way to a fresh budget.
        minted.key.rate_limits = old.rate_limits.clone();
        minted.key.credits = old.credits.clone();
        minted.key.usage_account = Some(old.budget_key().clone());
        let mut retiring = old.clone();
        retiring.rolled_to = Some(minted.key.id.clone());
        retiring.grace_expire_time = grace_deadline;
        journal::add_target(minted.key.id.as_str());
        journal::arm();
        let previous = match self.store.roll_key(&retiring, &minted.key).await {
            Ok(previous) => previous,
            Err(StoreError::Conflict) => {
                let current = self.get_key(&old.id).await?;
                return Err(match current.rolled_to {
                    Some(successor) => Error::FailedPrecondition(format!(
                        "key {} was already rolled to {successor}",
                        old.id
                    )),
                    None => Error::Aborted(format!("key {}", old.id)),
                });
            }
            Err(StoreError::NotFound(_)) => return Err(Error::NotFound(format!("key {}", old.id))),
            Err(other) => return Err(other.into()),
        };
        tracing::info!(
            old_key_id = %old.id,
            new_key_id = %minted.key.id,
            grace_until = ?grace_deadline,
            actor = %caller.identity.id,
            "key rolled"
        );
        Ok(Rolled { minted, previous })
    }

    /// Refuses lifecycle changes that belong to the identity provider.
    async fn require_service_owner(&self, identity: &IdentityId) -> Result<(), Error> {
        if self.get_identity(identity).await?.kind == IdentityKind::Person {
            return Err(Error::FailedPrecondition(
                "keys of person identities are managed by the identity provider".into(),
            ));
        }
        Ok(())
    }
}

/// What a key listing is ordered by (`order_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyOrderField {
    /// Key id: an identity's keys together (the default).
    #[default]
    Id,
    /// Creation time.
    CreateTime,
    /// Expiry; keys that never expire come last.
    ExpireTime,
    /// Last use; keys never used come first.
    LastUseTime,
    /// Name.
    Name,
}

impl KeyOrderField {
    /// The name `order_by` and page tokens use.
    pub fn name(self) -> &'static str {
        match self {
            KeyOrderField::Id => "id",
            KeyOrderField::CreateTime => "create_time",
            KeyOrderField::ExpireTime => "expire_time",
            KeyOrderField::LastUseTime => "last_use_time",
            KeyOrderField::Name => "name",
        }
    }

    /// Parses a field name of `order_by`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            KeyOrderField::Id,
            KeyOrderField::CreateTime,
            KeyOrderField::ExpireTime,
            KeyOrderField::LastUseTime,
            KeyOrderField::Name,
        ]
        .into_iter()
        .find(|field| field.name() == name)
    }
}

/// A listing's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyOrder {
    /// The field.
    pub field: KeyOrderField,
    /// Largest first.
    pub descending: bool,
}

/// Which keys to list and how.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// One identity's keys; `None` lists the whole authority.
    pub identity_id: Option<IdentityId>,
    /// What a key must pass.
    pub filter: crate::domain::key::KeyFilter,
    /// The order of the pages.
    pub order: KeyOrder,
}

/// A page of keys and how many match in all.
#[derive(Debug)]
pub struct KeyPage {
    /// The keys of this page.
    pub items: Vec<ApiKey>,
    /// The token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// Keys matching the query, over all pages.
    pub total_size: usize,
}

/// Where a page ends: the last key's sort value and id, under one order. The
/// next page starts strictly after it, so keys created or removed between
/// pages never make another key appear twice or go missing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KeyCursor {
    order: String,
    descending: bool,
    value: SortValue,
    id: String,
}

/// A key's value under an order; ties are broken by key id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum SortValue {
    Time(i64),
    Text(String),
}

fn sort_value(key: &ApiKey, field: KeyOrderField) -> SortValue {
    match field {
        KeyOrderField::Id => SortValue::Text(String::new()),
        KeyOrderField::CreateTime => SortValue::Time(key.create_time.0),
        KeyOrderField::ExpireTime => SortValue::Time(key.expire_time.map_or(i64::MAX, |t| t.0)),
        KeyOrderField::LastUseTime => SortValue::Time(key.last_use_time.map_or(i64::MIN, |t| t.0)),
        KeyOrderField::Name => SortValue::Text(key.name.clone()),
    }
}

fn invalid_page_token() -> Error {
    Error::invalid(
        "page_token",
        "is not a token this API returned for this order_by",
    )
}

impl KeyCursor {
    fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str, order: KeyOrder) -> Result<Self, Error> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid_page_token())?;
        let cursor: KeyCursor = serde_json::from_slice(&bytes).map_err(|_| invalid_page_token())?;
        if cursor.order != order.field.name() || cursor.descending != order.descending {
            return Err(invalid_page_token());
        }
        Ok(cursor)
    }
}

/// Identities whose keys are read at once while listing the authority.
const IDENTITIES_PER_BATCH: usize = 256;

impl Authority {
    /// Every key the query selects, in the query's order. Reads each
    /// candidate key once: one identity's keys (one pipelined read per
    /// identity) or, authority-wide, every identity's.
    pub async fn matching_keys(&self, query: &KeyQuery) -> Result<Vec<ApiKey>, Error> {
        let identity_id = query
            .identity_id
            .as_ref()
            .or(query.filter.identity_id.as_ref());
        let mut matching = Vec::new();
        let mut keep = |keys: Vec<ApiKey>, identity: &Identity| {
            matching.extend(
                keys.into_iter()
                    .filter(|key| query.filter.matches(key, Some(identity))),
            );
        };
        match identity_id {
            Some(id) => {
                let identity = match self.get_identity(id).await {
                    Ok(identity) => identity,
                    // A filter naming an identity that is gone matches nothing.
                    Err(Error::NotFound(_)) if query.identity_id.is_none() => {
                        return Ok(Vec::new());
                    }
                    Err(error) => return Err(error),
                };
                let keys = self.store.all_keys_of(&identity.id).await?;
                keep(keys, &identity);
            }
            None => {
                let mut after: Option<IdentityId> = None;
                loop {
                    let identities = self
                        .store
                        .list_identities(after.as_ref(), IDENTITIES_PER_BATCH)
                        .await?;
                    let exhausted = identities.len() < IDENTITIES_PER_BATCH;
                    after = identities.last().map(|identity| identity.id.clone());
                    // The multiplexed connection pipelines these reads.
                    let keys = futures_util::future::try_join_all(
                        identities
                            .iter()
                            .map(|identity| self.store.all_keys_of(&identity.id)),
                    )
                    .await?;
                    for (identity, keys) in identities.iter().zip(keys) {
                        keep(keys, identity);
                    }
                    if exhausted {
                        break;
                    }
                }
            }
        }
        let order = query.order;
        matching.sort_by(|a, b| {
            let ascending = sort_value(a, order.field)
                .cmp(&sort_value(b, order.field))
                .then_with(|| a.id.cmp(&b.id));
            if order.descending {
                ascending.reverse()
            } else {
                ascending
            }
        });
        Ok(matching)
    }

    /// A page of the keys the query selects, with the total.
    pub async fn list_keys_page(
        &self,
        query: &KeyQuery,
        page: &PageRequest,
    ) -> Result<KeyPage, Error> {
        let cursor = match page.page_token.as_str() {
            "" => None,
            token => Some(KeyCursor::decode(token, query.order)?),
        };
        let matching = self.matching_keys(query).await?;
        let total_size = matching.len();
        let order = query.order;
        let start = match &cursor {
            None => 0,
            Some(cursor) => matching.partition_point(|key| {
                let position = sort_value(key, order.field)
                    .cmp(&cursor.value)
                    .then_with(|| key.id.as_str().cmp(cursor.id.as_str()));
                let position = if order.descending {
                    position.reverse()
                } else {
                    position
                };
                position != std::cmp::Ordering::Greater
            }),
        };
        let limit = page.limit();
        let more = matching.len() - start > limit;
        let items: Vec<ApiKey> = matching.into_iter().skip(start).take(limit).collect();
        let next_page_token = more.then(|| items.last()).flatten().map(|last| {
            KeyCursor {
                order: order.field.name().to_owned(),
                descending: order.descending,
                value: sort_value(last, order.field),
                id: last.id.to_string(),
            }
            .encode()
        });
        Ok(KeyPage {
            items,
            next_page_token,
            total_size,
        })
    }

    /// The identities with how many keys each holds (read concurrently).
    pub async fn with_key_counts(&self, identities: Vec<Identity>) -> Result<Vec<Identity>, Error> {
        let counts = futures_util::future::try_join_all(
            identities
                .iter()
                .map(|identity| self.store.all_keys_of(&identity.id)),
        )
        .await?;
        Ok(identities
            .into_iter()
            .zip(counts)
            .map(|(mut identity, keys)| {
                identity.key_count = keys.len() as u64;
                identity
            })
            .collect())
    }
}

/// Keys one BatchRevokeKeys may select: a filter that selects more is refused
/// rather than half-applied.
pub const MAX_BATCH_REVOKE: usize = 10_000;

impl Authority {
    /// Revokes every key `filter` selects across the authority, each as its
    /// own audited `RevokeKey`; with `validate_only`, only lists them. The
    /// real revoke needs the caller's TOTP code, as a roll does.
    pub async fn batch_revoke_keys(
        &self,
        caller: &Caller,
        filter: crate::domain::key::KeyFilter,
        validate_only: bool,
        totp_code: &SecretString,
    ) -> Result<(Vec<ApiKey>, usize), Error> {
        let query = KeyQuery {
            filter,
            ..KeyQuery::default()
        };
        let selected = self.matching_keys(&query).await?;
        if selected.len() > MAX_BATCH_REVOKE {
            return Err(Error::FailedPrecondition(format!(
                "the filter selects {} keys; narrow it to at most {MAX_BATCH_REVOKE}",
                selected.len()
            )));
        }
        if validate_only {
            return Ok((selected, 0));
        }
        if self.options.totp_for_roll {
            self.require_totp(caller, totp_code.expose()).await?;
        }
        let template = journal::current_event();
        let mut revoked = 0;
        for key in &selected {
            let revoke = self.revoke_key(&key.id);
            let outcome = match &template {
                Some(template) => {
                    let mut event = template.clone();
                    event.action = "RevokeKey".to_owned();
                    event.target_ids = vec![key.id.to_string()];
                    self.audited(event, revoke, |error: &Error| error.code_name().to_owned())
                        .await
                }
                None => revoke.await,
            };
            match outcome {
                Ok(()) => revoked += 1,
                // Revoked concurrently, or expired since it was selected.
                Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        tracing::info!(revoked, actor = %caller.identity.id, "keys revoked in a batch");
        Ok((selected, revoked))
    }
}

/// Shortest and longest token ImportKeys accepts.
pub const IMPORTED_TOKEN_CHARS: std::ops::RangeInclusive<usize> = 20..=256;
/// Most keys one ImportKeys call brings in.
pub const MAX_IMPORTED_KEYS: usize = 1000;

/// A token of another system to bring under keyrack, already checked at the
/// edge for its own fields.
#[derive(Debug)]
pub struct ImportedKey {
    /// Unique within the identity.
    pub name: String,
    /// At most 256 characters.
    pub description: String,
    /// When it stops working.
    pub expire_time: Option<UnixMillis>,
    /// The token as the other system issued it.
    pub token: SecretString,
    /// Import it disabled.
    pub disabled: bool,
}

/// Whether `token` can be an imported token: printable ASCII of an accepted
/// length. (Anything else costs Verify no lookup.)
pub fn importable_shape(token: &str) -> bool {
    IMPORTED_TOKEN_CHARS.contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

impl Authority {
    /// Brings tokens of another system under keyrack as keys of one identity:
    /// each stored as argon2id like any key, and found by Verify through an
    /// index keyed by an HMAC of the token. Nothing of a token is stored in
    /// the clear. All tokens are checked before any is written.
    pub async fn import_keys(
        &self,
        identity_id: &IdentityId,
        keys: Vec<ImportedKey>,
    ) -> Result<Vec<ApiKey>, Error> {
        let now = UnixMillis::now();
        let identity = self.get_identity(identity_id).await?;
        if keys.iter().any(|key| key.expire_time.is_some()) {
            require_lifetime_owned_by_admins(&identity)?;
        }
        let mut violations = Violations::new();
        let mut digests: Vec<Vec<String>> = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let field = format!("keys[{index}].token");
            let token = key.token.expose();
            if !importable_shape(token) {
                violations.add(
                    &field,
                    format!(
                        "must be {} to {} printable ASCII characters",
                        IMPORTED_TOKEN_CHARS.start(),
                        IMPORTED_TOKEN_CHARS.end()
                    ),
                );
            } else if crate::domain::token::parse(&self.options.token_prefix, token).is_ok() {
                violations.add(&field, "is a keyrack token already; it needs no import");
            } else if keys[..index]
                .iter()
                .any(|earlier| earlier.token.expose() == token)
            {
                violations.add(&field, "is listed twice");
            } else if self
                .store
                .find_imported(&self.hasher.import_digests(&key.token))
                .await?
                .is_some()
            {
                violations.add(&field, "was imported already");
            }
            if key.expire_time.is_some_and(|time| time <= now) {
                violations.add(
                    format!("keys[{index}].expire_time"),
                    "must be in the future",
                );
            }
            digests.push(self.hasher.import_digests(&key.token));
        }
        violations.finish()?;
        self.note_imports();
        let mut imported: Vec<(ApiKey, String)> = Vec::with_capacity(keys.len());
        for (key, digests) in keys.into_iter().zip(digests) {
            match self.import_one(identity_id, key, &digests[0], now).await {
                Ok(record) => imported.push((record, digests[0].clone())),
                Err(error) => {
                    self.undo_imports(&imported).await;
                    return Err(error);
                }
            }
        }
        Ok(imported.into_iter().map(|(record, _)| record).collect())
    }

    /// Takes back the keys of an import that failed part-way, so it leaves
    /// nothing behind. Best effort: a key this cannot delete (the store
    /// failed again) is logged for an admin to revoke.
    async fn undo_imports(&self, imported: &[(ApiKey, String)]) {
        for (record, digest) in imported {
            let deleted = self.store.delete_key(&record.id).await;
            let released = self.store.release_import(digest).await;
            if deleted.is_err() || released.is_err() {
                tracing::error!(
                    key_id = %record.id,
                    "a failed import could not take back this imported key; revoke it"
                );
            }
        }
    }

    /// Stores one checked imported key: its index entry, then its record.
    async fn import_one(
        &self,
        identity_id: &IdentityId,
        key: ImportedKey,
        current: &str,
        now: UnixMillis,
    ) -> Result<ApiKey, Error> {
        let token = key.token;
        let hasher = Arc::clone(&self.hasher);
        let hashed = token.clone();
        let secret_hash = self.hash_pool.run(move || hasher.hash(&hashed)).await??;
        let id = KeyId::generate(identity_id);
        let hint: String = token.expose().chars().take(4).collect();
        let record = ApiKey {
            id: id.clone(),
            identity_id: identity_id.clone(),
            name: key.name,
            description: key.description,
            state: if key.disabled {
                State::Disabled
            } else {
                State::Active
            },
            create_time: now,
            expire_time: key.expire_time,
            last_use_time: None,
            rolled_from: None,
            rolled_to: None,
            grace_expire_time: None,
            token_hint: format!("{hint}…"),
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            datasets: Vec::new(),
            labels: Labels::new(),
            origin: Some(Origin::Import),
            honeytoken: false,
            rate_limits: Vec::new(),
            credits: None,
            usage_account: None,
            secret_hash: SecretHash::Phc(secret_hash),
            revision: 0,
        };
        // The index entry comes first, so a token is never stored without
        // a way to find it; a failed write takes it back.
        if !self.store.claim_import(current, &id).await? {
            return Err(Error::AlreadyExists(
                "a token of this import, imported by a concurrent request,".into(),
            ));
        }
        journal::add_target(id.as_str());
        if let Err(error) = self.store.create_key(&record).await {
            let _ = self.store.release_import(current).await;
            return Err(match Error::from(error) {
                Error::NotFound(_) => Error::NotFound(format!("identity {identity_id}")),
                other => other,
            });
        }
        tracing::info!(key_id = %id, identity_id = %identity_id, "key imported");
        Ok(record)
    }
}
