//! Weighted course averages and their audit trail end to end, on SQLite and on PostgreSQL +
//! Redis.

mod common;

use edubus_core::{DeadReason, Envelope};
use edubus_events::{CoreAuditLogged, GradingUpdated};
use edubus_flows::grading::{CourseGrade, Letter, SUBSCRIPTION};
use edubus_flows::{FlowBackend, NAMESPACE, Table};
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use common::{Env, payload};

const AUDIT: &str = "core.audit.logged";

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn at(minute: i64) -> Timestamp {
    Timestamp::from_second(1_788_000_000 + minute * 60).expect("timestamp")
}

fn grade(
    student: Uuid,
    course: Uuid,
    item: Uuid,
    score: &str,
    weight: &str,
    minute: i64,
) -> GradingUpdated {
    GradingUpdated {
        grade_item_id: item,
        student_id: student,
        score: dec(score),
        weight: dec(weight),
        recorded_at: at(minute),
        recorded_by: Uuid::from_u128(42),
        course_id: course,
    }
}

async fn course<B: FlowBackend>(env: &Env<B>, student: Uuid, course: Uuid) -> CourseGrade {
    env.doc(Table::Grades, CourseGrade::key(student, course))
        .await
        .expect("course grade")
}

fn audit(env: &Envelope) -> CoreAuditLogged {
    payload(env)
}

/// The rounded average as written (two decimals, so `84.40`, not `84.4`).
fn rounded(doc: &CourseGrade) -> Option<String> {
    doc.rounded_average.map(|d| d.to_string())
}

/// The audit record caused by `cause`; exactly one must exist.
fn audit_of<'a>(audits: &'a [Envelope], cause: &Envelope) -> &'a Envelope {
    let found: Vec<&Envelope> = audits
        .iter()
        .filter(|a| a.causationid.as_deref() == Some(cause.id.as_str()))
        .collect();
    assert_eq!(found.len(), 1, "one audit record caused by {}", cause.id);
    found[0]
}

