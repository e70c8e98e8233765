#!/usr/bin/env node
'use strict';
// The store's backend, simulated: it broadcasts what the Laravel events of the store broadcast, through Herald's
// Pusher HTTP API with the stock `pusher` SDK (what Laravel's `pusher` broadcast driver uses), and it keeps
// simulated shoppers' sockets (pusher-js) coming and going on presence-user-presence.
//
// The shoppers: at start, --min-users of them (or --online N) join quietly, RAMP_CONCURRENCY at a time (the store
// was already busy); then each `users` tick makes one join or leave between --min-users and --max-users (with
// --online N: both N, so one leaves and the next tick one joins), with user.online / user.offline. Each shopper
// is a pusher-js socket authorized by the app's /broadcasting/auth as user 1001.. (a counted member of the large
// presence channel: it hears the member count, not the members).
//
//   Laravel event            broadcastOn()                   broadcastAs()        Echo listens to
//   UserOnlineEvent          private-admin-monitoring        user.online          .user.online
//   UserOfflineEvent         private-admin-monitoring        user.offline         .user.offline
//   NewOrderEvent            private-admin-orders            order.new            .order.new
//   PaymentProcessedEvent    private-admin-payments          payment.processed    .payment.processed
//   StockAlertEvent          private-admin-inventory         stock.alert          .stock.alert
//   SystemAlertEvent         private-admin-system            system.alert         .system.alert
//   AdminNotificationEvent   private-admin-notifications     admin.notification   .admin.notification
//
// Payloads carry essential fields only (ids, display names, amounts, counts): no e-mail, address or card data.
//
// Run on its own against a running Herald and app (npm start runs it for you):
//   node simulator.js --herald-url http://127.0.0.1:6001 --auth-url http://127.0.0.1:8080/broadcasting/auth --rate 5

const PusherSdk = require('pusher');
const PusherJs = require('pusher-js');
const { SHOPPER_MIN, SHOPPER_MAX, findUser } = require('./lib/users');
const { parseMix } = require('./lib/options');

const KINDS = ['users', 'orders', 'payments', 'stock', 'system', 'notifications'];

const CHANNELS = Object.freeze({
  monitoring: 'private-admin-monitoring',
  orders: 'private-admin-orders',
  payments: 'private-admin-payments',
  inventory: 'private-admin-inventory',
  system: 'private-admin-system',
  notifications: 'private-admin-notifications',
  userPresence: 'presence-user-presence',
});

const PRODUCTS = [
  { id: 101, sku: 'LAP-14-PRO', name: 'Laptop 14" Pro', stock: 18, threshold: 5 },
  { id: 102, sku: 'PHN-X2-128', name: 'Phone X2 128 GB', stock: 25, threshold: 8 },
  { id: 103, sku: 'EAR-BT-NC', name: 'Noise-cancelling earbuds', stock: 12, threshold: 6 },
  { id: 104, sku: 'CHG-65W-C', name: '65 W USB-C charger', stock: 9, threshold: 10 },
  { id: 105, sku: 'MON-27-4K', name: '27" 4K monitor', stock: 6, threshold: 3 },
  { id: 106, sku: 'KBD-MECH-TKL', name: 'Mechanical keyboard TKL', stock: 3, threshold: 4 },
];

const SYSTEM_ALERTS = [
  { type: 'error', severity: 'high', title: 'Database error', message: 'Connection timeout on the orders replica' },
  { type: 'security', severity: 'critical', title: 'Suspicious logins', message: 'Many failed admin logins from one address' },
  { type: 'maintenance', severity: 'low', title: 'Maintenance window', message: 'Search index rebuild tonight at 02:00' },
  { type: 'error', severity: 'medium', title: 'Mail queue backlog', message: 'Order confirmation e-mails delayed' },
  { type: 'security', severity: 'high', title: 'Webhook signature mismatch', message: 'Payment webhook rejected' },
  { type: 'maintenance', severity: 'medium', title: 'Cache flush', message: 'Product cache flushed after the price import' },
];

const NOTIFICATIONS = [
  { level: 'info', title: 'Daily report ready', message: "Yesterday's sales report is ready to download" },
  { level: 'warning', title: 'Review awaiting moderation', message: 'A product review was flagged by a customer' },
  { level: 'info', title: 'Coupon expiring', message: 'Coupon WEEKEND10 expires in 24 hours' },
  { level: 'success', title: 'Import finished', message: 'Supplier price list imported' },
];

