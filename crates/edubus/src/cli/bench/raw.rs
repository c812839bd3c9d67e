//! The raw server beside edubus: `redis-benchmark` sending the same `XADD`s (same fields and
//! byte sizes, pipeline depth, request count and connections) to the same server.

use std::process::Command;

use anyhow::{Context as _, bail};
use edubus_redis::Production;
use edubus_runtime::Bus;
use jiff::Timestamp;
use serde::Serialize;

use super::BenchArgs;
use super::workload::{self, Shape};

/// What the raw server did with the same load.
#[derive(Debug, Clone, Serialize)]
pub struct Raw {
    /// The tool that loaded the server.
    pub tool: &'static str,
    /// Its command line (password redacted, the envelope JSON abbreviated).
    pub command: String,
    /// Bytes of one entry's field names and values (edubus's and the raw one alike).
    pub entry_bytes: usize,
    /// Requests (one `XADD` each) per second.
    pub events_per_s: f64,
    /// edubus's rate over the raw one.
    pub ratio: f64,
}

/// Runs `redis-benchmark` against `redis_url` with an entry the size of edubus's and the
/// pipeline depth, request count and connections of the edubus run that reached `edubus_rate`.
pub async fn redis_benchmark(
    bus: &Bus<Production>,
    args: &BenchArgs,
    redis_url: &str,
    prefix: &str,
    edubus_rate: f64,
) -> anyhow::Result<Raw> {
    let server = Server::parse(redis_url)?;
    let fields = sample_entry(bus, args)?;
    let entry_bytes = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut load = vec![
        "-n".to_owned(),
        args.events.to_string(),
        "-P".into(),
        args.batch.to_string(),
        "-c".into(),
        args.publishers.to_string(),
        "-r".into(),
        bus.backend().redis().partitions().to_string(),
        "--csv".into(),
        "XADD".into(),
        // `__rand_int__` spreads the entries over one stream per partition, as edubus does.
        format!("{prefix}:raw:{{p__rand_int__}}"),
        "*".into(),
    ];
    let shown: Vec<String> = server.shown().into_iter().chain(load.clone()).collect();
    let mut shown = format!("redis-benchmark {}", shown.join(" "));
    for (name, value) in &fields {
        load.push((*name).to_owned());
        load.push(value.clone());
        let value = match *name {
            "e" => format!("'<envelope JSON, {} bytes>'", value.len()),
            _ => value.clone(),
        };
        shown.push_str(&format!(" {name} {value}"));
    }
    let argv: Vec<String> = server.args().into_iter().chain(load).collect();
    let out =
        tokio::task::spawn_blocking(move || Command::new("redis-benchmark").args(argv).output())
            .await?
            .context("cannot run redis-benchmark (it comes with the Redis server packages)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let events_per_s = requests_per_s(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Raw {
        tool: "redis-benchmark",
        command: shown,
        entry_bytes,
        events_per_s,
        ratio: edubus_rate / events_per_s.max(f64::EPSILON),
    })
}

/// The fields edubus writes for one event of this run's workload: `p` position, `k` key,
/// `t` recorded time, `s` stream, `e` the envelope as JSON.
fn sample_entry(
    bus: &Bus<Production>,
    args: &BenchArgs,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let shape = Shape {
        events: 1,
        batch: 1,
        keys: 1,
        payload_bytes: args.payload_bytes,
    };
    let envelope = workload::build(bus, shape)?
        .batches
        .into_iter()
        .flatten()
        .next()
        .context("the sample workload is empty")?;
    let append = bus.prepare(envelope)?;
    Ok(vec![
        ("p", args.events.to_string()),
        ("k", append.envelope.key().unwrap_or_default().to_owned()),
        ("t", Timestamp::now().as_microsecond().to_string()),
        ("s", append.stream),
        ("e", serde_json::to_string(&append.envelope)?),
    ])
}

/// The `rps` column of `redis-benchmark --csv`. The test name before it is the command,
/// quotes and commas unescaped, so the numbers are counted from the end.
fn requests_per_s(csv: &str) -> anyhow::Result<f64> {
    let line = csv
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let fields: Vec<&str> = line.split(',').collect();
    fields
        .len()
        .checked_sub(7)
        .filter(|&i| i > 0)
        .and_then(|i| fields[i].trim_matches('"').parse().ok())
        .with_context(|| format!("unexpected redis-benchmark output: {csv}"))
}

/// Where `redis-benchmark` connects: a `redis://[user[:password]@]host[:port][/db]` URL.
#[derive(Debug, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: Option<u32>,
}

impl Server {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let unsupported = || {
            format!(
                "the redis-benchmark comparison needs a redis://host:port/db URL, not `{}`",
                crate::config::redact_url(url)
            )
        };
        let rest = url.strip_prefix("redis://").with_context(unsupported)?;
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':')) {
            Some(Some((user, password))) => (Some(user), Some(password)),
            Some(None) => (userinfo, None),
            None => (None, None),
        };
        let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok().with_context(unsupported)?),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            bail!(unsupported());
        }
        let db = match db.trim_end_matches('/') {
            "" => None,
            db => Some(db.parse().ok().with_context(unsupported)?),
        };
        let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(Self {
            host: host.to_owned(),
            port,
            user: some(user),
            password: some(password),
            db,
        })
    }

    /// Connection arguments.
    fn args(&self) -> Vec<String> {
        self.with_password(self.password.clone().unwrap_or_default())
    }

    /// Connection arguments as printed: the password redacted.
    fn shown(&self) -> Vec<String> {
        self.with_password("***".into())
    }

    fn with_password(&self, password: String) -> Vec<String> {
        let mut args = vec![
            "-h".to_owned(),
            self.host.clone(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(user) = &self.user {
            args.extend(["--user".into(), user.clone()]);
        }
        if self.password.is_some() {
            args.extend(["-a".into(), password, "--no-auth-warning".into()]);
        }
        if let Some(db) = self.db {
            args.extend(["--dbnum".into(), db.to_string()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::{Server, requests_per_s};

    #[test]
    fn redis_urls_become_connection_arguments() {
        let s = Server::parse("redis://u:pw@10.0.0.5:6390/2").unwrap();
        assert_eq!(
            s.args(),
            [
                "-h",
                "10.0.0.5",
                "-p",
                "6390",
                "--user",
                "u",
                "-a",
                "pw",
                "--no-auth-warning",
                "--dbnum",
                "2"
            ]
        );
        assert_eq!(s.shown()[7], "***");
        assert_eq!(
            Server::parse("redis://127.0.0.1").unwrap().args(),
            ["-h", "127.0.0.1", "-p", "6379"]
        );
        let error = Server::parse("rediss://u:pw@h:1").unwrap_err().to_string();
        assert!(
            error.contains("redis://host:port/db") && !error.contains("pw"),
            "{error}"
        );
    }

    #[test]
    fn the_rate_is_read_from_the_end_of_the_csv_line() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"XADD k * e {\"a\":\"x\",\"b\":1}\",\"123456.78\",\"0.1\",\"0.1\",\"0.1\",\"0.2\",\"0.3\",\"1.0\"\n";
        assert_eq!(requests_per_s(csv).unwrap(), 123_456.78);
        assert!(requests_per_s("ERROR: unknown command\n").is_err());
    }
}
