//! The deployment a command runs on: the embedded one (a data directory holding one SQLite
//! file, opened on demand) or, when PostgreSQL and Redis are configured, the production one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context as _;
use edubus_catalog::Catalog;
use edubus_core::Transport;
use edubus_postgres::{PgConfig, RelayOptions};
use edubus_redis::{Production, RedisConfig};
use edubus_sqlite::{SqliteBackend, SqliteConfig};

use crate::config::{Config, redact_url};

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Sets the configuration every command of this process uses.
pub fn configure(config: Config) {
    let _ = CONFIG.set(config);
}

/// The configuration of this process (the defaults if none was set).
pub fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

/// An opened deployment.
pub enum Opened {
    /// The embedded SQLite deployment.
    Embedded(SqliteBackend),
    /// PostgreSQL + Redis Streams.
    Production(Production),
}

/// Opens the configured deployment: production when its servers are configured (with a relay
/// in this process when `relay` is set), else the embedded one in `dir`.
pub async fn open_deployment(dir: &Path, catalog: &Catalog, relay: bool) -> anyhow::Result<Opened> {
    let config = config();
    let Some(urls) = config.production() else {
        return Ok(Opened::Embedded(open(dir).await?));
    };
    let pg = PgConfig::new(&urls.postgres).with_partitions(config.partitions);
    let redis = RedisConfig::new(&urls.redis)
        .with_prefix(&config.redis_prefix)
        .with_partitions(config.partitions)
        .with_routes(routes(catalog));
    let relay = relay.then(RelayOptions::default);
    let backend = Production::open(pg, redis, relay).await.with_context(|| {
        format!(
            "cannot open the production deployment (PostgreSQL {}, Redis {})",
            redact_url(&urls.postgres),
            redact_url(&urls.redis)
        )
    })?;
    Ok(Opened::Production(backend))
}

/// The stream of every event type of `catalog`.
pub fn routes(catalog: &Catalog) -> BTreeMap<String, String> {
    catalog
        .events()
        .map(|e| (e.name.clone(), e.topic.clone()))
        .collect()
}

/// Where the configured deployment keeps its data, for people.
pub fn describe(dir: &Path) -> String {
    match config().production() {
        Some(urls) => format!(
            "PostgreSQL {} + Redis {}",
            redact_url(&urls.postgres),
            redact_url(&urls.redis)
        ),
        None => {
            let db = db_file(dir);
            std::path::absolute(&db).unwrap_or(db).display().to_string()
        }
    }
}

/// Opens the configured deployment, binds it to `$backend` for `$body` (a future) and closes
/// it afterwards, whatever the outcome: the same command code runs on either deployment.
macro_rules! with_backend {
    ($dir:expr, $catalog:expr, relay = $relay:expr, |$backend:ident| $body:expr) => {
        match $crate::cli::data::open_deployment($dir, $catalog, $relay).await? {
            $crate::cli::data::Opened::Embedded(embedded) => {
                let $backend = embedded.clone();
                let result = $body.await;
                $crate::cli::data::close(embedded).await;
                result
            }
            $crate::cli::data::Opened::Production($backend) => $body.await,
        }
    };
    ($dir:expr, $catalog:expr, |$backend:ident| $body:expr) => {
        $crate::cli::data::with_backend!($dir, $catalog, relay = false, |$backend| $body)
    };
}
pub(crate) use with_backend;

pub use edubus_core::Backend;

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

/// Arguments of `edubus migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    data: DataArg,
}

/// Runs `edubus migrate`: applies what is missing and says what it applied.
pub async fn migrate(args: MigrateArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let dir = args.data.or(data);
    let where_ = describe(&dir);
    match open_deployment(&dir, edubus_events::catalog(), false).await? {
        Opened::Embedded(backend) => {
            close(backend).await;
            crate::cli::outln!("the embedded store in {where_} is up to date");
        }
        Opened::Production(_) => {
            crate::cli::outln!("the PostgreSQL schema of {where_} is up to date");
        }
    }
    Ok(ExitCode::SUCCESS)
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
