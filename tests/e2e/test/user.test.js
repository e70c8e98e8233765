'use strict';
// User authentication (pusher:signin), #server-to-user- events, watchlists, terminate_connections and
// user_authentication_timeout.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const STRICT = { id: '555', key: 'strict-key', secret: 'strict-secret', user_authentication_timeout: 1 };

let server;
before(async () => {
  server = await h.startHerald({ apps: [h.APP, STRICT] });
});

/** pusher-js client signed in as userId (userAuthentication customHandler signing with the SDK). */
async function signedIn(userId, extraUserData = {}) {
  const sdk = server.sdk();
  const client = await h.connectedPusher(server, {
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, sdk.authenticateUser(socketId, { id: String(userId), ...extraUserData })),
    },
  });
  client.signin();
  await h.waitFor(() => client.user.user_data, 5000, `signin of user ${userId}`);
  return client;
}

test('raw signin: pusher:signin_success echoes the user_data', async () => {
  const c = await h.rawConnected(server);
  const userData = JSON.stringify({ id: '1', user_info: { name: 'Alice' } });
  const res = await h.rawSignin(c, h.APP, userData);
  assert.equal(res.event, 'pusher:signin_success', res.raw);
  assert.equal(res.data.user_data, userData);
  assert.ok(c.isOpen);
});

test('pusher-js signin through an auth endpoint (Laravel /broadcasting/user-auth)', async () => {
  const auth = await h.startAuthServer(server);
  const client = await h.connectedPusher(server, h.authOptions(auth, 2));
  client.signin();
  await h.waitFor(() => client.user.user_data, 5000, 'user_data after signin');
  assert.equal(client.user.user_data.id, '2');
  assert.ok(auth.requests.some((r) => r.path === '/broadcasting/user-auth' && r.status === 200));
});

test('signin with a bad signature gets a pusher:error; the socket stays usable and can sign in properly', async () => {
  // Real Pusher documents only a pusher:error for a failed signin (SPEC.md's close 4009 would make pusher-js
  // give up reconnecting for good).
  const c = await h.rawConnected(server);
  const userData = JSON.stringify({ id: '1' });
  c.send({ event: 'pusher:signin', data: { auth: `${h.APP.key}:${'0'.repeat(64)}`, user_data: userData } });
  const err = await c.next('pusher:error');
  assert.equal(typeof err.data.message, 'string', err.raw);
  await c.barrier();
  assert.ok(c.isOpen, 'socket stays open after a failed signin');
  assert.ok(!c.messages.some((m) => m.event === 'pusher:signin_success'));
  const ok = await h.rawSignin(c, h.APP, userData);
  assert.equal(ok.event, 'pusher:signin_success', ok.raw);
});

test('signin with user_data lacking an id is refused', async () => {
  const c = await h.rawConnected(server);
  const res = await h.rawSignin(c, h.APP, JSON.stringify({ user_info: {} }));
  assert.notEqual(res.event, 'pusher:signin_success', res.raw);
});

test('user_authentication_timeout: a socket that never signs in is closed with 4009, a signed-in one stays', async () => {
  const lazy = await h.rawConnected(server, { key: STRICT.key });
  const diligent = await h.rawConnected(server, { key: STRICT.key });
  const res = await h.rawSignin(diligent, STRICT, { id: '42' });
  assert.equal(res.event, 'pusher:signin_success', res.raw);
  const closed = await lazy.waitClose(5000, 'close of the socket that never signed in');
  assert.equal(closed.code, 4009, `close code (reason ${closed.reason})`);
  // the signed-in socket outlived the deadline and still works
  diligent.send({ event: 'pusher:ping', data: {} });
  await diligent.next('pusher:pong');
  assert.ok(diligent.isOpen);
});

test('user_authentication_timeout: a private or presence subscription also authorizes the connection', async () => {
  // Pusher "authorized connections": signed in OR subscribed to at least one private-/presence- channel.
  const lazy = await h.rawConnected(server, { key: STRICT.key });
  const priv = await h.rawConnected(server, { key: STRICT.key });
  const pres = await h.rawConnected(server, { key: STRICT.key });
  assert.equal((await h.rawSubscribePrivate(priv, STRICT, 'private-auth-ok')).event, 'pusher_internal:subscription_succeeded');
  assert.equal((await h.rawJoinPresence(pres, STRICT, 'presence-auth-ok', '5')).event, 'pusher_internal:subscription_succeeded');
  assert.equal((await lazy.waitClose(5000, 'close of the anonymous socket')).code, 4009);
  await priv.barrier();
  await pres.barrier();
  assert.ok(priv.isOpen && pres.isOpen);
});

