//! The projection contract suite (`chronik_testkit::projections`) on the PostgreSQL
//! exactly-once engine: `PgProjectionRunner` (woken by `LISTEN` on the channel the store
//! notifies after its commits, and by polling), `PgParkingLot`'s decisions, `rebuild`, and
//! `PgPartitionedRunner` workers on pools of their own for the partition cases. The suite's
//! `Recorder` runs inside a `PgProjection` that writes each event it applies to a table
//! through the batch's transaction, so that what a case reads back is what committed with
//! the checkpoint.
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::sync::Arc;

use chronik_core::{EventId, RecordedEvent};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    HandlerError, PgEventStore, PgParkingLot, PgPartitionedRunner, PgProjection,
    PgProjectionRunner, PgStoreConfig, PgTransaction, PgWorkerHandle, rebuild,
};
use chronik_projections::{ParkingLot, Partitions, Projection, RebuildProgress, RunnerOptions};
use chronik_store::FeedFilter;
use chronik_testkit::projections::{Engine, PartitionedEngine, Recorder, Spawned, Wake, Worker};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The exactly-once engine on one test database.
#[derive(Debug)]
struct ExactlyOnce {
    store: PgEventStore,
    /// The channel the store notifies after its commits, and runners `LISTEN` on.
    channel: String,
}

impl ExactlyOnce {
    async fn new(pool: PgPool) -> Self {
        sqlx::query(
            "CREATE TABLE contract_applied (seq bigserial PRIMARY KEY, \
             projection text NOT NULL, event_id uuid NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let channel = format!("chronik_test_{}", uuid::Uuid::new_v4().simple());
        let config = PgStoreConfig {
            notify_channel: Some(channel.clone()),
            ..PgStoreConfig::default()
        };
        Self {
            store: PgEventStore::from_pool_with(pool, &config),
            channel,
        }
    }
}

/// The suite's recorder as an exactly-once read model: each event it accepts is a row of
/// `contract_applied`, written in the batch's transaction.
#[derive(Debug)]
struct Applied(Arc<Recorder>);

impl PgProjection for Applied {
    fn name(&self) -> &str {
        Projection::name(&*self.0)
    }

    fn filter(&self) -> FeedFilter {
        Projection::filter(&*self.0)
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Projection::handle(&*self.0, event)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        sqlx::query("INSERT INTO contract_applied (projection, event_id) VALUES ($1, $2)")
            .bind(self.name())
            .bind(event.event_id.as_uuid())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        Projection::clear(&*self.0)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        sqlx::query("DELETE FROM contract_applied WHERE projection = $1")
            .bind(self.name())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl Engine for ExactlyOnce {
    type Store = PgEventStore;
    type Runner = Spawned;

    fn store(&self) -> &PgEventStore {
        &self.store
    }

    fn wake_is_exact(&self) -> bool {
        false
    }

    fn parking(&self) -> Arc<dyn ParkingLot> {
        Arc::new(PgParkingLot::new(self.store.clone()))
    }

    async fn start(
        &self,
        projection: &Arc<Recorder>,
        options: RunnerOptions,
        wake: Wake,
    ) -> Spawned {
        let listen_channel = match wake {
            Wake::Backend => Some(self.channel.clone()),
            Wake::PollingOnly => None,
        };
        let handle = PgProjectionRunner::new(
            self.store.clone(),
            Arc::new(Applied(Arc::clone(projection))),
        )
        .with_options(RunnerOptions {
            listen_channel,
            ..options
        })
        .spawn()
        .unwrap();
        Spawned::new(handle, Projection::name(&**projection))
    }

    async fn applied(&self, projection: &Arc<Recorder>) -> Vec<EventId> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM contract_applied WHERE projection = $1 ORDER BY seq",
        )
        .bind(Projection::name(&**projection))
        .fetch_all(self.store.pool())
        .await
        .unwrap();
        ids.into_iter()
            .map(|id| EventId::new(id).unwrap())
            .collect()
    }

    async fn rebuild(
        &self,
        projection: &Arc<Recorder>,
        batch: usize,
        progress: &mut (dyn FnMut(&RebuildProgress) + Send),
    ) -> RebuildProgress {
        let applied = Arc::new(Applied(Arc::clone(projection)));
        rebuild(&self.store, applied, None, batch, &mut |p| {
            progress(p);
            ControlFlow::Continue(())
        })
        .await
        .unwrap()
    }
}

/// A spawned `PgPartitionedRunner` worker.
#[derive(Debug)]
struct PgWorker(PgWorkerHandle);

impl Worker for PgWorker {
    fn owned(&self) -> Vec<u32> {
        self.0.status().owned
    }
    async fn kill(self) {
        self.0.abort().await;
    }
    async fn stop(self) {
        self.0.stop().await;
    }
}

impl PartitionedEngine for ExactlyOnce {
    type Worker = PgWorker;

    async fn start_worker(
        &self,
        projection: &Arc<Recorder>,
        partitions: Partitions,
        options: RunnerOptions,
    ) -> PgWorker {
        // A pool of its own: its sessions are its own, as another process's would be.
        let options_of_pool = self.store.pool().connect_options().as_ref().clone();
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .connect_with(options_of_pool)
            .await
            .unwrap();
        let store = PgEventStore::from_pool(pool);
        let worker =
            PgPartitionedRunner::new(store, Arc::new(Applied(Arc::clone(projection))), partitions)
                .with_options(options)
                .spawn()
                .await
                .unwrap();
        PgWorker(worker)
    }
}

macro_rules! exactly_once_cases {
    ($($case:ident),* $(,)?) => {$(
        #[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
        async fn $case(pool: PgPool) {
            chronik_testkit::projections::$case(ExactlyOnce::new(pool).await).await;
        }
    )*};
}

chronik_testkit::projection_contract_cases!(exactly_once_cases);
chronik_testkit::partition_contract_cases!(exactly_once_cases);
