//! The production deployment: PostgreSQL is the event store (outbox, inbox, audit), Redis
//! Streams the transport, and a relay moves committed events from one to the other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use edubus_core::{
    Append, Appended, Attempt, ConsumerId, DeadLetterEntry, DeadLetterQueue, DeliveryState, Error,
    EventStore, Fetched, Lease, LeaseOptions, Outcome, Position, ReadQuery, Recorded, Replay,
    Result, Settlement, SubscriptionSpec, SubscriptionStats, Transport, partition_of,
};
use edubus_postgres::{Commit, Committed, PgConfig, PgStore, PgWork, Relay, RelayOptions, Sink};
use jiff::Timestamp;
use serde_json::json;
use tokio::sync::watch;

use crate::{RedisConfig, RedisStreams};

impl Sink for RedisStreams {
    async fn publish(&self, events: Vec<Recorded>) -> Result<()> {
        RedisStreams::publish(self, &events).await
    }
}

/// PostgreSQL store + Redis Streams transport, with a relay running in this process (several
/// processes may relay at once). Cheap to clone; the relay stops when the last clone drops.
#[derive(Clone)]
pub struct Production {
    inner: Arc<Inner>,
}

struct Inner {
    store: PgStore,
    redis: RedisStreams,
    /// Dropping it stops this process's relay.
    _relay: Option<watch::Sender<bool>>,
}

impl std::fmt::Debug for Production {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Production")
            .field("store", &self.inner.store)
            .field("redis", &self.inner.redis)
            .finish_non_exhaustive()
    }
}

impl Production {
    /// Connects to both servers (applying the PostgreSQL migrations) and starts a relay with
    /// `relay` options; `None` runs no relay in this process.
    pub async fn open(
        pg: PgConfig,
        redis: RedisConfig,
        relay: Option<RelayOptions>,
    ) -> Result<Self> {
        if pg.partitions != redis.partitions {
            return Err(Error::invalid(format!(
                "PostgreSQL and Redis disagree on partitions: {} and {}",
                pg.partitions, redis.partitions
            )));
        }
        let store = PgStore::connect(pg).await?;
        let redis = RedisStreams::connect(redis).await?;
        let relay = relay.map(|options| {
            let (stop, mut stopped) = watch::channel(false);
            let relay = Relay::new(store.clone(), redis.clone(), options);
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = relay.run(shutdown).await {
                    tracing::error!(error = %e, "the outbox relay stopped");
                }
            });
            stop
        });
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                redis,
                _relay: relay,
            }),
        })
    }

    /// The event store.
    pub fn store(&self) -> &PgStore {
        &self.inner.store
    }

    /// The transport.
    pub fn redis(&self) -> &RedisStreams {
        &self.inner.redis
    }

    /// Runs a replayed delivery's work and appends its events without an inbox row: a replay
    /// asks for the handler to run again.
    async fn commit_replay(&self, work: Option<PgWork>, caused: Vec<Append>) -> Result<()> {
        if work.is_none() && caused.is_empty() {
            return Ok(());
        }
        let mut client = self
            .store()
            .pool()
            .get()
            .await
            .map_err(|e| Error::unavailable("no PostgreSQL connection", e.to_string()))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::unavailable("cannot begin a transaction", e))?;
        let mut events = match work {
            Some(work) => work(&tx).await.map_err(|e| {
                Error::invalid(format!("the handler's transactional work failed: {e}"))
            })?,
            None => Vec::new(),
        };
        events.extend(caused);
        if !events.is_empty() {
            self.store().append_in(&tx, events).await?;
        }
        tx.commit()
            .await
            .map_err(|e| Error::unavailable("cannot commit", e))
    }
}

impl EventStore for Production {
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>> {
        self.store().append(batch).await
    }

    async fn read(&self, query: ReadQuery) -> Result<Vec<Recorded>> {
        self.store().read(query).await
    }

    async fn get(&self, id: &str) -> Result<Option<Recorded>> {
        self.store().get(id).await
    }

