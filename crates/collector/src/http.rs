//! The collector's HTTP surface: the webhook, the logset/topic admin API, search, health and
//! metrics.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query as QueryParams, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
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
use clusteraudit_store::{CatalogEdit, Edited, SearchRequest, StoreError};

/// Whether the TLS connection carried a client certificate the configured CA verified.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifiedClientCertificate(pub bool);

/// Searches and stats running at once.
pub const MAX_CONCURRENT_QUERIES: usize = 8;

/// Webhook requests being read or waiting for the log at once. With the body limit this bounds
/// the memory senders can make the collector hold, whatever they do.
pub const MAX_WEBHOOK_IN_FLIGHT: usize = 64;

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.max_body_bytes;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_WEBHOOK_IN_FLIGHT));
    let webhook_route = post(webhook).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let in_flight = in_flight.clone();
            async move {
                // Refused before the body is read, so a flood costs nothing but the refusal.
                let Ok(_permit) = in_flight.try_acquire_owned() else {
                    let mut response = ApiError(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many batches in flight; retry shortly".into(),
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return response;
                };
                next.run(request).await
            }
        },
    ));
    Router::new()
        .route("/v1/webhook", webhook_route)
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
        .route("/v1/topics/{id}/events", get(search_events))
        .route("/v1/topics/{id}/stats", get(topic_stats))
        .route("/v1/route", get(get_route).put(set_route))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::ui::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                refuse_oversized(request, next, limit)
            },
        ))
        .with_state(shared)
}

/// How much of a body declared over the limit is read (and dropped) before the 413, so that a
/// client still sending gets the answer rather than a connection torn down under it.
const OVERSIZED_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Bodies declared larger than the limit are refused before any handler runs.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    limit: usize,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > limit as u64) else {
        return next.run(request).await;
    };
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
        };
        ApiError(status, err.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn webhook(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    certificate: Option<axum::Extension<VerifiedClientCertificate>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let verified = certificate.is_some_and(|c| c.0.0);
    if !shared.auth.webhook_allowed(&headers, verified) {
        shared.metrics.reject("unauthenticated");
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "valid webhook credentials are required".into(),
        )
        .into_response();
    }
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
    let items = match batch::decode_event_list(&body) {
        Ok(items) => items,
        Err(err) => {
            shared.metrics.reject("invalid");
            return ApiError(StatusCode::BAD_REQUEST, err.to_string()).into_response();
        }
    };
    let count = items.len() as u64;
    // The kube-apiserver's webhook retries a 503 with backoff, and keeps the batch meanwhile.
    if shared
        .drain
        .store_unavailable
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        shared.metrics.reject("store-unavailable");
        let mut response = ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store cannot take batches (a full or failing disk); retry shortly".into(),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    let backlog = shared.backlog_bytes();
    if backlog > shared.max_backlog_bytes {
        shared.metrics.reject("store-backlog");
        let mut response = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the store is {backlog} bytes behind the log (bound {}); retry shortly",
                shared.max_backlog_bytes
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let topic = match shared.store.route().await {
        Ok(topic) => topic,
        Err(err) => {
            shared.metrics.reject("route-unavailable");
            return ApiError(StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response();
        }
    };
    let record = batch::encode_record(&topic, &items);
    let pending = match shared.wal.try_append(record) {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            shared.metrics.reject("queue-full");
            let mut response = ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "the collector is catching up; retry shortly".into(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Err(err) => {
            shared.metrics.reject("log-unavailable");
            return ApiError(StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response();
        }
    };
    match pending.await {
        Ok(Ok(_)) => {
            shared.metrics.events_received.inc_by(count);
            shared
                .metrics
                .batch_ack_seconds
                .observe(started.elapsed().as_secs_f64());
            (StatusCode::OK, Json(json!({}))).into_response()
        }
        Ok(Err(reason)) => {
            shared.metrics.reject("log-write");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the write-ahead log could not make the batch durable: {reason}"),
            )
            .into_response()
        }
        Err(_) => {
            shared.metrics.reject("log-write");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the write-ahead log stopped".into(),
            )
            .into_response()
        }
    }
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

async fn list_logsets(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Read).await?;
    let logsets = shared.store.catalog().await?.logsets().to_vec();
    Ok(Json(json!({"items": logsets})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLogset {
    name: String,
}

async fn create_logset(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Create).await?;
    let request: NewLogset = parse_json(&body)?;
    let edited = shared
        .store
        .edit_catalog(CatalogEdit::CreateLogset { name: request.name })
        .await?;
    Ok(created_or_found(edited))
}

async fn get_logset(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Read).await?;
    let logset = shared.store.catalog().await?.logset(&id)?.clone();
    Ok(Json(logset).into_response())
}

async fn delete_logset(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Delete).await?;
    shared
        .store
        .edit_catalog(CatalogEdit::DeleteLogset { id })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_topics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Read).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Create).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Read).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Update).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Delete).await?;
    shared
        .store
        .edit_catalog(CatalogEdit::DeleteTopic { id })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_route(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Read).await?;
    let route = shared.store.catalog().await?.route().to_string();
    Ok(Json(json!({"topicId": route})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Route {
    topic_id: String,
}

async fn set_route(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    shared.auth.authorize(&headers, Access::Update).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<SearchParams>,
) -> ApiResult<Response> {
    let now = now_micros();
    let (query, from, to) = read_request(
        &shared,
        &headers,
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
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<StatsParams>,
) -> ApiResult<Response> {
    let now = now_micros();
    let (query, from, to) = read_request(
        &shared,
        &headers,
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

/// The common part of a read: authorization, the topic's existence, the query and the time
/// range (each bound given or defaulted).
async fn read_request(
    shared: &Shared,
    headers: &HeaderMap,
    topic: &str,
    q: &str,
    from: (Option<&str>, i64),
    to: (Option<&str>, i64),
) -> ApiResult<(clusteraudit_core::query::Query, i64, i64)> {
    shared.auth.authorize(headers, Access::Read).await?;
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

/// Serves the router over TLS, telling handlers whether a client certificate was verified.
pub async fn serve_tls(args: &CollectorArgs, router: Router) -> Result<(), CollectorError> {
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CollectorError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %args.listen, "serving HTTPS");
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
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
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request
                        .extensions_mut()
                        .insert(VerifiedClientCertificate(verified));
                    let mut router = router.clone();
                    async move {
                        use tower::Service;
                        router.call(request).await
                    }
                },
            );
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
}
