'use strict';
// Presence replication across gateways (docs/presence.md): a member is a user, not a connection, cluster-wide.
// - the same user on two gateways counts once; leaving one keeps the member, leaving the last removes it once;
// - a seeded randomized model test of joins / unsubscribes / disconnects / reconnects, gateway kills and restarts
//   with the same node id, and NATS restarts over 3 gateways converges to the exact expected member sets and counts,
//   everywhere, and every observer socket saw a consistent member_added / member_removed sequence;
// - a NATS restart (with and without its JetStream data) converges, and nobody who stayed is reported gone.
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

// [nats] node_ttl: Herald's default, not overridden here.
const NODE_TTL_MS = 3000;

// ---------------------------------------------------------------------------------------------------------
// helpers

const ADDED = 'pusher_internal:member_added';
const REMOVED = 'pusher_internal:member_removed';
const SUCCEEDED = 'pusher_internal:subscription_succeeded';

/** Subscribe a raw client to a presence channel as `userId`; asserts success; returns the presence snapshot. */
async function rawJoin(client, channel, userId, { timeoutMs = 10000, info = { name: `user ${userId}` } } = {}) {
  const socketId = await client.socketId();
  const channelData = JSON.stringify({ user_id: String(userId), user_info: info });
  const m = await client.subscribe(channel, { auth: h.channelAuth(h.APP, socketId, channel, channelData), channel_data: channelData, timeoutMs });
  assert.equal(m.event, SUCCEEDED, `join ${channel} as ${userId}: ${m.raw}`);
  return m.data.presence;
}

/** pusher:unsubscribe, then a ping barrier: the gateway has handled the unsubscribe when the pong arrives. */
async function rawLeave(client, channel, timeoutMs = 10000) {
  client.send({ event: 'pusher:unsubscribe', data: { channel } });
  await client.barrier(timeoutMs);
}

/**
 * A raw socket's view of presence channels, from its messages in order: the snapshot of its (last)
 * subscription_succeeded, then the member_added / member_removed that followed.
 */
function presenceView(client, channel) {
  let start = -1;
  client.messages.forEach((m, i) => {
    if (m.event === SUCCEEDED && m.channel === channel) start = i;
  });
  if (start < 0) return null;
  const snapshot = client.messages[start].data.presence;
  const events = client.messages
    .slice(start + 1)
    .filter((m) => m.channel === channel && (m.event === ADDED || m.event === REMOVED))
    .map((m) => ({ type: m.event === ADDED ? 'added' : 'removed', id: String(m.data.user_id) }));
  const members = new Set(snapshot.ids.map(String));
  for (const e of events) {
    if (e.type === 'added') members.add(e.id);
    else members.delete(e.id);
  }
  return { snapshot, events, members: [...members].sort() };
}

/** {users (sorted ids), user_count, subscription_count} of a presence channel at the ingest. */
async function ingestPresence(sdk, channel) {
  const users = (await h.sdkGetJson(sdk, `/channels/${channel}/users`)).users.map((u) => u.id).sort();
  const info = await h.sdkGetJson(sdk, `/channels/${channel}`, { info: 'user_count,subscription_count' });
  return { users, user_count: info.user_count ?? 0, subscription_count: info.subscription_count ?? 0 };
}

const sorted = (ids) => [...new Set(ids.map(String))].sort();

/** Poll `check` (returns a list of mismatch strings) until it returns [] or `timeoutMs` passes; then assert. */
async function converges(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  const start = Date.now();
  let problems;
  for (;;) {
    try {
      problems = await check();
    } catch (e) {
      problems = [`error: ${e.message}`];
    }
    if (problems.length === 0) return Date.now() - start;
    if (Date.now() >= deadline) break;
    await h.sleep(50);
  }
  assert.fail(`${what}: not converged within ${timeoutMs} ms:\n  ${problems.join('\n  ')}`);
}

/** Mismatches between the ingest and `expected` ({channel: {users, subscription_count}}). */
async function ingestProblems(sdk, expected) {
  const problems = [];
  for (const [channel, want] of Object.entries(expected)) {
    const got = await ingestPresence(sdk, channel);
    const w = { users: sorted(want.users), user_count: sorted(want.users).length, subscription_count: want.subscription_count ?? got.subscription_count };
    if (JSON.stringify(got) !== JSON.stringify(w)) problems.push(`ingest ${channel}: got ${JSON.stringify(got)}, expected ${JSON.stringify(w)}`);
  }
  return problems;
}

/** The member_added / member_removed a raw observer saw for `userId` on `channel` since its subscription. */
function eventsFor(client, channel, userId) {
  return presenceView(client, channel)
    .events.filter((e) => e.id === String(userId))
    .map((e) => e.type);
}

