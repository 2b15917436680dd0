//! The authority's error type: a small set of outcomes that the gRPC layer maps
//! to status codes in exactly one place (`grpc::status`).

/// One invalid field of a request: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `identity.name`.
    pub field: String,
    /// What is wrong with it, in words an operator can act on.
    pub description: String,
}

/// The outcome of an operation that did not succeed.
///
/// Messages never contain a secret: variants carry ids, names and rules only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; every bad field is listed.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A resource with that unique name already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won the race; the caller may retry.
    #[error("{0} was changed concurrently; retry the request")]
    Aborted(String),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the right to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached (request size, lockout, load).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position that no longer exists (a cursor already trimmed away).
    #[error("{0}")]
    OutOfRange(String),
    /// The change was applied but its durability was not confirmed.
    #[error("the change was applied but may not be durable ({0}); check it and retry")]
    NotDurable(String),
    /// The store cannot answer; nothing is assumed valid.
    #[error("the store is unavailable")]
    Unavailable(String),
    /// A bug or corrupt data; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The canonical status codes (`google.rpc.Code`, numbered as there) that
/// keyrack answers with: over gRPC, and as the outcomes the audit log
/// records. `Error::code` is the only mapping from errors to them, and
/// `Code::name` the only table of their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The caller cancelled.
    Cancelled = 1,
    /// An error nothing else describes.
    Unknown = 2,
    /// A bad request field.
    InvalidArgument = 3,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// No such entity.
    NotFound = 5,
    /// The entity exists already.
    AlreadyExists = 6,
    /// Authenticated but not allowed.
    PermissionDenied = 7,
    /// A quota or bound was reached.
    ResourceExhausted = 8,
    /// The state does not allow it.
    FailedPrecondition = 9,
    /// A concurrent change won.
    Aborted = 10,
    /// Past the valid range.
    OutOfRange = 11,
    /// Not implemented.
    Unimplemented = 12,
    /// A bug or corrupt data.
    Internal = 13,
    /// Try again later.
    Unavailable = 14,
    /// Data lost or corrupted.
    DataLoss = 15,
    /// No valid credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in number order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code of a number; an unknown number is `Unknown`.
    pub fn from_number(number: i32) -> Code {
        usize::try_from(number)
            .ok()
            .and_then(|index| Code::ALL.get(index).copied())
            .unwrap_or(Code::Unknown)
    }

    /// Its number.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// Its `SCREAMING_CASE` name (`NOT_FOUND`, ...), for audit outcomes and
    /// metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl Error {
    /// The status code this error is answered with, on every interface that
    /// speaks in such codes (gRPC, the audit log).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::NotDurable(_) | Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The name of `code()`, for audit outcomes written outside a gRPC call.
    pub fn code_name(&self) -> &'static str {
        self.code().name()
    }

    /// A single field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

/// Collects field violations so a request reports all its bad fields at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Returns `Some(value)` when `result` is Ok, else records the error under `field`.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    /// Ok when nothing was recorded, else `Error::InvalidArgument` with every violation.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_numbers() {
        for (number, code) in Code::ALL.iter().enumerate() {
            assert_eq!(usize::try_from(code.number()), Ok(number));
            assert_eq!(Code::from_number(code.number()), *code);
        }
        assert_eq!(Code::from_number(17), Code::Unknown);
        assert_eq!(Code::from_number(-1), Code::Unknown);
    }
}
