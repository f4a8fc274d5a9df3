//! What a reconcile concludes, as pure code: from the spec, the last status, the revision the spec
//! asks for, the sink's state and the nodes' reports, the actions to take: the Events to publish,
//! the sink to delete, the next status, the revision Secrets to collect and when to look again.
//! The IO around it (reconcile.rs) gathers the inputs and carries the actions out, so every
//! rollout decision is unit-tested here on a fake clock.
//!
//! One sub-planner per concern, in the order a reconcile settles them, each reading what the
//! earlier ones wrote: the policy (which revision the spec asks for), the sink (whether the log
//! destination is there, and when it goes), the release of a revision through the restart guard,
//! the nodes, and readiness, which sums them up.

pub mod guard;
mod nodes;
mod policy;
mod readiness;
mod release;
mod sink;
pub mod token;

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use sink::{Lifecycle, disabled_everywhere, lifecycle};

use super::conditions::{self, Observed};
use clusteraudit_core::{
    api::{ClusterAuditStatus, SinkStatus},
    rollout::objects::NodeReport,
};
use guard::GuardConfig;

/// What the spec asks of the kube-apiservers, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Auditing with this revision; `hash` is the full SHA-256 of its content.
    Revision {
        name: String,
        policy_hash: String,
        hash: String,
    },
    /// Auditing off: every node on its original manifest.
    Off,
    /// The spec cannot be rolled out; nothing changes.
    Invalid { message: String },
}

/// Where the log destination stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Sink {
    Ready(SinkStatus),
    /// `reason` is PascalCase (LogsetNotFound, CollectorUnavailable, ...).
    /// `known` is the sink as far as it stood, kept in status so that what the operator
    /// created of it is not forgotten.
    Failed {
        reason: &'static str,
        message: String,
        known: Option<SinkStatus>,
    },
    /// Auditing is off: the sink is left as it is.
    NotChecked,
}

pub struct Inputs<'a> {
    pub now: SystemTime,
    pub generation: Option<i64>,
    pub previous: &'a ClusterAuditStatus,
    pub desired: Desired,
    pub sink: Sink,
    /// `spec.sink.deleteOnDisable`.
    pub delete_on_disable: bool,
    pub guard: GuardConfig,
    pub reports: &'a [NodeReport],
    /// The force-rollout annotation's value, if set.
    pub force_rollout: Option<&'a str>,
    /// How the spec's policy compares with the policy of the revision the nodes were given.
    pub policy_change: PolicyChange,
    /// The hash of the spec's policy once the collector enforces it; None leaves the status's.
    pub enforced_policy_hash: Option<String>,
}

/// How the spec's policy compares with the released revision's (what the kube-apiservers send).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PolicyChange {
    /// Nothing to compare with (no released revision, auditing off, an invalid spec).
    #[default]
    NotCompared,
    /// The spec asks for no more than the released revision records: the collector enforces it
    /// and the revision stays.
    Narrows,
    /// The spec records more than the released revision: a new revision, and why, in words.
    Widens(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// One thing a reconcile does. They are carried out in order and the first that fails ends the
/// reconcile, so a later action may rely on the earlier ones: the status that forgets a sink is
/// written only once the sink is gone.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Adds (true) or removes the operator's finalizer.
    SetFinalizer(bool),
    Publish(Event),
    /// Counts a decision in the metrics.
    Count(Tally),
    /// Deletes what the operator created of this sink, and only that. With `announce`, a
    /// SinkDeleted Event says what went, which only the deletion itself finds out (a created
    /// logset that still holds topics stays).
    DeleteSink {
        sink: SinkStatus,
        announce: bool,
    },
    // Boxed: the status is far larger than every other action.
    WriteStatus(Box<ClusterAuditStatus>),
    /// Deletes the revision Secrets not named in `in_use`, but for the `spare` newest of them.
    CollectRevisions {
        in_use: Vec<String>,
        spare: usize,
    },
    /// The reconcile is over; look again after this long.
    RequeueAfter(Duration),
    /// The reconcile is over; look again when something changes.
    AwaitChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// A rollout went to the nodes.
    RolloutStarted,
    /// The guard held a rollout back.
    Throttled,
}

