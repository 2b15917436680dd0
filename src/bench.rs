//! `keyrack bench`: a load generator for Verify, measured against
//! `grpc.health.v1.Health/Check` on the same server in the same run, so the
//! figures are ratios that survive a noisy shared machine.
//!
//! Modes:
//! - `hot`: cached tokens (the steady state).
//! - `cold`: fresh tokens, each verified once (argon2 on every call).
//! - `mixed`: hot load while a cold storm runs.
//! - `flood`: hot load while wrong secrets flood one key id.
//! - `fill`: verifies N fresh tokens once each, to measure the server's memory
//!   with a full verified-token cache.
//! - `writes`: CreateKey, then RevokeKey of every key created, each stream on
//!   an identity of its own: the cost of a change, and of its durability wait
//!   under `--durability`.
//!
//! A module of the `keyrack` binary (`src/main.rs`), not of the library: the
//! server library carries no load generator and no hdrhistogram, and this
//! module reaches the server only through the library's public API.

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use keyrack::domain::token::{self, TokenPrefix};
use keyrack::proto::admin_service_client::AdminServiceClient;
use keyrack::proto::verify_service_client::VerifyServiceClient;
use keyrack::proto::{self, VerifyCode};
use keyrack::server;
use keyrack::service::keyring::Keyring;
use keyrack::service::{Authority, AuthorityOptions};
use keyrack::store::memory::MemoryStore;
use keyrack::store::redis::{self as store_redis, Keyspace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Which load to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Every mode but fill, in turn.
    All,
    /// Cached tokens.
    Hot,
    /// Fresh tokens, each verified once.
    Cold,
    /// Hot load during a cold storm.
    Mixed,
    /// Hot load during a wrong-secret flood.
    Flood,
    /// Fill the verified-token cache with --fill-tokens tokens.
    Fill,
    /// CreateKey for --duration, then RevokeKey of the keys created.
    Writes,
}

/// Flags of `keyrack bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Address of a running keyrack; without it an embedded dev-mode server
    /// is started in this process.
    #[arg(long, env = "KEYRACK_BENCH_TARGET")]
    pub target: Option<String>,
    /// Admin token for setting up keys on --target.
    #[arg(long, env = "KEYRACK_BENCH_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Which load to run.
    #[arg(long, env = "KEYRACK_BENCH_MODE", value_enum, default_value = "all")]
    pub mode: BenchMode,
    /// Concurrent request streams.
    #[arg(long, env = "KEYRACK_BENCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, env = "KEYRACK_BENCH_CONNECTIONS", default_value_t = 4)]
    pub connections: usize,
    /// How long each measured phase runs.
    #[arg(long, env = "KEYRACK_BENCH_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Distinct cached tokens the hot load cycles through.
    #[arg(long, env = "KEYRACK_BENCH_HOT_KEYS", default_value_t = 64)]
    pub hot_keys: usize,
    /// Fresh tokens minted for the cold phases.
    #[arg(long, env = "KEYRACK_BENCH_COLD_KEYS", default_value_t = 2000)]
    pub cold_keys: usize,
    /// Tokens verified by `fill`.
    #[arg(long, env = "KEYRACK_BENCH_FILL_TOKENS", default_value_t = 100_000)]
    pub fill_tokens: usize,
    /// With `fill`: a server process whose resident memory to report.
    #[arg(long, env = "KEYRACK_BENCH_SERVER_PID")]
    pub server_pid: Option<u32>,
    /// The Redis that --target serves from: the c=1 phase then also times
    /// the very MGET Verify makes, from a bare client, as the floor that
    /// Verify's latency cannot go below.
    #[arg(long, env = "KEYRACK_BENCH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The --redis-prefix --target was started with.
    #[arg(long, env = "KEYRACK_BENCH_REDIS_PREFIX", default_value = "keyrack:")]
    pub redis_prefix: String,
}

/// Latency and throughput of one measured phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// What was measured.
    pub name: String,
    /// Concurrent streams.
    pub concurrency: usize,
    /// Completed requests.
    pub requests: u64,
    /// Requests that failed (gRPC errors, or a wrong verdict).
    pub errors: u64,
    /// Completed requests per second.
    pub rps: f64,
    /// Latency percentiles and extremes, in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl PhaseResult {
    fn print(&self) {
        println!(
            "{:<24} c={:<4} requests={:<8} errors={:<6} rps={:<10.0} p50={:>6}us p90={:>6}us p99={:>6}us max={:>7}us mean={:>8.1}us",
            self.name,
            self.concurrency,
            self.requests,
            self.errors,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.mean_us
        );
    }
}

