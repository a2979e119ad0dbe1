#!/usr/bin/env python3
"""bench/node-snapshot: does a V8 startup snapshot shorten the Node.js bootstrap?

    bench/node-snapshot/run.py [--iterations 50] [--out docs/benchmarks.md]

Builds a startup snapshot (`node --snapshot-blob … --build-snapshot`) of a
script that loads exactly the modules lampyr's Node.js bootstrap loads at
start-up (fs, net, path, util, module, url, async_hooks), then times, in
one run and interleaved, N starts of:

  * `node -e 0` (the floor),
  * `node script.cjs`: the same modules loaded the usual way,
  * `node --snapshot-blob snapshot.blob`: the modules deserialised from the
    snapshot,

each with lampyr's instance environment, and writes p50 / p99 to the
`<!-- bench:node-snapshot:start -->` section of docs/benchmarks.md.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
START, END = "<!-- bench:node-snapshot:start -->", "<!-- bench:node-snapshot:end -->"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp"}

MODULES = """const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const util = require('node:util');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');
const { AsyncLocalStorage } = require('node:async_hooks');
globalThis.__lampyr = { fs, net, path, util, createRequire, pathToFileURL, als: new AsyncLocalStorage() };
"""


def pct(xs, p):
    xs = sorted(xs)
    k = max(1, -(-len(xs) * p // 100))
    return xs[int(k) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = ap.parse_args()
    node = shutil.which("node")
    if not node:
        sys.exit("bench/node-snapshot: node is not on PATH")
    work = tempfile.mkdtemp(prefix="lampyr-node-snapshot.")
    try:
        with open(os.path.join(work, "package.json"), "w") as f:
            f.write('{"type": "commonjs"}\n')
        plain = os.path.join(work, "plain.cjs")
        with open(plain, "w") as f:
            f.write(MODULES + "process.exit(0);\n")
        src = os.path.join(work, "snapshot.cjs")
        with open(src, "w") as f:
            f.write(MODULES + "require('node:v8').startupSnapshot.setDeserializeMainFunction(() => process.exit(0));\n")
        blob = os.path.join(work, "snapshot.blob")
        subprocess.run([node, "--snapshot-blob", blob, "--build-snapshot", src], env=ENV, check=True,
                       cwd=work, stderr=subprocess.DEVNULL)
        cases = {
            "`node -e 0`": [node, "-e", "0"],
            "bootstrap modules, loaded": [node, plain],
            "bootstrap modules, from a snapshot": [node, "--snapshot-blob", blob],
        }
        times = {k: [] for k in cases}
        for _ in range(args.iterations):
            for k, cmd in cases.items():
                t = time.perf_counter()
                subprocess.run(cmd, env=ENV, cwd=work, check=True)
                times[k].append((time.perf_counter() - t) * 1000)
        size = os.path.getsize(blob)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    loaded = pct(times["bootstrap modules, loaded"], 50)
    snap = pct(times["bootstrap modules, from a snapshot"], 50)
    verdict = ("The snapshot is faster by %.1f ms at p50, so it would pay." % (loaded - snap)) if snap < loaded else (
        "The snapshot is slower by %.1f ms at p50: deserialising its %.1f MB costs more than loading these few "
        "modules, so lampyr's bootstrap does not use one." % (snap - loaded, size / 1e6))
    lines = [
        START,
        "## Node.js startup snapshot (`bench/node-snapshot`)",
        "",
        "Whether a V8 startup snapshot (`node --snapshot-blob … --build-snapshot`) of the modules lampyr's Node.js "
        "bootstrap loads shortens the start of a Node.js instance. %d interleaved runs of each command, with lampyr's "
        "instance environment; time from spawn to exit, measured by the script; nearest-rank percentiles." % args.iterations,
        "",
        "Machine: %d CPUs, Linux %s, Node.js %s; run %s UTC." % (os.cpu_count(), os.uname().release, version,
                                                          datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")),
        "",
        "| command | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
    ]
    for k, xs in times.items():
        lines.append("| %s | %.1f | %.1f |" % (k, pct(xs, 50), pct(xs, 99)))
    lines += ["", verdict, "", "Reproduce: `bench/node-snapshot/run.py`.", END]
    section = "\n".join(lines)
    text = open(args.out).read() if os.path.exists(args.out) else "# lampyr benchmarks\n"
    if START in text and END in text:
        a, b = text.index(START), text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(section)


if __name__ == "__main__":
    main()
