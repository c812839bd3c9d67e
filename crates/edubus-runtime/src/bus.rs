//! Publishing: envelopes validated against the catalog and appended to the store.

use std::sync::Arc;

use edubus_catalog::validate::Validator;
use edubus_catalog::{Catalog, EventSpec};
use edubus_core::envelope::schema_uri;
use edubus_core::{Append, Appended, Envelope, Error, Event, EventStore, Result, Transport};
use serde_json::Value;

/// The entry point of an application: publishes events and hands the backend to workers.
///
/// Cloning is cheap; every clone shares the backend and the compiled catalog.
pub struct Bus<B> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    backend: B,
    validator: Validator,
    source: String,
}

impl<B> Clone for Bus<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: EventStore + Transport> Bus<B> {
    /// A bus over `backend` checking events against `catalog`; `source` names this producer.
    pub fn new(backend: B, catalog: &Catalog, source: impl Into<String>) -> Result<Self> {
        let validator = Validator::new(catalog)?;
        let inner = Inner {
            backend,
            validator,
            source: source.into(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The compiled catalog.
    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// The producer name put in `source`.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The envelope of a typed event from this producer (a new root event).
    pub fn envelope<E: Event>(&self, event: &E) -> Result<Envelope> {
        Ok(Envelope::from_event(event, self.source())?)
    }

    /// Publishes one typed event as a new root event.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Appended> {
        let env = self.envelope(event)?;
        let mut out = self.publish_batch(vec![env]).await?;
        out.pop()
            .ok_or_else(|| Error::internal("append returned nothing", "empty result"))
    }

    /// Validates and publishes one envelope (built by a client or a caused event).
    pub async fn publish_envelope(&self, env: Envelope) -> Result<Appended> {
        let mut out = self.publish_batch(vec![env]).await?;
        out.pop()
            .ok_or_else(|| Error::internal("append returned nothing", "empty result"))
    }

    /// Validates every envelope, then appends them all atomically: one invalid event appends
    /// nothing.
    pub async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<Vec<Appended>> {
        let batch = envelopes
            .into_iter()
            .map(|env| self.prepare(env))
            .collect::<Result<Vec<_>>>()?;
        let (mut types, of_event) = types_of(&batch);
        let appended = self.inner.backend.append(batch).await?;
        for (done, &index) in appended.iter().zip(&of_event) {
            types[index].1 += u64::from(!done.duplicate);
        }
        for (event_type, published) in types {
            if published > 0 {
                metrics::counter!("eventbus_published_total", "event_type" => event_type)
                    .increment(published);
            }
        }
        Ok(appended)
    }

    /// Validates an envelope against the catalog and normalizes it for the log: canonical
    /// type, version, schema URI, partition key and subject from the payload's key field,
    /// aggregate type, and the stream (topic) of the event.
    pub fn prepare(&self, mut env: Envelope) -> Result<Append> {
        let spec = self.inner.validator.validate(&env)?.event;
        normalize(&mut env, spec);
        Ok(Append {
            envelope: env,
            stream: spec.topic.clone(),
        })
    }
}

/// The distinct types of a batch (with a zero count each) and each event's index among them:
/// the published counter is incremented once per type, not once per event.
fn types_of(batch: &[Append]) -> (Vec<(String, u64)>, Vec<usize>) {
    let mut types: Vec<(String, u64)> = Vec::new();
    let of_event = batch
        .iter()
        .map(|a| {
            let ty = a.envelope.event_type.as_str();
            match types.iter().position(|(t, _)| t == ty) {
                Some(index) => index,
                None => {
                    types.push((ty.to_owned(), 0));
                    types.len() - 1
                }
            }
        })
        .collect();
    (types, of_event)
}

/// Fills in what the catalog knows and the producer may have left out.
fn normalize(env: &mut Envelope, spec: &EventSpec) {
    if env.event_type != spec.name {
        env.event_type.clone_from(&spec.name);
        env.dataschema = None;
    }
    env.schemaversion = Some(spec.version);
    env.dataschema
        .get_or_insert_with(|| schema_uri(&spec.name, spec.version));
    if env.partitionkey.is_none() {
        env.partitionkey = key_of(&env.data, &spec.key).or_else(|| env.subject.clone());
    }
    if env.subject.is_none() {
        env.subject.clone_from(&env.partitionkey);
    }
    if env.aggregatetype.is_none() {
        env.aggregatetype.clone_from(&spec.aggregate);
    }
    if env.correlationid.is_none() {
        env.correlationid = Some(env.id.clone());
    }
}

fn key_of(data: &Value, field: &str) -> Option<String> {
    match data.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_names_each_type_once_and_points_every_event_at_its_type() {
        let batch: Vec<Append> = ["b.one", "a.two", "b.one", "c.three", "a.two"]
            .into_iter()
            .map(|ty| Append {
                envelope: Envelope::new(ty, 1, serde_json::json!({})),
                stream: "s".into(),
            })
            .collect();
        let (types, of_event) = types_of(&batch);
        let names: Vec<&str> = types.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["b.one", "a.two", "c.three"]);
        assert!(types.iter().all(|(_, n)| *n == 0));
        assert_eq!(of_event, [0, 1, 0, 2, 1]);
    }
}
