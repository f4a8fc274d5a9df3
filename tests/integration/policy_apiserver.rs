//! The policy engine against its judge, the real kube-apiserver: every rendered profile is a policy
//! it starts with, and for several policies the level it records for each of hundreds of varied
//! requests is exactly the level the evaluator predicts.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use clusteraudit_core::{
    api::{PolicySpec, Profile},
    audit::{Event, GroupResources, Level, Policy, PolicyRule, Stage},
    policy::{Evaluator, RequestAttributes, render},
};
use clusteraudit_testkit::{ControlPlane, eventually};
use futures::StreamExt;
use serde_json::json;

/// Who sends a request, and who the policy sees.
#[derive(Clone)]
struct Identity {
    label: &'static str,
    client: reqwest::Client,
    /// The authenticated user and groups, which is what the policy is evaluated against (an
    /// impersonator, not the impersonated).
    user: String,
    groups: Vec<String>,
    impersonate: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct Probe {
    id: usize,
    method: reqwest::Method,
    path: String,
    body: Option<serde_json::Value>,
    verb: String,
    resource_request: bool,
    api_group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

fn base_client(control_plane: &ControlPlane) -> reqwest::ClientBuilder {
    clusteraudit_io::tls::install_crypto_provider();
    let ca = std::fs::read(control_plane.pki_dir().join("ca.crt")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30))
}

async fn identities(control_plane: &ControlPlane) -> Vec<Identity> {
    let pki = control_plane.pki_dir();
    let mut admin_pem = std::fs::read(pki.join("admin.crt")).unwrap();
    admin_pem.extend(std::fs::read(pki.join("admin.key")).unwrap());
    let admin = base_client(control_plane)
        .identity(reqwest::Identity::from_pem(&admin_pem).unwrap())
        .build()
        .unwrap();
    let token_client = |token: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        base_client(control_plane)
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let authenticated = |groups: &[&str]| {
        let mut all: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        all.push("system:authenticated".into());
        all
    };
    let mut identities = vec![Identity {
        label: "admin",
        client: admin.clone(),
        user: "clusteraudit-admin".into(),
        groups: authenticated(&["system:masters"]),
        impersonate: None,
    }];
    for (label, groups) in [
        ("alice", &["devs"][..]),
        ("bob", &["ops"][..]),
        ("mallory", &[][..]),
    ] {
        let user = control_plane.user(label).unwrap();
        identities.push(Identity {
            label,
            client: token_client(&user.token),
            user: label.into(),
            groups: authenticated(groups),
            impersonate: None,
        });
    }

    // A service account's token, from the TokenRequest API.
    let endpoint = control_plane.endpoint().unwrap();
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/namespaces/shop/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}}),
        ),
    ] {
        let response = admin
            .request(method, format!("{endpoint}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success() || response.status() == 409,
            "{path}: {}",
            response.status()
        );
    }
    let token: serde_json::Value = admin
        .post(format!("{endpoint}/api/v1/namespaces/shop/serviceaccounts/builder/token"))
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    identities.push(Identity {
        label: "builder",
        client: token_client(token["status"]["token"].as_str().expect("a token")),
        user: "system:serviceaccount:shop:builder".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:shop".into(),
            "system:authenticated".into(),
        ],
        impersonate: None,
    });
    identities.push(Identity {
        label: "admin-as-alice",
        client: admin,
        user: "clusteraudit-admin".into(),
        groups: authenticated(&["system:masters"]),
        impersonate: Some("alice"),
    });
    identities
}

struct ResourceKind {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    namespaced: bool,
    subresources: &'static [&'static str],
}

const KINDS: &[ResourceKind] = &[
    ResourceKind {
        group: "",
        version: "v1",
        resource: "pods",
        namespaced: true,
        subresources: &["log", "status", "eviction"],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "secrets",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "configmaps",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        namespaced: true,
        subresources: &["token"],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "namespaces",
        namespaced: false,
        subresources: &["status", "finalize"],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "nodes",
        namespaced: false,
        subresources: &["status"],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "events",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "endpoints",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "",
        version: "v1",
        resource: "services",
        namespaced: true,
        subresources: &["status"],
    },
    ResourceKind {
        group: "apps",
        version: "v1",
        resource: "deployments",
        namespaced: true,
        subresources: &["scale", "status"],
    },
    ResourceKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        resource: "clusterroles",
        namespaced: false,
        subresources: &[],
    },
    ResourceKind {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "tokenreviews",
        namespaced: false,
        subresources: &[],
    },
    ResourceKind {
        group: "events.k8s.io",
        version: "v1",
        resource: "events",
        namespaced: true,
        subresources: &[],
    },
    ResourceKind {
        group: "discovery.k8s.io",
        version: "v1",
        resource: "endpointslices",
        namespaced: true,
        subresources: &[],
    },
];

