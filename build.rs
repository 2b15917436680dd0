//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and
//! generates the tonic services; also writes the descriptor set that server
//! reflection and `keyrack protoset` serve.

use std::{env, path::PathBuf};

/// Messages that carry a secret: prost's derived `Debug` would print it, so the
/// crate writes a redacting `Debug` for each of them instead (src/grpc/redact.rs).
const MESSAGES_WITH_SECRETS: &[&str] = &[
    ".keyrack.v1.VerifyRequest",
    ".keyrack.v1.CreateIdentityResponse",
    ".keyrack.v1.CreateKeyResponse",
    ".keyrack.v1.RollKeyRequest",
    ".keyrack.v1.RollKeyResponse",
    ".keyrack.v1.CreateDatasetResponse",
    ".keyrack.v1.EnrollTotpResponse",
    ".keyrack.v1.ConfirmTotpRequest",
    ".keyrack.v1.BatchRevokeKeysRequest",
    ".keyrack.v1.ImportedKey",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["keyrack/v1/keyrack.proto"])?
        .file_descriptor_set();
    std::fs::write(
        out_dir.join("keyrack_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(MESSAGES_WITH_SECRETS.iter().copied())
        .compile_fds(descriptors)?;
    Ok(())
}
