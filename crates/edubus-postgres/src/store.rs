//! The event store role: appends through the outbox, reads of the `events` table.

use std::collections::HashMap;

use edubus_core::{
    Append, Appended, Envelope, Error, EventStore, Position, ReadQuery, Recorded, Result,
    partition_of,
};
use jiff::Timestamp;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use crate::PgStore;
use crate::error::Db;

/// Page size of a read whose `limit` is 0.
pub const DEFAULT_READ_LIMIT: usize = 1000;

/// The columns [`recorded`] decodes.
pub(crate) const RECORDED_COLUMNS: &str =
    "e.position, e.stream, e.partition, e.key, e.recorded_at, e.body, e.id, e.type, e.version";

/// Takes the partitions' append locks, in ascending order (so two batches cannot deadlock).
///
/// Held to commit, they make positions of one partition commit in position order: the relay
/// then never sees a later position of a partition before an earlier one.
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock('events'::regclass::oid::int, p)
    FROM unnest($1::int4[]) AS p";

/// Inserts the new events, skipping stored ids.
const INSERT_SQL: &str = "
INSERT INTO events (id, type, version, stream, partition, key, correlation_id, causation_id,
    tenant_id, envelope, body)
SELECT id, type, version, stream, partition, key, correlation_id, causation_id, tenant_id,
    body::jsonb, body
FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[])
    AS t(id, type, version, stream, partition, key, correlation_id, causation_id, tenant_id,
         body)
ON CONFLICT (id) DO NOTHING
RETURNING id, position";

/// Wakes relays listening on this schema's channel once the transaction commits.
const NOTIFY_SQL: &str = "SELECT pg_notify('edubus_outbox_' || 'events'::regclass::oid, '')";

/// An event ready to insert: the envelope serialized and its indexed columns extracted.
struct NewEvent<'a> {
    id: &'a str,
    event_type: &'a str,
    version: i32,
    stream: &'a str,
    partition: i32,
    key: &'a str,
    correlation_id: &'a str,
    causation_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    body: String,
}

impl<'a> NewEvent<'a> {
    /// Serializes one append; the key is `partitionkey`, else `subject`, else the event id.
    fn new(append: &'a Append, partitions: u32) -> Self {
        let env = &append.envelope;
        let key = env.key().unwrap_or(&env.id);
        Self {
            id: &env.id,
            event_type: &env.event_type,
            version: i32::try_from(env.schemaversion.unwrap_or(1)).unwrap_or(i32::MAX),
            stream: &append.stream,
            partition: i32::try_from(partition_of(key, partitions)).unwrap_or(0),
            key,
            correlation_id: env.correlation_id(),
            causation_id: env.causationid.as_deref(),
            tenant_id: env.tenantid.as_deref(),
            body: env.to_json(),
        }
    }
}

/// Appends `batch` in the transaction `tx`; see [`PgStore::append_in`].
pub(crate) async fn append_in(
    tx: &Transaction<'_>,
    batch: &[Append],
    partitions: u32,
) -> Result<Vec<Appended>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let rows = batch
        .iter()
        .map(|a| NewEvent::new(a, partitions))
        .collect::<Vec<_>>();
    let mut locks: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    locks.sort_unstable();
    locks.dedup();
    let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
    let streams: Vec<&str> = rows.iter().map(|r| r.stream).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key).collect();
    let correlations: Vec<&str> = rows.iter().map(|r| r.correlation_id).collect();
    let bodies: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let parts: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let causations: Vec<Option<&str>> = rows.iter().map(|r| r.causation_id).collect();
    let tenants: Vec<Option<&str>> = rows.iter().map(|r| r.tenant_id).collect();
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&ids, Type::TEXT_ARRAY),
        (&types, Type::TEXT_ARRAY),
        (&versions, Type::INT4_ARRAY),
        (&streams, Type::TEXT_ARRAY),
        (&parts, Type::INT4_ARRAY),
        (&keys, Type::TEXT_ARRAY),
        (&correlations, Type::TEXT_ARRAY),
        (&causations, Type::TEXT_ARRAY),
        (&tenants, Type::TEXT_ARRAY),
        (&bodies, Type::TEXT_ARRAY),
    ];
    // Pipelined: the three statements travel together and run in order.
    let (_, inserted, _) = futures_util::future::try_join3(
        tx.query_typed(LOCK_SQL, &[(&locks, Type::INT4_ARRAY)]),
        tx.query_typed(INSERT_SQL, &params),
        tx.query_typed(NOTIFY_SQL, &[]),
    )
    .await
    .db()?;
    let inserted: HashMap<String, i64> = inserted.iter().map(|r| (r.get(0), r.get(1))).collect();
    settle_duplicates(tx, &rows, inserted).await
}

