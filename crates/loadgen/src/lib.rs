//! The load generator: posts realistic `audit.k8s.io/v1` EventLists to a collector webhook the way
//! the kube-apiserver's webhook backend does, and reports throughput and batch ack latency.
//!
//! [`EventGenerator`] makes the events: a deterministic (per seed) model of a small production
//! cluster, fifteen nodes, a dozen namespaces, a few hundred objects, with the users, verbs,
//! resources, response codes and sizes of a real Metadata-level audit log. [`run`] posts them.

mod args;
mod freshness;
mod generator;
mod model;
mod rendered;
mod report;
mod sender;

use std::path::PathBuf;

pub use args::LoadgenArgs;
pub use freshness::{FreshnessArgs, FreshnessReport, MarkerBook, marker_query};
pub use generator::EventGenerator;
pub use model::NAMESPACES;
pub use report::{Percentiles, Report};
pub use sender::{event_list_json, run};

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("the target {target:?} is not a usable http(s) URL: {reason}")]
    InvalidTarget { target: String, reason: String },
    #[error(
        "the target {0:?} is https: give --ca-file with the CA that signed the collector's certificate (or --insecure-skip-verify)"
    )]
    CaFileRequired(String),
    #[error("reading the CA bundle {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {path} holds no usable PEM certificate: {reason}")]
    ParseCaFile { path: PathBuf, reason: String },
    #[error("reading the token file {path}: {source}")]
    ReadTokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("building the HTTP client: {0}")]
    BuildClient(String),
    #[error("writing the acked-ids file {path}: {source}")]
    AckedIdsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("measuring freshness: {0}")]
    Freshness(String),
    #[error("a load generator task failed: {0}")]
    Task(String),
}
