//! From the search language to the query DSL, and the search and stats requests around it.
//!
//! A query matches exactly the events the embedded store matches for it: keyword fields by exact
//! term or prefix, `code` by number, `auditID` whole, free text by all its words (split as the
//! embedded store splits them, see [`crate::document::words`]). Only queries Elasticsearch 8
//! shares are used.

use base64::Engine;
use serde_json::{Value, json};

use clusteraudit_core::query::{Field, Op, Query, Value as Operand};
use clusteraudit_store::{Stats, StatsRequest, StoreError, TimeBucket, TopValue};

use crate::document::{MAX_TIME_MICROS, rfc3339_nanos, truncate_keyword, unique_words};

/// The deepest nesting of queries [`compile`] makes: OpenSearch 3 refuses more than 20 levels by
/// default (Elasticsearch 8, 30), and [`search_body`] wraps the query in one more.
pub const MAX_DEPTH: usize = 19;

/// The most leaf queries [`compile`] makes: OpenSearch refuses a search of more than 1024
/// clauses, and the time range and sorting need a few.
pub const MAX_CLAUSES: usize = 1000;

/// The document field a query field searches.
pub(crate) fn field_name(field: Field) -> &'static str {
    match field {
        Field::User => "user",
        Field::Group => "groups",
        Field::Verb => "verb",
        Field::Resource => "resource",
        Field::Subresource => "subresource",
        Field::ApiGroup => "apiGroup",
        Field::Namespace => "namespace",
        Field::Name => "name",
        Field::Code => "code",
        Field::SourceIp => "sourceIPs",
        Field::UserAgent => "userAgent",
        Field::Stage => "stage",
        Field::Level => "level",
        Field::Decision => "decision",
        Field::Uri => "uri",
        Field::AuditId => "auditID",
        Field::ImpersonatedUser => "impersonatedUser",
        Field::RoleRef => "roleRef",
    }
}

/// The query DSL for a search query; Invalid for what the store cannot answer.
pub fn compile(query: &Query) -> Result<Value, StoreError> {
    let compiled = node(query)?;
    let (depth, clauses) = shape(&compiled);
    if depth > MAX_DEPTH {
        return Err(StoreError::Invalid(format!(
            "the query nests `and`, `or` and `not` {depth} levels deep; OpenSearch takes at most {MAX_DEPTH}"
        )));
    }
    if clauses > MAX_CLAUSES {
        return Err(StoreError::Invalid(format!(
            "the query has {clauses} terms; OpenSearch takes at most {MAX_CLAUSES}"
        )));
    }
    Ok(compiled)
}

fn match_all() -> Value {
    json!({"match_all": {}})
}

fn match_none() -> Value {
    json!({"match_none": {}})
}

fn term(field: &str, value: impl Into<Value>) -> Value {
    json!({"term": {field: {"value": value.into()}}})
}

fn exists(field: &str) -> Value {
    json!({"exists": {"field": field}})
}

fn node(query: &Query) -> Result<Value, StoreError> {
    Ok(match query {
        Query::All => match_all(),
        // Never parsed; an empty tantivy boolean query, as the embedded store makes of them,
        // matches nothing.
        Query::And(parts) | Query::Or(parts) if parts.is_empty() => match_none(),
        Query::And(parts) => {
            let (mut must, mut must_not) = (Vec::new(), Vec::new());
            conjunction(parts, &mut must, &mut must_not)?;
            boolean(must, must_not)
        }
        Query::Or(parts) => {
            let mut should = Vec::new();
            disjunction(parts, &mut should)?;
            json!({"bool": {"should": should, "minimum_should_match": 1}})
        }
        Query::Not(inner) => match inner.as_ref() {
            Query::Not(twice) => node(twice)?,
            inner => {
                let (mut must, mut must_not) = (Vec::new(), Vec::new());
                negation(inner, &mut must, &mut must_not)?;
                boolean(must, must_not)
            }
        },
        Query::Text(text) => free_text(text),
        Query::Field { field, op, value } => field_query(*field, *op, value)?,
    })
}

/// A `bool` requiring all of `must` and none of `must_not`, with a `match_all` to subtract from
/// when nothing is required, as the embedded store builds a negation: a `bool` of `must_not`
/// alone means the same to OpenSearch, but not at a glance.
fn boolean(mut must: Vec<Value>, must_not: Vec<Value>) -> Value {
    if must.is_empty() {
        must.push(match_all());
    }
    let mut clauses = serde_json::Map::new();
    clauses.insert("must".into(), Value::Array(must));
    if !must_not.is_empty() {
        clauses.insert("must_not".into(), Value::Array(must_not));
    }
    json!({"bool": clauses})
}

// The three functions below fold what they can into the enclosing `bool` (negations into its
// `must_not`, words of free text into its `must`), so the DSL nests no deeper than the query's
// alternations of `and`, `or` and `not`: OpenSearch bounds that depth.

/// Adds the clauses of `parts`, all required, to a conjunction.
fn conjunction(
    parts: &[Query],
    must: &mut Vec<Value>,
    must_not: &mut Vec<Value>,
) -> Result<(), StoreError> {
    for part in parts {
        match part {
            Query::And(inner) if !inner.is_empty() => conjunction(inner, must, must_not)?,
            Query::Not(inner) => negation(inner, must, must_not)?,
            Query::Text(text) => match unique_words(text).as_slice() {
                [] => must.push(match_all()),
                words => must.extend(words.iter().map(|word| term("text", word.as_str()))),
            },
            part => must.push(node(part)?),
        }
    }
    Ok(())
}

