//! Joining and leaving presence channels.
//!
//! Who a socket joins as comes from the subscription's `channel_data` or,
//! without it, from the signed-in user; the member list it is acknowledged
//! with must include itself even before the replicated view does. Both
//! rules are Pusher's, not the subscription flow's, hence their own module.

use super::context::Context;
use super::refused::Refused;
use super::{user_id_of, User, MAX_USER_ID_LEN};
use herald_protocol::message;
use herald_state::JoinError;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct ChannelData<'a> {
    user_id: serde_json::Value,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
}

/// Who a socket is on a presence channel.
pub(super) struct Member {
    pub user_id: String,
    /// Raw JSON of `user_info` (`null` without one).
    pub info: String,
}

impl Member {
    /// Whether the signed `user_info` asks for the member list and member
    /// events of a large presence channel (`"watcher": true`).
    pub fn is_watcher(&self) -> bool {
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            watcher: bool,
        }
        serde_json::from_str::<Info>(&self.info).is_ok_and(|i| i.watcher)
    }
}

/// Joins `channel` as the member `channel_data` (or the signed-in user)
/// names. `member_added` reaches the other subscribers during the join;
/// this socket joins the local fan-out only afterwards, so it never hears
/// about itself.
pub(super) async fn join(
    cx: &Context<'_>,
    channel: &str,
    channel_data: Option<&str>,
    user: Option<&User>,
) -> Result<Member, Refused> {
    let member = member(channel_data, user)?;
    let max_info = cx.app.max_presence_user_info_bytes;
    if member.info.len() > max_info {
        let why = format!(
            "user_info is {} bytes, the limit is {max_info}",
            member.info.len()
        );
        return Err(Refused::new("LimitReached", why, 403));
    }
    let joined = cx
        .state
        .join(&cx.app.id, channel, &member.user_id, &member.info);
    if let Err(JoinError::Full { max }) = joined.await {
        let why = format!("presence channel is full ({max} members)");
        return Err(Refused::new("LimitReached", why, 403));
    }
    Ok(member)
}

fn member(channel_data: Option<&str>, user: Option<&User>) -> Result<Member, Refused> {
    match (channel_data, user) {
        (Some(data), _) => {
            let parsed = serde_json::from_str::<ChannelData>(data).map_err(|e| {
                Refused::new("AuthError", format!("invalid channel_data: {e}"), 400)
            })?;
            let Some(user_id) = user_id_of(&parsed.user_id) else {
                let why =
                    format!("channel_data needs a user_id of 1 to {MAX_USER_ID_LEN} characters");
                return Err(Refused::new("AuthError", why, 400));
            };
            let info = parsed.user_info.map_or("null", RawValue::get).to_owned();
            Ok(Member { user_id, info })
        }
        // pusher-js 8 omits channel_data for a signed-in user: the member is that user.
        (None, Some(user)) => Ok(Member {
            user_id: user.id.clone(),
            info: user.info.clone().unwrap_or_else(|| "null".into()),
        }),
        (None, None) => {
            let why = "presence channels need channel_data or a signed-in user";
            Err(Refused::new("AuthError", why, 401))
        }
    }
}

/// `subscription_succeeded` with the channel's member list (and `member`),
/// queued atomically with respect to member transitions: pusher-js replaces
/// its list with this snapshot, so a `member_added` queued before it must be
/// in it. On a large presence channel only a watcher gets the list (and
/// becomes one under the same lock); any other member gets itself and the
/// count (see `crate::crowd`).
pub(super) fn send_snapshot(cx: &Context<'_>, channel: &str, member: &Member) {
    if cx.app.is_large_presence(channel) && !member.is_watcher() {
        let mut presence = serde_json::json!({
            "count": cx.state.member_count(&cx.app.id, channel),
            "ids": [],
            "hash": {},
        });
        include_member(&mut presence, &member.user_id, &member.info);
        cx.send_text(&message::subscription_succeeded(channel, Some(presence)));
        return;
    }
    cx.state
        .with_presence_data(&cx.app.id, channel, |mut presence| {
            if cx.app.is_large_presence(channel) {
                cx.hub.crowds.add_watcher(channel, cx.peer);
            }
            include_member(&mut presence, &member.user_id, &member.info);
            cx.send_text(&message::subscription_succeeded(channel, Some(presence)));
        });
}

/// Makes sure the joiner is in its own member list, even if its write has
/// not reached the replicated view yet (NATS failing over): pusher-js needs
/// itself there to set `members.me`.
fn include_member(presence: &mut serde_json::Value, user: &str, info: &str) {
    if presence["hash"].get(user).is_some() {
        return;
    }
    let info = serde_json::from_str(info).unwrap_or(serde_json::Value::Null);
    presence["hash"][user] = info;
    if let Some(ids) = presence["ids"].as_array_mut() {
        ids.push(user.into());
        let listed = ids.len();
        // A large channel's short list still carries the channel's count,
        // which may not have the joiner yet either.
        let count = presence["count"].as_u64().unwrap_or(0).max(listed as u64);
        presence["count"] = count.into();
    }
}

/// Leaves the channel's member set; a watcher stops watching first, so it
/// does not hear its own departure.
pub(super) async fn leave(cx: &Context<'_>, channel: &str, user_id: &str) {
    cx.hub.crowds.remove_watcher(channel, cx.peer.socket_id());
    cx.state.leave(&cx.app.id, channel, user_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_joiner_is_added_to_a_member_list_that_lacks_it() {
        let mut presence = json!({"ids": ["a"], "hash": {"a": null}, "count": 1});
        include_member(&mut presence, "b", r#"{"name":"B"}"#);
        assert_eq!(
            presence,
            json!({"ids": ["a", "b"], "hash": {"a": null, "b": {"name": "B"}}, "count": 2})
        );
        include_member(&mut presence, "a", r#"{"name":"A"}"#);
        assert_eq!(presence["count"], 2);
    }

    #[test]
    fn channel_data_names_the_member_before_the_signed_in_user() {
        let user = User {
            id: "u".into(),
            info: Some(r#"{"x":1}"#.into()),
            watchlist: Vec::new(),
        };
        let from_data = member(Some(r#"{"user_id":7}"#), Some(&user)).ok().unwrap();
        assert_eq!((&*from_data.user_id, &*from_data.info), ("7", "null"));
        let from_user = member(None, Some(&user)).ok().unwrap();
        assert_eq!((&*from_user.user_id, &*from_user.info), ("u", r#"{"x":1}"#));
        let refused = member(Some(r#"{"user_id":""}"#), None).err().unwrap();
        assert_eq!(refused.status, 400);
        assert_eq!(member(None, None).err().unwrap().status, 401);
    }
}
