//! The ClusterAudit CRD: generated from the Rust types, committed, and enforced by a real
//! kube-apiserver.

use std::time::Duration;

use clusteraudit_core::api::{ClusterAudit, crd_yaml};
use clusteraudit_testkit::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResourceExt, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams, ValidationDirective},
    core::GroupVersionKind,
    discovery::ApiResource,
    runtime::wait::{await_condition, conditions},
};
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../../examples/clusteraudit.yaml");

#[test]
fn committed_crds_match_the_types() {
    let alert_crd = clusteraudit_core::api::alert::crd_yaml();
    for (path, generated, kind) in [
        ("crds/clusteraudit.yaml", crd_yaml(), "clusteraudit"),
        (
            "charts/clusteraudit/crds/clusteraudit.yaml",
            crd_yaml(),
            "clusteraudit",
        ),
        ("crds/auditalert.yaml", alert_crd.clone(), "auditalert"),
        (
            "charts/clusteraudit/crds/auditalert.yaml",
            alert_crd,
            "auditalert",
        ),
    ] {
        let committed =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
                .unwrap_or_else(|err| panic!("{path} is committed: {err}"));
        assert!(
            committed == generated,
            "{path} differs from what the types generate; regenerate it with \
             `cargo run -- crd {kind} > {path}`"
        );
    }
}

#[test]
fn the_example_decodes_into_the_types() {
    let example: ClusterAudit = serde_saphyr::from_str(EXAMPLE).expect("the example decodes");
    assert_eq!(example.name_any(), "cluster");
    assert_eq!(example.spec.rollout.max_restarts_per_hour, 3);
}

fn example() -> Value {
    serde_saphyr::from_str(EXAMPLE).expect("the example is YAML")
}

/// Sets `value` at a dotted path of `object`, creating objects on the way.
fn set(object: &mut Value, path: &str, value: Value) {
    let mut at = object;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        at = at
            .as_object_mut()
            .expect("an object on the path")
            .entry(part.to_string())
            .or_insert_with(|| json!({}));
    }
    at[parts[parts.len() - 1]] = value;
}

fn unset(object: &mut Value, path: &str) {
    let mut at = object;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        at = &mut at[*part];
    }
    at.as_object_mut()
        .expect("an object on the path")
        .remove(parts[parts.len() - 1]);
}

struct Invalid {
    what: &'static str,
    edit: fn(&mut Value),
    message: &'static str,
}

fn invalid_specs() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "a name other than cluster",
            edit: |o| set(o, "metadata.name", json!("production")),
            message: "there is one ClusterAudit per cluster and it must be named 'cluster'",
        },
        Invalid {
            what: "a profile outside the enum",
            edit: |o| set(o, "spec.policy.profile", json!("Verbose")),
            message: "spec.policy.profile: Unsupported value: \"Verbose\"",
        },
        Invalid {
            what: "retention of zero days",
            edit: |o| set(o, "spec.sink.topic.retentionDays", json!(0)),
            message: "retentionDays must be between 1 and 3650 (ten years)",
        },
        Invalid {
            what: "retention over ten years",
            edit: |o| set(o, "spec.sink.topic.retentionDays", json!(3651)),
            message: "retentionDays must be between 1 and 3650 (ten years)",
        },
        Invalid {
            what: "a malformed duration",
            edit: |o| set(o, "spec.rollout.settleTime", json!("30 seconds")),
            message: "settleTime must be a duration such as 30s, 5m or 1h30m, between 0s and 1h",
        },
        Invalid {
            what: "a health timeout too short to start a kube-apiserver",
            edit: |o| set(o, "spec.rollout.healthTimeout", json!("1s")),
            message: "healthTimeout must be a duration such as 30s, 5m or 1h30m, between 10s and 1h",
        },
        Invalid {
            what: "settleTime longer than minRestartInterval",
            edit: |o| set(o, "spec.rollout.settleTime", json!("6m")),
            message: "settleTime must not be longer than minRestartInterval",
        },
        Invalid {
            what: "minRestartInterval longer than minToggleInterval",
            edit: |o| set(o, "spec.rollout.minRestartInterval", json!("20m")),
            message: "minRestartInterval must not be longer than minToggleInterval",
        },
        Invalid {
            what: "no restarts allowed at all",
            edit: |o| set(o, "spec.rollout.maxRestartsPerHour", json!(0)),
            message: "maxRestartsPerHour must be between 1 and 60",
        },
        Invalid {
            what: "a topic both named and adopted by id",
            edit: |o| set(o, "spec.sink.topic.id", json!("t-123")),
            message: "topic: set either name (to create or find it) or id (to adopt an existing one), not both",
        },
        Invalid {
            what: "a topic adopted by id but also to be created",
            edit: |o| {
                unset(o, "spec.sink.topic.name");
                set(o, "spec.sink.topic.id", json!("t-123"));
            },
            message: "topic: create cannot be true when adopting an existing topic by id",
        },
        Invalid {
            what: "a logset both named and adopted by id",
            edit: |o| set(o, "spec.sink.logset.id", json!("ls-1")),
            message: "logset: set either name (to create or find it) or id (to adopt an existing one), not both",
        },
        Invalid {
            what: "a logset name that is not a DNS label",
            edit: |o| set(o, "spec.sink.logset.name", json!("K8s_Audit")),
            message: "logset name must be a DNS label",
        },
        Invalid {
            what: "a misspelt key in a custom rule",
            edit: |o| {
                set(
                    o,
                    "spec.policy.rules",
                    json!([{"level": "Metadata", "resource": [{"group": ""}]}]),
                )
            },
            message: ".spec.policy.rules[0].resource: field not declared in schema",
        },
        Invalid {
            what: "a custom rule with an unknown level",
            edit: |o| set(o, "spec.policy.rules", json!([{"level": "Everything"}])),
            message: "spec.policy.rules[0].level: Unsupported value: \"Everything\"",
        },
    ]
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&crd_yaml()).expect("the committed CRD decodes");
    crds.patch(
        ClusterAudit::crd_name(),
        &PatchParams::apply("clusteraudit-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD installs by server-side apply");
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            crds,
            ClusterAudit::crd_name(),
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("the CRD is established in time")
    .expect("watching the CRD works");
}

