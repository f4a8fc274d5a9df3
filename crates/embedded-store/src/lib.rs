//! The embedded store: per topic, one index per day (UTC), with the raw events kept. Retention
//! deletes whole days. Logsets and topics are kept in a small catalog file.
//!
//! The store is fed from the write-ahead log: each window remembers (in its commit) the log
//! position it has reached, so a replay after a crash skips what a window already holds and
//! nothing is indexed twice.

pub mod catalog;
pub mod index;
mod lifted;
mod newest;
pub mod query;
mod stats;

use clusteraudit_io::file_error;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use tantivy::{
    DocAddress, Searcher,
    query::{AllQuery, BooleanQuery, Occur, Query as _, RangeQuery},
    schema::Schema,
};

use catalog::CatalogFile;
use index::{Fields, Window};

use clusteraudit_core::{audit::Event, query::Query};
pub use clusteraudit_store::StoreError;
use clusteraudit_store::{
    AuditStore, Catalog, CatalogEdit, Edited, Page, SearchRequest, Stats, StatsRequest,
    StoreFuture, TimeBucket, TopValue, TopicUsage, date_of_day, day_of, day_of_date, raw_events,
};

pub(crate) fn index_error(path: &Path, source: impl Into<tantivy::TantivyError>) -> StoreError {
    StoreError::backend(format!("the index at {}", path.display()), source.into())
}

fn day_dir_name(day: i64) -> String {
    let date = date_of_day(day);
    format!("{:04}{:02}{:02}", date.year(), date.month(), date.day())
}

fn parse_day_dir(name: &str) -> Option<i64> {
    if name.len() != 8 {
        return None;
    }
    let year: i16 = name[..4].parse().ok()?;
    let month: i8 = name[4..6].parse().ok()?;
    let day: i8 = name[6..].parse().ok()?;
    day_of_date(jiff::civil::Date::new(year, month, day).ok()?)
}

