//! What a new user meets in their first week: deploys that refuse code that
//! cannot load, failing inits that cost no CPU storm, redeploys that keep
//! warm instances, short request ids, a clean shutdown, what a package
//! ships, and a CLI that names limits and speaks JSON.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Fixture, Server};

fn cli_json(server: &Server, args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn deploys_refuse_code_that_cannot_load_and_keep_the_old_version() {
    let server = Server::start();
    let f = Fixture::node("loads", "", "exports.handler = async () => 'v1';");
    server.deploy(f.path());
    assert_eq!(server.get("loads").text(), "v1");
    for (code, expect) in [
        (
            "exports.handler = async () => {\n  return (1 +;\n};\n",
            "/var/task/index.js:2",
        ),
        (
            "require('no-such-module');\nexports.handler = async () => 1;",
            "no-such-module",
        ),
        ("throw new Error('init exploded');", "init exploded"),
        ("exports.other = async () => 1;", "HandlerNotFound"),
    ] {
        f.write("index.js", code);
        let (ok, v) = cli_json(&server, &["deploy", f.path().to_str().unwrap()]);
        assert!(!ok);
        assert_eq!(v["error"]["code"], "load_failed", "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(expect) && m.contains("keeps serving"),
            "{code}: {m}"
        );
        // The previous version serves on, warm.
        let r = server.get("loads");
        assert_eq!(r.text(), "v1");
        assert_eq!(r.header("x-lampyr-version"), Some("1"));
    }
    assert_eq!(server.info("loads")["version"], 1);
    // Python: the error names the file and line.
    let p = Fixture::python(
        "loads-py",
        "",
        "import json\nx = 1 / 0\ndef handler(e, c):\n    return 1\n",
    );
    let (ok, v) = cli_json(&server, &["deploy", p.path().to_str().unwrap()]);
    assert!(!ok);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("/var/task/index.py\", line 2")
            && m.contains("ZeroDivisionError")
            && m.contains("nothing was deployed"),
        "{m}"
    );
    assert_eq!(server.api("GET", "/functions/loads-py", None).status, 404);
    // --no-verify deploys it anyway; the instance that passed a check serves
    // the first request warm.
    let (ok, _) = cli_json(
        &server,
        &["deploy", p.path().to_str().unwrap(), "--no-verify"],
    );
    assert!(ok);
    f.write("index.js", "exports.handler = async () => 'v2';");
    let (ok, v) = cli_json(&server, &["deploy", f.path().to_str().unwrap()]);
    assert!(ok, "{v}");
    assert!(v["check_ms"].as_f64().unwrap() > 0.0);
    let r = server.get("loads");
    assert_eq!(r.text(), "v2");
    assert_eq!(
        r.header("x-lampyr-start"),
        Some("warm"),
        "the checked instance serves"
    );
}

#[test]
fn a_failing_init_is_not_retried_on_every_request() {
    let server = Server::start();
    // A function whose init fails only at request time (it passed no check).
    let f = Fixture::node(
        "flaky-init",
        "",
        "require('fs').readFileSync('/tmp/missing');\nexports.handler = async () => 1;",
    );
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let r = server.api("PUT", "/functions/flaky-init?verify=false", Some(&pkg));
    assert_eq!(r.status, 200, "{}", r.text());
    let first = server.get("flaky-init");
    assert_eq!(first.status, 502);
    assert_eq!(first.json()["error"]["code"], "init_error");
    // At once again: the same error, no new start, and the answer says so.
    let again = server.get("flaky-init");
    assert_eq!(again.status, 502);
    let m = again.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("not retried"), "{m}");
    assert!(again.header("retry-after").is_some());
    // The error is in the log once, with the stack on its own lines and
    // jail paths only.
    server.wait_until("the init error in the log", Duration::from_secs(10), || {
        server
            .logs("flaky-init", "")
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("ENOENT"))
    });
    let errors: Vec<String> = server
        .logs("flaky-init", "")
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .filter(|m| m.contains("ENOENT"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("\n") && errors[0].contains("/var/task/index.js"),
        "{}",
        errors[0]
    );
    assert!(!errors[0].contains(server.data.to_str().unwrap()));
    server.wait_until(
        "both requests in the records",
        Duration::from_secs(10),
        || {
            server
                .api("GET", "/functions/flaky-init/invocations", None)
                .json()["invocations"]
                .as_array()
                .unwrap()
                .len()
                >= 2
        },
    );
    // After the back-off a request tries again.
    server.wait_until("the back-off to end", Duration::from_secs(10), || {
        let r = server.get("flaky-init");
        !r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not retried")
    });
}

