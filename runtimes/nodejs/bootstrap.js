// lampyr Node.js runtime bootstrap.
//
// Run as `node bootstrap.js` with one end of a Unix socketpair inherited as
// fd 3 (LAMPYR_FD). Speaks the instance protocol described in
// docs/protocol.md: sends HELLO, loads one function's handler on LOAD, then
// answers INVOKE frames (concurrently) with RESULT / ERROR frames, or with a
// stream (STREAM_START, STREAM_CHUNK, STREAM_END) for a handler wrapped in
// awslambda.streamifyResponse. Handlers follow the AWS Lambda Node.js
// contract (async, plain-value, callback and streaming forms; CommonJS and
// ES modules). console.* is replaced so that every call
// writes one log record `ts<TAB>requestId<TAB>LEVEL<TAB>message` to
// stdout/stderr.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const Module = require('node:module');
const { createRequire } = Module;
const { pathToFileURL } = require('node:url');
const { AsyncLocalStorage } = require('node:async_hooks');

const T_HELLO = 0x01;
const T_LOAD = 0x02;
const T_LOADED = 0x03;
const T_LOAD_ERROR = 0x04;
const T_INVOKE = 0x10;
const T_RESULT = 0x11;
const T_ERROR = 0x12;
const T_POLL = 0x13;
const T_STREAM_START = 0x14;
const T_STREAM_CHUNK = 0x15;
const T_STREAM_END = 0x16;
const MAX_CHUNK = 1024 * 1024;
const MAX_FRAME = 16 * 1024 * 1024;

const als = new AsyncLocalStorage();

// ---------------------------------------------------------------- logging

let sleepCell = null;
function writeAll(fd, str) {
  const buf = Buffer.from(str, 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e && e.code === 'EAGAIN') {
        // A non-blocking pipe is full: wait a little for the host to drain it.
        if (sleepCell === null) sleepCell = new Int32Array(new SharedArrayBuffer(4));
        Atomics.wait(sleepCell, 0, 0, 1);
        continue;
      }
      return; // EPIPE etc.: logging must never throw into user code
    }
  }
}

const NEWLINES = /\r?\n/g;

function writeRecord(fd, rid, level, msg) {
  if (msg.indexOf('\n') !== -1) msg = msg.replace(NEWLINES, '\r');
  writeAll(fd, new Date().toISOString() + '\t' + rid + '\t' + level + '\t' + msg + '\n');
}

function record(fd, level, msg) {
  const rid = als.getStore();
  writeRecord(fd, rid === undefined ? '-' : rid, level, msg);
}

function consoleMethod(fd, level) {
  return function (...args) {
    record(fd, level, util.format(...args));
  };
}

console.log = consoleMethod(1, 'INFO');
console.info = consoleMethod(1, 'INFO');
console.debug = consoleMethod(1, 'DEBUG');
console.warn = consoleMethod(2, 'WARN');
console.error = consoleMethod(2, 'ERROR');
console.trace = function trace(...args) {
  const err = { name: 'Trace', message: util.format(...args) };
  Error.captureStackTrace(err, trace);
  record(2, 'TRACE', err.stack);
};
console.dir = function dir(obj, options) {
  record(1, 'INFO', util.inspect(obj, { customInspect: false, ...options }));
};

// Process warnings (deprecations, experimental features) become WARN records
// instead of free-form stderr output.
process.removeAllListeners('warning');
process.on('warning', (w) => {
  record(2, 'WARN', w instanceof Error ? w.name + ': ' + w.message : String(w));
});

// ---------------------------------------------------------------- errors

function safeInspect(v) {
  try {
    return util.inspect(v, { depth: 3, breakLength: Infinity });
  } catch (_) {
    return String(v);
  }
}

// Lambda's error object for anything thrown / rejected / passed to callback.
function errorObject(e) {
  try {
    if (e instanceof Error || (e !== null && typeof e === 'object' && typeof e.message === 'string')) {
      let type = typeof e.name === 'string' && e.name !== '' ? e.name : 'Error';
      if (type === 'Error') {
        const ctor = e.constructor;
        if (typeof ctor === 'function' && ctor !== Object && typeof ctor.name === 'string' &&
            ctor.name !== '' && ctor.name !== 'Error') {
          type = ctor.name;
        }
      }
      const stack = typeof e.stack === 'string' ? e.stack.split('\n') : [];
      return { errorType: type, errorMessage: String(e.message), stackTrace: stack };
    }
  } catch (_) {
    // fall through: treat as a non-Error value
  }
  return {
    errorType: 'Error',
    errorMessage: typeof e === 'string' ? e : safeInspect(e),
    stackTrace: [],
  };
}

function fatal(kind, err) {
  let json;
  try {
    json = JSON.stringify(errorObject(err));
  } catch (_) {
    json = String(err);
  }
  const rid = als.getStore();
  writeRecord(2, rid === undefined ? '-' : rid, 'ERROR', kind + ' ' + json);
  process.exit(1);
}

process.on('uncaughtException', (err) => fatal('Uncaught Exception', err));
process.on('unhandledRejection', (reason) => fatal('Unhandled Promise Rejection', reason));

// ---------------------------------------------------------------- socket

const FD = Number(process.env.LAMPYR_FD || 3);

function hostGone() {
  process.exit(0);
}

