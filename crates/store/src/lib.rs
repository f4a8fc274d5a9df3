//! The store interface: what the collector's API needs from wherever the events are kept. Two
//! implementations: the embedded store (one machine, the default) and OpenSearch (several
//! collector replicas sharing one cluster).
//!
//! Writing is not part of it: each implementation is fed from the collector's write-ahead log in
//! its own way (the embedded store commits windows with the log position they reach; OpenSearch
//! is shipped to in bulk and the log released once it acknowledged).

pub mod catalog;

use std::{future::Future, pin::Pin};

pub use catalog::{Catalog, CatalogEdit, Edited, Logset, Topic, TopicPolicy};
use clusteraudit_core::query::Query;
use clusteraudit_io::FileError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store cannot be reached or is overloaded; asking again later may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("no logset {0:?}")]
    LogsetNotFound(String),
    #[error("no topic {0:?}")]
    TopicNotFound(String),
    #[error("logset {0:?} still holds topics; delete them first")]
    LogsetNotEmpty(String),
    #[error("topic {0:?} is where the webhook writes; route the webhook elsewhere first")]
    TopicInUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the catalog {location} is unreadable: {message}")]
    Catalog { location: String, message: String },
}

impl StoreError {
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC day (days since the epoch) of a time in microseconds.
pub fn day_of(time_micros: i64) -> i64 {
    time_micros.div_euclid(MICROS_PER_DAY)
}

/// The calendar date of a UTC day.
pub fn date_of_day(day: i64) -> jiff::civil::Date {
    jiff::Timestamp::from_second(day * 86_400)
        .expect("a day of a parsed event time is within jiff's range")
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

/// The UTC day of a calendar date.
pub fn day_of_date(date: jiff::civil::Date) -> Option<i64> {
    let days = jiff::civil::date(1970, 1, 1).until(date).ok()?.get_days();
    Some(i64::from(days))
}

/// Whether a day's data is past a topic's retention: `retention_days` whole days before today are
/// kept beside today, so an event is kept at least that long; never today.
pub fn expired(day: i64, today: i64, retention_days: u32) -> bool {
    day < today - i64::from(retention_days)
}

/// What to find: events of a topic matching `query` within [from, to] (micros), newest first.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: Query,
    pub from: i64,
    pub to: i64,
    pub limit: usize,
    /// Where a previous page ended, as that page said.
    pub cursor: Option<String>,
}

/// The most events one page holds.
pub const MAX_PAGE: usize = 1000;

/// A page of search results, newest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page {
    /// The raw events, exactly as received.
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// Where the next page starts, if there may be one.
    pub cursor: Option<String>,
}

/// Raw events kept as bytes, as JSON values for a page; bytes that are not JSON are left out.
pub fn raw_events(raw: Vec<Vec<u8>>) -> Vec<Box<serde_json::value::RawValue>> {
    raw.into_iter()
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .filter_map(|text| serde_json::value::RawValue::from_string(text).ok())
        .collect()
}

/// What to count: events matching `query` within [from, to] (micros), per `interval_micros`,
/// and the `top` values of `by`.
#[derive(Debug, Clone)]
pub struct StatsRequest {
    pub query: Query,
    pub from: i64,
    pub to: i64,
    pub by: StatsField,
    pub interval_micros: i64,
    pub top: usize,
}

/// The most time buckets a stats answer holds; a finer interval is widened to fit.
pub const MAX_TIME_BUCKETS: i64 = 2_000;

impl StatsRequest {
    /// Refuses a request whose interval cuts its range into more than [`MAX_TIME_BUCKETS`]:
    /// `interval=1s` over 30 days would be millions of buckets, built in memory.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.to < self.from {
            return Err(StoreError::Invalid("from is after to".into()));
        }
        let interval = self.interval_micros.max(1_000_000);
        let buckets = (self.to - self.from) / interval + 1;
        if buckets > MAX_TIME_BUCKETS {
            let least = (self.to - self.from) / MAX_TIME_BUCKETS / 1_000_000 + 1;
            return Err(StoreError::Invalid(format!(
                "interval: {}s over this range makes {buckets} buckets, more than {MAX_TIME_BUCKETS}; use an interval of at least {least}s",
                interval / 1_000_000
            )));
        }
        Ok(())
    }

    /// The interval actually used: at least a second, and coarse enough for the bucket cap.
    pub fn effective_interval(&self) -> i64 {
        let span = (self.to - self.from).max(0);
        let floor = (span / MAX_TIME_BUCKETS).max(1);
        let interval = self.interval_micros.max(1_000_000);
        if interval >= floor {
            interval
        } else {
            // Whole seconds, so bucket starts stay readable.
            (floor + 999_999) / 1_000_000 * 1_000_000
        }
    }

    pub fn effective_top(&self) -> usize {
        self.top.clamp(1, 100)
    }
}

/// The fields stats can group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatsField {
    User,
    Verb,
    Resource,
    Namespace,
    Code,
}

