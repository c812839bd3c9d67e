//! The Essay Lifecycle Service: batch registration, slot assignment, readiness and the close
//! of the spellcheck phase.

use edubus_core::Append;
use edubus_core::error::BoxError;
use edubus_events::{
    BatchEssaysReady, BatchEssaysRegistered, EssayContentProvisioned, EssaySlotAssigned,
    EssaySpellcheckCompleted, EssayValidationFailed, ExcessContentProvisioned,
    SpellcheckPhaseCompleted,
};
use edubus_runtime::Caused;
use jiff::Timestamp;

use super::batch::{Batch, EssayResult, Provisioned, SlotContent};
use super::existing;

/// Why an event about a batch finds no document: no registration created it (yet). It is
/// retried, since the registration may still be on its way, then dead-lettered.
const NOT_REGISTERED: &str = "the batch is not registered (no batch.essays.registered for it \
                              was handled by the essay lifecycle)";

/// `batch.essays.registered`: creates the batch with its empty slots; a batch that exists
/// already is left as it is.
pub(super) fn registered(
    e: &BatchEssaysRegistered,
    _caused: &Caused,
    batch: &mut Option<Batch>,
    _out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    if batch.is_none() {
        *batch = Some(Batch::registered(e)?);
    }
    Ok(())
}

/// `essay.content.provisioned`: fills a slot (`essay.slot.assigned`) or reports excess content
/// (`excess.content.provisioned`); publishes `batch.essays.ready` when the last expected
/// essay arrived.
pub(super) fn provisioned(
    e: &EssayContentProvisioned,
    caused: &Caused,
    batch: &mut Option<Batch>,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let batch = existing(batch, e, NOT_REGISTERED)?;
    let content = SlotContent {
        file_upload_id: e.file_upload_id,
        text_storage_id: e.text_storage_id,
        raw_file_storage_id: e.raw_file_storage_id,
        word_count: e.word_count,
        provisioned_at: e.provisioned_at,
    };
    match batch.provision(e.essay_id, content) {
        Provisioned::Known => {}
        Provisioned::Excess => out.push(caused.append(&ExcessContentProvisioned {
            batch_id: e.batch_id,
            file_upload_id: e.file_upload_id,
            text_storage_id: e.text_storage_id,
            file_name: e.file_name.clone(),
            expected_essay_count: i64::from(batch.expected_essay_count),
            provisioned_at: e.provisioned_at,
        })?),
        Provisioned::Assigned(essay_id) => {
            out.push(caused.append(&EssaySlotAssigned {
                batch_id: e.batch_id,
                essay_id,
                file_upload_id: e.file_upload_id,
                text_storage_id: e.text_storage_id,
                file_name: e.file_name.clone(),
                assigned_at: Timestamp::now(),
            })?);
            announce_ready(batch, caused, out)?;
        }
    }
    Ok(())
}

/// `essay.validation.failed`: counts the failed upload toward the batch's expected essays.
pub(super) fn validation_failed(
    e: &EssayValidationFailed,
    caused: &Caused,
    batch: &mut Option<Batch>,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let batch = existing(batch, e, NOT_REGISTERED)?;
    if batch.fail_upload(e.file_upload_id, e.error_code) {
        announce_ready(batch, caused, out)?;
    }
    Ok(())
}

/// Publishes `batch.essays.ready` if this change made the batch ready.
fn announce_ready(
    batch: &mut Batch,
    caused: &Caused,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let (batch_id, expected, class_id) =
        (batch.batch_id, batch.expected_essay_count, batch.class_id);
    if let Some(ready) = batch.become_ready(Timestamp::now()) {
        out.push(caused.append(&BatchEssaysReady {
            batch_id,
            ready_essay_ids: ready.essay_ids.clone(),
            ready_essay_count: i64::try_from(ready.essay_ids.len())?,
            expected_essay_count: i64::from(expected),
            failed_validation_count: i64::from(ready.failed_validation_count),
            class_id,
            ready_at: ready.ready_at,
        })?);
    }
    Ok(())
}

/// `essay.spellcheck.completed`: records the essay's result; publishes
/// `spellcheck.phase.completed` when every ready essay has one.
pub(super) fn spellcheck_completed(
    e: &EssaySpellcheckCompleted,
    caused: &Caused,
    batch: &mut Option<Batch>,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let batch = existing(batch, e, NOT_REGISTERED)?;
    let result = EssayResult {
        status: e.status,
        corrections_count: e.corrections_count,
        completed_at: e.completed_at,
    };
    if !batch.record_spellcheck(e.essay_id, result)? {
        return Ok(());
    }
    let batch_id = batch.batch_id;
    if let Some(summary) = batch.complete_spellcheck(Timestamp::now()) {
        out.push(caused.append(&SpellcheckPhaseCompleted {
            batch_id,
            status: summary.status,
            essay_count: i64::from(summary.successful_count) + i64::from(summary.failed_count),
            successful_count: i64::from(summary.successful_count),
            failed_count: i64::from(summary.failed_count),
            completed_at: summary.completed_at,
        })?);
    }
    Ok(())
}
