'use strict';
// Cache channels: a new subscriber immediately gets the last event, or pusher:cache_miss.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

let server;
before(async () => {
  server = await h.startHerald();
});

test('cache channel: a late subscriber gets the last event right after subscription_succeeded', async () => {
  const sdk = server.sdk();
  await sdk.trigger('cache-prices', 'price', { eur: 1 });
  await sdk.trigger('cache-prices', 'price', { eur: 2 }); // only the last one is replayed
  const c = await h.rawConnected(server);
  const ok = await c.subscribeOk('cache-prices');
  const idx = c.messages.indexOf(ok);
  const replay = await c.next({ event: 'price', channel: 'cache-prices' });
  assert.equal(c.messages.indexOf(replay), idx + 1, `the cached event comes right after subscription_succeeded: ${c.summary()}`);
  assert.deepEqual(replay.data, { eur: 2 });
  await c.expectNoMessage({ event: 'price' }, 300, 'a second replay');
  await c.expectNoMessage('pusher:cache_miss', 0);
});

test('cache channel: pusher-js receives the cached event on subscribe', async () => {
  await server.sdk().trigger('cache-weather', 'forecast', { sky: 'blue' });
  const client = await h.connectedPusher(server);
  const ch = client.subscribe('cache-weather');
  const got = await h.nextEvent(ch, 'forecast');
  assert.deepEqual(got, { sky: 'blue' });
});

test('cache channel with nothing cached: pusher:cache_miss with the channel set', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('cache-empty');
  const miss = await c.next('pusher:cache_miss');
  assert.equal(miss.channel, 'cache-empty');
  // pusher-js surfaces it on the channel
  const client = await h.connectedPusher(server);
  const ch = client.subscribe('cache-empty-2');
  await h.nextEvent(ch, 'pusher:cache_miss');
});

test('cache channel: live events still flow after the replay', async () => {
  const sdk = server.sdk();
  await sdk.trigger('cache-live', 'tick', { n: 1 });
  const c = await h.rawConnected(server);
  await c.subscribeOk('cache-live');
  assert.deepEqual((await c.next({ event: 'tick' })).data, { n: 1 });
  await sdk.trigger('cache-live', 'tick', { n: 2 });
  assert.deepEqual((await c.next({ event: 'tick' })).data, { n: 2 });
});

test('private-cache- and presence-cache- channels replay after auth', async () => {
  const sdk = server.sdk();
  await sdk.trigger('private-cache-secret', 'state', { v: 'p' });
  await sdk.trigger('presence-cache-room', 'state', { v: 'q' });
  const c = await h.rawConnected(server);
  await h.rawSubscribePrivate(c, h.APP, 'private-cache-secret').then((m) => assert.equal(m.event, 'pusher_internal:subscription_succeeded', m.raw));
  assert.deepEqual((await c.next({ event: 'state', channel: 'private-cache-secret' })).data, { v: 'p' });
  await h.rawJoinPresence(c, h.APP, 'presence-cache-room', '1').then((m) => assert.equal(m.event, 'pusher_internal:subscription_succeeded', m.raw));
  assert.deepEqual((await c.next({ event: 'state', channel: 'presence-cache-room' })).data, { v: 'q' });
});

test('a refused private-cache subscription does not leak the cached event', async () => {
  await server.sdk().trigger('private-cache-vault', 'state', { secret: true });
  const c = await h.rawConnected(server);
  await h.expectAuthRefused(c, 'private-cache-vault', { auth: `${h.APP.key}:${'f'.repeat(64)}` });
  await c.expectNoMessage((m) => m.event === 'state' || m.event === 'pusher:cache_miss', 300);
});

test('non-cache channels do not replay', async () => {
  await server.sdk().trigger('not-cached', 'old', { n: 1 });
  const c = await h.rawConnected(server);
  await c.subscribeOk('not-cached');
  await c.expectNoMessage((m) => m.event === 'old' || m.event === 'pusher:cache_miss', 300);
});
