//! The token format: `<prefix>_<key id>_<secret><checksum>`.
//!
//! The secret is 32 bytes from the OS CSPRNG in fixed-width base62 (43
//! characters); the checksum is the CRC32 of everything before it, in
//! fixed-width base62 (6 characters). Parsing checks shape and checksum only:
//! no I/O and no hashing, so a typo or a random string costs nothing.

use super::ids::{KEY_ID_LEN, KeyId};
use super::secret::SecretString;
use rand::TryRngCore;
use rand::rngs::OsRng;

/// Bytes of entropy in a secret.
pub const SECRET_BYTES: usize = 32;
/// Base62 characters that encode a secret (62^43 > 2^256).
pub const SECRET_CHARS: usize = 43;
/// Base62 characters that encode the CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_CHARS: usize = 6;
/// Characters of the secret shown in a key's `token_hint`.
pub const HINT_SECRET_CHARS: usize = 4;
/// Longest token worth parsing; anything longer is malformed outright.
pub const MAX_TOKEN_LEN: usize = 128;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The configurable prefix that starts every token, e.g. `kr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPrefix(String);

/// Why a prefix was refused.
#[derive(Debug, thiserror::Error)]
#[error("a token prefix must be 1 to 16 lowercase letters or digits, starting with a letter")]
pub struct BadPrefix;

impl TokenPrefix {
    /// Parses a prefix: 1 to 16 lowercase letters or digits, starting with a
    /// letter (no underscore: it separates the token's parts).
    pub fn parse(text: &str) -> Result<Self, BadPrefix> {
        let mut bytes = text.bytes();
        let starts_with_letter = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let rest_ok = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if starts_with_letter && rest_ok && text.len() <= 16 {
            Ok(Self(text.to_owned()))
        } else {
            Err(BadPrefix)
        }
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TokenPrefix {
    fn default() -> Self {
        Self("kr".to_owned())
    }
}

/// A freshly minted token: shown once to the caller, then only its hash remains.
#[derive(Debug)]
pub struct MintedToken {
    /// The whole token, as the caller will present it.
    pub token: SecretString,
    /// The secret part, which is what gets hashed.
    pub secret: SecretString,
    /// Prefix, key id and the first characters of the secret, for display.
    pub hint: String,
}

/// Why a presented token was refused before any lookup. Carries no part of
/// the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    /// Empty, too long, or not of the token's shape.
    #[error("not a keyrack token")]
    Shape,
    /// The shape is right but the checksum does not match: a typo or a forgery.
    #[error("token checksum mismatch")]
    Checksum,
}

/// A token whose shape and checksum are right.
#[derive(PartialEq)]
pub struct ParsedToken<'a> {
    /// The key the token claims to belong to.
    pub key_id: KeyId,
    secret: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedToken")
            .field("key_id", &self.key_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl<'a> ParsedToken<'a> {
    /// The secret part, to be checked against the stored hash.
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

/// Mints a token for `key_id` with a fresh secret from the OS CSPRNG.
pub fn mint(prefix: &TokenPrefix, key_id: &KeyId) -> MintedToken {
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    // The OS CSPRNG failing is not something keyrack can work around; a token
    // from a weaker source would be worse than stopping.
    OsRng
        .try_fill_bytes(bytes.as_mut())
        .expect("the operating system's random number generator failed");
    let secret = base62_fixed(bytes.as_ref(), SECRET_CHARS);
    let body = format!("{}_{}_{}", prefix.as_str(), key_id, secret);
    let checksum = checksum_of(&body);
    let hint = format!(
        "{}_{}_{}…",
        prefix.as_str(),
        key_id,
        &secret[..HINT_SECRET_CHARS]
    );
    MintedToken {
        token: SecretString::new(body + &checksum),
        secret: SecretString::new(secret),
        hint,
    }
}

/// Checks a presented token's shape and checksum, without any I/O.
pub fn parse<'a>(prefix: &TokenPrefix, token: &'a str) -> Result<ParsedToken<'a>, MalformedToken> {
    if token.len() > MAX_TOKEN_LEN || !token.is_ascii() {
        return Err(MalformedToken::Shape);
    }
    let rest = token
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_prefix('_'))
        .ok_or(MalformedToken::Shape)?;
    if rest.len() != KEY_ID_LEN + 1 + SECRET_CHARS + CHECKSUM_CHARS
        || rest.as_bytes()[KEY_ID_LEN] != b'_'
    {
        return Err(MalformedToken::Shape);
    }
    let key_id = KeyId::parse(&rest[..KEY_ID_LEN]).map_err(|_| MalformedToken::Shape)?;
    let tail = &rest[KEY_ID_LEN + 1..];
    if !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedToken::Shape);
    }
    let (secret, checksum) = tail.split_at(SECRET_CHARS);
    let body = &token[..token.len() - CHECKSUM_CHARS];
    if checksum_of(body) != checksum {
        return Err(MalformedToken::Checksum);
    }
    Ok(ParsedToken { key_id, secret })
}

fn checksum_of(body: &str) -> String {
    base62_fixed(
        &crc32fast::hash(body.as_bytes()).to_be_bytes(),
        CHECKSUM_CHARS,
    )
}

/// Big-endian bytes as exactly `width` base62 digits (left-padded with `0`).
/// `width` must be large enough for the input; both callers use constants that are.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = vec![BASE62[0]; width];
    for slot in digits.iter_mut().rev() {
        // Long division of the big-endian number by 62; the remainder is the
        // next digit from the right.
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        *slot = BASE62[remainder as usize];
    }
    number.iter_mut().for_each(|b| *b = 0);
    String::from_utf8(digits).expect("base62 digits are ASCII")
}

/// The credential of an `Authorization: Bearer <token>` header value, whatever
/// the case of the scheme (RFC 7235 §2.1).
pub fn bearer_credential(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::IdentityId;

    fn sample() -> (TokenPrefix, KeyId, MintedToken) {
        let prefix = TokenPrefix::default();
        let key_id = KeyId::generate(&IdentityId::generate());
        let minted = mint(&prefix, &key_id);
        (prefix, key_id, minted)
    }

    #[test]
    fn minted_tokens_parse_back() {
        let (prefix, key_id, minted) = sample();
        let parsed = parse(&prefix, minted.token.expose()).unwrap();
        assert_eq!(parsed.key_id, key_id);
        assert_eq!(parsed.secret(), minted.secret.expose());
        assert_eq!(minted.secret.expose().len(), SECRET_CHARS);
        assert!(minted.hint.starts_with(&format!("kr_{key_id}_")));
        assert!(!minted.hint.contains(minted.secret.expose()));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let (prefix, _, minted) = sample();
        let token = minted.token.expose();
        for index in 0..token.len() {
            let mut bytes = token.as_bytes().to_vec();
            bytes[index] = if bytes[index] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(
                parse(&prefix, &changed).is_err(),
                "change at {index} passed"
            );
        }
    }

    #[test]
    fn refuses_other_shapes() {
        let (prefix, _, minted) = sample();
        let token = minted.token.expose();
        assert_eq!(parse(&prefix, ""), Err(MalformedToken::Shape));
        assert_eq!(parse(&prefix, &token[1..]), Err(MalformedToken::Shape));
        assert_eq!(
            parse(&prefix, &format!("{token}x")),
            Err(MalformedToken::Shape)
        );
        let other = TokenPrefix::parse("xk").unwrap();
        assert_eq!(parse(&other, token), Err(MalformedToken::Shape));
        assert!(TokenPrefix::parse("k_r").is_err());
        assert!(TokenPrefix::parse("1kr").is_err());
    }

    #[test]
    fn base62_is_fixed_width_and_exact() {
        assert_eq!(base62_fixed(&[0, 0, 0, 0], 6), "000000");
        assert_eq!(base62_fixed(&[0, 0, 0, 61], 6), "00000z");
        assert_eq!(base62_fixed(&[0, 0, 0, 62], 6), "000010");
        assert_eq!(base62_fixed(&[0xff; 4], 6), "4gfFC3");
        assert_eq!(base62_fixed(&[0xff; 32], SECRET_CHARS).len(), SECRET_CHARS);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::domain::ids::IdentityId;
    use proptest::prelude::*;

    fn base62_value(digits: &str) -> Vec<u8> {
        // Big-endian base-256 digits of a base-62 number, for checking the encoder.
        let mut bytes = vec![0u8; 40];
        for digit in digits.bytes() {
            let mut carry = BASE62.iter().position(|&d| d == digit).unwrap() as u32;
            for byte in bytes.iter_mut().rev() {
                let value = u32::from(*byte) * 62 + carry;
                *byte = (value & 0xff) as u8;
                carry = value >> 8;
            }
        }
        bytes
    }

    proptest! {
        #[test]
        fn minted_tokens_always_parse_back(_seed in any::<u64>(), prefix in "[a-z][a-z0-9]{0,15}") {
            let prefix = TokenPrefix::parse(&prefix).unwrap();
            let key_id = KeyId::generate(&IdentityId::generate());
            let minted = mint(&prefix, &key_id);
            let parsed = parse(&prefix, minted.token.expose()).unwrap();
            prop_assert_eq!(&parsed.key_id, &key_id);
            prop_assert_eq!(parsed.secret(), minted.secret.expose());
        }

        #[test]
        fn parsing_never_panics_and_accepts_only_well_formed_tokens(text in "\\PC{0,200}") {
            if let Ok(parsed) = parse(&TokenPrefix::default(), &text) {
                prop_assert!(text.starts_with("kr_"));
                prop_assert!(KeyId::parse(parsed.key_id.as_str()).is_ok());
            }
        }

        #[test]
        fn base62_encodes_exactly(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let encoded = base62_fixed(&bytes, SECRET_CHARS);
            prop_assert_eq!(encoded.len(), SECRET_CHARS);
            let decoded = base62_value(&encoded);
            prop_assert_eq!(&decoded[decoded.len() - 32..], bytes.as_slice());
            prop_assert!(decoded[..decoded.len() - 32].iter().all(|b| *b == 0));
        }

        #[test]
        fn cidr_and_name_parsers_never_panic(text in "\\PC{0,80}") {
            let _ = crate::domain::cidr::parse_cidr(&text);
            let _ = crate::domain::names::parse_name(&text);
            let _ = crate::domain::names::parse_person_name(&text);
            let _ = crate::domain::names::parse_description(&text);
        }
    }
}
