//! Making sure the log destination exists: the logset and topic a `ClusterAudit` names, through
//! the collector's topic API, and the webhook routed to the topic. Changing the topic or its
//! retention happens here, never through a kube-apiserver restart.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use clusteraudit_core::api::{LogsetRef, RouteStatus, SinkSpec, SinkStatus, TopicRef};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no logset named {0:?}, and create is false")]
    LogsetNameNotFound(String),
    #[error("no logset with id {0:?}")]
    LogsetIdNotFound(String),
    #[error("no topic named {name:?} in logset {logset:?}, and create is false")]
    TopicNameNotFound { logset: String, name: String },
    #[error("no topic with id {0:?}")]
    TopicIdNotFound(String),
    #[error("topic {topic:?} belongs to logset {actual:?}, not {expected:?}")]
    TopicInOtherLogset {
        topic: String,
        expected: String,
        actual: String,
    },
    #[error("the collector refused {what} ({status}): {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("the collector at {url} cannot be reached: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl SinkError {
    /// Whether trying again later may help (the collector being down), as opposed to the spec
    /// naming something that is not there.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Unreachable { .. } => true,
            SinkError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The collector's topic API, as the operator uses it.
#[derive(Clone)]
pub struct SinkClient {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl SinkClient {
    pub fn new(http: reqwest::Client, url: &str, token: Option<String>) -> Self {
        SinkClient {
            http,
            url: url.trim_end_matches('/').to_string(),
            token,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), SinkError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .timeout(Duration::from_secs(30));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| SinkError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(StatusCode, Value), SinkError> {
        let (status, body) = self.call(method, path, body).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok((status, body));
        }
        Err(SinkError::Refused {
            what: what.to_string(),
            status: status.as_u16(),
            message: body["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string(),
        })
    }

    /// Every topic of every logset, as (id, name).
    pub async fn all_topics(&self) -> Result<Vec<(String, String)>, SinkError> {
        let (_, logsets) = self
            .expect(Method::GET, "/v1/logsets", None, "listing logsets")
            .await?;
        let mut topics = Vec::new();
        for logset in logsets["items"].as_array().into_iter().flatten() {
            let Some(id) = logset["id"].as_str() else {
                continue;
            };
            let (_, listed) = self
                .expect(
                    Method::GET,
                    &format!("/v1/logsets/{id}/topics"),
                    None,
                    "listing topics",
                )
                .await?;
            for topic in listed["items"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (topic["id"].as_str(), topic["name"].as_str()) {
                    topics.push((id.to_string(), name.to_string()));
                }
            }
        }
        Ok(topics)
    }

    /// Replaces the collector's alert rules.
    pub async fn set_alert_rules(
        &self,
        rules: &[clusteraudit_core::alert::RuleSpec],
    ) -> Result<(), SinkError> {
        self.expect(
            Method::PUT,
            "/v1/alerts",
            Some(serde_json::json!({ "rules": rules })),
            "setting the alert rules",
        )
        .await?;
        Ok(())
    }

    /// Tells the collector which nodes' kube-apiservers audit, so that it notices one going
    /// silent.
    pub async fn set_expected_nodes(&self, nodes: &[String]) -> Result<(), SinkError> {
        self.expect(
            Method::PUT,
            "/v1/nodes",
            Some(serde_json::json!({ "expected": nodes })),
            "setting the auditing nodes",
        )
        .await?;
        Ok(())
    }

    /// The collector's alert rules with their firing groups (`GET /v1/alerts`).
    pub async fn alerts(&self) -> Result<Value, SinkError> {
        let (_, view) = self
            .expect(Method::GET, "/v1/alerts", None, "reading the alerts")
            .await?;
        Ok(view)
    }

    /// Makes the sink exist as `spec` says and routes the webhook to its topic. `previous` is the
    /// status from the last reconcile: what the operator created stays remembered as created.
    pub async fn ensure(
        &self,
        spec: &SinkSpec,
        previous: Option<&SinkStatus>,
    ) -> Result<SinkStatus, SinkError> {
        self.ensure_remembering(spec, previous, &mut None).await
    }

    /// As [`SinkClient::ensure`]; `known` holds the sink as far as it stands (what was created of
    /// it included) as soon as each part does, so that a step failing after a creation does not
    /// make the operator forget what it created.
    pub async fn ensure_remembering(
        &self,
        spec: &SinkSpec,
        previous: Option<&SinkStatus>,
        known: &mut Option<SinkStatus>,
    ) -> Result<SinkStatus, SinkError> {
        let remembered =
            |id: &str, created_now: bool, was: fn(&SinkStatus) -> (Option<&String>, bool)| {
                created_now
                    || previous.is_some_and(|p| {
                        let (previous_id, previous_created) = was(p);
                        previous_created && previous_id.map(String::as_str) == Some(id)
                    })
            };
        let mut status = previous.cloned().unwrap_or_default();
        let (logset_id, created_logset) = self.ensure_logset(&spec.logset).await?;
        status.created.logset = remembered(&logset_id, created_logset, |p| {
            (p.logset_id.as_ref(), p.created.logset)
        });
        status.logset_id = Some(logset_id.clone());
        *known = Some(status.clone());
        let (topic_id, created_topic) = self.ensure_topic(&logset_id, &spec.topic).await?;
        status.created.topic = remembered(&topic_id, created_topic, |p| {
            (p.topic_id.as_ref(), p.created.topic)
        });
        status.topic_id = Some(topic_id.clone());
        *known = Some(status.clone());
        let (_, route) = self
            .expect(Method::GET, "/v1/route", None, "reading the route")
            .await?;
        if route["topicId"].as_str() != Some(topic_id.as_str()) {
            self.expect(
                Method::PUT,
                "/v1/route",
                Some(json!({"topicId": topic_id})),
                "routing the webhook",
            )
            .await?;
        }
        status.routes = self
            .ensure_routes(&logset_id, &topic_id, spec, previous)
            .await?;
        *known = Some(status.clone());
        Ok(status)
    }

    /// Makes each route's topic exist in the logset (created or adopted like the main topic),
    /// then has the collector route the main topic's events by the spec's routes, unless it
    /// already does. A route's topic stays created across reconciles as the main topic does.
    async fn ensure_routes(
        &self,
        logset_id: &str,
        topic_id: &str,
        spec: &SinkSpec,
        previous: Option<&SinkStatus>,
    ) -> Result<Vec<RouteStatus>, SinkError> {
        let mut routes: Vec<RouteStatus> = Vec::with_capacity(spec.routes.len());
        for (index, route) in spec.routes.iter().enumerate() {
            let (id, created_now) = self.ensure_topic(logset_id, &route.topic).await?;
            if id == topic_id {
                return Err(SinkError::Refused {
                    what: "routing".into(),
                    status: 400,
                    message: format!(
                        "spec.sink.routes[{index}].topic is the sink's own topic {id:?}"
                    ),
                });
            }
            // Two routes may share a topic: created by the first, found by the second.
            let created = created_now
                || routes.iter().any(|r| r.topic_id == id && r.created)
                || previous.is_some_and(|p| p.routes.iter().any(|r| r.topic_id == id && r.created));
            routes.push(RouteStatus {
                query: route.query.clone(),
                topic_id: id,
                created,
            });
        }
        let wanted = json!({"routes": routes
            .iter()
            .map(|r| json!({"query": r.query, "topicId": r.topic_id}))
            .collect::<Vec<_>>()});
        let path = format!("/v1/topics/{topic_id}/routes");
        let (_, current) = self
            .expect(Method::GET, &path, None, "reading the topic's routes")
            .await?;
        if current != wanted {
            self.expect(
                Method::PUT,
                &path,
                Some(wanted),
                "setting the topic's routes",
            )
            .await?;
        }
        Ok(routes)
    }

    async fn ensure_logset(&self, logset: &LogsetRef) -> Result<(String, bool), SinkError> {
        if let Some(id) = &logset.id {
            let (status, _) = self
                .expect(
                    Method::GET,
                    &format!("/v1/logsets/{id}"),
                    None,
                    "reading the logset",
                )
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(SinkError::LogsetIdNotFound(id.clone()));
            }
            return Ok((id.clone(), false));
        }
        let name = logset.name.clone().unwrap_or_default();
        if logset.wants_create() {
            let (status, body) = self
                .expect(
                    Method::POST,
                    "/v1/logsets",
                    Some(json!({"name": name})),
                    "creating the logset",
                )
                .await?;
            return Ok((id_of(&body), status == StatusCode::CREATED));
        }
        self.logset_named(&name)
            .await?
            .map(|id| (id, false))
            .ok_or(SinkError::LogsetNameNotFound(name))
    }

