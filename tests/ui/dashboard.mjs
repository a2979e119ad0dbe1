#!/usr/bin/env node
// End-to-end test of the lampyr dashboard in a real headless Chromium
// (Debian's /usr/bin/chromium driven by playwright-core; no browser download).
//
//   node tests/ui/dashboard.mjs --url URL --token TOKEN --function NAME --failing NAME2 --timers NAME3 --screenshot PATH
//
// The function must have been invoked at least 3 times (a cold or pooled
// start, then warm ones) and must log something for each request
// (`hello from QUERY`, and `got METHOD BODY` when there is a body, which
// it echoes after `Hello QUERY`). The script invokes it itself too
// (`URL/fn/NAME?from=ui-test`). NAME2 is a function whose initialisation
// fails, called at least once. NAME3 has three timers: `often` (@every
// 1s, logging `tick often`), `daily` and `paused` (disabled), and a NATS
// trigger `orders` whose server cannot be reached. The page
// may ask nothing of any address but URL's. It prints each check and exits
// non-zero with a clear message on the first failure.
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    function: { type: 'string' },
    failing: { type: 'string' },
    timers: { type: 'string' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    timeout: { type: 'string', default: '20' },
  },
});
for (const k of ['url', 'token', 'function', 'failing', 'timers', 'screenshot']) {
  if (!args[k]) {
    console.error(`usage: node dashboard.mjs --url URL --token TOKEN --function NAME --failing NAME2 --timers NAME3 --screenshot PATH (missing --${k})`);
    process.exit(2);
  }
}
const BASE = args.url.replace(/\/+$/, '');
const ORIGIN = new URL(BASE).origin;
const NAME = args.function;
const WAIT = Number(args.timeout) * 1000;

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };
const ok = (msg) => console.log(`ok   ${msg}`);

if (!existsSync(args.chromium)) {
  console.error(`FAIL: no Chromium at ${args.chromium}: install it with \`apt-get install chromium\``);
  process.exit(1);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`FAIL: playwright-core is not installed (${e.code || e.message}): run \`npm ci --prefix tests/ui\``);
  process.exit(1);
}

// Polls `fn` in the page until it returns a truthy value, or fails with
// `what` (and the last value `fn` described) after `limit` ms.
async function until(page, what, fn, arg, limit = WAIT) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: limit, polling: 200 });
    return await h.jsonValue();
  } catch (e) {
    if (e.name === 'TimeoutError' || /Timeout/.test(e.message)) fail(`timed out after ${limit / 1000} s waiting for ${what}`);
    throw e;
  }
}

// The management API, from Node (not from the page).
async function api(p) {
  const r = await fetch(`${BASE}/api/v1${p}`, { headers: { authorization: `Bearer ${args.token}` } });
  const body = await r.text();
  if (r.status !== 200) fail(`GET /api/v1${p} answered ${r.status}: ${body}`);
  return JSON.parse(body);
}

// Invokes the function from Node (not from the page) and returns the request id.
async function invoke(query) {
  const r = await fetch(`${BASE}/fn/${encodeURIComponent(NAME)}?${query}`);
  const body = await r.text();
  if (r.status !== 200) fail(`GET /fn/${NAME}?${query} answered ${r.status}: ${body}`);
  const id = r.headers.get('x-lampyr-request-id');
  if (!id) fail(`GET /fn/${NAME}?${query} has no x-lampyr-request-id header`);
  return id;
}

