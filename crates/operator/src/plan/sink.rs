//! The sink: whether the log destination is there (it must be before a kube-apiserver is pointed
//! at it), and when what the operator created of it goes: once auditing is off on every node
//! (`deleteOnDisable`), or when the `ClusterAudit` itself is deleted (the finalizer).

use super::{Action, Draft, Sink};
use crate::conditions::{Observed, SINK_READY};
use clusteraudit_core::{
    api::{ClusterAuditStatus, SinkStatus},
    rollout::revision::ORIGINAL,
};

/// Why the sink keeps the nodes from being pointed at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Blocked {
    pub reason: &'static str,
    pub message: String,
}

/// The SinkReady condition and Events, and whether the sink blocks releasing `desired_name`:
/// turning auditing off never waits for it.
pub(super) fn plan(draft: &mut Draft<'_>, sink: Sink, desired_name: &str) -> Option<Blocked> {
    match sink {
        Sink::Ready(sink_status) => {
            draft.set(Observed {
                type_: SINK_READY,
                status: true,
                reason: "SinkReady",
                message: format!(
                    "events go to topic {} in logset {}",
                    sink_status.topic_id.as_deref().unwrap_or("?"),
                    sink_status.logset_id.as_deref().unwrap_or("?")
                ),
            });
            let created = &sink_status.created;
            if let Some(previous_sink) = &draft.previous.sink {
                let (topic, logset) = (
                    created.topic && !previous_sink.created.topic,
                    created.logset && !previous_sink.created.logset,
                );
                if topic {
                    draft.event(false, "SinkCreated", "created the topic".into());
                }
                if logset {
                    draft.event(false, "SinkCreated", "created the logset".into());
                }
            } else if created.logset || created.topic {
                let what = match (created.logset, created.topic) {
                    (true, true) => "the logset and the topic",
                    (true, false) => "the logset",
                    _ => "the topic",
                };
                draft.event(false, "SinkCreated", format!("created {what}"));
            }
            // A route's topic created now, not in the last status: announced once.
            let previous_routes = draft
                .previous
                .sink
                .as_ref()
                .map(|p| p.routes.clone())
                .unwrap_or_default();
            let mut announced: Vec<&str> = Vec::new();
            for (index, route) in sink_status.routes.iter().enumerate() {
                let known = previous_routes
                    .iter()
                    .any(|r| r.topic_id == route.topic_id && r.created);
                if route.created && !known && !announced.contains(&route.topic_id.as_str()) {
                    announced.push(&route.topic_id);
                    draft.event(
                        false,
                        "SinkCreated",
                        format!(
                            "created topic {} for spec.sink.routes[{index}]",
                            route.topic_id
                        ),
                    );
                }
            }
            draft.status.sink = Some(sink_status);
            None
        }
        Sink::Failed {
            reason,
            message,
            known,
        } => {
            if known.is_some() {
                draft.status.sink = known;
            }
            if !draft.previously(SINK_READY, reason) {
                draft.event(true, reason, message.clone());
            }
            draft.set(Observed {
                type_: SINK_READY,
                status: false,
                reason,
                message: message.clone(),
            });
            (desired_name != ORIGINAL).then_some(Blocked { reason, message })
        }
        Sink::NotChecked => {
            draft.set(Observed {
                type_: SINK_READY,
                status: false,
                reason: "AuditingDisabled",
                message: "auditing is off; the sink is not checked".into(),
            });
            None
        }
    }
}

/// With `deleteOnDisable`, deletes the sink the operator created once every node is back on its
/// original manifest; the status forgets it, so that it goes once.
pub(super) fn cleanup(status: &mut ClusterAuditStatus, delete_on_disable: bool) -> Option<Action> {
    if !delete_on_disable || !disabled_everywhere(status) {
        return None;
    }
    let sink = status.sink.take_if(|sink| created_any(sink))?;
    Some(Action::DeleteSink {
        sink,
        announce: true,
    })
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

fn created_any(sink: &SinkStatus) -> bool {
    sink.created.logset || sink.created.topic || sink.routes.iter().any(|r| r.created)
}

/// Where the `ClusterAudit` object itself stands, before anything else is looked at.
pub struct Lifecycle<'a> {
    /// It has a deletion timestamp.
    pub deleting: bool,
    pub has_finalizer: bool,
    /// `spec.sink.deleteOnDisable`.
    pub delete_on_disable: bool,
    pub sink: Option<&'a SinkStatus>,
}

