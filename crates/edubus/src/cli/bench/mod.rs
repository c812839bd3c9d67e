//! `edubus bench`: a load generator to run against a deployment, like `redis-benchmark`.
//!
//! `publish` mode measures batched publish throughput, with the latency of each batch call;
//! `e2e` mode measures publish -> no-op handler -> settle, with the latency from the moment an
//! event was handed to publish to the moment its handler started; `relay` mode measures the
//! outbox relay from PostgreSQL to Redis. `--backend redis` publishes straight to the Redis
//! transport, `--backend production` through the PostgreSQL outbox; both run on the configured
//! servers under a fresh prefix and schema. Redis publish, Redis e2e and relay runs are followed
//! by the raw server under the same load (`raw.rs`).

mod e2e;
mod raw;
mod relay;
mod report;
mod servers;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::ValueEnum;
use edubus_postgres::RelayOptions;
use edubus_runtime::Bus;
use indicatif::ProgressBar;
use tokio::sync::watch;

use self::report::{Latencies, Summary};
use self::workload::{Shape, Target, Workload};
use super::data::{self, Backend};
use super::{outln, progress};

/// Arguments of `edubus bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Backend to benchmark.
    #[arg(long, value_enum, default_value_t = BackendKind::Sqlite)]
    backend: BackendKind,
    /// sqlite: data directory to run against [default: a fresh temporary directory, removed
    /// after]. The events (and, in e2e mode, `bench-*` subscriptions) stay in a directory you
    /// name.
    #[arg(long = "data", value_name = "DIR")]
    data: Option<PathBuf>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Publish)]
    mode: Mode,
    /// Events to publish.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per publish call (redis: per XADD pipeline; relay: per relay pass).
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    batch: usize,
    /// Target publish rate in events/s (open loop, for latency runs); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    rate: f64,
    /// publish, e2e: events published first, with the same batch size and rate, and left out
    /// of the figures (a fresh data directory, connection pools and caches warm up).
    #[arg(long, default_value_t = 0, value_name = "N")]
    warmup: u64,
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
    /// relay: passes run side by side, each over its own partitions.
    #[arg(long, default_value_t = RelayOptions::default().lanes, value_parser = positive)]
    lanes: usize,
    /// redis, production: keep the run's Redis keys and PostgreSQL schema.
    #[arg(long)]
    keep: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Backends `edubus bench` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The embedded SQLite deployment.
    Sqlite,
    /// The Redis Streams transport: events go straight to Redis, consumed (e2e) through the
    /// production deployment; each mode runs the raw server beside it.
    Redis,
    /// The production deployment: PostgreSQL outbox, relay, Redis Streams.
    Production,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Redis => "redis",
            Self::Production => "production",
        }
    }
}

/// What `edubus bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Batched publish throughput and per-batch latency.
    Publish,
    /// Publish -> no-op handler -> settle, with per-delivery latency.
    E2e,
    /// PostgreSQL outbox -> Redis relay throughput (production backend).
    Relay,
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
    if args.mode == Mode::Relay && args.warmup > 0 {
        bail!("--warmup applies to --mode publish and e2e, not to relay");
    }
    let summary = match args.backend {
        BackendKind::Sqlite => sqlite(&args).await?,
        BackendKind::Redis | BackendKind::Production => on_servers(&args).await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        summary.print();
    }
    Ok(ExitCode::SUCCESS)
}

async fn sqlite(args: &BenchArgs) -> anyhow::Result<Summary> {
    if args.mode == Mode::Relay {
        bail!("--mode relay measures the PostgreSQL outbox relay: use --backend production");
    }
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
    let backend = data::open(&dir).await?;
    let result = match bench_bus(backend.clone()) {
        Ok(bus) => measure(&bus, args, Target::Store).await,
        Err(e) => Err(e),
    };
    data::close(backend).await;
    drop(temp);
    result
}

fn temp_path(temp: Option<&tempfile::TempDir>) -> PathBuf {
    temp.map_or_else(|| PathBuf::from("."), |t| t.path().to_path_buf())
}

/// Runs on the configured PostgreSQL and Redis, in a fresh schema and key prefix.
async fn on_servers(args: &BenchArgs) -> anyhow::Result<Summary> {
    let backend = args.backend.name();
    if args.data.is_some() {
        bail!("--data is for --backend sqlite; --backend {backend} uses the configured servers");
    }
    if args.backend == BackendKind::Redis && args.mode == Mode::Relay {
        bail!("--mode relay measures the PostgreSQL outbox relay: use --backend production");
    }
    // Production e2e is the whole path: publish into the outbox, relay, deliver.
    let relay =
        (args.backend == BackendKind::Production && args.mode == Mode::E2e).then(|| RelayOptions {
            batch: args.batch,
            ..RelayOptions::default()
        });
    let servers = servers::open(relay).await?;
    if !args.json {
        let kept = if args.keep {
            "kept"
        } else {
            "removed after the run"
        };
        outln!("edubus bench: {} ({kept})", servers.describe);
    }
    let result = on_deployment(&servers, args).await;
    let (prefix, schema) = (servers.prefix.clone(), servers.schema.clone());
    let closed = servers.close(args.keep).await;
    let summary = result?;
    closed?;
    Ok(Summary {
        prefix: Some(prefix),
        schema: Some(schema),
        ..summary
    })
}

