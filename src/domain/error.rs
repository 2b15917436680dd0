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

impl Error {
    /// The gRPC code name this error is answered with (`NOT_FOUND`, ...), for
    /// audit outcomes written outside a gRPC call.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::Aborted(_) => "ABORTED",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Error::OutOfRange(_) => "OUT_OF_RANGE",
            Error::NotDurable(_) | Error::Unavailable(_) => "UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
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
