//! The integration tests, in one binary so that the workspace links them once.
//!
//! Each module runs real processes: the `clusteraudit` binary itself, and where a test is marked
//! ignored, the real control plane (etcd, kube-apiserver, kubectl and helm, built from the Go module
//! proxy by scripts/control-plane.sh) or Debian's Chromium. Plain `cargo test` runs the rest and
//! lists those as ignored, with the reason; `scripts/test` (and CI) runs them all.

mod support;

mod agent_gate;
mod agent_node;
mod agent_trust;
mod alerting;
mod alerts_shared;
mod audit_alerts;
mod chart;
mod collector_api;
mod collector_durability;
mod collector_e2e;
mod collector_hostile;
mod collector_opensearch;
mod collector_policy;
mod collector_routes;
mod control_plane;
mod crd;
mod observability;
mod opensearch_fields;
mod opensearch_server;
mod operator_rollout;
mod operator_sink;
mod policy_apiserver;
mod policy_compare;
mod restart_economy;
mod ui_browser;
