//! Plain-text tables and human-readable values for the operator commands.

use chronik_core::RecordedEvent;
use chronik_postgres::{HolderKind, HorizonHolder};
use serde_json::Value;

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Renders `rows` under `headers`, columns separated by two spaces, no trailing spaces.
pub(crate) fn render(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, ((cell, w), (_, align))) in cells.iter().zip(&widths).zip(headers).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            match align {
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.iter().map(|(h, _)| *h).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// An age for people: `0.4 s`, `42.0 s`, `3 min 07 s`, `2 h 05 min`.
pub(crate) fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_owned();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    // Whole seconds are enough from a minute on.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = seconds as u64;
    if whole < 3_600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{} h {:02} min", whole / 3_600, (whole % 3_600) / 60)
    }
}

/// One line naming a transaction that holds the feed horizon back.
pub(crate) fn holder(h: &HorizonHolder) -> String {
    let database = h.database.as_deref().unwrap_or("?");
    let age = h.age_seconds.map_or_else(|| "?".to_owned(), age);
    let mut who = Vec::new();
    if let Some(u) = &h.user {
        who.push(format!("user {u}"));
    }
    if let Some(a) = &h.application_name {
        who.push(format!("application {a}"));
    }
    if let Some(c) = &h.client_addr {
        who.push(format!("from {c}"));
    }
    let who = if who.is_empty() {
        String::new()
    } else {
        format!(", {}", who.join(", "))
    };
    match (h.kind, h.pid) {
        (HolderKind::Prepared, _) => format!(
            "{} (xid {}, database {database}{who}, prepared {age} ago)",
            h.detail, h.xid
        ),
        (_, pid) => {
            let pid = pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
            let detail = if h.detail.is_empty() {
                String::new()
            } else {
                format!(", {}", one_line(&h.detail))
            };
            format!(
                "pid {pid} (xid {}, database {database}{who}, open for {age}{detail})",
                h.xid
            )
        }
    }
}

/// A holder in a few words, for a line that refers back to the full listing.
pub(crate) fn holder_short(h: &HorizonHolder) -> String {
    match (h.kind, h.pid) {
        (HolderKind::Prepared, _) => format!("prepared transaction xid {}", h.xid),
        (_, Some(pid)) => format!("pid {pid} (xid {})", h.xid),
        (_, None) => format!("xid {}", h.xid),
    }
}

/// A recorded event as one JSON object (`tail --json`, `streams show --json`), its cursor
/// in the one form every command prints and `--after` takes: `"<transaction>:<position>"`.
pub(crate) fn event_json(event: &RecordedEvent) -> std::io::Result<Value> {
    let mut doc = serde_json::to_value(event).map_err(std::io::Error::other)?;
    if let Some(fields) = doc.as_object_mut() {
        fields.insert("cursor".to_owned(), Value::String(event.cursor.to_string()));
    }
    Ok(doc)
}

/// Text on one line: newlines and tabs become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ages_read_well() {
        let out = render(
            &[("NAME", Align::Left), ("LAG", Align::Right)],
            &[
                vec!["orders".to_owned(), "12".to_owned()],
                vec!["x".to_owned(), "1,234".to_owned()],
            ],
        );
        assert_eq!(out, "NAME      LAG\norders     12\nx       1,234\n");
        assert_eq!(age(0.42), "0.4 s");
        assert_eq!(age(187.0), "3 min 07 s");
        assert_eq!(age(7_500.0), "2 h 05 min");
        assert_eq!(age(f64::NAN), "?");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
