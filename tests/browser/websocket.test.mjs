// Real-browser test of WebSockets through Portcullis (issue #14): the SPA's own page opens a
// WebSocket to a `websocket = true` route (it works, and the upstream sees alice's token and no
// cookie); a foreign site's page (http://localhost:<port>, another site) tries the same socket
// with alice's cookie jar (refused: nothing reaches the upstream); and a logout in another tab
// closes the SPA's open socket with 1008 "session ended".
//
//   (cd tests/browser && npm ci) && cargo build
//   node --test tests/browser/websocket.test.mjs
//
// The upstream is a real WebSocket server (npm `ws`). Env: PORTCULLIS_BIN, HARNESS_VERBOSE=1.
// Needs /usr/bin/chromium (`apt-get install -y chromium`); without it the test FAILS.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import { WebSocketServer } from 'ws';
import * as h from './harness.mjs';

after(async () => {
  await h.closeServers();
  await h.stopAll();
});


/** A WebSocket echo server; `handshakes` records the headers of every upgrade that reached it. */
async function startWsUpstream() {
  const handshakes = [];
  const server = http.createServer((req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    handshakes.push({ url: req.url, headers: req.headers });
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data, binary) => ws.send(data, { binary }));
    });
  });
  const port = await h.listen(server);
  return { url: `http://127.0.0.1:${port}`, handshakes, close: () => wss.close() };
}

/** The foreign site: a page whose script opens a WebSocket to the gateway. */
async function startAttacker(gwOrigin) {
  const wsUrl = `${gwOrigin.replace('http://', 'ws://')}/ws/hijack`;
  const { port } = await h.servePage(`<!doctype html><title>attacker</title><script>
      window.result = new Promise((resolve) => {
        const ws = new WebSocket(${JSON.stringify(wsUrl)});
        ws.onopen = () => { ws.send('steal'); };
        ws.onmessage = (e) => resolve('message: ' + e.data);
        ws.onerror = () => resolve('error');
        ws.onclose = (e) => resolve('closed ' + e.code);
      });
    </script>`);
  return { origin: `http://localhost:${port}` };
}

test('the SPA opens a WebSocket; a foreign site cannot; a logout closes it', { timeout: 120_000 }, async () => {
  const chromium = await h.requireChromium();

  let context;
  try {
    const { gwPort, origin, provider } = await h.startSite();
    const up = await startWsUpstream();
    await h.startPortcullis({
      config: h.portcullisConfig({
        port: gwPort,
        issuer: provider.issuer,
        overrides: { routes: [{ prefix: '/ws', upstream: up.url, token: 'user', websocket: true }] },
      }),
    });
    const attacker = await startAttacker(origin);

    context = await h.launchChromium(chromium);
    const spa = context.pages()[0] ?? await context.newPage();
    await h.loginThroughUi(spa, { origin, issuer: provider.issuer, username: 'alice' });

    // 1. The SPA's page: the socket opens and echoes.
    const echoed = await spa.evaluate(() => new Promise((resolve) => {
      const ws = new WebSocket(new URL('/ws/live', location.href).href.replace(/^http/, 'ws'));
      ws.onopen = () => ws.send('hello from the SPA');
      ws.onmessage = (e) => { resolve(e.data); ws.close(); };
      ws.onerror = () => resolve('error');
    }));
    assert.equal(echoed, 'hello from the SPA');
    assert.equal(up.handshakes.length, 1);
    const seen = up.handshakes[0].headers;
    assert.match(seen.authorization ?? '', /^Bearer \S+$/, "alice's token went upstream");
    assert.ok(!(seen.cookie ?? '').includes('__Host-portcullis'), 'no session cookie upstream');
    assert.equal(seen.origin, origin, 'the browser sent its Origin');

    // 2. A foreign site's page, in the same browser (alice's cookies): refused, nothing upstream.
    const evil = await context.newPage();
    await evil.goto(`${attacker.origin}/`);
    const outcome = await evil.evaluate(() => window.result);
    assert.match(outcome, /^(error|closed \d+)$/, `the foreign page got: ${outcome}`);
    assert.equal(up.handshakes.length, 1, 'the foreign handshake never reached the upstream');
    await evil.close();

    // 3. An open socket of the SPA ends with the session: logout from another tab.
    await spa.evaluate(() => {
      window.wsClosed = new Promise((resolve) => {
        const ws = new WebSocket(new URL('/ws/live', location.href).href.replace(/^http/, 'ws'));
        ws.onopen = () => { window.wsOpened = true; };
        ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
      });
    });
    await spa.waitForFunction(() => window.wsOpened === true);
    const logoutUrl = await spa.evaluate(async () => {
      const r = await fetch('/bff/user', { headers: { 'X-CSRF': '1' } });
      return (await r.json())['bff:logout_url'];
    });
    const tab = await context.newPage();
    const started = Date.now();
    await tab.goto(`${origin}${logoutUrl}`).catch(() => {}); // ends at the provider's page
    const closed = await spa.evaluate(() => window.wsClosed);
    console.log(`MEASURE browser: logout → socket closed in ${Date.now() - started} ms (navigation included)`);
    assert.deepEqual(closed, { code: 1008, reason: 'session ended' });
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    if (context) await context.close().catch(() => {});
    await h.stopAll();
  }
});
