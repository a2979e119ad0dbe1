#!/usr/bin/env python3
"""Test driver for lampyr's runtime bootstraps.

Spawns runtimes/nodejs/bootstrap.js and runtimes/python/bootstrap.py with one
end of a socketpair as fd 3, speaks the instance protocol (docs/protocol.md)
to them against temporary handler directories, and checks the frames and the
log records they produce. Standard library only:

    python3 runtimes/test_bootstraps.py [-v] [name-substring ...]

Prints `N passed, M failed` last and exits non-zero if anything failed.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAPS = {
    "nodejs": os.path.join(HERE, "nodejs", "bootstrap.js"),
    "python": os.path.join(HERE, "python", "bootstrap.py"),
}

T_HELLO, T_LOAD, T_LOADED, T_LOAD_ERROR = 0x01, 0x02, 0x03, 0x04
T_INVOKE, T_RESULT, T_ERROR = 0x10, 0x11, 0x12
NAMES = {
    T_HELLO: "HELLO", T_LOAD: "LOAD", T_LOADED: "LOADED", T_LOAD_ERROR: "LOAD_ERROR",
    T_INVOKE: "INVOKE", T_RESULT: "RESULT", T_ERROR: "ERROR",
}
RECORD = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\t([^\t]+)\t(INFO|WARN|ERROR|DEBUG|TRACE)\t(.*)$"
)
VERBOSE = False


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


# ---------------------------------------------------------------- fixtures

NODE_FILES = {
    "package.json": '{"name": "fixture", "version": "1.0.0"}\n',
    "index.js": r"""
        const leftpad = require('leftpad');
        console.log('loading index.js');
        exports.obj = async (event, context) => ({ ok: true, echo: event });
        exports.text = async () => 'hello';
        exports.nothing = async () => {};
        exports.plain = (event) => ({ doubled: event.n * 2 });
        exports.fail = async (event, context) => { throw new TypeError('bad thing'); };
        exports.failString = async () => { throw 'just a string'; };
        class MyError extends Error {}
        exports.failCustom = () => { throw new MyError('custom'); };
        exports.ctx = async (event, context) => ({
          fn: context.functionName, ver: context.functionVersion, mem: context.memoryLimitInMB,
          rem: context.getRemainingTimeInMillis(), rid: context.awsRequestId,
          arn: context.invokedFunctionArn, group: context.logGroupName, stream: context.logStreamName,
          wait: context.callbackWaitsForEmptyEventLoop, cwd: process.cwd(),
          env: Object.fromEntries(['AWS_LAMBDA_FUNCTION_NAME', 'AWS_LAMBDA_FUNCTION_VERSION',
            'AWS_LAMBDA_FUNCTION_MEMORY_SIZE', 'LAMBDA_TASK_ROOT', '_HANDLER', 'AWS_LAMBDA_LOG_GROUP_NAME',
            'AWS_LAMBDA_LOG_STREAM_NAME', 'AWS_REGION', 'AWS_EXECUTION_ENV', 'MY_SETTING']
            .map((k) => [k, process.env[k] === undefined ? null : process.env[k]])),
        });
        exports.log = async (event) => { console.log('hello from', event.who); console.warn('careful'); return 1; };
        exports.multi = async () => { console.log('line1\nline2\nline3'); console.error(new Error('E1')); return 1; };
        exports.slow = async (event, context) => {
          await new Promise((r) => setTimeout(r, event.ms));
          console.log('done ' + event.tag);
          return { tag: event.tag, rid: context.awsRequestId };
        };
        exports.cb = (event, context, callback) => { setTimeout(() => callback(null, { cb: event.x }), 5); };
        exports.cbErr = (event, context, callback) => { setTimeout(() => callback(new RangeError('cb failed')), 1); };
        exports.legacy = (event, context) => { context.succeed({ legacy: true }); };
        exports.circular = async () => { const a = {}; a.self = a; return a; };
        exports.leftpad = async (event) => leftpad(event.s, event.n);
        exports.late = async () => { setTimeout(() => { throw new Error('late boom'); }, 20); return 'ok'; };
        exports.echo = async (event) => event;
        exports.notAFunction = 42;
        exports.fcHttp = (req, resp, context) => {
          resp.setStatusCode(207);
          resp.setHeader('X-A', ['1', '2']);
          resp.send(Buffer.from([0, 255]));
        };
        exports.moduleInfo = async () => ({
          filename: __filename, dirname: __dirname, id: module.id, loaded: module.loaded,
          cached: require.cache[__filename] === module, leftpad: require.resolve('leftpad'),
        });
    """,
    "node_modules/leftpad/package.json": '{"name": "leftpad", "main": "lib.js"}\n',
    "node_modules/leftpad/lib.js": r"""
        module.exports = (s, n) => ' '.repeat(Math.max(0, n - s.length)) + s;
    """,
    "esm/app.mjs": r"""
        import { basename } from 'node:path';
        export const handler = async (event, context) => ({ esm: true, file: basename(import.meta.url), rid: context.awsRequestId });
    """,
    "typemod/package.json": '{"type": "module"}\n',
    "typemod/app.js": r"""
        export default { handler: async (event) => ({ defaultExport: true, v: event.v }) };
    """,
    "src/nested/app.js": r"""
        module.exports.handler = async () => 'nested';
    """,
    "cjs/app.cjs": r"""
        exports.handler = (event, context, cb) => cb(null, 'cjs');
    """,
    "broken.js": r"""
        throw new Error('module exploded');
    """,
    "slowinit.js": r"""
        const until = Date.now() + 300;
        while (Date.now() < until) {}
        exports.handler = async (event, context) => ({ rem: context.getRemainingTimeInMillis() });
    """,
}

PY_FILES = {
    "app.py": r"""
        import asyncio
        import logging
        import os
        import sys
        import time

        import vendored_pkg

        print('loading app.py')

        def obj(event, context):
            return {'ok': True, 'echo': event}

        def text(event, context):
            return 'hello'

        def nothing(event, context):
            pass

        def plain(event, context):
            return {'doubled': event['n'] * 2}

        def fail(event, context):
            raise ValueError('bad thing')

        def ctx(event, context):
            keys = ['AWS_LAMBDA_FUNCTION_NAME', 'AWS_LAMBDA_FUNCTION_VERSION',
                    'AWS_LAMBDA_FUNCTION_MEMORY_SIZE', 'LAMBDA_TASK_ROOT', '_HANDLER',
                    'AWS_LAMBDA_LOG_GROUP_NAME', 'AWS_LAMBDA_LOG_STREAM_NAME', 'AWS_REGION',
                    'AWS_EXECUTION_ENV', 'MY_SETTING']
            return {
                'fn': context.function_name, 'ver': context.function_version,
                'mem': context.memory_limit_in_mb, 'rem': context.get_remaining_time_in_millis(),
                'rid': context.aws_request_id, 'arn': context.invoked_function_arn,
                'group': context.log_group_name, 'stream': context.log_stream_name,
                'client_context': context.client_context, 'identity': context.identity,
                'cwd': os.getcwd(), 'env': {k: os.environ.get(k) for k in keys},
            }

        def log(event, context):
            print('hello from', event['who'])
            print('careful', file=sys.stderr)
            return 1

        def multi(event, context):
            logging.warning('line1\nline2\nline3')
            logging.getLogger('x').error('oops')
            print('partial line', end='')
            return 1

        def slow(event, context):
            time.sleep(event['ms'] / 1000.0)
            print('done ' + event['tag'])
            return {'tag': event['tag'], 'rid': context.aws_request_id}

        async def aslow(event, context):
            await asyncio.sleep(event['ms'] / 1000.0)
            print('done ' + event['tag'])
            return {'tag': event['tag'], 'rid': context.aws_request_id}

        async def afail(event, context):
            await asyncio.sleep(0)
            raise KeyError('nope')

        def unserialisable(event, context):
            return {'s': {1, 2}}

        def vendored(event, context):
            return vendored_pkg.greet(event['name'])

        def stdio(event, context):
            print('flushed', flush=True)
            sys.stdout.buffer  # must exist
            return {
                'isatty': sys.stdout.isatty(), 'fileno': sys.stdout.fileno(),
                'errfileno': sys.stderr.fileno(), 'encoding': sys.stdout.encoding,
                'errors': sys.stderr.errors, 'has_buffer': sys.stdout.buffer is not None,
                'written': sys.stdout.write('x\n'),
            }

        def echo(event, context):
            return event

        not_callable = 42

        def wsgi(environ, start_response):
            start_response('207 Multi-Status', [('X-A', '1'), ('X-A', '2')])
            return [b'\x00', b'\xff']
    """,
    "vendored_pkg/__init__.py": r"""
        def greet(name):
            return 'hello ' + name + ' from vendored_pkg'
    """,
    "src/handlers/api.py": r"""
        def handler(event, context):
            return 'nested'
    """,
    "broken.py": r"""
        raise RuntimeError('module exploded')
    """,
    "slowinit.py": r"""
        import time

        time.sleep(0.3)


        def handler(event, context):
            return {"rem": context.get_remaining_time_in_millis()}
    """,
}


def make_fixture(kind):
    root = tempfile.mkdtemp(prefix="lampyr-%s-fn-" % kind)
    files = NODE_FILES if kind == "nodejs" else PY_FILES
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).lstrip("\n"))
    return root


# ---------------------------------------------------------------- process


class LineCollector(object):
    def __init__(self, pipe):
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout=5.0, what="log line"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise TestFailure("timed out waiting for %s; have %r" % (what, self.lines[-20:]))
                self.cond.wait(left)


def spawn_with_fd3(argv, child_fd, **kw):
    """Popen with `child_fd` appearing as fd 3 in the child (pass_fds=(3,)).

    The driver is single-threaded where it creates descriptors, so fd 3 of
    this process is borrowed for the duration of the fork and then restored.
    """
    saved = saved_inheritable = None
    if child_fd != 3:
        try:
            saved = os.dup(3)
            saved_inheritable = os.get_inheritable(3)
        except OSError:
            saved = None
        os.dup2(child_fd, 3, inheritable=False)
    try:
        return subprocess.Popen(argv, pass_fds=(3,), **kw)
    finally:
        if child_fd != 3:
            if saved is not None:
                os.dup2(saved, 3, inheritable=saved_inheritable)
                os.close(saved)
            else:
                os.close(3)


class Runtime(object):
    """One bootstrap process and the host end of its socketpair."""

    def __init__(self, kind, env_extra=None):
        self.kind = kind
        self.host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        if kind == "nodejs":
            argv = [shutil.which("node") or "node", BOOTSTRAPS[kind]]
        else:
            argv = [sys.executable, "-s", "-B", BOOTSTRAPS[kind]]
        env = dict(os.environ)
        env.pop("AWS_REGION", None)
        env["LAMPYR_FD"] = "3"
        env.update(env_extra or {})

        self.proc = spawn_with_fd3(
            argv,
            child_fd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        child.close()
        self.out = LineCollector(self.proc.stdout)
        self.err = LineCollector(self.proc.stderr)

    # -- frames

    def send(self, ftype, payload):
        self.host.sendall(struct.pack(">IB", len(payload) + 1, ftype) + payload)

    def _recv_exact(self, n, deadline):
        chunks = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("timed out reading a frame")
            self.host.settimeout(left)
            try:
                data = self.host.recv(min(n, 1 << 20))
            except socket.timeout:
                raise TestFailure("timed out reading a frame")
            if not data:
                raise TestFailure("socket closed by the runtime while reading a frame")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def recv(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        (length,) = struct.unpack(">I", self._recv_exact(4, deadline))
        check(1 <= length <= 64 * 1024 * 1024, "bad frame length %d" % length)
        body = self._recv_exact(length, deadline)
        return body[0], body[1:]

    def expect(self, ftype, timeout=10.0):
        t, payload = self.recv(timeout)
        if t != ftype:
            raise TestFailure(
                "expected %s frame, got %s: %r" % (NAMES.get(ftype), NAMES.get(t, hex(t)), payload[:500])
            )
        return payload

    def hello(self):
        return json.loads(self.expect(T_HELLO, timeout=15))

    def load(self, task_root, handler, concurrency=1, timeout_ms=10000, env=None, expect=T_LOADED, extra=None):
        cfg = {
            "handler": handler, "task_root": task_root, "function_name": "fixture-fn",
            "function_version": "7", "memory_mb": 256, "timeout_ms": timeout_ms,
            "concurrency": concurrency, "env": env if env is not None else {"MY_SETTING": "on"},
        }
        cfg.update(extra or {})
        self.timeout_ms = timeout_ms
        self.send(T_LOAD, json.dumps(cfg).encode())
        return json.loads(self.expect(expect, timeout=15))

    def start(self, task_root, handler, **kw):
        self.hello()
        return self.load(task_root, handler, **kw)

    def invoke_frame(self, inv_id, event, rid, timeout_ms=None):
        if timeout_ms is None:
            timeout_ms = getattr(self, "timeout_ms", 10000)
        deadline = int(time.time() * 1000) + timeout_ms
        rid_b = rid.encode("ascii")
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        payload = struct.pack(">IQB", inv_id, deadline, len(rid_b)) + rid_b + body
        return struct.pack(">IB", len(payload) + 1, T_INVOKE) + payload

    def send_invoke(self, inv_id, event, rid=None):
        self.host.sendall(self.invoke_frame(inv_id, event, rid or "req-%d" % inv_id))

    def reply(self, timeout=10.0):
        t, payload = self.recv(timeout)
        check(t in (T_RESULT, T_ERROR), "expected RESULT/ERROR, got %s" % NAMES.get(t, hex(t)))
        (inv_id,) = struct.unpack(">I", payload[:4])
        return t, inv_id, json.loads(payload[4:].decode("utf-8"))

    def call(self, event=None, inv_id=1, rid=None, expect=T_RESULT):
        self.send_invoke(inv_id, event, rid)
        t, got_id, value = self.reply()
        eq(got_id, inv_id, "reply id")
        if t != expect:
            raise TestFailure("expected %s, got %s %r" % (NAMES[expect], NAMES[t], value))
        return value

    # -- process

    def wait_exit(self, timeout=5.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("runtime did not exit within %.1fs" % timeout)

    def records(self, stream):
        lines = (self.out if stream == "out" else self.err).lines
        return [RECORD.match(l) for l in list(lines)]

    def find_record(self, stream, rid=None, level=None, contains="", timeout=5.0):
        coll = self.out if stream == "out" else self.err

        def pred(line):
            m = RECORD.match(line)
            return bool(m) and (rid is None or m.group(2) == rid) and (
                level is None or m.group(3) == level) and contains in m.group(4)

        return RECORD.match(coll.wait_for(pred, timeout, "%s record rid=%s level=%s containing %r" % (
            stream, rid, level, contains)))

    def close(self):
        try:
            self.host.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.out.thread.join(2)
        self.err.thread.join(2)
        self.proc.stdout.close()
        self.proc.stderr.close()
        # Nothing but log records may ever appear on stdout/stderr.
        for name, coll in (("stdout", self.out), ("stderr", self.err)):
            for line in coll.lines:
                check(RECORD.match(line), "%s line is not a log record: %r" % (name, line))


# ---------------------------------------------------------------- tests

TESTS = []


def test(*kinds):
    def deco(fn):
        for kind in kinds or ("nodejs", "python"):
            TESTS.append(("%s: %s" % (kind, fn.__name__), kind, fn))
        return fn

    return deco


def mod(kind):
    return "index" if kind == "nodejs" else "app"


@test()
def hello(kind, root):
    rt = Runtime(kind)
    try:
        h = rt.hello()
        eq(h.get("runtime"), kind, "HELLO runtime")
        eq(h.get("pid"), rt.proc.pid, "HELLO pid")
        check(isinstance(h.get("version"), str) and h["version"], "HELLO version: %r" % h)
        if kind == "nodejs":
            check(h["version"].startswith("v"), "node version looks like v20.x: %r" % h["version"])
    finally:
        rt.close()


@test()
def load_and_results(kind, root):
    rt = Runtime(kind)
    try:
        eq(rt.start(root, mod(kind) + ".obj"), {}, "LOADED payload")
        rt.find_record("out", rid="-", level="INFO", contains="loading ")
        eq(rt.call({"a": [1, 2, {"b": "ü"}]}, inv_id=1), {"ok": True, "echo": {"a": [1, 2, {"b": "ü"}]}}, "object result")
        eq(rt.call(None, inv_id=2), {"ok": True, "echo": None}, "null event")
        eq(rt.call("s", inv_id=0xFFFFFFFF), {"ok": True, "echo": "s"}, "max id")
    finally:
        rt.close()


def simple_result(kind, root, export, event, expected):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + "." + export)
        eq(rt.call(event, inv_id=42), expected, export + " result")
    finally:
        rt.close()


@test()
def returns_string(kind, root):
    simple_result(kind, root, "text", {}, "hello")


@test()
def returns_nothing(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".nothing")
        rt.send_invoke(5, {})
        t, inv_id, value = rt.reply()
        eq((t, inv_id), (T_RESULT, 5), "frame type and id")
        check(value is None, "result is null: %r" % value)
    finally:
        rt.close()


@test()
def returns_plain_value(kind, root):
    simple_result(kind, root, "plain", {"n": 21}, {"doubled": 42})


@test()
def thrown_error(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".fail")
        err = rt.call({}, inv_id=9, rid="rid-error-1", expect=T_ERROR)
        eq(err.get("errorType"), "TypeError" if kind == "nodejs" else "ValueError", "errorType")
        eq(err.get("errorMessage"), "bad thing", "errorMessage")
        check(isinstance(err.get("stackTrace"), list) and err["stackTrace"], "stackTrace: %r" % err)
        check(any("fail" in line for line in err["stackTrace"]), "stack names the handler: %r" % err["stackTrace"])
        rec = rt.find_record("err", rid="rid-error-1", level="ERROR", contains="Invoke Error ")
        logged = json.loads(rec.group(4)[len("Invoke Error "):])
        eq(logged.get("errorMessage"), "bad thing", "logged error")
        # The process keeps serving after an error.
        eq(rt.call({}, inv_id=10, expect=T_ERROR)["errorMessage"], "bad thing", "second error")
    finally:
        rt.close()


@test("nodejs")
def thrown_non_error(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "index.failString")
        err = rt.call({}, expect=T_ERROR)
        eq((err["errorType"], err["errorMessage"]), ("Error", "just a string"), "non-Error throw")
    finally:
        rt.close()
    rt = Runtime(kind)
    try:
        rt.start(root, "index.failCustom")
        err = rt.call({}, expect=T_ERROR)
        eq((err["errorType"], err["errorMessage"]), ("MyError", "custom"), "subclass name")
    finally:
        rt.close()


@test("python")
def async_error(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "app.afail")
        err = rt.call({}, expect=T_ERROR, rid="rid-afail")
        eq(err["errorType"], "KeyError", "errorType")
        check(any("afail" in l for l in err["stackTrace"]), "stack names handler: %r" % err["stackTrace"])
        check(not any("asyncio" in l or "bootstrap.py" in l for l in err["stackTrace"]),
              "runtime frames hidden: %r" % err["stackTrace"])
        rt.find_record("err", rid="rid-afail", level="ERROR", contains="Invoke Error")
    finally:
        rt.close()


@test()
def context_fields(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".ctx", timeout_ms=3000)
        c = rt.call({}, rid="ctx-rid-1")
        eq(c["fn"], "fixture-fn", "function name")
        eq(c["ver"], "7", "function version")
        eq(c["mem"], "256", "memory limit (string)")
        eq(c["rid"], "ctx-rid-1", "request id")
        eq(c["arn"], "arn:aws:lambda:local:000000000000:function:fixture-fn", "arn")
        eq(c["group"], "/lampyr/fixture-fn", "log group")
        check(isinstance(c["stream"], str) and "[7]" in c["stream"], "log stream %r" % c["stream"])
        check(isinstance(c["rem"], int) and 0 < c["rem"] <= 3000, "remaining time %r" % c["rem"])
        eq(os.path.realpath(c["cwd"]), os.path.realpath(root), "cwd is task_root")
        env = c["env"]
        eq(env["AWS_LAMBDA_FUNCTION_NAME"], "fixture-fn", "AWS_LAMBDA_FUNCTION_NAME")
        eq(env["AWS_LAMBDA_FUNCTION_VERSION"], "7", "AWS_LAMBDA_FUNCTION_VERSION")
        eq(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        eq(os.path.realpath(env["LAMBDA_TASK_ROOT"]), os.path.realpath(root), "LAMBDA_TASK_ROOT")
        eq(env["_HANDLER"], mod(kind) + ".ctx", "_HANDLER")
        eq(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/lampyr/fixture-fn", "AWS_LAMBDA_LOG_GROUP_NAME")
        eq(env["AWS_LAMBDA_LOG_STREAM_NAME"], c["stream"], "AWS_LAMBDA_LOG_STREAM_NAME")
        eq(env["AWS_REGION"], "local", "AWS_REGION default")
        eq(env["AWS_EXECUTION_ENV"], "lampyr_" + kind, "AWS_EXECUTION_ENV")
        eq(env["MY_SETTING"], "on", "env from LOAD")
        if kind == "nodejs":
            eq(c["wait"], True, "callbackWaitsForEmptyEventLoop")
        else:
            eq((c["client_context"], c["identity"]), (None, None), "client_context/identity")
        # An expired deadline floors at 0.
        rt.host.sendall(rt.invoke_frame(2, {}, "ctx-rid-2", timeout_ms=-5000))
        t, _, c2 = rt.reply()
        eq((t, c2["rem"]), (T_RESULT, 0), "remaining time after the deadline")
    finally:
        rt.close()
    # AWS_REGION is kept when already set.
    rt = Runtime(kind, env_extra={"AWS_REGION": "eu-west-9"})
    try:
        rt.start(root, mod(kind) + ".ctx")
        eq(rt.call({})["env"]["AWS_REGION"], "eu-west-9", "AWS_REGION kept")
    finally:
        rt.close()


@test()
def log_records(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".log")
        eq(rt.call({"who": "tester"}, rid="log-rid-1"), 1, "result")
        rec = rt.find_record("out", rid="log-rid-1", level="INFO", contains="hello from tester")
        eq(rec.group(4), "hello from tester", "message")
        rt.find_record("err", rid="log-rid-1", level="WARN" if kind == "nodejs" else "ERROR", contains="careful")
    finally:
        rt.close()


@test()
def multiline_log(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".multi")
        rt.call({}, rid="multi-rid")
        if kind == "nodejs":
            rec = rt.find_record("out", rid="multi-rid", level="INFO", contains="line1")
            eq(rec.group(4), "line1\rline2\rline3", "multi-line message")
            rec = rt.find_record("err", rid="multi-rid", level="ERROR", contains="E1")
            check("\r    at " in rec.group(4), "stack kept in one record: %r" % rec.group(4))
        else:
            rec = rt.find_record("err", rid="multi-rid", level="WARN", contains="line1")
            eq(rec.group(4), "line1\rline2\rline3", "multi-line logging message")
            rt.find_record("err", rid="multi-rid", level="ERROR", contains="oops")
            # A partial line is flushed as its own record at the end of the invocation.
            rec = rt.find_record("out", rid="multi-rid", level="INFO", contains="partial line")
            eq(rec.group(4), "partial line", "partial line")
    finally:
        rt.close()


@test()
def concurrent_invocations(kind, root):
    handler = mod(kind) + ".slow"
    rt = Runtime(kind)
    try:
        rt.start(root, handler, concurrency=2)
        t0 = time.monotonic()
        rt.send_invoke(1, {"ms": 400, "tag": "A"}, "rid-A")
        rt.send_invoke(2, {"ms": 50, "tag": "B"}, "rid-B")
        replies = [rt.reply(), rt.reply()]
        elapsed = time.monotonic() - t0
        eq([r[1] for r in replies], [2, 1], "the shorter invocation answers first")
        byid = {r[1]: r[2] for r in replies}
        eq(byid[1], {"tag": "A", "rid": "rid-A"}, "result A")
        eq(byid[2], {"tag": "B", "rid": "rid-B"}, "result B")
        check(elapsed < 2.0, "invocations took too long (%.3fs)" % elapsed)
        rt.find_record("out", rid="rid-A", level="INFO", contains="done A")
        rt.find_record("out", rid="rid-B", level="INFO", contains="done B")
        for m in rt.records("out"):
            if m and m.group(4) in ("done A", "done B"):
                eq(m.group(2), "rid-" + m.group(4)[-1], "log line tagged with its own id")
    finally:
        rt.close()


@test("python")
def concurrent_async(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "app.aslow", concurrency=2)
        rt.send_invoke(1, {"ms": 300, "tag": "A"}, "rid-A")
        rt.send_invoke(2, {"ms": 30, "tag": "B"}, "rid-B")
        replies = [rt.reply(), rt.reply()]
        eq([r[1] for r in replies], [2, 1], "the shorter invocation answers first")
        eq({r[1]: r[2]["rid"] for r in replies}, {1: "rid-A", 2: "rid-B"}, "request ids")
        rt.find_record("out", rid="rid-A", contains="done A")
        rt.find_record("out", rid="rid-B", contains="done B")
    finally:
        rt.close()


@test("python")
def async_handler(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "app.aslow")
        for i in range(3):
            eq(rt.call({"ms": 5, "tag": "T%d" % i}, inv_id=i, rid="arid-%d" % i),
               {"tag": "T%d" % i, "rid": "arid-%d" % i}, "async result %d" % i)
            rt.find_record("out", rid="arid-%d" % i, contains="done T%d" % i)
    finally:
        rt.close()


@test()
def missing_module(kind, root):
    rt = Runtime(kind)
    try:
        rt.hello()
        err = rt.load(root, "nope.handler", expect=T_LOAD_ERROR)
        eq(err.get("errorType"), "Runtime.ImportModuleError", "errorType")
        check("nope" in err.get("errorMessage", ""), "message names the module: %r" % err)
        eq(rt.wait_exit(), 1, "exit status")
        rt.find_record("err", rid="-", level="ERROR", contains="Runtime.ImportModuleError")
    finally:
        rt.close()


@test()
def module_throws_on_load(kind, root):
    rt = Runtime(kind)
    try:
        rt.hello()
        err = rt.load(root, "broken.handler", expect=T_LOAD_ERROR)
        eq(err.get("errorType"), "Runtime.ImportModuleError", "errorType")
        check("module exploded" in err.get("errorMessage", ""), "message: %r" % err)
        check(any("broken" in l for l in err.get("stackTrace", [])), "stack: %r" % err)
        eq(rt.wait_exit(), 1, "exit status")
        rt.find_record("err", rid="-", level="ERROR", contains="module exploded")
    finally:
        rt.close()


def load_cfg(root, handler, timeout_ms):
    return json.dumps({
        "handler": handler, "task_root": root, "function_name": "fixture-fn",
        "function_version": "7", "memory_mb": 256, "timeout_ms": timeout_ms,
        "concurrency": 1, "env": {},
    }).encode()


@test()
def invoke_sent_with_load(kind, root):
    # A cold start sends the INVOKE right behind the LOAD: the runtime holds
    # it until the handler is loaded (300 ms of module init here), runs it,
    # and moves its deadline on by the time it was held.
    rt = Runtime(kind)
    try:
        rt.hello()
        load = load_cfg(root, "slowinit.handler", 1000)
        rt.host.sendall(struct.pack(">IB", len(load) + 1, T_LOAD) + load
                        + rt.invoke_frame(1, {}, "with-load", timeout_ms=1000))
        rt.expect(T_LOADED, timeout=15)
        t, inv_id, value = rt.reply()
        eq((t, inv_id), (T_RESULT, 1), "reply to the held INVOKE")
        # Held without the shift, ~700 ms would be left; with it, close to 1000.
        check(850 < value["rem"] <= 1000, "remaining time after a 300 ms load: %r" % value)
    finally:
        rt.close()
    check_broken_load_with_invoke(Runtime(kind), root, hello_first=True)


def check_broken_load_with_invoke(rt, root, hello_first):
    # A load that fails leaves the INVOKE sent with it unanswered:
    # LOAD_ERROR, then the runtime exits.
    try:
        if hello_first:
            rt.hello()
        load = load_cfg(root, "broken.handler", 1000)
        rt.host.sendall(struct.pack(">IB", len(load) + 1, T_LOAD) + load
                        + rt.invoke_frame(1, {}, "with-broken-load"))
        if not hello_first:
            rt.hello()
        err = json.loads(rt.expect(T_LOAD_ERROR, timeout=15))
        eq(err.get("errorType"), "Runtime.ImportModuleError", "errorType")
        eq(rt.wait_exit(), 1, "exit status")
    finally:
        rt.close()


@test("nodejs")
def hello_without_warm_up(kind, root):
    # LAMPYR_WARM_UP=0 (a request is waiting): HELLO at once, and the
    # instance works the same.
    rt = Runtime(kind, env_extra={"LAMPYR_WARM_UP": "0"})
    try:
        rt.start(root, "index.obj")
        eq(rt.call({"a": 1}), {"ok": True, "echo": {"a": 1}}, "result")
    finally:
        rt.close()


@test()
def cold_start_frames_before_hello(kind, root):
    # A cold start from scratch: the host sends LOAD and the request's
    # INVOKE before the runtime is up (the Node.js bootstrap then answers
    # them with blocking reads and writes before it opens its socket). A
    # LOAD larger than one read, then later INVOKEs on the opened socket.
    rt = Runtime(kind, env_extra={"LAMPYR_WARM_UP": "0"})
    try:
        big = "x" * (300 * 1024)
        load = json.dumps({
            "handler": mod(kind) + ".ctx", "task_root": root, "function_name": "fixture-fn",
            "function_version": "7", "memory_mb": 256, "timeout_ms": 10000,
            "concurrency": 1, "env": {"MY_SETTING": big},
        }).encode()
        rt.timeout_ms = 10000
        rt.host.sendall(struct.pack(">IB", len(load) + 1, T_LOAD) + load
                        + rt.invoke_frame(1, {}, "first-request"))
        rt.hello()
        rt.expect(T_LOADED, timeout=15)
        t, inv_id, value = rt.reply()
        eq((t, inv_id), (T_RESULT, 1), "reply to the INVOKE sent with the LOAD")
        eq(value["rid"], "first-request", "request id")
        eq(value["env"]["MY_SETTING"], big, "the LOAD's environment, read across reads")
        for i in range(2, 5):
            eq(rt.call({}, inv_id=i, rid="later-%d" % i)["rid"], "later-%d" % i, "a later request")
    finally:
        rt.close()
    check_broken_load_with_invoke(Runtime(kind, env_extra={"LAMPYR_WARM_UP": "0"}), root,
                                  hello_first=False)


@test("nodejs")
def warm_up_leaves_no_trace(kind, root):
    # The warm-up runs a cold start against a module of its own through a
    # socket of its own: none of its frames reach the host, and its
    # directory, socket and handler are gone once HELLO is sent.
    tmp = tempfile.mkdtemp(prefix="lampyr-test-tmp-")
    rt = Runtime(kind, env_extra={"TMPDIR": tmp})
    try:
        rt.hello()
        eq(os.listdir(tmp), [], "the warm-up's temporary files")
        fds = os.listdir("/proc/%d/fd" % rt.proc.pid)
        sockets = [f for f in fds if os.readlink("/proc/%d/fd/%s" % (rt.proc.pid, f)).startswith("socket:")]
        eq(sockets, ["3"], "sockets open after the warm-up")
        # No handler is left loaded: an INVOKE before LOAD is refused.
        rt.send_invoke(1, {}, "before-load")
        t, payload = rt.recv()
        eq(t, T_ERROR, "frame for an INVOKE before LOAD")
        eq(json.loads(payload[4:]).get("errorType"), "Runtime.NotLoaded", "errorType")
        eq(rt.load(root, "index.obj"), {}, "LOADED")
        eq(rt.call({"a": 1}), {"ok": True, "echo": {"a": 1}}, "result")
    finally:
        rt.close()
        shutil.rmtree(tmp, ignore_errors=True)


@test("nodejs")
def commonjs_module_like_require(kind, root):
    # The handler module is loaded as require() would load it.
    rt = Runtime(kind)
    try:
        rt.start(root, "index.moduleInfo")
        v = rt.call({})
        eq(v["filename"], os.path.join(root, "index.js"), "__filename")
        eq(v["dirname"], root, "__dirname")
        eq(v["id"], os.path.join(root, "index.js"), "module.id")
        eq((v["loaded"], v["cached"]), (True, True), "module.loaded, in require.cache")
        eq(v["leftpad"], os.path.join(root, "node_modules", "leftpad", "lib.js"), "require.resolve from the handler")
    finally:
        rt.close()


@test()
def missing_export(kind, root):
    for export in ("doesNotExist", "notAFunction" if kind == "nodejs" else "not_callable"):
        rt = Runtime(kind)
        try:
            rt.hello()
            err = rt.load(root, mod(kind) + "." + export, expect=T_LOAD_ERROR)
            eq(err.get("errorType"), "Runtime.HandlerNotFound", "errorType for " + export)
            eq(rt.wait_exit(), 1, "exit status")
            rt.find_record("err", rid="-", level="ERROR", contains="Runtime.HandlerNotFound")
        finally:
            rt.close()


@test("nodejs")
def esm_handlers(kind, root):
    for handler, event, expected in (
        ("esm/app.handler", {}, {"esm": True, "file": "app.mjs", "rid": "esm-rid"}),
        ("typemod/app.handler", {"v": 3}, {"defaultExport": True, "v": 3}),
        ("src/nested/app.handler", {}, "nested"),
        ("cjs/app.handler", {}, "cjs"),
    ):
        rt = Runtime(kind)
        try:
            rt.start(root, handler)
            eq(rt.call(event, rid="esm-rid"), expected, handler)
        finally:
            rt.close()


@test("nodejs")
def callback_form(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "index.cb")
        eq(rt.call({"x": 7}), {"cb": 7}, "callback(null, result)")
    finally:
        rt.close()
    rt = Runtime(kind)
    try:
        rt.start(root, "index.cbErr")
        err = rt.call({}, expect=T_ERROR)
        eq((err["errorType"], err["errorMessage"]), ("RangeError", "cb failed"), "callback(err)")
    finally:
        rt.close()
    rt = Runtime(kind)
    try:
        rt.start(root, "index.legacy")
        eq(rt.call({}), {"legacy": True}, "context.succeed")
    finally:
        rt.close()


@test("nodejs")
def node_modules_require(kind, root):
    simple_result(kind, root, "leftpad", {"s": "7", "n": 3}, "  7")


@test("python")
def vendored_package(kind, root):
    simple_result(kind, root, "vendored", {"name": "bob"}, "hello bob from vendored_pkg")
    rt = Runtime(kind)
    try:
        rt.start(root, "src/handlers/api.handler")
        eq(rt.call({}), "nested", "nested module path")
    finally:
        rt.close()


@test("python")
def stdio_compat(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "app.stdio")
        r = rt.call({}, rid="stdio-rid")
        eq((r["isatty"], r["fileno"], r["errfileno"], r["has_buffer"], r["written"]),
           (False, 1, 2, True, 2), "stdio attributes")
        check(r["encoding"] and r["errors"], "encoding/errors: %r" % r)
        rt.find_record("out", rid="stdio-rid", contains="flushed")
    finally:
        rt.close()


@test()
def marshal_error(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + (".circular" if kind == "nodejs" else ".unserialisable"))
        err = rt.call({}, expect=T_ERROR, rid="marshal-rid")
        eq(err["errorType"], "Runtime.MarshalError", "errorType")
        check(err["errorMessage"], "message present")
        rt.find_record("err", rid="marshal-rid", level="ERROR", contains="Runtime.MarshalError")
    finally:
        rt.close()


@test()
def pipelined_and_large_frames(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".echo", concurrency=1)
        # Many frames in one write, and one event of several MiB split across reads.
        rt.host.sendall(b"".join(rt.invoke_frame(i, {"i": i}, "p-%d" % i) for i in range(200)))
        got = {}
        for _ in range(200):
            t, inv_id, value = rt.reply()
            got[inv_id] = value
        eq(got, {i: {"i": i} for i in range(200)}, "pipelined results")
        big = {"data": "x" * (6 * 1024 * 1024), "uni": "√" * 1000}
        eq(rt.call(big, inv_id=777), big, "large event round trip")
        eq(rt.call(b"not json", inv_id=778, expect=T_ERROR)["errorType"], "Runtime.UnmarshalError", "bad event")
    finally:
        rt.close()


@test()
def socket_closed_exits(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".slow")
        rt.send_invoke(1, {"ms": 3000, "tag": "Z"})
        time.sleep(0.1)
        rt.host.close()
        t0 = time.monotonic()
        eq(rt.wait_exit(3), 0, "exit status after the host went away")
        check(time.monotonic() - t0 < 2, "exited promptly")
    finally:
        rt.close()
    rt = Runtime(kind)  # also before LOAD
    try:
        rt.hello()
        rt.host.close()
        eq(rt.wait_exit(3), 0, "exit status before LOAD")
    finally:
        rt.close()


@test()
def protocol_violation_is_fatal(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".obj")
        rt.host.sendall(struct.pack(">I", 0))  # a frame must be at least 1 byte long
        eq(rt.wait_exit(5), 1, "exit status")
        rt.find_record("err", level="ERROR", contains="frame length")
    finally:
        rt.close()


@test("nodejs")
def uncaught_exception_exits(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "index.late")
        eq(rt.call({}), "ok", "result before the crash")
        eq(rt.wait_exit(5), 1, "exit status")
        rt.find_record("err", level="ERROR", contains="late boom")
    finally:
        rt.close()


@test()
def overhead(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, mod(kind) + ".echo")
        frame = rt.invoke_frame(1, {"k": "v"}, "bench-rid")
        for _ in range(200):  # warm up
            rt.host.sendall(frame)
            rt.reply()
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            rt.host.sendall(frame)
            rt.reply()
        per = (time.perf_counter() - t0) / n * 1e6
        if VERBOSE:
            print("    %s: %.1f us per sequential round trip (including this driver)" % (kind, per))
        check(per < 2000, "round trip %.1f us is too slow" % per)
    finally:
        rt.close()


# ---------------------------------------------------------------- main


HTTP_EVENT = {
    "version": "2.0", "rawPath": "/p", "rawQueryString": "", "headers": {"host": "h:1"},
    "requestContext": {"apiId": "fixture-fn", "http": {
        "method": "GET", "path": "/p", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"}},
    "isBase64Encoded": False,
}


@test()
def fc_http_handlers_answer_with_proxy_results(kind, root):
    rt = Runtime(kind)
    try:
        rt.start(root, "index.fcHttp" if kind == "nodejs" else "app.wsgi", extra={"handler_type": "http"})
        eq(rt.call(HTTP_EVENT, inv_id=1), {
            "statusCode": 207, "headers": {}, "multiValueHeaders": {"x-a": ["1", "2"]},
            "body": "AP8=", "isBase64Encoded": True,
        }, "proxy result")
        err = rt.call({"not": "http"}, inv_id=2, expect=T_ERROR)
        eq(err.get("errorType"), "Runtime.NotHttpEvent", "a non-HTTP event's error")
        # The instance goes on serving.
        eq(rt.call(HTTP_EVENT, inv_id=3)["statusCode"], 207, "after the error")
    finally:
        rt.close()


@test()
def a_missing_initializer_is_a_load_error(kind, root):
    rt = Runtime(kind)
    try:
        err = rt.start(root, mod(kind) + ".obj", extra={"initializer": mod(kind) + ".nope"},
                       expect=T_LOAD_ERROR)
        eq(err.get("errorType"), "Runtime.InitializerNotFound", "errorType")
        check("nope" in err.get("errorMessage", ""), "the message names it: %r" % err)
        rt.wait_exit()
    finally:
        rt.close()


def main(argv):
    global VERBOSE
    args = [a for a in argv if a != "-v"]
    VERBOSE = len(args) != len(argv)
    if shutil.which("node") is None:
        print("node not found on PATH")
        return 1
    roots = {kind: make_fixture(kind) for kind in BOOTSTRAPS}
    passed = failed = 0
    try:
        for name, kind, fn in TESTS:
            if args and not any(a in name for a in args):
                continue
            t0 = time.monotonic()
            try:
                fn(kind, roots[kind])
            except Exception as e:
                failed += 1
                print("FAIL %s (%.2fs)" % (name, time.monotonic() - t0))
                if isinstance(e, TestFailure):
                    print("    " + str(e))
                else:
                    print(textwrap.indent(traceback.format_exc(), "    "))
            else:
                passed += 1
                print("ok   %s (%.2fs)" % (name, time.monotonic() - t0))
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
