#!/usr/bin/env node
// Send a fixed set of events to Keel through a real Node analytics SDK.
//
//   node tests/sdk/send_node.mjs --sdk segment --host http://127.0.0.1:8080 \
//       --write-key KEY --run-id r1 --burst 1000
//
// The SDKs are loaded from <repo>/.cache/sdk/node/node_modules (made by
// tests/sdk/setup.sh); KEEL_SDK_NODE_DIR overrides that directory.
//
// Sends identify, track, page, screen, group, alias and then --burst tracks, each with
// an explicit messageId "<run-id>-<sdk>-<kind>-<i>", flushes and closes the
// client, then prints one JSON line on stdout listing every message sent.
// Exits 1 if the SDK reported any delivery error (a per-message callback got
// an error, the error hook fired, or a message never got its callback), 2 on
// timeout or bad arguments. Diagnostics go to stderr.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const log = (msg) => process.stderr.write(`[send_node] ${msg}\n`);

// stdout carries exactly one JSON line: send anything an SDK logs through
// console.log/info/debug to stderr instead.
for (const m of ['log', 'info', 'debug']) console[m] = console.error;

function usage(msg) {
  log(msg);
  log('usage: send_node.mjs --sdk rudder|segment --host URL --write-key KEY --run-id ID [--burst N] [--timeout SECS]');
  process.exit(2);
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      sdk: { type: 'string' },
      host: { type: 'string' },
      'write-key': { type: 'string' },
      'run-id': { type: 'string' },
      burst: { type: 'string', default: '1000' },
      timeout: { type: 'string', default: '120' },
    },
    strict: true,
  }));
} catch (e) {
  usage(e.message);
}
for (const k of ['sdk', 'host', 'write-key', 'run-id']) {
  if (!opts[k]) usage(`missing --${k}`);
}
if (!['rudder', 'segment'].includes(opts.sdk)) usage(`--sdk must be rudder or segment, got ${opts.sdk}`);
const burst = Number.parseInt(opts.burst, 10);
if (!Number.isInteger(burst) || burst < 0) usage(`bad --burst ${opts.burst}`);
const timeoutSecs = Number.parseFloat(opts.timeout);
if (!(timeoutSecs > 0)) usage(`bad --timeout ${opts.timeout}`);

const sdk = opts.sdk;
const host = opts.host.replace(/\/+$/, '');
const writeKey = opts['write-key'];
const rid = opts['run-id'];

// ---- load the SDK from the cache directory ---------------------------------
const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.KEEL_SDK_NODE_DIR || path.resolve(here, '../../.cache/sdk/node');
const requireFromCache = createRequire(path.join(nodeDir, 'package.json'));
const pkgName = sdk === 'rudder' ? '@rudderstack/rudder-sdk-node' : '@segment/analytics-node';
let mod;
let sdkVersion;
try {
  mod = await import(pathToFileURL(requireFromCache.resolve(pkgName)).href);
  sdkVersion = requireFromCache(`${pkgName}/package.json`).version;
} catch (e) {
  log(`cannot load ${pkgName} from ${nodeDir} (run tests/sdk/setup.sh first): ${e.message}`);
  process.exit(2);
}

// ---- bookkeeping -------------------------------------------------------------
const sent = [];
const failedIds = new Set();
let errorEvents = 0;
let pending = 0;
let allDone;
const allDonePromise = new Promise((resolve) => { allDone = resolve; });

function callbackFor(messageId) {
  pending += 1;
  let called = false;
  return (err) => {
    if (called) return;
    called = true;
    if (err) {
      failedIds.add(messageId);
      log(`delivery error for ${messageId}: ${err && err.message ? err.message : err}`);
    }
    pending -= 1;
    if (pending === 0) allDone();
  };
}

const watchdog = setTimeout(() => {
  log(`timed out after ${timeoutSecs}s with ${pending} message(s) unacknowledged; exiting 2`);
  process.exit(2);
}, timeoutSecs * 1000);

