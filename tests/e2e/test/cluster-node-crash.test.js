'use strict';
// A gateway that crashes (SIGKILL: no clean unsubscribe) must not leave ghosts behind: its presence members
// leave (member_removed exactly once on the other gateways, within a bound), its subscriptions stop counting at
// the ingest and its signed-in users go offline for watchers, once Herald's node liveness TTL (nats.node_ttl,
// default 3 s) has run out. A user that is also connected through a surviving gateway stays a member.
// A gateway restarted with the crashed one's --node-id neither resurrects the old members nor loses new ones.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

// [nats] node_ttl (Herald's default, not overridden by these tests) and the grace Herald gives a heartbeat on top
// of it (limit = node_ttl + node_ttl/3, docs/presence.md §5.3).
const NODE_TTL_MS = 3000;
const NODE_TTL_GRACE_MS = 1000;
// The configurable bound for "kill -9 -> member_removed on another gateway" (default 5 s):
// node_ttl + its grace + 1 s slack for delivery and scheduling. Override with CRASH_BOUND_MS=<ms>.
const CRASH_BOUND_MS = Number(process.env.CRASH_BOUND_MS) || NODE_TTL_MS + NODE_TTL_GRACE_MS + 1000;
// One full liveness cycle after which a live node's entries must still be there (limit + one beat + slack).
const LIVENESS_CYCLE_MS = NODE_TTL_MS + NODE_TTL_GRACE_MS + 2000;
// A node judges another's expiry marker only once its own observation window (which starts with the process) is
// older than node_ttl + grace (docs/presence.md §5.3); before that a death is left to the slower sweep. Crashes
// are measured on a settled cluster, as in production: the survivors have been up at least this long.
const SETTLED_MS = NODE_TTL_MS + NODE_TTL_GRACE_MS + 500;

/** pusher-js auth options signing channel auth as user `id` (user_info {name}) and sign-in with `extra` user data. */
function authAs(sdk, id, extra = {}) {
  return {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) =>
        cb(null, channelName.startsWith('presence-') ? sdk.authorizeChannel(socketId, channelName, { user_id: String(id), user_info: { name: `user ${id}` } }) : sdk.authorizeChannel(socketId, channelName)),
    },
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, sdk.authenticateUser(socketId, { id: String(id), ...extra })) },
  };
}

/** A connected pusher-js client as user `id`, subscribed to `channels` (and signed in when `signin`). */
async function member(node, sdk, id, channels, { signin = false, userData } = {}) {
  const client = await h.connectedPusher(node, authAs(sdk, id, userData));
  for (const name of channels) await h.subscribed(client, name);
  if (signin) {
    client.signin();
    await h.waitFor(() => client.user.user_data, 5000, `user ${id} signed in on ${node.label}`);
  }
  return client;
}

/**
 * Records, with arrival times, every member_added / member_removed a pusher-js client sees on `channels`.
 * events: [{type: 'added'|'removed', channel, id, at}]
 */
function watchMembers(client, channels) {
  const events = [];
  for (const name of channels) {
    const channel = client.channel(name);
    channel.bind('pusher:member_added', (m) => events.push({ type: 'added', channel: name, id: m.id, at: Date.now() }));
    channel.bind('pusher:member_removed', (m) => events.push({ type: 'removed', channel: name, id: m.id, at: Date.now() }));
  }
  return events;
}

const key = (e) => `${e.channel}/${e.id}`;
const keys = (list) => list.map(key).sort();

/** Sorted member ids and user_count of a presence channel at the ingest. */
async function ingestPresence(sdk, channel) {
  const users = (await h.sdkGetJson(sdk, `/channels/${channel}/users`)).users.map((u) => u.id).sort();
  const info = await h.sdkGetJson(sdk, `/channels/${channel}`, { info: 'user_count' });
  return { users, user_count: info.user_count ?? 0 };
}

/** Expected {users, user_count} for member id lists. */
function expectedPresence(ids) {
  const users = [...new Set(ids.map(String))].sort();
  return { users, user_count: users.length };
}

