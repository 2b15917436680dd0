//! Hostile input, on both stores: every AdminService method (as the service
//! descriptor lists them) refuses callers without an admin token, and a
//! battery of bad requests gets clear errors, no panic and no partial write.

use crate::support::{Backend, TestServer, authed, mask, require_program};
use keyrack::proto::admin_service_client::AdminServiceClient;
use keyrack::proto::roll_key_request::OldKeyEnd;
use keyrack::proto::verify_service_client::VerifyServiceClient;
use keyrack::proto::{self, VerifyCode};
use keyrack::service::AuthorityOptions;
use prost::Message;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A server whose last-use flusher never fires during a test, so the store
/// changes only when a request changes it (snapshots stay comparable).
async fn quiet_server(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        AuthorityOptions::default(),
        Duration::from_secs(24 * 3600),
    )
    .await
}

/// Like `on_both_stores!`, on quiet servers.
macro_rules! on_both_quiet_stores {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$body(super::quiet_server($crate::support::Backend::Memory).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let redis = $crate::support::RedisServer::start();
                super::$body(super::quiet_server($crate::support::Backend::Redis(redis)).await)
                    .await;
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Helpers

/// Everything the store holds, as comparable text: Redis's whole keyspace, or
/// the memory store's identities, keys, authenticators and datasets.
async fn snapshot(server: &TestServer) -> Vec<(String, String)> {
    let mut records = match &server.backend {
        // The audit log records refused calls by design, and the expiry
        // sweep's lease and markers come and go on their own schedule; the
        // records are what must not change.
        Backend::Redis(redis) => redis
            .dump()
            .into_iter()
            .filter(|(key, _)| {
                *key != crate::support::keyspace().audit() && !key.starts_with("keyrack:expiry:")
            })
            .collect(),
        Backend::Memory | Backend::Cluster(_) | Backend::Sentinel(_) => {
            let store = &server.store;
            let mut records = Vec::new();
            for identity in store.list_identities(None, 1000).await.unwrap() {
                for key in store.list_keys(&identity.id, None, 1000).await.unwrap() {
                    records.push((format!("key {}", key.id), key_text(&key)));
                }
                if let Some(totp) = store.get_totp(&identity.id).await.unwrap() {
                    records.push((format!("totp {}", identity.id), totp_text(&totp)));
                }
                records.push((format!("identity {}", identity.id), format!("{identity:?}")));
            }
            for dataset in store.list_datasets(None, 1000).await.unwrap() {
                records.push((format!("dataset {}", dataset.name), format!("{dataset:?}")));
            }
            records
        }
    };
    records.sort();
    records
}

/// Every field of a key as text. `ApiKey`'s own `Debug` leaves fields out
/// (the PHC string among them), and a snapshot must see every change.
fn key_text(key: &keyrack::domain::ApiKey) -> String {
    let keyrack::domain::ApiKey {
        id,
        identity_id,
        name,
        description,
        state,
        create_time,
        expire_time,
        last_use_time,
        rolled_from,
        rolled_to,
        grace_expire_time,
        token_hint,
        allowed_cidrs,
        scopes,
        datasets,
        labels,
        origin,
        honeytoken,
        rate_limits,
        credits,
        usage_account,
        secret_hash,
        revision,
    } = key;
    format!(
        "{id:?} {identity_id:?} {name:?} {description:?} {state:?} {create_time:?} \
         {expire_time:?} {last_use_time:?} {rolled_from:?} {rolled_to:?} \
         {grace_expire_time:?} {token_hint:?} {allowed_cidrs:?} {scopes:?} {datasets:?} \
         {labels:?} {origin:?} {honeytoken:?} {rate_limits:?} {credits:?} \
         {usage_account:?} {:?} {revision:?}",
        secret_hash.phc()
    )
}

/// Every field of an authenticator as text (its `Debug` redacts the seed).
fn totp_text(totp: &keyrack::domain::totp::TotpRecord) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        totp.sealed_seed, totp.confirmed, totp.last_step, totp.failures, totp.locked_until
    )
}

/// What changed between two snapshots, naming the records that differ.
fn changes(before: &[(String, String)], after: &[(String, String)]) -> Result<(), String> {
    if before == after {
        return Ok(());
    }
    let gone: Vec<&String> = before
        .iter()
        .filter(|record| !after.contains(record))
        .map(|(key, _)| key)
        .collect();
    let new: Vec<&(String, String)> = after
        .iter()
        .filter(|record| !before.contains(record))
        .collect();
    Err(format!(
        "the store changed; changed or removed: {gone:?}; now: {new:#?}"
    ))
}

/// Fails the test when the store changed.
fn assert_unchanged(before: &[(String, String)], after: &[(String, String)], what: &str) {
    if let Err(why) = changes(before, after) {
        panic!("{what}: {why}");
    }
}

