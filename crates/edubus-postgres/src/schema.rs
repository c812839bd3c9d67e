//! Versioned migrations, recorded in `edubus_migrations` and applied under an advisory lock.

use edubus_core::{Error, Result};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::Db;

/// Migrations by version, applied in order in one transaction.
const MIGRATIONS: &[(u32, &str)] = &[(1, MIGRATION_1)];

/// The log with its append-only guard, the outbox, relay partitions, inbox, failures, audit.
///
/// `events.body` keeps the envelope's exact JSON text (`get` returns what was appended, and
/// idempotency compares it); `events.envelope` is the same as JSONB for queries in SQL.
const MIGRATION_1: &str = "
CREATE FUNCTION edubus_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'EB001';
END $$;

CREATE FUNCTION edubus_abort(message text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', message USING ERRCODE = 'EB002';
END $$;

CREATE TABLE events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    type text NOT NULL,
    version integer NOT NULL,
    stream text NOT NULL,
    partition integer NOT NULL,
    key text NOT NULL,
    correlation_id text NOT NULL,
    causation_id text,
    tenant_id text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    envelope jsonb NOT NULL,
    body text NOT NULL
);
CREATE INDEX events_correlation ON events (correlation_id, position);
CREATE INDEX events_key ON events (key, position);
CREATE INDEX events_type_time ON events (type, recorded_at);
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION edubus_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION edubus_append_only();

CREATE TABLE outbox (
    position bigint PRIMARY KEY,
    partition integer NOT NULL
);
CREATE INDEX outbox_partition ON outbox (partition, position);
CREATE TABLE relay_partitions (partition integer PRIMARY KEY);

CREATE TABLE inbox (
    subscription text NOT NULL,
    event_id text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, event_id)
);

CREATE TABLE failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text NOT NULL,
    position bigint NOT NULL,
    number bigint NOT NULL,
    at timestamptz NOT NULL,
    consumer text NOT NULL,
    error text NOT NULL
);
CREATE INDEX failures_delivery ON failures (subscription, position, id);

CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    detail jsonb NOT NULL
);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION edubus_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION edubus_append_only();
";

/// Applies the missing migrations and seeds the relay partitions; returns the versions applied.
///
/// A transaction-scoped advisory lock per schema makes concurrent starts wait for each other.
pub(crate) async fn migrate(client: &mut Client, partitions: u32) -> Result<Vec<u32>> {
    let tx = client.transaction().await.db()?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('edubus.migrate.' || current_schema()));
         CREATE TABLE IF NOT EXISTS edubus_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .db()?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM edubus_migrations", &[])
        .await
        .db()?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        if done.contains(&v) {
            continue;
        }
        tx.batch_execute(sql).await.db()?;
        tx.query_typed(
            "INSERT INTO edubus_migrations (version) VALUES ($1)",
            &[(&v, Type::INT4)],
        )
        .await
        .db()?;
        applied.push(version);
    }
    seed_partitions(&tx, partitions).await?;
    tx.commit().await.db()?;
    Ok(applied)
}

/// Fills `relay_partitions` on first start; a later start must use the same partition count,
/// or outbox rows of a partition no relay locks would never be relayed.
async fn seed_partitions(tx: &tokio_postgres::Transaction<'_>, partitions: u32) -> Result<()> {
    let row = tx
        .query_one("SELECT count(*) FROM relay_partitions", &[])
        .await
        .db()?;
    let stored: i64 = row.get(0);
    if stored == 0 {
        let n = i32::try_from(partitions).unwrap_or(i32::MAX);
        tx.query_typed(
            "INSERT INTO relay_partitions SELECT generate_series(0, $1 - 1)",
            &[(&n, Type::INT4)],
        )
        .await
        .db()?;
    } else if stored != i64::from(partitions) {
        return Err(Error::invalid(format!(
            "the event store was created with {stored} partitions, the configuration says \
             {partitions}: they must match"
        )));
    }
    Ok(())
}
