//! The writer thread: the only read-write connection of the process. Commands arrive on a
//! channel; the loop takes one, drains what else is queued (up to `group_commit_max`), runs
//! them in one `BEGIN IMMEDIATE ... COMMIT`, each in its own savepoint, and answers each after
//! the commit (group commit).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use edubus_core::{Error, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{self, WalFull};
use crate::error::{closed, from_sqlite_ref};
use crate::handoff::Handoff;
use crate::keys;
use crate::notify::Heads;
use crate::store::RawRecorded;

/// Counters of the writer thread, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Commands executed (appends, settlements, lease changes, ...).
    pub commands: u64,
    /// Transactions committed or attempted; fewer than `commands` when commits were grouped.
    pub transactions: u64,
}

/// What the writer carries from command to command within the process.
pub(crate) struct WriterState {
    /// Highest position assigned so far (published after each commit).
    pub head: u64,
    /// Partitions per stream (as stored in the file).
    pub partitions: u32,
    /// Set by a command run without a savepoint that failed after writing: the whole group
    /// must roll back.
    pub poisoned: bool,
    /// How far the by-key index is known to be complete, per partition.
    pub keys_upto: Vec<u64>,
    /// The keys of the by-key index's round in progress (dropped by a trim).
    pub key_round: Option<keys::Staged>,
    /// The keys appended since the last round took them.
    pub seen: keys::Seen,
    /// Partitions appended to in the current group, with the highest position in each.
    pub touched: Vec<(u32, u64)>,
    /// The current group found positions assigned by another process since this writer's
    /// last append: any partition may have new events.
    pub foreign: bool,
    /// Whether the current group keeps what it appends in `fresh` (some lease waits).
    pub collecting: bool,
    /// The events the current group appended, by position, for the hand-off.
    pub fresh: Vec<RawRecorded>,
}

impl WriterState {
    /// Forgets what the group wrote after `head`: a savepoint rolled back.
    pub(crate) fn rewind(&mut self, head: u64) {
        self.head = head;
        self.seen.rewind(head);
        while self.fresh.last().is_some_and(|e| e.position() > head) {
            self.fresh.pop();
        }
    }
}

