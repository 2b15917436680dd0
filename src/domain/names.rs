//! Names and descriptions: the spec's rules, checked once at the edge.

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
