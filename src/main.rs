use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kubernetes cluster auditing as one declarative object.
#[derive(Parser)]
#[command(name = "clusteraudit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ClusterAudit CustomResourceDefinition as YAML.
    Crd,
    /// The audit webhook, the embedded store and the search API.
    Collector(clusteraudit::collector::CollectorArgs),
    /// Render, check and preview audit policies.
    #[command(subcommand)]
    Policy(clusteraudit::cli::policy::PolicyCommand),
    /// Development helpers: a local control plane and a stand-in kubelet for static pods.
    #[command(subcommand, hide = true)]
    Dev(clusteraudit::testkit::cli::DevCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Crd => {
            print!("{}", clusteraudit::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Collector(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("error: starting the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(clusteraudit::collector::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy(command) => match clusteraudit::cli::policy::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Dev(dev) => match clusteraudit::testkit::cli::run(dev) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
    }
}
