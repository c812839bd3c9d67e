//! `edubus serve`: the embedded deployment with the workers this binary registers, until
//! SIGTERM or SIGINT; then a graceful drain and exit 0.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use edubus_catalog::Catalog;
use edubus_core::SubscriptionStats;
use edubus_runtime::{Bus, shutdown_signal};
use jiff::Timestamp;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::data::{self, Backend, DataArg};
use super::{CatalogArg, common, outln, source};
use crate::workers::{self, Registry, Settings};

/// Arguments of `edubus serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Trim transport entries older than this (`7d`, `12h`); off by default, because the
    /// embedded log is also the audit store.
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    retention: Option<Duration>,
    /// How often a subscription-health line is printed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = common::parse_duration)]
    health_every: Duration,
    /// JSON lines (`started`, `health`, `stopped`) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    catalog: CatalogArg,
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `edubus serve`.
pub async fn run(args: ServeArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    init_logging();
    let catalog = source::load(args.catalog.catalog.as_deref())?;
    let dir = args.data.clone().or(data);
    // Armed before anything is printed: a signal sent once `ready` shows is a graceful stop.
    let signal = armed(Box::pin(shutdown_signal())).await;
    data::with_backend(&dir, |backend| {
        serve(backend, catalog, dir.clone(), args, signal)
    })
    .await
}

/// Logs of the runtime (dead letters, lost leases) on stderr; `EDUBUS_LOG` sets the level.
fn init_logging() {
    let level = std::env::var("EDUBUS_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Polls the shutdown future once so its signal handlers are installed now, not at the first
/// await of the serving loop.
async fn armed(mut signal: Shutdown) -> Shutdown {
    let fired = std::future::poll_fn(|cx| Poll::Ready(signal.as_mut().poll(cx).is_ready())).await;
    if fired {
        Box::pin(std::future::ready(()))
    } else {
        signal
    }
}

async fn serve<B: Backend>(
    backend: B,
    catalog: Catalog,
    dir: PathBuf,
    args: ServeArgs,
    signal: Shutdown,
) -> anyhow::Result<ExitCode> {
    let bus = Bus::new(backend.clone(), &catalog, "edubus-serve")?;
    let settings = Settings {
        retention: args.retention,
    };
    let registry = workers::registry(&bus, &settings);
    banner(&dir, &catalog, &registry, args.json)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = spawn(registry, &backend, &stop_rx, args.health_every, args.json)?;
    let failed = tokio::select! {
        () = signal => None,
        Some(res) = tasks.join_next() => Some(res),
    };
    if !args.json {
        outln!("shutting down: draining in-flight work");
    }
    let _ = stop_tx.send(true);
    let mut ok = failed.is_none_or(report);
    while let Some(res) = tasks.join_next().await {
        ok &= report(res);
    }
    stopped(args.json, ok)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

type Task = edubus_core::Result<()>;

/// Starts the worker, the maintenance tasks and the health line.
fn spawn<B: Backend>(
    registry: Registry<B>,
    backend: &B,
    stop: &watch::Receiver<bool>,
    health_every: Duration,
    json: bool,
) -> anyhow::Result<JoinSet<Task>> {
    let mut tasks = JoinSet::new();
    let worker = registry.worker.build()?;
    tasks.spawn(worker.run(stopped_when(stop.clone())));
    for task in registry.maintenance {
        tasks.spawn(task.run(backend.clone(), stop.clone()));
    }
    tasks.spawn(health(backend.clone(), health_every, stop.clone(), json));
    Ok(tasks)
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped_when(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether a task ended well; says why not.
fn report(res: Result<Task, tokio::task::JoinError>) -> bool {
    match res {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            false
        }
        Err(e) => {
            eprintln!("error: a serve task failed: {e}");
            false
        }
    }
}

fn banner<B: Backend>(
    dir: &Path,
    catalog: &Catalog,
    registry: &Registry<B>,
    json: bool,
) -> anyhow::Result<()> {
    let db = data::db_file(dir);
    let db = std::path::absolute(&db).unwrap_or(db);
    let maintenance: Vec<String> = registry.maintenance.iter().map(|m| m.describe()).collect();
    if json {
        let out = json!({
            "event": "started", "data": db, "catalog_events": catalog.names().len(),
            "subscriptions": registry.subscriptions, "maintenance": maintenance,
        });
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    outln!("edubus serve: data in {}", db.display());
    outln!("catalog: {} events", catalog.names().len());
    let subs = registry.subscriptions.join(", ");
    outln!(
        "subscriptions: {}",
        if subs.is_empty() {
            "none registered"
        } else {
            &subs
        }
    );
    outln!(
        "maintenance: {}",
        if maintenance.is_empty() {
            "none (no --retention)".into()
        } else {
            maintenance.join("; ")
        }
    );
    outln!("ready; SIGTERM or Ctrl-C stops after draining in-flight work");
    Ok(())
}

fn stopped(json: bool, ok: bool) -> anyhow::Result<()> {
    if json {
        outln!(
            "{}",
            serde_json::to_string(&json!({ "event": "stopped", "ok": ok }))?
        );
    } else if ok {
        outln!("stopped");
    }
    Ok(())
}

/// Prints subscription health every `every` until stopped.
async fn health<B: Backend>(
    backend: B,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    json: bool,
) -> Task {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        match backend.stats().await {
            Ok(stats) => health_line(&stats, json),
            Err(e) => tracing::warn!(error = %e, "cannot read subscription health"),
        }
    }
}

fn health_line(stats: &[SubscriptionStats], json: bool) {
    let now = common::short_time(Timestamp::now());
    if json {
        let out = json!({ "event": "health", "at": now, "subscriptions": stats });
        outln!("{out}");
        return;
    }
    if stats.is_empty() {
        return outln!("{now} health: no subscriptions");
    }
    let parts: Vec<String> = stats
        .iter()
        .map(|s| {
            format!(
                "{} lag {} pending {} dlq {} consumers {}",
                s.subscription, s.lag, s.pending, s.dlq_depth, s.consumers
            )
        })
        .collect();
    outln!("{now} health: {}", parts.join("; "));
}
