'use strict';
// A large presence channel across a cluster (2 gateways, an ingest, NATS): laravel-echo watchers on both gateways
// see every shopper of both within 1 s of the last join; every shopper learns the cluster-wide member count and
// hears no member event; the cap is cluster-wide; a gateway killed with SIGKILL: each of its shoppers leaves the
// watcher on the survivor exactly once within 5 s, and the survivor's shoppers get counts, not a storm of frames.
const h = require('./harness');
const ch = require('./cluster-harness');
const crowd = require('./crowd');
const { assert } = h;
const { test } = ch;

const PER_GATEWAY = 100;
// A crashed gateway's members are removed once its heartbeat has run out (node_ttl 3 s + 1 s grace + up to one
// 1 s beat: the 5 s of cluster-node-crash.test.js), and watchers hear it in the next burst (100 ms).
const REMOVAL_BOUND_MS = 5000 + 100;
const CROWD = {
  id: '444',
  key: 'crowd-key',
  secret: 'crowd-secret',
  large_presence_prefixes: ['presence-user-presence'],
  max_large_presence_members: 2 * PER_GATEWAY + 2,
};

const { CHANNEL, watcher, shopper, inBatches, knownCount } = crowd;

test('a large presence channel across two gateways: watchers see all, shoppers the count; a crashed gateway leaves once', { timeout: 120000 }, async (t) => {
  const cluster = await ch.startCluster({ gateways: 2, apps: [CROWD] });
  const [a, b] = cluster.gateways;
  const onA = await watcher(a, 'wa');
  const onB = await watcher(b, 'wb');
  const shoppersA = await inBatches(PER_GATEWAY, 50, (i) => shopper(a, `a${i}`));
  const shoppersB = await inBatches(PER_GATEWAY, 50, (i) => shopper(b, `b${i}`));
  const lastJoin = Date.now();
  const everyone = 2 * PER_GATEWAY + 2;

  await h.waitFor(() => onA.members.size === everyone && onB.members.size === everyone, 5000, `both watchers list all ${everyone} members`);
  const exactAfter = Date.now() - lastJoin;
  t.diagnostic(`[timing] both watchers exact ${exactAfter} ms after the last join`);
  assert.ok(exactAfter <= 1000, `watchers exact within 1 s of the last join: ${exactAfter} ms`);
  for (const seen of [onA, onB]) assert.equal(seen.joined.length, new Set(seen.joined).size, 'nobody announced twice');
  const shoppers = [...shoppersA, ...shoppersB];
  await h.waitFor(() => shoppers.every((s) => knownCount(s) === everyone), 5000, 'every shopper knows the cluster-wide count');
  assert.equal(shoppers.flatMap((s) => s.added).length, 0, 'no member_added reaches a shopper');

  // full cluster-wide: a shopper on either gateway is refused
  for (const node of [a, b]) {
    const late = await h.connectedPusher(node, h.customAuthOptions(node, `late-${node.nodeId}`, { name: 'late' }));
    assert.equal((await h.subscriptionError(late, CHANNEL)).status, 403, `refused on ${node.label}`);
  }

  // gateway B crashes: its 100 shoppers and its watcher leave the watcher on A, once each, within 5 s
  const countsBefore = shoppersA.map((s) => s.counts.length);
  const killedAt = Date.now();
  await b.kill9();
  const gone = new Set([...shoppersB.map((_, i) => `shopper b${i}`), 'admin wb']);
  await h.waitFor(() => [...gone].every((name) => onA.left.includes(name)), REMOVAL_BOUND_MS + 1000, 'the watcher on A sees every member of B leave');
  const removedAfter = Date.now() - killedAt;
  t.diagnostic(`[timing] B's ${gone.size} members removed at the watcher on A ${removedAfter} ms after the kill`);
  assert.ok(removedAfter <= REMOVAL_BOUND_MS, `removed within ${REMOVAL_BOUND_MS} ms of the kill: ${removedAfter} ms`);
  assert.equal(onA.left.length, gone.size, 'each left exactly once, nobody else');
  assert.equal(onA.members.size, PER_GATEWAY + 1);
  // A's shoppers: the new count, in a handful of frames, no member events
  await h.waitFor(() => shoppersA.every((s) => knownCount(s) === PER_GATEWAY + 1), 5000, 'the count after the crash');
  const framesPerShopper = Math.max(...shoppersA.map((s, i) => s.counts.length - countsBefore[i]));
  t.diagnostic(`[timing] count frames per shopper on A for the crash: ${framesPerShopper}`);
  assert.ok(framesPerShopper <= 3, `no storm: ${framesPerShopper} count frames per shopper`);
  assert.equal(shoppersA.flatMap((s) => s.removed).length, 0, 'no member_removed reaches a shopper');
});
