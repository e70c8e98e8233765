'use strict';
// The Pusher HTTP API as the official server SDK uses it, plus hand-crafted bad requests.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const DISABLED = { id: '404404', key: 'off-key', secret: 'off-secret', enabled: false };

let server;
let sdk;
before(async () => {
  server = await h.startHerald({ apps: [h.APP, DISABLED] });
  sdk = server.sdk();
});

async function expectJsonError(res, status) {
  assert.equal(res.status, status, `status (body: ${res.text})`);
  assert.ok(res.json && typeof res.json.error === 'string' && res.json.error.length > 0, `JSON {"error": "..."} body, got: ${res.text}`);
}

test('trigger to several channels delivers once on each', async () => {
  const client = await h.connectedPusher(server);
  const chs = await Promise.all(['multi-1', 'multi-2', 'multi-3'].map((n) => h.subscribed(client, n)));
  const got = chs.map((ch) => h.nextEvent(ch, 'fanout'));
  const res = await sdk.trigger(['multi-1', 'multi-2', 'multi-3'], 'fanout', { x: 1 });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  for (const g of got) assert.deepEqual(await g, { x: 1 });
});

test('socket_id excludes the sender from the delivery', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await a.subscribeOk('exclusion');
  await b.subscribeOk('exclusion');
  await sdk.trigger('exclusion', 'update', { by: 'a' }, { socket_id: a.id });
  await b.next({ event: 'update' });
  await a.expectNoMessage({ event: 'update' }, 300, 'delivery to the excluded socket');
});

test('trigger with info returns subscription_count / user_count per channel', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await a.subscribeOk('info-public');
  await b.subscribeOk('info-public');
  await h.rawJoinPresence(a, h.APP, 'presence-info', '1');
  await h.rawJoinPresence(b, h.APP, 'presence-info', '2');
  let res = await sdk.trigger('info-public', 'e', {}, { info: 'subscription_count' });
  assert.deepEqual(await res.json(), { channels: { 'info-public': { subscription_count: 2 } } });
  res = await sdk.trigger('presence-info', 'e', {}, { info: 'user_count' });
  assert.deepEqual(await res.json(), { channels: { 'presence-info': { user_count: 2 } } });
});

test('batch_events delivers every event and can return info', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('batch-a');
  await c.subscribeOk('batch-b');
  const res = await sdk.triggerBatch([
    { channel: 'batch-a', name: 'first', data: { n: 1 } },
    { channel: 'batch-b', name: 'second', data: { n: 2 }, info: 'subscription_count' },
  ]);
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.deepEqual((await c.next({ event: 'first', channel: 'batch-a' })).data, { n: 1 });
  assert.deepEqual((await c.next({ event: 'second', channel: 'batch-b' })).data, { n: 2 });
  assert.ok(body && typeof body === 'object', JSON.stringify(body));
  if (body.batch) {
    assert.equal(body.batch.length, 2);
    assert.deepEqual(body.batch[1], { subscription_count: 1 });
  } else {
    assert.deepEqual(body, {}, 'either {} or {"batch":[...]}');
  }
});

test('batch over max_batch_events (10) is rejected with 400 and delivers nothing', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('batch-big');
  const batch = Array.from({ length: 11 }, (_, i) => ({ channel: 'batch-big', name: 'item', data: JSON.stringify({ i }) }));
  const res = await h.apiRequest(server, { method: 'POST', path: '/batch_events', body: { batch } });
  await expectJsonError(res, 400);
  await c.expectNoMessage({ event: 'item' }, 300);
});

test('channel list with filter_by_prefix and info=user_count', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await h.rawJoinPresence(a, h.APP, 'presence-lobby-1', '1');
  await h.rawJoinPresence(b, h.APP, 'presence-lobby-1', '2');
  await h.rawJoinPresence(b, h.APP, 'presence-lobby-2', '2');
  await a.subscribeOk('lobby-public');
  const filtered = await h.sdkGetJson(sdk, '/channels', { filter_by_prefix: 'presence-lobby-', info: 'user_count' });
  assert.deepEqual(filtered, {
    channels: { 'presence-lobby-1': { user_count: 2 }, 'presence-lobby-2': { user_count: 1 } },
  });
  const all = await h.sdkGetJson(sdk, '/channels');
  assert.ok(all.channels['lobby-public'], JSON.stringify(all));
  assert.deepEqual(all.channels['lobby-public'], {});
  assert.ok(all.channels['presence-lobby-1']);
  // channels disappear when vacated
  a.close();
  await a.waitClose();
  await h.waitFor(async () => !(await h.sdkGetJson(sdk, '/channels')).channels['lobby-public'], 5000, 'lobby-public to vanish');
});