/// 92.5 w 0.3 + 78 w 0.5 + 88.25 w 0.2 = 27.75 + 39 + 17.65 = 84.40 over a weight of 1.0: B.
/// Raising 78 to 96 gives 27.75 + 48 + 17.65 = 93.40: A. Each change logs one audit record
/// caused by its grade event, with the before and after values.
async fn weighted_average_and_audit_follow_each_change<B: FlowBackend>(env: &Env<B>) {
    let (student, math) = (Uuid::now_v7(), Uuid::now_v7());
    let items = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let first = [
        env.publish(&grade(student, math, items[0], "92.5", "0.3", 1))
            .await,
        env.publish(&grade(student, math, items[1], "78", "0.5", 2))
            .await,
        env.publish(&grade(student, math, items[2], "88.25", "0.2", 3))
            .await,
    ];
    env.wait_events(AUDIT, 3).await;
    env.settle().await;

    let doc = course(env, student, math).await;
    assert_eq!(doc.items.len(), 3);
    assert_eq!(doc.average, Some(dec("84.4")));
    assert_eq!(rounded(&doc).as_deref(), Some("84.40"));
    assert_eq!(doc.letter, Some(Letter::B));

    let audits = env.events(AUDIT).await;
    assert_eq!(audits.len(), 3);
    for (cause, item) in first.iter().zip(items) {
        let envelope = audit_of(&audits, cause);
        assert_eq!(envelope.correlation_id(), cause.correlation_id());
        let record = audit(envelope);
        assert_eq!(record.action, "grade.recorded");
        assert_eq!(record.entity_type, "GradeRecord");
        assert_eq!(record.entity_id, item);
        assert_eq!(record.actor_id, Uuid::from_u128(42));
        assert_eq!(
            record.audit_id,
            Uuid::new_v5(&NAMESPACE, cause.id.as_bytes())
        );
        assert_eq!(record.diff["before"], json!(null));
    }
    // The third item completed the course weights: its audit shows the full average.
    let third = audit(audit_of(&audits, &first[2]));
    assert_eq!(
        json!(third.diff),
        json!({
            "before": null,
            "after": { "score": "88.25", "weight": "0.2", "course_average": "84.40", "letter": "B" },
        })
    );

    let change = env
        .publish(&grade(student, math, items[1], "96", "0.5", 10))
        .await;
    env.wait_events(AUDIT, 4).await;
    env.settle().await;
    let doc = course(env, student, math).await;
    assert_eq!(doc.average, Some(dec("93.4")));
    assert_eq!(rounded(&doc).as_deref(), Some("93.40"));
    assert_eq!(doc.letter, Some(Letter::A));
    assert_eq!(doc.items[&items[1]].score, dec("96"));
    assert_eq!(doc.items[&items[1]].recorded_at, at(10));

    let audits = env.events(AUDIT).await;
    assert_eq!(audits.len(), 4);
    let changed = audit(audit_of(&audits, &change));
    assert_eq!(changed.action, "grade.changed");
    assert_eq!(changed.entity_id, items[1]);
    assert_eq!(
        json!(changed.diff),
        json!({
            "before": { "score": "78", "weight": "0.5", "course_average": "84.40", "letter": "B" },
            "after": { "score": "96", "weight": "0.5", "course_average": "93.40", "letter": "A" },
        })
    );

    // A weight change makes a quotient that does not terminate:
    // 27.75 + 48 + 88.25 * 0.4 = 111.05 over a weight of 1.2 is 92.541666...
    env.publish(&grade(student, math, items[2], "88.25", "0.4", 11))
        .await;
    env.wait_events(AUDIT, 5).await;
    env.settle().await;
    let doc = course(env, student, math).await;
    let (points, weights) = (dec("27.75") + dec("48") + dec("35.3"), dec("1.2"));
    assert_eq!(points, dec("111.05"));
    let average = doc.average.expect("an average");
    assert_eq!(average, (points / weights).normalize());
    assert!(
        average.to_string().starts_with("92.541666666666"),
        "{average}"
    );
    assert_eq!(rounded(&doc).as_deref(), Some("92.54"));
    assert_eq!(doc.letter, Some(Letter::A));
}

/// Each course of a student has its own average, and other students' grades do not mix in;
/// weights adding up to zero give no average.
async fn courses_are_averaged_separately<B: FlowBackend>(env: &Env<B>) {
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (math, art, music) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.publish(&grade(ada, math, Uuid::now_v7(), "90", "1", 1))
        .await;
    env.publish(&grade(ada, math, Uuid::now_v7(), "70", "3", 2))
        .await;
    env.publish(&grade(ada, art, Uuid::now_v7(), "55.5", "2", 3))
        .await;
    env.publish(&grade(bob, math, Uuid::now_v7(), "100", "1", 4))
        .await;
    env.publish(&grade(ada, music, Uuid::now_v7(), "80", "0", 5))
        .await;
    env.wait_events(AUDIT, 5).await;
    env.settle().await;

    // (90 * 1 + 70 * 3) / 4 = 75.
    let ada_math = course(env, ada, math).await;
    assert_eq!(ada_math.items.len(), 2);
    assert_eq!(ada_math.average, Some(dec("75")));
    assert_eq!(rounded(&ada_math).as_deref(), Some("75.00"));
    assert_eq!(ada_math.letter, Some(Letter::C));
    let ada_art = course(env, ada, art).await;
    assert_eq!(ada_art.items.len(), 1);
    assert_eq!(ada_art.average, Some(dec("55.5")));
    assert_eq!(ada_art.letter, Some(Letter::F));
    let bob_math = course(env, bob, math).await;
    assert_eq!(bob_math.items.len(), 1);
    assert_eq!(bob_math.average, Some(dec("100")));
    assert_eq!(bob_math.letter, Some(Letter::A));
    let ada_music = course(env, ada, music).await;
    assert_eq!(ada_music.items.len(), 1);
    assert_eq!(ada_music.average, None);
    assert_eq!(ada_music.rounded_average, None);
    assert_eq!(ada_music.letter, None);
}

