//! `roles grant APP_ROLE`: the application role's privileges on a store's schema,
//! granted (connected as the schema's owner) or printed as SQL for a DBA to review.

use std::io::{self, Write as _};

use chronik_postgres::{PgEventStore, RoleName, SchemaName, application_role_sql_with};

use anyhow::Context as _;
use chronik_store::StoreError;

use crate::backend::Usage;

/// Parses a role name.
pub(crate) fn parse_role(text: &str) -> Result<RoleName, String> {
    RoleName::new(text).map_err(|e| crate::request_message(&e))
}

/// Prints the grant as one SQL transaction, without connecting.
pub(crate) fn print(schema: &SchemaName, role: &RoleName, tables: &[&str]) -> anyhow::Result<()> {
    // Checked before anything is printed.
    let statements = application_role_sql_with(schema, role, tables)
        .map_err(|e| Usage(crate::request_message(&e)))?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "-- chronik: application role {role} on schema {schema}; run as the schema's owner.\n\
         -- The role must exist (CREATE ROLE {role} LOGIN) and must not own the schema.\n\
         BEGIN;"
    )?;
    for statement in statements {
        writeln!(out, "{statement};")?;
    }
    writeln!(out, "COMMIT;")?;
    Ok(())
}

/// Grants the privileges through `store` (connected as the owner).
pub(crate) async fn grant(
    store: &PgEventStore,
    role: &RoleName,
    tables: &[&str],
) -> anyhow::Result<()> {
    let context = || format!("cannot grant the application privileges to {role}");
    // A superuser or the owner holds every privilege already: nothing to grant, and the
    // library refuses to (the role would keep the owner's rights whatever is granted).
    if let Some(standing) = store.role_standing(role).await.with_context(context)?
        && (standing.superuser || standing.owner)
    {
        return needs_no_grants(store, role, standing.superuser);
    }
    match store.grant_application_role_with(role, tables).await {
        Ok(()) => {}
        // A role that does not exist is the command line's mistake, as a mistyped name is.
        Err(StoreError::NotFound(why)) => return Err(Usage(format!("{}: {why}", context())).into()),
        Err(e) => return Err(anyhow::Error::new(e).context(context())),
    }
    writeln!(
        io::stdout(),
        "role {role} has the application privileges on schema {}: it can append and read \
         events, keep snapshots and checkpoints and run projections (read models: {}), and \
         never change history",
        store.schema(),
        if tables.is_empty() {
            "none registered".to_owned()
        } else {
            tables.join(", ")
        }
    )?;
    Ok(())
}

/// Says that `role`, a superuser or the owner of `store`'s schema, needs no grants, and why
/// no application should connect as it; nothing is granted.
fn needs_no_grants(store: &PgEventStore, role: &RoleName, superuser: bool) -> anyhow::Result<()> {
    let schema = store.schema();
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    if superuser {
        writeln!(
            out,
            "role {role} needs no grants on schema {schema}: it is a superuser, which bypasses \
             every privilege check; nothing was granted"
        )?;
        writeln!(
            err,
            "warning: an application connected as role {role} can bypass the immutability \
             triggers (SET session_replication_role = replica) and rewrite or delete events; \
             give it a role of its own (CREATE ROLE APP_ROLE LOGIN) and grant to that"
        )?;
    } else {
        writeln!(
            out,
            "role {role} needs no grants on schema {schema}: it owns the schema or its tables \
             (or is a member of their owner), which gives it every privilege on them; nothing \
             was granted"
        )?;
        writeln!(
            err,
            "warning: an application connected as role {role} can disable the immutability \
             trigger (ALTER TABLE events DISABLE TRIGGER) and rewrite or delete events; give it \
             a role of its own (CREATE ROLE APP_ROLE LOGIN) and grant to that"
        )?;
    }
    Ok(())
}
