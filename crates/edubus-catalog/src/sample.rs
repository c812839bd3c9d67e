//! Deterministic example payloads, valid against [`crate::emit::json_schema::event_schema`].
//!
//! Used by tests, the docs and the load generator: the same event always gives the same
//! payload, and building one costs a few allocations (no randomness, no clock).

use serde_json::{Map, Value};

use crate::ir::{EventSpec, Field, FieldType, Scalar};

/// The timestamp every `datetime` example carries.
pub const EXAMPLE_DATETIME: &str = "2026-01-15T08:30:00Z";
/// The date every `date` example carries.
pub const EXAMPLE_DATE: &str = "2026-01-15";
/// The value every `decimal` example carries.
pub const EXAMPLE_DECIMAL: &str = "87.50";

/// A payload with every field present, optional ones included.
pub fn example_payload(event: &EventSpec) -> Value {
    payload(event, |_| true)
}

/// A payload with the required fields only.
pub fn minimal_payload(event: &EventSpec) -> Value {
    payload(event, |f| !f.optional)
}

fn payload(event: &EventSpec, keep: impl Fn(&Field) -> bool) -> Value {
    let map: Map<String, Value> = event
        .fields
        .iter()
        .filter(|f| keep(f))
        .map(|f| (f.name.clone(), example_value(&event.name, &f.name, &f.ty)))
        .collect();
    Value::Object(map)
}

/// The example value of a field of type `ty`; uuids depend on the event and field names.
pub fn example_value(event: &str, field: &str, ty: &FieldType) -> Value {
    match ty {
        FieldType::Scalar(scalar) => scalar_value(event, field, *scalar),
        FieldType::Enum(values) => values.first().cloned().map_or(Value::Null, Value::String),
        FieldType::List(inner) => Value::Array(vec![example_value(event, field, inner)]),
    }
}

fn scalar_value(event: &str, field: &str, scalar: Scalar) -> Value {
    match scalar {
        Scalar::Uuid => Value::String(example_uuid(event, field)),
        Scalar::String => Value::String(format!("example {field}")),
        Scalar::Int => Value::from(1),
        Scalar::Decimal => Value::String(EXAMPLE_DECIMAL.into()),
        Scalar::Bool => Value::Bool(true),
        Scalar::Datetime => Value::String(EXAMPLE_DATETIME.into()),
        Scalar::Date => Value::String(EXAMPLE_DATE.into()),
        Scalar::Object => Value::Object(Map::new()),
    }
}

/// A well-formed RFC 9562 UUIDv8 (custom) built from a hash of `event` and `field`.
pub fn example_uuid(event: &str, field: &str) -> String {
    let input = format!("{event}\u{0}{field}");
    let hi = mix(fnv1a(0xcbf2_9ce4_8422_2325, input.as_bytes()));
    let lo = mix(fnv1a(hi, input.as_bytes()));
    // Version 8 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
    let hi = (hi & !0xf000) | 0x8000;
    let lo = (lo & !(0xc0 << 56)) | (0x80 << 56);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// FNV-1a, 64 bit, from `basis`.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer, so every output bit depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A hand-built event covering every field type, for unit tests of the emitters.

    use crate::ir::*;

    fn field(name: &str, ty: FieldType, optional: bool, pii: bool) -> Field {
        Field {
            name: name.into(),
            ty,
            optional,
            pii,
            description: None,
            location: Location::default(),
        }
    }

    fn scalar(name: &str, s: Scalar) -> Field {
        field(name, FieldType::Scalar(s), false, false)
    }

    /// `school.student.enrolled` v1 with one field of each type.
    pub(crate) fn event() -> EventSpec {
        let status = FieldType::Enum(vec!["active".into(), "waitlisted".into()]);
        let ids = FieldType::List(Box::new(FieldType::Scalar(Scalar::Uuid)));
        let fields = vec![
            field("student_id", FieldType::Scalar(Scalar::Uuid), false, true),
            scalar("grade_level", Scalar::Int),
            field("status", status, false, false),
            scalar("tuition", Scalar::Decimal),
            scalar("start_date", Scalar::Date),
            scalar("enrolled_at", Scalar::Datetime),
            field("email", FieldType::Scalar(Scalar::String), true, true),
            field("course_ids", ids, false, false),
            field("extra", FieldType::Scalar(Scalar::Object), true, false),
            scalar("verified", Scalar::Bool),
        ];
        EventSpec {
            name: "school.student.enrolled".into(),
            version: 1,
            context: "school".into(),
            kind: EventKind::Event,
            summary: "A student joined a class".into(),
            description: None,
            producer: "Enrollment API".into(),
            consumers: vec![Consumer {
                name: "Welcome mailer".into(),
                action: Some("Send the welcome e-mail".into()),
            }],
            key: "student_id".into(),
            topic: "school.student.enrolled".into(),
            aliases: vec!["StudentEnrolled".into()],
            aggregate: Some("Student".into()),
            compatibility: Compatibility::default(),
            fields,
            location: Location::default(),
        }
    }

    /// A one-context catalog around [`event`].
    pub(crate) fn catalog() -> Catalog {
        Catalog {
            contexts: vec![Context {
                name: "school".into(),
                title: "School".into(),
                description: "A | fixture context.".into(),
                topic_template: "{name}".into(),
                location: Location::default(),
                events: vec![event()],
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::json_schema::event_schema;

    fn assert_valid(schema: &Value, instance: &Value) {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{instance}: {errors:?}");
    }

    #[test]
    fn examples_validate_against_the_schema() {
        let event = fixture::event();
        let schema = event_schema(&event);
        assert_valid(&schema, &example_payload(&event));
        assert_valid(&schema, &minimal_payload(&event));
        assert!(minimal_payload(&event).get("email").is_none());
        assert_eq!(example_payload(&event)["email"], "example email");
    }

    #[test]
    fn uuids_are_deterministic_well_formed_v8() {
        let a = example_uuid("school.student.enrolled", "student_id");
        assert_eq!(a, example_uuid("school.student.enrolled", "student_id"));
        assert_ne!(a, example_uuid("school.student.enrolled", "class_id"));
        let bytes: Vec<char> = a.chars().collect();
        assert_eq!(a.len(), 36);
        assert_eq!(bytes[14], '8');
        assert!(matches!(bytes[19], '8' | '9' | 'a' | 'b'));
    }
}
