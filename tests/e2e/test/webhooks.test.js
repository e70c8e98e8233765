'use strict';
// Pusher webhooks from a standalone Herald (docs/webhooks.md), checked the way a customer's backend sees them:
// every request is validated with the official `pusher` SDK's webhook helper (test/webhook-receiver.js).
// - channel_occupied / channel_vacated (held back), member_added / member_removed (a user, not a connection;
//   a reconnect within the hold-back produces nothing), client_event, cache_miss, subscription_count;
// - per-receiver event filters; batches of at most 20 events; retries with backoff after 500s and after a
//   receiver that does not answer within 4 s; dead letters listed and replayed with the `herald webhooks` CLI;
// - invalid webhook config refused at startup (exit 2, naming the key).
// Each test has its own Herald and receiver(s). Waits are bounded; fixed sleeps only prove an absence.
const h = require('./harness');
const { startReceiver, metric, waitMetric, cliJson } = require('./webhook-receiver');
const { test, assert } = h;

const HOLD_BACK_MS = 3000; // webhook_hold_back_ms default
const BATCH_MS = 250; // webhook_batch_ms default
const TIMEOUT_MS = 4000; // webhook_timeout_ms default
// a held-back event may arrive this early relative to when the test asked for the departure (timer granularity)
const EARLY_MS = 100;

/** Start Herald with one app (APP plus `app` overrides) whose webhooks go to the given receivers. */
function heraldWith(receivers, { app = {}, config = {} } = {}) {
  // each entry: a receiver (every kind) or {rx, events}
  const webhooks = receivers.map((r) => (r.rx ? { url: r.rx.url, events: r.events } : { url: r.url }));
  return h.startHerald({ app: { ...app, webhooks }, config });
}

/** Join a presence channel as `userId` with a raw client; asserts success. */
async function rawJoin(client, channel, userId) {
  const m = await h.rawJoinPresence(client, h.APP, channel, String(userId));
  assert.equal(m.event, 'pusher_internal:subscription_succeeded', `join ${channel} as ${userId}: ${m.raw}`);
  return m;
}

/** Unsubscribe a raw client and wait until the server has handled it (ping barrier). */
async function rawLeave(client, channel) {
  client.send({ event: 'pusher:unsubscribe', data: { channel } });
  await client.barrier();
}

/** Close a raw client and wait for the server's close answer (it has seen the socket go). */
async function rawClose(client) {
  client.close();
  await client.waitClose();
}

test('channel_occupied, then channel_vacated after the hold-back, each once; signed for the pusher SDK, X-Pusher-Key, time_ms', async () => {
  const rx = await startReceiver();
  const server = await heraldWith([rx]);
  const C = 'room-occupancy';
  const started = Date.now();

  const client = await h.connectedPusher(server);
  await h.subscribed(client, C);
  const [occupied] = await rx.waitForEvents({ name: 'channel_occupied', channel: C }, 1, 5000);
  assert.deepEqual(occupied.event, { name: 'channel_occupied', channel: C }, 'exactly Pusher\'s channel_occupied object');

  client.unsubscribe(C);
  const leftAt = Date.now();
  const [vacated] = await rx.waitForEvents({ name: 'channel_vacated', channel: C }, 1, HOLD_BACK_MS + BATCH_MS + 5000);
  assert.deepEqual(vacated.event, { name: 'channel_vacated', channel: C }, 'exactly Pusher\'s channel_vacated object');
  const after = vacated.at - leftAt;
  assert.ok(after >= HOLD_BACK_MS - EARLY_MS, `channel_vacated must be held back ${HOLD_BACK_MS} ms; it arrived ${after} ms after the unsubscribe`);
  assert.ok(after <= HOLD_BACK_MS + BATCH_MS + 2000, `channel_vacated arrived ${after} ms after the unsubscribe`);

  // each exactly once (watch a little longer for a repeat)
  await h.sleep(700);
  rx.expectCount({ name: 'channel_occupied', channel: C }, 1);
  rx.expectCount({ name: 'channel_vacated', channel: C }, 1);

  // what a backend sees on every request
  rx.assertAllValid();
  assert.ok(rx.requests.length >= 2, rx.summary());
  for (const r of rx.requests) {
    assert.equal(r.method, 'POST');
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.headers['x-pusher-key'], h.APP.key, 'X-Pusher-Key is the app key');
    assert.match(r.headers['x-pusher-signature'], /^[0-9a-f]{64}$/);
    assert.equal(r.headers['x-pusher-signature'], h.hmacHex(h.APP.secret, r.rawBody), 'HMAC-SHA256 of the raw body with the app secret');
    assert.deepEqual(r.keys, ['events', 'time_ms'], `body keys: ${r.rawBody}`);
    assert.ok(r.time_ms >= started - 1000 && r.time_ms <= r.at + 1000, `time_ms ${r.time_ms} is a Unix ms time around the request (${r.at})`);
  }
  const vacatedRequest = rx.requests[vacated.request];
  assert.ok(vacatedRequest.time_ms >= leftAt, `time_ms of the vacated batch (${vacatedRequest.time_ms}) is after the unsubscribe (${leftAt})`);
});

