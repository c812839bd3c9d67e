//! The essay batch pipeline end to end, on SQLite and on PostgreSQL + Redis.

mod common;

use std::collections::BTreeMap;

use edubus_core::{DeadReason, Envelope, Event, EventStore, ReadQuery};
use edubus_events::{
    BatchEssaysReady, BatchEssaysRegistered, BatchEssaysRegisteredV1Language, BatchPhaseSkipped,
    BatchPhaseSkippedV1Phase, BatchPhaseSkippedV1SkipReason, BatchSpellcheckInitiateCommand,
    BatchSpellcheckInitiateCommandV1Language, EssayContentProvisioned, EssaySlotAssigned,
    EssaySpellcheckCompleted, EssaySpellcheckCompletedV1Status, EssayValidationFailed,
    EssayValidationFailedV1ErrorCode, ExcessContentProvisioned, SpellcheckPhaseCompleted,
    SpellcheckPhaseCompletedV1Status,
};
use edubus_flows::essays::{self, Batch, LIFECYCLE, ORCHESTRATOR, SPELLCHECKER};
use edubus_flows::{FlowBackend, Table};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use common::{Env, assert_caused_by, payload};

fn registration(batch_id: Uuid, essay_ids: &[Uuid], expected: i64) -> BatchEssaysRegistered {
    BatchEssaysRegistered {
        batch_id,
        user_id: Uuid::from_u128(7),
        expected_essay_count: expected,
        essay_ids: essay_ids.to_vec(),
        course_code: "ENG5".into(),
        language: BatchEssaysRegisteredV1Language::En,
        class_id: Some(Uuid::from_u128(8)),
        essay_instructions: Some("Write about a book you read this term.".into()),
        registered_at: Timestamp::now(),
    }
}

fn content(batch_id: Uuid, essay_id: Uuid, word_count: i64) -> EssayContentProvisioned {
    EssayContentProvisioned {
        batch_id,
        essay_id,
        file_upload_id: Uuid::now_v7(),
        text_storage_id: Uuid::now_v7(),
        raw_file_storage_id: Uuid::now_v7(),
        file_name: format!("essay-{word_count}.docx"),
        word_count,
        provisioned_at: Timestamp::now(),
    }
}

fn rejected(batch_id: Uuid) -> EssayValidationFailed {
    EssayValidationFailed {
        batch_id,
        file_upload_id: Uuid::now_v7(),
        file_name: "empty.docx".into(),
        error_code: EssayValidationFailedV1ErrorCode::EmptyContent,
        error_message: Some("the file has no text".into()),
        failed_at: Timestamp::now(),
    }
}

/// The stored events of `E` for `batch_id` (the `batch_id` of their payload), with their
/// payloads.
async fn of_batch<B: FlowBackend, E: Event + DeserializeOwned>(
    env: &Env<B>,
    batch_id: Uuid,
) -> Vec<(Envelope, E)> {
    let batch = serde_json::Value::String(batch_id.to_string());
    env.events(E::NAME)
        .await
        .into_iter()
        .filter(|envelope| envelope.data.get("batch_id") == Some(&batch))
        .map(|envelope| {
            let event: E = payload(&envelope);
            (envelope, event)
        })
        .collect()
}

/// Asserts that `E` is stored on the HuleEdu topic `topic` (and only there), `n` times.
async fn assert_on_topic<B: FlowBackend, E: Event>(env: &Env<B>, topic: &str, n: usize) {
    assert_eq!(E::TOPIC, topic, "catalog topic of {}", E::NAME);
    let records = EventStore::read(
        env.bus.backend(),
        ReadQuery {
            types: vec![E::NAME.to_owned()],
            limit: 10_000,
            ..ReadQuery::default()
        },
    )
    .await
    .expect("read");
    assert_eq!(records.len(), n, "stored {}", E::NAME);
    assert!(
        records.iter().all(|r| r.stream == topic),
        "{} stored on {:?}",
        E::NAME,
        records.iter().map(|r| &r.stream).collect::<Vec<_>>()
    );
    let on_stream = EventStore::read(
        env.bus.backend(),
        ReadQuery {
            stream: Some(topic.to_owned()),
            limit: 10_000,
            ..ReadQuery::default()
        },
    )
    .await
    .expect("read stream");
    assert_eq!(on_stream.len(), n, "events on {topic}");
}

/// Waits (up to 30 s) until the essay lifecycle has created the batch.
async fn wait_batch<B: FlowBackend>(env: &Env<B>, batch_id: Uuid) -> Batch {
    env.wait_doc(Table::Batches, batch_id.to_string()).await
}

