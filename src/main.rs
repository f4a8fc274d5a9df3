//! `clusteraudit`: the one shipped binary. Each role is a subcommand; the roles live in the
//! workspace's crates (`crates/`), and this file only parses the command line and starts one.

mod cli;

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
    /// Print a CustomResourceDefinition as YAML (crds/clusteraudit.yaml, crds/auditalert.yaml).
    Crd {
        #[arg(value_enum, default_value_t = CrdKind::Clusteraudit)]
        kind: CrdKind,
    },
    /// The audit webhook, the embedded store and the search API.
    Collector(clusteraudit_collector::CollectorArgs),
    /// Post realistic audit EventLists to a collector and report events/s and ack latency.
    Loadgen(clusteraudit_loadgen::LoadgenArgs),
    /// Reconcile the ClusterAudit: policy, sink, revisions, the guarded rollout, status.
    Operator(clusteraudit_operator::OperatorArgs),
    /// Apply the released revision to this control-plane node's kube-apiserver.
    Agent(clusteraudit_agent::AgentArgs),
    /// Search the stored audit events.
    Search(crate::cli::search::SearchArgs),
    /// Render, check and preview audit policies.
    #[command(subcommand)]
    Policy(crate::cli::policy::PolicyCommand),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Clusteraudit,
    Auditalert,
}

/// Runs a command's future to completion; its error goes to standard error, exit status 1.
fn block_on<E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // kubectl runs plugins by name: as `kubectl-audit` this binary is `kubectl audit`.
    let invoked_as_plugin = std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("kubectl-audit"))
        })
        .unwrap_or(false);
    let cli = if invoked_as_plugin {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command()
            .name("kubectl audit")
            .bin_name("kubectl audit")
            .get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(err) => err.exit(),
        }
    } else {
        Cli::parse()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Crd { kind } => {
            print!(
                "{}",
                match kind {
                    CrdKind::Clusteraudit => clusteraudit_core::api::crd_yaml(),
                    CrdKind::Auditalert => clusteraudit_core::api::alert::crd_yaml(),
                }
            );
            ExitCode::SUCCESS
        }
        Command::Collector(args) => block_on(clusteraudit_collector::run(args)),
        Command::Loadgen(args) => {
            let json = args.json;
            block_on(async move {
                let report = clusteraudit_loadgen::run(args).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&report).expect("a report serializes")
                    );
                } else {
                    println!("{report}");
                }
                Ok::<(), clusteraudit_loadgen::LoadgenError>(())
            })
        }
        Command::Operator(args) => block_on(clusteraudit_operator::run(args)),
        Command::Agent(args) => block_on(clusteraudit_agent::run(args)),
        Command::Search(args) => block_on(crate::cli::search::run(args)),
        Command::Policy(command) => match crate::cli::policy::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
    }
}
