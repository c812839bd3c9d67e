//! Validation of envelopes against the catalog: structure, type, version, then payload.
//!
//! Every payload problem is an [`Issue`] whose pointer addresses the envelope (`/data/<field>`),
//! so an HTTP 400 body or a dead-letter record can say exactly what to fix.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use edubus_core::envelope::parse_schema_uri;
use edubus_core::error::{Issue, escape_pointer_token};
use edubus_core::{Envelope, Error};
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::emit::json_schema::event_schema;
use crate::ir::{Catalog, EventSpec, FieldType, Scalar};
use crate::resolve::{ResolveError, Via, resolve};

/// Envelope validation against one catalog, with one compiled JSON Schema per event version.
pub struct Validator {
    catalog: Catalog,
    /// Compiled eagerly in [`Validator::new`]: a schema that does not compile fails at start-up
    /// instead of on the first event, and validation needs no lock or lazy cell. A catalog of a
    /// few hundred versions compiles in milliseconds.
    schemas: HashMap<String, BTreeMap<u32, jsonschema::Validator>>,
    /// Canonical name to its versions (ascending) as (context, event) indexes into `catalog`,
    /// and aliases to the version they pin: the hot path resolves without scanning.
    by_name: HashMap<String, Vec<(usize, usize)>>,
    by_alias: HashMap<String, (usize, usize)>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compiled: usize = self.schemas.values().map(BTreeMap::len).sum();
        f.debug_struct("Validator")
            .field("compiled_schemas", &compiled)
            .finish_non_exhaustive()
    }
}

/// An envelope that passed validation, with the catalog entry it was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Validated<'a> {
    /// The event version the payload conforms to.
    pub event: &'a EventSpec,
    /// How `type` matched the catalog.
    pub via: Via,
}

/// Why an envelope was rejected; [`ValidationError::issues`] gives the pointer-level view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The envelope breaks CloudEvents or edubus structure rules.
    #[error("invalid envelope:{}", render(.0))]
    Envelope(Vec<Issue>),
    /// `type` is no canonical name, alias or topic of the catalog.
    #[error("unknown event type `{name}`; did you mean {}? ({total} events in the catalog)", nearest.join(", "))]
    UnknownType {
        /// The `type` given.
        name: String,
        /// The 3 nearest known names, best first.
        nearest: Vec<String>,
        /// How many distinct events the catalog holds.
        total: usize,
    },
    /// `type` is a topic carrying several different events.
    #[error("`{name}` is a topic carrying several events ({}); use the event name", candidates.join(", "))]
    AmbiguousType {
        /// The `type` given.
        name: String,
        /// The event versions on that topic.
        candidates: Vec<String>,
    },
    /// Several versions exist and nothing in the envelope picks one.
    #[error("`{name}` has versions {}; set `schemaversion` to choose one", list(.versions))]
    AmbiguousVersion {
        /// Canonical event name.
        name: String,
        /// Its versions, ascending.
        versions: Vec<u32>,
    },
    /// The requested version does not exist.
    #[error("{pointer}: `{name}` has no version {version}; known versions: {}", list(.known))]
    UnknownVersion {
        /// Where the version came from (`/schemaversion`, `/dataschema`).
        pointer: String,
        /// Canonical event name.
        name: String,
        /// The version asked for.
        version: u32,
        /// The versions that exist, ascending.
        known: Vec<u32>,
    },
    /// Two attributes of the envelope contradict each other.
    #[error("{0}")]
    Inconsistent(Issue),
    /// The payload does not conform to the event version's schema; issues sorted by pointer.
    #[error("`data` does not match {event}:{}", render(.issues))]
    Data {
        /// The event version (`name.vN`).
        event: String,
        /// Every problem, sorted by pointer.
        issues: Vec<Issue>,
    },
}

/// A generated JSON Schema that `jsonschema` refused: a bug in the schema emitter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the JSON Schema of {event} does not compile: {reason}")]
pub struct SchemaCompileError {
    /// The event version (`name.vN`).
    pub event: String,
    /// The compiler's message.
    pub reason: String,
}

/// The name and alias indexes of [`Validator`].
type Indexes = (
    HashMap<String, Vec<(usize, usize)>>,
    HashMap<String, (usize, usize)>,
);

