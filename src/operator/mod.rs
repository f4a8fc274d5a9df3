//! `clusteraudit operator`: reconciles the `ClusterAudit`. So far: the restart guard.

pub mod guard;
