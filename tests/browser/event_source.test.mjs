// Real-browser test of `event_source = true` (issue #14, item 4): a real `new EventSource()`
// in Chromium, from the SPA (works without X-CSRF: the browser's Fetch Metadata prove it
// same-origin) and from foreign pages (refused, nothing reaches the upstream).
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/event_source.test.mjs
//
// Sites: Portcullis on http://127.0.0.1:<gw>; the provider and the cross-site attacker on
// http://localhost:<port>; the same-site attacker on http://127.0.0.1:<other port> (same
// site, another origin: Sec-Fetch-Site is `same-site`, still refused).
//
// Env: PORTCULLIS_BIN (default target/debug/portcullis), HARNESS_VERBOSE=1 (stream child logs).
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

after(async () => {
  await h.closeServers();
  await h.stopAll();
});


/** The SSE upstream: one event at once, then one every 100 ms. Records every request. */
async function startSseUpstream() {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url, method: req.method, headers: req.headers });
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let n = 0;
    const send = () => res.write(`data: tick ${n++}\n\n`);
    send();
    const timer = setInterval(send, 100);
    req.on('close', () => clearInterval(timer));
  });
  const port = await h.listen(server);
  return { url: `http://127.0.0.1:${port}`, requests };
}

/** Foreign pages opening an EventSource on the gateway (with and without credentials). */
function startAttacker(gw) {
  return h.servePage(`<!doctype html><title>attacker</title><script>
    window.results = [];
    for (const withCredentials of [false, true]) {
      const es = new EventSource('${gw}/events/feed', { withCredentials });
      es.onmessage = (e) => window.results.push({ withCredentials, data: e.data });
      es.onerror = () => { window.results.push({ withCredentials, error: es.readyState }); es.close(); };
    }
  </script>`);
}

test('a same-origin EventSource streams without X-CSRF; foreign ones are refused', { timeout: 120_000 }, async () => {
  const chromium = await h.requireChromium();
  let context;
  try {
    const { gwPort, origin, provider } = await h.startSite();
    const upstream = await startSseUpstream();
    const config = h.portcullisConfig({
      port: gwPort,
      issuer: provider.issuer,
      overrides: {
        routes: [
          { prefix: '/events', upstream: upstream.url, token: 'user', event_source: true },
          { prefix: '/feeds', upstream: upstream.url, token: 'user' },
        ],
      },
    });
    await h.startPortcullis({ config });
    const attacker = await startAttacker(origin);

    context = await h.launchChromium(chromium);
    const page = context.pages()[0] ?? await context.newPage();
    await h.loginThroughUi(page, { origin, issuer: provider.issuer, username: 'alice' });

    // 1. The SPA's EventSource: three events arrive, the user's token went upstream.
    const got = await page.evaluate(() => new Promise((resolve) => {
      const es = new EventSource('/events/feed');
      const data = [];
      es.onmessage = (e) => {
        data.push(e.data);
        if (data.length === 3) { es.close(); resolve({ data }); }
      };
      es.onerror = () => { es.close(); resolve({ error: es.readyState, data }); };
    }));
    assert.deepEqual(got, { data: ['tick 0', 'tick 1', 'tick 2'] });
    assert.equal(upstream.requests.length, 1);
    const seen = upstream.requests[0].headers;
    assert.match(seen.authorization ?? '', /^Bearer /, 'the user token went upstream');
    assert.ok(!(seen.cookie ?? '').includes('__Host-portcullis'), 'the session cookie did not');
    // What Chromium's EventSource really sends (the rule is built on it).
    console.log('Chromium EventSource request headers at the upstream:', JSON.stringify({
      accept: seen.accept,
      'sec-fetch-site': seen['sec-fetch-site'],
      'sec-fetch-mode': seen['sec-fetch-mode'],
      'sec-fetch-dest': seen['sec-fetch-dest'],
      origin: seen.origin,
    }));
    assert.equal(seen['sec-fetch-site'], 'same-origin');
    assert.equal(seen['sec-fetch-mode'], 'cors');
    assert.equal(seen['sec-fetch-dest'], 'empty');

    // 2. A fetch() stream without X-CSRF keeps the header rule; with it, it works.
    const fetched = await page.evaluate(async () => {
      const without = await fetch('/events/feed');
      const ctl = new AbortController();
      const withHeader = await fetch('/events/feed', { headers: { 'X-CSRF': '1' }, signal: ctl.signal });
      const reader = withHeader.body.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      ctl.abort();
      return { without: without.status, error: (await without.json()).error, with: withHeader.status, first };
    });
    assert.deepEqual(fetched, { without: 403, error: 'csrf', with: 200, first: 'data: tick 0\n\n' });
    // 3. A route without `event_source = true`: the SPA's EventSource is refused.
    const plain = await page.evaluate(() => new Promise((resolve) => {
      const es = new EventSource('/feeds/feed');
      es.onmessage = () => { es.close(); resolve('message'); };
      es.onerror = () => { es.close(); resolve('error'); };
    }));
    assert.equal(plain, 'error');
    const before = upstream.requests.length;
    assert.equal(before, 2, 'only the two accepted streams reached the upstream');

    // 4. Foreign pages in the same browser (same cookie jar): a cross-site and a same-site one.
    // Playwright hides CORS-blocked answers: read what Chromium saw over CDP.
    const statuses = [];
    for (const host of ['localhost', '127.0.0.1']) {
      const evil = await context.newPage();
      const cdp = await context.newCDPSession(evil);
      const urls = new Map();
      cdp.on('Network.requestWillBeSent', (e) => urls.set(e.requestId, e.request.url));
      cdp.on('Network.responseReceivedExtraInfo', (e) => {
        if (e.statusCode) statuses.push({ id: e.requestId, status: e.statusCode });
      });
      await cdp.send('Network.enable');
      await evil.goto(`http://${host}:${attacker.port}/`);
      await evil.waitForFunction(() => window.results.length >= 2, null, { timeout: 10_000 });
      const results = await evil.evaluate(() => window.results);
      assert.ok(results.every((r) => r.error !== undefined), `${host}: no event reached the page: ${JSON.stringify(results)}`);
      for (const s of statuses) s.url ??= urls.get(s.id);
      await evil.close();
    }
    assert.equal(attacker.hits.filter((u) => u === '/').length, 2, 'both attacker pages were served');
    assert.equal(upstream.requests.length, before, 'nothing from the foreign pages reached the upstream');
    const toGw = statuses.filter((s) => s.url?.startsWith(`${origin}/events/`));
    assert.ok(toGw.length >= 4 && toGw.every((s) => s.status === 403), `the gateway refused them: ${JSON.stringify(statuses)}`);

    // Still signed in, and the SPA's stream still works.
    const again = await page.evaluate(() => new Promise((resolve) => {
      const es = new EventSource('/events/feed');
      es.onmessage = (e) => { es.close(); resolve(e.data); };
      es.onerror = () => { es.close(); resolve('error'); };
    }));
    assert.equal(again, 'tick 0');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await h.stopAll();
  }
});
