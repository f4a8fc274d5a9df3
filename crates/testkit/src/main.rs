//! `clusteraudit-dev`: the test kit by hand. A local control plane, a stand-in kubelet for static
//! pods, and the whole project on one machine (`clusteraudit-dev demo`). Never shipped.

use std::process::ExitCode;

use clap::Parser;

/// Development helpers for clusteraudit: a local control plane, a stand-in kubelet, the demo.
#[derive(Parser)]
#[command(name = "clusteraudit-dev", version, about)]
struct Cli {
    #[command(subcommand)]
    command: clusteraudit_testkit::cli::DevCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress; the client's retries while a kube-apiserver restarts are
    // expected there and only noise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match clusteraudit_testkit::cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
