// Shared process harness for the real-component tests: starts the test OpenID provider
// (demo/provider/provider.mjs), the demo API (demo/api/server.mjs) and Portcullis as child
// processes bound to 127.0.0.1, waits until each is ready, and stops them all at the end
// (also when a test fails or the runner exits).
//
//   import * as h from './harness.mjs';
//   const provider = await h.startProvider({ issuerHost: 'localhost', clients: [...] });
//   const api = await h.startApi({ introspectionUrl: `${provider.issuer}/token/introspection` });
//   const gw = await h.startPortcullis({ config: h.portcullisToml({...}) });
//   ...
//   await h.stopAll();
//
// Every child's stdout/stderr is kept in memory; `h.dumpLogs()` prints them (call it when a
// test fails), and env HARNESS_VERBOSE=1 streams them live.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const PROVIDER_SCRIPT = path.join(ROOT, 'demo/provider/provider.mjs');
export const API_SCRIPT = path.join(ROOT, 'demo/api/server.mjs');
export const SPA_DIR = path.join(ROOT, 'demo/spa');

const verbose = !!process.env.HARNESS_VERBOSE;
const children = new Set(); // running
const allChildrenEver = []; // for dumpLogs()
const tmpDirs = new Set();

/** A free TCP port on 127.0.0.1 (bound and released: a tiny race is possible). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A fresh temporary directory, removed by stopAll(). */
export function tmpDir(prefix = 'portcullis-test-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.add(dir);
  return dir;
}

/** A random base64url key of 32 bytes (for session.keys). */
export function randomKey() {
  return crypto.randomBytes(32).toString('base64url');
}

/**
 * Spawn a child process that is tracked (stopped by stopAll) and whose output is captured.
 * Returns { name, proc, log(), stop(), exited (promise of {code, signal}) }.
 */
export function spawnTracked(name, cmd, args, { env = {}, cwd = ROOT } = {}) {
  const proc = spawn(cmd, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const chunks = [];
  const child = {
    name,
    proc,
    stdout: '',
    log: () => chunks.join(''),
    exited: new Promise((resolve) => {
      proc.once('exit', (code, signal) => resolve({ code, signal }));
    }),
    stop: () => stopChild(child),
  };
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => {
    child.stdout += d;
    chunks.push(d);
    if (verbose) process.stderr.write(prefixLines(name, d));
  });
  proc.stderr.on('data', (d) => {
    chunks.push(d);
    if (verbose) process.stderr.write(prefixLines(name, d));
  });
  proc.once('error', (err) => chunks.push(`[spawn error] ${err.message}\n`));
  children.add(child);
  allChildrenEver.push(child);
  child.exited.then(() => children.delete(child));
  return child;
}

function prefixLines(name, text) {
  return text.replace(/^(?=.)/gm, `[${name}] `);
}

