//! Chronic-absence escalation end to end, on SQLite and on PostgreSQL + Redis.

mod common;

use edubus_events::{AttendanceMarked, AttendanceMarkedV1Status, AttendanceThresholdBreached};
use edubus_flows::attendance::AttendanceRecord;
use edubus_flows::{FlowBackend, Table};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

use common::{Env, assert_caused_by, payload};

fn school_day(day: i8, hour: i8) -> Timestamp {
    jiff::civil::date(2026, 9, day)
        .at(hour, 0, 0, 0)
        .to_zoned(TimeZone::UTC)
        .expect("UTC")
        .timestamp()
}

fn mark(
    student: Uuid,
    session: u128,
    status: AttendanceMarkedV1Status,
    at: Timestamp,
) -> AttendanceMarked {
    AttendanceMarked {
        class_session_id: Uuid::from_u128(session),
        student_id: student,
        status,
        marked_by: Uuid::from_u128(99),
        marked_at: at,
    }
}

async fn record_of<B: FlowBackend>(env: &Env<B>, student: Uuid) -> AttendanceRecord {
    env.doc(Table::Attendance, student.to_string())
        .await
        .expect("attendance record")
}

/// Default threshold is 10 days: 12 absent days cross it once, with the first and last
/// absence times; a mark published twice (new id) and a replay of the whole subscription do
/// not publish it again.
async fn threshold_is_breached_once_per_crossing<B: FlowBackend>(env: &Env<B>) {
    let student = Uuid::now_v7();
    let other = Uuid::now_v7();
    let mut first_cause = None;
    for day in 1..=12i8 {
        let at = school_day(day, 9);
        let e = env
            .publish(&mark(
                student,
                day as u128,
                AttendanceMarkedV1Status::Absent,
                at,
            ))
            .await;
        if day == 10 {
            first_cause = Some(e);
        }
        // Two sessions on one day count as one day; the other student stays present.
        env.publish(&mark(
            student,
            100 + day as u128,
            AttendanceMarkedV1Status::Absent,
            school_day(day, 13),
        ))
        .await;
        env.publish(&mark(
            other,
            200 + day as u128,
            AttendanceMarkedV1Status::Present,
            at,
        ))
        .await;
    }
    // A client retry of day 3's mark under a new event id.
    env.publish(&mark(
        student,
        3,
        AttendanceMarkedV1Status::Absent,
        school_day(3, 9),
    ))
    .await;
    env.wait_events("attendance.threshold_breached", 1).await;
    env.settle().await;

    let breaches = env.events("attendance.threshold_breached").await;
    assert_eq!(breaches.len(), 1, "one crossing, one event: {breaches:?}");
    let breach: AttendanceThresholdBreached = payload(&breaches[0]);
    assert_eq!(breach.student_id, student);
    assert_eq!(
        breach.days_absent, 10,
        "published when the 10th day was counted"
    );
    assert_eq!(breach.threshold, 10);
    assert_eq!(breach.first_absent_at, school_day(1, 9));
    assert_eq!(
        breach.last_absent_at,
        school_day(10, 9),
        "the absences up to the crossing"
    );
    // Per-student order: the first mark of day 10 is the one that counted the 10th day.
    let tenth_day = first_cause.expect("day 10");
    assert_caused_by(&breaches[0], &tenth_day);

    let record = record_of(env, student).await;
    assert_eq!(record.days(), 12);
    assert_eq!(record.count(AttendanceMarkedV1Status::Absent), 24);
    assert_eq!(record.breached_at_threshold, Some(10));
    let present = record_of(env, other).await;
    assert_eq!(present.days(), 0);
    assert_eq!(present.count(AttendanceMarkedV1Status::Present), 12);

    // Every mark delivered again: the read model and the breach count do not change.
    let replayed = env
        .replay_settled(edubus_flows::attendance::SUBSCRIPTION)
        .await;
    assert_eq!(replayed, 12 * 3 + 1, "every mark of this test");
    env.settle().await;
    assert_eq!(env.events("attendance.threshold_breached").await.len(), 1);
    let again = record_of(env, student).await;
    assert_eq!(again, record);
}

on_both_deployments!(threshold_is_breached_once_per_crossing);
