//! Operations on datasets, including the wizard that creates a dataset
//! together with a service identity that may access it.

use super::identities::NewIdentity;
use super::{Authority, MintedKey, Page, PageRequest, with_retries};
use crate::domain::identity::IdentityFilter;
use crate::domain::key::Origin;
use crate::domain::names::parse_name;
use crate::domain::{Dataset, Error, Identity, UnixMillis};
use crate::store::journal;

/// A dataset to create, already validated at the edge.
#[derive(Debug, Clone)]
pub struct NewDataset {
    /// `^[A-Za-z0-9_]{1,30}$`.
    pub name: String,
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

impl Authority {
    /// Refuses references to datasets that do not exist, naming the first.
    pub(super) async fn require_datasets_exist(
        &self,
        field: &str,
        datasets: &[String],
    ) -> Result<(), Error> {
        for name in datasets {
            if self.store.get_dataset(name).await?.is_none() {
                return Err(Error::invalid(
                    field,
                    format!("dataset {name:?} does not exist"),
                ));
            }
        }
        Ok(())
    }

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
            name: request.name.clone(),
            description: format!("access to dataset {}", request.name),
            datasets: vec![request.name.clone()],
            ..NewIdentity::default()
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
            .then(|| items.last().map(|dataset| dataset.name.clone()))
            .flatten();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Deletes a dataset. While identities reference it this is refused,
    /// naming some of them, unless `force`, which first detaches it from each;
    /// the record goes last, so an interrupted forced delete can be re-run.
    pub async fn delete_dataset(&self, name: &str, force: bool) -> Result<(), Error> {
        self.get_dataset(name).await?;
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
