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

#[test]
fn the_owner_grants_and_the_application_appends_but_cannot_grant() {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (role, schema) = (format!("cli_app_{tag}"), format!("cli_roles_{tag}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime
        .block_on(sqlx::PgPool::connect(&database_url()))
        .unwrap();
    let exec = |sql: String| {
        runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&admin))
            .unwrap();
    };
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
    let out = chronik(&["roles", "grant", "postgres", "--schema", &schema], &owner);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is a superuser"),
        "{}",
        text(&out.stderr)
    );

    exec(format!("DROP SCHEMA \"{schema}\" CASCADE"));
    exec(format!("DROP OWNED BY \"{role}\""));
    exec(format!("DROP ROLE \"{role}\""));
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

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime
        .block_on(sqlx::PgPool::connect(&database_url()))
        .unwrap();
    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
    runtime
        .block_on(sqlx::query(sqlx::AssertSqlSafe(drop.as_str())).execute(&admin))
        .unwrap();
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime
        .block_on(sqlx::PgPool::connect(&database_url()))
        .unwrap();
    let exec = |sql: String| {
        runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&admin))
            .unwrap();
    };
    let database: String = runtime
        .block_on(sqlx::query_scalar("SELECT current_database()::text").fetch_one(&admin))
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Entered for the whole test, so that the open transaction can be dropped on a panic.
    let _entered = runtime.enter();
    let admin = runtime
        .block_on(sqlx::PgPool::connect(&database_url()))
        .unwrap();
    let exec = |sql: String| {
        runtime
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&admin))
            .unwrap();
    };
    exec(format!("CREATE ROLE \"{app}\" LOGIN"));
    for args in [
        vec!["migrate", "--schema", &schema],
        vec!["roles", "grant", &app, "--schema", &schema],
    ] {
        let out = chronik(&args, &database_url());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    // A write transaction of another role (postgres), left open.
    let mut open = runtime.block_on(admin.begin()).unwrap();
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
    exec(format!("DROP SCHEMA \"{schema}\" CASCADE"));
    exec(format!("DROP OWNED BY \"{app}\""));
    exec(format!("DROP ROLE \"{app}\""));
}
