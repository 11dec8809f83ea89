//! The console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs when they are missing) driven over
//! WebDriver, against consoles served on real ports over a PostgreSQL store with data.
//!
//! One browser session runs every check, in the order a person would look: the overview,
//! a stream reached by its link, payloads that are markup rendered as text (no script
//! runs), rebuilds refused without the admin token and run with it, the live tail showing
//! an event appended after it started, and the banner of a console whose database is down.
//! Every wait is on a condition, bounded by [`DEADLINE`]; screenshots of the pages are
//! saved under the target directory (`console-screenshots/`, named in the test's output).
//!
//! A missing `chromedriver` or `chromium` fails the test (it is never skipped): CI installs
//! them, and a developer can with `apt-get install -y chromium chromium-driver`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chronik_console::Console;
use chronik_core::FeedCursor;
use chronik_postgres::PgEventStore;
use chronik_store::CheckpointStore as _;
use common::{Counting, XSS_STREAM, XSS_TYPE, append, event, seed, upcasters};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest any one condition is waited for.
const DEADLINE: Duration = Duration::from_secs(30);
/// A payload that would open an alert if it were markup.
const ALERT: &str = "<script>alert(1)</script>";
const TOKEN: &str = "s3cret";

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser test needs Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; .ci/run installs them when missing)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = artefacts().join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session, once chromedriver accepts one.
    async fn session(&mut self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,900"],
            }),
        );
        // An alert stays open instead of being dismissed, so that a check can see it.
        caps.insert("unhandledPromptBehavior".to_owned(), json!("ignore"));
        let start = Instant::now();
        loop {
            let attempt =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&self.url)
                    .await;
            match attempt {
                Ok(client) => return client,
                Err(e) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        panic!("{CHROMEDRIVER} exited ({status}) before a session started: {e}");
                    }
                    assert!(
                        start.elapsed() < DEADLINE,
                        "no browser session within {DEADLINE:?}: {e} (see {})",
                        artefacts().join("chromedriver.log").display()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots and the chromedriver log go.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let path = artefacts().join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Runs `check` until it answers `Ok`, for at most [`DEADLINE`]; fails saying what never
/// happened and what `check` last saw.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > DEADLINE => {
                panic!("{what}: not within {DEADLINE:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The text of the first element `css` selects.
async fn text(client: &Client, css: &str) -> Result<String, String> {
    let element = client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?;
    element.text().await.map_err(|e| format!("{css}: {e}"))
}

/// Waits until the text of `css` contains `wanted`, and returns it.
async fn wait_text(client: &Client, css: &str, wanted: &str) -> String {
    eventually(&format!("{css} shows {wanted:?}"), async || {
        let t = text(client, css).await?;
        if t.contains(wanted) { Ok(t) } else { Err(t) }
    })
    .await
}

async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in client.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

async fn script(client: &Client, js: &str) -> Value {
    client.execute(js, Vec::new()).await.unwrap()
}

/// Serves `console` on a free port, its rebuilds through `rebuilds`.
async fn serve(console: Console, rebuilds: Counting) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (router, queue) = console.into_parts();
    tokio::spawn(async move { queue.run(&rebuilds).await });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The three consoles the checks visit.
struct Consoles {
    /// Started without an admin token: it only looks.
    looking: String,
    /// Started with [`TOKEN`]; its rebuilds are counted in `rebuilds`.
    admin: String,
    rebuilds: Counting,
    /// On a database nothing listens for.
    down: String,
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_console_in_a_real_browser(pool: sqlx::PgPool) {
    let mut driver = Driver::start();
    let store = PgEventStore::from_pool(pool);
    seed(&store).await;
    append(
        &store,
        "note-1",
        vec![event(
            "Noted",
            1,
            json!({ "note": ALERT }),
            Default::default(),
        )],
    )
    .await;
    store
        .save_checkpoint("read_model", FeedCursor::START, 0)
        .await
        .unwrap();
    let rebuildable = || ["read_model".to_owned()];
    let rebuilds = Counting::default();
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let consoles = Consoles {
        looking: serve(
            Console::new(store.clone())
                .upcasters(upcasters())
                .rebuildable(rebuildable()),
            Counting::default(),
        )
        .await,
        admin: serve(
            Console::new(store.clone())
                .admin_token(Some(TOKEN.to_owned()))
                .rebuildable(rebuildable()),
            rebuilds.clone(),
        )
        .await,
        rebuilds,
        down: serve(
            Console::new(PgEventStore::from_pool(unreachable)),
            Counting::default(),
        )
        .await,
    };

    let client = driver.session().await;
    let checked = AssertUnwindSafe(checks(&client, &store, &consoles))
        .catch_unwind()
        .await;
    // The browser goes away whatever the checks found.
    let _ = client.close().await;
    drop(driver);
    if let Err(failure) = checked {
        std::panic::resume_unwind(failure);
    }
}

async fn checks(client: &Client, store: &PgEventStore, consoles: &Consoles) {
    let Consoles {
        looking,
        admin,
        down,
        ..
    } = consoles;

    // The overview: 13 seeded events and the note, 11 streams, the projection and its lag.
    client.goto(&format!("{looking}/")).await.unwrap();
    assert_eq!(text(client, "#events").await.unwrap(), "14");
    assert_eq!(text(client, "#streams").await.unwrap(), "11");
    let row = text(client, "tr[data-projection=\"read_model\"]")
        .await
        .unwrap();
    assert!(row.starts_with("read_model"), "{row}");
    assert_eq!(
        text(client, "tr[data-projection=\"read_model\"] .lag")
            .await
            .unwrap(),
        "14"
    );
    assert!(
        client.title().await.unwrap().starts_with("Overview"),
        "the page's title"
    );
    screenshot(client, "overview").await;

    // A category's streams, then one of them by its link: its events in order, upcast.
    client
        .goto(&format!("{looking}/streams?category=order"))
        .await
        .unwrap();
    assert_eq!(texts(client, "a.stream").await, ["order-1", "order-2"]);
    client
        .find(Locator::LinkText("order-1"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the link leads to /streams/order-1", async || {
        let url = client.current_url().await.map_err(|e| e.to_string())?;
        if url.path() == "/streams/order-1" {
            Ok(())
        } else {
            Err(url.to_string())
        }
    })
    .await;
    wait_text(client, "#stream-id", "order-1").await;
    assert_eq!(
        texts(client, "article.event .type").await,
        ["Placed", "LineAdded", "Shipped"]
    );
    let first = text(client, "article.event header").await.unwrap();
    assert!(first.contains("read as Placed v2"), "{first}");
    let upcast = text(client, "article.event pre.upcast").await.unwrap();
    assert!(upcast.contains("\"amount\": 10"), "{upcast}");
    screenshot(client, "stream").await;

    // Markup in events is text: no alert opens, no element is made of it.
    client
        .goto(&format!("{looking}/streams/note-1"))
        .await
        .unwrap();
    if let Ok(alert) = client.get_alert_text().await {
        panic!("the payload ran as a script: an alert says {alert:?}");
    }
    let payload = text(client, "pre.payload").await.unwrap();
    assert!(payload.contains(ALERT), "the payload as text: {payload}");
    assert_eq!(
        script(
            client,
            "return document.querySelectorAll('main script').length"
        )
        .await,
        json!(0)
    );
    let xss_stream = format!("{looking}/streams/note-%3Cb%3Ebold%3C%2Fb%3E");
    client.goto(&xss_stream).await.unwrap();
    assert!(client.get_alert_text().await.is_err(), "no alert opens");
    assert_eq!(text(client, "#stream-id").await.unwrap(), XSS_STREAM);
    assert_eq!(text(client, "article.event .type").await.unwrap(), XSS_TYPE);
    assert_eq!(
        script(
            client,
            "return document.querySelectorAll('main b, main img, main script').length"
        )
        .await,
        json!(0)
    );
    let title = client.title().await.unwrap();
    assert!(!title.contains("pwned"), "a header's script ran: {title}");
    screenshot(client, "xss").await;

    // Without the admin token there is no rebuild button, and the API refuses one.
    client
        .goto(&format!("{looking}/projections"))
        .await
        .unwrap();
    let off = text(client, "#rebuilds-off").await.unwrap();
    assert!(off.contains("--admin-token"), "{off}");
    assert!(
        client
            .find_all(Locator::Css("button.rebuild"))
            .await
            .unwrap()
            .is_empty(),
        "a console without a token shows no rebuild button"
    );
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             fetch('/api/projections/read_model/rebuild', { method: 'POST' })\
               .then(r => done(r.status), e => done(String(e)));",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403), "a rebuild posted from the page");

    // With it, the button needs the token typed in before the rebuild runs.
    client.goto(&format!("{admin}/projections")).await.unwrap();
    let button = Locator::Css("button.rebuild[data-name=\"read_model\"]");
    let result = "span.result[data-for=\"read_model\"]";
    client.find(button).await.unwrap().click().await.unwrap();
    wait_text(client, result, "refused (401)").await;
    assert_eq!(consoles.rebuilds.count(), 0);
    client
        .find(Locator::Id("admin-token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    client.find(button).await.unwrap().click().await.unwrap();
    wait_text(client, result, "rebuilt: 5 events applied (7 scanned)").await;
    assert_eq!(consoles.rebuilds.count(), 1);
    screenshot(client, "projections").await;

    // The live tail of a category: the last events first, then one appended after it
    // started, upcast; the other category's event appended just before it never shows.
    client
        .goto(&format!("{looking}/tail?category=order"))
        .await
        .unwrap();
    wait_text(client, "#tail-status", "following the feed").await;
    eventually("the tail starts with the category's 4 events", async || {
        let rows = texts(client, "#tail tbody tr").await;
        if rows.len() == 4 {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    append(
        store,
        "acct-1",
        vec![event("Closed", 1, json!({}), Default::default())],
    )
    .await;
    append(
        store,
        "order-3",
        vec![event(
            "Placed",
            1,
            json!({ "total": 4 }),
            Default::default(),
        )],
    )
    .await;
    let row = wait_text(client, "#tail tbody tr[data-stream=\"order-3\"]", "Placed").await;
    assert!(row.contains("Placed v1"), "{row}");
    assert!(
        row.contains("{\"amount\":4}"),
        "read through the upcasters: {row}"
    );
    assert_eq!(
        texts(client, "#tail tbody tr").await.len(),
        5,
        "only the order event was added"
    );
    assert!(
        client
            .find_all(Locator::Css("#tail tbody tr[data-stream=\"acct-1\"]"))
            .await
            .unwrap()
            .is_empty(),
        "the filter keeps acct events out"
    );
    wait_text(client, "#tail-status", "5 events shown").await;
    screenshot(client, "tail").await;

    // A console whose database is down: a banner on the page, the navigation kept, and
    // the tail says so too.
    client.goto(&format!("{down}/")).await.unwrap();
    let banner = text(client, "#banner").await.unwrap();
    assert!(banner.contains("Database unavailable"), "{banner}");
    assert_eq!(
        texts(client, "nav a").await,
        ["Overview", "Streams", "Projections", "Live tail"]
    );
    screenshot(client, "down").await;
    client.goto(&format!("{down}/tail")).await.unwrap();
    wait_text(client, "#tail-status", "database unavailable").await;
}