// The host's socket as a net.Socket, once opened. An instance that a
// request is waiting for (LAMPYR_WARM_UP=0) first talks to the host with
// blocking reads and writes (`syncOut`, `readFirstFrames`) and opens it
// afterwards: loading node:net takes a few milliseconds, which the first
// response need not wait for.
let sock = null;
let net = null;

function openSocket() {
  if (sock !== null) return;
  if (net === null) net = require('node:net');
  sock = new net.Socket({ fd: FD, readable: true, writable: true });
  sock.on('end', hostGone);
  sock.on('close', hostGone);
  sock.on('error', hostGone);
  sock.on('data', hostReader);
  if (out === syncOut) out = sock;
}

function writeAllSync(b) {
  let off = 0;
  while (off < b.length) {
    try {
      off += fs.writeSync(FD, b, off, b.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN' && e.code !== 'EINTR') hostGone();
    }
  }
}

// Frames written with blocking writes until the socket is opened; corked
// frames leave in one write, as on the socket.
const syncOut = {
  corks: 0,
  held: [],
  write(b, cb) {
    if (this.corks > 0) this.held.push(b);
    else writeAllSync(b);
    if (cb) process.nextTick(cb);
    return true;
  },
  cork() {
    this.corks += 1;
  },
  uncork() {
    if (this.corks > 0 && --this.corks === 0 && this.held.length > 0) {
      const b = Buffer.concat(this.held);
      this.held = [];
      writeAllSync(b);
    }
  },
};

// Where frames go: the host's socket, syncOut before it is opened, or
// during the warm-up the host's stand-in.
let out = syncOut;

// One frame: u32 length, the type, `payload` (a Buffer).
function encodeFrame(type, payload) {
  const b = Buffer.allocUnsafe(5 + payload.length);
  b.writeUInt32BE(payload.length + 1, 0);
  b[4] = type;
  payload.copy(b, 5);
  return b;
}

function sendFrame(type, json, cb) {
  out.write(encodeFrame(type, Buffer.from(json, 'utf8')), cb);
}

// RESULT / ERROR: u32 id followed by JSON. Returns false if the frame would
// exceed the protocol's maximum size (nothing is sent then).
function sendReply(type, id, json) {
  const n = Buffer.byteLength(json, 'utf8');
  if (n + 5 > MAX_FRAME) return false;
  const b = Buffer.allocUnsafe(9 + n);
  b.writeUInt32BE(n + 5, 0);
  b[4] = type;
  b.writeUInt32BE(id, 5);
  b.write(json, 9, n, 'utf8');
  // Replies produced in the same turn of the event loop (several
  // invocations in flight) leave in one write.
  if (!corked) {
    corked = true;
    corkedSock = out;
    out.cork();
    process.nextTick(uncork);
  }
  out.write(b);
  return true;
}

// ---------------------------------------------------------------- warm-up

// A pooled instance waits for its function; its first request should not
// pay for compiling the invocation path. Before saying HELLO, run a whole
// cold start against a throwaway module, through a Unix socket of its own
// standing in for the host's: LOAD with INVOKEs right behind it, then more
// INVOKEs, read and answered by the same code as the host's frames (the
// first read and the first corked write of a socket are slow too).
function warmUp(done) {
  const startCwd = process.cwd();
  let dir = null;
  let server = null;
  let host = null;
  let conn = null;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    clearTimeout(guard);
    out = sock;
    try {
      if (host !== null) host.destroy();
      if (conn !== null) conn.destroy();
      if (server !== null) server.close();
    } catch (_) {
      // Already closed.
    }
    if (dir !== null) {
      for (const k of Object.keys(require.cache)) if (k.startsWith(dir)) delete require.cache[k];
      try {
        // Leave the directory before it goes: moving out of a deleted
        // working directory is slow (the kernel frees it then), and the
        // real LOAD's chdir would otherwise pay for it.
        process.chdir(startCwd);
      } catch (_) {
        // The LOAD's chdir pays it instead.
      }
      try {
        fs.rmSync(dir, { recursive: true, force: true });
      } catch (_) {
        // Left in the instance's own /tmp, which goes with it.
      }
    }
    setImmediate(() => {
      handler = null;
      isCallbackHandler = false;
      isStreamingHandler = false;
      loading = false;
      queued.length = 0;
      fnName = fnVersion = fnArn = memoryMb = logGroup = logStream = '';
      done();
    });
  };
  // Warming up is an optimisation: whatever goes wrong, say HELLO anyway.
  const guard = setTimeout(finish, 2000);
  try {
    new Date().toISOString();
    process.env.LAMPYR_WARM_UP = '1';
    delete process.env.LAMPYR_WARM_UP;
    dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'lampyr-warm-up-'));
    fs.writeFileSync(path.join(dir, 'warm.js'), [
      'exports.handler = async (event, context) => ({',
      "  statusCode: 200, headers: { 'content-type': 'text/plain' },",
      '  body: event.rawPath + String(context.getRemainingTimeInMillis() > 0),',
      '});',
    ].join('\n'));
    const event = Buffer.from(JSON.stringify({
      version: '2.0', routeKey: '$default', rawPath: '/warm-up', rawQueryString: '',
      headers: { 'user-agent': 'lampyr' }, requestContext: { http: { method: 'GET', path: '/warm-up' } },
      isBase64Encoded: false,
    }));
    const invokeFrame = (id) => {
      const head = Buffer.alloc(14);
      head.writeUInt32BE(id, 0);
      const deadline = Date.now() + 60000;
      head.writeUInt32BE(Math.floor(deadline / 4294967296), 4);
      head.writeUInt32BE(deadline % 4294967296, 8);
      head[12] = 1;
      head[13] = 0x2d; // request id '-'
      return encodeFrame(T_INVOKE, Buffer.concat([head, event]));
    };
    const ROUNDS = [8, 16];
    let expected = 1 + ROUNDS[0];
    let round = 0;
    server = net.createServer((c) => {
      conn = c;
      c.on('error', finish);
      out = c;
      c.on('data', frameReader(onFrame));
    });
    server.on('error', finish);
    server.listen(path.join(dir, 'host.sock'), () => {
      host = net.connect(path.join(dir, 'host.sock'));
      host.on('error', finish);
      // The host's side: count the replies; send the next round when one is in.
      host.on('data', frameReader(() => {
        if (--expected > 0) return;
        round += 1;
        if (round === ROUNDS.length) {
          finish();
          return;
        }
        expected = ROUNDS[round];
        const frames = [];
        for (let i = 0; i < ROUNDS[round]; i++) frames.push(invokeFrame(i));
        host.write(Buffer.concat(frames));
      }));
      const first = [encodeFrame(T_LOAD, Buffer.from(JSON.stringify({
        handler: 'warm.handler',
        task_root: dir,
        function_name: 'warm-up',
        function_version: '0',
        memory_mb: 128,
        env: {},
      })))];
      for (let i = 0; i < ROUNDS[0]; i++) first.push(invokeFrame(i));
      host.write(Buffer.concat(first));
    });
  } catch (_) {
    finish();
  }
}

