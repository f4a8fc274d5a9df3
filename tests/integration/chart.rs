//! The Helm chart renders manifests the real kube-apiserver accepts, and its RBAC grants the
//! operator what it needs and nothing more.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use clusteraudit_testkit::{ControlPlane, cluster::kubernetes_version};

const NAMESPACE: &str = "clusteraudit-system";

fn helm_template(control_plane: &ControlPlane, extra: &[&str]) -> String {
    helm_template_result(control_plane, extra)
        .unwrap_or_else(|err| panic!("helm template {extra:?} failed: {err}"))
}

/// What `helm template` printed, or why it refused.
fn helm_template_result(control_plane: &ControlPlane, extra: &[&str]) -> Result<String, String> {
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
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8(output.stdout).expect("helm prints UTF-8"))
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
    service_account: &str,
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
        &format!("--as=system:serviceaccount:{NAMESPACE}:{service_account}"),
    ]);
    match namespace {
        Some(namespace) => command.args(["--namespace", namespace]),
        None => command.arg("--all-namespaces"),
    };
    let output = command.output().expect("kubectl runs");
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// What the collector asks the cluster (a SubjectAccessReview) about its virtual resources, which
/// kubectl cannot name since no API serves them.
async fn may_in_collector(
    control_plane: &ControlPlane,
    service_account: &str,
    verb: &str,
    resource: &str,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let client = control_plane.client().await.unwrap();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{NAMESPACE}:{service_account}"
            )),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("clusteraudit.io".into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    kube::Api::<SubjectAccessReview>::all(client)
        .create(&Default::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
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

    // The webhook's door is not left open by default: an empty webhookFrom must be meant.
    let refused = helm_template_result(&control_plane, &[]).unwrap_err();
    assert!(
        refused.contains("networkPolicy.webhookFrom is empty"),
        "{refused}"
    );
    let refused = helm_template_result(
        &control_plane,
        &[
            "--set",
            "networkPolicy.allowWebhookFromAnywhere=true",
            "--set",
            "collector.store.type=bogus",
        ],
    )
    .unwrap_err();
    assert!(refused.contains("embedded or opensearch"), "{refused}");
    let defaults = helm_template(
        &control_plane,
        &["--set", "networkPolicy.allowWebhookFromAnywhere=true"],
    );
    // Helm installs the chart's CRDs before its objects; a dry run of both at once cannot map
    // the built-in AuditAlerts, so the CRDs go in for real first.
    let chart_crd = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("charts/clusteraudit/crds/{name}.yaml"))
    };
    control_plane
        .install_crds(&[&chart_crd("clusteraudit"), &chart_crd("auditalert")])
        .unwrap();
    let applied = kubectl_apply(&control_plane, &defaults, true);
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/clusteraudits.clusteraudit.io",
        "serviceaccount/clusteraudit-operator",
        "serviceaccount/clusteraudit-agent",
        "serviceaccount/clusteraudit-collector",
        "clusterrole.rbac.authorization.k8s.io/clusteraudit-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/clusteraudit-operator",
        "role.rbac.authorization.k8s.io/clusteraudit-operator",
        "rolebinding.rbac.authorization.k8s.io/clusteraudit-operator",
        "clusterrole.rbac.authorization.k8s.io/clusteraudit-agent",
        "role.rbac.authorization.k8s.io/clusteraudit-agent",
        "clusterrole.rbac.authorization.k8s.io/clusteraudit-collector",
        "clusterrole.rbac.authorization.k8s.io/clusteraudit-audit-reader",
        "deployment.apps/clusteraudit-operator",
        "service/clusteraudit-operator-metrics",
        "daemonset.apps/clusteraudit-agent",
        "statefulset.apps/clusteraudit-collector",
        "service/clusteraudit-collector",
        "networkpolicy.networking.k8s.io/clusteraudit-collector",
        "networkpolicy.networking.k8s.io/clusteraudit-operator",
        "customresourcedefinition.apiextensions.k8s.io/auditalerts.clusteraudit.io",
        "auditalert.clusteraudit.io/pod-exec-in-kube-system",
        "auditalert.clusteraudit.io/forbidden-burst",
        "auditalert.clusteraudit.io/cluster-admin-binding",
        "auditalert.clusteraudit.io/impersonation",
    ] {
        assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
    }
    assert!(!defaults.contains("kind: ServiceMonitor"));
    assert!(!defaults.contains("kind: PrometheusRule"));
    assert!(!defaults.contains("grafana_dashboard"));

    // Non-default values need the prometheus-operator's ServiceMonitor kind; a stand-in CRD
    // gives the kube-apiserver the kind to check the rest against.
    let stand_in = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    kubectl_apply(&control_plane, stand_in, false);
    // Likewise the PrometheusRule kind.
    kubectl_apply(
        &control_plane,
        &stand_in
            .replace("servicemonitors", "prometheusrules")
            .replace("ServiceMonitor", "PrometheusRule"),
        false,
    );
    for crd in ["servicemonitors", "prometheusrules"] {
        let established = control_plane
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.monitoring.coreos.com"),
            ])
            .output()
            .unwrap();
        assert!(established.status.success());
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
agent:
  kubernetesDir: /srv/kubernetes
  readyzURL: https://127.0.0.1:8443/readyz
  logLevel: debug
