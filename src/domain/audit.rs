//! Audit events: who changed what, when, from where, and how it ended.
//! Events carry ids, names of actions and outcome codes; never a secret.

use super::time::UnixMillis;
use serde::{Deserialize, Serialize};

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by the store when the event is appended (a Redis stream
    /// entry id, `<ms>-<seq>`); orders events and pages through them.
    #[serde(skip)]
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
        }
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
