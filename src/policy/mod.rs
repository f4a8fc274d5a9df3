//! The audit policy engine: the typed `audit.k8s.io/v1` model, profiles, rendering and the evaluator.
//! Pure code: no IO, no kube client.

pub mod model;
