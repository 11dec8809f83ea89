//! What the database says about the store's migrations, compared with what this build
//! embeds ([`crate::MIGRATOR`]): the check every operator command runs before it reads a
//! store.

use std::fmt;

use chronik_store::StoreError;
use sqlx::Row as _;

use crate::PgEventStore;
use crate::config::SchemaName;
use crate::error::backend;

/// One migration as the database records it (`<schema>._sqlx_migrations`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedMigration {
    /// Its version, e.g. `1` for `0001_event_store.sql`.
    pub version: i64,
    /// Its description, e.g. `event store`.
    pub description: String,
    /// Whether it ran to the end.
    pub success: bool,
    /// The checksum of the SQL that ran.
    pub checksum: Vec<u8>,
}

/// Something wrong with a schema's migrations, one per migration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationProblem {
    /// Embedded in this build, not applied: run the migrations.
    Pending {
        /// The migration's version.
        version: i64,
        /// Its description.
        description: String,
    },
    /// Recorded as unsuccessful: repair it by hand.
    Failed {
        /// The migration's version.
        version: i64,
        /// Its description.
        description: String,
    },
    /// Applied, but its SQL differs from this build's (edited after it was applied).
    Edited {
        /// The migration's version.
        version: i64,
        /// Its description.
        description: String,
    },
    /// Applied, unknown to this build (written by a newer chronik).
    Unknown {
        /// The migration's version.
        version: i64,
        /// Its description.
        description: String,
    },
}

impl fmt::Display for MigrationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pending {
                version,
                description,
            } => write!(f, "migration {version:04} {description} is not applied"),
            Self::Failed {
                version,
                description,
            } => write!(
                f,
                "migration {version:04} {description} failed and is recorded as unsuccessful: repair it by hand"
            ),
            Self::Edited {
                version,
                description,
            } => write!(
                f,
                "migration {version:04} {description} differs from this build's (edited after it was applied)"
            ),
            Self::Unknown {
                version,
                description,
            } => write!(
                f,
                "migration {version:04} {description} is unknown to this build (written by a newer chronik?)"
            ),
        }
    }
}

/// A schema's migrations: what the database applied, compared with what this build
/// embeds. From [`PgEventStore::migration_status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The schema.
    pub schema: SchemaName,
    /// Recorded migrations, by version (empty when the schema or its migrations table does
    /// not exist).
    pub applied: Vec<AppliedMigration>,
    /// Whether the schema exists in this database at all. A mistyped `--schema` is not an
    /// unmigrated store: migrating it would create a new, empty store under that name.
    pub schema_exists: bool,
    /// Other schemas of this database that hold a chronik store (an `events` table and a
    /// migrations table), by name: what a mistyped schema probably meant.
    pub stores_elsewhere: Vec<String>,
}

impl MigrationStatus {
    /// The (up) migrations this build embeds: `(version, description)`, by version.
    #[must_use]
    pub fn embedded() -> Vec<(i64, String)> {
        crate::MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    /// How many of the embedded migrations are applied successfully.
    #[must_use]
    pub fn applied_count(&self) -> usize {
        Self::embedded()
            .iter()
            .filter(|(v, _)| self.applied.iter().any(|a| a.version == *v && a.success))
            .count()
    }

    /// Whether every embedded migration is applied successfully (the store can be used).
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.applied_count() == Self::embedded().len()
    }

    /// Everything wrong: pending, failed, edited or unknown migrations, by version.
    #[must_use]
    pub fn problems(&self) -> Vec<MigrationProblem> {
        let mut problems = Vec::new();
        for m in crate::MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            let (version, description) = (m.version, m.description.to_string());
            match self.applied.iter().find(|a| a.version == m.version) {
                None => problems.push(MigrationProblem::Pending {
                    version,
                    description,
                }),
                Some(a) if !a.success => problems.push(MigrationProblem::Failed {
                    version,
                    description,
                }),
                Some(a) if a.checksum != *m.checksum => problems.push(MigrationProblem::Edited {
                    version,
                    description,
                }),
                Some(_) => {}
            }
        }
        let embedded = Self::embedded();
        for a in &self.applied {
            if !embedded.iter().any(|(v, _)| *v == a.version) {
                problems.push(MigrationProblem::Unknown {
                    version: a.version,
                    description: a.description.clone(),
                });
            }
        }
        problems
    }
}

impl PgEventStore {
    /// Reads the migrations recorded in this store's schema (nothing applied when the
    /// schema or its migrations table does not exist), to compare with this build's
    /// ([`MigrationStatus::is_current`], [`MigrationStatus::problems`]). Changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let table = format!("{}._sqlx_migrations", self.schema.quoted());
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let schema_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(self.schema.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        let stores_elsewhere: Vec<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_namespace n \
             WHERE n.nspname <> $1 \
               AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid \
                           AND c.relname = 'events' AND c.relkind IN ('r', 'p')) \
               AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid \
                           AND c.relname = '_sqlx_migrations' AND c.relkind = 'r') \
             ORDER BY 1",
        )
        .bind(self.schema.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut applied = Vec::new();
        if exists {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT version, description, success, checksum FROM {table} ORDER BY version"
            )))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
            for r in &rows {
                applied.push(AppliedMigration {
                    version: r.try_get(0).map_err(backend)?,
                    description: r.try_get(1).map_err(backend)?,
                    success: r.try_get(2).map_err(backend)?,
                    checksum: r.try_get(3).map_err(backend)?,
                });
            }
        }
        Ok(MigrationStatus {
            schema: self.schema.clone(),
            applied,
            schema_exists,
            stores_elsewhere,
        })
    }
}