collector:
  port: 9443
  service: {clusterIP: 10.96.0.50}
  tls: {secretName: audit-collector-tls}
  storage: {size: 100Gi, storageClassName: fast-ssd}
  maxBodyBytes: 33554432
networkPolicy:
  enabled: true
  webhookFrom: [{ipBlock: {cidr: 10.0.0.0/24}}]
  apiFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dashboards}}}]
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
prometheusRule: {enabled: true, labels: {release: prometheus}, alertLabels: {team: platform}}
grafanaDashboard: {enabled: true, annotations: {grafana_folder: Audit}}
"#,
    )
    .unwrap();
    let custom = helm_template(&control_plane, &["--values", values.to_str().unwrap()]);
    assert!(
        custom.contains("replicas: 2")
            && custom.contains("registry.example.internal/clusteraudit:dev")
    );
    assert!(
        !custom.contains("kind: ServiceAccount\nmetadata:\n  name: clusteraudit-operator\n"),
        "{custom}"
    );
    assert!(custom.contains("name: platform-audit"));
    for text in [
        "--manifest=/srv/kubernetes/manifests/kube-apiserver.yaml",
        "path: /srv/kubernetes",
        "clusterIP: 10.96.0.50",
        "--listen=0.0.0.0:9443",
        "--max-body-bytes=33554432",
        "storageClassName: fast-ssd",
        "secretName: audit-collector-tls",
        "cidr: 10.0.0.0/24",
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "team: platform",
        "grafana_dashboard: \"1\"",
        "grafana_folder: Audit",
    ] {
        assert!(custom.contains(text), "{text} missing from:\n{custom}");
    }
    let applied = kubectl_apply(&control_plane, &custom, true);
    for kind in [
        "deployment.apps/clusteraudit-operator",
        "daemonset.apps/clusteraudit-agent",
        "statefulset.apps/clusteraudit-collector",
        "servicemonitor.monitoring.coreos.com/clusteraudit",
        "prometheusrule.monitoring.coreos.com/clusteraudit",
        "configmap/clusteraudit-dashboard",
    ] {
        assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
    }

    // On OpenSearch: several replicas behind the one Service, credentials from a Secret.
    let opensearch_values = control_plane.dir().join("opensearch-values.yaml");
    std::fs::write(
        &opensearch_values,
        r#"
collector:
  replicas: 3
  store:
    type: opensearch
    opensearch:
      url: https://opensearch.logging.svc:9200
      credentialsSecret: opensearch-credentials
      caFromSecret: true
networkPolicy:
  webhookFrom: [{ipBlock: {cidr: 10.0.0.0/24}}]
"#,
    )
    .unwrap();
    let on_opensearch = helm_template(
        &control_plane,
        &["--values", opensearch_values.to_str().unwrap()],
    );
    for text in [
        "replicas: 3",
        "--store=opensearch",
        "--opensearch-url=https://opensearch.logging.svc:9200",
        "--opensearch-username=$(OPENSEARCH_USERNAME)",
        "--opensearch-password-file=/etc/clusteraudit/opensearch/password",
        "--opensearch-ca-file=/etc/clusteraudit/opensearch/ca.crt",
        "secretName: opensearch-credentials",
        "--max-backlog-bytes=2147483648",
    ] {
        assert!(
            on_opensearch.contains(text),
            "{text} missing from:\n{on_opensearch}"
        );
    }
    assert!(!defaults.contains("--store=opensearch") && !defaults.contains("replicas: 3"));
    let applied = kubectl_apply(&control_plane, &on_opensearch, true);
    assert!(
        applied.contains("statefulset.apps/clusteraudit-collector"),
        "{applied}"
    );

    // Applied for real, the operator's identity can do its job and nothing more.
    kubectl_apply(&control_plane, &defaults, false);
    let ns = Some(NAMESPACE);
    let operator = "clusteraudit-operator";
    let agent = "clusteraudit-agent";
    let collector = "clusteraudit-collector";
    for (who, verb, resource, namespace) in [
        (operator, "watch", "clusteraudits.clusteraudit.io", None),
        (
            operator,
            "patch",
            "clusteraudits.clusteraudit.io/status",
            None,
        ),
        (operator, "create", "events.events.k8s.io", Some("default")),
        (operator, "watch", "auditalerts.clusteraudit.io", None),
        (operator, "update", "leases.coordination.k8s.io", ns),
        (operator, "create", "secrets", ns),
        (operator, "delete", "secrets", ns),
        (operator, "get", "services/clusteraudit-collector", ns),
        (agent, "watch", "clusteraudits.clusteraudit.io", None),
        (agent, "update", "leases.coordination.k8s.io", ns),
        (agent, "get", "secrets", ns),
        (
            collector,
            "create",
            "tokenreviews.authentication.k8s.io",
            None,
        ),
        (
            collector,
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            None,
        ),
    ] {
        assert!(
            can_i(&control_plane, who, verb, resource, namespace),
            "{who} cannot {verb} {resource}"
        );
    }
    for (who, verb, resource, namespace) in [
        (operator, "delete", "clusteraudits.clusteraudit.io", None),
        (operator, "update", "auditalerts.clusteraudit.io", None),
        (agent, "list", "auditalerts.clusteraudit.io", None),
        (collector, "list", "auditalerts.clusteraudit.io", None),
        (operator, "get", "secrets", Some("kube-system")),
        (operator, "list", "secrets", None),
        (operator, "create", "pods", ns),
        (operator, "list", "nodes", None),
        (operator, "get", "services/kubernetes", Some("default")),
        (
            operator,
            "update",
            "leases.coordination.k8s.io",
            Some("kube-system"),
        ),
        (
            operator,
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
        (agent, "patch", "clusteraudits.clusteraudit.io/status", None),
        (agent, "list", "secrets", ns),
        (agent, "create", "secrets", ns),
        (agent, "get", "secrets", Some("kube-system")),
        (agent, "create", "pods", None),
        (collector, "get", "secrets", ns),
        (collector, "list", "clusteraudits.clusteraudit.io", None),
    ] {
        assert!(
            !can_i(&control_plane, who, verb, resource, namespace),
            "{who} may {verb} {resource}"
        );
    }
    for (who, verb, resource, allowed) in [
        (operator, "create", "topics", true),
        (operator, "delete", "topics", true),
        (operator, "get", "auditevents", true),
        (agent, "create", "topics", false),
        (agent, "get", "auditevents", false),
        (collector, "create", "topics", false),
        (collector, "get", "auditevents", false),
    ] {
        assert_eq!(
            may_in_collector(&control_plane, who, verb, resource).await,
            allowed,
            "{who} {verb} {resource}"
        );
    }
}

