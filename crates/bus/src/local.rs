//! The in-process bus of `herald standalone`: a publish is a direct call
//! into the one gateway of the process. History channels are kept here, in
//! memory (`history.rs`).

use crate::history::{HistoryRules, Retained, Rings};
use crate::{BusError, BusMessage, Sink};
use herald_protocol::unix_millis;
use std::sync::{Arc, OnceLock};

#[derive(Default)]
pub(crate) struct LocalBus {
    sink: OnceLock<Arc<dyn Sink>>,
    pub(crate) history: HistoryRules,
    rings: Rings,
}

impl LocalBus {
    pub(crate) fn attach(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink).is_err() {
            panic!("LocalBus::attach called twice");
        }
    }

    pub(crate) fn publish(&self, message: &BusMessage) -> Result<(), BusError> {
        let sink = self.sink.get().ok_or(BusError::NotAttached)?;
        if let BusMessage::Event(envelope) = message {
            let rule = self.history.rule(&envelope.app, &envelope.channel);
            // Client events are not kept (as cache channels do not keep them).
            if let Some(rule) = rule.filter(|_| !envelope.is_client_event()) {
                let mut kept = envelope.clone();
                kept.id = Some(self.rings.record(envelope, rule, unix_millis()));
                sink.deliver(&BusMessage::Event(kept));
                return Ok(());
            }
        }
        sink.deliver(message);
        Ok(())
    }

    pub(crate) fn retained(&self, app: &str, channel: &str, after: Option<u64>) -> Vec<Retained> {
        match self.history.rule(app, channel) {
            Some(rule) => self.rings.read(app, channel, rule, after, unix_millis()),
            None => Vec::new(),
        }
    }
}
