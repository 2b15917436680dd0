//! Public identifiers. A key id embeds its identity's id, so a token names the
//! identity's Redis hash tag and Verify can read the key and its identity in one
//! round trip, also under Redis Cluster.

use rand::Rng;
use rand::distr::Alphanumeric;
use std::fmt;

/// Characters in an identity id: 12 base62 characters, about 71 random bits.
pub const IDENTITY_ID_LEN: usize = 12;
/// Characters a key id adds after its identity's id: about 35 random bits,
/// unique within one identity (the store refuses a collision).
pub const KEY_SUFFIX_LEN: usize = 6;
/// Characters in a key id.
pub const KEY_ID_LEN: usize = IDENTITY_ID_LEN + KEY_SUFFIX_LEN;

fn random_base62(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks that `text` is an id of `len` base62 characters.
fn check_id(text: &str, len: usize) -> Result<(), IdError> {
    if text.is_empty() {
        Err(IdError::Missing)
    } else if text.len() == len && is_base62(text) {
        Ok(())
    } else {
        Err(IdError::Malformed(len))
    }
}

/// Why an id did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty input.
    #[error("is required")]
    Missing,
    /// Not of the id's shape.
    #[error("is not a keyrack id of {0} letters and digits")]
    Malformed(usize),
}

/// The public, stable id of an identity.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityId(String);

impl IdentityId {
    /// A new random id.
    pub fn generate() -> Self {
        Self(random_base62(IDENTITY_ID_LEN))
    }

    /// Parses an id given by a caller.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_id(text, IDENTITY_ID_LEN)?;
        Ok(Self(text.to_owned()))
    }

    /// Parses an id already held as a `String`, keeping its allocation.
    pub fn parse_owned(text: String) -> Result<Self, IdError> {
        check_id(&text, IDENTITY_ID_LEN)?;
        Ok(Self(text))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The public id of an API key: its identity's id followed by a short suffix.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// A new random key id for `identity`.
    pub fn generate(identity: &IdentityId) -> Self {
        Self(format!("{}{}", identity.0, random_base62(KEY_SUFFIX_LEN)))
    }

    /// Parses a key id given by a caller.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_id(text, KEY_ID_LEN)?;
        Ok(Self(text.to_owned()))
    }

    /// Parses a key id already held as a `String`, keeping its allocation.
    pub fn parse_owned(text: String) -> Result<Self, IdError> {
        check_id(&text, KEY_ID_LEN)?;
        Ok(Self(text))
    }

    /// The identity this key belongs to.
    pub fn identity_id(&self) -> IdentityId {
        IdentityId(self.0[..IDENTITY_ID_LEN].to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_id_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.0)
            }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
    };
}
text_id_impls!(IdentityId);
text_id_impls!(KeyId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_names_its_identity() {
        let identity = IdentityId::generate();
        let key = KeyId::generate(&identity);
        assert_eq!(key.identity_id(), identity);
        assert_eq!(KeyId::parse(key.as_str()).unwrap(), key);
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(IdentityId::parse(""), Err(IdError::Missing));
        assert!(IdentityId::parse("short").is_err());
        assert!(IdentityId::parse("abcdefghijk_").is_err());
        assert!(KeyId::parse("abcdefghijklmnopqé").is_err());
    }
}
