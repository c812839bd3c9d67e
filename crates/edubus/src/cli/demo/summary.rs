//! The closing summary of `edubus demo` (text or one JSON object) and where to look next.

use std::collections::BTreeMap;

use comfy_table::Table;
use comfy_table::presets::NOTHING;
use serde::Serialize;

use super::fleet::{Crash, LatencySummary, WorkerTotals};
use super::ledger::{SubCount, TypeCount};
use crate::cli::{outln, print_table};

/// What the demo ran and what came of it.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Where the data is.
    pub deployment: String,
    /// Seed of the simulated school.
    pub seed: u64,
    /// The school's number among the demo schools of this data (from 1).
    pub school: u32,
    /// Students who applied.
    pub students: u32,
    /// Students the enrollment flow provisioned in this run.
    pub provisioned_students: u64,
    /// Provisioned students drawn to be absent often.
    pub chronically_absent: usize,
    /// Homerooms the students were assigned to.
    pub homerooms: usize,
    /// School days of the term.
    pub days: u32,
    /// Days absent at which absence is escalated.
    pub threshold: u32,
    /// Wall time from the first publish to the last event handled, seconds.
    pub seconds: f64,
    /// Events the school published (as stored).
    pub published: u64,
    /// Events the flows published as consequences (as stored).
    pub caused: u64,
    /// Per event type: stored, by the school, handled and dead-lettered deliveries.
    pub events: BTreeMap<String, TypeCount>,
    /// Per flow subscription: events handled and dead-lettered.
    pub subscriptions: BTreeMap<String, SubCount>,
    /// The workers' counters, summed.
    pub worker: WorkerTotals,
    /// Retries scheduled.
    pub retries: u64,
    /// `attendance.threshold_breached` events published.
    pub threshold_breaches: u64,
    /// Entries in the flow subscriptions' dead-letter queues (all runs).
    pub dlq_depth: u64,
    /// Deliveries of this run that were dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries a subscription should have made that are neither handled nor
    /// dead-lettered.
    pub lost: u64,
    /// Publish-to-handler latency of first attempts.
    pub latency: LatencySummary,
    /// Injected faults and their outcome, under `--faults`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
    /// Where to look next.
    pub look: Look,
}

/// What `--faults` injected and what became of it.
#[derive(Debug, Serialize)]
pub struct Faults {
    /// Share of deliveries whose first attempt failed.
    pub transient: f64,
    /// Share of deliveries that always failed.
    pub permanent: f64,
    /// Deliveries the permanent share picks among this run's (predicted from the ids).
    pub injected_permanent: u64,
    /// Dead letters that are injected permanent failures.
    pub dead_lettered_injected: u64,
    /// Dead letters for any other reason.
    pub dead_lettered_other: u64,
    /// The worker crash.
    pub crash: Option<Crash>,
}

/// URLs and commands to explore the result.
#[derive(Debug, Serialize)]
pub struct Look {
    /// The gateway.
    pub http: String,
    /// A provisioned student.
    pub student_id: Option<String>,
    /// The correlation id of one enrollment.
    pub correlation_id: Option<String>,
    /// URLs to open.
    pub urls: Vec<String>,
    /// Commands to run.
    pub commands: Vec<String>,
}

impl Look {
    /// The places to look for a run served at `http`; `data` is the `--data` argument the
    /// commands need, if any.
    pub fn new(
        http: String,
        student: Option<String>,
        correlation: Option<String>,
        data: Option<&str>,
    ) -> Self {
        let data = data.map(|d| format!(" --data {d}")).unwrap_or_default();
        let mut urls = Vec::new();
        let mut commands = Vec::new();
        if let Some(s) = &student {
            urls.push(format!("{http}/v1/flows/students/{s}"));
            commands.push(format!("edubus flows student {s}{data}"));
        }
        if let Some(c) = &correlation {
            commands.push(format!("edubus trace {c}{data}"));
        }
        commands.push(format!("edubus dlq list{data}"));
        for path in ["/health/events", "/metrics", "/openapi.json"] {
            urls.push(format!("{http}{path}"));
        }
        Self {
            http,
            student_id: student,
            correlation_id: correlation,
            urls,
            commands,
        }
    }
}

impl Summary {
    /// Prints the summary: one JSON object, or text for people.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            outln!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        outln!("");
        outln!(
            "school {} of seed {}: {} of {} students provisioned in {} homerooms ({} often absent), {} school days, threshold {} days",
            self.school,
            self.seed,
            self.provisioned_students,
            self.students,
            self.homerooms,
            self.chronically_absent,
            self.days,
            self.threshold
        );
        outln!(
            "{} events published by the school, {} caused by the flows; every flow caught up in {:.1} s",
            self.published,
            self.caused,
            self.seconds
        );
        self.tables();
        self.totals();
        Ok(())
    }

    fn tables(&self) {
        let mut table = Table::new();
        table.load_style(NOTHING);
        table.set_header([
            "EVENT TYPE",
            "STORED",
            "BY SCHOOL",
            "HANDLED",
            "DEAD-LETTERED",
        ]);
        for (ty, c) in &self.events {
            table.add_row([
                ty.clone(),
                c.stored.to_string(),
                c.by_school.to_string(),
                c.handled.to_string(),
                c.dead_lettered.to_string(),
            ]);
        }
        print_table(&table);
        outln!("");
        let mut table = Table::new();
        table.load_style(NOTHING);
        table.set_header(["SUBSCRIPTION", "HANDLED", "DEAD-LETTERED"]);
        for (name, c) in &self.subscriptions {
            table.add_row([
                name.clone(),
                c.handled.to_string(),
                c.dead_lettered.to_string(),
            ]);
        }
        print_table(&table);
        outln!("");
    }

    fn totals(&self) {
        let w = &self.worker;
        outln!(
            "handler runs: {} succeeded, {} failed, {} retries, {} dead-lettered, {} duplicates skipped",
            w.handled,
            w.failed,
            w.retried,
            w.dead_lettered,
            w.duplicates
        );
        outln!("threshold breaches: {}", self.threshold_breaches);
        outln!("provisioned students: {}", self.provisioned_students);
        outln!("DLQ depth: {}", self.dlq_depth);
        outln!(
            "publish-to-handler latency: p50 {} ms, p99 {} ms ({} first attempts)",
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.samples
        );
        if let Some(f) = &self.faults {
            outln!(
                "faults: {:.1} % of first attempts failed, {:.1} % of deliveries always fail",
                f.transient * 100.0,
                f.permanent * 100.0
            );
            if let Some(c) = &f.crash {
                outln!(
                    "crash: worker {} killed after school day {}; {} took over its partitions",
                    c.crashed,
                    c.after_day,
                    c.successor
                );
            }
            outln!(
                "dead letters: {} in this run: {} injected permanent failures (of {} injected), {} for other reasons",
                self.dead_lettered,
                f.dead_lettered_injected,
                f.injected_permanent,
                f.dead_lettered_other
            );
            outln!("retries: {}", self.retries);
        }
        match self.lost {
            0 => outln!(
                "lost: 0 (every delivery the flows' subscriptions owe is handled or dead-lettered)"
            ),
            n => outln!("lost: {n} deliveries are neither handled nor dead-lettered"),
        }
    }

    /// Prints where to look (text mode).
    pub fn print_look(&self) {
        outln!("");
        outln!("where to look:");
        for url in &self.look.urls {
            outln!("  {url}");
        }
        for command in &self.look.commands {
            outln!("  {command}");
        }
    }
}
