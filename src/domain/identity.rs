//! Identities: the principals that own keys.

use super::cidr;
use super::ids::IdentityId;
use super::labels::Labels;
use super::names::IdentityName;
use super::revision::{self, RevisionConflict};
use super::time::UnixMillis;
use super::usage::RateLimit;
use ipnet::IpNet;

/// What kind of principal an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// A service or machine, managed through the Admin API.
    Service,
    /// A person provisioned by the identity provider over SCIM.
    Person,
}

/// Whether an identity or key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Usable.
    Active,
    /// Refused until enabled again.
    Disabled,
}

impl State {
    /// The state of a person whose identity provider says `active`: only an
    /// explicit `false` disables, as a provider that omits `active` has not
    /// deprovisioned anyone (RFC 7643 §4.1.1 leaves the meaning to keyrack).
    pub fn following_provider(active: Option<bool>) -> Self {
        if active == Some(false) {
            State::Disabled
        } else {
            State::Active
        }
    }
}

/// A principal as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Public, stable id.
    pub id: IdentityId,
    /// Unique in the authority.
    pub name: IdentityName,
    /// Free text for operators.
    pub description: String,
    /// Service or person.
    pub kind: IdentityKind,
    /// Active or disabled.
    pub state: State,
    /// Datasets this identity may access.
    pub datasets: Vec<String>,
    /// Where its keys may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<IpNet>,
    /// What its keys may do (see `scope`); records written before scopes
    /// existed read as none.
    pub scopes: Vec<String>,
    /// Operator-chosen facts returned by Verify (see `labels`).
    pub labels: Labels,
    /// One budget shared by all its keys (see `usage`).
    pub rate_limits: Vec<RateLimit>,
    /// How many keys it holds, as read with it (never stored in its record).
    pub key_count: u64,
    /// Whether it may call AdminService.
    pub admin: bool,
    /// When it and all its keys stop working.
    pub expire_time: Option<UnixMillis>,
    /// When it was created.
    pub create_time: UnixMillis,
    /// When it was last changed.
    pub update_time: UnixMillis,
    /// The identity provider's id, for SCIM-provisioned people.
    pub external_id: Option<String>,
    /// What the identity provider last said of a person's SCIM `active`
    /// (`None`: it said nothing). A person's `state` follows it: only an
    /// explicit `false` disables.
    pub provider_active: Option<bool>,
    /// Incremented by every write; a write names the revision it read, so a
    /// concurrent change is detected instead of overwritten.
    pub revision: u64,
}

impl Identity {
    /// A new active service identity.
    pub fn new_service(name: IdentityName, description: String, now: UnixMillis) -> Self {
        Self {
            id: IdentityId::generate(),
            name,
            description,
            kind: IdentityKind::Service,
            state: State::Active,
            datasets: Vec::new(),
            allowed_cidrs: Vec::new(),
            scopes: Vec::new(),
            labels: Labels::new(),
            rate_limits: Vec::new(),
            key_count: 0,
            admin: false,
            expire_time: None,
            create_time: now,
            update_time: now,
            external_id: None,
            provider_active: None,
            revision: 0,
        }
    }

    /// A new person identity, as the identity provider describes it.
    pub fn new_person(
        name: IdentityName,
        description: String,
        external_id: Option<String>,
        active: Option<bool>,
        now: UnixMillis,
    ) -> Self {
        Self {
            kind: IdentityKind::Person,
            external_id,
            provider_active: active,
            state: State::following_provider(active),
            ..Self::new_service(name, description, now)
        }
    }

    /// The record an update of this stored identity writes: `update` at the
    /// next revision, when it was read at this identity's revision.
    /// (UPDATE_IDENTITY mirrors this.)
    pub fn updated(&self, update: &Identity) -> Result<Identity, RevisionConflict> {
        let next = revision::check_and_bump(self.revision, update.revision)?;
        Ok(Identity {
            revision: next,
            ..update.clone()
        })
    }

    /// This identity as a write that read it stores it: at the next
    /// revision. (Where the store checks the revision elsewhere, in a script.)
    pub fn at_next_revision(&self) -> Identity {
        Identity {
            revision: revision::next(self.revision),
            ..self.clone()
        }
    }

    /// Whether the identity has expired at `now` (a store may still hold it
    /// for a moment after its deadline).
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expire_time.is_some_and(|deadline| deadline <= now)
    }

    /// Whether keys of this identity may be used from `address`.
    pub fn permits_address(&self, key_cidrs: &[IpNet], address: Option<std::net::IpAddr>) -> bool {
        cidr::permits(&[&self.allowed_cidrs, key_cidrs], address)
    }
}

/// Which identities a listing returns: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentityFilter {
    /// Only this kind.
    pub kind: Option<IdentityKind>,
    /// Only this state.
    pub state: Option<State>,
    /// Only identities granted this dataset.
    pub dataset: Option<String>,
    /// Only admins, or only non-admins.
    pub admin: Option<bool>,
    /// Only identities granted this scope.
    pub scope: Option<String>,
    /// Only identities carrying every one of these labels.
    pub labels: Vec<(String, String)>,
}

impl IdentityFilter {
    /// Whether `identity` passes.
    pub fn matches(&self, identity: &Identity) -> bool {
        self.kind.is_none_or(|kind| identity.kind == kind)
            && self.state.is_none_or(|state| identity.state == state)
            && self.admin.is_none_or(|admin| identity.admin == admin)
            && self
                .dataset
                .as_ref()
                .is_none_or(|dataset| identity.datasets.iter().any(|d| d == dataset))
            && self
                .scope
                .as_ref()
                .is_none_or(|scope| super::scope::any_covers(&identity.scopes, scope))
            && super::labels::matches_all(&identity.labels, &self.labels)
    }
}
