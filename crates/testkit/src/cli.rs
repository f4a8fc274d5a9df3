//! `clusteraudit-dev ...`: the test control plane and kubelet by hand.

use std::{path::PathBuf, time::Duration};

use clap::Subcommand;

use super::{ControlPlane, ControlPlaneOptions, Kubelet, KubeletEvent, KubeletOptions, Result};

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// The whole project on this machine: control plane, collector, operator, agent, the example
    /// ClusterAudit rolled out, a few people acting; then where to look. Ctrl-C stops it.
    Demo(super::demo::DemoArgs),
    /// Start etcd and a kube-apiserver on loopback (or N static-pod nodes) until Ctrl-C.
    ControlPlane {
        /// Control-plane nodes run by the stand-in kubelet instead of one plain kube-apiserver.
        #[arg(long, default_value_t = 0)]
        nodes: usize,
    },
    /// Start a single-node OpenSearch on loopback (as the tests do) until Ctrl-C.
    Opensearch,
    /// Run the static pods of a manifest directory, as the kubelet would, until Ctrl-C.
    Kubelet {
        #[arg(long, default_value = "node-1")]
        node: String,
        /// The manifest directory (the kubelet's staticPodPath).
        #[arg(long)]
        manifests: PathBuf,
        /// Where bare command names are looked up.
        #[arg(long = "bin-dir")]
        bin_dirs: Vec<PathBuf>,
        #[arg(long, default_value = "/tmp/clusteraudit-kubelet-logs")]
        log_dir: PathBuf,
    },
}

pub fn run(command: DevCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().map_err(|source| super::TestkitError::Spawn {
        name: "the async runtime".into(),
        source,
    })?;
    runtime.block_on(async move {
        match command {
            DevCommand::Demo(args) => super::demo::run(args).await,
            DevCommand::ControlPlane { nodes } => {
                let mut control_plane = ControlPlane::start_with(ControlPlaneOptions {
                    direct_apiserver: nodes == 0,
                    ..Default::default()
                })
                .await?;
                for i in 1..=nodes {
                    control_plane.add_static_pod_node(&format!("node-{i}"), |_| {})?;
                }
                for node in control_plane.nodes() {
                    node.wait_ready(Duration::from_secs(180)).await;
                }
                println!(
                    "export KUBECONFIG={}",
                    control_plane.kubeconfig_path().display()
                );
                println!("# Ctrl-C stops everything");
                let _ = tokio::signal::ctrl_c().await;
                Ok(())
            }
            DevCommand::Opensearch => {
                let opensearch = super::OpenSearch::start().await?;
                println!("{}", opensearch.url);
                println!("# Ctrl-C stops it");
                let _ = tokio::signal::ctrl_c().await;
                drop(opensearch);
                Ok(())
            }
            DevCommand::Kubelet {
                node,
                manifests,
                bin_dirs,
                log_dir,
            } => {
                let kubelet =
                    Kubelet::start(KubeletOptions::new(&node, &manifests, &log_dir, bin_dirs))?;
                let mut seen = 0;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            let events = kubelet.events();
                            for event in &events[seen..] {
                                print_event(event);
                            }
                            seen = events.len();
                        }
                    }
                }
                Ok(())
            }
        }
    })
}

fn print_event(event: &KubeletEvent) {
    match event {
        KubeletEvent::ManifestInvalid { file, reason, .. } => {
            println!("manifest {file} invalid: {reason}")
        }
        KubeletEvent::ContainerStarted { pod, pid, .. } => println!("{pod}: started pid {pid}"),
        KubeletEvent::ContainerFailedToStart { pod, reason, .. } => {
            println!("{pod}: failed to start: {reason}")
        }
        KubeletEvent::ContainerExited {
            pod, pid, status, ..
        } => println!("{pod}: pid {pid} exited ({status})"),
        KubeletEvent::ContainerStopped {
            pod, pid, reason, ..
        } => println!("{pod}: stopped pid {pid} ({reason})"),
        KubeletEvent::Ready { pod, pid, .. } => println!("{pod}: ready (pid {pid})"),
        KubeletEvent::NotReady { pod, pid, .. } => println!("{pod}: not ready (pid {pid})"),
        KubeletEvent::BackOff { pod, delay, .. } => println!("{pod}: back-off {delay:?}"),
    }
}
