//! The store on OpenSearch, for several collector replicas: an index per topic per UTC day
//! created from one index template, the catalog in one document every replica reads and writes
//! with optimistic concurrency, search and stats in the query DSL.
//!
//! Only APIs Elasticsearch 8 shares are used in the data path (`_bulk`, `_search` with
//! `search_after`, `_index_template`, `_doc` with `if_seq_no`/`if_primary_term`, `_cat/indices`,
//! index deletion by name), so the same collector stores into either.

pub mod bulk;
pub mod client;
pub mod document;
pub mod query;
pub mod shared;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

pub use client::Client;
use clusteraudit_store::{
    AuditStore, Catalog, CatalogEdit, Edited, Page, SearchRequest, Stats, StatsRequest, StoreError,
    StoreFuture, TopicUsage,
    catalog::{Origin, SystemOrigin},
};

#[derive(Args, Debug, Clone, Default)]
pub struct OpenSearchArgs {
    /// OpenSearch (or Elasticsearch 8) to store in, with --store=opensearch.
    #[arg(long)]
    pub opensearch_url: Option<String>,
    /// CA (PEM) of OpenSearch's serving certificate, if the system's roots do not hold it.
    #[arg(long)]
    pub opensearch_ca_file: Option<PathBuf>,
    /// Basic authentication: the user, with --opensearch-password-file.
    #[arg(long, requires = "opensearch_password_file")]
    pub opensearch_username: Option<String>,
    #[arg(long, requires = "opensearch_username")]
    pub opensearch_password_file: Option<PathBuf>,
    /// A file holding an API key (the base64 `id:key` form), instead of a user.
    #[arg(long, conflicts_with = "opensearch_username")]
    pub opensearch_api_key_file: Option<PathBuf>,
    /// The start of every index and template name the collector makes.
    #[arg(long, default_value = "clusteraudit")]
    pub opensearch_index_prefix: String,
    /// Bulk requests in flight at once, per replica.
    #[arg(long, default_value_t = 4)]
    pub opensearch_bulk_concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenSearchError {
    #[error("{0}")]
    Config(String),
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{request} was refused ({status}): {reason}")]
    Refused {
        request: String,
        status: u16,
        reason: String,
    },
}

impl OpenSearchError {
    /// Whether asking again later may work (OpenSearch down, busy or failing on its side).
    pub fn is_transient(&self) -> bool {
        match self {
            OpenSearchError::Unreachable { .. } => true,
            OpenSearchError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl From<OpenSearchError> for StoreError {
    fn from(err: OpenSearchError) -> Self {
        if err.is_transient() {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::backend("OpenSearch", err)
        }
    }
}

const CATALOG_DOC: &str = "catalog";

/// How often a replica rereads the route another replica may have changed.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(2);

pub struct OpenSearchStore {
    client: Client,
    prefix: String,
    bulk_concurrency: usize,
    /// The webhook's route as last read, also kept on the replica's disk so that a replica
    /// started while OpenSearch is down still knows where events go.
    route: RwLock<Option<String>>,
    route_file: PathBuf,
    prepared: std::sync::atomic::AtomicBool,
    shared_ready: std::sync::atomic::AtomicBool,
}

impl OpenSearchStore {
    /// Checks the configuration; talks to nobody yet (see [`OpenSearchStore::prepare`]).
    pub fn connect(args: &OpenSearchArgs, state_dir: &Path) -> Result<Self, OpenSearchError> {
        if !document::valid_prefix(&args.opensearch_index_prefix) {
            return Err(OpenSearchError::Config(format!(
                "--opensearch-index-prefix {:?} must be lowercase letters, digits and '-' (not first or last), at most 100, with no part named `tp`",
                args.opensearch_index_prefix
            )));
        }
        let client = Client::new(args)?;
        let route_file = state_dir.join("opensearch-route");
        let route = std::fs::read_to_string(&route_file)
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty());
        Ok(OpenSearchStore {
            client,
            prefix: args.opensearch_index_prefix.clone(),
            bulk_concurrency: args.opensearch_bulk_concurrency.clamp(1, 64),
            route: RwLock::new(route),
            route_file,
            prepared: Default::default(),
            shared_ready: Default::default(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bulk_concurrency(&self) -> usize {
        self.bulk_concurrency
    }

    /// Installs the index template and the catalog (idempotent: every replica does it at start).
    pub async fn prepare(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.prepared.load(Ordering::SeqCst) {
            return Ok(());
        }
        let template = document::index_template(&self.prefix);
        self.client
            .expect(
                Method::PUT,
                &format!("/_index_template/{}-events", self.prefix),
                Some(&template),
            )
            .await?;
        // The template only shapes indices created from now on; today's (and older days')
        // were created from an older one, whose strict mapping would refuse the added fields.
        self.client
            .expect_or(
                Method::PUT,
                &format!("/{}-tp-*/_mapping", self.prefix),
                Some(&document::added_fields_mapping()),
                "index_not_found_exception",
            )
            .await?;
        // The catalog is read whole by id, never searched.
        self.client
            .expect_or(
                Method::PUT,
                &format!("/{}", document::catalog_index(&self.prefix)),
                Some(&document::small_index(json!({}))),
                "resource_already_exists_exception",
            )
            .await?;
        self.edit(&CatalogEdit::Initialize).await?;
        self.prepared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The catalog document and its version (`None` before any replica wrote it).
    async fn read_catalog(&self) -> Result<(Catalog, Option<(u64, u64)>), OpenSearchError> {
        let path = format!(
            "/{}/_doc/{CATALOG_DOC}",
            document::catalog_index(&self.prefix)
        );
        let answer = self.client.json(Method::GET, &path, None).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            return Ok((Catalog::default(), None));
        }
        if !answer.is_success() {
            return Err(OpenSearchError::Refused {
                request: format!("GET {path}"),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            });
        }
        let catalog: Catalog =
            serde_json::from_value(answer.body["_source"].clone()).map_err(|err| {
                OpenSearchError::Config(format!("the catalog document is unreadable: {err}"))
            })?;
        let version = answer.body["_seq_no"]
            .as_u64()
            .zip(answer.body["_primary_term"].as_u64());
        self.remember_route(catalog.route());
        Ok((catalog, version))
    }

    fn remember_route(&self, route: &str) {
        if route.is_empty() {
            return;
        }
        let mut cached = self.route.write().unwrap_or_else(|e| e.into_inner());
        if cached.as_deref() != Some(route) {
            *cached = Some(route.to_string());
            if let Err(err) = clusteraudit_io::fsutil::write_atomically(
                self.route_file.parent().unwrap_or(Path::new(".")),
                &self.route_file,
                route.as_bytes(),
            ) {
                tracing::warn!(error = %err, "keeping the route on disk failed");
            }
        }
    }

    /// Applies an edit to the catalog document: read, apply, write back only if nobody wrote in
    /// between (`if_seq_no`/`if_primary_term`), else again on what they wrote. So two replicas
    /// creating the same logset at once end with one, and both answer with it.
    async fn edit(&self, edit: &CatalogEdit) -> Result<Edited, StoreError> {
        let index = document::catalog_index(&self.prefix);
        for _attempt in 0..20 {
            let (mut catalog, version) = self.read_catalog().await?;
            let (edited, changed) = catalog.apply(edit, &mut SystemOrigin as &mut dyn Origin)?;
            if !changed {
                return Ok(edited);
            }
            let body = serde_json::to_value(&catalog).expect("the catalog serializes");
            let path = match version {
                Some((seq_no, primary_term)) => format!(
                    "/{index}/_doc/{CATALOG_DOC}?if_seq_no={seq_no}&if_primary_term={primary_term}&refresh=true"
                ),
                None => format!("/{index}/_create/{CATALOG_DOC}?refresh=true"),
            };
            let answer = self.client.json(Method::PUT, &path, Some(&body)).await?;
            if answer.status == reqwest::StatusCode::CONFLICT {
                continue;
            }
            if !answer.is_success() {
                return Err(OpenSearchError::Refused {
                    request: format!("PUT {path}"),
                    status: answer.status.as_u16(),
                    reason: answer.reason(),
                }
                .into());
            }
            self.remember_route(catalog.route());
            return Ok(edited);
        }
        Err(StoreError::Unavailable(
            "the catalog kept changing under this edit; try again".into(),
        ))
    }

    /// Rereads the route every [`ROUTE_REFRESH`], so a route set through another replica is
    /// followed here within about that long.
    pub fn follow_route(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ROUTE_REFRESH).await;
                let Some(store) = store.upgrade() else { return };
                if let Err(err) = store.read_catalog().await {
                    tracing::debug!(error = %err, "rereading the route failed");
                }
            }
        });
    }

    /// The indices of a topic, with their day.
    async fn topic_indices(
        &self,
        topic: &str,
    ) -> Result<Vec<(String, i64, u64, u64)>, OpenSearchError> {
        let pattern = document::topic_index_pattern(&self.prefix, topic);
        let path = format!(
            "/_cat/indices/{pattern}?format=json&bytes=b&h=index,docs.count,store.size&expand_wildcards=open"
        );
        let listed = self.client.expect(Method::GET, &path, None).await?;
        let number = |value: &Value| match value {
            Value::String(text) => text.parse().unwrap_or(0),
            other => other.as_u64().unwrap_or(0),
        };
        Ok(listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                let name = row["index"].as_str()?;
                let day = document::parse_index_day(&self.prefix, topic, name)?;
                Some((
                    name.to_string(),
                    day,
                    number(&row["docs.count"]),
                    number(&row["store.size"]),
                ))
            })
            .collect())
    }