async function stopChild(child, graceMs = 3000) {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return;
  child.proc.kill('SIGTERM');
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Wait for a line `READY <url>` on the child's stdout; resolves with <url>. */
export async function waitReadyLine(child, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = child.stdout.match(/^READY (\S+)\s*$/m);
    if (m) return m[1];
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
      throw new Error(`${child.name} exited before READY (${child.proc.exitCode ?? child.proc.signalCode}):\n${child.log()}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`${child.name} not READY after ${timeoutMs} ms:\n${child.log()}`);
    }
    await sleep(20);
  }
}

/** Poll `url` until it answers `status` (default 200). */
export async function waitHttp(child, url, { timeoutMs = 20_000, status = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000), redirect: 'manual' });
      await r.arrayBuffer();
      if (r.status === status) return;
      last = `HTTP ${r.status}`;
    } catch (err) {
      last = err.cause?.code ?? err.message;
    }
    if (child && (child.proc.exitCode !== null || child.proc.signalCode !== null)) {
      throw new Error(`${child.name} exited (${child.proc.exitCode ?? child.proc.signalCode}) before ${url} was ready:\n${child.log()}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last})${child ? `:\n${child.log()}` : ''}`);
    }
    await sleep(50);
  }
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Start the test provider with a config object (see the top of demo/provider/provider.mjs).
 * Defaults: port 0 (the provider picks a free port itself), host 127.0.0.1.
 * Resolves with { issuer, port, child, stop() }.
 */
export async function startProvider(config, { name = 'provider' } = {}) {
  const cfg = { port: 0, host: '127.0.0.1', ...config };
  const child = spawnTracked(name, process.execPath, [PROVIDER_SCRIPT], {
    env: { PROVIDER_CONFIG: JSON.stringify(cfg) },
  });
  const issuer = await waitReadyLine(child);
  return { issuer, port: Number(new URL(issuer).port), child, stop: child.stop };
}

/** The provider client registration matching a Portcullis at `origin`. */
export function bffClient(origin, extra = {}) {
  return {
    client_id: 'demo-bff',
    client_secret: 'demo-bff-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    redirect_uris: [`${origin}/bff/callback`],
    post_logout_redirect_uris: [`${origin}/`],
    backchannel_logout_uri: `${origin}/bff/backchannel-logout`,
    backchannel_logout_session_required: true,
    ...extra,
  };
}

/** The provider client registration of the demo API (introspection only). */
export function apiClient(extra = {}) {
  return {
    client_id: 'demo-api',
    client_secret: 'demo-api-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    ...extra,
  };
}

/**
 * Start the demo API. Resolves with { url, port, child, stop() }.
 */
export async function startApi({
  introspectionUrl, clientId = 'demo-api', clientSecret = 'demo-api-secret', port, name = 'api',
} = {}) {
  const p = port ?? 0;
  const child = spawnTracked(name, process.execPath, [API_SCRIPT], {
    env: {
      PORT: String(p),
      INTROSPECTION_URL: introspectionUrl,
      API_CLIENT_ID: clientId,
      API_CLIENT_SECRET: clientSecret,
    },
  });
  const url = await waitReadyLine(child);
  return { url, port: Number(new URL(url).port), child, stop: child.stop };
}

// ------------------------------------------------------------------ Portcullis


/**
 * The usual start of a browser test: a free port for Portcullis and its origin
 * (http://127.0.0.1:<port>), and the test provider on `localhost` (another site) knowing
 * that origin's BFF client and the API client. `extra` adds provider settings.
 * Resolves with `{ gwPort, origin, provider }`.
 */
export async function startSite(extra = {}) {
  const gwPort = await freePort();
  const origin = `http://127.0.0.1:${gwPort}`;
  const provider = await startProvider({
    issuerHost: 'localhost',
    ...extra,
    clients: [bffClient(origin), apiClient()],
  });
  return { gwPort, origin, provider };
}
/** Path of the Portcullis binary: env PORTCULLIS_BIN, default target/debug/portcullis. */
export function portcullisBin() {
  return path.resolve(ROOT, process.env.PORTCULLIS_BIN || 'target/debug/portcullis');
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // JSON strings are valid TOML basic strings
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  throw new Error(`unsupported TOML value ${JSON.stringify(v)}`);
}

/**
 * Serialize a Portcullis config object to TOML: top-level keys are tables ({...}) or
 * arrays of tables ([{...}], e.g. routes). Values: strings, numbers, booleans, arrays of those.
 */
export function toToml(config) {
  const out = [];
  for (const [section, body] of Object.entries(config)) {
    if (body === undefined || body === null) continue;
    const tables = Array.isArray(body) ? body : [body];
    for (const table of tables) {
      out.push(Array.isArray(body) ? `[[${section}]]` : `[${section}]`);
      for (const [k, v] of Object.entries(table)) {
        if (v !== undefined && v !== null) out.push(`${k} = ${tomlValue(v)}`);
      }
      out.push('');
    }
  }
  return out.join('\n');
}

/**
 * A Portcullis config object for the tests (memory store, SPA from demo/spa).
 * Override anything with `overrides` (merged per section; `routes` replaced).
 */
export function portcullisConfig({ port, issuer, apiUrl, overrides = {} }) {
  const origin = `http://127.0.0.1:${port}`;
  const base = {
    server: { listen: `127.0.0.1:${port}`, public_origin: origin },
    oidc: {
      issuer,
      client_id: 'demo-bff',
      client_secret: 'demo-bff-secret',
      auth_method: 'client_secret_basic',
      scopes: ['openid', 'profile', 'email', 'offline_access'],
      post_logout_redirect_uri: `${origin}/`,
      userinfo: true,
    },
    session: {
      store: 'memory',
      cookie_name: '__Host-portcullis',
      same_site: 'strict',
      idle_timeout: '30m',
      absolute_timeout: '12h',
      keys: [randomKey()],
    },
    tokens: { refresh_before: '60s' },
    routes: apiUrl ? [{ prefix: '/api', upstream: apiUrl, token: 'user', strip_prefix: false }] : [],
    static: { dir: SPA_DIR, spa_fallback: true },
  };
  const merged = { ...base };
  for (const [k, v] of Object.entries(overrides)) {
    merged[k] = Array.isArray(v) || !base[k] ? v : { ...base[k], ...v };
  }
  return merged;
}

/**
 * Start Portcullis with a config (object -> TOML, or a TOML string) written to a temp dir.
 * Waits for GET /healthz = 200 on the listen address. Resolves with { origin, child, configPath, stop() }.
 */
