//! The `keyrack` binary as an operator runs it, driven by real clients
//! (grpcurl, buf) the way the README shows.

use crate::support::{RedisServer, eventually, require_program};
use keyrack::proto;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub(crate) const SERVER_SECRET: &str = "cli-test-server-secret-0123456789abcdef";

pub(crate) fn keyrack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyrack"))
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join("server-secret");
    std::fs::write(&path, format!("{SERVER_SECRET}\n")).unwrap();
    path
}

/// A `keyrack serve` process with its stderr captured to a file.
pub(crate) struct Served {
    child: Child,
    port: u16,
    stderr: PathBuf,
    stdout_lines: Vec<String>,
}

/// Runs `keyrack bootstrap-admin --name NAME` on `store_args`; returns the token.
pub(crate) fn bootstrap_admin(name: &str, store_args: &[&str]) -> String {
    let bootstrap = keyrack()
        .arg("bootstrap-admin")
        .args(["--name", name])
        .args(store_args)
        .output()
        .unwrap();
    assert!(bootstrap.status.success(), "{}", text(&bootstrap.stderr));
    text(&bootstrap.stdout).trim().to_owned()
}

impl Served {
    /// Starts `keyrack serve` with `args` and waits until it accepts calls.
    /// In dev mode, reads stdout until the admin token line.
    pub(crate) fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)], dev_mode: bool) -> Self {
        let port = free_port();
        let stderr = dir.join(format!("keyrack-{port}.stderr"));
        let mut child = keyrack()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("KEYRACK_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start keyrack");
        let mut stdout_lines = Vec::new();
        if dev_mode {
            let mut reader = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 {
                let done = line.starts_with("dev admin token: ");
                stdout_lines.push(line.trim_end().to_owned());
                line.clear();
                if done {
                    break;
                }
            }
            // Keep draining so the process never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "keyrack did not start: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            stderr,
            stdout_lines,
        }
    }

    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn dev_admin_token(&self) -> String {
        self.stdout_lines
            .iter()
            .find_map(|line| line.strip_prefix("dev admin token: "))
            .expect("dev admin token line")
            .to_owned()
    }

    /// Sends SIGTERM and returns the exit status and everything logged.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keyrack did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (exit, std::fs::read_to_string(&self.stderr).unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn grpcurl(args: &[&str]) -> Output {
    Command::new(require_program("grpcurl"))
        .args(args)
        .output()
        .expect("run grpcurl")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn dev_mode_prints_and_writes_the_admin_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let served = Served::start(
        dir.path(),
        &["--admin-token-file", token_file.to_str().unwrap()],
        &[],
        true,
    );
    let token = served.dev_admin_token();
    assert!(token.starts_with("kr_"));
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim_end(),
        token
    );
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (exit, logs) = served.terminate();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    assert!(
        logs.contains("state is lost on exit"),
        "dev mode warns: {logs}"
    );
    assert!(
        !logs.contains(&token),
        "the admin token never reaches the log"
    );
}

