// Console driver for tests/it/console.rs: drives Keel's web console (/console) in headless
// Debian Chromium through playwright-core while the test sends real traffic, and checks
// what a person would see:
//
//   login     a wrong token is refused with a message; the right one opens Connections
//   pages     Connections (rates after two readings), Live events, Event explorer, Dead
//             letters, Transformations, Workspace: each loads with no console or page
//             error, is screenshotted into OUT_DIR/<page>.png and axe-core finds no
//             serious or critical accessibility violation on it
//   live      an event sent now shows within 2 s (measured); pause holds new rows until
//             resume; the event-name filter shows only matching events; no write key
//   explorer  the live event's messageId opens its path (accepted, routed, per destination)
//   dlq       the dead letters of one destination are listed; one is replayed selected,
//             the rest with "Replay all", each after the confirmation dialog; the result
//             is shown and the list empties
//   scripts   a transformation is edited, run on a pasted event (output and logs shown),
//             a throwing version shows its error, and the fixed one is saved
//   workspace a WEBHOOK destination is added with the form generated from its schema: a
//             bad URL shows the server's problem at the field with its JSON path, the good
//             one validates, the diff preview shows it, apply reloads; then an event is sent
//             for the test to find at the new sink
//   401       a token removed from sessionStorage, or a wrong one, brings the login back
//
// Usage: node console.mjs CONFIG.json  with {keel, token, writeKey, outDir,
//   deadDestination, deadMessageIds, scriptPath, newSinkUrl, sourceName}
// Prints one JSON line (the summary) last on stdout; exits 1 on any failed check.
// Environment: KEEL_CHROMIUM=/usr/bin/chromium  KEEL_BROWSER_MODULES=<node_modules>

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const NODE_MODULES =
  process.env.KEEL_BROWSER_MODULES ?? path.join(ROOT, '.cache/browser/node_modules');
const CHROMIUM = process.env.KEEL_CHROMIUM ?? '/usr/bin/chromium';
const require = createRequire(path.join(NODE_MODULES, 'resolve-from-here.js'));
const { chromium } = require('playwright-core');
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { keel, token, writeKey, outDir } = cfg;
fs.mkdirSync(outDir, { recursive: true });
const STEP_MS = 10_000;
const LIVE_WITHIN_MS = 2_000;

