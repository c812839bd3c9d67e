//! The batch read model of the essay pipeline and the bookkeeping rules applied to it.

use std::collections::{BTreeMap, BTreeSet};

use edubus_events::{
    BatchEssaysRegistered, BatchEssaysRegisteredV1Language, EssaySpellcheckCompletedV1Status,
    EssayValidationFailedV1ErrorCode, SpellcheckPhaseCompletedV1Status,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An essay batch: the read model of the essay pipeline, keyed by batch id in
/// [`Table::Batches`](crate::Table::Batches). The essay lifecycle writes it; the orchestrator
/// and the spellchecker each write only their own part of [`Batch::spellcheck`].
///
/// Uploaded file names (PII) are not kept: the events that need them carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The batch.
    pub batch_id: Uuid,
    /// The teacher who registered it.
    pub user_id: Uuid,
    /// The class, absent for guest batches.
    pub class_id: Option<Uuid>,
    /// The course the essays were written for.
    pub course_code: String,
    /// The essays' language.
    pub language: BatchEssaysRegisteredV1Language,
    /// How many essays the registration expects.
    pub expected_essay_count: u32,
    /// When the batch was registered.
    pub registered_at: Timestamp,
    /// One slot per expected essay, in the order of the registration's essay ids.
    pub slots: Vec<EssaySlot>,
    /// Uploads that failed validation, by file upload id.
    pub failed_uploads: BTreeMap<Uuid, EssayValidationFailedV1ErrorCode>,
    /// Uploads that found no free slot (reported as excess content), by file upload id.
    pub excess_uploads: BTreeSet<Uuid>,
    /// Set once `batch.essays.ready` was published; the batch takes no more content after it.
    pub ready: Option<Readiness>,
    /// Progress of the spellcheck phase.
    #[serde(default)]
    pub spellcheck: SpellcheckPhase,
}

/// One pre-allocated essay slot of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EssaySlot {
    /// The essay id the registration allocated.
    pub essay_id: Uuid,
    /// The content assigned to it, once an upload filled it.
    pub content: Option<SlotContent>,
}

/// Essay content assigned to a slot (storage ids only: the text stays in content storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotContent {
    /// The upload that provided it.
    pub file_upload_id: Uuid,
    /// Where the extracted text is stored.
    pub text_storage_id: Uuid,
    /// Where the raw file is stored.
    pub raw_file_storage_id: Uuid,
    /// Words in the extracted text.
    pub word_count: i64,
    /// When the File Service provisioned it.
    pub provisioned_at: Timestamp,
}

/// What `batch.essays.ready` announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The essays with content, in slot order.
    pub essay_ids: Vec<Uuid>,
    /// Failed uploads counted toward the expected essays.
    pub failed_validation_count: u32,
    /// When the batch became ready.
    pub ready_at: Timestamp,
}

/// The spellcheck phase of a batch; each field names the subscription that writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpellcheckPhase {
    /// Batch orchestrator: how the phase was started, once it was.
    pub requested: Option<SpellcheckRequest>,
    /// Spellchecker: the essays it has published a result for.
    pub checked: BTreeSet<Uuid>,
    /// Essay lifecycle: the result of each essay, by essay id.
    pub results: BTreeMap<Uuid, EssayResult>,
    /// Essay lifecycle: set once `spellcheck.phase.completed` was published.
    pub completed: Option<PhaseSummary>,
}

/// How the orchestrator started the spellcheck phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpellcheckRequest {
    /// The essays the command listed (empty when the phase was skipped).
    pub essay_ids: Vec<Uuid>,
    /// Whether the phase was skipped (`batch.phase.skipped`, no eligible essays).
    pub skipped: bool,
    /// When the command (or the skip) was published.
    pub requested_at: Timestamp,
}

/// The spellcheck result of one essay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EssayResult {
    /// Success or failure.
    pub status: EssaySpellcheckCompletedV1Status,
    /// Corrections made.
    pub corrections_count: i64,
    /// When the spellchecker finished it.
    pub completed_at: Timestamp,
}

