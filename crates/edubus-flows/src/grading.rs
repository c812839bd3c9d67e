//! Weighted course averages (seeds 000 and 002): each `grading.updated` updates one grade item
//! of a student's course, recomputes the course's weighted average and letter grade, and
//! records the change in the audit trail with `core.audit.logged`.
//!
//! Arithmetic is decimal only, never floating point:
//! - the average is `sum(score * weight) / sum(weight)` over the course's items, kept as the
//!   quotient of [`Decimal`] division (exact when it terminates within 28 significant digits,
//!   otherwise rounded by `rust_decimal` at its last digit), trailing zeros removed;
//! - the displayed average is that quotient rounded to 2 decimals **half up** (a midpoint
//!   goes away from zero: 84.445 gives 84.45), always with 2 decimals (84.40);
//! - the letter grade comes from the displayed average, scores being percentages:
//!   A at 90 or more, B at 80, C at 70, D at 60, F below;
//! - a course whose weights add up to zero has no average and no letter.
//!
//! A score outside 0..=100 or a negative weight is rejected at once (dead-lettered). An
//! update is applied only when it is newer than the item's current grade (by `recorded_at`,
//! then event id) and changes its score or weight, so a redelivery, a replay or the same
//! grade published again writes nothing and logs no second audit record. The audit record's
//! `created_at` is the grade's `recorded_at` and its id derives from the grade event's id
//! ([`audit_id`]), so whichever delivery logs it, it is the same record.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_events::{CoreAuditLogged, GradingUpdated};
use edubus_runtime::{Caused, HandlerError, WorkerBuilder};
use jiff::Timestamp;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, NAMESPACE, stage};

/// The subscription of this flow.
pub const SUBSCRIPTION: &str = "grading-averages";

/// `entity_type` of the audit records this flow logs.
pub const AUDIT_ENTITY: &str = "GradeRecord";

/// Audit action of a grade item recorded for the first time.
pub const RECORDED: &str = "grade.recorded";

/// Audit action of a grade item whose score or weight changed.
pub const CHANGED: &str = "grade.changed";

/// A letter grade, from a percentage average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Letter {
    /// 90 or more.
    A,
    /// 80 to below 90.
    B,
    /// 70 to below 80.
    C,
    /// 60 to below 70.
    D,
    /// Below 60.
    F,
}

impl Letter {
    /// The letter of a percentage average.
    pub fn of(average: Decimal) -> Self {
        let at_least = |n: i64| average >= Decimal::from(n);
        if at_least(90) {
            Letter::A
        } else if at_least(80) {
            Letter::B
        } else if at_least(70) {
            Letter::C
        } else if at_least(60) {
            Letter::D
        } else {
            Letter::F
        }
    }
}

impl fmt::Display for Letter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One grade item's current grade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradeItem {
    /// Score, a percentage from 0 to 100.
    pub score: Decimal,
    /// Weight of the item in the course average (0 or more).
    pub weight: Decimal,
    /// When the grade was recorded.
    pub recorded_at: Timestamp,
    /// Who recorded it.
    pub recorded_by: Uuid,
    /// The `grading.updated` event it came from; breaks ties between updates recorded at
    /// the same instant.
    pub event_id: String,
}

/// A student's grades in one course: the read model of this flow, in [`Table::Grades`] keyed
/// by [`CourseGrade::key`] (`<student_id>/<course_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseGrade {
    /// The student.
    pub student_id: Uuid,
    /// The course.
    pub course_id: Uuid,
    /// Current grade of each item, by grade item id.
    pub items: BTreeMap<Uuid, GradeItem>,
    /// `sum(score * weight) / sum(weight)`, unrounded; `None` while the weights add up to 0.
    pub average: Option<Decimal>,
    /// The average rounded half up to 2 decimals.
    pub rounded_average: Option<Decimal>,
    /// The letter of the rounded average.
    pub letter: Option<Letter>,
}

impl CourseGrade {
    /// The document key of a student's grades in a course.
    pub fn key(student_id: Uuid, course_id: Uuid) -> String {
        format!("{student_id}/{course_id}")
    }

    fn new(student_id: Uuid, course_id: Uuid) -> Self {
        Self {
            student_id,
            course_id,
            items: BTreeMap::new(),
            average: None,
            rounded_average: None,
            letter: None,
        }
    }

