//! The event stream: what makes cluster delivery lossless for a socket that
//! stays connected.
//!
//! Core NATS delivers at most once: a gateway whose server dies, or that
//! reconnects for any reason, misses what is published meanwhile, and
//! nothing tells it. So every event and control subject is also captured by
//! a JetStream stream (`nats.event_stream`, kept `nats.event_retention_secs`),
//! and gateways do not listen to the published subjects but to the stream's
//! **republished** copies (`{prefix}.rp.{subject}`). The server republishes a
//! message only once it is stored, with two headers: its stream sequence
//! and the sequence of the previous message on the same subject. A gateway
//! remembers, per subscribed subject, the last sequence it delivered, so:
//!
//! - a message whose previous sequence is newer than that is behind a
//!   **gap**: the missing messages are read back from the stream (through
//!   its leader) and delivered first, in order;
//! - a message at or below it is a **duplicate** and skipped;
//! - after every reconnect, each subject's last stored sequence is checked,
//!   so a gap at the tail of a channel that then goes quiet is found too.
//!
//! The ingest publishes through JetStream and answers 200 only with the
//! stream's acknowledgement, so what it accepted is stored (on
//! `nats.kv_replicas` servers) and therefore reaches every gateway that
//! stays subscribed. Deadlines (`batch.rs`) are judged on the time the
//! message was stored, the same for every gateway. Standalone has no stream:
//! an in-process call cannot lose a message. History channels (`history.rs`)
//! live in the same stream, with a longer time to live.

use crate::BusError;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self as js, message::StreamMessage};
use async_nats::HeaderMap;
use std::time::Duration;

/// The event stream's name and limits (from `[nats]`).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    /// How long events stay readable: the longest outage a gateway can
    /// recover from (each event's time to live).
    pub retention: Duration,
    /// The stream's own limit: the longest of `retention` and every history
    /// rule's time (history channels' events live longer).
    pub max_age: Duration,
    pub replicas: usize,
}

/// The subject a gateway listens on for `subject`'s stored messages.
pub fn republished(prefix: &str, subject: &str) -> String {
    format!("{prefix}.rp.{subject}")
}

/// Creates the event stream, or brings an existing one to `settings`.
pub async fn ensure(
    js: &js::Context,
    prefix: &str,
    settings: &StreamSettings,
) -> Result<(), BusError> {
    js.create_or_update_stream(stream::Config {
        name: settings.name.clone(),
        subjects: vec![format!("{prefix}.ev.>"), format!("{prefix}.ctl.>")],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: settings.max_age.max(settings.retention),
        // Each event's own time to live (`Nats-TTL`): the retention, or a
        // history rule's time.
        allow_message_ttl: true,
        // A retried publish (same message id) within this window is stored once.
        duplicate_window: settings.retention.min(Duration::from_secs(120)),
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        republish: Some(stream::Republish {
            source: ">".into(),
            destination: format!("{prefix}.rp.>"),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| BusError::Unavailable(format!("event stream `{}`: {e}", settings.name)))
}

/// Where a message stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    pub seq: u64,
    /// The sequence of the subject's message before it (0: none kept).
    pub previous: u64,
    /// When the server stored it (unix ms).
    pub at_ms: Option<u64>,
}

impl Stored {
    /// Reads the headers the server adds to a republished message.
    pub(crate) fn of(headers: Option<&HeaderMap>) -> Option<Self> {
        let headers = headers?;
        let number = |name: &str| headers.get_last(name)?.as_str().parse::<u64>().ok();
        Some(Self {
            seq: number("Nats-Sequence")?,
            previous: number("Nats-Last-Sequence").unwrap_or(0),
            at_ms: headers
                .get_last("Nats-Time-Stamp")
                .and_then(|t| unix_ms_of(t.as_str())),
        })
    }
}

fn unix_ms_of(rfc3339: &str) -> Option<u64> {
    let at = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The event stream as the bus uses it: a subject's stored messages read
/// back through the stream's leader (a replica could answer from behind),
/// and history channels trimmed to their last events.
#[derive(Clone)]
pub(crate) struct EventStream {
    js: js::Context,
    stream: String,
}

/// A message read back, with its sequence and the time it was stored.
pub(crate) struct Recovered {
    pub seq: u64,
    pub at_ms: Option<u64>,
    pub payload: bytes::Bytes,
}

impl EventStream {
    pub(crate) fn new(js: js::Context, stream: String) -> Self {
        Self { js, stream }
    }

    /// The subject's first stored message at or after `seq`.
    pub(crate) async fn next(&self, subject: &str, seq: u64) -> Result<Option<Recovered>, String> {
        let stream = self.handle().await?;
        let found = stream
            .raw_message_builder()
            .next_by_subject(subject)
            .sequence(seq)
            .send()
            .await;
        Self::found(found)
    }

    /// The sequence of the subject's last stored message (0: none).
    pub(crate) async fn last_seq(&self, subject: &str) -> Result<u64, String> {
        let stream = self.handle().await?;
        let found = stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await;
        Ok(Self::found(found)?.map_or(0, |m| m.seq))
    }

    /// Deletes all but the last `keep` messages of `subject`, in the
    /// background (a failure is left to the next trim).
    pub(crate) fn trim(&self, subject: String, keep: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            let trimmed = async {
                let stream = this.handle().await?;
                let purge = stream.purge().filter(subject.clone()).keep(keep);
                purge.await.map_err(|e| e.to_string())
            };
            if let Err(e) = trimmed.await {
                tracing::debug!(%subject, error = %e, "trimming a history channel failed; the next event trims it");
            }
        });
    }

    async fn handle(&self) -> Result<stream::Stream<()>, String> {
        self.js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| e.to_string())
    }

    fn found(
        found: Result<StreamMessage, stream::RawMessageError>,
    ) -> Result<Option<Recovered>, String> {
        match found {
            Ok(m) => Ok(Some(Recovered {
                seq: m.sequence,
                at_ms: u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok(),
                payload: m.payload,
            })),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republish_headers_give_the_position_and_the_storage_time() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Sequence", "42");
        headers.insert("Nats-Last-Sequence", "40");
        headers.insert("Nats-Time-Stamp", "2026-12-07T13:41:10.123456789Z");
        assert_eq!(
            Stored::of(Some(&headers)),
            Some(Stored {
                seq: 42,
                previous: 40,
                at_ms: Some(1_796_650_870_123),
            })
        );
        assert_eq!(Stored::of(None), None);
        assert_eq!(Stored::of(Some(&HeaderMap::new())), None);
    }
}
