//! Turning a request into the audit event the kube-apiserver would write for it.

use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;
use serde_json::{Map, Value, json};

use clusteraudit_core::audit::{
    Body, Event, Level, ObjectReference, ResponseStatus, Stage, UserInfo,
};

use super::request::{Actor, Failure, Req};
use super::{Draw, EventGenerator, stable_uuid};
use crate::model::*;

impl EventGenerator {
    fn user(&self, actor: Actor) -> UserInfo {
        let sa_groups = |ns: &str| {
            vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_string(),
            ]
        };
        match actor {
            Actor::Node(node) => UserInfo {
                username: format!("system:node:{}", self.nodes[node].name),
                groups: vec!["system:nodes".into(), "system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Kcm {
                controller: None, ..
            } => UserInfo {
                username: "system:kube-controller-manager".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Kcm {
                controller: Some(controller),
                ..
            } => {
                let index = KCM_CONTROLLERS
                    .iter()
                    .position(|c| *c == controller)
                    .unwrap_or(0);
                let mut extra = Map::new();
                extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    json!([format!(
                        "JTI={}",
                        stable_uuid(self.seed, &["jti", controller])
                    )]),
                );
                UserInfo {
                    username: format!("system:serviceaccount:kube-system:{controller}"),
                    uid: Some(self.sa_uids[SA_PROFILES.len() + index].clone()),
                    groups: sa_groups("kube-system"),
                    extra: Some(extra),
                }
            }
            Actor::Scheduler { .. } => UserInfo {
                username: "system:kube-scheduler".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Workload { profile, pod } => {
                let p = &SA_PROFILES[profile];
                let pod = &self.pods[pod];
                let node = &self.nodes[pod.node];
                let mut extra = Map::new();
                extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    json!([format!("JTI={}", pod.token_id)]),
                );
                extra.insert(
                    "authentication.kubernetes.io/node-name".into(),
                    json!([node.name]),
                );
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    json!([pod.name]),
                );
                UserInfo {
                    username: format!("system:serviceaccount:{}:{}", p.namespace, p.name),
                    uid: Some(self.sa_uids[profile].clone()),
                    groups: sa_groups(p.namespace),
                    extra: Some(extra),
                }
            }
            Actor::Person(person) => UserInfo {
                username: HUMANS[person].name.into(),
                groups: HUMANS[person]
                    .groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect(),
                ..UserInfo::default()
            },
            Actor::Anonymous { .. } => UserInfo {
                username: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
                ..UserInfo::default()
            },
            Actor::ApiServer => UserInfo {
                username: "system:apiserver".into(),
                uid: Some(self.apiserver_uid.clone()),
                groups: vec!["system:authenticated".into(), "system:masters".into()],
                ..UserInfo::default()
            },
        }
    }

    fn user_agent(&self, actor: Actor) -> String {
        let component =
            |name: &str, arch: &str| format!("{name}/{K8S_VERSION} (linux/{arch}) {K8S_GIT}");
        match actor {
            Actor::Node(node) => component("kubelet", self.nodes[node].arch),
            Actor::Kcm {
                controller, suffix, ..
            } => match controller {
                Some(c) => format!(
                    "{}/system:serviceaccount:kube-system:{c}",
                    component("kube-controller-manager", "amd64")
                ),
                None => format!("{}/{suffix}", component("kube-controller-manager", "amd64")),
            },
            Actor::Scheduler { suffix, .. } => {
                format!("{}/{suffix}", component("kube-scheduler", "amd64"))
            }
            Actor::Workload { profile, .. } => SA_PROFILES[profile].user_agent.into(),
            Actor::Person(person) => HUMANS[person].user_agent.into(),
            Actor::Anonymous { user_agent, .. } => user_agent.into(),
            Actor::ApiServer => component("kube-apiserver", "amd64"),
        }
    }

    fn source_ip(&self, actor: Actor) -> String {
        match actor {
            Actor::Node(node) => self.nodes[node].ip.clone(),
            Actor::Kcm { node, .. } | Actor::Scheduler { node, .. } => self.nodes[node].ip.clone(),
            Actor::Workload { pod, .. } => self.pods[pod].ip.clone(),
            Actor::Person(person) => HUMANS[person].source_ip.into(),
            Actor::Anonymous { source_ip, .. } => source_ip.into(),
            Actor::ApiServer => "::1".into(),
        }
    }

    /// `authorization.k8s.io/reason` of an allowed request.
    fn allow_reason(&self, req: &Req) -> String {
        const DEVELOPERS: &str = "Group \"oidc:developers\"";
        match req.actor {
            // The Node authorizer and the system:masters group give no reason.
            Actor::Node(_) | Actor::ApiServer => String::new(),
            Actor::Kcm {
                controller: None, ..
            } => {
                let user = "system:kube-controller-manager";
                rbac_cluster(user, &format!("User \"{user}\""))
            }
            Actor::Kcm {
                controller: Some(c),
                ..
            } => {
                let role = format!("system:controller:{c}");
                rbac_cluster(&role, &format!("ServiceAccount \"{c}/kube-system\""))
            }
            Actor::Scheduler { .. } => {
                let user = "system:kube-scheduler";
                rbac_cluster(user, &format!("User \"{user}\""))
            }
            Actor::Workload { profile, .. } => {
                let p = &SA_PROFILES[profile];
                let subject = format!("ServiceAccount \"{}/{}\"", p.name, p.namespace);
                if req.namespaced_binding {
                    let binding = format!("RoleBinding \"{}/{}\"", p.name, p.namespace);
                    rbac(&binding, &format!("Role \"{}\"", p.name), &subject)
                } else {
                    rbac_cluster(p.name, &subject)
                }
            }
            Actor::Person(person) => {
                let human = &HUMANS[person];
                let own = human.own_namespaces.contains(&req.namespace.as_str());
                match human.binding {
                    Some(reason) => reason.into(),
                    None if req.res.is_none() => {
                        rbac_cluster("system:discovery", "Group \"system:authenticated\"")
                    }
                    None if !own => rbac(
                        "ClusterRoleBinding \"developers-view\"",
                        "ClusterRole \"view\"",
                        DEVELOPERS,
                    ),
                    None => {
                        let binding = format!("RoleBinding \"developers/{}\"", req.namespace);
                        rbac(&binding, "ClusterRole \"edit\"", DEVELOPERS)
                    }
                }
            }
            Actor::Anonymous { .. } => rbac_cluster(
                "system:public-info-viewer",
                "Group \"system:unauthenticated\"",
            ),
        }
    }

    /// Turns a request into its event, stamped as answered at `now`.
    pub(super) fn finish(&mut self, mut req: Req, now: Timestamp) -> Event {
        let user = self.user(req.actor);
        let user_agent = self.user_agent(req.actor);
        let source_ip = self.source_ip(req.actor);
        let audit_id = self.rng.uuid();

        // Random failures, at rates a healthy cluster shows.
        if req.failure.is_none() && req.errors {
            let named = !req.name.is_empty();
            let roll = self.rng.random_range(0..10_000);
            req.failure = match req.verb {
                _ if roll < 5 => Some(Failure::Internal),
                "get" if named && req.sub != "exec" && req.sub != "log" && roll < 300 => {
                    Some(Failure::NotFound)
                }
                "delete" if roll < 400 => Some(Failure::NotFound),
                "patch" if roll < 100 => Some(Failure::NotFound),
                "update" if roll < 300 => Some(Failure::Conflict),
                "create" if named && req.sub.is_empty() && roll < 150 => {
                    Some(Failure::AlreadyExists)
                }
                _ => None,
            };
        }

        let long_running =
            req.verb == "watch" || matches!(req.sub, "exec" | "log" | "attach" | "portforward");
        // A long-running request is recorded when its response starts and again when it ends;
        // a refused one only ends.
        let stage = if long_running && req.failure.is_none() && self.rng.random_bool(0.5) {
            Stage::ResponseStarted
        } else {
            Stage::ResponseComplete
        };

        // The URL and the object reference.
        let (request_uri, object_ref, watch_timeout) = match req.res {
            None => {
                let query = req.query.clone().unwrap_or_default();
                let uri = if query.is_empty() {
                    req.path.clone()
                } else {
                    format!("{}?{query}", req.path)
                };
                (uri, None, None)
            }
            Some(res) => {
                let collection = matches!(req.verb, "list" | "watch")
                    || req.verb == "create" && req.sub.is_empty();
                let url_name = if collection { "" } else { req.name.as_str() };
                let url_ns = if res.resource == "namespaces" {
                    ""
                } else {
                    req.namespace.as_str()
                };
                let mut path = if res.group.is_empty() {
                    format!("/api/{}", res.version)
                } else {
                    format!("/apis/{}/{}", res.group, res.version)
                };
                if !url_ns.is_empty() {
                    path.push_str("/namespaces/");
                    path.push_str(url_ns);
                }
                path.push('/');
                path.push_str(res.resource);
                if !url_name.is_empty() {
                    path.push('/');
                    path.push_str(url_name);
                    if !req.sub.is_empty() {
                        path.push('/');
                        path.push_str(req.sub);
                    }
                }
                let mut watch_timeout = None;
                let query = match (req.verb, req.query.clone()) {
                    ("watch", _) => {
                        let (query, timeout) = self.watch_query(req.selector.as_deref());
                        watch_timeout = Some(timeout);
                        query
                    }
                    ("list", Some(query)) => match &req.selector {
                        Some(selector) if query.is_empty() => selector.clone(),
                        Some(selector) => format!("{selector}&{query}"),
                        None => query,
                    },
                    ("list", None) => match &req.selector {
                        Some(selector) => format!("{selector}&limit=500&resourceVersion=0"),
                        None => "limit=500&resourceVersion=0".into(),
                    },
                    (_, Some(query)) => query,
                    (_, None) => String::new(),
                };
                let uri = if query.is_empty() {
                    path
                } else {
                    format!("{path}?{query}")
                };
                let name = if collection && req.verb != "create" {
                    String::new()
                } else {
                    req.name.clone()
                };
                let mut object = ObjectReference {
                    resource: res.resource.into(),
                    namespace: if res.resource == "namespaces" {
                        name.clone()
                    } else {
                        req.namespace.clone()
                    },
                    name,
                    api_group: res.group.into(),
                    api_version: Some(res.version.into()),
                    subresource: req.sub.into(),
                    ..ObjectReference::default()
                };
                // An update's body is the whole object: the kube-apiserver copies its uid and
                // resourceVersion into the reference.
                if req.verb == "update" && req.failure != Some(Failure::Forbidden) {
                    object.uid = Some(stable_uuid(
                        self.seed,
                        &[res.resource, &req.namespace, &req.name],
                    ));
                    object.resource_version =
                        Some((self.resource_version - self.rng.random_range(1..=3000)).to_string());
                }
                (uri, Some(object), watch_timeout)
            }
        };
        self.next_rv();

        let success = match (req.verb, req.sub) {
            (_, "exec") => 101,
            ("create", _) => 201,
            _ => 200,
        };
        let response_status = Some(match req.failure {
            None => ResponseStatus {
                code: Some(success),
                ..ResponseStatus::default()
            },
            Some(failure) => self.failure_status(failure, &req, &user),
        });

        let mut annotations = Map::new();
        let forbidden = req.failure == Some(Failure::Forbidden);
        annotations.insert(
            "authorization.k8s.io/decision".into(),
            Value::String(if forbidden { "forbid" } else { "allow" }.into()),
        );
        annotations.insert(
            "authorization.k8s.io/reason".into(),
            Value::String(if forbidden {
                String::new()
            } else {
                self.allow_reason(&req)
            }),
        );
        for (key, value) in req.annotations.drain(..) {
            annotations.insert(key.into(), Value::String(value));
        }

        // How long the request took, by what it was.
        let micros = match (req.verb, stage) {
            (_, Stage::ResponseStarted) => self.rng.random_range(150..=2_500),
            ("watch", _) => {
                watch_timeout.unwrap_or(300) * 1_000_000 + self.rng.random_range(0..=999_999)
            }
            _ if long_running => {
                self.rng.random_range(2..=900) * 1_000_000 + self.rng.random_range(0..=999_999)
            }
            ("list", _) => self.rng.random_range(2_000..=150_000),
            ("get", _) => self.rng.random_range(250..=9_000),
            _ => self.rng.random_range(1_500..=40_000),
        };
        let received = now - Duration::from_micros(micros);

        let (request_object, level) = match (req.request_object.take(), req.failure) {
            (Some(object), None | Some(Failure::Invalid | Failure::Conflict)) => {
                (Some(Body::from_value(&object)), req.level)
            }
            _ => (None, Level::Metadata),
        };

        Event {
            api_version: Some("audit.k8s.io/v1".into()),
            kind: Some("Event".into()),
            level,
            audit_id,
            stage,
            request_uri,
            verb: req.verb.into(),
            user,
            impersonated_user: req.impersonate.take(),
            source_ips: vec![source_ip],
            user_agent: Some(user_agent),
            object_ref,
            response_status,
            request_object,
            response_object: None,
            request_received_timestamp: Some(format!("{received:.6}")),
            stage_timestamp: Some(format!("{now:.6}")),
            annotations: Some(annotations),
        }
    }

    fn failure_status(&mut self, failure: Failure, req: &Req, user: &UserInfo) -> ResponseStatus {
        const MODIFIED: &str = "the object has been modified; \
            please apply your changes to the latest version and try again";
        const BAD_LABEL: &str =
            "name part must consist of alphanumeric characters, '-', '_' or '.'";
        const INTERNAL: &[&str] = &[
            "Internal error occurred: resource quota evaluation timed out",
            "etcdserver: request timed out",
            "Internal error occurred: failed calling webhook \"webhook.cert-manager.io\": \
                context deadline exceeded",
        ];
        let who = req.res.map(|r| r.qualified()).unwrap_or_default();
        let name = &req.name;
        let (code, reason, message) = match failure {
            Failure::NotFound => (404, "NotFound", format!("{who} \"{name}\" not found")),
            Failure::Conflict => (
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {who} \"{name}\": {MODIFIED}"),
            ),
            Failure::AlreadyExists => {
                let message = format!("{who} \"{name}\" already exists");
                (409, "AlreadyExists", message)
            }
            Failure::Invalid => {
                let res = req.res.unwrap_or(&PODS);
                let kind = match (req.sub, res.group) {
                    ("scale", _) => "Scale.autoscaling".to_string(),
                    (_, "") => res.kind.to_string(),
                    (_, group) => format!("{}.{group}", res.kind),
                };
                let detail = match (req.sub, res.resource) {
                    ("scale", _) => {
                        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
                            .into()
                    }
                    (_, "deployments" | "statefulsets" | "daemonsets") => {
                        "spec.template.spec.containers[0].image: Required value".to_string()
                    }
                    _ => format!("metadata.labels: Invalid value: \"release/{name}\": {BAD_LABEL}"),
                };
                let message = format!("{kind} \"{name}\" is invalid: {detail}");
                (422, "Invalid", message)
            }
            Failure::Internal => (500, "InternalError", self.rng.pick(INTERNAL).to_string()),
            Failure::Forbidden => {
                let (subject, verb) = (&user.username, req.verb);
                let message = match req.res {
                    None => format!(
                        "forbidden: User \"{subject}\" cannot {verb} path \"{}\"",
                        req.path
                    ),
                    Some(res) => {
                        let resource = if req.sub.is_empty() {
                            res.resource.to_string()
                        } else {
                            format!("{}/{}", res.resource, req.sub)
                        };
                        let unnamed = name.is_empty() || verb == "create" && req.sub.is_empty();
                        let object = if unnamed {
                            who.clone()
                        } else {
                            format!("{who} \"{name}\"")
                        };
                        let scope = if req.namespace.is_empty() {
                            "at the cluster scope".to_string()
                        } else {
                            format!("in the namespace \"{}\"", req.namespace)
                        };
                        format!(
                            "{object} is forbidden: User \"{subject}\" cannot {verb} resource \
                             \"{resource}\" in API group \"{}\" {scope}",
                            res.group
                        )
                    }
                };
                (403, "Forbidden", message)
            }
        };
        ResponseStatus {
            code: Some(code),
            status: Some("Failure".into()),
            reason: Some(reason.into()),
            message: Some(message),
        }
    }
}

/// `RBAC: allowed by <binding> of <role> to <subject>`, as the RBAC authorizer words it.
fn rbac(binding: &str, role: &str, subject: &str) -> String {
    format!("RBAC: allowed by {binding} of {role} to {subject}")
}

/// Allowed by a ClusterRoleBinding named after its ClusterRole.
fn rbac_cluster(name: &str, subject: &str) -> String {
    rbac(
        &format!("ClusterRoleBinding \"{name}\""),
        &format!("ClusterRole \"{name}\""),
        subject,
    )
}
