//! Logs and spans. Set up once by the binary; personal data (national ID numbers, names, diagnoses)
//! never reaches a log field: the service never receives the first two, spans carry only ids that
//! are pseudonymous (member ids refuse ID-number shapes), and requests are never logged whole.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _};

use crate::domain::{format_date, LossRatio, PeriodKey};

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left and stops the exporter. Call once, at the end of `main`.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The flush blocks on the exporter, which runs on this runtime: off the async threads.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("trace export did not finish: {e}"),
                Err(e) => eprintln!("trace export did not finish: {e}"),
            }
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `CLAIMS_LOG_FORMAT=json`
/// switches to JSON lines, and when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported
/// over OTLP (gRPC) to that collector, with service name `OTEL_SERVICE_NAME` (default `claimsd`).
/// Must run inside the tokio runtime (the exporter's batches run on it).
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CLAIMS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let (provider, otel_error) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => match otlp_provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("OTLP export to {endpoint} is off: {e}"))),
        },
        _ => (None, None),
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("claims")));
    let fmt_layer = if json {
        fmt::layer().with_target(false).json().boxed()
    } else {
        fmt::layer().with_target(false).boxed()
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
    if let Some(e) = otel_error {
        tracing::warn!("{e}");
    }
    Telemetry { provider }
}

fn otlp_provider() -> Result<SdkTracerProvider, String> {
    // The endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "claimsd".into());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Serves Prometheus metrics at `http://<addr>/metrics` and makes this process record them. Once per
/// process; without it, the recording macros cost next to nothing.
///
/// Metrics (labels name products and outcomes, never members):
/// - `claims_settle_requests_total{rpc, outcome}`: settled, replayed, refused (by gRPC code)
/// - `claims_settle_seconds{rpc}`: from receiving a claim to sending its reply (after its commit)
/// - `claims_ledger_batch_commands`, `claims_ledger_batch_seconds`: group commits
/// - `claims_ledger_batches_failed_total`
/// - `claims_loss_ratio`, `claims_paid_yuan`, `claims_written_premium_yuan`, `claims_paid_claims`
///   `{product, period_start}`: the running loss-ratio figures, set after each commit
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("claims_ledger_batch_commands".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            )
        })
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics on {addr}: {e}"))
}

/// Sets the loss-ratio gauges of one product period.
pub fn record_loss_ratio(key: &PeriodKey, figures: &LossRatio) {
    let labels = [
        ("product", key.product.to_string()),
        ("period_start", format_date(key.start)),
    ];
    // Prometheus samples are floats: the exact figures stay Decimal everywhere else.
    let yuan = |d: rust_decimal::Decimal| d.to_string().parse::<f64>().unwrap_or(f64::NAN);
    metrics::gauge!("claims_paid_yuan", &labels).set(yuan(figures.paid));
    metrics::gauge!("claims_written_premium_yuan", &labels).set(yuan(figures.written_premium));
    metrics::gauge!("claims_paid_claims", &labels).set(figures.paid_claims as f64);
    if let Some(ratio) = figures.ratio() {
        metrics::gauge!("claims_loss_ratio", &labels).set(yuan(ratio));
    }
}
