//! The `edubus` command line.

mod cli;
mod config;
mod workers;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the writer thread and envelope (de)serialization
/// allocate and free many short buffers, where glibc's consolidation showed up in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
