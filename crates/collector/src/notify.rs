//! Sends alert notifications to receivers: Alertmanager's v2 API (`POST <url>/api/v2/alerts`, a
//! JSON array of alerts) and plain JSON webhooks (`POST <url>`, `{"alerts": [...]}`, the same
//! alerts).
//!
//! The caller (evaluation, on the ingestion path) says what changed with [`Notifier::fire`] and
//! [`Notifier::resolve`], which only put the notification in each receiver's queue and return:
//! nothing on this path waits for a receiver. Each receiver has a bounded queue and a task that
//! sends from it in batches; when the queue is full the oldest notification is dropped (and
//! counted), and a newer notification of the same alert (the same labels) replaces a queued one,
//! so a receiver that is down for a while holds each alert's latest state once rather than its
//! history. A failed send (no connection, a timeout, a 5xx or 429 answer) is retried with capped
//! exponential back-off with jitter, the batch going back to the front of its queue meanwhile; a
//! receiver that refuses a batch for good (any other 4xx) has it dropped and counted.
//!
//! Alertmanager forgets an alert whose `endsAt` has passed, and expects its clients to send firing
//! alerts again and again: while an alert fires, the notifier re-sends it every `resend_interval`
//! with `endsAt` set to [`RESOLVE_AFTER_RESENDS`] intervals ahead, as Prometheus does. If the
//! collector dies, its alerts therefore resolve by themselves a few minutes later instead of firing
//! forever.
//!
//! Receivers come from [`NotifyArgs`] (`--alertmanager-url`, `--alert-webhook-url`, repeatable,
//! with a CA bundle and a bearer token file for https receivers) or [`NotifierOptions`] directly.
//!
//! Metrics (the collector's registry), by `receiver`: `notifications_sent_total`,
//! `notifications_failed_total` (send attempts that failed), `notifications_dropped_total` and
//! `notification_queue_depth`.

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use clusteraudit_core::alert::Notification;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{sync::Notify, task::JoinHandle};

use crate::metrics::{Metrics, ReceiverLabel};

/// While an alert fires, its `endsAt` is this many re-send intervals ahead: a receiver that misses
/// a few re-sends keeps it, and one that hears nothing more resolves it by itself.
pub const RESOLVE_AFTER_RESENDS: u32 = 4;

/// What a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverKind {
    /// `POST <url>/api/v2/alerts` with a JSON array of alerts.
    Alertmanager,
    /// `POST <url>` with `{"alerts": [...]}`.
    Webhook,
}

/// One receiver: where it is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Its `receiver` label in the metrics.
    pub name: String,
    pub kind: ReceiverKind,
    /// An Alertmanager's base URL (`https://alertmanager.monitoring:9093`), or the webhook's URL.
    pub url: String,
    /// CA bundle (PEM) to trust for an https URL, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token sent as `Authorization: Bearer`; read before each request, so
    /// a rotated token is picked up.
    pub bearer_token_file: Option<PathBuf>,
}

impl ReceiverConfig {
    /// An Alertmanager at `url`, named after its host and port.
    pub fn alertmanager(url: &str) -> ReceiverConfig {
        Self::new(ReceiverKind::Alertmanager, url)
    }

    /// A JSON webhook at `url`, named after its host and port.
    pub fn webhook(url: &str) -> ReceiverConfig {
        Self::new(ReceiverKind::Webhook, url)
    }

    fn new(kind: ReceiverKind, url: &str) -> ReceiverConfig {
        let url = url.trim_end_matches('/').to_string();
        let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let authority = authority.split('/').next().unwrap_or_default();
        // Credentials in the URL stay out of the metrics.
        let host = authority.rsplit('@').next().unwrap_or_default();
        ReceiverConfig {
            name: host.to_string(),
            kind,
            url,
            ca_file: None,
            bearer_token_file: None,
        }
    }

    fn endpoint(&self) -> String {
        match self.kind {
            ReceiverKind::Alertmanager => format!("{}/api/v2/alerts", self.url),
            ReceiverKind::Webhook => self.url.clone(),
        }
    }
}

