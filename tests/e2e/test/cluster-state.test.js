'use strict';
// Channel state off the connection path (docs/presence.md, "The write path"):
// - max_presence_members holds cluster-wide: joins racing on two gateways admit exactly the cap, and every
//   node agrees on who got in;
// - with NATS stalled (SIGSTOP: its TCP connections stay up, nothing answers), subscribes to fresh public
//   channels and a presence join are still answered promptly, and the join is replicated once NATS is back.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

const SUCCEEDED = 'pusher_internal:subscription_succeeded';

/** Sends a presence subscribe as `userId` and resolves with the server's answer (success or error). */
async function join(client, channel, userId) {
  const socketId = await client.socketId();
  const channelData = JSON.stringify({ user_id: String(userId), user_info: { name: `user ${userId}` } });
  return client.subscribe(channel, { auth: h.channelAuth(h.APP, socketId, channel, channelData), channel_data: channelData });
}

test('max_presence_members holds cluster-wide: racing joins on two gateways admit exactly the cap', async () => {
  const CAP = 3;
  const CHANNEL = 'presence-capped';
  const cluster = await ch.startCluster({ gateways: 2, app: { max_presence_members: CAP } });
  const [gwA, gwB] = cluster.gateways;
  const clients = await Promise.all(Array.from({ length: 8 }, (_, i) => h.rawConnected(i % 2 ? gwB : gwA)));
  const answers = await Promise.all(clients.map((c, i) => join(c, CHANNEL, `u${i}`)));

  const admitted = answers.flatMap((m, i) => (m.event === SUCCEEDED ? [`u${i}`] : []));
  assert.equal(admitted.length, CAP, `admitted: ${answers.map((m) => m.raw).join('\n')}`);
  for (const m of answers.filter((a) => a.event !== SUCCEEDED)) {
    assert.equal(m.event, 'pusher:subscription_error', m.raw);
    assert.equal(m.data.type, 'LimitReached', m.raw);
  }
  // Every node, the HTTP API included, lists exactly the admitted members.
  const sdk = cluster.sdk();
  const users = async () => (await h.sdkGetJson(sdk, `/channels/${CHANNEL}/users`)).users.map((u) => u.id).sort();
  await h.waitFor(async () => JSON.stringify(await users()) === JSON.stringify([...admitted].sort()), 5000, 'ingest lists the admitted users');
  const late = await h.rawConnected(gwB);
  const refused = await join(late, CHANNEL, 'late');
  assert.equal(refused.event, 'pusher:subscription_error', `a full channel refuses a new user: ${refused.raw}`);
  const again = await join(await h.rawConnected(gwA), CHANNEL, admitted[0]);
  assert.equal(again.event, SUCCEEDED, `an admitted user's second socket is no new member: ${again.raw}`);
  assert.deepEqual([...again.data.presence.ids].sort(), [...admitted].sort());

  // A member leaving frees a place for a new user: the refused users' entries hold none.
  const leaver = admitted[1];
  clients[Number(leaver.slice(1))].close();
  await h.waitFor(async () => !(await users()).includes(leaver), 5000, `${leaver} left`);
  const newcomer = await join(await h.rawConnected(gwB), CHANNEL, 'newcomer');
  assert.equal(newcomer.event, SUCCEEDED, newcomer.raw);
});

test('NATS stalled: fresh public subscribes and a presence join are answered at once, the join replicates after', async () => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  const client = await h.rawConnected(gwA);
  const observer = await h.rawConnected(gwB);
  await join(observer, 'presence-stall', 'observer');
  const nats = cluster.natsServers[0];
  process.kill(nats.pid, 'SIGSTOP');
  let resumed = false;
  const resume = () => {
    if (!resumed) process.kill(nats.pid, 'SIGCONT');
    resumed = true;
  };
  h.track(resume);
  try {
    const started = Date.now();
    for (let i = 0; i < 6; i++) await client.subscribeOk(`fresh-${i}`, { timeoutMs: 3000 });
    const publicMs = Date.now() - started;
    // Each first subscriber of a channel waits at most 0.5 s for the channel's NATS subscription.
    assert.ok(publicMs < 6 * 1000, `6 fresh public subscribes took ${publicMs} ms with NATS stalled`);
    const joinStarted = Date.now();
    const joined = await join(client, 'presence-stall', 'joiner');
    const joinMs = Date.now() - joinStarted;
    assert.equal(joined.event, SUCCEEDED, joined.raw);
    assert.ok(joinMs < 2000, `a presence join took ${joinMs} ms with NATS stalled (bound: 0.5 s KV + 0.5 s bus)`);
    assert.ok(joined.data.presence.ids.includes('joiner'), 'the joiner is in its own member list');
  } finally {
    resume();
  }
  // Once NATS answers, the member joined during the stall reaches the other gateway and the API.
  await observer.next((m) => m.event === 'pusher_internal:member_added' && m.data.user_id === 'joiner', 15000, 'member_added on B');
  const users = await h.sdkGetJson(cluster.sdk(), '/channels/presence-stall/users');
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['joiner', 'observer']);
});
