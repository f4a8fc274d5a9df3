//! Freshness: how long after its batch is acknowledged an event is returned by search.
//!
//! While sending, the producer turns one event of a batch now and then into a marker: the event
//! stays what the generator made, but its auditID is fresh, with 8 bytes that name the run, so
//! no earlier run (same seed, same auditIDs) can answer for it. The marker travels in a normal
//! batch and shares its fate. When the batch is acknowledged the marker's clock starts; a poller
//! searches the collector every [`POLL_INTERVAL`] for all acknowledged markers not yet seen, in
//! one `auditID:a or auditID:b ...` query, and stops each clock when its marker is returned.
//! At most [`MAX_IN_FLIGHT`] markers are outstanding, so the search load stays small (and is
//! reported).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::{LoadgenError, Percentiles};

/// What a topic ID may not hold unescaped in a path segment: all but RFC 3986's unreserved.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// At most this many markers outstanding (minted and not yet found or given up).
pub const MAX_IN_FLIGHT: usize = 16;
/// How often the poller searches; the resolution of every freshness figure.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How much earlier than its minting a marker's search starts: its event is stamped with this
/// machine's clock just before, and the margin covers a slow generator by far.
const SEARCH_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct FreshnessArgs {
    /// Measure freshness: send marker events in normal batches and search the collector for each
    /// until it is returned; reports ack-to-searchable percentiles
    #[arg(long = "freshness")]
    pub enabled: bool,
    /// Time between markers
    #[arg(long = "freshness-interval", default_value = "250ms")]
    pub interval: humantime::Duration,
    /// How long to keep searching for acknowledged markers after sending stops; those still not
    /// found are reported as never found
    #[arg(long = "freshness-wait", default_value = "30s")]
    pub wait: humantime::Duration,
    /// Bearer token for the read API (`get` on auditevents.clusteraudit.io), when the collector
    /// checks readers (not needed with --insecure-dev)
    #[arg(long)]
    pub search_token_file: Option<PathBuf>,
}

impl Default for FreshnessArgs {
    fn default() -> Self {
        FreshnessArgs {
            enabled: false,
            interval: Duration::from_millis(250).into(),
            wait: Duration::from_secs(30).into(),
            search_token_file: None,
        }
    }
}

/// What the freshness measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FreshnessReport {
    /// Markers whose batch was acknowledged.
    pub markers_acked: u64,
    /// Of those, returned by search.
    pub markers_found: u64,
    /// Acknowledged, and still not returned by search `wait_seconds` after sending stopped.
    pub markers_never_found: u64,
    /// Markers whose batch was refused, dropped or never sent before the run ended (not counted
    /// in the figures: nothing was promised for them).
    pub markers_unacked: u64,
    /// Acknowledgement to the arrival of the first search answer that holds the marker.
    pub freshness_ms: Percentiles,
    /// The bound on the wait after sending stopped.
    pub wait_seconds: f64,
    /// The search load the measurement added.
    pub search_requests: u64,
    pub search_errors: u64,
    /// Why the last failed search failed (a 401 says the read API wants --search-token-file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_search_error: Option<String>,
    pub search_latency_ms: Percentiles,
}

/// A marker's clock: when it was minted (its event is stamped with the wall clock just before),
/// and when its batch got 200.
enum Marker {
    Unacked { minted: Instant },
    Acked { minted: Instant, at: Instant },
}

/// The markers of a run: which are outstanding, which were found and how fast. Pure bookkeeping;
/// the caller passes the times.
pub struct MarkerBook {
    run: [u8; 8],
    minted: u64,
    interval: Duration,
    next_due: Option<Instant>,
    outstanding: FxHashMap<String, Marker>,
    freshness_ms: Vec<f64>,
    unacked: u64,
    acked: u64,
}

impl MarkerBook {
    pub fn new(run: [u8; 8], interval: Duration) -> MarkerBook {
        MarkerBook {
            run,
            minted: 0,
            interval,
            next_due: None,
            outstanding: FxHashMap::default(),
            freshness_ms: Vec::new(),
            unacked: 0,
            acked: 0,
        }
    }

    /// Eight bytes that differ between runs: the clock and the process id.
    pub fn run_id() -> [u8; 8] {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        (nanos ^ (u64::from(std::process::id()) << 40)).to_be_bytes()
    }

