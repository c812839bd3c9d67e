//! `edubus bench`: a load generator to run against a deployment, like `redis-benchmark`.
//!
//! `publish` mode measures batched `publish_batch` throughput, with the latency of each batch
//! call; `e2e` mode measures publish -> no-op handler -> settle, with the latency from the
//! moment an event was handed to publish to the moment its handler started.

mod e2e;
mod report;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::ValueEnum;
use edubus_runtime::Bus;
use indicatif::ProgressBar;
use tokio::sync::watch;

use self::report::{Latencies, Summary};
use self::workload::{Shape, Workload};
use super::data::{self, Backend};
use super::{outln, progress};

/// Arguments of `edubus bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Backend to benchmark.
    #[arg(long, value_enum, default_value_t = BackendKind::Sqlite)]
    backend: BackendKind,
    /// Data directory to run against [default: a fresh temporary directory, removed after].
    /// The events (and, in e2e mode, `bench-*` subscriptions) stay in a directory you name.
    #[arg(long = "data", value_name = "DIR")]
    data: Option<PathBuf>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Publish)]
    mode: Mode,
    /// Events to publish.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per publish_batch call.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    batch: usize,
    /// Target publish rate in events/s (open loop, for latency runs); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    rate: f64,
    /// Pad each payload (the optional `reason` of attendance.updated) to about this many
    /// bytes of JSON.
    #[arg(long, default_value_t = 0, value_name = "B")]
    payload_bytes: usize,
    /// e2e: subscriptions, each with a no-op handler.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    subscriptions: usize,
    /// e2e: per-key ordered delivery (the default).
    #[arg(long, overrides_with = "unordered")]
    ordered: bool,
    /// e2e: unordered delivery.
    #[arg(long, overrides_with = "ordered")]
    unordered: bool,
    /// Distinct partition keys.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    keys: usize,
    /// Concurrent publishing tasks.
    #[arg(long, default_value_t = 2, value_parser = positive)]
    publishers: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Backends `edubus bench` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The embedded SQLite deployment.
    Sqlite,
}

/// What `edubus bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Batched publish throughput and per-batch latency.
    Publish,
    /// Publish -> no-op handler -> settle, with per-delivery latency.
    E2e,
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` is not a positive integer")),
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("`{text}` is not a rate in events/s (0 or more)")),
    }
}

/// Runs `edubus bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let temp = match &args.data {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("edubus-bench-").tempdir()?),
    };
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| temp_path(temp.as_ref()));
    if !args.json {
        let note = if temp.is_some() { " (temporary)" } else { "" };
        outln!("edubus bench: data in {}{note}", dir.display());
    }
    let BackendKind::Sqlite = args.backend;
    let result = data::with_backend(&dir, |backend| bench(backend, args)).await;
    drop(temp);
    result
}

fn temp_path(temp: Option<&tempfile::TempDir>) -> PathBuf {
    temp.map_or_else(|| PathBuf::from("."), |t| t.path().to_path_buf())
}

async fn bench<B: Backend>(backend: B, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::new(backend, edubus_events::catalog(), "edubus-bench")?;
    let shape = Shape {
        events: args.events,
        batch: args.batch,
        keys: args.keys,
        payload_bytes: args.payload_bytes,
    };
    let workload = workload::build(&bus, shape)?;
    let summary = match args.mode {
        Mode::Publish => publish_mode(&bus, workload, &args).await?,
        Mode::E2e => e2e_mode(&bus, workload, &args).await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        summary.print();
    }
    Ok(ExitCode::SUCCESS)
}

async fn publish_mode<B: Backend>(
    bus: &Bus<B>,
    workload: Workload,
    args: &BenchArgs,
) -> anyhow::Result<Summary> {
    let payload_bytes = workload.payload_bytes;
    let bar = progress::bar(args.events, "published");
    let published =
        workload::publish(bus, workload.batches, args.publishers, args.rate, &bar).await?;
    bar.finish_and_clear();
    let samples = published
        .batches
        .iter()
        .flat_map(|&(latency, size)| std::iter::repeat_n(latency, size))
        .collect();
    let seconds = published.elapsed.as_secs_f64();
    let summary = summary(
        args,
        "publish",
        "publish_batch call",
        payload_bytes,
        seconds,
    );
    Ok(Summary {
        publish_seconds: seconds,
        ..summary
    }
    .with_latencies(&Latencies::new(samples)))
}

async fn e2e_mode<B: Backend>(
    bus: &Bus<B>,
    workload: Workload,
    args: &BenchArgs,
) -> anyhow::Result<Summary> {
    let names = e2e::subscription_names(args.subscriptions);
    let recorder = Arc::new(e2e::Recorder::default());
    let worker = e2e::worker(bus, &names, ordered(args), &recorder)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let measured = measure_e2e(bus, workload.batches, args, &names, &recorder).await;
    let _ = stop_tx.send(true);
    running.await??;
    let (seconds, publish_seconds) = measured?;
    let latency = "handler start - publish";
    let summary = summary(args, "e2e", latency, workload.payload_bytes, seconds);
    Ok(Summary {
        publish_seconds,
        deliveries: args.events * names.len() as u64,
        ..summary
    }
    .with_latencies(&Latencies::new(recorder.take())))
}

/// Publishes while the subscriptions deliver; returns the seconds until everything settled
/// and the seconds publishing took.
async fn measure_e2e<B: Backend>(
    bus: &Bus<B>,
    batches: Vec<Vec<edubus_core::Envelope>>,
    args: &BenchArgs,
    names: &[String],
    recorder: &e2e::Recorder,
) -> anyhow::Result<(f64, f64)> {
    e2e::wait_ready(bus.backend(), names).await?;
    let expected = args.events * names.len() as u64;
    let bar = progress::bar(expected, "delivered");
    let quiet = ProgressBar::hidden();
    let start = tokio::time::Instant::now();
    let (published, settled) = tokio::join!(
        workload::publish(bus, batches, args.publishers, args.rate, &quiet),
        e2e::wait_settled(bus.backend(), names, recorder, expected, |n| {
            bar.set_position(n);
        })
    );
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    settled?;
    Ok((seconds, published?.elapsed.as_secs_f64()))
}

/// Per-key ordered delivery unless `--unordered` came last.
fn ordered(args: &BenchArgs) -> bool {
    args.ordered || !args.unordered
}

/// The summary of a run without its latency figures.
fn summary(
    args: &BenchArgs,
    mode: &'static str,
    latency: &'static str,
    payload_bytes: usize,
    seconds: f64,
) -> Summary {
    let secs = seconds.max(f64::EPSILON);
    Summary {
        backend: "sqlite",
        mode,
        latency,
        events: args.events,
        batch: args.batch,
        publishers: args.publishers,
        keys: args.keys,
        subscriptions: if mode == "e2e" { args.subscriptions } else { 0 },
        ordered: ordered(args),
        rate: args.rate,
        payload_bytes,
        seconds,
        events_per_s: args.events as f64 / secs,
        publish_seconds: 0.0,
        deliveries: 0,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        max_ms: 0.0,
        mean_ms: 0.0,
    }
}
