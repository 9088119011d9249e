// Portcullis test OpenID provider (npm `oidc-provider` v9). TEST/DEMO USE ONLY.
//
// Start:  node demo/provider/provider.mjs <config.json>
//    or:  PROVIDER_CONFIG='{"clients":[...]}' node demo/provider/provider.mjs
//    (with neither, demo/provider/demo-config.json is used)
//
// Config JSON (every field optional except `clients`):
//   port              listen port, default 9090; 0 = pick a free port (the issuer uses the real one)
//   host              bind address, default "127.0.0.1"
//   issuer            full issuer URL override, e.g. "http://localhost:9090" (no trailing slash)
//   issuerHost        host name used in the computed issuer instead of `host`, e.g. "localhost"
//                     (issuer = http://<issuerHost|host>:<port>; handy together with port 0)
//   issuerPath        default "": a path for the computed issuer, e.g. "/tenant1" (issuer =
//                     http://<host>:<port>/tenant1); the provider's endpoints live under it, and
//                     its RFC 8414 metadata is also served at the path-inserted URL of RFC 8414
//                     §3.1 (/.well-known/oauth-authorization-server/tenant1). The interaction
//                     (login) pages live under it too
//   clients           array of oidc-provider client metadata, passed through unchanged, except that
//                     a client without grant_types gets
//                     ["authorization_code","refresh_token","client_credentials"]
//   accessTokenTTL    seconds, default 300 (also used for client-credentials tokens)
//   refreshTokenTTL   seconds, default 86400
//   idTokenTTL        seconds, default 3600
//   sessionTTL        seconds, default 86400 (the provider's own login session)
//   rotateRefreshToken  default true: a new refresh token on every use (reuse of a rotated
//                     one revokes the whole grant)
//   requirePAR        default false: require Pushed Authorization Requests
//   dpop              default true: DPoP (RFC 9449) — a token request with a DPoP proof gets
//                     a DPoP-bound access token (token_type "DPoP", introspection cnf.jkt);
//                     false = the feature is off and proofs are ignored (Bearer tokens)
//   dpopNonce         default false: require a provider DPoP nonce in every proof (token,
//                     userinfo): a proof without one is answered `use_dpop_nonce` + DPoP-Nonce
//   resourceIndicators  absent/false = feature off. true or an object
//                     { scope: "api:read api:write", defaultResource: "http://...",
//                       useGrantedResource: true, accessTokenTTL: <seconds> }
//                     = any absolute resource URL is accepted; its access tokens are JWTs
//                     (RS256) with aud = the resource.
//   apiResources, tokenExchange  see resources.mjs (per-resource JWT access tokens; RFC 8693)
//   omitFromDiscovery  default []: members removed from the OIDC discovery document
//                     (/.well-known/openid-configuration) only, e.g. ["revocation_endpoint"]; the
//                     RFC 8414 document (/.well-known/oauth-authorization-server) keeps them —
//                     the shape of django-oauth-toolkit
//   omitFromRfc8414   default []: the same for the RFC 8414 document only
//   users             optional override of the built-in accounts:
//                     { "<login>": { "password": "...", "claims": { "name": ..., ... } } }
//   stepUp            absent = off. {"acrValues": [...], "defaultAcr": "..."}: ACR values, acr in
//                     ID and access tokens, auth_time always, real step-up (see stepup.mjs)
//   entraTenants      optional, the shape of an Entra ID multi-tenant app: { "<sub>": "<tid>" or
//                     { "tid": "<tid>", "iss": "<tid of the iss>" } }. Discovery then names the
//                     template issuer (the issuer with its "/organizations/" or "/common/" segment
//                     as "/{tenantid}/"; set issuerPath "/organizations/v2.0"), and every ID token
//                     the token endpoint returns carries `tid` and that tenant's `iss`.
//   keysFile          signing JWKS cache, default demo/provider/.keys.json (created on first start)
//
// Built-in accounts: alice/alice ("Alice Liddell", alice@example.com),
//                    bob/bob ("Bob Builder", bob@example.com).
//
// Behaviour: PKCE S256 required for every client; own plain-HTML login page (no consent page:
// every requested scope/claim/resource is granted automatically); refresh tokens issued whenever
// offline_access is requested by a client allowed the refresh_token grant; back-channel logout
// may target loopback (the library's SSRF guard is disabled here); RFC 9207 `iss` in responses.
//
// Test-only admin endpoints (no authentication — never expose this provider):
//   POST /test/revoke-grants?sub=alice        revokes every grant of the account (all its access
//                                             and refresh tokens die: refresh -> invalid_grant).
//                                             Answers 200 {"revoked": <number of grants>}.
//   POST /test/backchannel-logout?sub=alice[&client_id=X]
//                                             sends an OIDC back-channel logout token for every
//                                             provider session of the account to every client
//                                             (or just X) that has a backchannel_logout_uri.
//                                             Answers 200 {"sent": n, "failed": m, "errors": [...]}.
//   GET  /test/frontchannel-logout-page?sub=alice&uri=U
//                                             the page an OP shows at logout under OpenID
//                                             Front-Channel Logout 1.0 §3 (oidc-provider v9 has
//                                             no front-channel logout): one <iframe> per provider
//                                             session of the account and client that has it,
//                                             src = U?iss=<issuer>&sid=<that client's sid>.
//   GET  /test/issued?sub=alice | ?client_id=X  the opaque values of the access tokens, refresh
//                                             tokens, authorization codes and client-credentials
//                                             tokens issued so far (last 1000), for tests that
//                                             assert no token ever reaches the browser:
//                                             200 {"access_token":[..],"refresh_token":[..],
//                                                  "authorization_code":[..],"client_credentials":[..]}
//                                             (JWT access tokens are not listed: look for "eyJ".)
//   GET  /test/grants?client_id=X            token endpoint grants of that client, counted by the
//                                             provider: {"refresh_token": {"success": n, "error": m,
//                                             "errors": {"invalid_grant": k}}, "authorization_code": …}
//   POST /test/jwks  {"keys":[<public JWK>…]}   publishes extra public keys in the provider's JWKS
//                                             (tests sign logout tokens with the private halves)
//   POST /test/sign  {"claims": {...}, "typ": "JWT"|null, "alg": "RS256"|"ES256"}
//                                             signs the claims with the provider's own signing key
//                                             (default RS256; `typ` in the header unless null/absent)
//                                             and answers 200 {"jwt": "..."} — tokens shaped like
//                                             another provider's (e.g. a logout token with typ JWT)
//   POST /test/refresh-id-token  {"sub": "mallory", "nonce": null, ...}
//                                             from now on, every ID token a refresh_token grant
//                                             returns has these claims replaced (null removes one)
//                                             and is re-signed with the same provider key; `{}`
//                                             turns it off (the default). Answers 200 {"claims": {...}}
//   POST /test/code-id-token  {"aud": "x", "$alg": "none"|"HS256", "$key": "foreign", ...}
//                                             the same for the ID tokens of authorization_code grants
//                                             (logins); besides claims, `$alg` "none" sends it
//                                             unsigned, "HS256" signs it with the client's secret,
//                                             "jwe" sends a token shaped like an encrypted one,
//                                             `$key` "foreign" signs it with a key not in the JWKS
//                                             (under the provider key's kid); `{}` turns it off
//   POST /test/userinfo  {"sub": "mallory"}   members replaced in userinfo answers (null removes
//                                             one); `{}` turns it off (the default)
//   POST /test/slow-token {"ms": 3000, "consume": false}  every POST /token waits ms before
//                     it is processed (dropped if its client has gone meanwhile); with
//                     consume it is processed at once and its answer waits ms
//   POST /test/step-up {"ignore": true}       with `stepUp` configured: ignore acr_values/max_age
//                                             (see stepup.mjs)
//   GET  /test/health                         200 "ok"
//
// Prints exactly one line `READY <issuer>` on stdout once listening; everything else goes to
// stderr. Exits cleanly on SIGTERM / SIGINT.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

