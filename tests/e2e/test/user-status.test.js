'use strict';
// Online status per user across the cluster (Herald extensions, docs/webhooks.md and docs/protocol.md):
// - GET /apps/{id}/users/{user_id}, signed like the rest, answers whether the user is online anywhere: signed in
//   on some connection, or a member of a presence channel (and which);
// - user_online / user_offline webhooks (a user's first signed-in connection, its last one closing), debounced
//   like member_removed (a reconnect within the hold-back sends neither), sent only to receivers that list them.
const h = require('./harness');
const { startReceiver } = require('./webhook-receiver');
const { test, assert } = h;

const HOLD_BACK_MS = 500;

test('user status API and user_online / user_offline webhooks, debounced, only to receivers that ask', async () => {
  const rxUsers = await startReceiver({ label: 'user events receiver' });
  const rxAll = await startReceiver({ label: 'default receiver' });
  const server = await h.startHerald({
    app: { webhooks: [{ url: rxUsers.url, events: ['user_online', 'user_offline'] }, { url: rxAll.url }] },
    config: { webhook_hold_back_ms: HOLD_BACK_MS },
  });
  const sdk = server.sdk();
  const status = (id) => h.sdkGetJson(sdk, `/users/${id}`);

  assert.deepEqual(await status('7'), { id: '7', online: false, signed_in: false, presence_channels: [] });

  // user 7 signs in: online, one user_online
  const seven = await h.rawConnected(server);
  assert.equal((await h.rawSignin(seven, h.APP, { id: '7' })).event, 'pusher:signin_success');
  const [online] = await rxUsers.waitForEvents({ name: 'user_online', user_id: '7' }, 1, 5000);
  assert.deepEqual(online.event, { name: 'user_online', user_id: '7' }, 'no channel on a user event');
  assert.deepEqual(await status('7'), { id: '7', online: true, signed_in: true, presence_channels: [] });

  // user 8 only joins a presence channel: online through it, no user_online (not signed in)
  const eight = await h.rawConnected(server);
  await h.rawJoinPresence(eight, h.APP, 'presence-shop', '8');
  await h.waitFor(async () => (await status('8')).online, 3000, 'user 8 online');
  assert.deepEqual(await status('8'), { id: '8', online: true, signed_in: false, presence_channels: ['presence-shop'] });

  // user 9 reloads the page (closes and signs in again within the hold-back): nothing sent for the reload
  const nine = await h.rawConnected(server);
  await h.rawSignin(nine, h.APP, { id: '9' });
  await rxUsers.waitForEvents({ name: 'user_online', user_id: '9' }, 1, 5000);
  nine.close();
  await nine.waitClose();
  const nineAgain = await h.rawConnected(server);
  await h.rawSignin(nineAgain, h.APP, { id: '9' });

  // user 7 leaves for good: user_offline after the hold-back, status offline
  seven.close();
  await seven.waitClose();
  await rxUsers.waitForEvents({ name: 'user_offline', user_id: '7' }, 1, HOLD_BACK_MS + 5000);
  assert.deepEqual(await status('7'), { id: '7', online: false, signed_in: false, presence_channels: [] });
  await h.sleep(HOLD_BACK_MS + 500); // proving an absence: user 9's reload
  rxUsers.expectCount({ name: 'user_online', user_id: '9' }, 1);
  rxUsers.expectCount({ name: 'user_offline', user_id: '9' }, 0);
  rxUsers.expectCount({ name: 'user_online' }, 2);
  assert.deepEqual(rxAll.events().filter((e) => e.name.startsWith('user_')), [], 'a receiver without a filter gets Pusher\'s kinds only');
  assert.ok(rxAll.names().includes('member_added'), 'while it gets those');
  rxUsers.assertAllValid();
  rxAll.assertAllValid();
});
