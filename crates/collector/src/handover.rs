//! Events the webhook decoded, handed to whoever drains the log with the record they came in, so
//! that an event is decoded once on its way from the webhook to the store.
//!
//! The log stays the only truth: the drain still reads every record's bytes back from disk, and
//! stores and keeps those. What it is handed only spares it decoding them again. The log's writer
//! puts a record's decoded events here before it makes the record visible to the drain (before
//! `durable_end` moves past it), so a drain that keeps up always finds them. A drain that is
//! behind by more than the budget, that reads records again after a failure, or that replays the
//! log after a restart finds nothing and decodes the bytes itself, as it always could.

use std::{collections::BTreeMap, sync::Mutex};

use clusteraudit_core::audit::Event;

use super::wal::Position;

/// The decoded events of one log record, in the order of its sections and their events.
pub struct Decoded {
    /// Each event of the record's first section, with its time (micros); `None` where the
    /// logged bytes are not the bytes that were decoded (a policy reduced the event).
    events: Vec<Option<(Event, i64)>>,
    /// For every further section (a route's copies), which of `events` it holds, in order.
    copies: Vec<Vec<usize>>,
}

impl Decoded {
    pub fn new(events: Vec<Option<(Event, i64)>>, copies: Vec<Vec<usize>>) -> Decoded {
        Decoded { events, copies }
    }

    /// The decoded form of each event of section `section`, aligned with its items; `None`
    /// when this record has no such section or a different number of events in it, which
    /// would mean the record is not the one these were decoded from.
    pub fn section(&self, section: usize, items: usize) -> Option<Vec<Option<(&Event, i64)>>> {
        let decoded = |index: &usize| self.events.get(*index)?.as_ref().map(|(e, t)| (e, *t));
        let events: Vec<_> = match section {
            0 => self
                .events
                .iter()
                .map(|e| e.as_ref().map(|(e, t)| (e, *t)))
                .collect(),
            n => self.copies.get(n - 1)?.iter().map(decoded).collect(),
        };
        (events.len() == items).then_some(events)
    }
}

/// Decoded records waiting for the drain, keyed by the log position each record ends at.
pub struct Handover {
    /// The most bytes of records (as logged) whose decoded events are held at once: decoded
    /// events take about twice the memory of their bytes.
    budget: usize,
    state: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    records: BTreeMap<Position, (Decoded, usize)>,
    bytes: usize,
}

/// 32 MiB of records: a third of a second at 100k events/s, far more than a drain that keeps
/// up is ever behind.
pub const BUDGET_BYTES: usize = 32 * 1024 * 1024;

impl Handover {
    pub fn new(budget: usize) -> Handover {
        Handover {
            budget,
            state: Mutex::new(Held::default()),
        }
    }

    /// Whether a record would still be held: when not, the caller keeps its decoded events and
    /// frees them itself, so that the log's writer, which acknowledges batches, seldom has to.
    pub fn has_room(&self) -> bool {
        self.held().bytes < self.budget
    }

    /// Holds the decoded events of the record of `bytes` ending at `end`, unless that would
    /// go over the budget: then the drain decodes that record itself.
    pub fn put(&self, end: Position, decoded: Decoded, bytes: usize) {
        let mut held = self.held();
        if held.bytes + bytes > self.budget {
            return;
        }
        held.bytes += bytes;
        held.records.insert(end, (decoded, bytes));
    }

    /// The decoded events of the record ending at `end`, if held. Records before it are passed
    /// over by the reader (or were read before a restart of the drain) and are let go.
    pub fn take(&self, end: Position) -> Option<Decoded> {
        let mut held = self.held();
        let later = held.records.split_off(&(end + 1));
        let passed = std::mem::replace(&mut held.records, later);
        let mut found = None;
        for (at, (decoded, bytes)) in passed {
            held.bytes -= bytes;
            if at == end {
                found = Some(decoded);
            }
        }
        found
    }

    /// Lets every held record go: the drain reads the log again from an earlier position.
    pub fn clear(&self) {
        *self.held() = Held::default();
    }

    /// Bytes of records held.
    pub fn held_bytes(&self) -> usize {
        self.held().bytes
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("budget", &self.budget)
            .field("held_bytes", &self.held_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api","verb":"get","user":{{"username":"u"}},"stageTimestamp":"2026-11-26T10:00:00.000001Z"}}"#
        ))
        .unwrap()
    }

    fn ids(section: Option<Vec<Option<(&Event, i64)>>>) -> Option<Vec<Option<String>>> {
        section.map(|events| {
            events
                .into_iter()
                .map(|e| e.map(|(e, _)| e.audit_id.clone()))
                .collect()
        })
    }

    #[test]
    fn a_record_is_taken_once_with_its_sections_aligned() {
        let handover = Handover::new(1000);
        let decoded = Decoded::new(
            vec![Some((event("a"), 1)), None, Some((event("c"), 3))],
            vec![vec![2, 1]],
        );
        handover.put(100, decoded, 10);
        let taken = handover.take(100).unwrap();
        assert_eq!(
            ids(taken.section(0, 3)),
            Some(vec![Some("a".into()), None, Some("c".into())])
        );
        assert_eq!(ids(taken.section(1, 2)), Some(vec![Some("c".into()), None]));
        // A count that differs means other bytes: nothing is used.
        assert!(taken.section(0, 2).is_none());
        assert!(taken.section(2, 1).is_none());
        assert!(handover.take(100).is_none());
        assert_eq!(handover.held_bytes(), 0);
    }

    #[test]
    fn records_passed_over_are_let_go_and_the_budget_holds() {
        let handover = Handover::new(25);
        for end in [10, 20, 30] {
            handover.put(end, Decoded::new(vec![], vec![]), 10);
        }
        // The third did not fit.
        assert_eq!(handover.held_bytes(), 20);
        assert!(handover.take(30).is_none());
        assert_eq!(handover.held_bytes(), 0);
        handover.put(40, Decoded::new(vec![], vec![]), 10);
        handover.put(50, Decoded::new(vec![], vec![]), 10);
        assert!(handover.take(50).is_some());
        assert_eq!(handover.held_bytes(), 0);
        handover.put(60, Decoded::new(vec![], vec![]), 10);
        handover.clear();
        assert!(handover.take(60).is_none());
    }
}
