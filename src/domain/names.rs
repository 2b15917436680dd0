//! Names and descriptions: the spec's rules, checked once at the edge.

use super::identity::IdentityKind;

/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Longest person name (a SCIM userName), in characters.
pub const MAX_PERSON_NAME_CHARS: usize = 128;
/// Longest service, key or dataset name.
pub const MAX_NAME_CHARS: usize = 30;

/// Why a name or description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("is required")]
    Missing,
    /// Breaks `^[A-Za-z0-9_]{1,30}$`.
    #[error("must be 1 to 30 letters, digits or underscores (^[A-Za-z0-9_]{{1,30}}$)")]
    BadServiceName,
    /// Too long.
    #[error("must be at most {0} characters")]
    TooLong(usize),
    /// Control characters are not printable.
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// The name of an identity: unique in the authority. A service's follows
/// `^[A-Za-z0-9_]{1,30}$`; a person's is its SCIM userName, 1 to 128
/// printable characters. Built only by its `parse` functions, so a value of
/// this type is valid by construction.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityName(String);

impl IdentityName {
    /// A service's name (see [`parse_name`]).
    pub fn parse_service(text: &str) -> Result<Self, NameError> {
        parse_name(text).map(Self)
    }

    /// A person's name, their SCIM userName (see [`parse_person_name`]).
    pub fn parse_person(text: &str) -> Result<Self, NameError> {
        parse_person_name(text).map(Self)
    }

    /// The name of an identity of `kind`.
    pub fn parse(kind: IdentityKind, text: &str) -> Result<Self, NameError> {
        match kind {
            IdentityKind::Service => Self::parse_service(text),
            IdentityKind::Person => Self::parse_person(text),
        }
    }

    /// [`IdentityName::parse`] of a name already held as a `String`, keeping
    /// its allocation (a record read from the store).
    pub fn parse_owned(kind: IdentityKind, text: String) -> Result<Self, NameError> {
        Self::parse(kind, &text)?;
        Ok(Self(text))
    }

    /// The name of the service identity the dataset wizard creates for
    /// `dataset`: a dataset's name follows the service-name rule, so it is
    /// one.
    pub fn of_dataset(dataset: &DatasetName) -> Self {
        Self(dataset.0.clone())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a dataset: unique, `^[A-Za-z0-9_]{1,30}$`. Built only by
/// [`DatasetName::parse`], so a value of this type is valid by construction.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    /// Checks a dataset's name (see [`parse_name`]).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        parse_name(text).map(Self)
    }

    /// [`DatasetName::parse`] of a name already held as a `String`, keeping
    /// its allocation (a record read from the store).
    pub fn parse_owned(text: String) -> Result<Self, NameError> {
        parse_name(&text)?;
        Ok(Self(text))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_impls {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        // Read-only access to the text, so the name reads wherever a `&str`
        // does; nothing builds one but its `parse` functions.
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }
        impl From<$t> for String {
            fn from(name: $t) -> String {
                name.0
            }
        }
    };
}
name_impls!(IdentityName);
name_impls!(DatasetName);

/// Checks a service, key or dataset name: `^[A-Za-z0-9_]{1,30}$`.
pub fn parse_name(text: &str) -> Result<String, NameError> {
    if text.is_empty() {
        return Err(NameError::Missing);
    }
    let valid = text.len() <= MAX_NAME_CHARS
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(NameError::BadServiceName)
    }
}

/// Checks a person's name (SCIM userName): 1 to 128 printable characters.
pub fn parse_person_name(text: &str) -> Result<String, NameError> {
    if text.trim().is_empty() {
        return Err(NameError::Missing);
    }
    if text.chars().count() > MAX_PERSON_NAME_CHARS {
        return Err(NameError::TooLong(MAX_PERSON_NAME_CHARS));
    }
    if text.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(text.to_owned())
}

/// Checks a description: at most 256 characters, no control characters but
/// newlines and tabs.
pub fn parse_description(text: &str) -> Result<String, NameError> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(NameError::TooLong(MAX_DESCRIPTION_CHARS));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(NameError::ControlCharacter);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_reference_rule() {
        assert!(parse_name("billing_api_2").is_ok());
        assert!(parse_name(&"a".repeat(30)).is_ok());
        assert_eq!(parse_name(&"a".repeat(31)), Err(NameError::BadServiceName));
        assert_eq!(parse_name("has space"), Err(NameError::BadServiceName));
        assert_eq!(parse_name("dash-ed"), Err(NameError::BadServiceName));
        assert_eq!(parse_name(""), Err(NameError::Missing));
    }

    #[test]
    fn name_types_exist_only_as_parsed() {
        assert!(IdentityName::parse_service("has space").is_err());
        assert!(IdentityName::parse_person("Ada Lovelace").is_ok());
        assert_eq!(
            IdentityName::parse(IdentityKind::Service, "billing").unwrap(),
            "billing"
        );
        assert!(IdentityName::parse_owned(IdentityKind::Person, "bell\u{7}".into()).is_err());
        assert!(DatasetName::parse("sales").is_ok());
        assert!(DatasetName::parse_owned("dash-ed".into()).is_err());
    }

    #[test]
    fn person_names_and_descriptions() {
        assert!(parse_person_name("ada.lovelace@example.com").is_ok());
        assert!(parse_person_name("Zoë Ünïcode").is_ok());
        assert!(parse_person_name(&"x".repeat(129)).is_err());
        assert!(parse_person_name("bell\u{7}").is_err());
        assert!(parse_description(&"é".repeat(256)).is_ok());
        assert!(parse_description(&"é".repeat(257)).is_err());
        assert!(parse_description("line\nbreak").is_ok());
        assert!(parse_description("nul\0").is_err());
    }
}