/// The agent's DaemonSet as `helm template` renders it with `extra` values, without a cluster.
fn rendered_agent(extra: &[&str]) -> serde_json::Value {
    rendered(&["kind: DaemonSet"], extra)
}

/// The first document `helm template` renders with `extra` values that holds all of `lines`.
fn rendered(lines: &[&str], extra: &[&str]) -> serde_json::Value {
    let binaries = clusteraudit_testkit::Binaries::locate().expect("helm is provided");
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(binaries.helm())
        .args([
            "template",
            "clusteraudit",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/clusteraudit"),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            &kubernetes_version(),
            "--set",
            "networkPolicy.allowWebhookFromAnywhere=true",
        ])
        .args(extra)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.split("\n---")
        .filter(|doc| lines.iter().all(|line| doc.contains(line)))
        .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).expect("a YAML document"))
        .next()
        .unwrap_or_else(|| panic!("the chart renders no document with {lines:?}"))
}

#[test]
#[ignore = "needs helm from the control plane's binaries: scripts/test runs it"]
fn the_operator_presents_a_token_minted_for_the_collectors_audience() {
    let operator = |extra: &[&str]| {
        let deployment = rendered(&["kind: Deployment", "component: operator"], extra);
        let pod = deployment["spec"]["template"]["spec"].clone();
        let args: Vec<String> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        (pod, args)
    };
    let (pod, args) = operator(&[]);
    assert!(
        args.contains(
            &"--collector-token-file=/var/run/secrets/clusteraudit/collector-token/token"
                .to_string()
        ),
        "{args:?}"
    );
    let projected = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "collector-token")
        .expect("a projected token volume");
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "clusteraudit"
    );
    // Without an audience the collector takes the kube-apiserver's own, and so the plain token.
    let (pod, args) = operator(&["--set", "collector.tokenAudience="]);
    assert!(
        args.contains(
            &"--collector-token-file=/var/run/secrets/kubernetes.io/serviceaccount/token"
                .to_string()
        ),
        "{args:?}"
    );
    assert!(
        !pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "collector-token")
    );
}

