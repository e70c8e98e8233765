'use strict';
// Presence channels: member list on subscribe, member_added on a user's first connection only,
// member_removed on the last one only, member cap and user_info size cap.
const { before } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const CAPPED = { id: '222', key: 'capped-key', secret: 'capped-secret', max_presence_members: 2, max_presence_user_info_bytes: 64 };

let server;
before(async () => {
  server = await h.startHerald({ apps: [h.APP, CAPPED] });
});

function presenceClient(userId, name) {
  return h.connectedPusher(server, h.customAuthOptions(server, userId, { name }));
}

test('raw subscription_succeeded carries ids, hash and count of the members', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  const ra = await h.rawJoinPresence(a, h.APP, 'presence-raw', '1', { name: 'Alice' });
  assert.equal(ra.event, 'pusher_internal:subscription_succeeded', ra.raw);
  assert.deepEqual(ra.data.presence, { ids: ['1'], hash: { 1: { name: 'Alice' } }, count: 1 });
  const rb = await h.rawJoinPresence(b, h.APP, 'presence-raw', '2', { name: 'Bob' });
  assert.equal(rb.event, 'pusher_internal:subscription_succeeded', rb.raw);
  assert.deepEqual([...rb.data.presence.ids].sort(), ['1', '2']);
  assert.deepEqual(rb.data.presence.hash, { 1: { name: 'Alice' }, 2: { name: 'Bob' } });
  assert.equal(rb.data.presence.count, 2);
  const added = await a.next({ event: 'pusher_internal:member_added', channel: 'presence-raw' });
  assert.deepEqual(added.data, { user_id: '2', user_info: { name: 'Bob' } });
  // the joiner itself does not get a member_added for itself
  await b.expectNoMessage({ event: 'pusher_internal:member_added' }, 300);
});

test('member_added only for a user\'s first connection, member_removed only when the last one leaves', async () => {
  const alice = await presenceClient(1, 'Alice');
  const aliceCh = await h.subscribed(alice, 'presence-room');
  const added = h.collect(aliceCh, 'pusher:member_added');
  const removed = h.collect(aliceCh, 'pusher:member_removed');

  const bob1 = await presenceClient(2, 'Bob');
  const bobCh1 = await h.subscribed(bob1, 'presence-room');
  await h.waitFor(() => added.length === 1, 5000, 'member_added for Bob');
  assert.equal(added[0].data.id, '2');
  assert.deepEqual(added[0].data.info, { name: 'Bob' });
  assert.equal(bobCh1.members.count, 2);
  assert.equal(bobCh1.members.me.id, '2');
  assert.deepEqual(bobCh1.members.get('1').info, { name: 'Alice' });

  // Bob's second tab: no second member_added, members still 2
  const bob2 = await presenceClient(2, 'Bob');
  const bobCh2 = await h.subscribed(bob2, 'presence-room');
  assert.equal(bobCh2.members.count, 2, 'same user twice is one member');
  await h.noEventWithin(aliceCh, 'pusher:member_added', 300);
  assert.equal(added.length, 1);
  assert.equal(aliceCh.members.count, 2);

  // Bob's third connection is a raw socket, so we can see the server complete the close handshake
  const bob3 = await h.rawConnected(server);
  assert.equal((await h.rawJoinPresence(bob3, h.APP, 'presence-room', '2', { name: 'Bob' })).event, 'pusher_internal:subscription_succeeded');

  // Bob closes two of his three tabs: nobody leaves
  bob1.disconnect();
  bob3.close();
  await bob3.waitClose(); // the server answered the close frame, so it has seen this socket go
  await h.waitFor(() => bob1.connection.state === 'disconnected', 5000, 'bob1 disconnected');
  await h.noEventWithin(aliceCh, 'pusher:member_removed', 500); // bounded absence window
  assert.equal(removed.length, 0, 'no member_removed while Bob still has a connection');

  // last tab closes: Bob leaves
  bob2.disconnect();
  await h.waitFor(() => removed.length === 1, 5000, 'member_removed for Bob');
  assert.equal(removed[0].data.id, '2');
  assert.equal(aliceCh.members.count, 1);
});

test('unsubscribing (not disconnecting) also removes the member', async () => {
  const alice = await presenceClient(1, 'Alice');
  const aliceCh = await h.subscribed(alice, 'presence-unsub');
  const carol = await presenceClient(3, 'Carol');
  await h.subscribed(carol, 'presence-unsub');
  await h.waitFor(() => aliceCh.members.count === 2, 5000, 'Carol to be a member');
  const gone = h.nextEvent(aliceCh, 'pusher:member_removed');
  carol.unsubscribe('presence-unsub');
  assert.equal((await gone).id, '3');
});

