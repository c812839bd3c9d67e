//! Course access end to end (orders paid and refunded, progress and completion), on SQLite
//! and on PostgreSQL + Redis.

mod common;

use edubus_core::{DeadReason, Envelope};
use edubus_events::{
    AccessRevoked, CourseAccessGranted, CourseCompleted, OrderPaid, OrderRefunded, ProgressUpdated,
};
use edubus_flows::access::{Access, AccessStatus, Order, SUBSCRIPTION, access_id};
use edubus_flows::{FlowBackend, Table};
use jiff::Timestamp;
use rust_decimal::Decimal;
use uuid::Uuid;

use common::{Env, assert_caused_by, payload};

const GRANTED: &str = "access.granted";
const REVOKED: &str = "access.revoked";
const COMPLETED: &str = "access.course.completed";

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn at(minute: i64) -> Timestamp {
    Timestamp::from_second(1_788_000_000 + minute * 60).expect("timestamp")
}

fn paid(order: Uuid, user: Uuid, courses: &[Uuid]) -> OrderPaid {
    OrderPaid {
        order_id: order,
        user_id: user,
        course_ids: courses.to_vec(),
        payment_id: Uuid::now_v7(),
        paid_at: at(0),
    }
}

fn refunded(order: Uuid, user: Uuid, courses: &[Uuid]) -> OrderRefunded {
    OrderRefunded {
        order_id: order,
        user_id: user,
        course_ids: courses.to_vec(),
        refund_reason: "changed my mind".to_owned(),
        refund_amount: dec("49.90"),
        refunded_at: at(30),
    }
}

fn progress(access: &Access, value: &str, minute: i64) -> ProgressUpdated {
    ProgressUpdated {
        access_id: access.access_id,
        user_id: access.user_id,
        course_id: access.course_id,
        progress: dec(value),
        updated_at: at(minute),
    }
}

async fn access<B: FlowBackend>(env: &Env<B>, id: Uuid) -> Access {
    env.doc(Table::Access, id.to_string())
        .await
        .expect("access record")
}

/// A paid order of two courses grants two accesses caused by the payment; progress 50 then
/// 100 completes the course once, and a second report of 100 completes nothing more.
async fn paid_order_grants_each_course_and_completes_once<B: FlowBackend>(env: &Env<B>) {
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let courses = [Uuid::now_v7(), Uuid::now_v7()];
    let payment = env.publish(&paid(order, user, &courses)).await;
    let grants = env.wait_events(GRANTED, 2).await;
    assert_eq!(grants.len(), 2);
    for (grant, course) in grants.iter().zip(courses) {
        assert_caused_by(grant, &payment);
        let granted: CourseAccessGranted = payload(grant);
        assert_eq!(granted.access_id, access_id(order, course));
        assert_eq!(granted.course_id, course);
        assert_eq!(granted.user_id, user);
        assert_eq!(granted.order_id, Some(order));
        assert_eq!(granted.granted_at, at(0));
        let record = access(env, granted.access_id).await;
        assert_eq!(record.status, AccessStatus::Active);
        assert_eq!(record.progress, Decimal::ZERO);
        assert_eq!(record.order_id, order);
    }
    let ids = courses.map(|c| access_id(order, c));
    let stored: Order = env
        .doc(Table::Orders, order.to_string())
        .await
        .expect("order");
    assert_eq!(stored.user_id, user);
    assert_eq!(stored.access_ids, ids);

    let first = access(env, ids[0]).await;
    env.publish(&progress(&first, "50", 1)).await;
    let done = env.publish(&progress(&first, "100", 2)).await;
    let completions = env.wait_events(COMPLETED, 1).await;
    assert_caused_by(&completions[0], &done);
    let completed: CourseCompleted = payload(&completions[0]);
    assert_eq!(completed.access_id, ids[0]);
    assert_eq!(completed.course_id, courses[0]);
    assert_eq!(completed.completed_at, at(2));

    let again = env.publish(&progress(&first, "100", 3)).await;
    env.handled(SUBSCRIPTION, &[&again]).await;
    assert_eq!(env.events(COMPLETED).await.len(), 1);
    let record = access(env, ids[0]).await;
    assert_eq!(record.status, AccessStatus::Completed);
    assert_eq!(record.progress, dec("100"));
    assert_eq!(record.completed_at, Some(at(2)));
    let other = access(env, ids[1]).await;
    assert_eq!(other.status, AccessStatus::Active);
    assert_eq!(other.progress, Decimal::ZERO);
}

