//! Ctrl-C (SIGINT) for the commands that stop cleanly on it: listened for before they say
//! they have started, so that one sent right after the start line is never lost (nor does it
//! kill the process before it can say where it stopped).

use std::io;

/// Ctrl-C (SIGINT), listened for from the moment [`Interrupts::listen`] returns.
#[cfg(unix)]
pub(crate) struct Interrupts(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Interrupts {
    pub(crate) fn listen() -> io::Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map(Self)
    }

    /// Waits for the next Ctrl-C; `false` when no more can arrive.
    pub(crate) async fn next(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}

/// Ctrl-C, listened for from the first wait on.
#[cfg(not(unix))]
pub(crate) struct Interrupts;

#[cfg(not(unix))]
impl Interrupts {
    pub(crate) fn listen() -> io::Result<Self> {
        Ok(Self)
    }

    /// Waits for the next Ctrl-C; `false` when no more can arrive.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
