//! Operations on API keys.

use super::{Authority, MintedKey, Page, PageRequest, require_future, with_retries};
use crate::domain::{ApiKey, Error, IdentityId, IdentityKind, KeyId, State, UnixMillis};
use ipnet::IpNet;

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
            let stored = self.store.update_key(&key).await?;
            tracing::info!(key_id = %id, ?state, "key state changed");
            Ok(stored)
        })
        .await
    }

    /// Removes a key for good.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<(), Error> {
        if self.store.delete_key(id).await? {
            tracing::info!(key_id = %id, "key revoked");
            Ok(())
        } else {
            Err(Error::NotFound(format!("key {id}")))
        }
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