/// What `spellcheck.phase.completed` announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// The phase's outcome.
    pub status: SpellcheckPhaseCompletedV1Status,
    /// Essays checked successfully.
    pub successful_count: u32,
    /// Essays whose check failed.
    pub failed_count: u32,
    /// When the last result arrived.
    pub completed_at: Timestamp,
}

/// What provisioned content did to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provisioned {
    /// The upload was already assigned, reported as excess or rejected: nothing changes.
    Known,
    /// The content filled the slot of this essay id.
    Assigned(Uuid),
    /// No slot was free (or the batch was already ready): the upload is excess content.
    Excess,
}

impl Batch {
    /// The batch a registration creates, with one empty slot per pre-allocated essay id.
    /// Refuses a registration whose essay ids do not match its expected count.
    pub fn registered(e: &BatchEssaysRegistered) -> Result<Self, String> {
        let distinct: BTreeSet<Uuid> = e.essay_ids.iter().copied().collect();
        let expected = u32::try_from(e.expected_essay_count)
            .ok()
            .filter(|n| *n > 0);
        let Some(expected) = expected.filter(|n| *n as usize == e.essay_ids.len()) else {
            return Err(format!(
                "batch.essays.registered for batch {}: expected_essay_count {} must be positive \
                 and equal the number of pre-allocated essay_ids ({})",
                e.batch_id,
                e.expected_essay_count,
                e.essay_ids.len()
            ));
        };
        if distinct.len() != e.essay_ids.len() {
            return Err(format!(
                "batch.essays.registered for batch {}: essay_ids repeat an id ({} ids, {} distinct)",
                e.batch_id,
                e.essay_ids.len(),
                distinct.len()
            ));
        }
        Ok(Self {
            batch_id: e.batch_id,
            user_id: e.user_id,
            class_id: e.class_id,
            course_code: e.course_code.clone(),
            language: e.language,
            expected_essay_count: expected,
            registered_at: e.registered_at,
            slots: e
                .essay_ids
                .iter()
                .map(|id| EssaySlot {
                    essay_id: *id,
                    content: None,
                })
                .collect(),
            failed_uploads: BTreeMap::new(),
            excess_uploads: BTreeSet::new(),
            ready: None,
            spellcheck: SpellcheckPhase::default(),
        })
    }

    /// The slot of `essay_id`, if the batch has one.
    pub fn slot(&self, essay_id: Uuid) -> Option<&EssaySlot> {
        self.slots.iter().find(|s| s.essay_id == essay_id)
    }

    /// The number of slots with content.
    pub fn filled(&self) -> usize {
        self.slots.iter().filter(|s| s.content.is_some()).count()
    }

    fn knows_upload(&self, upload: Uuid) -> bool {
        self.excess_uploads.contains(&upload)
            || self.failed_uploads.contains_key(&upload)
            || self.slots.iter().any(|s| {
                s.content
                    .as_ref()
                    .is_some_and(|c| c.file_upload_id == upload)
            })
    }

    /// Assigns content to the slot of `wanted` when it is free, else to the first free slot.
    /// An upload seen before changes nothing; content after readiness or without a free slot
    /// is excess.
    pub(crate) fn provision(&mut self, wanted: Uuid, content: SlotContent) -> Provisioned {
        let upload = content.file_upload_id;
        if self.knows_upload(upload) {
            return Provisioned::Known;
        }
        let free = if self.ready.is_some() {
            None
        } else {
            let matching = self
                .slots
                .iter()
                .position(|s| s.essay_id == wanted && s.content.is_none());
            matching.or_else(|| self.slots.iter().position(|s| s.content.is_none()))
        };
        let Some(slot) = free.and_then(|i| self.slots.get_mut(i)) else {
            self.excess_uploads.insert(upload);
            return Provisioned::Excess;
        };
        slot.content = Some(content);
        Provisioned::Assigned(slot.essay_id)
    }

