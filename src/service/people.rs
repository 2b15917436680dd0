//! People provisioned by the identity provider (SCIM): PERSON identities whose
//! name, external id, description and state the provider owns (Lifecycle
//! rule 7). Operators may still rename them, describe them, grant datasets and
//! manage their keys through the Admin API.

use super::{Authority, MAX_PAGE_SIZE, PageRequest, with_retries};
use crate::domain::names::{self, IdentityName};
use crate::domain::{Error, Identity, IdentityId, IdentityKind, State, UnixMillis};
use crate::store::journal;

/// Longest external id accepted from the identity provider.
pub const MAX_EXTERNAL_ID_CHARS: usize = 256;

/// What the identity provider says of a person.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonProfile {
    /// SCIM `userName`: the identity's name.
    pub user_name: String,
    /// SCIM `externalId`: the provider's own id for the person.
    pub external_id: Option<String>,
    /// SCIM `displayName`: the identity's description (empty when unassigned).
    pub display_name: String,
    /// SCIM `active`; `None` when the provider did not say.
    pub active: Option<bool>,
}

impl PersonProfile {
    /// The profile a person identity currently has.
    pub fn of(identity: &Identity) -> Self {
        Self {
            user_name: identity.name.to_string(),
            external_id: identity.external_id.clone(),
            display_name: identity.description.clone(),
            active: identity.provider_active,
        }
    }

    /// Checks every field, reporting them all at once under their SCIM
    /// names; returns the parsed userName with the profile.
    fn validated(self) -> Result<(IdentityName, Self), Error> {
        let mut violations = crate::domain::Violations::new();
        let user_name = violations.check("userName", IdentityName::parse_person(&self.user_name));
        let display_name =
            violations.check("displayName", names::parse_description(&self.display_name));
        if let Some(external_id) = &self.external_id {
            if external_id.is_empty() || external_id.chars().count() > MAX_EXTERNAL_ID_CHARS {
                violations.add(
                    "externalId",
                    format!("must be 1 to {MAX_EXTERNAL_ID_CHARS} characters"),
                );
            } else if external_id.chars().any(char::is_control) {
                violations.add("externalId", "must not contain control characters");
            }
        }
        violations.finish()?;
        let (Some(user_name), Some(display_name)) = (user_name, display_name) else {
            return Err(Error::invalid("userName", "is required"));
        };
        Ok((
            user_name,
            Self {
                display_name,
                ..self
            },
        ))
    }
}

/// A person whose stored revision is not the one the caller last read (SCIM
/// `If-Match`).
fn stale_version(id: &IdentityId) -> Error {
    Error::FailedPrecondition(format!("identity {id} has changed since that version"))
}

impl Authority {
    /// Creates a person identity with no keys: admins mint keys for people
    /// through the Admin API.
    pub async fn provision_person(&self, profile: PersonProfile) -> Result<Identity, Error> {
        let (user_name, profile) = profile.validated()?;
        let identity = Identity::new_person(
            user_name,
            profile.display_name,
            profile.external_id,
            profile.active,
            UnixMillis::now(),
        );
        journal::add_target(identity.id.as_str());
        journal::arm();
        self.store.create_identity(&identity, &[]).await?;
        tracing::info!(identity_id = %identity.id, state = ?identity.state, "person provisioned");
        Ok(identity)
    }

    /// One person; services and unknown ids are both NOT_FOUND, as the
    /// provider sees only people.
    pub async fn get_person(&self, id: &IdentityId) -> Result<Identity, Error> {
        match self.store.get_identity(id).await? {
            Some(identity) if identity.kind == IdentityKind::Person => Ok(identity),
            _ => Err(Error::NotFound(format!("person {id}"))),
        }
    }

    /// The person named `user_name`, if any.
    pub async fn find_person(&self, user_name: &str) -> Result<Option<Identity>, Error> {
        Ok(self
            .store
            .find_identity_by_name(user_name)
            .await?
            .filter(|identity| identity.kind == IdentityKind::Person))
    }

    /// Rewrites a person's profile with what `change` makes of the current
    /// one. `change` runs again on the fresh record when a concurrent write
    /// wins, unless the caller pinned a revision (`if_revision`), in which case
    /// a changed record is FAILED_PRECONDITION.
    pub async fn update_person(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
        change: impl Fn(PersonProfile) -> Result<PersonProfile, Error>,
    ) -> Result<Identity, Error> {
        with_retries("person", || async {
            let mut identity = self.get_person(id).await?;
            if if_revision.is_some_and(|revision| revision != identity.revision) {
                return Err(stale_version(id));
            }
            let (user_name, profile) = change(PersonProfile::of(&identity))?.validated()?;
            let state = State::following_provider(profile.active);
            if state != identity.state {
                tracing::info!(identity_id = %id, ?state, "person state set by the identity provider");
            }
            identity.name = user_name;
            identity.description = profile.display_name;
            identity.external_id = profile.external_id;
            identity.provider_active = profile.active;
            identity.state = state;
            identity.update_time = UnixMillis::now();
            journal::arm();
            match self.store.update_identity(&identity).await {
                Err(crate::store::StoreError::Conflict) if if_revision.is_some() => {
                    Err(stale_version(id))
                }
                stored => Ok(stored?),
            }
        })
        .await
    }

    /// Deletes a person and all its keys; with `if_revision`, only at that
    /// revision, checked in the same atomic step as the delete, so a change
    /// that lands in between is FAILED_PRECONDITION, not silently deleted.
    pub async fn delete_person(
        &self,
        id: &IdentityId,
        if_revision: Option<u64>,
    ) -> Result<(), Error> {
        let person = self.get_person(id).await?;
        if if_revision.is_some_and(|revision| revision != person.revision) {
            return Err(stale_version(id));
        }
        match self.delete_identity_at(id, if_revision).await {
            Err(Error::Aborted(_)) if if_revision.is_some() => Err(stale_version(id)),
            outcome => outcome,
        }
    }

    /// The people that pass `filter`, in id order: how many there are, and
    /// `take` of them after skipping `skip`. Reads the whole listing, which
    /// SCIM's numbered pages (startIndex) and totalResults demand.
    pub async fn people_matching(
        &self,
        filter: impl Fn(&Identity) -> bool,
        skip: usize,
        take: usize,
    ) -> Result<(usize, Vec<Identity>), Error> {
        let mut page = PageRequest {
            page_size: MAX_PAGE_SIZE,
            page_token: String::new(),
        };
        let mut total = 0;
        let mut window = Vec::with_capacity(take.min(MAX_PAGE_SIZE));
        loop {
            let found = self
                .list_identities(&page, |identity| {
                    identity.kind == IdentityKind::Person && filter(identity)
                })
                .await?;
            for person in found.items {
                if total >= skip && window.len() < take {
                    window.push(person);
                }
                total += 1;
            }
            match found.next_page_token {
                Some(token) => page.page_token = token,
                None => return Ok((total, window)),
            }
        }
    }
}
