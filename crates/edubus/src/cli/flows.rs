//! `edubus flows`: the reference flows' read models and staff actions, on the configured
//! deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::Table;
use comfy_table::presets::NOTHING;
use edubus_flows::FlowBackend;
use edubus_flows::read::{self, Approve, ReadModels, View};
use edubus_runtime::Bus;
use serde_json::Value;
use uuid::Uuid;

use super::data::{self, DataArg};
use super::{common, outln, print_table};

/// Arguments of `edubus flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    command: FlowsCommand,
    #[command(flatten)]
    data: DataArg,
}

/// Read-model queries and staff actions.
#[derive(Debug, Subcommand)]
enum FlowsCommand {
    /// Documents per read-model table.
    Counts {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A student: the provisioned record, attendance and course grades.
    Student {
        /// The student id.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One enrollment application.
    Application {
        /// The application id.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enrollment applications, those waiting for approval first.
    Applications {
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One course-access record.
    Access {
        /// The access id.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One paid order and the access it granted.
    Order {
        /// The order id.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One essay batch of the assessment pipeline.
    Batch {
        /// The batch id.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve an enrollment application: publishes `enrollment.approved` caused by its
    /// `enrollment.submitted`. Refused when the application is unknown, already provisioned
    /// or already approved.
    Approve {
        /// The application id.
        application_id: String,
        /// The staff member approving [default: an id derived from `cli:$USER`].
        #[arg(long, value_name = "UUID")]
        by: Option<Uuid>,
        /// Staff notes about the applicant.
        #[arg(long, value_name = "TEXT")]
        notes: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `edubus flows`.
pub async fn run(args: FlowsArgs, data: PathBuf) -> anyhow::Result<ExitCode> {
    let dir = args.data.or(data);
    let command = args.command;
    data::with_backend!(&dir, edubus_events::catalog(), |backend| flows(
        backend, command
    ))
}

async fn flows<B: FlowBackend>(backend: B, command: FlowsCommand) -> anyhow::Result<ExitCode> {
    let models = ReadModels::open(backend).await?;
    match command {
        FlowsCommand::Counts { json } => counts(&models, json).await,
        FlowsCommand::Student { id, json } => show(&models, View::Student, &id, json).await,
        FlowsCommand::Application { id, json } => show(&models, View::Application, &id, json).await,
        FlowsCommand::Applications { limit, json } => applications(&models, limit, json).await,
        FlowsCommand::Access { id, json } => show(&models, View::Access, &id, json).await,
        FlowsCommand::Order { id, json } => show(&models, View::Order, &id, json).await,
        FlowsCommand::Batch { id, json } => show(&models, View::Batch, &id, json).await,
        FlowsCommand::Approve {
            application_id,
            by,
            notes,
            json,
        } => {
            let actor = common::actor();
            let request = Approve {
                application_id,
                approved_by: by.unwrap_or_else(|| read::staff_id(&actor)),
                notes,
                actor: Some(actor),
            };
            approve(models.backend().clone(), request, json).await
        }
    }
}

async fn counts<B: FlowBackend>(models: &ReadModels<B>, json: bool) -> anyhow::Result<ExitCode> {
    let counts = models.counts().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&counts)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(["TABLE", "DOCUMENTS"]);
    for (name, n) in &counts {
        table.add_row([(*name).to_owned(), n.to_string()]);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

/// Prints one document of `view`; exit code 2 when it does not exist.
async fn show<B: FlowBackend>(
    models: &ReadModels<B>,
    view: View,
    id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(doc) = models.get(view, id).await? else {
        return Ok(not_found(view, id));
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    match view {
        View::Student => print_student(&doc),
        View::Application => print_application(&doc),
        View::Batch => print_batch(&doc),
        View::Access | View::Order => print_fields(view, id, &doc),
    }
    Ok(ExitCode::SUCCESS)
}

fn not_found(view: View, id: &str) -> ExitCode {
    match view {
        View::Student => eprintln!(
            "error: no student `{id}`: no provisioned record, attendance record or course grade \
             has this id"
        ),
        other => eprintln!(
            "error: no {} `{id}` in the read model (table {})",
            other.name(),
            other.table().sql_name()
        ),
    }
    ExitCode::from(2)
}

/// A JSON value as one short piece of text: strings bare, `-` for null, else compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_student(doc: &Value) {
    let student = &doc["student"];
    match student.is_null() {
        true => outln!(
            "student {}: not provisioned (attendance or grades only)",
            text(&doc["student_id"])
        ),
        false => {
            outln!(
                "student {} {}: homeroom {}, {} course(s), provisioned {}",
                text(&doc["student_id"]),
                text(&student["student_code"]),
                text(&student["homeroom_id"]),
                student["course_ids"].as_array().map_or(0, Vec::len),
                text(&student["provisioned_at"])
            );
            outln!(
                "application {}; guardian {}",
                text(&student["application_id"]),
                text(&student["guardian_id"])
            );
        }
    }
    let a = &doc["attendance"];
    match a.is_null() {
        true => outln!("attendance: nothing marked"),
        false => {
            let breached = match &a["breached_at_threshold"] {
                Value::Null => String::new(),
                t => format!("; threshold of {t} day(s) breached"),
            };
            outln!(
                "attendance: {} day(s) absent; {} absent, {} late, {} present{breached}",
                text(&a["days_absent"]),
                text(&a["absent"]),
                text(&a["late"]),
                text(&a["present"])
            );
        }
    }
    let grades = doc["grades"].as_array().map_or(&[][..], Vec::as_slice);
    if grades.is_empty() {
        return outln!("grades: none");
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(["COURSE", "AVERAGE", "LETTER", "ITEMS"]);
    for g in grades {
        table.add_row([
            text(&g["course_id"]),
            text(&g["rounded_average"]),
            text(&g["letter"]),
            g["items"].as_object().map_or(0, |m| m.len()).to_string(),
        ]);
    }
    print_table(&table);
}

fn print_application(doc: &Value) {
    outln!(
        "application {}: {}",
        text(&doc["application_id"]),
        text(&doc["status"])
    );
    outln!(
        "submitted {} by guardian {}; applicant (temporary id) {}",
        text(&doc["submitted_at"]),
        text(&doc["guardian_id"]),
        text(&doc["student_temp_id"])
    );
    if !doc["student_id"].is_null() {
        outln!("student {}", text(&doc["student_id"]));
    }
    outln!(
        "correlation {}; submitted event {}",
        text(&doc["correlation_id"]),
        text(&doc["submitted_event_id"])
    );
}

/// Number of members of an object or items of an array.
fn size(v: &Value) -> usize {
    match v {
        Value::Array(items) => items.len(),
        Value::Object(members) => members.len(),
        _ => 0,
    }
}

fn print_batch(doc: &Value) {
    let slots = doc["slots"].as_array().map_or(&[][..], Vec::as_slice);
    let filled = slots.iter().filter(|s| !s["content"].is_null()).count();
    outln!(
        "batch {}: course {} ({}), registered {} by {}",
        text(&doc["batch_id"]),
        text(&doc["course_code"]),
        text(&doc["language"]),
        text(&doc["registered_at"]),
        text(&doc["user_id"])
    );
    outln!(
        "essays: {filled} of {} expected with content; {} failed upload(s), {} excess",
        text(&doc["expected_essay_count"]),
        size(&doc["failed_uploads"]),
        size(&doc["excess_uploads"])
    );
    match &doc["ready"] {
        Value::Null => outln!("ready: not yet"),
        ready => outln!(
            "ready: {} ({} essay(s))",
            text(&ready["ready_at"]),
            size(&ready["essay_ids"])
        ),
    }
    let spell = &doc["spellcheck"];
    let phase = match (&spell["completed"], &spell["requested"]) {
        (Value::Null, Value::Null) => "not started".to_owned(),
        (Value::Null, r) if r["skipped"] == true => "skipped".to_owned(),
        (Value::Null, _) => "running".to_owned(),
        (done, _) => format!(
            "{} ({} ok, {} failed)",
            text(&done["status"]),
            text(&done["successful_count"]),
            text(&done["failed_count"])
        ),
    };
    outln!("spellcheck: {phase}; {} result(s)", size(&spell["results"]));
}

/// A document as `field: value` lines (nested values as compact JSON).
fn print_fields(view: View, id: &str, doc: &Value) {
    outln!("{} {id}", view.name());
    match doc.as_object() {
        Some(fields) => {
            for (name, value) in fields {
                outln!("  {name}: {}", text(value));
            }
        }
        None => outln!("  {}", text(doc)),
    }
}

async fn applications<B: FlowBackend>(
    models: &ReadModels<B>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let all = models.applications(limit).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(["APPLICATION", "STATUS", "SUBMITTED", "GUARDIAN", "STUDENT"]);
    for a in &all {
        table.add_row([
            text(&a["application_id"]),
            text(&a["status"]),
            text(&a["submitted_at"]),
            text(&a["guardian_id"]),
            text(&a["student_id"]),
        ]);
    }
    if !all.is_empty() {
        print_table(&table);
    }
    let waiting = all.iter().filter(|a| a["status"] != "provisioned").count();
    outln!(
        "{} application(s), {waiting} waiting for approval",
        all.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn approve<B: FlowBackend>(
    backend: B,
    request: Approve,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bus = Bus::new(backend, edubus_events::catalog(), "edubus-cli")?;
    let approved = match read::approve(&bus, request).await {
        Ok(approved) => approved,
        Err(err) => return Ok(common::fail(&err)),
    };
    if json {
        outln!("{}", serde_json::to_string(&approved)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "approved application {}: published enrollment.approved {}",
        approved.application_id,
        approved.id
    );
    outln!(
        "position {}; correlation {}; caused by {}",
        approved.position,
        approved.correlation_id,
        approved.causation_id
    );
    Ok(ExitCode::SUCCESS)
}
