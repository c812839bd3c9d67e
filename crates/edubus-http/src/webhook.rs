//! Webhook subscriptions (`[[webhook]]`): each event of the subscribed types is POSTed to a
//! service URL in CloudEvents HTTP binary mode; a 2xx answer acks it, other answers and timeouts
//! follow the retry policy and the dead-letter queue like any handler.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use edubus_catalog::Catalog;
use edubus_core::envelope::JSON_CONTENT_TYPE;
use edubus_core::{Envelope, Error, EventStore, Result, Transport};
use edubus_runtime::{HandlerError, RetryPolicy, SubscriptionOptions, WorkerBuilder};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::config::duration;

/// The header carrying the HMAC signature when a secret is set.
pub const SIGNATURE_HEADER: &str = "edubus-signature";

/// One `[[webhook]]`: a subscription whose handler POSTs each event to `url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The subscription name (its DLQ, lag and health go by it).
    pub name: String,
    /// Event types: canonical names or aliases; every catalog version of each is delivered.
    pub types: Vec<String>,
    /// Where events are POSTed (`http://`).
    pub url: String,
    /// Per-key ordering (default true).
    #[serde(default = "ordered")]
    pub ordered: bool,
    /// Attempts and backoff.
    #[serde(default)]
    pub retry: WebhookRetry,
    /// Longest time one POST may take, connecting included (default `10s`).
    #[serde(default = "timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Key of the `edubus-signature` HMAC; never printed.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The retry policy of a webhook: `attempts` in all, full-jitter backoff from `base` to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookRetry {
    /// Attempts in all, the first included (default 5).
    pub attempts: u32,
    /// Backoff base (default `100ms`).
    #[serde(deserialize_with = "duration")]
    pub base: Duration,
    /// Backoff cap (default `30s`).
    #[serde(deserialize_with = "duration")]
    pub cap: Duration,
}

fn ordered() -> bool {
    true
}

fn timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for WebhookRetry {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        Self {
            attempts: policy.max_attempts,
            base: policy.base,
            cap: policy.cap,
        }
    }
}

