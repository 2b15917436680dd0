//! keyrack: a credential authority for internal microservices.
//!
//! Operators manage identities, their API keys and datasets through a gRPC
//! `AdminService`; services that receive a bearer token ask `VerifyService`
//! whether it is valid and whom it belongs to. Redis is the system of record;
//! an embedded in-memory store serves development and tests.
//!
//! Module map (dependencies run one way: `grpc` → `service` → `store` → `domain`):
//! - [`domain`]: pure types and rules (ids, names, tokens, identities, keys, errors).
//! - [`store`]: the [`store::Store`] trait and its backends, memory and Redis.
//! - [`service`]: the authority's operations (create, verify, roll, ...) over a store.
//! - [`grpc`]: thin tonic adapters: proto ↔ domain, admin auth, error → `Status`.
//! - [`server`]: assembles the tonic server: services, health, reflection, shutdown.
//! - [`config`]: the command line and `KEYRACK_*` variables, validated up front
//!   into plain data; it imports nothing of keyrack but [`domain`].
//! - [`app`]: wiring for the binary's subcommands: keyring, store, authority,
//!   servers. (`keyrack bench` belongs to the binary, not to this library.)
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod console;
pub mod domain;
pub mod grpc;
pub mod http_listener;
pub mod metrics;
pub mod scim;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

/// The generated protobuf types and tonic services of `keyrack.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("keyrack.v1");

    /// The encoded `FileDescriptorSet` of keyrack's protos and their imports.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/keyrack_descriptor.bin"));

    /// The encoded `FileDescriptorSet` of Envoy's ext_authz service
    /// (`envoy.service.auth.v3.Authorization`) and its imports.
    pub const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));

    /// keyrack's descriptors plus `google.rpc` error details and health: what
    /// `keyrack protoset` writes, so `grpcurl -protoset` can call every
    /// service and decode field violations.
    pub fn protoset() -> Vec<u8> {
        use prost::Message;
        let mut merged = prost_types::FileDescriptorSet::default();
        for encoded in [
            FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            ENVOY_EXT_AUTHZ_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(encoded)
                .expect("descriptor sets compiled into the binary decode");
            for file in set.file {
                if !merged.file.iter().any(|known| known.name == file.name) {
                    merged.file.push(file);
                }
            }
        }
        merged.encode_to_vec()
    }
}