/// The admin token file is created fresh: an existing file, or a link to
/// one, is refused before anything binds and left as it was.
#[test]
fn admin_token_file_must_be_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    std::fs::write(&existing, "someone else's\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    for path in [&existing, &link, &dangling] {
        let output = keyrack()
            .args(["--listen", &listen, "--admin-token-file"])
            .arg(path)
            .env_remove("KEYRACK_REDIS_URL")
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{path:?} was reused");
        assert!(stderr.contains("must be a new file"), "{path:?}: {stderr}");
        assert!(output.stdout.is_empty(), "no token printed: {path:?}");
        std::net::TcpListener::bind(&listen).expect("port still free");
    }
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "someone else's\n"
    );
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn bad_configuration_exits_with_one_line_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short-secret");
    std::fs::write(&short, "too short\n").unwrap();
    let webhook_secret = dir.path().join("webhook-secret");
    std::fs::write(&webhook_secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-url",
                "redis://127.0.0.1:1",
            ],
            "--server-secret-file",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-url",
                "redis://127.0.0.1:1",
                "--server-secret-file",
                short.to_str().unwrap(),
            ],
            "at least 32 bytes",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-url",
                "redis://127.0.0.1:1",
                "--server-secret-file",
                "/nonexistent/secret",
            ],
            "cannot read server secret file",
        ),
        (
            vec!["serve", "--listen", &listen, "--token-prefix", "Bad_Prefix"],
            "token prefix",
        ),
        (
            vec!["serve", "--listen", "not-an-address"],
            "invalid socket address",
        ),
        (
            vec!["bootstrap-admin", "--name", "ops"],
            "bootstrap-admin needs Redis",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-cluster-nodes",
                "redis://127.0.0.1:1,not a url",
            ],
            "--redis-cluster-nodes entry 2",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-sentinel",
                "redis://127.0.0.1:1",
            ],
            "--redis-sentinel-master",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--redis-url",
                "redis://127.0.0.1:1",
                "--redis-cluster-nodes",
                "redis://127.0.0.1:2",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--verify-cache-max-staleness",
                "0s",
            ],
            "--verify-cache-max-staleness must be between",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--webhook-url",
                "ftp://hooks.example/keyrack",
                "--webhook-secret-file",
                webhook_secret.to_str().unwrap(),
            ],
            "must be an http:// or https:// URL",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--webhook-url",
                "https://hooks.example/keyrack",
                "--webhook-secret-file",
                webhook_secret.to_str().unwrap(),
                "--webhook-ca-file",
                webhook_secret.to_str().unwrap(),
            ],
            "--webhook-ca-file: holds no PEM certificate",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--webhook-url",
                "http://127.0.0.1:1/hook",
                "--webhook-secret-file",
                short.to_str().unwrap(),
            ],
            "starts with `whsec_`",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--webhook-url",
                "http://127.0.0.1:1/hook",
            ],
            "--webhook-secret-file",
        ),
        (
            vec!["serve", "--listen", &listen, "--expiry-warnings", "soon"],
            "--expiry-warnings: \"soon\" is not a duration (like 14d, 1d, 12h, 30m or 45s)",
        ),
        (
            vec!["serve", "--listen", &listen, "--expiry-warnings", "14d,,1d"],
            "--expiry-warnings: \"14d,,1d\" has an empty entry",
        ),
        (
            vec!["serve", "--listen", &listen, "--expiry-warnings", "0s"],
            "--expiry-warnings: \"0s\" must be a whole number of seconds, at least 1s",
        ),
        (
            vec!["serve", "--listen", &listen, "--expiry-warnings", "1d,24h"],
            "--expiry-warnings: \"24h\" is given twice",
        ),
        (
            vec!["serve", "--listen", &listen, "--expiry-warnings", "2y"],
            "--expiry-warnings: \"2y\" is longer than a year",
        ),
        (
            vec![
                "serve",
                "--listen",
                &listen,
                "--expiry-sweep-interval",
                "500ms",
            ],
            "--expiry-sweep-interval must be at least 1s",
        ),
    ];
    for (args, reason) in cases {
        let output = keyrack()
            .args(&args)
            .env_remove("KEYRACK_REDIS_URL")
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} printed on stdout");
        // Nothing stayed bound on the port the bad configuration named.
        std::net::TcpListener::bind(&listen).expect("port still free");
    }
    // The variables are read like the flags.
    let output = keyrack()
        .env("KEYRACK_REDIS_URL", "redis://127.0.0.1:1")
        .args(["serve", "--listen", &listen])
        .output()
        .unwrap();
    assert!(text(&output.stderr).contains("--server-secret-file"));
}

