//! The policy evaluator, with the kube-apiserver's matching semantics:
//! - rules are checked in order and the first match decides; no match is level None;
//! - `users`, `userGroups` (any of the user's groups) and `verbs` narrow a rule when not empty;
//! - a rule with `namespaces` or `resources` matches resource requests only, one with only
//!   `nonResourceURLs` non-resource requests only, one with neither matches both;
//! - `namespaces: [""]` matches cluster-scoped requests (and lists across all namespaces); a
//!   request on a namespace object itself (`/api/v1/namespaces/shop`, its `status` and
//!   `finalize`) is in that namespace, as the kube-apiserver parses such URLs;
//! - a group of `*` matches every group; an empty resource list matches the whole group;
//!   resources match `name`, `name/sub`, `*`, `*/sub` and `name/*` (which also matches `name`
//!   itself), each only for the `resourceNames` given, if any;
//! - `nonResourceURLs` match exactly, as `*`, or as a prefix when ending in `*`;
//! - a matched rule's stages to omit are its own plus the policy's; its omitManagedFields
//!   overrides the policy's.
//!
//! The evaluator compiles the policy once: verbs become a bit set, names are compared by a
//! precomputed hash before their bytes, so a request that falls through many rules costs little.

use std::hash::BuildHasher;

use super::model::{Level, Policy, PolicyRule, Stage};

/// What the kube-apiserver knows of a request when it evaluates its audit policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestAttributes<'a> {
    /// The authenticated user (the impersonator when impersonating).
    pub user: &'a str,
    pub groups: &'a [String],
    /// `get`, `list`, `watch`, `create`, ... for resources; the lowercase HTTP method otherwise.
    pub verb: &'a str,
    pub resource_request: bool,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// Empty for cluster-scoped requests.
    pub namespace: &'a str,
    /// Empty when the URL names no object (lists, creates).
    pub name: &'a str,
    /// The URL path, without the query.
    pub path: &'a str,
}

/// The evaluator's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    /// Stages not recorded, sorted.
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
    /// Index of the matching rule, or None when no rule matched.
    pub rule: Option<usize>,
}

/// A string with its hash, compared by hash first.
#[derive(Clone, Debug)]
struct Key {
    hash: u64,
    text: Box<str>,
}

type Hasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

fn hash_of(text: &str) -> u64 {
    Hasher::default().hash_one(text)
}

impl Key {
    fn new(text: &str) -> Self {
        Key {
            hash: hash_of(text),
            text: text.into(),
        }
    }

    #[inline]
    fn is(&self, hash: u64, text: &str) -> bool {
        self.hash == hash && &*self.text == text
    }
}

fn contains(keys: &[Key], hash: u64, text: &str) -> bool {
    keys.iter().any(|key| key.is(hash, text))
}

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
/// Bit for verbs outside [`VERBS`] (HTTP methods of non-resource requests, proxy, ...), which
/// then compare by text.
const OTHER_VERB: u16 = 1 << 15;

fn verb_bit(verb: &str) -> u16 {
    VERBS
        .iter()
        .position(|known| *known == verb)
        .map_or(OTHER_VERB, |i| 1 << i)
}

#[derive(Clone, Debug)]
enum ResourcePattern {
    /// `*`
    Any,
    /// `name` or `name/sub`, compared with the combined resource.
    Exact(Key),
    /// `*/sub`
    AnyWithSubresource(Box<str>),
    /// `name/*`
    AllSubresourcesOf(Box<str>),
}

#[derive(Clone, Debug)]
struct CompiledGroupResources {
    any_group: bool,
    group: Box<str>,
    /// Empty: the whole group.
    resources: Vec<ResourcePattern>,
    names: Vec<Key>,
}

#[derive(Clone, Debug)]
enum Scope {
    /// Neither resources, namespaces nor nonResourceURLs: every request.
    Any,
    Resources {
        namespaces: Vec<Key>,
        groups: Vec<CompiledGroupResources>,
    },
    NonResource(Vec<Box<str>>),
}

#[derive(Clone, Debug)]
struct CompiledRule {
    users: Vec<Key>,
    groups: Vec<Key>,
    /// 0 when the rule names no verbs.
    verb_bits: u16,
    other_verbs: Vec<Box<str>>,
    scope: Scope,
    decision: Decision,
}

