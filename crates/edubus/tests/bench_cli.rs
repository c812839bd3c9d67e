//! `edubus bench --backend redis|production` against the test PostgreSQL and Redis servers:
//! the modes measure what they say, and a run leaves nothing behind unless `--keep`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

fn edubus(cwd: &Path, servers: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edubus"));
    cmd.current_dir(cwd)
        .arg("bench")
        .args(args)
        .env_remove("EDUBUS_POSTGRES_URL")
        .env_remove("EDUBUS_REDIS_URL")
        .env_remove("EDUBUS_CONFIG")
        .env_remove("EDUBUS_PARTITIONS")
        .stdin(Stdio::null());
    if servers {
        cmd.env("EDUBUS_POSTGRES_URL", edubus_testsupport::postgres().url())
            .env("EDUBUS_REDIS_URL", edubus_testsupport::redis().url());
    }
    cmd.output().expect("run edubus")
}

fn json(o: Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Entries in the run's partition streams and whether any key of the run is left.
async fn redis_state(prefix: &str) -> (u64, usize) {
    let mut conn = edubus_testsupport::redis().connect().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut entries = 0;
    for key in keys.iter().filter(|k| k.contains(":s:")) {
        let n: u64 = redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        entries += n;
    }
    (entries, keys.len())
}

async fn schema_exists(schema: &str) -> bool {
    let client = edubus_testsupport::postgres().connect().await;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) == 1
}

#[test]
fn missing_servers_are_named_in_the_error() {
    let cwd = TempDir::new().unwrap();
    let out = edubus(cwd.path(), false, &["--backend", "redis"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("EDUBUS_POSTGRES_URL") && error.contains("EDUBUS_REDIS_URL"),
        "{error}"
    );
}

#[tokio::test]
async fn redis_publish_is_compared_with_redis_benchmark_and_cleaned_up() {
    let cwd = TempDir::new().unwrap();
    let args = [
        "--backend",
        "redis",
        "--mode",
        "publish",
        "--events",
        "3000",
        "--batch",
        "100",
        "--publishers",
        "1",
        "--json",
    ];
    let out = json(edubus(cwd.path(), true, &args));
    assert_eq!(out["backend"], "redis");
    assert_eq!(out["events"], 3000);
    let edubus_rate = out["events_per_s"].as_f64().unwrap();
    let raw = &out["raw"];
    assert_eq!(raw["tool"], "redis-benchmark");
    let raw_rate = raw["events_per_s"].as_f64().unwrap();
    assert!(edubus_rate > 0.0 && raw_rate > 0.0, "{out}");
    let ratio = raw["ratio"].as_f64().unwrap();
    assert!((ratio - edubus_rate / raw_rate).abs() < 1e-9, "{out}");
    let command = raw["command"].as_str().unwrap();
    assert!(
        command.contains("-n 3000 -P 100 -c 1 -r 16") && command.contains(" XADD "),
        "{command}"
    );
    // An entry carries the envelope, which holds the payload.
    let payload = out["payload_bytes"].as_u64().unwrap();
    assert!(raw["entry_bytes"].as_u64().unwrap() > payload, "{out}");
    let prefix = out["prefix"].as_str().unwrap();
    assert!(prefix.starts_with("bench-"), "{prefix}");
    assert_eq!(redis_state(prefix).await.1, 0, "the run's keys are deleted");
    assert!(!schema_exists(out["schema"].as_str().unwrap()).await);
}

#[tokio::test]
async fn e2e_on_redis_and_on_production_delivers_every_event() {
    let cwd = TempDir::new().unwrap();
    for backend in ["redis", "production"] {
        let args = [
            "--backend",
            backend,
            "--mode",
            "e2e",
            "--events",
            "2000",
            "--batch",
            "200",
            "--json",
        ];
        let out = json(edubus(cwd.path(), true, &args));
        assert_eq!(out["backend"], backend);
        assert_eq!(out["deliveries"], 2000, "{out}");
        assert!(out["ordered"].as_bool().unwrap());
        assert!(out["events_per_s"].as_f64().unwrap() > 0.0, "{out}");
        assert!(out["p99_ms"].as_f64().unwrap() >= out["p50_ms"].as_f64().unwrap());
        let raw = &out["raw"];
        if backend == "production" {
            assert!(raw.is_null(), "{out}");
            continue;
        }
        // The raw client returns once its consumers acknowledged every entry.
        assert!(
            raw["tool"].as_str().unwrap().contains("XREADGROUP"),
            "{out}"
        );
        assert!(raw["events_per_s"].as_f64().unwrap() > 0.0, "{out}");
        let command = raw["command"].as_str().unwrap();
        assert!(
            command.contains("XADD pipelines of 200 to 16 streams")
                && command.contains("COUNT 256"),
            "{command}"
        );
        let prefix = out["prefix"].as_str().unwrap();
        assert_eq!(redis_state(prefix).await.1, 0, "the run's keys are deleted");
    }
}

#[tokio::test]
async fn relay_moves_the_outbox_to_redis_and_keep_leaves_it_there() {
    let cwd = TempDir::new().unwrap();
    let args = [
        "--backend",
        "production",
        "--mode",
        "relay",
        "--events",
        "2500",
        "--batch",
        "1000",
        "--keep",
        "--json",
    ];
    let out = json(edubus(cwd.path(), true, &args));
    assert_eq!(out["mode"], "relay");
    assert_eq!(out["deliveries"], 2500, "{out}");
    assert_eq!(out["raw"]["tool"], "redis-benchmark");
    let command = out["raw"]["command"].as_str().unwrap();
    assert!(command.contains("-n 2500 -P 1000 -c 4 -r 16"), "{command}");
    let (prefix, schema) = (
        out["prefix"].as_str().unwrap(),
        out["schema"].as_str().unwrap(),
    );
    assert_eq!(redis_state(prefix).await.0, 2500, "every event is in Redis");
    let client = edubus_testsupport::postgres().connect().await;
    let counts = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {schema}.events),
                        (SELECT count(*) FROM {schema}.events e JOIN {schema}.relay_partitions r
                         ON e.partition = r.partition AND e.position > r.relayed_upto)"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(counts.get::<_, i64>(0), 2500);
    assert_eq!(counts.get::<_, i64>(1), 0, "the outbox is drained");
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    let mut conn = edubus_testsupport::redis().connect().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}
