//! A throwaway `nats-server` for tests and the torture harness: [`NatsServer::start`] runs
//! one on a free port of 127.0.0.1 (with JetStream, its store in a directory of its own, or
//! without JetStream), [`NatsServer::stop`] and [`NatsServer::run`] restart it on the same
//! port and store (so that every client's connection drops), and dropping it kills it and
//! removes its files.
//!
//! Needs only `nats-server` on the `PATH` (`.ci/run` installs Debian's package). Uses the
//! standard library only, so that a binary may include this file by `#[path]` without a
//! dependency on the testkit (as the torture harness does).

use std::io::{self, BufRead as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A `nats-server` of its own, running until dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// The JetStream store (`-sd`), `None` without JetStream.
    dir: Option<PathBuf>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a JetStream store of its own, and returns
    /// once it accepts connections.
    ///
    /// # Errors
    /// When `nats-server` cannot be run or exits before it is ready.
    pub fn start() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "chronik-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Self::launch(Some(dir))
    }

    /// Starts a `nats-server` without JetStream on a free port.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub fn start_without_jetstream() -> io::Result<Self> {
        Self::launch(None)
    }

    fn launch(dir: Option<PathBuf>) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        // From here on, dropping `server` removes its directory.
        server.run()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server as a restart does (SIGTERM: it shuts down cleanly, closing every
    /// connection) and waits until it has exited; [`NatsServer::run`] starts it again.
    /// Does nothing when it is not running.
    ///
    /// # Errors
    /// When it cannot be signalled.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            let _ = child.kill();
        }
        child.wait()?;
        Ok(())
    }

    /// Starts the stopped server on its port (and store), returning once it accepts
    /// connections.
    ///
    /// # Errors
    /// When `nats-server` cannot be run or exits before it is ready.
    pub fn run(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(dir) = &self.dir {
            command.arg("-js").arg("-sd").arg(dir);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run nats-server (.ci/run installs it): {e}"),
                )
            })?;
        let Some(stderr) = child.stderr.take() else {
            return Err(io::Error::other("nats-server's stderr is not piped"));
        };
        let mut lines = io::BufReader::new(stderr).lines();
        // nats-server logs to stderr and says when it accepts connections.
        let mut log = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Server is ready") => break,
                Some(Ok(line)) => log.push(line),
                Some(Err(_)) | None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::other(format!(
                        "nats-server exited before it was ready:\n{}",
                        log.join("\n")
                    )));
                }
            }
        }
        // Keep draining its log, so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