/** Shopper sockets opening at once during the start-up ramp. */
const RAMP_CONCURRENCY = 100;
/** A shopper whose subscription has not succeeded by then is given up (socket closed). */
const JOIN_TIMEOUT_MS = 30000;
/** Joins and leaves kept for status() (the tests compare the dashboard with them). */
const PRESENCE_LOG_LENGTH = 200;

const PAYMENT_METHODS = ['card', 'mobile_money', 'paypal', 'bank_transfer'];
const FAILURE_REASONS = ['card_declined', 'insufficient_funds', 'timeout', 'fraud_suspected'];

/** Small seeded PRNG (mulberry32), so that a --seed gives the same run twice. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Smooth weighted round-robin: every kind with weight w > 0 comes w times in each sum(weights) ticks, interleaved. */
function weightedRoundRobin(weights) {
  const entries = Object.entries(weights).filter(([, w]) => w > 0).map(([kind, weight]) => ({ kind, weight, current: 0 }));
  const total = entries.reduce((s, e) => s + e.weight, 0);
  return () => {
    let best = entries[0];
    for (const e of entries) {
      e.current += e.weight;
      if (e.current > best.current) best = e;
    }
    best.current -= total;
    return best.kind;
  };
}

class Simulator {
  /**
   * @param {object} opts
   * @param {{id: string, key: string, secret: string}} opts.app
   * @param {string} opts.heraldHost
   * @param {number} opts.heraldPort
   * @param {string} opts.authUrl       the app's /broadcasting/auth (shopper sockets add ?user=ID)
   * @param {number} [opts.rate]        events per second
   * @param {string|object} [opts.mix]  "users=3,orders=3,..." or {users: 3, ...}
   * @param {number} [opts.minUsers]
   * @param {number} [opts.maxUsers]
   * @param {number} [opts.online]      a store of N shoppers: min and max users both N (0: use minUsers/maxUsers)
   * @param {number} [opts.paymentFailureRate]
   * @param {number} [opts.seed]
   * @param {(line: string) => void} [opts.log]
   */
  constructor(opts) {
    this.opts = opts;
    this.log = opts.log || (() => {});
    this.rate = opts.rate ?? 2;
    this.mix = typeof opts.mix === 'object' ? { ...Object.fromEntries(KINDS.map((k) => [k, 0])), ...opts.mix } : parseMix(opts.mix ?? 'users=3,orders=3,payments=3,stock=2,system=1,notifications=1', KINDS);
    this.minUsers = opts.online > 0 ? opts.online : opts.minUsers ?? 2;
    this.maxUsers = opts.online > 0 ? opts.online : Math.max(opts.maxUsers ?? 8, this.minUsers);
    if (this.maxUsers > SHOPPER_MAX - SHOPPER_MIN + 1) throw new Error(`--max-users / --online: at most ${SHOPPER_MAX - SHOPPER_MIN + 1}`);
    this.failureRate = Math.min(1, Math.max(0, opts.paymentFailureRate ?? 0.25));
    this.seed = opts.seed || Math.floor(Math.random() * 2 ** 31) + 1;
    this.random = prng(this.seed);
    this.nextKind = weightedRoundRobin(this.mix);
    this.sdk = new PusherSdk({
      appId: opts.app.id,
      key: opts.app.key,
      secret: opts.app.secret,
      host: opts.heraldHost,
      port: String(opts.heraldPort),
      useTLS: false,
      timeout: 5000,
    });
    this.products = PRODUCTS.map((p) => ({ ...p }));
    this.orderSeq = 0;
    this.todayOrderCount = 0;
    this.paymentSeq = 0;
    this.recentOrders = [];
    this.alertSeq = 0;
    this.notificationSeq = 0;
    this.shoppers = new Map(); // user id -> {user, client, state: 'joining'|'online'|'leaving', since}
    this.presenceLog = []; // the last PRESENCE_LOG_LENGTH joins and leaves: {at, kind: 'join'|'leave', id, name, ramp?}
    this.ramp = { target: this.minUsers, state: 'waiting', started_at: null, finished_at: null, ms: null, refused: 0 };
    this.stats = { started_at: null, seed: this.seed, rate: this.rate, mix: this.mix, triggered: 0, failed: 0, by_event: {}, last_error: null };
    this.pending = new Set();
    this.timer = null;
  }

