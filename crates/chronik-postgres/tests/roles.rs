//! Least privilege with real roles: an owner role migrates and owns the schema; an
//! application role, given its privileges by `grant_application_role`, runs every part of
//! the library through real connections as itself, and every way of changing history or
//! the schema fails with `42501 insufficient_privilege`.
//!
//! Roles are cluster-wide: each test creates uniquely named ones (LOGIN; the local server
//! trusts local connections, so no password is needed) and drops them at its end.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, RecordedEvent, StreamId,
    Version,
};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    APPLICATION_PRIVILEGES, HandlerError, ParkedEvent, PgEventStore, PgProjection,
    PgProjectionRunner, PgStoreConfig, PgTransaction, RoleName, RunnerOptions, SchemaName,
    ShadowProjection, application_role_sql, park_event, parked_events, projection_reports, rebuild,
    rebuild_shadow, wait_for_projection,
};
use chronik_store::{CheckpointStore, EventStore, FeedFilter, SnapshotStore, StoreError};
use futures::TryStreamExt as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(90);

/// An owner and an application role, named uniquely for this test.
struct Roles {
    owner: RoleName,
    app: RoleName,
}

impl Roles {
    async fn create(admin: &PgPool) -> Self {
        let tag = &Uuid::new_v4().simple().to_string()[..12];
        let roles = Self {
            owner: RoleName::new(format!("chronik_owner_{tag}")).unwrap(),
            app: RoleName::new(format!("chronik_app_{tag}")).unwrap(),
        };
        for role in [&roles.owner, &roles.app] {
            exec(admin, &format!("CREATE ROLE {} LOGIN", role.quoted()))
                .await
                .unwrap();
        }
        // The owner creates its schema; nothing else is granted to it.
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(admin)
            .await
            .unwrap();
        exec(
            admin,
            &format!(
                "GRANT CREATE ON DATABASE \"{db}\" TO {}",
                roles.owner.quoted()
            ),
        )
        .await
        .unwrap();
        roles
    }

    /// Drops everything the roles own or were granted in this database, then the roles.
    async fn drop(self, admin: &PgPool) {
        for role in [&self.app, &self.owner] {
            exec(admin, &format!("DROP OWNED BY {} CASCADE", role.quoted()))
                .await
                .unwrap();
            exec(admin, &format!("DROP ROLE {}", role.quoted()))
                .await
                .unwrap();
        }
    }
}

async fn exec(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map(drop)
}

/// A pool on the test database that logs in as `role`.
async fn pool_as(admin: &PgPool, role: &RoleName) -> PgPool {
    let options: PgConnectOptions = (*admin.connect_options()).clone().username(role.as_str());
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap()
}

fn store_as(pool: PgPool, schema: &SchemaName) -> PgEventStore {
    PgEventStore::from_pool_with(pool, &PgStoreConfig::with_schema(schema.clone()))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

fn event(event_type: &str) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new(event_type).unwrap(),
        1,
        serde_json::json!({ "n": 1 }),
        Metadata::default().with_header("via", "app-role"),
    )
    .unwrap()
}

/// A service's read model: `tallies (stream_id, events, version)`, one row per stream,
/// version-guarded. The service (here: the owner) creates the table; the grant names it.
#[derive(Debug)]
struct Tallies {
    qualified: String,
    /// The unqualified name (a shadow rebuild writes into `<table>__shadow`).
    table: String,
    schema: SchemaName,
}

impl Tallies {
    const NAME: &'static str = "tallies";

    fn new(schema: &SchemaName) -> Self {
        Self::in_table(schema, "tallies")
    }

    fn in_table(schema: &SchemaName, bare: &str) -> Self {
        Self {
            qualified: format!("{}.\"{bare}\"", schema.quoted()),
            table: bare.to_owned(),
            schema: schema.clone(),
        }
    }

