//! What the replicas share besides events and the catalog: small documents in one index of their
//! own (a lease, each replica's nodes), and events counted by group for the alert rules.

use reqwest::Method;
use serde_json::{Map, Value, json};

use clusteraudit_store::{
    GroupCountRequest, GroupCounts, SharedState, SharedVersion, StoreError, StoreFuture, WriteIf,
};

use crate::{OpenSearchError, OpenSearchStore, document, query};

/// Groups one composite aggregation page returns.
const PAGE: usize = 1_000;
/// Rules counted in one search, each a `filter` aggregation over the same pass of the events.
const RULES_PER_SEARCH: usize = 25;
/// Groups a rule counts within the shared search; a rule with more is counted again on its own,
/// page by page. With [`RULES_PER_SEARCH`], below OpenSearch's default `search.max_buckets`.
const GROUPS_IN_SHARED_SEARCH: usize = 2_000;

/// The index of the shared documents: outside the events' pattern, so it never takes their
/// mapping, and never searched except by kind.
pub fn shared_index(prefix: &str) -> String {
    format!("{prefix}-shared")
}

/// The day indices a window spans, named: a count reads no other day's shards (older days may
/// lack a column the count groups by, and would fail the whole count).
pub fn window_indices(prefix: &str, topic: &str, from_micros: i64, to_micros: i64) -> String {
    let (first, last) = (
        clusteraudit_store::day_of(from_micros.max(0)),
        clusteraudit_store::day_of(to_micros.max(from_micros).max(0)),
    );
    // A window is at most a day, and events are taken up to an hour ahead: three days at most,
    // but a caller asking for more gets the pattern rather than a URL too long.
    if last - first > 7 {
        return document::topic_index_pattern(prefix, topic);
    }
    (first..=last)
        .map(|day| document::index_name(prefix, topic, day))
        .collect::<Vec<_>>()
        .join(",")
}

/// The body of one page of a group count.
pub fn group_count_body(
    filter: Value,
    request: &GroupCountRequest,
    after: Option<&Value>,
    size: usize,
) -> Value {
    let mut body = json!({
        "query": query::within(filter, request.from, request.to),
        "size": 0,
        "track_total_hits": true,
    });
    if request.group_by.is_empty() {
        return body;
    }
    let sources: Vec<Value> = request
        .group_by
        .iter()
        .enumerate()
        .map(|(i, field)| {
            // An event without the field (a cluster-scoped request has no namespace) counts in
            // the group of "", as the collector's own matcher counts it.
            json!({ format!("g{i}"): {"terms": {"field": query::field_name(*field), "missing_bucket": true}} })
        })
        .collect();
    let mut composite = json!({"size": size, "sources": sources});
    if let Some(after) = after {
        composite["after"] = after.clone();
    }
    body["aggs"] = json!({"groups": {"composite": composite}});
    body
}

/// Each group's values and its count.
type Groups = Vec<(Vec<String>, u64)>;

/// The body of one search counting several rules: a `filter` aggregation per rule (its query
/// within its window) with its groups under it, `r0`, `r1`, ... in order.
pub fn rules_count_body(rules: &[(Value, &GroupCountRequest)]) -> Value {
    let from = rules.iter().map(|(_, r)| r.from).min().unwrap_or(0);
    let to = rules.iter().map(|(_, r)| r.to).max().unwrap_or(0);
    let mut aggs = Map::new();
    for (i, (filter, request)) in rules.iter().enumerate() {
        let mut aggregation =
            json!({"filter": query::within(filter.clone(), request.from, request.to)});
        let size = request.max_groups.clamp(1, GROUPS_IN_SHARED_SEARCH);
        // An event without the field counts in the group of "", as the collector's own matcher
        // counts it.
        let term = |field: &clusteraudit_core::query::Field| json!({"field": query::field_name(*field), "missing": ""});
        match request.group_by.as_slice() {
            [] => {}
            [field] => {
                let mut terms = term(field);
                terms["size"] = size.into();
                aggregation["aggs"] = json!({"groups": {"terms": terms}});
            }
            fields => {
                let terms: Vec<Value> = fields.iter().map(term).collect();
                aggregation["aggs"] =
                    json!({"groups": {"multi_terms": {"terms": terms, "size": size}}});
            }
        }
        aggs.insert(format!("r{i}"), aggregation);
    }
    json!({
        "query": query::within(json!({"match_all": {}}), from, to),
        "size": 0,
        "track_total_hits": false,
        "aggs": aggs,
    })
}

