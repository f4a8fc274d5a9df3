//! What each scenario asks the kube-apiserver for.

use rand::Rng;
use serde_json::json;

use clusteraudit_core::audit::{Level, UserInfo};

use super::request::{Actor, Failure, Req, kcm};
use super::{Draw, EventGenerator};
use crate::model::Scope::{AnyObject, Cluster, Fixed, OwnNs, OwnObject};
use crate::model::WorkloadKind::{DaemonSet as DS, StatefulSet as SS};
use crate::model::*;

impl EventGenerator {
    pub(super) fn draft(&mut self) -> Req {
        let scenario = self.rng.pick_weighted(SCENARIOS);
        match scenario {
            Scenario::KubeletLeaseUpdate | Scenario::KubeletLeaseGet => {
                let node = self.rng.random_range(0..NODE_COUNT);
                let verb = if matches!(scenario, Scenario::KubeletLeaseGet) {
                    "get"
                } else {
                    "update"
                };
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), verb, &LEASES, "kube-node-lease", name)
                    .query("timeout=10s")
            }
            Scenario::KubeletWatch => {
                let node = self.rng.random_range(0..NODE_COUNT);
                let node_name = self.nodes[node].name.clone();
                let actor = Actor::Node(node);
                match self.rng.random_range(0..8) {
                    0 | 1 => Req::new(actor, "watch", &PODS, "", "")
                        .field_selector(&format!("spec.nodeName={node_name}")),
                    2 => Req::new(actor, "watch", &NODES, "", "")
                        .field_selector(&format!("metadata.name={node_name}")),
                    3 | 4 => {
                        let pod = self.pod_on_node(node);
                        let (ns, w) = (self.pods[pod].namespace, self.pods[pod].workload);
                        let res = if self.rng.random_bool(0.6) {
                            &CONFIGMAPS
                        } else {
                            &SECRETS
                        };
                        let name = self.object_name(res, w);
                        Req::new(actor, "watch", res, ns, "")
                            .field_selector(&format!("metadata.name={name}"))
                    }
                    5 => Req::new(actor, "watch", &SERVICES, "", "").label_selector(
                        "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
                    ),
                    6 => Req::new(actor, "watch", &CSIDRIVERS, "", ""),
                    _ => Req::new(actor, "watch", &RUNTIMECLASSES, "", ""),
                }
            }
            Scenario::KubeletPodStatus => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                Req::new(
                    Actor::Node(p.node),
                    "patch",
                    &PODS,
                    p.namespace,
                    p.name.clone(),
                )
                .sub("status")
            }
            Scenario::KubeletNodeStatus => {
                let node = self.rng.random_range(0..NODE_COUNT);
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), "patch", &NODES, "", name)
                    .sub("status")
                    .query("timeout=10s")
            }
            Scenario::KubeletGetNode => {
                let node = self.rng.random_range(0..NODE_COUNT);
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), "get", &NODES, "", name)
                    .query("resourceVersion=0&timeout=10s")
            }
            Scenario::KubeletGetPod => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                Req::new(
                    Actor::Node(p.node),
                    "get",
                    &PODS,
                    p.namespace,
                    p.name.clone(),
                )
            }
            Scenario::KubeletEvent => {
                let pod = self.random_pod();
                let (node, ns, w) = {
                    let p = &self.pods[pod];
                    (p.node, p.namespace, p.workload)
                };
                let name = self.object_name(&EVENTS, w);
                Req::new(Actor::Node(node), "create", &EVENTS, ns, name)
            }
            Scenario::KubeletToken => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                let sa = self.workloads[p.workload].name;
                Req::new(
                    Actor::Node(p.node),
                    "create",
                    &SERVICEACCOUNTS,
                    p.namespace,
                    sa,
                )
                .sub("token")
            }
            Scenario::KubeletGetVolumeSource => {
                let pod = self.random_pod();
                let (node, ns, w) = {
                    let p = &self.pods[pod];
                    (p.node, p.namespace, p.workload)
                };
                let res = if self.rng.random_bool(0.5) {
                    &CONFIGMAPS
                } else {
                    &SECRETS
                };
                let name = self.object_name(res, w);
                Req::new(Actor::Node(node), "get", res, ns, name)
            }
            Scenario::KcmLeaseGet | Scenario::KcmLeaseUpdate => {
                let (verb, node) = if matches!(scenario, Scenario::KcmLeaseGet) {
                    ("get", self.rng.random_range(0..CONTROL_PLANE_NODES))
                } else {
                    ("update", 0)
                };
                let actor = Actor::Kcm {
                    controller: None,
                    suffix: "leader-election",
                    node,
                };
                Req::new(
                    actor,
                    verb,
                    &LEASES,
                    "kube-system",
                    "kube-controller-manager",
                )
                .query("timeout=5s")
            }
            Scenario::KcmInformerWatch | Scenario::KcmInformerList => {
                const INFORMED: &[&Res] = &[
                    &PODS,
                    &DEPLOYMENTS,
                    &REPLICASETS,
                    &STATEFULSETS,
                    &DAEMONSETS,
                    &JOBS,
                    &CRONJOBS,
                    &ENDPOINTSLICES,
                    &SERVICES,
                    &NODES,
                    &NAMESPACES_RES,
                    &SERVICEACCOUNTS,
                    &SECRETS,
                    &CONFIGMAPS,
                    &PVCS,
                    &PVS,
                    &HPAS,
                    &LEASES,
                    &INGRESSES,
                    &CSINODES,
                    &PRIORITYCLASSES,
                ];
                let res = *self.rng.pick(INFORMED);
                let verb = if matches!(scenario, Scenario::KcmInformerWatch) {
                    "watch"
                } else {
                    "list"
                };
                let actor = Actor::Kcm {
                    controller: None,
                    suffix: "shared-informers",
                    node: 0,
                };
                Req::new(actor, verb, res, "", "")
            }
            Scenario::ReplicaSetController => {
                let w = self.deployment();
                let ns = self.workloads[w].namespace;
                let actor = kcm("replicaset-controller");
                match self.rng.random_range(0..5) {
                    0 | 1 => {
                        let mut req = Req::new(actor, "create", &PODS, ns, "");
                        req.annotations.push((
                            "pod-security.kubernetes.io/enforce-policy",
                            pod_security(ns).to_string(),
                        ));
                        req
                    }
                    2 => {
                        let name = self.object_name(&PODS, w);
                        Req::new(actor, "delete", &PODS, ns, name)
                    }
                    _ => {
                        let name = self.object_name(&REPLICASETS, w);
                        Req::new(actor, "update", &REPLICASETS, ns, name).sub("status")
                    }
                }
            }
            Scenario::DeploymentController => {
                let w = self.deployment();
                let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                let actor = kcm("deployment-controller");
                match self.rng.random_range(0..6) {
                    0..=2 => Req::new(actor, "update", &DEPLOYMENTS, ns, name).sub("status"),
                    3 | 4 => {
                        let rs = self.object_name(&REPLICASETS, w);
                        Req::new(actor, "patch", &REPLICASETS, ns, rs)
                    }
                    _ => {
                        let rs = format!("{name}-{}", self.rng.k8s_suffix(10));
                        Req::new(actor, "create", &REPLICASETS, ns, rs)
                    }
                }
            }
            Scenario::EndpointSliceController => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let controller = if self.rng.random_bool(0.9) {
                    "endpointslice-controller"
                } else {
                    "endpointslicemirroring-controller"
                };
                let actor = kcm(controller);
                match self.rng.random_range(0..10) {
                    0 => Req::new(actor, "create", &ENDPOINTSLICES, ns, ""),
                    1 => {
                        let name = format!("{}-{}", self.workloads[w].name, self.rng.k8s_suffix(5));
                        Req::new(actor, "delete", &ENDPOINTSLICES, ns, name)
                    }
                    _ => {
                        let name = self.object_name(&ENDPOINTSLICES, w);
                        Req::new(actor, "update", &ENDPOINTSLICES, ns, name)
                    }
                }
            }
            Scenario::Autoscaler => {
                let w = self.deployment();
                let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                let actor = kcm("horizontal-pod-autoscaler");
                match self.rng.random_range(0..6) {
                    0..=2 => Req::new(actor, "get", &DEPLOYMENTS, ns, name).sub("scale"),
                    3 => Req::new(actor, "update", &DEPLOYMENTS, ns, name).sub("scale"),
                    _ => Req::new(actor, "update", &HPAS, ns, name).sub("status"),
                }
            }
            Scenario::GarbageCollector => {
                let w = self.deployment();
                let ns = self.workloads[w].namespace;
                let actor = kcm("generic-garbage-collector");
                if self.rng.random_bool(0.5) {
                    let rs = format!("{}-{}", self.workloads[w].name, self.rng.k8s_suffix(9));
                    Req::new(actor, "delete", &REPLICASETS, ns, rs)
                } else {
                    let res = *self.rng.pick(&[&PODS, &REPLICASETS, &JOBS]);
                    Req::new(actor, "get", res, ns, self.object_name(res, w))
                }
            }
            Scenario::JobController => {
                let ns = "data";
                let job = format!(
                    "etl-runner-{}",
                    self.rng.random_range(29_000_000..=29_400_000)
                );
                match self.rng.random_range(0..4) {
                    0 => Req::new(kcm("job-controller"), "create", &PODS, ns, ""),
                    1 | 2 => {
                        Req::new(kcm("job-controller"), "update", &JOBS, ns, job).sub("status")
                    }
                    _ => Req::new(kcm("cronjob-controller"), "create", &JOBS, ns, job),
                }
            }
            Scenario::OtherControllers => match self.rng.random_range(0..6) {
                0 => {
                    let node = self.rng.random_range(0..NODE_COUNT);
                    let name = self.nodes[node].name.clone();
                    Req::new(kcm("node-controller"), "patch", &NODES, "", name)
                }
                1 => {
                    let w = self.workload_of_kind(SS);
                    let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                    Req::new(
                        kcm("statefulset-controller"),
                        "update",
                        &STATEFULSETS,
                        ns,
                        name,
                    )
                    .sub("status")
                }
                2 => {
                    let w = self.workload_of_kind(DS);
                    let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                    Req::new(
                        kcm("daemon-set-controller"),
                        "update",
                        &DAEMONSETS,
                        ns,
                        name,
                    )
                    .sub("status")
                }
                3 => {
                    let ns = *self.rng.pick(APP_NAMESPACES);
                    Req::new(kcm("resourcequota-controller"), "list", &PODS, ns, "")
                }
                4 => {
                    let ns = *self.rng.pick(APP_NAMESPACES);
                    let w = self.workload_in(ns).unwrap_or(0);
                    let name = self.object_name(&PVCS, w);
                    Req::new(kcm("pvc-protection-controller"), "get", &PVCS, ns, name)
                }
                _ => {
                    let ns = *self.rng.pick(&NAMESPACES);
                    Req::new(kcm("namespace-controller"), "get", &NAMESPACES_RES, "", ns)
                }
            },
            Scenario::SchedulerLeaseGet | Scenario::SchedulerLeaseUpdate => {
                let (verb, node) = if matches!(scenario, Scenario::SchedulerLeaseGet) {
                    ("get", self.rng.random_range(0..CONTROL_PLANE_NODES))
                } else {
                    ("update", 1)
                };
                let actor = Actor::Scheduler {
                    suffix: "leader-election",
                    node,
                };
                Req::new(actor, verb, &LEASES, "kube-system", "kube-scheduler").query("timeout=5s")
            }
            Scenario::SchedulerBind => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let pod = self.object_name(&PODS, w);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                Req::new(actor, "create", &PODS, ns, pod).sub("binding")
            }
            Scenario::SchedulerWatch => {
                let res = *self.rng.pick(&[
                    &PODS,
                    &NODES,
                    &PVS,
                    &PVCS,
                    &CSINODES,
                    &STORAGECLASSES,
                    &CSIDRIVERS,
                    &NAMESPACES_RES,
                ]);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                let req = Req::new(actor, "watch", res, "", "");
                if res.resource == "pods" {
                    req.field_selector("status.phase!=Succeeded,status.phase!=Failed")
                } else {
                    req
                }
            }
            Scenario::SchedulerEvent => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let name = self.object_name(&EVENTS, w);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                Req::new(actor, "create", &EVENTS_K8S, ns, name)
            }
            Scenario::Workload => self.workload_request(),
            Scenario::Person => self.person_request(),
            Scenario::Anonymous => {
                let node = self.rng.random_range(0..CONTROL_PLANE_NODES);
                let (source_ip, user_agent) = if self.rng.random_bool(0.7) {
                    (
                        ["10.0.0.11", "10.0.0.12", "10.0.0.13"][node],
                        "kube-probe/1.36",
                    )
                } else {
                    (
                        *self.rng.pick(&["10.0.0.2", "10.0.0.3"]),
                        "Go-http-client/1.1",
                    )
                };
                let actor = Actor::Anonymous {
                    source_ip,
                    user_agent,
                };
                let path = self.rng.pick_weighted(&[
                    ("/livez", 4),
                    ("/readyz", 4),
                    ("/healthz", 3),
                    ("/version", 1),
                    ("/metrics", 1),
                ]);
                let req = Req::non_resource(actor, path);
                if path == "/metrics" {
                    req.fail(Failure::Forbidden)
                } else {
                    req
                }
            }
            Scenario::ApiServer => {
                let node = self.rng.random_range(0..CONTROL_PLANE_NODES);
                let actor = Actor::ApiServer;
                match self.rng.random_range(0..10) {
                    0..=3 => {
                        let lease = self.apiserver_leases[node].clone();
                        Req::new(actor, "update", &LEASES, "kube-system", lease)
                    }
                    4 => {
                        let lease = self.apiserver_leases[node].clone();
                        Req::new(actor, "get", &LEASES, "kube-system", lease)
                    }
                    5 | 6 => {
                        let ns = *self.rng.pick(&[
                            "default",
                            "kube-system",
                            "kube-public",
                            "kube-node-lease",
                        ]);
                        Req::new(actor, "get", &NAMESPACES_RES, "", ns)
                    }
                    7 => {
                        let res = if self.rng.random_bool(0.5) {
                            &ENDPOINTS
                        } else {
                            &ENDPOINTSLICES
                        };
                        Req::new(actor, "get", res, "default", "kubernetes")
                    }
                    8 => Req::new(actor, "get", &SERVICES, "default", "kubernetes"),
                    _ => {
                        let res = *self.rng.pick(&[
                            &PRIORITYCLASSES,
                            &NAMESPACES_RES,
                            &SERVICES,
                            &ENDPOINTSLICES,
                        ]);
                        Req::new(actor, "watch", res, "", "")
                    }
                }
            }
        }
    }

    fn workload_request(&mut self) -> Req {
        let profile = self
            .rng
            .weighted_index(SA_PROFILES.iter().map(|p| p.weight));
        let p = &SA_PROFILES[profile];
        let w = self.sa_workloads[profile];
        let pods = &self.workloads[w].pods;
        let pod = pods[self.rng.random_range(0..pods.len())];
        let actor = Actor::Workload { profile, pod };
        let action = self.rng.pick_weighted(p.actions);
        let (ns, name) = match action.scope {
            Cluster => (String::new(), String::new()),
            OwnNs => (p.namespace.to_string(), String::new()),
            OwnObject => (p.namespace.to_string(), self.object_name(action.res, w)),
            AnyObject => {
                let other = self.app_workload();
                let ns = self.workloads[other].namespace;
                (ns.to_string(), self.object_name(action.res, other))
            }
            Fixed(ns, name) => (ns.to_string(), name.to_string()),
        };
        let name = if action.verb == "create" && action.sub.is_empty() {
            match action.res.resource {
                "events" => self.object_name(action.res, w),
                "certificaterequests" => {
                    format!("{}-{}", p.workload, self.rng.random_range(1..=40))
                }
                _ => String::new(),
            }
        } else {
            name
        };
        let ns = if action.res.namespaced {
            ns
        } else {
            String::new()
        };
        let mut req = Req::new(actor, action.verb, action.res, ns, name).sub(action.sub);
        req.namespaced_binding = p.namespaced_binding;
        if p.name == "postgres-operator"
            && action.verb == "list"
            && action.res.resource == "secrets"
        {
            req = req.fail(Failure::Forbidden);
        }
        if p.name == "argocd-application-controller" && action.verb == "patch" {
            req = req.query("fieldManager=argocd-controller&force=true");
        }
        req
    }

    fn person_request(&mut self) -> Req {
        let person = self.rng.weighted_index(HUMANS.iter().map(|h| h.weight));
        let human = &HUMANS[person];
        let actor = Actor::Person(person);
        let w = self.deployment();
        let (ns, deploy) = (self.workloads[w].namespace, self.workloads[w].name);
        let kubectl = human.user_agent.starts_with("kubectl");
        let helm = human.user_agent.starts_with("Helm");
        let mut req = if helm {
            match self.rng.random_range(0..6) {
                0 | 1 => Req::new(actor, "list", &SECRETS, ns, "")
                    .label_selector(&format!("name={deploy},owner=helm"))
                    .query(String::new()),
                2 => {
                    let name = format!(
                        "sh.helm.release.v1.{deploy}.v{}",
                        self.rng.random_range(2..=14)
                    );
                    Req::new(actor, "create", &SECRETS, ns, name)
                }
                3 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy),
                4 => {
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy);
                    req.level = Level::Request;
                    let image = format!(
                        "registry.example.com/{ns}/{deploy}:1.{}.{}",
                        self.rng.random_range(0..=40),
                        self.rng.random_range(0..=9)
                    );
                    req.request_object = Some(json!({"spec": {"template": {"spec": {
                            "containers": [{"name": deploy, "image": image}]}}}}));
                    if self.rng.random_bool(0.1) {
                        req = req.fail(Failure::Invalid);
                    }
                    req
                }
                _ => {
                    let name = self.object_name(&CONFIGMAPS, w);
                    Req::new(actor, "update", &CONFIGMAPS, ns, name)
                }
            }
        } else {
            match self.rng.pick_weighted(&[
                (0u8, 8),
                (1, 4),
                (2, 3),
                (3, 2),
                (4, 2),
                (5, 2),
                (6, 1),
                (7, 1),
                (8, 1),
                (9, 2),
                (10, 1),
                (11, 1),
                (12, 1),
                (13, 1),
                (14, 1),
                (15, 2),
            ]) {
                0 => Req::new(actor, "list", &PODS, ns, "").query("limit=500"),
                1 => {
                    let pod = self.object_name(&PODS, w);
                    Req::new(actor, "get", &PODS, ns, pod)
                }
                2 => {
                    let pod = self.object_name(&PODS, w);
                    let query = if self.rng.random_bool(0.5) {
                        format!("container={deploy}&follow=true&tailLines=100")
                    } else {
                        format!("container={deploy}")
                    };
                    Req::new(actor, "get", &PODS, ns, pod)
                        .sub("log")
                        .query(query)
                }
                3 => {
                    let pod = self.object_name(&PODS, w);
                    // kubectl 1.31+ execs over WebSockets (a GET); older clients POST.
                    let verb = if kubectl { "get" } else { "create" };
                    Req::new(actor, verb, &PODS, ns, pod)
                        .sub("exec")
                        .query(format!(
                            "command=sh&container={deploy}&stdin=true&stdout=true&tty=true"
                        ))
                }
                4 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy),
                5 => {
                    // kubectl rollout restart
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy)
                        .query("fieldManager=kubectl-rollout");
                    req.level = Level::Request;
                    let at = format!("{:.0}", self.now);
                    req.request_object = Some(json!({"spec":{"template":{"metadata":{
                        "annotations":{"kubectl.kubernetes.io/restartedAt": at}}}}}));
                    req
                }
                6 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy).sub("scale"),
                7 => {
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy).sub("scale");
                    req.level = Level::Request;
                    req.request_object =
                        Some(json!({"spec":{"replicas": self.rng.random_range(0..=12)}}));
                    req
                }
                8 => {
                    let pod = self.object_name(&PODS, w);
                    let mut req = Req::new(actor, "delete", &PODS, ns, pod);
                    req.level = Level::Request;
                    req.request_object = Some(json!({"kind": "DeleteOptions", "apiVersion": "v1",
                            "propagationPolicy": "Background"}));
                    req
                }
                9 => {
                    let name = self.object_name(&SECRETS, w);
                    Req::new(actor, "get", &SECRETS, ns, name)
                }
                10 => {
                    let name = format!("{deploy}-config");
                    let req = Req::new(actor, "create", &CONFIGMAPS, ns, name)
                        .query("fieldManager=kubectl-create&fieldValidation=Strict");
                    if self.rng.random_bool(0.3) {
                        req.fail(Failure::AlreadyExists)
                    } else {
                        req
                    }
                }
                11 => Req::new(actor, "list", &NAMESPACES_RES, "", "").query("limit=500"),
                12 => Req::new(actor, "list", &NODES, "", "").query("limit=500"),
                13 => Req::new(actor, "watch", &PODS, ns, ""),
                14 => Req::new(actor, "list", &EVENTS, ns, "").query("limit=500"),
                _ => {
                    let path = *self.rng.pick(&["/api?timeout=32s", "/apis?timeout=32s"]);
                    Req::non_resource(actor, path)
                }
            }
        };
        let changes = matches!(req.verb, "create" | "update" | "patch") && req.sub != "exec";
        if changes && req.res.is_some() && req.failure.is_none() && self.rng.random_bool(0.08) {
            req = req.fail(Failure::Invalid);
        }
        // Developers may change things and read secrets only in their own namespaces.
        if human.binding.is_none() && req.res.is_some() {
            let own = human.own_namespaces.contains(&req.namespace.as_str());
            let write = !matches!(req.verb, "get" | "list" | "watch") || req.sub == "exec";
            let secret = req.res.is_some_and(|r| r.resource == "secrets");
            if !own
                && (write
                    || secret
                    || req.namespace.is_empty() && req.res.is_some_and(|r| r.resource == "nodes"))
            {
                req = req.fail(Failure::Forbidden);
            }
        }
        // Now and then bob acts as an application's service account to check its permissions.
        if human.name == "bob@example.com" && self.rng.random_bool(0.05) {
            req.impersonate = Some(UserInfo {
                username: "system:serviceaccount:shop:web".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:shop".into(),
                    "system:authenticated".into(),
                ],
                ..UserInfo::default()
            });
        }
        req
    }
}
