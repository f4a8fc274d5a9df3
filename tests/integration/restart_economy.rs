//! Restart economy on the three-node control plane. Policy edits that only narrow what the
//! kube-apiservers send take effect through the collector within seconds and restart nothing,
//! and the events stored are exactly what `clusteraudit policy preview` of the new spec makes of
//! what the kube-apiservers sent (each kube-apiserver also logs what it sends to a file); a
//! widening edit restarts each node once; with `envelope: Wide` ten edits restart nothing; a
//! route's topic receives exactly the events matching its query, with its own retention.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use clusteraudit_core::api::ClusterAudit;
use clusteraudit_testkit::eventually;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams},
};
use serde_json::{Value, json};

use crate::operator_rollout::{
    Harness, NODES, ROLLOUT, binary, enforcing_the_spec, latest, merge, rolled_out_on, spec,
};

/// The bound for a narrowing edit to take effect.
const NARROWING_TAKES_EFFECT: Duration = Duration::from_secs(10);
const NOISY_NAMESPACE: &str = "monitoring";
const NOISY_ACCOUNT: &str = "prometheus";
const NOISY_USER: &str = "system:serviceaccount:monitoring:prometheus";

/// One stored or expected event: (auditID, stage) → level.
type Levels = BTreeMap<(String, String), String>;

/// Clients whose requests carry the round's user agent: the admin, alice (no rights: her
/// requests are refused, and audited), and the noisy service account (reads).
struct Traffic {
    tag: String,
    admin: kube::Client,
    alice: kube::Client,
    noisy: kube::Client,
}

