//! When a kube-apiserver restart may start: the toggle guard's arithmetic, pure and on a clock
//! the caller passes in.
//!
//! Restarts are the scarce resource. A change to the kube-apiserver's inputs waits until edits
//! have settled (`settleTime` since the last one), then until `minRestartInterval` since the last
//! restart, `minToggleInterval` since auditing was last switched on or off (when this change
//! switches it), and until the sliding hour has room under `maxRestartsPerHour`. The latest spec is
//! what rolls out when the window opens; a one-shot override skips the guard.

use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    pub settle_time: Duration,
    pub min_restart_interval: Duration,
    pub min_toggle_interval: Duration,
    pub max_restarts_per_hour: u32,
}

/// What the guard knows of the past.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// When the kube-apiserver's desired inputs last changed.
    pub last_change: Option<SystemTime>,
    /// Starts of rollouts (restarts), any order; only the last hour matters.
    pub restarts: Vec<SystemTime>,
    /// When auditing was last switched on or off by a rollout.
    pub last_toggle: Option<SystemTime>,
}

/// Why a restart waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    /// Edits are still coming in; waiting for them to settle.
    Settling,
    /// Too soon after the last restart.
    MinRestartInterval,
    /// Too soon after auditing was last switched on or off.
    MinToggleInterval,
    /// The hour's restart budget is spent.
    HourlyBudget,
}

