//! `edubus envelope ...`: check CloudEvents envelopes against the catalog.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use edubus_catalog::validate::Validator;
use edubus_core::Envelope;
use edubus_core::error::Issue;
use serde_json::{Value, json};

use super::{CatalogArg, outln, source};

/// Envelope subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Check a CloudEvents JSON envelope (or a JSON array of them) against the catalog;
    /// exit 1 when any is invalid.
    Validate {
        /// File to read, or `-` for standard input.
        file: PathBuf,
        /// One JSON array of results instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: CatalogArg,
    },
}

/// The outcome for one envelope.
struct Outcome {
    id: Option<String>,
    event: Option<String>,
    issues: Vec<Issue>,
}

/// Runs one envelope subcommand.
pub fn run(cmd: EnvelopeCommand) -> anyhow::Result<ExitCode> {
    let EnvelopeCommand::Validate { file, json, source } = cmd;
    let catalog = source::load(source.catalog.as_deref())?;
    let validator = Validator::new(&catalog)?;
    let text = read_input(&file)?;
    let items = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => items,
        Ok(one) => vec![one],
        Err(e) => {
            let where_ = format!("{}:{}:{}", file.display(), e.line(), e.column());
            eprintln!("error: {where_}: not valid JSON: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let outcomes: Vec<Outcome> = items.into_iter().map(|v| check(&validator, v)).collect();
    report(&outcomes, json)?;
    let ok = outcomes.iter().all(|o| o.issues.is_empty());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn check(validator: &Validator, value: Value) -> Outcome {
    let id = value.get("id").and_then(Value::as_str).map(str::to_string);
    let env: Envelope = match serde_json::from_value(value) {
        Ok(env) => env,
        Err(e) => {
            let issues = vec![Issue::new("", e.to_string())];
            return Outcome {
                id,
                event: None,
                issues,
            };
        }
    };
    match validator.validate(&env) {
        Ok(v) => Outcome {
            id,
            event: Some(v.event.id()),
            issues: Vec::new(),
        },
        Err(e) => Outcome {
            id,
            event: None,
            issues: e.issues(),
        },
    }
}

fn report(outcomes: &[Outcome], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let issues: Vec<_> =
                    o.issues.iter().map(|i| json!({"pointer": i.pointer, "reason": i.reason})).collect();
                json!({"index": i, "id": o.id, "valid": o.issues.is_empty(), "event": o.event, "issues": issues})
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (i, o) in outcomes.iter().enumerate() {
        let id = o.id.as_deref().unwrap_or("(no id)");
        match &o.event {
            Some(event) => outln!("valid: #{i} {id}: {event}"),
            None => {
                outln!("invalid: #{i} {id}:");
                for issue in &o.issues {
                    let pointer = if issue.pointer.is_empty() {
                        "(envelope)"
                    } else {
                        &issue.pointer
                    };
                    outln!("  {pointer}: {}", issue.reason);
                }
            }
        }
    }
    Ok(())
}