let corked = false;
let corkedSock = null;
function uncork() {
  corked = false;
  corkedSock.uncork();
}

// ---------------------------------------------------------------- state

let handler = null;
let isCallbackHandler = false;
let isStreamingHandler = false;
let loading = false;
let fnName = '';
let fnVersion = '';
let fnArn = '';
let memoryMb = '';
let logGroup = '';
let logStream = '';

// ---------------------------------------------------------------- context

class Context {
  #deadline;
  #ok;
  #fail;

  constructor(rid, deadline, ok, fail, extras) {
    this.callbackWaitsForEmptyEventLoop = true;
    this.functionName = fnName;
    this.functionVersion = fnVersion;
    this.invokedFunctionArn = fnArn;
    this.memoryLimitInMB = memoryMb;
    this.awsRequestId = rid;
    this.logGroupName = logGroup;
    this.logStreamName = logStream;
    // What the caller sent besides the event (Lambda's Invoke API).
    this.clientContext = extras === undefined ? undefined : extras.client_context;
    this.identity = extras === undefined ? undefined : extras.identity;
    this.#deadline = deadline;
    this.#ok = ok;
    this.#fail = fail;
  }

  getRemainingTimeInMillis() {
    const left = this.#deadline - Date.now();
    return left > 0 ? left : 0;
  }

  // Legacy completion methods.
  done(err, result) {
    if (err !== undefined && err !== null) this.#fail(err);
    else this.#ok(result);
  }

  succeed(result) {
    this.#ok(result);
  }

  fail(err) {
    this.#fail(err === undefined || err === null ? new Error('handled') : err);
  }
}

// ---------------------------------------------------------------- invoke

function replyError(id, rid, obj) {
  let json = JSON.stringify(obj);
  writeRecord(2, rid, 'ERROR', 'Invoke Error ' + json);
  if (!sendReply(T_ERROR, id, json)) {
    json = JSON.stringify({
      errorType: obj.errorType,
      errorMessage: String(obj.errorMessage).slice(0, 65536),
      stackTrace: [],
    });
    sendReply(T_ERROR, id, json);
  }
}

function replyResult(id, rid, value) {
  let json;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    replyError(id, rid, {
      errorType: 'Runtime.MarshalError',
      errorMessage: 'Unable to stringify response body as JSON: ' + errorObject(e).errorMessage,
      stackTrace: [],
    });
    return;
  }
  if (json === undefined) json = 'null';
  if (!sendReply(T_RESULT, id, json)) {
    replyError(id, rid, {
      errorType: 'Function.ResponseSizeTooLarge',
      errorMessage: 'Response payload size (' + Buffer.byteLength(json) +
        ' bytes) exceeded maximum allowed payload size (' + (MAX_FRAME - 5) + ' bytes).',
      stackTrace: [],
    });
  }
}

function isThenable(v) {
  if (v === null || (typeof v !== 'object' && typeof v !== 'function')) return false;
  try {
    return typeof v.then === 'function';
  } catch (_) {
    return false;
  }
}

function runHandler(id, rid, deadline, event, extras) {
  let settled = false;
  const ok = (value) => {
    if (settled) return;
    settled = true;
    replyResult(id, rid, value);
  };
  const fail = (err) => {
    if (settled) return;
    settled = true;
    replyError(id, rid, errorObject(err));
  };
  const ctx = new Context(rid, deadline, ok, fail, extras);
  let ret;
  try {
    if (isCallbackHandler) {
      ret = handler(event, ctx, (err, result) => {
        if (err !== undefined && err !== null) fail(err);
        else ok(result);
      });
    } else {
      ret = handler(event, ctx);
    }
  } catch (e) {
    fail(e);
    return;
  }
  if (isThenable(ret)) {
    Promise.resolve(ret).then(ok, (e) => fail(e === undefined || e === null ? new Error(String(e)) : e));
  } else if (!isCallbackHandler) {
    ok(ret);
  }
}

