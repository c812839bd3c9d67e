//! `edubus serve`: the configured deployment with the workers this binary registers (the
//! reference flows and the webhooks) and the HTTP gateway, until SIGTERM or SIGINT; then a
//! graceful drain and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use edubus_catalog::Catalog;
use edubus_core::SubscriptionStats;
use edubus_flows::FlowBackend;
use edubus_http::Gateway;
use edubus_runtime::{Bus, shutdown_signal};
use jiff::Timestamp;
use serde_json::json;
use tokio::net::TcpListener;
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
    /// Address of the HTTP gateway, or `off` to run without it.
    /// [default: `[http] listen` of the configuration, else 127.0.0.1:7400]
    #[arg(long, env = "EDUBUS_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    listen: Option<Listen>,
    /// Run without the reference flows (as `[flows] enabled = false`).
    #[arg(long)]
    no_flows: bool,
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    catalog: CatalogArg,
}

/// A shutdown signal, as `serve` and `demo` wait on it.
pub(super) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the HTTP gateway listens; `None` when it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|e| format!("expected `off` or an address such as 127.0.0.1:7400: {e}"))
}

/// Runs `edubus serve`.
pub async fn run(args: ServeArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    init_logging(tracing_subscriber::filter::LevelFilter::INFO);
    let catalog = source::load(args.catalog.catalog.as_deref())?;
    let dir = args.data.clone().or(data);
    // Armed before anything is printed: a signal sent once `ready` shows is a graceful stop.
    let signal = armed(Box::pin(shutdown_signal())).await;
    data::with_backend!(&dir, &catalog, relay = true, |backend| {
        serve(backend, catalog, dir.clone(), args, signal)
    })
}

/// Logs of the runtime (dead letters, lost leases) on stderr at `EDUBUS_LOG`'s level, else
/// at `default`.
pub(super) fn init_logging(default: tracing_subscriber::filter::LevelFilter) {
    let level = std::env::var("EDUBUS_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Polls the shutdown future once so its signal handlers are installed now, not at the first
/// await of the serving loop.
pub(super) async fn armed(mut signal: Shutdown) -> Shutdown {
    let fired = std::future::poll_fn(|cx| Poll::Ready(signal.as_mut().poll(cx).is_ready())).await;
    if fired {
        Box::pin(std::future::ready(()))
    } else {
        signal
    }
}

async fn serve<B: FlowBackend>(
    backend: B,
    catalog: Catalog,
    dir: PathBuf,
    args: ServeArgs,
    signal: Shutdown,
) -> anyhow::Result<ExitCode> {
    let bus = Bus::new(backend.clone(), &catalog, "edubus-serve")?;
    let flows = match args.no_flows {
        true => None,
        false => data::config().flows.flow_config(),
    };
    if flows.is_some() {
        backend.prepare().await?;
    }
    let settings = Settings {
        retention: args.retention.or(data::config().retention),
        webhooks: data::config().webhooks.clone(),
        flows,
    };
    let registry = workers::registry(&bus, &settings)?;
    let listen = args
        .listen
        .unwrap_or(Listen(Some(data::config().http.listen)));
    let http = match listen.0 {
        Some(addr) => Some(gateway(&bus, addr).await?),
        None => None,
    };
    let url = http.as_ref().map(|(_, l)| l.local_addr()).transpose()?;
    banner(&dir, &catalog, &registry, url, args.json)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = spawn(registry, &backend, &stop_rx, args.health_every, args.json)?;
    if let Some((gateway, listener)) = http {
        let stop = stopped_when(stop_rx.clone());
        tasks.spawn(async move {
            gateway
                .serve(listener, stop)
                .await
                .map_err(|e| edubus_core::Error::unavailable("the HTTP gateway failed", e))
        });
    }
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

/// The HTTP gateway over `bus`, bound to `addr` (binding now, so a busy port fails start-up).
pub(super) async fn gateway<B: FlowBackend>(
    bus: &Bus<B>,
    addr: SocketAddr,
) -> anyhow::Result<(Gateway, TcpListener)> {
    let config = data::config().http.clone().with_listen(addr);
    let gateway = Gateway::new(bus.clone(), config)?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e}\n  is another edubus serving there? pick another \
             address with --listen ADDR (--listen 127.0.0.1:0 takes any free port)"
        )
    })?;
    Ok((gateway, listener))
}

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
    http: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<()> {
    let http = http.map(|addr| format!("http://{addr}"));
    let db = data::describe(dir);
    let maintenance: Vec<String> = registry.maintenance.iter().map(|m| m.describe()).collect();
    if json {
        let out = json!({
            "event": "started", "data": db, "catalog_events": catalog.names().len(),
            "subscriptions": registry.subscriptions, "flows": registry.flows,
            "maintenance": maintenance, "http": http,
        });
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    outln!("edubus serve: data in {db}");
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
        "flows: {}",
        match registry.flows {
            true => "on (`edubus flows` reads their read models)",
            false => "off (--no-flows or [flows] enabled = false)",
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
    outln!("http: {}", http.as_deref().unwrap_or("off (--listen off)"));
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
