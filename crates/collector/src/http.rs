//! The collector's HTTP surface: the webhook, the logset/topic admin API, search, health and
//! metrics.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query as QueryParams, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    CollectorArgs, CollectorError, Shared,
    auth::{Access, AuthError},
    batch,
};
use clusteraudit_core::policy::enforce::Enforced;
use clusteraudit_store::{CatalogEdit, Edited, SearchRequest, StoreError};

/// Whether the TLS connection carried a client certificate the configured CA verified.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifiedClientCertificate(pub bool);

/// The address a request's connection comes from.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Searches and stats running at once.
pub const MAX_CONCURRENT_QUERIES: usize = 8;

/// What connections and request bodies may cost; see the flags of the same names.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_in_flight_requests: usize,
    pub max_in_flight_bytes: usize,
}

impl ServeLimits {
    pub fn from_args(args: &CollectorArgs) -> ServeLimits {
        let args = &args.serve;
        ServeLimits {
            max_connections: args.max_connections.max(1),
            header_read_timeout: args.header_read_timeout.into(),
            body_read_timeout: args.body_read_timeout.into(),
            idle_timeout: args.idle_timeout.into(),
            max_in_flight_requests: args.max_in_flight_requests.max(1),
            max_in_flight_bytes: args.max_in_flight_bytes.max(1),
        }
    }
}

