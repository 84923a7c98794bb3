// Browser tests of the Tuna dashboard: a real `tuna server --embedded-worker` with an API key,
// data set up with the `tuna` CLI, the dashboard driven in Debian's headless Chromium.
//
//   node tests/browser/run.mjs          (after `npm ci` in tests/browser and a `cargo build -p tuna`)
//
// Environment: TUNA_BIN (default <repo>/target/debug/tuna), CHROMIUM (default /usr/bin/chromium),
// TUNA_UI_FROM_DISK=1 serves server/src/http/dashboard/* from disk instead of the binary's
// embedded copy (for working on the dashboard without a rebuild; the embedded-copy check is
// then skipped). Prints one line per check; exits 0 only when every check held. Screenshots go
// to tests/browser/out/.

import { spawn, execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const bin = process.env.TUNA_BIN || path.join(repo, 'target/debug/tuna');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const outDir = path.join(here, 'out');
const uiDir = path.join(repo, 'server/src/http/dashboard');
const uiFromDisk = process.env.TUNA_UI_FROM_DISK === '1';
const KEY = `browser-${randomBytes(8).toString('hex')}`;
const RUN = randomBytes(3).toString('hex');
const JOB_STEPS = Number(process.env.TUNA_BROWSER_STEPS || 400);
const SWEEP_TRIALS = 4;

// ------------------------------------------------------------------ checks

const results = [];
async function check(name, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${name}${detail ? ` — ${detail}` : ''} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    return true;
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}: ${String(e?.message || e).split('\n').slice(0, 3).join(' | ')} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    return false;
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ processes

const cleanups = [];
async function cleanup() {
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch { /* best effort */ }
  }
}
const watchdog = setTimeout(async () => {
  console.log('FAIL the whole run took over 10 minutes');
  await cleanup();
  process.exit(1);
}, 10 * 60 * 1000);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, async () => { await cleanup(); process.exit(130); });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function tuna(args, env) {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { env, maxBuffer: 16 << 20, timeout: 120000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`tuna ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

async function tunaJson(args, env) {
  const out = await tuna([...args, '--output', 'json'], env);
  return JSON.parse(out);
}

// ------------------------------------------------------------------ main

async function main() {
  const { access, constants } = await import('node:fs/promises');
  const ready = await check(`the tuna binary and Chromium exist (${bin}, ${chromiumPath})`, async () => {
    await access(bin, constants.X_OK).catch(() => { throw new Error(`${bin} is missing: run cargo build -p tuna (or set TUNA_BIN)`); });
    await access(chromiumPath, constants.X_OK).catch(() => { throw new Error(`${chromiumPath} is missing: apt-get install chromium (or set CHROMIUM)`); });
  });
  if (!ready) return;
  await mkdir(outDir, { recursive: true });
  const data = await mkdtemp(path.join(tmpdir(), 'tuna-browser-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const env = { ...process.env, TUNA_API_KEY: KEY, TUNA_SERVER: base, NO_COLOR: '1', RUST_LOG_STYLE: 'never' };
  console.log(`# tuna ${bin}\n# data ${data}\n# server ${base}`);

  // The server.
  const { createWriteStream } = await import('node:fs');
  const log = createWriteStream(path.join(data, 'server.log'));
  const server = spawn(bin, ['server', '--embedded-worker', '--listen', `127.0.0.1:${port}`, '--data-dir', data], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  server.stdout.pipe(log);
  server.stderr.pipe(log);
  let serverExited = null;
  server.on('exit', (code, sig) => { serverExited = `exit ${code ?? sig}`; });
  server.on('error', (e) => { serverExited = `spawn error: ${e.message}`; });
  cleanups.push(async () => {
    if (serverExited) return;
    server.kill('SIGTERM');
    for (let i = 0; i < 50 && !serverExited; i++) await sleep(100);
    if (!serverExited) server.kill('SIGKILL');
  });
  let failedEarly = false;
  const tailLog = async () => {
    const text = await readFile(path.join(data, 'server.log'), 'utf8').catch(() => '');
    console.log(`# server log (last lines):\n${text.split('\n').slice(-25).join('\n')}`);
  };

  const up = await check('server starts and serves /api/openapi.json', async () => {
    for (let i = 0; i < 300; i++) {
      if (serverExited) throw new Error(`server ${serverExited}`);
      try {
        const r = await fetch(`${base}/api/openapi.json`);
        if (r.ok) { await r.json(); return `after ${(i * 0.1).toFixed(1)} s`; }
      } catch { /* not yet */ }
      await sleep(100);
    }
    throw new Error('no answer within 30 s');
  });
  if (!up) { await tailLog(); return; }

  const api = async (rpc, body) => {
    const r = await fetch(`${base}/api/${rpc}`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const j = await r.json();
    if (!r.ok) throw new Error(`${rpc}: ${r.status} ${JSON.stringify(j)}`);
    return j;
  };

  await check('the served dashboard is server/src/http/dashboard/ (index.html, app.js, app.css)', async () => {
    if (uiFromDisk) return 'skipped: TUNA_UI_FROM_DISK=1 serves the files from disk';
    for (const [url, file] of [['/', 'index.html'], ['/ui/app.js', 'app.js'], ['/ui/app.css', 'app.css']]) {
      const r = await fetch(base + url);
      assert(r.ok, `GET ${url}: ${r.status}`);
      const served = await r.text();
      const disk = await readFile(path.join(uiDir, file), 'utf8');
      assert(served === disk, `GET ${url} differs from ${file} on disk (rebuild the tuna binary)`);
    }
    return 'identical';
  });

  // Data, with the CLI.
  let fileId; let jobA; let jobB; let sweepId;
  const setup = await check('CLI sets up a model, a dataset, two jobs and a sweep', async () => {
    const model = path.join(data, 'tiny-llama');
    await tuna(['models', 'make-tiny', '--out', model, '--seed', '1'], env);
    await tuna(['models', 'register', 'tiny-llama', '--path', model], env);
    const file = await tunaJson(['files', 'upload', path.join(repo, 'examples/data/arithmetic.jsonl')], env);
    fileId = file.id;
    const common = ['jobs', 'create', '--model', 'tiny-llama', '--training-file', fileId, '--validation-file', fileId,
      '--method', 'lora', '--r', '8', '--learning-rate', '0.005', '--label', `suite=browser-${RUN}`];
    jobA = (await tunaJson([...common, '--max-steps', String(JOB_STEPS), '--eval-every', '50', '--label', 'role=watched'], env)).id;
    jobB = (await tunaJson([...common, '--max-steps', String(JOB_STEPS), '--label', 'role=cancelled'], env)).id;
    const spec = path.join(data, 'sweep.toml');
    await writeFile(spec, `max_trials = ${SWEEP_TRIALS}
parallelism = 2
seed = 7

[objective]
metric = "eval_loss"

[algorithm]
name = "random"

[[parameters]]
name = "hyperparameters.learning_rate"
scale = "log"
min = 1e-3
max = 0.05

[[parameters]]
name = "method.lora.r"
scale = "linear"
min = 2
max = 16
integer = true

[template]
base_model = "tiny-llama"
training_file = "file_00000000000000000000000000000000"

[template.method]
type = "lora"

[template.hyperparameters]
max_steps = 16
batch_size = 8
eval_every = 8
schedule = "constant"
seed = 42
`);
    sweepId = (await tunaJson(['sweeps', 'create', spec, '--model', 'tiny-llama', '--training-file', fileId, '--validation-file', fileId], env)).id;
    assert(/^job_/.test(jobA) && /^job_/.test(jobB) && sweepId, 'ids missing');
    return `${jobA} (${JOB_STEPS} steps), ${jobB}, ${sweepId}`;
  });
  if (!setup) { await tailLog(); return; }

  // The browser.
  const userData = await mkdtemp(path.join(tmpdir(), 'tuna-chromium-'));
  cleanups.push(() => rm(userData, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(userData, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 1000 },
    acceptDownloads: true,
  });
  cleanups.push(() => context.close());
  const jsErrors = [];
  const newPage = async () => {
    const p = await context.newPage();
    p.on('pageerror', (e) => jsErrors.push(`${e.message}`));
    p.on('console', (m) => { if (/Content.Security.Policy|Refused to/i.test(m.text())) jsErrors.push(`CSP: ${m.text()}`); });
    p.setDefaultTimeout(20000);
    if (uiFromDisk) {
      // The server's own response (status, CSP and other headers) with the file from disk.
      for (const [url, file] of [['/', 'index.html'], ['/ui/app.js', 'app.js'], ['/ui/app.css', 'app.css']]) {
        await p.route(base + url, async (r) => {
          const response = await r.fetch();
          const headers = { ...response.headers() };
          delete headers['content-length'];
          await r.fulfill({ response, headers, body: await readFile(path.join(uiDir, file), 'utf8') });
        });
      }
    }
    return p;
  };
  const modalShown = (p) => p.locator('[data-testid=key-modal]:not([hidden])');
  const login = async (p, key = KEY) => {
    await modalShown(p).waitFor({ state: 'visible' });
    await p.fill('[data-testid=key-input]', key);
    await p.click('[data-testid=key-submit]');
  };
  const stateOf = (p, sel) => p.getAttribute(sel, 'data-state');

  // 1. The key prompt: no key, then a wrong key, then the right one.
  const list = await newPage();
  await check('without a key the dashboard asks for one (401 → key prompt)', async () => {
    await list.goto(`${base}/#/jobs`);
    await modalShown(list).waitFor({ state: 'visible' });
    const text = await list.textContent('[data-testid=key-error]');
    assert(/UNAUTHENTICATED/.test(text), `key error says ${JSON.stringify(text)}`);
    return text.trim();
  });
  await check('a wrong key is refused and the prompt shows the error', async () => {
    await login(list, 'not-the-key');
    await list.waitForFunction(() => !document.querySelector('[data-testid=key-modal]').hidden
      && /refused/.test(document.querySelector('[data-testid=key-error]').textContent));
    const text = (await list.textContent('[data-testid=key-error]')).trim();
    assert(/UNAUTHENTICATED/.test(text), text);
    return text;
  });
  await check('the right key opens the jobs list with both jobs', async () => {
    await list.fill('[data-testid=key-input]', KEY);
    await list.click('[data-testid=key-submit]');
    await modalShown(list).waitFor({ state: 'hidden' });
    await list.locator(`[data-testid=job-row][data-job-id="${jobA}"]`).waitFor();
    await list.locator(`[data-testid=job-row][data-job-id="${jobB}"]`).waitFor();
    const st = await stateOf(list, `[data-testid=job-row][data-job-id="${jobA}"]`);
    return `job A is ${st}`;
  });
  await check('the label filter narrows the list (k=v)', async () => {
    await list.fill('[data-testid=label-filter]', `suite=browser-${RUN} role=watched`);
    await list.click('[data-testid=filter-apply]');
    await list.waitForFunction((b) => !document.querySelector(`[data-testid=job-row][data-job-id="${b}"]`)
      && document.querySelectorAll('[data-testid=job-row]').length === 1, jobB);
    const ids = await list.$$eval('[data-testid=job-row]', (rows) => rows.map((r) => r.dataset.jobId));
    assert(ids.length === 1 && ids[0] === jobA, `rows ${ids}`);
    return `1 row, ${jobA}`;
  });
  await check('paging follows nextPageToken (page size 1: newest first, Older, Newer)', async () => {
    const { jobs } = await api('tuna.v1.JobService/ListJobs', { pageSize: 2, labels: { suite: `browser-${RUN}` } });
    const [newer, older] = jobs.map((j) => j.id);
    assert(jobs.length === 2 && Date.parse(jobs[0].createdAt) >= Date.parse(jobs[1].createdAt), 'the API does not list newest first');
    await list.goto(`${base}/#/jobs?labels=suite=browser-${RUN}&pageSize=1`);
    const only = async () => {
      await list.waitForFunction(() => document.querySelectorAll('[data-testid=job-row]').length === 1);
      return list.getAttribute('[data-testid=job-row]', 'data-job-id');
    };
    await list.waitForFunction(() => /page 1 /.test(document.querySelector('[data-testid=jobs-page]')?.textContent || ''));
    const first = await only();
    assert(first === newer, `page 1 shows ${first}, expected the newer job ${newer}`);
    await list.click('[data-testid=jobs-next]:not([disabled])');
    await list.waitForFunction(() => /page 2 /.test(document.querySelector('[data-testid=jobs-page]').textContent));
    const second = await only();
    assert(second === older, `page 2 shows ${second}, expected ${older}`);
    await list.click('[data-testid=jobs-prev]:not([disabled])');
    await list.waitForFunction(() => /page 1 /.test(document.querySelector('[data-testid=jobs-page]').textContent));
    assert(await only() === newer, 'back on page 1');
    await list.goto(`${base}/#/jobs?labels=suite=browser-${RUN}`);
    await list.waitForFunction(() => document.querySelectorAll('[data-testid=job-row]').length === 2);
    return `${first} | ${second}`;
  });
  await check('the state filter (multi-select) narrows the list', async () => {
    await list.check('[data-testid=state-filter-running]');
    await list.waitForFunction(() => /states=RUNNING/.test(location.hash));
    await list.waitForFunction((a) => document.querySelectorAll('[data-testid=job-row]').length === 1
      && document.querySelector(`[data-testid=job-row][data-job-id="${a}"]`), jobA);
    await list.check('[data-testid=state-filter-queued]');
    await list.waitForFunction(() => /states=QUEUED%2CRUNNING|states=QUEUED,RUNNING/.test(location.hash));
    await list.waitForFunction(() => document.querySelectorAll('[data-testid=job-row]').length === 2);
    const hash = await list.evaluate(() => decodeURIComponent(location.hash));
    await list.uncheck('[data-testid=state-filter-queued]');
    await list.uncheck('[data-testid=state-filter-running]');
    await list.waitForFunction(() => !/states=/.test(location.hash) && document.querySelectorAll('[data-testid=job-row]').length === 2);
    return `RUNNING → 1 row; QUEUED+RUNNING → 2 rows (${hash})`;
  });
  await list.screenshot({ path: path.join(outDir, 'jobs.png') });
  await list.evaluate(() => { window.__tunaNoReload = 'still here'; });

  // 2. The job page: live curves while job A runs.
  const jobPage = await newPage();
  await jobPage.goto(`${base}/#/jobs/${jobA}`);
  await login(jobPage);
  await check('the job page shows the job header (id, state, model, method)', async () => {
    await jobPage.locator('[data-testid=job-state]').waitFor();
    const id = (await jobPage.textContent('[data-testid=job-id]')).trim();
    const model = (await jobPage.textContent('[data-testid=job-model]')).trim();
    const method = (await jobPage.textContent('[data-testid=job-method]')).trim();
    assert(id === jobA, `id ${id}`);
    assert(model === 'tiny-llama', `model ${model}`);
    assert(/^lora r=8/.test(method), `method ${method}`);
    return `${await stateOf(jobPage, '[data-testid=job-state]')}, ${model}, ${method}`;
  });
  const points = () => jobPage.getAttribute('[data-testid=loss-chart]', 'data-points').then(Number);
  let n1 = 0;
  await check('the job runs and the loss chart gets points', async () => {
    await jobPage.waitForFunction(() => Number(document.querySelector('[data-testid=loss-chart]')?.dataset.points) > 5, null, { timeout: 120000 });
    n1 = await points();
    const st = await stateOf(jobPage, '[data-testid=job-state]');
    assert(st === 'RUNNING', `state ${st} (the job finished before the page saw it run: raise TUNA_BROWSER_STEPS)`);
    return `${n1} points, RUNNING`;
  });
  await check('the loss chart gains points live (count increases between two reads)', async () => {
    await jobPage.waitForFunction((n) => Number(document.querySelector('[data-testid=loss-chart]').dataset.points) > n + 5, n1, { timeout: 30000 });
    const n2 = await points();
    const lr = Number(await jobPage.getAttribute('[data-testid=lr-chart]', 'data-points'));
    const paths = await jobPage.locator('[data-testid=loss-chart] path.line[data-series=loss]').count();
    assert(n2 > n1, `${n1} → ${n2}`);
    assert(lr > 0 && paths === 1, `lr points ${lr}, loss paths ${paths}`);
    return `${n1} → ${n2} points (lr chart ${lr})`;
  });
  await check('a screenshot of the job page with its live curve (job still running)', async () => {
    // Let a good part of the curve arrive first, so the picture shows something.
    await jobPage.waitForFunction((n) => Number(document.querySelector('[data-testid=loss-chart]').dataset.points) >= n
      || document.querySelector('[data-testid=job-state]')?.dataset.state !== 'RUNNING', Math.floor(JOB_STEPS * 0.4), { timeout: 120000 });
    await jobPage.waitForTimeout(200);
    const st = await stateOf(jobPage, '[data-testid=job-state]');
    const n = await points();
    await jobPage.screenshot({ path: path.join(outDir, 'job.png'), fullPage: true });
    assert(st === 'RUNNING', `state ${st} by the time of the screenshot`);
    return `${path.join(outDir, 'job.png')}: ${n} points, ${st}`;
  });

  // 3. Cancel job B (queued behind A on the one worker) from its page.
  const other = await newPage();
  await other.goto(`${base}/#/jobs/${jobB}`);
  await login(other);
  const stateIs = (p, states, timeout = 20000) => p.waitForFunction((ss) => ss.includes(document.querySelector('[data-testid=job-state]')?.dataset.state), states, { timeout });
  const enabled = async (p) => (await Promise.all(['pause', 'resume', 'cancel'].map(async (b) => (await p.isDisabled(`[data-testid=job-${b}]`) ? '' : b)))).filter(Boolean).join('+');
  await check('pause and resume on a second (queued) job: buttons follow the state machine', async () => {
    await other.locator('[data-testid=job-state]').waitFor();
    const before = await stateOf(other, '[data-testid=job-state]');
    assert(before === 'QUEUED', `job B is ${before}, expected QUEUED behind job A`);
    const e0 = await enabled(other);
    assert(e0 === 'pause+cancel', `QUEUED enables ${e0}`);
    await other.click('[data-testid=job-pause]');
    await stateIs(other, ['PAUSED']);
    const e1 = await enabled(other);
    assert(e1 === 'resume+cancel', `PAUSED enables ${e1}`);
    await other.click('[data-testid=job-resume]');
    await stateIs(other, ['QUEUED', 'RUNNING']);
    const result = (await other.textContent('[data-testid=job-action-result]')).trim();
    assert(/ResumeJob/.test(result), `action result ${result}`);
    return `QUEUED [${e0}] → PAUSED [${e1}] → ${await stateOf(other, '[data-testid=job-state]')} ("${result}")`;
  });
  await check('cancel on the second job: the page shows CANCELLED/CANCELLING', async () => {
    const before = await stateOf(other, '[data-testid=job-state]');
    await other.locator('[data-testid=job-cancel]:not([disabled])').waitFor();
    await other.click('[data-testid=job-cancel]');
    await stateIs(other, ['CANCELLED', 'CANCELLING']);
    const after = await stateOf(other, '[data-testid=job-state]');
    const result = (await other.textContent('[data-testid=job-action-result]')).trim();
    assert(/CANCEL/.test(result), `action result ${result}`);
    await stateIs(other, ['CANCELLED'], 60000);
    const e = await enabled(other);
    assert(e === '', `CANCELLED enables ${e}`);
    return `${before} → ${after} → CANCELLED ("${result}")`;
  });
  await check('a refused request shows the error with its field violation (bad job id)', async () => {
    await other.goto(`${base}/#/jobs/job_nope`);
    const box = other.locator('[data-testid=view-error]');
    await box.waitFor();
    const text = (await box.textContent()).trim();
    const code = await box.getAttribute('data-code');
    const fields = await box.locator('.violations code').allTextContents();
    assert(code === 'INVALID_ARGUMENT' && fields.includes('id'), `${code} ${fields} ${text}`);
    return text.slice(0, 140);
  });
  await check('the workers page shows the job the worker is running (link)', async () => {
    const job = await api('tuna.v1.JobService/GetJob', { id: jobA });
    if (job.state !== 'JOB_STATE_RUNNING') return `skipped: job A is ${job.state} already`;
    await other.goto(`${base}/#/workers`);
    await other.waitForFunction((a) => [...document.querySelectorAll('[data-testid=worker-job]')].some((l) => l.textContent === a), jobA);
    const href = await other.getAttribute('[data-testid=worker-job]', 'href');
    assert(href === `#/jobs/${jobA}`, href);
    return `current job ${href}`;
  });
  await other.close();

  // 4. Job A ends: the list (never reloaded) and the job page show SUCCEEDED.
  await check('the jobs list shows the state change live (→ SUCCEEDED without reload)', async () => {
    await list.waitForFunction((a) => document.querySelector(`[data-testid=job-row][data-job-id="${a}"]`)?.dataset.state === 'SUCCEEDED', jobA, { timeout: 240000 });
    const marker = await list.evaluate(() => window.__tunaNoReload);
    assert(marker === 'still here', 'the page was reloaded');
    return 'SUCCEEDED, same document';
  });
  await check('the job page ends with the final state, the whole curve and its events', async () => {
    await jobPage.waitForFunction(() => document.querySelector('[data-testid=job-state]')?.dataset.state === 'SUCCEEDED', null, { timeout: 60000 });
    await jobPage.waitForFunction(() => document.querySelector('[data-testid=stream-status]')?.dataset.ended === '1', null, { timeout: 30000 });
    const n = await points();
    const evalPts = Number(await jobPage.getAttribute('[data-testid=loss-chart]', 'data-eval-loss-points'));
    const events = await jobPage.locator('[data-testid=event-row]').count();
    const progress = (await jobPage.textContent('[data-testid=job-progress]')).trim();
    assert(n === JOB_STEPS, `${n} loss points, expected ${JOB_STEPS}`);
    assert(evalPts >= 2, `${evalPts} eval points`);
    assert(events >= 3, `${events} events`);
    return `${n} loss points, ${evalPts} eval points, ${events} events, "${progress}"`;
  });
  await jobPage.screenshot({ path: path.join(outDir, 'job-final.png'), fullPage: true });

  await check('a download link fetches the adapter (sha256 matches the artifact)', async () => {
    const link = jobPage.locator('[data-testid=artifact-row][data-kind=ADAPTER] [data-testid=artifact-download]');
    await link.waitFor();
    const artifactId = await link.getAttribute('data-artifact-id');
    const art = await api('tuna.v1.ArtifactService/GetArtifact', { id: artifactId });
    const [download] = await Promise.all([jobPage.waitForEvent('download'), link.click()]);
    const file = path.join(data, 'downloaded-adapter');
    await download.saveAs(file);
    const bytes = await readFile(file);
    const sha = createHash('sha256').update(bytes).digest('hex');
    assert(download.suggestedFilename() === art.name, `file name ${download.suggestedFilename()} vs ${art.name}`);
    assert(sha === art.sha256, `sha256 ${sha} vs ${art.sha256}`);
    assert(bytes.length === Number(art.sizeBytes), `size ${bytes.length} vs ${art.sizeBytes}`);
    await jobPage.waitForFunction(() => /verified/.test(document.querySelector('[data-testid=download-status]').textContent));
    const checkpoints = await jobPage.locator('[data-testid=checkpoint-row]').count();
    return `${art.name}, ${bytes.length} bytes, sha256 ${sha.slice(0, 12)}…, page says "${(await jobPage.textContent('[data-testid=download-status]')).trim()}"; ${checkpoints} checkpoints listed`;
  });

  await check('a dropped WatchJob stream reconnects with afterSeq = last seen seq (no gaps, no duplicates)', async () => {
    const p = await newPage();
    const bodies = [];
    let cutAt = null;
    await p.route(`${base}/api/tuna.v1.JobService/WatchJob`, async (route) => {
      bodies.push(JSON.parse(route.request().postData() || '{}'));
      if (bodies.length > 1) { await route.continue(); return; }
      // The first stream breaks off halfway (the job is over, so the whole replay is here).
      const response = await route.fetch();
      const text = await response.text();
      const events = text.split('\n\n').filter((e) => e.startsWith('event: message'));
      const kept = events.slice(0, Math.floor(events.length / 2));
      cutAt = JSON.parse(kept[kept.length - 1].split('\ndata: ')[1]).seq;
      await route.fulfill({ response, body: `${kept.join('\n\n')}\n\n` });
    });
    await p.goto(`${base}/#/jobs/${jobA}`);
    await login(p);
    await p.waitForFunction(() => document.querySelector('[data-testid=stream-status]')?.dataset.ended === '1', null, { timeout: 30000 });
    const n = Number(await p.getAttribute('[data-testid=loss-chart]', 'data-points'));
    const events = await p.locator('[data-testid=event-row]').count();
    const seqs = await p.$$eval('[data-testid=event-row] td:first-child', (tds) => tds.map((t) => t.textContent));
    await p.close();
    assert(bodies.length >= 2, `${bodies.length} WatchJob calls`);
    assert(String(bodies[0].afterSeq) === '0', `first afterSeq ${bodies[0].afterSeq}`);
    assert(String(bodies[1].afterSeq) === String(cutAt), `reconnect afterSeq ${bodies[1].afterSeq}, last delivered seq ${cutAt}`);
    assert(n === JOB_STEPS, `${n} loss points after the reconnect, expected ${JOB_STEPS}`);
    assert(new Set(seqs).size === seqs.length, `duplicate events ${seqs}`);
    return `cut after seq ${cutAt}, reconnected with afterSeq ${bodies[1].afterSeq}; ${n} loss points, ${events} events`;
  });

  // 5. The sweep.
  const sweepPage = jobPage;
  await check('the sweeps list shows the sweep', async () => {
    await sweepPage.click('[data-testid=nav-sweeps]');
    await sweepPage.locator(`[data-testid=sweep-row][data-sweep-id="${sweepId}"]`).waitFor();
    await sweepPage.click(`[data-testid=sweep-row][data-sweep-id="${sweepId}"] [data-testid=sweep-link]`);
    await sweepPage.locator('[data-testid=sweep-state]').waitFor();
    return await stateOf(sweepPage, '[data-testid=sweep-state]');
  });
  await check('the sweep page shows the trials table, the best trial and the Pareto front', async () => {
    await sweepPage.waitForFunction(() => document.querySelector('[data-testid=sweep-state]')?.dataset.state === 'SUCCEEDED', null, { timeout: 300000 });
    const sweep = await api('tuna.v1.SweepService/GetSweep', { id: sweepId });
    await sweepPage.waitForFunction((n) => document.querySelectorAll('[data-testid=trial-row]').length === n
      && document.querySelector('[data-testid=pareto-front]') && document.querySelector('[data-testid=best-trial-link]'), SWEEP_TRIALS);
    await sweepPage.waitForTimeout(300);
    const best = await sweepPage.locator('[data-testid=trial-row][data-best=true]').count();
    const bestHref = await sweepPage.getAttribute('[data-testid=best-trial-link]', 'href');
    const bestRowJob = await sweepPage.textContent('[data-testid=trial-row][data-best=true] [data-testid=trial-job-link]');
    const front = Number(await sweepPage.getAttribute('[data-testid=pareto-front]', 'data-points'));
    const dots = await sweepPage.locator('[data-testid=cost-scatter] circle').count();
    const plots = await sweepPage.locator('[data-testid=param-scatter] .param-plot').count();
    assert(best === 1, `${best} rows marked best`);
    assert(bestHref === `#/jobs/${sweep.bestTrial.jobId}`, `best link ${bestHref} vs ${sweep.bestTrial.jobId}`);
    assert(bestRowJob.trim() === sweep.bestTrial.jobId, `best row ${bestRowJob}`);
    assert(front === (sweep.paretoFront || []).length && front >= 1, `front ${front} vs ${(sweep.paretoFront || []).length}`);
    assert(dots >= 1 && plots === 2, `${dots} scatter points, ${plots} parameter plots`);
    return `${SWEEP_TRIALS} trials, best ${sweep.bestTrial.jobId} (${Number(sweep.bestTrial.objective).toFixed(4)}), front of ${front}, ${dots} points, ${plots} parameter plots`;
  });
  await sweepPage.screenshot({ path: path.join(outDir, 'sweep.png'), fullPage: true });
  console.log(`#    screenshot ${path.join(outDir, 'sweep.png')}`);
  await check("the best trial's link opens its job", async () => {
    const href = await sweepPage.getAttribute('[data-testid=best-trial-link]', 'href');
    await sweepPage.click('[data-testid=best-trial-link]');
    await sweepPage.waitForFunction((h) => location.hash === h && document.querySelector('[data-testid=job-state]'), href);
    return `${href} is ${await stateOf(sweepPage, '[data-testid=job-state]')}`;
  });

  await check('cancel on a second sweep: the page shows CANCELLED', async () => {
    const spec = path.join(data, 'sweep.toml');
    const id = (await tunaJson(['sweeps', 'create', spec, '--model', 'tiny-llama', '--training-file', fileId, '--validation-file', fileId], env)).id;
    await sweepPage.goto(`${base}/#/sweeps/${id}`);
    await sweepPage.locator('[data-testid=sweep-cancel]:not([disabled])').waitFor();
    await sweepPage.click('[data-testid=sweep-cancel]');
    await sweepPage.waitForFunction(() => document.querySelector('[data-testid=sweep-state]')?.dataset.state === 'CANCELLED');
    const result = (await sweepPage.textContent('[data-testid=sweep-action-result]')).trim();
    assert(/CANCELLED/.test(result), result);
    assert(await sweepPage.isDisabled('[data-testid=sweep-cancel]'), 'cancel still enabled');
    return `${id}: "${result}"`;
  });

  // 6. Workers.
  await check('the workers page lists the embedded worker', async () => {
    const { workers } = await api('tuna.v1.FleetService/ListWorkers', {});
    assert(workers.length >= 1, 'no worker registered');
    await sweepPage.click('[data-testid=nav-workers]');
    await sweepPage.locator(`[data-testid=worker-row][data-worker-id="${workers[0].id}"]`).waitFor();
    const device = (await sweepPage.textContent(`[data-testid=worker-row][data-worker-id="${workers[0].id}"] [data-testid=worker-device]`)).trim();
    const seen = (await sweepPage.textContent(`[data-testid=worker-row][data-worker-id="${workers[0].id}"] [data-testid=worker-last-seen]`)).trim();
    assert(device === 'cpu', `device ${device}`);
    assert(/ago|just now/.test(seen), `last seen ${seen}`);
    await sweepPage.screenshot({ path: path.join(outDir, 'workers.png') });
    return `${workers[0].name} (${workers[0].id}), ${device}, last seen ${seen}`;
  });

  await check('no JavaScript errors on any page', async () => {
    assert(!jsErrors.length, jsErrors.join('; '));
  });
  failedEarly = results.some((r) => !r.ok);
  if (failedEarly) await tailLog();
  else cleanups.push(() => rm(data, { recursive: true, force: true }));
}

try {
  await main();
} catch (e) {
  results.push({ name: 'run', ok: false });
  console.log(`FAIL run aborted: ${e?.stack || e}`);
}
await cleanup();
clearTimeout(watchdog);
const failed = results.filter((r) => !r.ok);
console.log(`# ${results.length - failed.length}/${results.length} checks passed${failed.length ? `; failed: ${failed.map((r) => r.name).join('; ')}` : ''}`);
process.exit(failed.length || !results.length ? 1 : 0);
