'use strict';
// Helpers for the tests that check the Laravel documentation against the real binary
// (laravel-docs.test.js, reverb-dropin.test.js). Not a test file itself.
//
// - docBlock(): the fenced code block that follows an `<!-- e2e: NAME ... -->` marker in a docs/*.md file, so
//   that a test uses exactly what the page tells a user to write (docs and test cannot drift apart).
// - parseDotenv(): a `.env` block as Vite/Laravel read it (quotes stripped, "${OTHER}" expanded).
// - echoOptionsFromDoc(): the object literal passed to `new Echo({...})` / `configureEcho({...})` in a block,
//   evaluated with `import.meta.env` bound to the given variables (what Vite does at build time).
// - startHeraldFromEnv(): `herald standalone` with NO config file, its app from environment variables only
//   (PUSHER_APP_* or REVERB_APP_*), on free loopback ports, waiting (bounded) for /readyz.

const fs = require('node:fs');
const path = require('node:path');
const h = require('./harness');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

/** The text of the docs file `rel` (relative to the repository root). */
function readDoc(rel) {
  return fs.readFileSync(path.join(REPO_ROOT, rel), 'utf8');
}

/** The body of the first fenced code block after the marker `<!-- e2e: name` in docs file `rel`. */
function docBlock(rel, name) {
  const text = readDoc(rel);
  const marker = `<!-- e2e: ${name}`;
  const at = text.indexOf(marker);
  if (at < 0) throw new Error(`${rel}: marker "${marker}" not found`);
  if (text.indexOf(marker, at + 1) >= 0) throw new Error(`${rel}: marker "${marker}" appears twice`);
  const m = /```[a-z]*\n([\s\S]*?)\n```/.exec(text.slice(at));
  if (!m) throw new Error(`${rel}: no fenced code block after "${marker}"`);
  return m[1];
}

/**
 * Parse a .env block. `overrides` replace the value of a variable where it is defined (before later lines
 * expand it), e.g. {PUSHER_PORT: '43123'} makes VITE_PUSHER_PORT="${PUSHER_PORT}" the test's free port.
 */
function parseDotenv(text, overrides = {}) {
  const out = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`not a .env line: ${raw}`);
    const [, key, rest] = m;
    let value;
    const quoted = /^"((?:[^"\\]|\\.)*)"/.exec(rest) || /^'([^']*)'/.exec(rest);
    if (quoted) value = quoted[1];
    else value = rest.replace(/\s+#.*$/, '').trim();
    if (!(quoted && rest.startsWith("'"))) value = value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, v) => out[v] ?? '');
    out[key] = Object.prototype.hasOwnProperty.call(overrides, key) ? String(overrides[key]) : value;
  }
  return out;
}

/** The balanced `{...}` that starts at the first `{` after `call(` in `code`. */
function objectArgument(code, call) {
  const start = code.indexOf(`${call}(`);
  if (start < 0) throw new Error(`no ${call}( in the documented block:\n${code}`);
  const open = code.indexOf('{', start);
  let depth = 0;
  let quote = null;
  for (let i = open; i < code.length; i++) {
    const c = code[i];
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = null;
      continue;
    }
    if (c === "'" || c === '"' || c === '`') quote = c;
    else if (c === '/' && code[i + 1] === '/') i = code.indexOf('\n', i) - 1; // line comment
    else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return code.slice(open, i + 1);
  }
  throw new Error(`unbalanced braces after ${call}( in:\n${code}`);
}

/**
 * Evaluate the options object of `call({...})` in a documented block with `import.meta.env` = viteEnv, as the
 * bundle Vite builds from it would. Only `import.meta.env` is rewritten; the rest is the documented code.
 */
function echoOptionsFromDoc(code, call, viteEnv) {
  const literal = objectArgument(code, call).replace(/import\.meta\.env/g, '__viteEnv');
  // eslint-disable-next-line no-new-func
  return new Function('__viteEnv', `'use strict';\nreturn (${literal}\n);`)(Object.freeze({ ...viteEnv }));
}

const APP_ENV = ['PUSHER_APP_ID', 'PUSHER_APP_KEY', 'PUSHER_APP_SECRET', 'REVERB_APP_ID', 'REVERB_APP_KEY', 'REVERB_APP_SECRET', 'HERALD_CLIENT_EVENTS'];

/**
 * `herald standalone --bind 127.0.0.1:P --metrics-bind 127.0.0.1:M` with no --config and no HERALD_CONFIG: the app
 * comes from `env` alone (every app variable not in `env` is removed from the child's environment). `app` is
 * {id, key, secret} as the test expects it. Killed at the end of the test.
 */
async function startHeraldFromEnv(env, app) {
  const port = await h.freePort();
  const metricsPort = await h.freePort();
  const cleared = Object.fromEntries([...APP_ENV, 'HERALD_CONFIG', 'HERALD_BIND', 'HERALD_METRICS_BIND'].map((k) => [k, undefined]));
  const child = h.spawnHerald(['standalone', '--bind', `127.0.0.1:${port}`, '--metrics-bind', `127.0.0.1:${metricsPort}`], {
    env: { ...cleared, RUST_LOG: 'info', ...env },
  });
  const server = {
    port,
    metricsPort,
    app,
    output: '',
    baseUrl: `http://127.0.0.1:${port}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    sdk(a = app) {
      return new h.PusherSdk({ appId: a.id, key: a.key, secret: a.secret, host: '127.0.0.1', port: String(port), useTLS: false, timeout: 5000 });
    },
    logs() {
      return `\n--- herald (port ${port}; env ${JSON.stringify(env)}) output ---\n${server.output.slice(-6000)}\n--- end herald ---\n`;
    },
  };
  child.stdout.on('data', (d) => (server.output += d));
  child.stderr.on('data', (d) => (server.output += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  h.track(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await h.withTimeout(exited, 3000, 'herald to exit after SIGKILL').catch(() => {});
  });
  let gone = null;
  exited.then((e) => (gone = e));
  await h
    .waitFor(
      async () => {
        if (gone) throw new Error(`herald exited (${JSON.stringify(gone)}) before /readyz`);
        const res = await fetch(`${server.metricsUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
        return res.status === 200;
      },
      10000,
      'herald (app from the environment) to be ready',
      50,
    )
    .catch((e) => {
      throw new Error(`${e.message}${server.logs()}`);
    });
  return server;
}

/** Run `fn`; on failure, append the server's output to the error message. */
async function withLogs(server, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err && typeof err === 'object') {
      try {
        err.message = `${err.message}${server.logs()}`;
      } catch {
        /* read-only message */
      }
    }
    throw err;
  }
}

module.exports = { REPO_ROOT, readDoc, docBlock, parseDotenv, echoOptionsFromDoc, startHeraldFromEnv, withLogs };
