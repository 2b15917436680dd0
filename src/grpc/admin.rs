//! AdminService. Every method authenticates the caller as an admin first.

use super::telemetry::{code_name, field};
use super::{bearer_token, convert, filter};
use crate::domain::{Error, Identity, SecretString, State};
use crate::proto::{self, admin_service_server::AdminService};
use crate::service::CallContext;
use crate::service::events::Watcher;
use crate::service::{Authority, Caller, audit};
use std::future::Future;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    authority: Arc<Authority>,
}

impl AdminApi {
    /// Serves the Admin API from `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }

    async fn authorize<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let metadata = request.metadata();
        let context = CallContext::from_headers(request.remote_addr(), |name| {
            metadata.get(name).and_then(|value| value.to_str().ok())
        });
        let caller = self
            .authority
            .authenticate_admin(bearer_token(metadata), context)
            .await?;
        let span = tracing::Span::current();
        span.record(field::IDENTITY_ID, caller.identity.id.as_str());
        span.record(field::KEY_ID, caller.key_id.as_str());
        Ok(caller)
    }

    /// Authorizes the caller, then runs `work` as one audited operation named
    /// `action`: its change carries the event, or the event is appended with
    /// the call's outcome. Calls refused before authentication have no actor
    /// and change nothing; they are counted in the metrics, not audited.
    /// An identity as the API shows it, with its key count.
    async fn identity_out(&self, identity: Identity) -> Result<proto::Identity, Status> {
        let mut counted = self.authority.with_key_counts(vec![identity]).await?;
        Ok(convert::identity_out(counted.remove(0)))
    }

    async fn mutate<M, T, F, Fut>(&self, request: Request<M>, action: &str, work: F) -> Reply<T>
    where
        F: FnOnce(Caller, M) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let caller = self.authorize(&request).await?;
        let request_id = audit::request_id(
            request
                .metadata()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok()),
        );
        let event = audit::event(action, Some(&caller), request.remote_addr(), request_id);
        let message = request.into_inner();
        self.authority
            .audited(event, work(caller, message), |status: &Status| {
                code_name(status.code()).to_owned()
            })
            .await
            .map(Response::new)
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The stream WatchEvents answers with.
type WatchStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<proto::WatchEventsResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let caller = self.authorize(&request).await?;
        let watcher = Watcher {
            key_id: caller.key_id,
            identity_id: caller.identity.id,
            peer: request.remote_addr().map(|address| address.ip()),
        };
        let (cursor, filter) = convert::watch_in(request.get_ref())?;
        let items = self
            .authority
            .watch_events(watcher, cursor.as_deref(), filter)
            .await?;
        let stream = futures_util::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(items),
            |item| item.map(convert::watch_item_out).map_err(Status::from),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_identity(
        &self,
        request: Request<proto::CreateIdentityRequest>,
    ) -> Reply<proto::CreateIdentityResponse> {
        self.mutate(request, "CreateIdentity", |_, message| async move {
            let input = convert::new_identity_in(message)?;
            let (identity, minted) = self.authority.create_identity(input).await?;
            Ok(proto::CreateIdentityResponse {
                identity: Some(convert::identity_out(identity)),
                key: Some(convert::key_out(minted.key)),
                token: minted.token.expose().to_owned(),
            })
        })
        .await
    }

    async fn get_identity(
        &self,
        request: Request<proto::GetIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.authorize(&request).await?;
        let id = convert::identity_id_in("identity_id", &request.into_inner().identity_id)?;
        let identity = self.authority.get_identity(&id).await?;
        Ok(Response::new(self.identity_out(identity).await?))
    }

    async fn list_identities(
        &self,
        request: Request<proto::ListIdentitiesRequest>,
    ) -> Reply<proto::ListIdentitiesResponse> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let filter = filter::parse_identity_filter(&request.filter)
            .map_err(|why| Error::invalid("filter", why))?;
        let page = convert::page_in(request.page_size, request.page_token)?;
        let page = self
            .authority
            .list_identities(&page, |identity| filter.matches(identity))
            .await?;
        let identities = self.authority.with_key_counts(page.items).await?;
        Ok(Response::new(proto::ListIdentitiesResponse {
            identities: identities.into_iter().map(convert::identity_out).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_identity(
        &self,
        request: Request<proto::UpdateIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.mutate(request, "UpdateIdentity", |_, message| async move {
            let (id, changes) = convert::identity_changes_in(message)?;
            audit::target(id.as_str());
            self.identity_out(self.authority.update_identity(&id, changes).await?)
                .await
        })
        .await
    }

    async fn disable_identity(
        &self,
        request: Request<proto::DisableIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.mutate(request, "DisableIdentity", |_, message| async move {
            let id = convert::identity_id_in("identity_id", &message.identity_id)?;
            audit::target(id.as_str());
            self.identity_out(
                self.authority
                    .set_identity_state(&id, State::Disabled)
                    .await?,
            )
            .await
        })
        .await
    }

    async fn enable_identity(
        &self,
        request: Request<proto::EnableIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.mutate(request, "EnableIdentity", |_, message| async move {
            let id = convert::identity_id_in("identity_id", &message.identity_id)?;
            audit::target(id.as_str());
            self.identity_out(
                self.authority
                    .set_identity_state(&id, State::Active)
                    .await?,
            )
            .await
        })
        .await
    }

    async fn delete_identity(
        &self,
        request: Request<proto::DeleteIdentityRequest>,
    ) -> Reply<proto::DeleteIdentityResponse> {
        self.mutate(request, "DeleteIdentity", |_, message| async move {
            let id = convert::identity_id_in("identity_id", &message.identity_id)?;
            audit::target(id.as_str());
            self.authority.delete_identity(&id).await?;
            Ok(proto::DeleteIdentityResponse {})
        })
        .await
    }

    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Reply<proto::CreateKeyResponse> {
        self.mutate(request, "CreateKey", |_, message| async move {
            let input = convert::new_key_in(message)?;
            audit::target(input.identity_id.as_str());
            let minted = self.authority.create_key(input).await?;
            Ok(proto::CreateKeyResponse {
                key: Some(convert::key_out(minted.key)),
                token: minted.token.expose().to_owned(),
            })
        })
        .await
    }

    async fn get_key(&self, request: Request<proto::GetKeyRequest>) -> Reply<proto::ApiKey> {
        self.authorize(&request).await?;
        let id = convert::key_id_in("key_id", &request.into_inner().key_id)?;
        Ok(Response::new(convert::key_out(
            self.authority.get_key(&id).await?,
        )))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Reply<proto::ListKeysResponse> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let query = convert::key_query_in(&request)?;
        let page = convert::page_in(request.page_size, request.page_token)?;
        let page = self.authority.list_keys_page(&query, &page).await?;
        Ok(Response::new(proto::ListKeysResponse {
            keys: page.items.into_iter().map(convert::key_out).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            total_size: i32::try_from(page.total_size).unwrap_or(i32::MAX),
        }))
    }

    async fn batch_revoke_keys(
        &self,
        request: Request<proto::BatchRevokeKeysRequest>,
    ) -> Reply<proto::BatchRevokeKeysResponse> {
        self.mutate(request, "BatchRevokeKeys", |caller, message| async move {
            let (filter, totp_code) = convert::batch_revoke_in(message.filter, message.totp_code)?;
            let (keys, revoked) = self
                .authority
                .batch_revoke_keys(&caller, filter, message.validate_only, &totp_code)
                .await?;
            Ok(proto::BatchRevokeKeysResponse {
                keys: keys.into_iter().map(convert::key_out).collect(),
                revoked_count: i32::try_from(revoked).unwrap_or(i32::MAX),
            })
        })
        .await
    }

    async fn import_keys(
        &self,
        request: Request<proto::ImportKeysRequest>,
    ) -> Reply<proto::ImportKeysResponse> {
        self.mutate(request, "ImportKeys", |_, message| async move {
            let (identity_id, keys) = convert::import_in(message)?;
            audit::target(identity_id.as_str());
            let keys = self.authority.import_keys(&identity_id, keys).await?;
            Ok(proto::ImportKeysResponse {
                keys: keys.into_iter().map(convert::key_out).collect(),
            })
        })
        .await
    }

    async fn update_key(&self, request: Request<proto::UpdateKeyRequest>) -> Reply<proto::ApiKey> {
        self.mutate(request, "UpdateKey", |_, message| async move {
            let (id, changes) = convert::key_changes_in(message)?;
            audit::target(id.as_str());
            Ok(convert::key_out(
                self.authority.update_key(&id, changes).await?,
            ))
        })
        .await
    }

    async fn disable_key(
        &self,
        request: Request<proto::DisableKeyRequest>,
    ) -> Reply<proto::ApiKey> {
        self.mutate(request, "DisableKey", |_, message| async move {
            let id = convert::key_id_in("key_id", &message.key_id)?;
            audit::target(id.as_str());
            Ok(convert::key_out(
                self.authority.set_key_state(&id, State::Disabled).await?,
            ))
        })
        .await
    }

    async fn enable_key(&self, request: Request<proto::EnableKeyRequest>) -> Reply<proto::ApiKey> {
        self.mutate(request, "EnableKey", |_, message| async move {
            let id = convert::key_id_in("key_id", &message.key_id)?;
            audit::target(id.as_str());
            Ok(convert::key_out(
                self.authority.set_key_state(&id, State::Active).await?,
            ))
        })
        .await
    }

    async fn roll_key(
        &self,
        request: Request<proto::RollKeyRequest>,
    ) -> Reply<proto::RollKeyResponse> {
        self.mutate(request, "RollKey", |caller, message| async move {
            let roll = convert::roll_in(message)?;
            audit::target(roll.key_id.as_str());
            let rolled = self.authority.roll_key(&caller, roll).await?;
            Ok(proto::RollKeyResponse {
                key: Some(convert::key_out(rolled.minted.key)),
                token: rolled.minted.token.expose().to_owned(),
                previous_key: rolled.previous.map(convert::key_out),
            })
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Reply<proto::RevokeKeyResponse> {
        self.mutate(request, "RevokeKey", |_, message| async move {
            let id = convert::key_id_in("key_id", &message.key_id)?;
            audit::target(id.as_str());
            self.authority.revoke_key(&id).await?;
            Ok(proto::RevokeKeyResponse {})
        })
        .await
    }

    async fn create_dataset(
        &self,
        request: Request<proto::CreateDatasetRequest>,
    ) -> Reply<proto::CreateDatasetResponse> {
        self.mutate(request, "CreateDataset", |_, message| async move {
            let input = convert::new_dataset_in(message)?;
            let created = self.authority.create_dataset(input).await?;
            let mut response = proto::CreateDatasetResponse {
                dataset: Some(convert::dataset_out(created.dataset)),
                ..Default::default()
            };
            if let Some((identity, minted)) = created.access {
                response.identity = Some(convert::identity_out(identity));
                response.key = Some(convert::key_out(minted.key));
                response.token = minted.token.expose().to_owned();
            }
            Ok(response)
        })
        .await
    }

    async fn get_dataset(
        &self,
        request: Request<proto::GetDatasetRequest>,
    ) -> Reply<proto::Dataset> {
        self.authorize(&request).await?;
        let name = convert::dataset_name_in("dataset", &request.into_inner().dataset)?;
        Ok(Response::new(convert::dataset_out(
            self.authority.get_dataset(&name).await?,
        )))
    }

    async fn list_datasets(
        &self,
        request: Request<proto::ListDatasetsRequest>,
    ) -> Reply<proto::ListDatasetsResponse> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let page = convert::page_in(request.page_size, request.page_token)?;
        let page = self.authority.list_datasets(&page).await?;
        Ok(Response::new(proto::ListDatasetsResponse {
            datasets: page.items.into_iter().map(convert::dataset_out).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn delete_dataset(
        &self,
        request: Request<proto::DeleteDatasetRequest>,
    ) -> Reply<proto::DeleteDatasetResponse> {
        self.mutate(request, "DeleteDataset", |_, message| async move {
            let name = convert::dataset_name_in("dataset", &message.dataset)?;
            audit::target(name.as_str());
            self.authority.delete_dataset(&name, message.force).await?;
            Ok(proto::DeleteDatasetResponse {})
        })
        .await
    }

    async fn enroll_totp(
        &self,
        request: Request<proto::EnrollTotpRequest>,
    ) -> Reply<proto::EnrollTotpResponse> {
        self.mutate(request, "EnrollTotp", |caller, _| async move {
            audit::target(caller.identity.id.as_str());
            let enrollment = self.authority.enroll_totp(&caller).await?;
            Ok(proto::EnrollTotpResponse {
                secret: enrollment.secret.expose().to_owned(),
                otpauth_url: enrollment.otpauth_url.expose().to_owned(),
            })
        })
        .await
    }

    async fn confirm_totp(
        &self,
        request: Request<proto::ConfirmTotpRequest>,
    ) -> Reply<proto::ConfirmTotpResponse> {
        self.mutate(request, "ConfirmTotp", |caller, message| async move {
            audit::target(caller.identity.id.as_str());
            let code = SecretString::new(message.code);
            self.authority.confirm_totp(&caller, code.expose()).await?;
            Ok(proto::ConfirmTotpResponse {})
        })
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Reply<proto::ListAuditEventsResponse> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let page = convert::page_in(request.page_size, request.page_token.clone())?;
        let filter = convert::audit_filter_in(&request)?;
        let page = self.authority.list_audit_events(&filter, &page).await?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: page
                .items
                .into_iter()
                .map(convert::audit_event_out)
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
