//! One time window of one topic: a tantivy index of the filter fields, with the raw event kept
//! in its compressed document store.

use clusteraudit_io::file_error;
use std::path::{Path, PathBuf};

use tantivy::{
    Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument,
    schema::{FAST, Field, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions},
    store::{Compressor, ZstdCompressor},
};

use std::collections::{HashMap, hash_map::Entry};

use tantivy::{DocAddress, Searcher, columnar::Column, schema::document::Value as _};

use super::{StoreError, lifted};
use clusteraudit_core::audit::Event;

/// The fields of the schema, by name.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub time: Field,
    pub user: Field,
    pub groups: Field,
    pub verb: Field,
    pub resource: Field,
    pub subresource: Field,
    pub api_group: Field,
    pub namespace: Field,
    pub name: Field,
    pub code: Field,
    pub source_ip: Field,
    pub user_agent: Field,
    pub stage: Field,
    pub level: Field,
    pub decision: Field,
    /// The request path, without its query.
    pub uri: Field,
    /// A hash of the auditID, in windows written before [`Fields::lifted`]: unique IDs would
    /// otherwise be the largest part of the index.
    pub audit_id: Field,
    /// URI and object name, tokenized, for free text.
    pub text: Field,
    /// The event as received, in windows written before [`Fields::lifted`].
    pub raw: Field,
    /// Added after the first release, so windows written before lack them (`None`): a window
    /// keeps the schema it was created with.
    pub impersonated_user: Option<Field>,
    pub role_ref: Option<Field>,
    pub lifted: Option<LiftedId>,
}

/// Where a window keeps the auditID once it is lifted out of the raw event (see [`lifted`]):
/// such a window leaves `auditIDHash` and `raw` empty.
#[derive(Clone, Copy, Debug)]
pub struct LiftedId {
    /// The auditID's 128 bits, high and low half.
    pub high: Field,
    pub low: Field,
    /// The event in its stored form ([`lifted::lift`]).
    pub raw: Field,
}

const AUDIT_ID_HIGH: &str = "auditIDHigh";
const AUDIT_ID_LOW: &str = "auditIDLow";
const RAW_LIFTED: &str = "rawLifted";

impl Fields {
    /// The fields of a window's own schema, which may be older than [`schema`]'s: fields are
    /// only ever appended, so the old ones keep their ids and the missing ones are `None`.
    pub fn of(schema: &Schema) -> Fields {
        let field = |name: &str| {
            schema
                .get_field(name)
                .unwrap_or_else(|_| panic!("every window's schema has `{name}`"))
        };
        Fields {
            time: field("time"),
            user: field("user"),
            groups: field("group"),
            verb: field("verb"),
            resource: field("resource"),
            subresource: field("subresource"),
            api_group: field("apiGroup"),
            namespace: field("namespace"),
            name: field("name"),
            code: field("code"),
            source_ip: field("sourceIP"),
            user_agent: field("userAgent"),
            stage: field("stage"),
            level: field("level"),
            decision: field("decision"),
            uri: field("uri"),
            audit_id: field("auditIDHash"),
            text: field("text"),
            raw: field("raw"),
            impersonated_user: schema.get_field(IMPERSONATED_USER).ok(),
            role_ref: schema.get_field(ROLE_REF).ok(),
            lifted: schema.get_field(RAW_LIFTED).ok().map(|raw| LiftedId {
                high: field(AUDIT_ID_HIGH),
                low: field(AUDIT_ID_LOW),
                raw,
            }),
        }
    }
}

const IMPERSONATED_USER: &str = "impersonatedUser";
const ROLE_REF: &str = "roleRef";

pub fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Filter fields are exact strings without norms (nothing is scored); the ones stats group by
    // are also columnar. Numbers live in columns only: range queries read them there.
    let keyword = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_fieldnorms(false)
            .set_index_option(IndexRecordOption::Basic),
    );
    let keyword_fast = keyword.clone().set_fast("raw");
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_fieldnorms(false)
            .set_index_option(IndexRecordOption::Basic),
    );
    let fields = Fields {
        time: builder.add_i64_field("time", FAST),
        user: builder.add_text_field("user", keyword_fast.clone()),
        groups: builder.add_text_field("group", keyword.clone()),
        verb: builder.add_text_field("verb", keyword_fast.clone()),
        resource: builder.add_text_field("resource", keyword_fast.clone()),
        subresource: builder.add_text_field("subresource", keyword.clone()),
        api_group: builder.add_text_field("apiGroup", keyword.clone()),
        namespace: builder.add_text_field("namespace", keyword_fast),
        name: builder.add_text_field("name", keyword.clone()),
        code: builder.add_u64_field("code", FAST),
        source_ip: builder.add_text_field("sourceIP", keyword.clone()),
        user_agent: builder.add_text_field("userAgent", keyword.clone()),
        stage: builder.add_text_field("stage", keyword.clone()),
        level: builder.add_text_field("level", keyword.clone()),
        decision: builder.add_text_field("decision", keyword.clone()),
        uri: builder.add_text_field("uri", keyword.clone()),
        audit_id: builder.add_u64_field("auditIDHash", FAST),
        text: builder.add_text_field("text", text),
        raw: builder.add_bytes_field("raw", STORED),
        // Only after every field of the first release, so that their ids stay what windows
        // written before have.
        impersonated_user: Some(builder.add_text_field(IMPERSONATED_USER, keyword.clone())),
        role_ref: Some(builder.add_text_field(ROLE_REF, keyword)),
        lifted: Some(LiftedId {
            high: builder.add_u64_field(AUDIT_ID_HIGH, FAST),
            low: builder.add_u64_field(AUDIT_ID_LOW, FAST),
            raw: builder.add_bytes_field(RAW_LIFTED, STORED),
        }),
    };
    (builder.build(), fields)
}

