'use strict';
// A Pusher webhook receiver for the end-to-end tests, plus small helpers the webhook tests share.
//
// startReceiver({app}) runs an HTTP server on 127.0.0.1 (free port) that checks every request the way a Pusher
// customer's backend does: with the official `pusher` SDK's webhook helper (`pusher.webhook({headers, rawBody})`,
// `.isValid()`, `.getEvents()`), plus POST, `Content-Type: application/json`, `X-Pusher-Key` = the app key and a
// body `{"time_ms": <number>, "events": [...]}`. It records every request (validity, batch size, timing, how it
// was answered) and, in order, the events of the requests it accepted (2XX, answered in time).
//
// Behaviour can be changed at any time: failNext(n) answers 500 to the next n requests, failUntilRecovered()
// answers 500 until recover(), hangNext(n, ms) holds the next n requests for `ms` before answering 200 (longer
// than Herald's timeout: the sender must have given up by then, so those events do not count as accepted).
//
// A request that fails validation is answered 401 and recorded; assertAllValid() fails the test if there was one,
// and every wait helper fails at once when one arrives.
//
// Waits are bounded (waitForEvents, waitForRequests); the only fixed waits are the ones a test uses to prove
// that something does NOT arrive.

const http = require('node:http');
const { execFile } = require('node:child_process');
const h = require('./harness');
const { assert } = h;

const KINDS = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'cache_miss', 'subscription_count'];
// Herald's own kinds (sent only to receivers that list them): a user, no channel.
const USER_KINDS = ['user_online', 'user_offline'];

/** Turn an event matcher (function, {name, channel, ...} object or name string) into a predicate. */
function matcher(m) {
  if (typeof m === 'function') return m;
  if (typeof m === 'string') return (e) => e.name === m;
  if (m && typeof m === 'object') return (e) => Object.entries(m).every(([k, v]) => e[k] === v);
  return () => true;
}

/** A short description of an event for messages. */
function describeEvent(e) {
  return JSON.stringify(e);
}

/**
 * Start a webhook receiver for `app` ({id, key, secret}).
 * @returns receiver object (see the methods below); closed at the end of the test.
 */
