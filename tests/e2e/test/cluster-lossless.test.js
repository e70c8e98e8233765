'use strict';
// No acknowledged event is lost for a socket that stays connected (docs/architecture.md, "Lossless delivery").
//
// A 3-server NATS cluster (event stream and KV with 3 replicas); gateway A reaches NATS through a TCP proxy to s1
// (and learns the other servers from the cluster), gateway B is given s2, the ingest s3. LOSSLESS_SOCKETS (1,000)
// raw WebSockets, half on each gateway, on 50 channels; every channel gets a numbered `tick` from its own
// sequence of triggers through the ingest, LOSSLESS_RATE (1,000) triggers per second in all. Under that load:
//   1. gateway A's NATS connection is cut (the proxy closes it: a reconnect),
//   2. the NATS server gateway A is on is killed (SIGKILL), then restarted,
//   3. all of NATS is killed and restarted.
// Then every socket, all still connected, has received every trigger the ingest answered 200 on its channel, once,
// in order, and none it answered 503 (a 504, outcome unknown, may be there or not). The test fails on any loss,
// duplicate or reordering, and reports how many events the gateways read back from the event stream.
const http = require('node:http');
const WebSocket = require('ws');
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

const SOCKETS = Number(process.env.LOSSLESS_SOCKETS || 1000);
const RATE = Number(process.env.LOSSLESS_RATE || 1000);
const CHANNELS = 50;
const PHASE_MS = Number(process.env.LOSSLESS_PHASE_MS || 3000);

