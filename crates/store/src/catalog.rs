//! Logsets, topics, the webhook's route and the policy each topic enforces at intake: the
//! catalog's rules, without its storage. The
//! embedded store keeps it in a file, OpenSearch in one document written with optimistic
//! concurrency; both apply edits through [`Catalog::apply`], so every replica decides alike.

use clusteraudit_core::{alert::RuleSpec, audit::Policy};
use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logset {
    pub id: String,
    pub name: String,
    pub created: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub id: String,
    pub logset_id: String,
    pub name: String,
    pub retention_days: u32,
    pub created: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    logsets: Vec<Logset>,
    topics: Vec<Topic>,
    /// The topic the webhook writes to.
    route: Option<String>,
    /// The policies the collector applies to events before storing them, one per topic at most.
    /// Absent from catalogs written before there were any, so those still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    policies: Vec<TopicPolicy>,
    /// Each topic's routes, for the topics that have some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<TopicRoutes>,
    /// The alert rules the collector evaluates on acknowledged events (the operator sets them
    /// from the `AuditAlert` objects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alerts: Vec<RuleSpec>,
}

/// Where a topic's events also go: each event stored in `topic_id` that matches a route's query
/// is stored in the route's topic as well.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicRoutes {
    pub topic_id: String,
    pub routes: Vec<TopicRoute>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicRoute {
    /// In the search language (`clusteraudit_core::query`); the empty query routes every event.
    pub query: String,
    pub topic_id: String,
}

/// The most routes one topic has.
pub const MAX_ROUTES: usize = 16;

/// The audit policy a topic's events are held to: each event is stored only as far as this
/// policy records it (see `clusteraudit_core::policy::enforce`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicPolicy {
    pub topic_id: String,
    /// `clusteraudit_core::policy::enforce::policy_hash` of the policy.
    pub hash: String,
    /// When this policy was set.
    pub set: String,
    pub policy: Policy,
}

pub const DEFAULT_RETENTION_DAYS: u32 = 30;

/// A change to the catalog.
#[derive(Clone, Debug, PartialEq)]
pub enum CatalogEdit {
    /// Creates a logset and a topic both named `default` and routes to it, if nothing is routed.
    Initialize,
    CreateLogset {
        name: String,
    },
    DeleteLogset {
        id: String,
    },
    CreateTopic {
        logset_id: String,
        name: String,
        retention_days: u32,
    },
    UpdateTopic {
        id: String,
        name: Option<String>,
        retention_days: Option<u32>,
    },
    DeleteTopic {
        id: String,
    },
    SetRoute {
        topic_id: String,
    },
    /// Enforces a policy on the topic's events from now on; validated as the kube-apiserver
    /// would validate it.
    SetPolicy {
        topic_id: String,
        policy: Box<Policy>,
    },
    /// Stops enforcing any policy on the topic's events.
    DeletePolicy {
        topic_id: String,
    },
    /// Replaces the topic's routes (none: no routing). Each query must parse, and each target be
    /// another topic of the catalog.
    SetRoutes {
        topic_id: String,
        routes: Vec<TopicRoute>,
    },
    /// Replaces the alert rules. Each must compile, names are unique, and a rule's topic (when
    /// it names one) must exist.
    SetAlerts {
        rules: Vec<RuleSpec>,
    },
}

/// What an edit did.
#[derive(Clone, Debug, PartialEq)]
pub enum Edited {
    /// The logset; `created` is false when one of that name already existed.
    Logset {
        logset: Logset,
        created: bool,
    },
    /// The topic; `created` is false when one of that name already existed in the logset.
    Topic {
        topic: Topic,
        created: bool,
    },
    /// The policy a topic enforces now.
    Policy(TopicPolicy),
    Done,
}

/// Where new ids and creation times come from, so that edits stay deterministic under test.
pub trait Origin {
    fn new_id(&mut self, prefix: &str) -> String;
    fn now(&mut self) -> String;
}

/// Random ids and the wall clock.
pub struct SystemOrigin;

impl Origin for SystemOrigin {
    fn new_id(&mut self, prefix: &str) -> String {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        format!("{prefix}-{}", hex::encode(bytes))
    }

    fn now(&mut self) -> String {
        jiff::Timestamp::now().to_string()
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} name {name:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"
        )))
    }
}

