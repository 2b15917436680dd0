//! AdminService. Every method authenticates the caller as an admin first.

use super::telemetry::field;
use super::{bearer_token, convert, filter};
use crate::domain::{Error, SecretString, State};
use crate::proto::{self, admin_service_server::AdminService};
use crate::service::{Authority, Caller};
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
        let peer = request.remote_addr().map(|addr| addr.ip());
        let caller = self
            .authority
            .authenticate_admin(bearer_token(request.metadata()), peer)
            .await?;
        let span = tracing::Span::current();
        span.record(field::IDENTITY_ID, caller.identity.id.as_str());
        span.record(field::KEY_ID, caller.key_id.as_str());
        Ok(caller)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_identity(
        &self,
        request: Request<proto::CreateIdentityRequest>,
    ) -> Reply<proto::CreateIdentityResponse> {
        self.authorize(&request).await?;
        let input = convert::new_identity_in(request.into_inner())?;
        let (identity, minted) = self.authority.create_identity(input).await?;
        Ok(Response::new(proto::CreateIdentityResponse {
            identity: Some(convert::identity_out(identity)),
            key: Some(convert::key_out(minted.key)),
            token: minted.token.expose().to_owned(),
        }))
    }

    async fn get_identity(
        &self,
        request: Request<proto::GetIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.authorize(&request).await?;
        let id = convert::identity_id_in("identity_id", &request.into_inner().identity_id)?;
        Ok(Response::new(convert::identity_out(
            self.authority.get_identity(&id).await?,
        )))
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
        Ok(Response::new(proto::ListIdentitiesResponse {
            identities: page.items.into_iter().map(convert::identity_out).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_identity(
        &self,
        request: Request<proto::UpdateIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.authorize(&request).await?;
        let (id, changes) = convert::identity_changes_in(request.into_inner())?;
        Ok(Response::new(convert::identity_out(
            self.authority.update_identity(&id, changes).await?,
        )))
    }

    async fn disable_identity(
        &self,
        request: Request<proto::DisableIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.authorize(&request).await?;
        let id = convert::identity_id_in("identity_id", &request.into_inner().identity_id)?;
        Ok(Response::new(convert::identity_out(
            self.authority
                .set_identity_state(&id, State::Disabled)
                .await?,
        )))
    }

    async fn enable_identity(
        &self,
        request: Request<proto::EnableIdentityRequest>,
    ) -> Reply<proto::Identity> {
        self.authorize(&request).await?;
        let id = convert::identity_id_in("identity_id", &request.into_inner().identity_id)?;
        Ok(Response::new(convert::identity_out(
            self.authority
                .set_identity_state(&id, State::Active)
                .await?,
        )))
    }

    async fn delete_identity(
        &self,
        request: Request<proto::DeleteIdentityRequest>,
    ) -> Reply<proto::DeleteIdentityResponse> {
        self.authorize(&request).await?;
        let id = convert::identity_id_in("identity_id", &request.into_inner().identity_id)?;
        self.authority.delete_identity(&id).await?;
        Ok(Response::new(proto::DeleteIdentityResponse {}))
    }

    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Reply<proto::CreateKeyResponse> {
        self.authorize(&request).await?;
        let input = convert::new_key_in(request.into_inner())?;
        let minted = self.authority.create_key(input).await?;
        Ok(Response::new(proto::CreateKeyResponse {
            key: Some(convert::key_out(minted.key)),
            token: minted.token.expose().to_owned(),
        }))
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
        let identity = convert::identity_id_in("identity_id", &request.identity_id)?;
        let page = convert::page_in(request.page_size, request.page_token)?;
        let page = self.authority.list_keys(&identity, &page).await?;
        Ok(Response::new(proto::ListKeysResponse {
            keys: page.items.into_iter().map(convert::key_out).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_key(&self, request: Request<proto::UpdateKeyRequest>) -> Reply<proto::ApiKey> {
        self.authorize(&request).await?;
        let (id, changes) = convert::key_changes_in(request.into_inner())?;
        Ok(Response::new(convert::key_out(
            self.authority.update_key(&id, changes).await?,
        )))
    }

    async fn disable_key(
        &self,
        request: Request<proto::DisableKeyRequest>,
    ) -> Reply<proto::ApiKey> {
        self.authorize(&request).await?;
        let id = convert::key_id_in("key_id", &request.into_inner().key_id)?;
        Ok(Response::new(convert::key_out(
            self.authority.set_key_state(&id, State::Disabled).await?,
        )))
    }

    async fn enable_key(&self, request: Request<proto::EnableKeyRequest>) -> Reply<proto::ApiKey> {
        self.authorize(&request).await?;
        let id = convert::key_id_in("key_id", &request.into_inner().key_id)?;
        Ok(Response::new(convert::key_out(
            self.authority.set_key_state(&id, State::Active).await?,
        )))
    }

    async fn roll_key(
        &self,
        request: Request<proto::RollKeyRequest>,
    ) -> Reply<proto::RollKeyResponse> {
        let caller = self.authorize(&request).await?;
        let roll = convert::roll_in(request.into_inner())?;
        let rolled = self.authority.roll_key(&caller, roll).await?;
        Ok(Response::new(proto::RollKeyResponse {
            key: Some(convert::key_out(rolled.minted.key)),
            token: rolled.minted.token.expose().to_owned(),
            previous_key: rolled.previous.map(convert::key_out),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Reply<proto::RevokeKeyResponse> {
        self.authorize(&request).await?;
        let id = convert::key_id_in("key_id", &request.into_inner().key_id)?;
        self.authority.revoke_key(&id).await?;
        Ok(Response::new(proto::RevokeKeyResponse {}))
    }

    async fn create_dataset(
        &self,
        request: Request<proto::CreateDatasetRequest>,
    ) -> Reply<proto::CreateDatasetResponse> {
        self.authorize(&request).await?;
        let input = convert::new_dataset_in(request.into_inner())?;
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
        Ok(Response::new(response))
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
        self.authorize(&request).await?;
        let request = request.into_inner();
        let name = convert::dataset_name_in("dataset", &request.dataset)?;
        self.authority.delete_dataset(&name, request.force).await?;
        Ok(Response::new(proto::DeleteDatasetResponse {}))
    }

    async fn enroll_totp(
        &self,
        request: Request<proto::EnrollTotpRequest>,
    ) -> Reply<proto::EnrollTotpResponse> {
        let caller = self.authorize(&request).await?;
        let enrollment = self.authority.enroll_totp(&caller).await?;
        Ok(Response::new(proto::EnrollTotpResponse {
            secret: enrollment.secret.expose().to_owned(),
            otpauth_url: enrollment.otpauth_url.expose().to_owned(),
        }))
    }

    async fn confirm_totp(
        &self,
        request: Request<proto::ConfirmTotpRequest>,
    ) -> Reply<proto::ConfirmTotpResponse> {
        let caller = self.authorize(&request).await?;
        let code = SecretString::new(request.into_inner().code);
        self.authority.confirm_totp(&caller, code.expose()).await?;
        Ok(Response::new(proto::ConfirmTotpResponse {}))
    }
}
