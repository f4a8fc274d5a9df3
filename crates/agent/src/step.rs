//! What the agent decides, as pure code: from the node's state file, what the API released, what
//! the agent sees (the manifest on disk, the kube-apiserver's readiness, whether the collector
//! received a batch from the node) and the time `now`, the next thing to do. The IO around it
//! (node.rs, run.rs) gathers the inputs and carries out the actions, so every decision is
//! unit-tested here on a fake clock.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use clusteraudit_core::{
    api::ClusterAudit,
    rollout::{
        objects::NodeReport,
        revision::{ORIGINAL, POLICY_FILE, Revision, WEBHOOK_CONFIG_FILE},
    },
};

/// What the agent remembers on the node (its state file): what survives a crash of the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The revision the running kube-apiserver was last seen ready with.
    pub current: Option<String>,
    /// A revision being applied: the manifest may already name it.
    pub applying: Option<String>,
    /// The full hash of the revision being applied, checked before anything of it was written:
    /// an agent resuming after a crash checks the revision against this, whatever the status
    /// says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying_hash: Option<String>,
    pub last_failed: Option<String>,
    pub reason: Option<String>,
}

/// What the API released for the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing yet.
    Unreleased,
    /// Auditing off: every node back on the manifest its agent found before auditing.
    Original,
    Revision(String),
}

/// The target the ClusterAudit (or its absence) sets.
pub fn target(audit: Option<&ClusterAudit>) -> Target {
    let Some(audit) = audit else {
        // A deleted ClusterAudit means auditing off.
        return Target::Original;
    };
    match audit
        .status
        .as_ref()
        .and_then(|s| s.revision.as_ref())
        .and_then(|r| r.latest.as_deref())
    {
        None => Target::Unreleased,
        Some(ORIGINAL) => Target::Original,
        Some(name) => Target::Revision(name.to_string()),
    }
}

/// The full hash the status records for the released revision.
pub fn released_hash(audit: Option<&ClusterAudit>) -> Option<String> {
    audit?
        .status
        .as_ref()?
        .revision
        .as_ref()?
        .latest_hash
        .clone()
}

/// The full SHA-256 a revision must hash to before anything of it is written here: for one an
/// earlier run started, the hash it checked then; otherwise the one the status records, if the
/// status releases that revision.
pub fn expected_hash(
    name: &str,
    state: &NodeState,
    target: &Target,
    released_hash: Option<&str>,
) -> Option<String> {
    if state.applying.as_deref() == Some(name)
        && let Some(hash) = &state.applying_hash
    {
        return Some(hash.clone());
    }
    match target {
        Target::Revision(released) if released == name => released_hash.map(str::to_string),
        _ => None,
    }
}

/// How long a restarted kube-apiserver has to become ready.
pub fn health_timeout(audit: Option<&ClusterAudit>) -> Duration {
    audit
        .and_then(|a| a.spec.rollout.health_timeout.to_duration().ok())
        .unwrap_or(Duration::from_secs(180))
}

/// What one pass of the agent's loop sets out to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pass {
    Nothing,
    /// Finish applying a revision an earlier run of the agent started.
    Resume(String),
    Apply(String),
    /// Put back the manifest found before auditing.
    Restore,
}

/// `audited`: the agent has saved an original manifest on this node (and so has one to restore).
pub fn pass(state: &NodeState, target: &Target, audited: bool) -> Pass {
    // An interrupted pass finishes first, whatever the target is now: the manifest may already
    // name the revision, and finishing restarts nothing again.
    if let Some(applying) = &state.applying {
        return Pass::Resume(applying.clone());
    }
    match target {
        Target::Unreleased => Pass::Nothing,
        Target::Original if audited => Pass::Restore,
        Target::Original => Pass::Nothing,
        // A revision that failed here waits for a new one: it is never retried by itself.
        Target::Revision(name)
            if state.current.as_ref() == Some(name) || state.last_failed.as_ref() == Some(name) =>
        {
            Pass::Nothing
        }
        Target::Revision(name) => Pass::Apply(name.clone()),
    }
}

/// The node (other than `node`) that fell back from `revision` and does not run it, if any: the
/// rollout stops there, so no other node restarts for it.
pub fn failed_elsewhere<'r>(
    reports: &'r [NodeReport],
    node: &str,
    revision: &str,
) -> Option<&'r str> {
    reports
        .iter()
        .find(|r| {
            r.node != node && r.last_failed.as_deref() == Some(revision) && r.current != revision
        })
        .map(|r| r.node.as_str())
}

/// Why the agent writes nothing of a revision to its host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the status records no full hash for {released}")]
    NoHash { released: String },
    #[error(
        "{released} holds content hashing to {actual}, not to the {recorded} the status records"
    )]
    Tampered {
        released: String,
        recorded: String,
        /// The name and full hash the content has.
        actual: String,
    },
    #[error("{released} holds a file the agent does not write: {file}")]
    UnknownFile { released: String, file: String },
    #[error("{released}: {reason}")]
    Untrusted {
        released: String,
        reason: crate::trust::Untrusted,
    },
}

impl Refused {
    /// The revision refused.
    pub fn revision(&self) -> &str {
        match self {
            Refused::NoHash { released }
            | Refused::Tampered { released, .. }
            | Refused::UnknownFile { released, .. }
            | Refused::Untrusted { released, .. } => released,
        }
    }
}

