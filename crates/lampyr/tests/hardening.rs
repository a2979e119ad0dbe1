//! The server under attack from its inputs: packages built to reach the
//! host or exhaust it, functions that flood their output or forge the
//! response's framing and the log, clients that stall, and API parameters
//! out of range. Each test reproduces one finding of a review of lampyr and
//! checks that it holds now.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{config_file, node_manifest, request, Fixture, RawPackage, Server};

fn error_code(r: &common::Resp) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// No file is left in the server's scratch directory.
fn scratch_is_empty(server: &Server) {
    let left: Vec<String> = std::fs::read_dir(server.data.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "the scratch directory holds {left:?}");
}

#[test]
fn package_links_never_lead_outside_the_package() {
    let server = Server::start();
    let manifest = node_manifest("links");
    // Each link alone stays inside; the chain climbs to `/`.
    let mut pkg = RawPackage::new()
        .file("lampyr.toml", manifest.as_bytes())
        .file("index.js", b"exports.handler = async () => 1;")
        .dir("a")
        .link("a/u0", "..");
    for i in 1..12 {
        pkg = pkg.link(&format!("a/u{i}"), &format!("u{}/..", i - 1));
    }
    let pkg = pkg.link("a/etc", "u11/etc").finish(0);
    let r = server.deploy_package("links", &pkg);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "invalid_package");
    assert!(
        r.text().contains("outside the function directory"),
        "{}",
        r.text()
    );

    // Bytecode shipped in the package is refused: lampyr compiles sources.
    let pkg = RawPackage::new()
        .file("lampyr.toml", manifest.as_bytes())
        .file("index.js", b"exports.handler = async () => 1;")
        .file("__pycache__/json.cpython-311.pyc", b"\x00evil")
        .finish(0);
    let r = server.deploy_package("links", &pkg);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("__pycache__"), "{}", r.text());

    // A manifest that is a link is never read, so its target never
    // reaches an error message.
    for target in ["/proc/self/environ", "/etc/passwd", "index.js"] {
        let pkg = RawPackage::new()
            .file("index.js", b"exports.handler = async () => 1;")
            .link("lampyr.toml", target)
            .finish(0);
        let r = server.deploy_package("links", &pkg);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        let t = r.text();
        assert!(
            t.contains("symbolic link") || t.contains("outside"),
            "{target}: {t}"
        );
        for leak in ["PATH=", "LAMPYR", "root:", "exports.handler"] {
            assert!(
                !t.contains(leak),
                "{target}: the error quotes the file: {t}"
            );
        }
    }

    // The manifest as a link through a chain of links: each link, checked
    // by its own text alone, stays inside (`lampyr.toml -> a/u11/...` names
    // no `..`; each `a/uN -> uM/..` climbs one step), yet the chain leads
    // to `/`, and from there to the file.
    for target in ["proc/self/environ", "etc/passwd"] {
        let mut pkg = RawPackage::new()
            .file("index.js", b"exports.handler = async () => 1;")
            .dir("a")
            .link("a/u0", "..");
        for i in 1..12 {
            pkg = pkg.link(&format!("a/u{i}"), &format!("u{}/..", i - 1));
        }
        let pkg = pkg
            .link("lampyr.toml", &format!("a/u11/{target}"))
            .finish(0);
        let r = server.deploy_package("links", &pkg);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert_eq!(error_code(&r), "invalid_package", "{target}");
        let t = r.text();
        assert!(
            t.contains("outside the function directory") || t.contains("symbolic link"),
            "{target}: {t}"
        );
        for leak in ["PATH=", "LAMPYR", "root:", "HOME=", "/bin/"] {
            assert!(
                !t.contains(leak),
                "{target}: the error quotes the file: {t}"
            );
        }
    }
    scratch_is_empty(&server);
    assert_eq!(
        server.api("GET", "/functions", None).json()["functions"],
        serde_json::json!([])
    );
}

