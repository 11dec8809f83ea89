//! The pages, rendered on the server from the same views as the API. Every value from the
//! store is escaped here ([`esc`], [`pretty`]) or percent-encoded in links ([`url`]).

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::response::{Html, IntoResponse, Response};

use crate::api::{self, NoParams, StreamParams, StreamsParams};
use crate::error::ApiError;
use crate::html::{error_page, esc, n, page, pretty, url};
use crate::state::State;
use crate::view::{self, EventView, Holder, ProjectionView};

fn respond(state: &State, active: &str, title: &str, body: Result<String, ApiError>) -> Response {
    match body {
        Ok(body) => Html(page(state, active, title, &body)).into_response(),
        Err(e) => error_page(state, active, title, &e),
    }
}

fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_owned(), esc)
}

fn holder_line(h: &Holder) -> String {
    format!(
        "<div class=\"banner warn\" id=\"horizon\"><strong>Feed held back.</strong> Committed events \
         are invisible to every projection until this transaction ends: {}<br>\
         <span class=\"muted\">query:</span> <code>{}</code> \
         <span class=\"muted\">end it with:</span> <code>{}</code></div>",
        esc(&h.description),
        esc(&h.detail),
        esc(&h.how_to_end)
    )
}

fn state_cell(p: &ProjectionView) -> String {
    let state = p.state.as_deref().unwrap_or("no runner yet");
    let class = match state {
        "live" => "ok",
        "failing" | "dead" => "bad",
        _ => "muted",
    };
    let mut cell = format!("<span class=\"state {class}\">{}</span>", esc(state));
    if state == "failing" {
        let _ = write!(cell, " (attempt {})", p.attempts);
    }
    if let Some(o) = &p.owner {
        let _ = write!(cell, "<br><span class=\"muted\">owner {}</span>", esc(o));
    }
    for s in &p.standbys {
        let _ = write!(cell, "<br><span class=\"muted\">standby {}</span>", esc(s));
    }
    for d in &p.dead {
        let _ = write!(cell, "<br><span class=\"bad\">dead {}</span>", esc(d));
    }
    if let Some(pid) = p.locked_by {
        let _ = write!(
            cell,
            "<br><span class=\"muted\">lock held by pid {pid} (a rebuild?)</span>"
        );
    }
    cell
}

fn projection_rows(projections: &[ProjectionView]) -> String {
    let mut rows = String::new();
    for p in projections {
        let error = match (&p.last_error, &p.last_error_at) {
            (Some(e), Some(at)) => format!("{} <span class=\"muted\">({})</span>", esc(e), esc(at)),
            (Some(e), None) => esc(e),
            _ => "-".to_owned(),
        };
        let _ = write!(
            rows,
            "<tr data-projection=\"{name}\"><td>{name}</td><td><code>{position}</code></td>\
             <td class=\"num\">{processed}</td><td class=\"num lag\">{lag}</td>\
             <td class=\"num\">{secs:.1}</td><td>{state}</td><td class=\"num\">{parked}</td>\
             <td class=\"error\">{error}</td></tr>",
            name = esc(&p.name),
            position = opt(p.position.as_deref()),
            processed = n(p.events_processed),
            lag = n(p.lag_events),
            secs = p.lag_seconds,
            state = state_cell(p),
            parked = n(p.parked_open),
        );
    }
    rows
}

const PROJECTION_HEAD: &str = "<tr><th>Projection</th><th>Position</th><th>Processed</th>\
    <th>Lag (events)</th><th>Lag (s)</th><th>State</th><th>Parked</th><th>Last error</th></tr>";