    /// Recomputes the average and letter from the items.
    fn recompute(&mut self) -> Result<(), BoxError> {
        self.average = weighted_average(self.items.values())?;
        self.rounded_average = self.average.map(round_2dp);
        self.letter = self.rounded_average.map(Letter::of);
        Ok(())
    }
}

/// `sum(score * weight) / sum(weight)` with overflow checks; `None` for a zero total weight.
fn weighted_average<'a>(
    items: impl Iterator<Item = &'a GradeItem>,
) -> Result<Option<Decimal>, BoxError> {
    let overflow = || -> BoxError { "the weighted sum of the course's grades overflows".into() };
    let (mut points, mut weights) = (Decimal::ZERO, Decimal::ZERO);
    for item in items {
        let product = item.score.checked_mul(item.weight).ok_or_else(overflow)?;
        points = points.checked_add(product).ok_or_else(overflow)?;
        weights = weights.checked_add(item.weight).ok_or_else(overflow)?;
    }
    if weights.is_zero() {
        return Ok(None);
    }
    let quotient = points.checked_div(weights).ok_or_else(overflow)?;
    Ok(Some(quotient.normalize()))
}

/// Rounds half up (away from zero) to exactly 2 decimals.
fn round_2dp(value: Decimal) -> Decimal {
    let mut rounded = value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// Why a `grading.updated` payload can never be applied, if it cannot.
fn invalid(e: &GradingUpdated, event_id: &str) -> Option<String> {
    let problem = if e.score < Decimal::ZERO || e.score > Decimal::ONE_HUNDRED {
        format!(
            "score {} is outside 0..=100 (scores are percentages)",
            e.score
        )
    } else if e.weight < Decimal::ZERO {
        format!("weight {} is negative", e.weight)
    } else {
        return None;
    };
    Some(format!(
        "grading.updated {event_id}: {problem} for grade item {} of student {} in course {}",
        e.grade_item_id, e.student_id, e.course_id
    ))
}

/// Registers the subscription and its handler.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let config = Arc::clone(config);
    worker
        .subscription(SUBSCRIPTION, config.options.clone())
        .on::<GradingUpdated, _, _>(move |event, ctx| {
            let event_id = ctx.envelope().id.clone();
            let staged = match invalid(&event, &event_id) {
                Some(problem) => Err(HandlerError::permanent(problem)),
                None => {
                    let step = Record {
                        audit_id: audit_id(&event_id),
                        event,
                        event_id,
                        caused: ctx.caused(),
                    };
                    stage(&ctx, &config, step)
                }
            };
            async move { staged }
        })
}

/// The id of the audit record logged for the grade event `event_id` (UUID v5).
pub fn audit_id(event_id: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, event_id.as_bytes())
}

struct Record {
    event: GradingUpdated,
    event_id: String,
    audit_id: Uuid,
    caused: Caused,
}

impl Record {
    fn doc(&self) -> DocRef {
        DocRef::new(
            Table::Grades,
            CourseGrade::key(self.event.student_id, self.event.course_id),
        )
    }

    /// Whether the item's current grade makes this update moot: it is not newer, or it
    /// changes neither the score nor the weight.
    fn moot(&self, current: &GradeItem) -> bool {
        let e = &self.event;
        let newer = (e.recorded_at, self.event_id.as_str())
            > (current.recorded_at, current.event_id.as_str());
        !newer || (current.score == e.score && current.weight == e.weight)
    }
}

/// One side of an audit diff: the item's grade and the course's average and letter.
fn side(item: &GradeItem, course: &CourseGrade) -> Value {
    json!({
        "score": item.score,
        "weight": item.weight,
        "course_average": course.rounded_average,
        "letter": course.letter,
    })
}

