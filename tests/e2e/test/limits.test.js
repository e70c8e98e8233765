'use strict';
// Per-connection limits: oversized client messages (1009) and slow consumers (4100).
const h = require('./harness');
const { test, assert } = h;

test('a client message over max_message_bytes closes that socket with 1009; other sockets keep working', async () => {
  const server = await h.startHerald({ config: { max_message_bytes: 4096 } });
  const big = await h.rawConnected(server);
  const bystander = await h.rawConnected(server);
  await bystander.subscribeOk('lobby');

  // just under the limit is fine
  const padding = 'p'.repeat(3000);
  big.send({ event: 'pusher:ping', data: { padding } });
  await big.next('pusher:pong');

  big.send({ event: 'pusher:ping', data: { padding: 'x'.repeat(8192) } });
  const closed = await big.waitClose(5000, 'close after an oversized message');
  assert.equal(closed.code, 1009, `close code (reason ${closed.reason})`);

  await server.sdk().trigger('lobby', 'still-here', { ok: true });
  assert.deepEqual((await bystander.next({ event: 'still-here' })).data, { ok: true });
  // new connections are accepted too
  const fresh = await h.rawConnected(server);
  fresh.send({ event: 'pusher:ping', data: {} });
  await fresh.next('pusher:pong');
});

test('a fragmented message whose reassembled size exceeds max_message_bytes also closes with 1009', async () => {
  const server = await h.startHerald({ config: { max_message_bytes: 4096 } });
  const c = await h.rawConnected(server);
  const payload = JSON.stringify({ event: 'pusher:ping', data: { padding: 'f'.repeat(6000) } });
  // three fragments, each under the limit
  const parts = [payload.slice(0, 2000), payload.slice(2000, 4000), payload.slice(4000)];
  c.ws.send(parts[0], { fin: false });
  c.ws.send(parts[1], { fin: false });
  c.ws.send(parts[2], { fin: true });
  const closed = await c.waitClose(5000, 'close after an oversized fragmented message');
  assert.equal(closed.code, 1009, `close code (reason ${closed.reason})`);
});

test('a slow consumer whose outbox overflows is closed with 4100; a fast subscriber gets everything', async () => {
  const server = await h.startHerald({
    config: { outbox_capacity: 8 },
    app: { max_event_payload_bytes: 200000 },
  });
  const slow = await h.rawConnected(server);
  const fast = await h.rawConnected(server);
  await slow.subscribeOk('firehose');
  await fast.subscribeOk('firehose');
  // stop reading from the slow socket: the kernel buffers fill and then Herald's outbox does
  slow.ws._socket.pause();

  const sdk = server.sdk();
  const blob = 'z'.repeat(150000);
  const N = 200; // ~30 MB: far more than loopback socket buffers hold
  let fastCount = 0;
  fast.ws.on('message', (raw) => {
    if (raw.toString().includes('"event":"chunk"')) fastCount++;
  });
  for (let i = 0; i < N; i++) {
    await sdk.trigger('firehose', 'chunk', blob);
  }
  await h.waitFor(() => fastCount === N, 20000, `fast subscriber to receive all ${N} chunks (has ${fastCount})`);

  slow.ws._socket.resume();
  const closed = await slow.waitClose(15000, 'slow consumer close');
  const slowCount = slow.messages.filter((m) => m.event === 'chunk').length;
  assert.ok(slowCount < N, `slow consumer must not have received everything (${slowCount}/${N})`);
  assert.equal(closed.code, 4100, `slow consumer close code (reason ${closed.reason}, received ${slowCount}/${N})`);
  assert.ok(fast.isOpen, 'fast subscriber unaffected');
});
