//! Channel names: validation and classification.
//!
//! Pusher derives a channel's behaviour from its name prefix. The
//! classification is done once per subscription and carried as a
//! [`ChannelName`], so no other code re-parses prefixes.

use std::fmt;

/// Longest channel name Pusher accepts.
pub const MAX_CHANNEL_NAME_LEN: usize = 164;
/// Longest event name Pusher accepts.
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Prefix of the per-user channel that `sendToUser` publishes to.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";
/// Prefix of the internal routing channel on which a user's online/offline
/// transitions reach the sockets watching that user. Never valid for clients.
pub const WATCHLIST_PREFIX: &str = "#watchlist-";

/// How a channel behaves, derived from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No authorization needed.
    Public,
    /// `private-`: signed subscription, client events allowed.
    Private,
    /// `private-encrypted-`: signed; payloads are ciphertext relayed untouched; no client events.
    PrivateEncrypted,
    /// `presence-`: signed with `channel_data`; member lists.
    Presence,
    /// `#server-to-user-{id}`: every socket signed in as that user receives it;
    /// only those sockets may subscribe (pusher-js does, after sign-in).
    ServerToUser,
}

/// A validated channel name with its classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName {
    name: String,
    kind: ChannelKind,
    cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelNameError {
    Empty,
    TooLong(usize),
    InvalidCharacter(char),
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "channel name is empty"),
            Self::TooLong(n) => write!(
                f,
                "channel name is {n} characters, the limit is {MAX_CHANNEL_NAME_LEN}"
            ),
            Self::InvalidCharacter(c) => write!(
                f,
                "channel name contains {c:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;"
            ),
        }
    }
}

impl std::error::Error for ChannelNameError {}

/// True for the characters Pusher allows in channel names.
pub fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

impl ChannelName {
    /// Validates a name a client may subscribe to or the API may publish to.
    /// `#server-to-user-{id}` is accepted (publish side); the gateway refuses
    /// subscriptions to it.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        let chars = name.chars().count();
        if chars > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelNameError::TooLong(chars));
        }
        // After `#server-to-user-` comes a user id, which may hold any
        // printable character; every other name uses the channel charset.
        let invalid = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some("") => return Err(ChannelNameError::Empty),
            Some(user) => user.chars().find(|c| c.is_control()),
            None => name.chars().find(|c| !is_channel_char(*c)),
        };
        match invalid {
            Some(c) => Err(ChannelNameError::InvalidCharacter(c)),
            None => Ok(Self::classify(name)),
        }
    }

    /// The per-user channel of `user_id` (not validated: user ids are free-form).
    pub fn server_to_user(user_id: &str) -> Self {
        Self::classify(&format!("{SERVER_TO_USER_PREFIX}{user_id}"))
    }

    fn classify(name: &str) -> Self {
        let (kind, rest) = if name.starts_with(SERVER_TO_USER_PREFIX) {
            (ChannelKind::ServerToUser, "")
        } else if let Some(rest) = name.strip_prefix("private-encrypted-") {
            (ChannelKind::PrivateEncrypted, rest)
        } else if let Some(rest) = name.strip_prefix("private-") {
            (ChannelKind::Private, rest)
        } else if let Some(rest) = name.strip_prefix("presence-") {
            (ChannelKind::Presence, rest)
        } else {
            (ChannelKind::Public, name)
        };
        Self {
            name: name.to_owned(),
            kind,
            cache: rest.starts_with("cache-"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Cache channels replay their last event to new subscribers.
    pub fn is_cache(&self) -> bool {
        self.cache
    }

    /// Private, encrypted and presence channels need a signed subscription.
    pub fn requires_auth(&self) -> bool {
        matches!(
            self.kind,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// Channels on which clients may send `client-*` events.
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::Presence)
    }

    pub fn is_presence(&self) -> bool {
        self.kind == ChannelKind::Presence
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_every_prefix() {
        let cases = [
            ("orders", ChannelKind::Public, false),
            ("cache-orders", ChannelKind::Public, true),
            ("private-admin-monitoring", ChannelKind::Private, false),
            ("private-cache-x", ChannelKind::Private, true),
            ("private-encrypted-x", ChannelKind::PrivateEncrypted, false),
            (
                "private-encrypted-cache-x",
                ChannelKind::PrivateEncrypted,
                true,
            ),
            ("presence-admin-presence", ChannelKind::Presence, false),
            ("presence-cache-x", ChannelKind::Presence, true),
            ("#server-to-user-42", ChannelKind::ServerToUser, false),
        ];
        for (name, kind, cache) in cases {
            let c = ChannelName::parse(name).unwrap();
            assert_eq!((c.kind(), c.is_cache()), (kind, cache), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::InvalidCharacter(' '))
        );
        assert_eq!(
            ChannelName::parse("ümlaut"),
            Err(ChannelNameError::InvalidCharacter('ü'))
        );
        assert_eq!(
            ChannelName::parse(&"a".repeat(165)),
            Err(ChannelNameError::TooLong(165))
        );
        assert!(ChannelName::parse(&"a".repeat(164)).is_ok());
        assert_eq!(
            ChannelName::parse("#server-to-user-"),
            Err(ChannelNameError::Empty)
        );
        assert!(ChannelName::parse("#other").is_err());
        assert!(ChannelName::parse("#server-to-user-auth0|42 x").is_ok());
        assert!(ChannelName::parse("#server-to-user-a\nb").is_err());
    }

    proptest! {
        #[test]
        fn valid_charset_names_always_parse(name in "[A-Za-z0-9_\\-=@,.;]{1,164}") {
            let parsed = ChannelName::parse(&name).unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }

        #[test]
        fn any_name_with_a_foreign_char_is_rejected(
            pre in "[a-z]{0,10}", c in "[^A-Za-z0-9_\\-=@,.;]", post in "[a-z]{0,10}"
        ) {
            let name = format!("{pre}{c}{post}");
            prop_assume!(!name.starts_with(SERVER_TO_USER_PREFIX));
            prop_assert!(ChannelName::parse(&name).is_err());
        }
    }
}
