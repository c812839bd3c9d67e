//! The simulated school before its term: families applying, staff approving, families buying
//! online courses. Everything is drawn from the seed, so the same seed gives the same school.

use std::fmt::Display;

use edubus_core::{Envelope, Event};
use edubus_events::{EnrollmentApproved, EnrollmentSubmitted, OrderPaid};
use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use uuid::Uuid;

/// The producer of every event the simulated school publishes.
pub const SOURCE: &str = "edubus-demo";

/// The namespace of the ids the demo derives (UUID v5), apart from the flows' own.
const NAMESPACE: Uuid = Uuid::from_u128(0x6564_7562_7573_4465_8d60_5c4f_6f6c_0001);

/// Online courses families can buy.
const ONLINE_COURSES: u32 = 6;

/// Ids of one school: UUID v5 of the seed, the school's number in the data and what is named.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    seed: u64,
    school: u32,
}

impl Ids {
    /// The ids of school number `school` drawn from `seed`.
    pub fn new(seed: u64, school: u32) -> Self {
        Self { seed, school }
    }

    /// The id of the `n`th thing of a kind in this school.
    pub fn id(&self, kind: &str, n: impl Display) -> Uuid {
        let name = format!("{}/{}/{kind}/{n}", self.seed, self.school);
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// The school's number among the demo schools of one data directory (from 1).
    pub fn school(&self) -> u32 {
        self.school
    }
}

/// An id shared by every school (a class session, an online course).
pub fn shared_id(kind: &str, n: impl Display) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{kind}/{n}").as_bytes())
}

/// A family applying for a place.
#[derive(Debug, Clone)]
pub struct Applicant {
    /// The application.
    pub application_id: Uuid,
    /// The applicant's provisional id.
    pub student_temp_id: Uuid,
    /// The guardian applying.
    pub guardian_id: Uuid,
    /// Whether the student will be absent often.
    pub chronic: bool,
    /// How well the student does, 0 to 100.
    pub ability: u32,
}

/// What happens to a bought course order during the term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderPlan {
    /// The family asks for a refund on this school day.
    Refund { day: u32 },
    /// The learner finishes on this school day.
    Complete { day: u32 },
    /// The learner gets this far (percent) by the end of the term.
    Study { reach: u32 },
}

/// Online courses one family bought before the term.
#[derive(Debug, Clone)]
pub struct Order {
    /// The order.
    pub order_id: Uuid,
    /// The guardian who paid (the learner of the platform).
    pub user_id: Uuid,
    /// The payment.
    pub payment_id: Uuid,
    /// The courses bought.
    pub course_ids: Vec<Uuid>,
    /// What happens to it.
    pub plan: OrderPlan,
}

/// The school's families and orders, before anyone is provisioned.
#[derive(Debug)]
pub struct Roster {
    /// Ids of this school.
    pub ids: Ids,
    /// Applicants, in application order.
    pub applicants: Vec<Applicant>,
    /// Orders of online courses.
    pub orders: Vec<Order>,
    /// School days of the term.
    pub days: u32,
    /// The staff member approving applications.
    pub registrar: Uuid,
}

impl Roster {
    /// Draws `students` families and their orders for a term of `days` school days.
    pub fn new(ids: Ids, students: u32, days: u32) -> Self {
        let mut rng = fastrand::Rng::with_seed(ids.seed ^ u64::from(ids.school).rotate_left(32));
        let applicants: Vec<Applicant> = (0..students)
            .map(|n| Applicant {
                application_id: application_id(ids, n),
                student_temp_id: ids.id("student-temp", n),
                guardian_id: ids.id("guardian", n),
                chronic: rng.f64() < 0.07,
                ability: rng.u32(55..=98),
            })
            .collect();
        let mut orders = Vec::new();
        for (n, a) in applicants.iter().enumerate() {
            if rng.f64() < 0.15 {
                orders.push(order(ids, n, a.guardian_id, days, &mut rng));
            }
        }
        Self {
            ids,
            applicants,
            orders,
            days,
            registrar: ids.id("staff", "registrar"),
        }
    }

    /// One `enrollment.submitted` per applicant, in application order.
    pub fn submissions(&self) -> anyhow::Result<Vec<Envelope>> {
        self.applicants
            .iter()
            .enumerate()
            .map(|(n, a)| {
                envelope(&EnrollmentSubmitted {
                    application_id: a.application_id,
                    student_temp_id: a.student_temp_id,
                    guardian_id: a.guardian_id,
                    submitted_at: pre_term(minutes(n)),
                })
            })
            .collect()
    }

