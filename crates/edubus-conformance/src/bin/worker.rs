//! `edubus-conformance-worker`: a scripted worker process for the multi-process cases of the
//! conformance suite. It runs one subscription until SIGTERM/SIGINT (exit 0), is killed, or
//! exits with code 86 when told to crash (`--exit-after`).

use std::sync::atomic::Ordering;

use anyhow::bail;
use clap::Parser;
use edubus_conformance::process::{WorkerArgs, serve};
use edubus_conformance::production::ProductionHarness;
use edubus_conformance::sqlite::SqliteHarness;

fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    // Runtime warnings on stderr (shown with EDUBUS_CONFORMANCE_VERBOSE); EDUBUS_LOG sets the level.
    let level = std::env::var("EDUBUS_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = runtime.block_on(async {
        match args.backend.split_once(':') {
            Some(("sqlite", _)) => serve(SqliteHarness::default(), args).await,
            Some(("production", _)) => serve(ProductionHarness::default(), args).await,
            _ => bail!("unknown backend spec `{}`", args.backend),
        }
    })?;
    eprintln!(
        "edubus-conformance-worker: handled {}, failed {}, duplicates {}",
        stats.handled.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
    );
    Ok(())
}