async function startReceiver({ app = h.APP, path = '/hook', label = 'receiver' } = {}) {
  const sdk = new h.PusherSdk({ appId: String(app.id), key: app.key, secret: app.secret, host: '127.0.0.1', useTLS: false });
  const requests = []; // {index, at, method, path, headers, rawBody, problems, valid, events, size, status, accepted, aborted}
  const accepted = []; // {event, at, request (index), time_ms} of accepted requests, in arrival order
  const mode = { fail: 0, failForever: false, failStatus: 500, hang: 0, hangMs: 0 };
  const timers = new Set();

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const entry = {
        index: requests.length,
        at: Date.now(),
        method: req.method,
        path: req.url,
        headers: req.headers,
        rawBody,
        problems: [],
        events: [],
        size: 0,
        status: 0,
        accepted: false,
        aborted: false,
      };
      requests.push(entry);

      // --- validation, as a customer's backend does it
      if (req.method !== 'POST') entry.problems.push(`method ${req.method}, expected POST`);
      if (req.url !== path) entry.problems.push(`path ${req.url}, expected ${path}`);
      if (req.headers['content-type'] !== 'application/json') entry.problems.push(`Content-Type ${JSON.stringify(req.headers['content-type'])}, expected "application/json"`);
      if (req.headers['x-pusher-key'] !== app.key) entry.problems.push(`X-Pusher-Key ${JSON.stringify(req.headers['x-pusher-key'])}, expected ${JSON.stringify(app.key)}`);
      if (!/^[0-9a-f]{64}$/.test(req.headers['x-pusher-signature'] || '')) {
        entry.problems.push(`X-Pusher-Signature ${JSON.stringify(req.headers['x-pusher-signature'])} is not lowercase hex HMAC-SHA256`);
      }
      let webhook;
      try {
        webhook = sdk.webhook({ headers: req.headers, rawBody });
        if (!webhook.isValid()) entry.problems.push('pusher SDK: webhook.isValid() is false (signature, key or body)');
      } catch (e) {
        entry.problems.push(`pusher SDK threw: ${e.message}`);
      }
      if (entry.problems.length === 0) {
        const data = webhook.getData();
        if (typeof data.time_ms !== 'number' || !Number.isInteger(data.time_ms)) entry.problems.push(`time_ms ${JSON.stringify(data.time_ms)} is not an integer`);
        const events = webhook.getEvents();
        if (!Array.isArray(events) || events.length === 0) entry.problems.push(`events ${JSON.stringify(events)} is not a non-empty array`);
        else {
          for (const e of events) {
            const pusherKind = e && KINDS.includes(e.name) && typeof e.channel === 'string';
            const userKind = e && USER_KINDS.includes(e.name) && e.channel === undefined && typeof e.user_id === 'string';
            if (!pusherKind && !userKind) entry.problems.push(`malformed event ${JSON.stringify(e)}`);
          }
          entry.events = events;
          entry.size = events.length;
          entry.time_ms = data.time_ms;
          entry.keys = Object.keys(data).sort();
        }
      }
      entry.valid = entry.problems.length === 0;

      const answer = (status) => {
        entry.status = status;
        entry.answeredAt = Date.now();
        if (res.destroyed || res.writableEnded) return false;
        // a 3XX points elsewhere on this server: a sender that followed it would send a GET there (invalid)
        const headers = status >= 300 && status < 400 ? { 'content-type': 'text/plain', location: `${path}-moved` } : { 'content-type': 'text/plain' };
        res.writeHead(status, headers);
        res.end(status < 300 ? 'ok' : 'nope');
        return true;
      };
      if (!entry.valid) return answer(401);
      if (mode.hang > 0) {
        mode.hang -= 1;
        entry.hung = true;
        res.on('close', () => {
          if (!entry.answeredAt) entry.aborted = true; // the sender gave up (its timeout) before we answered
        });
        const t = setTimeout(() => {
          timers.delete(t);
          answer(200); // too late: the events of a hung request are not counted as accepted
        }, mode.hangMs);
        timers.add(t);
        return undefined;
      }
      if (mode.fail > 0 || mode.failForever) {
        if (mode.fail > 0) mode.fail -= 1;
        return answer(mode.failStatus);
      }
      entry.accepted = true;
      for (const event of entry.events) accepted.push({ event, at: entry.at, request: entry.index, time_ms: entry.time_ms });
      return answer(200);
    });
  });
  server.keepAliveTimeout = 30000;
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}${path}`;

  const close = () =>
    new Promise((resolve) => {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      server.closeAllConnections?.();
      server.close(() => resolve());
    });
  h.track(close);

  const rx = {
    label,
    url,
    app,
    requests,
    accepted,
    close,

    // --- behaviour
    /** Answer `status` (500) to the next n requests (a 3XX with a Location elsewhere on this server). */
    failNext(n, status = 500) {
      mode.fail = n;
      mode.failStatus = status;
    },
    /** Answer `status` (500) to every request until recover(). */
    failUntilRecovered(status = 500) {
      mode.failForever = true;
      mode.failStatus = status;
    },
    recover() {
      mode.failForever = false;
      mode.fail = 0;
      mode.hang = 0;
    },
    /** Hold the next n requests for `ms` before answering 200 (too late when ms > the sender's timeout). */
    hangNext(n, ms) {
      mode.hang = n;
      mode.hangMs = ms;
    },

    // --- what was received
    invalid() {
      return requests.filter((r) => r.valid === false);
    },
    /** Fails if any request did not pass validation (signature, key, content type, body). */
    assertAllValid() {
      const bad = this.invalid();
      assert.deepEqual(
        bad.map((r) => ({ index: r.index, problems: r.problems, headers: r.headers, body: r.rawBody.slice(0, 500) })),
        [],
        `${label}: every webhook request must pass the pusher SDK's validation`,
      );
    },
    /** Accepted event objects, in order, optionally filtered by name / channel (a duplicate delivery shows up twice). */
    events(name, channel) {
      return accepted.map((a) => a.event).filter((e) => (name === undefined || e.name === name) && (channel === undefined || e.channel === channel));
    },
    /** Accepted events matching `m` (function, object of fields, or name). */
    matching(m) {
      const pred = matcher(m);
      return accepted.filter((a) => pred(a.event));
    },
    /** Every event of every request (accepted or not), with the request. */
    allDelivered() {
      return requests.flatMap((r) => r.events.map((event) => ({ event, request: r })));
    },
    /** Names of accepted events, in order. */
    names() {
      return accepted.map((a) => a.event.name);
    },
    summary() {
      const reqs = requests.map((r) => `#${r.index} +${r.at - (requests[0] ? requests[0].at : 0)}ms ${r.status || 'pending'}${r.hung ? ' (hung)' : ''}${r.valid ? '' : ` INVALID ${r.problems.join('; ')}`} ${JSON.stringify(r.events)}`);
      return `${label} ${url}: ${requests.length} request(s)\n  ${reqs.join('\n  ') || '(none)'}`;
    },

    /**
     * Wait until at least `n` accepted events match `m`; returns the matching {event, at, request, time_ms}.
     * Fails at once on an invalid request.
     */
    async waitForEvents(m, n = 1, timeoutMs = 10000, what) {
      const pred = matcher(m);
      const label2 = what || `${n} accepted webhook event(s) matching ${typeof m === 'function' ? 'the predicate' : JSON.stringify(m)}`;
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        this.assertAllValid();
        const got = accepted.filter((a) => pred(a.event));
        if (got.length >= n) return got;
        if (Date.now() >= deadline) {
          throw new Error(`timed out after ${timeoutMs} ms waiting for ${label2} (got ${got.length}); ${this.summary()}`);
        }
        await h.sleep(25);
      }
    },
    /** Wait until `n` requests (any outcome) have arrived and were answered; returns them. */
    async waitForRequests(n, timeoutMs = 10000, what) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        this.assertAllValid();
        if (requests.length >= n && requests.slice(0, n).every((r) => r.status)) return requests.slice(0, n);
        if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what || `${n} webhook request(s)`}; ${this.summary()}`);
        await h.sleep(25);
      }
    },
    /** Assert that exactly `n` accepted events match `m`, e.g. expectCount({name: 'member_added', channel}, 1). */
    expectCount(m, n, what) {
      const got = this.matching(m).map((a) => a.event);
      assert.equal(got.length, n, `${what || JSON.stringify(m)}: expected ${n} accepted event(s), got ${got.length}: ${got.map(describeEvent).join(', ')}\n${this.summary()}`);
      return got;
    },
    /** Assert no accepted event was delivered twice (same JSON), i.e. every event arrived at most once. */
    expectNoDuplicates(filter = () => true) {
      const seen = new Map();
      for (const a of accepted) {
        if (!filter(a.event)) continue;
        const key = JSON.stringify(a.event);
        seen.set(key, (seen.get(key) || 0) + 1);
      }
      const dups = [...seen].filter(([, c]) => c > 1);
      assert.deepEqual(dups, [], `${label}: events accepted more than once\n${this.summary()}`);
    },
  };
  return rx;
}

// ---------------------------------------------------------------------------------------------------------
// metrics and the CLI

/** Sum of the samples of metric `name` (exact sample name, e.g. `..._count` for a histogram) with `labels`. */
async function metric(node, name, labels = {}) {
  const res = await fetch(`${node.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  const text = await res.text();
  assert.equal(res.status, 200, `GET /metrics: ${text.slice(0, 500)}`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls = {};
    for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) ls[l[1]] = l[2];
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** Poll a metric until `ok(value)`; returns the value. */
async function waitMetric(node, name, labels, ok, timeoutMs = 10000, what) {
  let last;
  try {
    await h.waitFor(
      async () => {
        last = await metric(node, name, labels);
        return ok(last);
      },
      timeoutMs,
      what || `${name} ${JSON.stringify(labels)}`,
      100,
    );
  } catch (e) {
    throw new Error(`${e.message}; last value ${last}`);
  }
  return last;
}

/** Run the real `herald` binary with `args` (no config needed); resolves {code, stdout, stderr}. */
function runCli(args, timeoutMs = 15000) {
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.HERALD_ADMIN_URL;
  return new Promise((resolve) => {
    execFile(h.HERALD_BIN, args, { env, timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr, error: err });
    });
  });
}

/** `herald webhooks <cmd> --admin <url>`, asserting exit 0 and JSON output; returns the parsed JSON. */
async function cliJson(cmd, adminUrl) {
  const r = await runCli(['webhooks', cmd, '--admin', adminUrl]);
  assert.equal(r.code, 0, `herald webhooks ${cmd} --admin ${adminUrl}: exit ${r.code}; stderr: ${r.stderr}; stdout: ${r.stdout}`);
  try {
    return JSON.parse(r.stdout);
  } catch {
    assert.fail(`herald webhooks ${cmd} printed no JSON: ${JSON.stringify(r.stdout)} (stderr ${r.stderr})`);
  }
  return undefined;
}

module.exports = { KINDS, startReceiver, metric, waitMetric, runCli, cliJson, matcher };
