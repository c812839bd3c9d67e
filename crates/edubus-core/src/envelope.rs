//! The CloudEvents 1.0 envelope every edubus event travels in (JSON structured format).
//!
//! The context attributes and edubus's extensions are typed fields; any other extension is kept
//! in [`Envelope::extensions`] so events from other producers round-trip unchanged.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Issue, render_issues};
use crate::event::Event;

/// The only CloudEvents version edubus reads and writes.
pub const SPEC_VERSION: &str = "1.0";
/// The `datacontenttype` edubus writes.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Longest extension name accepted (the CloudEvents recommendation).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;
/// Longest correlation or causation id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Prefix of the `dataschema` URIs of catalog events.
const SCHEMA_URI_PREFIX: &str = "urn:edubus:schema:";

/// Attribute names with a typed field; they never appear in [`Envelope::extensions`].
const TYPED_ATTRIBUTES: [&str; 20] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "partitionkey",
    "correlationid",
    "causationid",
    "actorid",
    "tenantid",
    "aggregatetype",
    "schemaversion",
    "attempt",
    "replay",
    "traceparent",
    "tracestate",
];

/// A CloudEvents 1.0 event with edubus's extensions, in JSON structured mode.
///
/// Build one with [`Envelope::new`] or [`Envelope::from_event`], read one with
/// [`Envelope::from_json`]; [`Envelope::validate`] checks the structural rules. The default
/// is an empty envelope (every attribute empty or absent), a placeholder that is not valid.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Envelope {
    /// CloudEvents version, always `"1.0"`.
    pub specversion: String,
    /// Unique event id; a UUIDv7 when edubus builds the envelope.
    pub id: String,
    /// The producer (seed `producer` / `source_service`).
    pub source: String,
    /// The canonical event name, an alias or a topic name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the fact happened (seed `occurred_at`), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// The aggregate id: the partition key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Media type of `data`; edubus writes `application/json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// URI of the JSON Schema of `data` (`urn:edubus:schema:<name>:v<version>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// Partition key extension (equal to `subject` when edubus builds the envelope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitionkey: Option<String>,
    /// Id shared by every event of one business flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// Id of the event that caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// Who acted (user or service id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actorid: Option<String>,
    /// Tenant (district, school) the event belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenantid: Option<String>,
    /// Aggregate type (`Student`), as the catalog names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregatetype: Option<String>,
    /// Catalog version of the payload shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schemaversion: Option<u32>,
    /// Delivery attempt (seed `metadata.attempt`), from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Whether this is a replayed delivery (seed `metadata.replay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<bool>,
    /// W3C trace context (CloudEvents distributed tracing extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C vendor trace state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Every other extension, by name; values are strings, integers or booleans.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
    /// The payload; `Value::Null` when absent.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// Why an envelope could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not JSON.
    #[error("the envelope is not valid JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    /// The JSON breaks CloudEvents or edubus rules; issues sorted by pointer.
    #[error("invalid CloudEvents envelope:{}", render_issues(.0))]
    Invalid(Vec<Issue>),
    /// An event value could not be serialized into `data`.
    #[error("the event payload could not be serialized: {0}")]
    Payload(#[source] serde_json::Error),
}

impl EnvelopeError {
    /// Every problem as a pointer issue (a syntax error points at the whole document).
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Syntax(e) => vec![Issue::new("", format!("not valid JSON: {e}"))],
            Self::Invalid(issues) => issues.clone(),
            Self::Payload(e) => vec![Issue::at_member("data", e.to_string())],
        }
    }
}

/// The `dataschema` URI of version `version` of the catalog event `name`.
///
/// Mirrors `edubus_catalog::emit::json_schema::schema_id`; the core cannot depend on the catalog.
pub fn schema_uri(name: &str, version: u32) -> String {
    format!("{SCHEMA_URI_PREFIX}{name}:v{version}")
}