/// A unit of work for the writer.
trait Command: Send {
    /// Whether it runs in its own savepoint (else it must fail only before writing, or set
    /// [`WriterState::poisoned`]).
    fn guarded(&self) -> bool;
    /// Runs inside the group's transaction; false means it failed.
    fn run(&mut self, tx: &Transaction<'_>, state: &mut WriterState) -> bool;
    /// Records an error that kept the command from running.
    fn reject(&mut self, err: Error);
    /// Answers the caller once the group committed, or with `failure` if it did not.
    fn finish(self: Box<Self>, failure: Option<Error>);
}

enum Msg {
    Run(Box<dyn Command>),
    Stop(oneshot::Sender<()>),
}

/// A closure with its reply channel.
struct Call<F, T> {
    guarded: bool,
    job: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Command for Call<F, T>
where
    F: FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T> + Send,
    T: Send,
{
    fn guarded(&self) -> bool {
        self.guarded
    }

    fn run(&mut self, tx: &Transaction<'_>, state: &mut WriterState) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        // A panicking handler closure must not take the writer thread down with it.
        let result = catch_unwind(AssertUnwindSafe(|| job(tx, state))).unwrap_or_else(|_| {
            Err(Error::internal(
                "a writer command panicked",
                "panic in a handler's transactional work or a writer command",
            ))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reject(&mut self, err: Error) {
        self.job = None;
        self.result = Some(Err(err));
    }

    fn finish(self: Box<Self>, failure: Option<Error>) {
        let out = match (self.result, failure) {
            (Some(Err(own)), _) => Err(own),
            (_, Some(failure)) => Err(failure),
            (Some(Ok(value)), None) => Ok(value),
            (None, None) => Err(Error::internal("a writer command never ran", "writer")),
        };
        let _ = self.reply.send(out);
    }
}

/// Counters, the head channel and the hand-offs, shared by the thread and the handle.
struct Shared {
    commands: AtomicU64,
    transactions: AtomicU64,
    head: Arc<Heads>,
    handoff: Arc<Handoff>,
    wal_full: WalFull,
}

/// The handle to the writer thread held by the backend.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn spawn(
        conn: Connection,
        state: WriterState,
        group_commit_max: usize,
        head: Arc<Heads>,
        handoff: Arc<Handoff>,
        wal_full: WalFull,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(group_commit_max.max(64));
        let shared = Arc::new(Shared {
            commands: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            head,
            handoff,
            wal_full,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("edubus-sqlite-writer".into())
            .spawn(move || {
                run_loop(conn, rx, state, group_commit_max, &thread_shared);
            })
            .map_err(|e| Error::internal("could not start the SQLite writer thread", e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
            shared,
        })
    }

    /// Runs `job` on the writer thread in the next group commit, in its own savepoint;
    /// returns after the commit.
    pub(crate) async fn call<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.send(true, job).await
    }

    /// Like [`Writer::call`] without a savepoint, for a job that fails only before its first
    /// write or else sets [`WriterState::poisoned`].
    pub(crate) async fn call_unguarded<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.send(false, job).await
    }

    async fn send<T, F>(&self, guarded: bool, job: F) -> Result<T>
    where
        F: FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            guarded,
            job: Some(job),
            result: None,
            reply,
        };
        let sender = self.tx.as_ref().ok_or_else(closed)?;
        sender
            .send(Msg::Run(Box::new(call)))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Flushes queued commands and stops the thread; idempotent.
    pub(crate) async fn stop(&self) {
        if let Some(sender) = &self.tx {
            let (ack, acked) = oneshot::channel();
            if sender.send(Msg::Stop(ack)).await.is_ok() {
                let _ = acked.await;
            }
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Commands and transactions so far.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commands: self.shared.commands.load(Ordering::Relaxed),
            transactions: self.shared.transactions.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queue is drained.
        self.tx = None;
        let thread = self.thread.get_mut().ok().and_then(Option::take);
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn run_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    mut state: WriterState,
    max: usize,
    shared: &Shared,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        let mut stop = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Run(cmd) => batch.push(cmd),
                Msg::Stop(ack) => stop = Some(ack),
            }
            if stop.is_none() && batch.len() < max {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_group(&mut conn, batch, &mut state, shared);
        }
        if shared.wal_full.swap(false, Ordering::AcqRel) {
            // Between groups no frame is appended, so this copies the rest of the log and the
            // next group starts it over (`checkpoint.rs`). A failure is retried when asked again.
            let _ = checkpoint::checkpoint(&conn, "PASSIVE");
        }
        index_keys(&mut conn, &mut state, &rx);
        if let Some(ack) = stop {
            let _ = ack.send(());
            return;
        }
    }
}

/// Advances the by-key index once some partition is due: one step of the round
/// ([`keys::Staged::step`]) after a group while commands wait, steps until the round is over
/// while none does. A failure (another process holding the lock) is retried after the next
/// group.
fn index_keys(conn: &mut Connection, state: &mut WriterState, rx: &mpsc::Receiver<Msg>) {
    loop {
        if state.key_round.is_none() {
            if !keys::due(state.head, &state.keys_upto) {
                return;
            }
            let started = keys::Staged::start(conn, &state.keys_upto, &mut state.seen, state.head);
            let Ok(round) = started else {
                return;
            };
            state.key_round = Some(round);
        }
        let Some(round) = state.key_round.as_mut() else {
            return;
        };
        match round.step(conn) {
            Ok(keys::Step::Progress) => {}
            Ok(keys::Step::Indexed(partition, upto)) => {
                if let Some(bound) = state.keys_upto.get_mut(partition as usize) {
                    *bound = upto;
                }
            }
            Ok(keys::Step::Done) => state.key_round = None,
            Err(_) => return,
        }
        if !rx.is_empty() {
            return;
        }
    }
}

/// Runs one group in one transaction and answers every command.
fn commit_group(
    conn: &mut Connection,
    mut batch: Vec<Box<dyn Command>>,
    state: &mut WriterState,
    shared: &Shared,
) {
    shared.transactions.fetch_add(1, Ordering::Relaxed);
    shared
        .commands
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return answer_all(batch, || from_sqlite_ref(&e)),
    };
    let head_before = state.head;
    state.touched.clear();
    state.foreign = false;
    state.fresh.clear();
    state.collecting = shared.handoff.anyone_waiting();
    let mut sound = true;
    for cmd in &mut batch {
        sound = if cmd.guarded() {
            run_in_savepoint(&tx, cmd.as_mut(), state)
        } else {
            state.poisoned = false;
            cmd.run(&tx, state);
            !state.poisoned
        };
        if !sound {
            break;
        }
    }
    // A command whose failure could not be undone on its own takes the group down with it:
    // the others did nothing wrong and may retry.
    if !sound {
        let _ = tx.rollback();
        state.rewind(head_before);
        return answer_all(batch, || {
            let why = "another command of its group commit failed after writing";
            Error::unavailable("the write was rolled back; retry it", why)
        });
    }
    let offered = shared.handoff.offer(&tx, &state.fresh);
    state.fresh.clear();
    match tx.commit() {
        Ok(()) => {
            // Hand-offs before heads: a waiter woken by the head finds its deliveries.
            shared.handoff.publish(offered);
            if state.foreign {
                shared.head.publish_all(state.head);
            } else {
                shared.head.publish(state.head, &state.touched);
            }
            batch.into_iter().for_each(|c| c.finish(None));
        }
        Err(e) => {
            state.rewind(head_before);
            answer_all(batch, || from_sqlite_ref(&e));
        }
    }
}

/// Answers every command of a group that did not commit.
fn answer_all(batch: Vec<Box<dyn Command>>, error: impl Fn() -> Error) {
    batch.into_iter().for_each(|c| c.finish(Some(error())));
}

/// One command in its own savepoint: a failure rolls back only this command. False when the
/// savepoint could not be closed and the transaction must not commit.
fn run_in_savepoint(tx: &Transaction<'_>, cmd: &mut dyn Command, state: &mut WriterState) -> bool {
    if let Err(e) = exec(tx, "SAVEPOINT cmd") {
        cmd.reject(e);
        return true;
    }
    let head = state.head;
    let ended = if cmd.run(tx, state) {
        exec(tx, "RELEASE cmd")
    } else {
        state.rewind(head);
        exec(tx, "ROLLBACK TO cmd").and_then(|()| exec(tx, "RELEASE cmd"))
    };
    match ended {
        Ok(()) => true,
        Err(e) => {
            cmd.reject(e);
            false
        }
    }
}

/// Runs one parameterless statement through the statement cache (savepoints are frequent).
pub(crate) fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(drop)
        .map_err(crate::error::from_sqlite)
}
