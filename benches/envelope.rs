//! What `rollout.envelope: Wide` costs: the bytes and events the kube-apiservers send to the
//! collector, and the collector's CPU at intake, per 1,000 API requests, under the wide envelope
//! versus under the spec's own policy (`Exact`). What is stored is the same either way; the
//! collector's extra work under Wide is decoding, judging and reducing or dropping what the spec
//! does not keep.
//!
//!   cargo bench --bench envelope
//!   REQUESTS=50000 RUNS=9 cargo bench --bench envelope
//!
//! Under `cargo test` (no `--bench` argument) it runs on a few hundred requests, as a smoke test.
//!
//! The model of what the kube-apiservers send, and its assumptions:
//! - The requests are loadgen's [`EventGenerator`] (seed 42): a fifteen-node cluster's mix of
//!   users, verbs and resources, one generated event per request.
//! - Under Wide each request is recorded as the wide policy ([`wide`], evaluated with the
//!   kube-apiserver's matching semantics) says: Metadata for secret-bearing resources,
//!   RequestResponse for everything else. A RequestResponse event carries the bodies the
//!   kube-apiserver logs for that request: the object of the event's resource (metadata with
//!   labels, annotations and owner references, a spec and a status of the size such objects have
//!   in a real cluster; pods about 5 KB, nodes about 10 KB with their image list, workloads about
//!   3-4 KB, leases and scales a few hundred bytes) as the request body of creates and updates and
//!   the response body of gets, creates, updates, patches and pod deletions; the generator's own
//!   patch and DeleteOptions bodies where it has them, a small patch otherwise; a List of several
//!   items for a list (two to twelve in a namespace, eight to fifteen on one node, the cluster's
//!   count across namespaces); a Status for other deletions and for failed requests; discovery
//!   documents for `/api` and `/apis`. No body for watches, logs, exec and other streams, and none
//!   for health, version and metrics endpoints, as the kube-apiserver logs none there.
//!   `managedFields` are left out of every body: both the wide envelope and the specs measured
//!   omit them (they would about double most objects under both).
//! - A long-running request that succeeds (watch, log, exec, attach, port-forward) is recorded
//!   twice, ResponseStarted and ResponseComplete, as the kube-apiserver does; RequestReceived is
//!   omitted by the wide envelope and by every spec measured.
//! - Under Exact the kube-apiservers send what the spec's policy records for the same requests:
//!   the wide events put through [`enforce`] with the spec's decision (what the kube-apiserver
//!   itself does under that policy: bodies left out by level, omitted stages and level None not
//!   sent at all).
//! - Both send `audit.k8s.io/v1` EventLists of up to 400 events (the kube-apiserver's default
//!   webhook batch size), uncompressed JSON, as its webhook backend posts them.
//! - Intake is measured through the collector's own public functions, in the order its webhook
//!   handler calls them for a batch ([`batch::decode_parsed_event_list`], [`batch::check_time`],
//!   [`Compiled::judge`], [`batch::encode_record`]), without HTTP, TLS, the metrics update and the
//!   write-ahead log's disk write (the record is the same bytes under both). The collector
//!   enforces the spec under Exact too, where every event is kept as it came.
//! - CPU is this thread's time on a CPU (`/proc/thread-self/schedstat`), so other work on the
//!   machine inflates the wall time but not the CPU time; each figure is the median of `RUNS`
//!   (default 7) passes over every batch, Exact and Wide passes alternating. The store's share is
//!   indexing the stored events in a fresh embedded store (process CPU, its indexing threads
//!   included; the median of up to three runs).

use std::{borrow::Cow, hint::black_box, time::Instant};

use clusteraudit_collector::{
    batch,
    http::now_micros,
    policy::{Compiled, Tally},
};
use clusteraudit_core::{
    api::{PolicySpec, Profile},
    audit::{Body, Event, Level, ObjectReference, Stage},
    policy::{
        Evaluator, RequestAttributes,
        enforce::{Enforced, enforce},
        envelope::wide,
        render,
    },
};
use clusteraudit_embedded_store::Store;
use clusteraudit_loadgen::EventGenerator;
use serde_json::{Map, Value, json};

/// The kube-apiserver's default `--audit-webhook-batch-max-size`.
const BATCH: usize = 400;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Size and shape draws for one request's bodies, fixed by its auditID (which the seed fixes),
/// so that every run builds the same bytes. SplitMix64: a bench's size draws need no more.
struct Draws(u64);

impl Draws {
    fn new(audit_id: &str) -> Draws {
        Draws(audit_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }

    fn uid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..]
        )
    }

    fn time(&mut self) -> String {
        format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.range(1, 11),
            self.range(1, 28),
            self.range(0, 23),
            self.range(0, 59),
            self.range(0, 59)
        )
    }
}

