//! Newest-first search over a window's segments.
//!
//! Events arrive roughly in time order, so a segment's documents are too, run by run: each
//! segment gets an index of the earliest and latest time of every [`RUN_DOCS`] documents, built
//! once from its time column. A page of the newest matches then visits runs latest first and stops
//! as soon as no run left can hold anything newer than what it keeps, instead of scoring every
//! match of the whole range (a negated clause matches most of a day) to keep the newest hundred.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex},
};

use tantivy::{
    DocAddress, DocId, DocSet, Score, Searcher, SegmentReader, TERMINATED,
    columnar::{Cardinality, Column},
    index::SegmentId,
    query::{BooleanQuery, ConstScorer, EnableScoring, Explanation, Occur, Query, Scorer, Weight},
};

/// Documents per run: small enough that a page of the newest visits few documents it does not
/// need, large enough that a day of ten million events has ten thousand runs to sort.
const RUN_DOCS: u32 = 1024;

/// How many runs each round visits before checking whether the page is complete; a round opens
/// the query once on every segment it touches, so the rounds grow.
const ROUNDS: [usize; 2] = [8, 64];

/// Documents `start..end` of one segment, stamped within `earliest..=latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: DocId,
    end: DocId,
    earliest: i64,
    latest: i64,
}

/// The runs of every segment searched so far; a segment never changes, so its runs are built once.
#[derive(Default)]
pub(crate) struct RunIndex {
    by_segment: Mutex<HashMap<SegmentId, Arc<[Run]>>>,
}

/// Segments merged away leave their runs behind; past this many, the index starts afresh.
const MAX_SEGMENTS: usize = 1024;

