use std::process::ExitCode;

use clap::Parser;

use runstate_gateway::{
    config::{Cli, Command, Refusal},
    healthcheck, startup, telemetry,
};

/// mimalloc: malloc and free were a fifth of the instructions of a call
/// under glibc's allocator; with mimalloc a call takes 16% fewer
/// (bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a configuration the gateway refuses (clap's for a bad flag).
const REFUSED: u8 = 2;

/// A failure prints one line, `error: ...` with its causes, and never a
/// backtrace: a refused configuration exits 2, any other failure 1.
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.check_features() {
        e.exit();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("error: {line}");
            if e.is::<Refusal>() {
                ExitCode::from(REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = startup::runtime()?;
    match cli.command {
        Some(Command::Healthcheck(args)) => {
            let code = runtime.block_on(healthcheck::run(&args));
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Some(Command::Emulator(args)) => {
            // Flushes the log queue when dropped.
            let _logs = telemetry::init(args.log_format, telemetry::DEFAULT_BUFFER_LINES)?;
            runtime.block_on(startup::run_emulator(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => serve(&runtime, args),
        None => serve(&runtime, cli.serve),
    }
}

fn serve(
    runtime: &tokio::runtime::Runtime,
    args: runstate_gateway::config::ServeArgs,
) -> anyhow::Result<ExitCode> {
    let _logs = telemetry::init(args.logs.log_format, args.logs.log_buffer_lines)?;
    runtime.block_on(async {
        let app = startup::Application::build(&args).await?;
        app.run_until(startup::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