test('presence: member_added once per user, member_removed only after the last connection (held back); a reconnect within 1 s produces nothing', async () => {
  const rx = await startReceiver();
  const server = await heraldWith([rx]);
  const P = 'presence-webhooks';

  // user 1 with two connections, user 2 with one
  const u1a = await h.rawConnected(server);
  await rawJoin(u1a, P, 1);
  const [added1] = await rx.waitForEvents({ name: 'member_added', channel: P, user_id: '1' }, 1, 5000);
  assert.deepEqual(added1.event, { name: 'member_added', channel: P, user_id: '1' }, 'exactly Pusher\'s member_added object');
  const u1b = await h.rawConnected(server);
  await rawJoin(u1b, P, 1);
  const u2 = await h.rawConnected(server);
  await rawJoin(u2, P, 2);
  await rx.waitForEvents({ name: 'member_added', channel: P, user_id: '2' }, 1, 5000);

  // user 1 closes one of two connections; user 2 disconnects and is back within 1 s (a page reload)
  await rawClose(u1a);
  const leftAt = Date.now();
  await rawClose(u2);
  // user 2 really left (only user 1 is a member now) before coming back
  const sdk = server.sdk();
  await h.waitFor(async () => JSON.stringify(await h.sdkGetJson(sdk, `/channels/${P}/users`)) === JSON.stringify({ users: [{ id: '1' }] }), 900, 'user 2 gone from the member list', 10);
  const u2b = await h.rawConnected(server);
  await rawJoin(u2b, P, 2);
  const reloadMs = Date.now() - leftAt;
  assert.ok(reloadMs < 1000, `user 2 was back within ${reloadMs} ms`);

  // longer than the hold-back: no member_removed, no second member_added
  await h.sleep(Math.max(0, leftAt + HOLD_BACK_MS + BATCH_MS + 1000 - Date.now()));
  rx.expectCount({ name: 'member_removed' }, 0, 'member_removed while user 1 still has a connection and user 2 came back');
  rx.expectCount({ name: 'member_added', channel: P, user_id: '1' }, 1);
  rx.expectCount({ name: 'member_added', channel: P, user_id: '2' }, 1, 'member_added for user 2 (its reconnect is not a new member)');
  rx.expectCount({ name: 'channel_vacated' }, 0);
  await waitMetric(server, 'herald_webhook_events_suppressed_total', {}, (v) => v >= 1, 3000, 'herald_webhook_events_suppressed_total >= 1 (the reload)');

  // user 1's last connection leaves: member_removed once, after the hold-back
  await rawClose(u1b);
  const lastLeftAt = Date.now();
  const [removed] = await rx.waitForEvents({ name: 'member_removed', channel: P, user_id: '1' }, 1, HOLD_BACK_MS + BATCH_MS + 5000);
  assert.deepEqual(removed.event, { name: 'member_removed', channel: P, user_id: '1' }, 'exactly Pusher\'s member_removed object');
  const after = removed.at - lastLeftAt;
  assert.ok(after >= HOLD_BACK_MS - EARLY_MS, `member_removed must be held back ${HOLD_BACK_MS} ms; it arrived after ${after} ms`);
  await h.sleep(700);
  rx.expectCount({ name: 'member_removed', channel: P, user_id: '1' }, 1);
  rx.expectCount({ name: 'member_removed', channel: P, user_id: '2' }, 0);
  rx.expectCount({ name: 'member_added' }, 2);
  rx.expectCount({ name: 'channel_occupied', channel: P }, 1);
  rx.expectCount({ name: 'channel_vacated', channel: P }, 0, 'user 2 is still there');
  rx.assertAllValid();
});

