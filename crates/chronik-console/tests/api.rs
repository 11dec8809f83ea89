//! The console's JSON API and pages against a PostgreSQL store with data: status codes,
//! document shapes, pagination bounds, 404s and 400s with their messages, escaping, the
//! rebuild token, the live tail, and a database that is down.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chronik_console::{Console, MAX_PAGE};
use chronik_postgres::PgEventStore;
use chronik_store::CheckpointStore as _;
use common::{Counting, XSS, XSS_STREAM, XSS_TYPE, append, event, get, seed, send, upcasters};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

/// The router of a console on `store` (upcasters registered, `token` as admin token,
/// `read_model` rebuildable), with its rebuild queue served by `rebuilds`.
/// The one test here that holds a write transaction open pauses every feed reader of the
/// cluster (nothing behind it is visible until it ends: docs/ordering.md), and the tests of
/// this binary run at once: it takes this lock exclusively, every other test shared, so that
/// no test's feed is held back by it (`overview_reports_...` once saw 0 visible events of 13).
static HORIZON: std::sync::LazyLock<tokio::sync::RwLock<()>> =
    std::sync::LazyLock::new(|| tokio::sync::RwLock::new(()));

fn console(store: PgEventStore, token: Option<&str>, rebuilds: &Counting) -> axum::Router {
    let (router, queue) = Console::new(store)
        .upcasters(upcasters())
        .binary("chronik")
        .admin_token(token.map(str::to_owned))
        .rebuildable(["read_model".to_owned()])
        .into_parts();
    let rebuilds = rebuilds.clone();
    tokio::spawn(async move { queue.run(&rebuilds).await });
    router
}

