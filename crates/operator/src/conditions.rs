//! Status conditions as Kubernetes conventions want them: one per type, lastTransitionTime
//! moving only when the status changes, so that watchers see real transitions and not churn.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const POLICY_RENDERED: &str = "PolicyRendered";
pub const SINK_READY: &str = "SinkReady";
pub const ROLLOUT_PROGRESSING: &str = "RolloutProgressing";
pub const ROLLOUT_THROTTLED: &str = "RolloutThrottled";
pub const DEGRADED: &str = "Degraded";

/// What a reconcile concluded about one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Merges `observed` into `conditions` for `generation` at `now`: a condition whose status is
/// unchanged keeps its lastTransitionTime (its reason and message may still change).
pub fn set(
    conditions: &mut Vec<Condition>,
    observed: Observed<'_>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if observed.status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == observed.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = observed.reason.to_string();
            existing.message = observed.message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: observed.type_.to_string(),
            status,
            reason: observed.reason.to_string(),
            message: observed.message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
    // A stable order keeps server-side apply patches small and diffs readable.
    conditions.sort_by_key(|c| order(&c.type_));
}

fn order(type_: &str) -> usize {
    [
        READY,
        POLICY_RENDERED,
        SINK_READY,
        ROLLOUT_PROGRESSING,
        ROLLOUT_THROTTLED,
        DEGRADED,
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(usize::MAX)
}

pub fn is_false(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False")
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    fn observed<'a>(type_: &'a str, status: bool, reason: &'static str) -> Observed<'a> {
        Observed {
            type_,
            status,
            reason,
            message: format!("{reason} happened"),
        }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            observed(READY, false, "RolloutPending"),
            Some(1),
            &time(0),
        );
        set(
            &mut conditions,
            observed(READY, false, "RolloutInProgress"),
            Some(2),
            &time(10),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, time(0));
        assert_eq!(conditions[0].reason, "RolloutInProgress");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set(
            &mut conditions,
            observed(READY, true, "RolledOut"),
            Some(2),
            &time(20),
        );
        assert_eq!(conditions[0].last_transition_time, time(20));
        assert!(is_true(&conditions, READY));
    }

    #[test]
    fn one_condition_per_type_in_a_stable_order() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            observed(DEGRADED, false, "AsExpected"),
            None,
            &time(0),
        );
        set(
            &mut conditions,
            observed(READY, true, "RolledOut"),
            None,
            &time(0),
        );
        set(
            &mut conditions,
            observed(SINK_READY, true, "TopicReady"),
            None,
            &time(0),
        );
        set(
            &mut conditions,
            observed(READY, true, "RolledOut"),
            None,
            &time(5),
        );
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, SINK_READY, DEGRADED]);
        assert!(!is_true(&conditions, DEGRADED));
    }
}