  start() {
    if (this.timer || this.rate <= 0) return;
    this.stopped = false;
    this.stats.started_at = new Date().toISOString();
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.round(1000 / this.rate)));
    this.rampDone = this.rampUp();
    this.tick();
  }

  async stop() {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = null;
    for (const s of this.shoppers.values()) {
      if (s.abort) s.abort();
      s.client.disconnect();
    }
    this.shoppers.clear();
    await Promise.allSettled([...this.pending, this.rampDone]);
  }

  status() {
    return {
      ...this.stats,
      shoppers_online: this.onlineCount(),
      shoppers_target: this.minUsers === this.maxUsers ? this.minUsers : [this.minUsers, this.maxUsers],
      ramp: { ...this.ramp },
      presence_log: this.presenceLog.slice(),
      today_order_count: this.todayOrderCount,
    };
  }

  tick() {
    const kind = this.nextKind();
    try {
      this[kind]();
    } catch (e) {
      this.stats.last_error = String(e && e.message);
      this.log(`simulator: ${kind}: ${e && e.message}`);
    }
  }

  pick(list) {
    return list[Math.floor(this.random() * list.length)];
  }

  /** Broadcast like Laravel's pusher driver: one trigger per event, JSON data, the broadcastAs() name. */
  trigger(channel, event, data) {
    const p = this.sdk
      .trigger(channel, event, data)
      .then(() => {
        this.stats.triggered += 1;
        this.stats.by_event[event] = (this.stats.by_event[event] || 0) + 1;
        this.log(`${event.padEnd(18)} ${channel.padEnd(28)} ${JSON.stringify(data)}`);
      })
      .catch((e) => {
        this.stats.failed += 1;
        const detail = e && e.status ? `HTTP ${e.status} ${e.body || ''}`.trim() : String(e && e.message);
        this.stats.last_error = `${event} on ${channel}: ${detail}`;
        this.log(`simulator: trigger ${event} on ${channel} failed: ${detail}`);
      })
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
    return p;
  }

  now() {
    return new Date().toISOString();
  }

  // -- users: shoppers' sockets on presence-user-presence, and user.online / user.offline --------------------

  onlineCount() {
    let n = 0;
    for (const s of this.shoppers.values()) if (s.state === 'online') n += 1;
    return n;
  }

  users() {
    if (this.ramp.state === 'running') return; // the ramp is joining them
    const present = this.shoppers.size; // joining + online (+ leaving, gone at once)
    const join = present < this.minUsers || (present < this.maxUsers && this.random() < 0.6);
    if (join) this.joinShopper();
    else this.leaveShopper();
  }

  logPresence(kind, user, ramp = false) {
    this.presenceLog.push({ at: this.now(), kind, id: user.id, name: user.name, ...(ramp ? { ramp } : {}) });
    if (this.presenceLog.length > PRESENCE_LOG_LENGTH) this.presenceLog.shift();
  }

  /** The store's shoppers already online: --min-users (--online) of them, RAMP_CONCURRENCY sockets at a time. */
  async rampUp() {
    const target = this.minUsers;
    Object.assign(this.ramp, { state: 'running', started_at: this.now() });
    const t0 = Date.now();
    if (target >= 50) this.log(`ramp: ${target} shoppers joining ${CHANNELS.userPresence}, ${RAMP_CONCURRENCY} at a time`);
    let nextReport = Date.now() + 2000;
    const worker = async () => {
      while (!this.stopped && this.shoppers.size < target && this.ramp.refused <= Math.max(20, target / 10)) {
        if (!(await this.joinShopper({ ramp: true }))) this.ramp.refused += 1;
        if (target >= 50 && Date.now() >= nextReport) {
          nextReport = Date.now() + 2000;
          this.log(`ramp: ${this.onlineCount()}/${target} shoppers online`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(RAMP_CONCURRENCY, target) }, worker));
    const ms = Date.now() - t0;
    const ok = this.shoppers.size >= target;
    Object.assign(this.ramp, { state: this.stopped ? 'stopped' : ok ? 'done' : 'failed', finished_at: this.now(), ms });
    if (!this.stopped && target > 0) {
      this.log(`ramp: ${ok ? 'done' : 'FAILED'}: ${this.onlineCount()}/${target} shoppers online after ${ms} ms (${this.ramp.refused} refused)`);
    }
  }

  /**
   * Open a shopper's socket and join presence-user-presence. Resolves true once subscribed, false if refused
   * (or not subscribed within JOIN_TIMEOUT_MS). A ramp join sends no user.online (the shopper was already there).
   */
  joinShopper({ ramp = false } = {}) {
    let id;
    do id = SHOPPER_MIN + Math.floor(this.random() * (SHOPPER_MAX - SHOPPER_MIN + 1));
    while (this.shoppers.has(id));
    const user = findUser(id);
    const client = new PusherJs(this.opts.app.key, {
      cluster: 'mt1',
      wsHost: this.opts.heraldHost,
      wsPort: this.opts.heraldPort,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      channelAuthorization: { endpoint: `${this.opts.authUrl}?user=${id}`, transport: 'ajax' },
    });
    const shopper = { user, client, state: 'joining', since: Date.now() };
    this.shoppers.set(id, shopper);
    this.logPresence('join', user, ramp);
    const channel = client.subscribe(CHANNELS.userPresence);
    return new Promise((resolve) => {
      const giveUp = (why) => {
        clearTimeout(timer);
        if (this.shoppers.get(id) === shopper) {
          this.log(`simulator: shopper ${id} ${why} on ${CHANNELS.userPresence}`);
          this.stats.last_error = `shopper ${id} ${why} on ${CHANNELS.userPresence}`;
          this.shoppers.delete(id);
        }
        client.disconnect();
        resolve(false);
      };
      const timer = setTimeout(() => giveUp(`not subscribed within ${JOIN_TIMEOUT_MS} ms`), JOIN_TIMEOUT_MS);
      shopper.abort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      channel.bind('pusher:subscription_succeeded', () => {
        clearTimeout(timer);
        shopper.abort = null;
        resolve(true);
        if (shopper.state !== 'joining') return;
        shopper.state = 'online';
        if (ramp) return;
        // UserOnlineEvent($user, $activeSession, $totalActiveUsers)
        this.trigger(CHANNELS.monitoring, 'user.online', {
          user: { id: user.id, name: user.name },
          total_active_users: this.onlineCount(),
          timestamp: this.now(),
        });
      });
      channel.bind('pusher:subscription_error', (e) => giveUp(`refused: ${JSON.stringify(e)}`));
    });
  }

  leaveShopper() {
    let shopper;
    // A random online shopper, without copying thousands of them into an array.
    const online = this.onlineCount();
    if (!online) return;
    let k = Math.floor(this.random() * online);
    for (const s of this.shoppers.values()) {
      if (s.state !== 'online') continue;
      if (k-- === 0) {
        shopper = s;
        break;
      }
    }
    shopper.state = 'leaving';
    this.logPresence('leave', shopper.user);
    shopper.client.unsubscribe(CHANNELS.userPresence);
    shopper.client.disconnect();
    this.shoppers.delete(shopper.user.id);
    this.trigger(CHANNELS.monitoring, 'user.offline', {
      user: { id: shopper.user.id, name: shopper.user.name },
      total_active_users: this.onlineCount(),
      session_seconds: Math.round((Date.now() - shopper.since) / 1000),
      timestamp: this.now(),
    });
  }

  // -- e-commerce ----------------------------------------------------------------------------------------------

  orders() {
    this.orderSeq += 1;
    this.todayOrderCount += 1;
    const items = 1 + Math.floor(this.random() * 4);
    const total = Math.round((15 + this.random() * 985) * 100) / 100;
    const order = {
      id: 5000 + this.orderSeq,
      number: `ORD-${new Date().toISOString().slice(0, 10).replace(/-/g, '')}-${String(this.orderSeq).padStart(4, '0')}`,
      total,
      currency: 'USD',
      items_count: items,
      status: 'pending',
    };
    this.recentOrders.push(order);
    if (this.recentOrders.length > 20) this.recentOrders.shift();
    // Orders take stock: an order may push a product under its threshold (the stock alert comes on a stock tick).
    const product = this.pick(this.products);
    product.stock = Math.max(0, product.stock - items);
    // NewOrderEvent($order, $todayOrderCount)
    this.trigger(CHANNELS.orders, 'order.new', { order, today_order_count: this.todayOrderCount, timestamp: this.now() });
  }

  payments() {
    const order = this.recentOrders.length ? this.pick(this.recentOrders) : { id: 5000, total: 49.9, currency: 'USD' };
    this.paymentSeq += 1;
    const failed = this.random() < this.failureRate;
    const payment = {
      id: 9000 + this.paymentSeq,
      order_id: order.id,
      amount: order.total,
      currency: order.currency,
      method: this.pick(PAYMENT_METHODS),
      status: failed ? 'failed' : 'success',
    };
    if (failed) payment.failure_reason = this.pick(FAILURE_REASONS);
    // PaymentProcessedEvent($payment)
    this.trigger(CHANNELS.payments, 'payment.processed', { payment, timestamp: this.now() });
  }

  // -- inventory -----------------------------------------------------------------------------------------------

  stock() {
    const product = this.pick(this.products);
    let alertType;
    if (product.stock === 0) {
      // A supplier delivery.
      product.stock = 20 + Math.floor(this.random() * 30);
      alertType = 'restock';
    } else if (product.stock > product.threshold) {
      // A sales spike takes it to its threshold or below.
      product.stock = 1 + Math.floor(this.random() * product.threshold);
      alertType = 'low_stock';
    } else {
      product.stock = Math.max(0, product.stock - (1 + Math.floor(this.random() * product.threshold)));
      alertType = product.stock === 0 ? 'out_of_stock' : 'low_stock';
    }
    // StockAlertEvent($product, $alertType, $currentStock, $threshold)
    this.trigger(CHANNELS.inventory, 'stock.alert', {
      product: { id: product.id, sku: product.sku, name: product.name },
      alert_type: alertType,
      current_stock: product.stock,
      threshold: product.threshold,
      timestamp: this.now(),
    });
  }

  // -- system and notifications --------------------------------------------------------------------------------

  system() {
    const alert = SYSTEM_ALERTS[this.alertSeq % SYSTEM_ALERTS.length];
    this.alertSeq += 1;
    // SystemAlertEvent($type, $severity, $title, $message)
    this.trigger(CHANNELS.system, 'system.alert', { id: this.alertSeq, ...alert, timestamp: this.now() });
  }

  notifications() {
    const n = NOTIFICATIONS[this.notificationSeq % NOTIFICATIONS.length];
    this.notificationSeq += 1;
    this.trigger(CHANNELS.notifications, 'admin.notification', { id: this.notificationSeq, ...n, timestamp: this.now() });
  }
}

