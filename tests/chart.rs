//! The Helm chart renders manifests the real kube-apiserver accepts, and its RBAC grants the
//! operator what it needs and nothing more.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use clusteraudit::testkit::{ControlPlane, cluster::kubernetes_version};

const NAMESPACE: &str = "clusteraudit-system";

fn helm_template(control_plane: &ControlPlane, extra: &[&str]) -> String {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/clusteraudit");
    let output = Command::new(control_plane.binaries().helm())
        .args([
            "template",
            "clusteraudit",
            chart,
            "--namespace",
            NAMESPACE,
            "--include-crds",
        ])
        .args(["--kube-version", &kubernetes_version()])
        .args(extra)
        .env("HELM_CACHE_HOME", control_plane.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", control_plane.dir().join("helm/config"))
        .env("HELM_DATA_HOME", control_plane.dir().join("helm/data"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

fn kubectl_apply(control_plane: &ControlPlane, manifests: &str, dry_run: bool) -> String {
    let mut command = control_plane.kubectl();
    command.args([
        "apply",
        "--server-side",
        "--field-manager=helm-test",
        "-f",
        "-",
    ]);
    if dry_run {
        command.arg("--dry-run=server");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl apply (dry run: {dry_run}) refused the chart: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn can_i(
    control_plane: &ControlPlane,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut command = control_plane.kubectl();
    command.args([
        "auth",
        "can-i",
        verb,
        resource,
        &format!("--as=system:serviceaccount:{NAMESPACE}:clusteraudit-operator"),
    ]);
    match namespace {
        Some(namespace) => command.args(["--namespace", namespace]),
        None => command.arg("--all-namespaces"),
    };
    let output = command.output().expect("kubectl runs");
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_is_accepted_by_the_apiserver_and_least_privileged() {
    let control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    let output = control_plane
        .kubectl()
        .args(["create", "namespace", NAMESPACE])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let defaults = helm_template(&control_plane, &[]);
    let applied = kubectl_apply(&control_plane, &defaults, true);
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/clusteraudits.clusteraudit.io",
        "serviceaccount/clusteraudit-operator",
        "clusterrole.rbac.authorization.k8s.io/clusteraudit-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/clusteraudit-operator",
        "role.rbac.authorization.k8s.io/clusteraudit-operator",
        "rolebinding.rbac.authorization.k8s.io/clusteraudit-operator",
        "deployment.apps/clusteraudit-operator",
    ] {
        assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
    }

    let values = control_plane.dir().join("values.yaml");
    std::fs::write(
        &values,
        r#"
image: {repository: registry.example.internal/clusteraudit, tag: dev, pullPolicy: Always}
imagePullSecrets: [{name: registry-credentials}]
operator:
  replicas: 2
  logLevel: debug
  httpPort: 9090
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
  podAnnotations: {example.com/team: platform}
serviceAccount: {create: false, name: platform-audit}
rbac: {create: true}
"#,
    )
    .unwrap();
    let custom = helm_template(&control_plane, &["--values", values.to_str().unwrap()]);
    assert!(
        custom.contains("replicas: 2")
            && custom.contains("registry.example.internal/clusteraudit:dev")
    );
    assert!(!custom.contains("\nkind: ServiceAccount\n"), "{custom}");
    assert!(custom.contains("name: platform-audit"));
    let applied = kubectl_apply(&control_plane, &custom, true);
    assert!(
        applied.contains("deployment.apps/clusteraudit-operator"),
        "{applied}"
    );

    // Applied for real, the operator's identity can do its job and nothing more.
    kubectl_apply(&control_plane, &defaults, false);
    let ns = Some(NAMESPACE);
    for (verb, resource, namespace) in [
        ("watch", "clusteraudits.clusteraudit.io", None),
        ("patch", "clusteraudits.clusteraudit.io/status", None),
        ("list", "nodes", None),
        ("create", "events.events.k8s.io", Some("default")),
        ("update", "leases.coordination.k8s.io", ns),
        ("create", "secrets", ns),
    ] {
        assert!(
            can_i(&control_plane, verb, resource, namespace),
            "cannot {verb} {resource}"
        );
    }
    for (verb, resource, namespace) in [
        ("delete", "clusteraudits.clusteraudit.io", None),
        ("get", "secrets", Some("kube-system")),
        ("list", "secrets", None),
        ("create", "pods", ns),
        ("patch", "nodes", None),
        ("update", "leases.coordination.k8s.io", Some("kube-system")),
        ("delete", "secrets", ns),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
    ] {
        assert!(
            !can_i(&control_plane, verb, resource, namespace),
            "may {verb} {resource}"
        );
    }
}
