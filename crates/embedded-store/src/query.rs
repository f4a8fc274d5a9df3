//! From the search language to tantivy queries over the window schema.

use std::ops::Bound;

use tantivy::{
    DocId, Score, SegmentReader, Term,
    query::{
        AllQuery, BooleanQuery, BoundsRange, EmptyQuery, EnableScoring, Explanation,
        FastFieldRangeWeight, InvertedIndexRangeWeight, Occur, Query as TantivyQuery, RangeQuery,
        Scorer, TermQuery, Weight,
    },
    schema::{Field as SchemaField, IndexRecordOption, Schema},
    tokenizer::TokenStream,
};

use super::index::Fields;
use clusteraudit_core::query::{Field, Op, Query, Value};

/// The window's field for a query field; `None` when the window was created before the field
/// existed, so none of its events has it.
fn schema_field(fields: &Fields, field: Field) -> Option<SchemaField> {
    Some(match field {
        Field::User => fields.user,
        Field::Group => fields.groups,
        Field::Verb => fields.verb,
        Field::Resource => fields.resource,
        Field::Subresource => fields.subresource,
        Field::ApiGroup => fields.api_group,
        Field::Namespace => fields.namespace,
        Field::Name => fields.name,
        Field::Code => fields.code,
        Field::SourceIp => fields.source_ip,
        Field::UserAgent => fields.user_agent,
        Field::Stage => fields.stage,
        Field::Level => fields.level,
        Field::Decision => fields.decision,
        Field::Uri => fields.uri,
        Field::AuditId => fields.audit_id,
        Field::ImpersonatedUser => return fields.impersonated_user,
        Field::RoleRef => return fields.role_ref,
    })
}

/// The tantivy query for a search query over one window, whose `fields` may lack the newer ones;
/// Invalid for what the store cannot answer.
pub fn translate(
    schema: &Schema,
    fields: &Fields,
    query: &Query,
) -> Result<Box<dyn TantivyQuery>, super::StoreError> {
    let all = |parts: &[Query], occur: Occur| -> Result<Box<dyn TantivyQuery>, super::StoreError> {
        Ok(Box::new(BooleanQuery::new(
            parts
                .iter()
                .map(|q| translate(schema, fields, q).map(|t| (occur, t)))
                .collect::<Result<_, _>>()?,
        )))
    };
    Ok(match query {
        Query::All => Box::new(AllQuery),
        Query::And(parts) => all(parts, Occur::Must)?,
        Query::Or(parts) => all(parts, Occur::Should)?,
        Query::Not(inner) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery)),
            (Occur::MustNot, translate(schema, fields, inner)?),
        ])),
        Query::Text(text) => free_text(schema, fields, text),
        Query::Field {
            field: Field::AuditId,
            value,
            ..
        } => match value {
            Value::Exact(id) => {
                let equal = |field, value| {
                    let term = Term::from_field_u64(field, value);
                    range(Bound::Included(term.clone()), Bound::Included(term))
                };
                match fields.lifted {
                    Some(lifted) => {
                        let (bits, _) = super::lifted::audit_id_bits(id);
                        Box::new(BooleanQuery::new(vec![
                            (Occur::Must, equal(lifted.high, (bits >> 64) as u64)),
                            (Occur::Must, equal(lifted.low, bits as u64)),
                        ]))
                    }
                    None => equal(fields.audit_id, super::index::audit_id_hash(id)),
                }
            }
            Value::Prefix(prefix) if prefix.is_empty() => Box::new(AllQuery),
            _ => {
                return Err(super::StoreError::Invalid(
                    "auditID matches whole IDs only".into(),
                ));
            }
        },
        Query::Field { field, op, value } => {
            let Some(target) = schema_field(fields, *field) else {
                return Ok(Box::new(EmptyQuery));
            };
            if field.is_numeric() {
                let Value::Number(number) = value else {
                    // `code:*`: any event that has a code. Codes are stored from 0 up, and tantivy
                    // refuses a range with no bound at all.
                    return Ok(range(
                        Bound::Included(Term::from_field_u64(target, 0)),
                        Bound::Unbounded,
                    ));
                };
                let term = |n: u64| Term::from_field_u64(target, n);
                return Ok(match op {
                    Op::Eq => range(
                        Bound::Included(term(*number)),
                        Bound::Included(term(*number)),
                    ),
                    Op::Lt => range(Bound::Unbounded, Bound::Excluded(term(*number))),
                    Op::Le => range(Bound::Unbounded, Bound::Included(term(*number))),
                    Op::Gt => range(Bound::Excluded(term(*number)), Bound::Unbounded),
                    Op::Ge => range(Bound::Included(term(*number)), Bound::Unbounded),
                });
            }
            match value {
                Value::Exact(text) => Box::new(TermQuery::new(
                    Term::from_field_text(target, text),
                    IndexRecordOption::Basic,
                )),
                Value::Prefix(prefix) => {
                    let lower = Bound::Included(Term::from_field_text(target, prefix));
                    let upper = match prefix_upper_bound(prefix) {
                        Some(upper) => Bound::Excluded(Term::from_field_text(target, &upper)),
                        None => Bound::Unbounded,
                    };
                    if schema.get_field_entry(target).is_fast() {
                        Box::new(KeywordRange {
                            field: target,
                            lower,
                            upper,
                        })
                    } else {
                        range(lower, upper)
                    }
                }
                Value::Number(number) => Box::new(TermQuery::new(
                    Term::from_field_text(target, &number.to_string()),
                    IndexRecordOption::Basic,
                )),
            }
        }
    })
}

