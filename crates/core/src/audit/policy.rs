//! Typed model of `audit.k8s.io/v1` `Policy`.
//!
//! Unknown fields are refused when decoding: a misspelt key (`resource:` for `resources:`) silently
//! dropped would widen a rule, which in an audit policy means logging secrets or flooding the log.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "audit.k8s.io/v1";
pub const KIND: &str = "Policy";

/// How much of a request is recorded.
#[repr(u8)]
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Level {
    /// Not logged.
    None,
    /// Request metadata (user, timestamp, resource, verb, ...), no bodies.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata, request and response bodies.
    RequestResponse,
}

/// A point in a request's handling at which an event may be recorded.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// An audit policy: rules checked in order, the first match decides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omit_stages: Vec<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_managed_fields: Option<bool>,
}

/// One rule of a policy. Empty lists match everything of their kind.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// The level of requests this rule matches.
    pub level: Level,
    /// Users this rule applies to; empty means every user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups this rule applies to (a user in any of them); empty means every group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_groups: Vec<String>,
    /// Verbs this rule applies to; empty means every verb.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verbs: Vec<String>,
    /// Resources this rule applies to; empty means every resource (and non-resource URL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<GroupResources>,
    /// Namespaces this rule applies to; `""` matches cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Non-resource URL paths, exact or ending in `*` as a prefix.
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    /// Stages not recorded for requests this rule matches, in addition to the policy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omit_stages: Vec<Stage>,
    /// Overrides the policy's omitManagedFields for requests this rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_managed_fields: Option<bool>,
}

/// Resources of one API group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    /// The API group; `""` is the core group.
    #[serde(default)]
    pub group: String,
    /// Resources of the group; empty means all of them. `pods/log`, `*/scale` and `pods/*` name
    /// subresources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names; empty means every object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

/// Why a policy document is not a usable audit policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the policy does not decode: {0}")]
    Decode(String),
    #[error("apiVersion is {0:?}; an audit policy must be audit.k8s.io/v1")]
    WrongApiVersion(String),
    #[error("kind is {0:?}; an audit policy must be kind Policy")]
    WrongKind(String),
    #[error("the policy has no rules; the kube-apiserver refuses an empty policy")]
    NoRules,
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
}

impl Policy {
    /// Decodes a policy strictly (unknown fields, other apiVersions or kinds are errors, each
    /// naming the field and where it is) and validates it as the kube-apiserver would.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            serde_saphyr::from_str(text).map_err(|err| PolicyError::Decode(err.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The kube-apiserver's own checks, so that a policy that passes here is one it starts with.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.api_version != API_VERSION {
            return Err(PolicyError::WrongApiVersion(self.api_version.clone()));
        }
        if self.kind != KIND {
            return Err(PolicyError::WrongKind(self.kind.clone()));
        }
        if self.rules.is_empty() {
            return Err(PolicyError::NoRules);
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|(field, reason)| PolicyError::InvalidField {
                    field: format!("rules[{index}].{field}"),
                    reason,
                })?;
        }
        Ok(())
    }

    /// The policy as YAML, deterministically: the same policy always gives the same bytes.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a policy always serializes")
    }
}

impl PolicyRule {
    /// A rule matching everything at `level`; narrow it with the public fields.
    pub fn at(level: Level) -> PolicyRule {
        PolicyRule {
            level,
            users: Vec::new(),
            user_groups: Vec::new(),
            verbs: Vec::new(),
            resources: Vec::new(),
            namespaces: Vec::new(),
            non_resource_urls: Vec::new(),
            omit_stages: Vec::new(),
            omit_managed_fields: None,
        }
    }

    /// (field, reason) of the first problem the kube-apiserver would refuse.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.non_resource_urls.is_empty()
            && (!self.resources.is_empty() || !self.namespaces.is_empty())
        {
            return Err((
                "nonResourceURLs".into(),
                "a rule cannot apply to both resources and non-resource URLs".into(),
            ));
        }
        for (i, url) in self.non_resource_urls.iter().enumerate() {
            if url == "*" {
                continue;
            }
            if !url.starts_with('/') {
                return Err((
                    format!("nonResourceURLs[{i}]"),
                    format!("{url:?} must begin with '/'"),
                ));
            }
            if url[..url.len() - 1].contains('*') {
                return Err((
                    format!("nonResourceURLs[{i}]"),
                    format!("{url:?}: a '*' wildcard must be the last character"),
                ));
            }
        }
        for (i, group) in self.resources.iter().enumerate() {
            if !group.group.is_empty() && group.group != "*" && !is_dns_subdomain(&group.group) {
                return Err((
                    format!("resources[{i}].group"),
                    format!(
                        "{:?} is not an API group (a lowercase DNS subdomain, without a version)",
                        group.group
                    ),
                ));
            }
            if !group.resource_names.is_empty() && group.resources.is_empty() {
                return Err((
                    format!("resources[{i}].resourceNames"),
                    "resourceNames need at least one resource".into(),
                ));
            }
        }
        Ok(())
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> PolicyError {
        Policy::from_yaml(text).expect_err("the policy is refused")
    }