// ---- client ------------------------------------------------------------------
let client;
if (sdk === 'rudder') {
  const Analytics = mod.default ?? mod;
  // dataPlaneUrl + default path '/v1/batch'; gzip is on by default (kept).
  // flushAt stays at its default (20); short flushInterval; 3 retries (default).
  client = new Analytics(writeKey, {
    dataPlaneUrl: host,
    flushInterval: 100,
    retryCount: 3,
    logLevel: 'error',
    errorHandler: (err) => {
      errorEvents += 1;
      log(`rudder errorHandler: ${err && err.message ? err.message : err}`);
    },
  });
} else {
  const { Analytics } = mod;
  // host + explicit default path '/v1/batch'. No gzip support in this SDK.
  // flushAt stays at its default (15); short flushInterval; 3 retries.
  client = new Analytics({
    writeKey,
    host,
    path: '/v1/batch',
    flushInterval: 100,
    maxRetries: 3,
  });
  client.on('error', (err) => {
    errorEvents += 1;
    const id = err && err.ctx && err.ctx.event ? err.ctx.event.messageId : undefined;
    if (id) failedIds.add(id);
    log(`segment 'error' event (${err && err.code}) for ${id}: ${err && err.reason}`);
  });
}
log(`${sdk} node SDK ${sdkVersion} -> ${host} (run ${rid}, burst ${burst})`);

// ---- messages ------------------------------------------------------------------
const mid = (kind, i = 0) => `${rid}-${sdk}-${kind}-${i}`;

function send(method, type, message) {
  sent.push({
    messageId: message.messageId,
    type,
    userId: message.userId,
    event: message.event ?? null,
  });
  client[method](message, callbackFor(message.messageId));
}

const user = `${rid}-u1`;
send('identify', 'identify', {
  userId: user,
  traits: { name: 'Ada Lovelace', email: `${rid}@example.com`, plan: 'pro' },
  messageId: mid('identify'),
});
send('track', 'track', {
  userId: user,
  event: 'Order Completed',
  properties: { revenue: 42.5, currency: 'EUR' },
  messageId: mid('track'),
});
send('page', 'page', {
  userId: user,
  name: 'Home',
  properties: { url: `https://keel.test/${rid}/home` },
  messageId: mid('page'),
});
send('screen', 'screen', {
  userId: user,
  name: 'Dashboard',
  properties: { tab: 'overview', visits: 3 },
  messageId: mid('screen'),
});
send('group', 'group', {
  userId: user,
  groupId: `${rid}-g1`,
  traits: { name: 'Acme Inc' },
  messageId: mid('group'),
});
send('alias', 'alias', {
  previousId: `${rid}-anon`,
  userId: user,
  messageId: mid('alias'),
});
// The Rudder SDK re-serialises its whole in-memory queue on every enqueue and,
// while one request is in flight, every further enqueue past flushAt queues
// another flush(); a purely synchronous loop of N calls is therefore O(N^2)
// and ends in ~N/20 simultaneous requests. Yield to it every RUDDER_PACE
// messages (awaiting a flush) so a large burst stays linear.
const RUDDER_PACE = 100;
for (let i = 0; i < burst; i += 1) {
  send('track', 'track', {
    userId: `${rid}-u${i % 10}`,
    event: 'Burst',
    properties: { i },
    messageId: mid('burst', i),
  });
  if (sdk === 'rudder' && (i + 1) % RUDDER_PACE === 0) {
    try {
      await client.flush();
    } catch (e) {
      log(`rudder flush() rejected: ${e && e.message ? e.message : e}`);
    }
  }
}

// ---- flush / close -------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (sdk === 'rudder') {
  // flush() sends at most flushAt messages per call, so keep calling it until
  // every message's callback has fired (success or failure).
  while (pending > 0) {
    try {
      await client.flush();
    } catch (e) {
      log(`rudder flush() rejected: ${e && e.message ? e.message : e}`);
    }
    if (pending > 0) await Promise.race([allDonePromise, sleep(50)]);
  }
} else {
  // closeAndFlush() resolves once every dispatched event has settled.
  await client.closeAndFlush({ timeout: timeoutSecs * 1000 });
  if (pending > 0) await Promise.race([allDonePromise, sleep(1000)]);
}
clearTimeout(watchdog);

if (pending > 0) log(`${pending} message(s) never got a delivery callback`);
const failed = failedIds.size + pending;
const line = JSON.stringify({
  sdk,
  language: 'node',
  sdkVersion,
  failed,
  sent,
});
const code = failed > 0 || errorEvents > 0 ? 1 : 0;
if (code) log(`FAILED: ${failed} message(s) not delivered, ${errorEvents} error event(s)`);
else log(`ok: ${sent.length} message(s) delivered`);
process.stdout.write(`${line}\n`, () => process.exit(code));
