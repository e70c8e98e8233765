'use strict';
// Pusher webhooks from a Herald cluster (docs/webhooks.md §4): 2 gateways + an ingest (the sender) + a real
// nats-server. Every node sees the cluster-wide transitions and queues them into JetStream with deduplication, so
// each webhook fires exactly once however many gateways a channel or user spans; a reconnect to another gateway
// within the hold-back produces nothing; a crashed gateway's last members and channels are reported gone once;
// a failing receiver is retried; pending webhooks survive a kill -9 of the ingest.
// Every request is validated with the `pusher` SDK's webhook helper (test/webhook-receiver.js).
// Waits are bounded; fixed sleeps only prove that something does NOT arrive.
const h = require('./harness');
const ch = require('./cluster-harness');
const { startReceiver, metric } = require('./webhook-receiver');
const { assert } = h;
const { test } = ch;

const HOLD_BACK_MS = 3000; // webhook_hold_back_ms default
const BATCH_MS = 250; // webhook_batch_ms default
const EARLY_MS = 100; // timer granularity when checking that a held-back event was held back
// [nats] node_ttl default and the grace Herald gives a heartbeat on top of it (see cluster-node-crash.test.js)
const NODE_TTL_MS = 3000;
const NODE_TTL_GRACE_MS = 1000;
// crashes are measured on a settled cluster: the survivors have been up at least node_ttl + grace
const SETTLED_MS = NODE_TTL_MS + NODE_TTL_GRACE_MS + 500;

/** A cluster (2 gateways + ingest) whose app sends webhooks to `rx` (every kind unless `events`). */
function clusterWith(rx, { events, app = {}, config, natsConfig } = {}) {
  return ch.startCluster({ gateways: 2, app: { ...app, webhooks: [events ? { url: rx.url, events } : { url: rx.url }] }, config, natsConfig });
}

/** Join a presence channel as `userId` with a raw client; asserts success. */
async function rawJoin(client, channel, userId) {
  const m = await h.rawJoinPresence(client, h.APP, channel, String(userId));
  assert.equal(m.event, 'pusher_internal:subscription_succeeded', `join ${channel} as ${userId}: ${m.raw}`);
  return m;
}

/** Close a raw client and wait for the gateway's close answer (it has seen the socket go). */
async function rawClose(client) {
  client.close();
  await client.waitClose();
}

/** Poll the ingest's HTTP API until `channel`'s subscription_count is `n`. */
function subscriptionCount(sdk, channel, n, timeoutMs = 5000) {
  return h.waitFor(
    async () => ((await h.sdkGetJson(sdk, `/channels/${channel}`, { info: 'subscription_count' })).subscription_count ?? 0) === n,
    timeoutMs,
    `subscription_count ${n} on ${channel} at the ingest`,
    50,
  );
}

/** Sorted member ids of a presence channel at the ingest. */
async function memberIds(sdk, channel) {
  return (await h.sdkGetJson(sdk, `/channels/${channel}/users`)).users.map((u) => u.id).sort();
}

/** Sum of a metric over the given nodes. */
async function sumMetric(nodes, name, labels) {
  let sum = 0;
  for (const node of nodes) sum += await metric(node, name, labels);
  return sum;
}

const notCount = (e) => e.name !== 'subscription_count'; // subscription_count may repeat a value legitimately