const logLines = [];
const log = (line) => logLines.push(`${new Date().toISOString()} ${line}`);
const summary = { pages: {}, timings: {} };
const started = Date.now();

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Sends one event to Keel with the write key; returns its messageId. */
async function send(kind, body) {
  const messageId = body.messageId ?? `console-${kind}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const res = await fetch(`${keel}/v1/${kind}`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      Authorization: `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}`,
    },
    body: JSON.stringify({ ...body, messageId }),
  });
  check(res.ok, `POST /v1/${kind} answered ${res.status}`);
  return messageId;
}

// ---- the page, its errors by phase -------------------------------------------------------

let phase = 'start';
const errors = []; // {phase, text}
// Phases whose HTTP errors are the point of the check (a refused token is a 401 the
// browser reports on the console as a failed resource).
const EXPECTED = { 'login-wrong': /status of 401/, 'session-401': /status of 401/ };

async function axe(page, name) {
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')),
    }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  summary.pages[name] = { ...(summary.pages[name] || {}), axe: result.map((v) => `${v.impact} ${v.id}`) };
  check(bad.length === 0, `${name}: axe-core found serious/critical violations: ${JSON.stringify(bad, null, 1)}`);
}

/** Screenshot, axe and the no-console-error check of the page as it is now. */
async function pageDone(page, name) {
  await page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
  await axe(page, name);
  const mine = errors.filter((e) => e.phase === name);
  summary.pages[name] = { ...(summary.pages[name] || {}), consoleErrors: mine.length };
  check(mine.length === 0, `${name}: console errors: ${mine.map((e) => e.text).join(' | ')}`);
}

async function openPage(page, linkName, name, heading) {
  phase = name;
  const t = Date.now();
  await page.getByRole('navigation', { name: 'Console pages' }).getByRole('link', { name: linkName }).click();
  await page.getByRole('heading', { level: 1, name: heading }).waitFor({ timeout: STEP_MS });
  summary.timings[`${name}Load`] = Date.now() - t;
}

// ---- scenarios ------------------------------------------------------------------------------

async function login(page) {
  phase = 'login-wrong';
  await page.goto(`${keel}/console/`);
  const field = page.getByLabel('Admin token');
  await field.waitFor({ timeout: STEP_MS });
  await field.fill('not-the-token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').filter({ hasText: 'refused' }).waitFor({ timeout: STEP_MS });
  check(await page.evaluate(() => sessionStorage.getItem('keel.adminToken')) === null, 'a refused token is not kept');
  phase = 'login';
  await pageDone(page, 'login');
  await field.fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Connections' }).waitFor({ timeout: STEP_MS });
  check(await page.evaluate(() => sessionStorage.getItem('keel.adminToken')) === token, 'token kept in sessionStorage');
}

async function connections(page) {
  phase = 'connections';
  // Rates need two readings (2 s apart); the busy destination shows a number.
  const row = page.locator('tr', { has: page.locator('th', { hasText: 'hook' }) }).first();
  await page.waitForFunction(
    () => [...document.querySelectorAll('tbody tr')].some((tr) => /^\d/.test(tr.children[3]?.textContent ?? '')),
    null,
    { timeout: STEP_MS },
  );
  await row.waitFor({ timeout: STEP_MS });
  const dlq = page.locator('tr', { has: page.locator('th', { hasText: cfg.deadDestination }) });
  summary.connections = {
    rows: await page.locator('tbody tr').count(),
    deadRow: (await dlq.first().innerText()).replace(/\s+/g, ' '),
  };
  check(summary.connections.rows >= 4, 'every destination has a row');
  await pageDone(page, 'connections');
}

/** Waits until the live view streams on a connection opened after `before` others. */
async function streaming(page, before) {
  await page.waitForFunction(
    (n) => {
      const el = document.getElementById('live-state');
      return el && Number(el.dataset.opened) > n && el.textContent.startsWith('Live');
    },
    before,
    { timeout: STEP_MS },
  );
}

async function live(page) {
  await openPage(page, 'Live events', 'live', 'Live events');
  const state = page.locator('#live-state');
  await streaming(page, 0);

  // An event sent now is on screen within 2 s.
  const t0 = Date.now();
  const id = await send('track', { userId: 'live-user', event: 'Console Live Check', properties: { n: 1 } });
  await page.locator(`tr[data-kind="accepted"][data-message-id="${id}"]`).waitFor({ timeout: STEP_MS });
  const ms = Date.now() - t0;
  summary.live = { messageId: id, shownAfterMs: ms };
  log(`live event shown after ${ms} ms`);
  check(ms <= LIVE_WITHIN_MS, `the live view showed the event after ${ms} ms (> ${LIVE_WITHIN_MS})`);
  // Each destination's answer follows.
  await page.locator(`tr[data-kind="delivered"][data-message-id="${id}"]`).first().waitFor({ timeout: STEP_MS });

  // Paused: new rows are held until resume.
  const rows = page.locator('tbody tr');
  await page.getByRole('button', { name: 'Pause' }).click();
  const before = await rows.count();
  const held = await send('track', { userId: 'live-user', event: 'Console Pause Check' });
  await page.locator('#live-state').filter({ hasText: 'held' }).waitFor({ timeout: STEP_MS });
  await page.waitForTimeout(300); // a render pass that would have added rows
  check((await page.locator(`tr[data-message-id="${held}"]`).count()) === 0, 'no new rows while paused');
  check((await rows.count()) === before, 'the table stands still while paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.locator(`tr[data-kind="accepted"][data-message-id="${held}"]`).waitFor({ timeout: STEP_MS });

  // Filtered by event name: only matching events.
  await page.getByLabel('Event name').fill('Console Filter Check');
  let opened = Number(await state.getAttribute('data-opened'));
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await streaming(page, opened);
  const other = await send('track', { userId: 'live-user', event: 'Console Filter Other' });
  const wanted = await send('track', { userId: 'live-user', event: 'Console Filter Check' });
  await page.locator(`tr[data-kind="accepted"][data-message-id="${wanted}"]`).waitFor({ timeout: STEP_MS });
  await page.waitForTimeout(300); // one more render pass: an unfiltered event would show now
  check((await page.locator(`tr[data-message-id="${other}"]`).count()) === 0, 'the filter hides other events');
  const names = await page.locator('tbody tr td:nth-child(6)').allInnerTexts();
  check(names.every((n) => n === 'Console Filter Check'), `only filtered rows: ${names}`);
  opened = Number(await state.getAttribute('data-opened'));
  await page.getByRole('button', { name: 'Reset' }).click();
  await streaming(page, opened);

  // The background traffic fills the view for the screenshot.
  await page.waitForFunction(
    () =>
      document.querySelectorAll('tbody tr').length >= 30 &&
      /^[1-9]\d* shown/.test(document.getElementById('live-stats')?.textContent ?? ''),
    null,
    { timeout: STEP_MS },
  );
  await page.locator('tbody tr details').first().click();
  check(!(await page.content()).includes(writeKey), 'no write key on the page');
  await pageDone(page, 'live');
  return id;
}

async function explorer(page, id) {
  phase = 'explorer';
  await page.goto(`${keel}/console/events/${encodeURIComponent(id)}`);
  await page.getByRole('heading', { level: 1, name: 'Event explorer' }).waitFor({ timeout: STEP_MS });
  await page.getByRole('heading', { name: `Path of ${id}` }).waitFor({ timeout: STEP_MS });
  const text = await page.locator('ol.path').innerText();
  check(/Accepted/.test(text) && /Routed/.test(text), `the path shows acceptance and routing: ${text}`);
  const hook = page.locator('tr', { has: page.locator('th', { hasText: /^hook$/ }) });
  await hook.waitFor({ timeout: STEP_MS });
  summary.explorer = { path: text.replace(/\s+/g, ' '), hook: (await hook.innerText()).replace(/\s+/g, ' ') };
  // Looking up another id from the form works too.
  await page.getByLabel('messageId').fill(cfg.deadMessageIds[0]);
  await page.getByRole('button', { name: 'Look up' }).click();
  await page.getByRole('heading', { name: `Path of ${cfg.deadMessageIds[0]}` }).waitFor({ timeout: STEP_MS });
  await page.getByRole('heading', { name: `Path of ${id}` }).waitFor({ state: 'detached', timeout: STEP_MS });
  await page.goBack();
  await page.getByRole('heading', { name: `Path of ${id}` }).waitFor({ timeout: STEP_MS });
  await pageDone(page, 'explorer');
}

async function deadLetters(page) {
  await openPage(page, 'Dead letters', 'dead-letters', 'Dead letters');
  await page.getByLabel('Destination').selectOption(cfg.deadDestination);
  for (const id of cfg.deadMessageIds) {
    await page.locator(`tr[data-message-id="${id}"]`).waitFor({ timeout: STEP_MS });
  }
  const rows = page.locator('tbody tr');
  check((await rows.count()) === cfg.deadMessageIds.length, 'the destination’s dead letters are listed');
  await pageDone(page, 'dead-letters');

  // One selected, after the confirmation.
  const first = cfg.deadMessageIds[0];
  await page.locator(`tr[data-message-id="${first}"] input[type=checkbox]`).check();
  await page.getByRole('button', { name: 'Replay selected (1)' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor({ timeout: STEP_MS });
  await page.screenshot({ path: path.join(outDir, 'dead-letters-confirm.png') });
  await dialog.getByRole('button', { name: 'Replay' }).click();
  await page.getByRole('status').filter({ hasText: 'Replayed 1 dead letter:' }).waitFor({ timeout: STEP_MS });
  await page.locator(`tr[data-message-id="${first}"]`).waitFor({ state: 'detached', timeout: STEP_MS });

  // Cancel leaves them; then all of the destination.
  await page.getByRole('button', { name: 'Replay all' }).click();
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await dialog.waitFor({ state: 'hidden', timeout: STEP_MS });
  check((await rows.count()) === cfg.deadMessageIds.length - 1, 'cancel replays nothing');
  await page.getByRole('button', { name: 'Replay all' }).click();
  await dialog.getByRole('button', { name: 'Replay' }).click();
  const rest = cfg.deadMessageIds.length - 1;
  await page
    .getByRole('status')
    .filter({ hasText: `Replayed ${rest} dead letter${rest === 1 ? '' : 's'}:` })
    .waitFor({ timeout: STEP_MS });
  await page.getByText(`No dead letters for ${cfg.deadDestination}`).waitFor({ timeout: STEP_MS });
  summary.replay = { replayed: cfg.deadMessageIds };
  check(errors.filter((e) => e.phase === 'dead-letters').length === 0, 'no console errors while replaying');
}

const SCRIPT_OK = `export function transformEvent(event, metadata) {
  log("console run for", event.event);
  event.properties = { ...event.properties, seenByConsole: metadata(event).destinationId };
  return event;
}
`;
const SCRIPT_THROWS = `export function transformEvent(event) {
  throw new Error("console says no to " + event.event);
}
`;

async function transformations(page) {
  await openPage(page, 'Transformations', 'transformations', 'Transformations');
  await page.getByLabel('File').selectOption(cfg.scriptPath);
  const editor = page.getByLabel(/^Source/);
  await page.waitForFunction(
    () => document.getElementById('script-text')?.value.includes('transformEvent'),
    null,
    { timeout: STEP_MS },
  );
  await editor.fill(SCRIPT_OK);
  await page.getByLabel('Event (JSON)').fill(
    JSON.stringify({ type: 'track', event: 'Pasted Event', userId: 'paste-user', properties: { plan: 'pro' } }, null, 2),
  );
  await page.getByLabel('Destination settings').selectOption({ index: 1 });
  await page.getByRole('button', { name: 'Run' }).click();
  const output = page.locator('#run-output');
  await output.filter({ hasText: 'seenByConsole' }).waitFor({ timeout: STEP_MS });
  const logs = await page.locator('#run-logs').innerText();
  check(/console run for Pasted Event/.test(logs), `the script's log is shown: ${logs}`);
  const out = JSON.parse(await output.innerText());
  check(out.properties.plan === 'pro' && out.event === 'Pasted Event', `output: ${JSON.stringify(out)}`);
  summary.transform = { output: out, logs };
  await pageDone(page, 'transformations');

  // A throwing script: its error is shown, not an output.
  await editor.fill(SCRIPT_THROWS);
  await page.getByRole('button', { name: 'Run' }).click();
  await page.locator('#run-error').filter({ hasText: 'console says no to Pasted Event' }).waitFor({ timeout: STEP_MS });

  // Save the good one: written and reloaded.
  await editor.fill(SCRIPT_OK);
  await page.getByRole('button', { name: 'Save and reload' }).click();
  await page.getByRole('status').filter({ hasText: 'Saved' }).waitFor({ timeout: STEP_MS });
  summary.savedScript = SCRIPT_OK;
}

