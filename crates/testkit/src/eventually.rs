//! Waiting for something that happens on its own time (a process becoming ready, an event becoming
//! searchable, a rollout completing) by checking it again and again until a deadline.

use std::{fmt, time::Duration};

/// The pause after the first failed check: most conditions hold within milliseconds.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two checks: a condition is seen within this of becoming true, and a
/// check that asks a kube-apiserver costs nothing measurable at this rate.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// A wait that ran out of time, with what its last check saw.
pub struct TimedOut<E> {
    /// What was waited for, as the failure message says it.
    pub what: String,
    pub waited: Duration,
    pub last: E,
}

impl<E: fmt::Debug> fmt::Display for TimedOut<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1?} waiting for {}; last seen: {:#?}",
            self.waited, self.what, self.last
        )
    }
}

// The same text as Display, so that `unwrap` and `expect` on a wait read as a sentence.
impl<E: fmt::Debug> fmt::Debug for TimedOut<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<E: fmt::Debug> std::error::Error for TimedOut<E> {}

/// Checks until `check` returns `Ok`, and returns that; `Err` means "not yet" and carries what the
/// check saw, which the [`TimedOut`] after `deadline` reports. The check runs at once and a last
/// time at the deadline. A failure that no waiting can fix is an `Ok` of the caller's choosing
/// (`Ok(Err(..))`), so that the wait ends at once.
pub async fn eventually<T, E>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, TimedOut<E>> {
    let started = tokio::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match check().await {
            Ok(done) => return Ok(done),
            Err(last) => last,
        };
        let waited = started.elapsed();
        if waited >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                waited,
                last,
            });
        }
        tokio::time::sleep(pause.min(deadline - waited)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// [`eventually`] for code that runs outside an async runtime, such as `Drop`.
pub fn eventually_blocking<T, E>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, TimedOut<E>> {
    let started = std::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match check() {
            Ok(done) => return Ok(done),
            Err(last) => last,
        };
        let waited = started.elapsed();
        if waited >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                waited,
                last,
            });
        }
        std::thread::sleep(pause.min(deadline - waited));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_what_the_check_found_once_it_holds() {
        let mut calls = 0;
        let found = eventually("the third call", Duration::from_secs(10), async || {
            calls += 1;
            if calls == 3 { Ok(calls) } else { Err(calls) }
        })
        .await
        .unwrap();
        assert_eq!(found, 3);
    }

    #[tokio::test]
    async fn times_out_with_the_last_observation() {
        let mut calls = 0;
        let timed_out = eventually("never", Duration::from_millis(150), async || {
            calls += 1;
            Err::<(), _>(format!("call {calls}"))
        })
        .await
        .unwrap_err();
        assert!(timed_out.waited >= Duration::from_millis(150));
        assert_eq!(timed_out.last, format!("call {calls}"));
        // At once, and once more at the deadline.
        assert!(calls >= 2, "{calls}");
        let message = timed_out.to_string();
        assert!(message.contains("waiting for never"), "{message}");
        assert!(message.contains(&format!("call {calls}")), "{message}");
    }

    #[tokio::test]
    async fn a_check_that_holds_at_once_runs_once() {
        let mut calls = 0;
        eventually("at once", Duration::from_secs(10), async || {
            calls += 1;
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_blocking_wait_behaves_the_same() {
        let mut calls = 0;
        assert_eq!(
            eventually_blocking("the second call", Duration::from_secs(10), || {
                calls += 1;
                if calls == 2 { Ok(calls) } else { Err(calls) }
            })
            .unwrap(),
            2
        );
        let timed_out = eventually_blocking("never", Duration::from_millis(50), || Err::<(), _>(7))
            .unwrap_err();
        assert_eq!(timed_out.last, 7);
        assert!(timed_out.waited >= Duration::from_millis(50));
    }
}
