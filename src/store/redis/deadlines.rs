//! The deadline index behind KEY_EXPIRING, KEY_EXPIRED and GRACE_ENDED.
//!
//! Every script that writes a key record writes the key's end into the index
//! in the same call (see `scripts.rs`), so the index and the records never
//! disagree. On a standalone Redis (or Sentinel) the index is one sorted set
//! for the authority. Under Redis Cluster a script may only touch its own
//! slot, so each identity keeps its own index beside its records, and
//! `key-end-identities` names the identities to read: every change to an
//! identity's records adds it (after the change, like the deferred audit
//! event), and the reader drops it once the identity is gone and its index
//! is empty, when no write can index a key of it again. Reading the ends
//! under Cluster is one script per listed identity, sent concurrently.

use super::{RedisStore, encode, keys, scripts, unavailable};
use crate::domain::{AuditEvent, IdentityId, KeyEnd, UnixMillis};
use crate::store::StoreResult;
use futures_util::{StreamExt, TryStreamExt};
use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use std::time::Duration;

/// How long a warning's marker outlives the end it warned of: sweeps look
/// only at ends to come, so past the end it guards nothing, and the margin
/// covers clocks that disagree.
const EXPIRY_WARNING_MARKER_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// One identity's index as a Cluster read found it.
struct IdentityEnds {
    identity: IdentityId,
    /// The identity is gone and its index empty.
    gone: bool,
    /// Member and end of each entry in the range.
    due: Vec<(String, f64)>,
}