/// Splits one of our schema URIs into event name and version; `None` for any other URI.
pub fn parse_schema_uri(uri: &str) -> Option<(&str, u32)> {
    let rest = uri.strip_prefix(SCHEMA_URI_PREFIX)?;
    let (name, version) = rest.rsplit_once(":v")?;
    let version = version.parse().ok().filter(|v| *v > 0)?;
    (!name.is_empty()).then_some((name, version))
}

/// Whether `name` is a valid extension name: lower-case ASCII letters and digits, 1-20 chars.
pub fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `id` is a well-formed correlation or causation id.
///
/// 1 to [`MAX_ID_LEN`] visible ASCII characters (no spaces or controls): UUIDs, ULIDs and the
/// string ids of the seed platforms all qualify.
pub fn is_well_formed_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

impl Envelope {
    /// A new root event: fresh UUIDv7 id, time now, JSON content, schema URI and version set.
    ///
    /// Its correlation id is its own id; set the producer with [`Envelope::with_source`].
    pub fn new(event_type: impl Into<String>, version: u32, data: Value) -> Self {
        let event_type = event_type.into();
        let id = Uuid::now_v7().to_string();
        Self {
            specversion: SPEC_VERSION.into(),
            correlationid: Some(id.clone()),
            id,
            source: String::new(),
            dataschema: Some(schema_uri(&event_type, version)),
            event_type,
            time: Some(Timestamp::now()),
            subject: None,
            datacontenttype: Some(JSON_CONTENT_TYPE.into()),
            partitionkey: None,
            causationid: None,
            actorid: None,
            tenantid: None,
            aggregatetype: None,
            schemaversion: Some(version),
            attempt: None,
            replay: None,
            traceparent: None,
            tracestate: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// The envelope of a generated catalog event published by `source`.
    ///
    /// Sets type, `schemaversion`, `dataschema`, `subject` = `partitionkey` = the event's key,
    /// and `aggregatetype`.
    pub fn from_event<E: Event>(
        event: &E,
        source: impl Into<String>,
    ) -> Result<Self, EnvelopeError> {
        let data = serde_json::to_value(event).map_err(EnvelopeError::Payload)?;
        let mut env = Self::new(E::NAME, E::VERSION, data)
            .with_source(source)
            .with_key(event.key());
        env.aggregatetype = E::AGGREGATE.map(str::to_owned);
        Ok(env)
    }

    /// The JSON structured-mode text, exactly what `serde_json::to_string` writes, in about
    /// half the time; appends and publishes store and send this text.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(1024);
        self.write_json(&mut out);
        out
    }

    /// Appends [`Envelope::to_json`]'s text to `out`, so a caller encoding many envelopes can
    /// reuse one buffer.
    pub fn write_json(&self, out: &mut String) {
        crate::json::write_envelope(self, out);
    }

    /// Reads a JSON structured-mode event and checks it with [`Envelope::validate`].
    ///
    /// Every problem is reported at once, each naming its attribute as a JSON pointer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(EnvelopeError::Syntax)?;
        let Value::Object(map) = value else {
            let issue = Issue::new("", "a structured-mode event must be a JSON object");
            return Err(EnvelopeError::Invalid(vec![issue]));
        };
        let (env, mut issues) = from_map(map);
        issues.extend(env.issues());
        finish(env, issues)
    }