fn check_retention(days: u32) -> Result<(), StoreError> {
    if (1..=3650).contains(&days) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "retentionDays {days} must be between 1 and 3650"
        )))
    }
}

impl Catalog {
    pub fn logsets(&self) -> &[Logset] {
        &self.logsets
    }

    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    pub fn logset(&self, id: &str) -> Result<&Logset, StoreError> {
        self.logsets
            .iter()
            .find(|l| l.id == id)
            .ok_or_else(|| StoreError::LogsetNotFound(id.into()))
    }

    pub fn topic(&self, id: &str) -> Result<&Topic, StoreError> {
        self.topics
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| StoreError::TopicNotFound(id.into()))
    }

    pub fn policies(&self) -> &[TopicPolicy] {
        &self.policies
    }

    /// The routes of every topic that has some.
    pub fn all_routes(&self) -> &[TopicRoutes] {
        &self.routes
    }

    /// A topic's routes; empty when it has none.
    pub fn routes(&self, topic_id: &str) -> &[TopicRoute] {
        self.routes
            .iter()
            .find(|r| r.topic_id == topic_id)
            .map_or(&[], |r| r.routes.as_slice())
    }

    /// The alert rules, as set.
    pub fn alerts(&self) -> &[RuleSpec] {
        &self.alerts
    }

    /// The policy a topic enforces, if any.
    pub fn policy(&self, topic_id: &str) -> Option<&TopicPolicy> {
        self.policies.iter().find(|p| p.topic_id == topic_id)
    }

    /// The topics of a logset, which must exist.
    pub fn topics_of(&self, logset_id: &str) -> Result<Vec<Topic>, StoreError> {
        self.logset(logset_id)?;
        Ok(self
            .topics
            .iter()
            .filter(|t| t.logset_id == logset_id)
            .cloned()
            .collect())
    }

    /// The routed topic; empty before the catalog is initialized.
    pub fn route(&self) -> &str {
        self.route.as_deref().unwrap_or_default()
    }

    /// Whether `edit` would leave the catalog as it is (so nothing needs writing).
    fn unchanged(&self, edited: &Edited, before: &Catalog) -> bool {
        match edited {
            Edited::Logset { created, .. } | Edited::Topic { created, .. } if !created => true,
            _ => self == before,
        }
    }

    /// Applies an edit. Returns what it did and whether the catalog changed.
    pub fn apply(
        &mut self,
        edit: &CatalogEdit,
        origin: &mut dyn Origin,
    ) -> Result<(Edited, bool), StoreError> {
        let before = self.clone();
        let edited = match edit {
            CatalogEdit::Initialize => {
                if self.route.is_none() {
                    let logset = self.create_logset("default", origin)?.0;
                    let topic = self
                        .create_topic(&logset.id, "default", DEFAULT_RETENTION_DAYS, origin)?
                        .0;
                    self.route = Some(topic.id);
                }
                Edited::Done
            }
            CatalogEdit::CreateLogset { name } => {
                let (logset, created) = self.create_logset(name, origin)?;
                Edited::Logset { logset, created }
            }
            CatalogEdit::DeleteLogset { id } => {
                self.logset(id)?;
                if self.topics.iter().any(|t| &t.logset_id == id) {
                    return Err(StoreError::LogsetNotEmpty(id.clone()));
                }
                self.logsets.retain(|l| &l.id != id);
                Edited::Done
            }
            CatalogEdit::CreateTopic {
                logset_id,
                name,
                retention_days,
            } => {
                let (topic, created) =
                    self.create_topic(logset_id, name, *retention_days, origin)?;
                Edited::Topic { topic, created }
            }
            CatalogEdit::UpdateTopic {
                id,
                name,
                retention_days,
            } => {
                if let Some(name) = name {
                    check_name("topic", name)?;
                }
                if let Some(days) = retention_days {
                    check_retention(*days)?;
                }
                let current = self.topic(id)?.clone();
                if let Some(name) = name
                    && self.topics.iter().any(|t| {
                        t.logset_id == current.logset_id && &t.name == name && t.id != current.id
                    })
                {
                    return Err(StoreError::Invalid(format!(
                        "logset {:?} already holds a topic named {name:?}",
                        current.logset_id
                    )));
                }
                let topic = self
                    .topics
                    .iter_mut()
                    .find(|t| &t.id == id)
                    .expect("found above");
                if let Some(name) = name {
                    topic.name = name.clone();
                }
                if let Some(days) = retention_days {
                    topic.retention_days = *days;
                }
                Edited::Topic {
                    topic: topic.clone(),
                    created: true,
                }
            }
            CatalogEdit::DeleteTopic { id } => {
                self.topic(id)?;
                if self.route.as_deref() == Some(id) {
                    return Err(StoreError::TopicInUse(id.clone()));
                }
                self.topics.retain(|t| &t.id != id);
                self.policies.retain(|p| &p.topic_id != id);
                // Its routes go with it, and so do the routes into it: there is nowhere left to
                // store what they match.
                self.routes.retain(|r| &r.topic_id != id);
                for routes in &mut self.routes {
                    routes.routes.retain(|r| &r.topic_id != id);
                }
                self.routes.retain(|r| !r.routes.is_empty());
                self.alerts.retain(|r| &r.topic != id);
                Edited::Done
            }
            CatalogEdit::SetRoute { topic_id } => {
                self.topic(topic_id)?;
                self.route = Some(topic_id.clone());
                Edited::Done
            }
            CatalogEdit::SetPolicy { topic_id, policy } => {
                self.topic(topic_id)?;
                policy
                    .validate()
                    .map_err(|err| StoreError::Invalid(format!("the policy: {err}")))?;
                let hash = clusteraudit_core::policy::enforce::policy_hash(policy);
                match self.policies.iter().find(|p| &p.topic_id == topic_id) {
                    // The same policy again keeps the time it was first set.
                    Some(current) if current.hash == hash => Edited::Policy(current.clone()),
                    _ => {
                        let set = TopicPolicy {
                            topic_id: topic_id.clone(),
                            hash,
                            set: origin.now(),
                            policy: (**policy).clone(),
                        };
                        self.policies.retain(|p| &p.topic_id != topic_id);
                        self.policies.push(set.clone());
                        Edited::Policy(set)
                    }
                }
            }
            CatalogEdit::DeletePolicy { topic_id } => {
                self.topic(topic_id)?;
                self.policies.retain(|p| &p.topic_id != topic_id);
                Edited::Done
            }
            CatalogEdit::SetRoutes { topic_id, routes } => {
                self.topic(topic_id)?;
                self.check_routes(topic_id, routes)?;
                self.routes.retain(|r| &r.topic_id != topic_id);
                if !routes.is_empty() {
                    self.routes.push(TopicRoutes {
                        topic_id: topic_id.clone(),
                        routes: routes.clone(),
                    });
                }
                Edited::Done
            }
            CatalogEdit::SetAlerts { rules } => {
                self.check_alerts(rules)?;
                self.alerts = rules.clone();
                Edited::Done
            }
        };
        let changed = !self.unchanged(&edited, &before);
        Ok((edited, changed))
    }

    fn check_alerts(&self, rules: &[RuleSpec]) -> Result<(), StoreError> {
        if rules.len() > clusteraudit_core::alert::MAX_RULES {
            return Err(StoreError::Invalid(format!(
                "{} alert rules; at most {}",
                rules.len(),
                clusteraudit_core::alert::MAX_RULES
            )));
        }
        for (index, rule) in rules.iter().enumerate() {
            if let Err(err) = rule.compile() {
                return Err(StoreError::Invalid(format!(
                    "rules[{index}] ({:?}).{err}",
                    rule.name
                )));
            }
            if rules[..index].iter().any(|r| r.name == rule.name) {
                return Err(StoreError::Invalid(format!(
                    "rules[{index}]: the name {:?} is used twice",
                    rule.name
                )));
            }
            if !rule.topic.is_empty() {
                self.topic(&rule.topic)?;
            }
        }
        Ok(())
    }

    fn check_routes(&self, topic_id: &str, routes: &[TopicRoute]) -> Result<(), StoreError> {
        if routes.len() > MAX_ROUTES {
            return Err(StoreError::Invalid(format!(
                "{} routes; a topic has at most {MAX_ROUTES}",
                routes.len()
            )));
        }
        for (index, route) in routes.iter().enumerate() {
            if let Err(err) = clusteraudit_core::query::parse_matchable(&route.query) {
                return Err(StoreError::Invalid(format!(
                    "routes[{index}].query: at column {}: {}",
                    err.column, err.message
                )));
            }
            if route.topic_id == topic_id {
                return Err(StoreError::Invalid(format!(
                    "routes[{index}].topicId: the route's topic is the topic itself"
                )));
            }
            if self.topic(&route.topic_id).is_err() {
                return Err(StoreError::Invalid(format!(
                    "routes[{index}].topicId: no topic with id {:?}",
                    route.topic_id
                )));
            }
        }
        Ok(())
    }

    fn create_logset(
        &mut self,
        name: &str,
        origin: &mut dyn Origin,
    ) -> Result<(Logset, bool), StoreError> {
        check_name("logset", name)?;
        if let Some(existing) = self.logsets.iter().find(|l| l.name == name) {
            return Ok((existing.clone(), false));
        }
        let logset = Logset {
            id: origin.new_id("ls"),
            name: name.into(),
            created: origin.now(),
        };
        self.logsets.push(logset.clone());
        Ok((logset, true))
    }

    fn create_topic(
        &mut self,
        logset_id: &str,
        name: &str,
        retention_days: u32,
        origin: &mut dyn Origin,
    ) -> Result<(Topic, bool), StoreError> {
        self.logset(logset_id)?;
        check_name("topic", name)?;
        check_retention(retention_days)?;
        if let Some(existing) = self
            .topics
            .iter()
            .find(|t| t.logset_id == logset_id && t.name == name)
        {
            return Ok((existing.clone(), false));
        }
        let topic = Topic {
            id: origin.new_id("tp"),
            logset_id: logset_id.into(),
            name: name.into(),
            retention_days,
            created: origin.now(),
        };
        self.topics.push(topic.clone());
        Ok((topic, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u32);

    impl Origin for Counter {
        fn new_id(&mut self, prefix: &str) -> String {
            self.0 += 1;
            format!("{prefix}-{}", self.0)
        }
        fn now(&mut self) -> String {
            "2026-11-30T00:00:00Z".into()
        }
    }

    fn apply(catalog: &mut Catalog, edit: CatalogEdit) -> Result<(Edited, bool), StoreError> {
        catalog.apply(&edit, &mut Counter(catalog.logsets.len() as u32 * 10 + 100))
    }

    #[test]
    fn initializing_routes_to_a_default_topic_once() {
        let mut catalog = Catalog::default();
        assert_eq!(catalog.route(), "");
        assert!(apply(&mut catalog, CatalogEdit::Initialize).unwrap().1);
        let route = catalog.route().to_string();
        let default = catalog.topic(&route).unwrap().clone();
        assert_eq!(default.name, "default");
        assert_eq!(catalog.logset(&default.logset_id).unwrap().name, "default");
        assert!(!apply(&mut catalog, CatalogEdit::Initialize).unwrap().1);
        assert_eq!(catalog.route(), route);
    }

    #[test]
    fn a_topic_policy_is_set_validated_replaced_and_goes_with_its_topic() {
        use clusteraudit_core::audit::{Level, PolicyRule};
        let mut catalog = Catalog::default();
        apply(&mut catalog, CatalogEdit::Initialize).unwrap();
        // A catalog written before there were policies reads, and writes the same way back.
        let old = serde_json::to_string(&catalog).unwrap();
        assert!(!old.contains("policies"));
        assert_eq!(serde_json::from_str::<Catalog>(&old).unwrap(), catalog);
        let route = catalog.route().to_string();
        let policy = |level| Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules: vec![PolicyRule::at(level)],
            omit_stages: vec![],
            omit_managed_fields: None,
        };
        let set = |catalog: &mut Catalog, topic: &str, level| {
            apply(
                catalog,
                CatalogEdit::SetPolicy {
                    topic_id: topic.into(),
                    policy: Box::new(policy(level)),
                },
            )
        };
        let (Edited::Policy(first), changed) = set(&mut catalog, &route, Level::Metadata).unwrap()
        else {
            panic!("a policy")
        };
        assert!(changed);
        assert_eq!(
            first.hash,
            clusteraudit_core::policy::enforce::policy_hash(&policy(Level::Metadata))
        );
        assert_eq!(catalog.policy(&route), Some(&first));
        let (again, changed) = set(&mut catalog, &route, Level::Metadata).unwrap();
        assert!(!changed);
        assert_eq!(again, Edited::Policy(first.clone()));
        let (Edited::Policy(second), _) = set(&mut catalog, &route, Level::Request).unwrap() else {
            panic!("a policy")
        };
        assert_ne!(second.hash, first.hash);
        assert_eq!(catalog.policies().len(), 1);
        let read: Catalog =
            serde_json::from_str(&serde_json::to_string(&catalog).unwrap()).unwrap();
        assert_eq!(read, catalog);

        let before = catalog.clone();
        let mut no_rules = policy(Level::Metadata);
        no_rules.rules.clear();
        let refused = apply(
            &mut catalog,
            CatalogEdit::SetPolicy {
                topic_id: route.clone(),
                policy: Box::new(no_rules),
            },
        )
        .unwrap_err();
        assert!(matches!(refused, StoreError::Invalid(_)), "{refused:?}");
        assert!(matches!(
            set(&mut catalog, "tp-missing", Level::Metadata).unwrap_err(),
            StoreError::TopicNotFound(_)
        ));
        assert_eq!(catalog, before);

        apply(
            &mut catalog,
            CatalogEdit::DeletePolicy {
                topic_id: route.clone(),
            },
        )
        .unwrap();
        assert_eq!(catalog.policy(&route), None);
        set(&mut catalog, &route, Level::Metadata).unwrap();
        let logset = catalog.topic(&route).unwrap().logset_id.clone();
        let (Edited::Topic { topic, .. }, _) = apply(
            &mut catalog,
            CatalogEdit::CreateTopic {
                logset_id: logset,
                name: "other".into(),
                retention_days: 7,
            },
        )
        .unwrap() else {
            panic!("a topic")
        };
        apply(&mut catalog, CatalogEdit::SetRoute { topic_id: topic.id }).unwrap();
        apply(&mut catalog, CatalogEdit::DeleteTopic { id: route.clone() }).unwrap();
        assert!(catalog.policies().is_empty());
    }

    #[test]
    fn routes_are_checked_whole_replaced_and_go_with_either_topic() {
        let mut catalog = Catalog::default();
        apply(&mut catalog, CatalogEdit::Initialize).unwrap();
        let main = catalog.route().to_string();
        let logset_id = catalog.topic(&main).unwrap().logset_id.clone();
        // One origin for both, so that their ids differ.
        let mut origin = Counter(500);
        let mut topic = |catalog: &mut Catalog, name: &str| {
            let edit = CatalogEdit::CreateTopic {
                logset_id: logset_id.clone(),
                name: name.into(),
                retention_days: 365,
            };
            let (Edited::Topic { topic, .. }, _) = catalog.apply(&edit, &mut origin).unwrap()
            else {
                panic!("a topic")
            };
            topic.id
        };
        let security = topic(&mut catalog, "security");
        let deletes = topic(&mut catalog, "deletes");
        let route = |query: &str, topic_id: &str| TopicRoute {
            query: query.into(),
            topic_id: topic_id.into(),
        };
        let set = |catalog: &mut Catalog, routes: Vec<TopicRoute>| {
            apply(
                catalog,
                CatalogEdit::SetRoutes {
                    topic_id: main.clone(),
                    routes,
                },
            )
        };
        // A catalog written before there were routes reads, and writes the same way back.
        assert!(!serde_json::to_string(&catalog).unwrap().contains("routes"));
        let wanted = vec![
            route("resource:secrets", &security),
            route("verb:delete", &deletes),
        ];
        assert!(set(&mut catalog, wanted.clone()).unwrap().1);
        assert_eq!(catalog.routes(&main), wanted.as_slice());
        assert!(!set(&mut catalog, wanted.clone()).unwrap().1);
        let read: Catalog =
            serde_json::from_str(&serde_json::to_string(&catalog).unwrap()).unwrap();
        assert_eq!(read, catalog);

        let before = catalog.clone();
        for (routes, refused) in [
            (
                vec![route("verb:get", &security), route("verb:", &deletes)],
                "routes[1].query: at column 6",
            ),
            (
                vec![route("verb:get", &main)],
                "routes[0].topicId: the route's topic is the topic itself",
            ),
            (vec![route("", "tp-missing")], "routes[0].topicId: no topic"),
            (vec![route("auditID:a*", &security)], "routes[0].query"),
            (vec![route("", &security); MAX_ROUTES + 1], "17 routes"),
        ] {
            let err = set(&mut catalog, routes).unwrap_err();
            assert!(err.to_string().contains(refused), "{err}");
            assert_eq!(catalog, before);
        }
        assert!(matches!(
            apply(
                &mut catalog,
                CatalogEdit::SetRoutes {
                    topic_id: "tp-missing".into(),
                    routes: vec![]
                }
            )
            .unwrap_err(),
            StoreError::TopicNotFound(_)
        ));

        apply(&mut catalog, CatalogEdit::DeleteTopic { id: deletes }).unwrap();
        assert_eq!(catalog.routes(&main), &wanted[..1]);
        set(&mut catalog, vec![]).unwrap();
        assert!(catalog.all_routes().is_empty());
        set(&mut catalog, wanted[..1].to_vec()).unwrap();
        apply(&mut catalog, CatalogEdit::DeleteTopic { id: security }).unwrap();
        assert!(catalog.all_routes().is_empty());
    }

    #[test]
    fn creation_by_name_is_idempotent_and_refusals_change_nothing() {
        let mut catalog = Catalog::default();
        apply(&mut catalog, CatalogEdit::Initialize).unwrap();
        let route = catalog.route().to_string();
        let create_logset = CatalogEdit::CreateLogset {
            name: "k8s-audit".into(),
        };
        let (Edited::Logset { logset, created }, changed) =
            apply(&mut catalog, create_logset.clone()).unwrap()
        else {
            panic!("a logset")
        };
        assert!(created && changed);
        let (again, changed) = apply(&mut catalog, create_logset).unwrap();
        assert!(!changed);
        assert_eq!(
            again,
            Edited::Logset {
                logset: logset.clone(),
                created: false
            }
        );
        let create_topic = |days| CatalogEdit::CreateTopic {
            logset_id: logset.id.clone(),
            name: "cluster-audit".into(),
            retention_days: days,
        };
        let (Edited::Topic { topic, .. }, _) = apply(&mut catalog, create_topic(7)).unwrap() else {
            panic!("a topic")
        };
        let (
            Edited::Topic {
                topic: same,
                created,
            },
            changed,
        ) = apply(&mut catalog, create_topic(30)).unwrap()
        else {
            panic!("a topic")
        };
        assert!(!created && !changed);
        assert_eq!(same, topic);

        let before = catalog.clone();
        for (edit, refused) in [
            (
                CatalogEdit::DeleteLogset {
                    id: logset.id.clone(),
                },
                "LogsetNotEmpty",
            ),
            (CatalogEdit::DeleteTopic { id: route.clone() }, "TopicInUse"),
            (
                CatalogEdit::CreateTopic {
                    logset_id: logset.id.clone(),
                    name: "Bad_Name".into(),
                    retention_days: 7,
                },
                "Invalid",
            ),
            (create_topic(0), "Invalid"),
            (
                CatalogEdit::SetRoute {
                    topic_id: "tp-missing".into(),
                },
                "TopicNotFound",
            ),
            (
                CatalogEdit::UpdateTopic {
                    id: topic.id.clone(),
                    name: Some("default".into()),
                    retention_days: Some(0),
                },
                "Invalid",
            ),
        ] {
            let err = apply(&mut catalog, edit).unwrap_err();
            assert!(format!("{err:?}").starts_with(refused), "{err:?}");
            assert_eq!(catalog, before);
        }

        apply(
            &mut catalog,
            CatalogEdit::SetRoute {
                topic_id: topic.id.clone(),
            },
        )
        .unwrap();
        apply(&mut catalog, CatalogEdit::DeleteTopic { id: route }).unwrap();
        assert_eq!(catalog.topics().len(), 1);
        let (Edited::Topic { topic: renamed, .. }, changed) = apply(
            &mut catalog,
            CatalogEdit::UpdateTopic {
                id: topic.id.clone(),
                name: Some("renamed".into()),
                retention_days: Some(90),
            },
        )
        .unwrap() else {
            panic!("a topic")
        };
        assert!(changed);
        assert_eq!(
            (renamed.name.as_str(), renamed.retention_days),
            ("renamed", 90)
        );
    }
}
