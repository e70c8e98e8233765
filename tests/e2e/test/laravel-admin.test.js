'use strict';
// Seed scenario: a Laravel app using Echo (broadcaster "pusher") against Herald, with an admin-only
// monitoring channel, an admin presence channel and an order channel that customers may not join.
//
//   routes/channels.php (emulated by startAuthServer):
//     Broadcast::channel('admin-monitoring', fn ($user) => $user->isAdmin());
//     Broadcast::channel('admin-presence',   fn ($user) => $user->isAdmin() ? ['id' => $user->id, 'name' => $user->name] : false);
//     Broadcast::channel('admin-orders',     fn ($user) => $user->isAdmin());
//   The backend broadcasts with the pusher SDK: event `user.online` (broadcastAs) on `private-admin-monitoring`.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

let server;
before(async () => {
  server = await h.startHerald();
});

const ALICE = 1; // admin
const BOB = 2; // admin
const CAROL = 3; // customer

test('Echo.private("admin-monitoring").listen(".user.online") receives the SDK-triggered event', async () => {
  const auth = await h.startAuthServer(server);
  const echo = await h.echoClient(server, auth, ALICE);
  const received = new Promise((resolve) => {
    echo.private('admin-monitoring').listen('.user.online', (e) => resolve(e));
  });
  const subscribed = new Promise((resolve, reject) => {
    echo.private('admin-monitoring').subscribed(resolve).error((e) => reject(new Error(`subscription error ${JSON.stringify(e)}`)));
  });
  await h.withTimeout(subscribed, 5000, 'Echo subscription to private-admin-monitoring');
  assert.ok(
    auth.requests.some((r) => r.channel === 'private-admin-monitoring' && r.user === String(ALICE) && r.status === 200),
    `auth endpoint signed the channel: ${JSON.stringify(auth.requests)}`,
  );

  const res = await server.sdk().trigger('private-admin-monitoring', 'user.online', { user: { id: 42, name: 'Zed' }, at: '2026-12-01T00:00:00Z' });
  assert.equal(res.status, 200);
  const payload = await h.withTimeout(received, 5000, '.user.online via Echo');
  assert.deepEqual(payload, { user: { id: 42, name: 'Zed' }, at: '2026-12-01T00:00:00Z' });
});

test('Echo.join("admin-presence"): here / joining / leaving with two admins', async () => {
  const auth = await h.startAuthServer(server);
  const alice = await h.echoClient(server, auth, ALICE);
  const aliceHere = [];
  const joined = [];
  const left = [];
  const aliceReady = new Promise((resolve) => {
    alice
      .join('admin-presence')
      .here((users) => {
        aliceHere.push(users);
        resolve();
      })
      .joining((u) => joined.push(u))
      .leaving((u) => left.push(u))
      .error((e) => joined.push({ error: e }));
  });
  await h.withTimeout(aliceReady, 5000, 'alice here()');
  assert.deepEqual(aliceHere[0], [{ id: '1', name: 'Alice Admin' }]);

  const bob = await h.echoClient(server, auth, BOB);
  const bobHere = await h.withTimeout(new Promise((resolve) => bob.join('admin-presence').here(resolve)), 5000, 'bob here()');
  assert.deepEqual(
    [...bobHere].sort((a, b) => a.id.localeCompare(b.id)),
    [
      { id: '1', name: 'Alice Admin' },
      { id: '2', name: 'Bob Admin' },
    ],
  );
  await h.waitFor(() => joined.length === 1, 5000, 'alice joining(bob)');
  assert.deepEqual(joined[0], { id: '2', name: 'Bob Admin' });

  bob.leave('admin-presence');
  await h.waitFor(() => left.length === 1, 5000, 'alice leaving(bob)');
  assert.deepEqual(left[0], { id: '2', name: 'Bob Admin' });
});

test('a customer is refused private-admin-orders (403 from /broadcasting/auth) and gets no events', async () => {
  const auth = await h.startAuthServer(server);
  const carol = await h.echoClient(server, auth, CAROL);
  const alice = await h.echoClient(server, auth, ALICE);

  const carolEvents = [];
  const carolError = new Promise((resolve) => {
    carol
      .private('admin-orders')
      .listen('.order.created', (e) => carolEvents.push(e))
      .error((e) => resolve(e));
  });
  const err = await h.withTimeout(carolError, 5000, 'subscription error for the customer');
  assert.equal(err.status, 403, JSON.stringify(err));
  assert.ok(auth.requests.some((r) => r.channel === 'private-admin-orders' && r.user === String(CAROL) && r.status === 403));

  // an admin on the same channel gets the event; the customer gets nothing
  const aliceGot = new Promise((resolve) => alice.private('admin-orders').listen('.order.created', resolve));
  await h.echoSubscribed(alice.private('admin-orders'));
  await server.sdk().trigger('private-admin-orders', 'order.created', { id: 1001, total: '99.00' });
  assert.deepEqual(await h.withTimeout(aliceGot, 5000, 'admin receives order.created'), { id: 1001, total: '99.00' });
  await h.sleep(300); // bounded absence window: the customer must not receive it
  assert.deepEqual(carolEvents, []);

  // the server agrees: only one subscriber on the channel
  const info = await h.sdkGetJson(server.sdk(), '/channels/private-admin-orders', { info: 'subscription_count' });
  assert.equal(info.subscription_count, 1, JSON.stringify(info));

  // and the customer's connection is otherwise healthy: public channels still work
  const pub = new Promise((resolve) => carol.channel('shop').listen('.sale.started', resolve));
  await h.echoSubscribed(carol.channel('shop'));
  await server.sdk().trigger('shop', 'sale.started', { pct: 20 });
  assert.deepEqual(await h.withTimeout(pub, 5000, 'carol gets the public sale event'), { pct: 20 });
});

test('a customer is also refused the admin presence channel and never appears in it', async () => {
  const auth = await h.startAuthServer(server);
  const alice = await h.echoClient(server, auth, ALICE);
  const joined = [];
  await h.withTimeout(
    new Promise((resolve) => alice.join('admin-presence').here(resolve).joining((u) => joined.push(u))),
    5000,
    'alice here()',
  );
  const carol = await h.echoClient(server, auth, CAROL);
  const err = await h.withTimeout(new Promise((resolve) => carol.join('admin-presence').error(resolve)), 5000, 'carol refused');
  assert.equal(err.status, 403);
  await h.sleep(300); // bounded absence window
  assert.deepEqual(joined, []);
  const users = await h.sdkGetJson(server.sdk(), '/channels/presence-admin-presence/users');
  assert.deepEqual(users.users.map((u) => u.id), ['1']);
});
