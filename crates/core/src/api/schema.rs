//! Schema pieces the derive cannot express: list-maps for server-side apply merges.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::NodeRevisionStatus;
use crate::audit::Stage;

/// `metav1.Condition` list keyed by type, as every Kubernetes API declares its conditions, so that
/// several writers' conditions merge under server-side apply.
pub(super) fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
            },
        },
    })
}

/// Per-node rollout entries keyed by node name.
pub(super) fn node_revisions(generator: &mut SchemaGenerator) -> Schema {
    let mut items = NodeRevisionStatus::json_schema(generator);
    items.remove("$schema");
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": items,
    })
}

/// A set of audit stages.
pub(super) fn stage_set(generator: &mut SchemaGenerator) -> Schema {
    let items = Stage::json_schema(generator);
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "items": items,
    })
}
