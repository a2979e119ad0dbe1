# lampyr Python runtime bootstrap.
#
# Run as `python3 -s -B bootstrap.py` with one end of a Unix socketpair
# inherited as fd 3 (LAMPYR_FD). Speaks the instance protocol described in
# docs/protocol.md: sends HELLO, imports one function's handler on LOAD, then
# answers INVOKE frames with RESULT / ERROR frames. Handlers follow the AWS
# Lambda Python contract (`def handler(event, context)`, or `async def`).
# sys.stdout, sys.stderr and the logging root logger are redirected so that
# every line becomes one log record `ts<TAB>requestId<TAB>LEVEL<TAB>message`.

import contextvars
import importlib
import io
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback

T_HELLO = 0x01
T_LOAD = 0x02
T_LOADED = 0x03
T_LOAD_ERROR = 0x04
T_INVOKE = 0x10
T_POLL = 0x13
T_RESULT = 0x11
T_ERROR = 0x12
MAX_FRAME = 16 * 1024 * 1024

_THIS_FILE = os.path.abspath(__file__)
_REQ = contextvars.ContextVar("lampyr_request_id", default="-")

# ------------------------------------------------------------------ logging

_ts_cache = (-1, "")


def _timestamp():
    global _ts_cache
    t = time.time()
    s = int(t)
    cached = _ts_cache
    if cached[0] != s:
        cached = (s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)))
        _ts_cache = cached
    return "%s.%03dZ" % (cached[1], int((t - s) * 1000))


_fd_locks = {1: threading.Lock(), 2: threading.Lock()}


def _write_fd(fd, data):
    lock = _fd_locks.get(fd)
    if lock is None:
        lock = _fd_locks.setdefault(fd, threading.Lock())
    with lock:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                return  # the host closed the pipe; nothing left to do
            view = view[n:]


def _clean(msg):
    if "\n" in msg:
        msg = msg.replace("\r\n", "\r").replace("\n", "\r")
    return msg


def _emit(fd, rid, level, msg):
    line = "%s\t%s\t%s\t%s\n" % (_timestamp(), rid, level, _clean(msg))
    _write_fd(fd, line.encode("utf-8", "backslashreplace"))


def _emit_lines(fd, rid, level, lines):
    ts = _timestamp()
    out = "".join("%s\t%s\t%s\t%s\n" % (ts, rid, level, line) for line in lines)
    _write_fd(fd, out.encode("utf-8", "backslashreplace"))


class _LogStream(io.TextIOBase):
    """Replacement for sys.stdout / sys.stderr: one record per complete line."""

    def __init__(self, original, fd, level):
        super().__init__()
        self._original = original
        self._fd = fd
        self._level = level
        self._pending = {}  # request id -> partial line
        self.buffer = getattr(original, "buffer", None)

    @property
    def encoding(self):
        return getattr(self._original, "encoding", None) or "utf-8"

    @property
    def errors(self):
        return getattr(self._original, "errors", None) or "strict"

    @property
    def name(self):
        return getattr(self._original, "name", "<lampyr-%d>" % self._fd)

    @property
    def line_buffering(self):
        return True

    @property
    def mode(self):
        return "w"

    @property
    def closed(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        n = len(s)
        if not n:
            return 0
        rid = _REQ.get()
        pending = self._pending
        if "\n" not in s:
            pending[rid] = pending.get(rid, "") + s
            return n
        prev = pending.pop(rid, None)
        if prev:
            s = prev + s
        lines = s.split("\n")
        rest = lines.pop()
        if rest:
            pending[rid] = rest
        _emit_lines(self._fd, rid, self._level, lines)
        return n

    def flush_request(self, rid):
        rest = self._pending.pop(rid, None)
        if rest:
            _emit_lines(self._fd, rid, self._level, [rest])

    def flush_all(self):
        for rid in list(self._pending):
            self.flush_request(rid)

    def flush(self):
        # Complete lines are written immediately; partial lines are emitted
        # at the end of the invocation (or at exit).
        return None

    def close(self):
        return None

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False


class _LogHandler(logging.Handler):
    """Root logging handler: one record per log call, level from the record."""

    def emit(self, record):
        try:
            msg = self.format(record).rstrip("\n")
            no = record.levelno
            if no >= logging.ERROR:
                fd, level = 2, "ERROR"
            elif no >= logging.WARNING:
                fd, level = 2, "WARN"
            elif no >= logging.INFO:
                fd, level = 1, "INFO"
            elif no >= logging.DEBUG:
                fd, level = 1, "DEBUG"
            else:
                fd, level = 1, "TRACE"
            _emit(fd, _REQ.get(), level, msg)
        except Exception:
            self.handleError(record)


_stdout = None
_stderr = None


def _install_logging():
    global _stdout, _stderr
    _stdout = _LogStream(sys.stdout, 1, "INFO")
    _stderr = _LogStream(sys.stderr, 2, "ERROR")
    sys.stdout = _stdout
    sys.stderr = _stderr
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _LogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)


