// Bifrost status page. It polls api/state (relative to the page) every
// second and updates the page in place: no framework, no reload, and no
// innerHTML, so nothing from the feed is ever parsed as markup. When the
// server is unreachable (a restart, a config reload) it says so and keeps
// polling.
(function () {
  'use strict';

  const STATE_URL = 'api/state';
  const WINDOW_MS = 5 * 60 * 1000;
  const SEVERITIES = ['low', 'medium', 'high', 'critical'];
  const ICONS = {
    healthy: '\u2714', // check mark
    half_open: '\u25D0', // half circle
    open: '\u2298', // circled slash
    throttled: '\u23F8', // pause
    unhealthy: '\u25B2', // triangle
    isolated: '\u2716', // cross
    recovery_failed: '\u203C', // double exclamation
    failing: '!', // healthy by its breaker and probes, but failing tries
  };
  const BREAKER_WORDS = { closed: 'closed', half_open: 'half-open', open: 'open' };
  const DURATIONS = [
    ['30s', '30 seconds'],
    ['1m', '1 minute'],
    ['5m', '5 minutes'],
    ['15m', '15 minutes'],
    ['1h', '1 hour'],
    ['', 'until restored'],
  ];

  const ui = {
    refreshMs: 1000,
    timer: 0,
    busy: false,
    actions: null, // whether the pool tables were built with the actions column
    statuses: null, // worker id -> status, to announce changes
    pools: new Map(), // pool name -> view
    charts: new Map(), // container -> chart view
    kpis: null,
    seq: 0,
    lastOk: 0,
  };

  const numberFmt = new Intl.NumberFormat();

  // ---- small DOM helpers ------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  // setText changes a node's text only when it differs, so that live
  // regions announce real changes only and the DOM is not churned.
  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    value = String(value);
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }

  // replaceKids replaces a node's children with nodes, unless they would
  // render the same text and classes (cheap check, avoids flicker).
  function replaceKids(node, ...kids) {
    const probe = el('div', {}, ...kids);
    if (probe.innerHTML === node.innerHTML) return; // reading innerHTML is safe; we never assign it
    node.replaceChildren(...probe.childNodes);
  }

  // Stacked tables change their display on narrow screens, which makes
  // some browsers forget the table semantics: spell them out.
  function tableRoles(table) {
    table.setAttribute('role', 'table');
    for (const g of table.querySelectorAll('thead, tbody')) g.setAttribute('role', 'rowgroup');
    for (const tr of table.querySelectorAll('tr')) tr.setAttribute('role', 'row');
    for (const th of table.querySelectorAll('thead th')) th.setAttribute('role', 'columnheader');
  }

  function cell(tag, label, attrs) {
    const c = el(tag, Object.assign({ 'data-label': label }, attrs || {}));
    c.setAttribute('role', tag === 'th' ? 'rowheader' : 'cell');
    if (tag === 'th') c.setAttribute('scope', 'row');
    return c;
  }

  // ---- formatting -------------------------------------------------------

  function fmtInt(n) {
    return numberFmt.format(n || 0);
  }

  function fmtRate(x) {
    x = x || 0;
    if (x === 0) return '0';
    if (x >= 100) return numberFmt.format(Math.round(x));
    if (x >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }

  function fmtDur(ms) {
    if (ms < 1000) return 'under 1s';
    let s = Math.round(ms / 1000);
    if (s < 60) return s + 's';
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return m + 'm ' + String(s).padStart(2, '0') + 's';
    const h = Math.floor(m / 60);
    m %= 60;
    return h + 'h ' + String(m).padStart(2, '0') + 'm';
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleTimeString();
  }

  function plural(n, one, many) {
    return fmtInt(n) + ' ' + (n === 1 ? one : many);
  }

  function words(s) {
    return String(s || '').replace(/_/g, ' ');
  }

  // ---- polling ----------------------------------------------------------

  async function poll() {
    if (ui.busy) return;
    ui.busy = true;
    clearTimeout(ui.timer);
    const ctl = new AbortController();
    const timeout = setTimeout(() => ctl.abort(), 8000);
    try {
      const res = await fetch(STATE_URL, {
        cache: 'no-store',
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
        signal: ctl.signal,
      });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const data = await res.json();
      render(data);
      ui.lastOk = Date.now();
      setConn(true);
    } catch (err) {
      setConn(false, err);
    } finally {
      clearTimeout(timeout);
      ui.busy = false;
      const wait = document.hidden ? Math.max(5000, ui.refreshMs) : ui.refreshMs;
      ui.timer = setTimeout(poll, wait);
    }
  }

  function setConn(ok, err) {
    const conn = $('conn');
    if (ok) {
      setAttr(conn, 'class', 'conn conn-live');
      setText($('conn-text'), 'Live');
      setText($('updated'), 'Updated ' + new Date(ui.lastOk).toLocaleTimeString());
      return;
    }
    setAttr(conn, 'class', 'conn conn-lost');
    const why = err && err.name === 'AbortError' ? 'timed out' : (err && err.message) || 'unreachable';
    setText($('conn-text'), 'Connection lost (' + why + '), retrying');
    setText($('updated'), ui.lastOk ? 'Last update ' + new Date(ui.lastOk).toLocaleTimeString() : 'No data yet');
  }

  // ---- rendering --------------------------------------------------------

  function render(data) {
    if (data.refresh_ms > 0) ui.refreshMs = Math.max(500, data.refresh_ms);
    const nowMs = Date.parse(data.now) || Date.now();
    renderMode(!!data.actions);
    renderProblem(data.pools || [], nowMs);
    renderKpis(data.stats || {}, data.series || {});
    renderChart($('chart-total'), $('chart-total-caption'), data.series || {}, nowMs, 'all pools');
    renderSeverities(data.stats || {});
    renderKinds(data.stats || {});
    renderPools(data.pools || [], nowMs);
    renderErrors(data.errors || [], nowMs);
    announceChanges(data.pools || []);
    document.documentElement.dataset.ready = '1';
  }

  function renderMode(actions) {
    const mode = $('mode');
    if (actions) {
      setAttr(mode, 'class', 'mode mode-actions');
      setText(mode, 'Operator actions are enabled: each worker row can isolate the worker for a chosen time, restore it, or reset its breaker.');
    } else {
      setAttr(mode, 'class', 'mode mode-readonly');
      setText(mode, 'Read-only: operator actions are disabled. Enable them with "actions" in the bifrost_status block.');
    }
    if (ui.actions !== actions) {
      // the tables gain or lose their actions column: rebuild them
      ui.actions = actions;
      ui.pools.clear();
      $('pool-list').replaceChildren();
    }
  }

  function latest(series, key) {
    const a = (series && series[key]) || [];
    return a.length ? a[a.length - 1] : 0;
  }

  function renderKpis(stats, series) {
    if (!ui.kpis) {
      ui.kpis = {};
      const defs = [
        ['healthy', 'Healthy workers', 'Workers that can take requests now (breaker not open, not isolated, not throttled), of all workers'],
        ['isolated', 'Isolated workers', 'Workers taken out of rotation by their probes, by outlier detection, by repeated breaker trips or by an operator'],
        ['rps', 'Tries/s', 'Tries sent to workers per second over the last second, retries and hedges included'],
        ['eps', 'Failed tries/s', 'Tries per second that failed (a connection error, a timeout, a 5xx); most are retried on another worker and never reach a client'],
        ['errors', 'Errors recorded', 'Classified failures of tries since the pools started, as the error history counts them'],
        ['retries', 'Retries', 'Tries sent again to another worker after a failed try, since the pools started'],
        ['trips', 'Breaker trips', 'Times a worker\'s circuit breaker opened, since the pools started'],
        ['recoveries', 'Recoveries (succeeded / tried)', 'Recovery actions on failing workers (restarting a worker\'s proxy, dropping its connections) that succeeded, of those tried, since the pools started; 0 / 0 means none was needed'],
      ];
      const list = $('kpis');
      for (const [key, label, tip] of defs) {
        const dd = el('dd', { text: '–', title: tip });
        const wrap = el('div', {}, el('dt', { text: label, title: tip }), dd);
        list.append(wrap);
        ui.kpis[key] = { dd, wrap };
      }
    }
    const k = ui.kpis;
    const total = stats.total_workers || 0;
    const healthy = stats.healthy_workers || 0;
    const isolated = stats.isolated_workers || 0;
    setText(k.healthy.dd, fmtInt(healthy) + ' of ' + fmtInt(total));
    setAttr(k.healthy.wrap, 'class', healthy < total ? 'bad' : '');
    setText(k.isolated.dd, fmtInt(isolated));
    setAttr(k.isolated.wrap, 'class', isolated > 0 ? 'bad' : '');
    setText(k.rps.dd, fmtRate(latest(series, 'requests')));
    setText(k.eps.dd, fmtRate(latest(series, 'errors')));
    setAttr(k.eps.wrap, 'class', latest(series, 'errors') > 0 ? 'bad' : '');
    setText(k.errors.dd, fmtInt(stats.total_errors));
    setText(k.retries.dd, fmtInt(stats.retries));
    setText(k.trips.dd, fmtInt(stats.breaker_trips));
    setText(k.recoveries.dd, fmtInt(stats.recovery_successes) + ' / ' + fmtInt(stats.recovery_attempts));
  }

  // renderChart draws requests and errors per second over the last five
  // minutes as two lines (solid and dashed, so colour is not needed to
  // tell them apart), and says the same in words in the caption.
  function renderChart(box, caption, series, nowMs, what) {
    const W = 600;
    const H = 100;
    let view = ui.charts.get(box);
    if (!view) {
      const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img' });
      const grid = svg('g', {});
      for (const y of [H * 0.05, H * 0.5, H - 1]) {
        grid.append(svg('line', { x1: 0, x2: W, y1: y, y2: y, class: 'grid', 'vector-effect': 'non-scaling-stroke' }));
      }
      const req = svg('path', { class: 'line-req', d: '', 'vector-effect': 'non-scaling-stroke' });
      const err = svg('path', { class: 'line-err', d: '', 'vector-effect': 'non-scaling-stroke' });
      root.append(grid, req, err);
      box.replaceChildren(root);
      view = { root, req, err };
      ui.charts.set(box, view);
    }
    const t = series.t || [];
    const rq = series.requests || [];
    const er = series.errors || [];
    const step = series.step_ms || 1000;
    let peak = 0;
    let peakErr = 0;
    for (let i = 0; i < t.length; i++) {
      peak = Math.max(peak, rq[i] || 0);
      peakErr = Math.max(peakErr, er[i] || 0);
    }
    const top = Math.max(1, peak, peakErr) * 1.1;
    // The x axis spans the last five minutes, or less while the series
    // is younger (at least 30 seconds), so a fresh page is not one
    // sliver at the right edge.
    const span = Math.min(WINDOW_MS, Math.max(30000, t.length ? nowMs - t[0] : 0));
    const start = nowMs - span;
    const path = (vals) => {
      let d = '';
      let prev = -Infinity;
      for (let i = 0; i < t.length; i++) {
        if (t[i] < start) continue;
        const x = ((t[i] - start) / span) * W;
        const y = H - ((vals[i] || 0) / top) * (H - 4) - 1;
        // a gap of several steps (nobody sampled) breaks the line
        d += (t[i] - prev > 3 * step ? 'M' : 'L') + x.toFixed(1) + ' ' + y.toFixed(1) + ' ';
        prev = t[i];
      }
      return d.trim();
    };
    setAttr(view.req, 'd', path(rq));
    setAttr(view.err, 'd', path(er));
    let text;
    if (t.length === 0) {
      text = 'No samples yet for ' + what + '; the chart fills in as requests arrive.';
    } else {
      const over = span >= WINDOW_MS ? 'Last 5 minutes' : 'Last ' + fmtDur(span);
      text = over + ', ' + what + '. Requests per second (solid line): now ' + fmtRate(rq[rq.length - 1]) +
        ', peak ' + fmtRate(peak) + '. Errors per second (dashed line): now ' + fmtRate(er[er.length - 1]) +
        ', peak ' + fmtRate(peakErr) + '.';
    }
    setAttr(view.root, 'aria-label', text);
    if (caption) {
      if (!caption.firstChild || caption.dataset.built !== '1') {
        caption.dataset.built = '1';
        caption.replaceChildren(
          el('span', { class: 'key-req', 'aria-hidden': 'true' }), 'requests/s ',
          el('span', { class: 'key-err', 'aria-hidden': 'true' }), 'errors/s \u00b7 ',
          el('span', { class: 'chart-text' }));
      }
      setText(caption.querySelector('.chart-text'), text);
    }
  }

  function renderSeverities(stats) {
    $('by-severity').hidden = false;
    const tbody = $('by-severity').tBodies[0];
    const by = stats.by_severity || {};
    if (tbody.rows.length !== SEVERITIES.length) {
      tbody.replaceChildren(...SEVERITIES.map((s) => {
        const tr = el('tr', { 'data-severity': s },
          el('th', { scope: 'row' }, el('span', { class: 'sev sev-' + s, text: s })),
          el('td', { class: 'num', text: '0' }));
        return tr;
      }));
    }
    SEVERITIES.forEach((s, i) => {
      const tr = tbody.rows[i];
      const n = by[s] || 0;
      setText(tr.cells[1], fmtInt(n));
      setAttr(tr, 'class', n ? '' : 'zero');
    });
  }

  function renderKinds(stats) {
    const tbody = $('by-kind').tBodies[0];
    const kinds = Object.entries(stats.by_kind || {}).filter(([, n]) => n > 0);
    kinds.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const key = kinds.map(([k, n]) => k + '=' + n).join(',');
    if (tbody.dataset.key !== key) {
      tbody.dataset.key = key;
      tbody.replaceChildren(...kinds.map(([k, n]) => el('tr', {},
        el('th', { scope: 'row' }, el('code', { text: k })),
        el('td', { class: 'num', text: fmtInt(n) }))));
    }
    $('by-kind').hidden = kinds.length === 0;
    $('no-kinds').hidden = kinds.length > 0;
  }

  // ---- pools and workers -------------------------------------------------

  const COLUMNS = ['Worker', 'State', 'Breaker', 'Isolation', 'In flight', 'Requests/s', 'Errors/s', 'Totals'];
  const COLUMN_TIPS = {
    Worker: 'The worker\'s id (pool and upstream) and its upstream address',
    State: 'Whether the worker takes requests now: its breaker, probes, isolation and throttling, and "failing" when its recent tries fail though nothing took it out yet',
    Breaker: 'The worker\'s circuit breaker: closed (serving), open (refusing), half-open (letting a few requests test it); its successes and failures count tries',
    Isolation: 'Whether the worker is out of rotation, why, and until when',
    'In flight': 'Tries waiting for this worker\'s answer now',
    'Requests/s': 'Tries sent to this worker per second over the last 5 seconds, retries included',
    'Errors/s': 'Tries of this worker that failed, per second over the last 5 seconds',
    Totals: 'Tries sent to this worker, and how many failed, since it started',
    Actions: 'Operator actions on this worker',
  };

  function poolView(name) {
    let v = ui.pools.get(name);
    if (v) return v;
    const id = 'pool-' + ++ui.seq;
    const h = el('h3', { id: id + '-h' }, 'Pool ', el('code', { text: name }));
    const summary = el('p', { class: 'pool-summary' });
    const alert = el('p', { class: 'pool-alert', role: 'status' });
    const chartBox = el('div', { class: 'chart-box' });
    const chartCap = el('figcaption', {});
    const headRow = el('tr', {});
    const cols = ui.actions ? COLUMNS.concat(['Actions']) : COLUMNS;
    for (const c of cols) {
      const numeric = c === 'In flight' || c === 'Requests/s' || c === 'Errors/s' || c === 'Totals';
      headRow.append(el('th', { scope: 'col', class: numeric ? 'num' : null, text: c, title: COLUMN_TIPS[c] || null }));
    }
    const tbody = el('tbody', {});
    const table = el('table', { class: 'workers stack' },
      el('caption', { text: 'Workers of pool ' + name }),
      el('thead', {}, headRow),
      tbody);
    tableRoles(table);
    const section = el('section', { class: 'pool', 'aria-labelledby': id + '-h', 'data-pool': name },
      el('div', { class: 'pool-head' }, h, summary, alert),
      el('figure', { class: 'chart' }, chartBox, chartCap),
      el('div', { class: 'table-wrap' }, table));
    v = { section, summary, alert, chartBox, chartCap, tbody, rows: new Map() };
    ui.pools.set(name, v);
    return v;
  }

  function renderPools(pools, nowMs) {
    const list = $('pool-list');
    $('no-pools').hidden = pools.length > 0;
    const seen = new Set();
    pools.forEach((p, i) => {
      seen.add(p.name);
      const v = poolView(p.name);
      if (list.children[i] !== v.section) list.insertBefore(v.section, list.children[i] || null);
      const st = p.stats || {};
      const ws = p.workers || [];
      const healthy = ws.filter((w) => w.status === 'healthy').length;
      const isolated = ws.filter((w) => w.isolated).length;
      setText(v.summary, healthy + ' of ' + ws.length + ' workers healthy \u00b7 ' + isolated + ' isolated \u00b7 ' +
        outcomeText(p.outcomes) + ' \u00b7 since start: ' + plural(st.total_errors || 0, 'error', 'errors') + ' recorded, ' +
        plural(st.retries || 0, 'retry', 'retries'));
      setText(v.alert, st.dynamic_error ? 'Upstream lookups failing (the last workers keep serving): ' + st.dynamic_error : '');
      renderChart(v.chartBox, v.chartCap, p.series || {}, nowMs, 'pool ' + p.name);
      renderWorkers(v, ws);
    });
    for (const [name, v] of ui.pools) {
      if (!seen.has(name)) {
        v.section.remove();
        ui.pools.delete(name);
      }
    }
  }

  function renderWorkers(v, workers) {
    const seen = new Set();
    workers.forEach((w, i) => {
      seen.add(w.id);
      let row = v.rows.get(w.id);
      if (!row) {
        row = workerRow(w);
        v.rows.set(w.id, row);
      }
      if (v.tbody.rows[i] !== row.tr) v.tbody.insertBefore(row.tr, v.tbody.rows[i] || null);
      updateWorkerRow(row, w);
    });
    for (const [id, row] of v.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        v.rows.delete(id);
      }
    }
  }

  function workerRow(w) {
    const tr = el('tr', { 'data-worker': w.id, role: 'row' });
    const c = {
      worker: cell('th', 'Worker'),
      state: cell('td', 'State', { class: 'state' }),
      breaker: cell('td', 'Breaker'),
      isolation: cell('td', 'Isolation'),
      inflight: cell('td', 'In flight', { class: 'num' }),
      rps: cell('td', 'Requests/s', { class: 'num' }),
      eps: cell('td', 'Errors/s', { class: 'num' }),
      totals: cell('td', 'Totals', { class: 'num' }),
    };
    c.worker.append(el('span', { class: 'mono', text: w.id }), el('span', { class: 'small mono', text: w.backup ? w.upstream + ' (backup)' : w.upstream }));
    tr.append(c.worker, c.state, c.breaker, c.isolation, c.inflight, c.rps, c.eps, c.totals);
    const row = { tr, c, buttons: null };
    if (ui.actions) {
      const td = cell('td', 'Actions');
      row.buttons = actionControls(w, td);
      tr.append(td);
    }
    return row;
  }

  function actionControls(w, td) {
    const selId = 'dur-' + ++ui.seq;
    const select = el('select', { id: selId });
    for (const [value, label] of DURATIONS) select.append(el('option', { value, text: label }));
    select.value = '5m';
    // the accessible names start with the visible words and add the worker
    const isolate = el('button', { type: 'button', class: 'danger', 'data-action': 'isolate', text: 'Isolate', 'aria-label': 'Isolate worker ' + w.id });
    const restore = el('button', { type: 'button', 'data-action': 'restore', text: 'Restore', 'aria-label': 'Restore worker ' + w.id });
    const reset = el('button', { type: 'button', 'data-action': 'reset', text: 'Reset breaker', 'aria-label': 'Reset breaker of worker ' + w.id });
    isolate.addEventListener('click', () => act(w.id, 'isolate', select.value, isolate));
    restore.addEventListener('click', () => act(w.id, 'restore', '', restore));
    reset.addEventListener('click', () => act(w.id, 'reset', '', reset));
    const group = el('div', { class: 'actions', role: 'group', 'aria-label': 'Actions for worker ' + w.id },
      el('label', { for: selId, text: 'Isolate for' }), select, isolate, restore, reset);
    td.append(group);
    return { isolate, restore, reset };
  }

  function updateWorkerRow(row, w) {
    const c = row.c;
    setAttr(row.tr, 'data-status', w.status);

    // state: colour, symbol and words, plus what else is going on
    const notes = [];
    if (w.status !== 'unhealthy' && w.probe_healthy === false) notes.push('probe failing');
    if (w.throttled) notes.push('throttled for ' + fmtDur(w.throttle_left_ms || 0));
    if (!w.isolated && w.slow_start_weight > 0 && w.slow_start_weight < 1) {
      notes.push('ramping up: ' + Math.round(w.slow_start_weight * 100) + '% of its traffic');
    }
    if (w.consecutive_failures > 0) notes.push(plural(w.consecutive_failures, 'failure', 'failures') + ' in a row');
    // a worker its breaker and probes call healthy can still be failing
    // tries (fewer than its breaker's threshold in a row): say so
    const shown = failingShare(w) > 0 ? 'failing' : w.status;
    const shownText = shown === 'failing' ? 'failing ' + pct(failingShare(w)) + ' of tries' : w.status_text || words(w.status);
    setAttr(row.tr, 'data-shown', shown);
    replaceKids(c.state,
      el('span', { class: 'badge st-' + shown },
        el('span', { 'aria-hidden': 'true', text: ICONS[shown] || '?' }),
        el('span', { text: shownText })),
      notes.length ? el('span', { class: 'note', text: notes.join(' \u00b7 ') }) : null);

    // breaker
    const b = w.breaker || {};
    const counts = b.counts || {};
    const bnotes = [];
    if (counts.consecutive_failures) bnotes.push(plural(counts.consecutive_failures, 'failure', 'failures') + ' in a row');
    if (b.state === 'half_open') bnotes.push(plural(counts.consecutive_successes || 0, 'probe success', 'probe successes'));
    if (b.state === 'open' && w.breaker_retry_in_ms !== undefined) bnotes.push('half-open in ' + fmtDur(w.breaker_retry_in_ms));
    bnotes.push(plural(counts.total_successes || 0, 'success', 'successes') + ', ' +
      plural(counts.total_failures || 0, 'failure', 'failures'));
    if (b.trips) bnotes.push(plural(b.trips, 'trip', 'trips') + ' in all');
    replaceKids(c.breaker,
      el('span', { class: 'breaker-' + (b.state || 'closed'), text: BREAKER_WORDS[b.state] || words(b.state) || 'closed' }),
      el('span', { class: 'note', text: bnotes.join(' \u00b7 ') }));

    // isolation
    if (w.isolated || w.recovery_failed) {
      let left;
      if (w.recovery_failed) left = 'until a probe passes or an operator restores it';
      else left = w.isolation_text || 'until restored';
      replaceKids(c.isolation,
        el('span', { class: 'reason', text: w.isolation_reason || 'isolated' }),
        el('span', { class: 'note', text: left + (w.ejections ? ' \u00b7 ' + plural(w.ejections, 'ejection', 'ejections') : '') +
          (w.recovery_attempts ? ' \u00b7 ' + plural(w.recovery_attempts, 'failed recovery', 'failed recoveries') : '') }));
    } else {
      replaceKids(c.isolation,
        el('span', { class: 'muted', text: 'in rotation' }),
        w.ejections ? el('span', { class: 'note', text: plural(w.ejections, 'recent ejection', 'recent ejections') }) : null);
    }

    setText(c.inflight, fmtInt(w.in_flight));
    setText(c.rps, fmtRate(w.request_rate));
    setText(c.eps, fmtRate(w.error_rate));
    replaceKids(c.totals,
      el('span', { text: plural(w.requests || 0, 'request', 'requests') }),
      el('span', { class: 'note', text: fmtInt(w.failures || 0) + ' failed' }));

    if (row.buttons) {
      const out = w.isolated || w.recovery_failed;
      row.buttons.isolate.disabled = !!out;
      row.buttons.restore.disabled = !out;
    }
  }

  // ---- the problem line ---------------------------------------------------

  // failingShare is the share of a healthy worker's recent tries that
  // failed (its last 5 seconds), 0 for a worker in any other state.
  function failingShare(w) {
    if (w.status !== 'healthy' || !(w.error_rate > 0) || !(w.request_rate > 0)) return 0;
    return Math.min(1, w.error_rate / w.request_rate);
  }

  function pct(x) {
    const p = x * 100;
    return (p < 1 ? '<1' : String(Math.round(p))) + '%';
  }

  // outcomeText says what a pool's (or all pools') clients got apart from
  // the failed tries, over the window the page has samples for.
  function outcomeText(o) {
    if (!o || !o.window_ms) return 'clients: no figures yet';
    const over = o.window_ms >= WINDOW_MS - 5000 ? 'the last 5 min' : 'the last ' + fmtDur(o.window_ms);
    let text = 'clients: ' + plural(o.client_errors || 0, 'error', 'errors') + ' in ' + over +
      ' (of ' + plural(o.client_requests || 0, 'request', 'requests') + ')';
    const tries = o.failed_tries || 0;
    if (tries > 0) {
      text += '; tries: ' + fmtInt(tries) + ' failed';
      const absorbed = Math.max(0, tries - (o.client_errors || 0));
      if (absorbed > 0) text += ', ' + fmtInt(absorbed) + ' of them retried or hedged away';
    } else {
      text += '; tries: none failed';
    }
    return text;
  }

  function sumOutcomes(pools) {
    const o = { window_ms: 0, client_requests: 0, client_errors: 0, failed_tries: 0 };
    for (const p of pools) {
      const x = p.outcomes || {};
      o.window_ms = Math.max(o.window_ms, x.window_ms || 0);
      o.client_requests += x.client_requests || 0;
      o.client_errors += x.client_errors || 0;
      o.failed_tries += x.failed_tries || 0;
    }
    return o;
  }

  function sinceText(w, nowMs) {
    const t = Date.parse(w.since || '');
    if (isNaN(t)) return '';
    return ' since ' + fmtTime(w.since) + ' (' + fmtDur(Math.max(0, nowMs - t)) + ')';
  }

  // renderProblem writes the line at the top: what is wrong now (which
  // workers, why, since when), or that nothing is; and what clients got
  // apart from failed tries.
  function renderProblem(pools, nowMs) {
    const items = [];
    const who = [];
    let bad = false;
    let total = 0;
    for (const p of pools) {
      const st = p.stats || {};
      if (st.dynamic_error) {
        bad = true;
        items.push('Pool ' + p.name + ': upstream lookups failing (the last workers keep serving): ' + st.dynamic_error);
        who.push('pool ' + p.name + ' (lookups)');
      }
      for (const w of p.workers || []) {
        total++;
        if (w.status === 'healthy') {
          const share = failingShare(w);
          if (share > 0) {
            items.push(w.id + ' (' + w.upstream + ') is failing ' + pct(share) + ' of its tries in the last seconds; failed tries are retried on other workers when safe');
            who.push(w.id + ' failing');
          }
          continue;
        }
        bad = bad || w.isolated || w.recovery_failed || w.status === 'open';
        let why = w.status_text || words(w.status);
        if (w.isolated || w.recovery_failed) {
          why += ': ' + (w.isolation_reason || 'isolated');
          if (w.isolation_text) why += ' (' + w.isolation_text + ')';
        } else if (w.status === 'open' && w.breaker_retry_in_ms !== undefined) {
          why += ' (half-opens in ' + fmtDur(w.breaker_retry_in_ms) + ')';
        } else if (w.throttled) {
          why += ' (' + fmtDur(w.throttle_left_ms || 0) + ' left)';
        }
        items.push(w.id + ' (' + w.upstream + ') ' + why + sinceText(w, nowMs));
        who.push(w.id + ' ' + (w.status_text || words(w.status)));
      }
    }
    const box = $('problem');
    let line;
    if (items.length === 0) {
      line = total ? 'All ' + plural(total, 'worker is', 'workers are') + ' healthy.' : 'No workers to show.';
      if (total === 1) line = 'The one worker is healthy.';
    } else {
      line = (items.length === 1 ? 'Problem now: ' : items.length + ' problems now: ') + who.join(', ');
    }
    setAttr(box, 'class', 'problem ' + (items.length === 0 ? 'problem-ok' : bad ? 'problem-bad' : 'problem-warn'));
    setText($('problem-line'), line);
    const list = $('problem-list');
    const key = items.join('\n');
    if (list.dataset.key !== key) {
      list.dataset.key = key;
      list.replaceChildren(...items.map((t) => el('li', { text: t })));
    }
    setText($('outcome-line'), pools.length ? outcomeText(sumOutcomes(pools)).replace(/^c/, 'C') : '');
  }

  // ---- errors ------------------------------------------------------------

  function renderErrors(errors, nowMs) {
    const table = $('errors');
    const tbody = table.tBodies[0];
    const key = errors.map((e) => e.time + e.worker + e.kind).join('|');
    $('no-errors').hidden = errors.length > 0;
    table.hidden = errors.length === 0;
    if (tbody.dataset.key === key) {
      // same errors: only the ages move
      errors.forEach((e, i) => setText(tbody.rows[i].querySelector('.age'), ago(e.time, nowMs)));
      return;
    }
    tbody.dataset.key = key;
    tbody.replaceChildren(...errors.map((e) => {
      const tr = el('tr', { role: 'row', 'data-severity': e.severity });
      const time = cell('td', 'Time');
      time.append(el('time', { datetime: e.time, text: fmtTime(e.time) }), el('span', { class: 'note age', text: ago(e.time, nowMs) }));
      const worker = cell('td', 'Worker');
      worker.append(el('span', { class: 'mono', text: e.worker || '\u2013' }),
        el('span', { class: 'note', text: e.component && e.operation ? e.component + ' ' + e.operation : '' }));
      const kind = cell('td', 'Kind');
      kind.append(el('code', { text: e.kind }));
      const sev = cell('td', 'Severity');
      sev.append(el('span', { class: 'sev sev-' + e.severity, text: e.severity }));
      const action = cell('td', 'Action', { text: words(e.action) });
      const status = cell('td', 'Status', { class: 'num', text: e.status ? String(e.status) : '\u2013' });
      const attempt = cell('td', 'Try', { class: 'num', text: e.attempt ? String(e.attempt) : '\u2013' });
      const msg = cell('td', 'Message', { class: 'message', text: e.message });
      tr.append(time, worker, kind, sev, action, status, attempt, msg);
      return tr;
    }));
  }

  function ago(iso, nowMs) {
    const t = Date.parse(iso);
    if (isNaN(t)) return '';
    return fmtDur(Math.max(0, nowMs - t)) + ' ago';
  }

  // ---- announcements and actions ----------------------------------------

  // announceChanges tells screen readers (through a polite live region)
  // when a worker changes state; the tables themselves are not live, so
  // the once-a-second refresh is not read out.
  function announceChanges(pools) {
    const next = new Map();
    const msgs = [];
    for (const p of pools) {
      for (const w of p.workers || []) {
        next.set(w.id, w.status);
        const before = ui.statuses && ui.statuses.get(w.id);
        if (ui.statuses && before && before !== w.status) {
          msgs.push('Worker ' + w.id + ' is now ' + (w.status_text || words(w.status)) +
            (w.isolation_reason && w.isolated ? ': ' + w.isolation_reason : '') + '.');
        }
      }
    }
    ui.statuses = next;
    if (msgs.length) $('announce').textContent = msgs.join(' ');
  }

  function showResult(text, failed) {
    const out = $('action-result');
    out.hidden = false;
    out.className = 'action-result' + (failed ? ' failed' : '');
    out.textContent = text;
  }

  async function act(id, action, duration, button) {
    const init = { method: 'POST', cache: 'no-store', credentials: 'same-origin', headers: {} };
    let done;
    if (action === 'isolate') {
      const reason = duration ? 'isolated from the status page for ' + duration : 'isolated from the status page until restored';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(duration ? { duration, reason } : { reason });
      done = 'Worker ' + id + ' isolated ' + (duration ? 'for ' + duration : 'until restored') + '.';
    } else if (action === 'restore') {
      done = 'Worker ' + id + ' restored.';
    } else {
      done = 'Breaker of worker ' + id + ' reset.';
    }
    button.disabled = true;
    try {
      const res = await fetch('api/workers/' + encodeURIComponent(id) + '/' + action, init);
      let body = null;
      try {
        body = await res.json();
      } catch (e) {
        body = null;
      }
      if (!res.ok) throw new Error((body && body.error) || 'HTTP ' + res.status);
      showResult(done, false);
    } catch (err) {
      showResult('Could not ' + action + ' worker ' + id + ': ' + err.message, true);
    } finally {
      button.disabled = false;
      poll();
    }
  }

  // ---- start -------------------------------------------------------------

  function start() {
    tableRoles($('errors'));
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) poll();
    });
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
