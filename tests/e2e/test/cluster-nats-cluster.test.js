'use strict';
// Herald on a 3-server NATS cluster (JetStream, KV buckets with 3 replicas: `kv_replicas = 3`). Gateway A is
// given the server list [s1,s2,s3], gateway B [s2,s3,s1]; the NATS server gateway A is connected to is killed
// (SIGKILL). Clients on both gateways must keep receiving triggers made through the ingest: a trigger may be
// refused (503, or 504 when NATS failed under it) while the ingest fails over; every trigger the ingest accepted
// reaches every subscriber on both gateways, never twice and in order, also those published while gateway A was
// reconnecting (read back from the event stream: docs/architecture.md, "Lossless delivery"). The same at
// 1,000 triggers/s with 1,000 sockets is in cluster-lossless.test.js.
//
// Presence after losing a server (and JetStream without quorum) is asserted in cluster-jetstream-loss.test.js.
//
// The first test gives every node the comma-separated list of all servers; the second gives each node one
// seed URL (the others are learnt from the cluster's INFO) and keeps the ingest on a surviving server.
// Run with CLUSTER_LOG_DIR=/some/dir to keep the full logs of every process.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

/** The server (of `servers`) whose /connz lists the NATS client named `name`, or undefined. */
async function serverOf(servers, name) {
  for (const s of servers) {
    if (!s.running) continue;
    try {
      if ((await s.connections()).some((c) => c.name === name)) return s;
    } catch {
      /* monitoring not answering */
    }
  }
  return undefined;
}

const ids = (list) => list.map((e) => e.data.id);

/**
 * @param {Function} urls (servers) => {a, b, ingest}: the --nats lists of gateway A, gateway B and the ingest
 */
