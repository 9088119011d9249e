// Real-browser test of OIDC Front-Channel Logout 1.0: the provider's logout page (on
// `localhost`) frames Portcullis's /bff/frontchannel-logout (on `127.0.0.1`, another site) in
// Chromium; the frame loads (framable by the provider's origin), the session ends, and a page of
// another origin can't frame it.
//
//   (cd tests/browser && npm ci) && cargo build && node --test tests/browser/frontchannel.test.mjs

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import * as h from './harness.mjs';

after(async () => {
  await h.stopAll();
});

test('the provider frames the front-channel logout and the session ends', { timeout: 90_000 }, async () => {
  const chromium = await h.requireChromium();
  const { gwPort: port, origin, provider } = await h.startSite();
  await h.startPortcullis({
    config: h.portcullisConfig({ port, issuer: provider.issuer, overrides: { oidc: { frontchannel_logout: true } } }),
  });
  // Another origin that tries to frame the same URL.
  const foreign = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`<!doctype html><iframe id="f" src="${decodeURIComponent(req.url.slice(1))}"></iframe>`);
  });
  await new Promise((r) => foreign.listen(0, '127.0.0.1', r));
  const foreignOrigin = `http://localhost:${foreign.address().port}`;

  const context = await h.launchChromium(chromium);
  try {
    const page = context.pages()[0] ?? await context.newPage();
    await h.loginThroughUi(page, { origin, issuer: provider.issuer });
    const user = await page.evaluate(async () => (await fetch('/bff/user', { headers: { 'X-CSRF': '1' } })).json());
    assert.ok(user.sid, JSON.stringify(user));

    // A foreign page framing the endpoint: Chromium refuses to render it (frame-ancestors).
    const uri = `${origin}/bff/frontchannel-logout?${new URLSearchParams({ iss: provider.issuer, sid: 'not-a-real-sid' })}`;
    const other = await context.newPage();
    await other.goto(`${foreignOrigin}/${encodeURIComponent(uri)}`);
    await h.sleep(1000);
    const blocked = other.frames().find((f) => f !== other.mainFrame());
    const blockedText = blocked ? await blocked.evaluate(() => document.body?.innerText ?? '').catch(() => '') : '';
    assert.ok(!blockedText.includes('Logged out'), `a foreign origin framed it: ${blockedText}`);
    await other.close();

    // The provider's logout page frames it: the frame renders and the session ends.
    const logoutPage = await context.newPage();
    await logoutPage.goto(`${provider.issuer}/test/frontchannel-logout-page?${new URLSearchParams({
      sub: 'alice', uri: `${origin}/bff/frontchannel-logout`,
    })}`);
    const frames = Number(await logoutPage.getAttribute('#frontchannel', 'data-frames'));
    assert.ok(frames >= 1, `the provider rendered ${frames} iframe(s)`);
    const frame = logoutPage.frames().find((f) => f.url().startsWith(`${origin}/bff/frontchannel-logout`));
    assert.ok(frame, `no front-channel frame: ${logoutPage.frames().map((f) => f.url())}`);
    await frame.waitForSelector('#logged-out');

    await page.reload();
    await page.waitForSelector('#status[data-state="logged-out"]');
  } catch (err) {
    h.dumpLogs();
    throw err;
  } finally {
    await context.close();
    foreign.close();
  }
});
