//! The drive of one demo run: the school's enrollment and term published through the
//! gateway, the waits for the flows, and the summary read back from the deployment.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use edubus_core::{Envelope, Event};
use edubus_events::{BatchEssaysRegistered, EnrollmentSubmitted};
use edubus_flows::{FlowBackend, SUBSCRIPTIONS};
use indicatif::ProgressBar;
use uuid::Uuid;

use super::DemoArgs;
use super::client::Publisher;
use super::fleet::{self, Fleet, Latency};
use super::ledger::{self, Ledger};
use super::school::{Ids, Roster};
use super::summary::{self, Look, Summary};
use super::term::Term;
use crate::cli::{data, progress};

/// One demo run on an opened deployment.
pub(super) struct Run<B: FlowBackend> {
    pub(super) backend: B,
    pub(super) ledger: Ledger,
    pub(super) fleet: Fleet<B>,
    pub(super) publisher: Publisher,
    pub(super) quiet: bool,
}

/// Drives the school through its enrollment and term, waits for the flows, and sums up.
pub(super) async fn simulate<B: FlowBackend>(
    run: &mut Run<B>,
    ids: Ids,
    args: &DemoArgs,
    latency: &Latency,
    dir: &Path,
    url: &str,
) -> anyhow::Result<Summary> {
    wait_registered(run).await?;
    let started = Instant::now();
    let roster = Roster::new(ids, args.students, args.days);
    let term = enroll(run, &roster).await?;
    school_days(run, &term, args).await?;
    let seconds = started.elapsed().as_secs_f64();
    summarize(run, &term, args, latency, seconds, Where { ids, dir, url }).await
}

/// What the summary says about where the run happened.
struct Where<'a> {
    ids: Ids,
    dir: &'a Path,
    url: &'a str,
}

/// The summary of a settled run, from the ledger, the transport and the workers.
async fn summarize<B: FlowBackend>(
    run: &Run<B>,
    term: &Term,
    args: &DemoArgs,
    latency: &Latency,
    seconds: f64,
    at: Where<'_>,
) -> anyhow::Result<Summary> {
    let Where { ids, dir, url } = at;
    let data = match data::config().production() {
        Some(_) => None,
        None => (dir != Path::new("edubus-data")).then(|| dir.display().to_string()),
    };
    let l = &run.ledger;
    // A student past the absence threshold shows the most in the read models.
    let student = l
        .breached
        .first()
        .or(l.provisioned.first().map(|p| &p.student_id));
    let look = Look::new(
        url.to_owned(),
        student.map(Uuid::to_string),
        student.and_then(|s| l.enrollments.get(s)).cloned(),
        data.as_deref(),
    );
    let stats = run.backend.stats().await?;
    let dlq_depth = stats
        .iter()
        .filter(|s| SUBSCRIPTIONS.contains(&s.subscription.as_str()))
        .map(|s| s.dlq_depth)
        .sum();
    let published: u64 = l.types.values().map(|t| t.by_school).sum();
    let stored: u64 = l.types.values().map(|t| t.stored).sum();
    let worker = run.fleet.totals();
    Ok(Summary {
        deployment: data::describe(dir),
        seed: args.seed,
        school: ids.school(),
        students: args.students,
        provisioned_students: l.provisioned.len() as u64,
        chronically_absent: term.chronic(),
        homerooms: term.batches().len(),
        days: args.days,
        threshold: args.threshold,
        seconds: (seconds * 10.0).round() / 10.0,
        published,
        caused: stored - published,
        events: l.types.clone(),
        subscriptions: l.subs.clone(),
        worker,
        retries: worker.retried,
        threshold_breaches: l.breaches(),
        dlq_depth,
        dead_lettered: l.subs.values().map(|s| s.dead_lettered).sum(),
        lost: l.missing,
        latency: latency.close(),
        faults: args.faults.then(|| summary::Faults {
            transient: fleet::TRANSIENT,
            permanent: fleet::PERMANENT,
            injected_permanent: l.predicted_permanent,
            dead_lettered_injected: l.injected_dead,
            dead_lettered_other: l.other_dead,
            crash: run.fleet.crashed().cloned(),
        }),
        look,
    })
}

/// Waits until the worker has registered every flow subscription.
async fn wait_registered<B: FlowBackend>(run: &mut Run<B>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        run.fleet.check()?;
        let known = run.backend.subscriptions().await?;
        if SUBSCRIPTIONS
            .iter()
            .all(|s| known.iter().any(|k| k.name == *s))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the flows' subscriptions were not registered within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl<B: FlowBackend> Run<B> {
    fn bar(&self, len: usize, what: &str) -> ProgressBar {
        match self.quiet {
            true => ProgressBar::hidden(),
            false => progress::bar(len as u64, what),
        }
    }

    async fn publish(&mut self, what: &str, events: Vec<Envelope>) -> anyhow::Result<()> {
        let bar = self.bar(events.len(), what);
        self.publisher.publish(events, &bar).await?;
        bar.finish_and_clear();
        Ok(())
    }

    /// Waits for the flows to handle everything published so far.
    async fn settle(&mut self, what: &str) -> anyhow::Result<()> {
        let spinner = match self.quiet {
            true => ProgressBar::hidden(),
            false => progress::spinner(what),
        };
        let result =
            ledger::settle(&self.backend, &mut self.ledger, &mut self.fleet, &spinner).await;
        spinner.finish_and_clear();
        result
    }
}

/// Applications, payments and approvals, until the students are provisioned and the bought
/// courses granted; then the essay batches. Staff approve only applications the enrollment
/// flow recorded, and essays go only to registered batches, so an injected failure does not
/// cascade into failures of later events.
async fn enroll<B: FlowBackend>(run: &mut Run<B>, roster: &Roster) -> anyhow::Result<Term> {
    let submissions = roster.submissions()?;
    let mut first = submissions.clone();
    first.extend(roster.payments()?);
    run.publish("applications", first).await?;
    run.settle("recording applications").await?;
    let recorded = run.ledger.handled_keys(EnrollmentSubmitted::NAME);
    let approvals = roster.approvals(
        submissions
            .iter()
            .filter(|s| s.key().is_some_and(|k| recorded.contains(k))),
    )?;
    run.publish("approvals", approvals).await?;
    run.settle("provisioning students").await?;
    let term = Term::new(roster, &run.ledger.provisioned, &run.ledger.grants);
    run.publish("essay batches", term.registrations()?).await?;
    run.settle("registering essay batches").await?;
    Ok(term)
}

/// The school days, then the wait for the flows to catch up. Under `--faults` the worker is
/// killed after the middle day.
async fn school_days<B: FlowBackend>(
    run: &mut Run<B>,
    term: &Term,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let keys = run.ledger.handled_keys(BatchEssaysRegistered::NAME);
    let registered: BTreeSet<Uuid> = term
        .batches()
        .into_iter()
        .filter(|b| keys.contains(&b.to_string()))
        .collect();
    let mut total = 0;
    for day in 0..args.days {
        total += term.day(day, &registered)?.len();
    }
    let bar = run.bar(total, "school days");
    let crash_after = args.faults.then_some(args.days.div_ceil(2));
    for day in 0..args.days {
        bar.set_message(format!("day {}/{}", day + 1, args.days));
        run.publisher
            .publish(term.day(day, &registered)?, &bar)
            .await?;
        run.fleet.check()?;
        if crash_after == Some(day + 1) {
            run.fleet.crash(day + 1)?;
        }
    }
    bar.finish_and_clear();
    run.settle("handlers catching up").await
}