    async fn create(&self, owner: &PgPool) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {} (stream_id text PRIMARY KEY, events bigint NOT NULL, version bigint NOT NULL)",
            self.qualified
        )))
        .execute(owner)
        .await
        .unwrap();
    }

    async fn rows(&self, pool: &PgPool) -> Vec<(String, i64, i64)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT stream_id, events, version FROM {} ORDER BY stream_id",
            self.qualified
        )))
        .fetch_all(pool)
        .await
        .unwrap()
    }
}

impl PgProjection for Tallies {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (stream_id, events, version) VALUES ($1, 1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET events = {0}.events + 1, version = EXCLUDED.version \
             WHERE {0}.version < EXCLUDED.version",
            self.qualified
        )))
        .bind(event.stream_id.as_str())
        .bind(event.version.as_i64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {}",
            self.qualified
        )))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl ShadowProjection for Tallies {
    fn table(&self) -> &str {
        &self.table
    }

    fn with_table(&self, table: &str) -> Self {
        Self::in_table(&self.schema, table)
    }
}

/// Every column of every event, in stream order: what "history unchanged" compares.
async fn history(admin: &PgPool, schema: &SchemaName) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT e::text FROM {}.events e ORDER BY stream_id, version",
        schema.quoted()
    )))
    .fetch_all(admin)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_application_role_runs_everything_and_can_change_no_history(admin: PgPool) {
    let roles = Roles::create(&admin).await;
    let schema = SchemaName::new("app_store").unwrap();

    // The owner migrates (twice: idempotent) and grants.
    let owner_pool = pool_as(&admin, &roles.owner).await;
    let owner = store_as(owner_pool.clone(), &schema);
    owner.migrate().await.unwrap();
    owner.migrate().await.unwrap();
    let schema_owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema.as_str())
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(schema_owner, roles.owner.as_str());
    let tallies = Arc::new(Tallies::new(&schema));
    tallies.create(&owner_pool).await;
    owner
        .grant_application_role_with(&roles.app, &[Tallies::NAME])
        .await
        .unwrap();
    owner
        .grant_application_role_with(&roles.app, &[Tallies::NAME])
        .await
        .unwrap();
    let me = owner.connected_role().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.superuser, me.owner),
        (roles.owner.as_str(), false, true)
    );

    // The application appends, reads the stream and the feed.
    let app_pool = pool_as(&admin, &roles.app).await;
    let app = store_as(app_pool.clone(), &schema);
    let stream = StreamId::new("tab-app-1").unwrap();
    let first = app
        .append(&stream, ExpectedVersion::NoStream, &[event("Placed")])
        .await
        .unwrap();
    let retried = event("LineAdded");
    let second = app
        .append(
            &stream,
            ExpectedVersion::Exact(first.last_version),
            &[retried.clone(), event("LineAdded")],
        )
        .await
        .unwrap();
    assert_eq!(second.last_version.get(), 3);
    // An idempotent retry and a conflict are answered, as for any role.
    let stored = retried.clone();
    let again = app
        .append(
            &stream,
            ExpectedVersion::Exact(first.last_version),
            &[retried],
        )
        .await
        .unwrap();
    assert!(again.already_appended);
    let conflict = app
        .append(&stream, ExpectedVersion::NoStream, &[event("LineAdded")])
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{conflict:?}"
    );
    // A new stream whose ids are stored elsewhere is refused as a duplicate and not created:
    // the application role needs no DELETE for any outcome of `append_events`.
    let elsewhere = StreamId::new("tab-app-2").unwrap();
    let duplicate = app
        .append(&elsewhere, ExpectedVersion::NoStream, &[stored])
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::DuplicateEventId { .. })),
        "{duplicate:?}"
    );
    assert_eq!(app.stream_version(&elsewhere).await.unwrap(), Version::ZERO);
    let read: Vec<_> = app
        .read_stream(&stream, Version::FIRST)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(app.stream_version(&stream).await.unwrap().get(), 3);
    app.wait_for_feed(second.cursor, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let page = app
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(app.feed_head().await.unwrap().visible_events, 3);
    assert_eq!(app.count_after(first.cursor).await.unwrap(), 2);
    app.horizon_holders().await.unwrap();
    let me = app.connected_role().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.superuser, me.owner),
        (roles.app.as_str(), false, false)
    );

    // Snapshots and checkpoints: saved, replaced, listed, deleted.
    let state = serde_json::json!({ "lines": 2 });
    app.save_snapshot(&stream, second.last_version, 1, &state)
        .await
        .unwrap();
    app.save_snapshot(&stream, second.last_version, 2, &state)
        .await
        .unwrap();
    assert!(app.load_snapshot(&stream, 2).await.unwrap().is_some());
    assert_eq!(app.list_snapshots(&stream).await.unwrap().len(), 1);
    assert_eq!(app.delete_snapshots("tab").await.unwrap(), 1);
    app.save_checkpoint("audit", first.cursor, 1).await.unwrap();
    app.save_checkpoint("audit", second.cursor, 3)
        .await
        .unwrap();
    assert_eq!(app.list_checkpoints().await.unwrap().len(), 1);
    assert!(app.delete_checkpoint("audit").await.unwrap());
    assert!(app.load_checkpoint("audit").await.unwrap().is_none());

    // The projection runner, a rebuild, a park decision and the status report.
    let runner = PgProjectionRunner::new(app.clone(), Arc::clone(&tallies))
        .with_options(RunnerOptions {
            batch_size: 2,
            listen_channel: None,
            ..RunnerOptions::default()
        })
        .spawn()
        .unwrap();
    wait_for_projection(&app, Tallies::NAME, second.cursor, DEADLINE)
        .await
        .unwrap();
    runner.stop().await.unwrap();
    assert_eq!(
        tallies.rows(app.pool()).await,
        [(stream.as_str().to_owned(), 3, 3)]
    );
    let rebuilt = rebuild(&app, Arc::clone(&tallies), None, 2, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(rebuilt.handled, 3);
    park_event(
        &app,
        &ParkedEvent {
            projection: "audit".to_owned(),
            event_id: read[0].event_id,
            stream_id: read[0].stream_id.clone(),
            version: read[0].version,
            reason: "test".to_owned(),
            decided_by: "roles test".to_owned(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    assert_eq!(parked_events(&app, "audit").await.unwrap().len(), 1);
    assert!(!projection_reports(&app).await.unwrap().is_empty());

    // Nothing that changes history or the schema is allowed to the application.
    let before = history(&admin, &schema).await;
    let s = schema.quoted();
    for statement in [
        format!("UPDATE {s}.events SET event_type = 'Forged'"),
        format!("DELETE FROM {s}.events"),
        format!("TRUNCATE {s}.events"),
        format!("TRUNCATE {s}.streams"),
        format!("ALTER TABLE {s}.events DISABLE TRIGGER events_reject_update_delete"),
        format!("ALTER TABLE {s}.events DISABLE TRIGGER ALL"),
        format!("DROP TRIGGER events_reject_update_delete ON {s}.events"),
        format!("DROP TABLE {s}.events"),
        format!("DROP TABLE {s}.streams"),
        format!("ALTER TABLE {s}.streams ADD COLUMN forged int"),
        format!("CREATE TABLE {s}.intruder (x int)"),
        format!(
            "CREATE OR REPLACE FUNCTION {s}.events_are_immutable() RETURNS trigger \
             LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$"
        ),
        format!("DROP FUNCTION {s}.append_events"),
        format!("DELETE FROM {s}.streams"),
        format!("UPDATE {s}._sqlx_migrations SET success = false"),
        format!("DELETE FROM {s}.projection_parked"),
        format!("DROP SCHEMA {s} CASCADE"),
    ] {
        let err = exec(&app_pool, &statement)
            .await
            .expect_err(&format!("the application role ran {statement}"));
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("42501"),
            "{statement}: {err}"
        );
    }
    assert_eq!(history(&admin, &schema).await, before);

    // The owner could disable the trigger (it owns the table), but while it stands even
    // the owner cannot change an event.
    let err = exec(
        &owner_pool,
        &format!("UPDATE {s}.events SET event_type = 'Forged'"),
    )
    .await
    .expect_err("the trigger refuses the owner too");
    assert_eq!(sqlstate(&err).as_deref(), Some("CKI01"), "{err}");
    assert_eq!(history(&admin, &schema).await, before);

    // The application role cannot grant itself more: granting is the owner's.
    let err = app.grant_application_role(&roles.app).await.unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRequest(_))
            && err.to_string().contains(&format!(
                "connected as \"{}\", which does not own schema app_store",
                roles.app
            )),
        "{err}: a non-owner granting must fail"
    );

    app_pool.close().await;
    owner_pool.close().await;
    roles.drop(&admin).await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn grants_converge_and_refuse_roles_that_would_keep_the_owners_rights(admin: PgPool) {
    let roles = Roles::create(&admin).await;
    let schema = SchemaName::new("converge_store").unwrap();
    let owner_pool = pool_as(&admin, &roles.owner).await;
    let owner = store_as(owner_pool.clone(), &schema);

    // Not migrated yet: refused with a clear message.
    exec(
        &owner_pool,
        &format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()),
    )
    .await
    .unwrap();
    let err = owner.grant_application_role(&roles.app).await.unwrap_err();
    assert!(err.to_string().contains("is not migrated"), "{err}");
    owner.migrate().await.unwrap();

    // A privilege added by hand is taken away by the next grant.
    let s = schema.quoted();
    owner.grant_application_role(&roles.app).await.unwrap();
    exec(
        &owner_pool,
        &format!(
            "GRANT DELETE, TRUNCATE ON {s}.events TO {}",
            roles.app.quoted()
        ),
    )
    .await
    .unwrap();
    owner.grant_application_role(&roles.app).await.unwrap();
    let app_pool = pool_as(&admin, &roles.app).await;
    let err = exec(&app_pool, &format!("TRUNCATE {s}.events"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    app_pool.close().await;

    // Roles that would keep the owner's rights whatever is granted are refused.
    let member = RoleName::new(format!("{}_member", roles.app)).unwrap();
    exec(
        &admin,
        &format!(
            "CREATE ROLE {} LOGIN IN ROLE {}",
            member.quoted(),
            roles.owner.quoted()
        ),
    )
    .await
    .unwrap();
    for (role, expected) in [
        (roles.owner.clone(), "owns schema converge_store"),
        (member.clone(), "is a member of their owner"),
        (RoleName::new("postgres").unwrap(), "is a superuser"),
    ] {
        let err = owner.grant_application_role(&role).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidRequest(_)) && err.to_string().contains(expected),
            "{role}: {err}"
        );
    }
    // A role that does not exist is not found (a caller's bad input), and says how to
    // create it.
    let err = owner
        .grant_application_role(&RoleName::new("chronik_no_such_role_x").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_))
            && err
                .to_string()
                .contains("does not exist in this cluster: create it first"),
        "{err}"
    );
    exec(&admin, &format!("DROP ROLE {}", member.quoted()))
        .await
        .unwrap();
    owner_pool.close().await;
    roles.drop(&admin).await;
}

