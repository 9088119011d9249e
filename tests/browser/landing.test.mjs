// Real-browser tests of where a new user lands (issue #19, item 5): opening the gateway on
// another loopback name than its public origin (`localhost` for `127.0.0.1`), and a login that
// expired while the user sat on the provider's login page. Both must end on the SPA, with a
// way forward, never on a bare JSON page.
//
//   (cd tests/browser && npm ci) && cargo build && node --test tests/browser/landing.test.mjs
//
// Needs /usr/bin/chromium; without it the test FAILS (it never downloads a browser).

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

after(async () => {
  await h.stopAll();
});

async function browser() {
  return h.launchChromium(await h.requireChromium());
}

async function components(overrides = {}) {
  const { gwPort: port, origin, provider } = await h.startSite();
  const gw = await h.startPortcullis({
    config: h.portcullisConfig({ port, issuer: provider.issuer, overrides }),
  });
  return { port, origin, provider, gw };
}

test('opening the gateway on localhost instead of 127.0.0.1 still logs in', { timeout: 90_000 }, async () => {
  const { port, origin, provider } = await components();
  const context = await browser();
  try {
    const page = context.pages()[0] ?? await context.newPage();
    const seen = [];
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) seen.push(f.url());
    });
    await page.goto(`http://localhost:${port}/`);
    assert.equal(new URL(page.url()).origin, origin, `redirected to the public origin: ${seen.join(' → ')}`);
    await page.waitForSelector('#status[data-state="logged-out"]');
    await h.loginThroughUi(page, { origin, issuer: provider.issuer });
    assert.equal(new URL(page.url()).origin, origin);
    // A deep link keeps its path and query.
    await page.goto(`http://localhost:${port}/some/page?x=1`);
    assert.equal(page.url(), `${origin}/some/page?x=1`);
    await page.waitForSelector('#status[data-state="logged-in"]');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    await context.close();
  }
});

test('a login that expired on the provider page lands on the SPA with bff_error', { timeout: 90_000 }, async () => {
  const { origin, provider } = await components({ oidc: { pending_login_ttl: '2s' } });
  const context = await browser();
  try {
    const page = context.pages()[0] ?? await context.newPage();
    await page.goto(`${origin}/`);
    await page.waitForSelector('#status[data-state="logged-out"]');
    await page.click('#login');
    await page.waitForSelector('#login-form');
    assert.ok(page.url().startsWith(`${provider.issuer}/interaction/`), page.url());
    await h.sleep(3000); // the user hesitates longer than oidc.pending_login_ttl
    await page.fill('#username', 'alice');
    await page.fill('#password', 'alice');
    await Promise.all([
      page.waitForURL((u) => u.origin === origin, { timeout: 15_000 }),
      page.click('#submit'),
    ]);
    const landed = new URL(page.url());
    assert.equal(landed.pathname, '/');
    assert.equal(landed.searchParams.get('bff_error'), 'login_expired', page.url());
    // The SPA, not a JSON page: it shows the logged-out state and its login button.
    await page.waitForSelector('#status[data-state="logged-out"]');
    const text = await page.textContent('body');
    assert.ok(!text.includes('"error"'), `a JSON page: ${text}`);
    // The way forward: logging in again works (the provider remembers the user: no form).
    // (The demo SPA's returnUrl is the current URL, bff_error included.)
    await page.click('#login');
    await page.waitForSelector('#status[data-state="logged-in"]');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    await context.close();
  }
});
