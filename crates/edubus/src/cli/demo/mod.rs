//! `edubus demo`: a simulated school driven through the public HTTP API with every reference
//! flow running, a closing summary read back from the deployment, then the deployment keeps
//! serving so its read models, health and traces can be explored.
//!
//! The school (students and guardians, homerooms and class sessions, a term of school days) is
//! drawn from `--seed`. Families apply and staff approve, the enrollment flow provisions the
//! students; then every school day brings an attendance mark per student, grades, progress
//! through bought courses, a few refunds and, mid-term, an essay assignment per homeroom.
//! `--faults` injects handler failures and kills the worker mid-term.

mod client;
mod drive;
mod fleet;
mod ledger;
mod school;
mod summary;
mod term;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use edubus_catalog::Catalog;
use edubus_core::{Event, ReadQuery};
use edubus_events::EnrollmentSubmitted;
use edubus_flows::{FlowBackend, FlowConfig, SUBSCRIPTIONS};
use edubus_runtime::{Bus, shutdown_signal};
use tokio::sync::watch;

use self::client::Publisher;
use self::fleet::{Fleet, Latency};
use self::ledger::Ledger;
use self::school::Ids;
use self::summary::Summary;
use super::data::{self, DataArg};
use super::serve::{Shutdown, armed, gateway, init_logging};
use super::{CatalogArg, outln, progress, source};

/// Arguments of `edubus demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Students applying to the school.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    students: u32,
    /// School days in the term.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    days: u32,
    /// Seed of the simulated school: the same seed draws the same school.
    #[arg(long, default_value_t = 7400)]
    seed: u64,
    /// Highest publish rate, in events per second [default: as fast as the gateway accepts].
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Distinct days absent at which a student's absence is escalated.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    threshold: u32,
    /// Inject handler failures (3 % of first attempts fail, 0.2 % of deliveries always fail)
    /// and kill the worker mid-term, to show retries, dead letters and recovery.
    #[arg(long)]
    faults: bool,
    /// Exit after the summary instead of serving.
    #[arg(long)]
    exit: bool,
    /// The summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Address of the HTTP gateway the school publishes to and that keeps serving.
    /// [default: `[http] listen` of the configuration, else 127.0.0.1:7400]
    #[arg(long, env = "EDUBUS_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// API token the school presents when the gateway has tokens configured.
    #[arg(long, env = "EDUBUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    catalog: CatalogArg,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a positive number of events per second"
        )),
    }
}

/// Runs `edubus demo`.
pub async fn run(args: DemoArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    // Errors only by default: the dead letters a demo provokes are in its summary.
    init_logging(tracing_subscriber::filter::LevelFilter::ERROR);
    let catalog = source::load(args.catalog.catalog.as_deref())?;
    let dir = args.data.clone().or(data);
    if !data::config().http.tokens.is_empty() && args.token.is_none() {
        bail!(
            "the gateway requires API tokens (`[[http.token]]` in the configuration): pass one \
             that may publish the demo's events with --token or EDUBUS_TOKEN"
        );
    }
    // Armed before anything is printed: a signal sent while serving is a graceful stop.
    let signal = armed(Box::pin(shutdown_signal())).await;
    data::with_backend!(&dir, &catalog, relay = true, |backend| demo(
        backend, &catalog, &dir, &args, signal
    ))
}

async fn demo<B: FlowBackend>(
    backend: B,
    catalog: &Catalog,
    dir: &Path,
    args: &DemoArgs,
    signal: Shutdown,
) -> anyhow::Result<ExitCode> {
    backend
        .prepare()
        .await
        .context("cannot create the flows' read-model tables")?;
    let ids = Ids::new(args.seed, next_school(&backend, args.seed).await?);
    let start = backend.head().await?;
    let bus = Bus::new(backend.clone(), catalog, "edubus-flows")?;
    let latency = Arc::new(Latency::default());
    let (gateway, listener) =
        gateway(&bus, args.listen.unwrap_or(data::config().http.listen)).await?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let http = tokio::spawn(gateway.serve(listener, fleet::stopped(stop_rx)));
    let fleet = Fleet::start(bus, flow_config(args, &latency), args.faults)?;
    let permanent = args.faults.then_some(fleet::PERMANENT);
    let mut run = drive::Run {
        backend,
        ledger: Ledger::new(start, permanent),
        fleet,
        publisher: Publisher::new(addr, args.token.clone(), args.rate)?,
        quiet: args.json || !progress::enabled(),
    };
    let url = client::base_url(addr);
    if !args.json {
        outln!(
            "edubus demo: school {} of seed {} on {}",
            ids.school(),
            args.seed,
            data::describe(dir)
        );
        outln!("http: {url}");
        outln!("flows: {}", SUBSCRIPTIONS.join(", "));
    }
    let mut signal = signal;
    let outcome = tokio::select! {
        outcome = drive::simulate(&mut run, ids, args, &latency, dir, &url) => Some(outcome),
        () = &mut signal => None,
    };
    let served = match &outcome {
        Some(Ok(summary)) => finish(summary, args, signal).await,
        Some(Err(_)) => Ok(()),
        None => {
            eprintln!("interrupted before the summary: stopping");
            Ok(())
        }
    };
    let _ = stop.send(true);
    let stopped = run.fleet.stop().await;
    let _ = http.await;
    let Some(outcome) = outcome else {
        stopped?;
        return Ok(ExitCode::from(130));
    };
    outcome?;
    served?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

fn flow_config(args: &DemoArgs, latency: &Arc<Latency>) -> FlowConfig {
    let faults = match args.faults {
        true => edubus_flows::Faults {
            transient: fleet::TRANSIENT,
            permanent: fleet::PERMANENT,
        },
        false => edubus_flows::Faults::default(),
    };
    FlowConfig {
        absence_threshold: args.threshold,
        faults,
        observer: Some(latency.observer()),
        ..FlowConfig::default()
    }
}

/// Prints the summary and where to look, then serves until a signal unless `--exit`.
async fn finish(summary: &Summary, args: &DemoArgs, signal: Shutdown) -> anyhow::Result<()> {
    summary.print(args.json)?;
    if !args.json {
        summary.print_look();
    }
    if args.exit {
        return Ok(());
    }
    if !args.json {
        outln!("");
        outln!("serving at {}; SIGTERM or Ctrl-C stops", summary.look.http);
    }
    signal.await;
    if !args.json {
        outln!("shutting down: draining in-flight work");
    }
    Ok(())
}

/// The number of the next demo school of `seed` in this data: the first whose first
/// application is not stored yet, so running the demo again adds a new school.
async fn next_school<B: FlowBackend>(backend: &B, seed: u64) -> anyhow::Result<u32> {
    for school in 1..=10_000 {
        let first = school::application_id(Ids::new(seed, school), 0);
        let found = backend
            .read(ReadQuery {
                key: Some(first.to_string()),
                types: vec![EnrollmentSubmitted::NAME.to_owned()],
                limit: 1,
                ..ReadQuery::default()
            })
            .await?;
        if found.is_empty() {
            return Ok(school);
        }
    }
    bail!("this data already holds 10000 demo schools of seed {seed}: use another --seed")
}
