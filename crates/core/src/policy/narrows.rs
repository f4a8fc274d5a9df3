//! Whether a candidate audit policy only narrows the running one: the question that decides if a
//! policy change needs the kube-apiservers restarted, or if the collector can enforce it on what
//! they already send.
//!
//! # Definition
//!
//! The candidate *narrows* the running policy when, for every possible request, with `r` the
//! running policy's decision and `c` the candidate's (as [`Evaluator`] decides them, which is how
//! the kube-apiserver decides):
//! - `c.level <= r.level` (None < Metadata < Request < RequestResponse);
//! - if `c.level` is not None: every stage `r` omits, `c` omits too (the candidate records no stage
//!   the kube-apiservers do not send);
//! - if `c.level` is Request or RequestResponse: `r` omits managed fields only if `c` does too
//!   (fields the kube-apiservers strip cannot be put back).
//!
//! Everything else can be taken away by the collector: a lower level, more stages, managed fields.
//! A request the candidate does not record at all (None) narrows whatever the running policy does.
//!
//! # Exactness
//!
//! "Every possible request" is infinite, but a policy only compares attributes with the values
//! it names, so requests fall into finitely many classes that both policies treat alike: for each
//! attribute, each value named anywhere in either policy plus one fresh value (with `""` for the
//! namespace, the subresource and the name); for non-resource paths, each exact URL and each
//! `prefix*` itself plus, beyond each of them and beyond `/`, one path that continues to no other
//! named URL; for the user's groups, every set of named groups. Rather than walk that product,
//! the search refines, attribute after attribute, the set of rules (of both policies) a request
//! can still match, and keeps only distinct sets: two partial requests leaving the same rules
//! possible lead to the same decisions. It stops early where no pair of still-possible decisions
//! can widen, and where each policy's first possible rule is certain to match. The user's groups
//! come last and are solved directly: for each pair of rules that would widen, whether some set
//! of groups makes them the first match of each policy (groups of every earlier rule avoided, one
//! group of each of the two present). So the answer is exact, not sampled, and a policy naming
//! many groups costs pairs of rules, not subsets of groups.
//!
//! A counterexample is checked through the [`Evaluator`] before it is returned: its levels and
//! stages are the evaluator's.
//!
//! Policies are taken as valid (as [`Policy::validate`] checks them): a rule naming both
//! resources and non-resource URLs is refused there.

use std::fmt::Write as _;

use rustc_hash::FxHashSet;
use serde::Serialize;

use super::eval::{Decision, Evaluator, RequestAttributes};
use crate::audit::{GroupResources, Level, Policy, PolicyRule, Stage};

/// How a candidate's decision records more than the running policy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Widening {
    /// At a higher level.
    Level,
    /// In a stage the running policy omits.
    Stage(Stage),
    /// With managed fields the running policy leaves out.
    ManagedFields,
}

/// Whether the candidate's decision for a request records more than the running one's (see the
/// module documentation), and how.
pub fn widening(running: &Decision, candidate: &Decision) -> Option<Widening> {
    if candidate.level > running.level {
        return Some(Widening::Level);
    }
    if candidate.level == Level::None {
        return None;
    }
    if let Some(stage) = running
        .omit_stages
        .iter()
        .find(|stage| !candidate.omit_stages.contains(stage))
    {
        return Some(Widening::Stage(*stage));
    }
    if candidate.level >= Level::Request
        && running.omit_managed_fields
        && !candidate.omit_managed_fields
    {
        return Some(Widening::ManagedFields);
    }
    None
}

/// A request the candidate records more of than the running policy.
///
/// Serializes to the `policy compare` line: `{"user", "groups", "verb", "apiGroup", "resource",
/// "subresource", "namespace", "name", "path", "runningLevel", "candidateLevel"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counterexample {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path; for a resource request one the kube-apiserver would parse to the
    /// attributes above (the policy does not look at it).
    pub path: String,
    pub running_level: Level,
    pub candidate_level: Level,
    #[serde(skip)]
    pub resource_request: bool,
    #[serde(skip)]
    pub running: Decision,
    #[serde(skip)]
    pub candidate: Decision,
    #[serde(skip)]
    pub widening: Widening,
}

impl Counterexample {
    /// The request, as the evaluator takes it.
    pub fn request(&self) -> RequestAttributes<'_> {
        RequestAttributes {
            user: &self.user,
            groups: &self.groups,
            verb: &self.verb,
            resource_request: self.resource_request,
            api_group: &self.api_group,
            resource: &self.resource,
            subresource: &self.subresource,
            namespace: &self.namespace,
            name: &self.name,
            path: &self.path,
        }
    }

    /// In words, for an Event or a terminal: "a get of secrets in kube-system by alice would be
    /// recorded at Request; the running policy records Metadata: a restart is needed".
    pub fn describe(&self) -> String {
        let article = match self.verb.chars().next() {
            Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
            _ => "a",
        };
        let mut text = format!("{article} {} of ", self.verb);
        if self.resource_request {
            text.push_str(&self.resource);
            if !self.api_group.is_empty() {
                let _ = write!(text, ".{}", self.api_group);
            }
            if !self.subresource.is_empty() {
                let _ = write!(text, "/{}", self.subresource);
            }
            if !self.name.is_empty() {
                let _ = write!(text, " {:?}", self.name);
            }
            if self.namespace.is_empty() {
                text.push_str(" outside any namespace");
            } else {
                let _ = write!(text, " in {}", self.namespace);
            }
        } else {
            text.push_str(&self.path);
        }
        let _ = write!(text, " by {}", self.user);
        if !self.groups.is_empty() {
            let _ = write!(text, " (groups {})", self.groups.join(", "));
        }
        match self.widening {
            Widening::Level if self.running_level == Level::None => {
                let _ = write!(
                    text,
                    " would be recorded at {}; the running policy does not record it",
                    self.candidate_level.as_str()
                );
            }
            Widening::Level => {
                let _ = write!(
                    text,
                    " would be recorded at {}; the running policy records {}",
                    self.candidate_level.as_str(),
                    self.running_level.as_str()
                );
            }
            Widening::Stage(stage) => {
                let _ = write!(
                    text,
                    " would be recorded at stage {}, which the running policy omits",
                    stage.as_str()
                );
            }
            Widening::ManagedFields => {
                text.push_str(
                    " would be recorded with managed fields, which the running policy leaves out",
                );
            }
        }
        text.push_str(": a restart is needed");
        text
    }
}

/// The answer of [`narrows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Comparison {
    Narrows,
    Widens(Box<Counterexample>),
}

impl Comparison {
    pub fn is_narrowing(&self) -> bool {
        matches!(self, Comparison::Narrows)
    }
}

/// Whether `candidate` narrows `running` for every possible request (see the module
/// documentation), or a request for which it does not.
pub fn narrows(running: &Policy, candidate: &Policy) -> Comparison {
    let mut search = Search::new(running, candidate);
    for kind in 0..search.kinds.len() {
        let start = search.kinds[kind].start.clone();
        let mut chosen = Vec::new();
        if let Some(found) = search.explore(kind, 0, start, &mut chosen) {
            return Comparison::Widens(Box::new(found));
        }
    }
    Comparison::Narrows
}

