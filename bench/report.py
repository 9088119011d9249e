#!/usr/bin/env python3
"""Turns the raw cells of one bench/run.sh run into a table, JSON and an SVG chart.

    python3 bench/report.py RUN_DIR OUT_DIR
    python3 bench/report.py --oha OHA_JSON_FILE   # one oha run -> the cell's metrics JSON
    python3 bench/report.py --line CELL_JSON      # one cell -> a one-line summary

RUN_DIR holds `cells.jsonl` (one JSON object per measured cell, written by run.sh),
`machine.json`, and optionally `sessions.json` (bench session_rss) and `notes.txt`.
Writes OUT_DIR/latest.json, OUT_DIR/latest.md (the table as Markdown) and
OUT_DIR/latest.svg, and prints the table. Python 3 standard library only.
"""

import json
import os
import sys
from html import escape

TARGET_ORDER = ["direct", "nginx", "portcullis-memory", "portcullis-sqlite", "portcullis-sqlite-1m",
                "portcullis-redis", "portcullis-redis-1m"]
TARGET_LABEL = {
    "direct": "direct (upstream)",
    "nginx": "nginx proxy",
    "portcullis-memory": "Portcullis, memory",
    "portcullis-sqlite": "Portcullis, sqlite",
    "portcullis-sqlite-1m": "Portcullis, sqlite, large store",
    "portcullis-redis": "Portcullis, redis",
    "portcullis-redis-1m": "Portcullis, redis, large store",
}
COLORS = {
    "direct": "#9e9e9e",
    "nginx": "#2e7d32",
    "portcullis-memory": "#1565c0",
    "portcullis-sqlite": "#6a1b9a",
    "portcullis-sqlite-1m": "#ab47bc",
    "portcullis-redis": "#c62828",
    "portcullis-redis-1m": "#ef5350",
}


# A cell during which other processes took more than this share of the CPUs is flagged.
NOISY_PCT = float(os.environ.get("BENCH_NOISY_PCT", "5"))


def mode_key(mode):
    kind, n = mode[0], int(mode[1:])
    return (0 if kind == "c" else 1, n)


def mode_label(mode):
    return f"c{mode[1:]} (closed loop)" if mode[0] == "c" else f"{int(mode[1:]):,} req/s (fixed rate)"


