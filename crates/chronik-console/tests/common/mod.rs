//! What the console's tests share: a store with data, requests through the router.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chronik_console::{Rebuild, Rebuilt};
use chronik_core::{
    CausationId, CorrelationId, EventId, EventType, ExpectedVersion, Metadata, NewEvent,
    RecordedEvent, StreamId, UpcasterRegistry,
};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore as _, StreamAppend};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use uuid::Uuid;

/// A payload that must render as text.
pub const XSS: &str = "<script>document.title='pwned'</script>";
/// An event type that would be markup if it were not escaped.
pub const XSS_TYPE: &str = "<img/src=x/onerror=alert(1)>";
/// A stream id that would be markup if it were not escaped.
pub const XSS_STREAM: &str = "note-<b>bold</b>";

pub fn event(event_type: &str, schema: u32, payload: Value, metadata: Metadata) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new(event_type).unwrap(),
        schema,
        payload,
        metadata,
    )
    .unwrap()
}

pub async fn append(store: &PgEventStore, stream: &str, events: Vec<NewEvent>) {
    let stream = StreamId::new(stream).unwrap();
    store
        .append_streams(&[StreamAppend::new(stream, ExpectedVersion::Any, events)])
        .await
        .unwrap();
}

/// The data every test sees: five `acct` streams, two `order` streams (one with three
/// events, the first at schema v1), a causation chain under one correlation, and the XSS
/// stream.
pub struct Seeded {
    pub correlation: CorrelationId,
    pub root: EventId,
    pub child: EventId,
    pub grandchild: EventId,
    pub xss_event: EventId,
}

pub async fn seed(store: &PgEventStore) -> Seeded {
    for i in 1..=5 {
        append(
            store,
            &format!("acct-{i}"),
            vec![event("Opened", 1, json!({ "n": i }), Metadata::default())],
        )
        .await;
    }
    append(
        store,
        "order-1",
        vec![
            event("Placed", 1, json!({ "total": 10 }), Metadata::default()),
            event("LineAdded", 1, json!({ "sku": "a" }), Metadata::default()),
            event("Shipped", 1, json!({}), Metadata::default()),
        ],
    )
    .await;
    append(
        store,
        "order-2",
        vec![event(
            "Placed",
            2,
            json!({ "amount": 3 }),
            Metadata::default(),
        )],
    )
    .await;
    let correlation = CorrelationId::new(Uuid::new_v4());
    let root = event(
        "Requested",
        1,
        json!({}),
        Metadata::default().with_correlation(correlation),
    );
    let child = event(
        "Reserved",
        1,
        json!({}),
        Metadata::default()
            .with_correlation(correlation)
            .with_causation(CausationId::new(root.event_id().as_uuid())),
    );
    let grandchild = event(
        "Confirmed",
        1,
        json!({}),
        Metadata::default()
            .with_correlation(correlation)
            .with_causation(CausationId::new(child.event_id().as_uuid())),
    );
    let ids = (root.event_id(), child.event_id(), grandchild.event_id());
    append(store, "saga-1", vec![root]).await;
    append(store, "stock-1", vec![child]).await;
    append(store, "saga-1", vec![grandchild]).await;
    let mut meta = Metadata::default();
    meta.headers.insert("user".to_owned(), XSS.to_owned());
    let xss = event(XSS_TYPE, 1, json!({ "note": XSS }), meta);
    let xss_event = xss.event_id();
    append(store, XSS_STREAM, vec![xss]).await;
    Seeded {
        correlation,
        root: ids.0,
        child: ids.1,
        grandchild: ids.2,
        xss_event,
    }
}

/// Upcasters under which `Placed` v1 `total` becomes v2 `amount`.
pub fn upcasters() -> Arc<UpcasterRegistry> {
    Arc::new(
        UpcasterRegistry::builder()
            .current("Placed", 2)
            .step("Placed", 1, |mut v| {
                let total = v
                    .as_object_mut()
                    .and_then(|o| o.remove("total"))
                    .ok_or("no total")?;
                Ok(json!({ "amount": total }))
            })
            .build()
            .unwrap(),
    )
}

/// A rebuilder that counts the rebuilds it was asked for.
#[derive(Debug, Default, Clone)]
pub struct Counting(pub Arc<AtomicUsize>);

impl Rebuild for Counting {
    async fn rebuild(&self, _name: &str) -> Result<Rebuilt, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Rebuilt::new(7, 5))
    }
}

impl Counting {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The error message of a failed API request.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {}", self.body))
            .to_owned()
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Response {
    let response = tower::ServiceExt::oneshot(router.clone(), request)
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Response {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn get(router: &Router, uri: &str) -> Response {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// The events of a stream, as stored.
pub async fn stored(store: &PgEventStore, stream: &str) -> Vec<RecordedEvent> {
    use futures::TryStreamExt as _;
    store
        .read_stream(
            &StreamId::new(stream).unwrap(),
            chronik_core::Version::FIRST,
        )
        .try_collect()
        .await
        .unwrap()
}