    /// What every marker auditID of this run starts with.
    pub fn prefix(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.run);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()[..18]
            .to_string()
    }

    /// A new marker's auditID, when one is due at `now` and fewer than [`MAX_IN_FLIGHT`] are
    /// outstanding.
    pub fn mint(&mut self, now: Instant) -> Option<String> {
        if self.next_due.is_some_and(|due| now < due) || self.outstanding.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.next_due = Some(now + self.interval);
        self.minted += 1;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.run);
        bytes[8..].copy_from_slice(&self.minted.to_be_bytes());
        let id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        self.outstanding
            .insert(id.clone(), Marker::Unacked { minted: now });
        Some(id)
    }

    /// The marker's batch got 200 at `at`.
    pub fn acked(&mut self, id: &str, at: Instant) {
        if let Some(marker) = self.outstanding.get_mut(id)
            && let Marker::Unacked { minted } = *marker
        {
            *marker = Marker::Acked { minted, at };
            self.acked += 1;
        }
    }

    /// The marker's batch was given up (refused, or out of retries): nothing to wait for.
    pub fn dropped(&mut self, id: &str) {
        if let Some(Marker::Unacked { .. }) = self.outstanding.get(id) {
            self.outstanding.remove(id);
            self.unacked += 1;
        }
    }

    /// The acknowledged markers not found yet, oldest acknowledgement first.
    pub fn to_search(&self) -> Vec<String> {
        let mut acked: Vec<(Instant, &String)> = self
            .outstanding
            .iter()
            .filter_map(|(id, marker)| match marker {
                Marker::Acked { at, .. } => Some((*at, id)),
                Marker::Unacked { .. } => None,
            })
            .collect();
        acked.sort();
        acked.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// When the oldest acknowledged marker not found yet was minted: no marker searched for is
    /// stamped much before it.
    pub fn oldest_searched_mint(&self) -> Option<Instant> {
        self.outstanding
            .values()
            .filter_map(|marker| match marker {
                Marker::Acked { minted, .. } => Some(*minted),
                Marker::Unacked { .. } => None,
            })
            .min()
    }

    /// A search answered at `at` returned `id`; the first time counts.
    pub fn found(&mut self, id: &str, at: Instant) {
        if let Some(Marker::Acked { at: acked, .. }) = self.outstanding.get(id) {
            let took = at.saturating_duration_since(*acked);
            self.freshness_ms.push(took.as_secs_f64() * 1000.0);
            self.outstanding.remove(id);
        }
    }

    /// Ends the run: acknowledged markers still outstanding were never found, the others were
    /// never acknowledged. Returns (found percentiles, found, never found, unacked, acked).
    fn finish(mut self) -> (Percentiles, u64, u64, u64, u64) {
        let mut never_found = 0;
        for marker in self.outstanding.values() {
            match marker {
                Marker::Acked { .. } => never_found += 1,
                Marker::Unacked { .. } => self.unacked += 1,
            }
        }
        let found = self.freshness_ms.len() as u64;
        (
            Percentiles::from_samples(&mut self.freshness_ms),
            found,
            never_found,
            self.unacked,
            self.acked,
        )
    }
}

/// The user every marker event is made by. Markers are searched for by this user, through its
/// index, and told apart by auditID here: a search by auditID reads every stored ID in the time
/// range (a fast field, not an index), and such searches ten times a second took a seventh of
/// the collector's time at 60k events/s, which would have made the measurement its own load.
pub const MARKER_USER: &str = "clusteraudit-loadgen-marker";

/// The query that returns the markers.
pub fn marker_query() -> String {
    format!("user:\"{MARKER_USER}\"")
}

/// Markers a search pages through at most: at 4 a second, over a minute.
const SEARCH_PAGE: usize = 100;
const SEARCH_PAGES: usize = 3;

/// The measurement while it runs: the book the producer and senders write to, and what the poller
/// needs to search.
pub(crate) struct Freshness {
    pub book: Mutex<MarkerBook>,
    sending_done: AtomicBool,
    wait: Duration,
    client: reqwest::Client,
    search_url: reqwest::Url,
    token: Option<String>,
    /// Nothing of this run is stamped before this.
    run_from: jiff::Timestamp,
}

#[derive(serde::Deserialize)]
struct SearchPage {
    events: Vec<SearchedEvent>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(serde::Deserialize)]
struct SearchedEvent {
    #[serde(rename = "auditID", default)]
    audit_id: String,
}

#[derive(serde::Deserialize)]
struct RouteBody {
    #[serde(rename = "topicId")]
    topic_id: String,
}