#[test]
fn unchanged_redeploys_keep_their_instances() {
    let server = Server::start();
    let f = Fixture::node(
        "steady",
        "min_instances = 1\n",
        "exports.handler = async () => process.pid;",
    );
    server.deploy(f.path());
    server.wait_until("the reserved instance", Duration::from_secs(20), || {
        server.instances("steady") == 1
    });
    let pid = server.get("steady").text();
    for _ in 0..3 {
        let v = server.deploy(f.path());
        assert_eq!(v["changed"], false);
    }
    let r = server.get("steady");
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    assert_eq!(r.text(), pid, "the same instance serves");
    assert_eq!(server.info("steady")["version"], 1);
}

#[test]
fn short_request_ids_are_unique_and_prefixes_resolve() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "ids",
            "",
            "exports.handler = async () => { console.log('ran'); return 1; };",
        )
        .path(),
    );
    let rids: Vec<String> = (0..20)
        .map(|_| {
            server
                .get("ids")
                .header("x-lampyr-request-id")
                .unwrap()
                .to_string()
        })
        .collect();
    let shorts: std::collections::HashSet<String> =
        rids.iter().map(|r| r[r.len() - 8..].to_string()).collect();
    assert_eq!(shorts.len(), rids.len(), "short forms are unique");
    let rid = &rids[7];
    server.wait_until("the records", Duration::from_secs(10), || {
        server
            .api("GET", &format!("/invocations/{rid}"), None)
            .status
            == 200
    });
    // The short form people see, and a unique beginning, find it.
    for part in [&rid[rid.len() - 8..], &rid[..30]] {
        let r = server.api("GET", &format!("/invocations/{part}"), None);
        assert_eq!(r.status, 200, "{part}: {}", r.text());
        assert_eq!(r.json()["request_id"], rid.as_str());
        let out = server.cli(&["logs", "ids", "--request-id", part]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.contains("ran") && text.lines().all(|l| l.contains(&rid[rid.len() - 8..])),
            "{text}"
        );
    }
    // A beginning every id shares is ambiguous; one nobody has finds nothing.
    let r = server.api("GET", &format!("/invocations/{}", &rid[..4]), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "ambiguous_request_id");
    let out = server.cli(&["logs", "ids", "--request-id", "zzzzzzzz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no invocation of 'ids'"));
}

/// A Node.js function that, called, connects to the test's listener on the
/// host's loopback (`host.lampyr.internal`, allowed) and answers `done`
/// and what the test sends it: the test decides when a request in flight
/// ends.
fn held_function(port: u16) -> Fixture {
    Fixture::node(
        "held",
        &format!("allow = [\"127.0.0.1:{port}\"]\ntimeout = \"120s\"\n"),
        &format!(
            "const net = require('net');
exports.handler = async () => new Promise((resolve, reject) => {{
  const s = net.connect({port}, '10.0.2.2');
  s.once('data', (d) => {{ s.destroy(); resolve('done ' + d); }});
  s.on('error', reject);
}});"
        ),
    )
}

/// Starts a request to `held` on a connection of its own (closed after the
/// answer); returns what came back, whatever it is, once the connection
/// ends.
fn call_held(server: &Server) -> std::thread::JoinHandle<String> {
    let port = server.port();
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            c,
            "GET /fn/held HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    })
}

/// The instance's connection to `listener`, once the function has made it.
fn accept_held(server: &Server, listener: &std::net::TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut held = None;
    server.wait_until(
        "the function to connect to the test",
        Duration::from_secs(30),
        || {
            held = listener.accept().ok().map(|(c, _)| c);
            held.is_some()
        },
    );
    let held = held.unwrap();
    held.set_nonblocking(false).unwrap();
    held
}

/// Where in the server's log a line containing `what` is.
fn log_line(log: &[String], what: &str) -> Option<usize> {
    log.iter().position(|l| l.contains(what))
}