/// A set of rules (of both policies: the running one's first) or of other indexed things.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64).max(1)].into_boxed_slice())
    }
    fn from_fn(len: usize, f: impl Fn(usize) -> bool) -> Bits {
        let mut bits = Bits::new(len);
        for i in (0..len).filter(|&i| f(i)) {
            bits.set(i);
        }
        bits
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn and(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }
    fn or_assign(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    fn minus(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & !b).collect())
    }
    fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }
    /// Members within `range`, in order.
    fn ones(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        let (start, end) = (range.start, range.end);
        let words = start / 64..end.div_ceil(64);
        words
            .flat_map(move |w| {
                let mut word = self.0[w];
                std::iter::from_fn(move || {
                    (word != 0).then(|| {
                        let bit = word.trailing_zeros() as usize;
                        word &= word - 1;
                        w * 64 + bit
                    })
                })
            })
            .filter(move |&i| i >= start && i < end)
    }
}

/// What a class of requests looks like, for one attribute.
#[derive(Clone, Debug)]
enum Witness {
    Value(String),
    Resource {
        api_group: String,
        resource: String,
        subresource: String,
        name: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Verb,
    User,
    Namespace,
    Resource,
    Path,
}

struct Attribute {
    attr: Attr,
    /// Distinct sets of rules admitting a value, with a value for each.
    classes: Vec<(Bits, Witness)>,
    /// Per rule: the classes that rule tells apart from the first class. Where none of the rules
    /// still possible tells a class apart it leads where the first one does, so it is skipped
    /// without being looked at: deep in the search few rules remain, and few classes matter.
    telling: Vec<Bits>,
}

impl Attribute {
    fn new(attr: Attr, classes: Vec<(Bits, Witness)>, rules: usize) -> Attribute {
        let mut telling = vec![Bits::new(classes.len()); rules];
        for (c, (mask, _)) in classes.iter().enumerate().skip(1) {
            for (rule, telling) in telling.iter_mut().enumerate() {
                if mask.get(rule) != classes[0].0.get(rule) {
                    telling.set(c);
                }
            }
        }
        Attribute {
            attr,
            classes,
            telling,
        }
    }
}

struct Kind {
    resource_request: bool,
    start: Bits,
    attributes: Vec<Attribute>,
    /// Per level: the rules no attribute from there on (groups included) constrains.
    certain_from: Vec<Bits>,
}

/// The outcomes a partial request can still have in one policy.
struct Possible {
    decisions: Vec<usize>,
    /// Its first possible rule matches whatever the rest of the request is (or none can).
    decided: bool,
}

struct Search<'p> {
    running: &'p Policy,
    candidate: &'p Policy,
    running_eval: Evaluator,
    candidate_eval: Evaluator,
    rules: Vec<&'p PolicyRule>,
    split: usize,
    /// Distinct decisions, by id; which pairs (running, candidate) widen.
    decision_of_rule: Vec<usize>,
    no_match: [usize; 2],
    widens: Vec<Vec<bool>>,
    /// Named user groups, and per rule the named groups it admits (None: every group).
    group_names: Vec<String>,
    rule_groups: Vec<Option<Bits>>,
    kinds: Vec<Kind>,
    visited: FxHashSet<(usize, usize, Bits)>,
}

