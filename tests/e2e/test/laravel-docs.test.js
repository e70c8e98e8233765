'use strict';
// docs/laravel.md, taken literally: the `.env` block, the `configureEcho({...})` block (React/Vue starter kits)
// and the `new Echo({...})` block are read from the page (see the `<!-- e2e: ... -->` markers there), the Echo
// options are evaluated with `import.meta.env` = the documented VITE_* variables, and laravel-echo built from
// exactly those options talks to the real binary, started as the page says: no config file, the app from
// PUSHER_APP_ID/KEY/SECRET and HERALD_CLIENT_EVENTS=true.
//
// The only test-side additions to the documented options are what a browser page provides by itself:
// `Pusher` (a page sets window.Pusher; there is no window in Node), the absolute URLs of the Laravel-like auth
// endpoint (a page resolves /broadcasting/auth against its own origin) with a header naming the test user (a
// page sends its session cookie), and `withoutInterceptors` (no axios/jQuery here). The one value changed is
// PUSHER_PORT, to a free port instead of 6001, so that parallel runs cannot collide.
const { before } = require('node:test');
const h = require('./harness');
const d = require('./laravel-docs');
const { test, assert } = h;

const DOC = 'docs/laravel.md';
const ALICE = 1; // admin
const BOB = 2; // admin

let env; // the documented .env, PUSHER_PORT replaced by the server's port
let server;
let auth;

before(async () => {
  const documentedEnv = d.parseDotenv(d.docBlock(DOC, 'laravel-env'));
  // the page's claims about its own .env: Laravel 11+ spelling, pointing at a local Herald on 6001 over ws://
  assert.equal(documentedEnv.BROADCAST_CONNECTION, 'pusher');
  assert.equal(documentedEnv.BROADCAST_DRIVER, undefined, 'BROADCAST_DRIVER is the Laravel <= 10 spelling, not in the 11+ block');
  assert.equal(documentedEnv.PUSHER_HOST, '127.0.0.1');
  assert.equal(documentedEnv.PUSHER_PORT, '6001');
  assert.equal(documentedEnv.PUSHER_SCHEME, 'http');
  for (const k of ['PUSHER_APP_ID', 'PUSHER_APP_KEY', 'PUSHER_APP_SECRET']) assert.ok(documentedEnv[k], `${k} in the documented .env`);
  // the documented start command sets the same app and client events (for whisper)
  const start = d.docBlock(DOC, 'herald-start');
  for (const k of ['PUSHER_APP_ID', 'PUSHER_APP_KEY', 'PUSHER_APP_SECRET']) assert.match(start, new RegExp(`${k}=${documentedEnv[k]}\\b`));
  assert.match(start, /HERALD_CLIENT_EVENTS=true/);
  assert.match(start, /herald standalone/);
  assert.doesNotMatch(start, /--config/);

  const app = { id: documentedEnv.PUSHER_APP_ID, key: documentedEnv.PUSHER_APP_KEY, secret: documentedEnv.PUSHER_APP_SECRET };
  server = await d.startHeraldFromEnv(
    { PUSHER_APP_ID: app.id, PUSHER_APP_KEY: app.key, PUSHER_APP_SECRET: app.secret, HERALD_CLIENT_EVENTS: 'true' },
    app,
  );
  env = d.parseDotenv(d.docBlock(DOC, 'laravel-env'), { PUSHER_PORT: server.port });
  auth = await h.startAuthServer(server); // the Laravel app's /broadcasting/auth and /broadcasting/user-auth
});

/** The documented options of block `name` (call `call`), with import.meta.env = the .env's VITE_* variables. */
function documentedOptions(name, call) {
  return d.echoOptionsFromDoc(d.docBlock(DOC, name), call, env);
}

/** What a browser page adds by itself (see the header comment); none of these keys may be in the doc's options. */
function pageContext(user, docOptions) {
  const headers = { 'X-Test-User': String(user) };
  const extra = {
    Pusher: h.PusherJs,
    authEndpoint: `${auth.url}/broadcasting/auth`,
    auth: { headers },
    userAuthentication: { endpoint: `${auth.url}/broadcasting/user-auth`, headers },
    withoutInterceptors: true,
  };
  for (const k of Object.keys(extra)) assert.ok(!(k in docOptions), `the test would override the documented option ${k}`);
  return extra;
}

async function echoFor(user, docOptions) {
  const Echo = await h.loadEcho();
  const echo = new Echo({ ...docOptions, ...pageContext(user, docOptions) });
  h.track(() => echo.disconnect());
  await h.pusherState(echo.connector.pusher, 'connected');
  return echo;
}

