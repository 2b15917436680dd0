//! Operations on identities.

use super::{Authority, MintedKey, Page, PageRequest, require_future, with_retries};
use crate::domain::key::Origin;
use crate::domain::labels::Labels;
use crate::domain::names::IdentityName;
use crate::domain::usage::RateLimit;
use crate::domain::{Error, Identity, IdentityId, IdentityKind, State, UnixMillis};
use crate::store::journal;
use ipnet::IpNet;

/// The first key of a new identity is called this.
pub const FIRST_KEY_NAME: &str = "default";

/// A service identity to create, already validated at the edge.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    /// Unique in the authority.
    pub name: IdentityName,
    /// At most 256 characters.
    pub description: String,
    /// Existing datasets.
    pub datasets: Vec<String>,
    /// Allowed CIDRs.
    pub allowed_cidrs: Vec<IpNet>,
    /// Scopes its keys may be granted.
    pub scopes: Vec<String>,
    /// Labels.
    pub labels: Labels,
    /// Whether it may call AdminService.
    pub admin: bool,
    /// When it stops working.
    pub expire_time: Option<UnixMillis>,
    /// One budget shared by all its keys.
    pub rate_limits: Vec<RateLimit>,
}

impl NewIdentity {
    /// A service identity named `name`, with nothing else set.
    pub fn named(name: IdentityName) -> Self {
        Self {
            name,
            description: String::new(),
            datasets: Vec::new(),
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            labels: Labels::new(),
            admin: false,
            expire_time: None,
            rate_limits: Vec::new(),
        }
    }
}

/// Fields to change on an identity; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct IdentityChanges {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new dataset list.
    pub datasets: Option<Vec<String>>,
    /// A new allow-list.
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// A new scope list.
    pub scopes: Option<Vec<String>>,
    /// New labels (replacing all).
    pub labels: Option<Labels>,
    /// A new admin flag.
    pub admin: Option<bool>,
    /// A new expiry; `Some(None)` clears it.
    pub expire_time: Option<Option<UnixMillis>>,
    /// New rate limits (replacing all).
    pub rate_limits: Option<Vec<RateLimit>>,
}

impl Authority {
    /// Creates a service identity with its first key.
    pub async fn create_identity(
        &self,
        request: NewIdentity,
    ) -> Result<(Identity, MintedKey), Error> {
        self.create_identity_minting(request, Origin::CreateIdentity)
            .await
    }

    /// Creates a service identity whose first key has `origin`.
    pub(super) async fn create_identity_minting(
        &self,
        request: NewIdentity,
        origin: Origin,
    ) -> Result<(Identity, MintedKey), Error> {
        let now = UnixMillis::now();
        require_future("expire_time", request.expire_time, now)?;
        let mut identity = Identity::new_service(request.name, request.description, now);
        identity.datasets = request.datasets;
        identity.allowed_cidrs = request.allowed_cidrs;
        identity.scopes = request.scopes;
        identity.labels = request.labels;
        identity.rate_limits = request.rate_limits;
        identity.admin = request.admin;
        identity.expire_time = request.expire_time;
        let first = self
            .mint(&identity.id, FIRST_KEY_NAME.to_owned(), now, origin)
            .await?;
        journal::add_target(identity.id.as_str());
        journal::add_target(first.key.id.as_str());
        journal::arm();
        self.store
            .create_identity(&identity, std::slice::from_ref(&first.key))
            .await
            .map_err(super::datasets::refused_grant("datasets"))?;
        tracing::info!(identity_id = %identity.id, name = %identity.name, admin = identity.admin, "identity created");
        identity.key_count = 1;
        Ok((identity, first))
    }

