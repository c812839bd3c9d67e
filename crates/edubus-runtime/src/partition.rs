//! One leased partition: fetch, per-key ordered dispatch, settlement and the cursor.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edubus_core::{
    Delivery, Error, EventStore, Fetched, Lease, Outcome, Result, Settlement, Transport,
};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::delivery::{Done, Finished, Start, deliver};
use crate::worker::SubState;

/// What the subscription asks of a partition task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    /// Shutdown: stop fetching, finish in-flight work within the grace period, settle it.
    Drain,
    /// The lease was taken over: stop at once, settle nothing.
    Lost,
}

/// Start times of running handlers, for stalled-partition detection.
pub(crate) type Busy = Arc<Mutex<HashMap<u64, Timestamp>>>;

/// The subscription's handle on a running partition task.
pub(crate) struct PartitionHandle {
    epoch: u64,
    mode: watch::Sender<Mode>,
    busy: Busy,
    join: JoinHandle<Option<Lease>>,
}

impl PartitionHandle {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the oldest running handler started, if any runs.
    pub(crate) fn busy_since(&self) -> Option<Timestamp> {
        let busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.values().min().copied()
    }

    /// The lease was lost: the task stops without settling.
    pub(crate) fn lost(&self) {
        let _ = self.mode.send(Mode::Lost);
    }

    /// Drains the task and returns its lease for release.
    pub(crate) async fn stop(self) -> Option<Lease> {
        let _ = self.mode.send(Mode::Drain);
        self.join.await.ok().flatten()
    }
}

/// Spawns the task delivering `lease`'s partition.
pub(crate) fn run_partition<B: EventStore + Transport>(
    sub: Arc<SubState<B>>,
    lease: Lease,
) -> PartitionHandle {
    let (mode_tx, mode_rx) = watch::channel(Mode::Run);
    let busy: Busy = Arc::default();
    let epoch = lease.epoch;
    let part = Part::new(sub, lease, Arc::clone(&busy));
    let join = tokio::spawn(part.run(mode_rx));
    PartitionHandle {
        epoch,
        mode: mode_tx,
        busy,
        join,
    }
}

type FetchResult = Result<Fetched>;

/// How long a partition waits before fetching again after a failed fetch.
const FETCH_RETRY: Duration = Duration::from_millis(200);
type SettleBatch<W> = Vec<(Settlement<W>, Meta)>;
type SettleResult = (Vec<Meta>, Result<Vec<Result<()>>>);

/// What the task remembers of a delivery while it is being settled.
pub(crate) struct Meta {
    pub(crate) delivery: Delivery,
    pub(crate) key: Arc<str>,
}

struct Part<B: Transport> {
    sub: Arc<SubState<B>>,
    lease: Lease,
    busy: Busy,
    /// The highest [`Delivery::seq`] fetched.
    last_fetched: u64,
    last_requeue: u64,
    /// Fetched sequence numbers not yet settled: the cursor stays below the lowest.
    undone: BTreeSet<u64>,
    /// Ordered mode: deliveries waiting behind the running one of their key.
    queues: HashMap<Arc<str>, VecDeque<Delivery>>,
    requeued: HashSet<u64>,
    /// Deliveries in progress, polled by this task: a no-op handler finishes without a task of
    /// its own, and the deliveries finished by one wake-up settle together.
    running: FuturesUnordered<BoxFuture<'static, Done<B::Work>>>,
    to_settle: SettleBatch<B::Work>,
    fetching: Option<JoinHandle<FetchResult>>,
    settling: Option<JoinHandle<SettleResult>>,
    next_token: u64,
}

impl<B: EventStore + Transport> Part<B> {
    fn new(sub: Arc<SubState<B>>, lease: Lease, busy: Busy) -> Self {
        Self {
            last_fetched: lease.cursor,
            last_requeue: 0,
            sub,
            lease,
            busy,
            undone: BTreeSet::new(),
            queues: HashMap::new(),
            requeued: HashSet::new(),
            running: FuturesUnordered::new(),
            to_settle: Vec::new(),
            fetching: None,
            settling: None,
            next_token: 0,
        }
    }