// oidc-provider prints notices with console.info (stdout); keep stdout for the READY line only.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider, errors, interactionPolicy } = await import('oidc-provider');
const { generateKeyPair, exportJWK, importJWK, SignJWT, decodeJwt, decodeProtectedHeader } = await import('jose');
const apiResources = await import('./resources.mjs');

const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- configuration

function loadConfig() {
  if (process.argv[2]) {
    return JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  }
  if (process.env.PROVIDER_CONFIG) {
    return JSON.parse(process.env.PROVIDER_CONFIG);
  }
  return JSON.parse(fs.readFileSync(path.join(here, 'demo-config.json'), 'utf8'));
}

const cfg = loadConfig();
const stepUp = (await import('./stepup.mjs')).create(cfg); // step-up (RFC 9470): see stepup.mjs
if (!Array.isArray(cfg.clients)) {
  throw new Error('provider config: "clients" must be an array of client metadata objects');
}

const host = cfg.host ?? '127.0.0.1';
const wantedPort = cfg.port ?? 9090;
const accessTokenTTL = cfg.accessTokenTTL ?? 300;
const refreshTokenTTL = cfg.refreshTokenTTL ?? 86400;
const idTokenTTL = cfg.idTokenTTL ?? 3600;
const sessionTTL = cfg.sessionTTL ?? 86400;
const rotateRefreshToken = cfg.rotateRefreshToken ?? true;
const requirePAR = cfg.requirePAR ?? false;
const dpop = cfg.dpop ?? true;
const dpopNonce = cfg.dpopNonce ?? false;
const omitFromDiscovery = cfg.omitFromDiscovery ?? [];
const omitFromRfc8414 = cfg.omitFromRfc8414 ?? [];
const keysFile = cfg.keysFile ? path.resolve(cfg.keysFile) : path.join(here, '.keys.json');