/// A refund of one course revokes its access with the refund reason, once; progress reaching
/// 100 afterwards is recorded and completes nothing; the other course stays active.
async fn refund_revokes_and_later_progress_completes_nothing<B: FlowBackend>(env: &Env<B>) {
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let courses = [Uuid::now_v7(), Uuid::now_v7()];
    env.publish(&paid(order, user, &courses)).await;
    env.wait_events(GRANTED, 2).await;
    let ids = courses.map(|c| access_id(order, c));

    let refund = env.publish(&refunded(order, user, &courses[..1])).await;
    let revocations = env.wait_events(REVOKED, 1).await;
    assert_caused_by(&revocations[0], &refund);
    let revoked: AccessRevoked = payload(&revocations[0]);
    assert_eq!(revoked.access_id, ids[0]);
    assert_eq!(revoked.reason, "changed my mind");
    assert_eq!(revoked.revoked_at, at(30));

    // The same refund again (new event id), then progress on the revoked access.
    let again = env.publish(&refunded(order, user, &courses[..1])).await;
    let record = access(env, ids[0]).await;
    let late = env.publish(&progress(&record, "100", 40)).await;
    env.handled(SUBSCRIPTION, &[&again, &late]).await;
    assert_eq!(env.events(REVOKED).await.len(), 1);
    assert!(env.events(COMPLETED).await.is_empty());
    let record = access(env, ids[0]).await;
    assert_eq!(record.status, AccessStatus::Revoked);
    assert_eq!(record.revoked_at, Some(at(30)));
    assert_eq!(record.revoke_reason.as_deref(), Some("changed my mind"));
    assert_eq!(record.progress, dec("100"), "progress is still recorded");
    assert_eq!(record.completed_at, None);
    assert_eq!(access(env, ids[1]).await.status, AccessStatus::Active);
    // The flow's own `access.*` events share the `access` stream with the progress reports
    // it takes (a Redis subscription receives the whole stream): none is dead-lettered.
    let dead = edubus_core::DeadLetterQueue::list(env.bus.backend(), Some(SUBSCRIPTION), 0, 100)
        .await
        .expect("dead letters");
    assert!(dead.is_empty(), "{dead:?}");
}

