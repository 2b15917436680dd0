//! Thin tonic adapters: authenticate, convert the request, call the
//! authority, convert the answer. No business rule lives here.

mod admin;
pub mod codec;
pub mod convert;
pub mod ext_authz;
mod filter;
pub mod limits;
mod redact;
pub mod reflection;
pub mod shedding;
mod status;
pub mod telemetry;
mod verify;

pub use admin::AdminApi;
pub use ext_authz::{ExtAuthzApi, ExtAuthzOptions, ExtAuthzServer};
pub use verify::VerifyApi;

use tonic::metadata::MetadataMap;

/// The token of an `authorization: Bearer <token>` header, if any. The scheme
/// is case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    crate::domain::token::bearer_credential(metadata.get("authorization")?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), Some("abc"));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
    }
}