/// Fails with `Conflict`, as [`append_in`] would, when an event of `batch` reuses the id of a
/// stored event or of one in `staged` (events this transaction appends later) with other
/// content; otherwise adds the batch's ids and bodies to `staged`.
///
/// A plain read, without the append locks: a settlement checks each commit before releasing
/// its savepoint and appends all of them at the end. An event with the same id committed by
/// a concurrent transaction in between still fails that final append.
pub(crate) async fn check_conflicts(
    tx: &Transaction<'_>,
    batch: &[Append],
    partitions: u32,
    staged: &mut HashMap<String, String>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let rows = batch
        .iter()
        .map(|a| NewEvent::new(a, partitions))
        .collect::<Vec<_>>();
    let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
    let stored = stored_with_ids(tx, &ids).await?;
    let stored: HashMap<&str, &str> = stored.iter().map(|r| (r.get(0), r.get(2))).collect();
    let mut batch_bodies: HashMap<&str, &str> = HashMap::new();
    for row in &rows {
        let earlier = batch_bodies
            .get(row.id)
            .copied()
            .or_else(|| staged.get(row.id).map(String::as_str));
        if earlier.is_some_and(|body| body != row.body) {
            return Err(Error::conflict(format!(
                "event `{}` is appended by an earlier commit of the same settlement with \
                 different content; nothing of this commit was stored",
                row.id
            )));
        }
        if stored.get(row.id).is_some_and(|body| *body != row.body) {
            return Err(Error::conflict(conflict_message(row.id, true)));
        }
        batch_bodies.insert(row.id, &row.body);
    }
    drop(batch_bodies);
    staged.extend(rows.into_iter().map(|r| (r.id.to_owned(), r.body)));
    Ok(())
}

/// `id`, `position` and `body` of the stored events among `ids`.
async fn stored_with_ids(tx: &Transaction<'_>, ids: &[&str]) -> Result<Vec<Row>> {
    tx.query_typed(
        "SELECT id, position, body FROM events WHERE id = ANY($1)",
        &[(&ids, Type::TEXT_ARRAY)],
    )
    .await
    .db()
}

