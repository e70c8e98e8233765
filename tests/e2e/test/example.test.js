'use strict';
// Browser test of examples/admin-monitoring: its one command (`run`) starts Herald, the Laravel-like app (auth
// endpoint + dashboard) and the simulator; headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) opens the dashboard.
//
//   - Carol (role "user") is refused every admin-* channel: the page says so, and no admin event reaches it
//     while an admin client (Node, laravel-echo) receives the simulator's events on those channels.
//   - Alice (admin) sees the simulator's events on screen, and Bob (a second admin, a Node laravel-echo client)
//     appear in and leave her "Admins online" list (presence-admin-presence). The screenshot goes to
//     docs/img/admin-monitoring.png.
//   - History channels: the store's backend sends 25 orders before anyone looks; Alice then opens the dashboard and
//     its orders feed shows the last 20 at once (Herald keeps the last 20 events of every private-admin-* channel),
//     newest first, and a reload shows the same 20 again; the HTTP API lists the same 20.
//   - A store of 2,000 online shoppers (`run --online 2000`, a second demo): Alice, a watcher of the large presence
//     channel presence-user-presence, sees the true member count (Herald's HTTP API) within seconds of the ramp,
//     and the simulator's joins and leaves in her bounded "Recent joins and leaves" list; Carol, a counted
//     member, sees the count alone.
//
// Needs: /usr/bin/chromium (scripts/test installs it; the test fails, not skips, without it) and the example's
// own dependencies (npm ci in examples/admin-monitoring). Synchronisation: bounded waits on page and client state.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { before, after } = require('node:test');
const h = require('./harness');
const { test, assert } = h;

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const REPO = path.resolve(__dirname, '..', '..', '..');
const EXAMPLE_DIR = path.join(REPO, 'examples', 'admin-monitoring');
const SCREENSHOT = path.join(REPO, 'docs', 'img', 'admin-monitoring.png');
const APP = { id: 'local', key: 'local', secret: 'local' }; // the seed's .env

const PRIVATE_ADMIN = ['admin-monitoring', 'admin-orders', 'admin-payments', 'admin-inventory', 'admin-system', 'admin-notifications'];
const ADMIN_CHANNELS = [...PRIVATE_ADMIN.map((c) => `private-${c}`), 'presence-admin-presence'];
const ADMIN_EVENTS = ['user.online', 'user.offline', 'order.new', 'payment.processed', 'stock.alert', 'system.alert', 'admin.notification'];
const FEEDS = ['feed-orders', 'feed-payments', 'feed-stock', 'feed-system', 'feed-users', 'feed-notifications'];

let setupError;
let demo; // {child, url, port, output(), exited}
let browser; // playwright persistent context
let userDataDir;

function preflight() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: the admin-monitoring browser test needs Debian's chromium package ` +
        `(apt-get update && apt-get install -y chromium; scripts/test installs it).`,
    );
  }
  for (const dep of ['pusher', 'pusher-js', 'laravel-echo']) {
    if (!fs.existsSync(path.join(EXAMPLE_DIR, 'node_modules', dep, 'package.json'))) {
      throw new Error(`examples/admin-monitoring/node_modules/${dep} is missing: run npm ci in examples/admin-monitoring`);
    }
  }
  if (!fs.existsSync(h.HERALD_BIN)) throw new Error(`Herald binary not found at ${h.HERALD_BIN} (set HERALD_BIN)`);
}

const SMALL_STORE = ['--rate', '10', '--seed', '7', '--min-users', '2', '--max-users', '5', '--payment-failure-rate', '0.4'];