/** A bare Pusher socket subscribed to `channel`, keeping the `n` of every `tick` in arrival order. */
async function tickSocket(node, channel) {
  const ws = new WebSocket(node.wsUrl());
  const socket = { channel, got: [], closed: undefined };
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket on ${channel} not subscribed within 10 s`)), 10000);
    ws.on('error', reject);
    ws.on('message', (raw) => {
      const m = JSON.parse(raw.toString());
      if (m.event === 'tick') socket.got.push(JSON.parse(m.data).n);
      else if (m.event === 'pusher:connection_established') ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
      else if (m.event === 'pusher:ping') ws.send(JSON.stringify({ event: 'pusher:pong', data: {} }));
      else if (m.event === 'pusher_internal:subscription_succeeded') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  ws.on('close', (code) => (socket.closed = code));
  h.track(() => ws.terminate());
  return socket;
}

/** Numbered triggers, one sequence per channel, `rate` per second over all of them; records each answer. */
function startTicker(sdk, channels, rate) {
  const periodMs = (channels.length * 1000) / rate;
  const records = new Map(channels.map((c) => [c, []])); // channel -> [{n, status}]
  let stopped = false;
  const chains = channels.map(async (channel, i) => {
    let next = Date.now() + (i * periodMs) / channels.length;
    for (let n = 0; !stopped; n++) {
      const wait = next - Date.now();
      if (wait > 0) await h.sleep(wait);
      // a slow answer (a fault) is not made up for with a burst
      next = Math.max(next + periodMs, Date.now());
      const record = { n, status: undefined };
      records.get(channel).push(record);
      try {
        await sdk.trigger(channel, 'tick', { n });
        record.status = 200;
      } catch (e) {
        record.status = (e && e.status) || `error ${e && e.message}`;
      }
    }
  });
  return {
    records,
    answered: () => [...records.values()].flat().filter((r) => r.status !== undefined),
    async stop() {
      stopped = true;
      await Promise.all(chains);
    },
  };
}

/** The server (of `servers`) whose /connz lists the NATS client named `name`. */
async function serverOf(servers, name) {
  for (const s of servers.filter((x) => x.running)) {
    const conns = await s.connections().catch(() => []);
    if (conns.some((c) => c.name === name)) return s;
  }
  return undefined;
}

const counter = (node, name) => h.metricLine(node, `${name} `);

test(`lossless: ${SOCKETS} sockets on 2 gateways, ${RATE} triggers/s, through a NATS reconnect, the loss of a server and a full NATS restart`, { timeout: 180000 }, async (t) => {
  const servers = await ch.startNatsCluster(3);
  const [s1, s2, s3] = servers;
  const proxy = await ch.startProxy(s1.port);
  const cluster = await ch.startCluster({
    nats: servers,
    gatewayNats: [[proxy.url], [s2]],
    ingestNats: [s3],
    natsConfig: { kv_replicas: 3 },
  });
  const [gwA, gwB] = cluster.gateways;
  const channels = Array.from({ length: CHANNELS }, (_, i) => `lossless-${i}`);
  const sockets = [];
  for (let i = 0; i < SOCKETS; i += 50) {
    const batch = Array.from({ length: Math.min(50, SOCKETS - i) }, (_, j) => i + j);
    sockets.push(...(await Promise.all(batch.map((k) => tickSocket(k % 2 ? gwB : gwA, channels[k % CHANNELS])))));
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: CHANNELS });
  const ticker = startTicker(cluster.sdk(undefined, { timeout: 15000, agent }), channels, RATE);
  const steps = [];
  const step = (what) => steps.push(`${what} at ${ticker.answered().length} answers`);
  try {
    await h.waitFor(() => sockets.every((s) => s.got.length > 0), 15000, 'every socket to receive a first tick');
    await h.sleep(PHASE_MS);

    step('cut gateway A from NATS');
    proxy.cut();
    await gwA.waitReadyz(200, 15000);
    await h.sleep(PHASE_MS);

    const victim = await h.waitFor(() => serverOf(servers, gwA.natsName), 5000, 'the NATS server gateway A is on');
    step(`kill ${victim.label} (gateway A's server)`);
    await victim.kill9();
    await h.sleep(PHASE_MS);
    await victim.restart({ full: true, timeoutMs: 20000 });
    step(`${victim.label} back`);
    await h.sleep(PHASE_MS);

    step('kill all of NATS');
    await Promise.all(servers.map((s) => s.kill9()));
    await h.sleep(500);
    await Promise.all(servers.map((s) => s.restart({ full: true, timeoutMs: 30000 })));
    await cluster.waitAllReadyz(200, 30000);
    step('NATS back');
    await h.waitFor(() => ticker.answered().slice(-CHANNELS).every((r) => r.status === 200), 30000, 'triggers accepted again after the NATS restart');
    await h.sleep(PHASE_MS);
  } finally {
    await ticker.stop();
  }

  // every socket has every accepted tick of its channel (bounded), then a moment for late duplicates
  const accepted = new Map(channels.map((c) => [c, ticker.records.get(c).filter((r) => r.status === 200).map((r) => r.n)]));
  const complete = (s) => {
    const got = new Set(s.got);
    return accepted.get(s.channel).every((n) => got.has(n));
  };
  await h.waitFor(() => sockets.every(complete), 30000, 'every socket to receive every accepted tick').catch(() => {});
  await h.sleep(500);

  const answers = ticker.answered();
  const count = (st) => answers.filter((r) => r.status === st).length;
  const recovered = (await counter(gwA, 'herald_bus_recovered_events_total')) + (await counter(gwB, 'herald_bus_recovered_events_total'));
  const gaps = (await counter(gwA, 'herald_bus_gaps_total')) + (await counter(gwB, 'herald_bus_gaps_total'));
  const failures = (await counter(gwA, 'herald_bus_recovery_failures_total')) + (await counter(gwB, 'herald_bus_recovery_failures_total'));
  const problems = [];
  let lost = 0;
  let duplicated = 0;
  let reordered = 0;
  for (const [i, s] of sockets.entries()) {
    const records = ticker.records.get(s.channel);
    const status = new Map(records.map((r) => [r.n, r.status]));
    const got = new Set(s.got);
    const missing = accepted.get(s.channel).filter((n) => !got.has(n));
    const dups = s.got.length - got.size;
    const outOfOrder = s.got.filter((n, j) => j > 0 && n <= s.got[j - 1]).length - dups;
    const refused = s.got.filter((n) => status.get(n) === 503);
    lost += missing.length;
    duplicated += dups;
    reordered += Math.max(0, outOfOrder);
    const where = `socket ${i} (${i % 2 ? 'B' : 'A'}, ${s.channel})`;
    if (s.closed !== undefined) problems.push(`${where} was closed (${s.closed})`);
    if (missing.length) problems.push(`${where} missed accepted ticks [${missing.slice(0, 10)}${missing.length > 10 ? ', …' : ''}]`);
    if (dups) problems.push(`${where} got ${dups} duplicates`);
    if (outOfOrder > 0) problems.push(`${where} got ${outOfOrder} ticks out of order`);
    if (refused.length) problems.push(`${where} got ticks answered 503: [${refused.slice(0, 10)}]`);
  }
  t.diagnostic(
    `${sockets.length} sockets, ${answers.length} triggers: ${count(200)} answered 200, ${count(503)} 503, ${count(504)} 504, ` +
      `${answers.length - count(200) - count(503) - count(504)} other; lost ${lost}, duplicated ${duplicated}, out of order ${reordered}; ` +
      `gateways found ${gaps} gaps and read back ${recovered} events (${failures} recovery failures); ${steps.join('; ')}`,
  );
  assert.deepEqual(problems.slice(0, 20), [], `every socket gets every accepted tick once, in order (${problems.length} problems)`);
  assert.ok(recovered > 0, 'the faults made the gateways read missed events back from the stream');
  assert.equal(failures, 0, 'no recovery failed');
});
