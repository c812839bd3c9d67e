//! Settlement: transactional work, caused events and inbox rows commit together; a failing
//! settlement rolls back alone and holds the cursor; failures, stats and trace states.

mod common;

use common::{append, handled, leases, open, spec};
use edubus_core::{
    Attempt, DeadLetter, DeadReason, DeliveryState, EventStore, Lease, Outcome, ReadQuery,
    Settlement, StartFrom, Transport,
};
use edubus_sqlite::rusqlite::{Connection, Transaction};
use edubus_sqlite::{SqliteBackend, SqliteWork};

/// Work that records `id` in a handler-owned table and returns a caused event when `ok`.
fn work(id: &str, ok: bool) -> SqliteWork {
    let id = id.to_owned();
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute_batch("CREATE TABLE IF NOT EXISTS handled (id TEXT PRIMARY KEY)")?;
        tx.execute("INSERT INTO handled (id) VALUES (?1)", [&id])?;
        if !ok {
            return Err("the handler's write failed".into());
        }
        // Read-your-writes: the caused event is decided on the transaction's own state.
        let seen: i64 = tx.query_row("SELECT count(*) FROM handled", [], |r| r.get(0))?;
        Ok(vec![append("handled.counted", &format!("count-{seen}"))])
    })
}

fn with_work(position: u64, id: &str, work: SqliteWork) -> Settlement<SqliteWork> {
    let caused = vec![append("audit.noted", id)];
    Settlement {
        outcome: Outcome::Handled {
            work: Some(work),
            caused,
        },
        ..handled(position, id)
    }
}

/// The lease of the partition of `key`.
async fn lease_of(bus: &SqliteBackend, sub: &str, key: &str) -> Lease {
    let p = edubus_core::partition_of(key, bus.partitions());
    let all = leases(bus, sub, "w").await;
    all.into_iter().find(|l| l.partition == p).unwrap()
}

fn handled_ids(dir: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(dir.join("edubus.db")).unwrap();
    let mut st = conn.prepare("SELECT id FROM handled ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn work_caused_events_and_inbox_commit_together_and_a_failure_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &["attendance.marked"]))
        .await
        .unwrap();
    let lease = lease_of(&bus, "s", "k").await;
    let events: Vec<_> = (0..3).map(|_| append("attendance.marked", "k")).collect();
    bus.append(events.clone()).await.unwrap();
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let (p, id): (Vec<u64>, Vec<String>) = got
        .iter()
        .map(|d| (d.event.position, d.event.envelope.id.clone()))
        .unzip();

    let settlements = vec![
        with_work(p[0], &id[0], work(&id[0], true)),
        with_work(p[1], &id[1], work(&id[1], false)),
        with_work(p[2], &id[2], work(&id[2], true)),
    ];
    let results = bus.settle(&lease, settlements, p[2]).await.unwrap();
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    assert_eq!(handled_ids(dir.path()), {
        let mut ids = vec![id[0].clone(), id[2].clone()];
        ids.sort();
        ids
    });
    let caused = bus
        .read(ReadQuery {
            after: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = caused.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, [id[0].as_str(), "count-1", id[2].as_str(), "count-2"]);
    assert!(caused.iter().all(|r| r.envelope.id != id[1]));

    let now = lease_of(&bus, "s", "k").await;
    assert_eq!(
        now.cursor, p[0],
        "the cursor stops below the failed settlement"
    );
    let pairs: Vec<_> = p.iter().copied().zip(id.iter().cloned()).collect();
    let seen = bus.seen(&now, &pairs).await.unwrap();
    assert_eq!(
        seen,
        [id[0].clone(), id[2].clone()],
        "inbox row above the cursor"
    );

    let retry = vec![with_work(p[1], &id[1], work(&id[1], true))];
    let results = bus.settle(&now, retry, p[2]).await.unwrap();
    assert!(results[0].is_ok());
    assert_eq!(lease_of(&bus, "s", "k").await.cursor, p[2]);
    bus.close().await;
}

#[tokio::test]
async fn failures_survive_and_count_until_settled() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &[])).await.unwrap();
    let lease = lease_of(&bus, "s", "k").await;
    bus.append(vec![append("a.happened", "k")]).await.unwrap();
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let position = got[0].event.position;
    for number in 1..=2 {
        let attempt = Attempt {
            number,
            at: jiff::Timestamp::now(),
            consumer: "w".into(),
            error: format!("boom {number}"),
        };
        bus.record_failure(&lease, position, attempt).await.unwrap();
    }
    let again = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again[0].delivery_count, 3);
    let history = bus.failures("s", position).await.unwrap();
    assert_eq!(history.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);

    let id = got[0].event.envelope.id.clone();
    bus.settle(&lease, vec![handled(position, &id)], position)
        .await
        .unwrap();
    assert!(bus.failures("s", position).await.unwrap().is_empty());
    bus.close().await;
}

