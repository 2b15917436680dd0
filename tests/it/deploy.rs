//! deploy/ checked against the binary it deploys. No container engine runs
//! here, so this checks what can be checked: every YAML parses; the
//! manifests' ports, probes, variables and paths agree with each other and
//! with what `keyrack` really serves; the Dockerfile builds this crate's
//! binary; and the binary, configured from the Deployment's own environment,
//! answers the readiness probe's health service and serves /metrics.

use crate::cli::{free_port, keyrack, text};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(relative))
        .unwrap_or_else(|e| panic!("deploy/{relative}: {e}"))
}

fn yaml(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("deploy/{relative} does not parse: {e}"))
}

/// `node[key]` for a path of keys and indexes written `a.b.0.c`.
fn at<'a>(node: &'a Yaml, path: &str) -> &'a Yaml {
    path.split('.')
        .fold(node, |node, step| match step.parse::<usize>() {
            Ok(index) => &node[index],
            Err(_) => &node[step],
        })
}

fn text_at(node: &Yaml, path: &str) -> String {
    match at(node, path) {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        other => panic!("{path} is not a scalar: {other:?}"),
    }
}

/// The env list of a container as (name, value) pairs.
fn env_of(container: &Yaml) -> Vec<(String, String)> {
    container["env"]
        .as_vec()
        .expect("env is a list")
        .iter()
        .map(|pair| (text_at(pair, "name"), text_at(pair, "value")))
        .collect()
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("{name} is not set"))
}

fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn every_yaml_parses() {
    let mut files = vec![PathBuf::from("compose.yaml")];
    for entry in std::fs::read_dir(deploy_dir().join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            files.push(path.strip_prefix(deploy_dir()).unwrap().to_owned());
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let documents = yaml(file.to_str().unwrap());
        assert!(!documents.is_empty(), "{file:?} is empty");
    }
}

