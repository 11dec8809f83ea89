//! `console`: the web console and its JSON API ([`chronik_console`]) for this binary's
//! store, able to rebuild the projections it registers (shadow rebuilds, so the live read
//! model keeps serving) when started with an admin token.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use chronik_console::{Console, Rebuild, Rebuilt};
use chronik_postgres::PgEventStore;

use crate::interrupt::Interrupts;
use crate::{Registry, backend, chain};

/// Rebuilds through the registrations, on the console's own task.
struct Rebuilds<'a> {
    registry: &'a Registry,
    store: &'a PgEventStore,
    /// Raised by Ctrl-C: a rebuild in progress stops at its next batch boundary, where it
    /// cleans up (its shadow table and checkpoint are dropped).
    stop: Arc<AtomicBool>,
}

impl Rebuild for Rebuilds<'_> {
    async fn rebuild(&self, name: &str) -> Result<Rebuilt, String> {
        let Some(projection) = self.registry.projections.iter().find(|p| p.name == name) else {
            return Err(format!("{name:?} is not registered"));
        };
        backend::ensure_read_models(self.registry, self.store)
            .await
            .map_err(|e| chain(&e))?;
        let mut progress = |_: &chronik_postgres::RebuildProgress| {
            if self.stop.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let done = (projection.rebuild)(
            self.store,
            self.registry.upcasters.clone(),
            crate::RebuildKind::Shadow,
            1_000,
            &mut progress,
        )
        .await
        .map_err(|e| chain(&anyhow::Error::new(e)))?;
        Ok(Rebuilt::new(done.scanned, done.handled))
    }
}

/// Serves the console on `listen` until Ctrl-C; prints the address it listens on.
pub(crate) async fn run(
    registry: &Registry,
    store: PgEventStore,
    listen: &str,
    admin_token: Option<String>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let rebuilds_on = admin_token.as_deref().is_some_and(|t| !t.is_empty());
    // Before the start line: a Ctrl-C right after it stops the console as any other does.
    let mut interrupts = Interrupts::listen().context("cannot listen for Ctrl-C")?;
    let mut console = Console::new(store.clone())
        .binary(registry.binary.clone())
        .admin_token(admin_token)
        .rebuildable(registry.projections.iter().map(|p| p.name.clone()));
    if let Some(upcasters) = &registry.upcasters {
        console = console.upcasters(upcasters.clone());
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{} console listening on http://{address}/ (rebuilds {}; Ctrl-C stops it)",
            registry.binary,
            if rebuilds_on {
                "allowed with the admin token"
            } else {
                "off"
            }
        )?;
        out.flush()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilds = Rebuilds {
        registry,
        store: &store,
        stop: Arc::clone(&stop),
    };
    let shutdown = async move {
        if !interrupts.next().await {
            std::future::pending::<()>().await;
        }
        stop.store(true, Ordering::SeqCst);
        let _ = writeln!(
            std::io::stderr(),
            "interrupted: stopping the console: its live tails are ended, the requests in flight \
             answered, and a rebuild in progress stops at its next batch boundary and cleans up \
             (Ctrl-C again quits at once)"
        );
        tokio::spawn(async move {
            if interrupts.next().await {
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        });
    };
    console
        .serve(listener, &rebuilds, shutdown)
        .await
        .context("the console's server failed")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "console on http://{address}/ stopped")?;
    Ok(())
}