async fn on_deployment(servers: &servers::Servers, args: &BenchArgs) -> anyhow::Result<Summary> {
    let bus = bench_bus(servers.backend.clone())?;
    let redis = Target::redis(servers.backend.redis().clone());
    let server = (
        servers.backend.redis().config().url.as_str(),
        servers.prefix.as_str(),
    );
    let (summary, raw) = match (args.backend, args.mode) {
        (_, Mode::Relay) => {
            let summary = relay::measure(&bus, workload::build(&bus, shape(args))?, args).await?;
            let rate = summary.events_per_s;
            let raw = raw::redis_benchmark(&bus, args, server, args.lanes, rate).await?;
            (summary, raw)
        }
        (BackendKind::Redis, Mode::Publish) => {
            let summary = measure(&bus, args, redis).await?;
            let rate = summary.events_per_s;
            let raw = raw::redis_benchmark(&bus, args, server, args.publishers, rate).await?;
            (summary, raw)
        }
        (BackendKind::Redis, Mode::E2e) => {
            let summary = measure(&bus, args, redis).await?;
            let raw = raw::streams_e2e(&bus, args, server, summary.events_per_s).await?;
            (summary, raw)
        }
        _ => return measure(&bus, args, Target::Store).await,
    };
    Ok(Summary {
        raw: Some(raw),
        ..summary
    })
}

fn bench_bus<B: Backend>(backend: B) -> anyhow::Result<Bus<B>> {
    Ok(Bus::new(backend, edubus_events::catalog(), "edubus-bench")?)
}

fn shape(args: &BenchArgs) -> Shape {
    Shape {
        events: args.events,
        batch: args.batch,
        keys: args.keys,
        payload_bytes: args.payload_bytes,
    }
}

/// Runs the publish or e2e mode, publishing to `target`.
async fn measure<B: Backend>(
    bus: &Bus<B>,
    args: &BenchArgs,
    target: Target,
) -> anyhow::Result<Summary> {
    let workload = workload::build(bus, shape(args))?;
    let warmup = workload::build(
        bus,
        Shape {
            events: args.warmup,
            ..shape(args)
        },
    )?;
    match args.mode {
        Mode::Publish => {
            if args.warmup > 0 {
                let quiet = ProgressBar::hidden();
                let (publishers, rate) = (args.publishers, args.rate);
                workload::publish(bus, &target, warmup.batches, publishers, rate, &quiet).await?;
            }
            publish_mode(bus, &target, workload, args).await
        }
        Mode::E2e => e2e_mode(bus, &target, workload, warmup, args).await,
        Mode::Relay => bail!("--mode relay runs on --backend production only"),
    }
}

async fn publish_mode<B: Backend>(
    bus: &Bus<B>,
    target: &Target,
    workload: Workload,
    args: &BenchArgs,
) -> anyhow::Result<Summary> {
    let payload_bytes = workload.payload_bytes;
    let bar = progress::bar(args.events, "published");
    let published = workload::publish(
        bus,
        target,
        workload.batches,
        args.publishers,
        args.rate,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let samples = published
        .batches
        .iter()
        .flat_map(|&(latency, size)| std::iter::repeat_n(latency, size))
        .collect();
    let seconds = published.elapsed.as_secs_f64();
    drop(published.spent);
    let summary = summary(args, "publish", "publish call", payload_bytes, seconds);
    Ok(Summary {
        publish_seconds: seconds,
        ..summary
    }
    .with_latencies(&Latencies::new(samples)))
}

async fn e2e_mode<B: Backend>(
    bus: &Bus<B>,
    target: &Target,
    workload: Workload,
    warmup: Workload,
    args: &BenchArgs,
) -> anyhow::Result<Summary> {
    let names = e2e::subscription_names(args.subscriptions);
    let recorder = Arc::new(e2e::Recorder::default());
    let worker = e2e::worker(bus, &names, ordered(args), &recorder)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let measured = async {
        e2e::wait_ready(bus.backend(), &names).await?;
        if args.warmup > 0 {
            let batches = warmup.batches;
            measure_e2e(bus, target, batches, args.warmup, args, &names, &recorder).await?;
            recorder.reset();
        }
        measure_e2e(
            bus,
            target,
            workload.batches,
            args.events,
            args,
            &names,
            &recorder,
        )
        .await
    }
    .await;
    let _ = stop_tx.send(true);
    running.await??;
    let (seconds, publish_seconds) = measured?;
    let latency = "handler start - publish";
    let summary = summary(args, "e2e", latency, workload.payload_bytes, seconds);
    let samples = recorder.take();
    Ok(Summary {
        publish_seconds,
        deliveries: samples.len() as u64,
        ..summary
    }
    .with_latencies(&Latencies::new(samples)))
}

/// Publishes `events` while the subscriptions deliver; returns the seconds until everything
/// settled and the seconds publishing took.
async fn measure_e2e<B: Backend>(
    bus: &Bus<B>,
    target: &Target,
    batches: Vec<Vec<edubus_core::Envelope>>,
    events: u64,
    args: &BenchArgs,
    names: &[String],
    recorder: &e2e::Recorder,
) -> anyhow::Result<(f64, f64)> {
    let expected = events * names.len() as u64;
    let bar = progress::bar(expected, "delivered");
    let quiet = ProgressBar::hidden();
    let start = tokio::time::Instant::now();
    let (published, settled) = tokio::join!(
        workload::publish(bus, target, batches, args.publishers, args.rate, &quiet),
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
        backend: args.backend.name(),
        mode,
        latency,
        events: args.events,
        warmup: args.warmup,
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
        prefix: None,
        schema: None,
        raw: None,
    }
}
