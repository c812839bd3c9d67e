//! `edubus token hash`: the hash to configure for an API token (`[[http.token]] hash = ...`).

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use clap::Subcommand;

use super::outln;

/// API token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Read a token secret from standard input and print its `sha256:<hex>` hash.
    Hash,
}

/// Runs one token subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Hash => {
            if std::io::stdin().is_terminal() {
                eprintln!("token secret (end with Enter):");
            }
            let mut secret = String::new();
            std::io::stdin().lock().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                eprintln!("error: the token secret is empty");
                return Ok(ExitCode::from(2));
            }
            outln!("{}", edubus_http::token::hash(secret));
            Ok(ExitCode::SUCCESS)
        }
    }
}