#[tokio::test]
async fn stats_and_states_follow_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &["attendance.marked"]))
        .await
        .unwrap();
    let lease = lease_of(&bus, "s", "k").await;
    let batch = vec![
        append("attendance.marked", "k"),
        append("attendance.marked", "k"),
        append("grade.posted", "k"),
    ];
    bus.append(batch).await.unwrap();
    let stats = &bus.stats().await.unwrap()[0];
    assert_eq!((stats.lag, stats.pending, stats.dlq_depth), (2, 0, 0));
    let marked_at = bus.read(ReadQuery::default()).await.unwrap()[1].recorded_at;
    assert_eq!(stats.last_event_at, Some(marked_at));
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    bus.append(vec![append("grade.posted", "k")]).await.unwrap();
    let stats = &bus.stats().await.unwrap()[0];
    assert_eq!(
        stats.last_event_at,
        Some(marked_at),
        "the newest event of a subscribed type"
    );

    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(got.len(), 2, "only the subscribed type");
    assert_eq!(bus.stats().await.unwrap()[0].pending, 2);
    let (first, second) = (&got[0].event, &got[1].event);
    let letter = DeadLetter {
        subscription: "s".into(),
        handler: "h".into(),
        reason: DeadReason::Rejected,
        error: "nope".into(),
        attempts: Vec::new(),
        stream: second.stream.clone(),
        partition: second.partition,
        position: second.position,
        event_id: second.envelope.id.clone(),
        event_type: second.envelope.event_type.clone(),
    };
    let dead = Settlement {
        outcome: Outcome::Dead(letter),
        ..handled(second.position, &second.envelope.id)
    };
    let settle = vec![handled(first.position, &first.envelope.id), dead];
    bus.settle(&lease, settle, second.position).await.unwrap();
    let stats = &bus.stats().await.unwrap()[0];
    assert_eq!((stats.lag, stats.pending, stats.dlq_depth), (0, 0, 1));

    let all = bus.read(ReadQuery::default()).await.unwrap();
    let states: Vec<_> = bus
        .states(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|mut s| s.remove(0).1)
        .collect();
    assert_eq!(states[0], DeliveryState::Handled);
    assert!(matches!(states[1], DeliveryState::DeadLettered { .. }));
    assert_eq!(states[2], DeliveryState::NotSubscribed);
    bus.close().await;
}

#[tokio::test]
async fn a_subscription_to_several_types_fetches_and_counts_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &["attendance.marked", "grade.posted"]))
        .await
        .unwrap();
    let lease = lease_of(&bus, "s", "k").await;
    let types = [
        "attendance.marked",
        "audit.noted",
        "grade.posted",
        "audit.noted",
        "attendance.marked",
    ];
    let batch = types.iter().map(|ty| append(ty, "k")).collect();
    let stored = bus.append(batch).await.unwrap();
    let counts = |bus: SqliteBackend| async move {
        let stats = &bus.stats().await.unwrap()[0];
        (stats.lag, stats.pending)
    };
    assert_eq!(counts(bus.clone()).await, (3, 0));

    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let got_types: Vec<&str> = got
        .iter()
        .map(|d| d.event.envelope.event_type.as_str())
        .collect();
    assert_eq!(
        got_types,
        ["attendance.marked", "grade.posted", "attendance.marked"]
    );
    assert_eq!(counts(bus.clone()).await, (3, 3));
    let settle = got
        .iter()
        .map(|d| handled(d.event.position, &d.event.envelope.id))
        .collect();
    let last = stored[4].position;
    bus.settle(&lease, settle, last).await.unwrap();
    assert_eq!(counts(bus.clone()).await, (0, 0));

    // New types: both counters are recounted from the log, then kept by appends.
    let all = ["attendance.marked", "grade.posted", "audit.noted"];
    bus.register(&spec("s", &all)).await.unwrap();
    assert_eq!(counts(bus.clone()).await, (0, 0));
    bus.append(vec![append("audit.noted", "k"), append("other.type", "k")])
        .await
        .unwrap();
    assert_eq!(counts(bus.clone()).await, (1, 0));
    bus.close().await;
}

#[tokio::test]
async fn a_subscription_from_the_end_skips_earlier_events() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.append(vec![append("a.happened", "k")]).await.unwrap();
    let mut late = spec("late", &[]);
    late.start = StartFrom::End;
    bus.register(&late).await.unwrap();
    assert_eq!(bus.subscriptions().await.unwrap(), [late.clone()]);
    let lease = lease_of(&bus, "late", "k").await;
    assert!(
        bus.fetch(&lease, lease.cursor, 0, 10)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    bus.append(vec![append("a.happened", "k")]).await.unwrap();
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(got[0].event.position, 2);
    let first = bus.read(ReadQuery::default()).await.unwrap();
    let states = bus.states(&first[..1]).await.unwrap();
    assert_eq!(
        states[0],
        [("late".to_owned(), DeliveryState::NotSubscribed)]
    );
    bus.close().await;
}

#[tokio::test]
async fn lag_stays_exact_across_registration_settlement_and_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let mut batch: Vec<_> = (0..3)
        .map(|i| append("attendance.marked", &format!("k{i}")))
        .collect();
    batch.extend((0..2).map(|i| append("grade.posted", &format!("k{i}"))));
    bus.append(batch).await.unwrap();
    let lag = |bus: SqliteBackend| async move { bus.stats().await.unwrap()[0].lag };

    bus.register(&spec("s", &["attendance.marked"]))
        .await
        .unwrap();
    assert_eq!(lag(bus.clone()).await, 3, "counted at registration");
    bus.register(&spec("s", &[])).await.unwrap();
    assert_eq!(lag(bus.clone()).await, 5, "recounted when the types change");

    let lease = lease_of(&bus, "s", "k0").await;
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(got.len(), 2, "k0 has one event of each type");
    let last = got[1].event.position;
    let caused = Settlement {
        outcome: Outcome::Handled {
            work: None,
            caused: vec![append("x.caused", "other")],
        },
        ..handled(got[0].event.position, &got[0].event.envelope.id)
    };
    let settle = vec![caused, handled(last, &got[1].event.envelope.id)];
    bus.settle(&lease, settle, last).await.unwrap();
    assert_eq!(lag(bus.clone()).await, 5 - 2 + 1, "two settled, one caused");

    let other = open(dir.path()).await;
    other.append(vec![append("a.happened", "z")]).await.unwrap();
    assert_eq!(
        lag(bus.clone()).await,
        5,
        "appends of another process count too"
    );
    other.close().await;
    bus.close().await;
}
