// Portcullis demo SPA: no build step, no external resources, no tokens.
// Talks only to its own origin; every call sends `X-CSRF: 1` (Portcullis' CSRF check).

const $ = (id) => document.getElementById(id);

function setStatus(state) {
  const el = $('status');
  el.dataset.state = state;
  el.textContent = state;
  document.body.dataset.state = state;
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

function showLoggedOut() {
  $('logged-in-view').hidden = true;
  $('logged-out-view').hidden = false;
  // come back to the current page after login (a local path: Portcullis rejects anything else)
  const here = window.location.pathname + window.location.search;
  const ret = !here || here.startsWith('/bff/') ? '/' : here;
  $('login').href = ret === '/' ? '/bff/login?returnUrl=/' : `/bff/login?${new URLSearchParams({ returnUrl: ret })}`;
  setStatus('logged-out');
}

function showLoggedIn(user) {
  $('user-name').textContent = user.name || user.sub;
  $('user-email').textContent = user.email ? `(${user.email})` : '';
  $('session-expires').textContent = user['bff:session_expires_in'] ?? '?';
  $('logout').href = user['bff:logout_url'] || '/bff/logout';
  $('logged-out-view').hidden = true;
  $('logged-in-view').hidden = false;
  setStatus('logged-in');
}

async function loadUser() {
  showError('');
  let res;
  try {
    res = await api('/bff/user');
  } catch (err) {
    showError(`Cannot reach the gateway: ${err.message}`);
    showLoggedOut();
    return;
  }
  if (res.status === 401) {
    showLoggedOut();
    return;
  }
  if (!res.ok) {
    showError(`/bff/user answered ${res.status}`);
    showLoggedOut();
    return;
  }
  showLoggedIn(await res.json());
}

async function callApi() {
  const out = $('api-result');
  out.textContent = '…';
  try {
    const res = await api('/api/hello');
    const text = await res.text();
    let body = text;
    try {
      body = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // not JSON: show as is
    }
    out.textContent = `${res.status}\n${body}`;
    if (res.status === 401) await loadUser();
  } catch (err) {
    out.textContent = `request failed: ${err.message}`;
  }
}

$('call-api').addEventListener('click', callApi);
loadUser();