async fn bad_request(router: &axum::Router, uri: &str, says: &str) {
    let r = get(router, uri).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
    assert!(r.content_type.starts_with("application/json"), "{uri}");
    let message = r.error();
    assert!(
        message.contains(says),
        "{uri}: {message:?} should say {says:?}"
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn overview_reports_size_categories_feed_head_and_horizon(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    seed(&store).await;
    store
        .save_checkpoint("read_model", chronik_core::FeedCursor::START, 0)
        .await
        .unwrap();
    let router = console(store, None, &Counting::default());

    let r = get(&router, "/api/overview").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    // 5 acct + 3 + 1 order + 2 saga + 1 stock + 1 note
    assert_eq!(doc["events"], 13);
    assert_eq!(doc["streams"], 10);
    assert_eq!(doc["events_last_minute"], 13);
    assert!(doc["rate_per_second"].as_f64().unwrap() > 0.0);
    let categories: Vec<(String, u64, u64)> = doc["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["category"].as_str().unwrap().to_owned(),
                c["streams"].as_u64().unwrap(),
                c["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        categories.contains(&("acct".to_owned(), 5, 5)),
        "{categories:?}"
    );
    assert!(
        categories.contains(&("order".to_owned(), 2, 4)),
        "{categories:?}"
    );
    assert_eq!(doc["feed_head"]["visible_events"], 13);
    assert!(doc["feed_head"]["cursor"].is_string());
    assert_eq!(doc["horizon"]["held_back"], false);
    assert!(doc["horizon"]["holders"].is_array());
    let projections = doc["projections"].as_array().unwrap();
    assert_eq!(projections.len(), 1);
    assert_eq!(projections[0]["name"], "read_model");
    assert_eq!(projections[0]["lag_events"], 13);
    assert_eq!(projections[0]["rebuildable"], true);

    bad_request(&router, "/api/overview?verbose=1", "verbose").await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn overview_names_the_transaction_holding_the_horizon(pool: sqlx::PgPool) {
    let _horizon = HORIZON.write().await;
    let store = PgEventStore::from_pool(pool.clone());
    seed(&store).await;
    // An open write transaction, then a committed event behind it: invisible until it ends.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    append(
        &store,
        "acct-9",
        vec![event("Opened", 1, json!({}), Default::default())],
    )
    .await;
    let router = console(store, None, &Counting::default());
    let doc = get(&router, "/api/overview").await.json();
    assert_eq!(doc["horizon"]["held_back"], true, "{doc}");
    let blocker = &doc["horizon"]["blocker"];
    assert_eq!(blocker["kind"], "session");
    assert!(blocker["pid"].is_i64());
    assert!(
        blocker["how_to_end"]
            .as_str()
            .unwrap()
            .contains("pg_terminate_backend"),
        "{blocker}"
    );
    let page = get(&router, "/").await;
    assert!(page.body.contains("Feed held back"), "{}", page.body);
    holder.rollback().await.unwrap();
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn streams_are_listed_by_prefix_and_category_a_page_at_a_time(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    seed(&store).await;
    let router = console(store, None, &Counting::default());

    // Walking the pages of two finds every stream once, in id order.
    let mut seen = Vec::new();
    let mut uri = "/api/streams?limit=2".to_owned();
    loop {
        let r = get(&router, &uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        let doc = r.json();
        assert_eq!(doc["limit"], 2);
        let page = doc["streams"].as_array().unwrap();
        assert!(page.len() <= 2);
        for s in page {
            let id = s["stream_id"].as_str().unwrap().to_owned();
            assert_eq!(s["category"], id.split('-').next().unwrap());
            assert!(s["version"].as_u64().unwrap() >= 1);
            seen.push(id);
        }
        match doc["next"].as_str() {
            Some(next) => {
                assert_eq!(page.len(), 2, "a page with a next is full");
                uri = format!("/api/streams?limit=2&after={}", urlencode(next));
            }
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 10, "{seen:?}");

    let doc = get(&router, "/api/streams?prefix=acct-&limit=3")
        .await
        .json();
    let ids: Vec<&str> = doc["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acct-1", "acct-2", "acct-3"]);
    assert_eq!(doc["next"], "acct-3");
    let doc = get(&router, "/api/streams?prefix=acct-&after=acct-3")
        .await
        .json();
    assert_eq!(doc["streams"].as_array().unwrap().len(), 2);
    assert!(doc["next"].is_null());

    let doc = get(&router, "/api/streams?category=order").await.json();
    let ids: Vec<&str> = doc["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-1", "order-2"]);
    let order1 = &doc["streams"][0];
    assert_eq!(order1["version"], 3);

    // A prefix is literal: `%` and `_` are no wildcards.
    let doc = get(&router, "/api/streams?prefix=a%25").await.json();
    assert_eq!(doc["streams"].as_array().unwrap().len(), 0);

    let max = get(&router, &format!("/api/streams?limit={MAX_PAGE}")).await;
    assert_eq!(max.status, StatusCode::OK);
    bad_request(&router, "/api/streams?limit=0", "limit must be").await;
    bad_request(
        &router,
        &format!("/api/streams?limit={}", MAX_PAGE + 1),
        "from 1 to 500",
    )
    .await;
    bad_request(&router, "/api/streams?limit=ten", "\"ten\"").await;
    bad_request(&router, "/api/streams?sort=desc", "sort").await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_stream_shows_its_events_as_stored_and_as_read(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    seed(&store).await;
    let router = console(store.clone(), None, &Counting::default());

    let r = get(&router, "/api/streams/order-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["stream_id"], "order-1");
    assert_eq!(doc["category"], "order");
    assert_eq!(doc["version"], 3);
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(doc["next_from"].is_null());
    let placed = &events[0];
    let stored = &common::stored(&store, "order-1").await[0];
    assert_eq!(placed["version"], 1);
    assert_eq!(placed["event_id"], stored.event_id.to_string());
    assert_eq!(placed["cursor"], stored.cursor.to_string());
    assert_eq!(placed["event_type"], "Placed");
    assert_eq!(placed["schema_version"], 1);
    assert_eq!(placed["payload"], json!({ "total": 10 }));
    assert!(placed["recorded_at"].as_str().unwrap().ends_with("UTC"));
    // Read through the upcasters: v1 `total` is v2 `amount`.
    assert_eq!(placed["read_as"]["upcast"], true);
    assert_eq!(placed["read_as"]["schema_version"], 2);
    assert_eq!(placed["read_as"]["payload"], json!({ "amount": 10 }));
    assert_eq!(events[1]["read_as"]["upcast"], false);

    // Pagination by version.
    let doc = get(&router, "/api/streams/order-1?from=2&limit=1")
        .await
        .json();
    assert_eq!(doc["events"].as_array().unwrap().len(), 1);
    assert_eq!(doc["events"][0]["version"], 2);
    assert_eq!(doc["next_from"], 3);
    let doc = get(&router, "/api/streams/order-1?from=3&limit=1")
        .await
        .json();
    assert!(doc["next_from"].is_null());
    let doc = get(&router, "/api/streams/order-1?from=9").await.json();
    assert_eq!(doc["events"].as_array().unwrap().len(), 0);

    // Stream ids with markup characters go through the path percent-encoded.
    let r = get(&router, &format!("/api/streams/{}", urlencode(XSS_STREAM))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["stream_id"], XSS_STREAM);
    assert_eq!(doc["events"][0]["headers"]["user"], XSS);

    let r = get(&router, "/api/streams/order-404").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("order-404"), "{}", r.body);
    bad_request(&router, "/api/streams/order-1?from=0", "from must be").await;
    bad_request(&router, "/api/streams/order-1?from=-1", "\"-1\"").await;
    bad_request(&router, "/api/streams/order-1?limit=0", "limit must be").await;
    bad_request(&router, "/api/streams/order-1?to=3", "to").await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn an_event_and_its_causation_chain(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    let seeded = seed(&store).await;
    let router = console(store, None, &Counting::default());

    let r = get(&router, &format!("/api/events/{}", seeded.child)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["stream_id"], "stock-1");
    assert_eq!(doc["event_type"], "Reserved");
    assert_eq!(
        doc["correlation_id"],
        seeded.correlation.as_uuid().to_string()
    );
    assert_eq!(doc["causation_id"], seeded.root.to_string());

    let doc = get(&router, &format!("/api/events/{}/trace", seeded.grandchild))
        .await
        .json();
    assert_eq!(
        doc["correlation_id"],
        seeded.correlation.as_uuid().to_string()
    );
    let chain: Vec<(u64, String, Value)> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["depth"].as_u64().unwrap(),
                l["event"]["event_id"].as_str().unwrap().to_owned(),
                l["parent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [
            (1, seeded.root.to_string(), Value::Null),
            (2, seeded.child.to_string(), json!(seeded.root.to_string())),
            (
                3,
                seeded.grandchild.to_string(),
                json!(seeded.child.to_string())
            ),
        ]
    );

    // An event without a correlation is a chain of one.
    let doc = get(&router, &format!("/api/events/{}/trace", seeded.xss_event))
        .await
        .json();
    assert!(doc["correlation_id"].is_null());
    assert_eq!(doc["events"].as_array().unwrap().len(), 1);

    let unknown = uuid::Uuid::new_v4();
    let r = get(&router, &format!("/api/events/{unknown}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains(&unknown.to_string()));
    let r = get(&router, &format!("/api/events/{unknown}/trace")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    bad_request(&router, "/api/events/not-a-uuid", "bad event id").await;
    bad_request(
        &router,
        "/api/events/00000000-0000-0000-0000-000000000000",
        "bad event id",
    )
    .await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn projections_report_lag_and_parked_events(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    let seeded = seed(&store).await;
    let head = chronik_store::EventStore::feed_head(&store)
        .await
        .unwrap()
        .last
        .unwrap();
    store.save_checkpoint("caught_up", head, 13).await.unwrap();
    store
        .save_checkpoint("behind", chronik_core::FeedCursor::START, 0)
        .await
        .unwrap();
    chronik_postgres::park_event(
        &store,
        &chronik_postgres::ParkedEvent {
            projection: "behind".to_owned(),
            event_id: seeded.xss_event,
            stream_id: chronik_core::StreamId::new(XSS_STREAM).unwrap(),
            version: chronik_core::Version::FIRST,
            reason: XSS.to_owned(),
            decided_by: "test".to_owned(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    let router = console(store, None, &Counting::default());

    let r = get(&router, "/api/projections").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["rebuilds_enabled"], false);
    assert!(doc["held_back_by"].is_null());
    let by_name = |name: &str| {
        doc["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let caught_up = by_name("caught_up");
    assert_eq!(caught_up["lag_events"], 0);
    assert_eq!(caught_up["lag_seconds"], 0.0);
    assert_eq!(caught_up["events_processed"], 13);
    assert_eq!(caught_up["position"], head.to_string());
    assert_eq!(caught_up["rebuildable"], false);
    let behind = by_name("behind");
    assert_eq!(behind["lag_events"], 13);
    assert!(behind["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert!(behind["state"].is_null());
    assert_eq!(behind["parked_open"], 1);
    assert_eq!(behind["parked_total"], 1);
    assert_eq!(
        behind["parked"][0]["event_id"],
        seeded.xss_event.to_string()
    );
    assert_eq!(behind["parked"][0]["state"], "pending");

    let page = get(&router, "/projections").await;
    assert!(!page.body.contains(XSS), "the parked reason is escaped");
    assert!(page.body.contains("Rebuilds are off"));
    bad_request(&router, "/api/projections?all=1", "all").await;
}

fn rebuild_request(name: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::post(format!("/api/projections/{name}/rebuild"));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::empty()).unwrap()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_rebuild_needs_a_configured_token_and_the_request_must_carry_it(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);

    // Started without a token: every rebuild is refused, even one carrying a token.
    let rebuilds = Counting::default();
    let router = console(store.clone(), None, &rebuilds);
    for token in [None, Some("anything")] {
        let r = send(&router, rebuild_request("read_model", token)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert!(r.error().contains("--admin-token"), "{}", r.body);
    }
    // An empty token is no token.
    let router = console(store.clone(), Some(""), &rebuilds);
    let r = send(&router, rebuild_request("read_model", Some(""))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(rebuilds.count(), 0);

    // Started with one: the request must carry exactly it.
    let router = console(store, Some("s3cret"), &rebuilds);
    let r = send(&router, rebuild_request("read_model", None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.error().contains("Authorization: Bearer"), "{}", r.body);
    for wrong in ["s3cre", "s3cret2", "S3CRET"] {
        let r = send(&router, rebuild_request("read_model", Some(wrong))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{wrong}: {}", r.body);
    }
    assert_eq!(
        rebuilds.count(),
        0,
        "no refused request reached the rebuilder"
    );
    let r = send(&router, rebuild_request("elsewhere", Some("s3cret"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(
        r.error().contains("read_model"),
        "names what it can rebuild: {}",
        r.body
    );
    let r = send(&router, rebuild_request("read_model", Some("s3cret"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({ "name": "read_model", "scanned": 7, "handled": 5 })
    );
    assert_eq!(rebuilds.count(), 1);
    // A GET is not a rebuild.
    let r = get(&router, "/api/projections/read_model/rebuild").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(rebuilds.count(), 1);
}

/// Reads server-sent messages from `body` until one of type `event` whose data names
/// `wanted`; returns the data of every `event` message read.
async fn read_until(body: &mut Body, wanted: &str) -> Vec<Value> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        let frame = body.frame().await.expect("the tail ended").unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let kind = message.lines().find_map(|l| l.strip_prefix("event: "));
            let data = message.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some("event"), Some(data)) = (kind, data) {
                let doc: Value = serde_json::from_str(data).unwrap();
                let found = doc["event_id"] == wanted;
                events.push(doc);
                if found {
                    return events;
                }
            }
        }
    }
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_live_tail_streams_new_events_through_its_filters(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    seed(&store).await;
    let router = console(store.clone(), None, &Counting::default());

    let response = tower::ServiceExt::oneshot(
        router.clone(),
        Request::get("/api/tail?category=order&from_end=true")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // Written after the tail started: an acct event it filters out, then an order event.
    append(
        &store,
        "acct-1",
        vec![event("Closed", 1, json!({}), Default::default())],
    )
    .await;
    let placed = event("Placed", 1, json!({ "total": 4 }), Default::default());
    let id = placed.event_id().to_string();
    append(&store, "order-3", vec![placed]).await;
    let seen = tokio::time::timeout(Duration::from_secs(60), read_until(&mut body, &id))
        .await
        .expect("the tail delivers a new event");
    assert_eq!(seen.len(), 1, "only the new order event: {seen:?}");
    assert_eq!(seen[0]["stream_id"], "order-3");
    assert_eq!(seen[0]["read_as"]["payload"], json!({ "amount": 4 }));

    // Without from_end it starts with the last events of the filter (here, one stream's).
    let response = tower::ServiceExt::oneshot(
        router.clone(),
        Request::get("/api/tail?stream=order-1")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let last = common::stored(&store, "order-1").await.pop().unwrap();
    let mut body = response.into_body();
    let seen = tokio::time::timeout(
        Duration::from_secs(60),
        read_until(&mut body, &last.event_id.to_string()),
    )
    .await
    .unwrap();
    let versions: Vec<u64> = seen
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    bad_request(&router, "/api/tail?after=12", "bad cursor").await;
    bad_request(&router, "/api/tail?from_end=yes", "from_end").await;
    bad_request(&router, "/api/tail?stream=a%20b", "bad stream id").await;
    bad_request(&router, "/api/tail?follow=1", "follow").await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn pages_show_the_facts_and_escape_everything_from_events(pool: sqlx::PgPool) {
    let _horizon = HORIZON.read().await;
    let store = PgEventStore::from_pool(pool);
    let seeded = seed(&store).await;
    let router = console(store, None, &Counting::default());

    let checks: &[(&str, &[&str])] = &[
        (
            "/",
            &[
                "Overview",
                "Events",
                ">13<",
                "acct",
                "Transactions holding the feed horizon",
            ],
        ),
        (
            "/streams",
            &["acct-1", "order-2", "href=\"/streams/acct-1\""],
        ),
        ("/streams?category=order", &["order-1", "order-2"]),
        (
            "/streams/order-1",
            &[
                "Placed",
                "LineAdded",
                "read as <strong>Placed</strong> v2",
                "&quot;amount&quot;: 10",
            ],
        ),
        ("/projections", &["Projections", "Rebuilds are off"]),
        ("/tail", &["Live tail", "tail-filters"]),
    ];
    for (uri, wanted) in checks {
        let r = get(&router, uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        assert!(r.content_type.starts_with("text/html"), "{uri}");
        for w in *wanted {
            assert!(
                r.body.contains(w),
                "{uri} should contain {w:?}:\n{}",
                r.body
            );
        }
    }
    let r = get(&router, &format!("/events/{}", seeded.grandchild)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Requested") && r.body.contains("Confirmed"));
    assert!(
        r.body.contains("margin-left: 4em"),
        "the grandchild is indented twice"
    );

    // Everything from the XSS event is text: the stream id, the type, the header, the payload.
    for uri in [
        format!("/streams/{}", urlencode(XSS_STREAM)),
        format!("/events/{}", seeded.xss_event),
        "/streams".to_owned(),
    ] {
        let r = get(&router, &uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        for raw in [XSS, XSS_TYPE, "<b>bold</b>"] {
            assert!(!r.body.contains(raw), "{uri} contains {raw:?} unescaped");
        }
        assert!(r.body.contains("note-&lt;b&gt;bold&lt;/b&gt;"), "{uri}");
    }
    let r = get(&router, &format!("/streams/{}", urlencode(XSS_STREAM))).await;
    assert!(
        r.body
            .contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"),
        "{}",
        r.body
    );
    assert!(r.body.contains("&lt;img/src=x/onerror=alert(1)&gt;"));

    // Bad input and unknown things, as pages.
    let r = get(&router, "/streams/order-404").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("order-404") && r.body.contains("id=\"banner\""));
    let r = get(&router, "/streams?limit=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("limit must be"));
    let r = get(&router, "/nowhere").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.content_type.starts_with("text/html"));
    let r = get(&router, "/api/nowhere").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("/api/nowhere"));

    // The assets are served from the binary.
    let css = get(&router, "/assets/console.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.content_type.starts_with("text/css"));
    let js = get(&router, "/assets/console.js").await;
    assert!(js.content_type.starts_with("text/javascript"));
    assert!(
        !js.body.contains("innerHTML"),
        "the script writes text only"
    );
    assert_eq!(
        get(&router, "/assets/other.js").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_database_that_is_down_gets_a_banner_not_a_blank_page() {
    // Nothing listens on port 1.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let router = console(PgEventStore::from_pool(pool), None, &Counting::default());
    for uri in ["/", "/streams", "/streams/order-1", "/projections"] {
        let r = get(&router, uri).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {}",
            r.body
        );
        assert!(r.body.contains("Database unavailable"), "{uri}: {}", r.body);
        assert!(
            r.body.contains("<nav>"),
            "{uri}: the page keeps its navigation"
        );
    }
    // The tail page itself needs no database; its stream says the database is down.
    assert_eq!(get(&router, "/tail").await.status, StatusCode::OK);
    for uri in ["/api/overview", "/api/streams", "/api/projections"] {
        let r = get(&router, uri).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert!(!r.error().is_empty());
    }
    // The tail starts, however it was asked to, and its first message says the database is
    // down (an error status instead would stop the page's EventSource for good).
    for (uri, says) in [
        ("/api/tail?after=1:1", "cannot read the feed"),
        ("/api/tail", "cannot find where the tail starts"),
        ("/api/tail?from_end=true", "cannot read the feed head"),
    ] {
        let response = tower::ServiceExt::oneshot(
            router.clone(),
            Request::get(uri).body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let mut body = response.into_body();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        assert!(text.starts_with("event: down\n"), "{uri}: {text}");
        assert!(text.contains(says), "{uri}: {text}");
    }
}
