// Self-check of the test provider over plain HTTP (no browser): starts its own provider on a
// free port and runs authorization code + PKCE with a confidential client, step by step:
// PAR-less authorize -> login form -> POST login -> resume -> redirect with code+iss ->
// token (client_secret_basic + code_verifier) -> userinfo -> introspection -> refresh (rotation)
// -> reuse of the rotated refresh token (grant revoked) -> client_credentials -> /test/revoke-grants
// -> end-session with back-channel logout to a loopback listener.
//
//   node demo/provider/flow-check.mjs          (prints each request; exit 0 = all good)

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const verbose = !process.argv.includes('-q');
const log = (...a) => { if (verbose) console.log(...a); };

// ---- a loopback receiver for back-channel logout
const logoutTokens = [];
const rp = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    if (req.url === '/backchannel-logout') logoutTokens.push(new URLSearchParams(body).get('logout_token'));
    res.writeHead(200).end();
  });
});
await new Promise((r) => rp.listen(0, '127.0.0.1', r));
const rpBase = `http://127.0.0.1:${rp.address().port}`;

const config = {
  port: 0,
  issuerHost: 'localhost',
  accessTokenTTL: 120,
  clients: [{
    client_id: 'rp',
    client_secret: 'rp-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: [`${rpBase}/cb`],
    post_logout_redirect_uris: [`${rpBase}/`],
    backchannel_logout_uri: `${rpBase}/backchannel-logout`,
    backchannel_logout_session_required: true,
  }, {
    client_id: 'api', client_secret: 'api-secret', grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
  }],
};

const t0 = Date.now();
const child = spawn(process.execPath, [path.join(here, 'provider.mjs')], {
  env: { ...process.env, PROVIDER_CONFIG: JSON.stringify(config) },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const issuer = await new Promise((resolve, reject) => {
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    const m = buf.match(/^READY (\S+)$/m);
    if (m) resolve(m[1]);
  });
  child.on('exit', (code) => reject(new Error(`provider exited ${code}`)));
});
log(`provider READY ${issuer} after ${Date.now() - t0} ms`);

