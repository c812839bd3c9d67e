//! Chronic-absence escalation (seeds 000 and 002): `attendance.marked` feeds each student's
//! absence record; when the distinct days absent reach the threshold,
//! `attendance.threshold_breached` is published once for that crossing.
//!
//! Days are counted once each (two absent marks on one day are one day absent), so a mark
//! delivered twice, or published twice under different ids, never counts twice; the record
//! remembers that the crossing was published, so later absences do not publish it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_events::{AttendanceMarked, AttendanceMarkedV1Status, AttendanceThresholdBreached};
use edubus_runtime::{Caused, WorkerBuilder};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, stage};

/// The subscription of this flow.
pub const SUBSCRIPTION: &str = "attendance-threshold";

/// A student's attendance: the read model of this flow, keyed by student id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttendanceRecord {
    /// The student.
    pub student_id: Uuid,
    /// The mark of each class session, by session id (a later mark replaces an earlier one).
    pub sessions: BTreeMap<Uuid, SessionMark>,
    /// The threshold at the crossing, once `attendance.threshold_breached` was published.
    pub breached_at_threshold: Option<u32>,
}

/// One class session's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMark {
    /// The status marked.
    pub status: AttendanceMarkedV1Status,
    /// When it was marked.
    pub at: Timestamp,
}

impl AttendanceRecord {
    fn new(student_id: Uuid) -> Self {
        Self {
            student_id,
            sessions: BTreeMap::new(),
            breached_at_threshold: None,
        }
    }

    /// Applies one mark; marking a session again replaces its mark, so a redelivered or
    /// replayed mark changes nothing.
    fn mark(&mut self, session: Uuid, status: AttendanceMarkedV1Status, at: Timestamp) {
        self.sessions.insert(session, SessionMark { status, at });
    }

    fn absences(&self) -> impl Iterator<Item = Timestamp> + '_ {
        self.sessions
            .values()
            .filter(|m| m.status == AttendanceMarkedV1Status::Absent)
            .map(|m| m.at)
    }

    /// Sessions marked with `status`.
    pub fn count(&self, status: AttendanceMarkedV1Status) -> u32 {
        let n = self
            .sessions
            .values()
            .filter(|m| m.status == status)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The distinct days (UTC) with an absent mark.
    pub fn days_absent(&self) -> BTreeSet<Date> {
        self.absences()
            .map(|at| at.to_zoned(TimeZone::UTC).date())
            .collect()
    }

    /// The number of distinct days absent.
    pub fn days(&self) -> u32 {
        u32::try_from(self.days_absent().len()).unwrap_or(u32::MAX)
    }

    /// Time of the earliest absent mark.
    pub fn first_absent_at(&self) -> Option<Timestamp> {
        self.absences().min()
    }

    /// Time of the latest absent mark.
    pub fn last_absent_at(&self) -> Option<Timestamp> {
        self.absences().max()
    }
}

/// Registers the subscription and its handler.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let config = Arc::clone(config);
    worker
        .subscription(SUBSCRIPTION, config.options.clone())
        .on::<AttendanceMarked, _, _>(move |event, ctx| {
            let step = Mark {
                event,
                threshold: config.absence_threshold,
                caused: ctx.caused(),
            };
            let staged = stage(&ctx, &config, step);
            async move { staged }
        })
}

struct Mark {
    event: AttendanceMarked,
    threshold: u32,
    caused: Caused,
}

impl Step for Mark {
    fn reads(&self) -> Vec<DocRef> {
        vec![DocRef::new(
            Table::Attendance,
            self.event.student_id.to_string(),
        )]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let e = &self.event;
        let mut record = docs
            .get::<AttendanceRecord>(0)?
            .unwrap_or_else(|| AttendanceRecord::new(e.student_id));
        record.mark(e.class_session_id, e.status, e.marked_at);
        let mut effects = Effects::default();
        if record.breached_at_threshold.is_none() && record.days() >= self.threshold {
            let (Some(first), Some(last)) = (record.first_absent_at(), record.last_absent_at())
            else {
                return Err("an absence record past the threshold has no absence times".into());
            };
            effects.publish(self.caused.append(&AttendanceThresholdBreached {
                student_id: e.student_id,
                days_absent: i64::from(record.days()),
                threshold: i64::from(self.threshold),
                first_absent_at: first,
                last_absent_at: last,
            })?);
            record.breached_at_threshold = Some(self.threshold);
        }
        effects.write(
            DocRef::new(Table::Attendance, e.student_id.to_string()),
            &record,
        )?;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i8, hour: i8) -> Timestamp {
        jiff::civil::date(2026, 9, day)
            .at(hour, 0, 0, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
    }

    #[test]
    fn absent_days_count_once_each_and_marks_replace_per_session() {
        let mut r = AttendanceRecord::new(Uuid::nil());
        let s = |n: u128| Uuid::from_u128(n);
        r.mark(s(1), AttendanceMarkedV1Status::Absent, at(1, 9));
        r.mark(s(2), AttendanceMarkedV1Status::Absent, at(1, 13));
        r.mark(s(3), AttendanceMarkedV1Status::Late, at(2, 9));
        r.mark(s(4), AttendanceMarkedV1Status::Absent, at(3, 9));
        r.mark(s(4), AttendanceMarkedV1Status::Absent, at(3, 9));
        assert_eq!(r.days(), 2);
        assert_eq!(r.count(AttendanceMarkedV1Status::Absent), 3);
        assert_eq!(r.count(AttendanceMarkedV1Status::Late), 1);
        assert_eq!(r.first_absent_at(), Some(at(1, 9)));
        assert_eq!(r.last_absent_at(), Some(at(3, 9)));
        r.mark(s(4), AttendanceMarkedV1Status::Present, at(3, 9));
        assert_eq!(r.days(), 1);
        assert_eq!(r.last_absent_at(), Some(at(1, 13)));
    }
}
