use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Webhook URL, e.g. https://127.0.0.1:8443/v1/webhook. Repeat it for several collector
    /// replicas: batches go round-robin, and one that meets a transport error goes to the next.
    #[arg(long, required = true)]
    pub target: Vec<String>,
    /// Number of events to send
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per EventList (the kube-apiserver's --audit-webhook-batch-max-size defaults to 400)
    #[arg(long, default_value_t = 400)]
    pub batch: usize,
    /// Batches in flight at once
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Bearer token for the webhook (or read from --token-file, which wins when both are given)
    #[arg(long, env = "CLUSTERAUDIT_WEBHOOK_TOKEN")]
    pub token: Option<String>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for https targets (otherwise the system roots are not available either: require it for https unless --insecure-skip-verify)
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// Stop after this long even if not all events are sent (e.g. 5m); bounded runs only
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Pace to at most this many events per second (0 = as fast as acks allow)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed for the event generator, so runs are reproducible
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append the auditID of every event whose batch got 200 to this file, one per line (used by crash tests to know exactly what was acknowledged)
    #[arg(long)]
    pub acked_ids_file: Option<PathBuf>,
    /// Print the report as one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub freshness: crate::FreshnessArgs,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn arguments_parse_with_their_defaults() {
        use clap::{CommandFactory, Parser};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["loadgen", "--target", "https://127.0.0.1:8443/v1/webhook"])
            .unwrap();
        let a = cli.args;
        assert_eq!(
            (a.events, a.batch, a.concurrency, a.rate, a.seed),
            (100_000, 400, 4, 0, 1)
        );
        assert!(a.duration.is_none() && !a.json && !a.insecure_skip_verify);
        assert_eq!(a.target, ["https://127.0.0.1:8443/v1/webhook"]);
        let cli = Cli::try_parse_from([
            "loadgen",
            "--target=http://collector:8080/v1/webhook",
            "--events=5000",
            "--duration=5m",
            "--rate=2000",
            "--acked-ids-file=/tmp/acked",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.events, 5_000);
        assert_eq!(*cli.args.duration.unwrap(), Duration::from_secs(300));
        assert_eq!(cli.args.acked_ids_file, Some(PathBuf::from("/tmp/acked")));
        assert!(cli.args.json);
        assert_eq!(cli.args.freshness, crate::FreshnessArgs::default());
        assert!(!cli.args.freshness.enabled);
        let cli = Cli::try_parse_from([
            "loadgen",
            "--target=http://collector:8080/v1/webhook",
            "--freshness",
            "--freshness-interval=100ms",
            "--freshness-wait=10s",
            "--search-token-file=/run/reader-token",
        ])
        .unwrap();
        let f = cli.args.freshness;
        assert!(f.enabled);
        assert_eq!(*f.interval, Duration::from_millis(100));
        assert_eq!(*f.wait, Duration::from_secs(10));
        assert_eq!(
            f.search_token_file,
            Some(PathBuf::from("/run/reader-token"))
        );
    }
}