fn kind_of(resource: &str) -> String {
    let known = [
        ("pods", "Pod"),
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("events", "Event"),
        ("endpoints", "Endpoints"),
        ("endpointslices", "EndpointSlice"),
        ("nodes", "Node"),
        ("namespaces", "Namespace"),
        ("persistentvolumes", "PersistentVolume"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
        ("leases", "Lease"),
        ("deployments", "Deployment"),
        ("replicasets", "ReplicaSet"),
        ("statefulsets", "StatefulSet"),
        ("daemonsets", "DaemonSet"),
        ("jobs", "Job"),
        ("cronjobs", "CronJob"),
        ("ingresses", "Ingress"),
        ("certificates", "Certificate"),
        ("certificaterequests", "CertificateRequest"),
        ("subjectaccessreviews", "SubjectAccessReview"),
    ];
    match known.iter().find(|(r, _)| *r == resource) {
        Some((_, kind)) => kind.to_string(),
        None => {
            let singular = resource.strip_suffix('s').unwrap_or(resource);
            let mut chars = singular.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        }
    }
}

fn api_version(o: &ObjectReference) -> String {
    let version = o.api_version.clone().unwrap_or_else(|| "v1".into());
    if o.api_group.is_empty() {
        version
    } else {
        format!("{}/{version}", o.api_group)
    }
}

/// The app a name belongs to: the name without a generated suffix.
fn app_of(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((head, tail)) if tail.len() <= 10 && !head.is_empty() => head,
        _ => name,
    }
}

fn metadata(o: &ObjectReference, name: &str, d: &mut Draws) -> Value {
    let app = app_of(name);
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    if !o.namespace.is_empty() && o.resource != "namespaces" {
        m.insert("namespace".into(), json!(o.namespace));
    }
    m.insert(
        "uid".into(),
        json!(o.uid.clone().unwrap_or_else(|| d.uid())),
    );
    m.insert(
        "resourceVersion".into(),
        json!(d.range(4_000_000, 9_000_000).to_string()),
    );
    if matches!(
        o.resource.as_str(),
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" | "cronjobs"
    ) {
        m.insert("generation".into(), json!(d.range(1, 40)));
    }
    m.insert("creationTimestamp".into(), json!(d.time()));
    let mut labels = Map::new();
    match o.resource.as_str() {
        "nodes" => {
            for (k, v) in [
                ("beta.kubernetes.io/arch", "amd64"),
                ("beta.kubernetes.io/os", "linux"),
                ("kubernetes.io/arch", "amd64"),
                ("kubernetes.io/hostname", name),
                ("kubernetes.io/os", "linux"),
                ("node.kubernetes.io/instance-type", "m6i.2xlarge"),
                ("topology.kubernetes.io/region", "eu-west-1"),
                ("topology.kubernetes.io/zone", "eu-west-1b"),
                ("node-role.kubernetes.io/worker", ""),
            ] {
                labels.insert(k.into(), json!(v));
            }
        }
        "namespaces" => {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        "leases" | "events" => {}
        _ => {
            labels.insert("app.kubernetes.io/name".into(), json!(app));
            labels.insert("app.kubernetes.io/instance".into(), json!(app));
            if d.range(0, 1) == 0 {
                labels.insert("app.kubernetes.io/managed-by".into(), json!("Helm"));
                labels.insert(
                    "helm.sh/chart".into(),
                    json!(format!("{app}-{}.{}.{}", d.range(0, 9), d.range(0, 30), 0)),
                );
            }
            if o.resource == "pods" || o.resource == "replicasets" {
                labels.insert("pod-template-hash".into(), json!(d.hex(10)));
            }
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    let mut annotations = Map::new();
    match o.resource.as_str() {
        "nodes" => {
            for (k, v) in [
                (
                    "csi.volume.kubernetes.io/nodeid",
                    format!("{{\"ebs.csi.aws.com\":\"i-0{}\"}}", d.hex(16)),
                ),
                ("node.alpha.kubernetes.io/ttl", "0".into()),
                (
                    "volumes.kubernetes.io/controller-managed-attach-detach",
                    "true".into(),
                ),
                (
                    "kubeadm.alpha.kubernetes.io/cri-socket",
                    "unix:///run/containerd/containerd.sock".into(),
                ),
            ] {
                annotations.insert(k.into(), json!(v));
            }
        }
        "pods" => {
            annotations.insert("prometheus.io/scrape".into(), json!("true"));
            annotations.insert("prometheus.io/port".into(), json!("9090"));
            if d.range(0, 2) == 0 {
                annotations.insert("kubectl.kubernetes.io/restartedAt".into(), json!(d.time()));
            }
        }
        "deployments" | "statefulsets" | "daemonsets" => {
            annotations.insert(
                "deployment.kubernetes.io/revision".into(),
                json!(d.range(1, 30).to_string()),
            );
            annotations.insert("meta.helm.sh/release-name".into(), json!(app));
            annotations.insert("meta.helm.sh/release-namespace".into(), json!(o.namespace));
        }
        _ => {}
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    let owner = match o.resource.as_str() {
        "pods" => Some(("apps/v1", "ReplicaSet", format!("{app}-{}", d.hex(10)))),
        "replicasets" => Some(("apps/v1", "Deployment", app.to_string())),
        "endpointslices" => Some(("v1", "Service", app.to_string())),
        "jobs" => Some(("batch/v1", "CronJob", app.to_string())),
        _ => None,
    };
    if let Some((api_version, kind, owner)) = owner {
        m.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": api_version, "kind": kind, "name": owner, "uid": d.uid(),
                    "controller": true, "blockOwnerDeletion": true}]),
        );
    }
    if o.resource == "endpointslices" {
        m.insert("generateName".into(), json!(format!("{app}-")));
    }
    Value::Object(m)
}

