//! NATS subjects for bus traffic, keyed by (app, channel).
//!
//! Names are encoded with [`herald_protocol::token`], so a channel name with
//! `.`, `*` or `>` stays inside its own subject token.

use herald_protocol::token::encode_token;

/// Subject of a channel's events: `{prefix}.ev.{app}.{channel}`.
pub fn event_subject(prefix: &str, app: &str, channel: &str) -> String {
    format!(
        "{prefix}.ev.{}.{}",
        encode_token(app),
        encode_token(channel)
    )
}

/// Subject of an app's control messages (e.g. terminate a user's connections).
pub fn control_subject(prefix: &str, app: &str) -> String {
    format!("{prefix}.ctl.{}", encode_token(app))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subjects_escape_separators() {
        assert_eq!(
            event_subject("herald", "app 1", "a.*>"),
            "herald.ev.app=201.a=2E=2A=3E"
        );
        assert_eq!(control_subject("herald", "1"), "herald.ctl.1");
    }

    proptest! {
        #[test]
        fn distinct_pairs_get_distinct_subjects(
            a in "[a-z.=]{0,6}", b in "[a-z.=]{0,6}", c in "[a-z.=]{0,6}", d in "[a-z.=]{0,6}"
        ) {
            prop_assume!((&a, &b) != (&c, &d));
            prop_assert_ne!(event_subject("h", &a, &b), event_subject("h", &c, &d));
        }
    }
}
