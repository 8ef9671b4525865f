// Browser SDK driver for tests/it/browser.rs: bundles each test page in sdk-pages/ with
// esbuild, serves it from a tiny static server on 127.0.0.1 (another origin than Keel, so
// CORS is real), and drives headless Debian Chromium through playwright-core. Per SDK:
//
//   visitor "user" (one browser context):
//     load → identify → track seq 1, 2, 3 → page,
//       (Keel's answer to seq 2's first request is replaced by a 503 after Keel stored it:
//       the SDK's own retry queue must send it again and Keel must drop the repeat),
//     reload → the same anonymousId and userId → track seq 4,
//     load in `unload` mode → track seq 5, which the SDK holds until the page is left and
//       then sends with navigator.sendBeacon (RudderStack) / a keepalive fetch (Segment);
//   visitor "anon" (a fresh context, never identified): load → page seq 1,
//     reload → the same anonymousId → track seq 2.
//
// Each call waits for Keel's answer to the previous one, so the send order is the order of
// the sequence numbers. The SDKs and their transports are not modified; an init script only
// notes (in localStorage) the sendBeacon / keepalive calls, which Playwright cannot see
// because they start while the page is being left.
//
// Fails (exit 1) on any console error or page error (but the one 503 it injects), on any
// request to a host other than Keel and the page server, and when an SDK reports another
// anonymousId after a reload. Prints one JSON line on stdout: per SDK and visitor the ids,
// every event the SDKs put on the wire (messageId, type, event, seq, path, transport; not
// the event inside RudderStack's beacon, whose Blob body cannot be read while the page is
// being left), the injected retry, and the unload transport calls; screenshots and a log of
// every request and console message (browser.log) go to the output folder.
//
// Usage: node sdk.mjs KEEL_URL WRITE_KEY OUT_DIR
// Environment: KEEL_BROWSER_SDKS=rudderstack,segment  KEEL_CHROMIUM=/usr/bin/chromium
//              KEEL_BROWSER_MODULES=<node_modules with playwright-core, esbuild and the SDKs>

import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const NODE_MODULES =
  process.env.KEEL_BROWSER_MODULES ?? path.join(ROOT, '.cache/browser/node_modules');
const CHROMIUM = process.env.KEEL_CHROMIUM ?? '/usr/bin/chromium';
const require = createRequire(path.join(NODE_MODULES, 'resolve-from-here.js'));
const { chromium } = require('playwright-core');
const esbuild = require('esbuild');

