//! The one place where the authority's errors become gRPC statuses.
//! Internal causes are logged in full here and answered with a short message.

use crate::domain::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Aborted(_) => Status::aborted(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::OutOfRange(_) => Status::out_of_range(message),
            Error::NotDurable(_) => Status::unavailable(message),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Status::unavailable(
                    "the credential store is unavailable; nothing can be verified or changed until it returns",
                )
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal(message)
            }
        }
    }
}
