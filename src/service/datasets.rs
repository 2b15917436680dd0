//! Operations on datasets, including the wizard that creates a dataset
//! together with a service identity that may access it.

use super::identities::NewIdentity;
use super::{Authority, MintedKey, Page, PageRequest, with_retries};
use crate::domain::identity::IdentityFilter;
use crate::domain::key::Origin;
use crate::domain::names::{DatasetName, IdentityName, parse_name};
use crate::domain::{Dataset, Error, Identity, UnixMillis};
use crate::store::{StoreError, journal};

/// A dataset to create, already validated at the edge.
#[derive(Debug, Clone)]
pub struct NewDataset {
    /// Unique among datasets.
    pub name: DatasetName,
    /// At most 256 characters.
    pub description: String,
    /// Create no identity or key with it.
    pub skip_key: bool,
}

/// What the wizard created.
#[derive(Debug)]
pub struct CreatedDataset {
    /// The dataset.
    pub dataset: Dataset,
    /// Its service identity and first key, unless skipped.
    pub access: Option<(Identity, MintedKey)>,
}

/// Identities named in a refusal to delete a referenced dataset.
const REFERENCES_NAMED: usize = 5;

/// The store's refusal of a write that newly grants a dataset that does not
/// exist or is being deleted, as a violation of the request's `field`; other
/// store errors as usual. The store checks in the same atomic step as the
/// write, so a grant cannot slip in while the dataset is deleted.
pub(super) fn refused_grant(field: &'static str) -> impl Fn(StoreError) -> Error {
    move |error| match error {
        StoreError::DatasetUnavailable(name) => Error::invalid(
            field,
            format!("dataset {name:?} does not exist or is being deleted"),
        ),
        other => other.into(),
    }
}

impl Authority {
    /// Creates a dataset and, unless `skip_key`, a service identity of the
    /// same name with access to it and its first key. Nothing stays behind
    /// when the identity cannot be created.
    pub async fn create_dataset(&self, request: NewDataset) -> Result<CreatedDataset, Error> {
        let dataset = Dataset {
            name: request.name.clone(),
            description: request.description.clone(),
            create_time: UnixMillis::now(),
        };
        journal::add_target(dataset.name.as_str());
        // With the wizard, the event goes with the identity it creates last,
        // so it names the identity and key too.
        if request.skip_key {
            journal::arm();
        }
        self.store.create_dataset(&dataset).await?;
        tracing::info!(dataset = %dataset.name, "dataset created");
        if request.skip_key {
            return Ok(CreatedDataset {
                dataset,
                access: None,
            });
        }
        let identity = NewIdentity {
            description: format!("access to dataset {}", request.name),
            datasets: vec![request.name.to_string()],
            ..NewIdentity::named(IdentityName::of_dataset(&request.name))
        };
        match self
            .create_identity_minting(identity, Origin::Dataset)
            .await
        {
            Ok(access) => Ok(CreatedDataset {
                dataset,
                access: Some(access),
            }),
            Err(error) => {
                if let Err(cleanup) = self.store.delete_dataset(&dataset.name).await {
                    tracing::error!(dataset = %dataset.name, error = %cleanup, "could not undo a dataset whose identity failed");
                }
                Err(match error {
                    Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                        "identity name {:?} (the wizard names the dataset's identity after it; pass skip_key and create one yourself)",
                        request.name
                    )),
                    other => other,
                })
            }
        }
    }

    /// One dataset.
    pub async fn get_dataset(&self, name: &str) -> Result<Dataset, Error> {
        self.store
            .get_dataset(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("dataset {name:?}")))
    }

    /// A page of datasets, ordered by name.
    pub async fn list_datasets(&self, page: &PageRequest) -> Result<Page<Dataset>, Error> {
        let after =
            match page.page_token.as_str() {
                "" => None,
                token => Some(parse_name(token).map_err(|_| {
                    Error::invalid("page_token", "is not a token this API returned")
                })?),
            };
        let limit = page.limit();
        let items = self.store.list_datasets(after.as_deref(), limit).await?;
        let next_page_token = (items.len() == limit)
            .then(|| items.last().map(|dataset| dataset.name.to_string()))
            .flatten();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Deletes a dataset. While identities reference it this is refused,
    /// naming some of them, unless `force`, which first detaches it from each;
    /// the record goes last, so an interrupted forced delete can be re-run.
    ///
    /// The dataset is marked first: from then on no write may newly grant
    /// it, so the scan that follows sees every grant that can exist, and
    /// none appears between the scan and the delete.
    pub async fn delete_dataset(&self, name: &str, force: bool) -> Result<(), Error> {
        if !self.store.begin_dataset_delete(name).await? {
            return Err(Error::NotFound(format!("dataset {name:?}")));
        }
        let outcome = self.delete_marked_dataset(name, force).await;
        if outcome.is_err()
            && let Err(error) = self.store.cancel_dataset_delete(name).await
        {
            // The mark stays: the dataset refuses new grants until a
            // DeleteDataset of it runs again.
            tracing::error!(dataset = %name, %error, "could not lift a refused dataset delete's mark");
        }
        outcome
    }

    async fn delete_marked_dataset(&self, name: &str, force: bool) -> Result<(), Error> {
        let filter = IdentityFilter {
            dataset: Some(name.to_owned()),
            ..IdentityFilter::default()
        };
        let mut page = PageRequest {
            page_size: super::MAX_PAGE_SIZE,
            page_token: String::new(),
        };
        let mut referencing = Vec::new();
        loop {
            let found = self
                .list_identities(&page, |identity| filter.matches(identity))
                .await?;
            referencing.extend(found.items);
            if !force && referencing.len() >= REFERENCES_NAMED {
                break;
            }
            match found.next_page_token {
                Some(token) => page.page_token = token,
                None => break,
            }
        }
        if !referencing.is_empty() && !force {
            let names: Vec<&str> = referencing
                .iter()
                .take(REFERENCES_NAMED)
                .map(|i| i.name.as_str())
                .collect();
            return Err(Error::FailedPrecondition(format!(
                "dataset {name:?} is referenced by identities {}{}; detach it from them or pass force",
                names.join(", "),
                if referencing.len() > REFERENCES_NAMED {
                    " and more"
                } else {
                    ""
                }
            )));
        }
        for identity in &referencing {
            self.detach_dataset(identity, name).await?;
        }
        journal::arm();
        self.store.delete_dataset(name).await?;
        tracing::info!(dataset = %name, detached = referencing.len(), "dataset deleted");
        Ok(())
    }

    async fn detach_dataset(&self, identity: &Identity, name: &str) -> Result<(), Error> {
        with_retries("identity", || async {
            let Some(mut current) = self.store.get_identity(&identity.id).await? else {
                return Ok(());
            };
            if !current.datasets.iter().any(|d| d == name) {
                return Ok(());
            }
            current.datasets.retain(|d| d != name);
            current.update_time = UnixMillis::now();
            self.store.update_identity(&current).await?;
            Ok(())
        })
        .await
        .or_else(|error| match error {
            // Deleted meanwhile: nothing left to detach.
            Error::NotFound(_) => Ok(()),
            other => Err(other),
        })
    }
}