/// The one budget of every route that reads a body: requests and bytes held at once.
struct BodyBudget {
    shared: Arc<Shared>,
    requests: Arc<tokio::sync::Semaphore>,
    bytes: Arc<tokio::sync::Semaphore>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.max_body_bytes;
    let budget = Arc::new(BodyBudget {
        requests: Arc::new(tokio::sync::Semaphore::new(
            shared.limits.max_in_flight_requests,
        )),
        bytes: Arc::new(tokio::sync::Semaphore::new(
            shared
                .limits
                .max_in_flight_bytes
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        shared: shared.clone(),
    });
    Router::new()
        .route("/v1/webhook", post(webhook))
        .route("/v1/webhook/{node}", post(webhook_from_node))
        .route("/v1/alerts", get(get_alerts).put(set_alerts))
        .route("/v1/nodes", get(get_nodes).put(set_nodes))
        .route("/v1/logsets", get(list_logsets).post(create_logset))
        .route("/v1/logsets/{id}", get(get_logset).delete(delete_logset))
        .route(
            "/v1/logsets/{id}/topics",
            get(list_topics).post(create_topic),
        )
        .route(
            "/v1/topics/{id}",
            get(get_topic).patch(update_topic).delete(delete_topic),
        )
        .route(
            "/v1/topics/{id}/policy",
            get(get_policy).put(set_policy).delete(delete_policy),
        )
        .route(
            "/v1/topics/{id}/routes",
            get(get_routes).put(set_routes).delete(delete_routes),
        )
        .route("/v1/topics/{id}/events", get(search_events))
        .route("/v1/topics/{id}/stats", get(topic_stats))
        .route("/v1/route", get(get_route).put(set_route))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::ui::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(budget, guard))
        .with_state(shared)
}

/// How much of a body declared over the limit is read (and dropped) before the 413.
const OVERSIZED_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// What a call of the read and admin API needs, by its method. Setting or removing a topic's
/// policy or routes changes the topic: `update` either way, so one permission covers what the
/// operator does.
fn access_for(method: &Method, path: &str) -> Access {
    if path == "/v1/nodes" && method == Method::GET {
        return Access::Nodes;
    }
    if (path.ends_with("/policy")
        || path.ends_with("/routes")
        || path == "/v1/alerts"
        || path == "/v1/nodes")
        && (method == Method::PUT || method == Method::DELETE)
    {
        return Access::Update;
    }
    match *method {
        Method::POST => Access::Create,
        Method::PUT | Method::PATCH => Access::Update,
        Method::DELETE => Access::Delete,
        _ => Access::Read,
    }
}

/// Every call under /v1 is authenticated from its headers alone, before anything else: the
/// webhook by its token or client certificate, the API by TokenReview and SubjectAccessReview.
/// Only then is a body read, within the one budget of requests and bytes, and within
/// --body-read-timeout; handlers get it whole.
async fn guard(State(budget): State<Arc<BodyBudget>>, request: Request, next: Next) -> Response {
    let shared = &budget.shared;
    let path = request.uri().path();
    if !path.starts_with("/v1/") {
        // The page, health and metrics read no body: one sent is never read, and the connection
        // is closed after the answer.
        return next.run(request).await;
    }
    let webhook = path == "/v1/webhook" || path.starts_with("/v1/webhook/");
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body = declared.is_some_and(|n| n > 0)
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let refuse = |status: StatusCode, reason: &str, message: String| {
        if webhook {
            shared.metrics.reject(reason);
        }
        let mut response = ApiError(status, message).into_response();
        if has_body {
            // The body stays unread: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    };
    if webhook {
        let verified = request
            .extensions()
            .get::<VerifiedClientCertificate>()
            .is_some_and(|c| c.0);
        if !shared.auth.webhook_allowed(request.headers(), verified) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "valid webhook credentials are required".into(),
            );
        }
    } else {
        let peer = request.extensions().get::<Peer>().map(|p| p.0.ip());
        if let Err(err) = shared
            .auth
            .authorize(request.headers(), peer, access_for(request.method(), path))
            .await
        {
            let ApiError(status, message) = err.into();
            let mut response = refuse(status, "unauthenticated", message);
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            return response;
        }
    }
    if !has_body {
        return next.run(request).await;
    }
    let limit = shared.max_body_bytes;
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        return refuse_oversized(request, declared, limit).await;
    }
    let Ok(_request_permit) = budget.requests.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many requests with bodies in flight; retry shortly".into(),
        );
    };
    // A body of unknown length may grow to the limit: it is counted at the limit.
    let charge = declared.map_or(limit, |n| n as usize).min(limit).max(1);
    let Ok(_byte_permit) = u32::try_from(charge)
        .ok()
        .and_then(|n| budget.bytes.clone().try_acquire_many_owned(n).ok())
        .ok_or(())
    else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many request bytes in flight; retry shortly".into(),
        );
    };
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(
        shared.limits.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await;
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(err)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("reading the body failed: {err}"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!(
                    "the body did not arrive within {:?}",
                    shared.limits.body_read_timeout
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// A body declared larger than the limit, from an authenticated caller: 413. What it sends
/// meanwhile is read (and dropped) for a while, so that a client still sending gets the answer
/// rather than a connection torn down under it.
async fn refuse_oversized(request: Request, declared: u64, limit: usize) -> Response {
    if declared <= OVERSIZED_DRAIN_BYTES {
        use futures::StreamExt;
        let mut stream = request.into_body().into_data_stream();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = stream.next().await {}
        });
        let _ = drained.await;
    }
    let mut response = ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body ({declared} bytes) is over the limit of {limit} bytes"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An error as an HTTP response: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let status = match &err {
            StoreError::LogsetNotFound(_) | StoreError::TopicNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::LogsetNotEmpty(_) | StoreError::TopicInUse(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, err.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let status = match &err {
            AuthError::Unauthenticated | AuthError::InvalidToken => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
        };
        ApiError(status, err.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Its caller is authenticated by [`guard`].
async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    take_batch(shared, None, headers, body).await
}

/// The webhook at a node's own address: the agent writes its node's name into the webhook
/// kubeconfig it gives the kube-apiserver, so that the collector knows where batches come from
/// (and notices a node from which none come).
async fn webhook_from_node(
    State(shared): State<Arc<Shared>>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !super::alerts::valid_node_name(&node) {
        shared.metrics.reject("invalid");
        return ApiError(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a node name"),
        )
        .into_response();
    }
    take_batch(shared, Some(node), headers, body).await
}

async fn take_batch(
    shared: Arc<Shared>,
    node: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim() == "application/json");
    if !json_body {
        shared.metrics.reject("content-type");
        return ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the webhook takes application/json (an audit.k8s.io/v1 EventList)".into(),
        )
        .into_response();
    }
    let timed = match batch::decode_parsed_event_list(&body) {
        Ok(items) => items,
        Err(err) => {
            shared.metrics.reject("invalid");
            return ApiError(StatusCode::BAD_REQUEST, err.to_string()).into_response();
        }
    };
    // The kube-apiserver's webhook retries a 503 with backoff, and keeps the batch meanwhile.
    if shared
        .drain
        .store_unavailable
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        shared.metrics.reject("store-unavailable");
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store cannot take batches (a full or failing disk); retry shortly".into(),
            5,
        );
    }
    let backlog = shared.backlog_bytes();
    if backlog > shared.max_backlog_bytes {
        shared.metrics.reject("store-backlog");
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the store is {backlog} bytes behind the log (bound {}); retry shortly",
                shared.max_backlog_bytes
            ),
            1,
        );
    }
    let topic = match shared.store.route().await {
        Ok(topic) => topic,
        Err(err) => {
            shared.metrics.reject("route-unavailable");
            return retry_later(StatusCode::SERVICE_UNAVAILABLE, err.to_string(), 5);
        }
    };
    // Each event's time decides the day it is kept under: one from a far future or from before
    // the topic's retention is left out, and the rest of the batch stored.
    let retention = shared.enforcement.retention_days(&topic);
    let now = now_micros();
    // The topic's policy decides what of each event is kept, before the log: what it drops costs
    // no disk. What it keeps whole stays the kube-apiserver's exact bytes.
    let policy = shared.enforcement.for_topic(&topic);
    // Each event kept is also stored, as kept, in the topics of the routes it matches, within
    // their own retention.
    let routes = shared.enforcement.routes_for(&topic);
    // Matched before the append, while the events are decoded; counted once acknowledged.
    let alert_rules = shared.alerting.live_rules();
    let mut hits = Vec::new();
    let mut targets_of_event: Vec<&str> = Vec::new();
    let mut routed: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut tally = super::policy::Tally::default();
    let mut items: Vec<std::borrow::Cow<'_, str>> = Vec::with_capacity(timed.len());
    // Handed to the drain with the record, so that it does not decode them again.
    let hand_over = shared
        .wal
        .handover()
        .is_some_and(|handover| handover.has_room());
    let mut decoded = Vec::with_capacity(if hand_over { timed.len() } else { 0 });
    let mut refused = Vec::new();
    for (index, (item, time, event)) in timed.into_iter().enumerate() {
        if let Err(refusal) = batch::check_time(time, now, retention) {
            refused.push((index, refusal));
            continue;
        }
        let kept: std::borrow::Cow<'_, str> = match &policy {
            None => item.into(),
            Some(policy) => match policy.judge(item, &event, &mut tally) {
                Enforced::Keep => item.into(),
                Enforced::Reduce(reduced) => reduced.into(),
                Enforced::Drop(_) => continue,
            },
        };
        targets_of_event.clear();
        if let Some(routes) = &routes {
            for target in routes.targets(&event) {
                let retention = shared.enforcement.retention_days(target);
                if batch::check_time(time, now, retention).is_err() {
                    continue;
                }
                targets_of_event.push(target);
                match routed.iter_mut().find(|(t, _)| *t == target) {
                    Some((_, indexes)) => indexes.push(items.len()),
                    None => routed.push((target, vec![items.len()])),
                }
            }
        }
        if !alert_rules.is_empty() {
            alert_rules.observe(&topic, &targets_of_event, &event, time, &mut hits);
        }
        if hand_over {
            // A reduced event's logged bytes are not what was decoded: the drain decodes those.
            let whole = matches!(kept, std::borrow::Cow::Borrowed(_));
            decoded.push(whole.then_some((event, time)));
        }
        items.push(kept);
    }
    let count = items.len() as u64;
    let accepted = |shared: &Shared, hits| {
        shared.alerting.record(hits);
        if let Some(node) = &node {
            shared.alerting.nodes.record(node, &shared.metrics);
        }
        tally.record(&shared.metrics);
        for (target, indexes) in &routed {
            shared
                .metrics
                .routed
                .get_or_create(&super::metrics::TopicLabel {
                    topic: target.to_string(),
                })
                .inc_by(indexes.len() as u64);
        }
        for (_, refusal) in &refused {
            shared.metrics.refuse_event(refusal.reason());
        }
        if !refused.is_empty() {
            tracing::warn!(
                refused = refused.len(),
                stored = count,
                "events more than an hour ahead or older than the topic's retention were left out"
            );
        }
        let refused: Vec<_> = refused
            .iter()
            .map(|(index, refusal)| json!({"index": index, "reason": refusal.reason()}))
            .collect();
        (StatusCode::OK, Json(json!({"refused": refused}))).into_response()
    };
    if items.is_empty() {
        return accepted(&shared, hits);
    }
    // One record, so one sync and one acknowledgement cover the batch and its routed copies.
    let mut record = batch::encode_record(&topic, &items);
    for (target, indexes) in &routed {
        let copies: Vec<&str> = indexes.iter().map(|&i| items[i].as_ref()).collect();
        batch::append_section(&mut record, target, &copies);
    }
    let decoded = hand_over.then(|| {
        super::handover::Decoded::new(
            decoded,
            routed.iter().map(|(_, indexes)| indexes.clone()).collect(),
        )
    });
    let pending = match shared.wal.try_append(record, decoded) {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            shared.metrics.reject("queue-full");
            return retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "the collector is catching up; retry shortly".into(),
                1,
            );
        }
        Err(err) => {
            shared.metrics.reject("log-unavailable");
            return retry_later(StatusCode::SERVICE_UNAVAILABLE, err.to_string(), 5);
        }
    };
    match pending.await {
        Ok(Ok(_)) => {
            shared.metrics.events_received.inc_by(count);
            shared
                .metrics
                .batch_ack_seconds
                .observe(started.elapsed().as_secs_f64());
            accepted(&shared, hits)
        }
        Ok(Err(reason)) => {
            shared.metrics.reject("log-write");
            retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the write-ahead log could not make the batch durable: {reason}"),
                5,
            )
        }
        Err(_) => {
            shared.metrics.reject("log-write");
            retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "the write-ahead log stopped".into(),
                5,
            )
        }
    }
}