/// After a payment, progress (with a completion and a late, older report), a refund and
/// progress on revoked access, a replay of the whole subscription changes no document and
/// publishes no event.
async fn replay_changes_nothing<B: FlowBackend>(env: &Env<B>) {
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let courses = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    env.publish(&paid(order, user, &courses)).await;
    env.wait_events(GRANTED, 3).await;
    let ids = courses.map(|c| access_id(order, c));
    let records = [
        access(env, ids[0]).await,
        access(env, ids[1]).await,
        access(env, ids[2]).await,
    ];
    env.publish(&progress(&records[0], "40", 1)).await;
    env.publish(&progress(&records[0], "100", 2)).await;
    env.publish(&progress(&records[0], "90", 3)).await;
    env.publish(&progress(&records[2], "75", 4)).await;
    env.publish(&refunded(order, user, &courses[1..2])).await;
    env.wait_events(COMPLETED, 1).await;
    env.wait_events(REVOKED, 1).await;
    let last = env.publish(&progress(&records[1], "30", 50)).await;
    // A report older than the stored one, arriving late, does not move progress back.
    let stale = env.publish(&progress(&records[0], "20", 1)).await;
    env.handled(SUBSCRIPTION, &[&last, &stale]).await;
    env.settle().await;

    let before = [
        access(env, ids[0]).await,
        access(env, ids[1]).await,
        access(env, ids[2]).await,
    ];
    assert_eq!(before[0].status, AccessStatus::Completed);
    assert_eq!(before[0].progress, dec("90"), "the newest report is stored");
    assert_eq!(before[1].status, AccessStatus::Revoked);
    assert_eq!(before[1].progress, dec("30"));
    assert_eq!(before[2].status, AccessStatus::Active);
    assert_eq!(before[2].progress, dec("75"));
    let order_doc: Order = env
        .doc(Table::Orders, order.to_string())
        .await
        .expect("order");

    assert_eq!(
        env.replay_settled(SUBSCRIPTION).await,
        8,
        "every event delivered again"
    );
    assert_eq!(env.events(GRANTED).await.len(), 3);
    assert_eq!(env.events(REVOKED).await.len(), 1);
    assert_eq!(env.events(COMPLETED).await.len(), 1);
    for (id, expected) in ids.iter().zip(&before) {
        assert_eq!(&access(env, *id).await, expected);
    }
    let after: Order = env
        .doc(Table::Orders, order.to_string())
        .await
        .expect("order");
    assert_eq!(after, order_doc);
}

/// Progress outside 0..=100 is dead-lettered at once; a refund of an order never paid and
/// progress on access never granted are retried, then dead-lettered; none writes anything.
async fn bad_input_is_dead_lettered<B: FlowBackend>(env: &Env<B>) {
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let course = Uuid::now_v7();
    let phantom = Access {
        access_id: access_id(order, course),
        user_id: user,
        course_id: course,
        order_id: order,
        status: AccessStatus::Active,
        progress: Decimal::ZERO,
        progress_at: None,
        progress_event: None,
        granted_at: at(0),
        revoked_at: None,
        revoke_reason: None,
        completed_at: None,
    };
    let too_far = env.publish(&progress(&phantom, "100.5", 1)).await;
    let refund = env.publish(&refunded(order, user, &[course])).await;
    let orphan = env.publish(&progress(&phantom, "10", 2)).await;
    let dead = env.dead_letters(SUBSCRIPTION, 3).await;
    let entry = |cause: &Envelope| {
        dead.iter()
            .find(|d| d.letter.event_id == cause.id)
            .unwrap_or_else(|| panic!("no dead letter for {}", cause.id))
            .letter
            .clone()
    };

    let rejected = entry(&too_far);
    assert_eq!(rejected.reason, DeadReason::Rejected);
    assert_eq!(
        rejected.error,
        format!(
            "access.progress.updated {}: progress 100.5 of access {} (course {course}) is \
             outside 0..=100 (progress is a percentage)",
            too_far.id, phantom.access_id
        )
    );
    let unknown = entry(&refund);
    assert_eq!(unknown.reason, DeadReason::Exhausted);
    assert_eq!(unknown.attempts.len(), 3, "retried: {:?}", unknown.attempts);
    assert!(
        unknown.error.contains(&format!(
            "orders.order.refunded {}: order {order} has no recorded payment",
            refund.id
        )),
        "{}",
        unknown.error
    );
    let early = entry(&orphan);
    assert_eq!(early.reason, DeadReason::Exhausted);
    assert!(
        early.error.contains(&format!(
            "access.progress.updated {}: access {} is not granted",
            orphan.id, phantom.access_id
        )),
        "{}",
        early.error
    );
    assert!(env.events(REVOKED).await.is_empty());
    let none: Option<Access> = env.doc(Table::Access, phantom.access_id.to_string()).await;
    assert_eq!(none, None);
}

on_both_deployments!(paid_order_grants_each_course_and_completes_once);
on_both_deployments!(refund_revokes_and_later_progress_completes_nothing);
on_both_deployments!(bad_input_is_dead_lettered);
on_both_deployments!(replay_changes_nothing);