/// Latencies and failures of one stream or phase.
struct Recorder {
    latency_us: Histogram<u64>,
    errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // One microsecond to a minute, three significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
        }
    }
}

impl Recorder {
    fn record(&mut self, began: Instant, ok: bool) {
        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Saturates at the upper bound instead of dropping an outlier.
        self.latency_us.saturating_record(micros.max(1));
        self.errors += u64::from(!ok);
    }

    fn merge(&mut self, other: &Recorder) {
        let _ = self.latency_us.add(&other.latency_us);
        self.errors += other.errors;
    }

    fn result(&self, name: &str, concurrency: usize, elapsed_secs: f64) -> PhaseResult {
        let all = &self.latency_us;
        PhaseResult {
            name: name.to_owned(),
            concurrency,
            requests: all.len(),
            errors: self.errors,
            rps: all.len() as f64 / elapsed_secs,
            p50_us: all.value_at_quantile(0.5),
            p90_us: all.value_at_quantile(0.9),
            p99_us: all.value_at_quantile(0.99),
            max_us: all.max(),
            mean_us: all.mean(),
        }
    }
}

/// One request kind a worker can repeat.
#[derive(Clone)]
enum Load {
    Health,
    Verify {
        tokens: Arc<Vec<String>>,
        expect_valid: bool,
    },
    /// Each token once, shared by all workers.
    VerifyOnce {
        tokens: Arc<Vec<String>>,
        next: Arc<AtomicUsize>,
    },
    /// CreateKey on the stream's own identity (keys of one identity share
    /// its record, and concurrent changes to it would race); the ids go to
    /// `created`.
    CreateKeys {
        identities: Arc<Vec<String>>,
        created: Arc<std::sync::Mutex<Vec<String>>>,
    },
    /// RevokeKey of each key once, shared by all workers.
    RevokeKeys {
        keys: Arc<Vec<String>>,
        next: Arc<AtomicUsize>,
    },
    /// Verify's own Redis read (key and identity records) from a bare client.
    StoreRead {
        connection: redis::aio::MultiplexedConnection,
        records: Arc<Vec<[String; 2]>>,
    },
}

struct Target {
    channels: Vec<Channel>,
    admin_token: String,
}

async fn connect(address: &str, connections: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Mints `count` keys on one new identity; returns their tokens.
async fn mint_tokens(target: &Target, label: &str, count: usize) -> Result<Vec<String>, String> {
    let mut admin = AdminServiceClient::new(target.channels[0].clone());
    let name = format!("bench_{label}_{}", std::process::id() % 100_000);
    let created = admin
        .create_identity(authed(
            &target.admin_token,
            proto::CreateIdentityRequest {
                name,
                ..Default::default()
            },
        ))
        .await
        .map_err(|e| format!("cannot create the bench identity: {}", e.message()))?
        .into_inner();
    let identity = created.identity.map(|i| i.id).unwrap_or_default();
    let mut tokens = vec![created.token];
    // A few creators at once: minting is argon2-bound on the server.
    let next = Arc::new(AtomicUsize::new(1));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let mut admin =
            AdminServiceClient::new(target.channels[worker % target.channels.len()].clone());
        let admin_token = target.admin_token.clone();
        let identity = identity.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut minted = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, String>(minted);
                }
                let request = proto::CreateKeyRequest {
                    identity_id: identity.clone(),
                    name: format!("k{index}"),
                    ..Default::default()
                };
                // Creators on one identity race on its record; ABORTED says
                // the server gave up retrying, and the call may be retried.
                let mut attempts = 0;
                let key = loop {
                    attempts += 1;
                    match admin
                        .create_key(authed(&admin_token, request.clone()))
                        .await
                    {
                        Err(e) if e.code() == tonic::Code::Aborted && attempts < 5 => continue,
                        created => {
                            break created.map_err(|e| {
                                format!("cannot create a bench key: {}", e.message())
                            })?;
                        }
                    }
                };
                minted.push(key.into_inner().token);
            }
        }));
    }
    for task in tasks {
        tokens.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(tokens)
}

/// Runs `load` on `concurrency` streams for `duration` (or until a
/// VerifyOnce load runs out) and measures it.
async fn run_phase(
    target: &Target,
    name: &str,
    load: Load,
    concurrency: usize,
    duration: Duration,
) -> PhaseResult {
    let (latency, elapsed) = measure(target, load, concurrency, duration).await;
    latency.result(name, concurrency, elapsed)
}