fn index(catalog: &Catalog) -> Indexes {
    let mut by_name: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    let mut by_alias = HashMap::new();
    for (c, ctx) in catalog.contexts.iter().enumerate() {
        for (e, event) in ctx.events.iter().enumerate() {
            by_name.entry(event.name.clone()).or_default().push((c, e));
            for alias in &event.aliases {
                by_alias.insert(alias.clone(), (c, e));
            }
        }
    }
    for versions in by_name.values_mut() {
        versions.sort_by_key(|&(c, e)| catalog.contexts[c].events[e].version);
    }
    (by_name, by_alias)
}

impl Validator {
    /// Compiles the schema of every event version of `catalog` (format validation on).
    pub fn new(catalog: &Catalog) -> Result<Self, SchemaCompileError> {
        let mut schemas: HashMap<String, BTreeMap<u32, _>> = HashMap::new();
        for event in catalog.events() {
            let compiled = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&event_schema(event))
                .map_err(|e| SchemaCompileError {
                    event: event.id(),
                    reason: e.to_string(),
                })?;
            let versions = schemas.entry(event.name.clone()).or_default();
            versions.insert(event.version, compiled);
        }
        let catalog = catalog.clone();
        let (by_name, by_alias) = index(&catalog);
        Ok(Self {
            catalog,
            schemas,
            by_name,
            by_alias,
        })
    }

    fn at(&self, (c, e): (usize, usize)) -> &EventSpec {
        &self.catalog.contexts[c].events[e]
    }

    /// Every version of `name`, ascending.
    fn versions_of(&self, name: &str) -> Vec<&EventSpec> {
        self.by_name
            .get(name)
            .map(|v| v.iter().map(|i| self.at(*i)).collect())
            .unwrap_or_default()
    }

    /// The catalog this validator checks against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Checks structure, resolves `type` and the version, then validates `data`.
    pub fn validate(&self, env: &Envelope) -> Result<Validated<'_>, ValidationError> {
        env.validate()
            .map_err(|e| ValidationError::Envelope(e.issues()))?;
        let (name, pinned, via) = self.lookup(&env.event_type)?;
        let event = self.choose_version(env, name, pinned)?;
        self.check_data(event, &env.data)?;
        Ok(Validated { event, via })
    }

    /// Canonical name, the version the name pins (alias, single-version topic) and the match.
    fn lookup(&self, name: &str) -> Result<(&str, Option<&EventSpec>, Via), ValidationError> {
        if let Some(latest) = self.by_name.get(name).and_then(|v| v.last()) {
            return Ok((&self.at(*latest).name, None, Via::Canonical));
        }
        if let Some(pinned) = self.by_alias.get(name) {
            let event = self.at(*pinned);
            return Ok((&event.name, Some(event), Via::Alias));
        }
        match resolve(&self.catalog, name) {
            Ok(r) if r.via == Via::Canonical => Ok((&r.event.name, None, r.via)),
            Ok(r) => Ok((&r.event.name, Some(r.event), r.via)),
            Err(ResolveError::Unknown {
                name,
                nearest,
                total,
            }) => Err(ValidationError::UnknownType {
                name,
                nearest,
                total,
            }),
            Err(ResolveError::Ambiguous { name, candidates }) => self
                .versions_on_topic(&name)
                .ok_or(ValidationError::AmbiguousType { name, candidates }),
        }
    }

    /// A topic shared by several versions of one event names that event, without a version.
    fn versions_on_topic(&self, topic: &str) -> Option<(&str, Option<&EventSpec>, Via)> {
        let mut on_topic = self.catalog.events().filter(|e| e.topic == topic);
        let first = on_topic.next()?;
        on_topic
            .all(|e| e.name == first.name)
            .then_some((first.name.as_str(), None, Via::Topic))
    }

    /// `schemaversion`, else the `dataschema` version, else the pinned one, else the only one.
    fn choose_version<'a>(
        &'a self,
        env: &Envelope,
        name: &str,
        pinned: Option<&'a EventSpec>,
    ) -> Result<&'a EventSpec, ValidationError> {
        let from_schema = self.dataschema_version(env, name)?;
        let requested = match (env.schemaversion, from_schema) {
            (Some(v), _) => Some((v, "/schemaversion")),
            (None, Some(v)) => Some((v, "/dataschema")),
            (None, None) => None,
        };
        let versions = self.versions_of(name);
        match (requested, pinned, versions.as_slice()) {
            (Some((v, pointer)), _, _) => versions
                .iter()
                .find(|e| e.version == v)
                .copied()
                .ok_or_else(|| ValidationError::UnknownVersion {
                    pointer: pointer.into(),
                    name: name.into(),
                    version: v,
                    known: versions.iter().map(|e| e.version).collect(),
                }),
            (None, Some(event), _) => Ok(event),
            (None, None, [only]) => Ok(only),
            (None, None, _) => Err(ValidationError::AmbiguousVersion {
                name: name.into(),
                versions: versions.iter().map(|e| e.version).collect(),
            }),
        }
    }

    /// The version in `dataschema` when it is one of ours; it must agree with the rest.
    fn dataschema_version(
        &self,
        env: &Envelope,
        name: &str,
    ) -> Result<Option<u32>, ValidationError> {
        let Some((schema_name, version)) = env.dataschema.as_deref().and_then(parse_schema_uri)
        else {
            return Ok(None);
        };
        let same_event = schema_name == name
            || self
                .catalog
                .resolve(schema_name)
                .is_ok_and(|e| e.name == name);
        let reason = if !same_event {
            format!("names the schema of `{schema_name}`, but `type` is `{name}`")
        } else if env.schemaversion.is_some_and(|v| v != version) {
            format!(
                "names version {version}, but `schemaversion` is {}",
                env.schemaversion.unwrap_or_default()
            )
        } else {
            return Ok(Some(version));
        };
        Err(ValidationError::Inconsistent(Issue::new(
            "/dataschema",
            reason,
        )))
    }

    /// Validates `data` against the compiled schema of `event`, collecting every problem.
    fn check_data(&self, event: &EventSpec, data: &Value) -> Result<(), ValidationError> {
        let schema = self
            .schemas
            .get(&event.name)
            .and_then(|v| v.get(&event.version));
        let issues = match (data, schema) {
            (Value::Object(_), Some(schema)) => schema_issues(event, schema, data),
            // Unreachable: every entry of our catalog was compiled in `new`. Fail closed anyway.
            (Value::Object(_), None) => vec![Issue::new("/data", "no compiled schema (internal)")],
            (Value::Null, _) => vec![Issue::new(
                "/data",
                "expected the payload as a JSON object, found nothing",
            )],
            (other, _) => {
                let reason = format!(
                    "expected the payload as a JSON object, found {}",
                    edubus_core::envelope::json_type_name(other)
                );
                vec![Issue::new("/data", reason)]
            }
        };
        if issues.is_empty() {
            return Ok(());
        }
        Err(ValidationError::Data {
            event: event.id(),
            issues,
        })
    }
}