test('channel list: user_count is only valid with a presence- prefix', async () => {
  const res = await h.apiRequest(server, { path: '/channels', params: { info: 'user_count' } });
  assert.equal(res.status, 400, res.text);
});

test('channel info: occupied, user_count and subscription_count', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  const a2 = await h.rawConnected(server);
  await h.rawJoinPresence(a, h.APP, 'presence-stats', '1');
  await h.rawJoinPresence(a2, h.APP, 'presence-stats', '1'); // same user, second socket
  await h.rawJoinPresence(b, h.APP, 'presence-stats', '2');
  const info = await h.sdkGetJson(sdk, '/channels/presence-stats', { info: 'user_count' });
  assert.equal(info.occupied, true);
  assert.equal(info.user_count, 2, JSON.stringify(info));

  await a.subscribeOk('stats-public');
  await b.subscribeOk('stats-public');
  const pub = await h.sdkGetJson(sdk, '/channels/stats-public', { info: 'subscription_count' });
  assert.deepEqual(pub, { occupied: true, subscription_count: 2 });

  const empty = await h.sdkGetJson(sdk, '/channels/nobody-here');
  assert.equal(empty.occupied, false, JSON.stringify(empty));
});

test('channel info: user_count on a non-presence channel is a 400', async () => {
  const res = await h.apiRequest(server, { path: '/channels/some-public', params: { info: 'user_count' } });
  await expectJsonError(res, 400);
});

test('signature styles of the other SDKs: percent-encoded query values (PHP) and body_md5 on GET (Python)', async () => {
  const a = await h.rawConnected(server);
  await h.rawJoinPresence(a, h.APP, 'presence-sdkstyle', '1');
  await a.subscribeOk('sdkstyle-public');
  // apiRequest percent-encodes values in the URL (",": %2C) while signing the unescaped string, like PHP/Guzzle
  let res = await h.apiRequest(server, { path: '/channels', params: { filter_by_prefix: 'presence-sdkstyle', info: 'user_count' } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { channels: { 'presence-sdkstyle': { user_count: 1 } } });
  res = await h.apiRequest(server, { path: '/channels/sdkstyle-public', params: { info: 'subscription_count' }, emptyBodyMd5: true });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { occupied: true, subscription_count: 1 });
});

test('users of a presence channel; 400 for a non-presence channel', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  const b2 = await h.rawConnected(server);
  await h.rawJoinPresence(a, h.APP, 'presence-users', 'u1');
  await h.rawJoinPresence(b, h.APP, 'presence-users', 'u2');
  await h.rawJoinPresence(b2, h.APP, 'presence-users', 'u2');
  const body = await h.sdkGetJson(sdk, '/channels/presence-users/users');
  assert.deepEqual(body.users.map((u) => u.id).sort(), ['u1', 'u2']);
  for (const u of body.users) assert.deepEqual(Object.keys(u), ['id']);
  const res = await h.apiRequest(server, { path: '/channels/public-thing/users' });
  await expectJsonError(res, 400);
});

test('401 for a bad signature; nothing is delivered', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('guarded');
  const body = { name: 'forged', channels: ['guarded'], data: '{"evil":true}' };
  await expectJsonError(await h.apiRequest(server, { method: 'POST', path: '/events', body, badSignature: true }), 401);
  await expectJsonError(await h.apiRequest(server, { method: 'POST', path: '/events', body, signWith: 'not-the-secret' }), 401);
  await c.expectNoMessage({ event: 'forged' }, 300);
});

test('401 for a stale or future timestamp (more than 600 s off)', async () => {
  const now = Math.floor(Date.now() / 1000);
  const body = { name: 'late', channels: ['guarded'], data: '{}' };
  await expectJsonError(await h.apiRequest(server, { method: 'POST', path: '/events', body, timestamp: now - 700 }), 401);
  await expectJsonError(await h.apiRequest(server, { method: 'POST', path: '/events', body, timestamp: now + 700 }), 401);
  // within the window is fine
  const ok = await h.apiRequest(server, { method: 'POST', path: '/events', body, timestamp: now - 60 });
  assert.equal(ok.status, 200, ok.text);
});