/// The finalizer exists only while there is something outside the cluster to clean up: a sink
/// the operator created, with deleteOnDisable. It is set before the sink is first ensured, so a
/// sink is never created that a deletion would leave behind. When the object is going away, the
/// agents restore the original manifests on their own; the operator deletes the sink it created,
/// then lets the object go. No actions, or none that end the reconcile: go on to plan.
pub fn lifecycle(object: Lifecycle<'_>) -> Vec<Action> {
    if object.deleting {
        if !object.has_finalizer {
            return vec![Action::AwaitChange];
        }
        let delete = object.sink.filter(|sink| created_any(sink));
        return delete
            .map(|sink| Action::DeleteSink {
                sink: sink.clone(),
                announce: false,
            })
            .into_iter()
            .chain([Action::SetFinalizer(false), Action::AwaitChange])
            .collect();
    }
    if object.has_finalizer == object.delete_on_disable {
        return Vec::new();
    }
    vec![Action::SetFinalizer(object.delete_on_disable)]
}

#[cfg(test)]
mod tests {
    use super::{super::Inputs, super::plan as plan_all};
    use super::{super::testing::*, *};
    use crate::conditions::READY;
    use clusteraudit_core::api::CreatedBySink;

    #[test]
    fn created_parts_are_announced_once() {
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        assert_eq!(plan(&mut draft, sink(), "rev-1"), None);
        assert_eq!(condition(&draft.status, SINK_READY), ("True", "SinkReady"));
        assert_eq!(published(&draft.actions), ["SinkCreated"]);
        assert_eq!(draft.status.sink, Some(sink_status()));

        let previous = draft.status.clone();
        let mut again = Draft::new(at(10), Some(1), &previous);
        plan(&mut again, sink(), "rev-1");
        assert!(again.actions.is_empty());

        // An adopted logset with a topic created later: only the topic is announced.
        let mut adopted = sink_status();
        adopted.created = CreatedBySink {
            logset: false,
            topic: false,
        };
        let previous = ClusterAuditStatus {
            sink: Some(adopted.clone()),
            ..ClusterAuditStatus::default()
        };
        let mut draft = Draft::new(at(0), Some(1), &previous);
        adopted.created.topic = true;
        plan(&mut draft, Sink::Ready(adopted), "rev-1");
        assert_eq!(
            draft.actions,
            [Action::Publish(super::super::Event {
                warning: false,
                reason: "SinkCreated",
                note: "created the topic".into()
            })]
        );
    }

    #[test]
    fn created_route_topics_are_announced_once_and_go_on_disable() {
        use clusteraudit_core::api::RouteStatus;
        let route = |topic: &str, created| RouteStatus {
            query: "resource:secrets".into(),
            topic_id: topic.into(),
            created,
        };
        let mut adopted = sink_status();
        adopted.created = CreatedBySink::default();
        adopted.routes = vec![
            route("tp-sec", true),
            route("tp-sec", true),
            route("tp-old", false),
        ];
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        plan(&mut draft, Sink::Ready(adopted.clone()), "rev-1");
        assert_eq!(
            draft.actions,
            [Action::Publish(super::super::Event {
                warning: false,
                reason: "SinkCreated",
                note: "created topic tp-sec for spec.sink.routes[0]".into()
            })]
        );
        let previous = draft.status.clone();
        let mut again = Draft::new(at(10), Some(1), &previous);
        plan(&mut again, Sink::Ready(adopted.clone()), "rev-1");
        assert!(again.actions.is_empty());

        // With only a route's topic created, deleteOnDisable still has something to delete.
        let mut status = disabled(Some(adopted.clone()));
        assert_eq!(
            cleanup(&mut status, true),
            Some(Action::DeleteSink {
                sink: adopted.clone(),
                announce: true
            })
        );
        let mut none_created = adopted;
        none_created.routes = vec![route("tp-old", false)];
        let mut status = disabled(Some(none_created));
        assert_eq!(cleanup(&mut status, true), None);
    }

    #[test]
    fn a_failed_sink_blocks_enabling_only() {
        let failed = || Sink::Failed {
            reason: "CollectorUnavailable",
            message: "down".into(),
            known: None,
        };
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        assert_eq!(
            plan(&mut draft, failed(), "rev-1"),
            Some(Blocked {
                reason: "CollectorUnavailable",
                message: "down".into()
            })
        );
        assert_eq!(published(&draft.actions), ["CollectorUnavailable"]);
        let previous = draft.status.clone();
        let mut off = Draft::new(at(10), Some(1), &previous);
        assert_eq!(plan(&mut off, failed(), ORIGINAL), None);
        assert!(
            off.actions.is_empty(),
            "a lasting failure is announced once"
        );
        assert_eq!(
            condition(&off.status, SINK_READY),
            ("False", "CollectorUnavailable")
        );
    }