/// The latencies of `load` on `concurrency` streams, and the seconds it ran.
async fn measure(
    target: &Target,
    load: Load,
    concurrency: usize,
    duration: Duration,
) -> (Recorder, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let channel = target.channels[worker % target.channels.len()].clone();
        let load = load.clone();
        let stop = Arc::clone(&stop);
        let admin_token = target.admin_token.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = Recorder::default();
            let mut admin = AdminServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel.clone());
            let mut verifier = VerifyServiceClient::new(channel);
            let mut index = worker;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let ok = match &load {
                    Load::Health => health.check(HealthCheckRequest { service: String::new() }).await.is_ok(),
                    Load::Verify { tokens, expect_valid } => {
                        index = (index + 1) % tokens.len();
                        let request = proto::VerifyRequest { token: tokens[index].clone(), ..Default::default() };
                        match verifier.verify(request).await {
                            Ok(answer) => (answer.into_inner().code() == VerifyCode::Valid) == *expect_valid,
                            // A throttled flood request is the server doing its job.
                            Err(status) => !*expect_valid && status.code() == tonic::Code::ResourceExhausted,
                        }
                    }
                    Load::VerifyOnce { tokens, next } => {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(token) = tokens.get(index) else { break };
                        let request = proto::VerifyRequest { token: token.clone(), ..Default::default() };
                        matches!(verifier.verify(request).await, Ok(answer) if answer.get_ref().code() == VerifyCode::Valid)
                    }
                    Load::CreateKeys { identities, created } => {
                        index += identities.len();
                        let request = proto::CreateKeyRequest {
                            identity_id: identities[worker % identities.len()].clone(),
                            name: format!("w{index}"),
                            ..Default::default()
                        };
                        match admin.create_key(authed(&admin_token, request)).await {
                            Ok(answer) => {
                                let id = answer.into_inner().key.map(|key| key.id).unwrap_or_default();
                                if let Ok(mut created) = created.lock() {
                                    created.push(id);
                                }
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Load::RevokeKeys { keys, next } => {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(key_id) = keys.get(index) else { break };
                        let request = proto::RevokeKeyRequest { key_id: key_id.clone() };
                        admin.revoke_key(authed(&admin_token, request)).await.is_ok()
                    }
                    Load::StoreRead { connection, records } => {
                        index = (index + 1) % records.len();
                        let read: redis::RedisResult<[Option<Vec<u8>>; 2]> =
                            redis::AsyncCommands::mget(&mut connection.clone(), &records[index]).await;
                        matches!(read, Ok([Some(_), Some(_)]))
                    }
                };
                latency.record(began, ok);
            }
            latency
        }));
    }
    // A VerifyOnce load may run out before the deadline.
    let deadline = started + duration;
    while Instant::now() < deadline && !workers.iter().all(|worker| worker.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Recorder::default();
    for worker in workers {
        if let Ok(latency) = worker.await {
            all.merge(&latency);
        }
    }
    (all, elapsed)
}

/// Single-stream latency of each of `loads`, `duration` apiece, taken in
/// turns of a fraction of a second: a shared machine's speed drifts within
/// a run, and turns let the drift fall on every load alike while each is
/// still measured as a steady stream of its own.
async fn run_single_streams(
    target: &Target,
    loads: &[(&str, Load)],
    duration: Duration,
) -> Vec<PhaseResult> {
    const TURN: Duration = Duration::from_millis(250);
    let mut measured: Vec<(Recorder, f64)> =
        loads.iter().map(|_| (Recorder::default(), 0.0)).collect();
    let mut remaining = duration;
    while !remaining.is_zero() {
        let turn = remaining.min(TURN);
        for ((_, load), (latency, elapsed)) in loads.iter().zip(measured.iter_mut()) {
            let (turn_latency, turn_elapsed) = measure(target, load.clone(), 1, turn).await;
            latency.merge(&turn_latency);
            *elapsed += turn_elapsed;
        }
        remaining -= turn;
    }
    loads
        .iter()
        .zip(measured)
        .map(|((name, _), (latency, elapsed))| latency.result(name, 1, elapsed))
        .collect()
}

