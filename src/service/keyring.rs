//! What the server secret keys: argon2's pepper for key secrets
//! (`hashing.rs`) and the sealing key of TOTP seeds (`sealing.rs`). Both are
//! built here, in one step from one set of secrets, so an authority cannot
//! hash under one current secret and seal under another, nor accept a
//! previous secret for keys but not for seeds.

use super::hashing::{self, HashPolicy, SecretHasher, ServerSecret};
use super::sealing::SeedSealer;

/// The hasher and the sealer, keyed with the same server secrets.
#[derive(Debug)]
pub struct Keyring {
    hasher: SecretHasher,
    sealer: SeedSealer,
}

impl Keyring {
    /// Keys both under `current`, still accepting what `previous` versions
    /// hashed or sealed. Refuses a secret shorter than
    /// `hashing::MIN_SERVER_SECRET_BYTES` and argon2 parameters it rejects.
    pub fn new(
        current: ServerSecret,
        previous: Vec<ServerSecret>,
        policy: HashPolicy,
    ) -> Result<Self, String> {
        let sealer = SeedSealer::new(&current, &previous);
        let hasher = SecretHasher::new(current, previous, policy)?;
        Ok(Self { hasher, sealer })
    }

    /// Keyed with a random secret, for dev mode and the embedded benchmark:
    /// what it keys dies with the process, like the embedded store.
    pub fn random() -> Self {
        let secret = hashing::random_secret();
        Self {
            sealer: SeedSealer::new(&secret, &[]),
            // A fresh secret has the required length, and the default policy
            // is argon2's own valid parameters: nothing left to refuse.
            hasher: SecretHasher::new(secret, Vec::new(), HashPolicy::default())
                .expect("a random secret of the least length and the default policy are accepted"),
        }
    }

    /// The sealer, to open or check a seed outside an authority (tests of
    /// rotation).
    pub fn sealer(&self) -> &SeedSealer {
        &self.sealer
    }

    pub(crate) fn into_parts(self) -> (SecretHasher, SeedSealer) {
        (self.hasher, self.sealer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdentityId;

    #[test]
    fn a_random_keyring_seals_and_opens() {
        let keyring = Keyring::random();
        let identity = IdentityId::generate();
        let sealed = keyring.sealer().seal(&identity, b"seed").unwrap();
        assert_eq!(
            keyring
                .sealer()
                .open(&identity, &sealed)
                .unwrap()
                .as_slice(),
            b"seed"
        );
    }

    #[test]
    fn a_short_secret_is_refused_for_both() {
        let short = ServerSecret {
            version: 1,
            bytes: zeroize::Zeroizing::new(vec![7; 8]),
        };
        assert!(Keyring::new(short, Vec::new(), HashPolicy::default()).is_err());
    }
}
