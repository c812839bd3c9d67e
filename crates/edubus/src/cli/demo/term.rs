//! The simulated school's term, once its students are provisioned: a homeroom mark per student
//! and school day, grades, progress through bought courses, refunds and an essay assignment.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use edubus_core::Envelope;
use edubus_events::{
    AccessGranted, AttendanceMarked, AttendanceMarkedV1Status, BatchEssaysRegistered,
    BatchEssaysRegisteredV1Language, EnrollmentProvisioned, EssayContentProvisioned,
    GradingUpdated, OrderRefunded, ProgressUpdated,
};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::school::{Ids, Order, OrderPlan, Roster, at, envelope, school_date, shared_id};

/// School days between two grades of one course.
const GRADE_EVERY: u32 = 5;
/// School days between two progress reports of one bought course.
const PROGRESS_EVERY: u32 = 4;

/// A provisioned student.
#[derive(Debug, Clone)]
pub struct Pupil {
    /// The student id the enrollment flow derived.
    pub student_id: Uuid,
    /// The school-issued code.
    pub student_code: String,
    /// The homeroom the flow assigned.
    pub homeroom_id: Uuid,
    /// The courses the flow enrolled the student in.
    pub course_ids: Vec<Uuid>,
    chronic: bool,
    ability: u32,
}

/// One granted course of an order.
#[derive(Debug, Clone)]
struct Granted {
    access_id: Uuid,
    course_id: Uuid,
    order: usize,
}

/// The term: what happens on each school day.
#[derive(Debug)]
pub struct Term {
    ids: Ids,
    days: u32,
    pupils: Vec<Pupil>,
    homerooms: BTreeMap<Uuid, Vec<usize>>,
    orders: Vec<Order>,
    granted: Vec<Granted>,
}

impl Term {
    /// The term of `roster` for the students the flows provisioned and the access they
    /// granted; applicants or orders the flows did not get to stay out of it.
    pub fn new(
        roster: &Roster,
        provisioned: &[EnrollmentProvisioned],
        grants: &[AccessGranted],
    ) -> Self {
        let applicants: HashMap<Uuid, _> = roster
            .applicants
            .iter()
            .map(|a| (a.application_id, a))
            .collect();
        let mut pupils: Vec<Pupil> = provisioned
            .iter()
            .filter_map(|p| {
                let a = applicants.get(&p.application_id)?;
                Some(Pupil {
                    student_id: p.student_id,
                    student_code: p.student_code.clone(),
                    homeroom_id: p.homeroom_id,
                    course_ids: p.course_ids.clone(),
                    chronic: a.chronic,
                    ability: a.ability,
                })
            })
            .collect();
        pupils.sort_by(|a, b| a.student_code.cmp(&b.student_code));
        let mut homerooms: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
        for (i, p) in pupils.iter().enumerate() {
            homerooms.entry(p.homeroom_id).or_default().push(i);
        }
        let orders: HashMap<Uuid, usize> = roster
            .orders
            .iter()
            .enumerate()
            .map(|(i, o)| (o.order_id, i))
            .collect();
        let mut granted: Vec<Granted> = grants
            .iter()
            .filter_map(|g| {
                Some(Granted {
                    access_id: g.access_id,
                    course_id: g.course_id,
                    order: *orders.get(&g.order_id?)?,
                })
            })
            .collect();
        granted.sort_by_key(|g| (g.order, g.course_id));
        Self {
            ids: roster.ids,
            days: roster.days,
            pupils,
            homerooms,
            orders: roster.orders.clone(),
            granted,
        }
    }

    /// Students drawn to be absent often.
    pub fn chronic(&self) -> usize {
        self.pupils.iter().filter(|p| p.chronic).count()
    }

    /// The school day on which essays are handed in.
    fn essay_day(&self) -> u32 {
        self.days / 2
    }

    fn batch_id(&self, homeroom: Uuid) -> Uuid {
        self.ids.id("essay-batch", homeroom)
    }

