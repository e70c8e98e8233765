'use strict';
// Stalls and partitions an operator must see (issue 17): NATS that keeps its TCP connections up but answers
// nothing, and one gateway whose path to NATS is black-holed.
// - readiness turns 503 within 5 s on the nodes cut off, and no trigger made 2 s into the fault is answered 200;
// - after the heal, an old subscriber receives a trigger within 3 s;
// - the other gateways remove a cut-off gateway's presence members within 5 s, once, and after the heal
//   presence is the truth again within 5 s, with at most one removed/added pair per member.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

/** Milliseconds until `node`'s /readyz answers `status` (bounded). */
async function msUntilReadyz(node, status, timeoutMs) {
  const started = Date.now();
  await node.waitReadyz(status, timeoutMs);
  return Date.now() - started;
}

/** Triggers through the SDK; resolves with the HTTP status (a request error counts as 0). */
async function triggerStatus(sdk, channel, event = 'probe') {
  try {
    return (await sdk.trigger(channel, event, { at: Date.now() })).status;
  } catch (e) {
    return e.status || 0;
  }
}

test('NATS stalled (SIGSTOP): nodes turn unready within 5 s, triggers are refused, delivery resumes within 3 s', { timeout: 90000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 1 });
  const [gw] = cluster.gateways;
  const sdk = cluster.sdk();
  const subscriber = await h.rawConnected(gw);
  await subscriber.subscribeOk('orders');
  const nats = cluster.natsServers[0];
  process.kill(nats.pid, 'SIGSTOP');
  const stalledAt = Date.now();
  let resumed = false;
  h.track(() => resumed || process.kill(nats.pid, 'SIGCONT'));
  try {
    const [gwMs, ingestMs] = await Promise.all([msUntilReadyz(gw, 503, 10000), msUntilReadyz(cluster.ingest, 503, 10000)]);
    console.log(`[timing] NATS SIGSTOP -> /readyz 503: gateway ${gwMs} ms, ingest ${ingestMs} ms`);
    assert.ok(gwMs <= 5000 && ingestMs <= 5000, `unready after ${gwMs} ms (gateway) and ${ingestMs} ms (ingest)`);
    const late = Math.max(0, 2000 - (Date.now() - stalledAt));
    await new Promise((r) => setTimeout(r, late)); // triggers from 2 s into the fault on
    const statuses = [];
    while (Date.now() - stalledAt < 20000) statuses.push(await triggerStatus(sdk, 'orders'));
    assert.ok(statuses.length > 0 && statuses.every((s) => s !== 200), `statuses during the stall: ${statuses}`);
  } finally {
    process.kill(nats.pid, 'SIGCONT');
    resumed = true;
  }
  const healedAt = Date.now();
  // Trigger every 100 ms, as a backend would keep doing, until the old subscriber hears one: a trigger the
  // ingest accepts before the gateway's subscriptions are live again is lost (NATS core is at most once).
  const got = subscriber.next((m) => m.event === 'after-stall', 10000, 'a trigger after the stall');
  let heard = false;
  got.then(() => (heard = true), () => {});
  while (!heard && Date.now() - healedAt < 10000) {
    await triggerStatus(sdk, 'orders', 'after-stall');
    await h.sleep(100);
  }
  await got;
  console.log(`[timing] NATS SIGCONT -> first delivery to an old subscriber: ${Date.now() - healedAt} ms`);
  assert.ok(Date.now() - healedAt <= 3000, `first delivery ${Date.now() - healedAt} ms after NATS resumed`);
  await cluster.waitAllReadyz(200, 10000);
});

