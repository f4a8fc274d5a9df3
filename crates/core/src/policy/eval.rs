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
//! Evaluation is indexed rather than a scan: at compile time every user, group, verb and
//! namespace a rule names maps to the set of rules (a bit set) it admits. A request costs one
//! lookup per attribute and a few word-wide ANDs; only the candidates that survive are checked
//! against their resources or URLs, in rule order, so the first match still wins.

use crate::audit::Event;
use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::audit::{Level, Policy, PolicyRule, Stage};

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

impl<'a> RequestAttributes<'a> {
    /// The request attributes the kube-apiserver evaluated its policy against for this event.
    ///
    /// The policy sees the authenticated user (an impersonator, not whom they impersonate) and the
    /// request's path without its query. For a create the name came from the URL, which has none:
    /// the name an event shows was filled in later from the object.
    pub fn of_event(event: &'a Event) -> RequestAttributes<'a> {
        let path = event
            .request_uri
            .split_once('?')
            .map_or(event.request_uri.as_str(), |(path, _)| path);
        match &event.object_ref {
            Some(object) => RequestAttributes {
                user: &event.user.username,
                groups: &event.user.groups,
                verb: &event.verb,
                resource_request: true,
                api_group: &object.api_group,
                resource: &object.resource,
                subresource: &object.subresource,
                namespace: &object.namespace,
                name: if event.verb == "create" && object.subresource.is_empty() {
                    ""
                } else {
                    &object.name
                },
                path,
            },
            None => RequestAttributes {
                user: &event.user.username,
                groups: &event.user.groups,
                verb: &event.verb,
                resource_request: false,
                api_group: "",
                resource: "",
                subresource: "",
                namespace: "",
                name: "",
                path,
            },
        }
    }
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

/// String equality for the short strings policies hold (names, verbs, groups), inlined: a call
/// to the C library's memcmp per comparison would cost more than the comparison itself.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut a_words = a.chunks_exact(8);
    let mut b_words = b.chunks_exact(8);
    for (x, y) in a_words.by_ref().zip(b_words.by_ref()) {
        if u64::from_ne_bytes(x.try_into().expect("8 bytes"))
            != u64::from_ne_bytes(y.try_into().expect("8 bytes"))
        {
            return false;
        }
    }
    a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .all(|(x, y)| x == y)
}

/// Rules the index covers; longer policies (the API allows 256 custom rules plus the profile's)
/// fall back to a scan.
const WORDS: usize = 5;
const MAX_INDEXED_RULES: usize = WORDS * 64;

/// A set of rule indices: one word for policies of up to 64 rules, several for longer ones.
trait RuleSet: Copy + Default + std::fmt::Debug + PartialEq {
    fn with(self, rule: usize) -> Self;
    fn without(self, rule: usize) -> Self;
    fn and(self, other: Self) -> Self;
    fn or(self, other: Self) -> Self;
    fn not(self) -> Self;
    fn is_empty(self) -> bool;
    fn first(self) -> Option<usize>;
}

impl RuleSet for u64 {
    #[inline]
    fn with(self, rule: usize) -> Self {
        self | 1 << rule
    }
    #[inline]
    fn without(self, rule: usize) -> Self {
        self & !(1 << rule)
    }
    #[inline]
    fn and(self, other: Self) -> Self {
        self & other
    }
    #[inline]
    fn or(self, other: Self) -> Self {
        self | other
    }
    #[inline]
    fn not(self) -> Self {
        !self
    }
    #[inline]
    fn is_empty(self) -> bool {
        self == 0
    }
    #[inline]
    fn first(self) -> Option<usize> {
        (self != 0).then(|| self.trailing_zeros() as usize)
    }
}

impl RuleSet for [u64; WORDS] {
    fn with(mut self, rule: usize) -> Self {
        self[rule / 64] |= 1 << (rule % 64);
        self
    }
    fn without(mut self, rule: usize) -> Self {
        self[rule / 64] &= !(1 << (rule % 64));
        self
    }
    #[inline]
    fn and(self, other: Self) -> Self {
        std::array::from_fn(|i| self[i] & other[i])
    }
    #[inline]
    fn or(self, other: Self) -> Self {
        std::array::from_fn(|i| self[i] | other[i])
    }
    #[inline]
    fn not(self) -> Self {
        self.map(|w| !w)
    }
    #[inline]
    fn is_empty(self) -> bool {
        self.iter().all(|w| *w == 0)
    }
    #[inline]
    fn first(self) -> Option<usize> {
        self.iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }
}

/// For one attribute: the rules admitting each named value, and those admitting any value.
#[derive(Clone, Debug, Default)]
struct AttributeIndex<S> {
    named: Lookup<S>,
    unconstrained: S,
    /// Rules that name values of this attribute.
    constrained: S,
}

/// Values to rule sets. A policy names a handful of users or namespaces, which a scan that
/// compares lengths first finds faster than hashing the request's value; more go in a table.
#[derive(Clone, Debug, Default)]
struct Lookup<S> {
    entries: Vec<(Box<str>, S)>,
    table: Option<hashbrown::HashTable<usize>>,
}

const SCAN_AT_MOST: usize = 8;

impl<S: Copy> Lookup<S> {
    fn from_map(map: FxHashMap<Box<str>, S>) -> Self {
        let mut entries: Vec<(Box<str>, S)> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let table = (entries.len() > SCAN_AT_MOST).then(|| {
            let mut table = hashbrown::HashTable::with_capacity(entries.len());
            for (i, (key, _)) in entries.iter().enumerate() {
                table.insert_unique(FxBuildHasher.hash_one(&**key), i, |&j| {
                    FxBuildHasher.hash_one(&*entries[j].0)
                });
            }
            table
        });
        Lookup { entries, table }
    }

