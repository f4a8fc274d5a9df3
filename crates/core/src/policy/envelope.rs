//! Which policy the kube-apiservers run for a spec: the released revision's, the spec's own, or
//! the wide envelope. The collector always enforces the spec's policy, so the kube-apiservers
//! only have to send at least as much: a spec that narrows what they run needs no restart.
//!
//! With `rollout.envelope: Wide` they run [`wide`], which every reasonable spec narrows, so that
//! after the one restart into it no edit restarts anything. A spec outside it (bodies of secrets,
//! the RequestReceived stage, managed fields) runs exactly, as with `Exact`.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{
    Rendered,
    narrows::{Comparison, Counterexample, narrows},
    render::secret_bearing_resources,
};
use crate::{
    api::Envelope,
    audit::{Level, Policy, PolicyRule, Stage},
};

/// The wide envelope: Metadata for secret-bearing resources, request and response bodies for
/// everything else, every stage but RequestReceived, managed fields left out.
pub fn wide() -> &'static Rendered {
    static WIDE: OnceLock<Rendered> = OnceLock::new();
    WIDE.get_or_init(|| {
        let policy = Policy {
            api_version: crate::audit::API_VERSION.into(),
            kind: crate::audit::KIND.into(),
            metadata: None,
            rules: vec![
                PolicyRule {
                    resources: secret_bearing_resources(),
                    ..PolicyRule::at(Level::Metadata)
                },
                PolicyRule::at(Level::RequestResponse),
            ],
            omit_stages: vec![Stage::RequestReceived],
            omit_managed_fields: Some(true),
        };
        policy
            .validate()
            .expect("the wide envelope is a valid policy");
        let yaml = format!("{HEADER}{}", policy.to_yaml());
        let hash = hex::encode(Sha256::digest(yaml.as_bytes()));
        Rendered { policy, yaml, hash }
    })
}

const HEADER: &str = "# The wide envelope of clusteraudit (rollout.envelope: Wide): the collector \
                      narrows it to the ClusterAudit's policy; edits here are overwritten.\n";

/// The policy a released revision runs.
#[derive(Clone, Copy, Debug)]
pub struct Released<'a> {
    pub yaml: &'a str,
    pub policy: &'a Policy,
}

/// What the kube-apiservers are to run for a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The released revision stays: it runs the spec's policy itself (`narrowed` false), or one
    /// that records all the spec's does (`narrowed` true), which the collector narrows.
    Keep { narrowed: bool },
    /// A new revision with the spec's own policy. `widening` is a request the spec records more
    /// of than the released revision (None when nothing is released); `outside` one it records
    /// more of than the wide envelope, when that was asked for.
    Spec {
        widening: Option<Box<Counterexample>>,
        outside: Option<Box<Counterexample>>,
    },
    /// A new revision with the wide envelope; `widening` as for [`Choice::Spec`] (None when the
    /// switch to the envelope is not needed by the spec, only asked for).
    Wide {
        widening: Option<Box<Counterexample>>,
    },
}

impl Choice {
    /// The policy the revision carries.
    pub fn runs<'a>(&self, released: Option<Released<'a>>, spec: &'a Rendered) -> Released<'a> {
        let rendered = match (self, released) {
            (Choice::Keep { .. }, Some(released)) => return released,
            (Choice::Keep { .. }, None) => unreachable!("only a released revision is kept"),
            (Choice::Spec { .. }, _) => spec,
            (Choice::Wide { .. }, _) => wide(),
        };
        Released {
            yaml: &rendered.yaml,
            policy: &rendered.policy,
        }
    }

    /// Whether the choice rolls out a new revision, restarting every kube-apiserver.
    pub fn restarts(&self) -> bool {
        !matches!(self, Choice::Keep { .. })
    }

    /// Why the kube-apiservers restart, in words; None when they do not, or when nothing was
    /// running to compare with.
    pub fn reason(&self) -> Option<String> {
        match self {
            Choice::Keep { .. } => None,
            Choice::Spec { widening, outside } => {
                let mut text = widening.as_ref()?.describe();
                if let Some(outside) = outside {
                    text.push_str(&format!(
                        "; the spec records more than the wide envelope ({}), so the \
                         kube-apiservers run it exactly",
                        outside.describe().trim_end_matches(": a restart is needed")
                    ));
                }
                Some(text)
            }
            Choice::Wide { widening } => Some(format!(
                "{}; the kube-apiservers move to the wide envelope, inside which later edits \
                 restart nothing",
                widening.as_ref()?.describe()
            )),
        }
    }
}