/** Poll the ingest until every channel in `expected` ({channel: ids}) matches; fails after `deadline` (epoch ms). */
async function ingestConverges(sdk, expected, deadline, what) {
  let last;
  for (;;) {
    const got = {};
    for (const name of Object.keys(expected)) got[name] = await ingestPresence(sdk, name).catch((e) => `error: ${e.message}`);
    const want = Object.fromEntries(Object.entries(expected).map(([name, ids]) => [name, expectedPresence(ids)]));
    last = got;
    try {
      assert.deepEqual(got, want);
      return Date.now();
    } catch {
      /* not yet */
    }
    if (Date.now() >= deadline) {
      assert.deepEqual(last, want, `${what}: the ingest's /users and user_count did not converge in time`);
    }
    await h.sleep(50);
  }
}

test('kill -9 of a gateway holding members: member_removed exactly once on the others, within the bound; a restart with its node id neither resurrects nor loses members', { timeout: 90000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 3 });
  const startedAt = Date.now();
  const [gwA, gwB, gwC] = cluster.gateways;
  const sdk = cluster.sdk();
  const [P1, P2, P3] = ['presence-crash-1', 'presence-crash-2', 'presence-crash-3'];
  const ALL = [P1, P2, P3];

  // observers: user 9 on B (also subscribed to "room", signed in, watching users 1 and 4), user 8 on C
  const online = [];
  const offline = [];
  const obsB = await h.connectedPusher(gwB, authAs(sdk, 9, { watchlist: ['1', '4'] }));
  obsB.user.watchlist.bind('online', (e) => online.push(...e.user_ids));
  obsB.user.watchlist.bind('offline', (e) => offline.push(...e.user_ids));
  obsB.signin();
  await h.waitFor(() => obsB.user.user_data, 5000, 'observer 9 signed in on B');
  for (const name of ALL) await h.subscribed(obsB, name);
  await h.subscribed(obsB, 'room');
  const obsC = await member(gwC, sdk, 8, ALL);

  // the crashing gateway A: user 1 with two tabs (one signed in and on "room"), users 2, 3, and user 4 who is
  // also connected through B (P1, P2 only) and signed in on both
  await member(gwA, sdk, 1, [P1, P2, 'room'], { signin: true });
  await member(gwA, sdk, 1, [P1]);
  await member(gwA, sdk, 2, [P2, P3]);
  await member(gwA, sdk, 3, [P1, P3]);
  await member(gwA, sdk, 4, [P1, P2, P3], { signin: true });
  await member(gwB, sdk, 4, [P1, P2], { signin: true });
  // a survivor on C
  await member(gwC, sdk, 5, [P1]);

  const before = { [P1]: [1, 3, 4, 5, 8, 9], [P2]: [1, 2, 4, 8, 9], [P3]: [2, 3, 4, 8, 9] };
  const after = { [P1]: [4, 5, 8, 9], [P2]: [4, 8, 9], [P3]: [8, 9] };
  const removedExpected = [`${P1}/1`, `${P1}/3`, `${P2}/1`, `${P2}/2`, `${P3}/2`, `${P3}/3`, `${P3}/4`].sort();

  await ingestConverges(sdk, before, Date.now() + 5000, 'before the crash');
  for (const [obs, label] of [[obsB, 'B'], [obsC, 'C']]) {
    await h.waitFor(() => ALL.every((name) => obs.channel(name).members.count === before[name].length), 5000, `observer on ${label} to see every member`);
  }
  await h.waitFor(() => online.includes('1') && online.includes('4'), 5000, 'observer 9 told users 1 and 4 are online');
  offline.length = 0; // drop the initial watchlist state (both were offline when observer 9 signed in)
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/room', { info: 'subscription_count' })).subscription_count === 2,
    5000,
    'subscription_count 2 on room',
  );
  const seenB = watchMembers(obsB, ALL);
  const seenC = watchMembers(obsC, ALL);

  // --- gateway A crashes (on a settled cluster)
  await h.sleep(Math.max(0, startedAt + SETTLED_MS - Date.now()));
  const killedAt = Date.now();
  await gwA.kill9();

  // every observer gets the 7 removals (waiting past the bound, so that a slow removal is measured, not timed out)
  await h.waitFor(
    () => [seenB, seenC].every((seen) => removedExpected.every((k) => seen.some((e) => e.type === 'removed' && key(e) === k))),
    CRASH_BOUND_MS + 10000,
    'member_removed for every user that was only on A, on B and C',
    20,
  );
  const timings = [seenB, seenC].map((seen) => Math.max(...seen.filter((e) => e.type === 'removed').map((e) => e.at - killedAt)));
  const firstMs = Math.min(...[...seenB, ...seenC].map((e) => e.at - killedAt));
  const tookMs = Math.max(...timings);
  console.log(`[timing] kill -9 -> member_removed: ${tookMs} ms (first ${firstMs} ms; last on B ${timings[0]} ms, on C ${timings[1]} ms; bound ${CRASH_BOUND_MS} ms)`);

  // the ingest agrees within the bound
  const ingestAt = await ingestConverges(sdk, after, killedAt + CRASH_BOUND_MS, 'after the crash');
  console.log(`[timing] kill -9 -> ingest /users and user_count converged: ${ingestAt - killedAt} ms`);
  assert.ok(tookMs <= CRASH_BOUND_MS, `kill -9 -> member_removed took ${tookMs} ms, above the bound of ${CRASH_BOUND_MS} ms`);

  // exactly once: watch a while longer (a late sweep must not repeat a removal or touch a survivor)
  await h.sleep(Math.max(0, killedAt + CRASH_BOUND_MS + 2000 - Date.now()));
  for (const [seen, label] of [[seenB, 'B'], [seenC, 'C']]) {
    assert.deepEqual(keys(seen.filter((e) => e.type === 'removed')), removedExpected, `member_removed seen on ${label} (user 4 is still on B for ${P1} and ${P2})`);
    assert.deepEqual(keys(seen.filter((e) => e.type === 'added')), [], `member_added seen on ${label}`);
  }
  for (const name of ALL) {
    assert.deepEqual(Object.keys(obsB.channel(name).members.members).sort(), after[name].map(String).sort(), `members of ${name} on B`);
    assert.deepEqual(Object.keys(obsC.channel(name).members.members).sort(), after[name].map(String).sort(), `members of ${name} on C`);
  }
  await ingestConverges(sdk, after, Date.now(), 'after the crash, still');
  // A's subscription of "room" is gone, its signed-in user 1 is offline, user 4 (still signed in on B) is not
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/room', { info: 'subscription_count' })).subscription_count === 1,
    2000,
    'subscription_count 1 on room at the ingest',
    100,
  );
  await h.waitFor(() => offline.includes('1'), 2000, 'observer 9 told user 1 is offline', 100);
  assert.deepEqual(offline, ['1'], 'offline events after the crash (user 4 is still signed in on B)');

  // --- a new gateway process with A's node id
  const gwA2 = await ch.startGateway({ nats: cluster.nats, nodeId: gwA.nodeId });
  const restartedAt = Date.now();
  // the old members are not back: not at the ingest ...
  await ingestConverges(sdk, after, Date.now(), 'right after the restart with the same node id');
  // ... and new joins through it work (user 1 again, and a new user 6), announced once on B and C
  await member(gwA2, sdk, 1, [P1, 'room']);
  await member(gwA2, sdk, 6, [P1, P3]);
  const addedExpected = [`${P1}/1`, `${P1}/6`, `${P3}/6`].sort();
  const later = { [P1]: [...after[P1], 1, 6], [P2]: after[P2], [P3]: [...after[P3], 6] };
  await h.waitFor(
    () => [seenB, seenC].every((seen) => addedExpected.every((k) => seen.some((e) => e.type === 'added' && key(e) === k))),
    5000,
    'member_added for the joins through the restarted gateway, on B and C',
  );
  await ingestConverges(sdk, later, Date.now() + 5000, 'after joins through the restarted gateway');
  // ... and they are not lost: a full liveness cycle later they are all still there, nobody left or came back
  await h.sleep(Math.max(0, restartedAt + LIVENESS_CYCLE_MS - Date.now()));
  for (const [seen, label] of [[seenB, 'B'], [seenC, 'C']]) {
    assert.deepEqual(keys(seen.filter((e) => e.type === 'added')), addedExpected, `member_added seen on ${label} (no old member resurrected)`);
    assert.deepEqual(keys(seen.filter((e) => e.type === 'removed')), removedExpected, `member_removed seen on ${label} (no new member lost)`);
  }
  for (const name of ALL) {
    assert.deepEqual(Object.keys(obsB.channel(name).members.members).sort(), later[name].map(String).sort(), `members of ${name} on B`);
  }
  await ingestConverges(sdk, later, Date.now(), 'a liveness cycle after the restart');
  assert.equal((await h.sdkGetJson(sdk, '/channels/room', { info: 'subscription_count' })).subscription_count, 2);
  // a new client on B sees exactly that member list
  const fresh = await member(gwB, sdk, 7, [P1]);
  assert.deepEqual(Object.keys(fresh.channel(P1).members.members).sort(), [...later[P1], 7].map(String).sort());

  // the rest of the cluster is unaffected
  const got = h.nextEvent(obsB.channel('room'), 'after.crash');
  assert.equal((await sdk.trigger('room', 'after.crash', { ok: true })).status, 200);
  assert.deepEqual(await got, { ok: true });
  for (const node of [gwA2, gwB, gwC, cluster.ingest]) assert.equal(await node.readyz(), 200, `${node.label} /readyz`);
});

