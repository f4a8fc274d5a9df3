//! Decoding what the kube-apiserver posts, and the write-ahead log's record of it.

use serde::Deserialize;
use serde_json::value::RawValue;

use clusteraudit_core::audit::Event;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("kind is {0:?}; expected EventList")]
    WrongKind(String),
    #[error("apiVersion is {0:?}; expected audit.k8s.io/v1")]
    WrongApiVersion(String),
    #[error("items[{index}] is not an audit event: {reason}")]
    BadEvent { index: usize, reason: String },
    #[error("the log record is damaged: {0}")]
    DamagedRecord(&'static str),
}

#[derive(Deserialize)]
struct RawEventList<'a> {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default, borrow)]
    items: Vec<&'a RawValue>,
}

/// Checks an `audit.k8s.io/v1` EventList and returns each item's exact bytes.
pub fn decode_event_list(body: &[u8]) -> Result<Vec<&str>, BatchError> {
    Ok(decode_timed_event_list(body)?
        .into_iter()
        .map(|(item, _)| item)
        .collect())
}

/// [`decode_event_list`], with each item's time (micros).
pub fn decode_timed_event_list(body: &[u8]) -> Result<Vec<(&str, i64)>, BatchError> {
    Ok(decode_parsed_event_list(body)?
        .into_iter()
        .map(|(item, time, _)| (item, time))
        .collect())
}

/// [`decode_timed_event_list`], with each item parsed, for the policy to judge it.
pub fn decode_parsed_event_list(body: &[u8]) -> Result<Vec<(&str, i64, Event)>, BatchError> {
    let list: RawEventList<'_> =
        serde_json::from_slice(body).map_err(|err| BatchError::NotJson(err.to_string()))?;
    match list.kind.as_deref() {
        Some("EventList") => {}
        other => return Err(BatchError::WrongKind(other.unwrap_or_default().into())),
    }
    match list.api_version.as_deref() {
        Some("audit.k8s.io/v1") => {}
        other => {
            return Err(BatchError::WrongApiVersion(
                other.unwrap_or_default().into(),
            ));
        }
    }
    let mut items = Vec::with_capacity(list.items.len());
    for (index, item) in list.items.iter().enumerate() {
        let event: Event =
            serde_json::from_str(item.get()).map_err(|err| BatchError::BadEvent {
                index,
                reason: err.to_string(),
            })?;
        let Some(time) = event.time_micros() else {
            return Err(BatchError::BadEvent {
                index,
                reason: "neither stageTimestamp nor requestReceivedTimestamp is an RFC 3339 time"
                    .into(),
            });
        };
        items.push((item.get(), time, event));
    }
    Ok(items)
}

/// How far past the collector's clock an event's time may be: clocks drift, but not by hours.
pub const MAX_AHEAD_MICROS: i64 = 3_600_000_000;

/// Why one event of a batch is refused while the rest is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeRefusal {
    /// More than [`MAX_AHEAD_MICROS`] after now.
    Future,
    /// On a day the topic's retention has already let go: it would be deleted at once, after
    /// opening a window of its own.
    PastRetention,
}

impl TimeRefusal {
    /// The reason label in /metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TimeRefusal::Future => "future",
            TimeRefusal::PastRetention => "past-retention",
        }
    }
}

/// Whether an event at `time` (micros) is taken now, for a topic that keeps `retention_days`
/// (none: not known yet, so only the future is refused).
pub fn check_time(time: i64, now: i64, retention_days: Option<u32>) -> Result<(), TimeRefusal> {
    if time > now.saturating_add(MAX_AHEAD_MICROS) {
        return Err(TimeRefusal::Future);
    }
    match retention_days {
        Some(days)
            if clusteraudit_store::expired(
                clusteraudit_store::day_of(time),
                clusteraudit_store::day_of(now),
                days,
            ) =>
        {
            Err(TimeRefusal::PastRetention)
        }
        _ => Ok(()),
    }
}

/// `[topic length u16][topic][count u32]([length u32][event])*`: one topic's section.
pub fn encode_record<S: AsRef<str>>(topic: &str, events: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    append_section(&mut out, topic, events);
    out
}