impl ValidationError {
    /// Every problem as `{ pointer, reason }`, for HTTP bodies and dead-letter records.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Envelope(issues) | Self::Data { issues, .. } => issues.clone(),
            Self::Inconsistent(issue) => vec![issue.clone()],
            Self::UnknownType { .. } | Self::AmbiguousType { .. } => {
                vec![Issue::new("/type", self.to_string())]
            }
            Self::AmbiguousVersion { .. } => vec![Issue::new("/schemaversion", self.to_string())],
            Self::UnknownVersion {
                pointer,
                name,
                version,
                known,
            } => {
                let reason = format!(
                    "`{name}` has no version {version}; known versions: {}",
                    list(known)
                );
                vec![Issue::new(pointer.clone(), reason)]
            }
        }
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        let message = match &e {
            ValidationError::Envelope(_) => "invalid CloudEvents envelope".to_string(),
            ValidationError::Data { event, .. } => format!("`data` does not match {event}"),
            _ => "the event does not match the catalog".to_string(),
        };
        Error::invalid_with(message, e.issues())
    }
}

impl From<SchemaCompileError> for Error {
    fn from(e: SchemaCompileError) -> Self {
        let message = e.to_string();
        Error::internal(message, e)
    }
}

/// Schema problems of `data` as envelope issues: sorted, one type error hiding the rest.
fn schema_issues(event: &EventSpec, schema: &jsonschema::Validator, data: &Value) -> Vec<Issue> {
    // The boolean check skips building errors, by far the common case.
    if schema.is_valid(data) {
        return Vec::new();
    }
    // (pointer, secondary, reason): a type error is primary, anything else secondary.
    let mut found: Vec<(String, bool, String)> = Vec::new();
    for err in schema.iter_errors(data) {
        let at = format!("/data{}", err.instance_path().as_str());
        let is_type = matches!(err.kind(), ValidationErrorKind::Type { .. });
        for (pointer, reason) in describe(event, &at, &err) {
            found.push((pointer, !is_type, reason));
        }
    }
    // A value of the wrong type also fails its enum or pattern; the type error says it all.
    found.sort();
    found.dedup();
    let typed: Vec<String> = found.iter().filter(|f| !f.1).map(|f| f.0.clone()).collect();
    found
        .into_iter()
        .filter(|(pointer, secondary, _)| !*secondary || !typed.contains(pointer))
        .map(|(pointer, _, reason)| Issue::new(pointer, reason))
        .collect()
}

