//! Versioned migrations, recorded in `edubus_migrations` and applied under an advisory lock.

use edubus_core::{Error, Result};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::Db;

/// Migrations by version, applied in order in one transaction.
const MIGRATIONS: &[(u32, &str)] = &[(1, MIGRATION_1), (2, MIGRATION_2)];

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

/// The relay keeps a cursor per partition instead of an outbox row per event.
///
/// Within a partition positions commit in ascending order (the append lock), so the events of
/// a partition above its `relayed_upto` are exactly the ones not relayed yet: an append writes
/// no second row and a relay pass updates one row per partition instead of deleting one per
/// event. The cursor of each partition starts below its oldest outbox row, or at its newest
/// event when everything was relayed.
const MIGRATION_2: &str = "
ALTER TABLE relay_partitions ADD COLUMN relayed_upto bigint NOT NULL DEFAULT 0;
CREATE INDEX events_partition ON events (partition, position);
UPDATE relay_partitions r SET relayed_upto = COALESCE(
    (SELECT min(o.position) - 1 FROM outbox o WHERE o.partition = r.partition),
    (SELECT max(e.position) FROM events e WHERE e.partition = r.partition),
    0);
DROP TABLE outbox;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store at migration 1 with partly relayed partitions: migration 2 starts each cursor
    /// below its oldest outbox row, or at its newest event when nothing was left to relay.
    #[tokio::test]
    async fn migration_2_turns_the_outbox_into_cursors() {
        let schema = edubus_testsupport::postgres()
            .schema("migration_2_cursors")
            .await;
        let mut client = schema.connect().await;
        client
            .batch_execute(&format!(
                "CREATE TABLE edubus_migrations (version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now());
                 {MIGRATION_1}
                 INSERT INTO edubus_migrations (version) VALUES (1);
                 INSERT INTO relay_partitions SELECT generate_series(0, 2);
                 INSERT INTO events (id, type, version, stream, partition, key, correlation_id,
                     envelope, body)
                 SELECT 'e' || n, 't', 1, 's', n % 2, 'k', 'c', '{{}}', '{{}}'
                 FROM generate_series(1, 10) AS n;
                 -- Partition 1 (odd positions) relayed up to 5; partition 0 fully relayed.
                 INSERT INTO outbox SELECT position, partition FROM events
                 WHERE partition = 1 AND position > 5;"
            ))
            .await
            .unwrap();
        assert_eq!(migrate(&mut client, 3).await.unwrap(), vec![2]);
        let cursors: Vec<(i32, i64)> = client
            .query(
                "SELECT partition, relayed_upto FROM relay_partitions ORDER BY partition",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(cursors, vec![(0, 10), (1, 6), (2, 0)]);
        let outbox: Option<String> = client
            .query_one("SELECT to_regclass('outbox')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(outbox, None, "the outbox table is gone");
    }
}