fn container(name: &str, d: &mut Draws) -> Value {
    json!({
        "name": name,
        "image": format!("registry.example.com/{name}:v{}.{}.{}", d.range(0, 3), d.range(0, 40), d.range(0, 9)),
        "args": [format!("--config=/etc/{name}/config.yaml"), "--metrics-bind-address=:9090",
                 "--health-probe-bind-address=:8081", "--leader-elect=true", "--v=2"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "0"}}},
            {"name": "LOG_LEVEL", "value": "info"},
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"},
                      "requests": {"cpu": format!("{}m", d.range(1, 20) * 10), "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": format!("/etc/{name}"), "readOnly": true},
            {"name": format!("kube-api-access-{}", d.hex(5)),
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8081, "scheme": "HTTP"},
                          "initialDelaySeconds": 15, "timeoutSeconds": 1, "periodSeconds": 20,
                          "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081, "scheme": "HTTP"},
                           "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10,
                           "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": true, "runAsNonRoot": true},
    })
}

fn pod_spec(app: &str, node: Option<&str>, d: &mut Draws) -> Value {
    let containers: Vec<Value> = match d.range(0, 3) {
        0 => vec![container(app, d), container("kube-rbac-proxy", d)],
        _ => vec![container(app, d)],
    };
    let mut spec = json!({
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": format!("{app}-config"), "defaultMode": 420}},
            {"name": format!("kube-api-access-{}", d.hex(5)), "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}},
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": app,
        "serviceAccount": app,
        "securityContext": {"runAsUser": 65532, "fsGroup": 65532},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
    });
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    spec
}

fn conditions(types: &[&str], d: &mut Draws) -> Value {
    Value::Array(
        types
            .iter()
            .map(|t| {
                json!({"type": t, "status": "True", "lastProbeTime": null,
                       "lastTransitionTime": d.time()})
            })
            .collect(),
    )
}

fn pod_status(app: &str, spec: &Value, d: &mut Draws) -> Value {
    let statuses: Vec<Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "state": {"running": {"startedAt": d.time()}},
                   "lastState": {}, "ready": true, "restartCount": d.range(0, 3),
                   "image": c["image"], "imageID": format!("registry.example.com/{app}@sha256:{}", d.hex(64)),
                   "containerID": format!("containerd://{}", d.hex(64)), "started": true})
        })
        .collect();
    let ip = format!("10.244.{}.{}", d.range(0, 14), d.range(2, 250));
    let host = format!("10.0.0.{}", d.range(11, 25));
    json!({
        "phase": "Running",
        "conditions": conditions(&["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"], d),
        "hostIP": host, "hostIPs": [{"ip": host}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": d.time(),
        "containerStatuses": statuses,
        "qosClass": "Burstable",
    })
}

