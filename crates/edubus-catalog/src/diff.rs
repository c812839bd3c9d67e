//! Classifies every change between two catalogs as compatible or breaking (`catalog diff`).
//!
//! Each event is checked under its own [`Compatibility`] mode with the reader rules of the
//! authoring guide: a reader ignores fields it does not know, a field it requires must be
//! required in the data, enum values in the data must be known to it, types must match.
//!
//! - A version changed in place is checked against its own previous shape and against the
//!   versions the mode names (the previous and next one, or every other one when transitive);
//!   a breaking result is a *breaking change without a new version* and fails the diff.
//! - A new version is checked against the previous version (every earlier one when
//!   transitive); it may be breaking, which is what versions are for.
//! - A removed event, version or alias, a changed key or a changed topic is breaking whatever the
//!   mode: those are routing and naming contracts, not schema evolution, so `NONE` does not relax
//!   them. Other metadata changes and new events are compatible and reported.

mod check;
mod render;

use serde::{Serialize, Serializer};

use crate::ir::{Catalog, Compatibility, EventSpec, Field};
use check::Aspect;

/// Every change between two catalogs, sorted by event name, version, field and kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The changes in report order.
    pub changes: Vec<Change>,
}

/// One change to one event version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Canonical event name.
    pub event: String,
    /// The version changed (for a removed or added event, its highest version).
    pub version: u32,
    /// What changed.
    pub kind: ChangeKind,
    /// The payload field, alias or metadata attribute concerned, when there is one.
    pub field: Option<String>,
    /// The event's compatibility mode (the new one; the old one for removals).
    #[serde(serialize_with = "serialize_mode")]
    pub mode: Compatibility,
    /// Whether the change comes with a new version (then breaking is allowed).
    pub new_version: bool,
    /// Compatible or breaking.
    pub verdict: Verdict,
    /// The reader checks that failed; empty for routing and naming breaks.
    pub failures: Vec<Failure>,
    /// One line for people.
    pub message: String,
}

/// The kind of a [`Change`]; the declaration order is the order within one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// An event name appeared.
    EventAdded,
    /// An event name disappeared with all its versions.
    EventRemoved,
    /// A version of an existing event appeared.
    VersionAdded,
    /// A version of an existing event disappeared.
    VersionRemoved,
    /// The partition key field changed.
    Key,
    /// The topic (stream) changed.
    Topic,
    /// Summary, producer, consumers, description, aggregate, context or mode changed.
    Metadata,
    /// An alias was added.
    AliasAdded,
    /// An alias was removed.
    AliasRemoved,
    /// A payload field was added.
    FieldAdded,
    /// A payload field was removed.
    FieldRemoved,
    /// A payload field changed type.
    TypeChanged,
    /// A payload field became optional or required.
    OptionalityChanged,
    /// An enum field (or list of enum) gained values.
    EnumValuesAdded,
    /// An enum field (or list of enum) lost values.
    EnumValuesRemoved,
    /// A field's PII mark or description changed.
    FieldMetadata,
}

impl ChangeKind {
    /// The snake_case name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventAdded => "event_added",
            Self::EventRemoved => "event_removed",
            Self::VersionAdded => "version_added",
            Self::VersionRemoved => "version_removed",
            Self::Key => "key",
            Self::Topic => "topic",
            Self::Metadata => "metadata",
            Self::AliasAdded => "alias_added",
            Self::AliasRemoved => "alias_removed",
            Self::FieldAdded => "field_added",
            Self::FieldRemoved => "field_removed",
            Self::TypeChanged => "type_changed",
            Self::OptionalityChanged => "optionality_changed",
            Self::EnumValuesAdded => "enum_values_added",
            Self::EnumValuesRemoved => "enum_values_removed",
            Self::FieldMetadata => "field_metadata",
        }
    }
}

/// Whether a change keeps readers working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check the mode requires passes.
    Compatible,
    /// A required check fails, or a routing or naming contract changed.
    Breaking,
}

/// Which readers a check protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Readers of the newer schema reading data of the older one.
    Backward,
    /// Readers of the older schema reading data of the newer one.
    Forward,
}

/// One failed reader check: direction and the version compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Failure {
    /// The direction that fails.
    pub direction: Direction,
    /// The version compared against; on an in-place change, the change's own version means
    /// that version's previous shape.
    pub against: u32,
}

