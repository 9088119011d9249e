// Portcullis demo SPA: no build step, no external resources, no tokens.
// Talks only to its own origin; every call sends `X-CSRF: 1` (Portcullis' CSRF check).
//
// It explains what happens: the session's idle countdown, what the browser holds (the
// cookie, which JavaScript can't read), and what the API saw — the access token Portcullis
// attached, described by the API (claims, expiry, a fingerprint), and each refresh, seen as
// a new fingerprint.

const $ = (id) => document.getElementById(id);

const state = {
  sessionEndsAt: null, // ms since the epoch, from bff:session_expires_in
  tokenExpiresAt: null, // ms, from the API's token.expires_in
  fingerprint: null,
  refreshes: 0,
  timer: null,
  autoCall: null,
};

function setStatus(s) {
  const el = $('status');
  el.dataset.state = s;
  el.textContent = s;
  document.body.dataset.state = s;
}

function showError(message) {
  const el = $('error');
  el.textContent = message;
  el.hidden = !message;
}

async function api(path) {
  return fetch(path, {
    headers: { 'X-CSRF': '1', Accept: 'application/json' },
    credentials: 'same-origin',
    cache: 'no-store',
  });
}

/** "4:59" for 299 seconds; "expired" at or below zero. */
function mmss(seconds) {
  if (seconds <= 0) return 'expired';
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

function tick() {
  const now = Date.now();
  if (state.sessionEndsAt) $('session-countdown').textContent = mmss((state.sessionEndsAt - now) / 1000);
  if (state.tokenExpiresAt) $('token-countdown').textContent = mmss((state.tokenExpiresAt - now) / 1000);
}

function showLoggedOut() {
  $('logged-in-view').hidden = true;
  $('logged-out-view').hidden = false;
  setAutoCall(false);
  // come back to the current page after login (a local path: Portcullis rejects anything else)
  const here = window.location.pathname + window.location.search;
  const ret = !here || here.startsWith('/bff/') ? '/' : here;
  $('login').href = ret === '/' ? '/bff/login?returnUrl=/' : `/bff/login?${new URLSearchParams({ returnUrl: ret })}`;
  setStatus('logged-out');
}

function showSession(user) {
  const expiresIn = user['bff:session_expires_in'];
  $('session-expires').textContent = expiresIn ?? '?';
  state.sessionEndsAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null;
  tick();
}

function showLoggedIn(user) {
  $('user-name').textContent = user.name || user.sub;
  $('user-email').textContent = user.email ? `(${user.email})` : '';
  $('logout').href = user['bff:logout_url'] || '/bff/logout';
  $('document-cookie').textContent = JSON.stringify(document.cookie);
  showSession(user);
  $('logged-out-view').hidden = true;
  $('logged-in-view').hidden = false;
  setStatus('logged-in');
  state.timer ??= setInterval(tick, 1000);
}

async function loadUser() {
  showError('');
  let user;
  try {
    // `anonymous=null`: not logged in is a 200 `null`, not a 401 the browser would log
    // as a failed request on every visit.
    const res = await api('/bff/user?anonymous=null');
    if (!res.ok) {
      await res.body?.cancel();
      showError(`/bff/user answered ${res.status}`);
      showLoggedOut();
      return;
    }
    user = await res.json();
  } catch (err) {
    showError(`Cannot reach the gateway: ${err.message}`);
    showLoggedOut();
    return;
  }
  if (user === null) showLoggedOut();
  else showLoggedIn(user);
}

function showToken(token, cookies) {
  const c = token.claims ?? {};
  $('token-length').textContent = token.length;
  $('claim-sub').textContent = c.sub ?? '—';
  $('claim-client_id').textContent = c.client_id ?? '—';
  $('claim-scope').textContent = c.scope ?? '—';
  $('claim-iat').textContent = typeof c.iat === 'number' ? clock(c.iat) : '—';
  $('claim-exp').textContent = typeof c.exp === 'number' ? clock(c.exp) : '—';
  $('token-fingerprint').textContent = token.fingerprint;
  $('cookies-received').textContent = cookies.length ? cookies.join(', ') : 'none';
  state.tokenExpiresAt = typeof token.expires_in === 'number' ? Date.now() + token.expires_in * 1000 : null;
  if (state.fingerprint && state.fingerprint !== token.fingerprint) {
    state.refreshes += 1;
    $('refresh-count').textContent = state.refreshes;
    const li = document.createElement('li');
    li.className = 'refresh';
    li.textContent = `${new Date().toLocaleTimeString()}: a new access token (${state.fingerprint} → `
      + `${token.fingerprint}). Portcullis refreshed it on the server; this page did nothing.`;
    $('refresh-log').prepend(li);
  }
  state.fingerprint = token.fingerprint;
  $('token-view').hidden = false;
  tick();
}

async function callApi() {
  const out = $('api-result');
  out.textContent = '…';
  try {
    const res = await api('/api/hello');
    const text = await res.text();
    let body = text;
    let json = null;
    try {
      json = JSON.parse(text);
      body = JSON.stringify(json, null, 2);
    } catch {
      // not JSON: show as is
    }
    out.textContent = `${res.status}\n${body}`;
    if (res.ok && json?.token) showToken(json.token, json.cookies_received ?? []);
    // The call used the session: its idle timeout started again.
    await loadUser();
  } catch (err) {
    out.textContent = `request failed: ${err.message}`;
  }
}

function setAutoCall(on) {
  $('auto-call').checked = on;
  clearInterval(state.autoCall);
  state.autoCall = on ? setInterval(callApi, 5000) : null;
}

$('call-api').addEventListener('click', callApi);
$('auto-call').addEventListener('change', (e) => setAutoCall(e.target.checked));
loadUser();
