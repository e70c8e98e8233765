'use strict';
// Shared harness for the Herald end-to-end tests.
//
// - startHerald(): runs the real binary with a per-test TOML config on free ports and waits for /readyz.
// - test(): wrapper around node:test's test() that appends the Herald logs to a failure and cleans up every
//   client / server the test created.
// - RawClient: a raw `ws` client for protocol-level checks.
// - pusher-js / laravel-echo / pusher SDK factories, and a Laravel-like /broadcasting/auth endpoint.
//
// Synchronisation is done only by waiting for events/predicates with a timeout; the one exception is
// expectNoMessage()/noEventWithin(), which waits a short bounded time to assert that something does NOT happen.
//
// NOTE: `node --test test/` on Node 20 runs every .js file under test/, including this one; loading it has no
// side effects besides registering the global after() hook, so it shows up as one trivially passing "test".

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const nodeTest = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const PusherJs = require('pusher-js');
const PusherSdk = require('pusher');

const E2E_ROOT = path.resolve(__dirname, '..');
const HERALD_BIN = path.resolve(E2E_ROOT, process.env.HERALD_BIN || '../../target/debug/herald');

const DEFAULT_TIMEOUT = 5000;
const APP = Object.freeze({ id: '123', key: 'app-key', secret: 'app-secret' });
// 32 bytes, base64: used by the SDK to encrypt private-encrypted-* payloads and by the auth endpoint.
const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');

// ---------------------------------------------------------------------------------------------------------
// small utilities

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Reject `promise` with a descriptive error if it does not settle within `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `predicate` (sync or async) every `interval` ms until it returns a truthy value; returns that value. */
async function waitFor(predicate, timeoutMs = DEFAULT_TIMEOUT, what = 'condition', interval = 25) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const v = await predicate();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const extra = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra}`);
    }
    await sleep(interval);
  }
}

/** Ports this process has handed out: the kernel may offer a just-closed port again. */
const handedOut = new Set();

/** A free port on 127.0.0.1, never one handed out before in this process (two of a server's ports must differ). */
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address();
        srv.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

function parseMaybeJson(s) {
  if (typeof s !== 'string') return s;
  try {
    return JSON.parse(s);
  } catch {
    return s;
  }
}

// ---------------------------------------------------------------------------------------------------------
// TOML

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // TOML basic strings accept JSON escapes for our data
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (v && typeof v === 'object') {
    // inline table, e.g. webhooks = [{ url = "...", events = [...] }]
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    const k = (key) => (/^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key));
    return entries.length ? `{ ${entries.map(([key, x]) => `${k(key)} = ${tomlValue(x)}`).join(', ')} }` : '{}';
  }
  throw new Error(`unsupported TOML value ${JSON.stringify(v)}`);
}

