'use strict';
// History channels (docs/protocol.md, "History channels"): an app's `history` rules keep the last N events of the
// channels with a prefix, at most T seconds old (in memory standalone, in the event stream in a cluster). Each case
// runs against standalone and against a cluster of two gateways and an ingest on a real nats-server:
// - a new subscriber gets the retained events right after pusher_internal:subscription_succeeded, oldest first,
//   each with an `id` that grows, then the live ones (with larger ids); a second subscribe gets them again;
// - laravel-echo's listen() receives the retained events of a private channel like live ones;
// - GET /apps/{id}/channels/{name}/events (signed) lists them, `after_id` gives only the newer ones; another
//   channel is a 404, a bad id a 400;
// - events older than the rule's seconds are not shown, and client events are not kept.
const h = require('./harness');
const ch = require('./cluster-harness');
const { assert } = h;

const HISTORY = [
  { prefix: 'history-', events: 3, seconds: 600 },
  { prefix: 'private-history-', events: 5, seconds: 600 },
  { prefix: 'brief-', events: 10, seconds: 1 },
];
const APP = { ...h.APP, client_events: true, history: HISTORY };

/** {subscribe: node for sockets, api: node for the HTTP API, auth: node whose app signs} per deployment. */
const deployments = {
  standalone: async () => {
    const server = await h.startHerald({ app: APP });
    return { socket: server, api: server };
  },
  cluster: async () => {
    const cluster = await ch.startCluster({ gateways: 2, app: APP });
    return { socket: cluster.gateways[1], api: cluster.ingest, other: cluster.gateways[0] };
  },
};

const events = (c, event) => c.messages.filter((m) => m.event === event);

for (const [kind, deploy] of Object.entries(deployments)) {
  ch.test(`${kind}: a new subscriber gets the last N events after subscription_succeeded, oldest first, each with a growing id; then live ones`, async () => {
    const d = await deploy();
    const sdk = d.api.sdk();
    // a subscriber elsewhere first (in a cluster: the other gateway), so the channel is live somewhere
    if (d.other) await (await h.rawConnected(d.other)).subscribeOk('history-orders');
    for (let n = 1; n <= 5; n++) await sdk.trigger('history-orders', 'order', { n });
    const c = await h.rawConnected(d.socket);
    const ok = await c.subscribeOk('history-orders');
    const retained = [];
    for (let i = 0; i < 3; i++) retained.push(await c.next({ event: 'order', channel: 'history-orders' }, 5000, `retained event ${i + 1}`));
    assert.equal(c.messages.indexOf(retained[0]), c.messages.indexOf(ok) + 1, 'right after subscription_succeeded');
    assert.deepEqual(retained.map((m) => m.data.n), [3, 4, 5], 'the last 3, oldest first');
    const ids = retained.map((m) => m.id);
    assert.ok(ids.every((id, i) => Number.isInteger(id) && (i === 0 || id > ids[i - 1])), `growing ids: ${ids}`);
    await c.expectNoMessage({ event: 'order' }, 300, 'a fourth retained event');

    // a live event carries an id above them
    await sdk.trigger('history-orders', 'order', { n: 6 });
    const live = await c.next((m) => m.event === 'order' && m.data.n === 6, 5000, 'the live event');
    assert.ok(live.id > ids[2], `live id ${live.id} after ${ids[2]}`);

    // subscribing again (a reconnect) shows the last 3 again, with the same ids: the app can tell them apart
    const again = await h.rawConnected(d.socket);
    await again.subscribeOk('history-orders');
    await h.waitFor(() => events(again, 'order').length >= 3, 5000, 'the retained events again');
    assert.deepEqual(events(again, 'order').map((m) => [m.data.n, m.id]), [[4, ids[1]], [5, ids[2]], [6, live.id]]);
  });

  ch.test(`${kind}: laravel-echo listen() receives a private history channel's retained events`, async () => {
    const d = await deploy();
    const sdk = d.api.sdk();
    for (let n = 1; n <= 7; n++) await sdk.trigger('private-history-stock', 'StockAlert', { n });
    const auth = await h.startAuthServer(d.api);
    const echo = await h.echoClient(d.socket, auth, 1);
    const got = [];
    const channel = echo.private('history-stock').listen('.StockAlert', (e) => got.push(e.n));
    await h.echoSubscribed(channel);
    await h.waitFor(() => got.length >= 5, 5000, `5 retained events through Echo (got ${got})`);
    assert.deepEqual(got, [3, 4, 5, 6, 7]);
  });

  ch.test(`${kind}: GET /channels/{name}/events lists the retained events; after_id gives the newer ones`, async () => {
    const d = await deploy();
    const sdk = d.api.sdk();
    for (let n = 1; n <= 4; n++) await sdk.trigger('history-api', 'tick', { n });
    const list = async (params) => (await (await sdk.get({ path: '/channels/history-api/events', params })).json()).events;
    const all = await list({});
    assert.deepEqual(all.map((e) => [e.name, e.channel, JSON.parse(e.data).n]), [['tick', 'history-api', 2], ['tick', 'history-api', 3], ['tick', 'history-api', 4]]);
    assert.deepEqual((await list({ after_id: all[0].id })).map((e) => JSON.parse(e.data).n), [3, 4]);
    assert.deepEqual(await list({ after_id: all[2].id }), []);
    const status = (path, params) => sdk.get({ path, params }).then((r) => r.status, (e) => e.status);
    assert.equal(await status('/channels/orders/events', {}), 404, 'not a history channel');
    assert.equal(await status('/channels/history-api/events', { after_id: 'x' }), 400, 'a bad after_id');
  });

  ch.test(`${kind}: events older than the rule's seconds are not shown, and client events are not kept`, async () => {
    const d = await deploy();
    const sdk = d.api.sdk();
    await sdk.trigger('brief-news', 'headline', { n: 1 });
    await h.sleep(1500);
    await sdk.trigger('brief-news', 'headline', { n: 2 });
    const c = await h.rawConnected(d.socket);
    await c.subscribeOk('brief-news');
    assert.equal((await c.next({ event: 'headline' }, 5000, 'the young event')).data.n, 2);
    await c.expectNoMessage({ event: 'headline' }, 300, 'the expired event');

    // a whisper on a private history channel reaches the others live, and is not shown to later subscribers
    const auth = await h.startAuthServer(d.api);
    const a = await h.echoClient(d.socket, auth, 1);
    const b = await h.echoClient(d.socket, auth, 2);
    const heard = new Promise((resolve) => b.private('history-chat').listenForWhisper('typing', resolve));
    await h.echoSubscribed(a.private('history-chat'));
    await h.echoSubscribed(b.private('history-chat'));
    a.private('history-chat').whisper('typing', { who: 'a' });
    assert.deepEqual(await h.withTimeout(heard, 5000, 'the whisper'), { who: 'a' });
    await sdk.trigger('private-history-chat', 'message', { text: 'hi' });
    const later = await h.rawConnected(d.socket);
    await later.subscribeOk('private-history-chat', { auth: h.channelAuth(d.api.app, later.id, 'private-history-chat') });
    await h.waitFor(() => events(later, 'message').length >= 1, 5000, 'the retained message');
    await later.expectNoMessage({ event: 'client-typing' }, 300, 'a retained whisper');
  });
}
