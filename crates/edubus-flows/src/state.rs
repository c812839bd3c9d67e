//! The flows' own tables, in the same store as the events, and the transactional steps that
//! read and write them.
//!
//! Every read model is a table of JSON documents keyed by an entity id. A handler turns its
//! event into a [`Step`]: which documents it reads, then, from what it read, which documents
//! it writes and which events it causes. The step runs inside the settlement's transaction,
//! with the inbox row, so its writes and caused events exist exactly when the event counts as
//! handled. The same step runs on SQLite (one writer: steps never overlap) and on
//! PostgreSQL, where a step first takes a transaction-scoped advisory lock on each document it
//! reads, existing or not, so concurrent steps on one document serialize.

use std::time::Duration;

use edubus_core::error::BoxError;
use edubus_core::{Append, Error, Result, Transport};
use edubus_postgres::PgWork;
use edubus_redis::Production;
use edubus_sqlite::rusqlite::{self, OptionalExtension as _, params};
use edubus_sqlite::{SqliteBackend, SqliteWork};
use futures_util::FutureExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// A read-model table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Enrollment applications, by application id.
    Applications,
    /// Provisioned students, by student id.
    Students,
    /// Counters (the student-code sequence), by name.
    Counters,
    /// Communications sent, by dispatch id.
    Dispatches,
    /// Attendance records, by student id.
    Attendance,
    /// Weighted course averages, by `student_id/course_id`.
    Grades,
    /// Course-access records, by access id.
    Access,
    /// Paid orders and the access they granted, by order id.
    Orders,
    /// Essay batches of the assessment pipeline, by batch id.
    Batches,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 9] = [
        Table::Applications,
        Table::Students,
        Table::Counters,
        Table::Dispatches,
        Table::Attendance,
        Table::Grades,
        Table::Access,
        Table::Orders,
        Table::Batches,
    ];

    /// The table's SQL name.
    pub fn sql_name(self) -> &'static str {
        match self {
            Table::Applications => "flow_applications",
            Table::Students => "flow_students",
            Table::Counters => "flow_counters",
            Table::Dispatches => "flow_dispatches",
            Table::Attendance => "flow_attendance",
            Table::Grades => "flow_grades",
            Table::Access => "flow_access",
            Table::Orders => "flow_orders",
            Table::Batches => "flow_batches",
        }
    }
}

/// One document: a table and a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocRef {
    /// The table.
    pub table: Table,
    /// The key within it.
    pub key: String,
}

impl DocRef {
    /// The document `key` of `table`.
    pub fn new(table: Table, key: impl Into<String>) -> Self {
        Self {
            table,
            key: key.into(),
        }
    }
}

/// The documents a step read, in the order of [`Step::reads`].
#[derive(Debug)]
pub struct Docs(Vec<Option<Value>>);

impl Docs {
    /// The document at `index` of the reads, decoded; `None` when it does not exist.
    pub fn get<T: DeserializeOwned>(&self, index: usize) -> Result<Option<T>, BoxError> {
        match self.0.get(index) {
            Some(Some(value)) => Ok(Some(T::deserialize(value)?)),
            Some(None) => Ok(None),
            None => Err(format!("the step read no document at index {index}").into()),
        }
    }
}

/// What a step decided: documents to write (whole, replacing what was there) and events to
/// append, all in the settlement's transaction.
#[derive(Debug, Default)]
pub struct Effects {
    /// Documents to write.
    pub writes: Vec<(DocRef, Value)>,
    /// Caused events to append.
    pub events: Vec<Append>,
}

impl Effects {
    /// Writes `doc` to `at`.
    pub fn write(&mut self, at: DocRef, doc: &impl Serialize) -> Result<(), BoxError> {
        self.writes.push((at, serde_json::to_value(doc)?));
        Ok(())
    }

    /// Appends a caused event.
    pub fn publish(&mut self, append: Append) {
        self.events.push(append);
    }
}

/// A handler's transactional work, written once for every backend.
pub trait Step: Send + 'static {
    /// The documents to read first (locked until the transaction ends on PostgreSQL, even
    /// those that do not exist yet).
    fn reads(&self) -> Vec<DocRef>;
    /// Decides, from the documents read, what to write and publish. An error rolls the
    /// settlement back and the event is retried.
    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError>;
}

