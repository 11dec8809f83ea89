//! HTML by hand: every value from the store goes through [`esc`] (text and attribute
//! values alike) and every value in a link through [`url`]; the layout of every page.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::error::ApiError;
use crate::state::State;

/// `text` escaped for an HTML text node or a quoted attribute value.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for a path segment or a query value (everything but the
/// unreserved characters of RFC 3986).
pub(crate) fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A JSON value pretty-printed and escaped, for a `<pre>`.
pub(crate) fn pretty(value: &serde_json::Value) -> String {
    esc(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
}

/// `1,234,567`.
pub(crate) fn n(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The pages of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/streams", "Streams"),
    ("/projections", "Projections"),
    ("/tail", "Live tail"),
];

/// A whole page: the layout around `body`, which the caller has escaped.
pub(crate) fn page(state: &State, active: &str, title: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let class = if *path == active {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{path}\"{class}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {binary} console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><header><span class=\"brand\">{binary} console</span><nav>{nav}</nav>\
         <span class=\"schema\">schema {schema}</span></header><main>{body}</main></body></html>\n",
        title = esc(title),
        binary = esc(&state.binary),
        schema = esc(state.store.schema().as_str()),
    )
}

/// The page for a failed request: a banner that says what failed, with the status.
pub(crate) fn error_page(state: &State, active: &str, title: &str, e: &ApiError) -> Response {
    let status = e.status();
    let banner = if status == StatusCode::SERVICE_UNAVAILABLE {
        format!(
            "<div class=\"banner down\" id=\"banner\"><strong>Database unavailable.</strong> \
             This page needs it; reload when it is back. <code>{}</code></div>",
            esc(e.message())
        )
    } else {
        format!(
            "<div class=\"banner\" id=\"banner\"><strong>{}.</strong> {}</div>",
            esc(status.canonical_reason().unwrap_or("Error")),
            esc(e.message())
        )
    };
    (status, Html(page(state, active, title, &banner))).into_response()
}