/** Seeded PRNG (mulberry32). */
function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n), pick: (list) => list[Math.floor(next() * list.length)] };
}

// ---------------------------------------------------------------------------------------------------------
// (a) the same user on two gateways

test('the same user on two gateways counts once; leaving one keeps the member, leaving the last removes it once', { timeout: 60000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 3 });
  const [gwA, gwB, gwC] = cluster.gateways;
  const sdk = cluster.sdk();

  // user 7 alone on a channel, through A and B: one user, two subscriptions
  const SOLO = 'presence-dup-solo';
  const a1 = await h.rawConnected(gwA);
  const b1 = await h.rawConnected(gwB);
  await rawJoin(a1, SOLO, 7);
  const soloB = await rawJoin(b1, SOLO, 7);
  assert.deepEqual(soloB, { ids: ['7'], hash: { 7: { name: 'user 7' } }, count: 1 }, 'the second socket of user 7 (on B) sees one member');
  await converges(() => ingestProblems(sdk, { [SOLO]: { users: ['7'], subscription_count: 2 } }), 5000, 'user_count 1 for user 7 on A and B');
  assert.deepEqual(await h.sdkGetJson(sdk, `/channels/${SOLO}/users`), { users: [{ id: '7' }] });
  // a third client, on C, sees user 7 once (pusher-js)
  const third = await h.connectedPusher(gwC, h.customAuthOptions(cluster.ingest, 8, { name: 'user 8' }));
  const thirdCh = await h.subscribed(third, SOLO);
  assert.equal(thirdCh.members.count, 2, `members seen on C: ${JSON.stringify(thirdCh.members.members)}`);
  assert.deepEqual(thirdCh.members.get('7').info, { name: 'user 7' });
  await converges(() => ingestProblems(sdk, { [SOLO]: { users: ['7', '8'], subscription_count: 3 } }), 5000, 'user_count 2 with user 8 on C');

  // observers on every gateway, then user 7 with two sockets on A and one on B
  const CH = 'presence-dup';
  const observers = [];
  for (const [gw, id] of [[gwA, 'obs-a'], [gwB, 'obs-b'], [gwC, 'obs-c']]) {
    const obs = await h.rawConnected(gw);
    await rawJoin(obs, CH, id);
    observers.push(obs);
  }
  const obsIds = ['obs-a', 'obs-b', 'obs-c'];
  await converges(async () => observers.filter((o) => presenceView(o, CH).members.join() !== obsIds.join()).map((o) => `observer ${o.id}: ${presenceView(o, CH).members}`), 5000, 'observers to see each other');

  await rawJoin(a1, CH, 7);
  await converges(async () => observers.filter((o) => eventsFor(o, CH, 7).length < 1).map((o) => `observer ${o.id} has no member_added`), 5000, 'member_added for user 7 everywhere');
  const a2 = await h.rawConnected(gwA);
  await rawJoin(a2, CH, 7);
  const snapB = await rawJoin(b1, CH, 7);
  assert.deepEqual([...snapB.ids].sort(), [...obsIds, '7'].sort(), `snapshot of user 7's socket on B: ${JSON.stringify(snapB)}`);
  assert.equal(snapB.count, 4);
  await converges(() => ingestProblems(sdk, { [CH]: { users: [...obsIds, '7'], subscription_count: 6 } }), 5000, 'user_count 4 with user 7 on three sockets');
  const late = await h.rawConnected(gwC);
  const lateSnap = await rawJoin(late, CH, 'obs-c'); // a second socket of an existing member: no transition
  assert.deepEqual([...lateSnap.ids].sort(), [...obsIds, '7'].sort(), `a new client on C: ${JSON.stringify(lateSnap)}`);
  await rawLeave(late, CH);
  await h.sleep(500); // bounded absence window: no second member_added anywhere
  for (const o of observers) assert.deepEqual(eventsFor(o, CH, 7), ['added'], `events for user 7 on observer ${o.id}`);

  // leaving one: the socket on B closes, one socket on A unsubscribes; user 7 stays (through the other socket on A)
  b1.close();
  await b1.waitClose(5000, 'close of user 7 on B');
  await rawLeave(a1, CH);
  await converges(() => ingestProblems(sdk, { [CH]: { users: [...obsIds, '7'], subscription_count: 4 }, [SOLO]: { users: ['7', '8'], subscription_count: 2 } }), 5000, 'subscription_count 4, user 7 still a member');
  await h.sleep(1000); // bounded absence window
  for (const o of observers) {
    assert.deepEqual(eventsFor(o, CH, 7), ['added'], `events for user 7 on observer ${o.id} after leaving two of three sockets`);
    assert.deepEqual(presenceView(o, CH).members, [...obsIds, '7'].sort());
  }
  assert.equal(thirdCh.members.count, 2, 'user 7 still on the solo channel through A');

  // leaving the last: exactly one member_removed on every gateway
  await rawLeave(a2, CH);
  await converges(async () => observers.filter((o) => eventsFor(o, CH, 7).length < 2).map((o) => `observer ${o.id}: ${eventsFor(o, CH, 7)}`), 5000, 'member_removed for user 7 everywhere');
  await converges(() => ingestProblems(sdk, { [CH]: { users: obsIds, subscription_count: 3 } }), 5000, 'user 7 gone at the ingest');
  await h.sleep(500); // bounded absence window: no second member_removed
  for (const o of observers) {
    assert.deepEqual(eventsFor(o, CH, 7), ['added', 'removed'], `events for user 7 on observer ${o.id}`);
    assert.deepEqual(presenceView(o, CH).members, obsIds);
  }

  // and the solo channel: the last socket of user 7 (a1 on A) disconnects -> member_removed once on C
  const soloRemoved = h.collect(thirdCh, 'pusher:member_removed');
  a1.terminate();
  await h.waitFor(() => soloRemoved.length >= 1, 5000, 'member_removed for user 7 on the solo channel');
  await converges(() => ingestProblems(sdk, { [SOLO]: { users: ['8'], subscription_count: 1 } }), 5000, 'solo channel: only user 8');
  await h.sleep(300);
  assert.deepEqual(soloRemoved.map((e) => e.data.id), ['7']);
});