/// A backend the flows run on: it runs steps in its settlement transactions and keeps the
/// read-model tables.
pub trait FlowBackend: edubus_core::Backend {
    /// Creates the read-model tables if they do not exist.
    fn prepare(&self) -> impl Future<Output = Result<()>> + Send;
    /// `step` as this backend's transactional work.
    fn work(step: Box<dyn Step>) -> <Self as Transport>::Work;
    /// One document, read outside any transaction.
    fn doc(&self, at: DocRef) -> impl Future<Output = Result<Option<Value>>> + Send;
    /// Up to `limit` documents of `table` whose key starts with `prefix`, by key.
    fn docs(
        &self,
        table: Table,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Value)>>> + Send;
    /// The number of documents in `table`.
    fn count(&self, table: Table) -> impl Future<Output = Result<u64>> + Send;
}

fn corrupt(at: &DocRef, e: serde_json::Error) -> Error {
    Error::internal(
        format!(
            "document `{}` of {} is not JSON",
            at.key,
            at.table.sql_name()
        ),
        e,
    )
}

fn escape_like(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// SQLite: the step runs on the writer thread, in the settlement's savepoint.

fn sqlite_ddl() -> String {
    Table::ALL
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, doc TEXT NOT NULL, \
                 updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
                t.sql_name()
            )
        })
        .collect()
}

fn sqlite_run(
    tx: &rusqlite::Transaction<'_>,
    step: Box<dyn Step>,
) -> Result<Vec<Append>, BoxError> {
    let mut read = Vec::new();
    for at in step.reads() {
        let sql = format!("SELECT doc FROM {} WHERE key = ?1", at.table.sql_name());
        let text: Option<String> = tx
            .query_row(&sql, params![at.key], |r| r.get(0))
            .optional()?;
        read.push(text.map(|t| serde_json::from_str(&t)).transpose()?);
    }
    let effects = step.decide(Docs(read))?;
    for (at, doc) in effects.writes {
        let sql = format!(
            "INSERT INTO {} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET \
             doc = excluded.doc, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
            at.table.sql_name()
        );
        tx.execute(&sql, params![at.key, doc.to_string()])?;
    }
    Ok(effects.events)
}

/// A read-only connection to the backend's database file, on a blocking thread.
async fn sqlite_read<T: Send + 'static>(
    backend: &SqliteBackend,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = backend.config().path.clone();
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::unavailable("cannot open the database to read a read model", e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| Error::unavailable("cannot set the busy timeout", e))?;
        f(&conn)
    })
    .await
    .map_err(|e| Error::internal("a read-model query panicked", e))?
}

fn sqlite_err(e: rusqlite::Error) -> Error {
    Error::unavailable("a read-model query failed", e)
}

