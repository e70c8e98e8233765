'use strict';
// Client events (whispers): only client-*, only when enabled, only on private/presence channels the sender is
// subscribed to, never echoed, user_id on presence, rate limited with 4301.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const ENABLED = { ...h.APP, client_events: true, max_client_events_per_second: 3 };
const DISABLED = { id: '321', key: 'noclient-key', secret: 'noclient-secret', client_events: false };

let server;
before(async () => {
  server = await h.startHerald({ apps: [ENABLED, DISABLED] });
});

async function rawPrivatePair(app, channel, key) {
  const a = await h.rawConnected(server, { key });
  const b = await h.rawConnected(server, { key });
  for (const c of [a, b]) {
    const m = await h.rawSubscribePrivate(c, app, channel);
    assert.equal(m.event, 'pusher_internal:subscription_succeeded', m.raw);
  }
  return [a, b];
}

test('enabled: a client event reaches the other subscribers but is not echoed to the sender', async () => {
  const alice = await h.connectedPusher(server, h.customAuthOptions(server, 1));
  const bob = await h.connectedPusher(server, h.customAuthOptions(server, 2));
  const aliceCh = await h.subscribed(alice, 'private-chat');
  const bobCh = await h.subscribed(bob, 'private-chat');
  const echoed = h.collect(aliceCh, 'client-typing');
  const got = h.nextEvent(bobCh, 'client-typing');
  assert.equal(aliceCh.trigger('client-typing', { who: 'alice' }), true);
  assert.deepEqual(await got, { who: 'alice' });
  await h.sleep(300); // bounded absence window: the sender must not get its own event back
  assert.deepEqual(echoed, [], 'not echoed');
});

test('enabled: on presence channels the receiver learns the sender\'s user_id', async () => {
  const alice = await h.connectedPusher(server, h.customAuthOptions(server, 'alice-1', { name: 'Alice' }));
  const bob = await h.connectedPusher(server, h.customAuthOptions(server, 'bob-2', { name: 'Bob' }));
  const aliceCh = await h.subscribed(alice, 'presence-chat');
  const bobCh = await h.subscribed(bob, 'presence-chat');
  const got = h.nextEventMeta(bobCh, 'client-wave');
  aliceCh.trigger('client-wave', { hi: true });
  const { data, meta } = await got;
  assert.deepEqual(data, { hi: true });
  assert.equal(meta?.user_id, 'alice-1', `metadata.user_id: ${JSON.stringify(meta)}`);
  // raw frame carries user_id too
  const raw = await h.rawConnected(server);
  await h.rawJoinPresence(raw, ENABLED, 'presence-chat', 'raw-3');
  const frame = raw.next({ event: 'client-wave' });
  aliceCh.trigger('client-wave', { again: true });
  const m = await frame;
  assert.equal(m.user_id, 'alice-1', m.raw);
  assert.equal(m.channel, 'presence-chat');
});

test('disabled app: a client event gets a pusher:error and is not delivered', async () => {
  const [a, b] = await rawPrivatePair(DISABLED, 'private-quiet', DISABLED.key);
  a.send({ event: 'client-typing', channel: 'private-quiet', data: { x: 1 } });
  const err = await a.next('pusher:error');
  assert.equal(typeof err.data.message, 'string');
  await b.expectNoMessage({ event: 'client-typing' }, 300);
  assert.ok(a.isOpen, 'socket stays open');
});

test('public channel: client events are refused and not delivered', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await a.subscribeOk('public-chat');
  await b.subscribeOk('public-chat');
  a.send({ event: 'client-typing', channel: 'public-chat', data: { x: 1 } });
  await a.next('pusher:error');
  await b.expectNoMessage({ event: 'client-typing' }, 300);
  assert.ok(a.isOpen);
});

test('sender not subscribed to the channel: refused and not delivered', async () => {
  const outsider = await h.rawConnected(server);
  const [, member] = await rawPrivatePair(ENABLED, 'private-members');
  outsider.send({ event: 'client-typing', channel: 'private-members', data: { x: 1 } });
  await outsider.next('pusher:error');
  await member.expectNoMessage({ event: 'client-typing' }, 300);
});

test('events without the client- prefix cannot be sent by clients', async () => {
  const [a, b] = await rawPrivatePair(ENABLED, 'private-prefix');
  a.send({ event: 'order.created', channel: 'private-prefix', data: { fake: true } });
  await b.expectNoMessage({ event: 'order.created' }, 300);
  // and the sender's socket is still fine
  a.send({ event: 'pusher:ping', data: {} });
  await a.next('pusher:pong');
});

test('rate limit: a burst over max_client_events_per_second gets pusher:error 4301 and the socket stays open', async () => {
  const [a, b] = await rawPrivatePair(ENABLED, 'private-burst');
  for (let i = 0; i < 12; i++) a.send({ event: 'client-spam', channel: 'private-burst', data: { i } });
  const err = await a.next((m) => m.event === 'pusher:error' && m.data?.code === 4301, 5000, 'pusher:error 4301');
  assert.equal(typeof err.data.message, 'string');
  // b got some but not all of them (limit 3/s; a burst may straddle two one-second windows)
  await b.next({ event: 'client-spam' });
  await h.sleep(300); // bounded window to let any in-flight deliveries land before counting
  const delivered = b.messages.filter((m) => m.event === 'client-spam').length;
  assert.ok(delivered >= 1 && delivered <= 6, `delivered ${delivered} of 12 with a limit of 3/s`);
  assert.ok(a.isOpen, 'rate-limited socket is not closed');
  a.send({ event: 'pusher:ping', data: {} });
  await a.next('pusher:pong');
  // once the window has passed the client may whisper again
  await h.waitFor(
    async () => {
      const before = b.messages.filter((m) => m.event === 'client-after').length;
      a.send({ event: 'client-after', channel: 'private-burst', data: {} });
      await b.next({ event: 'client-after' }, 400).catch(() => {});
      return b.messages.filter((m) => m.event === 'client-after').length > before;
    },
    5000,
    'a client event to be accepted after the rate-limit window',
    200,
  );
});

test('client events are not cached on cache channels', async () => {
  const [a, b] = await rawPrivatePair(ENABLED, 'private-cache-whisper');
  await a.next('pusher:cache_miss');
  a.send({ event: 'client-note', channel: 'private-cache-whisper', data: { n: 1 } });
  await b.next({ event: 'client-note' });
  const late = await h.rawConnected(server);
  const ok = await h.rawSubscribePrivate(late, ENABLED, 'private-cache-whisper');
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
  await late.next('pusher:cache_miss', 5000, 'cache_miss: a client event must not fill the cache');
  assert.ok(!late.messages.some((m) => m.event === 'client-note'));
});

test('laravel-echo whisper / listenForWhisper between two users on a private channel', async () => {
  const auth = await h.startAuthServer(server);
  const alice = await h.echoClient(server, auth, 1);
  const bob = await h.echoClient(server, auth, 2);
  const aliceCh = alice.private('room.7');
  const heard = new Promise((resolve) => bob.private('room.7').listenForWhisper('typing', resolve));
  await h.echoSubscribed(aliceCh);
  await h.echoSubscribed(bob.private('room.7'));
  aliceCh.whisper('typing', { name: 'Alice' });
  assert.deepEqual(await h.withTimeout(heard, 5000, 'bob hears the whisper'), { name: 'Alice' });
});