def _apply_log_level():
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    if level:
        level = level.upper()
        level = {"WARN": "WARNING", "TRACE": "DEBUG", "FATAL": "CRITICAL"}.get(level, level)
        if isinstance(logging.getLevelName(level), int):
            logging.getLogger().setLevel(level)


def _flush_logs(rid):
    _stdout.flush_request(rid)
    _stderr.flush_request(rid)


def _flush_all_logs():
    try:
        _stdout.flush_all()
        _stderr.flush_all()
    except Exception:
        pass


# ------------------------------------------------------------------ context


class LambdaContext(object):
    """The Lambda `context` object. Function-wide fields are class attributes
    set once at LOAD; per-invocation fields are instance attributes."""

    function_name = ""
    function_version = "$LATEST"
    invoked_function_arn = ""
    memory_limit_in_mb = "128"
    log_group_name = ""
    log_stream_name = ""
    client_context = None
    identity = None

    def __init__(self, request_id, deadline_ms):
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        left = int(self._deadline_ms - time.time() * 1000)
        return left if left > 0 else 0

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return (
            "LambdaContext([aws_request_id=%s,log_group_name=%s,log_stream_name=%s,"
            "function_name=%s,memory_limit_in_mb=%s,function_version=%s,"
            "invoked_function_arn=%s,client_context=%s,identity=%s])"
            % (
                self.aws_request_id,
                self.log_group_name,
                self.log_stream_name,
                self.function_name,
                self.memory_limit_in_mb,
                self.function_version,
                self.invoked_function_arn,
                self.client_context,
                self.identity,
            )
        )


class _Client(object):
    """`context.client_context.client`: the calling app (mobile SDKs)."""

    def __init__(self, d):
        d = d if isinstance(d, dict) else {}
        self.installation_id = d.get("installation_id")
        self.app_title = d.get("app_title")
        self.app_version_name = d.get("app_version_name")
        self.app_version_code = d.get("app_version_code")
        self.app_package_name = d.get("app_package_name")


class ClientContext(object):
    """`context.client_context`, from the Invoke API's X-Amz-Client-Context."""

    def __init__(self, d):
        self.client = _Client(d.get("client")) if d.get("client") is not None else None
        self.custom = d.get("custom")
        self.env = d.get("env")


class CognitoIdentity(object):
    """`context.identity`."""

    def __init__(self, d):
        self.cognito_identity_id = d.get("cognitoIdentityId")
        self.cognito_identity_pool_id = d.get("cognitoIdentityPoolId")


def _context(rid, deadline, extras):
    ctx = LambdaContext(rid, deadline)
    if extras is not None:
        try:
            x = json.loads(extras.decode("utf-8"))
        except ValueError:
            x = {}
        cc = x.get("client_context")
        if isinstance(cc, dict):
            ctx.client_context = ClientContext(cc)
        ident = x.get("identity")
        if isinstance(ident, dict):
            ctx.identity = CognitoIdentity(ident)
        if x.get("trace_id"):
            os.environ["_X_AMZN_TRACE_ID"] = str(x["trace_id"])
    return ctx


# ------------------------------------------------------------------ socket

