//! The HTTP trigger and the handler contract, on real Node.js and Python.

mod common;

use std::time::Duration;

use common::{request, Fixture, Server};

const NODE_ECHO: &str = r#"
exports.handler = async (event, context) => ({
  statusCode: 200,
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ event, ctx: {
    id: context.awsRequestId, name: context.functionName, version: context.functionVersion,
    memory: context.memoryLimitInMB, remaining: context.getRemainingTimeInMillis() } }),
});
"#;

const PY_ECHO: &str = r#"
import json
def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"event": event, "ctx": {
                "id": context.aws_request_id, "name": context.function_name,
                "version": context.function_version, "memory": context.memory_limit_in_mb,
                "remaining": context.get_remaining_time_in_millis()}})}
"#;

#[test]
fn the_whole_request_reaches_the_handler() {
    let server = Server::start();
    server.deploy(Fixture::node("echo-node", "timeout = \"5s\"\n", NODE_ECHO).path());
    server.deploy(Fixture::python("echo-py", "timeout = \"5s\"\n", PY_ECHO).path());
    for name in ["echo-node", "echo-py"] {
        let url = format!("{}/fn/{name}/items/42?a=1&a=2&b=x%20y", server.url);
        let r = request(
            "POST",
            &url,
            Some(b"hello body"),
            &[
                ("content-type", "text/plain"),
                ("x-custom", "yes"),
                ("cookie", "k1=v1; k2=v2"),
            ],
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        let ev = &v["event"];
        assert_eq!(ev["version"], "2.0");
        assert_eq!(ev["rawPath"], "/items/42");
        assert_eq!(ev["rawQueryString"], "a=1&a=2&b=x%20y");
        assert_eq!(ev["queryStringParameters"]["a"], "1,2");
        assert_eq!(ev["queryStringParameters"]["b"], "x y");
        assert_eq!(ev["headers"]["x-custom"], "yes");
        assert_eq!(ev["cookies"], serde_json::json!(["k1=v1", "k2=v2"]));
        assert_eq!(ev["requestContext"]["http"]["method"], "POST");
        assert_eq!(ev["body"], "hello body");
        assert_eq!(ev["isBase64Encoded"], false);
        let ctx = &v["ctx"];
        assert_eq!(ctx["id"].as_str(), r.header("x-lampyr-request-id"));
        assert_eq!(ctx["name"], name);
        assert_eq!(ctx["version"], "1");
        assert_eq!(ctx["memory"], "128");
        let remaining = ctx["remaining"].as_f64().unwrap();
        assert!(remaining > 0.0 && remaining <= 5000.0, "{remaining}");

        // Every method, and the function's root path.
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let r = request(method, &format!("{}/fn/{name}", server.url), None, &[]);
            assert_eq!(r.status, 200);
            assert_eq!(
                r.json()["event"]["requestContext"]["http"]["method"],
                method
            );
            assert_eq!(r.json()["event"]["rawPath"], "/");
        }
        // The root with a trailing slash, an empty segment, and a path
        // with percent-escapes (decoded, as for every path parameter).
        for (path, raw) in [("/", "/"), ("//x/", "//x/"), ("/a%20b/c%2Fd", "/a b/c/d")] {
            let r = request("GET", &format!("{}/fn/{name}{path}", server.url), None, &[]);
            assert_eq!(r.status, 200, "{name}{path}: {}", r.text());
            assert_eq!(r.json()["event"]["rawPath"], raw, "{name}{path}");
        }
        let r = request("GET", &format!("{}/fn/echo%2Dnode", server.url), None, &[]);
        assert_eq!(r.status, 200, "an escaped name: {}", r.text());
    }
}

#[test]
fn binary_bodies_work_both_ways() {
    let server = Server::start();
    let node = Fixture::node(
        "bin-node",
        "",
        r#"exports.handler = async (e) => {
  const data = Buffer.from(e.body, e.isBase64Encoded ? 'base64' : 'utf8');
  const out = Buffer.from(data.map((b) => 255 - b));
  return { statusCode: 200, headers: { 'content-type': 'application/octet-stream' }, body: out.toString('base64'), isBase64Encoded: true };
};"#,
    );
    let py = Fixture::python(
        "bin-py",
        "",
        "import base64\ndef handler(e, c):\n    data = base64.b64decode(e['body']) if e['isBase64Encoded'] else e['body'].encode()\n    out = bytes(255 - b for b in data)\n    return {'statusCode': 200, 'headers': {'content-type': 'application/octet-stream'}, 'body': base64.b64encode(out).decode(), 'isBase64Encoded': True}\n",
    );
    server.deploy(node.path());
    server.deploy(py.path());
    let input: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let expect: Vec<u8> = input.iter().map(|b| 255 - b).collect();
    for name in ["bin-node", "bin-py"] {
        let r = server.call("POST", name, Some(&input));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert!(r.body == expect, "{name}: binary round trip differs");
    }
}

