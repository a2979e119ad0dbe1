#!/usr/bin/env python3
"""bench/coldstart: cold-start latency of lampyr against the bare interpreter.

    bench/coldstart/run.py                       # 50 cold starts per function and configuration
    bench/coldstart/run.py --iterations 20 --configs plain

Builds lampyr in release mode, then for every server configuration (see
CONFIGS: pooled, unpooled, plain) starts `lampyr serve` with a fresh data
directory, deploys a Node.js and a Python hello function with
`idle_timeout = "100ms"`, and takes N cold starts per function: before each
it polls the management API until the function has no instance (and, with
pools on, until the runtime's pool has a ready instance), then times one
GET /fn/NAME from the client on a fresh connection, checks that
x-lampyr-start is the kind the configuration must give (`pooled` or `cold`)
and records the Server-Timing phases. Right after each cold request it sends
one warm request (also on a fresh connection). As a baseline
it spawns the bare interpreter running a minimal HTTP server on the same
handler file (bare-node-server.js, bare-python-server.py) and times spawn ->
first HTTP response. It also times `unshare` with and without a network
namespace. The results replace the `<!-- bench:coldstart:start -->` ...
`<!-- bench:coldstart:end -->` section of docs/benchmarks.md (or --out).

Python 3 standard library only. Run as root for --isolation auto to sandbox
and for `unshare`. Exits non-zero on any failure.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release", "lampyr")
MARK_START = "<!-- bench:coldstart:start -->"
MARK_END = "<!-- bench:coldstart:end -->"

# Server configurations: name -> (extra `lampyr serve` flags, description,
# the x-lampyr-start every measured cold start must answer, pools on?,
# extra manifest lines of the functions). Add an entry to measure another
# configuration.
CONFIGS = {
    "pooled": (["--isolation", "auto", "--pools", "on"],
               "`--isolation auto --pools on` (the default), functions with the default "
               "`network = \"egress\"`: full sandbox with outbound networking, a cold start specialises a "
               "pre-started instance from the runtime's pool", "pooled", True, ""),
    "pooled-loopback": (["--isolation", "auto", "--pools", "on"],
                        "the same with `network = \"none\"` (loopback only) in the manifest",
                        "pooled", True, 'network = "none"\n'),
    "unpooled": (["--isolation", "auto", "--pools", "off"],
                 "`--isolation auto --pools off`: full sandbox (egress network), every cold start from scratch",
                 "cold", False, ""),
    "unpooled-loopback": (["--isolation", "auto", "--pools", "off"],
                          "the same with `network = \"none\"`", "cold", False, 'network = "none"\n'),
    "plain": (["--isolation", "off", "--pools", "off"],
              "`--isolation off --pools off`: plain processes, every cold start from scratch", "cold", False, ""),
}
DEFAULT_CONFIGS = "pooled,pooled-loopback,unpooled,unpooled-loopback,plain"
# The project's targets (client side, end to end): pooled cold start p50 at
# most this many ms, and at most POOLED_RATIO x the bare baseline p50; an
# unpooled cold start within UNPOOLED_RATIO x the bare baseline.
POOLED_TARGET_MS = {"nodejs": 10.0, "python": 5.0}
POOLED_RATIO = 0.1
UNPOOLED_RATIO = 1.2

# The functions: runtime -> (name, handler file, handler source).
FUNCTIONS = {
    "nodejs": (
        "hello-node",
        "index.js",
        'exports.handler = async () => ({ statusCode: 200, headers: { "content-type": "text/plain" }, '
        'body: "Hello World\\n" });\n',
    ),
    "python": (
        "hello-python",
        "index.py",
        "def handler(event, context):\n"
        '    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "Hello World\\n"}\n',
    ),
}
RUNTIME_LABEL = {"nodejs": "Node.js", "python": "Python"}
PHASES = ["queue", "code", "sandbox", "runtime", "init", "exec"]
BODY = b"Hello World\n"
IDLE_DEADLINE_S = 10.0
POOL_DEADLINE_S = 10.0
BASELINE_DEADLINE_S = 10.0
# The baselines run with the environment lampyr gives its instances
# (crates/lampyr-runtime/src/instance.rs), not the caller's: variables such as
# NODE_EXTRA_CA_CERTS change the interpreter's start-up time.
INSTANCE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class BenchError(Exception):
    pass


def log(msg):
    print("[bench/coldstart] %s" % msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics


def pct(samples, p):
    """Nearest-rank percentile: the ceil(p/100 * n)-th smallest sample."""
    if not samples:
        return None
    s = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(s)))
    return s[rank - 1]


def fmt_ms(v):
    if v is None:
        return "—"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    if v >= 1:
        return "%.2f" % v
    return "%.3f" % v


# ------------------------------------------------------------------ processes


class Procs:
    """Every process started by the benchmark, killed on cleanup."""

    def __init__(self):
        self.procs = []

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def children_of(pid):
        kids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            # The command may contain spaces and parentheses: fields after the last ')'.
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1 and int(fields[1]) == pid:
                kids.append(int(d))
        return kids

    def stop(self, p, term_timeout=10.0):
        """SIGTERM, wait up to term_timeout, then SIGKILL the process group.
        Returns the exit code, or None if it had to be killed."""
        if p.poll() is not None:
            self.forget(p)
            return p.returncode
        kids = self.children_of(p.pid)
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            rc = p.wait(term_timeout)
        except subprocess.TimeoutExpired:
            log("process %d did not stop within %.0f s of SIGTERM; killing it" % (p.pid, term_timeout))
            rc = None
        self.kill_group(p)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.forget(p)
        return rc

    @staticmethod
    def kill_group(p):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def forget(self, p):
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self):
        for p in list(self.procs):
            self.stop(p, term_timeout=5.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ HTTP


class HttpError(Exception):
    pass


def http_get(host, port, path, timeout):
    """One GET on a fresh connection with a minimal HTTP/1.1 client (a raw
    socket, one prebuilt request, headers parsed only as far as needed), so
    that client-side overhead stays small next to what is measured and is the
    same for lampyr and the baseline. Returns (status, headers, body)."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                   % (path, host, port)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise HttpError("connection closed before the response headers")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(body) < n:
                chunk = s.recv(65536)
                if not chunk:
                    raise HttpError("connection closed inside the response body")
                body += chunk
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while not (body.endswith(b"0\r\n\r\n") and chunked_complete(body)):
                chunk = s.recv(65536)
                if not chunk:
                    raise HttpError("connection closed inside a chunked response body")
                body += chunk
            body = dechunk(body)
        else:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, headers, body
    finally:
        s.close()