// ---------------------------------------------------------------------------------------------------------
// (b) randomized model test
//
// One test per seed, each on a fresh cluster. PRESENCE_STRESS_SEEDS=1,2,3 replays those seeds (PRESENCE_STRESS_SEED=n
// still works); by default PRESENCE_STRESS_RUNS (3) fresh random seeds. PRESENCE_STRESS_OPS operations per seed
// (default 300). The longer run (20 seeds x 500 operations) is in docs/presence.md, "Testing".

const STRESS = {
  ops: Number(process.env.PRESENCE_STRESS_OPS) || 300,
  clients: 30,
  users: 8, // user ids u0..u7: every user has several connections, across gateways
  gateways: 3,
  channels: [0, 1, 2, 3].map((i) => `presence-stress-${i}`),
  concurrency: 8, // client operations in flight at once (the ops of one client run in order)
  // after the last operation: a kill at the end needs node_ttl (marker) or up to about 5 s (sweep), and after an
  // outage the survivors judge deaths only from a new observation window (docs/presence.md §5.3, §6)
  convergeMs: 20000,
};
// Per generated operation: the chance of each cluster operation (when it is possible) and of a pause before it.
const STRESS_P = { kill: 0.012, restart: 0.08, natsDown: 0.006, natsUp: 0.1, gap: 0.04 };
const CLUSTER_OPS = new Set(['kill', 'restart', 'nats-down', 'nats-up']);
const STAY = 'stay'; // a user with one socket on every gateway that is up, on every channel: never leaves
const obsId = (g) => `obs-${g}`; // the observers of gateway g
const stressUser = (client) => `u${client % STRESS.users}`;
const STRESS_USERS = new Set(Array.from({ length: STRESS.users }, (_, u) => `u${u}`));

/**
 * The operations of one seed, generated against a model of the cluster: a pure function of the seed.
 * - client operations, run concurrently: join / unsubscribe / disconnect (close or terminate) / reconnect (to a
 *   gateway that is up);
 * - cluster operations, each a barrier (every operation before it has finished):
 *   kill: SIGKILL of a gateway, at most one down at a time; its clients, observers and stay socket are gone;
 *   restart: that gateway again (same node id and ports) `afterMs` after the kill: mostly inside node_ttl, sometimes
 *     after it; its observers and stay socket are opened again;
 *   nats-down / nats-up: nats-server killed, and restarted on its JetStream store `afterMs` later; client operations
 *     go on meanwhile (a gateway restart waits until NATS is back).
 * Any operation may carry gapMs, a pause before it is dispatched, so that operations are spread out in time and some
 * land while the consequences of a kill or an outage are under way.
 * Returns {ops, expected: {channel: {users, subscription_count}}} (the state after the last operation).
 */
