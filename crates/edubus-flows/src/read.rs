//! Queries of the flows' read models, as JSON views for the command line and the HTTP API, and
//! the staff action decided from them: approving an enrollment application.
//!
//! The views are built from the stored JSON documents ([`FlowBackend::doc`] and
//! [`FlowBackend::docs`]), so they show exactly what the flows wrote. A query of a document
//! that does not exist returns `None`; errors are only for the storage failing. Ids are
//! matched in their canonical form: a UUID is looked up lower-case and hyphenated, whatever
//! form it was given in.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use edubus_core::{Appended, Error, EventStore, ReadQuery, Result};
use edubus_events::EnrollmentApproved;
use edubus_runtime::Bus;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::attendance::AttendanceRecord;
use crate::enrollment::{Application, ApplicationStatus};
use crate::state::{DocRef, FlowBackend, Table};

/// Course grades read per student view: far more courses than any student takes.
const GRADES_PER_STUDENT: usize = 1000;

/// The read models a query can return, each with the event types it is built from (for
/// access control and redaction of personal data by the callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    /// A student: the provisioned record, attendance and course grades.
    Student,
    /// An enrollment application.
    Application,
    /// A course-access record.
    Access,
    /// A paid order and the access it granted.
    Order,
    /// An essay batch of the assessment pipeline.
    Batch,
}

impl View {
    /// Every view.
    pub const ALL: [View; 5] = [
        View::Student,
        View::Application,
        View::Access,
        View::Order,
        View::Batch,
    ];

    /// The event types (canonical names) whose content the view shows: reading the view
    /// reveals what those events said.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            View::Student => &[
                "enrollment.submitted",
                "enrollment.approved",
                "enrollment.provisioned",
                "attendance.marked",
                "grading.updated",
            ],
            View::Application => &[
                "enrollment.submitted",
                "enrollment.approved",
                "enrollment.provisioned",
            ],
            View::Access | View::Order => &[
                "orders.order.paid",
                "orders.order.refunded",
                "access.progress.updated",
                "access.granted",
                "access.revoked",
                "access.course.completed",
            ],
            View::Batch => &[
                "batch.essays.registered",
                "essay.content.provisioned",
                "essay.validation.failed",
                "essay.slot.assigned",
                "excess.content.provisioned",
                "batch.essays.ready",
                "batch.spellcheck.initiate.command",
                "batch.phase.skipped",
                "essay.spellcheck.completed",
                "spellcheck.phase.completed",
            ],
        }
    }

    /// The view's name in messages: `student`, `application`, ...
    pub fn name(self) -> &'static str {
        match self {
            View::Student => "student",
            View::Application => "application",
            View::Access => "access record",
            View::Order => "order",
            View::Batch => "batch",
        }
    }

    /// The table holding the view's documents (for a student, the provisioned record; the
    /// attendance and grade tables are read too).
    pub fn table(self) -> Table {
        match self {
            View::Student => Table::Students,
            View::Application => Table::Applications,
            View::Access => Table::Access,
            View::Order => Table::Orders,
            View::Batch => Table::Batches,
        }
    }
}

/// The short name of a table in counts and messages: `applications`, `students`, ...
pub fn table_name(table: Table) -> &'static str {
    let sql = table.sql_name();
    sql.strip_prefix("flow_").unwrap_or(sql)
}

/// `id` as stored in the keys: a UUID in its canonical form, anything else unchanged.
pub fn canonical_id(id: &str) -> String {
    Uuid::parse_str(id.trim()).map_or_else(|_| id.to_owned(), |u| u.to_string())
}

/// Typed-free queries of the flows' read models on one backend.
#[derive(Debug, Clone)]
pub struct ReadModels<B> {
    backend: B,
}

impl<B: FlowBackend> ReadModels<B> {
    /// Queries on `backend`; its read-model tables must exist ([`FlowBackend::prepare`]).
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// Queries on `backend` after creating its read-model tables if they are missing, so a
    /// fresh deployment answers "not found" instead of failing.
    pub async fn open(backend: B) -> Result<Self> {
        backend.prepare().await?;
        Ok(Self::new(backend))
    }

    /// The backend queried.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// One document of `view`'s table, by id; `None` when it does not exist.
    pub async fn get(&self, view: View, id: &str) -> Result<Option<Value>> {
        match view {
            View::Student => self.student(id).await,
            other => self.doc(other.table(), id).await,
        }
    }

    async fn doc(&self, table: Table, id: &str) -> Result<Option<Value>> {
        self.backend.doc(DocRef::new(table, canonical_id(id))).await
    }