const NAMES: [&str; 3] = ["web", "db", "controller-leader"];

/// A deterministic spread of requests: every kind, verb, subresource and non-resource path, by
/// turns of identity, namespace and object name.
fn probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut next = 0usize;
    let mut push = |probe: Probe| {
        // The kube-apiserver reads /namespaces/{name}[/status|/finalize] as a request in that
        // namespace: its audit policy sees the namespace's own name as the namespace.
        let namespace = if probe.resource == "namespaces" && !probe.name.is_empty() {
            probe.name.clone()
        } else {
            probe.namespace.clone()
        };
        probes.push(Probe {
            id: probes.len(),
            namespace,
            ..probe
        });
    };
    for kind in KINDS {
        let prefix = if kind.group.is_empty() {
            format!("/api/{}", kind.version)
        } else {
            format!("/apis/{}/{}", kind.group, kind.version)
        };
        let namespaces: &[&str] = if kind.namespaced {
            &["shop", "kube-system", ""]
        } else {
            &[""]
        };
        for namespace in namespaces {
            let collection = if namespace.is_empty() {
                format!("{prefix}/{}", kind.resource)
            } else {
                format!("{prefix}/namespaces/{namespace}/{}", kind.resource)
            };
            let cluster_wide_list_only = kind.namespaced && namespace.is_empty();
            let verbs: &[&str] = if cluster_wide_list_only {
                &["list", "watch"]
            } else {
                &[
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection",
                ]
            };
            for verb in verbs {
                next += 1;
                let name = NAMES[next % NAMES.len()];
                let (method, path, named, body) = match *verb {
                    "get" => (
                        reqwest::Method::GET,
                        format!("{collection}/{name}"),
                        true,
                        None,
                    ),
                    "list" => (reqwest::Method::GET, collection.clone(), false, None),
                    "watch" => (
                        reqwest::Method::GET,
                        format!("{collection}?watch=true&timeoutSeconds=1"),
                        false,
                        None,
                    ),
                    "create" => (
                        reqwest::Method::POST,
                        collection.clone(),
                        false,
                        Some(json!({"metadata": {"name": format!("difftest-{next}")}})),
                    ),
                    "update" => (
                        reqwest::Method::PUT,
                        format!("{collection}/{name}"),
                        true,
                        Some(json!({"metadata": {"name": name}})),
                    ),
                    "patch" => (
                        reqwest::Method::PATCH,
                        format!("{collection}/{name}"),
                        true,
                        Some(json!({"metadata": {"labels": {"difftest": "yes"}}})),
                    ),
                    "delete" => (
                        reqwest::Method::DELETE,
                        format!("{collection}/{name}"),
                        true,
                        None,
                    ),
                    _ => (reqwest::Method::DELETE, collection.clone(), false, None),
                };
                push(Probe {
                    id: 0,
                    method,
                    path,
                    body,
                    verb: verb.to_string(),
                    resource_request: true,
                    api_group: kind.group.into(),
                    resource: kind.resource.into(),
                    subresource: String::new(),
                    namespace: namespace.to_string(),
                    name: if named { name.into() } else { String::new() },
                });
            }
            if cluster_wide_list_only {
                continue;
            }
            for sub in kind.subresources {
                for (verb, method) in [
                    ("get", reqwest::Method::GET),
                    ("patch", reqwest::Method::PATCH),
                    ("create", reqwest::Method::POST),
                    ("update", reqwest::Method::PUT),
                ] {
                    next += 1;
                    let name = NAMES[next % NAMES.len()];
                    push(Probe {
                        id: 0,
                        body: (method != reqwest::Method::GET)
                            .then(|| json!({"metadata": {"name": name}})),
                        method,
                        path: format!("{collection}/{name}/{sub}"),
                        verb: verb.into(),
                        resource_request: true,
                        api_group: kind.group.into(),
                        resource: kind.resource.into(),
                        subresource: sub.to_string(),
                        namespace: namespace.to_string(),
                        name: name.into(),
                    });
                }
            }
        }
    }
    for path in [
        "/healthz",
        "/healthz/etcd",
        "/readyz",
        "/readyz/ping",
        "/livez",
        "/version",
        "/version/extra",
        "/api",
        "/apis",
        "/apis/apps",
        "/openapi/v2",
        "/metrics",
        "/swagger.json",
        "/logs/",
        "/debug/flags/v",
    ] {
        for (verb, method) in [
            ("get", reqwest::Method::GET),
            ("post", reqwest::Method::POST),
        ] {
            push(Probe {
                id: 0,
                method,
                path: path.into(),
                body: None,
                verb: verb.into(),
                resource_request: false,
                api_group: String::new(),
                resource: String::new(),
                subresource: String::new(),
                namespace: String::new(),
                name: String::new(),
            });
        }
    }
    probes
}

