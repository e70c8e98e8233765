'use strict';
// Webhooks under a slow or absent receiver (docs/webhooks.md §3, §4).
//
// 1. Cluster (gateway + ingest + nats-server), a receiver that answers every request after 1 s, a burst of 5,000
//    client events: every event arrives exactly once, also while most of them wait far longer than the JetStream
//    ack wait (2 s here) behind the receiver. The ingest holds at most `webhook_max_pending` of them and keeps
//    every one it holds alive, so none is handed out twice.
// 2. Standalone with an unreachable receiver and `webhook_max_pending` low: the backlog never holds more than the
//    cap, and every event beyond it is dropped and counted in herald_webhook_queue_failures_total.
//
// Client events are the quickest way to a deterministic burst: one gateway queues each, no channel state involved,
// and each carries its own number in `data`. Waits are bounded; the one fixed wait proves nothing more arrives.
const http = require('node:http');
const h = require('./harness');
const ch = require('./cluster-harness');
const { metric, waitMetric } = require('./webhook-receiver');
const { assert } = h;

const ANSWER_AFTER_MS = 1000;
const BURST = 5000;
const ACK_WAIT_SECS = 2; // [nats] webhook_ack_wait_secs: events waiting longer than this must be kept alive
const BATCH = 200; // webhook_batch_size: 25 requests of 1 s for the burst

/**
 * A receiver that answers 200 to every request `delayMs` after it arrived and records the events of each request.
 * (test/webhook-receiver.js validates signatures; this one only counts, as fast as it can.)
 */
async function startSlowReceiver(delayMs) {
  const events = [];
  const requests = [];
  const timers = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      requests.push({ at: Date.now(), size: body.events.length });
      const t = setTimeout(() => {
        timers.delete(t);
        if (res.destroyed) return; // the sender gave up: not accepted
        events.push(...body.events);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok');
      }, delayMs);
      timers.add(t);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.track(
    () =>
      new Promise((resolve) => {
        for (const t of timers) clearTimeout(t);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${server.address().port}/hook`, events, requests };
}

/** Client events on a private channel: `count` of them, `data` {n} numbered from 0. */
async function sendClientEvents(server, channel, count) {
  const client = await h.rawConnected(server);
  assert.equal((await h.rawSubscribePrivate(client, h.APP, channel)).event, 'pusher_internal:subscription_succeeded');
  for (let n = 0; n < count; n += 1) client.send({ event: 'client-burst', channel, data: { n } });
  await client.barrier();
  return client;
}

/** How often each event number arrived, as {distinct, duplicates: [[n, times], ...]}. */
function tally(events) {
  const times = new Map();
  for (const e of events) {
    const n = JSON.parse(e.data).n;
    times.set(n, (times.get(n) || 0) + 1);
  }
  return { distinct: times.size, duplicates: [...times].filter(([, c]) => c > 1) };
}

/** The receivers of an app that gets client events only, with room for bursts. */
function burstApp(url) {
  return { client_events: true, max_client_events_per_second: 100000, webhooks: [{ url, events: ['client_event'] }] };
}

ch.test(`cluster, receiver answering after ${ANSWER_AFTER_MS} ms: a burst of ${BURST} webhooks arrives exactly once`, { timeout: 90000 }, async () => {
  const rx = await startSlowReceiver(ANSWER_AFTER_MS);
  const cluster = await ch.startCluster({
    gateways: 1,
    app: burstApp(rx.url),
    // room for 1,000: the ingest pulls no more than that and keeps all it holds alive
    config: { webhook_batch_size: BATCH, webhook_max_pending: 1000 },
    natsConfig: { webhook_ack_wait_secs: ACK_WAIT_SECS },
  });
  const app = { app: h.APP.id };
  await sendClientEvents(cluster.gateways[0], 'private-burst', BURST);
  await waitMetric(cluster.gateways[0], 'herald_webhook_events_queued_total', app, (v) => v === BURST, 15000, `${BURST} events queued by the gateway`);

  const expectedMs = (BURST / BATCH) * ANSWER_AFTER_MS;
  await h.waitFor(() => tally(rx.events).distinct === BURST, expectedMs + 30000, `all ${BURST} events at the receiver`, 200);
  // Anything handed out twice would come within an ack wait of the last delivery.
  await h.sleep(ACK_WAIT_SECS * 1000 + 3000);
  const { distinct, duplicates } = tally(rx.events);
  assert.equal(distinct, BURST);
  assert.deepEqual(duplicates.slice(0, 20), [], `${duplicates.length} events arrived more than once (${rx.events.length} deliveries in ${rx.requests.length} requests)`);
  assert.equal(rx.events.length, BURST);
  assert.equal(await metric(cluster.ingest, 'herald_webhook_events_sent_total', app), BURST);
  assert.equal(await metric(cluster.ingest, 'herald_webhook_pending_events', app), 0);
  assert.ok(Math.max(...rx.requests.map((r) => r.size)) <= BATCH);
});

h.test('standalone, receiver unreachable: the backlog stops at webhook_max_pending, the excess is dropped and counted', { timeout: 30000 }, async () => {
  const CAP = 100;
  const SENT = 500;
  const closedPort = await h.freePort(); // nothing listens there: every request is refused and retried
  const server = await h.startHerald({
    app: burstApp(`http://127.0.0.1:${closedPort}/hook`),
    config: { webhook_max_pending: CAP },
  });
  const app = { app: h.APP.id };
  await sendClientEvents(server, 'private-flood', SENT);
  await waitMetric(server, 'herald_webhook_queue_failures_total', app, (v) => v === SENT - CAP, 10000, `${SENT - CAP} events dropped`);
  assert.equal(await metric(server, 'herald_webhook_events_queued_total', app), CAP);
  assert.equal(await metric(server, 'herald_webhook_pending_events', app), CAP);
  assert.ok((await metric(server, 'herald_webhook_retries_total', app)) > 0, 'the held events are being retried');
});
