#!/usr/bin/env python3
"""bench/sources/nats: the NATS JetStream trigger against the broker's own delivery.

Starts `nats-server -js` on a free loopback port and lampyr (release build),
creates a stream BENCH (`bench.>`), deploys Node.js functions with NATS
triggers at batch_size 1 and 10, and measures in one run:
  * throughput: events/s from the first publish of a burst of N messages to
    the trigger having delivered all N to a no-op function;
  * lag: publish to function start (p50, p99) for messages published one at
    a time at a steady rate (the payload is the publisher's wall clock; the
    function reads the clock first thing and reports over UDP), against a
    plain core-NATS subscriber of the same subject receiving the same
    messages (the broker's own delivery latency).
The `<!-- bench:sources-nats:start -->` ... `<!-- bench:sources-nats:end -->`
section of docs/benchmarks.md is rewritten. Needs nats-server, node, cargo.
Python 3 standard library only: it speaks the NATS protocol itself.
"""

import argparse
import json
import os
import platform
import shutil
import socket
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
BIN = os.environ.get("LAMPYR_BIN") or os.path.join(ROOT, "target", "release", "lampyr")
START, END = "<!-- bench:sources-nats:start -->", "<!-- bench:sources-nats:end -->"
BATCHES = (1, 10)
TRIGGER_CONCURRENCY = 4

NOOP = "exports.handler = async () => null;\n"
LAG = """const dgram = require("dgram");
const sock = dgram.createSocket("udp4");
exports.handler = async (event) => {
  const now = performance.timeOrigin + performance.now();
  const lines = event.Records.map((r) => `${r.streamSequence} ${(now - Number(Buffer.from(r.data, "base64").toString())).toFixed(3)}`);
  sock.send(lines.join("\\n"), PORT, "127.0.0.1");
  return null;
};
"""


log, die = logger("bench/sources/nats")



