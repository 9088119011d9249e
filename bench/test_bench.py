"""Unit tests of the benchmark's pure parts (bench/bench.py, bench/report.py).

    python3 -m unittest discover -s bench      # from the repository root; no network

Fast and offline: they feed recorded shapes of /proc, wrk, oha and cargo output to the
parsers, and made-up cells to the accounting, the aggregation and the verdicts.
"""

import json
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import report  # noqa: E402

# /proc/PID/stat of an nginx worker, its command name with a space and a parenthesis.
# Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
# cmajflt utime stime cutime cstime ...
PROC_STAT = "4242 (nginx: wo) rker) S 4200 4200 4200 0 -1 4194624 900 0 0 0 150 50 7 3 20 0 1 0 12345 0"
PROC_STAT_ALL = """cpu  1000 20 300 5000 40 6 4 2 0 0
cpu0 500 10 150 2500 20 3 2 1 0 0
intr 12345
"""


def slurp(path):
    with open(path) as f:
        return f.read()


def cell(target, mode, rps=None, p99=None, proxy=1.0, requests=100_000, errors=0, other=0.0, steal=0.0,
         rnd=1):
    metrics = {"requests": requests, "rps": rps, "p50_us": 100, "p90_us": 200, "p99_us": p99,
               "max_us": 900, "errors": errors}
    return bench.cell_record(target, mode, rnd, 1, proxy, 0.5,
                             {"loadgen_cpu_s": 1.0, "machine_busy_pct": 90.0, "other_cpu_pct": other,
                              "irq_pct": 1.0, "steal_pct": steal}, metrics)


class ProcTest(unittest.TestCase):
    def test_stat_fields_skip_a_command_name_with_spaces_and_parentheses(self):
        f = bench.stat_fields(PROC_STAT)
        self.assertEqual(f[0], "S")
        self.assertEqual(f[1], "4200")

    def test_process_ticks_are_utime_plus_stime(self):
        self.assertEqual(bench.process_ticks(PROC_STAT), 200)

    def test_children_ticks_are_cutime_plus_cstime(self):
        self.assertEqual(bench.children_ticks_of(PROC_STAT), 10)

    def test_machine_ticks_split_busy_steal_total_and_irq(self):
        busy, steal, total, irq = bench.machine_ticks_of(PROC_STAT_ALL)
        self.assertEqual(busy, 1000 + 20 + 300)
        self.assertEqual(steal, 2)
        self.assertEqual(total, 1000 + 20 + 300 + 5000 + 40 + 6 + 4 + 2)
        self.assertEqual(irq, 6 + 4)

    def test_the_live_proc_files_parse(self):
        self.assertGreater(bench.machine_ticks()[2], 0)
        self.assertGreaterEqual(bench.children_ticks(), 0)
        self.assertGreater(bench.cpu_ticks([os.getpid()]) + 1, 0)

    def test_busy_pct_counts_busy_and_steal_over_all_ticks(self):
        self.assertEqual(bench.busy_pct_between((100, 0, 1000, 0), (130, 10, 1200, 0)), 20)
        # No tick passed: no division by zero.
        self.assertEqual(bench.busy_pct_between((5, 0, 10, 0), (5, 0, 10, 0)), 0)


class CellLoadTest(unittest.TestCase):
    def test_other_processes_get_what_the_proxy_upstream_and_load_generator_did_not_use(self):
        m0, m1 = (1000, 0, 10_000, 50), (1800, 20, 11_000, 150)
        load = bench.cell_load(m0, m1, proxy_ticks=300, upstream_ticks=200, loadgen_ticks=250, clk_tck=100)
        self.assertEqual(load, {
            "loadgen_cpu_s": 2.5,
            "machine_busy_pct": 90.0,  # (800 busy + 100 irq) / 1000
            "other_cpu_pct": 5.0,  # 800 - 300 - 200 - 250
            "irq_pct": 10.0,
            "steal_pct": 2.0,
        })

    def test_other_cpu_is_never_negative(self):
        load = bench.cell_load((0, 0, 0, 0), (100, 0, 1000, 0), 80, 30, 10, 100)
        self.assertEqual(load["other_cpu_pct"], 0.0)

    def test_a_cell_record_keeps_the_key_order_of_cells_jsonl(self):
        rec = cell("nginx", "c32", rps=50_000, p99=3000)
        self.assertEqual(list(rec)[:6], ["target", "mode", "round", "attempt", "proxy_cpu_s", "upstream_cpu_s"])
        self.assertEqual(list(rec)[-1], "metrics")

    def test_the_quietest_attempt_is_kept(self):
        noisy, quiet, also_noisy = (cell("nginx", "c32", other=9.0, steal=1.0), cell("nginx", "c32", other=2.0),
                                    cell("nginx", "c32", other=2.0))
        self.assertEqual(bench.noise(noisy), 10.0)
        self.assertEqual(bench.keep_quietest(None, noisy), (noisy, None))
        self.assertEqual(bench.keep_quietest(noisy, quiet), (quiet, noisy))
        # A tie keeps the earlier attempt.
        kept, dropped = bench.keep_quietest(quiet, also_noisy)
        self.assertIs(kept, quiet)
        self.assertIs(dropped, also_noisy)