/** Start `examples/admin-monitoring/run` on free ports; resolves once it prints the dashboard URL. */
async function startDemo(simArgs = SMALL_STORE) {
  const heraldPort = await h.freePort();
  const metricsPort = await h.freePort();
  const args = [
    path.join(EXAMPLE_DIR, 'run'),
    '--port', '0',
    '--herald-port', String(heraldPort),
    '--metrics-port', String(metricsPort),
    ...simArgs,
  ];
  const env = { ...process.env, HERALD_BIN: h.HERALD_BIN, PUSHER_APP_ID: APP.id, PUSHER_APP_KEY: APP.key, PUSHER_APP_SECRET: APP.secret, NO_COLOR: '1' };
  // Its own process group, so that a failed shutdown can take Herald down with it.
  const child = spawn(process.execPath, args, { cwd: EXAMPLE_DIR, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  let exitInfo = null;
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((exitInfo = { code, signal }))));
  exited.catch(() => {});
  process.on('exit', () => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  const url = await h.withTimeout(
    new Promise((resolve, reject) => {
      const check = () => {
        const m = /^Dashboard: (http:\/\/\S+?)\?user=1$/m.exec(output);
        if (m) resolve(m[1]);
      };
      child.stdout.on('data', check);
      exited.then((info) => reject(new Error(`run exited (${JSON.stringify(info)}) before printing the URL`)));
    }),
    30000,
    'examples/admin-monitoring/run to print "Dashboard: URL"',
  ).catch((e) => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    throw new Error(`${e.message}\n--- run output ---\n${output}`);
  });
  return {
    child,
    url,
    heraldPort,
    metricsPort,
    exited,
    output: () => output,
    async stop() {
      if (exitInfo) return exitInfo;
      child.kill('SIGINT');
      try {
        return await h.withTimeout(exited, 15000, 'run to exit after SIGINT');
      } catch (e) {
        process.kill(-child.pid, 'SIGKILL');
        throw e;
      }
    },
  };
}

before(async () => {
  try {
    preflight();
    demo = await startDemo();
    const { chromium } = require('playwright-core');
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-chromium-'));
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1360, height: 860 },
      timeout: 60000,
    });
  } catch (e) {
    setupError = e;
  }
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  if (demo) {
    const { code } = await demo.stop();
    assert.equal(code, 0, `run should exit 0 on SIGINT:\n${demo.output().slice(-4000)}`);
  }
});

/** The test body, with the demo's output appended to a failure. */
function demoTest(name, fn) {
  return test(name, { timeout: 120000 }, async (t) => {
    if (setupError) throw setupError;
    const pageErrors = [];
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      // The browser logs each refused /broadcasting/auth (403) as a failed resource load: expected for Carol.
      if (m.type() === 'error' && !/Failed to load resource: .*status of 403/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
    });
    try {
      await fn(t, page, pageErrors);
    } catch (err) {
      err.message += `\n--- page errors ---\n${pageErrors.join('\n')}\n--- run output (tail) ---\n${demo.output().slice(-6000)}`;
      throw err;
    } finally {
      await page.close().catch(() => {});
    }
  });
}

/** A laravel-echo client in Node logged in (by the ?user= parameter) as `userId`, against the demo. */
async function echoAs(userId) {
  const Echo = await h.loadEcho();
  const echo = new Echo({
    broadcaster: 'pusher',
    key: APP.key,
    Pusher: h.PusherJs,
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: demo.heraldPort,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    authEndpoint: `${demo.url}broadcasting/auth?user=${userId}`,
    withoutInterceptors: true,
  });
  h.track(() => echo.disconnect());
  return echo;
}

const status = async (d = demo) => (await fetch(`${d.url}api/status`, { signal: AbortSignal.timeout(5000) })).json();