class Nats:
    """Just enough of the NATS client protocol: publish, subscribe, request."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb")
        self.rf.readline()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true,"no_responders":true}\r\n')
        self.flush()

    def pub(self, subject, payload, reply=None):
        r = f" {reply}" if reply else ""
        self.sock.sendall(f"PUB {subject}{r} {len(payload)}\r\n".encode() + payload + b"\r\n")

    def next_msg(self):
        """(subject, payload) of the next MSG; answers PINGs."""
        while True:
            line = self.rf.readline()
            if not line:
                raise EOFError("the server closed the connection")
            if line.startswith(b"MSG"):
                parts = line.split()
                n = int(parts[-1])
                data = self.rf.read(n + 2)[:n]
                return parts[1].decode(), data
            if line.startswith(b"PING"):
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise RuntimeError(line.decode().strip())

    def flush(self):
        self.sock.sendall(b"PING\r\n")
        while True:
            line = self.rf.readline()
            if line.startswith(b"PONG"):
                return
            if line.startswith(b"PING"):
                self.sock.sendall(b"PONG\r\n")
            if not line:
                raise EOFError("the server closed the connection")

    def request(self, subject, payload):
        inbox = f"_INBOX.bench{time.monotonic_ns()}"
        self.sock.sendall(f"SUB {inbox} 99\r\n".encode())
        self.pub(subject, payload, reply=inbox)
        _, data = self.next_msg()
        self.sock.sendall(b"UNSUB 99\r\n")
        return json.loads(data)


def api(url, token, method, path, body=None):
    req = urllib.request.Request(url + "/api/v1" + path, data=body, method=method)
    req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def source(url, token, name):
    info = json.loads(api(url, token, "GET", f"/functions/{name}"))
    return (info.get("sources") or [{}])[0]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000, help="messages per throughput burst (default 20000)")
    ap.add_argument("--lag-messages", type=int, default=500, help="messages per lag series (default 500)")
    ap.add_argument("--rate", type=float, default=100.0, help="messages/s of a lag series (default 100)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/lampyr")
    a = ap.parse_args()
    for tool in ("nats-server", "node", "cargo"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            die(f"{tool} is not installed (apt-get install -y nats-server nodejs)")
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not a.no_build:
        log("building lampyr (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "lampyr", "--bins"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="lampyr-bench-nats.")
    procs = []
    try:
        port = free_port()
        broker = subprocess.Popen([nats_bin, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", os.path.join(work, "js"),
                                   "-l", os.path.join(work, "nats.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(broker)
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() - t0 > 20:
                    die("nats-server did not start")
                time.sleep(0.01)
        nc = Nats(port)
        r = nc.request("$JS.API.STREAM.CREATE.BENCH", json.dumps({"name": "BENCH", "subjects": ["bench.>"], "storage": "file"}).encode())
        if "error" in r:
            die(f"creating the stream: {r['error']}")
        data = os.path.join(work, "data")
        server, url, token = start_server(BIN, data, die)
        procs.append(server)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp_port = udp.getsockname()[1]
        names = []
        for b in BATCHES:
            for kind, code in (("tp", NOOP), ("lat", LAG.replace("PORT", str(udp_port)))):
                name = f"{kind}{b}"
                names.append(name)
                d = os.path.join(work, name)
                os.makedirs(d)
                open(os.path.join(d, "index.js"), "w").write(code)
                open(os.path.join(d, "lampyr.toml"), "w").write(
                    f'name = "{name}"\nruntime = "nodejs"\nhandler = "index.handler"\nnetwork = "host"\n'
                    f'max_instances = 1\nconcurrency = {TRIGGER_CONCURRENCY}\n'
                    f'[[triggers]]\ntype = "nats"\nservers = ["nats://127.0.0.1:{port}"]\nstream = "BENCH"\n'
                    f'subject = "bench.{name}"\nbatch_size = {b}\nconcurrency = {TRIGGER_CONCURRENCY}\n')
                out = subprocess.run([BIN, "deploy", d], env={**os.environ, "LAMPYR_URL": url, "LAMPYR_DATA_DIR": data},
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    die(f"deploy {name}: {out.stderr}")
        for name in names:
            t0 = time.time()
            while source(url, token, name).get("state") != "connected":
                if time.time() - t0 > 60:
                    die(f"{name}'s source did not connect: {source(url, token, name)}")
                time.sleep(0.05)
        results = {}
        for b in BATCHES:
            # Throughput: a burst, timed until the trigger delivered all of it.
            name = f"tp{b}"
            log(f"throughput, batch size {b}: {a.messages} messages")
            t0 = time.time()
            for i in range(a.messages):
                nc.pub(f"bench.{name}", b"x")
            nc.flush()
            published = time.time() - t0
            while source(url, token, name).get("delivered", 0) < a.messages:
                if time.time() - t0 > 600:
                    die(f"{name}: not all messages delivered: {source(url, token, name)}")
                time.sleep(0.02)
            elapsed = time.time() - t0
            results[("tp", b)] = (a.messages / elapsed, published)
            # Lag: one message at a time, a plain subscriber beside.
            name = f"lat{b}"
            log(f"lag, batch size {b}: {a.lag_messages} messages at {a.rate:g}/s")
            sub = Nats(port)
            sub.sock.sendall(f"SUB bench.{name} 1\r\n".encode())
            sub.flush()
            base = []

            def receive():
                while len(base) < a.lag_messages:
                    _, payload = sub.next_msg()
                    base.append(time.time() * 1000 - float(payload))
            th = threading.Thread(target=receive, daemon=True)
            th.start()
            lags = {}
            udp.settimeout(0.001)
            start = time.time()
            for i in range(a.lag_messages):
                due = start + i / a.rate
                while time.time() < due:
                    try:
                        for ln in udp.recv(65536).decode().split("\n"):
                            seq, lag = ln.split()
                            lags[int(seq)] = float(lag)
                    except socket.timeout:
                        pass
                nc.pub(f"bench.{name}", f"{time.time() * 1000:.3f}".encode())
            udp.settimeout(1.0)
            deadline = time.time() + 60
            while len(lags) < a.lag_messages and time.time() < deadline:
                try:
                    for ln in udp.recv(65536).decode().split("\n"):
                        seq, lag = ln.split()
                        lags[int(seq)] = float(lag)
                except socket.timeout:
                    pass
            th.join(timeout=30)
            sub.sock.close()
            if len(lags) < a.lag_messages * 0.95:
                die(f"{name}: only {len(lags)} of {a.lag_messages} starts reported")
            results[("lat", b)] = (list(lags.values()), list(base))
        write_report(a, results)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def write_report(a, results):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = open("/proc/loadavg").read().split()[0]
    server_version = subprocess.run([shutil.which("nats-server") or "/usr/sbin/nats-server", "--version"],
                                    capture_output=True, text=True).stdout.strip()
    rows = []
    target = None
    for b in BATCHES:
        eps, _ = results[("tp", b)]
        lags, base = results[("lat", b)]
        lp50, lp99 = pct(lags, 50), pct(lags, 99)
        bp50, bp99 = pct(base, 50), pct(base, 99)
        rows.append(f"| {b} | {eps:.0f} | {lp50:.2f} | {lp99:.2f} | {bp50:.2f} | {bp99:.2f} | **{lp50 - bp50:+.2f}** |")
        if b == 1:
            target = lp50 - bp50
    met = "met" if target is not None and target <= 5.0 else "**not met**"
    text = f"""{START}
## NATS JetStream trigger (`bench/sources/nats.py`)

Node.js functions (`max_instances = 1`, `concurrency = {TRIGGER_CONCURRENCY}`) with a `type = "nats"` trigger (`concurrency = {TRIGGER_CONCURRENCY}`, `max_batching_window` 0) on a stream of a local `nats-server -js` (file storage). **Throughput**: a burst of {a.messages} messages published at once to a no-op function's subject, events/s from the first publish until the trigger has run the function on all of them (each batch then acked, the ack confirmed by the broker). **Lag**: {a.lag_messages} messages published one at a time at {a.rate:g}/s; the payload is the publisher's wall clock and the function reads the clock first thing (lag = publish → handler start, p50/p99 in ms); the **broker** columns are a plain core-NATS subscriber of the same subject receiving the same messages in the same run (the broker's own delivery latency, which lampyr's path includes along with JetStream's storage, the pull consumer and the acks). At {a.rate:g}/s a batch of 10 seldom fills: its lag is a lone message's.

Machine: 2 CPUs ({cpu}), Linux {platform.release()}, Node.js {node}, {server_version}; lampyr {commit}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average {load} at the end.

| batch size | events/s | lag p50 ms | lag p99 ms | broker p50 ms | broker p99 ms | lampyr adds (p50) ms |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

Target: lampyr adds ≤ 5 ms p50 at batch size 1: {target:+.2f} ms, {met}.

Reproduce: `bench/sources/nats.py` (see `bench/README.md`).
{END}"""
    path = a.out
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if START in doc and END in doc:
        doc = doc[: doc.index(START)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    open(path, "w").write(doc)
    print(text)


if __name__ == "__main__":
    main()