    /// The approval of each submission, caused by it (its correlation id, the submission as
    /// causation); `submissions` are the envelopes of [`Roster::submissions`] to approve.
    pub fn approvals<'a>(
        &self,
        submissions: impl IntoIterator<Item = &'a Envelope>,
    ) -> anyhow::Result<Vec<Envelope>> {
        submissions
            .into_iter()
            .enumerate()
            .map(|(n, submitted)| {
                let s: EnrollmentSubmitted = serde_json::from_value(submitted.data.clone())?;
                let approved = EnrollmentApproved {
                    application_id: s.application_id,
                    student_temp_id: s.student_temp_id,
                    approved_by: self.registrar,
                    approved_at: pre_term(minutes(n) + 24 * 60),
                    notes: None,
                };
                Ok(envelope(&approved)?
                    .caused_by(submitted)
                    .with_actor_id(self.registrar.to_string()))
            })
            .collect()
    }

    /// One `orders.order.paid` per order.
    pub fn payments(&self) -> anyhow::Result<Vec<Envelope>> {
        self.orders
            .iter()
            .enumerate()
            .map(|(n, o)| {
                envelope(&OrderPaid {
                    order_id: o.order_id,
                    user_id: o.user_id,
                    course_ids: o.course_ids.clone(),
                    payment_id: o.payment_id,
                    paid_at: pre_term(minutes(n) + 2 * 24 * 60),
                })
            })
            .collect()
    }
}

/// The application id of the `n`th applicant of a school; the first one tells whether a
/// school number is already taken in a data directory.
pub fn application_id(ids: Ids, n: u32) -> Uuid {
    ids.id("application", n)
}

fn order(ids: Ids, n: usize, user_id: Uuid, days: u32, rng: &mut fastrand::Rng) -> Order {
    let first = rng.u32(1..=ONLINE_COURSES);
    let mut course_ids = vec![shared_id("online-course", first)];
    if rng.bool() {
        course_ids.push(shared_id("online-course", first % ONLINE_COURSES + 1));
    }
    let last = days.saturating_sub(1);
    let plan = match rng.u32(0..10) {
        0 => OrderPlan::Refund {
            day: rng.u32(0..=last),
        },
        1..=4 => OrderPlan::Complete {
            day: rng.u32(last / 2..=last),
        },
        _ => OrderPlan::Study {
            reach: rng.u32(20..=90),
        },
    };
    Order {
        order_id: ids.id("order", n),
        user_id,
        payment_id: ids.id("payment", n),
        course_ids,
        plan,
    }
}

/// The envelope of a school event, published by [`SOURCE`] now.
pub fn envelope<E: Event>(event: &E) -> anyhow::Result<Envelope> {
    Ok(Envelope::from_event(event, SOURCE)?)
}

/// The first school day of the term: the first Monday of September 2026.
pub fn term_start() -> Date {
    jiff::civil::date(2026, 9, 7)
}

/// The date of school day `day` (0-based), counting Monday to Friday.
pub fn school_date(day: u32) -> Date {
    let weeks = i64::from(day / 5);
    let offset = weeks * 7 + i64::from(day % 5);
    let date = term_start()
        .checked_add(jiff::Span::new().days(offset))
        .unwrap_or(term_start());
    debug_assert!(!matches!(
        date.weekday(),
        Weekday::Saturday | Weekday::Sunday
    ));
    date
}

/// `date` at `hour:minute` UTC.
pub fn at(date: Date, hour: i8, minute: i8) -> Timestamp {
    date.at(hour, minute, 0, 0)
        .to_zoned(TimeZone::UTC)
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A time in the weeks before the term, `minutes` after the enrollment period opened.
fn pre_term(minutes: i64) -> Timestamp {
    let opened = at(term_start(), 9, 0) - jiff::SignedDuration::from_hours(21 * 24);
    opened + jiff::SignedDuration::from_mins(minutes)
}

fn minutes(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4) % (14 * 24 * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_school_and_another_seed_another() {
        let a = Roster::new(Ids::new(7, 1), 200, 20);
        let b = Roster::new(Ids::new(7, 1), 200, 20);
        let c = Roster::new(Ids::new(8, 1), 200, 20);
        let chronic = |r: &Roster| r.applicants.iter().filter(|a| a.chronic).count();
        assert_eq!(
            a.applicants[5].application_id,
            b.applicants[5].application_id
        );
        assert_eq!(chronic(&a), chronic(&b));
        assert_eq!(a.orders.len(), b.orders.len());
        assert_ne!(
            a.applicants[5].application_id,
            c.applicants[5].application_id
        );
        assert!(chronic(&a) > 0 && chronic(&a) < 50, "{}", chronic(&a));
    }

    #[test]
    fn school_days_skip_weekends() {
        assert_eq!(school_date(0), jiff::civil::date(2026, 9, 7));
        assert_eq!(school_date(4), jiff::civil::date(2026, 9, 11));
        assert_eq!(school_date(5), jiff::civil::date(2026, 9, 14));
    }

    #[test]
    fn approvals_are_caused_by_their_submissions() {
        let roster = Roster::new(Ids::new(1, 1), 3, 5);
        let submitted = roster.submissions().unwrap();
        let approved = roster.approvals(&submitted).unwrap();
        for (s, a) in submitted.iter().zip(&approved) {
            assert_eq!(a.causationid.as_deref(), Some(s.id.as_str()));
            assert_eq!(a.correlation_id(), s.correlation_id());
            assert_eq!(a.key(), s.key());
        }
    }
}