_sock = None
_send_lock = threading.Lock()
_pack_frame_head = struct.Struct(">IB").pack
_pack_reply_head = struct.Struct(">IBI").pack
_unpack_invoke = struct.Struct(">IQB").unpack_from
_unpack_len = struct.Struct(">I").unpack_from


def _host_gone():
    # Best effort: emit partial log lines, but never hang on a stuck pipe.
    t = threading.Thread(target=_flush_all_logs, daemon=True)
    t.start()
    t.join(0.5)
    os._exit(0)


def _watch_hangup(fd):
    """Exit as soon as the host closes its end, even while an inline handler
    is running in the read loop's thread (poll for POLLRDHUP consumes no data)."""
    import select

    flags = getattr(select, "POLLRDHUP", 0) | select.POLLHUP
    try:
        p = select.poll()
        p.register(fd, flags)
        while True:
            for _, ev in p.poll():
                if ev & flags:
                    _host_gone()
    except Exception:
        return


def _send_unlocked(data):
    try:
        _sock.sendall(data)
    except OSError:
        _host_gone()


def _send_locked(data):
    with _send_lock:
        try:
            _sock.sendall(data)
        except OSError:
            _host_gone()


_send = _send_unlocked


def _send_frame(ftype, payload):
    _send(_pack_frame_head(len(payload) + 1, ftype) + payload)


def _fatal(kind):
    try:
        text = traceback.format_exc()
        _flush_all_logs()
        _emit(2, _REQ.get(), "ERROR", "%s: %s" % (kind, text.rstrip("\n")))
    finally:
        os._exit(1)


# ------------------------------------------------------------------ invoke

_handler = None
_concurrency = 1
_executor = None
_loop = None
_loop_thread_started = False
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.loads
_PLAIN_TYPES = frozenset([dict, list, str, int, float, bool, type(None)])
_ASYNCIO_DIR = None


def _error_body(rid, error_type, message, stack):
    obj = {"errorType": error_type, "errorMessage": message, "stackTrace": stack}
    body = json.dumps(obj, ensure_ascii=False)
    _emit(2, rid, "ERROR", "Invoke Error " + body)
    data = body.encode("utf-8", "backslashreplace")
    if len(data) + 5 > MAX_FRAME:
        obj = {"errorType": error_type, "errorMessage": message[:65536], "stackTrace": []}
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return T_ERROR, data


def _user_frames(tb):
    frames = traceback.extract_tb(tb)
    out = []
    for f in frames:
        fn = f.filename
        if fn == _THIS_FILE:
            continue
        if _ASYNCIO_DIR is not None and fn.startswith(_ASYNCIO_DIR):
            continue
        out.append(f)
    return traceback.format_list(out)


def _exception_body(rid, exc):
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable %s object>" % type(exc).__name__
    try:
        stack = _user_frames(exc.__traceback__)
    except Exception:
        stack = []
    return _error_body(rid, type(exc).__name__, message, stack)


_loop_lock = threading.Lock()


def _ensure_loop():
    global _loop, _ASYNCIO_DIR
    if _loop is not None:
        return _loop
    with _loop_lock:
        if _loop is not None:
            return _loop
        import asyncio

        _ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _loop = loop
    return _loop


def _start_loop_thread():
    global _loop_thread_started
    loop = _ensure_loop()
    if _loop_thread_started:
        return loop
    with _loop_lock:
        if not _loop_thread_started:
            import asyncio

            def run():
                asyncio.set_event_loop(loop)
                loop.run_forever()

            t = threading.Thread(target=run, name="lampyr-asyncio", daemon=True)
            t.start()
            _loop_thread_started = True
    return loop


async def _with_request_id(awaitable, rid):
    _REQ.set(rid)
    return await awaitable


def _await(awaitable, rid):
    if _concurrency <= 1:
        # Inline mode: the read loop's thread owns the persistent loop; the
        # task copies the current context, so the request id follows it.
        return _ensure_loop().run_until_complete(awaitable)
    import asyncio

    loop = _start_loop_thread()
    return asyncio.run_coroutine_threadsafe(_with_request_id(awaitable, rid), loop).result()


