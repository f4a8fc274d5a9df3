//! What a reconcile concludes, as pure code: from the spec, the last status, the revision the spec
//! asks for, the sink's state and the nodes' reports, the next status, the Events to publish and
//! when to look again. The IO around it (reconcile.rs) gathers the inputs and writes the outputs,
//! so every rollout decision is unit-tested here on a fake clock.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    conditions::{self, DEGRADED, Observed, POLICY_RENDERED, READY, ROLLOUT_PROGRESSING},
    conditions::{ROLLOUT_THROTTLED, SINK_READY},
    guard::{self, Decision, GuardConfig, History},
};
use clusteraudit_core::{
    api::{ClusterAuditStatus, NodeRevisionStatus, SinkStatus},
    rollout::{objects::NodeReport, revision::ORIGINAL},
};

/// What the spec asks of the kube-apiservers, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Auditing with this revision.
    Revision { name: String, policy_hash: String },
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
    Failed {
        reason: &'static str,
        message: String,
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
    pub guard: GuardConfig,
    pub reports: &'a [NodeReport],
    /// The force-rollout annotation's value, if set.
    pub force_rollout: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: ClusterAuditStatus,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Duration,
    /// A rollout was released to the nodes by this reconcile.
    pub released: bool,
    /// The guard held a rollout back in this reconcile.
    pub throttled: bool,
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

pub fn plan(inputs: Inputs<'_>) -> Plan {
    let Inputs {
        now,
        generation,
        previous,
        desired,
        sink,
        guard: guard_config,
        reports,
        force_rollout,
    } = inputs;
    let now_time = to_time(now);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let mut events = Vec::new();
    let mut event = |warning: bool, reason: &'static str, note: String| {
        events.push(PlannedEvent {
            warning,
            reason,
            note,
        })
    };
    let set = |status: &mut ClusterAuditStatus, observed: Observed<'_>| {
        conditions::set(&mut status.conditions, observed, generation, &now_time)
    };

    let (desired_name, policy_hash) = match desired {
        Desired::Invalid { message } => {
            if !is_reason(previous, READY, "InvalidSpec") {
                event(true, "InvalidSpec", message.clone());
            }
            for type_ in [READY, POLICY_RENDERED] {
                set(
                    &mut status,
                    Observed {
                        type_,
                        status: false,
                        reason: "InvalidSpec",
                        message: message.clone(),
                    },
                );
            }
            return Plan {
                status,
                events,
                requeue_after: IDLE_REQUEUE,
                released: false,
                throttled: false,
            };
        }
        Desired::Revision { name, policy_hash } => (name, Some(policy_hash)),
        Desired::Off => (ORIGINAL.to_string(), None),
    };
    set(
        &mut status,
        Observed {
            type_: POLICY_RENDERED,
            status: true,
            reason: if policy_hash.is_some() {
                "Rendered"
            } else {
                "AuditingDisabled"
            },
            message: match &policy_hash {
                Some(hash) => format!(
                    "policy {} rendered as revision {desired_name}",
                    &hash[..12.min(hash.len())]
                ),
                None => "auditing is off; no policy is rendered".into(),
            },
        },
    );
    status.policy_hash = policy_hash;

    let mut guard_status = status.guard.take().unwrap_or_default();
    guard_status
        .restarts
        .retain(|t| from_time(t) + Duration::from_secs(3600) > now);
    let mut revision = status.revision.take().unwrap_or_default();
    if revision.desired.as_deref() != Some(desired_name.as_str()) {
        guard_status.desired_since = Some(now_time.clone());
        if desired_name != ORIGINAL {
            event(
                false,
                "RevisionCreated",
                format!("the spec asks for revision {desired_name}"),
            );
        }
        revision.desired = Some(desired_name.clone());
    }
    let forced = force_rollout.is_some_and(|v| guard_status.force_rollout.as_deref() != Some(v));
    if forced {
        guard_status.force_rollout = force_rollout.map(str::to_string);
    }

    // The sink must be there before the kube-apiserver is pointed at it; turning auditing off
    // never waits for it.
    let sink_blocks = match &sink {
        Sink::Ready(sink_status) => {
            set(
                &mut status,
                Observed {
                    type_: SINK_READY,
                    status: true,
                    reason: "SinkReady",
                    message: format!(
                        "events go to topic {} in logset {}",
                        sink_status.topic_id.as_deref().unwrap_or("?"),
                        sink_status.logset_id.as_deref().unwrap_or("?")
                    ),
                },
            );
            if let Some(previous_sink) = &previous.sink {
                let created = &sink_status.created;
                if created.topic && !previous_sink.created.topic {
                    event(false, "SinkCreated", "created the topic".into());
                }
                if created.logset && !previous_sink.created.logset {
                    event(false, "SinkCreated", "created the logset".into());
                }
            } else if sink_status.created.logset || sink_status.created.topic {
                event(
                    false,
                    "SinkCreated",
                    format!(
                        "created {}",
                        match (sink_status.created.logset, sink_status.created.topic) {
                            (true, true) => "the logset and the topic",
                            (true, false) => "the logset",
                            _ => "the topic",
                        }
                    ),
                );
            }
            status.sink = Some(sink_status.clone());
            false
        }
        Sink::Failed { reason, message } => {
            if !is_reason(previous, SINK_READY, reason) {
                event(true, reason, message.clone());
            }
            set(
                &mut status,
                Observed {
                    type_: SINK_READY,
                    status: false,
                    reason,
                    message: message.clone(),
                },
            );
            desired_name != ORIGINAL
        }
        Sink::NotChecked => {
            set(
                &mut status,
                Observed {
                    type_: SINK_READY,
                    status: false,
                    reason: "AuditingDisabled",
                    message: "auditing is off; the sink is not checked".into(),
                },
            );
            false
        }
    };

    // Releasing the desired revision to the nodes, through the guard.
    let latest_before = revision.latest.clone();
    let running_original = latest_before.as_deref().is_none_or(|l| l == ORIGINAL);
    let pending = match &latest_before {
        Some(latest) => *latest != desired_name,
        None => desired_name != ORIGINAL,
    };
    let mut released = false;
    let mut throttled = false;
    let mut requeue_after = IDLE_REQUEUE;
    let mut hold_message = None;
    if pending && !sink_blocks {
        let toggles = (desired_name == ORIGINAL) != running_original;
        let history = History {
            last_change: guard_status.desired_since.as_ref().map(from_time),
            restarts: guard_status.restarts.iter().map(from_time).collect(),
            last_toggle: guard_status.last_toggle_time.as_ref().map(from_time),
        };
        match guard::decide(now, &guard_config, &history, toggles, forced) {
            Decision::Proceed => {
                released = true;
                if forced {
                    event(
                        false,
                        "ForcedRollout",
                        format!(
                            "the force-rollout annotation ({}) let {desired_name} past the restart guard",
                            force_rollout.unwrap_or_default()
                        ),
                    );
                }
                event(
                    false,
                    "RolloutStarted",
                    if desired_name == ORIGINAL {
                        "turning auditing off: restoring each node's original manifest, one node at a time".into()
                    } else {
                        format!("rolling out {desired_name}, one node at a time")
                    },
                );
                revision.latest = Some(desired_name.clone());
                guard_status.restarts.push(now_time.clone());
                if toggles {
                    guard_status.last_toggle_time = Some(now_time.clone());
                }
                status.last_restart_time = Some(now_time.clone());
                status.next_restart_allowed_at = None;
                requeue_after = ACTIVE_REQUEUE;
            }
            Decision::Hold { until, reason } => {
                throttled = true;
                let until_time = to_time(until);
                let message = format!(
                    "{desired_name} waits until {} ({})",
                    until_time.0,
                    match reason {
                        guard::HoldReason::Settling =>
                            "settleTime: coalescing edits made close together",
                        guard::HoldReason::MinRestartInterval =>
                            "minRestartInterval since the last restart",
                        guard::HoldReason::MinToggleInterval =>
                            "minToggleInterval since auditing was last switched",
                        guard::HoldReason::HourlyBudget => "maxRestartsPerHour is spent",
                    }
                );
                if status.next_restart_allowed_at.as_ref() != Some(&until_time) {
                    event(false, "RolloutThrottled", message.clone());
                }
                set(
                    &mut status,
                    Observed {
                        type_: ROLLOUT_THROTTLED,
                        status: true,
                        reason: reason.as_reason(),
                        message: message.clone(),
                    },
                );
                status.next_restart_allowed_at = Some(until_time);
                hold_message = Some(message);
                requeue_after = until
                    .duration_since(now)
                    .unwrap_or_default()
                    .saturating_add(Duration::from_millis(500))
                    .min(IDLE_REQUEUE);
            }
        }
    }
    if hold_message.is_none() {
        set(
            &mut status,
            Observed {
                type_: ROLLOUT_THROTTLED,
                status: false,
                reason: "NotThrottled",
                message: "no restart is held back".into(),
            },
        );
        status.next_restart_allowed_at = None;
    }
    status.guard = Some(guard_status);

    // Where the nodes stand.
    let latest = revision.latest.clone();
    let mut nodes: Vec<NodeRevisionStatus> = reports
        .iter()
        .map(|report| NodeRevisionStatus {
            name: report.node.clone(),
            current: Some(report.current.clone()),
            target: latest.clone(),
            last_failed: report.last_failed.clone(),
            reason: report.reason.clone(),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in &nodes {
        let before = previous
            .revision
            .as_ref()
            .and_then(|r| r.nodes.iter().find(|n| n.name == node.name));
        if node.current.is_some()
            && node.current == latest
            && before.is_some_and(|b| b.current != node.current)
        {
            event(
                false,
                "NodeUpdated",
                format!(
                    "node {} runs {}",
                    node.name,
                    node.current.as_deref().unwrap_or_default()
                ),
            );
        }
        if node.last_failed.is_some() && before.is_none_or(|b| b.last_failed != node.last_failed) {
            event(
                true,
                "NodeFellBack",
                format!(
                    "node {} could not run {} and is back on its last known good manifest: {}",
                    node.name,
                    node.last_failed.as_deref().unwrap_or_default(),
                    node.reason.as_deref().unwrap_or("no reason given")
                ),
            );
        }
    }
    let failed: Vec<&NodeRevisionStatus> = nodes
        .iter()
        .filter(|n| latest.is_some() && n.last_failed == latest && n.current != latest)
        .collect();
    let at_latest = nodes
        .iter()
        .filter(|n| latest.is_some() && n.current == latest)
        .count();
    let progressing = latest.is_some() && failed.is_empty() && at_latest < nodes.len();
    let was_progressing = conditions::is_true(&previous.conditions, ROLLOUT_PROGRESSING);
    if let Some(latest) = &latest {
        if was_progressing && !progressing && failed.is_empty() && !nodes.is_empty() {
            event(
                false,
                "RolloutComplete",
                format!("all {} nodes run {latest}", nodes.len()),
            );
        }
        if !failed.is_empty() && !conditions::is_true(&previous.conditions, DEGRADED) {
            event(
                true,
                "RolloutStopped",
                format!("{latest} is not rolled out further: a node fell back"),
            );
        }
    }
    set(
        &mut status,
        Observed {
            type_: ROLLOUT_PROGRESSING,
            status: progressing,
            reason: if progressing {
                "RollingOut"
            } else if !failed.is_empty() {
                "RolloutStopped"
            } else {
                "RolloutComplete"
            },
            message: match &latest {
                Some(latest) => format!("{at_latest}/{} nodes run {latest}", nodes.len()),
                None => "nothing has been rolled out".into(),
            },
        },
    );
    let degraded_message = failed
        .iter()
        .map(|n| {
            format!(
                "node {} fell back from {}: {}",
                n.name,
                n.last_failed.as_deref().unwrap_or_default(),
                n.reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    set(
        &mut status,
        Observed {
            type_: DEGRADED,
            status: !failed.is_empty(),
            reason: if failed.is_empty() {
                "AsExpected"
            } else {
                "NodeFellBack"
            },
            message: if failed.is_empty() {
                "no node has fallen back".into()
            } else {
                format!("{degraded_message}; the rollout is stopped until the spec changes")
            },
        },
    );
    if progressing {
        requeue_after = requeue_after.min(ACTIVE_REQUEUE);
    }

    let (ready, reason, message): (bool, &str, String) = if let Sink::Failed { reason, message } =
        &sink
        && sink_blocks
    {
        (false, reason, message.clone())
    } else if !failed.is_empty() {
        (false, "RolloutFailed", degraded_message)
    } else if nodes.is_empty() {
        (
            false,
            "NoAgents",
            "no agent has reported a control-plane node yet".into(),
        )
    } else if let Some(message) = hold_message {
        (false, "RolloutPending", message)
    } else if progressing {
        (
            false,
            "RollingOut",
            format!(
                "{at_latest}/{} nodes run {}",
                nodes.len(),
                latest.as_deref().unwrap_or_default()
            ),
        )
    } else if desired_name == ORIGINAL {
        (
            true,
            "AuditingDisabled",
            format!(
                "auditing is off on all {} nodes (original manifests)",
                nodes.len()
            ),
        )
    } else {
        (
            true,
            "AuditingEnabled",
            format!("all {} nodes run {desired_name}", nodes.len()),
        )
    };
    set(
        &mut status,
        Observed {
            type_: READY,
            status: ready,
            reason,
            message,
        },
    );
    revision.nodes = nodes;
    status.revision = Some(revision);
    Plan {
        status,
        events,
        requeue_after,
        released,
        throttled,
    }
}

fn is_reason(status: &ClusterAuditStatus, type_: &str, reason: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.reason == reason)
}

/// Whether the nodes are all back on their original manifests, so a sink the operator created
/// may go (`deleteOnDisable`).
pub fn disabled_everywhere(status: &ClusterAuditStatus) -> bool {
    status.revision.as_ref().is_some_and(|r| {
        r.latest.as_deref() == Some(ORIGINAL)
            && r.desired.as_deref() == Some(ORIGINAL)
            && r.nodes
                .iter()
                .all(|n| n.current.as_deref() == Some(ORIGINAL))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::api::CreatedBySink;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn guard() -> GuardConfig {
        GuardConfig {
            settle_time: Duration::from_secs(30),
            min_restart_interval: Duration::from_secs(300),
            min_toggle_interval: Duration::from_secs(600),
            max_restarts_per_hour: 3,
        }
    }

    fn sink() -> Sink {
        Sink::Ready(SinkStatus {
            logset_id: Some("ls-1".into()),
            topic_id: Some("tp-1".into()),
            created: CreatedBySink {
                logset: true,
                topic: true,
            },
        })
    }

    fn rev(name: &str) -> Desired {
        Desired::Revision {
            name: name.into(),
            policy_hash: "0123456789abcdef".into(),
        }
    }

    fn report(node: &str, current: &str) -> NodeReport {
        NodeReport {
            node: node.into(),
            current: current.into(),
            ..NodeReport::default()
        }
    }

    fn run(
        now: SystemTime,
        previous: &ClusterAuditStatus,
        desired: Desired,
        reports: &[NodeReport],
    ) -> Plan {
        plan(Inputs {
            now,
            generation: Some(1),
            previous,
            desired,
            sink: sink(),
            guard: guard(),
            reports,
            force_rollout: None,
        })
    }

    fn condition<'a>(plan: &'a Plan, type_: &str) -> (&'a str, &'a str) {
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
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

    fn rolled_out(
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

    #[test]
    fn edits_within_the_restart_interval_wait_and_the_latest_spec_wins() {
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        let edit = run(at(100), &status, rev("rev-2"), &reports);
        assert!(edit.throttled);
        // rollout started at 31: minRestartInterval opens at 331.
        assert_eq!(edit.status.next_restart_allowed_at, Some(to_time(at(331))));
        assert_eq!(
            condition(&edit, ROLLOUT_THROTTLED),
            ("True", "MinRestartInterval")
        );
        assert_eq!(condition(&edit, READY), ("False", "RolloutPending"));
        assert!(reasons(&edit).contains(&"RolloutThrottled"));
        let again = run(at(200), &edit.status, rev("rev-3"), &reports);
        assert!(again.throttled);
        let opens = run(at(331), &again.status, rev("rev-3"), &reports);
        assert!(opens.released);
        let revision = opens.status.revision.as_ref().unwrap();
        assert_eq!(revision.latest.as_deref(), Some("rev-3"));
        assert_eq!(revision.desired.as_deref(), Some("rev-3"));
        assert_eq!(opens.status.next_restart_allowed_at, None);
        assert_eq!(opens.status.guard.as_ref().unwrap().restarts.len(), 2);
    }

    #[test]
    fn the_force_annotation_skips_the_guard_once() {
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        let forced = plan(Inputs {
            now: at(100),
            generation: Some(2),
            previous: &status,
            desired: rev("rev-2"),
            sink: sink(),
            guard: guard(),
            reports: &reports,
            force_rollout: Some("2026-11-26T10:00"),
        });
        assert!(forced.released);
        assert!(reasons(&forced).contains(&"ForcedRollout"));
        let later = plan(Inputs {
            now: at(120),
            generation: Some(3),
            previous: &forced.status,
            desired: rev("rev-3"),
            sink: sink(),
            guard: guard(),
            reports: &reports,
            force_rollout: Some("2026-11-26T10:00"),
        });
        assert!(later.throttled, "the same annotation value works once");
    }

    #[test]
    fn a_node_that_falls_back_stops_the_rollout_until_the_spec_changes() {
        let (status, _) = rolled_out("rev-1", 0, &["a", "b"]);
        let released = run(
            at(400),
            &status,
            rev("rev-2"),
            &[report("a", "rev-1"), report("b", "rev-1")],
        );
        assert!(released.throttled, "settling first");
        let released = run(
            at(431),
            &released.status,
            rev("rev-2"),
            &[report("a", "rev-1"), report("b", "rev-1")],
        );
        assert!(released.released);
        let failed = [
            NodeReport {
                last_failed: Some("rev-2".into()),
                reason: Some("not ready within 40s".into()),
                ..report("a", "rev-1")
            },
            report("b", "rev-1"),
        ];
        let stopped = run(at(500), &released.status, rev("rev-2"), &failed);
        assert_eq!(condition(&stopped, DEGRADED), ("True", "NodeFellBack"));
        assert_eq!(condition(&stopped, READY), ("False", "RolloutFailed"));
        assert_eq!(
            condition(&stopped, ROLLOUT_PROGRESSING),
            ("False", "RolloutStopped")
        );
        let degraded = stopped
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert!(degraded.message.contains("node a") && degraded.message.contains("40s"));
        assert!(reasons(&stopped).contains(&"NodeFellBack"));
        assert!(reasons(&stopped).contains(&"RolloutStopped"));
        // A fixed spec is a new revision: it rolls out (after the guard) and clears Degraded.
        let fixed = run(at(800), &stopped.status, rev("rev-3"), &failed);
        let fixed = run(at(831), &fixed.status, rev("rev-3"), &failed);
        assert!(fixed.released);
        assert_eq!(condition(&fixed, DEGRADED), ("False", "AsExpected"));
    }

    #[test]
    fn disabling_waits_for_the_toggle_interval_and_ends_on_original_manifests() {
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        let off = plan(Inputs {
            now: at(400),
            generation: Some(2),
            previous: &status,
            desired: Desired::Off,
            sink: Sink::NotChecked,
            guard: guard(),
            reports: &reports,
            force_rollout: None,
        });
        // Switched on at 31: minToggleInterval opens at 631.
        assert_eq!(off.status.next_restart_allowed_at, Some(to_time(at(631))));
        assert_eq!(
            condition(&off, ROLLOUT_THROTTLED),
            ("True", "MinToggleInterval")
        );
        let run_off = |now, previous: &ClusterAuditStatus, reports: &[NodeReport]| {
            plan(Inputs {
                now,
                generation: Some(2),
                previous,
                desired: Desired::Off,
                sink: Sink::NotChecked,
                guard: guard(),
                reports,
                force_rollout: None,
            })
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
    fn an_invalid_spec_changes_nothing_but_its_conditions() {
        let (status, reports) = rolled_out("rev-1", 0, &["a"]);
        let invalid = run(
            at(500),
            &status,
            Desired::Invalid {
                message: "spec.policy.rules[0].nonResourceURLs: a rule cannot apply to both".into(),
            },
            &reports,
        );
        assert!(!invalid.released && !invalid.throttled);
        assert_eq!(condition(&invalid, READY), ("False", "InvalidSpec"));
        assert_eq!(
            condition(&invalid, POLICY_RENDERED),
            ("False", "InvalidSpec")
        );
        assert_eq!(invalid.status.revision, status.revision);
        assert_eq!(invalid.status.guard, status.guard);
        assert_eq!(reasons(&invalid), ["InvalidSpec"]);
        let again = run(
            at(600),
            &invalid.status,
            Desired::Invalid {
                message: "same".into(),
            },
            &reports,
        );
        assert!(
            again.events.is_empty(),
            "no Event storm for a spec still invalid"
        );
    }

    #[test]
    fn a_missing_sink_blocks_enabling_and_says_why() {
        let unaudited = [report("a", ORIGINAL)];
        let blocked = plan(Inputs {
            now: at(0),
            generation: Some(1),
            previous: &ClusterAuditStatus::default(),
            desired: rev("rev-1"),
            sink: Sink::Failed {
                reason: "LogsetNotFound",
                message: "no logset with id \"ls-9\"".into(),
            },
            guard: guard(),
            reports: &unaudited,
            force_rollout: None,
        });
        assert!(!blocked.released && !blocked.throttled);
        assert_eq!(condition(&blocked, SINK_READY), ("False", "LogsetNotFound"));
        assert_eq!(condition(&blocked, READY), ("False", "LogsetNotFound"));
        assert_eq!(blocked.status.revision.as_ref().unwrap().latest, None);
    }

    #[test]
    fn without_agents_nothing_is_ready() {
        let plan = run(at(0), &ClusterAuditStatus::default(), Desired::Off, &[]);
        assert_eq!(condition(&plan, READY), ("False", "NoAgents"));
        assert!(!plan.released);
    }

    #[test]
    fn the_hourly_budget_holds_the_fourth_rollout() {
        let mut guard = guard();
        guard.min_restart_interval = Duration::from_secs(60);
        guard.settle_time = Duration::from_secs(1);
        let reports = [report("a", ORIGINAL)];
        let mut status = ClusterAuditStatus::default();
        let mut started = 0;
        for (i, now) in [0u64, 70, 140, 210, 280].into_iter().enumerate() {
            for step in [now, now + 2] {
                let next = plan(Inputs {
                    now: at(step),
                    generation: Some(i as i64),
                    previous: &status,
                    desired: rev(&format!("rev-{i}")),
                    sink: sink(),
                    guard: guard.clone(),
                    reports: &reports,
                    force_rollout: None,
                });
                started += usize::from(next.released);
                status = next.status;
            }
        }
        assert_eq!(started, 3);
        assert_eq!(
            status
                .conditions
                .iter()
                .find(|c| c.type_ == ROLLOUT_THROTTLED)
                .unwrap()
                .reason,
            "HourlyRestartBudget"
        );
    }
}
