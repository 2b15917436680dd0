//! The `keyrack` binary: parse the command line and hand over to the library,
//! or run `keyrack bench`, the load generator, which is part of this binary
//! and not of the library.

mod bench;

use clap::{Args, CommandFactory, FromArgMatches};
use std::process::ExitCode;

// Verify allocates small buffers on every call from several threads;
// mimalloc measured faster than the system allocator there (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The name of the subcommand this binary adds to the library's.
const BENCH: &str = "bench";

fn main() -> ExitCode {
    // The library's command line plus `bench`: one `--help` lists them all.
    let matches = keyrack::config::Cli::command()
        .subcommand(
            bench::BenchArgs::augment_args(clap::Command::new(BENCH))
                .about("Measure Verify against health checks on the same server"),
        )
        .get_matches();
    let cli = keyrack::config::Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let bench = match matches.subcommand() {
        Some((BENCH, bench_matches)) => Some(
            bench::BenchArgs::from_arg_matches(bench_matches).unwrap_or_else(|error| error.exit()),
        ),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keyrack: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter binds to the runtime it starts in.
    let telemetry = {
        let _entered = runtime.enter();
        keyrack::telemetry::init(cli.log_format)
    };
    let telemetry = match telemetry {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("keyrack: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match bench {
        Some(args) => runtime.block_on(bench::run(args)),
        None => runtime
            .block_on(keyrack::app::run(cli))
            .map_err(|error| error.to_string()),
    };
    // Flushes buffered spans while the runtime still drives the exporter.
    drop(telemetry);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keyrack: {error}");
            ExitCode::FAILURE
        }
    }
}
