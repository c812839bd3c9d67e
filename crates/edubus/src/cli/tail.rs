//! `edubus tail`: stored events, oldest first; `--follow` keeps printing new ones.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edubus_catalog::{Catalog, resolve};
use edubus_core::{Position, ReadQuery, Recorded};
use serde_json::Value;

use super::data::{self, Backend, DataArg};
use super::{CatalogArg, catalog, common, outln, source};

/// Events read per page.
const PAGE: usize = 1000;
/// Events shown without `--from` or `--limit`.
const DEFAULT_LIMIT: usize = 20;

/// Arguments of `edubus tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Only this event type (canonical name, alias or topic); repeatable.
    #[arg(long = "type", value_name = "T")]
    types: Vec<String>,
    /// Only this partition key.
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Start at this position [default: show the last --limit events].
    #[arg(long, value_name = "POSITION")]
    from: Option<Position>,
    /// At most this many events before following [default: 20 without --from, all with it].
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Keep waiting for new events until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
    /// One envelope object per line, with its `position`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    catalog: CatalogArg,
}

/// Runs `edubus tail`.
pub async fn run(args: TailArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let catalog = source::load(args.catalog.catalog.as_deref())?;
    let types = match canonical_types(&catalog, &args.types) {
        Ok(types) => types,
        Err(code) => return Ok(code),
    };
    let query = ReadQuery {
        types,
        key: args.key.clone(),
        limit: PAGE,
        ..ReadQuery::default()
    };
    let dir = args.data.clone().or(data);
    data::with_backend!(&dir, edubus_events::catalog(), |backend| tail(
        backend, query, args
    ))
}

/// The canonical names of `--type` values; exit code 2 for a name the catalog lacks.
fn canonical_types(catalog: &Catalog, names: &[String]) -> Result<Vec<String>, ExitCode> {
    let mut types = Vec::new();
    for name in names {
        match resolve::resolve(catalog, name) {
            Ok(r) => types.push(r.event.name.clone()),
            Err(err) => return Err(catalog::unknown_name(&err)),
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}

async fn tail<B: Backend>(
    backend: B,
    query: ReadQuery,
    args: TailArgs,
) -> anyhow::Result<ExitCode> {
    let printer = Printer { json: args.json };
    let (events, mut cursor) = match args.from {
        Some(from) => first(&backend, &query, from, args.limit).await?,
        None => last(&backend, &query, args.limit.unwrap_or(DEFAULT_LIMIT)).await?,
    };
    if events.is_empty() && !args.follow && !args.json {
        eprintln!("no events");
    } else {
        printer.header();
    }
    for event in &events {
        printer.print(event)?;
    }
    if args.follow {
        let follow = follow(&backend, query, &mut cursor, &printer);
        tokio::select! {
            res = follow => res?,
            () = edubus_runtime::shutdown_signal() => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Matching events from position `from` on, at most `limit`; and the position read up to.
async fn first<B: Backend>(
    backend: &B,
    query: &ReadQuery,
    from: Position,
    limit: Option<usize>,
) -> anyhow::Result<(Vec<Recorded>, Position)> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut cursor = from.saturating_sub(1);
    let mut events = Vec::new();
    while events.len() < limit {
        let (page, upto) = read_page(backend, query, cursor).await?;
        let done = page.len() < query.limit;
        cursor = upto;
        events.extend(page.into_iter().take(limit - events.len()));
        if done {
            break;
        }
    }
    if let Some(last) = events.last().filter(|_| events.len() == limit) {
        cursor = last.position;
    }
    Ok((events, cursor))
}

/// The last `n` matching events, found by reading ever larger windows back from the head.
async fn last<B: Backend>(
    backend: &B,
    query: &ReadQuery,
    n: usize,
) -> anyhow::Result<(Vec<Recorded>, Position)> {
    let head = backend.head().await?;
    if n == 0 {
        return Ok((Vec::new(), head));
    }
    let mut window = Position::try_from(n.max(64)).unwrap_or(Position::MAX);
    loop {
        let start = head.saturating_sub(window);
        let mut kept: VecDeque<Recorded> = VecDeque::with_capacity(n);
        let mut cursor = start;
        loop {
            let (page, upto) = read_page(backend, query, cursor).await?;
            let done = page.len() < query.limit;
            cursor = upto;
            for event in page {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(event);
            }
            if done {
                break;
            }
        }
        if kept.len() == n || start == 0 {
            return Ok((kept.into(), cursor.max(head)));
        }
        window = window.saturating_mul(8);
    }
}

/// One page after `after`, and the position up to which the log was examined: the last
/// event of a full page, else the head read before the page (nothing up to it is left).
async fn read_page<B: Backend>(
    backend: &B,
    query: &ReadQuery,
    after: Position,
) -> anyhow::Result<(Vec<Recorded>, Position)> {
    let head = backend.head().await?;
    let page = backend
        .read(ReadQuery {
            after,
            ..query.clone()
        })
        .await?;
    let upto = match page.last() {
        Some(last) if page.len() >= query.limit => last.position,
        Some(last) => last.position.max(head),
        None => after.max(head),
    };
    Ok((page, upto))
}

/// Prints new matching events as they are appended, until the caller stops it.
async fn follow<B: Backend>(
    backend: &B,
    query: ReadQuery,
    cursor: &mut Position,
    printer: &Printer,
) -> anyhow::Result<()> {
    loop {
        backend.wait(None, *cursor, Duration::from_secs(1)).await;
        loop {
            let (page, upto) = read_page(backend, &query, *cursor).await?;
            let full = page.len() >= query.limit;
            for event in &page {
                printer.print(event)?;
            }
            *cursor = upto;
            if !full {
                break;
            }
        }
    }
}

/// Prints events as text lines or JSON lines.
struct Printer {
    json: bool,
}

impl Printer {
    fn header(&self) {
        if !self.json {
            outln!(
                "{}",
                row("POSITION", "TIME", "TYPE", "KEY", "ID", "CORRELATION")
            );
        }
    }

    fn print(&self, event: &Recorded) -> anyhow::Result<()> {
        if self.json {
            let mut value = serde_json::to_value(&event.envelope)?;
            if let Value::Object(map) = &mut value {
                map.insert("position".into(), event.position.into());
            }
            outln!("{}", serde_json::to_string(&value)?);
            return Ok(());
        }
        let env = &event.envelope;
        let time = env.time.unwrap_or(event.recorded_at);
        let line = row(
            &event.position.to_string(),
            &common::short_time(time),
            &env.event_type,
            &event.key,
            &env.id,
            env.correlation_id(),
        );
        outln!("{line}");
        Ok(())
    }
}

/// One line of the text view, columns aligned for the usual widths.
fn row(position: &str, time: &str, ty: &str, key: &str, id: &str, correlation: &str) -> String {
    format!("{position:>8}  {time:<24}  {ty:<30}  {key:<36}  {id:<36}  {correlation}")
}
