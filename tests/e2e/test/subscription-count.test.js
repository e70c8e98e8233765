'use strict';
// pusher:subscription_count on non-presence channels, only when the app enables it.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const COUNTING = { ...h.APP, subscription_count: true };
const QUIET = { id: '999', key: 'quiet-key', secret: 'quiet-secret' }; // default: subscription_count = false

let server;
before(async () => {
  server = await h.startHerald({ apps: [COUNTING, QUIET] });
});

test('pusher-js sees subscription_count go 1 -> 2 -> 1 as others join and leave', async () => {
  const a = await h.connectedPusher(server);
  const chA = a.subscribe('counted');
  const countsA = h.collect(chA, 'pusher:subscription_count');
  await h.waitFor(() => countsA.some((c) => c.data.subscription_count === 1), 5000, 'count 1 for the first subscriber');
  assert.equal(chA.subscriptionCount, 1);

  const b = await h.connectedPusher(server);
  const chB = b.subscribe('counted');
  const countsB = h.collect(chB, 'pusher:subscription_count');
  await h.waitFor(() => countsA.some((c) => c.data.subscription_count === 2), 5000, 'A sees 2');
  await h.waitFor(() => countsB.some((c) => c.data.subscription_count === 2), 5000, 'B sees 2');

  b.disconnect();
  await h.waitFor(() => countsA.at(-1).data.subscription_count === 1, 5000, 'A sees 1 after B left');
  assert.equal(chA.subscriptionCount, 1);
});

test('raw frame: pusher_internal:subscription_count with the channel and {subscription_count}', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('counted-raw');
  const m = await c.next({ event: 'pusher_internal:subscription_count', channel: 'counted-raw' });
  assert.deepEqual(m.data, { subscription_count: 1 });
});

test('private channels are counted too', async () => {
  const c = await h.rawConnected(server);
  await h.rawSubscribePrivate(c, COUNTING, 'private-counted');
  const m = await c.next({ event: 'pusher_internal:subscription_count', channel: 'private-counted' });
  assert.deepEqual(m.data, { subscription_count: 1 });
});

test('presence channels never get subscription_count', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await h.rawJoinPresence(a, COUNTING, 'presence-nocount', '1');
  await h.rawJoinPresence(b, COUNTING, 'presence-nocount', '2');
  await a.next('pusher_internal:member_added');
  await a.expectNoMessage('pusher_internal:subscription_count', 300);
  await b.expectNoMessage('pusher_internal:subscription_count', 0);
});

test('apps without subscription_count enabled never send it', async () => {
  const a = await h.rawConnected(server, { key: QUIET.key });
  const b = await h.rawConnected(server, { key: QUIET.key });
  await a.subscribeOk('uncounted');
  await b.subscribeOk('uncounted');
  await a.expectNoMessage('pusher_internal:subscription_count', 300);
  await b.expectNoMessage('pusher_internal:subscription_count', 0);
});
