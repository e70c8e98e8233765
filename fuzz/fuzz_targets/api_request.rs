//! HTTP API request verification: the string to sign over arbitrary query
//! pairs, signature checks, and body validation of triggers and batches.
#![no_main]
use herald_protocol::api::{self, ApiLimits, Info};
use herald_protocol::auth;
use libfuzzer_sys::fuzz_target;

const LIMITS: ApiLimits = ApiLimits {
    max_event_payload_bytes: 10240,
    max_channels_per_event: 100,
    max_batch_events: 10,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (query, body) = text.split_once('\n').unwrap_or((text, ""));
    let pairs: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let signed = auth::api_string_to_sign("POST", "/apps/1/events", pairs.iter().copied());
    let _ = auth::verify("secret", &signed, query);
    let _ = Info::parse(Some(query));
    if let Ok(req) = serde_json::from_str::<api::TriggerRequest>(body) {
        if let Ok((pubs, _)) = api::validate_trigger(&req, &LIMITS) {
            assert!(!pubs.is_empty() && pubs.len() <= LIMITS.max_channels_per_event);
        }
    }
    if let Ok(req) = serde_json::from_str::<api::BatchRequest>(body) {
        if let Ok(events) = api::validate_batch(&req, &LIMITS) {
            assert!(events.len() <= LIMITS.max_batch_events);
        }
    }
});
