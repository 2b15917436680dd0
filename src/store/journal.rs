//! The audit scope of one operation. The adapter that receives a call (gRPC
//! Admin, SCIM, bootstrap) opens a scope with the event it will record; the
//! service arms it right before the write that *is* the change; the store
//! writes the armed event in the same atomic call as that write (the same Lua
//! script, or the same critical section of the memory store) and marks it
//! committed. An event still uncommitted when the scope ends — a refusal, a
//! failure, or an operation that changed nothing — is appended on its own
//! with its outcome. So every audited operation leaves exactly one event.
//!
//! The scope is task-local, like a tracing span: store methods keep their
//! domain signatures, and writes that are not the change itself (TOTP failure
//! counters, name claims, last-use flushes) never carry the event because
//! nothing armed it for them.

use crate::domain::AuditEvent;
use std::future::Future;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Slot {
    event: Option<AuditEvent>,
    armed: bool,
}

tokio::task_local! {
    static SCOPE: Arc<Mutex<Slot>>;
}

fn with_slot<T>(f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
    SCOPE
        .try_with(|slot| slot.lock().ok().map(|mut slot| f(&mut slot)))
        .ok()
        .flatten()
}

/// Runs `work` in an audit scope for `event`; returns its output and the
/// event when no write committed it (the caller appends it with the outcome).
pub async fn scope<F: Future>(event: AuditEvent, work: F) -> (F::Output, Option<AuditEvent>) {
    let slot = Arc::new(Mutex::new(Slot {
        event: Some(event),
        armed: false,
    }));
    let output = SCOPE.scope(Arc::clone(&slot), work).await;
    let leftover = slot.lock().ok().and_then(|mut slot| slot.event.take());
    (output, leftover)
}

/// Marks the next audited store write as the operation's change.
pub fn arm() {
    with_slot(|slot| slot.armed = slot.event.is_some());
}

/// For the store: the event to write with this change, if the scope armed
/// one. Disarms, so only this write carries it.
pub fn armed_event() -> Option<AuditEvent> {
    with_slot(|slot| {
        let armed = std::mem::take(&mut slot.armed);
        if armed { slot.event.clone() } else { None }
    })
    .flatten()
}

/// For the store: the armed event was written with the change.
pub fn committed() {
    with_slot(|slot| slot.event = None);
    crate::metrics::metrics().audit_events.inc();
}

/// Adds an id the operation is about (e.g. one it just generated).
pub fn add_target(id: impl Into<String>) {
    let id = id.into();
    with_slot(|slot| {
        if let Some(event) = &mut slot.event
            && !event.target_ids.contains(&id)
        {
            event.target_ids.push(id);
        }
    });
}

/// The event of the scope under way, as a template for the events of the
/// operations it runs one by one (a batch revoke audits each revoke).
pub fn current_event() -> Option<AuditEvent> {
    with_slot(|slot| slot.event.clone()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_an_armed_write_commits_the_event() {
        let ((), leftover) = scope(AuditEvent::new("Test", "r1"), async {
            assert_eq!(armed_event(), None, "nothing armed yet");
            add_target("x");
            arm();
            let event = armed_event().expect("armed");
            assert_eq!(event.target_ids, ["x"]);
            assert_eq!(armed_event(), None, "one write carries it");
            committed();
        })
        .await;
        assert!(leftover.is_none());

        let ((), leftover) = scope(AuditEvent::new("Test", "r2"), async {
            arm();
            let _ = armed_event();
            // The write failed: no commit.
        })
        .await;
        assert_eq!(leftover.map(|e| e.request_id), Some("r2".to_owned()));
        assert_eq!(armed_event(), None, "outside a scope nothing is armed");
    }
}
