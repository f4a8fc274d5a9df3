//! [`EventGenerator`]: the cluster model in motion.

mod event;
mod request;
mod scenarios;

use std::hash::{Hash, Hasher};

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use clusteraudit_core::audit::{Event, EventList};

use crate::model::WorkloadKind::{
    DaemonSet as DS, Deployment as D, StatefulSet as SS, Static as ST,
};
use crate::model::*;

/// The draws the model makes. Its tables are constants, never empty and never all zero weight, so
/// a failed draw is a bug in a table.
trait Draw: Rng {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        items.choose(self).expect("a model table is not empty")
    }

    fn pick_weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        items
            .choose_weighted(self, |&(_, weight)| weight)
            .expect("a model table has weights")
            .0
    }

    /// An index drawn with probability proportional to its weight.
    fn weighted_index(&mut self, weights: impl IntoIterator<Item = u32>) -> usize {
        WeightedIndex::new(weights)
            .expect("a model table has weights")
            .sample(self)
    }

    /// A version-4 UUID, as the kube-apiserver gives auditIDs and objects, from this generator's
    /// bits so that a seed fixes it.
    fn uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.random())
            .into_uuid()
            .to_string()
    }

    /// `n` characters of the alphabet Kubernetes uses for generated name suffixes.
    fn k8s_suffix(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n).map(|_| *self.pick(ALPHABET) as char).collect()
    }
}

impl<R: Rng + ?Sized> Draw for R {}

/// A stable UUID for a name (object UIDs must not change between events about the same object).
fn stable_uuid(seed: u64, parts: &[&str]) -> String {
    let mut hasher = rustc_hash::FxHasher::default();
    (seed, parts).hash(&mut hasher);
    SmallRng::seed_from_u64(hasher.finish()).uuid()
}

struct Node {
    name: String,
    ip: String,
    arch: &'static str,
}

struct Workload {
    namespace: &'static str,
    name: &'static str,
    kind: WorkloadKind,
    /// pod-template-hash of the current ReplicaSet (Deployments).
    hash: String,
    /// Suffix of the Service's EndpointSlice.
    slice: String,
    pods: Vec<usize>,
}

struct Pod {
    namespace: &'static str,
    name: String,
    node: usize,
    ip: String,
    workload: usize,
    /// JTI of the pod's projected service account token.
    token_id: String,
}

/// Deterministic realistic event generator, usable from tests and benchmarks too.
///
/// Everything but the timestamps follows from the seed (auditIDs included, so two runs of one build
/// with the same seed post the same auditIDs); timestamps follow the clock each event is drawn at.
pub struct EventGenerator {
    rng: SmallRng,
    /// When the event being drawn is answered: the draws that carry a time of their own (a
    /// rollout-restart annotation) read it here, so that a seed and a clock fix every byte.
    now: jiff::Timestamp,
    seed: u64,
    nodes: Vec<Node>,
    workloads: Vec<Workload>,
    pods: Vec<Pod>,
    resource_version: u64,
    apiserver_leases: Vec<String>,
    apiserver_uid: String,
    sa_uids: Vec<String>,
    /// The workload whose pods each of `SA_PROFILES` runs in.
    sa_workloads: Vec<usize>,
}