test('presence subscription with a bad signature, bad channel_data or an over-long user id is refused', async () => {
  const c = await h.rawConnected(server);
  const channelData = JSON.stringify({ user_id: '1', user_info: { name: 'A' } });
  // signature over different channel_data
  const wrong = h.channelAuth(h.APP, c.id, 'presence-auth', JSON.stringify({ user_id: '2' }));
  await h.expectAuthRefused(c, 'presence-auth', { auth: wrong, channel_data: channelData }, 'signature over other channel_data');
  // signature without channel_data (private-style) on a presence channel, channel_data sent
  await h.expectAuthRefused(c, 'presence-auth', { auth: h.channelAuth(h.APP, c.id, 'presence-auth'), channel_data: channelData }, 'private-style signature');
  // channel_data without user_id, correctly signed: must not succeed
  const noUser = JSON.stringify({ user_info: {} });
  let res = await c.subscribe('presence-auth', { auth: h.channelAuth(h.APP, c.id, 'presence-auth', noUser), channel_data: noUser });
  assert.notEqual(res.event, 'pusher_internal:subscription_succeeded', res.raw);
  // a user id longer than 128 characters is refused (Pusher limit), correctly signed
  const longId = JSON.stringify({ user_id: 'u'.repeat(129) });
  res = await c.subscribe('presence-auth', { auth: h.channelAuth(h.APP, c.id, 'presence-auth', longId), channel_data: longId });
  assert.notEqual(res.event, 'pusher_internal:subscription_succeeded', res.raw);
  // still usable
  const ok = await h.rawJoinPresence(c, h.APP, 'presence-auth', '1', { name: 'A' });
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
});

test('max_presence_members: the member over the cap is refused with 403, existing members can add connections', async () => {
  const key = { key: CAPPED.key };
  const u1 = await h.rawConnected(server, key);
  const u2 = await h.rawConnected(server, key);
  const u3 = await h.rawConnected(server, key);
  const u1b = await h.rawConnected(server, key);
  assert.equal((await h.rawJoinPresence(u1, CAPPED, 'presence-capped', '1', {})).event, 'pusher_internal:subscription_succeeded');
  assert.equal((await h.rawJoinPresence(u2, CAPPED, 'presence-capped', '2', {})).event, 'pusher_internal:subscription_succeeded');
  assert.equal((await u1.next('pusher_internal:member_added')).data.user_id, '2');
  const refused = await h.rawJoinPresence(u3, CAPPED, 'presence-capped', '3', {});
  assert.equal(refused.event, 'pusher:subscription_error', refused.raw);
  assert.equal(refused.data.status, 403, refused.raw);
  assert.equal(refused.data.type, 'LimitReached', refused.raw);
  assert.ok(u3.isOpen, 'refused socket stays open');
  // the refused user was never announced
  await u1.expectNoMessage({ event: 'pusher_internal:member_added' }, 300);
  // a second connection of an existing member is not a new member
  const again = await h.rawJoinPresence(u1b, CAPPED, 'presence-capped', '1', {});
  assert.equal(again.event, 'pusher_internal:subscription_succeeded', again.raw);
  assert.equal(again.data.presence.count, 2);
  // once member 2 leaves, member 3 fits
  u2.close();
  await h.waitFor(
    async () => {
      const r = await h.rawJoinPresence(u3, CAPPED, 'presence-capped', '3', {});
      return r.event === 'pusher_internal:subscription_succeeded';
    },
    5000,
    'user 3 to fit after user 2 left',
    100,
  );
});

test('max_presence_user_info_bytes: oversized user_info is refused with 403 and the socket stays open', async () => {
  const c = await h.rawConnected(server, { key: CAPPED.key });
  const res = await h.rawJoinPresence(c, CAPPED, 'presence-info', '9', { bio: 'x'.repeat(200) });
  assert.equal(res.event, 'pusher:subscription_error', res.raw);
  assert.equal(res.data.status, 403, res.raw);
  assert.equal(res.data.type, 'LimitReached', res.raw);
  const ok = await h.rawJoinPresence(c, CAPPED, 'presence-info', '9', { bio: 'short' });
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
});

test('a numeric user_id in channel_data is reported as a string', async () => {
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await h.rawJoinPresence(a, h.APP, 'presence-numeric', 'first');
  const cd = JSON.stringify({ user_id: 10, user_info: { name: 'Ten' } });
  const ok = await b.subscribe('presence-numeric', { auth: h.channelAuth(h.APP, b.id, 'presence-numeric', cd), channel_data: cd });
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
  assert.ok(ok.data.presence.ids.includes('10'), ok.raw);
  assert.deepEqual(ok.data.presence.hash['10'], { name: 'Ten' });
  const added = await a.next('pusher_internal:member_added');
  assert.equal(added.data.user_id, '10', added.raw);
});
