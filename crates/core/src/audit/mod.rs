//! The `audit.k8s.io/v1` wire types: the audit `Policy` the kube-apiserver reads, and the `Event`s
//! it writes. Data and their strict decoding only; what to do with them lives above.

mod event;
mod policy;

pub use event::*;
pub use policy::*;
