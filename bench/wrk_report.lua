-- wrk script for bench/run.sh: at the end of a run, prints one line
--   WRK_JSON {...}
-- with requests, duration, req/s, latency percentiles (microseconds) and errors.
-- Non-2xx/3xx answers count as errors (wrk's "status" errors).
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"errors":%d,"errors_detail":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    errors, e.connect, e.read, e.write, e.status, e.timeout))
end