/// Chooses what the kube-apiservers run for `spec`, given the released revision's policy.
///
/// With `Wide` and a spec inside the envelope the target is the envelope, and a released
/// revision running anything else is replaced by it (once), even when the spec narrows it:
/// that is the restart which buys every later edit its freedom from restarts.
pub fn choose(released: Option<Released<'_>>, spec: &Rendered, envelope: Envelope) -> Choice {
    let outside = match envelope {
        Envelope::Exact => None,
        Envelope::Wide => match narrows(&wide().policy, &spec.policy) {
            Comparison::Narrows => {
                return match released {
                    Some(released) if released.yaml == wide().yaml => {
                        Choice::Keep { narrowed: true }
                    }
                    Some(released) => Choice::Wide {
                        widening: widening(released.policy, &spec.policy),
                    },
                    None => Choice::Wide { widening: None },
                };
            }
            Comparison::Widens(example) => Some(example),
        },
    };
    match released {
        Some(released) if released.yaml == spec.yaml => Choice::Keep { narrowed: false },
        Some(released) => match narrows(released.policy, &spec.policy) {
            Comparison::Narrows => Choice::Keep { narrowed: true },
            Comparison::Widens(example) => Choice::Spec {
                widening: Some(example),
                outside,
            },
        },
        None => Choice::Spec {
            widening: None,
            outside,
        },
    }
}

fn widening(running: &Policy, candidate: &Policy) -> Option<Box<Counterexample>> {
    match narrows(running, candidate) {
        Comparison::Narrows => None,
        Comparison::Widens(example) => Some(example),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PolicySpec, Profile};
    use crate::policy::render;

    fn spec(profile: Profile, edit: impl FnOnce(&mut PolicySpec)) -> Rendered {
        let mut spec = PolicySpec {
            profile,
            ..PolicySpec::default()
        };
        edit(&mut spec);
        render(&spec).unwrap()
    }

    fn released(rendered: &Rendered) -> Option<Released<'_>> {
        Some(Released {
            yaml: &rendered.yaml,
            policy: &rendered.policy,
        })
    }

    #[test]
    fn every_profile_with_its_defaults_fits_in_the_wide_envelope() {
        for profile in [
            Profile::None,
            Profile::Metadata,
            Profile::Default,
            Profile::WriteRequestBodies,
            Profile::AllRequestBodies,
        ] {
            for exclude_noise in [true, false] {
                let spec = spec(profile, |s| s.exclude_noise = exclude_noise);
                assert_eq!(
                    narrows(&wide().policy, &spec.policy),
                    Comparison::Narrows,
                    "{profile:?} excludeNoise={exclude_noise}"
                );
            }
        }
    }

    #[test]
    fn exact_keeps_the_released_revision_while_the_spec_narrows_it() {
        let all = spec(Profile::AllRequestBodies, |_| {});
        let default = spec(Profile::Default, |_| {});
        assert_eq!(
            choose(released(&all), &all, Envelope::Exact),
            Choice::Keep { narrowed: false }
        );
        assert_eq!(
            choose(released(&all), &default, Envelope::Exact),
            Choice::Keep { narrowed: true }
        );
        let back = choose(released(&default), &all, Envelope::Exact);
        assert!(back.restarts());
        assert_eq!(back.runs(released(&default), &all).yaml, all.yaml);
        assert!(back.reason().unwrap().ends_with("a restart is needed"));
        assert_eq!(
            choose(None, &default, Envelope::Exact),
            Choice::Spec {
                widening: None,
                outside: None
            }
        );
    }

    #[test]
    fn wide_moves_to_the_envelope_once_then_keeps_it_for_every_spec_inside() {
        let default = spec(Profile::Default, |_| {});
        // Switching to Wide restarts into the envelope even though nothing widened.
        let switch = choose(released(&default), &default, Envelope::Wide);
        assert_eq!(switch, Choice::Wide { widening: None });
        assert_eq!(switch.runs(released(&default), &default).yaml, wide().yaml);
        assert_eq!(switch.reason(), None);
        let envelope = wide();
        for edit in [
            spec(Profile::AllRequestBodies, |_| {}),
            spec(Profile::Metadata, |s| {
                s.omit_stages.push(Stage::ResponseStarted)
            }),
            spec(Profile::Default, |s| {
                s.rules.push(PolicyRule {
                    users: vec!["system:serviceaccount:monitoring:prometheus".into()],
                    ..PolicyRule::at(Level::None)
                })
            }),
        ] {
            assert_eq!(
                choose(released(envelope), &edit, Envelope::Wide),
                Choice::Keep { narrowed: true }
            );
        }
    }

    #[test]
    fn a_spec_outside_the_wide_envelope_runs_exactly_and_says_why() {
        let secrets_bodies = spec(Profile::Default, |s| {
            s.rules.push(PolicyRule {
                resources: vec![crate::audit::GroupResources {
                    group: String::new(),
                    resources: vec!["secrets".into()],
                    resource_names: Vec::new(),
                }],
                ..PolicyRule::at(Level::Request)
            })
        });
        let choice = choose(released(wide()), &secrets_bodies, Envelope::Wide);
        let Choice::Spec {
            widening: Some(_),
            outside: Some(_),
        } = &choice
        else {
            panic!("expected the spec itself, got {choice:?}");
        };
        let reason = choice.reason().unwrap();
        assert!(reason.contains("secrets"), "{reason}");
        assert!(reason.contains("wide envelope"), "{reason}");
        // Back inside: the kube-apiservers move to the envelope again.
        let default = spec(Profile::Default, |_| {});
        assert_eq!(
            choose(released(&secrets_bodies), &default, Envelope::Wide),
            Choice::Wide { widening: None }
        );
    }
}
