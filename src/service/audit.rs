//! The audit log: events for every Admin and SCIM mutation and for bootstrap,
//! written with the change they record (see `store::journal`), and read back
//! newest first.

use super::{Authority, Caller, MAX_PAGE_SIZE, Page, PageRequest};
use crate::domain::{AuditEvent, AuditFilter, Error, UnixMillis};
use crate::store::journal;
use std::future::Future;
use std::net::SocketAddr;

/// Longest `x-request-id` kept as given; longer or odd ones are replaced.
const MAX_REQUEST_ID_CHARS: usize = 128;
/// Events read per store call while filling a filtered page.
const SCAN_BATCH: usize = 500;
/// Events a single listing call reads at most, so a filter that matches
/// nothing cannot make one call scan the whole log.
const SCAN_LIMIT: usize = 20_000;

/// The caller's request id when it is a sane one, else a fresh random id.
pub fn request_id(given: Option<&str>) -> String {
    match given.map(str::trim) {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_CHARS
                && id.chars().all(|c| c.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        _ => format!("{:032x}", rand::random::<u128>()),
    }
}

/// A new event for `action` by `caller`, not yet decided.
pub fn event(
    action: &str,
    caller: Option<&Caller>,
    peer: Option<SocketAddr>,
    request_id: String,
) -> AuditEvent {
    let mut event = AuditEvent::new(action, request_id);
    if let Some(caller) = caller {
        event.actor_identity_id = Some(caller.identity.id.to_string());
        event.actor_key_id = Some(caller.key_id.to_string());
    }
    event.caller_address = peer.map(|peer| peer.to_string());
    event
}

/// Names `id` as a target of the operation under way.
pub fn target(id: impl Into<String>) {
    journal::add_target(id);
}

impl Authority {
    /// Runs `work` as one audited operation: its change carries `event`, or,
    /// when nothing changed, the event is appended with the outcome
    /// `outcome_of` names for the error (`OK` on success).
    pub async fn audited<T, E>(
        &self,
        event: AuditEvent,
        work: impl Future<Output = Result<T, E>>,
        outcome_of: impl FnOnce(&E) -> String,
    ) -> Result<T, E> {
        let (result, leftover) = journal::scope(event, work).await;
        if let Some(mut event) = leftover {
            event.outcome = match &result {
                Ok(_) => "OK".to_owned(),
                Err(error) => outcome_of(error),
            };
            if let Err(error) = self.store.append_audit(&event).await {
                tracing::error!(%error, action = %event.action, request_id = %event.request_id, "an audit event could not be written");
            }
        }
        result
    }

    /// A page of audit events passing `filter`, newest first.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, Error> {
        let limit = page.limit();
        let mut before = match page.page_token.as_str() {
            "" => None,
            token if is_event_id(token) => Some(token.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "page_token",
                    "is not a token this API returned",
                ));
            }
        };
        let mut items = Vec::with_capacity(limit.min(MAX_PAGE_SIZE));
        let mut scanned = 0;
        loop {
            let batch = self.store.list_audit(before.as_deref(), SCAN_BATCH).await?;
            let exhausted = batch.len() < SCAN_BATCH;
            for event in batch {
                scanned += 1;
                before = Some(event.id.clone());
                if filter.matches(&event) {
                    items.push(event);
                    if items.len() == limit {
                        return Ok(Page {
                            items,
                            next_page_token: before,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    items,
                    next_page_token: None,
                });
            }
            // A sparse filter returns a short page and where to go on from.
            if scanned >= SCAN_LIMIT {
                return Ok(Page {
                    items,
                    next_page_token: before,
                });
            }
        }
    }

    /// Drops audit events older than `max_age`.
    pub async fn trim_audit(&self, max_age: std::time::Duration) -> Result<(), Error> {
        let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = UnixMillis(UnixMillis::now().0.saturating_sub(age));
        Ok(self.store.trim_audit(cutoff).await?)
    }
}

/// Whether `text` is a stream entry id, `<ms>-<seq>`.
pub(super) fn is_event_id(text: &str) -> bool {
    crate::domain::audit::entry_position(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        assert_eq!(request_id(None).len(), 32);
        assert_ne!(request_id(Some("has space")), "has space");
        assert_eq!(request_id(Some(&"x".repeat(200))).len(), 32);
    }

    #[test]
    fn page_tokens_are_event_ids() {
        assert!(is_event_id("1700000000000-0"));
        assert!(!is_event_id("1700000000000"));
        assert!(!is_event_id("-0"));
        assert!(!is_event_id("abc-1"));
    }
}
