'use strict';
// An app configured for Laravel Reverb, pointed at Herald unchanged (docs/migration.md, "Laravel Reverb"):
// Herald started with no config file, no PUSHER_APP_*, only REVERB_APP_ID/KEY/SECRET (+ HERALD_CLIENT_EVENTS=true),
// as the page's start command says; laravel-echo with `broadcaster: 'reverb'` built from the page's Echo block and
// `.env` (read from the markdown through the `<!-- e2e: reverb-... -->` markers).
//
// What Echo's reverb broadcaster needs in Node: it is Echo's pusher connector with `cluster: ''`, so it needs
// pusher-js as `options.client`, `options.Pusher` or `window.Pusher`. A page sets window.Pusher (the documented
// block does); Node has no window, so the test passes `Pusher: PusherJs`. The other test-side additions are the
// absolute URL of the Laravel-like /broadcasting/auth (with a header naming the test user instead of a session
// cookie) and `withoutInterceptors`. REVERB_PORT is replaced by a free port (the page's is 8080).
const { before } = require('node:test');
const h = require('./harness');
const d = require('./laravel-docs');
const { test, assert } = h;

const DOC = 'docs/migration.md';
const ALICE = 1;
const BOB = 2;

let server;
let env;
let auth;

before(async () => {
  const documented = d.parseDotenv(d.docBlock(DOC, 'reverb-env'));
  assert.equal(documented.BROADCAST_CONNECTION, 'reverb');
  const start = d.docBlock(DOC, 'reverb-start');
  for (const k of ['REVERB_APP_ID', 'REVERB_APP_KEY', 'REVERB_APP_SECRET']) {
    assert.ok(documented[k], `${k} in the documented .env`);
    assert.match(start, new RegExp(`${k}=${documented[k]}\\b`), `the start command sets ${k} as the .env does`);
  }
  assert.match(start, /HERALD_CLIENT_EVENTS=true/);
  assert.doesNotMatch(start, /PUSHER_APP_|--config/);

  const app = { id: documented.REVERB_APP_ID, key: documented.REVERB_APP_KEY, secret: documented.REVERB_APP_SECRET };
  // startHeraldFromEnv removes every PUSHER_APP_* / REVERB_APP_* / HERALD_CONFIG variable not given here
  server = await d.startHeraldFromEnv(
    { REVERB_APP_ID: app.id, REVERB_APP_KEY: app.key, REVERB_APP_SECRET: app.secret, HERALD_CLIENT_EVENTS: 'true' },
    app,
  );
  env = d.parseDotenv(d.docBlock(DOC, 'reverb-env'), { REVERB_PORT: server.port });
  auth = await h.startAuthServer(server);
});

async function reverbEcho(user) {
  const options = d.echoOptionsFromDoc(d.docBlock(DOC, 'reverb-echo'), 'new Echo', env);
  const headers = { 'X-Test-User': String(user) };
  const extra = { Pusher: h.PusherJs, authEndpoint: `${auth.url}/broadcasting/auth`, auth: { headers }, withoutInterceptors: true };
  for (const k of Object.keys(extra)) assert.ok(!(k in options), `the test would override the documented option ${k}`);
  const Echo = await h.loadEcho();
  const echo = new Echo({ ...options, ...extra });
  h.track(() => echo.disconnect());
  await h.pusherState(echo.connector.pusher, 'connected');
  return { echo, options };
}

test('no config, no PUSHER_APP_*: the app comes from REVERB_APP_ID/KEY/SECRET, and the log says so', () =>
  d.withLogs(server, async () => {
    assert.match(server.output, /app taken from REVERB_APP_ID\/REVERB_APP_KEY\/REVERB_APP_SECRET \(no PUSHER_APP_\* set\)/);
    assert.doesNotMatch(server.output, /development app/);
    // Laravel's `reverb` connection is the Pusher driver: the HTTP API takes the Reverb app's id and secret
    const res = await server.sdk().trigger('orders', 'order.created', { id: 1 });
    assert.equal(res.status, 200);
    // the development app is not served
    const dev = new h.RawClient(`ws://127.0.0.1:${server.port}/app/app-key?protocol=7`);
    assert.equal((await dev.waitClose()).code, 4001);
  }));

test("Echo broadcaster 'reverb' as documented: two clients join a presence channel, see each other, and one hears the other's whisper", () =>
  d.withLogs(server, async () => {
    const { echo: alice, options } = await reverbEcho(ALICE);
    assert.equal(options.broadcaster, 'reverb');
    assert.equal(options.key, server.app.key);
    assert.equal(options.wsHost, env.REVERB_HOST);
    assert.equal(String(options.wsPort), String(server.port));
    assert.equal(options.forceTLS, false);
    assert.equal(alice.connector.pusher.config.cluster, '', "Echo's reverb broadcaster drops the cluster");

    const joined = [];
    const aliceHere = await h.withTimeout(
      new Promise((resolve, reject) => {
        alice
          .join('chat.7')
          .here(resolve)
          .joining((u) => joined.push(u))
          .error((e) => reject(new Error(`alice join refused: ${JSON.stringify(e)}`)));
      }),
      5000,
      'alice here()',
    );
    assert.deepEqual(aliceHere, [{ id: '1', name: 'Alice Admin' }]);

    const { echo: bob } = await reverbEcho(BOB);
    const bobCh = bob.join('chat.7');
    const bobHere = await h.withTimeout(new Promise((resolve) => bobCh.here(resolve)), 5000, 'bob here()');
    assert.deepEqual(
      [...bobHere].sort((a, b) => a.id.localeCompare(b.id)),
      [
        { id: '1', name: 'Alice Admin' },
        { id: '2', name: 'Bob Admin' },
      ],
    );
    await h.waitFor(() => joined.length === 1, 5000, 'alice joining(bob)');
    assert.deepEqual(joined[0], { id: '2', name: 'Bob Admin' });

    const heard = new Promise((resolve) => alice.join('chat.7').listenForWhisper('typing', resolve));
    bobCh.whisper('typing', { name: 'Bob Admin' });
    assert.deepEqual(await h.withTimeout(heard, 5000, "alice hears bob's whisper"), { name: 'Bob Admin' });

    // and an event from the backend reaches both members
    const got = Promise.all([alice, bob].map((e) => new Promise((resolve) => e.join('chat.7').listen('.message.sent', resolve))));
    await server.sdk().trigger('presence-chat.7', 'message.sent', { text: 'hi' });
    assert.deepEqual(await h.withTimeout(got, 5000, 'message.sent on both clients'), [{ text: 'hi' }, { text: 'hi' }]);
  }));
