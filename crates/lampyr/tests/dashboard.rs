//! The web dashboard end to end: a real headless Chromium (Debian's
//! `chromium`, driven by npm `playwright-core` from `tests/ui`) opens `/ui`
//! on a live server and checks the function list, the detail view, the
//! time ranges, the test panel, the recent invocations, a request's logs,
//! the live log tail, a function's timers and event sources, and that the page asks
//! nothing of any other address (`tests/ui/dashboard.mjs` says exactly
//! what it checks).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Fixture, Server};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/ui/dashboard.mjs");
const CHROMIUM: &str = "/usr/bin/chromium";

const HANDLER: &str = "exports.handler = async (event) => {
  console.log('hello from ' + event.rawQueryString);
  const body = event.body ? (event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString() : event.body) : '';
  if (body) console.log('got ' + event.requestContext.http.method + ' ' + body);
  return { statusCode: 200, headers: { 'content-type': 'text/plain' }, body: 'Hello ' + event.rawQueryString + (body ? ' ' + body : '') + '\\n' };
};
";

/// Timers for the detail view: one firing every second, one a day (its
/// next firings fixed for the test's length), one disabled.
const TIMERS: &str = r#"
[[triggers]]
type = "timer"
name = "often"
cron = "@every 1s"

[[triggers]]
type = "timer"
name = "daily"
cron = "0 30 9 * * *"
timezone = "Asia/Tokyo"

[[triggers]]
type = "timer"
name = "paused"
cron = "@every 1m"
enabled = false
"#;

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

#[test]
fn dashboard_in_a_real_browser() {
    // What the test needs besides Rust: fail (not skip) and say how to get it.
    let ui = Path::new(SCRIPT).parent().unwrap();
    let node = on_path("node");
    let mut missing = Vec::new();
    if node.is_none() {
        missing.push("Node.js (`apt-get install -y nodejs`)");
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push("Chromium at /usr/bin/chromium (`apt-get install -y chromium`)");
    }
    if !ui
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("playwright-core in tests/ui/node_modules (`npm ci --prefix tests/ui`)");
    }
    assert!(
        missing.is_empty(),
        "the dashboard test needs {}",
        missing.join(", and ")
    );

    let server = Server::start();
    let fixture = Fixture::node("dash", "", HANDLER);
    server.deploy(fixture.path());
    // A new instance first (cold, or pooled when the pools are on), then warm ones.
    let first = server.get("dash?n=1");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.text(), "Hello n=1\n");
    assert!(
        common::fresh(&first),
        "the first call starts an instance: {:?}",
        first.header("x-lampyr-start")
    );
    for i in 2..=4 {
        let r = server.get(&format!("dash?n={i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    }

    // A function whose initialisation fails (it passed no check), called.
    let broken = Fixture::node(
        "dash-broken",
        "retries = 0\n",
        "throw new Error('no database configured');",
    );
    let pkg = lampyr_store::pack_dir(broken.path()).unwrap();
    assert_eq!(
        server
            .api("PUT", "/functions/dash-broken?verify=false", Some(&pkg))
            .status,
        200
    );
    assert_eq!(server.get("dash-broken").status, 502);
    // An event for it fails for good: a dead letter.
    let r = common::request(
        "POST",
        &format!("{}/fn/dash-broken", server.url),
        Some(b"{}"),
        &[("x-lampyr-invocation-type", "event")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    server.wait_until("the dead letter", Duration::from_secs(20), || {
        server.info("dash-broken")["events"]["dead_letters"] == 1
    });

    // A function with timers only, and an event source that cannot be
    // reached (nothing listens on its port).
    let source = format!(
        "{TIMERS}\n[[triggers]]\ntype = \"nats\"\nname = \"orders\"\nservers = [\"nats://127.0.0.1:{}\"]\nstream = \"ORDERS\"\n",
        common::nats::free_port()
    );
    server.deploy(
        Fixture::node(
            "dash-timers",
            &source,
            "exports.handler = async (event) => { console.log('tick ' + event.triggerName); return 'ok'; };",
        )
        .path(),
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(node.unwrap())
        .arg(SCRIPT)
        .args(["--url", &server.url, "--token", &server.token()])
        .args([
            "--function",
            "dash",
            "--failing",
            "dash-broken",
            "--timers",
            "dash-timers",
            "--screenshot",
        ])
        .arg(&shot)
        .output()
        .expect("run node tests/ui/dashboard.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the dashboard test failed ({}):\n{stdout}{stderr}",
        out.status
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "the screenshot {} is not a real page ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
