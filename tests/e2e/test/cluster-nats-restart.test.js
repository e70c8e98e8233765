'use strict';
// Cluster mode survives a NATS outage: with clients on two gateways, nats-server is killed (SIGKILL) and
// restarted on the same port and store dir. While it is down the nodes report not ready, the ingest refuses
// triggers with 503 (never a silent 200) and the WebSockets stay open; once it is back, the same Herald processes
// deliver again and presence is still cluster-wide.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

/** pusher-js client on `node` whose channel auth is signed as user `userId`. */
function userClient(cluster, node, userId, name = `user ${userId}`) {
  return h.connectedPusher(node, h.customAuthOptions(cluster.ingest, userId, { name }));
}

/** Records every pusher-js connection state change. */
function stateLog(client) {
  const log = [];
  client.connection.bind('state_change', (s) => log.push(`${s.previous}->${s.current}`));
  return log;
}

function assertJsonError(status, text, expected = 503) {
  assert.equal(status, expected, `status (body: ${text})`);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    assert.fail(`JSON {"error": ...} body expected, got: ${text}`);
  }
  assert.ok(body && typeof body.error === 'string' && body.error.length > 0, `JSON {"error": ...} body, got: ${text}`);
}

test('NATS killed and restarted: not ready and 503 while down, sockets stay open, delivery and presence resume', async () => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const nats = cluster.nats;
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();

  // clients on both gateways, subscribed before the outage
  const pA = await h.connectedPusher(gwA);
  const pB = await h.connectedPusher(gwB);
  const socketIds = [pA.connection.socket_id, pB.connection.socket_id];
  const statesA = stateLog(pA);
  const statesB = stateLog(pB);
  const newsA = await h.subscribed(pA, 'news');
  const newsB = await h.subscribed(pB, 'news');
  const rawA = await h.rawConnected(gwA);
  const rawB = await h.rawConnected(gwB);
  await rawA.subscribeOk('news');
  await rawB.subscribeOk('news');
  const alice = await userClient(cluster, gwA, 1, 'Alice');
  const aliceCh = await h.subscribed(alice, 'presence-team');
  // Dave on B watches the channel through the outage: nobody leaves, so he must never see a member_removed
  const dave = await userClient(cluster, gwB, 4, 'Dave');
  const daveCh = await h.subscribed(dave, 'presence-team');
  await h.waitFor(() => aliceCh.members.count === 2, 5000, 'Alice (A) to see Dave (B)');
  const removedSeenByDave = h.collect(daveCh, 'pusher:member_removed');
  const removedSeenByAlice = h.collect(aliceCh, 'pusher:member_removed');

  // sanity: delivery works before the outage
  let gotA = h.nextEvent(newsA, 'headline');
  let gotB = h.nextEvent(newsB, 'headline');
  assert.equal((await sdk.trigger('news', 'headline', { n: 0 })).status, 200);
  assert.deepEqual(await gotA, { n: 0 });
  assert.deepEqual(await gotB, { n: 0 });
  await rawA.next({ event: 'headline' });
  await rawB.next({ event: 'headline' });

  // --- outage
  await nats.kill9();
  await cluster.waitAllReadyz(503, 10000);

  // the ingest refuses triggers with 503 and a JSON error: through the SDK ...
  const refused = await sdk.trigger('news', 'headline', { n: 1 }).then(
    (res) => assert.fail(`trigger during the NATS outage answered ${res.status}`),
    (e) => e,
  );
  assertJsonError(refused.status, refused.body);
  // ... a batch through the SDK ...
  const refusedBatch = await sdk.triggerBatch([{ channel: 'news', name: 'headline', data: '{"n":1}' }]).then(
    (res) => assert.fail(`batch trigger during the NATS outage answered ${res.status}`),
    (e) => e,
  );
  assertJsonError(refusedBatch.status, refusedBatch.body);
  // ... and a hand-signed request
  const raw = await h.apiRequest(cluster.ingest, { method: 'POST', path: '/events', body: { name: 'headline', channel: 'news', data: '{"n":1}' } });
  assertJsonError(raw.status, raw.text);

  // the WebSockets are not closed: raw sockets still answer pings, pusher-js never left "connected"
  for (const c of [rawA, rawB]) {
    await c.barrier();
    assert.ok(c.isOpen, 'raw socket open during the outage');
    assert.equal(c.closeInfo, null);
  }
  assert.equal(pA.connection.state, 'connected');
  assert.equal(pB.connection.state, 'connected');
  // nothing refused was delivered
  await rawA.expectNoMessage({ event: 'headline' }, 300, 'delivery of a refused trigger');
  await rawB.expectNoMessage({ event: 'headline' }, 0, 'delivery of a refused trigger');

  // --- NATS back on the same port and store dir
  await nats.restart({ full: true });
  await cluster.waitAllReadyz(200, 15000);
  const backAt = Date.now();

  gotA = h.nextEvent(newsA, 'headline', 5000, 'headline on A after the restart');
  gotB = h.nextEvent(newsB, 'headline', 5000, 'headline on B after the restart');
  const res = await sdk.trigger('news', 'headline', { n: 2 });
  assert.equal(res.status, 200);
  assert.deepEqual(await gotA, { n: 2 });
  assert.deepEqual(await gotB, { n: 2 });
  assert.deepEqual((await rawA.next({ event: 'headline' })).data, { n: 2 });
  assert.deepEqual((await rawB.next({ event: 'headline' })).data, { n: 2 });

  // the same connections all along: no reconnect, same socket ids
  assert.deepEqual(statesA, [], `pusher-js on A changed state: ${statesA}`);
  assert.deepEqual(statesB, [], `pusher-js on B changed state: ${statesB}`);
  assert.deepEqual([pA.connection.socket_id, pB.connection.socket_id], socketIds);

  // presence after the restart: Bob joins on B and sees Alice (joined on A before the outage) ...
  const aliceAdded = h.nextEvent(aliceCh, 'pusher:member_added', 5000, 'member_added for Bob on A');
  const bob = await userClient(cluster, gwB, 2, 'Bob');
  const bobCh = await h.subscribed(bob, 'presence-team');
  assert.deepEqual(bobCh.members.get('1') && bobCh.members.get('1').info, { name: 'Alice' }, `members seen by Bob: ${JSON.stringify(bobCh.members.members)}`);
  assert.equal(bobCh.members.count, 3, `members seen by Bob: ${JSON.stringify(bobCh.members.members)}`);
  // ... and Alice on A is told about Bob
  assert.deepEqual(await aliceAdded, { id: '2', info: { name: 'Bob' } });
  // a new member on A after the restart reaches Bob on B
  const bobAdded = h.nextEvent(bobCh, 'pusher:member_added', 5000, 'member_added for Carol on B');
  const carol = await userClient(cluster, gwA, 3, 'Carol');
  await h.subscribed(carol, 'presence-team');
  assert.deepEqual(await bobAdded, { id: '3', info: { name: 'Carol' } });
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/presence-team/users')).users.length === 4,
    5000,
    'the ingest to list 4 members',
  );
  assert.deepEqual(await h.sdkGetJson(sdk, '/channels/presence-team/users'), { users: [{ id: '1' }, { id: '2' }, { id: '3' }, { id: '4' }] });

  // Nobody left, so nobody may have been reported gone because of the outage. Herald's node liveness TTL is
  // 3 s by default (4 s with its grace): watch until 5 s after NATS was back (bounded absence window).
  await h.sleep(Math.max(0, backAt + 5000 - Date.now()));
  assert.deepEqual(removedSeenByDave.map((e) => e.data.id), [], 'member_removed seen on B although nobody left');
  assert.deepEqual(removedSeenByAlice.map((e) => e.data.id), [], 'member_removed seen on A although nobody left');
  assert.equal(daveCh.members.count, 4);
  assert.equal(aliceCh.members.count, 4);

  // and leaving still crosses nodes
  const bobRemoved = h.nextEvent(bobCh, 'pusher:member_removed', 5000, 'member_removed for Carol on B');
  carol.disconnect();
  assert.deepEqual(await bobRemoved, { id: '3', info: { name: 'Carol' } });
});