/// The collector's flags for its alert receivers: every receiver gets every alert.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NotifyArgs {
    /// An Alertmanager to send alerts to (its base URL, `POST /api/v2/alerts` is appended);
    /// repeatable, e.g. once per replica of an Alertmanager cluster, as Prometheus does.
    #[arg(long = "alertmanager-url")]
    pub alertmanager_urls: Vec<String>,
    /// A URL to POST alerts to as JSON (`{"alerts": [...]}`, each alert as Alertmanager takes it);
    /// repeatable.
    #[arg(long = "alert-webhook-url")]
    pub webhook_urls: Vec<String>,
    /// CA bundle (PEM) the https receivers' certificates are checked against, beside the
    /// system's roots.
    #[arg(long = "alert-receiver-ca-file")]
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token for the receivers; read before each request.
    #[arg(long = "alert-receiver-bearer-token-file")]
    pub bearer_token_file: Option<PathBuf>,
    /// How often a firing alert is sent again; it ends by itself four intervals after the last.
    #[arg(long = "alert-resend-interval", default_value = "1m")]
    pub resend_interval: humantime::Duration,
    /// Notifications each receiver's queue holds while it is slow or down (the oldest go first).
    #[arg(long = "alert-queue-capacity", default_value_t = 1000)]
    pub queue_capacity: usize,
}

impl NotifyArgs {
    pub fn options(&self) -> NotifierOptions {
        let configure = |mut receiver: ReceiverConfig| {
            receiver.ca_file = self.ca_file.clone();
            receiver.bearer_token_file = self.bearer_token_file.clone();
            receiver
        };
        let receivers = self
            .alertmanager_urls
            .iter()
            .map(|url| configure(ReceiverConfig::alertmanager(url)))
            .chain(
                self.webhook_urls
                    .iter()
                    .map(|url| configure(ReceiverConfig::webhook(url))),
            )
            .collect();
        NotifierOptions {
            receivers,
            resend_interval: self.resend_interval.into(),
            queue_capacity: self.queue_capacity,
            ..NotifierOptions::default()
        }
    }
}

/// How the notifier sends.
#[derive(Clone, Debug)]
pub struct NotifierOptions {
    pub receivers: Vec<ReceiverConfig>,
    /// How often a firing alert is sent again (Prometheus' default is a minute).
    pub resend_interval: Duration,
    /// Notifications each receiver's queue holds; beyond, the oldest is dropped.
    pub queue_capacity: usize,
    /// Notifications in one request.
    pub max_batch: usize,
    /// The first retry's delay, doubled at each failure up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's deadline, connecting included.
    pub request_timeout: Duration,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            receivers: Vec::new(),
            resend_interval: Duration::from_secs(60),
            queue_capacity: 1000,
            max_batch: 64,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("receiver {name}: {url:?} must start with https:// or http://")]
    Url { name: String, url: String },
    #[error("receiver {name}: reading the CA file {path}: {source}")]
    CaFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("receiver {name}: {reason}")]
    Client { name: String, reason: String },
}

/// The alerts firing now and when each is sent again. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct Firing {
    alerts: BTreeMap<BTreeMap<String, String>, Notification>,
    resend_interval: Duration,
}

impl Firing {
    pub fn new(resend_interval: Duration) -> Firing {
        Firing {
            alerts: BTreeMap::new(),
            resend_interval,
        }
    }

    /// When an alert sent at `now` ends unless it is sent again.
    pub fn ends_at(&self, now: SystemTime) -> SystemTime {
        now + self.resend_interval * RESOLVE_AFTER_RESENDS
    }

    /// Records that `notification`'s alert fires, and returns it as it is to be sent.
    pub fn fire(&mut self, mut notification: Notification, now: SystemTime) -> Notification {
        notification.ends_at = Some(self.ends_at(now));
        self.alerts
            .insert(notification.labels.clone(), notification.clone());
        notification
    }