#[test]
fn shutdown_ends_log_streams_and_idle_connections_and_drains() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut server = Server::start();
    server.deploy(held_function(listener.local_addr().unwrap().port()).path());
    // A live log follower, as the dashboard keeps open.
    let auth = format!("Bearer {}", server.token());
    let mut follower = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(follower, "GET /api/v1/functions/held/logs?follow=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    follower
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = follower.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the stream began: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    // An idle keep-alive connection, its one answer read whole.
    let mut idle = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    while !answer_complete(&answer) {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before its answer");
        answer.extend_from_slice(&buf[..n]);
    }
    // A request in flight: it has reached the function, which waits for
    // the test.
    let in_flight = call_held(&server);
    let mut held = accept_held(&server, &listener);

    server.terminate();
    server.wait_until(
        "the shutdown line in the server's log",
        Duration::from_secs(10),
        || log_line(&server.log(), "shutting down, 1 request(s) in flight").is_some(),
    );
    // The server itself ends the stream and closes both connections, while
    // it still runs (the request in flight holds it).
    let mut rest = Vec::new();
    follower
        .read_to_end(&mut rest)
        .expect("the server closes the log stream");
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "the stream ended cleanly: {}",
        String::from_utf8_lossy(&rest)
    );
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest)
        .expect("the server closes the idle connection");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(server.running(), "the request in flight keeps the server");
    // The request in flight finishes, and the server exits once it has.
    held.write_all(b"at last").unwrap();
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done at last"),
        "the request in flight finished: {answer}"
    );
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let log = server.final_log();
    assert_eq!(log_line(&log, "were cut off"), None, "{log:#?}");
}

/// True once `answer` holds a whole response with a `Content-Length`.
fn answer_complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .expect("the answer has a Content-Length");
    body.len() >= len
}

#[test]
fn shutdown_cuts_off_a_request_still_running_at_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_d, cfg) = common::config_file("[http]\nshutdown_timeout = \"1s\"\n");
    let mut server = Server::start_with(&["--config", &cfg]);
    server.deploy(held_function(listener.local_addr().unwrap().port()).path());
    let in_flight = call_held(&server);
    let mut held = accept_held(&server, &listener);
    // The function is never let go: the server stops at its deadline
    // anyway, and cleanly.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let log = server.final_log();
    let began = log_line(&log, "shutting down, 1 request(s) in flight");
    let cut = log_line(&log, "were cut off");
    assert!(began.is_some() && cut.is_some() && began < cut, "{log:#?}");
    // The request got no answer of the function's, and its instance is
    // gone with the server: its connection to the test is closed.
    let answer = in_flight.join().unwrap();
    assert!(!answer.contains("done"), "{answer}");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest)
        .expect("the instance's connection closes with the server");
    assert!(rest.is_empty());
}