    async fn run(mut self, mut mode_rx: watch::Receiver<Mode>) -> Option<Lease> {
        let mut mode = Mode::Run;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if mode == Mode::Run && self.fetching.is_none() && self.has_room() {
                self.start_fetch();
            }
            self.start_settle();
            if mode == Mode::Drain
                && self.running.is_empty()
                && self.settling.is_none()
                && self.to_settle.is_empty()
            {
                break;
            }
            tokio::select! {
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.on_done(done);
                    while let Some(Some(done)) = self.running.next().now_or_never() {
                        self.on_done(done);
                    }
                }
                res = wait_opt(&mut self.settling) => {
                    if !self.on_settled(res) { mode = Mode::Lost; }
                }
                res = wait_opt(&mut self.fetching), if mode == Mode::Run => {
                    if !self.on_fetched(res) { mode = Mode::Lost; }
                }
                () = sleep_until_opt(deadline) => self.running.clear(),
                changed = mode_rx.changed() => {
                    let next = if changed.is_ok() { *mode_rx.borrow() } else { Mode::Drain };
                    if next == Mode::Drain && mode == Mode::Run {
                        deadline = Some(tokio::time::Instant::now() + self.sub.grace);
                        self.queues.values_mut().for_each(VecDeque::clear);
                    }
                    mode = if mode == Mode::Lost { Mode::Lost } else { next };
                }
            }
            if mode == Mode::Lost {
                self.running.clear();
                return None;
            }
            if mode == Mode::Drain
                && let Some(f) = self.fetching.take()
            {
                f.abort();
            }
        }
        Some(self.lease)
    }

    fn has_room(&self) -> bool {
        self.undone.len() + self.requeued.len() < self.sub.options.batch_size * 4
    }

    fn start_fetch(&mut self) {
        let bus = self.sub.bus.clone();
        let lease = self.lease.clone();
        let (after, after_requeue) = (self.last_fetched, self.last_requeue);
        let max = self.sub.options.batch_size;
        let partition = lease.partition;
        self.fetching = Some(tokio::spawn(async move {
            let fetched = match bus.backend().fetch(&lease, after, after_requeue, max).await {
                Ok(fetched) => fetched,
                Err(e @ Error::Conflict { .. }) => return Err(e),
                Err(e) => {
                    // The backend is unreachable or failing: do not spin on it.
                    tokio::time::sleep(FETCH_RETRY).await;
                    return Err(e);
                }
            };
            if fetched.deliveries.is_empty() {
                let idle = Duration::from_millis(250);
                bus.backend()
                    .wait(Some(partition), fetched.scanned_to, idle)
                    .await;
            }
            Ok(fetched)
        }));
    }

    /// Takes in what a fetch returned; false when the lease was lost.
    fn on_fetched(
        &mut self,
        res: std::result::Result<FetchResult, tokio::task::JoinError>,
    ) -> bool {
        let fetched = match res {
            Ok(Ok(v)) => v,
            Ok(Err(Error::Conflict { message })) => {
                tracing::info!(subscription = %self.sub.name, partition = self.lease.partition, %message, "lease lost");
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(subscription = %self.sub.name, error = %e, "fetch failed");
                return true;
            }
            Err(_) => return true,
        };
        for d in fetched.deliveries {
            self.accept(d);
        }
        // Every matching event up to `scanned_to` was handed out: none is missing below it.
        self.last_fetched = self.last_fetched.max(fetched.scanned_to);
        true
    }

    fn accept(&mut self, d: Delivery) {
        match d.requeue_id {
            Some(id) => {
                self.last_requeue = self.last_requeue.max(id);
                if !self.requeued.insert(id) {
                    return;
                }
            }
            None if d.seq <= self.last_fetched => return,
            None => {
                self.last_fetched = d.seq;
                self.undone.insert(d.seq);
            }
        }
        let key: Arc<str> = Arc::from(d.event.key.as_str());
        if !self.sub.options.ordered {
            return self.spawn(d, key, None);
        }
        match self.queues.get_mut(&key) {
            Some(waiting) => waiting.push_back(d),
            None => {
                self.queues.insert(Arc::clone(&key), VecDeque::new());
                self.spawn(d, key, None);
            }
        }
    }

    fn spawn(&mut self, d: Delivery, key: Arc<str>, prior_error: Option<String>) {
        self.next_token += 1;
        let start = match prior_error {
            Some(error) => Start::Retry(error),
            None if d.handled => Start::Seen,
            None => Start::Fresh,
        };
        let fut = deliver(
            Arc::clone(&self.sub),
            self.lease.clone(),
            d,
            key,
            Arc::clone(&self.busy),
            self.next_token,
            start,
        );
        self.running.push(Box::pin(fut));
    }

    fn on_done(&mut self, done: Done<B::Work>) {
        let outcome = match done.finished {
            Finished::Handled { work, caused } => Outcome::Handled { work, caused },
            Finished::Duplicate => Outcome::Duplicate,
            Finished::Dead(letter) => Outcome::Dead(letter),
        };
        let settlement = Settlement {
            position: done.delivery.event.position,
            seq: done.delivery.seq,
            event_id: done.delivery.event.envelope.id.clone(),
            requeue_id: done.delivery.requeue_id,
            outcome,
        };
        self.to_settle.push((
            settlement,
            Meta {
                delivery: done.delivery,
                key: done.key,
            },
        ));
    }

    /// Sends what finished to the transport, one settle call at a time.
    fn start_settle(&mut self) {
        if self.settling.is_some() || self.to_settle.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.to_settle);
        let settling: HashSet<u64> = batch
            .iter()
            .filter(|(s, _)| s.requeue_id.is_none())
            .map(|(s, _)| s.seq)
            .collect();
        let cursor = self
            .undone
            .iter()
            .find(|p| !settling.contains(p))
            .map_or(self.last_fetched, |p| p - 1);
        let (settlements, metas): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let bus = self.sub.bus.clone();
        let lease = self.lease.clone();
        self.settling = Some(tokio::spawn(async move {
            let res = bus.backend().settle(&lease, settlements, cursor).await;
            (metas, res)
        }));
    }

    /// Applies a settle result; false when the lease was lost.
    fn on_settled(
        &mut self,
        res: std::result::Result<SettleResult, tokio::task::JoinError>,
    ) -> bool {
        let Ok((metas, res)) = res else { return true };
        match res {
            Ok(results) => {
                for (meta, result) in metas.into_iter().zip(results) {
                    self.settled(meta, result);
                }
                true
            }
            Err(Error::Conflict { message }) => {
                tracing::info!(subscription = %self.sub.name, partition = self.lease.partition, %message, "lease lost");
                false
            }
            Err(e) => {
                tracing::warn!(subscription = %self.sub.name, error = %e, "settle failed; retrying the deliveries");
                for meta in metas {
                    self.retry(meta, format!("settlement failed: {e}"));
                }
                true
            }
        }
    }

    fn settled(&mut self, meta: Meta, result: Result<()>) {
        if let Err(e) = result {
            return self.retry(meta, format!("transactional work failed: {e}"));
        }
        match meta.delivery.requeue_id {
            Some(id) => {
                self.requeued.remove(&id);
            }
            None => {
                self.undone.remove(&meta.delivery.seq);
            }
        }
        if self.sub.options.ordered {
            self.next_of(&meta.key);
        }
    }

    /// Runs the delivery again: its settlement failed, so the key stays held.
    fn retry(&mut self, meta: Meta, error: String) {
        self.sub.stats.failed.fetch_add(1, Ordering::Relaxed);
        let mut d = meta.delivery;
        d.delivery_count += 1;
        self.spawn(d, meta.key, Some(error));
    }

    fn next_of(&mut self, key: &Arc<str>) {
        let next = self.queues.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some(d) => self.spawn(d, Arc::clone(key), None),
            None => {
                self.queues.remove(key);
            }
        }
    }
}

async fn wait_opt<T: Send + 'static>(
    slot: &mut Option<JoinHandle<T>>,
) -> std::result::Result<T, tokio::task::JoinError> {
    match slot {
        Some(handle) => {
            let res = handle.await;
            *slot = None;
            res
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