function invoke(id, deadline, rid, eventStr, extrasStr) {
  if (handler === null) {
    replyError(id, rid, {
      errorType: 'Runtime.NotLoaded',
      errorMessage: 'INVOKE received before the handler was loaded',
      stackTrace: [],
    });
    return;
  }
  let event;
  try {
    event = eventStr.length === 0 ? null : JSON.parse(eventStr);
  } catch (e) {
    replyError(id, rid, {
      errorType: 'Runtime.UnmarshalError',
      errorMessage: 'Unable to parse event as JSON: ' + e.message,
      stackTrace: [],
    });
    return;
  }
  let extras;
  if (extrasStr !== undefined) {
    try {
      extras = JSON.parse(extrasStr);
    } catch (_) {
      extras = {};
    }
    if (extras.trace_id) process.env._X_AMZN_TRACE_ID = String(extras.trace_id);
  }
  als.run(rid, isStreamingHandler ? runStreamingHandler : runHandler, id, rid, deadline, event, extras);
}

// ---------------------------------------------------------------- streaming

// Lambda's response streaming: `awslambda.streamifyResponse(handler)` marks
// a handler that is called as (event, responseStream, context) and writes
// its response to the stream; `awslambda.HttpResponseStream.from(stream,
// {statusCode, headers, cookies})` makes it an HTTP response, whose
// prelude (the JSON and 8 NUL bytes) goes before the first byte. The host
// gets STREAM_START (with the content type) before the first byte,
// STREAM_CHUNKs of at most 1 MiB, and STREAM_END (with the error object if
// the handler failed after the stream started; an ERROR frame if it failed
// before). Each chunk is written with back-pressure: the stream's write
// callback waits until the socket took the frame.
const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const HTTP_INTEGRATION = 'application/vnd.awslambda.http-integration-response';

class HttpResponseStream {
  static from(stream, prelude) {
    stream.setContentType(HTTP_INTEGRATION);
    stream._prelude = Buffer.concat([Buffer.from(JSON.stringify(prelude || {}), 'utf8'), Buffer.alloc(8)]);
    return stream;
  }
}

globalThis.awslambda = {
  streamifyResponse(fn) {
    fn[STREAMING] = 'response';
    return fn;
  },
  HttpResponseStream,
};

function streamFrame(type, id, body) {
  const b = Buffer.allocUnsafe(9 + body.length);
  b.writeUInt32BE(body.length + 5, 0);
  b[4] = type;
  b.writeUInt32BE(id, 5);
  body.copy(b, 9);
  return b;
}

// The Writable class, made on the first streamed invocation (node:stream
// stays off the path of ordinary handlers).
let ResponseStream = null;
function responseStreamClass() {
  if (ResponseStream !== null) return ResponseStream;
  const { Writable } = require('node:stream');
  ResponseStream = class ResponseStream extends Writable {
    constructor(id) {
      super();
      this._id = id;
      this._contentType = '';
      this._prelude = null;
      this._started = false;
    }

    setContentType(type) {
      if (this._started) throw new Error('setContentType: the response has already started streaming');
      this._contentType = String(type);
    }

    _begin() {
      if (this._started) return;
      this._started = true;
      out.write(streamFrame(T_STREAM_START, this._id, Buffer.from(this._contentType, 'utf8')));
      if (this._prelude !== null) this._send(this._prelude, null);
    }

    // `chunk` in frames of at most MAX_CHUNK; `cb` once the socket took the last.
    _send(chunk, cb) {
      let off = 0;
      while (chunk.length - off > MAX_CHUNK) {
        out.write(streamFrame(T_STREAM_CHUNK, this._id, chunk.subarray(off, off + MAX_CHUNK)));
        off += MAX_CHUNK;
      }
      if (chunk.length - off > 0) out.write(streamFrame(T_STREAM_CHUNK, this._id, chunk.subarray(off)), cb);
      else if (cb !== null) process.nextTick(cb);
    }

    _write(chunk, encoding, cb) {
      this._begin();
      this._send(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding), cb);
    }

    _final(cb) {
      this._begin();
      cb();
    }
  };
  return ResponseStream;
}

function runStreamingHandler(id, rid, deadline, event, extras) {
  const Stream = responseStreamClass();
  const stream = new Stream(id);
  let settled = false;
  const ended = (err) => {
    if (settled) return;
    settled = true;
    if (err === null) {
      out.write(streamFrame(T_STREAM_END, id, Buffer.alloc(0)));
      return;
    }
    const obj = errorObject(err);
    if (!stream._started) {
      // Nothing streamed yet: an ordinary error.
      stream._started = true;
      replyError(id, rid, obj);
      return;
    }
    const json = JSON.stringify(obj);
    writeRecord(2, rid, 'ERROR', 'Invoke Error ' + json);
    out.write(streamFrame(T_STREAM_END, id, Buffer.from(json, 'utf8')));
  };
  stream.on('finish', () => ended(null));
  stream.on('error', (e) => ended(e === undefined || e === null ? new Error('the response stream failed') : e));
  // Destroyed without an error: the response ends there.
  stream.on('close', () => ended(null));
  const fail = (e) => {
    ended(e === undefined || e === null ? new Error(String(e)) : e);
    if (!stream.destroyed) stream.destroy();
  };
  const ctx = new Context(rid, deadline, () => {}, fail, extras);
  let ret;
  try {
    ret = handler(event, stream, ctx);
  } catch (e) {
    fail(e);
    return;
  }
  // An async handler whose promise resolves without ending its stream has
  // it ended; one that returns no promise ends it itself, when it is done.
  if (isThenable(ret)) {
    Promise.resolve(ret).then(() => {
      if (!stream.writableEnded && !stream.destroyed) stream.end();
    }, fail);
  }
}

