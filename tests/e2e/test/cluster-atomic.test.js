'use strict';
// A request that publishes to several channels is all or nothing (docs/architecture.md §2, step 2 "Encoded once"):
// multi-channel triggers (20 channels) and batches (10 events) go to the ingest back to back while nats-server is
// killed (SIGKILL) under them. Once NATS is back and the parts held for a commit have expired, every request answered
// 200 was delivered on every one of its channels, and every request answered 503 on none, on both gateways. A request
// NATS failed under after taking it is answered 504 (outcome unknown: the server may have delivered it before dying
// without confirming it): it went to all of its channels or to none, the same on both gateways (what the event stream
// stored in time is delivered everywhere, docs/architecture.md "Lossless delivery").
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

const CHANNELS = Array.from({ length: 20 }, (_, i) => `atomic-${i}`);
const BATCH_CHANNELS = CHANNELS.slice(0, 10);
const IN_FLIGHT = 8;
// How long a gateway holds parts of a request whose commit never came (HOLD in crates/bus/src/batch.rs), plus margin.
const HOLD_MS = 5000 + 1000;

test('multi-channel triggers and batches with NATS killed under them: each delivers to all its channels (200) or none (503), never part (504)', { timeout: 90000 }, async () => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  // longer than Herald's own publish timeout (5 s), so every request ends with Herald's answer
  const sdk = cluster.sdk(undefined, { timeout: 15000 });
  // one raw client per gateway, each on every channel: a request's delivery is seen on both gateways
  const clients = { A: await h.rawConnected(gwA), B: await h.rawConnected(gwB) };
  for (const c of Object.values(clients)) for (const channel of CHANNELS) await c.subscribeOk(channel);

  const requests = []; // {id, kind, channels, start, end, status}
  let n = 0;
  let stop = false;
  async function one() {
    const id = `r${n++}`;
    const kind = n % 2 ? 'multi' : 'batch';
    const req = { id, kind, channels: kind === 'multi' ? CHANNELS : BATCH_CHANNELS, start: Date.now() };
    requests.push(req);
    try {
      if (kind === 'multi') await sdk.trigger(CHANNELS, 'atomic', { id });
      else await sdk.triggerBatch(BATCH_CHANNELS.map((channel) => ({ channel, name: 'atomic', data: JSON.stringify({ id }) })));
      req.status = 200;
    } catch (e) {
      req.status = e && e.status ? e.status : `error ${e && e.message}`;
    }
    req.end = Date.now();
  }
  async function worker() {
    while (!stop) await one();
  }
  const workers = Array.from({ length: IN_FLIGHT }, worker);

  // load, then the kill under it, then a few more (refused at once), then stop
  await h.waitFor(() => requests.filter((r) => r.status === 200).length >= 40, 15000, '40 accepted requests before the kill');
  const killedAt = Date.now();
  await cluster.nats.kill9();
  await h.waitFor(() => requests.some((r) => r.start > killedAt && r.end), 15000, 'a request refused after the kill');
  stop = true;
  await Promise.all(workers);

  const inFlight = requests.filter((r) => r.start < killedAt && r.end > killedAt);
  await cluster.nats.restart();
  await cluster.waitAllReadyz(200, 15000);
  // whatever was left in a client's queue goes out on reconnect; held parts expire HOLD after they arrive
  await h.sleep(HOLD_MS);

  const delivered = { A: new Map(), B: new Map() }; // id -> Set(channel)
  for (const [g, c] of Object.entries(clients)) {
    for (const m of c.messages.filter((x) => x.event === 'atomic')) {
      const id = m.data.id;
      if (!delivered[g].has(id)) delivered[g].set(id, new Set());
      delivered[g].get(id).add(m.channel);
    }
  }
  const bad = [];
  for (const r of requests) {
    if (![200, 503, 504].includes(r.status)) bad.push(`${r.id} (${r.kind}) answered ${r.status}`);
    for (const g of ['A', 'B']) {
      const got = (delivered[g].get(r.id) || new Set()).size;
      const allowed = { 200: [r.channels.length], 503: [0], 504: [0, r.channels.length] }[r.status] || [];
      if (!allowed.includes(got)) bad.push(`${r.id} (${r.kind}, ${r.status}) on gateway ${g}: ${got} of ${r.channels.length} channels`);
    }
    const on = (g) => (delivered[g].get(r.id) || new Set()).size;
    if (on('A') !== on('B')) bad.push(`${r.id} (${r.kind}, ${r.status}): ${on('A')} channels on gateway A, ${on('B')} on B`);
  }
  const count = (status) => requests.filter((r) => r.status === status).length;
  console.log(
    `[atomic] ${requests.length} requests: ${count(200)} answered 200, ${count(503)} answered 503, ${count(504)} answered 504; ` +
      `${inFlight.length} in flight at the kill (${inFlight.filter((r) => r.status === 200).length} of them 200)`,
  );
  assert.deepEqual(bad, [], 'every request delivered to all its channels (200), none (503) or one of the two (504), on both gateways');
  assert.ok(inFlight.length > 0, 'some requests were in flight when NATS was killed');
  for (const c of Object.values(clients)) assert.ok(c.isOpen, 'clients stay connected through the NATS restart');
});
