//! Command definitions and dispatch.

mod catalog;
mod envelope;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// edubus: the event backbone for education platforms.
#[derive(Debug, Parser)]
#[command(name = "edubus", version, about, propagate_version = true)]
pub struct Cli {
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

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Catalog(cmd) => catalog::run(cmd),
        Command::Envelope(cmd) => envelope::run(cmd),
    }
}