impl Freshness {
    /// Finds the topic the webhook writes to (`GET /v1/route` on the first target's server),
    /// which is where the markers land.
    pub async fn start(
        args: &FreshnessArgs,
        client: reqwest::Client,
        target: &reqwest::Url,
    ) -> Result<Arc<Freshness>, LoadgenError> {
        let token = match &args.search_token_file {
            None => None,
            Some(path) => Some(crate::sender::read_token_file(path)?),
        };
        let fail = |what: String| LoadgenError::Freshness(what);
        let route_url = target
            .join("/v1/route")
            .map_err(|err| fail(err.to_string()))?;
        let mut request = client.get(route_url.clone());
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|err| fail(format!("GET {route_url}: {err}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(fail(format!("GET {route_url}: {status}: {}", body.trim())));
        }
        let route: RouteBody = response
            .json()
            .await
            .map_err(|err| fail(format!("GET {route_url}: {err}")))?;
        let search_url = target
            .join(&format!(
                "/v1/topics/{}/events",
                percent_encoding::utf8_percent_encode(&route.topic_id, PATH_SEGMENT)
            ))
            .map_err(|err| fail(err.to_string()))?;
        // Events are stamped with the wall clock: nothing of this run is older than a minute
        // before it, and the narrower range spares the store older days.
        let run_from = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
        let book = MarkerBook::new(MarkerBook::run_id(), args.interval.into());
        tracing::info!(
            topic = %route.topic_id,
            marker_prefix = %book.prefix(),
            "measuring freshness"
        );
        Ok(Arc::new(Freshness {
            book: Mutex::new(book),
            sending_done: AtomicBool::new(false),
            wait: args.wait.into(),
            client,
            search_url,
            token,
            run_from,
        }))
    }

    pub fn book(&self) -> std::sync::MutexGuard<'_, MarkerBook> {
        self.book.lock().expect("marker book lock")
    }

    pub fn sending_done(&self) {
        self.sending_done.store(true, Ordering::Relaxed);
    }