const [keelUrl, writeKey, outDir] = process.argv.slice(2);
if (!keelUrl || !writeKey || !outDir) {
  console.error('usage: node sdk.mjs KEEL_URL WRITE_KEY OUT_DIR');
  process.exit(2);
}
const SDKS = (process.env.KEEL_BROWSER_SDKS ?? 'rudderstack,segment').split(',');
const STEP_TIMEOUT_MS = 15_000;
const TRANSPORT_KEY = 'keelTestTransport';
fs.mkdirSync(outDir, { recursive: true });
const keelOrigin = new URL(keelUrl).origin;
const logLines = [];
const log = (line) => {
  logLines.push(`${new Date().toISOString()} ${line}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- pages ------------------------------------------------------------------------------

async function bundle(sdk) {
  const result = await esbuild.build({
    entryPoints: [path.join(HERE, 'sdk-pages', `${sdk}.js`)],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'chrome120',
    nodePaths: [NODE_MODULES],
    define: { 'process.env.NODE_ENV': '"production"' },
    write: false,
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

function html(sdk, mode) {
  const cfg = JSON.stringify({ keelUrl, writeKey, mode }).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Keel ${sdk} test (${mode})</title>
<link rel="icon" href="data:,">
<script>window.KEEL_TEST = ${cfg};</script>
</head><body><h1>Keel browser SDK test</h1><p id="status">loading</p>
<script src="/${sdk}.js"></script></body></html>`;
}

const DONE_HTML = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>left</title>
<link rel="icon" href="data:,"></head><body>left the page</body></html>`;

async function startPageServer() {
  const bundles = {};
  for (const sdk of SDKS) bundles[sdk] = await bundle(sdk);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://page');
    const m = url.pathname.match(/^\/(\w+)\.(html|js)$/);
    if (url.pathname === '/done.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(DONE_HTML);
    } else if (m && bundles[m[1]] !== undefined && m[2] === 'js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(bundles[m[1]]);
    } else if (m && bundles[m[1]] !== undefined) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html(m[1], url.searchParams.get('mode') ?? 'xhr'));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/**
 * Runs in every page before its scripts: notes each sendBeacon call and each keepalive
 * fetch (what they were given and what sendBeacon returned) in localStorage, where the
 * driver reads them after the page is gone. The calls themselves go through unchanged.
 */
function transportRecorder(key) {
  let leaving = false;
  addEventListener('pagehide', () => {
    leaving = true;
  });
  const note = (entry) => {
    try {
      const list = JSON.parse(localStorage.getItem(key) || '[]');
      list.push({ ...entry, page: location.pathname + location.search, leaving });
      localStorage.setItem(key, JSON.stringify(list));
    } catch {
      // Storage full or blocked: the driver reports the call as missing.
    }
  };
  const beacon = navigator.sendBeacon && navigator.sendBeacon.bind(navigator);
  if (beacon) {
    navigator.sendBeacon = function sendBeacon(url, data) {
      const ok = beacon(url, data);
      note({ api: 'sendBeacon', url: String(url), contentType: data && data.type, bytes: data && (data.size ?? data.length), ok });
      return ok;
    };
  }
  const fetch = window.fetch;
  window.fetch = function keelTestFetch(input, init) {
    if (init && init.keepalive) {
      const headers = new Headers(init.headers || {});
      note({
        api: 'fetch',
        keepalive: true,
        url: String(input && input.url ? input.url : input),
        contentType: headers.get('content-type'),
        body: typeof init.body === 'string' ? init.body : null,
      });
    }
    return fetch.apply(this, arguments);
  };
}

// ---- watching the wire ------------------------------------------------------------------

/** Events in a request body the SDKs send to Keel (one event, or `{batch: [...]}`). */
function eventsOf(body) {
  if (!body) return [];
  try {
    const json = JSON.parse(body);
    return Array.isArray(json.batch) ? json.batch : [json];
  } catch {
    return [];
  }
}

function describe(e, url, transport) {
  return {
    messageId: e.messageId ?? null,
    type: e.type,
    event: e.event ?? null,
    name: e.name ?? null,
    seq: e.properties?.seq ?? null,
    userId: e.userId || null,
    anonymousId: e.anonymousId ?? null,
    path: new URL(url).pathname,
    transport,
  };
}

/** Watches one browser context: requests to Keel, stray hosts, console and page errors. */
class Watch {
  constructor(sdk, visitor, pageOrigin) {
    this.sdk = sdk;
    this.visitor = visitor;
    this.pageOrigin = pageOrigin;
    this.problems = [];
    this.attempts = []; // every event in every request to Keel, retries included
    this.acked = new Set(); // messageIds in requests Keel answered 2xx
    this.allowedErrors = []; // console errors the driver caused on purpose (regexps)
  }

  tag(what) {
    return `${this.sdk}/${this.visitor} ${what}`;
  }

  attach(context) {
    context.on('request', (req) => this.onRequest(req));
    context.on('requestfinished', async (req) => {
      const res = await req.response().catch(() => null);
      const status = res ? res.status() : 0;
      log(this.tag(`answer ${req.method()} ${req.url()} ${status}`));
      if (status >= 200 && status < 300 && req.method() === 'POST' && req.url().startsWith(keelOrigin)) {
        for (const e of eventsOf(req.postData())) if (e.messageId) this.acked.add(e.messageId);
      }
    });
    context.on('requestfailed', (req) => {
      log(this.tag(`failed ${req.method()} ${req.url()} ${req.failure()?.errorText}`));
    });
  }

  watchPage(page) {
    page.on('console', (msg) => {
      const text = `${msg.type()}: ${msg.text()}`;
      log(this.tag(`console ${text}`));
      if (msg.type() !== 'error') return;
      const i = this.allowedErrors.findIndex((re) => re.test(msg.text()));
      if (i >= 0) this.allowedErrors.splice(i, 1);
      else this.problems.push(`console ${text}`);
    });
    page.on('pageerror', (err) => {
      log(this.tag(`pageerror ${err.stack ?? err}`));
      this.problems.push(`page error: ${err.message}`);
    });
  }

  onRequest(req) {
    const url = req.url();
    const origin = url.startsWith('data:') ? 'data:' : new URL(url).origin;
    const body = req.postData();
    log(this.tag(`request ${req.resourceType()} ${req.method()} ${url} ${JSON.stringify(req.headers())} ${body ?? ''}`));
    if (origin !== keelOrigin && origin !== this.pageOrigin && origin !== 'data:') {
      this.problems.push(`request to a host other than Keel and the page: ${req.method()} ${url}`);
    }
    if (origin !== keelOrigin || req.method() !== 'POST') return;
    for (const e of eventsOf(body)) this.attempts.push(describe(e, url, req.resourceType()));
  }

  /** The events sent, each once (a retry repeats its messageId), in the order first sent. */
  sent() {
    const seen = new Set();
    return this.attempts.filter((e) => !seen.has(e.messageId) && seen.add(e.messageId));
  }

  /** Waits until `count` distinct events were acknowledged by Keel. */
  async waitAcked(count, what) {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const acked = this.sent().filter((e) => this.acked.has(e.messageId)).length;
      if (acked >= count) return;
      if (Date.now() > deadline) {
        throw new Error(this.tag(`${what}: ${acked} of ${count} events acknowledged by Keel`));
      }
      await sleep(25);
    }
  }
}

// ---- the scenario -----------------------------------------------------------------------

async function newVisitor(browser, sdk, visitor, pageOrigin) {
  const watch = new Watch(sdk, visitor, pageOrigin);
  const context = await browser.newContext();
  await context.addInitScript(transportRecorder, TRANSPORT_KEY);
  watch.attach(context);
  const page = await context.newPage();
  watch.watchPage(page);
  return { watch, context, page };
}

async function load(page, pageOrigin, sdk, mode, reload = false) {
  if (reload) await page.reload();
  else await page.goto(`${pageOrigin}/${sdk}.html?mode=${mode}`);
  await page.evaluate(() => window.keelTest.ready);
  return page.evaluate(() => window.keelTest.anonymousId());
}

/** Calls `keelTest[method](...args)` in the page and waits for Keel to acknowledge it. */
async function step(watch, page, method, args) {
  const before = watch.sent().length;
  await page.evaluate(([m, a]) => window.keelTest[m](...a), [method, args]);
  await watch.waitAcked(before + 1, `${method} ${JSON.stringify(args)}`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
}

/**
 * Keel stores the first request carrying a track with `properties.seq === seq`, but the
 * browser is told 503 (Keel's own error shape and headers): the SDK's retry queue must
 * send the event again. Returns what happened, for the summary.
 */
async function loseFirstAnswer(context, watch, seq) {
  const lost = { seq, stored: null, messageId: null };
  const handler = async (route) => {
    const req = route.request();
    const mine = req.method() === 'POST' && eventsOf(req.postData()).some((e) => e.properties?.seq === seq);
    if (!mine || lost.stored !== null) return route.fallback();
    const res = await route.fetch();
    lost.stored = res.status();
    lost.messageId = eventsOf(req.postData())[0]?.messageId ?? null;
    watch.allowedErrors.push(/status of 503/);
    log(watch.tag(`answered 503 instead of Keel's ${lost.stored} to ${req.url()}`));
    await route.fulfill({
      status: 503,
      headers: { ...res.headers(), 'retry-after': '1', 'content-type': 'application/json' },
      body: JSON.stringify({
        error: 'event storage did not confirm the write (injected by the browser test)',
        code: 'storage_unavailable',
      }),
    });
  };
  await context.route(`${keelOrigin}/v1/**`, handler);
  return { lost, stop: () => context.unroute(`${keelOrigin}/v1/**`, handler) };
}