/// Adds `not inner` to a conjunction.
fn negation(
    inner: &Query,
    must: &mut Vec<Value>,
    must_not: &mut Vec<Value>,
) -> Result<(), StoreError> {
    match inner {
        Query::Not(twice) => conjunction(std::slice::from_ref(twice.as_ref()), must, must_not),
        // Matching none of the alternatives is what `must_not` says of its list.
        Query::Or(alternatives) if !alternatives.is_empty() => disjunction(alternatives, must_not),
        inner => {
            must_not.push(node(inner)?);
            Ok(())
        }
    }
}

/// Adds the alternatives of `parts` to a disjunction.
fn disjunction(parts: &[Query], should: &mut Vec<Value>) -> Result<(), StoreError> {
    for part in parts {
        match part {
            Query::Or(inner) if !inner.is_empty() => disjunction(inner, should)?,
            part => should.push(node(part)?),
        }
    }
    Ok(())
}

/// Events whose request path or object name holds every word of `text`; all events when it has
/// none, as in the embedded store.
fn free_text(text: &str) -> Value {
    match unique_words(text).as_slice() {
        [] => match_all(),
        [word] => term("text", word.as_str()),
        words => {
            let must: Vec<Value> = words.iter().map(|w| term("text", w.as_str())).collect();
            json!({"bool": {"must": must}})
        }
    }
}

fn field_query(field: Field, op: Op, value: &Operand) -> Result<Value, StoreError> {
    let name = field_name(field);
    if field == Field::AuditId {
        // The embedded store keeps only a hash of each auditID.
        return match value {
            Operand::Exact(id) => Ok(term(name, truncate_keyword(id))),
            Operand::Prefix(prefix) if prefix.is_empty() => Ok(match_all()),
            _ => Err(StoreError::Invalid("auditID matches whole IDs only".into())),
        };
    }
    if field.is_numeric() {
        return Ok(number_query(name, op, value));
    }
    // The parser allows comparisons on numeric fields only; like the embedded store, any other
    // operator a built query carries is taken as `:`.
    Ok(match value {
        Operand::Exact(text) => term(name, truncate_keyword(text)),
        Operand::Prefix(prefix) if prefix.is_empty() => exists(name),
        Operand::Prefix(prefix) => json!({"prefix": {name: {"value": truncate_keyword(prefix)}}}),
        Operand::Number(number) => term(name, number.to_string()),
    })
}

/// A comparison with `code`, an `integer` field: documents hold 0..=i32::MAX, and a number
/// beyond that is answered here, since OpenSearch refuses it as out of range.
fn number_query(name: &str, op: Op, value: &Operand) -> Value {
    let Operand::Number(number) = *value else {
        // `code:*`; the embedded store also reads any other text here as "has a code".
        return exists(name);
    };
    let Ok(number) = i32::try_from(number) else {
        return match op {
            Op::Lt | Op::Le => exists(name),
            Op::Eq | Op::Gt | Op::Ge => match_none(),
        };
    };
    let bound = match op {
        Op::Eq => return term(name, number),
        Op::Lt => "lt",
        Op::Le => "lte",
        Op::Gt => "gt",
        Op::Ge => "gte",
    };
    json!({"range": {name: {bound: number}}})
}

/// The nesting depth and the number of leaf queries of a compiled query.
fn shape(query: &Value) -> (usize, usize) {
    let Some(clauses) = query.get("bool") else {
        return (1, 1);
    };
    let (mut depth, mut leaves) = (0, 0);
    for occur in ["must", "should", "must_not", "filter"] {
        for clause in clauses[occur].as_array().into_iter().flatten() {
            let (d, l) = shape(clause);
            depth = depth.max(d);
            leaves += l;
        }
    }
    (depth + 1, leaves)
}

/// `filter` restricted to events stamped within [from, to] (micros).
pub(crate) fn within(filter: Value, from_micros: i64, to_micros: i64) -> Value {
    // `date_nanos` holds nothing outside these, and some versions refuse bounds beyond them.
    let (from, to) = (from_micros.max(0), to_micros.min(MAX_TIME_MICROS));
    let range = if from > to {
        match_none()
    } else {
        json!({"range": {"time": {
            "gte": rfc3339_nanos(from),
            "lte": rfc3339_nanos(to),
            "format": "strict_date_optional_time_nanos",
        }}})
    };
    json!({"bool": {"filter": [filter, range]}})
}

/// Where a page ended: the sort values of its last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The event's time as OpenSearch sorts `date_nanos`: nanoseconds since the epoch.
    pub time: i64,
    /// The event's document id, which orders events of the same time.
    pub id: String,
}

impl Cursor {
    /// Opaque and URL-safe.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}.{}", self.time, self.id))
    }

    pub fn decode(cursor: &str) -> Result<Cursor, StoreError> {
        let invalid =
            || StoreError::Invalid(format!("{cursor:?} is not a cursor this server gave out"));
        if cursor.len() > 200 {
            return Err(invalid());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (time, id) = text.split_once('.').ok_or_else(invalid)?;
        let time = time.parse().map_err(|_| invalid())?;
        // Only document ids go back to OpenSearch, never text a client made up.
        let id_like = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_like {
            return Err(invalid());
        }
        Ok(Cursor {
            time,
            id: id.to_string(),
        })
    }
}

