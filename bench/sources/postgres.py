#!/usr/bin/env python3
"""bench/sources/postgres.py: PostgreSQL row changes to a function, against the database's own delivery.

In one run, on a throwaway PostgreSQL cluster (wal_level = logical,
wal2json, 127.0.0.1 only) and a release build of lampyr:
  * lag: rows inserted one transaction each at a steady pace; for each, the
    time from its commit (the commit timestamp wal2json reports) to the
    start of the function's handler, p50 and p99;
  * reference: the same commits read by a plain poller of a second slot
    (psql, `pg_logical_slot_get_changes` at the same poll interval): the
    time from commit to the row reaching the poller, p50 and p99; what any
    reader polling the slot gets, before lampyr does anything;
  * throughput: a burst of single-row transactions; events/s from the first
    commit to the last handler start.
At batch sizes 1 and 10. The function is a no-op that reports its start
time to a small HTTP server the script runs on 127.0.0.1. The section
`<!-- bench:sources-postgres:start -->` ... `:end -->` of docs/benchmarks.md
is rewritten. Needs PostgreSQL with wal2json, psql, node and cargo.
"""

import argparse
import glob
import http.server
import json
import os
import platform
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import free_port, logger, start_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release", "lampyr")
START, END = "<!-- bench:sources-postgres:start -->", "<!-- bench:sources-postgres:end -->"
HANDLER = """
const http = require("http");
const agent = new http.Agent({ keepAlive: true });
exports.handler = async (event) => {
  const started = performance.timeOrigin + performance.now();
  const body = JSON.stringify({ started, commits: event.Records.map((r) => r.dbChange.ApproximateCreationDateTime),
    ids: event.Records.map((r) => r.dbChange.Keys.id) });
  await new Promise((resolve) => {
    const req = http.request({ host: "127.0.0.1", port: Number(process.env.LEDGER_PORT), method: "POST", path: "/", agent },
      (res) => { res.resume(); res.on("end", resolve); });
    req.on("error", resolve);
    req.end(body);
  });
  return null;
};
"""


log, die = logger("bench/sources/postgres")



class Cluster:
    """initdb + pg_ctl in a temporary directory, as the postgres user when root."""

    def __init__(self, work):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not bins:
            die("PostgreSQL is not installed (apt-get install -y postgresql postgresql-NN-wal2json)")
        self.bin = os.path.dirname(bins[-1])
        if not os.path.exists(os.path.join(os.path.dirname(self.bin), "lib", "wal2json.so")):
            die("the wal2json plugin is not installed (apt-get install -y postgresql-NN-wal2json)")
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        self.root = os.geteuid() == 0
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chown(work, pw.pw_uid, pw.pw_gid)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.run("initdb", "-D", self.data(), "-U", "postgres", "-A", "trust", "--no-sync")
        self.run("pg_ctl", "-D", self.data(), "-w", "-t", "60", "-l", os.path.join(self.dir, "log"), "-o",
                 f"-c wal_level=logical -c listen_addresses=127.0.0.1 -p {self.port} "
                 f"-c unix_socket_directories={self.dir} -c max_replication_slots=8", "start")
        self.started = True
        self.version = subprocess.run([os.path.join(self.bin, "postgres"), "--version"],
                                      capture_output=True, text=True).stdout.strip()

    def data(self):
        return os.path.join(self.dir, "data")

    def run(self, prog, *args):
        cmd = [os.path.join(self.bin, prog), *args]
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, cwd=self.dir, stdout=subprocess.DEVNULL)

    def psql_args(self):
        return [os.path.join(self.bin, "psql"), "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                "-d", "postgres", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]

    def psql(self, sql):
        return subprocess.run([*self.psql_args(), "-c", sql], check=True, capture_output=True, text=True).stdout.strip()

    def dsn(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self):
        if getattr(self, "started", False):
            self.run("pg_ctl", "-D", self.data(), "-w", "-m", "immediate", "stop")


class Ledger:
    """What the function reports: (handler start, [commit times], [ids]) per invocation."""

    def __init__(self):
        runs = self.runs = []
        lock = self.lock = threading.Lock()

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    runs.append(json.loads(body))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self):
        with self.lock:
            return {i for r in self.runs for i in r["ids"]}

    def take(self):
        with self.lock:
            out, self.runs[:] = list(self.runs), []
        return out