fn serialize_mode<S: Serializer>(mode: &Compatibility, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

impl Change {
    /// A compatible change of `spec` with no field.
    fn new(spec: &EventSpec, kind: ChangeKind, message: String) -> Self {
        Self {
            event: spec.name.clone(),
            version: spec.version,
            kind,
            field: None,
            mode: spec.compatibility,
            new_version: false,
            verdict: Verdict::Compatible,
            failures: Vec::new(),
            message,
        }
    }

    fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    fn breaking(mut self) -> Self {
        self.verdict = Verdict::Breaking;
        self
    }

    fn with_failures(mut self, failures: Vec<Failure>) -> Self {
        if !failures.is_empty() {
            self.verdict = Verdict::Breaking;
        }
        self.failures = failures;
        self
    }

    /// Whether this is a breaking change that does not come with a new version.
    pub fn is_failure(&self) -> bool {
        self.verdict == Verdict::Breaking && !self.new_version
    }

    fn sort_key(&self) -> (&str, u32, Option<&str>, ChangeKind) {
        (&self.event, self.version, self.field.as_deref(), self.kind)
    }
}

impl Report {
    /// Whether any change is breaking without coming with a new version (`diff` exits 1).
    pub fn is_failure(&self) -> bool {
        self.changes.iter().any(Change::is_failure)
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            failure: bool,
            breaking: usize,
            changes: &'a [Change],
        }
        let breaking = self
            .changes
            .iter()
            .filter(|c| c.verdict == Verdict::Breaking);
        Json {
            failure: self.is_failure(),
            breaking: breaking.count(),
            changes: &self.changes,
        }
        .serialize(s)
    }
}

/// Every change from `old` to `new`, classified under each event's compatibility mode.
pub fn diff(old: &Catalog, new: &Catalog) -> Report {
    let mut names: Vec<&str> = old.names();
    names.extend(new.names());
    names.sort_unstable();
    names.dedup();
    let mut changes = Vec::new();
    for name in names {
        diff_event(&old.versions(name), &new.versions(name), &mut changes);
    }
    changes.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Report { changes }
}

fn diff_event(before: &[&EventSpec], after: &[&EventSpec], out: &mut Vec<Change>) {
    match (before.last(), after.last()) {
        (Some(last), None) => out.push(event_change(last, ChangeKind::EventRemoved, before)),
        (None, Some(last)) => out.push(event_change(last, ChangeKind::EventAdded, after)),
        _ => diff_versions(before, after, out),
    }
}

fn event_change(last: &EventSpec, kind: ChangeKind, versions: &[&EventSpec]) -> Change {
    let range = version_range(versions);
    match kind {
        ChangeKind::EventRemoved => {
            Change::new(last, kind, format!("event removed ({range})")).breaking()
        }
        _ => Change::new(last, kind, format!("new event ({range})")),
    }
}

fn version_range(versions: &[&EventSpec]) -> String {
    match (versions.first(), versions.last()) {
        (Some(first), Some(last)) if first.version != last.version => {
            format!("v{}..v{}", first.version, last.version)
        }
        (Some(only), _) => format!("v{}", only.version),
        _ => String::new(),
    }
}

fn diff_versions(before: &[&EventSpec], after: &[&EventSpec], out: &mut Vec<Change>) {
    for old in before {
        if !after.iter().any(|v| v.version == old.version) {
            let message = format!("version {} removed", old.version);
            out.push(Change::new(old, ChangeKind::VersionRemoved, message).breaking());
        }
    }
    for new in after {
        match before.iter().find(|v| v.version == new.version) {
            Some(old) => diff_in_place(old, new, after, out),
            None => diff_new_version(new, after, out),
        }
    }
}

/// Changes to an existing version: checked against its previous shape and its neighbours.
fn diff_in_place(old: &EventSpec, new: &EventSpec, versions: &[&EventSpec], out: &mut Vec<Change>) {
    diff_metadata(old, new, out);
    let mut targets = vec![old];
    targets.extend(check::targets(new, versions, true));
    for (kind, field, aspect, message) in field_changes(old, new) {
        let failures = check::failures(new, &targets, &field, &aspect);
        let change = Change::new(new, kind, message).with_field(&field);
        out.push(change.with_failures(failures));
    }
}

/// A new version of an existing event: reported field by field against the previous version.
fn diff_new_version(new: &EventSpec, versions: &[&EventSpec], out: &mut Vec<Change>) {
    let targets = check::targets(new, versions, false);
    let message = format!("version {} added", new.version);
    let mut added = Change::new(new, ChangeKind::VersionAdded, message);
    added.new_version = true;
    out.push(added.with_failures(check::schema_failures(new, &targets)));
    let Some(previous) = versions.iter().rev().find(|v| v.version < new.version) else {
        return;
    };
    for (kind, field, aspect, message) in field_changes(previous, new) {
        let failures = check::failures(new, &targets, &field, &aspect);
        let mut change = Change::new(new, kind, message).with_field(&field);
        change.new_version = true;
        out.push(change.with_failures(failures));
    }
}

/// A payload change before classification: kind, field, what to check, message.
type FieldChange = (ChangeKind, String, Aspect, String);

fn field_changes(before: &EventSpec, after: &EventSpec) -> Vec<FieldChange> {
    let mut names: Vec<&str> = before.fields.iter().map(|f| f.name.as_str()).collect();
    names.extend(after.fields.iter().map(|f| f.name.as_str()));
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        match (before.field(name), after.field(name)) {
            (Some(old), Some(new)) => changed_field(old, new, &mut out),
            (None, Some(new)) => out.push(presence_change(new, ChangeKind::FieldAdded, "added")),
            (Some(old), None) => {
                out.push(presence_change(old, ChangeKind::FieldRemoved, "removed"));
            }
            (None, None) => {}
        }
    }
    out
}

