// Step-up authentication for the test provider (RFC 9470 tests). TEST/DEMO USE ONLY.
//
// Off unless the provider config has `stepUp`:
//   stepUp  { "acrValues": ["urn:portcullis:silver", "urn:portcullis:gold"],  (advertised as
//                                          acr_values_supported; default these two)
//             "defaultAcr": "urn:portcullis:silver" }  (the acr of a login that asks for none;
//                                          default the first of acrValues)
// Then:
//   - a login's `acr` is the first of its `acr_values` the provider supports, else defaultAcr;
//   - a request whose `acr_values` the provider session's acr doesn't meet shows the login form
//     again (a real step-up), as does one whose `max_age` has passed (oidc-provider's own check);
//   - every client gets `auth_time` in its ID tokens (require_auth_time), and every access token
//     carries `acr` and `auth_time` (in introspection, and in JWT access tokens), so an upstream
//     can decide for itself;
//   - POST /test/step-up {"ignore": true}   makes the provider ignore acr_values and max_age (the
//     login keeps the old authentication, acr is defaultAcr): what a provider that doesn't honour
//     the request does. {"ignore": false} (the default) honours them again. Answers 200 {"ignore": b}.
//
// Also, for access-rule tests (on or off): `profileClaims: ["groups", ...]` adds claims to the
// `profile` scope, so userinfo returns what `users` give the accounts.

export function create(cfg) {
  const conf = cfg.stepUp;
  const enabled = conf != null && conf !== false;
  const acrValues = (enabled && conf.acrValues) || ['urn:portcullis:silver', 'urn:portcullis:gold'];
  const defaultAcr = (enabled && conf.defaultAcr) || acrValues[0];
  let ignore = false;

  const requested = (params) => String(params?.acr_values ?? '').split(' ').filter(Boolean);

  return {
    enabled,

    /** Adds to the oidc-provider configuration (before `new Provider`). */
    configure(configuration) {
      // Access-rule tests: more claims in the profile scope (with `users` carrying them).
      if (Array.isArray(cfg.profileClaims)) {
        configuration.claims.profile = [...configuration.claims.profile, ...cfg.profileClaims];
      }
      if (!enabled) return;
      configuration.acrValues = acrValues;
      for (const client of configuration.clients) {
        client.require_auth_time ??= true;
        client.default_acr_values ??= [defaultAcr]; // so the ID token always says its acr
      }
      const previous = configuration.extraTokenClaims;
      configuration.extraTokenClaims = async (ctx, token) => {
        const base = previous ? await previous(ctx, token) : undefined;
        const source = ctx?.oidc?.entities?.AuthorizationCode ?? ctx?.oidc?.entities?.RefreshToken;
        if (!source) return base;
        return { ...(base ?? {}), acr: source.acr, auth_time: source.authTime };
      };
    },

    /** Adds the acr check to the login prompt, and lets `ignore` switch max_age off. */
    extendPolicy(policy, Check) {
      if (!enabled) return;
      const login = policy.get('login');
      const maxAge = login.checks.get('max_age');
      const original = maxAge.check;
      maxAge.check = (ctx) => (ignore ? Check.NO_NEED_TO_PROMPT : original(ctx));
      login.checks.add(new Check('acr_values', 'the requested ACR is not met', 'login_required', (ctx) => {
        if (ignore) return Check.NO_NEED_TO_PROMPT;
        const wanted = requested(ctx.oidc.params).filter((v) => acrValues.includes(v));
        if (!wanted.length || !ctx.oidc.session.accountId) return Check.NO_NEED_TO_PROMPT;
        if (ctx.oidc.result?.login) return Check.NO_NEED_TO_PROMPT;
        return wanted.includes(ctx.oidc.session.acr) ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
      }));
    },

    /** Extra members of the login interaction result (`{ login: { accountId, ...these } }`). */
    loginResult(details) {
      if (!enabled) return {};
      if (ignore) return { acr: defaultAcr };
      const acr = requested(details.params).find((v) => acrValues.includes(v));
      return { acr: acr ?? defaultAcr };
    },

    /** The test endpoint; true when it answered. */
    async route(ctx, readJson) {
      if (ctx.path !== '/test/step-up' || ctx.method !== 'POST') return false;
      const body = await readJson(ctx.req);
      ignore = body.ignore === true;
      console.error(`[provider] test: step-up requests are ${ignore ? 'ignored' : 'honoured'}`);
      ctx.set('cache-control', 'no-store');
      ctx.body = { ignore };
      return true;
    },
  };
}