pub(crate) async fn overview(
    Extract(state): Extract<State>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Response {
    let body = async {
        api::params(query)?;
        let o = view::overview(&state).await?;
        let mut b = String::new();
        b.push_str("<h1>Overview</h1>");
        if let (true, Some(h)) = (o.horizon.held_back, &o.horizon.blocker) {
            b.push_str(&holder_line(h));
        }
        let _ = write!(
            b,
            "<section class=\"cards\">\
             <div class=\"card\"><div class=\"label\">Events</div><div class=\"value\" id=\"events\">{}</div></div>\
             <div class=\"card\"><div class=\"label\">Rate (last minute)</div><div class=\"value\">{:.2}/s</div></div>\
             <div class=\"card\"><div class=\"label\">Streams</div><div class=\"value\" id=\"streams\">{}</div></div>\
             <div class=\"card\"><div class=\"label\">Categories</div><div class=\"value\">{}</div></div>\
             <div class=\"card\"><div class=\"label\">Feed head</div><div class=\"value small\"><code>{}</code></div>\
             <div class=\"muted\">{} visible; newest committed <code>{}</code></div></div></section>",
            n(o.events),
            o.rate_per_second,
            n(o.streams),
            n(o.categories.len() as u64),
            opt(o.feed_head.cursor.as_deref()),
            n(o.feed_head.visible_events),
            opt(o.feed_head.newest_committed.as_deref()),
        );
        b.push_str("<h2>Categories</h2><table><tr><th>Category</th><th>Streams</th><th>Events</th></tr>");
        for c in &o.categories {
            let _ = write!(
                b,
                "<tr><td><a href=\"/streams?category={}\">{}</a></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                url(&c.category),
                esc(&c.category),
                n(c.streams),
                n(c.events)
            );
        }
        b.push_str("</table><h2>Transactions holding the feed horizon</h2>");
        if o.horizon.holders.is_empty() {
            b.push_str("<p class=\"ok\" id=\"holders\">None: nothing holds the feed back.</p>");
        } else {
            b.push_str(
                "<table id=\"holders\"><tr><th></th><th>Kind</th><th>Pid</th><th>Database</th>\
                 <th>Age (s)</th><th>Query / gid</th><th>End it with</th></tr>",
            );
            for h in &o.horizon.holders {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                     <td><code>{}</code></td><td><code>{}</code></td></tr>",
                    if h.blocker { "blocker" } else { "behind it" },
                    h.kind,
                    h.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    opt(h.database.as_deref()),
                    h.age_seconds
                        .map_or_else(|| "?".to_owned(), |a| format!("{a:.0}")),
                    esc(&h.detail),
                    esc(&h.how_to_end),
                );
            }
            b.push_str("</table>");
        }
        let _ = write!(
            b,
            "<h2>Projections</h2><table>{PROJECTION_HEAD}{}</table>",
            projection_rows(&o.projections)
        );
        if o.projections.is_empty() {
            b.push_str("<p class=\"muted\">No projection has a checkpoint or a status yet.</p>");
        }
        Ok(b)
    }
    .await;
    respond(&state, "/", "Overview", body)
}

pub(crate) async fn streams(
    Extract(state): Extract<State>,
    query: Result<Query<StreamsParams>, QueryRejection>,
) -> Response {
    let body = async {
        let (query, limit) = api::params(query)?.query()?;
        let p = view::streams(&state, query, limit).await?;
        let mut b = String::new();
        let _ = write!(
            b,
            "<h1>Streams</h1><form class=\"filters\" method=\"get\" action=\"/streams\">\
             <label>Id starts with <input name=\"prefix\" value=\"{}\"></label>\
             <label>Category <input name=\"category\" value=\"{}\"></label>\
             <label>Per page <input name=\"limit\" size=\"4\" value=\"{}\"></label>\
             <button type=\"submit\">Search</button></form>",
            opt_value(p.prefix.as_deref()),
            opt_value(p.category.as_deref()),
            p.limit
        );
        if p.streams.is_empty() {
            b.push_str("<p class=\"muted\" id=\"no-streams\">No stream matches.</p>");
        } else {
            b.push_str("<table id=\"streams\"><tr><th>Stream</th><th>Category</th><th>Version</th></tr>");
            for s in &p.streams {
                let _ = write!(
                    b,
                    "<tr><td><a class=\"stream\" href=\"/streams/{}\">{}</a></td><td>{}</td><td class=\"num\">{}</td></tr>",
                    url(&s.stream_id),
                    esc(&s.stream_id),
                    esc(&s.category),
                    n(s.version)
                );
            }
            b.push_str("</table>");
        }
        if let Some(next) = &p.next {
            let mut link = format!("/streams?after={}&limit={}", url(next), p.limit);
            if let Some(prefix) = &p.prefix {
                let _ = write!(link, "&prefix={}", url(prefix));
            }
            if let Some(category) = &p.category {
                let _ = write!(link, "&category={}", url(category));
            }
            let _ = write!(b, "<p><a id=\"next\" href=\"{}\">Next page →</a></p>", esc(&link));
        }
        Ok(b)
    }
    .await;
    respond(&state, "/streams", "Streams", body)
}

fn opt_value(v: Option<&str>) -> String {
    v.map(esc).unwrap_or_default()
}

