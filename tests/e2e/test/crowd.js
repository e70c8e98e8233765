'use strict';
// Clients of a large presence channel (`large_presence_prefixes`, docs/presence.md §12), shared by
// presence-large.test.js (standalone) and cluster-presence-large.test.js: laravel-echo watchers and pusher-js
// shoppers, each signing its own channel auth in-test with the node's app secret.
const h = require('./harness');

const CHANNEL = 'presence-user-presence';

/**
 * laravel-echo on `node`, joined to `user-presence` as the watcher `id` (user_info {name, watcher: true}):
 * the members it knows of by name (kept from here / joining / leaving), and who joined and left, in order.
 */
async function watcher(node, id) {
  // the custom handler signs in-test; the auth endpoint Echo is given is never called
  const auth = h.customAuthOptions(node, id, { name: `admin ${id}`, watcher: true });
  const echo = await h.echoClient(node, { url: 'http://127.0.0.1:9' }, null, auth);
  const seen = { members: new Map(), joined: [], left: [] };
  await h.withTimeout(
    new Promise((resolve) => {
      echo
        .join('user-presence')
        .here((users) => {
          for (const u of users) seen.members.set(u.name, u);
          resolve();
        })
        .joining((u) => {
          seen.joined.push(u.name);
          seen.members.set(u.name, u);
        })
        .leaving((u) => {
          seen.left.push(u.name);
          seen.members.delete(u.name);
        });
    }),
    10000,
    `watcher ${id} here()`,
  );
  return seen;
}

/** pusher-js on `node`, joined as the counted shopper `id`, collecting what its channel hears. */
async function shopper(node, id) {
  const client = await h.connectedPusher(node, h.customAuthOptions(node, id, { name: `shopper ${id}` }));
  const channel = await h.subscribed(client, CHANNEL);
  return {
    client,
    channel,
    added: h.collect(channel, 'pusher:member_added'),
    removed: h.collect(channel, 'pusher:member_removed'),
    counts: h.collect(channel, 'pusher:subscription_count'),
  };
}

/**
 * The member count a shopper knows: the last pusher:subscription_count it was told, else the count of its
 * subscription_succeeded (a shopper that joined last may have nothing newer to hear).
 */
function knownCount(shopper) {
  return shopper.counts.length ? shopper.counts.at(-1).data.subscription_count : shopper.channel.members.count;
}

/** fn(0..n-1), `size` at a time. */
async function inBatches(n, size, fn) {
  const out = [];
  for (let i = 0; i < n; i += size) out.push(...(await Promise.all(Array.from({ length: Math.min(size, n - i) }, (_, k) => fn(i + k)))));
  return out;
}

module.exports = { CHANNEL, watcher, shopper, inBatches, knownCount };
