//! Releasing the revision the spec asks for to the nodes, through the restart guard, and
//! retiring the revisions nothing refers to any more.

use std::time::Duration;

use super::{
    ACTIVE_REQUEUE, Action, Draft, IDLE_REQUEUE, Tally, from_time,
    guard::{self, Decision, GuardConfig, History},
    to_time,
};
use crate::conditions::{Observed, ROLLOUT_THROTTLED};
use clusteraudit_core::{api::ClusterAuditStatus, rollout::revision::ORIGINAL};

/// How many revision Secrets beyond those in use are kept (to see what changed, and to roll back
/// by hand).
const KEPT_REVISIONS: usize = 3;
const HOUR: Duration = Duration::from_secs(3600);

pub(super) struct Outcome {
    /// What a held-back rollout waits for.
    pub held: Option<String>,
    pub requeue_after: Duration,
}

/// Releases `desired_name` when it is not what the nodes were last given, the sink does not
/// block it and the guard lets it through. A new value of the force-rollout annotation lets one
/// release past the guard, and is remembered so that it does so once.
pub(super) fn plan(
    draft: &mut Draft<'_>,
    desired_name: &str,
    sink_blocks: bool,
    config: &GuardConfig,
    force_rollout: Option<&str>,
) -> Outcome {
    let now = draft.now;
    let now_time = draft.now_time.clone();
    let mut guard_status = draft.status.guard.take().unwrap_or_default();
    guard_status.restarts.retain(|t| from_time(t) + HOUR > now);
    let forced = force_rollout.is_some_and(|v| guard_status.force_rollout.as_deref() != Some(v));
    if forced {
        guard_status.force_rollout = force_rollout.map(str::to_string);
    }
    let mut revision = draft.status.revision.take().unwrap_or_default();

    let running_original = revision.latest.as_deref().is_none_or(|l| l == ORIGINAL);
    let pending = match &revision.latest {
        Some(latest) => *latest != desired_name,
        None => desired_name != ORIGINAL,
    };
    let mut outcome = Outcome {
        held: None,
        requeue_after: IDLE_REQUEUE,
    };
    if pending && !sink_blocks {
        let toggles = (desired_name == ORIGINAL) != running_original;
        let history = History {
            last_change: guard_status.desired_since.as_ref().map(from_time),
            restarts: guard_status.restarts.iter().map(from_time).collect(),
            last_toggle: guard_status.last_toggle_time.as_ref().map(from_time),
        };
        match guard::decide(now, config, &history, toggles, forced) {
            Decision::Proceed => {
                draft.actions.push(Action::Count(Tally::RolloutStarted));
                if forced {
                    draft.event(
                        false,
                        "ForcedRollout",
                        format!(
                            "the force-rollout annotation ({}) let {desired_name} past the restart guard",
                            force_rollout.unwrap_or_default()
                        ),
                    );
                }
                draft.event(
                    false,
                    "RolloutStarted",
                    if desired_name == ORIGINAL {
                        "turning auditing off: restoring each node's original manifest, one node at a time".into()
                    } else {
                        format!("rolling out {desired_name}, one node at a time")
                    },
                );
                revision.latest = Some(desired_name.to_string());
                guard_status.restarts.push(now_time.clone());
                if toggles {
                    guard_status.last_toggle_time = Some(now_time.clone());
                }
                draft.status.last_restart_time = Some(now_time);
                draft.status.next_restart_allowed_at = None;
                outcome.requeue_after = ACTIVE_REQUEUE;
            }
            Decision::Hold { until, reason } => {
                draft.actions.push(Action::Count(Tally::Throttled));
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
                if draft.status.next_restart_allowed_at.as_ref() != Some(&until_time) {
                    draft.event(false, "RolloutThrottled", message.clone());
                }
                draft.set(Observed {
                    type_: ROLLOUT_THROTTLED,
                    status: true,
                    reason: reason.as_reason(),
                    message: message.clone(),
                });
                draft.status.next_restart_allowed_at = Some(until_time);
                outcome.held = Some(message);
                outcome.requeue_after = until
                    .duration_since(now)
                    .unwrap_or_default()
                    .saturating_add(Duration::from_millis(500))
                    .min(IDLE_REQUEUE);
            }
        }
    }
    if outcome.held.is_none() {
        draft.set(Observed {
            type_: ROLLOUT_THROTTLED,
            status: false,
            reason: "NotThrottled",
            message: "no restart is held back".into(),
        });
        draft.status.next_restart_allowed_at = None;
    }
    // The agents check a revision's content against the full hash, which only the status
    // carries: recorded for what this operator built itself, and kept while a rollout of it
    // lasts. Also filled in for a revision released before hashes were recorded.
    if revision.latest.as_deref() == Some(desired_name) {
        revision.latest_hash = draft.desired_hash.clone();
    } else if revision.latest.as_deref().is_none_or(|l| l == ORIGINAL) {
        revision.latest_hash = None;
    }
    draft.status.guard = Some(guard_status);
    draft.status.revision = Some(revision);
    outcome
}

