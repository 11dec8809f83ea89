//! `chronik roles grant`: the SQL printed for review, the grant run as the owner, and an
//! application role that then appends through the CLI but cannot grant itself anything.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn chronik(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The test database as its superuser, for set-up and clean-up.
struct Admin {
    runtime: tokio::runtime::Runtime,
    pool: sqlx::PgPool,
}

impl Admin {
    fn connect() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let pool = runtime
            .block_on(sqlx::PgPool::connect(&database_url()))
            .unwrap();
        Self { runtime, pool }
    }

    fn exec(&self, sql: &str) {
        self.runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool))
            .unwrap();
    }

    /// Drops `schema` with everything in it, then `roles` with what they own.
    fn clean_up(&self, schema: &str, roles: &[&str]) {
        self.exec(&format!("DROP SCHEMA \"{schema}\" CASCADE"));
        for role in roles {
            self.exec(&format!("DROP OWNED BY \"{role}\""));
            self.exec(&format!("DROP ROLE \"{role}\""));
        }
    }
}

/// The test database's URL with another user (the local server trusts local logins).
fn url_as(role: &str) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

#[test]
fn print_shows_the_sql_without_a_database_and_hostile_names_are_refused() {
    let out = chronik(
        &[
            "roles",
            "grant",
            "orders_app",
            "--schema",
            "tenant_1",
            "--print",
        ],
        "postgres://nobody@127.0.0.1:1/none",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sql = text(&out.stdout);
    assert!(
        sql.contains(
            "BEGIN;\nREVOKE ALL ON ALL TABLES IN SCHEMA \"tenant_1\" FROM \"orders_app\";"
        )
    );
    assert!(sql.contains("GRANT SELECT, INSERT ON \"tenant_1\".\"events\" TO \"orders_app\";"));
    assert!(sql.trim_end().ends_with("COMMIT;"), "{sql}");
    for bad in [
        "public",
        "Robert\"); DROP TABLE events;--",
        "pg_read_all_data",
        "",
        "a b",
    ] {
        let out = chronik(&["roles", "grant", bad, "--print"], &database_url());
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("invalid role name"), "{bad}");
        assert!(out.stdout.is_empty());
    }
    let out = chronik(
        &["roles", "grant", "app", "--schema", "x\"y", "--print"],
        &database_url(),
    );
    assert_eq!(out.status.code(), Some(2));
}

/// docs/reliability.md shows the SQL `roles grant --print` prints, statement for statement
/// (it showed `projection_parked` with `SELECT, INSERT` after the grant had gained `UPDATE`).
#[test]
fn the_grant_reliability_md_shows_is_the_one_printed() {
    let out = chronik(
        &[
            "roles",
            "grant",
            "orders_app",
            "--schema",
            "orders",
            "--print",
        ],
        "postgres://nobody@127.0.0.1:1/none",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: String = text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    let docs = include_str!("../../../docs/reliability.md");
    assert!(
        docs.contains(&format!("```sql\n{printed}```")),
        "docs/reliability.md lacks the printed grant as one sql block:\n{printed}"
    );
}

#[test]
fn the_owner_grants_and_the_application_appends_but_cannot_grant() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (role, schema) = (format!("cli_app_{tag}"), format!("cli_roles_{tag}"));
    let admin = Admin::connect();
    let exec = |sql: String| admin.exec(&sql);
    exec(format!("CREATE ROLE \"{role}\" LOGIN"));
    let owner = database_url();
    let out = chronik(&["migrate", "--schema", &schema], &owner);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = chronik(&["roles", "grant", &role, "--schema", &schema], &owner);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "role {role} has the application privileges on schema {schema}"
        )),
        "{}",
        text(&out.stdout)
    );

    let app = url_as(&role);
    let out = chronik(
        &[
            "append", "note-1", "--type", "Placed", "--data", "{}", "--schema", &schema,
        ],
        &app,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("appended: note-1 v1 Placed"));
    let out = chronik(&["roles", "grant", &role, "--schema", &schema], &app);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: cannot grant the application privileges to {role}: "
        )) && stderr.contains("which does not own schema")
            && stderr.lines().count() == 1,
        "{stderr}"
    );

    admin.clean_up(&schema, &[&role]);
}