#[test]
fn a_decompression_bomb_is_refused_without_the_memory() {
    let server = Server::start();
    let before = server.peak_rss_kib();
    // Half a MiB on the wire, 512 MiB of zeros after the archive's end (the
    // unpacked limit is 256 MiB).
    let pkg = RawPackage::new()
        .file("lampyr.toml", node_manifest("bomb").as_bytes())
        .file("index.js", b"exports.handler = async () => 1;")
        .finish(512 << 20);
    assert!(pkg.len() < 1 << 20, "the package is {} bytes", pkg.len());
    let r = server.deploy_package("bomb", &pkg);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(error_code(&r), "package_too_large");
    let grown = server.peak_rss_kib().saturating_sub(before);
    // The upload itself is held once; nothing decompressed is.
    assert!(
        grown < 64 * 1024,
        "the server's peak memory grew by {grown} KiB"
    );
    scratch_is_empty(&server);
}

#[test]
fn entries_manifests_and_environments_are_bounded() {
    let (_cfg_dir, cfg) = config_file("[limits]\nmax_entries = 100\n");
    let server = Server::start_with(&["--config", &cfg]);
    let mut pkg = RawPackage::new()
        .file("lampyr.toml", node_manifest("many").as_bytes())
        .file("index.js", b"exports.handler = async () => 1;");
    for i in 0..200 {
        pkg = pkg.file(&format!("empty/{i}"), b"");
    }
    let r = server.deploy_package("many", &pkg.finish(0));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("more than 100 entries") && r.text().contains("max_entries"),
        "{}",
        r.text()
    );

    let huge = format!("{}# {}\n", node_manifest("big"), "x".repeat(100 * 1024));
    let pkg = RawPackage::new()
        .file("lampyr.toml", huge.as_bytes())
        .file("index.js", b"exports.handler = async () => 1;")
        .finish(0);
    let r = server.deploy_package("big", &pkg);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("over the limit of 65536 bytes"),
        "{}",
        r.text()
    );

    let env = format!(
        "{}[env]\nBIG = \"{}\"\n",
        node_manifest("env"),
        "v".repeat(5000)
    );
    let pkg = RawPackage::new()
        .file("lampyr.toml", env.as_bytes())
        .file("index.js", b"exports.handler = async () => 1;")
        .finish(0);
    let r = server.deploy_package("env", &pkg);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_code(&r), "invalid_manifest");
    assert!(
        r.text().contains("`env`") && r.text().contains("4096"),
        "{}",
        r.text()
    );
    scratch_is_empty(&server);
    // And /healthz reads no spec, whatever they hold.
    assert_eq!(
        request("GET", &format!("{}/healthz", server.url), None, &[]).status,
        200
    );
}

/// A tmpfs of `mb` MiB mounted at a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={mb}m").as_str()),
        )
        .expect("mount a tmpfs (the tests run as root)");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn refused_deploys_leave_nothing_and_a_full_disk_recovers() {
    let disk = SmallDisk::new(48);
    let data = disk.dir.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    // Refusals of every kind leave nothing behind.
    let bad = [
        RawPackage::new().file("index.js", b"x").finish(0),
        RawPackage::new()
            .file("lampyr.toml", b"name = \"full\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nmemory_mb = 1\n")
            .file("index.js", &vec![b'x'; 4 << 20])
            .finish(0),
        RawPackage::new()
            .file("lampyr.toml", node_manifest("full").as_bytes())
            .file("other.js", &vec![b'y'; 4 << 20])
            .finish(0),
        b"not a package".to_vec(),
    ];
    for pkg in &bad {
        let r = server.deploy_package("full", pkg);
        assert_eq!(r.status, 400, "{}", r.text());
        scratch_is_empty(&server);
    }
    // Fill the disk to within a few MiB, then deploy more than that.
    let filler = disk.dir.path().join("filler");
    let free = nix::sys::statvfs::statvfs(disk.dir.path()).unwrap();
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    std::fs::write(&filler, vec![0u8; (avail - (3 << 20)) as usize]).unwrap();
    let pkg = RawPackage::new()
        .file("lampyr.toml", node_manifest("full").as_bytes())
        .file("index.js", b"exports.handler = async () => 'fits';")
        .file("data.bin", &vec![7u8; 12 << 20])
        .finish(0);
    let r = server.deploy_package("full", &pkg);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(error_code(&r), "insufficient_storage");
    assert!(r.text().contains("free some space"), "{}", r.text());
    scratch_is_empty(&server);
    // Space again: the same deploy works, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = server.deploy_package("full", &pkg);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get("full").text(), "fits");
    server.stop();
}