test('401 when the body does not match body_md5, or the auth_key is unknown', async () => {
  const body = JSON.stringify({ name: 'x', channels: ['a'], data: '{}' });
  // sign one body, send another by tampering: sign {..} then append whitespace
  const app = server.app;
  const crypto = require('node:crypto');
  const ts = Math.floor(Date.now() / 1000);
  const md5 = crypto.createHash('md5').update(body).digest('hex');
  const qs = `auth_key=${app.key}&auth_timestamp=${ts}&auth_version=1.0&body_md5=${md5}`;
  const sig = h.hmacHex(app.secret, `POST\n/apps/${app.id}/events\n${qs}`);
  const tampered = await fetch(`${server.baseUrl}/apps/${app.id}/events?${qs}&auth_signature=${sig}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: body.replace('"x"', '"y"'),
  });
  assert.equal(tampered.status, 401, await tampered.text());
  const unknownKey = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'x', channels: ['a'], data: '{}' }, app: { ...app, key: 'who-is-this' } });
  assert.equal(unknownKey.status, 401, unknownKey.text);
});

test('400 for malformed JSON, missing fields, bad channel names and too many channels', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('valid-target');
  const post = (body) => h.apiRequest(server, { method: 'POST', path: '/events', body });
  await expectJsonError(await post('{"name": "x", "channels": ['), 400);
  await expectJsonError(await post({ channels: ['valid-target'], data: '{}' }), 400); // no name
  await expectJsonError(await post({ name: 'x', data: '{}' }), 400); // no channels
  await expectJsonError(await post({ name: 'bad', channels: ['valid-target', 'not valid!'], data: '{}' }), 400);
  await expectJsonError(await post({ name: 'long', channels: ['x'.repeat(165)], data: '{}' }), 400);
  await expectJsonError(await post({ name: 'e'.repeat(201), channels: ['valid-target'], data: '{}' }), 400);
  const many = Array.from({ length: 101 }, (_, i) => `c${i}`).concat(['valid-target']);
  await expectJsonError(await post({ name: 'toomany', channels: many, data: '{}' }), 400);
  // none of the rejected triggers delivered anything, even to the valid channel in the list
  await c.expectNoMessage((m) => ['x', 'bad', 'long', 'toomany'].includes(m.event) || m.event.length > 200, 300);
});

test('"channel" (singular) is accepted like "channels"', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('singular');
  const res = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'one', channel: 'singular', data: '{"s":1}' } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual((await c.next({ event: 'one' })).data, { s: 1 });
});

test('403 for a disabled app, 404 for an unknown app', async () => {
  const body = { name: 'x', channels: ['a'], data: '{}' };
  await expectJsonError(await h.apiRequest(server, { app: DISABLED, method: 'POST', path: '/events', body }), 403);
  await expectJsonError(await h.apiRequest(server, { appId: '31337', method: 'POST', path: '/events', body }), 404);
});

test('413 when data is larger than max_event_payload_bytes; nothing delivered', async () => {
  const c = await h.rawConnected(server);
  await c.subscribeOk('big-news');
  const data = JSON.stringify({ blob: 'x'.repeat(10240) });
  const res = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'huge', channels: ['big-news'], data } });
  await expectJsonError(res, 413);
  const batch = await h.apiRequest(server, {
    method: 'POST',
    path: '/batch_events',
    body: { batch: [{ channel: 'big-news', name: 'small', data: '{}' }, { channel: 'big-news', name: 'huge', data }] },
  });
  await expectJsonError(batch, 413);
  await c.expectNoMessage((m) => m.event === 'huge' || m.event === 'small', 300);
  // exactly at the limit is fine
  const atLimit = 'y'.repeat(10240);
  const ok = await h.apiRequest(server, { method: 'POST', path: '/events', body: { name: 'fits', channels: ['big-news'], data: atLimit } });
  assert.equal(ok.status, 200, ok.text);
  assert.equal((await c.next({ event: 'fits' })).rawData, atLimit);
});

test('the SDK surfaces HTTP errors as RequestError with status and body', async () => {
  const badSdk = server.sdk({ ...h.APP, secret: 'wrong-secret' });
  await assert.rejects(badSdk.trigger('x', 'y', {}), (err) => {
    assert.equal(err.status, 401);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
    return true;
  });
});
