//! The contract between the operator and the agents: a revision (what a kube-apiserver reads for
//! auditing), the Kubernetes objects that carry it and each node's report, and the edit of the
//! static-pod manifest that points the kube-apiserver at it. Both sides use this one definition.

pub mod manifest;
pub mod objects;
pub mod revision;
