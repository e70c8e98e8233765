'use strict';
// Graceful drain of a gateway during a rolling deploy, as Kubernetes does it: two `herald gateway` nodes and one
// `herald ingest` on one nats-server, a small TCP load balancer (written here, like a Service / Ingress in front
// of the gateway pods) and pusher-js clients connected through it.
//
// SIGTERM the gateway that holds every client (started with --drain-window 3) and check what an operator relies
// on: /readyz turns 503 at once, clients get close code 4200, the closes are spread over the drain window rather
// than all at once, every client is back (pusher-js state 'connected') on the other gateway shortly after its
// close, the process exits 0 after the window, and a trigger through the ingest reaches every moved client.
//
// DRAIN_CLIENTS (default 20) sets the number of clients. Measured figures are printed as test diagnostics.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;
const { test } = ch;

const DRAIN_WINDOW_S = 3;
// clusterToml() writes shutdown_timeout = 1: the wait for the last connections after the window.
const SHUTDOWN_TIMEOUT_S = 1;
const CLIENTS = Number(process.env.DRAIN_CLIENTS || 20);
// pusher-js reconnects at once on 4200 (close action 'retry' -> retryIn(0)); allow for a loaded 2-core machine.
const RECONNECT_ALLOWANCE_MS = 2000;
// "at once": /readyz must answer 503 within this bound after SIGTERM (and never 200 again).
const READYZ_BOUND_MS = 500;

// The cluster harness starts gateways with a fixed argument list; add --drain-window for this file's gateways
// (node --test runs each file in its own process, so this touches no other test file).
const baseSpawn = ch.HeraldNode.prototype._spawn;
ch.HeraldNode.prototype._spawn = function spawnWithDrainWindow(bin, args, env, alias) {
  const extra = this.role === 'gateway' ? ['--drain-window', String(DRAIN_WINDOW_S)] : [];
  return baseSpawn.call(this, bin, [...args, ...extra], env, alias);
};

// ---------------------------------------------------------------------------------------------------------


/** Watches one pusher-js client: 4200 closes and 'connected' transitions, with timestamps. */
function watch(client) {
  const w = { closes: [], connects: [] };
  client.connection.bind('error', (err) => {
    const code = err && err.data && err.data.code;
    if (code) w.closes.push({ code, at: Date.now() });
  });
  client.connection.bind('state_change', (s) => {
    if (s.current === 'connected') w.connects.push({ at: Date.now(), socketId: client.connection.socket_id });
  });
  return w;
}

const stats = (xs) => ({ min: Math.min(...xs), max: Math.max(...xs) });

