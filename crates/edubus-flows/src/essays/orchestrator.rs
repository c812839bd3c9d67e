//! The Batch Orchestrator Service: starts the spellcheck phase of a ready batch.

use edubus_core::Append;
use edubus_core::error::BoxError;
use edubus_events::{
    BatchEssaysReady, BatchEssaysRegisteredV1Language, BatchPhaseSkipped, BatchPhaseSkippedV1Phase,
    BatchPhaseSkippedV1SkipReason, BatchSpellcheckInitiateCommand,
    BatchSpellcheckInitiateCommandV1Language,
};
use edubus_runtime::Caused;
use jiff::Timestamp;

use super::batch::{Batch, SpellcheckRequest};
use super::existing;

/// `batch.essays.ready`: sends `batch.spellcheck.initiate.command` for the ready essays in
/// the batch's language, or publishes `batch.phase.skipped` (no eligible essays) when every
/// upload failed validation. A batch whose phase was started already publishes nothing.
pub(super) fn ready(
    e: &BatchEssaysReady,
    caused: &Caused,
    batch: &mut Option<Batch>,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let batch = existing(
        batch,
        e,
        "the batch orchestrator finds no batch document (the essay lifecycle writes it before \
         announcing readiness)",
    )?;
    if batch.spellcheck.requested.is_some() {
        return Ok(());
    }
    let requested_at = Timestamp::now();
    let skipped = e.ready_essay_ids.is_empty();
    if skipped {
        out.push(caused.append(&BatchPhaseSkipped {
            batch_id: e.batch_id,
            phase: BatchPhaseSkippedV1Phase::Spellcheck,
            skip_reason: BatchPhaseSkippedV1SkipReason::NoEligibleEssays,
            skipped_at: requested_at,
        })?);
    } else {
        out.push(caused.append(&BatchSpellcheckInitiateCommand {
            batch_id: e.batch_id,
            essay_ids: e.ready_essay_ids.clone(),
            language: command_language(batch.language),
            requested_at,
        })?);
    }
    batch.spellcheck.requested = Some(SpellcheckRequest {
        essay_ids: e.ready_essay_ids.clone(),
        skipped,
        requested_at,
    });
    Ok(())
}

fn command_language(
    language: BatchEssaysRegisteredV1Language,
) -> BatchSpellcheckInitiateCommandV1Language {
    match language {
        BatchEssaysRegisteredV1Language::En => BatchSpellcheckInitiateCommandV1Language::En,
        BatchEssaysRegisteredV1Language::Sv => BatchSpellcheckInitiateCommandV1Language::Sv,
    }
}