/// grpcurl against one server, describing the API with `keyrack protoset`'s
/// descriptor set (reflection is gated, and hostile callers have no admin token).
#[derive(Clone)]
struct Grpcurl {
    program: PathBuf,
    address: String,
    protoset: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Grpcurl {
    fn new(server: &TestServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let protoset = dir.path().join("keyrack.pb");
        std::fs::write(&protoset, keyrack::proto::protoset()).unwrap();
        Self {
            program: require_program("grpcurl"),
            address: server.address.to_string(),
            protoset,
            _dir: Arc::new(dir),
        }
    }

    /// Calls `service/method` with a JSON body, with `token` as bearer if any.
    fn call(&self, method: &str, token: Option<&str>, body: &str) -> Output {
        let mut command = Command::new(&self.program);
        command
            .args(["-plaintext", "-max-time", "30", "-protoset"])
            .arg(&self.protoset)
            .args(["-d", body]);
        if let Some(token) = token {
            command.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        command
            .arg(&self.address)
            .arg(method)
            .output()
            .expect("run grpcurl")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The methods of keyrack.v1.AdminService, read from the compiled descriptors.
fn admin_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(keyrack::proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let service = set
        .file
        .iter()
        .filter(|file| file.package() == "keyrack.v1")
        .flat_map(|file| &file.service)
        .find(|service| service.name() == "AdminService")
        .expect("keyrack.v1.AdminService is described");
    service
        .method
        .iter()
        .map(|method| method.name().to_owned())
        .collect()
}

async fn verify_code(server: &TestServer, token: &str) -> VerifyCode {
    server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner()
        .code()
}

// ---------------------------------------------------------------------------
// 1. Every Admin method refuses callers that are not a current admin.

on_both_quiet_stores!(
    every_admin_method_refuses_non_admins,
    every_admin_method_refuses_non_admins_body
);
async fn every_admin_method_refuses_non_admins_body(server: TestServer) {
    let methods = admin_methods();
    // The spec names 21 methods; the walk covers whatever the descriptor lists.
    assert!(methods.len() >= 21, "AdminService methods: {methods:?}");

    let plain = server
        .create_identity(proto::CreateIdentityRequest {
            name: "plain".into(),
            ..Default::default()
        })
        .await;
    let revoked_admin = server
        .create_identity(proto::CreateIdentityRequest {
            name: "former_ops".into(),
            admin: true,
            ..Default::default()
        })
        .await;
    server
        .admin()
        .await
        .revoke_key(authed(
            &server.admin_token,
            proto::RevokeKeyRequest {
                key_id: revoked_admin.key.unwrap().id,
            },
        ))
        .await
        .expect("revoke the admin's key");

    let callers: Vec<(&str, Option<String>, Code)> = vec![
        ("no token", None, Code::Unauthenticated),
        (
            "malformed token",
            Some("kr_garbage".into()),
            Code::Unauthenticated,
        ),
        ("non-admin token", Some(plain.token), Code::PermissionDenied),
        (
            "revoked admin token",
            Some(revoked_admin.token),
            Code::Unauthenticated,
        ),
    ];
    let calls: Vec<(String, &str, Option<String>, Code)> = methods
        .iter()
        .flat_map(|method| {
            callers.iter().map(move |(who, token, code)| {
                (
                    format!("keyrack.v1.AdminService/{method}"),
                    *who,
                    token.clone(),
                    *code,
                )
            })
        })
        .collect();
    let total = calls.len();

    let before = snapshot(&server).await;
    let grpcurl = Grpcurl::new(&server);
    // grpcurl is a process per call: run them on a few threads at once, off
    // the runtime that serves them.
    let workers_grpcurl = grpcurl.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let grpcurl = workers_grpcurl;
        let threads = 6;
        let chunk = calls.len().div_ceil(threads);
        let answered: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = calls
                .chunks(chunk)
                .map(|share| {
                    let grpcurl = &grpcurl;
                    scope.spawn(move || {
                        share
                            .iter()
                            .map(|(method, who, token, code)| {
                                let output = grpcurl.call(method, token.as_deref(), "{}");
                                (method.clone(), *who, *code, output)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("grpcurl worker"))
                .collect()
        });
        answered
    })
    .await
    .unwrap();

    assert_eq!(answered.len(), total);
    for (method, who, code, output) in &answered {
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success(),
            "{method} with {who} was accepted: {}",
            text(&output.stdout)
        );
        assert!(
            stderr.contains(&format!("Code: {code:?}\n")),
            "{method} with {who}: expected {code:?}, grpcurl said: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{method} with {who} returned data: {}",
            text(&output.stdout)
        );
    }
    assert_unchanged(&before, &snapshot(&server).await, "refused admin calls");

    // The refusals are about the callers: the admin's token is served.
    let listed = grpcurl.call(
        "keyrack.v1.AdminService/ListIdentities",
        Some(&server.admin_token),
        "{}",
    );
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 2. A battery of bad inputs.

/// One request of the battery.
enum Call {
    CreateIdentity(proto::CreateIdentityRequest),
    GetIdentity(proto::GetIdentityRequest),
    ListIdentities(proto::ListIdentitiesRequest),
    UpdateIdentity(proto::UpdateIdentityRequest),
    DisableIdentity(proto::DisableIdentityRequest),
    EnableIdentity(proto::EnableIdentityRequest),
    DeleteIdentity(proto::DeleteIdentityRequest),
    CreateKey(proto::CreateKeyRequest),
    GetKey(proto::GetKeyRequest),
    ListKeys(proto::ListKeysRequest),
    UpdateKey(proto::UpdateKeyRequest),
    DisableKey(proto::DisableKeyRequest),
    EnableKey(proto::EnableKeyRequest),
    RollKey(proto::RollKeyRequest),
    RevokeKey(proto::RevokeKeyRequest),
    CreateDataset(proto::CreateDatasetRequest),
    GetDataset(proto::GetDatasetRequest),
    ListDatasets(proto::ListDatasetsRequest),
    DeleteDataset(proto::DeleteDatasetRequest),
    ConfirmTotp(proto::ConfirmTotpRequest),
    Verify(proto::VerifyRequest),
    /// Hand-made protobuf bytes sent to `/<service>/<method>` (admin token attached).
    Raw(&'static str, Vec<u8>),
    /// A JSON body for grpcurl (admin token attached), for what only JSON can say.
    Json(&'static str, String),
}

/// What a row must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// INVALID_ARGUMENT whose BadRequest names exactly these fields, in order.
    Invalid(&'static [&'static str]),
    /// An error with this code.
    Error(Code),
    /// Verify answers (a bad token is not an error) with this code.
    Verdict(VerifyCode),
    /// grpcurl refuses the JSON itself: nothing reaches the server.
    NotSent,
}

struct Row {
    what: &'static str,
    call: Call,
    expect: Expect,
}

fn row(what: &'static str, call: Call, expect: Expect) -> Row {
    Row { what, call, expect }
}

/// What the server (or grpcurl) answered.
enum Answer {
    Accepted,
    Verdict(VerifyCode),
    Refused(Status),
    Grpcurl(Output),
}

/// Records the battery works on, created before it starts.
struct Fixture {
    identity_id: String,
    key_id: String,
    spare_key_id: String,
    token: String,
}

async fn fixture(server: &TestServer) -> Fixture {
    let mut admin = server.admin().await;
    admin
        .create_dataset(authed(
            &server.admin_token,
            proto::CreateDatasetRequest {
                name: "sales".into(),
                skip_key: true,
                ..Default::default()
            },
        ))
        .await
        .expect("create dataset");
    let created = server
        .create_identity(proto::CreateIdentityRequest {
            name: "svc".into(),
            datasets: vec!["sales".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await;
    let identity_id = created.identity.unwrap().id;
    let spare = admin
        .create_key(authed(
            &server.admin_token,
            proto::CreateKeyRequest {
                identity_id: identity_id.clone(),
                name: "spare".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("create key")
        .into_inner();
    Fixture {
        identity_id,
        key_id: created.key.unwrap().id,
        spare_key_id: spare.key.unwrap().id,
        token: created.token,
    }
}

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn grace(seconds: i64, nanos: i32) -> Option<OldKeyEnd> {
    Some(OldKeyEnd::GracePeriod(prost_types::Duration {
        seconds,
        nanos,
    }))
}

fn strings(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|e| e.to_string()).collect()
}

/// One past the latest second a google.protobuf.Timestamp may name.
const AFTER_YEAR_9999: i64 = 253_402_300_800;

/// The bad inputs: (description, request, expected answer).
fn battery(f: &Fixture) -> Vec<Row> {
    use Call::*;
    use Expect::*;
    let new_identity = |name: &str| proto::CreateIdentityRequest {
        name: name.into(),
        ..Default::default()
    };
    let new_key = |name: &str| proto::CreateKeyRequest {
        identity_id: f.identity_id.clone(),
        name: name.into(),
        ..Default::default()
    };
    let identity_update = |identity: proto::Identity, paths: &[&str]| {
        UpdateIdentity(proto::UpdateIdentityRequest {
            identity: Some(proto::Identity {
                id: if identity.id.is_empty() {
                    f.identity_id.clone()
                } else {
                    identity.id.clone()
                },
                ..identity
            }),
            update_mask: mask(paths),
        })
    };
    let key_update = |key: proto::ApiKey, paths: &[&str]| {
        UpdateKey(proto::UpdateKeyRequest {
            key: Some(proto::ApiKey {
                id: if key.id.is_empty() {
                    f.key_id.clone()
                } else {
                    key.id.clone()
                },
                ..key
            }),
            update_mask: mask(paths),
        })
    };
    let roll = |old_key_end: Option<OldKeyEnd>| proto::RollKeyRequest {
        key_id: f.key_id.clone(),
        old_key_end,
        totp_code: "123456".into(),
        new_key_expire_time: None,
    };
    let verify = |token: &str, dataset: &str, client_ip: &str| proto::VerifyRequest {
        token: token.into(),
        dataset: dataset.into(),
        client_ip: client_ip.into(),
        ..Default::default()
    };
    let id = &f.identity_id;
    let key = &f.key_id;
    let mut wrong_checksum = f.token.clone();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == 'A' { 'B' } else { 'A' });
    // Both members of the oneof, one after the other: protobuf keeps the last.
    let both_ends = [
        roll(grace(60, 0)).encode_to_vec(),
        proto::RollKeyRequest {
            old_key_end: Some(OldKeyEnd::OldKeyExpireTime(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            })),
            ..Default::default()
        }
        .encode_to_vec(),
    ]
    .concat();

    vec![
        // CreateIdentity: names.
        row(
            "empty CreateIdentity",
            CreateIdentity(Default::default()),
            Invalid(&["name"]),
        ),
        row(
            "31-character name",
            CreateIdentity(new_identity(&"a".repeat(31))),
            Invalid(&["name"]),
        ),
        row(
            "name with a space",
            CreateIdentity(new_identity("has space")),
            Invalid(&["name"]),
        ),
        row(
            "name with a dash",
            CreateIdentity(new_identity("dash-ed")),
            Invalid(&["name"]),
        ),
        row(
            "name with accented letters",
            CreateIdentity(new_identity("zoë")),
            Invalid(&["name"]),
        ),
        row(
            "name in CJK",
            CreateIdentity(new_identity("名前")),
            Invalid(&["name"]),
        ),
        row(
            "name with an emoji",
            CreateIdentity(new_identity("svc_🔑")),
            Invalid(&["name"]),
        ),
        row(
            "name with a NUL",
            CreateIdentity(new_identity("svc\0x")),
            Invalid(&["name"]),
        ),
        row(
            "name with a newline",
            CreateIdentity(new_identity("svc\nx")),
            Invalid(&["name"]),
        ),
        row(
            "name with a right-to-left override",
            CreateIdentity(new_identity("\u{202e}svc")),
            Invalid(&["name"]),
        ),
        row(
            "name with a zero-width space",
            CreateIdentity(new_identity("s\u{200b}vc")),
            Invalid(&["name"]),
        ),
        row(
            "name of 60,000 characters",
            CreateIdentity(new_identity(&"a".repeat(60_000))),
            Invalid(&["name"]),
        ),
        row(
            "request over the 64 KiB Admin limit",
            CreateIdentity(new_identity(&"a".repeat(70_000))),
            Error(Code::ResourceExhausted),
        ),
        row(
            "name already taken",
            CreateIdentity(new_identity("svc")),
            Error(Code::AlreadyExists),
        ),
        row(
            "the admin's name",
            CreateIdentity(new_identity("root")),
            Error(Code::AlreadyExists),
        ),
        // CreateIdentity: descriptions, lists, times.
        row(
            "257-character description",
            CreateIdentity(proto::CreateIdentityRequest {
                description: "d".repeat(257),
                ..new_identity("ok_a")
            }),
            Invalid(&["description"]),
        ),
        row(
            "description with a bell character",
            CreateIdentity(proto::CreateIdentityRequest {
                description: "ding\u{7}".into(),
                ..new_identity("ok_b")
            }),
            Invalid(&["description"]),
        ),
        row(
            "duplicate dataset",
            CreateIdentity(proto::CreateIdentityRequest {
                datasets: strings(&["sales", "sales"]),
                ..new_identity("ok_c")
            }),
            Invalid(&["datasets[1]"]),
        ),
        row(
            "unknown dataset",
            CreateIdentity(proto::CreateIdentityRequest {
                datasets: strings(&["nosuch"]),
                ..new_identity("ok_d")
            }),
            Invalid(&["datasets"]),
        ),
        row(
            "dataset with a bad name",
            CreateIdentity(proto::CreateIdentityRequest {
                datasets: strings(&["sales", "bad name"]),
                ..new_identity("ok_e")
            }),
            Invalid(&["datasets[1]"]),
        ),
        row(
            "257 datasets",
            CreateIdentity(proto::CreateIdentityRequest {
                datasets: (0..257).map(|i| format!("d{i}")).collect(),
                ..new_identity("ok_f")
            }),
            Invalid(&["datasets"]),
        ),
        row(
            "duplicate CIDR",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["10.0.0.0/8", "10.0.0.0/8"]),
                ..new_identity("ok_g")
            }),
            Invalid(&["allowed_cidrs[1]"]),
        ),
        row(
            "duplicate CIDR spelled two ways",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["192.0.2.1", "192.0.2.1/32"]),
                ..new_identity("ok_h")
            }),
            Invalid(&["allowed_cidrs[1]"]),
        ),
        row(
            "CIDR prefix /33",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["10.0.0.0/33"]),
                ..new_identity("ok_i")
            }),
            Invalid(&["allowed_cidrs[0]"]),
        ),
        row(
            "IPv6 CIDR prefix /129",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["2001:db8::/129"]),
                ..new_identity("ok_j")
            }),
            Invalid(&["allowed_cidrs[0]"]),
        ),
        row(
            "CIDR with host bits set",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["10.0.0.1/8"]),
                ..new_identity("ok_k")
            }),
            Invalid(&["allowed_cidrs[0]"]),
        ),
        row(
            "CIDR that is a word, and an empty one",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: strings(&["nope", ""]),
                ..new_identity("ok_l")
            }),
            Invalid(&["allowed_cidrs[0]", "allowed_cidrs[1]"]),
        ),
        row(
            "65 CIDRs",
            CreateIdentity(proto::CreateIdentityRequest {
                allowed_cidrs: (0..65).map(|i| format!("10.0.{i}.0/24")).collect(),
                ..new_identity("ok_m")
            }),
            Invalid(&["allowed_cidrs"]),
        ),
        row(
            "expire_time in the past",
            CreateIdentity(proto::CreateIdentityRequest {
                expire_time: at(1, 0),
                ..new_identity("ok_n")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "expire_time after year 9999",
            CreateIdentity(proto::CreateIdentityRequest {
                expire_time: at(AFTER_YEAR_9999, 0),
                ..new_identity("ok_o")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "expire_time at i64::MAX seconds",
            CreateIdentity(proto::CreateIdentityRequest {
                expire_time: at(i64::MAX, 0),
                ..new_identity("ok_p")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "expire_time before 1970",
            CreateIdentity(proto::CreateIdentityRequest {
                expire_time: at(-1, 0),
                ..new_identity("ok_q")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "expire_time with negative nanos",
            CreateIdentity(proto::CreateIdentityRequest {
                expire_time: at(4_000_000_000, -1),
                ..new_identity("ok_r")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "every field wrong at once, as an admin",
            CreateIdentity(proto::CreateIdentityRequest {
                name: "bad name".into(),
                description: "x".repeat(300),
                datasets: strings(&["a", "a"]),
                allowed_cidrs: strings(&["300.1.1.1/8"]),
                scopes: strings(&["bad scope"]),
                labels: [("Bad Key".to_string(), String::new())]
                    .into_iter()
                    .collect(),
                admin: true,
                expire_time: at(0, 1_000_000_000),
                rate_limits: vec![proto::RateLimit {
                    name: "Bad Name".into(),
                    limit: 1,
                    duration: None,
                }],
            }),
            Invalid(&[
                "name",
                "description",
                "datasets[1]",
                "allowed_cidrs[0]",
                "scopes[0]",
                "labels[\"Bad Key\"]",
                "rate_limits[0].name",
                "rate_limits[0].duration",
                "expire_time",
            ]),
        ),
        // Identity ids.
        row(
            "empty identity id",
            GetIdentity(Default::default()),
            Invalid(&["identity_id"]),
        ),
        row(
            "short identity id",
            GetIdentity(proto::GetIdentityRequest {
                identity_id: "nope".into(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "identity id with an underscore",
            GetIdentity(proto::GetIdentityRequest {
                identity_id: "abcdefghijk_".into(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "identity id of 12 bytes with non-ASCII",
            GetIdentity(proto::GetIdentityRequest {
                identity_id: "ééééééAAAAAA"[..12].into(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "identity id of 50,000 characters",
            GetIdentity(proto::GetIdentityRequest {
                identity_id: "A".repeat(50_000),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "unknown identity id",
            GetIdentity(proto::GetIdentityRequest {
                identity_id: "AAAAAAAAAAAA".into(),
            }),
            Error(Code::NotFound),
        ),
        row(
            "path traversal as identity id",
            DisableIdentity(proto::DisableIdentityRequest {
                identity_id: "../../../etc".into(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "Redis glob as identity id",
            EnableIdentity(proto::EnableIdentityRequest {
                identity_id: "*".into(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "key id given as identity id",
            DeleteIdentity(proto::DeleteIdentityRequest {
                identity_id: key.clone(),
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "delete an unknown identity",
            DeleteIdentity(proto::DeleteIdentityRequest {
                identity_id: "ZZZZZZZZZZZZ".into(),
            }),
            Error(Code::NotFound),
        ),
        // ListIdentities.
        row(
            "negative page_size",
            ListIdentities(proto::ListIdentitiesRequest {
                page_size: -1,
                ..Default::default()
            }),
            Invalid(&["page_size"]),
        ),
        row(
            "page_size i32::MIN",
            ListIdentities(proto::ListIdentitiesRequest {
                page_size: i32::MIN,
                ..Default::default()
            }),
            Invalid(&["page_size"]),
        ),
        row(
            "page_token not from this API",
            ListIdentities(proto::ListIdentitiesRequest {
                page_token: "!!not-a-token!!".into(),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        row(
            "page_token of 300 characters",
            ListIdentities(proto::ListIdentitiesRequest {
                page_token: "A".repeat(300),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        row(
            "filter without a value",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "kind =".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter with an unknown kind",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "kind = ROBOT".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter on an unknown field",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "color = red".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter with OR",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "kind = SERVICE OR kind = PERSON".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter with an unterminated quote",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "dataset = \"sales".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter ending with AND",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "admin = true AND".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter with a non-ASCII symbol",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "kind = SERVICE AND ☃".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "filter of 600 characters",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "kind = SERVICE ".repeat(40),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        // UpdateIdentity.
        row(
            "UpdateIdentity with neither identity nor mask",
            UpdateIdentity(Default::default()),
            Invalid(&["identity.id", "update_mask"]),
        ),
        row(
            "update without a mask",
            identity_update(Default::default(), &[]),
            Invalid(&["update_mask"]),
        ),
        row(
            "mask path kind",
            identity_update(Default::default(), &["kind"]),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "mask path create_time",
            identity_update(Default::default(), &["description", "create_time"]),
            Invalid(&["update_mask.paths[1]"]),
        ),
        row(
            "mask path listed twice",
            identity_update(Default::default(), &["admin", "admin"]),
            Invalid(&["update_mask.paths[1]"]),
        ),
        row(
            "mask path that is empty",
            identity_update(Default::default(), &[""]),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "unknown enum value 99 in identity.state, masked",
            identity_update(
                proto::Identity {
                    state: 99,
                    kind: 99,
                    ..Default::default()
                },
                &["state"],
            ),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "rename to 31 characters",
            identity_update(
                proto::Identity {
                    name: "b".repeat(31),
                    ..Default::default()
                },
                &["name"],
            ),
            Invalid(&["identity.name"]),
        ),
        row(
            "wildcard mask with every field empty",
            identity_update(Default::default(), &["*"]),
            Invalid(&["identity.name"]),
        ),
        row(
            "rename to a taken name",
            identity_update(
                proto::Identity {
                    name: "root".into(),
                    ..Default::default()
                },
                &["name"],
            ),
            Error(Code::AlreadyExists),
        ),
        row(
            "update with duplicate datasets",
            identity_update(
                proto::Identity {
                    datasets: strings(&["sales", "sales"]),
                    ..Default::default()
                },
                &["datasets"],
            ),
            Invalid(&["identity.datasets[1]"]),
        ),
        row(
            "update with an unknown dataset",
            identity_update(
                proto::Identity {
                    datasets: strings(&["nosuch"]),
                    ..Default::default()
                },
                &["datasets"],
            ),
            Invalid(&["identity.datasets"]),
        ),
        row(
            "update with a duplicate IPv6 CIDR",
            identity_update(
                proto::Identity {
                    allowed_cidrs: strings(&["2001:db8::/32", "2001:0db8::/32"]),
                    ..Default::default()
                },
                &["allowedCidrs"],
            ),
            Invalid(&["identity.allowed_cidrs[1]"]),
        ),
        row(
            "update expire_time into the past",
            identity_update(
                proto::Identity {
                    expire_time: at(1_000_000_000, 0),
                    ..Default::default()
                },
                &["expire_time"],
            ),
            Invalid(&["identity.expire_time"]),
        ),
        row(
            "update a bad identity id",
            identity_update(
                proto::Identity {
                    id: "short".into(),
                    ..Default::default()
                },
                &["description"],
            ),
            Invalid(&["identity.id"]),
        ),
        row(
            "update an unknown identity",
            identity_update(
                proto::Identity {
                    id: "AAAAAAAAAAAA".into(),
                    ..Default::default()
                },
                &["description"],
            ),
            Error(Code::NotFound),
        ),
        // CreateKey.
        row(
            "empty CreateKey",
            CreateKey(Default::default()),
            Invalid(&["identity_id", "name"]),
        ),
        row(
            "key name of 31 characters",
            CreateKey(new_key(&"k".repeat(31))),
            Invalid(&["name"]),
        ),
        row(
            "key name with a tab",
            CreateKey(new_key("key\tname")),
            Invalid(&["name"]),
        ),
        row(
            "key name already used by the identity",
            CreateKey(new_key("default")),
            Error(Code::AlreadyExists),
        ),
        row(
            "key for an unknown identity",
            CreateKey(proto::CreateKeyRequest {
                identity_id: "AAAAAAAAAAAA".into(),
                ..new_key("k1")
            }),
            Error(Code::NotFound),
        ),
        row(
            "key description of 10,000 characters",
            CreateKey(proto::CreateKeyRequest {
                description: "é".repeat(10_000),
                ..new_key("k2")
            }),
            Invalid(&["description"]),
        ),
        row(
            "key with duplicate CIDRs",
            CreateKey(proto::CreateKeyRequest {
                allowed_cidrs: strings(&["10.1.0.0/16", "10.1.0.0/16"]),
                ..new_key("k3")
            }),
            Invalid(&["allowed_cidrs[1]"]),
        ),
        row(
            "key expiring in the past",
            CreateKey(proto::CreateKeyRequest {
                expire_time: at(1_600_000_000, 0),
                ..new_key("k4")
            }),
            Invalid(&["expire_time"]),
        ),
        row(
            "key expire_time with nanos = 1e9",
            CreateKey(proto::CreateKeyRequest {
                expire_time: at(4_000_000_000, 1_000_000_000),
                ..new_key("k5")
            }),
            Invalid(&["expire_time"]),
        ),
        // Key ids.
        row(
            "empty key id",
            GetKey(Default::default()),
            Invalid(&["key_id"]),
        ),
        row(
            "identity id given as key id",
            GetKey(proto::GetKeyRequest { key_id: id.clone() }),
            Invalid(&["key_id"]),
        ),
        row(
            "key id with a colon",
            DisableKey(proto::DisableKeyRequest {
                key_id: format!("{}:key:x", &key[..12]),
            }),
            Invalid(&["key_id"]),
        ),
        row(
            "key id with non-ASCII",
            EnableKey(proto::EnableKeyRequest {
                key_id: "ключ".repeat(4),
            }),
            Invalid(&["key_id"]),
        ),
        row(
            "revoke an unknown key",
            RevokeKey(proto::RevokeKeyRequest {
                key_id: "AAAAAAAAAAAAAAAAAA".into(),
            }),
            Error(Code::NotFound),
        ),
        row(
            "revoke a key id with a space",
            RevokeKey(proto::RevokeKeyRequest {
                key_id: format!("{} ", &key[..17]),
            }),
            Invalid(&["key_id"]),
        ),
        // ListKeys.
        row(
            "ListKeys with a bad identity id",
            ListKeys(proto::ListKeysRequest {
                identity_id: "x".into(),
                ..Default::default()
            }),
            Invalid(&["identity_id"]),
        ),
        row(
            "ListKeys with a negative page_size",
            ListKeys(proto::ListKeysRequest {
                identity_id: id.clone(),
                page_size: -5,
                ..Default::default()
            }),
            Invalid(&["page_size"]),
        ),
        row(
            "ListKeys with a bad page_token",
            ListKeys(proto::ListKeysRequest {
                identity_id: id.clone(),
                page_token: "zzz".into(),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        row(
            "ListKeys of an unknown identity",
            ListKeys(proto::ListKeysRequest {
                identity_id: "AAAAAAAAAAAA".into(),
                ..Default::default()
            }),
            Error(Code::NotFound),
        ),
        // UpdateKey.
        row(
            "UpdateKey without a key or mask",
            UpdateKey(Default::default()),
            Invalid(&["key.id", "update_mask"]),
        ),
        row(
            "key mask path state",
            key_update(Default::default(), &["state"]),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "key mask path grace_expire_time",
            key_update(Default::default(), &["grace_expire_time"]),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "key mask path rolled_to",
            key_update(Default::default(), &["rolledTo"]),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "rename a key to 31 characters",
            key_update(
                proto::ApiKey {
                    name: "n".repeat(31),
                    ..Default::default()
                },
                &["name"],
            ),
            Invalid(&["key.name"]),
        ),
        row(
            "rename a key to another key's name",
            key_update(
                proto::ApiKey {
                    id: f.spare_key_id.clone(),
                    name: "default".into(),
                    ..Default::default()
                },
                &["name"],
            ),
            Error(Code::AlreadyExists),
        ),
        row(
            "key expire_time out of range",
            key_update(
                proto::ApiKey {
                    expire_time: at(AFTER_YEAR_9999, 0),
                    ..Default::default()
                },
                &["expire_time"],
            ),
            Invalid(&["key.expire_time"]),
        ),
        row(
            "key CIDR that is an address range",
            key_update(
                proto::ApiKey {
                    allowed_cidrs: strings(&["10.0.0.1-10.0.0.9"]),
                    ..Default::default()
                },
                &["allowed_cidrs"],
            ),
            Invalid(&["key.allowed_cidrs[0]"]),
        ),
        // RollKey (checked before the TOTP step-up).
        row(
            "roll with a bad key id",
            RollKey(proto::RollKeyRequest {
                key_id: "x".into(),
                ..roll(None)
            }),
            Invalid(&["key_id"]),
        ),
        row(
            "negative grace_period",
            RollKey(roll(grace(-60, 0))),
            Invalid(&["grace_period"]),
        ),
        row(
            "grace_period with negative nanos",
            RollKey(roll(grace(0, -1))),
            Invalid(&["grace_period"]),
        ),
        row(
            "grace_period with nanos = 1e9",
            RollKey(roll(grace(1, 1_000_000_000))),
            Invalid(&["grace_period"]),
        ),
        row(
            "grace_period of i64::MAX seconds",
            RollKey(roll(grace(i64::MAX, 999_999_999))),
            Invalid(&["grace_period"]),
        ),
        row(
            "grace_period of i64::MIN seconds",
            RollKey(roll(grace(i64::MIN, 0))),
            Invalid(&["grace_period"]),
        ),
        row(
            "grace_period over a year",
            RollKey(roll(grace(366 * 86_400, 0))),
            Invalid(&["grace_period"]),
        ),
        row(
            "old_key_expire_time in the past",
            RollKey(roll(Some(OldKeyEnd::OldKeyExpireTime(
                prost_types::Timestamp {
                    seconds: 86_400,
                    nanos: 0,
                },
            )))),
            Invalid(&["old_key_expire_time"]),
        ),
        row(
            // The grace-period cap, written as a time, caps this too.
            "old_key_expire_time 800 days out",
            RollKey(roll(Some(OldKeyEnd::OldKeyExpireTime(
                prost_types::Timestamp {
                    seconds: keyrack::domain::UnixMillis::now().0 / 1000 + 800 * 86_400,
                    nanos: 0,
                },
            )))),
            Invalid(&["old_key_expire_time"]),
        ),
        row(
            "old_key_expire_time after year 9999",
            RollKey(roll(Some(OldKeyEnd::OldKeyExpireTime(
                prost_types::Timestamp {
                    seconds: AFTER_YEAR_9999,
                    nanos: 0,
                },
            )))),
            Invalid(&["old_key_expire_time"]),
        ),
        row(
            "TOTP code of 1,000 digits",
            RollKey(proto::RollKeyRequest {
                totp_code: "1".repeat(1000),
                ..roll(None)
            }),
            Invalid(&["totp_code"]),
        ),
        row(
            "roll an unknown key",
            RollKey(proto::RollKeyRequest {
                key_id: "AAAAAAAAAAAAAAAAAA".into(),
                ..roll(None)
            }),
            Error(Code::NotFound),
        ),
        row(
            "roll without an enrolled authenticator",
            RollKey(roll(grace(60, 0))),
            Error(Code::FailedPrecondition),
        ),
        // Datasets.
        row(
            "empty CreateDataset",
            CreateDataset(Default::default()),
            Invalid(&["name"]),
        ),
        row(
            "dataset name of 31 characters",
            CreateDataset(proto::CreateDatasetRequest {
                name: "s".repeat(31),
                ..Default::default()
            }),
            Invalid(&["name"]),
        ),
        row(
            "dataset name with a dot",
            CreateDataset(proto::CreateDatasetRequest {
                name: "sales.eu".into(),
                skip_key: true,
                ..Default::default()
            }),
            Invalid(&["name"]),
        ),
        row(
            "dataset that exists",
            CreateDataset(proto::CreateDatasetRequest {
                name: "sales".into(),
                skip_key: true,
                ..Default::default()
            }),
            Error(Code::AlreadyExists),
        ),
        row(
            "dataset whose wizard identity name is taken",
            CreateDataset(proto::CreateDatasetRequest {
                name: "svc".into(),
                ..Default::default()
            }),
            Error(Code::AlreadyExists),
        ),
        row(
            "get a dataset with a bad name",
            GetDataset(proto::GetDatasetRequest {
                dataset: "a b".into(),
            }),
            Invalid(&["dataset"]),
        ),
        row(
            "get an unknown dataset",
            GetDataset(proto::GetDatasetRequest {
                dataset: "nosuch".into(),
            }),
            Error(Code::NotFound),
        ),
        row(
            "ListDatasets with a negative page_size",
            ListDatasets(proto::ListDatasetsRequest {
                page_size: -1,
                ..Default::default()
            }),
            Invalid(&["page_size"]),
        ),
        row(
            "ListDatasets with a bad page_token",
            ListDatasets(proto::ListDatasetsRequest {
                page_token: "not a name".into(),
                ..Default::default()
            }),
            Invalid(&["page_token"]),
        ),
        row(
            "delete a dataset with an empty name",
            DeleteDataset(Default::default()),
            Invalid(&["dataset"]),
        ),
        row(
            "delete an unknown dataset",
            DeleteDataset(proto::DeleteDatasetRequest {
                dataset: "nosuch".into(),
                force: true,
            }),
            Error(Code::NotFound),
        ),
        row(
            "delete a referenced dataset without force",
            DeleteDataset(proto::DeleteDatasetRequest {
                dataset: "sales".into(),
                force: false,
            }),
            Error(Code::FailedPrecondition),
        ),
        // TOTP.
        row(
            "confirm a code without enrolling",
            ConfirmTotp(proto::ConfirmTotpRequest {
                code: "123456".into(),
            }),
            Error(Code::FailedPrecondition),
        ),
        row(
            "confirm a 10,000-character code without enrolling",
            ConfirmTotp(proto::ConfirmTotpRequest {
                code: "9".repeat(10_000),
            }),
            Error(Code::FailedPrecondition),
        ),
        // Verify: malformed requests are errors, bad tokens are answers.
        row(
            "empty Verify",
            Verify(Default::default()),
            Invalid(&["token"]),
        ),
        row(
            "Verify over the 4 KiB limit",
            Verify(verify(&"x".repeat(5 * 1024), "", "")),
            Error(Code::ResourceExhausted),
        ),
        row(
            "client_ip 10.0.0.300",
            Verify(verify("kr_garbage", "", "10.0.0.300")),
            Invalid(&["client_ip"]),
        ),
        row(
            "client_ip that is a CIDR",
            Verify(verify("kr_garbage", "", "10.0.0.0/8")),
            Invalid(&["client_ip"]),
        ),
        row(
            "client_ip with a port",
            Verify(verify("kr_garbage", "", "10.0.0.1:443")),
            Invalid(&["client_ip"]),
        ),
        row(
            "client_ip with an IPv6 zone",
            Verify(verify("kr_garbage", "", "fe80::1%eth0")),
            Invalid(&["client_ip"]),
        ),
        row(
            "client_ip with a leading space",
            Verify(verify("kr_garbage", "", " 10.0.0.1")),
            Invalid(&["client_ip"]),
        ),
        row(
            "client_ip that is a host name",
            Verify(verify("kr_garbage", "", "localhost")),
            Invalid(&["client_ip"]),
        ),
        row(
            "Verify dataset with a bad name",
            Verify(verify("kr_garbage", "no way", "")),
            Invalid(&["dataset"]),
        ),
        row(
            "dataset and client_ip both bad",
            Verify(verify(&f.token, &"d".repeat(31), "::ffff:999.0.0.1")),
            Invalid(&["dataset", "client_ip"]),
        ),
        // Scopes: syntax, size, duplicates, empty strings; and a key may not
        // exceed its identity (the fixture's identity grants no scope and
        // holds only the dataset `sales`).
        row(
            "scopes with a space, a lone wildcard and an inner star",
            CreateIdentity(proto::CreateIdentityRequest {
                scopes: strings(&["billing read", "*", "a*b"]),
                ..new_identity("ok_s1")
            }),
            Invalid(&["scopes[0]", "scopes[1]", "scopes[2]"]),
        ),
        row(
            "65 scopes",
            CreateIdentity(proto::CreateIdentityRequest {
                scopes: (0..65).map(|i| format!("s{i}")).collect(),
                ..new_identity("ok_s2")
            }),
            Invalid(&["scopes"]),
        ),
        row(
            "a scope twice and an empty scope",
            CreateIdentity(proto::CreateIdentityRequest {
                scopes: strings(&["billing:read", "billing:read", ""]),
                ..new_identity("ok_s3")
            }),
            Invalid(&["scopes[1]", "scopes[2]"]),
        ),
        row(
            "a scope of 129 characters",
            identity_update(
                proto::Identity {
                    scopes: vec!["s".repeat(129)],
                    ..Default::default()
                },
                &["scopes"],
            ),
            Invalid(&["identity.scopes[0]"]),
        ),
        row(
            "a key scope its identity does not grant",
            CreateKey(proto::CreateKeyRequest {
                scopes: strings(&["billing:read"]),
                ..new_key("ks1")
            }),
            Invalid(&["scopes[0]"]),
        ),
        row(
            "a key dataset its identity does not hold",
            CreateKey(proto::CreateKeyRequest {
                datasets: strings(&["payroll"]),
                ..new_key("ks2")
            }),
            Invalid(&["datasets[0]"]),
        ),
        row(
            "key scopes badly formed and duplicated",
            key_update(
                proto::ApiKey {
                    scopes: strings(&["a:b", "a:b", "bad/scope?"]),
                    ..Default::default()
                },
                &["scopes"],
            ),
            Invalid(&["key.scopes[1]", "key.scopes[2]"]),
        ),
        row(
            "key update widening the identity's scopes and datasets",
            key_update(
                proto::ApiKey {
                    scopes: strings(&["billing:*"]),
                    datasets: strings(&["payroll"]),
                    ..Default::default()
                },
                &["scopes", "datasets"],
            ),
            Invalid(&["key.scopes[0]", "key.datasets[0]"]),
        ),
        row(
            "Verify required_scopes malformed",
            Verify(proto::VerifyRequest {
                required_scopes: strings(&["", "ok", "no way"]),
                ..verify("kr_garbage", "", "")
            }),
            Invalid(&["required_scopes[0]", "required_scopes[2]"]),
        ),
        row(
            "ListKeys filter on an unknown field",
            ListKeys(proto::ListKeysRequest {
                identity_id: f.identity_id.clone(),
                filter: "kind = SERVICE".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "ListIdentities filter on a malformed scope",
            ListIdentities(proto::ListIdentitiesRequest {
                filter: "scope = \"a b\"".into(),
                ..Default::default()
            }),
            Invalid(&["filter"]),
        ),
        row(
            "token of whitespace",
            Verify(verify("   ", "", "")),
            Verdict(VerifyCode::Malformed),
        ),
        row(
            "token with a NUL",
            Verify(verify("kr_\0\0\0", "", "")),
            Verdict(VerifyCode::Malformed),
        ),
        row(
            "token with non-ASCII",
            Verify(verify("kr_ключ_секрет", "", "")),
            Verdict(VerifyCode::Malformed),
        ),
        row(
            "token with a wrong checksum",
            Verify(verify(&wrong_checksum, "", "10.0.0.1")),
            Verdict(VerifyCode::Malformed),
        ),
        row(
            "token with the wrong prefix",
            Verify(verify(&f.token.replacen("kr_", "xx_", 1), "", "")),
            Verdict(VerifyCode::Malformed),
        ),
        row(
            "token from outside its allow-list",
            Verify(verify(&f.token, "", "192.0.2.1")),
            Verdict(VerifyCode::IpNotAllowed),
        ),
        // Hand-made protobuf.
        row(
            "invalid UTF-8 in CreateIdentity.name",
            Raw(
                "/keyrack.v1.AdminService/CreateIdentity",
                vec![0x0a, 0x02, 0xff, 0xfe],
            ),
            Error(Code::InvalidArgument),
        ),
        row(
            "length prefix past the end of the message",
            Raw(
                "/keyrack.v1.AdminService/CreateIdentity",
                vec![0x0a, 0x10, b'a'],
            ),
            Error(Code::InvalidArgument),
        ),
        row(
            "wrong wire type for a string field",
            Raw(
                "/keyrack.v1.AdminService/CreateIdentity",
                vec![0x0d, 0, 0, 0, 0],
            ),
            Error(Code::InvalidArgument),
        ),
        row(
            "varint longer than ten bytes",
            Raw(
                "/keyrack.v1.AdminService/CreateIdentity",
                [vec![0x28], vec![0xff; 10], vec![0x01]].concat(),
            ),
            Error(Code::InvalidArgument),
        ),
        row(
            "only an unknown field",
            Raw(
                "/keyrack.v1.AdminService/CreateIdentity",
                vec![0xa2, 0x06, 0x01, b'x'],
            ),
            Invalid(&["name"]),
        ),
        row(
            "both members of RollKey's oneof",
            Raw("/keyrack.v1.AdminService/RollKey", both_ends),
            Invalid(&["old_key_expire_time"]),
        ),
        row(
            "invalid UTF-8 in VerifyRequest.token",
            Raw(
                "/keyrack.v1.VerifyService/Verify",
                vec![0x0a, 0x03, b'k', 0xc3, 0x28],
            ),
            Error(Code::InvalidArgument),
        ),
        // JSON, as grpcurl users type it.
        row(
            "a number for a string",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": 5}"#.into(),
            ),
            NotSent,
        ),
        row(
            "a string for a bool",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "j1", "admin": "yes"}"#.into(),
            ),
            NotSent,
        ),
        row(
            // grpcurl 1.8 reads a lone string as a one-entry list and sends it.
            "a string where a list belongs",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "j2", "allowedCidrs": "10.0.0.1/8"}"#.into(),
            ),
            Invalid(&["allowed_cidrs[0]"]),
        ),
        row(
            "a null in a list",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "j3", "allowedCidrs": [null]}"#.into(),
            ),
            // grpcurl sends the null as an empty string.
            Invalid(&["allowed_cidrs[0]"]),
        ),
        row(
            "a misspelled field",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"nmae": "j4"}"#.into(),
            ),
            NotSent,
        ),
        row(
            "truncated JSON",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "#.into(),
            ),
            NotSent,
        ),
        row(
            "a JSON array",
            Json("keyrack.v1.AdminService/CreateIdentity", "[]".into()),
            NotSent,
        ),
        row(
            "a timestamp in words",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "j5", "expireTime": "yesterday"}"#.into(),
            ),
            NotSent,
        ),
        row(
            "a timestamp in year 1",
            Json(
                "keyrack.v1.AdminService/CreateIdentity",
                r#"{"name": "j6", "expireTime": "0001-01-01T00:00:00Z"}"#.into(),
            ),
            Invalid(&["expire_time"]),
        ),
        row(
            "an unknown enum name",
            Json(
                "keyrack.v1.AdminService/UpdateIdentity",
                format!(
                    r#"{{"identity": {{"id": "{id}", "kind": "IDENTITY_KIND_ROBOT"}}, "updateMask": {{"paths": ["kind"]}}}}"#
                ),
            ),
            NotSent,
        ),
        row(
            "an unknown enum number",
            Json(
                "keyrack.v1.AdminService/UpdateIdentity",
                format!(
                    r#"{{"identity": {{"id": "{id}", "state": 99}}, "updateMask": {{"paths": ["state"]}}}}"#
                ),
            ),
            Invalid(&["update_mask.paths[0]"]),
        ),
        row(
            "a mask in the string form",
            Json(
                "keyrack.v1.AdminService/UpdateIdentity",
                format!(r#"{{"identity": {{"id": "{id}"}}, "updateMask": "kind"}}"#),
            ),
            NotSent,
        ),
        row(
            "a page_size over i32",
            Json(
                "keyrack.v1.AdminService/ListIdentities",
                r#"{"pageSize": 4294967296}"#.into(),
            ),
            NotSent,
        ),
        row(
            "a fractional page_size",
            Json(
                "keyrack.v1.AdminService/ListIdentities",
                r#"{"pageSize": 1.5}"#.into(),
            ),
            NotSent,
        ),
        row(
            "a negative page_size in JSON",
            Json(
                "keyrack.v1.AdminService/ListDatasets",
                r#"{"pageSize": -5}"#.into(),
            ),
            Invalid(&["page_size"]),
        ),
        row(
            "a negative duration",
            Json(
                "keyrack.v1.AdminService/RollKey",
                format!(r#"{{"keyId": "{key}", "gracePeriod": "-5s"}}"#),
            ),
            Invalid(&["grace_period"]),
        ),
        row(
            "a duration past Duration's range",
            Json(
                "keyrack.v1.AdminService/RollKey",
                format!(r#"{{"keyId": "{key}", "gracePeriod": "315576000001s"}}"#),
            ),
            NotSent,
        ),
        row(
            "both oneof members in JSON",
            Json(
                "keyrack.v1.AdminService/RollKey",
                format!(
                    r#"{{"keyId": "{key}", "gracePeriod": "60s", "oldKeyExpireTime": "{}"}}"#,
                    humantime::format_rfc3339_seconds(
                        std::time::SystemTime::now() + Duration::from_secs(100 * 86_400)
                    )
                ),
            ),
            // grpcurl 1.8 sends it (one member wins); either is valid, so the
            // roll stops at the TOTP step-up, before any write.
            Error(Code::FailedPrecondition),
        ),
        row(
            "a number for client_ip",
            Json(
                "keyrack.v1.VerifyService/Verify",
                r#"{"token": "kr_x", "clientIp": 12}"#.into(),
            ),
            NotSent,
        ),
        row(
            "a bad client_ip in JSON",
            Json(
                "keyrack.v1.VerifyService/Verify",
                r#"{"token": "kr_x", "clientIp": "300.1.1.1"}"#.into(),
            ),
            Invalid(&["client_ip"]),
        ),
    ]
}

/// A codec that sends and receives bytes as they are, for hand-made protobuf.
#[derive(Default)]
struct RawCodec;
struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn send_raw(server: &TestServer, path: &'static str, bytes: Vec<u8>) -> Result<(), Status> {
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(authed(&server.admin_token, bytes), path, RawCodec)
        .await
        .map(drop)
}

struct Clients {
    admin: AdminServiceClient<Channel>,
    verifier: VerifyServiceClient<Channel>,
}

async fn send(server: &TestServer, clients: &mut Clients, grpcurl: &Grpcurl, call: Call) -> Answer {
    let token = server.admin_token.as_str();
    let admin = &mut clients.admin;
    let refused = |result: Result<(), Status>| match result {
        Ok(()) => Answer::Accepted,
        Err(status) => Answer::Refused(status),
    };
    match call {
        Call::CreateIdentity(r) => refused(admin.create_identity(authed(token, r)).await.map(drop)),
        Call::GetIdentity(r) => refused(admin.get_identity(authed(token, r)).await.map(drop)),
        Call::ListIdentities(r) => refused(admin.list_identities(authed(token, r)).await.map(drop)),
        Call::UpdateIdentity(r) => refused(admin.update_identity(authed(token, r)).await.map(drop)),
        Call::DisableIdentity(r) => {
            refused(admin.disable_identity(authed(token, r)).await.map(drop))
        }
        Call::EnableIdentity(r) => refused(admin.enable_identity(authed(token, r)).await.map(drop)),
        Call::DeleteIdentity(r) => refused(admin.delete_identity(authed(token, r)).await.map(drop)),
        Call::CreateKey(r) => refused(admin.create_key(authed(token, r)).await.map(drop)),
        Call::GetKey(r) => refused(admin.get_key(authed(token, r)).await.map(drop)),
        Call::ListKeys(r) => refused(admin.list_keys(authed(token, r)).await.map(drop)),
        Call::UpdateKey(r) => refused(admin.update_key(authed(token, r)).await.map(drop)),
        Call::DisableKey(r) => refused(admin.disable_key(authed(token, r)).await.map(drop)),
        Call::EnableKey(r) => refused(admin.enable_key(authed(token, r)).await.map(drop)),
        Call::RollKey(r) => refused(admin.roll_key(authed(token, r)).await.map(drop)),
        Call::RevokeKey(r) => refused(admin.revoke_key(authed(token, r)).await.map(drop)),
        Call::CreateDataset(r) => refused(admin.create_dataset(authed(token, r)).await.map(drop)),
        Call::GetDataset(r) => refused(admin.get_dataset(authed(token, r)).await.map(drop)),
        Call::ListDatasets(r) => refused(admin.list_datasets(authed(token, r)).await.map(drop)),
        Call::DeleteDataset(r) => refused(admin.delete_dataset(authed(token, r)).await.map(drop)),
        Call::ConfirmTotp(r) => refused(admin.confirm_totp(authed(token, r)).await.map(drop)),
        Call::Verify(r) => match clients.verifier.verify(r).await {
            Ok(reply) => Answer::Verdict(reply.into_inner().code()),
            Err(status) => Answer::Refused(status),
        },
        Call::Raw(path, bytes) => refused(send_raw(server, path, bytes).await),
        Call::Json(method, body) => {
            let token = server.admin_token.clone();
            let grpcurl = grpcurl.clone();
            let output =
                tokio::task::spawn_blocking(move || grpcurl.call(method, Some(&token), &body))
                    .await
                    .unwrap();
            Answer::Grpcurl(output)
        }
    }
}

/// Fails with `message` unless `condition` holds.
fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// Checks an answer against a row's expectation; the error says what differs.
fn check(expect: Expect, answer: &Answer) -> Result<(), String> {
    match (expect, answer) {
        (Expect::Invalid(fields), Answer::Refused(status)) => {
            ensure(status.code() == Code::InvalidArgument, || {
                format!("{status:?}")
            })?;
            let details = status
                .get_details_bad_request()
                .ok_or_else(|| format!("no BadRequest details: {status:?}"))?;
            for violation in &details.field_violations {
                ensure(
                    !violation.field.is_empty() && !violation.description.is_empty(),
                    || format!("empty field violation {violation:?}"),
                )?;
            }
            let named: Vec<&str> = details
                .field_violations
                .iter()
                .map(|v| v.field.as_str())
                .collect();
            ensure(named == fields, || {
                format!("violations name {named:?}, expected {fields:?}: {status:?}")
            })
        }
        (Expect::Error(code), Answer::Refused(status)) => {
            ensure(status.code() == code, || {
                format!("{status:?}, expected {code:?}")
            })?;
            ensure(!status.message().is_empty(), || {
                format!("no message: {status:?}")
            })
        }
        (Expect::Verdict(code), Answer::Verdict(got)) => ensure(*got == code, || {
            format!("Verify answered {got:?}, expected {code:?}")
        }),
        (expect, Answer::Grpcurl(output)) => {
            let stderr = text(&output.stderr);
            ensure(!output.status.success(), || {
                format!("grpcurl succeeded: {}", text(&output.stdout))
            })?;
            match expect {
                Expect::NotSent => ensure(!stderr.contains("Code:"), || {
                    format!(
                        "expected grpcurl to refuse the JSON, but the server answered: {stderr}"
                    )
                }),
                Expect::Invalid(fields) => {
                    ensure(
                        stderr.contains("Code: InvalidArgument\n")
                            && stderr.contains("fieldViolations"),
                        || format!("expected INVALID_ARGUMENT with field violations: {stderr}"),
                    )?;
                    for field in fields {
                        let named = [
                            format!("\"field\":\"{field}\""),
                            format!("\"field\": \"{field}\""),
                        ];
                        ensure(named.iter().any(|n| stderr.contains(n.as_str())), || {
                            format!("{field} not named: {stderr}")
                        })?;
                    }
                    Ok(())
                }
                Expect::Error(code) => {
                    ensure(stderr.contains(&format!("Code: {code:?}\n")), || {
                        format!("expected {code:?}: {stderr}")
                    })
                }
                Expect::Verdict(_) => Err("a verdict row cannot go through grpcurl".into()),
            }
        }
        (expect, Answer::Accepted) => Err(format!("accepted, expected {expect:?}")),
        (expect, Answer::Verdict(code)) => {
            Err(format!("Verify answered {code:?}, expected {expect:?}"))
        }
        (expect, Answer::Refused(status)) => Err(format!("{status:?}, expected {expect:?}")),
    }
}

on_both_quiet_stores!(
    bad_input_gets_clear_errors_and_writes_nothing,
    bad_input_body
);
async fn bad_input_body(server: TestServer) {
    let fixture = fixture(&server).await;
    let rows = battery(&fixture);
    let mut descriptions: Vec<&str> = rows.iter().map(|row| row.what).collect();
    descriptions.sort();
    let repeated: Vec<&[&str]> = descriptions.windows(2).filter(|w| w[0] == w[1]).collect();
    assert!(repeated.is_empty(), "row descriptions repeat: {repeated:?}");
    assert!(rows.len() >= 50, "{} rows", rows.len());

    let grpcurl = Grpcurl::new(&server);
    let mut clients = Clients {
        admin: server.admin().await,
        verifier: server.verifier().await,
    };
    let start = snapshot(&server).await;
    assert!(
        start.len() >= 4,
        "the snapshot sees the fixture's records: {start:?}"
    );
    let mut failures = Vec::new();
    for Row { what, call, expect } in rows {
        let before = snapshot(&server).await;
        let answer = send(&server, &mut clients, &grpcurl, call).await;
        let after = snapshot(&server).await;
        if let Err(why) = check(expect, &answer).and_then(|()| changes(&before, &after)) {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_unchanged(&start, &snapshot(&server).await, "the whole battery");

    // Still serving: a valid token verifies, and admin calls work.
    assert_eq!(
        verify_code(&server, &fixture.token).await,
        VerifyCode::IpNotAllowed,
        "svc's allow-list applies and no address was given"
    );
    let answer = server
        .verifier()
        .await
        .verify(proto::VerifyRequest {
            token: fixture.token.clone(),
            client_ip: "10.1.2.3".into(),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner();
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(
        verify_code(&server, &server.admin_token).await,
        VerifyCode::Valid
    );
    server
        .admin()
        .await
        .get_identity(authed(
            &server.admin_token,
            proto::GetIdentityRequest {
                identity_id: fixture.identity_id.clone(),
            },
        ))
        .await
        .expect("admin calls still work");
    server.stop().await;
}
