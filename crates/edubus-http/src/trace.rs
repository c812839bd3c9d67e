//! The causation tree of one correlation id: each event under the event that caused it, with
//! what every subscription did with it. Shared by `GET /v1/trace/{id}` and `edubus trace`.

use std::collections::HashMap;

use edubus_core::{DeliveryState, EventStore, ReadQuery, Recorded, Result, Transport};
use serde_json::{Value, json};

/// Events read per page.
const PAGE: usize = 1000;

/// Every event with this correlation id, by position.
pub async fn correlated<B: EventStore>(backend: &B, id: &str) -> Result<Vec<Recorded>> {
    let mut events: Vec<Recorded> = Vec::new();
    loop {
        let query = ReadQuery {
            after: events.last().map_or(0, |e| e.position),
            limit: PAGE,
            correlation_id: Some(id.to_owned()),
            ..ReadQuery::default()
        };
        let page = backend.read(query).await?;
        let done = page.len() < PAGE;
        events.extend(page);
        if done {
            return Ok(events);
        }
    }
}

/// Events of one correlation id arranged by causation: children under their cause.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The events, by position.
    pub events: Vec<Recorded>,
    /// Per event, what each subscription did with it (subscriptions by name).
    pub states: Vec<Vec<(String, DeliveryState)>>,
    /// Events whose cause is not among them (or that have none), by position.
    pub roots: Vec<usize>,
    /// Per event, the events it caused, by position.
    pub children: Vec<Vec<usize>>,
}

impl Tree {
    /// Reads the events of `correlation_id` and their delivery states; `None` when there is none.
    pub async fn load<B: EventStore + Transport>(
        backend: &B,
        correlation_id: &str,
    ) -> Result<Option<Self>> {
        let events = correlated(backend, correlation_id).await?;
        if events.is_empty() {
            return Ok(None);
        }
        let states = backend.states(&events).await?;
        Ok(Some(Self::new(events, states)))
    }

    /// Arranges `events` (by position) with their `states`.
    pub fn new(events: Vec<Recorded>, states: Vec<Vec<(String, DeliveryState)>>) -> Self {
        let index: HashMap<&str, usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.envelope.id.as_str(), i))
            .collect();
        let mut roots = Vec::new();
        let mut children = vec![Vec::new(); events.len()];
        for (i, event) in events.iter().enumerate() {
            let cause = event.envelope.causationid.as_deref();
            match cause.and_then(|c| index.get(c)).filter(|&&c| c != i) {
                Some(&parent) => children[parent].push(i),
                None => roots.push(i),
            }
        }
        Self {
            events,
            states,
            roots,
            children,
        }
    }

    /// The whole tree as JSON: `{correlation_id, events, roots: [...]}`.
    pub fn to_json(&self, correlation_id: &str) -> Value {
        let roots: Vec<Value> = self.roots.iter().map(|&i| self.json(i)).collect();
        json!({ "correlation_id": correlation_id, "events": self.events.len(), "roots": roots })
    }

    /// Event `i` and everything it caused, as JSON.
    pub fn json(&self, i: usize) -> Value {
        let event = &self.events[i];
        let env = &event.envelope;
        let subscriptions: Vec<Value> = self
            .states
            .get(i)
            .into_iter()
            .flatten()
            .map(|(name, state)| {
                let mut v = serde_json::to_value(state).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.insert("subscription".into(), name.clone().into());
                }
                v
            })
            .collect();
        let caused: Vec<Value> = self.children[i].iter().map(|&c| self.json(c)).collect();
        json!({
            "position": event.position, "id": env.id, "time": env.time, "type": env.event_type,
            "key": event.key, "causation_id": env.causationid, "subscriptions": subscriptions,
            "caused": caused,
        })
    }
}