    const HEAD: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";

    #[test]
    fn a_valid_policy_decodes() {
        let policy = Policy::from_yaml(&format!(
            "{HEAD}omitStages: [RequestReceived]\nrules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [secrets]\n  omitStages: [ResponseStarted]\n- level: None\n  nonResourceURLs: [/healthz*]\n"
        ))
        .unwrap();
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.rules[0].resources[0].resources, ["secrets"]);
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_position() {
        let err = error(&format!(
            "{HEAD}rules:\n- level: Metadata\n  resource:\n  - group: \"\"\n"
        ));
        let PolicyError::Decode(message) = err else {
            panic!("{err:?}")
        };
        assert!(message.contains("unknown field `resource`"), "{message}");
        assert!(message.contains("line 5 column 3"), "{message}");
    }

    #[test]
    fn a_misspelt_key_deeper_down_is_refused_too() {
        let err = error(&format!(
            "{HEAD}rules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resourceName: [x]\n"
        ));
        assert!(
            err.to_string().contains("unknown field `resourceName`"),
            "{err}"
        );
        assert!(err.to_string().contains("line 7 column 5"), "{err}");
    }

    #[test]
    fn an_unknown_top_level_key_is_refused() {
        let err = error(&format!(
            "{HEAD}omitStage: [RequestReceived]\nrules:\n- level: None\n"
        ));
        assert!(
            err.to_string().contains("unknown field `omitStage`"),
            "{err}"
        );
    }

    #[test]
    fn other_api_versions_and_kinds_are_refused() {
        assert_eq!(
            error("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n"),
            PolicyError::WrongApiVersion("audit.k8s.io/v1beta1".into())
        );
        assert_eq!(
            error("apiVersion: audit.k8s.io/v1\nkind: PolicyList\nrules:\n- level: None\n"),
            PolicyError::WrongKind("PolicyList".into())
        );
        assert!(
            matches!(error("kind: Policy\nrules:\n- level: None\n"), PolicyError::Decode(m) if m.contains("apiVersion"))
        );
    }

    #[test]
    fn an_empty_rule_list_is_refused() {
        assert_eq!(error(&format!("{HEAD}rules: []\n")), PolicyError::NoRules);
        assert!(matches!(error(HEAD), PolicyError::Decode(m) if m.contains("rules")));
    }

    #[test]
    fn an_invalid_level_or_stage_is_refused_with_its_position() {
        let err = error(&format!("{HEAD}rules:\n- level: Verbose\n"));
        assert!(
            err.to_string().contains("unknown variant `Verbose`"),
            "{err}"
        );
        assert!(err.to_string().contains("line 4 column 10"), "{err}");
        let err = error(&format!(
            "{HEAD}rules:\n- level: None\n  omitStages: [Started]\n"
        ));
        assert!(
            err.to_string().contains("unknown variant `Started`"),
            "{err}"
        );
        let err = error(&format!("{HEAD}rules:\n- users: [alice]\n"));
        assert!(err.to_string().contains("missing field `level`"), "{err}");
    }

    #[test]
    fn rules_the_kube_apiserver_refuses_are_refused() {
        let cases = [
            (
                "- level: None\n  nonResourceURLs: [/healthz]\n  namespaces: [default]\n",
                "rules[0].nonResourceURLs",
            ),
            (
                "- level: None\n  nonResourceURLs: [healthz]\n",
                "rules[0].nonResourceURLs[0]",
            ),
            (
                "- level: None\n  nonResourceURLs: [/he*lthz]\n",
                "rules[0].nonResourceURLs[0]",
            ),
            (
                "- level: None\n  resources: [{group: apps/v1}]\n",
                "rules[0].resources[0].group",
            ),
            (
                "- level: None\n  resources: [{group: \"\", resourceNames: [x]}]\n",
                "rules[0].resources[0].resourceNames",
            ),
        ];
        for (rules, field) in cases {
            match error(&format!("{HEAD}rules:\n{rules}")) {
                PolicyError::InvalidField { field: got, .. } => assert_eq!(got, field, "{rules}"),
                other => panic!("{rules}: {other:?}"),
            }
        }
    }

    #[test]
    fn yaml_round_trips() {
        let text = format!("{HEAD}rules:\n- level: Metadata\n  nonResourceURLs: [/api*]\n");
        let policy = Policy::from_yaml(&text).unwrap();
        assert_eq!(Policy::from_yaml(&policy.to_yaml()).unwrap(), policy);
    }
}
