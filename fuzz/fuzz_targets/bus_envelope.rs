//! The bus envelope decoder: bytes from a NATS subject decode or are refused,
//! and what decodes re-encodes to the same message.
#![no_main]
use herald_bus::BusMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = BusMessage::decode(data) {
        assert_eq!(BusMessage::decode(&message.encode()).ok(), Some(message));
    }
});