test('client_event (with user_id on presence), cache_miss on empty cache channels only, subscription_count values', async () => {
  const rx = await startReceiver();
  const server = await heraldWith([rx], { app: { client_events: true } });

  // --- client events: presence (with user_id) and private (without)
  const a = await h.rawConnected(server);
  const b = await h.rawConnected(server);
  await rawJoin(a, 'presence-chat', 1);
  await rawJoin(b, 'presence-chat', 2);
  a.send({ event: 'client-typing', channel: 'presence-chat', data: { text: 'hi', n: 1 } });
  await b.next({ event: 'client-typing', channel: 'presence-chat' });
  const [ce] = await rx.waitForEvents({ name: 'client_event', channel: 'presence-chat' }, 1, 5000);
  {
    const { data, ...rest } = ce.event;
    assert.deepEqual(rest, { name: 'client_event', channel: 'presence-chat', event: 'client-typing', socket_id: a.id, user_id: '1' }, JSON.stringify(ce.event));
    assert.equal(typeof data, 'string', `client_event data is the string the client sent: ${JSON.stringify(ce.event)}`);
    assert.deepEqual(JSON.parse(data), { text: 'hi', n: 1 });
  }
  const p = await h.rawConnected(server);
  assert.equal((await h.rawSubscribePrivate(p, h.APP, 'private-notes')).event, 'pusher_internal:subscription_succeeded');
  p.send({ event: 'client-note', channel: 'private-notes', data: { note: 'x' } });
  await p.barrier();
  const [pe] = await rx.waitForEvents({ name: 'client_event', channel: 'private-notes' }, 1, 5000);
  {
    const { data, ...rest } = pe.event;
    assert.deepEqual(rest, { name: 'client_event', channel: 'private-notes', event: 'client-note', socket_id: p.id }, `no user_id on a private channel: ${JSON.stringify(pe.event)}`);
    assert.deepEqual(JSON.parse(data), { note: 'x' });
  }

  // --- cache_miss: empty cache-, private-cache- and presence-cache- channels
  const c1 = await h.rawConnected(server);
  await c1.subscribeOk('cache-prices');
  assert.equal((await h.rawSubscribePrivate(c1, h.APP, 'private-cache-secrets')).event, 'pusher_internal:subscription_succeeded');
  await rawJoin(c1, 'presence-cache-lobby', 3);
  for (const channel of ['cache-prices', 'private-cache-secrets', 'presence-cache-lobby']) {
    const [miss] = await rx.waitForEvents({ name: 'cache_miss', channel }, 1, 5000);
    assert.deepEqual(miss.event, { name: 'cache_miss', channel }, 'exactly Pusher\'s cache_miss object');
  }
  // once the channel has a cached event, a new subscriber gets it and there is no cache_miss
  assert.equal((await server.sdk().trigger('cache-prices', 'price', { v: 42 })).status, 200);
  await c1.next({ event: 'price', channel: 'cache-prices' });
  const c2 = await h.rawConnected(server);
  await c2.subscribeOk('cache-prices');
  assert.deepEqual((await c2.next({ event: 'price', channel: 'cache-prices' })).data, { v: 42 });
  await rx.waitForEvents({ name: 'subscription_count', channel: 'cache-prices', subscription_count: 2 }, 1, 5000);
  await h.sleep(BATCH_MS + 300);
  rx.expectCount({ name: 'cache_miss', channel: 'cache-prices' }, 1, 'cache_miss only for the subscription to the empty channel');
  rx.expectCount({ name: 'cache_miss', channel: 'presence-chat' }, 0, 'no cache_miss for non-cache channels');

  // --- subscription_count: each change of a channel's count, with the count
  const C = 'counted';
  const subs = [];
  for (let i = 1; i <= 3; i++) {
    const s = await h.rawConnected(server);
    await s.subscribeOk(C);
    subs.push(s);
    const [sc] = await rx.waitForEvents({ name: 'subscription_count', channel: C, subscription_count: i }, 1, 5000);
    assert.deepEqual(sc.event, { name: 'subscription_count', channel: C, subscription_count: i }, 'exactly Pusher\'s subscription_count object');
  }
  await rawLeave(subs[2], C);
  await rx.waitForEvents({ name: 'subscription_count', channel: C, subscription_count: 2 }, 2, 5000);
  await h.sleep(BATCH_MS + 300);
  assert.deepEqual(
    rx.events('subscription_count', C).map((e) => e.subscription_count),
    [1, 2, 3, 2],
    'subscription_count webhooks of "counted", in order',
  );
  rx.expectCount({ name: 'client_event' }, 2);
  rx.assertAllValid();
});