fn node_status(name: &str, d: &mut Draws) -> Value {
    let conditions: Vec<Value> = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    .iter()
    .map(|(t, s, reason, message)| {
        json!({"type": t, "status": s, "lastHeartbeatTime": d.time(), "lastTransitionTime": d.time(),
               "reason": reason, "message": message})
    })
    .collect();
    let images: Vec<Value> = (0..d.range(30, 45))
        .map(|i| {
            let repo = format!("registry.example.com/team-{}/image-{i}", d.range(1, 9));
            json!({"names": [format!("{repo}@sha256:{}", d.hex(64)), format!("{repo}:v{}.{}.{}", d.range(0, 3), d.range(0, 40), d.range(0, 9))],
                   "sizeBytes": d.range(5_000_000, 900_000_000)})
        })
        .collect();
    let capacity = json!({"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0",
                          "hugepages-2Mi": "0", "memory": "32408452Ki", "pods": "110"});
    json!({
        "capacity": capacity,
        "allocatable": {"cpu": "7910m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0",
                        "hugepages-2Mi": "0", "memory": "31391620Ki", "pods": "110"},
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", d.range(11, 25))},
                      {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": d.hex(32), "systemUUID": d.uid(), "bootID": d.uid(),
                     "kernelVersion": "6.8.0-1021-aws", "osImage": "Ubuntu 24.04.1 LTS",
                     "containerRuntimeVersion": "containerd://2.0.2", "kubeletVersion": "v1.36.3",
                     "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images,
        "config": {},
    })
}

/// The object of `o` named `name`, as the kube-apiserver returns it (managedFields left out).
fn object(o: &ObjectReference, name: &str, d: &mut Draws) -> Value {
    let app = app_of(name).to_string();
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(kind_of(&o.resource)));
    obj.insert("apiVersion".into(), json!(api_version(o)));
    obj.insert("metadata".into(), metadata(o, name, d));
    let node = format!("node-{}", d.range(1, 15));
    let mut put = |k: &str, v: Value| {
        obj.insert(k.into(), v);
    };
    match o.resource.as_str() {
        "pods" => {
            let spec = pod_spec(&app, Some(&node), d);
            put("status", pod_status(&app, &spec, d));
            put("spec", spec);
        }
        "nodes" => {
            put(
                "spec",
                json!({"podCIDR": format!("10.244.{}.0/24", d.range(0, 14)),
                       "podCIDRs": [format!("10.244.{}.0/24", d.range(0, 14))],
                       "providerID": format!("aws:///eu-west-1b/i-0{}", d.hex(16))}),
            );
            put("status", node_status(name, d));
        }
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" | "cronjobs" => {
            let replicas = d.range(1, 5);
            let template = json!({"metadata": {"labels": {"app.kubernetes.io/name": app,
                                                          "app.kubernetes.io/instance": app}},
                                  "spec": pod_spec(&app, None, d)});
            put(
                "spec",
                json!({"replicas": replicas, "revisionHistoryLimit": 10,
                       "selector": {"matchLabels": {"app.kubernetes.io/name": app,
                                                    "app.kubernetes.io/instance": app}},
                       "template": template,
                       "strategy": {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                       "progressDeadlineSeconds": 600}),
            );
            let mut status = json!({"observedGeneration": d.range(1, 40), "replicas": replicas,
                                    "updatedReplicas": replicas, "readyReplicas": replicas,
                                    "availableReplicas": replicas});
            if o.resource == "deployments" {
                status["conditions"] = json!([
                    {"type": "Available", "status": "True", "lastUpdateTime": d.time(),
                     "lastTransitionTime": d.time(), "reason": "MinimumReplicasAvailable",
                     "message": "Deployment has minimum availability."},
                    {"type": "Progressing", "status": "True", "lastUpdateTime": d.time(),
                     "lastTransitionTime": d.time(), "reason": "NewReplicaSetAvailable",
                     "message": format!("ReplicaSet \"{app}-{}\" has successfully progressed.", d.hex(10))},
                ]);
            }
            put("status", status);
        }
        "leases" => put(
            "spec",
            json!({"holderIdentity": format!("{node}_{}", d.uid()), "leaseDurationSeconds": 40,
                   "acquireTime": format!("2026-11-30T08:{:02}:{:02}.{:06}Z", d.range(0, 59), d.range(0, 59), d.range(0, 999_999)),
                   "renewTime": format!("2026-11-30T09:{:02}:{:02}.{:06}Z", d.range(0, 59), d.range(0, 59), d.range(0, 999_999)),
                   "leaseTransitions": d.range(0, 12)}),
        ),
        "events" => {
            put(
                "involvedObject",
                json!({"kind": "Pod", "namespace": o.namespace, "name": app, "uid": d.uid(),
                       "apiVersion": "v1", "resourceVersion": d.range(4_000_000, 9_000_000).to_string(),
                       "fieldPath": format!("spec.containers{{{app}}}")}),
            );
            put("reason", json!("Pulled"));
            put(
                "message",
                json!(format!(
                    "Container image \"registry.example.com/{app}:v1.{}.0\" already present on machine",
                    d.range(0, 40)
                )),
            );
            put("source", json!({"component": "kubelet", "host": node}));
            put("firstTimestamp", json!(d.time()));
            put("lastTimestamp", json!(d.time()));
            put("count", json!(d.range(1, 30)));
            put("type", json!("Normal"));
            put("eventTime", Value::Null);
            put("reportingComponent", json!("kubelet"));
            put("reportingInstance", json!(node));
        }
        "endpointslices" | "endpoints" => {
            let endpoints: Vec<Value> = (0..d.range(2, 8))
                .map(|_| {
                    json!({"addresses": [format!("10.244.{}.{}", d.range(0, 14), d.range(2, 250))],
                           "conditions": {"ready": true, "serving": true, "terminating": false},
                           "targetRef": {"kind": "Pod", "namespace": o.namespace,
                                         "name": format!("{app}-{}-{}", d.hex(10), d.hex(5)), "uid": d.uid()},
                           "nodeName": format!("node-{}", d.range(4, 15)), "zone": "eu-west-1b"})
                })
                .collect();
            put("addressType", json!("IPv4"));
            put("endpoints", Value::Array(endpoints));
            put(
                "ports",
                json!([{"name": "http", "protocol": "TCP", "port": 8080}]),
            );
        }
        "services" => put(
            "spec",
            json!({"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
                             {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090}],
                   "selector": {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": app},
                   "clusterIP": format!("10.96.{}.{}", d.range(0, 255), d.range(1, 254)),
                   "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                   "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"}),
        ),
        "serviceaccounts" => {}
        "namespaces" => {
            put("spec", json!({"finalizers": ["kubernetes"]}));
            put("status", json!({"phase": "Active"}));
        }
        _ => {
            // Custom resources and the rest: a spec and a status of a few hundred bytes each.
            let fields: Map<String, Value> = (0..d.range(4, 12))
                .map(|i| {
                    let len = d.range(8, 40) as usize;
                    (
                        format!("field{i}"),
                        json!(format!("{app}-value-{}", d.hex(len))),
                    )
                })
                .collect();
            put("spec", Value::Object(fields));
            put(
                "status",
                json!({"observedGeneration": d.range(1, 40),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": d.time(),
                                       "reason": "Ready", "message": format!("{} is ready", kind_of(&o.resource))}]}),
            );
        }
    }
    Value::Object(obj)
}

