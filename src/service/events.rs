//! Watching events: the audit log followed from a cursor as it grows.
//!
//! Every event is an entry of the audit stream, written in the same atomic
//! step as its change (a honeytoken's use on its own), and an entry's id is
//! its cursor. One feed per process polls the stream's newest id while
//! anybody watches and wakes the watchers when it moves; each watcher then
//! reads on from its own cursor. So a watcher that reconnects with its last
//! cursor misses nothing, whichever replica it reaches, and a hundred
//! watchers cost one poll.

use super::Authority;
use super::audit::is_event_id;
use crate::domain::audit::entry_position;
use crate::domain::{AuditEvent, Error, EventKind, IdentityId, KeyId, UnixMillis};
use crate::store::Store;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Entries read per store call while catching up.
const READ_BATCH: usize = 500;
/// Items a watcher may have queued for a slow client before it waits.
const WATCH_QUEUE: usize = 64;

/// How watching behaves.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// How often the feed looks for new events while someone watches: the
    /// delay, at worst, between a change and its event on a stream.
    pub poll_interval: Duration,
    /// Longest a stream stays silent: a heartbeat follows.
    pub heartbeat_interval: Duration,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            // Below the idle timeouts of common proxies (60 s and more).
            heartbeat_interval: Duration::from_secs(15),
        }
    }
}

/// Which events a watcher gets: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only these kinds; empty means every kind.
    pub kinds: Vec<EventKind>,
    /// Only events about or by this identity.
    pub identity: Option<IdentityId>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind()))
            && self
                .identity
                .as_ref()
                .is_none_or(|identity| event.concerns(identity))
    }
}

/// What a watch stream carries.
// Each item goes straight to one watcher's stream and is gone; boxing the
// event would add an allocation per event to save bytes of a heartbeat.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// An event that passed the filter; its id is its cursor.
    Event(AuditEvent),
    /// Nothing passed the filter for a while; `cursor` is how far the
    /// stream has read.
    Heartbeat {
        /// When it was sent.
        time: UnixMillis,
        /// Resuming after it misses no event that would pass the filter.
        cursor: String,
    },
}

/// The newest audit entry id, polled for the watchers of one process.
pub(super) struct EventFeed {
    newest: Arc<watch::Sender<Option<String>>>,
    poller: OnceLock<()>,
    /// Set at shutdown: every stream ends, so draining is not held up by
    /// watchers (they resume elsewhere from their cursor).
    closing: watch::Sender<bool>,
    options: EventOptions,
}

impl EventFeed {
    pub(super) fn new(options: EventOptions) -> Self {
        Self {
            newest: Arc::new(watch::Sender::new(None)),
            poller: OnceLock::new(),
            closing: watch::Sender::new(false),
            options,
        }
    }

    /// A receiver that changes whenever the log grows; starts the poller
    /// on first use (inside the runtime).
    fn subscribe(&self, store: &Arc<dyn Store>) -> watch::Receiver<Option<String>> {
        let receiver = self.newest.subscribe();
        self.poller.get_or_init(|| {
            tokio::spawn(poll_newest(
                Arc::downgrade(&self.newest),
                Arc::clone(store),
                self.options.poll_interval,
            ));
        });
        receiver
    }
}

/// Polls the log's newest id while anybody watches; ends with the feed.
async fn poll_newest(
    newest: Weak<watch::Sender<Option<String>>>,
    store: Arc<dyn Store>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(sender) = newest.upgrade() else {
            return;
        };
        if sender.receiver_count() == 0 {
            continue;
        }
        match store.audit_bounds().await {
            Ok(bounds) => {
                let last = bounds.map(|(_, last)| last);
                sender.send_if_modified(|seen| {
                    let moved = *seen != last;
                    if moved {
                        *seen = last;
                    }
                    moved
                });
            }
            // Watchers find out on their own reads, at their next heartbeat.
            Err(error) => tracing::debug!(%error, "the event feed could not poll the audit log"),
        }
    }
}

impl Authority {
    /// Ends every watch stream, now and from now on (at shutdown).
    pub fn end_event_streams(&self) {
        self.events.closing.send_replace(true);
    }

    /// Starts a watch: events after `after_cursor` (or, without one, from
    /// now on) that pass `filter`, then new ones as they come, with
    /// heartbeats. OUT_OF_RANGE when the cursor was already trimmed away;
    /// a store failure ends the stream with its error.
    pub async fn watch_events(
        self: &Arc<Self>,
        watcher: Watcher,
        after_cursor: Option<&str>,
        filter: EventFilter,
    ) -> Result<mpsc::Receiver<Result<WatchItem, Error>>, Error> {
        if let Some(cursor) = after_cursor
            && !is_event_id(cursor)
        {
            return Err(Error::invalid(
                "after_cursor",
                "is not a cursor this API returned (`<ms>-<seq>`)",
            ));
        }
        // Subscribing before reading the bounds: nothing appended after
        // the start can slip between the two.
        let feed = self.events.subscribe(&self.store);
        let bounds = self.store.audit_bounds().await?;
        let start = match (after_cursor, bounds) {
            (Some(cursor), Some((oldest, _))) => {
                refuse_if_trimmed(cursor, Some(&oldest), None)?;
                cursor.to_owned()
            }
            // An empty log: everything was trimmed, so a cursor before the
            // newest event ever appended would silently skip the rest. That
            // id is read before the bounds again: an event appended after it
            // shows in them, and is not taken for one trimmed away.
            (Some(cursor), None) => {
                let last = self.store.last_audit_id().await?;
                let oldest = self.store.audit_bounds().await?.map(|(oldest, _)| oldest);
                refuse_if_trimmed(cursor, oldest.as_deref(), last.as_deref())?;
                cursor.to_owned()
            }
            (None, Some((_, newest))) => newest,
            (None, None) => "0-0".to_owned(),
        };
        let (sender, receiver) = mpsc::channel(WATCH_QUEUE);
        let authority = Arc::clone(self);
        let closing = self.events.closing.subscribe();
        tokio::spawn(async move {
            authority
                .follow(&watcher, start, filter, feed, closing, sender)
                .await;
        });
        Ok(receiver)
    }