module.exports = { Simulator, CHANNELS, KINDS, weightedRoundRobin };

if (require.main === module) {
  const { parseOptions, usage } = require('./lib/options');
  const names = ['herald-url', 'auth-url', 'rate', 'mix', 'min-users', 'max-users', 'online', 'payment-failure-rate', 'seed', 'quiet', 'help'];
  let o;
  try {
    o = parseOptions(process.argv.slice(2), process.env, names);
  } catch (e) {
    console.error(`simulator: ${e.message}`);
    process.exit(2);
  }
  if (o.help) {
    console.log(`${usage('node simulator.js', names)}\n\nThe app comes from PUSHER_APP_ID / PUSHER_APP_KEY / PUSHER_APP_SECRET (default local/local/local).`);
    process.exit(0);
  }
  if (!o.heraldUrl || !o.authUrl) {
    console.error('simulator: --herald-url and --auth-url are required (npm start runs everything for you)');
    process.exit(2);
  }
  const herald = new URL(o.heraldUrl);
  const sim = new Simulator({
    app: { id: process.env.PUSHER_APP_ID || 'local', key: process.env.PUSHER_APP_KEY || 'local', secret: process.env.PUSHER_APP_SECRET || 'local' },
    heraldHost: herald.hostname,
    heraldPort: Number(herald.port || 80),
    authUrl: o.authUrl,
    rate: o.rate,
    mix: o.mix,
    minUsers: o.minUsers,
    maxUsers: o.maxUsers,
    online: o.online,
    paymentFailureRate: o.paymentFailureRate,
    seed: o.seed,
    log: o.quiet ? undefined : (line) => console.log(line),
  });
  sim.start();
  console.log(`simulator: ${o.rate} events/s, seed ${sim.seed}, mix ${JSON.stringify(sim.mix)}`);
  const stop = () => sim.stop().then(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
