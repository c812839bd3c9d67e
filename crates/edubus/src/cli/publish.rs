//! `edubus publish`: one event, validated against the catalog, appended to the log.
//!
//! Everything that can be checked without the log is checked before the data directory is
//! opened, so a rejected event neither appends anything nor creates the directory.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use edubus_catalog::resolve;
use edubus_catalog::validate::{ValidationError, Validator};
use edubus_catalog::{Catalog, EventSpec};
use edubus_core::{Appended, Envelope, EventStore};
use edubus_runtime::Bus;
use serde_json::{Value, json};

use super::data::{self, Backend};
use super::{CatalogArg, catalog, common, outln, source};

/// Arguments of `edubus publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Event type: a canonical name, an alias or a topic.
    #[arg(value_name = "TYPE")]
    event_type: String,
    /// The payload: JSON text, or `@FILE` to read it from a file (`@-`: standard input).
    #[arg(long = "data", value_name = "JSON|@FILE")]
    payload: String,
    /// Partition key [default: the payload's key field].
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Correlation id [default: the cause's with --causation-id, else the event's own id].
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// Id of the event that caused this one; without --correlation-id, the cause's
    /// correlation id is looked up in the log and copied.
    #[arg(long, value_name = "ID")]
    causation_id: Option<String>,
    /// Who acted (a user or service id).
    #[arg(long, value_name = "ID")]
    actor: Option<String>,
    /// Tenant (district, school) the event belongs to.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// The producer, written to `source`.
    #[arg(long, value_name = "S", default_value = "edubus-cli")]
    source: String,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Data directory (here `--data` is the payload).
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    catalog: CatalogArg,
}

/// Runs `edubus publish`.
pub async fn run(args: PublishArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let catalog = source::load(args.catalog.catalog.as_deref())?;
    let spec = match resolve::resolve(&catalog, &args.event_type) {
        Ok(resolved) => resolved.event,
        Err(err) => return Ok(catalog::unknown_name(&err)),
    };
    let Some(payload) = read_payload(&args.payload)? else {
        return Ok(ExitCode::from(1));
    };
    let env = envelope(spec, payload, &args);
    if let Err(err) = Validator::new(&catalog)?.validate(&env) {
        return Ok(rejected(&err));
    }
    let dir = args.data_dir.clone().unwrap_or(data);
    if needs_cause(&args) && !data::db_file(&dir).exists() {
        return Ok(unknown_cause(
            args.causation_id.as_deref().unwrap_or_default(),
        ));
    }
    data::with_backend!(&dir, &catalog, |backend| publish(
        backend, catalog, env, args
    ))
}

/// Whether the correlation id is to be copied from the cause in the log.
fn needs_cause(args: &PublishArgs) -> bool {
    args.causation_id.is_some() && args.correlation_id.is_none()
}

fn unknown_cause(cause: &str) -> ExitCode {
    eprintln!("error: the cause `{cause}` is not in the log; give --correlation-id too");
    ExitCode::from(2)
}

/// The payload as JSON; `None` (after saying where the syntax error is) when it is not JSON.
fn read_payload(arg: &str) -> anyhow::Result<Option<Value>> {
    let (origin, text) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            ("<stdin>".to_owned(), text)
        }
        Some(file) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
            (file.to_owned(), text)
        }
        None => ("--data".to_owned(), arg.to_owned()),
    };
    match serde_json::from_str(&text) {
        Ok(value) => Ok(Some(value)),
        Err(e) => {
            eprintln!(
                "error: {origin}:{}:{}: not valid JSON: {e}",
                e.line(),
                e.column()
            );
            Ok(None)
        }
    }
}

/// A new root envelope of `spec` with the attributes given on the command line.
fn envelope(spec: &EventSpec, payload: Value, args: &PublishArgs) -> Envelope {
    let mut env = Envelope::new(&spec.name, spec.version, payload).with_source(&args.source);
    env.aggregatetype.clone_from(&spec.aggregate);
    let optional = [
        (
            &args.key,
            Envelope::with_key as fn(Envelope, String) -> Envelope,
        ),
        (&args.correlation_id, Envelope::with_correlation_id),
        (&args.causation_id, Envelope::with_causation_id),
        (&args.actor, Envelope::with_actor_id),
        (&args.tenant, Envelope::with_tenant_id),
    ];
    for (value, set) in optional {
        if let Some(value) = value {
            env = set(env, value.clone());
        }
    }
    env
}

/// Says why the catalog rejected the event, one line per JSON pointer; exit code 1.
fn rejected(err: &ValidationError) -> ExitCode {
    let issues = err.issues();
    match err {
        ValidationError::Data { event, .. } => {
            eprintln!(
                "error: the payload does not match {event} ({} problem(s)):",
                issues.len()
            );
        }
        other => eprintln!("error: invalid event: {other}"),
    }
    for issue in &issues {
        let pointer = if issue.pointer.is_empty() {
            "(envelope)"
        } else {
            &issue.pointer
        };
        eprintln!("  {pointer}: {}", issue.reason);
    }
    eprintln!("nothing was published");
    ExitCode::from(1)
}

async fn publish<B: Backend>(
    backend: B,
    catalog: Catalog,
    mut env: Envelope,
    args: PublishArgs,
) -> anyhow::Result<ExitCode> {
    if let (Some(cause), None) = (&args.causation_id, &args.correlation_id) {
        match EventStore::get(&backend, cause).await? {
            Some(recorded) => env = env.caused_by(&recorded.envelope),
            None => return Ok(unknown_cause(cause)),
        }
    }
    let bus = Bus::new(backend, &catalog, args.source.clone())?;
    let appended = match bus.publish_envelope(env.clone()).await {
        Ok(appended) => appended,
        Err(err) => return Ok(common::fail(&err)),
    };
    report(&env, &appended, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn report(env: &Envelope, appended: &Appended, json: bool) -> anyhow::Result<()> {
    if json {
        let out = json!({
            "id": appended.id, "position": appended.position, "type": env.event_type,
            "correlationid": env.correlation_id(), "duplicate": appended.duplicate,
        });
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let note = if appended.duplicate {
        " (already stored)"
    } else {
        ""
    };
    outln!("published {} {}", env.event_type, appended.id);
    outln!("position {}{note}", appended.position);
    Ok(())
}