/// Adds a topic's section to a record. A record is one or more sections, so that one append (one
/// sync, one acknowledgement) covers a batch and the copies its routes make in other topics.
/// Records written before routes are one section, and read the same.
pub fn append_section<S: AsRef<str>>(out: &mut Vec<u8>, topic: &str, events: &[S]) {
    out.reserve(6 + topic.len() + events.iter().map(|e| 4 + e.as_ref().len()).sum::<usize>());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for event in events {
        let event = event.as_ref();
        out.extend_from_slice(&(event.len() as u32).to_le_bytes());
        out.extend_from_slice(event.as_bytes());
    }
}

/// A one-topic record's topic and events (the first section of a record).
pub fn decode_record(record: &[u8]) -> Result<(&str, Vec<&[u8]>), BatchError> {
    decode_section(record).map(|(section, _)| section)
}

/// Every section of a record: each topic with its events.
pub fn decode_sections(mut record: &[u8]) -> Result<Vec<Section<'_>>, BatchError> {
    let mut sections = Vec::with_capacity(1);
    while !record.is_empty() {
        let (section, used) = decode_section(record)?;
        sections.push(section);
        record = &record[used..];
    }
    Ok(sections)
}

/// A topic and its events.
pub type Section<'a> = (&'a str, Vec<&'a [u8]>);