test('the documented Echo blocks resolve to a plain ws:// connection to Herald, and both give the same options', () =>
  d.withLogs(server, async () => {
    const classic = documentedOptions('new-echo', 'new Echo');
    const starterKit = documentedOptions('configure-echo', 'configureEcho');
    assert.deepEqual(starterKit, classic, 'configureEcho block and new Echo block differ');
    assert.equal(classic.broadcaster, 'pusher');
    assert.equal(classic.key, server.app.key);
    assert.equal(classic.wsHost, '127.0.0.1');
    assert.equal(String(classic.wsPort), String(server.port));
    assert.equal(String(classic.wssPort), String(server.port));
    assert.equal(classic.forceTLS, false);
    assert.deepEqual(classic.enabledTransports, ['ws', 'wss']);
    assert.equal(classic.cluster, 'mt1');
    // the block for the browser also sets window.Pusher, which Echo's pusher connector needs without `Pusher`
    assert.match(d.docBlock(DOC, 'new-echo'), /window\.Pusher = Pusher;/);
    assert.match(server.output, /app taken from PUSHER_APP_ID\/PUSHER_APP_KEY\/PUSHER_APP_SECRET/);
  }));

test('new Echo({...}) as documented: Echo.private().listen() receives an event triggered with the pusher SDK', () =>
  d.withLogs(server, async () => {
    const echo = await echoFor(ALICE, documentedOptions('new-echo', 'new Echo'));
    const received = new Promise((resolve) => echo.private('admin-monitoring').listen('.user.online', resolve));
    await h.echoSubscribed(echo.private('admin-monitoring'));
    assert.ok(
      auth.requests.some((r) => r.path === '/broadcasting/auth' && r.channel === 'private-admin-monitoring' && r.status === 200),
      `the Laravel-like auth endpoint signed the channel: ${JSON.stringify(auth.requests)}`,
    );
    const payload = { user: { id: 42, name: 'Zed' }, total_active_users: 7 };
    const res = await server.sdk().trigger('private-admin-monitoring', 'user.online', payload);
    assert.equal(res.status, 200);
    assert.deepEqual(await h.withTimeout(received, 5000, '.user.online through Echo'), payload);
  }));

test('configureEcho({...}) as documented: a whisper from one client reaches the other (client events from HERALD_CLIENT_EVENTS)', () =>
  d.withLogs(server, async () => {
    const options = documentedOptions('configure-echo', 'configureEcho');
    const alice = await echoFor(ALICE, options);
    const bob = await echoFor(BOB, options);
    const aliceCh = alice.private('admin-monitoring');
    const bobCh = bob.private('admin-monitoring');
    const heard = new Promise((resolve) => bobCh.listenForWhisper('typing', resolve));
    const echoedToAlice = [];
    aliceCh.listenForWhisper('typing', (e) => echoedToAlice.push(e));
    await h.echoSubscribed(aliceCh);
    await h.echoSubscribed(bobCh);
    const refused = [];
    alice.connector.pusher.connection.bind('error', (e) => refused.push(e));
    aliceCh.whisper('typing', { name: 'Alice Admin' });
    assert.deepEqual(await h.withTimeout(heard, 5000, 'Bob hears Alice whisper'), { name: 'Alice Admin' });
    assert.deepEqual(refused, [], 'Herald refused the whisper');
    assert.deepEqual(echoedToAlice, [], 'the sender does not get its own whisper');
  }));

test('user authentication as documented: Echo.connector.pusher.signin() through /broadcasting/user-auth, then sendToUser', () =>
  d.withLogs(server, async () => {
    const echo = await echoFor(ALICE, documentedOptions('new-echo', 'new Echo'));
    const pusher = echo.connector.pusher;
    const got = h.nextEvent(pusher.user, 'order.shipped', 5000, 'order.shipped for the signed-in user');
    pusher.signin();
    await h.waitFor(() => pusher.user.user_data, 5000, 'user_data after signin');
    assert.equal(pusher.user.user_data.id, String(ALICE));
    assert.ok(auth.requests.some((r) => r.path === '/broadcasting/user-auth' && r.status === 200), JSON.stringify(auth.requests));
    // pusher-js subscribes to #server-to-user-<id> after pusher:signin_success
    await h.waitFor(() => pusher.user.serverToUserChannel?.subscribed, 5000, 'the #server-to-user- subscription');
    const res = await server.sdk().sendToUser(String(ALICE), 'order.shipped', { order: 99 });
    assert.equal(res.status, 200);
    assert.deepEqual(await got, { order: 99 });
  }));