#[test]
fn lampyrignore_chooses_what_ships_and_dry_run_lists_it() {
    let server = Server::start();
    let f = Fixture::node(
        "shipping",
        "",
        "exports.handler = async () => require('fs').readdirSync('/var/task').sort().join(',');",
    );
    for (p, body) in [
        (".env", "SECRET=1"),
        (".env.local", "SECRET=2"),
        ("debug.log", "x"),
        ("node_modules/.cache/big", "x"),
        ("node_modules/dep/index.js", "module.exports = 1;"),
        (".venv/lib/x.py", "x"),
        ("src/keep.js", "1"),
    ] {
        std::fs::create_dir_all(f.path().join(p).parent().unwrap()).unwrap();
        f.write(p, body);
    }
    let (ok, plan) = cli_json(
        &server,
        &["deploy", f.path().to_str().unwrap(), "--dry-run"],
    );
    assert!(ok, "{plan}");
    let paths: Vec<&str> = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for gone in [
        ".env",
        ".env.local",
        "debug.log",
        "node_modules/.cache",
        ".venv",
    ] {
        assert!(
            !paths.iter().any(|p| p.starts_with(gone)),
            "{gone} ships: {paths:?}"
        );
    }
    for kept in [
        "index.js",
        "lampyr.toml",
        "node_modules/dep/index.js",
        "src/keep.js",
    ] {
        assert!(paths.contains(&kept), "{kept} missing: {paths:?}");
    }
    assert_eq!(plan["ignore_file"], false);
    assert_eq!(
        server.api("GET", "/functions/shipping", None).status,
        404,
        "a dry run uploads nothing"
    );
    // A .lampyrignore replaces the defaults.
    f.write(".lampyrignore", "src/\n*.log\n!keep.log\n");
    f.write("keep.log", "kept");
    let (_, plan) = cli_json(
        &server,
        &["deploy", f.path().to_str().unwrap(), "--dry-run"],
    );
    let paths: Vec<&str> = plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&".env")
            && paths.contains(&"keep.log")
            && !paths.iter().any(|p| p.starts_with("src")),
        "{paths:?}"
    );
    assert_eq!(plan["ignore_file"], true);
    // Deploying from inside the directory, by default.
    let out = std::process::Command::new(common::bin())
        .arg("deploy")
        .current_dir(f.path())
        .env("LAMPYR_URL", &server.url)
        .env("LAMPYR_DATA_DIR", &server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = server.get("shipping").text();
    assert!(
        shipped.contains(".env") && !shipped.contains("src"),
        "{shipped}"
    );
    // Deploying by the path of its lampyr.toml ships the same directory,
    // under the same rules: from anywhere, and as `lampyr.toml` from inside.
    f.write("by-path.txt", "1");
    let manifest = f.path().join("lampyr.toml");
    let (ok, v) = cli_json(&server, &["deploy", manifest.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["version"], 2, "{v}");
    let shipped = server.get("shipping").text();
    assert!(
        shipped.contains("by-path.txt") && shipped.contains(".env") && !shipped.contains("src"),
        "{shipped}"
    );
    f.write("relative.txt", "1");
    let out = std::process::Command::new(common::bin())
        .args(["--json", "deploy", "lampyr.toml"])
        .current_dir(f.path())
        .env("LAMPYR_URL", &server.url)
        .env("LAMPYR_DATA_DIR", &server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3, "{v}");
    let shipped = server.get("shipping").text();
    assert!(
        shipped.contains("relative.txt")
            && shipped.contains("by-path.txt")
            && !shipped.contains("src"),
        "{shipped}"
    );
    // A path to another file is neither, and the CLI says what it takes.
    let out = server.cli(&["deploy", f.path().join("index.js").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the lampyr.toml itself"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cli_names_limits_speaks_json_and_completes() {
    let (_d, cfg) = common::config_file("[limits]\nmax_package = 100000\n");
    let server = Server::start_with(&["--config", &cfg]);
    let f = Fixture::node("big", "", "exports.handler = async () => 1;");
    // Incompressible bytes, over the limit once packed.
    let noise: String = (0..400_000u32)
        .map(|i| char::from(b'!' + ((i.wrapping_mul(2_654_435_761) >> 13) % 90) as u8))
        .collect();
    f.write("noise.txt", &noise);
    let (ok, v) = cli_json(&server, &["deploy", f.path().to_str().unwrap()]);
    assert!(!ok);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("max_package") && m.contains("limit"), "{m}");
    // The server's own 413 (a client that does not check first) names it.
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let r = server.deploy_package("big", &pkg);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "package_too_large");
    let m = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        m.contains("limit of 97.7 KiB") && m.contains("[limits] max_package"),
        "{m}"
    );
    // Every failure in --json is the API's error body, on stdout.
    let (ok, v) = cli_json(&server, &["info", "nope"]);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "function_not_found");
    let (ok, v) = cli_json(&server, &["deploy", "/nonexistent/dir"]);
    assert!(!ok);
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    // A bare number where a duration goes gets a hint.
    let t = Fixture::node("num", "timeout = 10\n", "exports.handler = async () => 1;");
    let (_, v) = cli_json(&server, &["deploy", t.path().to_str().unwrap()]);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("\"10s\""),
        "{v}"
    );
    // Help: a subcommand's own options first, the global ones apart.
    let out = server.cli(&["deploy", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let own = help.find("--dry-run").unwrap();
    let global = help.find("Global options").unwrap();
    assert!(own < global, "{help}");
    for shell in ["bash", "zsh", "fish"] {
        let out = server.cli(&["completions", shell]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("deploy"),
            "{shell}"
        );
    }
    // The root redirects to the dashboard; throttling says when to retry.
    let r = common::request("GET", &format!("{}/", server.url), None, &[]);
    assert!(r.text().contains("lampyr"), "followed to /ui");
}

/// Listens on loopback in front of `server`, as a server whose doctor
/// report has no limits (one from before reports had them): it answers
/// `GET /api/v1/doctor` itself with the server's report less `limits`, and
/// passes every other request, and the rest of its connection, to the
/// server byte for byte. When the server ends the connection, so does
/// this, dropping what the client still sends. Returns its URL.
fn without_reported_limits(server: &Server) -> String {
    let mut doctor = server.api("GET", "/doctor", None).json();
    assert!(doctor["limits"].is_object(), "{doctor}");
    doctor.as_object_mut().unwrap().remove("limits");
    let doctor = serde_json::to_vec(&doctor).unwrap();
    let upstream = ("127.0.0.1", server.port());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let doctor = doctor.clone();
            std::thread::spawn(move || relay(client, upstream, &doctor));
        }
    });
    url
}

