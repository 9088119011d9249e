// Real-browser CSRF test: alice logs in to the demo SPA through Portcullis, then a page on a
// foreign site, open in the same browser, attacks the gateway with her cookie jar. None of the
// attacks may reach an upstream, and alice's session must survive them.
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/            # or: node tests/browser/csrf.test.mjs
//
// Env: PORTCULLIS_BIN (default target/debug/portcullis), HARNESS_VERBOSE=1 (stream child logs).
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.
//
// Sites: Portcullis is visited as http://127.0.0.1:<port>; the provider and the attacker as
// http://localhost:<port> — a different site, so every attack is a real cross-site request.
//
// Every request Portcullis proxies goes to a recording upstream started here (method, path,
// Authorization of each request): `/api/*` is forwarded on to the demo API, `/rec/*` is answered
// by the recorder itself. The attacks must leave no trace there at all; legitimate calls from
// the SPA, before and after the attacks, show up there with alice's bearer token.
//
// The attacks (each a page on the attacker site):
//   a. fetch(/api/hello) with credentials and X-CSRF: 1 -> the CORS preflight is refused (403, no
//      Access-Control-Allow-Origin), the fetch rejects;
//   b. no-cors fetches (GET /api/hello, POST /rec/nocors-post) -> opaque responses, refused by
//      Portcullis itself;
//   c. an auto-submitting cross-site <form method=POST> -> lands on a JSON error, 401/403;
//   d. <img src=/rec/img> and a top-level navigation to /rec/nav -> 401/403 JSON, never a redirect;
//   e. <iframe src=/> of the SPA -> framing refused (X-Frame-Options DENY, frame-ancestors 'none').

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

const COOKIE = '__Host-portcullis';
const REFUSED = [401, 403];

after(async () => {
  await h.closeServers();
  await h.stopAll();
});


/**
 * The recording upstream: records method, path and Authorization of every request; forwards
 * /api/* to the demo API at `apiUrl`, answers anything else itself with 200 JSON.
 */