fn event_card(e: &EventView, mark: bool) -> String {
    let mut b = String::new();
    let read_as = match (&e.read_as.error, e.read_as.upcast) {
        (Some(err), _) => format!("<span class=\"bad\">cannot be read: {}</span>", esc(err)),
        (None, true) => format!(
            "read as <strong>{}</strong> v{}",
            opt(e.read_as.event_type.as_deref()),
            e.read_as.schema_version.unwrap_or_default()
        ),
        (None, false) => "read as stored".to_owned(),
    };
    let links = {
        let mut l = String::new();
        if let Some(c) = &e.correlation_id {
            let _ = write!(l, "correlation <code>{}</code> ", esc(c));
        }
        if let Some(c) = &e.causation_id {
            let _ = write!(
                l,
                "caused by <a class=\"causation\" href=\"/events/{}\"><code>{}</code></a> ",
                url(c),
                esc(c)
            );
        }
        let _ = write!(
            l,
            "<a class=\"trace\" href=\"/events/{}\">causation chain</a>",
            url(&e.event_id)
        );
        l
    };
    let _ = write!(
        b,
        "<article class=\"event{}\" id=\"event-{version}\"><header>\
         <span class=\"version\">v{version}</span> <strong class=\"type\">{ty}</strong> \
         <span class=\"muted\">schema v{schema}, {read_as}</span>\
         <span class=\"right\"><a href=\"/streams/{stream_url}\">{stream}</a> · cursor <code>{cursor}</code> · {time}</span>\
         </header><div class=\"meta\">id <code>{id}</code> · {links}</div>",
        if mark { " marked" } else { "" },
        version = e.version,
        ty = esc(&e.event_type),
        schema = e.schema_version,
        stream_url = url(&e.stream_id),
        stream = esc(&e.stream_id),
        cursor = esc(&e.cursor),
        time = esc(&e.recorded_at),
        id = esc(&e.event_id),
    );
    if !e.headers.is_empty() {
        b.push_str("<div class=\"meta\">headers: ");
        for (k, v) in &e.headers {
            let _ = write!(b, "<code>{}={}</code> ", esc(k), esc(v));
        }
        b.push_str("</div>");
    }
    let _ = write!(b, "<pre class=\"payload\">{}</pre>", pretty(&e.payload));
    if let Some(up) = &e.read_as.payload {
        let _ = write!(
            b,
            "<div class=\"muted\">as read through the upcasters:</div><pre class=\"payload upcast\">{}</pre>",
            pretty(up)
        );
    }
    b.push_str("</article>");
    b
}