/// Whether `revision` may be written to this host as the revision the API released under
/// `released`. Its content, hashed again here, must give that name and the full hash
/// `recorded` in the status: the name alone carries 40 bits, and content matching 40 bits of a
/// hash can be found by brute force, whereas the full hash is written only through the status.
/// It must hold the policy and the webhook kubeconfig and nothing else, and its webhook must be
/// the pinned one ([`crate::trust`]).
pub fn verify(
    released: &str,
    recorded: Option<&str>,
    revision: &Revision,
    pins: Option<&crate::trust::Pins>,
) -> Result<(), Refused> {
    let released_name = || released.to_string();
    let recorded = recorded.ok_or_else(|| Refused::NoHash {
        released: released_name(),
    })?;
    let rehashed = Revision::new(revision.files.clone(), revision.flags.clone());
    if rehashed.name != released
        || rehashed.hash != recorded
        || revision.name != released
        || revision.hash != recorded
    {
        return Err(Refused::Tampered {
            released: released_name(),
            recorded: recorded.to_string(),
            actual: format!("{} ({})", rehashed.name, rehashed.hash),
        });
    }
    if let Some(file) = revision
        .files
        .keys()
        .find(|f| ![POLICY_FILE, WEBHOOK_CONFIG_FILE].contains(&f.as_str()))
    {
        return Err(Refused::UnknownFile {
            released: released_name(),
            file: file.clone(),
        });
    }
    let kubeconfig = revision
        .files
        .get(WEBHOOK_CONFIG_FILE)
        .ok_or_else(|| Refused::Untrusted {
            released: released_name(),
            reason: crate::trust::Untrusted::Missing("webhook kubeconfig"),
        })?;
    crate::trust::check_webhook_kubeconfig(kubeconfig, pins).map_err(|reason| Refused::Untrusted {
        released: released_name(),
        reason,
    })
}

/// What this node's report (its Lease) says, from its state and the revision its agent refuses
/// now, if any.
pub fn report(node: &str, state: &NodeState, refused: Option<&Refused>) -> NodeReport {
    NodeReport {
        node: node.to_string(),
        current: state
            .current
            .clone()
            .unwrap_or_else(|| ORIGINAL.to_string()),
        applying: state.applying.clone(),
        last_failed: state.last_failed.clone(),
        reason: state.reason.clone(),
        refused: refused.map(|r| r.revision().to_string()),
        refused_reason: refused.map(ToString::to_string),
    }
}

/// How long the rollout Lease is taken for: an apply and a fall back, even when this node's own
/// kube-apiserver, restarting, cannot renew it.
pub fn rollout_lease_seconds(health_timeout: Duration) -> u64 {
    (health_timeout.as_secs() * 2 + 60).max(60)
}

/// How often readiness is asked while waiting.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the collector is asked whether this node's batches arrive: the kube-apiserver
/// sends a batch at least every second while it has events.
pub const DELIVERY_POLL: Duration = Duration::from_secs(1);
/// The kubelet notices a manifest change within seconds; a kube-apiserver still answering after
/// this long is not being restarted (nothing changed for the kubelet), and its answer counts.
pub const RESTART_GRACE: Duration = Duration::from_secs(20);

/// Where this node is being moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    /// The revision of this name, its content hashing to `hash` (checked before).
    Revision { name: String, hash: String },
    /// The manifest found before auditing.
    Original,
}

/// What the agent knows of its node between steps: read once, then kept up to date by the IO
/// shell as it carries out the actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub state: NodeState,
    /// The manifest found before auditing is saved.
    pub original_saved: bool,
    /// The manifest on disk is the goal's: the revision's, or the original.
    pub manifest_matches: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Save the manifest on disk as the one found before auditing.
    SaveOriginal,
    /// Write the revision's files; when `last_good`, save the manifest on disk as the last known
    /// good; save `state`; then, when `manifest`, write the revision's manifest. In this order:
    /// the manifest never names a file that is not there yet, and an agent stopped anywhere in
    /// between resumes the same apply.
    Apply {
        last_good: bool,
        manifest: bool,
        state: NodeState,
    },
    /// Ask the kube-apiserver whether it is ready, and step again with the answer.
    CheckHealth { until: Instant },
    /// Ask the collector whether it acknowledged a batch from this node at or after `since`
    /// (when the kube-apiserver was seen ready), and step again with the answer.
    CheckDelivery { since: Instant, until: Instant },
    /// Step again at this time, without an answer.
    WaitUntil(Instant),
    /// Put the last known good manifest back.
    FallBack { reason: String },
    /// Put the manifest found before auditing back.
    Restore,
    /// Forget the node was audited: an empty state, and the saved manifests removed, so that the
    /// next time auditing is switched on, the manifest found then is the original (it may have
    /// been upgraded in between).
    Forget,
    /// Save `save` if there is one, and stop.
    Finish {
        save: Option<NodeState>,
        outcome: Outcome,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kube-apiserver is ready with the revision; `waited` from the manifest to ready, none
    /// when it already was.
    Current { waited: Option<Duration> },
    /// The revision failed here before.
    KnownBad,
    /// The revision did not become ready; the last known good manifest is back, and
    /// the kube-apiserver `restored` with it (or not yet).
    FellBack { reason: String, restored: bool },
    /// The original manifest is back (or never was changed) and the kube-apiserver ready.
    Restored,
    /// The original manifest is back but the kube-apiserver did not become ready.
    NotRestored,
}

/// A wait for the kube-apiserver the kubelet restarts: until it has gone away and is ready
/// again, or, if it never goes away, until it answers ready after the restart grace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Watch {
    since: Instant,
    until: Instant,
    grace_until: Instant,
    went_away: bool,
}

impl Watch {
    fn start(now: Instant, timeout: Duration) -> Watch {
        Watch {
            since: now,
            until: now + timeout,
            grace_until: now + RESTART_GRACE.min(timeout),
            went_away: false,
        }
    }

    /// Whether the answer `ready`, received at `now`, ends the wait.
    fn ready(&mut self, ready: bool, now: Instant) -> bool {
        if !ready {
            self.went_away = true;
            return false;
        }
        self.went_away || now >= self.grace_until
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    /// The manifest is the goal's; the wait starts at the next step.
    Written,
    Waiting(Watch),
    /// Ready since `ready_at`; waiting for the collector to receive a batch from this node.
    Delivering {
        watch: Watch,
        ready_at: Instant,
    },
    /// The last known good manifest is written; the wait starts at the next step.
    FellBack {
        reason: String,
    },
    FallingBack {
        reason: String,
        watch: Watch,
    },
    /// The saved manifests are gone; restoring is over.
    Forgotten,
    /// Stepping again repeats the outcome and saves nothing.
    Finished(Outcome),
}

enum Waited {
    Ready,
    TimedOut,
    Next(Action),
}

/// Moving this node to a goal, one step at a time: the kube-apiserver restarts at most once for
/// it (twice when it falls back), and an agent that stops anywhere and starts again resumes from
/// its state file without another restart.
#[derive(Clone, Debug)]
pub struct Rollout {
    goal: Goal,
    health_timeout: Duration,
    /// This node's name, when a revision counts as up only once the collector has received a
    /// batch from it.
    delivery_gate: Option<String>,
    phase: Phase,
}

impl Rollout {
    pub fn new(goal: Goal, health_timeout: Duration) -> Rollout {
        Rollout {
            goal,
            health_timeout,
            delivery_gate: None,
            phase: Phase::Start,
        }
    }

