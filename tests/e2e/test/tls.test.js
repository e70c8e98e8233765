'use strict';
// TLS (wss/https) on tls_bind with a certificate from PEM files, reloaded without a restart when the files
// change; the plain listener stays available for use behind a terminating proxy.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const https = require('node:https');
const tls = require('node:tls');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const h = require('./harness');
const { assert, test } = h;

/** A self-signed certificate for 127.0.0.1 (openssl), written to `dir` as cert.pem / key.pem. */
function makeCert(dir, name) {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { key: fs.readFileSync(key), cert: fs.readFileSync(cert) };
}

const fingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;

/** The fingerprint of the certificate a new TLS connection to `port` is served. */
function servedFingerprint(port, ca) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: undefined }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.once('error', reject);
  });
}

/** A signed Pusher API POST over https. */
function httpsTrigger(port, ca, app, body) {
  const text = JSON.stringify(body);
  const reqPath = `/apps/${app.id}/events`;
  const params = { auth_key: app.key, auth_timestamp: Math.floor(Date.now() / 1000), auth_version: '1.0', body_md5: crypto.createHash('md5').update(text).digest('hex') };
  const qs = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
  const sig = h.hmacHex(app.secret, ['POST', reqPath, qs].join('\n'));
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, method: 'POST', path: `${reqPath}?${qs}&auth_signature=${sig}`, ca, headers: { 'content-type': 'application/json' } }, (res) => {
      let data = '';
      res.on('data', (d) => (data += d));
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    req.once('error', reject);
    req.end(text);
  });
}

test('wss and https on tls_bind; the certificate is reloaded when its files change; a broken file keeps the old one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-tls-'));
  h.track(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = makeCert(dir, 'first');
  const certPath = path.join(dir, 'cert.pem');
  const keyPath = path.join(dir, 'key.pem');
  fs.writeFileSync(certPath, first.cert);
  fs.writeFileSync(keyPath, first.key);
  const tlsPort = await h.freePort();
  const server = await h.startHerald({ config: { tls_bind: `127.0.0.1:${tlsPort}`, tls_cert: certPath, tls_key: keyPath } });

  // wss: a raw client over TLS gets connection_established and events triggered over https
  const wss = new h.RawClient(`wss://127.0.0.1:${tlsPort}/app/${server.app.key}?protocol=7`, { ca: first.cert });
  await h.withTimeout(wss.opened, 5000, 'wss open');
  await wss.established();
  await wss.subscribeOk('orders');
  const sent = await httpsTrigger(tlsPort, first.cert, server.app, { name: 'paid', channel: 'orders', data: '{"id":1}' });
  assert.equal(sent.status, 200, sent.body);
  assert.deepEqual((await wss.next('paid')).data, { id: 1 });
  // the plain listener still serves, for use behind a terminating proxy
  const plain = await h.rawConnected(server);
  await plain.subscribeOk('orders');

  // renew: new files are picked up without a restart; the open connection keeps working
  const second = makeCert(dir, 'second');
  assert.notEqual(fingerprint(second.cert), fingerprint(first.cert));
  fs.writeFileSync(keyPath, second.key);
  fs.writeFileSync(certPath, second.cert);
  const both = [first.cert, second.cert];
  await h.waitFor(async () => (await servedFingerprint(tlsPort, both)) === fingerprint(second.cert), 10000, 'the renewed certificate to be served', 200);
  const again = await httpsTrigger(tlsPort, second.cert, server.app, { name: 'paid', channel: 'orders', data: '{"id":2}' });
  assert.equal(again.status, 200);
  assert.deepEqual((await wss.next('paid')).data, { id: 2 }, 'the connection opened with the old certificate still receives');
  assert.ok(wss.isOpen);

  // a broken certificate file is refused and the last good one stays in use
  fs.writeFileSync(certPath, 'not a certificate');
  await h.waitFor(() => /TLS certificate not reloaded/.test(server.stdout + server.stderr), 10000, 'the broken file to be reported', 200);
  assert.equal(await servedFingerprint(tlsPort, both), fingerprint(second.cert));
});

test('tls_bind without tls_cert/tls_key is refused at startup, naming the key', async () => {
  const port = await h.freePort();
  const configPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'herald-tls-')), 'herald.toml');
  fs.writeFileSync(configPath, h.toToml({ tls_bind: `127.0.0.1:${port}`, apps: [h.APP] }));
  const child = h.spawnHerald(['standalone', '--config', configPath, '--bind', `127.0.0.1:${await h.freePort()}`, '--metrics-bind', `127.0.0.1:${await h.freePort()}`]);
  const code = await h.withTimeout(new Promise((resolve) => child.once('exit', resolve)), 10000, 'herald to exit');
  assert.equal(code, 2);
});
