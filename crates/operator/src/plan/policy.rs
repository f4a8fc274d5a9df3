//! The policy: whether the spec could be rendered, and which revision it asks the nodes to run.
//! A new ask restarts the settle time, since edits made close together are one change.

use super::{Desired, Draft, PolicyChange};
use crate::conditions::{Observed, POLICY_RENDERED, READY};
use clusteraudit_core::rollout::revision::ORIGINAL;

/// Returns the revision the nodes should run ([`ORIGINAL`] when auditing is off), or None for a
/// spec that cannot be rolled out, which leaves everything but its conditions as it was.
pub(super) fn plan(draft: &mut Draft<'_>, desired: Desired) -> Option<String> {
    let (desired_name, policy_hash) = match desired {
        Desired::Invalid { message } => {
            if !draft.previously(READY, "InvalidSpec") {
                draft.event(true, "InvalidSpec", message.clone());
            }
            for type_ in [READY, POLICY_RENDERED] {
                draft.set(Observed {
                    type_,
                    status: false,
                    reason: "InvalidSpec",
                    message: message.clone(),
                });
            }
            return None;
        }
        Desired::Revision {
            name,
            policy_hash,
            hash,
        } => {
            draft.desired_hash = Some(hash);
            (name, Some(policy_hash))
        }
        Desired::Off => (ORIGINAL.to_string(), None),
    };
    draft.set(Observed {
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
    });
    draft.status.policy_hash = policy_hash;

    let revision = draft.status.revision.get_or_insert_default();
    if revision.desired.as_deref() != Some(desired_name.as_str()) {
        revision.desired = Some(desired_name.clone());
        draft.status.guard.get_or_insert_default().desired_since = Some(draft.now_time.clone());
        if desired_name != ORIGINAL {
            draft.event(
                false,
                "RevisionCreated",
                format!("the spec asks for revision {desired_name}"),
            );
        }
    }
    Some(desired_name)
}