    /// A revision is up only once the collector has received a batch from `node` sent by the
    /// restarted kube-apiserver, within the same health timeout; otherwise it falls back.
    pub fn with_delivery_gate(mut self, node: &str) -> Rollout {
        self.delivery_gate = Some(node.to_string());
        self
    }

    /// The next action, from the facts, the answer to the last [`Action::CheckHealth`] or
    /// [`Action::CheckDelivery`] (none otherwise) and the time `now`.
    pub fn step(&mut self, facts: &Facts, ready: Option<bool>, now: Instant) -> Action {
        match self.goal.clone() {
            Goal::Revision { name, hash } => self.towards_revision(&name, &hash, facts, ready, now),
            Goal::Original => self.towards_original(facts, ready, now),
        }
    }

    fn towards_revision(
        &mut self,
        name: &str,
        hash: &str,
        facts: &Facts,
        ready: Option<bool>,
        now: Instant,
    ) -> Action {
        let state = &facts.state;
        match self.phase.clone() {
            Phase::Start => {
                if state.current.as_deref() == Some(name) && state.applying.is_none() {
                    return self.finish(None, Outcome::Current { waited: None });
                }
                if state.last_failed.as_deref() == Some(name) {
                    return self.finish(None, Outcome::KnownBad);
                }
                if !facts.original_saved {
                    return Action::SaveOriginal;
                }
                self.phase = Phase::Written;
                if state.applying.as_deref() != Some(name) || !facts.manifest_matches {
                    return Action::Apply {
                        // Resuming, the manifest on disk may be the revision's already: the last
                        // known good is the one saved before it.
                        last_good: state.applying.is_none(),
                        manifest: !facts.manifest_matches,
                        state: NodeState {
                            applying: Some(name.to_string()),
                            applying_hash: Some(hash.to_string()),
                            ..state.clone()
                        },
                    };
                }
                // Resuming after the manifest was written: no second restart, just the wait.
                self.towards_revision(name, hash, facts, ready, now)
            }
            Phase::Written => {
                let watch = Watch::start(now, self.health_timeout);
                self.phase = Phase::Waiting(watch);
                self.towards_revision(name, hash, facts, None, now)
            }
            Phase::Waiting(mut watch) => match self.wait(&mut watch, ready, now) {
                Waited::Next(action) => {
                    self.phase = Phase::Waiting(watch);
                    action
                }
                Waited::Ready if self.delivery_gate.is_some() => {
                    self.phase = Phase::Delivering {
                        watch,
                        ready_at: now,
                    };
                    Action::CheckDelivery {
                        since: now,
                        until: watch.until,
                    }
                }
                Waited::Ready => self.current(name, state, watch, now),
                Waited::TimedOut => {
                    self.fall_back(format!("not ready within {:?}", self.health_timeout))
                }
            },
            Phase::Delivering { watch, ready_at } => match ready {
                Some(true) => self.current(name, state, watch, now),
                Some(false) => Action::WaitUntil(now + DELIVERY_POLL),
                None if now >= watch.until => {
                    let node = self.delivery_gate.clone().unwrap_or_default();
                    self.fall_back(format!(
                        "the collector received no audit batch from node {node} within {:?}",
                        self.health_timeout
                    ))
                }
                None => Action::CheckDelivery {
                    since: ready_at,
                    until: watch.until,
                },
            },
            Phase::FellBack { reason } => {
                let watch = Watch::start(now, self.health_timeout);
                self.phase = Phase::FallingBack { reason, watch };
                self.towards_revision(name, hash, facts, None, now)
            }
            Phase::FallingBack { reason, mut watch } => {
                let restored = match self.wait(&mut watch, ready, now) {
                    Waited::Next(action) => {
                        self.phase = Phase::FallingBack { reason, watch };
                        return action;
                    }
                    Waited::Ready => true,
                    Waited::TimedOut => false,
                };
                self.finish(
                    Some(NodeState {
                        applying: None,
                        applying_hash: None,
                        last_failed: Some(name.to_string()),
                        reason: Some(reason.clone()),
                        ..state.clone()
                    }),
                    Outcome::FellBack { reason, restored },
                )
            }
            Phase::Forgotten => unreachable!("only restoring forgets"),
            Phase::Finished(outcome) => Action::Finish {
                save: None,
                outcome,
            },
        }
    }

    /// The revision is up: the state says so.
    fn current(&mut self, name: &str, state: &NodeState, watch: Watch, now: Instant) -> Action {
        self.finish(
            Some(NodeState {
                current: Some(name.to_string()),
                applying: None,
                applying_hash: None,
                ..state.clone()
            }),
            Outcome::Current {
                waited: Some(now.saturating_duration_since(watch.since)),
            },
        )
    }

    fn fall_back(&mut self, reason: String) -> Action {
        self.phase = Phase::FellBack {
            reason: reason.clone(),
        };
        Action::FallBack { reason }
    }