async function readTransport(page) {
  return page.evaluate((key) => JSON.parse(localStorage.getItem(key) || '[]'), TRANSPORT_KEY);
}

async function runUser(browser, pageOrigin, sdk, runId) {
  const { watch, context, page } = await newVisitor(browser, sdk, 'user', pageOrigin);
  const userId = `${runId}-${sdk}-user`;
  const out = { userId };

  out.anonymousId = await load(page, pageOrigin, sdk, 'xhr');
  const retry = await loseFirstAnswer(context, watch, 2);
  await step(watch, page, 'identify', [userId, { email: `${userId}@example.com`, plan: 'pro' }]);
  for (const seq of [1, 2, 3]) await step(watch, page, 'track', ['Step Completed', { seq }]);
  await step(watch, page, 'page', ['Pricing', { seq: 'page' }]);
  await retry.stop();
  out.retry = { ...retry.lost, attempts: watch.attempts.filter((e) => e.seq === 2).length };
  if (retry.lost.stored !== 200) watch.problems.push(`seq 2's first request was not stored: ${retry.lost.stored}`);
  if (out.retry.attempts < 2) watch.problems.push('the SDK did not send seq 2 again after the 503');
  await shot(page, `${sdk}-user-1-load`);

  const anonAfterReload = await load(page, pageOrigin, sdk, 'xhr', true);
  const userAfterReload = await page.evaluate(() => window.keelTest.userId());
  if (anonAfterReload !== out.anonymousId) {
    watch.problems.push(`anonymousId changed across the reload: ${out.anonymousId} → ${anonAfterReload}`);
  }
  if (userAfterReload !== userId) watch.problems.push(`userId not kept across the reload: ${userAfterReload}`);
  await step(watch, page, 'track', ['Step Completed', { seq: 4 }]);
  await shot(page, `${sdk}-user-2-reload`);

  const anonUnloadPage = await load(page, pageOrigin, sdk, 'unload');
  if (anonUnloadPage !== out.anonymousId) {
    watch.problems.push(`anonymousId changed on the next page: ${out.anonymousId} → ${anonUnloadPage}`);
  }
  const held = watch.sent().length;
  await page.evaluate(() => window.keelTest.track('Page Left', { seq: 5 }));
  await shot(page, `${sdk}-user-3-unload`);
  await sleep(300);
  if (watch.sent().length !== held) watch.problems.push('the unload event left before the page did');
  // Leaving hides the page: the SDK sends what it holds (sendBeacon / keepalive fetch).
  await page.goto(`${pageOrigin}/done.html`);
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let transport = [];
  while (Date.now() < deadline) {
    transport = (await readTransport(page)).filter((t) => t.page.includes('mode=unload') && t.leaving);
    if (transport.length) break;
    await sleep(50);
  }
  out.unload = transport;
  for (const t of transport) {
    for (const e of eventsOf(t.body)) watch.attempts.push(describe(e, t.url, `${t.api}-keepalive`));
  }
  if (!transport.length) watch.problems.push('no sendBeacon or keepalive fetch when the page was left');
  if (transport.some((t) => t.api === 'sendBeacon' && !t.ok)) {
    watch.problems.push(`sendBeacon refused: ${JSON.stringify(transport)}`);
  }
  await context.close();
  return { watch, out };
}

