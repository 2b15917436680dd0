//! SCIM error responses (RFC 7644 §3.12): the one place where the authority's
//! errors become HTTP statuses and SCIM error bodies.

use super::{ERROR_SCHEMA, scim_json};
use crate::domain::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A SCIM error: an HTTP status, an optional `scimType` and a detail that
/// never carries a secret.
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    /// An error with a status and detail but no `scimType`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }

    /// A 400 with the RFC 7644 `scimType` that says what was wrong.
    pub fn bad_request(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    /// A 401 for a missing or unusable bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    /// A 404 for a path or resource that does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ScimError {
    fn from(error: Error) -> Self {
        let detail = error.to_string();
        match error {
            Error::InvalidArgument(_) => Self::bad_request("invalidValue", detail),
            Error::NotFound(_) => Self::not_found(detail),
            Error::AlreadyExists(_) => Self {
                status: StatusCode::CONFLICT,
                scim_type: Some("uniqueness"),
                detail,
            },
            // Only a stale If-Match version reaches here: rule 7 refusals are
            // Admin API outcomes.
            Error::FailedPrecondition(_) => Self::new(StatusCode::PRECONDITION_FAILED, detail),
            Error::Aborted(_) => Self::new(StatusCode::CONFLICT, detail),
            // The contract: any caller that is not an admin is 401.
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => Self::unauthorized(detail),
            Error::ResourceExhausted(_) => Self::new(StatusCode::TOO_MANY_REQUESTS, detail),
            // SCIM reads no event cursors; kept total for the match.
            Error::OutOfRange(_) => Self::new(StatusCode::BAD_REQUEST, detail),
            Error::NotDurable(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, detail),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the credential store is unavailable; retry later",
                )
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
            }
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = scim_type.into();
        }
        let mut response = scim_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyrack\""),
            );
        }
        response
    }
}
