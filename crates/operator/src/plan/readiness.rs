//! Ready: one condition summing up the others, naming the first thing that keeps auditing from
//! being as the spec asks.

use super::{Draft, nodes, sink::Blocked};
use crate::conditions::{Observed, READY};
use clusteraudit_core::rollout::revision::ORIGINAL;

pub(super) fn plan(
    draft: &mut Draft<'_>,
    desired_name: &str,
    blocked: Option<&Blocked>,
    held: Option<&str>,
    nodes: &nodes::Outcome,
) {
    let (ready, reason, message): (bool, &str, String) = if let Some(blocked) = blocked {
        (false, blocked.reason, blocked.message.clone())
    } else if let Some(fell_back) = &nodes.fell_back {
        (false, "RolloutFailed", fell_back.clone())
    } else if nodes.count == 0 {
        (
            false,
            "NoAgents",
            "no agent has reported a control-plane node yet".into(),
        )
    } else if let Some(message) = held {
        (false, "RolloutPending", message.to_string())
    } else if nodes.progressing {
        (
            false,
            "RollingOut",
            format!(
                "{}/{} nodes run {}",
                nodes.at_latest,
                nodes.count,
                nodes.latest.as_deref().unwrap_or_default()
            ),
        )
    } else if desired_name == ORIGINAL {
        (
            true,
            "AuditingDisabled",
            format!(
                "auditing is off on all {} nodes (original manifests)",
                nodes.count
            ),
        )
    } else {
        (
            true,
            "AuditingEnabled",
            format!("all {} nodes run {desired_name}", nodes.count),
        )
    };
    draft.set(Observed {
        type_: READY,
        status: ready,
        reason,
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::{super::Desired, super::testing::*, *};
    use clusteraudit_core::api::ClusterAuditStatus;

    fn nodes(count: usize, at_latest: usize) -> nodes::Outcome {
        nodes::Outcome {
            count,
            at_latest,
            latest: Some("rev-1".into()),
            progressing: at_latest < count,
            fell_back: None,
        }
    }

    fn ready(
        desired_name: &str,
        blocked: Option<&Blocked>,
        held: Option<&str>,
        nodes: &nodes::Outcome,
    ) -> (String, String, String) {
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        plan(&mut draft, desired_name, blocked, held, nodes);
        assert!(draft.actions.is_empty(), "Ready itself announces nothing");
        let c = &draft.status.conditions[0];
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn the_first_thing_in_the_way_is_named() {
        let blocked = Blocked {
            reason: "TopicNotFound",
            message: "no topic".into(),
        };
        let fell_back = nodes::Outcome {
            fell_back: Some("node a fell back".into()),
            ..nodes(2, 0)
        };
        let cases = [
            (
                ready("rev-1", Some(&blocked), Some("held"), &fell_back),
                "TopicNotFound",
            ),
            (
                ready("rev-1", None, Some("held"), &fell_back),
                "RolloutFailed",
            ),
            (ready("rev-1", None, Some("held"), &nodes(0, 0)), "NoAgents"),
            (
                ready("rev-1", None, Some("held"), &nodes(2, 1)),
                "RolloutPending",
            ),
            (ready("rev-1", None, None, &nodes(2, 1)), "RollingOut"),
            (
                ready(ORIGINAL, None, None, &nodes(2, 2)),
                "AuditingDisabled",
            ),
            (ready("rev-1", None, None, &nodes(2, 2)), "AuditingEnabled"),
        ];
        for ((status, reason, _), expected) in &cases {
            assert_eq!(reason, expected);
            assert_eq!(
                status,
                if reason.starts_with("Auditing") {
                    "True"
                } else {
                    "False"
                }
            );
        }
        assert_eq!(cases[4].0.2, "1/2 nodes run rev-1");
        assert_eq!(cases[6].0.2, "all 2 nodes run rev-1");
    }

    #[test]
    fn without_agents_nothing_is_ready() {
        let plan = run(at(0), &ClusterAuditStatus::default(), Desired::Off, &[]);
        assert_eq!(condition(&plan, READY), ("False", "NoAgents"));
        assert!(!plan.released);
    }
}
