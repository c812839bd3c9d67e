//! JSON Schema (Draft 2020-12) of one event version's payload.
//!
//! Keys are inserted in a fixed order (serde_json keeps insertion order in this workspace), so
//! the same event always gives the same bytes.

use serde_json::{Map, Value, json};

use crate::ir::{EventSpec, Field, FieldType, Scalar};

/// The meta-schema URI every exported schema declares in `$schema`.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Pattern of a decimal carried as a string: optional minus, digits, optional fraction.
pub const DECIMAL_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?$";

/// The `$id` of an event version's schema: `urn:edubus:schema:<name>:v<version>`.
pub fn schema_id(name: &str, version: u32) -> String {
    edubus_core::envelope::schema_uri(name, version)
}

/// The JSON Schema document of `event`'s payload: a closed object, fields in declaration order.
pub fn event_schema(event: &EventSpec) -> Value {
    let mut doc = Map::new();
    doc.insert("$schema".into(), DRAFT_2020_12.into());
    doc.insert("$id".into(), schema_id(&event.name, event.version).into());
    doc.insert("title".into(), event.name.clone().into());
    doc.insert("description".into(), event.summary.clone().into());
    doc.insert("type".into(), "object".into());
    let properties: Map<String, Value> = event
        .fields
        .iter()
        .map(|f| (f.name.clone(), field_schema(f)))
        .collect();
    doc.insert("properties".into(), properties.into());
    let required: Vec<Value> = event
        .fields
        .iter()
        .filter(|f| !f.optional)
        .map(|f| f.name.clone().into())
        .collect();
    doc.insert("required".into(), required.into());
    doc.insert("additionalProperties".into(), false.into());
    Value::Object(doc)
}

/// The schema of one field: its type (nullable when optional), then `description` and `x-pii`.
pub fn field_schema(field: &Field) -> Value {
    let mut schema = type_schema(&field.ty);
    if field.optional {
        make_nullable(&mut schema);
    }
    if let Some(description) = &field.description {
        schema.insert("description".into(), description.clone().into());
    }
    if field.pii {
        schema.insert("x-pii".into(), true.into());
    }
    Value::Object(schema)
}

/// The schema of a type, keys in the order `type`, `format`/`pattern`/`enum`/`items`.
fn type_schema(ty: &FieldType) -> Map<String, Value> {
    let value = match ty {
        FieldType::Scalar(scalar) => scalar_schema(*scalar),
        FieldType::Enum(values) => json!({ "type": "string", "enum": values }),
        FieldType::List(inner) => json!({ "type": "array", "items": type_schema(inner) }),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn scalar_schema(scalar: Scalar) -> Value {
    match scalar {
        Scalar::Uuid => json!({ "type": "string", "format": "uuid" }),
        Scalar::String => json!({ "type": "string" }),
        Scalar::Int => json!({ "type": "integer" }),
        Scalar::Decimal => json!({ "type": "string", "pattern": DECIMAL_PATTERN }),
        Scalar::Bool => json!({ "type": "boolean" }),
        Scalar::Datetime => json!({ "type": "string", "format": "date-time" }),
        Scalar::Date => json!({ "type": "string", "format": "date" }),
        Scalar::Object => json!({ "type": "object" }),
    }
}

/// Lets `null` through: `type` becomes `[T, "null"]` and an `enum` gains `null`.
fn make_nullable(schema: &mut Map<String, Value>) {
    if let Some(Value::String(ty)) = schema.get("type") {
        let types = json!([ty, "null"]);
        schema.insert("type".into(), types);
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.push(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Compatibility, EventKind, Location};

    fn field(name: &str, ty: FieldType, optional: bool) -> Field {
        Field {
            name: name.into(),
            ty,
            optional,
            pii: false,
            description: None,
            location: Location::default(),
        }
    }

    fn event(fields: Vec<Field>) -> EventSpec {
        EventSpec {
            name: "school.thing.done".into(),
            version: 2,
            context: "school".into(),
            kind: EventKind::Event,
            summary: "A thing was done".into(),
            description: None,
            producer: "P".into(),
            consumers: vec![],
            key: "id".into(),
            topic: "school.thing.done".into(),
            aliases: vec![],
            aggregate: None,
            compatibility: Compatibility::default(),
            fields,
            location: Location::default(),
        }
    }

    #[test]
    fn header_and_required_follow_declaration_order() {
        let mut id = field("id", FieldType::Scalar(Scalar::Uuid), false);
        id.pii = true;
        id.description = Some("The id".into());
        let note = field("note", FieldType::Scalar(Scalar::String), true);
        let schema = event_schema(&event(vec![id, note]));
        assert_eq!(schema["$id"], "urn:edubus:schema:school.thing.done:v2");
        assert_eq!(schema["required"], json!(["id"]));
        assert_eq!(
            schema["properties"]["id"],
            json!({"type": "string", "format": "uuid", "description": "The id", "x-pii": true})
        );
        assert_eq!(
            schema["properties"]["note"]["type"],
            json!(["string", "null"])
        );
        let keys: Vec<_> = schema
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap();
        assert_eq!(keys[..3], ["$schema", "$id", "title"]);
    }

    #[test]
    fn optional_enum_admits_null_and_lists_nest() {
        let status = field("s", FieldType::Enum(vec!["a".into(), "b".into()]), true);
        let list = FieldType::List(Box::new(FieldType::Scalar(Scalar::Date)));
        let dates = field("d", list, true);
        let schema = event_schema(&event(vec![status, dates]));
        assert_eq!(
            schema["properties"]["s"],
            json!({"type": ["string", "null"], "enum": ["a", "b", null]})
        );
        assert_eq!(
            schema["properties"]["d"],
            json!({"type": ["array", "null"], "items": {"type": "string", "format": "date"}})
        );
    }
}
