// Real-browser end-to-end test: Debian chromium (driven by playwright-core) logs in to the demo
// SPA through Portcullis and the test OpenID provider, calls the API, and logs out.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/            # or: node tests/browser/login.test.mjs
//
// Env: PORTCULLIS_BIN (default target/debug/portcullis), HARNESS_VERBOSE=1 (stream child logs).
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.
//
// The provider runs on `localhost` and Portcullis on `127.0.0.1`: two different sites for the
// browser, so the SameSite=Strict session cookie behaves as in a real deployment.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const CHROMIUM = '/usr/bin/chromium';
const COOKIE = '__Host-portcullis';

// JWTs (a header starting with {"...) and long base64url runs (opaque tokens, session ids).
const JWT_RE = /eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/;
const LONG_B64URL_RE = /[A-Za-z0-9_-]{32,}/;

after(async () => {
  await h.stopAll();
});

test('login, API call and logout through Portcullis in a real browser', { timeout: 90_000 }, async () => {
  // ---- preconditions: fail loudly, never skip
  const chromium = await h.requireChromium();

  let context;
  const browserLog = [];
  try {
    // ---- components
    const { gwPort, origin, provider } = await h.startSite();
    assert.match(provider.issuer, /^http:\/\/localhost:\d+$/);
    const api = await h.startApi({ introspectionUrl: `${provider.issuer}/token/introspection` });
    const gw = await h.startPortcullis({
      config: h.portcullisConfig({ port: gwPort, issuer: provider.issuer, apiUrl: api.url }),
    });
    assert.equal(gw.origin, origin);

    // ---- browser
    const profile = h.tmpDir('portcullis-chromium-');
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    context.setDefaultTimeout(15_000);
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => browserLog.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => browserLog.push(`pageerror: ${e.message}`));
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) browserLog.push(`navigated: ${f.url()}`);
    });

    // 1. the SPA, logged out
    await page.goto(`${origin}/`);
    await page.waitForSelector('#status[data-state="logged-out"]');
    assert.equal(await page.textContent('#status'), 'logged-out');
    const loginHref = await page.getAttribute('#login', 'href');
    assert.match(loginHref, /^\/bff\/login\?returnUrl=(\/|%2F)$/);

    // 2. login at the provider (a different site: localhost)
    await page.click('#login');
    await page.waitForSelector('#login-form');
    assert.ok(page.url().startsWith(`${provider.issuer}/interaction/`), `on the provider: ${page.url()}`);
    await page.fill('#username', 'alice');
    await page.fill('#password', 'alice');
    await Promise.all([
      page.waitForURL((u) => u.origin === origin, { timeout: 15_000 }),
      page.click('#submit'),
    ]);

    // 3. back on the SPA, logged in
    await page.waitForSelector('#status[data-state="logged-in"]');
    assert.equal(await page.textContent('#user-name'), 'Alice Liddell');
    assert.equal(new URL(page.url()).pathname, '/');

    // 4. the session cookie: HttpOnly, Secure, SameSite=Strict, Path=/, host-only
    const cookies = await context.cookies(origin);
    const session = cookies.find((c) => c.name === COOKIE);
    assert.ok(session, `no ${COOKIE} cookie; cookies: ${cookies.map((c) => c.name).join(', ')}`);
    assert.equal(session.httpOnly, true, 'HttpOnly');
    assert.equal(session.secure, true, 'Secure');
    assert.equal(session.sameSite, 'Strict', 'SameSite=Strict');
    assert.equal(session.path, '/', 'Path=/');
    assert.equal(session.domain, '127.0.0.1', 'host-only cookie (no Domain)');
    assert.match(session.value, /^[A-Za-z0-9_-]{43}$/, 'opaque 256-bit base64url id');
    // Besides the session cookie, only the short-lived login-binding cookie (shared by
    // tabs that log in at once; SameSite=Lax so it returns on the provider's redirect).
    const portcullisCookies = cookies.filter((c) => c.domain === '127.0.0.1');
    assert.deepEqual(portcullisCookies.map((c) => c.name).sort(), [COOKIE, `${COOKIE}-login`].sort());
    const binding = cookies.find((c) => c.name === `${COOKIE}-login`);
    assert.equal(binding.httpOnly, true, 'binding cookie HttpOnly');
    assert.equal(binding.secure, true, 'binding cookie Secure');
    assert.equal(binding.sameSite, 'Lax', 'binding cookie SameSite=Lax');
    assert.ok(binding.expires > 0 && binding.expires < Date.now() / 1000 + 3600, 'binding cookie is short-lived');
    assert.notEqual(binding.value, session.value);

    // 5. no token anywhere the page's scripts can see: not the exact values the provider issued
    //    (its /test/issued endpoint), no JWT, not the session cookie's value
    const seen = await page.evaluate(() => ({
      html: document.documentElement.outerHTML,
      localStorage: JSON.stringify({ ...localStorage }),
      sessionStorage: JSON.stringify({ ...sessionStorage }),
      documentCookie: document.cookie,
    }));
    const user = await page.evaluate(async () => {
      const r = await fetch('/bff/user', { headers: { 'X-CSRF': '1' }, credentials: 'same-origin' });
      return { status: r.status, body: await r.text() };
    });
    assert.equal(user.status, 200);
    const userJson = JSON.parse(user.body);
    const logoutUrl = userJson['bff:logout_url'];
    assert.ok(logoutUrl, '/bff/user has bff:logout_url');
    const issued = await (await fetch(`${provider.issuer}/test/issued?sub=alice`)).json();
    const secrets = [
      ...issued.access_token, ...issued.refresh_token, ...issued.authorization_code, session.value,
    ];
    assert.ok(issued.access_token.length > 0 && issued.refresh_token.length > 0, 'provider issued tokens');
    for (const [where, text] of Object.entries({ ...seen, bffUser: user.body })) {
      assert.doesNotMatch(text, JWT_RE, `JWT-like string in ${where}`);
      for (const secret of secrets) {
        assert.ok(!text.includes(secret), `a token or the session id is visible in ${where}`);
      }
    }
    for (const where of ['localStorage', 'sessionStorage', 'documentCookie']) {
      assert.doesNotMatch(seen[where], LONG_B64URL_RE, `token-like string in ${where}`);
    }
    assert.equal(seen.documentCookie, '', 'document.cookie is empty');
    assert.ok(!new URL(logoutUrl, origin).href.includes(session.value), 'logout sid is not the session id');
    for (const k of Object.keys(userJson)) {
      assert.ok(!/token/i.test(k), `/bff/user exposes ${k}`);
    }

    // 6. the API through the gateway
    await page.click('#call-api');
    await page.waitForFunction(() => document.querySelector('#api-result')?.textContent.includes('Hello, alice!'));
    const apiText = await page.textContent('#api-result');
    assert.match(apiText, /^200\n/);
    assert.doesNotMatch(apiText, JWT_RE);

    // 7. logout: Portcullis -> provider confirmation page -> back to the SPA, logged out
    assert.equal(await page.getAttribute('#logout', 'href'), logoutUrl);
    await page.click('#logout');
    await page.waitForSelector('#logout-form');
    assert.ok(page.url().startsWith(`${provider.issuer}/session/end`), `on the provider: ${page.url()}`);
    await Promise.all([
      page.waitForURL((u) => u.origin === origin, { timeout: 15_000 }),
      page.click('#logout-yes'),
    ]);
    await page.waitForSelector('#status[data-state="logged-out"]');
    const after = await page.evaluate(async () => {
      const r = await fetch('/bff/user', { headers: { 'X-CSRF': '1' }, credentials: 'same-origin' });
      return r.status;
    });
    assert.equal(after, 401, '/bff/user after logout');
  } catch (err) {
    if (browserLog.length) process.stderr.write(`\n----- browser -----\n${browserLog.join('\n')}\n`);
    h.dumpLogs();
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await h.stopAll();
  }
});
