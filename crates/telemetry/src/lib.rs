//! Logs and traces.
//!
//! Logs go through `tracing`: human-readable text by default, one JSON
//! object per line with `--log-format json`, filtered by `RUST_LOG` (default
//! `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are also exported
//! over OTLP/HTTP, batched on a background thread, and the W3C trace context
//! of a trigger travels in the bus envelope, so one trace shows the HTTP
//! request, the publish and the fan-out on every gateway.
//!
//! The standard `OTEL_*` variables apply: the protocol (`http/protobuf`, the
//! default, or `http/json`; gRPC is not built in), headers, timeout,
//! sampler, batch settings, service name and resource attributes, and
//! `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` to switch export off.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static EXPORTING: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs logging, and OTLP trace export when the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // RUST_LOG filters the log output only; exported spans have their own
    // level. Colours only on a terminal: log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed(),
    };
    let provider = match trace_export(|name| std::env::var(name).ok()) {
        Ok(None) => None,
        Ok(Some(protocol)) => exporter(protocol, service),
        Err(e) => {
            eprintln!("herald: OTLP trace export disabled: {e}");
            None
        }
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    Telemetry { provider }
}

/// Whether spans are exported, and with which OTLP protocol, as the
/// standard variables say; an error names a setting Herald cannot honour.
fn trace_export(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<opentelemetry_otlp::Protocol>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let endpoint =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    if let Some(exporter) = set("OTEL_TRACES_EXPORTER") {
        if exporter.trim() != "otlp" {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={exporter} is not supported (otlp or none)"
            ));
        }
    }
    let (name, protocol) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
        None => match set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p),
            None => return Ok(Some(opentelemetry_otlp::Protocol::HttpBinary)),
        },
    };
    match protocol.trim() {
        "http/protobuf" => Ok(Some(opentelemetry_otlp::Protocol::HttpBinary)),
        "http/json" => Ok(Some(opentelemetry_otlp::Protocol::HttpJson)),
        "grpc" => Err(format!(
            "{name}=grpc is not supported by this build; use http/protobuf or http/json (a collector's port 4318)"
        )),
        other => Err(format!(
            "{name}={other} is not an OTLP protocol (http/protobuf, http/json)"
        )),
    }
}

/// The tracer provider exporting over `protocol`; endpoint, headers,
/// timeout, sampler and batch settings come from the standard variables,
/// the service name from `OTEL_SERVICE_NAME` or else `service`.
fn exporter(protocol: opentelemetry_otlp::Protocol, service: &str) -> Option<SdkTracerProvider> {
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("herald: OTLP trace export disabled: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

impl Telemetry {
    /// Exports what is still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("herald: flushing traces failed: {e}");
            }
        }
    }
}

/// Whether spans are exported; callers skip trace-context work otherwise.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The W3C `traceparent` of the current span, when traces are exported.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span a `traceparent` names.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
}

#[cfg(test)]
mod tests {
    use super::trace_export;
    use opentelemetry_otlp::Protocol;

    fn export(vars: &[(&str, &str)]) -> Result<Option<Protocol>, String> {
        trace_export(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_standard_variables_choose_whether_and_how_spans_are_exported() {
        let at = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(export(&[]), Ok(None));
        assert_eq!(export(&[at]), Ok(Some(Protocol::HttpBinary)));
        assert_eq!(
            export(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            Ok(Some(Protocol::HttpBinary))
        );
        assert_eq!(
            export(&[at, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            Ok(Some(Protocol::HttpJson))
        );
        assert_eq!(
            export(&[
                at,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            ]),
            Ok(Some(Protocol::HttpBinary))
        );
        assert_eq!(export(&[at, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(export(&[at, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        let grpc = export(&[at, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(grpc.contains("grpc is not supported"), "{grpc}");
        let zipkin = export(&[at, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(zipkin.contains("zipkin"), "{zipkin}");
    }
}