    /// Checks the structural rules of CloudEvents 1.0 and edubus; every problem is reported.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        finish((), self.issues())
    }

    /// The structural problems of this envelope, unsorted.
    fn issues(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.specversion.is_empty() {
            issues.push(Issue::at_member(
                "specversion",
                "required attribute is missing or empty",
            ));
        } else if self.specversion != SPEC_VERSION {
            let reason = format!(
                "unsupported CloudEvents version {:?}; edubus reads \"1.0\"",
                self.specversion
            );
            issues.push(Issue::at_member("specversion", reason));
        }
        self.check_required(&mut issues);
        self.check_optional(&mut issues);
        self.check_extensions(&mut issues);
        issues
    }

    fn check_required(&self, issues: &mut Vec<Issue>) {
        let required = [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.event_type),
        ];
        for (name, value) in required {
            if value.is_empty() {
                issues.push(Issue::at_member(
                    name,
                    "required attribute is missing or empty",
                ));
            }
        }
    }

    fn check_optional(&self, issues: &mut Vec<Issue>) {
        for (name, value) in self.optional_strings() {
            if let Some(reason) = value.and_then(|v| optional_problem(name, v)) {
                issues.push(Issue::at_member(name, reason));
            }
        }
    }

    fn check_extensions(&self, issues: &mut Vec<Issue>) {
        for (name, value) in &self.extensions {
            if let Some(reason) = extension_name_problem(name) {
                issues.push(Issue::at_member(name, reason));
            } else if !matches!(value, Value::String(_) | Value::Bool(_)) && !value.is_i64() {
                let reason = "extension values must be strings, integers or booleans";
                issues.push(Issue::at_member(name, reason));
            }
        }
    }

    fn optional_strings(&self) -> [(&'static str, Option<&str>); 11] {
        [
            ("subject", self.subject.as_deref()),
            ("datacontenttype", self.datacontenttype.as_deref()),
            ("dataschema", self.dataschema.as_deref()),
            ("partitionkey", self.partitionkey.as_deref()),
            ("correlationid", self.correlationid.as_deref()),
            ("causationid", self.causationid.as_deref()),
            ("actorid", self.actorid.as_deref()),
            ("tenantid", self.tenantid.as_deref()),
            ("aggregatetype", self.aggregatetype.as_deref()),
            ("traceparent", self.traceparent.as_deref()),
            ("tracestate", self.tracestate.as_deref()),
        ]
    }

    /// The correlation id, or the event's own id for a root event without one.
    pub fn correlation_id(&self) -> &str {
        self.correlationid.as_deref().unwrap_or(&self.id)
    }

    /// The partition key: `partitionkey`, else `subject`.
    pub fn key(&self) -> Option<&str> {
        self.partitionkey.as_deref().or(self.subject.as_deref())
    }
}

/// Builder setters.
impl Envelope {
    /// Makes this event caused by `cause`: same correlation id, causation id = the cause's id.
    ///
    /// The tenant is inherited too when this event has none.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlationid = Some(cause.correlation_id().to_owned());
        self.causationid = Some(cause.id.clone());
        if self.tenantid.is_none() {
            self.tenantid.clone_from(&cause.tenantid);
        }
        self
    }

    /// Sets the producer.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Replaces the id; a root event's correlation id follows it.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        if self.correlationid.as_deref() == Some(self.id.as_str()) {
            self.correlationid = Some(id.clone());
        }
        self.id = id;
        self
    }

    /// Sets when the fact happened.
    pub fn with_time(mut self, time: Timestamp) -> Self {
        self.time = Some(time);
        self
    }

    /// Sets the partition key: both `subject` and `partitionkey`.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.subject = Some(key.clone());
        self.partitionkey = Some(key);
        self
    }

    /// Sets `subject` alone.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the schema URI.
    pub fn with_dataschema(mut self, uri: impl Into<String>) -> Self {
        self.dataschema = Some(uri.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlationid = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causationid = Some(id.into());
        self
    }

    /// Sets who acted.
    pub fn with_actor_id(mut self, id: impl Into<String>) -> Self {
        self.actorid = Some(id.into());
        self
    }

    /// Sets the tenant.
    pub fn with_tenant_id(mut self, id: impl Into<String>) -> Self {
        self.tenantid = Some(id.into());
        self
    }

    /// Sets the aggregate type.
    pub fn with_aggregate_type(mut self, ty: impl Into<String>) -> Self {
        self.aggregatetype = Some(ty.into());
        self
    }

    /// Sets the delivery attempt.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Marks the delivery as a replay (or not).
    pub fn with_replay(mut self, replay: bool) -> Self {
        self.replay = Some(replay);
        self
    }

    /// Sets the W3C `traceparent`.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Sets the W3C `tracestate`.
    pub fn with_tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.tracestate = Some(tracestate.into());
        self
    }

    /// Adds another extension; [`Envelope::validate`] checks its name and value.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }
}