async function startRecorder(apiUrl) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({
      method: req.method,
      path: req.url,
      authorization: req.headers.authorization ?? null,
      cookie: req.headers.cookie ?? null,
    });
    if (req.url === '/api' || req.url.startsWith('/api/') || req.url.startsWith('/api?')) {
      const up = http.request(new URL(req.url, apiUrl), { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on('error', (err) => {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'recorder_forward_failed', error_description: err.message }));
      });
      req.pipe(up);
      return;
    }
    req.resume();
    req.on('end', () => {
      const body = JSON.stringify({ recorded: true, method: req.method, path: req.url });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  const port = await h.listen(server);
  return { url: `http://127.0.0.1:${port}`, requests };
}

/** The attacker site's pages, each attacking the gateway at `gw`. */
function attackerPages(gw) {
  const g = JSON.stringify(gw);
  const report = `
    const GW = ${g};
    function report(x) {
      document.getElementById('out').textContent = JSON.stringify(x);
      document.title = 'done';
    }`;
  const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head>`
    + `<body><h1>Win a prize!</h1><pre id="out"></pre>${body}</body></html>`;
  return {
    '/': page('attacker', '<p>nothing to see here</p>'),
    // a. credentialed CORS fetch with the CSRF header: needs a preflight
    '/cors': page('cors', `<script>${report}
      fetch(GW + '/api/hello?attack=cors', { credentials: 'include', headers: { 'X-CSRF': '1' } })
        .then(async (r) => report({ fulfilled: true, status: r.status, body: await r.text() }),
              (e) => report({ fulfilled: false, error: String(e) }));
    </script>`),
    // b. simple requests without the header: no preflight, opaque responses
    '/nocors': page('nocors', `<script>${report}
      (async () => {
        const out = {};
        for (const [name, url, init] of [
          ['get', GW + '/api/hello?attack=nocors', {}],
          ['post', GW + '/rec/nocors-post?attack=nocors', {
            method: 'POST', body: 'to=mallory&amount=1000',
            headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
          }],
        ]) {
          try {
            const r = await fetch(url, { credentials: 'include', mode: 'no-cors', ...init });
            out[name] = { fulfilled: true, type: r.type, status: r.status, body: await r.text() };
          } catch (e) {
            out[name] = { fulfilled: false, error: String(e) };
          }
        }
        report(out);
      })();
    </script>`),
    // c. classic auto-submitting cross-site form (a top-level POST navigation)
    '/form': page('form', `
      <form id="f" method="POST" action="${gw}/rec/transfer?attack=form">
        <input name="to" value="mallory"><input name="amount" value="1000">
      </form>
      <script>document.getElementById('f').submit();</script>`),
    // d1. an image pointing at an API route
    '/img': page('img', `<script>${report}</script>
      <img id="i" src="${gw}/rec/img?attack=img"
           onload="report({ event: 'load', width: this.naturalWidth })"
           onerror="report({ event: 'error' })">`),
    // d2. a top-level GET navigation to an API route
    '/nav': page('nav', `<script>location = ${JSON.stringify(`${gw}/rec/nav?attack=nav`)};</script>`),
    // e. the SPA in a frame
    '/frame': page('frame', `<script>${report}</script>
      <iframe id="f" src="${gw}/" width="600" height="400" onload="report({ event: 'load' })"></iframe>`),
  };
}

async function startAttacker(gw) {
  const pages = attackerPages(gw);
  const hits = [];
  const server = http.createServer((req, res) => {
    req.resume();
    const path = new URL(req.url, 'http://x').pathname;
    hits.push(`${req.method} ${path}`);
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

const lower = (headers) => Object.fromEntries(Object.entries(headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));

/**
 * Records, from chromium's own network events (CDP), every request of one tab to `gwOrigin`:
 * method, URL, type, status and headers, the headers as really sent, which cookies chromium
 * withheld and why, and why a request failed (CORS error, ORB, ...).
 */
function watchGatewayTraffic(cdp, gwOrigin) {
  const net = new Map(); // requestId -> { method, url, type, requestHeaders, preflight, status, headers, ... }
  const extra = new Map(); // requestId -> { headers, cookies: { name: blockedReasons } }
  const raw = new Map(); // requestId -> { status, headers }
  cdp.on('Network.requestWillBeSent', (e) => {
    if (!e.request.url.startsWith(gwOrigin)) return;
    const requestHeaders = lower(e.request.headers);
    net.set(e.requestId, {
      method: e.request.method,
      url: e.request.url,
      type: e.type,
      requestHeaders,
      // chromium reports a CORS preflight as a request of its own (type "Other")
      preflight: e.request.method === 'OPTIONS' && 'access-control-request-method' in requestHeaders,
      redirectedFrom: e.redirectResponse ? e.redirectResponse.status : undefined,
    });
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    extra.set(e.requestId, {
      headers: lower(e.headers),
      cookies: Object.fromEntries((e.associatedCookies ?? []).map((c) => [c.cookie.name, c.blockedReasons])),
    });
  });
  cdp.on('Network.responseReceived', (e) => {
    const n = net.get(e.requestId);
    if (n) Object.assign(n, { status: e.response.status, headers: lower(e.response.headers) });
  });
  // The raw answer as the network service got it: also there when ORB then blocks the body
  // (an <img> of JSON gets no Network.responseReceived at all).
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    raw.set(e.requestId, { status: e.statusCode, headers: lower(e.headers) });
  });
  cdp.on('Network.loadingFailed', (e) => {
    const n = net.get(e.requestId);
    if (n) Object.assign(n, { failed: e.errorText, corsError: e.corsErrorStatus?.corsError, blockedReason: e.blockedReason });
  });

  /** What chromium saw of the requests whose URL contains `marker`. */
  const seen = (marker) => [...net.entries()].filter(([, n]) => n.url.includes(marker)).map(([id, n]) => {
    const x = extra.get(id);
    const r = raw.get(id);
    return {
      ...n,
      status: n.status ?? r?.status,
      headers: n.headers ?? r?.headers,
      statusFrom: n.status ? 'responseReceived' : r ? 'responseReceivedExtraInfo' : undefined,
      sentHeaders: x?.headers,
      sessionCookie: x ? (x.cookies[COOKIE] ?? 'not associated') : undefined,
    };
  });
  /** Polls `seen(marker)` until `ready(list)` holds (CDP events trail the page a little). */
  const waitSeen = async (marker, ready, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const list = seen(marker);
      if (ready(list)) return list;
      if (Date.now() > deadline) throw new Error(`CDP never saw ${marker} complete: ${JSON.stringify(list)}`);
      await h.sleep(25);
    }
  };
  /** The interesting bits of one request, for assertions and the report. */
  const summary = (n) => ({
    method: n.method,
    type: n.type,
    status: n.status ?? null,
    statusFrom: n.statusFrom ?? null,
    failed: n.failed ?? null,
    corsError: n.corsError ?? null,
    blockedReason: n.blockedReason ?? null,
    secFetchSite: n.sentHeaders?.['sec-fetch-site'] ?? n.requestHeaders?.['sec-fetch-site'] ?? null,
    origin: n.sentHeaders?.origin ?? n.requestHeaders?.origin ?? null,
    // null: chromium did not report the headers as sent
    cookieSent: n.sentHeaders ? /(^|;\s*)__Host-portcullis=/.test(n.sentHeaders.cookie ?? '') : null,
    // why chromium withheld the session cookie (e.g. SchemefulSameSiteStrict)
    sessionCookie: n.sessionCookie ?? null,
  });
  return { seen, waitSeen, summary };
}

test('a cross-site page cannot use the session (real browser)', { timeout: 60_000 }, async (t) => {
  // ---- preconditions: fail loudly, never skip
  const chromium = await h.requireChromium();

  let context;
  const browserLog = [];
  const observed = {}; // what each attack got, printed as a diagnostic
  try {
    // ---- components: provider on localhost, demo API behind the recorder, Portcullis on 127.0.0.1
    const { gwPort, origin, provider } = await h.startSite();
    assert.match(provider.issuer, /^http:\/\/localhost:\d+$/);
    const api = await h.startApi({ introspectionUrl: `${provider.issuer}/token/introspection` });
    const rec = await startRecorder(api.url);
    const gw = await h.startPortcullis({
      config: h.portcullisConfig({
        port: gwPort,
        issuer: provider.issuer,
        overrides: {
          routes: [
            { prefix: '/api', upstream: rec.url, token: 'user', strip_prefix: false },
            { prefix: '/rec', upstream: rec.url, token: 'user', strip_prefix: false },
          ],
        },
      }),
    });
    assert.equal(gw.origin, origin);
    const attacker = await startAttacker(origin);
    assert.match(attacker.origin, /^http:\/\/localhost:\d+$/);

    // ---- the legitimate tab: alice logs in
    context = await h.launchChromium(chromium);
    const spa = context.pages()[0] ?? await context.newPage();
    spa.on('console', (m) => browserLog.push(`spa console.${m.type()}: ${m.text()}`));
    spa.on('pageerror', (e) => browserLog.push(`spa pageerror: ${e.message}`));
    await h.loginThroughUi(spa, { origin, issuer: provider.issuer, username: 'alice', password: 'alice' });
    assert.equal(await spa.textContent('#user-name'), 'Alice Liddell');
    const sessionBefore = (await context.cookies(origin)).find((c) => c.name === COOKIE);
    assert.ok(sessionBefore, `no ${COOKIE} cookie after login`);
    assert.equal(sessionBefore.sameSite, 'Strict');

    // Positive controls: the recorder does see what a same-origin call with the session sends.
    await spa.click('#call-api');
    await spa.waitForFunction(() => document.querySelector('#api-result')?.textContent.includes('Hello, alice!'));
    const control = await spa.evaluate(async () => {
      const r = await fetch('/rec/control', { method: 'POST', headers: { 'X-CSRF': '1' }, body: 'x=1' });
      return { status: r.status, body: await r.json() };
    });
    assert.equal(control.status, 200, 'same-origin POST /rec/control');
    assert.equal(control.body.recorded, true);
    assert.deepEqual(rec.requests.map((r) => `${r.method} ${r.path}`), ['GET /api/hello', 'POST /rec/control']);
    for (const r of rec.requests) {
      assert.match(r.authorization ?? '', /^Bearer \S+$/, `the recorder saw alice's token on ${r.path}`);
      assert.equal(r.cookie, null, 'the session cookie never goes upstream');
    }
    const recordedBeforeAttacks = rec.requests.length;

    // ---- the attacker's tab, in the same browser (same cookie jar)
    const evil = await context.newPage();
    evil.on('console', (m) => browserLog.push(`evil console.${m.type()}: ${m.text()}`));
    evil.on('pageerror', (e) => browserLog.push(`evil pageerror: ${e.message}`));
    const toGw = []; // every request the attacker tab (and its frames) sent to the gateway
    evil.on('request', (r) => {
      if (r.url().startsWith(origin)) toGw.push(r);
    });
    evil.on('requestfailed', (r) => browserLog.push(`evil requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    // Playwright hides CORS preflights, and an ORB-blocked <img> has no response for it: watch
    // the attacker tab's network over CDP too (what chromium itself saw, before ORB/CORS).
    const cdp = await context.newCDPSession(evil);
    const { waitSeen, summary } = watchGatewayTraffic(cdp, origin);
    await cdp.send('Network.enable');

    const outcome = async () => JSON.parse(await evil.textContent('#out'));
    const step = async (name, fn) => {
      try {
        await fn();
      } catch (err) {
        err.message = `${name}: ${err.message}`;
        throw err;
      }
    };
    const visit = async (path) => {
      await evil.goto(`${attacker.origin}${path}`);
      await evil.waitForFunction(() => document.title === 'done');
      return outcome();
    };

    // a. credentialed CORS fetch with X-CSRF: the preflight is refused, the fetch rejects
    await step('a. CORS fetch with X-CSRF', async () => {
      const out = await visit('/cors');
      assert.equal(out.fulfilled, false, `the cross-origin fetch must fail: ${JSON.stringify(out)}`);
      assert.match(out.error, /TypeError/);
      const list = await waitSeen('attack=cors', (l) => l.some((n) => n.preflight && n.status)
        && l.some((n) => !n.preflight && n.failed));
      const pf = list.filter((n) => n.preflight);
      assert.equal(pf.length, 1, `one preflight: ${JSON.stringify(list)}`);
      assert.equal(pf[0].method, 'OPTIONS');
      assert.equal(pf[0].status, 403, 'the preflight is refused');
      assert.equal(pf[0].headers['access-control-allow-origin'], undefined, 'no ACAO on the refused preflight');
      assert.equal(pf[0].headers['access-control-allow-credentials'], undefined);
      assert.equal(pf[0].requestHeaders.origin, attacker.origin);
      // the actual GET never left the browser: no response, failed on CORS
      const [get] = list.filter((n) => !n.preflight);
      assert.equal(get.method, 'GET');
      assert.equal(get.status, undefined, 'no response to the actual GET');
      assert.ok(get.corsError, `a CORS error: ${JSON.stringify(get)}`);
      observed.a = { page: out, preflight: summary(pf[0]), get: summary(get) };
    });

    // b. no-cors simple requests: opaque to the page, refused by Portcullis itself
    await step('b. no-cors fetches without the header', async () => {
      const out = await visit('/nocors');
      for (const name of ['get', 'post']) {
        assert.equal(out[name].fulfilled, true, `no-cors ${name} resolves (opaque): ${JSON.stringify(out)}`);
        assert.equal(out[name].type, 'opaque');
        assert.equal(out[name].status, 0);
        assert.equal(out[name].body, '');
      }
      const list = await waitSeen('attack=nocors', (l) => l.length === 2 && l.every((n) => n.status));
      observed.b = { page: out };
      for (const n of list) {
        assert.ok(REFUSED.includes(n.status), `${n.method} ${n.url} -> ${n.status}`);
        assert.equal(n.headers['access-control-allow-origin'], undefined);
        assert.notEqual(summary(n).cookieSent, true, `the session cookie went along with ${n.method} ${n.url}`);
        observed.b[n.method] = summary(n);
      }
      assert.deepEqual(list.map((n) => n.method).sort(), ['GET', 'POST']);
    });

    // c. auto-submitting cross-site form POST: lands on a JSON error
    await step('c. auto-submitting cross-site form POST', async () => {
      const landed = evil.waitForResponse((r) => r.url().includes('attack=form') && r.request().isNavigationRequest());
      // (`commit`: the page navigates itself away right after it is parsed)
      await evil.goto(`${attacker.origin}/form`, { waitUntil: 'commit' });
      const resp = await landed;
      await evil.waitForURL((u) => u.href.includes('/rec/transfer'));
      assert.equal(resp.request().method(), 'POST');
      assert.ok(REFUSED.includes(resp.status()), `form POST -> ${resp.status()}`);
      assert.match(resp.headers()['content-type'] ?? '', /^application\/json/);
      const body = await evil.evaluate(() => document.body.innerText);
      const json = JSON.parse(body);
      assert.ok(['csrf', 'unauthenticated'].includes(json.error), body);
      const list = await waitSeen('attack=form', (l) => l.length > 0 && l.every((n) => n.status));
      assert.equal(list.length, 1, `one request, no redirect: ${JSON.stringify(list)}`);
      assert.notEqual(summary(list[0]).cookieSent, true, 'the session cookie went along with the form POST');
      observed.c = { ...summary(list[0]), landedOn: evil.url(), body: json };
    });

    // d. <img> and a top-level navigation to API routes: 401/403 JSON, never a redirect
    await step('d. <img> and top-level navigation to an API route', async () => {
      const out = await visit('/img');
      assert.equal(out.event, 'error', `the image must not load: ${JSON.stringify(out)}`);
      const [img] = await waitSeen('attack=img', (l) => l.length === 1 && l[0].status);
      assert.ok(REFUSED.includes(img.status), `img -> ${img.status}`);
      assert.notEqual(summary(img).cookieSent, true, 'the session cookie went along with the <img>');

      const landed = evil.waitForResponse((r) => r.url().includes('attack=nav') && r.request().isNavigationRequest());
      await evil.goto(`${attacker.origin}/nav`, { waitUntil: 'commit' });
      const nav = await landed;
      await evil.waitForURL((u) => u.href.includes('/rec/nav'));
      assert.ok(REFUSED.includes(nav.status()), `navigation -> ${nav.status()}`);
      assert.equal(nav.headers().location, undefined, 'no redirect');
      assert.equal(nav.request().redirectedFrom(), null);
      assert.equal(nav.request().redirectedTo(), null, 'not followed by a redirect');
      assert.match(nav.headers()['content-type'] ?? '', /^application\/json/);
      const json = JSON.parse(await evil.evaluate(() => document.body.innerText));
      assert.ok(['csrf', 'unauthenticated'].includes(json.error), JSON.stringify(json));
      const list = await waitSeen('attack=nav', (l) => l.length > 0 && l.every((n) => n.status));
      assert.equal(list.length, 1, `one request, no redirect: ${JSON.stringify(list)}`);
      assert.equal(list[0].redirectedFrom, undefined);
      assert.notEqual(summary(list[0]).cookieSent, true, 'the session cookie went along with the navigation');
      observed.d = {
        img: { ...summary(img), event: out.event },
        nav: { ...summary(list[0]), landedOn: evil.url(), body: json },
      };
    });

    // e. the SPA in a cross-site frame: refused
    await step('e. <iframe> of the SPA', async () => {
      const out = await visit('/frame');
      assert.equal(out.event, 'load');
      const frames = evil.frames().filter((f) => f !== evil.mainFrame());
      assert.equal(frames.length, 1);
      const [frame] = frames;
      // The document response carried the anti-framing headers ...
      const doc = toGw.find((r) => r.url() === `${origin}/` && r.frame() !== evil.mainFrame());
      assert.ok(doc, 'the frame requested the SPA');
      const docResp = await doc.response();
      assert.ok(docResp, 'the SPA document was answered');
      const headers = docResp.headers();
      assert.equal(headers['x-frame-options'], 'DENY');
      assert.match(headers['content-security-policy'] ?? '', /frame-ancestors 'none'/);
      // ... and chromium did not render it: no SPA DOM in the frame, none of its scripts ran.
      const rendered = await frame.evaluate(() => ({
        url: location.href,
        spa: !!document.getElementById('status'),
        text: document.body?.innerText ?? '',
      })).catch((e) => ({ error: e.message }));
      assert.notEqual(rendered.spa, true, `the SPA rendered in the frame: ${JSON.stringify(rendered)}`);
      if (!rendered.error) {
        assert.ok(!rendered.url.startsWith(origin), `the frame holds a gateway document: ${rendered.url}`);
      }
      const subresources = toGw.filter((r) => r.url() !== `${origin}/`).map((r) => r.url());
      assert.ok(!subresources.some((u) => /\/(app\.js|style\.css|bff\/user)$/.test(u)),
        `the framed SPA loaded its resources: ${subresources}`);
      assert.doesNotMatch(await evil.content(), /Alice|alice@example/);
      observed.e = {
        status: docResp.status(),
        xfo: headers['x-frame-options'],
        csp: headers['content-security-policy'],
        frameUrl: frame.url(),
        inFrame: rendered,
      };
    });

    // ---- nothing reached an upstream
    await h.sleep(200); // let any straggler arrive
    const leaked = rec.requests.slice(recordedBeforeAttacks);
    assert.deepEqual(leaked, [], 'no attack reached an upstream');
    assert.ok(attacker.hits.length >= 6, `the attacker pages were served: ${attacker.hits}`);

    // ---- the session survived: the legitimate tab still works
    await spa.bringToFront();
    await spa.evaluate(() => { document.querySelector('#api-result').textContent = ''; });
    await spa.click('#call-api');
    await spa.waitForFunction(() => document.querySelector('#api-result')?.textContent.includes('Hello, alice!'));
    assert.match(await spa.textContent('#api-result'), /^200\n/);
    const user = await spa.evaluate(async () => {
      const r = await fetch('/bff/user', { headers: { 'X-CSRF': '1' } });
      return { status: r.status, body: await r.json() };
    });
    assert.equal(user.status, 200, '/bff/user after the attacks');
    assert.equal(user.body.sub, 'alice');
    const sessionAfter = (await context.cookies(origin)).find((c) => c.name === COOKIE);
    assert.equal(sessionAfter?.value, sessionBefore.value, 'the session cookie is unchanged');
    const legit = rec.requests.slice(recordedBeforeAttacks);
    assert.deepEqual(legit.map((r) => `${r.method} ${r.path}`), ['GET /api/hello']);
    assert.match(legit[0].authorization ?? '', /^Bearer \S+$/);

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
