//! The raw server beside edubus: `redis-benchmark` sending the same `XADD`s (same fields and
//! byte sizes, pipeline depth, request count and connections) to the same server, and, for
//! end to end, a bare Redis Streams client moving the same entries through consumer groups.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use edubus_redis::Production;
use edubus_runtime::{Bus, SubscriptionOptions};
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
    /// Entries per second (`XADD`ed, or in end to end, acknowledged).
    pub events_per_s: f64,
    /// edubus's rate over the raw one.
    pub ratio: f64,
}

/// Runs `redis-benchmark` against `redis_url` with an entry the size of edubus's and the
/// pipeline depth, request count and `connections` of the edubus run that reached
/// `edubus_rate`.
pub async fn redis_benchmark(
    bus: &Bus<Production>,
    args: &BenchArgs,
    (redis_url, prefix): (&str, &str),
    connections: usize,
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
        connections.to_string(),
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

/// Runs Redis Streams' own end-to-end path beside an edubus e2e run: the same entries (fields
/// and sizes), publishers, pipeline depth and partitions, `XADD`ed to one stream per partition
/// while one consumer per partition reads its stream through a consumer group
/// (`XREADGROUP ... COUNT` a subscription's default batch size, `BLOCK`) and acknowledges each
/// read with one `XACK`. No envelope is decoded, no lease fenced, no inbox kept: the floor any
/// consumer of this server pays.
pub async fn streams_e2e(
    bus: &Bus<Production>,
    args: &BenchArgs,
    (redis_url, prefix): (&str, &str),
    edubus_rate: f64,
) -> anyhow::Result<Raw> {
    let fields = sample_entry(bus, args)?;
    let entry_bytes = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    let partitions = bus.backend().redis().partitions() as usize;
    let streams: Vec<String> = (0..partitions)
        .map(|p| format!("{prefix}:raw-e2e:{{p{p}}}"))
        .collect();
    let client = redis::Client::open(redis_url)?;
    // Reads block for 50 ms at most, so a reply later than this means the server is gone.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    let mut admin = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    for stream in &streams {
        let () = redis::cmd("XGROUP")
            .arg(("CREATE", stream, "raw", "$", "MKSTREAM"))
            .query_async(&mut admin)
            .await?;
    }
    let (events, count) = (args.events, SubscriptionOptions::default().batch_size);
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = tokio::task::JoinSet::new();
    for stream in streams.clone() {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let acked = Arc::clone(&acked);
        consumers.spawn(async move {
            while acked.load(Ordering::Relaxed) < events {
                let reply: redis::Value = redis::cmd("XREADGROUP")
                    .arg(("GROUP", "raw", "c", "COUNT", count, "BLOCK", 50))
                    .arg(("STREAMS", &stream, ">"))
                    .query_async(&mut conn)
                    .await?;
                let ids = entry_ids(reply)?;
                if ids.is_empty() {
                    continue;
                }
                let n: u64 = redis::cmd("XACK")
                    .arg((&stream, "raw"))
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await?;
                acked.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let mut publishers = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for first in 0..args.publishers as u64 {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let (streams, fields) = (streams.clone(), fields.clone());
        let (step, batch) = (args.publishers as u64, args.batch);
        publishers.spawn(async move {
            let mut pipe = redis::pipe();
            let mut queued = 0;
            for i in (first..events).step_by(step as usize) {
                let stream = &streams[i as usize % streams.len()];
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg(&fields[..])
                    .ignore();
                queued += 1;
                if queued == batch || i + step >= events {
                    let () = pipe.query_async(&mut conn).await?;
                    pipe.clear();
                    queued = 0;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = publishers.join_next().await {
        done??;
    }
    while let Some(done) = consumers.join_next().await {
        done??;
    }
    let events_per_s = events as f64 / start.elapsed().as_secs_f64().max(f64::EPSILON);
    Ok(Raw {
        tool: "Redis Streams client (XADD, XREADGROUP, XACK)",
        command: format!(
            "{} connection(s) XADD pipelines of {} to {partitions} streams {prefix}:raw-e2e:{{p<N>}}; \
             one consumer per stream: XREADGROUP COUNT {count} BLOCK 50, then XACK",
            args.publishers, args.batch
        ),
        entry_bytes,
        events_per_s,
        ratio: edubus_rate / events_per_s.max(f64::EPSILON),
    })
}

/// The entry ids of an `XREADGROUP` reply on one stream (nil when the read timed out).
fn entry_ids(reply: redis::Value) -> anyhow::Result<Vec<Vec<u8>>> {
    use redis::Value;
    // RESP2: [[stream, entries]]; RESP3: {stream: entries}.
    let entries: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => bail!("unexpected XREADGROUP reply: {other:?}"),
    };
    let mut ids = Vec::new();
    for entries in entries {
        let Value::Array(entries) = entries else {
            bail!("unexpected XREADGROUP entries: {entries:?}");
        };
        for entry in entries {
            match entry {
                Value::Array(mut entry) if !entry.is_empty() => match entry.swap_remove(0) {
                    Value::BulkString(id) => ids.push(id),
                    other => bail!("unexpected XREADGROUP entry id: {other:?}"),
                },
                other => bail!("unexpected XREADGROUP entry: {other:?}"),
            }
        }
    }
    Ok(ids)
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
    use redis::Value;

    use super::{Server, entry_ids, requests_per_s};

    fn entry(id: &str) -> Value {
        let field = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        Value::Array(vec![field(id), Value::Array(vec![field("p"), field("1")])])
    }

    #[test]
    fn entry_ids_are_read_from_either_protocol_reply() {
        let name = Value::BulkString(b"s".to_vec());
        let entries = Value::Array(vec![entry("1-0"), entry("1-1")]);
        let resp2 = Value::Array(vec![Value::Array(vec![name.clone(), entries.clone()])]);
        let resp3 = Value::Map(vec![(name, entries)]);
        for reply in [resp2, resp3] {
            assert_eq!(
                entry_ids(reply).unwrap(),
                [b"1-0".to_vec(), b"1-1".to_vec()]
            );
        }
        assert!(entry_ids(Value::Nil).unwrap().is_empty());
        assert!(entry_ids(Value::Int(1)).is_err());
    }

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
