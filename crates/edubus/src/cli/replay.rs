//! `edubus replay`: redelivers stored events to one subscription, marked `replay=true`.

use std::path::PathBuf;
use std::process::ExitCode;

use edubus_core::Replay;
use serde_json::json;

use super::common::{self, Start};
use super::data::{self, Backend, DataArg};
use super::{outln, progress};

/// Arguments of `edubus replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The subscription to redeliver to; no other subscription sees the replay.
    #[arg(long, value_name = "S")]
    subscription: String,
    /// First position to replay, or an RFC 3339 time: events recorded at or after it.
    #[arg(long, value_name = "POSITION|TIME", value_parser = common::parse_from)]
    from: Start,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArg,
}

/// Runs `edubus replay`.
pub async fn run(args: ReplayArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let dir = args.data.clone().or(data);
    data::with_backend!(&dir, edubus_events::catalog(), |backend| replay(
        backend, args
    ))
}

async fn replay<B: Backend>(backend: B, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Err(code) = data::require_subscription(&backend, &args.subscription).await? {
        return Ok(code);
    }
    let (from, since) = match args.from {
        Start::Position(p) => (p, None),
        Start::Time(t) => (0, Some(t)),
    };
    let spinner = progress::spinner(&format!("queueing events for {}", args.subscription));
    let queued = Replay::replay(&backend, &args.subscription, from, since, &common::actor()).await;
    spinner.finish_and_clear();
    let queued = match queued {
        Ok(n) => n,
        Err(err) => return Ok(common::fail(&err)),
    };
    if args.json {
        let out = json!({ "subscription": args.subscription, "queued": queued });
        outln!("{}", serde_json::to_string(&out)?);
    } else {
        outln!(
            "queued {queued} event(s) for redelivery to {} (marked replay=true)",
            args.subscription
        );
    }
    Ok(ExitCode::SUCCESS)
}