async function runAnon(browser, pageOrigin, sdk) {
  const { watch, context, page } = await newVisitor(browser, sdk, 'anon', pageOrigin);
  const out = { userId: null };
  out.anonymousId = await load(page, pageOrigin, sdk, 'xhr');
  await step(watch, page, 'page', ['Landing', { seq: 1 }]);
  const anonAfterReload = await load(page, pageOrigin, sdk, 'xhr', true);
  if (anonAfterReload !== out.anonymousId) {
    watch.problems.push(`anonymousId changed across the reload: ${out.anonymousId} → ${anonAfterReload}`);
  }
  await step(watch, page, 'track', ['Came Back', { seq: 2 }]);
  await shot(page, `${sdk}-anon`);
  await context.close();
  return { watch, out };
}

async function main() {
  const runId = `r${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const { server, origin: pageOrigin } = await startPageServer();
  log(`page server ${pageOrigin}, keel ${keelUrl}, chromium ${CHROMIUM}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  const summary = { runId, pageOrigin, browser: browser.version(), sdks: {} };
  const problems = [];
  try {
    for (const sdk of SDKS) {
      const started = Date.now();
      const visitors = {};
      for (const [name, run] of [
        ['user', () => runUser(browser, pageOrigin, sdk, runId)],
        ['anon', () => runAnon(browser, pageOrigin, sdk)],
      ]) {
        let result;
        try {
          result = await run();
        } catch (err) {
          problems.push(`${sdk}/${name}: ${err.stack ?? err}`);
          continue;
        }
        const { watch, out } = result;
        problems.push(...watch.problems.map((p) => `${sdk}/${name}: ${p}`));
        visitors[name] = { ...out, sent: watch.sent() };
      }
      summary.sdks[sdk] = { visitors, ms: Date.now() - started };
    }
  } finally {
    await browser.close().catch(() => {});
    server.close();
    fs.writeFileSync(path.join(outDir, 'browser.log'), logLines.join('\n') + '\n');
  }
  summary.problems = problems;
  for (const p of problems) process.stderr.write(`[browser] PROBLEM ${p}\n`);
  process.stdout.write(JSON.stringify(summary) + '\n');
  process.exit(problems.length ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
