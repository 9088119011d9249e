// API resources (RFC 8707) and token exchange (RFC 8693) for the test provider.
// TEST/DEMO USE ONLY. Imported by provider.mjs.
//
// Config JSON (both optional):
//   apiResources    { "<resource URL>": { scope: "a:read a:write", accessTokenTTL: <seconds> } }
//                   turns resource indicators on with exactly these API resources: their access
//                   tokens are JWTs (RS256) with aud = the resource and the resource's scopes;
//                   any other resource is answered `invalid_target`. The authorization code
//                   grant issues the userinfo token (opaque) unless it names a resource; a
//                   refresh_token grant may name one of the resources granted at authorization.
//                   Replaces the generic `resourceIndicators` option when both are set.
//   resourceAudience  with apiResources: every resource's token gets this `aud` instead (any
//                   resource is accepted) — the shape of a provider without RFC 8707 that
//                   issues JWTs for its default API whatever `resource` says
//   tokenExchange   { audiences: { "<audience>": { scope: "c:read", accessTokenTTL: <seconds>,
//                                                  allowedSubs: ["alice"] } } }
//                   registers the grant urn:ietf:params:oauth:grant-type:token-exchange:
//                   subject_token must be a live access token of this provider issued to the
//                   same client (subject_token_type ...:access_token), requested_token_type
//                   (optional) ...:access_token; `audience` or `resource` must name a configured
//                   audience (else invalid_target); a subject not in `allowedSubs` (when given)
//                   is refused with access_denied (the policy refusal). The issued token is a JWT
//                   (RS256, the provider's key) with aud, scope (requested ∩ configured, or all
//                   configured), sub, client_id, act-free (impersonation semantics), exp.
//                   Every client allowed authorization_code is also allowed this grant.
//
// Test endpoint:
//   GET /test/grants-by-target?client_id=X   successful token endpoint grants of that client by
//                                            grant type and target (resource or audience; "" =
//                                            none): {"refresh_token": {"https://a/": 3, "": 1}, …}

import crypto from 'node:crypto';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

/** The `features.resourceIndicators` configuration for `cfg.apiResources`, or null. */
export function resourceIndicatorsFeature(cfg, errors, defaultTTL) {
  const apis = cfg.apiResources;
  if (!apis) return null;
  return {
    enabled: true,
    // The code grant without `resource` issues the userinfo token; with several granted
    // resources there is no default.
    defaultResource: async (_ctx, _client, oneOf) => (oneOf?.length === 1 ? oneOf[0] : undefined),
    useGrantedResource: async () => false,
    getResourceServerInfo: async (_ctx, indicator) => {
      const fixed = cfg.resourceAudience;
      const name = fixed ?? indicator;
      const api = Object.hasOwn(apis, name) ? apis[name] : undefined;
      if (!api) throw new errors.InvalidTarget();
      return {
        scope: api.scope ?? '',
        audience: name,
        accessTokenTTL: api.accessTokenTTL ?? defaultTTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      };
    },
  };
}

/**
 * Called by the provider's `rotateRefreshToken` hook, before the refresh token is rotated:
 * a refresh-token grant naming a resource that was not granted at authorization is
 * answered `invalid_target` *before* rotation. (oidc-provider itself rotates first and
 * then refuses the resource, so the client loses its refresh token; a well-behaved
 * provider refuses without spending it.)
 */
export function checkRefreshTarget(ctx, errors) {
  const resource = ctx.oidc?.params?.resource;
  const rt = ctx.oidc?.entities?.RefreshToken;
  if (!resource || !rt) return;
  const granted = rt.resourceIndicators ?? new Set();
  for (const r of Array.isArray(resource) ? resource : [resource]) {
    if (!granted.has(r)) throw new errors.InvalidTarget();
  }
}

/** With exchange configured, every client allowed the code grant may also exchange tokens. */
export function withExchangeGrant(cfg, client) {
  const types = client.grant_types ?? [];
  if (!cfg.tokenExchange || !types.includes('authorization_code') || types.includes(TOKEN_EXCHANGE)) return client;
  return { ...client, grant_types: [...types, TOKEN_EXCHANGE] };
}

/**
 * Registers the token-exchange grant (when configured) and the per-target grant counter.
 * `sign(payload)` signs a JWT with the provider's RS256 key.
 */
export function install(provider, cfg, { errors, sign, defaultTTL }) {
  const counts = new Map(); // clientId -> { [grant_type]: { [target]: n } }
  provider.on('grant.success', (ctx) => {
    const clientId = ctx.oidc?.client?.clientId ?? '(unknown)';
    const type = ctx.oidc?.params?.grant_type ?? '(unknown)';
    const target = ctx.oidc?.params?.resource ?? ctx.oidc?.params?.audience ?? '';
    if (!counts.has(clientId)) counts.set(clientId, {});
    const byType = counts.get(clientId);
    byType[type] ??= {};
    const key = Array.isArray(target) ? target.join(' ') : target;
    byType[type][key] = (byType[type][key] ?? 0) + 1;
  });

  const exchange = cfg.tokenExchange;
  if (exchange) {
    const audiences = exchange.audiences ?? {};
    provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
      const p = ctx.oidc.params;
      if (!p.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
      if (p.subject_token_type !== ACCESS_TOKEN_TYPE) {
        throw new errors.InvalidRequest('subject_token_type must be urn:ietf:params:oauth:token-type:access_token');
      }
      if (p.requested_token_type && ![ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE].includes(p.requested_token_type)) {
        throw new errors.InvalidRequest('unsupported requested_token_type');
      }
      const subject = await provider.AccessToken.find(p.subject_token);
      if (!subject || subject.isExpired) throw new errors.InvalidGrant('subject_token is invalid or expired');
      if (subject.clientId !== ctx.oidc.client.clientId) throw new errors.InvalidGrant('subject_token was issued to another client');
      const target = p.audience ?? p.resource;
      if (!target || !Object.hasOwn(audiences, target)) throw new errors.InvalidTarget('unknown audience');
      const api = audiences[target];
      if (api.allowedSubs && !api.allowedSubs.includes(subject.accountId)) {
        throw new errors.AccessDenied('token exchange not allowed for this subject and audience');
      }
      const offered = (api.scope ?? '').split(' ').filter(Boolean);
      const requested = p.scope ? p.scope.split(' ').filter(Boolean) : offered;
      const missing = requested.filter((s) => !offered.includes(s));
      if (missing.length) throw new errors.InvalidScope('requested scope is not available for this audience', missing.join(' '));
      const now = Math.floor(Date.now() / 1000);
      const ttl = api.accessTokenTTL ?? defaultTTL;
      const jwt = await sign({
        iss: provider.issuer,
        sub: subject.accountId,
        aud: target,
        client_id: ctx.oidc.client.clientId,
        scope: requested.join(' '),
        iat: now,
        exp: now + ttl,
        jti: crypto.randomBytes(16).toString('base64url'),
      });
      ctx.body = {
        access_token: jwt,
        issued_token_type: ACCESS_TOKEN_TYPE,
        token_type: 'Bearer',
        expires_in: ttl,
        scope: requested.join(' '),
      };
    }, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope',
      'actor_token', 'actor_token_type']);
  }

  // Koa middleware for the test endpoint.
  return async (ctx, next) => {
    if (ctx.path === '/test/grants-by-target' && ctx.method === 'GET') {
      ctx.set('cache-control', 'no-store');
      ctx.body = counts.get(ctx.query.client_id) ?? {};
      return;
    }
    await next();
  };
}