async function workspace(page) {
  await openPage(page, 'Workspace', 'workspace', 'Workspace');
  const tree = page.getByRole('navigation', { name: 'Sources and destinations' });
  await tree.getByRole('button', { name: `Add destination to ${cfg.sourceName}` }).click();
  const editor = page.getByRole('heading', { level: 2, name: /^Destination:/ });
  await editor.waitFor({ timeout: STEP_MS });
  await page.getByLabel('Name', { exact: true }).fill('Console added hook');
  await page.getByLabel('Kind').selectOption('WEBHOOK');
  const url = page.getByLabel(/^Webhook URL/);
  // A bad value: the server's problem shows at the field, with its JSON path.
  await url.fill('not a url');
  const urlError = page.locator('.field.invalid', { has: url }).locator('.field-error');
  await urlError.filter({ hasText: /\$\.sources\[0\]\.destinations\[\d+\]\.config\.webhookUrl/ }).waitFor({ timeout: STEP_MS });
  summary.fieldError = await urlError.innerText();
  check((await url.getAttribute('aria-invalid')) === 'true', 'the bad field is marked invalid');
  await url.fill(cfg.newSinkUrl);
  await page.getByLabel(/^HTTP method/).fill('POST');
  await tree.getByRole('button', { name: /Console added hook/ }).waitFor({ timeout: STEP_MS });
  await page.getByRole('status').filter({ hasText: 'Valid.' }).waitFor({ timeout: STEP_MS });
  check((await url.getAttribute('aria-invalid')) === null, 'the fixed field is valid');

  await page.getByRole('button', { name: 'Review changes' }).click();
  const diff = page.locator('pre.diff');
  await diff.waitFor({ timeout: STEP_MS });
  const diffText = await diff.innerText();
  check(/\+\s+"name": "Console added hook"/.test(diffText), `the diff adds the destination: ${diffText}`);
  check(!diffText.includes(cfg.newSinkUrl), 'the secret webhook URL is masked in the diff');
  await pageDone(page, 'workspace');
  const newId = await page.getByLabel('ID', { exact: true }).inputValue();
  await page.getByRole('button', { name: 'Apply', exact: true }).click();
  await page.getByText('Applied and reloaded').waitFor({ timeout: STEP_MS });
  // The next event reaches the new destination.
  const messageId = await send('track', { userId: 'editor-user', event: 'After Editor Apply' });
  summary.newDestination = { id: newId, messageId };
}