test('a gateway black-holed from NATS: unready, its members removed elsewhere once within 5 s, restored once after the heal', { timeout: 90000 }, async () => {
  const nats = await ch.startNats();
  h.track(() => nats.stop(5000));
  const proxy = await ch.startProxy(nats.port);
  const cluster = await ch.startCluster({ gateways: 2, nats, gatewayNats: [[proxy.url], undefined] });
  const [cut, healthy] = cluster.gateways;
  const channel = 'presence-partition';
  const join = async (node, user) => {
    const c = await h.rawConnected(node);
    await h.rawJoinPresence(c, h.APP, channel, user);
    return c;
  };
  await join(cut, 'on-cut');
  const observer = await join(healthy, 'observer');
  const sdk = cluster.sdk();
  const users = async () => (await h.sdkGetJson(sdk, `/channels/${channel}/users`)).users.map((u) => u.id).sort();
  await h.waitFor(async () => (await users()).length === 2, 5000, 'both members at the ingest');

  proxy.blackhole(true);
  const cutAt = Date.now();
  const removed = observer.next((m) => m.event === 'pusher_internal:member_removed' && m.data.user_id === 'on-cut', 10000, 'member_removed for on-cut');
  const unreadyMs = await msUntilReadyz(cut, 503, 10000);
  assert.ok(unreadyMs <= 5000, `the cut-off gateway turned unready after ${unreadyMs} ms`);
  await removed;
  console.log(`[timing] black-hole -> gateway /readyz 503: ${unreadyMs} ms; -> member_removed on the other gateway: ${Date.now() - cutAt} ms`);
  assert.ok(Date.now() - cutAt <= 5000, `member removed ${Date.now() - cutAt} ms after the cut`);
  await h.waitFor(async () => JSON.stringify(await users()) === '["observer"]', 5000, 'the ingest drops the cut-off member');

  proxy.blackhole(false);
  const healedAt = Date.now();
  await observer.next((m) => m.event === 'pusher_internal:member_added' && m.data.user_id === 'on-cut', 15000, 'member_added after the heal');
  console.log(`[timing] heal -> member_added on the other gateway: ${Date.now() - healedAt} ms`);
  assert.ok(Date.now() - healedAt <= 5000, `member back ${Date.now() - healedAt} ms after the heal`);
  await h.waitFor(async () => (await users()).length === 2, 5000, 'the ingest lists both members again');
  await cut.waitReadyz(200, 10000);
  const flips = observer.messages.filter((m) => m.data && m.data.user_id === 'on-cut' && /member_(added|removed)/.test(m.event));
  assert.deepEqual(
    flips.map((m) => m.event),
    ['pusher_internal:member_removed', 'pusher_internal:member_added'],
    'one removed/added pair for the cut-off member',
  );
});

test('NATS killed while 1,000 first subscribes are in flight: every channel delivers within 3 s once it is back', { timeout: 120000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 1 });
  const [gw] = cluster.gateways;
  const nats = cluster.natsServers[0];
  const clients = await Promise.all(Array.from({ length: 100 }, () => h.rawConnected(gw)));
  const channels = clients.map((_, c) => Array.from({ length: 10 }, (_, i) => `fresh-${c}-${i}`));
  const answers = clients.map((client, c) => Promise.all(channels[c].map((channel) => client.subscribe(channel, { timeoutMs: 60000 }))));
  // Kill NATS once the first answers are in: the rest are in flight (SUB sent, barrier not back).
  await h.waitFor(() => clients.some((c) => c.messages.some((m) => m.event === 'pusher_internal:subscription_succeeded')), 10000, 'first answers');
  await nats.kill9();
  nats.spawn();
  await nats.waitReady();
  for (const m of (await Promise.all(answers)).flat()) assert.equal(m.event, 'pusher_internal:subscription_succeeded', m.raw);
  await cluster.waitAllReadyz(200, 15000);

  const sdk = cluster.sdk();
  const all = channels.flat();
  const received = clients.map((client, c) => Promise.all(channels[c].map((channel) => client.next({ event: 'after-restart', channel }, 20000, `event on ${channel}`))));
  const triggeredAt = Date.now();
  for (let i = 0; i < all.length; i += 100) {
    const { res } = await ch.triggerWhenAccepted(sdk, all.slice(i, i + 100), 'after-restart', { i }, undefined, 15000);
    assert.equal(res.status, 200);
  }
  await Promise.all(received);
  const ms = Date.now() - triggeredAt;
  console.log(`[timing] NATS back -> all 1,000 channels delivered: ${ms} ms after the first trigger`);
  assert.ok(ms <= 3000, `all 1,000 channels delivered ${ms} ms after the first trigger`);
});