// ---------------------------------------------------------------- Function Compute

// Function Compute's context fields, the same for every invocation of the
// instance: set once at LOAD on Context's prototype, so an invocation pays
// nothing for them. lampyr has no STS: the credentials are empty strings,
// as FC's are for a service without a role; no log service either
// (logProject, logStore empty); a function stands alone, so its service is
// named after it; the qualifier is the version the instance runs.
function setFcContext(cfg, handlerStr) {
  const P = Context.prototype;
  P.credentials = Object.freeze({ accessKeyId: '', accessKeySecret: '', securityToken: '' });
  P.function = Object.freeze({
    name: fnName,
    handler: handlerStr,
    memory: Number(memoryMb),
    timeout: Math.ceil(Number(cfg.timeout_ms || 0) / 1000),
    initializer: cfg.initializer ? String(cfg.initializer) : '',
    initializationTimeout: Math.ceil(Number(cfg.initialization_timeout_ms || 0) / 1000),
  });
  P.service = Object.freeze({
    name: fnName, logProject: '', logStore: '', qualifier: fnVersion, versionId: fnVersion,
  });
  P.region = String(cfg.region || 'local');
  P.accountId = String(cfg.account_id || '000000000000');
  P.logger = console;
}
Object.defineProperty(Context.prototype, 'requestId', {
  get() {
    return this.awsRequestId;
  },
});

// Runs the initializer (`exports.init = (context, callback)`, or async)
// once, before LOADED, within its timeout. False once a LOAD_ERROR has been
// sent.
async function runInitializer(cfg, taskRoot) {
  const entry = String(cfg.initializer);
  const init = await findExport(entry, taskRoot, 'Runtime.InitializerNotFound');
  if (init === null) return false;
  const limitMs = Number(cfg.initialization_timeout_ms || 3000);
  let suffix = '';
  for (let i = 0; i < 2; i++) suffix += Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, '0');
  const outcome = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ timeout: true }), limitMs);
    const settle = (err) => {
      clearTimeout(timer);
      resolve({ err });
    };
    const ok = () => settle(null);
    const fail = (e) => settle(e === undefined || e === null ? new Error(String(e)) : e);
    const ctx = new Context('init-' + suffix, Date.now() + limitMs, ok, fail);
    try {
      const ret = init.length >= 2
        ? init(ctx, (err) => (err !== undefined && err !== null ? fail(err) : ok()))
        : init(ctx);
      if (isThenable(ret)) Promise.resolve(ret).then(ok, fail);
      else if (init.length < 2) ok();
    } catch (e) {
      fail(e);
    }
  });
  if (outcome.timeout) {
    loadFailed('Runtime.InitializerTimeout', 'the initializer ' + entry + ' did not finish within ' +
      limitMs / 1000 + ' s (initialization_timeout in lampyr.toml): make it faster, or raise the limit', []);
    return false;
  }
  if (outcome.err) {
    const o = errorObject(outcome.err);
    loadFailed('Runtime.InitializerError', 'the initializer ' + entry + ' failed: ' + o.errorType + ': ' +
      o.errorMessage, o.stackTrace);
    return false;
  }
  return true;
}

// Function Compute's HTTP handler, `handler(req, resp, context)`, as an
// ordinary handler of the HTTP trigger's payload-2.0 event: `req` is a
// readable stream of the body with FC's fields, and `resp.send` ends the
// call with a proxy result. Chosen once at LOAD.
function fcHttpHandler(fn) {
  const { Readable } = require('node:stream');
  return (event, ctx) => new Promise((resolve, reject) => {
    const http = event !== null && typeof event === 'object' && event.requestContext &&
      event.requestContext.http;
    if (!http) {
      const e = new Error('this function has an HTTP handler (handler_type = "http"), which only HTTP ' +
        'requests through its URL can call; it was called with another event');
      e.name = 'Runtime.NotHttpEvent';
      throw e;
    }
    const body = typeof event.body === 'string'
      ? Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8') : null;
    const req = new Readable({ read() {} });
    if (body !== null && body.length > 0) req.push(body);
    req.push(null);
    const headers = Object.assign({}, event.headers);
    if (Array.isArray(event.cookies) && event.cookies.length > 0) headers.cookie = event.cookies.join('; ');
    const qs = event.rawQueryString || '';
    req.headers = headers;
    req.path = event.rawPath || '/';
    req.queries = fcQueries(qs);
    req.method = http.method;
    req.clientIP = http.sourceIp;
    req.url = req.path + (qs === '' ? '' : '?' + qs);
    let ret;
    try {
      ret = fn(req, new FcResponse(resolve), ctx);
    } catch (e) {
      reject(e);
      return;
    }
    if (isThenable(ret)) Promise.resolve(ret).then(undefined, reject);
  });
}

