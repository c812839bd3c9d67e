//! Stream entries: an event's fields and the parsing of stream replies.

use std::borrow::Cow;

use edubus_core::{Envelope, Error, Recorded, Result, partition_of};
use jiff::Timestamp;
use redis::{RedisWrite, ToRedisArgs, Value};

/// The fields of an event's entry: `p` log position, `k` partition key, `t` recorded time
/// (microseconds), `s` stream, `e` the envelope as JSON. Written straight into the command,
/// with no string per field.
pub(crate) struct Fields<'a> {
    event: &'a Recorded,
    json: Cow<'a, str>,
}

impl<'a> Fields<'a> {
    /// The fields of `event`, its envelope serialized here.
    pub(crate) fn new(event: &'a Recorded) -> Self {
        Self {
            event,
            json: Cow::Owned(event.envelope.to_json()),
        }
    }

    /// The fields of `event` whose envelope is already serialized as `json`.
    pub(crate) fn with_json(event: &'a Recorded, json: &'a str) -> Self {
        Self {
            event,
            json: Cow::Borrowed(json),
        }
    }

    /// Bytes the fields take, for sizing a command.
    pub(crate) fn len(&self) -> usize {
        // Names, two integers of at most 20 digits, key, stream and JSON.
        5 + 40 + self.event.key.len() + self.event.stream.len() + self.json.len()
    }
}

impl ToRedisArgs for Fields<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg(b"p");
        self.event.position.write_redis_args(out);
        out.write_arg(b"k");
        out.write_arg(self.event.key.as_bytes());
        out.write_arg(b"t");
        self.event
            .recorded_at
            .as_microsecond()
            .write_redis_args(out);
        out.write_arg(b"s");
        out.write_arg(self.event.stream.as_bytes());
        out.write_arg(b"e");
        out.write_arg(self.json.as_bytes());
    }

    fn num_of_args(&self) -> usize {
        10
    }
}

/// One entry of a stream reply; `fields` is `None` when the entry was deleted (trimmed) while
/// still pending.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(String, Vec<u8>)>>,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The log position, if the entry has one.
    pub(crate) fn position(&self) -> Option<u64> {
        std::str::from_utf8(self.field("p")?).ok()?.parse().ok()
    }

    /// The stored event; `partitions` recomputes its partition from the key.
    pub(crate) fn recorded(&self, partitions: u32) -> Result<Recorded> {
        let bad = |what: &str| {
            Error::internal(
                format!("stream entry {} is malformed", self.id),
                format!("field `{what}` is missing or unreadable"),
            )
        };
        let text = |name: &str| {
            self.field(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| bad(name))
        };
        let position = self.position().ok_or_else(|| bad("p"))?;
        let key = text("k")?.to_owned();
        let micros: i64 = text("t")?.parse().map_err(|_| bad("t"))?;
        let recorded_at = Timestamp::from_microsecond(micros).map_err(|_| bad("t"))?;
        let stream = text("s")?.to_owned();
        let envelope: Envelope = serde_json::from_slice(self.field("e").ok_or_else(|| bad("e"))?)
            .map_err(|e| {
            Error::internal(
                format!("stream entry {} holds an unreadable envelope", self.id),
                e.to_string(),
            )
        })?;
        Ok(Recorded {
            position,
            partition: partition_of(&key, partitions),
            stream,
            key,
            recorded_at,
            envelope,
        })
    }
}

/// `XREADGROUP`/`XREAD` reply: per stream key, its entries. `Nil` (timeout) is empty.
pub(crate) fn read_reply(value: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        other => return Err(unexpected("XREADGROUP", &other)),
    };
    streams
        .into_iter()
        .map(|stream| match stream {
            Value::Array(mut kv) if kv.len() == 2 => {
                let entries = kv.pop().unwrap_or(Value::Nil);
                let key = string(kv.pop().unwrap_or(Value::Nil))?;
                Ok((key, entries_of(entries)?))
            }
            other => Err(unexpected("XREADGROUP", &other)),
        })
        .collect()
}

/// A list of `[id, [field, value, ...] | nil]` (XRANGE, XAUTOCLAIM, one stream of XREAD).
pub(crate) fn entries_of(value: Value) -> Result<Vec<Entry>> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(unexpected("stream entries", &other)),
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(mut pair) if pair.len() == 2 => {
                let body = pair.pop().unwrap_or(Value::Nil);
                let id = string(pair.pop().unwrap_or(Value::Nil))?;
                let fields = match body {
                    Value::Nil => None,
                    Value::Array(flat) => Some(field_pairs(flat)?),
                    Value::Map(pairs) => Some(
                        pairs
                            .into_iter()
                            .map(|(k, v)| Ok((string(k)?, bytes(v)?)))
                            .collect::<Result<_>>()?,
                    ),
                    other => return Err(unexpected("stream entry", &other)),
                };
                Ok(Entry { id, fields })
            }
            other => Err(unexpected("stream entry", &other)),
        })
        .collect()
}

fn field_pairs(flat: Vec<Value>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((string(k)?, bytes(v)?));
    }
    Ok(out)
}

pub(crate) fn string(value: Value) -> Result<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b)
            .map_err(|e| Error::internal("redis returned a non-UTF-8 string", e.to_string())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(unexpected("a string", &other)),
    }
}

fn bytes(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(unexpected("a field value", &other)),
    }
}

pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn unexpected(what: &str, value: &Value) -> Error {
    Error::internal(
        format!("unexpected redis reply to {what}"),
        format!("{value:?}"),
    )
}

/// A stream id `ms-seq` as a pair, for comparisons.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The id right after `id` (`ms-(seq+1)`).
pub(crate) fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = parse_id(id)?;
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms + 1),
    })
}
