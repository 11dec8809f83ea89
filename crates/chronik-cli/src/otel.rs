//! The OpenTelemetry exporter (feature `otel`): when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every span chronik opens in this process
//! (`chronik.append`, `chronik.execute`, `chronik.projection.batch`, `chronik.relay.publish`,
//! ...; docs/operations.md, "Traces") is exported over OTLP/HTTP (protobuf) in batches,
//! and flushed when the command ends. The standard variables configure it
//! (`OTEL_SERVICE_NAME`, default the binary's name; `OTEL_EXPORTER_OTLP_HEADERS`;
//! `OTEL_EXPORTER_OTLP_TIMEOUT`); `CHRONIK_OTEL_FILTER` chooses what is exported (an
//! `EnvFilter`, default [`DEFAULT_FILTER`]), independently of `RUST_LOG`, which governs
//! stderr.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::registry::LookupSpan;

/// What is exported unless `CHRONIK_OTEL_FILTER` says otherwise: chronik's spans at `info`
/// (never the exporter's own HTTP client, whose spans would be exported in turn).
pub(crate) const DEFAULT_FILTER: &str = "warn,chronik_store=info,chronik_postgres=info,\
     chronik_projections=info,chronik_relay=info,chronik_cli=info,hyper=off,reqwest=off,\
     h2=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// The exporter while the process runs: [`Exporter::shutdown`] flushes what is queued.
#[derive(Debug)]
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Exports every span still queued and stops the exporter (best effort: a collector
    /// that is down only loses these spans, with a warning).
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the OpenTelemetry exporter could not flush its last spans");
        }
    }
}

/// The exporting layer, over the operator tool's subscriber `S`.
pub(crate) type ExportLayer<S> = Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;

/// Whether an OTLP endpoint is configured.
fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// The layer that exports spans, and its exporter, when an endpoint is configured.
///
/// # Errors
/// An exporter that cannot be built (a malformed endpoint) or a malformed
/// `CHRONIK_OTEL_FILTER`.
pub(crate) fn layer<S>(binary: &str) -> anyhow::Result<Option<(ExportLayer<S>, Exporter)>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .context("cannot build the OTLP exporter (check OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|s| s.is_empty()) {
        resource = resource.with_service_name(binary.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("chronik");
    let filter = match std::env::var("CHRONIK_OTEL_FILTER") {
        Ok(f) if !f.trim().is_empty() => EnvFilter::try_new(&f)
            .with_context(|| format!("CHRONIK_OTEL_FILTER {f:?} is not a filter"))?,
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter)
        .boxed();
    Ok(Some((layer, Exporter { provider })))
}
