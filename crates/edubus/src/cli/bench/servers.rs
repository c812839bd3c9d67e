//! The servers of `--backend redis|production`, taken from the configuration: each run gets
//! its own Redis key prefix and PostgreSQL schema, removed afterwards unless `--keep`.

use anyhow::{Context as _, bail};
use edubus_postgres::{PgConfig, RelayOptions};
use edubus_redis::{Production, RedisConfig};
use tokio_postgres::NoTls;

use crate::cli::data;
use crate::config::redact_url;

/// A production deployment made for one bench run.
pub struct Servers {
    /// PostgreSQL store + Redis transport (with a relay when one was asked for).
    pub backend: Production,
    /// Prefix of this run's Redis keys (`bench-<run>`).
    pub prefix: String,
    /// This run's PostgreSQL schema (`bench_<run>`).
    pub schema: String,
    /// The configured servers, passwords redacted.
    pub describe: String,
    admin: tokio_postgres::Client,
}

/// The configured server URLs, or an error that says what to set.
pub fn urls() -> anyhow::Result<(String, String)> {
    let config = data::config();
    match (&config.postgres_url, &config.redis_url) {
        (Some(pg), Some(redis)) => Ok((pg.clone(), redis.clone())),
        (pg, redis) => {
            let missing: Vec<&str> = [
                pg.is_none().then_some("EDUBUS_POSTGRES_URL (postgres_url)"),
                redis.is_none().then_some("EDUBUS_REDIS_URL (redis_url)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            bail!(
                "benchmarking Redis or the production deployment needs PostgreSQL and Redis: set {} \
                 in the environment or edubus.toml",
                missing.join(" and ")
            )
        }
    }
}

/// Creates a fresh schema and key prefix on the configured servers and opens the deployment
/// on them, with a relay in this process when `relay` is set.
pub async fn open(relay: Option<RelayOptions>) -> anyhow::Result<Servers> {
    let (pg_url, redis_url) = urls()?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    // The last hex digits of a v7 id are random; the first are the clock.
    let run = &run[run.len() - 10..];
    let (prefix, schema) = (format!("bench-{run}"), format!("bench_{run}"));
    let describe = format!(
        "PostgreSQL {} schema {schema}, Redis {} prefix {prefix}",
        redact_url(&pg_url),
        redact_url(&redis_url)
    );
    let admin = connect(&pg_url).await?;
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .with_context(|| {
            format!(
                "cannot create the schema {schema} on {}",
                redact_url(&pg_url)
            )
        })?;
    let config = data::config();
    let pg = PgConfig::new(with_search_path(&pg_url, &schema)).with_partitions(config.partitions);
    let redis = RedisConfig::new(&redis_url)
        .with_prefix(&prefix)
        .with_partitions(config.partitions)
        .with_routes(data::routes(edubus_events::catalog()));
    let backend = match Production::open(pg, redis, relay).await {
        Ok(backend) => backend,
        Err(e) => {
            if let Err(dropped) = drop_schema(&admin, &schema).await {
                tracing::warn!(error = %dropped, "the bench schema was left behind");
            }
            return Err(e)
                .with_context(|| format!("cannot open the bench deployment ({describe})"));
        }
    };
    Ok(Servers {
        backend,
        prefix,
        schema,
        describe,
        admin,
    })
}

impl Servers {
    /// Deletes this run's Redis keys and drops its schema, unless `keep`.
    pub async fn close(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            return Ok(());
        }
        let redis = self.backend.redis().clone();
        // Stops the relay (if any) before its tables go.
        drop(self.backend);
        redis
            .delete_all()
            .await
            .with_context(|| format!("cannot delete the Redis keys {}:*", self.prefix))?;
        drop_schema(&self.admin, &self.schema).await
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL {}", redact_url(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn drop_schema(admin: &tokio_postgres::Client, schema: &str) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .with_context(|| format!("cannot drop the schema {schema}"))
}

/// `url` with its sessions' `search_path` set to `schema` (URL or key-value form).
fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}")
    } else {
        format!("{url} options='-c search_path={schema}'")
    }
}

#[cfg(test)]
mod tests {
    use super::with_search_path;

    #[test]
    fn the_schema_is_set_in_either_url_form() {
        assert_eq!(
            with_search_path("postgres://u@h/db", "bench_1"),
            "postgres://u@h/db?options=-c%20search_path%3Dbench_1"
        );
        assert_eq!(
            with_search_path("postgresql://h/db?sslmode=disable", "bench_1"),
            "postgresql://h/db?sslmode=disable&options=-c%20search_path%3Dbench_1"
        );
        assert_eq!(
            with_search_path("host=h dbname=db", "bench_1"),
            "host=h dbname=db options='-c search_path=bench_1'"
        );
    }
}
