//! The inbox of transactional handlers: the handler's writes, the events it causes and the
//! inbox row commit in one transaction, so a redelivered event is recognised and skipped.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use edubus_core::error::BoxError;
use edubus_core::{Append, Appended, Error, Result};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_postgres::Transaction;
use tokio_postgres::types::{ToSql, Type};

use crate::PgStore;
use crate::error::{Db, from_pg};
use crate::store::{append_in, check_conflicts};

/// Records `$2`'s event ids in `$1`'s inbox; returns those not there before. Prepared once
/// per connection: parsing and planning it again for every settlement cost PostgreSQL more
/// than running it.
const INBOX_INSERT: &str = "INSERT INTO inbox (subscription, event_id)
     SELECT $1, id FROM unnest($2::text[]) AS id
     ON CONFLICT DO NOTHING RETURNING event_id";
const INBOX_INSERT_TYPES: &[Type] = &[Type::TEXT, Type::TEXT_ARRAY];

/// Per commit, whether it is handled now: the first commit of an id the inbox did not have
/// (`inserted`, the rows `INBOX_INSERT` returned); a repeat of it in the same call is a
/// duplicate.
fn first_handled(commits: &[(&str, &[Append])], inserted: &[tokio_postgres::Row]) -> Vec<bool> {
    let mut new: HashSet<String> = inserted.iter().map(|r| r.get(0)).collect();
    commits.iter().map(|(id, _)| new.remove(*id)).collect()
}

/// A transactional handler's work: runs inside the settlement's transaction and returns more
/// events to append in it. Build one with [`work`].
pub type PgWork = Box<
    dyn for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<Vec<Append>, BoxError>> + Send,
>;

/// Boxes a closure as [`PgWork`] (the bound lets the compiler infer the closure's lifetimes).
pub fn work<F>(f: F) -> PgWork
where
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<Vec<Append>, BoxError>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// A handled event to record in a subscription's inbox.
pub struct Commit {
    /// The handled event's id.
    pub event_id: String,
    /// The handler's transactional work, if any.
    pub work: Option<PgWork>,
    /// Events the handler caused, appended through the outbox.
    pub caused: Vec<Append>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("event_id", &self.event_id)
            .field("work", &self.work.as_ref().map(|_| "PgWork"))
            .field("caused", &self.caused)
            .finish()
    }
}

/// What a [`Commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Recorded now; the work ran and these events (work's first, then `caused`) were appended.
    Handled(Vec<Appended>),
    /// The inbox already had it: nothing ran and nothing was written.
    Duplicate,
}