    /// Records that `notification`'s alert no longer fires, and returns it as it is to be sent:
    /// with its own `endsAt`, or `now`.
    pub fn resolve(&mut self, mut notification: Notification, now: SystemTime) -> Notification {
        self.alerts.remove(&notification.labels);
        notification.ends_at = Some(notification.ends_at.unwrap_or(now).min(now));
        notification
    }

    /// Every firing alert with its `endsAt` moved ahead from `now`: what a re-send sends.
    pub fn resend(&mut self, now: SystemTime) -> Vec<Notification> {
        let ends_at = self.ends_at(now);
        self.alerts
            .values_mut()
            .map(|notification| {
                notification.ends_at = Some(ends_at);
                notification.clone()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Forgets every firing alert without resolving it: another sender carries on with them.
    pub fn forget(&mut self) {
        self.alerts.clear();
    }
}

/// A receiver's pending notifications, oldest first, at most one per alert.
#[derive(Debug)]
pub struct Queue {
    items: VecDeque<Notification>,
    capacity: usize,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a notification; one of the same alert already queued is replaced in its place.
    /// Returns how many were dropped to make room (0 or 1: the oldest).
    pub fn push(&mut self, notification: Notification) -> u64 {
        // A linear scan: the queue is bounded, and pushes come from state changes and re-sends,
        // not from every event.
        if let Some(queued) = self
            .items
            .iter_mut()
            .find(|queued| queued.labels == notification.labels)
        {
            *queued = notification;
            return 0;
        }
        self.items.push_back(notification);
        self.trim()
    }

    /// Takes up to `max` of the oldest.
    pub fn take(&mut self, max: usize) -> Vec<Notification> {
        let n = max.min(self.items.len());
        self.items.drain(..n).collect()
    }

    /// Puts back a batch that could not be sent, in front of what was queued since: except the
    /// alerts queued again meanwhile (the newer state wins). Returns how many were dropped to stay
    /// within capacity (the oldest first).
    pub fn put_back(&mut self, batch: Vec<Notification>) -> u64 {
        for notification in batch.into_iter().rev() {
            if !self
                .items
                .iter()
                .any(|queued| queued.labels == notification.labels)
            {
                self.items.push_front(notification);
            }
        }
        self.trim()
    }

    fn trim(&mut self) -> u64 {
        let mut dropped = 0;
        while self.items.len() > self.capacity {
            self.items.pop_front();
            dropped += 1;
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The delays between a failing receiver's attempts: from `min` doubling up to `max`, each
/// stretched by a random part of itself (below double), so that several collectors retrying one
/// Alertmanager spread out.
pub fn backoff(min: Duration, max: Duration, seed: u64) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max.max(min))
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
}

/// Sends alert notifications to the configured receivers; see the module's documentation.
/// Clones share the receivers; the sending tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

struct Shared {
    receivers: Vec<Arc<Receiver>>,
    firing: Mutex<Firing>,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Receiver {
    config: ReceiverConfig,
    endpoint: String,
    client: reqwest::Client,
    queue: Mutex<Queue>,
    wake: Notify,
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    depth: Gauge,
}

/// Why an attempt failed.
enum Failure {
    /// Worth trying again: no answer, a 5xx, a 429 (with how long it asked to wait).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused the batch itself (a 4xx): sending it again would not help.
    Refused(String),
}

impl Notifier {
    /// Starts a sending task per receiver and the re-send task, on the current tokio runtime.
    pub fn start(options: NotifierOptions, metrics: &Metrics) -> Result<Notifier, NotifyError> {
        clusteraudit_io::tls::install_crypto_provider();
        let mut receivers = Vec::new();
        for config in &options.receivers {
            receivers.push(Arc::new(Receiver::new(config.clone(), &options, metrics)?));
        }
        let shared = Arc::new(Shared {
            receivers,
            firing: Mutex::new(Firing::new(options.resend_interval)),
        });
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ u64::from(std::process::id());
        let mut tasks = Vec::new();
        for (i, receiver) in shared.receivers.iter().enumerate() {
            tasks.push(tokio::spawn(
                receiver
                    .clone()
                    .run(options.clone(), seed.wrapping_add(i as u64)),
            ));
        }
        tasks.push(tokio::spawn(resend(
            Arc::downgrade(&shared),
            options.resend_interval,
        )));
        Ok(Notifier {
            shared,
            _tasks: Arc::new(Tasks(tasks)),
        })
    }

    /// An alert fires (or still does, with a new count): queued for every receiver at once, and
    /// re-sent every re-send interval until [`Notifier::resolve`]. Never waits for a receiver.
    pub fn fire(&self, notification: Notification) {
        let notification = lock(&self.shared.firing).fire(notification, SystemTime::now());
        self.send(notification);
    }

    /// An alert no longer fires: queued with its `endsAt` (now, unless it carries an earlier one)
    /// and no longer re-sent. Never waits for a receiver.
    pub fn resolve(&self, notification: Notification) {
        let notification = lock(&self.shared.firing).resolve(notification, SystemTime::now());
        self.send(notification);
    }

    /// Stops re-sending what fires, without resolving it: another replica evaluates the rules
    /// now and sends them.
    pub fn hand_over(&self) {
        lock(&self.shared.firing).forget();
    }

    /// Alerts firing now, as far as the notifier knows.
    pub fn firing(&self) -> usize {
        lock(&self.shared.firing).len()
    }

    fn send(&self, notification: Notification) {
        self.shared.send(std::iter::once(notification));
    }
}

impl Shared {
    fn send(&self, notifications: impl IntoIterator<Item = Notification> + Clone) {
        for receiver in &self.receivers {
            receiver.enqueue(notifications.clone());
        }
    }
}

async fn resend(shared: std::sync::Weak<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: nothing has fired for a whole interval yet.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let due = lock(&shared.firing).resend(SystemTime::now());
        if !due.is_empty() {
            shared.send(due);
        }
    }
}

impl Receiver {
    fn new(
        config: ReceiverConfig,
        options: &NotifierOptions,
        metrics: &Metrics,
    ) -> Result<Receiver, NotifyError> {
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(NotifyError::Url {
                name: config.name.clone(),
                url: config.url.clone(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(options.request_timeout.min(Duration::from_secs(5)))
            .timeout(options.request_timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| NotifyError::CaFile {
                name: config.name.clone(),
                path: path.clone(),
                source,
            })?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| NotifyError::Client {
                    name: config.name.clone(),
                    reason: format!("{}: {err}", path.display()),
                })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|err| NotifyError::Client {
            name: config.name.clone(),
            reason: err.to_string(),
        })?;
        let label = ReceiverLabel {
            receiver: config.name.clone(),
        };
        Ok(Receiver {
            endpoint: config.endpoint(),
            client,
            queue: Mutex::new(Queue::new(options.queue_capacity)),
            wake: Notify::new(),
            sent: metrics.notifications_sent.get_or_create(&label).clone(),
            failed: metrics.notifications_failed.get_or_create(&label).clone(),
            dropped: metrics.notifications_dropped.get_or_create(&label).clone(),
            depth: metrics
                .notification_queue_depth
                .get_or_create(&label)
                .clone(),
            config,
        })
    }

    fn enqueue(&self, notifications: impl IntoIterator<Item = Notification>) {
        let mut queue = lock(&self.queue);
        let mut dropped = 0;
        for notification in notifications {
            dropped += queue.push(notification);
        }
        self.depth.set(queue.len() as i64);
        drop(queue);
        if dropped > 0 {
            self.dropped.inc_by(dropped);
        }
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, options: NotifierOptions, seed: u64) {
        let mut delays = backoff(options.min_backoff, options.max_backoff, seed);
        loop {
            let batch = loop {
                let batch = {
                    let mut queue = lock(&self.queue);
                    let batch = queue.take(options.max_batch.max(1));
                    self.depth.set(queue.len() as i64);
                    batch
                };
                if !batch.is_empty() {
                    break batch;
                }
                self.wake.notified().await;
            };
            match self.post(&batch).await {
                Ok(()) => {
                    self.sent.inc_by(batch.len() as u64);
                    delays = backoff(options.min_backoff, options.max_backoff, seed);
                }
                Err(Failure::Refused(reason)) => {
                    self.failed.inc();
                    self.dropped.inc_by(batch.len() as u64);
                    tracing::error!(receiver = %self.config.name, %reason, alerts = batch.len(), "the receiver refused the notifications; they are dropped");
                }
                Err(Failure::Retry {
                    reason,
                    retry_after,
                }) => {
                    self.failed.inc();
                    let delay = delays.next().unwrap_or(options.max_backoff);
                    let delay = retry_after
                        .map_or(delay, |asked| delay.max(asked.min(options.max_backoff)));
                    tracing::warn!(receiver = %self.config.name, %reason, retry_in = ?delay, "sending notifications failed; retrying");
                    let dropped = {
                        let mut queue = lock(&self.queue);
                        let dropped = queue.put_back(batch);
                        self.depth.set(queue.len() as i64);
                        dropped
                    };
                    if dropped > 0 {
                        self.dropped.inc_by(dropped);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn post(&self, batch: &[Notification]) -> Result<(), Failure> {
        let body = match self.config.kind {
            ReceiverKind::Alertmanager => serde_json::to_vec(batch),
            ReceiverKind::Webhook => serde_json::to_vec(&serde_json::json!({ "alerts": batch })),
        }
        .map_err(|err| Failure::Refused(format!("encoding: {err}")))?;
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(path) = &self.config.bearer_token_file {
            let token = std::fs::read_to_string(path).map_err(|err| Failure::Retry {
                reason: format!("reading the bearer token {}: {err}", path.display()),
                retry_after: None,
            })?;
            request = request.bearer_auth(token.trim());
        }
        let response = request.send().await.map_err(|err| Failure::Retry {
            reason: error_chain(&err),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let reason = format!("{status}: {}", text.chars().take(500).collect::<String>());
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Retry {
                reason,
                retry_after,
            })
        } else {
            Err(Failure::Refused(reason))
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn alert(name: &str, user: &str) -> Notification {
        Notification {
            labels: BTreeMap::from([
                ("alertname".to_string(), name.to_string()),
                ("user".to_string(), user.to_string()),
            ]),
            annotations: BTreeMap::from([("summary".to_string(), format!("{user} again"))]),
            starts_at: at(0),
            ends_at: None,
            generator_url: "https://audit.example/ui/search?q=x".into(),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn users(notifications: &[Notification]) -> Vec<&str> {
        notifications
            .iter()
            .map(|n| n.labels["user"].as_str())
            .collect()
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_holds_one_state_per_alert() {
        let mut queue = Queue::new(3);
        for user in ["a", "b", "c"] {
            assert_eq!(queue.push(alert("r", user)), 0);
        }
        assert_eq!(queue.push(alert("r", "d")), 1);
        assert_eq!(queue.len(), 3);
        // b's newer state replaces the queued one in its place: nothing is dropped.
        let mut newer = alert("r", "b");
        newer.annotations.insert("summary".into(), "newer".into());
        assert_eq!(queue.push(newer), 0);
        let batch = queue.take(2);
        assert_eq!(users(&batch), ["b", "c"]);
        assert_eq!(batch[0].annotations["summary"], "newer");
        assert_eq!(users(&queue.take(10)), ["d"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_batch_put_back_goes_first_yields_to_newer_states_and_stays_within_capacity() {
        let mut queue = Queue::new(3);
        queue.push(alert("r", "a"));
        queue.push(alert("r", "b"));
        let batch = queue.take(2);
        // While the batch was out, b changed again and two more alerts came.
        queue.push(alert("r", "b"));
        queue.push(alert("r", "c"));
        assert_eq!(queue.put_back(batch), 0);
        assert_eq!(users(&queue.take(10)), ["a", "b", "c"]);

        let mut queue = Queue::new(3);
        for user in ["a", "b"] {
            queue.push(alert("r", user));
        }
        let batch = queue.take(2);
        for user in ["c", "d"] {
            queue.push(alert("r", user));
        }
        // Four alerts for three places: the oldest (a) goes.
        assert_eq!(queue.put_back(batch), 1);
        assert_eq!(users(&queue.take(10)), ["b", "c", "d"]);
    }

    #[test]
    fn back_off_doubles_from_the_first_delay_up_to_the_cap_with_jitter_below_double() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let expected = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for seed in 0..20 {
            let delays: Vec<Duration> = backoff(min, max, seed).take(expected.len()).collect();
            for (delay, base) in delays.iter().zip(expected) {
                let base = Duration::from_millis(base);
                assert!(
                    *delay >= base && *delay < base * 2,
                    "seed {seed}: {delays:?}"
                );
            }
        }
        // Different seeds spread out.
        let first = |seed| backoff(min, max, seed).nth(3).unwrap();
        assert_ne!(first(1), first(2));
    }

    #[test]
    fn a_firing_alert_is_resent_with_its_end_moved_ahead_until_it_resolves() {
        let interval = Duration::from_secs(60);
        let mut firing = Firing::new(interval);
        let sent = firing.fire(alert("r", "a"), at(10));
        assert_eq!(sent.ends_at, Some(at(10 + 240)));
        assert_eq!(sent.starts_at, at(0));
        firing.fire(alert("r", "b"), at(20));
        assert_eq!(firing.len(), 2);

        let resent = firing.resend(at(70));
        assert_eq!(users(&resent), ["a", "b"]);
        assert!(resent.iter().all(|n| n.ends_at == Some(at(70 + 240))));
        assert!(resent.iter().all(|n| n.starts_at == at(0)));

        let resolved = firing.resolve(alert("r", "a"), at(100));
        assert_eq!(resolved.ends_at, Some(at(100)));
        assert_eq!(users(&firing.resend(at(130))), ["b"]);

        // An end the caller knows (when the window emptied) is kept, never one in the future.
        let mut ended = alert("r", "b");
        ended.ends_at = Some(at(90));
        assert_eq!(firing.resolve(ended, at(140)).ends_at, Some(at(90)));
        let mut later = alert("r", "c");
        later.ends_at = Some(at(1000));
        assert_eq!(firing.resolve(later, at(140)).ends_at, Some(at(140)));
        assert!(firing.resend(at(190)).is_empty());
    }

    #[test]
    fn flags_name_every_receiver_with_the_shared_ca_and_token() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            notify: NotifyArgs,
        }
        let cli = Cli::parse_from([
            "collector",
            "--alertmanager-url=https://am-0.monitoring:9093",
            "--alertmanager-url=https://am-1.monitoring:9093",
            "--alert-webhook-url=https://hooks.example/audit",
            "--alert-receiver-ca-file=/etc/ca.pem",
            "--alert-resend-interval=30s",
        ]);
        let options = cli.notify.options();
        let names: Vec<(&str, ReceiverKind)> = options
            .receivers
            .iter()
            .map(|r| (r.name.as_str(), r.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("am-0.monitoring:9093", ReceiverKind::Alertmanager),
                ("am-1.monitoring:9093", ReceiverKind::Alertmanager),
                ("hooks.example", ReceiverKind::Webhook),
            ]
        );
        assert!(
            options
                .receivers
                .iter()
                .all(|r| r.ca_file.as_deref() == Some(std::path::Path::new("/etc/ca.pem")))
        );
        assert_eq!(options.resend_interval, Duration::from_secs(30));
        assert_eq!(options.queue_capacity, 1000);
        // No receiver: a notifier with nothing to send to.
        assert!(
            Cli::parse_from(["collector"])
                .notify
                .options()
                .receivers
                .is_empty()
        );
    }

    #[test]
    fn receivers_are_named_by_host_and_post_to_their_endpoint() {
        let am = ReceiverConfig::alertmanager("https://user:pw@am.monitoring:9093/");
        assert_eq!(am.name, "am.monitoring:9093");
        assert_eq!(
            am.endpoint(),
            "https://user:pw@am.monitoring:9093/api/v2/alerts"
        );
        let hook = ReceiverConfig::webhook("http://hooks.example/audit");
        assert_eq!(hook.name, "hooks.example");
        assert_eq!(hook.endpoint(), "http://hooks.example/audit");
    }
}
