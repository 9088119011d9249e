// Portcullis demo upstream API (Node stdlib only).
//
//   PORT=9100 INTROSPECTION_URL=http://localhost:9090/token/introspection \
//   API_CLIENT_ID=demo-api API_CLIENT_SECRET=demo-api-secret node demo/api/server.mjs
//
// Every /api/* request needs `Authorization: Bearer <access token>`; the token is checked at the
// provider's introspection endpoint (RFC 7662, client_secret_basic with the API's own client).
//   401 {"error":"unauthenticated"|"invalid_token", ...}  missing / inactive token
//   502 {"error":"introspection_failed", ...}             provider unreachable or refusing us
//   200 {"message":"Hello, <sub>!","sub","scope","client_id","time",
//        "token":{"fingerprint","length","claims":{sub,client_id,scope,iss,aud,iat,exp,token_type},
//                 "expires_in"}, "cookies_received":[names], ...}
//        (`token` describes the bearer token from introspection; the token itself is never echoed)
// GET /api/hello answers as above; any other /api/* path answers the same JSON plus
// `method` and `path` (handy for proxy tests). GET /healthz -> 200 "ok" (no auth).
// Binds HOST (default 127.0.0.1). Prints `READY http://<host>:<port>` on stdout when listening.

import crypto from 'node:crypto';
import http from 'node:http';

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT ?? 9100);
const introspectionUrl = process.env.INTROSPECTION_URL || 'http://localhost:9090/token/introspection';
const clientId = process.env.API_CLIENT_ID || 'demo-api';
const clientSecret = process.env.API_CLIENT_SECRET || 'demo-api-secret';
const basic = `Basic ${Buffer.from(
  `${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`,
).toString('base64')}`;

function send(res, status, body, extra = {}) {
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(json),
    'cache-control': 'no-store',
    ...extra,
  });
  res.end(json);
}

/** The members of `obj` named in `keys` that it has. */
function pick(obj, keys) {
  return Object.fromEntries(keys.filter((k) => obj[k] !== undefined).map((k) => [k, obj[k]]));
}

/** The names (never the values) of the cookies of a `Cookie` header. */
function cookieNames(header) {
  return (header ?? '').split(';').map((c) => c.split('=')[0].trim()).filter(Boolean);
}

async function introspect(token) {
  const r = await fetch(introspectionUrl, {
    method: 'POST',
    headers: {
      authorization: basic,
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    },
    body: new URLSearchParams({ token }),
    signal: AbortSignal.timeout(5000),
  });
  if (!r.ok) {
    throw new Error(`introspection answered ${r.status}: ${(await r.text()).slice(0, 200)}`);
  }
  return r.json();
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  // drain any request body (the demo never needs it)
  req.resume();

  if (url.pathname === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
    return;
  }
  if (url.pathname !== '/api' && !url.pathname.startsWith('/api/')) {
    send(res, 404, { error: 'not_found', error_description: 'no such endpoint' });
    return;
  }

  const m = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(req.headers.authorization ?? '');
  if (!m) {
    send(res, 401, { error: 'unauthenticated', error_description: 'missing bearer token' },
      { 'www-authenticate': 'Bearer' });
    return;
  }

  let info;
  try {
    info = await introspect(m[1]);
  } catch (err) {
    console.error(`[api] introspection failed: ${err.message}`);
    send(res, 502, { error: 'introspection_failed', error_description: err.message });
    return;
  }
  if (!info.active) {
    send(res, 401, { error: 'invalid_token', error_description: 'token is not active' },
      { 'www-authenticate': 'Bearer error="invalid_token"' });
    return;
  }

  const now = Math.floor(Date.now() / 1000);
  const body = {
    message: `Hello, ${info.sub ?? info.client_id}!`,
    sub: info.sub ?? null,
    scope: info.scope ?? null,
    client_id: info.client_id ?? null,
    time: new Date().toISOString(),
    // What this API saw of the request: the bearer token Portcullis attached (the browser
    // never had it) described by the provider's introspection — never the token itself,
    // only a short fingerprint that changes when Portcullis refreshes it — and the names
    // of the cookies that reached it (Portcullis keeps its own to itself).
    token: {
      fingerprint: crypto.createHash('sha256').update(m[1]).digest('hex').slice(0, 12),
      length: m[1].length,
      claims: pick(info, ['sub', 'client_id', 'scope', 'iss', 'aud', 'iat', 'exp', 'token_type']),
      expires_in: typeof info.exp === 'number' ? info.exp - now : null,
    },
    cookies_received: cookieNames(req.headers.cookie),
  };
  if (url.pathname !== '/api/hello') {
    body.method = req.method;
    body.path = url.pathname + url.search;
  }
  send(res, 200, body);
});

server.keepAliveTimeout = 65_000;
server.listen(port, host, () => {
  const a = server.address();
  process.stdout.write(`READY http://${host}:${a.port}\n`);
});
server.on('error', (err) => {
  console.error(`[api] ${err.message}`);
  process.exit(1);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