/// A refusal the caller should try again after `seconds`: the kube-apiserver's webhook retries a
/// 429 or 503 with backoff and keeps the batch meanwhile.
fn retry_later(status: StatusCode, message: String, seconds: u32) -> Response {
    let mut response = ApiError(status, message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Ready while the webhook can take batches: it knows where they go, and the backlog is below
/// its bound. The server only listens once the log is replayed
/// into the embedded store, so listening is most of it; what remains is the backlog: at its bound
/// the webhook refuses batches, and the Service should send them to another replica. A store that
/// is down but still within the bound keeps the collector ready: the log holds the events.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if let Err(err) = shared.store.route().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no route for the webhook yet: {err}\n"),
        )
            .into_response();
    }
    let backlog = shared.backlog_bytes();
    let age = shared.oldest_pending_age();
    if backlog > shared.max_backlog_bytes {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store is {backlog} bytes behind the log (bound {}); the oldest waiting event is {}s old\n",
                shared.max_backlog_bytes,
                age.as_secs()
            ),
        )
            .into_response();
    }
    if backlog > 0 && age > Duration::from_secs(30) {
        return format!(
            "ok: {backlog} bytes wait for the store; the oldest is {}s old\n",
            age.as_secs()
        )
        .into_response();
    }
    "ok".into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .backlog_bytes
        .set(shared.backlog_bytes() as i64);
    shared
        .metrics
        .oldest_pending_seconds
        .set(shared.oldest_pending_age().as_secs_f64());
    shared.metrics.queue_depth.set(shared.wal.queued() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn list_logsets(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let logsets = shared.store.catalog().await?.logsets().to_vec();
    Ok(Json(json!({"items": logsets})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLogset {
    name: String,
}

async fn create_logset(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<Response> {
    let request: NewLogset = parse_json(&body)?;
    let edited = shared
        .store
        .edit_catalog(CatalogEdit::CreateLogset { name: request.name })
        .await?;
    Ok(created_or_found(edited))
}

async fn get_logset(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let logset = shared.store.catalog().await?.logset(&id)?.clone();
    Ok(Json(logset).into_response())
}

async fn delete_logset(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared
        .store
        .edit_catalog(CatalogEdit::DeleteLogset { id })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_topics(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let topics = shared.store.catalog().await?.topics_of(&id)?;
    Ok(Json(json!({"items": topics})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewTopic {
    name: String,
    #[serde(default)]
    retention_days: Option<u32>,
}

async fn create_topic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: NewTopic = parse_json(&body)?;
    let edited = shared
        .store
        .edit_catalog(CatalogEdit::CreateTopic {
            logset_id: id,
            name: request.name,
            retention_days: request
                .retention_days
                .unwrap_or(clusteraudit_store::catalog::DEFAULT_RETENTION_DAYS),
        })
        .await?;
    Ok(created_or_found(edited))
}

/// 201 with what was created, or 200 with what already existed under that name.
fn created_or_found(edited: Edited) -> Response {
    match edited {
        Edited::Logset { logset, created } => {
            (created_status(created), Json(logset)).into_response()
        }
        Edited::Topic { topic, created } => (created_status(created), Json(topic)).into_response(),
        Edited::Policy(policy) => Json(policy).into_response(),
        Edited::Done => StatusCode::NO_CONTENT.into_response(),
    }
}

fn created_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn topic_view(shared: &Shared, id: &str) -> ApiResult<serde_json::Value> {
    let topic = shared.store.catalog().await?.topic(id)?.clone();
    let usage = shared.store.usage(id.to_string()).await?;
    let mut value = serde_json::to_value(topic).expect("a topic serializes");
    value["sizeBytes"] = json!(usage.size_bytes);
    value["eventCount"] = json!(usage.event_count);
    Ok(value)
}

async fn get_topic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(topic_view(&shared, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TopicPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    retention_days: Option<u32>,
}

async fn update_topic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let patch: TopicPatch = parse_json(&body)?;
    shared
        .store
        .edit_catalog(CatalogEdit::UpdateTopic {
            id: id.clone(),
            name: patch.name,
            retention_days: patch.retention_days,
        })
        .await?;
    Ok(Json(topic_view(&shared, &id).await?).into_response())
}

async fn delete_topic(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared
        .store
        .edit_catalog(CatalogEdit::DeleteTopic { id })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_policy(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let catalog = shared.store.catalog().await?;
    catalog.topic(&id)?;
    match catalog.policy(&id) {
        Some(policy) => Ok(Json(policy).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("topic {id:?} enforces no policy: its events are stored as received"),
        )),
    }
}

/// Takes an `audit.k8s.io/v1` Policy (JSON, decoded strictly and validated as the kube-apiserver
/// would); a policy refused changes nothing. Enforced on this replica before the answer.
async fn set_policy(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let policy: clusteraudit_core::audit::Policy =
        serde_json::from_slice(&body).map_err(|err| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not an audit.k8s.io/v1 Policy: {err}"),
            )
        })?;
    let edited = shared
        .store
        .edit_catalog(CatalogEdit::SetPolicy {
            topic_id: id,
            policy: Box::new(policy),
        })
        .await?;
    shared.enforcement.refresh(&shared.store).await;
    Ok(created_or_found(edited))
}

async fn delete_policy(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared
        .store
        .edit_catalog(CatalogEdit::DeletePolicy { topic_id: id })
        .await?;
    shared.enforcement.refresh(&shared.store).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RoutesBody {
    routes: Vec<RouteBody>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteBody {
    #[serde(default)]
    query: String,
    topic_id: String,
}

async fn routes_view(shared: &Shared, id: &str) -> ApiResult<Response> {
    let catalog = shared.store.catalog().await?;
    catalog.topic(id)?;
    let routes = catalog
        .routes(id)
        .iter()
        .map(|r| RouteBody {
            query: r.query.clone(),
            topic_id: r.topic_id.clone(),
        })
        .collect();
    Ok(Json(RoutesBody { routes }).into_response())
}

/// A topic's routes: `{"routes":[{"query":"...","topicId":"..."}]}`, empty when it has none.
async fn get_routes(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    routes_view(&shared, &id).await
}

/// Replaces a topic's routes. A query that does not parse (named by its index and column), a
/// target that is no topic or is the topic itself: 400, and nothing changes. Routed on this
/// replica before the answer.
async fn set_routes(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body: RoutesBody = parse_json(&body)?;
    let routes = body
        .routes
        .into_iter()
        .map(|r| clusteraudit_store::catalog::TopicRoute {
            query: r.query,
            topic_id: r.topic_id,
        })
        .collect();
    shared
        .store
        .edit_catalog(CatalogEdit::SetRoutes {
            topic_id: id.clone(),
            routes,
        })
        .await?;
    shared.enforcement.refresh(&shared.store).await;
    routes_view(&shared, &id).await
}

async fn delete_routes(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared
        .store
        .edit_catalog(CatalogEdit::SetRoutes {
            topic_id: id,
            routes: Vec::new(),
        })
        .await?;
    shared.enforcement.refresh(&shared.store).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_alerts(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.alerting.view()).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRules {
    rules: Vec<clusteraudit_core::alert::RuleSpec>,
}

/// Replaces the alert rules (the operator sets them from the AuditAlert objects); they take
/// effect at once on this replica, and on the others at their next read of the catalog.
async fn set_alerts(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<Response> {
    let AlertRules { rules } = parse_json(&body)?;
    let count = rules.len();
    shared
        .store
        .edit_catalog(CatalogEdit::SetAlerts { rules })
        .await?;
    shared.alerting.refresh(&shared.store).await;
    Ok(Json(json!({ "rules": count })).into_response())
}

async fn get_nodes(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.alerting.nodes.view()).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedNodes {
    expected: Vec<String>,
}

/// Which nodes' kube-apiservers run an auditing revision (the operator says), so that a silent
/// one raises an audit gap.
async fn set_nodes(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<Response> {
    let ExpectedNodes { expected } = parse_json(&body)?;
    if let Some(bad) = expected.iter().find(|n| !super::alerts::valid_node_name(n)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{bad:?} is not a node name"),
        ));
    }
    shared.alerting.expect_nodes(&expected).await?;
    Ok(Json(shared.alerting.nodes.view()).into_response())
}

async fn get_route(State(shared): State<Arc<Shared>>) -> ApiResult<Response> {
    let route = shared.store.catalog().await?.route().to_string();
    Ok(Json(json!({"topicId": route})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Route {
    topic_id: String,
}

async fn set_route(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult<Response> {
    let route: Route = parse_json(&body)?;
    shared
        .store
        .edit_catalog(CatalogEdit::SetRoute {
            topic_id: route.topic_id.clone(),
        })
        .await?;
    Ok(Json(json!({"topicId": route.topic_id})).into_response())
}

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn search_events(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<SearchParams>,
) -> ApiResult<Response> {
    let now = now_micros();
    let (query, from, to) = read_request(
        &shared,
        &id,
        &params.q,
        (params.from.as_deref(), 0),
        // Clocks drift: a day ahead still counts as now.
        (params.to.as_deref(), now + 86_400_000_000),
    )
    .await?;
    let limit = params.limit.unwrap_or(100);
    let request = SearchRequest {
        query,
        from,
        to,
        limit,
        cursor: params.cursor,
    };
    let page = timed(&shared, shared.store.search(id, request)).await?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
struct StatsParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    top: Option<usize>,
}

async fn topic_stats(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<StatsParams>,
) -> ApiResult<Response> {
    let now = now_micros();
    let (query, from, to) = read_request(
        &shared,
        &id,
        &params.q,
        (params.from.as_deref(), now - 86_400_000_000),
        (params.to.as_deref(), now),
    )
    .await?;
    let by: clusteraudit_store::StatsField =
        serde_json::from_value(json!(params.by.as_deref().unwrap_or("user"))).map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "by: one of user, verb, resource, namespace, code".into(),
            )
        })?;
    let interval = match &params.interval {
        Some(text) => humantime::parse_duration(text)
            .map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("interval: {text:?} is not a duration such as 1h"),
                )
            })?
            .as_micros() as i64,
        // About fifty buckets over the range.
        None => ((to - from) / 50).max(60_000_000),
    };
    let top = params.top.unwrap_or(10);
    let request = clusteraudit_store::StatsRequest {
        query,
        from,
        to,
        by,
        interval_micros: interval,
        top,
    };
    request.check()?;
    let stats = timed(&shared, shared.store.stats(id, request)).await?;
    Ok(Json(stats).into_response())
}

/// A store query, timed for /metrics; refused (429) while [`MAX_CONCURRENT_QUERIES`] run, so
/// that readers cannot take the machine from the webhook.
async fn timed<T>(
    shared: &Shared,
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> ApiResult<T> {
    let Ok(_permit) = shared.queries.try_acquire() else {
        shared.metrics.reject("queries-busy");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_CONCURRENT_QUERIES} searches are running; retry shortly"),
        ));
    };
    let started = Instant::now();
    let result = query.await?;
    shared
        .metrics
        .query_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(result)
}

/// The common part of a read (authorized by [`guard`]): the topic's existence, the query and the time
/// range (each bound given or defaulted).
async fn read_request(
    shared: &Shared,
    topic: &str,
    q: &str,
    from: (Option<&str>, i64),
    to: (Option<&str>, i64),
) -> ApiResult<(clusteraudit_core::query::Query, i64, i64)> {
    shared.store.catalog().await?.topic(topic)?;
    let query = clusteraudit_core::query::parse(q)
        .map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("q: {err}")))?;
    let now = now_micros();
    let bound = |(given, default): (Option<&str>, i64), name: &str| match given {
        Some(text) => parse_time(text, now)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{name}: {e}"))),
        None => Ok(default),
    };
    Ok((query, bound(from, "from")?, bound(to, "to")?))
}

pub fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// RFC 3339, or a duration before now (`24h`, `15m`).
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_microsecond());
    }
    humantime::parse_duration(text)
        .map(|ago| now - ago.as_micros() as i64)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as 24h"))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|err| ApiError(StatusCode::BAD_REQUEST, err.to_string()))
}

