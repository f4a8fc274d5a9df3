//! `clusteraudit-dev demo`: the whole project on one machine, as a newcomer's first run. A control
//! plane (etcd and a kube-apiserver run from its kubeadm-style static-pod manifest by the stand-in
//! kubelet), the collector, the operator and the agent as processes of the shipped binary; the CRD and
//! the example ClusterAudit applied; the rollout awaited; a few people acting on the cluster; and
//! where to look. Ctrl-C stops everything.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    ControlPlane, ControlPlaneOptions, Result, TestkitError, eventually, file_error,
    process::ManagedProcess,
};
use crate::pki::CertificateAuthority;
use clusteraudit_core::api::{ClusterAudit, FIELD_MANAGER};

const NAMESPACE: &str = "clusteraudit";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The ClusterAudit to apply.
    #[arg(long, default_value = "examples/clusteraudit.yaml")]
    pub example: PathBuf,
    /// The collector's port on 127.0.0.1 (the page and the API).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// The shipped binary whose collector, operator and agent the demo runs (default: the
    /// `clusteraudit` built next to this one).
    #[arg(long)]
    pub clusteraudit: Option<PathBuf>,
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// kubectl as admin, or as one of the test users; a failure is an error.
fn kubectl_ok(
    control_plane: &ControlPlane,
    args: &[&str],
    context: Option<&str>,
) -> Result<String> {
    match control_plane.kubectl_as(context, args)? {
        (true, output) => Ok(output),
        (false, output) => Err(TestkitError::Client(format!("kubectl {args:?}: {output}"))),
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let binary = match &args.clusteraudit {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|err| TestkitError::Client(err.to_string()))?
            .with_file_name("clusteraudit"),
    };
    std::fs::metadata(&binary).map_err(file_error("finding the clusteraudit binary", &binary))?;
    // A wrong path fails now, not after the control plane has started.
    std::fs::metadata(&args.example).map_err(file_error("reading", &args.example))?;

    step("starting the control plane: etcd and a kube-apiserver run from its static-pod manifest");
    let mut control_plane = ControlPlane::start_with(ControlPlaneOptions {
        direct_apiserver: false,
        ..Default::default()
    })
    .await?;
    control_plane.add_static_pod_node("node-1", |kubelet| {
        kubelet.backoff_initial = Duration::from_millis(500);
        kubelet.backoff_max = Duration::from_secs(5);
        kubelet.termination_grace = Duration::from_secs(15);
    })?;
    let node = &control_plane.nodes()[0];
    if !node.wait_ready(Duration::from_secs(300)).await {
        return Err(TestkitError::Client(
            "the kube-apiserver did not become ready".into(),
        ));
    }
    let dir = control_plane.dir().join("demo");
    std::fs::create_dir_all(&dir).map_err(file_error("creating", &dir))?;
    let client = control_plane.client().await?;

    step("installing the ClusterAudit CRD and the RBAC of the demo's people");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "clusteraudits.clusteraudit.io",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&ClusterAudit::crd()),
    )
    .await
    .map_err(|err| TestkitError::Client(err.to_string()))?;
    kubectl_ok(
        &control_plane,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd/clusteraudits.clusteraudit.io",
        ],
        None,
    )?;
    let operator_token = control_plane
        .user("clusteraudit-operator")
        .map(|u| u.token.clone())
        .unwrap_or_default();
    let alice_token = control_plane
        .user("alice")
        .map(|u| u.token.clone())
        .unwrap_or_default();
    let mut webhook_token = [0u8; 24];
    getrandom::fill(&mut webhook_token).expect("the OS has randomness");
    let webhook_token = hex::encode(webhook_token);
    let setup = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "clusteraudit-webhook-token", "namespace": NAMESPACE},
         "stringData": {"token": webhook_token}},
        // The built-in edit role is filled by kube-controller-manager, which the demo does not
        // run: a role of its own instead.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "shop-editor", "namespace": "shop"},
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["get", "list", "create", "update", "patch", "delete"]},
                   {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list", "create", "update", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "shop-editors", "namespace": "shop"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "shop-editor"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"},
                      {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}]},
    ]});
    control_plane.apply_json("demo-setup", &setup)?;
    control_plane.apply_json(
        "demo-collector-rbac",
        &super::collector_rbac(&["clusteraudit-operator"], &["alice"]),
    )?;

    step(&format!(
        "starting the collector (TLS on 127.0.0.1:{}, embedded store)",
        args.port
    ));
    let ca = CertificateAuthority::generate("clusteraudit-demo-collector")?;
    let serving = ca.issue_server(
        "collector",
        &["localhost"],
        &["127.0.0.1".parse().expect("an IP")],
    )?;
    let write = |name: &str, content: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(file_error("writing", &path))?;
        Ok(path)
    };
    let ca_path = write("collector-ca.crt", &ca.cert_pem())?;
    let cert = write("collector.crt", &serving.cert_pem)?;
    let key = write("collector.key", &serving.key_pem)?;
    let token_file = write("webhook-token", &webhook_token)?;
    let operator_token_file = write("operator-token", &operator_token)?;
    let url = format!("https://127.0.0.1:{}", args.port);
    let collector = ManagedProcess::spawn(
        "collector",
        &binary,
        &[
            "collector".to_string(),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--listen=127.0.0.1:{}", args.port),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--webhook-token-file={}", token_file.display()),
            format!("--kubeconfig={}", control_plane.kubeconfig_path().display()),
        ],
        &dir.join("collector.log"),
    )?;
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())
                .map_err(|err| TestkitError::Client(err.to_string()))?,
        )
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|err| TestkitError::Client(err.to_string()))?;
    crate::readyz(&http, &url)
        .await
        .map_err(|timed_out| TestkitError::NotReady {
            name: "collector".into(),
            waited: timed_out.waited,
            last_answer: timed_out.last,
            log_tail: collector.log_tail(20),
        })?;

    step("starting the operator and the agent of node-1");
    let operator = ManagedProcess::spawn(
        "operator",
        &binary,
        &[
            "operator".to_string(),
            format!("--namespace={NAMESPACE}"),
            format!("--kubeconfig={}", control_plane.kubeconfig_path().display()),
            format!("--collector-url={url}"),
            format!("--collector-ca-file={}", ca_path.display()),
            format!("--collector-token-file={}", operator_token_file.display()),
            "--listen=127.0.0.1:0".into(),
        ],
        &dir.join("operator.log"),
    )?;
    // The agent writes to the host only a webhook to this collector, with its CA; it asks the
    // collector whether node-1's batches arrive with a token as the chart gives it.
    control_plane.apply_json(
        "demo-agent-gate-rbac",
        &super::cluster::agent_gate_rbac(NAMESPACE, "clusteraudit-agent"),
    )?;
    let agent_token = super::cluster::service_account_token(
        &client,
        NAMESPACE,
        "clusteraudit-agent",
        "clusteraudit",
    )
    .await?;
    let agent_token_file = write("agent-collector-token", &agent_token)?;
    let mut agent_args = node.agent_args(NAMESPACE, control_plane.kubeconfig_path());
    agent_args.push(format!("--webhook-server={url}/v1/webhook"));
    agent_args.push(format!("--webhook-ca-file={}", ca_path.display()));
    agent_args.push(format!(
        "--collector-token-file={}",
        agent_token_file.display()
    ));
    let agent = ManagedProcess::spawn("agent", &binary, &agent_args, &dir.join("agent.log"))?;

    step(&format!(
        "applying {} and waiting for the rollout (the restart guard lets edits settle first)",
        args.example.display()
    ));
    control_plane.apply_file(&args.example)?;
    let audits: Api<ClusterAudit> = Api::all(client.clone());
    let mut last_reason = String::new();
    let rollout = eventually("the rollout", Duration::from_secs(600), async || {
        // The kube-apiserver restarts during the rollout: errors are expected, briefly.
        let audit = audits.get("cluster").await.map_err(|err| err.to_string())?;
        let ready = audit
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .ok_or("no Ready condition yet")?;
        if ready.reason != last_reason {
            eprintln!(
                "    Ready={} {}: {}",
                ready.status, ready.reason, ready.message
            );
            last_reason = ready.reason.clone();
        }
        match (ready.status.as_str(), ready.reason.as_str()) {
            ("True", _) => Ok(Ok(())),
            (_, "InvalidSpec" | "RolloutFailed") => Ok(Err(ready.message.clone())),
            _ => Err(format!(
                "Ready={} {}: {}",
                ready.status, ready.reason, ready.message
            )),
        }
    })
    .await;
    match rollout {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(TestkitError::Client(format!(
                "the rollout did not complete: {message}"
            )));
        }
        Err(timed_out) => {
            return Err(TestkitError::Client(format!(
                "{timed_out}\noperator log:\n{}\nagent log:\n{}",
                operator.log_tail(20),
                agent.log_tail(20)
            )));
        }
    }

    step("acting on the cluster as alice, bob and mallory");
    // (who, what, whether the cluster lets them)
    let actions: [(&str, &[&str], bool); 7] = [
        (
            "alice",
            &[
                "create",
                "deployment",
                "web",
                "--image=registry.k8s.io/pause:3.10",
                "-n",
                "shop",
            ],
            true,
        ),
        (
            "alice",
            &["scale", "deployment", "web", "--replicas=3", "-n", "shop"],
            true,
        ),
        (
            "bob",
            &[
                "create",
                "secret",
                "generic",
                "db-password",
                "--from-literal=password=s3cret",
                "-n",
                "shop",
            ],
            true,
        ),
        (
            "bob",
            &["get", "secret", "db-password", "-n", "shop", "-o", "name"],
            true,
        ),
        (
            "alice",
            &["delete", "deployment", "web", "-n", "shop"],
            true,
        ),
        ("mallory", &["get", "secrets", "-n", "kube-system"], false),
        ("mallory", &["delete", "namespace", "shop"], false),
    ];
    for (user, action, allowed) in actions {
        let (succeeded, output) = control_plane.kubectl_as(Some(user), action)?;
        if succeeded != allowed {
            return Err(TestkitError::Client(format!(
                "{user}: kubectl {action:?} {}: {output}",
                if allowed { "failed" } else { "was not refused" }
            )));
        }
        eprintln!(
            "    {user}: kubectl {} -> {}",
            action.join(" "),
            output.trim()
        );
    }
    step("waiting until the deletion is searchable");
    let search = format!("{url}/v1/route");
    let found = eventually(
        "the deletion in search",
        Duration::from_secs(60),
        async || {
            let route = http
                .get(&search)
                .bearer_auth(&alice_token)
                .send()
                .await
                .map_err(|err| err.to_string())?
                .json::<serde_json::Value>()
                .await
                .map_err(|err| err.to_string())?;
            let topic = route["topicId"].as_str().unwrap_or_default().to_string();
            let page = http
                .get(format!(
                    "{url}/v1/topics/{topic}/events?q={}",
                    percent_encoding::utf8_percent_encode(
                        "verb:delete and resource:deployments",
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ))
                .bearer_auth(&alice_token)
                .send()
                .await
                .map_err(|err| err.to_string())?
                .json::<serde_json::Value>()
                .await
                .map_err(|err| err.to_string())?;
            match page["events"].as_array() {
                Some(events) if !events.is_empty() => Ok(()),
                _ => Err(page.to_string()),
            }
        },
    )
    .await;
    if let Err(timed_out) = found {
        eprintln!(
            "    (not searchable yet: {timed_out}; the collector log is {})",
            dir.join("collector.log").display()
        );
    }

    let status = kubectl_ok(&control_plane, &["get", "clusteraudit", "-o", "wide"], None)?;
    let kubeconfig = control_plane.kubeconfig_path().display().to_string();
    println!();
    println!(
        "clusteraudit is running ({}s). Where to look:",
        started.elapsed().as_secs()
    );
    println!();
    println!("  The page:    {url}/ui/search?q=verb%3Adelete&since=1h");
    println!(
        "               (its certificate comes from the demo's own CA: {})",
        ca_path.display()
    );
    println!("               sign in with alice's token: {alice_token}");
    println!();
    println!("  The deletions, from the command line:");
    println!(
        "    {} search 'verb:delete' --since 1h --server {url} --ca-file {} --token {alice_token}",
        binary.display(),
        ca_path.display()
    );
    println!();
    println!("  The ClusterAudit:");
    println!("    export KUBECONFIG={kubeconfig}");
    println!("    kubectl get clusteraudit -o wide");
    for line in status.lines() {
        println!("    {line}");
    }
    println!();
    println!(
        "  Logs: {} (collector.log, operator.log, agent.log)",
        dir.display()
    );
    println!(
        "  kubectl: {}",
        control_plane.binaries().kubectl().display()
    );
    println!();
    println!("Ctrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("==> stopping");
    drop(agent);
    drop(operator);
    drop(collector);
    drop(control_plane);
    eprintln!("==> stopped; nothing is left running");
    Ok(())
}