#[test]
fn bootstrap_admin_then_serve_on_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let store_args = [
        "--redis-url",
        &redis.url(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let bootstrap = |extra: &[&str]| {
        keyrack()
            .arg("bootstrap-admin")
            .args(["--name", "ops"])
            .args(store_args)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = bootstrap(&[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
    let token = lines[0].to_owned();
    assert!(token.starts_with("kr_"));

    let again = bootstrap(&[]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"));
    let forced = keyrack()
        .arg("bootstrap-admin")
        .args(["--name", "ops2", "--force"])
        .args(store_args)
        .output()
        .unwrap();
    assert!(forced.status.success(), "{}", text(&forced.stderr));

    let served = Served::start(dir.path(), &store_args, &[], false);
    let listed = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {token}"),
        &served.address(),
        "list",
    ]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("keyrack.v1.AdminService"));
    // The same secret file is needed to check the stored hashes: with another
    // secret the bootstrap token is unknown.
    drop(served);
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "another-server-secret-0123456789abcdefgh").unwrap();
    let served = Served::start(
        dir.path(),
        &[
            "--redis-url",
            &redis.url(),
            "--server-secret-file",
            other.to_str().unwrap(),
        ],
        &[],
        false,
    );
    let refused = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {token}"),
        &served.address(),
        "list",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("Unauthenticated"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn grpcurl_lists_services_only_for_admins_and_verifies_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[], &[], true);
    let admin = format!("authorization: Bearer {}", served.dev_admin_token());
    let address = served.address();

    let anonymous = grpcurl(&["-plaintext", &address, "list"]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous.stderr).contains("Unauthenticated"),
        "{}",
        text(&anonymous.stderr)
    );

    let listed = grpcurl(&["-plaintext", "-H", &admin, &address, "list"]);
    let services = text(&listed.stdout);
    for service in [
        "keyrack.v1.AdminService",
        "keyrack.v1.VerifyService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.contains(service),
            "{service} missing from {services}"
        );
    }

    let created = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        r#"{"name": "payments"}"#,
        &address,
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["token"].as_str().unwrap();
    let verified = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        &format!(r#"{{"token": "{token}"}}"#),
        &address,
        "keyrack.v1.VerifyService/Verify",
    ]);
    let verified: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(verified["valid"], true);
    assert_eq!(verified["code"], "VERIFY_CODE_VALID");
    assert_eq!(verified["identity"]["name"], "payments");

    // Field violations reach grpcurl users as google.rpc.BadRequest.
    let bad = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        r#"{"name": "no spaces"}"#,
        &address,
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    assert!(!bad.status.success());
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("fieldViolations"),
        "{stderr}"
    );
}

/// Runs the README block between `<!-- NAME:start -->` and `<!-- NAME:end -->`
/// as written, against a dev-mode keyrack of its own (with this test's
/// address and binary in place of `localhost:50051` and `cargo run --release
/// --`); returns its stdout and the Verify codes it printed, in order.
fn run_readme_block(name: &str) -> (String, Vec<String>) {
    require_program("grpcurl");
    require_program("jq");
    require_program("oathtool");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split(&format!("<!-- {name}:start -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {name}:end -->")).next())
        .unwrap_or_else(|| panic!("{name} markers in README.md"));
    let script = block
        .trim()
        .trim_start_matches("```sh")
        .trim_end_matches("```");
    assert!(readme.contains("cargo run --release -- --admin-token-file /tmp/keyrack-admin-token"));

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let served = Served::start(
        dir.path(),
        &["--admin-token-file", token_file.to_str().unwrap()],
        &[],
        true,
    );
    let script = script
        .replace("/tmp/keyrack-admin-token", token_file.to_str().unwrap())
        .replace("localhost:50051", &served.address())
        .replace("cargo run --release --", env!("CARGO_BIN_EXE_keyrack"));
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{}",
        text(&output.stderr)
    );
    let codes = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"code\": "))
        .map(|code| code.trim_end_matches(',').trim_matches('"').to_owned())
        .collect();
    (stdout, codes)
}

