//! Operations on API keys.

use super::{Authority, Caller, MintedKey, Page, PageRequest, require_future, with_retries};
use crate::domain::{
    ApiKey, Error, IdentityId, IdentityKind, KeyId, SecretString, State, UnixMillis,
};
use crate::store::StoreError;
use crate::store::journal;
use ipnet::IpNet;
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
}

impl Authority {
    /// Mints a key for an existing identity.
    pub async fn create_key(&self, request: NewKey) -> Result<MintedKey, Error> {
        let now = UnixMillis::now();
        require_future("expire_time", request.expire_time, now)?;
        // Reading the identity first gives a clear NOT_FOUND before any hashing;
        // the store re-checks atomically when it writes.
        self.get_identity(&request.identity_id).await?;
        let mut minted = self.mint(&request.identity_id, request.name, now).await?;
        minted.key.description = request.description;
        minted.key.expire_time = request.expire_time;
        minted.key.allowed_cidrs = request.allowed_cidrs;
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

    /// A page of one identity's keys, ordered by id.
    pub async fn list_keys(
        &self,
        identity: &IdentityId,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>, Error> {
        self.get_identity(identity).await?;
        let after =
            match page.page_token.as_str() {
                "" => None,
                token => Some(KeyId::parse(token).map_err(|_| {
                    Error::invalid("page_token", "is not a token this API returned")
                })?),
            };
        let limit = page.limit();
        let items = self
            .store
            .list_keys(identity, after.as_ref(), limit)
            .await?;
        let next_page_token = (items.len() == limit)
            .then(|| items.last().map(|key| key.id.to_string()))
            .flatten();
        Ok(Page {
            items,
            next_page_token,
        })
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
                key.expire_time = expire_time;
            }
            if let Some(cidrs) = &changes.allowed_cidrs {
                key.allowed_cidrs = cidrs.clone();
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
        // The grace can never outlive the old key's own expiry.
        let grace_deadline = requested_deadline.map(|deadline| {
            UnixMillis::earliest([Some(deadline), old.expire_time]).unwrap_or(deadline)
        });
        if self.options.totp_for_roll {
            self.require_totp(caller, request.totp_code.expose())
                .await?;
        }
        let mut minted = self.mint(&old.identity_id, old.name.clone(), now).await?;
        minted.key.description = old.description.clone();
        minted.key.allowed_cidrs = old.allowed_cidrs.clone();
        minted.key.rolled_from = Some(old.id.clone());
        let mut retiring = old.clone();
        retiring.rolled_to = Some(minted.key.id.clone());
        retiring.grace_expire_time = grace_deadline;
        journal::add_target(minted.key.id.as_str());
        journal::arm();
        match self.store.roll_key(&retiring, &minted.key).await {
            Ok(()) => {}
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
        }
        tracing::info!(
            old_key_id = %old.id,
            new_key_id = %minted.key.id,
            grace_until = ?grace_deadline,
            actor = %caller.identity.id,
            "key rolled"
        );
        let previous = grace_deadline.map(|_| {
            retiring.revision += 1;
            retiring
        });
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