impl RunIndex {
    fn runs(&self, segment: &SegmentReader) -> tantivy::Result<Arc<[Run]>> {
        let id = segment.segment_id();
        if let Some(runs) = self.lock().get(&id) {
            return Ok(runs.clone());
        }
        let runs: Arc<[Run]> =
            runs_of(&segment.fast_fields().i64("time")?, segment.max_doc()).into();
        let mut by_segment = self.lock();
        if by_segment.len() >= MAX_SEGMENTS {
            by_segment.clear();
        }
        by_segment.insert(id, runs.clone());
        Ok(runs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Arc<[Run]>>> {
        self.by_segment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The runs of every window's segments that may hold an event stamped within
    /// `low..=high`, with the window and segment they belong to.
    fn overlapping(
        &self,
        searcher: &Searcher,
        low: i64,
        high: i64,
    ) -> tantivy::Result<Vec<(u32, Run)>> {
        let mut found = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let runs = self.runs(segment)?;
            found.extend(
                runs.iter()
                    .filter(|run| run.latest >= low && run.earliest <= high)
                    .map(|run| (ord as u32, *run)),
            );
        }
        Ok(found)
    }
}

fn runs_of(time: &Column<i64>, max_doc: DocId) -> Vec<Run> {
    let mut runs = Vec::with_capacity(max_doc.div_ceil(RUN_DOCS) as usize);
    let mut values = vec![0i64; RUN_DOCS as usize];
    let full = time.get_cardinality() == Cardinality::Full;
    for start in (0..max_doc).step_by(RUN_DOCS as usize) {
        let end = (start + RUN_DOCS).min(max_doc);
        let (mut earliest, mut latest) = (i64::MAX, i64::MIN);
        let mut note = |t: i64| {
            earliest = earliest.min(t);
            latest = latest.max(t);
        };
        if full {
            let values = &mut values[..(end - start) as usize];
            time.values.get_range(start as u64, values);
            values.iter().copied().for_each(&mut note);
        } else {
            (start..end)
                .flat_map(|doc| time.values_for_doc(doc))
                .for_each(&mut note);
        }
        // A run none of whose documents has a time holds nothing any search can match.
        if earliest <= latest {
            runs.push(Run {
                start,
                end,
                earliest,
                latest,
            });
        }
    }
    runs
}

/// The documents of some runs, segment by segment: a clause that keeps a search inside them.
///
/// It is a clause of the query itself, beside the others at the top, rather than a filter on
/// its scorer: opening a conjunction walks it to its first match, which, for a query that
/// matches nothing, is the whole segment.
#[derive(Clone, Debug)]
struct InRuns(Arc<HashMap<SegmentId, Vec<Run>>>);

impl Query for InRuns {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for InRuns {
    fn scorer(&self, segment: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let runs = self
            .0
            .get(&segment.segment_id())
            .cloned()
            .unwrap_or_default();
        Ok(Box::new(ConstScorer::new(RunDocs::new(runs), boost)))
    }

    fn explain(&self, segment: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let runs = self.0.get(&segment.segment_id());
        if runs.is_some_and(|runs| runs.iter().any(|run| (run.start..run.end).contains(&doc))) {
            Ok(Explanation::new("in the runs searched", 1.0))
        } else {
            Err(tantivy::TantivyError::InvalidArgument(format!(
                "{doc} is in no run searched"
            )))
        }
    }
}

/// The documents of runs (in document order, apart).
struct RunDocs {
    runs: Vec<Run>,
    run: usize,
    doc: DocId,
}

impl RunDocs {
    fn new(runs: Vec<Run>) -> RunDocs {
        let doc = runs.first().map_or(TERMINATED, |run| run.start);
        RunDocs { runs, run: 0, doc }
    }
}

impl DocSet for RunDocs {
    fn advance(&mut self) -> DocId {
        self.seek(self.doc.saturating_add(1))
    }

    fn seek(&mut self, target: DocId) -> DocId {
        while let Some(run) = self.runs.get(self.run) {
            if target < run.end {
                self.doc = target.max(run.start);
                return self.doc;
            }
            self.run += 1;
        }
        self.doc = TERMINATED;
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.runs.iter().map(|run| run.end - run.start).sum()
    }
}

/// `matcher` kept inside `runs`: the runs' clause joins a conjunction's own clauses, so that
/// opening it walks only the runs.
fn in_runs(matcher: &dyn Query, runs: InRuns) -> BooleanQuery {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = match matcher.downcast_ref::<BooleanQuery>() {
        // A clause that must match changes nothing else only where no clause is optional.
        Some(boolean)
            if boolean
                .clauses()
                .iter()
                .any(|(occur, _)| *occur == Occur::Must)
                && boolean
                    .clauses()
                    .iter()
                    .all(|(occur, _)| *occur != Occur::Should) =>
        {
            boolean
                .clauses()
                .iter()
                .map(|(occur, clause)| (*occur, clause.box_clone()))
                .collect()
        }
        _ => vec![(Occur::Must, matcher.box_clone())],
    };
    clauses.push((Occur::Must, Box::new(runs)));
    BooleanQuery::new(clauses)
}

/// Visits the matches of `matcher` in `runs` (of one window) stamped within `low..=high`,
/// handing each its time and address.
fn visit_runs(
    searcher: &Searcher,
    matcher: &dyn Query,
    runs: &[(u32, Run)],
    (low, high): (i64, i64),
    mut found: impl FnMut(i64, DocAddress),
) -> tantivy::Result<()> {
    let mut by_segment: HashMap<u32, Vec<Run>> = HashMap::new();
    for (segment, run) in runs {
        by_segment.entry(*segment).or_default().push(*run);
    }
    for runs in by_segment.values_mut() {
        runs.sort_unstable_by_key(|run| run.start);
    }
    let restriction = InRuns(Arc::new(
        by_segment
            .iter()
            .map(|(ord, runs)| (searcher.segment_reader(*ord).segment_id(), runs.clone()))
            .collect(),
    ));
    let weight =
        in_runs(matcher, restriction).weight(EnableScoring::disabled_from_searcher(searcher))?;
    for ord in by_segment.keys() {
        let segment = searcher.segment_reader(*ord);
        let time = segment.fast_fields().i64("time")?;
        let alive = segment.alive_bitset();
        let mut scorer = weight.scorer(segment, 1.0)?;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|alive| alive.is_alive(doc))
                && let Some(t) = time.first(doc)
                && (low..=high).contains(&t)
            {
                found(t, DocAddress::new(*ord, doc));
            }
            doc = scorer.advance();
        }
    }
    Ok(())
}

/// A matching event: its time, the window (index into the windows) and its address there.
pub(crate) type Hit = (i64, usize, DocAddress);

/// A window searched: its searcher and the query translated for its schema.
pub(crate) type Window = (Searcher, Box<dyn Query>);

/// The `keep` newest matches stamped within `low..=high`, newest first; of events stamped the same
/// microsecond, any may be kept. `windows` are whole days, newest first.
pub(crate) fn newest(
    index: &RunIndex,
    windows: &[Window],
    (low, high): (i64, i64),
    keep: usize,
) -> tantivy::Result<Vec<Hit>> {
    let mut kept: BinaryHeap<Reverse<Hit>> = BinaryHeap::new();
    let oldest_kept = |kept: &BinaryHeap<Reverse<Hit>>| kept.peek().map(|Reverse(hit)| hit.0);
    'windows: for (window, (searcher, matcher)) in windows.iter().enumerate() {
        let mut runs = index.overlapping(searcher, low, high)?;
        runs.sort_unstable_by_key(|(_, run)| Reverse(run.latest));
        let mut rest = runs.as_slice();
        for round in ROUNDS.iter().copied().chain(std::iter::once(usize::MAX)) {
            if rest.is_empty() {
                break;
            }
            let (this, next) = rest.split_at(round.min(rest.len()));
            visit_runs(
                searcher,
                matcher.as_ref(),
                this,
                (low, high),
                |t, address| {
                    if kept.len() < keep {
                        kept.push(Reverse((t, window, address)));
                    } else if oldest_kept(&kept).is_some_and(|oldest| t > oldest) {
                        kept.pop();
                        kept.push(Reverse((t, window, address)));
                    }
                },
            )?;
            rest = next;
            // Nothing left can be newer than the oldest kept: a page is full. Windows are whole
            // days, newest first, so once one fills the page, older days cannot hold anything
            // newer either.
            if kept.len() >= keep
                && rest
                    .first()
                    .is_none_or(|(_, run)| oldest_kept(&kept).is_some_and(|o| o >= run.latest))
            {
                break 'windows;
            }
        }
    }
    let mut hits: Vec<Hit> = kept.into_iter().map(|Reverse(hit)| hit).collect();
    hits.sort_unstable_by_key(|hit| Reverse(hit.0));
    Ok(hits)
}

