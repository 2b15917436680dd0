//! Verify: the hot path. Shape and checksum first (no I/O), then one store
//! round trip for the key and its identity, then the secret, and only then
//! the reasons that depend on the key's settings.

use super::Authority;
use super::guard::{TokenDigest, VerifyGuard};
use crate::domain::token;
use crate::domain::{ApiKey, Error, Identity, KeyId, State, UnixMillis, Verdict, VerifyCode};
use crate::metrics::metrics;
use std::net::IpAddr;

/// What Verify is asked. Its `Debug` leaves the token out.
pub struct VerifyQuery<'a> {
    /// The presented token.
    pub token: &'a str,
    /// The dataset the caller wants, if any.
    pub dataset: Option<&'a str>,
    /// The address the token came from, if known.
    pub client_ip: Option<IpAddr>,
    /// Scopes the token must hold, every one of them (already checked for
    /// syntax).
    pub required_scopes: &'a [String],
}

impl std::fmt::Debug for VerifyQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyQuery")
            .field("token", &"[redacted]")
            .field("dataset", &self.dataset)
            .field("client_ip", &self.client_ip)
            .field("required_scopes", &self.required_scopes)
            .finish()
    }
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The admin's identity.
    pub identity: Identity,
    /// The key it authenticated with.
    pub key_id: KeyId,
}

impl Authority {
    /// Decides whether a token is valid. A bad token is a verdict, not an
    /// error; only a store outage is an error (fail closed).
    pub async fn verify(&self, query: VerifyQuery<'_>) -> Result<Verdict, Error> {
        // A keyrack token names its key; a token of another system may have
        // been imported, and then the import index names it.
        let (key_id, secret) = match token::parse(&self.options.token_prefix, query.token) {
            Ok(parsed) => (parsed.key_id.clone(), parsed.secret()),
            Err(_) => match self.imported_key(query.token).await? {
                Some(key_id) => (key_id, query.token),
                None => return Ok(Verdict::refused(VerifyCode::Malformed)),
            },
        };
        // What the guard already knows decides whether the store is worth a
        // round trip: a token argon2 refused stays wrong (a key id never gets
        // another secret), and a key under a failure throttle takes no new
        // guesses, so floods cost neither Redis nor argon2.
        let digest = self.guard.digest(query.token);
        let previously_matched = self.guard.verified_fingerprint(&digest);
        if previously_matched.is_none() {
            if self.guard.was_rejected(&digest) {
                metrics().verify_throttled.inc();
                self.guard.slow_down().await;
                return Ok(Verdict::refused(VerifyCode::Unknown));
            }
            if let Err(throttled) = self.guard.check_throttle(&key_id) {
                self.guard.slow_down().await;
                return Err(throttled);
            }
        }
        let Some((key, identity)) = self.store.key_with_identity(&key_id).await? else {
            return Ok(Verdict::refused(VerifyCode::Unknown));
        };
        if !self.is_current(&key, &identity) {
            return Ok(Verdict::refused(VerifyCode::Unknown));
        }
        // The record is read on every call; a cached acceptance counts only
        // for the very hash it was made against.
        let matched = match previously_matched {
            Some(fingerprint) if fingerprint == VerifyGuard::fingerprint(&key.secret_hash) => {
                metrics().verify_cache_hits.inc();
                true
            }
            _ => {
                metrics().verify_cache_misses.inc();
                self.check_with_argon2(digest, secret, &key).await?
            }
        };
        if !matched {
            return Ok(Verdict::refused(VerifyCode::Unknown));
        }
        let code = if key.state == State::Disabled || identity.state == State::Disabled {
            VerifyCode::Disabled
        } else if !identity.permits_address(&key.allowed_cidrs, query.client_ip) {
            VerifyCode::IpNotAllowed
        } else if query
            .dataset
            .is_some_and(|wanted| !key.may_access_dataset(&identity, wanted))
        {
            VerifyCode::DatasetNotAllowed
        } else if query
            .required_scopes
            .iter()
            .any(|wanted| !key.holds_scope(&identity, wanted))
        {
            VerifyCode::ScopeNotAllowed
        } else {
            VerifyCode::Valid
        };
        if code == VerifyCode::Valid {
            self.last_use.note(&key.id, UnixMillis::now());
        }
        Ok(Verdict {
            code,
            subject: Some((key, identity)),
        })
    }

    /// Runs argon2 (throttled per key, bounded in concurrency) and lets the
    /// guard remember the answer.
    async fn check_with_argon2(
        &self,
        digest: TokenDigest,
        secret: &str,
        key: &ApiKey,
    ) -> Result<bool, Error> {
        self.guard.check_throttle(&key.id)?;
        let _slot = self.guard.hash_slot().await?;
        let matched = self.secret_matches(secret, &key.secret_hash).await?;
        self.guard
            .remember(&key.id, digest, &key.secret_hash, matched);
        Ok(matched)
    }

    /// The key an imported token belongs to, found through the import index
    /// (one store read, only for tokens of an importable shape).
    async fn imported_key(&self, token: &str) -> Result<Option<KeyId>, Error> {
        if !super::keys::importable_shape(token) {
            return Ok(None);
        }
        let digests = self
            .hasher
            .import_digests(&crate::domain::SecretString::new(token.to_owned()));
        Ok(self.store.find_imported(&digests).await?)
    }

    /// The store drops records at their deadline; this also refuses one read
    /// in the instant before the store caught up, and a key whose record does
    /// not belong to the identity it was read with.
    fn is_current(&self, key: &ApiKey, identity: &Identity) -> bool {
        let now = UnixMillis::now();
        key.identity_id == identity.id
            && key
                .record_deadline(identity.expire_time)
                .is_none_or(|deadline| deadline > now)
    }

    /// Authenticates an AdminService caller: UNAUTHENTICATED without a valid
    /// token, PERMISSION_DENIED for a valid token of a non-admin identity.
    pub async fn authenticate_admin(
        &self,
        token: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Error> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated(
                "missing `authorization: Bearer <admin token>` metadata".into(),
            ));
        };
        let verdict = self
            .verify(VerifyQuery {
                token,
                dataset: None,
                client_ip: peer,
                required_scopes: &[],
            })
            .await?;
        match (verdict.code, verdict.subject) {
            (VerifyCode::Valid, Some((key, identity))) if identity.admin => Ok(Caller {
                identity,
                key_id: key.id,
            }),
            (VerifyCode::Valid, Some(_)) => Err(Error::PermissionDenied(
                "the token is valid but its identity is not an admin".into(),
            )),
            _ => Err(Error::Unauthenticated(
                "the bearer token is not a valid admin token".into(),
            )),
        }
    }
}
