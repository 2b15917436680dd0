//! Pure types and rules of the authority. Nothing here knows about gRPC,
//! protobuf or Redis; every value that exists past a `parse` is valid.

pub mod audit;
pub mod cidr;
pub mod dataset;
pub mod durability;
pub mod error;
pub mod expiry;
pub mod identity;
pub mod ids;
pub mod key;
pub mod labels;
pub mod names;
pub mod revision;
pub mod scope;
pub mod secret;
pub mod session;
pub mod time;
pub mod token;
pub mod totp;
pub mod usage;
pub mod verdict;

pub use audit::{AuditEvent, AuditFilter, EventKind};
pub use dataset::Dataset;
pub use durability::Durability;
pub use error::{Code, Error, FieldViolation, Violations};
pub use identity::{Identity, IdentityKind, State};
pub use ids::{IdentityId, KeyId};
pub use key::{ApiKey, HashFingerprint, KeyEnd, KeyEndKind, SecretHash};
pub use secret::{SecretString, ServerSecret};
pub use time::UnixMillis;
pub use verdict::{Subject, Verdict, VerifyCode};
