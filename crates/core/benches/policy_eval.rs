//! Evaluator throughput on a realistic mix of requests against the Default profile with noise
//! exclusions, next to the kube-apiserver's own Go checker on the same inputs.
//!
//!   cargo bench --bench policy_eval
//!
//! Under `cargo test` (no `--bench` argument) it only checks that both agree on a small mix.

use std::{process::Command, time::Instant};

use clusteraudit_core::{
    api::PolicySpec,
    audit::Level,
    policy::{Evaluator, RequestAttributes, render},
};
use serde_json::json;

/// One request as both implementations read it.
struct Request {
    user: String,
    groups: Vec<String>,
    verb: &'static str,
    resource_request: bool,
    api_group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: String,
    name: String,
    path: String,
}

/// A deterministic generator (xorshift), so both runs see the same mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What a busy cluster's kube-apiserver sees: mostly system components (kubelets, controllers,
/// kube-proxy, leader election, health probes), some service accounts, a few people.
fn realistic_mix(count: usize) -> Vec<Request> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let namespaces = [
        "default",
        "kube-system",
        "shop",
        "payments",
        "monitoring",
        "ingress",
    ];
    let names = [
        "web",
        "api",
        "db",
        "cache",
        "worker-7f9c",
        "kube-controller-manager",
        "kube-scheduler",
    ];
    let kinds: [(&str, &str, &[&str]); 12] = [
        ("", "pods", &["", "", "status", "log", "exec", "binding"]),
        ("", "configmaps", &[""]),
        ("", "secrets", &[""]),
        ("", "services", &["", "status"]),
        ("", "endpoints", &[""]),
        ("", "nodes", &["", "status"]),
        ("", "events", &[""]),
        ("", "serviceaccounts", &["", "token"]),
        ("apps", "deployments", &["", "status", "scale"]),
        ("apps", "replicasets", &["", "status"]),
        ("coordination.k8s.io", "leases", &[""]),
        ("discovery.k8s.io", "endpointslices", &[""]),
    ];
    let verbs = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let mut requests = Vec::with_capacity(count);
    while requests.len() < count {
        let roll = rng.next() % 100;
        let (user, groups): (String, Vec<String>) = match roll {
            0..=24 => (
                format!("system:node:node-{}", rng.next() % 50),
                vec!["system:nodes".into(), "system:authenticated".into()],
            ),
            25..=39 => (
                "system:kube-controller-manager".into(),
                vec!["system:authenticated".into()],
            ),
            40..=47 => (
                "system:kube-scheduler".into(),
                vec!["system:authenticated".into()],
            ),
            48..=57 => (
                "system:kube-proxy".into(),
                vec!["system:authenticated".into()],
            ),
            58..=62 => (
                "system:apiserver".into(),
                vec!["system:masters".into(), "system:authenticated".into()],
            ),
            63..=85 => {
                let ns = rng.pick(&namespaces);
                (
                    format!("system:serviceaccount:{ns}:{}", rng.pick(&names)),
                    vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{ns}"),
                        "system:authenticated".into(),
                    ],
                )
            }
            _ => (
                rng.pick(&["alice", "bob", "carol", "dave"]).to_string(),
                vec![
                    rng.pick(&["devs", "ops", "sre"]).to_string(),
                    "system:authenticated".into(),
                ],
            ),
        };
        if rng.chance(12) {
            let path = rng.pick(&[
                "/healthz",
                "/readyz",
                "/livez",
                "/version",
                "/api",
                "/apis",
                "/openapi/v2",
                "/metrics",
            ]);
            requests.push(Request {
                user,
                groups,
                verb: "get",
                resource_request: false,
                api_group: "",
                resource: "",
                subresource: "",
                namespace: String::new(),
                name: String::new(),
                path: path.to_string(),
            });
            continue;
        }
        let (group, resource, subresources) = *rng.pick(&kinds);
        let subresource = *rng.pick(subresources);
        let verb = if user == "system:kube-proxy" && rng.chance(80) {
            "watch"
        } else {
            *rng.pick(&verbs)
        };
        let cluster_scoped = resource == "nodes";
        let namespace = if cluster_scoped || (verb == "list" && rng.chance(30)) {
            String::new()
        } else {
            rng.pick(&namespaces).to_string()
        };
        let named = !matches!(verb, "list" | "watch" | "create") || !subresource.is_empty();
        let name = if named {
            rng.pick(&names).to_string()
        } else {
            String::new()
        };
        requests.push(Request {
            path: format!("/apis/{group}/v1/{resource}"),
            user,
            groups,
            verb,
            resource_request: true,
            api_group: group,
            resource,
            subresource,
            namespace,
            name,
        });
    }
    requests
}

