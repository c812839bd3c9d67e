//! Worker processes: the arguments of `edubus-conformance-worker`, what it runs, and the
//! handle tests keep on a child (SIGKILL, SIGTERM, exit status).

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use edubus_core::LeaseOptions;
use edubus_runtime::{RetryPolicy, SubscriptionOptions, Worker, WorkerStats, shutdown_signal};

use crate::check::eventually;
use crate::events::key;
use crate::fixture::bus;
use crate::harness::Harness;
use crate::script::{Action, Script};

/// Arguments of `edubus-conformance-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "edubus-conformance-worker",
    about = "A scripted worker for the suite"
)]
pub struct WorkerArgs {
    /// Backend spec (`sqlite:<path>`).
    #[arg(long)]
    pub backend: String,
    /// Subscription to run.
    #[arg(long)]
    pub subscription: String,
    /// Number of keys the events use (keys 0..keys).
    #[arg(long, default_value_t = 1)]
    pub keys: u64,
    /// Chance of a transient failure per invocation.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Seed of the failure decisions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The handler never returns for this key index.
    #[arg(long)]
    pub hang_on_key: Option<u64>,
    /// Exit (code 86) in the handler after this many invocations, before settling.
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// Run the subscription without per-key ordering.
    #[arg(long)]
    pub unordered: bool,
    /// Each invocation first sleeps this long.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Attempts before dead-lettering.
    #[arg(long, default_value_t = 20)]
    pub attempts: u32,
    /// Lease ttl.
    #[arg(long, default_value_t = 900)]
    pub ttl_ms: u64,
    /// Shutdown grace period.
    #[arg(long, default_value_t = 5000)]
    pub grace_ms: u64,
    /// Consumer id (default: the runtime's host-pid-random id).
    #[arg(long)]
    pub consumer: Option<String>,
}

impl WorkerArgs {
    /// Defaults for `subscription` on the storage named by `backend`.
    pub fn new(backend: impl Into<String>, subscription: impl Into<String>) -> Self {
        Self::parse_from([
            "edubus-conformance-worker",
            "--backend",
            &backend.into(),
            "--subscription",
            &subscription.into(),
        ])
    }

    /// The command line that parses back into these arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--backend={}", self.backend),
            format!("--subscription={}", self.subscription),
            format!("--keys={}", self.keys),
            format!("--fail-rate={}", self.fail_rate),
            format!("--seed={}", self.seed),
            format!("--delay-ms={}", self.delay_ms),
            format!("--attempts={}", self.attempts),
            format!("--ttl-ms={}", self.ttl_ms),
            format!("--grace-ms={}", self.grace_ms),
        ];
        let optional = [
            self.hang_on_key.map(|k| format!("--hang-on-key={k}")),
            self.exit_after.map(|n| format!("--exit-after={n}")),
            self.consumer.as_ref().map(|c| format!("--consumer={c}")),
            self.unordered.then(|| "--unordered".to_owned()),
        ];
        args.extend(optional.into_iter().flatten());
        args
    }

    /// The handler script these arguments describe.
    pub fn script(&self) -> Script {
        let hang = self.hang_on_key.map(key);
        let exit_after = self.exit_after;
        let (rate, calls) = (self.fail_rate, AtomicU64::new(0));
        let rng = Mutex::new(fastrand::Rng::with_seed(self.seed));
        let label = self.consumer.clone().unwrap_or_else(|| "process".into());
        Script::new(label, move |call| {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            if exit_after.is_some_and(|max| n > max) {
                Action::Exit
            } else if hang.as_deref() == Some(call.key.as_str()) {
                Action::Hang
            } else if rng.lock().unwrap_or_else(PoisonError::into_inner).f64() < rate {
                Action::Fail
            } else {
                Action::Record
            }
        })
        .with_delay(Duration::from_millis(self.delay_ms))
    }

    fn options(&self) -> SubscriptionOptions {
        let retry = RetryPolicy::attempts(self.attempts)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(10));
        let options = SubscriptionOptions::default().with_retry(retry);
        if self.unordered {
            options.unordered()
        } else {
            options
        }
    }
}

/// Runs the worker the arguments describe on `harness` until SIGTERM or SIGINT.
pub async fn serve<H: Harness>(harness: H, args: WorkerArgs) -> anyhow::Result<Arc<WorkerStats>> {
    if let Some(k) = args.hang_on_key {
        anyhow::ensure!(
            k < args.keys,
            "--hang-on-key {k} is not below --keys {}",
            args.keys
        );
    }
    let storage = harness
        .parse_spec(&args.backend)
        .with_context(|| format!("backend spec `{}`", args.backend))?;
    let backend = harness.open(&storage).await?;
    let (harness, script) = (Arc::new(harness), Arc::new(args.script()));
    let lease = LeaseOptions {
        ttl: Duration::from_millis(args.ttl_ms),
        ..LeaseOptions::default()
    };
    let mut builder = Worker::builder(bus(backend)?)
        .subscription(args.subscription.clone(), args.options())
        .lease_options(lease)
        .grace_period(Duration::from_millis(args.grace_ms));
    if let Some(consumer) = &args.consumer {
        builder = builder.consumer_id(consumer.clone());
    }
    let worker = script.attach(builder, &harness).build()?;
    let stats = worker.stats();
    worker.run(shutdown_signal()).await?;
    Ok(stats)
}

/// A running `edubus-conformance-worker`; killed with SIGKILL when dropped.
pub struct WorkerProcess {
    child: std::process::Child,
}

impl WorkerProcess {
    /// Starts `binary` with `args`. Its output goes to the test's stderr when
    /// `EDUBUS_CONFORMANCE_VERBOSE` is set and nowhere otherwise.
    pub fn spawn(binary: &Path, args: &WorkerArgs) -> anyhow::Result<Self> {
        let verbose = std::env::var_os("EDUBUS_CONFORMANCE_VERBOSE").is_some();
        let output = || match verbose {
            true => Stdio::inherit(),
            false => Stdio::null(),
        };
        let child = Command::new(binary)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self { child })
    }

    /// Kills the process with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed: {sent}");
        }
        self.wait(timeout).await
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = &mut self.child;
        eventually("the worker process to exit", timeout, || {
            let status = child.try_wait();
            async move { Ok(status?) }
        })
        .await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
