'use strict';
// Abuse limits and secret rotation: each limit answers with the code or status a Pusher client expects,
// is counted, and leaves every other connection working.
const net = require('node:net');
const h = require('./harness');
const { assert, test, metricLine: metric } = h;

test('secret rotation: signatures made with previous_secret and with secret are both accepted, others are not', async () => {
  const app = { ...h.APP, secret: 'new-secret', previous_secret: 'old-secret' };
  const server = await h.startHerald({ apps: [app] });
  const asOld = { ...app, secret: 'old-secret' };
  const asNew = { ...app, secret: 'new-secret' };
  const asOther = { ...app, secret: 'other-secret' };
  const body = { name: 'e', channel: 'orders', data: '{}' };
  assert.equal((await h.apiRequest(server, { method: 'POST', path: '/events', body, app: asOld })).status, 200);
  assert.equal((await h.apiRequest(server, { method: 'POST', path: '/events', body, app: asNew })).status, 200);
  assert.equal((await h.apiRequest(server, { method: 'POST', path: '/events', body, app: asOther })).status, 401);
  const c = await h.rawConnected(server, { key: app.key });
  for (const [who, signer] of [['old', asOld], ['new', asNew]]) {
    const auth = h.channelAuth(signer, c.id, `private-${who}`);
    const res = await c.subscribe(`private-${who}`, { auth });
    assert.equal(res.event, 'pusher_internal:subscription_succeeded', `${who} secret: ${res.raw}`);
  }
  const refused = await c.subscribe('private-other', { auth: h.channelAuth(asOther, c.id, 'private-other') });
  assert.equal(refused.event, 'pusher:subscription_error', refused.raw);
});

test('max_subscriptions_per_connection: the subscription over the limit is refused (403 LimitReached), the socket keeps the others', async () => {
  const server = await h.startHerald({ app: { max_subscriptions_per_connection: 2 } });
  const c = await h.rawConnected(server);
  await c.subscribeOk('one');
  await c.subscribeOk('two');
  const refused = await c.subscribe('three');
  assert.equal(refused.event, 'pusher:subscription_error', refused.raw);
  assert.equal(refused.data.status, 403);
  assert.equal(refused.data.type, 'LimitReached');
  assert.ok(c.isOpen);
  // leaving one makes room again
  c.send({ event: 'pusher:unsubscribe', data: { channel: 'one' } });
  await c.subscribeOk('three');
  assert.equal(await metric(server, `herald_limit_rejections_total{app="${h.APP.id}",limit="subscription"}`), 1);
});

test('max_api_requests_per_second: requests over the budget get 429 with a JSON error and deliver nothing', async () => {
  const server = await h.startHerald({ app: { max_api_requests_per_second: 2 } });
  const c = await h.rawConnected(server);
  await c.subscribeOk('orders');
  const statuses = [];
  for (let i = 0; i < 5; i++) {
    const res = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'e', channel: 'orders', data: String(i) } });
    statuses.push(res.status);
    if (res.status === 429) assert.match(res.json.error, /per second/);
  }
  assert.ok(statuses.includes(429), `some requests refused: ${statuses}`);
  const accepted = statuses.filter((s) => s === 200).length;
  assert.ok(accepted >= 2 && accepted < 5, `the budget admits about 2 at once: ${statuses}`);
  await c.barrier();
  const delivered = c.messages.filter((m) => m.event === 'e').length;
  assert.equal(delivered, accepted, 'exactly the accepted triggers were delivered');
  assert.equal(await metric(server, `herald_limit_rejections_total{app="${h.APP.id}",limit="api_rate"}`), 5 - accepted);
});

test('max_connections_per_ip: the connection over the limit is closed with 4100, the others keep working', async () => {
  const server = await h.startHerald({ config: { max_connections_per_ip: 2 } });
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  const third = await h.rawClient(server);
  const closed = await third.waitClose(5000, 'the third connection from one address to close');
  assert.equal(closed.code, 4100);
  await a.subscribeOk('orders');
  await b.subscribeOk('orders');
  // closing one frees a slot
  a.close();
  await a.waitClose();
  await h.waitFor(async () => {
    const c = await h.rawClient(server);
    const first = await c.next(() => true, 5000, 'first message');
    if (first.event === 'pusher:connection_established') return true;
    return false;
  }, 5000, 'a new connection once a slot is free');
});