// `req.queries`: each name's value, or its values when it repeats.
function fcQueries(qs) {
  const out = {};
  if (qs === '') return out;
  for (const [k, v] of new URLSearchParams(qs)) {
    const had = out[k];
    if (had === undefined) out[k] = v;
    else if (Array.isArray(had)) had.push(v);
    else out[k] = [had, v];
  }
  return out;
}

class FcResponse {
  #send;
  #status = 200;
  #headers = Object.create(null);
  #sent = false;

  constructor(send) {
    this.#send = send;
  }

  setStatusCode(code) {
    const n = Number(code);
    if (!Number.isInteger(n) || n < 100 || n > 599) throw new TypeError('invalid status code ' + code);
    this.#status = n;
  }

  setHeader(name, value) {
    this.#headers[String(name).toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value);
  }

  getHeader(name) {
    return this.#headers[String(name).toLowerCase()];
  }

  deleteHeader(name) {
    delete this.#headers[String(name).toLowerCase()];
  }

  // Ends the call: a string, a Buffer (any bytes) or a readable stream.
  send(body) {
    if (this.#sent) {
      record(2, 'WARN', 'resp.send was called again; the response was already sent');
      return;
    }
    this.#sent = true;
    if (body !== null && typeof body === 'object' && typeof body.pipe === 'function' &&
        typeof body.on === 'function') {
      const chunks = [];
      body.on('data', (c) => chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c))));
      body.on('end', () => this.#finish(Buffer.concat(chunks)));
      body.on('error', (e) => this.#finish(Buffer.from(String(e && e.message))));
      return;
    }
    this.#finish(body);
  }

  #finish(body) {
    const headers = {};
    let multi = null;
    for (const k of Object.keys(this.#headers)) {
      const v = this.#headers[k];
      if (!Array.isArray(v)) headers[k] = v;
      else (multi === null ? (multi = {}) : multi)[k] = v;
    }
    const result = { statusCode: this.#status, headers };
    if (multi !== null) result.multiValueHeaders = multi;
    if (Buffer.isBuffer(body) || body instanceof Uint8Array) {
      result.body = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('base64');
      result.isBase64Encoded = true;
    } else {
      result.body = body === undefined || body === null ? '' : String(body);
      result.isBase64Encoded = false;
    }
    this.#send(result);
  }
}

// ---------------------------------------------------------------- load

function loadFailed(errorType, errorMessage, stackTrace) {
  const obj = { errorType, errorMessage, stackTrace };
  const lines = [errorType + ': ' + errorMessage].concat(stackTrace);
  writeRecord(2, '-', 'ERROR', lines.join('\n'));
  sendFrame(T_LOAD_ERROR, JSON.stringify(obj), () => process.exit(1));
  setTimeout(() => process.exit(1), 2000);
}

function isFile(p) {
  try {
    const st = fs.statSync(p, { throwIfNoEntry: false });
    return st !== undefined && st.isFile();
  } catch (_) {
    return false;
  }
}

// "module" if the nearest package.json above `file`, looking no higher
// than the task root, says "type": "module". Missing files are checked with
// stat, not by catching a failed read: the cold path stays free of errors.
function packageType(file, taskRoot) {
  const top = path.resolve(taskRoot);
  let dir = path.dirname(file);
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (isFile(pj)) {
      try {
        const t = JSON.parse(fs.readFileSync(pj, 'utf8')).type;
        return t === 'module' ? 'module' : 'commonjs';
      } catch (_) {
        return 'commonjs';
      }
    }
    const parent = path.dirname(dir);
    if (dir === top || parent === dir) return 'commonjs';
    dir = parent;
  }
}

// The parts of Node's CommonJS loader that loadCommonJs uses.
const canLoadDirectly = typeof Module._nodeModulePaths === 'function' &&
  typeof Module.prototype._compile === 'function' && typeof Module._cache === 'object';

// Loads a CommonJS file the way require() does once it has found the file
// (same module object, wrapper, cache entry and node_modules search paths),
// without searching for it: the handler's file is already known, and the
// search's file-system lookups are a noticeable part of a cold start.
function loadCommonJs(file) {
  const cached = Module._cache[file];
  if (cached !== undefined) return cached.exports;
  const m = new Module(file, null);
  m.filename = file;
  m.paths = Module._nodeModulePaths(path.dirname(file));
  Module._cache[file] = m;
  try {
    let src = fs.readFileSync(file, 'utf8');
    if (src.charCodeAt(0) === 0xfeff) src = src.slice(1);
    m._compile(src, file);
  } catch (e) {
    delete Module._cache[file];
    throw e;
  }
  m.loaded = true;
  return m.exports;
}

async function loadModule(file, taskRoot) {
  const importIt = () => import(pathToFileURL(file).href);
  if (file.endsWith('.mjs')) return importIt();
  if (file.endsWith('.js') && packageType(file, taskRoot) === 'module') return importIt();
  if (canLoadDirectly && (file.endsWith('.js') || file.endsWith('.cjs'))) return loadCommonJs(file);
  const req = createRequire(path.join(taskRoot, 'x.js'));
  try {
    return req(file);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') return importIt();
    throw e;
  }
}

