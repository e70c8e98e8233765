'use strict';
// Finding and starting the Herald binary (it is never built here: build it with cargo first).

const { spawn } = require('node:child_process');
const fs = require('node:fs');
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

/**
 * Start `herald standalone` with the app in PUSHER_APP_* (what a Laravel .env has) and wait until
 * GET /readyz on the metrics address answers 200.
 * @returns {Promise<{child, stop: () => Promise<void>, output: () => string, exited: Promise<{code, signal}>}>}
 */
async function startHerald({ bin, app, host, port, metricsPort, onLine = () => {}, readyTimeoutMs = 15000 }) {
  const env = { ...process.env, PUSHER_APP_ID: app.id, PUSHER_APP_KEY: app.key, PUSHER_APP_SECRET: app.secret, NO_COLOR: '1' };
  // The app must come from PUSHER_APP_*, and the addresses from the flags: ignore a HERALD_* left in the shell.
  delete env.HERALD_CONFIG;
  delete env.HERALD_BIND;
  delete env.HERALD_METRICS_BIND;
  const args = ['standalone', '--bind', `${host}:${port}`, '--metrics-bind', `${host}:${metricsPort}`];
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
      throw new Error(`herald not ready (GET ${readyUrl} != 200) within ${readyTimeoutMs} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  async function stop(timeoutMs = 10000) {
    if (exitInfo) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
  return { child, args, stop, exited, output: () => output };
}

module.exports = { findHerald, startHerald, REPO_ROOT };
