//! Micro-benchmarks of the hot path: frame encoding, API signature
//! verification, subject encoding, and fan-out of one event to N in-memory
//! connections (the same code the gateway runs per delivered event).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_bus::{Bus, BusMessage, Envelope, Sink};
use herald_config::AppConfig;
use herald_gateway::hub::Hub;
use herald_gateway::metrics::GatewayMetrics;
use herald_gateway::peer::Peer;
use herald_metrics::Metrics;
use herald_protocol::{auth, frame, message};
use std::hint::black_box;
use std::sync::Arc;

fn encoding(c: &mut Criterion) {
    let data = message::json_string(&format!(
        "{{\"order\":{},\"note\":\"{}\"}}",
        42,
        "x".repeat(150)
    ));
    c.bench_function("event frame, 200 B payload", |b| {
        b.iter(|| {
            frame::text(&message::channel_event(
                black_box("order.created"),
                black_box("private-admin-orders"),
                &data,
                None,
            ))
        })
    });
    c.bench_function("subject for a channel", |b| {
        b.iter(|| {
            herald_bus::subject::event_subject(
                "herald",
                black_box("app-1"),
                black_box("presence-admin.presence"),
            )
        })
    });
}

fn signatures(c: &mut Criterion) {
    let body = r#"{"name":"order.created","channel":"private-admin-orders","data":"{\"id\":1}"}"#;
    let md5 = auth::body_md5(body.as_bytes());
    let params = [
        ("auth_key", "app-key"),
        ("auth_timestamp", "1700000000"),
        ("auth_version", "1.0"),
        ("body_md5", md5.as_str()),
    ];
    let signature = auth::sign(
        "app-secret",
        &auth::api_string_to_sign("POST", "/apps/1/events", params),
    );
    c.bench_function("HTTP API signature verify (with body md5)", |b| {
        b.iter(|| {
            let md5 = auth::body_md5(black_box(body).as_bytes());
            let params = [
                ("auth_key", "app-key"),
                ("auth_timestamp", "1700000000"),
                ("auth_version", "1.0"),
                ("body_md5", md5.as_str()),
            ];
            auth::verify(
                "app-secret",
                &auth::api_string_to_sign("POST", "/apps/1/events", params),
                &signature,
            )
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan-out of one event");
    for n in [100usize, 1_000, 10_000] {
        let app = Arc::new(AppConfig::new("1", "k", "s"));
        let hub = Hub::new(
            &[app],
            Arc::new(Bus::in_memory()),
            Arc::new(GatewayMetrics::register(&Metrics::new())),
        );
        let counter = prometheus::IntCounter::new("slow", "slow").unwrap();
        let mut inboxes = Vec::new();
        for i in 0..n {
            let (peer, rx) = Peer::new(format!("1.{i}").into(), 4, counter.clone());
            drop(hub.app("1").unwrap().join_channel("orders", &peer));
            inboxes.push(rx);
        }
        let event = BusMessage::Event(Envelope::new(
            "1",
            "orders",
            "order.created",
            r#""{\"id\":1}""#.into(),
        ));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                hub.deliver(&event);
                for rx in &inboxes {
                    black_box(rx.try_recv());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encoding, signatures, fan_out);
criterion_main!(benches);