def _needs_await(value):
    t = type(value)
    if t in _PLAIN_TYPES:
        return False
    return hasattr(t, "__await__")


def _handler_exit(exc):
    code = exc.code
    _flush_all_logs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        _emit(2, _REQ.get(), "ERROR", str(code))
        code = 1
    _emit(2, _REQ.get(), "ERROR", "Runtime exited: the handler called sys.exit(%s)" % (exc.code,))
    os._exit(code)


def _run(deadline, rid, event_bytes, extras=None):
    if _handler is None:
        return _error_body(rid, "Runtime.NotLoaded", "INVOKE received before the handler was loaded", [])
    try:
        event = _decode(event_bytes.decode("utf-8")) if event_bytes else None
    except ValueError as e:
        return _error_body(rid, "Runtime.UnmarshalError", "Unable to parse event as JSON: %s" % e, [])
    try:
        result = _handler(event, _context(rid, deadline, extras))
        if _needs_await(result):
            result = _await(result, rid)
    except SystemExit as e:
        _handler_exit(e)
    except BaseException as e:
        return _exception_body(rid, e)
    try:
        body = _encode(result).encode("utf-8")
    except Exception as e:
        return _error_body(
            rid,
            "Runtime.MarshalError",
            "Unable to marshal response: %s" % (e,),
            [],
        )
    if len(body) + 5 > MAX_FRAME:
        return _error_body(
            rid,
            "Function.ResponseSizeTooLarge",
            "Response payload size (%d bytes) exceeded maximum allowed payload size (%d bytes)."
            % (len(body), MAX_FRAME - 5),
            [],
        )
    return T_RESULT, body


def _invoke(inv_id, deadline, rid, event_bytes, extras=None):
    token = _REQ.set(rid)
    try:
        ftype, body = _run(deadline, rid, event_bytes, extras)
        _flush_logs(rid)
    except BaseException:
        _fatal("Runtime Error")
    finally:
        _REQ.reset(token)
    _send(_pack_reply_head(len(body) + 5, ftype, inv_id) + body)


# ------------------------------------------------------------------ load