/// The stored hash of an auditID.
pub fn audit_id_hash(audit_id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(audit_id)
}

pub fn document(fields: &Fields, event: &Event, time: i64, raw: &[u8]) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_i64(fields.time, time);
    doc.add_text(fields.user, &event.user.username);
    for group in &event.user.groups {
        doc.add_text(fields.groups, group);
    }
    doc.add_text(fields.verb, &event.verb);
    doc.add_text(fields.stage, event.stage.as_str());
    doc.add_text(fields.level, event.level.as_str());
    doc.add_text(fields.uri, event.request_path());
    let mut text = event.request_path().to_string();
    if let Some(object) = &event.object_ref {
        doc.add_text(fields.resource, &object.resource);
        if !object.subresource.is_empty() {
            doc.add_text(fields.subresource, &object.subresource);
        }
        doc.add_text(fields.api_group, &object.api_group);
        if !object.namespace.is_empty() {
            doc.add_text(fields.namespace, &object.namespace);
        }
        if !object.name.is_empty() {
            doc.add_text(fields.name, &object.name);
            text.push(' ');
            text.push_str(&object.name);
        }
    }
    doc.add_text(fields.text, text);
    if let Some(code) = event.response_status.as_ref().and_then(|s| s.code) {
        doc.add_u64(fields.code, code.max(0) as u64);
    }
    for ip in &event.source_ips {
        doc.add_text(fields.source_ip, ip);
    }
    if let Some(agent) = &event.user_agent {
        doc.add_text(fields.user_agent, agent);
    }
    if let Some(decision) = event.decision() {
        doc.add_text(fields.decision, decision);
    }
    if let (Some(field), Some(impersonated)) = (fields.impersonated_user, &event.impersonated_user)
    {
        doc.add_text(field, &impersonated.username);
    }
    if let Some(field) = fields.role_ref
        && let Some(role) = clusteraudit_core::query::role_ref(event)
    {
        doc.add_text(field, role);
    }
    match fields.lifted {
        Some(lifted) => {
            let (bits, liftable) = lifted::audit_id_bits(&event.audit_id);
            doc.add_u64(lifted.high, (bits >> 64) as u64);
            doc.add_u64(lifted.low, bits as u64);
            doc.add_bytes(lifted.raw, &lifted::lift(raw, &event.audit_id, liftable));
        }
        None => {
            doc.add_u64(fields.audit_id, audit_id_hash(&event.audit_id));
            doc.add_bytes(fields.raw, raw);
        }
    }
    doc
}

/// Reads raw events back from one window.
pub struct RawReader<'a> {
    searcher: &'a Searcher,
    fields: Fields,
    /// The auditID columns of the segments read so far, by segment ordinal.
    columns: HashMap<u32, (Column<u64>, Column<u64>)>,
}

impl<'a> RawReader<'a> {
    pub fn new(searcher: &'a Searcher) -> RawReader<'a> {
        RawReader {
            searcher,
            fields: Fields::of(searcher.schema()),
            columns: HashMap::new(),
        }
    }

    /// The event at `address`, byte for byte as received.
    pub fn read(&mut self, address: DocAddress) -> tantivy::Result<Vec<u8>> {
        let doc: TantivyDocument = self.searcher.doc(address)?;
        let bytes = |field| doc.get_first(field).and_then(|v| v.as_bytes());
        let Some(lifted) = self.fields.lifted else {
            return Ok(bytes(self.fields.raw).unwrap_or_default().to_vec());
        };
        let stored = bytes(lifted.raw).unwrap_or_default();
        let (high, low) = match self.columns.entry(address.segment_ord) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let columns = self
                    .searcher
                    .segment_reader(address.segment_ord)
                    .fast_fields();
                entry.insert((columns.u64(AUDIT_ID_HIGH)?, columns.u64(AUDIT_ID_LOW)?))
            }
        };
        // Every event of such a window has both halves: one missing is damage, like a stored
        // form that does not parse, and reading on with a made-up ID would hand out a wrong event.
        let bits = high.first(address.doc_id).zip(low.first(address.doc_id));
        bits.and_then(|(high, low)| {
            lifted::restore(stored, u128::from(high) << 64 | u128::from(low))
        })
        .ok_or_else(|| {
            tantivy::TantivyError::DataCorruption(tantivy::error::DataCorruption::comment_only(
                format!("the stored event at {address:?} is damaged"),
            ))
        })
    }
}

