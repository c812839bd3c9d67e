//! Parsing `catalog/*.toml` into the IR, with `file:line:column` diagnostics.
//!
//! [`load_dir`] and [`load_sources`] parse every file, build the IR and run the lint; they
//! return every problem found, not only the first. [`parse_str`] parses one context file.

use std::ops::Range;
use std::path::Path;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::ir::{
    Catalog, Compatibility, Consumer, Context, EventKind, EventSpec, Field, FieldType, Location,
    Scalar,
};
use crate::{lint, topic};

const GUIDE: &str = "see docs/catalog.md";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    context: Spanned<RawContext>,
    #[serde(default)]
    event: Vec<Spanned<RawEvent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    title: String,
    description: String,
    topic: Option<Spanned<String>>,
    compatibility: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    name: Spanned<String>,
    version: Spanned<i64>,
    summary: String,
    description: Option<String>,
    producer: String,
    consumers: Vec<Spanned<toml::Value>>,
    key: Spanned<String>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    topic: Option<Spanned<String>>,
    aggregate: Option<String>,
    compatibility: Option<Spanned<String>>,
    payload: Spanned<IndexMap<String, Spanned<toml::Value>>>,
}

/// Loads, builds and lints every `*.toml` file of `dir`.
pub fn load_dir(dir: &Path) -> Result<Catalog, Diagnostics> {
    load_sources(&read_dir(dir)?)
}

/// Reads every `*.toml` file of `dir` as `(display name, text)`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, Diagnostics> {
    let io_error = |e: std::io::Error| {
        let loc = Location {
            file: dir.display().to_string(),
            line: 1,
            column: 1,
        };
        Diagnostics(vec![Diagnostic::new(
            loc,
            format!("cannot read the catalog: {e}"),
        )])
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).map_err(io_error)?;
            files.push((path.display().to_string(), text));
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(io_error(std::io::Error::other("it holds no *.toml file")));
    }
    Ok(files)
}

/// Parses and lints a catalog given as `(file name, TOML text)` pairs.
pub fn load_sources(files: &[(String, String)]) -> Result<Catalog, Diagnostics> {
    let mut diags = Vec::new();
    let mut contexts = Vec::new();
    for (file, src) in files {
        match parse_str(file, src) {
            Ok(ctx) => contexts.push(ctx),
            Err(mut d) => diags.append(&mut d),
        }
    }
    contexts.sort_by(|a, b| a.name.cmp(&b.name));
    let catalog = Catalog { contexts };
    diags.extend(lint::lint(&catalog));
    if diags.is_empty() {
        Ok(catalog)
    } else {
        diags.sort();
        diags.dedup();
        Err(Diagnostics(diags))
    }
}

/// Parses one context file; the context name is the file stem.
pub fn parse_str(file: &str, src: &str) -> Result<Context, Vec<Diagnostic>> {
    let lines = LineIndex::new(file, src);
    let raw: RawFile = toml::from_str(src).map_err(|e| {
        let at = lines.at(e.span().unwrap_or(0..0));
        vec![Diagnostic::new(at, e.message().trim().to_string()).with_help(GUIDE)]
    })?;
    let mut b = Builder {
        lines: &lines,
        diags: Vec::new(),
    };
    let ctx = b.context(file, raw);
    if b.diags.is_empty() {
        Ok(ctx)
    } else {
        Err(b.diags)
    }
}

/// Byte offsets to 1-based line and column.
struct LineIndex<'a> {
    file: &'a str,
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(file: &'a str, src: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { file, src, starts }
    }

    fn at(&self, span: Range<usize>) -> Location {
        let offset = span.start.min(self.src.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = self
            .src
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        Location {
            file: self.file.to_string(),
            line,
            column,
        }
    }
}

