#!/usr/bin/env python3
"""The Portcullis benchmark driver: `./bench/run.sh [--scale]` runs this file.

What one run does, in order (each step is one function of `Bench` below):

1. `prerequisites` / `build`: checks the tools, installs wrk and nginx (apt-get) and oha
   (cargo install --locked) when they are missing, builds Portcullis
   (`cargo build --release`) and the session-memory bench;
2. `start_servers`, all on 127.0.0.1 and free ports:
   - the upstream: nginx, one worker, answering every request with a fixed 68-byte JSON
     body from its config (bench/nginx/upstream.conf);
   - the yardstick: nginx as a plain keep-alive reverse proxy to that upstream
     (bench/nginx/proxy.conf: worker_processes auto, upstream keepalive 1024);
   - the test OpenID provider (demo/provider/provider.mjs), issuing 1-hour JWT access
     tokens (so no refresh happens during the run);
   - Portcullis (the release binary) twice: store = "memory" and store = "sqlite", one
     route `/api` (token = "user") to the upstream; and store = "redis" with a
     redis-server of its own, if this build accepts it (else a note says so);
3. `log_in`: logs a user in to each Portcullis over HTTP (bench/login.py) and checks that
   the authenticated path works (200 with the cookie and X-CSRF, 403 without X-CSRF);
4. `load`: loads every target in turn — direct upstream, nginx, each Portcullis — with
   the same request (GET /api/items/42 with the session cookie and `X-CSRF: 1`):
   - closed loop at 32 and 256 connections (wrk -t2): throughput and latency;
   - open loop at 1,000 and 10,000 req/s (oha -q, latency corrected): latency;
   interleaving the targets within each mode (the order rotates), so every ratio
   compares measurements taken minutes apart at most;
5. `session_memory`: the memory store's RSS per 100,000 sessions and SQLite's bytes per
   session (cargo bench --bench session_rss);
6. `report`: bench/report.py prints the table and writes OUT/latest.{json,md,svg}, and
   docs/performance.md from bench/performance.md.in when OUT is bench/results.

Environment (defaults in brackets):
  BENCH_DURATION [8]        seconds per cell        BENCH_WARMUP [2]  seconds of warm-up per target
  BENCH_ROUNDS [1]          rounds of every cell (the table shows the median)
  BENCH_CONNECTIONS ["32 256"]   BENCH_RATES ["1000 10000"]   BENCH_RATE_CONNECTIONS [64]
  BENCH_MODES [c<each connection count> r<each rate>]   e.g. "c32" for one closed-loop mode
  BENCH_TARGETS ["direct nginx portcullis-memory portcullis-sqlite portcullis-redis"]
  BENCH_SESSIONS [100000]   sessions for the memory-store RSS measurement
  BENCH_SQLITE_SESSIONS [20000]  sessions for SQLite's bytes per session
  BENCH_OUT [bench/results] BENCH_KEEP [0]  1 = keep the run directory (logs, configs)
  BENCH_NICE [-10 as root, else 0]  CPU priority of the servers and load generators
  BENCH_PERF [0]            1 = afterwards, profile each Portcullis under load with perf
                            (OUT/perf-<target>.txt)
  BENCH_WAIT_QUIET [0]      wait up to this many seconds for other processes to leave
                            the CPUs idle before loading
  BENCH_CELL_WAIT [20]      before each cell, wait up to this many seconds for a quiet
                            second (under 10 % of the CPUs busy)
  BENCH_RETRIES [2]         measure a cell again when other processes took more than
  BENCH_NOISY_PCT [5]       this share of the CPUs during it; keep the quietest attempt
                            (each cell records the share: "other CPU %")
  BENCH_SCALE_SESSIONS [1000000]  sessions in each large store of `--scale`

`--scale`: also fill a SQLite database and a Redis with BENCH_SCALE_SESSIONS sessions
first (cargo bench --bench store_scale: creation rate and lookup latency at that size),
and load two more targets in the same run, portcullis-sqlite-1m and portcullis-redis-1m,
whose stores hold them: the proxy path with a large store next to the same store empty.

With the defaults the whole run takes about 3 minutes after the build. Every process it
starts is stopped on exit, and every load goes to 127.0.0.1 for a bounded time. The
machine's cores are shared by the load generator, the proxy and the upstream: only
ratios within one run mean anything (see docs/performance.md).

The pure parts (parsing /proc and the load generators' output, the CPU accounting of a
cell, choosing the quietest attempt, the rotation) are plain functions at the top, tested
by bench/test_bench.py (`python3 -m unittest discover -s bench`). Standard library only.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import http.client
import urllib.parse

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import report  # noqa: E402  (bench/report.py: oha's output, the one-line cell summary)

ALL_TARGETS = ["direct", "nginx", "portcullis-memory", "portcullis-sqlite", "portcullis-sqlite-1m",
               "portcullis-redis", "portcullis-redis-1m"]
DEFAULT_TARGETS = "direct nginx portcullis-memory portcullis-sqlite portcullis-redis"
WRK_THREADS = 2
REQUEST_PATH = "/api/items/42"
COOKIE_NAME = "__Host-portcullis"
# A second during which more than this share of the CPUs is busy is not "quiet".
QUIET_PCT = 10


# ---------------------------------------------------------------- pure parts (tested)


def env(name, default, environ=None):
    """An environment knob; unset or empty means the default (as bash's `${X:-default}`)."""
    value = (os.environ if environ is None else environ).get(name, "")
    return value if value != "" else default


def modes_from(connections, rates, modes=""):
    """The load modes: `c<connections>` (wrk, closed loop) then `r<rate>` (oha, open loop),
    unless BENCH_MODES names them itself."""
    if modes.split():
        out = modes.split()
        for m in out:
            if not re.fullmatch(r"[cr][1-9][0-9]*", m):
                raise ValueError(f"BENCH_MODES: {m!r} is neither c<connections> nor r<rate>")
        return out
    return [f"c{c}" for c in connections.split()] + [f"r{r}" for r in rates.split()]


def targets_to_load(wanted, available, scale):
    """The targets in their fixed order: wanted (or a `-1m` one of --scale) and started."""
    return [t for t in ALL_TARGETS if (t in wanted or (scale and t.endswith("-1m"))) and t in available]


def schedule(targets, modes, rounds):
    """(round, mode, target) in measuring order: within each mode every target once, the
    order rotating by one from mode to mode (and on across rounds), so no target is
    always measured first or right after the same other one."""
    out, k, n = [], 0, len(targets)
    for rnd in range(1, rounds + 1):
        for mode in modes:
            for j in range(n):
                out.append((rnd, mode, targets[(j + k) % n]))
            k += 1
    return out


def stat_fields(text):
    """/proc/PID/stat -> its fields after the command name (which may hold spaces and
    parentheses): [0] is the state (field 3 of proc(5)), [1] the parent pid, [11] utime,
    [12] stime, [13] cutime, [14] cstime, in clock ticks."""
    return text[text.rindex(")") + 2:].split()


def process_ticks(text):
    """User + system clock ticks of one process, from its /proc/PID/stat."""
    f = stat_fields(text)
    return int(f[11]) + int(f[12])


def children_ticks_of(text):
    """User + system clock ticks of a process's finished, waited-for children (and
    theirs), from its /proc/PID/stat: the load generator's CPU, seen from the driver."""
    f = stat_fields(text)
    return int(f[13]) + int(f[14])


def machine_ticks_of(text):
    """/proc/stat -> (busy, steal, total, irq) clock ticks of all CPUs so far. busy is
    user + nice + system time of processes; irq is hard and soft interrupt time, which the
    kernel charges to no process (on loopback it is mostly our own packets), kept apart."""
    _cpu, u, n, s, i, w, irq, sirq, st = text.splitlines()[0].split()[:9]
    u, n, s, i, w, irq, sirq, st = map(int, (u, n, s, i, w, irq, sirq, st))
    return (u + n + s, st, u + n + s + i + w + irq + sirq + st, irq + sirq)


def busy_pct_between(a, b):
    """Share (%, rounded to an integer) of all CPUs busy or stolen between two
    machine_ticks readings."""
    total = b[2] - a[2]
    if total <= 0:
        total = 1
    return int(round(100 * (b[0] - a[0] + b[1] - a[1]) / total))


def cell_load(m0, m1, proxy_ticks, upstream_ticks, loadgen_ticks, clk_tck):
    """Where the machine's CPU went during one cell: the load generator's seconds, the
    whole machine's busy share (processes + interrupts), what other processes took (busy
    time not charged to the proxy, the upstream or the load generator: other sessions,
    builds...), interrupts and hypervisor steal, as a share of all CPUs."""
    busy, steal, total, irq = (b - a for a, b in zip(m0, m1))
    if total <= 0:
        total = 1
    other = max(0, busy - proxy_ticks - upstream_ticks - loadgen_ticks)
    return {
        "loadgen_cpu_s": round(loadgen_ticks / clk_tck, 2),
        "machine_busy_pct": round(100 * (busy + irq) / total, 1),
        "other_cpu_pct": round(100 * other / total, 1),
        "irq_pct": round(100 * irq / total, 1),
        "steal_pct": round(100 * steal / total, 1),
    }


def cell_record(target, mode, rnd, attempt, proxy_cpu_s, upstream_cpu_s, load, metrics):
    """One line of cells.jsonl (the keys in the order report.py and old runs have them)."""
    rec = {"target": target, "mode": mode, "round": rnd, "attempt": attempt,
           "proxy_cpu_s": proxy_cpu_s, "upstream_cpu_s": upstream_cpu_s}
    rec.update(load)
    rec["metrics"] = metrics
    return rec


def noise(cell):
    """What disturbed a cell: CPU taken by other processes plus hypervisor steal (%)."""
    return round((cell.get("other_cpu_pct") or 0) + (cell.get("steal_pct") or 0), 1)


def keep_quietest(best, candidate):
    """(kept, discarded) of two attempts at one cell: the later one replaces the earlier
    only when strictly quieter."""
    if best is None:
        return candidate, None
    if noise(candidate) < noise(best):
        return candidate, best
    return best, candidate


def wrk_metrics(output):
    """The cell's metrics from wrk's output: the `WRK_JSON {...}` line that
    bench/wrk_report.lua prints at the end of a run, or None."""
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    return None


def cargo_executable(output):
    """The last `Executable ... (path)` line of `cargo bench --no-run`: the bench binary
    to run later (so a source change meanwhile can't trigger a rebuild)."""
    found = re.findall(r"Executable .*\((.*)\)$", output, re.MULTILINE)
    return found[-1] if found else None


def result_lines(output):
    """The `RESULT {...}` lines of a bench executable, without the prefix."""
    return [line[len("RESULT "):] for line in output.splitlines() if line.startswith("RESULT ")]


def redis_used_memory(info):
    """`used_memory` (bytes) from `redis-cli info memory`, or None."""
    m = re.search(r"^used_memory:(\d+)\r?$", info, re.MULTILINE)
    return int(m.group(1)) if m else None


def warning_lines(log_text):
    """WARN/ERROR lines of a Portcullis log, besides the csrf_rejected event that the 403
    check before the load provokes on purpose."""
    return [l for l in log_text.splitlines() if re.search("WARN|ERROR", l) and "csrf_rejected" not in l]


def render_template(text, run_dir, upstream_port, proxy_port):
    """An nginx config of bench/nginx/ with its @RUN@, @UPSTREAM_PORT@, @PROXY_PORT@."""
    return (text.replace("@RUN@", run_dir).replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@PROXY_PORT@", str(proxy_port)))


def provider_config(upstream_port, portcullis_ports):
    """The test provider's PROVIDER_CONFIG: one client for every Portcullis origin."""
    origins = [f"http://127.0.0.1:{p}" for p in portcullis_ports]
    return {
        "port": 0,
        "host": "127.0.0.1",
        "accessTokenTTL": 3600,
        "refreshTokenTTL": 86400,
        # JWT access tokens (RS256, audience = the upstream), as an API gateway usually
        # forwards, rather than 43-byte opaque ones.
        "resourceIndicators": {"defaultResource": f"http://127.0.0.1:{upstream_port}/",
                               "useGrantedResource": True, "accessTokenTTL": 3600},
        "clients": [{
            "client_id": "portcullis-bench",
            "client_secret": "portcullis-bench-secret-0123456789",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [f"{o}/bff/callback" for o in origins],
            "post_logout_redirect_uris": [f"{o}/" for o in origins],
        }],
    }


def portcullis_config(store, port, issuer, key, upstream_port, sqlite_path, redis_port,
                      workers=None):
    """The generated config of one Portcullis instance: one `/api` route (token = "user")
    to the upstream. `workers`: a fixed number of worker runtimes (bench/profile.sh's
    callgrind mode runs one), else one per core. bench/profile.sh takes it from here
    too (`bench.py config ...`)."""
    workers_line = f"workers = {int(workers)}\n" if workers else ""
    return f"""# Generated by bench/bench.py
[server]
listen = "127.0.0.1:{port}"
public_origin = "http://127.0.0.1:{port}"
drain_timeout = "1s"
{workers_line}
[oidc]
issuer = "{issuer}"
client_id = "portcullis-bench"
client_secret = "portcullis-bench-secret-0123456789"
auth_method = "client_secret_basic"
scopes = ["openid", "profile", "email", "offline_access"]
# The provider's JWT access tokens are for the API (audience = upstream), not userinfo.
userinfo = false

[session]
store = "{store}"
sqlite_path = "{sqlite_path}"
redis_url = "redis://127.0.0.1:{redis_port}/0"
keys = ["{key}"]

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{upstream_port}"
token = "user"
"""


def wrk_command(connections, duration, headers, url, report_script=True):
    """wrk, closed loop: two threads, a 5 s request timeout, and (for a measured cell)
    bench/wrk_report.lua to print the percentiles as JSON."""
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s"]
    if report_script:
        cmd += ["--timeout", "5s", "-s", "bench/wrk_report.lua"]
    return cmd + headers + [url]


def oha_command(rate, duration, rate_connections, headers, url):
    """oha, open loop at a fixed rate, latency corrected (a stall is charged to every
    request that should have been sent during it)."""
    return (["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-q", str(rate),
             "-c", str(rate_connections), "--latency-correction", "-w", "-t", "5s"] + headers + [url])


# ---------------------------------------------------------------- the machine, read live


def read(path):
    with open(path) as f:
        return f.read()


def machine_ticks():
    return machine_ticks_of(read("/proc/stat"))


def child_pids(pid):
    """The direct children of a process (nginx's workers), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(read(f"/proc/{entry}/stat"))[1]) == pid:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_ticks(pids):
    """User + system clock ticks of the processes and their children (nginx workers)."""
    total = 0
    for pid in pids:
        for p in [pid] + child_pids(pid):
            try:
                total += process_ticks(read(f"/proc/{p}/stat"))
            except OSError:
                pass
    return total


def children_ticks():
    """CPU ticks of this process's finished children (the load generators)."""
    return children_ticks_of(read("/proc/self/stat"))


def busy_pct(seconds):
    """% of all CPUs busy (or stolen) over the next `seconds`."""
    a = machine_ticks()
    time.sleep(seconds)
    return busy_pct_between(a, machine_ticks())


def http_get(url, headers=None, timeout=5):
    """(status, body) of one GET, no redirects followed; (0, b"") when nothing answers."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def free_ports(n):
    """n free ports, all distinct (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def first_line(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return None


# ---------------------------------------------------------------- the run


def say(msg):
    print(f"\n==> {msg}", flush=True)


def note(msg):
    print(f"--> {msg}", flush=True)


def loud(msg):
    print(f"\n!!! {msg}\n", file=sys.stderr, flush=True)


class Fatal(Exception):
    """Stops the run: printed loudly, exit status 1."""


class Bench:
    def __init__(self, scale):
        self.root = os.path.dirname(BENCH_DIR)
        os.chdir(self.root)
        self.scale = scale
        self.duration = int(env("BENCH_DURATION", "8"))
        self.warmup = int(env("BENCH_WARMUP", "2"))
        self.rounds = int(env("BENCH_ROUNDS", "1"))
        self.modes = modes_from(env("BENCH_CONNECTIONS", "32 256"), env("BENCH_RATES", "1000 10000"),
                                env("BENCH_MODES", ""))
        self.rate_connections = int(env("BENCH_RATE_CONNECTIONS", "64"))
        self.wanted = env("BENCH_TARGETS", DEFAULT_TARGETS).split()
        self.sessions = env("BENCH_SESSIONS", "100000")
        self.sqlite_sessions = env("BENCH_SQLITE_SESSIONS", "20000")
        self.scale_sessions = env("BENCH_SCALE_SESSIONS", "1000000")
        self.out = os.path.abspath(env("BENCH_OUT", os.path.join(self.root, "bench", "results")))
        self.keep = env("BENCH_KEEP", "0") == "1"
        self.cell_wait = int(env("BENCH_CELL_WAIT", "20"))
        self.retries = int(env("BENCH_RETRIES", "2"))
        self.noisy_pct = float(env("BENCH_NOISY_PCT", "5"))
        os.environ["BENCH_NOISY_PCT"] = env("BENCH_NOISY_PCT", "5")  # report.py flags by it
        report.NOISY_PCT = self.noisy_pct
        self.nice = int(env("BENCH_NICE", "-10" if os.getuid() == 0 else "0"))
        self.perf = env("BENCH_PERF", "0") == "1"
        self.wait_quiet = int(env("BENCH_WAIT_QUIET", "0"))
        self.started_at = time.time()
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self.procs = []  # (name, Popen), in start order
        self.url, self.pids, self.cookie = {}, {}, {}
        self.run = None
        self.token_len = 0

    # -------------------------------------------------------- processes

    def start(self, name, log, cmd, extra_env=None):
        """Starts a process in the background, its output to `log`, stopped at the end."""
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(extra_env or {})})
        self.procs.append((name, p))
        return p

    def stop_all(self, grace=5.0):
        """TERM to every started process (the last started first), KILL after `grace`."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + grace
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def log_tail(self, name, n=30):
        try:
            lines = read(os.path.join(self.run, f"{name}.log")).splitlines()[-n:]
            print("\n".join(lines), file=sys.stderr)
        except OSError:
            pass

    def wait_http(self, name, proc, url, want=200):
        """Polls until `url` answers `want`, for up to 20 s."""
        code = 0
        for _ in range(200):
            if proc.poll() is not None:
                self.log_tail(name)
                raise Fatal(f"{name} exited before it was ready")
            code, _ = http_get(url, timeout=1)
            if code == want:
                return
            time.sleep(0.1)
        self.log_tail(name)
        raise Fatal(f"{name} not ready after 20 s ({url} answered {code:03d})")

    def redis_ping(self, port, proc=None, what="redis-server"):
        for _ in range(100):
            r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"],
                               capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return
            if proc is not None and proc.poll() is not None:
                raise Fatal(f"{what} exited (see {self.run}/redis.log)")
            time.sleep(0.1)

    def add_note(self, msg):
        with open(os.path.join(self.run, "notes.txt"), "a") as f:
            f.write(msg + "\n")

    # -------------------------------------------------------- 1. prerequisites, build

    def prerequisites(self):
        say("prerequisites")
        for tool in ("node", "npm", "python3", "cargo"):
            if not shutil.which(tool):
                raise Fatal(f"{tool} is required")
        cargo_bin = os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), "bin")
        os.environ["PATH"] = f"{os.environ['PATH']}:/usr/sbin:/sbin:{cargo_bin}"
        missing = [t for t in ("wrk", "nginx") if not shutil.which(t)]
        if missing:
            if os.getuid() != 0:
                raise Fatal(f"missing {' '.join(missing)}: run: sudo apt-get install -y {' '.join(missing)}")
            self.apt_install(missing)
        # oha drives the fixed-rate modes only.
        if any(m[0] == "r" for m in self.modes) and not shutil.which("oha"):
            loud("INSTALLING oha WITH cargo install --locked oha (missing on this machine; takes a few minutes)")
            subprocess.run(["cargo", "install", "--locked", "oha"], check=True)
        self.nginx = shutil.which("nginx")
        if not os.path.isdir("demo/provider/node_modules/oidc-provider"):
            note("npm ci (demo/provider)")
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd="demo/provider", check=True)

    def apt_install(self, packages):
        loud(f"INSTALLING {' '.join(packages)} WITH apt-get (missing on this machine)")
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})

    def bench_executable(self, bench):
        """Builds one cargo bench (--no-run), printing cargo's output, and returns its path."""
        note(f"building the {bench} bench (cargo bench --bench {bench} --no-run)")
        p = subprocess.Popen(["cargo", "bench", "--bench", bench, "--no-run"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        out = []
        for line in p.stdout:  # shown as it comes (as `| tee` did)
            sys.stdout.write(line)
            sys.stdout.flush()
            out.append(line)
        rc = p.wait()
        path = cargo_executable("".join(out))
        if rc != 0 or not path or not os.access(path, os.X_OK):
            raise Fatal(f"could not find the {bench} bench executable")
        return path

    def build(self):
        say("cargo build --release")
        subprocess.run(["cargo", "build", "--release"], check=True)
        target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(self.root, "target")
        self.bin = os.path.join(target_dir, "release", "portcullis")
        if not os.access(self.bin, os.X_OK):
            raise Fatal(f"no binary at {self.bin}")
        # Run exactly these builds later (a source change meanwhile must not trigger a rebuild).
        self.session_rss_bin = self.bench_executable("session_rss")
        if self.scale:
            self.store_scale_bin = self.bench_executable("store_scale")
            if not shutil.which("redis-server"):
                raise Fatal("--scale needs redis-server: apt-get install -y redis-server")

    # -------------------------------------------------------- 2. servers

    def prepare_run_dir(self):
        # Everything from here on (servers, load generator) runs at a higher CPU priority,
        # so that background jobs on a shared machine disturb the measurements less (they
        # still take what is left: see "other CPU %"). All targets get the same priority.
        if self.nice != 0:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.nice)
            except OSError:
                loud(f"renice to {self.nice} failed: running at normal priority")
        self.run = tempfile.mkdtemp(prefix="portcullis-bench.", dir=os.environ.get("TMPDIR", "/tmp"))
        os.makedirs(os.path.join(self.run, "cells"))
        for name in ("cells.jsonl", "notes.txt"):
            open(os.path.join(self.run, name), "w").close()
        (self.up_port, self.ngx_port, self.mem_port, self.sql_port, self.rds_port, self.redis_port,
         self.sql1m_port, self.rds1m_port, self.redis1m_port) = free_ports(9)

    def write_machine(self):
        cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                    if l.startswith("model name")), None)
        mem_kb = next((int(l.split()[1]) for l in read("/proc/meminfo").splitlines()
                       if l.startswith("MemTotal:")), None)
        commit = first_line("git", "rev-parse", "--short", "HEAD")
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip() != ""
        machine = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "mem_gib": round(mem_kb / 1048576, 1) if mem_kb else None,
            "kernel": platform.release(),
            "os": first_line("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
            "commit": f"{commit}{' (with uncommitted changes)' if dirty else ''}",
            "rustc": first_line("rustc", "--version"),
            "nginx": first_line(self.nginx, "-v"),
            "wrk": first_line("sh", "-c", "wrk -v 2>&1 | head -1"),
            "oha": first_line("oha", "--version"),
            "node": first_line("node", "--version"),
            "duration_s": self.duration,
            "rounds": self.rounds,
        }
        with open(os.path.join(self.run, "machine.json"), "w") as f:
            json.dump(machine, f, indent=2)

    def start_nginx(self, name, template, port):
        conf = os.path.join(self.run, f"{template.split('.')[0]}.conf")
        with open(conf, "w") as f:
            f.write(render_template(read(f"bench/nginx/{template}"), self.run, self.up_port, self.ngx_port))
        p = self.start(name, os.path.join(self.run, f"{name}.log"),
                       [self.nginx, "-p", self.run, "-c", conf, "-e", "stderr", "-g", "daemon off;"])
        self.wait_http(name, p, f"http://127.0.0.1:{port}{REQUEST_PATH}")
        return p

    def start_provider(self):
        say("starting the test OpenID provider")
        cfg = provider_config(self.up_port, [self.mem_port, self.sql_port, self.rds_port,
                                             self.sql1m_port, self.rds1m_port])
        log = os.path.join(self.run, "provider.log")
        p = self.start("provider", log, ["node", "demo/provider/provider.mjs"],
                       {"PROVIDER_CONFIG": json.dumps(cfg)})
        for _ in range(200):
            ready = [l[len("READY "):] for l in read(log).splitlines() if l.startswith("READY ")]
            if ready:
                self.issuer = ready[0]
                note(f"issuer {self.issuer}")
                return
            if p.poll() is not None:
                self.log_tail("provider")
                raise Fatal("the provider exited")
            time.sleep(0.1)
        raise Fatal("the provider did not print READY within 20 s")

    def config_text(self, store, port, sqlite_path=None, redis_port=None):
        return portcullis_config(store, port, self.issuer, self.key, self.up_port,
                                 sqlite_path or os.path.join(self.run, f"sessions-{store}.db"),
                                 redis_port or self.redis_port)

    def start_portcullis(self, store, port, name=None, sqlite_path=None, redis_port=None):
        name = name or f"portcullis-{store}"
        conf = os.path.join(self.run, f"{name}.toml")
        with open(conf, "w") as f:
            f.write(self.config_text(store, port, sqlite_path, redis_port))
        say(f"starting Portcullis (store = {store}) on 127.0.0.1:{port}")
        p = self.start(name, os.path.join(self.run, f"{name}.log"), [self.bin, "serve", "--config", conf])
        self.pids[name] = [p.pid]
        self.url[name] = f"http://127.0.0.1:{port}{REQUEST_PATH}"
        self.wait_http(name, p, f"http://127.0.0.1:{port}/healthz")

    def start_redis(self, name, port):
        return self.start(name, os.path.join(self.run, f"{name}.log"),
                          ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                           "--save", "", "--appendonly", "no", "--dir", self.run])

    def start_portcullis_redis(self):
        conf = os.path.join(self.run, "portcullis-redis-check.toml")
        with open(conf, "w") as f:
            f.write(self.config_text("redis", self.rds_port))
        check = subprocess.run([self.bin, "check", "--config", conf], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        if check.returncode != 0:
            last = (check.stdout.strip().splitlines() or [""])[-1]
            msg = f"redis store not available in this build (portcullis check: {last})"
            loud(msg)
            self.add_note(msg)
            return
        if not shutil.which("redis-server"):
            if os.getuid() != 0:
                raise Fatal("store = redis needs redis-server: sudo apt-get install -y redis-server")
            self.apt_install(["redis-server"])
        say(f"starting redis-server on 127.0.0.1:{self.redis_port}")
        redis = self.start_redis("redis", self.redis_port)
        self.redis_ping(self.redis_port, redis)
        self.start_portcullis("redis", self.rds_port)
        # The store is part of this setup's cost: its CPU counts as the proxy's.
        self.pids["portcullis-redis"].append(redis.pid)

    def start_scale_stores(self):
        say(f"store scale: {self.scale_sessions} sessions in SQLite and in Redis "
            "(cargo bench --bench store_scale)")
        redis = self.start_redis("redis-1m", self.redis1m_port)
        self.redis_ping(self.redis1m_port)
        sqlite_path = os.path.join(self.run, "sessions-sqlite-1m.db")
        out = self.run_bench(self.store_scale_bin, "store_scale", {
            "STORE_SCALE_STORES": "sqlite,redis",
            "STORE_SCALE_SESSIONS": self.scale_sessions,
            "STORE_SCALE_SQLITE_PATH": sqlite_path,
            "STORE_SCALE_REDIS_URL": f"redis://127.0.0.1:{self.redis1m_port}/0",
        })
        if out is None:
            raise Fatal(f"the store_scale bench failed (see {self.run}/store_scale.err)")
        lines = result_lines(out)
        info = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis1m_port), "info", "memory"],
                              capture_output=True, text=True).stdout
        used = redis_used_memory(info)
        if used is not None:
            lines.append(json.dumps({"store": "redis", "used_memory": used}))
        with open(os.path.join(self.run, "scale.jsonl"), "w") as f:
            f.write("".join(l + "\n" for l in lines))
        self.start_portcullis("sqlite", self.sql1m_port, "portcullis-sqlite-1m", sqlite_path)
        self.start_portcullis("redis", self.rds1m_port, "portcullis-redis-1m", None, self.redis1m_port)
        self.pids["portcullis-redis-1m"].append(redis.pid)

    def run_bench(self, executable, name, extra_env):
        """Runs a bench executable, its stdout shown and kept in RUN/NAME.out, stderr in
        RUN/NAME.err; returns the output, or None when it failed."""
        with open(os.path.join(self.run, f"{name}.err"), "w") as err:
            p = subprocess.Popen([executable], stdout=subprocess.PIPE, stderr=err, text=True,
                                 env={**os.environ, **extra_env})
            out = []
            for line in p.stdout:
                sys.stdout.write(line)
                out.append(line)
            rc = p.wait()
        text = "".join(out)
        with open(os.path.join(self.run, f"{name}.out"), "w") as f:
            f.write(text)
        return text if rc == 0 else None

    def start_servers(self):
        say(f"starting the upstream (nginx, fixed answer) on 127.0.0.1:{self.up_port}")
        self.upstream = self.start_nginx("upstream", "upstream.conf", self.up_port)
        self.url["direct"] = f"http://127.0.0.1:{self.up_port}{REQUEST_PATH}"
        self.pids["direct"] = []
        if "nginx" in self.wanted:
            say(f"starting nginx as a plain reverse proxy on 127.0.0.1:{self.ngx_port}")
            ngx = self.start_nginx("nginx", "proxy.conf", self.ngx_port)
            self.url["nginx"] = f"http://127.0.0.1:{self.ngx_port}{REQUEST_PATH}"
            self.pids["nginx"] = [ngx.pid]
        self.start_provider()
        self.key = subprocess.run([self.bin, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
        if "portcullis-memory" in self.wanted:
            self.start_portcullis("memory", self.mem_port)
        if "portcullis-sqlite" in self.wanted:
            self.start_portcullis("sqlite", self.sql_port)
        if "portcullis-redis" in self.wanted:
            self.start_portcullis_redis()
        if self.scale:
            self.start_scale_stores()
        self.targets = targets_to_load(self.wanted, self.url, self.scale)

    # -------------------------------------------------------- 3. log in, check

    def headers(self, target):
        return {"Cookie": f"{COOKIE_NAME}={self.cookie[target]}", "X-CSRF": "1"}

    def header_args(self, target):
        return [a for k, v in self.headers(target).items() for a in ("-H", f"{k}: {v}")]

    def log_in(self):
        for t in self.targets:
            if not t.startswith("portcullis-"):
                continue
            url = self.url[t]
            origin = url[: -len(REQUEST_PATH)]
            note(f"logging alice in to {t}")
            self.cookie[t] = subprocess.run([sys.executable, "bench/login.py", origin, "alice", "alice"],
                                            stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
            # The authenticated path really is exercised: 200 with cookie + X-CSRF, 403
            # without X-CSRF, 401 without the cookie.
            ok, body = http_get(url, self.headers(t))
            with open(os.path.join(self.run, f"check-{t}.body"), "wb") as f:
                f.write(body)
            csrf, _ = http_get(url, {"Cookie": self.headers(t)["Cookie"]})
            anon, _ = http_get(url, {"X-CSRF": "1"})
            if (ok, csrf, anon) != (200, 403, 401):
                raise Fatal(f"{t}: expected 200/403/401 (session/no X-CSRF/no cookie), got "
                            f"{ok:03d}/{csrf:03d}/{anon:03d}: {body[:300].decode(errors='replace')}")
            if b'"widget"' not in body:
                raise Fatal(f"{t}: the upstream's answer did not come back")
            # What the upstream receives as Authorization (the bench upstream echoes it on
            # this one path): a Bearer JWT. Only its length is kept.
            _, auth = http_get(f"{origin}/api/__bench/authorization", self.headers(t))
            if not auth.startswith(b"Bearer ey"):
                raise Fatal(f"{t}: the upstream did not receive a Bearer JWT")
            self.token_len = len(auth) - len("Bearer ")
            note(f"{t} injects a {self.token_len}-byte access token")
            del auth
        with open(os.path.join(self.run, "token.json"), "w") as f:
            f.write(json.dumps({"access_token_bytes": self.token_len}) + "\n")
        # direct and nginx get the same request bytes (the memory instance's cookie).
        for t in ("direct", "nginx"):
            if t not in self.url:
                continue
            self.cookie[t] = self.cookie.get("portcullis-memory") or self.cookie.get("portcullis-sqlite") or "0" * 43
            code, _ = http_get(self.url[t])
            if code != 200:
                raise Fatal(f"{t} answered {code:03d}")

    # -------------------------------------------------------- 4. load

    def cell(self, t, mode, rnd, attempt):
        """One measurement: the load generator's result and where the CPU went meanwhile."""
        raw = os.path.join(self.run, "cells", f"{t}-{mode}-r{rnd}-a{attempt}.txt")
        up = [self.upstream.pid]
        p0, u0, m0, g0 = cpu_ticks(self.pids[t]), cpu_ticks(up), machine_ticks(), children_ticks()
        if mode[0] == "c":
            cmd = wrk_command(mode[1:], self.duration, self.header_args(t), self.url[t])
        else:
            cmd = oha_command(mode[1:], self.duration, self.rate_connections, self.header_args(t), self.url[t])
        with open(raw, "w") as f:
            subprocess.run(["timeout", str(self.duration + 30)] + cmd, stdout=f, stderr=subprocess.STDOUT)
        g1, m1, p1, u1 = children_ticks(), machine_ticks(), cpu_ticks(self.pids[t]), cpu_ticks(up)
        metrics = None
        try:
            metrics = wrk_metrics(read(raw)) if mode[0] == "c" else report.oha_metrics(raw)
        except (ValueError, KeyError, TypeError):
            pass
        if not metrics:
            loud(f"{t} {mode}: no result (raw output in {raw}):")
            print("\n".join(read(raw).splitlines()[-5:]), file=sys.stderr)
            metrics = {"requests": 0, "errors": 1, "failed": True}
        proxy_cpu = round((p1 - p0) / self.clk_tck, 2) if self.pids[t] else None
        rec = cell_record(t, mode, rnd, attempt, proxy_cpu, round((u1 - u0) / self.clk_tck, 2),
                          cell_load(m0, m1, p1 - p0, u1 - u0, g1 - g0, self.clk_tck), metrics)
        print(report.one_line(rec), flush=True)
        return rec

    def measure(self, t, mode, rnd):
        """A cell, taken when the machine is quiet if possible, and taken again (up to
        BENCH_RETRIES times) when other processes and hypervisor steal took more than
        BENCH_NOISY_PCT of the CPUs meanwhile; the quietest attempt is kept, the others go
        to discarded.jsonl."""
        best = None
        for attempt in range(1, self.retries + 2):
            deadline = time.time() + self.cell_wait
            while busy_pct(1) > QUIET_PCT and time.time() < deadline:
                pass
            rec = self.cell(t, mode, rnd, attempt)
            best, dropped = keep_quietest(best, rec)
            if dropped is not None:
                self.append("discarded.jsonl", dropped)
            if noise(best) <= self.noisy_pct:
                break
            if attempt <= self.retries:
                note(f"others (or the hypervisor) took {noise(rec):.1f}% of the CPUs during that cell: "
                     "measuring it again")
        self.append("cells.jsonl", best)

    def append(self, name, rec):
        with open(os.path.join(self.run, name), "a") as f:
            f.write(json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n")

    def wait_for_quiet(self):
        """The cores are shared with anything else running on the machine: look before loading."""
        deadline = time.time() + self.wait_quiet
        while True:
            busy = busy_pct(2)
            if busy <= QUIET_PCT:
                return
            if time.time() >= deadline:
                msg = (f"the machine was busy before the load started ({busy}% of all CPUs used by other "
                       "processes): expect noise; see other_cpu_pct per cell")
                loud(msg)
                top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True)
                print("\n".join(top.stdout.splitlines()[:6]), file=sys.stderr)
                self.add_note(msg)
                return
            note(f"machine busy ({busy}% CPU used by others); waiting for it to calm down "
                 f"(BENCH_WAIT_QUIET={self.wait_quiet})")
            time.sleep(8)

    def load(self):
        n_cells = len(self.modes) * len(self.targets) * self.rounds
        say(f"load: {len(self.targets)} targets ({' '.join(self.targets)}) x modes ({' '.join(self.modes)}) "
            f"x {self.rounds} round(s) = {n_cells} cells of {self.duration} s")
        self.wait_for_quiet()
        for t in self.targets:
            note(f"warm-up {t} ({self.warmup} s, 32 connections)")
            subprocess.run(["timeout", str(self.warmup + 30)]
                           + wrk_command(32, self.warmup, self.header_args(t), self.url[t], report_script=False),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for rnd, mode, t in schedule(self.targets, self.modes, self.rounds):
            self.measure(t, mode, rnd)
            time.sleep(0.5)
        # Anything that went wrong in the servers during the load (besides routine info lines).
        for t in self.targets:
            if not t.startswith("portcullis-"):
                continue
            warnings = warning_lines(read(os.path.join(self.run, f"{t}.log")))
            if warnings:
                self.add_note(f"{t} logged {len(warnings)} warning/error lines during the run (see its log)")
                print("\n".join(warnings[:3]), file=sys.stderr)

    # -------------------------------------------------------- optional profile

    def profile(self):
        """BENCH_PERF=1: after the measured cells, profile each Portcullis under the c32 load
        with perf (not during the measurements: perf costs a few percent)."""
        if not shutil.which("perf"):
            loud("BENCH_PERF=1 but perf is not installed (apt-get install linux-perf)")
            return
        for t in self.targets:
            if not t.startswith("portcullis-"):
                continue
            say(f"profiling {t} with perf (c32, {self.duration} s)")
            data = os.path.join(self.run, f"perf-{t}.data")
            with open(os.path.join(self.run, f"perf-{t}.log"), "w") as log:
                perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,16384",
                                         "-p", str(self.pids[t][0]), "-o", data, "--", "sleep", str(self.duration)],
                                        stdout=log, stderr=subprocess.STDOUT)
                subprocess.run(["timeout", str(self.duration + 30)]
                               + wrk_command(32, self.duration, self.header_args(t), self.url[t], report_script=False),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                perf.wait()
            os.makedirs(self.out, exist_ok=True)

            def perf_report(*args):
                r = subprocess.run(["perf", "report", "-i", data, "--no-children", *args, "--stdio", "-g", "none"],
                                   capture_output=True, text=True)
                return [l for l in r.stdout.splitlines() if l and not l.startswith("#")]

            dso = [l.rstrip() for l in perf_report("--sort", "dso")][:15]
            sym = [re.sub(r"(\s+-){2}\s*$", "", l) for l in perf_report("--sort", "symbol", "--percent-limit", "0.5")][:80]
            path = os.path.join(self.out, f"perf-{t}.txt")
            with open(path, "w") as f:
                f.write(f"# perf profile of {t} under wrk -c32, {self.duration} s "
                        f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}); self time\n")
                f.write("## by DSO (kernel vs user space)\n" + "".join(l + "\n" for l in dso))
                f.write("## by symbol (>= 0.5 %)\n" + "".join(l + "\n" for l in sym))
            note(f"wrote {path}")

    # -------------------------------------------------------- 5. session memory, 6. report

    def session_memory(self):
        say(f"session memory: RSS per {self.sessions} sessions (memory store), bytes per session (SQLite)")
        out = self.run_bench(self.session_rss_bin, "session_rss",
                             {"BENCH_SESSIONS": self.sessions, "BENCH_SQLITE_SESSIONS": self.sqlite_sessions})
        if out is None:
            loud(f"the session_rss bench failed (see {self.run}/session_rss.err)")
            self.add_note("the session_rss bench failed; no session memory figures")
            self.keep = True
            return
        lines = result_lines(out)
        if lines:
            with open(os.path.join(self.run, "sessions.json"), "w") as f:
                f.write("".join(l + "\n" for l in lines))

    def report(self):
        say("results")
        # docs/performance.md is bench/performance.md.in filled with this run's results
        # (only when the results go to bench/results, the ones the page links to).
        docs = ""
        if self.out == os.path.join(self.root, "bench", "results"):
            docs = f"{self.root}/bench/performance.md.in:{self.root}/docs/performance.md"
        subprocess.run([sys.executable, "bench/report.py", self.run, self.out], check=True,
                       env={**os.environ, "BENCH_DOCS": docs})
        note(f"wrote {self.out}/latest.json, {self.out}/latest.md, {self.out}/latest.svg "
             f"(run took {int(time.time() - self.started_at)} s)")

    def main(self):
        self.prerequisites()
        self.build()
        self.prepare_run_dir()
        self.write_machine()
        self.start_servers()
        self.log_in()
        self.load()
        if self.perf:
            self.profile()
        say("stopping the servers")
        self.stop_all(grace=30)
        self.session_memory()
        self.report()


def print_config(argv):
    """`bench.py config STORE PORT ISSUER KEY UPSTREAM_PORT SQLITE_PATH [WORKERS]` and
    `bench.py provider-config UPSTREAM_PORT PORTCULLIS_PORT...`: the generated configs,
    for bench/profile.sh (one generator for both scripts)."""
    if argv[0] == "config" and len(argv) in (7, 8):
        store, port, issuer, key, up, sqlite_path = argv[1:7]
        workers = argv[7] if len(argv) == 8 and argv[7] else None
        print(portcullis_config(store, int(port), issuer, key, int(up), sqlite_path, 6379,
                                workers), end="")
        return 0
    if argv[0] == "provider-config" and len(argv) >= 3:
        print(json.dumps(provider_config(int(argv[1]), [int(p) for p in argv[2:]])))
        return 0
    print(print_config.__doc__, file=sys.stderr)
    return 2


def main(argv):
    if argv and argv[0] in ("config", "provider-config"):
        return print_config(argv)
    scale = False
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            return 0
        if arg == "--scale":
            scale = True
        else:
            print("usage: bench/run.sh [--scale]", file=sys.stderr)
            return 2

    def stop(signum, _frame):
        raise SystemExit(130 if signum == signal.SIGINT else 143)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    bench = Bench(scale)
    rc = 1
    try:
        bench.main()
        rc = 0
    except Fatal as e:
        loud(str(e))
    except subprocess.CalledProcessError as e:
        loud(f"{' '.join(map(str, e.cmd))} failed (exit status {e.returncode})")
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        bench.stop_all()
        if bench.run:
            if rc != 0 or bench.keep:
                print(f"(run directory kept: {bench.run})", file=sys.stderr)
            else:
                shutil.rmtree(bench.run, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
