//! Sealing of TOTP seeds at rest: XChaCha20-Poly1305 under a key derived
//! (HKDF-SHA-256) from the server secret, bound to the identity it belongs to.
//! A copy of Redis alone yields no seed. The server secret's version prefixes
//! each sealed seed, so seeds survive a rotation while the previous secret is
//! configured, and a seed under an older one is re-sealed when next used
//! (`rotation.rs`).

use super::hashing::ServerSecret;
use crate::domain::{Error, IdentityId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::HashMap;
use zeroize::Zeroizing;

const KEY_INFO: &[u8] = b"keyrack/totp-seed/v1";
const NONCE_BYTES: usize = 24;

/// Seals and opens TOTP seeds.
pub struct SeedSealer {
    current_version: u32,
    ciphers: HashMap<u32, XChaCha20Poly1305>,
}

impl std::fmt::Debug for SeedSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeedSealer(version {}, [redacted])",
            self.current_version
        )
    }
}

impl SeedSealer {
    /// A sealer under `current`, also opening seeds sealed under `previous`.
    /// Only `Keyring` builds one, beside the hasher keyed with the same
    /// secrets.
    pub(crate) fn new(current: &ServerSecret, previous: &[ServerSecret]) -> Self {
        let ciphers = std::iter::once(current)
            .chain(previous)
            .map(|secret| {
                let mut key = Zeroizing::new([0u8; 32]);
                hkdf::Hkdf::<sha2::Sha256>::new(None, &secret.bytes)
                    .expand(KEY_INFO, key.as_mut())
                    .expect("32 bytes is a valid HKDF-SHA-256 output length");
                (secret.version, XChaCha20Poly1305::new(key.as_ref().into()))
            })
            .collect();
        Self {
            current_version: current.version,
            ciphers,
        }
    }

    /// Seals `seed` for `identity`: `<version>.<base64url(nonce ‖ ciphertext)>`.
    pub fn seal(&self, identity: &IdentityId, seed: &[u8]) -> Result<String, Error> {
        let cipher = &self.ciphers[&self.current_version];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: seed,
                    aad: identity.as_str().as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("sealing a TOTP seed failed".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!(
            "{}.{}",
            self.current_version,
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Whether `sealed` was sealed under the current server secret. A string
    /// whose version cannot be read counts as current: re-sealing could not
    /// fix it (opening it fails and says so).
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .split_once('.')
            .and_then(|(version, _)| version.parse::<u32>().ok())
            .is_none_or(|version| version == self.current_version)
    }

    /// Opens a seed sealed for `identity`, under whichever configured
    /// server secret its version names.
    pub fn open(&self, identity: &IdentityId, sealed: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
        let corrupt =
            |why: &str| Error::Internal(format!("cannot open the TOTP seed of {identity}: {why}"));
        let (version, body) = sealed.split_once('.').ok_or_else(|| corrupt("malformed"))?;
        let version: u32 = version.parse().map_err(|_| corrupt("malformed version"))?;
        let cipher = self.ciphers.get(&version).ok_or_else(|| {
            corrupt("sealed under a server secret version that is not configured")
        })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| corrupt("malformed"))?;
        if bytes.len() <= NONCE_BYTES {
            return Err(corrupt("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: identity.as_str().as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt("authentication failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::hashing::secret;
    use super::*;

    #[test]
    fn seeds_open_only_for_their_identity_and_secret() {
        let sealer = SeedSealer::new(&secret(1, 1), &[]);
        let alice = IdentityId::generate();
        let sealed = sealer.seal(&alice, b"twenty byte seed!!!!").unwrap();
        assert!(!sealed.contains("twenty"));
        assert_eq!(
            sealer.open(&alice, &sealed).unwrap().as_slice(),
            b"twenty byte seed!!!!"
        );
        assert!(sealer.open(&IdentityId::generate(), &sealed).is_err());
        assert!(
            SeedSealer::new(&secret(1, 2), &[])
                .open(&alice, &sealed)
                .is_err()
        );
        let rotated = SeedSealer::new(&secret(2, 3), &[secret(1, 1)]);
        assert!(rotated.open(&alice, &sealed).is_ok());
        assert!(sealer.is_current(&sealed));
        assert!(!rotated.is_current(&sealed));
        let resealed = rotated.seal(&alice, b"twenty byte seed!!!!").unwrap();
        assert!(rotated.is_current(&resealed));
        assert!(
            SeedSealer::new(&secret(2, 3), &[])
                .open(&alice, &resealed)
                .is_ok(),
            "a re-sealed seed no longer needs the previous secret"
        );
    }
}
