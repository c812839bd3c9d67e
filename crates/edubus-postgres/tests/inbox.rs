//! Inbox commits, recorded failures and the audit trail on a real PostgreSQL.

mod common;

use common::{append, store};
use edubus_core::error::BoxError;
use edubus_core::{Append, Attempt, ErrorKind, EventStore};
use edubus_postgres::{Commit, Committed, PgStore, work};
use serde_json::json;

async fn business_table(store: &PgStore) {
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute("CREATE TABLE grades (event_id text PRIMARY KEY)")
        .await
        .unwrap();
}

async fn grades(store: &PgStore) -> Vec<String> {
    let client = store.pool().get().await.unwrap();
    let rows = client
        .query("SELECT event_id FROM grades ORDER BY event_id", &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Work that records `event_id` in `grades`, then fails when `fail` is set.
fn grade(event_id: &str, fail: bool) -> edubus_postgres::PgWork {
    let id = event_id.to_owned();
    work(move |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO grades VALUES ($1)", &[&id]).await?;
            if fail {
                return Err(BoxError::from("the grade book rejected it"));
            }
            Ok(vec![append("caused-by-work", 7)])
        })
    })
}

#[tokio::test]
async fn a_commit_runs_the_work_once_and_a_redelivery_is_a_duplicate() {
    let (_schema, store) = store("inbox_duplicate").await;
    business_table(&store).await;
    let caused = append("student-1", 1);
    let commit = |work| Commit {
        event_id: "event-1".into(),
        work,
        caused: vec![caused.clone()],
    };

    let first = store
        .commit("grading", vec![commit(Some(grade("event-1", false)))])
        .await;
    let Ok(Committed::Handled(appended)) = &first[0] else {
        panic!("handled: {first:?}");
    };
    assert_eq!(appended.len(), 2, "the work's event and the caused one");
    assert_eq!(appended[1].id, caused.envelope.id);
    assert!(store.get(&appended[0].id).await.unwrap().is_some());

    // The work would fail on the primary key if it ran again: it must not run.
    let again = store
        .commit("grading", vec![commit(Some(grade("event-1", false)))])
        .await;
    assert!(matches!(again[0], Ok(Committed::Duplicate)), "{again:?}");
    let plain_again = store.commit("grading", vec![commit(None)]).await;
    assert!(matches!(plain_again[0], Ok(Committed::Duplicate)));
    assert_eq!(grades(&store).await, vec!["event-1".to_owned()]);
    let seen = store
        .seen("grading", &["event-1".into(), "event-2".into()])
        .await
        .unwrap();
    assert_eq!(seen, vec!["event-1".to_owned()]);
    assert!(
        store
            .seen("other", &["event-1".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_failing_work_rolls_back_its_inbox_row_writes_and_caused_events() {
    let (_schema, store) = store("inbox_failing_work").await;
    business_table(&store).await;
    let caused = append("student-1", 1);
    let kept = append("student-2", 2);
    let results = store
        .commit(
            "grading",
            vec![
                Commit {
                    event_id: "bad".into(),
                    work: Some(grade("bad", true)),
                    caused: vec![caused.clone()],
                },
                Commit {
                    event_id: "good".into(),
                    work: Some(grade("good", false)),
                    caused: vec![kept.clone()],
                },
            ],
        )
        .await;

    let err = results[0].as_ref().expect_err("the work failed");
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("rejected"), "{err}");
    let Ok(Committed::Handled(appended)) = &results[1] else {
        panic!("the good commit is handled: {:?}", results[1]);
    };
    assert_eq!(
        appended.len(),
        2,
        "its work's event and its caused one only"
    );
    let stored = store
        .get(&kept.envelope.id)
        .await
        .unwrap()
        .expect("appended");
    assert_eq!(stored.position, appended[1].position);
    assert_eq!(grades(&store).await, vec!["good".to_owned()]);
    assert!(store.get(&caused.envelope.id).await.unwrap().is_none());
    let seen = store
        .seen("grading", &["bad".into(), "good".into()])
        .await
        .unwrap();
    assert_eq!(seen, vec!["good".to_owned()]);
}

#[tokio::test]
async fn commits_without_work_or_events_record_each_id_once() {
    let (_schema, store) = store("inbox_plain").await;
    let plain = |id: &str| Commit {
        event_id: id.into(),
        work: None,
        caused: vec![],
    };
    store.commit("reports", vec![plain("x")]).await[0]
        .as_ref()
        .unwrap();
    let results = store
        .commit(
            "reports",
            vec![plain("a"), plain("x"), plain("b"), plain("a")],
        )
        .await;
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(Committed::Handled(events)) if events.is_empty() => "handled",
            Ok(Committed::Duplicate) => "duplicate",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(outcomes, ["handled", "duplicate", "handled", "duplicate"]);
    let mut seen = store
        .seen("reports", &["a".into(), "b".into(), "x".into(), "y".into()])
        .await
        .unwrap();
    seen.sort();
    assert_eq!(seen, ["a", "b", "x"]);
}

#[tokio::test]
async fn batched_commits_without_work_fall_back_so_one_conflict_fails_alone() {
    let (_schema, store) = store("inbox_batched").await;
    let stored = append("student-9", 9);
    store.append(vec![stored.clone()]).await.unwrap();
    let mut conflicting = stored.clone();
    conflicting.envelope.data = json!({ "changed": true });
    let fine = append("student-1", 1);
    let commits = vec![
        Commit {
            event_id: "a".into(),
            work: None,
            caused: vec![fine.clone()],
        },
        Commit {
            event_id: "b".into(),
            work: None,
            caused: vec![conflicting],
        },
        Commit {
            event_id: "c".into(),
            work: None,
            caused: vec![],
        },
        Commit {
            event_id: "a".into(),
            work: None,
            caused: vec![],
        },
    ];
    let results = store.commit("reports", commits).await;

    assert!(
        matches!(&results[0], Ok(Committed::Handled(a)) if a.len() == 1 && a[0].id == fine.envelope.id)
    );
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    assert!(matches!(&results[2], Ok(Committed::Handled(a)) if a.is_empty()));
    assert!(matches!(results[3], Ok(Committed::Duplicate)));
    let mut seen = store
        .seen("reports", &["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    seen.sort();
    assert_eq!(seen, vec!["a".to_owned(), "c".to_owned()]);
    assert!(store.get(&fine.envelope.id).await.unwrap().is_some());
}

#[tokio::test]
async fn commits_with_work_whose_events_conflict_fail_alone() {
    let (_schema, store) = store("inbox_grouped_conflict").await;
    business_table(&store).await;
    let stored = append("student-9", 9);
    store.append(vec![stored.clone()]).await.unwrap();
    let mut reused_stored = stored.clone();
    reused_stored.envelope.data = json!({ "changed": true });
    let fine = append("student-1", 1);
    let mut reused_fine = fine.clone();
    reused_fine.envelope.data = json!({ "changed": true });
    let commit = |id: &str, caused: Append| Commit {
        event_id: id.into(),
        work: Some(grade(id, false)),
        caused: vec![caused],
    };
    let results = store
        .commit(
            "grading",
            vec![
                commit("good", fine.clone()),
                commit("reuses-stored", reused_stored),
                commit("reuses-earlier", reused_fine),
                commit("also-good", append("student-2", 2)),
            ],
        )
        .await;

    assert!(
        matches!(&results[0], Ok(Committed::Handled(a)) if a.len() == 2 && a[1].id == fine.envelope.id),
        "{:?}",
        results[0]
    );
    for (i, what) in [(1, "already stored"), (2, "earlier commit")] {
        let err = results[i].as_ref().expect_err("a conflicting commit fails");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    assert!(matches!(&results[3], Ok(Committed::Handled(a)) if a.len() == 2));
    assert_eq!(
        grades(&store).await,
        vec!["also-good".to_owned(), "good".to_owned()],
        "the conflicting commits' work is rolled back"
    );
    let mut seen = store
        .seen(
            "grading",
            &[
                "good".into(),
                "reuses-stored".into(),
                "reuses-earlier".into(),
                "also-good".into(),
            ],
        )
        .await
        .unwrap();
    seen.sort();
    assert_eq!(seen, vec!["also-good".to_owned(), "good".to_owned()]);
    let kept = store.get(&stored.envelope.id).await.unwrap().unwrap();
    assert_eq!(kept.envelope.data, stored.envelope.data);
    let first = store.get(&fine.envelope.id).await.unwrap().unwrap();
    assert_eq!(first.envelope.data, fine.envelope.data);
}

#[tokio::test]
async fn failures_are_recorded_listed_oldest_first_and_cleared() {
    let (_schema, store) = store("failures").await;
    let attempt = |number: u32, error: &str| Attempt {
        number,
        at: jiff::Timestamp::from_second(1_700_000_000 + i64::from(number)).unwrap(),
        consumer: "worker-1".into(),
        error: error.into(),
    };
    store
        .record_failure("grading", 5, &attempt(1, "timeout"))
        .await
        .unwrap();
    store
        .record_failure("grading", 5, &attempt(2, "refused"))
        .await
        .unwrap();
    store
        .record_failure("grading", 6, &attempt(1, "other"))
        .await
        .unwrap();
    store
        .record_failure("reports", 5, &attempt(1, "elsewhere"))
        .await
        .unwrap();

    assert_eq!(
        store.failures("grading", 5).await.unwrap(),
        vec![attempt(1, "timeout"), attempt(2, "refused")]
    );
    assert_eq!(store.clear_failures("grading", &[5, 7]).await.unwrap(), 2);
    assert!(store.failures("grading", 5).await.unwrap().is_empty());
    assert_eq!(store.failures("grading", 6).await.unwrap().len(), 1);
    assert_eq!(store.failures("reports", 5).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_audit_trail_lists_entries_in_order_and_refuses_changes() {
    let (schema, store) = store("audit").await;
    let first = store
        .record_audit("admin", "dlq.replay", "grading", json!({ "ids": [1, 2] }))
        .await
        .unwrap();
    let second = store
        .record_audit("ops", "dlq.purge", "reports", json!({ "ids": [3] }))
        .await
        .unwrap();
    assert!(second > first);

    let all = store.audit_log(0, 0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, first);
    assert_eq!(
        (
            all[0].actor.as_str(),
            all[0].action.as_str(),
            all[0].subject.as_str()
        ),
        ("admin", "dlq.replay", "grading")
    );
    assert_eq!(all[0].detail, json!({ "ids": [1, 2] }));
    let after = store.audit_log(first, 10).await.unwrap();
    assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), vec![second]);
    assert_eq!(store.audit_log(0, 1).await.unwrap().len(), 1);

    let client = schema.connect().await;
    let err = client.batch_execute("DELETE FROM audit").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("append-only"));
}
