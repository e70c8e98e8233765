'use strict';
// Finding and starting the Herald binary (it is never built here: build it with cargo first).

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

/** HERALD_BIN, else target/release/herald, else target/debug/herald (of this repository). */
function findHerald(env = process.env) {
  const candidates = env.HERALD_BIN
    ? [path.resolve(env.HERALD_BIN)]
    : [path.join(REPO_ROOT, 'target', 'release', 'herald'), path.join(REPO_ROOT, 'target', 'debug', 'herald')];
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  throw new Error(
    `no Herald binary: tried ${candidates.join(', ')}.\n` +
      `Build it (cargo build --release, in ${REPO_ROOT}) or point HERALD_BIN at one.`,
  );
}

/** The wire prefix of the store's large presence channel: Laravel's `user-presence` (docs/presence.md §12). */
const LARGE_PRESENCE_PREFIXES = ['presence-user-presence'];

const tomlString = (s) => JSON.stringify(String(s)); // TOML basic strings take JSON's escapes

/** Events the dashboard shows per feed, and so the history kept on each admin channel. */
const HISTORY_EVENTS = 20;

/**
 * The config file Herald runs with: the store's one app (the PUSHER_APP_* of its .env) with
 * `large_presence_prefixes` and the admin channels' history, which only a config file can set. HERALD_CLIENT_EVENTS=true, which Herald refuses
 * next to a file with apps, becomes the app's `client_events`.
 */
function heraldConfig(app, env = process.env) {
  const clientEvents = /^(true|1)$/i.test(env.HERALD_CLIENT_EVENTS || '');
  return [
    '# Written by examples/admin-monitoring/lib/herald.js for this run; deleted when it stops.',
    '[[apps]]',
    `id = ${tomlString(app.id)}`,
    `key = ${tomlString(app.key)}`,
    `secret = ${tomlString(app.secret)}`,
    `client_events = ${clientEvents}`,
    '# Thousands of shoppers on user-presence (up to max_large_presence_members, 20,000): only members whose signed',
    '# user_info has "watcher": true (the admins) get the member list and joins/leaves; the others get the count.',
    `large_presence_prefixes = [${LARGE_PRESENCE_PREFIXES.map(tomlString).join(', ')}]`,
    '# History channels (docs/protocol.md, "History channels"): an admin who opens the dashboard first gets the last',
    '# events of every private-admin-* channel, so the feeds are full at once instead of empty until the next event.',
    '[[apps.history]]',
    'prefix = "private-admin-"',
    `events = ${HISTORY_EVENTS}`,
    'seconds = 86400',
    '',
  ].join('\n');
}

/**
 * Start `herald standalone --config FILE`, FILE being heraldConfig(app) in a new temporary directory, and wait
 * until GET /readyz on the metrics address answers 200. stop() deletes the directory.
 * @returns {Promise<{child, args, configPath, stop: () => Promise<void>, output: () => string, exited: Promise<{code, signal}>}>}
 */
async function startHerald({ bin, app, host, port, metricsPort, onLine = () => {}, readyTimeoutMs = 15000 }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-admin-monitoring-'));
  const removeDir = () => fs.rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeDir);
  const configPath = path.join(dir, 'herald.toml');
  fs.writeFileSync(configPath, heraldConfig(app), { mode: 0o600 });
  const env = { ...process.env, NO_COLOR: '1' };
  // The app and the addresses must come from this file and the flags: ignore HERALD_* left in the shell.
  delete env.HERALD_CONFIG;
  delete env.HERALD_BIND;
  delete env.HERALD_METRICS_BIND;
  delete env.HERALD_CLIENT_EVENTS; // in the file
  const args = ['standalone', '--config', configPath, '--bind', `${host}:${port}`, '--metrics-bind', `${host}:${metricsPort}`];
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const lines = (stream) => {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (d) => {
      output += d;
      if (output.length > 200000) output = output.slice(-100000);
      partial += d;
      const parts = partial.split('\n');
      partial = parts.pop();
      for (const l of parts) if (l.trim()) onLine(l);
    });
  };
  lines(child.stdout);
  lines(child.stderr);
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    child.on('error', (e) => {
      output += `\n${e.message}\n`;
      exitInfo = { code: null, signal: null, error: e };
      resolve(exitInfo);
    });
  });

  const readyUrl = `http://${host.includes(':') ? `[${host}]` : host}:${metricsPort}/readyz`;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exitInfo) {
      removeDir();
      throw new Error(`herald exited (code ${exitInfo.code}, signal ${exitInfo.signal}) before it was ready:\n${output}`);
    }
    try {
      const res = await fetch(readyUrl, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      removeDir();
      throw new Error(`herald not ready (GET ${readyUrl} != 200) within ${readyTimeoutMs} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  async function stop(timeoutMs = 10000) {
    if (!exitInfo) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      await exited;
      clearTimeout(timer);
    }
    removeDir();
  }
  return { child, args, configPath, stop, exited, output: () => output };
}

module.exports = { HISTORY_EVENTS, findHerald, startHerald, heraldConfig, LARGE_PRESENCE_PREFIXES, REPO_ROOT };