const users = cfg.users ?? {
  alice: {
    password: 'alice',
    claims: {
      name: 'Alice Liddell',
      given_name: 'Alice',
      family_name: 'Liddell',
      preferred_username: 'alice',
      email: 'alice@example.com',
      email_verified: true,
    },
  },
  bob: {
    password: 'bob',
    claims: {
      name: 'Bob Builder',
      given_name: 'Bob',
      family_name: 'Builder',
      preferred_username: 'bob',
      email: 'bob@example.com',
      email_verified: true,
    },
  },
};

let resourceIndicators = null;
if (cfg.resourceIndicators) {
  resourceIndicators = cfg.resourceIndicators === true ? {} : cfg.resourceIndicators;
}

const clients = cfg.clients.map((c) => apiResources.withExchangeGrant(cfg, {
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  ...c,
}));

// ---------------------------------------------------------------- signing keys (cached)

async function loadKeys() {
  try {
    const jwks = JSON.parse(fs.readFileSync(keysFile, 'utf8'));
    if (Array.isArray(jwks.keys) && jwks.keys.length) return jwks;
  } catch {
    // generate below
  }
  const keys = [];
  for (const alg of ['RS256', 'ES256']) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
    const jwk = await exportJWK(privateKey);
    jwk.kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
    jwk.alg = alg;
    jwk.use = 'sig';
    keys.push(jwk);
  }
  const jwks = { keys };
  // atomic write: concurrent first starts never see a half-written file
  const tmp = `${keysFile}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(jwks), { mode: 0o600 });
  fs.renameSync(tmp, keysFile);
  return jwks;
}

const jwks = await loadKeys();

/** Signs `payload` with the provider's own key for `alg` (or the key `kid`). */
async function signWithProviderKey(payload, { alg = 'RS256', kid, typ } = {}) {
  const jwk = jwks.keys.find((k) => (kid ? k.kid === kid : k.alg === alg));
  if (!jwk) throw new Error(`no provider key for ${kid ?? alg}`);
  const header = { alg: jwk.alg, kid: jwk.kid };
  if (typ != null) header.typ = typ;
  return new SignJWT(payload).setProtectedHeader(header).sign(await importJWK(jwk, jwk.alg));
}

// Claims replaced in the ID tokens of refresh_token grants (POST /test/refresh-id-token).
let refreshIdTokenClaims = {};
// The same for authorization_code grants, with `$alg`/`$key` (POST /test/code-id-token).
let codeIdTokenClaims = {};
// Members replaced in userinfo answers (POST /test/userinfo; null removes one, {} is off).
let userinfoClaims = {};

/** `id_token` with `tamper`'s claims replaced (null removes one), signed as `tamper` says. */
async function tamperIdToken(idToken, tamper, client) {
  const payload = decodeJwt(idToken);
  const { kid, alg } = decodeProtectedHeader(idToken);
  for (const [k, v] of Object.entries(tamper)) {
    if (k.startsWith('$')) continue;
    if (v === null) delete payload[k];
    else payload[k] = v;
  }
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  if (tamper.$alg === 'none') return `${b64({ alg: 'none' })}.${b64(payload)}.`;
  if (tamper.$alg === 'jwe') {
    // The shape of an encrypted ID token (five parts, RSA-OAEP-256 / A256GCM): Portcullis
    // registers no encryption key, so it can only refuse it.
    const part = () => crypto.randomBytes(16).toString('base64url');
    return `${b64({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid })}.${part()}.${part()}.${part()}.${part()}`;
  }
  if (tamper.$alg === 'HS256') {
    return new SignJWT(payload).setProtectedHeader({ alg: 'HS256', kid })
      .sign(new TextEncoder().encode(client?.clientSecret ?? ''));
  }
  if (tamper.$key === 'foreign') {
    const { privateKey } = await generateKeyPair(alg, { extractable: true });
    return new SignJWT(payload).setProtectedHeader({ alg, kid }).sign(privateKey);
  }
  return signWithProviderKey(payload, { kid });
}

// ---------------------------------------------------------------- HTML helpers

function esc(s) {
  return String(s ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}
label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1rem}.error{color:#b00020}.hint{color:#666;font-size:.9em}`;

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>`;
}

function loginPage(uid, { clientId, login = '', error = '' } = {}) {
  return page('Sign in', `