    #[inline]
    fn get(&self, value: &str) -> Option<S> {
        match &self.table {
            None => self
                .entries
                .iter()
                .find(|(key, _)| same(key, value))
                .map(|(_, rules)| *rules),
            Some(table) => table
                .find(FxBuildHasher.hash_one(value), |&i| {
                    same(&self.entries[i].0, value)
                })
                .map(|&i| self.entries[i].1),
        }
    }
}

impl<S: RuleSet> AttributeIndex<S> {
    fn build<'p>(rules: &'p [PolicyRule], values: impl Fn(&'p PolicyRule) -> &'p [String]) -> Self {
        let mut named: FxHashMap<Box<str>, S> = FxHashMap::default();
        let mut unconstrained = S::default();
        let mut constrained = S::default();
        for (i, rule) in rules.iter().enumerate() {
            let listed = values(rule);
            if listed.is_empty() {
                unconstrained = unconstrained.with(i);
            } else {
                constrained = constrained.with(i);
            }
            for value in listed {
                let entry = named.entry(value.as_str().into()).or_default();
                *entry = entry.with(i);
            }
        }
        // A value that a rule names is admitted by it and by every unconstrained rule.
        for admitted in named.values_mut() {
            *admitted = admitted.or(unconstrained);
        }
        AttributeIndex {
            named: Lookup::from_map(named),
            unconstrained,
            constrained,
        }
    }