/// The body of a `_search` for the newest `size` events matching `filter` within [from, to]
/// (micros), after `after`. Ties in time are ordered by document id, so a page boundary never
/// falls ambiguously inside a group of events of the same time.
pub fn search_body(
    filter: Value,
    from_micros: i64,
    to_micros: i64,
    size: usize,
    after: Option<&Cursor>,
) -> Value {
    let mut body = json!({
        "query": within(filter, from_micros, to_micros),
        // `numeric_type` makes sort values nanoseconds whatever an index maps `time` as, so
        // cursors keep one unit.
        "sort": [
            {"time": {"order": "desc", "numeric_type": "date_nanos"}},
            {"id": {"order": "desc"}},
        ],
        "size": size,
        "track_total_hits": false,
        "_source": ["raw"],
    });
    if let Some(after) = after {
        // The time as a number: as a string it would be parsed as a date.
        body["search_after"] = json!([after.time, after.id]);
    }
    body
}

/// The raw events of a search answer, and the cursor after the last one kept when the answer
/// holds more than `limit` (ask for `limit + 1` to know whether another page follows).
pub fn parse_page(
    response: &Value,
    limit: usize,
) -> Result<(Vec<String>, Option<Cursor>), StoreError> {
    complete(response)?;
    let hits = response["hits"]["hits"]
        .as_array()
        .ok_or_else(|| malformed("it has no hits"))?;
    let kept = &hits[..hits.len().min(limit)];
    // A document without its raw event cannot be shown; like the embedded store, the page
    // leaves it out rather than failing for good.
    let events = kept
        .iter()
        .filter_map(|hit| hit["_source"]["raw"].as_str().map(str::to_string))
        .collect();
    let cursor = match kept.last() {
        Some(last) if hits.len() > limit => Some(cursor_of(last)?),
        _ => None,
    };
    Ok((events, cursor))
}

fn cursor_of(hit: &Value) -> Result<Cursor, StoreError> {
    let sort = &hit["sort"];
    let time = match &sort[0] {
        Value::String(text) => text.parse().ok(),
        value => value.as_i64(),
    };
    match (time, sort[1].as_str()) {
        (Some(time), Some(id)) => Ok(Cursor {
            time,
            id: id.to_string(),
        }),
        _ => Err(malformed(&format!("a hit's sort values are {sort}"))),
    }
}

/// The histogram's `fixed_interval` for `interval_micros`, and the interval it stands for:
/// `date_histogram` counts in milliseconds at finest, so a finer remainder rounds up.
fn fixed_interval(interval_micros: i64) -> (String, i64) {
    let interval = interval_micros.max(1);
    let millis = interval / 1000 + i64::from(interval % 1000 != 0);
    let text = if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    };
    (text, millis.saturating_mul(1000))
}

/// The body of a `_search` counting the events matching `filter` within [from, to] (micros): in
/// all, per `interval_micros`, and for the `top` most frequent values of `field`. Pass the
/// request's `effective_interval()` and `effective_top()`, which [`parse_stats`] reports.
pub fn stats_body(
    filter: Value,
    from_micros: i64,
    to_micros: i64,
    field: &str,
    interval_micros: i64,
    top: usize,
) -> Value {
    let top = top.max(1);
    json!({
        "query": within(filter, from_micros, to_micros),
        "size": 0,
        "track_total_hits": true,
        "aggs": {
            // Like the embedded store: from the first non-empty bucket to the last, with the
            // empty ones between.
            "over_time": {"date_histogram": {
                "field": "time",
                "fixed_interval": fixed_interval(interval_micros).0,
                "min_doc_count": 0,
            }},
            // The same margin per shard as the embedded store gives each segment.
            "top": {"terms": {"field": field, "size": top, "shard_size": top * 10 + 100}},
        },
    })
}

/// The stats in an answer to [`stats_body`] made for `request`.
pub fn parse_stats(response: &Value, request: &StatsRequest) -> Result<Stats, StoreError> {
    complete(response)?;
    let total = &response["hits"]["total"];
    let total = total
        .as_u64()
        .or_else(|| total["value"].as_u64())
        .ok_or_else(|| malformed("it has no total"))?;
    let aggregations = &response["aggregations"];
    let count = |bucket: &Value| {
        bucket["doc_count"]
            .as_u64()
            .ok_or_else(|| malformed(&format!("a bucket is {bucket}")))
    };
    // No aggregations come back when no index of the topic exists yet.
    let mut over_time = Vec::new();
    for bucket in aggregations["over_time"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = &bucket["key"];
        let millis = key
            .as_i64()
            .or_else(|| key.as_f64().map(|f| f as i64))
            .ok_or_else(|| malformed(&format!("a time bucket is {bucket}")))?;
        over_time.push(TimeBucket {
            start: millis.saturating_mul(1000),
            count: count(bucket)?,
        });
    }
    let mut top = Vec::new();
    for bucket in aggregations["top"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let value = match &bucket["key"] {
            Value::String(text) => text.clone(),
            number @ Value::Number(_) => number.to_string(),
            _ => return Err(malformed(&format!("a top bucket is {bucket}"))),
        };
        top.push(TopValue {
            value,
            count: count(bucket)?,
        });
    }
    Ok(Stats {
        total,
        interval_micros: fixed_interval(request.effective_interval()).1,
        by: request.by.field_name().to_string(),
        over_time,
        top,
    })
}

/// Unavailable for an answer missing shards: a page or a count from part of the data would
/// pass for the whole.
pub(crate) fn complete(response: &Value) -> Result<(), StoreError> {
    if response["timed_out"] == true {
        return Err(StoreError::Unavailable(
            "OpenSearch timed out before searching every shard".into(),
        ));
    }
    let shards = &response["_shards"];
    let failed = shards["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        let reason = shards["failures"][0]["reason"]["reason"]
            .as_str()
            .unwrap_or("no reason given");
        return Err(StoreError::Unavailable(format!(
            "{failed} of {} shards failed to answer: {reason}",
            shards["total"]
        )));
    }
    Ok(())
}

