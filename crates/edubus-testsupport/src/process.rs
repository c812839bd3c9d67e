//! Process plumbing shared by both servers: free ports, the exit watchdog, logs, program lookup.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// What to do when a server binary is missing, appended to every such panic message.
pub(crate) const INSTALL_HINT: &str = "the tests need real servers and never skip: \
    `./scripts/test.sh` installs the Debian packages `redis-server` and `postgresql` \
    (by hand: `apt-get install redis-server postgresql`)";

/// How many fresh ports a first start tries before giving up on collisions.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// How many log lines a start failure quotes.
const LOG_TAIL_LINES: usize = 30;

/// Why a server did not start, described in full (with its log tail) for the panic message.
#[derive(Debug)]
pub(crate) enum StartError {
    /// Another process took the port between choosing it and binding it: try another port.
    PortInUse(String),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PortInUse(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

impl StartError {
    /// Describes a failure with the log lines the failed attempt wrote, and classifies it.
    pub(crate) fn from_log(what: String, log: &Path, since: u64) -> Self {
        let fresh = read_log(log, since);
        let message = format!(
            "{what}\n--- last lines of {} ---\n{}",
            log.display(),
            tail(&fresh, LOG_TAIL_LINES)
        );
        if fresh.contains("Address already in use") {
            Self::PortInUse(message)
        } else {
            Self::Failed(message)
        }
    }
}

/// A loopback port that was free a moment ago: bound to 127.0.0.1:0, read, and released.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|err| panic!("cannot bind 127.0.0.1:0 to find a free port: {err}"));
    listener
        .local_addr()
        .unwrap_or_else(|err| panic!("cannot read the address bound to find a free port: {err}"))
        .port()
}

/// Starts a server on fresh free ports until one start succeeds (another process can take a
/// port in between): `launch` sets the port, starts the server and waits until it is ready.
pub(crate) fn start_on_a_free_port(
    name: &str,
    mut launch: impl FnMut(u16) -> Result<(), StartError>,
) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        match launch(port) {
            Ok(()) => return,
            Err(StartError::PortInUse(_)) if attempt < PORT_ATTEMPTS => continue,
            Err(err) => panic!("{name} did not start on port {port}: {err}"),
        }
    }
}

/// The size of a log file now, so a later read can take only what was written after.
pub(crate) fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|meta| meta.len()).unwrap_or(0)
}

/// The log text written since byte `since` (lossy: logs are not always UTF-8).
fn read_log(log: &Path, since: u64) -> String {
    match std::fs::read(log) {
        Ok(bytes) => {
            let start = usize::try_from(since).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(err) => format!("(cannot read {}: {err})", log.display()),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds `name` on `PATH`, then in the sbin and bin directories a root shell would search.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs with effective uid 0 (read from `/proc`, as `unsafe` is forbidden).
pub(crate) fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().nth(1) == Some("0"))
}

/// The watchdog script: `$1` is the server directory, the other arguments a stop command.
///
/// It reads lines `kill PID` (the server to kill; `kill` alone: none) and `wait PID` (a startup
/// helper such as initdb, which would recreate the directory if still running when it is
/// removed). It ignores terminal signals so a Ctrl-C that ends the test binary leaves it working.
const WATCHDOG_SCRIPT: &str = r#"trap '' INT HUP QUIT TERM
dir=$1; shift
victim=; helper=
while read -r verb pid; do
  case $verb in kill) victim=$pid ;; wait) helper=$pid ;; esac
done
i=0
while [ -n "$helper" ] && [ "$i" -lt 1200 ] && grep -qs '^State:[[:space:]]*[^Z]' "/proc/$helper/status"; do
  sleep 0.05; i=$((i + 1))
done
if [ -n "$victim" ]; then kill -9 "$victim" 2>/dev/null; fi
if [ "$#" -gt 0 ]; then "$@" >/dev/null 2>&1; fi
rm -rf "$dir"
"#;

/// A `sh` process that stops a server and removes its directory once the test binary is gone.
///
/// Test binaries run no static destructors, so the shared servers cannot stop themselves. The
/// watchdog blocks reading a pipe whose only writer is this process (std opens pipes
/// close-on-exec, so no other child inherits it): it reads end-of-file exactly when the test
/// binary exits, however it exits, then waits for a running startup helper, kills the server
/// pid it was last sent, runs the stop command and deletes the directory.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog for the server in `dir`; `stop` is a command to run before deleting it.
    pub(crate) fn spawn(dir: &Path, stop: &[OsString]) -> Self {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("edubus-testsupport-watchdog")
            .arg(dir)
            .args(stop)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start the `sh` watchdog for test servers: {err}"));
        let stdin = child
            .stdin
            .take()
            .expect("the watchdog's stdin was requested as a pipe");
        Self { child, stdin }
    }

    /// Tells the watchdog which server pid to kill when the test binary exits (`None`: none).
    pub(crate) fn watch_pid(&mut self, pid: Option<u32>) {
        let pid = pid.map(|pid| pid.to_string()).unwrap_or_default();
        self.send(&format!("kill {pid}"));
    }

    /// Tells the watchdog to let the startup helper `pid` finish before cleaning up.
    pub(crate) fn await_helper(&mut self, pid: u32) {
        self.send(&format!("wait {pid}"));
    }

    fn send(&mut self, line: &str) {
        // A dead watchdog only means no cleanup at exit; the server itself still works.
        let _ = writeln!(self.stdin, "{line}");
    }

    /// Ends the watchdog without cleaning up: the owner is stopping the server itself.
    pub(crate) fn dismiss(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The program and arguments of `command`, to hand to the watchdog as its stop command.
pub(crate) fn argv(command: &Command) -> Vec<OsString> {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsString::from)
        .collect()
}