<p>Test provider — signing in to <b>${esc(clientId)}</b>.</p>
${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="${esc(issuerPath)}/interaction/${esc(uid)}/login" autocomplete="off">
  <label for="username">Username</label>
  <input id="username" name="login" type="text" value="${esc(login)}" autofocus required>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button id="submit" type="submit">Sign in</button>
</form>
<p class="hint">Test accounts: alice / alice, bob / bob.</p>`);
}

// ---------------------------------------------------------------- accounts

async function findAccount(_ctx, sub) {
  const user = Object.hasOwn(users, sub) ? users[sub] : undefined;
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub, ...user.claims };
    },
  };
}

// ---------------------------------------------------------------- grants: auto-consent

async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant;
  if (grantId) grant = await oidc.provider.Grant.find(grantId);
  if (grant && (grant.accountId !== oidc.session.accountId || grant.clientId !== oidc.client.clientId)) {
    grant = undefined;
  }
  grant ||= new oidc.provider.Grant({
    accountId: oidc.session.accountId,
    clientId: oidc.client.clientId,
  });
  // grant everything that was asked for (test provider: no consent screen)
  const scopes = [...(oidc.requestParamOIDCScopes ?? [])];
  if (scopes.length) grant.addOIDCScope(scopes.join(' '));
  const claims = [...(oidc.requestParamClaims ?? [])];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, rs] of Object.entries(oidc.resourceServers ?? {})) {
    const requested = [...(oidc.requestParamScopes ?? [])].filter((s) => rs.scopes.has(s));
    grant.addResourceScope(indicator, requested.join(' '));
  }
  await grant.save();
  return grant;
}

// ---------------------------------------------------------------- offline_access without prompt=consent
//
// oidc-provider (per OIDC Core 11) drops `offline_access` from an authorization request unless
// `prompt` contains `consent`. This test provider wants refresh tokens whenever offline_access is
// asked for, so (1) the OIDC context reports an implied `consent` prompt for such requests (not
// for prompt=none), which keeps the scope, and (2) the consent prompt's "consent was requested"
// check is removed, so that implied prompt never forces an interaction (consent is automatic
// anyway: see loadExistingGrant).
const policy = interactionPolicy.base();
policy.get('consent').checks.remove('consent_prompt');
stepUp.extendPolicy(policy, interactionPolicy.Check);

function impliedConsentPrompt(provider) {
  const proto = provider.OIDCContext.prototype;
  const original = Object.getOwnPropertyDescriptor(proto, 'prompts');
  if (!original?.get) throw new Error('oidc-provider internals changed: OIDCContext#prompts getter not found');
  Object.defineProperty(proto, 'prompts', {
    configurable: true,
    get() {
      const prompts = original.get.call(this);
      const scope = this.params?.scope;
      if (typeof scope === 'string' && scope.split(' ').includes('offline_access') && !prompts.has('none')) {
        prompts.add('consent');
      }
      return prompts;
    },
  });
}

// ---------------------------------------------------------------- provider configuration

const configuration = {
  clients,
  jwks,
  findAccount,
  loadExistingGrant,
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  responseTypes: ['code', 'none'],
  pkce: { required: () => true },
  cookies: {
    keys: ['portcullis-test-provider-cookie-key-1', 'portcullis-test-provider-cookie-key-2'],
  },
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTTL,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTTL,
    RefreshToken: () => refreshTokenTTL,
    IdToken: () => idTokenTTL,
    Session: () => sessionTTL,
    Grant: () => Math.max(refreshTokenTTL, sessionTTL),
    Interaction: () => 600,
    AuthorizationCode: () => 60,
  },
  rotateRefreshToken: (ctx) => {
    apiResources.checkRefreshTarget(ctx, errors); // refuse a resource before rotating
    return rotateRefreshToken;
  },
  issueRefreshToken: async (_ctx, client, code) => (
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access')
  ),
  clientBasedCORS: () => false,
  // Back-channel logout to loopback: drop the library's SSRF-guarding dispatcher.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  interactions: {
    url: (_ctx, interaction) => `${issuerPath}/interaction/${interaction.uid}`,
    policy,
  },
  features: {
    devInteractions: { enabled: false },
    introspection: {
      enabled: true,
      // any authenticated confidential client may introspect (the demo API does)
      allowedPolicy: (_ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId,
    },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        const f = form.replace('id="op.logoutForm"', 'id="logout-form"');
        ctx.type = 'html';
        ctx.body = page('Sign out', `
<p>Do you want to sign out from ${esc(ctx.host)}?</p>
${f.replace('</form>', '<button id="logout-yes" type="submit" name="logout" value="yes" autofocus>Yes, sign me out</button>\n<button id="logout-no" type="submit">No, stay signed in</button></form>')}`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.type = 'html';
        ctx.body = page('Signed out', '<p id="logged-out">You have been signed out.</p>');
      },
    },
    pushedAuthorizationRequests: {
      enabled: true,
      requirePushedAuthorizationRequests: requirePAR,
    },
    clientCredentials: { enabled: true },
    dPoP: dpopNonce
      ? { enabled: dpop, nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
      : { enabled: dpop },
    userinfo: { enabled: true },
    resourceIndicators: apiResources.resourceIndicatorsFeature(cfg, errors, accessTokenTTL) ?? (resourceIndicators
      ? {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resourceIndicators.defaultResource,
        useGrantedResource: async () => resourceIndicators.useGrantedResource ?? true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          let url;
          try {
            url = new URL(resourceIndicator);
          } catch {
            throw new errors.InvalidTarget();
          }
          if (url.protocol !== 'http:' && url.protocol !== 'https:') {
            throw new errors.InvalidTarget();
          }
          return {
            scope: resourceIndicators.scope ?? 'api:read api:write',
            audience: resourceIndicator,
            accessTokenTTL: resourceIndicators.accessTokenTTL ?? accessTokenTTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      }
      : { enabled: false }),
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out)
      .map(([k, v]) => `<p><b>${esc(k)}</b>: <span id="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
  },
};

