//! The `_bulk` request the shipper sends, and what each item's answer means.

use serde_json::Value;

use super::document::{Document, index_name};

/// One event on its way to OpenSearch.
#[derive(Clone, Debug)]
pub struct Item {
    pub topic: String,
    pub document: Document,
    /// The event exactly as received, for the dead-letter file.
    pub raw: String,
}

impl Item {
    pub fn index(&self, prefix: &str) -> String {
        index_name(
            prefix,
            &self.topic,
            clusteraudit_store::day_of(self.document.time_micros),
        )
    }
}

/// The NDJSON body of a bulk request. `create` rather than `index`: a replayed event is
/// answered 409 and left as it is, instead of being written again.
pub fn body(prefix: &str, items: &[Item]) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(|i| i.raw.len() * 2 + 200).sum());
    for item in items {
        let action =
            serde_json::json!({"create": {"_index": item.index(prefix), "_id": item.document.id}});
        serde_json::to_writer(&mut body, &action).expect("JSON serializes");
        body.push(b'\n');
        serde_json::to_writer(&mut body, &item.document.body).expect("JSON serializes");
        body.push(b'\n');
    }
    body
}

/// What became of one item of a bulk request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now, or already there from an earlier attempt (409).
    Stored,
    /// OpenSearch is busy or failed on its side (429, 5xx), or the index went away under the
    /// request (404): send it again.
    Retry(String),
    /// Refused for good (a mapping error, say): it goes to the dead-letter file.
    Refused { status: u16, reason: String },
}

/// The outcome of each item, in the order sent. An answer that does not account for every item
/// (a truncated or foreign body) marks the unaccounted ones for a retry.
pub fn outcomes(answer: &Value, sent: usize) -> Vec<Outcome> {
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    (0..sent)
        .map(|i| {
            let Some(item) = items.get(i) else {
                return Outcome::Retry("the bulk answer did not cover this item".into());
            };
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let status = result["status"].as_u64().unwrap_or(0) as u16;
            let reason = || {
                let error = &result["error"];
                format!(
                    "{}: {}",
                    error["type"].as_str().unwrap_or("error"),
                    error["reason"].as_str().unwrap_or("no reason given")
                )
            };
            match status {
                200..=299 | 409 => Outcome::Stored,
                // 404: the day's index was deleted (by retention, say) while the request was on
                // its way; sent again, the item creates it anew.
                404 | 429 | 500..=599 | 0 => Outcome::Retry(reason()),
                _ => Outcome::Refused {
                    status,
                    reason: reason(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_item_is_stored_retried_or_refused() {
        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [time]"}}},
            {"create": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary not active"}}},
        ]});
        let outcomes = outcomes(&answer, 6);
        assert_eq!(outcomes[0], Outcome::Stored);
        assert_eq!(outcomes[1], Outcome::Stored);
        assert!(matches!(&outcomes[2], Outcome::Retry(r) if r.contains("queue full")));
        assert_eq!(
            outcomes[3],
            Outcome::Refused {
                status: 400,
                reason: "mapper_parsing_exception: failed to parse field [time]".into()
            }
        );
        assert!(matches!(outcomes[4], Outcome::Retry(_)));
        assert!(
            matches!(outcomes[5], Outcome::Retry(_)),
            "an item the answer left out"
        );
    }
}