    fn essay_id(&self, homeroom: Uuid, slot: usize) -> Uuid {
        self.ids.id("essay", format!("{homeroom}/{slot}"))
    }

    fn teacher(&self, of: Uuid) -> Uuid {
        self.ids.id("teacher", of)
    }

    /// Each homeroom teacher registers an essay batch with one slot per student, before the
    /// term starts.
    pub fn registrations(&self) -> anyhow::Result<Vec<Envelope>> {
        let due = school_date(self.essay_day());
        self.homerooms
            .iter()
            .map(|(&homeroom, members)| {
                envelope(&BatchEssaysRegistered {
                    batch_id: self.batch_id(homeroom),
                    user_id: self.teacher(homeroom),
                    expected_essay_count: i64::try_from(members.len())?,
                    essay_ids: (0..members.len())
                        .map(|i| self.essay_id(homeroom, i))
                        .collect(),
                    course_code: "ENG5".to_owned(),
                    language: BatchEssaysRegisteredV1Language::En,
                    class_id: Some(homeroom),
                    essay_instructions: Some(format!("A personal essay, due {due}.")),
                    registered_at: at(school_date(0), 7, 30),
                })
            })
            .collect()
    }

    /// The batch ids of [`Term::registrations`].
    pub fn batches(&self) -> Vec<Uuid> {
        self.homerooms.keys().map(|&h| self.batch_id(h)).collect()
    }

    /// Everything published on school day `day` (0-based); essay content only for the
    /// batches in `registered`.
    pub fn day(&self, day: u32, registered: &BTreeSet<Uuid>) -> anyhow::Result<Vec<Envelope>> {
        let mut rng = fastrand::Rng::with_seed(
            self.ids.id("day", day).as_u64_pair().0 ^ u64::from(self.ids.school()),
        );
        let mut out = self.attendance(day, &mut rng)?;
        out.extend(self.grades(day, &mut rng)?);
        out.extend(self.courses(day)?);
        if day == self.essay_day() {
            out.extend(self.essays(day, registered, &mut rng)?);
        }
        Ok(out)
    }

    fn attendance(&self, day: u32, rng: &mut fastrand::Rng) -> anyhow::Result<Vec<Envelope>> {
        let date = school_date(day);
        self.pupils
            .iter()
            .map(|p| {
                let roll = rng.f64();
                let absent = if p.chronic { 0.25 } else { 0.015 };
                let status = match roll {
                    r if r < absent => AttendanceMarkedV1Status::Absent,
                    r if r < absent + 0.05 => AttendanceMarkedV1Status::Late,
                    _ => AttendanceMarkedV1Status::Present,
                };
                envelope(&AttendanceMarked {
                    class_session_id: shared_id("session", format!("{}/{date}", p.homeroom_id)),
                    student_id: p.student_id,
                    status,
                    marked_by: self.teacher(p.homeroom_id),
                    marked_at: at(date, 8, 5),
                })
            })
            .collect()
    }

    fn grades(&self, day: u32, rng: &mut fastrand::Rng) -> anyhow::Result<Vec<Envelope>> {
        let date = school_date(day);
        let last = day + 1 == self.days;
        let mut out = Vec::new();
        for p in &self.pupils {
            for (ci, &course) in p.course_ids.iter().enumerate() {
                let ci = u32::try_from(ci)?;
                if (day + ci) % GRADE_EVERY != GRADE_EVERY - 1 && !(last && ci == 0) {
                    continue;
                }
                let item = (day + ci) / GRADE_EVERY;
                let weight = match (last, item % 3) {
                    (true, _) => Decimal::new(3, 0),
                    (false, 0) => Decimal::new(1, 0),
                    (false, 1) => Decimal::new(5, 1),
                    (false, _) => Decimal::new(2, 0),
                };
                let points = (p.ability + rng.u32(0..=20)).saturating_sub(12).min(100);
                let tenths = if points == 100 { 0 } else { rng.u32(0..10) };
                out.push(envelope(&GradingUpdated {
                    grade_item_id: self.ids.id("grade-item", format!("{course}/{day}")),
                    student_id: p.student_id,
                    score: Decimal::new(i64::from(points * 10 + tenths), 1),
                    weight,
                    recorded_at: at(date, 15, 0),
                    recorded_by: self.teacher(course),
                    course_id: course,
                })?);
            }
        }
        Ok(out)
    }