async fn stored_count<B: FlowBackend>(env: &Env<B>) -> usize {
    let query = ReadQuery {
        limit: 100_000,
        ..ReadQuery::default()
    };
    EventStore::read(env.bus.backend(), query)
        .await
        .expect("read all")
        .len()
}

/// Queues every event of the three subscriptions for redelivery.
async fn replay_all<B: FlowBackend>(env: &Env<B>) {
    for subscription in [LIFECYCLE, ORCHESTRATOR, SPELLCHECKER] {
        let replayed =
            edubus_core::Replay::replay(env.bus.backend(), subscription, 0, None, "test")
                .await
                .expect("replay");
        assert!(replayed > 0, "{subscription} had events to replay");
    }
}

/// Three essays registered, content for each (one twice, plus a surplus upload): one
/// readiness, one command, three results and one phase completion, on the HuleEdu topics,
/// with the registration's correlation id throughout and each causation id naming its cause;
/// a replay of the three subscriptions changes nothing.
async fn a_batch_flows_through_spellcheck_once<B: FlowBackend>(env: &Env<B>) {
    let batch_id = Uuid::now_v7();
    let essay_ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let registered = env.publish(&registration(batch_id, &essay_ids, 3)).await;
    let created = wait_batch(env, batch_id).await;
    assert_eq!(created.expected_essay_count, 3);
    assert_eq!(created.slots.len(), 3);
    assert_eq!(created.course_code, "ENG5");
    assert_eq!(created.class_id, Some(Uuid::from_u128(8)));

    // The first upload claims the third slot, the second an id of no slot (it takes the first
    // free one), the third the second slot; the fourth finds the batch full.
    let uploads = [
        content(batch_id, essay_ids[2], 412),
        content(batch_id, Uuid::now_v7(), 95),
        content(batch_id, essay_ids[1], 260),
        content(batch_id, essay_ids[0], 180),
    ];
    let mut causes = Vec::new();
    for upload in &uploads {
        causes.push(env.publish_caused(upload, &registered).await);
    }
    // The File Service publishes the first upload again, under a new event id.
    let duplicate = env.publish_caused(&uploads[0], &registered).await;
    env.wait_events(SpellcheckPhaseCompleted::NAME, 1).await;
    env.handled(LIFECYCLE, &[&duplicate]).await;
    env.settle().await;

    // The uploads carry the registration's correlation id and each effect below carries its
    // cause's, so the registration's correlation id runs through the whole batch.
    for cause in &causes {
        assert_eq!(cause.correlation_id(), registered.correlation_id());
    }
    let slots = of_batch::<_, EssaySlotAssigned>(env, batch_id).await;
    let expected_slot = [essay_ids[2], essay_ids[0], essay_ids[1]];
    assert_eq!(slots.len(), 3, "one assignment per upload: {slots:?}");
    for (i, upload) in uploads[..3].iter().enumerate() {
        let (envelope, slot) = slots
            .iter()
            .find(|(_, s)| s.file_upload_id == upload.file_upload_id)
            .expect("assignment of the upload");
        assert_eq!(slot.essay_id, expected_slot[i], "slot of upload {i}");
        assert_eq!(slot.text_storage_id, upload.text_storage_id);
        assert_caused_by(envelope, &causes[i]);
    }

    let excess = of_batch::<_, ExcessContentProvisioned>(env, batch_id).await;
    assert_eq!(excess.len(), 1);
    assert_eq!(excess[0].1.file_upload_id, uploads[3].file_upload_id);
    assert_eq!(excess[0].1.expected_essay_count, 3);
    assert_caused_by(&excess[0].0, &causes[3]);

    let ready = of_batch::<_, BatchEssaysReady>(env, batch_id).await;
    assert_eq!(ready.len(), 1, "ready once: {ready:?}");
    let (ready_env, ready_event) = &ready[0];
    assert_eq!(ready_event.ready_essay_ids, essay_ids, "slot order");
    assert_eq!(ready_event.ready_essay_count, 3);
    assert_eq!(ready_event.expected_essay_count, 3);
    assert_eq!(ready_event.failed_validation_count, 0);
    assert_eq!(ready_event.class_id, Some(Uuid::from_u128(8)));
    assert_caused_by(ready_env, &causes[2]);

    let commands = of_batch::<_, BatchSpellcheckInitiateCommand>(env, batch_id).await;
    assert_eq!(commands.len(), 1, "one command: {commands:?}");
    let (command_env, command) = &commands[0];
    assert_eq!(command.essay_ids, essay_ids);
    assert_eq!(
        command.language,
        BatchSpellcheckInitiateCommandV1Language::En
    );
    assert_caused_by(command_env, ready_env);

    let results = of_batch::<_, EssaySpellcheckCompleted>(env, batch_id).await;
    assert_eq!(results.len(), 3, "one result per essay: {results:?}");
    let words: BTreeMap<Uuid, i64> = expected_slot
        .iter()
        .zip(&uploads)
        .map(|(essay, upload)| (*essay, upload.word_count))
        .collect();
    for (envelope, result) in &results {
        assert_eq!(result.status, EssaySpellcheckCompletedV1Status::Success);
        assert_eq!(
            result.corrections_count,
            essays::reference_corrections(result.essay_id, words[&result.essay_id])
        );
        assert_caused_by(envelope, command_env);
    }
    let mut checked: Vec<Uuid> = results.iter().map(|(_, r)| r.essay_id).collect();
    checked.sort();
    let mut all = essay_ids.clone();
    all.sort();
    assert_eq!(checked, all);

    let phases = of_batch::<_, SpellcheckPhaseCompleted>(env, batch_id).await;
    assert_eq!(phases.len(), 1, "phase completed once: {phases:?}");
    let (phase_env, phase) = &phases[0];
    assert_eq!(
        phase.status,
        SpellcheckPhaseCompletedV1Status::CompletedSuccessfully
    );
    assert_eq!(
        (
            phase.essay_count,
            phase.successful_count,
            phase.failed_count
        ),
        (3, 3, 0)
    );
    // The lifecycle handles a batch's results in order: the last one closes the phase.
    assert_caused_by(phase_env, &results[2].0);

    assert_on_topic::<_, BatchEssaysRegistered>(env, "huleedu.batch.essays.registered.v1", 1).await;
    assert_on_topic::<_, EssayContentProvisioned>(env, "huleedu.essay.content.provisioned.v1", 5)
        .await;
    assert_on_topic::<_, EssaySlotAssigned>(env, "huleedu.essay.slot.assigned.v1", 3).await;
    assert_on_topic::<_, ExcessContentProvisioned>(env, "huleedu.excess.content.provisioned.v1", 1)
        .await;
    assert_on_topic::<_, BatchEssaysReady>(env, "huleedu.batch.essays.ready.v1", 1).await;
    assert_on_topic::<_, BatchSpellcheckInitiateCommand>(
        env,
        "huleedu.batch.spellcheck.initiate.command.v1",
        1,
    )
    .await;
    assert_on_topic::<_, EssaySpellcheckCompleted>(env, "huleedu.essay.spellcheck.completed.v1", 3)
        .await;
    assert_on_topic::<_, SpellcheckPhaseCompleted>(env, "huleedu.spellcheck.phase.completed.v1", 1)
        .await;

    let batch: Batch = env
        .doc(Table::Batches, batch_id.to_string())
        .await
        .expect("batch");
    assert_eq!(batch.filled(), 3);
    assert_eq!(batch.excess_uploads.len(), 1);
    assert_eq!(batch.spellcheck.checked.len(), 3);
    assert_eq!(batch.spellcheck.results.len(), 3);
    assert!(batch.spellcheck.requested.is_some());
    assert!(batch.spellcheck.completed.is_some());

    // Every event delivered again to all three subscriptions, then the same facts once more
    // under new event ids, one per subscription, behind the replayed events of the batch:
    // nothing is published and no read model changes.
    let stored = stored_count(env).await;
    replay_all(env).await;
    let again = [
        (
            LIFECYCLE,
            env.publish_caused(&uploads[1], &registered).await,
        ),
        (
            ORCHESTRATOR,
            env.publish_caused(ready_event, &registered).await,
        ),
        (SPELLCHECKER, env.publish_caused(command, &registered).await),
    ];
    for (subscription, envelope) in &again {
        env.handled(subscription, &[envelope]).await;
    }
    env.settle().await;
    assert_eq!(
        stored_count(env).await,
        stored + again.len(),
        "a replay and duplicates publish nothing"
    );
    let again: Batch = env
        .doc(Table::Batches, batch_id.to_string())
        .await
        .expect("batch");
    assert_eq!(again, batch, "a replay changes no read model");
}

