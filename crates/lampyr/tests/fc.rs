//! Function Compute's conventions: HTTP handlers (Node.js `(req, resp,
//! context)`, Python WSGI, an unmodified Flask app), FC's `context` fields
//! and the initializer hook, on the real server, runtimes and sandboxes.

mod common;

use std::time::Duration;

use common::{request, Fixture, Server};

/// An FC HTTP handler in Node.js: the body read with raw-body (npm's
/// `getRawBody(req, cb)`, vendored into the function as FC users do) or as
/// a stream, status and headers set and deleted, binary bodies both ways.
#[test]
fn a_node_http_handler_reads_the_request_and_shapes_the_response() {
    let code = r#"
const getRawBody = require('raw-body');
exports.handler = async (req, resp, context) => {
  if (req.path === '/stream') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    resp.setHeader('content-type', 'text/plain');
    resp.send('streamed ' + Buffer.concat(chunks).length + ' bytes');
    return;
  }
  getRawBody(req, (err, body) => {
    if (err) {
      resp.setStatusCode(500);
      resp.send(String(err));
      return;
    }
    resp.setStatusCode(req.path === '/created' ? 201 : 200);
    resp.setHeader('content-type', 'application/octet-stream');
    resp.setHeader('x-gone', 'soon');
    resp.deleteHeader('X-Gone');
    resp.setHeader('x-seen', JSON.stringify({
      method: req.method, path: req.path, url: req.url, queries: req.queries,
      clientIP: req.clientIP, custom: req.headers['x-custom'], cookie: req.headers.cookie,
      requestId: context.requestId, name: context.function.name,
    }));
    resp.send(body);
  });
};
"#;
    let f = Fixture::node("fc-node", "handler_type = \"http\"\n", code);
    let raw_body = common::test_deps(
        "raw-body",
        "npm install --prefix DIR --no-package-lock raw-body@^3",
    );
    common::copy_tree(
        &raw_body.join("node_modules"),
        &f.path().join("node_modules"),
    );
    let server = Server::start();
    server.deploy_checked(f.path());

    let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let url = format!("{}/fn/fc-node/created?a=1&a=2&b=x%20y", server.url);
    let r = request(
        "PUT",
        &url,
        Some(&bytes),
        &[("x-custom", "custom value"), ("cookie", "k1=v1; k2=v2")],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.body, bytes, "binary bodies round-trip");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-gone"), None, "deleted headers are not sent");
    let seen: serde_json::Value = serde_json::from_str(r.header("x-seen").unwrap()).unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/created");
    assert_eq!(seen["url"], "/created?a=1&a=2&b=x%20y");
    assert_eq!(
        seen["queries"],
        serde_json::json!({"a": ["1", "2"], "b": "x y"})
    );
    assert_eq!(seen["clientIP"], "127.0.0.1");
    assert_eq!(seen["custom"], "custom value");
    assert_eq!(seen["cookie"], "k1=v1; k2=v2");
    assert_eq!(seen["requestId"], r.header("x-lampyr-request-id").unwrap());
    assert_eq!(seen["name"], "fc-node");

    // GET without a body: an empty body, status 200.
    let r = server.get("fc-node");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // An async handler reading the stream itself.
    let r = server.call("POST", "fc-node/stream", Some(b"twelve bytes"));
    assert_eq!((r.status, r.text()), (200, "streamed 12 bytes".to_string()));

    // An HTTP request run asynchronously is still an HTTP request.
    let r = request(
        "POST",
        &format!("{}/fn/fc-node/later", server.url),
        Some(b"queued"),
        &[("x-lampyr-invocation-type", "event")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["request_id"].as_str().unwrap().to_string();
    server.wait_until(
        "the queued request to succeed",
        Duration::from_secs(20),
        || {
            let r = server.api("GET", &format!("/invocations/{id}"), None);
            r.status == 200 && r.json()["state"] == "succeeded"
        },
    );

    // Only HTTP requests can call an HTTP handler: a raw invocation gets
    // an error saying so.
    let r = server.api("POST", "/functions/fc-node/invoke", Some(b"{}"));
    assert!(r.text().contains("Runtime.NotHttpEvent"), "{}", r.text());
}

/// A Flask application from PyPI, unmodified: `handler = "app.app"` names
/// the WSGI application itself. Routes, JSON, forms, statuses, headers,
/// cookies, redirects (built from SCRIPT_NAME), binary bodies; with pools
/// (Python's zygote forks the instance) and without.
#[test]
fn an_unmodified_flask_app_runs() {
    let flask = common::aws::test_deps("flask", "'flask>=3,<4'");
    let app = r#"from flask import Flask, jsonify, make_response, redirect, request, url_for

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask"


@app.route("/json", methods=["POST"])
def echo_json():
    return jsonify(got=request.get_json(), args=request.args.to_dict(flat=False))


@app.route("/form", methods=["POST"])
def form():
    return jsonify(name=request.form["name"], tags=request.form.getlist("tag"))


@app.route("/teapot")
def teapot():
    resp = make_response("short and stout", 418)
    resp.headers["X-Kind"] = "teapot"
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2")
    return resp


@app.route("/go")
def go():
    return redirect(url_for("index"))


@app.route("/env")
def env():
    e = request.environ
    return jsonify(
        script=e["SCRIPT_NAME"],
        uri=e["fc.request_uri"],
        rid=e["fc.context"].request_id,
        cookie=request.cookies.get("k"),
        host=request.host,
        remote=request.remote_addr,
    )


@app.route("/bytes", methods=["POST"])
def echo_bytes():
    return app.response_class(request.get_data(), mimetype="application/octet-stream")
"#;
    let f = Fixture::new(
        "name = \"flask\"\nruntime = \"python\"\nhandler = \"app.app\"\nhandler_type = \"http\"\ntimeout = \"30s\"\n",
        &[("app.py", app)],
    );
    common::copy_tree(&flask, f.path());
    for pools in ["on", "off"] {
        let server = Server::start_with(&["--pools", pools]);
        server.deploy_checked(f.path());
        let r = server.get("flask");
        assert_eq!((r.status, r.text()), (200, "hello from flask".to_string()));
        assert!(r.header("content-type").unwrap().starts_with("text/html"));

        let r = request(
            "POST",
            &format!("{}/fn/flask/json?x=1&x=2", server.url),
            Some(br#"{"tea": ["green", "black"]}"#),
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"got": {"tea": ["green", "black"]}, "args": {"x": ["1", "2"]}})
        );

        let r = request(
            "POST",
            &format!("{}/fn/flask/form", server.url),
            Some(b"name=Ada+Lovelace&tag=a&tag=b%26c"),
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        assert_eq!(
            r.json(),
            serde_json::json!({"name": "Ada Lovelace", "tags": ["a", "b&c"]})
        );

        let r = server.get("flask/teapot");
        assert_eq!((r.status, r.text()), (418, "short and stout".to_string()));
        assert_eq!(r.header("x-kind"), Some("teapot"));
        let cookies: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies.len(), 2, "{cookies:?}");
        assert!(cookies[0].starts_with("a=1") && cookies[1].starts_with("b=2"));

        assert_eq!(server.get("flask/nowhere").status, 404);

        // The redirect comes back to the function's own URL.
        let r = server.get("flask/go");
        assert_eq!((r.status, r.text()), (200, "hello from flask".to_string()));

        let r = request(
            "GET",
            &format!("{}/fn/flask/env?q=1", server.url),
            None,
            &[("cookie", "k=v")],
        );
        let v = r.json();
        assert_eq!(v["script"], "/fn/flask");
        assert_eq!(v["uri"], "/fn/flask/env?q=1");
        assert_eq!(v["rid"], r.header("x-lampyr-request-id").unwrap());
        assert_eq!(v["cookie"], "v");
        assert_eq!(v["host"], server.url.trim_start_matches("http://"));
        assert_eq!(v["remote"], "127.0.0.1");

        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        let r = server.call("POST", "flask/bytes", Some(&bytes));
        assert_eq!(r.body, bytes, "pools {pools}");
    }
}