test('event filter: a receiver with events = ["member_added"] gets only member_added, the other one gets every kind', async () => {
  const rxAll = await startReceiver({ label: 'all-events receiver' });
  const rxAdded = await startReceiver({ label: 'member_added receiver' });
  const server = await heraldWith([rxAll, { rx: rxAdded, events: ['member_added'] }], { config: { webhook_hold_back_ms: 500 } });
  const P = 'presence-filter';
  const C = 'public-filter';

  const u = await h.rawConnected(server);
  await rawJoin(u, P, 7);
  await u.subscribeOk(C);
  await rawLeave(u, P);
  await rawLeave(u, C);
  await rxAll.waitForEvents({ name: 'member_removed', channel: P, user_id: '7' }, 1, 6000);
  await rxAll.waitForEvents({ name: 'channel_vacated', channel: C }, 1, 6000);
  await rxAdded.waitForEvents({ name: 'member_added', channel: P, user_id: '7' }, 1, 3000);
  await h.sleep(BATCH_MS + 500);

  assert.deepEqual(rxAdded.events(), [{ name: 'member_added', channel: P, user_id: '7' }], `the filtered receiver: ${rxAdded.summary()}`);
  const kinds = new Set(rxAll.names());
  for (const kind of ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'subscription_count']) {
    assert.ok(kinds.has(kind), `the unfiltered receiver got ${kind}: ${rxAll.summary()}`);
  }
  for (const kind of ['channel_occupied', 'channel_vacated']) {
    rxAll.expectCount({ name: kind, channel: P }, 1);
    rxAll.expectCount({ name: kind, channel: C }, 1);
  }
  rxAll.expectCount({ name: 'member_added' }, 1);
  rxAll.expectCount({ name: 'member_removed' }, 1);
  rxAll.assertAllValid();
  rxAdded.assertAllValid();
});