/// The issues one schema error stands for, with reasons naming the catalog type.
fn describe(
    event: &EventSpec,
    at: &str,
    err: &jsonschema::ValidationError<'_>,
) -> Vec<(String, String)> {
    let expected = || expected_at(event, at).unwrap_or_else(|| "a valid value".into());
    let one = |reason: String| vec![(at.to_string(), reason)];
    match err.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            vec![(
                format!("{at}/{}", escape_pointer_token(name)),
                "required field is missing".into(),
            )]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                let reason = "unknown field; the schema allows no additional fields";
                (
                    format!("{at}/{}", escape_pointer_token(name)),
                    reason.to_string(),
                )
            })
            .collect(),
        ValidationErrorKind::Type { .. } => one(format!(
            "expected {}, found {}",
            expected(),
            edubus_core::envelope::json_type_name(err.instance())
        )),
        ValidationErrorKind::Format { format } => {
            one(format!("invalid {format} format: expected {}", expected()))
        }
        ValidationErrorKind::Enum { options } => {
            one(format!("expected one of {}", values(options)))
        }
        ValidationErrorKind::Pattern { .. } => one(format!("expected {}", expected())),
        _ => one(err.to_string()),
    }
}

/// What the catalog expects at envelope pointer `at` (`/data/<field>[/<index>...]`).
fn expected_at(event: &EventSpec, at: &str) -> Option<String> {
    let mut segments = at.strip_prefix("/data/")?.split('/');
    let name = segments.next()?.replace("~1", "/").replace("~0", "~");
    let field = event.field(&name)?;
    let mut ty = &field.ty;
    let mut nullable = field.optional;
    for _ in segments {
        let FieldType::List(inner) = ty else {
            return None;
        };
        ty = inner;
        nullable = false;
    }
    let or_null = if nullable { " or null" } else { "" };
    Some(format!("{}{or_null}", type_phrase(ty)))
}

/// A catalog type in words, naming its JSON shape.
fn type_phrase(ty: &FieldType) -> String {
    match ty {
        FieldType::Scalar(Scalar::Uuid) => "a UUID string (format uuid)".into(),
        FieldType::Scalar(Scalar::String) => "a string".into(),
        FieldType::Scalar(Scalar::Int) => "an integer".into(),
        FieldType::Scalar(Scalar::Decimal) => "a decimal as a string, such as \"87.50\"".into(),
        FieldType::Scalar(Scalar::Bool) => "a boolean".into(),
        FieldType::Scalar(Scalar::Datetime) => {
            "an RFC 3339 date-time string (format date-time)".into()
        }
        FieldType::Scalar(Scalar::Date) => "a YYYY-MM-DD date string (format date)".into(),
        FieldType::Scalar(Scalar::Object) => "a JSON object".into(),
        FieldType::Enum(options) => {
            format!("one of {}", quoted(options.iter().map(String::as_str)))
        }
        FieldType::List(inner) => format!("an array of {}", type_phrase(inner)),
    }
}

fn quoted<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn values(options: &Value) -> String {
    match options {
        Value::Array(items) => items
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn render(issues: &[Issue]) -> String {
    issues.iter().map(|i| format!("\n  - {i}")).collect()
}

fn list(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