test('user_authentication_timeout: a public subscription does not authorize the connection', async () => {
  const c = await h.rawConnected(server, { key: STRICT.key });
  await c.subscribeOk('public-only');
  assert.equal((await c.waitClose(5000)).code, 4009);
});

test('user_authentication_timeout = 0 (default) never closes anonymous sockets', async () => {
  const c = await h.rawConnected(server);
  await h.sleep(1500); // bounded absence window: a 1 s timeout would have fired by now
  c.send({ event: 'pusher:ping', data: {} });
  await c.next('pusher:pong');
});

test('#server-to-user-: sendToUser reaches every socket of that user and nobody else', async () => {
  const tab1 = await signedIn(1);
  const tab2 = await signedIn(1);
  const other = await signedIn(2);
  const got1 = h.nextEvent(tab1.user, 'order.shipped');
  const got2 = h.nextEvent(tab2.user, 'order.shipped');
  const otherSeen = h.collect(other.user, 'order.shipped');
  await server.sdk().sendToUser('1', 'order.shipped', { order: 99 });
  assert.deepEqual(await got1, { order: 99 });
  assert.deepEqual(await got2, { order: 99 });
  await h.sleep(300); // bounded absence window
  assert.deepEqual(otherSeen, []);
});

test('#server-to-user-: a signed-in socket may subscribe to its own channel with empty auth (what pusher-js does)', async () => {
  const c = await h.rawConnected(server);
  await h.rawSignin(c, h.APP, { id: '30' });
  c.send({ event: 'pusher:subscribe', data: { auth: '', channel: '#server-to-user-30' } });
  const ok = await c.next((m) => m.channel === '#server-to-user-30' || m.event === 'pusher:error', 5000, 'answer for #server-to-user-30');
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
  await server.sdk().sendToUser('30', 'note', { n: 1 });
  const m = await c.next({ event: 'note' });
  assert.equal(m.channel, '#server-to-user-30');
  assert.deepEqual(m.data, { n: 1 });
  await c.expectNoMessage({ event: 'note' }, 300, 'a duplicate delivery');
});

test('#server-to-user-: another user cannot subscribe their way into someone else\'s events', async () => {
  const victim = await signedIn(10);
  const attacker = await h.rawConnected(server);
  await h.rawSignin(attacker, h.APP, { id: '11' });
  attacker.send({ event: 'pusher:subscribe', data: { auth: '', channel: '#server-to-user-10' } });
  const anon = await h.rawConnected(server);
  anon.send({ event: 'pusher:subscribe', data: { auth: '', channel: '#server-to-user-10' } });
  await attacker.barrier();
  await anon.barrier();
  for (const c of [attacker, anon]) {
    assert.ok(!c.messages.some((m) => m.event === 'pusher_internal:subscription_succeeded'), `must be refused: ${c.summary()}`);
  }
  const got = h.nextEvent(victim.user, 'private.note');
  await server.sdk().sendToUser('10', 'private.note', { text: 'for 10 only' });
  await got;
  await attacker.expectNoMessage({ event: 'private.note' }, 300);
  await anon.expectNoMessage({ event: 'private.note' }, 0);
});