test('batching: 50 subscriptions in a burst give 50 channel_occupied, each once, in requests of at most 20 events', async () => {
  const rx = await startReceiver();
  const server = await heraldWith([{ rx, events: ['channel_occupied'] }]);
  const c = await h.rawConnected(server);
  const channels = Array.from({ length: 50 }, (_, i) => `burst-${i}`);
  for (const channel of channels) c.send({ event: 'pusher:subscribe', data: { channel } });
  for (const channel of channels) await c.next({ event: 'pusher_internal:subscription_succeeded', channel });

  await rx.waitForEvents({ name: 'channel_occupied' }, 50, 10000);
  await h.sleep(BATCH_MS + 500); // nothing more may come
  const got = rx.events('channel_occupied').map((e) => e.channel);
  assert.equal(got.length, 50, `50 channel_occupied: ${rx.summary()}`);
  assert.deepEqual([...new Set(got)].sort(), [...channels].sort(), 'each channel once');
  const sizes = rx.requests.map((r) => r.size);
  assert.ok(sizes.every((n) => n >= 1 && n <= 20), `every request holds at most 20 events: ${JSON.stringify(sizes)}`);
  assert.ok(rx.requests.length >= 3, `at least 3 requests for 50 events: ${JSON.stringify(sizes)}`);
  assert.ok(rx.requests.every((r) => r.accepted), rx.summary());
  rx.assertAllValid();
});

test('receiver answering 500 three times, then recovering: every event arrives exactly once, after retries with backoff', async () => {
  const rx = await startReceiver();
  rx.failNext(3);
  const server = await heraldWith([rx]);
  const c = await h.rawConnected(server);
  await c.subscribeOk('retry-a');
  await rx.waitForRequests(1, 5000, 'the first (failing) request');
  // events queued while the receiver is failing wait and are delivered too
  await c.subscribeOk('retry-b');

  const expected = [
    { name: 'channel_occupied', channel: 'retry-a' },
    { name: 'channel_occupied', channel: 'retry-b' },
    { name: 'subscription_count', channel: 'retry-a', subscription_count: 1 },
    { name: 'subscription_count', channel: 'retry-b', subscription_count: 1 },
  ];
  // backoff 1 s + 2 s + 4 s after the first failure
  for (const e of expected) await rx.waitForEvents(e, 1, 15000);
  await h.sleep(BATCH_MS + 500);
  for (const e of expected) rx.expectCount(e, 1);
  assert.equal(rx.accepted.length, expected.length, `nothing else accepted: ${rx.summary()}`);
  rx.expectNoDuplicates();

  const statuses = rx.requests.map((r) => r.status);
  assert.deepEqual(statuses.slice(0, 3), [500, 500, 500], rx.summary());
  assert.ok(statuses.slice(3).every((s) => s === 200), rx.summary());
  // exponential backoff: 1 s, 2 s, 4 s between the attempts
  const gaps = rx.requests.slice(1, 4).map((r, i) => r.at - rx.requests[i].at);
  [1000, 2000, 4000].forEach((want, i) => assert.ok(gaps[i] >= want - EARLY_MS, `retry ${i + 1} came ${gaps[i]} ms after the previous attempt, expected >= ${want} ms (gaps ${JSON.stringify(gaps)})`));
  assert.ok(gaps[2] <= 4000 + 2000, `gaps ${JSON.stringify(gaps)}`);

  // what an operator sees
  const app = { app: h.APP.id };
  assert.ok((await metric(server, 'herald_webhook_retries_total', app)) >= 3, `herald_webhook_retries_total >= 3, got ${await metric(server, 'herald_webhook_retries_total', app)}`);
  await waitMetric(server, 'herald_webhook_events_sent_total', app, (v) => v === expected.length, 3000, `herald_webhook_events_sent_total == ${expected.length}`);
  await waitMetric(server, 'herald_webhook_events_queued_total', app, (v) => v === expected.length, 3000, `herald_webhook_events_queued_total == ${expected.length}`);
  await waitMetric(server, 'herald_webhook_pending_events', app, (v) => v === 0, 3000, 'herald_webhook_pending_events == 0');
  assert.equal(await metric(server, 'herald_webhook_events_dead_total', app), 0);
  assert.equal(await metric(server, 'herald_webhook_lag_seconds_count', app), expected.length, 'herald_webhook_lag_seconds_count');
  // the retried events waited at least the 7 s of backoff
  assert.ok((await metric(server, 'herald_webhook_lag_seconds_sum', app)) >= 2 * 6, 'herald_webhook_lag_seconds_sum');
  rx.assertAllValid();
});