demoTest('a non-admin user is refused the admin channels: the page says so and shows no admin events', async (t, page, pageErrors) => {
  await page.goto(`${demo.url}?user=3`, { timeout: 15000 });
  await page.waitForSelector('#auth-error:not([hidden])', { state: 'visible', timeout: 15000 });
  await page.waitForFunction((channels) => channels.every((c) => window.dashboard.refused[c] === 403), ADMIN_CHANNELS, { timeout: 15000 });
  // Her socket works: the one channel she may join (presence-user-presence) is subscribed.
  await page.waitForFunction(() => window.dashboard.subscribed['presence-user-presence'] === true, null, { timeout: 15000 });

  const text = await page.textContent('#auth-error');
  assert.match(text, /Not authorized for the admin channels/);
  assert.match(text, /Carol Customer does not have the admin role/);
  for (const c of ADMIN_CHANNELS) assert.match(text, new RegExp(`${c}: 403`), `error text names ${c}`);

  // The refusals came from the app's /broadcasting/auth (Laravel's 403), never from Herald.
  const refusedForCarol = (await status()).auth.recent.filter((r) => r.user === 3 && r.status === 403).map((r) => r.channel);
  assert.deepEqual([...new Set(refusedForCarol)].sort(), [...ADMIN_CHANNELS].sort());
  // ... so Herald counts no channel auth failure (that counter is for signatures Herald itself rejects).
  const metrics = await (await fetch(`http://127.0.0.1:${demo.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  assert.doesNotMatch(metrics, /^herald_auth_failures_total\{[^}]*kind="channel"[^}]*\} [1-9]/m);

  // Meanwhile an admin (Bob, Node laravel-echo) receives the simulator's admin events...
  const bob = await echoAs(2);
  const seen = [];
  for (const c of PRIVATE_ADMIN) {
    const ch = bob.private(c);
    for (const e of ADMIN_EVENTS) ch.listen(`.${e}`, () => seen.push(e));
  }
  await Promise.all(PRIVATE_ADMIN.map((c) => h.echoSubscribed(bob.private(c), 10000)));
  await h.waitFor(() => new Set(seen).size >= 5 && seen.length >= 10, 20000, `admin events at Bob (got ${seen.length})`);

  // ... and none of them reached Carol's page.
  const onPage = await page.evaluate(
    (feeds) => ({
      adminEvents: window.dashboard.adminEvents,
      feedItems: feeds.map((f) => document.querySelectorAll(`#${f} li`).length).reduce((a, b) => a + b, 0),
      ordersToday: document.getElementById('orders-today').textContent,
      usersOnline: document.getElementById('users-online').textContent,
      admins: document.querySelectorAll('#admins-online li').length,
      received: document.getElementById('events-received').textContent,
    }),
    FEEDS,
  );
  assert.deepEqual(onPage, { adminEvents: 0, feedItems: 0, ordersToday: '–', usersOnline: '–', admins: 0, received: '0' });
  assert.deepEqual(pageErrors, []);
});