/// A grade published again under a new event id, an older grade arriving late, and a replay
/// of the whole subscription change no document and log no audit record.
async fn repeats_and_replays_change_nothing<B: FlowBackend>(env: &Env<B>) {
    let (student, math) = (Uuid::now_v7(), Uuid::now_v7());
    let (quiz, exam) = (Uuid::now_v7(), Uuid::now_v7());
    env.publish(&grade(student, math, quiz, "60", "1", 1)).await;
    env.publish(&grade(student, math, exam, "80", "3", 2)).await;
    env.publish(&grade(student, math, quiz, "64", "1", 3)).await;
    env.wait_events(AUDIT, 3).await;
    env.settle().await;
    let before = course(env, student, math).await;
    // (64 + 240) / 4 = 76.
    assert_eq!(before.average, Some(dec("76")));

    // The same grade again (a client retry), then a stale grade recorded before the change.
    let again = env.publish(&grade(student, math, quiz, "64", "1", 3)).await;
    let stale = env.publish(&grade(student, math, quiz, "10", "1", 2)).await;
    env.handled(SUBSCRIPTION, &[&again, &stale]).await;
    assert_eq!(env.events(AUDIT).await.len(), 3);
    assert_eq!(course(env, student, math).await, before);

    assert_eq!(
        env.replay_settled(SUBSCRIPTION).await,
        5,
        "every grade event is delivered again"
    );
    assert_eq!(env.events(AUDIT).await.len(), 3);
    assert_eq!(course(env, student, math).await, before);
}

/// A score above 100, a score below 0 and a negative weight are dead-lettered at once with
/// the reason, write nothing and log nothing; the student's next valid grade still counts.
async fn invalid_grades_are_dead_lettered<B: FlowBackend>(env: &Env<B>) {
    let (student, math) = (Uuid::now_v7(), Uuid::now_v7());
    let item = Uuid::now_v7();
    let too_high = env
        .publish(&grade(student, math, item, "100.5", "1", 1))
        .await;
    let negative = env.publish(&grade(student, math, item, "-3", "1", 2)).await;
    let weightless = env
        .publish(&grade(student, math, item, "50", "-0.25", 3))
        .await;
    env.publish(&grade(student, math, item, "100", "1", 4))
        .await;
    let dead = env.dead_letters(SUBSCRIPTION, 3).await;
    env.wait_events(AUDIT, 1).await;
    env.settle().await;

    assert_eq!(dead.len(), 3, "{dead:?}");
    let expected = [
        (
            &too_high,
            "score 100.5 is outside 0..=100 (scores are percentages)",
        ),
        (
            &negative,
            "score -3 is outside 0..=100 (scores are percentages)",
        ),
        (&weightless, "weight -0.25 is negative"),
    ];
    for (cause, problem) in expected {
        let entry = dead
            .iter()
            .find(|d| d.letter.event_id == cause.id)
            .unwrap_or_else(|| panic!("no dead letter for {}", cause.id));
        assert_eq!(entry.letter.reason, DeadReason::Rejected);
        assert!(
            entry.letter.attempts.len() <= 1,
            "not retried: {:?}",
            entry.letter.attempts
        );
        assert_eq!(
            entry.letter.error,
            format!(
                "grading.updated {}: {problem} for grade item {item} of student {student} in course {math}",
                cause.id
            )
        );
    }
    let doc = course(env, student, math).await;
    assert_eq!(doc.items.len(), 1);
    assert_eq!(doc.average, Some(dec("100")));
    let audits = env.events(AUDIT).await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audit(&audits[0]).action, "grade.recorded");
}

on_both_deployments!(weighted_average_and_audit_follow_each_change);
on_both_deployments!(courses_are_averaged_separately);
on_both_deployments!(repeats_and_replays_change_nothing);
on_both_deployments!(invalid_grades_are_dead_lettered);
