//! The IO helpers every role of clusteraudit shares.

pub mod fsutil;
pub mod kubeclient;
pub mod metrics;
pub mod tls;
pub mod watch;

pub use fsutil::{FileError, file_error};
