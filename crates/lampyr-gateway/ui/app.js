// The lampyr dashboard: plain JavaScript, no dependencies, no build step.
// It talks to the management API with the token from the URL fragment
// (`/ui#token=…`), kept in sessionStorage. Charts are small hand-drawn SVGs.
'use strict';
(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'lampyr.token';
  const SVGNS = 'http://www.w3.org/2000/svg';
  const C = {
    accent: '#d4f55a', dim: '#9fbf3a', error: '#ff6b6b', cold: '#6cb6ff',
    pooled: '#ffb547', violet: '#b69cff', teal: '#4fd1c5', grey: '#6d7c8e',
  };
  const PHASES = ['queue', 'code', 'sandbox', 'runtime', 'init', 'exec'];
  // What a cold start adds before the handler runs: the phase chart's rows.
  const COLD_PHASES = PHASES.filter((p) => p !== 'exec');
  // Time ranges: [key, label, bucket seconds].
  const RANGES = [['15m', '15 min', 15], ['1h', '1 h', 60], ['6h', '6 h', 300], ['24h', '24 h', 1200]];
  const RANGE_KEY = 'lampyr.range';
  let range = RANGES.find((r) => r[0] === sessionStorage.getItem(RANGE_KEY)) || RANGES[1];
  const STATES = ['starting', 'idle', 'busy', 'draining', 'stopping', 'queued'];
  const MAX_LIVE = 1000;

  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let ctl = null; // the current view's AbortController
  let redraw = null; // redraws the current view's charts (on resize)
  let detail = null; // the function detail view's state

  // ---------- small helpers ----------
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.append(el);
    return el;
  }
  const enc = encodeURIComponent;
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  function fmtClock(ts, ms) {
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return '';
    const s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return ms ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
  }
  function fmtHM(t) {
    const d = new Date(t);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function fmtMs(v) {
    if (v == null || Number.isNaN(v)) return '—';
    if (v < 0.1) return `${+(v * 1000).toFixed(v < 0.01 ? 1 : 0)} µs`;
    if (v < 1) return `${v.toFixed(2)} ms`;
    if (v < 10) return `${v.toFixed(1)} ms`;
    if (v < 1000) return `${Math.round(v)} ms`;
    return `${(v / 1000).toFixed(v < 10000 ? 2 : 1)} s`;
  }
  function fmtDur(ms) {
    if (ms == null) return '—';
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${+(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${+(ms / 60000).toFixed(1)} min`;
    return `${+(ms / 3600000).toFixed(1)} h`;
  }
  function fmtBytes(n) {
    if (n == null) return '—';
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }
  function fmtAgo(ts) {
    const s = (Date.now() - new Date(ts).getTime()) / 1000;
    if (!Number.isFinite(s)) return '';
    if (s < 60) return 'just now';
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  const fmtPct = (r) => (r == null ? '—' : `${(r * 100).toFixed(r > 0 && r < 0.1 ? 1 : 0)}%`);
  const fmtNum = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
  // The end of a request id: its random part (the start is the time).
  const shortId = (id) => (id ? id.slice(-8) : '');
  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }
  function empty(title, detail) {
    return h('div', { class: 'empty', 'data-testid': 'empty' }, h('strong', { text: title }), detail || '');
  }

  // ---------- the API ----------
  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  async function errorOf(r) {
    let code = '';
    let message = `HTTP ${r.status} ${r.statusText}`.trim();
    try {
      const b = await r.json();
      if (b && b.error) {
        code = b.error.code || '';
        message = b.error.message || message;
      }
    } catch (_) { /* not JSON */ }
    return new HttpError(r.status, code, message);
  }
  const authHeaders = () => ({ Authorization: `Bearer ${token}` });
  async function api(path, signal) {
    let r;
    try {
      r = await fetch(API + path, { headers: authHeaders(), signal, cache: 'no-store' });
    } catch (e) {
      if (e.name !== 'AbortError') setConn(false, 'server unreachable, retrying…');
      throw e;
    }
    if (r.ok) {
      setConn(true);
      return r.json();
    }
    const err = await errorOf(r);
    if (r.status === 401 && !(signal && signal.aborted)) signIn(err.message);
    throw err;
  }
  // True for "this server has no such endpoint" (an older server), as
  // opposed to "no such function".
  const missingEndpoint = (e) => e instanceof HttpError && e.status === 404 && e.code !== 'function_not_found';

  function setConn(ok, text) {
    const el = $('conn');
    el.classList.toggle('ok', ok === true);
    el.classList.toggle('bad', ok === false);
    $('conn-text').textContent = text || (ok ? `live · ${fmtClock(Date.now())}` : '');
  }

  // Runs `fn` now and then every `ms` until the view changes; errors are
  // shown by `fn` itself or in the connection indicator.
  function every(ms, fn, c) {
    const run = async () => {
      if (c.signal.aborted) return;
      try {
        await fn();
      } catch (e) {
        if (e instanceof HttpError && e.status !== 401 && !c.signal.aborted) setConn(false, e.message);
      }
      if (!c.signal.aborted) setTimeout(run, ms);
    };
    run();
  }

  // ---------- routing ----------
  function startView() {
    if (ctl) ctl.abort();
    ctl = new AbortController();
    redraw = null;
    hideTip();
    return ctl;
  }
  function show(id) {
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== id;
    $('signout').hidden = !token || id === 'view-login';
  }
  function crumbs(parts) {
    const nav = $('crumbs');
    nav.replaceChildren();
    parts.forEach(([label, href], i) => {
      if (i) nav.append(h('span', { class: 'sep', text: '/' }));
      nav.append(href ? h('a', { href, text: label }) : h('span', { class: 'here', text: label }));
    });
  }
  function route() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    if (p.has('token')) {
      token = p.get('token').trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      p.delete('token');
      const rest = p.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
    }
    if (!token) return signIn('');
    const fn = p.get('fn');
    if (fn) showDetail(fn);
    else showList();
  }
  function signIn(message) {
    startView();
    if (message) {
      token = '';
      sessionStorage.removeItem(TOKEN_KEY);
    }
    show('view-login');
    crumbs([]);
    setConn(null, 'signed out');
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('token-input').focus();
  }

  // ---------- the time range ----------
  function renderRange() {
    $('range').replaceChildren(...RANGES.map((r) => h('button', {
      type: 'button', class: r === range ? 'on' : '', 'data-testid': `range-${r[0]}`, 'aria-pressed': r === range ? 'true' : 'false',
      onclick: () => {
        range = r;
        sessionStorage.setItem(RANGE_KEY, r[0]);
        renderRange();
        route();
      },
      text: r[1],
    })));
  }

  // ---------- functions list ----------
  function showList() {
    show('view-list');
    crumbs([['Functions']]);
    const c = startView();
    let sig = '';
    every(2000, async () => {
      const [list, pools] = await Promise.all([
        api(`/functions?since=${range[0]}`, c.signal),
        api('/pools', c.signal).catch((e) => (missingEndpoint(e) ? null : Promise.reject(e))),
      ]);
      if (c.signal.aborted) return;
      const s = JSON.stringify([list, pools, Math.floor(Date.now() / 60000)]);
      if (s === sig) return;
      sig = s;
      renderFunctions(list.functions || []);
      renderPools(pools);
    }, c);
  }

  function renderFunctions(fns) {
    const body = $('functions-body');
    const live = fns.reduce((n, f) => n + (f.instances || 0), 0);
    $('list-summary').textContent = `${fns.length} function${fns.length === 1 ? '' : 's'} · ${live} live instance${live === 1 ? '' : 's'}`;
    body.replaceChildren(...fns.map((f) => {
      const href = `#fn=${enc(f.name)}`;
      const a = f.activity || {};
      return h('tr', {
        class: 'click', 'data-testid': 'function-row', 'data-name': f.name,
        onclick: (e) => { if (!e.target.closest('a')) location.hash = href.slice(1); },
      },
      h('td', { class: 'name' },
        h('a', { href, 'data-testid': 'function-link', text: f.name }),
        a.failing ? h('span', { class: 'badge fail', 'data-testid': 'failing-badge', title: a.failure || 'its latest invocations failed', text: 'failing' }) : null,
        a.failing && a.failure ? h('span', { class: 'fail-why', 'data-testid': 'failing-why', title: a.failure, text: a.failure }) : null),
      h('td', {}, h('span', { class: 'badge rt', text: f.runtime })),
      h('td', { class: 'num', text: `v${f.version}` }),
      h('td', { class: 'num' }, h('span', { class: `live-count${f.instances ? ' some' : ''}`, text: String(f.instances) })),
      h('td', { class: 'num', 'data-testid': 'fn-invocations', text: fmtNum(a.invocations ?? null) }),
      h('td', { class: `num err-rate${a.errors ? ' bad' : ''}`, 'data-testid': 'fn-error-rate', text: a.invocations ? fmtPct(a.error_rate) : '—' }),
      h('td', { class: 'num', 'data-testid': 'fn-p99', text: fmtMs(a.p99_ms ?? null) }),
      h('td', { class: 'muted', 'data-testid': 'fn-last', title: a.last_invocation || '', text: a.last_invocation ? fmtAgo(a.last_invocation) : `none in ${range[1]}` }),
      asyncCell(f.events),
      h('td', { class: 'url mono' }, h('a', { href: f.url, target: '_blank', rel: 'noopener noreferrer', text: f.url })));
    }));
    const emptyEl = $('functions-empty');
    emptyEl.hidden = fns.length > 0;
    if (!fns.length) emptyEl.replaceChildren(empty('No functions yet', h('span', {}, 'Create one with ', h('code', { text: 'lampyr init DIR' }), ' and ', h('code', { text: 'lampyr deploy DIR' }), '.')));
  }

  // Pending asynchronous events, and dead letters (in red: `lampyr dlq NAME`).
  function asyncCell(ev) {
    const e = ev || {};
    const pending = e.pending || 0;
    const dead = e.dead_letters || 0;
    const age = e.oldest_age_s != null ? ` (oldest ${Math.round(e.oldest_age_s)} s)` : '';
    return h('td', { class: 'num', 'data-testid': 'fn-async', title: `${pending} pending${age} · ${dead} dead letter${dead === 1 ? '' : 's'}` },
      h('span', { 'data-testid': 'fn-queued', text: String(pending) }),
      dead ? h('span', { class: 'badge fail', 'data-testid': 'fn-dead-letters', text: `${dead} DLQ` }) : null);
  }

  function renderPools(pools) {
    const el = $('pools');
    if (!pools || !pools.length) {
      el.replaceChildren(h('div', { class: 'card' }, empty('No runtime pools', 'This server keeps no pre-started sandboxes.')));
      return;
    }
    el.replaceChildren(...pools.map((p) => {
      const bar = h('i');
      bar.style.width = `${p.target ? Math.min(100, (100 * p.ready) / p.target) : 0}%`;
      return h('div', { class: `pool${p.enabled ? '' : ' off'}`, 'data-testid': 'pool', 'data-runtime': p.runtime },
        h('div', { class: 'pool-head' }, h('b', { text: p.runtime }), h('span', { class: 'badge', text: p.enabled ? 'enabled' : 'disabled' })),
        h('div', { class: 'pool-ratio', 'data-testid': 'pool-ready' }, `${p.ready}`, h('small', { text: ` / ${p.target} ready` })),
        h('div', { class: 'meter' }, bar),
        h('div', { class: 'muted small', text: `${p.starting} starting · min ${p.min} · max ${p.max}` }));
    }));
  }

  // ---------- function detail ----------
  function showDetail(name) {
    show('view-detail');
    crumbs([['Functions', '#'], [name]]);
    const c = startView();
    const st = { name, c, inv: [], invSig: null, selected: null, series: null, stats: null, skip: {} };
    $('d-name').textContent = name;
    for (const id of ['d-runtime', 'd-version', 'd-url']) $(id).textContent = '';
    $('test-result').hidden = true;
    $('test-error').hidden = true;
    $('d-states').replaceChildren();
    $('d-facts').replaceChildren();
    $('d-timers').replaceChildren();
    $('d-timers-card').hidden = true;
    $('d-sources').replaceChildren();
    $('d-sources-card').hidden = true;
    $('d-error').hidden = true;
    renderTiles(null);
    for (const id of ['chart-invocations', 'chart-latency', 'chart-instances', 'chart-phases']) $(id).replaceChildren(empty('Loading…'));
    $('invocations-body').replaceChildren();
    $('invocations-empty').hidden = true;
    $('inv-count').textContent = '';
    $('reqlogs').hidden = true;
    detail = st;
    redraw = () => { drawSeries(st); drawPhases(st); };
    every(2000, () => loadInfo(st), c);
    every(5000, () => loadMetrics(st), c);
    startLive(st);
  }

  async function loadInfo(st) {
    let f;
    try {
      f = await api(`/functions/${enc(st.name)}`, st.c.signal);
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) {
        $('d-error').textContent = e.message;
        $('d-error').hidden = false;
        return;
      }
      throw e;
    }
    if (st.c.signal.aborted) return;
    st.info = f;
    $('d-error').hidden = true;
    $('d-runtime').textContent = f.runtime;
    $('d-version').textContent = `version ${f.version}`;
    $('d-url').textContent = f.url;
    $('d-url').href = f.url;
    const counts = f.instance_states || {};
    $('d-states').replaceChildren(...STATES.map((k) => h('div', {
      class: `state ${k}${counts[k] ? '' : ' zero'}`, 'data-testid': `state-${k}`, 'data-count': counts[k] || 0,
    }, h('b', { text: String(counts[k] || 0) }), h('span', { text: k }))));
    const s = f.spec || {};
    const fact = (label, value, id) => h('div', { class: 'fact', 'data-testid': id }, h('span', { text: label }), h('b', { text: value }));
    $('d-facts').replaceChildren(
      fact('Handler', f.handler || s.handler || '—', 'detail-handler'),
      fact('Memory', s.memory_mb != null ? `${s.memory_mb} MB` : '—', 'detail-memory'),
      fact('Timeout', fmtDur(s.timeout_ms), 'detail-timeout'),
      fact('Concurrency', s.concurrency != null ? `${s.concurrency} / instance` : '—', 'detail-concurrency'),
      fact('Instances', `${f.instances} live · ${s.min_instances ?? 0}–${s.max_instances ?? '∞'}`, 'detail-instances'),
      fact('Idle timeout', fmtDur(s.idle_timeout_ms), 'detail-idle'),
      fact('Code', `${fmtBytes(f.code_size)} · ${(f.code_sha256 || '').slice(0, 8)}`, 'detail-code'),
      fact('Updated', fmtAgo(f.updated_at), 'detail-updated'));
    renderTimers(st, f.timers || []);
    renderSources(f.sources || []);
  }

  // Each event source (broker, bucket, database): its state, lag and
  // latest error, as the trigger reports them.
  const SOURCE_STATES = { connected: 'status-ok', retrying: 'status-bad' };
  function renderSources(sources) {
    $('d-sources-card').hidden = !sources.length;
    $('d-sources').replaceChildren(...sources.map((s) => h('tr', { 'data-testid': 'source-row', 'data-trigger': s.trigger, 'data-state': s.state },
      h('td', { class: 'name' }, s.trigger),
      h('td', { text: s.kind }),
      h('td', {}, h('span', { class: SOURCE_STATES[s.state] || 'muted', 'data-testid': 'source-state', text: s.state })),
      h('td', { class: 'mono', text: s.lag != null ? `${s.lag} ${s.lag_unit || ''}` : '—' }),
      h('td', { class: 'mono', text: String(s.delivered || 0) }),
      h('td', { 'data-testid': 'source-error' }, s.last_error
        ? h('span', { title: s.last_error_at || '' }, h('span', { text: s.last_error }), h('span', { class: 'muted small', text: s.last_error_at ? ` ${fmtAgo(s.last_error_at)}` : '' }))
        : h('span', { class: 'muted', text: '—' })))));
  }

  // ---------- timers ----------
  // A date and time in this browser's time zone; the date only when it is
  // not today.
  function fmtWhen(ts) {
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return '';
    if (d.toDateString() === new Date().toDateString()) return fmtClock(d);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(d)}`;
  }
  function fmtIn(ts) {
    const s = (new Date(ts).getTime() - Date.now()) / 1000;
    if (!Number.isFinite(s)) return '';
    if (s < 1) return 'now';
    if (s < 60) return `in ${Math.round(s)} s`;
    if (s < 3600) return `in ${Math.round(s / 60)} min`;
    if (s < 86400) return `in ${+(s / 3600).toFixed(1)} h`;
    return `in ${+(s / 86400).toFixed(1)} d`;
  }
  const TIMER_STATES = { succeeded: 'status-ok', dead_lettered: 'status-bad' };

  // Each timer trigger: its schedule, its next three firings and how its
  // latest firing went (that request's logs one click away).
  function renderTimers(st, timers) {
    $('d-timers-card').hidden = !timers.length;
    $('d-timers').replaceChildren(...timers.map((t) => {
      const last = t.last;
      let lastCell;
      if (!last) {
        lastCell = h('span', { class: 'muted', text: 'not fired yet' });
      } else {
        const state = last.state || '';
        lastCell = h('span', {},
          h('span', { class: TIMER_STATES[state] || 'muted', 'data-testid': 'timer-last-state', text: state ? state.replace(/_/g, ' ') : 'no longer kept' }),
          ' · ',
          h('span', { class: 'mono', title: last.scheduled_at, text: fmtWhen(last.scheduled_at) }),
          h('span', { class: 'muted small', text: ` ${fmtAgo(last.scheduled_at)}` }),
          ' · ',
          h('a', {
            href: '#', class: 'mono', title: last.request_id, 'data-testid': 'timer-last-logs',
            onclick: (e) => { e.preventDefault(); openRequest(st, last.request_id); },
            text: `${shortId(last.request_id)} logs →`,
          }));
      }
      const next = t.enabled && (t.next || []).length
        ? h('ol', { class: 'timer-next' }, ...t.next.map((n) => h('li', { 'data-testid': 'timer-next', 'data-at': n, title: n },
          h('span', { class: 'mono', text: fmtWhen(n) }), h('span', { class: 'muted small', text: ` ${fmtIn(n)}` }))))
        : h('span', { class: 'muted', text: '—' });
      return h('tr', { class: t.enabled ? '' : 'off', 'data-testid': 'timer-row', 'data-name': t.name },
        h('td', { class: 'name' }, t.name,
          t.enabled ? null : h('span', { class: 'badge', 'data-testid': 'timer-disabled', text: 'disabled' })),
        h('td', { 'data-testid': 'timer-schedule' }, h('code', { text: t.cron }), h('span', { class: 'muted small', text: ` ${t.timezone}` })),
        h('td', {}, next),
        h('td', { 'data-testid': 'timer-last', 'data-request-id': last && last.request_id, 'data-state': last && last.state }, lastCell));
    }));
  }

  // Fetches an optional endpoint; a missing one (older server) gives
  // `undefined` and is asked again only every 30 s.
  async function optional(st, key, path) {
    if (st.skip[key] && st.skip[key] > Date.now()) return undefined;
    try {
      return await api(path, st.c.signal);
    } catch (e) {
      if (missingEndpoint(e)) {
        st.skip[key] = Date.now() + 30000;
        return undefined;
      }
      throw e;
    }
  }

  async function loadMetrics(st) {
    const n = enc(st.name);
    const [inv, stats, series, versions] = await Promise.all([
      optional(st, 'inv', `/functions/${n}/invocations?limit=50&since=${range[0]}`),
      optional(st, 'stats', `/functions/${n}/stats?since=${range[0]}`),
      optional(st, 'series', `/functions/${n}/series?since=${range[0]}&step=${range[2]}`),
      optional(st, 'versions', `/functions/${n}/versions`),
    ]);
    if (st.c.signal.aborted) return;
    st.stats = stats;
    st.series = series;
    renderTiles(stats);
    renderVersions(stats, versions);
    drawSeries(st);
    drawPhases(st);
    renderInvocations(st, inv);
  }

  function renderTiles(s) {
    const tile = (label, value, sub, id, cls) => h('div', { class: `tile${cls ? ` ${cls}` : ''}`, 'data-testid': id },
      h('span', { text: label }), h('b', { text: value }), sub ? h('small', { text: sub }) : null);
    const d = (s && s.duration) || {};
    $('d-tiles').replaceChildren(
      tile(`Invocations · ${range[1]}`, s ? fmtNum(s.count) : '—', null, 'tile-count', 'accent'),
      tile('Errors', s ? fmtNum(s.errors) : '—', s ? `${fmtPct(s.error_rate)} error rate` : null, 'tile-errors'),
      tile('Cold starts', s ? fmtNum(s.cold_starts) : '—', s ? `${fmtPct(s.cold_start_rate)} of invocations` : null, 'tile-cold'),
      tile('Duration p50', s && d.count ? fmtMs(d.p50) : '—', s && d.count ? `p95 ${fmtMs(d.p95)}` : null, 'tile-p50'),
      tile('Duration p99', s && d.count ? fmtMs(d.p99) : '—', null, 'tile-p99'),
      tile('GB-seconds', s ? (+s.gb_seconds || 0).toPrecision(3) : '—', null, 'tile-gbs'));
  }

  // Each version's share of the window beside the others (a canary next
  // to the version it may replace), with its aliases and instances.
  function renderVersions(s, list) {
    const by = (s && s.by_version) || {};
    const versions = (list && list.versions) || [];
    const nums = [...new Set([...Object.keys(by).map(Number), ...versions.filter((v) => v.aliases.length || v.latest).map((v) => v.version)])].sort((a, b) => b - a);
    $('d-versions-card').hidden = nums.length < 2;
    $('d-versions').replaceChildren(...nums.map((n) => {
      const v = by[n];
      const info = versions.find((x) => x.version === n);
      const names = info ? [...(info.latest ? ['$LATEST'] : []), ...info.aliases] : [];
      const inst = info ? Object.values(info.instances || {}).reduce((a, b) => a + b, 0) - ((info.instances || {}).queued || 0) : 0;
      return h('tr', { 'data-testid': 'version-row', 'data-version': n },
        h('td', { class: 'mono', text: String(n) }),
        h('td', { text: names.join(', ') }),
        h('td', { class: 'num', text: v ? fmtNum(v.count) : '0' }),
        h('td', { class: `num${v && v.errors ? ' bad' : ''}`, text: v && v.count ? fmtPct(v.error_rate) : '—' }),
        h('td', { class: 'num', text: v && v.count ? fmtPct(v.cold_start_rate) : '—' }),
        h('td', { class: 'num', text: v && v.duration.count ? fmtMs(v.duration.p50) : '—' }),
        h('td', { class: 'num', text: v && v.duration.count ? fmtMs(v.duration.p99) : '—' }),
        h('td', { class: 'num', text: String(inst) }));
    }));
  }

  function renderInvocations(st, data) {
    const body = $('invocations-body');
    const emptyEl = $('invocations-empty');
    if (data === undefined) {
      if (!st.inv.length) {
        body.replaceChildren();
        emptyEl.hidden = false;
        emptyEl.replaceChildren(empty('Invocation records are not available', 'This server does not answer GET /api/v1/functions/NAME/invocations.'));
      }
      return;
    }
    const list = data.invocations || [];
    st.inv = list;
    $('inv-count').textContent = list.length ? `${list.length} most recent` : '';
    emptyEl.hidden = list.length > 0;
    if (!list.length) emptyEl.replaceChildren(empty(`No invocations in the last ${range[1]}`, h('span', {}, 'Call it: ', h('code', { text: `curl ${$('d-url').textContent || '…'}` }))));
    const sig = list.map((r) => `${r.request_id}:${r.status}`).join(',') + st.selected;
    if (sig === st.invSig) return;
    st.invSig = sig;
    body.replaceChildren(...list.map((r) => {
      const ok = r.status === 'ok';
      const open = (e) => { e.preventDefault(); openRequest(st, r.request_id, r); };
      return h('tr', {
        class: `click${st.selected === r.request_id ? ' sel' : ''}`, 'data-testid': 'invocation-row',
        'data-request-id': r.request_id, 'data-start': r.start, 'data-status': r.status, onclick: open,
      },
      h('td', { class: 'mono', title: r.start_time, text: fmtClock(r.start_time) }),
      h('td', { class: 'mono', title: r.request_id, text: shortId(r.request_id) }),
      h('td', {}, h('span', { class: `pill ${r.start}`, 'data-testid': 'start-kind', text: r.start })),
      h('td', { class: ok ? 'status-ok' : 'status-bad', title: r.error_type || '', text: ok ? `ok · ${r.http_status}` : `${r.status.replace(/_/g, ' ')} · ${r.http_status}` }),
      h('td', { class: 'num', text: fmtMs(r.duration_ms) }),
      h('td', { class: 'num', text: `${r.billed_ms} ms` }),
      h('td', { class: 'num', text: r.max_memory_used_mb != null ? `${Math.round(r.max_memory_used_mb)} / ${r.memory_mb} MB` : `— / ${r.memory_mb} MB` }),
      h('td', { class: 'num' }, h('a', { href: '#', 'data-testid': 'invocation-logs-link', onclick: open, text: 'Logs →' })));
    }));
  }

  // Shows one request's phases and log lines below the invocations table.
  async function openRequest(st, id, rec) {
    st.selected = id;
    st.invSig = null;
    for (const tr of document.querySelectorAll('[data-testid="invocation-row"]')) tr.classList.toggle('sel', tr.dataset.requestId === id);
    const panel = $('reqlogs');
    panel.hidden = false;
    panel.dataset.requestId = id;
    $('reqlogs-id').textContent = id;
    const lines = $('reqlogs-lines');
    lines.replaceChildren(empty('Loading…'));
    renderWaterfall(rec);
    panel.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    if (!rec) {
      optional(st, 'one', `/invocations/${enc(id)}`).then((r) => { if (r && st.selected === id) renderWaterfall(r); }, () => {});
    }
    // Log lines can trail the response by a moment: ask a few times.
    for (let i = 0; i < 4 && st.selected === id && !st.c.signal.aborted; i++) {
      let recs;
      try {
        recs = (await api(`/functions/${enc(st.name)}/logs?request_id=${enc(id)}&tail=500`, st.c.signal)).records || [];
      } catch (e) {
        if (st.selected === id && e.name !== 'AbortError') lines.replaceChildren(empty('Could not load the logs', e.message));
        return;
      }
      if (st.selected !== id) return;
      if (recs.length) {
        lines.replaceChildren(...recs.map((r) => logLine(r, false)));
        return;
      }
      lines.replaceChildren(empty('No log lines for this request'));
      await sleep(1000, st.c.signal);
    }
  }

  function renderWaterfall(rec) {
    renderWaterfallInto($('reqlogs-phases'), rec);
  }

  // One invocation's phases as a bar, in `el`.
  function renderWaterfallInto(el, rec) {
    if (!rec || !rec.phases || !Object.keys(rec.phases).length) {
      el.hidden = true;
      return;
    }
    el.hidden = false;
    const parts = PHASES.filter((p) => rec.phases[p] != null);
    const total = parts.reduce((s, p) => s + rec.phases[p], 0) || 1;
    const bar = h('div', { class: 'bar' }, parts.map((p) => {
      const i = h('i', { class: `ph-${p}`, title: `${p} ${fmtMs(rec.phases[p])}` });
      i.style.width = `${(100 * rec.phases[p]) / total}%`;
      return i;
    }));
    el.replaceChildren(bar, h('div', { class: 'keys' },
      rec.start ? h('span', {}, h('span', { class: `pill ${rec.start}`, text: rec.start })) : null,
      parts.map((p) => h('span', { 'data-phase': p }, h('i', { class: `ph-${p}` }), `${p} `, h('b', { text: fmtMs(rec.phases[p]) }))),
      rec.duration_ms != null ? h('span', {}, 'total ', h('b', { text: fmtMs(rec.duration_ms) })) : null,
      rec.error_type ? h('span', { class: 'status-bad', text: rec.error_type }) : null));
  }

  function logLine(r, fresh) {
    const stream = r.stream || 'stdout';
    const level = String(r.level || '').toLowerCase();
    return h('div', {
      class: `log-line ${stream}${level ? ` lvl-${level.startsWith('warn') ? 'warn' : level}` : ''}${fresh ? ' fresh' : ''}`,
      'data-testid': 'log-line', 'data-request-id': r.request_id || '', 'data-stream': stream,
    },
    h('span', { class: 'ts', title: r.ts, text: fmtClock(r.ts, true) }),
    h('span', { class: 'st', text: stream === 'platform' ? 'lampyr' : stream }),
    h('span', { class: 'rid', title: r.request_id ? `request ${r.request_id}` : `instance ${r.instance || ''}`, text: r.request_id ? shortId(r.request_id) : (r.instance || '') }),
    h('span', { class: 'msg', text: r.message }));
  }

  // ---------- live log ----------
  function startLive(st) {
    const box = $('live-log');
    box.replaceChildren(empty('Waiting for log lines…'));
    const live = { paused: false, pending: [], seen: new Set(), keys: [] };
    st.live = live;
    const btn = $('live-pause');
    const label = () => {
      btn.textContent = live.paused ? `Resume${live.pending.length ? ` (${live.pending.length} new)` : ''}` : 'Pause';
      btn.classList.toggle('on', live.paused);
    };
    btn.onclick = () => {
      live.paused = !live.paused;
      if (!live.paused) {
        const p = live.pending;
        live.pending = [];
        append(st, p);
      }
      label();
      liveState(live.mode, live.paused);
    };
    $('live-clear').onclick = () => {
      live.pending = [];
      box.replaceChildren(empty('Cleared; waiting for new lines…'));
      label();
    };
    live.label = label;
    label();
    follow(st);
  }

  function liveState(mode, paused) {
    const el = $('live-state');
    el.className = `live-state${paused ? ' paused' : mode === 'live' || mode === 'polling' ? ' on' : ''}`;
    el.textContent = paused ? 'paused' : mode || '';
  }

  function addLive(st, recs) {
    const live = st.live;
    const fresh = [];
    for (const r of recs) {
      const k = [r.ts, r.instance, r.stream, r.request_id, r.message].join('\u0001');
      if (live.seen.has(k)) continue;
      live.seen.add(k);
      live.keys.push(k);
      fresh.push(r);
    }
    if (live.keys.length > 4000) {
      for (const k of live.keys.splice(0, 2000)) live.seen.delete(k);
    }
    if (!fresh.length) return;
    if (live.paused) {
      live.pending.push(...fresh);
      if (live.pending.length > MAX_LIVE) live.pending.splice(0, live.pending.length - MAX_LIVE);
      live.label();
    } else {
      append(st, fresh);
    }
  }

  function append(st, recs) {
    if (!recs.length) return;
    const box = $('live-log');
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const first = box.firstElementChild;
    if (first && first.classList.contains('empty')) first.remove();
    box.append(...recs.map((r) => logLine(r, true)));
    while (box.childElementCount > MAX_LIVE) box.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // Follows the log as a server-sent event stream read with fetch (an
  // EventSource cannot send the token); falls back to polling when the
  // server does not stream.
  async function follow(st) {
    const { signal } = st.c;
    const path = `${API}/functions/${enc(st.name)}/logs`;
    let delay = 1000;
    while (!signal.aborted) {
      try {
        st.live.mode = 'connecting…';
        liveState(st.live.mode, st.live.paused);
        const r = await fetch(`${path}?follow=1`, { headers: authHeaders(), signal, cache: 'no-store' });
        if (r.status === 401) {
          signIn((await errorOf(r)).message);
          return;
        }
        const type = r.headers.get('content-type') || '';
        if (r.ok && type.includes('text/event-stream')) {
          st.live.mode = 'live';
          liveState('live', st.live.paused);
          // The lines before now; the stream's own lines wait in its buffer.
          const past = await api(`/functions/${enc(st.name)}/logs?tail=100`, signal).catch(() => null);
          if (past) addLive(st, past.records || []);
          delay = 1000;
          await readEvents(r.body, (rec) => addLive(st, [rec]), signal);
        } else if (r.ok || r.status === 400 || r.status === 404) {
          // An older server answers with JSON, or refuses `follow`: poll instead.
          await r.body.cancel().catch(() => {});
          st.live.mode = 'polling';
          liveState('polling', st.live.paused);
          await poll(st);
          return;
        } else {
          await r.body.cancel().catch(() => {});
        }
      } catch (_) {
        if (signal.aborted) return;
      }
      if (signal.aborted) return;
      st.live.mode = 'reconnecting…';
      liveState(st.live.mode, st.live.paused);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async function poll(st) {
    while (!st.c.signal.aborted) {
      try {
        const res = await api(`/functions/${enc(st.name)}/logs?tail=200`, st.c.signal);
        addLive(st, res.records || []);
      } catch (_) { /* shown by the connection indicator */ }
      await sleep(2000, st.c.signal);
    }
  }

  // Parses `text/event-stream` frames; calls `onRecord` with each JSON
  // `data:` payload. Comments (`: keep-alive`) are skipped.
  async function readEvents(body, onRecord, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    try {
      while (!signal.aborted) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let m;
        while ((m = /\r\n\r\n|\n\n|\r\r/.exec(buf))) {
          const frame = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          const data = [];
          for (const line of frame.split(/\r\n|\n|\r/)) {
            if (!line || line[0] === ':') continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let v = i < 0 ? '' : line.slice(i + 1);
            if (v[0] === ' ') v = v.slice(1);
            if (field === 'data') data.push(v);
          }
          if (!data.length) continue;
          let rec;
          try {
            rec = JSON.parse(data.join('\n'));
          } catch (_) {
            continue;
          }
          if (rec && typeof rec === 'object' && 'message' in rec) onRecord(rec);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // ---------- charts ----------
  function legend(id, items) {
    $(id).replaceChildren(...items.map(([label, color, dash]) => {
      const sw = h('i', { class: dash ? 'dash' : '' });
      const item = h('span', {}, sw, h('span', { text: label }));
      item.style.color = color;
      return item;
    }));
  }

  function niceTicks(max, integer) {
    const raw = max / 4;
    const mag = 10 ** Math.floor(Math.log10(raw));
    let step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || 10 * mag;
    if (integer) step = Math.max(1, Math.ceil(step));
    const top = Math.ceil(max / step - 1e-9) * step;
    const ticks = [];
    for (let v = 0; v <= top + 1e-9; v += step) ticks.push(+v.toFixed(6));
    return { top, ticks };
  }

  // A time-series chart: stacked bars, lines (breaking at nulls) or areas.
  // rows: [{t (ms), key: value}], series: [{key, label, color, kind, dash}].
  function timeChart(el, rows, step, series, opt) {
    el.replaceChildren();
    const W = el.clientWidth || 560;
    const H = el.clientHeight || 190;
    const m = { l: 48, r: 10, t: 8, b: 22 };
    // The last hour, or what the server sent if that is wider.
    const t0 = Math.min(rows[0].t, Math.floor((Date.now() - 3600000) / step) * step);
    const t1 = Math.max(rows[rows.length - 1].t + step, t0 + step);
    const pw = W - m.l - m.r;
    const ph = H - m.t - m.b;
    const X = (t) => m.l + ((t - t0) / (t1 - t0)) * pw;
    const slot = (step / (t1 - t0)) * pw;
    const bars = series.filter((s) => s.kind === 'bar');
    const vals = [];
    for (const r of rows) {
      if (bars.length) vals.push(bars.reduce((a, s) => a + (r[s.key] || 0), 0));
      for (const s of series) if (s.kind !== 'bar' && r[s.key] != null) vals.push(r[s.key]);
    }
    const max = Math.max(0, ...vals);
    let Y;
    let ticks;
    if (opt.log) {
      const pos = vals.filter((v) => v > 0);
      const lo = 10 ** Math.floor(Math.log10(Math.min(...pos, max || 1)));
      let hi = 10 ** Math.ceil(Math.log10(max || 1));
      if (hi <= lo) hi = lo * 10;
      const L = Math.log10;
      Y = (v) => m.t + ph - ((L(Math.max(v, lo)) - L(lo)) / (L(hi) - L(lo))) * ph;
      ticks = [];
      for (let v = lo; v <= hi * 1.0001; v *= 10) ticks.push(v);
    } else {
      const n = niceTicks(max || 1, opt.integer);
      Y = (v) => m.t + ph - (v / n.top) * ph;
      ticks = n.ticks;
    }
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' }, el);
    for (const v of ticks) {
      svg('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }, s);
      svg('text', { x: m.l - 6, y: Y(v) + 3.5, 'text-anchor': 'end' }, s).textContent = opt.fmt(v);
    }
    const span = t1 - t0;
    const tick = [60, 300, 600, 900, 1800, 3600].map((x) => x * 1000).find((x) => span / x <= 7) || 3600000;
    for (let t = Math.ceil(t0 / tick) * tick; t <= t1; t += tick) {
      svg('text', { x: X(t), y: H - 5, 'text-anchor': 'middle' }, s).textContent = fmtHM(t);
    }
    svg('line', { class: 'axis', x1: m.l, x2: W - m.r, y1: m.t + ph, y2: m.t + ph }, s);
    if (bars.length) {
      const bw = Math.max(1, slot * 0.72);
      for (const r of rows) {
        let acc = 0;
        for (const b of bars) {
          const v = r[b.key] || 0;
          if (v <= 0) continue;
          svg('rect', { x: X(r.t) + (slot - bw) / 2, y: Y(acc + v), width: bw, height: Math.max(1, Y(acc) - Y(acc + v)), fill: b.color, rx: Math.min(2, bw / 3) }, s);
          acc += v;
        }
      }
    }
    for (const ser of series.filter((x) => x.kind !== 'bar')) {
      const segs = [];
      let cur = null;
      for (const r of rows) {
        const v = r[ser.key];
        if (v == null) { cur = null; continue; }
        if (!cur) segs.push((cur = []));
        cur.push([X(r.t + step / 2), Y(v)]);
      }
      for (const seg of segs) {
        const d = seg.map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join('');
        if (ser.kind === 'area' && seg.length > 1) {
          const base = (m.t + ph).toFixed(1);
          svg('path', { d: `${d}L${seg[seg.length - 1][0].toFixed(1)},${base}L${seg[0][0].toFixed(1)},${base}Z`, fill: ser.color, 'fill-opacity': 0.14 }, s);
        }
        svg('path', { d, fill: 'none', stroke: ser.color, 'stroke-width': 1.8, 'stroke-linejoin': 'round', 'stroke-dasharray': ser.dash ? '4 3' : 'none' }, s);
        if (seg.length === 1) svg('circle', { cx: seg[0][0], cy: seg[0][1], r: 2.6, fill: ser.color }, s);
      }
    }
    // Hover: a guide line and a tooltip with the bucket's values.
    const guide = svg('line', { class: 'guide', y1: m.t, y2: m.t + ph, x1: m.l, x2: m.l, visibility: 'hidden' }, s);
    const hit = svg('rect', { x: m.l, y: m.t, width: pw, height: ph, fill: 'transparent' }, s);
    hit.addEventListener('mousemove', (e) => {
      const box = s.getBoundingClientRect();
      const t = t0 + ((e.clientX - box.left - m.l) / pw) * (t1 - t0) - step / 2;
      const r = rows.reduce((a, b) => (Math.abs(b.t - t) < Math.abs(a.t - t) ? b : a));
      const x = X(r.t + step / 2);
      guide.setAttribute('x1', x);
      guide.setAttribute('x2', x);
      guide.setAttribute('visibility', 'visible');
      showTip(e, `${fmtHM(r.t)}–${fmtHM(r.t + step)}`, series.map((x2) => [x2.label, x2.color, r[x2.key] == null ? '—' : opt.fmt(r[x2.key], true)]));
    });
    hit.addEventListener('mouseleave', () => {
      guide.setAttribute('visibility', 'hidden');
      hideTip();
    });
  }

  function showTip(e, title, rows) {
    const tip = $('tooltip');
    tip.replaceChildren(h('div', { class: 't', text: title }), ...rows.map(([label, color, value]) => {
      const l = h('span', { text: label });
      l.style.color = color;
      return h('div', { class: 'r' }, l, h('b', { text: value }));
    }));
    tip.hidden = false;
    const w = tip.offsetWidth;
    tip.style.left = `${Math.min(window.innerWidth - w - 8, e.clientX + 14)}px`;
    tip.style.top = `${e.clientY + 14}px`;
  }
  function hideTip() {
    $('tooltip').hidden = true;
  }

  function drawSeries(st) {
    const ids = ['chart-invocations', 'chart-latency', 'chart-instances'];
    const sr = st.series;
    legend('lg-inv', [['ok', C.accent], ['errors', C.error]]);
    legend('lg-lat', [['warm p50', C.accent], ['warm p99', C.accent, true], ['cold p50', C.cold], ['cold p99', C.cold, true]]);
    legend('lg-ins', [['live instances', C.violet]]);
    if (sr === undefined || !sr || !(sr.points || []).length) {
      const msg = sr === undefined
        ? empty('No time series', 'This server does not answer GET /api/v1/functions/NAME/series.')
        : empty(`No data in the last ${range[1]}`);
      for (const id of ids) $(id).replaceChildren(msg.cloneNode(true));
      return;
    }
    const step = (sr.step_seconds || 60) * 1000;
    const rows = sr.points.map((p) => ({ ...p, t: Date.parse(p.t), ok: Math.max(0, (p.invocations || 0) - (p.errors || 0)) }));
    const count = (v, tip) => (tip ? fmtNum(v) : Number.isInteger(v) ? String(v) : v.toFixed(1));
    timeChart($('chart-invocations'), rows, step, [
      { key: 'ok', label: 'ok', color: C.accent, kind: 'bar' },
      { key: 'errors', label: 'errors', color: C.error, kind: 'bar' },
    ], { fmt: count, integer: true });
    const lat = ['warm_p50_ms', 'warm_p99_ms', 'cold_p50_ms', 'cold_p99_ms'];
    if (rows.some((r) => lat.some((k) => r[k] != null))) {
      timeChart($('chart-latency'), rows, step, [
        { key: 'warm_p50_ms', label: 'warm p50', color: C.accent, kind: 'line' },
        { key: 'warm_p99_ms', label: 'warm p99', color: C.accent, kind: 'line', dash: true },
        { key: 'cold_p50_ms', label: 'cold p50', color: C.cold, kind: 'line' },
        { key: 'cold_p99_ms', label: 'cold p99', color: C.cold, kind: 'line', dash: true },
      ], { log: true, fmt: (v) => fmtMs(v) });
    } else {
      $('chart-latency').replaceChildren(empty(`No invocations in the last ${range[1]}`));
    }
    if (rows.some((r) => r.instances != null)) {
      timeChart($('chart-instances'), rows, step, [
        { key: 'instances', label: 'live instances', color: C.violet, kind: 'area' },
      ], { fmt: count, integer: true });
    } else {
      $('chart-instances').replaceChildren(empty('No samples yet'));
    }
  }

  // Cold-start phases: p50 and p99 per phase as horizontal bars.
  function drawPhases(st) {
    const el = $('chart-phases');
    legend('lg-ph', [['p50', C.accent], ['p99', C.pooled]]);
    const s = st.stats;
    if (s === undefined) {
      el.replaceChildren(empty('No statistics', 'This server does not answer GET /api/v1/functions/NAME/stats.'));
      return;
    }
    const phases = (s && s.phases) || {};
    const rows = COLD_PHASES.filter((p) => phases[p] && phases[p].count);
    if (!rows.length) {
      el.replaceChildren(empty(`No cold starts in the last ${range[1]}`));
      return;
    }
    el.replaceChildren();
    const W = el.clientWidth || 560;
    const H = el.clientHeight || 190;
    const m = { l: 64, r: 120, t: 6, b: 6 };
    const rh = (H - m.t - m.b) / COLD_PHASES.length;
    const max = Math.max(...rows.map((p) => phases[p].p99), 0.001);
    const X = (v) => (v / max) * (W - m.l - m.r);
    const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' }, el);
    COLD_PHASES.forEach((p, i) => {
      const y = m.t + i * rh;
      svg('text', { x: m.l - 8, y: y + rh / 2 + 4, 'text-anchor': 'end' }, g).textContent = p;
      svg('line', { class: 'grid', x1: m.l, x2: m.l, y1: y + 3, y2: y + rh - 3 }, g);
      const v = phases[p];
      if (!v || !v.count) {
        svg('text', { x: m.l + 6, y: y + rh / 2 + 4 }, g).textContent = '—';
        return;
      }
      const bh = Math.min(9, rh * 0.3);
      [[v.p50, C.accent, y + rh / 2 - bh - 1], [v.p99, C.pooled, y + rh / 2 + 1]].forEach(([val, color, by], j) => {
        const r = svg('rect', { x: m.l, y: by, width: Math.max(1.5, X(val)), height: bh, fill: color, rx: 2 }, g);
        svg('title', {}, r).textContent = `${p} ${j ? 'p99' : 'p50'}: ${fmtMs(val)} (${v.count} samples)`;
      });
      const label = svg('text', { class: 'val', x: m.l + Math.max(X(v.p50), X(v.p99)) + 6, y: y + rh / 2 + 4 }, g);
      label.textContent = `${fmtMs(v.p50)} · ${fmtMs(v.p99)}`;
    });
  }

  // ---------- the test panel ----------
  let testMode = 'event';
  function setTestMode(mode) {
    testMode = mode;
    for (const b of document.querySelectorAll('#test-panel .tab')) b.classList.toggle('on', b.dataset.mode === mode);
    $('test-event').hidden = mode !== 'event';
    $('test-http').hidden = mode !== 'http';
  }
  // Server-Timing (`queue;dur=0.004, init;dur=1.2, …`) as phase times.
  function parseTiming(v) {
    const phases = {};
    for (const part of (v || '').split(',')) {
      const m = /^\s*([a-z]+)\s*;\s*dur=([0-9.]+)/.exec(part);
      if (m) phases[m[1]] = Number(m[2]);
    }
    return phases;
  }
  // Each run of the test panel; an older run stops updating the panel.
  let testRun = 0;
  async function runTest() {
    const st = detail;
    if (!st) return;
    const run = ++testRun;
    const err = $('test-error');
    err.hidden = true;
    let r;
    const started = performance.now();
    try {
      if (testMode === 'event') {
        const text = $('test-json').value.trim() || '{}';
        try { JSON.parse(text); } catch (e) {
          err.textContent = `The event is not valid JSON: ${e.message}`;
          err.hidden = false;
          return;
        }
        r = await fetch(`${API}/functions/${enc(st.name)}/invoke`, { method: 'POST', headers: { ...authHeaders(), 'content-type': 'application/json' }, body: text });
      } else {
        let path = $('test-path').value.trim();
        if (path && !path.startsWith('/') && !path.startsWith('?')) path = `/${path}`;
        const method = $('test-method').value;
        const headers = {};
        // A function behind a token gets its own trigger token, never the API's.
        if (st.info && st.info.trigger_token) headers.Authorization = `Bearer ${st.info.trigger_token}`;
        const body = $('test-body').value;
        r = await fetch(`/fn/${enc(st.name)}${path}`, { method, headers, body: method === 'GET' || method === 'DELETE' || !body ? undefined : body });
      }
    } catch (e) {
      err.textContent = `The request failed: ${e.message}`;
      err.hidden = false;
      return;
    }
    const ms = performance.now() - started;
    const text = await r.text();
    const rid = r.headers.get('x-lampyr-request-id');
    const start = r.headers.get('x-lampyr-start');
    const phases = parseTiming(r.headers.get('server-timing'));
    $('test-result').hidden = false;
    $('test-status').replaceChildren(h('span', {},
      h('b', { class: `code ${r.ok ? 'ok' : 'bad'}`, 'data-testid': 'test-code', text: `${r.status}` }),
      ` · ${fmtMs(ms)} round trip`,
      start ? h('span', {}, ' · ', h('span', { class: `pill ${start}`, 'data-testid': 'test-start', text: start })) : null,
      r.headers.get('x-lampyr-function-error') ? h('span', { class: 'status-bad', text: ' · function error' }) : null,
      rid ? h('span', { class: 'muted mono', title: rid, text: ` · ${shortId(rid)}` }) : null));
    renderWaterfallInto($('test-phases'), { phases });
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* as it came */ }
    $('test-out').textContent = shown;
    const logs = $('test-logs');
    logs.replaceChildren(empty('Waiting for its log lines…'));
    if (!rid) return;
    // Log lines are written within moments of the response (longer on a
    // busy host): show what has arrived until the REPORT line has.
    const until = performance.now() + 20000;
    while (detail === st && run === testRun && performance.now() < until) {
      let recs = [];
      try {
        recs = (await api(`/functions/${enc(st.name)}/logs?request_id=${enc(rid)}`, st.c.signal)).records || [];
      } catch (_) { /* not yet */ }
      if (run !== testRun) return;
      if (recs.length) logs.replaceChildren(...recs.map((x) => logLine(x, false)));
      if (recs.some((x) => x.stream === 'platform' && /^REPORT /.test(x.message))) return;
      await sleep(200, st.c.signal);
    }
  }

  // ---------- start ----------
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token-input').value.trim();
    if (!v) return;
    token = v;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-input').value = '';
    route();
  });
  $('signout').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    signIn('');
  });
  for (const b of document.querySelectorAll('#test-panel .tab')) b.addEventListener('click', () => setTestMode(b.dataset.mode));
  $('test-run').addEventListener('click', () => { runTest(); });
  renderRange();
  $('reqlogs-close').addEventListener('click', () => {
    $('reqlogs').hidden = true;
    if (detail) {
      detail.selected = null;
      detail.invSig = null;
    }
    for (const tr of document.querySelectorAll('[data-testid="invocation-row"].sel')) tr.classList.remove('sel');
  });
  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => redraw && redraw(), 150);
  });
  window.addEventListener('hashchange', route);
  route();
})();
