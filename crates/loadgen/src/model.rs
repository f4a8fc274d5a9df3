//! The modelled cluster as data: its nodes, namespaces and workloads, the resources they touch,
//! the service accounts and people who act on them, and how often each kind of request happens.

pub(crate) const K8S_VERSION: &str = "v1.36.3";
pub(crate) const K8S_GIT: &str = "kubernetes/abc1234";
pub(crate) const NODE_COUNT: usize = 15;
/// node-1 .. node-3 run the control plane.
pub(crate) const CONTROL_PLANE_NODES: usize = 3;

/// The namespaces of the modelled cluster.
pub const NAMESPACES: [&str; 13] = [
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "shop",
    "payments",
    "data",
    "staging-web",
    "monitoring",
    "logging",
    "ingress-nginx",
    "cert-manager",
    "argocd",
];

#[derive(Debug)]
pub(crate) struct Res {
    pub(crate) resource: &'static str,
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
}

impl Res {
    /// `pods`, `deployments.apps`: how API errors name a resource.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

pub(crate) const fn res(
    resource: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Res {
    Res {
        resource,
        group,
        version,
        kind,
        namespaced,
    }
}

pub(crate) const PODS: Res = res("pods", "", "v1", "Pod", true);
pub(crate) const CONFIGMAPS: Res = res("configmaps", "", "v1", "ConfigMap", true);
pub(crate) const SECRETS: Res = res("secrets", "", "v1", "Secret", true);
pub(crate) const SERVICES: Res = res("services", "", "v1", "Service", true);
pub(crate) const SERVICEACCOUNTS: Res = res("serviceaccounts", "", "v1", "ServiceAccount", true);
pub(crate) const EVENTS: Res = res("events", "", "v1", "Event", true);
pub(crate) const ENDPOINTS: Res = res("endpoints", "", "v1", "Endpoints", true);
pub(crate) const PVCS: Res = res(
    "persistentvolumeclaims",
    "",
    "v1",
    "PersistentVolumeClaim",
    true,
);
pub(crate) const NODES: Res = res("nodes", "", "v1", "Node", false);
pub(crate) const NAMESPACES_RES: Res = res("namespaces", "", "v1", "Namespace", false);
pub(crate) const PVS: Res = res("persistentvolumes", "", "v1", "PersistentVolume", false);
pub(crate) const LEASES: Res = res("leases", "coordination.k8s.io", "v1", "Lease", true);
pub(crate) const DEPLOYMENTS: Res = res("deployments", "apps", "v1", "Deployment", true);
pub(crate) const REPLICASETS: Res = res("replicasets", "apps", "v1", "ReplicaSet", true);
pub(crate) const STATEFULSETS: Res = res("statefulsets", "apps", "v1", "StatefulSet", true);
pub(crate) const DAEMONSETS: Res = res("daemonsets", "apps", "v1", "DaemonSet", true);
pub(crate) const JOBS: Res = res("jobs", "batch", "v1", "Job", true);
pub(crate) const CRONJOBS: Res = res("cronjobs", "batch", "v1", "CronJob", true);
pub(crate) const HPAS: Res = res(
    "horizontalpodautoscalers",
    "autoscaling",
    "v2",
    "HorizontalPodAutoscaler",
    true,
);
pub(crate) const ENDPOINTSLICES: Res = res(
    "endpointslices",
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    true,
);
pub(crate) const EVENTS_K8S: Res = res("events", "events.k8s.io", "v1", "Event", true);
pub(crate) const INGRESSES: Res = res("ingresses", "networking.k8s.io", "v1", "Ingress", true);
pub(crate) const CERTIFICATES: Res =
    res("certificates", "cert-manager.io", "v1", "Certificate", true);
pub(crate) const CERTIFICATEREQUESTS: Res = res(
    "certificaterequests",
    "cert-manager.io",
    "v1",
    "CertificateRequest",
    true,
);
pub(crate) const APPLICATIONS: Res = res(
    "applications",
    "argoproj.io",
    "v1alpha1",
    "Application",
    true,
);
pub(crate) const TOKENREVIEWS: Res = res(
    "tokenreviews",
    "authentication.k8s.io",
    "v1",
    "TokenReview",
    false,
);
pub(crate) const SUBJECTACCESSREVIEWS: Res = res(
    "subjectaccessreviews",
    "authorization.k8s.io",
    "v1",
    "SubjectAccessReview",
    false,
);
pub(crate) const CSIDRIVERS: Res = res("csidrivers", "storage.k8s.io", "v1", "CSIDriver", false);
pub(crate) const CSINODES: Res = res("csinodes", "storage.k8s.io", "v1", "CSINode", false);
pub(crate) const STORAGECLASSES: Res = res(
    "storageclasses",
    "storage.k8s.io",
    "v1",
    "StorageClass",
    false,
);
pub(crate) const RUNTIMECLASSES: Res =
    res("runtimeclasses", "node.k8s.io", "v1", "RuntimeClass", false);
pub(crate) const PRIORITYCLASSES: Res = res(
    "priorityclasses",
    "scheduling.k8s.io",
    "v1",
    "PriorityClass",
    false,
);

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// A control-plane static pod, one per control-plane node.
    Static,
}

use WorkloadKind::{DaemonSet as DS, Deployment as D, StatefulSet as SS, Static as ST};

/// (namespace, name, kind, replicas; DaemonSets and static pods ignore the count)
pub(crate) const WORKLOADS: &[(&str, &str, WorkloadKind, usize)] = &[
    ("shop", "web", D, 8),
    ("shop", "cart", D, 4),
    ("shop", "checkout", D, 3),
    ("shop", "catalog", D, 4),
    ("shop", "search", D, 3),
    ("shop", "redis", SS, 3),
    ("payments", "api", D, 4),
    ("payments", "ledger", D, 3),
    ("payments", "fraud-detector", D, 2),
    ("payments", "notifier", D, 2),
    ("data", "postgres", SS, 3),
    ("data", "kafka", SS, 3),
    ("data", "etl-runner", D, 2),
    ("data", "postgres-operator", D, 1),
    ("staging-web", "web", D, 2),
    ("staging-web", "cart", D, 1),
    ("staging-web", "checkout", D, 1),
    ("monitoring", "prometheus-k8s", SS, 2),
    ("monitoring", "alertmanager-main", SS, 3),
    ("monitoring", "grafana", D, 1),
    ("monitoring", "kube-state-metrics", D, 1),
    ("monitoring", "node-exporter", DS, 0),
    ("logging", "fluent-bit", DS, 0),
    ("logging", "loki-gateway", D, 2),
    ("ingress-nginx", "ingress-nginx-controller", D, 3),
    ("cert-manager", "cert-manager", D, 1),
    ("cert-manager", "cert-manager-webhook", D, 1),
    ("cert-manager", "cert-manager-cainjector", D, 1),
    ("argocd", "argocd-server", D, 2),
    ("argocd", "argocd-repo-server", D, 2),
    ("argocd", "argocd-redis", D, 1),
    ("argocd", "argocd-application-controller", SS, 1),
    ("kube-system", "coredns", D, 2),
    ("kube-system", "metrics-server", D, 1),
    ("kube-system", "kube-proxy", DS, 0),
    ("kube-system", "kube-apiserver", ST, 0),
    ("kube-system", "etcd", ST, 0),
    ("kube-system", "kube-controller-manager", ST, 0),
    ("kube-system", "kube-scheduler", ST, 0),
    ("default", "hello", D, 2),
];

/// Where a workload's service account acts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    /// Across all namespaces (list/watch) or on a cluster-scoped resource.
    Cluster,
    /// Its own namespace, collection (list/watch/create).
    OwnNs,
    /// A named object of its own namespace.
    OwnObject,
    /// A named object of any application namespace.
    AnyObject,
    /// One fixed object.
    Fixed(&'static str, &'static str),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Act {
    pub(crate) verb: &'static str,
    pub(crate) res: &'static Res,
    pub(crate) sub: &'static str,
    pub(crate) scope: Scope,
}

pub(crate) const fn act(verb: &'static str, res: &'static Res, scope: Scope) -> Act {
    Act {
        verb,
        res,
        sub: "",
        scope,
    }
}

pub(crate) const fn act_sub(
    verb: &'static str,
    res: &'static Res,
    sub: &'static str,
    scope: Scope,
) -> Act {
    Act {
        verb,
        res,
        sub,
        scope,
    }
}

/// An in-cluster client: a workload's service account.
pub(crate) struct SaProfile {
    pub(crate) namespace: &'static str,
    pub(crate) name: &'static str,
    /// The workload whose pods use the account.
    pub(crate) workload: &'static str,
    pub(crate) user_agent: &'static str,
    /// Share of all events.
    pub(crate) weight: u32,
    /// True when its permissions come from a RoleBinding in its namespace.
    pub(crate) namespaced_binding: bool,
    pub(crate) actions: &'static [(Act, u32)],
}

use Scope::{AnyObject, Cluster, Fixed, OwnNs, OwnObject};

pub(crate) const SA_PROFILES: &[SaProfile] = &[
    SaProfile {
        namespace: "kube-system",
        name: "coredns",
        workload: "coredns",
        user_agent: "coredns/v0.0.0 (linux/amd64) kubernetes/$Format",
        weight: 14,
        namespaced_binding: false,
        actions: &[
            (act("watch", &ENDPOINTSLICES, Cluster), 4),
            (act("watch", &SERVICES, Cluster), 3),
            (act("watch", &NAMESPACES_RES, Cluster), 2),
            (act("list", &ENDPOINTSLICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "kube-system",
        name: "kube-proxy",
        workload: "kube-proxy",
        user_agent: "kube-proxy/v1.36.3 (linux/amd64) kubernetes/abc1234",
        weight: 22,
        namespaced_binding: false,
        actions: &[
            (act("watch", &ENDPOINTSLICES, Cluster), 4),
            (act("watch", &SERVICES, Cluster), 3),
            (act("watch", &NODES, Cluster), 1),
            (act("list", &SERVICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "ingress-nginx",
        name: "ingress-nginx",
        workload: "ingress-nginx-controller",
        user_agent: "nginx-ingress-controller/v1.12.1 (linux/amd64) ingress-nginx/51c2b819690bbf1709b844dbf321a9acf6eda5a7",
        weight: 22,
        namespaced_binding: false,
        actions: &[
            (
                act(
                    "get",
                    &LEASES,
                    Fixed("ingress-nginx", "ingress-nginx-leader"),
                ),
                6,
            ),
            (
                act(
                    "update",
                    &LEASES,
                    Fixed("ingress-nginx", "ingress-nginx-leader"),
                ),
                5,
            ),
            (act("watch", &INGRESSES, Cluster), 3),
            (act("watch", &ENDPOINTSLICES, Cluster), 3),
            (act("watch", &SECRETS, Cluster), 2),
            (act("watch", &CONFIGMAPS, OwnNs), 1),
            (act_sub("update", &INGRESSES, "status", AnyObject), 1),
            (act("create", &EVENTS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "cert-manager",
        name: "cert-manager",
        workload: "cert-manager",
        user_agent: "cert-manager-certificates-trigger/v1.17.2 (linux/amd64) cert-manager/4b9a5c2e1d7f3a6b8c0e9d2f1a3b5c7d9e0f2a4b",
        weight: 16,
        namespaced_binding: false,
        actions: &[
            (
                act(
                    "get",
                    &LEASES,
                    Fixed("kube-system", "cert-manager-controller"),
                ),
                5,
            ),
            (
                act(
                    "update",
                    &LEASES,
                    Fixed("kube-system", "cert-manager-controller"),
                ),
                4,
            ),
            (act("watch", &CERTIFICATES, Cluster), 2),
            (act("watch", &CERTIFICATEREQUESTS, Cluster), 1),
            (act("watch", &SECRETS, Cluster), 1),
            (act("get", &SECRETS, AnyObject), 2),
            (act_sub("update", &CERTIFICATES, "status", AnyObject), 1),
            (act("create", &CERTIFICATEREQUESTS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "monitoring",
        name: "prometheus-k8s",
        workload: "prometheus-k8s",
        user_agent: "Prometheus/3.2.1",
        weight: 12,
        namespaced_binding: false,
        actions: &[
            (act("watch", &PODS, Cluster), 3),
            (act("watch", &ENDPOINTSLICES, Cluster), 3),
            (act("watch", &SERVICES, Cluster), 2),
            (act("list", &PODS, Cluster), 1),
            (act("list", &ENDPOINTSLICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "monitoring",
        name: "kube-state-metrics",
        workload: "kube-state-metrics",
        user_agent: "kube-state-metrics/v2.15.0 (linux/amd64) kube-state-metrics/0fb7fc2c7c0a0c2b8f2f4a5e8d5c1e6b7a9f0d3c",
        weight: 12,
        namespaced_binding: false,
        actions: &[
            (act("watch", &PODS, Cluster), 1),
            (act("watch", &DEPLOYMENTS, Cluster), 1),
            (act("watch", &REPLICASETS, Cluster), 1),
            (act("watch", &STATEFULSETS, Cluster), 1),
            (act("watch", &DAEMONSETS, Cluster), 1),
            (act("watch", &JOBS, Cluster), 1),
            (act("watch", &CRONJOBS, Cluster), 1),
            (act("watch", &NODES, Cluster), 1),
            (act("watch", &PVCS, Cluster), 1),
            (act("watch", &SECRETS, Cluster), 1),
            (act("watch", &CONFIGMAPS, Cluster), 1),
            (act("watch", &HPAS, Cluster), 1),
            (act("list", &PODS, Cluster), 1),
            (act("list", &NAMESPACES_RES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "argocd",
        name: "argocd-application-controller",
        workload: "argocd-application-controller",
        user_agent: "argocd-application-controller/v3.0.6+db93798 (linux/amd64) argoproj/argo-cd",
        weight: 18,
        namespaced_binding: false,
        actions: &[
            (act("watch", &APPLICATIONS, OwnNs), 2),
            (act("get", &APPLICATIONS, OwnObject), 2),
            (act("patch", &APPLICATIONS, OwnObject), 3),
            (act("get", &DEPLOYMENTS, AnyObject), 2),
            (act("patch", &DEPLOYMENTS, AnyObject), 1),
            (act("get", &CONFIGMAPS, AnyObject), 1),
            (act("patch", &CONFIGMAPS, AnyObject), 1),
            (act("list", &DEPLOYMENTS, Cluster), 1),
            (act("watch", &SERVICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "argocd",
        name: "argocd-server",
        workload: "argocd-server",
        user_agent: "argocd-server/v3.0.6+db93798 (linux/amd64) argoproj/argo-cd",
        weight: 6,
        namespaced_binding: true,
        actions: &[
            (act("get", &SECRETS, Fixed("argocd", "argocd-secret")), 2),
            (act("get", &CONFIGMAPS, Fixed("argocd", "argocd-cm")), 2),
            (act("list", &APPLICATIONS, OwnNs), 2),
            (act("get", &APPLICATIONS, OwnObject), 1),
        ],
    },
    SaProfile {
        namespace: "kube-system",
        name: "metrics-server",
        workload: "metrics-server",
        user_agent: "metrics-server/v0.7.2 (linux/amd64) kubernetes/$Format",
        weight: 10,
        namespaced_binding: false,
        actions: &[
            (act("create", &TOKENREVIEWS, Cluster), 3),
            (act("create", &SUBJECTACCESSREVIEWS, Cluster), 3),
            (act("watch", &NODES, Cluster), 1),
            (act("list", &NODES, Cluster), 1),
            (
                act(
                    "get",
                    &CONFIGMAPS,
                    Fixed("kube-system", "extension-apiserver-authentication"),
                ),
                1,
            ),
        ],
    },
    SaProfile {
        namespace: "logging",
        name: "fluent-bit",
        workload: "fluent-bit",
        user_agent: "fluent-bit/4.0.3",
        weight: 14,
        namespaced_binding: false,
        actions: &[
            (act("get", &PODS, AnyObject), 6),
            (act("list", &NAMESPACES_RES, Cluster), 1),
            (act("watch", &PODS, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "data",
        name: "postgres-operator",
        workload: "postgres-operator",
        user_agent: "postgres-operator/v1.14.0 (linux/amd64) kubernetes/$Format",
        weight: 12,
        namespaced_binding: true,
        actions: &[
            (act("get", &LEASES, Fixed("data", "postgres-operator")), 3),
            (
                act("update", &LEASES, Fixed("data", "postgres-operator")),
                3,
            ),
            (act("get", &STATEFULSETS, OwnObject), 2),
            (act("update", &STATEFULSETS, OwnObject), 1),
            (act("patch", &PODS, OwnObject), 1),
            (act("list", &PODS, OwnNs), 1),
            (act("get", &SECRETS, OwnObject), 1),
            (act("get", &SERVICES, OwnObject), 1),
            (act("create", &EVENTS, OwnNs), 1),
            // Not allowed by its Role: answered 403.
            (act("list", &SECRETS, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "shop",
        name: "web",
        workload: "web",
        user_agent: "Go-http-client/2.0",
        weight: 6,
        namespaced_binding: true,
        actions: &[
            (act("get", &CONFIGMAPS, OwnObject), 3),
            (act("get", &SECRETS, OwnObject), 1),
            (act("watch", &CONFIGMAPS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "payments",
        name: "api",
        workload: "api",
        user_agent: "payments-api/2.14.0 (linux/amd64) kubernetes/$Format",
        weight: 4,
        namespaced_binding: true,
        actions: &[
            (act("get", &SECRETS, OwnObject), 2),
            (act("get", &CONFIGMAPS, OwnObject), 2),
            (act("create", &EVENTS, OwnNs), 1),
        ],
    },
];

/// Controllers of kube-controller-manager that act under their own service account.
pub(crate) const KCM_CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "endpointslice-controller",
    "endpointslicemirroring-controller",
    "horizontal-pod-autoscaler",
    "generic-garbage-collector",
    "job-controller",
    "cronjob-controller",
    "node-controller",
    "namespace-controller",
    "statefulset-controller",
    "daemon-set-controller",
    "resourcequota-controller",
    "pvc-protection-controller",
];

pub(crate) struct Human {
    pub(crate) name: &'static str,
    pub(crate) groups: &'static [&'static str],
    pub(crate) user_agent: &'static str,
    pub(crate) source_ip: &'static str,
    /// RBAC reason for what the person may do; `None` marks a developer limited to some namespaces.
    pub(crate) binding: Option<&'static str>,
    /// Namespaces a developer may change and read secrets in.
    pub(crate) own_namespaces: &'static [&'static str],
    pub(crate) weight: u32,
}

pub(crate) const HUMANS: &[Human] = &[
    Human {
        name: "alice@example.com",
        groups: &["oidc:developers", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (darwin/arm64) kubernetes/abc1234",
        source_ip: "203.0.113.24",
        binding: None,
        own_namespaces: &["shop", "staging-web"],
        weight: 5,
    },
    Human {
        name: "bob@example.com",
        groups: &["oidc:sre", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (linux/amd64) kubernetes/abc1234",
        source_ip: "192.168.10.31",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "sre-admin" of ClusterRole "cluster-admin" to Group "oidc:sre""#,
        ),
        own_namespaces: &[],
        weight: 4,
    },
    Human {
        name: "carol@example.com",
        groups: &["oidc:developers", "oidc:payments", "system:authenticated"],
        user_agent: "k9s/v0.50.6 (darwin/arm64) kubernetes/$Format",
        source_ip: "198.51.100.7",
        binding: None,
        own_namespaces: &["payments", "staging-web"],
        weight: 3,
    },
    Human {
        name: "kubernetes-admin",
        groups: &["kubeadm:cluster-admins", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (linux/amd64) kubernetes/abc1234",
        source_ip: "10.0.0.11",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "kubeadm:cluster-admins" of ClusterRole "cluster-admin" to Group "kubeadm:cluster-admins""#,
        ),
        own_namespaces: &[],
        weight: 1,
    },
    Human {
        name: "ci-deployer",
        groups: &["ci:deployers", "system:authenticated"],
        user_agent: "Helm/3.18.4",
        source_ip: "10.20.0.5",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "ci-deployers" of ClusterRole "admin" to Group "ci:deployers""#,
        ),
        own_namespaces: &[],
        weight: 2,
    },
];

pub(crate) const APP_NAMESPACES: &[&str] = &[
    "shop",
    "payments",
    "data",
    "staging-web",
    "monitoring",
    "logging",
    "default",
];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Scenario {
    KubeletLeaseUpdate,
    KubeletLeaseGet,
    KubeletWatch,
    KubeletPodStatus,
    KubeletNodeStatus,
    KubeletGetNode,
    KubeletGetPod,
    KubeletEvent,
    KubeletToken,
    KubeletGetVolumeSource,
    KcmLeaseGet,
    KcmLeaseUpdate,
    KcmInformerWatch,
    KcmInformerList,
    ReplicaSetController,
    DeploymentController,
    EndpointSliceController,
    Autoscaler,
    GarbageCollector,
    JobController,
    OtherControllers,
    SchedulerLeaseGet,
    SchedulerLeaseUpdate,
    SchedulerBind,
    SchedulerWatch,
    SchedulerEvent,
    Workload,
    Person,
    Anonymous,
    ApiServer,
}

pub(crate) const SCENARIOS: &[(Scenario, u32)] = &[
    (Scenario::KubeletLeaseUpdate, 72),
    (Scenario::KubeletLeaseGet, 8),
    (Scenario::KubeletWatch, 50),
    (Scenario::KubeletPodStatus, 28),
    (Scenario::KubeletNodeStatus, 10),
    (Scenario::KubeletGetNode, 14),
    (Scenario::KubeletGetPod, 20),
    (Scenario::KubeletEvent, 14),
    (Scenario::KubeletToken, 10),
    (Scenario::KubeletGetVolumeSource, 10),
    (Scenario::KcmLeaseGet, 48),
    (Scenario::KcmLeaseUpdate, 16),
    (Scenario::KcmInformerWatch, 34),
    (Scenario::KcmInformerList, 6),
    (Scenario::ReplicaSetController, 14),
    (Scenario::DeploymentController, 9),
    (Scenario::EndpointSliceController, 14),
    (Scenario::Autoscaler, 5),
    (Scenario::GarbageCollector, 3),
    (Scenario::JobController, 4),
    (Scenario::OtherControllers, 8),
    (Scenario::SchedulerLeaseGet, 34),
    (Scenario::SchedulerLeaseUpdate, 10),
    (Scenario::SchedulerBind, 8),
    (Scenario::SchedulerWatch, 12),
    (Scenario::SchedulerEvent, 5),
    (Scenario::Workload, 100),
    (Scenario::Person, 40),
    (Scenario::Anonymous, 10),
    (Scenario::ApiServer, 26),
];

pub(crate) fn pod_security(namespace: &str) -> &'static str {
    match namespace {
        "kube-system" | "monitoring" | "logging" => "privileged:latest",
        "shop" | "payments" => "restricted:latest",
        _ => "baseline:latest",
    }
}