demoTest('an admin sees the simulator events live and another admin joining and leaving presence-admin-presence', async (t, page, pageErrors) => {
  await page.goto(`${demo.url}?user=1`, { timeout: 15000 });
  await page.waitForFunction(
    (channels) => channels.every((c) => window.dashboard.subscribed[c] === true),
    [...ADMIN_CHANNELS, 'presence-user-presence'],
    { timeout: 15000 },
  );
  assert.equal(await page.isHidden('#auth-error'), true, 'no refusal shown to an admin');
  await page.waitForFunction(() => window.dashboard.admins.join() === 'Alice Admin', null, { timeout: 10000 });

  // Simulator events appear on screen: every feed fills and the counters move.
  await page.waitForFunction(
    (feeds) =>
      feeds.every((f) => document.querySelectorAll(`#${f} li`).length >= 1) &&
      document.querySelectorAll('#feed-orders li').length >= 5 &&
      document.querySelectorAll('#feed-system li').length >= 2 &&
      document.querySelectorAll('#feed-notifications li').length >= 2 &&
      /^\d+$/.test(document.getElementById('orders-today').textContent) &&
      /^\d+$/.test(document.getElementById('users-online').textContent) &&
      Number(document.getElementById('payments-success').textContent) >= 1 &&
      Number(document.getElementById('payments-failed').textContent) >= 1 &&
      Number(document.getElementById('stock-alerts').textContent) >= 1 &&
      Number(document.getElementById('system-alerts').textContent) >= 1,
    FEEDS,
    { timeout: 30000 },
  );
  const sim = (await status()).simulator;
  const ordersToday = Number(await page.textContent('#orders-today'));
  assert.ok(ordersToday >= 5 && ordersToday <= sim.today_order_count, `today's orders ${ordersToday} (simulator at ${sim.today_order_count})`);
  assert.match(await page.textContent('#feed-orders li'), /ORD-\d{8}-\d{4} · \d items? · \$[\d,]+\.\d\d/);
  assert.match(await page.textContent('#feed-stock'), /(low stock|out of stock|restocked) .+ · \d+ in stock \(threshold \d+\)/);

  // A second admin joins presence-admin-presence: Alice's list shows Bob, and Bob's here() shows Alice.
  const bob = await echoAs(2);
  const bobHere = await h.withTimeout(new Promise((resolve) => bob.join('admin-presence').here(resolve)), 10000, "Bob's here()");
  assert.deepEqual(bobHere.map((u) => u.name).sort(), ['Alice Admin', 'Bob Admin']);
  await page.waitForFunction(() => window.dashboard.admins.join() === 'Alice Admin,Bob Admin', null, { timeout: 10000 });
  assert.equal(await page.textContent('#admins-count'), '2');
  assert.deepEqual(await page.$$eval('#admins-online li', (lis) => lis.map((li) => li.textContent)), ['Alice Admin (you)', 'Bob Admin']);

  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  // The viewport, not fullPage: the live page may grow between measuring and capturing.
  await page.screenshot({ path: SCREENSHOT, animations: 'disabled' });
  assert.ok(fs.statSync(SCREENSHOT).size > 10000, 'screenshot written');

  bob.leave('admin-presence');
  await page.waitForFunction(() => window.dashboard.admins.join() === 'Alice Admin', null, { timeout: 10000 });
  assert.deepEqual(pageErrors, []);
});

// -- a store of 2,000 shoppers online -----------------------------------------------------------------------------

const STORE = 2000;

/** The number the "Users online" card shows (data-count: the digits, without the thousands separators). */
const shownCount = (page) => page.$eval('#online-count', (e) => (e.dataset.count === '' ? null : Number(e.dataset.count)));

/**
 * Waits until `page` shows the channel's true member count: Herald's HTTP API (`info=user_count`) answers the
 * same figure just before and just after the page is read (the simulator churns a shopper every ~0.4 s).
 */
async function showsTrueCount(page, sdk, timeoutMs, what) {
  let last;
  await h.waitFor(
    async () => {
      const before = (await h.sdkGetJson(sdk, '/channels/presence-user-presence', { info: 'user_count' })).user_count;
      const shown = await shownCount(page);
      const after = (await h.sdkGetJson(sdk, '/channels/presence-user-presence', { info: 'user_count' })).user_count;
      last = { before, shown, after };
      return before === after && shown === after;
    },
    timeoutMs,
    { toString: () => `${what} (last: ${JSON.stringify(last)})` },
    50,
  );
  return last.shown;
}