#[test]
fn large_and_small_events_share_an_instance_intact() {
    // Events larger than the instance socket's buffer are written in parts
    // while small ones queue behind them: every handler must still see its
    // own request, whole.
    let server = Server::start();
    let f = Fixture::node(
        "sizes",
        "concurrency = 8\nmax_instances = 1\n",
        r#"exports.handler = async (e) => {
  let sum = 0;
  for (let i = 0; i < e.body.length; i++) sum = (sum + e.body.charCodeAt(i) * (i % 7 + 1)) % 1000000007;
  return { len: e.body.length, sum, tag: e.rawQueryString };
};"#,
    );
    server.deploy(f.path());
    let checksum = |b: &[u8]| {
        b.iter().enumerate().fold(0u64, |s, (i, &c)| {
            (s + u64::from(c) * (i as u64 % 7 + 1)) % 1_000_000_007
        })
    };
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let server = &server;
            scope.spawn(move || {
                for round in 0..3 {
                    let size = if (t + round) % 2 == 0 {
                        3 << 20
                    } else {
                        10 + t as usize
                    };
                    let body: Vec<u8> = (0..size)
                        .map(|i| b'a' + ((i + t as usize) % 26) as u8)
                        .collect();
                    let tag = format!("t{t}r{round}");
                    let r = server.call("POST", &format!("sizes?{tag}"), Some(&body));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v = r.json();
                    assert_eq!(v["tag"], tag.as_str());
                    assert_eq!(v["len"], size as u64, "{tag}");
                    assert_eq!(v["sum"], checksum(&body), "{tag}");
                }
            });
        }
    });
}

#[test]
fn results_follow_the_proxy_rules() {
    let server = Server::start();
    let f = Fixture::node(
        "shapes",
        "",
        r#"exports.handler = async (e) => {
  switch (e.rawPath) {
    case '/full': return { statusCode: 201, headers: { 'x-a': '1', 'content-type': 'text/plain' }, cookies: ['c1=v1; Path=/', 'c2=v2'], body: 'created' };
    case '/object': return { hello: 'world', n: 1 };
    case '/string': return 'just a string';
    case '/number': return 42;
    case '/nothing': return;
    case '/teapot': return { statusCode: 418 };
  }
};"#,
    );
    server.deploy(f.path());
    let r = server.get("shapes/full");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-a"), Some("1"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["c1=v1; Path=/", "c2=v2"]);
    assert_eq!(r.text(), "created");
    let r = server.get("shapes/object");
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/json"))
    );
    assert_eq!(r.json(), serde_json::json!({"hello": "world", "n": 1}));
    assert_eq!(server.get("shapes/string").text(), "just a string");
    assert_eq!(server.get("shapes/number").text(), "42");
    let r = server.get("shapes/nothing");
    assert_eq!((r.status, r.text().as_str()), (200, "null"));
    let r = server.get("shapes/teapot");
    assert_eq!((r.status, r.body.len()), (418, 0));
}

#[test]
fn handler_forms_and_dependencies() {
    let server = Server::start();
    // ES module with `export const handler`.
    let esm = Fixture::new(
        "name = \"esm\"\nruntime = \"nodejs\"\nhandler = \"app.handler\"\n",
        &[(
            "app.mjs",
            "export const handler = async () => ({ statusCode: 200, body: 'esm' });",
        )],
    );
    // The legacy callback form.
    let cb = Fixture::node("callback", "", "exports.handler = (event, context, callback) => { setTimeout(() => callback(null, { statusCode: 200, body: 'callback' }), 5); };");
    // A package in node_modules.
    let deps = Fixture::new(
        "name = \"node-deps\"\nruntime = \"nodejs\"\nhandler = \"src/main.handler\"\n",
        &[
            (
                "src/main.js",
                "const shout = require('shouty');\nexports.handler = async () => shout('deps');",
            ),
            (
                "node_modules/shouty/package.json",
                r#"{"name":"shouty","version":"1.0.0","main":"lib.js"}"#,
            ),
            (
                "node_modules/shouty/lib.js",
                "module.exports = (s) => s.toUpperCase() + '!';",
            ),
        ],
    );
    // A vendored Python package, and an async def handler.
    let pydeps = Fixture::new(
        "name = \"py-deps\"\nruntime = \"python\"\nhandler = \"main.handler\"\n",
        &[
            ("main.py", "import asyncio\nfrom vendored_pkg.util import shout\nasync def handler(e, c):\n    await asyncio.sleep(0.001)\n    return shout('deps')\n"),
            ("vendored_pkg/__init__.py", ""),
            ("vendored_pkg/util.py", "def shout(s):\n    return s.upper() + '!'\n"),
        ],
    );
    for f in [&esm, &cb, &deps, &pydeps] {
        server.deploy(f.path());
    }
    assert_eq!(server.get("esm").text(), "esm");
    assert_eq!(server.get("callback").text(), "callback");
    assert_eq!(server.get("node-deps").text(), "DEPS!");
    assert_eq!(server.get("py-deps").text(), "DEPS!");
}

