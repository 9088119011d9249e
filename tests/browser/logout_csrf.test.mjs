// Real-browser logout-CSRF test: alice logs in to the demo SPA through Portcullis, then a page
// on a foreign site, open in the same browser, sends her to `/bff/logout?sid=<a guess>` in
// every way a page can: a top-level navigation, an <img>, an auto-submitting GET <form>, a link
// the user clicks, and an auto-submitting POST <form>. Under SameSite=Strict chromium sends no
// session cookie with any of them; Portcullis must then answer without touching cookies, so
// alice stays logged in (`/bff/user` 200, the same session cookie). A wrong sid from the SPA
// itself (with the cookie) is a 400 that keeps the session too.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/            # or: node tests/browser/logout_csrf.test.mjs
//
// Env: PORTCULLIS_BIN (default target/debug/portcullis), HARNESS_VERBOSE=1 (stream child logs).
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.
//
// Sites: Portcullis is visited as http://127.0.0.1:<port>; the provider and the foreign page as
// http://localhost:<port> — a different site, so every attack is a real cross-site request.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const COOKIE = '__Host-portcullis';

after(async () => {
  await h.closeServers();
  await h.stopAll();
});

/** The foreign site: one page per way of reaching `/bff/logout?sid=…` at `gw`. */
async function startForeignSite(gw) {
  const logout = `${gw}/bff/logout?sid=guessed-sid`;
  const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head>`
    + `<body><h1>Cute cats</h1><pre id="out"></pre>${body}</body></html>`;
  const pages = {
    '/nav': page('nav', `<script>location.href = ${JSON.stringify(logout)};</script>`),
    '/img': page('img', `<img id="i" src="${logout}">
      <script>
        const i = document.getElementById('i');
        const done = (e) => { document.getElementById('out').textContent = e; document.title = 'done'; };
        i.onload = () => done('load');
        i.onerror = () => done('error');
      </script>`),
    '/form-get': page('form-get', `<form id="f" method="GET" action="${gw}/bff/logout">
        <input type="hidden" name="sid" value="guessed-sid"></form>
      <script>document.getElementById('f').submit();</script>`),
    '/form-post': page('form-post', `<form id="f" method="POST" action="${gw}/bff/logout">
        <input type="hidden" name="sid" value="guessed-sid"></form>
      <script>document.getElementById('f').submit();</script>`),
    '/link': page('link', `<a id="a" href="${logout}">see more cats</a>`),
  };
  const hits = [];
  const server = http.createServer((req, res) => {
    req.resume();
    const path = new URL(req.url, 'http://x').pathname;
    hits.push(path);
    const body = pages[path];
    if (body === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(body);
  });
  const port = await h.listen(server);
  return { origin: `http://localhost:${port}`, hits };
}

