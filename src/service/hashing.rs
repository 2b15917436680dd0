//! Hashing of key secrets: argon2id PHC strings keyed with the server secret.
//!
//! Generated secrets carry 256 bits of entropy, so no amount of hashing cost
//! changes how hard they are to guess; the hash only has to be one-way and
//! keyed so that a copy of Redis yields no usable token. OWASP ASVS 5.0
//! V6.5.2 accepts an approved one-way function for such high-entropy secrets,
//! which is why the default parameters are light (2 MiB, one pass, one lane:
//! about a millisecond) rather than the password-grade ones.
//!
//! The server secret is argon2's secret input (a pepper). It never enters
//! Redis; its version is written into each PHC string as argon2's `keyid`, so
//! secrets can rotate: hashes made under an older version keep verifying for
//! as long as that version is configured.

use crate::domain::{Error, SecretString};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, KeyId, Params, ParamsBuilder, Version};
use std::collections::HashMap;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Least length of a server secret, in bytes.
pub const MIN_SERVER_SECRET_BYTES: usize = 32;

/// Argon2 cost parameters, and the bounds Verify accepts in stored hashes.
#[derive(Debug, Clone, Copy)]
pub struct HashPolicy {
    /// Memory in KiB for new hashes.
    pub memory_kib: u32,
    /// Passes for new hashes.
    pub iterations: u32,
    /// Lanes for new hashes.
    pub parallelism: u32,
    /// Largest memory (KiB) a stored hash may ask for.
    pub max_memory_kib: u32,
    /// Most passes a stored hash may ask for.
    pub max_iterations: u32,
    /// Most lanes a stored hash may ask for.
    pub max_parallelism: u32,
}

impl Default for HashPolicy {
    fn default() -> Self {
        Self {
            memory_kib: 2048,
            iterations: 1,
            parallelism: 1,
            // Refusing costlier hashes keeps a tampered record from turning
            // Verify into a CPU or memory sink.
            max_memory_kib: 64 * 1024,
            max_iterations: 8,
            max_parallelism: 4,
        }
    }
}

pub use crate::domain::ServerSecret;

/// A random secret, for dev mode: what it keys dies with the process, like
/// the embedded store.
pub(crate) fn random_secret() -> ServerSecret {
    let mut bytes = Zeroizing::new(vec![0u8; MIN_SERVER_SECRET_BYTES]);
    argon2::password_hash::rand_core::RngCore::fill_bytes(&mut OsRng, bytes.as_mut_slice());
    ServerSecret { version: 1, bytes }
}

/// Hashes and checks key secrets. Both calls are CPU-bound: run them on a
/// blocking thread.
#[derive(Debug)]
pub struct SecretHasher {
    current_version: u32,
    secrets: HashMap<u32, ServerSecret>,
    policy: HashPolicy,
}

impl SecretHasher {
    /// A hasher that hashes under `current` and also checks hashes made under
    /// `previous` versions. Only `Keyring` builds one, beside the seed sealer
    /// keyed with the same secrets.
    pub(crate) fn new(
        current: ServerSecret,
        previous: Vec<ServerSecret>,
        policy: HashPolicy,
    ) -> Result<Self, String> {
        for secret in std::iter::once(&current).chain(&previous) {
            if secret.bytes.len() < MIN_SERVER_SECRET_BYTES {
                return Err(format!(
                    "a server secret must be at least {MIN_SERVER_SECRET_BYTES} bytes (e.g. `openssl rand -base64 32`)"
                ));
            }
        }
        let current_version = current.version;
        let mut secrets = HashMap::new();
        for secret in previous.into_iter().chain(std::iter::once(current)) {
            secrets.insert(secret.version, secret);
        }
        Params::new(
            policy.memory_kib,
            policy.iterations,
            policy.parallelism,
            None,
        )
        .map_err(|e| format!("bad argon2 parameters: {e}"))?;
        Ok(Self {
            current_version,
            secrets,
            policy,
        })
    }

