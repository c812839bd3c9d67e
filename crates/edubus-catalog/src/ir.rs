//! The intermediate representation every emitter, the resolver and the diff work on.
//!
//! A [`Catalog`] is built from the TOML files by [`crate::parse`]; it is plain data, sorted
//! (contexts by name, versions of an event in ascending order) so every export is deterministic.

use std::fmt;

/// A position in a catalog source file, 1-based, used in diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Location {
    /// File name as given to the parser (usually `catalog/<context>.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A whole catalog: every bounded context with its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Contexts sorted by name.
    pub contexts: Vec<Context>,
}

/// One bounded context, i.e. one `catalog/<context>.toml` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Context name, equal to the file stem (`attendance`).
    pub name: String,
    /// Human title (`Attendance`).
    pub title: String,
    /// What the context is about, one paragraph.
    pub description: String,
    /// Topic template applied to events without an explicit topic.
    pub topic_template: String,
    /// Where the `[context]` table starts.
    pub location: Location,
    /// Event versions in file order.
    pub events: Vec<EventSpec>,
}

/// Whether a message states a fact or asks a service to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A fact in the past tense (`attendance.marked`).
    Event,
    /// An imperative request ending in `.command` (`batch.spellcheck.initiate.command`).
    Command,
}

/// Schema evolution rule of an event, with the meanings of Confluent Schema Registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Compatibility {
    /// New readers read data of the previous version.
    Backward,
    /// New readers read data of every earlier version.
    BackwardTransitive,
    /// Previous-version readers read new data.
    Forward,
    /// Readers of every earlier version read new data.
    ForwardTransitive,
    /// Backward and forward against the previous version.
    Full,
    /// Backward and forward against every earlier version (the default).
    #[default]
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    /// Every mode, in the order they are documented.
    pub const ALL: [Compatibility; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The upper-case name used in catalogs (`FULL_TRANSITIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Parses the upper-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether new readers must read old data.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether old readers must read new data.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether the check runs against every earlier version instead of the previous one.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service that reacts to an event, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Service or handler name.
    pub name: String,
    /// What it does with the event, when known.
    pub action: Option<String>,
}

/// One version of one event: the unit every emitter works on.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    /// Canonical lower-case dotted name (`attendance.marked`).
    pub name: String,
    /// Version, starting at 1.
    pub version: u32,
    /// Owning context name.
    pub context: String,
    /// Event or command, from the name.
    pub kind: EventKind,
    /// One-line purpose.
    pub summary: String,
    /// Longer explanation, if any.
    pub description: Option<String>,
    /// The service that publishes it.
    pub producer: String,
    /// The services that consume it.
    pub consumers: Vec<Consumer>,
    /// Payload field whose value is the partition key (the aggregate id).
    pub key: String,
    /// The stream (topic) it is published on, template already applied.
    pub topic: String,
    /// Other names of this event version (legacy spellings, PascalCase names).
    pub aliases: Vec<String>,
    /// Aggregate type carried in the envelope's `aggregatetype`.
    pub aggregate: Option<String>,
    /// Evolution rule checked by `catalog diff`.
    pub compatibility: Compatibility,
    /// Payload fields in declaration order.
    pub fields: Vec<Field>,
    /// Where the `[[event]]` table starts.
    pub location: Location,
}

impl EventSpec {
    /// `name.vN`, the file stem of its JSON Schema.
    pub fn id(&self) -> String {
        format!("{}.v{}", self.name, self.version)
    }

    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether any field carries personal data.
    pub fn has_pii(&self) -> bool {
        self.fields.iter().any(|f| f.pii)
    }
}

/// One payload field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Field name, kept exactly as the source document spells it.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Optional fields may be absent or `null`.
    pub optional: bool,
    /// Identifies a student or guardian (FERPA); redacted for callers without `pii:read`.
    pub pii: bool,
    /// What it means, when the name does not say it.
    pub description: Option<String>,
    /// Where the field is declared.
    pub location: Location,
}

/// Scalar payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    /// RFC 9562 UUID, as a string.
    Uuid,
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// Exact decimal, serialized as a string so no precision is lost.
    Decimal,
    /// `true` / `false`.
    Bool,
    /// RFC 3339 timestamp with offset.
    Datetime,
    /// Calendar date `YYYY-MM-DD`.
    Date,
    /// Free-form JSON object.
    Object,
}

impl Scalar {
    /// Every scalar, in documentation order.
    pub const ALL: [Scalar; 8] = [
        Self::Uuid,
        Self::String,
        Self::Int,
        Self::Decimal,
        Self::Bool,
        Self::Datetime,
        Self::Date,
        Self::Object,
    ];

    /// The catalog spelling (`uuid`, `datetime`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::String => "string",
            Self::Int => "int",
            Self::Decimal => "decimal",
            Self::Bool => "bool",
            Self::Datetime => "datetime",
            Self::Date => "date",
            Self::Object => "object",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The type of a payload field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// A scalar.
    Scalar(Scalar),
    /// A string restricted to these values, in declaration order.
    Enum(Vec<String>),
    /// A JSON array of the inner type.
    List(Box<FieldType>),
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scalar(s) => f.write_str(s.as_str()),
            Self::Enum(values) => write!(f, "enum[{}]", values.join("|")),
            Self::List(inner) => write!(f, "list[{inner}]"),
        }
    }
}

impl Catalog {
    /// Every event version, contexts in name order, events in file order.
    pub fn events(&self) -> impl Iterator<Item = &EventSpec> {
        self.contexts.iter().flat_map(|c| c.events.iter())
    }

    /// The context named `name`.
    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// Version `version` of the event `name`.
    pub fn get(&self, name: &str, version: u32) -> Option<&EventSpec> {
        self.events()
            .find(|e| e.name == name && e.version == version)
    }

    /// Every version of the event `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<&EventSpec> {
        let mut v: Vec<_> = self.events().filter(|e| e.name == name).collect();
        v.sort_by_key(|e| e.version);
        v
    }

    /// The highest version of the event `name`.
    pub fn latest(&self, name: &str) -> Option<&EventSpec> {
        self.events()
            .filter(|e| e.name == name)
            .max_by_key(|e| e.version)
    }

    /// Distinct canonical event names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.events().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
