'use strict';
// Running out of file descriptors, and the global connection cap (issue 17, item 3).
//
// Herald under `ulimit -n 1024` (set on the running process with prlimit) with 2,000 idle TCP sockets on the
// client port and 2,000 on the admin port: it must not spin (≤ 5 % of a core above idle), must count the failed
// accepts and log them at most once a second per listener, must keep serving the clients it already has, and must
// accept again within 1 s of the sockets closing. While the descriptors are exhausted nothing new can be accepted,
// so /metrics and the HTTP API are reached over keep-alive connections opened before the flood.
// Every wait is bounded; the only fixed waits are the CPU windows, which measure what happens over a time.
const fs = require('node:fs');
const net = require('node:net');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const h = require('./harness');
const { assert, test } = h;

const FD_LIMIT = 1024;
const IDLE_SOCKETS = 2000;
const CPU_WINDOW_MS = 2000;
const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds (user + system) the process has used so far, from /proc/PID/stat. */
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** Share of one core the process used over the next `ms` (a fixed window: this measures a rate). */
async function cpuShare(pid, ms) {
  const before = cpuSeconds(pid);
  const start = process.hrtime.bigint();
  await h.sleep(ms);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return (cpuSeconds(pid) - before) / seconds;
}

/**
 * One keep-alive HTTP/1.1 connection opened now, for requests later (when no new connection may be accepted).
 * `request(head, body)` writes one request and resolves with the next complete response {status, body}.
 */
async function keepAlive(port) {
  const socket = net.connect(port, '127.0.0.1');
  await h.withTimeout(new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject)), 5000, 'keep-alive connect');
  let buffered = Buffer.alloc(0);
  let waiting = null;
  const parse = () => {
    const end = buffered.indexOf('\r\n\r\n');
    if (end < 0 || !waiting) return;
    const head = buffered.subarray(0, end).toString();
    const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
    if (buffered.length < end + 4 + length) return;
    const body = buffered.subarray(end + 4, end + 4 + length).toString();
    buffered = buffered.subarray(end + 4 + length);
    const resolve = waiting;
    waiting = null;
    resolve({ status: Number(head.split(' ')[1]), body });
  };
  socket.on('data', (d) => {
    buffered = Buffer.concat([buffered, d]);
    parse();
  });
  h.track(() => socket.destroy());
  return {
    request(method, path, body = '') {
      const done = new Promise((resolve) => (waiting = resolve));
      const headers = [`${method} ${path} HTTP/1.1`, 'host: herald', 'connection: keep-alive', `content-length: ${Buffer.byteLength(body)}`];
      if (body) headers.push('content-type: application/json');
      socket.write(`${headers.join('\r\n')}\r\n\r\n${body}`);
      return h.withTimeout(done, 5000, `${method} ${path} over the keep-alive connection`);
    },
  };
}

/** The value of the first line of the Prometheus text `text` that starts with `series` (0 when absent). */
function sample(text, series) {
  const found = text.split('\n').find((l) => l.startsWith(series));
  return found ? Number(found.split(' ').pop()) : 0;
}

/** A signed `POST /apps/{id}/events` path and body, as the HTTP API expects them. */
function signedTrigger(app, event) {
  const body = JSON.stringify(event);
  const path = `/apps/${app.id}/events`;
  const params = {
    auth_key: app.key,
    auth_timestamp: Math.floor(Date.now() / 1000),
    auth_version: '1.0',
    body_md5: crypto.createHash('md5').update(body).digest('hex'),
  };
  const qs = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
  const signature = h.hmacHex(app.secret, ['POST', path, qs].join('\n'));
  return { path: `${path}?${qs}&auth_signature=${signature}`, body };
}

/** Opens `count` plain TCP connections to `port` that send nothing; resolves once each has connected or failed (bounded). */
async function idleSockets(port, count) {
  const sockets = [];
  const settled = [];
  for (let i = 0; i < count; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    sockets.push(s);
    settled.push(new Promise((resolve) => s.once('connect', resolve).once('error', resolve).once('close', resolve)));
  }
  h.track(() => sockets.forEach((s) => s.destroy()));
  // Connects past the listen backlog are left to the kernel's SYN retries; they need not finish here.
  await h.withTimeout(Promise.all(settled), 3000, 'idle sockets to connect').catch(() => {});
  return sockets;
}

