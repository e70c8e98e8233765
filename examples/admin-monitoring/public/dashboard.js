/* global Pusher, Echo */
// The admin dashboard: what a Laravel app's resources/js would do with laravel-echo, in plain browser JS.
// Everything shown comes from Herald over one WebSocket; payload text is only ever set with textContent.
(function () {
  'use strict';

  const page = JSON.parse(document.getElementById('page-config').textContent);
  const $ = (id) => document.getElementById(id);
  // as many as Herald keeps on each admin channel (lib/herald.js: HISTORY_EVENTS), so a fresh page is full
  const FEED_LENGTH = 20;

  // Test and debugging hook: what the page has received and been refused.
  const state = (window.dashboard = { adminEvents: 0, byEvent: {}, refused: {}, subscribed: {}, admins: [], errors: [] });

  // -- header -------------------------------------------------------------------------------------------------
  $('whoami').textContent = page.user.name;
  $('role').textContent = page.user.role;
  $('role').dataset.role = page.user.role;
  for (const u of page.users) {
    const a = document.createElement('a');
    a.href = `/?user=${encodeURIComponent(u.id)}`;
    a.textContent = `${u.name.split(' ')[0]} (${u.role})`;
    if (String(u.id) === String(page.user.id)) a.setAttribute('aria-current', 'true');
    $('switch').append(' ', a);
  }

  // -- Echo, configured as a Laravel app would (resources/js/echo.js) ------------------------------------------
  window.Pusher = Pusher;
  const EchoClass = Echo.default || Echo; // the IIFE build exposes the module namespace
  const echo = (window.Echo = new EchoClass({ ...page.echo, Pusher }));
  const connection = echo.connector.pusher.connection;
  const showConnection = (s) => {
    $('connection').dataset.state = s;
    $('connection').textContent = s === 'connected' ? `connected · socket ${echo.socketId()}` : s;
  };
  connection.bind('state_change', (s) => showConnection(s.current));
  showConnection(connection.state);

  // -- helpers -------------------------------------------------------------------------------------------------
  const money = (amount, currency) => {
    try {
      return new Intl.NumberFormat('en-US', { style: 'currency', currency: currency || 'USD' }).format(amount);
    } catch {
      return `${amount} ${currency || ''}`.trim();
    }
  };
  const clock = (iso) => {
    const d = iso ? new Date(iso) : new Date();
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString('en-GB', { hour12: false });
  };
  const el = (tag, className, text) => {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  function addFeedItem(feedId, kind, parts, timestamp) {
    const li = el('li', `item ${kind || ''}`.trim());
    li.dataset.kind = kind || '';
    li.append(el('time', 'at', clock(timestamp)));
    for (const p of parts) li.append(typeof p === 'string' ? document.createTextNode(p) : p);
    const list = $(feedId);
    list.prepend(li);
    while (list.children.length > FEED_LENGTH) list.lastElementChild.remove();
  }
  const bump = (id, by = 1) => {
    $(id).textContent = String((Number($(id).textContent) || 0) + by);
  };
  function countAdminEvent(name) {
    state.adminEvents += 1;
    state.byEvent[name] = (state.byEvent[name] || 0) + 1;
    $('events-received').textContent = String(state.adminEvents);
  }

  // -- subscription bookkeeping: the channel strip and the refusal message -------------------------------------
  function channelChip(name) {
    let li = document.querySelector(`#channels li[data-channel="${name}"]`);
    if (!li) {
      li = el('li', 'chip', name);
      li.dataset.channel = name;
      li.dataset.state = 'pending';
      $('channels').append(li);
    }
    return li;
  }
  function subscribedTo(name) {
    state.subscribed[name] = true;
    channelChip(name).dataset.state = 'subscribed';
  }
  function refused(name, err) {
    const status = (err && err.status) || 'error';
    state.refused[name] = status;
    channelChip(name).dataset.state = 'refused';
    const box = $('auth-error');
    box.hidden = false;
    const isAdminChannel = /^(private|presence)-admin-/.test(name);
    $('auth-error-title').textContent = isAdminChannel ? 'Not authorized for the admin channels.' : 'A subscription was refused.';
    $('auth-error-text').textContent =
      page.user.role === 'admin'
        ? `/broadcasting/auth refused ${page.user.name}; check the auth endpoint and the app credentials.`
        : `${page.user.name} does not have the admin role: /broadcasting/auth answered ${status} for these channels, so pusher-js never subscribed them at Herald and no admin events reach this page.`;
    let item = document.querySelector(`#auth-error-channels li[data-channel="${name}"]`);
    if (!item) {
      item = el('li');
      item.dataset.channel = name;
      $('auth-error-channels').append(item);
    }
    item.textContent = `${name}: ${status}${err && err.error ? ` (${String(err.error).split(' - ')[0]})` : ''}`;
  }
  /** Echo.private(name) with the leading-dot listeners, plus subscribed/refused bookkeeping. */
  function privateChannel(name, listeners) {
    const full = `private-${name}`;
    channelChip(full);
    const channel = echo.private(name);
    channel.subscribed(() => subscribedTo(full)).error((e) => refused(full, e));
    for (const [event, handler] of Object.entries(listeners)) {
      channel.listen(`.${event}`, (data) => {
        countAdminEvent(event);
        try {
          handler(data);
        } catch (e) {
          state.errors.push(`${event}: ${e.message}`);
        }
      });
    }
    return channel;
  }

  // -- private-admin-monitoring: user.online / user.offline -----------------------------------------------------
  privateChannel('admin-monitoring', {
    'user.online': (e) => {
      $('users-online').textContent = String(e.total_active_users);
      $('users-online-detail').textContent = `${e.user.name} came online`;
      addFeedItem('feed-users', 'online', [el('span', 'badge online', 'online'), ` ${e.user.name} · ${e.total_active_users} active`], e.timestamp);
    },
    'user.offline': (e) => {
      $('users-online').textContent = String(e.total_active_users);
      $('users-online-detail').textContent = `${e.user.name} went offline`;
      addFeedItem('feed-users', 'offline', [el('span', 'badge offline', 'offline'), ` ${e.user.name} · ${e.total_active_users} active`], e.timestamp);
    },
  });

  // -- private-admin-orders: order.new ---------------------------------------------------------------------------
  privateChannel('admin-orders', {
    'order.new': (e) => {
      $('orders-today').textContent = String(e.today_order_count);
      $('orders-today-detail').textContent = `last: ${e.order.number}`;
      addFeedItem('feed-orders', 'order', [el('b', null, e.order.number), ` · ${e.order.items_count} item${e.order.items_count === 1 ? '' : 's'} · ${money(e.order.total, e.order.currency)}`], e.timestamp);
    },
  });

  // -- private-admin-payments: payment.processed -----------------------------------------------------------------
  privateChannel('admin-payments', {
    'payment.processed': (e) => {
      const p = e.payment;
      const ok = p.status === 'success';
      bump(ok ? 'payments-success' : 'payments-failed');
      const parts = [el('span', `badge ${ok ? 'success' : 'failed'}`, ok ? 'success' : 'failed'), ` ${money(p.amount, p.currency)} · order ${p.order_id} · ${p.method.replace('_', ' ')}`];
      if (!ok && p.failure_reason) parts.push(el('span', 'reason', ` ${p.failure_reason.replace(/_/g, ' ')}`));
      addFeedItem('feed-payments', ok ? 'success' : 'failed', parts, e.timestamp);
    },
  });

  // -- private-admin-inventory: stock.alert ----------------------------------------------------------------------
  const STOCK_LABEL = { low_stock: 'low stock', out_of_stock: 'out of stock', restock: 'restocked' };
  privateChannel('admin-inventory', {
    'stock.alert': (e) => {
      bump('stock-alerts');
      if ($(`stock-${e.alert_type}`)) bump(`stock-${e.alert_type}`);
      addFeedItem('feed-stock', e.alert_type, [el('span', `badge ${e.alert_type}`, STOCK_LABEL[e.alert_type] || e.alert_type), ` ${e.product.name} · ${e.current_stock} in stock (threshold ${e.threshold})`], e.timestamp);
    },
  });

  // -- private-admin-system: system.alert ------------------------------------------------------------------------
  privateChannel('admin-system', {
    'system.alert': (e) => {
      bump('system-alerts');
      if ($(`severity-${e.severity}`)) bump(`severity-${e.severity}`);
      addFeedItem('feed-system', `sev-${e.severity}`, [el('span', `badge sev-${e.severity}`, e.severity), ` ${e.type}: `, el('b', null, e.title), ` · ${e.message}`], e.timestamp);
    },
  });

  // -- private-admin-notifications: admin.notification -----------------------------------------------------------
  privateChannel('admin-notifications', {
    'admin.notification': (e) => {
      addFeedItem('feed-notifications', e.level, [el('span', `badge ${e.level}`, e.level), ' ', el('b', null, e.title), ` · ${e.message}`], e.timestamp);
    },
  });

  // -- presence-admin-presence: which admins are online ----------------------------------------------------------
  let admins = new Map();
  function renderAdmins() {
    const list = $('admins-online');
    list.replaceChildren();
    const sorted = [...admins.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)));
    for (const u of sorted) {
      const li = el('li', 'admin', u.name);
      li.dataset.userId = String(u.id);
      if (String(u.id) === String(page.user.id)) li.append(el('span', 'you', ' (you)'));
      list.append(li);
    }
    state.admins = sorted.map((u) => u.name);
    $('admins-count').textContent = String(sorted.length);
  }
  channelChip('presence-admin-presence');
  echo
    .join('admin-presence')
    .here((users) => {
      subscribedTo('presence-admin-presence');
      admins = new Map(users.map((u) => [String(u.id), u]));
      renderAdmins();
    })
    .joining((u) => {
      admins.set(String(u.id), u);
      renderAdmins();
    })
    .leaving((u) => {
      admins.delete(String(u.id));
      renderAdmins();
    })
    .error((e) => refused('presence-admin-presence', e));

  // -- presence-user-presence: every logged-in user (shoppers and staff) -----------------------------------------
  // A large presence channel at Herald (docs/presence.md §12): the app signs admins in with "watcher": true, and
  // only watchers get the member list (here) and the joins and leaves (joining / leaving, in 250 ms bursts). Any
  // other member's here() lists itself alone; it gets the count from the subscription and then as
  // pusher:subscription_count, at most once a second. With thousands online the page keeps the members in a Map
  // (for the count) and shows only the last ACTIVITY_LENGTH joins and leaves: one frame's worth of changes is
  // drawn at a time, however many arrive.
  const ACTIVITY_LENGTH = 20;
  const presence = (state.userPresence = { watcher: null, count: null, joins: 0, leaves: 0 });
  let members = new Map(); // id -> user_info, watchers only
  let fresh = []; // joins and leaves not drawn yet, oldest first
  let drawScheduled = false;
  const userPresenceChannel = () => echo.connector.pusher.channel('presence-user-presence');
  function draw() {
    drawScheduled = false;
    const n = presence.count;
    $('online-count').textContent = n == null ? '–' : n.toLocaleString('en-US');
    $('online-count').dataset.count = n == null ? '' : String(n);
    $('user-presence-count').textContent = n == null ? '–' : String(n);
    const list = $('presence-activity');
    for (const e of fresh.slice(-ACTIVITY_LENGTH)) {
      const joined = e.kind === 'join';
      const li = el('li', `item ${joined ? 'online' : 'offline'}`);
      li.dataset.kind = e.kind;
      li.dataset.userId = String(e.id);
      li.dataset.at = e.at;
      li.append(el('time', 'at', clock(e.at)), el('span', `badge ${joined ? 'online' : 'offline'}`, joined ? 'joined' : 'left'), ' ', el('span', 'name', e.name));
      list.prepend(li);
    }
    fresh = [];
    while (list.children.length > ACTIVITY_LENGTH) list.lastElementChild.remove();
  }
  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    requestAnimationFrame(draw);
  }
  function memberChanged(kind, u) {
    if (kind === 'join') {
      members.set(String(u.id), u);
      presence.joins += 1;
    } else {
      members.delete(String(u.id));
      presence.leaves += 1;
    }
    presence.count = members.size;
    fresh.push({ kind, id: u.id, name: u.name ?? String(u.id), at: new Date().toISOString() });
    if (fresh.length > 2 * ACTIVITY_LENGTH) fresh.splice(0, fresh.length - ACTIVITY_LENGTH);
    scheduleDraw();
  }
  channelChip('presence-user-presence');
  echo
    .join('user-presence')
    .here((users) => {
      subscribedTo('presence-user-presence');
      const me = users.find((u) => String(u.id) === String(page.user.id));
      presence.watcher = Boolean(me && me.watcher);
      members = new Map(users.map((u) => [String(u.id), u]));
      // A watcher counts its list; anyone else has itself alone, and the channel's true count in members.count.
      presence.count = presence.watcher ? members.size : userPresenceChannel().members.count;
      $('online-detail').textContent = presence.watcher
        ? 'members of presence-user-presence: you watch it, Herald sends you every join and leave'
        : 'members of presence-user-presence: as a counted member you get the count (pusher:subscription_count), not the list';
      if (!presence.watcher) {
        $('presence-activity-note').hidden = false;
        $('presence-activity-note').textContent = 'Only watchers (the admins) hear who joins and leaves.';
      }
      scheduleDraw();
    })
    .joining((u) => memberChanged('join', u))
    .leaving((u) => memberChanged('leave', u))
    .listen('.pusher:subscription_count', (e) => {
      presence.subscriptionCount = e.subscription_count;
      if (presence.watcher === false) {
        presence.count = e.subscription_count;
        scheduleDraw();
      }
    })
    .error((e) => refused('presence-user-presence', e));
})();
