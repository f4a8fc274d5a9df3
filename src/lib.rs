//! clusteraudit: Kubernetes cluster auditing as one declarative object.
//!
//! One module per concern; pure logic (`api`, `policy`) stays free of IO so it can be tested without
//! a cluster, and everything that talks to processes or the network says so in its name.

pub mod agent;
pub mod api;
pub mod cli;
pub mod collector;
pub mod event;
pub mod fsutil;
pub mod kubeclient;
pub mod loadgen;
pub mod operator;
pub mod pki;
pub mod policy;
pub mod search;
pub mod store;
pub mod testkit;
pub mod tls;