test('a foreign page sending the browser to /bff/logout does not log the user out', { timeout: 120_000 }, async (t) => {
  const chromium = await h.requireChromium();

  let context;
  const browserLog = [];
  const observed = {};
  try {
    const { gwPort, origin, provider } = await h.startSite();
    assert.match(provider.issuer, /^http:\/\/localhost:\d+$/);
    const gw = await h.startPortcullis({
      config: h.portcullisConfig({ port: gwPort, issuer: provider.issuer }),
    });
    assert.equal(gw.origin, origin);
    const foreign = await startForeignSite(origin);
    assert.match(foreign.origin, /^http:\/\/localhost:\d+$/);

    context = await h.launchChromium(chromium);
    const spa = context.pages()[0] ?? await context.newPage();
    spa.on('pageerror', (e) => browserLog.push(`spa pageerror: ${e.message}`));
    await h.loginThroughUi(spa, { origin, issuer: provider.issuer, username: 'alice', password: 'alice' });
    const sessionCookie = async () => (await context.cookies(origin)).find((c) => c.name === COOKIE);
    const before = await sessionCookie();
    assert.ok(before, `no ${COOKIE} cookie after login`);
    assert.equal(before.sameSite, 'Strict');
    const userStatus = () => spa.evaluate(async () => (await fetch('/bff/user', { headers: { 'X-CSRF': '1' } })).status);
    assert.equal(await userStatus(), 200);

    const evil = await context.newPage();
    evil.on('pageerror', (e) => browserLog.push(`evil pageerror: ${e.message}`));
    // Every answer /bff/logout gave the foreign page's requests, and whether it set a cookie.
    const answers = [];
    evil.on('response', async (r) => {
      if (!r.url().startsWith(`${origin}/bff/logout`)) return;
      const headers = await r.allHeaders();
      answers.push({
        method: r.request().method(),
        status: r.status(),
        type: r.request().resourceType(),
        setCookie: headers['set-cookie'] ?? null,
        cookieSent: /__Host-portcullis=/.test((await r.request().allHeaders()).cookie ?? ''),
      });
    });
    const landedAtGateway = () => evil.waitForURL((u) => u.origin === origin, { timeout: 15_000 });

    const attacks = {
      // top-level navigation by script: lands on the post-logout page
      nav: async () => {
        await evil.goto(`${foreign.origin}/nav`, { waitUntil: 'commit' });
        await landedAtGateway();
      },
      // a subresource
      img: async () => {
        await evil.goto(`${foreign.origin}/img`);
        await evil.waitForFunction(() => document.title === 'done');
      },
      // an auto-submitting GET form (a top-level navigation too)
      formGet: async () => {
        await evil.goto(`${foreign.origin}/form-get`, { waitUntil: 'commit' });
        await landedAtGateway();
      },
      // a link the user clicks
      link: async () => {
        await evil.goto(`${foreign.origin}/link`);
        await Promise.all([landedAtGateway(), evil.click('#a')]);
      },
      // an auto-submitting POST form (no X-CSRF header): refused, touches nothing
      formPost: async () => {
        await evil.goto(`${foreign.origin}/form-post`, { waitUntil: 'commit' });
        await landedAtGateway();
      },
    };
    for (const [name, attack] of Object.entries(attacks)) {
      const from = answers.length;
      try {
        await attack();
        await h.sleep(300); // let the response event and any cookie change land
        const got = answers.slice(from);
        observed[name] = got;
        assert.ok(got.length >= 1, `the attack reached /bff/logout: ${JSON.stringify(got)}`);
        for (const a of got) {
          assert.equal(a.cookieSent, false, `chromium sent the SameSite=Strict cookie cross-site: ${JSON.stringify(a)}`);
          assert.equal(a.setCookie, null, `the answer touched a cookie: ${JSON.stringify(a)}`);
        }
        const now = await sessionCookie();
        assert.equal(now?.value, before.value, 'the session cookie is still there, unchanged');
        assert.equal(await userStatus(), 200, '/bff/user still answers 200');
      } catch (err) {
        err.message = `${name}: ${err.message}`;
        throw err;
      }
    }
    assert.ok(foreign.hits.length >= 5, `the foreign pages were served: ${foreign.hits}`);

    // The SPA itself (with the cookie) and a wrong sid: 400, the session stays.
    const wrong = await spa.evaluate(async () => {
      const r = await fetch('/bff/logout?sid=wrong-sid', { redirect: 'manual' });
      return { status: r.status, body: await r.json() };
    });
    assert.equal(wrong.status, 400);
    assert.equal(wrong.body.error, 'invalid_request');
    assert.equal((await sessionCookie())?.value, before.value);
    assert.equal(await userStatus(), 200);

    // Positive control: the real logout link does log out.
    const logoutUrl = await spa.evaluate(async () => (await (await fetch('/bff/user', { headers: { 'X-CSRF': '1' } })).json())['bff:logout_url']);
    const out = await spa.evaluate(async (u) => (await fetch(u, { redirect: 'manual' })).type, logoutUrl);
    assert.equal(out, 'opaqueredirect');
    assert.equal(await sessionCookie(), undefined, 'the real logout removed the session cookie');
    assert.equal(await userStatus(), 401);

    t.diagnostic(`observed: ${JSON.stringify(observed)}`);
  } catch (err) {
    if (browserLog.length) process.stderr.write(`\n----- browser -----\n${browserLog.join('\n')}\n`);
    process.stderr.write(`\n----- observed -----\n${JSON.stringify(observed, null, 2)}\n`);
    h.dumpLogs();
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await h.closeServers();
    await h.stopAll();
  }
});
