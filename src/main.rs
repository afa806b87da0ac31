use clap::Parser;

use runstate_gateway::{
    config::{Cli, Command},
    healthcheck, startup, telemetry,
};

/// mimalloc: malloc and free were a fifth of the instructions of a call
/// under glibc's allocator; with mimalloc a call takes 16% fewer
/// (bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Err(e) = cli.check_features() {
        e.exit();
    }
    startup::runtime()?.block_on(async {
        match cli.command {
            Some(Command::Emulator(args)) => {
                telemetry::init(args.log_format)?;
                startup::run_emulator(&args).await
            }
            Some(Command::Healthcheck(args)) => std::process::exit(healthcheck::run(&args).await),
            Some(Command::Serve(args)) => serve(args).await,
            None => serve(cli.serve).await,
        }
    })
}

async fn serve(args: runstate_gateway::config::ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format)?;
    let app = startup::Application::build(&args).await?;
    app.run_until(startup::shutdown_signal()).await
}