pub(crate) async fn stream(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Response {
    let body = async {
        let p = api::params(query)?;
        let id = api::stream_id(&id)?;
        let page = view::stream(
            &state,
            &id,
            api::from(p.from.as_deref())?,
            api::limit(p.limit.as_deref())?,
        )
        .await?;
        let mut b = format!(
            "<h1>Stream <code id=\"stream-id\">{}</code></h1><p>category <a href=\"/streams?category={}\">{}</a> · \
             version {} · events {} to {} shown</p>",
            esc(&page.stream_id),
            url(&page.category),
            esc(&page.category),
            n(page.version),
            page.from,
            page.events.last().map_or(page.from, |e| e.version),
        );
        for e in &page.events {
            b.push_str(&event_card(e, false));
        }
        if let Some(next) = page.next_from {
            let _ = write!(
                b,
                "<p><a id=\"next\" href=\"/streams/{}?from={next}&amp;limit={}\">Next events →</a></p>",
                url(&page.stream_id),
                page.limit
            );
        }
        Ok(b)
    }
    .await;
    respond(&state, "/streams", "Stream", body)
}

pub(crate) async fn event(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Response {
    let body = async {
        api::params(query)?;
        let id = api::event_id(&id)?;
        let trace = view::trace(&state, id).await?;
        let mut b = format!("<h1>Event <code>{}</code></h1>", esc(&trace.event_id));
        match &trace.correlation_id {
            Some(c) => {
                let _ = write!(
                    b,
                    "<p>Causation chain of correlation <code>{}</code>: {} events, causes before their effects \
                     (<code>{} trace {}</code> prints the same).</p>",
                    esc(c),
                    trace.events.len(),
                    esc(&state.binary),
                    esc(c)
                );
            }
            None => b.push_str("<p class=\"muted\">This event has no correlation id: it is not part of a traced chain.</p>"),
        }
        b.push_str("<div class=\"trace\">");
        for line in &trace.events {
            let _ = write!(
                b,
                "<div class=\"depth\" style=\"margin-left: {}em\">",
                (line.depth - 1) * 2
            );
            b.push_str(&event_card(&line.event, line.event.event_id == trace.event_id));
            b.push_str("</div>");
        }
        b.push_str("</div>");
        Ok(b)
    }
    .await;
    respond(&state, "/streams", "Event", body)
}

pub(crate) async fn projections(
    Extract(state): Extract<State>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Response {
    let body = async {
        api::params(query)?;
        let p = view::projections(&state).await?;
        let mut b = String::from("<h1>Projections</h1>");
        if let Some(h) = &p.held_back_by {
            b.push_str(&holder_line(h));
        }
        let _ = write!(
            b,
            "<table id=\"projections\">{PROJECTION_HEAD}{}</table>",
            projection_rows(&p.projections)
        );
        if p.projections.is_empty() {
            b.push_str("<p class=\"muted\">No projection has a checkpoint or a status yet.</p>");
        }
        for pr in p.projections.iter().filter(|pr| !pr.parked.is_empty()) {
            let _ = write!(b, "<h2>Parked events of {}</h2><table><tr><th>Event</th><th>Stream</th><th>State</th><th>Reason</th><th>By</th></tr>", esc(&pr.name));
            for e in &pr.parked {
                let _ = write!(
                    b,
                    "<tr><td><a href=\"/events/{}\"><code>{}</code></a></td><td><a href=\"/streams/{}\">{}</a> v{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    url(&e.event_id),
                    esc(&e.event_id),
                    url(&e.stream_id),
                    esc(&e.stream_id),
                    e.version,
                    e.state,
                    esc(&e.reason),
                    esc(&e.decided_by)
                );
            }
            b.push_str("</table>");
        }
        b.push_str("<h2>Rebuild</h2>");
        let rebuildable: Vec<&String> = state.rebuildable.iter().collect();
        if !p.rebuilds_enabled {
            let _ = write!(
                b,
                "<p class=\"muted\" id=\"rebuilds-off\">Rebuilds are off: start the console with \
                 <code>--admin-token</code> (or <code>CHRONIK_CONSOLE_ADMIN_TOKEN</code>) to allow them.</p>"
            );
        } else if rebuildable.is_empty() {
            let _ = write!(
                b,
                "<p class=\"muted\">{} registers no projection it can rebuild.</p>",
                esc(&state.binary)
            );
        } else {
            b.push_str(
                "<p>A rebuild replays the whole feed into a shadow table while the live read model \
                 keeps serving, then swaps them. <label>Admin token \
                 <input type=\"password\" id=\"admin-token\" autocomplete=\"off\"></label></p><ul class=\"rebuilds\">",
            );
            for name in rebuildable {
                let _ = write!(
                    b,
                    "<li><button class=\"rebuild\" data-name=\"{n}\">Rebuild {n}</button> \
                     <span class=\"result\" data-for=\"{n}\"></span></li>",
                    n = esc(name)
                );
            }
            b.push_str("</ul>");
        }
        Ok(b)
    }
    .await;
    respond(&state, "/projections", "Projections", body)
}

pub(crate) async fn tail(
    Extract(state): Extract<State>,
    query: Result<Query<crate::tail::TailParams>, QueryRejection>,
) -> Response {
    let body = api::params(query).map(|p| {
        format!(
            "<h1>Live tail</h1><form class=\"filters\" id=\"tail-filters\">\
             <label>Category <input name=\"category\" value=\"{}\"></label>\
             <label>Type <input name=\"type\" value=\"{}\"></label>\
             <label>Stream <input name=\"stream\" value=\"{}\"></label>\
             <label><input type=\"checkbox\" name=\"from_end\" value=\"true\"{}> only new events</label>\
             <button type=\"submit\">Follow</button></form>\
             <p id=\"tail-status\" class=\"muted\">connecting…</p>\
             <table id=\"tail\"><thead><tr><th>Cursor</th><th>Stream</th><th>Version</th><th>Type</th>\
             <th>Recorded</th><th>Payload</th></tr></thead><tbody></tbody></table>",
            opt_value(p.category.as_deref()),
            opt_value(p.event_type.as_deref()),
            opt_value(p.stream.as_deref()),
            if p.from_end.as_deref() == Some("true") {
                " checked"
            } else {
                ""
            },
        )
    });
    respond(&state, "/tail", "Live tail", body)
}
