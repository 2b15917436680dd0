//! When a change counts as done: a promise of the product (`--durability`),
//! which the configuration checks and the Redis store keeps.

use std::time::Duration;

/// When a change counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// When the primary applied it (lost if the primary dies before a replica
    /// or its AOF has it).
    None,
    /// When `replicas` replicas acknowledged it (WAIT).
    Replica {
        /// Replicas that must acknowledge.
        replicas: u32,
        /// How long to wait for them.
        timeout: Duration,
    },
    /// When the primary's AOF fsynced it, and `replicas` replicas' AOFs too
    /// (WAITAOF, Redis 7.2+).
    Aof {
        /// Replicas whose AOF must have it too.
        replicas: u32,
        /// How long to wait.
        timeout: Duration,
    },
}