/// One [`Appended`] per row: inserted rows as new, the others compared with what is stored.
async fn settle_duplicates(
    tx: &Transaction<'_>,
    rows: &[NewEvent<'_>],
    mut inserted: HashMap<String, i64>,
) -> Result<Vec<Appended>> {
    let mut fresh: HashMap<&str, (i64, &str)> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    let mut missing = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(position) = inserted.remove(row.id) {
            fresh.insert(row.id, (position, &row.body));
            out.push(appended(row.id, position, false));
        } else {
            out.push(appended(row.id, 0, true));
            missing.push(i);
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = missing.iter().map(|&i| rows[i].id).collect();
    let stored = stored_with_ids(tx, &ids).await?;
    let stored: HashMap<&str, (i64, &str)> = stored
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for i in missing {
        let row = &rows[i];
        let found = fresh.get(row.id).or_else(|| stored.get(row.id));
        match found {
            Some((position, body)) if *body == row.body => {
                out[i].position = u64::try_from(*position).unwrap_or(0);
            }
            found => return Err(abort(tx, conflict_message(row.id, found.is_some())).await),
        }
    }
    Ok(out)
}

fn appended(id: &str, position: i64, duplicate: bool) -> Appended {
    Appended {
        id: id.to_owned(),
        position: u64::try_from(position).unwrap_or(0),
        duplicate,
    }
}

fn conflict_message(id: &str, stored: bool) -> String {
    if stored {
        format!(
            "event `{id}` is already stored with different content; nothing of the batch was stored"
        )
    } else {
        format!(
            "event `{id}` was stored by a transaction this one cannot see; nothing of the batch \
             was stored, retry"
        )
    }
}

/// Fails the transaction on the server, so a caller cannot commit half a batch, and returns
/// the conflict to report.
async fn abort(tx: &Transaction<'_>, message: String) -> Error {
    let _ = tx
        .query_typed("SELECT edubus_abort($1)", &[(&message, Type::TEXT)])
        .await;
    Error::conflict(message)
}

/// Decodes a row selected with [`RECORDED_COLUMNS`].
pub(crate) fn recorded(row: &Row) -> Result<Recorded> {
    let body: &str = row.try_get(5).db()?;
    let envelope = match serde_json::from_str::<Envelope>(body) {
        Ok(envelope) => envelope,
        Err(e) => undecodable(
            body,
            row.try_get(6).db()?,
            row.try_get(7).db()?,
            row.try_get(8).db()?,
            &e,
        ),
    };
    let position: i64 = row.try_get(0).db()?;
    let partition: i32 = row.try_get(2).db()?;
    Ok(Recorded {
        position: u64::try_from(position).unwrap_or(0),
        stream: row.try_get(1).db()?,
        partition: u32::try_from(partition).unwrap_or(0),
        key: row.try_get(3).db()?,
        recorded_at: row.try_get::<_, Timestamp>(4).db()?,
        envelope,
    })
}

/// A stand-in for a stored envelope that no longer decodes: its raw text in `data`, so a
/// consumer dead-letters it as undecodable instead of the partition stopping.
fn undecodable(raw: &str, id: &str, ty: &str, version: i32, e: &serde_json::Error) -> Envelope {
    let version = u32::try_from(version).unwrap_or(1);
    let mut env = Envelope::new(ty, version, Value::String(raw.to_owned()))
        .with_id(id)
        .with_source("urn:edubus:postgres:undecodable")
        .with_extension("decodeerror", e.to_string());
    env.time = None;
    env
}

/// An owned query parameter and its type.
type Param = (Box<dyn ToSql + Sync + Send>, Type);

/// The SQL and parameters of a read.
fn read_sql(query: &ReadQuery) -> (String, Vec<Param>) {
    let limit = if query.limit == 0 {
        DEFAULT_READ_LIMIT
    } else {
        query.limit
    };
    let mut params: Vec<Param> = vec![
        (
            Box::new(i64::try_from(query.after).unwrap_or(i64::MAX)),
            Type::INT8,
        ),
        (
            Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            Type::INT8,
        ),
    ];
    let mut sql = format!("SELECT {RECORDED_COLUMNS} FROM events e WHERE e.position > $1");
    // `cond` names its parameter `$?`; it becomes the next number.
    let mut add = |cond: &str, value: Box<dyn ToSql + Sync + Send>, ty: Type| {
        params.push((value, ty));
        sql.push_str(" AND ");
        sql.push_str(&cond.replace("$?", &format!("${}", params.len())));
    };
    if !query.types.is_empty() {
        add(
            "e.type = ANY($?)",
            Box::new(query.types.clone()),
            Type::TEXT_ARRAY,
        );
    }
    if let Some(key) = &query.key {
        add("e.key = $?", Box::new(key.clone()), Type::TEXT);
    }
    if let Some(id) = &query.correlation_id {
        add("e.correlation_id = $?", Box::new(id.clone()), Type::TEXT);
    }
    if let Some(stream) = &query.stream {
        add("e.stream = $?", Box::new(stream.clone()), Type::TEXT);
    }
    if let Some(since) = query.since {
        add("e.recorded_at >= $?", Box::new(since), Type::TIMESTAMPTZ);
    }
    sql.push_str(" ORDER BY e.position LIMIT $2");
    (sql, params)
}

impl EventStore for PgStore {
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.db()?;
        let appended = append_in(&tx, &batch, self.partitions()).await?;
        tx.commit().await.db()?;
        Ok(appended)
    }

    async fn read(&self, query: ReadQuery) -> Result<Vec<Recorded>> {
        let (sql, params) = read_sql(&query);
        let params: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .map(|(v, t)| (&**v as &(dyn ToSql + Sync), t.clone()))
            .collect();
        let client = self.client().await?;
        let rows = client.query_typed(&sql, &params).await.db()?;
        rows.iter().map(recorded).collect()
    }

    async fn get(&self, id: &str) -> Result<Option<Recorded>> {
        let client = self.client().await?;
        let sql = format!("SELECT {RECORDED_COLUMNS} FROM events e WHERE e.id = $1");
        let row = client
            .query_typed_opt(&sql, &[(&id, Type::TEXT)])
            .await
            .db()?;
        row.as_ref().map(recorded).transpose()
    }

    async fn head(&self) -> Result<Position> {
        let client = self.client().await?;
        let row = client
            .query_typed_one("SELECT COALESCE(max(position), 0) FROM events", &[])
            .await
            .db()?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}