/// A superuser or the schema's owner holds every privilege already: `roles grant` to one
/// says that it needs none and why no application should connect as it, grants nothing
/// and succeeds (it exited 1 with the library's refusal, as if the grant had failed).
#[test]
fn granting_to_a_superuser_or_the_owner_says_it_needs_no_grants() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (owner_role, schema) = (format!("cli_own_{tag}"), format!("cli_own_{tag}"));
    let admin = Admin::connect();
    let (runtime, exec) = (&admin.runtime, |sql: String| admin.exec(&sql));
    let superuser: String = runtime
        .block_on(sqlx::query_scalar("SELECT current_user::text").fetch_one(&admin.pool))
        .unwrap();
    let url = database_url();
    let out = chronik(&["migrate", "--schema", &schema], &url);
    assert!(out.status.success(), "{}", text(&out.stderr));
    exec(format!("CREATE ROLE \"{owner_role}\" LOGIN"));
    exec(format!(
        "ALTER SCHEMA \"{schema}\" OWNER TO \"{owner_role}\""
    ));
    for (role, what, risk) in [
        (
            superuser.as_str(),
            "it is a superuser, which bypasses every privilege check",
            "SET session_replication_role = replica",
        ),
        (
            owner_role.as_str(),
            "it owns the schema or its tables",
            "ALTER TABLE events DISABLE TRIGGER",
        ),
    ] {
        let out = chronik(&["roles", "grant", role, "--schema", &schema], &url);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{role}: {stderr}");
        assert!(
            stdout.starts_with(&format!(
                "role {role} needs no grants on schema {schema}: {what}"
            )) && stdout.trim_end().ends_with("nothing was granted"),
            "{role}: {stdout}"
        );
        assert!(
            stderr.starts_with(&format!(
                "warning: an application connected as role {role} can "
            )) && stderr.contains(risk)
                && stderr.contains("CREATE ROLE APP_ROLE LOGIN"),
            "{role}: {stderr}"
        );
    }
    // Nothing was granted to the owner role: it holds no table privilege of its own.
    let granted: i64 = runtime
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.role_table_grants \
                 WHERE grantee = $1 AND table_schema = $2",
            )
            .bind(&owner_role)
            .bind(&schema)
            .fetch_one(&admin.pool),
        )
        .unwrap();
    assert_eq!(granted, 0);

    admin.clean_up(&schema, &[&owner_role]);
}