    async fn logset_named(&self, name: &str) -> Result<Option<String>, SinkError> {
        let (_, list) = self
            .expect(Method::GET, "/v1/logsets", None, "listing logsets")
            .await?;
        Ok(find_by_name(&list, name))
    }

    async fn topic_named(&self, logset_id: &str, name: &str) -> Result<Option<String>, SinkError> {
        let (_, list) = self
            .expect(
                Method::GET,
                &format!("/v1/logsets/{logset_id}/topics"),
                None,
                "listing topics",
            )
            .await?;
        Ok(find_by_name(&list, name))
    }

    /// The topic, or None when the collector has no such topic.
    async fn topic(&self, id: &str) -> Result<Option<Value>, SinkError> {
        let (status, body) = self
            .expect(
                Method::GET,
                &format!("/v1/topics/{id}"),
                None,
                "reading the topic",
            )
            .await?;
        Ok((status != StatusCode::NOT_FOUND).then_some(body))
    }

    async fn ensure_topic(
        &self,
        logset_id: &str,
        topic: &TopicRef,
    ) -> Result<(String, bool), SinkError> {
        let (id, created, current) = if let Some(id) = &topic.id {
            let body = self
                .topic(id)
                .await?
                .ok_or_else(|| SinkError::TopicIdNotFound(id.clone()))?;
            let actual = body["logsetId"].as_str().unwrap_or_default();
            if actual != logset_id {
                return Err(SinkError::TopicInOtherLogset {
                    topic: id.clone(),
                    expected: logset_id.to_string(),
                    actual: actual.to_string(),
                });
            }
            (id.clone(), false, body)
        } else {
            let name = topic.name.clone().unwrap_or_default();
            if topic.wants_create() {
                let mut body = json!({"name": name});
                if let Some(days) = topic.retention_days {
                    body["retentionDays"] = json!(days);
                }
                let (status, created) = self
                    .expect(
                        Method::POST,
                        &format!("/v1/logsets/{logset_id}/topics"),
                        Some(body),
                        "creating the topic",
                    )
                    .await?;
                if status == StatusCode::NOT_FOUND {
                    return Err(SinkError::LogsetIdNotFound(logset_id.to_string()));
                }
                (id_of(&created), status == StatusCode::CREATED, created)
            } else {
                let missing = || SinkError::TopicNameNotFound {
                    logset: logset_id.to_string(),
                    name: name.clone(),
                };
                let id = self
                    .topic_named(logset_id, &name)
                    .await?
                    .ok_or_else(missing)?;
                let body = self.topic(&id).await?.ok_or_else(missing)?;
                (id, false, body)
            }
        };
        // Retention follows the spec when it says something; otherwise the topic keeps its own.
        if let Some(days) = topic.retention_days
            && current["retentionDays"].as_i64() != Some(days as i64)
        {
            self.expect(
                Method::PATCH,
                &format!("/v1/topics/{id}"),
                Some(json!({"retentionDays": days})),
                "changing the retention",
            )
            .await?;
        }
        Ok((id, created))
    }