    #[test]
    fn what_was_created_before_a_later_step_failed_stays_remembered() {
        // The logset and topic were created, then routing the webhook failed: the next
        // reconcile finds them existing, and only the status says the operator created them.
        let previous = ClusterAuditStatus::default();
        let mut draft = Draft::new(at(0), Some(1), &previous);
        let failed = Sink::Failed {
            reason: "CollectorUnavailable",
            message: "routing the webhook: connection refused".into(),
            known: Some(sink_status()),
        };
        plan(&mut draft, failed, "rev-1");
        assert_eq!(draft.status.sink, Some(sink_status()));
        assert_eq!(
            condition(&draft.status, SINK_READY),
            ("False", "CollectorUnavailable")
        );
        // A failure before anything stood leaves the last status's sink as it was.
        let mut again = Draft::new(at(10), Some(1), &draft.status);
        let failed = Sink::Failed {
            reason: "CollectorUnavailable",
            message: "down".into(),
            known: None,
        };
        plan(&mut again, failed, "rev-1");
        assert_eq!(again.status.sink, Some(sink_status()));
    }

    #[test]
    fn a_missing_sink_blocks_enabling_and_says_why() {
        let unaudited = [report("a", ORIGINAL)];
        let blocked = read(plan_all(Inputs {
            sink: Sink::Failed {
                reason: "LogsetNotFound",
                message: "no logset with id \"ls-9\"".into(),
                known: None,
            },
            ..inputs(
                at(0),
                &ClusterAuditStatus::default(),
                rev("rev-1"),
                &unaudited,
            )
        }));
        assert!(!blocked.released && !blocked.throttled);
        assert_eq!(condition(&blocked, SINK_READY), ("False", "LogsetNotFound"));
        assert_eq!(condition(&blocked, READY), ("False", "LogsetNotFound"));
        assert_eq!(blocked.status.revision.as_ref().unwrap().latest, None);
    }

    fn disabled(sink: Option<SinkStatus>) -> ClusterAuditStatus {
        let (mut status, _) = rolled_out("rev-1", 0, &["a"]);
        let revision = status.revision.as_mut().unwrap();
        revision.latest = Some(ORIGINAL.into());
        revision.desired = Some(ORIGINAL.into());
        revision.nodes[0].current = Some(ORIGINAL.into());
        status.sink = sink;
        status
    }

    #[test]
    fn the_created_sink_goes_once_auditing_is_off_everywhere() {
        let mut status = disabled(Some(sink_status()));
        assert_eq!(cleanup(&mut status.clone(), false), None);
        assert_eq!(
            cleanup(&mut status, true),
            Some(Action::DeleteSink {
                sink: sink_status(),
                announce: true
            })
        );
        assert_eq!(status.sink, None);
        assert_eq!(cleanup(&mut status, true), None, "it goes once");

        let mut adopted = sink_status();
        adopted.created = CreatedBySink::default();
        let mut status = disabled(Some(adopted.clone()));
        assert_eq!(cleanup(&mut status, true), None);
        assert_eq!(
            status.sink,
            Some(adopted),
            "an adopted sink is never deleted"
        );

        let mut still_running = disabled(Some(sink_status()));
        still_running.revision.as_mut().unwrap().nodes[0].current = Some("rev-1".into());
        assert_eq!(cleanup(&mut still_running, true), None);
    }

    #[test]
    fn the_finalizer_follows_delete_on_disable() {
        let object = |has_finalizer, delete_on_disable| Lifecycle {
            deleting: false,
            has_finalizer,
            delete_on_disable,
            sink: None,
        };
        assert_eq!(lifecycle(object(false, true)), [Action::SetFinalizer(true)]);
        assert_eq!(
            lifecycle(object(true, false)),
            [Action::SetFinalizer(false)]
        );
        assert!(lifecycle(object(true, true)).is_empty());
        assert!(lifecycle(object(false, false)).is_empty());
    }

    #[test]
    fn a_deleted_object_takes_its_created_sink_along() {
        let created = sink_status();
        let deleting = |has_finalizer, sink| Lifecycle {
            deleting: true,
            has_finalizer,
            delete_on_disable: true,
            sink,
        };
        assert_eq!(
            lifecycle(deleting(true, Some(&created))),
            [
                Action::DeleteSink {
                    sink: created.clone(),
                    announce: false
                },
                Action::SetFinalizer(false),
                Action::AwaitChange
            ]
        );
        let mut adopted = created.clone();
        adopted.created = CreatedBySink::default();
        assert_eq!(
            lifecycle(deleting(true, Some(&adopted))),
            [Action::SetFinalizer(false), Action::AwaitChange]
        );
        assert_eq!(
            lifecycle(deleting(false, Some(&created))),
            [Action::AwaitChange]
        );
    }
}