def load(run_dir):
    cells = []
    with open(os.path.join(run_dir, "cells.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                cells.append(flatten(json.loads(line)))

    def opt(name):
        p = os.path.join(run_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f)
        return None

    notes = []
    p = os.path.join(run_dir, "notes.txt")
    if os.path.exists(p):
        with open(p) as f:
            notes = [l.rstrip("\n") for l in f if l.strip()]
    machine = opt("machine.json") or {}
    token = opt("token.json")
    if token:
        machine.update(token)
    discarded = 0
    p = os.path.join(run_dir, "discarded.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            discarded = sum(1 for l in f if l.strip())
    if discarded:
        notes.append(
            f"{discarded} measurement(s) were taken again because other processes or steal took more than "
            f"{NOISY_PCT:.0f}% of the CPUs during them (the quietest attempt of each cell is shown)"
        )
    return cells, machine, opt("sessions.json"), notes


def load_scale(run_dir):
    """store_scale RESULT lines (and Redis's used_memory) of a `run.sh --scale` run."""
    p = os.path.join(run_dir, "scale.jsonl")
    if not os.path.exists(p):
        return None
    out = {}
    with open(p) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.setdefault(d["store"], {}).update(d)
    return out


def flatten(cell):
    """A cells.jsonl record -> one flat dict with CPU per 100k requests."""
    c = {k: v for k, v in cell.items() if k != "metrics"}
    c.update(cell.get("metrics") or {})
    n = c.get("requests") or 0
    for src, dst in (("proxy_cpu_s", "proxy_cpu_s_per_100k"), ("upstream_cpu_s", "upstream_cpu_s_per_100k")):
        v = c.get(src)
        c[dst] = round(v / n * 1e5, 3) if v is not None and n else None
    if c["mode"].startswith("r"):
        c["target_rate"] = int(c["mode"][1:])
    return c


def oha_metrics(path):
    """The metrics of one `oha --output-format json` run, in wrk_report.lua's shape."""
    with open(path) as f:
        text = f.read()
    d = json.loads(text[text.index("{"):])
    s = d["summary"]
    lp = d.get("latencyPercentiles") or {}
    codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errs = d.get("errorDistribution") or {}
    ok = sum(v for k, v in codes.items() if 200 <= k < 400)
    bad_status = sum(v for k, v in codes.items() if not 200 <= k < 400)
    transport = sum(errs.values())
    us = lambda secs: None if secs is None else int(round(secs * 1e6))
    return {
        "requests": ok + bad_status + transport,
        "duration_s": round(s.get("total") or 0, 3),
        "rps": round(s.get("requestsPerSec") or 0, 1),
        "p50_us": us(lp.get("p50")),
        "p90_us": us(lp.get("p90")),
        "p99_us": us(lp.get("p99")),
        "p999_us": us(lp.get("p99.9")),
        "max_us": us(s.get("slowest")),
        "mean_us": us(s.get("average")),
        "errors": bad_status + transport,
        "errors_detail": {"status": {str(k): v for k, v in codes.items() if not 200 <= k < 400}, **errs},
    }


def one_line(cell):
    c = flatten(cell)
    if c.get("failed"):
        return f"  {c['target']:<18} {c['mode']:<7} FAILED"
    cpu = c.get("proxy_cpu_s_per_100k")
    return (
        f"  {c['target']:<18} {c['mode']:<7} {c.get('rps', 0):>9,.0f} req/s  p50 {ms(c.get('p50_us'))} ms  "
        f"p99 {ms(c.get('p99_us'))} ms  max {ms(c.get('max_us'))} ms  errors {c.get('errors', 0)}"
        + ("" if cpu is None else f"  proxy CPU {cpu:.2f} s/100k")
        + ("" if c.get("other_cpu_pct") is None else f"  others {c['other_cpu_pct']:.0f}% CPU")
        + ("" if not c.get("steal_pct") or c["steal_pct"] < 1 else f"  steal {c['steal_pct']:.0f}%")
    )


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def aggregate(cells):
    """One row per (target, mode): the median over rounds of each figure."""
    groups = {}
    for c in cells:
        groups.setdefault((c["target"], c["mode"]), []).append(c)
    rows = {}
    for (target, mode), cs in groups.items():
        row = {"target": target, "mode": mode, "rounds": len(cs)}
        for k in ("rps", "p50_us", "p90_us", "p99_us", "max_us", "proxy_cpu_s_per_100k"):
            vals = [c[k] for c in cs if c.get(k) is not None]
            row[k] = median(vals) if vals else None
        others = [c["other_cpu_pct"] for c in cs if c.get("other_cpu_pct") is not None]
        row["other_cpu_pct"] = max(others) if others else None
        steals = [c["steal_pct"] for c in cs if c.get("steal_pct") is not None]
        row["steal_pct"] = max(steals) if steals else None
        row["noise_pct"] = max(
            ((c.get("other_cpu_pct") or 0) + (c.get("steal_pct") or 0) for c in cs), default=None
        )
        row["errors"] = sum(c.get("errors", 0) for c in cs)
        row["requests"] = sum(c.get("requests", 0) for c in cs)
        row["target_rate"] = cs[0].get("target_rate")
        rows[(target, mode)] = row
    for (target, mode), row in rows.items():
        nginx = rows.get(("nginx", mode))
        direct = rows.get(("direct", mode))
        row["rps_vs_nginx"] = ratio(row["rps"], nginx and nginx["rps"])
        row["rps_vs_direct"] = ratio(row["rps"], direct and direct["rps"])
        row["p99_vs_nginx"] = ratio(row["p99_us"], nginx and nginx["p99_us"])
        row["p99_added_over_direct_ms"] = (
            round((row["p99_us"] - direct["p99_us"]) / 1000.0, 3)
            if direct and row["p99_us"] is not None and direct["p99_us"] is not None
            else None
        )
    return rows


def ratio(a, b):
    if a is None or not b:
        return None
    return round(a / b, 3)


def ms(us):
    return "–" if us is None else f"{us / 1000.0:.2f}"


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def table(rows, modes, targets):
    head = (
        "| target | mode | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
        "| req/s ÷ nginx | req/s ÷ direct | p99 ÷ nginx | p99 added over direct | proxy CPU s / 100k req "
        "| others + steal, % CPU |"
    )
    lines = [head, "|" + "---|" * 14]
    for mode in modes:
        for t in targets:
            r = rows.get((t, mode))
            if not r:
                continue
            added = r["p99_added_over_direct_ms"]
            lines.append(
                "| {t} | {m} | {rps} | {p50} | {p90} | {p99} | {mx} | {err} | {vn} | {vd} | {pn} | {add} | {cpu} | {oth} |".format(
                    t=t,
                    m=mode,
                    rps=f"{r['rps']:,.0f}" if r["rps"] is not None else "–",
                    p50=ms(r["p50_us"]),
                    p90=ms(r["p90_us"]),
                    p99=ms(r["p99_us"]),
                    mx=ms(r["max_us"]),
                    err=r["errors"],
                    vn=fmt_ratio(r["rps_vs_nginx"]) if mode[0] == "c" else "–",
                    vd=fmt_ratio(r["rps_vs_direct"]) if mode[0] == "c" else "–",
                    pn=fmt_ratio(r["p99_vs_nginx"]),
                    add="–" if added is None or t == "direct" else f"{added:+.3f} ms",
                    cpu="–"
                    if r["proxy_cpu_s_per_100k"] is None
                    else f"{r['proxy_cpu_s_per_100k']:.2f}",
                    oth="–"
                    if r["noise_pct"] is None
                    else f"{r['noise_pct']:.0f}{' ⚠' if r['noise_pct'] > NOISY_PCT else ''}",
                )
            )
    return "\n".join(lines)


def verdicts(rows, targets):
    out = []

    def noisy(*cells):
        bad = [f"{t} {m}" for (t, m) in cells if ((rows.get((t, m)) or {}).get("noise_pct") or 0) > NOISY_PCT]
        return f" — ⚠ unreliable: {', '.join(bad)} disturbed" if bad else ""

    for t in [t for t in targets if t.startswith("portcullis")]:
        for mode in ("c32", "c256"):
            r = rows.get((t, mode))
            if r and r["rps_vs_nginx"] is not None:
                ok = r["rps_vs_nginx"] >= 1.0
                out.append(
                    f"{t} {mode}: {r['rps_vs_nginx']:.2f}× nginx's throughput "
                    f"(target ≥ 1.0×): {'MET' if ok else 'NOT MET'}{noisy((t, mode), ('nginx', mode))}"
                )
        r = rows.get((t, "r1000"))
        if r and r["p99_added_over_direct_ms"] is not None:
            ok = r["p99_added_over_direct_ms"] <= 0.3
            out.append(
                f"{t} r1000: p99 added over direct {r['p99_added_over_direct_ms']:+.3f} ms "
                f"(target ≤ 0.3 ms): {'MET' if ok else 'NOT MET'}{noisy((t, 'r1000'), ('direct', 'r1000'))}"
            )
        errs = sum(r["errors"] for (tt, _), r in rows.items() if tt == t)
        out.append(f"{t}: {errs} errors over all cells (target 0): {'MET' if errs == 0 else 'NOT MET'}")
    redis, memory = rows.get(("portcullis-redis", "c32")), rows.get(("portcullis-memory", "c32"))
    if redis and memory and memory["rps"]:
        r = redis["rps"] / memory["rps"]
        out.append(
            f"redis store c32: {r:.2f}× the memory store (target ≥ 0.8×): {'MET' if r >= 0.8 else 'NOT MET'}"
            f"{noisy(('portcullis-redis', 'c32'), ('portcullis-memory', 'c32'))}"
        )
    return out


# ---------------------------------------------------------------- SVG


def svg_chart(rows, modes, targets, machine, sessions, title):
    closed = [m for m in modes if m[0] == "c"]
    rated = [m for m in modes if m[0] == "r"]
    W = 960
    panel_h = 300
    top = 70
    gap = 70
    H = top + panel_h * 2 + gap + 120
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    sub = []
    if machine:
        sub.append(f"{machine.get('nproc')} cores, {machine.get('cpu')}, Linux {machine.get('kernel')}")
        sub.append(f"{machine.get('duration_s')} s per cell, {machine.get('rounds')} round(s), {machine.get('date')}")
    out.append(
        f'<text x="{W / 2}" y="44" text-anchor="middle" fill="#555">{escape(" · ".join(sub))}</text>'
    )

    def panel(y0, mode_list, value_key, fmt, ylabel, higher_better):
        left, right = 80, W - 20
        plot_h = panel_h - 70
        vals = [
            rows[(t, m)][value_key]
            for m in mode_list
            for t in targets
            if (t, m) in rows and rows[(t, m)][value_key] is not None
        ]
        vmax = max(vals) if vals else 1
        vmax = vmax * 1.15 or 1
        parts = [
            f'<text x="{left}" y="{y0 - 8}" font-size="13" font-weight="bold">{escape(ylabel)}'
            f'{" (higher is better)" if higher_better else " (lower is better)"}</text>',
            f'<line x1="{left}" y1="{y0 + plot_h}" x2="{right}" y2="{y0 + plot_h}" stroke="#333"/>',
            f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y0 + plot_h}" stroke="#333"/>',
        ]
        for i in range(5):
            v = vmax * i / 4
            y = y0 + plot_h - plot_h * i / 4
            parts.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#555">{fmt(v)}</text>')
        if not mode_list:
            return parts
        group_w = (right - left) / len(mode_list)
        bar_w = min(60, group_w * 0.8 / max(1, len(targets)))
        for gi, m in enumerate(mode_list):
            gx = left + group_w * gi + (group_w - bar_w * len(targets)) / 2
            for ti, t in enumerate(targets):
                r = rows.get((t, m))
                if not r or r[value_key] is None:
                    continue
                v = r[value_key]
                h = plot_h * v / vmax
                x = gx + ti * bar_w
                y = y0 + plot_h - h
                parts.append(
                    f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" '
                    f'fill="{COLORS.get(t, "#888")}"><title>{escape(t)} {m}: {fmt(v)}</title></rect>'
                )
                parts.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" font-size="10">{fmt(v)}</text>'
                )
                note = None
                if value_key == "rps" and t not in ("nginx", "direct") and r.get("rps_vs_nginx"):
                    note = f"{r['rps_vs_nginx']:.2f}×"
                elif value_key == "p99_us" and t != "direct" and r.get("p99_added_over_direct_ms") is not None:
                    note = f"{r['p99_added_over_direct_ms']:+.2f} ms"
                if note and h > 16:
                    parts.append(
                        f'<text x="{x + bar_w / 2:.1f}" y="{y0 + plot_h - 6:.1f}" text-anchor="middle" '
                        f'font-size="9" fill="white">{escape(note)}</text>'
                    )
                if (r.get("noise_pct") or 0) > NOISY_PCT:
                    parts.append(
                        f'<text x="{x + bar_w / 2:.1f}" y="{y0 + plot_h + 32:.1f}" text-anchor="middle" '
                        f'font-size="10" fill="#e65100">⚠ busy</text>'
                    )
                if r.get("errors"):
                    parts.append(
                        f'<text x="{x + bar_w / 2:.1f}" y="{y - 16:.1f}" text-anchor="middle" font-size="10" '
                        f'fill="#c62828">{r["errors"]} err</text>'
                    )
            parts.append(
                f'<text x="{left + group_w * (gi + 0.5):.1f}" y="{y0 + plot_h + 18}" text-anchor="middle">'
                f"{escape(mode_label(m))}</text>"
            )
        return parts

    out += panel(
        top + 20, closed, "rps", lambda v: f"{v / 1000:.1f}k", "Throughput, req/s", True
    )
    out += panel(
        top + 20 + panel_h + gap - 20,
        rated,
        "p99_us",
        lambda v: f"{v / 1000:.2f} ms",
        "p99 latency at a fixed request rate",
        False,
    )
    # Legend.
    # Four entries per row, so long labels never run off the chart.
    per_row = 4
    rows = (len(targets) + per_row - 1) // per_row
    for i, t in enumerate(targets):
        lx = 80 + (i % per_row) * 220
        ly = H - 60 - (rows - 1 - i // per_row) * 18
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS.get(t, "#888")}"/>')
        out.append(f'<text x="{lx + 18}" y="{ly}">{escape(TARGET_LABEL.get(t, t))}</text>')
    out.append(
        f'<text x="80" y="{H - 44}" fill="#555" font-size="11">Inside the bars: throughput as a multiple of '
        "nginx's (top); p99 added over calling the upstream directly (bottom).</text>"
    )
    out.append(
        f'<text x="80" y="{H - 30}" fill="#555" font-size="11">⚠ busy: other processes took more than '
        f"{NOISY_PCT:.0f}% of the CPUs during that cell, or the hypervisor did (steal).</text>"
    )
    if sessions:
        out.append(
            f'<text x="80" y="{H - 12}" fill="#333">Memory store: '
            f'{sessions.get("memory_mib_per_100k_sessions")} MiB RSS per 100,000 sessions · '
            f'SQLite: {sessions.get("sqlite_bytes_per_session"):.0f} bytes per session on disk</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--oha":
        print(json.dumps(oha_metrics(sys.argv[2])))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--line":
        print(one_line(json.loads(sys.argv[2])))
        return
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    run_dir, out_dir = sys.argv[1], sys.argv[2]
    cells, machine, sessions, notes = load(run_dir)
    rows = aggregate(cells)
    scale = load_scale(run_dir)
    modes = sorted({m for (_, m) in rows}, key=mode_key)
    targets = [t for t in TARGET_ORDER if any(tt == t for (tt, _) in rows)]
    targets += sorted({t for (t, _) in rows} - set(targets))

    md = [table(rows, modes, targets), ""]
    v = verdicts(rows, targets)
    if v:
        md += ["Targets (same run):", ""] + [f"- {line}" for line in v] + [""]
    if sessions:
        md.append(
            f"- Memory store: {sessions['memory_mib_per_100k_sessions']} MiB of RSS per 100,000 live "
            f"sessions ({sessions['memory_bytes_per_session']:.0f} bytes/session); SQLite store: "
            f"{sessions['sqlite_bytes_per_session']:.0f} bytes/session on disk"
            + (f" and {sessions['sqlite_cache_bytes_per_session']:.0f} bytes of RSS per session in its "
               "in-process cache" if sessions.get('sqlite_cache_bytes_per_session') is not None else "")
            + f" (tokens {sessions['token_bytes']['access']}/{sessions['token_bytes']['refresh']}/"
            f"{sessions['token_bytes']['id']} bytes access/refresh/id)."
        )
    noisy = [f"{t} {m}" for (t, m), r in rows.items() if (r.get("noise_pct") or 0) > NOISY_PCT]
    if noisy:
        md.append(
            f"- ⚠ Other processes or the hypervisor (steal) took more than {NOISY_PCT:.0f}% of the CPUs "
            f"during: {', '.join(sorted(noisy))} "
            "— those cells are not a fair comparison; run again on a quiet machine."
        )
    for n in notes:
        md.append(f"- Note: {n}")
    if scale:
        md += ["", scale_md(scale, rows)]
    md_text = "\n".join(md).rstrip() + "\n"

    os.makedirs(out_dir, exist_ok=True)
    result = {
        "machine": machine,
        "rows": [rows[(t, m)] for m in modes for t in targets if (t, m) in rows],
        "cells": cells,
        "sessions": sessions,
        "scale": scale,
        "verdicts": v,
        "notes": notes,
    }
    with open(os.path.join(out_dir, "latest.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(md_text)
    with open(os.path.join(out_dir, "latest.svg"), "w") as f:
        f.write(svg_chart(rows, modes, targets, machine, sessions, "Portcullis vs nginx vs direct, one run"))
    print(md_text)
    if os.environ.get("BENCH_DOCS"):
        render_docs(os.environ["BENCH_DOCS"], out_dir, result, md_text, rows, modes, targets)


def scale_md(scale, rows):
    """The store-scale figures of a `run.sh --scale` run, and the proxy path with those
    stores next to the same stores empty."""
    lines = ["| store | sessions | created/s (16 at a time) | `Sessions::load` p50 / p99 µs | "
             "`SessionStore::get` alone p50 / p99 µs | unknown id p99 µs | lookups/s (16 in flight) | size |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in sorted(scale.items()):
        if "sessions" not in d:
            continue
        if d.get("file_bytes"):
            size = f"{d['file_bytes'] / 2**20:,.0f} MiB file ({d['file_bytes'] / d['sessions']:,.0f} B/session)"
        elif d.get("used_memory"):
            size = f"{d['used_memory'] / 2**20:,.0f} MiB used_memory ({d['used_memory'] / d['sessions']:,.0f} B/session)"
        else:
            size = f"{d.get('rss_delta_bytes', 0) / 2**20:,.0f} MiB RSS"
        lines.append(
            f"| {name} | {d['sessions']:,} | {d['insert_per_sec']:,.0f} | {d['lookup_p50_us']:.1f} / "
            f"{d['lookup_p99_us']:.1f} | {d['store_get_p50_us']:.1f} / {d['store_get_p99_us']:.1f} | "
            f"{d['miss_p99_us']:.1f} | {d['concurrent_lookups_per_sec']:,.0f} | {size} |"
        )
    lines.append("")
    for store in ("sqlite", "redis"):
        for mode in ("c32", "c256", "r1000", "r10000"):
            big, empty = rows.get((f"portcullis-{store}-1m", mode)), rows.get((f"portcullis-{store}", mode))
            if not big or not empty:
                continue
            if mode[0] == "c" and empty.get("rps"):
                lines.append(f"- {store} {mode}: with the large store {big['rps']:,.0f} req/s = "
                             f"{big['rps'] / empty['rps']:.2f}× the empty store's ({empty['rps']:,.0f}); "
                             f"p99 {big['p99_us'] / 1000:.2f} ms vs {empty['p99_us'] / 1000:.2f} ms")
            elif mode[0] == "r" and big.get("p99_us") and empty.get("p99_us"):
                lines.append(f"- {store} {mode}: p99 {big['p99_us'] / 1000:.2f} ms with the large store vs "
                             f"{empty['p99_us'] / 1000:.2f} ms empty")
    return "\n".join(lines)


def profile_md(out_dir):
    """The profile-and-fix record (bench/profile.sh appends to profile.jsonl)."""
    p = os.path.join(out_dir, "profile.jsonl")
    if not os.path.exists(p):
        return "No profile-and-fix measurements recorded (run `./bench/profile.sh callgrind`)."
    recs = [json.loads(l) for l in open(p) if l.strip()]
    lines = ["Recorded by `bench/profile.sh` (memory store, `GET /api/items/42` on a `user` route), "
             "in the order measured. `callgrind`: instructions per request, one worker, under "
             "valgrind. `cpu`: wrk -t2 at the given connections, CPU seconds of the proxy per "
             "100,000 requests and req/s relative to nginx, in the same round (noisy: compare "
             "builds only within one run — rows with the same date and minute).",
             "", "| build | date | measure | value | nginx in the same round |", "|---|---|---|---|---|"]
    for r in recs:
        if r["mode"] == "callgrind":
            lines.append(f"| {r['build']} | {r['date']} | instructions/request ({r['requests']:,} requests) | "
                         f"{r['instructions_per_request']:,} | – |")
        else:
            lines.append(f"| {r['build']} | {r['date']} | c{r['connections']} round {r['round']}: CPU s/100k req, "
                         f"req/s ÷ nginx | {r['cpu_s_per_100k']:.2f} s, {r['rps'] / r['nginx_rps']:.2f}× | "
                         f"{r['nginx_cpu_s_per_100k']:.2f} s, {r['nginx_rps']:,} req/s |")
    return "\n".join(lines)


def render_docs(template, out_dir, result, md_text, rows, modes, targets):
    """Fills bench/performance.md.in into docs/performance.md (BENCH_DOCS=template:output)."""
    src, dst = template.split(":", 1)
    text = open(src).read()
    m = result["machine"]
    summary = []
    for t in [t for t in targets if t.startswith("portcullis")]:
        parts = []
        for mode in modes:
            r = rows.get((t, mode))
            if not r:
                continue
            x = lambda v: "–" if v is None else f"{v:.2f}×"
            if mode[0] == "c":
                parts.append(f"{mode}: {x(r['rps_vs_nginx'])} nginx, {x(r['rps_vs_direct'])} direct")
            elif r.get("p99_added_over_direct_ms") is not None:
                parts.append(f"{mode}: p99 {r['p99_us'] / 1000:.2f} ms "
                             f"({r['p99_added_over_direct_ms']:+.2f} ms over direct, {x(r['p99_vs_nginx'])} nginx's)")
        summary.append(f"- **{t}** — " + "; ".join(parts))
    met = sum(1 for v in result["verdicts"] if ": MET" in v)
    summary.append("")
    summary.append(f"Targets met in this run: {met} of {len(result['verdicts'])} (each is listed under Results).")
    machine = "\n".join(f"- {k}: {v}" for k, v in m.items() if v is not None)
    results = md_text.replace("\n\n| store | sessions", "\n\n### Stores at scale (this run)\n\n| store | sessions", 1)
    results += "\n![chart](../bench/results/latest.svg)\n"
    s_ = result.get("sessions")
    memory = ("Not measured in this run." if not s_ else
              f"{s_['memory_bytes_per_session']:.0f} bytes of RSS per live session in the memory store "
              f"({s_['memory_mib_per_100k_sessions']} MiB per 100,000), {s_['sqlite_bytes_per_session']:.0f} bytes "
              f"per session in the SQLite file ({s_['sqlite_sessions']:,} sessions)"
              + (f" and {s_['sqlite_cache_bytes_per_session']:.0f} bytes of RSS per session its in-process "
                 "cache holds (a fresh process loading every session once, less the same without the cache: "
                 "SQLite's page cache is not counted)" if s_.get('sqlite_cache_bytes_per_session') is not None else "")
              + f", for a payload of about "
              f"{s_['payload_bytes_per_session']} bytes (sealed tokens {s_['token_bytes']['access']}/"
              f"{s_['token_bytes']['refresh']}/{s_['token_bytes']['id']} bytes access/refresh/id, claims, sub, sid).")
    scale = (scale_md(result["scale"], rows) if result.get("scale") else
             "Not part of this run: `./bench/run.sh --scale` fills SQLite and Redis with a million "
             "sessions each and measures the proxy path against them next to the empty stores.")
    crit = os.path.join(out_dir, "hot_path.txt")
    criterion = (open(crit).read().strip() if os.path.exists(crit) else
                 "Not part of `bench/run.sh`: `cargo bench --bench hot_path`.")
    perf = []
    for t in targets:
        p = os.path.join(out_dir, f"perf-{t}.txt")
        if os.path.exists(p):
            perf.append(f"[{os.path.basename(p)}](../bench/results/{os.path.basename(p)}) (`BENCH_PERF=1`).")
    profile = profile_md(out_dir) + ("\n\nperf profiles under load: " + " ".join(perf) if perf else "")
    fills = {
        "@@SUMMARY@@": "\n".join(summary),
        "@@TOKEN_LEN@@": str(m.get("access_token_bytes", "?")),
        "@@MACHINE@@": machine,
        "@@RESULTS@@": results,
        "@@MEMORY@@": memory,
        "@@SCALE@@": scale,
        "@@CRITERION@@": criterion,
        "@@PROFILE@@": profile,
    }
    for k, v in fills.items():
        text = text.replace(k, v)
    with open(dst, "w") as f:
        f.write(text)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
