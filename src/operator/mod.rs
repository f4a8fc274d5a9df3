//! `clusteraudit operator`: reconciles the `ClusterAudit`. So far the pure parts: the restart
//! guard, status conditions and content-addressed revisions.

pub mod conditions;
pub mod guard;
pub mod revision;
pub mod sink;
