//! Throwaway streaming replication for tests and benchmarks: [`Replica::start`] makes a new
//! primary cluster (`initdb`) and a hot standby of it (`pg_basebackup -R`), each on a free
//! port of 127.0.0.1, and dropping the [`Replica`] stops both and removes their files, also
//! when the test panics.
//!
//! Robust where CI runs: PostgreSQL refuses to run as root, so as root every server binary
//! runs as the `postgres` user (`runuser -u postgres --`) on a directory it owns. Parallel
//! tests never collide: each replica has its own directory and sockets, and a port taken by
//! someone else between the probe and the server's bind is retried with another. A process
//! that was killed (and so never dropped its replicas) leaves directories named after its
//! pid; the next [`Replica::start`] on the machine stops their servers and removes them.
//!
//! The binaries are found in `CHRONIK_PG_BIN`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/<version>/bin`.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a replica could not be made; the message says which step failed and its output.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReplicaError(String);

/// Directory name prefix; the creating process's pid follows it.
const PREFIX: &str = "chronik-replica-";
/// Tries of a server start with a fresh port when the port was taken meanwhile.
const PORT_TRIES: usize = 8;
/// The primary's settings, at its first start and at [`Replica::start_primary`].
const PRIMARY_SETTINGS: &str = "-c wal_level=replica -c max_wal_senders=5 -c fsync=off";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A primary cluster and a hot standby streaming from it, both running until dropped.
#[derive(Debug)]
pub struct Replica {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    primary_port: u16,
    standby_port: u16,
}

impl Replica {
    /// Makes and starts both clusters (a few seconds), after removing what killed
    /// processes left.
    ///
    /// # Errors
    /// [`ReplicaError`] naming the failed step (binaries not found, `initdb`, a start,
    /// `pg_basebackup`), with its output and the server's log; nothing is left running.
    pub fn start() -> Result<Self, ReplicaError> {
        reap_stale();
        let bin = bin_dir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with the same pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ReplicaError(format!("cannot create {}: {e}", dir.display())))?;
        let mut replica = Self {
            dir,
            bin,
            as_postgres,
            primary_port: 0,
            standby_port: 0,
        };
        // From here on, dropping `replica` cleans up whatever was started.
        replica.make()?;
        Ok(replica)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` of the primary (trust auth).
    #[must_use]
    pub fn primary_url(&self) -> String {
        url(self.primary_port)
    }

    /// The URL of the hot standby (read-only, in recovery).
    #[must_use]
    pub fn standby_url(&self) -> String {
        url(self.standby_port)
    }

    /// The primary's port.
    #[must_use]
    pub fn primary_port(&self) -> u16 {
        self.primary_port
    }

    /// The standby's port.
    #[must_use]
    pub fn standby_port(&self) -> u16 {
        self.standby_port
    }

    /// Stops the primary (`pg_ctl stop -m fast`: its sessions are ended, as in a restart
    /// or an outage); the standby keeps trying to reconnect.
    ///
    /// # Errors
    /// [`ReplicaError`] when `pg_ctl stop` fails.
    pub fn stop_primary(&self) -> Result<(), ReplicaError> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("primary"))
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut c, "pg_ctl stop (primary)")
    }

    /// Starts the primary again, on its port (its URL stays valid).
    ///
    /// # Errors
    /// [`ReplicaError`] when it does not start (e.g. someone took its port meanwhile),
    /// with the server's log.
    pub fn start_primary(&self) -> Result<(), ReplicaError> {
        self.start_on(
            &self.dir.join("primary"),
            "primary",
            PRIMARY_SETTINGS,
            self.primary_port,
        )
        .map_err(|(e, log)| ReplicaError(format!("{e}; log:\n{}", tail(&log))))
    }

    fn make(&mut self) -> Result<(), ReplicaError> {
        if self.as_postgres {
            let dir = self.dir.display().to_string();
            run(
                Command::new("chown").args(["postgres:postgres", &dir]),
                "chown",
            )?;
        }
        set_private(&self.dir)?;
        let primary = self.dir.join("primary");
        let standby = self.dir.join("standby");
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&primary)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        run(&mut initdb, "initdb")?;
        self.primary_port = self.start_server(&primary, "primary", PRIMARY_SETTINGS)?;
        let mut base = self.command("pg_basebackup");
        base.args(["-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.primary_port.to_string()])
            .arg("-D")
            .arg(&standby)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(&mut base, "pg_basebackup")?;
        self.standby_port =
            self.start_server(&standby, "standby", "-c hot_standby=on -c fsync=off")?;
        Ok(())
    }

    /// A server binary, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the cluster in `data` on a free port (another one when that port was taken
    /// meanwhile) and returns the port.
    fn start_server(&self, data: &Path, name: &str, settings: &str) -> Result<u16, ReplicaError> {
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            let port = free_port()?;
            match self.start_on(data, name, settings, port) {
                Ok(()) => return Ok(port),
                Err((e, text)) => {
                    last = format!("{e}; log:\n{}", tail(&text));
                    if !text.contains("could not bind") && !text.contains("in use") {
                        break;
                    }
                }
            }
        }
        Err(ReplicaError(format!(
            "cannot start the {name} cluster: {last}"
        )))
    }
}

impl Replica {
    /// Starts the cluster in `data` on `port`; when it fails, the error and its log.
    fn start_on(
        &self,
        data: &Path,
        name: &str,
        settings: &str,
        port: u16,
    ) -> Result<(), (ReplicaError, String)> {
        let log = self.dir.join(format!("{name}.log"));
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {settings}",
            self.dir.display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(&mut start, &format!("pg_ctl start ({name})"))
            .map_err(|e| (e, std::fs::read_to_string(&log).unwrap_or_default()))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        for name in ["standby", "primary"] {
            stop(&self.bin, self.as_postgres, &self.dir.join(name));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// `pg_ctl stop -m immediate` on `data` if a server runs there.
fn stop(bin: &Path, as_postgres: bool, data: &Path) {
    if !data.join("postmaster.pid").exists() {
        return;
    }
    let path = bin.join("pg_ctl");
    let mut c = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    c.arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"]);
    if let Err(e) = run(&mut c, "pg_ctl stop") {
        eprintln!("{e}");
    }
}

/// Stops and removes the replicas of processes that are gone (killed before their drop).
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // Without /proc nothing tells a live owner from a dead one: leave everything.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(bin) = bin_dir() else { return };
    let as_postgres = is_root();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        for data in ["standby", "primary"] {
            stop(&bin, as_postgres, &dir.join(data));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn bin_dir() -> Result<PathBuf, ReplicaError> {
    if let Some(dir) = std::env::var_os("CHRONIK_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        ReplicaError(
            "PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are not found: \
             install them (Debian: postgresql) or set CHRONIK_PG_BIN to their directory"
                .to_owned(),
        )
    })
}

fn set_private(dir: &Path) -> Result<(), ReplicaError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ReplicaError(format!("cannot restrict {}: {e}", dir.display())))
}

fn free_port() -> Result<u16, ReplicaError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ReplicaError(format!("cannot find a free port: {e}")))
}

/// Runs `c`; its output becomes the error when it fails.
fn run(c: &mut Command, what: &str) -> Result<(), ReplicaError> {
    let out = c
        .output()
        .map_err(|e| ReplicaError(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = format!("{what} failed ({})", out.status);
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        if !text.trim().is_empty() {
            let _ = write!(message, ": {}", tail(&text));
        }
    }
    Err(ReplicaError(message))
}

/// The last lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
