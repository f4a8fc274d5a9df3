//! Batches rendered once and sent again with each event's auditID and times made anew.
//!
//! The load generator shares the machine with the collector it measures. Making every event and
//! encoding it as JSON cost it about half a core at 50,000 events/s, a quarter of a two-core
//! machine taken from the collector. A rendered batch is copied and only the bytes that must
//! differ are written over: the auditID (36 bytes) and both timestamps (27 bytes each, always six
//! decimals), keeping each event's own latency. Everything else repeats after the pool: with 64
//! batches of 400 that is 25,600 events, 25 MB, far more than the collector's compression window.

use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use clusteraudit_core::audit::EventList;

/// Batches of the full size rendered before the pool is reused.
pub const POOL_BATCHES: usize = 64;

const ID_KEY: &[u8] = br#""auditID":""#;
const RECEIVED_KEY: &[u8] = br#""requestReceivedTimestamp":""#;
const STAGE_KEY: &[u8] = br#""stageTimestamp":""#;
const ID_LEN: usize = 36;
const TIME_LEN: usize = 27;

/// Where one event's stamps are in a rendered body.
struct Stamps {
    id_at: usize,
    received_at: usize,
    stage_at: usize,
    /// From receipt to the stage, as generated.
    took: SignedDuration,
}

pub struct RenderedBatch {
    body: Vec<u8>,
    events: Vec<Stamps>,
}

impl RenderedBatch {
    /// The list's body as [`crate::event_list_json`] renders it, with where each event's stamps
    /// are; `None` if an event lacks one or has one of another length (then it cannot be
    /// stamped anew in place).
    pub fn render(list: &EventList) -> Option<RenderedBatch> {
        let mut body = Vec::with_capacity(96 + list.items.len() * 900);
        body.extend_from_slice(crate::sender::LIST_HEAD);
        let mut events = Vec::with_capacity(list.items.len());
        for (i, event) in list.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            serde_json::to_writer(&mut body, event).expect("an Event always serializes");
            let rendered = &body[start..];
            // The auditID comes before any body, the timestamps after them all.
            let id_at = start + find(rendered, ID_KEY)? + ID_KEY.len();
            let received_at = start + rfind(rendered, RECEIVED_KEY)? + RECEIVED_KEY.len();
            let stage_at = start + rfind(rendered, STAGE_KEY)? + STAGE_KEY.len();
            let received: Timestamp = event.request_received_timestamp.as_deref()?.parse().ok()?;
            let stage: Timestamp = event.stage_timestamp.as_deref()?.parse().ok()?;
            let holds = |at: usize, len: usize, text: &str| {
                body.get(at..at + len) == Some(text.as_bytes()) && body.get(at + len) == Some(&b'"')
            };
            if !holds(id_at, ID_LEN, &event.audit_id)
                || !holds(
                    received_at,
                    TIME_LEN,
                    event.request_received_timestamp.as_deref()?,
                )
                || !holds(stage_at, TIME_LEN, event.stage_timestamp.as_deref()?)
            {
                return None;
            }
            events.push(Stamps {
                id_at,
                received_at,
                stage_at,
                took: stage.duration_since(received),
            });
        }
        body.extend_from_slice(crate::sender::LIST_TAIL);
        Some(RenderedBatch { body, events })
    }

    /// The body, as rendered.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A copy whose events have new auditIDs (returned, in order) and are answered at `now`.
    pub fn restamped(&self, ids: &mut SmallRng, now: Timestamp) -> (Vec<u8>, Vec<String>) {
        let mut body = self.body.clone();
        let mut audit_ids = Vec::with_capacity(self.events.len());
        let stage = format!("{now:.6}");
        for stamps in &self.events {
            let id = uuid::Builder::from_random_bytes(ids.random())
                .into_uuid()
                .to_string();
            body[stamps.id_at..stamps.id_at + ID_LEN].copy_from_slice(id.as_bytes());
            let received = format!("{:.6}", now - stamps.took);
            body[stamps.received_at..stamps.received_at + TIME_LEN]
                .copy_from_slice(received.as_bytes());
            body[stamps.stage_at..stamps.stage_at + TIME_LEN].copy_from_slice(stage.as_bytes());
            audit_ids.push(id);
        }
        (body, audit_ids)
    }
}

/// The source of the auditIDs of restamped batches: seeded, so that a run is repeatable, and
/// apart from the generator's own.
pub fn id_source(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ 0x5eed_1d5a_c0ff_ee00)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::audit::Event;

    #[test]
    fn a_restamped_batch_is_the_same_events_with_new_ids_and_times() {
        let mut generator = crate::EventGenerator::new(7);
        let list = generator.next_list(400);
        let rendered =
            RenderedBatch::render(&list).expect("every generated event can be restamped");
        assert_eq!(rendered.body(), crate::event_list_json(&list));

        let now: Timestamp = "2030-01-02T03:04:05.678901Z".parse().unwrap();
        let mut ids = id_source(7);
        let (body, audit_ids) = rendered.restamped(&mut ids, now);
        let again: EventList = serde_json::from_slice(&body).unwrap();
        assert_eq!(again.items.len(), 400);
        assert_eq!(audit_ids.len(), 400);
        let distinct: std::collections::HashSet<_> = audit_ids.iter().collect();
        assert_eq!(distinct.len(), 400);
        for ((old, new), id) in list.items.iter().zip(&again.items).zip(&audit_ids) {
            assert_eq!(&new.audit_id, id);
            assert_ne!(new.audit_id, old.audit_id);
            assert_eq!(
                new.stage_timestamp.as_deref(),
                Some("2030-01-02T03:04:05.678901Z")
            );
            let took = |e: &Event| {
                let at = |t: &Option<String>| t.as_deref().unwrap().parse::<Timestamp>().unwrap();
                at(&e.stage_timestamp).duration_since(at(&e.request_received_timestamp))
            };
            assert_eq!(took(new), took(old));
            // Everything else is as generated.
            let mut same = new.clone();
            same.audit_id = old.audit_id.clone();
            same.stage_timestamp = old.stage_timestamp.clone();
            same.request_received_timestamp = old.request_received_timestamp.clone();
            assert_eq!(
                serde_json::to_string(&same).unwrap(),
                serde_json::to_string(old).unwrap()
            );
        }
        // Another restamping gives other IDs.
        let (_, second) = rendered.restamped(&mut ids, now);
        assert!(second.iter().all(|id| !distinct.contains(id)));
    }
}