    fn courses(&self, day: u32) -> anyhow::Result<Vec<Envelope>> {
        let date = school_date(day);
        let mut out = Vec::new();
        for (i, order) in self.orders.iter().enumerate() {
            if order.plan == (OrderPlan::Refund { day })
                && self.granted.iter().any(|g| g.order == i)
            {
                out.push(envelope(&OrderRefunded {
                    order_id: order.order_id,
                    user_id: order.user_id,
                    course_ids: order.course_ids.clone(),
                    refund_reason: "The family changed plans".to_owned(),
                    refund_amount: Decimal::new(4900, 2) * Decimal::from(order.course_ids.len()),
                    refunded_at: at(date, 18, 0),
                })?);
            }
        }
        for g in &self.granted {
            let order = &self.orders[g.order];
            if let Some(progress) = self.progress(order.plan, g.order, day) {
                out.push(envelope(&ProgressUpdated {
                    access_id: g.access_id,
                    user_id: order.user_id,
                    course_id: g.course_id,
                    progress,
                    updated_at: at(date, 19, 0),
                })?);
            }
        }
        Ok(out)
    }

    /// The progress an order's learner reports on `day`, if any: every few days, rising to
    /// 100 on the day a completing learner finishes; none from a refund on.
    fn progress(&self, plan: OrderPlan, order: usize, day: u32) -> Option<Decimal> {
        let stagger = u32::try_from(order).unwrap_or(0) % PROGRESS_EVERY;
        let reported = day % PROGRESS_EVERY == stagger;
        let percent = |reach: u32, by: u32| Decimal::new(i64::from(reach * (day + 1) * 10 / by), 1);
        match plan {
            OrderPlan::Complete { day: done } if day == done => Some(Decimal::ONE_HUNDRED),
            OrderPlan::Complete { day: done } if day < done && reported => {
                Some(percent(99, done + 1))
            }
            OrderPlan::Refund { day: refund } if day < refund && reported => {
                Some(percent(30, self.days))
            }
            OrderPlan::Study { reach } if reported => Some(percent(reach, self.days)),
            _ => None,
        }
    }

