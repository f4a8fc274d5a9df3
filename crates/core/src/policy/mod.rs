//! The audit policy engine: profiles and rendering from a `ClusterAudit` spec, the evaluator with
//! the kube-apiserver's matching semantics, and the preview of a candidate policy against recorded
//! events. Pure code: no IO, no kube client.

pub mod enforce;
pub mod envelope;
pub mod eval;
pub mod narrows;
pub mod preview;
pub mod render;

pub use eval::{Decision, Evaluator, RequestAttributes};
pub use render::{Rendered, render};