    fn towards_original(&mut self, facts: &Facts, ready: Option<bool>, now: Instant) -> Action {
        match self.phase.clone() {
            Phase::Start => {
                if !facts.original_saved {
                    // Never audited by this agent: nothing to put back.
                    return self.finish(None, Outcome::Restored);
                }
                if facts.manifest_matches {
                    // Also where a restore interrupted after writing the manifest resumes.
                    self.phase = Phase::Forgotten;
                    return Action::Forget;
                }
                self.phase = Phase::Written;
                Action::Restore
            }
            Phase::Written => {
                self.phase = Phase::Waiting(Watch::start(now, self.health_timeout));
                self.towards_original(facts, None, now)
            }
            Phase::Waiting(mut watch) => match self.wait(&mut watch, ready, now) {
                Waited::Next(action) => {
                    self.phase = Phase::Waiting(watch);
                    action
                }
                Waited::Ready => {
                    self.phase = Phase::Forgotten;
                    Action::Forget
                }
                Waited::TimedOut => self.finish(None, Outcome::NotRestored),
            },
            Phase::Forgotten => self.finish(None, Outcome::Restored),
            Phase::Finished(outcome) => Action::Finish {
                save: None,
                outcome,
            },
            Phase::FellBack { .. } | Phase::FallingBack { .. } | Phase::Delivering { .. } => {
                unreachable!("restoring never falls back nor waits for the collector")
            }
        }
    }

    /// One beat of a wait: an answer ends it or schedules the next question; without one, the
    /// deadline ends it or the question is asked.
    fn wait(&self, watch: &mut Watch, ready: Option<bool>, now: Instant) -> Waited {
        match ready {
            Some(ready) if watch.ready(ready, now) => Waited::Ready,
            Some(_) => Waited::Next(Action::WaitUntil(now + POLL)),
            None if now >= watch.until => Waited::TimedOut,
            None => Waited::Next(Action::CheckHealth { until: watch.until }),
        }
    }

    fn finish(&mut self, save: Option<NodeState>, outcome: Outcome) -> Action {
        self.phase = Phase::Finished(outcome.clone());
        Action::Finish { save, outcome }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(180);
    /// How long a readiness question takes to answer.
    const ANSWER: Duration = Duration::from_millis(30);

    /// What a manifest on the simulated node runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Manifest {
        /// One the kube-apiserver starts with (the original, the last known good, a good revision).
        Starts,
        /// One it never becomes ready with.
        Fails,
    }

    /// A node: the kubelet restarts the kube-apiserver one second after each manifest write, and a
    /// kube-apiserver that starts becomes ready `startup` later.
    struct Sim {
        facts: Facts,
        revision: Manifest,
        startup: Duration,
        running: Manifest,
        written_at: Option<Instant>,
        restarts: usize,
        actions: Vec<(Duration, Action)>,
        /// Whether the revision's kube-apiserver's batches reach the collector.
        delivers: bool,
        /// The running kube-apiserver is the revision's (not a fall back's).
        revision_running: bool,
    }

    impl Sim {
        fn new(facts: Facts, revision: Manifest) -> Sim {
            Sim {
                facts,
                revision,
                startup: Duration::from_secs(15),
                running: Manifest::Starts,
                written_at: None,
                restarts: 0,
                actions: Vec::new(),
                delivers: true,
                revision_running: false,
            }
        }

        /// Whether the collector acknowledged a batch from the node at or after `since`: a
        /// ready kube-apiserver sends its first batch two seconds after it is ready, then one
        /// every ten seconds (its identity Lease's renewal).
        fn delivered(&self, since: Instant, now: Instant) -> bool {
            let Some(written) = self.written_at else {
                return false;
            };
            let first = written + Duration::from_secs(1) + self.startup + Duration::from_secs(2);
            if !(self.delivers && self.revision_running && self.running == Manifest::Starts)
                || now < first
            {
                return false;
            }
            let every = Duration::from_secs(10);
            let batches = (now - first).as_secs() / every.as_secs();
            let last = first + every * batches as u32;
            last >= since
        }

        fn write(&mut self, manifest: Manifest, now: Instant) {
            self.running = manifest;
            self.written_at = Some(now);
            self.restarts += 1;
        }

        fn ready(&self, now: Instant) -> bool {
            let Some(written) = self.written_at else {
                return true;
            };
            let restarted = written + Duration::from_secs(1);
            now < restarted || (self.running == Manifest::Starts && now >= restarted + self.startup)
        }

        /// Runs `rollout` to its end from `t0`, carrying out its actions as the IO shell does.
        fn drive(&mut self, rollout: &mut Rollout, t0: Instant) -> Outcome {
            self.drive_until(rollout, t0, |_| false)
                .expect("the rollout finishes")
        }

        /// As [`Sim::drive`], but stops (the agent crashes) right after `crash_after` accepts an
        /// action carried out.
        fn drive_until(
            &mut self,
            rollout: &mut Rollout,
            t0: Instant,
            crash_after: impl Fn(&Action) -> bool,
        ) -> Option<Outcome> {
            let mut now = t0;
            let mut ready = None;
            for _ in 0..100_000 {
                let action = rollout.step(&self.facts, ready.take(), now);
                self.actions.push((now - t0, action.clone()));
                match &action {
                    Action::SaveOriginal => self.facts.original_saved = true,
                    Action::Apply {
                        manifest, state, ..
                    } => {
                        self.facts.state = state.clone();
                        if *manifest {
                            self.write(self.revision, now);
                            self.revision_running = true;
                        }
                        self.facts.manifest_matches = true;
                    }
                    Action::CheckHealth { .. } => {
                        now += ANSWER;
                        ready = Some(self.ready(now));
                    }
                    Action::CheckDelivery { since, .. } => {
                        now += ANSWER;
                        ready = Some(self.delivered(*since, now));
                    }
                    Action::WaitUntil(at) => now = now.max(*at),
                    Action::FallBack { .. } => {
                        self.revision_running = false;
                        self.write(Manifest::Starts, now);
                        self.facts.manifest_matches = false;
                    }
                    Action::Restore => {
                        self.revision_running = false;
                        self.write(Manifest::Starts, now);
                        self.facts.manifest_matches = true;
                    }
                    Action::Forget => self.facts = Facts::default(),
                    Action::Finish { save, outcome } => {
                        if let Some(state) = save {
                            self.facts.state = state.clone();
                        }
                        return Some(outcome.clone());
                    }
                }
                if crash_after(&action) {
                    return None;
                }
            }
            panic!("the rollout never finished: {:?}", self.actions.last());
        }

        fn when(&self, wanted: impl Fn(&Action) -> bool) -> Vec<Duration> {
            self.actions
                .iter()
                .filter(|(_, action)| wanted(action))
                .map(|(at, _)| *at)
                .collect()
        }
    }