/// Each rule's counts from a [`rules_count_body`] answer; `complete` is false where the rule
/// has more groups than the search returned.
pub fn parse_rules_count(
    response: &Value,
    requests: &[&GroupCountRequest],
) -> Result<Vec<GroupCounts>, StoreError> {
    query::complete(response)?;
    let key_text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            // A search of no index at all (no event yet) answers without aggregations.
            let Some(aggregation) = response["aggregations"].get(format!("r{i}")) else {
                return GroupCounts {
                    groups: Vec::new(),
                    complete: true,
                };
            };
            if request.group_by.is_empty() {
                let count = aggregation["doc_count"].as_u64().unwrap_or(0);
                return GroupCounts {
                    groups: if count > 0 {
                        vec![(Vec::new(), count)]
                    } else {
                        Vec::new()
                    },
                    complete: true,
                };
            }
            let groups = &aggregation["groups"];
            let buckets = groups["buckets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            GroupCounts {
                groups: buckets
                    .iter()
                    .map(|bucket| {
                        let values = match &bucket["key"] {
                            Value::Array(parts) => parts.iter().map(key_text).collect(),
                            single => vec![key_text(single)],
                        };
                        (values, bucket["doc_count"].as_u64().unwrap_or(0))
                    })
                    .collect(),
                complete: groups["sum_other_doc_count"].as_u64().unwrap_or(0) == 0,
            }
        })
        .collect())
}

