//! `edubus trace`: the causation tree of one correlation id, with what every subscription did
//! with each event.

use std::path::PathBuf;
use std::process::ExitCode;

use edubus_core::DeliveryState;
use edubus_http::trace::Tree;

use super::data::{self, Backend, DataArg};
use super::{common, outln};

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
    data::with_backend!(&dir, edubus_events::catalog(), |backend| trace(
        backend, args
    ))
}

async fn trace<B: Backend>(backend: B, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let Some(tree) = Tree::load(&backend, &args.correlation_id).await? else {
        eprintln!(
            "error: no event has the correlation id `{}`",
            args.correlation_id
        );
        return Ok(ExitCode::from(2));
    };
    if args.json {
        let out = tree.to_json(&args.correlation_id);
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "correlation {}: {} event(s), {} root(s)",
            args.correlation_id,
            tree.events.len(),
            tree.roots.len()
        );
        for &root in &tree.roots {
            print(&tree, root, 0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(tree: &Tree, i: usize, depth: usize) {
    let event = &tree.events[i];
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
    for (subscription, state) in tree.states.get(i).into_iter().flatten() {
        if let Some(text) = describe(state) {
            outln!("{inner}   · {subscription}: {text}");
            any = true;
        }
    }
    if !any {
        outln!("{inner}   · no subscription receives it");
    }
    for &child in &tree.children[i] {
        print(tree, child, depth + 1);
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
