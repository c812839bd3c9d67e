//! Enrollment provisioning (seed 000): a guardian submits an application
//! (`enrollment.submitted`), staff approve it (`enrollment.approved`) and the provisioning
//! worker creates the student: a deterministic student id, a unique student code, a homeroom
//! in turn and the configured courses, then publishes `enrollment.provisioned`.
//!
//! Both handlers are idempotent by state: a resubmission changes nothing, and an approval of
//! an application already provisioned (redelivered, replayed, or published again under a new
//! event id) neither writes nor publishes anything.
//!
//! Student codes come from one counter document incremented in the provisioning transaction.
//! Its lock (see [`crate::state`]) serializes provisionings on PostgreSQL, also on the
//! counter's first use, and SQLite has a single writer: no code is handed out twice.

use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_events::{EnrollmentApproved, EnrollmentProvisioned, EnrollmentSubmitted};
use edubus_runtime::{Caused, HandlerError, WorkerBuilder};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, NAMESPACE, stage};

/// The subscription of this flow.
pub const SUBSCRIPTION: &str = "enrollment-provisioning";

/// The key, in [`Table::Counters`], of the student-code sequence (a [`Counter`]).
pub const STUDENT_CODE_COUNTER: &str = "student_code";

/// Where an application stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationStatus {
    /// Submitted, waiting for approval.
    Submitted,
    /// Approved and its student provisioned.
    Provisioned,
}

/// An enrollment application, keyed by application id in [`Table::Applications`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// The application.
    pub application_id: Uuid,
    /// Provisional id of the applicant.
    pub student_temp_id: Uuid,
    /// The guardian who applied.
    pub guardian_id: Uuid,
    /// When the guardian submitted it.
    pub submitted_at: Timestamp,
    /// Where it stands.
    pub status: ApplicationStatus,
    /// Id of the `enrollment.submitted` event, the cause of the approval staff publish.
    pub submitted_event_id: String,
    /// Correlation id of the `enrollment.submitted` event, shared by the whole enrollment.
    pub correlation_id: String,
    /// The student provisioned from it, once provisioned.
    pub student_id: Option<Uuid>,
}

/// A provisioned student, keyed by student id in [`Table::Students`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Student {
    /// The student, derived from the application id ([`student_id_for`]).
    pub student_id: Uuid,
    /// The school-issued student number, unique ([`student_code`]).
    pub student_code: String,
    /// The homeroom assigned.
    pub homeroom_id: Uuid,
    /// The courses enrolled in.
    pub course_ids: Vec<Uuid>,
    /// The guardian who applied, the audience of the family's communications.
    pub guardian_id: Uuid,
    /// The application the student was provisioned from.
    pub application_id: Uuid,
    /// When the student was provisioned.
    pub provisioned_at: Timestamp,
}

/// A sequence, keyed by name in [`Table::Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// How many numbers were handed out; the next one is `value + 1`.
    pub value: u64,
}

/// The id of the student provisioned from `application_id` (UUID v5), so a replay cannot
/// create a twin.
pub fn student_id_for(application_id: Uuid) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("student/{application_id}").as_bytes())
}

/// The student code of the `n`th student provisioned (from 1): `S-000042`.
pub fn student_code(n: u64) -> String {
    format!("S-{n:06}")
}

/// Registers the subscription and its handlers.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let on_submitted = Arc::clone(config);
    let on_approved = Arc::clone(config);
    worker
        .subscription(SUBSCRIPTION, config.options.clone())
        .on::<EnrollmentSubmitted, _, _>(move |event, ctx| {
            let step = Submit {
                event_id: ctx.envelope().id.clone(),
                correlation_id: ctx.envelope().correlation_id().to_owned(),
                event,
            };
            let staged = stage(&ctx, &on_submitted, step);
            async move { staged }
        })
        .on::<EnrollmentApproved, _, _>(move |event, ctx| {
            let staged = if on_approved.homerooms.is_empty() {
                Err(HandlerError::permanent(format!(
                    "cannot provision application {}: the flow configuration lists no \
                     homerooms to assign students to",
                    event.application_id
                )))
            } else {
                let step = Provision {
                    event,
                    homerooms: on_approved.homerooms.clone(),
                    courses: on_approved.courses.clone(),
                    caused: ctx.caused(),
                };
                stage(&ctx, &on_approved, step)
            };
            async move { staged }
        })
}