def dechunk(raw):
    """The payload of a complete chunked body (no trailers expected)."""
    out, i = b"", 0
    while True:
        j = raw.index(b"\r\n", i)
        size = int(raw[i:j].split(b";")[0], 16)
        if size == 0:
            return out
        out += raw[j + 2:j + 2 + size]
        i = j + 2 + size + 2


def chunked_complete(raw):
    try:
        dechunk(raw)
        return True
    except (ValueError, IndexError):
        return False


def get(base, path, timeout=30.0):
    """One GET on a fresh connection: (status, headers dict lower-case, body, seconds)."""
    host, port = base
    t0 = time.perf_counter()
    status, headers, body = http_get(host, port, path, timeout)
    return status, headers, body, time.perf_counter() - t0


def parse_server_timing(value):
    out = {}
    for part in (value or "").split(","):
        m = re.match(r"\s*([A-Za-z0-9_-]+)\s*;\s*dur=([0-9.]+)", part)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


# ------------------------------------------------------------------ lampyr


class Server:
    def __init__(self, procs, work, name, flags):
        self.procs = procs
        self.name = name
        self.data = os.path.join(work, "data-" + name)
        os.makedirs(self.data)
        self.log_path = os.path.join(work, "lampyr-%s.log" % name)
        self.log_file = open(self.log_path, "wb")
        args = [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data, "--log-format", "json"] + flags
        log("[%s] starting: %s" % (name, " ".join(args)))
        self.proc = procs.spawn(args, stdout=self.log_file, stderr=self.log_file)
        self.url = self.wait_ready(60.0)
        m = re.match(r"http://([0-9.]+):([0-9]+)$", self.url)
        self.addr = (m.group(1), int(m.group(2)))
        with open(os.path.join(self.data, "token")) as f:
            self.token = f.read().strip()
        log("[%s] lampyr is listening on %s" % (name, self.url))

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, secs):
        deadline = time.monotonic() + secs
        pat = re.compile(r"lampyr listening on (http://127\.0\.0\.1:[0-9]+)")
        while time.monotonic() < deadline:
            m = pat.search(self.log_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise BenchError(
                    "lampyr serve (%s) exited with code %s before listening; its log:\n%s"
                    % (self.name, self.proc.returncode, self.log_text()[-4000:])
                )
            time.sleep(0.02)
        raise BenchError("lampyr serve (%s) did not report listening within %.0f s; its log:\n%s"
                         % (self.name, secs, self.log_text()[-4000:]))

    def deploy(self, fn_dir):
        env = dict(os.environ, LAMPYR_URL=self.url, LAMPYR_DATA_DIR=self.data)
        r = subprocess.run([BIN, "deploy", fn_dir], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise BenchError("lampyr deploy %s failed (exit %d):\n%s%s" % (fn_dir, r.returncode, r.stdout, r.stderr))

    def api(self, path):
        req = urllib.request.Request(self.url + path, headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def info(self, name):
        return self.api("/api/v1/functions/" + name)

    def pool(self, rt):
        """This runtime's entry of GET /api/v1/pools."""
        for p in self.api("/api/v1/pools"):
            if p.get("runtime") == rt:
                return p
        raise BenchError("[%s] GET /api/v1/pools has no entry for %s" % (self.name, rt))

    def wait_pool_ready(self, rt):
        """Polls until the runtime's pool has a ready instance; returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            p = self.pool(rt)
            if p.get("ready", 0) >= 1:
                return time.monotonic() - t0
            if time.monotonic() - t0 > POOL_DEADLINE_S:
                raise BenchError("[%s] the %s pool has no ready instance %.0f s after the last cold start: %s"
                                 % (self.name, rt, POOL_DEADLINE_S, json.dumps(p)))
            if self.proc.poll() is not None:
                raise BenchError("lampyr serve (%s) exited with code %s" % (self.name, self.proc.returncode))
            time.sleep(0.002)

    def wait_no_instances(self, name):
        deadline = time.monotonic() + IDLE_DEADLINE_S
        while True:
            info = self.info(name)
            if info.get("instances") == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    "[%s] %s still has %s instance(s) %s after %.0f s; idle_timeout is 100ms"
                    % (self.name, name, info.get("instances"), info.get("instance_states"), IDLE_DEADLINE_S)
                )
            if self.proc.poll() is not None:
                raise BenchError("lampyr serve (%s) exited with code %s" % (self.name, self.proc.returncode))
            time.sleep(0.01)

    def invoke(self, name, expect):
        status, headers, body, dt = get(self.addr, "/fn/" + name)
        start = headers.get("x-lampyr-start")
        if status != 200:
            raise BenchError("[%s] GET /fn/%s answered %d: %r" % (self.name, name, status, body[:500]))
        if body != BODY:
            raise BenchError("[%s] GET /fn/%s answered the body %r" % (self.name, name, body[:500]))
        if expect != "warm" and start != expect:
            raise BenchError("[%s] GET /fn/%s after the instance count reached 0%s answered x-lampyr-start=%s, "
                             "expected %s (server-timing: %s)"
                             % (self.name, name, " and the pool had a ready instance" if expect == "pooled" else "",
                                start, expect, headers.get("server-timing")))
        if expect == "warm" and start != "warm":
            raise BenchError("[%s] GET /fn/%s right after a cold start answered x-lampyr-start=%s"
                             % (self.name, name, start))
        return dt * 1000.0, start, parse_server_timing(headers.get("server-timing"))

    def stop(self):
        rc = self.procs.stop(self.proc)
        self.log_file.close()
        if rc is None:
            raise BenchError("lampyr serve (%s) did not stop on SIGTERM within 10 s" % self.name)
        if rc != 0:
            raise BenchError("lampyr serve (%s) exited with code %d after SIGTERM; log tail:\n%s"
                             % (self.name, rc, self.log_text()[-4000:]))

    def warnings(self):
        out = []
        for line in self.log_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("WARN", "ERROR"):
                fields = rec.get("fields") or {}
                out.append("%s %s" % (rec.get("level"), fields.get("message", line)))
        return out


def make_functions(root, extra):
    """The function directories (runtime -> dir) under root, with extra
    manifest lines."""
    fn_dirs = {}
    for rt, (name, hfile, src) in FUNCTIONS.items():
        d = os.path.join(root, name)
        os.makedirs(d)
        with open(os.path.join(d, "lampyr.toml"), "w") as f:
            f.write('name = "%s"\nruntime = "%s"\nhandler = "index.handler"\nidle_timeout = "100ms"\n%s'
                    % (name, rt, extra))
        with open(os.path.join(d, hfile), "w") as f:
            f.write(src)
        fn_dirs[rt] = d
    return fn_dirs


def bench_config(procs, work, cname, fn_dirs, n, bare_argvs, bare):
    """Cold and warm samples for every function under one server configuration.
    After each cold start it also times one baseline start (appended to
    bare[runtime]), so that lampyr and the baseline are sampled side by side
    and a drift in the machine's speed affects both alike."""
    flags, _, expect, pools_on, extra = CONFIGS[cname]
    if extra:
        fn_dirs = make_functions(os.path.join(work, "fn-" + cname), extra)
    srv = Server(procs, work, cname, flags)
    results = {}
    try:
        for rt in FUNCTIONS:
            p = srv.pool(rt)
            if bool(p.get("enabled")) != pools_on:
                raise BenchError("[%s] GET /api/v1/pools says %s; expected enabled=%s"
                                 % (cname, json.dumps(p), str(pools_on).lower()))
        for rt, (name, _, _) in FUNCTIONS.items():
            srv.deploy(fn_dirs[rt])
            log("[%s] deployed %s" % (cname, name))
        for rt, (name, _, _) in FUNCTIONS.items():
            cold, warm, refill, phases, kinds = [], [], [], {p: [] for p in PHASES}, {}

            def ready():
                srv.wait_no_instances(name)
                if pools_on:
                    srv.wait_pool_ready(rt)

            # One untimed cold start first (page cache, lazy initialisation).
            ready()
            srv.invoke(name, expect)
            for i in range(n):
                ready()
                ms, start, timing = srv.invoke(name, expect)
                t_cold = time.monotonic()
                cold.append(ms)
                kinds[start] = kinds.get(start, 0) + 1
                for p, v in timing.items():
                    phases.setdefault(p, []).append(v)
                wms, _, _ = srv.invoke(name, "warm")
                warm.append(wms)
                if pools_on:
                    # Upper bound on the refill: cold response -> first poll seeing ready >= 1.
                    srv.wait_pool_ready(rt)
                    refill.append((time.monotonic() - t_cold) * 1000.0)
                bare[rt].append(bare_once(procs, bare_argvs[rt], work))
            results[rt] = {"cold": cold, "warm": warm, "phases": phases, "kinds": kinds, "refill": refill}
            log("[%s] %s: cold p50 %s ms p99 %s ms (%s); warm p50 %s ms; phases p50: %s%s" % (
                cname, name, fmt_ms(pct(cold, 50)), fmt_ms(pct(cold, 99)),
                ", ".join("%s=%d" % kv for kv in sorted(kinds.items())), fmt_ms(pct(warm, 50)),
                ", ".join("%s %s" % (p, fmt_ms(pct(v, 50))) for p, v in phases.items() if v),
                "; pool refill p50 %s ms max %s ms" % (fmt_ms(pct(refill, 50)), fmt_ms(max(refill)))
                if refill else ""))
    finally:
        warns = srv.warnings()
        try:
            srv.stop()
        finally:
            if warns:
                log("[%s] lampyr logged %d warning/error line(s):" % (cname, len(warns)))
                for w in warns[:20]:
                    log("    " + w)
    return results, warns


# ------------------------------------------------------------------ baseline


def bare_once(procs, argv, work):
    """Seconds from just before spawning argv (given the port) to its first good response."""
    port = free_port()
    args = [a.replace("{PORT}", str(port)) for a in argv]
    errf = open(os.path.join(work, "baseline.err"), "wb")
    t0 = time.perf_counter()
    p = procs.spawn(args, stdout=subprocess.DEVNULL, stderr=errf, env=INSTANCE_ENV, cwd="/tmp")
    try:
        deadline = t0 + BASELINE_DEADLINE_S
        while True:
            try:
                status, _, body = http_get("127.0.0.1", port, "/", BASELINE_DEADLINE_S)
                dt = time.perf_counter() - t0
                break
            except ConnectionRefusedError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError("baseline %s did not answer within %.0f s" % (" ".join(args), BASELINE_DEADLINE_S))
            if p.poll() is not None:
                errf.flush()
                with open(errf.name, "rb") as f:
                    err = f.read().decode("utf-8", "replace")
                raise BenchError("baseline %s exited with code %d:\n%s" % (" ".join(args), p.returncode, err))
            time.sleep(0.0002)
        if status != 200 or body != BODY:
            raise BenchError("baseline %s answered %d %r" % (" ".join(args), status, body[:500]))
        return dt * 1000.0
    finally:
        procs.kill_group(p)
        procs.forget(p)
        errf.close()


def baseline_argv(interp, fn_dirs, rt):
    """The bare interpreter serving the same handler file over HTTP."""
    handler = os.path.join(fn_dirs[rt], FUNCTIONS[rt][1])
    if rt == "nodejs":
        return [interp["nodejs"][0], os.path.join(HERE, "bare-node-server.js"), "{PORT}", handler]
    # The same flags lampyr starts its Python bootstrap with.
    return [interp["python"][0], "-s", "-B", os.path.join(HERE, "bare-python-server.py"), "{PORT}", handler]


# ------------------------------------------------------------------ namespaces

NS_CMDS = [
    ("`/bin/true`", ["/bin/true"]),
    ("`unshare --mount --pid --ipc --uts --cgroup --fork /bin/true`",
     ["unshare", "--mount", "--pid", "--ipc", "--uts", "--cgroup", "--fork", "/bin/true"]),
    ("the same plus `--net`",
     ["unshare", "--mount", "--pid", "--ipc", "--uts", "--cgroup", "--net", "--fork", "/bin/true"]),
]


def bench_namespaces(n):
    if shutil.which("unshare") is None:
        raise BenchError("unshare is not installed (util-linux)")
    samples = [[] for _ in NS_CMDS]
    for i in range(n + 1):  # interleaved; the first round is untimed
        for k, (_, cmd) in enumerate(NS_CMDS):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = (time.perf_counter() - t0) * 1000.0
            if r.returncode != 0:
                raise BenchError("%s failed (exit %d): %s (run as root)"
                                 % (" ".join(cmd), r.returncode, r.stderr.decode(errors="replace").strip()))
            if i > 0:
                samples[k].append(dt)
    for (label, _), s in zip(NS_CMDS, samples):
        log("namespaces %s: p50 %s ms p99 %s ms" % (label, fmt_ms(pct(s, 50)), fmt_ms(pct(s, 99))))
    return samples


# ------------------------------------------------------------------ report


def machine_line(interp):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "crates", "runtimes",
                            "Cargo.toml", "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += " (with uncommitted changes)"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("Machine: %d CPUs%s, Linux %s, Node.js %s, Python %s; lampyr %s; run %s. "
            "The client, lampyr and the interpreters share the machine."
            % (os.cpu_count(), " (%s)" % cpu if cpu else "", platform.release(),
               interp["nodejs"][1], interp["python"][1], commit, date))


ROW_LABEL = {
    "pooled": "(a) lampyr cold start, **pooled**",
    "unpooled": "(b) lampyr cold start, **unpooled**",
    "plain": "lampyr cold start, plain",
}


def fmt_ratio(r):
    return ("%.2f×" if r >= 0.1 else "%.3f×") % r


def verdict(ok):
    return "**met**" if ok else "**not met**"


def target_lines(rt, configs, lampyr, bare):
    """The project's targets for this runtime and whether this run met them."""
    b50, b99 = pct(bare[rt], 50), pct(bare[rt], 99)
    out = []
    if "pooled" in configs:
        a50 = pct(lampyr["pooled"][rt]["cold"], 50)
        out.append("(a) pooled p50 ≤ %.0f ms end to end: %s (%s ms); a/c ≤ %s at p50: %s (%s)"
                   % (POOLED_TARGET_MS[rt], verdict(a50 <= POOLED_TARGET_MS[rt]), fmt_ms(a50),
                      POOLED_RATIO, verdict(a50 / b50 <= POOLED_RATIO), fmt_ratio(a50 / b50)))
    if "unpooled" in configs:
        s = lampyr["unpooled"][rt]["cold"]
        r50, r99 = pct(s, 50) / b50, pct(s, 99) / b99
        out.append("(b) unpooled within %s× of (c): at p50 %s (%s), at p99 %s (%s)"
                   % (UNPOOLED_RATIO, verdict(r50 <= UNPOOLED_RATIO), fmt_ratio(r50),
                      verdict(r99 <= UNPOOLED_RATIO), fmt_ratio(r99)))
    if not out:
        return ""
    return "Project targets: " + "; ".join(out) + "."


def render(args, configs, interp, lampyr, warns, bare, ns):
    n = args.iterations
    warm_cfg = "pooled" if "pooled" in configs else configs[0]
    L = [MARK_START, "## Cold starts (`bench/coldstart`)", ""]
    L.append("Client-side latency of the first request to a hello function with no instance, per lampyr "
             "configuration, against (c) spawning the bare interpreter as an HTTP server on the same handler; "
             "(d) is a warm request. Ratios are lampyr p50 / baseline p50 and lampyr p99 / baseline p99.")
    L.append("")
    for rt in FUNCTIONS:
        b50, b99 = pct(bare[rt], 50), pct(bare[rt], 99)
        L.append("**%s** (`%s`)" % (RUNTIME_LABEL[rt], FUNCTIONS[rt][0]))
        L.append("")
        L.append("| | p50 ms | p99 ms | p50 / baseline | p99 / baseline |")
        L.append("| --- | ---: | ---: | ---: | ---: |")

        def row(label, s, bold=False):
            r50, r99 = fmt_ratio(pct(s, 50) / b50), fmt_ratio(pct(s, 99) / b99)
            if bold:
                r50, r99 = "**%s**" % r50, "**%s**" % r99
            L.append("| %s | %s | %s | %s | %s |" % (label, fmt_ms(pct(s, 50)), fmt_ms(pct(s, 99)), r50, r99))
        for c in configs:
            row(ROW_LABEL.get(c, "lampyr cold start, %s" % c), lampyr[c][rt]["cold"], bold=c in ("pooled", "unpooled"))
        row("(c) bare interpreter baseline", bare[rt])
        row("(d) lampyr warm (%s server)" % warm_cfg, lampyr[warm_cfg][rt]["warm"])
        L.append("")
        t = target_lines(rt, configs, lampyr, bare)
        if t:
            L.append(t)
            L.append("")
    L.append(
        "Method: a Node.js and a Python hello handler (status 200, `text/plain`, `Hello World`) are deployed with "
        "`idle_timeout = \"100ms\"`. Before each cold start the script polls the management API until the "
        "function has no instance and, with pools on, until `GET /api/v1/pools` shows a ready instance for the "
        "runtime; then it times one `GET /fn/NAME` on a fresh connection from the client (connect, request, full "
        "response; the client is a raw socket sending one prebuilt request, the same for lampyr and the "
        "baseline, so that its own overhead stays small) and checks `x-lampyr-start` (`pooled` with pools on, `cold` with pools off: every sample here "
        "did); right after it, one warm request on a fresh connection. "
        "The baseline spawns the same interpreter running a minimal HTTP server on the same handler file "
        "(`bench/coldstart/bare-node-server.js`, `bare-python-server.py`, an `http.server`, under `python3 -s -B` as lampyr "
        "starts Python) with the environment lampyr gives its instances, and times spawn → first successful "
        "response, polling `connect` every 0.2 ms. One baseline start is timed right after each lampyr cold start, "
        "in every configuration, so that both are sampled side by side and a drift in the machine's speed "
        "affects them alike; row (c) holds all of them.")
    L.append("")
    L.append("Server configurations: " + "; ".join("**%s** = %s" % (c, CONFIGS[c][1]) for c in configs) + ".")
    L.append("%d samples per lampyr row (%d for the baseline) after one untimed run; percentiles are nearest-rank "
             "on the sorted samples (the ⌈p/100·n⌉-th smallest%s)."
             % (n, n * len(configs), ", so with %d samples p99 is the maximum" % n if n <= 100 else ""))
    L.append("")
    L.append(machine_line(interp))
    L.append("")
    others = [c for c in configs if c != warm_cfg]
    if others:
        L.append("Warm requests in the other configurations, p50 / p99 ms: " + "; ".join(
            "%s %s" % (RUNTIME_LABEL[rt], ", ".join(
                "%s %s / %s" % (c, fmt_ms(pct(lampyr[c][rt]["warm"], 50)), fmt_ms(pct(lampyr[c][rt]["warm"], 99)))
                for c in others)) for rt in FUNCTIONS) + ".")
    if "pooled" in configs:
        L.append("Pool refill (pooled cold response → first `/api/v1/pools` poll, after the warm request, showing "
                 "`ready ≥ 1`), p50 / max ms: " + "; ".join(
                     "%s %s / %s" % (RUNTIME_LABEL[rt], fmt_ms(pct(lampyr["pooled"][rt]["refill"], 50)),
                                     fmt_ms(max(lampyr["pooled"][rt]["refill"]))) for rt in FUNCTIONS) + ".")
    L.append("")
    L.append("Server-Timing phases of the cold starts, p50 / p99 ms (`—`: the phase was not reported; for "
             "pooled starts `sandbox` is the specialisation of the pre-started instance and there is no "
             "`runtime` phase):")
    L.append("")
    L.append("| configuration | runtime | " + " | ".join(PHASES) + " |")
    L.append("| --- | --- |" + " ---: |" * len(PHASES))
    for c in configs:
        for rt in FUNCTIONS:
            ph = lampyr[c][rt]["phases"]
            cells = []
            for p in PHASES:
                s = ph.get(p) or []
                if not s:
                    cells.append("—")
                else:
                    cell = "%s / %s" % (fmt_ms(pct(s, 50)), fmt_ms(pct(s, 99)))
                    if len(s) != n:
                        cell += " (n=%d)" % len(s)
                    cells.append(cell)
            L.append("| %s | %s | %s |" % (c, RUNTIME_LABEL[rt], " | ".join(cells)))
    L.append("")
    L.append("Namespace cost: %d runs of each command via Python `subprocess.run`, interleaved (the spawn "
             "and wait overhead is in every row):" % n)
    L.append("")
    L.append("| command | p50 ms | p99 ms | p50 − `/bin/true` p50 |")
    L.append("| --- | ---: | ---: | ---: |")
    t50 = pct(ns[0], 50)
    for (label, _), s in zip(NS_CMDS, ns):
        L.append("| %s | %s | %s | %s |" % (label, fmt_ms(pct(s, 50)), fmt_ms(pct(s, 99)),
                                            "" if s is ns[0] else "+" + fmt_ms(pct(s, 50) - t50)))
    L.append("")
    L.append("The network namespace adds %s ms at p50 (%s ms at p99) over the other five namespaces."
             % (fmt_ms(pct(ns[2], 50) - pct(ns[1], 50)), fmt_ms(pct(ns[2], 99) - pct(ns[1], 99))))
    if any(warns.values()):
        L.append("")
        for c in configs:
            if warns[c]:
                L.append("During the **%s** run lampyr logged %d warning/error line(s), e.g. “%s”."
                         % (c, len(warns[c]), warns[c][0].replace("|", "\\|")))
    L.append("")
    repro = "bench/coldstart/run.py"
    if args.iterations != 50:
        repro += " --iterations %d" % args.iterations
    if args.configs != DEFAULT_CONFIGS:
        repro += " --configs %s" % args.configs
    L.append("Reproduce: `%s` (as root; see `bench/README.md`)." % repro)
    L.append(MARK_END)
    return "\n".join(L) + "\n"


def write_section(out, section):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = ""
    if os.path.exists(out):
        with open(out) as f:
            text = f.read()
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i >= 0 and j > i:
        j = j + len(MARK_END)
        if text[j:j + 1] == "\n":
            j += 1
        new = text[:i] + section + text[j:]
    elif text:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        new = ("# lampyr benchmarks\n\nEvery number on this page comes from the scripts in `bench/` and is "
               "regenerated by running them; see `bench/README.md`.\n\n" + section)
    tmp = "%s.tmp.%d" % (out, os.getpid())
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, out)


# ------------------------------------------------------------------ main


def interpreters():
    node = shutil.which("node")
    if node is None:
        raise BenchError("node (Node.js) is not on PATH: lampyr's nodejs runtime and the baseline need it")
    node = os.path.realpath(node)
    node_v = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    py = shutil.which("python3")
    if py is None:
        raise BenchError("python3 is not on PATH: lampyr's python runtime and the baseline need it")
    # Ask the interpreter for its real binary: a pyenv shim would add ~0.2 s per start.
    r = subprocess.run([py, "-c", "import sys, platform; print(sys.executable); print(platform.python_version())"],
                       capture_output=True, text=True, check=True)
    exe, py_v = r.stdout.split()
    return {"nodejs": (node, node_v), "python": (os.path.realpath(exe), py_v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=50, help="samples per measurement (default 50)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help="comma-separated server configurations from: %s (default %s)"
                    % (", ".join(CONFIGS), DEFAULT_CONFIGS))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                    help="report file whose coldstart section is rewritten (default docs/benchmarks.md)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/lampyr")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, samples.json) on exit")
    args = ap.parse_args()
    if args.iterations < 1:
        ap.error("--iterations must be at least 1")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        ap.error("unknown configuration(s) %s; known: %s" % (", ".join(unknown) or "(none)", ", ".join(CONFIGS)))

    procs = Procs()
    work = tempfile.mkdtemp(prefix="lampyr-bench-coldstart.")
    ok = False

    def interrupted(signum, frame):
        raise KeyboardInterrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupted)
    try:
        interp = interpreters()
        log("interpreters: node %s (%s), python %s (%s)" % (interp["nodejs"][1], interp["nodejs"][0],
                                                            interp["python"][1], interp["python"][0]))
        if not args.no_build:
            if shutil.which("cargo") is None:
                raise BenchError("cargo is not installed; it is needed to build lampyr")
            log("building lampyr (cargo build --release)")
            r = subprocess.run(["cargo", "build", "--release"], cwd=ROOT, stdout=sys.stderr)
            if r.returncode != 0:
                raise BenchError("cargo build --release failed (exit %d)" % r.returncode)
        if not os.access(BIN, os.X_OK):
            raise BenchError("%s was not built" % BIN)

        fn_dirs = make_functions(os.path.join(work, "fn"), "")

        bare_argvs = {rt: baseline_argv(interp, fn_dirs, rt) for rt in FUNCTIONS}
        bare = {rt: [] for rt in FUNCTIONS}
        for rt in FUNCTIONS:
            bare_once(procs, bare_argvs[rt], work)  # untimed, like lampyr's first cold start
        lampyr, warns = {}, {}
        for c in configs:
            lampyr[c], warns[c] = bench_config(procs, work, c, fn_dirs, args.iterations, bare_argvs, bare)
        for rt in FUNCTIONS:
            log("baseline %s: p50 %s ms p99 %s ms (%d samples)"
                % (rt, fmt_ms(pct(bare[rt], 50)), fmt_ms(pct(bare[rt], 99)), len(bare[rt])))
        ns = bench_namespaces(args.iterations)

        with open(os.path.join(work, "samples.json"), "w") as f:
            json.dump({"lampyr": lampyr, "baseline": bare, "namespaces": ns}, f, indent=1)
        section = render(args, configs, interp, lampyr, warns, bare, ns)
        write_section(args.out, section)
        log("wrote the coldstart section of %s:" % args.out)
        sys.stderr.write(section)
        ok = True
    except BenchError as e:
        log("error: %s" % e)
    except (OSError, HttpError, subprocess.SubprocessError) as e:
        log("error: %s: %s" % (type(e).__name__, e))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        procs.cleanup()
        if args.keep or (not ok and os.environ.get("KEEP_ON_FAILURE")):
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