    /// Deletes indices by name: wildcard deletion is off by default on Elasticsearch 8.
    async fn delete_indices(&self, names: &[String]) -> Result<(), OpenSearchError> {
        for chunk in names.chunks(50) {
            self.client
                .expect(Method::DELETE, &format!("/{}", chunk.join(",")), None)
                .await?;
        }
        Ok(())
    }

    async fn search_page(&self, topic: &str, request: &SearchRequest) -> Result<Page, StoreError> {
        let limit = request.limit.clamp(1, clusteraudit_store::MAX_PAGE);
        let after = request
            .cursor
            .as_deref()
            .map(query::Cursor::decode)
            .transpose()?;
        let filter = query::compile(&request.query)?;
        if request.to < request.from {
            return Ok(Page {
                events: Vec::new(),
                cursor: None,
            });
        }
        let body = query::search_body(filter, request.from, request.to, limit + 1, after.as_ref());
        let path = format!(
            "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
            document::topic_index_pattern(&self.prefix, topic)
        );
        let answer = self.search_request(&path, &body).await?;
        let (raw, cursor) = query::parse_page(&answer, limit)?;
        Ok(Page {
            events: clusteraudit_store::raw_events(
                raw.into_iter().map(String::into_bytes).collect(),
            ),
            cursor: cursor.map(|c| c.encode()),
        })
    }