test('fd exhaustion: no spin, counted and throttled accept errors, existing clients served, accepting again within 1 s', async (t) => {
  // header_timeout longer than the test, so that Herald keeps the idle sockets (and the shortage) throughout
  const server = await h.startHerald({ config: { header_timeout: 60 } });
  execFileSync('prlimit', ['--pid', String(server.child.pid), `--nofile=${FD_LIMIT}:${FD_LIMIT}`]);
  const clients = await Promise.all([1, 2, 3].map(() => h.rawConnected(server)));
  await Promise.all(clients.map((c) => c.subscribeOk('orders')));
  const admin = await keepAlive(server.metricsPort);
  const api = await keepAlive(server.port);
  const idle = await cpuShare(server.child.pid, CPU_WINDOW_MS);

  const floodStart = Date.now();
  const flood = [...(await idleSockets(server.port, IDLE_SOCKETS)), ...(await idleSockets(server.metricsPort, IDLE_SOCKETS))];
  const acceptErrors = async (listener) => sample((await admin.request('GET', '/metrics')).body, `herald_accept_errors_total{listener="${listener}"}`);
  await h.waitFor(async () => (await acceptErrors('client')) > 0, 10000, 'the client listener to run out of descriptors');

  const busy = await cpuShare(server.child.pid, CPU_WINDOW_MS);
  t.diagnostic(`CPU: idle ${(100 * idle).toFixed(1)} %, out of descriptors ${(100 * busy).toFixed(1)} % of a core`);
  assert.ok(busy - idle <= 0.05, `CPU above idle while out of descriptors: ${(100 * (busy - idle)).toFixed(1)} % of a core (idle ${(100 * idle).toFixed(1)} %)`);

  const trigger = signedTrigger(server.app, { name: 'during-shortage', channel: 'orders', data: '{}' });
  assert.equal((await api.request('POST', trigger.path, trigger.body)).status, 200);
  await Promise.all(clients.map((c) => c.next((m) => m.event === 'during-shortage', 5000, 'the trigger sent during the shortage')));

  const floodSeconds = (Date.now() - floodStart) / 1000;
  const log = server.stdout + server.stderr;
  for (const listener of ['client', 'admin']) {
    const lines = log.split('\n').filter((l) => l.includes('accept failed') && new RegExp(`listener[=":]+${listener}\\b`).test(l));
    t.diagnostic(`${listener}: ${lines.length} accept WARN lines in ${floodSeconds.toFixed(1)} s`);
    assert.ok(lines.length >= 1, `a WARN line about the ${listener} listener${server.logsForFailure()}`);
    assert.ok(lines.length <= Math.ceil(floodSeconds) + 1, `at most one ${listener} accept WARN a second: ${lines.length} in ${floodSeconds.toFixed(1)} s`);
  }

  flood.forEach((s) => s.destroy());
  const freed = Date.now();
  const fresh = await h.rawConnected(server);
  const reconnectMs = Date.now() - freed;
  t.diagnostic(`new WebSocket connected ${reconnectMs} ms after the idle sockets closed`);
  assert.ok(reconnectMs <= 1000, `a new WebSocket connected ${reconnectMs} ms after the idle sockets closed`);
  await fresh.subscribeOk('orders');
  const metrics = await (await fetch(`${server.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  assert.ok(sample(metrics, 'herald_accept_errors_total{listener="client"}') > 0, 'client accept errors counted');
  assert.ok(sample(metrics, 'herald_accept_errors_total{listener="admin"}') > 0, 'admin accept errors counted');
});

test('admin port: a connection that sends no request head is closed after header_timeout', async () => {
  const server = await h.startHerald({ config: { header_timeout: 1 } });
  const socket = net.connect(server.metricsPort, '127.0.0.1');
  socket.on('error', () => {});
  h.track(() => socket.destroy());
  const closed = new Promise((resolve) => socket.once('close', resolve));
  const opened = Date.now();
  await h.withTimeout(closed, 5000, 'the admin port to close a connection without a request head');
  const ms = Date.now() - opened;
  assert.ok(ms >= 900, `closed after ${ms} ms, not before header_timeout`);
});

test('max_connections: the WebSocket over the process-wide cap is closed with 4100 and counted, the others keep working', async () => {
  const server = await h.startHerald({ config: { max_connections: 2 } });
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  const third = await h.rawClient(server);
  const closed = await third.waitClose(5000, 'the third connection to close');
  assert.equal(closed.code, 4100);
  assert.match(closed.reason, /too many connections to this server/);
  await a.subscribeOk('orders');
  await b.subscribeOk('orders');
  const metrics = await (await fetch(`${server.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  assert.equal(sample(metrics, 'herald_limit_rejections_total{app="",limit="connections"}'), 1);
  assert.equal(sample(metrics, 'herald_connections_refused_total{app="",reason="connection_limit"}'), 1);
  // the HTTP API is not counted against the cap
  assert.equal((await h.apiRequest(server, { method: 'GET', path: '/channels' })).status, 200);
  // closing one frees a slot
  a.close();
  await a.waitClose();
  await h.waitFor(async () => {
    const c = await h.rawClient(server);
    const first = await c.next(() => true, 5000, 'first message');
    return first.event === 'pusher:connection_established';
  }, 5000, 'a new connection once a slot is free');
});