impl HoldReason {
    /// The condition reason, in PascalCase.
    pub fn as_reason(self) -> &'static str {
        match self {
            HoldReason::Settling => "Settling",
            HoldReason::MinRestartInterval => "MinRestartInterval",
            HoldReason::MinToggleInterval => "MinToggleInterval",
            HoldReason::HourlyBudget => "HourlyRestartBudget",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// Wait until `until`; `reason` is the constraint that opens last.
    Hold {
        until: SystemTime,
        reason: HoldReason,
    },
}

const HOUR: Duration = Duration::from_secs(3600);

/// Whether a restart for a change may start at `now`. `toggles` says the change switches auditing
/// on or off.
pub fn decide(
    now: SystemTime,
    config: &GuardConfig,
    history: &History,
    toggles: bool,
    overridden: bool,
) -> Decision {
    if overridden {
        return Decision::Proceed;
    }
    let mut opens: Vec<(SystemTime, HoldReason)> = Vec::new();
    if let Some(change) = history.last_change {
        opens.push((change + config.settle_time, HoldReason::Settling));
    }
    if let Some(last) = history.restarts.iter().max() {
        opens.push((
            *last + config.min_restart_interval,
            HoldReason::MinRestartInterval,
        ));
    }
    if toggles && let Some(toggle) = history.last_toggle {
        opens.push((
            toggle + config.min_toggle_interval,
            HoldReason::MinToggleInterval,
        ));
    }
    // The sliding hour: with `max` restarts in (now - 1h, now], the next may start when the
    // oldest of the most recent `max` leaves the window.
    let budget = config.max_restarts_per_hour.max(1) as usize;
    let mut recent: Vec<SystemTime> = history
        .restarts
        .iter()
        .copied()
        .filter(|t| *t + HOUR > now)
        .collect();
    if recent.len() >= budget {
        recent.sort();
        let oldest_counted = recent[recent.len() - budget];
        opens.push((oldest_counted + HOUR, HoldReason::HourlyBudget));
    }
    match opens
        .into_iter()
        .filter(|(at, _)| *at > now)
        .max_by_key(|(at, _)| *at)
    {
        Some((until, reason)) => Decision::Hold { until, reason },
        None => Decision::Proceed,
    }
}

/// Drops restarts that no longer count (older than an hour), so the history stays small.
pub fn prune(history: &mut History, now: SystemTime) {
    history.restarts.retain(|t| *t + HOUR > now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn config() -> GuardConfig {
        GuardConfig {
            settle_time: Duration::from_secs(30),
            min_restart_interval: Duration::from_secs(300),
            min_toggle_interval: Duration::from_secs(600),
            max_restarts_per_hour: 3,
        }
    }

    #[test]
    fn a_first_change_waits_only_to_settle() {
        let history = History {
            last_change: Some(at(0)),
            ..History::default()
        };
        assert_eq!(
            decide(at(10), &config(), &history, true, false),
            Decision::Hold {
                until: at(30),
                reason: HoldReason::Settling
            }
        );
        assert_eq!(
            decide(at(30), &config(), &history, true, false),
            Decision::Proceed
        );
    }

    #[test]
    fn each_edit_restarts_the_settle_time() {
        let mut history = History {
            last_change: Some(at(0)),
            ..History::default()
        };
        history.last_change = Some(at(25));
        assert_eq!(
            decide(at(31), &config(), &history, false, false),
            Decision::Hold {
                until: at(55),
                reason: HoldReason::Settling
            }
        );
    }

    #[test]
    fn restarts_are_spaced_by_the_minimum_interval() {
        let history = History {
            last_change: Some(at(100)),
            restarts: vec![at(0)],
            last_toggle: None,
        };
        assert_eq!(
            decide(at(200), &config(), &history, false, false),
            Decision::Hold {
                until: at(300),
                reason: HoldReason::MinRestartInterval
            }
        );
        assert_eq!(
            decide(at(300), &config(), &history, false, false),
            Decision::Proceed
        );
    }

    #[test]
    fn toggles_are_spaced_by_the_toggle_interval_only_when_toggling() {
        let history = History {
            last_change: Some(at(0)),
            restarts: vec![at(0)],
            last_toggle: Some(at(0)),
        };
        assert_eq!(
            decide(at(400), &config(), &history, true, false),
            Decision::Hold {
                until: at(600),
                reason: HoldReason::MinToggleInterval
            }
        );
        assert_eq!(
            decide(at(400), &config(), &history, false, false),
            Decision::Proceed
        );
    }

    #[test]
    fn the_hourly_budget_slides() {
        let mut cfg = config();
        cfg.min_restart_interval = Duration::from_secs(60);
        let history = History {
            last_change: Some(at(0)),
            restarts: vec![at(0), at(600), at(1200)],
            last_toggle: None,
        };
        // Three in the hour: the fourth waits for the first to leave the window.
        assert_eq!(
            decide(at(1300), &cfg, &history, false, false),
            Decision::Hold {
                until: at(3600),
                reason: HoldReason::HourlyBudget
            }
        );
        assert_eq!(
            decide(at(3600), &cfg, &history, false, false),
            Decision::Proceed
        );
        // Restarts older than an hour are forgotten.
        let mut pruned = history.clone();
        prune(&mut pruned, at(4300));
        assert_eq!(pruned.restarts, vec![at(1200)]);
    }

    #[test]
    fn the_latest_constraint_decides() {
        let mut cfg = config();
        cfg.max_restarts_per_hour = 1;
        let history = History {
            last_change: Some(at(1000)),
            restarts: vec![at(100)],
            last_toggle: Some(at(100)),
        };
        // Settling opens at 1030, the interval at 400, the toggle at 700, the budget at 3700.
        assert_eq!(
            decide(at(1010), &cfg, &history, true, false),
            Decision::Hold {
                until: at(3700),
                reason: HoldReason::HourlyBudget
            }
        );
    }

    #[test]
    fn an_override_proceeds_at_once() {
        let history = History {
            last_change: Some(at(0)),
            restarts: vec![at(0), at(1), at(2)],
            last_toggle: Some(at(0)),
        };
        assert_eq!(
            decide(at(3), &config(), &history, true, true),
            Decision::Proceed
        );
    }

    /// A storm of edits on a fake clock: never more restarts than the budget allows in any hour,
    /// never two closer than the interval, and the last edit is the one that ends up applied.
    #[test]
    fn a_toggle_storm_stays_within_the_budget() {
        let mut cfg = config();
        cfg.settle_time = Duration::from_secs(5);
        cfg.min_restart_interval = Duration::from_secs(60);
        let mut history = History::default();
        let mut applied_edit = None;
        let mut pending_edit = None;
        for second in 0..7200u64 {
            let now = at(second);
            // An edit every six seconds for the first two minutes, then one more at 30 minutes.
            if (second < 120 && second % 6 == 0) || second == 1800 {
                pending_edit = Some(second);
                history.last_change = Some(now);
            }
            if pending_edit.is_some()
                && decide(now, &cfg, &history, false, false) == Decision::Proceed
            {
                history.restarts.push(now);
                applied_edit = pending_edit.take();
            }
        }
        assert_eq!(applied_edit, Some(1800));
        assert!(pending_edit.is_none());
        let mut restarts = history.restarts.clone();
        restarts.sort();
        for pair in restarts.windows(2) {
            assert!(pair[1].duration_since(pair[0]).unwrap() >= cfg.min_restart_interval);
        }
        for (i, start) in restarts.iter().enumerate() {
            let in_hour = restarts[i..]
                .iter()
                .filter(|t| t.duration_since(*start).unwrap() < HOUR)
                .count();
            assert!(in_hour <= 3, "{in_hour} restarts within an hour");
        }
    }
}
