//! The school's side of the HTTP API: batched CloudEvents to `POST /v1/events`, at an optional
//! rate, as any service of the platform would publish them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edubus_core::Envelope;
use indicatif::ProgressBar;
use jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;

/// Events per request: well under the gateway's default 1 MiB body limit.
const BATCH: usize = 200;
/// Times one request is tried when the gateway answers 429 or 503 or the connection fails.
const TRIES: u32 = 20;

/// Publishes through the gateway.
pub struct Publisher {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    rate: Option<f64>,
    /// When the next batch may go out under the rate cap.
    next: Instant,
}

impl Publisher {
    /// A publisher to the gateway at `addr` (an unspecified address is reached on loopback),
    /// with a bearer `token` when the gateway needs one, at most `rate` events per second.
    pub fn new(addr: SocketAddr, token: Option<String>, rate: Option<f64>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            url: format!("{}/v1/events", base_url(addr)),
            token,
            rate: rate.filter(|r| *r > 0.0),
            next: Instant::now(),
        })
    }

    /// Publishes `events` in batches, each event stamped with the time it is sent (the start
    /// of its publish-to-handler latency); `bar` advances per event.
    pub async fn publish(
        &mut self,
        events: Vec<Envelope>,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let size = match self.rate {
            Some(rate) => BATCH.min((rate / 10.0).ceil().max(1.0) as usize),
            None => BATCH,
        };
        let mut events = events;
        while !events.is_empty() {
            let rest = events.split_off(size.min(events.len()));
            let mut batch = std::mem::replace(&mut events, rest);
            self.pace(batch.len()).await;
            let now = Timestamp::now();
            for e in &mut batch {
                e.time = Some(now);
            }
            self.post(&batch).await?;
            bar.inc(batch.len() as u64);
        }
        Ok(())
    }

    /// Waits until `events` more keep the rate under its cap; idle time earns no burst.
    async fn pace(&mut self, events: usize) {
        let Some(rate) = self.rate else { return };
        tokio::time::sleep_until(self.next.into()).await;
        let spacing = Duration::from_secs_f64(events as f64 / rate);
        self.next = self.next.max(Instant::now()) + spacing;
    }

    async fn post(&self, batch: &[Envelope]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(batch)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut request = self
                .http
                .post(&self.url)
                .header(CONTENT_TYPE, "application/cloudevents-batch+json")
                .body(body.clone());
            if let Some(token) = &self.token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            // Over capacity (429) and unavailable (503, such as a storage conflict the gateway
            // rolled back) are worth another try; a batch is appended all or nothing and its
            // ids make a repeat idempotent.
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if tries < TRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(tries)).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("POST {} failed", self.url)),
            };
            let wait = match response.status() {
                StatusCode::ACCEPTED => return check(response, batch.len()).await,
                StatusCode::TOO_MANY_REQUESTS if tries < TRIES => retry_after(&response),
                StatusCode::SERVICE_UNAVAILABLE if tries < TRIES => backoff(tries),
                _ => return Err(refused(response, &self.url, tries).await),
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait before try `tries + 1`: doubling from 100 ms up to 5 s.
fn backoff(tries: u32) -> Duration {
    Duration::from_millis(100u64 << tries.min(6)).min(Duration::from_secs(5))
}

/// `http://addr`, with loopback for an unspecified address.
pub fn base_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// Checks that the gateway appended every event of the batch.
async fn check(response: reqwest::Response, expected: usize) -> anyhow::Result<()> {
    let body: Value = response
        .json()
        .await
        .context("the gateway's answer to a publish is not JSON")?;
    let appended = body["events"].as_array().map_or(0, Vec::len);
    if appended != expected {
        bail!("the gateway appended {appended} of a batch of {expected} events");
    }
    Ok(())
}

fn retry_after(response: &reqwest::Response) -> Duration {
    let secs = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(secs)
}

/// The error for a refused publish: status, the problem's detail and its first issues.
async fn refused(response: reqwest::Response, url: &str, tries: u32) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let detail = body["detail"].as_str().unwrap_or("no detail");
    let issues: Vec<String> = body["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .take(3)
        .map(|i| {
            format!(
                "{} {}",
                i["pointer"].as_str().unwrap_or(""),
                i["reason"].as_str().unwrap_or(&i.to_string())
            )
        })
        .collect();
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            "\n  the gateway has API tokens: pass one that may publish the demo's events with --token or EDUBUS_TOKEN"
        }
        _ => "",
    };
    let issues = match issues.is_empty() {
        true => String::new(),
        false => format!(" ({})", issues.join("; ")),
    };
    let tries = match tries {
        1 => String::new(),
        n => format!(" (try {n})"),
    };
    anyhow::anyhow!("POST {url} answered {status}{tries}: {detail}{issues}{hint}")
}
