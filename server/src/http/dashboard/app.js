// Tuna dashboard: a single-page app over the JSON gateway (POST /api/<service>/<Method>, the
// protobuf JSON mapping; server streams as text/event-stream; byte downloads as raw bodies).
// No dependencies, no build step: served as-is by the tuna server.
'use strict';

(() => {
  const API = 'api/';
  const KEY_STORAGE = 'tuna.apiKey';
  const JOB_STATES = ['QUEUED', 'RUNNING', 'PAUSING', 'PAUSED', 'CANCELLING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
  const JOB_TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
  const SWEEP_TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
  // Transitions a client may ask for, per job.proto's state machine (the no-ops are disabled).
  const CAN = {
    cancel: new Set(['QUEUED', 'RUNNING', 'PAUSING', 'PAUSED']),
    pause: new Set(['QUEUED', 'RUNNING']),
    resume: new Set(['PAUSED', 'PAUSING']),
  };
  // Error codes worth retrying a stream on.
  const RETRIABLE = new Set(['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'ABORTED', 'RESOURCE_EXHAUSTED', 'INTERNAL', 'UNKNOWN']);
  const HTTP_CODE = {
    400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND',
    409: 'ALREADY_EXISTS', 412: 'FAILED_PRECONDITION', 429: 'RESOURCE_EXHAUSTED', 499: 'CANCELLED',
    500: 'INTERNAL', 501: 'UNIMPLEMENTED', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED',
  };

  // ---------------------------------------------------------------- small helpers

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'checked' || k === 'disabled' || k === 'value') el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, kids);
    return el;
  }

  function append(el, kids) {
    for (const kid of [kids].flat(Infinity)) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  function clear(el, ...kids) {
    el.replaceChildren();
    return append(el, kids);
  }

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const short = (state) => String(state || 'UNSPECIFIED').replace(/^(JOB|SWEEP)_STATE_/, '').replace(/^ARTIFACT_KIND_/, '');
  const num = (v) => (v == null || v === '' ? NaN : Number(v));
  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // RFC 3339 with up to nanoseconds; Date.parse wants at most milliseconds.
  function parseTs(ts) {
    if (!ts) return null;
    const ms = Date.parse(String(ts).replace(/(\.\d{3})\d+/, '$1'));
    return Number.isNaN(ms) ? null : ms;
  }

  function fmtRel(ms) {
    if (ms == null) return '—';
    const s = Math.round((Date.now() - ms) / 1000);
    const a = Math.abs(s);
    const f = a < 60 ? `${a} s` : a < 3600 ? `${Math.floor(a / 60)} min` : a < 86400 ? `${Math.floor(a / 3600)} h` : `${Math.floor(a / 86400)} d`;
    return s >= -1 ? (a < 2 ? 'just now' : `${f} ago`) : `in ${f}`;
  }

  function fmtAbs(ms) {
    if (ms == null) return '';
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  // A timestamp shown relative (kept fresh by the ticker below), absolute in the tooltip.
  function timeEl(ts, testid) {
    const ms = parseTs(ts);
    if (ms == null) return h('span', { class: 'muted', 'data-testid': testid }, '—');
    return h('time', { datetime: ts, title: fmtAbs(ms), 'data-ts': ms, 'data-testid': testid }, fmtRel(ms));
  }
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-ts]')) el.textContent = fmtRel(Number(el.dataset.ts));
  }, 1000);

  function fmtBytes(v) {
    const n = num(v);
    if (!Number.isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let x = n;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return `${i === 0 ? x : x.toFixed(x < 10 ? 2 : 1)} ${units[i]}`;
  }

  function fmtNum(v, digits = 4) {
    const n = num(v);
    if (!Number.isFinite(n)) return '—';
    if (n === 0) return '0';
    const a = Math.abs(n);
    if (a >= 1e5 || a < 1e-3) return n.toExponential(Math.max(0, digits - 2)).replace(/\.?0+e/, 'e').replace('e+', 'e');
    return String(Number(n.toPrecision(digits)));
  }

  function fmtDuration(sec) {
    const s = num(sec);
    if (!Number.isFinite(s)) return '—';
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function badge(state, testid) {
    const s = short(state);
    return h('span', { class: `badge st-${s.toLowerCase()}`, 'data-state': s, 'data-testid': testid }, s);
  }

  function jobLink(id, testid) {
    if (!id) return h('span', { class: 'muted' }, '—');
    return h('a', { href: `#/jobs/${encodeURIComponent(id)}`, class: 'mono', 'data-testid': testid }, id);
  }

  function labelsEl(labels) {
    const entries = Object.entries(labels || {});
    if (!entries.length) return h('span', { class: 'muted' }, '—');
    return entries.map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`));
  }

  function methodText(spec) {
    if (spec?.task === 'merge') {
      const mg = spec.merge || {};
      const n = (mg.sources || []).length;
      return `merge ${mg.method || 'average'} of ${n} job${n === 1 ? '' : 's'}${mg.rank ? ` r=${mg.rank}` : ''}`;
    }
    const m = spec?.method || {};
    const type = m.type || 'lora';
    const parts = [type];
    if ((type === 'lora' || type === 'dora') && m.lora) {
      if (m.lora.r != null) parts.push(`r=${m.lora.r}`);
      if (m.lora.alpha != null) parts.push(`α=${fmtNum(m.lora.alpha, 3)}`);
    }
    if (type === 'prompt_tuning' && m.promptTuning?.numVirtualTokens != null) parts.push(`${m.promptTuning.numVirtualTokens} tokens`);
    if (type === 'prefix_tuning' && m.prefixTuning?.numVirtualTokens != null) parts.push(`${m.prefixTuning.numVirtualTokens}-token prefix`);
    if (spec?.task === 'preference') parts.push(spec.preference?.loss || 'dpo');
    return parts.join(' ');
  }

  // ---------------------------------------------------------------- errors

  class ApiError extends Error {
    constructor(status, body) {
      const b = body && typeof body === 'object' ? body : {};
      super(b.message || `HTTP ${status}`);
      this.status = status;
      this.code = b.code || HTTP_CODE[status] || (status ? `HTTP_${status}` : 'UNAVAILABLE');
      this.violations = Array.isArray(b.fieldViolations) ? b.fieldViolations : [];
    }
  }

  function errorBox(err, testid = 'error') {
    const e = err instanceof ApiError ? err : new ApiError(0, { code: 'CLIENT', message: String(err?.message || err) });
    return h('div', { class: 'error', role: 'alert', 'data-testid': testid, 'data-code': e.code },
      h('strong', null, e.code), ' ', e.message,
      e.violations.length ? h('ul', { class: 'violations' }, e.violations.map((v) =>
        h('li', null, h('code', null, v.field || '(request)'), ': ', v.description || ''))) : null);
  }

  // The banner collects errors of user actions (until dismissed) so none is lost.
  function banner(err, context) {
    const box = errorBox(err, 'banner-error');
    if (context) box.prepend(h('span', { class: 'ctx' }, `${context}: `));
    box.append(h('button', { type: 'button', class: 'close', title: 'Dismiss', onclick: () => box.remove() }, '×'));
    const el = document.getElementById('banner');
    el.append(box);
    while (el.children.length > 5) el.firstChild.remove();
  }

  // ---------------------------------------------------------------- API key

  const getKey = () => sessionStorage.getItem(KEY_STORAGE) || '';

  function showKeyState() {
    const el = document.getElementById('key-state');
    el.textContent = getKey() ? 'key set' : '';
  }

  function openKeyModal(err) {
    const modal = document.getElementById('key-modal');
    const box = document.getElementById('key-error');
    if (err) {
      box.hidden = false;
      clear(box, h('strong', null, err.code), ' ', err.message,
        getKey() ? ' — the stored key was refused.' : ' — enter the API key.');
    } else {
      box.hidden = true;
    }
    if (modal.hidden) {
      modal.hidden = false;
      const input = document.getElementById('key-input');
      input.value = '';
      input.focus();
    }
  }

  function setupKeyModal() {
    const modal = document.getElementById('key-modal');
    document.getElementById('key-button').addEventListener('click', () => openKeyModal(null));
    document.getElementById('key-close').addEventListener('click', () => { modal.hidden = true; });
    document.getElementById('key-forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_STORAGE);
      modal.hidden = true;
      showKeyState();
      route();
    });
    document.getElementById('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = document.getElementById('key-input').value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      modal.hidden = true;
      showKeyState();
      route();
    });
    modal.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') modal.hidden = true; });
    showKeyState();
  }

  // ---------------------------------------------------------------- transport

  async function request(path, body, accept, signal) {
    const headers = { 'Content-Type': 'application/json', Accept: accept };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(API + path, { method: 'POST', headers, body: JSON.stringify(body || {}), signal, cache: 'no-store' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, { code: 'UNAVAILABLE', message: `cannot reach the server (${e.message})` });
    }
    if (!res.ok) {
      const text = await res.text().catch(() => '');
      let b;
      try { b = JSON.parse(text); } catch { b = { message: text.trim().slice(0, 500) || res.statusText || `HTTP ${res.status}` }; }
      const err = new ApiError(res.status, b);
      if (res.status === 401) openKeyModal(err);
      throw err;
    }
    return res;
  }

  async function call(path, body, signal) {
    const res = await request(path, body, 'application/json', signal);
    const text = await res.text();
    if (!text) return {};
    try { return JSON.parse(text); } catch { throw new ApiError(res.status, { code: 'INTERNAL', message: `bad JSON from ${path}` }); }
  }

  // A server stream over SSE. Calls onMessage for each `message` event. Resolves 'end' after
  // the `end` event, 'dropped' when the body ended without one; rejects with an ApiError on an
  // `error` event or a refused call.
  async function stream(path, body, onMessage, signal) {
    const res = await request(path, body, 'text/event-stream', signal);
    if (!res.body) throw new ApiError(0, { code: 'UNIMPLEMENTED', message: 'this browser cannot read response streams' });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let event = 'message';
    let data = [];
    const onAbort = () => reader.cancel().catch(() => {});
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (signal?.aborted) throw e;
          return 'dropped';
        }
        if (chunk.done) return 'dropped';
        buf += dec.decode(chunk.value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) {
              const text = data.join('\n');
              let payload;
              try { payload = JSON.parse(text); } catch { payload = { message: text }; }
              if (event === 'message') onMessage(payload);
              else if (event === 'end') { reader.cancel().catch(() => {}); return 'end'; }
              else if (event === 'error') {
                reader.cancel().catch(() => {});
                const err = new ApiError(0, payload);
                if (err.code === 'UNAUTHENTICATED') openKeyModal(err);
                throw err;
              }
            }
            event = 'message';
            data = [];
          } else if (line.startsWith(':')) {
            // comment / keep-alive
          } else {
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let value = i < 0 ? '' : line.slice(i + 1);
            if (value.startsWith(' ')) value = value.slice(1);
            if (field === 'event') event = value;
            else if (field === 'data') data.push(value);
          }
        }
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async function sha256Hex(buf) {
    if (!globalThis.crypto?.subtle) return null;
    const d = await crypto.subtle.digest('SHA-256', buf);
    return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
  }

  function fileNameFrom(disposition) {
    if (!disposition) return '';
    const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
    if (star) { try { return decodeURIComponent(star[1].trim().replace(/^"|"$/g, '')); } catch { /* fall through */ } }
    const plain = /filename\s*=\s*("?)([^";]+)\1/i.exec(disposition);
    return plain ? plain[2].trim() : '';
  }

  // Downloads an artifact's bytes with the Authorization header, verifies the sha256 and hands
  // the browser a Blob to save.
  async function downloadArtifact(artifact, statusEl) {
    const set = (cls, text) => { if (statusEl) { statusEl.className = `dl-status ${cls}`; statusEl.textContent = text; } };
    set('busy', `downloading ${artifact.name || artifact.id}…`);
    try {
      const res = await request('tuna.v1.ArtifactService/Download', { artifactId: artifact.id }, 'application/octet-stream');
      let meta = {};
      const header = res.headers.get('Tuna-Header');
      if (header) { try { meta = JSON.parse(header); } catch { meta = {}; } }
      const total = num(meta.sizeBytes ?? artifact.sizeBytes);
      const chunks = [];
      let received = 0;
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        chunks.push(value);
        received += value.byteLength;
        set('busy', `downloading ${artifact.name || artifact.id}: ${fmtBytes(received)}${total ? ` of ${fmtBytes(total)} (${Math.floor((100 * received) / total)}%)` : ''}`);
      }
      if (total && received !== total) throw new ApiError(0, { code: 'DATA_LOSS', message: `the download broke off after ${received} of ${total} bytes` });
      const blob = new Blob(chunks, { type: 'application/octet-stream' });
      const want = (meta.sha256 || artifact.sha256 || '').toLowerCase();
      // WebCrypto has no incremental digest: verify what fits comfortably in memory.
      const got = received <= 1 << 30 ? await sha256Hex(await blob.arrayBuffer()) : null;
      if (want && got && want !== got) throw new ApiError(0, { code: 'DATA_LOSS', message: `sha256 mismatch: expected ${want}, got ${got}` });
      const name = meta.name || fileNameFrom(res.headers.get('Content-Disposition')) || artifact.name || `${artifact.id}.bin`;
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      set('ok', `${name}: ${fmtBytes(received)}${got ? (want ? ', sha256 verified' : `, sha256 ${got.slice(0, 12)}…`) : ', sha256 not checked (too large)'}`);
    } catch (e) {
      set('bad', `download failed: ${e.code || ''} ${e.message}`);
      banner(e, `Download ${artifact.name || artifact.id}`);
    }
  }

  // ---------------------------------------------------------------- view lifecycle

  let current = null; // { abort: AbortController }

  function newView() {
    if (current) current.ac.abort();
    const ac = new AbortController();
    current = { ac, signal: ac.signal };
    return current;
  }

  // Runs fn now and every `ms` while the tab is visible, until the view goes away. Returns a
  // function that runs it again at once.
  function poll(view, fn, ms) {
    let timer = null;
    let running = false;
    let again = false;
    const tick = async () => {
      clearTimeout(timer);
      if (view.signal.aborted) return;
      if (running) { again = true; return; }
      if (!document.hidden) {
        running = true;
        try { await fn(); } catch (e) { if (e?.name !== 'AbortError') console.warn(e); }
        running = false;
      }
      if (view.signal.aborted) return;
      if (again) { again = false; tick(); return; }
      timer = setTimeout(tick, ms);
    };
    view.signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
    const onVisible = () => { if (!document.hidden) tick(); };
    document.addEventListener('visibilitychange', onVisible);
    view.signal.addEventListener('abort', () => document.removeEventListener('visibilitychange', onVisible), { once: true });
    tick();
    return tick;
  }

  function statusLine(testid) {
    const el = h('div', { class: 'status-line', 'data-testid': testid });
    return {
      el,
      ok(text) { el.className = 'status-line'; clear(el, text || ''); },
      error(err) { el.className = 'status-line'; clear(el, errorBox(err, `${testid}-error`)); },
    };
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/jobs';
    const [path, query = ''] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { parts, query: new URLSearchParams(query) };
  }

  function route() {
    const { parts, query } = parseHash();
    const app = document.getElementById('app');
    const view = newView();
    const section = parts[0] || 'jobs';
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === section);
    app.replaceChildren();
    window.scrollTo(0, 0);
    if (section === 'jobs' && parts[1]) jobPage(app, view, parts[1]);
    else if (section === 'jobs') jobsPage(app, view, query);
    else if (section === 'sweeps' && parts[1]) sweepPage(app, view, parts[1]);
    else if (section === 'sweeps') sweepsPage(app, view);
    else if (section === 'workers') workersPage(app, view);
    else app.append(h('div', { class: 'card' }, h('h1', null, 'Not found'), h('p', null, h('a', { href: '#/jobs' }, 'Jobs'))));
  }

  // ---------------------------------------------------------------- jobs list

  function jobsPage(app, view, query) {
    const states = new Set((query.get('states') || '').split(',').filter(Boolean).map((s) => s.toUpperCase()));
    const labelText = query.get('labels') || '';
    const pageSize = Math.min(1000, Math.max(1, Math.round(Number(query.get('pageSize'))) || 50));
    const tokens = [''];
    let page = 0;
    let lastSig = '';

    document.title = 'Jobs · Tuna';
    const labelInput = h('input', { type: 'text', value: labelText, placeholder: 'team=nlp env=prod', 'data-testid': 'label-filter', spellcheck: 'false' });
    const stateBoxes = JOB_STATES.map((s) => h('label', { class: `chip-check st-${s.toLowerCase()}` },
      h('input', { type: 'checkbox', value: s, checked: states.has(s), 'data-testid': `state-filter-${s.toLowerCase()}` }), s));
    const sizes = [...new Set([20, 50, 100, 200, pageSize])].sort((a, b) => a - b);
    const sizeSelect = h('select', { 'data-testid': 'page-size', title: 'jobs per page' }, sizes.map((n) => h('option', { value: n, selected: n === pageSize }, `${n} / page`)));
    const formError = h('div', { 'data-testid': 'filter-error' });
    const form = h('form', { class: 'filters card', 'data-testid': 'job-filters' },
      h('div', { class: 'filter-states', 'data-testid': 'state-filter' }, h('span', { class: 'flabel' }, 'State'), stateBoxes),
      h('div', { class: 'filter-labels' }, h('span', { class: 'flabel' }, 'Labels'), labelInput,
        h('button', { type: 'submit', class: 'btn primary', 'data-testid': 'filter-apply' }, 'Apply'),
        h('button', { type: 'button', class: 'btn', 'data-testid': 'filter-clear', onclick: () => { location.hash = '#/jobs'; } }, 'Clear'),
        h('span', { class: 'spacer' }), sizeSelect),
      formError);
    form.addEventListener('change', (ev) => { if (ev.target.type === 'checkbox' || ev.target === sizeSelect) form.requestSubmit(); });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const picked = stateBoxes.map((l) => l.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
      const q = new URLSearchParams();
      if (picked.length) q.set('states', picked.join(','));
      if (labelInput.value.trim()) q.set('labels', labelInput.value.trim());
      if (Number(sizeSelect.value) !== 50) q.set('pageSize', sizeSelect.value);
      const next = `#/jobs${q.toString() ? `?${q}` : ''}`;
      if (location.hash === next) route(); else location.hash = next;
    });

    const labels = {};
    let labelErr = null;
    for (const tok of labelText.split(/[\s,]+/).filter(Boolean)) {
      const i = tok.indexOf('=');
      if (i <= 0) { labelErr = `label filter "${tok}" is not key=value`; break; }
      labels[tok.slice(0, i)] = tok.slice(i + 1);
    }

    const tbody = h('tbody');
    const table = h('table', { class: 'grid', 'data-testid': 'jobs-table' },
      h('thead', null, h('tr', null, ['Job', 'State', 'Model', 'Method', 'Labels', 'Attempt', 'Created', 'Updated', 'Sweep'].map((c) => h('th', null, c)))),
      tbody);
    const prev = h('button', { type: 'button', class: 'btn', 'data-testid': 'jobs-prev', disabled: true }, '← Newer');
    const next = h('button', { type: 'button', class: 'btn', 'data-testid': 'jobs-next', disabled: true }, 'Older →');
    const pageInfo = h('span', { class: 'muted', 'data-testid': 'jobs-page' });
    const status = statusLine('jobs-status');
    app.append(h('div', { class: 'page-head' }, h('h1', null, 'Jobs'), h('span', { class: 'muted live' }, 'live')),
      form, h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, table), h('div', { class: 'pager' }, prev, pageInfo, next)), status.el);

    if (labelErr) {
      clear(formError, errorBox(new ApiError(400, { code: 'INVALID_ARGUMENT', message: labelErr }), 'filter-error-box'));
      return;
    }

    const refresh = poll(view, async () => {
      try {
        const asked = page;
        const body = { pageSize, pageToken: tokens[page], states: [...states].map((s) => `JOB_STATE_${s}`), labels };
        const res = await call('tuna.v1.JobService/ListJobs', body, view.signal);
        if (view.signal.aborted || asked !== page) return; // the user paged meanwhile
        const jobs = res.jobs || [];
        const sig = JSON.stringify([page, res]);
        if (sig !== lastSig) lastSig = sig; else { status.ok(`updated ${fmtAbs(Date.now()).slice(11)}`); return; }
        clear(tbody, jobs.length ? jobs.map(jobRow) : h('tr', null, h('td', { colspan: 9, class: 'empty', 'data-testid': 'jobs-empty' }, 'No jobs match.')));
        tokens.length = page + 1;
        if (res.nextPageToken) tokens.push(res.nextPageToken);
        next.disabled = !res.nextPageToken;
        prev.disabled = page === 0;
        pageInfo.textContent = `page ${page + 1} · ${jobs.length} jobs`;
        status.ok(`updated ${fmtAbs(Date.now()).slice(11)}`);
      } catch (e) {
        if (e.name === 'AbortError') return;
        status.error(e);
      }
    }, 2000);
    next.addEventListener('click', () => { if (tokens[page + 1]) { page++; refresh(); } });
    prev.addEventListener('click', () => { if (page > 0) { page--; refresh(); } });
  }

  function jobRow(j) {
    const spec = j.spec || {};
    return h('tr', { 'data-testid': 'job-row', 'data-job-id': j.id, 'data-state': short(j.state) },
      h('td', null, jobLink(j.id, 'job-link')),
      h('td', null, badge(j.state, 'job-row-state')),
      h('td', null, spec.baseModel || '—'),
      h('td', null, methodText(spec)),
      h('td', null, labelsEl(spec.labels)),
      h('td', { class: 'num' }, `${j.attempt ?? 0}/${j.maxAttempts ?? '?'}`),
      h('td', null, timeEl(j.createdAt)),
      h('td', null, timeEl(j.updatedAt)),
      h('td', null, j.sweepId ? h('a', { href: `#/sweeps/${encodeURIComponent(j.sweepId)}`, class: 'mono' }, j.sweepId) : h('span', { class: 'muted' }, '—')));
  }

  // ---------------------------------------------------------------- charts

  function niceStep(span, n) {
    const raw = span / Math.max(1, n);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const e = raw / mag;
    return (e >= 7.5 ? 10 : e >= 3.5 ? 5 : e >= 1.5 ? 2 : 1) * mag;
  }

  // A linear or log10 scale over [lo, hi] onto [a, b], with its ticks.
  function scale(lo, hi, a, b, { log = false, nice = true, ticks = 5, integer = false } = {}) {
    if (log) {
      lo = Math.max(lo, 1e-300);
      hi = Math.max(hi, lo * 1.0001);
      let l0 = Math.log10(lo);
      let l1 = Math.log10(hi);
      if (l1 - l0 < 1e-9) { l0 -= 0.5; l1 += 0.5; }
      const pad = (l1 - l0) * 0.04;
      l0 -= pad; l1 += pad;
      const f = (v) => a + ((Math.log10(Math.max(v, 1e-300)) - l0) / (l1 - l0)) * (b - a);
      const t = [];
      const decades = l1 - l0;
      const mults = decades <= 1.3 ? [1, 2, 3, 5, 7] : decades <= 3 ? [1, 2, 5] : [1];
      const every = Math.max(1, Math.ceil(decades / 7));
      for (let d = Math.floor(l0); d <= Math.ceil(l1); d++) {
        if (mults.length === 1 && d % every) continue;
        for (const m of mults) {
          const v = m * 10 ** d;
          const lv = Math.log10(v);
          if (lv >= l0 - 1e-9 && lv <= l1 + 1e-9) t.push(v);
        }
      }
      if (t.length < 2) t.splice(0, t.length, 10 ** l0, 10 ** ((l0 + l1) / 2), 10 ** l1);
      return { f, ticks: t, lo: 10 ** l0, hi: 10 ** l1 };
    }
    if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    let step = niceStep(hi - lo, ticks);
    if (integer) step = Math.max(1, Math.round(step));
    if (nice) { lo = Math.floor(lo / step + 1e-9) * step; hi = Math.ceil(hi / step - 1e-9) * step; }
    const f = (v) => a + ((v - lo) / (hi - lo)) * (b - a);
    const t = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) t.push(Number(v.toPrecision(12)));
    return { f, ticks: t, lo, hi };
  }

  // Tick labels with the fewest significant digits that still tell the ticks apart.
  function tickFormat(ticks) {
    const small = ticks.every((v) => v === 0 || Math.abs(v) < 1e-2) && ticks.some((v) => v !== 0);
    for (let d = 1; d <= 8; d++) {
      const f = small ? (v) => (v === 0 ? '0' : v.toExponential(d - 1).replace(/\.?0+e/, 'e').replace('e+', 'e')) : (v) => fmtNum(v, d);
      if (new Set(ticks.map(f)).size === ticks.length) return f;
    }
    return (v) => fmtNum(v, 8);
  }

  function axesSvg(W, H, M, xs, ys, xLabel, yLabel, fmtX = null, fmtY = null) {
    fmtX = fmtX || tickFormat(xs.ticks);
    fmtY = fmtY || tickFormat(ys.ticks);
    let s = `<g class="axis">`;
    for (const t of ys.ticks) {
      const y = ys.f(t);
      s += `<line class="gridline" x1="${M.l}" x2="${W - M.r}" y1="${y}" y2="${y}"/><text x="${M.l - 6}" y="${y + 4}" text-anchor="end">${esc(fmtY(t))}</text>`;
    }
    for (const t of xs.ticks) {
      const x = xs.f(t);
      s += `<line class="gridline" x1="${x}" x2="${x}" y1="${M.t}" y2="${H - M.b}"/><text x="${x}" y="${H - M.b + 16}" text-anchor="middle">${esc(fmtX(t))}</text>`;
    }
    s += `<line class="frame" x1="${M.l}" x2="${W - M.r}" y1="${H - M.b}" y2="${H - M.b}"/><line class="frame" x1="${M.l}" x2="${M.l}" y1="${M.t}" y2="${H - M.b}"/>`;
    s += `<text class="axis-label" x="${(M.l + W - M.r) / 2}" y="${H - 4}" text-anchor="middle">${esc(xLabel)}</text>`;
    if (yLabel) s += `<text class="axis-label" transform="translate(12 ${(M.t + H - M.b) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`;
    return `${s}</g>`;
  }

  // At most ~4 points per pixel column (first, min, max, last), so a 100k-step curve draws as
  // fast as a short one and keeps its spikes.
  function decimate(points, xs, width) {
    if (points.length <= width * 2) return points;
    const out = [];
    let col = null; let first; let min; let max; let last;
    const flush = () => {
      if (col == null) return;
      const bucket = [first, min, max, last].filter((p, i, a) => a.indexOf(p) === i).sort((a, b) => a[0] - b[0]);
      out.push(...bucket);
    };
    for (const p of points) {
      const c = Math.floor(xs.f(p[0]));
      if (c !== col) { flush(); col = c; first = min = max = last = p; continue; }
      if (p[1] < min[1]) min = p;
      if (p[1] > max[1]) max = p;
      last = p;
    }
    flush();
    return out;
  }

  // EMA smoothing with TensorBoard's debiasing.
  function smooth(points, w) {
    if (!w) return points;
    let last = 0;
    let n = 0;
    return points.map(([x, y]) => {
      last = last * w + (1 - w) * y;
      n++;
      return [x, last / (1 - w ** n)];
    });
  }

  // A live line chart of metric series vs step. add() appends points; drawing is batched to
  // animation frames, so hundreds of points per second stay cheap.
  class LineChart {
    constructor({ testid, title, yLabel, series, log = false, smoothing = false }) {
      this.series = series.map((s) => ({ ...s, points: [] }));
      this.log = log;
      this.smoothing = 0;
      this.title = title;
      this.yLabel = yLabel;
      this.testid = testid;
      this.W = 560;
      this.H = 250;
      this.M = { l: 50, r: 22, t: 12, b: 36 };
      this.svgWrap = h('div', { class: 'chart-svg' });
      this.tip = h('div', { class: 'tip', hidden: true });
      this.latest = h('span', { class: 'latest mono' });
      const controls = h('span', { class: 'chart-controls' },
        h('label', { title: 'logarithmic y axis' }, h('input', { type: 'checkbox', checked: log, onchange: (e) => { this.log = e.target.checked; this.draw(); } }), 'log'),
        smoothing ? h('label', { title: 'exponential moving average of the training series' }, 'smooth',
          h('input', { type: 'range', min: 0, max: 0.99, step: 0.01, value: 0, 'data-testid': `${testid}-smoothing`, oninput: (e) => { this.smoothing = Number(e.target.value); this.draw(); } })) : null);
      this.el = h('div', { class: 'chart card', 'data-testid': testid, 'data-points': 0 },
        h('div', { class: 'chart-head' }, h('span', { class: 'chart-title' }, title),
          h('span', { class: 'legend' }, this.series.map((s) => h('span', { class: 'key' }, h('i', { style: `background:${s.color}` }), s.label))),
          controls),
        h('div', { class: 'chart-body' }, this.svgWrap, this.tip),
        h('div', { class: 'chart-foot' }, this.latest));
      this.svgWrap.addEventListener('mousemove', (e) => this.hover(e));
      this.svgWrap.addEventListener('mouseleave', () => { this.tip.hidden = true; this.hoverLine?.setAttribute('visibility', 'hidden'); });
      this.pending = false;
      this.draw();
    }

    has(key) { return this.series.some((s) => s.key === key); }

    add(key, x, y) {
      const s = this.series.find((t) => t.key === key);
      if (!s || !Number.isFinite(x) || !Number.isFinite(y)) return;
      const p = s.points;
      if (!p.length || p[p.length - 1][0] < x) p.push([x, y]);
      else {
        // Out of order or a repeated step: keep the series sorted, the newest value wins.
        let i = p.length - 1;
        while (i >= 0 && p[i][0] > x) i--;
        if (i >= 0 && p[i][0] === x) p[i] = [x, y]; else p.splice(i + 1, 0, [x, y]);
      }
      this.schedule();
    }

    // A new attempt resumed from a checkpoint: its steps replace the old attempt's from `x` on.
    truncateFrom(x) {
      for (const s of this.series) {
        const i = s.points.findIndex((p) => p[0] >= x);
        if (i >= 0) s.points.length = i;
      }
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    draw() {
      const { W, H, M } = this;
      const all = this.series.flatMap((s) => s.points);
      this.el.dataset.points = this.series[0].points.length;
      for (const s of this.series.slice(1)) this.el.dataset[`${s.key.replace(/_(\w)/g, (_, c) => c.toUpperCase())}Points`] = s.points.length;
      this.latest.textContent = this.series.filter((s) => s.points.length)
        .map((s) => `${s.label} ${fmtNum(s.points[s.points.length - 1][1])} @ ${s.points[s.points.length - 1][0]}`).join('   ');
      if (!all.length) {
        this.svgWrap.innerHTML = `<svg viewBox="0 0 ${W} ${H}" class="plot"><text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="empty-text">waiting for metrics…</text></svg>`;
        this.xs = null;
        return;
      }
      let x0 = Infinity; let x1 = -Infinity; let y0 = Infinity; let y1 = -Infinity;
      const log = this.log && all.every((p) => p[1] > 0);
      for (const [x, y] of all) {
        if (x < x0) x0 = x; if (x > x1) x1 = x;
        if (y < y0) y0 = y; if (y > y1) y1 = y;
      }
      if (x1 === x0) x1 = x0 + 1;
      const xs = scale(x0, x1, M.l, W - M.r, { nice: false, integer: true, ticks: 6 });
      const ys = scale(y0, y1, H - M.b, M.t, { log, ticks: 5 });
      this.xs = xs; this.ys = ys;
      let s = `<svg viewBox="0 0 ${W} ${H}" class="plot" role="img" aria-label="${esc(this.title)}">`;
      s += axesSvg(W, H, M, xs, ys, 'step', '', (v) => String(Math.round(v)));
      s += `<clipPath id="clip-${this.testid}"><rect x="${M.l}" y="${M.t - 2}" width="${W - M.l - M.r + 2}" height="${H - M.t - M.b + 4}"/></clipPath><g clip-path="url(#clip-${this.testid})">`;
      for (const ser of this.series) {
        if (!ser.points.length) continue;
        const width = W - M.l - M.r;
        const pts = ser.smooth && this.smoothing ? smooth(ser.points, this.smoothing) : ser.points;
        const d = (ps) => decimate(ps, xs, width).map(([x, y], i) => `${i ? 'L' : 'M'}${xs.f(x).toFixed(1)},${ys.f(y).toFixed(1)}`).join('');
        if (ser.smooth && this.smoothing) s += `<path class="line raw" d="${d(ser.points)}" stroke="${ser.color}"/>`;
        s += `<path class="line" data-series="${esc(ser.key)}" d="${d(pts)}" stroke="${ser.color}"/>`;
        if (ser.dots || ser.points.length === 1) {
          for (const [x, y] of ser.points) s += `<circle class="pt" cx="${xs.f(x).toFixed(1)}" cy="${ys.f(y).toFixed(1)}" r="3" fill="${ser.color}"/>`;
        } else {
          const [x, y] = pts[pts.length - 1];
          s += `<circle class="pt last" cx="${xs.f(x).toFixed(1)}" cy="${ys.f(y).toFixed(1)}" r="3" fill="${ser.color}"/>`;
        }
      }
      s += `</g><line class="hover-line" visibility="hidden" y1="${M.t}" y2="${H - M.b}"/></svg>`;
      this.svgWrap.innerHTML = s;
      this.hoverLine = this.svgWrap.querySelector('.hover-line');
    }

    hover(e) {
      if (!this.xs) return;
      const svg = this.svgWrap.firstElementChild;
      const r = svg.getBoundingClientRect();
      const px = ((e.clientX - r.left) / r.width) * this.W;
      const { M, W } = this;
      if (px < M.l || px > W - M.r) { this.tip.hidden = true; this.hoverLine.setAttribute('visibility', 'hidden'); return; }
      const x = this.xs.lo + ((px - M.l) / (W - M.r - M.l)) * (this.xs.hi - this.xs.lo);
      const rows = [];
      let snapX = null;
      for (const s of this.series) {
        const p = s.points;
        if (!p.length) continue;
        let lo = 0; let hi = p.length - 1;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (p[mid][0] < x) lo = mid + 1; else hi = mid; }
        if (lo > 0 && Math.abs(p[lo - 1][0] - x) < Math.abs(p[lo][0] - x)) lo--;
        if (snapX == null) snapX = p[lo][0];
        rows.push(`<div><i style="background:${s.color}"></i>${esc(s.label)} <b>${esc(fmtNum(p[lo][1], 5))}</b> <span class="muted">@${p[lo][0]}</span></div>`);
      }
      if (snapX == null) return;
      const lx = this.xs.f(snapX);
      this.hoverLine.setAttribute('x1', lx); this.hoverLine.setAttribute('x2', lx);
      this.hoverLine.setAttribute('visibility', 'visible');
      this.tip.innerHTML = `<div class="muted">step ${snapX}</div>${rows.join('')}`;
      this.tip.hidden = false;
      const left = (lx / W) * r.width;
      this.tip.style.left = `${Math.min(left + 12, r.width - 170)}px`;
      this.tip.style.top = '8px';
    }
  }

  // A scatter plot. points: [{x, y, cls, title, href, r}]; front: the Pareto front as a staircase.
  function scatterSvg({ testid, points, xLabel, yLabel, logX = false, logY = false, categories = null, front = null, W = 560, H = 280 }) {
    const M = { l: 58, r: 22, t: 12, b: 38 };
    const usable = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    if (!usable.length) {
      return `<svg viewBox="0 0 ${W} ${H}" class="plot" data-testid="${testid}-svg"><text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="empty-text">no finished trials yet</text></svg>`;
    }
    const xv = usable.map((p) => p.x);
    const yv = usable.map((p) => p.y);
    let xs;
    if (categories) {
      const n = categories.length;
      const step = (W - M.r - M.l) / n;
      xs = { f: (i) => M.l + step * (i + 0.5), ticks: categories.map((_, i) => i), lo: -0.5, hi: n - 0.5 };
    } else {
      const lx = logX && xv.every((v) => v > 0);
      let lo = Math.min(...xv); let hi = Math.max(...xv);
      if (!lx) { const pad = (hi - lo) * 0.05 || Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
      xs = scale(lo, hi, M.l, W - M.r, { log: lx, nice: false, ticks: 5 });
    }
    const ly = logY && yv.every((v) => v > 0);
    let ylo = Math.min(...yv); let yhi = Math.max(...yv);
    if (!ly) { const pad = (yhi - ylo) * 0.06 || Math.abs(ylo) * 0.1 || 1; ylo -= pad; yhi += pad; }
    const ys = scale(ylo, yhi, H - M.b, M.t, { log: ly, nice: false, ticks: 5 });
    const fx = categories ? (i) => (categories[Math.round(i)] ?? '') : null;
    let s = `<svg viewBox="0 0 ${W} ${H}" class="plot" role="img" aria-label="${esc(yLabel)} vs ${esc(xLabel)}">`;
    s += axesSvg(W, H, M, xs, ys, xLabel, yLabel, fx);
    if (front && front.length) {
      const fp = front.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
      let d = '';
      fp.forEach((p, i) => {
        const X = xs.f(p.x).toFixed(1); const Y = ys.f(p.y).toFixed(1);
        if (i === 0) d += `M${X},${Y}`;
        else d += `H${X}V${Y}`;
      });
      if (fp.length) d += `H${W - M.r}`;
      s += `<path class="front" data-testid="pareto-front" data-points="${fp.length}" d="${d}"/>`;
    }
    for (const p of usable) {
      const c = `<circle class="dot ${p.cls || ''}" cx="${xs.f(p.x).toFixed(1)}" cy="${ys.f(p.y).toFixed(1)}" r="${p.r || 4.5}"${p.testid ? ` data-testid="${p.testid}"` : ''}><title>${esc(p.title || '')}</title></circle>`;
      s += p.href ? `<a href="${esc(p.href)}">${c}</a>` : c;
    }
    return `${s}</svg>`;
  }

  // ---------------------------------------------------------------- job page

  function jobPage(app, view, id) {
    document.title = `${id} · Tuna`;
    let job = null;
    let loadedSeq = 0; // events up to this seq are history; later ones are live
    let lastSeq = 0;
    let maxAttempt = 0;
    let maxStep = 0;
    let totalSteps = null;
    const latest = {};
    let streamEnded = false;

    const stateSlot = h('span', { class: 'state-slot' });
    const actionResult = h('div', { class: 'action-result', 'data-testid': 'job-action-result' });
    const btn = (name, label) => h('button', { type: 'button', class: `btn ${name === 'cancel' ? 'danger' : ''}`, disabled: true, 'data-testid': `job-${name}`, onclick: () => act(name) }, label);
    const buttons = { cancel: btn('cancel', 'Cancel'), pause: btn('pause', 'Pause'), resume: btn('resume', 'Resume') };
    const meta = h('dl', { class: 'meta', 'data-testid': 'job-meta' });
    const failureSlot = h('div');
    const progressBar = h('div', { class: 'bar-fill' });
    const progressText = h('span', { class: 'mono', 'data-testid': 'job-progress' }, '—');
    const streamStatus = h('span', { class: 'stream-status muted', 'data-testid': 'stream-status' }, 'connecting…');
    const viewError = h('div');

    const charts = {
      loss: new LineChart({ testid: 'loss-chart', title: 'Loss', yLabel: 'loss', smoothing: true, series: [
        { key: 'loss', label: 'train loss', color: '#2563eb', smooth: true },
        { key: 'eval_loss', label: 'eval loss', color: '#ea580c', dots: true }] }),
      lr: new LineChart({ testid: 'lr-chart', title: 'Learning rate', yLabel: 'lr', series: [{ key: 'lr', label: 'lr', color: '#7c3aed' }] }),
      grad: new LineChart({ testid: 'grad-norm-chart', title: 'Gradient norm', yLabel: 'grad norm', log: true, series: [{ key: 'grad_norm', label: 'grad norm', color: '#0d9488' }] }),
      tput: new LineChart({ testid: 'throughput-chart', title: 'Throughput', yLabel: 'tokens/s', series: [{ key: 'tokens_per_s', label: 'tokens/s', color: '#a16207' }] }),
    };
    const evalChart = new LineChart({ testid: 'eval-metric-chart', title: 'Eval metric', yLabel: 'value', log: true, series: [
      { key: 'eval_accuracy', label: 'eval accuracy', color: '#16a34a', dots: true },
      { key: 'eval_perplexity', label: 'eval perplexity', color: '#db2777', dots: true }] });
    evalChart.el.hidden = true;

    const eventsBody = h('tbody');
    const eventsCount = h('span', { class: 'muted' });
    const ckptBody = h('tbody');
    const artBody = h('tbody');
    const dlStatus = h('span', { class: 'dl-status', 'data-testid': 'download-status' });
    const specPre = h('pre', { class: 'spec', 'data-testid': 'job-spec' });

    app.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, '← Jobs')),
      viewError,
      h('div', { class: 'card job-head' },
        h('div', { class: 'title-row' },
          h('h1', { class: 'mono', 'data-testid': 'job-id' }, id), stateSlot,
          h('span', { class: 'spacer' }), buttons.pause, buttons.resume, buttons.cancel),
        actionResult, failureSlot, meta,
        h('div', { class: 'progress' }, h('div', { class: 'bar' }, progressBar), progressText, streamStatus)),
      h('div', { class: 'charts' }, charts.loss.el, charts.lr.el, charts.grad.el, charts.tput.el, evalChart.el),
      h('div', { class: 'two-col' },
        h('section', { class: 'card' }, h('h2', null, 'Events ', eventsCount),
          h('div', { class: 'table-wrap scroll' }, h('table', { class: 'grid small', 'data-testid': 'events-list' },
            h('thead', null, h('tr', null, ['#', 'Time', 'Kind', 'State', 'Attempt', 'Message'].map((c) => h('th', null, c)))), eventsBody))),
        h('div', null,
          h('section', { class: 'card' }, h('h2', null, 'Artifacts ', dlStatus),
            h('div', { class: 'table-wrap' }, h('table', { class: 'grid small', 'data-testid': 'artifacts-table' },
              h('thead', null, h('tr', null, ['Kind', 'Name', 'Step', 'Size', 'SHA-256', 'Created', ''].map((c) => h('th', null, c)))), artBody))),
          h('section', { class: 'card' }, h('h2', null, 'Checkpoints'),
            h('div', { class: 'table-wrap' }, h('table', { class: 'grid small', 'data-testid': 'checkpoints-table' },
              h('thead', null, h('tr', null, ['Step', 'Attempt', 'Size', 'SHA-256', 'Created', ''].map((c) => h('th', null, c)))), ckptBody))),
          h('details', { class: 'card' }, h('summary', null, 'Spec (with defaults)'), specPre))));

    function renderJob() {
      if (!job) return;
      const st = short(job.state);
      clear(stateSlot, badge(job.state, 'job-state'));
      for (const [name, b] of Object.entries(buttons)) b.disabled = !CAN[name].has(st);
      const spec = job.spec || {};
      const hp = spec.hyperparameters || {};
      const row = (k, v, testid) => [h('dt', null, k), h('dd', { 'data-testid': testid }, v)];
      clear(meta,
        row('Model', spec.baseModel || '—', 'job-model'),
        row('Method', methodText(spec), 'job-method'),
        row('Task', spec.task || 'causal_lm'),
        row('Attempt', `${job.attempt ?? 0} of ${job.maxAttempts ?? '?'}`, 'job-attempt'),
        row('Learning rate', fmtNum(hp.learningRate)),
        row('Steps', hp.maxSteps != null ? String(hp.maxSteps) : `${hp.epochs ?? '?'} epochs`),
        row('Created', timeEl(job.createdAt, 'job-created')),
        row('Started', timeEl(job.startedAt)),
        row('Finished', timeEl(job.finishedAt)),
        job.runAfter && !JOB_TERMINAL.has(st) && (parseTs(job.runAfter) ?? 0) > Date.now() ? row('Retry after', timeEl(job.runAfter, 'job-run-after')) : null,
        row('Labels', labelsEl(spec.labels)),
        job.sweepId ? row('Sweep', h('a', { href: `#/sweeps/${encodeURIComponent(job.sweepId)}`, class: 'mono' }, job.sweepId)) : null,
        spec.trainingFile ? row('Training file', h('span', { class: 'mono' }, spec.trainingFile)) : null,
        spec.validationFile ? row('Validation file', h('span', { class: 'mono' }, spec.validationFile)) : null,
        job.requestId ? row('Request id', h('span', { class: 'mono' }, job.requestId)) : null);
      if (job.failure && (job.failure.message || job.failure.kind)) {
        const kind = String(job.failure.kind || '').replace(/^FAILURE_KIND_/, '');
        const pending = st !== 'FAILED';
        clear(failureSlot, h('div', { class: pending ? 'warn' : 'error', 'data-testid': 'job-error' },
          h('strong', null, pending ? `Last failure (${kind}, will retry)` : `Failed (${kind})`), ': ', job.failure.message || ''));
      } else {
        clear(failureSlot);
      }
      specPre.textContent = JSON.stringify(spec, null, 2);
      renderProgress();
    }

    function renderProgress() {
      const st = job ? short(job.state) : '';
      const total = totalSteps || num(job?.spec?.hyperparameters?.maxSteps) || null;
      const frac = total ? Math.min(1, maxStep / total) : (st === 'SUCCEEDED' ? 1 : 0);
      progressBar.style.width = `${(frac * 100).toFixed(1)}%`;
      progressBar.className = `bar-fill st-${st.toLowerCase()}`;
      const bits = [`step ${maxStep}${total ? ` / ${total}` : ''}`];
      if (latest.loss != null) bits.push(`loss ${fmtNum(latest.loss)}`);
      if (latest.eval_loss != null) bits.push(`eval ${fmtNum(latest.eval_loss)}`);
      if (latest.tokens_per_s != null && !JOB_TERMINAL.has(st)) bits.push(`${fmtNum(latest.tokens_per_s, 3)} tok/s`);
      progressText.textContent = bits.join(' · ');
    }

    async function act(name) {
      const method = { cancel: 'CancelJob', pause: 'PauseJob', resume: 'ResumeJob' }[name];
      for (const b of Object.values(buttons)) b.disabled = true;
      clear(actionResult, h('span', { class: 'muted' }, `${method}…`));
      try {
        const j = await call(`tuna.v1.JobService/${method}`, { id }, view.signal);
        job = j;
        loadedSeq = Math.max(loadedSeq, num(j.lastSeq) || 0);
        clear(actionResult, h('span', { class: 'ok', 'data-testid': 'job-action-ok' }, `${method}: job is now `, badge(j.state)));
      } catch (e) {
        if (e.name === 'AbortError') return;
        clear(actionResult, errorBox(e, 'job-action-error'));
        banner(e, method);
      }
      renderJob();
    }

    const loadJob = async () => {
      try {
        const j = await call('tuna.v1.JobService/GetJob', { id }, view.signal);
        if (view.signal.aborted) return;
        job = j;
        clear(viewError);
        renderJob();
      } catch (e) {
        if (e.name === 'AbortError') return;
        clear(viewError, errorBox(e, 'view-error'));
      }
    };

    const artifactRow = (a, kind) => {
      const dl = h('a', { href: '#', class: 'btn small', 'data-testid': kind === 'ckpt' ? 'checkpoint-download' : 'artifact-download', 'data-artifact-id': a.id, 'data-kind': short(a.kind),
        onclick: (e) => { e.preventDefault(); downloadArtifact(a, dlStatus); } }, 'Download');
      const sha = h('span', { class: 'mono', title: a.sha256 }, (a.sha256 || '').slice(0, 12));
      if (kind === 'ckpt') {
        return h('tr', { 'data-testid': 'checkpoint-row' }, h('td', { class: 'num' }, a.step), h('td', { class: 'num' }, a.attempt),
          h('td', { class: 'num' }, fmtBytes(a.sizeBytes)), h('td', null, sha), h('td', null, timeEl(a.createdAt)), h('td', null, dl));
      }
      return h('tr', { 'data-testid': 'artifact-row', 'data-kind': short(a.kind) }, h('td', null, short(a.kind).toLowerCase()), h('td', { class: 'mono' }, a.name || a.id),
        h('td', { class: 'num' }, a.step), h('td', { class: 'num' }, fmtBytes(a.sizeBytes)), h('td', null, sha), h('td', null, timeEl(a.createdAt)), h('td', null, dl));
    };

    let filesTimer = null;
    const loadFiles = async () => {
      try {
        const [arts, ckpts] = await Promise.all([
          call('tuna.v1.ArtifactService/ListArtifacts', { jobId: id }, view.signal),
          call('tuna.v1.JobService/ListCheckpoints', { jobId: id }, view.signal),
        ]);
        if (view.signal.aborted) return;
        const a = (arts.artifacts || []).filter((x) => short(x.kind) !== 'CHECKPOINT');
        clear(artBody, a.length ? a.map((x) => artifactRow(x, 'art')) : h('tr', null, h('td', { colspan: 7, class: 'empty' }, 'No artifacts yet.')));
        const c = ckpts.checkpoints || [];
        clear(ckptBody, c.length ? c.map((x) => artifactRow(x, 'ckpt')) : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No checkpoints yet.')));
      } catch (e) {
        if (e.name === 'AbortError') return;
        clear(artBody, h('tr', null, h('td', { colspan: 7 }, errorBox(e))));
      }
    };
    const loadFilesSoon = () => { clearTimeout(filesTimer); filesTimer = setTimeout(loadFiles, 300); };
    let jobTimer = null;
    const loadJobSoon = () => { clearTimeout(jobTimer); jobTimer = setTimeout(loadJob, 250); };
    view.signal.addEventListener('abort', () => { clearTimeout(filesTimer); clearTimeout(jobTimer); }, { once: true });

    let eventCount = 0;
    function onUpdate(u) {
      const seq = num(u.seq);
      if (seq <= lastSeq) return; // replayed twice across a reconnect
      lastSeq = seq;
      if (u.metrics) {
        const m = u.metrics;
        const step = num(m.step);
        const attempt = num(m.attempt) || 0;
        if (attempt > maxAttempt) {
          if (maxAttempt > 0) {
            // A new attempt resumed from a checkpoint: its points replace the old ones from here.
            for (const c of [...Object.values(charts), evalChart]) c.truncateFrom(step);
            maxStep = step;
          }
          maxAttempt = attempt;
        }
        const values = m.values || {};
        for (const [k, v] of Object.entries(values)) {
          const val = num(v);
          latest[k] = val;
          for (const c of [...Object.values(charts), evalChart]) c.add(k, step, val);
          if (k === 'eval_accuracy' || k === 'eval_perplexity') evalChart.el.hidden = false;
        }
        if (values.total_steps != null) totalSteps = num(values.total_steps);
        maxStep = Math.max(maxStep, step);
        renderProgress();
      } else if (u.event) {
        const e = u.event;
        eventCount++;
        eventsCount.textContent = `(${eventCount})`;
        eventsBody.prepend(h('tr', { 'data-testid': 'event-row', 'data-kind': e.kind },
          h('td', { class: 'num muted' }, e.seq ?? u.seq),
          h('td', { title: fmtAbs(parseTs(e.time)) }, fmtAbs(parseTs(e.time)).slice(11) || '—'),
          h('td', null, e.kind),
          h('td', null, badge(e.state)),
          h('td', { class: 'num' }, e.attempt ?? ''),
          h('td', { class: 'msg' }, e.message || '')));
        while (eventsBody.children.length > 1000) eventsBody.lastChild.remove();
        if (seq > loadedSeq && job) {
          // Live: show the state at once, then fetch the whole job (attempt, failure, times).
          if (e.state && short(e.state) !== 'UNSPECIFIED' && short(e.state) !== short(job.state)) {
            job = { ...job, state: e.state };
            renderJob();
          }
          loadJobSoon();
        }
        if (/checkpoint|artifact|succeeded|state_changed|finished/.test(e.kind || '')) loadFilesSoon();
      }
    }

    async function watch() {
      let backoff = 500;
      while (!view.signal.aborted) {
        const before = lastSeq;
        try {
          streamStatus.textContent = lastSeq ? `reconnecting after seq ${lastSeq}…` : 'connecting…';
          const r = await stream('tuna.v1.JobService/WatchJob', { id, afterSeq: String(lastSeq) }, (u) => {
            if (streamStatus.dataset.live !== '1') { streamStatus.textContent = 'live'; streamStatus.dataset.live = '1'; }
            onUpdate(u);
          }, view.signal);
          streamStatus.dataset.live = '';
          if (r === 'end') {
            streamEnded = true;
            streamStatus.textContent = 'finished';
            streamStatus.dataset.ended = '1';
            await Promise.all([loadJob(), loadFiles()]);
            return;
          }
        } catch (e) {
          streamStatus.dataset.live = '';
          if (view.signal.aborted || e.name === 'AbortError') return;
          if (!RETRIABLE.has(e.code)) {
            // Not retriable (the job poll below keeps the header current).
            clear(streamStatus, errorBox(e, 'stream-error'));
            return;
          }
        }
        if (lastSeq > before) backoff = 500;
        streamStatus.textContent = `stream dropped at seq ${lastSeq}; reconnecting…`;
        await sleep(backoff, view.signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    }

    (async () => {
      await loadJob();
      if (view.signal.aborted) return;
      if (!job) {
        // Nothing to show but the error (and a way back).
        for (const el of app.children) if (!el.classList.contains('crumbs') && el !== viewError) el.hidden = true;
        return;
      }
      loadedSeq = num(job.lastSeq) || 0;
      loadFiles();
      watch();
      // Safety net for fields no event carries (and a stream that cannot be opened).
      poll(view, async () => { if (!streamEnded || !JOB_TERMINAL.has(short(job?.state))) await loadJob(); }, 5000);
    })();
  }

  // ---------------------------------------------------------------- sweeps

  function objectiveText(spec) {
    const o = spec?.objective || {};
    const max = o.direction === 'DIRECTION_MAXIMIZE';
    return `${o.metric || 'eval_loss'} ${max ? '↑ max' : '↓ min'}`;
  }

  function algorithmText(spec) {
    const a = spec?.algorithm || {};
    const name = a.name || 'carbs';
    const bits = [name];
    if (a.asha && (a.asha.minResource != null)) bits.push(`asha(min ${a.asha.minResource}, η ${a.asha.eta ?? 3}${a.asha.variant ? `, ${a.asha.variant}` : ''})`);
    return bits.join(' + ');
  }

  function sweepsPage(app, view) {
    document.title = 'Sweeps · Tuna';
    const tokens = [''];
    let page = 0;
    let lastSig = '';
    const tbody = h('tbody');
    const prev = h('button', { type: 'button', class: 'btn', 'data-testid': 'sweeps-prev', disabled: true }, '← Newer');
    const next = h('button', { type: 'button', class: 'btn', 'data-testid': 'sweeps-next', disabled: true }, 'Older →');
    const status = statusLine('sweeps-status');
    app.append(h('div', { class: 'page-head' }, h('h1', null, 'Sweeps'), h('span', { class: 'muted live' }, 'live')),
      h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, h('table', { class: 'grid', 'data-testid': 'sweeps-table' },
        h('thead', null, h('tr', null, ['Sweep', 'State', 'Objective', 'Algorithm', 'Trials', 'Best', 'Total cost', 'Created', 'Message'].map((c) => h('th', null, c)))), tbody)),
      h('div', { class: 'pager' }, prev, next)), status.el);
    const refresh = poll(view, async () => {
      try {
        const asked = page;
        const res = await call('tuna.v1.SweepService/ListSweeps', { pageSize: 50, pageToken: tokens[page] }, view.signal);
        if (view.signal.aborted || asked !== page) return; // the user paged meanwhile
        const sweeps = res.sweeps || [];
        const sig = JSON.stringify([page, res]);
        if (sig !== lastSig) lastSig = sig; else { status.ok(`updated ${fmtAbs(Date.now()).slice(11)}`); return; }
        clear(tbody, sweeps.length ? sweeps.map((s) => {
          const spec = s.spec || {};
          const best = s.bestTrial;
          return h('tr', { 'data-testid': 'sweep-row', 'data-sweep-id': s.id },
            h('td', null, h('a', { href: `#/sweeps/${encodeURIComponent(s.id)}`, class: 'mono', 'data-testid': 'sweep-link' }, s.id)),
            h('td', null, badge(s.state, 'sweep-row-state')),
            h('td', null, objectiveText(spec)),
            h('td', null, algorithmText(spec)),
            h('td', { class: 'num' }, `${s.trialsFinished ?? 0}/${s.trialsCreated ?? 0}${s.trialsRunning ? ` (${s.trialsRunning} running)` : ''}`),
            h('td', { class: 'num' }, best && best.objective != null ? fmtNum(best.objective) : '—'),
            h('td', { class: 'num' }, fmtNum(s.totalCost)),
            h('td', null, timeEl(s.createdAt)),
            h('td', { class: 'msg' }, s.message || ''));
        }) : h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No sweeps yet.')));
        tokens.length = page + 1;
        if (res.nextPageToken) tokens.push(res.nextPageToken);
        next.disabled = !res.nextPageToken;
        prev.disabled = page === 0;
        status.ok(`updated ${fmtAbs(Date.now()).slice(11)}`);
      } catch (e) {
        if (e.name === 'AbortError') return;
        status.error(e);
      }
    }, 3000);
    next.addEventListener('click', () => { if (tokens[page + 1]) { page++; refresh(); } });
    prev.addEventListener('click', () => { if (page > 0) { page--; refresh(); } });
  }

  function parseParams(t) {
    try { return JSON.parse(t.paramsJson || '{}') || {}; } catch { return {}; }
  }

  function sameTrial(a, b) {
    return a && b && String(a.trial) === String(b.trial) && (a.run ?? 0) === (b.run ?? 0);
  }

  function sweepPage(app, view, id) {
    document.title = `${id} · Tuna`;
    let sweep = null;
    let trials = [];
    let pending = false;

    const viewError = h('div');
    const stateSlot = h('span');
    const cancel = h('button', { type: 'button', class: 'btn danger', disabled: true, 'data-testid': 'sweep-cancel' }, 'Cancel sweep');
    const actionResult = h('div', { class: 'action-result', 'data-testid': 'sweep-action-result' });
    const meta = h('dl', { class: 'meta', 'data-testid': 'sweep-meta' });
    const message = h('div', { class: 'muted', 'data-testid': 'sweep-message' });
    const bestSlot = h('div', { class: 'best', 'data-testid': 'best-trial' }, h('span', { class: 'muted' }, 'No best trial yet.'));
    const thead = h('thead');
    const tbody = h('tbody');
    const scatter = h('div', { class: 'chart-svg', 'data-testid': 'cost-scatter' });
    const params = h('div', { class: 'param-grid', 'data-testid': 'param-scatter' });
    const streamStatus = h('span', { class: 'stream-status muted', 'data-testid': 'stream-status' }, 'connecting…');
    const frontNote = h('span', { class: 'muted' });

    app.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/sweeps' }, '← Sweeps')),
      viewError,
      h('div', { class: 'card job-head' },
        h('div', { class: 'title-row' }, h('h1', { class: 'mono', 'data-testid': 'sweep-id' }, id), stateSlot, h('span', { class: 'spacer' }), streamStatus, cancel),
        actionResult, message, meta, bestSlot),
      h('div', { class: 'charts' },
        h('section', { class: 'chart card' }, h('div', { class: 'chart-head' }, h('span', { class: 'chart-title' }, 'Objective vs cost'),
          h('span', { class: 'legend' }, h('span', { class: 'key' }, h('i', { class: 'front-key' }), 'Pareto front'),
            h('span', { class: 'key' }, h('i', { class: 'best-key' }), 'best'), h('span', { class: 'key' }, h('i', { class: 'stopped-key' }), 'stopped early')), frontNote),
        scatter),
        h('section', { class: 'chart card' }, h('div', { class: 'chart-head' }, h('span', { class: 'chart-title' }, 'Objective vs hyperparameters')), params)),
      h('section', { class: 'card' }, h('h2', null, 'Trials'), h('div', { class: 'table-wrap' }, h('table', { class: 'grid small', 'data-testid': 'trials-table' }, thead, tbody))));

    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        const s = await call('tuna.v1.SweepService/CancelSweep', { id }, view.signal);
        sweep = s;
        clear(actionResult, h('span', { class: 'ok' }, 'CancelSweep: sweep is now ', badge(s.state)));
        schedule();
      } catch (e) {
        if (e.name === 'AbortError') return;
        clear(actionResult, errorBox(e, 'sweep-action-error'));
        banner(e, 'CancelSweep');
        cancel.disabled = false;
      }
    });

    function schedule() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; render(); });
    }

    function render() {
      if (!sweep) return;
      const spec = sweep.spec || {};
      const st = short(sweep.state);
      clear(stateSlot, badge(sweep.state, 'sweep-state'));
      cancel.disabled = SWEEP_TERMINAL.has(st);
      message.textContent = sweep.message || '';
      const costMetric = spec.costMetric || 'train_seconds';
      const row = (k, v, testid) => [h('dt', null, k), h('dd', { 'data-testid': testid }, v)];
      clear(meta,
        row('Objective', objectiveText(spec)),
        row('Algorithm', algorithmText(spec)),
        row('Trials', `${sweep.trialsFinished ?? 0} finished / ${sweep.trialsCreated ?? 0} created of ${spec.maxTrials ?? 20}${sweep.trialsRunning ? `, ${sweep.trialsRunning} running` : ''}`, 'sweep-counts'),
        row('Parallelism', String(spec.parallelism ?? 1)),
        row('Cost', `${fmtNum(sweep.totalCost)} ${costMetric}${spec.maxTotalCost ? ` of ${fmtNum(spec.maxTotalCost)}` : ''}`),
        row('Model', spec.template?.baseModel || '—'),
        row('Created', timeEl(sweep.createdAt)),
        row('Finished', timeEl(sweep.finishedAt)));

      const best = sweep.bestTrial;
      if (best && best.jobId) {
        clear(bestSlot, h('strong', null, 'Best trial '), `#${best.trial}${best.run ? `.${best.run}` : ''}: `,
          h('span', { class: 'mono', 'data-testid': 'best-objective' }, fmtNum(best.objective ?? best.lastValue, 5)), ` ${spec.objective?.metric || 'eval_loss'} `,
          '· job ', jobLink(best.jobId, 'best-trial-link'), ' · ',
          h('span', { class: 'mono muted' }, Object.entries(parseParams(best)).map(([k, v]) => `${k.split('.').pop()}=${typeof v === 'number' ? fmtNum(v) : v}`).join('  ')));
      }

      // Trials table: one column per searched parameter.
      const names = (spec.parameters || []).map((p) => p.name);
      for (const t of trials) for (const k of Object.keys(parseParams(t))) if (!names.includes(k)) names.push(k);
      const front = sweep.paretoFront || [];
      clear(thead, h('tr', null, ['Trial', 'Job', 'State', ...names.map((n) => n.replace(/^hyperparameters\.|^method\./, '')), 'Budget', 'Steps', 'Last value', 'Objective', 'Cost', ''].map((c) => h('th', null, c))));
      clear(tbody, trials.length ? trials.map((t) => {
        const p = parseParams(t);
        const isBest = sameTrial(t, best);
        const onFront = front.some((f) => sameTrial(f, t));
        const notes = [isBest ? h('span', { class: 'tag best-tag' }, '★ best') : null, onFront ? h('span', { class: 'tag front-tag' }, 'pareto') : null,
          t.stoppedEarly ? h('span', { class: 'tag' }, 'stopped early') : null, t.failed ? h('span', { class: 'tag bad' }, 'failed') : null];
        return h('tr', { 'data-testid': 'trial-row', 'data-trial': t.trial, 'data-best': isBest ? 'true' : 'false', class: isBest ? 'best-row' : '' },
          h('td', { class: 'num' }, `${t.trial}${t.run ? `.${t.run}` : ''}`),
          h('td', null, jobLink(t.jobId, 'trial-job-link')),
          h('td', null, badge(t.jobState)),
          names.map((n) => h('td', { class: 'num' }, p[n] == null ? '—' : typeof p[n] === 'number' ? fmtNum(p[n]) : String(p[n]))),
          h('td', { class: 'num' }, t.budget ? fmtNum(t.budget) : 'full'),
          h('td', { class: 'num' }, t.steps ?? 0),
          h('td', { class: 'num' }, fmtNum(t.lastValue)),
          h('td', { class: 'num' }, fmtNum(t.objective)),
          h('td', { class: 'num' }, costMetric === 'train_seconds' && t.cost != null ? fmtDuration(t.cost) : fmtNum(t.cost)),
          h('td', null, notes));
      }) : h('tr', null, h('td', { colspan: names.length + 9, class: 'empty' }, 'No trials yet.')));

      // Objective vs cost with the server's Pareto front.
      const done = trials.filter((t) => t.objective != null && t.cost != null && !t.failed);
      const pt = (t) => ({
        x: num(t.cost), y: num(t.objective), href: `#/jobs/${encodeURIComponent(t.jobId)}`,
        cls: [sameTrial(t, best) ? 'best' : '', front.some((f) => sameTrial(f, t)) ? 'front' : '', t.stoppedEarly ? 'stopped' : ''].join(' '),
        r: sameTrial(t, best) ? 7 : 4.5,
        testid: sameTrial(t, best) ? 'best-point' : 'trial-point',
        title: `trial ${t.trial}${t.run ? `.${t.run}` : ''} (${t.jobId}): ${fmtNum(t.objective, 5)} at cost ${fmtNum(t.cost)}`,
      });
      scatter.innerHTML = scatterSvg({ testid: 'cost', points: done.map(pt), xLabel: `cost (${costMetric})`, yLabel: spec.objective?.metric || 'eval_loss',
        front: front.map((f) => ({ x: num(f.cost), y: num(f.objective) })) });
      scatter.dataset.points = done.length;
      frontNote.textContent = front.length ? `${front.length} on the front` : '';

      // Objective vs each parameter.
      const specParams = spec.parameters || [];
      clear(params, specParams.length ? specParams.map((prm) => {
        const cat = prm.scale === 'categorical' ? [...new Set([...(prm.choices || []), ...done.map((t) => String(parseParams(t)[prm.name]))])].filter((c) => c !== 'undefined') : null;
        const points = done.map((t) => {
          const v = parseParams(t)[prm.name];
          const x = cat ? cat.indexOf(String(v)) : num(v);
          return { ...pt(t), x, r: sameTrial(t, best) ? 6 : 4, testid: null };
        }).filter((p) => p.x >= 0 || !cat);
        const wrap = h('div', { class: 'param-plot', 'data-param': prm.name });
        wrap.innerHTML = scatterSvg({ testid: 'param', points, xLabel: `${prm.name}${prm.scale === 'log' ? ' (log)' : ''}`, yLabel: spec.objective?.metric || 'eval_loss',
          logX: prm.scale === 'log', categories: cat, W: 360, H: 220 });
        return wrap;
      }) : h('span', { class: 'muted' }, 'No searched parameters.'));
    }

    const onSnapshot = (snap) => {
      if (snap.sweep) sweep = snap.sweep;
      if (snap.trials) trials = snap.trials;
      clear(viewError);
      schedule();
    };

    const pollOnce = async () => {
      const [s, t] = await Promise.all([
        call('tuna.v1.SweepService/GetSweep', { id }, view.signal),
        call('tuna.v1.SweepService/ListTrials', { sweepId: id }, view.signal),
      ]);
      if (view.signal.aborted) return;
      onSnapshot({ sweep: s, trials: t.trials || [] });
    };

    (async () => {
      let backoff = 500;
      while (!view.signal.aborted) {
        try {
          const r = await stream('tuna.v1.SweepService/WatchSweep', { id }, (snap) => {
            backoff = 500;
            streamStatus.textContent = 'live';
            onSnapshot(snap);
          }, view.signal);
          if (r === 'end') {
            streamStatus.textContent = 'finished';
            await pollOnce().catch(() => {});
            return;
          }
        } catch (e) {
          if (view.signal.aborted || e.name === 'AbortError') return;
          if (e.code === 'NOT_FOUND' || e.code === 'UNAUTHENTICATED' || e.code === 'INVALID_ARGUMENT' || e.code === 'PERMISSION_DENIED') {
            clear(viewError, errorBox(e, 'view-error'));
            streamStatus.textContent = '';
            if (!sweep) for (const el of app.children) if (!el.classList.contains('crumbs') && el !== viewError) el.hidden = true;
            return;
          }
          if (!RETRIABLE.has(e.code)) {
            // The stream is not available: fall back to polling.
            streamStatus.textContent = `polling (stream: ${e.code})`;
            poll(view, async () => {
              try { await pollOnce(); } catch (err) { if (err.name !== 'AbortError') clear(viewError, errorBox(err, 'view-error')); }
            }, 3000);
            return;
          }
        }
        streamStatus.textContent = 'reconnecting…';
        await sleep(backoff, view.signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    })();
  }

  // ---------------------------------------------------------------- workers

  function workersPage(app, view) {
    document.title = 'Workers · Tuna';
    const tbody = h('tbody');
    const count = h('span', { class: 'muted', 'data-testid': 'workers-count' });
    const status = statusLine('workers-status');
    app.append(h('div', { class: 'page-head' }, h('h1', null, 'Workers'), count, h('span', { class: 'muted live' }, 'live')),
      h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, h('table', { class: 'grid', 'data-testid': 'workers-table' },
        h('thead', null, h('tr', null, ['', 'Name', 'Worker', 'Device', 'Memory', 'Current job', 'Last seen', 'Registered'].map((c) => h('th', null, c)))), tbody))),
      status.el);
    poll(view, async () => {
      try {
        const res = await call('tuna.v1.FleetService/ListWorkers', {}, view.signal);
        if (view.signal.aborted) return;
        const ws = res.workers || [];
        const now = Date.now();
        const alive = ws.filter((w) => now - (parseTs(w.lastSeenAt) ?? 0) < 60000).length;
        count.textContent = `${ws.length} registered, ${alive} seen in the last minute`;
        clear(tbody, ws.length ? ws.map((w) => {
          const seen = parseTs(w.lastSeenAt);
          const age = seen == null ? Infinity : now - seen;
          const dot = age < 60000 ? 'up' : age < 300000 ? 'stale' : 'down';
          return h('tr', { 'data-testid': 'worker-row', 'data-worker-id': w.id },
            h('td', null, h('span', { class: `dot ${dot}`, title: dot === 'up' ? 'seen within a minute' : dot === 'stale' ? 'not seen for over a minute' : 'not seen for over 5 minutes' })),
            h('td', { 'data-testid': 'worker-name' }, w.name || '—'),
            h('td', { class: 'mono' }, w.id),
            h('td', { 'data-testid': 'worker-device' }, w.device || '—'),
            h('td', { class: 'num' }, num(w.memoryBytes) ? fmtBytes(w.memoryBytes) : '—'),
            h('td', null, w.currentJobId ? jobLink(w.currentJobId, 'worker-job') : h('span', { class: 'muted' }, 'idle')),
            h('td', null, timeEl(w.lastSeenAt, 'worker-last-seen')),
            h('td', null, timeEl(w.registeredAt)));
        }) : h('tr', null, h('td', { colspan: 8, class: 'empty' }, 'No workers registered.')));
        status.ok(`updated ${fmtAbs(Date.now()).slice(11)}`);
      } catch (e) {
        if (e.name === 'AbortError') return;
        status.error(e);
      }
    }, 3000);
  }

  // ---------------------------------------------------------------- start

  function start() {
    setupKeyModal();
    window.addEventListener('hashchange', route);
    if (!location.hash) history.replaceState(null, '', '#/jobs');
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