/// A WSGI application without a framework sees a complete environ, and
/// its result's `close()` is called.
#[test]
fn a_plain_wsgi_app_gets_a_complete_environ() {
    let code = r#"import json

closed = []


class Body:
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        closed.append(True)


def handler(environ, start_response):
    keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "HTTP_X_CUSTOM",
            "wsgi.url_scheme", "fc.request_uri"]
    seen = {k: environ.get(k) for k in keys}
    seen["body"] = environ["wsgi.input"].read().decode()
    seen["version"] = list(environ["wsgi.version"])
    seen["closed_before"] = len(closed)
    seen["function"] = environ["fc.context"].function.name
    start_response("202 Accepted", [("Content-Type", "application/json"), ("X-A", "1"), ("X-A", "2")])
    return Body([json.dumps(seen).encode(), b"\n"])
"#;
    let f = Fixture::python("wsgi", "handler_type = \"http\"\n", code);
    let server = Server::start();
    server.deploy_checked(f.path());
    let url = format!("{}/fn/wsgi/a/b?x=1&y=%20", server.url);
    let headers = [("content-type", "text/plain"), ("x-custom", "yes")];
    let first = request("POST", &url, Some(b"hello"), &headers);
    assert_eq!(first.status, 202, "{}", first.text());
    let v = first.json();
    let port = server.url.rsplit(':').next().unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "REQUEST_METHOD": "POST", "SCRIPT_NAME": "/fn/wsgi", "PATH_INFO": "/a/b",
            "QUERY_STRING": "x=1&y=%20", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "5",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": port, "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_X_CUSTOM": "yes", "wsgi.url_scheme": "http", "fc.request_uri": "/fn/wsgi/a/b?x=1&y=%20",
            "body": "hello", "version": [1, 0], "closed_before": 0, "function": "wsgi",
        })
    );
    assert_eq!(
        first
            .headers
            .iter()
            .filter(|(k, _)| k == "x-a")
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>(),
        ["1", "2"],
        "a header given twice is sent twice"
    );
    let second = request("POST", &url, Some(b""), &headers);
    assert_eq!(second.header("x-lampyr-start"), Some("warm"));
    assert_eq!(
        second.json()["closed_before"],
        1,
        "the first result was closed"
    );
}

