'use strict';
// The "Laravel app" of the demo: one HTTP server that
//
//   GET  /                      the dashboard (public/index.html with the Echo options filled in)
//   GET  /dashboard.js|.css     the dashboard's script and style (public/)
//   GET  /vendor/pusher.min.js  pusher-js's browser build, from node_modules
//   GET  /vendor/echo.iife.js   laravel-echo's browser build, from node_modules
//   POST /broadcasting/auth     like Laravel's route: form (or JSON) socket_id + channel_name -> {auth[, channel_data]} | 403
//   GET  /api/status            what the simulator has sent and what the auth endpoint decided (for people and tests)
//
// "Who is logged in" is the `demo_user` cookie (the session, in Laravel), or a `?user=ID` query parameter, which
// wins and, on GET /, also sets the cookie. The channel rules are those of the store's routes/channels.php:
//
//   Broadcast::channel('admin-{any}',   fn ($user) => $user->hasRole('admin'));                                  // private-admin-*
//   Broadcast::channel('admin-presence', fn ($user) => $user->hasRole('admin') ? ['id' => $user->id, 'name' => $user->name] : false);
//   Broadcast::channel('user-presence',  fn ($user) => ['id' => $user->id, 'name' => $user->name, 'watcher' => $user->hasRole('admin')]);
//
// user-presence is a large presence channel at Herald (`large_presence_prefixes`, docs/presence.md §12): the
// members whose signed user_info says "watcher": true (the admins) get its member list and its joins and leaves,
// every other member (the shoppers) only the member count.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const PusherSdk = require('pusher');
const { findUser, isAdmin } = require('./lib/users');

const PUBLIC_DIR = path.join(__dirname, 'public');
const COOKIE = 'demo_user';
const SOCKET_ID = /^\d+\.\d+$/;

const STATIC = {
  '/dashboard.js': { file: path.join(PUBLIC_DIR, 'dashboard.js'), type: 'text/javascript; charset=utf-8' },
  '/dashboard.css': { file: path.join(PUBLIC_DIR, 'dashboard.css'), type: 'text/css; charset=utf-8' },
  '/vendor/pusher.min.js': { file: require.resolve('pusher-js/dist/web/pusher.min.js'), type: 'text/javascript; charset=utf-8' },
  '/vendor/echo.iife.js': { file: require.resolve('laravel-echo/iife'), type: 'text/javascript; charset=utf-8' },
};

/**
 * The channel authorization rules (routes/channels.php). Returns
 *   { allow: false, status, message }             refused
 *   { allow: true }                               private channel
 *   { allow: true, presence: {id, name[, watcher]} }  presence channel member info (user_info)
 */
function authorize(user, channelName) {
  if (!user) return { allow: false, status: 403, message: 'Unauthenticated.' };
  const m = /^(private-|presence-)(.+)$/.exec(channelName || '');
  // Public channels never come here; anything else has no Broadcast::channel() rule: Laravel answers 403.
  if (!m || channelName.startsWith('private-encrypted-')) return { allow: false, status: 403, message: 'This action is unauthorized.' };
  const [, prefix, name] = m;
  const member = { id: user.id, name: user.name };
  if (name.startsWith('admin-')) {
    if (!isAdmin(user)) return { allow: false, status: 403, message: 'This action is unauthorized.' };
    return prefix === 'presence-' ? { allow: true, presence: member } : { allow: true };
  }
  // The admins watch user-presence: Herald sends them its member list and member events, and only them.
  if (name === 'user-presence' && prefix === 'presence-') return { allow: true, presence: { ...member, watcher: isAdmin(user) } };
  return { allow: false, status: 403, message: 'This action is unauthorized.' };
}