async function session401(page) {
  phase = 'session-401';
  // A removed token: the next request shows the login.
  await page.getByRole('navigation', { name: 'Console pages' }).getByRole('link', { name: 'Connections' }).click();
  await page.getByRole('heading', { level: 1, name: 'Connections' }).waitFor({ timeout: STEP_MS });
  await page.evaluate(() => sessionStorage.removeItem('keel.adminToken'));
  await page.getByLabel('Admin token').waitFor({ timeout: STEP_MS });
  await page.getByText('Your session ended').waitFor({ timeout: STEP_MS });
  // A wrong token: the API's 401 shows the login.
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Connections' }).waitFor({ timeout: STEP_MS });
  await page.evaluate(() => sessionStorage.setItem('keel.adminToken', 'stale-token'));
  await page.getByLabel('Admin token').waitFor({ timeout: STEP_MS });
  await page.getByText('Your session ended').waitFor({ timeout: STEP_MS });
  check(await page.evaluate(() => sessionStorage.getItem('keel.adminToken')) === null, 'the refused token is forgotten');
  summary.session401 = true;
}

// ---- run ------------------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let failed = null;
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, reducedMotion: 'reduce' });
  const page = await context.newPage();
  page.on('console', (msg) => {
    log(`[${phase}] console ${msg.type()}: ${msg.text()}`);
    if (msg.type() !== 'error') return;
    const allowed = EXPECTED[phase];
    if (!(allowed && allowed.test(msg.text()))) errors.push({ phase, text: msg.text() });
  });
  page.on('pageerror', (err) => {
    log(`[${phase}] pageerror ${err.stack ?? err}`);
    errors.push({ phase, text: `page error: ${err.message}` });
  });
  page.on('requestfailed', (r) => log(`[${phase}] request failed ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('request', (r) => {
    if (!r.url().startsWith(keel) && !r.url().startsWith('data:')) {
      errors.push({ phase, text: `request to another host: ${r.url()}` });
    }
  });

  for (const [name, step] of [
    ['login', () => login(page)],
    ['connections', () => connections(page)],
    ['live', () => live(page)],
  ]) {
    const t = Date.now();
    summary.liveId = (await step()) ?? summary.liveId;
    summary.timings[name] = Date.now() - t;
  }
  for (const [name, step] of [
    ['explorer', () => explorer(page, summary.liveId)],
    ['dead-letters', () => deadLetters(page)],
    ['transformations', () => transformations(page)],
    ['workspace', () => workspace(page)],
    ['session-401', () => session401(page)],
  ]) {
    const t = Date.now();
    await step();
    summary.timings[name] = Date.now() - t;
  }
  const stray = errors.filter((e) => !EXPECTED[e.phase]);
  check(stray.length === 0, `console errors: ${JSON.stringify(stray)}`);
} catch (e) {
  failed = e;
  log(`FAILED in phase ${phase}: ${e.stack ?? e}`);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: path.join(outDir, 'failure.png'), fullPage: true });
  } catch {
    // the page may be gone
  }
} finally {
  summary.totalMs = Date.now() - started;
  summary.errors = errors;
  fs.writeFileSync(path.join(outDir, 'browser.log'), logLines.join('\n') + '\n');
  await browser.close();
}
if (failed) {
  console.error(`console driver failed in phase ${phase}: ${failed.message}`);
  console.log(JSON.stringify(summary));
  process.exit(1);
}
console.log(JSON.stringify(summary));
