//! What the run stored and what each flow subscription did with it, read back from the
//! deployment itself: the event store for the events, `Transport::states` for each event's
//! outcome per subscription. The summary's counts come from here, so they match the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edubus_core::{DeliveryState, Event, Position, ReadQuery, Recorded, SubscriptionSpec};
use edubus_events::{AccessGranted, AttendanceThresholdBreached, EnrollmentProvisioned};
use edubus_flows::{FlowBackend, SUBSCRIPTIONS};
use indicatif::ProgressBar;
use serde::Serialize;
use uuid::Uuid;

use super::fleet::Fleet;
use super::school::SOURCE;

/// Events read per page.
const PAGE: usize = 1000;
/// Polls in a row with no lag and nothing pending before the outcomes are checked.
const QUIET_POLLS: u32 = 3;
/// How long the flows may go without finishing any attempt while work remains.
const STALL: Duration = Duration::from_secs(180);

/// One event type of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TypeCount {
    /// Events of the type stored since the run started.
    pub stored: u64,
    /// Of those, published by the simulated school (the rest were caused by the flows).
    pub by_school: u64,
    /// Deliveries to flow subscriptions that were handled.
    pub handled: u64,
    /// Deliveries to flow subscriptions that were dead-lettered.
    pub dead_lettered: u64,
}

/// One flow subscription's outcomes for the run's events.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SubCount {
    /// Events handled.
    pub handled: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
}

/// The run's events and their outcomes, counted for each event once all of its deliveries to
/// flow subscriptions are final (handled or dead-lettered).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every event up to here is final and counted.
    after: Position,
    specs: Vec<SubscriptionSpec>,
    permanent: Option<f64>,
    /// Counts per event type.
    pub types: BTreeMap<String, TypeCount>,
    /// Counts per flow subscription.
    pub subs: BTreeMap<String, SubCount>,
    /// Deliveries the subscriptions' types call for.
    pub expected: u64,
    /// Deliveries the subscriptions' types call for that the transport says were never due.
    pub missing: u64,
    /// Deliveries the injected faults always fail (predicted from the event ids).
    pub predicted_permanent: u64,
    /// Dead letters that are injected permanent failures.
    pub injected_dead: u64,
    /// Dead letters for other reasons.
    pub other_dead: u64,
    /// Students provisioned in the run, in store order.
    pub provisioned: Vec<EnrollmentProvisioned>,
    /// Course access granted in the run.
    pub grants: Vec<AccessGranted>,
    /// The correlation id of each provisioned student's enrollment.
    pub enrollments: HashMap<Uuid, String>,
    /// Students whose absences crossed the threshold in the run, in store order.
    pub breached: Vec<Uuid>,
    /// Partition keys of events every flow subscription handled, by event type.
    handled_keys: HashMap<String, HashSet<String>>,
}

impl Ledger {
    /// A ledger of the events after `start`; with `permanent`, predicts injected failures.
    pub fn new(start: Position, permanent: Option<f64>) -> Self {
        Self {
            after: start,
            permanent,
            ..Self::default()
        }
    }

    /// Partition keys of the counted events of type `ty` that every flow subscription
    /// receiving them handled.
    pub fn handled_keys(&self, ty: &str) -> HashSet<String> {
        self.handled_keys.get(ty).cloned().unwrap_or_default()
    }

    /// Threshold breaches published in the run.
    pub fn breaches(&self) -> u64 {
        self.types
            .get(AttendanceThresholdBreached::NAME)
            .map_or(0, |t| t.stored)
    }

