//! Console sessions: what the store keeps of an admin signed in to the web
//! console. The cookie's secret is never part of it; the store files a
//! session under a digest of that secret (see `service::sessions`).

use super::{IdentityId, KeyId, UnixMillis};

/// A signed-in admin, as stored until `expire_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The admin who signed in.
    pub identity_id: IdentityId,
    /// The key whose token signed in; the session ends with it.
    pub key_id: KeyId,
    /// When the admin signed in.
    pub create_time: UnixMillis,
    /// When the session ends (the store drops it then).
    pub expire_time: UnixMillis,
}