fn malformed(what: &str) -> StoreError {
    StoreError::backend(
        "OpenSearch's search answer",
        format!("unexpected answer: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::query::{MAX_DEPTH as PARSER_MAX_DEPTH, parse};
    use clusteraudit_store::StatsField;

    fn compiled(input: &str) -> Value {
        let query = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        compile(&query).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    fn field(field: Field, op: Op, value: Operand) -> Query {
        Query::Field { field, op, value }
    }

    fn invalid(result: Result<Value, StoreError>) -> String {
        match result {
            Err(StoreError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_field_searches_its_document_field() {
        let cases = [
            ("user", "user"),
            ("group", "groups"),
            ("verb", "verb"),
            ("resource", "resource"),
            ("subresource", "subresource"),
            ("apiGroup", "apiGroup"),
            ("namespace", "namespace"),
            ("name", "name"),
            ("sourceIP", "sourceIPs"),
            ("userAgent", "userAgent"),
            ("stage", "stage"),
            ("level", "level"),
            ("decision", "decision"),
            ("uri", "uri"),
            ("auditID", "auditID"),
            ("impersonatedUser", "impersonatedUser"),
            ("roleRef", "roleRef"),
        ];
        for (name, target) in cases {
            assert_eq!(
                compiled(&format!("{name}:x")),
                json!({"term": {target: {"value": "x"}}}),
                "{name}"
            );
        }
        for field in Field::ALL {
            let target = field_name(field);
            let template = crate::document::index_template("p");
            assert!(
                template["template"]["mappings"]["properties"][target].is_object(),
                "{field} searches the unmapped {target}"
            );
        }
    }

    #[test]
    fn keyword_values() {
        assert_eq!(
            compiled("user:\"john doe\""),
            json!({"term": {"user": {"value": "john doe"}}})
        );
        assert_eq!(
            compiled("user:system:serviceaccount:kube-system:*"),
            json!({"prefix": {"user": {"value": "system:serviceaccount:kube-system:"}}})
        );
        assert_eq!(compiled("ns:*"), json!({"exists": {"field": "namespace"}}));
        assert_eq!(
            compiled("apiGroup:\"\""),
            json!({"term": {"apiGroup": {"value": ""}}})
        );
        assert_eq!(
            compiled("name:\"web\"*"),
            json!({"prefix": {"name": {"value": "web"}}})
        );
        // Case is kept: keyword fields match exactly, as in the embedded store.
        assert_eq!(
            compiled("verb:GET"),
            json!({"term": {"verb": {"value": "GET"}}})
        );
        // A number on a keyword field (never parsed, but a built query may hold one).
        assert_eq!(
            compile(&field(Field::User, Op::Eq, Operand::Number(42))).unwrap(),
            json!({"term": {"user": {"value": "42"}}})
        );
        // So may a comparison: taken as `:`, as the embedded store does.
        assert_eq!(
            compile(&field(Field::Verb, Op::Gt, Operand::Exact("get".into()))).unwrap(),
            json!({"term": {"verb": {"value": "get"}}})
        );
    }

    #[test]
    fn long_values_are_truncated_like_documents() {
        let long = "u".repeat(crate::document::MAX_KEYWORD_BYTES + 100);
        let cut = "u".repeat(crate::document::MAX_KEYWORD_BYTES);
        assert_eq!(
            compile(&field(Field::User, Op::Eq, Operand::Exact(long.clone()))).unwrap(),
            json!({"term": {"user": {"value": cut}}})
        );
        assert_eq!(
            compile(&field(Field::User, Op::Eq, Operand::Prefix(long.clone()))).unwrap(),
            json!({"prefix": {"user": {"value": cut}}})
        );
        assert_eq!(
            compile(&field(Field::AuditId, Op::Eq, Operand::Exact(long))).unwrap(),
            json!({"term": {"auditID": {"value": cut}}})
        );
    }

    #[test]
    fn codes_compare_as_numbers() {
        assert_eq!(
            compiled("code:404"),
            json!({"term": {"code": {"value": 404}}})
        );
        assert_eq!(
            compiled("status<500"),
            json!({"range": {"code": {"lt": 500}}})
        );
        assert_eq!(
            compiled("code<=499"),
            json!({"range": {"code": {"lte": 499}}})
        );
        assert_eq!(compiled("code>0"), json!({"range": {"code": {"gt": 0}}}));
        assert_eq!(
            compiled("code>=400"),
            json!({"range": {"code": {"gte": 400}}})
        );
        assert_eq!(compiled("code:*"), json!({"exists": {"field": "code"}}));
        // Beyond what any document holds: answered without asking OpenSearch to parse it.
        for (input, expected) in [
            (
                "code:2147483647",
                json!({"term": {"code": {"value": 2147483647}}}),
            ),
            ("code:2147483648", json!({"match_none": {}})),
            ("code>99999999999", json!({"match_none": {}})),
            ("code>=99999999999", json!({"match_none": {}})),
            ("code<99999999999", json!({"exists": {"field": "code"}})),
            (
                "code<=18446744073709551615",
                json!({"exists": {"field": "code"}}),
            ),
        ] {
            assert_eq!(compiled(input), expected, "{input}");
        }
        // Text on `code` (never parsed) means "has a code" in the embedded store.
        assert_eq!(
            compile(&field(Field::Code, Op::Eq, Operand::Exact("x".into()))).unwrap(),
            json!({"exists": {"field": "code"}})
        );
    }

    #[test]
    fn comparisons_on_text_fields_never_get_here() {
        assert!(parse("user>alice").is_err());
        assert!(parse("verb<=get").is_err());
        assert!(parse("id>5").is_err());
    }

    #[test]
    fn audit_ids_match_whole() {
        assert_eq!(
            compiled("id:0b7d5a0e-1234"),
            json!({"term": {"auditID": {"value": "0b7d5a0e-1234"}}})
        );
        assert_eq!(compiled("auditID:*"), json!({"match_all": {}}));
        let query = parse("auditID:0b7d*").unwrap();
        assert_eq!(invalid(compile(&query)), "auditID matches whole IDs only");
        let number = field(Field::AuditId, Op::Eq, Operand::Number(5));
        assert_eq!(invalid(compile(&number)), "auditID matches whole IDs only");
        // Deep inside a query too.
        let nested = parse("user:a or (verb:get -auditID:x*)").unwrap();
        assert_eq!(invalid(compile(&nested)), "auditID matches whole IDs only");
    }

    #[test]
    fn free_text_needs_every_word() {
        assert_eq!(
            compiled("Deployments"),
            json!({"term": {"text": {"value": "deployments"}}})
        );
        assert_eq!(
            compiled("\"apps/v1 web_1\""),
            json!({"bool": {"must": [
                {"term": {"text": {"value": "apps"}}},
                {"term": {"text": {"value": "v1"}}},
                {"term": {"text": {"value": "web"}}},
                {"term": {"text": {"value": "1"}}},
            ]}})
        );
        assert_eq!(
            compiled("\"a/a/A\""),
            json!({"term": {"text": {"value": "a"}}})
        );
        // Nothing left to match on: everything, as in the embedded store.
        assert_eq!(compiled("///"), json!({"match_all": {}}));
        assert_eq!(
            compile(&Query::Text("  ".into())).unwrap(),
            json!({"match_all": {}})
        );
        assert_eq!(
            compiled(&"x".repeat(40)),
            json!({"match_all": {}}),
            "a word too long to be indexed"
        );
    }

    #[test]
    fn boolean_structure() {
        assert_eq!(compiled(""), json!({"match_all": {}}));
        assert_eq!(
            compiled("user:a verb:get"),
            json!({"bool": {"must": [
                {"term": {"user": {"value": "a"}}},
                {"term": {"verb": {"value": "get"}}},
            ]}})
        );
        assert_eq!(
            compiled("user:a or user:b"),
            json!({"bool": {"should": [
                {"term": {"user": {"value": "a"}}},
                {"term": {"user": {"value": "b"}}},
            ], "minimum_should_match": 1}})
        );
        assert_eq!(
            compiled("not user:a"),
            json!({"bool": {
                "must": [{"match_all": {}}],
                "must_not": [{"term": {"user": {"value": "a"}}}],
            }})
        );
        assert_eq!(
            compiled("(user:a or user:b) -verb:get"),
            json!({"bool": {
                "must": [{"bool": {"should": [
                    {"term": {"user": {"value": "a"}}},
                    {"term": {"user": {"value": "b"}}},
                ], "minimum_should_match": 1}}],
                "must_not": [{"term": {"verb": {"value": "get"}}}],
            }})
        );
        assert_eq!(
            compiled("user:a or not verb:get"),
            json!({"bool": {"should": [
                {"term": {"user": {"value": "a"}}},
                {"bool": {
                    "must": [{"match_all": {}}],
                    "must_not": [{"term": {"verb": {"value": "get"}}}],
                }},
            ], "minimum_should_match": 1}})
        );
    }

    #[test]
    fn negations_and_words_fold_into_the_enclosing_bool() {
        // Words of free text join the conjunction's `must`.
        assert_eq!(
            compiled("user:a \"kube-system pods\""),
            json!({"bool": {"must": [
                {"term": {"user": {"value": "a"}}},
                {"term": {"text": {"value": "kube"}}},
                {"term": {"text": {"value": "system"}}},
                {"term": {"text": {"value": "pods"}}},
            ]}})
        );
        // Only negations: still a `match_all` to subtract from.
        assert_eq!(
            compiled("-user:a -verb:get"),
            json!({"bool": {
                "must": [{"match_all": {}}],
                "must_not": [
                    {"term": {"user": {"value": "a"}}},
                    {"term": {"verb": {"value": "get"}}},
                ],
            }})
        );
        // `not (a or b)` is "neither", which a `must_not` list says directly.
        assert_eq!(
            compiled("code>=400 not (user:a or user:b)"),
            json!({"bool": {
                "must": [{"range": {"code": {"gte": 400}}}],
                "must_not": [
                    {"term": {"user": {"value": "a"}}},
                    {"term": {"user": {"value": "b"}}},
                ],
            }})
        );
        assert_eq!(
            compiled("not (user:a or user:b)"),
            json!({"bool": {
                "must": [{"match_all": {}}],
                "must_not": [
                    {"term": {"user": {"value": "a"}}},
                    {"term": {"user": {"value": "b"}}},
                ],
            }})
        );
        // `not (a b)` stays one clause: "not both".
        assert_eq!(
            compiled("not (user:a verb:get)"),
            json!({"bool": {
                "must": [{"match_all": {}}],
                "must_not": [{"bool": {"must": [
                    {"term": {"user": {"value": "a"}}},
                    {"term": {"verb": {"value": "get"}}},
                ]}}],
            }})
        );
        // Double negations cancel.
        assert_eq!(
            compiled("not not user:a"),
            json!({"term": {"user": {"value": "a"}}})
        );
        assert_eq!(
            compiled("verb:get --(user:a user:b)"),
            json!({"bool": {"must": [
                {"term": {"verb": {"value": "get"}}},
                {"term": {"user": {"value": "a"}}},
                {"term": {"user": {"value": "b"}}},
            ]}})
        );
        assert_eq!(compiled("not not not user:a"), compiled("not user:a"));
        // Nested conjunctions and disjunctions of a built query flatten.
        let nested = Query::And(vec![
            Query::And(vec![field(Field::User, Op::Eq, Operand::Exact("a".into()))]),
            Query::Or(vec![Query::Or(vec![
                Query::Text("x".into()),
                Query::Text("y".into()),
            ])]),
        ]);
        assert_eq!(
            compile(&nested).unwrap(),
            json!({"bool": {"must": [
                {"term": {"user": {"value": "a"}}},
                {"bool": {"should": [
                    {"term": {"text": {"value": "x"}}},
                    {"term": {"text": {"value": "y"}}},
                ], "minimum_should_match": 1}},
            ]}})
        );
    }

    #[test]
    fn empty_conjunctions_and_disjunctions_match_nothing() {
        // As an empty tantivy boolean query in the embedded store; the parser makes neither.
        assert_eq!(
            compile(&Query::And(vec![])).unwrap(),
            json!({"match_none": {}})
        );
        assert_eq!(
            compile(&Query::Or(vec![])).unwrap(),
            json!({"match_none": {}})
        );
        assert_eq!(
            compile(&Query::Not(Box::new(Query::Or(vec![])))).unwrap(),
            json!({"bool": {"must": [{"match_all": {}}], "must_not": [{"match_none": {}}]}})
        );
    }

    #[test]
    fn too_deep_or_too_wide_queries_are_invalid() {
        // Each level alternates `or` and `and`, so nothing folds.
        let nest = |levels: usize| {
            let mut query = String::from("user:z");
            for i in 0..levels {
                query = format!("user:a{i} (user:b{i} or {query})");
            }
            query
        };
        let deepest_allowed = (MAX_DEPTH - 1) / 2;
        assert_eq!(shape(&compiled(&nest(deepest_allowed))).0, MAX_DEPTH);
        let query = parse(&nest(deepest_allowed + 1)).unwrap();
        assert!(invalid(compile(&query)).contains("levels deep"));

        // The deepest the parser allows, made of negations only, folds away entirely.
        let negations = format!("{}user:a", "-".repeat(PARSER_MAX_DEPTH));
        assert_eq!(
            compiled(&negations),
            json!({"term": {"user": {"value": "a"}}})
        );

        // Longer than the parser takes, but a built query may be this wide.
        let words = |n: usize| Query::And((0..n).map(|i| Query::Text(format!("u{i}"))).collect());
        assert!(invalid(compile(&words(MAX_CLAUSES + 1))).contains("terms"));
        assert_eq!(shape(&compile(&words(MAX_CLAUSES)).unwrap()).1, MAX_CLAUSES);
    }

    #[test]
    fn search_bodies() {
        let filter = compiled("user:a");
        let body = search_body(
            filter.clone(),
            1_764_504_000_000_000,
            1_764_507_600_000_000,
            51,
            None,
        );
        assert_eq!(
            body,
            json!({
                "query": {"bool": {"filter": [
                    filter,
                    {"range": {"time": {
                        "gte": "2025-11-30T12:00:00.000000000Z",
                        "lte": "2025-11-30T13:00:00.000000000Z",
                        "format": "strict_date_optional_time_nanos",
                    }}},
                ]}},
                "sort": [
                    {"time": {"order": "desc", "numeric_type": "date_nanos"}},
                    {"id": {"order": "desc"}},
                ],
                "size": 51,
                "track_total_hits": false,
                "_source": ["raw"],
            })
        );

        let after = Cursor {
            time: 1_764_504_000_123_456_000,
            id: "AbC-_0123456789abcdefghi".into(),
        };
        let body = search_body(match_all(), 0, 1, 2, Some(&after));
        assert_eq!(
            body["search_after"],
            json!([1_764_504_000_123_456_000i64, "AbC-_0123456789abcdefghi"])
        );
        assert!(body["search_after"][0].is_i64());
    }

    #[test]
    fn time_ranges_stay_within_date_nanos() {
        let range = |from, to| {
            search_body(match_all(), from, to, 1, None)["query"]["bool"]["filter"][1].clone()
        };
        assert_eq!(
            range(i64::MIN, i64::MAX)["range"]["time"],
            json!({
                "gte": "1970-01-01T00:00:00.000000000Z",
                "lte": "2262-04-11T23:47:16.854775000Z",
                "format": "strict_date_optional_time_nanos",
            })
        );
        assert_eq!(range(5, 4), json!({"match_none": {}}));
        assert_eq!(range(-10, -1), json!({"match_none": {}}));
        assert_eq!(
            range(MAX_TIME_MICROS + 1, i64::MAX),
            json!({"match_none": {}})
        );
        assert_eq!(
            range(7, 7)["range"]["time"]["gte"],
            "1970-01-01T00:00:00.000007000Z"
        );
    }

    #[test]
    fn cursors_round_trip() {
        for cursor in [
            Cursor {
                time: 1_764_504_000_123_456_000,
                id: crate::document::document_id("abc", "ResponseComplete"),
            },
            Cursor {
                time: 0,
                id: "a".into(),
            },
            Cursor {
                time: -5,
                id: "-_".into(),
            },
            Cursor {
                time: i64::MAX,
                id: "z".repeat(64),
            },
        ] {
            let encoded = cursor.encode();
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{encoded}"
            );
            assert_eq!(Cursor::decode(&encoded).unwrap(), cursor);
        }
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        for garbage in [
            String::new(),
            "1764504000.3".into(),
            "!!!!".into(),
            "YWJj=".into(),
            b64("abc"),
            b64("12.id.more"),
            b64("x.id"),
            b64("12."),
            b64("12.id with space"),
            b64("12.\"quote"),
            b64(&format!("12.{}", "a".repeat(65))),
            b64("99999999999999999999.id"),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'.', b'a']),
            "A".repeat(1000),
        ] {
            match Cursor::decode(&garbage) {
                Err(StoreError::Invalid(message)) => assert_eq!(
                    message,
                    format!("{garbage:?} is not a cursor this server gave out")
                ),
                other => panic!("{garbage:?} decoded to {other:?}"),
            }
        }
    }

    fn hit(raw: &str, time: i64, id: &str) -> Value {
        json!({
            "_index": "clusteraudit-tp-0123456789abcdef-2025.11.30",
            "_id": id,
            "_score": null,
            "_source": {"raw": raw},
            "sort": [time, id],
        })
    }

    fn answer(hits: Vec<Value>) -> Value {
        json!({
            "took": 3,
            "timed_out": false,
            "_shards": {"total": 2, "successful": 2, "skipped": 0, "failed": 0},
            "hits": {"max_score": null, "hits": hits},
        })
    }

    #[test]
    fn pages_end_with_a_cursor_only_when_more_came_back() {
        let hits = vec![
            hit(r#"{"n":3}"#, 3_000, "c"),
            hit(r#"{"n":2}"#, 2_000, "b"),
            hit(r#"{"n":1}"#, 2_000, "a"),
        ];
        let (events, cursor) = parse_page(&answer(hits.clone()), 2).unwrap();
        assert_eq!(events, [r#"{"n":3}"#, r#"{"n":2}"#]);
        assert_eq!(
            cursor,
            Some(Cursor {
                time: 2_000,
                id: "b".into()
            })
        );

        let (events, cursor) = parse_page(&answer(hits.clone()), 3).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(cursor, None);
        let (events, cursor) = parse_page(&answer(hits[..1].to_vec()), 3).unwrap();
        assert_eq!(events, [r#"{"n":3}"#]);
        assert_eq!(cursor, None);
        let (events, cursor) = parse_page(&answer(vec![]), 3).unwrap();
        assert!(events.is_empty());
        assert_eq!(cursor, None);
    }

    #[test]
    fn page_edge_cases() {
        // A hit without its raw event is left out, and paging still goes on past it.
        let mut broken = hit("x", 2_000, "b");
        broken["_source"] = json!({});
        let hits = vec![hit("{}", 3_000, "c"), broken, hit("{}", 1_000, "a")];
        let (events, cursor) = parse_page(&answer(hits), 2).unwrap();
        assert_eq!(events, ["{}"]);
        assert_eq!(cursor.unwrap().id, "b");

        // Sort values as strings, as some proxies re-encode longs.
        let mut stringly = hit("{}", 0, "a");
        stringly["sort"] = json!(["1764504000123456000", "a"]);
        let (_, cursor) = parse_page(&answer(vec![stringly, hit("{}", 0, "0")]), 1).unwrap();
        assert_eq!(cursor.unwrap().time, 1_764_504_000_123_456_000);

        let mut unsorted = hit("{}", 0, "a");
        unsorted.as_object_mut().unwrap().remove("sort");
        let err = parse_page(&answer(vec![unsorted.clone(), hit("{}", 0, "0")]), 1).unwrap_err();
        assert!(matches!(err, StoreError::Backend { .. }), "{err}");
        // Without a next page the sort values are not needed.
        assert!(parse_page(&answer(vec![unsorted]), 1).is_ok());

        assert!(matches!(
            parse_page(&json!({"error": "x"}), 1),
            Err(StoreError::Backend { .. })
        ));
    }

    #[test]
    fn partial_answers_are_unavailable() {
        let mut partial = answer(vec![hit("{}", 1, "a")]);
        partial["_shards"] = json!({"total": 3, "successful": 2, "skipped": 0, "failed": 1,
            "failures": [{"shard": 0, "index": "i", "reason": {"type": "x", "reason": "node left"}}]});
        match parse_page(&partial, 10) {
            Err(StoreError::Unavailable(message)) => {
                assert_eq!(message, "1 of 3 shards failed to answer: node left")
            }
            other => panic!("{other:?}"),
        }
        let mut late = answer(vec![]);
        late["timed_out"] = json!(true);
        assert!(matches!(
            parse_page(&late, 10),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            parse_stats(&late, &stats_request(StatsField::User, 60_000_000)),
            Err(StoreError::Unavailable(_))
        ));
    }

    fn stats_request(by: StatsField, interval_micros: i64) -> StatsRequest {
        StatsRequest {
            query: Query::All,
            from: 1_764_504_000_000_000,
            to: 1_764_507_600_000_000,
            by,
            interval_micros,
            top: 5,
        }
    }

    #[test]
    fn stats_bodies() {
        let request = stats_request(StatsField::Code, 60_000_000);
        let filter = compiled("verb:get");
        let body = stats_body(
            filter.clone(),
            request.from,
            request.to,
            request.by.field_name(),
            request.effective_interval(),
            request.effective_top(),
        );
        assert_eq!(
            body,
            json!({
                "query": {"bool": {"filter": [
                    filter,
                    {"range": {"time": {
                        "gte": "2025-11-30T12:00:00.000000000Z",
                        "lte": "2025-11-30T13:00:00.000000000Z",
                        "format": "strict_date_optional_time_nanos",
                    }}},
                ]}},
                "size": 0,
                "track_total_hits": true,
                "aggs": {
                    "over_time": {"date_histogram": {
                        "field": "time",
                        "fixed_interval": "60s",
                        "min_doc_count": 0,
                    }},
                    "top": {"terms": {"field": "code", "size": 5, "shard_size": 150}},
                },
            })
        );
    }

    #[test]
    fn histogram_intervals() {
        assert_eq!(fixed_interval(1_000_000), ("1s".into(), 1_000_000));
        assert_eq!(
            fixed_interval(3_600_000_000),
            ("3600s".into(), 3_600_000_000)
        );
        assert_eq!(fixed_interval(1_500_000), ("1500ms".into(), 1_500_000));
        assert_eq!(fixed_interval(1_500_001), ("1501ms".into(), 1_501_000));
        assert_eq!(fixed_interval(999_999_999), ("1000s".into(), 1_000_000_000));
        assert_eq!(fixed_interval(0), ("1ms".into(), 1_000));
        assert_eq!(
            fixed_interval(i64::MAX).0,
            format!("{}ms", i64::MAX / 1000 + 1)
        );
    }

    #[test]
    fn stats_answers() {
        let response = json!({
            "took": 5,
            "timed_out": false,
            "_shards": {"total": 2, "successful": 2, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": 7, "relation": "eq"}, "max_score": null, "hits": []},
            "aggregations": {
                "over_time": {"buckets": [
                    {"key_as_string": "2025-11-30T12:00:00.000Z", "key": 1_764_504_000_000i64, "doc_count": 4},
                    {"key_as_string": "2025-11-30T12:01:00.000Z", "key": 1_764_504_060_000i64, "doc_count": 0},
                    {"key_as_string": "2025-11-30T12:02:00.000Z", "key": 1_764_504_120_000i64, "doc_count": 3},
                ]},
                "top": {
                    "doc_count_error_upper_bound": 0,
                    "sum_other_doc_count": 0,
                    "buckets": [
                        {"key": 200, "doc_count": 5},
                        {"key": 404, "doc_count": 2},
                    ],
                },
            },
        });
        let stats = parse_stats(&response, &stats_request(StatsField::Code, 60_000_000)).unwrap();
        assert_eq!(stats.total, 7);
        assert_eq!(stats.interval_micros, 60_000_000);
        assert_eq!(stats.by, "code");
        let buckets: Vec<(i64, u64)> = stats.over_time.iter().map(|b| (b.start, b.count)).collect();
        assert_eq!(
            buckets,
            [
                (1_764_504_000_000_000, 4),
                (1_764_504_060_000_000, 0),
                (1_764_504_120_000_000, 3)
            ]
        );
        let top: Vec<(&str, u64)> = stats
            .top
            .iter()
            .map(|t| (t.value.as_str(), t.count))
            .collect();
        assert_eq!(top, [("200", 5), ("404", 2)]);

        let mut users = response.clone();
        users["aggregations"]["top"]["buckets"] =
            json!([{"key": "alice", "doc_count": 6}, {"key": "", "doc_count": 1}]);
        let stats = parse_stats(&users, &stats_request(StatsField::User, 1_500_000)).unwrap();
        let top: Vec<(&str, u64)> = stats
            .top
            .iter()
            .map(|t| (t.value.as_str(), t.count))
            .collect();
        assert_eq!(top, [("alice", 6), ("", 1)]);
        assert_eq!(stats.by, "user");
        assert_eq!(
            stats.interval_micros, 2_000_000,
            "widened to at most 2000 buckets"
        );

        // The interval reported is the one the histogram used.
        let mut minute = stats_request(StatsField::User, 1_500_500);
        minute.to = minute.from + 60_000_000;
        let stats = parse_stats(&users, &minute).unwrap();
        assert_eq!(stats.interval_micros, 1_501_000);
        let body = stats_body(
            match_all(),
            minute.from,
            minute.to,
            "user",
            minute.effective_interval(),
            minute.effective_top(),
        );
        assert_eq!(
            body["aggs"]["over_time"]["date_histogram"]["fixed_interval"],
            "1501ms"
        );
    }

    #[test]
    fn stats_of_a_topic_without_indices() {
        let response = json!({
            "took": 0,
            "timed_out": false,
            "_shards": {"total": 0, "successful": 0, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": 0, "relation": "eq"}, "max_score": 0.0, "hits": []},
        });
        let stats = parse_stats(&response, &stats_request(StatsField::Verb, 60_000_000)).unwrap();
        assert_eq!(stats.total, 0);
        assert!(stats.over_time.is_empty());
        assert!(stats.top.is_empty());
    }

    #[test]
    fn malformed_stats_answers() {
        let request = stats_request(StatsField::User, 60_000_000);
        assert!(matches!(
            parse_stats(&json!({"hits": {}}), &request),
            Err(StoreError::Backend { .. })
        ));
        let bad_bucket = json!({
            "hits": {"total": {"value": 1}},
            "aggregations": {"over_time": {"buckets": [{"key": "soon", "doc_count": 1}]}},
        });
        assert!(matches!(
            parse_stats(&bad_bucket, &request),
            Err(StoreError::Backend { .. })
        ));
        let bad_top = json!({
            "hits": {"total": 1},
            "aggregations": {"top": {"buckets": [{"key": null, "doc_count": 1}]}},
        });
        assert!(matches!(
            parse_stats(&bad_top, &request),
            Err(StoreError::Backend { .. })
        ));
    }
}
