// Real-browser step-up (RFC 9470): a SPA page calls a route that requires acr "gold"; the
// session (logged in at "silver") gets 401 step_up_required; the SPA follows login_url with its
// own returnUrl, as docs/configuration.md shows; the provider asks for the login again; back on
// the SPA the same call passes with a gold session.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/step_up.test.mjs
//
// Needs /usr/bin/chromium; without it the test FAILS.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const GOLD = 'urn:portcullis:gold';
after(async () => {
  await h.closeServers();
  await h.stopAll();
});

// The SPA: one page whose script calls the route and follows a step-up.
const APP_JS = `
const out = document.getElementById('out');
const r = await fetch('/vault/secret', { headers: { 'X-CSRF': '1' } });
if (r.status === 401) {
  const body = await r.json();
  if (body.error === 'step_up_required') {
    out.dataset.state = 'stepping-up';
    const url = new URL(body.login_url, location.origin);
    url.searchParams.set('returnUrl', location.pathname + '?after=step-up');
    location.assign(url);
  } else {
    out.dataset.state = 'error';
  }
} else {
  out.textContent = (await r.json()).secret;
  out.dataset.state = r.ok ? 'ok' : 'error';
}
`;

test('the SPA follows step_up_required to a stronger login and comes back', { timeout: 120_000 }, async () => {
  const chromium = await h.requireChromium();

  const spa = h.tmpDir('portcullis-stepup-spa-');
  fs.writeFileSync(path.join(spa, 'index.html'),
    '<!doctype html><title>step-up</title><p id="out" data-state="loading">…</p>'
    + '<script type="module" src="/app.js"></script>');
  fs.writeFileSync(path.join(spa, 'app.js'), APP_JS);

  const seen = [];
  const upstream = http.createServer((req, res) => {
    seen.push({ path: req.url, authorization: req.headers.authorization ?? null });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"secret":"the gold vault"}');
  });
  const upPort = await h.listen(upstream);

  let context;
  try {
    const gwPort = await h.freePort();
    const origin = `http://127.0.0.1:${gwPort}`;
    const provider = await h.startProvider({
      issuerHost: 'localhost',
      stepUp: { acrValues: ['urn:portcullis:silver', GOLD] },
      clients: [h.bffClient(origin)],
    });
    const config = h.portcullisConfig({
      port: gwPort,
      issuer: provider.issuer,
      overrides: {
        routes: [{ prefix: '/vault', upstream: `http://127.0.0.1:${upPort}`, acr_values: [GOLD] }],
        static: { dir: spa, spa_fallback: true },
      },
    });
    await h.startPortcullis({ config });

    context = await h.launchChromium(chromium);
    const page = context.pages()[0] ?? await context.newPage();
    await page.goto(`${origin}/bff/login?returnUrl=%2F`);
    await page.waitForSelector('#login-form');
    const first = page.url();
    assert.ok(first.startsWith(`${provider.issuer}/interaction/`), first);
    await page.fill('#username', 'alice');
    await page.fill('#password', 'alice');
    // The SPA loads, gets step_up_required and goes to the provider again: a new login form.
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(`${provider.issuer}/interaction/`) && u.href !== first, { timeout: 20_000 }),
      page.click('#submit'),
    ]);
    await page.waitForSelector('#login-form');
    assert.equal(seen.length, 0, 'the silver session never reached the upstream');
    await page.fill('#username', 'alice');
    await page.fill('#password', 'alice');
    await Promise.all([
      page.waitForURL((u) => u.origin === origin && u.search === '?after=step-up', { timeout: 20_000 }),
      page.click('#submit'),
    ]);
    await page.waitForSelector('#out[data-state="ok"]');
    assert.equal(await page.textContent('#out'), 'the gold vault');
    assert.equal(seen.length, 1);
    assert.match(seen[0].authorization ?? '', /^Bearer /);
    const user = await page.evaluate(async () => (await fetch('/bff/user', { headers: { 'X-CSRF': '1' } })).json());
    assert.equal(user.acr, GOLD);
    assert.equal(typeof user.auth_time, 'number');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await h.stopAll();
  }
});