fn relay(mut client: TcpStream, upstream: (&'static str, u16), doctor: &[u8]) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        if !pending.starts_with(b"GET /api/v1/doctor ") {
            break;
        }
        pending.drain(..end + 4);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            doctor.len()
        );
        if client.write_all(head.as_bytes()).is_err() || client.write_all(doctor).is_err() {
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut to_client), Ok(mut from_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
    });
    if server.write_all(&pending).is_ok() {
        let _ = std::io::copy(&mut client, &mut server);
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
    let _ = down.join();
}

#[test]
fn the_cli_names_the_servers_limit_when_it_cannot_check_first() {
    let (_d, cfg) = common::config_file("[limits]\nmax_package = 100000\nmax_unpacked = 1048576\n");
    let server = Server::start_with(&["--config", &cfg]);
    let cli = |url: &str, args: &[&str]| {
        std::process::Command::new(common::bin())
            .args(args)
            .env("LAMPYR_URL", url)
            .env("LAMPYR_DATA_DIR", &server.data)
            .env_remove("LAMPYR_TOKEN")
            .output()
            .unwrap()
    };
    // Small packed, over max_unpacked once unpacked: no size the CLI can
    // check first; the server's 413 names the limit and its setting.
    let zeros = Fixture::node("zeros", "", "exports.handler = async () => 1;");
    zeros.write("zeros.bin", &"\0".repeat(2 << 20));
    let dir = zeros.path().to_str().unwrap();
    let out = cli(&server.url, &["--json", "deploy", dir]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "package_too_large", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("limit of 1.0 MiB")
            && m.contains("[limits] max_unpacked")
            && m.contains(".lampyrignore"),
        "{m}"
    );
    let out = cli(&server.url, &["deploy", dir]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("limit of 1.0 MiB") && said.contains("max_unpacked"),
        "{said}"
    );

    // Over max_package, to a server that does not report its limits: the
    // CLI uploads, and the server refuses.
    let relayed = without_reported_limits(&server);
    let noise = |len: u32| -> String {
        (0..len)
            .map(|i| char::from(b'!' + ((i.wrapping_mul(2_654_435_761) >> 13) % 90) as u8))
            .collect()
    };
    // A package that fits in the connection's buffers: the server's 413
    // arrives.
    let big = Fixture::node("big", "", "exports.handler = async () => 1;");
    big.write("noise.txt", &noise(400_000));
    let out = cli(
        &relayed,
        &["--json", "deploy", big.path().to_str().unwrap()],
    );
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "package_too_large", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("limit of 97.7 KiB") && m.contains("[limits] max_package"),
        "{m}"
    );
    // One far larger: the server refuses it from its head and closes the
    // connection while the CLI still sends.
    let huge = Fixture::node("huge", "", "exports.handler = async () => 1;");
    huge.write("noise.txt", &noise(48 << 20));
    let out = cli(&relayed, &["deploy", huge.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("closed the connection during the upload")
            && said.contains("[limits] max_package"),
        "{said}"
    );
    assert_eq!(
        server.api("GET", "/functions", None).json()["functions"],
        serde_json::json!([])
    );
}

#[test]
fn throttled_requests_carry_retry_after() {
    let server = Server::start();
    server.deploy(Fixture::node("narrow", "max_instances = 1\nmax_queue = 0\n", "exports.handler = async () => { await new Promise(r => setTimeout(r, 1500)); return 1; };").path());
    let url = format!("{}/fn/narrow", server.url);
    let busy = std::thread::spawn(move || common::request("GET", &url, None, &[]).status);
    server.wait_until(
        "the first request to hold the instance",
        Duration::from_secs(20),
        || server.info("narrow")["instance_states"]["busy"] == 1,
    );
    let r = server.get("narrow");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap(), 200);
}

#[test]
fn the_server_log_names_the_dashboard_and_has_no_colours_in_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .env("LAMPYR_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        let done = line.contains("lampyr listening on");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe:\n{text}");
    let listening = seen.last().unwrap();
    assert!(listening.contains("/ui"), "{listening}");
}
