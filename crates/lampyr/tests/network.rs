//! Outbound networking (`network = "egress"`, the default): functions reach
//! the internet, and not the host, its loopback and services, private
//! ranges or other instances, unless the manifest allows them.
//!
//! "The internet" is a network namespace this test makes, with its own
//! HTTP and DNS servers (see `common::net`); the server under test asks that
//! DNS server. No packet goes anywhere else.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::net::{FakeInternet, PAGE};
use common::{config_file, Fixture, Server};

/// A Python function that tries each `HOST:PORT` of its query (`t=`),
/// sending an HTTP request and returning the first line of the answer, or
/// the error's name. `u=NAME` connects to an abstract Unix socket.
const PROBE: &str = r#"import json, socket, errno
def attempt(host, port):
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")
    except socket.gaierror as e:
        return "gaierror"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def unix(name):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("\0" + name)
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def handler(event, context):
    q = event.get("queryStringParameters") or {}
    out = {}
    for t in filter(None, q.get("t", "").split(",")):
        host, port = t.rsplit(":", 1)
        out[t] = attempt(host, port)
    if q.get("u"):
        out["unix"] = unix(q["u"])
    return {"statusCode": 200, "body": json.dumps(out)}
"#;

fn probe(server: &Server, name: &str, targets: &[String]) -> serde_json::Value {
    let r = server.get(&format!("{name}?t={}", targets.join(",")));
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    r.json()
}

fn reached(v: &serde_json::Value, t: &str) -> bool {
    v[t].as_str()
        .is_some_and(|s| s.starts_with("HTTP/1.0 200") && s.contains(PAGE))
}

#[test]
fn egress_reaches_the_internet_and_nothing_of_the_host() {
    let net = FakeInternet::start();
    let (_d, cfg) = config_file(&net.config());
    // A listener on the host's loopback: the only way in is an allow rule.
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in host_service.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{PAGE} (the host)").as_bytes());
        }
    });
    // An abstract Unix socket on the host.
    let abstract_name = format!("lampyr-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
    let _unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();

    for pools in ["on", "off"] {
        let server = Server::start_with(&["--config", &cfg, "--pools", pools]);
        let api = server.port();
        server.deploy(Fixture::python("probe", "", PROBE).path());
        server.deploy(
            Fixture::python(
                "allowed",
                &format!(
                    "allow = [\"{}:80\", \"127.0.0.1:{host_port}\"]\n",
                    net.private
                ),
                PROBE,
            )
            .path(),
        );
        server.deploy(Fixture::python("closed", "network = \"none\"\n", PROBE).path());
        server.deploy(Fixture::node("node-fetch", "", r#"const http = require('http');
exports.handler = async () => new Promise((resolve) => {
  http.get('http://example.test/', (res) => { let b = ''; res.on('data', (c) => b += c); res.on('end', () => resolve(res.statusCode + ' ' + b)); })
    .on('error', (e) => resolve('error ' + e.code));
});"#).path());
        if pools == "on" {
            server.wait_pools_ready();
        }
        let r = server.get("node-fetch");
        assert_eq!(
            r.text(),
            format!("200 {PAGE}"),
            "Node.js through DNS (pools {pools})"
        );

        let targets = [
            "example.test:80".to_string(),
            format!("{}:80", net.public),
            "private.test:80".to_string(),
            format!("{}:{api}", net.host_addr),
            format!("10.0.2.2:{api}"),
            format!("host.lampyr.internal:{host_port}"),
            format!("127.0.0.1:{api}"),
            "10.0.2.3:80".to_string(),
            // Link-local, where cloud metadata services answer: refused by
            // the policy on the instance's SYN, before lampyr connects
            // anywhere, so not one packet leaves for it.
            "169.254.169.254:80".to_string(),
            "nope.test:80".to_string(),
        ];
        let v = probe(&server, "probe", &targets);
        assert!(reached(&v, "example.test:80"), "pools {pools}: {v}");
        assert!(reached(&v, &targets[1]), "{v}");
        for t in &targets[2..9] {
            assert_eq!(
                v[t], "ECONNREFUSED",
                "pools {pools}: {t} must be refused: {v}"
            );
        }
        assert_eq!(v["nope.test:80"], "gaierror", "{v}");
        // The refusals are in the function's log, with how to allow them.
        server.wait_until("the refusal in the log", Duration::from_secs(10), || {
            server.logs("probe", "").iter().any(|l| {
                l["stream"] == "platform"
                    && l["message"].as_str().is_some_and(|m| {
                        m.contains(&format!("{}:80", net.private)) && m.contains("allow = [")
                    })
            })
        });
        // The link-local refusal is lampyr's own, by its policy.
        server.wait_until(
            "the link-local refusal in the log",
            Duration::from_secs(10),
            || {
                server.logs("probe", "").iter().any(|l| {
                    l["stream"] == "platform"
                        && l["message"].as_str().is_some_and(|m| {
                            m.contains("169.254.169.254:80") && m.contains("a link-local address")
                        })
                })
            },
        );

        // What `allow` names gets through: a private address, and the
        // host's loopback as host.lampyr.internal.
        let v = probe(
            &server,
            "allowed",
            &[
                "private.test:80".into(),
                format!("host.lampyr.internal:{host_port}"),
                format!("host.lampyr.internal:{api}"),
                format!("{}:81", net.private),
            ],
        );
        assert!(reached(&v, "private.test:80"), "{v}");
        assert!(
            v[format!("host.lampyr.internal:{host_port}")]
                .as_str()
                .unwrap()
                .contains("(the host)"),
            "{v}"
        );
        assert_eq!(
            v[format!("host.lampyr.internal:{api}")],
            "ECONNREFUSED",
            "{v}"
        );
        assert_eq!(v[format!("{}:81", net.private)], "ECONNREFUSED", "{v}");

        // network = "none": loopback only.
        let v = probe(&server, "closed", &[format!("{}:80", net.public)]);
        assert_eq!(v[format!("{}:80", net.public)], "ENETUNREACH", "{v}");

        // Abstract Unix sockets belong to the host's network namespace.
        let r = server.get(&format!("probe?u={abstract_name}"));
        assert_eq!(r.json()["unix"], "ECONNREFUSED", "{}", r.text());
    }
}

#[test]
fn instances_cannot_reach_each_other() {
    let net = FakeInternet::start();
    let (_d, cfg) = config_file(&net.config());
    let server = Server::start_with(&["--config", &cfg]);
    // One function listens on its instance's address and stays warm.
    server.deploy(Fixture::python("listener", "", "import socket, threading\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 7777))\ns.listen(8)\ndef serve():\n    while True:\n        c, _ = s.accept()\n        c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nthe listener')\n        c.close()\nthreading.Thread(target=serve, daemon=True).start()\ndef handler(e, c):\n    return 'listening'\n").path());
    assert_eq!(server.get("listener").text(), "listening");
    server.deploy(Fixture::python("probe", "", PROBE).path());
    let v = probe(
        &server,
        "probe",
        &[
            "10.0.2.15:7777".into(),
            "10.0.2.16:7777".into(),
            "10.0.2.2:7777".into(),
        ],
    );
    for t in ["10.0.2.15:7777", "10.0.2.16:7777", "10.0.2.2:7777"] {
        assert_eq!(v[t], "ECONNREFUSED", "{t}: {v}");
    }
}