fn status_success(o: &ObjectReference, name: &str, d: &mut Draws) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": o.api_group, "kind": o.resource, "uid": d.uid()}})
}

/// The request and response bodies the kube-apiserver logs at RequestResponse for `event`'s
/// request.
fn bodies(event: &Event, d: &mut Draws) -> (Option<Value>, Option<Value>) {
    let code = event
        .response_status
        .as_ref()
        .and_then(|s| s.code)
        .unwrap_or(200);
    let Some(o) = &event.object_ref else {
        let path = event.request_uri.split('?').next().unwrap_or_default();
        let response = match path {
            "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                  "serverAddress": "10.0.0.11:6443"}]})),
            p if p.starts_with("/apis") => {
                let groups: Vec<Value> = (0..d.range(25, 35))
                    .map(|i| {
                        let gv = format!("group{i}.example.io/v1");
                        json!({"name": format!("group{i}.example.io"),
                               "versions": [{"groupVersion": gv, "version": "v1"}],
                               "preferredVersion": {"groupVersion": gv, "version": "v1"}})
                    })
                    .collect();
                Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
            }
            _ => None,
        };
        return (None, response);
    };
    let failure = (code >= 400).then(|| {
        let status = event.response_status.as_ref();
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": status.and_then(|s| s.message.clone()),
               "reason": status.and_then(|s| s.reason.clone()),
               "details": {"name": o.name, "group": o.api_group, "kind": o.resource},
               "code": code})
    });
    // A refused request's body is never read.
    let read_body = code != 403;
    let name = if o.name.is_empty() {
        format!("{}-{}", o.namespace, d.hex(5))
    } else {
        o.name.clone()
    };
    let (request, response) = match (event.verb.as_str(), o.subresource.as_str()) {
        ("watch", _) | (_, "log" | "exec" | "attach" | "portforward" | "proxy") => (None, None),
        (_, "binding") => (
            Some(json!({"kind": "Binding", "apiVersion": "v1",
                        "metadata": {"name": name, "namespace": o.namespace, "uid": d.uid()},
                        "target": {"kind": "Node", "name": format!("node-{}", d.range(4, 15))}})),
            Some(status_success(o, &name, d)),
        ),
        (_, "eviction") => (
            Some(json!({"kind": "Eviction", "apiVersion": "policy/v1",
                        "metadata": {"name": name, "namespace": o.namespace}})),
            Some(status_success(o, &name, d)),
        ),
        (verb, "scale") => {
            let replicas = d.range(1, 8);
            let scale = json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                               "metadata": {"name": name, "namespace": o.namespace, "uid": d.uid(),
                                            "resourceVersion": d.range(4_000_000, 9_000_000).to_string(),
                                            "creationTimestamp": d.time()},
                               "spec": {"replicas": replicas},
                               "status": {"replicas": replicas,
                                          "selector": format!("app.kubernetes.io/name={}", app_of(&name))}});
            let request = match verb {
                "update" => Some(scale.clone()),
                "patch" => event
                    .request_object
                    .as_ref()
                    .map(Body::to_value)
                    .or_else(|| Some(json!({"spec": {"replicas": replicas}}))),
                _ => None,
            };
            (request, Some(scale))
        }
        ("get", _) => (None, Some(object(o, &name, d))),
        ("list", _) => {
            let count = if o.namespace.is_empty() {
                match o.resource.as_str() {
                    "pods" => 120,
                    "nodes" => 15,
                    "events" => 80,
                    _ => d.range(10, 40),
                }
            } else if event.request_uri.contains("spec.nodeName") {
                d.range(8, 15)
            } else {
                d.range(2, 12)
            };
            let items: Vec<Value> = (0..count)
                .map(|i| {
                    let mut item = object(o, &format!("{}-{i}-{}", o.resource, d.hex(5)), d);
                    if let Value::Object(m) = &mut item {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    item
                })
                .collect();
            let list = json!({"kind": format!("{}List", kind_of(&o.resource)),
                              "apiVersion": api_version(o),
                              "metadata": {"resourceVersion": d.range(4_000_000, 9_000_000).to_string()},
                              "items": items});
            (None, Some(list))
        }
        ("create" | "update", _) => {
            let mut sent = object(o, &name, d);
            if event.verb == "create"
                && let Value::Object(m) = &mut sent
            {
                m.remove("status");
                if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                    meta.remove("uid");
                    meta.remove("resourceVersion");
                    meta.remove("creationTimestamp");
                }
            }
            (Some(sent), Some(object(o, &name, d)))
        }
        ("patch", _) => {
            let patch = event
                .request_object
                .as_ref()
                .map(Body::to_value)
                .unwrap_or_else(|| {
                    if o.subresource == "status" {
                        json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                                      "conditions": [{"type": "Ready", "status": "True",
                                                      "lastHeartbeatTime": d.time(),
                                                      "lastTransitionTime": d.time()}]}})
                    } else {
                        json!({"metadata": {"annotations": {"example.io/last-sync": d.time()},
                                        "labels": {"example.io/revision": d.hex(8)}}})
                    }
                });
            (Some(patch), Some(object(o, &name, d)))
        }
        ("delete", _) => {
            let response = if o.resource == "pods" {
                object(o, &name, d)
            } else {
                status_success(o, &name, d)
            };
            (
                event.request_object.as_ref().map(Body::to_value),
                Some(response),
            )
        }
        _ => (
            event.request_object.as_ref().map(Body::to_value),
            Some(status_success(o, &name, d)),
        ),
    };
    match failure {
        Some(failure) => (request.filter(|_| read_body), Some(failure)),
        None => (request, response),
    }
}