#[test]
fn log_floods_are_slowed_down_not_held_in_memory() {
    let server = Server::start();
    server.deploy(
        Fixture::python(
            "flood",
            "timeout = \"60s\"\n",
            "import sys, time\ndef handler(e, c):\n    end = time.time() + 6\n    n = 0\n    line = 'x' * 1000 + '\\n'\n    while time.time() < end:\n        sys.stdout.write(line)\n        n += 1\n    sys.stdout.flush()\n    return {'statusCode': 200, 'body': str(n)}\n",
        )
        .path(),
    );
    let before = server.peak_rss_kib();
    let r = server.get("flood");
    assert_eq!(r.status, 200, "{}", r.text());
    let written: u64 = r.text().parse().unwrap();
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 96 * 1024,
        "the server's peak memory grew by {grown} KiB while the function wrote {written} lines"
    );
    // Its writes blocked at its rate (1 MiB/s, 4 MiB burst): about 10 MiB
    // in 6 s, not the hundreds of MiB an unthrottled loop writes.
    assert!(written < 20_000, "the function wrote {written} KB in 6 s");
    // What it wrote is in its log.
    let logs = server.logs("flood", "tail=10");
    assert!(logs
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.len() == 1000)));
}

/// Sends raw bytes on one connection and reads until `responses` HTTP
/// responses have arrived (or the server closes).
fn raw_exchange(server: &Server, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&out)
                    .matches("x-lampyr-request-id")
                    .count()
                    >= 2
                    && out.ends_with(b"second")
                {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn functions_cannot_frame_responses_or_give_bad_statuses() {
    let server = Server::start();
    server.deploy(Fixture::node("framing", "", r#"exports.handler = async (e) => {
  if (e.rawPath === '/short') return { statusCode: 200, headers: { 'content-length': '2', 'x-mine': 'kept' }, body: 'hello, this is longer' };
  if (e.rawPath === '/long') return { statusCode: 200, headers: { 'Content-Length': '400', 'transfer-encoding': 'chunked', 'connection': 'close' }, body: 'tiny' };
  if (e.rawPath === '/multi') return { statusCode: 200, multiValueHeaders: { 'content-length': ['1'], 'keep-alive': ['timeout=1'], 'proxy-authenticate': ['Basic'] }, body: 'multi' };
  if (e.rawPath === '/status') return { statusCode: 65736, body: 'no' };
  if (e.rawPath === '/info') return { statusCode: 101, body: 'no' };
  return { statusCode: 200, body: 'second' };
};"#).path());
    for path in ["/short", "/long", "/multi"] {
        let reqs = format!("GET /fn/framing{path} HTTP/1.1\r\nHost: x\r\n\r\nGET /fn/framing/next HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = raw_exchange(&server, reqs.as_bytes());
        let parts: Vec<&str> = got.split("HTTP/1.1 ").filter(|p| !p.is_empty()).collect();
        assert_eq!(
            parts.len(),
            2,
            "{path}: two responses on the connection:\n{got}"
        );
        let first = parts[0].to_ascii_lowercase();
        let body = match path {
            "/short" => "hello, this is longer",
            "/long" => "tiny",
            _ => "multi",
        };
        assert!(
            first.contains(&format!("content-length: {}\r\n", body.len())),
            "{path}: {first}"
        );
        assert!(first.ends_with(body), "{path}: {first}");
        for h in [
            "transfer-encoding",
            "connection: close",
            "keep-alive",
            "proxy-authenticate",
        ] {
            assert!(!first.contains(h), "{path}: {h} in {first}");
        }
        assert!(
            parts[1].starts_with("200") && parts[1].ends_with("second"),
            "{path}: {}",
            parts[1]
        );
    }
    assert!(raw_exchange(
        &server,
        b"GET /fn/framing/short HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .contains("x-mine: kept"));
    for path in ["status", "info"] {
        let r = server.get(&format!("framing/{path}"));
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(error_code(&r), "invalid_response");
    }
}

#[test]
fn stalled_clients_are_dropped_and_connections_capped() {
    let (_d, cfg) = config_file(
        "[http]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_connections = 64\n",
    );
    let server = Server::start_with(&["--config", &cfg]);
    server.deploy(
        Fixture::node(
            "echo",
            "",
            "exports.handler = async (e) => e.body || 'empty';",
        )
        .path(),
    );
    let closed_within = |mut s: TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
            }
        }
    };
    // Half a request head, then nothing: closed at the header timeout.
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.write_all(b"GET /fn/echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(
        closed_within(s, Duration::from_secs(10)).0,
        "a stalled head keeps its connection"
    );
    // A head, then a body that stops arriving: 408.
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.write_all(b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
        .unwrap();
    let (_, got) = closed_within(s, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    // Idle keep-alive connections close too.
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.write_all(b"GET /fn/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (closed, got) = closed_within(s, Duration::from_secs(10));
    assert!(closed && got.contains("empty"), "{got}");

    // At the cap, a new connection waits until one closes.
    let held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
            // Keep each one busy reading a body that arrives slowly enough
            // to stay under the body timeout.
            s.write_all(b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut waiting = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    waiting
        .write_all(b"GET /fn/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        waiting.read(&mut buf).is_err(),
        "served past the connection cap"
    );
    // The held connections time out (body timeout) and make room.
    drop(held);
    let (_, got) = closed_within(waiting, Duration::from_secs(10));
    assert!(got.contains("empty"), "{got}");
}

#[test]
fn api_parameters_out_of_range_answer_400() {
    let server = Server::start();
    server.deploy(Fixture::node("params", "", "exports.handler = async () => 1;").path());
    for q in [
        "/functions/params/stats?since=500000000000y",
        "/functions/params/series?since=1h&step=0",
        "/functions/params/series?step=-1",
        "/functions/params/series?step=9999999",
        "/functions/params/invocations?since=99999999999999999999s",
        "/functions/params/invocations?limit=abc",
        "/functions/params/logs?tail=-5",
        "/functions/params/logs?since=1000y",
    ] {
        let r = server.api("GET", q, None);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(error_code(&r), "invalid_parameter", "{q}");
    }
}

#[test]
fn logs_cannot_be_forged_and_print_safely() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "victim",
            "",
            "exports.handler = async () => { console.log('victim ran'); return 'v'; };",
        )
        .path(),
    );
    let victim = server.get("victim");
    let victim_rid = victim.header("x-lampyr-request-id").unwrap().to_string();
    let forger = format!(
        "exports.handler = async () => {{\n  const ts = new Date().toISOString();\n  process.stdout.write(ts + '\\t{victim_rid}\\tINFO\\tforged into the victim\\n');\n  process.stdout.write(ts + '\\t-\\tINFO\\tSTART RequestId: {victim_rid} Version: 1\\n');\n  process.stdout.write('\\u001b]0;pwned\\u0007\\u001b[2J clear screen\\n');\n  return 'f';\n}};"
    );
    server.deploy(Fixture::node("forger", "", &forger).path());
    let r = server.get("forger");
    assert_eq!(r.status, 200);
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    server.wait_until("the forger's lines", Duration::from_secs(10), || {
        server.logs("forger", "").iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("clear screen"))
        })
    });
    // Its lines are its own invocation's, and stdout, never the platform's.
    for l in server.logs("forger", "") {
        if l["stream"] != "platform" {
            assert_eq!(l["request_id"], rid.as_str(), "{l}");
        }
        if l["message"].as_str().unwrap().contains(&victim_rid) {
            assert_eq!(
                l["stream"], "stdout",
                "the forged line is the function's: {l}"
            );
        }
    }
    assert!(!server
        .logs("victim", "")
        .iter()
        .any(|l| l["message"].as_str().unwrap().contains("forged")));
    // lampyr's own START line, rebuilt from the invocation's record once
    // it is stored.
    server.wait_until("the forger's record", Duration::from_secs(10), || {
        server.logs("forger", "").iter().any(|l| {
            l["stream"] == "platform"
                && l["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("START RequestId")
        })
    });
    // The CLI shows who wrote each line, and no terminal control codes.
    let out = server.cli(&["logs", "forger"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    let start = text
        .lines()
        .find(|l| l.contains("START RequestId: ") && l.contains(&victim_rid))
        .unwrap();
    assert!(start.contains(" fn "), "{start}");
    assert!(
        text.lines()
            .any(|l| l.contains(" lampyr ") && l.contains("START RequestId")),
        "{text}"
    );
}

#[test]
fn deploy_time_compiling_runs_unprivileged_and_dies_with_the_server() {
    let mut server = Server::start();
    // Enough modules that compiling them takes a while.
    let f = Fixture::python("many-modules", "", "def handler(e, c):\n    return 1\n");
    for i in 0..4000 {
        std::fs::create_dir_all(f.path().join(format!("pkg{}", i % 40))).unwrap();
        f.write(
            &format!("pkg{}/m{i}.py", i % 40),
            &"def f(x):\n    return [y * 2 for y in range(x) if y % 3]\n".repeat(20),
        );
    }
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let url = format!("{}/api/v1/functions/many-modules", server.url);
    let auth = format!("Bearer {}", server.token());
    let deploy = std::thread::spawn(move || {
        request("PUT", &url, Some(&pkg), &[("authorization", &auth)]).status
    });
    // The compiler appears, as the sandbox's user, under the server.
    let mut compiler = None;
    common::wait_until("the compile job", Duration::from_secs(30), &mut || {
        compiler = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains("compileall")
                .then_some(pid)
        });
        compiler.is_some()
    });
    let pid = compiler.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "the compiler runs as {uid}"
    );
    server.kill();
    common::wait_until(
        "the compile job to die with the server",
        Duration::from_secs(10),
        &mut || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        },
    );
    let _ = deploy.join();
}