/// A Python function's modules are compiled to bytecode when it is deployed:
/// its imports read `.pyc` files that skip the source check (the code never
/// changes), and a module that does not compile does not stop the deploy.
#[test]
fn python_code_is_compiled_when_deployed() {
    let server = Server::start();
    let f = Fixture::new(
        "name = \"py-bytecode\"\nruntime = \"python\"\nhandler = \"main.handler\"\n",
        &[
            (
                "main.py",
                "import sys\nimport vendored_pkg.util\n\ndef handler(e, c):\n    out = {}\n    for name in ('main', 'vendored_pkg.util'):\n        cached = sys.modules[name].__spec__.cached\n        with open(cached, 'rb') as f:\n            out[name] = [cached, f.read(8)[4:8].hex()]\n    return out\n",
            ),
            ("vendored_pkg/__init__.py", ""),
            ("vendored_pkg/util.py", "VALUE = 1\n"),
            ("legacy_py2.py", "print 'not Python 3'\n"),
        ],
    );
    server.deploy(f.path());
    let r = server.get("py-bytecode");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for name in ["main", "vendored_pkg.util"] {
        let cached = v[name][0].as_str().unwrap();
        assert!(cached.contains("/__pycache__/"), "{name}: {cached}");
        // PEP 552 flags: hash-based (bit 0), source not checked (bit 1 clear).
        assert_eq!(v[name][1], "01000000", "{name}: an unchecked-hash .pyc");
    }
}

#[test]
fn environment_from_the_manifest() {
    let server = Server::start();
    server.deploy(Fixture::node("env-node", "[env]\nGREETING = \"hola\"\n", "exports.handler = async () => process.env.GREETING + ' ' + process.env.AWS_LAMBDA_FUNCTION_NAME;").path());
    server.deploy(Fixture::python("env-py", "[env]\nGREETING = \"hej\"\n", "import os\ndef handler(e, c):\n    return os.environ['GREETING'] + ' ' + os.environ['AWS_LAMBDA_FUNCTION_NAME']\n").path());
    assert_eq!(server.get("env-node").text(), "hola env-node");
    assert_eq!(server.get("env-py").text(), "hej env-py");
}

#[test]
fn logs_are_tagged_with_the_request_id() {
    let server = Server::start();
    server.deploy(Fixture::node("log-node", "", "exports.handler = async (e) => { console.log('node says', e.rawQueryString); console.error('to stderr'); return 'ok'; };").path());
    server.deploy(Fixture::python("log-py", "", "import sys\ndef handler(e, c):\n    print('python says', e['rawQueryString'])\n    print('to stderr', file=sys.stderr)\n    return 'ok'\n").path());
    for (name, says) in [("log-node", "node says"), ("log-py", "python says")] {
        let a = server.get(&format!("{name}?first"));
        let b = server.get(&format!("{name}?second"));
        let (ra, rb) = (
            a.header("x-lampyr-request-id").unwrap(),
            b.header("x-lampyr-request-id").unwrap(),
        );
        for (rid, q) in [(ra, "first"), (rb, "second")] {
            server.wait_until("log lines", Duration::from_secs(10), || {
                let recs = server.logs(name, &format!("request_id={rid}"));
                recs.iter()
                    .any(|r| r["message"] == format!("{says} {q}") && r["stream"] == "stdout")
                    && recs
                        .iter()
                        .any(|r| r["message"] == "to stderr" && r["stream"] == "stderr")
            });
            // Lines of one request are not attributed to the other.
            let recs = server.logs(name, &format!("request_id={rid}"));
            assert!(recs.iter().all(|r| !r["message"]
                .as_str()
                .unwrap()
                .contains(if q == "first" { "second" } else { "first" })));
        }
    }
}

/// `[[triggers]]`: without the list a function has its URL, as every
/// manifest before the list did; with `triggers = []` it has none and is
/// called through the management API only.
#[test]
fn triggers_default_to_http_and_a_function_may_have_none() {
    let server = Server::start();
    let code = "exports.handler = async (e) => ({ statusCode: 200, body: 'hi' });";
    server.deploy(Fixture::node("plain", "", code).path());
    server.deploy(Fixture::node("explicit", "[[triggers]]\ntype = \"http\"\n", code).path());
    server.deploy(Fixture::node("internal", "triggers = []\n", code).path());
    for name in ["plain", "explicit"] {
        let r = server.get(name);
        assert_eq!((r.status, r.text().as_str()), (200, "hi"), "{name}");
    }
    let r = server.get("internal");
    assert_eq!(r.status, 404, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "no_trigger");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("lampyr invoke internal"), "{msg}");
    let r = server.api("POST", "/functions/internal/invoke", Some(b"{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "hi");
    let request_id = r.header("x-lampyr-request-id").unwrap().to_string();
    server.wait_until("the record is written", Duration::from_secs(10), || {
        server
            .api("GET", &format!("/invocations/{request_id}"), None)
            .status
            == 200
    });
    let rec = server
        .api("GET", &format!("/invocations/{request_id}"), None)
        .json();
    assert_eq!(rec["trigger"], "api");
    // A trigger type lampyr does not have is refused, by its key.
    let bad = Fixture::node("bad", "[[triggers]]\ntype = \"carrier-pigeon\"\n", code);
    let out = server.cli(&["deploy", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("triggers[0].type") && err.contains("carrier-pigeon"),
        "{err}"
    );
}