test('across two gateways: one channel_occupied / member_added when the first arrives, nothing when one of two leaves, one channel_vacated / member_removed after the last', { timeout: 60000 }, async () => {
  const rx = await startReceiver();
  const cluster = await clusterWith(rx, { app: { client_events: true } });
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const P = 'presence-span';
  const C = 'room-span';

  // user 1 on gateway A, subscribed to a presence and a public channel
  const a = await h.rawConnected(gwA);
  await rawJoin(a, P, 1);
  await a.subscribeOk(C);
  for (const e of [{ name: 'member_added', channel: P, user_id: '1' }, { name: 'channel_occupied', channel: P }, { name: 'channel_occupied', channel: C }]) {
    const [got] = await rx.waitForEvents(e, 1, 8000);
    assert.deepEqual(got.event, e);
  }
  // the same user on gateway B, on both channels
  const b = await h.rawConnected(gwB);
  await rawJoin(b, P, 1);
  await b.subscribeOk(C);
  await subscriptionCount(sdk, C, 2);
  await subscriptionCount(sdk, P, 2);
  // a client event sent through A (seen on B) is queued once, by A
  a.send({ event: 'client-wave', channel: P, data: { hello: 'B' } });
  await b.next({ event: 'client-wave', channel: P });
  const [ce] = await rx.waitForEvents({ name: 'client_event', channel: P }, 1, 8000);
  {
    const { data, ...rest } = ce.event;
    assert.deepEqual(rest, { name: 'client_event', channel: P, event: 'client-wave', socket_id: a.id, user_id: '1' });
    assert.deepEqual(JSON.parse(data), { hello: 'B' });
  }

  // A's connection leaves: the user and the channels are still there through B
  await rawClose(a);
  const leftAAt = Date.now();
  await subscriptionCount(sdk, C, 1);
  await h.sleep(Math.max(0, leftAAt + HOLD_BACK_MS + BATCH_MS + 1000 - Date.now()));
  rx.expectCount({ name: 'member_removed' }, 0, 'member_removed while the user is still on B');
  rx.expectCount({ name: 'channel_vacated' }, 0, 'channel_vacated while B is still subscribed');
  rx.expectCount({ name: 'member_added', channel: P, user_id: '1' }, 1, 'member_added (the user on two gateways is one member)');
  rx.expectCount({ name: 'channel_occupied', channel: P }, 1);
  rx.expectCount({ name: 'channel_occupied', channel: C }, 1);

  // B's connection leaves: one member_removed, one channel_vacated per channel, after the hold-back
  await rawClose(b);
  const leftBAt = Date.now();
  for (const e of [{ name: 'member_removed', channel: P, user_id: '1' }, { name: 'channel_vacated', channel: P }, { name: 'channel_vacated', channel: C }]) {
    const [got] = await rx.waitForEvents(e, 1, HOLD_BACK_MS + BATCH_MS + 6000);
    assert.deepEqual(got.event, e);
    assert.ok(got.at - leftBAt >= HOLD_BACK_MS - EARLY_MS, `${e.name} ${e.channel} arrived ${got.at - leftBAt} ms after the last unsubscribe: it is held back ${HOLD_BACK_MS} ms`);
  }
  await h.sleep(1500); // watch for duplicates from the other nodes
  for (const e of [
    { name: 'member_added', channel: P, user_id: '1' },
    { name: 'member_removed', channel: P, user_id: '1' },
    { name: 'channel_occupied', channel: P },
    { name: 'channel_occupied', channel: C },
    { name: 'channel_vacated', channel: P },
    { name: 'channel_vacated', channel: C },
    { name: 'client_event', channel: P },
  ]) {
    rx.expectCount(e, 1);
  }
  rx.expectNoDuplicates(notCount);
  // subscription_count of the public channel follows the cluster-wide count (1 on A, 2 with B, ...)
  const counts = rx.events('subscription_count', C).map((e) => e.subscription_count);
  assert.deepEqual(counts.slice(0, 3), [1, 2, 1], `subscription_count webhooks of ${C}: ${JSON.stringify(counts)}`);
  rx.assertAllValid();
});

test('a member who reconnects to the other gateway within the hold-back produces no member_removed and no second member_added', { timeout: 60000 }, async () => {
  const rx = await startReceiver();
  const cluster = await clusterWith(rx);
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const P = 'presence-hop';

  const a = await h.rawConnected(gwA);
  await rawJoin(a, P, 5);
  await rx.waitForEvents({ name: 'member_added', channel: P, user_id: '5' }, 1, 8000);
  await rx.waitForEvents({ name: 'channel_occupied', channel: P }, 1, 8000);

  // leaves A (and is gone cluster-wide: the ingest lists nobody), is back through B within 3 s
  await rawClose(a);
  const leftAt = Date.now();
  await h.waitFor(async () => (await memberIds(sdk, P)).length === 0, 2000, 'user 5 gone at the ingest', 20);
  const b = await h.rawConnected(gwB);
  await rawJoin(b, P, 5);
  const backMs = Date.now() - leftAt;
  assert.ok(backMs < HOLD_BACK_MS - 500, `the user was back after ${backMs} ms, within the hold-back`);
  assert.deepEqual(await memberIds(sdk, P), ['5']);

  await h.sleep(Math.max(0, leftAt + HOLD_BACK_MS + BATCH_MS + 1500 - Date.now()));
  rx.expectCount({ name: 'member_removed' }, 0, 'member_removed for a user who came back within the hold-back');
  rx.expectCount({ name: 'member_added', channel: P, user_id: '5' }, 1, 'member_added for the returning user');
  rx.expectCount({ name: 'channel_vacated' }, 0, 'channel_vacated for a channel occupied again within the hold-back');
  rx.expectCount({ name: 'channel_occupied', channel: P }, 1);
  const suppressed = await sumMetric(cluster.nodes, 'herald_webhook_events_suppressed_total', { app: h.APP.id });
  assert.ok(suppressed >= 1, `herald_webhook_events_suppressed_total summed over the nodes: ${suppressed}`);
  rx.assertAllValid();
});