impl Traffic {
    async fn new(h: &Harness, noisy_token: &str, tag: &str) -> Traffic {
        let node = h.control_plane.node(NODES[0]).unwrap();
        let admin_kubeconfig = h.control_plane.kubeconfig_for_node(NODES[0]).unwrap();
        let token_kubeconfig = |name: &str, token: &str| {
            let path = h.dir.join(format!("kubeconfig-{name}.json"));
            let kubeconfig = json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": node.endpoint(),
                    "certificate-authority": h.control_plane.pki_dir().join("ca.crt"),
                }}],
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": name}}],
                "current-context": "c",
            });
            std::fs::write(&path, kubeconfig.to_string()).unwrap();
            path
        };
        let alice = h.control_plane.user("alice").unwrap().token.clone();
        let client = async |kubeconfig: PathBuf| {
            clusteraudit_io::kubeclient::client_as(Some(&kubeconfig), tag)
                .await
                .unwrap()
        };
        Traffic {
            tag: tag.to_string(),
            admin: client(admin_kubeconfig).await,
            alice: client(token_kubeconfig("alice", &alice)).await,
            noisy: client(token_kubeconfig(NOISY_ACCOUNT, noisy_token)).await,
        }
    }

    /// Writes, reads, a watch (which has a ResponseStarted stage), secrets, refusals and the
    /// noisy account's reads, all in a namespace named after the round.
    async fn run(&self) {
        self.run_in(&self.tag).await
    }

    /// As [`Traffic::run`], in the namespace `ns` (created).
    async fn run_in(&self, ns: &str) {
        let post = PostParams::default();
        Api::<Namespace>::all(self.admin.clone())
            .create(
                &post,
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
        let configmaps = Api::<ConfigMap>::namespaced(self.admin.clone(), ns);
        configmaps
            .create(
                &post,
                &serde_json::from_value(
                    json!({"metadata": {"name": "settings"}, "data": {"a": "1"}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        configmaps.get("settings").await.unwrap();
        configmaps
            .patch(
                "settings",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"b": "2"}})),
            )
            .await
            .unwrap();
        Api::<Pod>::namespaced(self.admin.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        let mut watch = Box::pin(
            configmaps
                .watch(&WatchParams::default().timeout(1), "0")
                .await
                .unwrap(),
        );
        while let Ok(Some(_)) = watch.try_next().await {}
        let secrets = Api::<Secret>::namespaced(self.admin.clone(), ns);
        secrets
            .create(
                &post,
                &serde_json::from_value(
                    json!({"metadata": {"name": "password"}, "stringData": {"p": "hunter2"}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        secrets.get("password").await.unwrap();
        configmaps
            .delete("settings", &DeleteParams::default())
            .await
            .unwrap();
        secrets
            .delete("password", &DeleteParams::default())
            .await
            .unwrap();
        // Refused: alice has no rights at all.
        let refused = Api::<Namespace>::all(self.alice.clone())
            .list(&ListParams::default())
            .await;
        assert!(refused.is_err(), "alice may not list namespaces");
        Api::<Pod>::namespaced(self.noisy.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        Api::<Namespace>::all(self.noisy.clone())
            .get(ns)
            .await
            .unwrap();
        Api::<ConfigMap>::namespaced(self.noisy.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
    }
}

/// The round's events as the kube-apiservers sent them, from their own logs: raw lines.
fn sent(h: &Harness, tag: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for node in h.control_plane.nodes() {
        let log = node.audit_log_path().expect("the nodes log what they send");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if event["userAgent"] == tag {
                lines.push(line.to_string());
            }
        }
    }
    lines
}

/// What `clusteraudit policy preview` of `spec` keeps of `sent`: the level of each event
/// neither dropped (level None) nor of a stage the spec omits.
fn previewed(h: &Harness, spec: &Value, sent: &[String]) -> Levels {
    let dir = h.dir.join("preview");
    std::fs::create_dir_all(&dir).unwrap();
    let spec_file = dir.join("clusteraudit.json");
    let events_file = dir.join("events.jsonl");
    let document = json!({
        "apiVersion": "clusteraudit.io/v1alpha1", "kind": "ClusterAudit",
        "metadata": {"name": "cluster"}, "spec": spec,
    });
    std::fs::write(&spec_file, document.to_string()).unwrap();
    std::fs::write(&events_file, sent.join("\n") + "\n").unwrap();
    let output = Command::new(binary())
        .args(["policy", "preview", "--per-event", "-f"])
        .arg(&spec_file)
        .arg("--events")
        .arg(&events_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let typed: ClusterAudit = serde_json::from_value(document).unwrap();
    let omitted: Vec<String> = typed
        .spec
        .policy
        .omit_stages
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let outcomes: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), sent.len(), "one outcome per event");
    sent.iter()
        .zip(outcomes)
        .filter_map(|(line, outcome)| {
            let event: Value = serde_json::from_str(line).unwrap();
            let stage = event["stage"].as_str().unwrap().to_string();
            let level = outcome["level"].as_str().unwrap().to_string();
            (level != "None" && !omitted.contains(&stage)).then(|| {
                (
                    (event["auditID"].as_str().unwrap().to_string(), stage),
                    level,
                )
            })
        })
        .collect()
}

fn levels(events: &[Value]) -> Levels {
    events
        .iter()
        .map(|e| {
            (
                (
                    e["auditID"].as_str().unwrap_or_default().to_string(),
                    e["stage"].as_str().unwrap_or_default().to_string(),
                ),
                e["level"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn search(h: &Harness, topic: &str, query: &str) -> Vec<Value> {
    let q = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
    let (status, page) = h
        .collector_get(&format!("/v1/topics/{topic}/events?limit=1000&q={q}"))
        .await;
    assert_eq!(status, 200, "{query}: {page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

fn main_topic(audit: &ClusterAudit) -> String {
    audit
        .status
        .as_ref()
        .and_then(|s| s.sink.as_ref())
        .and_then(|s| s.topic_id.clone())
        .expect("a topic in status")
}

/// What a round of traffic cost: events and bytes the kube-apiservers sent, and the
/// collector's CPU time from the first request until every event was stored.
#[derive(Debug, Default)]
struct Cost {
    events: usize,
    bytes: usize,
    collector_cpu: Duration,
}

/// The CPU time a process has used (user and system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // The kernel reports in USER_HZ, 100 per second on Linux.
    Duration::from_millis(ticks * 10)
}

/// Runs a round of traffic (`repeat` times over, in namespaces of its own) and checks that the
/// topic stores exactly what `policy preview` of `spec` makes of what the kube-apiservers sent.
async fn stored_as_previewed(
    h: &Harness,
    traffic: &Traffic,
    spec: &Value,
    topic: &str,
    repeat: usize,
) -> Cost {
    let cpu_before = cpu_time(h.collector.process.pid());
    if repeat == 1 {
        traffic.run().await;
    } else {
        for i in 0..repeat {
            traffic.run_in(&format!("{}-{i}", traffic.tag)).await;
        }
    }
    let tag = &traffic.tag;
    let outcome = eventually(
        &format!("{tag}: the stored events are what preview gives"),
        Duration::from_secs(90),
        async || {
            let sent = sent(h, tag);
            let expected = previewed(h, spec, &sent);
            let stored = levels(&search(h, topic, &format!("userAgent:{tag}")).await);
            if !sent.is_empty() && stored == expected {
                Ok((sent, stored))
            } else {
                Err((expected, stored))
            }
        },
    )
    .await;
    let cpu = cpu_time(h.collector.process.pid()).saturating_sub(cpu_before);
    let (sent, stored) = outcome.unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
    let kept: BTreeMap<&str, usize> = stored.values().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.as_str()).or_default() += 1;
        m
    });
    let cost = Cost {
        events: sent.len(),
        bytes: sent.iter().map(|l| l.len() + 1).sum(),
        collector_cpu: cpu,
    };
    eprintln!(
        "{tag}: {} events ({} bytes) sent, stored by level {kept:?}",
        cost.events, cost.bytes
    );
    cost
}

/// How many times over the traffic runs where its cost is measured (`CLUSTERAUDIT_COST_ROUNDS`,
/// 5 by default).
fn cost_rounds() -> usize {
    std::env::var("CLUSTERAUDIT_COST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn print_cost(exact: &Cost, wide: &Cost) {
    let per_event = |c: &Cost| c.bytes as f64 / c.events.max(1) as f64;
    eprintln!(
        "figure: the same traffic sent by the kube-apiservers: exact revision {} events, {} bytes \
         ({:.0} B/event), collector CPU {:?}; wide envelope {} events, {} bytes ({:.0} B/event), \
         collector CPU {:?}; wide/exact bytes {:.2}",
        exact.events,
        exact.bytes,
        per_event(exact),
        exact.collector_cpu,
        wide.events,
        wide.bytes,
        per_event(wide),
        wide.collector_cpu,
        wide.bytes as f64 / exact.bytes.max(1) as f64
    );
}

/// The noisy account, allowed to read pods, namespaces and configmaps, and a token for it.
fn noisy_account(h: &Harness) -> String {
    let run = |args: &[&str]| {
        let (ok, output) = h.control_plane.kubectl_as(None, args).unwrap();
        assert!(ok, "kubectl {args:?}: {output}");
        output
    };
    run(&["create", "namespace", NOISY_NAMESPACE]);
    run(&[
        "create",
        "serviceaccount",
        NOISY_ACCOUNT,
        "-n",
        NOISY_NAMESPACE,
    ]);
    run(&[
        "create",
        "clusterrole",
        "reader",
        "--verb=get,list,watch",
        "--resource=pods,namespaces,configmaps",
    ]);
    run(&[
        "create",
        "clusterrolebinding",
        "noisy-reader",
        "--clusterrole=reader",
        &format!("--serviceaccount={NOISY_NAMESPACE}:{NOISY_ACCOUNT}"),
    ]);
    run(&[
        "create",
        "token",
        NOISY_ACCOUNT,
        "-n",
        NOISY_NAMESPACE,
        "--duration=4h",
    ])
    .trim()
    .to_string()
}

/// Applies a spec whose policy narrows what the nodes run: enforced within the bound,
/// with the same revision and no restart.
async fn narrow(h: &Harness, spec: &Value, revision: &str, what: &str) {
    let starts = h.start_counts();
    let applied = Instant::now();
    h.apply(json!({"spec": spec})).await;
    let audit = h
        .wait_for(what, NARROWING_TAKES_EFFECT, |a| {
            enforcing_the_spec(a) && rolled_out_on(a, NODES.len())
        })
        .await;
    eprintln!(
        "figure: {what}: enforced {:?} after the edit",
        applied.elapsed()
    );
    assert_eq!(
        latest(&audit).as_deref(),
        Some(revision),
        "{what}: no new revision"
    );
    assert_eq!(
        h.start_counts(),
        starts,
        "{what}: no kube-apiserver restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn narrowing_edits_restart_nothing_widening_restarts_each_node_once() {
    let h = Harness::start_with(&NODES, true).await;
    let noisy_token = noisy_account(&h);
    let mut round = 0;
    let mut next_traffic = async || {
        round += 1;
        Traffic::new(&h, &noisy_token, &format!("economy-round-{round}")).await
    };

    // Everything with bodies: the revision every narrowing below stays on.
    let mut current = spec(json!({"policy": {"profile": "AllRequestBodies"}}));
    h.apply(json!({"spec": current})).await;
    let audit = h
        .wait_for("all request bodies rolled out", ROLLOUT, |a| {
            rolled_out_on(a, NODES.len()) && enforcing_the_spec(a)
        })
        .await;
    let first = latest(&audit).unwrap();
    let topic = main_topic(&audit);
    stored_as_previewed(&h, &next_traffic().await, &current, &topic, 1).await;

    // Narrowing edits, one after another.
    let starts = h.start_counts();
    merge(&mut current, json!({"policy": {"profile": "Default"}}));
    narrow(&h, &current, &first, "AllRequestBodies → Default").await;
    stored_as_previewed(&h, &next_traffic().await, &current, &topic, 1).await;

    merge(
        &mut current,
        json!({"policy": {"rules": [{"level": "None", "users": [NOISY_USER]}]}}),
    );
    narrow(&h, &current, &first, "a None rule for the noisy account").await;
    stored_as_previewed(&h, &next_traffic().await, &current, &topic, 1).await;

    merge(
        &mut current,
        json!({"policy": {"omitStages": ["RequestReceived", "ResponseStarted"]}}),
    );
    narrow(&h, &current, &first, "the ResponseStarted stage omitted").await;
    stored_as_previewed(&h, &next_traffic().await, &current, &topic, 1).await;
    assert_eq!(h.start_counts(), starts);

    // Widening: ConfigMaps' bodies, kept at Metadata by every profile and the running revision.
    merge(
        &mut current,
        json!({"policy": {"rules": [
            {"level": "None", "users": [NOISY_USER]},
            {"level": "Request", "resources": [{"group": "", "resources": ["configmaps"]}]},
        ]}}),
    );
    h.apply(json!({"spec": current})).await;
    let audit = h
        .wait_for("the widening edit rolled out", ROLLOUT, |a| {
            rolled_out_on(a, NODES.len())
                && latest(a).as_deref() != Some(first.as_str())
                && enforcing_the_spec(a)
        })
        .await;
    let widened = latest(&audit).unwrap();
    let after = h.start_counts();
    for node in NODES {
        assert_eq!(after[node], starts[node] + 1, "{node} restarted once");
    }
    let exact =
        stored_as_previewed(&h, &next_traffic().await, &current, &topic, cost_rounds()).await;

    // The wide envelope: one rollout into it (the spec leaves it with its ConfigMap rule, so
    // that rule goes), then ten edits that restart nothing.
    merge(
        &mut current,
        json!({"rollout": {"envelope": "Wide"},
               "policy": {"rules": [{"level": "None", "users": [NOISY_USER]}]}}),
    );
    h.apply(json!({"spec": current})).await;
    let audit = h
        .wait_for("the wide envelope rolled out", ROLLOUT, |a| {
            rolled_out_on(a, NODES.len())
                && latest(a).as_deref() != Some(widened.as_str())
                && enforcing_the_spec(a)
        })
        .await;
    let wide = latest(&audit).unwrap();
    let in_wide = h.start_counts();
    for node in NODES {
        assert_eq!(in_wide[node], after[node] + 1, "{node} restarted once");
    }
    let profiles = [
        "Metadata",
        "AllRequestBodies",
        "WriteRequestBodies",
        "None",
        "Default",
    ];
    for edit in 0..10 {
        merge(
            &mut current,
            json!({"policy": {
                "profile": profiles[edit % profiles.len()],
                "rules": [{"level": "None", "users": [NOISY_USER, format!("user-{edit}")]}],
            }}),
        );
        narrow(
            &h,
            &current,
            &wide,
            &format!("wide envelope, edit {}", edit + 1),
        )
        .await;
    }
    let wide_cost =
        stored_as_previewed(&h, &next_traffic().await, &current, &topic, cost_rounds()).await;
    print_cost(&exact, &wide_cost);
    assert_eq!(h.start_counts(), in_wide, "ten edits, no restart");

    routes_copy_exactly_the_matching_events(&h, &mut current, &wide, &topic, next_traffic().await)
        .await;
}

/// A route to a `security` topic kept for a year: no restart, its topic in status, and exactly
/// the events the query matches stored there.
async fn routes_copy_exactly_the_matching_events(
    h: &Harness,
    current: &mut Value,
    revision: &str,
    topic: &str,
    traffic: Traffic,
) {
    const QUERY: &str = "resource:secrets or verb:delete";
    let starts = h.start_counts();
    merge(
        current,
        json!({"sink": {"routes": [
            {"query": QUERY, "topic": {"name": "security", "retentionDays": 365}}
        ]}}),
    );
    h.apply(json!({"spec": current})).await;
    let audit = h
        .wait_for("the route set up", Duration::from_secs(60), |a| {
            a.status
                .as_ref()
                .and_then(|s| s.sink.as_ref())
                .is_some_and(|s| s.routes.len() == 1)
        })
        .await;
    let route = &audit.status.as_ref().unwrap().sink.as_ref().unwrap().routes[0];
    assert!(route.created, "{route:?}");
    assert_eq!(route.query, QUERY);
    assert_ne!(route.topic_id, topic);
    let (status, security) = h
        .collector_get(&format!("/v1/topics/{}", route.topic_id))
        .await;
    assert_eq!(status, 200, "{security}");
    assert_eq!(security["retentionDays"], 365, "{security}");
    assert_eq!(latest(&audit).as_deref(), Some(revision), "no new revision");

    traffic.run().await;
    let tag = &traffic.tag;
    let routed = eventually("the routed events", Duration::from_secs(90), async || {
        let expected = levels(&search(h, topic, &format!("userAgent:{tag} and ({QUERY})")).await);
        let copied = levels(&search(h, &route.topic_id, &format!("userAgent:{tag}")).await);
        let all = search(h, topic, &format!("userAgent:{tag}")).await.len();
        if !expected.is_empty() && copied == expected && all > expected.len() {
            Ok(copied)
        } else {
            Err((expected, copied))
        }
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
    eprintln!(
        "{tag}: {} events routed to the security topic",
        routed.len()
    );
    assert_eq!(h.start_counts(), starts, "a route restarts nothing");
}