impl StatsField {
    pub fn field_name(self) -> &'static str {
        match self {
            StatsField::User => "user",
            StatsField::Verb => "verb",
            StatsField::Resource => "resource",
            StatsField::Namespace => "namespace",
            StatsField::Code => "code",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total: u64,
    pub interval_micros: i64,
    pub by: String,
    pub over_time: Vec<TimeBucket>,
    pub top: Vec<TopValue>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimeBucket {
    /// Microseconds since the epoch.
    pub start: i64,
    pub count: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopValue {
    pub value: String,
    pub count: u64,
}

/// Facts about a topic's data.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicUsage {
    pub size_bytes: u64,
    pub event_count: u64,
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where the collector's API reads from and keeps its catalog.
pub trait AuditStore: Send + Sync + 'static {
    /// The catalog as it is now.
    fn catalog(&self) -> StoreFuture<'_, Catalog>;
    /// Applies one edit to the catalog; deleting a topic also deletes its events.
    fn edit_catalog(&self, edit: CatalogEdit) -> StoreFuture<'_, Edited>;
    /// The topic the webhook writes to. May lag a route change made elsewhere by a moment.
    fn route(&self) -> StoreFuture<'_, String>;
    fn search(&self, topic: String, request: SearchRequest) -> StoreFuture<'_, Page>;
    fn stats(&self, topic: String, request: StatsRequest) -> StoreFuture<'_, Stats>;
    fn usage(&self, topic: String) -> StoreFuture<'_, TopicUsage>;
    /// Deletes the days of every topic that are past its retention; returns what was deleted.
    fn enforce_retention(&self, now_micros: i64) -> StoreFuture<'_, Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_deletes_whole_past_days_only() {
        let today = 20_000;
        assert!(expired(today - 8, today, 7));
        assert!(!expired(today - 7, today, 7), "a whole week is kept");
        assert!(!expired(today, today, 1));
        assert!(!expired(today - 1, today, 1));
        assert!(expired(today - 2, today, 1));
    }

    #[test]
    fn days_and_dates_round_trip() {
        let day = day_of(1_764_460_800_000_000 + 5);
        let date = date_of_day(day);
        assert_eq!(date.to_string(), "2025-11-30");
        assert_eq!(day_of_date(date), Some(day));
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn stats_intervals_are_capped_in_bucket_count() {
        let request = |from: i64, to: i64, interval| StatsRequest {
            query: Query::All,
            from,
            to,
            by: StatsField::User,
            interval_micros: interval,
            top: 1000,
        };
        assert_eq!(request(0, 1_800_000_000, 1).effective_interval(), 1_000_000);
        assert_eq!(request(0, 3_600_000_000, 1).effective_interval(), 2_000_000);
        let year = 365 * MICROS_PER_DAY;
        let wide = request(0, year, 1_000_000).effective_interval();
        assert!(year / wide <= MAX_TIME_BUCKETS, "{wide}");
        assert_eq!(request(0, 1, 1).effective_top(), 100);
        assert!(request(0, 1_800_000_000, 1_000_000).check().is_ok());
        let refused = request(0, 30 * MICROS_PER_DAY, 1_000_000)
            .check()
            .unwrap_err();
        assert!(
            refused.to_string().contains("2592001 buckets")
                && refused.to_string().contains("at least 1297s"),
            "{refused}"
        );
        assert!(
            request(0, 30 * MICROS_PER_DAY, 1297 * 1_000_000)
                .check()
                .is_ok()
        );
        assert!(request(10, 0, 1_000_000).check().is_err());
    }
}

/// Events of one topic counted by the values of some fields: what an alert rule's window holds
/// when several collectors share the store and it, not one replica, has seen every event.
#[derive(Debug, Clone)]
pub struct GroupCountRequest {
    pub query: Query,
    pub from: i64,
    pub to: i64,
    /// The fields whose values make a group, in order; none: one group of every match.
    pub group_by: Vec<clusteraudit_core::query::Field>,
    /// Groups returned at most; past it the answer says it is incomplete.
    pub max_groups: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Each group's values (`""` for an event without the field) and its count.
    pub groups: Vec<(Vec<String>, u64)>,
    /// False when more groups exist than were asked for.
    pub complete: bool,
}

/// The version a shared document was read at, for a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedVersion {
    pub seq_no: u64,
    pub primary_term: u64,
}

/// When a shared document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteIf {
    Always,
    /// Only if nobody wrote it yet.
    Absent,
    /// Only if nobody wrote it since it was read at this version.
    Unchanged(SharedVersion),
}

/// What the collectors sharing one store share besides events and the catalog: small documents
/// (a lease, each replica's view of its nodes) and counts by group.
pub trait SharedState: Send + Sync + 'static {
    /// Counts for several requests over one topic, each answered on its own (one rule's bad
    /// query does not stop the others).
    fn count_groups(
        &self,
        topic: String,
        requests: Vec<GroupCountRequest>,
    ) -> StoreFuture<'_, Vec<Result<GroupCounts, StoreError>>>;
    /// A shared document by id, with the version it was read at.
    fn read_shared(
        &self,
        id: String,
    ) -> StoreFuture<'_, Option<(serde_json::Value, SharedVersion)>>;
    /// Writes a shared document of `kind`; false when the condition did not hold.
    fn write_shared(
        &self,
        id: String,
        kind: &'static str,
        value: serde_json::Value,
        condition: WriteIf,
    ) -> StoreFuture<'_, bool>;
    /// Every shared document of `kind` (a few hundred at most are read).
    fn list_shared(&self, kind: &'static str) -> StoreFuture<'_, Vec<serde_json::Value>>;
}
