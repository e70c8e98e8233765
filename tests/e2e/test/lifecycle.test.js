'use strict';
// Process lifecycle: graceful shutdown, config validation, apps from the environment, the development app.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./harness');
const { test, assert } = h;

const NO_ENV_APP = { PUSHER_APP_ID: undefined, PUSHER_APP_KEY: undefined, PUSHER_APP_SECRET: undefined, REVERB_APP_ID: undefined, REVERB_APP_KEY: undefined, REVERB_APP_SECRET: undefined, HERALD_CLIENT_EVENTS: undefined };

test('SIGTERM closes every client with 4200 and the process exits 0 within ~2 s', async () => {
  const server = await h.startHerald();
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await b.subscribeOk('some-channel');
  const pjs = await h.connectedPusher(server);
  const pjsErrors = [];
  pjs.connection.bind('error', (e) => pjsErrors.push(e));
  const pjsStates = [];
  pjs.connection.bind('state_change', (s) => pjsStates.push(s.current));

  const started = Date.now();
  const code = await server.stop(5000);
  const elapsed = Date.now() - started;
  assert.equal(code, 0, `exit code (signal ${server.exitSignal})`);
  assert.ok(elapsed < 3000, `exited after ${elapsed} ms`);
  assert.equal((await a.waitClose(1000)).code, 4200);
  assert.equal((await b.waitClose(1000)).code, 4200);
  // pusher-js treats 4200 as "reconnect now": it leaves the connected state
  await h.waitFor(() => pjsStates.length > 0, 3000, 'pusher-js to notice the shutdown');
  assert.notEqual(pjsStates[0], 'connected');
});

test('SIGTERM with no clients exits 0 promptly', async () => {
  const server = await h.startHerald();
  const started = Date.now();
  assert.equal(await server.stop(5000), 0);
  assert.ok(Date.now() - started < 3000);
});


test('invalid config: a wrongly typed value exits non-zero and names the key', async () => {
  const { code, stderr, stdout } = await h.runInvalidConfig(
    'activity_timeout = 120\n\n[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\nmax_presence_members = "lots"\n',
  );
  assert.notEqual(code, 0);
  assert.equal(code, 2, `exit code 2 per SPEC (stderr: ${stderr})`);
  assert.match(stderr, /apps\[0\]\.max_presence_members/, `stderr names the key. stderr:\n${stderr}\nstdout:\n${stdout}`);
});

test('invalid config: a missing required app field exits non-zero and names the key', async () => {
  const { code, stderr } = await h.runInvalidConfig('[[apps]]\nid = "1"\nkey = "k"\n');
  assert.notEqual(code, 0);
  assert.match(stderr, /apps\[0\]\.secret|secret/, `stderr names the missing key: ${stderr}`);
});

test('invalid config: a top-level value of the wrong type names the key', async () => {
  const { code, stderr } = await h.runInvalidConfig('activity_timeout = "soon"\n\n[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n');
  assert.notEqual(code, 0);
  assert.match(stderr, /activity_timeout/, stderr);
});

test('invalid config: activity_timeout = 0 is rejected (pusher-js refuses a handshake without one)', async () => {
  const { code, stderr } = await h.runInvalidConfig('activity_timeout = 0\n\n[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n');
  assert.notEqual(code, 0, stderr);
  assert.match(stderr, /activity_timeout/, stderr);
});

test('invalid config: unparsable TOML exits non-zero', async () => {
  const { code, stderr } = await h.runInvalidConfig('[[apps]\nid = \n');
  assert.notEqual(code, 0, stderr);
});

test('no apps in the config: the app comes from PUSHER_APP_ID / PUSHER_APP_KEY / PUSHER_APP_SECRET', async () => {
  const envApp = { id: 'env-app', key: 'env-key', secret: 'env-secret' };
  const server = await h.startHerald({
    apps: [],
    expectApp: envApp,
    env: { PUSHER_APP_ID: envApp.id, PUSHER_APP_KEY: envApp.key, PUSHER_APP_SECRET: envApp.secret },
  });
  const client = await h.connectedPusher(server, {}, envApp.key);
  const ch = await h.subscribed(client, 'env-channel');
  const got = h.nextEvent(ch, 'hello');
  await server.sdk(envApp).trigger('env-channel', 'hello', { from: 'env' });
  assert.deepEqual(await got, { from: 'env' });
  // the development app is not there when an env app is configured
  const dev = new h.RawClient(server.wsUrl('app-key'));
  const closed = await dev.waitClose();
  assert.equal(closed.code, 4001);
});

test('no apps and no env: the development app (app-id/app-key/app-secret) with a WARN log line', async () => {
  const devApp = { id: 'app-id', key: 'app-key', secret: 'app-secret' };
  const server = await h.startHerald({ apps: [], expectApp: devApp, env: NO_ENV_APP });
  const client = await h.connectedPusher(server, {}, devApp.key);
  const ch = await h.subscribed(client, 'dev-channel');
  const got = h.nextEvent(ch, 'hello');
  await server.sdk(devApp).trigger('dev-channel', 'hello', { from: 'dev' });
  assert.deepEqual(await got, { from: 'dev' });
  const logs = server.stdout + server.stderr;
  assert.match(logs, /development app/, 'log mentions the development app');
  assert.match(logs.split('\n').find((l) => /development app/.test(l)) || '', /WARN/i, 'that line is a warning');
});

test('flags can come from HERALD_CONFIG / HERALD_BIND / HERALD_METRICS_BIND', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-e2e-env-'));
  const file = path.join(dir, 'herald.toml');
  fs.writeFileSync(file, h.toToml({ apps: [h.APP] }));
  const port = await h.freePort();
  const mport = await h.freePort();
  const child = h.spawnHerald(['standalone'], {
    env: { HERALD_CONFIG: file, HERALD_BIND: `127.0.0.1:${port}`, HERALD_METRICS_BIND: `127.0.0.1:${mport}`, ...NO_ENV_APP },
  });
  let logs = '';
  child.stdout.on('data', (d) => (logs += d));
  child.stderr.on('data', (d) => (logs += d));
  h.track(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await h
    .waitFor(
      async () => (await fetch(`http://127.0.0.1:${mport}/readyz`, { signal: AbortSignal.timeout(1000) })).status === 200,
      10000,
      'readyz via the env-configured metrics bind',
      50,
    )
    .catch((e) => {
      throw new Error(`${e.message}\n--- herald output ---\n${logs}`);
    });
  const c = new h.RawClient(`ws://127.0.0.1:${port}/app/${h.APP.key}?protocol=7`);
  const est = await c.established();
  assert.match(est.socket_id, /^\d+\.\d+$/);
});