    /// Deletes what the operator created, and only that (deleteOnDisable). The webhook is routed
    /// back to the collector's `default` topic first, since a routed topic cannot go. A created
    /// logset that still holds other topics (ones it did not create, or no longer uses) is kept.
    /// Has the collector enforce `policy` on the events of a topic, unless it already does.
    pub async fn ensure_policy(
        &self,
        topic_id: &str,
        policy: &clusteraudit_core::audit::Policy,
    ) -> Result<(), SinkError> {
        let wanted = clusteraudit_core::policy::enforce::policy_hash(policy);
        if self.enforced_policy(topic_id).await?.as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        self.enforce_policy(topic_id, policy).await
    }

    /// The hash (`clusteraudit_core::policy::enforce::policy_hash`) of the policy the collector
    /// enforces on a topic, None when it enforces none.
    async fn enforced_policy(&self, topic_id: &str) -> Result<Option<String>, SinkError> {
        let (status, body) = self
            .expect(
                Method::GET,
                &format!("/v1/topics/{topic_id}/policy"),
                None,
                "reading the topic's enforced policy",
            )
            .await?;
        Ok((status != StatusCode::NOT_FOUND)
            .then(|| body["hash"].as_str().map(str::to_string))
            .flatten())
    }

    async fn enforce_policy(
        &self,
        topic_id: &str,
        policy: &clusteraudit_core::audit::Policy,
    ) -> Result<(), SinkError> {
        let body = serde_json::to_value(policy).expect("a policy serializes");
        let (status, answer) = self
            .call(
                Method::PUT,
                &format!("/v1/topics/{topic_id}/policy"),
                Some(body),
            )
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(SinkError::Refused {
            what: "setting the topic's enforced policy".into(),
            status: status.as_u16(),
            message: answer.to_string(),
        })
    }