/// A policy compiled for evaluation.
#[derive(Clone, Debug)]
pub struct Evaluator {
    rules: Vec<CompiledRule>,
    no_match: Decision,
}

impl Evaluator {
    pub fn new(policy: &Policy) -> Self {
        let policy_omit_managed_fields = policy.omit_managed_fields.unwrap_or(false);
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile(index, rule, policy, policy_omit_managed_fields))
            .collect();
        let mut omit_stages = policy.omit_stages.clone();
        omit_stages.sort();
        omit_stages.dedup();
        Evaluator {
            rules,
            no_match: Decision {
                level: Level::None,
                omit_stages,
                omit_managed_fields: policy_omit_managed_fields,
                rule: None,
            },
        }
    }

    /// The decision for one request.
    pub fn evaluate(&self, request: &RequestAttributes<'_>) -> &Decision {
        let prepared = Prepared::new(request);
        self.rules
            .iter()
            .find(|rule| matches(rule, request, &prepared))
            .map_or(&self.no_match, |rule| &rule.decision)
    }
}

/// Per-request values computed once and reused for every rule.
struct Prepared {
    user: u64,
    groups: smallvec_groups::Groups,
    verb_bit: u16,
    namespace: u64,
    name: u64,
    combined_resource_hash: u64,
}

mod smallvec_groups {
    /// Hashes of a request's groups; users rarely have more than a handful.
    pub(super) struct Groups {
        inline: [u64; 8],
        len: usize,
        spill: Vec<u64>,
    }

    impl Groups {
        pub(super) fn new(groups: &[String]) -> Self {
            let mut out = Groups {
                inline: [0; 8],
                len: 0,
                spill: Vec::new(),
            };
            for group in groups {
                let hash = super::hash_of(group);
                if out.len < out.inline.len() {
                    out.inline[out.len] = hash;
                    out.len += 1;
                } else {
                    out.spill.push(hash);
                }
            }
            out
        }

        pub(super) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
            self.inline[..self.len]
                .iter()
                .chain(self.spill.iter())
                .copied()
        }
    }
}

impl Prepared {
    fn new(request: &RequestAttributes<'_>) -> Self {
        let combined_resource_hash = if request.subresource.is_empty() {
            hash_of(request.resource)
        } else {
            hash_of(&combined(request.resource, request.subresource))
        };
        Prepared {
            user: hash_of(request.user),
            groups: smallvec_groups::Groups::new(request.groups),
            verb_bit: verb_bit(request.verb),
            namespace: hash_of(request.namespace),
            name: hash_of(request.name),
            combined_resource_hash,
        }
    }
}

fn combined(resource: &str, subresource: &str) -> String {
    let mut text = String::with_capacity(resource.len() + 1 + subresource.len());
    text.push_str(resource);
    text.push('/');
    text.push_str(subresource);
    text
}

fn compile(
    index: usize,
    rule: &PolicyRule,
    policy: &Policy,
    policy_omit_managed_fields: bool,
) -> CompiledRule {
    let mut verb_bits = 0;
    let mut other_verbs = Vec::new();
    for verb in &rule.verbs {
        let bit = verb_bit(verb);
        verb_bits |= bit;
        if bit == OTHER_VERB {
            other_verbs.push(verb.as_str().into());
        }
    }
    let scope = if !rule.namespaces.is_empty() || !rule.resources.is_empty() {
        Scope::Resources {
            namespaces: rule.namespaces.iter().map(|n| Key::new(n)).collect(),
            groups: rule
                .resources
                .iter()
                .map(|gr| CompiledGroupResources {
                    any_group: gr.group == "*",
                    group: gr.group.as_str().into(),
                    resources: gr
                        .resources
                        .iter()
                        .map(|resource| {
                            if resource == "*" {
                                ResourcePattern::Any
                            } else if let Some(sub) = resource.strip_prefix("*/") {
                                ResourcePattern::AnyWithSubresource(sub.into())
                            } else if let Some(parent) = resource.strip_suffix("/*") {
                                ResourcePattern::AllSubresourcesOf(parent.into())
                            } else {
                                ResourcePattern::Exact(Key::new(resource))
                            }
                        })
                        .collect(),
                    names: gr.resource_names.iter().map(|n| Key::new(n)).collect(),
                })
                .collect(),
        }
    } else if !rule.non_resource_urls.is_empty() {
        Scope::NonResource(
            rule.non_resource_urls
                .iter()
                .map(|u| u.as_str().into())
                .collect(),
        )
    } else {
        Scope::Any
    };
    let mut omit_stages: Vec<Stage> = policy
        .omit_stages
        .iter()
        .chain(rule.omit_stages.iter())
        .copied()
        .collect();
    omit_stages.sort();
    omit_stages.dedup();
    CompiledRule {
        users: rule.users.iter().map(|u| Key::new(u)).collect(),
        groups: rule.user_groups.iter().map(|g| Key::new(g)).collect(),
        verb_bits,
        other_verbs,
        scope,
        decision: Decision {
            level: rule.level,
            omit_stages,
            omit_managed_fields: rule
                .omit_managed_fields
                .unwrap_or(policy_omit_managed_fields),
            rule: Some(index),
        },
    }
}