/// Records a submitted application, unless it is already known.
struct Submit {
    event: EnrollmentSubmitted,
    event_id: String,
    correlation_id: String,
}

impl Step for Submit {
    fn reads(&self) -> Vec<DocRef> {
        vec![application_ref(self.event.application_id)]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let mut effects = Effects::default();
        if docs.get::<Application>(0)?.is_some() {
            return Ok(effects);
        }
        let e = self.event;
        let application = Application {
            application_id: e.application_id,
            student_temp_id: e.student_temp_id,
            guardian_id: e.guardian_id,
            submitted_at: e.submitted_at,
            status: ApplicationStatus::Submitted,
            submitted_event_id: self.event_id,
            correlation_id: self.correlation_id,
            student_id: None,
        };
        effects.write(application_ref(e.application_id), &application)?;
        Ok(effects)
    }
}

/// Provisions the student of an approved application, once.
struct Provision {
    event: EnrollmentApproved,
    homerooms: Vec<Uuid>,
    courses: Vec<Uuid>,
    caused: Caused,
}

impl Step for Provision {
    fn reads(&self) -> Vec<DocRef> {
        vec![
            application_ref(self.event.application_id),
            DocRef::new(Table::Counters, STUDENT_CODE_COUNTER),
        ]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let application_id = self.event.application_id;
        let mut effects = Effects::default();
        let Some(mut application) = docs.get::<Application>(0)? else {
            return Err(format!(
                "enrollment.approved for application {application_id}: the application is \
                 unknown (its enrollment.submitted has not been handled by {SUBSCRIPTION})"
            )
            .into());
        };
        if application.status == ApplicationStatus::Provisioned {
            return Ok(effects);
        }
        let taken = docs.get::<Counter>(1)?.map_or(0, |c| c.value);
        let student = Student {
            student_id: student_id_for(application_id),
            student_code: student_code(taken + 1),
            homeroom_id: homeroom(&self.homerooms, taken)?,
            course_ids: self.courses,
            guardian_id: application.guardian_id,
            application_id,
            provisioned_at: Timestamp::now(),
        };
        let provisioned = self.caused.append(&EnrollmentProvisioned {
            student_id: student.student_id,
            student_code: student.student_code.clone(),
            homeroom_id: student.homeroom_id,
            course_ids: student.course_ids.clone(),
            provisioned_at: student.provisioned_at,
            application_id,
        })?;
        effects.publish(provisioned);
        effects.write(
            DocRef::new(Table::Counters, STUDENT_CODE_COUNTER),
            &Counter { value: taken + 1 },
        )?;
        application.status = ApplicationStatus::Provisioned;
        application.student_id = Some(student.student_id);
        effects.write(application_ref(application_id), &application)?;
        effects.write(
            DocRef::new(Table::Students, student.student_id.to_string()),
            &student,
        )?;
        Ok(effects)
    }
}

fn application_ref(application_id: Uuid) -> DocRef {
    DocRef::new(Table::Applications, application_id.to_string())
}

/// The homeroom of the student provisioned after `taken` others: the homerooms in turn.
fn homeroom(homerooms: &[Uuid], taken: u64) -> Result<Uuid, BoxError> {
    let len = u64::try_from(homerooms.len())?;
    let index = taken
        .checked_rem(len)
        .ok_or("no homerooms are configured")?;
    homerooms
        .get(usize::try_from(index)?)
        .copied()
        .ok_or_else(|| format!("homeroom {index} of {len} is out of range").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_zero_padded_and_homerooms_go_in_turn() {
        assert_eq!(student_code(42), "S-000042");
        assert_eq!(student_code(1_234_567), "S-1234567");
        let rooms = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
        let assigned: Vec<Uuid> = (0..5).map(|n| homeroom(&rooms, n).unwrap()).collect();
        assert_eq!(assigned, [rooms[0], rooms[1], rooms[2], rooms[0], rooms[1]]);
        assert!(homeroom(&[], 0).is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let app = Uuid::from_u128(7);
        assert_eq!(student_id_for(app), student_id_for(app));
        assert_ne!(student_id_for(app), student_id_for(Uuid::from_u128(8)));
    }
}