    fn rev(name: &str) -> Goal {
        Goal::Revision {
            name: name.to_string(),
            hash: hash_of(name),
        }
    }

    fn hash_of(name: &str) -> String {
        format!("{name}-full-sha256")
    }

    fn audited_on(current: &str) -> Facts {
        Facts {
            state: NodeState {
                current: Some(current.into()),
                ..NodeState::default()
            },
            original_saved: true,
            manifest_matches: false,
        }
    }

    #[test]
    fn a_fresh_apply_saves_the_original_and_restarts_once() {
        let t0 = Instant::now();
        let mut node = Sim::new(Facts::default(), Manifest::Starts);
        let outcome = node.drive(&mut Rollout::new(rev("rev-a"), TIMEOUT), t0);

        assert_eq!(
            node.actions[..2]
                .iter()
                .map(|(_, a)| a.clone())
                .collect::<Vec<_>>(),
            [
                Action::SaveOriginal,
                Action::Apply {
                    last_good: true,
                    manifest: true,
                    state: NodeState {
                        applying: Some("rev-a".into()),
                        applying_hash: Some(hash_of("rev-a")),
                        ..NodeState::default()
                    },
                },
            ]
        );
        assert_eq!(node.restarts, 1);
        let Outcome::Current {
            waited: Some(waited),
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        // Restarted one second after the write, ready 15 seconds later.
        assert!(
            waited >= Duration::from_secs(16) && waited < Duration::from_secs(17),
            "{waited:?}"
        );
        assert_eq!(
            node.facts.state,
            NodeState {
                current: Some("rev-a".into()),
                ..NodeState::default()
            }
        );
    }

    #[test]
    fn healthy_within_the_timeout_the_revision_becomes_current() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        // Slow, but within the timeout.
        node.startup = TIMEOUT - Duration::from_secs(5);
        let outcome = node.drive(&mut Rollout::new(rev("rev-b"), TIMEOUT), t0);

        assert!(matches!(outcome, Outcome::Current { waited: Some(_) }));
        assert_eq!(node.facts.state.current.as_deref(), Some("rev-b"));
        assert_eq!(node.facts.state.applying, None);
        assert!(
            node.when(|a| matches!(a, Action::FallBack { .. }))
                .is_empty()
        );
        assert_eq!(node.restarts, 1);
        // The last known good is the manifest it ran before, not the original.
        assert!(matches!(
            node.actions[0].1,
            Action::Apply {
                last_good: true,
                ..
            }
        ));
    }

    #[test]
    fn the_answer_of_a_kube_apiserver_that_never_went_away_counts_after_the_restart_grace() {
        let t0 = Instant::now();
        let mut rollout = Rollout::new(rev("rev-a"), TIMEOUT);
        rollout.phase = Phase::Written;
        let facts = audited_on("rev-0");
        assert_eq!(
            rollout.step(&facts, None, t0),
            Action::CheckHealth {
                until: t0 + TIMEOUT
            }
        );
        // Still the old one answering: asked again after a pause.
        let asked = t0 + Duration::from_secs(5);
        assert_eq!(
            rollout.step(&facts, Some(true), asked),
            Action::WaitUntil(asked + POLL)
        );
        assert!(matches!(
            rollout.step(&facts, Some(true), t0 + RESTART_GRACE),
            Action::Finish {
                outcome: Outcome::Current { .. },
                ..
            }
        ));
    }

    #[test]
    fn unhealthy_past_the_timeout_it_falls_back_with_a_reason_and_is_not_retried() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Fails);
        let outcome = node.drive(&mut Rollout::new(rev("rev-bad"), TIMEOUT), t0);

        let reason = "not ready within 180s".to_string();
        assert_eq!(
            outcome,
            Outcome::FellBack {
                reason: reason.clone(),
                restored: true
            }
        );
        let fell_back = node.when(|a| matches!(a, Action::FallBack { .. }));
        assert_eq!(fell_back.len(), 1);
        assert!(
            fell_back[0] >= TIMEOUT && fell_back[0] < TIMEOUT + Duration::from_secs(1),
            "{fell_back:?}"
        );
        assert_eq!(node.restarts, 2, "the revision, then the last known good");
        assert_eq!(
            node.facts.state,
            NodeState {
                current: Some("rev-a".into()),
                applying: None,
                applying_hash: None,
                last_failed: Some("rev-bad".into()),
                reason: Some(reason),
            }
        );

