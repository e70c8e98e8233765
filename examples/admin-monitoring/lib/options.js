'use strict';
// Command-line flags with environment fallbacks: `--name value`, `--name=value`, or the variable ENV_NAME.

const OPTIONS = {
  host: { env: 'HOST', default: '127.0.0.1', help: 'address the dashboard/auth server listens on' },
  port: { env: 'PORT', default: 8080, int: true, help: 'dashboard/auth server port (0 = any free port)' },
  'herald-host': { env: 'HERALD_HOST', default: '127.0.0.1', help: 'address Herald binds (an IP address)' },
  'herald-port': { env: 'HERALD_PORT', default: 6001, int: true, help: 'Herald WebSocket + HTTP API port (PUSHER_PORT)' },
  'metrics-port': { env: 'HERALD_METRICS_PORT', default: 9601, int: true, help: 'Herald /metrics, /readyz port' },
  rate: { env: 'SIM_RATE', default: 2, num: true, help: 'simulated events per second (0 = simulator off)' },
  mix: {
    env: 'SIM_MIX',
    default: 'users=3,orders=3,payments=3,stock=2,system=1,notifications=1',
    help: 'relative weights of the event kinds',
  },
  'min-users': { env: 'SIM_MIN_USERS', default: 2, int: true, help: 'simulated shoppers kept on presence-user-presence, at least' },
  'max-users': { env: 'SIM_MAX_USERS', default: 8, int: true, help: '... and at most' },
  online: {
    env: 'SIM_ONLINE',
    default: 0,
    int: true,
    help: 'a store of N shoppers online: N join at start, 100 at a time, then they churn (sets --min-users and --max-users to N; 0 = off)',
  },
  'payment-failure-rate': { env: 'SIM_PAYMENT_FAILURE_RATE', default: 0.25, num: true, help: 'share of payments that fail (0..1)' },
  seed: { env: 'SIM_SEED', default: 0, int: true, help: 'random seed (0 = a new one each run)' },
  'herald-url': { env: 'HERALD_URL', default: '', help: 'simulator.js only: Herald to trigger on, e.g. http://127.0.0.1:6001' },
  'auth-url': { env: 'AUTH_URL', default: '', help: 'simulator.js only: the app\'s /broadcasting/auth for the shopper sockets' },
  quiet: { env: 'QUIET', default: false, bool: true, help: 'do not echo Herald\'s log and every simulated event' },
  help: { default: false, bool: true, help: 'print this help' },
};

function parseOptions(argv = process.argv.slice(2), env = process.env, only = Object.keys(OPTIONS)) {
  const out = {};
  const given = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h') {
      given.help = 'true';
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !only.includes(m[1])) throw new Error(`unknown argument ${arg} (try --help)`);
    const spec = OPTIONS[m[1]];
    if (m[2] !== undefined) given[m[1]] = m[2];
    else if (spec.bool) given[m[1]] = 'true';
    else if (i + 1 < argv.length) given[m[1]] = argv[++i];
    else throw new Error(`${arg} needs a value`);
  }
  for (const name of only) {
    const spec = OPTIONS[name];
    let raw = given[name] ?? (spec.env ? env[spec.env] : undefined);
    const key = name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (raw === undefined || raw === '') {
      out[key] = spec.default;
      continue;
    }
    if (spec.bool) out[key] = !/^(0|false|no|off)$/i.test(raw);
    else if (spec.int || spec.num) {
      const n = Number(raw);
      if (!Number.isFinite(n) || n < 0 || (spec.int && !Number.isInteger(n))) {
        throw new Error(`--${name} / ${spec.env}: expected a ${spec.int ? 'whole ' : ''}number >= 0, got ${JSON.stringify(raw)}`);
      }
      out[key] = n;
    } else out[key] = raw;
  }
  return out;
}

function usage(command, only = Object.keys(OPTIONS)) {
  const lines = [`usage: ${command} [options]`, ''];
  for (const name of only) {
    const spec = OPTIONS[name];
    const flag = `--${name}${spec.bool ? '' : ' V'}`;
    const env = spec.env ? ` [${spec.env}]` : '';
    const def = spec.bool ? '' : ` (default ${JSON.stringify(spec.default)})`;
    lines.push(`  ${flag.padEnd(28)} ${spec.help}${env}${def}`);
  }
  return lines.join('\n');
}

/** "users=3,orders=1" -> {users: 3, orders: 1}; unknown kinds and bad weights are errors. */
function parseMix(text, kinds) {
  const mix = Object.fromEntries(kinds.map((k) => [k, 0]));
  for (const part of String(text).split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([a-z]+)=(\d+(?:\.\d+)?)$/.exec(part);
    if (!m || !kinds.includes(m[1])) throw new Error(`--mix: bad entry ${JSON.stringify(part)}; expected KIND=WEIGHT with KIND one of ${kinds.join(', ')}`);
    mix[m[1]] = Number(m[2]);
  }
  if (!Object.values(mix).some((w) => w > 0)) throw new Error('--mix: every weight is 0');
  return mix;
}

module.exports = { OPTIONS, parseOptions, usage, parseMix };