struct Builder<'a> {
    lines: &'a LineIndex<'a>,
    diags: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn error(&mut self, span: Range<usize>, message: String, help: &str) {
        let d = Diagnostic::new(self.lines.at(span), message);
        self.diags.push(if help.is_empty() {
            d
        } else {
            d.with_help(help)
        });
    }

    fn context(&mut self, file: &str, raw: RawFile) -> Context {
        let span = raw.context.span();
        let rc = raw.context.into_inner();
        let name = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let template = rc
            .topic
            .as_ref()
            .map_or(topic::DEFAULT_TEMPLATE.to_string(), |t| t.get_ref().clone());
        let default_mode = self.compatibility(rc.compatibility.as_ref(), Compatibility::default());
        let events = raw
            .event
            .into_iter()
            .map(|e| self.event(e, &name, &template, default_mode))
            .collect();
        Context {
            name,
            title: rc.title,
            description: rc.description,
            topic_template: template,
            location: self.lines.at(span),
            events,
        }
    }

    fn compatibility(
        &mut self,
        raw: Option<&Spanned<String>>,
        default: Compatibility,
    ) -> Compatibility {
        let Some(raw) = raw else { return default };
        Compatibility::parse(raw.get_ref()).unwrap_or_else(|| {
            let all: Vec<_> = Compatibility::ALL.iter().map(|m| m.as_str()).collect();
            let msg = format!("unknown compatibility mode `{}`", raw.get_ref());
            self.error(
                raw.span(),
                msg,
                &format!("expected one of {}", all.join(", ")),
            );
            default
        })
    }

    fn event(
        &mut self,
        raw: Spanned<RawEvent>,
        context: &str,
        template: &str,
        default_mode: Compatibility,
    ) -> EventSpec {
        let location = self.lines.at(raw.span());
        let e = raw.into_inner();
        let name = e.name.get_ref().clone();
        let version = self.version(&e.version, &name);
        let topic = self.topic(&e, template, &name, version, context);
        let compatibility = self.compatibility(e.compatibility.as_ref(), default_mode);
        let consumers = e
            .consumers
            .iter()
            .filter_map(|c| self.consumer(c))
            .collect();
        let fields = e
            .payload
            .get_ref()
            .iter()
            .filter_map(|(fname, spec)| self.field(&name, fname, spec))
            .collect();
        EventSpec {
            kind: if name.ends_with(".command") {
                EventKind::Command
            } else {
                EventKind::Event
            },
            name,
            version,
            context: context.to_string(),
            summary: e.summary,
            description: e.description,
            producer: e.producer,
            consumers,
            key: e.key.into_inner(),
            topic,
            aliases: e.aliases.into_iter().map(Spanned::into_inner).collect(),
            aggregate: e.aggregate,
            compatibility,
            fields,
            location,
        }
    }

    fn version(&mut self, raw: &Spanned<i64>, name: &str) -> u32 {
        match u32::try_from(*raw.get_ref()) {
            Ok(v) if v >= 1 => v,
            _ => {
                let msg = format!("`{name}` has version {}", raw.get_ref());
                self.error(raw.span(), msg, "versions are integers starting at 1");
                1
            }
        }
    }

    fn topic(
        &mut self,
        e: &RawEvent,
        template: &str,
        name: &str,
        version: u32,
        ctx: &str,
    ) -> String {
        if let Some(t) = &e.topic {
            return t.get_ref().clone();
        }
        topic::apply(template, name, version, ctx).unwrap_or_else(|msg| {
            self.error(e.name.span(), msg, GUIDE);
            name.to_string()
        })
    }

    fn consumer(&mut self, raw: &Spanned<toml::Value>) -> Option<Consumer> {
        let text = |v: Option<&toml::Value>| v.and_then(toml::Value::as_str).map(str::to_string);
        match raw.get_ref() {
            toml::Value::String(s) => Some(Consumer {
                name: s.clone(),
                action: None,
            }),
            toml::Value::Table(t) if t.keys().all(|k| k == "name" || k == "action") => {
                match (text(t.get("name")), t.get("action")) {
                    (Some(name), None) => Some(Consumer { name, action: None }),
                    (Some(name), Some(a)) if a.is_str() => Some(Consumer {
                        name,
                        action: text(Some(a)),
                    }),
                    _ => self.bad_consumer(raw.span()),
                }
            }
            _ => self.bad_consumer(raw.span()),
        }
    }

    fn bad_consumer(&mut self, span: Range<usize>) -> Option<Consumer> {
        let help = "write a string or `{ name = \"...\", action = \"...\" }`";
        self.error(span, "invalid consumer".into(), help);
        None
    }

    fn field(&mut self, event: &str, name: &str, raw: &Spanned<toml::Value>) -> Option<Field> {
        let location = self.lines.at(raw.span());
        let spec = match raw.get_ref() {
            toml::Value::String(s) => parse_type(s).map(|(ty, optional)| FieldSpec {
                ty,
                optional,
                ..FieldSpec::default()
            }),
            toml::Value::Table(t) => field_table(t),
            other => Err(format!(
                "expected a type string or a table, found a {}",
                other.type_str()
            )),
        };
        match spec {
            Ok(s) => Some(Field {
                name: name.to_string(),
                ty: s.ty,
                optional: s.optional,
                pii: s.pii,
                description: s.description,
                location,
            }),
            Err(why) => {
                let msg = format!("field `{name}` of `{event}` has an invalid type");
                self.diags
                    .push(Diagnostic::new(location, msg).with_help(why));
                None
            }
        }
    }
}

struct FieldSpec {
    ty: FieldType,
    optional: bool,
    pii: bool,
    description: Option<String>,
}

