//! Catalog lint: the naming rules of DESIGN section 2 and the structural rules of
//! `docs/catalog.md`. Every problem is reported, not only the first.

use std::collections::BTreeMap;

use heck::ToUpperCamelCase;

use crate::diagnostic::Diagnostic;
use crate::ir::{Catalog, EventKind, EventSpec, FieldType, Scalar};
use crate::topic;

/// Past participles that do not end in `-ed`, and completed states accepted as past tense.
const IRREGULAR_PAST: &[&str] = &[
    "begun",
    "bought",
    "brought",
    "built",
    "caught",
    "chosen",
    "done",
    "drawn",
    "found",
    "given",
    "held",
    "kept",
    "known",
    "left",
    "lost",
    "made",
    "met",
    "paid",
    "put",
    "read",
    "ready",
    "rebuilt",
    "reset",
    "run",
    "sent",
    "set",
    "shown",
    "sold",
    "spent",
    "split",
    "taken",
    "taught",
    "told",
    "undone",
    "withdrawn",
    "won",
    "written",
];

/// Every problem of `catalog`, sorted by location.
pub fn lint(catalog: &Catalog) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for ctx in &catalog.contexts {
        if !is_segment(&ctx.name) {
            let msg = format!(
                "context name `{}` (the file stem) is not lower-case snake_case",
                ctx.name
            );
            out.push(Diagnostic::new(ctx.location.clone(), msg));
        }
        for e in &ctx.events {
            lint_event(e, &mut out);
        }
    }
    lint_versions(catalog, &mut out);
    lint_names(catalog, &mut out);
    out.sort();
    out
}

fn lint_event(e: &EventSpec, out: &mut Vec<Diagnostic>) {
    let at = |msg: String| Diagnostic::new(e.location.clone(), msg);
    if let Err(why) = check_name(&e.name) {
        out.push(at(format!("event name `{}` breaks the naming rules", e.name)).with_help(why));
    }
    for (what, value) in [("summary", &e.summary), ("producer", &e.producer)] {
        if value.trim().is_empty() {
            out.push(at(format!("`{}` has an empty {what}", e.name)));
        }
    }
    if !topic::is_valid(&e.topic) {
        let help = "use ASCII letters, digits, `.`, `_`, `-` or `:`";
        out.push(at(format!("`{}` has an invalid topic `{}`", e.name, e.topic)).with_help(help));
    }
    lint_key(e, out);
    lint_fields(e, out);
}

fn lint_key(e: &EventSpec, out: &mut Vec<Diagnostic>) {
    let at = |msg: String| Diagnostic::new(e.location.clone(), msg);
    match e.field(&e.key) {
        None => {
            let fields: Vec<_> = e.fields.iter().map(|f| f.name.as_str()).collect();
            let help = format!("the key must name a payload field: {}", fields.join(", "));
            out.push(
                at(format!(
                    "key `{}` of `{}` is not a payload field",
                    e.key, e.name
                ))
                .with_help(help),
            );
        }
        Some(f) if f.optional => {
            let help = "every event needs a partition key";
            out.push(at(format!("key `{}` of `{}` is optional", e.key, e.name)).with_help(help));
        }
        Some(f)
            if !matches!(
                f.ty,
                FieldType::Scalar(Scalar::Uuid | Scalar::String | Scalar::Int)
            ) =>
        {
            let msg = format!("key `{}` of `{}` has type {}", e.key, e.name, f.ty);
            out.push(at(msg).with_help("a key is a uuid, string or int"));
        }
        Some(_) => {}
    }
}

fn lint_fields(e: &EventSpec, out: &mut Vec<Diagnostic>) {
    if e.fields.is_empty() {
        out.push(Diagnostic::new(
            e.location.clone(),
            format!("`{}` has an empty payload", e.name),
        ));
    }
    for f in &e.fields {
        let at = |msg: String| Diagnostic::new(f.location.clone(), msg);
        if !is_segment(&f.name) {
            let msg = format!(
                "field name `{}` of `{}` is not lower-case snake_case",
                f.name, e.name
            );
            out.push(at(msg));
        }
        if let Some(values) = enum_values(&f.ty) {
            let mut sorted = values.to_vec();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != values.len() || values.iter().any(|v| v.is_empty()) {
                let msg = format!(
                    "enum of field `{}` of `{}` has empty or repeated values",
                    f.name, e.name
                );
                out.push(at(msg));
            }
        }
    }
}

fn enum_values(ty: &FieldType) -> Option<&[String]> {
    match ty {
        FieldType::Enum(v) => Some(v),
        FieldType::List(inner) => enum_values(inner),
        FieldType::Scalar(_) => None,
    }
}

