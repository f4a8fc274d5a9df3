//! `clusteraudit agent`: applies a revision to its control-plane node. So far: the manifest edit.

pub mod manifest;
pub mod node;