    /// Narrows `candidates` to the rules admitting `value`, looking it up only when a candidate
    /// cares.
    #[inline]
    fn narrow(&self, candidates: S, value: &str) -> S {
        if candidates.and(self.constrained).is_empty() {
            return candidates;
        }
        candidates.and(self.named.get(value).unwrap_or(self.unconstrained))
    }
}

#[derive(Clone, Debug)]
struct Index<S> {
    resource_requests: S,
    non_resource_requests: S,
    /// Per well-known verb; verbs outside the list go through `verbs`.
    known_verbs: [S; VERBS.len()],
    verbs: AttributeIndex<S>,
    users: AttributeIndex<S>,
    /// Rules naming groups, and per group the rules naming it.
    group_constrained: S,
    groups: Lookup<S>,
    namespaces: AttributeIndex<S>,
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

#[inline]
fn known_verb(verb: &str) -> Option<usize> {
    let i = match (verb.len(), verb.as_bytes().first()) {
        (3, Some(b'g')) => 0,
        (4, Some(b'l')) => 1,
        (5, Some(b'w')) => 2,
        (6, Some(b'c')) => 3,
        (6, Some(b'u')) => 4,
        (5, Some(b'p')) => 5,
        (6, Some(b'd')) => 6,
        (16, Some(b'd')) => 7,
        _ => return None,
    };
    same(verb, VERBS[i]).then_some(i)
}

impl<S: RuleSet> Index<S> {
    fn build(rules: &[PolicyRule]) -> Self {
        let mut resource_requests = S::default();
        let mut non_resource_requests = S::default();
        let mut group_constrained = S::default();
        let mut groups: FxHashMap<Box<str>, S> = FxHashMap::default();
        for (i, rule) in rules.iter().enumerate() {
            let resources = !rule.resources.is_empty() || !rule.namespaces.is_empty();
            let urls = !rule.non_resource_urls.is_empty();
            if resources || !urls {
                resource_requests = resource_requests.with(i);
            }
            if !resources {
                non_resource_requests = non_resource_requests.with(i);
            }
            if !rule.user_groups.is_empty() {
                group_constrained = group_constrained.with(i);
            }
            for group in &rule.user_groups {
                let entry = groups.entry(group.as_str().into()).or_default();
                *entry = entry.with(i);
            }
        }
        let verbs: AttributeIndex<S> = AttributeIndex::build(rules, |r| &r.verbs);
        let known_verbs =
            VERBS.map(|verb| verbs.narrow(verbs.constrained.or(verbs.unconstrained), verb));
        Index {
            resource_requests,
            non_resource_requests,
            known_verbs,
            verbs,
            users: AttributeIndex::build(rules, |r| &r.users),
            group_constrained,
            groups: Lookup::from_map(groups),
            // Namespaces narrow resource requests only; for non-resource requests the request
            // kind already excludes rules that name namespaces.
            namespaces: AttributeIndex::build(rules, |r| &r.namespaces),
        }
    }

    /// Rules whose users, groups, verbs, namespaces and request kind admit the request.
    #[inline]
    fn candidates(&self, request: &RequestAttributes<'_>) -> S {
        let kind = if request.resource_request {
            self.resource_requests
        } else {
            self.non_resource_requests
        };
        let mut candidates = match known_verb(request.verb) {
            Some(i) => kind.and(self.known_verbs[i]),
            None => self.verbs.narrow(kind, request.verb),
        };
        candidates = self.users.narrow(candidates, request.user);
        if !candidates.and(self.group_constrained).is_empty() {
            let mut admitted = self.group_constrained.not();
            for group in request.groups {
                if let Some(rules) = self.groups.get(group) {
                    admitted = admitted.or(rules);
                }
            }
            candidates = candidates.and(admitted);
        }
        if request.resource_request {
            candidates = self.namespaces.narrow(candidates, request.namespace);
        }
        candidates
    }

    /// The first candidate, in rule order, whose resources or URLs match.
    #[inline]
    fn first_match<'r>(
        &self,
        rules: &'r [CompiledRule],
        request: &RequestAttributes<'_>,
    ) -> Option<&'r CompiledRule> {
        let mut candidates = self.candidates(request);
        while let Some(i) = candidates.first() {
            if scope_matches(&rules[i].scope, request) {
                return Some(&rules[i]);
            }
            candidates = candidates.without(i);
        }
        None
    }
}

#[derive(Clone, Debug)]
enum ResourcePattern {
    /// `*`
    Any,
    /// `name`
    Exact(Box<str>),
    /// `name/sub`
    WithSubresource(Box<str>, Box<str>),
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
    names: Vec<Box<str>>,
}

#[derive(Clone, Debug)]
enum Scope {
    /// Neither resources, namespaces nor nonResourceURLs: every request.
    Any,
    Resources {
        namespaces: Vec<Box<str>>,
        groups: Vec<CompiledGroupResources>,
    },
    NonResource(Vec<Box<str>>),
}

#[derive(Clone, Debug)]
struct CompiledRule {
    users: Vec<Box<str>>,
    groups: Vec<Box<str>>,
    verbs: Vec<Box<str>>,
    scope: Scope,
    decision: Decision,
}

/// A policy compiled for evaluation.
#[derive(Clone, Debug)]
pub struct Evaluator {
    rules: Vec<CompiledRule>,
    index: Indexed,
    no_match: Decision,
}