pub struct Store {
    root: PathBuf,
    schema: Schema,
    fields: Fields,
    catalog: Mutex<CatalogFile>,
    windows: Mutex<HashMap<(String, i64), Window>>,
    runs: newest::RunIndex,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root.join("topics")).map_err(file_error("creating", root))?;
        let (schema, fields) = index::schema();
        let catalog = CatalogFile::open(&root.join("catalog.json"))?;
        Ok(Store {
            root: root.into(),
            schema,
            fields,
            catalog: Mutex::new(catalog),
            windows: Mutex::new(HashMap::new()),
            runs: newest::RunIndex::default(),
        })
    }

    pub fn catalog_file(&self) -> std::sync::MutexGuard<'_, CatalogFile> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join("topics").join(topic)
    }

    /// Adds the events of one log record (ending at `end`) to their topic's windows, skipping
    /// the windows that already hold it. Returns how many were added.
    ///
    /// A record of a topic no longer in the catalog is skipped: the deletion is durable in the
    /// catalog file, so a replay of the log never brings a deleted topic's data back.
    ///
    /// `decoded` is each event already decoded, with its time, where the caller has it (the
    /// webhook decoded it on the way in): those are not decoded again. The bytes are what is
    /// stored either way.
    pub fn apply(
        &self,
        end: u64,
        topic: &str,
        events: &[&[u8]],
        decoded: Option<&[Option<(&Event, i64)>]>,
    ) -> Result<usize, StoreError> {
        // Under the windows' lock, so that a deletion either comes before (and the record is
        // skipped) or after (and drops what was added with the topic's windows).
        let mut windows = self.windows();
        if self.catalog_file().catalog().topic(topic).is_err() {
            return Ok(0);
        }
        let mut added = 0;
        let decoded = decoded.filter(|decoded| decoded.len() == events.len());
        for (index, raw) in events.iter().enumerate() {
            let decoded_here;
            let (event, time) = match decoded.and_then(|decoded| decoded[index]) {
                Some(decoded) => decoded,
                None => {
                    decoded_here = match serde_json::from_slice::<Event>(raw) {
                        Ok(event) => event,
                        Err(err) => {
                            // The webhook validated it before it was logged; a record that no
                            // longer decodes means a code change, and must not stop the rest.
                            tracing::warn!(error = %err, "skipping an event that no longer decodes");
                            continue;
                        }
                    };
                    let Some(time) = decoded_here.time_micros() else {
                        tracing::warn!(audit_id = %decoded_here.audit_id, "skipping an event without a timestamp");
                        continue;
                    };
                    (&decoded_here, time)
                }
            };
            let key = (topic.to_string(), day_of(time));
            let window = match windows.entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = self.topic_dir(topic).join(day_dir_name(v.key().1));
                    v.insert(Window::open(&path, &self.schema)?)
                }
            };
            if end <= window.committed {
                continue;
            }
            // The window's own fields: one created by an older release has fewer.
            let doc = index::document(&window.fields, event, time, raw);
            let path = window.path.clone();
            window
                .writer()?
                .add_document(doc)
                .map_err(|err| index_error(&path, err))?;
            window.pending += 1;
            added += 1;
        }
        Ok(added)
    }

    /// Commits every window with new events, recording that the log up to `position` is in.
    /// Writers of windows that received nothing since the last commit are closed, so memory
    /// goes to the windows being written.
    pub fn commit(&self, position: u64) -> Result<(), StoreError> {
        let mut windows = self.windows();
        for window in windows.values_mut() {
            if window.pending > 0 {
                window.commit(position)?;
            } else if let Some(writer) = window.writer.take() {
                let _ = writer.wait_merging_threads();
            }
        }
        Ok(())
    }

    /// Drops every event added since the last commit (after a failed apply or commit, whose
    /// writers are in no state to trust): the caller reads the log again from its last commit,
    /// and the windows' commits say what they already hold. Returns the events dropped.
    pub fn rollback(&self) -> u64 {
        let mut dropped = 0;
        for window in self.windows().values_mut() {
            if window.pending > 0 {
                dropped += window.discard();
            }
        }
        dropped
    }

    /// Whether any window has events not yet committed.
    pub fn has_pending(&self) -> bool {
        self.windows().values().any(|w| w.pending > 0)
    }

    /// Searchers of the topic's windows overlapping [from, to] (micros), newest first.
    fn searchers(&self, topic: &str, from: i64, to: i64) -> Result<Vec<Searcher>, StoreError> {
        let dir = self.topic_dir(topic);
        let mut days: Vec<i64> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(parse_day_dir))
                .filter(|day| *day >= day_of(from) && *day <= day_of(to))
                .collect(),
            Err(_) => Vec::new(),
        };
        days.sort_unstable_by(|a, b| b.cmp(a));
        let mut windows = self.windows();
        let mut searchers = Vec::new();
        for day in days {
            let key = (topic.to_string(), day);
            if !windows.contains_key(&key) {
                let window = Window::open(&dir.join(day_dir_name(day)), &self.schema)?;
                windows.insert(key.clone(), window);
            }
            searchers.push(windows[&key].reader.searcher());
        }
        Ok(searchers)
    }

    /// Events of `topic` matching `query` within [from, to] (micros), newest first.
    ///
    /// Events stamped with the same microsecond are ordered by their bytes, and a page never ends
    /// inside such a group without the cursor saying how much of it was shown; so paging neither
    /// repeats nor skips an event, even when segments merge between pages.
    pub fn search(
        &self,
        topic: &str,
        query: &Query,
        from: i64,
        to: i64,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, clusteraudit_store::MAX_PAGE);
        let (mut upper, mut skip) = (to, 0usize);
        if let Some(cursor) = cursor {
            (upper, skip) = parse_cursor(cursor)?;
            if upper > to {
                (upper, skip) = (to, 0);
            }
        }
        if upper < from {
            return Ok(Page {
                events: Vec::new(),
                cursor: None,
            });
        }
        let searchers = self.searchers(topic, from, upper)?;
        let matchers = self.matchers(&searchers, query)?;
        let windows: Vec<newest::Window> = searchers.into_iter().zip(matchers).collect();

        // First what is left of the group stamped `upper`.
        let mut page: Vec<Vec<u8>> = self
            .group_at(&windows, upper)?
            .into_iter()
            .skip(skip)
            .collect();
        if page.len() > limit {
            page.truncate(limit);
            return Ok(Page {
                events: raw_events(page),
                cursor: Some(format!("{upper}.{}", skip + limit)),
            });
        }
        // Then the newest below it, one more than fits to know whether a page follows.
        let room = limit - page.len();
        let hits = match upper.checked_sub(1) {
            Some(below) if below >= from => {
                newest::newest(&self.runs, &windows, (from, below), room + 1)
                    .map_err(|err| index_error(&self.root, err))?
            }
            _ => Vec::new(),
        };
        if hits.len() <= room {
            page.extend(self.sorted_raw(&windows, &hits)?);
            return Ok(Page {
                events: raw_events(page),
                cursor: None,
            });
        }
        if room == 0 {
            // The group at `upper` filled the page exactly; the next page starts below it.
            let cursor = Some(format!("{upper}.{}", skip + page.len()));
            return Ok(Page {
                events: raw_events(page),
                cursor,
            });
        }
        // The page ends at `last`: everything newer is in, and of the group stamped `last`, the
        // first `taken` in byte order.
        let last = hits[room - 1].0;
        let newer: Vec<_> = hits[..room]
            .iter()
            .filter(|h| h.0 > last)
            .copied()
            .collect();
        let taken = room - newer.len();
        page.extend(self.sorted_raw(&windows, &newer)?);
        let group = self.group_at(&windows, last)?;
        page.extend(group.into_iter().take(taken));
        Ok(Page {
            events: raw_events(page),
            cursor: Some(format!("{last}.{taken}")),
        })
    }

    /// The query translated for each searcher's window: a window created by an older release
    /// lacks the newer fields, and a query naming one matches none of its events.
    fn matchers(
        &self,
        searchers: &[Searcher],
        query: &Query,
    ) -> Result<Vec<Box<dyn tantivy::query::Query>>, StoreError> {
        // Refuses what no window can answer even when there is no window to ask.
        query::translate(&self.schema, &self.fields, query)?;
        searchers
            .iter()
            .map(|searcher| {
                let schema = searcher.schema();
                query::translate(schema, &Fields::of(schema), query)
            })
            .collect()
    }

    /// `matcher` restricted to events stamped within the bounds (micros).
    fn in_time_range(
        &self,
        matcher: Box<dyn tantivy::query::Query>,
        low: std::ops::Bound<i64>,
        high: std::ops::Bound<i64>,
    ) -> BooleanQuery {
        BooleanQuery::new(vec![
            (Occur::Must, matcher),
            (Occur::Must, Box::new(self.time_range(low, high))),
        ])
    }

    /// Events stamped within the bounds (micros).
    fn time_range(&self, low: std::ops::Bound<i64>, high: std::ops::Bound<i64>) -> RangeQuery {
        let term = |t: i64| tantivy::Term::from_field_i64(self.fields.time, t);
        RangeQuery::new(low.map(term), high.map(term))
    }

    /// Every matching event stamped `time`, in byte order.
    fn group_at(&self, windows: &[newest::Window], time: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let addresses = newest::stamped(&self.runs, windows, time)
            .map_err(|err| index_error(&self.root, err))?;
        let mut group = self.raw_events_at(windows, &addresses)?;
        group.sort();
        Ok(group)
    }

    /// The raw events of hits, newest first, ties in byte order.
    fn sorted_raw(
        &self,
        windows: &[newest::Window],
        hits: &[newest::Hit],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let addresses: Vec<_> = hits.iter().map(|(_, w, a)| (*w, *a)).collect();
        let raws = self.raw_events_at(windows, &addresses)?;
        let mut events: Vec<_> = hits.iter().map(|hit| hit.0).zip(raws).collect();
        events.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Ok(events.into_iter().map(|(_, raw)| raw).collect())
    }

    /// The raw events at `addresses` (window, address), in their order.
    ///
    /// The document store decompresses a whole block (a thousand events) to hand over one, and
    /// the events of a selective page lie in as many blocks as it has events; so the search pool
    /// reads them side by side, each thread a stretch of neighbouring addresses, so that no two
    /// threads decompress the same block.
    fn raw_events_at(
        &self,
        windows: &[newest::Window],
        addresses: &[(usize, DocAddress)],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut order: Vec<usize> = (0..addresses.len()).collect();
        order.sort_unstable_by_key(|&i| addresses[i]);
        let stretch = order.len().div_ceil(*index::SEARCH_THREADS).max(16);
        let read = |stretch: &[usize]| -> tantivy::Result<Vec<(usize, Vec<u8>)>> {
            let mut readers: HashMap<usize, index::RawReader> = HashMap::new();
            stretch
                .iter()
                .map(|&i| {
                    let (window, address) = addresses[i];
                    let reader = readers
                        .entry(window)
                        .or_insert_with(|| index::RawReader::new(&windows[window].0));
                    Ok((i, reader.read(address)?))
                })
                .collect()
        };
        let stretches = index::search_executor()
            .map(read, order.chunks(stretch))
            .map_err(|err| index_error(&self.root, err))?;
        let mut events = vec![Vec::new(); addresses.len()];
        for (i, bytes) in stretches.into_iter().flatten() {
            events[i] = bytes;
        }
        Ok(events)
    }

    /// Counts over time and the most frequent values of one field, for the events of `topic`
    /// matching `query` within [from, to].
    pub fn stats(&self, topic: &str, request: &StatsRequest) -> Result<Stats, StoreError> {
        let StatsRequest {
            query,
            from,
            to,
            by,
            ..
        } = request;
        let (from, to, by) = (*from, *to, *by);
        let (interval_micros, top) = (request.effective_interval(), request.effective_top());
        let collector = stats::StatsCollector {
            by,
            from,
            to,
            interval: interval_micros,
        };
        let searchers = self.searchers(topic, from, to)?;
        let matchers = self.matchers(&searchers, query)?;
        let mut counted = stats::Counted::default();
        for (searcher, matcher) in searchers.iter().zip(matchers) {
            // Everything in a time range is the range alone: over a whole window it is every
            // document, which tantivy then walks without intersecting anything.
            let (low, high) = (
                std::ops::Bound::Included(from),
                std::ops::Bound::Included(to),
            );
            let combined: Box<dyn tantivy::query::Query> = if matches!(query, Query::All) {
                Box::new(self.time_range(low, high))
            } else {
                Box::new(self.in_time_range(matcher, low, high))
            };
            counted.merge(
                searcher
                    .search(&combined, &collector)
                    .map_err(|err| index_error(&self.root, err))?,
            );
        }
        Ok(Stats {
            total: counted.total,
            interval_micros,
            by: by.field_name().to_string(),
            over_time: counted
                .buckets(interval_micros)
                .into_iter()
                .map(|(start, count)| TimeBucket { start, count })
                .collect(),
            top: counted
                .top(top)
                .into_iter()
                .map(|(value, count)| TopValue { value, count })
                .collect(),
        })
    }

    /// Size on disk and number of events of a topic.
    pub fn usage(&self, topic: &str) -> Result<TopicUsage, StoreError> {
        let dir = self.topic_dir(topic);
        let size_bytes = dir_size(&dir);
        let mut event_count = 0;
        for searcher in self.searchers(topic, i64::MIN / 2, i64::MAX / 2)? {
            event_count += AllQuery
                .count(&searcher)
                .map_err(|err| index_error(&self.root, err))? as u64;
        }
        Ok(TopicUsage {
            size_bytes,
            event_count,
        })
    }

    /// Bytes on disk by (part, field) for a topic, for tuning the schema.
    pub fn space_usage(&self, topic: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
        for searcher in self.searchers(topic, i64::MIN / 2, i64::MAX / 2)? {
            let usage = searcher
                .space_usage()
                .map_err(|err| index_error(&self.root, err))?;
            for segment in usage.segments() {
                for (part, per_field) in [
                    ("terms", segment.termdict()),
                    ("postings", segment.postings()),
                    ("positions", segment.positions()),
                    ("columns", segment.fast_fields()),
                    ("norms", segment.fieldnorms()),
                ] {
                    for field in per_field.fields() {
                        *totals
                            .entry(format!("{part} {}", field.field_name()))
                            .or_default() += field.total().get_bytes();
                    }
                }
                *totals.entry("raw events (store)".into()).or_default() +=
                    segment.store().total().get_bytes();
            }
        }
        let mut sorted: Vec<(String, u64)> = totals.into_iter().collect();
        sorted.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        Ok(sorted)
    }

    /// Deletes the days of every topic older than its retention. Returns the windows deleted.
    pub fn enforce_retention(&self, now_micros: i64) -> Result<Vec<PathBuf>, StoreError> {
        let topics: Vec<(String, u32)> = self
            .catalog_file()
            .catalog()
            .topics()
            .iter()
            .map(|t| (t.id.clone(), t.retention_days))
            .collect();
        let today = day_of(now_micros);
        let mut deleted = Vec::new();
        for (topic, retention) in topics {
            let dir = self.topic_dir(&topic);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let Some(day) = entry.file_name().to_str().and_then(parse_day_dir) else {
                    continue;
                };
                if clusteraudit_store::expired(day, today, retention) {
                    self.windows().remove(&(topic.clone(), day));
                    let path = entry.path();
                    std::fs::remove_dir_all(&path).map_err(file_error("deleting", &path))?;
                    deleted.push(path);
                }
            }
        }
        Ok(deleted)
    }

    /// Removes a topic's data (after the catalog entry is gone).
    pub fn delete_topic_data(&self, topic: &str) -> Result<(), StoreError> {
        self.windows().retain(|(t, _), _| t != topic);
        let dir = self.topic_dir(topic);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(file_error("deleting", &dir)(source).into()),
        }
    }
}