    /// A student: `{student_id, student, attendance, grades}` where `student` is the
    /// provisioned record (`enrollment::Student`), `attendance` the attendance record with its
    /// totals ([`AttendanceRecord`] plus `days_absent`, `absent`, `late`, `present`) and
    /// `grades` every course grade of the student (`grading::CourseGrade`, keys
    /// `<student_id>/…`), by course. A part that does not exist is `null` (grades: empty);
    /// `None` when none of them exists.
    pub async fn student(&self, id: &str) -> Result<Option<Value>> {
        let id = canonical_id(id);
        let student = self.doc(Table::Students, &id).await?;
        let attendance = self.doc(Table::Attendance, &id).await?;
        let grades: Vec<Value> = self
            .backend
            .docs(Table::Grades, &format!("{id}/"), GRADES_PER_STUDENT)
            .await?
            .into_iter()
            .map(|(_, doc)| doc)
            .collect();
        if student.is_none() && attendance.is_none() && grades.is_empty() {
            return Ok(None);
        }
        let attendance = attendance.map(with_totals).transpose()?;
        Ok(Some(json!({
            "student_id": id,
            "student": student,
            "attendance": attendance,
            "grades": grades,
        })))
    }

    /// An enrollment application (`enrollment::Application`); `None` when it does not exist.
    pub async fn application(&self, id: &str) -> Result<Option<Value>> {
        self.doc(Table::Applications, id).await
    }

    /// Up to `limit` applications: those waiting for approval first, then the provisioned
    /// ones, each group oldest submission first. Reads the whole table to order it.
    pub async fn applications(&self, limit: usize) -> Result<Vec<Value>> {
        let mut all: Vec<Value> = self
            .backend
            .docs(Table::Applications, "", usize::MAX)
            .await?
            .into_iter()
            .map(|(_, doc)| doc)
            .collect();
        all.sort_by(pending_first);
        all.truncate(limit);
        Ok(all)
    }

    /// A course-access record (`access::Access`), by access id; `None` when it does not
    /// exist.
    pub async fn access(&self, id: &str) -> Result<Option<Value>> {
        self.doc(Table::Access, id).await
    }

    /// A paid order and the access it granted (`access::Order`), by order id; `None` when it
    /// does not exist.
    pub async fn order(&self, id: &str) -> Result<Option<Value>> {
        self.doc(Table::Orders, id).await
    }

    /// An essay batch (`essays::Batch`), by batch id; `None` when it does not exist.
    pub async fn batch(&self, id: &str) -> Result<Option<Value>> {
        self.doc(Table::Batches, id).await
    }

    /// The number of documents in every table, by [`table_name`].
    pub async fn counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        for table in Table::ALL {
            counts.insert(table_name(table), self.backend.count(table).await?);
        }
        Ok(counts)
    }
}

/// The attendance document with its totals added.
fn with_totals(doc: Value) -> Result<Value> {
    use edubus_events::AttendanceMarkedV1Status as S;
    let record: AttendanceRecord = serde::Deserialize::deserialize(&doc).map_err(|e| {
        Error::internal("an attendance document does not match AttendanceRecord", e)
    })?;
    let mut out = match doc {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let totals = [
        ("days_absent", record.days()),
        ("absent", record.count(S::Absent)),
        ("late", record.count(S::Late)),
        ("present", record.count(S::Present)),
    ];
    for (name, n) in totals {
        out.insert(name.to_owned(), n.into());
    }
    Ok(Value::Object(out))
}

/// Orders applications: waiting ones first, then by submission time, then by id.
fn pending_first(a: &Value, b: &Value) -> Ordering {
    let waiting = |v: &Value| v["status"] != "provisioned";
    let field = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
    waiting(b)
        .cmp(&waiting(a))
        .then_with(|| field(a, "submitted_at").cmp(&field(b, "submitted_at")))
        .then_with(|| field(a, "application_id").cmp(&field(b, "application_id")))
}

/// A staff approval of an enrollment application.
#[derive(Debug, Clone)]
pub struct Approve {
    /// The application to approve.
    pub application_id: String,
    /// The staff member approving (`approved_by`).
    pub approved_by: Uuid,
    /// Staff notes about the applicant.
    pub notes: Option<String>,
    /// Who acted, recorded as the event's `actorid` (`cli:alice`, a token name).
    pub actor: Option<String>,
}

/// The `enrollment.approved` event an approval published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approved {
    /// The event id.
    pub id: String,
    /// Its position in the log.
    pub position: u64,
    /// The application approved.
    pub application_id: String,
    /// The enrollment's correlation id (the submitted event's).
    pub correlation_id: String,
    /// The `enrollment.submitted` event it is caused by.
    pub causation_id: String,
}

/// The `approved_by` of an approval without one: a stable id derived from who acted.
pub fn staff_id(actor: &str) -> Uuid {
    Uuid::new_v5(&crate::NAMESPACE, format!("staff/{actor}").as_bytes())
}

