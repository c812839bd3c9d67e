//! The reference Spellchecker Service.

use std::collections::BTreeSet;

use edubus_core::Append;
use edubus_core::error::BoxError;
use edubus_events::{
    BatchSpellcheckInitiateCommand, EssaySpellcheckCompleted, EssaySpellcheckCompletedV1Status,
};
use edubus_runtime::Caused;
use jiff::Timestamp;
use uuid::Uuid;

use super::batch::Batch;
use super::existing;

/// The corrections the reference spellchecker reports for an essay: one per 40 words of its
/// recorded word count, plus 0 to 2 chosen by the essay id's last byte (modulo 3).
///
/// Events carry storage ids, never essay text, so this stand-in cannot check real text; it is
/// where a deployment plugs in its spellchecker. Being a pure function of the essay, a
/// replayed or duplicated command reports the same result.
pub fn reference_corrections(essay_id: Uuid, word_count: i64) -> i64 {
    word_count.max(0) / 40 + i64::from(essay_id.as_bytes()[15] % 3)
}

/// `batch.spellcheck.initiate.command`: publishes one `essay.spellcheck.completed` per listed
/// essay it has not checked before. An essay with provisioned content succeeds with
/// [`reference_corrections`]; an essay without content in the batch fails, saying so.
pub(super) fn initiate(
    e: &BatchSpellcheckInitiateCommand,
    caused: &Caused,
    batch: &mut Option<Batch>,
    out: &mut Vec<Append>,
) -> Result<(), BoxError> {
    let batch = existing(
        batch,
        e,
        "the batch is not registered, so its essays' content is unknown",
    )?;
    let mut listed = BTreeSet::new();
    for essay_id in e.essay_ids.iter().copied() {
        if !listed.insert(essay_id) || batch.spellcheck.checked.contains(&essay_id) {
            continue;
        }
        out.push(caused.append(&check(batch, essay_id))?);
        batch.spellcheck.checked.insert(essay_id);
    }
    Ok(())
}

fn check(batch: &Batch, essay_id: Uuid) -> EssaySpellcheckCompleted {
    let content = batch.slot(essay_id).and_then(|s| s.content.as_ref());
    let (status, corrections_count, error_message) = match content {
        Some(c) => (
            EssaySpellcheckCompletedV1Status::Success,
            reference_corrections(essay_id, c.word_count),
            None,
        ),
        None => (
            EssaySpellcheckCompletedV1Status::Failed,
            0,
            Some(format!(
                "essay {essay_id} has no provisioned content in batch {}",
                batch.batch_id
            )),
        ),
    };
    EssaySpellcheckCompleted {
        batch_id: batch.batch_id,
        essay_id,
        status,
        corrections_count,
        // No corrected text is stored by the reference spellchecker.
        corrected_text_storage_id: None,
        error_message,
        completed_at: Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_follow_the_word_count_and_the_essay_id() {
        let id = |last: u8| {
            let mut bytes = [0u8; 16];
            bytes[15] = last;
            Uuid::from_bytes(bytes)
        };
        assert_eq!(reference_corrections(id(0), 0), 0);
        assert_eq!(reference_corrections(id(0), 399), 9);
        assert_eq!(reference_corrections(id(4), 400), 11);
        assert_eq!(reference_corrections(id(5), -3), 2);
        assert_eq!(
            reference_corrections(id(7), 250),
            reference_corrections(id(7), 250)
        );
    }
}