fn long_running(event: &Event) -> bool {
    event.verb == "watch"
        || event.object_ref.as_ref().is_some_and(|o| {
            matches!(
                o.subresource.as_str(),
                "log" | "exec" | "attach" | "portforward" | "proxy"
            )
        })
}

/// What a kube-apiserver running the wide envelope sends for the request `generated` stands for.
fn lift(generated: Event, envelope: &Evaluator, out: &mut Vec<String>) {
    let decision = envelope.evaluate(&RequestAttributes::of_event(&generated));
    if decision.level == Level::None {
        return;
    }
    let mut draws = Draws::new(&generated.audit_id);
    let (request, response) = if decision.level >= Level::Request {
        bodies(&generated, &mut draws)
    } else {
        (None, None)
    };
    let ok = generated
        .response_status
        .as_ref()
        .and_then(|s| s.code)
        .is_some_and(|c| c < 400);
    let mut complete = generated;
    complete.level = decision.level;
    complete.stage = Stage::ResponseComplete;
    complete.request_object = request.as_ref().map(Body::from_value);
    complete.response_object = response
        .filter(|_| decision.level == Level::RequestResponse)
        .as_ref()
        .map(Body::from_value);
    if long_running(&complete) && ok && !decision.omit_stages.contains(&Stage::ResponseStarted) {
        let mut started = complete.clone();
        started.stage = Stage::ResponseStarted;
        started.response_object = None;
        started.stage_timestamp = started.request_received_timestamp.clone();
        out.push(serde_json::to_string(&started).expect("an Event serializes"));
    }
    if !decision.omit_stages.contains(&Stage::ResponseComplete) {
        out.push(serde_json::to_string(&complete).expect("an Event serializes"));
    }
}

