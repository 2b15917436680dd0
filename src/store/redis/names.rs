//! The identity-name claim protocol: the global name index maps each name to
//! the identity claiming it, claimed before the record carrying the name is
//! written and confirmed after, so two writers never both keep a name.

use super::{RedisStore, scripts, unavailable};
use crate::domain::{IdentityId, UnixMillis};
use crate::store::{Store, StoreError, StoreResult};
use redis::aio::ConnectionLike;
use std::time::Duration;

/// How long a fresh name claim is respected even though its identity record
/// does not carry the name yet: far longer than a create or rename takes.
pub const NAME_CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Splits a name claim `<identity id>:<unix ms>`.
pub(super) fn parse_claim(claim: &str) -> Option<(IdentityId, i64)> {
    let (id, millis) = claim.split_once(':')?;
    Some((IdentityId::parse(id).ok()?, millis.parse().ok()?))
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Claims `name` for `id` in the global name index, as `<id>:<unix ms>`;
    /// once the record carrying the name is written the claim is confirmed as
    /// `<id>:0`. A claim whose identity record is gone or carries another name
    /// is stale (a native expiry, an interrupted write) and is replaced, except
    /// an unconfirmed one younger than [`NAME_CLAIM_LEASE`]: that belongs to a
    /// create or rename in flight.
    pub(super) async fn claim_identity_name(&self, name: &str, id: &IdentityId) -> StoreResult<()> {
        let mut stale = String::new();
        // Each round either succeeds or proves one holder stale; three rounds
        // cover a holder that was itself replaced meanwhile.
        for _ in 0..3 {
            let now = UnixMillis::now();
            let claim = format!("{id}:{}", now.0);
            let holder: String = scripts::CLAIM_NAME
                .key(self.keyspace.identity_names())
                .arg(name)
                .arg(id.as_str())
                .arg(&claim)
                .arg(&stale)
                .invoke_async(&mut self.connection())
                .await
                .map_err(unavailable)?;
            if holder.is_empty() {
                return Ok(());
            }
            let (holder_id, claimed_at) = parse_claim(&holder)
                .ok_or_else(|| StoreError::Corrupt(format!("name index holds {holder:?}")))?;
            let holder_named_so = self
                .get_identity(&holder_id)
                .await?
                .is_some_and(|other| other.name == name);
            let in_flight = claimed_at != 0
                && now.0.saturating_sub(claimed_at) < NAME_CLAIM_LEASE.as_millis() as i64;
            if holder_named_so || in_flight {
                return Err(StoreError::NameTaken(name.to_owned()));
            }
            stale = holder;
        }
        Err(StoreError::Conflict)
    }

    pub(super) async fn release_identity_name(&self, name: &str, id: &IdentityId) {
        let released: Result<i64, _> = scripts::RELEASE_NAME
            .key(self.keyspace.identity_names())
            .arg(name)
            .arg(id.as_str())
            .invoke_async(&mut self.connection())
            .await;
        if let Err(error) = released {
            // Harmless: a stale claim is repaired by the next claim of the name.
            tracing::warn!(%error, identity_id = %id, "could not release a name claim");
        }
    }

    /// Confirms our claim on `name` now that the record carrying it is
    /// written; false when a concurrent claim replaced ours meanwhile.
    pub(super) async fn confirm_identity_name(
        &self,
        name: &str,
        id: &IdentityId,
        on: &mut (impl ConnectionLike + Send),
    ) -> StoreResult<bool> {
        let holder: String = scripts::CLAIM_NAME
            .key(self.keyspace.identity_names())
            .arg(name)
            .arg(id.as_str())
            .arg(format!("{id}:0"))
            .arg("")
            .invoke_async(on)
            .await
            .map_err(unavailable)?;
        Ok(holder.is_empty())
    }
}
