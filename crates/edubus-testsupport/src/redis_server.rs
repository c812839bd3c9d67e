//! A real `redis-server` child process on a free loopback port, in its own temporary directory.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, INSTALL_HINT, StartError, Watchdog, log_len};

/// How long a server may take to answer PING after it was spawned (loading a large AOF counts).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a reply may take on connections from `connect()`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `stop()` waits for a clean shutdown before killing the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis server shared by every test of this test binary, started on first use.
///
/// Tests share it safely by keeping their keys under [`unique_prefix`](crate::unique_prefix).
/// It runs without persistence and is stopped, its directory removed, when the binary exits.
pub fn redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// How to run a private Redis server; `Default` is what the shared server uses.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    append_only: bool,
}

impl RedisOptions {
    /// Turns the append-only file on, fsynced on every write, so data survives `restart()`.
    pub fn with_append_only(mut self, on: bool) -> Self {
        self.append_only = on;
        self
    }
}

/// A running `redis-server`, a child of the test process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    options: RedisOptions,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl RedisServer {
    /// Starts a private server with default options (no persistence).
    ///
    /// # Panics
    /// If `redis-server` is missing or does not start; the message quotes its log.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a private server, stopped when dropped or when the test binary exits.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not start; the message quotes its log.
    pub fn start_with(options: RedisOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edubus-redis-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for redis-server: {err}"));
        let watchdog = Watchdog::spawn(dir.path(), &[]);
        let mut server = Self {
            options,
            port: 0,
            dir,
            child: None,
            watchdog: Some(watchdog),
        };
        server.start_on_a_free_port();
        server
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback TCP port the server listens on; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (`--dir`), where an append-only file would live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running server, `None` after `stop()`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Opens a new multiplexed connection; replies may take 30 s (the driver's 500 ms default
    /// would break `BLOCK` reads and flake on a loaded machine).
    ///
    /// # Panics
    /// If the server does not accept the connection.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        let url = self.url();
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|err| panic!("invalid test Redis URL {url}: {err}"));
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to the test Redis at {url}: {err}"))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            self.watch(None);
        }
    }

    /// Kills the server with SIGKILL, as a crash would: only fsynced writes survive.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.watch(None);
        }
    }

    /// Stops the server and starts it again on the same port and directory, waiting until ready.
    ///
    /// # Panics
    /// If the server does not come back, for instance because another process took its port.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.launch() {
            panic!("redis-server did not restart on port {}: {err}", self.port);
        }
    }

    /// Starts on a free port, retrying on a port collision.
    fn start_on_a_free_port(&mut self) {
        process::start_on_a_free_port("redis-server", |port| {
            self.port = port;
            self.launch()
        });
    }

    /// Spawns `redis-server` and waits until it answers PING as itself.
    fn launch(&mut self) -> Result<(), StartError> {
        let since = log_len(&self.log_path());
        let child = self.spawn();
        let pid = child.id();
        self.child = Some(child);
        self.watch(Some(pid));
        self.wait_ready(pid, since)
    }

    fn spawn(&self) -> Child {
        let log = self.open_log();
        let log_err = log
            .try_clone()
            .expect("cannot duplicate the redis-server log handle");
        let append_only = if self.options.append_only {
            "yes"
        } else {
            "no"
        };
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", append_only, "--daemonize", "no", "--dir"])
            .arg(self.dir.path());
        if self.options.append_only {
            command.args(["--appendfsync", "always"]);
        }
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        command.spawn().unwrap_or_else(|err| match err.kind() {
            ErrorKind::NotFound => {
                panic!("`redis-server` is not installed (not on PATH); {INSTALL_HINT}")
            }
            _ => panic!("cannot run `redis-server`: {err}; {INSTALL_HINT}"),
        })
    }

    /// Polls until the server answers PING and reports `pid`, exits, or times out.
    fn wait_ready(&mut self, pid: u32, since: u64) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if answers_as(self.port, pid) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("launch() just stored the child");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.watch(None);
                return Err(self.failure(format!("redis-server exited ({status})"), since));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.failure(format!("no PING answer within {READY_TIMEOUT:?}"), since));
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn failure(&self, what: String, since: u64) -> StartError {
        StartError::from_log(what, &self.log_path(), since)
    }

    fn watch(&mut self, pid: Option<u32>) {
        if let Some(watchdog) = self.watchdog.as_mut() {
            watchdog.watch_pid(pid);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn open_log(&self) -> File {
        let path = self.log_path();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
    }
}

/// Sends SIGTERM through `sh` (std only sends SIGKILL) and waits; SIGKILL after the timeout.
fn terminate(child: &mut Child) {
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -TERM \"$1\"", "sh", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether the server on `port` answers PING and is the process `pid`, not a stranger that
/// grabbed the port; a server still loading its append-only file answers `-LOADING`.
fn answers_as(port: u16, pid: u32) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\nINFO server\r\n").is_err() {
        return false;
    }
    let reply = read_until_pid(&mut stream);
    reply.starts_with("+PONG\r\n") && process_id(&reply) == Some(pid)
}

/// Reads a PING + INFO reply until its `process_id:` line is complete (or the stream ends).
fn read_until_pid(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut buffer = [0_u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut buffer) {
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if process_id(&text).is_some() {
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// The `process_id:N` field of an `INFO server` reply, once its line is complete.
fn process_id(reply: &str) -> Option<u32> {
    let (_, rest) = reply.split_once("\r\nprocess_id:")?;
    let (value, _) = rest.split_once("\r\n")?;
    value.parse().ok()
}