/// What a kube-apiserver running `policy` sends of the wide stream.
fn narrow(wide_events: &[String], policy: &Evaluator) -> Vec<String> {
    wide_events
        .iter()
        .filter_map(|raw| {
            let event: Event = serde_json::from_str(raw).expect("a wide event parses");
            match enforce(
                raw,
                &event,
                policy.evaluate(&RequestAttributes::of_event(&event)),
            ) {
                Enforced::Keep => Some(raw.clone()),
                Enforced::Reduce(reduced) => Some(reduced),
                Enforced::Drop(_) => None,
            }
        })
        .collect()
}

/// EventLists of up to [`BATCH`] events, as the webhook backend posts them.
fn batches(events: &[String]) -> Vec<Vec<u8>> {
    events
        .chunks(BATCH)
        .map(|chunk| {
            let mut body =
                br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#
                    .to_vec();
            for (i, event) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(event.as_bytes());
            }
            body.extend_from_slice(b"]}");
            body
        })
        .collect()
}

/// One batch through the collector's intake, as its webhook handler takes it: decoded, each event
/// checked for its time and judged by the topic's policy, the kept ones put in a log record.
fn intake<'a>(body: &'a [u8], policy: &Compiled, topic: &str, now: i64) -> Vec<Cow<'a, str>> {
    let timed = batch::decode_parsed_event_list(body).expect("the batch decodes");
    let mut tally = Tally::default();
    let mut items: Vec<Cow<'a, str>> = Vec::with_capacity(timed.len());
    for (item, time, event) in timed {
        if batch::check_time(time, now, Some(30)).is_err() {
            continue;
        }
        match policy.judge(item, &event, &mut tally) {
            Enforced::Keep => items.push(item.into()),
            Enforced::Reduce(reduced) => items.push(reduced.into()),
            Enforced::Drop(_) => {}
        }
    }
    black_box(batch::encode_record(topic, &items));
    black_box(&tally);
    items
}

/// Nanoseconds this thread has spent on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Nanoseconds the whole process has spent on a CPU (every thread).
fn process_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    ticks * 10_000_000
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// (CPU ms, wall ms) of one pass of `take` over every batch.
fn time_pass(bodies: &[Vec<u8>], take: impl Fn(&[u8])) -> (f64, f64) {
    let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
    for body in bodies {
        take(body);
    }
    (
        (thread_cpu_ns() - cpu0) as f64 / 1e6,
        wall0.elapsed().as_secs_f64() * 1e3,
    )
}

/// (process CPU ms, wall ms) to index `stored` into a fresh embedded store.
fn time_store(stored: &[String], dir: &std::path::Path) -> (f64, f64) {
    let store = Store::open(dir).expect("the store opens");
    let topic = store.catalog_file().catalog().route().to_string();
    let (cpu0, wall0) = (process_cpu_ns(), Instant::now());
    let mut position = 0;
    for chunk in stored.chunks(BATCH) {
        let slices: Vec<&[u8]> = chunk.iter().map(|e| e.as_bytes()).collect();
        position += 1;
        store
            .apply(position, &topic, &slices, None)
            .expect("the store takes it");
    }
    store.commit(position).expect("the store commits");
    let took = (
        (process_cpu_ns() - cpu0) as f64 / 1e6,
        wall0.elapsed().as_secs_f64() * 1e3,
    );
    drop(store);
    took
}