    fn essays(
        &self,
        day: u32,
        registered: &BTreeSet<Uuid>,
        rng: &mut fastrand::Rng,
    ) -> anyhow::Result<Vec<Envelope>> {
        let date = school_date(day);
        let mut out = Vec::new();
        for (&homeroom, members) in &self.homerooms {
            let batch_id = self.batch_id(homeroom);
            if !registered.contains(&batch_id) {
                continue;
            }
            for (slot, &i) in members.iter().enumerate() {
                let p = &self.pupils[i];
                let upload = format!("{}/{day}", p.student_id);
                out.push(envelope(&EssayContentProvisioned {
                    batch_id,
                    essay_id: self.essay_id(homeroom, slot),
                    file_upload_id: self.ids.id("upload", &upload),
                    text_storage_id: self.ids.id("text", &upload),
                    raw_file_storage_id: self.ids.id("file", &upload),
                    file_name: format!("essay-{}.docx", p.student_code),
                    word_count: i64::from(rng.u32(250..=900)),
                    provisioned_at: at(date, 16, 0),
                })?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::demo::school::Ids;

    fn term(students: u32, days: u32) -> (Roster, Term) {
        let roster = Roster::new(Ids::new(3, 1), students, days);
        let rooms = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let provisioned: Vec<EnrollmentProvisioned> = roster
            .applicants
            .iter()
            .enumerate()
            .map(|(n, a)| EnrollmentProvisioned {
                student_id: Uuid::from_u128(1000 + n as u128),
                student_code: format!("S-{n:06}"),
                homeroom_id: rooms[n % 2],
                course_ids: vec![Uuid::from_u128(7), Uuid::from_u128(8)],
                provisioned_at: at(school_date(0), 6, 0),
                application_id: a.application_id,
            })
            .collect();
        let grants: Vec<AccessGranted> = roster
            .orders
            .iter()
            .flat_map(|o| {
                o.course_ids.iter().map(|&c| AccessGranted {
                    access_id: edubus_flows::access::access_id(o.order_id, c),
                    user_id: o.user_id,
                    course_id: c,
                    order_id: Some(o.order_id),
                    granted_at: at(school_date(0), 6, 0),
                    expires_at: None,
                })
            })
            .collect();
        let term = Term::new(&roster, &provisioned, &grants);
        (roster, term)
    }

    fn decoded<E: serde::de::DeserializeOwned + edubus_core::Event>(events: &[Envelope]) -> Vec<E> {
        events
            .iter()
            .filter(|e| e.event_type == E::NAME)
            .map(|e| serde_json::from_value(e.data.clone()).unwrap())
            .collect()
    }

    #[test]
    fn every_day_marks_each_student_once_and_grades_stay_in_range() {
        let (_, term) = term(60, 10);
        let all = BTreeSet::new();
        for day in 0..10 {
            let events = term.day(day, &all).unwrap();
            let marks: Vec<AttendanceMarked> = decoded(&events);
            assert_eq!(marks.len(), 60);
            let students: BTreeSet<Uuid> = marks.iter().map(|m| m.student_id).collect();
            assert_eq!(students.len(), 60);
            for g in decoded::<GradingUpdated>(&events) {
                assert!(
                    g.score >= Decimal::ZERO && g.score <= Decimal::ONE_HUNDRED,
                    "{}",
                    g.score
                );
                assert!(g.weight > Decimal::ZERO);
            }
        }
        let data = |day| -> Vec<serde_json::Value> {
            term.day(day, &all)
                .unwrap()
                .into_iter()
                .map(|e| e.data)
                .collect()
        };
        assert_eq!(data(4), data(4), "a day is drawn the same way every time");
    }

    #[test]
    fn progress_rises_to_100_for_finishers_and_stops_at_a_refund() {
        let (roster, term) = term(400, 20);
        let days: Vec<Vec<Envelope>> = (0..20)
            .map(|d| term.day(d, &BTreeSet::new()).unwrap())
            .collect();
        let mut finished = 0;
        for order in &roster.orders {
            let progress: Vec<(u32, Decimal)> = (0..20)
                .flat_map(|d| {
                    decoded::<ProgressUpdated>(&days[d as usize])
                        .into_iter()
                        .filter(|p| {
                            p.access_id
                                == edubus_flows::access::access_id(
                                    order.order_id,
                                    order.course_ids[0],
                                )
                        })
                        .map(move |p| (d, p.progress))
                })
                .collect();
            assert!(progress.windows(2).all(|w| w[0].1 < w[1].1), "{progress:?}");
            assert!(
                progress
                    .iter()
                    .all(|(_, p)| *p >= Decimal::ZERO && *p <= Decimal::ONE_HUNDRED)
            );
            let refunds: Vec<u32> = (0..20)
                .filter(|&d| {
                    decoded::<OrderRefunded>(&days[d as usize])
                        .iter()
                        .any(|r| r.order_id == order.order_id)
                })
                .collect();
            match order.plan {
                OrderPlan::Complete { day } => {
                    assert_eq!(progress.last(), Some(&(day, Decimal::ONE_HUNDRED)));
                    finished += 1;
                }
                OrderPlan::Refund { day } => {
                    assert_eq!(refunds, [day]);
                    assert!(progress.iter().all(|(d, _)| *d < day));
                }
                OrderPlan::Study { .. } => assert!(refunds.is_empty()),
            }
        }
        assert!(finished > 0);
    }
}