/// A failed upload fills an expectation: a batch of two with one rejected file is ready with
/// one essay and one failure and its phase covers that essay; a batch whose only upload
/// failed skips the spellcheck phase for want of eligible essays.
async fn failed_uploads_count_toward_readiness<B: FlowBackend>(env: &Env<B>) {
    let batch_id = Uuid::now_v7();
    let essay_ids = [Uuid::now_v7(), Uuid::now_v7()];
    let registered = env.publish(&registration(batch_id, &essay_ids, 2)).await;
    let empty_id = Uuid::now_v7();
    let empty = env
        .publish(&registration(empty_id, &[Uuid::now_v7()], 1))
        .await;
    wait_batch(env, batch_id).await;
    wait_batch(env, empty_id).await;

    let failure = rejected(batch_id);
    env.publish_caused(&failure, &registered).await;
    env.publish_caused(&failure, &registered).await;
    let last = env
        .publish_caused(&content(batch_id, essay_ids[1], 300), &registered)
        .await;
    env.publish_caused(&rejected(empty_id), &empty).await;
    env.wait_events(SpellcheckPhaseCompleted::NAME, 1).await;
    env.wait_events(BatchPhaseSkipped::NAME, 1).await;
    env.settle().await;

    let ready = of_batch::<_, BatchEssaysReady>(env, batch_id).await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].1.ready_essay_ids, vec![essay_ids[1]]);
    assert_eq!(ready[0].1.ready_essay_count, 1);
    assert_eq!(ready[0].1.expected_essay_count, 2);
    assert_eq!(
        ready[0].1.failed_validation_count, 1,
        "the same failure published twice counts once"
    );
    assert_caused_by(&ready[0].0, &last);
    let commands = of_batch::<_, BatchSpellcheckInitiateCommand>(env, batch_id).await;
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].1.essay_ids, vec![essay_ids[1]]);
    let phases = of_batch::<_, SpellcheckPhaseCompleted>(env, batch_id).await;
    assert_eq!(phases.len(), 1);
    assert_eq!(
        (phases[0].1.essay_count, phases[0].1.successful_count),
        (1, 1)
    );

    let none = of_batch::<_, BatchEssaysReady>(env, empty_id).await;
    assert_eq!(none.len(), 1);
    assert!(none[0].1.ready_essay_ids.is_empty());
    assert_eq!(none[0].1.failed_validation_count, 1);
    let skipped = of_batch::<_, BatchPhaseSkipped>(env, empty_id).await;
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].1.phase, BatchPhaseSkippedV1Phase::Spellcheck);
    assert_eq!(
        skipped[0].1.skip_reason,
        BatchPhaseSkippedV1SkipReason::NoEligibleEssays
    );
    assert_caused_by(&skipped[0].0, &none[0].0);
    assert!(
        of_batch::<_, BatchSpellcheckInitiateCommand>(env, empty_id)
            .await
            .is_empty(),
        "no command for a batch without essays"
    );
}

