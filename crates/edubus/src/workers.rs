//! The work `edubus serve` runs: the reference flows (`edubus_flows`), the configured
//! webhooks, and the built-in maintenance.
//!
//! A deployment adds its subscriptions in [`registry`], each followed by its handlers:
//!
//! ```text
//! let worker = Worker::builder(bus.clone())
//!     .subscription("attendance-threshold", SubscriptionOptions::default())
//!     .on::<AttendanceMarked, _, _>(|event, ctx| async move { Ok(()) });
//! ```

use std::time::Duration;

use edubus_core::{Error, Result, Transport};
use edubus_flows::{FlowBackend, FlowConfig};
use edubus_http::WebhookConfig;
use edubus_runtime::{Bus, Worker, WorkerBuilder};
use jiff::Timestamp;
use tokio::sync::watch;

use crate::cli::common::human_duration;

/// What `serve` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Trim transport entries older than this. Off by default: the embedded log is also the
    /// audit store and keeps everything.
    pub retention: Option<Duration>,
    /// Webhook subscriptions (`[[webhook]]`), each run as a subscription of the worker.
    pub webhooks: Vec<WebhookConfig>,
    /// The reference flows' settings; `None` runs without them (`--no-flows`). Call
    /// [`FlowBackend::prepare`] before running a registry with flows.
    pub flows: Option<FlowConfig>,
}

/// A built-in maintenance task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maintenance {
    /// Every `every`, deletes entries recorded more than `keep` ago that every subscription
    /// has settled (never one some subscription still needs).
    Retention {
        /// How long entries are kept.
        keep: Duration,
        /// How often the trim runs.
        every: Duration,
    },
}

/// Everything `serve` runs.
pub struct Registry<B: Transport> {
    /// The subscriptions and their handlers.
    pub worker: WorkerBuilder<B>,
    /// The names of those subscriptions (webhooks, then flows), for the start-up banner.
    pub subscriptions: Vec<String>,
    /// Whether the reference flows are among them.
    pub flows: bool,
    /// The built-in maintenance.
    pub maintenance: Vec<Maintenance>,
}

/// The workers this binary registers: the configured webhooks and, unless disabled, every
/// reference flow; the maintenance is retention trimming when a retention is set. Fails on a
/// webhook the catalog cannot serve.
pub fn registry<B: FlowBackend>(bus: &Bus<B>, settings: &Settings) -> Result<Registry<B>> {
    let mut worker = edubus_http::webhook::register(
        Worker::builder(bus.clone()),
        bus.validator().catalog(),
        &settings.webhooks,
    )?;
    let mut subscriptions: Vec<String> = settings.webhooks.iter().map(|w| w.name.clone()).collect();
    if let Some(flows) = &settings.flows {
        worker = edubus_flows::register(worker, flows);
        subscriptions.extend(edubus_flows::SUBSCRIPTIONS.map(str::to_owned));
    }
    let maintenance = settings
        .retention
        .map(|keep| Maintenance::Retention {
            keep,
            every: trim_interval(keep),
        })
        .into_iter()
        .collect();
    Ok(Registry {
        worker,
        subscriptions,
        flows: settings.flows.is_some(),
        maintenance,
    })
}

/// Trims run 24 times per retention period, at least every hour and at most every second.
fn trim_interval(keep: Duration) -> Duration {
    (keep / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

impl Maintenance {
    /// One line for the start-up banner.
    pub fn describe(&self) -> String {
        match self {
            Self::Retention { keep, every } => format!(
                "retention: trim entries older than {} every {}",
                human_duration(*keep),
                human_duration(*every)
            ),
        }
    }

    /// Runs the task until `stop` turns true.
    pub async fn run<B: Transport>(
        self,
        backend: B,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        let Self::Retention { keep, every } = self;
        while !*stop.borrow() {
            let before = Timestamp::now()
                .checked_sub(keep)
                .map_err(|e| Error::invalid(format!("retention {keep:?} is too long: {e}")))?;
            match backend.trim(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, %before, "retention trim"),
                Err(e) => tracing::warn!(error = %e, "retention trim failed; retrying later"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_run_often_enough_and_not_too_often() {
        let day = Duration::from_secs(86_400);
        assert_eq!(trim_interval(7 * day), Duration::from_secs(3600));
        assert_eq!(
            trim_interval(Duration::from_secs(240)),
            Duration::from_secs(10)
        );
        assert_eq!(
            trim_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }
}