#[test]
#[ignore = "needs helm from the control plane's binaries: scripts/test runs it"]
fn the_agent_mounts_only_what_it_writes_and_pins_the_webhook() {
    for (extra, dir, pinned) in [
        (
            vec![],
            "/etc/kubernetes",
            vec!["https://clusteraudit-collector.clusteraudit-system.svc:8443/v1/webhook"],
        ),
        (
            vec![
                "--set",
                "agent.kubernetesDir=/srv/kubernetes",
                "--set",
                "collector.service.clusterIP=10.96.0.50",
                "--set",
                "collector.port=9443",
                "--set",
                "agent.extraWebhookServers[0]=https://127.0.0.1:9443/v1/webhook",
            ],
            "/srv/kubernetes",
            vec![
                "https://clusteraudit-collector.clusteraudit-system.svc:9443/v1/webhook",
                "https://10.96.0.50:9443/v1/webhook",
                "https://127.0.0.1:9443/v1/webhook",
            ],
        ),
    ] {
        let daemonset = rendered_agent(&extra);
        let pod = &daemonset["spec"]["template"]["spec"];
        // The manifests and the agent's own directory; not the directory holding pki/ca.key.
        let host_paths: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["hostPath"]["path"].as_str())
            .collect();
        assert_eq!(
            host_paths,
            [format!("{dir}/manifests"), format!("{dir}/clusteraudit")],
            "{extra:?}"
        );
        let container = &pod["containers"][0];
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert!(mounts.contains(&format!("{dir}/manifests").as_str()));
        assert!(mounts.contains(&format!("{dir}/clusteraudit").as_str()));
        assert!(!mounts.contains(&dir), "{mounts:?}");
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let servers: Vec<&str> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--webhook-server="))
            .collect();
        assert_eq!(servers, pinned, "{args:?}");
        assert!(args.contains(&"--webhook-ca-file=/etc/clusteraudit/collector-tls/ca.crt"));
        assert!(args.contains(&format!("--state-dir={dir}/clusteraudit").as_str()));
        // The CA comes from the collector's TLS Secret, and only the CA.
        let secret = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v.get("secret"))
            .expect("the CA's Secret volume");
        assert_eq!(
            secret["items"],
            serde_json::json!([{"key": "ca.crt", "path": "ca.crt"}])
        );
    }
}
