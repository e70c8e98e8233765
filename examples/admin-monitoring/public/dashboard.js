/* global Pusher, Echo */
// The admin dashboard: what a Laravel app's resources/js would do with laravel-echo, in plain browser JS.
// Everything shown comes from Herald over one WebSocket; payload text is only ever set with textContent.
(function () {
  'use strict';

  const page = JSON.parse(document.getElementById('page-config').textContent);
  const $ = (id) => document.getElementById(id);
  const FEED_LENGTH = 8;

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
  let userPresence = 0;
  const showUserPresence = () => ($('user-presence-count').textContent = String(userPresence));
  channelChip('presence-user-presence');
  echo
    .join('user-presence')
    .here((users) => {
      subscribedTo('presence-user-presence');
      userPresence = users.length;
      showUserPresence();
    })
    .joining(() => {
      userPresence += 1;
      showUserPresence();
    })
    .leaving(() => {
      userPresence = Math.max(0, userPresence - 1);
      showUserPresence();
    })
    .error((e) => refused('presence-user-presence', e));
})();