/// Tidy check: every relation a migration creates has a decided privilege set, every
/// listed one exists, and no function can run with its owner's rights (the grant gives
/// `EXECUTE` on all of them because none is `SECURITY DEFINER`).
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn every_table_has_decided_privileges_and_no_function_is_security_definer(admin: PgPool) {
    let mut relations: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class \
          WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
          ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut listed: Vec<String> = APPLICATION_PRIVILEGES
        .iter()
        .map(|(t, _)| (*t).to_owned())
        .collect();
    relations.sort();
    listed.sort();
    assert_eq!(
        relations, listed,
        "a migration added or removed a table: decide its privileges in APPLICATION_PRIVILEGES"
    );
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc \
          WHERE pronamespace = 'public'::regnamespace AND prosecdef",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        definers.is_empty(),
        "SECURITY DEFINER functions: {definers:?}"
    );
    // The printed SQL is what the library runs: quoted names only.
    let sql = application_role_sql(&SchemaName::default(), &RoleName::new("app").unwrap());
    assert!(
        sql.iter()
            .all(|s| s.contains("\"public\"") && s.contains("\"app\""))
    );
}

/// The privileges `role` has on `table` of `schema`, as `has_table_privilege` reports them.
async fn table_privileges(
    admin: &PgPool,
    role: &RoleName,
    schema: &SchemaName,
    table: &str,
) -> Vec<String> {
    let mut held = Vec::new();
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
        let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
            .bind(role.as_str())
            .bind(format!("{}.\"{table}\"", schema.quoted()))
            .bind(privilege)
            .fetch_one(admin)
            .await
            .unwrap();
        if has {
            held.push(privilege.to_owned());
        }
    }
    held
}