impl PgStore {
    /// Of `ids`, those already in `subscription`'s inbox.
    pub async fn seen(&self, subscription: &str, ids: &[String]) -> Result<Vec<String>> {
        let client = self.client().await?;
        // One index probe per id, whatever the table's statistics say.
        let seen = client
            .prepare_typed_cached(
                "SELECT f.event_id FROM unnest($2::text[]) AS x(id),
                 LATERAL (SELECT i.event_id FROM inbox i
                          WHERE i.subscription = $1 AND i.event_id = x.id LIMIT 1) AS f",
                &[Type::TEXT, Type::TEXT_ARRAY],
            )
            .await
            .db()?;
        let rows = client.query(&seen, &[&subscription, &ids]).await.db()?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Commits each handled event atomically on its own and returns one result per commit,
    /// in order. A failing work rolls back its commit entirely (no inbox row, no event).
    ///
    /// Commits without work share one transaction; if it fails they are retried one by one,
    /// so one bad commit cannot fail or half-write another. Commits with work share another:
    /// each work runs in its own savepoint (a failing work, or events that reuse a stored id
    /// with other content, roll back only their commit), and the events of all of them are
    /// appended once at the end, so the transaction takes the partitions' append locks after
    /// every work's own locks and in ascending order.
    pub async fn commit(&self, subscription: &str, commits: Vec<Commit>) -> Vec<Result<Committed>> {
        let mut results: Vec<Option<Result<Committed>>> = commits.iter().map(|_| None).collect();
        let (plain, with_work): (Vec<_>, Vec<_>) = commits
            .into_iter()
            .enumerate()
            .partition(|(_, c)| c.work.is_none());
        if !plain.is_empty() {
            // Plain data, not `&Commit`: a `PgWork` is not `Sync`, and the future must be `Send`.
            let refs: Vec<(&str, &[Append])> = plain
                .iter()
                .map(|(_, c)| (c.event_id.as_str(), c.caused.as_slice()))
                .collect();
            match self.commit_plain(subscription, &refs).await {
                Ok(done) => {
                    for ((i, _), r) in plain.iter().zip(done) {
                        results[*i] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "batched inbox commit failed; committing one by one");
                    for (i, c) in plain {
                        results[i] = Some(self.commit_one(subscription, c).await);
                    }
                }
            }
        }
        if !with_work.is_empty() {
            let (slots, commits): (Vec<usize>, Vec<Commit>) = with_work.into_iter().unzip();
            match self.commit_grouped(subscription, commits).await {
                Ok(done) => {
                    for (i, r) in slots.into_iter().zip(done) {
                        results[i] = Some(r);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for i in slots {
                        results[i] = Some(Err(Error::unavailable(
                            "the settlement transaction did not commit",
                            message.clone(),
                        )));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::internal("a commit got no result", "bug"))))
            .collect()
    }

    /// Commits without work in one transaction: one multi-row inbox insert, one append.
    /// Without caused events the insert is the whole commit, and one statement is atomic on
    /// its own: it runs without `BEGIN` and `COMMIT`, one round trip instead of three.
    async fn commit_plain(
        &self,
        subscription: &str,
        commits: &[(&str, &[Append])],
    ) -> Result<Vec<Committed>> {
        let mut client = self.client().await?;
        let ids: Vec<&str> = commits.iter().map(|(id, _)| *id).collect();
        let params: [&(dyn ToSql + Sync); 2] = [&subscription, &ids];
        let (handled, appended) = if commits.iter().all(|(_, caused)| caused.is_empty()) {
            let insert = client
                .prepare_typed_cached(INBOX_INSERT, INBOX_INSERT_TYPES)
                .await
                .db()?;
            let rows = client.query(&insert, &params).await.db()?;
            (first_handled(commits, &rows), Vec::new())
        } else {
            let tx = client.transaction().await.db()?;
            let insert = tx
                .prepare_typed_cached(INBOX_INSERT, INBOX_INSERT_TYPES)
                .await
                .db()?;
            let rows = tx.query(&insert, &params).await.db()?;
            let handled = first_handled(commits, &rows);
            let caused: Vec<Append> = commits
                .iter()
                .zip(&handled)
                .filter(|(_, h)| **h)
                .flat_map(|((_, caused), _)| caused.iter().cloned())
                .collect();
            let appended = append_in(&tx, &caused, self.partitions()).await?;
            tx.commit().await.db()?;
            (handled, appended)
        };
        let mut appended = appended.into_iter();
        Ok(commits
            .iter()
            .zip(handled)
            .map(|((_, caused), h)| match h {
                true => Committed::Handled(appended.by_ref().take(caused.len()).collect()),
                false => Committed::Duplicate,
            })
            .collect())
    }

    /// Commits handled events with work in one transaction: each work in its own savepoint,
    /// released only once its events are known not to conflict with stored ones or with those
    /// of an earlier commit, then one append of every handled commit's events. If the
    /// transaction fails (the append included), every commit fails and is retried by its
    /// caller.
    async fn commit_grouped(
        &self,
        subscription: &str,
        commits: Vec<Commit>,
    ) -> Result<Vec<Result<Committed>>> {
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.db()?;
        // Per commit: the events to append (handled) or the outcome already known.
        let mut staged: Vec<Result<Option<Vec<Append>>>> = Vec::with_capacity(commits.len());
        let mut bodies = HashMap::new();
        for commit in commits {
            let savepoint = tx.transaction().await.db()?;
            let outcome = match stage_in(&savepoint, subscription, commit).await {
                Ok(Some(events)) => {
                    check_conflicts(&savepoint, &events, self.partitions(), &mut bodies)
                        .await
                        .map(|()| Some(events))
                }
                other => other,
            };
            match outcome {
                Ok(events) => {
                    savepoint.commit().await.db()?;
                    staged.push(Ok(events));
                }
                Err(e) => {
                    savepoint.rollback().await.db()?;
                    staged.push(Err(e));
                }
            }
        }
        let all: Vec<Append> = staged
            .iter()
            .flat_map(|s| s.iter().flatten().flatten().cloned())
            .collect();
        let mut appended = append_in(&tx, &all, self.partitions()).await?.into_iter();
        tx.commit().await.db()?;
        Ok(staged
            .into_iter()
            .map(|s| {
                s.map(|events| match events {
                    Some(events) => {
                        Committed::Handled(appended.by_ref().take(events.len()).collect())
                    }
                    None => Committed::Duplicate,
                })
            })
            .collect())
    }

    /// Commits one handled event in its own transaction, running its work.
    async fn commit_one(&self, subscription: &str, commit: Commit) -> Result<Committed> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.db()?;
        let done = commit_in(&tx, subscription, commit, self.partitions()).await?;
        tx.commit().await.db()?;
        Ok(done)
    }
}

/// Records one handled event's inbox row and runs its work in `tx`; returns the events to
/// append (the work's, then `caused`), or `None` for a duplicate.
async fn stage_in(
    tx: &Transaction<'_>,
    subscription: &str,
    commit: Commit,
) -> Result<Option<Vec<Append>>> {
    let new = tx
        .query_typed(
            "INSERT INTO inbox (subscription, event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING RETURNING 1",
            &[(&subscription, Type::TEXT), (&commit.event_id, Type::TEXT)],
        )
        .await
        .db()?;
    if new.is_empty() {
        return Ok(None);
    }
    let mut events = match commit.work {
        Some(work) => run_work(tx, work).await?,
        None => Vec::new(),
    };
    events.extend(commit.caused);
    Ok(Some(events))
}

/// Records one handled event in `tx`: the inbox row, its work, its events.
async fn commit_in(
    tx: &Transaction<'_>,
    subscription: &str,
    commit: Commit,
    partitions: u32,
) -> Result<Committed> {
    Ok(match stage_in(tx, subscription, commit).await? {
        Some(events) => Committed::Handled(append_in(tx, &events, partitions).await?),
        None => Committed::Duplicate,
    })
}

/// Runs a handler's work; its error (or panic) fails only its own commit.
async fn run_work(tx: &Transaction<'_>, work: PgWork) -> Result<Vec<Append>> {
    let outcome = AssertUnwindSafe(async move { work(tx).await })
        .catch_unwind()
        .await
        .map_err(|_| Error::internal("the handler's transactional work panicked", "panic"))?;
    outcome.map_err(|e| match e.downcast::<Error>() {
        Ok(err) => *err,
        Err(e) => match e.downcast::<tokio_postgres::Error>() {
            Ok(err) => from_pg(*err),
            Err(e) => Error::Internal {
                message: format!("the handler's transactional work failed: {e}"),
                source: Some(e),
            },
        },
    })
}
