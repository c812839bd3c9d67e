//! `Envelope::to_json` must write exactly what `serde_json` writes: stored envelopes are
//! compared as text when an event is published again.

use std::collections::BTreeMap;

use edubus_core::Envelope;
use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any string: control characters, quotes, backslashes and multi-byte characters included.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9\"\\\\\u{0}-\u{1f}\u{7f}é€😀 ]{0,40}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let names = (text(), text(), text(), text());
    let optional = prop::collection::vec(prop::option::of(text()), 11);
    let time = prop::option::of((0i64..4_000_000_000, 0i32..1_000_000_000));
    let numbers = (
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<bool>()),
    );
    let extensions = prop::collection::btree_map(text(), value(), 0..4);
    (names, optional, time, numbers, extensions, value()).prop_map(
        |(
            (specversion, id, source, event_type),
            o,
            time,
            (version, attempt, replay),
            ext,
            data,
        )| {
            Envelope {
                specversion,
                id,
                source,
                event_type,
                time: time.map(|(s, n)| Timestamp::new(s, n).unwrap()),
                subject: o[0].clone(),
                datacontenttype: o[1].clone(),
                dataschema: o[2].clone(),
                partitionkey: o[3].clone(),
                correlationid: o[4].clone(),
                causationid: o[5].clone(),
                actorid: o[6].clone(),
                tenantid: o[7].clone(),
                aggregatetype: o[8].clone(),
                schemaversion: version,
                attempt,
                replay,
                traceparent: o[9].clone(),
                tracestate: o[10].clone(),
                extensions: ext.into_iter().collect::<BTreeMap<_, _>>(),
                data,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn to_json_writes_what_serde_json_writes(env in envelope()) {
        prop_assert_eq!(env.to_json(), serde_json::to_string(&env).unwrap());
    }
}

#[test]
fn a_built_envelope_is_written_as_serde_json_writes_it() {
    let env = Envelope::new(
        "attendance.marked",
        1,
        serde_json::json!({"student": "s-1", "note": "line\nbreak \"quoted\"", "score": 9.5}),
    )
    .with_extension("region", "eu")
    .with_correlation_id("corr-1");
    assert_eq!(env.to_json(), serde_json::to_string(&env).unwrap());
}