fn lint_versions(catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let mut by_name: BTreeMap<&str, Vec<&EventSpec>> = BTreeMap::new();
    for e in catalog.events() {
        by_name.entry(&e.name).or_default().push(e);
    }
    for (name, mut versions) in by_name {
        versions.sort_by_key(|e| (e.version, e.location.clone()));
        for (i, e) in versions.iter().enumerate() {
            let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if e.version != expected {
                let have: Vec<_> = versions.iter().map(|e| e.version.to_string()).collect();
                let msg = format!(
                    "versions of `{name}` are not contiguous: {}",
                    have.join(", ")
                );
                let help = format!(
                    "expected version {expected} here; versions start at 1 with no gaps or repeats"
                );
                out.push(Diagnostic::new(e.location.clone(), msg).with_help(help));
                break;
            }
            if e.context != versions[0].context {
                let msg = format!(
                    "`{name}` is declared in contexts `{}` and `{}`",
                    versions[0].context, e.context
                );
                out.push(
                    Diagnostic::new(e.location.clone(), msg)
                        .with_help("an event lives in one context"),
                );
            }
        }
    }
}

/// Aliases unique and distinct from canonical names and other events' topics; Rust names unique.
fn lint_names(catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let canonical: BTreeMap<&str, &EventSpec> =
        catalog.events().map(|e| (e.name.as_str(), e)).collect();
    let mut topics: BTreeMap<&str, &str> = BTreeMap::new();
    for e in catalog.events() {
        topics.entry(&e.topic).or_insert(&e.name);
    }
    let mut seen: BTreeMap<&str, &EventSpec> = BTreeMap::new();
    for e in catalog.events() {
        for alias in &e.aliases {
            let at = |msg: String| Diagnostic::new(e.location.clone(), msg);
            if alias.trim().is_empty() || alias.chars().any(char::is_whitespace) {
                out.push(at(format!(
                    "alias `{alias}` of `{}` is empty or has spaces",
                    e.name
                )));
            } else if let Some(other) = seen.insert(alias, e) {
                let msg = format!(
                    "alias `{alias}` is used by `{}` v{} and `{}` v{}",
                    other.name, other.version, e.name, e.version
                );
                out.push(at(msg).with_help("aliases are unique across the whole catalog"));
            } else if canonical.contains_key(alias.as_str()) {
                out.push(at(format!(
                    "alias `{alias}` of `{}` is the canonical name of another event",
                    e.name
                )));
            } else if topics.get(alias.as_str()).is_some_and(|n| *n != e.name) {
                out.push(at(format!(
                    "alias `{alias}` of `{}` is the topic of another event",
                    e.name
                )));
            }
        }
    }
    lint_rust_names(catalog, out);
}

fn lint_rust_names(catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<String, &EventSpec> = BTreeMap::new();
    for e in catalog.events() {
        let ident = format!("{}V{}", e.name.to_upper_camel_case(), e.version);
        if let Some(other) = seen.insert(ident.clone(), e)
            && other.name != e.name
        {
            let msg = format!(
                "`{}` and `{}` both become the Rust type `{ident}`",
                other.name, e.name
            );
            out.push(Diagnostic::new(e.location.clone(), msg).with_help("rename one of them"));
        }
    }
}

fn is_segment(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a canonical name against the naming rules; `Err` says why it breaks them.
pub fn check_name(name: &str) -> Result<EventKind, String> {
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() < 2 || !segments.iter().all(|s| is_segment(s)) {
        return Err("names are lower-case dotted, at least two segments of [a-z][a-z0-9_]*".into());
    }
    if segments.last() == Some(&"command") {
        let verb = segments[segments.len() - 2];
        return if segments.len() < 3 || is_past(verb) {
            Err(format!(
                "a command is `<context>.<...>.<imperative verb>.command`; `{verb}` is not imperative"
            ))
        } else {
            Ok(EventKind::Command)
        };
    }
    let last = segments[segments.len() - 1];
    let word = last.rsplit('_').next().unwrap_or(last);
    if is_past(word) {
        Ok(EventKind::Event)
    } else {
        Err(format!(
            "events are facts in the past tense; `{word}` is not a past participle (commands end in `.command`)"
        ))
    }
}

fn is_past(word: &str) -> bool {
    (word.len() > 3 && word.ends_with("ed")) || IRREGULAR_PAST.contains(&word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rules() {
        for ok in [
            "attendance.marked",
            "attendance.threshold_breached",
            "email.sent",
            "batch.essays.ready",
            "core.audit.logged",
        ] {
            assert_eq!(check_name(ok), Ok(EventKind::Event), "{ok}");
        }
        assert_eq!(
            check_name("batch.spellcheck.initiate.command"),
            Ok(EventKind::Command)
        );
        for bad in [
            "Attendance.marked",
            "attendance",
            "spellcheck.results",
            "llm_provider.cost_alert",
            "a..b",
            "batch.initiated.command",
            "x.command",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