/// `Ok(value)` without issues, else the issues sorted by pointer.
fn finish<T>(value: T, mut issues: Vec<Issue>) -> Result<T, EnvelopeError> {
    if issues.is_empty() {
        return Ok(value);
    }
    issues.sort();
    issues.dedup();
    Err(EnvelopeError::Invalid(issues))
}

/// Why the optional attribute `name`, present with `value`, is malformed, if it is.
fn optional_problem(name: &str, value: &str) -> Option<String> {
    Some(match name {
        _ if value.is_empty() => "must not be empty when present".into(),
        "correlationid" | "causationid" if !is_well_formed_id(value) => {
            format!("malformed id {value:?}: expected 1-{MAX_ID_LEN} visible ASCII characters")
        }
        "datacontenttype" if !is_json_media_type(value) => {
            format!("unsupported content type {value:?}: edubus data is JSON (application/json)")
        }
        "dataschema" if !has_uri_scheme(value) => format!("{value:?} is not an absolute URI"),
        _ => return None,
    })
}

/// Why `name` cannot be an extension in the map, if it cannot.
fn extension_name_problem(name: &str) -> Option<String> {
    if Member::of(name).is_some() {
        return Some(format!(
            "`{name}` is a typed attribute, not a free extension"
        ));
    }
    if name.len() > MAX_EXTENSION_NAME_LEN {
        return Some(format!(
            "extension name is {} characters long; at most {MAX_EXTENSION_NAME_LEN} allowed",
            name.len()
        ));
    }
    (!is_valid_extension_name(name))
        .then(|| "extension names are lower-case letters (a-z) and digits (0-9) only".into())
}

