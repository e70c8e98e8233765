//! The protocol event decoder: any text from a socket is a message or an error.
#![no_main]
use herald_protocol::message::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClientMessage::parse(text);
    }
});
