//! Datasets: named resources that identities are granted access to.

use super::time::UnixMillis;
use serde::{Deserialize, Serialize};

/// A dataset as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Unique, `^[A-Za-z0-9_]{1,30}$`.
    pub name: String,
    /// Free text for operators.
    pub description: String,
    /// When it was created.
    pub create_time: UnixMillis,
}