function parseCookies(header) {
  const out = {};
  for (const part of (header || '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = decodeURIComponent(part.slice(i + 1).trim());
  }
  return out;
}

function readBody(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      body += d;
      if (body.length > limit) {
        reject(Object.assign(new Error('body too large'), { status: 413 }));
        req.destroy();
      }
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

/** socket_id and channel_name from a form-encoded (pusher-js, Echo) or JSON body. */
function parseAuthBody(req, body) {
  if ((req.headers['content-type'] || '').includes('application/json')) {
    try {
      const j = JSON.parse(body);
      return { socketId: j.socket_id, channelName: j.channel_name };
    } catch {
      return {};
    }
  }
  const form = new URLSearchParams(body);
  return { socketId: form.get('socket_id'), channelName: form.get('channel_name') };
}

/** JSON for a <script type="application/json"> element: no way to close the element from inside. */
function inlineJson(value) {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026');
}

/**
 * Start the app server.
 * @param {object} opts
 * @param {{id: string, key: string, secret: string}} opts.app    the Herald app (PUSHER_APP_*)
 * @param {string} opts.heraldHost     host Herald's HTTP API listens on (the SDK's `host`)
 * @param {number} opts.heraldPort     Herald's port (HTTP API and WebSockets)
 * @param {string} [opts.wsHost]       host the browser connects to (default heraldHost)
 * @param {string} [opts.host]         listen address (default 127.0.0.1)
 * @param {number} [opts.port]         listen port (default 8080; 0 = any free port)
 * @param {() => object} [opts.status] extra fields for /api/status (the simulator's stats)
 * @param {(line: string) => void} [opts.log]
 */
async function startServer(opts) {
  const log = opts.log || (() => {});
  const sdk = new PusherSdk({
    appId: opts.app.id,
    key: opts.app.key,
    secret: opts.app.secret,
    host: opts.heraldHost,
    port: String(opts.heraldPort),
    useTLS: false,
  });
  const echoOptions = {
    broadcaster: 'pusher',
    key: opts.app.key,
    cluster: 'mt1',
    wsHost: opts.wsHost || opts.heraldHost,
    wsPort: opts.heraldPort,
    wssPort: opts.heraldPort,
    forceTLS: false,
    enabledTransports: ['ws', 'wss'],
    disableStats: true,
    authEndpoint: '/broadcasting/auth',
  };
  const template = fs.readFileSync(path.join(PUBLIC_DIR, 'index.html'), 'utf8');
  const decisions = { allowed: 0, refused: 0, recent: [] };
  // A store of thousands of shoppers signs thousands of subscriptions at once: log the first few allowed ones
  // of each second and count the rest (refusals are always logged).
  const allowedLog = { shown: 0, hidden: 0, timer: null };
  function logAllowed(line) {
    if (!allowedLog.timer) {
      allowedLog.timer = setTimeout(() => {
        if (allowedLog.hidden) log(`auth 200 for ${allowedLog.hidden} more subscription(s) in that second`);
        Object.assign(allowedLog, { shown: 0, hidden: 0, timer: null });
      }, 1000);
      allowedLog.timer.unref();
    }
    if (allowedLog.shown < 5) {
      allowedLog.shown += 1;
      log(line);
    } else allowedLog.hidden += 1;
  }

  function currentUser(req, url) {
    const id = url.searchParams.get('user') ?? parseCookies(req.headers.cookie)[COOKIE];
    return { id, user: id == null ? undefined : findUser(id) };
  }

  function send(res, status, type, body, headers = {}) {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
    res.end(body);
  }
  const json = (res, status, obj) => send(res, status, 'application/json', JSON.stringify(obj));

  async function handleAuth(req, res, url) {
    const { user, id } = currentUser(req, url);
    const { socketId, channelName } = parseAuthBody(req, await readBody(req));
    const record = (status, why) => {
      const entry = { at: new Date().toISOString(), user: user ? user.id : id ?? null, channel: channelName ?? null, status, why };
      if (status === 200) decisions.allowed += 1;
      else decisions.refused += 1;
      decisions.recent.push(entry);
      if (decisions.recent.length > 50) decisions.recent.shift();
      const line = `auth ${status} ${user ? `${user.name} (${user.id})` : `guest (${id ?? 'no user'})`} ${channelName}${why ? `: ${why}` : ''}`;
      if (status !== 200) log(line);
      else if (!opts.quietAuth) logAllowed(line);
    };
    if (!socketId || !SOCKET_ID.test(socketId) || !channelName) {
      record(400, 'socket_id and channel_name are required');
      return json(res, 400, { message: 'socket_id and channel_name are required.' });
    }
    const decision = authorize(user, channelName);
    if (!decision.allow) {
      record(decision.status, decision.message);
      return json(res, decision.status, { message: decision.message });
    }
    // Laravel's PusherBroadcaster: presence channel_data = {user_id: $user->getAuthIdentifier(), user_info: <callback result>}.
    const body = decision.presence
      ? sdk.authorizeChannel(socketId, channelName, { user_id: user.id, user_info: decision.presence })
      : sdk.authorizeChannel(socketId, channelName);
    record(200);
    return json(res, 200, body);
  }

  function handlePage(req, res, url) {
    const { user, id } = currentUser(req, url);
    const headers = {};
    if (url.searchParams.has('user')) {
      headers['set-cookie'] = `${COOKIE}=${encodeURIComponent(id)}; Path=/; HttpOnly; SameSite=Lax`;
    } else if (id == null) {
      // Nobody "logged in": log in as the first admin, as the printed URL does.
      return send(res, 302, 'text/plain', 'see /?user=1\n', { location: '/?user=1' });
    }
    const page = {
      echo: echoOptions,
      user: user ? { id: user.id, name: user.name, role: user.role } : { id: id ?? null, name: `unknown user ${id}`, role: 'guest' },
      users: [1, 2, 3].map((n) => findUser(n)),
    };
    return send(res, 200, 'text/html; charset=utf-8', template.replace('__PAGE_CONFIG__', inlineJson(page)), headers);
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    (async () => {
      if (url.pathname === '/broadcasting/auth') {
        if (req.method !== 'POST') return json(res, 405, { message: 'The GET method is not supported for route broadcasting/auth.' });
        return await handleAuth(req, res, url);
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { message: 'Method Not Allowed' });
      if (url.pathname === '/' || url.pathname === '/index.html') return handlePage(req, res, url);
      if (url.pathname === '/api/status') {
        return json(res, 200, { auth: decisions, ...(opts.status ? opts.status() : {}) });
      }
      const file = STATIC[url.pathname];
      if (file) return send(res, 200, file.type, fs.readFileSync(file.file));
      if (url.pathname === '/favicon.ico') return send(res, 204, 'image/x-icon', '');
      return send(res, 404, 'text/plain', 'Not Found\n');
    })().catch((e) => {
      log(`error serving ${req.method} ${url.pathname}: ${e && e.stack}`);
      if (!res.headersSent) json(res, e.status || 500, { message: e.status ? e.message : 'Server Error' });
      else res.destroy();
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 8080, opts.host || '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const host = opts.host && opts.host !== '0.0.0.0' && opts.host !== '::' ? opts.host : '127.0.0.1';
  const base = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return {
    server,
    port,
    url: `${base}/`,
    authUrl: `${base}/broadcasting/auth`,
    decisions,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

module.exports = { startServer, authorize };