    pub async fn delete_created(&self, status: &SinkStatus) -> Result<Deleted, SinkError> {
        let mut deleted = Deleted::default();
        // The routes the operator set go first, then the routes' topics it created; adopted
        // topics stay, with what they hold.
        if !status.routes.is_empty()
            && let Some(topic) = &status.topic_id
        {
            self.expect(
                Method::DELETE,
                &format!("/v1/topics/{topic}/routes"),
                None,
                "removing the topic's routes",
            )
            .await?;
        }
        let route_topics: Vec<&str> = status
            .routes
            .iter()
            .filter(|r| r.created)
            .map(|r| r.topic_id.as_str())
            .collect();
        for topic in route_topics {
            if deleted.route_topics.iter().any(|t| t == topic) {
                continue;
            }
            self.expect(
                Method::DELETE,
                &format!("/v1/topics/{topic}"),
                None,
                "deleting a route's topic",
            )
            .await?;
            deleted.route_topics.push(topic.to_string());
        }
        if status.created.topic
            && let Some(topic) = &status.topic_id
        {
            if let Some(default_logset) = self.logset_named("default").await?
                && let Some(default_topic) = self.topic_named(&default_logset, "default").await?
                && default_topic != *topic
            {
                self.expect(
                    Method::PUT,
                    "/v1/route",
                    Some(json!({"topicId": default_topic})),
                    "routing the webhook",
                )
                .await?;
            }
            self.expect(
                Method::DELETE,
                &format!("/v1/topics/{topic}"),
                None,
                "deleting the topic",
            )
            .await?;
            deleted.topic = true;
        }
        if status.created.logset
            && let Some(logset) = &status.logset_id
        {
            let (status, body) = self
                .call(Method::DELETE, &format!("/v1/logsets/{logset}"), None)
                .await?;
            if status == StatusCode::CONFLICT {
                deleted.logset_kept = Some(
                    body["error"]
                        .as_str()
                        .unwrap_or("it still holds topics")
                        .to_string(),
                );
            } else if status.is_success() || status == StatusCode::NOT_FOUND {
                deleted.logset = true;
            } else {
                return Err(SinkError::Refused {
                    what: "deleting the logset".into(),
                    status: status.as_u16(),
                    message: body["error"].as_str().unwrap_or("no reason given").into(),
                });
            }
        }
        Ok(deleted)
    }
}

/// What [`SinkClient::delete_created`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub topic: bool,
    pub logset: bool,
    /// The ids of the routes' topics deleted.
    pub route_topics: Vec<String>,
    /// Why a logset the operator created stays.
    pub logset_kept: Option<String>,
}

impl std::fmt::Display for Deleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.topic {
            parts.push("the topic".to_string());
        }
        match self.route_topics.len() {
            0 => {}
            1 => parts.push("a route's topic".to_string()),
            n => parts.push(format!("{n} routes' topics")),
        }
        if self.logset {
            parts.push("the logset".to_string());
        }
        match parts.as_slice() {
            [] => f.write_str("deleted nothing")?,
            [one] => write!(f, "deleted {one} the operator had created")?,
            [rest @ .., last] => write!(
                f,
                "deleted {} and {last} the operator had created",
                rest.join(", ")
            )?,
        }
        if let Some(reason) = &self.logset_kept {
            write!(f, "; kept its logset: {reason}")?;
        }
        Ok(())
    }
}