/// Revision Secrets in use: those the status names, the one just built for the spec (it may not
/// be named yet, an invalid spec building none), and never the original manifest's.
pub(super) fn collect(status: &ClusterAuditStatus, just_built: Option<&str>) -> Action {
    let mut in_use: Vec<String> = just_built
        .into_iter()
        .chain([ORIGINAL])
        .map(str::to_string)
        .collect();
    if let Some(revision) = &status.revision {
        in_use.extend(revision.latest.iter().cloned());
        in_use.extend(revision.desired.iter().cloned());
        for node in &revision.nodes {
            in_use.extend(node.current.iter().cloned());
            in_use.extend(node.target.iter().cloned());
        }
    }
    in_use.sort();
    in_use.dedup();
    Action::CollectRevisions {
        in_use,
        spare: KEPT_REVISIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::Inputs, super::plan as plan_all};
    use super::{super::testing::*, *};
    use crate::conditions::READY;

    /// A draft whose policy asked for `desired` at `asked`, looked at `now`.
    fn asked<'a>(previous: &'a ClusterAuditStatus, desired: &str, now: u64) -> Draft<'a> {
        let mut draft = Draft::new(at(now), Some(1), previous);
        let revision = draft.status.revision.get_or_insert_default();
        if revision.desired.as_deref() != Some(desired) {
            revision.desired = Some(desired.into());
            draft.status.guard.get_or_insert_default().desired_since = Some(to_time(at(0)));
        }
        draft
    }

    #[test]
    fn a_first_revision_waits_to_settle_then_goes() {
        let previous = ClusterAuditStatus::default();
        let mut draft = asked(&previous, "rev-1", 10);
        let outcome = plan(&mut draft, "rev-1", false, &guard(), None);
        assert_eq!(outcome.requeue_after, Duration::from_millis(20_500));
        assert!(outcome.held.unwrap().contains("settleTime"));
        assert_eq!(
            draft.actions[0],
            Action::Count(Tally::Throttled),
            "counted for the metrics"
        );
        assert_eq!(published(&draft.actions), ["RolloutThrottled"]);
        assert_eq!(draft.status.next_restart_allowed_at, Some(to_time(at(30))));

        // Looked at again before it opens: the same hold is not announced again.
        let previous = draft.status.clone();
        let mut again = Draft::new(at(20), Some(1), &previous);
        assert!(
            plan(&mut again, "rev-1", false, &guard(), None)
                .held
                .is_some()
        );
        assert!(published(&again.actions).is_empty());

        let previous = again.status.clone();
        let mut opens = Draft::new(at(30), Some(1), &previous);
        let outcome = plan(&mut opens, "rev-1", false, &guard(), None);
        assert_eq!(outcome.held, None);
        assert_eq!(outcome.requeue_after, ACTIVE_REQUEUE);
        assert_eq!(
            published(&opens.actions),
            ["RolloutStarted"],
            "{:?}",
            opens.actions
        );
        assert!(
            opens
                .actions
                .contains(&Action::Count(Tally::RolloutStarted))
        );
        assert_eq!(
            condition(&opens.status, ROLLOUT_THROTTLED),
            ("False", "NotThrottled")
        );
        let guard = opens.status.guard.as_ref().unwrap();
        assert_eq!(guard.restarts, [to_time(at(30))]);
        assert_eq!(guard.last_toggle_time, Some(to_time(at(30))));
        assert_eq!(
            opens.status.revision.unwrap().latest.as_deref(),
            Some("rev-1")
        );
    }

    #[test]
    fn nothing_is_released_while_the_sink_blocks_or_nothing_is_pending() {
        let previous = ClusterAuditStatus::default();
        let mut blocked = asked(&previous, "rev-1", 100);
        let outcome = plan(&mut blocked, "rev-1", true, &guard(), None);
        assert_eq!((outcome.held, outcome.requeue_after), (None, IDLE_REQUEUE));
        assert!(blocked.actions.is_empty());
        assert_eq!(blocked.status.revision.unwrap().latest, None);

        let (status, _) = rolled_out("rev-1", 0, &["a"]);
        let mut settled = Draft::new(at(5000), Some(1), &status);
        let outcome = plan(&mut settled, "rev-1", false, &guard(), None);
        assert_eq!((outcome.held, outcome.requeue_after), (None, IDLE_REQUEUE));
        assert!(settled.actions.is_empty());
        assert!(
            settled.status.guard.unwrap().restarts.is_empty(),
            "restarts older than an hour are forgotten"
        );
    }

    #[test]
    fn old_revisions_go_but_for_those_in_use() {
        let (mut status, _) = rolled_out("rev-1", 0, &["a", "b"]);
        let revision = status.revision.as_mut().unwrap();
        revision.desired = Some("rev-2".into());
        revision.nodes[1].current = Some("rev-0".into());
        assert_eq!(
            collect(&status, Some("rev-3")),
            Action::CollectRevisions {
                in_use: ["original", "rev-0", "rev-1", "rev-2", "rev-3"]
                    .map(String::from)
                    .to_vec(),
                spare: KEPT_REVISIONS
            }
        );
        assert_eq!(
            collect(&ClusterAuditStatus::default(), None),
            Action::CollectRevisions {
                in_use: vec![ORIGINAL.into()],
                spare: KEPT_REVISIONS
            }
        );
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
        let forced = read(plan_all(Inputs {
            generation: Some(2),
            force_rollout: Some("2026-11-26T10:00"),
            ..inputs(at(100), &status, rev("rev-2"), &reports)
        }));
        assert!(forced.released);
        assert!(reasons(&forced).contains(&"ForcedRollout"));
        let later = read(plan_all(Inputs {
            generation: Some(3),
            force_rollout: Some("2026-11-26T10:00"),
            ..inputs(at(120), &forced.status, rev("rev-3"), &reports)
        }));
        assert!(later.throttled, "the same annotation value works once");
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
                let next = read(plan_all(Inputs {
                    generation: Some(i as i64),
                    guard: guard.clone(),
                    ..inputs(at(step), &status, rev(&format!("rev-{i}")), &reports)
                }));
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
