//! The collector end to end with the real kube-apiserver: its webhook backend posts to the
//! collector over TLS with a bearer token, people act on the cluster, and the read API (behind
//! TokenReview and SubjectAccessReview against the same cluster) finds what they did.

use crate::support::write;
use clusteraudit_core::{api::PolicySpec, policy::render};
use clusteraudit_testkit::{ControlPlane, collector_rbac, pki::CertificateAuthority};
use serde_json::{Value, json};

fn kubectl(control_plane: &ControlPlane, args: &[&str]) -> std::process::Output {
    control_plane
        .kubectl()
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn kubectl_as(control_plane: &ControlPlane, user: &str, args: &[&str]) -> std::process::Output {
    let mut command = control_plane.kubectl();
    command.args(["--context", user]).args(args);
    command.output().expect("kubectl runs")
}

fn ok(output: std::process::Output) {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn audit_events_from_the_real_kube_apiserver_are_found_by_search() {
    let mut control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    let dir = control_plane.dir().join("collector");
    std::fs::create_dir_all(&dir).unwrap();
    let (collector, webhook_config) = crate::support::start_tls_collector(
        control_plane.kubeconfig_path(),
        &dir,
        "webhook-secret-token",
    )
    .await;

    let policy = render(&PolicySpec::default()).unwrap();
    let policy_path = dir.join("policy.yaml");
    write(&policy_path, &policy.yaml);
    control_plane
        .restart_apiserver(vec![
            format!("--audit-policy-file={}", policy_path.display()),
            format!("--audit-webhook-config-file={webhook_config}"),
            "--audit-webhook-batch-max-wait=1s".into(),
        ])
        .await
        .expect("the kube-apiserver starts with the webhook backend");

    // Who may do what: alice and bob administer namespace shop; alice may read audit logs;
    // mallory may do nothing.
    ok(kubectl(&control_plane, &["create", "namespace", "shop"]));
    // The built-in admin role is filled in by kube-controller-manager, which this control plane
    // does not run: spell the rules out.
    ok(kubectl(
        &control_plane,
        &[
            "create",
            "role",
            "shop-admin",
            "--namespace=shop",
            "--verb=*",
            "--resource=deployments.apps,secrets,pods,pods/exec",
        ],
    ));
    ok(kubectl(
        &control_plane,
        &[
            "create",
            "rolebinding",
            "shop-admins",
            "--namespace=shop",
            "--role=shop-admin",
            "--user=alice",
            "--user=bob",
        ],
    ));
    // auditevents is no resource the apiserver serves, so kubectl's discovery-checked shortcut
    // cannot name it; RBAC rules can.
    control_plane
        .apply_json("collector-rbac", &collector_rbac(&[], &["alice"]))
        .unwrap();

    // What people do.
    ok(kubectl_as(
        &control_plane,
        "alice",
        &[
            "create",
            "deployment",
            "web",
            "--namespace=shop",
            "--image=nginx",
        ],
    ));
    ok(kubectl_as(
        &control_plane,
        "alice",
        &[
            "patch",
            "deployment",
            "web",
            "--namespace=shop",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    ));
    ok(kubectl_as(
        &control_plane,
        "bob",
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--namespace=shop",
            "--from-literal=password=hunter2",
        ],
    ));
    ok(kubectl_as(
        &control_plane,
        "bob",
        &["get", "secret", "db", "--namespace=shop", "-o", "name"],
    ));
    // An exec attempt (kubectl exec would stop at the missing pod; the request itself is what
    // an attacker sends).
    let empty = dir.join("empty.json");
    write(&empty, "{}");
    let exec = kubectl_as(
        &control_plane,
        "alice",
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/shop/pods/web-0/exec?command=true&stdout=true",
            "-f",
            empty.to_str().unwrap(),
        ],
    );
    assert!(!exec.status.success(), "there is no pod to exec into");
    let denied = kubectl_as(
        &control_plane,
        "mallory",
        &["get", "secrets", "--namespace=shop"],
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));
    ok(kubectl_as(
        &control_plane,
        "alice",
        &["delete", "deployment", "web", "--namespace=shop"],
    ));

    let alice = control_plane.user("alice").unwrap().token.clone();
    let bob = control_plane.user("bob").unwrap().token.clone();
    let mallory = control_plane.user("mallory").unwrap().token.clone();

    // "Who deleted deployment web in namespace shop?"
    let deletions = collector
        .search_until(
            &alice,
            "verb:delete and resource:deployments and namespace:shop",
            |e| !e.is_empty(),
        )
        .await;
    assert_eq!(deletions.len(), 1, "{deletions:#?}");
    let deletion = &deletions[0];
    assert_eq!(deletion["user"]["username"], "alice");
    assert_eq!(deletion["objectRef"]["name"], "web");
    assert_eq!(deletion["objectRef"]["apiGroup"], "apps");
    assert_eq!(deletion["responseStatus"]["code"], 200);
    assert_eq!(
        deletion["level"], "Request",
        "the Default profile records write bodies"
    );

    let patches = collector
        .search_until(&alice, "user:alice verb:patch name:web", |e| !e.is_empty())
        .await;
    assert_eq!(patches[0]["objectRef"]["resource"], "deployments");

    // The secret read is recorded, at Metadata: its contents never reach the log.
    let reads = collector
        .search_until(&alice, "resource:secrets and user:bob and verb:get", |e| {
            !e.is_empty()
        })
        .await;
    assert_eq!(reads[0]["objectRef"]["name"], "db");
    assert_eq!(reads[0]["level"], "Metadata");
    let creates = collector
        .search_until(&alice, "resource:secrets and verb:create", |e| {
            !e.is_empty()
        })
        .await;
    assert!(
        creates[0].get("requestObject").is_none(),
        "a secret body reached the log"
    );
    assert!(!creates[0].to_string().contains("hunter2"));

    let execs = collector
        .search_until(&alice, "subresource:exec", |e| !e.is_empty())
        .await;
    assert_eq!(execs[0]["user"]["username"], "alice");
    assert_eq!(execs[0]["objectRef"]["resource"], "pods");

    let forbidden = collector
        .search_until(&alice, "user:mallory and code:403", |e| !e.is_empty())
        .await;
    assert_eq!(
        forbidden[0]["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    let forbidden_by_decision = collector
        .search_until(&alice, "decision:forbid resource:secrets", |e| {
            !e.is_empty()
        })
        .await;
    assert!(!forbidden_by_decision.is_empty());

    // Health probes are noise the policy drops.
    let probes = collector
        .search_until(
            &alice,
            "uri:/readyz* or uri:/healthz* or uri:/livez*",
            |_| true,
        )
        .await;
    assert!(probes.is_empty(), "{probes:#?}");
    let everything = collector.search_until(&alice, "", |e| !e.is_empty()).await;
    assert!(everything.len() > 10);

    // The same question from a shell: `clusteraudit search`, and `kubectl audit search` as a
    // kubectl plugin, both with the kubeconfig's token (alice's).
    let mut kubeconfig: Value =
        serde_json::from_slice(&std::fs::read(control_plane.kubeconfig_path()).unwrap()).unwrap();
    kubeconfig["current-context"] = json!("alice");
    let alice_kubeconfig = dir.join("alice.kubeconfig");
    write(&alice_kubeconfig, serde_json::to_vec(&kubeconfig).unwrap());
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_clusteraudit"),
        plugin_dir.join("kubectl-audit"),
    )
    .unwrap();
    let search_args = [
        "search".to_string(),
        "verb:delete and resource:deployments and namespace:shop".to_string(),
        "--since=1h".to_string(),
        format!("--server={}", collector.url),
        format!("--ca-file={}", dir.join("collector-ca.crt").display()),
    ];
    let direct = std::process::Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(&search_args)
        .env("KUBECONFIG", &alice_kubeconfig)
        .output()
        .unwrap();
    let plugin = std::process::Command::new(control_plane.binaries().kubectl())
        .arg("audit")
        .args(&search_args)
        .env("KUBECONFIG", &alice_kubeconfig)
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    for (how, output) in [
        ("clusteraudit search", direct),
        ("kubectl audit search", plugin),
    ] {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{how}: {stdout}");
        assert!(
            lines[0].starts_with("TIME") && lines[0].contains("NAMESPACE/NAME"),
            "{how}: {stdout}"
        );
        for expected in ["alice", "delete", "deployments", "shop/web", "200"] {
            assert!(lines[1].contains(expected), "{how}: {stdout}");
        }
    }
    let json_output = std::process::Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(&search_args)
        .args(["-o", "json"])
        .env("KUBECONFIG", &alice_kubeconfig)
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&json_output.stdout).expect("one event as JSON");
    assert_eq!(line["auditID"], deletion["auditID"]);

    // Reading audit logs is itself privileged.
    let (_, route) = collector.get("/v1/route", Some(&alice)).await;
    let topic = route["topicId"].as_str().unwrap().to_string();
    let search = format!("/v1/topics/{topic}/events?q=verb:delete");
    assert_eq!(collector.get(&search, None).await.0, 401);
    assert_eq!(collector.get(&search, Some("not-a-token")).await.0, 401);
    let (status, body) = collector.get(&search, Some(&mallory)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("mallory may not get auditevents.clusteraudit.io")
    );
    assert_eq!(collector.get(&search, Some(&bob)).await.0, 403);
    // A bad query says where and why.
    let (status, body) = collector
        .get(
            &format!("/v1/topics/{topic}/events?q=user%3A"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("column"), "{body}");

    // The webhook itself refuses callers without the token.
    let response = collector
        .http
        .post(format!("{}/v1/webhook", collector.url))
        .header("content-type", "application/json")
        .body(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // ... and accepts a caller with a client certificate from the configured CA, no token.
    let identity =
        reqwest::Identity::from_pem(&std::fs::read(dir.join("webhook-client.pem")).unwrap())
            .unwrap();
    let with_certificate = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.join("collector-ca.crt")).unwrap())
                .unwrap(),
        )
        .identity(identity)
        .build()
        .unwrap();
    let response = with_certificate
        .post(format!("{}/v1/webhook", collector.url))
        .header("content-type", "application/json")
        .body(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A certificate from another CA is refused at the handshake.
    let stranger_ca = CertificateAuthority::generate("strangers").unwrap();
    let stranger = stranger_ca.issue_client("intruder", None).unwrap();
    let intruder = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.join("collector-ca.crt")).unwrap())
                .unwrap(),
        )
        .identity(
            reqwest::Identity::from_pem(
                format!("{}{}", stranger.cert_pem, stranger.key_pem).as_bytes(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let refused = intruder
        .post(format!("{}/v1/webhook", collector.url))
        .header("content-type", "application/json")
        .body(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#)
        .send()
        .await;
    assert!(refused.is_err() || refused.unwrap().status() == 401);
}