/// The TLS configuration from the flags: the serving certificate, and the CA of webhook client
/// certificates if one is given.
pub fn tls_acceptor(args: &CollectorArgs) -> Result<tokio_rustls::TlsAcceptor, CollectorError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let read = |path: &std::path::PathBuf, what| {
        std::fs::read(path).map_err(|source| CollectorError::Read {
            what,
            path: path.clone(),
            source,
        })
    };
    let cert_path = args
        .tls_cert
        .as_ref()
        .ok_or(CollectorError::Tls("--tls-cert is required".into()))?;
    let key_path = args
        .tls_key
        .as_ref()
        .ok_or(CollectorError::Tls("--tls-key is required".into()))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert_path, "reading the certificate")?)
            .collect::<Result<_, _>>()
            .map_err(|err| CollectorError::Tls(format!("{}: {err}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_path, "reading the key")?)
        .map_err(|err| CollectorError::Tls(format!("{}: {err}", key_path.display())))?;
    let builder = rustls::ServerConfig::builder();
    let config = match &args.webhook_client_ca {
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca_path, "reading the client CA")?) {
                let cert = cert
                    .map_err(|err| CollectorError::Tls(format!("{}: {err}", ca_path.display())))?;
                roots
                    .add(cert)
                    .map_err(|err| CollectorError::Tls(format!("{}: {err}", ca_path.display())))?;
            }
            // Optional: token callers and API readers present no certificate.
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|err| CollectorError::Tls(err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .map_err(|err| CollectorError::Tls(err.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The read buffer a connection may grow to: headers larger than this are refused (431), and a
/// thousand slow connections hold at most this much each.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Serves the router, over TLS unless `tls` is none (--insecure-dev), telling handlers whether a
/// client certificate was verified and where the connection comes from. At --max-connections,
/// accepting waits; a failing accept (out of file descriptors, say) is retried after a pause that
/// doubles up to a second rather than at once.
pub async fn serve(
    args: &CollectorArgs,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    metrics: super::metrics::Metrics,
) -> Result<(), CollectorError> {
    let limits = ServeLimits::from_args(args);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CollectorError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %args.listen, tls = tls.is_some(), ?limits, "serving");
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut pause = Duration::ZERO;
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "at the connection cap: new connections wait"
                );
                tokio::select! {
                    permit = connections.clone().acquire_owned() => permit.expect("never closed"),
                    _ = &mut shutdown => return Ok(()),
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    pause = Duration::ZERO;
                    accepted
                }
                Err(err) => {
                    pause = (pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tracing::warn!(error = %err, ?pause, "accepting a connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let tls = tls.clone();
        let router = router.clone();
        let limits = limits.clone();
        let open = OpenConnection::new(&metrics);
        tokio::spawn(async move {
            let _open = (permit, open);
            let _ = tcp.set_nodelay(true);
            let activity = Arc::new(Activity::new());
            let tcp = Watched {
                inner: tcp,
                activity: activity.clone(),
            };
            match tls {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        limits.header_read_timeout,
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let verified = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|chain| !chain.is_empty());
                    serve_connection(tls, peer, verified, router, &limits, activity).await
                }
                None => serve_connection(tcp, peer, false, router, &limits, activity).await,
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    verified: bool,
    router: Router,
    limits: &ServeLimits,
    activity: Arc<Activity>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let watched = activity.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request
                .extensions_mut()
                .insert(VerifiedClientCertificate(verified));
            request.extensions_mut().insert(Peer(peer));
            let mut router = router.clone();
            // A request being handled (a long search, say) keeps its connection, quiet or not.
            let handling = Handling::new(watched.clone());
            async move {
                use tower::Service;
                let response = router.call(request).await;
                drop(handling);
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    loop {
        let quiet_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(quiet_until.into()) => {
                if activity.handling.load(Ordering::Relaxed) == 0
                    && activity.last() + limits.idle_timeout <= Instant::now()
                {
                    tracing::debug!(%peer, "closing a connection that moved no byte for the idle timeout");
                    return;
                }
            }
        }
    }
}

/// Counted in /metrics while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(metrics: &super::metrics::Metrics) -> OpenConnection {
        metrics.open_connections.inc();
        OpenConnection(metrics.open_connections.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// When a connection last moved a byte, either way, and how many of its requests are being
/// handled.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    handling: std::sync::atomic::AtomicUsize,
}

/// A request of the connection being handled, for as long as it lives.
struct Handling(Arc<Activity>);

impl Handling {
    fn new(activity: Arc<Activity>) -> Handling {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Handling(activity)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        // The idle time counts from the answer, not from before the request.
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            handling: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A socket that records its activity.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_or_removing_a_topics_policy_or_routes_needs_update() {
        for path in ["/v1/topics/tp-1/policy", "/v1/topics/tp-1/routes"] {
            assert!(matches!(access_for(&Method::PUT, path), Access::Update));
            assert!(matches!(access_for(&Method::DELETE, path), Access::Update));
            assert!(matches!(access_for(&Method::GET, path), Access::Read));
        }
        assert!(matches!(
            access_for(&Method::DELETE, "/v1/topics/tp-1"),
            Access::Delete
        ));
    }
}
