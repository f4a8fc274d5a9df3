//! `audit.k8s.io/v1` `Event` and `EventList`: what the kube-apiserver writes to its log backend and
//! posts to its webhook backend.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{Level, Stage};

/// One audit event. Unknown fields are kept out of the typed view but never matter for matching;
/// bodies stay raw JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: UserInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Body>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Body>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_received_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, Value>>,
}

/// A request or response body, kept as the JSON text it came in: intake only ever needs its
/// length and, rarely, its managed fields, and building a tree of every body would cost most of
/// what decoding an event costs.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(transparent)]
pub struct Body(Box<serde_json::value::RawValue>);

impl Body {
    /// The body's JSON text, as received.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn from_value(value: &Value) -> Body {
        Body(serde_json::value::to_raw_value(value).expect("a JSON value serializes"))
    }

    /// The body as a tree, for the few that need one.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("a body is valid JSON")
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.get() == other.get()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct UserInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, Value>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ResponseStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event {
    /// Microseconds since the epoch at which the event's stage was reached, else when the request
    /// was received: the time a store files and sorts it by.
    pub fn time_micros(&self) -> Option<i64> {
        let text = self
            .stage_timestamp
            .as_deref()
            .or(self.request_received_timestamp.as_deref())?;
        let parsed: jiff::Timestamp = text.parse().ok()?;
        Some(parsed.as_microsecond())
    }

    /// The request URI without its query string: queries carry tokens and noise, not what was
    /// touched.
    pub fn request_path(&self) -> &str {
        self.request_uri
            .split_once('?')
            .map_or(self.request_uri.as_str(), |(path, _)| path)
    }

    /// The authorizer's decision (`allow`, `forbid`), from the annotation the kube-apiserver adds.
    pub fn decision(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get("authorization.k8s.io/decision")?
            .as_str()
    }
}

/// A batch of events, as the webhook backend posts them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub items: Vec<Event>,
}