/// `keyrack import --csv` reads an AWS API Gateway API key file into keys of
/// one identity; the tokens verify, and Redis holds nothing of them.
#[test]
fn import_reads_an_api_gateway_key_file() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let store_args = [
        "--redis-url",
        &redis.url(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let admin = bootstrap_admin("ops", &store_args);
    let served = Served::start(dir.path(), &store_args, &[], false);
    let created = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {admin}"),
        "-d",
        r#"{"name": "gateway"}"#,
        &served.address(),
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let identity = created["identity"]["id"].as_str().unwrap().to_owned();
    let csv = dir.path().join("keys.csv");
    std::fs::write(
        &csv,
        "Name,Key,Description,Enabled,usageplanIds\n\
         mobile,GwKeyMobile0123456789abcdefXYZ,\"mobile app, v2\",true,plan1\n\
         retired,GwKeyRetired0123456789abcdefXY,,false,\n",
    )
    .unwrap();
    let imported = keyrack()
        .arg("import")
        .args(["--csv", csv.to_str().unwrap(), "--identity", &identity])
        .args(store_args)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let stdout = text(&imported.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(!stdout.contains("GwKey"), "a token was printed: {stdout}");
    let verify = |token: &str| {
        let answer = grpcurl(&[
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {admin}"),
            "-d",
            &format!(r#"{{"token": "{token}"}}"#),
            &served.address(),
            "keyrack.v1.VerifyService/Verify",
        ]);
        assert!(answer.status.success(), "{}", text(&answer.stderr));
        text(&answer.stdout)
    };
    // The serving keyrack learns of the store's first import within about a
    // second (until then such a token costs it no lookup).
    let learned = std::time::Instant::now();
    while !verify("GwKeyMobile0123456789abcdefXYZ").contains("VERIFY_CODE_VALID") {
        assert!(
            learned.elapsed() < Duration::from_secs(10),
            "the imported token never verified"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(verify("GwKeyRetired0123456789abcdefXY").contains("VERIFY_CODE_DISABLED"));
    assert!(verify("GwKeyMobile0123456789abcdefXYY").contains("VERIFY_CODE_MALFORMED"));
    for (name, value) in redis.dump() {
        assert!(
            !value.contains("GwKey") && !name.contains("GwKey"),
            "{name}"
        );
    }
    // The same file again is refused: the tokens are imported already.
    let again = keyrack()
        .arg("import")
        .args(["--csv", csv.to_str().unwrap(), "--identity", &identity])
        .args(store_args)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("imported already"),
        "{}",
        text(&again.stderr)
    );
}

/// The README's walkthrough, run as written.
#[test]
fn readme_walkthrough_runs_as_written() {
    let (stdout, codes) = run_readme_block("walkthrough");
    assert_eq!(
        codes,
        [
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_IP_NOT_ALLOWED",
            "VERIFY_CODE_DISABLED",
            "VERIFY_CODE_UNKNOWN",
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_VALID"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("\"status\": \"SERVING\""), "{stdout}");
    assert!(
        stdout.contains("\"inGrace\": true"),
        "the rolled key verifies in grace: {stdout}"
    );
    assert!(stdout.contains("\"oldKeyInGraceUntil\": \""), "{stdout}");
}

/// The README's scopes walkthrough, run as written.
#[test]
fn readme_scopes_walkthrough_runs_as_written() {
    let (stdout, codes) = run_readme_block("scopes-walkthrough");
    assert_eq!(
        codes,
        [
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_SCOPE_NOT_ALLOWED",
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_DATASET_NOT_ALLOWED",
            "VERIFY_CODE_SCOPE_NOT_ALLOWED",
        ],
        "{stdout}"
    );
    assert!(stdout.contains("\"billing:invoices:read\""), "{stdout}");
}

/// The README's usage control walkthrough runs as written: a limit refuses
/// with a retry time, a second key shares its identity's budget, a top-up
/// sets the balance.
#[test]
fn readme_usage_walkthrough_runs_as_written() {
    let (stdout, codes) = run_readme_block("usage-walkthrough");
    assert_eq!(
        codes,
        [
            "VERIFY_CODE_VALID",
            "VERIFY_CODE_RATE_LIMITED",
            "VERIFY_CODE_VALID",
        ],
        "{stdout}"
    );
    // 3 a minute: the unit missing for a call of 2 comes within 20 s.
    let retry_after: f64 = stdout
        .split("\"retryAfter\": \"")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_else(|| panic!("retryAfter in {stdout}"));
    assert!(retry_after > 0.0 && retry_after <= 20.0, "{stdout}");
    assert!(stdout.contains("\"creditsRemaining\": \"1\""), "{stdout}");
    assert!(stdout.contains("\"remaining\": \"100\""), "{stdout}");
}

/// At RUST_LOG=trace the server logs a great deal; none of it may be a token,
/// a secret or a key hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_secrets() {
    use crate::support::authed;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[], &[("RUST_LOG", "trace")], true);
    let admin_token = served.dev_admin_token();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = proto::admin_service_client::AdminServiceClient::new(channel.clone());
    let mut verifier = proto::verify_service_client::VerifyServiceClient::new(channel);
    let mut tokens = vec![admin_token.clone()];
    for index in 0..3 {
        let created = admin
            .create_identity(authed(
                &admin_token,
                proto::CreateIdentityRequest {
                    name: format!("svc{index}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let key = admin
            .create_key(authed(
                &admin_token,
                proto::CreateKeyRequest {
                    identity_id: created.identity.unwrap().id,
                    name: "more".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for token in [&created.token, &key.token] {
            verifier
                .verify(proto::VerifyRequest {
                    token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            verifier
                .verify(authed(token, proto::VerifyRequest::default()))
                .await
                .unwrap();
            let mut tampered = token.clone();
            tampered.insert(token.len() - 10, 'x');
            verifier
                .verify(proto::VerifyRequest {
                    token: tampered,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        tokens.push(created.token);
        tokens.push(key.token);
    }
    let _ = admin
        .list_identities(authed(&tokens[1], proto::ListIdentitiesRequest::default()))
        .await;
    let (_, logs) = served.terminate();
    assert!(
        logs.lines().count() > 50,
        "trace logging was on: {} lines",
        logs.lines().count()
    );
    for token in &tokens {
        let secret = &token[token.len() - 49..token.len() - 6];
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    assert!(!logs.contains("$argon2id$"), "a key hash reached the log");
}

#[test]
fn buf_lint_passes_with_the_standard_rules() {
    let output = Command::new(require_program("buf"))
        .arg("lint")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "buf lint:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/buf.yaml")).unwrap();
    assert!(config.contains("STANDARD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served_and_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &["--shutdown-timeout", "3s"], &[], true);
    let address = served.address();
    // Reflection is gated, so an anonymous grpcurl describes the API with the protoset.
    let protoset = dir.path().join("keyrack.pb");
    let written = keyrack()
        .args(["protoset", "--output", protoset.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(written.success());
    for service in ["", "keyrack.v1.AdminService", "keyrack.v1.VerifyService"] {
        let request = format!(r#"{{"service": "{service}"}}"#);
        eventually("serving", Duration::from_secs(5), || async {
            let output = grpcurl(&[
                "-plaintext",
                "-protoset",
                protoset.to_str().unwrap(),
                "-d",
                &request,
                &address,
                "grpc.health.v1.Health/Check",
            ]);
            text(&output.stdout).contains("\"SERVING\"")
        })
        .await;
    }
    let (exit, logs) = served.terminate();
    assert!(exit.success());
    assert!(logs.contains("shutting down"), "{logs}");
}

#[test]
fn no_totp_for_roll_is_loud_and_lets_rolls_through() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &["--no-totp-for-roll"], &[], true);
    let admin = format!("authorization: Bearer {}", served.dev_admin_token());
    let address = served.address();
    let created = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        r#"{"name": "svc"}"#,
        &address,
        "keyrack.v1.AdminService/CreateIdentity",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key_id = created["key"]["id"].as_str().unwrap();
    let rolled = grpcurl(&[
        "-plaintext",
        "-H",
        &admin,
        "-d",
        &format!(r#"{{"keyId": "{key_id}"}}"#),
        &address,
        "keyrack.v1.AdminService/RollKey",
    ]);
    assert!(rolled.status.success(), "{}", text(&rolled.stderr));
    let (_, logs) = served.terminate();
    assert!(
        logs.contains("--no-totp-for-roll") && logs.contains("WARN"),
        "{logs}"
    );
}

/// TOTP seeds and codes stay out of the logs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_totp_seeds_or_codes() {
    use crate::support::authed;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[], &[("RUST_LOG", "trace")], true);
    let admin_token = served.dev_admin_token();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = proto::admin_service_client::AdminServiceClient::new(channel);
    let enrollment = admin
        .enroll_totp(authed(&admin_token, proto::EnrollTotpRequest {}))
        .await
        .unwrap()
        .into_inner();
    let seed = totp_rs::Secret::Encoded(enrollment.secret.clone())
        .to_bytes()
        .unwrap();
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let code_at = |step: u64| {
        totp_rs::TOTP::new(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            seed.clone(),
            Some("keyrack".into()),
            "x".into(),
        )
        .unwrap()
        .generate(step * 30)
    };
    admin
        .confirm_totp(authed(
            &admin_token,
            proto::ConfirmTotpRequest {
                code: code_at(step),
            },
        ))
        .await
        .unwrap();
    let created = admin
        .create_identity(authed(
            &admin_token,
            proto::CreateIdentityRequest {
                name: "svc".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let roll_code = code_at(step + 1);
    let rolled = admin
        .roll_key(authed(
            &admin_token,
            proto::RollKeyRequest {
                key_id: created.key.unwrap().id,
                old_key_end: None,
                totp_code: roll_code.clone(),
                new_key_expire_time: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let _ = admin
        .roll_key(authed(
            &admin_token,
            proto::RollKeyRequest {
                key_id: rolled.key.unwrap().id,
                old_key_end: None,
                totp_code: roll_code.clone(),
                new_key_expire_time: None,
            },
        ))
        .await
        .unwrap_err();
    let (_, logs) = served.terminate();
    assert!(
        !logs.contains(&enrollment.secret),
        "the TOTP seed reached the log"
    );
    assert!(
        !logs.contains(&format!("\"{roll_code}\"")) && !logs.contains(&format!("={roll_code}")),
        "a TOTP code reached the log"
    );
    let secret = &rolled.token[rolled.token.len() - 49..rolled.token.len() - 6];
    assert!(
        !logs.contains(secret),
        "a rolled key's secret reached the log"
    );
}

/// The benchmark is not a test, but it must run and report its figures.
#[test]
fn bench_runs_briefly_and_reports_ratios() {
    let output = keyrack()
        .args([
            "bench",
            "--duration",
            "300ms",
            "--hot-keys",
            "4",
            "--cold-keys",
            "40",
            "--concurrency",
            "4",
            "--connections",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    for line in [
        "hot Verify rps / health Check rps",
        "c=1 mean latency: hot Verify / health Check",
        "Verify cold",
        "hot rps during a cold storm / hot alone",
        "hot rps during a wrong-secret flood / hot alone",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains("errors=0      rps=0 "),
        "every phase made requests:\n{stdout}"
    );
}

/// Given the Redis a served keyrack uses, the bench also times Verify's own
/// MGET from a bare client: the floor of Verify's single-stream latency.
#[test]
fn bench_reports_the_redis_floor_of_a_served_keyrack() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let store_args = [
        "--redis-url",
        &redis.url(),
        "--redis-prefix",
        "floor:",
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let token = bootstrap_admin("bench_root", &store_args);
    let served = Served::start(dir.path(), &store_args, &[], false);
    let bench = |prefix: &str| {
        keyrack()
            .args(["bench", "--mode", "hot", "--target", &served.address()])
            .args(["--admin-token", &token, "--redis-url", &redis.url()])
            .args(["--redis-prefix", prefix, "--duration", "300ms"])
            .args([
                "--hot-keys",
                "2",
                "--concurrency",
                "2",
                "--connections",
                "1",
            ])
            .output()
            .unwrap()
    };

    let output = bench("floor:");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let bare_read = stdout
        .lines()
        .find(|line| line.starts_with("Redis MGET, bare client"))
        .unwrap_or_else(|| panic!("no bare MGET phase in:\n{stdout}"));
    assert!(bare_read.contains("errors=0 "), "{bare_read}");
    assert!(
        stdout.contains("c=1 floor: (health + bare MGET) / health"),
        "{stdout}"
    );

    // Pointed at the wrong keys, it says so rather than time empty reads.
    let output = bench("elsewhere:");
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("holds no records of --target"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn scim2_tester_finds_no_error_against_a_live_keyrack() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let store_args = [
        "--redis-url",
        &redis.url(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    let token = bootstrap_admin("idp", &store_args);
    let scim_port = free_port();
    let scim_listen = format!("127.0.0.1:{scim_port}");
    let mut args = store_args.to_vec();
    args.extend(["--scim-listen", &scim_listen]);
    let served = Served::start(dir.path(), &args, &[], false);
    // As the checker's own help advises, the token travels in the
    // environment, not on the command line.
    let checked = Command::new(require_program("scim2"))
        .args(["--url", &format!("http://{scim_listen}/scim/v2"), "test"])
        .env("SCIM_CLI_HEADERS", format!("Authorization: Bearer {token}"))
        .output()
        .expect("run scim2");
    let report = text(&checked.stdout);
    let failures: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("ERROR") || line.starts_with("CRITICAL"))
        .collect();
    assert!(
        checked.status.success() && failures.is_empty(),
        "scim2-tester reported failures:\n{report}\n{}",
        text(&checked.stderr)
    );
    assert!(
        report
            .lines()
            .filter(|line| line.starts_with("SUCCESS"))
            .count()
            >= 40,
        "the checker ran its whole battery:\n{report}"
    );
    let (exit, logged) = served.terminate();
    assert!(exit.success(), "{logged}");
    assert!(logged.contains("SCIM listening"), "{logged}");
    assert!(!logged.contains(&token), "the admin token reached the log");
}

#[test]
fn scim_and_grpc_share_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, cert_file, key_file) = crate::transport::tls_files(dir.path());
    let scim_listen = format!("127.0.0.1:{}", free_port());
    let served = Served::start(
        dir.path(),
        &[
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--scim-listen",
            &scim_listen,
        ],
        &[],
        true,
    );
    let token = served.dev_admin_token();
    let authorization = format!("authorization: Bearer {token}");
    let health = grpcurl(&[
        "-cacert",
        &ca_file,
        "-H",
        &authorization,
        &served.address(),
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.status.success(), "{}", text(&health.stderr));
    assert!(text(&health.stdout).contains("SERVING"));

    let scim = |url: &str| {
        Command::new(require_program("scim2"))
            .args(["--url", url, "query", "user"])
            .env("SCIM_CLI_HEADERS", format!("Authorization: Bearer {token}"))
            .env("SSL_CERT_FILE", &ca_file)
            .output()
            .expect("run scim2")
    };
    let listed = scim(&format!("https://{scim_listen}/scim/v2"));
    assert!(
        listed.status.success(),
        "{}\n{}",
        text(&listed.stdout),
        text(&listed.stderr)
    );
    assert!(
        text(&listed.stdout).contains("totalResults"),
        "{}",
        text(&listed.stdout)
    );
    let plaintext = scim(&format!("http://{scim_listen}/scim/v2"));
    assert!(
        !plaintext.status.success(),
        "plaintext is refused on a TLS listener"
    );
    let (exit, _) = served.terminate();
    assert!(exit.success());
}

/// keyrack needs Redis 6.2 or later (for commands its scripts, its audit
/// log, webhooks and record cache use): against a real Redis 5.0 (built by
/// the README's test command) both `serve` and `bootstrap-admin` refuse to
/// start, in one line naming the versions, rather than fail feature by
/// feature later.
#[test]
fn a_redis_older_than_6_2_is_refused_at_start() {
    let old_redis = require_program("redis-server-5");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Command::new(old_redis)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server 5");
    crate::support::wait_until("Redis 5 starts", port, crate::support::answers_ping);
    let secret = write_secret(dir.path());
    let url = format!("redis://127.0.0.1:{port}");
    let store_args = [
        "--redis-url",
        url.as_str(),
        "--server-secret-file",
        secret.to_str().unwrap(),
    ];
    for command in [
        vec!["serve", "--listen", "127.0.0.1:0"],
        vec!["bootstrap-admin", "--name", "ops"],
    ] {
        let refused = keyrack().args(&command).args(store_args).output().unwrap();
        assert!(!refused.status.success(), "{command:?} started on Redis 5");
        let stderr = text(&refused.stderr);
        assert!(
            stderr.contains("Redis 5.0.6 is too old: keyrack needs Redis 6.2 or later"),
            "{command:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let _ = redis.kill();
    let _ = redis.wait();
}