#[derive(Clone, Debug)]
enum Indexed {
    Short(Box<Index<u64>>),
    Long(Box<Index<[u64; WORDS]>>),
    /// Longer than the index covers: a plain scan.
    Scan,
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
            index: match policy.rules.len() {
                0..=64 => Indexed::Short(Box::new(Index::build(&policy.rules))),
                65..=MAX_INDEXED_RULES => Indexed::Long(Box::new(Index::build(&policy.rules))),
                _ => Indexed::Scan,
            },
            no_match: Decision {
                level: Level::None,
                omit_stages,
                omit_managed_fields: policy_omit_managed_fields,
                rule: None,
            },
        }
    }

    /// The same policy evaluated by a plain scan of the rules (the reference the index is
    /// checked against).
    #[cfg(test)]
    fn scan_only(policy: &Policy) -> Self {
        Evaluator {
            index: Indexed::Scan,
            ..Evaluator::new(policy)
        }
    }

    /// The decision for one request.
    pub fn evaluate(&self, request: &RequestAttributes<'_>) -> &Decision {
        let matched = match &self.index {
            Indexed::Short(index) => index.first_match(&self.rules, request),
            Indexed::Long(index) => index.first_match(&self.rules, request),
            Indexed::Scan => self.rules.iter().find(|rule| matches_fully(rule, request)),
        };
        matched.map_or(&self.no_match, |rule| &rule.decision)
    }
}

fn boxed(items: &[String]) -> Vec<Box<str>> {
    items.iter().map(|s| s.as_str().into()).collect()
}

