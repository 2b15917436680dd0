//! Verify: the hot path. Shape and checksum first (no I/O), then one store
//! round trip for the key and its identity, then the secret, and only then
//! the reasons that depend on the key's settings.

use super::guard::{TokenDigest, accepted_against};
use super::{Authority, audit};
use crate::domain::audit::HONEYTOKEN_USED;
use crate::domain::token;
use crate::domain::usage::Refusal;
use crate::domain::{
    ApiKey, Error, HashFingerprint, Identity, KeyId, State, UnixMillis, Verdict, VerifyCode,
};
use crate::metrics::metrics;
use crate::store::Charge;
use futures_util::future::BoxFuture;
use std::net::{IpAddr, SocketAddr};

/// How many times in a row Verify decides again when a charge finds the
/// records it read changed (see `Store::charge_usage`).
const MAX_STALE_CHARGES: usize = 3;

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
    /// Where the call came from, recorded when the token is a honeytoken.
    pub context: CallContext<'a>,
    /// What a valid call spends of the key's rate limits and credits (0
    /// only checks that a call of 1 would pass).
    pub cost: u64,
}

/// Where a Verify call came from: what a honeytoken's use records. It
/// borrows the caller's headers: only a honeytoken's use copies them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallContext<'a> {
    /// The transport peer (address and port).
    pub peer: Option<SocketAddr>,
    /// The caller's `x-request-id`, when it sent one.
    pub request_id: Option<&'a str>,
    /// The caller's W3C `traceparent`, when it sent one.
    pub traceparent: Option<&'a str>,
}

impl<'a> CallContext<'a> {
    /// The context of a call from `peer` whose request headers (or gRPC
    /// metadata) `header` reads.
    pub fn from_headers(
        peer: Option<SocketAddr>,
        header: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Self {
        Self {
            peer,
            request_id: header("x-request-id"),
            traceparent: header("traceparent"),
        }
    }
}

impl std::fmt::Debug for VerifyQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyQuery")
            .field("token", &"[redacted]")
            .field("dataset", &self.dataset)
            .field("client_ip", &self.client_ip)
            .field("required_scopes", &self.required_scopes)
            .field("context", &self.context)
            .field("cost", &self.cost)
            .finish()
    }
}