#[test]
fn instances_see_no_host_paths() {
    for pooled in [true, false] {
        let server = if pooled {
            Server::start()
        } else {
            Server::start_with(&["--pools", "off"])
        };
        server.deploy(Fixture::node("paths-node", "", "const fs = require('fs');\nexports.handler = async () => JSON.stringify({ dir: process.env.LAMBDA_RUNTIME_DIR, mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8') });").path());
        server.deploy(Fixture::python("paths-py", "", "import os, json\ndef handler(e, c):\n    return json.dumps({'dir': os.environ['LAMBDA_RUNTIME_DIR'], 'mounts': open('/proc/self/mountinfo').read()})\n").path());
        let data = server.data.canonicalize().unwrap();
        let data = data.to_str().unwrap();
        for name in ["paths-node", "paths-py"] {
            if pooled {
                server.wait_pools_ready();
            }
            let r = server.get(name);
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            let v: serde_json::Value =
                serde_json::from_str(&r.json().as_str().map(str::to_string).unwrap_or(r.text()))
                    .unwrap();
            assert_eq!(v["dir"], "/var/runtime", "{name}");
            let mounts = v["mounts"].as_str().unwrap();
            assert!(
                !mounts.contains(data),
                "{name} (pooled: {pooled}) sees the data directory:\n{mounts}"
            );
            assert!(mounts.contains(" /var/task "), "{mounts}");
        }
    }
}
