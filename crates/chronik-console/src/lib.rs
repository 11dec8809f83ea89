//! The operator console of a chronik store on PostgreSQL: a small server-rendered web
//! console and the JSON API it uses, served by `chronik console` (and by every service's
//! operator binary, for its own domain).
//!
//! ```no_run
//! # async fn demo(store: chronik_postgres::PgEventStore) -> std::io::Result<()> {
//! use chronik_console::{Console, NoRebuilds};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! Console::new(store)
//!     .serve(listener, &NoRebuilds, std::future::pending())
//!     .await
//! # }
//! ```
//!
//! Pages: `/` (overview), `/streams` (search by id prefix and category, a page at a time),
//! `/streams/{id}` (a stream's events), `/events/{id}` (an event and its causation chain),
//! `/projections` (status, parked events, rebuild), `/tail` (the live feed). The JSON API
//! under `/api/` serves the same facts; `/api/tail` is a server-sent event stream.
//! `/metrics` is the Prometheus text format: this process's append counters and latency
//! (`chronik-postgres`'s `metrics` feature) and the gauges read from the store
//! ([`chronik_postgres::metrics::record_store_gauges`]).
//!
//! **Invariants:** every value that comes from the store (payloads, types, stream ids,
//! headers, error texts) is HTML-escaped before it reaches a page, and the page scripts
//! write what they receive as text, never as markup; the assets are embedded in the binary
//! (no request leaves the machine); a page that cannot reach the database answers 503 with
//! a banner saying so, never a blank page; a rebuild is refused unless the console was
//! given an admin token and the request carries it (`Authorization: Bearer TOKEN`); this
//! crate runs no SQL of its own.

mod api;
mod assets;
mod error;
mod html;
mod metrics;
mod pages;
mod state;
mod tail;
mod view;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use chronik_core::UpcasterRegistry;
use chronik_postgres::PgEventStore;
use tokio::sync::{mpsc, oneshot};

use state::{Inner, RebuildRequest, State};

/// Most items one API page returns (`limit`).
pub const MAX_PAGE: u32 = 500;
/// Items an API page returns when the request names no `limit`.
pub const DEFAULT_PAGE: u32 = 50;

/// What a finished rebuild reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rebuilt {
    /// Feed events examined.
    pub scanned: u64,
    /// Events handed to the projection.
    pub handled: u64,
}

impl Rebuilt {
    /// A report of `scanned` events examined, `handled` of them applied.
    #[must_use]
    pub fn new(scanned: u64, handled: u64) -> Self {
        Self { scanned, handled }
    }
}

/// How the console rebuilds a projection it was told is rebuildable
/// ([`Console::rebuildable`]): what an operator binary registered.
///
/// Rebuilds run one at a time, on the task that runs [`Console::serve`] (or
/// [`Rebuilds::run`]), so an implementation may borrow from its caller.
pub trait Rebuild: Sync {
    /// Rebuilds projection `name` (one of the names given to [`Console::rebuildable`]).
    ///
    /// # Errors
    /// A message for the operator, shown as it is (escaped).
    fn rebuild(&self, name: &str) -> impl Future<Output = Result<Rebuilt, String>> + Send;
}

/// No projection can be rebuilt (a console that only looks).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRebuilds;

impl Rebuild for NoRebuilds {
    async fn rebuild(&self, name: &str) -> Result<Rebuilt, String> {
        Err(format!("projection {name:?} is not rebuildable here"))
    }
}

/// The console of one store: configure it, then [`Console::serve`].
#[derive(Debug)]
pub struct Console {
    store: PgEventStore,
    upcasters: Option<Arc<UpcasterRegistry>>,
    binary: String,
    admin_token: Option<String>,
    rebuildable: Vec<String>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Console {
    /// A console on `store`, reading events as stored (no upcasters), with rebuilds off.
    #[must_use]
    pub fn new(store: PgEventStore) -> Self {
        Self {
            store,
            upcasters: None,
            binary: "chronik".to_owned(),
            admin_token: None,
            rebuildable: Vec::new(),
            prometheus: None,
        }
    }

    /// The service's upcasters: events are shown as stored and as read through them.
    #[must_use]
    pub fn upcasters(mut self, registry: Arc<UpcasterRegistry>) -> Self {
        self.upcasters = Some(registry);
        self
    }

    /// The operator binary's name, shown in the pages and in the commands they suggest.
    #[must_use]
    pub fn binary(mut self, name: impl Into<String>) -> Self {
        self.binary = name.into();
        self
    }

    /// The token a rebuild request must carry (`Authorization: Bearer TOKEN`). Without
    /// one (the default), or with an empty one, every rebuild is refused.
    #[must_use]
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token.filter(|t| !t.is_empty());
        self
    }