    /// One identity.
    pub async fn get_identity(&self, id: &IdentityId) -> Result<Identity, Error> {
        self.store
            .get_identity(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("identity {id}")))
    }

    /// A page of identities, ordered by id, that pass `filter`.
    pub async fn list_identities(
        &self,
        page: &PageRequest,
        filter: impl Fn(&Identity) -> bool,
    ) -> Result<Page<Identity>, Error> {
        let after =
            match page.page_token.as_str() {
                "" => None,
                token => Some(IdentityId::parse(token).map_err(|_| {
                    Error::invalid("page_token", "is not a token this API returned")
                })?),
            };
        super::filtered_page(
            page.limit(),
            after,
            |after, limit| async move { self.store.list_identities(after.as_ref(), limit).await },
            |identity: &Identity| identity.id.clone(),
            filter,
        )
        .await
    }

    /// Applies `changes` to an identity.
    pub async fn update_identity(
        &self,
        id: &IdentityId,
        changes: IdentityChanges,
    ) -> Result<Identity, Error> {
        let now = UnixMillis::now();
        if let Some(expire_time) = changes.expire_time {
            require_future("identity.expire_time", expire_time, now)?;
        }
        with_retries("identity", || async {
            let mut identity = self.get_identity(id).await?;
            if let Some(name) = &changes.name {
                // The rule depends on the kind: a person keeps its SCIM userName.
                identity.name = IdentityName::parse(identity.kind, name)
                    .map_err(|e| Error::invalid("identity.name", e.to_string()))?;
            }
            if let Some(description) = &changes.description {
                identity.description = description.clone();
            }
            if let Some(datasets) = &changes.datasets {
                identity.datasets = datasets.clone();
            }
            if let Some(cidrs) = &changes.allowed_cidrs {
                identity.allowed_cidrs = cidrs.clone();
            }
            // Keys narrowed to a scope or dataset the identity loses simply
            // lose it: the intersection is taken at Verify time.
            if let Some(scopes) = &changes.scopes {
                identity.scopes = scopes.clone();
            }
            if let Some(labels) = &changes.labels {
                identity.labels = labels.clone();
            }
            if let Some(admin) = changes.admin {
                identity.admin = admin;
            }
            if let Some(rate_limits) = &changes.rate_limits {
                identity.rate_limits = rate_limits.clone();
            }
            if let Some(expire_time) = changes.expire_time {
                super::keys::require_lifetime_owned_by_admins(&identity)?;
                identity.expire_time = expire_time;
            }
            identity.update_time = now;
            journal::arm();
            self.store
                .update_identity(&identity)
                .await
                .map_err(super::datasets::refused_grant("identity.datasets"))
        })
        .await
    }

    /// Disables or enables an identity.
    pub async fn set_identity_state(
        &self,
        id: &IdentityId,
        state: State,
    ) -> Result<Identity, Error> {
        with_retries("identity", || async {
            let mut identity = self.get_identity(id).await?;
            if identity.kind == IdentityKind::Person {
                return Err(Error::FailedPrecondition(
                    "person identities are managed by the identity provider".into(),
                ));
            }
            if identity.state == state {
                return Ok(identity);
            }
            identity.state = state;
            identity.update_time = UnixMillis::now();
            journal::arm();
            let stored = self.store.update_identity(&identity).await?;
            tracing::info!(identity_id = %id, ?state, "identity state changed");
            Ok(stored)
        })
        .await
    }

    /// Deletes an identity and all its keys.
    pub async fn delete_identity(&self, id: &IdentityId) -> Result<(), Error> {
        self.delete_identity_at(id, None).await
    }

    /// Deletes an identity, only at `if_revision` when given (checked in
    /// the same atomic step as the delete: `Aborted` when it moved on).
    pub(super) async fn delete_identity_at(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
    ) -> Result<(), Error> {
        journal::arm();
        if self.store.delete_identity(id, if_revision).await? {
            tracing::info!(identity_id = %id, "identity deleted");
            Ok(())
        } else {
            Err(Error::NotFound(format!("identity {id}")))
        }
    }

    /// Whether any active admin identity exists (read for bootstrap).
    pub async fn admin_exists(&self) -> Result<bool, Error> {
        let page = PageRequest {
            page_size: super::MAX_PAGE_SIZE,
            page_token: String::new(),
        };
        let mut page = page;
        loop {
            let found = self.list_identities(&page, |_| true).await?;
            if found
                .items
                .iter()
                .any(|i| i.admin && i.state == State::Active)
            {
                return Ok(true);
            }
            match found.next_page_token {
                Some(token) => page.page_token = token,
                None => return Ok(false),
            }
        }
    }

    /// Creates an admin identity named `name` with its first key (bootstrap and
    /// dev mode). `name` follows the service-name rule, as every service
    /// identity's does: INVALID_ARGUMENT otherwise.
    pub async fn create_admin(
        &self,
        name: &str,
        description: &str,
    ) -> Result<(Identity, MintedKey), Error> {
        // No caller: the operator of the host ran it. Audited as BootstrapAdmin.
        let event =
            super::audit::event("BootstrapAdmin", None, None, super::audit::request_id(None));
        let name =
            IdentityName::parse_service(name).map_err(|e| Error::invalid("name", e.to_string()))?;
        let create = self.create_identity(NewIdentity {
            description: description.to_owned(),
            admin: true,
            ..NewIdentity::named(name)
        });
        self.audited(event, create, |error| error.code_name().to_owned())
            .await
    }
}