/// The most events of one microsecond a search reads: each is held whole while a page is cut
/// from the group, and a client stamping a flood of events alike must not exhaust memory.
const MAX_GROUP: usize = 100_000;

/// Every match stamped exactly `time`, as (window, address), up to [`MAX_GROUP`].
pub(crate) fn stamped(
    index: &RunIndex,
    windows: &[Window],
    time: i64,
) -> tantivy::Result<Vec<(usize, DocAddress)>> {
    let mut found = Vec::new();
    for (window, (searcher, matcher)) in windows.iter().enumerate() {
        let runs = index.overlapping(searcher, time, time)?;
        visit_runs(
            searcher,
            matcher.as_ref(),
            &runs,
            (time, time),
            |_, address| {
                if found.len() < MAX_GROUP {
                    found.push((window, address))
                }
            },
        )?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    use tantivy::{
        Index, TantivyDocument, Term,
        query::TermQuery,
        schema::{FAST, IndexRecordOption, STRING, Schema},
    };

    /// An event written: its time, its window and its kind.
    type Written = (i64, usize, String);

    /// Two days of three segments each, of events stamped roughly in order, some late, many at
    /// the same microsecond, of a common, a rare and an other kind.
    fn windows(seed: u64) -> (Vec<(Searcher, tantivy::schema::Field)>, Vec<Written>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut schema = Schema::builder();
        let time = schema.add_i64_field("time", FAST);
        let kind = schema.add_text_field("kind", STRING);
        let schema = schema.build();
        let mut windows = Vec::new();
        let mut all = Vec::new();
        // Two days, the newest first, as the store hands them over.
        for (window, day) in [1i64, 0].into_iter().enumerate() {
            let index = Index::create_in_ram(schema.clone());
            let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
            let mut now = day * 1_000_000;
            for _segment in 0..3 {
                for _ in 0..rng.random_range(1..4000) {
                    now += rng.random_range(0..3);
                    let late = if rng.random_ratio(1, 20) {
                        rng.random_range(0..5000)
                    } else {
                        0
                    };
                    let t = (now - late).max(day * 1_000_000);
                    let k = ["common", "rare", "other"][match rng.random_range(0..100) {
                        0 => 1,
                        1..60 => 0,
                        _ => 2,
                    }];
                    let mut doc = TantivyDocument::default();
                    doc.add_i64(time, t);
                    doc.add_text(kind, k);
                    writer.add_document(doc).unwrap();
                    all.push((t, window, k.to_string()));
                }
                writer.commit().unwrap();
            }
            windows.push((index.reader().unwrap().searcher(), kind));
        }
        (windows, all)
    }

    #[test]
    fn the_newest_matches_are_those_a_full_scan_finds() {
        for seed in 0..8 {
            let (searchers, all) = windows(seed);
            let index = RunIndex::default();
            // Each kind asked as a term alone, as a conjunction with a negation (the runs join
            // its clauses) and as a disjunction (the runs wrap it).
            for (kind, shape) in ["common", "rare", "none"]
                .into_iter()
                .flat_map(|kind| [(kind, 0), (kind, 1), (kind, 2)])
            {
                let weights: Vec<Window> = searchers
                    .iter()
                    .map(|(searcher, field)| {
                        let term = |text: &str| -> Box<dyn Query> {
                            Box::new(TermQuery::new(
                                Term::from_field_text(*field, text),
                                IndexRecordOption::Basic,
                            ))
                        };
                        let query: Box<dyn Query> = match shape {
                            0 => term(kind),
                            1 => Box::new(BooleanQuery::new(vec![
                                (Occur::Must, term(kind)),
                                (Occur::MustNot, term("elsewhere")),
                            ])),
                            _ => Box::new(BooleanQuery::new(vec![
                                (Occur::Should, term(kind)),
                                (Occur::Should, term("elsewhere")),
                            ])),
                        };
                        (searcher.clone(), query)
                    })
                    .collect();
                for (low, high, keep) in [
                    (i64::MIN, i64::MAX, 100),
                    (500_000, 1_400_000, 7),
                    (1_000_000, 1_000_100, 1000),
                    (0, 3000, 1),
                ] {
                    let mut expected: Vec<i64> = all
                        .iter()
                        .filter(|(t, _, k)| k == kind && (low..=high).contains(t))
                        .map(|(t, _, _)| *t)
                        .collect();
                    expected.sort_unstable_by_key(|t| Reverse(*t));
                    expected.truncate(keep);
                    let found = newest(&index, &weights, (low, high), keep).unwrap();
                    let times: Vec<i64> = found.iter().map(|hit| hit.0).collect();
                    assert_eq!(
                        times, expected,
                        "seed {seed}, {kind} as shape {shape}, {low}..={high}, {keep}"
                    );
                    for (t, window, address) in found {
                        let segment = weights[window].0.segment_reader(address.segment_ord);
                        let time = segment.fast_fields().i64("time").unwrap();
                        assert_eq!(time.first(address.doc_id), Some(t));
                    }
                }
                let Some(&(t, _, _)) = all.iter().find(|(_, _, k)| k == kind) else {
                    continue;
                };
                let expected = all
                    .iter()
                    .filter(|(at, _, k)| *at == t && k == kind)
                    .count();
                assert_eq!(stamped(&index, &weights, t).unwrap().len(), expected);
            }
        }
    }
}