/// How long to wait before looking again when nothing is moving.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// While nodes are moving (their reports also trigger reconciles; this is the safety net).
pub const ACTIVE_REQUEUE: Duration = Duration::from_secs(10);

pub fn to_time(at: SystemTime) -> Time {
    Time(k8s_openapi::jiff::Timestamp::try_from(at).expect("a clock time within jiff's range"))
}

pub fn from_time(time: &Time) -> SystemTime {
    SystemTime::from(time.0)
}

/// The status being worked out and the actions decided so far: what every sub-planner reads
/// from the ones before it and writes to.
struct Draft<'a> {
    now: SystemTime,
    now_time: Time,
    generation: Option<i64>,
    previous: &'a ClusterAuditStatus,
    status: ClusterAuditStatus,
    actions: Vec<Action>,
    /// The full hash of the revision the spec asks for (none with auditing off).
    desired_hash: Option<String>,
}

impl<'a> Draft<'a> {
    fn new(now: SystemTime, generation: Option<i64>, previous: &'a ClusterAuditStatus) -> Self {
        let mut status = previous.clone();
        status.observed_generation = generation;
        Draft {
            now,
            now_time: to_time(now),
            generation,
            previous,
            status,
            actions: Vec::new(),
            desired_hash: None,
        }
    }

    fn event(&mut self, warning: bool, reason: &'static str, note: String) {
        self.actions.push(Action::Publish(Event {
            warning,
            reason,
            note,
        }));
    }

    fn set(&mut self, observed: Observed<'_>) {
        conditions::set(
            &mut self.status.conditions,
            observed,
            self.generation,
            &self.now_time,
        );
    }

    /// Whether the last status already said this, so that a lasting problem is announced once.
    fn previously(&self, type_: &str, reason: &str) -> bool {
        self.previous
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason)
    }
}

pub fn plan(inputs: Inputs<'_>) -> Vec<Action> {
    let Inputs {
        now,
        generation,
        previous,
        desired,
        sink,
        delete_on_disable,
        guard,
        reports,
        force_rollout,
        policy_change,
        enforced_policy_hash,
    } = inputs;
    let mut draft = Draft::new(now, generation, previous);
    let mut requeue_after = IDLE_REQUEUE;
    let desired_name = policy::plan(&mut draft, desired);
    policy::enforcement(&mut draft, policy_change, enforced_policy_hash);
    if let Some(desired_name) = &desired_name {
        let blocked = sink::plan(&mut draft, sink, desired_name);
        let release = release::plan(
            &mut draft,
            desired_name,
            blocked.is_some(),
            &guard,
            force_rollout,
        );
        let nodes = nodes::plan(&mut draft, reports);
        readiness::plan(
            &mut draft,
            desired_name,
            blocked.as_ref(),
            release.held.as_deref(),
            &nodes,
        );
        requeue_after = release.requeue_after;
        if nodes.progressing {
            requeue_after = requeue_after.min(ACTIVE_REQUEUE);
        }
    }
    let Draft {
        mut status,
        mut actions,
        ..
    } = draft;
    actions.extend(sink::cleanup(&mut status, delete_on_disable));
    let collect = release::collect(&status, desired_name.as_deref());
    actions.push(Action::WriteStatus(Box::new(status)));
    actions.push(collect);
    actions.push(Action::RequeueAfter(requeue_after));
    actions
}