impl EventGenerator {
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let nodes: Vec<Node> = (1..=NODE_COUNT)
            .map(|n| Node {
                name: format!("node-{n}"),
                ip: format!("10.0.0.{}", 10 + n),
                arch: if n > 12 { "arm64" } else { "amd64" },
            })
            .collect();
        let mut workloads = Vec::new();
        let mut pods = Vec::new();
        let mut pod_ips = rustc_hash::FxHashSet::default();
        for &(namespace, name, kind, replicas) in WORKLOADS {
            let index = workloads.len();
            let hash_len = if rng.random_bool(0.5) { 9 } else { 10 };
            let mut workload = Workload {
                namespace,
                name,
                kind,
                hash: rng.k8s_suffix(hash_len),
                slice: rng.k8s_suffix(5),
                pods: Vec::new(),
            };
            let placements: Vec<(String, usize)> = match kind {
                D => (0..replicas)
                    .map(|_| {
                        let name = format!("{name}-{}-{}", workload.hash, rng.k8s_suffix(5));
                        (
                            name,
                            CONTROL_PLANE_NODES
                                + rng.random_range(0..NODE_COUNT - CONTROL_PLANE_NODES),
                        )
                    })
                    .collect(),
                SS => (0..replicas)
                    .map(|i| {
                        let node = CONTROL_PLANE_NODES
                            + rng.random_range(0..NODE_COUNT - CONTROL_PLANE_NODES);
                        (format!("{name}-{i}"), node)
                    })
                    .collect(),
                DS => (0..NODE_COUNT)
                    .map(|node| (format!("{name}-{}", rng.k8s_suffix(5)), node))
                    .collect(),
                ST => (0..CONTROL_PLANE_NODES)
                    .map(|node| (format!("{name}-node-{}", node + 1), node))
                    .collect(),
            };
            for (pod_name, node) in placements {
                let host_network =
                    kind == ST || matches!(name, "kube-proxy" | "node-exporter" | "fluent-bit");
                let ip = if host_network {
                    nodes[node].ip.clone()
                } else {
                    loop {
                        let ip = format!("10.244.{}.{}", node, rng.random_range(2..=250));
                        if pod_ips.insert(ip.clone()) {
                            break ip;
                        }
                    }
                };
                workload.pods.push(pods.len());
                pods.push(Pod {
                    namespace,
                    name: pod_name,
                    node,
                    ip,
                    workload: index,
                    token_id: rng.uuid(),
                });
            }
            workloads.push(workload);
        }
        let apiserver_leases = (0..CONTROL_PLANE_NODES)
            .map(|_| format!("apiserver-{}", rng.k8s_suffix(26)))
            .collect();
        let apiserver_uid = rng.uuid();
        let sa_uids = (0..SA_PROFILES.len() + KCM_CONTROLLERS.len())
            .map(|_| rng.uuid())
            .collect();
        let resource_version = rng.random_range(4_000_000..=9_000_000);
        let sa_workloads = SA_PROFILES
            .iter()
            .map(|p| {
                workloads
                    .iter()
                    .position(|w| w.namespace == p.namespace && w.name == p.workload)
                    .expect("every profile names a workload")
            })
            .collect();
        EventGenerator {
            rng,
            now: jiff::Timestamp::UNIX_EPOCH,
            seed,
            nodes,
            workloads,
            pods,
            resource_version,
            apiserver_leases,
            apiserver_uid,
            sa_uids,
            sa_workloads,
        }
    }

    /// The next event, stamped with the current time.
    pub fn next_event(&mut self) -> Event {
        self.next_event_at(jiff::Timestamp::now())
    }

    /// The next event, answered at `now`.
    pub fn next_event_at(&mut self, now: jiff::Timestamp) -> Event {
        self.now = now;
        let req = self.draft();
        self.finish(req, now)
    }

    /// `size` events as an `audit.k8s.io/v1` EventList.
    pub fn next_list(&mut self, size: usize) -> EventList {
        EventList {
            api_version: Some("audit.k8s.io/v1".into()),
            kind: Some("EventList".into()),
            items: (0..size).map(|_| self.next_event()).collect(),
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.resource_version += self.rng.random_range(1..=40);
        self.resource_version
    }

    fn random_pod(&mut self) -> usize {
        self.rng.random_range(0..self.pods.len())
    }

    fn pod_on_node(&mut self, node: usize) -> usize {
        // A few tries for a pod on that node; every node runs DaemonSet pods, so this ends.
        loop {
            let pod = self.random_pod();
            if self.pods[pod].node == node {
                return pod;
            }
        }
    }

    fn workload_in(&mut self, namespace: &str) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.workloads.len())
            .filter(|&w| self.workloads[w].namespace == namespace)
            .collect();
        (!candidates.is_empty()).then(|| *self.rng.pick(&candidates))
    }

    fn app_workload(&mut self) -> usize {
        loop {
            let w = self.rng.random_range(0..self.workloads.len());
            if self.workloads[w].kind != ST {
                return w;
            }
        }
    }

    fn deployment(&mut self) -> usize {
        self.workload_of_kind(D)
    }

    /// A random workload of `kind` (every kind occurs in `WORKLOADS`, so this ends).
    fn workload_of_kind(&mut self, kind: WorkloadKind) -> usize {
        loop {
            let w = self.rng.random_range(0..self.workloads.len());
            if self.workloads[w].kind == kind {
                return w;
            }
        }
    }

    /// A plausible name for an object of `res` belonging to workload `w`.
    fn object_name(&mut self, res: &Res, w: usize) -> String {
        let workload = &self.workloads[w];
        let name = workload.name;
        match res.resource {
            "pods" => {
                let pods = &self.workloads[w].pods;
                let pod = pods[self.rng.random_range(0..pods.len())];
                self.pods[pod].name.clone()
            }
            "replicasets" => format!("{name}-{}", workload.hash),
            "endpointslices" => format!("{name}-{}", workload.slice),
            "configmaps" => match self.rng.random_range(0..4) {
                0 => "kube-root-ca.crt".into(),
                1 => format!("{name}-env"),
                _ => format!("{name}-config"),
            },
            "secrets" => match self.rng.random_range(0..4) {
                0 => format!("{name}-tls"),
                1 => format!(
                    "sh.helm.release.v1.{name}.v{}",
                    self.rng.random_range(1..=14)
                ),
                _ => format!("{name}-credentials"),
            },
            "events" => {
                let pods = &self.workloads[w].pods;
                let pod = pods[self.rng.random_range(0..pods.len())];
                format!(
                    "{}.{:016x}",
                    self.pods[pod].name,
                    self.rng.random::<u64>() >> 4
                )
            }
            "jobs" => format!("{name}-{}", self.rng.random_range(29_000_000..=29_400_000)),
            "persistentvolumeclaims" => format!("data-{name}-{}", self.rng.random_range(0..3)),
            "certificates" | "certificaterequests" => format!("{name}-tls"),
            "leases" => format!("{name}-leader"),
            "applications" => {
                let other = self.app_workload();
                self.workloads[other].name.to_string()
            }
            _ => name.to_string(),
        }
    }

    /// `allowWatchBookmarks=true&...&watch=true`, and the timeout it asks for.
    fn watch_query(&mut self, selector: Option<&str>) -> (String, u64) {
        let timeout = self.rng.random_range(300..=599);
        let rv = self.resource_version - self.rng.random_range(0..=50_000);
        let selector = selector.map(|s| format!("&{s}")).unwrap_or_default();
        (
            format!(
                "allowWatchBookmarks=true{selector}&resourceVersion={rv}\
                 &timeout={}m{}s&timeoutSeconds={timeout}&watch=true",
                timeout / 60,
                timeout % 60
            ),
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};
    use rustc_hash::{FxHashMap, FxHashSet};
    use serde_json::{Value, json};

    use clusteraudit_core::audit::{Level, Stage};

    use super::*;
    use crate::event_list_json;

    /// `n` events of a seed, answered a millisecond apart from a fixed instant, so that two
    /// samples compare byte for byte whenever they run.
    fn sample(seed: u64, n: usize) -> Vec<Event> {
        let start: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let mut generator = EventGenerator::new(seed);
        (0..n)
            .map(|i| generator.next_event_at(start + SignedDuration::from_millis(i as i64)))
            .collect()
    }

    #[test]
    fn generator_is_deterministic_for_a_seed() {
        let a = sample(7, 2_000);
        let b = sample(7, 2_000);
        assert_eq!(a, b);
        let c = sample(8, 2_000);
        assert_ne!(a, c);
        assert_ne!(a[0].audit_id, c[0].audit_id);
        assert!(
            a.iter().any(|event| event
                .request_object
                .as_ref()
                .is_some_and(|body| body.get().contains("restartedAt"))),
            "the sample holds a rollout restart, whose annotation carries a time of its own"
        );
    }

    #[test]
    fn events_round_trip_through_serde() {
        let mut generator = EventGenerator::new(3);
        let list = generator.next_list(1_000);
        for event in &list.items {
            let json = serde_json::to_string(event).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, event);
        }
        let body = event_list_json(&list);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "EventList");
        assert_eq!(value["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(value["metadata"], json!({}));
        let back: EventList = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn audit_ids_are_unique_uuids() {
        let events = sample(1, 10_000);
        let ids: FxHashSet<&str> = events.iter().map(|e| e.audit_id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
        for id in ids.iter().take(100) {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
        }
    }

    #[test]
    fn event_sizes_are_like_real_metadata_events() {
        let events = sample(5, 10_000);
        let mut sizes: Vec<usize> = events
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap().len())
            .collect();
        sizes.sort_unstable();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        let (p5, p95) = (sizes[sizes.len() / 20], sizes[sizes.len() * 19 / 20]);
        eprintln!(
            "event sizes: mean {mean:.0}, min {}, p5 {p5}, p50 {}, p95 {p95}, max {}",
            sizes[0],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        );
        assert!((600.0..=1000.0).contains(&mean), "mean size {mean}");
        assert!(p5 >= 450 && p95 <= 1500, "p5 {p5}, p95 {p95}");
        assert!(sizes[0] >= 300 && sizes[sizes.len() - 1] <= 2000);
    }

    #[test]
    fn events_vary_like_a_real_cluster() {
        let events = sample(11, 10_000);
        let distinct =
            |f: &dyn Fn(&Event) -> String| events.iter().map(f).collect::<FxHashSet<String>>();
        let users = distinct(&|e| e.user.username.clone());
        let verbs = distinct(&|e| e.verb.clone());
        let resources = distinct(&|e| {
            e.object_ref.as_ref().map_or(String::new(), |o| {
                if o.subresource.is_empty() {
                    format!("{}/{}", o.api_group, o.resource)
                } else {
                    format!("{}/{}/{}", o.api_group, o.resource, o.subresource)
                }
            })
        });
        let namespaces = distinct(&|e| {
            e.object_ref
                .as_ref()
                .map_or(String::new(), |o| o.namespace.clone())
        });
        let names = distinct(&|e| {
            e.object_ref
                .as_ref()
                .map_or(String::new(), |o| o.name.clone())
        });
        let ips = distinct(&|e| e.source_ips[0].clone());
        let agents = distinct(&|e| e.user_agent.clone().unwrap_or_default());
        let codes = distinct(&|e| {
            e.response_status
                .as_ref()
                .and_then(|s| s.code)
                .unwrap_or(0)
                .to_string()
        });
        let stages = distinct(&|e| format!("{:?}", e.stage));
        eprintln!(
            "{} users, {} verbs, {} resources, {} namespaces, {} names, {} source IPs, \
             {} user agents, codes {codes:?}",
            users.len(),
            verbs.len(),
            resources.len(),
            namespaces.len(),
            names.len(),
            ips.len(),
            agents.len()
        );
        assert!(users.len() >= 40, "{users:?}");
        for user in [
            "system:node:node-1",
            "system:kube-controller-manager",
            "system:kube-scheduler",
            "system:anonymous",
            "system:serviceaccount:kube-system:coredns",
            "alice@example.com",
        ] {
            assert!(users.contains(user), "{user}");
        }
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            assert!(verbs.contains(verb), "{verb}");
        }
        for resource in [
            "/pods",
            "/pods/status",
            "/pods/log",
            "/pods/exec",
            "/configmaps",
            "/secrets",
            "coordination.k8s.io/leases",
            "apps/deployments",
            "apps/deployments/scale",
            "/nodes",
            "/nodes/status",
            "/events",
            "discovery.k8s.io/endpointslices",
            "/serviceaccounts/token",
        ] {
            assert!(resources.contains(resource), "{resource}");
        }
        assert!(resources.len() >= 30, "{resources:?}");
        assert!(namespaces.len() >= 13, "{namespaces:?}");
        assert!(names.len() >= 300, "{}", names.len());
        assert!((24..=60).contains(&ips.len()), "{ips:?}");
        assert!(agents.len() >= 15, "{agents:?}");
        for code in ["200", "201", "101", "403", "404", "409", "422"] {
            assert!(codes.contains(code), "{code}");
        }
        assert!(stages.contains("ResponseStarted") && stages.contains("ResponseComplete"));

        // Watch and get lead, like in a real log; Metadata is almost everything.
        let mut by_verb: FxHashMap<&str, usize> = FxHashMap::default();
        for e in &events {
            *by_verb.entry(e.verb.as_str()).or_default() += 1;
        }
        let mut ranked: Vec<(&str, usize)> = by_verb.into_iter().collect();
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        eprintln!("verbs: {ranked:?}");
        let top: FxHashSet<&str> = ranked[..3].iter().map(|(v, _)| *v).collect();
        assert!(top.contains("get") && top.contains("watch"), "{ranked:?}");
        let metadata = events.iter().filter(|e| e.level == Level::Metadata).count();
        assert!(metadata * 100 >= events.len() * 97, "{metadata}");
        let ok = events
            .iter()
            .filter(|e| {
                matches!(
                    e.response_status.as_ref().and_then(|s| s.code),
                    Some(200 | 201 | 101)
                )
            })
            .count();
        assert!(ok * 100 >= events.len() * 90, "{ok}");
        let server_errors = events
            .iter()
            .filter(|e| e.response_status.as_ref().and_then(|s| s.code) == Some(500))
            .count();
        assert!(server_errors * 500 <= events.len(), "{server_errors}");
    }

    #[test]
    fn request_uris_match_the_object_reference() {
        for e in sample(13, 5_000) {
            let (path, _query) = e
                .request_uri
                .split_once('?')
                .unwrap_or((&e.request_uri, ""));
            let Some(o) = &e.object_ref else {
                assert!(
                    path.starts_with('/') && !path.starts_with("/api/v1/"),
                    "{}",
                    e.request_uri
                );
                continue;
            };
            let mut expected = if o.api_group.is_empty() {
                "/api/v1".to_string()
            } else {
                format!(
                    "/apis/{}/{}",
                    o.api_group,
                    o.api_version.as_deref().unwrap()
                )
            };
            if !o.namespace.is_empty() && o.resource != "namespaces" {
                expected += &format!("/namespaces/{}", o.namespace);
            }
            expected += &format!("/{}", o.resource);
            let collection = matches!(e.verb.as_str(), "list" | "watch")
                || e.verb == "create" && o.subresource.is_empty();
            if !collection {
                assert!(!o.name.is_empty(), "{e:?}");
                expected += &format!("/{}", o.name);
                if !o.subresource.is_empty() {
                    expected += &format!("/{}", o.subresource);
                }
            }
            assert_eq!(path, expected, "{e:?}");
            if e.verb == "watch" {
                assert!(e.request_uri.contains("watch=true"), "{}", e.request_uri);
            }
            assert_eq!(
                clusteraudit_core::policy::RequestAttributes::of_event(&e).path,
                path
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_micros_at_the_wall_clock() {
        let before = Timestamp::now();
        let mut generator = EventGenerator::new(17);
        let events: Vec<Event> = (0..2_000).map(|_| generator.next_event()).collect();
        let after = Timestamp::now();
        for e in &events {
            let stage = e.stage_timestamp.as_deref().unwrap();
            let received = e.request_received_timestamp.as_deref().unwrap();
            for t in [stage, received] {
                assert_eq!(t.len(), "2026-11-26T15:04:05.123456Z".len(), "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
            }
            let stage: Timestamp = stage.parse().unwrap();
            let received: Timestamp = received.parse().unwrap();
            assert!(received <= stage);
            let micro = SignedDuration::from_micros(1);
            assert!(stage + micro >= before && stage <= after + micro);
            if e.verb == "watch" && e.stage == Stage::ResponseComplete {
                assert!(stage.duration_since(received) >= SignedDuration::from_secs(300));
            }
        }
    }

    #[test]
    fn decisions_match_response_codes() {
        for e in sample(19, 5_000) {
            let annotations = e.annotations.as_ref().unwrap();
            let decision = annotations["authorization.k8s.io/decision"]
                .as_str()
                .unwrap();
            assert!(annotations.contains_key("authorization.k8s.io/reason"));
            let code = e.response_status.as_ref().and_then(|s| s.code).unwrap();
            assert_eq!(decision == "forbid", code == 403, "{e:?}");
            if code >= 400 {
                let status = e.response_status.as_ref().unwrap();
                assert_eq!(status.status.as_deref(), Some("Failure"));
                assert!(status.message.as_deref().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}
