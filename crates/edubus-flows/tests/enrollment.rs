//! Enrollment provisioning and family communications end to end, on SQLite and on
//! PostgreSQL + Redis.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use edubus_core::Envelope;
use edubus_events::{
    AttendanceThresholdBreached, CommsDispatched, CommsDispatchedV1Channel, EnrollmentApproved,
    EnrollmentProvisioned, EnrollmentSubmitted,
};
use edubus_flows::comms::{self, Dispatch};
use edubus_flows::enrollment::{self, Application, ApplicationStatus, Student};
use edubus_flows::{FlowBackend, FlowConfig, Table};
use jiff::Timestamp;
use uuid::Uuid;

use common::{Env, payload};

fn submitted(application: Uuid, guardian: Uuid) -> EnrollmentSubmitted {
    EnrollmentSubmitted {
        application_id: application,
        student_temp_id: Uuid::now_v7(),
        guardian_id: guardian,
        submitted_at: Timestamp::now(),
    }
}

fn approved(application: &EnrollmentSubmitted) -> EnrollmentApproved {
    EnrollmentApproved {
        application_id: application.application_id,
        student_temp_id: application.student_temp_id,
        approved_by: Uuid::from_u128(42),
        approved_at: Timestamp::now(),
        notes: None,
    }
}

/// Submits an application, waits until it is recorded, approves it as caused by the
/// submission; returns both envelopes.
async fn enroll<B: FlowBackend>(env: &Env<B>, guardian: Uuid) -> (Envelope, Envelope) {
    let application = submitted(Uuid::now_v7(), guardian);
    let submission = env.publish(&application).await;
    // Staff approve applications they can see.
    let _: Application = env
        .wait_doc(Table::Applications, application.application_id.to_string())
        .await;
    let approval = env
        .publish_caused(&approved(&application), &submission)
        .await;
    (submission, approval)
}

/// Submitted -> approved -> provisioned -> welcome dispatched: one correlation id, each
/// event caused by the previous one; the application and student documents record it all.
async fn enrollment_chain_provisions_and_welcomes<B: FlowBackend>(env: &Env<B>) {
    let config = FlowConfig::default();
    let guardian = Uuid::now_v7();
    let (submission, approval) = enroll(env, guardian).await;
    let provisioned = env.wait_events("enrollment.provisioned", 1).await;
    let dispatched = env.wait_events("comms.dispatched", 1).await;
    env.settle().await;
    assert_eq!(provisioned.len(), 1);
    assert_eq!(dispatched.len(), 1);
    let (provisioned, dispatched) = (&provisioned[0], &dispatched[0]);

    let chain = [&submission, &approval, provisioned, dispatched];
    for event in &chain {
        assert_eq!(
            event.correlation_id(),
            submission.id,
            "{}",
            event.event_type
        );
    }
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1].causationid.as_deref(),
            Some(pair[0].id.as_str()),
            "{} is caused by {}",
            pair[1].event_type,
            pair[0].event_type
        );
    }

    let application_id: Uuid = payload::<EnrollmentSubmitted>(&submission).application_id;
    let student_id = enrollment::student_id_for(application_id);
    let event: EnrollmentProvisioned = payload(provisioned);
    assert_eq!(event.student_id, student_id);
    assert_eq!(event.student_code, "S-000001");
    assert_eq!(event.homeroom_id, config.homerooms[0]);
    assert_eq!(event.course_ids, config.courses);
    assert_eq!(event.application_id, application_id);

    let student: Student = env
        .doc(Table::Students, student_id.to_string())
        .await
        .expect("student document");
    assert_eq!(
        student,
        Student {
            student_id,
            student_code: "S-000001".into(),
            homeroom_id: config.homerooms[0],
            course_ids: config.courses.clone(),
            guardian_id: guardian,
            application_id,
            provisioned_at: event.provisioned_at,
        }
    );
    let application: Application = env
        .doc(Table::Applications, application_id.to_string())
        .await
        .expect("application document");
    let sent: EnrollmentSubmitted = payload(&submission);
    assert_eq!(
        application,
        Application {
            application_id,
            student_temp_id: sent.student_temp_id,
            guardian_id: guardian,
            submitted_at: sent.submitted_at,
            status: ApplicationStatus::Provisioned,
            submitted_event_id: submission.id.clone(),
            correlation_id: submission.id.clone(),
            student_id: Some(student_id),
        }
    );

    let welcome: CommsDispatched = payload(dispatched);
    assert_eq!(welcome.template_id, comms::welcome_template());
    assert_eq!(welcome.channel, CommsDispatchedV1Channel::Email);
    assert_eq!(welcome.audience_segment_id, guardian);
    assert_eq!(welcome.dispatch_id, comms::dispatch_id_for(&provisioned.id));
    let record: Dispatch = env
        .doc(Table::Dispatches, welcome.dispatch_id.to_string())
        .await
        .expect("dispatch record");
    assert_eq!(record.audience_segment_id, guardian);
    assert_eq!(record.cause_event_id, provisioned.id);
}

on_both_deployments!(enrollment_chain_provisions_and_welcomes);

/// The students of an environment, by application id.
async fn students<B: FlowBackend>(env: &Env<B>) -> BTreeMap<Uuid, Student> {
    let docs = env
        .bus
        .backend()
        .docs(Table::Students, "", 1000)
        .await
        .expect("students");
    docs.into_iter()
        .map(|(_, doc)| {
            let student: Student = serde_json::from_value(doc).expect("student document");
            (student.application_id, student)
        })
        .collect()
}