/// The groups of one page, and the key to ask the next page after (None: it was the last).
pub fn parse_group_page(
    response: &Value,
    group_by: usize,
) -> Result<(Groups, Option<Value>), StoreError> {
    query::complete(response)?;
    if group_by == 0 {
        let total = response["hits"]["total"]["value"].as_u64().unwrap_or(0);
        let groups = if total > 0 {
            vec![(Vec::new(), total)]
        } else {
            Vec::new()
        };
        return Ok((groups, None));
    }
    let aggregation = &response["aggregations"]["groups"];
    // A search of no index at all (no event yet) answers without aggregations.
    if aggregation.is_null() {
        return Ok((Vec::new(), None));
    }
    let buckets = aggregation["buckets"].as_array().ok_or_else(|| {
        StoreError::Unavailable("OpenSearch answered a group count without buckets".into())
    })?;
    let groups = buckets
        .iter()
        .map(|bucket| {
            let values = (0..group_by)
                .map(|i| match &bucket["key"][format!("g{i}")] {
                    Value::String(text) => text.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect();
            (values, bucket["doc_count"].as_u64().unwrap_or(0))
        })
        .collect::<Vec<_>>();
    let after = match aggregation.get("after_key") {
        Some(key) if !buckets.is_empty() => Some(key.clone()),
        _ => None,
    };
    Ok((groups, after))
}

impl OpenSearchStore {
    /// Counts rules in searches of [`RULES_PER_SEARCH`]; a rule whose query OpenSearch cannot
    /// take fails alone, and one with more groups than the shared search returns is counted on
    /// its own.
    async fn rules_counts(
        &self,
        topic: &str,
        requests: &[GroupCountRequest],
    ) -> Vec<Result<GroupCounts, StoreError>> {
        let mut results: Vec<Option<Result<GroupCounts, StoreError>>> =
            requests.iter().map(|_| None).collect();
        let mut compiled = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match query::compile(&request.query) {
                Ok(filter) => compiled.push((i, filter)),
                Err(err) => results[i] = Some(Err(err)),
            }
        }
        for chunk in compiled.chunks(RULES_PER_SEARCH) {
            let rules: Vec<(Value, &GroupCountRequest)> = chunk
                .iter()
                .map(|(i, filter)| (filter.clone(), &requests[*i]))
                .collect();
            let from = rules.iter().map(|(_, r)| r.from).min().unwrap_or(0);
            let to = rules.iter().map(|(_, r)| r.to).max().unwrap_or(0);
            let path = format!(
                "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
                window_indices(self.prefix(), topic, from, to)
            );
            let answer = self.search_request(&path, &rules_count_body(&rules)).await;
            let counted = answer.map_err(StoreError::from).and_then(|answer| {
                let asked: Vec<&GroupCountRequest> = rules.iter().map(|(_, r)| *r).collect();
                parse_rules_count(&answer, &asked)
            });
            match counted {
                Ok(counts) => {
                    for ((i, _), counts) in chunk.iter().zip(counts) {
                        let request = &requests[*i];
                        results[*i] = Some(
                            if counts.complete || request.max_groups <= GROUPS_IN_SHARED_SEARCH {
                                Ok(counts)
                            } else {
                                self.group_counts(topic, request).await
                            },
                        );
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    for (i, _) in chunk {
                        results[*i] = Some(Err(StoreError::Unavailable(reason.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Invalid("not counted".into()))))
            .collect()
    }

    async fn group_counts(
        &self,
        topic: &str,
        request: &GroupCountRequest,
    ) -> Result<GroupCounts, StoreError> {
        let filter = query::compile(&request.query)?;
        let path = format!(
            "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
            window_indices(self.prefix(), topic, request.from, request.to)
        );
        let mut counts = GroupCounts {
            groups: Vec::new(),
            complete: true,
        };
        let mut after = None;
        loop {
            let left = request.max_groups.saturating_sub(counts.groups.len());
            let size = left.clamp(1, PAGE);
            let body = group_count_body(filter.clone(), request, after.as_ref(), size);
            let answer = self.search_request(&path, &body).await?;
            let (groups, next) = parse_group_page(&answer, request.group_by.len())?;
            // A short page is the last: no need to ask for the empty one after it.
            let next = next.filter(|_| groups.len() >= size);
            counts.groups.extend(groups);
            match next {
                Some(_) if counts.groups.len() >= request.max_groups => {
                    counts.complete = false;
                    counts.groups.truncate(request.max_groups);
                    return Ok(counts);
                }
                Some(key) => after = Some(key),
                None => return Ok(counts),
            }
        }
    }

    /// Creates the shared index once (its documents are read by id or by kind, nothing else).
    async fn ensure_shared_index(&self) -> Result<(), OpenSearchError> {
        use std::sync::atomic::Ordering;
        if self.shared_ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.client()
            .expect_or(
                Method::PUT,
                &format!("/{}", shared_index(self.prefix())),
                Some(&document::small_index(json!({"kind": {"type": "keyword"}}))),
                "resource_already_exists_exception",
            )
            .await?;
        self.shared_ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn read_shared_doc(
        &self,
        id: &str,
    ) -> Result<Option<(Value, SharedVersion)>, OpenSearchError> {
        self.ensure_shared_index().await?;
        let path = format!("/{}/_doc/{id}", shared_index(self.prefix()));
        let answer = self.client().json(Method::GET, &path, None).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(OpenSearchError::Refused {
                request: format!("GET {path}"),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            });
        }
        let version = SharedVersion {
            seq_no: answer.body["_seq_no"].as_u64().unwrap_or(0),
            primary_term: answer.body["_primary_term"].as_u64().unwrap_or(0),
        };
        let mut value = answer.body["_source"].clone();
        if let Value::Object(map) = &mut value {
            map.remove("kind");
        }
        Ok(Some((value, version)))
    }

    async fn write_shared_doc(
        &self,
        id: &str,
        kind: &str,
        value: Value,
        condition: WriteIf,
    ) -> Result<bool, OpenSearchError> {
        self.ensure_shared_index().await?;
        let mut document = match value {
            Value::Object(map) => map,
            other => Map::from_iter([("value".to_string(), other)]),
        };
        document.insert("kind".into(), kind.into());
        let query = match condition {
            WriteIf::Always => String::new(),
            WriteIf::Absent => "?op_type=create".into(),
            WriteIf::Unchanged(version) => format!(
                "?if_seq_no={}&if_primary_term={}",
                version.seq_no, version.primary_term
            ),
        };
        let path = format!("/{}/_doc/{id}{query}", shared_index(self.prefix()));
        let answer = self
            .client()
            .json(Method::PUT, &path, Some(&Value::Object(document)))
            .await?;
        if answer.status == reqwest::StatusCode::CONFLICT {
            return Ok(false);
        }
        if !answer.is_success() {
            return Err(OpenSearchError::Refused {
                request: format!("PUT {path}"),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            });
        }
        Ok(true)
    }

    async fn list_shared_docs(&self, kind: &str) -> Result<Vec<Value>, OpenSearchError> {
        self.ensure_shared_index().await?;
        let path = format!("/{}/_search", shared_index(self.prefix()));
        let answer = self
            .client()
            .expect(
                Method::POST,
                &path,
                Some(&json!({"query": {"term": {"kind": kind}}, "size": 500})),
            )
            .await?;
        Ok(answer["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|hit| {
                let mut value = hit["_source"].clone();
                if let Value::Object(map) = &mut value {
                    map.remove("kind");
                }
                value
            })
            .collect())
    }
}

impl SharedState for OpenSearchStore {
    fn count_groups(
        &self,
        topic: String,
        requests: Vec<GroupCountRequest>,
    ) -> StoreFuture<'_, Vec<Result<GroupCounts, StoreError>>> {
        Box::pin(async move { Ok(self.rules_counts(&topic, &requests).await) })
    }

    fn read_shared(&self, id: String) -> StoreFuture<'_, Option<(Value, SharedVersion)>> {
        Box::pin(async move { Ok(self.read_shared_doc(&id).await?) })
    }

    fn write_shared(
        &self,
        id: String,
        kind: &'static str,
        value: Value,
        condition: WriteIf,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move { Ok(self.write_shared_doc(&id, kind, value, condition).await?) })
    }

    fn list_shared(&self, kind: &'static str) -> StoreFuture<'_, Vec<Value>> {
        Box::pin(async move { Ok(self.list_shared_docs(kind).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::query::{Field, Query};

    fn request(group_by: Vec<Field>) -> GroupCountRequest {
        GroupCountRequest {
            query: Query::All,
            from: 0,
            to: 10,
            group_by,
            max_groups: 5,
        }
    }

    #[test]
    fn groups_are_composite_sources_in_order_with_missing_values_as_empty() {
        let request = request(vec![Field::User, Field::Namespace]);
        let body = group_count_body(json!({"match_all": {}}), &request, None, 5);
        let sources = &body["aggs"]["groups"]["composite"]["sources"];
        assert_eq!(sources[0]["g0"]["terms"]["field"], "user");
        assert_eq!(sources[1]["g1"]["terms"]["field"], "namespace");
        assert_eq!(sources[1]["g1"]["terms"]["missing_bucket"], true);
        let answer = json!({
            "_shards": {"failed": 0},
            "aggregations": {"groups": {
                "after_key": {"g0": "bob", "g1": null},
                "buckets": [
                    {"key": {"g0": "alice", "g1": "default"}, "doc_count": 3},
                    {"key": {"g0": "bob", "g1": null}, "doc_count": 1},
                ],
            }},
        });
        let (groups, after) = parse_group_page(&answer, 2).unwrap();
        assert_eq!(
            groups,
            vec![
                (vec!["alice".to_string(), "default".to_string()], 3),
                (vec!["bob".to_string(), String::new()], 1),
            ]
        );
        assert_eq!(after, Some(json!({"g0": "bob", "g1": null})));
        let next = group_count_body(json!({"match_all": {}}), &request, after.as_ref(), 5);
        assert_eq!(next["aggs"]["groups"]["composite"]["after"]["g0"], "bob");
    }

    #[test]
    fn rules_are_filter_aggregations_with_their_groups_under_them() {
        let none = request(Vec::new());
        let one = request(vec![Field::User]);
        let two = request(vec![Field::User, Field::Namespace]);
        let rules = vec![
            (json!({"match_all": {}}), &none),
            (json!({"match_all": {}}), &one),
            (json!({"match_all": {}}), &two),
        ];
        let body = rules_count_body(&rules);
        assert_eq!(body["aggs"]["r0"].get("aggs"), None);
        assert_eq!(
            body["aggs"]["r1"]["aggs"]["groups"]["terms"]["field"],
            "user"
        );
        assert_eq!(body["aggs"]["r1"]["aggs"]["groups"]["terms"]["size"], 5);
        assert_eq!(
            body["aggs"]["r2"]["aggs"]["groups"]["multi_terms"]["terms"][1]["field"],
            "namespace"
        );
        let answer = json!({
            "_shards": {"failed": 0},
            "aggregations": {
                "r0": {"doc_count": 9},
                "r1": {"doc_count": 9, "groups": {"sum_other_doc_count": 2, "buckets": [
                    {"key": "alice", "doc_count": 7},
                ]}},
                "r2": {"doc_count": 9, "groups": {"sum_other_doc_count": 0, "buckets": [
                    {"key": ["alice", ""], "key_as_string": "alice|", "doc_count": 9},
                ]}},
            },
        });
        let counts = parse_rules_count(&answer, &[&none, &one, &two]).unwrap();
        assert_eq!(counts[0].groups, vec![(Vec::new(), 9)]);
        assert_eq!(counts[1].groups, vec![(vec!["alice".to_string()], 7)]);
        assert!(!counts[1].complete);
        assert_eq!(
            counts[2].groups,
            vec![(vec!["alice".to_string(), String::new()], 9)]
        );
        assert!(counts[2].complete);
        let empty = json!({"_shards": {"failed": 0}, "hits": {"hits": []}});
        assert!(
            parse_rules_count(&empty, &[&none, &one])
                .unwrap()
                .iter()
                .all(|c| c.groups.is_empty() && c.complete)
        );
    }

    #[test]
    fn a_count_reads_the_days_of_its_window_only() {
        let day = 86_400_000_000;
        assert_eq!(
            window_indices("ca", "tp-1", 20_000 * day + 5, 20_000 * day + 10),
            "ca-tp-1-2024.10.04"
        );
        assert_eq!(
            window_indices("ca", "tp-1", 20_000 * day - 5, 20_001 * day + 10),
            "ca-tp-1-2024.10.03,ca-tp-1-2024.10.04,ca-tp-1-2024.10.05"
        );
        assert_eq!(window_indices("ca", "tp-1", 0, 30 * day), "ca-tp-1-*");
    }

    #[test]
    fn without_group_fields_the_total_is_one_group() {
        let body = group_count_body(json!({"match_all": {}}), &request(Vec::new()), None, 5);
        assert!(body.get("aggs").is_none());
        let answer = json!({"_shards": {"failed": 0}, "hits": {"total": {"value": 7}}});
        assert_eq!(
            parse_group_page(&answer, 0).unwrap(),
            (vec![(Vec::new(), 7)], None)
        );
        let none = json!({"_shards": {"failed": 0}, "hits": {"total": {"value": 0}}});
        assert_eq!(parse_group_page(&none, 0).unwrap(), (Vec::new(), None));
    }
}