/// An event handler's `context` has Function Compute's fields beside
/// Lambda's, in both runtimes.
#[test]
fn event_handlers_get_function_computes_context_fields() {
    let node = r#"exports.handler = async (event, context) => ({
  requestId: context.requestId, awsRequestId: context.awsRequestId,
  credentials: context.credentials, function: context.function, service: context.service,
  region: context.region, accountId: context.accountId,
});"#;
    let python = r#"def handler(event, context):
    c, f, s = context.credentials, context.function, context.service
    return {
        "requestId": context.request_id, "awsRequestId": context.aws_request_id,
        "credentials": {"accessKeyId": c.access_key_id, "accessKeySecret": c.access_key_secret,
                        "securityToken": c.security_token},
        "function": {"name": f.name, "handler": f.handler, "memory": f.memory, "timeout": f.timeout,
                     "initializer": f.initializer, "initializationTimeout": f.initialization_timeout},
        "service": {"name": s.name, "logProject": s.log_project, "logStore": s.log_store,
                    "qualifier": s.qualifier, "versionId": s.version_id},
        "region": context.region, "accountId": context.account_id,
    }


def init(context):
    pass
"#;
    let extra = "memory_mb = 256\ntimeout = \"7s\"\ninitializer = \"index.init\"\ninitialization_timeout = \"4s\"\n";
    let server = Server::start();
    for (name, f) in [
        ("ctx-node", Fixture::node("ctx-node", extra, node)),
        ("ctx-py", Fixture::python("ctx-py", extra, python)),
    ] {
        if name == "ctx-node" {
            f.write(
                "index.js",
                &format!("{node}\nexports.init = async () => {{}};\n"),
            );
        }
        server.deploy_checked(f.path());
        let r = server.get(name);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let rid = r.header("x-lampyr-request-id").unwrap();
        assert_eq!(
            (v["requestId"].as_str(), v["awsRequestId"].as_str()),
            (Some(rid), Some(rid))
        );
        assert_eq!(
            v["credentials"],
            serde_json::json!({"accessKeyId": "", "accessKeySecret": "", "securityToken": ""}),
            "{name}"
        );
        assert_eq!(
            v["function"],
            serde_json::json!({"name": name, "handler": "index.handler", "memory": 256, "timeout": 7,
                               "initializer": "index.init", "initializationTimeout": 4}),
            "{name}"
        );
        assert_eq!(
            v["service"],
            serde_json::json!({"name": name, "logProject": "", "logStore": "", "qualifier": "1", "versionId": "1"}),
            "{name}"
        );
        assert_eq!(
            (v["region"].as_str(), v["accountId"].as_str()),
            (Some("local"), Some("000000000000"))
        );
    }
}

/// The `init` entry of a response's Server-Timing, in milliseconds.
fn init_ms(r: &common::Resp) -> f64 {
    let timing = r.header("server-timing").unwrap();
    let entry = timing
        .split(", ")
        .find_map(|e| e.strip_prefix("init;dur="))
        .unwrap_or_else(|| panic!("no init phase in {timing}"));
    entry.parse().unwrap()
}

