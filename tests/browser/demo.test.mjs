// The demo explains itself, in a real browser (Debian chromium via playwright-core): the demo
// SPA (demo/spa) behind Portcullis, the demo API (demo/api) and the test provider. A normal
// visit — open, log in, call the API, wait for a refresh, call again — shows the session's
// countdown, the cookie's attributes (checked against the cookie the browser really holds),
// the claims and expiry of the access token the API received (matched by fingerprint against
// the tokens the provider issued, none of which appears in the page), a refresh as a new
// fingerprint, and writes nothing to the console: no error, no warning, no failed request.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/demo.test.mjs
//
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const COOKIE = '__Host-portcullis';
const JWT_RE = /eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/;
// Access tokens live 8 s and are refreshed when less than 4 s are left.
const ACCESS_TTL = 8;
const REFRESH_BEFORE = 4;

after(async () => {
  await h.stopAll();
});

const fingerprint = (token) => crypto.createHash('sha256').update(token).digest('hex').slice(0, 12);

/** "m:ss" → seconds. */
function seconds(text) {
  const m = /^(\d+):(\d\d)$/.exec(text.trim());
  assert.ok(m, `not a countdown: ${JSON.stringify(text)}`);
  return Number(m[1]) * 60 + Number(m[2]);
}

test('the demo shows the session, the cookie, the token the API saw and a refresh, without console errors', { timeout: 120_000 }, async () => {
  const chromium = await h.requireChromium();

  let context;
  const browserLog = [];
  const complaints = []; // console errors and warnings, page errors, failed requests
  try {
    const { gwPort, origin, provider } = await h.startSite({
      accessTokenTTL: ACCESS_TTL,
    });
    const api = await h.startApi({ introspectionUrl: `${provider.issuer}/token/introspection` });
    await h.startPortcullis({
      config: h.portcullisConfig({
        port: gwPort,
        issuer: provider.issuer,
        apiUrl: api.url,
        overrides: { tokens: { refresh_before: `${REFRESH_BEFORE}s` } },
      }),
    });

    context = await h.launchChromium(chromium);
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => {
      browserLog.push(`console.${m.type()}: ${m.text()}`);
      if (m.type() === 'error' || m.type() === 'warning') complaints.push(`console.${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => complaints.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => complaints.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    page.on('response', (r) => browserLog.push(`${r.status()} ${r.request().method()} ${r.url()}`));

    // 1. Logged out, then logged in through the provider's form.
    await h.loginThroughUi(page, { origin, issuer: provider.issuer });
    assert.equal(await page.textContent('#user-name'), 'Alice Liddell');

    // 2. The session countdown runs.
    const first = seconds(await page.textContent('#session-countdown'));
    assert.ok(first > 25 * 60 && first <= 30 * 60, `idle timeout 30m, countdown ${first}`);
    await h.sleep(2200);
    const later = seconds(await page.textContent('#session-countdown'));
    assert.ok(later < first, `the countdown went from ${first} to ${later}`);

    // 3. The cookie as the page describes it is the cookie the browser holds.
    const [session] = (await context.cookies(origin)).filter((c) => c.name === COOKIE);
    assert.ok(session, 'the session cookie');
    assert.equal(await page.textContent('#cookie-name'), session.name);
    const described = (await page.textContent('#cookie-attributes')).split(';').map((s) => s.trim());
    const actual = [
      session.httpOnly && 'HttpOnly',
      session.secure && 'Secure',
      `SameSite=${session.sameSite}`,
      `Path=${session.path}`,
      session.domain === new URL(origin).hostname ? 'no Domain' : `Domain=${session.domain}`,
    ].filter(Boolean);
    assert.deepEqual(described, actual);
    assert.equal(await page.textContent('#document-cookie'), '""', 'JavaScript sees no cookie');

    // 4. The API call: the claims and expiry of a token the page never had.
    await page.click('#call-api');
    await page.waitForSelector('#token-view:not([hidden])');
    assert.equal(await page.textContent('#claim-sub'), 'alice');
    assert.equal(await page.textContent('#claim-client_id'), 'demo-bff');
    assert.match(await page.textContent('#claim-scope'), /openid/);
    const tokenLeft = await page.textContent('#token-countdown');
    assert.ok(tokenLeft === 'expired' || seconds(tokenLeft) <= ACCESS_TTL, `token countdown ${tokenLeft}`);
    assert.equal(await page.textContent('#cookies-received'), 'none', 'no cookie of Portcullis reached the API');
    const before = await page.textContent('#token-fingerprint');
    const issued = async () => (await (await fetch(`${provider.issuer}/test/issued?sub=alice`)).json()).access_token;
    const firstTokens = await issued();
    assert.ok(
      firstTokens.map(fingerprint).includes(before),
      `the fingerprint ${before} is of a token the provider issued to alice`,
    );
    assert.equal(await page.textContent('#refresh-count'), '0');

    // 5. Past the refresh point, the next call carries a new token: the page shows the refresh.
    await h.sleep((ACCESS_TTL - REFRESH_BEFORE + 1) * 1000);
    await page.click('#call-api');
    await page.waitForFunction(() => document.querySelector('#refresh-count').textContent === '1');
    const afterRefresh = await page.textContent('#token-fingerprint');
    assert.notEqual(afterRefresh, before);
    const laterTokens = await issued();
    assert.ok(laterTokens.length > firstTokens.length, 'the provider issued a new access token');
    assert.ok(laterTokens.map(fingerprint).includes(afterRefresh));
    assert.match(await page.textContent('#refresh-log'), /Portcullis refreshed it/);

    // 6. None of the issued tokens, and no JWT, is anywhere in the page.
    const html = await page.evaluate(() => document.documentElement.outerHTML);
    for (const token of laterTokens) assert.ok(!html.includes(token), 'an access token is in the page');
    assert.doesNotMatch(html, JWT_RE);

    // 7. A normal visit writes nothing to the console.
    assert.deepEqual(complaints, [], 'console errors, warnings or failed requests');
  } catch (err) {
    if (browserLog.length) process.stderr.write(`\n----- browser -----\n${browserLog.join('\n')}\n`);
    h.dumpLogs();
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await h.stopAll();
  }
});