def _load_failed(error_type, message, stack):
    text = "%s: %s" % (error_type, message)
    if stack:
        text += "\n" + "".join(stack).rstrip("\n")
    _flush_all_logs()
    _emit(2, "-", "ERROR", text)
    obj = {"errorType": error_type, "errorMessage": message, "stackTrace": stack}
    _send_frame(T_LOAD_ERROR, json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace"))
    os._exit(1)


def _set_env(cfg, task_root, handler_str):
    env = cfg.get("env") or {}
    for k, v in env.items():
        os.environ[str(k)] = "" if v is None else str(v)
    name = LambdaContext.function_name
    version = LambdaContext.function_version
    stream = "%s/[%s]%s" % (time.strftime("%Y/%m/%d", time.gmtime()), version, os.urandom(16).hex())
    LambdaContext.log_group_name = "/lampyr/" + name
    LambdaContext.log_stream_name = stream
    os.environ["AWS_LAMBDA_FUNCTION_NAME"] = name
    os.environ["AWS_LAMBDA_FUNCTION_VERSION"] = version
    os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = LambdaContext.memory_limit_in_mb
    os.environ["LAMBDA_TASK_ROOT"] = task_root
    os.environ["LAMBDA_RUNTIME_DIR"] = cfg.get("runtime_dir") or os.path.dirname(_THIS_FILE)
    os.environ["_HANDLER"] = handler_str
    os.environ["AWS_LAMBDA_LOG_GROUP_NAME"] = LambdaContext.log_group_name
    os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = stream
    if not os.environ.get("AWS_REGION"):
        os.environ["AWS_REGION"] = "local"
    os.environ["AWS_EXECUTION_ENV"] = "lampyr_python"


def _load(cfg):
    global _handler, _concurrency, _executor, _send
    handler_str = str(cfg.get("handler") or "")
    task_root = os.path.abspath(str(cfg.get("task_root") or "."))
    name = str(cfg.get("function_name") or "")
    version = cfg.get("function_version")
    LambdaContext.function_name = name
    LambdaContext.function_version = "$LATEST" if version is None else str(version)
    LambdaContext.invoked_function_arn = "arn:aws:lambda:%s:%s:function:%s" % (
        cfg.get("region") or "local",
        cfg.get("account_id") or "000000000000",
        name,
    )
    LambdaContext.memory_limit_in_mb = str(cfg.get("memory_mb", 128))
    try:
        _concurrency = max(1, int(cfg.get("concurrency") or 1))
    except (TypeError, ValueError):
        _concurrency = 1
    _set_env(cfg, task_root, handler_str)
    _apply_log_level()

    try:
        os.chdir(task_root)
    except OSError as e:
        _load_failed("Runtime.ImportModuleError", "Cannot enter task root %s: %s" % (task_root, e), [])
    sys.path.insert(0, task_root)

    fn = _find_export(handler_str, "Runtime.HandlerNotFound")
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & 0x80:  # CO_COROUTINE: prepare the loop now
        if _concurrency > 1:
            _start_loop_thread()
        else:
            _ensure_loop()

    if _concurrency > 1:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(max_workers=_concurrency, thread_name_prefix="lampyr-invoke")
        _send = _send_locked
    if cfg.get("handler_type") == "http":
        fn = _wsgi_handler(fn)
    _set_fc_context(cfg, handler_str)
    if cfg.get("initializer"):
        _run_initializer(cfg)
    _handler = fn
    _flush_logs("-")
    _send_frame(T_LOADED, b"{}")


def _find_export(entry, not_found):
    """The function `entry` ("module.function") names, imported from the task
    root; a LOAD_ERROR (`not_found`: its errorType when it is missing) ends
    the runtime otherwise."""
    mod_path, dot, attr = entry.rpartition(".")
    if not dot or not mod_path or not attr:
        _load_failed(not_found, "Bad handler %r: expected 'module.function'" % entry, [])
    module_name = os.path.normpath(mod_path).strip("/").replace("/", ".")

    try:
        module = importlib.import_module(module_name)
    except BaseException as e:
        stack = traceback.format_exception(type(e), e, e.__traceback__)
        _load_failed(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, e),
            stack,
        )
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        _load_failed(
            not_found,
            "Handler '%s' %s on module '%s'" % (attr, "missing" if fn is None else "is not callable", module_name),
            [],
        )
    return fn


def _invoke_in_worker(inv_id, deadline, rid, event_bytes, extras=None):
    try:
        _invoke(inv_id, deadline, rid, event_bytes, extras)
    except BaseException:
        _fatal("Runtime Error")


# ------------------------------------------------------------------ Function Compute