/// One open window.
pub struct Window {
    pub path: PathBuf,
    pub index: Index,
    /// The fields of this window's schema, which a window created by an older release lacks
    /// some of.
    pub fields: Fields,
    pub reader: IndexReader,
    pub writer: Option<IndexWriter>,
    /// The log position of the last record committed into this window.
    pub committed: u64,
    /// Documents added since the last commit.
    pub pending: u64,
}

const WRITER_MEMORY: usize = 48 * 1024 * 1024;

/// The search pool's threads: the cores, up to four.
pub(crate) static SEARCH_THREADS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));

/// One pool, shared by every window, that searches the segments of a window side by side: a
/// search over a day of events reads each segment's columns, and on a quiet collector the other
/// cores would idle meanwhile. One pool, so that thirty days of windows do not hold thirty pools.
pub(crate) fn search_executor() -> tantivy::Executor {
    static EXECUTOR: std::sync::OnceLock<tantivy::Executor> = std::sync::OnceLock::new();
    EXECUTOR
        .get_or_init(|| {
            tantivy::Executor::multi_thread(*SEARCH_THREADS, "search-")
                .unwrap_or_else(|_| tantivy::Executor::single_thread())
        })
        .clone()
}

impl Window {
    pub fn open(path: &Path, schema: &Schema) -> Result<Window, StoreError> {
        std::fs::create_dir_all(path).map_err(file_error("creating", path))?;
        let directory = tantivy::directory::MmapDirectory::open(path)
            .map_err(|err| super::index_error(path, err))?;
        let mut index = if Index::exists(&directory).map_err(|err| super::index_error(path, err))? {
            Index::open(directory).map_err(|err| super::index_error(path, err))?
        } else {
            let settings = IndexSettings {
                // Audit events repeat themselves a great deal, so the block size buys more than
                // the level: on the load generator's events, level 3 over 1 MiB blocks is as
                // small as level 6 over 256 KiB (12.3 times smaller than the events) and
                // compresses five times faster (585 against 118 MB/s a core), which is the
                // difference between the compressor keeping up at 100k events/s and not.
                docstore_compression: Compressor::Zstd(ZstdCompressor {
                    compression_level: Some(3),
                }),
                docstore_blocksize: 1024 * 1024,
                ..IndexSettings::default()
            };
            Index::builder()
                .schema(schema.clone())
                .settings(settings)
                .open_or_create(directory)
                .map_err(|err| super::index_error(path, err))?
        };
        index.set_executor(search_executor());
        let committed = index
            .load_metas()
            .ok()
            .and_then(|metas| metas.payload)
            .and_then(|payload| payload.parse().ok())
            .unwrap_or(0);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|err| super::index_error(path, err))?;
        let fields = Fields::of(&index.schema());
        Ok(Window {
            path: path.into(),
            fields,
            index,
            reader,
            writer: None,
            committed,
            pending: 0,
        })
    }

    pub fn writer(&mut self) -> Result<&mut IndexWriter, StoreError> {
        if self.writer.is_none() {
            let writer = self
                .index
                .writer_with_num_threads(1, WRITER_MEMORY)
                .map_err(|err| super::index_error(&self.path, err))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("just opened"))
    }

    /// Drops what was added since the last commit, and the files already written for it: after
    /// a failure on a full disk, they would keep it full through every retry.
    pub fn discard(&mut self) -> u64 {
        let dropped = std::mem::take(&mut self.pending);
        // Dropping a writer discards what it has not committed.
        self.writer = None;
        let path = self.path.clone();
        let collected = self
            .writer()
            .and_then(|writer| {
                writer
                    .garbage_collect_files()
                    .wait()
                    .map_err(|err| super::index_error(&path, err))
            })
            .map(|_| ());
        if let Err(err) = collected {
            tracing::warn!(path = %self.path.display(), error = %err, "removing the files of what was not committed failed");
        }
        dropped
    }

    /// Commits what was added, recording the log position it reaches.
    pub fn commit(&mut self, position: u64) -> Result<(), StoreError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if self.pending == 0 {
            return Ok(());
        }
        let mut prepared = writer
            .prepare_commit()
            .map_err(|err| super::index_error(&self.path, err))?;
        prepared.set_payload(&position.to_string());
        prepared
            .commit()
            .map_err(|err| super::index_error(&self.path, err))?;
        self.committed = position;
        self.pending = 0;
        self.reader
            .reload()
            .map_err(|err| super::index_error(&self.path, err))?;
        Ok(())
    }
}
