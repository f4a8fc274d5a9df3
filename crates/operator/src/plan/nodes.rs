//! Where the nodes stand against the revision last released to them: who moved, who fell back,
//! and whether the rollout is moving, done, or stopped until the spec changes.

use super::Draft;
use crate::conditions::{self, DEGRADED, Observed, ROLLOUT_PROGRESSING};
use clusteraudit_core::{api::NodeRevisionStatus, rollout::objects::NodeReport};

pub(super) struct Outcome {
    pub count: usize,
    /// How many nodes run the released revision.
    pub at_latest: usize,
    pub latest: Option<String>,
    pub progressing: bool,
    /// Which nodes fell back from the released revision, and why.
    pub fell_back: Option<String>,
}

pub(super) fn plan(draft: &mut Draft<'_>, reports: &[NodeReport]) -> Outcome {
    let previous = draft.previous;
    let latest = draft
        .status
        .revision
        .as_ref()
        .and_then(|r| r.latest.clone());
    let mut nodes: Vec<NodeRevisionStatus> = reports
        .iter()
        .map(|report| NodeRevisionStatus {
            name: report.node.clone(),
            current: Some(report.current.clone()),
            target: latest.clone(),
            last_failed: report.last_failed.clone(),
            reason: report.reason.clone(),
            refused: report.refused.clone(),
            refused_reason: report.refused_reason.clone(),
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
            draft.event(
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
            draft.event(
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
    for node in &nodes {
        let before = previous
            .revision
            .as_ref()
            .and_then(|r| r.nodes.iter().find(|n| n.name == node.name));
        if node.refused.is_some()
            && before.is_none_or(|b| {
                (&b.refused, &b.refused_reason) != (&node.refused, &node.refused_reason)
            })
        {
            draft.event(
                true,
                "RevisionRefused",
                format!(
                    "the agent of node {} refuses {}: {}",
                    node.name,
                    node.refused.as_deref().unwrap_or_default(),
                    node.refused_reason.as_deref().unwrap_or("no reason given")
                ),
            );
        }
    }
    // A node whose agent refuses the released revision stops the rollout like a fall back.
    let refused: Vec<&NodeRevisionStatus> = nodes
        .iter()
        .filter(|n| latest.is_some() && n.refused == latest && n.current != latest)
        .collect();
    let stopped_here_before = conditions::is_true(&previous.conditions, DEGRADED);
    let failed: Vec<&NodeRevisionStatus> = nodes
        .iter()
        .filter(|n| latest.is_some() && n.last_failed == latest && n.current != latest)
        .collect();
    let at_latest = nodes
        .iter()
        .filter(|n| latest.is_some() && n.current == latest)
        .count();
    let progressing =
        latest.is_some() && failed.is_empty() && refused.is_empty() && at_latest < nodes.len();
    let was_progressing = conditions::is_true(&previous.conditions, ROLLOUT_PROGRESSING);
    if let Some(latest) = &latest {
        if was_progressing
            && !progressing
            && failed.is_empty()
            && refused.is_empty()
            && !nodes.is_empty()
        {
            draft.event(
                false,
                "RolloutComplete",
                format!("all {} nodes run {latest}", nodes.len()),
            );
        }
        let stopped = !failed.is_empty() || !refused.is_empty();
        if stopped && !stopped_here_before {
            draft.event(
                true,
                "RolloutStopped",
                if failed.is_empty() {
                    format!("{latest} is not rolled out further: a node's agent refuses it")
                } else {
                    format!("{latest} is not rolled out further: a node fell back")
                },
            );
        }
    }
    draft.set(Observed {
        type_: ROLLOUT_PROGRESSING,
        status: progressing,
        reason: if progressing {
            "RollingOut"
        } else if !(failed.is_empty() && refused.is_empty()) {
            "RolloutStopped"
        } else {
            "RolloutComplete"
        },
        message: match &latest {
            Some(latest) => format!("{at_latest}/{} nodes run {latest}", nodes.len()),
            None => "nothing has been rolled out".into(),
        },
    });
    let fell_back = (!(failed.is_empty() && refused.is_empty())).then(|| {
        failed
            .iter()
            .map(|n| {
                format!(
                    "node {} fell back from {}: {}",
                    n.name,
                    n.last_failed.as_deref().unwrap_or_default(),
                    n.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .chain(refused.iter().map(|n| {
                format!(
                    "the agent of node {} refuses {}: {}",
                    n.name,
                    n.refused.as_deref().unwrap_or_default(),
                    n.refused_reason.as_deref().unwrap_or("no reason given")
                )
            }))
            .collect::<Vec<_>>()
            .join("; ")
    });
    draft.set(Observed {
        type_: DEGRADED,
        status: fell_back.is_some(),
        reason: if fell_back.is_none() {
            "AsExpected"
        } else if failed.is_empty() {
            "RevisionRefused"
        } else {
            "NodeFellBack"
        },
        message: match &fell_back {
            None => "no node has fallen back".into(),
            Some(message) => {
                format!("{message}; the rollout is stopped until the spec changes")
            }
        },
    });
    let count = nodes.len();
    draft.status.revision.get_or_insert_default().nodes = nodes;
    Outcome {
        count,
        at_latest,
        latest,
        progressing,
        fell_back,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use crate::conditions::READY;
    use clusteraudit_core::{api::ClusterAuditStatus, rollout::revision::ORIGINAL};

    /// A status whose rollout of rev-1 to nodes a and b has just started.
    fn released() -> ClusterAuditStatus {
        let unaudited = [report("a", ORIGINAL), report("b", ORIGINAL)];
        let first = run(
            at(0),
            &ClusterAuditStatus::default(),
            rev("rev-1"),
            &unaudited,
        );
        run(at(31), &first.status, rev("rev-1"), &unaudited).status
    }

    #[test]
    fn nodes_move_one_by_one_and_the_rollout_completes_once() {
        let previous = released();
        let mut draft = Draft::new(at(40), Some(1), &previous);
        let halfway = plan(&mut draft, &[report("b", ORIGINAL), report("a", "rev-1")]);
        assert!(halfway.progressing);
        assert_eq!((halfway.count, halfway.at_latest), (2, 1));
        assert_eq!(published(&draft.actions), ["NodeUpdated"]);
        let nodes = &draft.status.revision.as_ref().unwrap().nodes;
        assert_eq!(nodes[0].name, "a", "sorted by name");
        assert_eq!(nodes[1].target.as_deref(), Some("rev-1"));
        let progressing = condition(&draft.status, ROLLOUT_PROGRESSING);
        assert_eq!(progressing, ("True", "RollingOut"));

        let previous = draft.status.clone();
        let mut draft = Draft::new(at(50), Some(1), &previous);
        let both = [report("a", "rev-1"), report("b", "rev-1")];
        let done = plan(&mut draft, &both);
        assert!(!done.progressing && done.fell_back.is_none());
        assert_eq!(
            published(&draft.actions),
            ["NodeUpdated", "RolloutComplete"]
        );

        let previous = draft.status.clone();
        let mut draft = Draft::new(at(60), Some(1), &previous);
        plan(&mut draft, &both);
        assert!(draft.actions.is_empty(), "nothing moved");
    }

    #[test]
    fn a_node_whose_agent_refuses_the_revision_stops_the_rollout_and_says_why() {
        let previous = released();
        let refusing = [
            NodeReport {
                refused: Some("rev-1".into()),
                refused_reason: Some(
                    "cluster c sends to https://203.0.113.9/, not to the pinned webhook server"
                        .into(),
                ),
                ..report("a", ORIGINAL)
            },
            report("b", ORIGINAL),
        ];
        let mut draft = Draft::new(at(100), Some(1), &previous);
        let stopped = plan(&mut draft, &refusing);
        assert!(!stopped.progressing);
        assert_eq!(
            stopped.fell_back.as_deref(),
            Some(
                "the agent of node a refuses rev-1: cluster c sends to https://203.0.113.9/, not to the pinned webhook server"
            )
        );
        assert_eq!(
            published(&draft.actions),
            ["RevisionRefused", "RolloutStopped"]
        );
        assert_eq!(
            condition(&draft.status, DEGRADED),
            ("True", "RevisionRefused")
        );
        let nodes = &draft.status.revision.as_ref().unwrap().nodes;
        assert_eq!(nodes[0].refused.as_deref(), Some("rev-1"));
        assert!(
            nodes[0]
                .refused_reason
                .as_deref()
                .unwrap()
                .contains("203.0.113.9")
        );

        // Announced once; cleared once the agent takes it.
        let previous = draft.status.clone();
        let mut again = Draft::new(at(110), Some(1), &previous);
        plan(&mut again, &refusing);
        assert!(again.actions.is_empty());
        let previous = again.status.clone();
        let mut taken = Draft::new(at(120), Some(1), &previous);
        let moving = plan(&mut taken, &[report("a", "rev-1"), report("b", ORIGINAL)]);
        assert!(moving.progressing && moving.fell_back.is_none());
        assert_eq!(condition(&taken.status, DEGRADED), ("False", "AsExpected"));
    }

    #[test]
    fn a_node_that_falls_back_is_announced_once() {
        let previous = released();
        let failed = [
            NodeReport {
                last_failed: Some("rev-1".into()),
                reason: Some("not ready within 40s".into()),
                ..report("a", ORIGINAL)
            },
            report("b", ORIGINAL),
        ];
        let mut draft = Draft::new(at(100), Some(1), &previous);
        let stopped = plan(&mut draft, &failed);
        assert!(!stopped.progressing);
        assert_eq!(
            stopped.fell_back.as_deref(),
            Some("node a fell back from rev-1: not ready within 40s")
        );
        assert_eq!(
            published(&draft.actions),
            ["NodeFellBack", "RolloutStopped"]
        );
        assert_eq!(condition(&draft.status, DEGRADED), ("True", "NodeFellBack"));

        let previous = draft.status.clone();
        let mut again = Draft::new(at(110), Some(1), &previous);
        plan(&mut again, &failed);
        assert!(again.actions.is_empty());
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
}