fn presence_change(field: &Field, kind: ChangeKind, verb: &str) -> FieldChange {
    let presence = if field.optional {
        "optional"
    } else {
        "required"
    };
    let message = format!("{presence} field `{}` ({}) {verb}", field.name, field.ty);
    (kind, field.name.clone(), Aspect::Whole, message)
}

fn changed_field(old: &Field, new: &Field, out: &mut Vec<FieldChange>) {
    let name = &new.name;
    if let Some((added, removed)) = check::enum_delta(&old.ty, &new.ty) {
        enum_changes(name, added, removed, out);
    } else if old.ty != new.ty {
        let message = format!("`{name}` changed type from {} to {}", old.ty, new.ty);
        out.push((ChangeKind::TypeChanged, name.clone(), Aspect::Type, message));
    }
    if old.optional != new.optional {
        let [from, to] = if new.optional {
            ["required", "optional"]
        } else {
            ["optional", "required"]
        };
        let message = format!("`{name}` changed from {from} to {to}");
        out.push((
            ChangeKind::OptionalityChanged,
            name.clone(),
            Aspect::Presence,
            message,
        ));
    }
    field_metadata(old, new, out);
}

fn enum_changes(name: &str, added: Vec<String>, removed: Vec<String>, out: &mut Vec<FieldChange>) {
    for (kind, verb, values) in [
        (ChangeKind::EnumValuesAdded, "gained", added),
        (ChangeKind::EnumValuesRemoved, "lost", removed),
    ] {
        if !values.is_empty() {
            let noun = if values.len() == 1 { "value" } else { "values" };
            let list = values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>();
            let message = format!("enum `{name}` {verb} {noun} {}", list.join(", "));
            out.push((kind, name.to_owned(), Aspect::Values(values), message));
        }
    }
}

fn field_metadata(old: &Field, new: &Field, out: &mut Vec<FieldChange>) {
    let name = &new.name;
    let mut push = |message: String| {
        out.push((
            ChangeKind::FieldMetadata,
            name.clone(),
            Aspect::Nothing,
            message,
        ));
    };
    if old.pii != new.pii {
        let what = if new.pii {
            "marked as PII"
        } else {
            "no longer marked as PII (not redacted)"
        };
        push(format!("`{name}` {what}"));
    }
    if old.description != new.description {
        push(format!("description of `{name}` changed"));
    }
}

/// Key, topic, aliases and descriptive attributes of a version changed in place.
fn diff_metadata(old: &EventSpec, new: &EventSpec, out: &mut Vec<Change>) {
    if old.key != new.key {
        let message = format!(
            "key changed from `{}` to `{}` (partitioning and ordering change)",
            old.key, new.key
        );
        out.push(Change::new(new, ChangeKind::Key, message).breaking());
    }
    if old.topic != new.topic {
        let message = format!(
            "topic changed from `{}` to `{}` (subscribers of the old stream stop receiving it)",
            old.topic, new.topic
        );
        out.push(Change::new(new, ChangeKind::Topic, message).breaking());
    }
    diff_aliases(old, new, out);
    for (attribute, message) in attribute_changes(old, new) {
        out.push(Change::new(new, ChangeKind::Metadata, message).with_field(attribute));
    }
}

fn diff_aliases(old: &EventSpec, new: &EventSpec, out: &mut Vec<Change>) {
    for alias in old.aliases.iter().filter(|a| !new.aliases.contains(a)) {
        let message = format!("alias `{alias}` removed (the name no longer resolves)");
        let change = Change::new(new, ChangeKind::AliasRemoved, message).with_field(alias);
        out.push(change.breaking());
    }
    for alias in new.aliases.iter().filter(|a| !old.aliases.contains(a)) {
        let message = format!("alias `{alias}` added");
        out.push(Change::new(new, ChangeKind::AliasAdded, message).with_field(alias));
    }
}

fn attribute_changes(old: &EventSpec, new: &EventSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut compare = |attribute: &'static str, before: String, after: String| {
        if before != after {
            out.push((
                attribute,
                format!("{attribute} changed from {before:?} to {after:?}"),
            ));
        }
    };
    compare("summary", old.summary.clone(), new.summary.clone());
    compare("producer", old.producer.clone(), new.producer.clone());
    compare("consumers", consumers(old), consumers(new));
    compare(
        "aggregate",
        optional(&old.aggregate),
        optional(&new.aggregate),
    );
    compare("context", old.context.clone(), new.context.clone());
    compare(
        "compatibility",
        old.compatibility.to_string(),
        new.compatibility.to_string(),
    );
    if old.description != new.description {
        out.push(("description", "description changed".to_owned()));
    }
    out
}

fn consumers(spec: &EventSpec) -> String {
    let mut names: Vec<String> = spec
        .consumers
        .iter()
        .map(|c| match &c.action {
            Some(action) => format!("{} ({action})", c.name),
            None => c.name.clone(),
        })
        .collect();
    names.sort_unstable();
    names.join(", ")
}

fn optional(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}
