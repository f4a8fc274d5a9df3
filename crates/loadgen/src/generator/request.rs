use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use clusteraudit_core::audit::{Level, UserInfo};

use crate::model::{PODS, Res};

/// What Go's `url.QueryEscape` leaves as it is: client-go escapes list and watch parameters with
/// it, and the kube-apiserver logs the request URI as it came.
const QUERY_UNESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_parameter(key: &str, value: &str) -> String {
    format!("{key}={}", utf8_percent_encode(value, QUERY_UNESCAPED))
}

/// Who made a request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Actor {
    Node(usize),
    /// kube-controller-manager on control-plane node `node`: its own identity (leader election,
    /// shared informers) or one of its controllers' service accounts.
    Kcm {
        controller: Option<&'static str>,
        suffix: &'static str,
        node: usize,
    },
    Scheduler {
        suffix: &'static str,
        node: usize,
    },
    Workload {
        profile: usize,
        pod: usize,
    },
    Person(usize),
    Anonymous {
        source_ip: &'static str,
        user_agent: &'static str,
    },
    ApiServer,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Failure {
    NotFound,
    Forbidden,
    Conflict,
    AlreadyExists,
    Invalid,
    Internal,
}

/// A request before it is turned into an event.
pub(super) struct Req {
    pub(super) actor: Actor,
    pub(super) verb: &'static str,
    /// `None` for a non-resource request.
    pub(super) res: Option<&'static Res>,
    pub(super) namespace: String,
    /// The object's name; for a create of a collection it comes from the body (empty when the
    /// object has `generateName`) and is not in the URL.
    pub(super) name: String,
    pub(super) sub: &'static str,
    /// Non-resource path.
    pub(super) path: String,
    /// The query string, without `?`; `None` picks the usual one for the verb.
    pub(super) query: Option<String>,
    /// `fieldSelector=...`/`labelSelector=...` for list and watch.
    pub(super) selector: Option<String>,
    pub(super) failure: Option<Failure>,
    /// Whether the random error injection may apply.
    pub(super) errors: bool,
    pub(super) level: Level,
    pub(super) request_object: Option<Value>,
    pub(super) annotations: Vec<(&'static str, String)>,
    pub(super) impersonate: Option<UserInfo>,
    /// A RoleBinding rather than a ClusterRoleBinding allowed it (service accounts).
    pub(super) namespaced_binding: bool,
}

impl Req {
    pub(super) fn new(
        actor: Actor,
        verb: &'static str,
        res: &'static Res,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Req {
        Req {
            actor,
            verb,
            res: Some(res),
            namespace: namespace.into(),
            name: name.into(),
            sub: "",
            path: String::new(),
            query: None,
            selector: None,
            failure: None,
            errors: true,
            level: Level::Metadata,
            request_object: None,
            annotations: Vec::new(),
            impersonate: None,
            namespaced_binding: false,
        }
    }

    pub(super) fn non_resource(actor: Actor, path: &str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (path, Some(String::new())),
        };
        Req {
            res: None,
            path: path.to_string(),
            query,
            errors: false,
            ..Req::new(actor, "get", &PODS, "", "")
        }
    }

    pub(super) fn sub(mut self, sub: &'static str) -> Req {
        self.sub = sub;
        self
    }

    pub(super) fn query(mut self, query: impl Into<String>) -> Req {
        self.query = Some(query.into());
        self
    }

    pub(super) fn field_selector(mut self, selector: &str) -> Req {
        self.selector = Some(query_parameter("fieldSelector", selector));
        self
    }

    pub(super) fn label_selector(mut self, selector: &str) -> Req {
        self.selector = Some(query_parameter("labelSelector", selector));
        self
    }

    pub(super) fn fail(mut self, failure: Failure) -> Req {
        self.failure = Some(failure);
        self
    }
}

pub(super) fn kcm(controller: &'static str) -> Actor {
    Actor::Kcm {
        controller: Some(controller),
        suffix: "",
        node: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_query_escaped_like_client_go() {
        let req = Req::new(Actor::ApiServer, "watch", &PODS, "", "");
        let req = req.field_selector("status.phase!=Succeeded,status.phase!=Failed");
        assert_eq!(
            req.selector.as_deref(),
            Some("fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed")
        );
        let req = req.label_selector(
            "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
        );
        assert_eq!(
            req.selector.as_deref(),
            Some(
                "labelSelector=%21service.kubernetes.io%2Fheadless\
                 %2C%21service.kubernetes.io%2Fservice-proxy-name"
            )
        );
        let req = req.field_selector("metadata.name=sh.helm.release.v1.web-2.v3~x");
        assert_eq!(
            req.selector.as_deref(),
            Some("fieldSelector=metadata.name%3Dsh.helm.release.v1.web-2.v3~x")
        );
    }
}