test('trusted_proxies: behind a trusted proxy the per-IP limit counts the X-Forwarded-For client, not the proxy', async () => {
  const server = await h.startHerald({ config: { max_connections_per_ip: 1, trusted_proxies: ['127.0.0.0/8'] } });
  const from = (client) => ({ wsOptions: { headers: { 'X-Forwarded-For': client } } });
  // Two clients behind the same proxy (this test's loopback address) each get their slot.
  const a = await h.rawConnected(server, from('203.0.113.5'));
  const b = await h.rawConnected(server, from('198.51.100.7, 203.0.113.6'));
  const second = await h.rawClient(server, from('203.0.113.5'));
  const closed = await second.waitClose(5000, 'the second connection of 203.0.113.5 to close');
  assert.equal(closed.code, 4100);
  assert.match(closed.reason, /too many connections from 203\.0\.113\.5/);
  // What the client wrote left of the proxy's entry is not believed: this is 203.0.113.6 again.
  const spoofed = await h.rawClient(server, from('192.0.2.1, 203.0.113.6'));
  assert.equal((await spoofed.waitClose(5000, 'a spoofed address to be ignored')).code, 4100);
  await a.subscribeOk('orders');
  await b.subscribeOk('orders');
  assert.equal(await metric(server, 'herald_limit_rejections_total{app="",limit="connections_per_ip"}'), 2);
});

test('header_timeout: a client that never finishes its request head is disconnected (slowloris), others are served', async () => {
  const server = await h.startHerald({ config: { header_timeout: 1 } });
  const slow = net.connect(server.port, '127.0.0.1');
  await new Promise((resolve) => slow.once('connect', resolve));
  slow.write('GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n'); // never the final empty line
  const ended = new Promise((resolve) => slow.once('close', resolve));
  const c = await h.rawConnected(server);
  await c.subscribeOk('orders');
  await h.withTimeout(ended, 5000, 'the slow client to be disconnected');
  assert.ok(c.isOpen);
});

test('body_timeout: an API request whose body never arrives in full gets 408 and is closed; other requests are served meanwhile', async () => {
  const server = await h.startHerald({ config: { body_timeout: 1 } });
  const c = await h.rawConnected(server);
  await c.subscribeOk('orders');
  const slow = net.connect(server.port, '127.0.0.1');
  await new Promise((resolve) => slow.once('connect', resolve));
  let reply = '';
  slow.on('data', (d) => {
    reply += d;
  });
  const closed = new Promise((resolve) => slow.once('close', resolve));
  // A complete head, then 8 of the 100 body bytes it announces.
  slow.write(`POST /apps/${h.APP.id}/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":`);
  const res = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'e', channel: 'orders', data: '{}' } });
  assert.equal(res.status, 200);
  await c.next((m) => m.event === 'e', 5000, 'the trigger sent while another body trickles');
  await h.withTimeout(closed, 5000, 'the slow API client to be answered and closed');
  assert.match(reply, /^HTTP\/1\.1 408 /);
  assert.match(reply, /request body not received within 1 s/);
  assert.equal(await metric(server, 'herald_api_requests_total{endpoint="events",status="408"}'), 1);
});

test('allowed_origins: a handshake from another origin is refused with 4009; listed and wildcard origins connect', async () => {
  const server = await h.startHerald({ app: { allowed_origins: ['https://shop.example', '*.admin.example'] } });
  const from = async (origin) => {
    const c = await h.rawClient(server, { wsOptions: origin ? { origin } : {} });
    return c.next(() => true, 5000, `first message for ${origin}`);
  };
  assert.equal((await from('https://shop.example')).event, 'pusher:connection_established');
  assert.equal((await from('https://eu.admin.example')).event, 'pusher:connection_established');
  for (const origin of ['https://evil.example', undefined]) {
    const c = await h.rawClient(server, { wsOptions: origin ? { origin } : {} });
    const closed = await c.waitClose(5000, `refusal of ${origin}`);
    assert.equal(closed.code, 4009, `origin ${origin}`);
  }
  assert.equal(await metric(server, `herald_connections_refused_total{app="${h.APP.id}",reason="origin_not_allowed"}`), 2);
});

test('a message in more than 256 fragments is refused with close 1008; other sockets keep working', async () => {
  const server = await h.startHerald();
  const other = await h.rawConnected(server);
  await other.subscribeOk('orders');
  const c = await h.rawConnected(server);
  const ws = c.ws;
  const text = JSON.stringify({ event: 'pusher:ping', data: {} }).padEnd(300, ' ');
  for (let i = 0; i < 300; i++) ws.send(text[i], { fin: i === 299 });
  const closed = await c.waitClose(5000, 'close for too many fragments');
  assert.equal(closed.code, 1008);
  await other.barrier();
  assert.ok(other.isOpen);
});
