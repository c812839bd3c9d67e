//! The JSON text of an envelope, byte for byte what `serde_json` writes, with strings escaped
//! eight bytes at a time: `serde_json` checks every byte against a table, which made up most
//! of the cost of serializing an envelope on every publish.
//!
//! Stored and published envelopes are compared as text (an idempotent re-publish must match
//! what was stored), so this output may never differ from `serde_json::to_string`;
//! `tests/envelope_json.rs` compares the two on generated envelopes.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::Envelope;

/// Writes `env` as `serde_json::to_string` would: attributes in declaration order, absent ones
/// left out, extensions (in name order) before `data`, `data` left out when `null`.
pub(crate) fn write_envelope(env: &Envelope, out: &mut String) {
    out.push('{');
    let mut first = true;
    // Attribute names are plain ASCII: written as they are. Extension names are escaped.
    let mut member = |out: &mut String, name: &str, plain: bool| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        if plain {
            out.push('"');
            out.push_str(name);
            out.push('"');
        } else {
            write_str(out, name);
        }
        out.push(':');
    };
    for (name, value) in [
        ("specversion", &env.specversion),
        ("id", &env.id),
        ("source", &env.source),
        ("type", &env.event_type),
    ] {
        member(out, name, true);
        write_str(out, value);
    }
    if let Some(time) = &env.time {
        member(out, "time", true);
        // A timestamp's text never needs escaping.
        let _ = write!(out, "\"{time}\"");
    }
    for (name, value) in [
        ("subject", &env.subject),
        ("datacontenttype", &env.datacontenttype),
        ("dataschema", &env.dataschema),
        ("partitionkey", &env.partitionkey),
        ("correlationid", &env.correlationid),
        ("causationid", &env.causationid),
        ("actorid", &env.actorid),
        ("tenantid", &env.tenantid),
        ("aggregatetype", &env.aggregatetype),
    ] {
        if let Some(value) = value {
            member(out, name, true);
            write_str(out, value);
        }
    }
    for (name, value) in [
        ("schemaversion", env.schemaversion),
        ("attempt", env.attempt),
    ] {
        if let Some(value) = value {
            member(out, name, true);
            let _ = write!(out, "{value}");
        }
    }
    if let Some(replay) = env.replay {
        member(out, "replay", true);
        out.push_str(if replay { "true" } else { "false" });
    }
    for (name, value) in [
        ("traceparent", &env.traceparent),
        ("tracestate", &env.tracestate),
    ] {
        if let Some(value) = value {
            member(out, name, true);
            write_str(out, value);
        }
    }
    for (name, value) in &env.extensions {
        member(out, name, false);
        write_value(out, value);
    }
    if !env.data.is_null() {
        member(out, "data", true);
        write_value(out, &env.data);
    }
    out.push('}');
}

/// Writes a JSON value as `serde_json` does (compact, object members in map order).
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // Numbers are rare and short: `serde_json` formats them, so they stay identical.
        Value::Number(n) => out.push_str(&serde_json::to_string(n).unwrap_or_default()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (name, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, name);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

/// Writes `s` as a JSON string, escaped as `serde_json` escapes: `"` and `\`, the control
/// characters (short forms where JSON has them, else `\u00XX` in lower case), nothing else.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time; a short tail is padded with spaces, which need no escape.
        let n = (bytes.len() - i).min(8);
        let mut eight = [b' '; 8];
        eight[..n].copy_from_slice(&bytes[i..i + n]);
        if !may_need_escape(u64::from_le_bytes(eight)) {
            i += n;
            continue;
        }
        let end = i + n;
        while i < end {
            let byte = bytes[i];
            if !(byte < 0x20 || byte == b'"' || byte == b'\\') {
                i += 1;
                continue;
            }
            escape(out, &s[start..i], byte);
            i += 1;
            start = i;
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Writes `run` (text before an escaped byte) and the escape of `byte`. `byte` is ASCII, so
/// the caller's slicing at it stays on char boundaries.
fn escape(out: &mut String, run: &str, byte: u8) {
    out.push_str(run);
    let short = match byte {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        0x08 => "\\b",
        0x0c => "\\f",
        _ => {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
            return;
        }
    };
    out.push_str(short);
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// Whether any of the eight bytes of `word` may be `"`, `\` or below 0x20. Never false when one
/// is; sometimes true when none is (a borrow between bytes), which only costs a byte-wise look.
fn may_need_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(s: &str) -> String {
        let mut out = String::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn every_byte_value_is_escaped_as_serde_json_escapes_it() {
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1f600]) {
            let c = char::from_u32(c).unwrap();
            // At each offset of an eight-byte word, and in the byte-wise tail.
            for at in 0..12 {
                let s = format!("{}{c}{}", "a".repeat(at), "b".repeat(9));
                assert_eq!(
                    written(&s),
                    serde_json::to_string(&s).unwrap(),
                    "{c:?} at {at}"
                );
            }
        }
    }

    #[test]
    fn the_word_check_never_misses_a_byte_to_escape() {
        for byte in 0u8..=255 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = byte;
                let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                let found = may_need_escape(u64::from_le_bytes(word));
                assert!(found || !expected, "byte {byte:#04x} at {at}");
                if !expected {
                    // A lone harmless byte among letters raises no alarm.
                    assert!(!found, "byte {byte:#04x} at {at}");
                }
            }
        }
    }
}
