#!/usr/bin/env python3
"""bench/coldstart/real.py: cold starts of real functions against the bare interpreter.

    bench/coldstart/real.py                  # 30 cold starts per function
    bench/coldstart/real.py --iterations 50 --no-build

The hello worlds of bench/coldstart/run.py load nothing. Real functions do:
this measures the two of bench/common.py (Node.js requiring
@aws-sdk/client-s3, lodash and express; Python importing numpy, requests and
pydantic, their packages installed into the function from npm and PyPI),
deployed with `memory_mb = 512` and `idle_timeout = "100ms"` into
`lampyr serve` (release build, default configuration: sandbox, pools,
Python's zygote). Before each sample it waits until the function has no
instance and the runtime's pool is ready, then times one GET on a fresh
connection and reads its Server-Timing phases. In the same run, interleaved,
it spawns the bare interpreter serving the same handler file
(bench/coldstart/bare-*-server.py|js) and times spawn -> first response.
p50 and p99 of each, their ratio, and the median phases replace the
`<!-- bench:coldstart-real:start -->` section of docs/benchmarks.md (or --out).
Run as root (the sandbox).
"""

import argparse
import datetime
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from common import (  # noqa: E402
    REAL_FUNCTIONS, Lampyr, commit, free_port, logger, write_function, write_section)

BIN = os.environ.get("LAMPYR_BIN", os.path.join(ROOT, "target", "release", "lampyr"))
MARK_START = "<!-- bench:coldstart-real:start -->"
MARK_END = "<!-- bench:coldstart-real:end -->"
PHASES = ["queue", "code", "sandbox", "runtime", "init", "exec"]
# The environment lampyr gives its instances (see run.py).
INSTANCE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp",
    "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
}
log, die = logger("coldstart-real")


def pct(samples, p):
    s = sorted(samples)
    return s[max(1, -(-len(s) * p // 100)) - 1]


def get(host, port, path, timeout=30):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
    finally:
        c.close()


class Server(Lampyr):
    def cold(self, name, runtime):
        """One cold start: (client ms, x-lampyr-start, phases in ms)."""
        self.wait(f"{name} to have no instance", lambda: self.api("/functions/" + name).get("instances") == 0)
        self.wait(f"the {runtime} pool", lambda: any(
            p["runtime"] == runtime and p.get("ready", 0) >= 1 for p in self.api("/pools")))
        t0 = time.perf_counter()
        status, headers, body = get("127.0.0.1", self.port, "/fn/" + name)
        ms = (time.perf_counter() - t0) * 1000
        if status != 200:
            die(f"{name} answered {status}: {body[:300]!r}")
        phases = {}
        for part in headers.get("server-timing", "").split(","):
            bits = part.strip().split(";dur=")
            if len(bits) == 2:
                phases[bits[0]] = float(bits[1])
        return ms, headers.get("x-lampyr-start"), phases


def bare_once(argv):
    """ms from spawning argv (the port filled in) to its first 200."""
    port = free_port()
    args = [a.replace("{PORT}", str(port)) for a in argv]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=INSTANCE_ENV, cwd="/tmp")
    try:
        while True:
            try:
                status, _, body = get("127.0.0.1", port, "/")
                break
            except ConnectionRefusedError:
                pass
            if p.poll() is not None:
                die(f"{' '.join(args)} exited: {p.stderr.read().decode(errors='replace')[-500:]}")
            if time.perf_counter() - t0 > 30:
                die(f"{' '.join(args)} did not answer within 30 s")
            time.sleep(0.0002)
        if status != 200:
            die(f"{' '.join(args)} answered {status}: {body[:300]!r}")
        return (time.perf_counter() - t0) * 1000
    finally:
        p.kill()
        p.wait()


def interpreter(name):
    path = shutil.which(name)
    if not path:
        die(f"{name} is not on PATH")
    return os.path.realpath(path) if name == "node" else path


def report(rows, args):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        MARK_START,
        "## Cold starts of real functions (`bench/coldstart/real.py`)",
        "",
        f"Run {now} on commit `{commit()}`, {args.iterations} cold starts per function, interleaved with as many "
        "spawns of the bare interpreter serving the same handler file (spawn to first response). Functions: "
        "Node.js requiring `@aws-sdk/client-s3`, `lodash` and `express`; Python importing `numpy`, `requests` "
        "and `pydantic`; `memory_mb = 512`, default server configuration (pools on).",
        "",
        "| function | start | lampyr p50 ms | lampyr p99 ms | bare p50 ms | bare p99 ms | lampyr / bare p50 | "
        + " | ".join(f"{p} p50" for p in PHASES) + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in PHASES) + " |",
    ]
    for r in rows:
        phase = [f"{pct(r['phases'][p], 50):.1f}" if r["phases"][p] else "—" for p in PHASES]
        lines.append(
            f"| {r['name']} | {r['start']} | {pct(r['lampyr'], 50):.1f} | {pct(r['lampyr'], 99):.1f} | "
            f"{pct(r['bare'], 50):.1f} | {pct(r['bare'], 99):.1f} | **{pct(r['lampyr'], 50) / pct(r['bare'], 50):.2f}×** | "
            + " | ".join(phase) + " |")
    lines += [
        "",
        "Target (issue: real cold starts): p50 at most 10 ms end to end, at most 0.05× the bare interpreter's.",
        MARK_END,
    ]
    text = "\n".join(lines)
    write_section(args.out, MARK_START, MARK_END, text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = p.parse_args()
    if os.geteuid() != 0:
        die("run as root: lampyr's sandbox needs it")
    if not args.no_build:
        log("building lampyr (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "lampyr"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="lampyr-coldstart-real-")
    srv = None
    try:
        srv = Server(BIN, work, die)
        rows = []
        for name, fn in REAL_FUNCTIONS.items():
            runtime, file = fn[0], fn[1]
            d = write_function(os.path.join(work, name), name, fn, 'idle_timeout = "100ms"\n', log)
            srv.deploy(d)
            handler = os.path.join(d, file)
            if runtime == "nodejs":
                bare = [interpreter("node"), os.path.join(HERE, "bare-node-server.js"), "{PORT}", handler]
            else:
                bare = [interpreter("python3"), "-s", "-B", os.path.join(HERE, "bare-python-server.py"), "{PORT}", handler]
            row = {"name": name, "lampyr": [], "bare": [], "phases": {ph: [] for ph in PHASES}, "start": set()}
            for i in range(args.iterations):
                ms, start, phases = srv.cold(name, runtime)
                row["lampyr"].append(ms)
                row["start"].add(start)
                for ph in PHASES:
                    if ph in phases:
                        row["phases"][ph].append(phases[ph])
                row["bare"].append(bare_once(bare))
            row["start"] = ", ".join(sorted(s or "?" for s in row["start"]))
            log(f"{name}: lampyr p50 {pct(row['lampyr'], 50):.1f} ms, bare p50 {pct(row['bare'], 50):.1f} ms")
            rows.append(row)
        report(rows, args)
    finally:
        if srv:
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