    async fn head(&self) -> Result<Position> {
        self.store().head().await
    }
}

impl Transport for Production {
    type Work = PgWork;

    fn partitions(&self) -> u32 {
        self.redis().partitions()
    }

    async fn register(&self, spec: &SubscriptionSpec) -> Result<()> {
        self.redis().register(spec).await
    }

    async fn rebalance(
        &self,
        subscription: &str,
        consumer: &ConsumerId,
        options: LeaseOptions,
        busy_since: &[(u32, Timestamp)],
    ) -> Result<Vec<Lease>> {
        let out = self
            .redis()
            .rebalance(subscription, consumer, options, busy_since)
            .await?;
        Ok(out.leases)
    }

    async fn release(&self, consumer: &ConsumerId, leases: &[Lease]) -> Result<()> {
        self.redis().release(consumer, leases).await
    }

    async fn fetch(
        &self,
        lease: &Lease,
        after: u64,
        after_requeue: u64,
        max: usize,
    ) -> Result<Fetched> {
        let mut fetched = self.redis().fetch(lease, after, after_requeue, max).await?;
        for (stream, id) in self.redis().take_lost() {
            tracing::warn!(subscription = %lease.subscription, stream, id, "a pending entry was trimmed before it was handled");
            let detail = json!({ "stream": stream, "entry": id });
            let audit = self.store().record_audit(
                "edubus",
                "transport.pending_trimmed",
                &lease.subscription,
                detail,
            );
            if let Err(e) = audit.await {
                tracing::warn!(error = %e, "cannot audit a trimmed pending entry");
            }
        }
        // The Redis inbox knows every settled event. A redelivery may also be an event whose
        // transactional commit reached PostgreSQL's inbox while its acknowledgement did not.
        let ids: Vec<String> = fetched
            .deliveries
            .iter()
            .filter(|d| !d.replay && !d.handled && d.delivery_count > 1)
            .map(|d| d.event.envelope.id.clone())
            .collect();
        if !ids.is_empty() {
            // The entries are this consumer's now: if the inbox cannot be asked, deliver them
            // anyway (settlement's inbox insert still catches a duplicate) rather than drop them.
            let seen: HashSet<String> = match self.store().seen(&lease.subscription, &ids).await {
                Ok(seen) => seen.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(subscription = %lease.subscription, error = %e, "inbox check failed; delivering without it");
                    HashSet::new()
                }
            };
            for d in &mut fetched.deliveries {
                d.handled |= !d.replay && seen.contains(&d.event.envelope.id);
            }
        }
        Ok(fetched)
    }

    async fn seen(&self, lease: &Lease, deliveries: &[(Position, String)]) -> Result<Vec<String>> {
        let ids: Vec<String> = deliveries.iter().map(|(_, id)| id.clone()).collect();
        let mut seen = self.store().seen(&lease.subscription, &ids).await?;
        let pairs: Vec<(u32, &str)> = ids
            .iter()
            .map(|id| (lease.partition, id.as_str()))
            .collect();
        let in_redis = self.redis().handled(&lease.subscription, &pairs).await?;
        seen.extend(in_redis.into_iter().map(str::to_owned));
        seen.sort_unstable();
        seen.dedup();
        Ok(seen)
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlements: Vec<Settlement<PgWork>>,
        _cursor: u64,
    ) -> Result<Vec<Result<()>>> {
        // A settlement without transactional work, caused events or a dead letter writes
        // nothing to PostgreSQL: the acknowledgement records it in the Redis inbox.
        if settlements.iter().any(writes_to_store) {
            // A stale lease commits nothing. (Should it move between this check and the
            // acknowledgement, the new owner's redelivery finds the inbox rows.)
            self.redis().check_lease(lease).await?;
        }
        let sub = &lease.subscription;
        let mut results: Vec<Result<()>> = Vec::with_capacity(settlements.len());
        let mut commits = Vec::new();
        let mut committing = Vec::new();
        let mut keys = Vec::with_capacity(settlements.len());
        for (i, s) in settlements.into_iter().enumerate() {
            let inbox = s.requeue_id.is_none() && !matches!(s.outcome, Outcome::Dead(_));
            keys.push((
                s.seq,
                s.requeue_id,
                s.position,
                inbox.then(|| s.event_id.clone()),
            ));
            results.push(Ok(()));
            match s.outcome {
                Outcome::Handled { work, caused } if s.requeue_id.is_some() => {
                    results[i] = self.commit_replay(work, caused).await;
                }
                Outcome::Handled { work, caused } if work.is_some() || !caused.is_empty() => {
                    committing.push(i);
                    commits.push(Commit {
                        event_id: s.event_id,
                        work,
                        caused,
                    });
                }
                Outcome::Handled { .. } | Outcome::Duplicate => {}
                Outcome::Dead(letter) => {
                    results[i] = self.park(&letter, &s.event_id).await;
                }
            }
        }
        if !commits.is_empty() {
            let committed = self.store().commit(sub, commits).await;
            for (i, r) in committing.into_iter().zip(committed) {
                results[i] = r.map(|c| match c {
                    Committed::Handled(_) | Committed::Duplicate => (),
                });
            }
        }
        let (mut seqs, mut requeued, mut handled) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fetched, mut positions) = (Vec::new(), Vec::new());
        for ((seq, requeue_id, position, inbox), r) in keys.iter().zip(&results) {
            if r.is_err() {
                continue;
            }
            match requeue_id {
                Some(id) => {
                    requeued.push(*id);
                    positions.push(*position);
                }
                None => {
                    seqs.push(*seq);
                    fetched.push(*position);
                }
            }
            handled.extend(inbox.as_deref());
        }
        positions.extend(self.redis().known_failed(sub, &fetched));
        self.redis().ack(lease, &seqs, &requeued, &handled).await?;
        self.redis().clear_failures(sub, &positions).await?;
        Ok(results)
    }

    async fn record_failure(
        &self,
        lease: &Lease,
        position: Position,
        attempt: Attempt,
    ) -> Result<()> {
        self.redis()
            .record_failure(&lease.subscription, position, attempt)
            .await
    }

    async fn failures(&self, subscription: &str, position: Position) -> Result<Vec<Attempt>> {
        self.redis().failures(subscription, position).await
    }

    async fn wait(&self, partition: Option<u32>, _after: u64, timeout: Duration) {
        // A fetch already blocks on Redis for new entries; only a log reader polls.
        if partition.is_none() {
            tokio::time::sleep(timeout.min(Duration::from_millis(100))).await;
        }
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionSpec>> {
        self.redis().subscriptions().await
    }

    async fn states(&self, events: &[Recorded]) -> Result<Vec<Vec<(String, DeliveryState)>>> {
        let subs = self.subscriptions().await?;
        let ids: Vec<String> = events.iter().map(|e| e.envelope.id.clone()).collect();
        let mut per_sub = Vec::with_capacity(subs.len());
        for spec in &subs {
            let mut handled: HashSet<String> = self
                .store()
                .seen(&spec.name, &ids)
                .await?
                .into_iter()
                .collect();
            let pairs: Vec<(u32, &str)> = events
                .iter()
                .map(|e| {
                    (
                        partition_of(&e.key, self.partitions()),
                        e.envelope.id.as_str(),
                    )
                })
                .collect();
            let in_redis = self.redis().handled(&spec.name, &pairs).await?;
            handled.extend(in_redis.into_iter().map(str::to_owned));
            let dead: HashMap<String, u64> = self.redis().dead_letters_by_event(&spec.name).await?;
            per_sub.push((spec, handled, dead));
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let mut row = Vec::with_capacity(subs.len());
            for (spec, handled, dead) in &per_sub {
                let ty = &event.envelope.event_type;
                let state = if !spec.types.is_empty() && !spec.types.contains(ty) {
                    DeliveryState::NotSubscribed
                } else if let Some(id) = dead.get(&event.envelope.id) {
                    DeliveryState::DeadLettered { dlq_id: *id }
                } else if handled.contains(&event.envelope.id) {
                    DeliveryState::Handled
                } else {
                    let attempts = self.redis().failures(&spec.name, event.position).await?;
                    DeliveryState::Pending {
                        attempts: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
                    }
                };
                row.push((spec.name.clone(), state));
            }
            out.push(row);
        }
        Ok(out)
    }

    /// The transport's stats, with the committed events the relay has not moved to Redis yet
    /// counted in the lag of each subscription that takes their type.
    async fn stats(&self) -> Result<Vec<SubscriptionStats>> {
        let mut stats = self.redis().stats().await?;
        let backlog = self.store().outbox_backlog().await?;
        if backlog.is_empty() {
            return Ok(stats);
        }
        let specs = self.subscriptions().await?;
        for s in &mut stats {
            let Some(spec) = specs.iter().find(|spec| spec.name == s.subscription) else {
                continue;
            };
            s.lag += backlog
                .iter()
                .filter(|(ty, _)| spec.types.is_empty() || spec.types.contains(*ty))
                .map(|(_, n)| n)
                .sum::<u64>();
        }
        Ok(stats)
    }

    async fn trim(&self, before: Timestamp) -> Result<u64> {
        self.redis().trim(before).await
    }
}