/// What the API server's schema cannot check of `spec.sink.routes`: each query parses (the field
/// and the column named), and no route's topic is the sink's own topic.
/// What the status says the operator created, completed with what this process remembers
/// creating: a reconcile that creates the sink and then fails before writing status (a later
/// step, or the status write itself, refused while a kube-apiserver restarts) must not leave the
/// next one believing it found the logset and topic already there.
pub fn with_remembered(
    status: Option<&SinkStatus>,
    memory: Option<&SinkStatus>,
) -> Option<SinkStatus> {
    let Some(memory) = memory else {
        return status.cloned();
    };
    let mut merged = status.cloned().unwrap_or_else(|| memory.clone());
    if memory.created.logset && merged.logset_id.is_some() && merged.logset_id == memory.logset_id {
        merged.created.logset = true;
    }
    if memory.created.topic && merged.topic_id.is_some() && merged.topic_id == memory.topic_id {
        merged.created.topic = true;
    }
    for route in &mut merged.routes {
        if memory
            .routes
            .iter()
            .any(|r| r.created && r.topic_id == route.topic_id)
        {
            route.created = true;
        }
    }
    Some(merged)
}

pub fn check_routes(sink: &SinkSpec) -> Result<(), String> {
    for (index, route) in sink.routes.iter().enumerate() {
        if let Err(err) = clusteraudit_core::query::parse_matchable(&route.query) {
            return Err(format!(
                "spec.sink.routes[{index}].query: at column {}: {}",
                err.column, err.message
            ));
        }
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        if same(&route.topic.name, &sink.topic.name) || same(&route.topic.id, &sink.topic.id) {
            return Err(format!(
                "spec.sink.routes[{index}].topic: is the sink's own topic; a route stores events in another topic"
            ));
        }
    }
    Ok(())
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap_or_default().to_string()
}

fn find_by_name(list: &Value, name: &str) -> Option<String> {
    list["items"]
        .as_array()?
        .iter()
        .find(|item| item["name"] == name)
        .map(id_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_this_process_created_survives_a_status_that_was_never_written() {
        let created = SinkStatus {
            logset_id: Some("ls-1".into()),
            topic_id: Some("tp-1".into()),
            created: clusteraudit_core::api::CreatedBySink {
                logset: true,
                topic: true,
            },
            routes: Vec::new(),
        };
        // The status write failed: the next reconcile reads no sink at all.
        assert_eq!(with_remembered(None, Some(&created)), Some(created.clone()));
        // A status written by a reconcile that found them (created false) is corrected.
        let found = SinkStatus {
            created: Default::default(),
            ..created.clone()
        };
        assert_eq!(
            with_remembered(Some(&found), Some(&created)),
            Some(created.clone())
        );
        // A different topic (the spec changed) is not claimed.
        let other = SinkStatus {
            topic_id: Some("tp-2".into()),
            ..found.clone()
        };
        let merged = with_remembered(Some(&other), Some(&created)).unwrap();
        assert!(merged.created.logset && !merged.created.topic);
        assert_eq!(with_remembered(Some(&found), None), Some(found));
    }

    #[test]
    fn a_route_that_cannot_parse_or_routes_to_itself_is_named() {
        let sink = |routes: serde_json::Value| -> SinkSpec {
            serde_json::from_value(json!({"topic": {"name": "audit"}, "routes": routes})).unwrap()
        };
        assert_eq!(check_routes(&sink(json!([]))), Ok(()));
        assert_eq!(
            check_routes(&sink(json!([
                {"query": "resource:secrets or verb:delete", "topic": {"name": "security"}},
                {"query": "", "topic": {"id": "tp-1"}}
            ]))),
            Ok(())
        );
        assert_eq!(
            check_routes(&sink(json!([
                {"query": "verb:get", "topic": {"name": "security"}},
                {"query": "resource=secrets", "topic": {"name": "security"}}
            ]))),
            Err("spec.sink.routes[1].query: at column 9: `=` is not an operator; write `resource:value`".into())
        );
        let itself = check_routes(&sink(json!([{"query": "", "topic": {"name": "audit"}}])));
        assert!(
            itself
                .unwrap_err()
                .starts_with("spec.sink.routes[0].topic: is the sink's own topic")
        );
    }

    #[test]
    fn what_was_deleted_is_said_in_words() {
        let mut deleted = Deleted {
            topic: true,
            logset: true,
            ..Deleted::default()
        };
        assert_eq!(
            deleted.to_string(),
            "deleted the topic and the logset the operator had created"
        );
        deleted.route_topics = vec!["tp-1".into(), "tp-2".into()];
        assert_eq!(
            deleted.to_string(),
            "deleted the topic, 2 routes' topics and the logset the operator had created"
        );
        assert_eq!(Deleted::default().to_string(), "deleted nothing");
    }
}