    fn argon2(&self, version: u32, params: Params) -> Result<Argon2<'_>, Error> {
        let secret = self.secrets.get(&version).ok_or_else(|| {
            Error::Internal(format!(
                "no server secret of version {version} is configured"
            ))
        })?;
        Argon2::new_with_secret(&secret.bytes, Algorithm::Argon2id, Version::V0x13, params)
            .map_err(|e| Error::Internal(format!("argon2 setup: {e}")))
    }

    /// Keyed digests of an imported token (HMAC-SHA-256 under a key derived
    /// from each configured server secret with HKDF), current version first:
    /// the import index is keyed by them, so a copy of Redis cannot be
    /// searched for a token, and imports survive a secret rotation while the
    /// previous secret is configured.
    pub fn import_digests(&self, token: &SecretString) -> Vec<String> {
        use hmac::Mac;
        let mut versions: Vec<u32> = self.secrets.keys().copied().collect();
        versions.sort_by_key(|version| (*version != self.current_version, *version));
        versions
            .into_iter()
            .filter_map(|version| {
                let secret = self.secrets.get(&version)?;
                let mut key = Zeroizing::new([0u8; 32]);
                hkdf::Hkdf::<sha2::Sha256>::new(None, &secret.bytes)
                    .expand(b"keyrack import index v1", key.as_mut())
                    .ok()?;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).ok()?;
                mac.update(token.expose().as_bytes());
                let digest = mac.finalize().into_bytes();
                Some(format!("{version}:{}", hex(&digest)))
            })
            .collect()
    }

    /// The PHC string of `secret` under the current server secret.
    pub fn hash(&self, secret: &SecretString) -> Result<String, Error> {
        let keyid = KeyId::new(&self.current_version.to_be_bytes())
            .map_err(|e| Error::Internal(format!("argon2 keyid: {e}")))?;
        let params = ParamsBuilder::new()
            .m_cost(self.policy.memory_kib)
            .t_cost(self.policy.iterations)
            .p_cost(self.policy.parallelism)
            .keyid(keyid)
            .build()
            .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
        let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("argon2 hash: {e}"));
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .as_salt()
            .decode_b64(&mut salt_bytes)
            .map_err(|e| fail(&e))?;
        let mut output = [0u8; OUTPUT_BYTES];
        let argon2 = self.argon2(self.current_version, params.clone())?;
        with_blocks(params.block_count(), |blocks| {
            argon2.hash_password_into_with_memory(
                secret.expose().as_bytes(),
                salt_bytes,
                &mut output,
                blocks,
            )
        })
        .map_err(|e| fail(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| fail(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&output).map_err(|e| fail(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Whether the PHC string was made under the current server secret; a
    /// string that cannot be read counts as current (there is nothing a
    /// re-hash could fix).
    pub fn is_current(&self, phc: &str) -> bool {
        PasswordHash::new(phc)
            .ok()
            .and_then(|hash| Params::try_from(&hash).ok())
            .and_then(|params| <[u8; 4]>::try_from(params.keyid()).ok())
            .is_none_or(|version| u32::from_be_bytes(version) == self.current_version)
    }

    /// Whether `secret` matches the PHC string. A hash that is not argon2id,
    /// asks for more than the policy allows, or names an unknown server secret
    /// never matches (and is logged: it means tampering or misconfiguration).
    pub fn verify(&self, secret: &str, phc: &str) -> bool {
        match self.check(secret, phc) {
            Ok(matched) => matched,
            Err(reason) => {
                tracing::error!(%reason, "refusing a stored key hash");
                false
            }
        }
    }

    fn check(&self, secret: &str, phc: &str) -> Result<bool, String> {
        let hash = PasswordHash::new(phc).map_err(|e| format!("unparsable PHC string: {e}"))?;
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return Err(format!("algorithm {} is not argon2id", hash.algorithm));
        }
        let params = Params::try_from(&hash).map_err(|e| format!("bad parameters: {e}"))?;
        let policy = &self.policy;
        if params.m_cost() > policy.max_memory_kib
            || params.t_cost() > policy.max_iterations
            || params.p_cost() > policy.max_parallelism
        {
            return Err(format!(
                "parameters m={} t={} p={} exceed the configured bounds",
                params.m_cost(),
                params.t_cost(),
                params.p_cost()
            ));
        }
        let version = <[u8; 4]>::try_from(params.keyid())
            .map(u32::from_be_bytes)
            .map_err(|_| "missing or malformed server secret version (keyid)".to_owned())?;
        let salt = hash.salt.ok_or("no salt")?;
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| format!("bad salt: {e}"))?;
        let expected = hash.hash.ok_or("no hash output")?;
        let mut output = Zeroizing::new(vec![0u8; expected.len()]);
        let blocks = params.block_count();
        let argon2 = self.argon2(version, params).map_err(|e| e.to_string())?;
        with_blocks(blocks, |memory| {
            argon2.hash_password_into_with_memory(
                secret.as_bytes(),
                salt_bytes,
                &mut output,
                memory,
            )
        })
        .map_err(|e| format!("argon2: {e}"))?;
        Ok(bool::from(expected.as_bytes().ct_eq(&output)))
    }
}

/// Bytes of argon2 output in new hashes.
const OUTPUT_BYTES: usize = 32;

thread_local! {
    /// argon2's working memory, reused by each thread that hashes. Allocating
    /// it afresh per hash (2 MiB) left the allocator holding tens of MiB
    /// across threads; reusing it keeps memory at one buffer per hashing
    /// thread (see BENCHMARKS.md).
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` over `count` argon2 blocks of this thread's buffer, zeroing them
/// afterwards: they hold state derived from a secret.
fn with_blocks<T>(count: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        let result = f(&mut blocks[..count]);
        blocks[..count]
            .iter_mut()
            .for_each(zeroize::Zeroize::zeroize);
        result
    })
}

/// A 32-byte server secret of one repeated byte, for unit tests.
#[cfg(test)]
pub(crate) fn secret(version: u32, fill: u8) -> ServerSecret {
    ServerSecret {
        version,
        bytes: Zeroizing::new(vec![fill; 32]),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_with_the_same_secret_and_pepper() {
        let hasher = SecretHasher::new(secret(1, 7), vec![], HashPolicy::default()).unwrap();
        let phc = hasher.hash(&SecretString::new("s3cret".into())).unwrap();
        assert!(
            phc.starts_with("$argon2id$v=19$m=2048,t=1,p=1,keyid="),
            "{phc}"
        );
        assert!(hasher.verify("s3cret", &phc));
        assert!(!hasher.verify("s3creT", &phc));
        let other_pepper = SecretHasher::new(secret(1, 8), vec![], HashPolicy::default()).unwrap();
        assert!(!other_pepper.verify("s3cret", &phc));
    }

    #[test]
    fn rotation_keeps_old_hashes_working() {
        let old = SecretHasher::new(secret(1, 7), vec![], HashPolicy::default()).unwrap();
        let phc = old.hash(&SecretString::new("s3cret".into())).unwrap();
        let rotated =
            SecretHasher::new(secret(2, 9), vec![secret(1, 7)], HashPolicy::default()).unwrap();
        assert!(rotated.verify("s3cret", &phc));
        assert!(!rotated.is_current(&phc));
        assert!(old.is_current(&phc));
        let new_phc = rotated.hash(&SecretString::new("s3cret".into())).unwrap();
        assert!(
            !old.verify("s3cret", &new_phc),
            "version 2 is unknown to the old hasher"
        );
        assert!(rotated.is_current(&new_phc));
    }

    #[test]
    fn refuses_costly_or_foreign_hashes() {
        let policy = HashPolicy {
            max_memory_kib: 1024,
            ..HashPolicy::default()
        };
        let strict = SecretHasher::new(secret(1, 7), vec![], policy).unwrap();
        let lax = SecretHasher::new(secret(1, 7), vec![], HashPolicy::default()).unwrap();
        let phc = lax.hash(&SecretString::new("s3cret".into())).unwrap();
        assert!(!strict.verify("s3cret", &phc));
        assert!(!lax.verify(
            "s3cret",
            "$argon2i$v=19$m=2048,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        ));
        assert!(!lax.verify("s3cret", "not a phc string"));
        assert!(
            SecretHasher::new(
                ServerSecret {
                    version: 1,
                    bytes: Zeroizing::new(vec![1; 31])
                },
                vec![],
                HashPolicy::default()
            )
            .is_err()
        );
    }
}