#[test]
fn every_variable_and_subcommand_deploy_uses_exists() {
    let mut help = String::new();
    for args in [
        &["serve", "--help"][..],
        &["bootstrap-admin", "--help"],
        &["health", "--help"],
        &["--help"],
    ] {
        let output = keyrack().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        help.push_str(&text(&output.stdout));
    }
    let mut sources = vec![read("Dockerfile"), read("compose.yaml"), read("README.md")];
    for file in ["deployment.yaml", "service.yaml", "pdb.yaml", "secret.yaml"] {
        sources.push(read(&format!("k8s/{file}")));
    }
    let all = sources.join("\n");
    let mut checked = 0;
    for (at, _) in all.match_indices("KEYRACK_") {
        let name: String = all[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name == "KEYRACK_" {
            continue;
        }
        assert!(
            help.contains(&name),
            "deploy/ uses {name}, which no subcommand reads"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} variables found");
    for subcommand in ["serve", "bootstrap-admin", "health"] {
        assert!(help.contains(subcommand));
    }
}

#[test]
fn the_dockerfile_builds_this_crates_binary() {
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("default-run = \"keyrack\""));
    assert!(dockerfile.contains("cargo build --release --locked --bin keyrack"));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.lock")
            .exists(),
        "--locked needs Cargo.lock"
    );
    let builder = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM rust:"))
        .expect("a rust builder image");
    let (major, minor) = builder.split('-').next().unwrap().split_once('.').unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    let (need_major, need_minor) = rust_version.split_once('.').unwrap();
    assert!(
        (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap())
            >= (need_major.parse().unwrap(), need_minor.parse().unwrap()),
        "the builder's Rust {builder} is older than rust-version {rust_version}"
    );
    assert!(dockerfile.contains("COPY --from=builder /out/keyrack /usr/local/bin/keyrack"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("KEYRACK_LISTEN=0.0.0.0:50051"));
    assert!(
        dockerfile
            .contains(r#"CMD ["/usr/local/bin/keyrack", "health", "--target", "127.0.0.1:50051"]"#)
    );
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/keyrack"]"#));
    for port in ["50051", "8443", "9090"] {
        assert!(
            dockerfile.contains(&format!("EXPOSE {port}")),
            "EXPOSE {port}"
        );
    }
}

#[test]
fn the_manifests_agree_with_each_other_and_the_binary() {
    let deployment = &yaml("k8s/deployment.yaml")[0];
    let service = &yaml("k8s/service.yaml")[0];
    let container = at(deployment, "spec.template.spec.containers.0");
    let env = env_of(container);
    let ports: Vec<(String, i64)> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|port| {
            (
                text_at(port, "name"),
                port["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    let named = |name: &str| {
        ports
            .iter()
            .find(|(port_name, _)| port_name == name)
            .unwrap_or_else(|| panic!("no container port {name}"))
            .1
    };
    assert_eq!(
        i64::from(port_of(lookup(&env, "KEYRACK_LISTEN"))),
        named("grpc")
    );
    assert_eq!(
        i64::from(port_of(lookup(&env, "KEYRACK_METRICS_LISTEN"))),
        named("metrics")
    );
    assert_eq!(
        at(container, "readinessProbe.grpc.port").as_i64(),
        Some(named("grpc"))
    );
    assert_eq!(
        text_at(container, "readinessProbe.grpc.service"),
        <keyrack::proto::verify_service_server::VerifyServiceServer<keyrack::grpc::VerifyApi> as tonic::server::NamedService>::NAME
    );
    assert_eq!(
        at(container, "livenessProbe.tcpSocket.port").as_i64(),
        Some(named("grpc"))
    );
    // The secret file is the mounted Secret's item.
    let secret_file = lookup(&env, "KEYRACK_SERVER_SECRET_FILE");
    let (directory, file) = secret_file.rsplit_once('/').unwrap();
    assert_eq!(text_at(container, "volumeMounts.0.mountPath"), directory);
    let volume = at(deployment, "spec.template.spec.volumes.0");
    assert_eq!(text_at(volume, "secret.items.0.path"), file);
    let secret = &yaml("k8s/secret.yaml")[0];
    assert_eq!(
        text_at(volume, "secret.secretName"),
        text_at(secret, "metadata.name")
    );
    assert!(!at(secret, "stringData").as_hash().unwrap().is_empty());
    // The Service targets ports the container names.
    for port in service["spec"]["ports"].as_vec().unwrap() {
        let target = text_at(port, "targetPort");
        assert!(
            ports.iter().any(|(name, _)| *name == target),
            "Service targets {target}"
        );
    }
    // The grace period covers the preStop pause and the shutdown timeout.
    let grace = at(
        deployment,
        "spec.template.spec.terminationGracePeriodSeconds",
    )
    .as_i64()
    .unwrap();
    let shutdown = humantime::parse_duration(lookup(&env, "KEYRACK_SHUTDOWN_TIMEOUT")).unwrap();
    assert!(grace as u64 > shutdown.as_secs() + 5);
    // kustomize applies everything but the placeholder Secret.
    let kustomization = &yaml("k8s/kustomization.yaml")[0];
    let resources: Vec<&str> = kustomization["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(!resources.contains(&"secret.yaml"));
    for resource in &resources {
        assert!(
            deploy_dir().join("k8s").join(resource).exists(),
            "{resource}"
        );
    }

    // compose: the secret lands where KEYRACK_SERVER_SECRET_FILE points, and
    // the files it mounts exist.
    let compose = &yaml("compose.yaml")[0];
    let keyrack_env = at(compose, "services.keyrack.environment");
    let secret_path = keyrack_env["KEYRACK_SERVER_SECRET_FILE"].as_str().unwrap();
    let secret_name = at(compose, "services.keyrack.secrets.0").as_str().unwrap();
    assert_eq!(secret_path, format!("/run/secrets/{secret_name}"));
    assert_eq!(
        text_at(compose, "services.keyrack.build.dockerfile"),
        "deploy/Dockerfile"
    );
    assert!(deploy_dir().join("redis.conf").exists());
    let redis_conf = read("redis.conf");
    assert!(redis_conf.contains("maxmemory-policy noeviction"));
    assert!(redis_conf.contains("appendonly yes"));
}

#[test]
fn the_deployment_environment_serves_the_probes() {
    // The Deployment's own variables, with loopback ports and without Redis
    // (dev mode), so the probe targets are the ones the manifest names.
    let deployment = &yaml("k8s/deployment.yaml")[0];
    let env = env_of(at(deployment, "spec.template.spec.containers.0"));
    let grpc = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = keyrack()
        .arg("serve")
        .env("KEYRACK_LISTEN", &grpc)
        .env("KEYRACK_METRICS_LISTEN", &metrics)
        .env("KEYRACK_LOG_FORMAT", lookup(&env, "KEYRACK_LOG_FORMAT"))
        .env(
            "KEYRACK_SHUTDOWN_TIMEOUT",
            lookup(&env, "KEYRACK_SHUTDOWN_TIMEOUT"),
        )
        .env_remove("KEYRACK_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let service = text_at(
        deployment,
        "spec.template.spec.containers.0.readinessProbe.grpc.service",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let probe = keyrack()
            .args(["health", "--target", &grpc, "--service", &service])
            .output()
            .unwrap();
        if probe.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let scraped = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("keyrack_build_info"));
    let _ = child.kill();
    let _ = child.wait();
}