class OutputParsingTest(unittest.TestCase):
    def test_wrk_metrics_come_from_the_wrk_json_line(self):
        out = ("Running 8s test @ http://127.0.0.1:1/api/items/42\n  2 threads and 32 connections\n"
               'WRK_JSON {"requests":400000,"duration_s":8.001,"rps":49993.8,"p50_us":550,"p90_us":930,'
               '"p99_us":3200,"max_us":9010,"mean_us":610.5,"errors":0,"errors_detail":{"connect":0,'
               '"read":0,"write":0,"status":0,"timeout":0}}\n')
        m = bench.wrk_metrics(out)
        self.assertEqual(m["requests"], 400000)
        self.assertEqual(m["p99_us"], 3200)
        self.assertIsNone(bench.wrk_metrics("unable to connect to 127.0.0.1:1 Connection refused\n"))

    def test_oha_metrics_count_bad_statuses_and_transport_errors(self):
        oha = {
            "summary": {"total": 8.0, "requestsPerSec": 1000.0, "slowest": 0.006, "average": 0.0002},
            "latencyPercentiles": {"p50": 0.00019, "p90": 0.00028, "p99": 0.00056, "p99.9": 0.002},
            "statusCodeDistribution": {"200": 7990, "502": 4},
            "errorDistribution": {"connection closed": 6},
        }
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("some warning before the JSON\n" + json.dumps(oha))
        try:
            m = report.oha_metrics(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(m["requests"], 8000)
        self.assertEqual(m["errors"], 10)
        self.assertEqual(m["p99_us"], 560)
        self.assertEqual(m["errors_detail"], {"status": {"502": 4}, "connection closed": 6})

    def test_the_last_cargo_executable_is_the_bench(self):
        out = ("   Compiling portcullis v0.1.0\n    Finished `bench` profile [optimized] target(s) in 1m\n"
               "  Executable benches/session_rss.rs (target/release/deps/session_rss-1a2b)\n")
        self.assertEqual(bench.cargo_executable(out), "target/release/deps/session_rss-1a2b")
        self.assertIsNone(bench.cargo_executable("error: could not compile\n"))

    def test_result_lines_and_redis_memory(self):
        self.assertEqual(bench.result_lines('x\nRESULT {"a": 1}\nRESULT {"b": 2}\n'), ['{"a": 1}', '{"b": 2}'])
        self.assertEqual(bench.redis_used_memory("# Memory\r\nused_memory:1048576\r\nused_memory_human:1M\r\n"),
                         1048576)
        self.assertIsNone(bench.redis_used_memory(""))

    def test_warning_lines_leave_out_the_expected_csrf_rejection(self):
        log = ("INFO started\nWARN csrf_rejected path=/api/items/42\nERROR upstream refused\n"
               "WARN store slow\n")
        self.assertEqual(bench.warning_lines(log), ["ERROR upstream refused", "WARN store slow"])


class PlanTest(unittest.TestCase):
    def test_env_knobs_treat_empty_as_unset(self):
        self.assertEqual(bench.env("BENCH_X", "8", {"BENCH_X": ""}), "8")
        self.assertEqual(bench.env("BENCH_X", "8", {"BENCH_X": "1"}), "1")
        self.assertEqual(bench.env("BENCH_X", "8", {}), "8")

    def test_modes_are_connections_then_rates_unless_named(self):
        self.assertEqual(bench.modes_from("32 256", "1000 10000"), ["c32", "c256", "r1000", "r10000"])
        self.assertEqual(bench.modes_from("32 256", "1000 10000", "c32"), ["c32"])
        with self.assertRaises(ValueError):
            bench.modes_from("32", "1000", "x32")

    def test_targets_keep_their_order_and_need_a_url(self):
        urls = {"direct": "", "nginx": "", "portcullis-memory": "", "portcullis-redis-1m": ""}
        wanted = ["portcullis-memory", "nginx", "portcullis-sqlite"]
        self.assertEqual(bench.targets_to_load(wanted, urls, scale=False), ["nginx", "portcullis-memory"])
        self.assertEqual(bench.targets_to_load(wanted, urls, scale=True),
                         ["nginx", "portcullis-memory", "portcullis-redis-1m"])

    def test_the_order_rotates_from_mode_to_mode_and_on_across_rounds(self):
        got = bench.schedule(["a", "b", "c"], ["c32", "r1000"], 2)
        self.assertEqual(got, [
            (1, "c32", "a"), (1, "c32", "b"), (1, "c32", "c"),
            (1, "r1000", "b"), (1, "r1000", "c"), (1, "r1000", "a"),
            (2, "c32", "c"), (2, "c32", "a"), (2, "c32", "b"),
            (2, "r1000", "a"), (2, "r1000", "b"), (2, "r1000", "c"),
        ])

    def test_load_generator_commands(self):
        h = ["-H", "X-CSRF: 1"]
        self.assertEqual(bench.wrk_command("256", 8, h, "http://u/"),
                         ["wrk", "-t2", "-c256", "-d8s", "--timeout", "5s", "-s", "bench/wrk_report.lua",
                          "-H", "X-CSRF: 1", "http://u/"])
        self.assertEqual(bench.wrk_command(32, 2, h, "http://u/", report_script=False),
                         ["wrk", "-t2", "-c32", "-d2s", "-H", "X-CSRF: 1", "http://u/"])
        self.assertEqual(bench.oha_command("1000", 8, 64, h, "http://u/"),
                         ["oha", "--no-tui", "--output-format", "json", "-z", "8s", "-q", "1000", "-c", "64",
                          "--latency-correction", "-w", "-t", "5s", "-H", "X-CSRF: 1", "http://u/"])

    def test_generated_configs(self):
        nginx = bench.render_template("listen 127.0.0.1:@PROXY_PORT@; server 127.0.0.1:@UPSTREAM_PORT@; "
                                      "pid @RUN@/x.pid;", "/tmp/r", 1, 2)
        self.assertEqual(nginx, "listen 127.0.0.1:2; server 127.0.0.1:1; pid /tmp/r/x.pid;")
        toml = bench.portcullis_config("sqlite", 9, "http://127.0.0.1:5/", "KEY", 7, "/tmp/s.db", 6)
        self.assertIn('listen = "127.0.0.1:9"', toml)
        self.assertIn('store = "sqlite"', toml)
        self.assertIn('upstream = "http://127.0.0.1:7"', toml)
        cfg = bench.provider_config(7, [9, 10])
        self.assertEqual(cfg["clients"][0]["redirect_uris"],
                         ["http://127.0.0.1:9/bff/callback", "http://127.0.0.1:10/bff/callback"])
        self.assertNotIn("workers", toml)
        self.assertIn("\nworkers = 1\n", bench.portcullis_config("memory", 9, "i", "K", 7, "/s", 6, 1))

    def test_profile_sh_gets_its_configs_from_the_same_generator(self):
        import io
        from contextlib import redirect_stdout
        out = io.StringIO()
        with redirect_stdout(out):
            rc = bench.main(["config", "memory", "9", "http://127.0.0.1:5/", "KEY", "7", "/tmp/s.db", "1"])
        self.assertEqual(rc, 0)
        self.assertEqual(out.getvalue(),
                         bench.portcullis_config("memory", 9, "http://127.0.0.1:5/", "KEY", 7, "/tmp/s.db",
                                                 6379, 1))
        out = io.StringIO()
        with redirect_stdout(out):
            rc = bench.main(["provider-config", "7", "9", "10"])
        self.assertEqual(rc, 0)
        self.assertEqual(json.loads(out.getvalue()), bench.provider_config(7, [9, 10]))


def run_cells():
    """One made-up run: memory beats nginx at c32 only; sqlite meets nothing; redis has an
    error; nginx is disturbed at c256."""
    return [report.flatten(c) for c in [
        cell("direct", "c32", rps=100_000, p99=2000, proxy=None),
        cell("nginx", "c32", rps=50_000, p99=3000, proxy=2.0, requests=400_000),
        cell("portcullis-memory", "c32", rps=55_000, p99=2500, proxy=4.0, requests=440_000),
        cell("portcullis-sqlite", "c32", rps=20_000, p99=9000, proxy=3.0, requests=160_000),
        cell("portcullis-redis", "c32", rps=50_000, p99=3000, proxy=4.0, requests=400_000, errors=1),
        cell("nginx", "c256", rps=50_000, p99=10_000, proxy=2.0, requests=400_000, other=9.0),
        cell("portcullis-memory", "c256", rps=40_000, p99=16_000, proxy=4.0, requests=320_000),
        cell("direct", "r1000", rps=1000, p99=300, proxy=None, requests=8000),
        cell("portcullis-memory", "r1000", rps=1000, p99=500, proxy=0.8, requests=8000),
    ]]


class ReportTest(unittest.TestCase):
    def setUp(self):
        self.rows = report.aggregate(run_cells())
        self.targets = ["direct", "nginx", "portcullis-memory", "portcullis-sqlite", "portcullis-redis"]
        self.modes = ["c32", "c256", "r1000"]

    def test_ratios_and_cpu_per_100k_requests(self):
        r = self.rows[("portcullis-memory", "c32")]
        self.assertEqual(r["rps_vs_nginx"], 1.1)
        self.assertEqual(r["rps_vs_direct"], 0.55)
        self.assertEqual(r["proxy_cpu_s_per_100k"], round(4.0 / 440_000 * 1e5, 3))
        self.assertEqual(self.rows[("portcullis-memory", "r1000")]["p99_added_over_direct_ms"], 0.2)
        self.assertIsNone(self.rows[("direct", "c32")]["proxy_cpu_s_per_100k"])

    def test_the_median_over_rounds(self):
        cells = [report.flatten(cell("nginx", "c32", rps=v, p99=1000, rnd=i)) for i, v in enumerate((3, 1, 2))]
        self.assertEqual(report.aggregate(cells)[("nginx", "c32")]["rps"], 2)
        self.assertEqual(report.median([1, 2, 3, 4]), 2.5)

    def test_checks_per_target(self):
        checks = report.checks(self.rows, self.targets)
        memory = {c["check"]: c["met"] for c in checks if c["target"] == "portcullis-memory"}
        self.assertEqual(memory, {"c32 ≥ 1.0× nginx": True, "c256 ≥ 1.0× nginx": False,
                                  "c256 p99 ≤ 1.5× nginx's": False, "r1000 p99 added ≤ 0.3 ms": True,
                                  "0 errors": True})
        redis = {c["check"]: c["met"] for c in checks if c["target"] == "portcullis-redis"}
        self.assertEqual(redis, {"c32 ≥ 1.0× nginx": True, "0 errors": False, "c32 ≥ 0.8× memory store": True})
        c256 = next(c for c in checks if c["check"] == "c256 ≥ 1.0× nginx")
        self.assertIn("⚠ unreliable: nginx c256 disturbed", c256["text"])

    def test_memory_per_session_check(self):
        checks = report.checks(self.rows, ["portcullis-memory"], {"memory_bytes_per_session": 1400.0})
        self.assertIn({"check": "≤ 1,500 bytes RSS per session", "met": True},
                      [{"check": c["check"], "met": c["met"]} for c in checks])

    def test_verdict_lines(self):
        checks = report.checks(self.rows, self.targets)
        per = lambda t: [c for c in checks if c["target"] == t]
        self.assertEqual(report.verdict_line("portcullis-sqlite", per("portcullis-sqlite")),
                         "VERDICT portcullis-sqlite: NOT MET — not met: c32 ≥ 1.0× nginx; met: 0 errors")
        self.assertEqual(report.verdict_line("portcullis-x", []), "VERDICT portcullis-x: not measured")
        all_met = [{"check": "a", "met": True}, {"check": "b", "met": True}]
        self.assertEqual(report.verdict_line("portcullis-y", all_met), "VERDICT portcullis-y: MET (a, b)")

    def test_the_summary_shows_cpu_per_request_next_to_throughput_and_a_verdict_per_store(self):
        lines = report.summary(self.rows, self.modes, self.targets, report.checks(self.rows, self.targets))
        memory = next(l for l in lines if l.startswith("- **portcullis-memory**"))
        self.assertIn("c32: 55,000 req/s = 1.10× nginx, CPU 0.91 s/100k req (nginx 0.50 s)", memory)
        for t in ("portcullis-memory", "portcullis-sqlite", "portcullis-redis"):
            self.assertEqual(sum(1 for l in lines if f"VERDICT {t}:" in l), 1, t)
        self.assertFalse(any("VERDICT nginx" in l or "VERDICT direct" in l for l in lines))


class ReportFilesTest(unittest.TestCase):
    def test_a_run_directory_becomes_latest_files_and_a_page_without_repeated_sections(self):
        with tempfile.TemporaryDirectory() as d:
            run, out = os.path.join(d, "run"), os.path.join(d, "out")
            os.makedirs(run)
            with open(os.path.join(run, "cells.jsonl"), "w") as f:
                for c in run_cells():
                    f.write(json.dumps(c) + "\n")
            with open(os.path.join(run, "machine.json"), "w") as f:
                json.dump({"nproc": 2, "duration_s": 1, "rounds": 1}, f)
            sessions = {"memory_bytes_per_session": 3000.0, "memory_mib_per_100k_sessions": 286.1,
                        "sqlite_bytes_per_session": 2900.0, "sqlite_sessions": 20000,
                        "payload_bytes_per_session": 2384, "token_bytes": {"access": 900, "refresh": 43, "id": 1000},
                        "sqlite_cache_bytes_per_session": 3084.0}
            with open(os.path.join(run, "sessions.json"), "w") as f:
                json.dump(sessions, f)
            page = os.path.join(d, "performance.md")
            template = os.path.join(os.path.dirname(os.path.abspath(__file__)), "performance.md.in")
            argv, environ = sys.argv, dict(os.environ)
            sys.argv = ["report.py", run, out]
            os.environ["BENCH_DOCS"] = f"{template}:{page}"
            try:
                with open(os.devnull, "w") as null:
                    stdout, sys.stdout = sys.stdout, null
                    try:
                        report.main()
                    finally:
                        sys.stdout = stdout
            finally:
                sys.argv = argv
                os.environ.clear()
                os.environ.update(environ)
            for name in ("latest.json", "latest.md", "latest.svg"):
                self.assertTrue(os.path.exists(os.path.join(out, name)), name)
            latest = json.loads(slurp(os.path.join(out, "latest.json")))
            self.assertTrue(latest["verdict_by_target"]["portcullis-sqlite"].startswith(
                "VERDICT portcullis-sqlite: NOT MET"))
            text = slurp(page)
            self.assertNotIn("@@", text)
            self.assertNotIn("\n\n\n", text)
            headings = [l for l in text.splitlines() if l.startswith("#")]
            self.assertEqual(len(headings), len(set(headings)), headings)
            # Each figure in one place: the memory figures under "Memory per session" only.
            self.assertEqual(text.count("286.1 MiB"), 1)
            self.assertEqual(text.count("VERDICT portcullis-memory"), 1)
            self.assertIn("CPU 0.91 s/100k req", text)
            self.assertIn("3084 bytes of RSS per cached session", text)
            md = slurp(os.path.join(out, "latest.md"))
            self.assertIn("VERDICT portcullis-redis: NOT MET", md)
            self.assertEqual(md.count("286.1 MiB"), 1)

    def test_every_repository_path_the_page_links_to_exists(self):
        here = os.path.dirname(os.path.abspath(__file__))
        text = slurp(os.path.join(here, "performance.md.in"))
        links = re.findall(r"\]\((\.\./[^)#]+)\)", text)
        self.assertTrue(links)
        for link in links:
            path = os.path.normpath(os.path.join(here, "..", "docs", link))
            self.assertTrue(os.path.exists(path), link)


if __name__ == "__main__":
    unittest.main()
