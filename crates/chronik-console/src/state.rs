//! What every handler shares.

use std::sync::Arc;

use chronik_core::UpcasterRegistry;
use chronik_postgres::PgEventStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::Rebuilt;

/// The console's shared state (cheap to clone).
#[derive(Clone)]
pub(crate) struct State(pub(crate) Arc<Inner>);

impl std::ops::Deref for State {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(crate) struct Inner {
    pub(crate) store: PgEventStore,
    pub(crate) upcasters: Option<Arc<UpcasterRegistry>>,
    pub(crate) binary: String,
    pub(crate) admin_token: Option<String>,
    pub(crate) rebuildable: Vec<String>,
    pub(crate) rebuilds: mpsc::Sender<RebuildRequest>,
    pub(crate) prometheus: Result<metrics_exporter_prometheus::PrometheusHandle, String>,
    /// `true` once the server is shutting down: live tails end then, or a graceful
    /// shutdown would wait for them forever.
    pub(crate) stopping: Arc<watch::Sender<bool>>,
}

/// One rebuild asked for by a request, answered on `reply`.
#[derive(Debug)]
pub(crate) struct RebuildRequest {
    pub(crate) name: String,
    pub(crate) reply: oneshot::Sender<Result<Rebuilt, String>>,
}

impl Inner {
    /// Completes once the server is shutting down.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut stopping = self.stopping.subscribe();
        async move {
            // An error: the sender is gone, so is the server.
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Whether `presented` is the admin token (compared in constant time for equal
    /// lengths); always false when the console has none.
    pub(crate) fn token_matches(&self, presented: &str) -> bool {
        let Some(token) = &self.admin_token else {
            return false;
        };
        let (a, b) = (token.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