impl Step for Record {
    fn reads(&self) -> Vec<DocRef> {
        vec![self.doc()]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let e = &self.event;
        let mut course = docs
            .get::<CourseGrade>(0)?
            .unwrap_or_else(|| CourseGrade::new(e.student_id, e.course_id));
        let previous = course.items.get(&e.grade_item_id).cloned();
        if previous.as_ref().is_some_and(|p| self.moot(p)) {
            tracing::debug!(event = %self.event_id, item = %e.grade_item_id, "grade unchanged or superseded");
            return Ok(Effects::default());
        }
        let before = previous.as_ref().map(|p| side(p, &course));
        let item = GradeItem {
            score: e.score,
            weight: e.weight,
            recorded_at: e.recorded_at,
            recorded_by: e.recorded_by,
            event_id: self.event_id.clone(),
        };
        course.items.insert(e.grade_item_id, item.clone());
        course.recompute()?;
        let after = side(&item, &course);
        let mut diff = Map::new();
        diff.insert("before".into(), before.unwrap_or(Value::Null));
        diff.insert("after".into(), after);
        let mut effects = Effects::default();
        effects.write(self.doc(), &course)?;
        effects.publish(
            self.caused.append(&CoreAuditLogged {
                audit_id: self.audit_id,
                actor_id: e.recorded_by,
                entity_type: AUDIT_ENTITY.to_owned(),
                entity_id: e.grade_item_id,
                action: if previous.is_some() {
                    CHANGED
                } else {
                    RECORDED
                }
                .to_owned(),
                diff,
                created_at: e.recorded_at,
            })?,
        );
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    fn item(score: &str, weight: &str) -> GradeItem {
        GradeItem {
            score: dec(score),
            weight: dec(weight),
            recorded_at: Timestamp::UNIX_EPOCH,
            recorded_by: Uuid::nil(),
            event_id: String::new(),
        }
    }

    #[test]
    fn averages_are_exact_quotients_rounded_half_up_for_display() {
        let items = [item("92.5", "0.3"), item("78", "0.5"), item("88.25", "0.2")];
        let avg = weighted_average(items.iter()).unwrap().unwrap();
        assert_eq!(avg, dec("84.4"));
        assert_eq!(round_2dp(avg).to_string(), "84.40");
        // 84.445 is a midpoint: half up gives 84.45 where banker's rounding would give 84.44.
        assert_eq!(round_2dp(dec("84.445")).to_string(), "84.45");
        // A non-terminating quotient keeps 28 significant digits.
        let thirds = [item("100", "1"), item("0", "2")];
        let avg = weighted_average(thirds.iter()).unwrap().unwrap();
        assert_eq!(avg, dec("100") / dec("3"));
        assert_eq!(round_2dp(avg).to_string(), "33.33");
    }

    #[test]
    fn zero_total_weight_has_no_average() {
        let items = [item("90", "0"), item("50", "0")];
        assert_eq!(weighted_average(items.iter()).unwrap(), None);
        assert_eq!(weighted_average([].iter()).unwrap(), None);
    }

    #[test]
    fn letters_follow_the_rounded_percentage() {
        assert_eq!(Letter::of(dec("100")), Letter::A);
        assert_eq!(Letter::of(round_2dp(dec("89.995"))), Letter::A);
        assert_eq!(Letter::of(dec("89.99")), Letter::B);
        assert_eq!(Letter::of(dec("80")), Letter::B);
        assert_eq!(Letter::of(dec("70.00")), Letter::C);
        assert_eq!(Letter::of(dec("60")), Letter::D);
        assert_eq!(Letter::of(dec("59.99")), Letter::F);
        assert_eq!(Letter::of(dec("0")), Letter::F);
    }

    #[test]
    fn out_of_range_scores_and_negative_weights_are_invalid() {
        let e = |score: &str, weight: &str| GradingUpdated {
            grade_item_id: Uuid::from_u128(1),
            student_id: Uuid::from_u128(2),
            score: dec(score),
            weight: dec(weight),
            recorded_at: Timestamp::UNIX_EPOCH,
            recorded_by: Uuid::nil(),
            course_id: Uuid::from_u128(3),
        };
        assert_eq!(invalid(&e("0", "0"), "x"), None);
        assert_eq!(invalid(&e("100", "2.5"), "x"), None);
        assert_eq!(invalid(&e("-0", "-0"), "x"), None);
        let msg = invalid(&e("100.01", "1"), "ev1").expect("invalid");
        assert!(msg.starts_with("grading.updated ev1: score 100.01 is outside 0..=100"));
        assert!(msg.contains(&Uuid::from_u128(1).to_string()), "{msg}");
        let msg = invalid(&e("-1", "1"), "x").expect("invalid");
        assert!(msg.contains("score -1 is outside"), "{msg}");
        let msg = invalid(&e("50", "-0.1"), "x").expect("invalid");
        assert!(msg.contains("weight -0.1 is negative"), "{msg}");
    }
}
