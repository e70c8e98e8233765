//! `pusher:signin` (user authentication) and the watchlist that comes with it.
//!
//! A signed-in socket is registered under its user id (for
//! `terminate_connections`), receives its `#server-to-user-` channel and
//! its watchlist's online/offline events, and counts towards the user being
//! online cluster-wide; [`sign_out`] undoes all of it when the session ends.

use super::context::Context;
use super::{user_id_of, User, MAX_USER_ID_LEN};
use crate::hub::watchlist_channel;
use herald_protocol::{auth, codes, message, ChannelName};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most users one sign-in may watch (Pusher's limit).
const MAX_WATCHLIST: usize = 100;

#[derive(Deserialize)]
struct UserData<'a> {
    id: serde_json::Value,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
    #[serde(default)]
    watchlist: Vec<serde_json::Value>,
}

/// Handles `pusher:signin`; returns whether the socket signed in. A refused
/// sign-in answers `pusher:error` 4009 and leaves the socket open, as
/// Pusher documents.
pub(super) async fn signin(
    cx: &Context<'_>,
    user: &mut Option<User>,
    token: &str,
    user_data: &str,
) -> bool {
    let (id, data) = match verify(cx, user.is_some(), token, user_data) {
        Ok(verified) => verified,
        Err(refusal) => {
            cx.count_auth_failure("signin");
            cx.send_error(Some(codes::UNAUTHORIZED), &refusal);
            return false;
        }
    };
    let watchlist = watchlist(cx, &data);
    cx.hub.add_user(&id, cx.peer);
    cx.join_local(ChannelName::server_to_user(&id).as_str())
        .await;
    for watched in &watchlist {
        cx.join_local(&watchlist_channel(watched)).await;
    }
    cx.send_text(&message::signin_success(user_data));
    if !watchlist.is_empty() {
        report_watchlist(cx, &watchlist);
    }
    cx.state.user_online(&cx.app.id, &id);
    let info = data.user_info.map(|raw| raw.get().to_owned());
    *user = Some(User {
        id,
        info,
        watchlist,
    });
    true
}

/// The user id and data of a validly signed `user_data`, or why not.
fn verify<'a>(
    cx: &Context<'_>,
    signed_in: bool,
    token: &str,
    user_data: &'a str,
) -> Result<(String, UserData<'a>), String> {
    let signed = auth::user_string_to_sign(cx.peer.socket_id(), user_data);
    let parsed = serde_json::from_str::<UserData>(user_data).ok();
    let user_id = parsed.as_ref().and_then(|d| user_id_of(&d.id));
    let signed_ok = cx
        .app
        .secrets()
        .any(|secret| auth::verify_token(&cx.app.key, secret, &signed, token));
    match (user_id, parsed) {
        _ if !signed_ok => Err("Invalid signature".to_owned()),
        (Some(id), Some(data)) if !signed_in => Ok((id, data)),
        (Some(_), Some(_)) => Err("already signed in".to_owned()),
        _ => Err(format!(
            "user_data must be a JSON object with an id of 1 to {MAX_USER_ID_LEN} characters"
        )),
    }
}

/// The watched user ids, cut to [`MAX_WATCHLIST`] (with a `pusher:error`
/// 4302 saying so).
fn watchlist(cx: &Context<'_>, data: &UserData<'_>) -> Vec<String> {
    let mut watchlist: Vec<String> = data.watchlist.iter().filter_map(user_id_of).collect();
    if watchlist.len() > MAX_WATCHLIST {
        cx.count_limit("watchlist");
        let why = format!("a watchlist holds at most {MAX_WATCHLIST} users; the rest are ignored");
        cx.send_error(Some(codes::WATCHLIST_TOO_LONG), &why);
        watchlist.truncate(MAX_WATCHLIST);
    }
    watchlist
}

/// The first watchlist event reports every watched user, online or not.
fn report_watchlist(cx: &Context<'_>, watchlist: &[String]) {
    let online = cx.state.online_among(&cx.app.id, watchlist);
    let offline: Vec<String> = watchlist
        .iter()
        .filter(|u| !online.contains(u))
        .cloned()
        .collect();
    let data = message::watchlist_data(&[("online", &online), ("offline", &offline)]);
    cx.send_text(&message::event_message(
        "pusher_internal:watchlist_events",
        None,
        &data,
        None,
    ));
}

/// Undoes a sign-in when the session ends.
pub(super) async fn sign_out(cx: &Context<'_>, user: User) {
    cx.hub.remove_user(&user.id, cx.peer.socket_id());
    cx.leave_local(ChannelName::server_to_user(&user.id).as_str());
    for watched in &user.watchlist {
        cx.leave_local(&watchlist_channel(watched));
    }
    cx.state.user_offline(&cx.app.id, &user.id);
}
