//! Timer triggers on the real server: `@every` and cron with seconds fire
//! on time, missed ticks are caught up once after a restart, overlapping
//! ticks can be skipped, and bad schedules are refused at deploy.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{request, Fixture, Server};
use serde_json::Value;

/// Logs every firing: `TICK {event, now}`.
const TICKER: &str = r#"
exports.handler = async (event) => {
  console.log("TICK " + JSON.stringify({ event, now: Date.now() }));
  if (event.payload === "slow") await new Promise(r => setTimeout(r, 2500));
  return "ok";
};
"#;

/// The firings `name` logged: (trigger name, trigger time in ms, when it ran).
fn ticks(server: &Server, name: &str) -> Vec<(String, u64, u64)> {
    server
        .logs(name, "")
        .iter()
        .filter_map(|l| {
            let m = l["message"].as_str()?.strip_prefix("TICK ")?;
            let v: Value = serde_json::from_str(m).ok()?;
            let at = humantime::parse_rfc3339(v["event"]["triggerTime"].as_str()?).ok()?;
            let at = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
            Some((
                v["event"]["triggerName"].as_str()?.to_string(),
                at,
                v["now"].as_u64()?,
            ))
        })
        .collect()
}

fn of(t: &[(String, u64, u64)], timer: &str) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = t
        .iter()
        .filter(|(n, _, _)| n == timer)
        .map(|(_, at, ran)| (*at, *ran))
        .collect();
    v.sort();
    v
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn timers_fire_on_schedule_with_their_payload() {
    let server = Server::start();
    let manifest = r#"
[[triggers]]
type = "http"

[[triggers]]
type = "timer"
name = "fast"
cron = "@every 1s"
payload = '{"job": "report"}'

[[triggers]]
type = "timer"
name = "even"
cron = "*/2 * * * * *"
timezone = "Asia/Shanghai"
"#;
    server.deploy(Fixture::node("ticker", manifest, TICKER).path());
    server.wait_until(
        "three fast and two even ticks",
        Duration::from_secs(20),
        || {
            let t = ticks(&server, "ticker");
            of(&t, "fast").len() >= 3 && of(&t, "even").len() >= 2
        },
    );
    let t = ticks(&server, "ticker");
    let fast = of(&t, "fast");
    for w in fast.windows(2) {
        assert_eq!(
            w[1].0 - w[0].0,
            1000,
            "consecutive ticks a second apart: {fast:?}"
        );
    }
    for (at, ran) in fast.iter().chain(of(&t, "even").iter()) {
        assert_eq!(at % 1000, 0, "ticks fall on whole seconds");
        assert!(
            ran >= at && ran - at < 1500,
            "ran {} ms after its tick",
            ran - at
        );
    }
    for (at, _) in of(&t, "even") {
        assert_eq!(
            at / 1000 % 2,
            0,
            "the cron's seconds field: every even second"
        );
    }
    // The event is Function Compute's timer event.
    let first = server
        .logs("ticker", "")
        .into_iter()
        .find_map(|l| {
            let m = l["message"].as_str()?.strip_prefix("TICK ")?.to_string();
            let v: Value = serde_json::from_str(&m).ok()?;
            (v["event"]["triggerName"] == "fast").then_some(v)
        })
        .unwrap();
    assert_eq!(first["event"]["payload"], r#"{"job": "report"}"#);
    // Records say the timer called; the URL still works (it was listed).
    let recs = server
        .api("GET", "/functions/ticker/invocations?limit=5", None)
        .json();
    assert_eq!(recs["invocations"][0]["trigger"], "timer");
    assert_eq!(server.get("ticker").status, 200);
    // `lampyr info` shows the next firings and the last one's outcome.
    let out = server.cli(&["info", "ticker"]);
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("timer fast: @every 1s (UTC)"), "{info}");
    assert!(
        info.contains("timer even: */2 * * * * * (Asia/Shanghai)"),
        "{info}"
    );
    assert!(info.contains("next:") && info.contains("last:"), "{info}");
    let v = server.info("ticker");
    assert_eq!(v["timers"][0]["next"].as_array().unwrap().len(), 3);
}