test('a receiver that does not answer within 4 s counts as a failure and the events are sent again', async () => {
  const rx = await startReceiver();
  rx.hangNext(1, TIMEOUT_MS + 700);
  const server = await heraldWith([{ rx, events: ['channel_occupied'] }]);
  const c = await h.rawConnected(server);
  await c.subscribeOk('slow-receiver');

  const [ok] = await rx.waitForEvents({ name: 'channel_occupied', channel: 'slow-receiver' }, 1, TIMEOUT_MS + 1000 + 5000);
  const [first, second] = rx.requests;
  assert.ok(first.hung, rx.summary());
  assert.deepEqual(first.events, [{ name: 'channel_occupied', channel: 'slow-receiver' }], 'the first attempt carried the event');
  assert.ok(first.aborted, `Herald gave up on the hanging request (closed it) before the receiver answered: ${rx.summary()}`);
  assert.equal(ok.request, second.index, 'the event was accepted on the next attempt');
  const gap = second.at - first.at;
  assert.ok(gap >= TIMEOUT_MS - EARLY_MS, `the retry came ${gap} ms after the hanging request: the timeout is ${TIMEOUT_MS} ms`);
  assert.ok(gap <= TIMEOUT_MS + 1000 + 2000, `the retry came ${gap} ms after the hanging request`);
  await h.sleep(BATCH_MS + 500);
  rx.expectCount({ name: 'channel_occupied', channel: 'slow-receiver' }, 1);
  assert.ok((await metric(server, 'herald_webhook_retries_total', { app: h.APP.id })) >= 1, 'herald_webhook_retries_total >= 1');
  rx.assertAllValid();
});

test('a redirect (302) is a failed request, retried at the same URL: the redirect is not followed (a POST would become a GET)', async () => {
  const rx = await startReceiver();
  rx.failNext(1, 302);
  const server = await heraldWith([{ rx, events: ['channel_occupied'] }]);
  const c = await h.rawConnected(server);
  await c.subscribeOk('redirected');

  const [ok] = await rx.waitForEvents({ name: 'channel_occupied', channel: 'redirected' }, 1, 10000);
  const [first, second] = rx.requests;
  assert.equal(first.status, 302, rx.summary());
  assert.equal(ok.request, second.index, 'the event was accepted on the retry');
  assert.equal(second.path, '/hook', 'the retry went to the configured URL, not the redirect target');
  assert.ok(second.at - first.at >= 1000 - EARLY_MS, `the retry came ${second.at - first.at} ms later: the first backoff is 1 s`);
  await h.sleep(BATCH_MS + 500);
  rx.expectCount({ name: 'channel_occupied', channel: 'redirected' }, 1);
  rx.assertAllValid(); // a followed redirect would have arrived as a GET to /hook-moved
});

