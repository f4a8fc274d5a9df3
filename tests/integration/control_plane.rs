//! The test control plane itself: the stand-in kubelet behaves as the kubelet does for static pods,
//! and tear-down leaves nothing behind.

use std::time::Duration;

use clusteraudit_testkit::{
    ControlPlane, KubeletEvent,
    manifest::{write_atomically, write_manifest_atomically},
    process::pid_alive,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};

const READY: Duration = Duration::from_secs(180);

fn starts_with_hash(events: &[KubeletEvent], hash: &str) -> usize {
    events
        .iter()
        .filter(
            |e| matches!(e, KubeletEvent::ContainerStarted { pod_hash, .. } if pod_hash == hash),
        )
        .count()
}

fn read_manifest(path: &std::path::Path) -> Pod {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn add_flag(pod: &mut Pod, flag: &str) {
    let container = &mut pod.spec.as_mut().unwrap().containers[0];
    container.command.as_mut().unwrap().push(flag.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn the_kubelet_restarts_a_static_pod_once_per_change_and_never_hides_a_failure() {
    let control_plane = crate::support::one_static_pod_node().await;
    let node = control_plane.node("node-1").unwrap();
    let kubelet = &node.kubelet;
    assert!(
        node.wait_ready(READY).await,
        "never ready: {:#?}",
        kubelet.events()
    );
    assert_eq!(kubelet.starts("kube-apiserver").len(), 1);

    // The kube-apiserver the kubelet runs serves the cluster.
    let client = control_plane.client().await.unwrap();
    let namespaces: kube::Api<Namespace> = kube::Api::all(client);
    namespaces
        .get("kube-system")
        .await
        .expect("the static-pod kube-apiserver answers");

    // A change that leaves the pod object as it was (same pod, other formatting) restarts nothing.
    let original = read_manifest(&node.manifest_path);
    let as_json = serde_json::to_vec_pretty(&original).unwrap();
    write_atomically(&node.manifest_path, &as_json).unwrap();
    assert!(kubelet.wait_syncs(5, Duration::from_secs(30)).await);
    assert_eq!(
        kubelet.starts("kube-apiserver").len(),
        1,
        "{:#?}",
        kubelet.events()
    );

    // An edit restarts the kube-apiserver exactly once, with the new flags.
    let first_pid = kubelet.pod_status("kube-apiserver").unwrap().pid.unwrap();
    let mut edited = original.clone();
    add_flag(&mut edited, "--audit-log-maxage=7");
    write_manifest_atomically(&node.manifest_path, &edited).unwrap();
    assert!(
        kubelet
            .wait_for(
                READY,
                |pod, _| pod.is_some_and(|p| p.ready && p.pid != Some(first_pid)),
                "kube-apiserver"
            )
            .await,
        "the edited manifest never became ready: {:#?}",
        kubelet.events()
    );
    assert!(kubelet.wait_syncs(5, Duration::from_secs(30)).await);
    let starts = kubelet.starts("kube-apiserver");
    assert_eq!(starts.len(), 2, "{starts:#?}");
    let KubeletEvent::ContainerStarted { argv, .. } = &starts[1] else {
        unreachable!()
    };
    assert!(argv.iter().any(|a| a == "--audit-log-maxage=7"), "{argv:?}");
    assert!(!pid_alive(first_pid), "the old kube-apiserver still runs");
    let stops: Vec<_> = kubelet
        .events()
        .into_iter()
        .filter(|e| matches!(e, KubeletEvent::ContainerStopped { reason, .. } if reason == "manifest changed"))
        .collect();
    assert_eq!(stops.len(), 1, "{stops:#?}");

    // A kube-apiserver that cannot start is restarted with back-off and reported not ready.
    let mut crashing = original.clone();
    add_flag(&mut crashing, "--no-such-flag=1");
    write_manifest_atomically(&node.manifest_path, &crashing).unwrap();
    let mut crashing_hash = String::new();
    assert!(
        kubelet
            .wait_for(
                READY,
                |pod, events| {
                    let Some(pod) = pod else { return false };
                    crashing_hash = pod.pod_hash.clone();
                    starts_with_hash(events, &pod.pod_hash) >= 3
                },
                "kube-apiserver"
            )
            .await,
        "the crashing kube-apiserver was not restarted: {:#?}",
        kubelet.events()
    );
    let status = kubelet.pod_status("kube-apiserver").unwrap();
    assert!(!status.ready);
    assert!(status.restarts >= 2, "{status:?}");
    assert!(
        status
            .last_failure
            .as_deref()
            .unwrap_or_default()
            .contains("exited"),
        "{status:?}"
    );
    let events = kubelet.events();
    assert!(
        !ready_while_running(&events, &crashing_hash),
        "a crashing kube-apiserver was reported ready: {events:#?}"
    );
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            KubeletEvent::BackOff { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert!(
        delays.windows(2).any(|w| w[1] > w[0]),
        "back-off never grew: {delays:?}"
    );

    // A flag naming a file outside every volume mount cannot work in a container: the pod fails
    // to start, again and again, and says why.
    let mut unmounted = original.clone();
    add_flag(
        &mut unmounted,
        "--audit-policy-file=/etc/kubernetes/audit/policy.yaml",
    );
    write_manifest_atomically(&node.manifest_path, &unmounted).unwrap();
    assert!(
        kubelet
            .wait_for(
                READY,
                |pod, events| {
                    pod.is_some_and(|p| p.pod_hash != crashing_hash)
                        && events
                            .iter()
                            .rev()
                            .take_while(|e| !matches!(e, KubeletEvent::ContainerStopped { .. }))
                            .filter(|e| matches!(e, KubeletEvent::ContainerFailedToStart { .. }))
                            .count()
                            >= 2
                },
                "kube-apiserver"
            )
            .await,
        "the unmounted path was not reported: {:#?}",
        kubelet.events()
    );
    let status = kubelet.pod_status("kube-apiserver").unwrap();
    assert!(!status.ready && status.pid.is_none(), "{status:?}");
    assert!(
        status
            .last_failure
            .as_deref()
            .unwrap_or_default()
            .contains("not inside any volume mount"),
        "{status:?}"
    );

    // Restoring the original manifest brings it back.
    write_manifest_atomically(&node.manifest_path, &original).unwrap();
    assert!(node.wait_ready(READY).await, "{:#?}", kubelet.events());
}

/// Whether a container of the pod version `hash` was ever reported ready.
fn ready_while_running(events: &[KubeletEvent], hash: &str) -> bool {
    let mut current = None;
    for event in events {
        match event {
            KubeletEvent::ContainerStarted { pod_hash, .. } => current = Some(pod_hash.as_str()),
            KubeletEvent::Ready { .. } if current == Some(hash) => return true,
            _ => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn tear_down_leaves_no_process_or_port_behind() {
    let mut control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    control_plane
        .add_static_pod_node("node-1", |_| {})
        .expect("a node starts");
    let node = control_plane.node("node-1").unwrap();
    assert!(node.wait_ready(READY).await, "{:#?}", node.kubelet.events());
    let node_port = node.port;
    let endpoint = control_plane.endpoint().unwrap();
    let pids = control_plane.pids();
    assert_eq!(
        pids.len(),
        3,
        "etcd, the kube-apiserver and the node's: {pids:?}"
    );
    assert!(pids.iter().all(|pid| pid_alive(*pid)));
    let dir = control_plane.dir().to_path_buf();

    drop(control_plane);

    for pid in &pids {
        assert!(!pid_alive(*pid), "process {pid} outlived the control plane");
    }
    let direct_port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    for port in [direct_port, node_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
