//! Console sessions: an admin token exchanged for a session cookie. The
//! cookie carries a random secret; the store files the session under its
//! SHA-256 (a copy of Redis yields no usable cookie), and the form token that
//! guards every console change is derived from the same secret, so nothing
//! else needs storing. Each request re-reads the signing key and its
//! identity: revoking, disabling or demoting ends the session at once.

use super::{Authority, CallContext, Caller};
use crate::domain::session::ConsoleSession;
use crate::domain::{Error, IdentityId, KeyId, SecretString, State, UnixMillis};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::Duration;

/// Random bytes in a session cookie's secret.
const SESSION_SECRET_BYTES: usize = 32;

/// A session just opened: its cookie value is shown to the browser only.
#[derive(Debug)]
pub struct OpenedSession {
    /// The cookie value (the session's secret).
    pub cookie: SecretString,
    /// The admin who signed in.
    pub caller: Caller,
}

/// Where the store files the session whose cookie is `cookie`.
fn handle(cookie: &str) -> String {
    hex(&Sha256::digest(cookie.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The form token of the session whose cookie is `cookie`: a MAC of a fixed
/// label under the cookie's secret, so only the session's own pages know it.
pub fn csrf_token(cookie: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(cookie.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"keyrack console form");
    hex(&mac.finalize().into_bytes())
}

/// Whether `given` is the form token of the session `cookie`, compared in
/// constant time.
pub fn csrf_matches(cookie: &str, given: &str) -> bool {
    SecretString::new(csrf_token(cookie)).ct_eq(given)
}

fn signed_out() -> Error {
    Error::Unauthenticated("the console session has ended; sign in again".into())
}

impl Authority {
    /// Signs an admin in with an admin token: a session that lasts `ttl`.
    /// `context` is the sign-in request's (what a honeytoken records).
    pub async fn open_console_session(
        &self,
        token: &str,
        context: CallContext<'_>,
        ttl: Duration,
    ) -> Result<OpenedSession, Error> {
        let caller = self.authenticate_admin(Some(token), context).await?;
        let mut secret = [0u8; SESSION_SECRET_BYTES];
        rand::fill(&mut secret);
        let cookie =
            SecretString::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        let now = UnixMillis::now();
        let session = ConsoleSession {
            identity_id: caller.identity.id.clone(),
            key_id: caller.key_id.clone(),
            create_time: now,
            expire_time: now.plus(ttl),
        };
        self.store
            .create_session(&handle(cookie.expose()), &session)
            .await?;
        tracing::info!(identity_id = %caller.identity.id, "console session opened");
        Ok(OpenedSession { cookie, caller })
    }

    /// The admin behind a session cookie, checked afresh: the session must
    /// be live, and its key and identity must still admit an admin from
    /// `peer`, as an admin token would be.
    pub async fn console_caller(
        &self,
        cookie: &str,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Error> {
        let session = self
            .store
            .get_session(&handle(cookie))
            .await?
            .ok_or_else(signed_out)?;
        self.admin_still_admitted(&session.key_id, &session.identity_id, peer)
            .await?
            .ok_or_else(signed_out)
    }

    /// The admin an earlier authentication found (its key and identity), if
    /// they still admit an admin from `peer` as a fresh token would be: for
    /// what outlives one call, a console session or an event stream.
    pub async fn admin_still_admitted(
        &self,
        key_id: &KeyId,
        identity_id: &IdentityId,
        peer: Option<IpAddr>,
    ) -> Result<Option<Caller>, Error> {
        let Some(subject) = self.store.key_with_identity(key_id).await? else {
            return Ok(None);
        };
        let (key, identity) = *subject;
        let admits = identity.id == *identity_id
            && identity.admin
            && identity.state == State::Active
            && key.state == State::Active
            && identity.permits_address(&key.allowed_cidrs, peer);
        Ok(admits.then_some(Caller {
            identity,
            key_id: key.id,
        }))
    }

    /// Signs out: the session is gone from the store.
    pub async fn close_console_session(&self, cookie: &str) -> Result<(), Error> {
        self.store.delete_session(&handle(cookie)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_tokens_belong_to_their_session() {
        let token = csrf_token("cookie-one");
        assert_eq!(token.len(), 64);
        assert!(csrf_matches("cookie-one", &token));
        assert!(!csrf_matches("cookie-two", &token));
        assert!(!csrf_matches("cookie-one", ""));
        assert_ne!(
            handle("cookie-one"),
            token,
            "the store handle is not the form token"
        );
    }
}