/// How many identities' indexes a Cluster read asks for at once.
const CONCURRENT_INDEX_READS: usize = 256;

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The index holding the ends of `identity`'s keys.
    pub(super) fn key_ends_of(&self, identity: &IdentityId) -> String {
        if self.cluster {
            self.keyspace.identity_key_ends(identity)
        } else {
            self.keyspace.key_ends()
        }
    }

    /// Under Cluster, lists `identity` among those whose index the expiry
    /// task reads; called after each change to its records. A failure is
    /// logged: the change stands, and its keys' ends wait for the next
    /// change of the identity.
    pub(super) async fn list_key_end_identity(&self, identity: &IdentityId) {
        // Only under Cluster, where changes share the one connection.
        let listed: Result<i64, _> = self
            .connection()
            .zadd(self.keyspace.key_end_identities(), identity.as_str(), 0)
            .await;
        if let Err(error) = listed {
            crate::metrics::metrics().redis_errors.inc();
            tracing::error!(%error, "a change committed but its identity could not be listed for expiry events");
        }
    }

    /// Up to `limit` index entries ending from `from` to `until`, earliest
    /// first.
    pub(super) async fn read_key_ends(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<KeyEnd>> {
        let entries = if self.cluster {
            self.read_key_ends_per_identity(from, until, limit).await?
        } else {
            self.connection()
                .zrangebyscore_limit_withscores(
                    self.keyspace.key_ends(),
                    from.0,
                    until.0,
                    0,
                    limit as isize,
                )
                .await
                .map_err(unavailable)?
        };
        Ok(entries
            .into_iter()
            .filter_map(|(member, score)| {
                // Nothing but keyrack's scripts writes the index; an entry it
                // cannot read is skipped rather than stopping every other.
                let (kind, key_id) = keys::parse_key_end_member(&member)?;
                Some(KeyEnd {
                    key_id,
                    kind,
                    at: UnixMillis(score as i64),
                })
            })
            .collect())
    }

    /// Under Cluster: each listed identity's entries in the range, merged
    /// earliest first; identities gone for good leave the list.
    async fn read_key_ends_per_identity(
        &self,
        from: UnixMillis,
        until: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<(String, f64)>> {
        let listed: Vec<String> = self
            .connection()
            .zrange(self.keyspace.key_end_identities(), 0, -1)
            .await
            .map_err(unavailable)?;
        let reads = futures_util::stream::iter(
            listed
                .into_iter()
                .filter_map(|id| IdentityId::parse(&id).ok()),
        )
        .map(|identity| {
            let mut connection = self.connection();
            async move {
                let (gone, due): (i64, Vec<(String, f64)>) = scripts::IDENTITY_KEY_ENDS_DUE
                    .key(self.keyspace.identity_key_ends(&identity))
                    .key(self.keyspace.identity(&identity))
                    .arg(from.0)
                    .arg(until.0)
                    .arg(limit)
                    .invoke_async(&mut connection)
                    .await?;
                Ok::<_, redis::RedisError>(IdentityEnds {
                    identity,
                    gone: gone == 1,
                    due,
                })
            }
        })
        .buffer_unordered(CONCURRENT_INDEX_READS);
        let read: Vec<IdentityEnds> = reads.try_collect().await.map_err(unavailable)?;

        let gone: Vec<&str> = read
            .iter()
            .filter(|ends| ends.gone)
            .map(|ends| ends.identity.as_str())
            .collect();
        if !gone.is_empty() {
            let _: i64 = self
                .connection()
                .zrem(self.keyspace.key_end_identities(), gone)
                .await
                .map_err(unavailable)?;
        }
        let mut entries: Vec<(String, f64)> = read.into_iter().flat_map(|ends| ends.due).collect();
        entries.sort_by(|(a_member, a_at), (b_member, b_at)| {
            a_at.total_cmp(b_at).then_with(|| a_member.cmp(b_member))
        });
        entries.truncate(limit);
        Ok(entries)
    }

    /// Claims `end` and appends `event`: in one script on a standalone Redis;
    /// under Cluster, where the audit stream lives in another slot, the
    /// event is appended right after the claim (as every change's event is
    /// there), so only the claiming replica appends it.
    pub(super) async fn claim_key_end(
        &self,
        end: &KeyEnd,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let identity = end.key_id.identity_id();
        let event = encode(event)?;
        let (stream, in_script) = self.end_event_stream(&identity, &event);
        let claimed: i64 = scripts::RECORD_KEY_END
            .key(self.key_ends_of(&identity))
            .key(stream)
            .arg(keys::key_end_member(end))
            .arg(end.at.0)
            .arg(in_script)
            .arg(self.audit_max_events)
            .invoke_async(&mut self.writer().await?)
            .await
            .map_err(unavailable)?;
        self.after_end_claim(claimed == 1, &event).await;
        Ok(claimed == 1)
    }

    /// Appends `event`, the warning `lead` ahead of `end`, once per key, end
    /// and lead time; as [`Self::claim_key_end`] under Cluster.
    pub(super) async fn claim_expiry_warning(
        &self,
        end: &KeyEnd,
        lead: Duration,
        event: &AuditEvent,
    ) -> StoreResult<bool> {
        let identity = end.key_id.identity_id();
        let event = encode(event)?;
        let (stream, in_script) = self.end_event_stream(&identity, &event);
        let marker = if self.cluster {
            self.keyspace.identity_expiry_warned(end, lead)
        } else {
            self.keyspace.expiry_warned(end, lead)
        };
        let sent: i64 = scripts::RECORD_EXPIRY_WARNING
            .key(self.key_ends_of(&identity))
            .key(marker)
            .key(stream)
            .arg(keys::key_end_member(end))
            .arg(end.at.0)
            .arg(end.at.plus(EXPIRY_WARNING_MARKER_MARGIN).0)
            .arg(in_script)
            .arg(self.audit_max_events)
            .invoke_async(&mut self.writer().await?)
            .await
            .map_err(unavailable)?;
        self.after_end_claim(sent == 1, &event).await;
        Ok(sent == 1)
    }

    /// The stream a claim script appends to and the event it appends: under
    /// Cluster a name in the identity's slot it never writes, and no event.
    fn end_event_stream<'e>(&self, identity: &IdentityId, event: &'e str) -> (String, &'e str) {
        if self.cluster {
            let unused = self.keyspace.identity_key_ends(identity) + ":audit-deferred";
            (unused, "")
        } else {
            (self.keyspace.audit(), event)
        }
    }

    async fn after_end_claim(&self, claimed: bool, event: &str) {
        if !claimed {
            return;
        }
        if self.cluster
            && let Err(error) = self.append_encoded_audit(event).await
        {
            // The end is claimed, so no replica reports it again; the gap
            // shows in the log and the metrics, as for any change's event.
            tracing::error!(%error, "a key's end was claimed but its event could not be written");
            return;
        }
        crate::metrics::metrics().audit_events.inc();
    }

    /// Gives the keys written before the index existed their entries, once
    /// per store.
    pub(super) async fn backfill_key_ends(&self) -> StoreResult<usize> {
        let done: bool = self
            .connection()
            .exists(self.keyspace.key_ends_indexed())
            .await
            .map_err(unavailable)?;
        if done {
            return Ok(0);
        }
        // Replicas starting together may both walk: each entry is what a
        // write of its key would make, so the second walk changes nothing.
        let mut indexed = 0;
        let mut after: Option<IdentityId> = None;
        loop {
            let page = crate::store::Store::list_identities(self, after.as_ref(), 256).await?;
            for identity in &page {
                let count: i64 = scripts::INDEX_KEY_ENDS
                    .key(self.keyspace.identity(&identity.id))
                    .key(self.keyspace.key_index(&identity.id))
                    .key(self.key_ends_of(&identity.id))
                    .arg(self.keyspace.key_prefix(&identity.id))
                    .invoke_async(&mut self.writer().await?)
                    .await
                    .map_err(unavailable)?;
                if self.cluster {
                    self.list_key_end_identity(&identity.id).await;
                }
                indexed += usize::try_from(count).unwrap_or_default();
            }
            match page.last() {
                Some(last) if page.len() == 256 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        let _: () = self
            .writer()
            .await?
            .set(self.keyspace.key_ends_indexed(), UnixMillis::now().0)
            .await
            .map_err(unavailable)?;
        Ok(indexed)
    }
}