/// How a presented secret compared with a key's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretMatch {
    /// Argon2 accepted this token against this very hash on an earlier call.
    AcceptedBefore,
    /// Argon2 accepted it on this call.
    ByArgon2,
    /// It is not the key's secret.
    No,
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
        // A token argon2 refused stays wrong (a key id never gets another
        // secret): its answer costs neither Redis nor argon2.
        let digest = self.guard.digest(query.token);
        // What argon2 accepted this token against before, looked up once.
        let mut accepted = self.guard.verified_fingerprint(&digest);
        if accepted.is_none() && self.guard.was_rejected(&digest) {
            self.guard.hold_back().await;
            return Ok(Verdict::refused(VerifyCode::Unknown));
        }
        // A limited key's records as its last charge confirmed them, for a
        // token argon2 accepted against that very hash: decided on, they
        // stand only if this call's charge confirms them again (the charge
        // refuses changed revisions); any other outcome reads the store.
        let charged = self
            .charged_records
            .as_ref()
            .and_then(|charged| charged.get(&key_id))
            .filter(|subject| accepted_against(accepted, &subject.0.secret_hash));
        let mut unconfirmed = charged.is_some();
        let mut record = match charged {
            Some(subject) => Some(subject),
            None => self.store.key_with_identity(&key_id).await?,
        };
        // A cached key record keeps only its hash's fingerprint: enough for
        // a token argon2 accepted against that hash before, but argon2 itself
        // needs the PHC string, so any other token reads the record from the
        // store (argon2's cost dwarfs the read).
        if record.as_deref().is_some_and(|(key, _)| {
            key.secret_hash.phc().is_none() && !accepted_against(accepted, &key.secret_hash)
        }) {
            record = self.store.key_with_identity_uncached(&key_id).await?;
        }
        // A charge finds the records changed since they were read (a cached
        // copy within its staleness bound, or a change in between) at most a
        // few times in a row; each time Verify decides again on a fresh read.
        // Records no charge confirmed yet may cost one more decision.
        for _ in 0..MAX_STALE_CHARGES + usize::from(unconfirmed) {
            let current = record
                .take()
                .filter(|subject| self.is_current(&subject.0, &subject.1));
            if unconfirmed && current.is_none() {
                unconfirmed = false;
                record = self.store.key_with_identity_uncached(&key_id).await?;
                continue;
            }
            let Some(subject) = current else {
                // A key id that does not exist gets the work and the answers a
                // wrong secret for a live one gets, so neither tells whether it
                // exists.
                self.check_with_argon2(digest, secret, &key_id, &self.decoy_hash)
                    .await?;
                return Ok(Verdict::refused(VerifyCode::Unknown));
            };
            let (key, identity) = &*subject;
            let matched = self
                .secret_matches_record(digest, secret, key, &mut accepted)
                .await?;
            if matched == SecretMatch::No {
                return Ok(Verdict::refused(VerifyCode::Unknown));
            }
            if key.honeytoken {
                // The very answer an unknown token gets: nothing else is said,
                // whatever the key's state or settings. Its first use ran
                // argon2, as an unknown token's does; a later one is held
                // back, as a known-wrong token's is, so timing cannot tell
                // them apart either.
                self.record_honeytoken_use(key, &query);
                if matched == SecretMatch::AcceptedBefore {
                    self.guard.hold_back().await;
                }
                return Ok(Verdict::refused(VerifyCode::Unknown));
            }
            let mut code = Self::decide(key, identity, &query);
            let check = (code == VerifyCode::Valid)
                .then(|| key.usage_check(identity, query.cost))
                .flatten();
            if unconfirmed && check.is_none() {
                // A refusal needs records no charge confirms: read them.
                unconfirmed = false;
                record = self.store.key_with_identity_uncached(&key_id).await?;
                continue;
            }
            // Only a call that is otherwise valid is charged.
            let mut usage = None;
            if let Some(check) = check {
                match self.store.charge_usage(key, identity, &check).await? {
                    Charge::Stale => {
                        if let Some(charged) = &self.charged_records {
                            charged.remove(&key_id);
                        }
                        unconfirmed = false;
                        record = self.store.key_with_identity_uncached(&key_id).await?;
                        continue;
                    }
                    Charge::Settled(settlement) => {
                        if !unconfirmed && let Some(charged) = &self.charged_records {
                            charged.insert(key_id.clone(), subject.clone());
                        }
                        code = match settlement.refusal {
                            None => VerifyCode::Valid,
                            Some(Refusal::RateLimited) => VerifyCode::RateLimited,
                            Some(Refusal::UsageExceeded) => VerifyCode::UsageExceeded,
                        };
                        usage = Some(settlement);
                    }
                }
            }
            if code == VerifyCode::Valid {
                self.last_use.note(&key.id, UnixMillis::now());
            }
            return Ok(Verdict {
                code,
                subject: Some(subject),
                usage,
            });
        }
        Err(Error::Unavailable(
            "the key kept changing while its use was being charged; retry".into(),
        ))
    }

    /// Whether `secret` is the one `key` was minted with: from what argon2
    /// `accepted` before when that was this very hash, else by argon2 (whose
    /// acceptance then becomes `accepted`).
    async fn secret_matches_record(
        &self,
        digest: TokenDigest,
        secret: &str,
        key: &ApiKey,
        accepted: &mut Option<HashFingerprint>,
    ) -> Result<SecretMatch, Error> {
        // The record is read on every call; a cached acceptance counts only
        // for the very hash it was made against.
        if accepted_against(*accepted, &key.secret_hash) {
            metrics().verify_cache_hits.inc();
            return Ok(SecretMatch::AcceptedBefore);
        }
        metrics().verify_cache_misses.inc();
        let Some(phc) = key.secret_hash.phc() else {
            // `verify` reads such a key again from the store first.
            return Err(Error::Internal(format!(
                "key {} reached argon2 without its PHC string",
                key.id
            )));
        };
        if !self.check_with_argon2(digest, secret, &key.id, phc).await? {
            return Ok(SecretMatch::No);
        }
        *accepted = Some(key.secret_hash.fingerprint());
        // Boxed, as argon2 is: it runs once per key and server secret.
        Box::pin(self.rehash_if_outdated(key, secret, digest)).await;
        Ok(SecretMatch::ByArgon2)
    }

    /// The reasons a matching secret is still refused, in the order the
    /// spec gives them; usage control comes after all of them.
    fn decide(key: &ApiKey, identity: &Identity, query: &VerifyQuery<'_>) -> VerifyCode {
        if key.state == State::Disabled || identity.state == State::Disabled {
            VerifyCode::Disabled
        } else if !identity.permits_address(&key.allowed_cidrs, query.client_ip) {
            VerifyCode::IpNotAllowed
        } else if query
            .dataset
            .is_some_and(|wanted| !key.may_access_dataset(identity, wanted))
        {
            VerifyCode::DatasetNotAllowed
        } else if query
            .required_scopes
            .iter()
            .any(|wanted| !key.holds_scope(identity, wanted))
        {
            VerifyCode::ScopeNotAllowed
        } else {
            VerifyCode::Valid
        }
    }

    /// How long a key under the failure throttle takes no new guesses.
    pub fn throttle_window(&self) -> std::time::Duration {
        self.options.guard.failure_window
    }

    /// Counts a honeytoken's use and appends its HONEYTOKEN_USED event off
    /// the answer's path, so the answer takes no longer than an unknown
    /// token's and does not depend on the write.
    fn record_honeytoken_use(&self, key: &ApiKey, query: &VerifyQuery<'_>) {
        metrics().honeytoken_uses.inc();
        tracing::warn!(key_id = %key.id, identity_id = %key.identity_id, peer = ?query.context.peer, client_ip = ?query.client_ip, "a honeytoken was presented");
        let mut event = audit::event(
            HONEYTOKEN_USED,
            None,
            query.context.peer,
            audit::request_id(query.context.request_id),
        );
        event.target_ids = vec![key.id.to_string(), key.identity_id.to_string()];
        event.client_ip = query.client_ip.map(|ip| ip.to_string());
        event.trace_id = crate::telemetry::trace_id(query.context.traceparent);
        let store = std::sync::Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(error) = store.append_audit(&event).await {
                tracing::error!(%error, key_id = %event.target_ids[0], "a honeytoken's use could not be recorded in the audit log");
            }
        });
    }

    /// Runs argon2 against `phc` (bounded in concurrency) and lets the guard
    /// remember the answer. Boxed: this is Verify's cold path, and inlined
    /// its state would make every Verify's future, which each layer above
    /// it moves, that much larger (BENCHMARKS.md, "Verify's future").
    fn check_with_argon2<'a>(
        &'a self,
        digest: TokenDigest,
        secret: &'a str,
        key_id: &'a KeyId,
        phc: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let matched = {
                let _slot = self.guard.hash_slot().await?;
                self.secret_matches(secret, phc).await?
            };
            self.guard.remember(key_id, digest, phc, matched).await;
            Ok(matched)
        })
    }

    /// The key an imported token belongs to, found through the import index:
    /// one store read, only for tokens of an importable shape, and not once
    /// the store said no token was ever imported into it: then a token not
    /// in keyrack's format costs neither a hash nor a read.
    async fn imported_key(&self, token: &str) -> Result<Option<KeyId>, Error> {
        if !self.imports_possible() || !super::keys::importable_shape(token) {
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
    /// token, PERMISSION_DENIED for a valid token of a non-admin identity,
    /// RESOURCE_EXHAUSTED for an admin whose rate limits or credits are
    /// spent (an admin's calls are charged as its Verify calls are).
    /// `context` is what a honeytoken presented here records.
    pub async fn authenticate_admin(
        &self,
        token: Option<&str>,
        context: CallContext<'_>,
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
                client_ip: context.peer.map(|peer| peer.ip()),
                required_scopes: &[],
                context,
                cost: 1,
            })
            .await?;
        match (verdict.code, verdict.subject.map(|subject| *subject)) {
            (VerifyCode::Valid, Some((key, identity))) if identity.admin => Ok(Caller {
                identity,
                key_id: key.id,
            }),
            (VerifyCode::Valid, Some(_)) => Err(Error::PermissionDenied(
                "the token is valid but its identity is not an admin".into(),
            )),
            (VerifyCode::RateLimited | VerifyCode::UsageExceeded, Some((_, identity)))
                if identity.admin =>
            {
                let retry = match verdict.usage.and_then(|usage| usage.retry_after_ms) {
                    Some(ms) => format!("retry in {} s", ms.div_ceil(1000)),
                    None => "another admin can raise them".into(),
                };
                Err(Error::ResourceExhausted(format!(
                    "this admin key or its identity has spent its rate limit or credits; {retry}"
                )))
            }
            _ => Err(Error::Unauthenticated(
                "the bearer token is not a valid admin token".into(),
            )),
        }
    }
}
