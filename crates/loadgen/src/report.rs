use std::collections::BTreeMap;
use std::fmt;

use crate::FreshnessReport;

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Events in batches that were posted at least once (a retried batch counts once).
    pub events_sent: u64,
    /// Events in batches the collector answered 200.
    pub events_acked: u64,
    pub batches_acked: u64,
    /// Non-200 answers by HTTP status, one per answer (a batch throttled twice counts two 429s).
    pub batches_rejected: BTreeMap<u16, u64>,
    /// Attempts that got no HTTP answer at all (connect, TLS, reset, timeout).
    pub transport_errors: u64,
    pub seconds: f64,
    /// Acknowledged events per second of the run.
    pub events_per_second: f64,
    /// Send-to-response time of the attempts that got 200.
    pub ack_latency_ms: Percentiles,
    /// Acknowledgement to searchable, with `--freshness`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessReport>,
}

/// Nearest-rank percentiles; all zero when nothing was measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Sorts `samples` and takes nearest-rank percentiles (the smallest sample with at least p% of
    /// the samples at or below it). NaNs sort last.
    pub fn from_samples(samples: &mut [f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        samples.sort_by(f64::total_cmp);
        // rank = ceil(p/100 * n), in integers so that no rounding moves it.
        let rank = |percent: usize| {
            let n = samples.len();
            let rank = (percent * n).div_ceil(100);
            samples[rank.clamp(1, n) - 1]
        };
        Percentiles {
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: samples[samples.len() - 1],
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "acked {} of {} events sent ({} batches) in {:.2}s: {:.0} events/s",
            self.events_acked,
            self.events_sent,
            self.batches_acked,
            self.seconds,
            self.events_per_second
        )?;
        let rejected = if self.batches_rejected.is_empty() {
            "none".to_string()
        } else {
            self.batches_rejected
                .iter()
                .map(|(status, count)| format!("{status}\u{d7}{count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "rejected answers: {rejected}; transport errors: {}",
            self.transport_errors
        )?;
        let l = &self.ack_latency_ms;
        write!(
            f,
            "batch ack latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50, l.p90, l.p99, l.max
        )?;
        if let Some(freshness) = &self.freshness {
            write!(f, "\n{freshness}")?;
        }
        Ok(())
    }
}

impl fmt::Display for FreshnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.freshness_ms;
        writeln!(
            f,
            "freshness (ack to returned by search, {} of {} acknowledged markers found): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.markers_found, self.markers_acked, l.p50, l.p90, l.p99, l.max
        )?;
        writeln!(
            f,
            "  never found within {:.1} s after sending stopped: {}; markers in batches not acknowledged: {}",
            self.wait_seconds, self.markers_never_found, self.markers_unacked
        )?;
        let s = &self.search_latency_ms;
        write!(
            f,
            "  search load: {} queries ({} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.search_requests, self.search_errors, s.p50, s.p99, s.max
        )?;
        if let Some(err) = &self.last_search_error {
            write!(f, "\n  last search error: {err}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::from_samples(&mut samples);
        assert_eq!(
            p,
            Percentiles {
                p50: 50.0,
                p90: 90.0,
                p99: 99.0,
                max: 100.0
            }
        );
        let p = Percentiles::from_samples(&mut [7.5]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (7.5, 7.5, 7.5, 7.5));
        let p = Percentiles::from_samples(&mut [3.0, 1.0, 2.0]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (2.0, 3.0, 3.0, 3.0));
        let p = Percentiles::from_samples(&mut []);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.0, 0.0, 0.0, 0.0));
        let mut thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::from_samples(&mut thousand);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (500.0, 900.0, 990.0, 1000.0));
        // 10 samples: p90 is the 9th, p99 the 10th.
        let mut ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let p = Percentiles::from_samples(&mut ten);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (5.0, 9.0, 10.0, 10.0));
    }
}
