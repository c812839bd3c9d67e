//! Command definitions and dispatch.

mod bench;
mod catalog;
pub(crate) mod common;
mod data;
mod demo;
mod dlq;
mod envelope;
mod flows;
mod progress;
mod publish;
mod replay;
mod serve;
mod source;
mod tail;
mod token;
mod trace;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use comfy_table::Table;

/// edubus: the event backbone for education platforms.
#[derive(Debug, Parser)]
#[command(name = "edubus", version, about, propagate_version = true)]
pub struct Cli {
    /// Data directory of the embedded deployment (created on first use). Every data command
    /// also takes it after the command name, except `publish`, whose `--data` is the payload.
    #[arg(
        long = "data",
        env = "EDUBUS_DATA",
        value_name = "DIR",
        default_value = "edubus-data"
    )]
    data: PathBuf,
    /// Configuration file [default: ./edubus.toml when it exists]; `EDUBUS_*` variables
    /// override it. With `postgres_url` and `redis_url` set, commands run on the production
    /// deployment.
    #[arg(long, env = "EDUBUS_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, check, export and compare the event catalog.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Check CloudEvents envelopes against the catalog.
    #[command(subcommand)]
    Envelope(envelope::EnvelopeCommand),
    /// Run the deployment (embedded, or production when configured): the registered workers
    /// and the HTTP gateway, until SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
    /// Validate one event against the catalog and append it to the log.
    Publish(publish::PublishArgs),
    /// Print stored events; `--follow` waits for new ones.
    Tail(tail::TailArgs),
    /// The causation tree of one correlation id, with what every subscription did.
    Trace(trace::TraceArgs),
    /// List, inspect, replay and purge dead letters.
    Dlq(dlq::DlqArgs),
    /// Redeliver stored events to one subscription, marked as a replay.
    Replay(replay::ReplayArgs),
    /// Runs a simulated school on every reference flow, then keeps serving.
    Demo(demo::DemoArgs),
    /// Reads the reference flows' read models; staff actions such as approving enrollments.
    Flows(flows::FlowsArgs),
    /// Load generator: publish (and deliver) events and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Apply the event store's schema migrations (the embedded one, or PostgreSQL when
    /// configured); servers also apply them at start.
    Migrate(data::MigrateArgs),
    /// API tokens of the HTTP gateway.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// Where a command reads the catalog from.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArg {
    /// Catalog directory to use instead of the one built into this binary.
    #[arg(long, env = "EDUBUS_CATALOG", value_name = "DIR")]
    catalog: Option<PathBuf>,
}

/// `println!` that ends the process quietly when stdout is closed (`edubus ... | head`).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_line(format_args!($($arg)*)) };
}
pub(crate) use outln;

/// Writes one line to stdout; a closed pipe ends the process with success, as `cat` does.
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Prints a table without the padding comfy-table leaves after the last column.
pub(crate) fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        outln!("{}", line.trim_end());
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data = cli.data;
    if !matches!(
        cli.command,
        Command::Catalog(_) | Command::Envelope(_) | Command::Token(_)
    ) {
        data::configure(crate::config::Config::load(cli.config.as_deref())?);
    }
    match cli.command {
        Command::Catalog(cmd) => catalog::run(cmd),
        Command::Envelope(cmd) => envelope::run(cmd),
        Command::Serve(args) => block_on(serve::run(args, data)),
        Command::Publish(args) => block_on(publish::run(args, data)),
        Command::Tail(args) => block_on(tail::run(args, data)),
        Command::Trace(args) => block_on(trace::run(args, data)),
        Command::Dlq(args) => block_on(dlq::run(args, data)),
        Command::Replay(args) => block_on(replay::run(args, data)),
        Command::Demo(args) => block_on(demo::run(args, data)),
        Command::Flows(args) => block_on(flows::run(args, data)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Migrate(args) => block_on(data::migrate(args, data)),
        Command::Token(cmd) => token::run(cmd),
    }
}

/// Runs an asynchronous command on a multi-threaded tokio runtime built for it; the catalog
/// commands stay synchronous and never start one.
fn block_on(command: impl Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(command)
}
