//! Least privilege: what an application role may do in a store's schema.
//!
//! The schema and every table in it belong to an *owner* role, which runs the migrations.
//! Services connect as an *application* role that gets exactly the privileges the library
//! needs ([`APPLICATION_PRIVILEGES`]) and nothing else: it can append and read events,
//! keep snapshots and checkpoints and run the projection runner, but it can never change
//! or remove an event (no `UPDATE`, `DELETE` or `TRUNCATE` on `events`) nor alter, drop or
//! create anything, so it cannot disable the immutability trigger (only the table owner
//! can). See `docs/reliability.md`, section *Security*.

use std::fmt;

use chronik_store::StoreError;
use sqlx::{Executor as _, Row as _};

use crate::PgEventStore;
use crate::config::{SchemaName, check_identifier};
use crate::error::backend;

/// A validated PostgreSQL role name, to grant privileges to.
///
/// Contract: 1 to 63 bytes of ASCII lowercase letters, digits and `_`, not starting with
/// a digit, not starting with `pg_` (reserved by PostgreSQL) and none of the names
/// PostgreSQL gives a special meaning in a grant (`public`, `none`, `current_user`,
/// `current_role`, `session_user`). It is always quoted when put into SQL, so it can never
/// inject anything, and it never names every role (`PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName(String);

/// Role names that PostgreSQL reads as something other than one role, even quoted.
const SPECIAL_ROLE_NAMES: [&str; 5] = [
    "public",
    "none",
    "current_user",
    "current_role",
    "session_user",
];

impl RoleName {
    /// Validates a role name.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the rule that was broken.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        check_identifier("role", &name, &SPECIAL_ROLE_NAMES)?;
        Ok(Self(name))
    }

    /// The name, unquoted.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"name"`).
    #[must_use]
    pub fn quoted(&self) -> String {
        // Validation admits no `"`, so plain wrapping is a correct quote.
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every table of a migrated store and the privileges an application role gets on it
/// (`""`: none). A migration that adds a table adds it here; a test checks that every
/// table of the migrated schema is listed.
///
/// - `events`: appended (through `append_events`, which runs with the caller's rights)
///   and read; never updated, deleted or truncated.
/// - `streams`: the per-stream version and order guard (`SELECT ... FOR UPDATE` needs
///   `UPDATE`).
/// - `snapshots`, `projection_checkpoints`: the ports save, replace and delete them.
/// - `projection_runners`: each runner instance upserts its own row, removes it when it
///   stops as a standby, and prunes the rows of dead or stopped instances when it takes
///   over; `projection_parked`: park decisions are recorded, read and resolved
///   (`projections retry | drop-parked`), never removed; `projection_rebuilds`: a rebuild
///   records its start and end, `forget` removes the record.
/// - `_sqlx_migrations`: read, so that a service (or `chronik doctor`) can check that the
///   schema is migrated.
///
/// A service's own read-model tables are not the library's: name them to
/// [`application_role_sql_with`] / [`PgEventStore::grant_application_role_with`], which
/// give them [`READ_MODEL_PRIVILEGES`].
pub const APPLICATION_PRIVILEGES: [(&str, &str); 9] = [
    ("events", "SELECT, INSERT"),
    ("streams", "SELECT, INSERT, UPDATE"),
    ("snapshots", "SELECT, INSERT, UPDATE, DELETE"),
    ("projection_checkpoints", "SELECT, INSERT, UPDATE, DELETE"),
    ("projection_runners", "SELECT, INSERT, UPDATE, DELETE"),
    ("projection_parked", "SELECT, INSERT, UPDATE"),
    ("projection_rebuilds", "SELECT, INSERT, UPDATE, DELETE"),
    ("_sqlx_migrations", "SELECT"),
    ("events_global_position_seq", ""),
];

/// The statements that give `role` exactly the application privileges in `schema`, in
/// order, without a trailing `;`. Run them in one transaction as the schema's owner (or a
/// superuser); [`PgEventStore::grant_application_role`] does, after checking the role.
///
/// They first revoke everything `role` holds in the schema, so running them again (after
/// a migration, which may add a table) converges to the same privileges and removes any
/// extra grant made by hand. A shadow rebuild needs no new grant: its swap carries the
/// live table's owner and grants over to the rebuilt table. Functions: `EXECUTE` on
/// every function of the schema, all of which run with the caller's rights
/// (`SECURITY INVOKER`), so it adds nothing the table privileges do not already allow.
#[must_use]
pub fn application_role_sql(schema: &SchemaName, role: &RoleName) -> Vec<String> {
    statements(schema, role, &[])
}

/// What an application role gets on a service's read-model table (a projection's
/// runner writes it, a rebuild clears it): `SELECT, INSERT, UPDATE, DELETE`.
pub const READ_MODEL_PRIVILEGES: &str = "SELECT, INSERT, UPDATE, DELETE";

/// [`application_role_sql`], plus [`READ_MODEL_PRIVILEGES`] on each of the service's
/// read-model tables in `read_models` (unqualified names in `schema`, e.g.
/// `account_balances`). Needed because the statements first revoke everything in the
/// schema: a read-model table not named here loses the role's privileges.
///
/// # Errors
/// [`StoreError::InvalidRequest`] when a name is not a plain identifier (lowercase ascii
/// letters, digits, `_`) or names one of the library's own tables
/// ([`APPLICATION_PRIVILEGES`]), whose privileges are fixed.
pub fn application_role_sql_with(
    schema: &SchemaName,
    role: &RoleName,
    read_models: &[&str],
) -> Result<Vec<String>, StoreError> {
    for table in read_models {
        check_identifier("read-model table", table, &[])?;
        if APPLICATION_PRIVILEGES.iter().any(|(t, _)| t == table) {
            return Err(StoreError::InvalidRequest(format!(
                "{table:?} is one of chronik's own tables, not a read model: its privileges are fixed"
            )));
        }
    }
    Ok(statements(schema, role, read_models))
}

fn statements(schema: &SchemaName, role: &RoleName, read_models: &[&str]) -> Vec<String> {
    let s = schema.quoted();
    let r = role.quoted();
    let mut sql = vec![
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}"),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {s} FROM {r}"),
        format!("REVOKE ALL ON SCHEMA {s} FROM {r}"),
        format!("GRANT USAGE ON SCHEMA {s} TO {r}"),
    ];
    for (table, privileges) in APPLICATION_PRIVILEGES {
        if !privileges.is_empty() {
            // `table` is one of the constant names above: plain identifiers.
            sql.push(format!("GRANT {privileges} ON {s}.\"{table}\" TO {r}"));
        }
    }
    let privileges = READ_MODEL_PRIVILEGES;
    for table in read_models {
        // Checked by `application_role_sql_with`: plain identifiers.
        sql.push(format!("GRANT {privileges} ON {s}.\"{table}\" TO {r}"));
    }
    sql.push(format!(
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r}"
    ));
    sql
}