impl WebhookConfig {
    /// A webhook named `name` delivering `types` to `url`, with the default policy.
    pub fn new(name: impl Into<String>, types: &[&str], url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            url: url.into(),
            ordered: ordered(),
            retry: WebhookRetry::default(),
            timeout: timeout(),
            secret: None,
        }
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: WebhookRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Signs every request with `secret`.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Gives up per-key ordering for throughput.
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    fn options(&self) -> SubscriptionOptions {
        let retry = RetryPolicy::attempts(self.retry.attempts)
            .with_backoff(self.retry.base, self.retry.cap);
        SubscriptionOptions {
            ordered: self.ordered,
            retry,
            ..SubscriptionOptions::default()
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("types", &self.types)
            .field("url", &self.url)
            .field("ordered", &self.ordered)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Adds each webhook to `worker` as a subscription named after it. Fails on an unknown event
/// type (naming the nearest ones), an empty type list, a name used twice, or a URL that is not
/// `http://`.
pub fn register<B: EventStore + Transport>(
    mut worker: WorkerBuilder<B>,
    catalog: &Catalog,
    hooks: &[WebhookConfig],
) -> Result<WorkerBuilder<B>> {
    for (i, config) in hooks.iter().enumerate() {
        if hooks[..i].iter().any(|h| h.name == config.name) {
            let name = &config.name;
            return Err(Error::invalid(format!(
                "webhook `{name}` is declared twice"
            )));
        }
        let types = resolve_types(config, catalog)?;
        let hook = Arc::new(Webhook::new(config)?);
        worker = worker
            .subscription(&config.name, config.options())
            .on_envelope(&types, move |env, _ctx| {
                let hook = Arc::clone(&hook);
                async move { hook.post(&env).await }
            });
    }
    Ok(worker)
}

fn resolve_types(config: &WebhookConfig, catalog: &Catalog) -> Result<Vec<String>> {
    let name = &config.name;
    if config.types.is_empty() {
        return Err(Error::invalid(format!("webhook `{name}` lists no types")));
    }
    config
        .types
        .iter()
        .map(|t| match catalog.resolve(t) {
            Ok(spec) => Ok(spec.name.clone()),
            Err(e) => Err(Error::invalid(format!("webhook `{name}`: {e}"))),
        })
        .collect()
}

/// A configured webhook, ready to POST.
struct Webhook {
    url: Url,
    /// The URL without credentials or query, for messages.
    target: String,
    timeout: Duration,
    secret: Option<String>,
    client: reqwest::Client,
}

impl Webhook {
    fn new(config: &WebhookConfig) -> Result<Self> {
        let name = &config.name;
        let url = Url::parse(&config.url)
            .map_err(|e| Error::invalid(format!("webhook `{name}`: invalid url: {e}")))?;
        if url.scheme() != "http" {
            return Err(Error::invalid(format!(
                "webhook `{name}`: unsupported scheme `{}`: use http:// (terminate TLS in a \
                 proxy next to the service)",
                url.scheme()
            )));
        }
        if config.secret.as_deref() == Some("") {
            return Err(Error::invalid(format!(
                "webhook `{name}`: the secret is empty"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::internal("cannot build the webhook HTTP client", e))?;
        Ok(Self {
            target: format!("{}{}", url.origin().ascii_serialization(), url.path()),
            url,
            timeout: config.timeout,
            secret: config.secret.clone(),
            client,
        })
    }

    /// POSTs one event; 2xx is success, 408, 429, 5xx and transport failures are transient,
    /// any other answer is permanent.
    async fn post(&self, env: &Envelope) -> std::result::Result<(), HandlerError> {
        let (headers, body) = self.encode(env)?;
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HandlerError::transient(self.failed(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let error = format!("{} answered {status}{}", self.target, excerpt(&text));
        Err(match is_transient(status) {
            true => HandlerError::transient(error),
            false => HandlerError::permanent(error),
        })
    }

    /// Binary mode: attributes as percent-encoded `ce-*` headers, `data` as the JSON body,
    /// and the signature when a secret is set.
    fn encode(&self, env: &Envelope) -> std::result::Result<(HeaderMap, Vec<u8>), HandlerError> {
        let unencodable = |e: String| HandlerError::permanent(format!("event {}: {e}", env.id));
        let attributes = match serde_json::to_value(env) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(unencodable("not a JSON object".into())),
            Err(e) => return Err(unencodable(e.to_string())),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in attributes {
            if name == "data" || name == "datacontenttype" {
                continue;
            }
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let header = HeaderName::try_from(format!("ce-{name}"))
                .map_err(|e| unencodable(format!("attribute `{name}`: {e}")))?;
            let value = HeaderValue::try_from(percent_encode(&text))
                .map_err(|e| unencodable(format!("attribute `{name}`: {e}")))?;
            headers.insert(header, value);
        }
        let body = match &env.data {
            Value::Null => Vec::new(),
            data => {
                let ct = env.datacontenttype.as_deref().unwrap_or(JSON_CONTENT_TYPE);
                let ct = HeaderValue::try_from(ct)
                    .map_err(|e| unencodable(format!("datacontenttype: {e}")))?;
                headers.insert(CONTENT_TYPE, ct);
                serde_json::to_vec(data).map_err(|e| unencodable(e.to_string()))?
            }
        };
        if let Some(secret) = &self.secret {
            let at = jiff::Timestamp::now().as_second();
            let signature = format!("t={at},v1={}", sign(secret, at, &body));
            let value = HeaderValue::try_from(signature)
                .map_err(|e| unencodable(format!("signature: {e}")))?;
            headers.insert(SIGNATURE_HEADER, value);
        }
        Ok((headers, body))
    }

    /// Why a request got no answer; never shows the URL's query or credentials.
    fn failed(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("POST {} timed out after {:?}", self.target, self.timeout);
        }
        let mut message = format!("POST {} failed", self.target);
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        message
    }
}

/// Hex HMAC-SHA256 of `"<at>.<body>"` keyed with `secret`: the `v1` of `edubus-signature`.
pub fn sign(secret: &str, at: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(format!("{at}.").as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Whether an answer is worth retrying: request timeout, too many requests, server errors.
fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The start of a response body, for the error message.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    match text.char_indices().nth(200) {
        Some((end, _)) => format!(": {}...", &text[..end]),
        None => format!(": {text}"),
    }
}

/// The HTTP binding's header encoding: space, `"`, `%` and anything outside printable ASCII
/// as `%XX` of its UTF-8 bytes.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'!'..=b'~' if byte != b'"' && byte != b'%' => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_encoded_as_the_binding_says() {
        assert_eq!(percent_encode("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("urn:edubus:x/1"), "urn:edubus:x/1");
    }

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_retried() {
        for code in [408, 429, 500, 502, 503] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [301, 400, 401, 404, 410, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_of_time_and_body() {
        // Computed independently: HMAC-SHA256("whsec", "1700000000.{\"a\":1}").
        assert_eq!(
            sign("whsec", 1_700_000_000, br#"{"a":1}"#),
            "8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
        assert_ne!(sign("whsec", 1, b"x"), sign("whsec", 2, b"x"));
    }
}
