//! Redaction of the fields the catalog marks as personal data, for callers without `pii:read`.

use edubus_catalog::{Catalog, EventSpec};
use edubus_core::{Envelope, Recorded};
use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The catalog entry an envelope was stored under (its version, else the latest).
fn spec_of<'a>(catalog: &'a Catalog, env: &Envelope) -> Option<&'a EventSpec> {
    env.schemaversion
        .and_then(|v| catalog.get(&env.event_type, v))
        .or_else(|| catalog.latest(&env.event_type))
}

/// Replaces every PII field of `env.data` with [`REDACTED`]; when the partition key is a PII
/// field, `subject` and `partitionkey` too. Returns whether the key was redacted.
pub fn envelope(catalog: &Catalog, env: &mut Envelope) -> bool {
    let Some(spec) = spec_of(catalog, env) else {
        return false;
    };
    if let Value::Object(data) = &mut env.data {
        for field in spec.fields.iter().filter(|f| f.pii) {
            if let Some(value) = data.get_mut(&field.name).filter(|v| !v.is_null()) {
                *value = REDACTED.into();
            }
        }
    }
    let key_is_pii = spec.field(&spec.key).is_some_and(|f| f.pii);
    if key_is_pii {
        for attr in [&mut env.subject, &mut env.partitionkey] {
            if attr.is_some() {
                *attr = Some(REDACTED.into());
            }
        }
    }
    key_is_pii
}

/// [`envelope`] applied to a stored event, its key included.
pub fn recorded(catalog: &Catalog, event: &mut Recorded) {
    if envelope(catalog, &mut event.envelope) {
        event.key = REDACTED.into();
    }
}
