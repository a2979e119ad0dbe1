#!/usr/bin/env python3
"""bench/density: how many idle warm instances fit in a gigabyte.

    bench/density/run.py                 # 40 instances per function
    bench/density/run.py --instances 100 --functions hello-node,hello-python

For each function (hello worlds in Node.js and Python, and the two "real"
functions: Node.js requiring @aws-sdk/client-s3, lodash and express,
Python importing numpy, requests and pydantic, their packages installed
into the function from npm and PyPI), it starts `lampyr serve` (release
build, default configuration: sandbox, pools, Python's zygote) with a fresh
data directory, waits for the pools to be ready, and reads the PSS (the
proportional set size: shared pages divided among the processes sharing
them) of the server and every process under it. It then deploys the
function with `min_instances = N`, waits until N instances are loaded and
the pools are ready again, calls the function N times, and reads the PSS
again. The difference divided by N is what one more idle warm instance
costs (pool growth included); 1024 MiB divided by it is how many fit in a
gigabyte. The server's own RSS is reported beside it.

The results replace the `<!-- bench:density:start -->` ...
`<!-- bench:density:end -->` section of docs/benchmarks.md (or --out).
Run as root (PSS of other users' processes; the sandbox).
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from common import (  # noqa: E402
    HELLO_NODE, HELLO_PYTHON, REAL_FUNCTIONS, Lampyr, commit, logger, write_function, write_section)

BIN = os.environ.get("LAMPYR_BIN", os.path.join(ROOT, "target", "release", "lampyr"))
MARK_START = "<!-- bench:density:start -->"
MARK_END = "<!-- bench:density:end -->"
log, die = logger("density")

# name -> (runtime, handler file, source, memory_mb, packages)
FUNCTIONS = {
    "hello-node": ("nodejs", "index.js", HELLO_NODE, 128, None),
    "hello-python": ("python", "index.py", HELLO_PYTHON, 128, None),
    "real-node": REAL_FUNCTIONS["real-node"],
    "real-python": REAL_FUNCTIONS["real-python"],
}


def function_dir(tmp, name, instances):
    return write_function(
        os.path.join(tmp, "fn-" + name), name, FUNCTIONS[name],
        f"min_instances = {instances}\nmax_instances = {instances}\nidle_timeout = \"1h\"\n", log)


def descendants(pid):
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kib(pid, path, field):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_pss_kib(pid):
    procs = descendants(pid)
    return sum(kib(p, "smaps_rollup", "Pss:") for p in procs), len(procs)


class Server(Lampyr):
    def __init__(self, tmp):
        super().__init__(BIN, tmp, die)

    def pools_ready(self):
        return all(p.get("ready", 0) >= p.get("target", 1) for p in self.api("/pools"))

    def call(self, name):
        with urllib.request.urlopen(self.url + "/fn/" + name, timeout=30) as r:
            return r.status


def settle(srv):
    """Waits until the PSS total stops moving (pools refilled, instances idle)."""
    last = None
    for _ in range(50):
        time.sleep(0.5)
        now, _ = total_pss_kib(srv.proc.pid)
        if last is not None and abs(now - last) < 512:
            return now
        last = now
    return last


def measure(name, n, tmp):
    srv = Server(tmp)
    try:
        srv.wait("the pools", srv.pools_ready, pause=0.2)
        base = settle(srv)
        base_procs = len(descendants(srv.proc.pid))
        server_rss = kib(srv.proc.pid, "status", "VmRSS:")
        fn = function_dir(tmp, name, n)
        srv.deploy(fn)
        srv.wait(f"{n} instances of {name}", lambda: srv.api("/functions/" + name).get("instances", 0) >= n)
        for _ in range(n):
            if srv.call(name) != 200:
                die(f"{name} did not answer 200")
        srv.wait("the pools", srv.pools_ready, pause=0.2)
        loaded = settle(srv)
        procs = len(descendants(srv.proc.pid))
        server_rss_after = kib(srv.proc.pid, "status", "VmRSS:")
        per = (loaded - base) / n
        return {
            "function": name, "instances": n, "base_mib": base / 1024, "loaded_mib": loaded / 1024,
            "per_instance_mib": per / 1024, "per_gb": int(1024 * 1024 / per) if per > 0 else 0,
            "server_rss_mib": server_rss / 1024, "server_rss_after_mib": server_rss_after / 1024,
            "processes": procs - base_procs,
        }
    finally:
        srv.stop()


def report(rows, args):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        MARK_START,
        "## Density: idle warm instances per gigabyte",
        "",
        f"Run {now} on commit `{commit()}` by `bench/density/run.py --instances {args.instances}`; "
        f"{os.cpu_count()} CPUs. Default server configuration (sandbox, pools, Python's zygote). "
        "Each function is deployed with `min_instances = N` into a fresh server whose pools were ready, "
        "called N times, and measured once the pools are ready again: the PSS of the server and every "
        "process under it, minus the same before the deploy, divided by N (pool growth included).",
        "",
        "| function | N | PSS per instance | instances per GB | processes added | server RSS before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['function']} | {r['instances']} | {r['per_instance_mib']:.2f} MiB | {r['per_gb']} | "
            f"{r['processes']} | {r['server_rss_mib']:.1f} → {r['server_rss_after_mib']:.1f} MiB |")
    lines += [
        "",
        "Targets (issue: density): at least 200 idle Node.js hello-world instances and 400 Python ones per GB of PSS.",
        MARK_END,
    ]
    text = "\n".join(lines)
    write_section(args.out, MARK_START, MARK_END, text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=40)
    p.add_argument("--functions", default=",".join(FUNCTIONS))
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = p.parse_args()
    if os.geteuid() != 0:
        die("run as root: the PSS of the sandboxed instances and the sandbox itself need it")
    if not args.no_build:
        log("building lampyr (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "lampyr"], cwd=ROOT, check=True)
    names = [f for f in args.functions.split(",") if f]
    for f in names:
        if f not in FUNCTIONS:
            die(f"unknown function {f}: choose among {', '.join(FUNCTIONS)}")
    rows = []
    tmp = tempfile.mkdtemp(prefix="lampyr-density-")
    try:
        for name in names:
            log(f"{name}: {args.instances} instances")
            r = measure(name, args.instances, tmp)
            log(f"{name}: {r['per_instance_mib']:.2f} MiB per instance, {r['per_gb']} per GB")
            rows.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, args)


if __name__ == "__main__":
    main()