test('dead letters: an event failing for the whole retry window is listed by `herald webhooks dead-letters`, and `herald webhooks replay` delivers it once', async () => {
  const rx = await startReceiver();
  rx.failUntilRecovered();
  const server = await heraldWith([{ rx, events: ['channel_occupied'] }], { config: { webhook_retry_window_secs: 2 } });
  const started = Date.now();
  const c = await h.rawConnected(server);
  await c.subscribeOk('doomed');

  await waitMetric(server, 'herald_webhook_events_dead_total', { app: h.APP.id }, (v) => v >= 1, 12000, 'herald_webhook_events_dead_total >= 1');
  const attemptsSoFar = rx.requests.length;
  assert.ok(attemptsSoFar >= 2, `it was retried before giving up: ${rx.summary()}`);

  const listed = await cliJson('dead-letters', server.metricsUrl);
  assert.ok(listed && Array.isArray(listed.dead_letters), `{"dead_letters":[...]}: ${JSON.stringify(listed)}`);
  assert.equal(listed.dead_letters.length, 1, JSON.stringify(listed));
  const [dl] = listed.dead_letters;
  assert.equal(String(dl.app_id), h.APP.id, JSON.stringify(dl));
  assert.equal(dl.url, rx.url, JSON.stringify(dl));
  assert.deepEqual(dl.event, { name: 'channel_occupied', channel: 'doomed' }, JSON.stringify(dl));
  assert.ok(Number.isInteger(dl.queued_ms) && dl.queued_ms >= started - 1000 && dl.queued_ms <= Date.now(), `queued_ms: ${JSON.stringify(dl)}`);
  assert.ok(Number.isInteger(dl.attempts) && dl.attempts >= 2, `attempts: ${JSON.stringify(dl)}`);
  assert.ok(typeof dl.last_error === 'string' && dl.last_error.length > 0, `last_error: ${JSON.stringify(dl)}`);
  // the CLI prints what the admin endpoint serves
  const res = await fetch(`${server.metricsUrl}/webhooks/dead-letters`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), listed);
  // nothing is retried any more
  await h.sleep(1500);
  assert.equal(rx.requests.length, attemptsSoFar, `no more attempts after the event became a dead letter: ${rx.summary()}`);
  assert.equal(rx.accepted.length, 0);

  rx.recover();
  assert.deepEqual(await cliJson('replay', server.metricsUrl), { replayed: 1 });
  const [delivered] = await rx.waitForEvents({ name: 'channel_occupied', channel: 'doomed' }, 1, 5000);
  assert.deepEqual(delivered.event, { name: 'channel_occupied', channel: 'doomed' });
  assert.deepEqual(await cliJson('dead-letters', server.metricsUrl), { dead_letters: [] }, 'the list is empty after the replay');
  await h.sleep(BATCH_MS + 500);
  rx.expectCount({ name: 'channel_occupied', channel: 'doomed' }, 1);
  // a second replay has nothing to do
  assert.deepEqual(await cliJson('replay', server.metricsUrl), { replayed: 0 });
  assert.equal(await metric(server, 'herald_webhook_events_dead_total', { app: h.APP.id }), 1);
  rx.assertAllValid();
});

test('invalid webhook config: a non-http(s) url or an unknown event kind exits 2 naming the key', async () => {
  const base = (webhooks) => h.toToml({ apps: [{ ...h.APP, webhooks }] });
  for (const url of ['ftp://127.0.0.1/hook', 'not a url', '127.0.0.1:8080/hook']) {
    const { code, stderr, stdout } = await h.runInvalidConfig(base([{ url }]));
    assert.equal(code, 2, `url ${url}: exit code 2 (stderr: ${stderr}; stdout: ${stdout})`);
    assert.ok(stderr.includes('apps[0].webhooks[0].url'), `url ${url}: stderr names apps[0].webhooks[0].url:\n${stderr}\nstdout:\n${stdout}`);
  }
  {
    const { code, stderr, stdout } = await h.runInvalidConfig(base([{ url: 'http://127.0.0.1:1/hook', events: ['member_added', 'channel_exploded'] }]));
    assert.equal(code, 2, `unknown event kind: exit code 2 (stderr: ${stderr}; stdout: ${stdout})`);
    assert.ok(stderr.includes('apps[0].webhooks[0].events'), `stderr names apps[0].webhooks[0].events:\n${stderr}\nstdout:\n${stdout}`);
  }
  {
    // the index points at the offending receiver
    const { code, stderr } = await h.runInvalidConfig(base([{ url: 'https://127.0.0.1/ok' }, { url: 'mailto:ops@example.com' }]));
    assert.equal(code, 2, stderr);
    assert.ok(stderr.includes('apps[0].webhooks[1].url'), `stderr names apps[0].webhooks[1].url:\n${stderr}`);
  }
});
