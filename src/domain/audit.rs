//! Audit events: who changed what, when, from where, and how it ended.
//! Events carry ids, names of actions and outcome codes; never a secret.

use super::ids::{IdentityId, KeyId};
use super::time::UnixMillis;

/// One audited operation.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Assigned by the store when the event is appended (a Redis stream
    /// entry id, `<ms>-<seq>`); orders events and pages through them.
    pub id: String,
    /// When the operation ran.
    pub time: UnixMillis,
    /// The identity that asked for it; `None` for bootstrap.
    pub actor_identity_id: Option<String>,
    /// The key it authenticated with.
    pub actor_key_id: Option<String>,
    /// What was asked: the RPC name (`RollKey`), `scim.<Operation>`, or
    /// `BootstrapAdmin`.
    pub action: String,
    /// The ids (and dataset names) the operation was about.
    pub target_ids: Vec<String>,
    /// `OK`, or the gRPC code name it failed with.
    pub outcome: String,
    /// The caller's address, when it came over the network.
    pub caller_address: Option<String>,
    /// The caller's `x-request-id`, or one keyrack made up.
    pub request_id: String,
    /// HONEYTOKEN_USED: the address the Verify request named.
    pub client_ip: Option<String>,
    /// HONEYTOKEN_USED: the W3C trace id of the call, when traced.
    pub trace_id: Option<String>,
    /// KEY_EXPIRING, KEY_EXPIRED and GRACE_ENDED: when the key's record
    /// ends (ended).
    pub deadline: Option<UnixMillis>,
    /// KEY_EXPIRING: the lead time of `--expiry-warnings` it was sent for,
    /// in seconds.
    pub lead_time_seconds: Option<u64>,
}

/// An audit entry id's (milliseconds, sequence), the order of entries;
/// `None` for text that is not an entry id (`<ms>-<seq>`, digits only).
pub fn entry_position(id: &str) -> Option<(i64, u64)> {
    let (millis, seq) = id.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(millis) || !digits(seq) {
        return None;
    }
    Some((millis.parse().ok()?, seq.parse().ok()?))
}

/// The action of the event a honeytoken's use records.
pub const HONEYTOKEN_USED: &str = "HONEYTOKEN_USED";
/// The action of a warning that a key's record ends within a lead time.
pub const KEY_EXPIRING: &str = "KEY_EXPIRING";
/// The action of the event a key's expiry (or its identity's) records.
pub const KEY_EXPIRED: &str = "KEY_EXPIRED";
/// The action of the event the end of a rolled key's grace period records.
pub const GRACE_ENDED: &str = "GRACE_ENDED";

/// What kind of event an audit entry is, for watchers and their filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An audited operation.
    Audit,
    /// A honeytoken was presented to Verify.
    HoneytokenUsed,
    /// A key's record ends within one of the `--expiry-warnings` lead times.
    KeyExpiring,
    /// A key's record ended at its expiry (or its identity's).
    KeyExpired,
    /// A rolled key's grace period ended.
    GraceEnded,
}

impl EventKind {
    /// The kind's name, as WatchEvents and webhooks spell it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Audit => "AUDIT",
            EventKind::HoneytokenUsed => HONEYTOKEN_USED,
            EventKind::KeyExpiring => KEY_EXPIRING,
            EventKind::KeyExpired => KEY_EXPIRED,
            EventKind::GraceEnded => GRACE_ENDED,
        }
    }
}

impl AuditEvent {
    /// An event for `action`, not yet decided (`outcome` is `OK` until the
    /// operation says otherwise).
    pub fn new(action: impl Into<String>, request_id: impl Into<String>) -> Self {
        Self {
            id: String::new(),
            time: UnixMillis::now(),
            actor_identity_id: None,
            actor_key_id: None,
            action: action.into(),
            target_ids: Vec::new(),
            outcome: "OK".to_owned(),
            caller_address: None,
            request_id: request_id.into(),
            client_ip: None,
            trace_id: None,
            deadline: None,
            lead_time_seconds: None,
        }
    }

    /// The event's kind, told by its action.
    pub fn kind(&self) -> EventKind {
        match self.action.as_str() {
            HONEYTOKEN_USED => EventKind::HoneytokenUsed,
            KEY_EXPIRING => EventKind::KeyExpiring,
            KEY_EXPIRED => EventKind::KeyExpired,
            GRACE_ENDED => EventKind::GraceEnded,
            _ => EventKind::Audit,
        }
    }

    /// Whether the event is about or by `identity`: its id, or the id of one
    /// of its keys (which start with it), is a target, or it is the actor.
    pub fn concerns(&self, identity: &IdentityId) -> bool {
        self.actor_identity_id.as_deref() == Some(identity.as_str())
            || self.target_ids.iter().any(|target| {
                target == identity.as_str()
                    || KeyId::parse(target).is_ok_and(|key| key.identity_id() == *identity)
            })
    }
}

/// Which events a listing returns: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only events about this id (or dataset name).
    pub target_id: Option<String>,
    /// Only events by this identity.
    pub actor_identity_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
}

impl AuditFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.target_id
            .as_ref()
            .is_none_or(|target| event.target_ids.iter().any(|t| t == target))
            && self
                .actor_identity_id
                .as_ref()
                .is_none_or(|actor| event.actor_identity_id.as_ref() == Some(actor))
            && self
                .action
                .as_ref()
                .is_none_or(|action| &event.action == action)
    }
}