test('receiver failing, then recovering: the cluster\'s events arrive once each, after retries by the ingest', { timeout: 60000 }, async () => {
  const rx = await startReceiver();
  rx.failNext(3);
  const cluster = await clusterWith(rx);
  const [gwA, gwB] = cluster.gateways;
  const a = await h.rawConnected(gwA);
  await a.subscribeOk('retry-cluster');
  const b = await h.rawConnected(gwB);
  await rawJoin(b, 'presence-retry', 4);
  const expected = [
    { name: 'channel_occupied', channel: 'retry-cluster' },
    { name: 'subscription_count', channel: 'retry-cluster', subscription_count: 1 },
    { name: 'channel_occupied', channel: 'presence-retry' },
    { name: 'member_added', channel: 'presence-retry', user_id: '4' },
  ];
  // 3 failures: backoff 1 s + 2 s + 4 s
  for (const e of expected) await rx.waitForEvents(e, 1, 20000);
  await h.sleep(1500);
  for (const e of expected) rx.expectCount(e, 1);
  assert.equal(rx.accepted.length, expected.length, `nothing else accepted: ${rx.summary()}`);
  assert.deepEqual(rx.requests.slice(0, 3).map((r) => r.status), [500, 500, 500], rx.summary());
  const app = { app: h.APP.id };
  const retries = await metric(cluster.ingest, 'herald_webhook_retries_total', app);
  assert.ok(retries >= 3, `herald_webhook_retries_total on the ingest >= 3, got ${retries}`);
  await h.waitFor(async () => (await metric(cluster.ingest, 'herald_webhook_events_sent_total', app)) === expected.length, 3000, `herald_webhook_events_sent_total == ${expected.length} on the ingest`);
  await h.waitFor(async () => (await metric(cluster.ingest, 'herald_webhook_pending_events', app)) === 0, 3000, 'herald_webhook_pending_events == 0 on the ingest');
  rx.assertAllValid();
});