#[test]
fn missed_ticks_are_caught_up_once_and_overlaps_can_be_skipped() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let manifest = r#"
[[triggers]]
type = "timer"
name = "one"
cron = "@every 2s"

[[triggers]]
type = "timer"
name = "none"
cron = "@every 2s"
catch_up = "none"
"#;
    server.deploy(Fixture::node("catcher", manifest, TICKER).path());
    server.wait_until("both timers fired", Duration::from_secs(15), || {
        let t = ticks(&server, "catcher");
        !of(&t, "one").is_empty() && !of(&t, "none").is_empty()
    });
    let before = ticks(&server, "catcher");
    let last_before = of(&before, "one").last().unwrap().0;
    server.stop();
    let stopped = now_ms();
    // Ticks pass while the server is down: the condition under test.
    std::thread::sleep(Duration::from_millis(4500));
    let server = {
        server = Server::start_in(data.path(), &[]);
        server
    };
    let restarted = now_ms();
    // The latest missed tick of "one", once.
    let missed_latest = (restarted / 2000) * 2000;
    server.wait_until("the caught-up tick", Duration::from_secs(10), || {
        of(&ticks(&server, "catcher"), "one")
            .iter()
            .any(|(at, _)| *at == missed_latest)
    });
    let t = ticks(&server, "catcher");
    let one: Vec<u64> = of(&t, "one").into_iter().map(|(at, _)| at).collect();
    let missed: Vec<u64> = one
        .iter()
        .copied()
        .filter(|at| *at > last_before && *at <= restarted)
        .collect();
    assert_eq!(
        missed,
        [missed_latest],
        "only the latest tick missed while down fires (stopped {stopped}, restarted {restarted}): {one:?}"
    );
    let mut seen = one.clone();
    seen.dedup();
    assert_eq!(seen, one, "no tick fired twice");
    let none_missed: Vec<u64> = of(&t, "none")
        .into_iter()
        .map(|(at, _)| at)
        .filter(|at| *at > stopped && *at <= restarted)
        .collect();
    assert!(
        none_missed.is_empty(),
        "catch_up = \"none\" skips: {none_missed:?}"
    );

    // overlap = "skip": ticks while a firing still runs are dropped.
    let manifest = r#"
[[triggers]]
type = "timer"
name = "long"
cron = "@every 1s"
payload = "slow"
overlap = "skip"
"#;
    server.deploy(Fixture::node("overlapper", manifest, TICKER).path());
    server.wait_until("two long firings", Duration::from_secs(20), || {
        of(&ticks(&server, "overlapper"), "long").len() >= 2
    });
    let long = of(&ticks(&server, "overlapper"), "long");
    for w in long.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= 2000,
            "a tick while the last ran was skipped: {long:?}"
        );
    }
    let m = request("GET", &format!("{}/metrics", server.url), None, &[]).text();
    assert!(
        m.lines().any(|l| l.starts_with(
            "lampyr_timer_ticks_total{function=\"overlapper\",outcome=\"skipped\",timer=\"long\"}"
        )),
        "{m}"
    );
}

#[test]
fn bad_schedules_are_refused_at_deploy() {
    let server = Server::start();
    for (cron, want) in [
        ("61 * * * *", "triggers[0].cron"),
        ("* * *", "has 3 fields"),
        ("@every 0s", "at least 1s"),
    ] {
        let f = Fixture::node(
            "bad-timer",
            &format!("[[triggers]]\ntype = \"timer\"\ncron = \"{cron}\"\n"),
            TICKER,
        );
        let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
        assert!(!out.status.success(), "{cron} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{cron}: {err}");
    }
}