fn effective_decision(policy: &Policy, rule: Option<(usize, &PolicyRule)>) -> Decision {
    let policy_omit_managed_fields = policy.omit_managed_fields.unwrap_or(false);
    let mut omit_stages: Vec<Stage> = policy.omit_stages.clone();
    if let Some((_, rule)) = rule {
        omit_stages.extend(rule.omit_stages.iter().copied());
    }
    omit_stages.sort();
    omit_stages.dedup();
    match rule {
        Some((index, rule)) => Decision {
            level: rule.level,
            omit_stages,
            omit_managed_fields: rule
                .omit_managed_fields
                .unwrap_or(policy_omit_managed_fields),
            rule: Some(index),
        },
        None => Decision {
            level: Level::None,
            omit_stages,
            omit_managed_fields: policy_omit_managed_fields,
            rule: None,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Any,
    Resources,
    NonResource,
}

fn scope(rule: &PolicyRule) -> Scope {
    if !rule.namespaces.is_empty() || !rule.resources.is_empty() {
        Scope::Resources
    } else if !rule.non_resource_urls.is_empty() {
        Scope::NonResource
    } else {
        Scope::Any
    }
}

/// A resource pattern, parsed as the evaluator parses it.
#[derive(Clone, Debug)]
enum Pattern<'a> {
    Any,
    Exact(&'a str),
    WithSubresource(&'a str, &'a str),
    AnyWithSubresource(&'a str),
    AllSubresourcesOf(&'a str),
}

fn pattern(resource: &str) -> Pattern<'_> {
    if resource == "*" {
        Pattern::Any
    } else if let Some(sub) = resource.strip_prefix("*/") {
        Pattern::AnyWithSubresource(sub)
    } else if let Some(parent) = resource.strip_suffix("/*") {
        Pattern::AllSubresourcesOf(parent)
    } else if let Some((parent, sub)) = resource.split_once('/') {
        Pattern::WithSubresource(parent, sub)
    } else {
        Pattern::Exact(resource)
    }
}

fn pattern_matches(pattern: &Pattern<'_>, resource: &str, subresource: &str) -> bool {
    match *pattern {
        Pattern::Any => true,
        Pattern::Exact(r) => subresource.is_empty() && r == resource,
        Pattern::WithSubresource(r, s) => s == subresource && r == resource,
        Pattern::AnyWithSubresource(s) => !subresource.is_empty() && s == subresource,
        Pattern::AllSubresourcesOf(r) => r == resource,
    }
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || (spec.ends_with('*') && path.starts_with(spec.trim_end_matches('*')))
}

/// Values in first-seen order, without repeats.
#[derive(Default)]
struct Named<'a> {
    values: Vec<&'a str>,
    seen: FxHashSet<&'a str>,
}

impl<'a> Named<'a> {
    fn add(&mut self, value: &'a str) {
        if self.seen.insert(value) {
            self.values.push(value);
        }
    }
    fn contains(&self, value: &str) -> bool {
        self.seen.contains(value)
    }
    /// A value no policy names: the first of `preferred` that is free, or `stem-N`.
    fn fresh(&self, preferred: &[&str], stem: &str) -> String {
        preferred
            .iter()
            .find(|value| !self.contains(value))
            .map(|value| value.to_string())
            .unwrap_or_else(|| {
                (0..)
                    .map(|n| format!("{stem}-{n}"))
                    .find(|value| !self.contains(value))
                    .expect("some name is free")
            })
    }
}

/// Distinct masks, each with the first value giving it.
fn classes(
    len: usize,
    values: impl IntoIterator<Item = Witness>,
    admits: impl Fn(usize, &Witness) -> bool,
) -> Vec<(Bits, Witness)> {
    let mut seen: FxHashSet<Bits> = FxHashSet::default();
    let mut out = Vec::new();
    for value in values {
        let mask = Bits::from_fn(len, |i| admits(i, &value));
        if seen.insert(mask.clone()) {
            out.push((mask, value));
        }
    }
    out
}

const RESOURCE_VERBS: [&str; 9] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
];
const HTTP_VERBS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
const PATH_CONTINUATIONS: &str = "x/yzqwv0123456789abcdefghijklmnoprstu-._~";

impl<'p> Search<'p> {
    fn new(running: &'p Policy, candidate: &'p Policy) -> Search<'p> {
        let rules: Vec<&PolicyRule> = running.rules.iter().chain(&candidate.rules).collect();
        let split = running.rules.len();
        let len = rules.len();

        let mut decisions: Vec<Decision> = Vec::new();
        let mut id_of = |decision: Decision| {
            let key = Decision {
                rule: None,
                ..decision
            };
            match decisions.iter().position(|d| *d == key) {
                Some(id) => id,
                None => {
                    decisions.push(key);
                    decisions.len() - 1
                }
            }
        };
        let mut decision_of_rule: Vec<usize> = Vec::with_capacity(len);
        for (policy, rules) in [(running, &running.rules), (candidate, &candidate.rules)] {
            for (i, rule) in rules.iter().enumerate() {
                decision_of_rule.push(id_of(effective_decision(policy, Some((i, rule)))));
            }
        }
        let no_match = [
            id_of(effective_decision(running, None)),
            id_of(effective_decision(candidate, None)),
        ];
        let widens = decisions
            .iter()
            .map(|r| decisions.iter().map(|c| widening(r, c).is_some()).collect())
            .collect();

        // Named values, the candidate's first: a widening usually comes from its rules, and a
        // counterexample reads best in their terms.
        let ordered: Vec<&PolicyRule> = candidate.rules.iter().chain(&running.rules).collect();
        let mut verbs = Named::default();
        let mut users = Named::default();
        let mut groups = Named::default();
        let mut namespaces = Named::default();
        let mut api_groups = Named::default();
        let mut resources = Named::default();
        let mut subresources = Named::default();
        let mut names = Named::default();
        let mut urls = Named::default();
        for rule in &ordered {
            rule.verbs.iter().for_each(|v| verbs.add(v));
            rule.users.iter().for_each(|v| users.add(v));
            rule.user_groups.iter().for_each(|v| groups.add(v));
            rule.namespaces.iter().for_each(|v| namespaces.add(v));
            rule.non_resource_urls.iter().for_each(|v| urls.add(v));
            for group in &rule.resources {
                if group.group != "*" {
                    api_groups.add(&group.group);
                }
                group.resource_names.iter().for_each(|v| names.add(v));
                for resource in &group.resources {
                    match pattern(resource) {
                        Pattern::Any => {}
                        Pattern::Exact(r) | Pattern::AllSubresourcesOf(r) => resources.add(r),
                        Pattern::WithSubresource(r, s) => {
                            resources.add(r);
                            subresources.add(s);
                        }
                        Pattern::AnyWithSubresource(s) => subresources.add(s),
                    }
                }
            }
        }

        let group_names: Vec<String> = groups.values.iter().map(|g| g.to_string()).collect();
        let rule_groups = rules
            .iter()
            .map(|rule| {
                (!rule.user_groups.is_empty()).then(|| {
                    Bits::from_fn(group_names.len(), |g| {
                        rule.user_groups.contains(&group_names[g])
                    })
                })
            })
            .collect();
        let group_free = Bits::from_fn(len, |i| rules[i].user_groups.is_empty());

        let value = |s: &str| Witness::Value(s.to_string());
        let text = |w: &Witness| match w {
            Witness::Value(s) => s.clone(),
            Witness::Resource { .. } => unreachable!("a single value"),
        };
        let verb_classes = |fresh: String| {
            classes(
                len,
                verbs
                    .values
                    .iter()
                    .map(|v| value(v))
                    .chain([Witness::Value(fresh)]),
                |i, w| rules[i].verbs.is_empty() || rules[i].verbs.contains(&text(w)),
            )
        };
        // An unnamed user and namespace first: a counterexample by anybody reads better than one
        // by a system component, when both exist.
        let user_classes = classes(
            len,
            [Witness::Value(
                users.fresh(&["alice", "bob", "carol"], "user"),
            )]
            .into_iter()
            .chain(users.values.iter().map(|v| value(v))),
            |i, w| rules[i].users.is_empty() || rules[i].users.contains(&text(w)),
        );

        let resource_kind = {
            let mut values = vec![Witness::Value(
                namespaces.fresh(&["default", "team-a", "shop"], "namespace"),
            )];
            values.extend(namespaces.values.iter().map(|v| value(v)));
            values.push(value(""));
            let namespace_classes = classes(len, values, |i, w| {
                rules[i].namespaces.is_empty() || rules[i].namespaces.contains(&text(w))
            });
            let attributes = vec![
                Attribute::new(
                    Attr::Verb,
                    verb_classes(verbs.fresh(&RESOURCE_VERBS, "verb")),
                    len,
                ),
                Attribute::new(Attr::User, user_classes.clone(), len),
                Attribute::new(Attr::Namespace, namespace_classes, len),
                Attribute::new(
                    Attr::Resource,
                    resource_classes(&rules, &api_groups, &resources, &subresources, &names),
                    len,
                ),
            ];
            Kind {
                resource_request: true,
                start: Bits::from_fn(len, |i| scope(rules[i]) != Scope::NonResource),
                certain_from: certain_from(&rules, &attributes, &group_free),
                attributes,
            }
        };

        let non_resource_kind = {
            let attributes = vec![
                Attribute::new(
                    Attr::Verb,
                    verb_classes(verbs.fresh(&HTTP_VERBS, "verb")),
                    len,
                ),
                Attribute::new(Attr::User, user_classes, len),
                Attribute::new(
                    Attr::Path,
                    classes(
                        len,
                        path_witnesses(&urls.values).into_iter().map(Witness::Value),
                        |i, w| match scope(rules[i]) {
                            Scope::Any => true,
                            Scope::Resources => false,
                            Scope::NonResource => rules[i]
                                .non_resource_urls
                                .iter()
                                .any(|spec| path_matches(&text(w), spec)),
                        },
                    ),
                    len,
                ),
            ];
            Kind {
                resource_request: false,
                start: Bits::from_fn(len, |i| scope(rules[i]) != Scope::Resources),
                certain_from: certain_from(&rules, &attributes, &group_free),
                attributes,
            }
        };

        Search {
            running,
            candidate,
            running_eval: Evaluator::new(running),
            candidate_eval: Evaluator::new(candidate),
            rules,
            split,
            decision_of_rule,
            no_match,
            widens,
            group_names,
            rule_groups,
            kinds: vec![resource_kind, non_resource_kind],
            visited: FxHashSet::default(),
        }
    }

    fn part(&self, policy: usize) -> std::ops::Range<usize> {
        if policy == 0 {
            0..self.split
        } else {
            self.split..self.rules.len()
        }
    }

    /// Drops, in each policy, the rules after the first one certain to match: they never decide.
    fn truncate(&self, mut mask: Bits, certain: &Bits) -> Bits {
        for policy in 0..2 {
            let range = self.part(policy);
            let first = mask.ones(range.clone()).find(|&i| certain.get(i));
            if let Some(first) = first {
                let later: Vec<usize> = mask.ones(first + 1..range.end).collect();
                for i in later {
                    mask.clear(i);
                }
            }
        }
        mask
    }

    fn possible(&self, mask: &Bits, certain: &Bits, policy: usize) -> Possible {
        let mut decisions = Vec::new();
        let mut first = true;
        let mut decided = true;
        let mut ends = false;
        for i in mask.ones(self.part(policy)) {
            if first && !certain.get(i) {
                decided = false;
            }
            first = false;
            decisions.push(self.decision_of_rule[i]);
            if certain.get(i) {
                ends = true;
            }
        }
        if !ends {
            decisions.push(self.no_match[policy]);
        }
        Possible { decisions, decided }
    }

    fn explore(
        &mut self,
        kind: usize,
        level: usize,
        mask: Bits,
        chosen: &mut Vec<usize>,
    ) -> Option<Counterexample> {
        let certain = &self.kinds[kind].certain_from[level];
        let mask = self.truncate(mask, certain);
        if self.visited.contains(&(kind, level, mask.clone())) {
            return None;
        }
        let running = self.possible(&mask, certain, 0);
        let candidate = self.possible(&mask, certain, 1);
        let can_widen = running
            .decisions
            .iter()
            .any(|&r| candidate.decisions.iter().any(|&c| self.widens[r][c]));
        if !can_widen || !self.visited.insert((kind, level, mask.clone())) {
            return None;
        }
        let depth = self.kinds[kind].attributes.len();
        if running.decided && candidate.decided {
            // One decision each, and it widens: any values of the rest will do.
            chosen.extend(std::iter::repeat_n(0, depth - level));
            let found = self.counterexample(kind, chosen, Vec::new());
            chosen.truncate(level);
            return found;
        }
        if level == depth {
            let groups = self.groups_for_widening(&mask)?;
            return self.counterexample(kind, chosen, groups);
        }
        let attribute = &self.kinds[kind].attributes[level];
        let mut telling = Bits::new(attribute.classes.len());
        telling.set(0);
        for rule in mask.ones(0..self.rules.len()) {
            telling.or_assign(&attribute.telling[rule]);
        }
        let visit: Vec<usize> = telling.ones(0..attribute.classes.len()).collect();
        for class in visit {
            let next = mask.and(&self.kinds[kind].attributes[level].classes[class].0);
            chosen.push(class);
            let found = self.explore(kind, level + 1, next, chosen);
            chosen.pop();
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// With only the groups left to choose (every rule in `mask` matches or not by its groups
    /// alone): a set of groups making the first matches of the two policies a widening pair.
    fn groups_for_widening(&self, mask: &Bits) -> Option<Vec<String>> {
        let none = Bits::new(self.group_names.len());
        // Per policy: (rule or no match, the groups of the rules before it).
        let options = |policy: usize| {
            let mut options: Vec<(Option<usize>, Bits)> = Vec::new();
            let mut before = none.clone();
            for i in mask.ones(self.part(policy)) {
                options.push((Some(i), before.clone()));
                match &self.rule_groups[i] {
                    Some(groups) => before.or_assign(groups),
                    None => return options,
                }
            }
            options.push((None, before));
            options
        };
        let decision = |policy: usize, rule: Option<usize>| {
            rule.map_or(self.no_match[policy], |i| self.decision_of_rule[i])
        };
        let running = options(0);
        let candidate = options(1);
        for (r, r_before) in &running {
            for (c, c_before) in &candidate {
                if !self.widens[decision(0, *r)][decision(1, *c)] {
                    continue;
                }
                let mut avoided = r_before.clone();
                avoided.or_assign(c_before);
                let mut chosen = Vec::new();
                let mut feasible = true;
                for rule in [r, c].into_iter().flatten() {
                    if let Some(groups) = &self.rule_groups[*rule] {
                        match groups.minus(&avoided).first() {
                            Some(g) => chosen.push(g),
                            None => feasible = false,
                        }
                    }
                }
                if feasible {
                    chosen.sort();
                    chosen.dedup();
                    return Some(
                        chosen
                            .into_iter()
                            .map(|g| self.group_names[g].clone())
                            .collect(),
                    );
                }
            }
        }
        None
    }

    /// The request of the chosen classes, checked through the evaluators.
    fn counterexample(
        &self,
        kind: usize,
        chosen: &[usize],
        groups: Vec<String>,
    ) -> Option<Counterexample> {
        let kind = &self.kinds[kind];
        let mut found = Counterexample {
            user: String::new(),
            groups,
            verb: String::new(),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: String::new(),
            running_level: Level::None,
            candidate_level: Level::None,
            resource_request: kind.resource_request,
            running: effective_decision(self.running, None),
            candidate: effective_decision(self.candidate, None),
            widening: Widening::Level,
        };
        for (attribute, &class) in kind.attributes.iter().zip(chosen) {
            match (&attribute.classes[class].1, attribute.attr) {
                (Witness::Value(v), Attr::Verb) => found.verb = v.clone(),
                (Witness::Value(v), Attr::User) => found.user = v.clone(),
                (Witness::Value(v), Attr::Namespace) => found.namespace = v.clone(),
                (Witness::Value(v), Attr::Path) => found.path = v.clone(),
                (
                    Witness::Resource {
                        api_group,
                        resource,
                        subresource,
                        name,
                    },
                    _,
                ) => {
                    found.api_group = api_group.clone();
                    found.resource = resource.clone();
                    found.subresource = subresource.clone();
                    found.name = name.clone();
                }
                (Witness::Value(_), Attr::Resource) => unreachable!("resources have a tuple"),
            }
        }
        if kind.resource_request {
            found.path = resource_path(&found);
        }
        let request = found.request();
        let running = self.running_eval.evaluate(&request).clone();
        let candidate = self.candidate_eval.evaluate(&request).clone();
        let Some(widening) = widening(&running, &candidate) else {
            debug_assert!(
                false,
                "the search and the evaluator disagree on {found:?}: {running:?} {candidate:?}"
            );
            return None;
        };
        found.running_level = running.level;
        found.candidate_level = candidate.level;
        found.running = running;
        found.candidate = candidate;
        found.widening = widening;
        Some(found)
    }
}

/// Per level: the rules no attribute from that level on constrains, the groups included.
fn certain_from(rules: &[&PolicyRule], attributes: &[Attribute], group_free: &Bits) -> Vec<Bits> {
    let mut out = vec![group_free.clone()];
    for attribute in attributes.iter().rev() {
        let free = Bits::from_fn(rules.len(), |i| {
            let rule = rules[i];
            match attribute.attr {
                Attr::Verb => rule.verbs.is_empty(),
                Attr::User => rule.users.is_empty(),
                Attr::Namespace => rule.namespaces.is_empty(),
                Attr::Resource => rule.resources.is_empty(),
                Attr::Path => scope(rule) == Scope::Any,
            }
        });
        let next = out.last().expect("at least the groups").and(&free);
        out.push(next);
    }
    out.reverse();
    out
}

/// Paths standing for every path: each named URL (a prefix without its `*`), `/`, and beyond
/// each of them one path continuing to no other named URL.
fn path_witnesses(specs: &[&str]) -> Vec<String> {
    let mut bases: Vec<String> = specs
        .iter()
        .filter(|spec| spec.starts_with('/'))
        .map(|spec| spec.trim_end_matches('*').to_string())
        .filter(|base| !base.is_empty())
        .chain(["/".to_string()])
        .collect();
    bases.sort();
    bases.dedup();
    let mut out = Vec::new();
    for base in &bases {
        out.push(base.clone());
        let continuation = PATH_CONTINUATIONS
            .chars()
            .chain((0x100..).filter_map(char::from_u32))
            .map(|c| format!("{base}{c}"))
            .find(|path| !bases.iter().any(|other| other.starts_with(path.as_str())))
            .expect("some character continues to no named URL");
        out.push(continuation);
    }
    out
}

/// Classes of (API group, resource, subresource, name). A rule's resources are a disjunction of
/// group entries, each a conjunction over these four, so the classes are refined entry by entry
/// and only then turned into rule sets.
fn resource_classes(
    rules: &[&PolicyRule],
    api_groups: &Named<'_>,
    resources: &Named<'_>,
    subresources: &Named<'_>,
    names: &Named<'_>,
) -> Vec<(Bits, Witness)> {
    let entries: Vec<(usize, &GroupResources, Vec<Pattern<'_>>)> = rules
        .iter()
        .enumerate()
        .flat_map(|(i, rule)| {
            rule.resources.iter().map(move |group| {
                (
                    i,
                    group,
                    group.resources.iter().map(|r| pattern(r)).collect(),
                )
            })
        })
        .collect();
    let count = entries.len();
    fn distinct<T>(items: impl IntoIterator<Item = (Bits, T)>) -> Vec<(Bits, T)> {
        let mut seen = FxHashSet::default();
        items
            .into_iter()
            .filter(|(bits, _)| seen.insert(bits.clone()))
            .collect()
    }

    let mut group_values: Vec<String> = api_groups.values.iter().map(|s| s.to_string()).collect();
    group_values.push(String::new());
    group_values.push(api_groups.fresh(&["example.com"], "group.example.com"));
    let by_group = distinct(group_values.into_iter().map(|g| {
        (
            Bits::from_fn(count, |e| {
                entries[e].1.group == "*" || entries[e].1.group == g
            }),
            g,
        )
    }));

    let mut resource_values: Vec<String> = resources.values.iter().map(|s| s.to_string()).collect();
    resource_values.push(resources.fresh(&["pods", "configmaps", "widgets"], "resource"));
    let mut sub_values = vec![String::new()];
    sub_values.extend(subresources.values.iter().map(|s| s.to_string()));
    sub_values.push(subresources.fresh(&["status", "log", "scale"], "subresource"));
    let by_resource = distinct(resource_values.iter().flat_map(|r| {
        sub_values.iter().map(|s| {
            (
                Bits::from_fn(count, |e| {
                    entries[e].2.is_empty() || entries[e].2.iter().any(|p| pattern_matches(p, r, s))
                }),
                (r.clone(), s.clone()),
            )
        })
    }));

    let mut name_values = vec![String::new()];
    name_values.extend(names.values.iter().map(|s| s.to_string()));
    name_values.push(names.fresh(&["web", "db"], "name"));
    let by_name = distinct(name_values.into_iter().map(|n| {
        (
            Bits::from_fn(count, |e| {
                let group = entries[e].1;
                group.resources.is_empty()
                    || group.resource_names.is_empty()
                    || group.resource_names.contains(&n)
            }),
            n,
        )
    }));

    let without_resources = Bits::from_fn(rules.len(), |i| rules[i].resources.is_empty());
    let mut seen: FxHashSet<Bits> = FxHashSet::default();
    let mut out = Vec::new();
    let pairs = distinct(by_group.iter().flat_map(|(g_bits, g)| {
        by_resource
            .iter()
            .map(move |(r_bits, rs)| (g_bits.and(r_bits), (g, rs)))
    }));
    for (pair_bits, (group, (resource, subresource))) in &pairs {
        for (n_bits, name) in &by_name {
            let alive = pair_bits.and(n_bits);
            let mut mask = without_resources.clone();
            for e in (0..count).filter(|&e| alive.get(e)) {
                mask.set(entries[e].0);
            }
            if seen.insert(mask.clone()) {
                out.push((
                    mask,
                    Witness::Resource {
                        api_group: group.to_string(),
                        resource: resource.clone(),
                        subresource: subresource.clone(),
                        name: name.clone(),
                    },
                ));
            }
        }
    }
    out
}

/// A URL the kube-apiserver would parse to the counterexample's resource attributes.
fn resource_path(found: &Counterexample) -> String {
    let mut path = if found.api_group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/v1", found.api_group)
    };
    if !found.namespace.is_empty() {
        let _ = write!(path, "/namespaces/{}", found.namespace);
    }
    let _ = write!(path, "/{}", found.resource);
    if !found.name.is_empty() {
        let _ = write!(path, "/{}", found.name);
    }
    if !found.subresource.is_empty() {
        let _ = write!(path, "/{}", found.subresource);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PolicySpec, Profile};
    use crate::policy::render::render;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    fn spec(profile: Profile) -> PolicySpec {
        PolicySpec {
            profile,
            ..PolicySpec::default()
        }
    }

    fn rendered(spec: &PolicySpec) -> Policy {
        render(spec).expect("a valid spec").policy
    }

    fn policy(rules: Vec<PolicyRule>) -> Policy {
        Policy {
            api_version: crate::audit::API_VERSION.into(),
            kind: crate::audit::KIND.into(),
            metadata: None,
            rules,
            omit_stages: vec![],
            omit_managed_fields: None,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn widens(running: &Policy, candidate: &Policy) -> Counterexample {
        match narrows(running, candidate) {
            Comparison::Widens(found) => *found,
            Comparison::Narrows => panic!("expected a widening"),
        }
    }

    #[test]
    fn a_policy_narrows_itself() {
        for profile in [
            Profile::None,
            Profile::Metadata,
            Profile::Default,
            Profile::WriteRequestBodies,
            Profile::AllRequestBodies,
        ] {
            let p = rendered(&spec(profile));
            assert!(narrows(&p, &p).is_narrowing(), "{profile:?}");
        }
    }

    #[test]
    fn all_request_bodies_to_default_narrows_and_back_widens() {
        let all = rendered(&spec(Profile::AllRequestBodies));
        let default = rendered(&spec(Profile::Default));
        assert_eq!(narrows(&all, &default), Comparison::Narrows);
        let back = widens(&default, &all);
        assert_eq!(back.widening, Widening::Level);
        assert!(back.candidate_level > back.running_level, "{back:?}");
        // Profiles narrow in the order they are documented.
        let chain = [
            Profile::AllRequestBodies,
            Profile::WriteRequestBodies,
            Profile::Default,
            Profile::None,
        ];
        for pair in chain.windows(2) {
            let (wide, narrow) = (rendered(&spec(pair[0])), rendered(&spec(pair[1])));
            assert!(narrows(&wide, &narrow).is_narrowing(), "{pair:?}");
            assert!(!narrows(&narrow, &wide).is_narrowing(), "{pair:?}");
        }
    }

    #[test]
    fn silencing_a_noisy_service_account_narrows() {
        let running = spec(Profile::Default);
        let mut candidate = running.clone();
        candidate.rules.insert(
            0,
            PolicyRule {
                users: strings(&["system:serviceaccount:monitoring:scraper"]),
                ..PolicyRule::at(Level::None)
            },
        );
        assert!(narrows(&rendered(&running), &rendered(&candidate)).is_narrowing());
        // The same rule at RequestResponse widens, for that account's writes... and reads.
        candidate.rules[0].level = Level::RequestResponse;
        let found = widens(&rendered(&running), &rendered(&candidate));
        assert_eq!(found.user, "system:serviceaccount:monitoring:scraper");
        assert_eq!(found.candidate_level, Level::RequestResponse);
    }

    #[test]
    fn omitting_a_stage_narrows_recording_it_again_widens() {
        let running = spec(Profile::Default);
        let mut candidate = running.clone();
        candidate.omit_stages.push(Stage::ResponseStarted);
        assert!(narrows(&rendered(&running), &rendered(&candidate)).is_narrowing());
        let found = widens(&rendered(&candidate), &rendered(&running));
        assert_eq!(found.widening, Widening::Stage(Stage::ResponseStarted));
        assert_eq!(found.running_level, found.candidate_level);
        assert!(
            found
                .describe()
                .contains("would be recorded at stage ResponseStarted, which the running policy omits: a restart is needed"),
            "{}",
            found.describe()
        );
    }

    #[test]
    fn keeping_managed_fields_the_running_policy_strips_widens() {
        let running = spec(Profile::Default);
        let mut candidate = running.clone();
        candidate.omit_managed_fields = false;
        let found = widens(&rendered(&running), &rendered(&candidate));
        assert_eq!(found.widening, Widening::ManagedFields);
        assert!(found.candidate_level >= Level::Request);
        // The other way round the collector strips them.
        assert!(narrows(&rendered(&candidate), &rendered(&running)).is_narrowing());
    }

    #[test]
    fn adding_a_request_response_rule_widens_with_the_request_in_words() {
        let running = spec(Profile::Default);
        let mut candidate = running.clone();
        candidate.rules.push(PolicyRule {
            users: strings(&["alice"]),
            namespaces: strings(&["kube-system"]),
            resources: vec![GroupResources {
                group: String::new(),
                resources: strings(&["secrets"]),
                resource_names: vec![],
            }],
            verbs: strings(&["get"]),
            ..PolicyRule::at(Level::Request)
        });
        let found = widens(&rendered(&running), &rendered(&candidate));
        assert_eq!(
            found.describe(),
            "a get of secrets in kube-system by alice would be recorded at Request; the running \
             policy records Metadata: a restart is needed"
        );
        let line = serde_json::to_value(&found).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "user": "alice", "groups": [], "verb": "get", "apiGroup": "",
                "resource": "secrets", "subresource": "", "namespace": "kube-system", "name": "",
                "path": "/api/v1/namespaces/kube-system/secrets",
                "runningLevel": "Metadata", "candidateLevel": "Request"
            })
        );
    }

    #[test]
    fn group_sets_are_solved_not_sampled() {
        // The candidate records a request at Request only for a user in group g7 and in none of
        // g0..g6 (each of which an earlier rule silences): one set among 2^8.
        let mut rules: Vec<PolicyRule> = (0..7)
            .map(|i| PolicyRule {
                user_groups: vec![format!("g{i}")],
                ..PolicyRule::at(Level::None)
            })
            .collect();
        rules.push(PolicyRule {
            user_groups: strings(&["g7", "g0"]),
            ..PolicyRule::at(Level::Request)
        });
        rules.push(PolicyRule::at(Level::Metadata));
        let candidate = policy(rules);
        let running = policy(vec![PolicyRule::at(Level::Metadata)]);
        let found = widens(&running, &candidate);
        assert_eq!(found.groups, vec!["g7".to_string()]);
        // With g7 silenced first, nothing widens.
        let mut silenced = candidate.clone();
        silenced.rules.insert(
            0,
            PolicyRule {
                user_groups: strings(&["g7"]),
                ..PolicyRule::at(Level::None)
            },
        );
        assert!(narrows(&running, &silenced).is_narrowing());
    }

    #[test]
    fn paths_under_prefixes_and_exact_urls() {
        let running = policy(vec![
            PolicyRule {
                non_resource_urls: strings(&["/healthz*", "/version"]),
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule::at(Level::None),
        ]);
        // Narrower: only the exact health path.
        let candidate = policy(vec![
            PolicyRule {
                non_resource_urls: strings(&["/healthz"]),
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule::at(Level::None),
        ]);
        assert!(narrows(&running, &candidate).is_narrowing());
        // Wider: everything under /version/.
        let candidate = policy(vec![
            PolicyRule {
                non_resource_urls: strings(&["/version*"]),
                ..PolicyRule::at(Level::Metadata)
            },
            PolicyRule::at(Level::None),
        ]);
        let found = widens(&running, &candidate);
        assert!(found.path.starts_with("/version") && found.path != "/version");
        assert!(!found.resource_request);
    }

    #[test]
    fn subresource_wildcards_and_resource_names() {
        let secret_entry = |resources: &[&str], names: &[&str]| GroupResources {
            group: String::new(),
            resources: strings(resources),
            resource_names: strings(names),
        };
        let running = policy(vec![
            PolicyRule {
                resources: vec![secret_entry(&["pods/*"], &[])],
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule::at(Level::Metadata),
        ]);
        // `pods/log` and `pods` are covered by `pods/*`.
        let candidate = policy(vec![
            PolicyRule {
                resources: vec![secret_entry(&["pods/log", "pods"], &["web"])],
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule::at(Level::Metadata),
        ]);
        assert!(narrows(&running, &candidate).is_narrowing());
        // `*/scale` is not: deployments/scale.
        let candidate = policy(vec![
            PolicyRule {
                resources: vec![secret_entry(&["*/scale"], &[])],
                ..PolicyRule::at(Level::Request)
            },
            PolicyRule::at(Level::Metadata),
        ]);
        let found = widens(&running, &candidate);
        assert_eq!(found.subresource, "scale");
        assert_ne!(found.resource, "pods");
    }

    // The property test: random pairs of policies, random requests through the evaluator.

    const USERS: [&str; 4] = [
        "alice",
        "bob",
        "system:serviceaccount:kube-system:noisy",
        "system:kube-proxy",
    ];
    const GROUPS: [&str; 4] = ["devs", "ops", "system:authenticated", "system:nodes"];
    const VERBS: [&str; 7] = ["get", "list", "watch", "create", "delete", "patch", "post"];
    const NAMESPACES: [&str; 3] = ["", "default", "kube-system"];
    const API_GROUPS: [&str; 4] = ["", "apps", "*", "coordination.k8s.io"];
    const RESOURCES: [&str; 9] = [
        "pods",
        "pods/log",
        "*",
        "*/scale",
        "pods/*",
        "deployments",
        "deployments/scale",
        "secrets",
        "leases",
    ];
    const NAMES: [&str; 2] = ["web", "db"];
    const URLS: [&str; 8] = [
        "/healthz*",
        "/healthz",
        "/api",
        "*",
        "/apis/*",
        "/version",
        "/version*",
        "/healthz/etcd",
    ];
    const LEVELS: [Level; 4] = [
        Level::None,
        Level::Metadata,
        Level::Request,
        Level::RequestResponse,
    ];
    const STAGES: [Stage; 4] = [
        Stage::RequestReceived,
        Stage::ResponseStarted,
        Stage::ResponseComplete,
        Stage::Panic,
    ];

    fn some<T: Clone>(rng: &mut SmallRng, items: &[T], most: usize) -> Vec<T> {
        let count = rng.random_range(0..=most);
        let mut out: Vec<T> = Vec::new();
        for _ in 0..count {
            out.push(items[rng.random_range(0..items.len())].clone());
        }
        out
    }

    fn random_rule(rng: &mut SmallRng) -> PolicyRule {
        let mut rule = PolicyRule::at(LEVELS[rng.random_range(0..4)]);
        let strings = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        if rng.random_bool(0.3) {
            rule.users = strings(some(rng, &USERS, 2));
        }
        if rng.random_bool(0.3) {
            rule.user_groups = strings(some(rng, &GROUPS, 2));
        }
        if rng.random_bool(0.4) {
            rule.verbs = strings(some(rng, &VERBS, 3));
        }
        match rng.random_range(0..3) {
            0 => {
                if rng.random_bool(0.5) {
                    rule.namespaces = strings(some(rng, &NAMESPACES, 2));
                }
                let entries = rng.random_range(0..3);
                rule.resources = (0..entries)
                    .map(|_| {
                        let resources = strings(some(rng, &RESOURCES, 3));
                        GroupResources {
                            group: API_GROUPS[rng.random_range(0..API_GROUPS.len())].into(),
                            resource_names: if !resources.is_empty() && rng.random_bool(0.3) {
                                strings(some(rng, &NAMES, 2))
                            } else {
                                vec![]
                            },
                            resources,
                        }
                    })
                    .collect();
            }
            1 => {
                rule.non_resource_urls = strings(some(rng, &URLS, 2));
            }
            _ => {}
        }
        if rng.random_bool(0.2) {
            rule.omit_stages = some(rng, &STAGES, 2);
        }
        if rng.random_bool(0.2) {
            rule.omit_managed_fields = Some(rng.random_bool(0.5));
        }
        rule
    }

    fn random_policy(rng: &mut SmallRng) -> Policy {
        let count = rng.random_range(1..=8);
        let mut p = policy((0..count).map(|_| random_rule(rng)).collect());
        if rng.random_bool(0.5) {
            p.omit_stages = some(rng, &STAGES, 2);
        }
        if rng.random_bool(0.5) {
            p.omit_managed_fields = Some(rng.random_bool(0.5));
        }
        p
    }

    /// A candidate derived from the running policy by a few edits, most of which narrow; some
    /// widen, often only for a corner of the requests.
    fn edited(rng: &mut SmallRng, running: &Policy) -> Policy {
        let mut p = running.clone();
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..p.rules.len());
            match rng.random_range(0..11) {
                0 | 1 => {
                    let level = p.rules[at].level;
                    p.rules[at].level = LEVELS[rng.random_range(0..=level as usize)];
                }
                2 => p.rules[at].omit_stages.push(STAGES[rng.random_range(0..4)]),
                3 => p.omit_stages.push(STAGES[rng.random_range(0..4)]),
                4 => {
                    let mut rule = random_rule(rng);
                    rule.level = Level::None;
                    p.rules.insert(0, rule);
                }
                5 => p.omit_managed_fields = Some(true),
                6 => p.rules[at].level = LEVELS[rng.random_range(0..4)],
                7 => {
                    let rule = random_rule(rng);
                    p.rules.insert(rng.random_range(0..=p.rules.len()), rule);
                }
                8 => {
                    if p.rules.len() > 1 {
                        p.rules.remove(at);
                    }
                }
                // Edits to one value of a rule, which widen or narrow only a corner of requests.
                9 => {
                    let rule = &mut p.rules[at];
                    if let Some(url) = rule.non_resource_urls.first_mut() {
                        match url.strip_suffix('*') {
                            Some(exact) if exact.len() > 1 => *url = exact.to_string(),
                            _ => url.push('*'),
                        }
                    } else if let Some(entry) = rule.resources.first_mut() {
                        let pattern = RESOURCES[rng.random_range(0..RESOURCES.len())].to_string();
                        match entry.resources.first_mut() {
                            Some(first) => *first = pattern,
                            None => entry.resource_names.clear(),
                        }
                        if rng.random_bool(0.5) {
                            entry.resource_names.pop();
                        }
                    }
                }
                _ => {
                    let rule = &mut p.rules[at];
                    let list = match rng.random_range(0..4) {
                        0 => &mut rule.users,
                        1 => &mut rule.user_groups,
                        2 => &mut rule.verbs,
                        _ => &mut rule.namespaces,
                    };
                    if rng.random_bool(0.5) {
                        list.pop();
                    } else if !list.is_empty() {
                        list.push(
                            ["alice", "ops", "get", "default"][rng.random_range(0..4)].into(),
                        );
                    }
                }
            }
        }
        p
    }

    struct OwnedRequest {
        user: &'static str,
        groups: Vec<String>,
        verb: &'static str,
        resource_request: bool,
        api_group: &'static str,
        resource: &'static str,
        subresource: &'static str,
        namespace: &'static str,
        name: &'static str,
        path: &'static str,
    }

    impl OwnedRequest {
        fn attributes(&self) -> RequestAttributes<'_> {
            RequestAttributes {
                user: self.user,
                groups: &self.groups,
                verb: self.verb,
                resource_request: self.resource_request,
                api_group: self.api_group,
                resource: self.resource,
                subresource: self.subresource,
                namespace: self.namespace,
                name: self.name,
                path: self.path,
            }
        }
    }

    fn random_request(rng: &mut SmallRng) -> OwnedRequest {
        let pick =
            |rng: &mut SmallRng, items: &[&'static str]| items[rng.random_range(0..items.len())];
        OwnedRequest {
            user: pick(
                rng,
                &[
                    "alice",
                    "bob",
                    "carol",
                    "system:serviceaccount:kube-system:noisy",
                    "system:kube-proxy",
                ],
            ),
            groups: some(rng, &GROUPS, 3)
                .into_iter()
                .chain(rng.random_bool(0.2).then_some("others"))
                .map(String::from)
                .collect(),
            verb: pick(
                rng,
                &[
                    "get", "list", "watch", "create", "delete", "patch", "post", "update",
                ],
            ),
            resource_request: rng.random_bool(0.75),
            api_group: pick(rng, &["", "apps", "coordination.k8s.io", "batch"]),
            resource: pick(
                rng,
                &["pods", "deployments", "secrets", "leases", "configmaps"],
            ),
            subresource: pick(rng, &["", "", "log", "scale", "status"]),
            namespace: pick(rng, &["", "default", "kube-system", "shop"]),
            name: pick(rng, &["", "web", "db", "x"]),
            path: pick(
                rng,
                &[
                    "/",
                    "/healthz",
                    "/healthz/etcd",
                    "/api",
                    "/apis",
                    "/apis/apps",
                    "/version",
                    "/version/x",
                    "/metrics",
                ],
            ),
        }
    }

    /// 500 pairs × 1,000 requests: when `narrows` says yes no request records more, and every
    /// counterexample is real.
    #[test]
    fn narrows_agrees_with_the_evaluator_on_random_policies_and_requests() {
        let seed = std::env::var("NARROWS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_c0ffee_u64);
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut narrowing, mut widening_pairs) = (0, 0);
        let mut spent = std::time::Duration::ZERO;
        let mut slowest = std::time::Duration::ZERO;
        for pair in 0..500 {
            let running = random_policy(&mut rng);
            let candidate = if rng.random_bool(0.2) {
                random_policy(&mut rng)
            } else {
                edited(&mut rng, &running)
            };
            let started = std::time::Instant::now();
            let answer = narrows(&running, &candidate);
            let took = started.elapsed();
            spent += took;
            slowest = slowest.max(took);
            let (r, c) = (Evaluator::new(&running), Evaluator::new(&candidate));
            match &answer {
                Comparison::Narrows => narrowing += 1,
                Comparison::Widens(found) => {
                    widening_pairs += 1;
                    let request = found.request();
                    let (rd, cd) = (r.evaluate(&request), c.evaluate(&request));
                    assert!(
                        widening(rd, cd).is_some(),
                        "seed {seed} pair {pair}: not a counterexample: {found:?}\n{running:#?}\n{candidate:#?}"
                    );
                    assert_eq!(
                        (rd.level, cd.level),
                        (found.running_level, found.candidate_level)
                    );
                    assert!(found.resource_request || found.path.starts_with('/'));
                }
            }
            for _ in 0..1000 {
                let request = random_request(&mut rng);
                let attributes = request.attributes();
                let (rd, cd) = (r.evaluate(&attributes), c.evaluate(&attributes));
                if let (Some(how), Comparison::Narrows) = (widening(rd, cd), &answer) {
                    panic!(
                        "seed {seed} pair {pair}: narrows said yes, but {attributes:?} widens ({how:?}: {rd:?} → {cd:?})\n{running:#?}\n{candidate:#?}"
                    );
                }
            }
        }
        eprintln!(
            "500 pairs: {narrowing} narrow, {widening_pairs} widen; narrows() took {spent:?} in all, {slowest:?} at most"
        );
        // Both answers must be exercised for the test to mean anything.
        assert!(
            narrowing >= 50 && widening_pairs >= 50,
            "{narrowing} / {widening_pairs}"
        );
    }
}

#[cfg(test)]
mod long_policies {
    use super::*;
    use crate::api::{PolicySpec, Profile};
    use crate::policy::render::render;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    /// The longest spec the API allows (256 custom rules before a profile), each naming its own
    /// users, groups, namespaces, resources and names: the cost is measured and printed.
    #[test]
    fn the_longest_specs_compare_in_reasonable_time() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut pick = |stem: &str, n: usize, most: usize| -> Vec<String> {
            let count = rng.random_range(0..=most);
            (0..count)
                .map(|_| format!("{stem}{}", rng.random_range(0..n)))
                .collect()
        };
        let levels = [
            Level::None,
            Level::Metadata,
            Level::Request,
            Level::RequestResponse,
        ];
        let rules: Vec<PolicyRule> = (0..256)
            .map(|i| {
                let mut rule = PolicyRule::at(levels[i % 4]);
                rule.users = pick("user-", 60, 2);
                rule.user_groups = pick("group-", 40, 2);
                rule.verbs = pick("verb-", 10, 2);
                if i % 3 == 0 {
                    rule.non_resource_urls = pick("/path-", 30, 2);
                    rule.non_resource_urls.push(format!("/prefix-{}*", i % 17));
                } else {
                    rule.namespaces = pick("ns-", 40, 2);
                    rule.resources = vec![GroupResources {
                        group: format!("g{}.example.com", i % 9),
                        resources: pick("res-", 80, 3),
                        resource_names: pick("name-", 30, 1),
                    }];
                    if rule.resources[0].resources.is_empty() {
                        rule.resources[0].resource_names.clear();
                    }
                }
                rule
            })
            .collect();
        let running = render(&PolicySpec {
            profile: Profile::AllRequestBodies,
            rules,
            ..PolicySpec::default()
        })
        .unwrap()
        .policy;
        let started = std::time::Instant::now();
        assert!(narrows(&running, &running).is_narrowing());
        let same = started.elapsed();
        // Every rule one level lower: a narrowing, so every class is visited.
        let mut lower = running.clone();
        for rule in &mut lower.rules {
            rule.level = levels[(rule.level as usize).saturating_sub(1)];
        }
        let started = std::time::Instant::now();
        assert!(narrows(&running, &lower).is_narrowing());
        let lowered = started.elapsed();
        let started = std::time::Instant::now();
        let back = narrows(&lower, &running);
        let widened = started.elapsed();
        assert!(!back.is_narrowing());
        eprintln!(
            "{} rules: against itself {same:?}, every level lowered {lowered:?}, raised back (widens) {widened:?}",
            running.rules.len()
        );
    }
}