/// Says how a change of the spec's policy takes effect (once, when the policy changes), and
/// records what the collector enforces.
pub(super) fn enforcement(
    draft: &mut Draft<'_>,
    change: PolicyChange,
    enforced_policy_hash: Option<String>,
) {
    let change_kind = change.clone();
    let changed = draft.status.policy_hash.is_some()
        && draft.previous.policy_hash.is_some()
        && draft.status.policy_hash != draft.previous.policy_hash;
    if changed {
        match change {
            PolicyChange::NotCompared => {}
            PolicyChange::Narrows => draft.event(
                false,
                "PolicyNarrowed",
                "the new policy records nothing the running revision does not: the collector \
                 enforces it, and no kube-apiserver restarts"
                    .into(),
            ),
            PolicyChange::Widens(why) => draft.event(false, "PolicyWidened", why),
        }
    }
    if let (PolicyChange::Narrows, Some(hash)) = (&change_kind, &draft.status.policy_hash) {
        let revision = draft
            .status
            .revision
            .as_ref()
            .and_then(|r| r.desired.clone())
            .unwrap_or_default();
        let message = format!(
            "policy {} records no more than revision {revision}, which the nodes keep: the \
             collector narrows what they send to it, with no kube-apiserver restart",
            &hash[..12.min(hash.len())]
        );
        draft.set(Observed {
            type_: POLICY_RENDERED,
            status: true,
            reason: "NarrowedByCollector",
            message,
        });
    }
    if draft.status.policy_hash.is_none() {
        draft.status.enforced_policy_hash = None;
    } else if enforced_policy_hash.is_some() {
        draft.status.enforced_policy_hash = enforced_policy_hash;
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use clusteraudit_core::api::ClusterAuditStatus;

    #[test]
    fn a_revision_is_rendered_and_asked_for_once() {
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        assert_eq!(plan(&mut draft, rev("rev-1")).as_deref(), Some("rev-1"));
        assert_eq!(
            condition(&draft.status, POLICY_RENDERED),
            ("True", "Rendered")
        );
        let rendered = &draft.status.conditions[0];
        assert_eq!(
            rendered.message,
            "policy 0123456789ab rendered as revision rev-1"
        );
        assert_eq!(published(&draft.actions), ["RevisionCreated"]);
        let guard = draft.status.guard.as_ref().unwrap();
        assert_eq!(guard.desired_since, Some(draft.now_time.clone()));

        // Asked for again later: no new Event, and the settle time keeps running from the ask.
        let previous = draft.status.clone();
        let mut again = Draft::new(at(20), Some(1), &previous);
        plan(&mut again, rev("rev-1"));
        assert!(again.actions.is_empty());
        assert_eq!(again.status.guard, previous.guard);
    }

    /// The spec's policy changed, the same revision asked for: the status and the Events.
    fn changed(
        change: PolicyChange,
        enforced: Option<&str>,
    ) -> (ClusterAuditStatus, Vec<&'static str>) {
        let mut previous = ClusterAuditStatus {
            policy_hash: Some("0000000000000000".into()),
            enforced_policy_hash: Some("0000000000000000".into()),
            ..Default::default()
        };
        previous.revision.get_or_insert_default().desired = Some("rev-1".into());
        let mut draft = Draft::new(at(100), Some(2), &previous);
        plan(&mut draft, rev("rev-1"));
        enforcement(&mut draft, change, enforced.map(str::to_string));
        let events = published(&draft.actions);
        (draft.status, events)
    }

    #[test]
    fn a_narrowing_change_is_announced_once_and_the_enforced_hash_follows_the_collector() {
        let (status, events) = changed(PolicyChange::Narrows, Some("0123456789abcdef"));
        assert_eq!(events, ["PolicyNarrowed"]);
        assert_eq!(
            condition(&status, POLICY_RENDERED),
            ("True", "NarrowedByCollector")
        );
        assert_eq!(
            status.enforced_policy_hash.as_deref(),
            Some("0123456789abcdef")
        );
        // Not enforced yet (the collector refused, or nodes still roll out): the old hash stays.
        let (status, _) = changed(PolicyChange::Narrows, None);
        assert_eq!(
            status.enforced_policy_hash.as_deref(),
            Some("0000000000000000")
        );
        // The same policy again: nothing to announce.
        let previous = ClusterAuditStatus {
            policy_hash: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        let mut draft = Draft::new(at(100), Some(2), &previous);
        plan(&mut draft, rev("rev-1"));
        enforcement(&mut draft, PolicyChange::Narrows, None);
        assert!(!published(&draft.actions).contains(&"PolicyNarrowed"));
    }

    #[test]
    fn a_widening_change_says_why_a_restart_is_needed() {
        let previous = ClusterAuditStatus {
            policy_hash: Some("0000000000000000".into()),
            ..Default::default()
        };
        let mut draft = Draft::new(at(100), Some(2), &previous);
        plan(&mut draft, rev("rev-2"));
        let why = "a get of secrets in kube-system by alice would be recorded at Request; the \
                   running policy records Metadata: a restart is needed";
        enforcement(&mut draft, PolicyChange::Widens(why.into()), None);
        let notes: Vec<_> = draft
            .actions
            .iter()
            .filter_map(|a| match a {
                super::super::Action::Publish(e) if e.reason == "PolicyWidened" => {
                    Some(e.note.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(notes, [why]);
    }

    #[test]
    fn with_auditing_off_nothing_is_enforced() {
        let previous = ClusterAuditStatus {
            policy_hash: Some("0000000000000000".into()),
            enforced_policy_hash: Some("0000000000000000".into()),
            ..Default::default()
        };
        let mut draft = Draft::new(at(100), Some(2), &previous);
        plan(&mut draft, Desired::Off);
        enforcement(&mut draft, PolicyChange::NotCompared, None);
        assert_eq!(draft.status.enforced_policy_hash, None);
    }

    #[test]
    fn turning_auditing_off_renders_nothing_and_asks_for_the_original_manifests() {
        let (previous, _) = rolled_out("rev-1", 0, &["a"]);
        let mut draft = Draft::new(at(400), Some(2), &previous);
        assert_eq!(plan(&mut draft, Desired::Off).as_deref(), Some(ORIGINAL));
        assert_eq!(
            condition(&draft.status, POLICY_RENDERED),
            ("True", "AuditingDisabled")
        );
        assert_eq!(draft.status.policy_hash, None);
        let revision = draft.status.revision.as_ref().unwrap();
        assert_eq!(revision.desired.as_deref(), Some(ORIGINAL));
        assert_eq!(revision.latest.as_deref(), Some("rev-1"));
        assert!(
            draft.actions.is_empty(),
            "no RevisionCreated for the original manifests"
        );
        let guard = draft.status.guard.as_ref().unwrap();
        assert_eq!(guard.desired_since, Some(draft.now_time.clone()));
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
}
