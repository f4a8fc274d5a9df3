//! The audit policy engine: the typed `audit.k8s.io/v1` model, profiles and rendering, the
//! evaluator, and the preview of a candidate policy against recorded events. Pure code: no IO, no
//! kube client.

pub mod eval;
pub mod model;
pub mod preview;
pub mod render;

pub use eval::{Decision, Evaluator, RequestAttributes};
pub use model::{Level, Policy, PolicyError, PolicyRule, Stage};
pub use render::{Rendered, render};