    /// Records an upload that failed validation; false when the upload was seen before.
    pub(crate) fn fail_upload(
        &mut self,
        upload: Uuid,
        code: EssayValidationFailedV1ErrorCode,
    ) -> bool {
        if self.knows_upload(upload) {
            return false;
        }
        self.failed_uploads.insert(upload, code);
        true
    }

    /// Marks the batch ready when filled slots plus failed uploads reach the expected count
    /// and it was not ready before; returns the readiness to announce.
    pub(crate) fn become_ready(&mut self, at: Timestamp) -> Option<&Readiness> {
        let failed = self.failed_uploads.len();
        if self.ready.is_some() || self.filled() + failed < self.expected_essay_count as usize {
            return None;
        }
        let essay_ids = self
            .slots
            .iter()
            .filter(|s| s.content.is_some())
            .map(|s| s.essay_id)
            .collect();
        self.ready = Some(Readiness {
            essay_ids,
            failed_validation_count: u32::try_from(failed).unwrap_or(u32::MAX),
            ready_at: at,
        });
        self.ready.as_ref()
    }

    /// Records an essay's spellcheck result; false when it already had one (the first wins).
    /// An error when the essay is not a ready essay of the batch.
    pub(crate) fn record_spellcheck(
        &mut self,
        essay_id: Uuid,
        result: EssayResult,
    ) -> Result<bool, String> {
        let ready = self
            .ready
            .as_ref()
            .is_some_and(|r| r.essay_ids.contains(&essay_id));
        if !ready {
            return Err(format!(
                "essay.spellcheck.completed for essay {essay_id}: not a ready essay of batch {} \
                 (the batch has {} ready essays)",
                self.batch_id,
                self.ready.as_ref().map_or(0, |r| r.essay_ids.len())
            ));
        }
        if self.spellcheck.results.contains_key(&essay_id) {
            return Ok(false);
        }
        self.spellcheck.results.insert(essay_id, result);
        Ok(true)
    }

