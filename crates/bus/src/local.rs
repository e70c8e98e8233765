//! The in-process bus of `herald standalone`: a publish is a direct call
//! into the one gateway of the process.

use crate::{BusError, BusMessage, Sink};
use std::sync::{Arc, OnceLock};

#[derive(Default)]
pub(crate) struct LocalBus {
    sink: OnceLock<Arc<dyn Sink>>,
}

impl LocalBus {
    pub(crate) fn attach(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink).is_err() {
            panic!("LocalBus::attach called twice");
        }
    }

    pub(crate) fn publish(&self, message: &BusMessage) -> Result<(), BusError> {
        let sink = self.sink.get().ok_or(BusError::NotAttached)?;
        sink.deliver(message);
        Ok(())
    }
}