test(`SIGTERM drains a gateway: 503 at once, ${CLIENTS} clients get 4200 spread over the window and move to the other gateway`, { timeout: 90000 }, async (t) => {
  const cluster = await ch.startCluster({ gateways: 2 });
  const [gwA, gwB] = cluster.gateways;
  const prefixA = await ch.socketPrefix(gwA);
  const prefixB = await ch.socketPrefix(gwB);
  assert.notEqual(prefixA, prefixB);
  const onGateway = (socketId) => ({ [prefixA]: 'A', [prefixB]: 'B' })[String(socketId).split('.')[0]] || `? (${socketId})`;

  // Every client lands on A first; B joins the balancer afterwards (the new pod of a rolling deploy).
  const balancer = await ch.startBalancer([{ label: 'A', port: gwA.port }]);
  const viaBalancer = { port: balancer.port, app: gwA.app };
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    clients.push(h.pusherClient(viaBalancer, { activityTimeout: 10000, pongTimeout: 2000, unavailableTimeout: 2000 }));
  }
  await Promise.all(clients.map((c) => h.pusherState(c, 'connected', 10000)));
  assert.deepEqual(new Set(clients.map((c) => onGateway(c.connection.socket_id))), new Set(['A']), 'all clients start on gateway A');
  const channels = await Promise.all(clients.map((c) => h.subscribed(c, 'deploys', 10000)));
  const before = channels.map((c) => h.nextEvent(c, 'before', 10000));
  await ch.triggerWhenAccepted(cluster.sdk(), 'deploys', 'before', { n: 1 });
  for (const got of await Promise.all(before)) assert.deepEqual(got, { n: 1 });
  balancer.setBackends([
    { label: 'A', port: gwA.port },
    { label: 'B', port: gwB.port },
  ]);

  const watches = clients.map(watch);
  const received = channels.map((c) => h.collect(c, 'after'));

  // SIGTERM (stop() sends it synchronously and resolves with the exit code), then sample /readyz until exit.
  const t0 = Date.now();
  const stopping = gwA.stop((DRAIN_WINDOW_S + SHUTDOWN_TIMEOUT_S + 10) * 1000);
  let exitedAt;
  stopping.then(() => (exitedAt = Date.now()), () => {});
  const readyz = [];
  let draining; // herald_draining, read once /readyz says 503
  const sampling = (async () => {
    while (gwA.running) {
      const sentAt = Date.now();
      const status = await ch.httpStatus(`${gwA.metricsUrl}/readyz`, 500);
      if (gwA.running) readyz.push({ at: sentAt - t0, status });
      if (status === 503 && draining === undefined) draining = await h.metricLine(gwA, 'herald_draining ').catch(() => undefined);
      await h.sleep(20);
    }
  })();

  const moved = (w) => {
    const close = w.closes.find((c) => c.at >= t0);
    return close && w.connects.some((c) => c.at >= close.at && onGateway(c.socketId) === 'B');
  };
  await h.waitFor(
    () => watches.every(moved),
    (DRAIN_WINDOW_S + 1) * 1000 + RECONNECT_ALLOWANCE_MS + 5000,
    'every client to reconnect on B',
    25,
  ).catch((e) => {
    const stuck = clients.map((c, i) => ({ i, state: c.connection.state, on: onGateway(c.connection.socket_id), closes: watches[i].closes })).filter((_, i) => !moved(watches[i]));
    throw new Error(`${e.message}; not moved: ${JSON.stringify(stuck)}`);
  });
  const code = await stopping;
  await sampling;

  // -- close codes and their spread
  const closeAt = watches.map((w) => w.closes.find((c) => c.at >= t0));
  assert.deepEqual(new Set(closeAt.map((c) => c.code)), new Set([4200]), 'every client is closed with 4200');
  const closeT = closeAt.map((c) => c.at - t0);
  const { min: firstClose, max: lastClose } = stats(closeT);
  const spread = lastClose - firstClose;
  // -- reconnects: the first 'connected' on B after the client's close
  const reconnectT = watches.map((w, i) => w.connects.find((c) => c.at >= closeAt[i].at && onGateway(c.socketId) === 'B').at - closeAt[i].at);
  const allBackAt = Math.max(...watches.map((w, i) => w.connects.find((c) => c.at >= closeAt[i].at).at - t0));
  const maxReconnect = Math.max(...reconnectT);

  const first503 = readyz.findIndex((s) => s.status === 503);
  const summary =
    `drain of ${CLIENTS} clients, window ${DRAIN_WINDOW_S} s: first close +${firstClose} ms, last close +${lastClose} ms after SIGTERM ` +
    `(spread ${spread} ms); max reconnect ${maxReconnect} ms (median ${[...reconnectT].sort((a, b) => a - b)[reconnectT.length >> 1]} ms); ` +
    `all back on B at +${allBackAt} ms; /readyz 503 from +${first503 >= 0 ? readyz[first503].at : 'never'} ms (${readyz.length} samples); ` +
    `process exit ${code} at +${exitedAt - t0} ms; balancer: routed ${JSON.stringify(Object.fromEntries(balancer.stats.routed))}, ` +
    `refused ${JSON.stringify(Object.fromEntries(balancer.stats.refused))}`;
  t.diagnostic(summary);

  // -- /readyz: 503 at once (the first sample may race the signal's delivery), never 200 again
  assert.ok(readyz.length > 0, 'sampled /readyz during the drain');
  assert.ok(first503 >= 0, `/readyz never answered 503 after SIGTERM: ${JSON.stringify(readyz.slice(0, 5))}`);
  assert.ok(readyz[first503].at <= READYZ_BOUND_MS, `/readyz 503 only from +${readyz[first503].at} ms: ${JSON.stringify(readyz.slice(0, first503 + 1))}`);
  // 503 until the process exits; the admin listener may go (connection refused, 0) in the last moments before exit
  const last503 = readyz.map((s) => s.status).lastIndexOf(503);
  assert.deepEqual(
    readyz.filter((s, i) => i > first503 && s.status !== 503 && !(s.status === 0 && i > last503)),
    [],
    '/readyz answers 503 from then until the process exits',
  );

  assert.equal(draining, 1, 'herald_draining is 1 while the gateway drains');
  assert.ok(spread >= (DRAIN_WINDOW_S * 1000) / 2 - 100, `closes spread over at least ~half the window: ${spread} ms`);
  assert.ok(lastClose <= DRAIN_WINDOW_S * 1000 + 1000, `no close after window + 1 s: last at +${lastClose} ms`);
  assert.ok(maxReconnect <= RECONNECT_ALLOWANCE_MS, `every client reconnected within ${RECONNECT_ALLOWANCE_MS} ms of its close: max ${maxReconnect} ms`);
  assert.ok(allBackAt <= DRAIN_WINDOW_S * 1000 + RECONNECT_ALLOWANCE_MS, `all clients back within window + reconnect delay: +${allBackAt} ms`);
  for (const c of clients) assert.equal(onGateway(c.connection.socket_id), 'B', 'client ends on gateway B');

  // -- the process: exit 0 within window + shutdown_timeout (+ slack)
  assert.equal(code, 0, 'gateway exit status after SIGTERM');
  assert.ok(exitedAt - t0 <= (DRAIN_WINDOW_S + SHUTDOWN_TIMEOUT_S + 2) * 1000, `exit at +${exitedAt - t0} ms`);

  // -- a trigger after the move reaches every client, once. pusher-js re-subscribes on reconnect.
  await h.waitFor(() => channels.every((c) => c.subscribed), 10000, 'every channel re-subscribed on B');
  await ch.triggerWhenAccepted(cluster.sdk(), 'deploys', 'after', { n: 2 });
  await h.waitFor(() => received.every((r) => r.length >= 1), 10000, "'after' on every client");
  await h.sleep(300); // bounded absence window: no duplicate delivery
  for (const r of received) assert.deepEqual(r.map((e) => e.data), [{ n: 2 }]);
});
