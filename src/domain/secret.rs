//! Values that must never be printed: tokens, secrets, TOTP codes and seeds
//! (`SecretString`), and the server secret (`ServerSecret`).

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A secret string. It has no `Display`, its `Debug` is redacted, it is
/// zeroized on drop, and equality is constant-time.
#[derive(Clone, Default)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret itself; call sites are the places that may see it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison with another secret.
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// A server secret with its version: argon2's pepper for key secrets and the
/// root of the TOTP sealing key (`service::keyring` builds both from it).
#[derive(Clone)]
pub struct ServerSecret {
    /// Written into each PHC string as argon2's `keyid`, and before each
    /// sealed seed.
    pub version: u32,
    /// The secret bytes.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerSecret(version {}, [redacted])", self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = SecretString::new("hunter2hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(secret.ct_eq("hunter2hunter2"));
        assert!(!secret.ct_eq("hunter2"));
    }
}