async function failover(urls) {
  const servers = await ch.startNatsCluster(3);
  const [s1] = servers;
  const lists = urls(servers);
  const cluster = await ch.startCluster({
    nats: servers,
    gatewayNats: [lists.a, lists.b],
    ingestNats: lists.ingest,
    natsConfig: { kv_replicas: 3 },
  });
  const [gwA, gwB] = cluster.gateways;
  const sdk = cluster.sdk();

  // the KV buckets really are replicated on the 3 servers
  const jsz = await ch.httpJson(`${s1.monitorUrl}/jsz?streams=true&config=true`);
  const streams = (jsz.account_details || []).flatMap((a) => a.stream_detail || []);
  for (const bucket of ['KV_herald-state', 'KV_herald-cache']) {
    const sd = streams.find((x) => x.name === bucket);
    assert.ok(sd, `stream ${bucket} exists: ${JSON.stringify(streams.map((x) => x.name))}`);
    assert.equal(sd.config.num_replicas, 3, `${bucket} replicas`);
  }

  // clients on both gateways
  const pA = await h.connectedPusher(gwA);
  const pB = await h.connectedPusher(gwB);
  const rawA = await h.rawConnected(gwA);
  const rawB = await h.rawConnected(gwB);
  const tickA = h.collect(await h.subscribed(pA, 'ticker'), 'tick');
  const tickB = h.collect(await h.subscribed(pB, 'ticker'), 'tick');
  await rawA.subscribeOk('ticker');
  await rawB.subscribeOk('ticker');

  // which server is gateway A on? (async-nats may shuffle its list, so ask the servers)
  const victim =
    (await h.waitFor(() => serverOf(servers, gwA.natsName), 5000, `gateway A (${gwA.natsName}) in some server's /connz`).catch(() => undefined)) || s1;
  const survivors = servers.filter((s) => s !== victim);

  const accepted = []; // n of every trigger the ingest answered 200
  // per gateway, the triggers it must have: every accepted one
  const required = { A: [], B: [] };
  const acceptedAt = []; // for the failure message: when each one was accepted
  const refusals = [];
  const rawSeen = { A: [], B: [] };
  const drain = (c, into) => {
    for (let m = c.unconsumed.find((x) => x.event === 'tick'); m; m = c.unconsumed.find((x) => x.event === 'tick')) {
      c.unconsumed.splice(c.unconsumed.indexOf(m), 1);
      into.push(m.data.n);
    }
  };
  const ticks = (list) => list.map((e) => e.data.n);
  let killedAt = 'not yet';
  async function triggerAndExpect(n) {
    const { res, refusals: r } = await ch.triggerWhenAccepted(sdk, 'ticker', 'tick', { n }, undefined, 20000);
    refusals.push(...r);
    assert.equal(res.status, 200);
    accepted.push(n);
    acceptedAt.push(`${n}@${new Date().toISOString()}`);
    for (const g of ['A', 'B']) required[g].push(n);
    const all = () => {
      drain(rawA, rawSeen.A);
      drain(rawB, rawSeen.B);
      return [ticks(tickA), rawSeen.A, ticks(tickB), rawSeen.B].every((l) => l.includes(n));
    };
    await h.waitFor(all, 10000, `accepted tick ${n} on both gateways`).catch((e) => {
      // the state when giving up (not when starting to wait)
      throw new Error(
        `${e.message}: pusher-js A [${ticks(tickA)}], B [${ticks(tickB)}]; raw A [${rawSeen.A}], B [${rawSeen.B}]; ` +
          `killed ${victim.name} (gateway A's server) at ${killedAt}; accepted ${acceptedAt.join(' ')}; ` +
          `refusals: ${refusals.join(' | ') || 'none'}`,
      );
    });
  }

  await triggerAndExpect(0);

  // --- kill the server gateway A is connected to
  killedAt = new Date().toISOString();
  await victim.kill9();
  const t0 = Date.now();

  {
    // keep triggering right through the failover, until A is on a surviving server (its /connz), and 3 more
    let n = 1;
    let movedAt;
    // bounded by count and by time: a fast machine sends 60 triggers before the client's reconnect delay is up
    while (n < 60 || (movedAt === undefined && Date.now() - t0 < 15000)) {
      await triggerAndExpect(n++);
      if (movedAt === undefined && (await serverOf(survivors, gwA.natsName))) movedAt = n;
      if (movedAt !== undefined && n >= movedAt + 3) break;
    }
    assert.ok(movedAt !== undefined, `gateway A reconnected to a surviving server within ${Date.now() - t0} ms`);
  }
  await cluster.waitAllReadyz(200, 15000);

  {
    // Every client got, in order and never twice, only accepted triggers, and every accepted trigger.
    await h.sleep(300); // bounded absence window for duplicates
    drain(rawA, rawSeen.A);
    drain(rawB, rawSeen.B);
    const why = `(refusals: ${refusals.join(' | ') || 'none'}; required A ${required.A}, B ${required.B})`;
    for (const [label, got, must] of [
      ['pusher-js A', ticks(tickA), required.A],
      ['raw A', rawSeen.A, required.A],
      ['pusher-js B', ticks(tickB), required.B],
      ['raw B', rawSeen.B, required.B],
    ]) {
      assert.deepEqual(got, accepted.filter((n) => got.includes(n)), `${label}: in order, no duplicates, only accepted ${why}`);
      for (const n of must) assert.ok(got.includes(n), `${label} got accepted trigger ${n} ${why}`);
    }
    assert.ok(required.A.filter((n) => n > 0).length >= 3, `several triggers after A reconnected ${why}`);
  }
  for (const c of [rawA, rawB]) assert.ok(c.isOpen, 'WebSockets stay open through the NATS failover');
  assert.equal(pA.connection.state, 'connected');
  assert.equal(pB.connection.state, 'connected');
}

test('--nats lists [s1,s2,s3] / [s2,s3,s1]: kill the server gateway A is on; accepted triggers reach every connected gateway once, in order', () =>
  failover(([s1, s2, s3]) => ({ a: [s1, s2, s3], b: [s2, s3, s1], ingest: [s1, s2, s3] })));

// The ingest is on a surviving server here, so it keeps accepting triggers while gateway A reconnects.
test('one seed URL per node, ingest on a survivor: kill the server gateway A is on; accepted triggers reach every connected gateway once, in order', () =>
  failover(([s1, s2, s3]) => ({ a: [s1], b: [s2], ingest: [s3] })));