        // Neither the loop nor a direct apply tries it again.
        let released = Target::Revision("rev-bad".into());
        assert_eq!(pass(&node.facts.state, &released, true), Pass::Nothing);
        let mut again = Rollout::new(rev("rev-bad"), TIMEOUT);
        assert_eq!(node.drive(&mut again, t0), Outcome::KnownBad);
        assert_eq!(node.restarts, 2);
        // A new revision is applied.
        assert_eq!(
            pass(&node.facts.state, &Target::Revision("rev-c".into()), true),
            Pass::Apply("rev-c".into())
        );
    }

    #[test]
    fn with_the_delivery_gate_a_revision_is_current_once_the_collector_has_its_batch() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        let mut rollout = Rollout::new(rev("rev-b"), TIMEOUT).with_delivery_gate("cp-1");
        let outcome = node.drive(&mut rollout, t0);

        let Outcome::Current {
            waited: Some(waited),
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        // Ready 16 s after the write; the first batch 2 s later.
        assert!(
            waited >= Duration::from_secs(18) && waited < Duration::from_secs(20),
            "{waited:?}"
        );
        let asked = node.when(|a| matches!(a, Action::CheckDelivery { .. }));
        assert!(asked[0] >= Duration::from_secs(16), "{asked:?}");
        // Only what came after the kube-apiserver was ready counts.
        let Some((ready_at, _)) = node
            .actions
            .iter()
            .find(|(_, a)| matches!(a, Action::CheckDelivery { .. }))
        else {
            unreachable!()
        };
        assert!(node.actions.iter().all(|(_, a)| match a {
            Action::CheckDelivery { since, until } =>
                *since - t0 == *ready_at && *until == t0 + TIMEOUT,
            _ => true,
        }));
        assert_eq!(node.restarts, 1);
        assert_eq!(node.facts.state.current.as_deref(), Some("rev-b"));
        assert!(
            node.when(|a| matches!(a, Action::FallBack { .. }))
                .is_empty()
        );
    }

    #[test]
    fn ready_but_no_batch_within_the_timeout_falls_back_with_the_reason() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        node.delivers = false;
        let mut rollout = Rollout::new(rev("rev-b"), TIMEOUT).with_delivery_gate("cp-1");
        let outcome = node.drive(&mut rollout, t0);

        let reason = "the collector received no audit batch from node cp-1 within 180s";
        assert_eq!(
            outcome,
            Outcome::FellBack {
                reason: reason.into(),
                restored: true
            }
        );
        // The health timeout counts from the manifest's write, the collector's wait included.
        let fell_back = node.when(|a| matches!(a, Action::FallBack { .. }));
        assert_eq!(fell_back.len(), 1);
        assert!(
            fell_back[0] >= TIMEOUT && fell_back[0] < TIMEOUT + Duration::from_secs(2),
            "{fell_back:?}"
        );
        // Asked about once a second, not in a tight loop.
        let asked = node
            .when(|a| matches!(a, Action::CheckDelivery { .. }))
            .len();
        assert!((150..=170).contains(&asked), "{asked}");
        assert_eq!(node.restarts, 2, "the revision, then the last known good");
        assert_eq!(
            node.facts.state,
            NodeState {
                current: Some("rev-a".into()),
                last_failed: Some("rev-b".into()),
                reason: Some(reason.into()),
                ..NodeState::default()
            }
        );
        assert_eq!(
            pass(&node.facts.state, &Target::Revision("rev-b".into()), true),
            Pass::Nothing
        );
    }

    #[test]
    fn a_kube_apiserver_ready_late_leaves_the_gate_what_remains_of_the_timeout() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        // Ready one second before the deadline: its first batch would come after it.
        node.startup = TIMEOUT - Duration::from_secs(2);
        let mut rollout = Rollout::new(rev("rev-b"), TIMEOUT).with_delivery_gate("cp-1");
        let outcome = node.drive(&mut rollout, t0);
        assert!(
            matches!(&outcome, Outcome::FellBack { reason, .. } if reason.contains("no audit batch")),
            "{outcome:?}"
        );
    }

    #[test]
    fn an_agent_crashed_while_waiting_for_the_collector_resumes_without_a_second_restart() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        let crashed = node.drive_until(
            &mut Rollout::new(rev("rev-b"), TIMEOUT).with_delivery_gate("cp-1"),
            t0,
            |a| matches!(a, Action::CheckDelivery { .. }),
        );
        assert_eq!(crashed, None);
        assert_eq!(node.restarts, 1);
        let t1 = t0 + Duration::from_secs(17);
        let mut resumed = Rollout::new(rev("rev-b"), TIMEOUT).with_delivery_gate("cp-1");
        let outcome = node.drive(&mut resumed, t1);
        assert!(matches!(outcome, Outcome::Current { .. }), "{outcome:?}");
        assert_eq!(node.restarts, 1);
        assert_eq!(node.facts.state.current.as_deref(), Some("rev-b"));
    }

    #[test]
    fn a_fall_back_that_does_not_come_up_either_says_so() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Fails);
        node.startup = TIMEOUT * 2;
        let outcome = node.drive(&mut Rollout::new(rev("rev-bad"), TIMEOUT), t0);
        assert!(matches!(
            outcome,
            Outcome::FellBack {
                restored: false,
                ..
            }
        ));
        assert_eq!(node.facts.state.last_failed.as_deref(), Some("rev-bad"));
    }

    #[test]
    fn after_a_crash_mid_apply_the_agent_resumes_without_a_second_restart() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        let crashed = node.drive_until(&mut Rollout::new(rev("rev-b"), TIMEOUT), t0, |a| {
            matches!(a, Action::Apply { .. })
        });
        assert_eq!(crashed, None);
        assert_eq!(node.restarts, 1);
        assert_eq!(node.facts.state.applying.as_deref(), Some("rev-b"));

        // The next run of the loop finishes the interrupted apply first, whatever is released.
        assert_eq!(
            pass(&node.facts.state, &Target::Unreleased, true),
            Pass::Resume("rev-b".into())
        );
        let resumed_at = t0 + Duration::from_secs(3);
        let outcome = node.drive(&mut Rollout::new(rev("rev-b"), TIMEOUT), resumed_at);
        assert!(matches!(outcome, Outcome::Current { .. }), "{outcome:?}");
        assert_eq!(node.restarts, 1, "{:#?}", node.actions);
        assert_eq!(node.facts.state.current.as_deref(), Some("rev-b"));
        assert_eq!(node.facts.state.applying, None);
    }

    #[test]
    fn after_a_crash_before_the_manifest_was_written_the_last_known_good_is_kept() {
        // The state says applying, but the manifest is still the one before.
        let mut facts = audited_on("rev-a");
        facts.state.applying = Some("rev-b".into());
        facts.state.applying_hash = Some(hash_of("rev-b"));
        let mut rollout = Rollout::new(rev("rev-b"), TIMEOUT);
        assert_eq!(
            rollout.step(&facts, None, Instant::now()),
            Action::Apply {
                last_good: false,
                manifest: true,
                state: facts.state.clone(),
            }
        );
    }

    #[test]
    fn disabling_restores_the_original_then_forgets_it() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        assert_eq!(
            pass(&node.facts.state, &Target::Original, true),
            Pass::Restore
        );
        let outcome = node.drive(&mut Rollout::new(Goal::Original, TIMEOUT), t0);

        assert_eq!(outcome, Outcome::Restored);
        assert_eq!(node.restarts, 1);
        let order: Vec<_> = node
            .actions
            .iter()
            .filter(|(_, a)| !matches!(a, Action::CheckHealth { .. } | Action::WaitUntil(_)))
            .map(|(_, a)| a.clone())
            .collect();
        assert_eq!(
            order,
            [
                Action::Restore,
                Action::Forget,
                Action::Finish {
                    save: None,
                    outcome: Outcome::Restored
                }
            ]
        );
        // Forgotten: nothing left to restore, and the next apply saves a new original.
        assert_eq!(node.facts, Facts::default());
        assert_eq!(
            pass(&node.facts.state, &Target::Original, false),
            Pass::Nothing
        );
    }

    #[test]
    fn a_restore_interrupted_after_the_write_finishes_without_a_second_restart() {
        let mut facts = audited_on("rev-a");
        facts.manifest_matches = true;
        let mut node = Sim::new(facts, Manifest::Starts);
        let outcome = node.drive(&mut Rollout::new(Goal::Original, TIMEOUT), Instant::now());
        assert_eq!(outcome, Outcome::Restored);
        assert_eq!(node.restarts, 0);
        assert_eq!(node.actions[0].1, Action::Forget);
    }

    #[test]
    fn a_node_never_audited_has_nothing_to_restore() {
        let mut node = Sim::new(Facts::default(), Manifest::Starts);
        let outcome = node.drive(&mut Rollout::new(Goal::Original, TIMEOUT), Instant::now());
        assert_eq!(outcome, Outcome::Restored);
        assert_eq!(node.restarts, 0);
        assert_eq!(node.actions.len(), 1);
    }

    #[test]
    fn a_restore_that_does_not_come_up_keeps_what_it_knows() {
        let t0 = Instant::now();
        let mut node = Sim::new(audited_on("rev-a"), Manifest::Starts);
        node.startup = TIMEOUT * 2;
        let outcome = node.drive(&mut Rollout::new(Goal::Original, TIMEOUT), t0);
        assert_eq!(outcome, Outcome::NotRestored);
        assert!(node.when(|a| *a == Action::Forget).is_empty());
        assert!(node.facts.original_saved);
        assert_eq!(node.facts.state.current.as_deref(), Some("rev-a"));
    }

    static CA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["collector-ca".to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    });

    fn pins() -> crate::trust::Pins {
        crate::trust::Pins {
            servers: vec!["https://10.96.0.50:8443/v1/webhook".into()],
            ca: crate::trust::certificates(CA.as_bytes()).unwrap(),
        }
    }

    fn kubeconfig(server: &str) -> String {
        clusteraudit_core::rollout::revision::build(
            "rules: []\n",
            &clusteraudit_core::rollout::revision::WebhookTarget {
                server: server.into(),
                ca_pem: CA.clone(),
                token: "t0ken".into(),
            },
        )
        .files[WEBHOOK_CONFIG_FILE]
            .clone()
    }

    fn revision(policy: &str) -> Revision {
        Revision::new(
            BTreeMap::from([
                ("policy.yaml".to_string(), policy.to_string()),
                (
                    "webhook.kubeconfig".to_string(),
                    kubeconfig("https://10.96.0.50:8443/v1/webhook"),
                ),
            ]),
            vec![("--audit-webhook-mode".into(), "batch".into())],
        )
    }

    #[test]
    fn a_revision_whose_content_does_not_hash_to_what_was_released_is_refused() {
        let genuine = revision("rules: [{level: Metadata}]\n");
        let pins = pins();
        let recorded = Some(genuine.hash.as_str());
        assert_eq!(
            verify(&genuine.name, recorded, &genuine, Some(&pins)),
            Ok(())
        );

        let mut edited = genuine.clone();
        edited
            .files
            .insert("policy.yaml".into(), "rules: [{level: None}]\n".into());
        let refused = verify(&genuine.name, recorded, &edited, Some(&pins)).unwrap_err();
        assert_eq!(refused.revision(), genuine.name);
        assert!(
            matches!(&refused, Refused::Tampered { actual, .. } if actual.starts_with("rev-")),
            "{refused}"
        );

        let mut flagged = genuine.clone();
        flagged.flags[0].1 = "blocking".into();
        assert!(verify(&genuine.name, recorded, &flagged, Some(&pins)).is_err());

        // Content addressed to another name than the one released.
        let other = revision("rules: [{level: Request}]\n");
        assert!(verify(&genuine.name, recorded, &other, Some(&pins)).is_err());
        let mut hash_swapped = genuine.clone();
        hash_swapped.hash = other.hash.clone();
        assert!(verify(&genuine.name, recorded, &hash_swapped, Some(&pins)).is_err());

        // Without the full hash from the status nothing is written.
        assert_eq!(
            verify(&genuine.name, None, &genuine, Some(&pins)),
            Err(Refused::NoHash {
                released: genuine.name.clone()
            })
        );
    }

    #[test]
    fn content_matching_the_name_but_not_the_full_hash_is_refused() {
        // A forger who can replace the Secret can afford content whose hash starts with the 40
        // bits in the released name (about 2^40 tries), not content with the full hash. Such
        // content agrees with the name and disagrees with the status past the name's digits.
        let content = revision("rules: [{level: None}]\n");
        let recorded = format!("{}{}", &content.hash[..10], "0".repeat(54));
        assert_ne!(recorded, content.hash);
        let refused = verify(&content.name, Some(&recorded), &content, Some(&pins())).unwrap_err();
        assert!(
            matches!(&refused, Refused::Tampered { recorded: r, .. } if *r == recorded),
            "{refused}"
        );
        assert!(refused.to_string().contains(&content.hash), "{refused}");
    }

    #[test]
    fn a_revision_writes_only_its_two_files_and_only_a_pinned_webhook() {
        let pins = pins();
        let mut files = BTreeMap::from([
            ("policy.yaml".to_string(), "rules: []\n".to_string()),
            (
                "webhook.kubeconfig".to_string(),
                kubeconfig("https://10.96.0.50:8443/v1/webhook"),
            ),
        ]);
        let good = Revision::new(files.clone(), Vec::new());
        assert_eq!(
            verify(&good.name, Some(&good.hash), &good, Some(&pins)),
            Ok(())
        );
        files.insert("kube-apiserver.yaml".into(), "kind: Pod\n".into());
        let extra = Revision::new(files.clone(), Vec::new());
        assert!(matches!(
            verify(&extra.name, Some(&extra.hash), &extra, Some(&pins)),
            Err(Refused::UnknownFile { file, .. }) if file == "kube-apiserver.yaml"
        ));
        files.remove("kube-apiserver.yaml");
        files.insert(
            "webhook.kubeconfig".into(),
            kubeconfig("https://203.0.113.9/v1/webhook"),
        );
        let elsewhere = Revision::new(files, Vec::new());
        let refused = verify(
            &elsewhere.name,
            Some(&elsewhere.hash),
            &elsewhere,
            Some(&pins),
        )
        .unwrap_err();
        assert!(
            matches!(
                &refused,
                Refused::Untrusted {
                    reason: crate::trust::Untrusted::OtherServer { .. },
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("203.0.113.9"), "{refused}");
        // Refused, and said so in the node's report.
        let reported = report("node-1", &NodeState::default(), Some(&refused));
        assert_eq!(reported.refused.as_deref(), Some(elsewhere.name.as_str()));
        assert!(
            reported
                .refused_reason
                .unwrap()
                .contains("not to the pinned webhook server")
        );
        // An agent started without pins trusts nothing.
        assert!(matches!(
            verify(&good.name, Some(&good.hash), &good, None),
            Err(Refused::Untrusted {
                reason: crate::trust::Untrusted::NotPinned,
                ..
            })
        ));
    }

    #[test]
    fn the_hash_checked_is_the_status_s_or_for_a_resumed_apply_the_one_checked_then() {
        let released = Target::Revision("rev-b".into());
        let fresh = NodeState::default();
        assert_eq!(
            expected_hash("rev-b", &fresh, &released, Some("hash-b")),
            Some("hash-b".into())
        );
        assert_eq!(expected_hash("rev-b", &fresh, &released, None), None);
        assert_eq!(
            expected_hash(
                "rev-b",
                &fresh,
                &Target::Revision("rev-c".into()),
                Some("hash-c")
            ),
            None
        );
        let resuming = NodeState {
            applying: Some("rev-b".into()),
            applying_hash: Some("hash-b".into()),
            ..NodeState::default()
        };
        // The status moved on meanwhile: the interrupted apply keeps its own hash.
        assert_eq!(
            expected_hash(
                "rev-b",
                &resuming,
                &Target::Revision("rev-c".into()),
                Some("hash-c")
            ),
            Some("hash-b".into())
        );
    }

    #[test]
    fn each_pass_follows_the_released_target() {
        let state = |current: Option<&str>| NodeState {
            current: current.map(str::to_string),
            ..NodeState::default()
        };
        let released = |name: &str| Target::Revision(name.into());
        assert_eq!(
            pass(&state(None), &Target::Unreleased, false),
            Pass::Nothing
        );
        assert_eq!(
            pass(&state(None), &released("rev-a"), false),
            Pass::Apply("rev-a".into())
        );
        assert_eq!(
            pass(&state(Some("rev-a")), &released("rev-a"), true),
            Pass::Nothing
        );
        assert_eq!(
            pass(&state(Some("rev-a")), &released("rev-b"), true),
            Pass::Apply("rev-b".into())
        );
        assert_eq!(
            pass(&state(Some("rev-a")), &Target::Original, true),
            Pass::Restore
        );
        assert_eq!(pass(&state(None), &Target::Original, false), Pass::Nothing);
    }

    #[test]
    fn the_target_comes_from_the_released_revision() {
        use clusteraudit_core::api::{ClusterAuditStatus, RevisionStatus};

        assert_eq!(target(None), Target::Original);
        assert_eq!(health_timeout(None), Duration::from_secs(180));
        let spec = serde_json::from_value(serde_json::json!({"rollout": {"healthTimeout": "90s"}}))
            .unwrap();
        let mut audit = ClusterAudit::new("cluster", spec);
        assert_eq!(target(Some(&audit)), Target::Unreleased);
        assert_eq!(health_timeout(Some(&audit)), Duration::from_secs(90));
        for (latest, expected) in [
            (ORIGINAL, Target::Original),
            ("rev-a", Target::Revision("rev-a".into())),
        ] {
            audit.status = Some(ClusterAuditStatus {
                revision: Some(RevisionStatus {
                    latest: Some(latest.into()),
                    desired: Some("rev-z".into()),
                    ..RevisionStatus::default()
                }),
                ..ClusterAuditStatus::default()
            });
            assert_eq!(target(Some(&audit)), expected);
        }
    }

    #[test]
    fn a_rollout_stops_where_a_node_fell_back() {
        let report = |node: &str, current: &str, last_failed: Option<&str>| NodeReport {
            node: node.into(),
            current: current.into(),
            last_failed: last_failed.map(str::to_string),
            ..NodeReport::default()
        };
        let reports = [
            report("node-1", "rev-a", None),
            report("node-2", "rev-a", Some("rev-b")),
            report("node-3", "rev-b", Some("rev-b")),
        ];
        assert_eq!(
            failed_elsewhere(&reports, "node-1", "rev-b"),
            Some("node-2")
        );
        // Its own failure is in its own state; a node that runs it now did not stop it.
        assert_eq!(failed_elsewhere(&reports[1..], "node-2", "rev-b"), None);
        assert_eq!(failed_elsewhere(&reports, "node-1", "rev-c"), None);
    }

    #[test]
    fn the_report_says_original_until_a_revision_is_current() {
        let report_of = report("node-1", &NodeState::default(), None);
        assert_eq!(report_of.current, ORIGINAL);
        let applying = NodeState {
            current: Some("rev-a".into()),
            applying: Some("rev-b".into()),
            applying_hash: Some(hash_of("rev-b")),
            last_failed: Some("rev-x".into()),
            reason: Some("not ready within 3m".into()),
        };
        let report_of = report("node-1", &applying, None);
        assert_eq!(report_of.current, "rev-a");
        assert_eq!(report_of.applying.as_deref(), Some("rev-b"));
        assert_eq!(report_of.last_failed.as_deref(), Some("rev-x"));
    }

    #[test]
    fn the_rollout_lease_covers_an_apply_and_a_fall_back() {
        assert_eq!(rollout_lease_seconds(Duration::from_secs(180)), 420);
        assert_eq!(rollout_lease_seconds(Duration::ZERO), 60);
    }
}