/// The wide stream's bytes by verb and resource, largest first: what the model's figures rest on.
fn print_mix(events: &[String]) {
    let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for raw in events {
        let event: Event = serde_json::from_str(raw).expect("a wide event parses");
        let resource = event.object_ref.as_ref().map_or_else(
            || "(non-resource)".to_string(),
            |o| match o.subresource.as_str() {
                "" => o.resource.clone(),
                sub => format!("{}/{sub}", o.resource),
            },
        );
        let entry = by
            .entry(format!("{} {resource} {:?}", event.verb, event.level))
            .or_default();
        entry.0 += 1;
        entry.1 += raw.len();
    }
    let total: usize = by.values().map(|(_, b)| b).sum();
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    println!("wide stream by verb, resource and level (events, mean bytes, share of bytes):");
    for (key, (n, bytes)) in rows.iter().take(25) {
        println!(
            "  {key:<48} {n:>7} {:>8} {:>5.1}%",
            bytes / n,
            100.0 * *bytes as f64 / total as f64
        );
    }
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let requests: usize = env_or("REQUESTS", if benchmarking { 20_000 } else { 300 });
    let runs: usize = env_or("RUNS", if benchmarking { 7 } else { 1 }).max(1);
    let dir = tempfile::Builder::new()
        .prefix("clusteraudit-bench-envelope-")
        .tempdir()
        .unwrap();

    let envelope = Evaluator::new(&wide().policy);
    let mut generator = EventGenerator::new(42);
    let mut wide_events = Vec::with_capacity(requests * 11 / 10);
    for _ in 0..requests {
        lift(generator.next_event(), &envelope, &mut wide_events);
    }
    let wide_bodies = batches(&wide_events);
    if std::env::var_os("ENVELOPE_MIX").is_some() {
        print_mix(&wide_events);
    }
    let per_k = 1000.0 / requests as f64;
    let bytes = |bodies: &[Vec<u8>]| bodies.iter().map(Vec::len).sum::<usize>() as f64;
    println!(
        "{requests} requests (loadgen seed 42) in EventLists of up to {BATCH}; specs with \
         excludeNoise and omitManagedFields; figures per 1,000 requests, intake the median of \
         {runs} runs"
    );
    println!(
        "{:<18} {:>6} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "spec", "sent", "events", "KiB", "intake CPU", "of decode", "wall"
    );
    let topic = "bench-topic";
    for (label, profile) in [
        ("Default", Profile::Default),
        ("AllRequestBodies", Profile::AllRequestBodies),
        ("Metadata", Profile::Metadata),
    ] {
        let spec = render(&PolicySpec {
            profile,
            ..PolicySpec::default()
        })
        .expect("a profile renders");
        let compiled = Compiled {
            hash: spec.hash.clone(),
            evaluator: Evaluator::new(&spec.policy),
        };
        let exact_events = narrow(&wide_events, &compiled.evaluator);
        let exact_bodies = batches(&exact_events);

        // Stored is the same either way: the collector narrows Wide to exactly what Exact sends.
        let now = now_micros();
        for (name, bodies) in [("Exact", &exact_bodies), ("Wide", &wide_bodies)] {
            let stored: Vec<String> = bodies
                .iter()
                .flat_map(|b| intake(b, &compiled, topic, now))
                .map(Cow::into_owned)
                .collect();
            assert!(
                stored == exact_events,
                "{label}: the collector stores under {name} what Exact sends"
            );
        }

        // The passes alternate (Exact then Wide, intake then decoding alone), so that the builds
        // sharing the machine weigh on both alike.
        let streams = [
            ("Exact", &exact_bodies, exact_events.len()),
            ("Wide", &wide_bodies, wide_events.len()),
        ];
        let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; streams.len()];
        for _ in 0..runs {
            let now = now_micros();
            for ((_, bodies, _), [cpu, wall, decode]) in streams.iter().zip(&mut samples) {
                let (c, w) = time_pass(bodies, |body| {
                    black_box(intake(body, &compiled, topic, now));
                });
                cpu.push(c);
                wall.push(w);
                // Of which decoding: the EventList and each event parsed, bodies included.
                let (c, _) = time_pass(bodies, |body| {
                    black_box(batch::decode_parsed_event_list(body).expect("the batch decodes"));
                });
                decode.push(c);
            }
        }
        let mut rows = Vec::new();
        for ((name, bodies, events), [cpu, wall, decode]) in streams.iter().zip(samples) {
            let row = (
                *events as f64 * per_k,
                bytes(bodies) * per_k / 1024.0,
                median(cpu) * per_k,
                median(wall) * per_k,
                median(decode) * per_k,
            );
            println!(
                "{label:<18} {name:>6} {:>8.0} {:>10.0} {:>8.2}ms {:>8.2}ms {:>8.2}ms",
                row.0, row.1, row.2, row.4, row.3
            );
            rows.push(row);
        }
        let (exact, wide) = (rows[0], rows[1]);
        println!(
            "{:<18} {:>6} {:>7.2}x {:>9.2}x {:>9.2}x {:>9.2}x {:>9.2}x",
            "",
            "ratio",
            wide.0 / exact.0,
            wide.1 / exact.1,
            wide.2 / exact.2,
            wide.4 / exact.4,
            wide.3 / exact.3
        );
        let (store_cpu, store_wall): (Vec<f64>, Vec<f64>) = (0..runs.min(3))
            .map(|run| {
                time_store(
                    &exact_events,
                    &dir.path().join(format!("{profile:?}-{run}")),
                )
            })
            .unzip();
        let (store_cpu, store_wall) = (median(store_cpu), median(store_wall));
        println!(
            "{:<18} {:>6} {:>8.0} {:>10} {:>8.2}ms {:>10} {:>8.2}ms  (embedded store indexing \
             what is stored, either way)",
            "",
            "store",
            exact.0,
            "",
            store_cpu * per_k,
            "",
            store_wall * per_k
        );
    }
}