    /// Searches for acknowledged markers every [`POLL_INTERVAL`] until sending is done and every
    /// acknowledged marker was found, or the wait after sending runs out.
    pub async fn poll(self: Arc<Self>) -> FreshnessReport {
        let mut latencies_ms = Vec::new();
        let (mut requests, mut errors) = (0u64, 0u64);
        let mut last_error = None;
        let mut wait_until: Option<Instant> = None;
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.sending_done.load(Ordering::Relaxed) && wait_until.is_none() {
                wait_until = Some(Instant::now() + self.wait);
            }
            let ids = self.book().to_search();
            if let Some(until) = wait_until
                && (ids.is_empty() || Instant::now() >= until)
            {
                break;
            }
            if ids.is_empty() {
                continue;
            }
            requests += 1;
            let sent = Instant::now();
            match self.search().await {
                Ok(found) => {
                    let at = Instant::now();
                    latencies_ms.push((at - sent).as_secs_f64() * 1000.0);
                    let mut book = self.book();
                    for id in found {
                        book.found(&id, at);
                    }
                }
                Err(err) => {
                    errors += 1;
                    tracing::debug!(error = %err, "freshness search failed");
                    last_error = Some(err);
                }
            }
        }
        let book = std::mem::replace(&mut *self.book(), MarkerBook::new([0; 8], Duration::ZERO));
        let (freshness_ms, found, never_found, unacked, acked) = book.finish();
        FreshnessReport {
            markers_acked: acked,
            markers_found: found,
            markers_never_found: never_found,
            markers_unacked: unacked,
            freshness_ms,
            wait_seconds: self.wait.as_secs_f64(),
            search_requests: requests,
            search_errors: errors,
            last_search_error: last_error,
            search_latency_ms: Percentiles::from_samples(&mut latencies_ms),
        }
    }

    /// Where a search for the outstanding markers starts: a little before the oldest was minted,
    /// so that it returns few markers already found.
    fn search_from(&self) -> jiff::Timestamp {
        let Some(minted) = self.book().oldest_searched_mint() else {
            return self.run_from;
        };
        let age = jiff::SignedDuration::try_from(minted.elapsed()).unwrap_or_default();
        (jiff::Timestamp::now() - age - SEARCH_SLACK).max(self.run_from)
    }

    /// The auditIDs of the markers stored since a little before the oldest outstanding one,
    /// newest first, up to [`SEARCH_PAGES`] pages; those beyond are found by a later search.
    async fn search(&self) -> Result<Vec<String>, String> {
        let (query, from) = (marker_query(), self.search_from().to_string());
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..SEARCH_PAGES {
            let mut url = self.search_url.clone();
            url.query_pairs_mut()
                .append_pair("q", &query)
                .append_pair("from", &from)
                .append_pair("limit", &SEARCH_PAGE.to_string());
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let mut request = self.client.get(url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|err| err.to_string())?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("{status}: {}", body.trim()));
            }
            let page: SearchPage = response.json().await.map_err(|err| err.to_string())?;
            found.extend(page.events.into_iter().map(|e| e.audit_id));
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::extract::{Query, State};
    use axum::routing::{get, post};

    use super::*;
    use crate::{LoadgenArgs, run};

    /// What the fake collector saw: when each auditID arrived, the markers (by their user), and
    /// the searches.
    #[derive(Default)]
    struct Seen {
        received: HashMap<String, Instant>,
        markers: Vec<(String, Instant)>,
        searches: Vec<HashMap<String, String>>,
    }

    /// A collector that acknowledges every batch and returns an event from search only
    /// `index_delay` after it arrived (never, with `None`).
    async fn fake_collector(index_delay: Option<Duration>) -> (String, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let webhook = |State(seen): State<Arc<Mutex<Seen>>>, body: axum::body::Bytes| async move {
            let list: clusteraudit_core::audit::EventList = serde_json::from_slice(&body).unwrap();
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            for event in list.items {
                if event.user.username == MARKER_USER {
                    seen.markers.push((event.audit_id.clone(), now));
                }
                seen.received.insert(event.audit_id, now);
            }
            "{}"
        };
        let search = move |State(seen): State<Arc<Mutex<Seen>>>,
                           Query(params): Query<HashMap<String, String>>| async move {
            let mut seen = seen.lock().unwrap();
            let now = Instant::now();
            assert_eq!(params["q"], marker_query());
            // Newest first, one page.
            let limit: usize = params["limit"].parse().unwrap();
            let events: Vec<serde_json::Value> = seen
                .markers
                .iter()
                .rev()
                .filter(|(_, at)| index_delay.is_some_and(|delay| now >= *at + delay))
                .take(limit)
                .map(|(id, _)| serde_json::json!({"auditID": id, "verb": "get"}))
                .collect();
            seen.searches.push(params);
            axum::Json(serde_json::json!({"events": events, "cursor": null}))
        };
        let app = axum::Router::new()
            .route("/v1/webhook", post(webhook))
            .route(
                "/v1/route",
                get(|| async { axum::Json(serde_json::json!({"topicId": "t-1"})) }),
            )
            .route("/v1/topics/t-1/events", get(search))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/webhook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn measured(url: String, wait: Duration) -> LoadgenArgs {
        LoadgenArgs {
            target: vec![url],
            events: 12_000,
            batch: 100,
            concurrency: 2,
            token: None,
            token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            duration: None,
            rate: 8_000,
            seed: 1,
            acked_ids_file: None,
            json: false,
            freshness: FreshnessArgs {
                enabled: true,
                interval: Duration::from_millis(50).into(),
                wait: wait.into(),
                search_token_file: None,
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_acknowledged_marker_is_searched_for_until_it_is_returned() {
        let (url, seen) = fake_collector(Some(Duration::from_millis(300))).await;
        let report = run(measured(url, Duration::from_secs(30))).await.unwrap();
        let freshness = report.freshness.clone().expect("measured");
        eprintln!("{report}");
        assert!(freshness.markers_acked >= 5, "{freshness:?}");
        assert_eq!(freshness.markers_found, freshness.markers_acked);
        assert_eq!(freshness.markers_never_found, 0);
        assert_eq!(freshness.markers_unacked, 0);
        assert!(freshness.freshness_ms.p50 > 0.0);
        assert_eq!(freshness.search_errors, 0);

        let seen = seen.lock().unwrap();
        assert_eq!(seen.received.len(), 12_000, "markers replace no event");
        assert_eq!(seen.searches.len() as u64, freshness.search_requests);
        let froms: Vec<jiff::Timestamp> = seen
            .searches
            .iter()
            .map(|params| params["from"].parse().unwrap())
            .collect();
        // The range follows the oldest marker still outstanding.
        assert!(froms.first() < froms.last(), "{froms:?}");
        // Every marker is an event of this run, under its own auditID.
        let prefix = &seen.markers[0].0[..18];
        for (id, _) in &seen.markers {
            assert!(id.starts_with(prefix), "{id}");
        }
        assert_eq!(seen.markers.len() as u64, freshness.markers_acked);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["freshness"]["markers_found"], freshness.markers_found);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn markers_that_search_never_returns_are_counted_after_the_wait() {
        let (url, _seen) = fake_collector(None).await;
        let report = run(LoadgenArgs {
            events: 2_000,
            ..measured(url, Duration::from_millis(300))
        })
        .await
        .unwrap();
        let freshness = report.freshness.expect("measured");
        assert!(freshness.markers_acked >= 1, "{freshness:?}");
        assert_eq!(freshness.markers_found, 0);
        assert_eq!(freshness.markers_never_found, freshness.markers_acked);
        assert_eq!(freshness.freshness_ms.max, 0.0);
        assert!(freshness.search_requests >= 1);

        // Off by default: no report, and nothing searched.
        let (url, seen) = fake_collector(Some(Duration::ZERO)).await;
        let report = run(LoadgenArgs {
            events: 1_000,
            freshness: FreshnessArgs::default(),
            ..measured(url, Duration::ZERO)
        })
        .await
        .unwrap();
        assert!(report.freshness.is_none());
        assert!(seen.lock().unwrap().searches.is_empty());
        assert!(
            !serde_json::to_string(&report)
                .unwrap()
                .contains("freshness")
        );
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn markers_are_minted_at_the_interval_and_bounded_in_flight() {
        let t0 = Instant::now();
        let mut book = MarkerBook::new(*b"run-0001", 250 * MS);
        let first = book.mint(t0).unwrap();
        assert!(book.mint(t0 + 100 * MS).is_none(), "not due yet");
        let second = book.mint(t0 + 250 * MS).unwrap();
        assert_ne!(first, second);
        // Version-4 UUIDs whose first 8 bytes are the run's.
        for id in [&first, &second] {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(&id[..8], "72756e2d");
        }
        assert!(first.starts_with(&book.prefix()) && second.starts_with(&book.prefix()));
        let other_run = MarkerBook::new(*b"run-0002", 250 * MS).mint(t0).unwrap();
        assert_ne!(&other_run[..18], &first[..18]);

        let mut at = t0 + 250 * MS;
        for _ in 2..MAX_IN_FLIGHT {
            at += 250 * MS;
            assert!(book.mint(at).is_some());
        }
        assert!(book.mint(at + Duration::from_secs(10)).is_none(), "full");
        book.dropped(&first);
        assert!(
            book.mint(at + Duration::from_secs(10)).is_some(),
            "room again"
        );
    }

    #[test]
    fn the_search_starts_at_the_oldest_acknowledged_marker_still_outstanding() {
        let t0 = Instant::now();
        let mut book = MarkerBook::new(*b"run-0001", Duration::ZERO);
        let first = book.mint(t0).unwrap();
        let second = book.mint(t0 + 1000 * MS).unwrap();
        assert_eq!(book.oldest_searched_mint(), None, "nothing acknowledged");
        book.acked(&second, t0 + 1100 * MS);
        assert_eq!(book.oldest_searched_mint(), Some(t0 + 1000 * MS));
        book.acked(&first, t0 + 1200 * MS);
        assert_eq!(book.oldest_searched_mint(), Some(t0));
        book.found(&first, t0 + 1500 * MS);
        assert_eq!(book.oldest_searched_mint(), Some(t0 + 1000 * MS));
    }

    #[test]
    fn freshness_runs_from_the_ack_to_the_first_answer_that_holds_the_marker() {
        let t0 = Instant::now();
        let mut book = MarkerBook::new(*b"run-0001", Duration::ZERO);
        let ids: Vec<String> = (0..5).map(|_| book.mint(t0).unwrap()).collect();
        assert!(book.to_search().is_empty(), "nothing acknowledged yet");
        book.acked(&ids[1], t0 + 20 * MS);
        book.acked(&ids[0], t0 + 10 * MS);
        book.acked(&ids[2], t0 + 30 * MS);
        // A second 200 for the same marker (a retried batch) does not move its clock.
        book.acked(&ids[0], t0 + 500 * MS);
        book.dropped(&ids[3]);
        // Dropping an acknowledged marker changes nothing: it is still awaited.
        book.dropped(&ids[2]);
        assert_eq!(book.to_search(), ids[..3]);

        book.found(&ids[0], t0 + 1_010 * MS);
        book.found(&ids[0], t0 + 5_000 * MS);
        book.found(&ids[1], t0 + 520 * MS);
        book.found(&ids[4], t0 + 520 * MS);
        book.found("not-a-marker", t0);
        assert_eq!(book.to_search(), ids[2..3]);

        let (freshness, found, never_found, unacked, acked) = book.finish();
        assert_eq!((found, never_found, acked), (2, 1, 3));
        // ids[3] was dropped, ids[4] never acknowledged.
        assert_eq!(unacked, 2);
        assert_eq!((freshness.p50, freshness.max), (500.0, 1_000.0));
    }
}