try {
  // ---- cookie jar (per host:port is fine here, only one host)
  const jar = new Map();
  function store(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const [name, value] = pair.split('=');
      log(`    set-cookie ${name.trim()}  (${attrs.map((s) => s.trim()).join('; ')})${value ? '' : ' [cleared]'}`);
      if (!value || /expires=Thu, 01 Jan 1970/i.test(sc)) jar.delete(name.trim());
      else jar.set(name.trim(), { value, path: (attrs.find((a) => /^\s*path=/i.test(a)) ?? 'path=/').split('=')[1] });
    }
  }
  function cookieHeader(url) {
    const p = new URL(url).pathname;
    return [...jar].filter(([, c]) => p.startsWith(c.path)).map(([n, c]) => `${n}=${c.value}`).join('; ');
  }
  async function req(method, url, { body, headers = {} } = {}) {
    const h = { ...headers };
    const ck = cookieHeader(url);
    if (ck) h.cookie = ck;
    const res = await fetch(url, { method, body, headers: h, redirect: 'manual' });
    log(`${method} ${url.replace(issuer, '')} -> ${res.status}${res.headers.get('location') ? ` Location: ${res.headers.get('location')}` : ''}`);
    store(res);
    return res;
  }
  const abs = (loc) => new URL(loc, issuer).href;
  const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  const form = (o) => new URLSearchParams(o).toString();
  const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

  const disc = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  for (const k of ['authorization_response_iss_parameter_supported', 'pushed_authorization_request_endpoint',
    'backchannel_logout_supported', 'revocation_endpoint', 'introspection_endpoint', 'end_session_endpoint']) {
    assert.ok(disc[k], `discovery lacks ${k}`);
  }
  assert.equal(disc.issuer, issuer);

  // ---- authorize
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  const authz = new URL(disc.authorization_endpoint);
  authz.search = form({
    client_id: 'rp', response_type: 'code', redirect_uri: `${rpBase}/cb`,
    scope: 'openid profile email offline_access', state, nonce,
    code_challenge: challenge, code_challenge_method: 'S256',
  });

  // PKCE is mandatory: the same request without code_challenge is refused at the redirect_uri
  const noPkce = new URL(authz);
  noPkce.searchParams.delete('code_challenge');
  noPkce.searchParams.delete('code_challenge_method');
  let r = await fetch(noPkce, { redirect: 'manual' });
  assert.match(r.headers.get('location'), /error=invalid_request/);

  // prompt=none without a session -> login_required at the redirect_uri
  const none = new URL(authz);
  none.searchParams.set('prompt', 'none');
  r = await fetch(none, { redirect: 'manual' });
  assert.match(r.headers.get('location'), /error=login_required/);

  r = await req('GET', authz.href);
  assert.equal(r.status, 303);
  const interactionUrl = abs(r.headers.get('location'));
  r = await req('GET', interactionUrl);
  assert.equal(r.status, 200);
  let html = await r.text();
  assert.match(html, /id="login-form"/);

  r = await req('POST', `${interactionUrl}/login`, { body: form({ login: 'alice', password: 'wrong' }), headers: FORM });
  assert.equal(r.status, 200);
  html = await r.text();
  assert.match(html, /Invalid username or password/);

  r = await req('POST', `${interactionUrl}/login`, { body: form({ login: 'alice', password: 'alice' }), headers: FORM });
  assert.equal(r.status, 303);
  r = await req('GET', abs(r.headers.get('location'))); // /auth/<uid> (resume)
  assert.equal(r.status, 303);
  const cb = new URL(r.headers.get('location'));
  assert.equal(cb.origin + cb.pathname, `${rpBase}/cb`);
  assert.equal(cb.searchParams.get('state'), state);
  assert.equal(cb.searchParams.get('iss'), issuer);
  const code = cb.searchParams.get('code');
  assert.ok(code);

  // ---- token exchange
  r = await req('POST', disc.token_endpoint, {
    headers: { ...FORM, authorization: basic('rp', 'rp-secret') },
    body: form({ grant_type: 'authorization_code', code, redirect_uri: `${rpBase}/cb`, code_verifier: verifier }),
  });
  let tokens = await r.json();
  assert.equal(r.status, 200, JSON.stringify(tokens));
  log('    token response keys:', Object.keys(tokens).join(','), 'expires_in', tokens.expires_in, 'scope', tokens.scope);
  assert.ok(tokens.access_token && tokens.id_token && tokens.refresh_token);
  const idt = JSON.parse(Buffer.from(tokens.id_token.split('.')[1], 'base64url'));
  log('    id_token claims:', JSON.stringify(idt));
  assert.equal(idt.sub, 'alice');
  assert.equal(idt.nonce, nonce);
  assert.ok(idt.sid);

  // ---- /test/issued lists the opaque values
  const iss = await (await fetch(`${issuer}/test/issued?sub=alice`)).json();
  assert.ok(iss.access_token.includes(tokens.access_token));
  assert.ok(iss.refresh_token.includes(tokens.refresh_token));
  assert.ok(iss.authorization_code.includes(code));

  // ---- userinfo
  r = await req('GET', disc.userinfo_endpoint, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  const ui = await r.json();
  log('    userinfo:', JSON.stringify(ui));
  assert.equal(ui.name, 'Alice Liddell');
  assert.equal(ui.email, 'alice@example.com');

  // ---- introspection by another confidential client (the upstream API)
  const introspect = async (token) => (await req('POST', disc.introspection_endpoint, {
    headers: { ...FORM, authorization: basic('api', 'api-secret') }, body: form({ token }),
  })).json();
  let intro = await introspect(tokens.access_token);
  log('    introspection:', JSON.stringify(intro));
  assert.equal(intro.active, true);
  assert.equal(intro.sub, 'alice');

  // ---- refresh rotates
  const refresh = (rt) => req('POST', disc.token_endpoint, {
    headers: { ...FORM, authorization: basic('rp', 'rp-secret') },
    body: form({ grant_type: 'refresh_token', refresh_token: rt }),
  });
  r = await refresh(tokens.refresh_token);
  const t2 = await r.json();
  assert.equal(r.status, 200, JSON.stringify(t2));
  assert.ok(t2.refresh_token && t2.refresh_token !== tokens.refresh_token, 'refresh token rotated');
  assert.equal((await introspect(t2.access_token)).active, true);

  // reuse of the rotated-away refresh token -> invalid_grant and the whole grant dies
  r = await refresh(tokens.refresh_token);
  const reuse = await r.json();
  assert.equal(r.status, 400);
  assert.equal(reuse.error, 'invalid_grant');
  assert.equal((await introspect(t2.access_token)).active, false, 'grant revoked after reuse');
  r = await refresh(t2.refresh_token);
  assert.equal(r.status, 400);

  // ---- client credentials
  r = await req('POST', disc.token_endpoint, {
    headers: { ...FORM, authorization: basic('rp', 'rp-secret') }, body: form({ grant_type: 'client_credentials' }),
  });
  const cc = await r.json();
  assert.equal(r.status, 200, JSON.stringify(cc));
  assert.equal((await introspect(cc.access_token)).active, true);

  // ---- new login with the existing provider session (no form), then /test/revoke-grants
  const state2 = 'second';
  authz.searchParams.set('state', state2);
  r = await req('GET', authz.href);
  assert.equal(r.status, 303);
  const cb2 = new URL(r.headers.get('location'));
  assert.equal(cb2.searchParams.get('state'), state2, 'SSO: straight back with a code');
  r = await req('POST', disc.token_endpoint, {
    headers: { ...FORM, authorization: basic('rp', 'rp-secret') },
    body: form({ grant_type: 'authorization_code', code: cb2.searchParams.get('code'), redirect_uri: `${rpBase}/cb`, code_verifier: verifier }),
  });
  tokens = await r.json();
  assert.ok(tokens.refresh_token);
  r = await req('POST', `${issuer}/test/revoke-grants?sub=alice`);
  log('    ', await r.text());
  assert.equal((await introspect(tokens.access_token)).active, false);
  r = await refresh(tokens.refresh_token);
  assert.equal((await r.json()).error, 'invalid_grant');

  // ---- RP-initiated logout with back-channel logout to loopback
  const end = new URL(disc.end_session_endpoint);
  end.search = form({ id_token_hint: tokens.id_token, post_logout_redirect_uri: `${rpBase}/`, state: 'bye' });
  r = await req('GET', end.href);
  assert.equal(r.status, 200);
  html = await r.text();
  assert.match(html, /id="logout-form"/);
  assert.match(html, /id="logout-yes"/);
  const xsrf = html.match(/name="xsrf" value="([^"]+)"/)[1];
  const action = html.match(/<form id="logout-form" method="post" action="([^"]+)"/)[1];
  r = await req('POST', action, { headers: FORM, body: form({ xsrf, logout: 'yes' }) });
  assert.equal(r.status, 303);
  assert.equal(r.headers.get('location'), `${rpBase}/?state=bye`);
  assert.equal(logoutTokens.length, 1, 'back-channel logout delivered to loopback');
  const lt = JSON.parse(Buffer.from(logoutTokens[0].split('.')[1], 'base64url'));
  log('    logout_token claims:', JSON.stringify(lt));
  assert.equal(lt.sub, 'alice');
  assert.equal(lt.iss, issuer);
  assert.ok(lt.sid);

  console.log('flow-check: OK');
} finally {
  child.kill('SIGTERM');
  rp.close();
}