function stressPlan(seed, { ops: count, clients, gateways, channels } = STRESS) {
  const rng = prng(seed);
  const model = Array.from({ length: clients }, (_, i) => ({ g: Math.floor(i / STRESS.users) % gateways, connected: true, channels: new Set() }));
  const gwUp = Array(gateways).fill(true);
  let natsUp = true;

  function clusterOp(rc) {
    const down = gwUp.indexOf(false);
    if (down >= 0 && natsUp && rc < STRESS_P.restart) {
      gwUp[down] = true;
      const afterMs = rng.next() < 0.7 ? 100 + rng.int(NODE_TTL_MS - 600) : NODE_TTL_MS + 300 + rng.int(2500);
      return { kind: 'restart', g: down, afterMs };
    }
    if (!natsUp && rc < STRESS_P.natsUp) {
      natsUp = true;
      return { kind: 'nats-up', afterMs: 200 + rng.int(2300) };
    }
    if (down < 0 && rc >= 1 - STRESS_P.kill) {
      const g = rng.int(gateways);
      gwUp[g] = false;
      for (const c of model.filter((x) => x.connected && x.g === g)) {
        c.connected = false;
        c.channels.clear();
      }
      return { kind: 'kill', g };
    }
    if (natsUp && rc >= 1 - STRESS_P.kill - STRESS_P.natsDown && rc < 1 - STRESS_P.kill) {
      natsUp = false;
      return { kind: 'nats-down' };
    }
    return null;
  }

  function clientOp(r) {
    const ids = model.map((_, i) => i);
    const connected = ids.filter((i) => model[i].connected);
    const disconnected = ids.filter((i) => !model[i].connected);
    const joinable = connected.flatMap((i) => channels.filter((c) => !model[i].channels.has(c)).map((c) => [i, c]));
    const leavable = connected.flatMap((i) => [...model[i].channels].map((c) => [i, c]));
    if (r < 0.12 && disconnected.length) {
      const i = rng.pick(disconnected);
      const g = rng.pick(gwUp.flatMap((up, x) => (up ? [x] : [])));
      Object.assign(model[i], { connected: true, g });
      return { kind: 'reconnect', client: i, g };
    }
    if (r < 0.24 && connected.length) {
      const i = rng.pick(connected);
      model[i].connected = false;
      model[i].channels.clear();
      return { kind: 'disconnect', client: i, how: rng.next() < 0.5 ? 'close' : 'terminate' };
    }
    if (r < 0.5 && leavable.length) {
      const [i, channel] = rng.pick(leavable);
      model[i].channels.delete(channel);
      return { kind: 'unsubscribe', client: i, channel };
    }
    if (joinable.length) {
      const [i, channel] = rng.pick(joinable);
      model[i].channels.add(channel);
      return { kind: 'join', client: i, channel };
    }
    return null;
  }

  const ops = [];
  for (let n = 0; n < count; n++) {
    const gapMs = rng.next() < STRESS_P.gap ? 100 + rng.int(700) : 0;
    const rc = rng.next();
    const r = rng.next();
    const op = clusterOp(rc) || clientOp(r);
    if (!op) continue;
    if (gapMs) op.gapMs = gapMs;
    ops.push(op);
  }
  if (!natsUp) ops.push({ kind: 'nats-up', afterMs: 0 }); // the checks need NATS

  const expected = {};
  const upGws = gwUp.flatMap((up, g) => (up ? [g] : []));
  for (const channel of channels) {
    const subs = model.filter((c) => c.connected && c.channels.has(channel));
    expected[channel] = {
      users: sorted([STAY, ...upGws.map(obsId), ...subs.map((c) => stressUser(model.indexOf(c)))]),
      subscription_count: 2 * upGws.length + subs.length, // per gateway up: its observer and its stay socket
    };
  }
  return { ops, expected, upGws };
}

/** Upper bound of one seed's run (operations and convergence): what the plan waits for, plus slack. */
function stressBudgetMs(ops) {
  const waits = ops.reduce((sum, op) => sum + (op.gapMs || 0) + (op.afterMs || 0), 0);
  return 30000 + waits + 5000 * ops.filter((op) => CLUSTER_OPS.has(op.kind)).length;
}

/** Members of a raw socket's presence channel just before message index `end`: its snapshot plus the events after it. */
function membersBefore(client, channel, end) {
  const view = presenceView({ messages: client.messages.slice(0, end) }, channel);
  return new Set(view ? view.members : []);
}

/** member_added / member_removed a raw socket got on `channel` from message index `from` on: Map user id -> types. */
function transitionsFrom(client, channel, from) {
  const byUser = new Map();
  for (const m of client.messages.slice(from)) {
    if (m.channel !== channel || (m.event !== ADDED && m.event !== REMOVED)) continue;
    const id = String(m.data.user_id);
    if (!byUser.has(id)) byUser.set(id, []);
    byUser.get(id).push(m.event === ADDED ? 'added' : 'removed');
  }
  return byUser;
}

