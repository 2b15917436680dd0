//! keyrack's integration tests: one binary, real servers on port 0, real
//! redis-servers the tests start themselves.

// A failed unwrap is how a test (or a helper it calls) fails.
#![allow(clippy::unwrap_used)]

mod adversary;
mod api;
mod audit;
mod cli;
mod cluster;
mod console;
mod datasets;
mod deploy;
mod durability;
mod envoy;
mod events;
mod expiry;
mod hostile;
mod hot_path;
mod observability;
mod roll;
mod scale;
mod scim;
mod scopes;
mod sentinel;
mod store_contract;
mod support;
mod transport;
mod usage;
mod verify_cache;
mod webhooks;