/// The initializer runs once per instance, before its first invocation;
/// its time is part of the init phase, in Server-Timing and in the
/// invocation's record.
#[test]
fn the_initializer_runs_once_per_instance_within_the_init_phase() {
    let node = r#"let inits = 0;
let took = null;
exports.init = (context, callback) => {
  const started = process.hrtime.bigint();
  setTimeout(() => {
    inits += 1;
    took = Number(process.hrtime.bigint() - started) / 1e6;
    callback(null, context.requestId);
  }, 50);
};
exports.handler = async () => ({ inits, took, pid: process.pid });
"#;
    let python = r#"import os, time

inits = 0
took = None


def init(context):
    global inits, took
    started = time.monotonic()
    time.sleep(0.05)
    inits += 1
    took = (time.monotonic() - started) * 1000


def handler(event, context):
    return {"inits": inits, "took": took, "pid": os.getpid()}
"#;
    let extra = "initializer = \"index.init\"\n";
    let server = Server::start();
    for f in [
        Fixture::node("init-node", extra, node),
        Fixture::python("init-py", extra, python),
    ] {
        let name = if f.path().join("index.js").exists() {
            "init-node"
        } else {
            "init-py"
        };
        // Without the load check: the first call starts the instance.
        server.deploy(f.path());
        let first = server.get(name);
        assert!(common::fresh(&first), "{name}: {:?}", first.headers);
        let v = first.json();
        assert_eq!(v["inits"], 1, "{name}");
        let took = v["took"].as_f64().unwrap();
        assert!(
            init_ms(&first) >= took,
            "{name}: the init phase ({} ms) includes the initializer's {took} ms",
            init_ms(&first)
        );
        let rid = first.header("x-lampyr-request-id").unwrap();
        let mut record = serde_json::Value::Null;
        server.wait_until("the invocation's record", Duration::from_secs(10), || {
            let r = server.api("GET", &format!("/invocations/{rid}"), None);
            record = r.json();
            r.status == 200
        });
        let recorded = record["phases"]["init"]
            .as_f64()
            .unwrap_or_else(|| panic!("{record}"));
        assert!(
            recorded >= took,
            "{name}: the recorded init phase includes the initializer: {record}"
        );

        let second = server.get(name);
        assert_eq!(second.header("x-lampyr-start"), Some("warm"));
        let w = second.json();
        assert_eq!(
            (w["inits"].clone(), w["pid"].clone()),
            (serde_json::json!(1), v["pid"].clone())
        );
    }
}

/// An initializer that throws, or overruns its timeout, is an init error
/// naming it: the deploy's load check refuses the version, and a call of
/// a version deployed unchecked gets the init error.
#[test]
fn a_failing_or_slow_initializer_is_an_init_error_naming_it() {
    let server = Server::start();
    let cases = [
        (
            "init-throws",
            Fixture::node(
                "init-throws",
                "initializer = \"index.init\"\n",
                "exports.init = async () => { throw new TypeError('no database'); };\nexports.handler = async () => 'ok';\n",
            ),
            "Runtime.InitializerError",
            "TypeError: no database",
        ),
        (
            "init-fails-py",
            Fixture::python(
                "init-fails-py",
                "initializer = \"index.init\"\n",
                "def init(context):\n    raise KeyError('DB_URL')\n\n\ndef handler(event, context):\n    return 'ok'\n",
            ),
            "Runtime.InitializerError",
            "KeyError: 'DB_URL'",
        ),
        (
            "init-slow",
            Fixture::node(
                "init-slow",
                "initializer = \"index.init\"\ninitialization_timeout = \"200ms\"\n",
                "exports.init = (context, callback) => { setTimeout(callback, 60000); };\nexports.handler = async () => 'ok';\n",
            ),
            "Runtime.InitializerTimeout",
            "within 0.2 s",
        ),
        (
            "init-slow-py",
            Fixture::python(
                "init-slow-py",
                "initializer = \"index.init\"\ninitialization_timeout = \"200ms\"\n",
                "import time\n\n\ndef init(context):\n    time.sleep(60)\n\n\ndef handler(event, context):\n    return 'ok'\n",
            ),
            "Runtime.InitializerTimeout",
            "within 0.2 s",
        ),
    ];
    for (name, f, error_type, detail) in &cases {
        let pkg = lampyr_store::pack_dir(f.path()).unwrap();
        let r = server.api("PUT", &format!("/functions/{name}"), Some(&pkg));
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "load_failed", "{name}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(error_type) && msg.contains("index.init") && msg.contains(detail),
            "{name}: {msg}"
        );

        server.deploy(f.path());
        let r = server.get(name);
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "init_error", "{name}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(error_type) && msg.contains("the initializer index.init"),
            "{name}: {msg}"
        );
    }
}
