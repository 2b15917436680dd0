//! The one place where the authority's errors become gRPC statuses.
//! Internal causes are logged in full here and answered with a short message.

use crate::domain::{Code as DomainCode, Error};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The tonic code of a status code: the same number, so this is no second
/// mapping (`Error::code` is the one).
pub fn tonic_code(code: DomainCode) -> Code {
    Code::from_i32(code.number())
}

/// The name of a tonic code, from the one table (`domain::Code::name`).
pub fn code_name(code: Code) -> &'static str {
    DomainCode::from_number(i32::from(code)).name()
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = tonic_code(error.code());
        let message = error.to_string();
        match error {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                Status::with_error_details(code, message, details)
            }
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Status::new(
                    code,
                    "the credential store is unavailable; nothing can be verified or changed until it returns",
                )
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::new(code, message)
            }
            _ => Status::new(code, message),
        }
    }
}