const profile = mkdtempSync(path.join(tmpdir(), 'lampyr-ui-chromium-'));
const consoleErrors = [];
// Requests the page made to any address but the server's (`data:` URLs
// are the page's own bytes, not requests).
const foreign = [];
let context;
let page;
const timer = setTimeout(() => {
  console.error('FAIL: the whole test took more than 3 minutes');
  process.exit(1);
}, 180000);

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith('data:') && new URL(u).origin !== ORIGIN) foreign.push(`${r.method()} ${u}`);
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console: ${m.text()} (${m.location().url || ''})`); });
  page.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));

  // 1. The token from the fragment signs in, then leaves the visible URL.
  await page.goto(`${BASE}/ui#token=${encodeURIComponent(args.token)}`);
  await until(page, `the function list to show ${NAME}`,
    (n) => !!document.querySelector(`[data-testid="function-row"][data-name="${CSS.escape(n)}"]`), NAME);
  ok(`function list shows ${NAME}`);
  if (page.url().includes(args.token)) fail(`the token is still in the URL: ${page.url()}`);
  if (!(await page.evaluate(() => !!sessionStorage.getItem('lampyr.token')))) fail('the token was not kept in sessionStorage');
  ok('token moved from the URL fragment to sessionStorage');
  const row = page.locator(`[data-testid="function-row"][data-name="${NAME}"]`);
  const activity = await until(page, `${NAME}'s activity in the list`, (n) => {
    const r = document.querySelector(`[data-testid="function-row"][data-name="${CSS.escape(n)}"]`);
    const t = (id) => r?.querySelector(`[data-testid="${id}"]`)?.textContent.trim();
    const a = { invocations: t('fn-invocations'), errors: t('fn-error-rate'), p99: t('fn-p99'), last: t('fn-last') };
    return Number((a.invocations || '').replace(/,/g, '')) >= 3 && a.p99 && a.p99 !== '—' && a.last === 'just now' ? a : false;
  }, NAME);
  if (activity.errors !== '0%') fail(`${NAME} shows an error rate of ${activity.errors}`);
  if (await row.locator('[data-testid="failing-badge"]').count()) fail(`${NAME} is marked failing`);
  const cells = (await row.locator('td').allInnerTexts()).map((s) => s.trim());
  if (!cells.some((c) => c.includes(`/fn/${NAME}`))) fail(`the function row has no URL: ${JSON.stringify(cells)}`);
  ok(`function row: ${cells.join(' | ')}`);
  const why = await until(page, `the failing badge on ${args.failing}, with why`, (n) => {
    const r = document.querySelector(`[data-testid="function-row"][data-name="${CSS.escape(n)}"]`);
    const badge = r?.querySelector('[data-testid="failing-badge"]');
    const reason = r?.querySelector('[data-testid="failing-why"]')?.textContent;
    return badge && reason ? reason : false;
  }, args.failing);
  if (!/Error/.test(why)) fail(`the failing function's reason says no error: ${why}`);
  ok(`${args.failing} is marked failing: ${why}`);
  const dlq = await until(page, `the dead letters of ${args.failing}`, (n) => {
    const r = document.querySelector(`[data-testid="function-row"][data-name="${CSS.escape(n)}"]`);
    return r?.querySelector('[data-testid="fn-dead-letters"]')?.textContent || false;
  }, args.failing);
  if (dlq !== '1 DLQ') fail(`${args.failing} shows ${dlq} for its one dead letter`);
  ok(`${args.failing} shows its dead letter: ${dlq}`);
  await until(page, 'the runtime pools', () => document.querySelectorAll('[data-testid="pool"]').length > 0
    || !!document.querySelector('#pools .empty'));
  ok(`runtime pools: ${(await page.locator('[data-testid="pool"]').allInnerTexts()).map((s) => s.replace(/\s+/g, ' ')).join('; ') || 'none'}`);

  // 2. The detail view.
  await row.click();
  await until(page, 'the detail header', (n) => document.querySelector('[data-testid="detail-name"]')?.textContent === n
    && !!document.querySelector('[data-testid="detail-runtime"]')?.textContent
    && !!document.querySelector('[data-testid="state-idle"]'), NAME);
  const header = await page.evaluate(() => {
    const t = (id) => (document.querySelector(`[data-testid="${id}"] b`) || document.querySelector(`[data-testid="${id}"]`))?.textContent.trim();
    const states = {};
    for (const k of ['starting', 'idle', 'busy', 'draining', 'queued']) states[k] = Number(document.querySelector(`[data-testid="state-${k}"]`)?.dataset.count);
    return { runtime: t('detail-runtime'), version: t('detail-version'), memory: t('detail-memory'), timeout: t('detail-timeout'), url: t('detail-url'), states };
  });
  if (!/MB/.test(header.memory || '') || !header.timeout || !header.url.includes(`/fn/${NAME}`)) fail(`incomplete detail header: ${JSON.stringify(header)}`);
  if (Object.values(header.states).some((v) => !Number.isFinite(v))) fail(`instance states missing: ${JSON.stringify(header.states)}`);
  ok(`detail header: ${header.runtime}, ${header.version}, memory ${header.memory}, timeout ${header.timeout}, states ${JSON.stringify(header.states)}`);

  // 3. Recent invocations: >= 3 rows, a fresh start and a warm one.
  let rows;
  try {
    rows = await until(page, 'at least 3 recent invocations including a cold/pooled and a warm one', () => {
      const rs = [...document.querySelectorAll('[data-testid="invocation-row"]')].map((r) => ({ id: r.dataset.requestId, start: r.dataset.start, status: r.dataset.status }));
      const fresh = rs.some((r) => r.start === 'cold' || r.start === 'pooled');
      const warm = rs.some((r) => r.start === 'warm');
      return rs.length >= 3 && fresh && warm ? rs : false;
    });
  } catch (e) {
    const seen = await page.evaluate(() => ({
      rows: [...document.querySelectorAll('[data-testid="invocation-row"]')].map((r) => r.dataset.start),
      empty: document.getElementById('invocations-empty')?.textContent,
    }));
    throw new Failure(`${e.message}; the table shows ${JSON.stringify(seen)}`);
  }
  const kinds = await page.evaluate(() => [...document.querySelectorAll('[data-testid="invocation-row"] [data-testid="start-kind"]')]
    .map((p) => `${p.textContent}:${getComputedStyle(p).color}`));
  const colours = new Map(kinds.map((k) => k.split(/:(.*)/s).slice(0, 2)));
  if (colours.size >= 2 && new Set(colours.values()).size < 2) fail(`start kinds are not colour-coded: ${kinds.join(', ')}`);
  const byKind = {};
  for (const r of rows) byKind[r.start] = (byKind[r.start] || 0) + 1;
  ok(`recent invocations: ${rows.length} rows ${JSON.stringify(byKind)}, start kinds colour-coded`);

  // 4. Charts and statistics from the stats and series endpoints.
  await until(page, 'the charts', () => ['chart-invocations', 'chart-latency', 'chart-phases', 'chart-instances']
    .every((id) => document.querySelector(`[data-testid="${id}"] svg`))
    && document.querySelectorAll('[data-testid="chart-invocations"] svg rect[fill]').length > 1
    && document.querySelectorAll('[data-testid="chart-phases"] svg rect').length > 0);
  const count = await page.locator('[data-testid="tile-count"] b').innerText();
  if (!(Number(count.replace(/,/g, '')) >= 3)) fail(`the invocation count tile says ${count}`);
  const phaseLabels = await page.evaluate(() => [...document.querySelectorAll('[data-testid="chart-phases"] svg text')].map((t) => t.textContent));
  if (phaseLabels.includes('exec')) fail(`the cold-start phase chart shows exec: ${phaseLabels.join(', ')}`);
  if (!phaseLabels.includes('init')) fail(`the cold-start phase chart lacks init: ${phaseLabels.join(', ')}`);
  ok(`charts drawn (invocations, latency, instances, cold-start phases without exec); ${count} invocations in the last hour`);

  // 4b. The time ranges, each in turn, ending at an hour: the tiles count
  // this test's invocations in every window.
  for (const [key, label] of [['15m', '15 min'], ['1h', '1 h'], ['6h', '6 h'], ['24h', '24 h'], ['1h', '1 h']]) {
    await page.locator(`[data-testid="range-${key}"]`).click();
    await until(page, `the tiles to show ${label}`, ([k, l]) => {
      const tile = document.querySelector('[data-testid="tile-count"]');
      return document.querySelector(`[data-testid="range-${k}"]`)?.getAttribute('aria-pressed') === 'true'
        && (tile?.querySelector('span')?.textContent || '').endsWith(`· ${l}`)
        && Number((tile?.querySelector('b')?.textContent || '').replace(/,/g, '')) >= 3;
    }, [key, label]);
  }
  ok('the time range picker switches the window (15 min, 1 h, 6 h, 24 h)');

  // 4c. The test panel: an event, then an HTTP request.
  await page.locator('[data-testid="test-json"]').fill('{"rawQueryString": "from=panel"}');
  await page.locator('[data-testid="test-run"]').click();
  const ev = await until(page, 'the test panel\'s result and log lines for an event', () => {
    const code = document.querySelector('[data-testid="test-code"]')?.textContent;
    const out = document.querySelector('[data-testid="test-out"]')?.textContent || '';
    const logs = document.querySelector('[data-testid="test-logs"]')?.textContent || '';
    return code === '200' && out.includes('Hello from=panel') && logs.includes('hello from from=panel') ? { code, logs: logs.length } : false;
  });
  ok(`test panel invoked with an event: ${ev.code}, with its log lines`);
  await page.locator('[data-testid="test-mode-http"]').click();
  await page.locator('[data-testid="test-method"]').selectOption('GET');
  await page.locator('[data-testid="test-path"]').fill('?from=panel-http');
  await page.locator('[data-testid="test-run"]').click();
  const http = await until(page, 'the test panel\'s result for an HTTP request', () => {
    const code = document.querySelector('[data-testid="test-code"]')?.textContent;
    const out = document.querySelector('[data-testid="test-out"]')?.textContent || '';
    const start = document.querySelector('[data-testid="test-start"]')?.textContent;
    const exec = document.querySelector('[data-testid="test-phases"] [data-phase="exec"]');
    return code === '200' && out.includes('Hello from=panel-http') && start && exec ? { code, start } : false;
  });
  ok(`test panel sent an HTTP request: ${http.code}, ${http.start}, with its Server-Timing phases`);
  await page.locator('[data-testid="test-method"]').selectOption('POST');
  await page.locator('[data-testid="test-path"]').fill('?from=panel-post');
  await page.locator('[data-testid="test-body"]').fill('{"order": 7}');
  await page.locator('[data-testid="test-run"]').click();
  const post = await until(page, 'the test panel\'s result and log lines for a POST with a body', () => {
    const code = document.querySelector('[data-testid="test-code"]')?.textContent;
    const out = document.querySelector('[data-testid="test-out"]')?.textContent || '';
    const logs = [...document.querySelectorAll('[data-testid="test-logs"] [data-testid="log-line"]')].map((l) => l.textContent);
    return code === '200' && out.includes('Hello from=panel-post {"order": 7}')
      && logs.some((l) => l.includes('hello from from=panel-post')) && logs.some((l) => l.includes('got POST {"order": 7}'))
      ? { code, lines: logs.length } : false;
  });
  ok(`test panel sent a POST with a body: ${post.code}, ${post.lines} log lines with the body the function got`);

  // 5. An invocation's log link shows the lines of that request.
  const pick = rows.find((r) => r.start === 'warm') || rows[0];
  await page.locator(`[data-testid="invocation-row"][data-request-id="${pick.id}"] [data-testid="invocation-logs-link"]`).click();
  const lines = await until(page, `the log lines of request ${pick.id}`, (id) => {
    const panel = document.querySelector('[data-testid="request-logs"]');
    if (!panel || panel.hidden || panel.dataset.requestId !== id) return false;
    const ls = [...panel.querySelectorAll('[data-testid="log-line"]')];
    return ls.length ? ls.map((l) => ({ id: l.dataset.requestId, text: l.textContent })) : false;
  }, pick.id);
  const foreign = lines.filter((l) => l.id !== pick.id);
  if (foreign.length) fail(`the request's log panel shows lines of other requests: ${JSON.stringify(foreign)}`);
  if (!lines.some((l) => l.text.includes('hello from'))) fail(`the request's log lines lack the handler's output: ${JSON.stringify(lines)}`);
  ok(`log link of ${pick.id} (${pick.start}) shows ${lines.length} line(s) tagged with it`);

  // 6. The live log tail follows the log: a new invocation appears.
  await until(page, 'the live log to connect (state "live")', () => document.querySelector('[data-testid="live-state"]')?.textContent === 'live');
  const live1 = await invoke('from=ui-test');
  await until(page, `a live log line of the new request ${live1}`, (id) => [...document.querySelectorAll(`[data-testid="live-log"] [data-testid="log-line"]`)]
    .some((l) => l.dataset.requestId === id && l.textContent.includes('from=ui-test')), live1);
  ok(`live log received the line of a new invocation (${live1})`);

  // 7. Pause holds new lines back; resume shows them.
  await page.locator('[data-testid="live-log-pause"]').click();
  const live2 = await invoke('from=ui-test&paused=1');
  await until(page, 'the pause button to count a held-back line', () => /Resume \(\d+ new\)/.test(document.querySelector('[data-testid="live-log-pause"]')?.textContent || ''));
  const shown = await page.evaluate((id) => !!document.querySelector(`[data-testid="live-log"] [data-testid="log-line"][data-request-id="${id}"]`), live2);
  if (shown) fail('the live log showed a line while paused');
  await page.locator('[data-testid="live-log-pause"]').click();
  await until(page, 'the held-back line after resuming', (id) => !!document.querySelector(`[data-testid="live-log"] [data-testid="log-line"][data-request-id="${id}"]`), live2);
  ok('pause holds lines back, resume shows them');

  // 8. A function's timers: each one's schedule, its next three firings
  // (as the API gives them) and how its latest firing went, with that
  // request's logs one click away. Reached from the list, like a person.
  const TIMERS = args.timers;
  await page.locator('#crumbs a').first().click();
  await page.locator(`[data-testid="function-row"][data-name="${TIMERS}"] [data-testid="function-link"]`).click();
  const timerRows = await until(page, `the timers of ${TIMERS}`, (n) => {
    if (document.querySelector('[data-testid="detail-name"]')?.textContent !== n) return false;
    const card = document.querySelector('[data-testid="timers"]');
    const rs = [...document.querySelectorAll('[data-testid="timer-row"]')];
    return card && !card.hidden && rs.length === 3 ? rs.map((r) => r.dataset.name) : false;
  }, TIMERS);
  if (timerRows.join() !== 'often,daily,paused') fail(`the timers shown are ${timerRows.join(', ')}`);
  const timerRow = (name) => page.evaluate((nm) => {
    const r = document.querySelector(`[data-testid="timer-row"][data-name="${nm}"]`);
    const last = r.querySelector('[data-testid="timer-last"]');
    return {
      schedule: r.querySelector('[data-testid="timer-schedule"]').textContent,
      next: [...r.querySelectorAll('[data-testid="timer-next"]')].map((li) => ({ at: li.dataset.at, text: li.textContent.trim() })),
      disabled: !!r.querySelector('[data-testid="timer-disabled"]'),
      last: { id: last.dataset.requestId, state: last.dataset.state, text: last.textContent.trim() },
    };
  }, name);
  // The daily timer's next firings are the same for the whole test: the
  // page shows the API's, each with its time.
  const apiNext = async () => (await api(`/functions/${encodeURIComponent(TIMERS)}`)).timers.find((t) => t.name === 'daily').next;
  const before = await apiNext();
  const daily = await timerRow('daily');
  const after = await apiNext();
  if (before.join() !== after.join()) fail(`the daily timer's next firings changed during the test: ${before} then ${after}`);
  if (before.length !== 3) fail(`the API gives ${before.length} next firings of the daily timer`);
  if (daily.next.map((n) => Date.parse(n.at)).join() !== before.map((t) => Date.parse(t)).join()
    || daily.next.some((n) => !/\d\d:\d\d:\d\d/.test(n.text))) {
    fail(`the daily timer shows ${JSON.stringify(daily.next)}, the API ${JSON.stringify(before)}`);
  }
  if (!daily.schedule.includes('0 30 9 * * *') || !daily.schedule.includes('Asia/Tokyo')) fail(`the daily timer's schedule reads ${daily.schedule}`);
  const paused = await timerRow('paused');
  if (!paused.disabled || paused.next.length) fail(`the disabled timer shows ${JSON.stringify(paused)}`);
  // The frequent one has fired: its latest firing succeeded, and the API
  // knows that request as this timer's.
  await until(page, 'the latest firing of the often timer to show as succeeded', () => {
    const last = document.querySelector('[data-testid="timer-row"][data-name="often"] [data-testid="timer-last"]');
    return last?.dataset.state === 'succeeded' && !!last.dataset.requestId;
  });
  const often = await timerRow('often');
  const at = often.next.map((n) => Date.parse(n.at));
  if (at.length !== 3 || !(at[0] < at[1] && at[1] < at[2])) fail(`the often timer's next firings are ${JSON.stringify(often.next)}`);
  const fired = await api(`/invocations/${encodeURIComponent(often.last.id)}`);
  if (fired.trigger !== 'timer' || fired.function !== TIMERS || fired.state !== 'succeeded') fail(`the often timer's last firing ${often.last.id} is ${JSON.stringify(fired)}`);
  if (!/succeeded/.test(often.last.text)) fail(`the often timer's last firing reads ${often.last.text}`);
  await page.locator('[data-testid="timer-row"][data-name="often"] [data-testid="timer-last-logs"]').click();
  const tickLines = await until(page, 'the log lines of the often timer\'s latest firing', () => {
    const panel = document.querySelector('[data-testid="request-logs"]');
    if (!panel || panel.hidden) return false;
    const ls = [...panel.querySelectorAll('[data-testid="log-line"]')];
    return ls.some((l) => l.textContent.includes('tick often'))
      ? { id: panel.dataset.requestId, ids: [...new Set(ls.map((l) => l.dataset.requestId))] } : false;
  });
  if (tickLines.ids.join() !== tickLines.id) fail(`the timer firing's log panel shows lines of ${tickLines.ids.join(', ')}, not only ${tickLines.id}`);
  ok(`timers: ${daily.next.map((n) => n.text).join(', ')} next for daily; paused disabled; often last fired ${often.last.text}, its log lines one click away`);
  // Its event source: retrying, with the error the API gives.
  const src = await until(page, 'the event source retrying', () => {
    const card = document.querySelector('[data-testid="sources"]');
    const rs = [...document.querySelectorAll('[data-testid="source-row"]')];
    return card && !card.hidden && rs.length === 1 && rs[0].dataset.state === 'retrying'
      ? { trigger: rs[0].dataset.trigger, error: rs[0].querySelector('[data-testid="source-error"]').textContent } : false;
  });
  const apiSource = (await api(`/functions/${encodeURIComponent(TIMERS)}`)).sources[0];
  if (src.trigger !== 'orders' || apiSource.state !== 'retrying' || !apiSource.last_error || !src.error.includes(apiSource.last_error)) {
    fail(`the event source shows ${JSON.stringify(src)}, the API ${JSON.stringify(apiSource)}`);
  }
  ok(`event source: orders retrying, "${apiSource.last_error}"`);
  await page.locator('#crumbs a').first().click();
  await page.locator(`[data-testid="function-row"][data-name="${NAME}"] [data-testid="function-link"]`).click();
  await until(page, 'the detail of the function again', (n) => document.querySelector('[data-testid="detail-name"]')?.textContent === n, NAME);

  // 9. Let the tables and charts catch up, then the screenshot.
  await until(page, 'the new invocations in the table', (id) => !!document.querySelector(`[data-testid="invocation-row"][data-request-id="${id}"]`), live2);
  await page.locator(`[data-testid="invocation-row"][data-request-id="${pick.id}"] [data-testid="invocation-logs-link"]`).click();
  await until(page, 'the request log panel again', (id) => document.querySelector('[data-testid="request-logs"]')?.dataset.requestId === id
    && !!document.querySelector('[data-testid="request-logs"] [data-testid="log-line"]'), pick.id);
  await page.mouse.move(0, 0);
  await until(page, 'the page to scroll to the top', () => { window.scrollTo(0, 0); return window.scrollY === 0; });
  await page.screenshot({ path: args.screenshot, fullPage: true });
  const size = statSync(args.screenshot).size;
  ok(`screenshot saved: ${args.screenshot} (${size} bytes)`);

  // 10. No console errors on the page.
  if (consoleErrors.length) fail(`the page logged ${consoleErrors.length} console error(s):\n  ${consoleErrors.join('\n  ')}`);
  ok('no console errors');

  // 11. A wrong token brings the sign-in form back with the server's message.
  const other = await context.newPage();
  await other.goto(`${BASE}/ui#token=not-the-token`);
  const msg = await until(other, 'the sign-in form after a wrong token', () => {
    const f = document.querySelector('[data-testid="login-form"]');
    const e = document.querySelector('[data-testid="login-error"]');
    return f && f.offsetParent !== null && e && !e.hidden && e.textContent;
  });
  await other.close();
  ok(`a wrong token shows the sign-in form: "${msg}"`);

  // 12. Nothing but the server was asked for anything.
  if (foreign.length) fail(`the page made ${foreign.length} request(s) outside ${ORIGIN}:\n  ${foreign.join('\n  ')}`);
  ok(`every request went to ${ORIGIN}`);

  console.log('PASS: dashboard end-to-end test');
  await context.close();
  clearTimeout(timer);
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  const msg = e instanceof Failure ? e.message : (e.stack || String(e));
  console.error(`FAIL: ${msg}`);
  if (consoleErrors.length && !msg.includes('console error')) console.error(`page console errors so far:\n  ${consoleErrors.join('\n  ')}`);
  if (foreign.length && !msg.includes('outside')) console.error(`requests outside ${ORIGIN} so far:\n  ${foreign.join('\n  ')}`);
  if (page) {
    const shot = args.screenshot.replace(/(\.png)?$/i, '.failed.png');
    try {
      await page.screenshot({ path: shot, fullPage: true });
      console.error(`screenshot of the failure: ${shot}`);
    } catch (_) { /* the page is gone */ }
  }
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