test('kill -9 and an immediate restart with the same node id (inside the TTL): old members leave once, new ones stay', { timeout: 60000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const P = 'presence-rebirth';
  const obs = await member(gwB, sdk, 9, [P]);
  await member(gwA, sdk, 1, [P]);
  await member(gwA, sdk, 2, [P]);
  await member(gwA, sdk, 3, [P]);
  await member(gwB, sdk, 3, [P]); // user 3 is also on B: stays
  await ingestConverges(sdk, { [P]: [1, 2, 3, 9] }, Date.now() + 5000, 'before the crash');
  await h.waitFor(() => obs.channel(P).members.count === 4, 5000, 'observer on B to see 4 members');
  const seen = watchMembers(obs, [P]);

  const killedAt = Date.now();
  await gwA.kill9();
  // the same node id comes back before its old heartbeat expired (startup takes well under node_ttl)
  const gwA2 = await ch.startGateway({ nats: cluster.nats, nodeId: gwA.nodeId });
  const restartMs = Date.now() - killedAt;
  await h.waitFor(
    () => ['1', '2'].every((id) => seen.some((e) => e.type === 'removed' && e.id === id)),
    CRASH_BOUND_MS + 10000,
    'member_removed for users 1 and 2 on B',
    20,
  );
  const tookMs = Math.max(...seen.filter((e) => e.type === 'removed').map((e) => e.at - killedAt));
  console.log(`[timing] kill -9 + restart with the same node id (up after ${restartMs} ms) -> member_removed: ${tookMs} ms`);
  assert.ok(tookMs <= CRASH_BOUND_MS, `kill -9 -> member_removed took ${tookMs} ms, above the bound of ${CRASH_BOUND_MS} ms`);
  await ingestConverges(sdk, { [P]: [3, 9] }, killedAt + CRASH_BOUND_MS, 'after the crash and restart');

  // new joins through the restarted gateway: user 1 again and a new user 4
  await member(gwA2, sdk, 1, [P]);
  await member(gwA2, sdk, 4, [P]);
  await h.waitFor(() => ['1', '4'].every((id) => seen.some((e) => e.type === 'added' && e.id === id)), 5000, 'member_added for 1 and 4 on B');
  // a full liveness cycle later (the old life's heartbeat TTL has long run out) nothing was lost or repeated
  await h.sleep(LIVENESS_CYCLE_MS);
  assert.deepEqual(keys(seen.filter((e) => e.type === 'removed')), [`${P}/1`, `${P}/2`], 'member_removed on B');
  assert.deepEqual(keys(seen.filter((e) => e.type === 'added')), [`${P}/1`, `${P}/4`], 'member_added on B');
  // every removal came before the re-join of user 1
  const removed1 = seen.findIndex((e) => e.type === 'removed' && e.id === '1');
  const added1 = seen.findIndex((e) => e.type === 'added' && e.id === '1');
  assert.ok(removed1 < added1, `order of events on B: ${JSON.stringify(seen)}`);
  assert.deepEqual(Object.keys(obs.channel(P).members.members).sort(), ['1', '3', '4', '9']);
  await ingestConverges(sdk, { [P]: [1, 3, 4, 9] }, Date.now() + 2000, 'a liveness cycle after the restart');
});
