#!/usr/bin/env python3
"""Logs a user in to Portcullis over HTTP, like a browser, and prints the session cookie.

    python3 bench/login.py http://127.0.0.1:PORT [user] [password]

Flow: GET /bff/login -> 302 to the provider's authorize endpoint -> 303 to the
provider's login page -> POST login/password -> 303s -> 302/303 back to Portcullis's
/bff/callback?code=... -> GET it -> Set-Cookie: __Host-portcullis=<id>.

Redirects are followed by hand and cookies are kept per host:port (attributes other
than deletion are ignored), so it works over plain http on loopback. Prints exactly one
line on stdout: the value of the session cookie. Python 3 standard library only.
"""

import http.client
import sys
import urllib.parse

COOKIE = "__Host-portcullis"
MAX_HOPS = 15


class Browser:
    def __init__(self):
        self.jar = {}  # "host:port" -> {name: value}

    @staticmethod
    def site(url):
        u = urllib.parse.urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        return f"{u.hostname}:{port}"

    def request(self, method, url, body=None, headers=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            raise SystemExit(f"login.py: only http:// on loopback is supported, got {url}")
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        h = dict(headers or {})
        cookies = self.jar.get(self.site(url), {})
        if cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if body is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        jar = self.jar.setdefault(self.site(url), {})
        for sc in r.headers.get_all("Set-Cookie") or []:
            first, *attrs = sc.split(";")
            name, _, value = first.strip().partition("=")
            deleted = value == "" or any(
                a.strip().lower().replace(" ", "") in ("max-age=0",) for a in attrs
            )
            jar.pop(name, None)
            if not deleted:
                jar[name] = value
        return r.status, r.headers, data


def fail(msg):
    print(f"login.py: {msg}", file=sys.stderr)
    sys.exit(1)


def login(origin, user, password):
    b = Browser()
    status, headers, body = b.request("GET", f"{origin}/bff/login?returnUrl=%2F")
    if status != 302:
        fail(f"/bff/login answered {status}: {body[:300]!r}")
    url = urllib.parse.urljoin(f"{origin}/bff/login", headers["Location"])
    for _ in range(MAX_HOPS):
        status, headers, body = b.request("GET", url)
        if status == 200:
            if b"login-form" not in body:
                fail(f"expected the provider's login form at {url}")
            action = url.split("?", 1)[0] + "/login"
            form = urllib.parse.urlencode({"login": user, "password": password})
            status, headers, body = b.request("POST", action, body=form)
            if status not in (302, 303):
                fail(f"login POST answered {status}: {body[:300]!r}")
            url = urllib.parse.urljoin(action, headers["Location"])
            continue
        if status not in (301, 302, 303, 307, 308):
            fail(f"{url} answered {status}: {body[:300]!r}")
        url = urllib.parse.urljoin(url, headers["Location"])
        if "/bff/callback" in url:
            break
    else:
        fail("the provider login did not come back to /bff/callback")
    status, headers, body = b.request("GET", url)
    if status != 302:
        fail(f"/bff/callback answered {status}: {body[:300]!r}")
    value = b.jar.get(b.site(origin), {}).get(COOKIE)
    if not value:
        fail(f"/bff/callback did not set {COOKIE}")
    return value


def main():
    if len(sys.argv) < 2:
        fail("usage: login.py ORIGIN [user] [password]")
    origin = sys.argv[1].rstrip("/")
    user = sys.argv[2] if len(sys.argv) > 2 else "alice"
    password = sys.argv[3] if len(sys.argv) > 3 else user
    print(login(origin, user, password))


if __name__ == "__main__":
    main()
