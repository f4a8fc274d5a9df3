//! From a `ClusterAudit`'s policy spec to the `audit.k8s.io/v1` Policy the kube-apiserver reads.
//!
//! Rule order, first match wins:
//! 1. the spec's custom rules: what the admin wrote explicitly wins over everything;
//! 2. the noise exclusions (with `excludeNoise`): traffic that floods the log and tells nobody
//!    anything, as the managed services exclude it;
//! 3. the profile's rules. Every profile that records bodies still records secret-bearing
//!    resources at Metadata, so secret contents never reach the log unless a custom rule says so.
//!
//! Rendering is deterministic: the same spec gives the same bytes and the same hash.

use sha2::{Digest, Sha256};

use crate::api::{PolicySpec, Profile};
use crate::audit::{GroupResources, Level, Policy, PolicyError, PolicyRule};

/// A rendered policy with its bytes and content hash.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub policy: Policy,
    pub yaml: String,
    /// Hex SHA-256 of `yaml`.
    pub hash: String,
}

/// Renders the policy for a spec; custom rules are validated as the kube-apiserver would.
pub fn render(spec: &PolicySpec) -> Result<Rendered, PolicyError> {
    for (index, rule) in spec.rules.iter().enumerate() {
        rule.validate()
            .map_err(|(field, reason)| PolicyError::InvalidField {
                field: format!("spec.policy.rules[{index}].{field}"),
                reason,
            })?;
    }
    let mut rules = spec.rules.clone();
    if spec.exclude_noise {
        rules.extend(noise_exclusions());
    }
    rules.extend(profile_rules(spec.profile));
    let mut omit_stages = spec.omit_stages.clone();
    omit_stages.sort();
    omit_stages.dedup();
    let policy = Policy {
        api_version: crate::audit::API_VERSION.into(),
        kind: crate::audit::KIND.into(),
        metadata: None,
        rules,
        omit_stages,
        omit_managed_fields: Some(spec.omit_managed_fields),
    };
    policy.validate()?;
    let yaml = format!("{HEADER}{}", policy.to_yaml());
    let hash = hex::encode(Sha256::digest(yaml.as_bytes()));
    Ok(Rendered { policy, yaml, hash })
}

const HEADER: &str =
    "# Rendered by clusteraudit from ClusterAudit \"cluster\"; edits here are overwritten.\n";