test('a store of 2,000 shoppers online: the admin sees the true count and the recent joins and leaves', { timeout: 90000 }, async (t) => {
  if (setupError) throw setupError;
  const t0 = Date.now();
  const store = await startDemo(['--rate', '10', '--seed', '11', '--online', String(STORE)]);
  const pages = [];
  const pageErrors = [];
  const newPage = async () => {
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
    });
    pages.push(page);
    return page;
  };
  try {
    const sdk = new h.PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(store.heraldPort), useTLS: false, timeout: 5000 });

    // Alice (admin) opens the dashboard while the shoppers are still arriving: she is a watcher.
    const alice = await newPage();
    await alice.addInitScript(() => {
      window.longTasks = [];
      new PerformanceObserver((l) => {
        for (const e of l.getEntries()) window.longTasks.push(Math.round(e.duration));
      }).observe({ type: 'longtask' });
    });
    await alice.goto(`${store.url}?user=1`, { timeout: 15000 });
    await alice.waitForFunction(() => window.dashboard.subscribed['presence-user-presence'] === true && window.dashboard.userPresence.watcher === true, null, {
      timeout: 20000,
    });

    // The simulator's ramp: 2,000 pusher-js shoppers, 100 at a time, through the app's /broadcasting/auth.
    const ramp = await h.waitFor(
      async () => {
        const r = (await status(store)).simulator.ramp;
        if (r.state === 'failed') throw new Error(`ramp failed: ${JSON.stringify(r)}`);
        return r.state === 'done' && r;
      },
      45000,
      'the simulator to report its ramp done',
      100,
    );
    const rampSeen = Date.now();

    // Within a few seconds the page shows the true member count: 2,000 shoppers (give or take the one churning)
    // plus Alice herself.
    const count = await showsTrueCount(alice, sdk, 5000, "Alice's count to equal Herald's user_count");
    const exactAfterMs = Date.now() - rampSeen;
    assert.ok(count >= STORE && count <= STORE + 2, `members ${count}: ${STORE} shoppers (one may be churning) and Alice`);
    const sim = (await status(store)).simulator;
    assert.ok(Math.abs(sim.shoppers_online + 1 - count) <= 1, `simulator has ${sim.shoppers_online} shoppers online, the page shows ${count}`);
    t.diagnostic(`ramp ${ramp.ms} ms; page exact ${exactAfterMs} ms after the ramp was seen done; ${count} members shown; ${((Date.now() - t0) / 1000).toFixed(1)} s into the test`);

    // The simulator churns (a shopper leaves, the next tick one joins): the recent-activity list shows them.
    const base = await alice.evaluate(() => ({ ...window.dashboard.userPresence }));
    await alice.waitForFunction(
      (b) => {
        const p = window.dashboard.userPresence;
        const shown = [...document.querySelectorAll('#presence-activity li')];
        return (
          p.joins - b.joins >= 2 &&
          p.leaves - b.leaves >= 2 &&
          shown.some((li) => li.dataset.kind === 'join') &&
          shown.some((li) => li.dataset.kind === 'leave')
        );
      },
      base,
      { timeout: 20000 },
    );
    const shown = await alice.$$eval('#presence-activity li', (lis) =>
      lis.map((li) => ({ kind: li.dataset.kind, id: Number(li.dataset.userId), name: li.querySelector('.name').textContent, at: li.dataset.at, time: li.querySelector('time').textContent })),
    );
    const log = (await status(store)).simulator.presence_log;
    const key = (e) => `${e.kind} ${e.id} ${e.name}`;
    const logged = new Set(log.map(key));
    assert.ok(shown.length >= 2 && shown.length <= 20, `the list is bounded: ${shown.length} entries`);
    for (const e of shown) {
      assert.ok(logged.has(key(e)), `the page shows "${key(e)}", which the simulator did not report (its last ${log.length}: ${log.slice(-10).map(key).join('; ')})`);
      assert.match(e.time, /^\d\d:\d\d:\d\d$/);
      assert.match(e.name, /^[A-Z][a-z]+ \(shopper \d+\)$/);
    }
    const churned = log.filter((e) => !e.ramp);
    assert.ok(
      shown.some((e) => e.kind === 'leave' && churned.some((c) => key(c) === key(e))) && shown.some((e) => e.kind === 'join' && churned.some((c) => key(c) === key(e))),
      'the list shows joins and leaves of the churn',
    );
    // Newest first.
    const times = shown.map((e) => Date.parse(e.at));
    assert.deepEqual(times, [...times].sort((a, b) => b - a), 'newest first');
    // 2,000 members and no 2,000-row list: the page holds the count and the bounded list.
    const listItems = await alice.$$eval('li', (lis) => lis.length);
    assert.ok(listItems < 200, `${listItems} <li> on the page`);
    // Still exact after the churn.
    await showsTrueCount(alice, sdk, 5000, "Alice's count to equal Herald's user_count after the churn");

    // Carol, a counted member, is not sent the members: her page gets the true count (from her subscription, then
    // pusher:subscription_count at most once a second) and says that only watchers hear joins and leaves.
    const carol = await newPage();
    await carol.goto(`${store.url}?user=3`, { timeout: 15000 });
    await carol.waitForFunction(() => window.dashboard.subscribed['presence-user-presence'] === true && window.dashboard.userPresence.watcher === false, null, {
      timeout: 15000,
    });
    await showsTrueCount(carol, sdk, 8000, "Carol's count to equal Herald's user_count");
    assert.equal(await carol.isVisible('#presence-activity-note'), true);
    assert.equal(await carol.$$eval('#presence-activity li', (lis) => lis.length), 0);
    assert.equal(await carol.evaluate(() => window.dashboard.userPresence.joins + window.dashboard.userPresence.leaves), 0);

    const longTasks = await alice.evaluate(() => window.longTasks);
    t.diagnostic(`done ${((Date.now() - t0) / 1000).toFixed(1)} s after start${longTasks.length ? `; long tasks on Alice's page: ${longTasks.join(', ')} ms` : ''}`);
    assert.deepEqual(pageErrors.filter((e) => !/Failed to load resource: .*status of 403/.test(e)), []);
  } catch (err) {
    err.message += `\n--- page errors ---\n${pageErrors.join('\n')}\n--- run --online ${STORE} output (tail) ---\n${store.output().slice(-6000)}`;
    throw err;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    const { code } = await store.stop();
    assert.equal(code, 0, `run --online ${STORE} should exit 0 on SIGINT:\n${store.output().slice(-4000)}`);
  }
});

