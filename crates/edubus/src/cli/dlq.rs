//! `edubus dlq ...`: list, inspect, replay and purge dead letters. Replays and purges are
//! recorded in the audit store with the actor `cli:$USER`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::Table;
use comfy_table::presets::NOTHING;
use edubus_core::{DeadLetterEntry, DeadLetterQueue, EventStore};
use serde_json::json;

use super::data::{self, Backend, DataArg};
use super::{common, outln, print_table, progress};

/// Entries read per page, and ids sent per replay or purge call.
const PAGE: usize = 500;

/// Arguments of `edubus dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    #[command(flatten)]
    data: DataArg,
}

/// Dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead letter, oldest first.
    List {
        /// Only this subscription's.
        #[arg(long, value_name = "S")]
        subscription: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: error, attempt history, handler, origin and the envelope.
    Show {
        /// The entry id.
        id: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters for redelivery to their own subscription, marked as replays.
    Replay(Selection),
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

/// Which entries a replay or purge acts on.
#[derive(Debug, clap::Args)]
pub struct Selection {
    /// Entry ids.
    #[arg(
        required_unless_present = "all",
        conflicts_with = "all",
        value_name = "ID"
    )]
    ids: Vec<u64>,
    /// Every entry (of --subscription, if given).
    #[arg(long)]
    all: bool,
    /// Only entries of this subscription.
    #[arg(long, value_name = "S")]
    subscription: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What a replay or purge does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

/// Runs one dead-letter subcommand.
pub async fn run(args: DlqArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let dir = args.data.or(data);
    data::with_backend!(&dir, edubus_events::catalog(), |backend| async move {
        match args.command {
            DlqCommand::List { subscription, json } => {
                list(&backend, subscription.as_deref(), json).await
            }
            DlqCommand::Show { id, json } => show(&backend, id, json).await,
            DlqCommand::Replay(selection) => act(&backend, selection, Action::Replay).await,
            DlqCommand::Purge { selection, yes } => {
                if !yes && !confirm(&selection)? {
                    eprintln!("nothing purged");
                    return Ok(ExitCode::from(1));
                }
                act(&backend, selection, Action::Purge).await
            }
        }
    })
}

/// Every entry, of one subscription or all, oldest first.
async fn entries<B: Backend>(
    backend: &B,
    subscription: Option<&str>,
) -> anyhow::Result<Vec<DeadLetterEntry>> {
    let mut all: Vec<DeadLetterEntry> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.id);
        let page = DeadLetterQueue::list(backend, subscription, after, PAGE).await?;
        let done = page.len() < PAGE;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

async fn list<B: Backend>(
    backend: &B,
    subscription: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(name) = subscription
        && let Err(code) = data::require_subscription(backend, name).await?
    {
        return Ok(code);
    }
    let all = entries(backend, subscription).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header([
        "ID",
        "SUBSCRIPTION",
        "TYPE",
        "POSITION",
        "REASON",
        "ATTEMPTS",
        "DEAD AT",
        "REPLAYED",
        "ERROR",
    ]);
    for e in &all {
        table.add_row(row(e));
    }
    if !all.is_empty() {
        print_table(&table);
    }
    outln!("{} dead letter(s)", all.len());
    Ok(ExitCode::SUCCESS)
}

fn row(e: &DeadLetterEntry) -> [String; 9] {
    let l = &e.letter;
    let error: String = l
        .error
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect();
    [
        e.id.to_string(),
        l.subscription.clone(),
        l.event_type.clone(),
        l.position.to_string(),
        reason(e),
        l.attempts.len().to_string(),
        common::short_time(e.dead_at),
        e.replayed_at.map(common::short_time).unwrap_or_default(),
        error,
    ]
}

fn reason(e: &DeadLetterEntry) -> String {
    serde_json::to_value(e.letter.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", e.letter.reason))
}

async fn show<B: Backend>(backend: &B, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let Some(entry) = DeadLetterQueue::get(backend, id).await? else {
        eprintln!("error: no dead letter #{id}");
        return Ok(ExitCode::from(2));
    };
    let envelope = EventStore::get(backend, &entry.letter.event_id)
        .await?
        .map(|r| r.envelope);
    if json {
        let mut out = serde_json::to_value(&entry)?;
        out["envelope"] = serde_json::to_value(&envelope)?;
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_entry(&entry);
    match envelope {
        Some(env) => outln!("envelope:\n{}", serde_json::to_string_pretty(&env)?),
        None => outln!("envelope:  (no longer in the log)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entry(e: &DeadLetterEntry) {
    let l = &e.letter;
    outln!("dead letter #{} of subscription {}", e.id, l.subscription);
    outln!("event:     {} {}", l.event_type, l.event_id);
    outln!("handler:   {}", l.handler);
    outln!("reason:    {}", reason(e));
    outln!("error:     {}", l.error);
    outln!(
        "origin:    stream {}, partition {}, position {}",
        l.stream,
        l.partition,
        l.position
    );
    outln!("dead at:   {}", common::short_time(e.dead_at));
    let replayed = e
        .replayed_at
        .map_or_else(|| "never".into(), common::short_time);
    outln!("replayed:  {replayed}");
    outln!(
        "attempts:  {}",
        if l.attempts.is_empty() {
            "none recorded"
        } else {
            ""
        }
    );
    for a in &l.attempts {
        outln!(
            "  #{} {} by {}: {}",
            a.number,
            common::short_time(a.at),
            a.consumer,
            a.error
        );
    }
}

/// Asks on a terminal whether to purge; without a terminal there is no one to ask.
fn confirm(selection: &Selection) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    let what = match (&selection.all, &selection.subscription) {
        (true, Some(s)) => format!("every dead letter of `{s}`"),
        (true, None) => "every dead letter".into(),
        (false, _) => format!("{} dead letter(s)", selection.ids.len()),
    };
    eprint!("purge {what}? This cannot be undone. [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Replays or purges the selected entries and prints the count.
async fn act<B: Backend>(
    backend: &B,
    selection: Selection,
    action: Action,
) -> anyhow::Result<ExitCode> {
    let ids = match selected(backend, &selection).await? {
        Ok(ids) => ids,
        Err(code) => return Ok(code),
    };
    let done = apply(backend, &ids, action).await?;
    let (verb, note) = match action {
        Action::Replay => ("replayed", ": queued for redelivery to their subscriptions"),
        Action::Purge => ("purged", ""),
    };
    if selection.json {
        let out = json!({ "action": verb, "selected": ids.len(), "count": done });
        outln!("{}", serde_json::to_string(&out)?);
    } else {
        outln!("{verb} {done} of {} dead letter(s){note}", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The ids to act on: every entry (of the subscription) with --all, else the ids given,
/// each checked to exist (and to belong to --subscription); exit code 2 otherwise.
async fn selected<B: Backend>(
    backend: &B,
    selection: &Selection,
) -> anyhow::Result<Result<Vec<u64>, ExitCode>> {
    let subscription = selection.subscription.as_deref();
    if let Some(name) = subscription
        && let Err(code) = data::require_subscription(backend, name).await?
    {
        return Ok(Err(code));
    }
    if selection.all {
        let all = entries(backend, subscription).await?;
        return Ok(Ok(all.into_iter().map(|e| e.id).collect()));
    }
    for &id in &selection.ids {
        let entry = DeadLetterQueue::get(backend, id).await?;
        let problem = match (&entry, subscription) {
            (None, _) => format!("no dead letter #{id}"),
            (Some(e), Some(s)) if e.letter.subscription != s => {
                format!(
                    "dead letter #{id} belongs to `{}`, not `{s}`",
                    e.letter.subscription
                )
            }
            _ => continue,
        };
        eprintln!("error: {problem}; nothing done");
        return Ok(Err(ExitCode::from(2)));
    }
    Ok(Ok(selection.ids.clone()))
}

/// Sends the ids in chunks, with a progress bar on a terminal.
async fn apply<B: Backend>(backend: &B, ids: &[u64], action: Action) -> anyhow::Result<u64> {
    let actor = common::actor();
    let label = match action {
        Action::Replay => "replaying",
        Action::Purge => "purging",
    };
    let bar = progress::bar(ids.len() as u64, label);
    let mut done = 0;
    for chunk in ids.chunks(PAGE) {
        done += match action {
            Action::Replay => DeadLetterQueue::replay(backend, chunk, &actor).await?,
            Action::Purge => backend.purge(chunk, &actor).await?,
        };
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(done)
}