    /// Sends what passes `filter` after `cursor` until the client leaves,
    /// the store fails or the authority goes away.
    async fn follow(
        &self,
        watcher: &Watcher,
        mut cursor: String,
        filter: EventFilter,
        mut feed: watch::Receiver<Option<String>>,
        mut closing: watch::Receiver<bool>,
        sender: mpsc::Sender<Result<WatchItem, Error>>,
    ) {
        let heartbeat = self.options.events.heartbeat_interval;
        let mut last_sent = Instant::now();
        let mut heartbeat_due = false;
        loop {
            if *closing.borrow_and_update() {
                return;
            }
            // Read everything after the cursor, in batches.
            loop {
                let batch = match self.store.read_audit_after(&cursor, READ_BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let exhausted = batch.len() < READ_BATCH;
                if !batch.is_empty() && !self.still_watching(watcher, &sender).await {
                    return;
                }
                for event in batch {
                    cursor.clone_from(&event.id);
                    if filter.matches(&event) {
                        if sender.send(Ok(WatchItem::Event(event))).await.is_err() {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
                if exhausted {
                    break;
                }
            }
            if heartbeat_due && last_sent.elapsed() >= heartbeat {
                if !self.still_watching(watcher, &sender).await {
                    return;
                }
                let beat = WatchItem::Heartbeat {
                    time: UnixMillis::now(),
                    cursor: cursor.clone(),
                };
                if sender.send(Ok(beat)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            heartbeat_due = false;
            tokio::select! {
                changed = feed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(last_sent + heartbeat) => heartbeat_due = true,
                () = sender.closed() => return,
                _ = closing.changed() => {}
            }
        }
    }
}

/// OUT_OF_RANGE when events after `cursor` were trimmed away: it is older
/// than the oldest event kept or, with none kept, than the last appended.
fn refuse_if_trimmed(
    cursor: &str,
    oldest_kept: Option<&str>,
    last_appended: Option<&str>,
) -> Result<(), Error> {
    let missed = match (oldest_kept, last_appended) {
        (Some(oldest), _) => entry_position(cursor) < entry_position(oldest),
        (None, Some(last)) => entry_position(cursor) < entry_position(last),
        (None, None) => false,
    };
    if missed {
        return Err(Error::OutOfRange(format!(
            "cursor {cursor} is older than events already trimmed away; re-read the log with ListAuditEvents and watch from its newest event"
        )));
    }
    Ok(())
}

/// Who watches a stream: the admin it was opened by, checked again before
/// each batch of events and each heartbeat, so a stream ends soon after its
/// admin's key or identity stops admitting it.
#[derive(Debug, Clone)]
pub struct Watcher {
    /// The admin's key.
    pub key_id: KeyId,
    /// The admin's identity.
    pub identity_id: IdentityId,
    /// Where the stream was opened from (for the key's allow-list).
    pub peer: Option<IpAddr>,
}

impl Authority {
    /// Whether `watcher` may still be sent events; if not, or if the store
    /// cannot say, the stream ends with why.
    async fn still_watching(
        &self,
        watcher: &Watcher,
        sender: &mpsc::Sender<Result<WatchItem, Error>>,
    ) -> bool {
        let refusal = match self
            .admin_still_admitted(&watcher.key_id, &watcher.identity_id, watcher.peer)
            .await
        {
            Ok(Some(_)) => return true,
            Ok(None) => Error::Unauthenticated(
                "the admin token this stream was opened with is no longer valid".into(),
            ),
            Err(error) => error,
        };
        let _ = sender.send(Err(refusal)).await;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_hold_together() {
        let identity = IdentityId::parse("AAAAAAAAAAAA").unwrap();
        let mut event = AuditEvent::new("RevokeKey", "r");
        event.target_ids = vec![format!("{}abcdef", identity.as_str())];
        let by_identity = EventFilter {
            kinds: Vec::new(),
            identity: Some(identity.clone()),
        };
        assert!(
            by_identity.matches(&event),
            "a key of the identity is about it"
        );
        let honeytokens = EventFilter {
            kinds: vec![EventKind::HoneytokenUsed],
            identity: None,
        };
        assert!(!honeytokens.matches(&event));
        event.action = crate::domain::audit::HONEYTOKEN_USED.to_owned();
        assert!(honeytokens.matches(&event));
        let other = EventFilter {
            kinds: Vec::new(),
            identity: Some(IdentityId::parse("BBBBBBBBBBBB").unwrap()),
        };
        assert!(!other.matches(&event));
    }
}