function setEnv(cfg, taskRoot) {
  const env = cfg.env || {};
  for (const k of Object.keys(env)) {
    const v = env[k];
    process.env[k] = v === null || v === undefined ? '' : String(v);
  }
  const now = new Date();
  const day = now.toISOString().slice(0, 10).replace(/-/g, '/');
  logGroup = '/lampyr/' + fnName;
  // A name, not a secret: Math.random avoids loading node:crypto (~2 ms)
  // on the cold-start path.
  let suffix = '';
  for (let i = 0; i < 4; i++) suffix += Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, '0');
  logStream = day + '/[' + fnVersion + ']' + suffix;
  process.env.AWS_LAMBDA_FUNCTION_NAME = fnName;
  process.env.AWS_LAMBDA_FUNCTION_VERSION = fnVersion;
  process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE = memoryMb;
  process.env.LAMBDA_TASK_ROOT = taskRoot;
  process.env.LAMBDA_RUNTIME_DIR = cfg.runtime_dir ? String(cfg.runtime_dir) : __dirname;
  process.env._HANDLER = String(cfg.handler);
  process.env.AWS_LAMBDA_LOG_GROUP_NAME = logGroup;
  process.env.AWS_LAMBDA_LOG_STREAM_NAME = logStream;
  if (!process.env.AWS_REGION) process.env.AWS_REGION = 'local';
  process.env.AWS_EXECUTION_ENV = 'lampyr_nodejs';
}

async function load(cfg) {
  const handlerStr = String(cfg.handler || '');
  const taskRoot = path.resolve(String(cfg.task_root || '.'));
  fnName = String(cfg.function_name || '');
  fnVersion = String(cfg.function_version === undefined ? '$LATEST' : cfg.function_version);
  fnArn = 'arn:aws:lambda:' + (cfg.region || 'local') + ':' + (cfg.account_id || '000000000000') +
    ':function:' + fnName;
  memoryMb = String(cfg.memory_mb === undefined ? 128 : cfg.memory_mb);
  setEnv(cfg, taskRoot);
  try {
    process.chdir(taskRoot);
  } catch (e) {
    loadFailed('Runtime.ImportModuleError', 'Cannot enter task root ' + taskRoot + ': ' + e.message,
      errorObject(e).stackTrace);
    return;
  }

  const fn = await findExport(handlerStr, taskRoot, 'Runtime.HandlerNotFound');
  if (fn === null) return;
  if (cfg.handler_type === 'http') {
    handler = fcHttpHandler(fn);
    isStreamingHandler = false;
    isCallbackHandler = false;
  } else {
    handler = fn;
    isStreamingHandler = fn[STREAMING] === 'response';
    isCallbackHandler = !isStreamingHandler && fn.length >= 3;
  }
  setFcContext(cfg, handlerStr);
  if (cfg.initializer && !(await runInitializer(cfg, taskRoot))) return;
  sendFrame(T_LOADED, '{}');
  const now = Date.now();
  for (const [id, deadline, rid, eventStr, at, extrasStr] of queued.splice(0)) {
    invoke(id, deadline + (now - at), rid, eventStr, extrasStr);
  }
}

// The function `entry` ("file.export") names, loaded from the task root;
// null once a LOAD_ERROR has been sent (`notFound`: its errorType when the
// export is missing).
async function findExport(entry, taskRoot, notFound) {
  const dot = entry.lastIndexOf('.');
  if (dot <= 0 || dot === entry.length - 1) {
    loadFailed(notFound, 'Bad handler ' + JSON.stringify(entry) + ': expected "file.export"', []);
    return null;
  }
  const modRel = entry.slice(0, dot);
  const exportName = entry.slice(dot + 1);
  const base = path.resolve(taskRoot, modRel);
  let file = null;
  for (const ext of ['.js', '.mjs', '.cjs']) {
    if (isFile(base + ext)) {
      file = base + ext;
      break;
    }
  }
  if (file === null && isFile(base)) file = base;
  if (file === null) {
    loadFailed('Runtime.ImportModuleError',
      "Error: Cannot find module '" + modRel + "' (looked for " + base + '.js, .mjs, .cjs)', []);
    return null;
  }

  let mod;
  try {
    mod = await loadModule(file, taskRoot);
  } catch (e) {
    const o = errorObject(e);
    loadFailed('Runtime.ImportModuleError', o.errorType + ': ' + o.errorMessage, o.stackTrace);
    return null;
  }

  let fn;
  try {
    fn = mod !== null && mod !== undefined ? mod[exportName] : undefined;
    if (fn === undefined && mod !== null && mod !== undefined && mod.default !== null &&
        (typeof mod.default === 'object' || typeof mod.default === 'function')) {
      fn = mod.default[exportName];
    }
  } catch (_) {
    fn = undefined;
  }
  if (typeof fn !== 'function') {
    loadFailed(notFound,
      modRel + '.' + exportName + ' is ' + (fn === undefined ? 'undefined or not exported' : 'not a function'), []);
    return null;
  }
  return fn;
}

// ---------------------------------------------------------------- frames

// INVOKE frames that arrived while the handler was loading.
const queued = [];