    /// The projections the [`Rebuild`] given to [`Console::serve`] can rebuild.
    #[must_use]
    pub fn rebuildable(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.rebuildable = names.into_iter().collect();
        self
    }

    /// The Prometheus recorder this process installed, for `/metrics` to render. Without
    /// one the console installs its own as the process's `metrics` recorder when it
    /// starts; `/metrics` answers 503 when that fails because another is installed.
    #[must_use]
    pub fn prometheus(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// The console's routes, and the queue of rebuild requests they send, which
    /// [`Rebuilds::run`] must serve (for tests and for embedding in another server).
    pub fn into_parts(self) -> (Router, Rebuilds) {
        let (tx, rx) = mpsc::channel(8);
        let stopping = Arc::new(tokio::sync::watch::Sender::new(false));
        let state = State(Arc::new(Inner {
            store: self.store,
            upcasters: self.upcasters,
            binary: self.binary,
            admin_token: self.admin_token,
            rebuildable: self.rebuildable,
            rebuilds: tx,
            prometheus: self.prometheus.map_or_else(metrics::installed, Ok),
            stopping: Arc::clone(&stopping),
        }));
        (router(state), Rebuilds { rx, stopping })
    }

    /// Serves the console on `listener` until `shutdown` completes, running the rebuilds
    /// it is asked for through `rebuild`. Then it ends the live tails (which never end by
    /// themselves) and waits for the requests in flight, a rebuild's included.
    ///
    /// # Errors
    /// The listener's I/O errors.
    pub async fn serve<R: Rebuild>(
        self,
        listener: tokio::net::TcpListener,
        rebuild: &R,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (router, rebuilds) = self.into_parts();
        let stopping = Arc::clone(&rebuilds.stopping);
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        let server = axum::serve(listener, router).with_graceful_shutdown(shutdown);
        tokio::select! {
            result = server => result,
            () = rebuilds.run(rebuild) => Ok(()),
        }
    }
}

/// The queue of rebuild requests of a console's routes ([`Console::into_parts`]).
#[derive(Debug)]
pub struct Rebuilds {
    rx: mpsc::Receiver<RebuildRequest>,
    /// The routes' shutdown flag ([`Console::serve`] raises it).
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Rebuilds {
    /// Runs each requested rebuild through `rebuild`, one at a time, until the routes are
    /// dropped.
    pub async fn run<R: Rebuild>(mut self, rebuild: &R) {
        while let Some(request) = self.rx.recv().await {
            tracing::info!(projection = %request.name, "console: rebuild requested");
            let result = rebuild.rebuild(&request.name).await;
            // The requester may have gone away (closed the page): the rebuild still ran.
            let _ = request.reply.send(result);
        }
    }
}

/// A rebuild request and where its answer goes.
pub(crate) fn rebuild_request(
    name: String,
) -> (RebuildRequest, oneshot::Receiver<Result<Rebuilt, String>>) {
    let (reply, rx) = oneshot::channel();
    (RebuildRequest { name, reply }, rx)
}

fn router(state: State) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/streams", get(pages::streams))
        .route("/streams/{id}", get(pages::stream))
        .route("/events/{id}", get(pages::event))
        .route("/projections", get(pages::projections))
        .route("/tail", get(pages::tail))
        .route("/assets/{name}", get(assets::serve))
        .route("/api/overview", get(api::overview))
        .route("/api/streams", get(api::streams))
        .route("/api/streams/{id}", get(api::stream))
        .route("/api/events/{id}", get(api::event))
        .route("/api/events/{id}/trace", get(api::trace))
        .route("/api/projections", get(api::projections))
        .route("/api/projections/{name}/rebuild", post(api::rebuild))
        .route("/api/tail", get(tail::sse))
        .route("/metrics", get(metrics::serve))
        .fallback(api::not_found)
        .with_state(state)
}
