//! An event version as a JSON object: the catalog entry as the CLI and the HTTP API show it.

use serde_json::{Value, json};

use crate::ir::{EventKind, EventSpec, Field};

/// The catalog entry of one event version as JSON (no schema; see [`super::json_schema`]).
pub fn event_json(e: &EventSpec) -> Value {
    json!({
        "name": e.name,
        "version": e.version,
        "context": e.context,
        "kind": match e.kind { EventKind::Event => "event", EventKind::Command => "command" },
        "summary": e.summary,
        "description": e.description,
        "producer": e.producer,
        "consumers": e.consumers.iter().map(|c| json!({"name": c.name, "action": c.action})).collect::<Vec<_>>(),
        "key": e.key,
        "topic": e.topic,
        "aliases": e.aliases,
        "aggregate": e.aggregate,
        "compatibility": e.compatibility.as_str(),
        "payload": e.fields.iter().map(field_json).collect::<Vec<_>>(),
    })
}

fn field_json(f: &Field) -> Value {
    json!({
        "name": f.name,
        "type": f.ty.to_string(),
        "optional": f.optional,
        "pii": f.pii,
        "description": f.description,
    })
}
