//! HMAC-SHA256 signatures: channel subscriptions, user sign-in and HTTP API requests.
//!
//! Every comparison of a received signature is constant-time, and it is made
//! against the exact bytes the client sent (`channel_data`, `user_data`), never
//! against a re-serialisation, because the signer hashed those bytes.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check that `signature_hex` is the signature of `message`.
pub fn verify(secret: &str, message: &str, signature_hex: &str) -> bool {
    let expected = sign(secret, message);
    expected.as_bytes().ct_eq(signature_hex.as_bytes()).into()
}

/// The string a channel authorization signs: `socket_id:channel[:channel_data]`.
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signs: `socket_id::user::user_data`.
pub fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Checks a `key:signature` token as sent in `pusher:subscribe` and `pusher:signin`.
pub fn verify_token(key: &str, secret: &str, message: &str, token: &str) -> bool {
    match token.split_once(':') {
        Some((token_key, signature)) => {
            let key_ok: bool = token_key.as_bytes().ct_eq(key.as_bytes()).into();
            // Always compute the HMAC, so timing does not reveal a key mismatch.
            let signature_ok = verify(secret, message, signature);
            key_ok & signature_ok
        }
        None => false,
    }
}

/// The `key:signature` token a server SDK would produce; used by tests and tools.
pub fn token(key: &str, secret: &str, message: &str) -> String {
    format!("{key}:{}", sign(secret, message))
}

/// Lowercase hex MD5 of an HTTP API request body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: `METHOD\npath\nsorted query`, where
/// the query is every parameter except `auth_signature`, keys lowercased,
/// sorted by key, values unescaped, joined as `k=v` with `&`.
pub fn api_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .filter(|(k, _)| *k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the Pusher "Authentication signatures" reference.
    #[test]
    fn private_channel_vector() {
        let msg = channel_string_to_sign("1234.1234", "private-foobar", None);
        assert_eq!(
            token("278d425bdf160c739803", "7ad3773142a6692b25b8", &msg),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn presence_channel_vector() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let msg = channel_string_to_sign("1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            sign("7ad3773142a6692b25b8", &msg),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn api_request_vector() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            body_md5(body.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let params = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ];
        let s = api_string_to_sign("POST", "/apps/3/events", params);
        assert_eq!(
            s,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign("7ad3773142a6692b25b8", &s),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn tokens_are_checked_for_key_and_signature() {
        let msg = "1.1:private-a";
        let good = token("key", "secret", msg);
        assert!(verify_token("key", "secret", msg, &good));
        assert!(!verify_token("other", "secret", msg, &good));
        assert!(!verify_token("key", "secret", "1.1:private-b", &good));
        assert!(!verify_token("key", "secret", msg, "no-colon"));
        assert!(!verify_token("key", "secret", msg, "key:"));
    }

    #[test]
    fn signature_ignores_auth_signature_and_sorts_keys() {
        let s = api_string_to_sign(
            "get",
            "/apps/1/channels",
            [
                ("info", "user_count"),
                ("auth_signature", "x"),
                ("AUTH_KEY", "k"),
            ],
        );
        assert_eq!(s, "GET\n/apps/1/channels\nauth_key=k&info=user_count");
    }
}