impl FlowBackend for SqliteBackend {
    async fn prepare(&self) -> Result<()> {
        let path = self.config().path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.execute_batch(&sqlite_ddl())
        })
        .await
        .map_err(|e| Error::internal("creating the read-model tables panicked", e))?
        .map_err(|e| Error::unavailable("cannot create the read-model tables", e))
    }

    fn work(step: Box<dyn Step>) -> SqliteWork {
        Box::new(move |tx| sqlite_run(tx, step))
    }

    async fn doc(&self, at: DocRef) -> Result<Option<Value>> {
        sqlite_read(self, move |conn| {
            let sql = format!("SELECT doc FROM {} WHERE key = ?1", at.table.sql_name());
            let text: Option<String> = conn
                .query_row(&sql, params![at.key], |r| r.get(0))
                .optional()
                .map_err(sqlite_err)?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(&at, e)))
                .transpose()
        })
        .await
    }

    async fn docs(&self, table: Table, prefix: &str, limit: usize) -> Result<Vec<(String, Value)>> {
        let pattern = escape_like(prefix);
        sqlite_read(self, move |conn| {
            let sql = format!(
                "SELECT key, doc FROM {} WHERE key LIKE ?1 ESCAPE '\\' ORDER BY key LIMIT ?2",
                table.sql_name()
            );
            let mut stmt = conn.prepare(&sql).map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![pattern, limit_sql(limit)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(sqlite_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (key, text) = row.map_err(sqlite_err)?;
                let doc = serde_json::from_str(&text)
                    .map_err(|e| corrupt(&DocRef::new(table, key.clone()), e))?;
                out.push((key, doc));
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self, table: Table) -> Result<u64> {
        sqlite_read(self, move |conn| {
            let sql = format!("SELECT count(*) FROM {}", table.sql_name());
            let n: i64 = conn.query_row(&sql, [], |r| r.get(0)).map_err(sqlite_err)?;
            Ok(u64::try_from(n).unwrap_or_default())
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: the step runs in the settlement's transaction of the production deployment.

fn pg_ddl() -> String {
    Table::ALL
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, doc JSONB NOT NULL, \
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now());",
                t.sql_name()
            )
        })
        .collect()
}

fn pg_err(e: tokio_postgres::Error) -> Error {
    Error::unavailable("a read-model query failed", e)
}

async fn pg_run(
    tx: &tokio_postgres::Transaction<'_>,
    step: Box<dyn Step>,
) -> Result<Vec<Append>, BoxError> {
    let reads = step.reads();
    // A transaction-scoped lock per document, taken in one global order so steps cannot
    // deadlock on each other. Unlike `FOR UPDATE` it also locks a document that does not
    // exist yet, so two steps cannot both see it absent and both create it.
    let mut locks: Vec<String> = reads
        .iter()
        .map(|at| format!("{}/{}", at.table.sql_name(), at.key))
        .collect();
    locks.sort();
    locks.dedup();
    for lock in &locks {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[lock],
        )
        .await?;
    }
    let mut read = Vec::new();
    for at in reads {
        let sql = format!(
            "SELECT doc::text FROM {} WHERE key = $1",
            at.table.sql_name()
        );
        let row = tx.query_opt(&sql, &[&at.key]).await?;
        let text: Option<String> = row.map(|r| r.get(0));
        read.push(text.map(|t| serde_json::from_str(&t)).transpose()?);
    }
    let effects = step.decide(Docs(read))?;
    for (at, doc) in effects.writes {
        let sql = format!(
            "INSERT INTO {} (key, doc) VALUES ($1, $2::text::jsonb) ON CONFLICT (key) DO UPDATE \
             SET doc = EXCLUDED.doc, updated_at = now()",
            at.table.sql_name()
        );
        tx.execute(&sql, &[&at.key, &doc.to_string()]).await?;
    }
    Ok(effects.events)
}

async fn pg_client(backend: &Production) -> Result<deadpool_postgres::Object> {
    backend
        .store()
        .pool()
        .get()
        .await
        .map_err(|e| Error::unavailable("no PostgreSQL connection for a read model", e))
}

impl FlowBackend for Production {
    async fn prepare(&self) -> Result<()> {
        let client = pg_client(self).await?;
        // Serializes concurrent starts: CREATE TABLE IF NOT EXISTS races on the catalog.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7400001); {} COMMIT;",
                pg_ddl()
            ))
            .await
            .map_err(|e| Error::unavailable("cannot create the read-model tables", e))
    }

    fn work(step: Box<dyn Step>) -> PgWork {
        edubus_postgres::work(move |tx| pg_run(tx, step).boxed())
    }

    async fn doc(&self, at: DocRef) -> Result<Option<Value>> {
        let client = pg_client(self).await?;
        let sql = format!(
            "SELECT doc::text FROM {} WHERE key = $1",
            at.table.sql_name()
        );
        let row = client.query_opt(&sql, &[&at.key]).await.map_err(pg_err)?;
        row.map(|r| serde_json::from_str(r.get(0)).map_err(|e| corrupt(&at, e)))
            .transpose()
    }

    async fn docs(&self, table: Table, prefix: &str, limit: usize) -> Result<Vec<(String, Value)>> {
        let client = pg_client(self).await?;
        let sql = format!(
            "SELECT key, doc::text FROM {} WHERE key LIKE $1 ESCAPE '\\' ORDER BY key LIMIT $2",
            table.sql_name()
        );
        let rows = client
            .query(
                &sql,
                &[
                    &escape_like(prefix) as &(dyn ToSql + Sync),
                    &limit_sql(limit),
                ],
            )
            .await
            .map_err(pg_err)?;
        rows.into_iter()
            .map(|r| {
                let key: String = r.get(0);
                let doc = serde_json::from_str(r.get(1))
                    .map_err(|e| corrupt(&DocRef::new(table, key.clone()), e))?;
                Ok((key, doc))
            })
            .collect()
    }

    async fn count(&self, table: Table) -> Result<u64> {
        let client = pg_client(self).await?;
        let sql = format!("SELECT count(*) FROM {}", table.sql_name());
        let row = client.query_one(&sql, &[]).await.map_err(pg_err)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_the_prefix_literally() {
        assert_eq!(escape_like("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(escape_like(""), "%");
    }
}