async function presenceStress(seed, { ops, expected, upGws }) {
  const { channels } = STRESS;
  const tag = `[stress seed ${seed}]`;
  const counts = ops.reduce((acc, o) => ((acc[o.kind] = (acc[o.kind] || 0) + 1), acc), {});
  console.log(`${tag} replay: PRESENCE_STRESS_SEEDS=${seed} PRESENCE_STRESS_OPS=${STRESS.ops}; operations: ${JSON.stringify(counts)}`);

  const cluster = await ch.startCluster({ gateways: STRESS.gateways });
  const gws = cluster.gateways;
  const sdk = cluster.sdk();

  // Watchers, per gateway: one stay socket on every channel, and one observer socket (user obs-<g>) per channel.
  // An observer is checked from `mark` (a message index) on; `since`: the operation that opened it (-1: the setup),
  // `until`: the one that killed it.
  const observers = [];
  async function openWatchers(g, since) {
    const stay = await h.rawConnected(gws[g]);
    for (const channel of channels) await rawJoin(stay, channel, STAY, { info: { name: 'stay' } });
    for (const channel of channels) {
      const client = await h.rawConnected(gws[g]);
      await rawJoin(client, channel, obsId(g), { info: { name: 'observer' } });
      const mark = client.messages.findIndex((m) => m.event === SUCCEEDED && m.channel === channel) + 1;
      observers.push({ g, channel, client, since, mark, live: true });
    }
  }
  for (let g = 0; g < gws.length; g++) await openWatchers(g, -1);
  const setupUsers = sorted([STAY, ...gws.map((_, g) => obsId(g))]);
  await converges(
    async () => observers.filter((o) => presenceView(o.client, o.channel).members.join() !== setupUsers.join()).map((o) => `observer ${obsId(o.g)} ${o.channel}`),
    5000,
    'observers to see each other',
  );
  for (const o of observers) o.mark = o.client.messages.length; // the setup's own joins are done

  // the cluster operations
  const downAt = {}; // gateway index or 'nats' -> when it went down
  const untilPlanned = (at, afterMs) => h.sleep(Math.max(0, at + afterMs - Date.now())); // a planned downtime, not a synchronisation
  const timeline = [];
  async function execCluster(op, n) {
    switch (op.kind) {
      case 'kill':
        await gws[op.g].kill9();
        downAt[op.g] = Date.now();
        for (const o of observers.filter((x) => x.live && x.g === op.g)) Object.assign(o, { live: false, until: n });
        return `kill gateway ${op.g}`;
      case 'restart': {
        await untilPlanned(downAt[op.g], op.afterMs);
        const startedMs = Date.now() - downAt[op.g];
        await gws[op.g].restart();
        const readyMs = Date.now() - downAt[op.g];
        await openWatchers(op.g, n);
        return `restart gateway ${op.g}: started ${startedMs} ms after the kill, ready after ${readyMs} ms`;
      }
      case 'nats-down':
        await cluster.nats.kill9();
        downAt.nats = Date.now();
        return 'NATS down';
      case 'nats-up': {
        await untilPlanned(downAt.nats, op.afterMs);
        const startedMs = Date.now() - downAt.nats;
        await cluster.nats.restart({ full: true });
        await Promise.all(cluster.nodes.filter((x) => x.running).map((x) => x.waitReadyz(200, 15000)));
        return `NATS restarted ${startedMs} ms after it went down, every node ready after ${Date.now() - downAt.nats} ms`;
      }
      default:
        throw new Error(`unknown op ${op.kind}`);
    }
  }

  // the client operations
  const sockets = await Promise.all(Array.from({ length: STRESS.clients }, (_, i) => h.rawConnected(gws[Math.floor(i / STRESS.users) % gws.length])));
  async function execClient(op) {
    const c = sockets[op.client];
    switch (op.kind) {
      case 'join':
        return rawJoin(c, op.channel, stressUser(op.client));
      case 'unsubscribe':
        return rawLeave(c, op.channel);
      case 'disconnect':
        if (op.how === 'close') c.close();
        else c.terminate();
        return c.waitClose(5000, `close of client ${op.client}`);
      case 'reconnect':
        sockets[op.client] = await h.rawConnected(gws[op.g]);
        return undefined;
      default:
        throw new Error(`unknown op ${op.kind}`);
    }
  }

  // run: the ops of one client in order, at most `concurrency` in flight; a cluster operation waits for all of them
  const start = Date.now();
  let failed = null;
  const fail = (n, op, e) => {
    failed = failed || new Error(`operation #${n} ${JSON.stringify(op)} failed (seed ${seed}): ${e.message}`);
  };
  let active = 0;
  const slots = [];
  const chains = new Map();
  const inFlight = [];
  for (const [n, op] of ops.entries()) {
    if (failed) break;
    if (op.gapMs) await h.sleep(op.gapMs); // a planned pause, not a synchronisation
    if (CLUSTER_OPS.has(op.kind)) {
      await Promise.all(inFlight);
      if (failed) break;
      const t0 = Date.now();
      try {
        timeline.push(`#${n} at ${t0 - start} ms: ${await execCluster(op, n)}`);
      } catch (e) {
        fail(n, op, e);
      }
      continue;
    }
    while (active >= STRESS.concurrency) await new Promise((r) => slots.push(r));
    active += 1;
    const p = (chains.get(op.client) || Promise.resolve())
      .then(() => (failed ? undefined : execClient(op).catch((e) => fail(n, op, e))))
      .finally(() => {
        active -= 1;
        const next = slots.shift();
        if (next) next();
      });
    chains.set(op.client, p);
    inFlight.push(p);
  }
  await Promise.all(inFlight);
  if (timeline.length) console.log(`${tag} cluster operations:\n  ${timeline.join('\n  ')}`);
  if (failed) throw failed;
  const opsMs = Date.now() - start;

  // everything converges to the model: every live observer's member set and the ingest's /users and counts
  const live = () => observers.filter((o) => o.live);
  const observerProblems = () =>
    live()
      .filter((o) => presenceView(o.client, o.channel).members.join() !== expected[o.channel].users.join())
      .map((o) => `observer on gateway ${o.g} ${o.channel}: ${presenceView(o.client, o.channel).members.join(',')} != ${expected[o.channel].users.join(',')}`);
  const state = async () => [...observerProblems(), ...(await ingestProblems(sdk, expected))];
  const convergeMs = await converges(state, STRESS.convergeMs, `stress (seed ${seed})`);
  const totalMs = Date.now() - start;
  console.log(`${tag} ${ops.length} operations in ${opsMs} ms, converged ${convergeMs} ms later; members at the end: ${JSON.stringify(Object.fromEntries(channels.map((c) => [c, expected[c].users.length])))}`);
  const budgetMs = stressBudgetMs(ops);
  assert.ok(totalMs < budgetMs, `stress ran ${totalMs} ms (ops ${opsMs} ms + convergence ${convergeMs} ms), bound ${budgetMs} ms`);

  // a newly joining client on each gateway that is up (a second socket of that gateway's observer user: no
  // transition) gets exactly the model in its subscription_succeeded
  for (const channel of channels) {
    for (const g of upGws) {
      const probe = await h.rawConnected(gws[g]);
      const snap = await rawJoin(probe, channel, obsId(g), { info: { name: 'observer' } });
      assert.deepEqual([...snap.ids].map(String).sort(), expected[channel].users, `member list for a new client on gateway ${g}, ${channel} (seed ${seed})`);
      assert.equal(snap.count, expected[channel].users.length);
      probe.terminate();
    }
  }

  // What every observer saw from its mark on, per user: never a second member_added without a member_removed in
  // between (nor the reverse), from its view at the mark, ending (if it is still alive) in the model. Stress users may
  // come and go; obs-<x> goes exactly at each kill of gateway x and comes back at each restart (an observer killed
  // itself may have missed the last ones); the stay user never moves, and nobody else ever appears.
  const obsTransitions = (x, o) =>
    ops
      .slice(o.since + 1, o.live ? ops.length : o.until)
      .filter((op) => (op.kind === 'kill' || op.kind === 'restart') && op.g === x)
      .map((op) => (op.kind === 'kill' ? 'removed' : 'added'));
  const bad = [];
  for (const o of observers) {
    const where = `observer ${obsId(o.g)} (opened ${o.since < 0 ? 'at the setup' : `by #${o.since}`}${o.live ? '' : `, killed by #${o.until}`}) ${o.channel}`;
    const base = membersBefore(o.client, o.channel, o.mark);
    const missing = [STAY, ...gws.map((_, g) => obsId(g))].filter((id) => !base.has(id));
    if (missing.length) bad.push(`${where}: ${missing.join(', ')} not in its view at the start (${[...base].join(',')})`);
    for (const [id, seq] of transitionsFrom(o.client, o.channel, o.mark)) {
      let present = base.has(id);
      let alternates = true;
      for (const t of seq) {
        if ((t === 'added') === present) alternates = false;
        present = !present;
      }
      const endsRight = !o.live || present === expected[o.channel].users.includes(id);
      const want = STRESS_USERS.has(id) ? null : /^obs-\d+$/.test(id) ? obsTransitions(Number(id.slice(4)), o) : [];
      const allowed = want === null || (o.live ? seq.join() === want.join() : seq.join() === want.slice(0, seq.length).join());
      if (!alternates || !endsRight || !allowed) {
        bad.push(`${where}, ${id}: ${seq.join(' ')} (member at the start: ${base.has(id)}${o.live ? `, at the end: ${expected[o.channel].users.includes(id)}` : ''}${want ? `; expected ${want.join(' ') || 'nothing'}` : ''})`);
      }
    }
  }
  assert.deepEqual(bad, [], `member_added / member_removed sequences (seed ${seed})`);
  // and nothing moved after convergence: the probes' own subscribe and close are counts, which the gateways
  // publish coalesced (at most every 100 ms per channel, docs/presence.md), so the ingest may need that long
  await converges(state, STRESS.convergeMs, `state after the checks (seed ${seed})`);
  assert.deepEqual(await state(), [], `state after the checks (seed ${seed})`);
}

