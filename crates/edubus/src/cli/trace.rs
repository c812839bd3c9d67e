//! `edubus trace`: the causation tree of one correlation id, with what every subscription did
//! with each event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use edubus_core::{DeliveryState, ReadQuery, Recorded};
use serde_json::{Value, json};

use super::data::{self, Backend, DataArg};
use super::{common, outln};

/// Events read per page.
const PAGE: usize = 1000;

/// Arguments of `edubus trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The correlation id shared by the events of one business flow.
    correlation_id: String,
    /// One JSON object (the tree) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArg,
}

/// Runs `edubus trace`.
pub async fn run(args: TraceArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let dir = args.data.clone().or(data);
    data::with_backend(&dir, |backend| trace(backend, args)).await
}

async fn trace<B: Backend>(backend: B, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let events = correlated(&backend, &args.correlation_id).await?;
    if events.is_empty() {
        eprintln!(
            "error: no event has the correlation id `{}`",
            args.correlation_id
        );
        return Ok(ExitCode::from(2));
    }
    let states = backend.states(&events).await?;
    let tree = Tree::new(events, states);
    if args.json {
        let roots: Vec<Value> = tree.roots.iter().map(|&i| tree.json(i)).collect();
        let out = json!({
            "correlation_id": args.correlation_id, "events": tree.events.len(), "roots": roots,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "correlation {}: {} event(s), {} root(s)",
            args.correlation_id,
            tree.events.len(),
            tree.roots.len()
        );
        for &root in &tree.roots {
            tree.print(root, 0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every event with this correlation id, by position.
async fn correlated<B: Backend>(backend: &B, id: &str) -> anyhow::Result<Vec<Recorded>> {
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
struct Tree {
    events: Vec<Recorded>,
    states: Vec<Vec<(String, DeliveryState)>>,
    /// Events whose cause is not among them (or that have none), by position.
    roots: Vec<usize>,
    /// Per event, the events it caused, by position.
    children: Vec<Vec<usize>>,
}

impl Tree {
    fn new(events: Vec<Recorded>, states: Vec<Vec<(String, DeliveryState)>>) -> Self {
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

    fn print(&self, i: usize, depth: usize) {
        let event = &self.events[i];
        let env = &event.envelope;
        let time = common::short_time(env.time.unwrap_or(event.recorded_at));
        let (indent, marker) = match depth {
            0 => (String::new(), ""),
            d => ("   ".repeat(d - 1), "└─ "),
        };
        outln!(
            "{indent}{marker}#{} {time} {} {} (key {})",
            event.position,
            env.event_type,
            env.id,
            event.key
        );
        let inner = "   ".repeat(depth);
        let mut any = false;
        for (subscription, state) in self.states.get(i).into_iter().flatten() {
            if let Some(text) = describe(state) {
                outln!("{inner}   · {subscription}: {text}");
                any = true;
            }
        }
        if !any {
            outln!("{inner}   · no subscription receives it");
        }
        for &child in &self.children[i] {
            self.print(child, depth + 1);
        }
    }

    fn json(&self, i: usize) -> Value {
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

/// What a subscription did, in words; `None` for one that does not receive the event.
fn describe(state: &DeliveryState) -> Option<String> {
    Some(match state {
        DeliveryState::NotSubscribed => return None,
        DeliveryState::Handled => "handled".into(),
        DeliveryState::Pending { attempts: 0 } => "pending".into(),
        DeliveryState::Pending { attempts } => format!("pending ({attempts} failed attempt(s))"),
        DeliveryState::DeadLettered { dlq_id } => format!("dead-lettered (DLQ #{dlq_id})"),
    })
}