#[inline]
fn matches(rule: &CompiledRule, request: &RequestAttributes<'_>, prepared: &Prepared) -> bool {
    if rule.verb_bits != 0 {
        if rule.verb_bits & prepared.verb_bit == 0 {
            return false;
        }
        if prepared.verb_bit == OTHER_VERB && !rule.other_verbs.iter().any(|v| &**v == request.verb)
        {
            return false;
        }
    }
    if !rule.users.is_empty() && !contains(&rule.users, prepared.user, request.user) {
        return false;
    }
    if !rule.groups.is_empty()
        && !prepared
            .groups
            .hashes()
            .zip(request.groups)
            .any(|(hash, group)| contains(&rule.groups, hash, group))
    {
        return false;
    }
    match &rule.scope {
        Scope::Any => true,
        Scope::NonResource(urls) => {
            !request.resource_request && urls.iter().any(|url| path_matches(request.path, url))
        }
        Scope::Resources { namespaces, groups } => {
            if !request.resource_request {
                return false;
            }
            if !namespaces.is_empty()
                && !contains(namespaces, prepared.namespace, request.namespace)
            {
                return false;
            }
            groups.is_empty()
                || groups
                    .iter()
                    .any(|group| group_matches(group, request, prepared))
        }
    }
}

fn group_matches(
    group: &CompiledGroupResources,
    request: &RequestAttributes<'_>,
    prepared: &Prepared,
) -> bool {
    if !group.any_group && &*group.group != request.api_group {
        return false;
    }
    if group.resources.is_empty() {
        return true;
    }
    if !group.names.is_empty() && !contains(&group.names, prepared.name, request.name) {
        return false;
    }
    group.resources.iter().any(|pattern| match pattern {
        ResourcePattern::Any => true,
        ResourcePattern::Exact(key) => {
            key.hash == prepared.combined_resource_hash
                && if request.subresource.is_empty() {
                    &*key.text == request.resource
                } else {
                    key.text.len() == request.resource.len() + 1 + request.subresource.len()
                        && key.text.starts_with(request.resource)
                        && key.text.as_bytes()[request.resource.len()] == b'/'
                        && key.text.ends_with(request.subresource)
                }
        }
        ResourcePattern::AnyWithSubresource(sub) => {
            !request.subresource.is_empty() && &**sub == request.subresource
        }
        ResourcePattern::AllSubresourcesOf(parent) => &**parent == request.resource,
    })
}

