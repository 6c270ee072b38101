//! The `reportd` binary: parse the command line, load the config, run the command.

use std::process::ExitCode;

use clap::Parser;
use reportd::cli::{run_tool, Cli, Command};
use reportd::config::Settings;
use reportd::startup::{shutdown_signal, Application};

/// mimalloc instead of glibc's malloc: the job path allocates and frees many small,
/// short-lived buffers (SDK requests, messages, rows), and glibc's allocator was about
/// a tenth of reportd's CPU on the drain bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("reportd: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    reportd::telemetry::init(&settings.log);
    let result = actix::System::new().block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            other => run_tool(other, settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A report type's query that does not prepare is a configuration error.
        Err(e) if is_config_error(&e) => {
            eprintln!("reportd: bad configuration: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("reportd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A report type whose query does not prepare: from `config check` directly, from
/// `serve` inside a `StartupError` (transparent, so not in the source chain).
fn is_config_error(error: &anyhow::Error) -> bool {
    use reportd::startup::StartupError;
    error
        .chain()
        .any(|cause| cause.is::<reportd::report::ReportTypeError>())
        || matches!(
            error.downcast_ref::<StartupError>(),
            Some(StartupError::ReportType(_))
        )
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    let shutdown = async {
        shutdown_signal().await;
        // A second signal means "now": skip the grace period.
        actix::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting at once, without waiting for running jobs");
            std::process::exit(130);
        });
    };
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