    async fn stats_of(&self, topic: &str, request: &StatsRequest) -> Result<Stats, StoreError> {
        let filter = query::compile(&request.query)?;
        let body = query::stats_body(
            filter,
            request.from,
            request.to,
            request.by.field_name(),
            request.effective_interval(),
            request.effective_top(),
        );
        let path = format!(
            "/{}/_search?ignore_unavailable=true&allow_no_indices=true",
            document::topic_index_pattern(&self.prefix, topic)
        );
        let answer = self.search_request(&path, &body).await?;
        query::parse_stats(&answer, request)
    }

    /// A `_search`, asked again for a moment while it fails with 503: a day's index the shipper
    /// has just created has no active shard for a moment, and a search then fails whole.
    async fn search_request(&self, path: &str, body: &Value) -> Result<Value, OpenSearchError> {
        let mut attempt = 0;
        loop {
            match self.client.expect(Method::POST, path, Some(body)).await {
                Err(OpenSearchError::Refused { status: 503, .. }) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answer => return answer,
            }
        }
    }

    async fn retention(&self, now_micros: i64) -> Result<Vec<String>, StoreError> {
        let (catalog, _) = self.read_catalog().await?;
        let today = clusteraudit_store::day_of(now_micros);
        let mut deleted = Vec::new();
        for topic in catalog.topics() {
            let expired: Vec<String> = self
                .topic_indices(&topic.id)
                .await?
                .into_iter()
                .filter(|(_, day, _, _)| {
                    clusteraudit_store::expired(*day, today, topic.retention_days)
                })
                .map(|(name, ..)| name)
                .collect();
            self.delete_indices(&expired).await?;
            deleted.extend(expired);
        }
        Ok(deleted)
    }