/// Issue 14, item 1, as an operator runs it: after `projections rebuild orders --shadow`
/// (as the owner) the application role still has its read model's privileges (a rebuild
/// from scratch, run as the application, clears and rewrites it), and a shadow rebuild run
/// as the application is refused before it changes anything, saying once that the schema
/// owner must run it.
#[test]
fn a_shadow_rebuild_keeps_the_application_roles_access_and_needs_the_owner() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (role, schema) = (format!("cli_shadow_{tag}"), format!("cli_shadow_{tag}"));
    let admin = Admin::connect();
    let (runtime, exec) = (&admin.runtime, |sql: String| admin.exec(&sql));
    exec(format!("CREATE ROLE \"{role}\" LOGIN"));
    let (owner, app) = (database_url(), url_as(&role));
    let run = |args: &[&str], url: &str| {
        let mut all = args.to_vec();
        all.extend(["--schema", &schema]);
        chronik(&all, url)
    };
    let ok = |args: &[&str], url: &str| {
        let out = run(args, url);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ok(&["migrate"], &owner);
    ok(&["roles", "grant", &role], &owner);
    let store = runtime
        .block_on(chronik::postgres::PgEventStore::connect_with(
            &owner,
            chronik::postgres::PgStoreConfig::with_schema(
                chronik::postgres::SchemaName::new(schema.clone()).unwrap(),
            ),
        ))
        .unwrap();
    // Appends as the application, and waits until the feed shows the event (other tests'
    // transactions on the cluster may hold it back for a moment).
    let append = |stream: &str| {
        let placed = r#"{"customer_id":"c","total_amount":5}"#;
        let stdout = ok(
            &["append", stream, "--type", "OrderPlaced", "--data", placed],
            &app,
        );
        let cursor: chronik::FeedCursor = stdout
            .split_whitespace()
            .skip_while(|w| *w != "cursor")
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no cursor in {stdout}"));
        runtime
            .block_on(store.wait_for_feed(cursor, std::time::Duration::from_secs(60)))
            .unwrap();
    };
    append("order-r1");
    let stdout = ok(&["projections", "rebuild", "orders", "--shadow"], &owner);
    assert!(
        stdout.contains("order_summaries now holds 1 row"),
        "{stdout}"
    );

    append("order-r2");
    let stdout = ok(&["projections", "rebuild", "orders"], &app);
    assert!(
        stdout.contains("order_summaries now holds 2 rows"),
        "{stdout}"
    );

    let out = run(&["projections", "rebuild", "orders", "--shadow"], &app);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "a shadow rebuild creates, renames and drops tables in schema {schema}: run it as \
             the schema owner, the role that migrated the store"
        )) && stderr.matches("permission denied").count() == 1,
        "{stderr}"
    );
    // What it says it left is what the schema holds.
    assert!(
        stderr.contains(
            "(the live table order_summaries is unchanged and nothing of the rebuild is left: no \
             shadow table order_summaries__shadow, no checkpoint orders__shadow): "
        ),
        "{stderr}"
    );
    let shadow: Option<String> = runtime
        .block_on(
            sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(format!("\"{schema}\".order_summaries__shadow"))
                .fetch_one(&admin.pool),
        )
        .unwrap();
    assert_eq!(shadow, None, "nothing was left behind");
    let stdout = ok(&["projections", "status"], &app);
    assert!(!stdout.contains("__shadow"), "{stdout}");
    // The application runs its projection itself (it used to fail first in the setup
    // step, which creates the read model's table and needs CREATE on the schema).
    append("order-r3");
    ok(&["projections", "run", "orders", "--until-caught-up"], &app);
    let rows: i64 = runtime
        .block_on(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM \"{schema}\".order_summaries"
            )))
            .fetch_one(&admin.pool),
        )
        .unwrap();
    assert_eq!(rows, 3);
    // A read model's table that is missing, and a role that cannot create it: said as that.
    exec(format!("DROP TABLE \"{schema}\".order_summaries"));
    let out = run(&["projections", "rebuild", "orders"], &app);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: the read-model table order_summaries is not in schema {schema} and could not be \
             created: run `chronik migrate --schema {schema}` as the schema owner"
        )) && stderr.contains("permission denied for schema"),
        "{stderr}"
    );

    admin.clean_up(&schema, &[&role]);
}

/// Issue 14: a role that does not exist is bad input (status 2, as a mistyped role name
/// is), and the message says so and how to create it; nothing is granted.
#[test]
fn granting_to_a_role_that_does_not_exist_is_bad_input_and_says_how_to_create_it() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (role, schema) = (format!("cli_none_{tag}"), format!("cli_none_{tag}"));
    let owner = database_url();
    let out = chronik(&["migrate", "--schema", &schema], &owner);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = chronik(&["roles", "grant", &role, "--schema", &schema], &owner);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: cannot grant the application privileges to {role}: role {role} does not exist"
        )) && stderr.contains(&format!("CREATE ROLE {role} LOGIN"))
            && stderr.lines().count() == 1
            && !stderr.contains("not found:"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    Admin::connect().clean_up(&schema, &[]);
}