/// A role (the one a store is connected as, or one named), and whether it holds more than
/// the application privileges: from [`PgEventStore::connected_role`] and
/// [`PgEventStore::role_standing`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectedRole {
    /// Its name (for [`PgEventStore::connected_role`], the session's `current_user`).
    pub name: String,
    /// A superuser bypasses every privilege check and can silence the immutability
    /// triggers for its session (`SET session_replication_role = replica`).
    pub superuser: bool,
    /// It owns the store's schema or its `events` table, or is a member of a role that
    /// does (a superuser counts as one): it can disable the immutability trigger (`ALTER
    /// TABLE events DISABLE TRIGGER`) or drop the table.
    pub owner: bool,
}

impl PgEventStore {
    /// The role this store is connected as, and whether it is a superuser or the owner of
    /// the store's schema. An application should connect as neither, but as a role given
    /// only the application privileges ([`PgEventStore::grant_application_role`]): both
    /// can change or delete stored events despite the immutability triggers.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn connected_role(&self) -> Result<ConnectedRole, StoreError> {
        self.role_row(None)
            .await?
            .ok_or_else(|| StoreError::backend("the connected role is not in pg_roles", false))
    }

    /// The same of any role (`None` when it does not exist in the cluster): a superuser or
    /// the owner of the store's schema needs no grants, since it holds every privilege
    /// already, and [`PgEventStore::grant_application_role`] refuses it.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn role_standing(
        &self,
        role: &RoleName,
    ) -> Result<Option<ConnectedRole>, StoreError> {
        self.role_row(Some(role)).await
    }

    /// `role`, or the connected role when `None`.
    async fn role_row(&self, role: Option<&RoleName>) -> Result<Option<ConnectedRole>, StoreError> {
        let row = sqlx::query(
            "SELECT r.rolname::text, r.rolsuper, \
                    coalesce(pg_has_role(r.oid, n.nspowner, 'MEMBER'), false) \
                     OR coalesce(pg_has_role(r.oid, c.relowner, 'MEMBER'), false) \
               FROM pg_roles r \
               LEFT JOIN pg_namespace n ON n.nspname = $1 \
               LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'events' \
              WHERE r.rolname = coalesce($2, current_user::text)",
        )
        .bind(self.schema.as_str())
        .bind(role.map(RoleName::as_str))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|row| {
            Ok(ConnectedRole {
                name: row.try_get(0).map_err(backend)?,
                superuser: row.try_get(1).map_err(backend)?,
                owner: row.try_get(2).map_err(backend)?,
            })
        })
        .transpose()
    }

    /// Gives `role` exactly the application privileges on this store's schema (see
    /// [`application_role_sql`]), in one transaction. Idempotent: run it again after every
    /// migration (a shadow rebuild keeps the read-model table's grants).
    ///
    /// This store must be connected as the schema's owner (or a superuser), and the schema
    /// must be migrated. The role must exist and must not be a superuser, own the schema
    /// or its `events` table, or be a member of a role that does: such a role would keep
    /// the owner's rights whatever is granted, so it is refused rather than silently left
    /// all-powerful.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the role does not exist;
    /// [`StoreError::InvalidRequest`] when it is refused as above, the schema is not migrated, or this store is not connected as the owner of its
    /// tables; [`StoreError::Backend`] when a statement fails.
    pub async fn grant_application_role(&self, role: &RoleName) -> Result<(), StoreError> {
        self.grant_application_role_with(role, &[]).await
    }

    /// [`PgEventStore::grant_application_role`], plus [`READ_MODEL_PRIVILEGES`] on the
    /// service's read-model tables `read_models` (see [`application_role_sql_with`]),
    /// in the same transaction: all or nothing.
    ///
    /// # Errors
    /// As [`PgEventStore::grant_application_role`]; also [`StoreError::InvalidRequest`]
    /// for a bad table name, and [`StoreError::Backend`] when a table does not exist.
    pub async fn grant_application_role_with(
        &self,
        role: &RoleName,
        read_models: &[&str],
    ) -> Result<(), StoreError> {
        let statements = application_role_sql_with(&self.schema, role, read_models)?;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query(
            "SELECT r.rolsuper, \
                    n.oid IS NOT NULL, \
                    c.oid IS NOT NULL, \
                    coalesce(pg_has_role(r.oid, n.nspowner, 'MEMBER'), false) \
                     OR coalesce(pg_has_role(r.oid, c.relowner, 'MEMBER'), false), \
                    coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false), \
                    current_user::text \
               FROM pg_roles r \
               LEFT JOIN pg_namespace n ON n.nspname = $2 \
               LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'events' \
              WHERE r.rolname = $1",
        )
        .bind(role.as_str())
        .bind(self.schema.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!(
                "role {role} does not exist in this cluster: create it first, as a superuser \
                 or a role with CREATEROLE (CREATE ROLE {role} LOGIN), then grant again; \
                 nothing was granted"
            )));
        };
        let get = |i: usize| row.try_get::<bool, _>(i).map_err(backend);
        let (superuser, schema_exists, migrated, owner) = (get(0)?, get(1)?, get(2)?, get(3)?);
        if !schema_exists || !migrated {
            return Err(StoreError::InvalidRequest(format!(
                "schema {} is not migrated: run the migrations as the owner role first",
                self.schema
            )));
        }
        if !row.try_get::<bool, _>(4).map_err(backend)? {
            let me: String = row.try_get(5).map_err(backend)?;
            return Err(StoreError::InvalidRequest(format!(
                "connected as {me:?}, which does not own schema {}: connect as its owner \
                 (the role that ran the migrations) to grant",
                self.schema
            )));
        }
        if superuser {
            return Err(StoreError::InvalidRequest(format!(
                "role {role} is a superuser: an application role must not bypass privileges"
            )));
        }
        if owner {
            return Err(StoreError::InvalidRequest(format!(
                "role {role} owns schema {} or its tables (or is a member of their owner): \
                 an application role must not hold the owner's rights",
                self.schema
            )));
        }
        for statement in statements {
            tx.execute(sqlx::AssertSqlSafe(statement))
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        tracing::info!(role = %role, schema = %self.schema, "application role granted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_validated() {
        for bad in [
            "",
            "Upper",
            "with space",
            "quo\"te",
            "1abc",
            "pg_monitor",
            "public",
            "none",
            "current_user",
            "session_user",
            "semi;colon",
            "dash-ed",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(RoleName::new(bad), Err(StoreError::InvalidRequest(_))),
                "{bad}"
            );
        }
        let ok = RoleName::new("billing_app").expect("valid");
        assert_eq!(ok.quoted(), "\"billing_app\"");
        assert_eq!(ok.to_string(), "billing_app");
    }

    #[test]
    fn the_grant_never_gives_a_destructive_privilege_on_events() {
        let sql = application_role_sql(
            &SchemaName::new("tenant_1").expect("valid"),
            &RoleName::new("app").expect("valid"),
        );
        assert!(sql[0].starts_with("REVOKE ALL ON ALL TABLES IN SCHEMA \"tenant_1\""));
        let events: Vec<_> = sql.iter().filter(|s| s.contains(".\"events\"")).collect();
        assert_eq!(
            events,
            ["GRANT SELECT, INSERT ON \"tenant_1\".\"events\" TO \"app\""]
        );
        for s in &sql {
            for word in [
                "TRUNCATE",
                "TRIGGER",
                "REFERENCES",
                "CREATE",
                "ALL PRIVILEGES",
            ] {
                assert!(!s.starts_with("GRANT") || !s.contains(word), "{s}");
            }
        }
    }

    #[test]
    fn read_models_get_their_privileges_and_never_a_library_table() {
        let schema = SchemaName::default();
        let role = RoleName::new("app").expect("valid");
        let sql = application_role_sql_with(&schema, &role, &["balances"]).expect("valid");
        let grant = "GRANT SELECT, INSERT, UPDATE, DELETE ON \"public\".\"balances\" TO \"app\"";
        assert!(sql.iter().any(|s| s == grant), "{sql:#?}");
        for bad in ["events", "streams", "Bad", "a\"b", "x;drop", ""] {
            assert!(
                matches!(
                    application_role_sql_with(&schema, &role, &[bad]),
                    Err(StoreError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
