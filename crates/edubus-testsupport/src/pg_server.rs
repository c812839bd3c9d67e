//! A throwaway PostgreSQL cluster made by `initdb` and run by `pg_ctl` from the installed binaries.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::process::{
    self, INSTALL_HINT, StartError, Watchdog, argv, find_program, is_root, log_len,
};

/// The PostgreSQL cluster shared by every test of this test binary, started on first use.
///
/// Tests share it safely through [`PgServer::schema`] or [`PgServer::fresh_database`]. It runs
/// with `fsync=off` and is stopped, its directory removed, when the binary exits.
pub fn postgres() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(PgServer::start)
}

/// How to run a private cluster; `Default` is what the shared cluster uses.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    fsync: bool,
}

impl PgOptions {
    /// Keeps `fsync` on (the shared cluster turns it off for speed), for durability tests.
    pub fn with_fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }
}

/// Trust authentication, superuser `postgres`, no fsync of the new files, a fixed encoding and
/// locale (the environment's locale may not be installed).
const INITDB_ARGS: [&str; 8] = [
    "-A",
    "trust",
    "-U",
    "postgres",
    "--no-sync",
    "-E",
    "UTF8",
    "--no-locale",
];

/// The `initdb` and `pg_ctl` binaries, and whether to run them as the `postgres` user.
#[derive(Debug)]
struct Tools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    /// `runuser`, when this process is root: initdb and postgres refuse to run as root.
    runuser: Option<PathBuf>,
}

/// A running PostgreSQL cluster on 127.0.0.1, superuser `postgres`, trust authentication.
#[derive(Debug)]
pub struct PgServer {
    options: PgOptions,
    tools: Tools,
    port: u16,
    dir: TempDir,
    running: bool,
    watchdog: Option<Watchdog>,
}