function stressSeeds() {
  const list = process.env.PRESENCE_STRESS_SEEDS || process.env.PRESENCE_STRESS_SEED;
  if (list) return list.split(',').filter((s) => s.trim()).map((s) => Number(s) >>> 0);
  return Array.from({ length: Number(process.env.PRESENCE_STRESS_RUNS) || 3 }, () => crypto.randomInt(2 ** 32));
}
const STRESS_SEEDS = stressSeeds();
console.log(`[stress] seeds ${STRESS_SEEDS.join(',')}, ${STRESS.ops} operations each; replay with PRESENCE_STRESS_SEEDS=${STRESS_SEEDS.join(',')}`);
for (const seed of STRESS_SEEDS) {
  const plan = stressPlan(seed);
  test(
    `randomized model (seed ${seed}): joins / leaves / disconnects / reconnects, gateway kills and restarts, NATS blips over 3 gateways converge to the exact model`,
    { timeout: stressBudgetMs(plan.ops) + STRESS.convergeMs + 60000 },
    () => presenceStress(seed, plan),
  );
}

// ---------------------------------------------------------------------------------------------------------
// (c) NATS restart

async function natsRestartConverges(freshStore) {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  const gws = { a: gwA, b: gwB };
  const sdk = cluster.sdk();
  const nats = cluster.nats;
  const [C1, C2] = ['presence-nats-1', 'presence-nats-2'];

  // observers (one per channel per gateway) and members on both gateways; user 5 on both
  const observers = [];
  for (const channel of [C1, C2]) {
    for (const g of ['a', 'b']) {
      const client = await h.rawConnected(gws[g]);
      await rawJoin(client, channel, `obs-${g}`);
      observers.push({ g, channel, client });
    }
  }
  const members = [
    ['a', '1', [C1, C2]],
    ['a', '2', [C1]],
    ['b', '3', [C1, C2]],
    ['b', '4', [C2]],
    ['a', '5', [C1]],
    ['b', '5', [C1]],
  ];
  const sockets = {};
  for (const [g, id, chans] of members) {
    const c = await h.rawConnected(gws[g]);
    for (const channel of chans) await rawJoin(c, channel, id);
    sockets[`${g}${id}`] = c;
  }
  const expected = {
    [C1]: { users: ['1', '2', '3', '5', 'obs-a', 'obs-b'], subscription_count: 7 },
    [C2]: { users: ['1', '3', '4', 'obs-a', 'obs-b'], subscription_count: 5 },
  };
  const observerProblems = (exp) =>
    observers.filter((o) => presenceView(o.client, o.channel).members.join() !== sorted(exp[o.channel].users).join()).map((o) => `observer on ${o.g} ${o.channel}: ${presenceView(o.client, o.channel).members}`);
  await converges(async () => [...observerProblems(expected), ...(await ingestProblems(sdk, expected))], 5000, 'before the outage');
  const mark = observers.map((o) => o.client.messages.length);
  const eventsSinceMark = () =>
    observers.flatMap((o, i) =>
      o.client.messages
        .slice(mark[i])
        .filter((m) => m.channel === o.channel && (m.event === ADDED || m.event === REMOVED))
        .map((m) => `${o.g} ${o.channel} ${m.event === ADDED ? 'added' : 'removed'} ${m.data.user_id}`),
    );

  // --- outage
  await nats.kill9();
  await cluster.waitAllReadyz(503, 10000);
  if (freshStore) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hx-e2e-nats-fresh-'));
    h.track(() => fs.rmSync(dir, { recursive: true, force: true }));
    nats.storeDir = dir; // same port, empty JetStream store
  }
  await nats.restart({ full: true });
  await cluster.waitAllReadyz(200, 15000);
  const backAt = Date.now();

  // the ingest converges to the same member lists
  const ingestMs = await converges(() => ingestProblems(sdk, expected), 10000, `ingest after the NATS restart (${freshStore ? 'fresh store' : 'with data'})`);
  console.log(`[nats-restart ${freshStore ? 'fresh store' : 'with data'}] ingest converged ${ingestMs} ms after every node was ready again`);

  // a newly joining client on each gateway gets the full member list, and is announced once everywhere
  const label = `[nats-restart ${freshStore ? 'fresh store' : 'with data'}]`;
  const newA = await h.rawConnected(gwA);
  let t0 = Date.now();
  const snapA = await rawJoin(newA, C1, 'new-a');
  console.log(`${label} new-a joined on A ${t0 - backAt} ms after the restart, in ${Date.now() - t0} ms`);
  assert.deepEqual([...snapA.ids].sort(), sorted([...expected[C1].users, 'new-a']), `member list for a new client on A: ${JSON.stringify(snapA)}`);
  expected[C1] = { users: [...expected[C1].users, 'new-a'], subscription_count: expected[C1].subscription_count + 1 };
  await converges(async () => observerProblems(expected), 5000, 'observers to see new-a');
  const newB = await h.rawConnected(gwB);
  t0 = Date.now();
  const snapB = await rawJoin(newB, C1, 'new-b');
  console.log(`${label} new-b joined on B in ${Date.now() - t0} ms`);
  assert.deepEqual([...snapB.ids].sort(), sorted([...expected[C1].users, 'new-b']), `member list for a new client on B: ${JSON.stringify(snapB)}`);
  const snapB2 = await rawJoin(newB, C2, 'new-b');
  assert.deepEqual([...snapB2.ids].sort(), sorted([...expected[C2].users, 'new-b']), `member list for a new client on B (${C2}): ${JSON.stringify(snapB2)}`);
  const joinedAt = Date.now();
  expected[C1] = { users: [...expected[C1].users, 'new-b'], subscription_count: expected[C1].subscription_count + 1 };
  expected[C2] = { users: [...expected[C2].users, 'new-b'], subscription_count: expected[C2].subscription_count + 1 };
  await converges(async () => [...observerProblems(expected), ...(await ingestProblems(sdk, expected))], 5000, 'new-a and new-b everywhere');

  // a node started now reads the store itself (not a view kept from before the restart): same lists
  const ingest2 = await ch.startIngest({ nats, nodeId: 'ingest-2' });
  const sdk2 = ingest2.sdk();
  await converges(() => ingestProblems(sdk2, expected), 10000, `a new ingest started after the NATS restart (${freshStore ? 'fresh store' : 'with data'})`);

  // nobody who stayed is reported gone: watch until node_ttl + 2 s after every node was ready again and the new
  // clients had joined (whichever is later)
  await h.sleep(Math.max(0, Math.max(backAt, joinedAt) + NODE_TTL_MS + 2000 - Date.now()));
  assert.deepEqual(
    eventsSinceMark().sort(),
    ['a presence-nats-1 added new-a', 'a presence-nats-1 added new-b', 'a presence-nats-2 added new-b', 'b presence-nats-1 added new-a', 'b presence-nats-1 added new-b', 'b presence-nats-2 added new-b'],
    'member events seen by the observers after the outage (only the two new members)',
  );
  assert.deepEqual([...observerProblems(expected), ...(await ingestProblems(sdk, expected)), ...(await ingestProblems(sdk2, expected))], []);

  // leaving still crosses nodes: user 2 (only on A) disconnects, user 5 leaves A but stays through B
  sockets.a2.close();
  sockets.a5.close();
  expected[C1] = { users: expected[C1].users.filter((u) => u !== '2'), subscription_count: expected[C1].subscription_count - 2 };
  await converges(async () => [...observerProblems(expected), ...(await ingestProblems(sdk, expected)), ...(await ingestProblems(sdk2, expected))], 5000, 'user 2 leaving after the restart');
  await h.sleep(300);
  assert.deepEqual(
    eventsSinceMark().filter((e) => e.includes('removed')).sort(),
    ['a presence-nats-1 removed 2', 'b presence-nats-1 removed 2'],
    'member_removed after the restart: user 2 once per observer, never user 5',
  );
  await ingest2.stop();
}

test('NATS restarted with its data: members converge at the ingest and for new clients; nobody who stayed is removed', { timeout: 90000 }, () => natsRestartConverges(false));

test('NATS restarted without its data (fresh store, same port): members converge at the ingest and for new clients; nobody who stayed is removed', { timeout: 90000 }, () =>
  natsRestartConverges(true));
