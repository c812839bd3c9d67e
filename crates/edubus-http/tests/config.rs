//! The `[http]` configuration table and the shipped alert rules.

use edubus_http::{HealthThresholds, HttpConfig, token};

#[test]
fn the_http_table_reads_tokens_and_thresholds_and_defaults_the_rest() {
    let text = format!(
        r#"
listen = "0.0.0.0:8080"
[[token]]
name = "attendance-api"
hash = "{}"
scopes = ["publish:attendance.*"]
[health]
max_lag = 50
"#,
        token::hash("secret")
    );
    let config: HttpConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.body_limit, 1024 * 1024);
    assert_eq!(config.tokens[0].scopes, ["publish:attendance.*"]);
    assert_eq!(config.health.max_lag, 50);
    assert_eq!(config.health.max_failure_ratio, 0.05);
    assert!(
        !format!("{config:?}").contains(&token::hash("secret")),
        "hashes are not printed"
    );
    let err = toml::from_str::<HttpConfig>("listen_on = \"x\"").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `listen_on`"),
        "{err}"
    );
}

#[test]
fn the_alert_rules_use_the_health_defaults_and_metric_names() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/alerts.yml"
    );
    let rules = std::fs::read_to_string(path).unwrap();
    let defaults = HealthThresholds::default();
    for needle in [
        format!("eventbus_consumer_lag > {}", defaults.max_lag),
        format!("> {}", defaults.max_failure_ratio),
        format!("> {}", defaults.max_processing_seconds),
        "increase(eventbus_dlq_total".to_owned(),
        "eventbus_failed_total".to_owned(),
        "eventbus_consumed_total".to_owned(),
        "eventbus_processing_duration_seconds_sum".to_owned(),
    ] {
        assert!(rules.contains(&needle), "alerts.yml lacks `{needle}`");
    }
}
