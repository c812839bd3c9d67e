//! Family communications (seed 000): a welcome message when a student is provisioned
//! (`enrollment.provisioned`) and a notice to the guardians when a student's absences cross
//! the chronic-absence threshold (`attendance.threshold_breached`), each published as
//! `comms.dispatched`.
//!
//! A dispatch's id is derived from the event that caused it, and a [`Dispatch`] record is
//! written with the caused event, so a redelivered or replayed cause sends nothing twice.

use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_events::{
    AttendanceThresholdBreached, CommsDispatched, CommsDispatchedV1Channel, EnrollmentProvisioned,
};
use edubus_runtime::{Caused, WorkerBuilder};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::enrollment::Student;
use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, NAMESPACE, named_id, stage};

/// The subscription of this flow.
pub const SUBSCRIPTION: &str = "comms-notifications";

/// Number of the welcome template among the platform's templates (`named_id("template", 1)`).
pub const WELCOME_TEMPLATE: u32 = 1;

/// Number of the chronic-absence guardian notice template (`named_id("template", 2)`).
pub const ABSENCE_NOTICE_TEMPLATE: u32 = 2;

/// The template id of the welcome message sent when a student is provisioned.
pub fn welcome_template() -> Uuid {
    named_id("template", WELCOME_TEMPLATE)
}

/// The template id of the notice sent to guardians when absences cross the threshold.
pub fn absence_notice_template() -> Uuid {
    named_id("template", ABSENCE_NOTICE_TEMPLATE)
}

/// The id of the dispatch caused by the event `cause_event_id` (UUID v5).
pub fn dispatch_id_for(cause_event_id: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, cause_event_id.as_bytes())
}

/// The audience segment of the guardians of a student the flows have no record of (UUID v5
/// of `guardians-of/<student_id>`), resolved by the messaging service.
pub fn guardians_of(student_id: Uuid) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("guardians-of/{student_id}").as_bytes())
}

/// A communication sent, keyed by dispatch id in [`Table::Dispatches`]: its presence
/// means the `comms.dispatched` event was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    /// The dispatch.
    pub dispatch_id: Uuid,
    /// The template sent.
    pub template_id: Uuid,
    /// The channel it went out on.
    pub channel: CommsDispatchedV1Channel,
    /// Who it went to: a guardian id or a guardians segment.
    pub audience_segment_id: Uuid,
    /// The event that caused it.
    pub cause_event_id: String,
    /// When it was sent.
    pub sent_at: Timestamp,
}

/// The document of the dispatch `dispatch_id`.
pub fn dispatch_ref(dispatch_id: Uuid) -> DocRef {
    DocRef::new(Table::Dispatches, dispatch_id.to_string())
}

/// Registers the subscription and its handlers.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let on_provisioned = Arc::clone(config);
    let on_breached = Arc::clone(config);
    worker
        .subscription(SUBSCRIPTION, config.options.clone())
        .on::<EnrollmentProvisioned, _, _>(move |event, ctx| {
            let step = Notify {
                student_id: event.student_id,
                kind: Kind::Welcome,
                cause_event_id: ctx.envelope().id.clone(),
                caused: ctx.caused(),
            };
            let staged = stage(&ctx, &on_provisioned, step);
            async move { staged }
        })
        .on::<AttendanceThresholdBreached, _, _>(move |event, ctx| {
            let step = Notify {
                student_id: event.student_id,
                kind: Kind::AbsenceNotice,
                cause_event_id: ctx.envelope().id.clone(),
                caused: ctx.caused(),
            };
            let staged = stage(&ctx, &on_breached, step);
            async move { staged }
        })
}

/// Which communication a cause calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// To the guardian of a newly provisioned student, who must be known.
    Welcome,
    /// To the guardians of a student, known or not.
    AbsenceNotice,
}

/// Sends one communication about a student, once per cause.
struct Notify {
    student_id: Uuid,
    kind: Kind,
    cause_event_id: String,
    caused: Caused,
}

impl Notify {
    fn dispatch_id(&self) -> Uuid {
        dispatch_id_for(&self.cause_event_id)
    }

    /// The audience: the student's guardian, else (for notices) the student's guardians
    /// segment.
    fn audience(&self, student: Option<Student>) -> Result<Uuid, BoxError> {
        match (student, self.kind) {
            (Some(student), _) => Ok(student.guardian_id),
            (None, Kind::AbsenceNotice) => Ok(guardians_of(self.student_id)),
            (None, Kind::Welcome) => Err(format!(
                "cannot send the welcome caused by event {}: student {} has no record in {} \
                 to name its guardian",
                self.cause_event_id,
                self.student_id,
                Table::Students.sql_name()
            )
            .into()),
        }
    }
}

impl Step for Notify {
    fn reads(&self) -> Vec<DocRef> {
        vec![
            dispatch_ref(self.dispatch_id()),
            DocRef::new(Table::Students, self.student_id.to_string()),
        ]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let mut effects = Effects::default();
        if docs.get::<Dispatch>(0)?.is_some() {
            return Ok(effects);
        }
        let dispatch = Dispatch {
            dispatch_id: self.dispatch_id(),
            template_id: match self.kind {
                Kind::Welcome => welcome_template(),
                Kind::AbsenceNotice => absence_notice_template(),
            },
            channel: CommsDispatchedV1Channel::Email,
            audience_segment_id: self.audience(docs.get::<Student>(1)?)?,
            cause_event_id: self.cause_event_id.clone(),
            sent_at: Timestamp::now(),
        };
        effects.publish(self.caused.append(&CommsDispatched {
            template_id: dispatch.template_id,
            channel: dispatch.channel,
            audience_segment_id: dispatch.audience_segment_id,
            dispatch_id: dispatch.dispatch_id,
            sent_at: dispatch.sent_at,
        })?);
        effects.write(dispatch_ref(dispatch.dispatch_id), &dispatch)?;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_derived_ids_are_distinct_and_stable() {
        assert_eq!(welcome_template(), named_id("template", 1));
        assert_eq!(absence_notice_template(), named_id("template", 2));
        assert_eq!(dispatch_id_for("e1"), dispatch_id_for("e1"));
        assert_ne!(dispatch_id_for("e1"), dispatch_id_for("e2"));
        let student = Uuid::from_u128(5);
        assert_eq!(
            guardians_of(student),
            Uuid::new_v5(&NAMESPACE, format!("guardians-of/{student}").as_bytes())
        );
    }
}