/// 20 approvals handled concurrently get 20 distinct codes and the homerooms in turn; a
/// resubmission, approvals published twice and a replay of both subscriptions provision
/// and welcome no one twice.
async fn twenty_approvals_provision_twenty_students_once<B: FlowBackend>(env: &Env<B>) {
    let config = FlowConfig::default();
    let applications: Vec<EnrollmentSubmitted> = (0..20)
        .map(|_| submitted(Uuid::now_v7(), Uuid::now_v7()))
        .collect();
    let mut submissions = Vec::new();
    for application in &applications {
        submissions.push(env.publish(application).await);
    }
    for application in &applications {
        let key = application.application_id.to_string();
        let _: Application = env.wait_doc(Table::Applications, key).await;
    }
    // A resubmission under a new event id, naming another guardian: ignored.
    let first = &applications[0];
    env.publish(&submitted(first.application_id, Uuid::now_v7()))
        .await;
    for (application, submission) in applications.iter().zip(&submissions) {
        env.publish_caused(&approved(application), submission).await;
    }
    // Five approvals published again under new event ids, as a double click would.
    for (application, submission) in applications.iter().zip(&submissions).take(5) {
        env.publish_caused(&approved(application), submission).await;
    }
    env.wait_events("enrollment.provisioned", 20).await;
    env.wait_events("comms.dispatched", 20).await;
    env.settle().await;

    let provisioned = env.events("enrollment.provisioned").await;
    assert_eq!(provisioned.len(), 20, "one provisioning per application");
    let by_application: BTreeSet<Uuid> = provisioned
        .iter()
        .map(|e| payload::<EnrollmentProvisioned>(e).application_id)
        .collect();
    let expected: BTreeSet<Uuid> = applications.iter().map(|a| a.application_id).collect();
    assert_eq!(by_application, expected);

    let before = students(env).await;
    assert_eq!(before.len(), 20);
    let codes: BTreeSet<&str> = before.values().map(|s| s.student_code.as_str()).collect();
    let all: Vec<String> = (1..=20).map(enrollment::student_code).collect();
    assert_eq!(
        codes,
        all.iter().map(String::as_str).collect(),
        "20 distinct codes, S-000001 to S-000020"
    );
    for student in before.values() {
        let n: usize = student.student_code[2..].parse().expect("code number");
        assert_eq!(
            student.homeroom_id,
            config.homerooms[(n - 1) % config.homerooms.len()],
            "homeroom of {}",
            student.student_code
        );
        assert_eq!(student.course_ids, config.courses);
    }
    let first_application: Application = env
        .doc(Table::Applications, first.application_id.to_string())
        .await
        .expect("application");
    assert_eq!(first_application.guardian_id, first.guardian_id);
    assert_eq!(first_application.submitted_event_id, submissions[0].id);
    assert_eq!(first_application.status, ApplicationStatus::Provisioned);

    for subscription in [enrollment::SUBSCRIPTION, comms::SUBSCRIPTION] {
        let replayed = env.replay_settled(subscription).await;
        assert!(replayed >= 20, "{subscription}: {replayed} replayed");
    }
    env.settle().await;
    assert_eq!(env.events("enrollment.provisioned").await.len(), 20);
    assert_eq!(env.events("comms.dispatched").await.len(), 20);
    assert_eq!(students(env).await, before, "a replay changes no student");
    let stats = env.bus.backend().stats().await.expect("stats");
    for subscription in [enrollment::SUBSCRIPTION, comms::SUBSCRIPTION] {
        let dead = stats
            .iter()
            .find(|s| s.subscription == subscription)
            .map(|s| s.dlq_depth);
        assert_eq!(dead, Some(0), "{subscription} dead-lettered nothing");
    }
}

on_both_deployments!(twenty_approvals_provision_twenty_students_once);

/// A chronic-absence breach of a provisioned student notifies the student's guardian; one of
/// a student without a record goes to that student's guardians segment.
async fn threshold_breach_notifies_the_guardian<B: FlowBackend>(env: &Env<B>) {
    let guardian = Uuid::now_v7();
    let (submission, _) = enroll(env, guardian).await;
    env.wait_events("enrollment.provisioned", 1).await;
    let application_id = payload::<EnrollmentSubmitted>(&submission).application_id;
    let student_id = enrollment::student_id_for(application_id);
    let _: Student = env.wait_doc(Table::Students, student_id.to_string()).await;

    let breach = |student_id| AttendanceThresholdBreached {
        student_id,
        days_absent: 10,
        threshold: 10,
        first_absent_at: Timestamp::now(),
        last_absent_at: Timestamp::now(),
    };
    let known = env.publish(&breach(student_id)).await;
    let stranger = Uuid::now_v7();
    let unknown = env.publish(&breach(stranger)).await;
    env.wait_events("comms.dispatched", 3).await;
    env.settle().await;

    let dispatched = env.events("comms.dispatched").await;
    assert_eq!(dispatched.len(), 3, "a welcome and two notices");
    let notice_to = |cause: &Envelope| {
        let envelope = dispatched
            .iter()
            .find(|d| d.causationid.as_deref() == Some(cause.id.as_str()))
            .unwrap_or_else(|| panic!("no dispatch caused by {}", cause.id));
        assert_eq!(envelope.correlation_id(), cause.correlation_id());
        let notice: CommsDispatched = payload(envelope);
        assert_eq!(notice.template_id, comms::absence_notice_template());
        assert_eq!(notice.dispatch_id, comms::dispatch_id_for(&cause.id));
        notice.audience_segment_id
    };
    assert_eq!(notice_to(&known), guardian);
    assert_eq!(notice_to(&unknown), comms::guardians_of(stranger));
}

on_both_deployments!(threshold_breach_notifies_the_guardian);