/// Issue 14, item 1: a shadow rebuild swapped in a table with none of the live table's
/// grants, so the application role got `permission denied` on its read model until
/// `roles grant` ran again. The swap now carries the owner and every grant over; and run
/// by the application role, the rebuild says once that the schema owner must run it.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_shadow_rebuild_keeps_the_application_roles_access(admin: PgPool) {
    let roles = Roles::create(&admin).await;
    let schema = SchemaName::new("shadow_store").unwrap();
    let owner_pool = pool_as(&admin, &roles.owner).await;
    let owner = store_as(owner_pool.clone(), &schema);
    owner.migrate().await.unwrap();
    let tallies = Tallies::new(&schema);
    tallies.create(&owner_pool).await;
    owner
        .grant_application_role_with(&roles.app, &[Tallies::NAME])
        .await
        .unwrap();
    let before = table_privileges(&admin, &roles.app, &schema, Tallies::NAME).await;
    assert!(before.contains(&"SELECT".to_owned()), "{before:?}");

    let app_pool = pool_as(&admin, &roles.app).await;
    let app = store_as(app_pool.clone(), &schema);
    let mut last = FeedCursor::START;
    for n in 1..=3 {
        let stream = StreamId::new(format!("tab-shadow-{n}")).unwrap();
        last = app
            .append(&stream, ExpectedVersion::NoStream, &[event("Placed")])
            .await
            .unwrap()
            .cursor;
    }
    // Other tests' transactions in this cluster may hold the feed back for a moment.
    app.wait_for_feed(last, DEADLINE).await.unwrap();

    let done = rebuild_shadow(&owner, Arc::new(tallies), None, 100, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(done.handled, 3);
    let after = table_privileges(&admin, &roles.app, &schema, Tallies::NAME).await;
    assert_eq!(
        after, before,
        "the application role's grants survive the swap"
    );
    let table_owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::regclass",
    )
    .bind(format!("{}.tallies", schema.quoted()))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(table_owner, roles.owner.as_str());
    // The application reads its read model as itself, right after the swap.
    let rows = Tallies::new(&schema).rows(&app_pool).await;
    assert_eq!(rows.len(), 3, "{rows:?}");

    // Run by the application role: refused, saying who must run it, the cause once.
    let err = rebuild_shadow(
        &app,
        Arc::new(Tallies::new(&schema)),
        None,
        100,
        &mut |_| ControlFlow::Continue(()),
    )
    .await
    .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("run it as the schema owner"), "{shown}");
    assert_eq!(shown.matches("permission denied").count(), 1, "{shown}");
    assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    let rows = Tallies::new(&schema).rows(&app_pool).await;
    assert_eq!(
        rows.len(),
        3,
        "the failed rebuild left the live table alone"
    );

    app_pool.close().await;
    owner_pool.close().await;
    roles.drop(&admin).await;
}