impl PgServer {
    /// Starts a private cluster with default options (`fsync=off`).
    ///
    /// # Panics
    /// If the PostgreSQL binaries are missing or the cluster does not start.
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    /// Creates and starts a private cluster, stopped when dropped or when the test binary exits.
    ///
    /// # Panics
    /// If the PostgreSQL binaries are missing or the cluster does not start; the message quotes
    /// the server log.
    pub fn start_with(options: PgOptions) -> Self {
        let tools = Tools::find();
        let dir = tempfile::Builder::new()
            .prefix("edubus-pg-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for PostgreSQL: {err}"));
        let mut server = Self {
            options,
            tools,
            port: 0,
            dir,
            running: false,
            watchdog: None,
        };
        server.hand_dir_to_postgres();
        let stop = argv(&server.stop_command());
        server.watchdog = Some(Watchdog::spawn(server.dir.path(), &stop));
        server.initdb();
        server.start_on_a_free_port();
        server
    }

    /// The connection URL, `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The loopback TCP port the cluster listens on; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's temporary directory: data in `data/`, the log in `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the cluster with `pg_ctl -m immediate stop`, as a crash would (no checkpoint).
    ///
    /// # Panics
    /// If `pg_ctl` reports a failure.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let output = self.run_tool(self.stop_command());
        if !output.status.success() {
            panic!("pg_ctl stop failed: {}", describe(&output));
        }
    }

    /// Stops the cluster and starts it again on the same port and directory, waiting until ready.
    ///
    /// # Panics
    /// If the cluster does not come back, for instance because another process took its port.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.launch() {
            panic!("PostgreSQL did not restart on port {}: {err}", self.port);
        }
    }

    /// Starts on a free port, retrying on a port collision.
    fn start_on_a_free_port(&mut self) {
        process::start_on_a_free_port("PostgreSQL", |port| {
            self.port = port;
            self.launch()
        });
    }

    /// Runs `pg_ctl start -w`, which returns once the server accepts connections.
    fn launch(&mut self) -> Result<(), StartError> {
        let log = self.log_path();
        let since = log_len(&log);
        let fsync = if self.options.fsync { "on" } else { "off" };
        // pg_ctl passes -o through a shell: quote the directory.
        let settings = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync={fsync}",
            self.port,
            self.dir.path().display()
        );
        let mut command = self.pg_command(&self.tools.pg_ctl);
        command
            .arg("-D")
            .arg(self.data_dir())
            .args([OsStr::new("-o"), settings.as_ref()]);
        command
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        let output = self.run_tool(command);
        if output.status.success() {
            self.running = true;
            return Ok(());
        }
        Err(StartError::from_log(
            format!("pg_ctl start failed: {}", describe(&output)),
            &log,
            since,
        ))
    }

    /// Creates the cluster in `data/`.
    fn initdb(&mut self) {
        let mut command = self.pg_command(&self.tools.initdb);
        command.arg("-D").arg(self.data_dir()).args(INITDB_ARGS);
        let output = self.run_tool(command);
        if !output.status.success() {
            panic!("initdb failed: {}", describe(&output));
        }
    }

    /// As root, gives the directory to `postgres`: initdb and postgres refuse to run as root.
    fn hand_dir_to_postgres(&self) {
        if self.tools.runuser.is_none() {
            return;
        }
        let output = run(Command::new("chown").arg("postgres:").arg(self.dir.path()));
        if !output.status.success() {
            panic!(
                "running as root, the test cluster must belong to the `postgres` user, but \
                 `chown postgres: {}` failed: {}; {INSTALL_HINT}",
                self.dir.path().display(),
                describe(&output)
            );
        }
    }

    /// Runs initdb or pg_ctl to completion; the watchdog lets it finish before cleaning up.
    fn run_tool(&mut self, mut command: Command) -> Output {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().unwrap_or_else(|err| {
            panic!(
                "cannot run {:?}: {err}; {INSTALL_HINT}",
                command.get_program()
            )
        });
        if let Some(watchdog) = self.watchdog.as_mut() {
            watchdog.await_helper(child.id());
        }
        child
            .wait_with_output()
            .unwrap_or_else(|err| panic!("lost track of {:?}: {err}", command.get_program()))
    }

    fn stop_command(&self) -> Command {
        let mut command = self.pg_command(&self.tools.pg_ctl);
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        command
    }

    /// A command for a PostgreSQL binary, through `runuser -u postgres --` when root.
    fn pg_command(&self, program: &Path) -> Command {
        let mut command = match &self.tools.runuser {
            Some(runuser) => {
                let mut command = Command::new(runuser);
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The test's working directory may not be readable by `postgres`.
        command.current_dir(self.dir.path());
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let _ = run(&mut self.stop_command());
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
    }
}

impl Tools {
    /// Finds the binaries and, when root, `runuser`.
    ///
    /// # Panics
    /// With what is missing and how to install it.
    fn find() -> Self {
        let Some(bin) = debian_bin_dir().or_else(pg_config_bin_dir) else {
            panic!(
                "PostgreSQL is not installed: no /usr/lib/postgresql/<major>/bin/initdb and no \
                 `pg_config --bindir` holding `initdb` and `pg_ctl`; {INSTALL_HINT}"
            );
        };
        let runuser = is_root().then(|| {
            find_program("runuser").unwrap_or_else(|| {
                panic!("running as root needs `runuser` (util-linux) to run initdb as `postgres`")
            })
        });
        Self {
            initdb: bin.join("initdb"),
            pg_ctl: bin.join("pg_ctl"),
            runuser,
        }
    }
}

/// Whether `dir` holds both `initdb` and `pg_ctl`.
fn has_tools(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// `/usr/lib/postgresql/<major>/bin` for the highest major version installed.
fn debian_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// The directory `pg_config --bindir` names, when it holds the tools.
fn pg_config_bin_dir() -> Option<PathBuf> {
    let output = Command::new(find_program("pg_config")?)
        .arg("--bindir")
        .output()
        .ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && has_tools(&bin)).then_some(bin)
}

/// Runs a command to completion, capturing its output.
fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null());
    command.output().unwrap_or_else(|err| {
        panic!(
            "cannot run {:?}: {err}; {INSTALL_HINT}",
            command.get_program()
        )
    })
}

/// Exit status and output of a finished command, for panic messages.
fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}