impl Default for FieldSpec {
    fn default() -> Self {
        Self {
            ty: FieldType::Scalar(Scalar::String),
            optional: false,
            pii: false,
            description: None,
        }
    }
}

const FIELD_KEYS: [&str; 6] = ["type", "enum", "list", "optional", "pii", "description"];

fn field_table(t: &toml::Table) -> Result<FieldSpec, String> {
    if let Some(k) = t.keys().find(|k| !FIELD_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{k}`; a field table takes {}",
            FIELD_KEYS.join(", ")
        ));
    }
    let flag = |k: &str| match t.get(k) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(format!("`{k}` must be true or false")),
    };
    let (mut ty, mut optional) = match (t.get("type"), t.get("enum")) {
        (Some(toml::Value::String(s)), None) => parse_type(s)?,
        (None, Some(toml::Value::Array(values))) => (enum_type(values)?, false),
        (Some(_), Some(_)) => return Err("give either `type` or `enum`, not both".into()),
        (None, None) => return Err("a field table needs `type` or `enum`".into()),
        _ => return Err("`type` must be a string and `enum` an array of strings".into()),
    };
    if flag("list")? {
        ty = FieldType::List(Box::new(ty));
    }
    optional |= flag("optional")?;
    let description = match t.get("description") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`description` must be a string".into()),
    };
    Ok(FieldSpec {
        ty,
        optional,
        pii: flag("pii")?,
        description,
    })
}

fn enum_type(values: &[toml::Value]) -> Result<FieldType, String> {
    let strings: Option<Vec<String>> = values
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect();
    match strings {
        Some(v) if !v.is_empty() => Ok(FieldType::Enum(v)),
        Some(_) => Err("an enum needs at least one value".into()),
        None => Err("enum values must be strings".into()),
    }
}

/// Parses a type expression: a scalar name, `list[T]`, optionally followed by `?`.
pub fn parse_type(s: &str) -> Result<(FieldType, bool), String> {
    let s = s.trim();
    let (body, optional) = match s.strip_suffix('?') {
        Some(b) => (b.trim_end(), true),
        None => (s, false),
    };
    Ok((parse_base(body)?, optional))
}

fn parse_base(s: &str) -> Result<FieldType, String> {
    if let Some(inner) = s.strip_prefix("list[").and_then(|r| r.strip_suffix(']')) {
        return Ok(FieldType::List(Box::new(parse_base(inner.trim())?)));
    }
    Scalar::parse(s).map(FieldType::Scalar).ok_or_else(|| {
        let all: Vec<_> = Scalar::ALL.iter().map(|t| t.as_str()).collect();
        format!(
            "unknown type `{s}`; expected one of {}, list[T], or an enum table",
            all.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[context]
title = "Attendance"
description = "d"

[[event]]
name = "attendance.marked"
version = 1
summary = "s"
producer = "p"
consumers = ["a", { name = "b", action = "c" }]
key = "student_id"
aliases = ["AttendanceMarked"]

[event.payload]
student_id = { type = "uuid", pii = true }
status = { enum = ["present", "absent"] }
notes = "string?"
ids = "list[uuid]"
"#;

    #[test]
    fn parses_a_context() {
        let ctx = parse_str("catalog/attendance.toml", OK).unwrap();
        assert_eq!(ctx.name, "attendance");
        let e = &ctx.events[0];
        assert_eq!(e.topic, "attendance.marked");
        assert_eq!(e.fields.len(), 4);
        assert!(e.fields[0].pii);
        assert!(e.fields[2].optional);
        assert_eq!(e.fields[3].ty.to_string(), "list[uuid]");
        assert_eq!(e.consumers[1].action.as_deref(), Some("c"));
        assert_eq!(e.location.line, 6);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse_str("x.toml", "[context]\ntitle = \n").unwrap_err();
        assert_eq!(
            (err[0].location.line, err[0].location.column),
            (2, 9),
            "{}",
            err[0]
        );
    }

    #[test]
    fn reports_every_bad_type_in_a_file() {
        let src = OK
            .replace("\"string?\"", "\"strng\"")
            .replace("list[uuid]", "list[uid]");
        let err = parse_str("catalog/attendance.toml", &src).unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(
            err[0]
                .to_string()
                .contains("catalog/attendance.toml:18:9: field `notes`"),
            "{}",
            err[0]
        );
        assert!(
            err[0]
                .help
                .as_deref()
                .unwrap()
                .contains("unknown type `strng`")
        );
    }

    #[test]
    fn reports_missing_keys() {
        let src = OK.replace("summary = \"s\"\n", "");
        let err = parse_str("a.toml", &src).unwrap_err();
        assert!(
            err[0].message.contains("missing field `summary`"),
            "{}",
            err[0]
        );
    }
}
