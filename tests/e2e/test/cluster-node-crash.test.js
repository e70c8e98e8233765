'use strict';
// A gateway that crashes (SIGKILL: no clean unsubscribe) must not leave ghosts behind: its presence members
// leave (member_removed on the other gateways), its subscriptions stop counting at the ingest and its signed-in
// users go offline for watchers, once Herald's node liveness TTL (nats.node_ttl, default 3 s) has run out.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

test('a gateway killed with SIGKILL: its members, subscriptions and online users leave the cluster view', async () => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const auth = (id, extra = {}) => ({
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => cb(null, sdk.authorizeChannel(socketId, channelName, { user_id: String(id), user_info: { name: `user ${id}` } })),
    },
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, sdk.authenticateUser(socketId, { id: String(id), ...extra })) },
  });

  // Alice on A: presence member, subscriber of "room", signed in
  const alice = await h.connectedPusher(gwA, auth(1));
  await h.subscribed(alice, 'presence-crash');
  await h.subscribed(alice, 'room');
  alice.signin();
  await h.waitFor(() => alice.user.user_data, 5000, 'Alice signed in on A');
  // Bob on B: presence member, subscriber of "room", watching Alice
  const online = [];
  const offline = [];
  const bob = await h.connectedPusher(gwB, auth(2, { watchlist: ['1'] }));
  bob.user.watchlist.bind('online', (e) => online.push(...e.user_ids));
  bob.user.watchlist.bind('offline', (e) => offline.push(...e.user_ids));
  bob.signin();
  const bobPresence = await h.subscribed(bob, 'presence-crash');
  const bobRoom = await h.subscribed(bob, 'room');
  assert.equal(bobPresence.members.count, 2);
  await h.waitFor(() => online.includes('1'), 5000, 'Bob to be told Alice is online');
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/room', { info: 'subscription_count' })).subscription_count === 2,
    5000,
    'subscription_count 2',
  );
  const removed = h.collect(bobPresence, 'pusher:member_removed');

  // --- gateway A crashes
  const crashedAt = Date.now();
  await gwA.kill9();

  // Bob is told Alice left, and the ingest forgets A's member, subscription and online user
  await h.waitFor(() => removed.length >= 1, 15000, 'member_removed for Alice (on the crashed gateway) on B', 100);
  const tookMs = Date.now() - crashedAt;
  assert.deepEqual(removed.map((e) => e.data.id), ['1']);
  assert.equal(bobPresence.members.count, 1);
  await h.waitFor(() => offline.includes('1'), 5000, 'Bob to be told Alice is offline', 100);
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/presence-crash/users')).users.length === 1,
    5000,
    'the ingest to drop Alice',
    100,
  );
  assert.deepEqual(await h.sdkGetJson(sdk, '/channels/presence-crash/users'), { users: [{ id: '2' }] });
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/room', { info: 'subscription_count' })).subscription_count === 1,
    5000,
    'subscription_count 1 at the ingest',
    100,
  );
  assert.ok(tookMs < 15000, `member_removed after ${tookMs} ms`);

  // the rest of the cluster is unaffected
  const got = h.nextEvent(bobRoom, 'after.crash');
  assert.equal((await sdk.trigger('room', 'after.crash', { ok: true })).status, 200);
  assert.deepEqual(await got, { ok: true });
  assert.equal(await gwB.readyz(), 200);
  assert.equal(await cluster.ingest.readyz(), 200);
});