def _set_fc_context(cfg, handler_str):
    """Function Compute's context fields, the same for every invocation of
    the instance: class attributes set once at LOAD. lampyr has no STS: the
    credentials are empty strings, as FC's are for a service without a
    role; no log service either (log_project, log_store empty); a function
    stands alone, so its service is named after it; the qualifier is the
    version the instance runs."""
    from types import SimpleNamespace

    name = LambdaContext.function_name
    version = LambdaContext.function_version
    LambdaContext.credentials = SimpleNamespace(access_key_id="", access_key_secret="", security_token="")
    LambdaContext.function = SimpleNamespace(
        name=name,
        handler=handler_str,
        memory=int(cfg.get("memory_mb", 128)),
        timeout=-(-int(cfg.get("timeout_ms") or 0) // 1000),
        initializer=str(cfg.get("initializer") or ""),
        initialization_timeout=-(-int(cfg.get("initialization_timeout_ms") or 0) // 1000),
    )
    LambdaContext.service = SimpleNamespace(
        name=name, log_project="", log_store="", qualifier=version, version_id=version
    )
    LambdaContext.region = str(cfg.get("region") or "local")
    LambdaContext.account_id = str(cfg.get("account_id") or "000000000000")
    LambdaContext.request_id = property(lambda self: self.aws_request_id)


def _run_initializer(cfg):
    """Runs the initializer (`def init(context)`, or `async def`) once,
    before LOADED, within its timeout; a LOAD_ERROR naming it ends the
    runtime if it fails or overruns."""
    entry = str(cfg["initializer"])
    init = _find_export(entry, "Runtime.InitializerNotFound")
    limit_ms = int(cfg.get("initialization_timeout_ms") or 3000)
    context = LambdaContext("init-" + os.urandom(8).hex(), time.time() * 1000 + limit_ms)
    failed = []

    def run():
        try:
            result = init(context)
            if _needs_await(result):
                _await(result, "-")
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=run, name="lampyr-initializer", daemon=True)
    t.start()
    t.join(limit_ms / 1000)
    if t.is_alive():
        _load_failed(
            "Runtime.InitializerTimeout",
            "the initializer %s did not finish within %g s (initialization_timeout in lampyr.toml): "
            "make it faster, or raise the limit" % (entry, limit_ms / 1000),
            [],
        )
    if failed:
        e = failed[0]
        _load_failed(
            "Runtime.InitializerError",
            "the initializer %s failed: %s: %s" % (entry, type(e).__name__, e),
            _user_frames(e.__traceback__),
        )


class _NotHttpEvent(Exception):
    pass


_NotHttpEvent.__name__ = "Runtime.NotHttpEvent"


def _wsgi_handler(app):
    """Function Compute's HTTP handler for Python, a WSGI application
    (`handler(environ, start_response)`, or a Flask app itself), as an
    ordinary handler of the HTTP trigger's payload-2.0 event, returning a
    proxy result. Chosen once at LOAD."""
    import base64

    def handler(event, context):
        rc = event.get("requestContext") if isinstance(event, dict) else None
        http = rc.get("http") if isinstance(rc, dict) else None
        if not isinstance(http, dict):
            raise _NotHttpEvent(
                'this function has an HTTP handler (handler_type = "http"), which only HTTP requests '
                "through its URL can call; it was called with another event"
            )
        body = event.get("body")
        if body is None:
            body = b""
        elif event.get("isBase64Encoded"):
            body = base64.b64decode(body)
        else:
            body = body.encode("utf-8")
        environ = _wsgi_environ(event, rc, http, body, context)
        started = []
        chunks = []

        def start_response(status, headers, exc_info=None):
            if exc_info is not None and started:
                # Nothing has been sent yet (the body is collected): the
                # new status and headers replace the old.
                started.clear()
            elif started:
                raise AssertionError("start_response called twice without exc_info")
            started.append((status, headers))
            return chunks.append

        result = app(environ, start_response)
        try:
            for chunk in result:
                if chunk:
                    chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the WSGI application returned without calling start_response")
        status, header_list = started[-1]
        single = {}
        multi = {}
        for k, v in header_list:
            k = k.lower()
            if k in multi:
                multi[k].append(v)
            elif k in single:
                multi[k] = [single.pop(k), v]
            else:
                single[k] = v
        out = b"".join(chunks)
        resp = {"statusCode": int(str(status).split(" ", 1)[0]), "headers": single}
        if multi:
            resp["multiValueHeaders"] = multi
        try:
            resp["body"] = out.decode("utf-8")
            resp["isBase64Encoded"] = False
        except UnicodeDecodeError:
            resp["body"] = base64.b64encode(out).decode("ascii")
            resp["isBase64Encoded"] = True
        return resp

    return handler


def _latin1(s):
    # WSGI's native strings: the bytes of the request, one character each.
    return s.encode("utf-8").decode("latin-1")


def _wsgi_environ(event, rc, http, body, context):
    headers = event.get("headers") or {}
    host = headers.get("host") or rc.get("domainName") or "localhost"
    if host.startswith("["):  # an IPv6 literal
        end = host.find("]") + 1
        name, port = host[:end], host[end + 1 :]
    else:
        name, _, port = host.partition(":")
    port = port or "80"
    script = "/fn/" + str(rc.get("apiId") or "")
    path = event.get("rawPath") or "/"
    query = event.get("rawQueryString") or ""
    environ = {
        "REQUEST_METHOD": str(http.get("method") or "GET"),
        "SCRIPT_NAME": _latin1(script),
        "PATH_INFO": _latin1(path),
        "QUERY_STRING": query,
        "CONTENT_TYPE": headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": str(http.get("protocol") or "HTTP/1.1"),
        "REMOTE_ADDR": str(http.get("sourceIp") or ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": headers.get("x-forwarded-proto", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": _concurrency > 1,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "fc.context": context,
        "fc.request_uri": _latin1(script + path) + ("?" + query if query else ""),
    }
    for k, v in headers.items():
        if k in ("content-type", "content-length"):
            continue
        environ["HTTP_" + k.upper().replace("-", "_")] = _latin1(str(v))
    cookies = event.get("cookies")
    if cookies:
        environ["HTTP_COOKIE"] = _latin1("; ".join(cookies))
    return environ


# ------------------------------------------------------------------ main loop


def _serve():
    loaded = False
    buf = bytearray()
    chunk = bytearray(256 * 1024)
    view = memoryview(chunk)
    recv_into = _sock.recv_into
    while True:
        try:
            n = recv_into(chunk)
        except OSError:
            n = 0
        if n == 0:
            _host_gone()
        buf += view[:n]
        blen = len(buf)
        pos = 0
        # INVOKE frames that came with the LOAD (a cold start) waited for
        # the handler to load: their deadlines move on by that time.
        waited_ms = 0
        while blen - pos >= 4:
            (flen,) = _unpack_len(buf, pos)
            if flen < 1 or flen > MAX_FRAME:
                raise ValueError("invalid frame length %d" % flen)
            end = pos + 4 + flen
            if end > blen:
                break
            ftype = buf[pos + 4]
            if ftype == T_INVOKE:
                if flen < 14:
                    raise ValueError("malformed INVOKE frame (%d bytes)" % flen)
                inv_id, deadline, flags = _unpack_invoke(buf, pos + 5)
                rs = pos + 18
                es = rs + (flags & 0x7F)
                if es > end:
                    raise ValueError("malformed INVOKE frame (request id overruns frame)")
                rid = buf[rs:es].decode("ascii", "replace")
                extras = None
                if flags & 0x80:
                    # Extras (a u32 length, JSON) follow the request id.
                    if es + 4 > end:
                        raise ValueError("malformed INVOKE frame (extras overrun frame)")
                    (xlen,) = _unpack_len(buf, es)
                    extras = bytes(buf[es + 4 : es + 4 + xlen])
                    es += 4 + xlen
                    if es > end:
                        raise ValueError("malformed INVOKE frame (extras overrun frame)")
                event = bytes(buf[es:end])
                deadline += waited_ms
                if _executor is not None:
                    _executor.submit(_invoke_in_worker, inv_id, deadline, rid, event, extras)
                else:
                    _invoke(inv_id, deadline, rid, event, extras)
            elif ftype == T_LOAD:
                if loaded:
                    _emit(2, "-", "WARN", "ignoring a second LOAD frame")
                else:
                    loaded = True
                    t0 = time.monotonic()
                    _load(json.loads(bytes(buf[pos + 5 : end]).decode("utf-8")))
                    waited_ms = int((time.monotonic() - t0) * 1000)
            elif ftype == T_POLL:
                # A hint to poll for the next frame rather than sleep: this
                # runtime reads with blocking calls and does not take it.
                pass
            else:
                _emit(2, "-", "WARN", "ignoring unexpected frame type 0x%02x" % ftype)
            pos = end
        if pos:
            del buf[:pos]


def main():
    global _sock
    fd = int(os.environ.get("LAMPYR_FD") or 3)
    _sock = socket.socket(fileno=fd)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        pass
    # Function code, not the runtime directory, is what should be importable.
    here = os.path.dirname(_THIS_FILE)
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]
    _install_logging()
    threading.Thread(target=_watch_hangup, args=(fd,), name="lampyr-hangup", daemon=True).start()
    hello = {
        "runtime": "python",
        "version": "%d.%d.%d" % sys.version_info[:3],
        "pid": os.getpid(),
    }
    _send_frame(T_HELLO, json.dumps(hello).encode("utf-8"))
    try:
        _serve()
    except BaseException:
        _fatal("Runtime Error")


if __name__ == "__main__":
    main()
