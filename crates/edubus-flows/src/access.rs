//! Course access (seed 003): a paid order grants access to each of its courses, a refund
//! revokes it, and progress reaching 100 % on active access completes the course.
//!
//! - `orders.order.paid` creates one [`Access`] per course, with the id
//!   [`access_id`]`(order, course)`, and the [`Order`] listing them; each new access publishes
//!   `access.granted`. Access that already exists is left as it is, so a replayed or repeated
//!   payment neither re-grants nor reactivates revoked access.
//! - `orders.order.refunded` revokes the refunded courses' access that is not revoked yet and
//!   publishes `access.revoked` with the refund reason. A refund of an order whose payment
//!   was not recorded is retried (its payment may still be on its way), then dead-lettered.
//! - `access.progress.updated` stores the progress when it is newer than the stored one (by
//!   `updated_at`, then event id), so a replay never moves progress back; a report of 100 on
//!   active access completes it and publishes `access.course.completed`, once. Progress on
//!   revoked access is recorded and completes nothing. Progress outside 0..=100 is rejected.
//!
//! Grants are keyed by order and progress by access id, so they run on different partitions.
//! Progress on access that does not exist yet fails and is retried (nothing is written), so
//! it never races the grant that creates the document; once the document exists, steps on it
//! serialize (its row is locked on PostgreSQL; SQLite has one writer).

use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_events::{
    AccessRevoked, CourseAccessGranted, CourseCompleted, OrderPaid, OrderRefunded, ProgressUpdated,
};
use edubus_runtime::{Caused, HandlerError, WorkerBuilder};
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, NAMESPACE, stage};

/// The subscription of this flow.
pub const SUBSCRIPTION: &str = "course-access";

/// The id of the access an order grants to a course: UUID v5 of `<order_id>/<course_id>`.
pub fn access_id(order_id: Uuid, course_id: Uuid) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{order_id}/{course_id}").as_bytes())
}

/// Where an access record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessStatus {
    /// The learner may follow the course.
    Active,
    /// Access ended (the order was refunded).
    Revoked,
    /// The learner completed the course.
    Completed,
}

/// One user's access to one course: a read model of this flow, in [`Table::Access`] keyed by
/// access id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The access id ([`access_id`] of the order and course).
    pub access_id: Uuid,
    /// The learner.
    pub user_id: Uuid,
    /// The course.
    pub course_id: Uuid,
    /// The paid order that granted it.
    pub order_id: Uuid,
    /// Where it stands.
    pub status: AccessStatus,
    /// Percentage of the course completed, 0 to 100.
    pub progress: Decimal,
    /// When the stored progress was reported; `None` before any report.
    pub progress_at: Option<Timestamp>,
    /// The event that reported the stored progress; breaks ties between reports of one instant.
    pub progress_event: Option<String>,
    /// When it was granted (the order's payment time).
    pub granted_at: Timestamp,
    /// When it was revoked (the refund time).
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked (the refund reason).
    pub revoke_reason: Option<String>,
    /// When the course was completed (the time of the report of 100 %).
    pub completed_at: Option<Timestamp>,
}

/// A paid order and the access it granted: a read model of this flow, in [`Table::Orders`]
/// keyed by order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order.
    pub order_id: Uuid,
    /// The buyer.
    pub user_id: Uuid,
    /// The access granted for each course, in the order's course order.
    pub access_ids: Vec<Uuid>,
}

