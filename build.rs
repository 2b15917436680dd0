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
    std::fs::write(
        out_dir.join("envoy_ext_authz_descriptor.bin"),
        prost::Message::encode_to_vec(&envoy_ext_authz_descriptors()?),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Malformed requests are INVALID_ARGUMENT, not tonic's INTERNAL.
        .codec_path("crate::grpc::codec::RequestCodec")
        .skip_debug(MESSAGES_WITH_SECRETS.iter().copied())
        .compile_fds(descriptors)?;
    Ok(())
}

/// The proto file of Envoy's ext_authz service, as the envoy-types crate names it.
const ENVOY_EXT_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

/// The descriptors of Envoy's ext_authz service and everything it imports, for
/// reflection and `keyrack protoset`. The envoy-types crate generates the Rust
/// types but exports no descriptor set; it ships one (`src/generated/types.bin`,
/// every Envoy API file), from which only the service's import closure is kept.
fn envoy_ext_authz_descriptors()
-> Result<prost_types::FileDescriptorSet, Box<dyn std::error::Error>> {
    let crate_dir = envoy_types_dir()?;
    let all_types = crate_dir.join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", all_types.display());
    let all: prost_types::FileDescriptorSet =
        prost::Message::decode(std::fs::read(&all_types)?.as_slice())?;
    let by_name: std::collections::HashMap<&str, &prost_types::FileDescriptorProto> =
        all.file.iter().map(|file| (file.name(), file)).collect();
    // Dependencies first, as protoc writes a set, so every file's imports
    // precede it.
    let mut ordered = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &std::collections::HashMap<&'a str, &'a prost_types::FileDescriptorProto>,
        seen: &mut std::collections::HashSet<&'a str>,
        ordered: &mut Vec<prost_types::FileDescriptorProto>,
    ) -> Result<(), String> {
        if !seen.insert(name) {
            return Ok(());
        }
        let file = by_name
            .get(name)
            .ok_or_else(|| format!("envoy-types has no descriptor for {name}"))?;
        for dependency in &file.dependency {
            visit(dependency, by_name, seen, ordered)?;
        }
        ordered.push((*file).clone());
        Ok(())
    }
    visit(ENVOY_EXT_AUTHZ_PROTO, &by_name, &mut seen, &mut ordered)?;
    Ok(prost_types::FileDescriptorSet { file: ordered })
}

/// Where cargo unpacked the envoy-types crate this build uses. Build scripts
/// are not told where their crate's dependencies live, so ask cargo itself
/// (`CARGO` is the cargo running this build).
fn envoy_types_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let cargo = env::var("CARGO")?;
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    // Only this target's packages: a build downloads no others.
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &env::var("TARGET")?, "--manifest-path"])
        .arg(&manifest)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "envoy-types")
        .and_then(|package| package["manifest_path"].as_str())
        .ok_or("cargo metadata lists no envoy-types package")?;
    Ok(PathBuf::from(manifest_path)
        .parent()
        .ok_or("envoy-types manifest has no directory")?
        .to_path_buf())
}
