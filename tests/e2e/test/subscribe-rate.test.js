'use strict';
// The per-connection subscribe rate limit (max_subscribes_per_second, after a burst of
// max_subscriptions_per_connection): a flooding socket gets 429 for the excess and stays open, other clients keep
// subscribing, and a real pusher-js page that subscribes to many channels and reconnects never hits it.
const h = require('./harness');
const { assert, test, metricLine: metric } = h;

const RATE_REFUSALS = `herald_limit_rejections_total{app="${h.APP.id}",limit="subscribe_rate"}`;

function isAnswer(m) {
  return m.event === 'pusher_internal:subscription_succeeded' || m.event === 'pusher:subscription_error';
}

test('a burst of subscribes over the limit: the burst is acknowledged, the excess gets 429 LimitReached, the socket stays open, another client subscribes meanwhile', async () => {
  const BURST = 20; // max_subscriptions_per_connection is also the burst
  const N = 2000;
  const server = await h.startHerald({ app: { max_subscriptions_per_connection: BURST, max_subscribes_per_second: 1 } });
  const flooder = await h.rawConnected(server);
  const bystander = await h.rawConnected(server);

  for (let i = 0; i < N; i++) flooder.send({ event: 'pusher:subscribe', data: { channel: `flood-${i}` } });
  const started = Date.now();
  await bystander.subscribeOk('bystander', { timeoutMs: 2000 });
  const bystanderMs = Date.now() - started;

  await h.waitFor(() => flooder.messages.filter(isAnswer).length === N, 20000, `answers to all ${N} subscribes`);
  const answers = flooder.messages.filter(isAnswer);
  const accepted = answers.filter((m) => m.event === 'pusher_internal:subscription_succeeded');
  assert.deepEqual(
    accepted.map((m) => m.channel),
    Array.from({ length: BURST }, (_, i) => `flood-${i}`),
    'the first BURST subscribes are acknowledged',
  );
  const overRate = answers.filter((m) => m.event === 'pusher:subscription_error' && m.data.status === 429);
  for (const m of overRate) {
    assert.equal(m.data.type, 'LimitReached', m.raw);
    assert.equal(m.data.error, 'over 1 subscribes per second on this connection', m.raw);
  }
  // A token refilled during the flood (1 a second) goes to a subscribe that then hits max_subscriptions_per_connection.
  const elapsedSeconds = Math.ceil((Date.now() - started) / 1000);
  const overHeld = answers.filter((m) => m.event === 'pusher:subscription_error' && m.data.status !== 429);
  assert.ok(overHeld.every((m) => m.data.status === 403), `the other refusals are 403: ${overHeld.map((m) => m.raw)}`);
  assert.ok(overHeld.length <= elapsedSeconds, `${overHeld.length} refilled tokens in ${elapsedSeconds} s`);
  assert.equal(await metric(server, RATE_REFUSALS), overRate.length, 'every 429 is counted as subscribe_rate');

  assert.ok(flooder.isOpen, 'the flooder is not disconnected');
  await flooder.barrier();
  assert.ok(bystanderMs < 2000, `bystander acknowledged in ${bystanderMs} ms`);
  await server.sdk().trigger('flood-0', 'still-here', { ok: true });
  assert.deepEqual((await flooder.next({ event: 'still-here' })).data, { ok: true });
});

test('unsubscribes are neither limited nor counted, and use no subscribe tokens', async () => {
  const server = await h.startHerald({ app: { max_subscriptions_per_connection: 5, max_subscribes_per_second: 1 } });
  const c = await h.rawConnected(server);
  await c.subscribeOk('room-0');
  await c.subscribeOk('room-1');
  for (let round = 0; round < 100; round++) {
    c.send({ event: 'pusher:unsubscribe', data: { channel: 'room-0' } });
    c.send({ event: 'pusher:unsubscribe', data: { channel: 'room-1' } });
  }
  await c.barrier();
  assert.equal(c.messages.filter((m) => m.event === 'pusher:subscription_error' || m.event === 'pusher:error').length, 0, c.summary());
  // 3 of the burst of 5 are left after 200 unsubscribes
  for (let i = 2; i < 5; i++) await c.subscribeOk(`room-${i}`);
  assert.equal(await metric(server, RATE_REFUSALS), 0);
});

test('defaults: a pusher-js page subscribing to 100 channels at once, then reconnecting (pusher-js resubscribes to all), is never limited', async () => {
  const server = await h.startHerald();
  const client = await h.connectedPusher(server);
  const names = Array.from({ length: 100 }, (_, i) => `page-${i}`);
  await Promise.all(names.map((name) => h.subscribed(client, name)));

  const resubscribed = new Set();
  for (const name of names) client.channel(name).bind('pusher:subscription_succeeded', () => resubscribed.add(name));
  client.disconnect();
  await h.pusherState(client, 'disconnected');
  client.connect();
  await h.waitFor(() => resubscribed.size === names.length, 5000, `resubscribed to all ${names.length} channels (${resubscribed.size})`);
  assert.equal(await metric(server, RATE_REFUSALS), 0);
});