    /// Closes the spellcheck phase when every ready essay has a result and it was not closed
    /// before; returns the summary to announce.
    pub(crate) fn complete_spellcheck(&mut self, at: Timestamp) -> Option<&PhaseSummary> {
        let ready = self.ready.as_ref()?;
        let results: Vec<&EssayResult> = ready
            .essay_ids
            .iter()
            .map(|id| self.spellcheck.results.get(id))
            .collect::<Option<_>>()?;
        if self.spellcheck.completed.is_some() || results.is_empty() {
            return None;
        }
        let successful = results
            .iter()
            .filter(|r| r.status == EssaySpellcheckCompletedV1Status::Success)
            .count();
        let failed = results.len() - successful;
        let status = match (successful, failed) {
            (_, 0) => SpellcheckPhaseCompletedV1Status::CompletedSuccessfully,
            (0, _) => SpellcheckPhaseCompletedV1Status::Failed,
            _ => SpellcheckPhaseCompletedV1Status::CompletedWithFailures,
        };
        self.spellcheck.completed = Some(PhaseSummary {
            status,
            successful_count: u32::try_from(successful).unwrap_or(u32::MAX),
            failed_count: u32::try_from(failed).unwrap_or(u32::MAX),
            completed_at: at,
        });
        self.spellcheck.completed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn registration(essays: &[u128], expected: i64) -> BatchEssaysRegistered {
        BatchEssaysRegistered {
            batch_id: id(1),
            user_id: id(2),
            expected_essay_count: expected,
            essay_ids: essays.iter().map(|n| id(*n)).collect(),
            course_code: "ENG5".into(),
            language: BatchEssaysRegisteredV1Language::En,
            class_id: None,
            essay_instructions: None,
            registered_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn content(upload: u128) -> SlotContent {
        SlotContent {
            file_upload_id: id(upload),
            text_storage_id: id(upload + 1000),
            raw_file_storage_id: id(upload + 2000),
            word_count: 300,
            provisioned_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn result(status: EssaySpellcheckCompletedV1Status) -> EssayResult {
        EssayResult {
            status,
            corrections_count: 1,
            completed_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn registrations_must_allocate_one_distinct_id_per_expected_essay() {
        assert!(Batch::registered(&registration(&[10, 11], 2)).is_ok());
        let short = Batch::registered(&registration(&[10], 2)).unwrap_err();
        assert!(short.contains("expected_essay_count 2"), "{short}");
        assert!(Batch::registered(&registration(&[], 0)).is_err());
        let twice = Batch::registered(&registration(&[10, 10], 2)).unwrap_err();
        assert!(twice.contains("repeat"), "{twice}");
    }

    #[test]
    fn content_takes_its_own_slot_then_the_first_free_one_then_is_excess() {
        let mut b = Batch::registered(&registration(&[10, 11, 12], 3)).unwrap();
        assert_eq!(
            b.provision(id(12), content(1)),
            Provisioned::Assigned(id(12))
        );
        assert_eq!(
            b.provision(id(99), content(2)),
            Provisioned::Assigned(id(10))
        );
        assert_eq!(
            b.provision(id(12), content(3)),
            Provisioned::Assigned(id(11))
        );
        assert_eq!(b.provision(id(12), content(1)), Provisioned::Known);
        assert_eq!(b.provision(id(10), content(4)), Provisioned::Excess);
        assert_eq!(b.provision(id(10), content(4)), Provisioned::Known);
        let ready = b.become_ready(Timestamp::UNIX_EPOCH).cloned().unwrap();
        assert_eq!(ready.essay_ids, vec![id(10), id(11), id(12)]);
        assert_eq!(b.become_ready(Timestamp::UNIX_EPOCH), None);
    }

    #[test]
    fn failed_uploads_count_toward_readiness_and_close_the_batch() {
        let mut b = Batch::registered(&registration(&[10, 11], 2)).unwrap();
        let code = EssayValidationFailedV1ErrorCode::EmptyContent;
        assert!(b.fail_upload(id(5), code));
        assert!(!b.fail_upload(id(5), code));
        assert_eq!(b.become_ready(Timestamp::UNIX_EPOCH), None);
        assert_eq!(
            b.provision(id(11), content(1)),
            Provisioned::Assigned(id(11))
        );
        let ready = b.become_ready(Timestamp::UNIX_EPOCH).cloned().unwrap();
        assert_eq!(ready.essay_ids, vec![id(11)]);
        assert_eq!(ready.failed_validation_count, 1);
        // The free slot stays free: the batch is processing already.
        assert_eq!(b.provision(id(10), content(2)), Provisioned::Excess);
    }

    #[test]
    fn the_phase_closes_once_every_ready_essay_has_a_result() {
        use EssaySpellcheckCompletedV1Status::{Failed, Success};
        let mut b = Batch::registered(&registration(&[10, 11], 2)).unwrap();
        b.provision(id(10), content(1));
        b.provision(id(11), content(2));
        b.become_ready(Timestamp::UNIX_EPOCH);
        assert!(b.record_spellcheck(id(99), result(Success)).is_err());
        assert_eq!(b.record_spellcheck(id(10), result(Success)), Ok(true));
        assert_eq!(b.complete_spellcheck(Timestamp::UNIX_EPOCH), None);
        assert_eq!(b.record_spellcheck(id(10), result(Failed)), Ok(false));
        assert_eq!(b.record_spellcheck(id(11), result(Failed)), Ok(true));
        let summary = *b.complete_spellcheck(Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(
            summary.status,
            SpellcheckPhaseCompletedV1Status::CompletedWithFailures
        );
        assert_eq!((summary.successful_count, summary.failed_count), (1, 1));
        assert_eq!(b.complete_spellcheck(Timestamp::UNIX_EPOCH), None);
    }
}