/// Approves an application: publishes `enrollment.approved` caused by its
/// `enrollment.submitted` (same correlation id, causation id = the submitted event's id).
///
/// Refused, with nothing published, when the application is unknown
/// ([`Error::NotFound`]), already provisioned, or already approved and waiting for its
/// provisioning ([`Error::Conflict`] naming the student or the approval).
pub async fn approve<B: FlowBackend>(bus: &Bus<B>, request: Approve) -> Result<Approved> {
    let id = canonical_id(&request.application_id);
    let models = ReadModels::new(bus.backend().clone());
    let Some(doc) = models.application(&id).await? else {
        return Err(Error::not_found("enrollment application", id));
    };
    let application: Application = serde_json::from_value(doc).map_err(|e| {
        Error::internal(
            format!("the application document `{id}` does not match Application"),
            e,
        )
    })?;
    if application.status == ApplicationStatus::Provisioned {
        let student = application
            .student_id
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
        return Err(Error::conflict(format!(
            "application {id} is already provisioned (student {student}); nothing published"
        )));
    }
    if let Some(earlier) = approval_of(bus.backend(), &application).await? {
        return Err(Error::conflict(format!(
            "application {id} was already approved by event {} (position {}); its \
             provisioning is pending (trace correlation {}); nothing published",
            earlier.envelope.id, earlier.position, application.correlation_id
        )));
    }
    let event = EnrollmentApproved {
        application_id: application.application_id,
        student_temp_id: application.student_temp_id,
        approved_by: request.approved_by,
        approved_at: Timestamp::now(),
        notes: request.notes,
    };
    let mut envelope = bus.envelope(&event)?;
    envelope.id = approval_id(&application).to_string();
    envelope = match EventStore::get(bus.backend(), &application.submitted_event_id).await? {
        Some(submitted) => envelope.caused_by(&submitted.envelope),
        // The document names the cause even if its event cannot be read back.
        None => envelope
            .with_correlation_id(application.correlation_id.clone())
            .with_causation_id(application.submitted_event_id.clone()),
    };
    if let Some(actor) = request.actor {
        envelope = envelope.with_actor_id(actor);
    }
    let correlation_id = envelope.correlation_id().to_owned();
    let causation_id = envelope.causationid.clone().unwrap_or_default();
    let approval = envelope.id.clone();
    let Appended {
        id: event_id,
        position,
        ..
    } = match bus.publish_envelope(envelope).await {
        Err(Error::Conflict { .. }) => {
            return Err(Error::conflict(format!(
                "application {id} was approved at the same time by event {approval} \
                 (trace correlation {}); nothing published",
                application.correlation_id
            )));
        }
        other => other?,
    };
    Ok(Approved {
        id: event_id,
        position,
        application_id: id,
        correlation_id,
        causation_id,
    })
}

/// The id of the one `enrollment.approved` an application's submission can have: derived
/// from both, so the store refuses a second approval that passed the checks at the same time.
fn approval_id(application: &Application) -> Uuid {
    let name = format!(
        "enrollment.approved/{}/{}",
        application.application_id, application.submitted_event_id
    );
    Uuid::new_v5(&crate::NAMESPACE, name.as_bytes())
}

/// An `enrollment.approved` of `application` already in the log, if any.
async fn approval_of<B: EventStore>(
    backend: &B,
    application: &Application,
) -> Result<Option<edubus_core::Recorded>> {
    let query = ReadQuery {
        types: vec!["enrollment.approved".to_owned()],
        correlation_id: Some(application.correlation_id.clone()),
        limit: 1000,
        ..ReadQuery::default()
    };
    let wanted = application.application_id.to_string();
    Ok(backend
        .read(query)
        .await?
        .into_iter()
        .find(|r| r.envelope.data["application_id"] == wanted.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_looked_up_in_canonical_form() {
        let id = "6F1C2A4E-7B1D-4C55-9A0E-1C2D3E4F5A6B";
        assert_eq!(canonical_id(id), id.to_lowercase());
        assert_eq!(canonical_id("batch-7"), "batch-7");
    }

    #[test]
    fn waiting_applications_come_first_then_oldest() {
        let app = |id: &str, status: &str, at: &str| json!({"application_id": id, "status": status, "submitted_at": at});
        let mut all = [
            app("a", "provisioned", "2026-01-01T00:00:00Z"),
            app("b", "submitted", "2026-01-03T00:00:00Z"),
            app("c", "submitted", "2026-01-02T00:00:00Z"),
        ];
        all.sort_by(pending_first);
        let ids: Vec<&str> = all
            .iter()
            .filter_map(|a| a["application_id"].as_str())
            .collect();
        assert_eq!(ids, ["c", "b", "a"]);
    }

    #[test]
    fn table_names_drop_the_sql_prefix() {
        assert_eq!(table_name(Table::Applications), "applications");
        assert_eq!(table_name(Table::Grades), "grades");
    }
}