fn resources(group: &str, names: &[&str]) -> GroupResources {
    GroupResources {
        group: group.into(),
        resources: names.iter().map(|s| s.to_string()).collect(),
        resource_names: Vec::new(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The exclusions the managed services ship: high-volume system traffic nobody reads.
pub fn noise_exclusions() -> Vec<PolicyRule> {
    vec![
        // kube-proxy watches what it programs, all day long.
        PolicyRule {
            users: strings(&["system:kube-proxy"]),
            verbs: strings(&["watch"]),
            resources: vec![
                resources("", &["endpoints", "services", "services/status"]),
                resources("discovery.k8s.io", &["endpointslices"]),
            ],
            ..PolicyRule::at(Level::None)
        },
        // The insecure-port identity reading kube-system configmaps.
        PolicyRule {
            users: strings(&["system:unsecured"]),
            namespaces: strings(&["kube-system"]),
            verbs: strings(&["get"]),
            resources: vec![resources("", &["configmaps"])],
            ..PolicyRule::at(Level::None)
        },
        // Leader election of the control-plane components (endpoints of old, leases now).
        PolicyRule {
            users: strings(&[
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:serviceaccount:kube-system:endpoint-controller",
            ]),
            verbs: strings(&["get", "update"]),
            namespaces: strings(&["kube-system"]),
            resources: vec![
                resources("", &["endpoints"]),
                resources("coordination.k8s.io", &["leases"]),
            ],
            ..PolicyRule::at(Level::None)
        },
        // The kube-apiserver's own namespace bookkeeping.
        PolicyRule {
            users: strings(&["system:apiserver"]),
            verbs: strings(&["get"]),
            resources: vec![resources(
                "",
                &["namespaces", "namespaces/status", "namespaces/finalize"],
            )],
            ..PolicyRule::at(Level::None)
        },
        health_endpoints(),
    ]
}

/// Probes and version checks.
fn health_endpoints() -> PolicyRule {
    PolicyRule {
        non_resource_urls: strings(&["/healthz*", "/readyz*", "/livez*", "/version", "/swagger*"]),
        ..PolicyRule::at(Level::None)
    }
}

/// Resources whose bodies carry credentials or arbitrary data: never logged above Metadata by a
/// profile.
pub fn secret_bearing_resources() -> Vec<GroupResources> {
    vec![
        resources("", &["secrets", "configmaps", "serviceaccounts/token"]),
        resources("authentication.k8s.io", &["tokenreviews", "tokenrequests"]),
    ]
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The rules of a profile, in order.
pub fn profile_rules(profile: Profile) -> Vec<PolicyRule> {
    let (writes, reads) = match profile {
        Profile::None => return vec![PolicyRule::at(Level::None)],
        Profile::Metadata => return vec![PolicyRule::at(Level::Metadata)],
        Profile::Default => (Level::Request, Level::Metadata),
        Profile::WriteRequestBodies => (Level::RequestResponse, Level::Metadata),
        Profile::AllRequestBodies => (Level::RequestResponse, Level::RequestResponse),
    };
    vec![
        PolicyRule {
            resources: secret_bearing_resources(),
            ..PolicyRule::at(Level::Metadata)
        },
        // Events are a log of their own, and the busiest writes of a cluster.
        PolicyRule {
            resources: vec![
                resources("", &["events"]),
                resources("events.k8s.io", &["events"]),
            ],
            ..PolicyRule::at(Level::None)
        },
        health_endpoints(),
        PolicyRule {
            verbs: strings(&WRITE_VERBS),
            ..PolicyRule::at(writes)
        },
        PolicyRule::at(reads),
    ]
}

/// Something in a policy a person should know before applying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub rule: usize,
    pub message: String,
}

/// Rules that can record the bodies of secret-bearing resources: legal, and sometimes wanted,
/// but never by accident.
pub fn lint(policy: &Policy) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let non_resource_only = !rule.non_resource_urls.is_empty()
            && rule.resources.is_empty()
            && rule.namespaces.is_empty();
        if rule.level < Level::Request || non_resource_only {
            continue;
        }
        let exposed: Vec<String> = secret_bearing_resources()
            .iter()
            .flat_map(|gr| {
                gr.resources
                    .iter()
                    .map(move |r| (gr.group.clone(), r.clone()))
            })
            .filter(|(group, resource)| rule_may_match(rule, group, resource))
            .map(|(group, resource)| {
                if group.is_empty() {
                    resource
                } else {
                    format!("{resource}.{group}")
                }
            })
            .collect();
        // A profile's catch-all comes after its own Metadata rule for these resources.
        let shadowed = policy.rules[..index].iter().any(|earlier| {
            earlier.level <= Level::Metadata
                && earlier.users.is_empty()
                && earlier.user_groups.is_empty()
                && earlier.verbs.is_empty()
                && earlier.namespaces.is_empty()
                && secret_bearing_resources().iter().all(|gr| {
                    earlier.resources.iter().any(|e| {
                        e.group == gr.group
                            && e.resource_names.is_empty()
                            && gr.resources.iter().all(|r| e.resources.contains(r))
                    })
                })
        });
        if !exposed.is_empty() && !shadowed {
            warnings.push(Warning {
                rule: index,
                message: format!(
                    "rule {index} records {:?} bodies and can match {}: their contents would reach the log",
                    rule.level,
                    exposed.join(", ")
                ),
            });
        }
    }
    warnings
}

fn rule_may_match(rule: &PolicyRule, group: &str, resource: &str) -> bool {
    if rule.resources.is_empty() {
        return rule.non_resource_urls.is_empty() || !rule.namespaces.is_empty();
    }
    let (parent, sub) = resource.split_once('/').unwrap_or((resource, ""));
    rule.resources.iter().any(|gr| {
        (gr.group == group || gr.group == "*")
            && (gr.resources.is_empty()
                || gr.resources.iter().any(|pattern| {
                    pattern == resource
                        || pattern == "*"
                        || pattern.strip_suffix("/*") == Some(parent)
                        || (!sub.is_empty() && pattern.strip_prefix("*/") == Some(sub))
                }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Stage;
    use crate::policy::eval::{Evaluator, RequestAttributes};

    fn spec(profile: Profile, exclude_noise: bool) -> PolicySpec {
        PolicySpec {
            profile,
            exclude_noise,
            ..PolicySpec::default()
        }
    }

    fn request<'a>(
        user: &'a str,
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            user,
            groups: &[],
            verb,
            resource_request: true,
            api_group: group,
            resource,
            subresource: "",
            namespace: "default",
            name: "x",
            path: "/api",
        }
    }

    fn level_of(spec: &PolicySpec, request: &RequestAttributes<'_>) -> Level {
        Evaluator::new(&render(spec).unwrap().policy)
            .evaluate(request)
            .level
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = render(&spec(Profile::Default, true)).unwrap();
        let b = render(&spec(Profile::Default, true)).unwrap();
        assert_eq!(a.yaml, b.yaml);
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.hash.len(), 64);
        assert_ne!(a.hash, render(&spec(Profile::Default, false)).unwrap().hash);
        // The bytes decode back to the same policy, strictly.
        assert_eq!(Policy::from_yaml(&a.yaml).unwrap(), a.policy);
    }

    #[test]
    fn every_profile_renders_a_valid_policy() {
        for profile in [
            Profile::None,
            Profile::Metadata,
            Profile::Default,
            Profile::WriteRequestBodies,
            Profile::AllRequestBodies,
        ] {
            for noise in [false, true] {
                let rendered = render(&spec(profile, noise)).unwrap();
                assert!(!rendered.policy.rules.is_empty());
                assert_eq!(rendered.policy.omit_stages, vec![Stage::RequestReceived]);
                assert_eq!(rendered.policy.omit_managed_fields, Some(true));
            }
        }
    }

    #[test]
    fn secrets_never_get_bodies_from_a_profile() {
        for profile in [
            Profile::Default,
            Profile::WriteRequestBodies,
            Profile::AllRequestBodies,
        ] {
            let s = spec(profile, true);
            for verb in ["get", "create", "update", "patch", "delete"] {
                assert_eq!(
                    level_of(&s, &request("alice", verb, "", "secrets")),
                    Level::Metadata
                );
                assert_eq!(
                    level_of(&s, &request("alice", verb, "", "configmaps")),
                    Level::Metadata
                );
            }
            assert_eq!(
                level_of(
                    &s,
                    &request("alice", "create", "authentication.k8s.io", "tokenreviews")
                ),
                Level::Metadata
            );
            let mut token = request("alice", "create", "", "serviceaccounts");
            token.subresource = "token";
            assert_eq!(level_of(&s, &token), Level::Metadata);
            assert!(lint(&render(&s).unwrap().policy).is_empty(), "{profile:?}");
        }
    }

    #[test]
    fn profiles_set_read_and_write_levels() {
        let cases = [
            (Profile::Default, Level::Metadata, Level::Request),
            (
                Profile::WriteRequestBodies,
                Level::Metadata,
                Level::RequestResponse,
            ),
            (
                Profile::AllRequestBodies,
                Level::RequestResponse,
                Level::RequestResponse,
            ),
            (Profile::Metadata, Level::Metadata, Level::Metadata),
            (Profile::None, Level::None, Level::None),
        ];
        for (profile, read, write) in cases {
            let s = spec(profile, false);
            assert_eq!(
                level_of(&s, &request("alice", "get", "apps", "deployments")),
                read,
                "{profile:?}"
            );
            assert_eq!(
                level_of(&s, &request("alice", "delete", "apps", "deployments")),
                write,
                "{profile:?}"
            );
        }
        // Events are not logged by the Default family.
        let s = spec(Profile::Default, false);
        assert_eq!(
            level_of(&s, &request("alice", "create", "", "events")),
            Level::None
        );
        assert_eq!(
            level_of(&s, &request("alice", "create", "events.k8s.io", "events")),
            Level::None
        );
    }

    #[test]
    fn noise_exclusions_drop_system_chatter_only() {
        let s = spec(Profile::Default, true);
        assert_eq!(
            level_of(&s, &request("system:kube-proxy", "watch", "", "endpoints")),
            Level::None
        );
        assert_eq!(
            level_of(&s, &request("system:kube-proxy", "list", "", "endpoints")),
            Level::Metadata
        );
        assert_eq!(
            level_of(&s, &request("alice", "watch", "", "endpoints")),
            Level::Metadata
        );
        let mut lease = request(
            "system:kube-scheduler",
            "update",
            "coordination.k8s.io",
            "leases",
        );
        lease.namespace = "kube-system";
        assert_eq!(level_of(&s, &lease), Level::None);
        let without = spec(Profile::Default, false);
        assert_eq!(level_of(&without, &lease), Level::Request);
        let mut ns = request("system:apiserver", "get", "", "namespaces");
        ns.namespace = "";
        assert_eq!(level_of(&s, &ns), Level::None);
        let healthz = RequestAttributes {
            verb: "get",
            path: "/readyz/etcd",
            user: "alice",
            ..Default::default()
        };
        assert_eq!(level_of(&s, &healthz), Level::None);
        let api = RequestAttributes {
            verb: "get",
            path: "/apis",
            user: "alice",
            ..Default::default()
        };
        assert_eq!(level_of(&s, &api), Level::Metadata);
    }

    #[test]
    fn custom_rules_come_first_and_are_validated() {
        let mut s = spec(Profile::Default, true);
        s.rules = vec![PolicyRule {
            users: vec!["system:kube-proxy".into()],
            ..PolicyRule::at(Level::RequestResponse)
        }];
        assert_eq!(
            level_of(&s, &request("system:kube-proxy", "watch", "", "endpoints")),
            Level::RequestResponse
        );
        // ... and a custom rule that reaches secrets is called out.
        let warnings = lint(&render(&s).unwrap().policy);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("secrets"), "{warnings:?}");

        s.rules = vec![PolicyRule {
            non_resource_urls: vec!["metrics".into()],
            ..PolicyRule::at(Level::None)
        }];
        let err = render(&s).unwrap_err();
        assert_eq!(
            err,
            PolicyError::InvalidField {
                field: "spec.policy.rules[0].nonResourceURLs[0]".into(),
                reason: "\"metrics\" must begin with '/'".into()
            }
        );
    }
}
