-- wrk report hook for bench/warm/run.sh.
--
-- Defines only done(): wrk stays on its fast path (no per-request Lua). At the
-- end of a run it prints one machine-readable line with the exact numbers from
-- wrk's own counters and latency histogram (latencies in microseconds):
--
--   BENCH requests=N duration_us=N p50_us=N p99_us=N connect=N read=N write=N status=N timeout=N
--
-- `status` counts responses with a status above 399 (wrk's definition);
-- run.sh fails the benchmark if any error counter is non-zero.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