/// The first section and the bytes it takes.
fn decode_section(record: &[u8]) -> Result<(Section<'_>, usize), BatchError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], BatchError> {
        let slice = record
            .get(at..at + n)
            .ok_or(BatchError::DamagedRecord("shorter than its lengths say"))?;
        at += n;
        Ok(slice)
    };
    let topic_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let topic = std::str::from_utf8(take(topic_len)?)
        .map_err(|_| BatchError::DamagedRecord("the topic is not UTF-8"))?;
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let mut events = Vec::with_capacity(count.min(100_000));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        events.push(take(len)?);
    }
    Ok(((topic, events), at))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api","verb":"get","user":{"username":"u"},"stageTimestamp":"2026-11-26T10:00:00.000001Z"}"#;

    #[test]
    fn an_event_list_decodes_to_its_items_exact_bytes() {
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{EVENT}, {EVENT}]}}"#
        );
        let items = decode_event_list(body.as_bytes()).unwrap();
        assert_eq!(items, vec![EVENT, EVENT]);
        let record = encode_record("tp-1", &items);
        let (topic, events) = decode_record(&record).unwrap();
        assert_eq!(topic, "tp-1");
        assert_eq!(events, vec![EVENT.as_bytes(), EVENT.as_bytes()]);
    }

    #[test]
    fn what_is_not_an_event_list_is_refused_with_a_reason() {
        type Expectation = fn(&BatchError) -> bool;
        let cases: [(&str, Expectation); 6] = [
            ("{", |e| matches!(e, BatchError::NotJson(_))),
            (
                r#"{"kind":"Pod","apiVersion":"v1"}"#,
                |e| matches!(e, BatchError::WrongKind(k) if k == "Pod"),
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}"#,
                |e| matches!(e, BatchError::WrongApiVersion(_)),
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"level":"Loud"}]}"#,
                |e| matches!(e, BatchError::BadEvent { index: 0, .. }),
            ),
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":"x"}"#,
                |e| matches!(e, BatchError::NotJson(_)),
            ),
            ("[1,2]", |e| matches!(e, BatchError::NotJson(_))),
        ];
        for (body, expected) in cases {
            let err = decode_event_list(body.as_bytes()).unwrap_err();
            assert!(expected(&err), "{body}: {err:?}");
        }
        let no_time = EVENT.replace(r#","stageTimestamp":"2026-11-26T10:00:00.000001Z""#, "");
        let body =
            format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{no_time}]}}"#);
        assert!(matches!(
            decode_event_list(body.as_bytes()),
            Err(BatchError::BadEvent { .. })
        ));
    }

    fn micros(time: &str) -> i64 {
        time.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn events_from_the_future_or_past_their_retention_are_refused() {
        let now = micros("2026-11-30T12:00:00Z");
        let ok = Ok(());
        // Up to an hour ahead is clock drift.
        assert_eq!(check_time(now, now, Some(7)), ok);
        assert_eq!(check_time(micros("2026-11-30T13:00:00Z"), now, Some(7)), ok);
        assert_eq!(
            check_time(micros("2026-11-30T13:00:00.000001Z"), now, Some(7)),
            Err(TimeRefusal::Future)
        );
        assert_eq!(
            check_time(micros("9999-01-01T00:00:00Z"), now, None),
            Err(TimeRefusal::Future)
        );
        // Seven whole days before today are kept, from their first microsecond.
        assert_eq!(check_time(micros("2026-11-23T00:00:00Z"), now, Some(7)), ok);
        assert_eq!(
            check_time(micros("2026-11-22T23:59:59.999999Z"), now, Some(7)),
            Err(TimeRefusal::PastRetention)
        );
        assert_eq!(
            check_time(micros("1970-01-01T00:00:00Z"), now, Some(365)),
            Err(TimeRefusal::PastRetention)
        );
        assert_eq!(
            check_time(micros("0001-01-01T00:00:00Z"), now, Some(7)),
            Err(TimeRefusal::PastRetention)
        );
        // A topic keeping nothing before today takes today only.
        assert_eq!(check_time(micros("2026-11-30T00:00:00Z"), now, Some(0)), ok);
        assert_eq!(
            check_time(micros("2026-11-29T23:59:59Z"), now, Some(0)),
            Err(TimeRefusal::PastRetention)
        );
        // Retention not known yet: only the future is refused.
        assert_eq!(check_time(micros("1970-01-01T00:00:00Z"), now, None), ok);
        // Just after midnight, yesterday's late events still count as the day before today.
        let midnight = micros("2026-12-01T00:00:00.5Z");
        assert_eq!(
            check_time(micros("2026-11-30T23:59:59Z"), midnight, Some(0)),
            Err(TimeRefusal::PastRetention)
        );
        assert_eq!(
            check_time(micros("2026-11-30T23:59:59Z"), midnight, Some(1)),
            ok
        );
        // The ends of the range do not overflow.
        assert_eq!(
            check_time(i64::MIN, now, Some(365)),
            Err(TimeRefusal::PastRetention)
        );
        assert_eq!(check_time(i64::MAX, now, None), Err(TimeRefusal::Future));
        assert_eq!(check_time(now, i64::MAX, Some(u32::MAX)), ok);
    }

    #[test]
    fn a_timed_event_list_gives_each_items_time() {
        let later = EVENT.replace("10:00:00.000001Z", "11:00:00Z");
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{EVENT},{later}]}}"#
        );
        let items = decode_timed_event_list(body.as_bytes()).unwrap();
        assert_eq!(
            items,
            vec![
                (EVENT, micros("2026-11-26T10:00:00.000001Z")),
                (later.as_str(), micros("2026-11-26T11:00:00Z"))
            ]
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let record = encode_record("t", &[EVENT]);
        for cut in 0..record.len() {
            assert!(decode_record(&record[..cut]).is_err());
        }
        let mut two = record.clone();
        append_section(&mut two, "u", &[EVENT, EVENT]);
        for cut in record.len() + 1..two.len() {
            assert!(decode_sections(&two[..cut]).is_err());
        }
    }

    #[test]
    fn a_record_holds_a_section_per_topic_and_an_old_record_is_one() {
        let mut record = encode_record("tp-main", &[EVENT, EVENT]);
        assert_eq!(
            decode_sections(&record).unwrap(),
            vec![("tp-main", vec![EVENT.as_bytes(); 2])]
        );
        append_section(&mut record, "tp-security", &[EVENT]);
        append_section::<&str>(&mut record, "tp-empty", &[]);
        assert_eq!(
            decode_sections(&record).unwrap(),
            vec![
                ("tp-main", vec![EVENT.as_bytes(); 2]),
                ("tp-security", vec![EVENT.as_bytes()]),
                ("tp-empty", vec![]),
            ]
        );
    }
}