class Reference:
    """A plain poller of its own slot over one psql session: commit → seen."""

    def __init__(self, cluster, slot, interval):
        self.lags, self.seen, self.stop_flag = [], set(), False
        cluster.psql(f"SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'wal2json')")
        self.p = subprocess.Popen(cluster.psql_args(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.slot, self.interval = slot, interval
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        q = (f"SELECT data FROM pg_logical_slot_get_changes('{self.slot}', NULL, NULL, 'format-version', '2', "
             "'include-timestamp', '1', 'add-tables', 'public.bench'); SELECT '#end';\n")
        while not self.stop_flag:
            self.p.stdin.write(q)
            self.p.stdin.flush()
            got = 0
            for line in self.p.stdout:
                line = line.strip()
                if line == "#end":
                    break
                now = time.time()
                v = json.loads(line)
                if v.get("action") == "I":
                    got += 1
                    ts = parse_ts(v["timestamp"])
                    ident = next(c["value"] for c in v["columns"] if c["name"] == "id")
                    self.seen.add(ident)
                    self.lags.append((ident, (now - ts) * 1000))
            if not got:
                time.sleep(self.interval)

    def close(self):
        self.stop_flag = True
        self.t.join(timeout=10)
        self.p.stdin.close()
        self.p.wait(timeout=10)


def parse_ts(ts):
    # "2026-12-05 23:52:21.622149+00"
    from datetime import datetime
    return datetime.strptime(ts.replace("+00", "+0000"), "%Y-%m-%d %H:%M:%S.%f%z").timestamp()


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def api(url, token, method, path, body=None):
    req = urllib.request.Request(url + "/api/v1" + path, data=body, method=method)
    req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def wait(what, cond, limit=120):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > limit:
            die(f"timed out waiting for {what}")
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200, help="rows inserted at a steady pace per batch size, for the lag (default 200)")
    ap.add_argument("--rate", type=float, default=20, help="rows per second of the paced inserts (default 20)")
    ap.add_argument("--burst", type=int, default=2000, help="single-row transactions of the throughput burst (default 2000)")
    ap.add_argument("--poll-interval", default="10ms", help="the trigger's and the reference's poll interval (default 10ms)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/lampyr")
    ap.add_argument("--bin", default=BIN, help="the lampyr executable (default target/release/lampyr)")
    a = ap.parse_args()
    m = re.fullmatch(r"(\d+)ms", a.poll_interval)
    if not m:
        die("--poll-interval: write it in milliseconds, e.g. 10ms")
    interval = int(m.group(1)) / 1000
    for tool in ("node", "cargo"):
        if not shutil.which(tool):
            die(f"{tool} is not installed")
    if not a.no_build:
        log("building lampyr (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "lampyr", "--bins"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="lampyr-bench-pg.")
    os.chmod(work, 0o755)
    server = cluster = ref = None
    results = {}
    try:
        cluster = Cluster(work)
        pg = cluster.version
        cluster.psql("CREATE TABLE bench (id int PRIMARY KEY)")
        ledger = Ledger()
        data = os.path.join(work, "data")
        server, url, token = start_server(a.bin, data, die)
        next_id = 1
        for batch in (1, 10):
            name = f"noop{batch}"
            fn = os.path.join(work, name)
            os.makedirs(fn)
            open(os.path.join(fn, "index.js"), "w").write(HANDLER)
            open(os.path.join(fn, "lampyr.toml"), "w").write(
                f'name = "{name}"\nruntime = "nodejs"\nhandler = "index.handler"\nnetwork = "host"\n'
                f'max_instances = 1\nconcurrency = 16\n[env]\nLEDGER_PORT = "{ledger.port}"\n'
                f'[[triggers]]\ntype = "postgres"\ndsn = "{cluster.dsn()}"\ntables = ["bench"]\n'
                f'batch_size = {batch}\npoll_interval = "{a.poll_interval}"\n')
            out = subprocess.run([a.bin, "deploy", fn], env={**os.environ, "LAMPYR_URL": url, "LAMPYR_DATA_DIR": data},
                                 capture_output=True, text=True)
            if out.returncode != 0:
                die(f"deploy failed: {out.stderr}")
            slot = f"lampyr_{name}_postgres"
            wait("the trigger's slot", lambda: cluster.psql(
                f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'") == "1")
            ref = Reference(cluster, f"reference{batch}", interval)
            # Warm-up: the instance starts and stays warm.
            cluster.psql(f"INSERT INTO bench VALUES ({next_id})")
            wait("the warm-up row", lambda: next_id in ledger.ids() and next_id in ref.seen)
            next_id += 1
            ledger.take()
            ref.lags.clear()
            # Lag: one row per transaction at a steady pace, over one psql session.
            log(f"batch size {batch}: {a.rows} rows at {a.rate:.0f}/s")
            p = subprocess.Popen(cluster.psql_args(), stdin=subprocess.PIPE, text=True)
            first = next_id
            for i in range(a.rows):
                p.stdin.write(f"INSERT INTO bench VALUES ({next_id});\n")
                p.stdin.flush()
                next_id += 1
                time.sleep(1 / a.rate)
            p.stdin.close()
            p.wait()
            want = set(range(first, next_id))
            wait("every paced row", lambda: want <= ledger.ids() and want <= ref.seen)
            runs = ledger.take()
            lags = [(r["started"] / 1000 - c) * 1000 for r in runs for c in r["commits"]]
            ref_lags = [l for i, l in ref.lags if i in want]
            # Throughput: a burst of single-row transactions in one psql session.
            log(f"batch size {batch}: a burst of {a.burst} single-row transactions")
            sql = "".join(f"INSERT INTO bench VALUES ({i});\n" for i in range(next_id, next_id + a.burst))
            first = next_id
            next_id += a.burst
            want = set(range(first, next_id))
            subprocess.run(cluster.psql_args(), input=sql, text=True, check=True)
            wait("every burst row", lambda: want <= ledger.ids(), limit=600)
            runs = ledger.take()
            commits = [c for r in runs for c in r["commits"]]
            t0 = min(commits)
            t1 = max(r["started"] / 1000 for r in runs)
            results[batch] = {
                "p50": pct(lags, 50), "p99": pct(lags, 99), "n": len(lags),
                "ref_p50": pct(ref_lags, 50), "ref_p99": pct(ref_lags, 99), "ref_n": len(ref_lags),
                "eps": a.burst / (t1 - t0), "invocations": len(runs),
            }
            log(f"batch size {batch}: {results[batch]}")
            ref.close()
            ref = None
            cluster.psql(f"SELECT pg_drop_replication_slot('reference{batch}')")
            api(url, token, "DELETE", f"/functions/{name}")
    finally:
        if ref:
            ref.close()
        if server:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load = os.getloadavg()[0]
    lines = [START, "## PostgreSQL row changes (`bench/sources/postgres.py`)", "",
             f"A throwaway PostgreSQL cluster ({pg}, wal2json, 127.0.0.1) and a no-op Node.js function "
             f"(`max_instances = 1`, `concurrency = 16`) with a postgres trigger on one table, `poll_interval = \"{a.poll_interval}\"`. "
             f"**Lag**: {a.rows} rows inserted one transaction each at {a.rate:.0f}/s; for each, from its commit (the commit "
             "timestamp wal2json reports) to the start of the handler. **Reference**, in the same run on the same commits: "
             f"a plain poller of a second slot (one psql session, `pg_logical_slot_get_changes` every {a.poll_interval} when idle), "
             "from commit to the row in its hands: the database's own delivery at that poll interval, which includes on average "
             "half a poll interval of waiting. lampyr's added lag is the difference at p50. **Throughput**: a burst of "
             f"{a.burst} single-row transactions, events/s from the first commit to the last handler start. The handler "
             "reports its start time to the script over loopback HTTP (its only work).", "",
             f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, load average {load:.1f} at the end; "
             f"lampyr {commit}; run "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| batch size | lag p50 ms | lag p99 ms | reference p50 ms | reference p99 ms | lampyr adds (p50) ms | events/s (burst) | invocations |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in (1, 10):
        r = results[b]
        lines.append(f"| {b} | {r['p50']:.1f} | {r['p99']:.1f} | {r['ref_p50']:.1f} | {r['ref_p99']:.1f} | "
                     f"**{r['p50'] - r['ref_p50']:.1f}** | {r['eps']:.0f} | {r['invocations']} |")
    added = results[1]["p50"] - results[1]["ref_p50"]
    met = added <= 5
    lines += ["", f"Target: lampyr adds ≤ 5 ms p50 to the database's own delivery at batch size 1: {added:.1f} ms, "
              f"**{'met' if met else 'not met'}**.", "",
              "Reproduce: `bench/sources/postgres.py` (see `bench/README.md`).", END]
    section = "\n".join(lines)
    print(section)
    text = open(a.out).read() if os.path.exists(a.out) else "# Benchmarks\n"
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(a.out, "w").write(text)
    log(f"wrote the sources-postgres section of {a.out}")


if __name__ == "__main__":
    main()