/// Content for a batch nobody registered fails on every attempt and ends in the essay
/// lifecycle's dead-letter queue with a message naming the batch; a registration whose essay
/// ids do not match its expected count is refused at once.
async fn content_for_an_unknown_batch_is_dead_lettered<B: FlowBackend>(env: &Env<B>) {
    let stray_batch = Uuid::now_v7();
    let stray = env
        .publish(&content(stray_batch, Uuid::now_v7(), 200))
        .await;
    let dead = env.dead_letters(LIFECYCLE, 1).await;
    let entry = &dead[0].letter;
    assert_eq!(entry.event_id, stray.id);
    assert_eq!(entry.event_type, EssayContentProvisioned::NAME);
    assert_eq!(entry.reason, DeadReason::Exhausted);
    assert_eq!(entry.attempts.len(), 3, "retried before dead-lettering");
    assert!(
        entry.error.contains(&stray_batch.to_string()) && entry.error.contains("not registered"),
        "{}",
        entry.error
    );

    let bad_batch = Uuid::now_v7();
    let bad = env
        .publish(&registration(bad_batch, &[Uuid::now_v7()], 2))
        .await;
    let dead = env.dead_letters(LIFECYCLE, 2).await;
    let entry = &dead[1].letter;
    assert_eq!(entry.event_id, bad.id);
    assert_eq!(entry.reason, DeadReason::Rejected);
    assert!(
        entry.error.contains("expected_essay_count 2"),
        "{}",
        entry.error
    );
    env.settle().await;

    assert!(env.events(EssaySlotAssigned::NAME).await.is_empty());
    assert!(env.events(ExcessContentProvisioned::NAME).await.is_empty());
    for batch_id in [stray_batch, bad_batch] {
        assert!(
            env.doc::<Batch>(Table::Batches, batch_id.to_string())
                .await
                .is_none()
        );
    }
}

on_both_deployments!(a_batch_flows_through_spellcheck_once);
on_both_deployments!(failed_uploads_count_toward_readiness);
on_both_deployments!(content_for_an_unknown_batch_is_dead_lettered);