function onFrame(type, buf, start, end, arrived) {
  if (type === T_INVOKE) {
    if (end - start < 13) throw new Error('malformed INVOKE frame (' + (end - start) + ' bytes)');
    const id = buf.readUInt32BE(start);
    const deadline = buf.readUInt32BE(start + 4) * 4294967296 + buf.readUInt32BE(start + 8);
    // The length byte's top bit: extras (a u32 length, JSON) follow the id.
    const ridLen = buf[start + 12] & 0x7f;
    const ridEnd = start + 13 + ridLen;
    if (ridEnd > end) throw new Error('malformed INVOKE frame (request id overruns frame)');
    const rid = buf.toString('latin1', start + 13, ridEnd);
    let evStart = ridEnd;
    let extrasStr;
    if (buf[start + 12] & 0x80) {
      if (ridEnd + 4 > end) throw new Error('malformed INVOKE frame (extras overrun frame)');
      evStart = ridEnd + 4 + buf.readUInt32BE(ridEnd);
      if (evStart > end) throw new Error('malformed INVOKE frame (extras overrun frame)');
      extrasStr = buf.toString('utf8', ridEnd + 4, evStart);
    }
    const eventStr = buf.toString('utf8', evStart, end);
    if (handler === null && loading) {
      // Sent right behind the LOAD (a cold start): runs once the handler
      // is loaded, its deadline moved on by the time it waited for that.
      queued.push([id, deadline, rid, eventStr, arrived, extrasStr]);
      return;
    }
    invoke(id, deadline, rid, eventStr, extrasStr);
  } else if (type === T_POLL) {
    if (end - start < 4) throw new Error('malformed POLL frame (' + (end - start) + ' bytes)');
    pollWindowMs = buf.readUInt32BE(start) / 1000;
  } else if (type === T_LOAD) {
    if (loading) {
      record(2, 'WARN', 'ignoring a second LOAD frame');
      return;
    }
    loading = true;
    const cfg = JSON.parse(buf.toString('utf8', start, end));
    load(cfg).catch((e) => fatal('Load Failure', e));
  } else {
    record(2, 'WARN', 'ignoring unexpected frame type 0x' + type.toString(16));
  }
}

// Incoming chunks: complete frames are parsed straight out of the chunk; an
// incomplete tail is kept as a list of chunks and joined once (linear) when
// enough bytes for the pending frame have arrived. One reader per socket.
function frameReader(deliver) {
  let pending = null;
  let pendingLen = 0;
  let pendingNeed = 0;
  return (chunk) => {
    // When these bytes arrived: a LOAD in this chunk may then run the
    // module's init code before the INVOKE behind it is looked at.
    const arrived = Date.now();
    if (pending !== null) {
      pending.push(chunk);
      pendingLen += chunk.length;
      if (pendingLen < pendingNeed) return;
      chunk = Buffer.concat(pending, pendingLen);
      pending = null;
    }
    const len = chunk.length;
    let off = 0;
    while (len - off >= 4) {
      const flen = chunk.readUInt32BE(off);
      if (flen < 1 || flen > MAX_FRAME) throw new Error('invalid frame length ' + flen);
      const end = off + 4 + flen;
      if (end > len) break;
      deliver(chunk[off + 4], chunk, off + 5, end, arrived);
      off = end;
    }
    if (off < len) {
      pending = [off === 0 ? chunk : chunk.subarray(off)];
      pendingLen = len - off;
      pendingNeed = pendingLen >= 4 ? 4 + chunk.readUInt32BE(off) : 4;
    }
  };
}

// The host's frames, whichever way they are read.
let framesSeen = 0;
const hostReader = frameReader((type, buf, start, end, arrived) => {
  framesSeen += 1;
  onFrame(type, buf, start, end, arrived);
  if (type === T_INVOKE) keepPolling();
});

// ---------------------------------------------------------------- polling

// After an INVOKE the event loop keeps turning (setImmediate) for the
// window the host last sent in a POLL frame, instead of sleeping in the
// kernel: the next frame is then read without this process being woken,
// which costs tens of microseconds on a virtual machine. The host sends a
// window only while fewer invocations run than there are CPUs, so polling
// uses a CPU that would otherwise idle.
let pollWindowMs = 0;
let pollUntil = 0;
let polling = false;

function nowMs() {
  const t = process.hrtime();
  return t[0] * 1e3 + t[1] / 1e6;
}

function keepPolling() {
  if (pollWindowMs === 0) return;
  pollUntil = nowMs() + pollWindowMs;
  if (!polling) {
    polling = true;
    setImmediate(pollTurn);
  }
}

function pollTurn() {
  if (pollWindowMs > 0 && nowMs() < pollUntil) setImmediate(pollTurn);
  else polling = false;
}

// Reads with blocking reads until at least one whole frame (the LOAD, sent
// right after the instance was started) has been handled. A socket that
// turns out to be non-blocking is left to the opened socket to read.
function readFirstFrames() {
  while (framesSeen === 0) {
    const b = Buffer.allocUnsafe(64 * 1024);
    let n;
    try {
      n = fs.readSync(FD, b, 0, b.length, null);
    } catch (e) {
      if (e.code === 'EINTR') continue;
      if (e.code === 'EAGAIN') return;
      hostGone();
    }
    if (n === 0) hostGone();
    hostReader(b.subarray(0, n));
  }
}

const sayHello = () =>
  sendFrame(T_HELLO, JSON.stringify({ runtime: 'nodejs', version: process.version, pid: process.pid }));
if (process.env.LAMPYR_WARM_UP === '0') {
  // A request is waiting: HELLO at once, then the LOAD and the INVOKE
  // behind it, answered before the socket is opened (after this turn's
  // promises, so after the reply of a handler that does not wait on I/O).
  sayHello();
  readFirstFrames();
  setImmediate(openSocket);
} else {
  // A pooled instance warms up first.
  openSocket();
  warmUp(sayHello);
}
