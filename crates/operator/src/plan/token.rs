//! Webhook token rotation, as pure code.
//!
//! The token the kube-apiservers present lives in one Secret, which the collector reads through a
//! volume: `token` is what revisions carry, `next` a token being handed to the collectors,
//! `previous` the one some kube-apiservers may still present. The collector accepts all three.
//!
//! A rotation (`clusteraudit.io/rotate-webhook-token` set to a value not yet handled) goes in
//! steps so that no batch is refused on the way:
//! 1. stage: a new token is written as `next`;
//! 2. promote, once the collector has had time to see `next` (the kubelet refreshes Secret volumes
//!    within its sync period) and accepts it: `token` becomes `previous`, `next` becomes `token`,
//!    and the revisions cut from then on carry it, rolled out through the restart guard;
//! 3. retire, once every node's kube-apiserver runs the revision with the new token: `previous`
//!    is dropped, and only the new token is accepted.
//!
//! A second rotation asked for while `previous` is still in use waits for it to be retired: two
//! tokens in flight at once would let a node's old token be dropped while it still presents it.

use std::time::{Duration, SystemTime};

/// What the token Secret holds (presence only: the decision never needs the values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFacts {
    pub token: bool,
    pub previous: bool,
    pub next: bool,
    /// When `next` was written.
    pub staged_at: Option<SystemTime>,
    /// The rotation annotation's value the last promotion answered.
    pub rotated_for: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenStep {
    /// Nothing to change.
    Keep,
    /// No token yet: make the first one.
    Create,
    /// A rotation is asked for: write a new token as `next`.
    Stage,
    /// `next` is staged but the collectors may not see it yet: look again after this long.
    AwaitPropagation(Duration),
    /// A rotation waits for the previous one's token to be retired.
    AwaitRetire,
    /// `next` may become the token, if the collector accepts it (the IO asks it).
    Promote,
    /// Every node presents the current token: drop `previous`.
    Retire,
    /// `next` was staged for a rotation nobody asks for any more: drop it, so that no accepted
    /// token lies around unused.
    Unstage,
}

/// The next step. `rolled_out_with_current`: every node's kube-apiserver runs the revision that
/// carries the current token. `propagation`: how long a Secret update may take to reach the
/// collectors' volumes.
pub fn step(
    facts: &TokenFacts,
    requested: Option<&str>,
    rolled_out_with_current: bool,
    now: SystemTime,
    propagation: Duration,
) -> TokenStep {
    if !facts.token {
        return TokenStep::Create;
    }
    if facts.previous && rolled_out_with_current {
        return TokenStep::Retire;
    }
    let pending = requested.filter(|asked| Some(*asked) != facts.rotated_for.as_deref());
    match (pending, facts.next) {
        (None, true) => TokenStep::Unstage,
        (None, false) => TokenStep::Keep,
        (Some(_), false) => TokenStep::Stage,
        (Some(_), true) if facts.previous => TokenStep::AwaitRetire,
        // A staged token without a time (written by hand, say) is staged afresh.
        (Some(_), true) => match facts.staged_at {
            None => TokenStep::Stage,
            Some(staged_at) => match (staged_at + propagation).duration_since(now) {
                Ok(wait) if !wait.is_zero() => TokenStep::AwaitPropagation(wait),
                _ => TokenStep::Promote,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROPAGATION: Duration = Duration::from_secs(120);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn settled(rotated_for: Option<&str>) -> TokenFacts {
        TokenFacts {
            token: true,
            rotated_for: rotated_for.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_token_is_created() {
        let step = step(&TokenFacts::default(), Some("1"), false, at(0), PROPAGATION);
        assert_eq!(step, TokenStep::Create);
    }

    #[test]
    fn nothing_happens_without_a_new_rotation_value() {
        assert_eq!(
            step(&settled(None), None, true, at(0), PROPAGATION),
            TokenStep::Keep
        );
        assert_eq!(
            step(&settled(Some("1")), Some("1"), true, at(0), PROPAGATION),
            TokenStep::Keep
        );
    }

    #[test]
    fn a_rotation_goes_stage_propagate_promote_retire() {
        let mut facts = settled(Some("1"));
        assert_eq!(
            step(&facts, Some("2"), true, at(0), PROPAGATION),
            TokenStep::Stage
        );

        facts.next = true;
        facts.staged_at = Some(at(0));
        assert_eq!(
            step(&facts, Some("2"), true, at(30), PROPAGATION),
            TokenStep::AwaitPropagation(Duration::from_secs(90))
        );
        assert_eq!(
            step(&facts, Some("2"), true, at(120), PROPAGATION),
            TokenStep::Promote
        );

        // Promoted: the nodes still run the old token's revision.
        facts = TokenFacts {
            token: true,
            previous: true,
            rotated_for: Some("2".into()),
            ..Default::default()
        };
        assert_eq!(
            step(&facts, Some("2"), false, at(130), PROPAGATION),
            TokenStep::Keep
        );
        assert_eq!(
            step(&facts, Some("2"), true, at(400), PROPAGATION),
            TokenStep::Retire
        );
    }

    #[test]
    fn a_second_rotation_waits_until_the_first_token_is_retired() {
        let facts = TokenFacts {
            token: true,
            previous: true,
            next: true,
            staged_at: Some(at(0)),
            rotated_for: Some("2".into()),
        };
        assert_eq!(
            step(&facts, Some("3"), false, at(500), PROPAGATION),
            TokenStep::AwaitRetire
        );
        assert_eq!(
            step(&facts, Some("3"), true, at(500), PROPAGATION),
            TokenStep::Retire
        );
    }

    #[test]
    fn a_staged_token_nobody_asks_for_is_dropped() {
        let facts = TokenFacts {
            token: true,
            next: true,
            staged_at: Some(at(0)),
            rotated_for: Some("2".into()),
            ..Default::default()
        };
        assert_eq!(
            step(&facts, None, true, at(10), PROPAGATION),
            TokenStep::Unstage
        );
        assert_eq!(
            step(&facts, Some("2"), true, at(10), PROPAGATION),
            TokenStep::Unstage
        );
    }

    #[test]
    fn a_staged_token_without_a_time_is_staged_afresh() {
        let facts = TokenFacts {
            token: true,
            next: true,
            ..Default::default()
        };
        assert_eq!(
            step(&facts, Some("1"), true, at(10), PROPAGATION),
            TokenStep::Stage
        );
    }
}
