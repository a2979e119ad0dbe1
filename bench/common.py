"""What lampyr's benchmark scripts share: their log lines, a free loopback
port, starting `lampyr serve` on loopback (its address read from its log,
its management token from its data directory), and the functions they
deploy: hello worlds, and two real functions with their packages from npm
and PyPI (installed once under target/bench-deps)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def logger(tag):
    """`log(msg)` and `die(msg)` that print `[tag] msg` to stderr."""

    def log(msg):
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    def die(msg):
        log(f"error: {msg}")
        sys.exit(1)

    return log, die


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(binary, data, die, args=()):
    """Starts `binary serve` on 127.0.0.1 with data directory `data`; returns
    the process (its log drained in the background), its URL and its token."""
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LAMPYR_LOG": "info", "NO_COLOR": "1"})
    url = None
    for line in server.stderr:
        m = re.search(r"lampyr listening on (http://[0-9.:]+)", line)
        if m:
            url = m.group(1)
            break
    if not url:
        die("lampyr did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    token = open(os.path.join(data, "token")).read().strip()
    return server, url, token


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPS = os.path.join(ROOT, "target", "bench-deps")

HELLO_NODE = "exports.handler = async () => ({ statusCode: 200, body: 'Hello World' });\n"
HELLO_PYTHON = "def handler(event, context):\n    return {'statusCode': 200, 'body': 'Hello World'}\n"
REAL_NODE = """const { S3Client } = require('@aws-sdk/client-s3');
const _ = require('lodash');
const express = require('express');
const s3 = new S3Client({ region: 'us-east-1' });
const app = express();
exports.handler = async (event) => ({
  statusCode: 200,
  body: _.join(['real', typeof s3.send, typeof app.listen], ' '),
});
"""
REAL_PYTHON = """import numpy
import requests
import pydantic

class Item(pydantic.BaseModel):
    name: str
    size: int

def handler(event, context):
    item = Item(name='real', size=int(numpy.arange(4).sum()))
    return {'statusCode': 200, 'body': item.model_dump_json() + ' ' + requests.__version__}
"""

# The usual shape of a real function: name -> (runtime, handler file,
# source, memory_mb, packages).
REAL_FUNCTIONS = {
    "real-node": ("nodejs", "index.js", REAL_NODE, 512, "npm"),
    "real-python": ("python", "index.py", REAL_PYTHON, 512, "pip"),
}


def install_packages(kind, log):
    """The real functions' packages, installed once under target/bench-deps:
    (installed path, name in the function's directory) pairs."""
    if kind == "npm":
        d = os.path.join(DEPS, "node-real")
        if not os.path.exists(os.path.join(d, ".complete")):
            log("installing @aws-sdk/client-s3, lodash and express from npm")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "package.json"), "w") as f:
                json.dump({"name": "real-node", "private": True}, f)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                            "@aws-sdk/client-s3", "lodash", "express"], cwd=d, check=True)
            open(os.path.join(d, ".complete"), "w").close()
        return [(os.path.join(d, "node_modules"), "node_modules")]
    d = os.path.join(DEPS, "python-real")
    if not os.path.exists(os.path.join(d, ".complete")):
        log("installing numpy, requests and pydantic from PyPI")
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", d, "numpy", "requests", "pydantic"], check=True)
        open(os.path.join(d, ".complete"), "w").close()
    return [(os.path.join(d, e), e) for e in os.listdir(d) if e != ".complete"]


def write_function(d, name, function, extra, log):
    """Writes function `name` (a (runtime, file, source, memory_mb, packages)
    tuple) into directory `d`, with `extra` manifest lines; returns `d`."""
    runtime, file, source, memory, packages = function
    os.makedirs(d)
    with open(os.path.join(d, file), "w") as f:
        f.write(source)
    with open(os.path.join(d, "lampyr.toml"), "w") as f:
        f.write(f'name = "{name}"\nruntime = "{runtime}"\nhandler = "index.handler"\n'
                f'memory_mb = {memory}\nnetwork = "none"\n{extra}')
    if packages:
        for src, dst in install_packages(packages, log):
            target = os.path.join(d, dst)
            if os.path.isdir(src):
                shutil.copytree(src, target, symlinks=True)
            else:
                shutil.copy2(src, target)
    return d


class Lampyr:
    """`lampyr serve` (`binary`) on loopback with a fresh data directory in
    `work`, and what the benchmarks ask of it."""

    def __init__(self, binary, work, die, args=()):
        self.binary, self.die = binary, die
        self.data = tempfile.mkdtemp(prefix="data-", dir=work)
        self.proc, self.url, self.token = start_server(binary, self.data, die, args)
        self.port = int(self.url.rsplit(":", 1)[1])

    def api(self, path):
        req = urllib.request.Request(self.url + "/api/v1" + path, headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def wait(self, what, cond, limit=300, pause=0.005):
        deadline = time.monotonic() + limit
        while not cond():
            if time.monotonic() > deadline:
                self.die(f"timed out waiting for {what}")
            time.sleep(pause)

    def deploy(self, fn_dir):
        env = dict(os.environ, LAMPYR_URL=self.url, LAMPYR_DATA_DIR=self.data)
        r = subprocess.run([self.binary, "deploy", fn_dir], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            self.die(f"lampyr deploy {fn_dir} failed:\n{r.stdout}{r.stderr}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def commit():
    """The commit the repository is at, short."""
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(out, start, end, text):
    """Replaces the section of file `out` between markers `start` and `end`
    (which `text` begins and ends with), or appends it."""
    doc = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
    if start in doc:
        a, rest = doc.split(start, 1)
        doc = a + text + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(out, "w") as f:
        f.write(doc)