/// Whether settling `s` writes to PostgreSQL (its work, its caused events, or the stored
/// event of a dead letter), so the lease must be checked before.
fn writes_to_store(s: &Settlement<PgWork>) -> bool {
    match &s.outcome {
        Outcome::Handled { work, caused } => work.is_some() || !caused.is_empty(),
        Outcome::Duplicate => false,
        Outcome::Dead(_) => true,
    }
}

impl Production {
    /// Parks a dead delivery with its stored event.
    async fn park(&self, letter: &edubus_core::DeadLetter, event_id: &str) -> Result<()> {
        let event = self
            .store()
            .get(event_id)
            .await?
            .ok_or_else(|| Error::not_found("event", event_id))?;
        self.redis().dead_letter(letter, &event).await.map(|_| ())
    }
}

impl DeadLetterQueue for Production {
    async fn list(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>> {
        let records = self.redis().dlq_list(subscription, after, limit).await?;
        Ok(records.into_iter().map(|r| r.entry).collect())
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetterEntry>> {
        Ok(self.redis().dlq_get(id).await?.map(|r| r.entry))
    }

    async fn replay(&self, ids: &[u64], actor: &str) -> Result<u64> {
        let mut queued = 0;
        for id in ids {
            queued += self.redis().dlq_replay(&[*id]).await?;
            self.store()
                .record_audit(actor, "dlq.replay", &id.to_string(), json!({}))
                .await?;
        }
        Ok(queued)
    }

    async fn purge(&self, ids: &[u64], actor: &str) -> Result<u64> {
        let mut purged = 0;
        for id in ids {
            let n = self.redis().dlq_purge(&[*id]).await?;
            if n > 0 {
                self.store()
                    .record_audit(actor, "dlq.purge", &id.to_string(), json!({}))
                    .await?;
            }
            purged += n;
        }
        Ok(purged)
    }
}

impl Replay for Production {
    async fn replay(
        &self,
        subscription: &str,
        from: Position,
        since: Option<Timestamp>,
        actor: &str,
    ) -> Result<u64> {
        let spec = self
            .subscriptions()
            .await?
            .into_iter()
            .find(|s| s.name == subscription)
            .ok_or_else(|| Error::not_found("subscription", subscription))?;
        let mut after = from.saturating_sub(1);
        let mut queued = 0;
        loop {
            let page = self
                .store()
                .read(ReadQuery {
                    after,
                    limit: 1000,
                    types: spec.types.clone(),
                    since,
                    ..ReadQuery::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            queued += self.redis().requeue(subscription, &page).await?;
        }
        self.store()
            .record_audit(
                actor,
                "replay",
                subscription,
                json!({ "from": from, "since": since, "queued": queued }),
            )
            .await?;
        Ok(queued)
    }
}