/// Registers the subscription and its handlers.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let (paid, refunded, progress) = (Arc::clone(config), Arc::clone(config), Arc::clone(config));
    worker
        .subscription(SUBSCRIPTION, config.options.clone())
        .on::<OrderPaid, _, _>(move |event, ctx| {
            let step = Grant {
                courses: distinct(&event.course_ids),
                event,
                caused: ctx.caused(),
            };
            let staged = stage(&ctx, &paid, step);
            async move { staged }
        })
        .on::<OrderRefunded, _, _>(move |event, ctx| {
            let step = Revoke {
                courses: distinct(&event.course_ids),
                event_id: ctx.envelope().id.clone(),
                event,
                caused: ctx.caused(),
            };
            let staged = stage(&ctx, &refunded, step);
            async move { staged }
        })
        .on::<ProgressUpdated, _, _>(move |event, ctx| {
            let event_id = ctx.envelope().id.clone();
            let staged = match invalid_progress(&event, &event_id) {
                Some(problem) => Err(HandlerError::permanent(problem)),
                None => {
                    let step = Progress {
                        event,
                        event_id,
                        caused: ctx.caused(),
                    };
                    stage(&ctx, &progress, step)
                }
            };
            async move { staged }
        })
}

/// The course ids without repeats, in their first order.
fn distinct(ids: &[Uuid]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

fn order_doc(order_id: Uuid) -> DocRef {
    DocRef::new(Table::Orders, order_id.to_string())
}

fn access_doc(access_id: Uuid) -> DocRef {
    DocRef::new(Table::Access, access_id.to_string())
}

/// What a grant or a revocation reads: the order, then the access of each of its courses
/// (`decide` finds the access of `courses[i]` at index `i + 1`).
fn order_and_access(order_id: Uuid, courses: &[Uuid]) -> Vec<DocRef> {
    std::iter::once(order_doc(order_id))
        .chain(courses.iter().map(|c| access_doc(access_id(order_id, *c))))
        .collect()
}

/// Why a progress report can never be applied, if it cannot.
fn invalid_progress(e: &ProgressUpdated, event_id: &str) -> Option<String> {
    (e.progress < Decimal::ZERO || e.progress > Decimal::ONE_HUNDRED).then(|| {
        format!(
            "access.progress.updated {event_id}: progress {} of access {} (course {}) is \
             outside 0..=100 (progress is a percentage)",
            e.progress, e.access_id, e.course_id
        )
    })
}

/// `orders.order.paid`: reads the order, then the access of each course.
struct Grant {
    event: OrderPaid,
    courses: Vec<Uuid>,
    caused: Caused,
}

impl Step for Grant {
    fn reads(&self) -> Vec<DocRef> {
        order_and_access(self.event.order_id, &self.courses)
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let e = &self.event;
        let mut effects = Effects::default();
        let known = docs.get::<Order>(0)?;
        let mut order = known.clone().unwrap_or_else(|| Order {
            order_id: e.order_id,
            user_id: e.user_id,
            access_ids: Vec::new(),
        });
        for (i, course_id) in self.courses.iter().copied().enumerate() {
            let id = access_id(e.order_id, course_id);
            if !order.access_ids.contains(&id) {
                order.access_ids.push(id);
            }
            if docs.get::<Access>(i + 1)?.is_some() {
                continue;
            }
            let access = Access {
                access_id: id,
                user_id: e.user_id,
                course_id,
                order_id: e.order_id,
                status: AccessStatus::Active,
                progress: Decimal::ZERO,
                progress_at: None,
                progress_event: None,
                granted_at: e.paid_at,
                revoked_at: None,
                revoke_reason: None,
                completed_at: None,
            };
            effects.write(access_doc(id), &access)?;
            effects.publish(self.caused.append(&CourseAccessGranted {
                access_id: id,
                user_id: e.user_id,
                course_id,
                order_id: Some(e.order_id),
                granted_at: e.paid_at,
                expires_at: None,
            })?);
        }
        if known.as_ref() != Some(&order) {
            effects.write(order_doc(e.order_id), &order)?;
        }
        Ok(effects)
    }
}

/// `orders.order.refunded`: reads the order, then the access of each refunded course.
struct Revoke {
    event: OrderRefunded,
    event_id: String,
    courses: Vec<Uuid>,
    caused: Caused,
}

impl Step for Revoke {
    fn reads(&self) -> Vec<DocRef> {
        order_and_access(self.event.order_id, &self.courses)
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let e = &self.event;
        if docs.get::<Order>(0)?.is_none() {
            return Err(format!(
                "orders.order.refunded {}: order {} has no recorded payment (no \
                 orders.order.paid handled for it), so there is no access to revoke",
                self.event_id, e.order_id
            )
            .into());
        }
        let mut effects = Effects::default();
        for (i, course_id) in self.courses.iter().copied().enumerate() {
            let Some(mut access) = docs.get::<Access>(i + 1)? else {
                tracing::warn!(event = %self.event_id, order = %e.order_id, course = %course_id,
                    "refunded course was not part of the paid order; nothing to revoke");
                continue;
            };
            if access.status == AccessStatus::Revoked {
                continue;
            }
            access.status = AccessStatus::Revoked;
            access.revoked_at = Some(e.refunded_at);
            access.revoke_reason = Some(e.refund_reason.clone());
            effects.write(access_doc(access.access_id), &access)?;
            effects.publish(self.caused.append(&AccessRevoked {
                access_id: access.access_id,
                user_id: access.user_id,
                course_id,
                reason: e.refund_reason.clone(),
                revoked_at: e.refunded_at,
            })?);
        }
        Ok(effects)
    }
}

/// `access.progress.updated`: reads the access.
struct Progress {
    event: ProgressUpdated,
    event_id: String,
    caused: Caused,
}

impl Progress {
    /// Whether this report is newer than the stored one.
    fn newer(&self, access: &Access) -> bool {
        let stored = access
            .progress_at
            .map(|at| (at, access.progress_event.as_deref().unwrap_or_default()));
        stored < Some((self.event.updated_at, self.event_id.as_str()))
    }
}

impl Step for Progress {
    fn reads(&self) -> Vec<DocRef> {
        vec![access_doc(self.event.access_id)]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let e = &self.event;
        let Some(mut access) = docs.get::<Access>(0)? else {
            return Err(format!(
                "access.progress.updated {}: access {} is not granted (no orders.order.paid \
                 has created it yet)",
                self.event_id, e.access_id
            )
            .into());
        };
        let mut effects = Effects::default();
        let mut changed = false;
        if self.newer(&access) && access.progress != e.progress {
            access.progress = e.progress;
            access.progress_at = Some(e.updated_at);
            access.progress_event = Some(self.event_id.clone());
            changed = true;
        }
        // Completion is the fact that 100 % was reached, even when a newer report exists.
        if e.progress == Decimal::ONE_HUNDRED && access.status == AccessStatus::Active {
            access.status = AccessStatus::Completed;
            access.completed_at = Some(e.updated_at);
            changed = true;
            effects.publish(self.caused.append(&CourseCompleted {
                access_id: access.access_id,
                user_id: access.user_id,
                course_id: access.course_id,
                completed_at: e.updated_at,
            })?);
        }
        if changed {
            effects.write(access_doc(access.access_id), &access)?;
        }
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_ids_are_stable_per_order_and_course() {
        let (o, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(access_id(o, c), access_id(o, c));
        assert_ne!(access_id(o, c), access_id(c, o));
        assert_eq!(
            access_id(o, c),
            Uuid::new_v5(&NAMESPACE, format!("{o}/{c}").as_bytes())
        );
    }

    #[test]
    fn repeated_courses_count_once() {
        let ids = [3, 1, 3, 2, 1].map(Uuid::from_u128);
        assert_eq!(distinct(&ids), [3, 1, 2].map(Uuid::from_u128));
    }

    #[test]
    fn progress_outside_a_percentage_is_invalid() {
        let e = |p: &str| ProgressUpdated {
            access_id: Uuid::from_u128(7),
            user_id: Uuid::nil(),
            course_id: Uuid::from_u128(8),
            progress: p.parse().expect("decimal"),
            updated_at: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(invalid_progress(&e("0"), "x"), None);
        assert_eq!(invalid_progress(&e("100.00"), "x"), None);
        let msg = invalid_progress(&e("100.5"), "ev").expect("invalid");
        assert!(
            msg.starts_with("access.progress.updated ev: progress 100.5 of access"),
            "{msg}"
        );
        assert!(invalid_progress(&e("-1"), "x").is_some());
    }
}