test('watchlist: initial online list, then online/offline as watched users come and go (first/last socket)', async () => {
  const bob = await signedIn(2); // already online before Alice
  const aliceOnline = [];
  const aliceOffline = [];
  const sdk = server.sdk();
  const alice = await h.connectedPusher(server, {
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, sdk.authenticateUser(socketId, { id: '1', watchlist: ['2', '3'] })),
    },
  });
  alice.user.watchlist.bind('online', (e) => aliceOnline.push(e));
  alice.user.watchlist.bind('offline', (e) => aliceOffline.push(e));
  alice.signin();
  await h.waitFor(() => aliceOnline.length >= 1 && aliceOffline.length >= 1, 5000, 'initial watchlist online and offline events');
  assert.deepEqual(aliceOnline[0].user_ids, ['2']);
  // real Pusher reports the current status of *each* watched user after signin, offline ones included
  assert.deepEqual(aliceOffline[0].user_ids, ['3']);
  aliceOffline.length = 0;

  const carol1 = await signedIn(3);
  await h.waitFor(() => aliceOnline.some((e) => e.user_ids.includes('3')), 5000, 'online event for user 3');
  const onlineCount = aliceOnline.length;
  const carol2 = await signedIn(3); // second socket of user 3: not a new "online"
  assert.ok(carol2.user.user_data);

  carol1.disconnect();
  await h.sleep(300); // bounded absence window: user 3 still has a socket
  assert.equal(aliceOnline.length, onlineCount, `no duplicate online: ${JSON.stringify(aliceOnline)}`);
  assert.deepEqual(aliceOffline, [], 'no offline while user 3 still has a socket');

  carol2.disconnect();
  await h.waitFor(() => aliceOffline.some((e) => e.user_ids.includes('3')), 5000, 'offline event for user 3');
  bob.disconnect();
  await h.waitFor(() => aliceOffline.some((e) => e.user_ids.includes('2')), 5000, 'offline event for user 2');
  // unwatched users never show up
  assert.ok(![...aliceOnline, ...aliceOffline].some((e) => e.user_ids.some((id) => !['2', '3'].includes(id))));
});

test('watchlist raw frame format', async () => {
  const watched = await h.rawConnected(server);
  await h.rawSignin(watched, h.APP, { id: '21' });
  const watcher = await h.rawConnected(server);
  const res = await h.rawSignin(watcher, h.APP, { id: '20', watchlist: ['21', '22'] });
  assert.equal(res.event, 'pusher:signin_success', res.raw);
  const ev = await watcher.next('pusher_internal:watchlist_events');
  assert.equal(ev.channel, undefined, 'no channel on watchlist events');
  const events = [...ev.data.events].sort((x, y) => x.name.localeCompare(y.name));
  assert.deepEqual(events, [
    { name: 'offline', user_ids: ['22'] },
    { name: 'online', user_ids: ['21'] },
  ]);
  // the watched user leaves: one offline event
  watched.close();
  const off = await watcher.next('pusher_internal:watchlist_events');
  assert.deepEqual(off.data, { events: [{ name: 'offline', user_ids: ['21'] }] });
});

test('watchlist over 100 ids: pusher:error 4302, signin still succeeds with the first 100', async () => {
  const w = await h.rawConnected(server);
  const ids = Array.from({ length: 101 }, (_, i) => `w${i}`);
  const res = await h.rawSignin(w, h.APP, { id: 'watcher-big', watchlist: ids });
  const frames = [res];
  if (res.event !== 'pusher:signin_success') frames.push(await w.next('pusher:signin_success'));
  else frames.push(await w.next('pusher:error'));
  const err = frames.find((m) => m.event === 'pusher:error');
  assert.equal(err.data.code, 4302, err.raw);
  assert.ok(w.isOpen);
  // w0 (inside the first 100) coming online is reported, w100 (the 101st) is not
  const a = await h.rawConnected(server);
  await h.rawSignin(a, h.APP, { id: 'w100' });
  const b = await h.rawConnected(server);
  await h.rawSignin(b, h.APP, { id: 'w0' });
  const online = await w.next((m) => m.event === 'pusher_internal:watchlist_events' && m.data.events.some((e) => e.name === 'online'));
  assert.deepEqual(online.data.events, [{ name: 'online', user_ids: ['w0'] }]);
});

test('terminate_connections closes all of the user\'s sockets with 4009 and nobody else\'s', async () => {
  const t1 = await h.rawConnected(server);
  const t2 = await h.rawConnected(server);
  const bystander = await h.rawConnected(server);
  for (const [c, id] of [[t1, '77'], [t2, '77'], [bystander, '78']]) {
    assert.equal((await h.rawSignin(c, h.APP, { id })).event, 'pusher:signin_success');
  }
  const res = await server.sdk().terminateUserConnections('77');
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  assert.equal((await t1.waitClose()).code, 4009);
  assert.equal((await t2.waitClose()).code, 4009);
  bystander.send({ event: 'pusher:ping', data: {} });
  await bystander.next('pusher:pong');
  assert.ok(bystander.isOpen);
});
