//! `clusteraudit agent`: one per control-plane node. Moves its node's kube-apiserver to the
//! revision the operator released, one node at a time, and falls back when it does not come up.

pub mod delivery;
pub mod node;
pub mod run;
pub mod step;
pub mod trust;

pub use run::{AgentArgs, AgentError, run};
