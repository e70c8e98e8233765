//! One reversible, collision-free token per name, for NATS subjects and KV keys.
//!
//! Channel names may contain `.` (NATS's token separator) and, for internal
//! channels, `#`; app ids and user ids are free-form. Each is encoded into one
//! token that keeps `A-Z a-z 0-9 _ -` as they are, so subjects stay readable
//! in `nats sub` output, and escapes every other byte as `=HH` (uppercase
//! hex). `=` itself is escaped, so the encoding is reversible and two
//! different names never share a token. The empty string is `=`. The same
//! tokens are valid JetStream KV key parts (`[-/_=.A-Za-z0-9]`).

const ESCAPE: u8 = b'=';

/// Bytes kept verbatim: safe in a NATS token and a KV key, and never the escape.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

pub fn encode_token(s: &str) -> String {
    if s.is_empty() {
        return (ESCAPE as char).to_string();
    }
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Inverse of [`encode_token`]; `None` for anything it cannot have produced.
pub fn decode_token(token: &str) -> Option<String> {
    if token.as_bytes() == [ESCAPE] {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            ESCAPE => {
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if is_plain(b) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_for_common_names() {
        assert_eq!(
            encode_token("private-admin-monitoring"),
            "private-admin-monitoring"
        );
        assert_eq!(encode_token("presence-a.b"), "presence-a=2Eb");
        assert_eq!(encode_token("#server-to-user-1"), "=23server-to-user-1");
        assert_eq!(encode_token(""), "=");
    }

    #[test]
    fn rejects_tokens_it_never_produces() {
        for bad in ["", "a=", "a=2", "a=2e", "=41", "a.b", "a b", "=FF", "a~"] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(s in any::<String>()) {
            prop_assert_eq!(decode_token(&encode_token(&s)), Some(s));
        }

        #[test]
        fn tokens_are_single_nats_tokens_and_kv_key_parts(s in any::<String>()) {
            let t = encode_token(&s);
            prop_assert!(!t.is_empty());
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=')));
        }

        #[test]
        fn distinct_names_get_distinct_tokens(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(encode_token(&a), encode_token(&b));
        }
    }
}
