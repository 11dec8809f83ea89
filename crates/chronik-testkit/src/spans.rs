//! [`SpanCapture`]: a `tracing` layer that records every span (its fields as opened and as
//! recorded later) and every event, so that a test can check what chronik's spans carry
//! (stream ids, versions, cursors) and what they never carry (payloads, headers,
//! connection strings).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// One span as [`SpanCapture`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedSpan {
    /// Its name, e.g. `chronik.append`.
    pub name: &'static str,
    /// Every field it was given, opened or recorded later, as text (`Debug` for values
    /// that are not strings).
    pub fields: BTreeMap<String, String>,
}

/// Records every span and event of the subscriber it is part of; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct SpanCapture {
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

/// Where a span's record is, kept in its extensions (span ids are reused once closed).
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanCapture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans.push(CapturedSpan {
            name: attrs.metadata().name(),
            fields,
        });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(spans.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let extensions = span.extensions();
        let Some(Index(i)) = extensions.get::<Index>() else {
            return;
        };
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(captured) = spans.get_mut(*i) {
            values.record(&mut Fields(&mut captured.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fields);
    }
}

impl SpanCapture {
    /// Runs `work` to its end on a current-thread runtime (so that every task it spawns
    /// reports here) under a subscriber made of this capture only.
    ///
    /// # Panics
    /// When no runtime can be built (a test failure).
    pub fn run<F: std::future::Future>(&self, work: F) -> F::Output {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        #[allow(clippy::expect_used)]
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        tracing::subscriber::with_default(subscriber, || runtime.block_on(work))
    }

    /// Every span recorded so far, in the order they were opened.
    #[must_use]
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The fields of every span named `name`, in the order they were opened.
    #[must_use]
    pub fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .map(|s| s.fields)
            .collect()
    }

    /// The fields of every event recorded so far.
    #[must_use]
    pub fn events(&self) -> Vec<BTreeMap<String, String>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `text` appears in any span's or event's fields (names or values).
    #[must_use]
    pub fn mentions(&self, text: &str) -> bool {
        let spans = self.spans();
        let events = self.events();
        spans
            .iter()
            .flat_map(|s| s.fields.iter())
            .chain(events.iter().flat_map(|e| e.iter()))
            .any(|(k, v)| k.contains(text) || v.contains(text))
    }
}