test('NATS down: subscribing, presence and client events on a gateway keep working locally and catch up after the restart', async () => {
  // What a user notices when NATS is briefly unavailable: the app keeps its sockets; after NATS is back,
  // the cluster-wide view (members, counts) is right again without restarting Herald.
  const cluster = await ch.startCluster({ gateways: 2, app: { client_events: true } });
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const alice = await userClient(cluster, gwA, 1, 'Alice');
  const aliceCh = await h.subscribed(alice, 'presence-outage');
  const bob = await userClient(cluster, gwB, 2, 'Bob');
  const bobCh = await h.subscribed(bob, 'presence-outage');
  await h.waitFor(() => aliceCh.members.count === 2, 5000, 'Alice to see Bob');
  const removedSeenByBob = h.collect(bobCh, 'pusher:member_removed');
  const removedSeenByAlice = h.collect(aliceCh, 'pusher:member_removed');

  await cluster.nats.kill9();
  await cluster.waitAllReadyz(503, 10000);
  // a socket on A may still subscribe while NATS is down (it is answered, not left hanging)
  const late = await h.rawConnected(gwA);
  const sub = await late.subscribe('late-channel', { timeoutMs: 10000 });
  assert.equal(sub.event, 'pusher_internal:subscription_succeeded', sub.raw);

  await cluster.nats.restart({ full: true });
  await cluster.waitAllReadyz(200, 15000);
  const backAt = Date.now();

  // the subscription made during the outage receives triggers now
  const res = await sdk.trigger('late-channel', 'hello', { after: 'restart' });
  assert.equal(res.status, 200);
  assert.deepEqual((await late.next({ event: 'hello' }, 5000)).data, { after: 'restart' });
  // and is counted by the ingest
  await h.waitFor(
    async () => (await h.sdkGetJson(sdk, '/channels/late-channel', { info: 'subscription_count' })).subscription_count === 1,
    5000,
    'the ingest to count the subscription made during the outage',
  );
  // presence from before the outage is intact and client events cross nodes again
  assert.equal(bobCh.members.count, 2);
  const whisper = h.nextEventMeta(bobCh, 'client-ping', 5000, 'client event A -> B after the restart');
  assert.ok(aliceCh.trigger('client-ping', { n: 1 }));
  const got = await whisper;
  assert.deepEqual(got.data, { n: 1 });
  assert.equal(got.meta && got.meta.user_id, '1');

  // nobody left: no member_removed because of the outage, within 5 s after NATS was back (bounded absence window)
  await h.sleep(Math.max(0, backAt + 5000 - Date.now()));
  assert.deepEqual(removedSeenByBob.map((e) => e.data.id), [], 'member_removed seen on B although nobody left');
  assert.deepEqual(removedSeenByAlice.map((e) => e.data.id), [], 'member_removed seen on A although nobody left');
  assert.deepEqual(await h.sdkGetJson(sdk, '/channels/presence-outage/users'), { users: [{ id: '1' }, { id: '2' }] });
});