test('history channels: a dashboard opened after 25 orders shows the last 20 at once, and the same 20 after a reload', { timeout: 60000 }, async () => {
  if (setupError) throw setupError;
  const demo = await startDemo(['--rate', '0']);
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  try {
    const sdk = new h.PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(demo.heraldPort), useTLS: false, timeout: 5000 });
    const numbers = [];
    for (let n = 1; n <= 25; n++) {
      const number = `ORD-HISTORY-${String(n).padStart(4, '0')}`;
      numbers.push(number);
      const order = { id: 9000 + n, number, total: 10 + n, currency: 'USD', items_count: 1, status: 'pending' };
      await sdk.trigger('private-admin-orders', 'order.new', { order, today_order_count: n, timestamp: new Date().toISOString() });
    }
    const last20 = numbers.slice(-20);
    // Herald's HTTP API extension lists the same 20, with their ids
    const res = await sdk.get({ path: '/channels/private-admin-orders/events' });
    const listed = (await res.json()).events;
    assert.deepEqual(listed.map((e) => JSON.parse(e.data).order.number), last20, 'GET /channels/private-admin-orders/events');
    const shownOrders = () => page.$$eval('#feed-orders li b', (bs) => bs.map((b) => b.textContent));
    for (const visit of ['first visit', 'after a reload']) {
      if (visit === 'first visit') await page.goto(`${demo.url}?user=1`, { timeout: 15000 });
      else await page.reload({ timeout: 15000 });
      await page.waitForFunction(() => document.querySelectorAll('#feed-orders li').length >= 20, null, { timeout: 10000 });
      // newest first on the page: the last one sent is on top
      assert.deepEqual(await shownOrders(), [...last20].reverse(), `the orders feed, ${visit}`);
      assert.equal(await page.textContent('#orders-today'), '25', `today's orders from the last retained event, ${visit}`);
    }
    assert.deepEqual(pageErrors, []);
  } finally {
    await page.close().catch(() => {});
    await demo.stop();
  }
});