fn compile(
    index: usize,
    rule: &PolicyRule,
    policy: &Policy,
    policy_omit_managed_fields: bool,
) -> CompiledRule {
    let scope = if !rule.namespaces.is_empty() || !rule.resources.is_empty() {
        Scope::Resources {
            namespaces: boxed(&rule.namespaces),
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
                            } else if let Some((parent, sub)) = resource.split_once('/') {
                                ResourcePattern::WithSubresource(parent.into(), sub.into())
                            } else {
                                ResourcePattern::Exact(resource.as_str().into())
                            }
                        })
                        .collect(),
                    names: boxed(&gr.resource_names),
                })
                .collect(),
        }
    } else if !rule.non_resource_urls.is_empty() {
        Scope::NonResource(boxed(&rule.non_resource_urls))
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
        users: boxed(&rule.users),
        groups: boxed(&rule.user_groups),
        verbs: boxed(&rule.verbs),
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

fn listed(list: &[Box<str>], value: &str) -> bool {
    list.iter().any(|item| same(item, value))
}

/// The whole rule, without the index (policies longer than the index covers).
fn matches_fully(rule: &CompiledRule, request: &RequestAttributes<'_>) -> bool {
    (rule.users.is_empty() || listed(&rule.users, request.user))
        && (rule.groups.is_empty() || request.groups.iter().any(|g| listed(&rule.groups, g)))
        && (rule.verbs.is_empty() || listed(&rule.verbs, request.verb))
        && match &rule.scope {
            Scope::Resources { namespaces, .. } => {
                request.resource_request
                    && (namespaces.is_empty() || listed(namespaces, request.namespace))
                    && scope_matches(&rule.scope, request)
            }
            _ => scope_matches(&rule.scope, request),
        }
}

/// The parts of a rule the index does not decide: the request kind, resources and URLs
/// (namespaces, users, groups and verbs are settled by the index or by [`matches_fully`]).
#[inline]
fn scope_matches(scope: &Scope, request: &RequestAttributes<'_>) -> bool {
    match scope {
        Scope::Any => true,
        Scope::NonResource(urls) => {
            !request.resource_request && urls.iter().any(|url| path_matches(request.path, url))
        }
        Scope::Resources { groups, .. } => {
            request.resource_request
                && (groups.is_empty() || groups.iter().any(|group| group_matches(group, request)))
        }
    }
}

fn group_matches(group: &CompiledGroupResources, request: &RequestAttributes<'_>) -> bool {
    if !group.any_group && !same(&group.group, request.api_group) {
        return false;
    }
    if group.resources.is_empty() {
        return true;
    }
    if !group.names.is_empty() && !listed(&group.names, request.name) {
        return false;
    }
    group.resources.iter().any(|pattern| match pattern {
        ResourcePattern::Any => true,
        ResourcePattern::Exact(resource) => {
            request.subresource.is_empty() && same(resource, request.resource)
        }
        ResourcePattern::WithSubresource(resource, sub) => {
            same(sub, request.subresource) && same(resource, request.resource)
        }
        ResourcePattern::AnyWithSubresource(sub) => {
            !request.subresource.is_empty() && same(sub, request.subresource)
        }
        ResourcePattern::AllSubresourcesOf(parent) => same(parent, request.resource),
    })
}

fn path_matches(path: &str, spec: &str) -> bool {
    if spec == "*" || same(spec, path) {
        return true;
    }
    // As the kube-apiserver does: every trailing `*` is stripped and the rest is a prefix.
    spec.ends_with('*') && path.starts_with(spec.trim_end_matches('*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{GroupResources, PolicyRule};

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

    /// The index answers exactly as a scan of the rules does, on random policies and requests.
    #[test]
    fn the_index_agrees_with_a_scan() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let users = ["alice", "bob", "system:kube-proxy", "system:node:n1"];
        let groups = ["devs", "ops", "system:nodes", "system:authenticated"];
        let verbs = ["get", "list", "watch", "create", "delete", "post", "proxy"];
        let namespaces = ["", "default", "kube-system"];
        let api_groups = ["", "apps", "*"];
        let resources = [
            "pods",
            "pods/log",
            "*",
            "*/scale",
            "pods/*",
            "deployments",
            "deployments/scale",
        ];
        let urls = ["/healthz*", "/api", "*", "/apis/*"];
        let pick = |items: &[&str], next: &mut dyn FnMut(usize) -> usize| -> Vec<String> {
            let count = next(3);
            (0..count)
                .map(|_| items[next(items.len())].to_string())
                .collect()
        };
        for _ in 0..300 {
            let rule_count = 1 + next(12);
            let rules = (0..rule_count)
                .map(|_| {
                    let mut rule =
                        PolicyRule::at([Level::None, Level::Metadata, Level::Request][next(3)]);
                    rule.users = pick(&users, &mut next);
                    rule.user_groups = pick(&groups, &mut next);
                    rule.verbs = pick(&verbs, &mut next);
                    match next(3) {
                        0 => {
                            rule.namespaces = pick(&namespaces, &mut next);
                            if next(2) == 0 {
                                rule.resources = vec![GroupResources {
                                    group: api_groups[next(3)].into(),
                                    resources: pick(&resources, &mut next),
                                    resource_names: if next(3) == 0 {
                                        vec!["web".into()]
                                    } else {
                                        vec![]
                                    },
                                }];
                            }
                        }
                        1 => rule.non_resource_urls = pick(&urls, &mut next),
                        _ => {}
                    }
                    rule
                })
                .collect();
            let p = policy(rules);
            let (indexed, scanned) = (Evaluator::new(&p), Evaluator::scan_only(&p));
            // The same rules behind 70 that never match use the multi-word index.
            let mut padded_rules: Vec<PolicyRule> = (0..70)
                .map(|i| PolicyRule {
                    users: vec![format!("nobody-{i}")],
                    ..PolicyRule::at(Level::RequestResponse)
                })
                .collect();
            padded_rules.extend(p.rules.iter().cloned());
            let padded = Evaluator::new(&policy(padded_rules));
            assert!(matches!(padded.index, Indexed::Long(_)));
            for _ in 0..50 {
                let request_groups: Vec<String> = pick(&groups, &mut next);
                let resource_request = next(4) != 0;
                let request = RequestAttributes {
                    user: users[next(users.len())],
                    groups: &request_groups,
                    verb: verbs[next(verbs.len())],
                    resource_request,
                    api_group: ["", "apps"][next(2)],
                    resource: ["pods", "deployments"][next(2)],
                    subresource: ["", "log", "scale"][next(3)],
                    namespace: namespaces[next(3)],
                    name: ["", "web", "db"][next(3)],
                    path: ["/healthz/etcd", "/api", "/apis/apps"][next(3)],
                };
                let expected = scanned.evaluate(&request);
                assert_eq!(indexed.evaluate(&request), expected, "{p:#?}\n{request:#?}");
                let long = padded.evaluate(&request);
                assert_eq!(long.level, expected.level, "{p:#?}\n{request:#?}");
                assert_eq!(long.rule, expected.rule.map(|r| r + 70), "{request:#?}");
            }
        }
    }
}
