//! The `keyrack` binary: parse the command line and hand over to the library.

use clap::Parser;
use std::process::ExitCode;

// Verify allocates small buffers on every call from several threads;
// mimalloc measured faster than the system allocator there (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = keyrack::config::Cli::parse();
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
    let outcome = runtime.block_on(keyrack::app::run(cli));
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