/// Fixtures and a reading of the actions for the tests of every sub-planner.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::conditions::READY;
    use clusteraudit_core::{api::CreatedBySink, rollout::revision::ORIGINAL};

    /// A plan's actions, read back the way the tests ask about them.
    pub struct Plan {
        pub status: ClusterAuditStatus,
        pub events: Vec<Event>,
        pub requeue_after: Duration,
        pub released: bool,
        pub throttled: bool,
        pub deleted_sink: Option<SinkStatus>,
        pub in_use: Vec<String>,
        pub actions: Vec<Action>,
    }

    pub fn read(actions: Vec<Action>) -> Plan {
        let mut status = None;
        let mut events = Vec::new();
        let mut requeue_after = None;
        let (mut released, mut throttled) = (false, false);
        let mut deleted_sink = None;
        let mut in_use = None;
        for action in &actions {
            match action {
                Action::Publish(event) => events.push(event.clone()),
                Action::Count(Tally::RolloutStarted) => released = true,
                Action::Count(Tally::Throttled) => throttled = true,
                Action::DeleteSink { sink, .. } => deleted_sink = Some(sink.clone()),
                Action::WriteStatus(s) => status = Some(ClusterAuditStatus::clone(s)),
                Action::CollectRevisions { in_use: names, .. } => in_use = Some(names.clone()),
                Action::RequeueAfter(after) => requeue_after = Some(*after),
                Action::SetFinalizer(_) | Action::AwaitChange => {
                    panic!("a plan does not decide {action:?}")
                }
            }
        }
        assert!(
            matches!(actions.last(), Some(Action::RequeueAfter(_))),
            "a plan ends with when to look again: {actions:?}"
        );
        Plan {
            status: status.expect("a plan writes the status"),
            events,
            requeue_after: requeue_after.unwrap(),
            released,
            throttled,
            deleted_sink,
            in_use: in_use.expect("a plan collects old revisions"),
            actions,
        }
    }

    pub fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    pub fn guard() -> GuardConfig {
        GuardConfig {
            settle_time: Duration::from_secs(30),
            min_restart_interval: Duration::from_secs(300),
            min_toggle_interval: Duration::from_secs(600),
            max_restarts_per_hour: 3,
        }
    }

    pub fn sink_status() -> SinkStatus {
        SinkStatus {
            logset_id: Some("ls-1".into()),
            topic_id: Some("tp-1".into()),
            created: CreatedBySink {
                logset: true,
                topic: true,
            },
            routes: Vec::new(),
        }
    }

    pub fn sink() -> Sink {
        Sink::Ready(sink_status())
    }

    pub fn rev(name: &str) -> Desired {
        Desired::Revision {
            name: name.into(),
            policy_hash: "0123456789abcdef".into(),
            hash: format!("{name}-full-sha256"),
        }
    }

    pub fn report(node: &str, current: &str) -> NodeReport {
        NodeReport {
            node: node.into(),
            current: current.into(),
            ..NodeReport::default()
        }
    }

    pub fn inputs<'a>(
        now: SystemTime,
        previous: &'a ClusterAuditStatus,
        desired: Desired,
        reports: &'a [NodeReport],
    ) -> Inputs<'a> {
        Inputs {
            now,
            generation: Some(1),
            previous,
            desired,
            sink: sink(),
            delete_on_disable: false,
            guard: guard(),
            reports,
            force_rollout: None,
            policy_change: PolicyChange::NotCompared,
            enforced_policy_hash: None,
        }
    }

    pub fn run(
        now: SystemTime,
        previous: &ClusterAuditStatus,
        desired: Desired,
        reports: &[NodeReport],
    ) -> Plan {
        read(plan(inputs(now, previous, desired, reports)))
    }

    /// What a status is read from: a plan, or a status on its own.
    pub trait Statused {
        fn status(&self) -> &ClusterAuditStatus;
    }

    impl Statused for Plan {
        fn status(&self) -> &ClusterAuditStatus {
            &self.status
        }
    }

    impl Statused for ClusterAuditStatus {
        fn status(&self) -> &ClusterAuditStatus {
            self
        }
    }

    pub fn condition<'a>(of: &'a impl Statused, type_: &str) -> (&'a str, &'a str) {
        let c = of
            .status()
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    pub fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
    }

    /// The reasons of the Events among `actions`.
    pub fn published(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(event) => Some(event.reason),
                _ => None,
            })
            .collect()
    }

    /// A status with `name` rolled out to `nodes`, the rollout started at `at_seconds + 31`.
    pub fn rolled_out(
        name: &str,
        at_seconds: u64,
        nodes: &[&str],
    ) -> (ClusterAuditStatus, Vec<NodeReport>) {
        let reports: Vec<NodeReport> = nodes.iter().map(|n| report(n, ORIGINAL)).collect();
        let first = run(
            at(at_seconds),
            &ClusterAuditStatus::default(),
            rev(name),
            &reports,
        );
        let second = run(at(at_seconds + 31), &first.status, rev(name), &reports);
        let reports: Vec<NodeReport> = nodes.iter().map(|n| report(n, name)).collect();
        let done = run(at(at_seconds + 60), &second.status, rev(name), &reports);
        assert_eq!(condition(&done, READY), ("True", "AuditingEnabled"));
        (done.status, reports)
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};
    use crate::conditions::{READY, ROLLOUT_PROGRESSING, ROLLOUT_THROTTLED};
    use clusteraudit_core::rollout::revision::ORIGINAL;

    #[test]
    fn the_full_hash_of_what_the_nodes_are_given_is_recorded_and_follows_the_release() {
        let hash = |plan: &Plan| {
            plan.status
                .revision
                .as_ref()
                .and_then(|r| r.latest_hash.clone())
        };
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        assert_eq!(
            status.revision.as_ref().unwrap().latest_hash.as_deref(),
            Some("rev-1-full-sha256")
        );
        // Held back by the guard: the nodes keep rev-1, and its hash.
        let held = run(at(100), &status, rev("rev-2"), &reports);
        assert!(held.throttled);
        assert_eq!(hash(&held).as_deref(), Some("rev-1-full-sha256"));
        let released = run(at(500), &held.status, rev("rev-2"), &reports);
        assert!(released.released);
        assert_eq!(hash(&released).as_deref(), Some("rev-2-full-sha256"));
        // A status written before hashes were recorded gets the hash of what it released.
        let mut unhashed = released.status.clone();
        unhashed.revision.as_mut().unwrap().latest_hash = None;
        let filled = run(at(510), &unhashed, rev("rev-2"), &reports);
        assert_eq!(hash(&filled).as_deref(), Some("rev-2-full-sha256"));
        // Auditing off: no revision, no hash.
        let off = run(at(5000), &filled.status, Desired::Off, &reports);
        let off = run(at(5031), &off.status, Desired::Off, &reports);
        assert_eq!(
            off.status.revision.as_ref().unwrap().latest.as_deref(),
            Some(ORIGINAL)
        );
        assert_eq!(hash(&off), None);
    }

    #[test]
    fn a_first_revision_settles_then_rolls_out_and_completes() {
        let unaudited = [report("a", ORIGINAL), report("b", ORIGINAL)];
        let first = run(
            at(0),
            &ClusterAuditStatus::default(),
            rev("rev-1"),
            &unaudited,
        );
        assert!(first.throttled && !first.released);
        assert_eq!(condition(&first, ROLLOUT_THROTTLED), ("True", "Settling"));
        assert_eq!(condition(&first, READY), ("False", "RolloutPending"));
        assert_eq!(first.requeue_after, Duration::from_millis(30_500));
        assert!(reasons(&first).contains(&"RevisionCreated"));
        assert!(reasons(&first).contains(&"SinkCreated"));

        let second = run(at(31), &first.status, rev("rev-1"), &unaudited);
        assert!(second.released);
        assert_eq!(
            second.status.revision.as_ref().unwrap().latest.as_deref(),
            Some("rev-1")
        );
        assert_eq!(
            condition(&second, ROLLOUT_PROGRESSING),
            ("True", "RollingOut")
        );
        assert_eq!(
            condition(&second, ROLLOUT_THROTTLED),
            ("False", "NotThrottled")
        );
        assert_eq!(second.status.last_restart_time, Some(to_time(at(31))));
        assert!(reasons(&second).contains(&"RolloutStarted"));
        assert!(!reasons(&second).contains(&"RevisionCreated"));

        let halfway = run(
            at(40),
            &second.status,
            rev("rev-1"),
            &[report("a", "rev-1"), report("b", ORIGINAL)],
        );
        assert!(!halfway.released);
        assert_eq!(reasons(&halfway), ["NodeUpdated"]);
        assert_eq!(condition(&halfway, READY), ("False", "RollingOut"));
        let nodes = &halfway.status.revision.as_ref().unwrap().nodes;
        assert_eq!(nodes[1].target.as_deref(), Some("rev-1"));

        let done = run(
            at(50),
            &halfway.status,
            rev("rev-1"),
            &[report("a", "rev-1"), report("b", "rev-1")],
        );
        assert_eq!(reasons(&done), ["NodeUpdated", "RolloutComplete"]);
        assert_eq!(condition(&done, READY), ("True", "AuditingEnabled"));
        assert_eq!(
            condition(&done, ROLLOUT_PROGRESSING),
            ("False", "RolloutComplete")
        );
        assert_eq!(done.requeue_after, IDLE_REQUEUE);
        // The Ready condition moved to True once; ROLLOUT_THROTTLED went back to False when released.
        let ready = done
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(ready.last_transition_time, to_time(at(50)));
    }

    #[test]
    fn disabling_waits_for_the_toggle_interval_and_ends_on_original_manifests() {
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        let off = read(plan(Inputs {
            generation: Some(2),
            sink: Sink::NotChecked,
            ..inputs(at(400), &status, Desired::Off, &reports)
        }));
        // Switched on at 31: minToggleInterval opens at 631.
        assert_eq!(off.status.next_restart_allowed_at, Some(to_time(at(631))));
        assert_eq!(
            condition(&off, ROLLOUT_THROTTLED),
            ("True", "MinToggleInterval")
        );
        let run_off = |now, previous: &ClusterAuditStatus, reports: &[NodeReport]| {
            read(plan(Inputs {
                generation: Some(2),
                sink: Sink::NotChecked,
                ..inputs(now, previous, Desired::Off, reports)
            }))
        };
        let released = run_off(at(631), &off.status, &reports);
        assert!(released.released);
        assert!(!disabled_everywhere(&released.status));
        let done = run_off(at(700), &released.status, &[report("a", ORIGINAL)]);
        assert_eq!(condition(&done, READY), ("True", "AuditingDisabled"));
        assert!(disabled_everywhere(&done.status));
        assert_eq!(done.status.policy_hash, None);
    }

    #[test]
    fn the_actions_end_with_the_sink_the_status_the_revisions_and_when_to_look_again() {
        let (status, _) = rolled_out("rev-1", 0, &["a"]);
        let mut off = status.clone();
        let revision = off.revision.as_mut().unwrap();
        revision.latest = Some(ORIGINAL.into());
        revision.desired = Some(ORIGINAL.into());
        let plan = read(plan(Inputs {
            sink: Sink::NotChecked,
            delete_on_disable: true,
            ..inputs(at(900), &off, Desired::Off, &[report("a", ORIGINAL)])
        }));
        let tail: Vec<_> = plan.actions.iter().rev().take(4).rev().collect();
        assert!(matches!(
            tail[..],
            [
                Action::DeleteSink { announce: true, .. },
                Action::WriteStatus(_),
                Action::CollectRevisions { .. },
                Action::RequeueAfter(_),
            ]
        ));
        assert_eq!(plan.deleted_sink, status.sink);
        assert_eq!(
            plan.status.sink, None,
            "the status forgets the deleted sink"
        );
        assert_eq!(plan.in_use, [ORIGINAL], "rev-1 is no longer in use");
    }
}