fn parse_cursor(cursor: &str) -> Result<(i64, usize), StoreError> {
    let invalid =
        || StoreError::Invalid(format!("{cursor:?} is not a cursor this server gave out"));
    let (time, skip) = cursor.split_once('.').ok_or_else(invalid)?;
    Ok((
        time.parse().map_err(|_| invalid())?,
        skip.parse().map_err(|_| invalid())?,
    ))
}

/// Bytes under a directory, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The embedded store behind the store interface. Its work is blocking (disk, tantivy), so it
/// runs on the runtime's blocking threads and never holds up the webhook.
#[derive(Clone)]
pub struct Embedded(pub std::sync::Arc<Store>);

impl Embedded {
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let store = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&store))
                .await
                .map_err(|err| StoreError::backend("a store task", err))?
        })
    }
}

impl AuditStore for Embedded {
    fn catalog(&self) -> StoreFuture<'_, Catalog> {
        let catalog = self.0.catalog_file().catalog().clone();
        Box::pin(std::future::ready(Ok(catalog)))
    }

    fn edit_catalog(&self, edit: CatalogEdit) -> StoreFuture<'_, Edited> {
        self.blocking(move |store| {
            let edited = store.catalog_file().edit(&edit)?;
            if let CatalogEdit::DeleteTopic { id } = &edit {
                store.delete_topic_data(id)?;
            }
            Ok(edited)
        })
    }

    fn route(&self) -> StoreFuture<'_, String> {
        let route = self.0.catalog_file().catalog().route().to_string();
        Box::pin(std::future::ready(Ok(route)))
    }

    fn search(&self, topic: String, request: SearchRequest) -> StoreFuture<'_, Page> {
        self.blocking(move |store| {
            store.search(
                &topic,
                &request.query,
                request.from,
                request.to,
                request.limit,
                request.cursor.as_deref(),
            )
        })
    }

    fn stats(&self, topic: String, request: StatsRequest) -> StoreFuture<'_, Stats> {
        self.blocking(move |store| store.stats(&topic, &request))
    }

    fn usage(&self, topic: String) -> StoreFuture<'_, TopicUsage> {
        self.blocking(move |store| store.usage(&topic))
    }

    fn enforce_retention(&self, now_micros: i64) -> StoreFuture<'_, Vec<String>> {
        self.blocking(move |store| {
            Ok(store
                .enforce_retention(now_micros)?
                .into_iter()
                .map(|path| path.display().to_string())
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Vec<u8> {
        let now = jiff::Timestamp::now();
        serde_json::to_vec(&serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": id, "stage": "ResponseComplete", "requestURI": "/api/v1/pods",
            "verb": "list", "user": {"username": "ann"},
            "requestReceivedTimestamp": now.to_string(), "stageTimestamp": now.to_string(),
        }))
        .unwrap()
    }

    fn count(store: &Store, topic: &str) -> u64 {
        store.usage(topic).unwrap().event_count
    }

    fn new_topic(store: &Store) -> String {
        let mut catalog = store.catalog_file();
        let Edited::Logset { logset, .. } = catalog
            .edit(&CatalogEdit::CreateLogset { name: "l".into() })
            .unwrap()
        else {
            panic!("a logset")
        };
        let Edited::Topic { topic, .. } = catalog
            .edit(&CatalogEdit::CreateTopic {
                logset_id: logset.id,
                name: "t".into(),
                retention_days: 30,
            })
            .unwrap()
        else {
            panic!("a topic")
        };
        topic.id
    }

    /// Today's schema less the fields named.
    fn schema_without(names: &[&str]) -> Schema {
        let (current, _) = index::schema();
        let mut builder = Schema::builder();
        for (_, entry) in current.fields() {
            if !names.contains(&entry.name()) {
                builder.add_field(entry.clone());
            }
        }
        builder.build()
    }

    #[test]
    fn every_window_finds_an_event_by_auditid_and_gives_it_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        let micros = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_microsecond();
        // A day each for the first release, the one before the auditID was lifted, and today.
        let days = [
            "2026-11-28T10:00:00Z",
            "2026-11-29T10:00:00Z",
            "2026-11-30T10:00:00Z",
        ];
        let lifted = ["auditIDHigh", "auditIDLow", "rawLifted"];
        let first = [&["impersonatedUser", "roleRef"][..], &lifted].concat();
        for (day, without) in days.iter().zip([&first[..], &lifted]) {
            let path = store
                .topic_dir(&topic)
                .join(day_dir_name(day_of(micros(day))));
            drop(Window::open(&path, &schema_without(without)).unwrap());
        }
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        // The kube-apiserver's form, and others a client may send as Audit-ID; every other event
        // is written with spacing and a key order of its own, which the raw event keeps.
        let ids = [
            "9dfef109-983c-4c30-a1b7-8e37be329aa9",
            "9DFEF109-983C-4C30-A1B7-8E37BE329AA9",
            "9dfef109-983c-4c30-01b7-8e37be329aa9",
            "request-7",
        ];
        let mut events = Vec::new();
        for (d, day) in days.iter().enumerate() {
            for (i, id) in ids.iter().enumerate() {
                // The same UUID in every window, so that each must tell its events apart itself.
                let name = format!("n{d}{i}");
                events.push(match i % 2 {
                    0 => format!(
                        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/pods/{name}","verb":"get","user":{{"username":"ann"}},"objectRef":{{"resource":"pods","name":"{name}"}},"stageTimestamp":"{day}"}}"#
                    ),
                    _ => format!(
                        "{{ \"stageTimestamp\" : \"{day}\", \"auditID\": \"{id}\",\n  \"verb\":\"get\", \"requestURI\":\"/x/{name}\", \"objectRef\":{{\"resource\":\"pods\",\"name\":\"{name}\"}},\"stage\":\"ResponseComplete\",\"level\":\"None\",\"user\":{{\"username\":\"ann\"}} }}"
                    ),
                });
            }
        }
        let slices: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        assert_eq!(store.apply(1, &topic, &slices, None).unwrap(), events.len());
        store.commit(1).unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let search = |q: &str| -> Vec<String> {
            let query = clusteraudit_core::query::parse_matchable(q).unwrap();
            let page = store
                .search(&topic, &query, i64::MIN / 2, i64::MAX / 2, 100, None)
                .unwrap();
            let mut raws: Vec<String> = page.events.iter().map(|raw| raw.get().into()).collect();
            raws.sort();
            raws
        };
        let mut expected = events.clone();
        expected.sort();
        assert_eq!(search(""), expected, "every event comes back as received");
        for (i, id) in ids.iter().enumerate() {
            let mut expected: Vec<String> = (0..days.len())
                .map(|d| events[d * ids.len() + i].clone())
                .collect();
            expected.sort();
            assert_eq!(search(&format!("auditID:\"{id}\"")), expected, "{id}");
        }
        assert!(search("auditID:\"9dfef109-983c-4c30-a1b7-8e37be329aa8\"").is_empty());
    }

    /// An impersonated request creating a binding to `role`, at `time`.
    fn impersonated_binding(id: &str, time: &str, role: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
            "auditID": id, "stage": "ResponseComplete",
            "requestURI": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "verb": "create", "user": {"username": "ann"},
            "impersonatedUser": {"username": "mallory"},
            "objectRef": {"resource": "clusterrolebindings", "name": id,
                          "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"},
            "requestObject": {"kind": "ClusterRoleBinding", "metadata": {"name": id},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                          "kind": "ClusterRole", "name": role}},
            "stageTimestamp": time,
        }))
        .unwrap()
    }

    #[test]
    fn a_window_created_before_the_newer_fields_is_written_and_searched_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        // The schema of the first release: today's, less the fields added since.
        let (current, _) = index::schema();
        let old_schema = schema_without(&[
            "impersonatedUser",
            "roleRef",
            "auditIDHigh",
            "auditIDLow",
            "rawLifted",
        ]);
        let old_day = "2026-11-29T10:00:00Z";
        let new_day = "2026-11-30T10:00:00Z";
        let micros = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_microsecond();
        let old_path = store
            .topic_dir(&topic)
            .join(day_dir_name(day_of(micros(old_day))));
        drop(Window::open(&old_path, &old_schema).unwrap());
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let events = [
            impersonated_binding("old", old_day, "cluster-admin"),
            impersonated_binding("new", new_day, "cluster-admin"),
            impersonated_binding("new-view", new_day, "view"),
        ];
        let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        assert_eq!(store.apply(1, &topic, &slices, None).unwrap(), 3);
        store.commit(1).unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let found = |q: &str| -> Vec<String> {
            let query = clusteraudit_core::query::parse_matchable(q).unwrap();
            let page = store
                .search(&topic, &query, i64::MIN / 2, i64::MAX / 2, 100, None)
                .unwrap();
            let mut ids: Vec<String> = page
                .events
                .iter()
                .map(|raw| serde_json::from_str::<Event>(raw.get()).unwrap().audit_id)
                .collect();
            ids.sort();
            ids
        };
        // The old window keeps its schema, and its events lack the fields.
        let old_window = index::Window::open(&old_path, &current).unwrap();
        assert!(old_window.fields.impersonated_user.is_none());
        assert!(old_window.fields.role_ref.is_none());
        assert_eq!(found("user:ann"), ["new", "new-view", "old"]);
        assert_eq!(found("impersonatedUser:*"), ["new", "new-view"]);
        assert_eq!(found("impersonatedUser:mallory"), ["new", "new-view"]);
        assert_eq!(found("not impersonatedUser:*"), ["old"]);
        assert_eq!(found("roleRef:cluster-admin"), ["new"]);
        assert_eq!(found("roleRef:clus* or roleRef:view"), ["new", "new-view"]);
        assert_eq!(found("not roleRef:*"), ["old"]);
        assert_eq!(found("verb:create -roleRef:view"), ["new", "old"]);
        let stats = store
            .stats(
                &topic,
                &StatsRequest {
                    query: clusteraudit_core::query::parse_matchable("impersonatedUser:*").unwrap(),
                    from: micros("2026-11-29T00:00:00Z"),
                    to: micros("2026-12-01T00:00:00Z"),
                    by: clusteraudit_store::StatsField::User,
                    interval_micros: 3_600_000_000,
                    top: 5,
                },
            )
            .unwrap();
        assert_eq!(stats.total, 2);
        assert_eq!(stats.top[0].value, "ann");
    }

    #[test]
    fn stats_count_every_matching_event_by_bucket_and_value_across_windows_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        let event = |id: usize, time: &str, user: &str, code: u32| {
            serde_json::to_vec(&serde_json::json!({
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": format!("e{id}"), "stage": "ResponseComplete",
                "requestURI": "/api/v1/pods", "verb": if id.is_multiple_of(2) { "get" } else { "list" },
                "user": {"username": user}, "responseStatus": {"code": code},
                "stageTimestamp": time,
            }))
            .unwrap()
        };
        // Two days, each written in two commits (two segments), with an hour without events.
        let batches = [
            vec![
                ("2026-11-29T22:10:00Z", "ann"),
                ("2026-11-29T22:20:00Z", "bob"),
            ],
            vec![("2026-11-29T23:59:59Z", "ann")],
            vec![
                ("2026-11-30T01:00:00Z", "cy"),
                ("2026-11-30T01:30:00Z", "ann"),
            ],
            vec![("2026-11-30T01:45:00Z", "bob")],
        ];
        let mut id = 0;
        for (position, batch) in batches.iter().enumerate() {
            let events: Vec<Vec<u8>> = batch
                .iter()
                .map(|(time, user)| {
                    id += 1;
                    event(id, time, user, if *user == "bob" { 403 } else { 200 })
                })
                .collect();
            let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
            store
                .apply(position as u64 + 1, &topic, &slices, None)
                .unwrap();
            store.commit(position as u64 + 1).unwrap();
        }
        let micros = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_microsecond();
        let hour = 3_600_000_000;
        let stats = |query: &str, by| {
            store
                .stats(
                    &topic,
                    &StatsRequest {
                        query: clusteraudit_core::query::parse_matchable(query).unwrap(),
                        from: micros("2026-11-29T00:00:00Z"),
                        to: micros("2026-11-30T23:59:59Z"),
                        by,
                        interval_micros: hour,
                        top: 2,
                    },
                )
                .unwrap()
        };
        let all = stats("", clusteraudit_store::StatsField::User);
        assert_eq!(all.total, 6);
        let buckets: Vec<(String, u64)> = all
            .over_time
            .iter()
            .map(|b| {
                let start = jiff::Timestamp::from_microsecond(b.start).unwrap();
                (start.to_string(), b.count)
            })
            .collect();
        assert_eq!(
            buckets,
            [
                ("2026-11-29T22:00:00Z".to_string(), 2),
                ("2026-11-29T23:00:00Z".to_string(), 1),
                ("2026-11-30T00:00:00Z".to_string(), 0),
                ("2026-11-30T01:00:00Z".to_string(), 3),
            ]
        );
        let top = |stats: &clusteraudit_store::Stats| -> Vec<(String, u64)> {
            stats
                .top
                .iter()
                .map(|t| (t.value.clone(), t.count))
                .collect()
        };
        // Three users, the top two: ties in value order.
        assert_eq!(top(&all), [("ann".to_string(), 3), ("bob".to_string(), 2)]);

        let codes = stats("verb:get", clusteraudit_store::StatsField::Code);
        assert_eq!(codes.total, 3);
        assert_eq!(
            top(&codes),
            [("403".to_string(), 2), ("200".to_string(), 1)]
        );
        assert_eq!(
            stats("user:nobody", clusteraudit_store::StatsField::Verb)
                .over_time
                .len(),
            0
        );
    }

    #[test]
    fn an_event_handed_over_decoded_is_indexed_as_handed_and_stored_as_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        let (a, b) = (event("a"), event("b"));
        // The webhook's decoded form of `a`, told apart by its user: finding it by that user
        // shows the indexer used it instead of decoding the bytes again.
        let mut handed: Event = serde_json::from_slice(&a).unwrap();
        handed.user.username = "handed".into();
        let time = handed.time_micros().unwrap();
        let decoded = [Some((&handed, time)), None];
        assert_eq!(
            store.apply(10, &topic, &[&a, &b], Some(&decoded)).unwrap(),
            2
        );
        store.commit(10).unwrap();
        let found = |q: &str| {
            let query = clusteraudit_core::query::parse_matchable(q).unwrap();
            store
                .search(&topic, &query, i64::MIN / 2, i64::MAX / 2, 10, None)
                .unwrap()
                .events
                .iter()
                .map(|raw| raw.get().as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(found("user:handed"), [a]);
        assert_eq!(found("user:ann"), [b]);
    }

    #[test]
    fn a_rolled_back_record_is_applied_again_once_and_a_deleted_topic_is_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        let (a, b) = (event("a"), event("b"));
        assert_eq!(store.apply(10, &topic, &[&a], None).unwrap(), 1);
        store.commit(10).unwrap();
        // A failure after the next record was added: it is dropped, and applied again.
        assert_eq!(store.apply(20, &topic, &[&b], None).unwrap(), 1);
        assert_eq!(store.rollback(), 1);
        assert!(!store.has_pending());
        // The replay from the last commit skips what is committed.
        assert_eq!(store.apply(10, &topic, &[&a], None).unwrap(), 0);
        assert_eq!(store.apply(20, &topic, &[&b], None).unwrap(), 1);
        store.commit(20).unwrap();
        assert_eq!(count(&store, &topic), 2);

        store
            .catalog_file()
            .edit(&CatalogEdit::DeleteTopic { id: topic.clone() })
            .unwrap();
        store.delete_topic_data(&topic).unwrap();
        // A replay of the log after the deletion.
        assert_eq!(store.apply(10, &topic, &[&a], None).unwrap(), 0);
        assert_eq!(store.apply(20, &topic, &[&b], None).unwrap(), 0);
        assert!(!store.has_pending());
        assert!(!dir.path().join("topics").join(&topic).exists());
    }

    #[test]
    fn a_prefix_finds_values_too_long_for_the_postings_beside_short_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let topic = new_topic(&store);
        let named = |id: &str, user: &str| {
            let mut event: serde_json::Value = serde_json::from_slice(&event(id)).unwrap();
            event["user"]["username"] = user.into();
            serde_json::to_vec(&event).unwrap()
        };
        // The inverted index leaves out a term this long; the column keeps it.
        let (long, short, other) = (
            named("long", &"y".repeat(100_000)),
            named("short", "yz"),
            named("other", "ann"),
        );
        store
            .apply(1, &topic, &[&long, &short, &other], None)
            .unwrap();
        store.commit(1).unwrap();
        let found = |query: &str| {
            let query = clusteraudit_core::query::parse(query).unwrap();
            let page = store.search(&topic, &query, 0, i64::MAX, 10, None).unwrap();
            let mut ids: Vec<String> = page
                .events
                .iter()
                .map(|e| {
                    let event: serde_json::Value = serde_json::from_str(e.get()).unwrap();
                    event["auditID"].as_str().unwrap().to_string()
                })
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(found("user:yyyy*"), ["long"]);
        assert_eq!(found("user:y*"), ["long", "short"]);
        assert_eq!(found("user:a*"), ["other"]);
    }
}
