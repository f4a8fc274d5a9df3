//! How fast a broken watch comes back. The operator and the agent restart the kube-apiserver they
//! watch through, by design, so every rollout breaks their watches; client-go's default back-off
//! grows towards half a minute while the server is down and then makes them deaf for that long
//! after it is back. They follow a handful of small objects, so retrying every two seconds at
//! most costs the server nothing.

use std::time::Duration;

/// The first wait after a failed watch, doubled per failure up to [`WATCH_BACKOFF_MAX`].
pub const WATCH_BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential back-off capped at [`WATCH_BACKOFF_MAX`], reset by the first event that arrives.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_FIRST,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn waits_double_up_to_two_seconds_and_reset() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(WATCH_BACKOFF_FIRST));
    }
}