/// `roles grant` on a mistyped schema says that it does not exist (exit 4, as every
/// command does) and creates nothing; on an unmigrated one, what to run. It used to exit 1
/// with `schema nosuch is not migrated: run the migrations as the owner role first`, which
/// creates an empty store under the mistyped name.
#[test]
fn granting_on_a_mistyped_or_unmigrated_schema_says_so_as_every_command_does() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let schema = format!("cli_typo_{tag}");
    let url = database_url();
    let out = chronik(&["roles", "grant", "postgres", "--schema", &schema], &url);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: schema {schema} does not exist in this database ("
        )) && stderr.contains("check --schema"),
        "{stderr}"
    );
    let admin = Admin::connect();
    let exists: bool = admin
        .runtime
        .block_on(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&schema)
                .fetch_one(&admin.pool),
        )
        .unwrap();
    assert!(!exists, "nothing was created");
    admin.exec(&format!("CREATE SCHEMA \"{schema}\""));
    let out = chronik(&["roles", "grant", "postgres", "--schema", &schema], &url);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("run `chronik migrate --schema {schema}`")),
        "{stderr}"
    );
    admin.clean_up(&schema, &[]);
}

/// `migrate` run by a role that may not create the schema says the server's cause once:
/// it said it twice (`... permission denied for database X: error returned from database:
/// permission denied for database X at line 3655`).
#[test]
fn migrate_without_the_right_to_create_the_schema_says_the_cause_once() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (role, schema) = (format!("cli_nocreate_{tag}"), format!("cli_nocreate_{tag}"));
    let admin = Admin::connect();
    admin.exec(&format!("CREATE ROLE \"{role}\" LOGIN"));
    let out = chronik(&["migrate", "--schema", &schema], &url_as(&role));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot apply the migrations to ")
            && stderr.matches("permission denied for database").count() == 1
            && !stderr.contains(" at line "),
        "{stderr}"
    );
    admin.exec(&format!("DROP ROLE \"{role}\""));
}

/// `chronik doctor` warns, without failing, when it connects as a superuser or as the
/// schema's owner (an application connecting like that can rewrite history), says what to
/// do, and is quiet as the application role.
#[test]
fn doctor_warns_about_a_superuser_or_the_owner_and_not_about_the_application() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (owner, app, schema) = (
        format!("cli_own_{tag}"),
        format!("cli_app_{tag}"),
        format!("cli_doctor_{tag}"),
    );
    let admin = Admin::connect();
    let (runtime, exec) = (&admin.runtime, |sql: String| admin.exec(&sql));
    let database: String = runtime
        .block_on(sqlx::query_scalar("SELECT current_database()::text").fetch_one(&admin.pool))
        .unwrap();
    exec(format!("CREATE ROLE \"{owner}\" LOGIN"));
    exec(format!("CREATE ROLE \"{app}\" LOGIN"));
    exec(format!(
        "GRANT CREATE ON DATABASE \"{database}\" TO \"{owner}\""
    ));
    let as_owner = url_as(&owner);
    for args in [
        vec!["migrate", "--schema", &schema],
        vec!["roles", "grant", &app, "--schema", &schema],
    ] {
        let out = chronik(&args, &as_owner);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let doctor = |url: &str| {
        let out = chronik(
            &["doctor", "--schema", &schema, "--max-horizon-age", "3600"],
            url,
        );
        let stdout = text(&out.stdout);
        // Healthy, except that a role that cannot see other sessions' ages (the
        // application role) rightly counts another test's open transaction in this
        // shared cluster as a problem: any problem must be one of those.
        let only_hidden_ages = stdout
            .lines()
            .filter(|l| l.starts_with("  - ") && !l.contains("connected as"))
            .all(|l| l.contains("holds the feed horizon back") && l.contains("its age is hidden"));
        assert!(
            out.status.success() || only_hidden_ages,
            "{stdout}\n{}",
            text(&out.stderr)
        );
        stdout
    };
    let fix = format!("run `chronik roles grant APP_ROLE --schema {schema}` as the schema owner");

    let stdout = doctor(&database_url());
    assert!(
        stdout.contains("connected as postgres, a superuser")
            && stdout.contains("1 warning:\n  - connected as postgres, a superuser: ")
            && stdout.contains("SET session_replication_role = replica")
            && stdout.contains(&fix)
            && stdout.trim_end().ends_with("healthy"),
        "{stdout}"
    );
    let stdout = doctor(&as_owner);
    assert!(
        stdout.contains(&format!(
            "1 warning:\n  - connected as {owner}, the owner of the schema: "
        )) && stdout.contains("ALTER TABLE events DISABLE TRIGGER")
            && stdout.contains(&fix),
        "{stdout}"
    );
    let stdout = doctor(&url_as(&app));
    assert!(
        stdout.contains(&format!(
            "connected as {app}, neither a superuser nor the owner of the schema"
        )) && !stdout.contains("warning"),
        "{stdout}"
    );

    exec(format!("DROP SCHEMA \"{schema}\" CASCADE"));
    exec(format!(
        "REVOKE CREATE ON DATABASE \"{database}\" FROM \"{owner}\""
    ));
    for role in [&app, &owner] {
        exec(format!("DROP OWNED BY \"{role}\""));
        exec(format!("DROP ROLE \"{role}\""));
    }
}

