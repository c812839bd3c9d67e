//! `edubus catalog ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::Table;
use comfy_table::presets::{NOTHING, UTF8_FULL_CONDENSED};
use edubus_catalog::emit::{json_schema, spec};
use edubus_catalog::resolve::{self, ResolveError};
use edubus_catalog::{Catalog, EventSpec, diff, export, parse};
use serde_json::json;

use super::source;
use super::{CatalogArg, outln, print_table};

/// Catalog subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List every event (latest version per name).
    List {
        /// Only this context.
        #[arg(long)]
        context: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: CatalogArg,
    },
    /// Show one event and its JSON Schema; NAME is a canonical name, an alias or a topic.
    Show {
        /// Event name, alias or topic.
        name: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: CatalogArg,
    },
    /// Check a catalog directory and list every problem (exit 1 when there is any).
    Lint {
        /// Catalog directory [default: ./catalog].
        dir: Option<PathBuf>,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write JSON Schemas, the AsyncAPI document and Markdown docs to a directory.
    Export {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        source: CatalogArg,
    },
    /// Classify every change between two catalogs (directories or `git:REF`);
    /// exit 1 when a breaking change comes without a new version.
    Diff {
        /// The old catalog: a directory or `git:REF[:DIR]`.
        old: String,
        /// The new catalog: a directory or `git:REF[:DIR]`.
        new: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one catalog subcommand.
pub fn run(cmd: CatalogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CatalogCommand::List {
            context,
            json,
            source,
        } => list(
            &source::load(source.catalog.as_deref())?,
            context.as_deref(),
            json,
        ),
        CatalogCommand::Show { name, json, source } => {
            show(&source::load(source.catalog.as_deref())?, &name, json)
        }
        CatalogCommand::Lint { dir, json } => lint(dir.unwrap_or_else(|| "catalog".into()), json),
        CatalogCommand::Export { out, source } => {
            let catalog = source::load(source.catalog.as_deref())?;
            let written = export::write(&catalog, &out)?;
            outln!(
                "exported {} event versions to {} ({written} files changed)",
                catalog.events().count(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CatalogCommand::Diff { old, new, json } => diff_cmd(&old, &new, json),
    }
}

fn list(catalog: &Catalog, context: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(c) = context.filter(|c| catalog.context(c).is_none()) {
        let known: Vec<_> = catalog.contexts.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: unknown context `{c}`; contexts: {}",
            known.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    let latest: Vec<&EventSpec> = catalog
        .names()
        .into_iter()
        .filter_map(|n| catalog.latest(n))
        .filter(|e| context.is_none_or(|c| e.context == c))
        .collect();
    if json {
        let rows: Vec<_> = latest.iter().map(|e| list_json(catalog, e)).collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(["EVENT", "VERSIONS", "CONTEXT", "KEY", "TOPIC", "SUMMARY"]);
    for e in &latest {
        table.add_row([
            e.name.clone(),
            versions(catalog, e),
            e.context.clone(),
            e.key.clone(),
            e.topic.clone(),
            e.summary.clone(),
        ]);
    }
    print_table(&table);
    outln!("{} events", latest.len());
    Ok(ExitCode::SUCCESS)
}

fn versions(catalog: &Catalog, e: &EventSpec) -> String {
    let v: Vec<_> = catalog
        .versions(&e.name)
        .iter()
        .map(|e| e.version.to_string())
        .collect();
    v.join(", ")
}

fn list_json(catalog: &Catalog, e: &EventSpec) -> serde_json::Value {
    let versions: Vec<u32> = catalog
        .versions(&e.name)
        .iter()
        .map(|e| e.version)
        .collect();
    json!({
        "name": e.name, "latest_version": e.version, "versions": versions, "context": e.context,
        "key": e.key, "topic": e.topic, "producer": e.producer, "summary": e.summary,
        "aliases": e.aliases,
    })
}

fn show(catalog: &Catalog, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let resolved = match resolve::resolve(catalog, name) {
        Ok(r) => r,
        Err(err) => return Ok(unknown_name(&err)),
    };
    let e = resolved.event;
    let schema = json_schema::event_schema(e);
    if json {
        let out = json!({ "resolved_via": resolved.via.to_string(), "event": spec::event_json(e), "schema": schema });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if resolved.via != resolve::Via::Canonical {
        outln!(
            "`{name}` is the {} of {} v{}\n",
            resolved.via,
            e.name,
            e.version
        );
    }
    print_spec(catalog, e);
    outln!(
        "\nJSON Schema ({}):\n{}",
        json_schema::schema_id(&e.name, e.version),
        serde_json::to_string_pretty(&schema)?
    );
    Ok(ExitCode::SUCCESS)
}

/// Says why a name did not resolve and returns exit code 2.
pub fn unknown_name(err: &ResolveError) -> ExitCode {
    match err {
        ResolveError::Unknown {
            name,
            nearest,
            total,
        } => {
            eprintln!("error: unknown event `{name}`");
            eprintln!("  did you mean: {}", nearest.join(", "));
            eprintln!("  the catalog has {total} events; `edubus catalog list` shows them all");
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(2)
}

fn print_spec(catalog: &Catalog, e: &EventSpec) {
    outln!(
        "{} v{} ({:?}, context {})",
        e.name,
        e.version,
        e.kind,
        e.context
    );
    outln!("  {}", e.summary);
    if let Some(d) = &e.description {
        outln!("  {d}");
    }
    outln!("producer:      {}", e.producer);
    let consumers: Vec<_> = e
        .consumers
        .iter()
        .map(|c| match &c.action {
            Some(a) => format!("{} ({a})", c.name),
            None => c.name.clone(),
        })
        .collect();
    outln!(
        "consumers:     {}",
        if consumers.is_empty() {
            "-".into()
        } else {
            consumers.join("; ")
        }
    );
    outln!("key:           {}", e.key);
    outln!("topic:         {}", e.topic);
    outln!("versions:      {}", versions(catalog, e));
    outln!(
        "aliases:       {}",
        if e.aliases.is_empty() {
            "-".into()
        } else {
            e.aliases.join(", ")
        }
    );
    outln!("compatibility: {}", e.compatibility);
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED);
    table.set_header(["field", "type", "required", "pii"]);
    for f in &e.fields {
        table.add_row([
            f.name.clone(),
            f.ty.to_string(),
            yes(!f.optional),
            yes(f.pii),
        ]);
    }
    outln!("{table}");
}

fn yes(b: bool) -> String {
    if b { "yes".into() } else { String::new() }
}

fn lint(dir: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let result = parse::load_dir(&dir);
    let problems = result
        .as_ref()
        .err()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    if json {
        let items: Vec<_> = problems
            .iter()
            .map(|d| {
                json!({
                    "file": d.location.file, "line": d.location.line, "column": d.location.column,
                    "message": d.message, "help": d.help,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for d in &problems {
            outln!("{d}");
        }
    }
    match result {
        Ok(catalog) => {
            if !json {
                let (events, versions) = (catalog.names().len(), catalog.events().count());
                outln!(
                    "{}: ok ({events} events, {versions} versions, {} contexts)",
                    dir.display(),
                    catalog.contexts.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            eprintln!("{} problem(s) in {}", d.0.len(), dir.display());
            Ok(ExitCode::from(1))
        }
    }
}

fn diff_cmd(old: &str, new: &str, json: bool) -> anyhow::Result<ExitCode> {
    let report = diff::diff(&source::load_spec(old)?, &source::load_spec(new)?);
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{}", report.render_text().trim_end());
    }
    Ok(if report.is_failure() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