fn range(lower: Bound<Term>, upper: Bound<Term>) -> Box<dyn TantivyQuery> {
    Box::new(RangeQuery::new(lower, upper))
}

/// A range of a keyword field that is also a column, answered in each segment from whichever is
/// cheaper there. A prefix of few events (one namespace's service accounts) reads the postings of
/// its terms, so that a conjunction walks the few events it has; a prefix of many (`system:*`)
/// reads the column, which answers one document at a time without reading every posting first.
#[derive(Clone, Debug)]
struct KeywordRange {
    field: SchemaField,
    lower: Bound<Term>,
    upper: Bound<Term>,
}

impl TantivyQuery for KeywordRange {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let bytes =
            |bound: &Bound<Term>| bound.as_ref().map(|t| t.serialized_value_bytes().to_vec());
        Ok(Box::new(KeywordRangeWeight {
            field: self.field,
            lower: bytes(&self.lower),
            upper: bytes(&self.upper),
            postings: InvertedIndexRangeWeight::new(self.field, &self.lower, &self.upper, None),
            column: FastFieldRangeWeight::new(BoundsRange::new(
                self.lower.clone(),
                self.upper.clone(),
            )),
        }))
    }
}

struct KeywordRangeWeight {
    field: SchemaField,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    postings: InvertedIndexRangeWeight,
    column: FastFieldRangeWeight,
}

/// Above this share of a segment's documents, the postings of a range cost more to read than
/// the column costs to consult.
const POSTINGS_SHARE: u64 = 8;

impl KeywordRangeWeight {
    fn weight_for(&self, segment: &SegmentReader) -> tantivy::Result<&dyn Weight> {
        let inverted = segment.inverted_index(self.field)?;
        let mut terms = inverted.terms().range();
        terms = match &self.lower {
            Bound::Included(bytes) => terms.ge(bytes),
            Bound::Excluded(bytes) => terms.gt(bytes),
            Bound::Unbounded => terms,
        };
        terms = match &self.upper {
            Bound::Included(bytes) => terms.le(bytes),
            Bound::Excluded(bytes) => terms.lt(bytes),
            Bound::Unbounded => terms,
        };
        let mut terms = terms.into_stream()?;
        let budget = u64::from(segment.max_doc()) / POSTINGS_SHARE;
        let (mut postings, mut indexed_terms) = (0u64, 0u64);
        while terms.advance() {
            postings += u64::from(terms.value().doc_freq);
            indexed_terms += 1;
            if postings > budget {
                return Ok(&self.column);
            }
        }
        // The inverted index leaves out values too long to be a term; the column keeps every
        // value, so the postings answer only where they hold all the column's values in range.
        if indexed_terms == self.column_terms(segment)? {
            Ok(&self.postings)
        } else {
            Ok(&self.column)
        }
    }

    /// How many distinct values in range the segment's column holds.
    fn column_terms(&self, segment: &SegmentReader) -> tantivy::Result<u64> {
        let name = segment.schema().get_field_name(self.field);
        let Some(column) = segment.fast_fields().str(name)? else {
            return Ok(0);
        };
        let dictionary = column.dictionary();
        let (lower, upper) = dictionary.term_bounds_to_ord(
            self.lower.as_ref().map(Vec::as_slice),
            self.upper.as_ref().map(Vec::as_slice),
        )?;
        let start = match lower {
            Bound::Included(ord) => ord,
            Bound::Excluded(ord) => ord + 1,
            Bound::Unbounded => 0,
        };
        let end = match upper {
            Bound::Included(ord) => ord + 1,
            Bound::Excluded(ord) => ord,
            Bound::Unbounded => dictionary.num_terms() as u64,
        };
        Ok(end.saturating_sub(start))
    }
}

impl Weight for KeywordRangeWeight {
    fn scorer(&self, segment: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.weight_for(segment)?.scorer(segment, boost)
    }

    fn explain(&self, segment: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.weight_for(segment)?.explain(segment, doc)
    }
}

/// The smallest string above every string starting with `prefix`, if there is one.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Free text over the request path and object name: events containing all its words.
fn free_text(schema: &Schema, fields: &Fields, text: &str) -> Box<dyn TantivyQuery> {
    let mut analyzer =
        tantivy::tokenizer::TextAnalyzer::builder(tantivy::tokenizer::SimpleTokenizer::default())
            .filter(tantivy::tokenizer::RemoveLongFilter::limit(40))
            .filter(tantivy::tokenizer::LowerCaser)
            .build();
    let _ = schema;
    let mut terms = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        terms.push(Term::from_field_text(fields.text, &stream.token().text));
    }
    match terms.len() {
        0 => Box::new(AllQuery),
        1 => Box::new(TermQuery::new(
            terms.pop().expect("one term"),
            IndexRecordOption::Basic,
        )),
        _ => Box::new(BooleanQuery::new(
            terms
                .into_iter()
                .map(|term| {
                    (
                        Occur::Must,
                        Box::new(TermQuery::new(term, IndexRecordOption::Basic))
                            as Box<dyn TantivyQuery>,
                    )
                })
                .collect(),
        )),
    }
}