test('kill -9 of the gateway holding the last member: member_removed and channel_vacated arrive once', { timeout: 60000 }, async () => {
  const rx = await startReceiver();
  const cluster = await clusterWith(rx);
  const startedAt = Date.now();
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();
  const P = 'presence-crash-wh';
  const C = 'room-crash-wh';

  // user 6 only on A (two sockets); the channel is also watched, through B, on another channel only
  const a1 = await h.rawConnected(gwA);
  await rawJoin(a1, P, 6);
  await a1.subscribeOk(C);
  const a2 = await h.rawConnected(gwA);
  await rawJoin(a2, P, 6);
  const other = await h.rawConnected(gwB);
  await other.subscribeOk('room-survivor');
  for (const e of [{ name: 'member_added', channel: P, user_id: '6' }, { name: 'channel_occupied', channel: P }, { name: 'channel_occupied', channel: C }, { name: 'channel_occupied', channel: 'room-survivor' }]) {
    await rx.waitForEvents(e, 1, 8000);
  }
  await subscriptionCount(sdk, P, 2);

  // crash A on a settled cluster
  await h.sleep(Math.max(0, startedAt + SETTLED_MS - Date.now()));
  const killedAt = Date.now();
  await gwA.kill9();
  const bound = NODE_TTL_MS + NODE_TTL_GRACE_MS + HOLD_BACK_MS + BATCH_MS + 4000;
  for (const e of [{ name: 'member_removed', channel: P, user_id: '6' }, { name: 'channel_vacated', channel: P }, { name: 'channel_vacated', channel: C }]) {
    const [got] = await rx.waitForEvents(e, 1, Math.max(1000, killedAt + bound - Date.now()), `${JSON.stringify(e)} within ${bound} ms of the kill -9`);
    assert.deepEqual(got.event, e);
    assert.ok(got.at - killedAt >= HOLD_BACK_MS - EARLY_MS, `${e.name} ${e.channel} arrived ${got.at - killedAt} ms after the crash: it is held back ${HOLD_BACK_MS} ms`);
    console.log(`[timing] kill -9 -> ${e.name} ${e.channel}: ${got.at - killedAt} ms`);
  }
  await h.sleep(2000); // the survivors and the ingest all saw the removal: watch for a second copy
  rx.expectCount({ name: 'member_removed', channel: P, user_id: '6' }, 1);
  rx.expectCount({ name: 'channel_vacated', channel: P }, 1);
  rx.expectCount({ name: 'channel_vacated', channel: C }, 1);
  rx.expectCount({ name: 'member_added', channel: P, user_id: '6' }, 1);
  rx.expectCount({ name: 'channel_vacated', channel: 'room-survivor' }, 0, 'the channel on the surviving gateway is still occupied');
  rx.expectNoDuplicates(notCount);
  rx.assertAllValid();
});

test('kill -9 of the ingest while the receiver fails: after a restart the pending events (and those queued meanwhile) arrive exactly once', { timeout: 60000 }, async () => {
  const rx = await startReceiver();
  rx.failUntilRecovered();
  const natsConfig = { webhook_ack_wait_secs: 3 };
  const cluster = await clusterWith(rx, { natsConfig });
  const [gwA, gwB] = cluster.gateways;
  const ingest = cluster.ingest;

  const a = await h.rawConnected(gwA);
  await a.subscribeOk('durable-1');
  // the ingest holds the event: the receiver has refused it at least once
  await h.waitFor(
    () => rx.requests.some((r) => r.status === 500 && r.events.some((e) => e.name === 'channel_occupied' && e.channel === 'durable-1')),
    8000,
    'a failed delivery of channel_occupied durable-1',
  );
  await ingest.kill9();

  // queued while there is no sender at all
  const b = await h.rawConnected(gwB);
  await b.subscribeOk('durable-2');
  await rawJoin(b, 'presence-durable', 8);
  const attemptsWhileDown = rx.requests.length;

  rx.recover();
  const restartedAt = Date.now();
  const ingest2 = await ch.startIngest({ nats: cluster.nats, nodeId: ingest.nodeId, app: { webhooks: [{ url: rx.url }] }, natsConfig });
  const expected = [
    { name: 'channel_occupied', channel: 'durable-1' },
    { name: 'subscription_count', channel: 'durable-1', subscription_count: 1 },
    { name: 'channel_occupied', channel: 'durable-2' },
    { name: 'subscription_count', channel: 'durable-2', subscription_count: 1 },
    { name: 'channel_occupied', channel: 'presence-durable' },
    { name: 'member_added', channel: 'presence-durable', user_id: '8' },
  ];
  for (const e of expected) await rx.waitForEvents(e, 1, 20000);
  console.log(`[timing] ingest restart -> every pending webhook delivered: ${Math.max(...rx.accepted.map((x) => x.at)) - restartedAt} ms`);
  // longer than the ack wait: nothing is handed out a second time
  await h.sleep(natsConfig.webhook_ack_wait_secs * 1000 + 1000);
  for (const e of expected) rx.expectCount(e, 1);
  assert.equal(rx.accepted.length, expected.length, `nothing else accepted: ${rx.summary()}`);
  rx.expectNoDuplicates();
  assert.ok(rx.requests.slice(attemptsWhileDown).every((r) => r.status === 200), `after the restart every request succeeded: ${rx.summary()}`);
  await h.waitFor(async () => (await metric(ingest2, 'herald_webhook_pending_events', { app: h.APP.id })) === 0, 3000, 'herald_webhook_pending_events == 0 on the new ingest');
  rx.assertAllValid();
});
