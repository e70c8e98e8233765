//! Client frame headers: any bytes are parsed or refused, and what is
//! accepted obeys the limits the parser enforces.
#![no_main]
use herald_protocol::frame::{parse_client_header, unmask};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 1024;
    if let Ok(Some(header)) = parse_client_header(data, max) {
        assert!(header.payload_len <= max);
        assert!(!header.is_control() || (header.fin && header.payload_len <= 125));
        if data.len() >= header.frame_len() {
            let mut payload = data[header.header_len..header.frame_len()].to_vec();
            unmask(&mut payload, header.mask);
        }
    }
});
