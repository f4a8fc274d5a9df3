//! The pure core of clusteraudit: what every role agrees on, with no IO and no async runtime, so
//! that all of it is tested without a cluster.
//!
//! From the bottom up: `audit` (the `audit.k8s.io/v1` wire types: the policy and the events),
//! `api` (the `ClusterAudit` resource), `policy` (profiles and rendering, the evaluator, the
//! preview), `query` (the search language) and `rollout` (the contract between the operator and
//! the agents: revisions, the objects that carry them, the manifest edit); `alert` (alert rules
//! over the stream of events: sliding windows per group, and what a notification says).

pub mod alert;
pub mod api;
pub mod audit;
pub mod policy;
pub mod query;
pub mod rollout;