fn path_matches(path: &str, spec: &str) -> bool {
    if spec == "*" || spec == path {
        return true;
    }
    // As the kube-apiserver does: every trailing `*` is stripped and the rest is a prefix.
    spec.ends_with('*') && path.starts_with(spec.trim_end_matches('*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{GroupResources, PolicyRule};

    fn rule(level: Level) -> PolicyRule {
        PolicyRule {
            level,
            users: vec![],
            user_groups: vec![],
            verbs: vec![],
            resources: vec![],
            namespaces: vec![],
            non_resource_urls: vec![],
            omit_stages: vec![],
            omit_managed_fields: None,
        }
    }

    fn policy(rules: Vec<PolicyRule>) -> Policy {
        Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules,
            omit_stages: vec![],
            omit_managed_fields: None,
        }
    }

    fn gr(group: &str, resources: &[&str], names: &[&str]) -> GroupResources {
        GroupResources {
            group: group.into(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn resource<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            user: "alice",
            groups: &[],
            verb,
            resource_request: true,
            api_group: group,
            resource,
            subresource: sub,
            namespace: "default",
            name: "web",
            path: "/apis/x",
        }
    }

    fn non_resource(path: &str) -> RequestAttributes<'_> {
        RequestAttributes {
            user: "alice",
            groups: &[],
            verb: "get",
            resource_request: false,
            path,
            ..Default::default()
        }
    }

    fn level(policy: &Policy, request: &RequestAttributes<'_>) -> Level {
        Evaluator::new(policy).evaluate(request).level
    }

    #[test]
    fn first_match_wins_and_no_match_is_none() {
        let p = policy(vec![rule(Level::Metadata), rule(Level::RequestResponse)]);
        let decision = Evaluator::new(&p)
            .evaluate(&resource("get", "", "pods", ""))
            .clone();
        assert_eq!(decision.level, Level::Metadata);
        assert_eq!(decision.rule, Some(0));
        let mut only_bob = rule(Level::Metadata);
        only_bob.users = vec!["bob".into()];
        let decision = Evaluator::new(&policy(vec![only_bob]))
            .evaluate(&resource("get", "", "pods", ""))
            .clone();
        assert_eq!((decision.level, decision.rule), (Level::None, None));
    }

    #[test]
    fn users_groups_and_verbs_narrow_a_rule() {
        let groups = vec!["system:authenticated".to_string(), "devs".to_string()];
        let mut request = resource("delete", "apps", "deployments", "");
        request.groups = &groups;
        let mut r = rule(Level::Request);
        r.users = vec!["bob".into(), "alice".into()];
        assert_eq!(level(&policy(vec![r.clone()]), &request), Level::Request);
        r.user_groups = vec!["ops".into()];
        assert_eq!(level(&policy(vec![r.clone()]), &request), Level::None);
        r.user_groups = vec!["ops".into(), "devs".into()];
        assert_eq!(level(&policy(vec![r.clone()]), &request), Level::Request);
        r.verbs = vec!["get".into(), "list".into()];
        assert_eq!(level(&policy(vec![r.clone()]), &request), Level::None);
        r.verbs.push("delete".into());
        assert_eq!(level(&policy(vec![r.clone()]), &request), Level::Request);
        // Verbs outside the well-known set compare by text.
        let mut post = non_resource("/logs");
        post.verb = "post";
        let mut r = rule(Level::Metadata);
        r.verbs = vec!["put".into()];
        assert_eq!(level(&policy(vec![r.clone()]), &post), Level::None);
        r.verbs.push("post".into());
        assert_eq!(level(&policy(vec![r]), &post), Level::Metadata);
    }

    #[test]
    fn resources_and_namespaces_select_resource_requests_only() {
        let mut r = rule(Level::Metadata);
        r.namespaces = vec!["default".into()];
        let p = policy(vec![r]);
        assert_eq!(level(&p, &resource("get", "", "pods", "")), Level::Metadata);
        assert_eq!(level(&p, &non_resource("/healthz")), Level::None);
        let mut r = rule(Level::Metadata);
        r.resources = vec![gr("", &[], &[])];
        let p = policy(vec![r]);
        assert_eq!(level(&p, &non_resource("/api")), Level::None);
        // A rule with neither matches both kinds.
        let p = policy(vec![rule(Level::Metadata)]);
        assert_eq!(level(&p, &non_resource("/api")), Level::Metadata);
    }

    #[test]
    fn the_empty_namespace_is_cluster_scope() {
        let mut r = rule(Level::Metadata);
        r.namespaces = vec!["".into()];
        let p = policy(vec![r]);
        let mut cluster_scoped = resource("get", "", "namespaces", "");
        cluster_scoped.namespace = "";
        assert_eq!(level(&p, &cluster_scoped), Level::Metadata);
        assert_eq!(level(&p, &resource("get", "", "pods", "")), Level::None);
    }

    #[test]
    fn groups_must_match_exactly_or_be_a_wildcard() {
        let mut r = rule(Level::Metadata);
        r.resources = vec![gr("apps", &[], &[])];
        let p = policy(vec![r]);
        assert_eq!(
            level(&p, &resource("get", "apps", "deployments", "")),
            Level::Metadata
        );
        assert_eq!(level(&p, &resource("get", "", "pods", "")), Level::None);
        assert_eq!(
            level(&p, &resource("get", "apps.example.com", "deployments", "")),
            Level::None
        );
        let mut r = rule(Level::Metadata);
        r.resources = vec![gr("*", &["deployments"], &[])];
        let p = policy(vec![r]);
        assert_eq!(
            level(&p, &resource("get", "extensions", "deployments", "")),
            Level::Metadata
        );
    }

    #[test]
    fn subresource_patterns() {
        let check = |pattern: &str, resource_name: &str, sub: &str| {
            let mut r = rule(Level::Metadata);
            r.resources = vec![gr("", &[pattern], &[])];
            level(&policy(vec![r]), &resource("get", "", resource_name, sub)) == Level::Metadata
        };
        assert!(check("pods", "pods", ""));
        assert!(
            !check("pods", "pods", "log"),
            "a plain resource does not cover its subresources"
        );
        assert!(check("pods/log", "pods", "log"));
        assert!(!check("pods/log", "pods", "status"));
        assert!(!check("pods/log", "pods", ""));
        assert!(check("*", "pods", "log"), "* covers subresources too");
        assert!(check("*/scale", "deployments", "scale"));
        assert!(!check("*/scale", "deployments", ""));
        assert!(check("pods/*", "pods", "exec"));
        assert!(
            check("pods/*", "pods", ""),
            "name/* also covers the resource itself"
        );
        assert!(!check("pods/*", "podtemplates", "exec"));
        assert!(
            !check("*/*", "pods", "exec"),
            "*/* is no pattern the kube-apiserver knows"
        );
        // Hash collisions aside, a combined resource must match in full.
        assert!(!check("pod/slog", "pods", "log"));
    }

    #[test]
    fn resource_names_restrict_resources() {
        let mut r = rule(Level::Metadata);
        r.resources = vec![gr("", &["configmaps"], &["web", "api"])];
        let p = policy(vec![r]);
        let mut request = resource("get", "", "configmaps", "");
        assert_eq!(level(&p, &request), Level::Metadata);
        request.name = "db";
        assert_eq!(level(&p, &request), Level::None);
        request.name = "";
        assert_eq!(level(&p, &request), Level::None, "a list names no object");
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let mut r = rule(Level::None);
        r.non_resource_urls = vec!["/healthz*".into(), "/version".into()];
        let mut p = policy(vec![r, rule(Level::Metadata)]);
        assert_eq!(level(&p, &non_resource("/healthz")), Level::None);
        assert_eq!(level(&p, &non_resource("/healthz/etcd")), Level::None);
        assert_eq!(level(&p, &non_resource("/version")), Level::None);
        assert_eq!(level(&p, &non_resource("/version/x")), Level::Metadata);
        assert_eq!(level(&p, &non_resource("/livez")), Level::Metadata);
        // Non-resource rules never match resource requests.
        assert_eq!(level(&p, &resource("get", "", "pods", "")), Level::Metadata);
        p.rules[0].non_resource_urls = vec!["*".into()];
        assert_eq!(level(&p, &non_resource("/anything")), Level::None);
    }

    #[test]
    fn stages_and_managed_fields_combine_policy_and_rule() {
        let mut r = rule(Level::Request);
        r.omit_stages = vec![Stage::ResponseStarted, Stage::RequestReceived];
        r.omit_managed_fields = Some(false);
        let mut p = policy(vec![r, rule(Level::Metadata)]);
        p.omit_stages = vec![Stage::RequestReceived];
        p.omit_managed_fields = Some(true);
        let evaluator = Evaluator::new(&p);
        let first = evaluator.evaluate(&resource("get", "", "pods", ""));
        assert_eq!(
            first.omit_stages,
            vec![Stage::RequestReceived, Stage::ResponseStarted]
        );
        assert!(!first.omit_managed_fields);
        p.rules.remove(0);
        let evaluator = Evaluator::new(&p);
        let second = evaluator.evaluate(&resource("get", "", "pods", ""));
        assert_eq!(second.omit_stages, vec![Stage::RequestReceived]);
        assert!(second.omit_managed_fields);
        let none = Evaluator::new(&policy(vec![]))
            .evaluate(&resource("get", "", "pods", ""))
            .clone();
        assert_eq!(none.level, Level::None);
    }
}