// ---------------------------------------------------------------- server

// Bind first, so that port 0 works and the issuer carries the real port.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(wantedPort, host, resolve);
});
const { port } = server.address();
const issuerPath = (cfg.issuerPath ?? '').replace(/\/+$/, '');
const issuer = (cfg.issuer ?? `http://${cfg.issuerHost ?? host}:${port}${issuerPath}`).replace(/\/+$/, '');

stepUp.configure(configuration);
const entraTenants = cfg.entraTenants ?? null;
const entraTemplate = issuer.replace(/\/(organizations|common)(\/|$)/, '/{tenantid}$2');

const provider = new Provider(issuer, configuration);
impliedConsentPrompt(provider);
// API resources and token exchange (see resources.mjs).
provider.use(apiResources.install(provider, cfg, { errors, sign: signWithProviderKey, defaultTTL: accessTokenTTL }));

// -- sessions of each account, for /test/backchannel-logout
const sessionsById = new Map(); // session.jti -> session
provider.on('session.saved', (session) => {
  if (session.accountId) sessionsById.set(session.jti, session);
});
provider.on('session.destroyed', (session) => sessionsById.delete(session.jti));

// -- grants of each account, for /test/revoke-grants
const grantsByAccount = new Map(); // accountId -> Set(grantId)
provider.on('grant.saved', (grant) => {
  if (!grant.accountId) return;
  if (!grantsByAccount.has(grant.accountId)) grantsByAccount.set(grant.accountId, new Set());
  grantsByAccount.get(grant.accountId).add(grant.jti);
});

// -- opaque token values issued, for /test/issued
const issued = []; // { kind, value, accountId, clientId }
for (const kind of ['access_token', 'refresh_token', 'authorization_code', 'client_credentials']) {
  provider.on(`${kind}.saved`, (token) => {
    if (token.format === 'jwt') return;
    issued.push({ kind, value: token.jti, accountId: token.accountId, clientId: token.clientId });
    if (issued.length > 1000) issued.shift();
  });
}

// -- extra public keys published in the JWKS, for /test/jwks (and config `extraJwks`)
const extraJwks = [...(cfg.extraJwks ?? [])];

// -- token endpoint grants by client and grant_type, for /test/grants
const grantCounts = new Map(); // clientId -> { [grant_type]: { success, error, errors: { [code]: n } } }
function countGrant(ctx, err) {
  const clientId = ctx.oidc?.client?.clientId ?? ctx.oidc?.params?.client_id ?? '(unknown)';
  const type = ctx.oidc?.params?.grant_type ?? '(unknown)';
  if (!grantCounts.has(clientId)) grantCounts.set(clientId, {});
  const byType = grantCounts.get(clientId);
  byType[type] ??= { success: 0, error: 0, errors: {} };
  if (err) {
    byType[type].error += 1;
    byType[type].errors[err.error ?? err.message] = (byType[type].errors[err.error ?? err.message] ?? 0) + 1;
  } else {
    byType[type].success += 1;
  }
}
provider.on('grant.success', (ctx) => countGrant(ctx));
provider.on('grant.error', (ctx, err) => countGrant(ctx, err));