/// With --redis-url: Verify's own MGET of each hot token's records, on a
/// connection set up as keyrack sets up its own.
async fn store_read(args: &BenchArgs, tokens: &[String]) -> Result<Option<Load>, String> {
    let Some(url) = &args.redis_url else {
        return Ok(None);
    };
    let keyspace = Keyspace::new(args.redis_prefix.clone());
    let mut records = Vec::with_capacity(tokens.len());
    for token in tokens {
        let prefix = token.split('_').next().unwrap_or_default();
        let parsed = TokenPrefix::parse(prefix)
            .ok()
            .and_then(|prefix| token::parse(&prefix, token).ok())
            .ok_or("--target minted a token this bench cannot parse")?;
        records.push(keyspace.verify_records(&parsed.key_id));
    }
    let mut connection = store_redis::client(url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to --redis-url: {e}"))?;
    let first: [Option<Vec<u8>>; 2] = redis::AsyncCommands::mget(&mut connection, &records[0])
        .await
        .map_err(|e| format!("cannot read from --redis-url: {e}"))?;
    if first.iter().any(Option::is_none) {
        return Err(format!(
            "--redis-url holds no records of --target under --redis-prefix {:?}",
            args.redis_prefix
        ));
    }
    Ok(Some(Load::StoreRead {
        connection,
        records: Arc::new(records),
    }))
}

fn ratio(label: &str, numerator: f64, denominator: f64) {
    if denominator > 0.0 {
        println!("{label:<48} {:.2}", numerator / denominator);
    }
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the hot load beside `side` (on a quarter of the streams) and prints
/// hot throughput against a hot-alone baseline measured right before, so that
/// the drift of a shared machine over a run does not pass for an effect.
async fn hot_beside(target: &Target, args: &BenchArgs, hot: &Load, side_name: &str, side: Load) {
    let baseline = run_phase(
        target,
        "Verify hot (baseline)",
        hot.clone(),
        args.concurrency,
        args.duration,
    )
    .await;
    baseline.print();
    let side_streams = (args.concurrency / 4).max(1);
    let (hot_name, side_label) = (
        format!("Verify hot ({side_name})"),
        format!("  {side_name}"),
    );
    let (hot_during, side_during) = tokio::join!(
        run_phase(
            target,
            &hot_name,
            hot.clone(),
            args.concurrency,
            args.duration
        ),
        run_phase(target, &side_label, side, side_streams, args.duration),
    );
    hot_during.print();
    side_during.print();
    ratio(
        &format!("hot rps during a {side_name} / hot alone"),
        hot_during.rps,
        baseline.rps,
    );
}

/// `writes`: CreateKey on every stream for --duration, then RevokeKey of
/// every key created, at the same concurrency.
async fn writes(target: &Target, args: &BenchArgs) -> Result<(), String> {
    let mut admin = AdminServiceClient::new(target.channels[0].clone());
    let mut identities = Vec::with_capacity(args.concurrency);
    for stream in 0..args.concurrency.max(1) {
        let created = admin
            .create_identity(authed(
                &target.admin_token,
                proto::CreateIdentityRequest {
                    name: format!("bench_writes_{}_{stream}", std::process::id() % 100_000),
                    ..Default::default()
                },
            ))
            .await
            .map_err(|e| format!("cannot create a bench identity: {}", e.message()))?
            .into_inner();
        identities.push(created.identity.map(|i| i.id).unwrap_or_default());
    }
    let created = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = Load::CreateKeys {
        identities: Arc::new(identities),
        created: Arc::clone(&created),
    };
    run_phase(target, "CreateKey", load, args.concurrency, args.duration)
        .await
        .print();
    let keys = std::mem::take(&mut *created.lock().map_err(|e| e.to_string())?);
    let load = Load::RevokeKeys {
        keys: Arc::new(keys),
        next: Arc::new(AtomicUsize::new(0)),
    };
    run_phase(target, "RevokeKey", load, args.concurrency, args.duration)
        .await
        .print();
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let (address, admin_token, embedded) = match &args.target {
        Some(address) => {
            let token = args
                .admin_token
                .clone()
                .ok_or("--admin-token is required with --target")?;
            (address.clone(), token, None)
        }
        None => {
            let authority = Arc::new(Authority::new(
                Arc::new(MemoryStore::new()),
                Keyring::random(),
                AuthorityOptions::default(),
            ));
            let (_, minted) = authority
                .create_admin("bench_admin", "keyrack bench")
                .await
                .map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let address = listener
                .local_addr()
                .map_err(|e| e.to_string())?
                .to_string();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server::serve(
                listener,
                authority,
                keyrack::app::default_server_options(),
                async {
                    let _ = stopped.await;
                },
            ));
            (
                address,
                minted.token.expose().to_owned(),
                Some((stop, task)),
            )
        }
    };
    let target = Target {
        channels: connect(&address, args.connections).await?,
        admin_token,
    };
    println!(
        "keyrack bench: target {address}{} mode {:?}, {} streams over {} connections, {:?} per phase",
        if embedded.is_some() {
            " (embedded, memory store)"
        } else {
            ""
        },
        args.mode,
        args.concurrency,
        args.connections,
        args.duration
    );

    let want = |mode: BenchMode| {
        args.mode == mode
            || (args.mode == BenchMode::All && !matches!(mode, BenchMode::Fill | BenchMode::Writes))
    };
    if args.mode == BenchMode::Writes {
        writes(&target, &args).await?;
    } else if args.mode == BenchMode::Fill {
        let tokens = Arc::new(mint_tokens(&target, "fill", args.fill_tokens).await?);
        let load = Load::VerifyOnce {
            tokens: Arc::clone(&tokens),
            next: Arc::new(AtomicUsize::new(0)),
        };
        run_phase(
            &target,
            "fill (each token once)",
            load,
            args.concurrency,
            Duration::from_secs(24 * 3600),
        )
        .await
        .print();
        if let Some(pid) = args.server_pid {
            match resident_kib(pid) {
                Some(kib) => println!(
                    "server resident memory with {} verified tokens: {:.1} MiB",
                    tokens.len(),
                    kib as f64 / 1024.0
                ),
                None => println!("cannot read the resident memory of process {pid}"),
            }
        }
    } else {
        let hot_tokens = Arc::new(mint_tokens(&target, "hot", args.hot_keys.max(1)).await?);
        let hot = Load::Verify {
            tokens: Arc::clone(&hot_tokens),
            expect_valid: true,
        };
        // Warm the cache: every hot token once.
        run_phase(
            &target,
            "warm-up",
            hot.clone(),
            1,
            Duration::from_millis(500),
        )
        .await;
        let health = run_phase(
            &target,
            "health Check",
            Load::Health,
            args.concurrency,
            args.duration,
        )
        .await;
        health.print();
        let hot_alone = run_phase(
            &target,
            "Verify hot",
            hot.clone(),
            args.concurrency,
            args.duration,
        )
        .await;
        if want(BenchMode::Hot) {
            hot_alone.print();
            ratio(
                "hot Verify rps / health Check rps",
                hot_alone.rps,
                health.rps,
            );
            let mut loads = vec![("health Check", Load::Health), ("Verify hot", hot.clone())];
            if let Some(bare_read) = store_read(&args, &hot_tokens).await? {
                loads.push(("Redis MGET, bare client", bare_read));
            }
            let single = run_single_streams(&target, &loads, args.duration).await;
            for phase in &single {
                phase.print();
            }
            let (health_one, hot_one) = (&single[0], &single[1]);
            ratio(
                "c=1 mean latency: hot Verify / health Check",
                hot_one.mean_us,
                health_one.mean_us,
            );
            if let Some(read_one) = single.get(2) {
                ratio(
                    "c=1 floor: (health + bare MGET) / health",
                    health_one.mean_us + read_one.mean_us,
                    health_one.mean_us,
                );
            }
        }
        if want(BenchMode::Cold) || want(BenchMode::Mixed) {
            let cold_tokens = Arc::new(mint_tokens(&target, "cold", args.cold_keys.max(1)).await?);
            let split = cold_tokens.len() / 2;
            if want(BenchMode::Cold) {
                let first = Arc::new(cold_tokens[..split.max(1)].to_vec());
                let load = Load::VerifyOnce {
                    tokens: first,
                    next: Arc::new(AtomicUsize::new(0)),
                };
                run_phase(
                    &target,
                    "Verify cold",
                    load,
                    args.concurrency,
                    args.duration,
                )
                .await
                .print();
            }
            if want(BenchMode::Mixed) {
                let rest = Arc::new(cold_tokens[split..].to_vec());
                let storm = Load::VerifyOnce {
                    tokens: rest,
                    next: Arc::new(AtomicUsize::new(0)),
                };
                hot_beside(&target, &args, &hot, "cold storm", storm).await;
            }
        }
        if want(BenchMode::Flood) {
            let wrong: Vec<String> = hot_tokens
                .iter()
                .take(1)
                .flat_map(|token| {
                    let key_id = token.split('_').nth(1).unwrap_or_default().to_owned();
                    (0..10_000).filter_map(move |_| {
                        let key = keyrack::domain::KeyId::parse(&key_id).ok()?;
                        Some(
                            keyrack::domain::token::mint(&Default::default(), &key)
                                .token
                                .expose()
                                .to_owned(),
                        )
                    })
                })
                .collect();
            let flood = Load::Verify {
                tokens: Arc::new(wrong),
                expect_valid: false,
            };
            hot_beside(&target, &args, &hot, "wrong-secret flood", flood).await;
        }
    }
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(())
}
