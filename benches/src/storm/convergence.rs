//! Whether the cluster state is right after the storm, and from when: the
//! HTTP API's member lists and subscription counts (exact only once the
//! dead node's entries are gone) and every client's own member list.

use super::{channels_of, ms_since, user_id, POLL};
use crate::Api;
use anyhow::bail;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When (ms after the kill) the cluster state was first exact.
pub struct Convergence {
    /// Every presence channel's member list at the HTTP API is exactly its
    /// group's users.
    pub users_exact_ms: Option<f64>,
    /// Every channel's `subscription_count` is its group's size (the dead
    /// node's counts are gone).
    pub counts_exact_ms: Option<f64>,
    /// Every client's own member list (snapshot plus member events, as
    /// pusher-js keeps it) is exactly its group's users.
    pub clients_exact_ms: Option<f64>,
    /// All three at once (the wait ends there).
    pub exact_ms: Option<f64>,
    /// A member list at the HTTP API was exact and later was not.
    pub users_regressed: bool,
    /// Clients whose own member list was wrong when the wait ended, among
    /// those that reconnected and those that stayed.
    pub wrong_lists_reconnected: usize,
    pub wrong_lists_stayed: usize,
}

/// The expected members: client `i` is user `u{i}` in group `i / size`.
pub(super) struct Groups {
    clients: usize,
    members_per_channel: usize,
}

impl Groups {
    fn count(&self) -> usize {
        self.clients.div_ceil(self.members_per_channel)
    }

    fn users(&self, group: usize) -> BTreeSet<String> {
        let first = group * self.members_per_channel;
        (first..self.clients.min(first + self.members_per_channel))
            .map(user_id)
            .collect()
    }

    /// Whether the HTTP API lists exactly the expected users everywhere.
    async fn api_users_exact(&self, api: &Api) -> anyhow::Result<bool> {
        let lists = futures::future::try_join_all(
            (0..self.count())
                .map(|g| async move { api.users(&format!("presence-storm-{g}")).await }),
        )
        .await?;
        Ok(lists
            .into_iter()
            .enumerate()
            .all(|(g, got)| got.into_iter().collect::<BTreeSet<_>>() == self.users(g)))
    }

    /// Whether every storm channel's `subscription_count` is its group's size.
    async fn api_counts_exact(&self, api: &Api) -> anyhow::Result<bool> {
        let counts = subscription_counts(api).await?;
        Ok(counts.len() == 3 * self.count()
            && (0..self.count()).all(|g| {
                let size = self.users(g).len() as u64;
                channels_of(g * self.members_per_channel, self.members_per_channel)
                    .iter()
                    .all(|ch| counts.get(ch) == Some(&size))
            }))
    }

    /// The clients whose own member list is not their group's users.
    fn wrong_client_lists<'a>(
        &'a self,
        members: &'a [Mutex<BTreeSet<String>>],
    ) -> impl Iterator<Item = usize> + 'a {
        let expected: Vec<BTreeSet<String>> = (0..self.count()).map(|g| self.users(g)).collect();
        members.iter().enumerate().filter_map(move |(i, list)| {
            (*list.lock().expect("members") != expected[i / self.members_per_channel]).then_some(i)
        })
    }
}

/// Polls the HTTP API and the clients' member lists until all are exact,
/// or `deadline` after the kill.
pub(super) async fn converge(
    api: &Api,
    members: &[Mutex<BTreeSet<String>>],
    reconnected: &HashMap<usize, String>,
    members_per_channel: usize,
    kill_at: Instant,
    deadline: Duration,
) -> anyhow::Result<Convergence> {
    let groups = Groups {
        clients: members.len(),
        members_per_channel,
    };
    let mut c = Convergence {
        users_exact_ms: None,
        counts_exact_ms: None,
        clients_exact_ms: None,
        exact_ms: None,
        users_regressed: false,
        wrong_lists_reconnected: 0,
        wrong_lists_stayed: 0,
    };
    loop {
        let users_ok = groups.api_users_exact(api).await?;
        let counts_ok = groups.api_counts_exact(api).await?;
        let wrong: Vec<usize> = groups.wrong_client_lists(members).collect();
        let at = Some(ms_since(kill_at, Instant::now()));
        c.users_regressed |= c.users_exact_ms.is_some() && !users_ok;
        for (ok, first) in [
            (users_ok, &mut c.users_exact_ms),
            (counts_ok, &mut c.counts_exact_ms),
            (wrong.is_empty(), &mut c.clients_exact_ms),
        ] {
            if ok && first.is_none() {
                *first = at;
            }
        }
        let all_ok = users_ok && counts_ok && wrong.is_empty();
        if all_ok || kill_at.elapsed() > deadline {
            c.exact_ms = at.filter(|_| all_ok);
            c.wrong_lists_reconnected =
                wrong.iter().filter(|i| reconnected.contains_key(i)).count();
            c.wrong_lists_stayed = wrong.len() - c.wrong_lists_reconnected;
            return Ok(c);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `subscription_count` of every occupied storm channel, from
/// `GET /apps/{id}/channels?info=subscription_count`.
async fn subscription_counts(api: &Api) -> anyhow::Result<HashMap<String, u64>> {
    let path = format!("/apps/{}/channels", api.app_id);
    let (status, text) = api
        .request("GET", &path, &[("info", "subscription_count")], None)
        .await?;
    if status != 200 {
        bail!("channels answered {status}: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["channels"]
        .as_object()
        .map(|channels| {
            channels
                .iter()
                .filter(|(name, _)| name.contains("storm-"))
                .map(|(name, info)| {
                    (
                        name.clone(),
                        info["subscription_count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}
