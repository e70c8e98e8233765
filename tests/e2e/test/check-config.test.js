'use strict';
// `herald check-config`: validates the configuration a role would start with (file, environment, flags), prints a
// summary and exits 0, or prints the problem and exits 2, without binding a port or connecting to NATS.
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');
const path = require('node:path');
const { spawnSync, execFileSync } = require('node:child_process');
const h = require('./harness');
const { assert, test } = h;

const CLEAN_ENV = ['HERALD_CONFIG', 'HERALD_BIND', 'HERALD_METRICS_BIND', 'HERALD_NATS', 'PUSHER_APP_ID', 'PUSHER_APP_KEY', 'PUSHER_APP_SECRET', 'REVERB_APP_ID', 'REVERB_APP_KEY', 'REVERB_APP_SECRET', 'HERALD_CLIENT_EVENTS'];

/** Runs `herald check-config ...args` (bounded) with `env` on top of a clean environment. */
function check(args, env = {}) {
  const base = { ...process.env };
  for (const k of CLEAN_ENV) delete base[k];
  const r = spawnSync(h.HERALD_BIN, ['check-config', ...args], { env: { ...base, ...env }, encoding: 'utf8', timeout: 10000 });
  assert.equal(r.error, undefined, `check-config ran: ${r.error}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function tempFile(name, text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-check-'));
  h.track(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

const TWO_APPS = `[[apps]]\nid = "shop"\nkey = "shop-key"\nsecret = "shop-secret"\n\n[[apps]]\nid = "blog"\nkey = "blog-key"\nsecret = "blog-secret"\n`;

test('check-config: a valid file is summarised with exit 0, without binding its ports', async () => {
  // the port is taken: a server start would fail, the check must not care
  const busy = net.createServer();
  await new Promise((resolve) => busy.listen(0, '127.0.0.1', resolve));
  h.track(() => new Promise((resolve) => busy.close(resolve)));
  const port = busy.address().port;
  const r = check(['--config', tempFile('herald.toml', TWO_APPS), '--bind', `127.0.0.1:${port}`]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^config OK for herald standalone: 2 app\(s\) \[shop, blog\] from the config file$/m);
  assert.match(r.stdout, new RegExp(`^  bind 127\\.0\\.0\\.1:${port}$`, 'm'));
  assert.match(r.stdout, /^  metrics_bind 0\.0\.0\.0:9601$/m);
});

test('check-config: apps from PUSHER_APP_* or REVERB_APP_*, and the development app named as such', () => {
  const pusher = check(['--role', 'ingest', '--nats', 'nats://nats:4222'], { PUSHER_APP_ID: '1', PUSHER_APP_KEY: 'k', PUSHER_APP_SECRET: 's' });
  assert.equal(pusher.code, 0, pusher.stderr);
  assert.match(pusher.stdout, /config OK for herald ingest: 1 app\(s\) \[1\] from PUSHER_APP_\*/);
  assert.match(pusher.stdout, /^  nats nats:\/\/nats:4222$/m);
  const reverb = check([], { REVERB_APP_ID: '7', REVERB_APP_KEY: 'rk', REVERB_APP_SECRET: 'rs' });
  assert.match(reverb.stdout, /1 app\(s\) \[7\] from REVERB_APP_\*/);
  assert.match(check([]).stdout, /from nowhere: the development app \(never in production\)/);
});

test('check-config: invalid settings exit 2 naming the problem', () => {
  const bad = check(['--config', tempFile('bad.toml', `[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\nmax_presence_members = 0\n`)]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /apps\[0\]\.max_presence_members/);
  assert.equal(bad.stdout, '');
  const noNats = check(['--role', 'gateway']);
  assert.equal(noNats.code, 2);
  assert.match(noNats.stderr, /Gateway needs NATS: pass --nats/);
  const partial = check([], { PUSHER_APP_ID: '1' });
  assert.equal(partial.code, 2);
  assert.match(partial.stderr, /PUSHER_APP_KEY, PUSHER_APP_SECRET` is missing/);
  const events = check([], { HERALD_CLIENT_EVENTS: 'maybe' });
  assert.equal(events.code, 2);
  assert.match(events.stderr, /HERALD_CLIENT_EVENTS` must be true or false/);
});

test('check-config: the TLS certificate and key are loaded as the listener would', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-check-tls-'));
  h.track(() => fs.rmSync(dir, { recursive: true, force: true }));
  const key = path.join(dir, 'tls.key');
  const cert = path.join(dir, 'tls.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=herald'], { stdio: 'ignore' });
  const toml = (c) => `tls_bind = "127.0.0.1:6443"\ntls_cert = "${c}"\ntls_key = "${key}"\n${TWO_APPS}`;
  const good = check(['--config', tempFile('tls.toml', toml(cert))]);
  assert.equal(good.code, 0, good.stderr);
  assert.match(good.stdout, /^  tls_bind 127\.0\.0\.1:6443 \(certificate and key load\)$/m);
  const notPem = tempFile('not.crt', 'hello\n');
  const bad = check(['--config', tempFile('tls-bad.toml', toml(notPem))]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, new RegExp(notPem.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')), `names the file: ${bad.stderr}`);
});