/** Serialise {scalar keys..., apps: [{...}]} to TOML. */
function toToml(config) {
  const lines = [];
  for (const [k, v] of Object.entries(config)) {
    if (k === 'apps' || v === undefined) continue;
    lines.push(`${k} = ${tomlValue(v)}`);
  }
  for (const app of config.apps || []) {
    lines.push('', '[[apps]]');
    for (const [k, v] of Object.entries(app)) {
      if (v === undefined) continue;
      lines.push(`${k} = ${tomlValue(v)}`);
    }
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------------
// resource tracking: everything created during a test is cleaned at its end; servers started outside a test
// (in before()) are cleaned by the global after() hook.

let currentScope = null; // array of cleanup fns for the running test, or null
const globalCleanups = [];
const liveServers = new Set();

function track(cleanup) {
  (currentScope || globalCleanups).push(cleanup);
}

async function runCleanups(list) {
  while (list.length) {
    const fn = list.pop();
    try {
      await fn();
    } catch {
      /* best effort */
    }
  }
}

nodeTest.after(async () => {
  await runCleanups(globalCleanups);
  for (const s of liveServers) s.kill9();
});
process.on('exit', () => {
  for (const s of liveServers) {
    try {
      s.child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

function logsOfLiveServers() {
  let out = '';
  for (const s of liveServers) out += s.logsForFailure();
  return out;
}

/**
 * Like node:test's test(), plus: resources created inside are cleaned up afterwards, and a failure message
 * gets the stdout/stderr of every Herald process that was alive (or started by the test) appended.
 */
function test(name, options, fn) {
  if (typeof options === 'function') {
    fn = options;
    options = {};
  }
  return nodeTest.test(name, { timeout: 60000, ...options }, async (t) => {
    const scope = [];
    const startedHere = [];
    const prevScope = currentScope;
    currentScope = scope;
    scope.startedHere = startedHere;
    try {
      await fn(t);
    } catch (err) {
      let logs = logsOfLiveServers();
      for (const s of startedHere) if (!liveServers.has(s)) logs += s.logsForFailure();
      if (logs && err && typeof err === 'object') {
        try {
          err.message = `${err.message}\n${logs}`;
        } catch {
          /* read-only message */
        }
      }
      throw err;
    } finally {
      currentScope = prevScope;
      await runCleanups(scope);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Herald process

/**
 * Gives a Herald process class (with `port`, `metricsPort` and `app`, on 127.0.0.1)
 * its `baseUrl`, `metricsUrl` and `wsUrl(key, query)`.
 */
function withHeraldUrls(cls) {
  Object.defineProperties(cls.prototype, {
    baseUrl: { get() { return `http://127.0.0.1:${this.port}`; } },
    metricsUrl: { get() { return `http://127.0.0.1:${this.metricsPort}`; } },
  });
  cls.prototype.wsUrl = function wsUrl(key = this.app.key, query = 'protocol=7&client=js&version=8.6.0&flash=false') {
    return `ws://127.0.0.1:${this.port}/app/${key}${query === null ? '' : `?${query}`}`;
  };
  return cls;
}

class HeraldServer {
  constructor({ child, port, metricsPort, configPath, configText, app }) {
    this.child = child;
    this.port = port;
    this.metricsPort = metricsPort;
    this.configPath = configPath;
    this.configText = configText;
    this.app = app; // {id,key,secret} of the first app (or env/dev app)
    this.stdout = '';
    this.stderr = '';
    this.exitCode = undefined;
    this.exitSignal = undefined;
    child.stdout.on('data', (d) => (this.stdout += d));
    child.stderr.on('data', (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        liveServers.delete(this);
        resolve({ code, signal });
      });
    });
  }

  get running() {
    return this.exitCode === undefined && this.exitSignal === undefined;
  }

  logsForFailure() {
    const tail = (s) => (s.length > 6000 ? `...${s.slice(-6000)}` : s);
    return (
      `\n--- herald (port ${this.port}, exit ${this.exitCode ?? this.exitSignal ?? 'running'}) config ---\n` +
      this.configText +
      `--- herald stdout ---\n${tail(this.stdout)}\n--- herald stderr ---\n${tail(this.stderr)}\n--- end herald ---\n`
    );
  }

  /** SIGTERM, wait (bounded) for exit; returns the exit code (null if killed by a signal). */
  async stop(timeoutMs = 5000) {
    if (!this.running) return this.exitCode;
    this.child.kill('SIGTERM');
    try {
      const { code } = await withTimeout(this.exited, timeoutMs, `herald to exit after SIGTERM`);
      return code;
    } catch (e) {
      this.kill9();
      throw new Error(`${e.message}${this.logsForFailure()}`);
    }
  }

  kill9() {
    if (this.running) {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  /** A pusher server SDK client for this server (first app unless given). */
  sdk(app = this.app, extra = {}) {
    return new PusherSdk({
      appId: app.id,
      key: app.key,
      secret: app.secret,
      host: '127.0.0.1',
      port: String(this.port),
      useTLS: false,
      encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
      timeout: 5000,
      ...extra,
    });
  }
}
withHeraldUrls(HeraldServer);

/** Spawn herald with the given args (no readiness wait). Used for negative config tests. */
function spawnHerald(args, { env = {}, cwd } = {}) {
  if (!fs.existsSync(HERALD_BIN)) {
    throw new Error(`Herald binary not found at ${HERALD_BIN} (set HERALD_BIN)`);
  }
  const childEnv = { ...process.env, RUST_BACKTRACE: '1', NO_COLOR: '1', ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete childEnv[k];
  return spawn(HERALD_BIN, args, { env: childEnv, cwd: cwd || os.tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * Start Herald.
 * @param {object} opts
 * @param {object} [opts.config] top-level config keys (activity_timeout, ...)
 * @param {object[]} [opts.apps] apps; default one app APP with the given `app` overrides
 * @param {object} [opts.app] overrides for the default app
 * @param {object} [opts.env] extra environment (undefined values are removed)
 * @param {string} [opts.configText] raw TOML instead of the generated one
 */
async function startHerald(opts = {}) {
  const apps = opts.apps || [{ ...APP, ...(opts.app || {}) }];
  const config = { ...(opts.config || {}), apps };
  const configText = opts.configText ?? toToml(config);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-e2e-'));
  const configPath = path.join(dir, 'herald.toml');
  fs.writeFileSync(configPath, configText);
  const port = await freePort();
  const metricsPort = await freePort();
  const child = spawnHerald(
    ['standalone', '--config', configPath, '--bind', `127.0.0.1:${port}`, '--metrics-bind', `127.0.0.1:${metricsPort}`],
    { env: { HERALD_CONFIG: undefined, HERALD_BIND: undefined, HERALD_METRICS_BIND: undefined, ...(opts.env || {}) } },
  );
  const firstApp = apps[0] ? { id: String(apps[0].id), key: apps[0].key, secret: apps[0].secret } : opts.expectApp;
  const server = new HeraldServer({ child, port, metricsPort, configPath, configText, app: firstApp });
  liveServers.add(server);
  if (currentScope && currentScope.startedHere) currentScope.startedHere.push(server);
  track(async () => {
    server.kill9();
    await withTimeout(server.exited, 3000, 'killed herald to exit').catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const deadline = Date.now() + 10000;
  for (;;) {
    if (!server.running) {
      throw new Error(`herald exited (code ${server.exitCode}, signal ${server.exitSignal}) before /readyz${server.logsForFailure()}`);
    }
    try {
      const res = await fetch(`${server.metricsUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      server.kill9();
      throw new Error(`herald not ready (GET /readyz != 200) within 10 s${server.logsForFailure()}`);
    }
    await sleep(50);
  }
  return server;
}

/**
 * Start standalone Herald with the config text `toml` (no PUSHER_APP_* from the environment) and wait (bounded) for
 * it to exit, as it must on an invalid config. Returns {code, stderr, stdout}.
 */
async function runInvalidConfig(toml) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-e2e-bad-'));
  const file = path.join(dir, 'bad.toml');
  fs.writeFileSync(file, toml);
  const port = await freePort();
  const mport = await freePort();
  const child = spawnHerald(['standalone', '--config', file, '--bind', `127.0.0.1:${port}`, '--metrics-bind', `127.0.0.1:${mport}`], {
    env: { HERALD_CONFIG: undefined, HERALD_BIND: undefined, HERALD_METRICS_BIND: undefined, PUSHER_APP_ID: undefined, PUSHER_APP_KEY: undefined, PUSHER_APP_SECRET: undefined, REVERB_APP_ID: undefined, REVERB_APP_KEY: undefined, REVERB_APP_SECRET: undefined, HERALD_CLIENT_EVENTS: undefined },
  });
  track(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let stderr = '';
  let stdout = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.on('data', (d) => (stdout += d));
  const code = await withTimeout(
    new Promise((resolve) => child.on('exit', (c) => resolve(c))),
    10000,
    'herald to exit on an invalid config',
  );
  return { code, stderr, stdout };
}

// ---------------------------------------------------------------------------------------------------------
// raw WebSocket client

class RawClient {
  /**
   * @param {string} url
   * @param {object} [wsOptions] passed to `ws` (e.g. {autoPong:false})
   */
  constructor(url, wsOptions = {}) {
    this.url = url;
    this.messages = []; // every parsed message, in order
    this.unconsumed = []; // messages not yet returned by next()
    this.waiters = [];
    this.closeInfo = null;
    this.ws = new WebSocket(url, { perMessageDeflate: false, ...wsOptions });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
      this.ws.once('close', (code) => reject(new Error(`closed (${code}) before open`)));
    });
    this.opened.catch(() => {});
    this.ws.on('error', () => {});
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        for (const w of this.waiters.splice(0)) w.onClose(this.closeInfo);
      });
    });
    this.ws.on('message', (raw, isBinary) => {
      const text = raw.toString();
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = { event: '<non-json>', raw: text };
      }
      if (msg && typeof msg === 'object') {
        msg.rawData = msg.data;
        msg.data = parseMaybeJson(msg.data);
        msg.raw = text;
        msg.binary = isBinary;
      }
      this.messages.push(msg);
      const idx = this.waiters.findIndex((w) => w.predicate(msg));
      if (idx >= 0) {
        const [w] = this.waiters.splice(idx, 1);
        w.resolve(msg);
      } else {
        this.unconsumed.push(msg);
      }
    });
    track(() => this.terminate());
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Wait for the next (unconsumed) message matching predicate (function, event name string, or {event, channel}). */
  next(predicate = () => true, timeoutMs = DEFAULT_TIMEOUT, what) {
    const pred = toPredicate(predicate);
    const label = what || describePredicate(predicate);
    const idx = this.unconsumed.findIndex(pred);
    if (idx >= 0) return Promise.resolve(this.unconsumed.splice(idx, 1)[0]);
    if (this.closeInfo) {
      return Promise.reject(new Error(`socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${label}; got: ${this.summary()}`));
    }
    return new Promise((resolve, reject) => {
      const w = {
        predicate: pred,
        resolve: (m) => {
          clearTimeout(w.timer);
          resolve(m);
        },
        onClose: (ci) => {
          clearTimeout(w.timer);
          reject(new Error(`socket closed (${ci.code} ${ci.reason}) while waiting for ${label}; got: ${this.summary()}`));
        },
      };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}; got: ${this.summary()}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /**
   * Asserts no (unconsumed) message matching predicate arrives within `ms`.
   * This is the one place a fixed wait is used: proving absence needs a bounded observation window.
   */
  async expectNoMessage(predicate, ms = 300, what) {
    const pred = toPredicate(predicate);
    const start = this.messages.length;
    const already = this.unconsumed.find(pred);
    if (already) assert.fail(`unexpected ${what || describePredicate(predicate)}: ${already.raw}`);
    await sleep(ms);
    const got = this.messages.slice(start).find(pred);
    if (got) assert.fail(`unexpected ${what || describePredicate(predicate)}: ${got.raw}`);
  }

  summary() {
    const s = this.messages.map((m) => m.raw).join(' | ');
    return s.length > 2000 ? `${s.slice(0, 2000)}...` : s || '(no messages)';
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  /** Wait for pusher:connection_established; returns {socket_id, activity_timeout}. */
  async established(timeoutMs = DEFAULT_TIMEOUT) {
    if (!this._established) {
      this._established = this.next('pusher:connection_established', timeoutMs).then((m) => m.data);
    }
    return this._established;
  }

  async socketId() {
    return (await this.established()).socket_id;
  }

  /** Send pusher:subscribe; resolves with the first subscription_succeeded / subscription_error / error answer. */
  async subscribe(channel, { auth, channel_data, timeoutMs } = {}) {
    await this.established();
    const data = { channel };
    if (auth !== undefined) data.auth = auth;
    if (channel_data !== undefined) data.channel_data = channel_data;
    this.send({ event: 'pusher:subscribe', data });
    return this.next(
      (m) =>
        ((m.event === 'pusher_internal:subscription_succeeded' || m.event === 'pusher:subscription_error') && m.channel === channel) ||
        (m.event === 'pusher:subscription_error' && m.channel === undefined) ||
        m.event === 'pusher:error',
      timeoutMs || DEFAULT_TIMEOUT,
      `subscription answer for ${channel}`,
    );
  }

  /** Subscribe and assert success. */
  async subscribeOk(channel, opts) {
    const m = await this.subscribe(channel, opts);
    assert.equal(m.event, 'pusher_internal:subscription_succeeded', `subscribe ${channel}: ${m.raw}`);
    return m;
  }

  /**
   * Round-trip a pusher:ping. Herald handles a socket's messages in order, so once the pong is here every frame
   * the server sent in answer to earlier messages of this socket has arrived too.
   */
  async barrier(timeoutMs = DEFAULT_TIMEOUT) {
    this.send({ event: 'pusher:ping', data: {} });
    await this.next('pusher:pong', timeoutMs, 'pusher:pong (barrier)');
  }

  /** Wait (bounded) for the socket to close; returns {code, reason}. */
  async waitClose(timeoutMs = DEFAULT_TIMEOUT, what = 'socket close') {
    return withTimeout(this.closed, timeoutMs, `${what}; got: ${this.summary()}`);
  }

  close(code = 1000) {
    try {
      this.ws.close(code);
    } catch {
      /* ignore */
    }
  }

  terminate() {
    try {
      this.ws.terminate();
    } catch {
      /* ignore */
    }
  }
}

function toPredicate(p) {
  if (typeof p === 'function') return p;
  if (typeof p === 'string') return (m) => m.event === p;
  if (p && typeof p === 'object') return (m) => Object.entries(p).every(([k, v]) => m[k] === v);
  return () => true;
}

function describePredicate(p) {
  if (typeof p === 'string') return `event ${p}`;
  if (p && typeof p === 'object' && typeof p !== 'function') return `message ${JSON.stringify(p)}`;
  return 'matching message';
}

async function rawClient(server, { key, query, wsOptions } = {}) {
  const c = new RawClient(server.wsUrl(key, query), wsOptions);
  await withTimeout(c.opened, DEFAULT_TIMEOUT, 'websocket open');
  return c;
}

/** Raw client that is connected and has its socket id. */
async function rawConnected(server, opts) {
  const c = await rawClient(server, opts);
  const est = await c.established();
  c.id = est.socket_id;
  return c;
}

// ---------------------------------------------------------------------------------------------------------
// signing helpers (what the auth endpoint / SDK do), for raw clients

function hmacHex(secret, str) {
  return crypto.createHmac('sha256', secret).update(str).digest('hex');
}

function channelAuth(app, socketId, channel, channelData) {
  const str = channelData === undefined ? `${socketId}:${channel}` : `${socketId}:${channel}:${channelData}`;
  return `${app.key}:${hmacHex(app.secret, str)}`;
}

function userAuth(app, socketId, userData) {
  return `${app.key}:${hmacHex(app.secret, `${socketId}::user::${userData}`)}`;
}

/**
 * Send pusher:subscribe that must be refused for bad auth. Accepted refusals: real Pusher's `pusher:error`
 * (`code: null`, a message, no channel) and/or the Herald/soketi-style `pusher:subscription_error`
 * (`{type:"AuthError", error, status:401}` with the channel set); each one that is sent must be well formed.
 * The channel must never report subscription_succeeded and the socket stays open.
 * Parity with real Pusher (pusher:error must be among them) is asserted separately in channels.test.js.
 * Returns {error, subscriptionError}.
 */
async function expectAuthRefused(client, channel, { auth, channel_data } = {}, what = channel) {
  await client.established();
  const start = client.messages.length;
  const data = { channel };
  if (auth !== undefined) data.auth = auth;
  if (channel_data !== undefined) data.channel_data = channel_data;
  client.send({ event: 'pusher:subscribe', data });
  await client.next(
    (m) => m.event === 'pusher:error' || (m.event === 'pusher:subscription_error' && m.channel === channel) || (m.event === 'pusher_internal:subscription_succeeded' && m.channel === channel),
    DEFAULT_TIMEOUT,
    `refusal of ${what}`,
  );
  await client.barrier(); // a second refusal frame sent together with the first has arrived now
  const since = client.messages.slice(start);
  assert.ok(
    !since.some((m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === channel),
    `${what}: must not succeed: ${client.summary()}`,
  );
  const error = since.find((m) => m.event === 'pusher:error');
  const subscriptionError = since.find((m) => m.event === 'pusher:subscription_error');
  if (error) {
    assert.ok(error.data && typeof error.data === 'object', `${what}: pusher:error data is an object: ${error.raw}`);
    assert.ok(error.data.code === null || error.data.code === undefined, `${what}: real Pusher uses code null for subscription auth errors: ${error.raw}`);
    assert.equal(typeof error.data.message, 'string', `${what}: message: ${error.raw}`);
  }
  assert.ok(subscriptionError, `${what}: pusher:subscription_error (status 401) expected: ${client.summary()}`);
  {
    assert.equal(subscriptionError.channel, channel, subscriptionError.raw);
    assert.equal(subscriptionError.data.type, 'AuthError', subscriptionError.raw);
    assert.equal(subscriptionError.data.status, 401, subscriptionError.raw);
  }
  for (const m of [error, subscriptionError]) {
    const i = client.unconsumed.indexOf(m);
    if (i >= 0) client.unconsumed.splice(i, 1);
  }
  assert.ok(client.isOpen, `${what}: socket stays open`);
  return { error, subscriptionError };
}

/** Subscribe a raw client to a presence channel as user `id`. */
async function rawJoinPresence(client, app, channel, userId, userInfo = { name: `user ${userId}` }) {
  const socketId = await client.socketId();
  const channelData = JSON.stringify({ user_id: String(userId), user_info: userInfo });
  return client.subscribe(channel, { auth: channelAuth(app, socketId, channel, channelData), channel_data: channelData });
}

async function rawSubscribePrivate(client, app, channel) {
  const socketId = await client.socketId();
  return client.subscribe(channel, { auth: channelAuth(app, socketId, channel) });
}

async function rawSignin(client, app, userData) {
  const socketId = await client.socketId();
  const ud = typeof userData === 'string' ? userData : JSON.stringify(userData);
  client.send({ event: 'pusher:signin', data: { auth: userAuth(app, socketId, ud), user_data: ud } });
  return client.next((m) => m.event === 'pusher:signin_success' || m.event === 'pusher:error', DEFAULT_TIMEOUT, 'signin answer').catch((e) => {
    if (client.closeInfo) return { event: '<closed>', data: client.closeInfo, raw: `socket closed ${client.closeInfo.code}` };
    throw e;
  });
}

// ---------------------------------------------------------------------------------------------------------
// HTTP API helpers (hand-signed requests, for error cases the SDK refuses to produce)

/**
 * Make a signed Pusher HTTP API request.
 * @param {HeraldServer} server
 * @param {object} o {method, path (without /apps/id prefix unless `fullPath`), params, body (object|string),
 *                   app, timestamp, badSignature, signWith, fullPath, appId,
 *                   emptyBodyMd5 (add body_md5 of the empty body, as the Python SDK does on GET)}
 */
async function apiRequest(server, o) {
  const app = o.app || server.app;
  const method = (o.method || 'GET').toUpperCase();
  const appId = o.appId ?? app.id;
  const reqPath = o.fullPath ? o.path : `/apps/${appId}${o.path}`;
  const body = o.body === undefined ? undefined : typeof o.body === 'string' ? o.body : JSON.stringify(o.body);
  const params = {
    auth_key: app.key,
    auth_timestamp: o.timestamp ?? Math.floor(Date.now() / 1000),
    auth_version: '1.0',
    ...(o.params || {}),
  };
  if (body !== undefined || o.emptyBodyMd5) params.body_md5 = crypto.createHash('md5').update(body || '', 'utf8').digest('hex');
  const qs = Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join('&');
  let sig = hmacHex(o.signWith || app.secret, [method, reqPath, qs].join('\n'));
  if (o.badSignature) sig = sig.replace(/^./, (c) => (c === '0' ? '1' : '0'));
  // query values are sent URL-encoded; the signature is over the unencoded string like the SDKs do
  const sentQs = Object.keys(params)
    .sort()
    .map((k) => `${k}=${encodeURIComponent(params[k])}`)
    .join('&');
  const url = `${server.baseUrl}${reqPath}?${sentQs}&auth_signature=${sig}`;
  const res = await fetch(url, {
    method,
    body,
    headers: body !== undefined ? { 'content-type': 'application/json' } : {},
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, headers: res.headers };
}

/** GET via the SDK and parse the JSON body. */
async function sdkGetJson(sdk, pathName, params) {
  const res = await sdk.get({ path: pathName, params });
  assert.equal(res.status, 200);
  return res.json();
}

// ---------------------------------------------------------------------------------------------------------
// pusher-js / laravel-echo clients

function pusherOptions(server, extra = {}) {
  return {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    ...extra,
  };
}

/** A pusher-js client (disconnected at the end of the test). */
function pusherClient(server, extra = {}, key = server.app.key) {
  const client = new PusherJs(key, pusherOptions(server, extra));
  track(() => client.disconnect());
  return client;
}

/** Wait until a pusher-js client reaches `state` (default connected). */
function pusherState(client, state = 'connected', timeoutMs = DEFAULT_TIMEOUT) {
  if (client.connection.state === state) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => {
      const cb = (s) => {
        if (s.current === state) {
          client.connection.unbind('state_change', cb);
          resolve();
        }
      };
      client.connection.bind('state_change', cb);
    }),
    timeoutMs,
    `pusher-js state ${state} (is ${client.connection.state})`,
  );
}

async function connectedPusher(server, extra, key) {
  const c = pusherClient(server, extra, key);
  await pusherState(c, 'connected');
  return c;
}

/** Promise for the data of the next `event` emitted on a pusher-js channel/connection/user object. */
function nextEvent(bindable, event, timeoutMs = DEFAULT_TIMEOUT, what) {
  return nextEventMeta(bindable, event, timeoutMs, what).then((e) => e.data);
}

/** Like nextEvent but resolves {data, meta} (meta carries user_id for client events on presence channels). */
function nextEventMeta(bindable, event, timeoutMs = DEFAULT_TIMEOUT, what) {
  let cb;
  return withTimeout(
    new Promise((resolve) => {
      cb = (data, meta) => {
        bindable.unbind(event, cb);
        resolve({ data, meta });
      };
      bindable.bind(event, cb);
    }),
    timeoutMs,
    what || `event ${event}`,
  ).finally(() => bindable.unbind(event, cb));
}

/** Collects every `event` on a bindable into an array. */
function collect(bindable, event) {
  const list = [];
  bindable.bind(event, (data, meta) => list.push({ data, meta }));
  return list;
}

/** Subscribe with pusher-js and wait for pusher:subscription_succeeded (rejects on subscription_error). */
function subscribed(client, channelName, timeoutMs = DEFAULT_TIMEOUT) {
  const ch = client.subscribe(channelName);
  return withTimeout(
    new Promise((resolve, reject) => {
      if (ch.subscribed) return resolve(ch);
      ch.bind('pusher:subscription_succeeded', () => resolve(ch));
      ch.bind('pusher:subscription_error', (e) => reject(new Error(`subscription_error on ${channelName}: ${JSON.stringify(e)}`)));
    }),
    timeoutMs,
    `subscription to ${channelName}`,
  );
}

/** Subscribe with pusher-js and wait for pusher:subscription_error; returns its data. */
function subscriptionError(client, channelName, timeoutMs = DEFAULT_TIMEOUT) {
  const ch = client.subscribe(channelName);
  return withTimeout(
    new Promise((resolve, reject) => {
      ch.bind('pusher:subscription_error', (e) => resolve(e));
      ch.bind('pusher:subscription_succeeded', () => reject(new Error(`${channelName}: subscription unexpectedly succeeded`)));
    }),
    timeoutMs,
    `subscription_error on ${channelName}`,
  );
}

/** Asserts `event` is not emitted on the bindable within `ms` (bounded wait to prove absence). */
async function noEventWithin(bindable, event, ms = 300) {
  const seen = [];
  const cb = (d) => seen.push(d);
  bindable.bind(event, cb);
  await sleep(ms);
  bindable.unbind(event, cb);
  assert.deepEqual(seen, [], `unexpected ${event}`);
}

let EchoClass;
async function loadEcho() {
  // laravel-echo 2.x is an ES module package ("type":"module"); require() gives an empty namespace.
  if (!EchoClass) EchoClass = (await import('laravel-echo')).default;
  return EchoClass;
}

/** A Laravel Echo instance for `user` (see USERS) authenticating against the test auth endpoint. */
async function echoClient(server, authServer, user, extra = {}) {
  const Echo = await loadEcho();
  const headers = user ? { 'X-Test-User': String(user) } : {};
  const echo = new Echo({
    broadcaster: 'pusher',
    key: server.app.key,
    Pusher: PusherJs,
    ...pusherOptions(server),
    authEndpoint: `${authServer.url}/broadcasting/auth`,
    auth: { headers },
    userAuthentication: { endpoint: `${authServer.url}/broadcasting/user-auth`, headers },
    withoutInterceptors: true,
    ...extra,
  });
  track(() => echo.disconnect());
  return echo;
}

/**
 * Resolve when an Echo channel (Echo.channel/private/join result) is subscribed. Echo's .subscribed(cb) only
 * binds pusher:subscription_succeeded, which is missed if the subscription already completed, so check first.
 */
function echoSubscribed(echoChannel, timeoutMs = DEFAULT_TIMEOUT, what = `Echo subscription to ${echoChannel.name}`) {
  return withTimeout(
    new Promise((resolve, reject) => {
      if (echoChannel.subscription.subscribed) return resolve(echoChannel);
      echoChannel.subscribed(() => resolve(echoChannel));
      echoChannel.error((e) => reject(new Error(`${what}: subscription error ${JSON.stringify(e)}`)));
    }),
    timeoutMs,
    what,
  );
}

// ---------------------------------------------------------------------------------------------------------
// Laravel-like auth endpoint

const USERS = Object.freeze({
  1: { id: '1', name: 'Alice Admin', role: 'admin' },
  2: { id: '2', name: 'Bob Admin', role: 'admin' },
  3: { id: '3', name: 'Carol Customer', role: 'user' },
  4: { id: '4', name: 'Dave Customer', role: 'user' },
});

/**
 * Starts an HTTP server emulating Laravel's broadcasting routes:
 *   POST /broadcasting/auth       (form: socket_id, channel_name) -> {auth[, channel_data][, shared_secret]} | 403
 *   POST /broadcasting/user-auth  (form: socket_id)               -> {auth, user_data} | 403
 * The user is chosen by header X-Test-User or query ?user=. `admin-*` channels (private-admin-*,
 * presence-admin-*, private-encrypted-admin-*) are signed only for users with role admin.
 * `opts.watchlists` maps user id -> array of watched user ids (added to user_data).
 */
async function startAuthServer(server, opts = {}) {
  const sdk = server.sdk();
  const users = opts.users || USERS;
  const requests = [];
  const httpServer = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const url = new URL(req.url, 'http://localhost');
      const form = new URLSearchParams(body);
      const userId = req.headers['x-test-user'] || url.searchParams.get('user');
      const user = userId ? users[userId] : undefined;
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      const entry = { path: url.pathname, user: userId, channel, socketId, status: 0 };
      requests.push(entry);
      const reply = (status, obj) => {
        entry.status = status;
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      try {
        if (req.method !== 'POST') return reply(405, { message: 'Method Not Allowed' });
        if (!user) return reply(403, { message: 'Unauthenticated.' });
        if (url.pathname === '/broadcasting/auth') {
          const bare = channel.replace(/^(private-encrypted-|private-|presence-)/, '');
          if (bare.startsWith('admin-') && user.role !== 'admin') return reply(403, { message: 'This action is unauthorized.' });
          if (opts.deny && opts.deny(user, channel)) return reply(403, { message: 'This action is unauthorized.' });
          if (channel.startsWith('presence-')) {
            const presenceData = { user_id: user.id, user_info: { id: user.id, name: user.name } };
            return reply(200, sdk.authorizeChannel(socketId, channel, presenceData));
          }
          return reply(200, sdk.authorizeChannel(socketId, channel));
        }
        if (url.pathname === '/broadcasting/user-auth') {
          const userData = { id: user.id, user_info: { name: user.name } };
          if (opts.watchlists && opts.watchlists[user.id]) userData.watchlist = opts.watchlists[user.id];
          return reply(200, sdk.authenticateUser(socketId, userData));
        }
        return reply(404, { message: 'Not Found' });
      } catch (e) {
        return reply(500, { message: String(e && e.message) });
      }
    });
  });
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${httpServer.address().port}`;
  const close = () =>
    new Promise((resolve) => {
      httpServer.closeAllConnections?.();
      httpServer.close(() => resolve());
    });
  track(close);
  return { url, requests, close, users };
}

/** pusher-js options authenticating as `user` against the auth server. */
function authOptions(authServer, user) {
  const headers = { 'X-Test-User': String(user) };
  return {
    channelAuthorization: { endpoint: `${authServer.url}/broadcasting/auth`, transport: 'ajax', headers },
    userAuthentication: { endpoint: `${authServer.url}/broadcasting/user-auth`, transport: 'ajax', headers },
  };
}

/** pusher-js channelAuthorization with a customHandler that signs directly with the SDK. */
function customAuthOptions(server, userId, userInfo) {
  const sdk = server.sdk();
  return {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          if (channelName.startsWith('presence-')) {
            callback(null, sdk.authorizeChannel(socketId, channelName, { user_id: String(userId), user_info: userInfo || { name: `user ${userId}` } }));
          } else {
            callback(null, sdk.authorizeChannel(socketId, channelName));
          }
        } catch (e) {
          callback(e, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          callback(null, sdk.authenticateUser(socketId, { id: String(userId), user_info: userInfo || { name: `user ${userId}` } }));
        } catch (e) {
          callback(e, null);
        }
      },
    },
  };
}

/** The value of the first line of a server's /metrics that starts with `line` (0 when absent). */
async function metricLine(server, line) {
  const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
  const found = text.split('\n').find((l) => l.startsWith(line));
  return found ? Number(found.split(' ').pop()) : 0;
}

module.exports = {
  metricLine,
  withHeraldUrls,
  runInvalidConfig,
  APP,
  ENCRYPTION_MASTER_KEY_BASE64,
  HERALD_BIN,
  USERS,
  DEFAULT_TIMEOUT,
  test,
  assert,
  sleep,
  withTimeout,
  waitFor,
  freePort,
  toToml,
  startHerald,
  spawnHerald,
  track,
  RawClient,
  rawClient,
  rawConnected,
  rawJoinPresence,
  rawSubscribePrivate,
  expectAuthRefused,
  rawSignin,
  channelAuth,
  userAuth,
  hmacHex,
  apiRequest,
  sdkGetJson,
  pusherOptions,
  pusherClient,
  pusherState,
  connectedPusher,
  nextEvent,
  nextEventMeta,
  collect,
  subscribed,
  subscriptionError,
  noEventWithin,
  loadEcho,
  echoClient,
  echoSubscribed,
  startAuthServer,
  authOptions,
  customAuthOptions,
  PusherJs,
  PusherSdk,
  WebSocket,
};