    /// Sends one bulk request; the outcome of each item, in order.
    pub async fn bulk(&self, items: &[bulk::Item]) -> Result<Vec<bulk::Outcome>, OpenSearchError> {
        let body = bulk::body(&self.prefix, items);
        let answer = self
            .client
            .send(Method::POST, "/_bulk", Some((body, "application/x-ndjson")))
            .await?;
        if !answer.is_success() {
            return Err(OpenSearchError::Refused {
                request: "POST /_bulk".into(),
                status: answer.status.as_u16(),
                reason: answer.reason(),
            });
        }
        Ok(bulk::outcomes(&answer.body, items.len()))
    }
}

impl AuditStore for OpenSearchStore {
    fn catalog(&self) -> StoreFuture<'_, Catalog> {
        Box::pin(async move { Ok(self.read_catalog().await?.0) })
    }

    fn edit_catalog(&self, edit: CatalogEdit) -> StoreFuture<'_, Edited> {
        Box::pin(async move {
            let edited = self.edit(&edit).await?;
            if let CatalogEdit::DeleteTopic { id } = &edit {
                let names: Vec<String> = self
                    .topic_indices(id)
                    .await?
                    .into_iter()
                    .map(|(name, ..)| name)
                    .collect();
                self.delete_indices(&names).await?;
            }
            Ok(edited)
        })
    }

    fn route(&self) -> StoreFuture<'_, String> {
        Box::pin(async move {
            let cached = self.route.read().unwrap_or_else(|e| e.into_inner()).clone();
            match cached {
                Some(route) => Ok(route),
                None => {
                    let (catalog, _) = self.read_catalog().await?;
                    match catalog.route() {
                        "" => Err(StoreError::Unavailable(
                            "the catalog is not initialized yet".into(),
                        )),
                        route => Ok(route.to_string()),
                    }
                }
            }
        })
    }

    fn search(&self, topic: String, request: SearchRequest) -> StoreFuture<'_, Page> {
        Box::pin(async move { self.search_page(&topic, &request).await })
    }

    fn stats(&self, topic: String, request: StatsRequest) -> StoreFuture<'_, Stats> {
        Box::pin(async move { self.stats_of(&topic, &request).await })
    }

    fn usage(&self, topic: String) -> StoreFuture<'_, TopicUsage> {
        Box::pin(async move {
            let indices = self.topic_indices(&topic).await?;
            Ok(TopicUsage {
                event_count: indices.iter().map(|(_, _, docs, _)| docs).sum(),
                size_bytes: indices.iter().map(|(_, _, _, bytes)| bytes).sum(),
            })
        })
    }

    fn enforce_retention(&self, now_micros: i64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move { self.retention(now_micros).await })
    }
}
