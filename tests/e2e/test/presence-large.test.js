'use strict';
// Large presence channels (an app's large_presence_prefixes), as the store's `user-presence` channel uses them:
// hundreds of shoppers who are only counted, watched by admins whose signed user_info says "watcher": true.
// Watchers (laravel-echo) keep here / joining / leaving, with member events in bursts; everyone else gets a
// subscription_succeeded holding only itself and the true count, no member events, and the member count as
// pusher:subscription_count. The cap of a large channel is its own (max_large_presence_members).
const { before } = require('node:test');
const h = require('./harness');
const crowd = require('./crowd');
const { test, assert } = h;

const SHOPPERS = 250;
const CROWD = {
  id: '333',
  key: 'crowd-key',
  secret: 'crowd-secret',
  large_presence_prefixes: ['presence-user-presence'],
  max_large_presence_members: SHOPPERS + 2,
  max_presence_members: 100,
};
const { CHANNEL } = crowd;

let server;
before(async () => {
  server = await h.startHerald({ apps: [CROWD] });
});

const watcher = (id) => crowd.watcher(server, id);
const counted = (id) => crowd.shopper(server, id);
const { inBatches } = crowd;

test('a large presence channel: watchers see every member through Echo, the crowd only itself and the count', { timeout: 120000 }, async () => {
  const w1 = await watcher('a1');
  const shoppers = await inBatches(SHOPPERS, 50, (i) => counted(`s${i}`));
  const w2 = await watcher('a2');
  const everyone = SHOPPERS + 2;

  // A shopper's list holds itself alone, with the channel's count at its join.
  for (const [i, s] of shoppers.entries()) {
    assert.deepEqual(Object.keys(s.channel.members.members), [`s${i}`], `shopper ${i}'s list`);
    assert.equal(s.channel.members.me.id, `s${i}`);
    // joined in batches of 50: at least the watcher, the earlier batches and itself
    assert.ok(s.channel.members.count >= Math.floor(i / 50) * 50 + 2, `shopper ${i} joined with count ${s.channel.members.count}`);
  }
  // The second watcher's here() has everyone else; the first watcher heard every shopper join.
  assert.equal(w2.members.size, everyone, "second watcher: here() lists every member, itself included");
  await h.waitFor(() => w1.members.size === everyone, 1000, 'first watcher: every shopper and the other admin within 1 s');
  assert.deepEqual(new Set(w1.joined), new Set([...shoppers.map((_, i) => `shopper s${i}`), 'admin a2']), 'each joined once');
  assert.equal(w1.joined.length, SHOPPERS + 1, 'no member announced twice');

  // Every subscriber learns the member count; no shopper hears anyone join.
  await h.waitFor(() => shoppers.every((s) => crowd.knownCount(s) === everyone), 3000, `every shopper knows the count ${everyone}`);
  assert.deepEqual(shoppers.flatMap((s) => s.added.map((e) => e.data)), [], 'no member_added reaches a shopper');
  const countsPerShopper = Math.max(...shoppers.map((s) => s.counts.length));
  assert.ok(countsPerShopper <= 15, `counts come at most once a second per channel: up to ${countsPerShopper} per shopper`);

  // The channel is full at max_large_presence_members; max_presence_members (100) does not apply to it.
  const late = await h.connectedPusher(server, h.customAuthOptions(server, 'late', { name: 'shopper late' }));
  const refused = await h.subscriptionError(late, CHANNEL);
  assert.equal(refused.status, 403, JSON.stringify(refused));

  // 50 shoppers leave: each is announced once to the watchers (in bursts), the count follows.
  const leaving = shoppers.splice(0, 50);
  for (const s of leaving) s.client.disconnect();
  await h.waitFor(() => w1.left.length === 50 && w2.left.length === 50, 3000, 'both watchers saw the 50 leave');
  assert.deepEqual(new Set(w1.left), new Set(leaving.map((_, i) => `shopper s${i}`)));
  await h.waitFor(() => shoppers.every((s) => crowd.knownCount(s) === everyone - 50), 3000, 'the count follows the departures');
  assert.equal(w2.members.size, everyone - 50, 'second watcher: the remaining members');
});

// (A user who leaves and comes back within one burst is not announced at all: crates/gateway/src/crowd.rs
// tests that deterministically; here the burst boundary would make it a matter of timing.)
test('the HTTP API lists every member of a large presence channel and counts them; Echo on a shopper: here() is itself, the count comes as .pusher:subscription_count', async () => {
  await watcher('a3');
  // a shopper with laravel-echo, as docs/laravel.md shows it
  const echo = await h.echoClient(server, { url: 'http://127.0.0.1:9' }, null, h.customAuthOptions(server, 'echo-shopper', { name: 'shopper echo' }));
  const counts = [];
  const here = await h.withTimeout(
    new Promise((resolve) => {
      echo
        .join('user-presence')
        .here(resolve)
        .listen('.pusher:subscription_count', (e) => counts.push(e.subscription_count));
    }),
    10000,
    'Echo here() of a shopper',
  );
  assert.deepEqual(here, [{ name: 'shopper echo' }], 'here() lists the shopper alone');
  await inBatches(30, 30, (i) => counted(`api${i}`));
  await h.waitFor(() => counts.at(-1) === 32, 3000, 'the Echo shopper told 32 members online');
  const sdk = server.sdk();
  const users = await h.sdkGetJson(sdk, `/channels/${CHANNEL}/users`);
  assert.deepEqual(new Set(users.users.map((u) => u.id)), new Set(['a3', 'echo-shopper', ...Array.from({ length: 30 }, (_, i) => `api${i}`)]));
  const info = await h.sdkGetJson(sdk, `/channels/${CHANNEL}`, { info: 'user_count' });
  assert.equal(info.user_count, 32);
  // paged (a Herald extension): ids in order, 10 at a time, next_after until the last page
  const pages = [];
  let after;
  for (let i = 0; i < 10; i++) {
    const page = await h.sdkGetJson(sdk, `/channels/${CHANNEL}/users`, after === undefined ? { limit: 10 } : { limit: 10, after });
    pages.push(page.users.map((u) => u.id));
    after = page.next_after;
    if (after === undefined) break;
  }
  assert.deepEqual(pages.map((p) => p.length), [10, 10, 10, 2]);
  assert.deepEqual(pages.flat(), users.users.map((u) => u.id).sort(), 'every member once, in id order');
  const bad = await sdk.get({ path: `/channels/${CHANNEL}/users`, params: { limit: 0 } }).catch((e) => e);
  assert.equal(bad.status, 400, 'limit 0 is refused');
});