fn attributes(request: &Request) -> RequestAttributes<'_> {
    RequestAttributes {
        user: &request.user,
        groups: &request.groups,
        verb: request.verb,
        resource_request: request.resource_request,
        api_group: request.api_group,
        resource: request.resource,
        subresource: request.subresource,
        namespace: &request.namespace,
        name: &request.name,
        path: &request.path,
    }
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("POLICY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rendered = render(&PolicySpec::default()).expect("the default spec renders");
    let requests = realistic_mix(if benchmarking { 20_000 } else { 500 });
    let evaluator = Evaluator::new(&rendered.policy);
    let all: Vec<RequestAttributes<'_>> = requests.iter().map(attributes).collect();

    let mut levels = [0usize; 4];
    for request in &all {
        levels[evaluator.evaluate(request).level as usize] += 1;
    }
    let levels_line = format!(
        "levels None={} Metadata={} Request={} RequestResponse={}",
        levels[Level::None as usize],
        levels[Level::Metadata as usize],
        levels[Level::Request as usize],
        levels[Level::RequestResponse as usize]
    );

    let rust_rate = if benchmarking {
        let started = Instant::now();
        let mut decisions = 0usize;
        let mut sink = 0usize;
        while started.elapsed().as_secs_f64() < seconds {
            for request in &all {
                sink += std::hint::black_box(evaluator.evaluate(std::hint::black_box(request)))
                    .level as usize;
            }
            decisions += all.len();
        }
        std::hint::black_box(sink);
        decisions as f64 / started.elapsed().as_secs_f64()
    } else {
        0.0
    };

    // The same inputs for the Go checker.
    let dir = tempfile::tempdir().expect("a scratch directory");
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, &rendered.yaml).unwrap();
    let requests_path = dir.path().join("requests.jsonl");
    let lines: String = requests
        .iter()
        .map(|r| {
            json!({
                "user": r.user, "groups": r.groups, "verb": r.verb, "resourceRequest": r.resource_request,
                "apiGroup": r.api_group, "resource": r.resource, "subresource": r.subresource,
                "namespace": r.namespace, "name": r.name, "path": r.path,
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&requests_path, lines).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/policy-checker.sh"
    );
    let go = Command::new("bash").arg(script).output();
    let Some(go_binary) = go
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        if benchmarking {
            println!(
                "rust evaluator: {rust_rate:.0} decisions/s ({} requests, {levels_line})",
                all.len()
            );
            println!("go checker: unavailable (scripts/policy-checker.sh failed)");
        }
        return;
    };
    let go_seconds = if benchmarking { seconds } else { 0.01 };
    let output = Command::new(go_binary)
        .args([
            "-policy",
            policy_path.to_str().unwrap(),
            "-requests",
            requests_path.to_str().unwrap(),
        ])
        .args(["-seconds", &go_seconds.to_string()])
        .output()
        .expect("the Go checker runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let go_levels = text
        .lines()
        .find(|l| l.starts_with("levels "))
        .unwrap_or_default();
    assert_eq!(go_levels, levels_line, "the Go checker decides differently");
    if !benchmarking {
        return;
    }
    let go_rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("decisions_per_second "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!(
        "policy: Default profile + noise exclusions, {} rules",
        rendered.policy.rules.len()
    );
    println!("requests: {} ({levels_line}; identical in both)", all.len());
    println!("rust evaluator: {rust_rate:>12.0} decisions/s");
    println!("go checker:     {go_rate:>12.0} decisions/s");
    println!("ratio:          {:>12.2}x", rust_rate / go_rate);
}