fn edge_case_policy() -> Policy {
    let gr = |group: &str, resources: &[&str], names: &[&str]| GroupResources {
        group: group.into(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
    };
    let s = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Policy {
        api_version: "audit.k8s.io/v1".into(),
        kind: "Policy".into(),
        metadata: None,
        omit_stages: vec![Stage::RequestReceived],
        omit_managed_fields: Some(true),
        rules: vec![
            PolicyRule {
                users: s(&["mallory"]),
                verbs: s(&["get"]),
                ..PolicyRule::at(Level::None)
            },
            PolicyRule {
                user_groups: s(&["ops"]),
                resources: vec![gr("apps", &["*/scale"], &[])],
                ..PolicyRule::at(Level::RequestResponse)
            },
            PolicyRule {
                resources: vec![gr("", &["pods/*"], &[])],
                omit_stages: vec![Stage::ResponseStarted],
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule {
                resources: vec![gr("", &["configmaps"], &["web"])],
                ..PolicyRule::at(Level::RequestResponse)
            },
            PolicyRule {
                namespaces: s(&[""]),
                verbs: s(&["list", "watch"]),
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule {
                namespaces: s(&[""]),
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule {
                non_resource_urls: s(&["/healthz*", "/version"]),
                ..PolicyRule::at(Level::None)
            },
            PolicyRule {
                verbs: s(&["post"]),
                non_resource_urls: s(&["*"]),
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule {
                resources: vec![gr("*", &["deployments", "leases"], &[])],
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule {
                user_groups: s(&["system:serviceaccounts:shop"]),
                ..PolicyRule::at(Level::None)
            },
            PolicyRule {
                namespaces: s(&["kube-system"]),
                verbs: s(&["list", "watch"]),
                ..PolicyRule::at(Level::RequestResponse)
            },
            PolicyRule {
                resources: vec![gr("", &["*"], &[]), gr("events.k8s.io", &[], &[])],
                users: s(&["alice", "bob"]),
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule {
                non_resource_urls: s(&["/api*"]),
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule {
                verbs: s(&["get", "delete"]),
                ..PolicyRule::at(Level::Request)
            },
        ],
    }
}

fn spec(profile: Profile, exclude_noise: bool, custom: bool) -> PolicySpec {
    let mut spec = PolicySpec {
        profile,
        exclude_noise,
        ..PolicySpec::default()
    };
    if custom {
        spec.rules = vec![
            PolicyRule {
                resources: vec![GroupResources {
                    group: "rbac.authorization.k8s.io".into(),
                    resources: vec!["clusterroles".into(), "clusterrolebindings".into()],
                    resource_names: vec![],
                }],
                ..PolicyRule::at(Level::RequestResponse)
            },
            PolicyRule {
                users: vec!["mallory".into()],
                omit_stages: vec![Stage::ResponseStarted],
                ..PolicyRule::at(Level::Metadata)
            },
        ];
    }
    spec
}

async fn run_with_policy(
    control_plane: &mut ControlPlane,
    policy_yaml: &str,
    tag: &str,
) -> std::path::PathBuf {
    let started = std::time::Instant::now();
    let dir = control_plane.dir().join(format!("audit-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy_yaml).unwrap();
    let log_path = dir.join("audit.log");
    control_plane
        .restart_apiserver(vec![
            format!("--audit-policy-file={}", policy_path.display()),
            format!("--audit-log-path={}", log_path.display()),
            "--audit-log-format=json".into(),
        ])
        .await
        .unwrap_or_else(|err| panic!("kube-apiserver did not start with policy {tag}: {err}"));
    eprintln!(
        "kube-apiserver ready with policy {tag} in {:?}",
        started.elapsed()
    );
    log_path
}

fn read_log(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// Sends every probe as every identity (by turns), then compares each recorded level with the
/// evaluator's prediction. Returns (requests, mismatches).
async fn differential(
    control_plane: &mut ControlPlane,
    policy: &Policy,
    tag: &str,
) -> (usize, Vec<String>) {
    let log_path = run_with_policy(control_plane, &policy.to_yaml(), tag).await;
    let identities = identities(control_plane).await;
    let endpoint = control_plane.endpoint().unwrap();
    let evaluator = Evaluator::new(policy);
    let probes = probes();

    // Each probe goes out as two identities, chosen by turns, so that users, groups and
    // impersonation meet every kind of request.
    let mut sends = Vec::new();
    for probe in &probes {
        for turn in 0..2 {
            let identity = identities[(probe.id * 2 + turn) % identities.len()].clone();
            sends.push((
                probe.clone(),
                identity,
                format!("difftest/{tag}/{}/{turn}", probe.id),
            ));
        }
    }
    let total = sends.len();
    let responses: Vec<_> = futures::stream::iter(sends.clone())
        .map(|(probe, identity, agent)| {
            let endpoint = endpoint.clone();
            async move {
                let mut request = identity
                    .client
                    .request(probe.method.clone(), format!("{endpoint}{}", probe.path))
                    .header(reqwest::header::USER_AGENT, &agent);
                if let Some(user) = identity.impersonate {
                    request = request.header("Impersonate-User", user);
                }
                if let Some(body) = &probe.body {
                    let content_type = if probe.method == reqwest::Method::PATCH {
                        "application/merge-patch+json"
                    } else {
                        "application/json"
                    };
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, content_type)
                        .body(body.to_string());
                }
                request.send().await.map(|r| r.status().as_u16())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        responses.iter().all(|r| r.is_ok()),
        "a request failed at the transport level"
    );

    // Predictions, and a wait until every request predicted to be logged is in the log.
    let mut expected: HashMap<String, (Level, Vec<Stage>, String)> = HashMap::new();
    for (probe, identity, agent) in &sends {
        let attributes = RequestAttributes {
            user: &identity.user,
            groups: &identity.groups,
            verb: &probe.verb,
            resource_request: probe.resource_request,
            api_group: &probe.api_group,
            resource: &probe.resource,
            subresource: &probe.subresource,
            namespace: &probe.namespace,
            name: &probe.name,
            path: probe.path.split('?').next().unwrap(),
        };
        let decision = evaluator.evaluate(&attributes);
        expected.insert(
            agent.clone(),
            (
                decision.level,
                decision.omit_stages.clone(),
                format!(
                    "{} {} {} as {}",
                    probe.verb, probe.method, probe.path, identity.label
                ),
            ),
        );
    }
    let wanted: Vec<&String> = expected
        .iter()
        .filter(|(_, (level, _, _))| *level != Level::None)
        .map(|(agent, _)| agent)
        .collect();
    // What is still missing after a minute, the mismatches below name one by one.
    let by_agent = eventually(
        "every logged request's ResponseComplete",
        Duration::from_secs(60),
        async || {
            let mut by_agent: BTreeMap<String, Vec<Event>> = BTreeMap::new();
            for event in read_log(&log_path) {
                if let Some(agent) = event.user_agent.clone() {
                    by_agent.entry(agent).or_default().push(event);
                }
            }
            let complete = wanted.iter().all(|agent| {
                by_agent
                    .get(*agent)
                    .is_some_and(|events| events.iter().any(|e| e.stage == Stage::ResponseComplete))
            });
            if complete {
                Ok(by_agent)
            } else {
                Err(by_agent)
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| timed_out.last);

    let mut mismatches = Vec::new();
    for (agent, (level, omit, what)) in &expected {
        let events = by_agent.get(agent).map(Vec::as_slice).unwrap_or_default();
        if *level == Level::None {
            if !events.is_empty() {
                mismatches.push(format!(
                    "{what}: predicted None, logged {:?}",
                    events[0].level
                ));
            }
            continue;
        }
        if events.is_empty() {
            mismatches.push(format!("{what}: predicted {level:?}, not logged"));
            continue;
        }
        for event in events {
            if event.level != *level {
                mismatches.push(format!(
                    "{what}: predicted {level:?}, logged {:?}",
                    event.level
                ));
                break;
            }
            if omit.contains(&event.stage) {
                mismatches.push(format!(
                    "{what}: stage {:?} logged though omitted",
                    event.stage
                ));
                break;
            }
        }
    }
    let none = expected
        .values()
        .filter(|(l, _, _)| *l == Level::None)
        .count();
    let levels: BTreeMap<String, usize> =
        expected
            .values()
            .fold(BTreeMap::new(), |mut acc, (l, _, _)| {
                *acc.entry(format!("{l:?}")).or_default() += 1;
                acc
            });
    eprintln!(
        "policy {tag}: {total} requests, predicted levels {levels:?} ({none} not logged), {} mismatches",
        mismatches.len()
    );
    // Replayed through the policy that recorded them, the real events keep their levels: the
    // preview reconstructs the attributes the kube-apiserver evaluated (a create's missing name,
    // a namespace's own name as its namespace, the path without its query).
    let policy_path = log_path.with_file_name("policy.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args(["policy", "preview", "--per-event", "-f"])
        .arg(&policy_path)
        .arg("--events")
        .arg(&log_path)
        .output()
        .expect("clusteraudit runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let recorded: HashMap<String, Level> = read_log(&log_path)
        .into_iter()
        .map(|e| (e.audit_id.clone(), e.level))
        .collect();
    let mut replayed = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let outcome: serde_json::Value = serde_json::from_str(line).unwrap();
        let level: Level = serde_json::from_value(outcome["level"].clone()).unwrap();
        let audit_id = outcome["auditID"].as_str().unwrap();
        if recorded[audit_id] != level {
            mismatches.push(format!(
                "preview of event {audit_id}: {level:?}, recorded {:?}",
                recorded[audit_id]
            ));
        }
        replayed += 1;
    }
    assert!(
        replayed >= wanted.len(),
        "{tag}: preview replayed {replayed} events"
    );
    (total, mismatches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn the_kube_apiserver_agrees_with_the_policy_engine() {
    let mut control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");

    // Every profile, with and without noise exclusions and custom rules, is a policy the real
    // kube-apiserver starts with.
    for profile in [
        Profile::None,
        Profile::Metadata,
        Profile::Default,
        Profile::WriteRequestBodies,
        Profile::AllRequestBodies,
    ] {
        for noise in [false, true] {
            for custom in [false, true] {
                let rendered = render(&spec(profile, noise, custom)).unwrap();
                let tag = format!("{profile:?}-noise-{noise}-custom-{custom}");
                run_with_policy(&mut control_plane, &rendered.yaml, &tag).await;
            }
        }
    }

    // The levels it records are the levels the evaluator predicts, and the preview of its own
    // log through the same policy changes nothing.
    let policies = [
        (
            "default-noise-custom",
            render(&spec(Profile::Default, true, true)).unwrap().policy,
        ),
        (
            "all-bodies",
            render(&spec(Profile::AllRequestBodies, false, false))
                .unwrap()
                .policy,
        ),
        ("edge-cases", edge_case_policy()),
    ];
    let mut report = Vec::new();
    for (tag, policy) in &policies {
        let (requests, mismatches) = differential(&mut control_plane, policy, tag).await;
        assert!(requests >= 300, "{tag}: only {requests} requests");
        if !mismatches.is_empty() {
            report.push(format!(
                "{tag}: {} of {requests} requests disagree:\n  {}",
                mismatches.len(),
                mismatches
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