export async function startPortcullis({ config, name = 'portcullis', env = {}, readyPath = '/healthz' }) {
  const bin = portcullisBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`Portcullis binary not found at ${bin}: run \`cargo build\` (or set PORTCULLIS_BIN)`);
  }
  const toml = typeof config === 'string' ? config : toToml(config);
  const listen = typeof config === 'string'
    ? /listen\s*=\s*"([^"]+)"/.exec(config)[1]
    : config.server.listen;
  const dir = tmpDir('portcullis-cfg-');
  const configPath = path.join(dir, 'portcullis.toml');
  fs.writeFileSync(configPath, toml);
  const child = spawnTracked(name, bin, ['serve', '--config', configPath], { env });
  const origin = `http://${listen}`;
  await waitHttp(child, `${origin}${readyPath}`);
  return { origin, child, configPath, stop: child.stop };
}

// ------------------------------------------------------------------ in-process servers

const servers = new Set(); // node http servers of the tests (upstreams, foreign pages)

/** Listen on a free port of `host`; resolves with the port. Closed by closeServers(). */
export function listen(server, host = '127.0.0.1') {
  servers.add(server);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(server.address().port));
  });
}

/** Close every server started with listen() (and their open connections). */
export async function closeServers() {
  await Promise.all([...servers].map((s) => new Promise((resolve) => {
    s.closeAllConnections?.();
    s.close(() => resolve());
  })));
  servers.clear();
}

/**
 * A foreign site: the page `html` answered to every request, on 127.0.0.1 (reach it as
 * http://localhost:<port> for another site, http://127.0.0.1:<port> for the same site and
 * another origin). Resolves with `{ port, hits }`, `hits` the URLs it served.
 */
export async function servePage(html) {
  const hits = [];
  const server = http.createServer((req, res) => {
    req.resume();
    hits.push(req.url);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  });
  const port = await listen(server);
  return { port, hits };
}

// ------------------------------------------------------------------ teardown

/** Stop every child started through this harness and remove temp dirs. */
export async function stopAll() {
  await Promise.all([...children].map((c) => stopChild(c)));
  for (const dir of tmpDirs) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  tmpDirs.clear();
}

/** Print every child's captured output (to stderr). */
export function dumpLogs() {
  for (const c of allChildrenEver) {
    process.stderr.write(`\n----- ${c.name} (pid ${c.proc.pid}) -----\n${c.log()}\n`);
  }
}

// Last line of defence: never leave children behind, whatever happens to the runner.
process.once('exit', () => {
  for (const c of children) {
    try {
      c.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    for (const c of children) c.proc.kill('SIGTERM');
    process.exit(130);
  });
}

// ------------------------------------------------------------------ browser helpers

/** Debian's chromium (never downloaded by the tests). */
export const CHROMIUM = '/usr/bin/chromium';

/** The flags every browser test launches chromium with. */
export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * playwright-core's `chromium`, driving Debian's chromium. Fails loudly, never skips and never
 * downloads a browser, when either is missing.
 */
export async function requireChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium). `
      + 'This test never downloads a browser.');
  }
  try {
    return (await import('playwright-core')).chromium;
  } catch (err) {
    throw new Error(`playwright-core is not installed: run \`npm ci\` in tests/browser (${err.message})`);
  }
}

/**
 * Launch headless Debian chromium with a fresh profile (a temp dir removed by stopAll()).
 * `chromium` is playwright-core's `chromium` export. Resolves with the persistent context.
 */
export async function launchChromium(chromium, { timeoutMs = 15_000 } = {}) {
  const profile = tmpDir('portcullis-chromium-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  context.setDefaultTimeout(timeoutMs);
  return context;
}

/**
 * Log in through the demo SPA's real UI: open `origin`/, click "Log in", fill the provider's
 * login form (at `issuer`) and wait until the SPA shows the user as logged in.
 * The same steps as login.test.mjs; throws with the current URL when a step goes wrong.
 */
export async function loginThroughUi(page, { origin, issuer, username = 'alice', password = username }) {
  await page.goto(`${origin}/`);
  await page.waitForSelector('#status[data-state="logged-out"]');
  await page.click('#login');
  await page.waitForSelector('#login-form');
  if (!page.url().startsWith(`${issuer}/interaction/`)) {
    throw new Error(`expected the provider's login page, got ${page.url()}`);
  }
  await page.fill('#username', username);
  await page.fill('#password', password);
  await Promise.all([
    page.waitForURL((u) => u.origin === origin, { timeout: 15_000 }),
    page.click('#submit'),
  ]);
  await page.waitForSelector('#status[data-state="logged-in"]');
}