fn dynamic_api(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("clusteraudit.io", "v1alpha1", "ClusterAudit");
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

fn strict_apply(dry_run: bool) -> PatchParams {
    let mut params = PatchParams::apply("clusteraudit-tests");
    params.field_validation = Some(ValidationDirective::Strict);
    params.dry_run = dry_run;
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn the_apiserver_enforces_the_crd() {
    let control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    let client = control_plane.client().await.expect("an admin client");
    install_crd(&client).await;
    let api = dynamic_api(&client);

    // Every refusal is checked on a dry run of the otherwise valid example, so each case fails for
    // its own reason alone.
    let mut failures = Vec::new();
    for case in invalid_specs() {
        let mut object = example();
        (case.edit)(&mut object);
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        match api
            .patch(&name, &strict_apply(true), &Patch::Apply(&object))
            .await
        {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) if status.message.contains(case.message) => {}
            Err(other) => failures.push(format!(
                "{}: refused, but not with {:?}: {other}",
                case.what, case.message
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(invalid_specs().len() >= 8);

    // A minimal object gets every default from the apiserver (sent untyped, so that no client-side
    // default hides a missing server-side one).
    let minimal: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "clusteraudit.io/v1alpha1", "kind": "ClusterAudit",
        "metadata": {"name": "cluster"}, "spec": {}
    }))
    .unwrap();
    let defaulted = api
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &minimal,
        )
        .await
        .expect("an empty spec is valid");
    let spec = &defaulted.data["spec"];
    assert_eq!(spec["enabled"], json!(true));
    assert_eq!(spec["policy"]["profile"], json!("Default"));
    assert_eq!(spec["policy"]["omitStages"], json!(["RequestReceived"]));
    assert_eq!(spec["sink"]["topic"]["retentionDays"], json!(30));
    assert_eq!(spec["sink"]["logset"]["name"], json!("k8s-audit"));
    assert_eq!(spec["rollout"]["healthTimeout"], json!("3m"));
    assert_eq!(spec["rollout"]["maxRestartsPerHour"], json!(3));

    // The example is accepted as it is, and the apiserver fills in the defaults.
    let applied = api
        .patch(
            "cluster",
            &strict_apply(false),
            &Patch::Apply(&serde_json::from_value::<DynamicObject>(example()).unwrap()),
        )
        .await
        .expect("the example is accepted");
    assert_eq!(applied.data["spec"]["rollout"]["settleTime"], json!("30s"));

    // The printer columns show status too.
    let typed: Api<ClusterAudit> = Api::all(client.clone());
    let status = json!({
        "apiVersion": "clusteraudit.io/v1alpha1", "kind": "ClusterAudit",
        "status": {
            "revision": {"latest": "rev-1-3f2a9c"},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "RolledOut",
                "message": "every node runs rev-1-3f2a9c", "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]
        }
    });
    typed
        .patch_status(
            "cluster",
            &PatchParams::apply("clusteraudit-tests").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status is writable through the subresource");

    let output = control_plane
        .kubectl()
        .args(["get", "clusteraudits"])
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ENABLED", "PROFILE", "REVISION", "READY", "AGE"],
        "{stdout}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["cluster", "true", "Default", "rev-1-3f2a9c", "True"],
        "{stdout}"
    );

    // The short name and the wide output (with the Ready reason) work as well.
    let output = control_plane
        .kubectl()
        .args(["get", "caudit", "-o", "wide"])
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().next().unwrap_or_default().contains("REASON"),
        "{stdout}"
    );
    assert!(stdout.contains("RolledOut"), "{stdout}");
}
