'use strict';
// Connecting, the handshake, keep-alive (ping/pong, server pings, 4201), malformed frames, health endpoints.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

let server; // shared: activity_timeout 42 (so we can see it in the handshake and no keep-alive noise)

before(async () => {
  server = await h.startHerald({ config: { activity_timeout: 42 } });
});

test('connection_established carries a socket id like "123.456" and the configured activity_timeout', async () => {
  const a = await h.rawClient(server);
  const b = await h.rawClient(server);
  const ea = await a.established();
  const eb = await b.established();
  assert.match(ea.socket_id, /^\d+\.\d+$/);
  assert.match(eb.socket_id, /^\d+\.\d+$/);
  assert.notEqual(ea.socket_id, eb.socket_id, 'every connection gets its own socket id');
  assert.equal(ea.activity_timeout, 42);
  // the data field is a JSON *string* on the wire, like real Pusher
  const first = a.messages[0];
  assert.equal(first.event, 'pusher:connection_established');
  assert.equal(typeof first.rawData, 'string');
});

test('pusher-js connects and exposes a socket id', async () => {
  const client = h.pusherClient(server);
  await h.pusherState(client, 'connected');
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
});

test('laravel-echo reports "connected" and a socket id', async () => {
  const auth = await h.startAuthServer(server);
  const echo = await h.echoClient(server, auth, 1);
  await h.waitFor(() => echo.connectionStatus() === 'connected', 5000, 'echo connected');
  assert.match(echo.socketId(), /^\d+\.\d+$/);
});

test('pusher:ping is answered with pusher:pong', async () => {
  const c = await h.rawConnected(server);
  c.send({ event: 'pusher:ping', data: {} });
  const pong = await c.next('pusher:pong');
  assert.equal(pong.event, 'pusher:pong');
});

test('malformed JSON gets a pusher:error, the socket stays usable and other sockets are unaffected', async () => {
  const bad = await h.rawConnected(server);
  const other = await h.rawConnected(server);
  await other.subscribeOk('news');

  bad.send('{"event": "pusher:subscribe", "data": '); // truncated JSON
  const err = await bad.next('pusher:error');
  assert.ok(err.data && typeof err.data === 'object', `pusher:error data should be an object: ${err.raw}`);
  assert.ok(err.data.code === null || (err.data.code >= 4000 && err.data.code < 5000), `code null or 4xxx: ${err.raw}`);
  assert.equal(typeof err.data.message, 'string');

  bad.send('not json at all');
  await bad.next('pusher:error');

  // still usable: ping/pong and a subscription + delivery
  bad.send({ event: 'pusher:ping', data: {} });
  await bad.next('pusher:pong');
  await bad.subscribeOk('news');
  await server.sdk().trigger('news', 'headline', { title: 'still alive' });
  const m1 = await bad.next({ event: 'headline', channel: 'news' });
  const m2 = await other.next({ event: 'headline', channel: 'news' });
  assert.deepEqual(m1.data, { title: 'still alive' });
  assert.deepEqual(m2.data, { title: 'still alive' });
  assert.ok(bad.isOpen && other.isOpen);
});

test('an unknown pusher: event gets a pusher:error and the socket stays open', async () => {
  const c = await h.rawConnected(server);
  c.send({ event: 'pusher:does_not_exist', data: {} });
  const err = await c.next('pusher:error');
  assert.ok(err.data.code === null || (err.data.code >= 4000 && err.data.code < 5000), err.raw);
  c.send({ event: 'pusher:ping', data: {} });
  await c.next('pusher:pong');
  assert.ok(c.isOpen);
});

test('a JSON message without an event name or with a non-object body does not kill the socket', async () => {
  const c = await h.rawConnected(server);
  c.send({ data: {} });
  c.send('[1,2,3]');
  c.send('42');
  c.send({ event: 'pusher:ping', data: {} });
  await c.next('pusher:pong');
  assert.ok(c.isOpen);
});

test('GET /healthz is 200 and /metrics is Prometheus text', async () => {
  const health = await fetch(`${server.metricsUrl}/healthz`);
  assert.equal(health.status, 200);
  const ready = await fetch(`${server.metricsUrl}/readyz`);
  assert.equal(ready.status, 200);
  const metrics = await fetch(`${server.metricsUrl}/metrics`);
  assert.equal(metrics.status, 200);
  const text = await metrics.text();
  assert.match(text, /^# (HELP|TYPE) \w+/m, 'Prometheus exposition format');
});

test('server pings idle clients; one that never answers is closed with 4201, one that answers stays', async () => {
  const s = await h.startHerald({ config: { activity_timeout: 1, pong_timeout: 1 } });
  // silent: never answers anything, not even WebSocket-level pings
  const silent = await h.rawClient(s, { wsOptions: { autoPong: false } });
  // polite: answers every pusher:ping with pusher:pong
  const polite = await h.rawClient(s);
  let politePings = 0;
  polite.ws.on('message', (raw) => {
    try {
      if (JSON.parse(raw.toString()).event === 'pusher:ping') {
        politePings++;
        polite.send({ event: 'pusher:pong', data: {} });
      }
    } catch {
      /* ignore */
    }
  });
  // pusher-js handles server pings by itself
  const pjs = h.pusherClient(s);
  await h.pusherState(pjs, 'connected');
  const pjsSocketId = pjs.connection.socket_id;
  const pjsStates = [];
  pjs.connection.bind('state_change', (st) => pjsStates.push(st.current));

  const est = await silent.established();
  assert.equal(est.activity_timeout, 1);
  await silent.next('pusher:ping', 5000, 'server pusher:ping after activity_timeout');
  const closed = await silent.waitClose(6000, 'close of the silent client');
  assert.equal(closed.code, 4201, `silent client close code (reason: ${closed.reason})`);

  // The polite client keeps getting pinged and stays connected well past the silent one's death.
  await h.waitFor(() => politePings >= 3, 8000, 'three server pings answered by the polite client').catch((e) => {
    throw new Error(`${e.message}; polite client closed: ${JSON.stringify(polite.closeInfo)}; frames: ${polite.summary()}`);
  });
  assert.ok(polite.isOpen, 'polite client is still connected');
  assert.equal(pjs.connection.state, 'connected');
  assert.equal(pjs.connection.socket_id, pjsSocketId, 'pusher-js never had to reconnect');
  assert.deepEqual(pjsStates, []);
});