    /// Counts the events that became final since the last call, in store order, and returns
    /// how many deliveries to flow subscriptions are still pending.
    pub async fn advance<B: FlowBackend>(&mut self, backend: &B) -> anyhow::Result<u64> {
        if self.specs.len() < SUBSCRIPTIONS.len() {
            self.specs = backend
                .subscriptions()
                .await?
                .into_iter()
                .filter(|s| SUBSCRIPTIONS.contains(&s.name.as_str()))
                .collect();
        }
        let mut after = self.after;
        let mut pending = 0;
        loop {
            let page = backend
                .read(ReadQuery {
                    after,
                    limit: PAGE,
                    ..ReadQuery::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            let states = backend.states(&page).await?;
            for (event, row) in page.iter().zip(states) {
                let row: Vec<(String, DeliveryState)> = row
                    .into_iter()
                    .filter(|(name, _)| SUBSCRIPTIONS.contains(&name.as_str()))
                    .collect();
                let waiting = row
                    .iter()
                    .filter(|(_, s)| matches!(s, DeliveryState::Pending { .. }))
                    .count() as u64;
                if waiting > 0 || pending > 0 {
                    pending += waiting;
                    continue;
                }
                self.count(event, &row)?;
                self.after = event.position;
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(pending)
    }

    fn count(&mut self, event: &Recorded, row: &[(String, DeliveryState)]) -> anyhow::Result<()> {
        let env = &event.envelope;
        let ty = env.event_type.as_str();
        let t = self.types.entry(ty.to_owned()).or_default();
        t.stored += 1;
        t.by_school += u64::from(env.source == SOURCE);
        let mut all_handled = true;
        for spec in self
            .specs
            .iter()
            .filter(|s| s.types.is_empty() || s.types.iter().any(|x| x == ty))
        {
            self.expected += 1;
            let predicted = self.permanent.is_some_and(|permanent| {
                let faults = edubus_flows::Faults {
                    permanent,
                    transient: 0.0,
                };
                faults.always_fails(&env.id, &spec.name)
            });
            self.predicted_permanent += u64::from(predicted);
            let state = row
                .iter()
                .find(|(name, _)| *name == spec.name)
                .map(|(_, s)| s);
            let sub = self.subs.entry(spec.name.clone()).or_default();
            match state {
                Some(DeliveryState::Handled) => {
                    t.handled += 1;
                    sub.handled += 1;
                }
                Some(DeliveryState::DeadLettered { .. }) => {
                    all_handled = false;
                    t.dead_lettered += 1;
                    sub.dead_lettered += 1;
                    match predicted {
                        true => self.injected_dead += 1,
                        false => self.other_dead += 1,
                    }
                }
                Some(DeliveryState::NotSubscribed | DeliveryState::Pending { .. }) | None => {
                    all_handled = false;
                    self.missing += 1;
                }
            }
        }
        if all_handled && let Some(key) = env.key() {
            self.handled_keys
                .entry(ty.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
        self.collect(event)
    }

    /// Keeps what the driver and the summary need: provisioned students, granted access,
    /// students past the absence threshold.
    fn collect(&mut self, event: &Recorded) -> anyhow::Result<()> {
        let env = &event.envelope;
        let decode = || format!("stored {} {} does not decode", env.event_type, env.id);
        match env.event_type.as_str() {
            EnrollmentProvisioned::NAME => {
                let p: EnrollmentProvisioned =
                    serde_json::from_value(env.data.clone()).with_context(decode)?;
                self.enrollments
                    .insert(p.student_id, env.correlation_id().to_owned());
                self.provisioned.push(p);
            }
            AttendanceThresholdBreached::NAME => {
                let b: AttendanceThresholdBreached =
                    serde_json::from_value(env.data.clone()).with_context(decode)?;
                self.breached.push(b.student_id);
            }
            AccessGranted::NAME => self
                .grants
                .push(serde_json::from_value(env.data.clone()).with_context(decode)?),
            _ => {}
        }
        Ok(())
    }
}

/// Waits until every flow subscription has handled (or dead-lettered) every event of the run:
/// no lag and nothing pending for a few polls in a row, then every stored event's outcome
/// checked. Fails when the flows stop making progress while work remains.
pub async fn settle<B: FlowBackend>(
    backend: &B,
    ledger: &mut Ledger,
    fleet: &mut Fleet<B>,
    spinner: &ProgressBar,
) -> anyhow::Result<()> {
    let mut quiet = 0;
    let mut last = (fleet.activity(), Instant::now());
    let mut pending = 0;
    loop {
        fleet.check()?;
        let stats = backend
            .stats()
            .await
            .context("cannot read the subscriptions' health")?;
        let flows: Vec<_> = stats
            .iter()
            .filter(|s| SUBSCRIPTIONS.contains(&s.subscription.as_str()))
            .collect();
        let busy: u64 = flows.iter().map(|s| s.lag + s.pending).sum();
        spinner.set_message(format!("handlers catching up: {} to go", busy.max(pending)));
        quiet = if busy == 0 { quiet + 1 } else { 0 };
        if quiet >= QUIET_POLLS {
            pending = ledger.advance(backend).await?;
            if pending == 0 {
                return Ok(());
            }
            quiet = 0;
        }
        let activity = fleet.activity();
        if activity != last.0 {
            last = (activity, Instant::now());
        } else if last.1.elapsed() > STALL {
            let detail: Vec<String> = flows
                .iter()
                .filter(|s| s.lag + s.pending > 0)
                .map(|s| format!("{} lag {} pending {}", s.subscription, s.lag, s.pending))
                .collect();
            bail!(
                "the flows stopped making progress: no handler finished an attempt for {} s \
                 while {} deliveries remain ({})",
                STALL.as_secs(),
                busy.max(pending),
                match detail.is_empty() {
                    true =>
                        "the transport reports no lag; events may be stuck before it".to_owned(),
                    false => detail.join("; "),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