// -- logging (stderr)
function logErr(event) {
  provider.on(event, (ctx, err) => {
    const e = err ?? ctx;
    const where = ctx?.method ? ` ${ctx.method} ${ctx.path}` : '';
    const detail = [e?.error_description, e?.error_detail].filter(Boolean).map((d) => ` (${d})`).join('');
    const cause = e?.cause ? ` cause: ${e.cause.message ?? e.cause}` : '';
    console.error(`[provider] ${event}${where}: ${e?.message ?? e}${detail}${cause}`);
    if (event === 'server_error' && e?.stack) console.error(e.stack);
  });
}
for (const ev of [
  'server_error', 'grant.error', 'backchannel.error', 'introspection.error', 'revocation.error',
  'authorization.error', 'end_session.error', 'userinfo.error', 'pushed_authorization_request.error',
  'check_session.error', 'discovery.error', 'registration.error', 'jwks.error',
]) logErr(ev);
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  console.error(`[provider] backchannel.success client=${client.clientId} sub=${accountId} sid=${sid}`);
});

// ---------------------------------------------------------------- own routes (Koa middleware)

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

function noStore(ctx) {
  ctx.set('cache-control', 'no-store');
}

async function finishConsent(ctx, details) {
  // Fallback only: loadExistingGrant normally grants everything so this prompt never shows.
  const { prompt: { details: d }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const result = { consent: { grantId } };
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.status = 303;
  ctx.redirect(to);
}

async function revokeGrant(grantId) {
  await Promise.all([
    provider.AccessToken.revokeByGrantId(grantId),
    provider.RefreshToken.revokeByGrantId(grantId),
    provider.AuthorizationCode.revokeByGrantId(grantId),
    provider.Grant.adapter.destroy(grantId),
  ]);
}

// Slow token endpoint, for /test/slow-token: without `consume` every POST /token waits
// `ms` first, and one whose client has gone meanwhile is dropped unprocessed (its
// refresh token stays valid); with `consume` it is processed at once and its answer
// held back `ms` (a client that dies meanwhile loses a rotated refresh token).
let slowToken = { ms: 0, consume: false };

provider.use(async (ctx, next) => {
  const p = ctx.path;

  if (p === '/token' && ctx.method === 'POST' && slowToken.ms > 0) {
    const { ms, consume } = slowToken;
    if (consume) {
      // Processed at once (a refresh token rotates); the answer waits.
      await next();
      await new Promise((resolve) => setTimeout(resolve, ms));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, ms));
    if (ctx.req.socket.destroyed || ctx.req.socket.readableEnded) {
      console.error('[provider] test: slow token request dropped, its client is gone');
      ctx.status = 499;
      return;
    }
  }

  // ---- interactions
  let m = p.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (m) {
    noStore(ctx);
    const uid = m[1];
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', `<p class="error" id="error">${esc(err.message)}</p>`);
      return;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', '<p class="error" id="error">interaction mismatch</p>');
      return;
    }
    const clientId = details.params.client_id;

    if (!m[2] && ctx.method === 'GET') {
      if (details.prompt.name === 'login') {
        ctx.type = 'html';
        ctx.body = loginPage(uid, { clientId, login: details.params.login_hint ?? '' });
        return;
      }
      if (details.prompt.name === 'consent') {
        await finishConsent(ctx, details);
        return;
      }
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', `<p class="error">unsupported prompt ${esc(details.prompt.name)}</p>`);
      return;
    }

    if (m[2] && ctx.method === 'POST') {
      if (details.prompt.name !== 'login') {
        ctx.status = 400;
        ctx.type = 'html';
        ctx.body = page('Error', '<p class="error" id="error">not a login interaction</p>');
        return;
      }
      const form = await readForm(ctx.req);
      const login = form.get('login') ?? '';
      const password = form.get('password') ?? '';
      const user = Object.hasOwn(users, login) ? users[login] : undefined;
      const ok = user
        && crypto.timingSafeEqual(
          crypto.createHash('sha256').update(password).digest(),
          crypto.createHash('sha256').update(user.password).digest(),
        );
      if (!ok) {
        ctx.status = 200;
        ctx.type = 'html';
        ctx.body = loginPage(uid, { clientId, login, error: 'Invalid username or password.' });
        return;
      }
      const to = await provider.interactionResult(
        ctx.req,
        ctx.res,
        { login: { accountId: login, ...stepUp.loginResult(details) } },
        { mergeWithLastSubmission: false },
      );
      ctx.status = 303;
      ctx.redirect(to);
      return;
    }

    ctx.status = 405;
    return;
  }

  // ---- test-only admin endpoints
  if (await stepUp.route(ctx, readJson)) return;
  if (p === '/test/health' && ctx.method === 'GET') {
    ctx.body = 'ok';
    return;
  }
  if (p === '/test/issued' && ctx.method === 'GET') {
    const { sub, client_id: cid } = ctx.query;
    const out = { access_token: [], refresh_token: [], authorization_code: [], client_credentials: [] };
    for (const t of issued) {
      if ((sub && t.accountId === sub) || (cid && t.clientId === cid)) out[t.kind].push(t.value);
    }
    noStore(ctx);
    ctx.body = out;
    return;
  }
  if (p === '/test/grants' && ctx.method === 'GET') {
    noStore(ctx);
    ctx.body = grantCounts.get(ctx.query.client_id) ?? {};
    return;
  }
  if (p === '/test/revoke-grants' && ctx.method === 'POST') {
    const sub = ctx.query.sub;
    if (!sub) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'sub is required' };
      return;
    }
    const ids = [...(grantsByAccount.get(sub) ?? [])];
    await Promise.all(ids.map(revokeGrant));
    grantsByAccount.delete(sub);
    console.error(`[provider] test: revoked ${ids.length} grant(s) of ${sub}`);
    ctx.body = { revoked: ids.length };
    return;
  }
  if (p === '/test/frontchannel-logout-page' && ctx.method === 'GET') {
    const { sub, uri } = ctx.query;
    if (!sub || !uri) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'sub and uri are required' };
      return;
    }
    const frames = [];
    for (const session of sessionsById.values()) {
      if (session.accountId !== sub) continue;
      for (const cid of Object.keys(session.authorizations ?? {})) {
        const src = `${uri}?${new URLSearchParams({ iss: issuer, sid: session.sidFor(cid) })}`;
        frames.push(`<iframe class="rp-logout" src="${esc(src)}"></iframe>`);
      }
    }
    noStore(ctx);
    ctx.type = 'html';
    ctx.body = page('Signed out', `<p id="frontchannel" data-frames="${frames.length}">Signing you out of ${frames.length} application(s)…</p>\n${frames.join('\n')}`);
    return;
  }
  if (p === '/test/backchannel-logout' && ctx.method === 'POST') {
    const sub = ctx.query.sub;
    const only = ctx.query.client_id;
    if (!sub) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'sub is required' };
      return;
    }
    let sent = 0;
    const failures = [];
    for (const session of sessionsById.values()) {
      if (session.accountId !== sub) continue;
      for (const cid of Object.keys(session.authorizations ?? {})) {
        if (only && cid !== only) continue;
        const client = await provider.Client.find(cid);
        if (!client?.backchannelLogoutUri) continue;
        try {
          await client.backchannelLogout(sub, session.sidFor(cid));
          sent += 1;
        } catch (err) {
          failures.push(`${cid}: ${err.message}`);
          console.error(`[provider] test backchannel-logout ${cid}: ${err.message}`);
        }
      }
    }
    ctx.body = { sent, failed: failures.length, errors: failures };
    return;
  }
  if (p === '/test/slow-token' && ctx.method === 'POST') {
    const body = await readJson(ctx.req);
    slowToken = { ms: Number(body.ms ?? 0), consume: Boolean(body.consume) };
    noStore(ctx);
    ctx.body = slowToken;
    return;
  }
  if (p === '/test/sign' && ctx.method === 'POST') {
    const body = await readJson(ctx.req);
    noStore(ctx);
    ctx.body = { jwt: await signWithProviderKey(body.claims ?? {}, { alg: body.alg, typ: body.typ }) };
    return;
  }
  if (p === '/test/refresh-id-token' && ctx.method === 'POST') {
    refreshIdTokenClaims = await readJson(ctx.req);
    console.error(`[provider] test: refreshed ID tokens get ${JSON.stringify(refreshIdTokenClaims)}`);
    noStore(ctx);
    ctx.body = { claims: refreshIdTokenClaims };
    return;
  }
  if (p === '/test/userinfo' && ctx.method === 'POST') {
    userinfoClaims = await readJson(ctx.req);
    console.error(`[provider] test: userinfo answers get ${JSON.stringify(userinfoClaims)}`);
    noStore(ctx);
    ctx.body = { claims: userinfoClaims };
    return;
  }
  if (p === '/test/code-id-token' && ctx.method === 'POST') {
    codeIdTokenClaims = await readJson(ctx.req);
    console.error(`[provider] test: login ID tokens get ${JSON.stringify(codeIdTokenClaims)}`);
    noStore(ctx);
    ctx.body = { claims: codeIdTokenClaims };
    return;
  }
  if (p === '/test/jwks' && ctx.method === 'POST') {
    // Publish extra PUBLIC keys in the JWKS (the test signs logout tokens with their
    // private halves, which never reach the provider).
    const body = await readJson(ctx.req);
    extraJwks.push(...(body.keys ?? []));
    noStore(ctx);
    ctx.body = { keys: extraJwks.length };
    return;
  }

  await next();

  const omit = { '/.well-known/openid-configuration': omitFromDiscovery,
    '/.well-known/oauth-authorization-server': omitFromRfc8414 }[p];
  if (omit?.length && ctx.method === 'GET' && ctx.status === 200) {
    const doc = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : { ...ctx.body };
    for (const member of omit) delete doc[member];
    ctx.body = doc;
  }
  if (entraTenants && p === '/.well-known/openid-configuration' && ctx.status === 200) {
    const doc = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : { ...ctx.body };
    ctx.body = { ...doc, issuer: entraTemplate };
  }
  if (entraTenants && p === '/token' && ctx.status === 200 && ctx.body?.id_token) {
    const payload = decodeJwt(ctx.body.id_token);
    const t = entraTenants[payload.sub];
    if (t) {
      const { tid, iss } = typeof t === 'string' ? { tid: t, iss: t } : t;
      payload.tid = tid;
      payload.iss = entraTemplate.replace('{tenantid}', iss ?? tid);
      const { kid } = decodeProtectedHeader(ctx.body.id_token);
      ctx.body = { ...ctx.body, id_token: await signWithProviderKey(payload, { kid }) };
    }
  }
  if (p === '/token' && ctx.status === 200 && ctx.oidc?.params?.grant_type === 'refresh_token'
    && Object.keys(refreshIdTokenClaims).length && ctx.body?.id_token) {
    const payload = decodeJwt(ctx.body.id_token);
    for (const [k, v] of Object.entries(refreshIdTokenClaims)) {
      if (v === null) delete payload[k];
      else payload[k] = v;
    }
    const { kid } = decodeProtectedHeader(ctx.body.id_token);
    ctx.body = { ...ctx.body, id_token: await signWithProviderKey(payload, { kid }) };
  }

  if (p === '/token' && ctx.status === 200 && ctx.oidc?.params?.grant_type === 'authorization_code'
    && Object.keys(codeIdTokenClaims).length && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: await tamperIdToken(ctx.body.id_token, codeIdTokenClaims, ctx.oidc.client) };
  }

  if (p === '/me' && ctx.status === 200 && Object.keys(userinfoClaims).length
    && ctx.body && typeof ctx.body === 'object') {
    const body = { ...ctx.body };
    for (const [k, v] of Object.entries(userinfoClaims)) {
      if (v === null) delete body[k];
      else body[k] = v;
    }
    ctx.body = body;
  }

  if (p === '/jwks' && ctx.method === 'GET' && ctx.status === 200 && extraJwks.length) {
    const jwks = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : ctx.body;
    ctx.body = { keys: [...jwks.keys, ...extraJwks] };
  }
});

const handle = provider.callback();
const RFC8414 = '/.well-known/oauth-authorization-server';
server.on('request', (req, res) => {
  if (issuerPath) {
    // The provider is mounted at the issuer's path (oidc-provider derives its URLs from
    // `originalUrl`); RFC 8414 §3.1's path-inserted metadata URL maps to its own document.
    const { url } = req;
    const under = (prefix) => url === prefix || url.startsWith(`${prefix}/`) || url.startsWith(`${prefix}?`);
    if (under(RFC8414 + issuerPath)) {
      req.originalUrl = url;
      req.baseUrl = issuerPath;
      req.url = RFC8414 + url.slice((RFC8414 + issuerPath).length);
    } else if (under(issuerPath)) {
      req.originalUrl = url;
      req.url = url.slice(issuerPath.length) || '/';
    } else {
      res.statusCode = 404;
      res.end();
      return;
    }
  }
  handle(req, res);
});

// ---------------------------------------------------------------- lifecycle

function shutdown(signal) {
  console.error(`[provider] ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

process.stdout.write(`READY ${issuer}\n`);