/// `application/json` or any `+json` type, parameters ignored.
fn is_json_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE)
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// Whether `uri` starts with an RFC 3986 scheme (`letter *( letter / digit / + / - / . ) ":"`).
fn has_uri_scheme(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

impl TryFrom<Map<String, Value>> for Envelope {
    type Error = EnvelopeError;

    /// Same rules as [`Envelope::from_json`]: a deserialized envelope is a valid one.
    fn try_from(map: Map<String, Value>) -> Result<Self, EnvelopeError> {
        Self::try_from(Members::from(map))
    }
}

impl TryFrom<Members> for Envelope {
    type Error = EnvelopeError;

    fn try_from(members: Members) -> Result<Self, EnvelopeError> {
        let (env, mut issues) = from_members(members);
        issues.extend(env.issues());
        finish(env, issues)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    /// Same rules as [`Envelope::from_json`]: a deserialized envelope is a valid one.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(Members::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The members of a structured-mode object: the known ones by slot, the others by name.
///
/// Deserialized straight from JSON, so reading an envelope allocates no member names and no
/// map for the known attributes (the hot path of every fetch). A repeated member keeps its
/// last value, as a JSON object read into a map does.
struct Members {
    /// One slot per [`TYPED_ATTRIBUTES`] entry, then one for `data_base64`.
    known: [Option<Value>; TYPED_ATTRIBUTES.len() + 1],
    rest: Map<String, Value>,
}

impl From<Map<String, Value>> for Members {
    fn from(map: Map<String, Value>) -> Self {
        let mut members = Self {
            known: Default::default(),
            rest: Map::new(),
        };
        for (name, value) in map {
            members.insert(Member::of(&name).unwrap_or(Member::Other(name)), value);
        }
        members
    }
}

impl Members {
    fn insert(&mut self, member: Member, value: Value) {
        match member {
            Member::Known(i) => self.known[i] = Some(value),
            Member::Other(name) => {
                self.rest.insert(name, value);
            }
        }
    }

    /// The member `name`, taken out.
    fn remove(&mut self, name: &str) -> Option<Value> {
        match Member::of(name) {
            Some(Member::Known(i)) => self.known[i].take(),
            _ => self.rest.remove(name),
        }
    }
}

/// A member name: the slot of a known one, or the name of an extension.
enum Member {
    Known(usize),
    Other(String),
}

impl Member {
    fn of(name: &str) -> Option<Self> {
        TYPED_ATTRIBUTES
            .iter()
            .position(|m| *m == name)
            .or_else(|| (name == "data_base64").then_some(TYPED_ATTRIBUTES.len()))
            .map(Self::Known)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Member;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(Member::of(name).unwrap_or_else(|| Member::Other(name.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<Member, E> {
                Ok(Member::of(&name).unwrap_or(Member::Other(name)))
            }
        }
        d.deserialize_str(Name)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Members {
                    known: Default::default(),
                    rest: Map::new(),
                };
                while let Some(member) = map.next_key::<Member>()? {
                    let value = map.next_value::<Value>()?;
                    members.insert(member, value);
                }
                Ok(members)
            }
        }
        d.deserialize_map(Object)
    }
}

/// Reads the attributes of a structured-mode object; values of the wrong JSON type become
/// issues, `null` counts as absent, unknown members become extensions.
fn from_map(map: Map<String, Value>) -> (Envelope, Vec<Issue>) {
    from_members(Members::from(map))
}

/// [`from_map`] of members already sorted into slots.
fn from_members(mut members: Members) -> (Envelope, Vec<Issue>) {
    let mut r = Reader {
        members: &mut members,
        issues: Vec::new(),
    };
    let mut env = Envelope {
        specversion: r.string("specversion").unwrap_or_default(),
        id: r.string("id").unwrap_or_default(),
        source: r.string("source").unwrap_or_default(),
        event_type: r.string("type").unwrap_or_default(),
        time: r.time("time"),
        subject: r.string("subject"),
        datacontenttype: r.string("datacontenttype"),
        dataschema: r.string("dataschema"),
        partitionkey: r.string("partitionkey"),
        correlationid: r.string("correlationid"),
        causationid: r.string("causationid"),
        actorid: r.string("actorid"),
        tenantid: r.string("tenantid"),
        aggregatetype: r.string("aggregatetype"),
        schemaversion: r.uint("schemaversion"),
        attempt: r.uint("attempt"),
        replay: r.boolean("replay"),
        traceparent: r.string("traceparent"),
        tracestate: r.string("tracestate"),
        extensions: BTreeMap::new(),
        data: r.take("data").unwrap_or(Value::Null),
    };
    if r.take("data_base64").is_some() {
        let reason = "binary data is not supported: edubus events carry JSON in `data`";
        r.issues.push(Issue::at_member("data_base64", reason));
    }
    let issues = r.issues;
    env.extensions = members
        .rest
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    (env, issues)
}

/// Takes typed attributes out of a JSON object, recording type problems.
struct Reader<'a> {
    members: &'a mut Members,
    issues: Vec<Issue>,
}

impl Reader<'_> {
    /// The member `name`, `None` when absent or `null`.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.members.remove(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &str) -> Option<String> {
        match self.take(name)? {
            Value::String(s) => Some(s),
            other => self.wrong(name, "a string", &other),
        }
    }

    /// A JSON integer or its canonical string form (`"2"`), as CloudEvents allows.
    fn uint(&mut self, name: &str) -> Option<u32> {
        let value = self.take(name)?;
        let parsed = match &value {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        parsed.or_else(|| self.wrong(name, "a non-negative integer", &value))
    }

    /// A JSON boolean or its canonical string form (`"true"`).
    fn boolean(&mut self, name: &str) -> Option<bool> {
        let value = self.take(name)?;
        let parsed = match &value {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        parsed.or_else(|| self.wrong(name, "a boolean", &value))
    }

    fn time(&mut self, name: &str) -> Option<Timestamp> {
        let value = self.take(name)?;
        let Value::String(s) = &value else {
            return self.wrong(name, "an RFC 3339 timestamp string", &value);
        };
        match s.parse::<Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => {
                let reason = format!("not an RFC 3339 timestamp with offset: {e}");
                self.issues.push(Issue::at_member(name, reason));
                None
            }
        }
    }

    fn wrong<T>(&mut self, name: &str, expected: &str, found: &Value) -> Option<T> {
        let reason = format!("expected {expected}, found {}", json_type_name(found));
        self.issues.push(Issue::at_member(name, reason));
        None
    }
}

/// The JSON type of `value` with its article (`an integer`), for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