/// Issue 14, item 5: run as an unprivileged LOGIN role, `doctor` cannot see how long
/// another role's write transaction has been open. Such a holder may be hours old, so it
/// is a problem, and the report says which privilege would reveal its age. Other tests'
/// transactions on a shared cluster may be listed too: only this test's is checked.
#[test]
fn doctor_as_an_unprivileged_role_counts_a_holder_of_hidden_age_as_a_problem() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (app, schema) = (format!("cli_hid_{tag}"), format!("cli_hidden_{tag}"));
    let admin = Admin::connect();
    let (runtime, exec) = (&admin.runtime, |sql: String| admin.exec(&sql));
    // Entered for the whole test, so that the open transaction can be dropped on a panic.
    let _entered = runtime.enter();
    exec(format!("CREATE ROLE \"{app}\" LOGIN"));
    for args in [
        vec!["migrate", "--schema", &schema],
        vec!["roles", "grant", &app, "--schema", &schema],
    ] {
        let out = chronik(&args, &database_url());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    // A write transaction of another role (postgres), left open.
    let mut open = runtime.block_on(admin.pool.begin()).unwrap();
    let (xid, pid): (String, i32) = runtime
        .block_on(
            sqlx::query_as("SELECT pg_current_xact_id()::text, pg_backend_pid()")
                .fetch_one(&mut *open),
        )
        .unwrap();

    // The default limit (60 s): an age that is known would be far below it.
    let out = chronik(&["doctor", "--schema", &schema], &url_as(&app));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let problem = format!(
        "  - a transaction holds the feed horizon back: pid {pid} (xid {xid}) (its age is \
         hidden from role {app}, so it counts as old: PostgreSQL shows it only to members of \
         pg_read_all_stats and of the holder's role postgres; to see it, run doctor as one or \
         `GRANT pg_read_all_stats TO {app}`); "
    );
    assert!(stdout.contains(&problem), "{stdout}");
    assert!(
        stdout.contains(&format!("end it with `SELECT pg_terminate_backend({pid})`")),
        "{stdout}"
    );
    assert!(!stdout.trim_end().ends_with("healthy"), "{stdout}");

    // The same in the JSON report.
    let out = chronik(&["doctor", "--schema", &schema, "--json"], &url_as(&app));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["healthy"], false, "{doc}");
    assert_eq!(doc["role"]["name"], app.as_str(), "{doc}");
    let holder = doc["horizon"]["holders"]
        .as_array()
        .and_then(|all| all.iter().find(|h| h["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} is not listed: {doc}"));
    assert_eq!(holder["age_seconds"], serde_json::Value::Null, "{doc}");
    assert_eq!(holder["old"], true, "{doc}");
    assert_eq!(holder["user"], "postgres", "{doc}");
    assert_eq!(
        holder["how_to_end"],
        format!("SELECT pg_terminate_backend({pid})"),
        "{doc}"
    );
    assert!(
        doc["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.contains(&format!("pid {pid} (xid {xid})"))
                && p.contains("pg_read_all_stats"))),
        "{doc}"
    );

    runtime.block_on(open.rollback()).unwrap();
    admin.clean_up(&schema, &[&app]);
}
