//! The embedded deployment: a data directory holding one SQLite file, opened on demand.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use edubus_core::{DeadLetterQueue, EventStore, Replay, Transport};
use edubus_sqlite::{SqliteBackend, SqliteConfig};

/// Everything the data commands need of a backend; the embedded SQLite one has it all.
pub trait Backend: EventStore + Transport + DeadLetterQueue + Replay + Clone {}

impl<T: EventStore + Transport + DeadLetterQueue + Replay + Clone> Backend for T {}

/// `--data DIR` after a command name; overrides the one before it (and `EDUBUS_DATA`).
#[derive(Debug, Clone, clap::Args)]
pub struct DataArg {
    /// Data directory of the embedded deployment [default: `edubus --data`, `EDUBUS_DATA` or
    /// ./edubus-data].
    #[arg(
        long = "data",
        visible_alias = "data-dir",
        value_name = "DIR",
        global = true
    )]
    data: Option<PathBuf>,
}

impl DataArg {
    /// The directory to use: this argument, else the one given before the command.
    pub fn or(self, global: PathBuf) -> PathBuf {
        self.data.unwrap_or(global)
    }
}

/// The database file of a data directory.
pub fn db_file(dir: &Path) -> PathBuf {
    SqliteConfig::in_dir(dir).path
}

/// Opens (creating on first use) the embedded deployment in `dir`.
pub async fn open(dir: &Path) -> anyhow::Result<SqliteBackend> {
    SqliteBackend::open(SqliteConfig::in_dir(dir))
        .await
        .with_context(|| format!("cannot open the edubus data in {}", dir.display()))
}

/// Opens the deployment in `dir`, runs `command` on it and closes it, whatever the outcome.
pub async fn with_backend<F, Fut>(dir: &Path, command: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(SqliteBackend) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let backend = open(dir).await?;
    let result = command(backend.clone()).await;
    close(backend).await;
    result
}

/// Closes the backend: the writer commits what is queued and the file is released.
pub async fn close(backend: SqliteBackend) {
    backend.close().await;
}

/// Checks that `name` is a registered subscription; otherwise says which exist and returns
/// exit code 2.
pub async fn require_subscription<B: Transport>(
    backend: &B,
    name: &str,
) -> anyhow::Result<Result<(), ExitCode>> {
    let known: Vec<String> = backend
        .subscriptions()
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    if known.iter().any(|k| k == name) {
        return Ok(Ok(()));
    }
    eprintln!("error: unknown subscription `{name}`");
    match known.is_empty() {
        true => eprintln!("  no subscription is registered yet (`edubus serve` registers them)"),
        false => eprintln!("  subscriptions: {}", known.join(", ")),
    }
    Ok(Err(ExitCode::from(2)))
}
