//! The reader rules: can a reader of one event version read data written with another?

use crate::ir::{Compatibility, EventSpec, Field, FieldType, Scalar};

use super::{Direction, Failure};

/// Why a reader cannot read one field of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Issue {
    /// The reader requires the field and the writer does not have it.
    Missing,
    /// The reader requires the field and the writer may leave it out.
    Optional,
    /// The types do not match.
    Type,
    /// The writer can produce these enum values, unknown to the reader.
    UnknownValues(Vec<String>),
}

/// Which issues a change is responsible for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Aspect {
    /// Every issue of the field (it was added or removed).
    Whole,
    /// Presence and optionality.
    Presence,
    /// Type and enum values.
    Type,
    /// Unknown enum values among these.
    Values(Vec<String>),
    /// None (documentation-only changes).
    Nothing,
}

impl Aspect {
    fn covers(&self, issue: &Issue) -> bool {
        match (self, issue) {
            (Self::Whole, _) => true,
            (Self::Presence, Issue::Missing | Issue::Optional) => true,
            (Self::Type, Issue::Type | Issue::UnknownValues(_)) => true,
            (Self::Values(values), Issue::UnknownValues(unknown)) => {
                unknown.iter().any(|v| values.contains(v))
            }
            _ => false,
        }
    }
}

/// The issues of a reader field reading a writer field (`None`: the schema lacks it).
pub(crate) fn field_issues(reader: Option<&Field>, writer: Option<&Field>) -> Vec<Issue> {
    let Some(reader) = reader else {
        // A reader ignores fields it does not know.
        return Vec::new();
    };
    let Some(writer) = writer else {
        return if reader.optional {
            Vec::new()
        } else {
            vec![Issue::Missing]
        };
    };
    let mut issues = Vec::new();
    if !reader.optional && writer.optional {
        issues.push(Issue::Optional);
    }
    issues.extend(type_issue(&reader.ty, &writer.ty));
    issues
}

/// Whether a reader of type `reader` reads every value a writer of type `writer` produces.
fn type_issue(reader: &FieldType, writer: &FieldType) -> Option<Issue> {
    match (reader, writer) {
        (FieldType::Scalar(r), FieldType::Scalar(w)) if r == w => None,
        // Every enum value is a string.
        (FieldType::Scalar(Scalar::String), FieldType::Enum(_)) => None,
        (FieldType::Enum(known), FieldType::Enum(produced)) => {
            let unknown: Vec<String> = produced
                .iter()
                .filter(|v| !known.contains(v))
                .cloned()
                .collect();
            (!unknown.is_empty()).then_some(Issue::UnknownValues(unknown))
        }
        (FieldType::List(r), FieldType::List(w)) => type_issue(r, w),
        _ => Some(Issue::Type),
    }
}

/// Values added and removed when both types are enums at the same list depth.
pub(crate) fn enum_delta(old: &FieldType, new: &FieldType) -> Option<(Vec<String>, Vec<String>)> {
    match (old, new) {
        (FieldType::Enum(before), FieldType::Enum(after)) => Some((
            after
                .iter()
                .filter(|v| !before.contains(v))
                .cloned()
                .collect(),
            before
                .iter()
                .filter(|v| !after.contains(v))
                .cloned()
                .collect(),
        )),
        (FieldType::List(before), FieldType::List(after)) => enum_delta(before, after),
        _ => None,
    }
}

/// The versions `subject` is checked against under its mode: the previous one (and the next
/// one, with `later`), or every earlier (and later) one when the mode is transitive.
pub(crate) fn targets<'a>(
    subject: &EventSpec,
    versions: &[&'a EventSpec],
    later: bool,
) -> Vec<&'a EventSpec> {
    // `versions` is ascending, as `Catalog::versions` returns it.
    let mut earlier = versions.iter().filter(|v| v.version < subject.version);
    let mut after = versions
        .iter()
        .filter(|v| later && v.version > subject.version);
    if subject.compatibility.is_transitive() {
        earlier.chain(after).copied().collect()
    } else {
        earlier
            .next_back()
            .into_iter()
            .chain(after.next())
            .copied()
            .collect()
    }
}

fn directions(mode: Compatibility) -> impl Iterator<Item = Direction> {
    let backward = mode.checks_backward().then_some(Direction::Backward);
    let forward = mode.checks_forward().then_some(Direction::Forward);
    backward.into_iter().chain(forward)
}

/// Reader and writer of a check: backward, the newer schema reads the older one's data.
fn roles<'a>(
    subject: &'a EventSpec,
    target: &'a EventSpec,
    direction: Direction,
) -> (&'a EventSpec, &'a EventSpec) {
    let (newer, older) = if target.version > subject.version {
        (target, subject)
    } else {
        (subject, target)
    };
    match direction {
        Direction::Backward => (newer, older),
        Direction::Forward => (older, newer),
    }
}

/// The checks on `field` that fail for the issues `aspect` covers, sorted.
pub(crate) fn failures(
    subject: &EventSpec,
    targets: &[&EventSpec],
    field: &str,
    aspect: &Aspect,
) -> Vec<Failure> {
    collect_failures(subject, targets, |reader, writer| {
        let issues = field_issues(reader.field(field), writer.field(field));
        issues.iter().any(|issue| aspect.covers(issue))
    })
}

/// The whole-schema checks that fail (any reader field with any issue), sorted.
pub(crate) fn schema_failures(subject: &EventSpec, targets: &[&EventSpec]) -> Vec<Failure> {
    collect_failures(subject, targets, |reader, writer| {
        reader
            .fields
            .iter()
            .any(|f| !field_issues(Some(f), writer.field(&f.name)).is_empty())
    })
}

fn collect_failures(
    subject: &EventSpec,
    targets: &[&EventSpec],
    fails: impl Fn(&EventSpec, &EventSpec) -> bool,
) -> Vec<Failure> {
    let mut out = Vec::new();
    for target in targets {
        for direction in directions(subject.compatibility) {
            let (reader, writer) = roles(subject, target, direction);
            if fails(reader, writer) {
                out.push(Failure {
                    direction,
                    against: target.version,
                });
            }
        }
    }
    out.sort_by_key(|f| (f.against, f.direction));
    out.dedup();
    out
}
