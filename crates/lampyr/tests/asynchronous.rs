//! Asynchronous invocation, on the real server and runtimes: 202 and a run
//! later, retries, dead letters, redrive, destinations, idempotency keys,
//! the limits, the CLI's `invoke --async`, `invocations --events` and
//! `dlq redrive --all`, the queue's metrics, and that no accepted event is
//! lost when the server is killed.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{config_file, request, try_request, Fixture, Resp, Server};
use serde_json::Value;

/// Queues `body` for `name` through the management API's invoke.
fn queue(server: &Server, name: &str, body: &[u8], key: Option<&str>) -> Resp {
    let auth = format!("Bearer {}", server.token());
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-lampyr-invocation-type", "event"),
    ];
    if let Some(k) = key {
        headers.push(("x-lampyr-idempotency-key", k));
    }
    request(
        "POST",
        &format!("{}/api/v1/functions/{name}/invoke", server.url),
        Some(body),
        &headers,
    )
}

/// The event behind `id`, once its state is one of `states`.
fn wait_state(server: &Server, id: &str, states: &[&str], limit: Duration) -> Value {
    let mut last = Value::Null;
    server.wait_until(&format!("event {id} in {states:?}"), limit, || {
        let r = server.api("GET", &format!("/invocations/{id}"), None);
        if r.status != 200 {
            return false;
        }
        last = r.json();
        last["state"].as_str().is_some_and(|s| states.contains(&s))
    });
    last
}

/// The event once its attempts' records are all written.
fn with_records(server: &Server, id: &str, n: usize) -> Value {
    let mut last = Value::Null;
    server.wait_until(
        &format!("{n} records of {id}"),
        Duration::from_secs(10),
        || {
            last = server
                .api("GET", &format!("/invocations/{id}"), None)
                .json();
            last["records"].as_array().is_some_and(|r| r.len() >= n)
        },
    );
    last
}

const SINK: &str = r#"
exports.handler = async (event) => {
  console.log("DEST " + JSON.stringify(event));
  return "ok";
};
"#;

/// Destination records the sink function logged.
fn destinations(server: &Server) -> Vec<Value> {
    server
        .logs("sink", "")
        .iter()
        .filter_map(|l| {
            l["message"]
                .as_str()?
                .strip_prefix("DEST ")
                .map(str::to_string)
        })
        .filter_map(|m| serde_json::from_str(&m).ok())
        .collect()
}

#[test]
fn events_run_later_are_retried_and_dead_lettered_and_redriven() {
    let (_cfg, path) = config_file("[async]\nretry_base = \"200ms\"\n");
    let server = Server::start_with(&["--config", &path]);
    server.deploy(Fixture::node("sink", "", SINK).path());
    server.deploy(
        Fixture::node(
            "works",
            "on_success = \"sink\"\n",
            "exports.handler = async (e) => ({ doubled: (e.n || 0) * 2 });",
        )
        .path(),
    );
    server.deploy(
        Fixture::node(
            "fails",
            "on_failure = \"sink\"\n",
            "exports.handler = async (e) => { throw new TypeError('no ' + e.n); };",
        )
        .path(),
    );

    // Called synchronously, the CLI reports the function's error object.
    let out = server.cli(&["invoke", "fails", "--data", r#"{"n": 1}"#]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("error: fails failed with TypeError: no 1"),
        "{said}"
    );

    // Through the HTTP trigger: 202 and the request id, run later.
    let r = request(
        "POST",
        &format!("{}/fn/works", server.url),
        Some(b"{}"),
        &[("x-lampyr-invocation-type", "event")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-lampyr-request-id"), Some(id.as_str()));
    let e = wait_state(&server, &id, &["succeeded"], Duration::from_secs(20));
    assert_eq!(e["attempts"], 1);
    let e = with_records(&server, &id, 1);
    assert_eq!(e["records"][0]["trigger"], "async");
    assert_eq!(e["records"][0]["attempt"], 1);

    // Through the API: the success destination gets the result.
    let r = queue(&server, "works", br#"{"n": 21}"#, None);
    assert_eq!(r.status, 202, "{}", r.text());
    let ok_id = r.json()["request_id"].as_str().unwrap().to_string();
    wait_state(&server, &ok_id, &["succeeded"], Duration::from_secs(20));

    // A failing function: tried 1 + retries times, then dead-lettered with
    // every attempt's error.
    let r = queue(&server, "fails", br#"{"n": 7}"#, None);
    let bad = r.json()["request_id"].as_str().unwrap().to_string();
    let e = wait_state(&server, &bad, &["dead_lettered"], Duration::from_secs(30));
    assert_eq!(e["attempts"], 3, "{e}");
    assert_eq!(e["dead_reason"], "RetriesExhausted");
    let errors = e["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{e}");
    for (i, err) in errors.iter().enumerate() {
        assert_eq!(err["attempt"], i + 1);
        assert_eq!(err["error_type"], "TypeError");
        assert_eq!(err["message"], "no 7");
    }
    let e = with_records(&server, &bad, 3);
    let attempts: Vec<u64> = e["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);

    // The dead-letter list, by API and CLI.
    let dlq = server.api("GET", "/functions/fails/dlq", None).json();
    assert_eq!(dlq["events"][0]["request_id"], bad.as_str());
    assert_eq!(dlq["events"][0]["payload"]["n"], 7);
    let out = server.cli(&["dlq", "fails"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&bad));
    let out = server.cli(&["dlq", "show", "fails", &bad]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("RetriesExhausted") && shown.contains("TypeError: no 7"),
        "{shown}"
    );

    // Both destinations got Lambda's records.
    server.wait_until("two destination records", Duration::from_secs(20), || {
        destinations(&server).len() >= 2
    });
    let d = destinations(&server);
    let success = d
        .iter()
        .find(|r| {
            r["requestContext"]["condition"] == "Success"
                && r["requestContext"]["requestId"] == ok_id.as_str()
        })
        .expect("a success record");
    assert_eq!(success["responsePayload"]["doubled"], 42);
    assert_eq!(success["requestPayload"]["n"], 21);
    let failure = d
        .iter()
        .find(|r| r["requestContext"]["condition"] == "RetriesExhausted")
        .expect("a failure record");
    assert_eq!(failure["requestContext"]["requestId"], bad.as_str());
    assert_eq!(failure["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(failure["responseContext"]["functionError"], "Unhandled");
    assert_eq!(failure["responsePayload"]["errorMessage"], "no 7");

    // Redrive: it runs again, three attempts more.
    let out = server.cli(&["dlq", "redrive", "fails", &bad]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = wait_state(
        &server,
        &bad,
        &["queued", "running", "retrying"],
        Duration::from_secs(10),
    );
    assert_ne!(e["state"], "dead_lettered");
    let e = wait_state(&server, &bad, &["dead_lettered"], Duration::from_secs(30));
    assert_eq!(e["attempts"], 3);
    assert_eq!(
        e["errors"].as_array().unwrap().len(),
        6,
        "the first run's errors are kept"
    );
    with_records(&server, &bad, 6);

    // Purge empties the list.
    let out = server.cli(&["dlq", "purge", "fails"]);
    assert!(out.status.success());
    let dlq = server.api("GET", "/functions/fails/dlq", None).json();
    assert_eq!(dlq["events"].as_array().unwrap().len(), 0);

    // The metrics count them.
    let m = request("GET", &format!("{}/metrics", server.url), None, &[]).text();
    assert!(
        m.contains("lampyr_async_events_total{function=\"fails\",outcome=\"dead_lettered\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("lampyr_async_events_total{function=\"fails\",outcome=\"retried\"} 4"),
        "{m}"
    );
}

#[test]
fn idempotency_keys_deduplicate_and_the_limits_say_what_to_do() {
    let (_cfg, path) = config_file("[async]\nmax_event_bytes = 1024\nmax_queue_depth = 2\n");
    let server = Server::start_with(&["--config", &path]);
    server.deploy(
        Fixture::node(
            "once",
            "",
            "let n = 0; exports.handler = async () => ({ n: ++n });",
        )
        .path(),
    );
    let a = queue(&server, "once", b"{}", Some("order-1"));
    let b = queue(&server, "once", b"{}", Some("order-1"));
    assert_eq!((a.status, b.status), (202, 202));
    let id = a.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(b.json()["request_id"], id.as_str());
    assert_eq!(b.json()["duplicate"], true);
    wait_state(&server, &id, &["succeeded"], Duration::from_secs(20));
    let c = queue(&server, "once", b"{}", Some("order-2"));
    let other = c.json()["request_id"].as_str().unwrap().to_string();
    assert_ne!(other, id);
    wait_state(&server, &other, &["succeeded"], Duration::from_secs(20));
    // The first key's event ran once.
    let e = with_records(&server, &id, 1);
    assert_eq!(e["records"].as_array().unwrap().len(), 1);

    // Too large: 413 naming the limit.
    let big = format!("{{\"x\": \"{}\"}}", "y".repeat(2000));
    let r = queue(&server, "once", big.as_bytes(), None);
    assert_eq!(r.status, 413, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "event_too_large");
    assert!(
        e["message"].as_str().unwrap().contains("max_event_bytes"),
        "{e}"
    );

    // A queue at its depth: 429 with what to do.
    server.deploy(
        Fixture::node(
            "slow",
            "max_instances = 1\n",
            "exports.handler = () => new Promise(r => setTimeout(() => r('done'), 1500));",
        )
        .path(),
    );
    let first = queue(&server, "slow", b"{}", None);
    let second = queue(&server, "slow", b"{}", None);
    assert_eq!((first.status, second.status), (202, 202));
    let third = queue(&server, "slow", b"{}", None);
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.json()["error"]["code"], "event_queue_full");
    assert!(third.header("retry-after").is_some());
    // An idempotency key without asking for an event is refused.
    let auth = format!("Bearer {}", server.token());
    let r = request(
        "POST",
        &format!("{}/api/v1/functions/once/invoke", server.url),
        Some(b"{}"),
        &[("authorization", &auth), ("x-lampyr-idempotency-key", "k")],
    );
    assert_eq!(r.status, 400);
    let r = request(
        "POST",
        &format!("{}/fn/once", server.url),
        Some(b"{}"),
        &[("x-lampyr-invocation-type", "sometime")],
    );
    assert_eq!(r.json()["error"]["code"], "invalid_invocation_type");
}

/// A witness on the host that the test functions call over loopback (they
/// run with `network = "host"`): `GET /run/ID` counts one run of the event
/// whose request id is ID and answers `{"run": N, "fail": F}` (N: which run
/// of it this is; F: whether the test wants runs to fail now). While the
/// gate is closed the answer waits. It lives in the test process, so what
/// it counted survives a SIGKILL of the server.
struct Ledger {
    port: u16,
    state: Arc<(Mutex<LedgerState>, Condvar)>,
}

#[derive(Default)]
struct LedgerState {
    runs: HashMap<String, u32>,
    total: u64,
    closed: bool,
    fail: bool,
}

impl Ledger {
    fn start() -> Ledger {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<LedgerState>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || Ledger::answer(conn, &st));
            }
        });
        Ledger { port, state }
    }

    fn answer(conn: TcpStream, st: &(Mutex<LedgerState>, Condvar)) {
        let mut reader = BufReader::new(&conn);
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        // The rest of the request's head.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
            line.clear();
        }
        let path = first.split_whitespace().nth(1).unwrap_or_default();
        let Some(id) = path.strip_prefix("/run/") else {
            let _ = (&conn).write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            return;
        };
        let (lock, cv) = st;
        let mut s = lock.lock().unwrap();
        let run = {
            let n = s.runs.entry(id.to_string()).or_default();
            *n += 1;
            *n
        };
        s.total += 1;
        cv.notify_all();
        while s.closed {
            s = cv.wait(s).unwrap();
        }
        let body = serde_json::json!({ "run": run, "fail": s.fail }).to_string();
        drop(s);
        let _ = (&conn).write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }

    fn with<T>(&self, f: impl FnOnce(&mut LedgerState) -> T) -> T {
        let mut s = self.state.0.lock().unwrap();
        let out = f(&mut s);
        self.state.1.notify_all();
        out
    }

    /// Runs of `id` counted so far.
    fn runs(&self, id: &str) -> u32 {
        self.with(|s| s.runs.get(id).copied().unwrap_or(0))
    }

    /// Runs of every event counted so far.
    fn total(&self) -> u64 {
        self.with(|s| s.total)
    }
}

/// The start of a Node.js handler that tells the ledger on `event.port`
/// that it runs: `const { run, fail } = await ledger(event, context);`.
const LEDGER_JS: &str = r#"
const http = require("http");
const ledger = (event, context) => new Promise((resolve, reject) => {
  http.get({ host: "127.0.0.1", port: event.port, path: "/run/" + context.awsRequestId, agent: false }, (res) => {
    let b = "";
    res.on("data", (c) => (b += c));
    res.on("end", () => resolve(JSON.parse(b)));
  }).on("error", reject);
});
"#;

/// A sample's value in the Prometheus text `m`: `name{labels} value`.
fn metric(m: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `text` that names `id`.
fn line_of<'a>(text: &'a str, id: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{text}"))
}

/// The CLI's side of asynchronous invocation, with the queue's metrics:
/// `lampyr invoke --async` prints the request id and the event runs;
/// `lampyr invocations NAME --events` shows what runs and what waits;
/// the gauges count the waiting events and their age; `lampyr invocations`
/// tells attempts apart; dead letters go back with `lampyr dlq redrive
/// --all` and the API's `{"all": true}`.
#[test]
fn the_cli_queues_follows_and_redrives_events_and_the_metrics_count_them() {
    let (_cfg, path) = config_file("[async]\nretry_base = \"100ms\"\n");
    let server = Server::start_with(&["--config", &path]);
    let ledger = Ledger::start();
    // One event at a time; each waits for the ledger, fails when it says so.
    let code = format!(
        "{LEDGER_JS}
exports.handler = async (event, context) => {{
  const {{ run, fail }} = await ledger(event, context);
  if (fail) throw new Error('refused ' + event.tag);
  return {{ tag: event.tag, run }};
}};"
    );
    server.deploy(
        Fixture::node(
            "gated",
            "network = \"host\"\nmax_instances = 1\nconcurrency = 1\nretries = 1\n",
            &code,
        )
        .path(),
    );
    let event = |tag: &str| format!("{{\"port\": {}, \"tag\": \"{tag}\"}}", ledger.port);
    let m = "function=\"gated\"";

    // `lampyr invoke --async`: the request id on stdout; the event runs
    // (and waits at the closed gate).
    ledger.with(|s| s.closed = true);
    let out = server.cli(&["invoke", "gated", "--async", "--data", &event("a")]);
    let a = stdout(&out).trim().to_string();
    assert!(!a.is_empty() && !a.contains(char::is_whitespace), "{a:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("lampyr invocations gated --events"), "{said}");
    server.wait_until("event a to run", Duration::from_secs(20), || {
        ledger.runs(&a) == 1
    });
    let queued: Vec<String> = ["b", "c"]
        .iter()
        .map(|t| {
            let r = queue(&server, "gated", event(t).as_bytes(), None);
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["request_id"].as_str().unwrap().to_string()
        })
        .collect();

    // `lampyr invocations --events`: a runs, b and c wait.
    let text = stdout(&server.cli(&["invocations", "gated", "--events"]));
    assert!(line_of(&text, &a).contains("running"), "{text}");
    for id in &queued {
        assert!(line_of(&text, id).contains("queued"), "{text}");
    }
    let text = stdout(&server.cli(&["invocations", "gated", "--events", "--state", "queued"]));
    assert!(!text.contains(&a), "{text}");
    assert!(queued.iter().all(|id| text.contains(id)), "{text}");

    // The gauges: three events not finished, the oldest growing older.
    let mut last = String::new();
    server.wait_until(
        "the oldest event's age to reach a second",
        Duration::from_secs(20),
        || {
            last = server.metrics();
            metric(&last, "lampyr_async_oldest_event_age_seconds", m).is_some_and(|v| v >= 1.0)
        },
    );
    assert_eq!(
        metric(&last, "lampyr_async_queue_depth", m),
        Some(3.0),
        "{last}"
    );
    assert_eq!(
        metric(
            &last,
            "lampyr_async_events_total",
            &format!("{m},outcome=\"accepted\"")
        ),
        Some(3.0),
        "{last}"
    );

    // Open the gate: all three succeed; nothing waits any more.
    ledger.with(|s| s.closed = false);
    for id in std::iter::once(&a).chain(&queued) {
        let e = wait_state(&server, id, &["succeeded"], Duration::from_secs(20));
        assert_eq!(e["attempts"], 1, "{e}");
        assert_eq!(ledger.runs(id), 1);
    }
    server.wait_until("the queue to empty", Duration::from_secs(10), || {
        let t = server.metrics();
        metric(&t, "lampyr_async_queue_depth", m).unwrap_or(0.0) == 0.0
            && metric(&t, "lampyr_async_oldest_event_age_seconds", m).is_none()
    });

    // Refused runs: retried once, then dead letters.
    ledger.with(|s| s.fail = true);
    let dead: Vec<String> = ["d", "e"]
        .iter()
        .map(|t| {
            queue(&server, "gated", event(t).as_bytes(), None).json()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &dead {
        let e = wait_state(&server, id, &["dead_lettered"], Duration::from_secs(20));
        assert_eq!(e["attempts"], 2, "{e}");
        assert_eq!(ledger.runs(id), 2);
    }
    // `lampyr invocations`: the trigger and the attempt tell the records
    // of one event apart.
    with_records(&server, &dead[0], 2);
    let text = stdout(&server.cli(&["invocations", "gated"]));
    let head = text.lines().next().unwrap_or_default();
    assert!(
        head.contains("TRIGGER") && head.contains("ATTEMPT"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.contains(&dead[0]))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut attempts: Vec<&str> = rows.iter().map(|r| r[3]).collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"], "{text}");
    assert!(rows.iter().all(|r| r[2] == "async"), "{text}");
    assert_eq!(line_of(&text, &a).split_whitespace().nth(2), Some("async"));

    // `lampyr dlq redrive --all`, once the runs no longer fail.
    ledger.with(|s| s.fail = false);
    let said = stdout(&server.cli(&["dlq", "redrive", "gated", "--all"]));
    assert!(
        said.contains("2 dead letter(s) of 'gated' queued again"),
        "{said}"
    );
    for id in &dead {
        let e = wait_state(&server, id, &["succeeded"], Duration::from_secs(20));
        assert_eq!(e["errors"].as_array().unwrap().len(), 2, "{e}");
        assert_eq!(ledger.runs(id), 3);
    }
    let dlq = server.api("GET", "/functions/gated/dlq", None).json();
    assert_eq!(dlq["events"].as_array().unwrap().len(), 0, "{dlq}");
    // Neither ids nor --all: the CLI says what it needs.
    let out = server.cli(&["dlq", "redrive", "gated"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));

    // The API's `{"all": true}`; ids and all at once are refused.
    ledger.with(|s| s.fail = true);
    let r = queue(&server, "gated", event("f").as_bytes(), None);
    let f = r.json()["request_id"].as_str().unwrap().to_string();
    wait_state(&server, &f, &["dead_lettered"], Duration::from_secs(20));
    ledger.with(|s| s.fail = false);
    let r = server.api(
        "POST",
        "/functions/gated/dlq/redrive",
        Some(format!(r#"{{"all": true, "request_ids": ["{f}"]}}"#).as_bytes()),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_body");
    let r = server.api(
        "POST",
        "/functions/gated/dlq/redrive",
        Some(br#"{"all": true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], 1);
    wait_state(&server, &f, &["succeeded"], Duration::from_secs(20));
    assert_eq!(ledger.runs(&f), 3);

    // The counters: six accepted (a redrive is no new event), each failed
    // run but the last of a try retried, three dead letters. (`/metrics`
    // renders at most once a second: read until it has the last success.)
    let mut t = String::new();
    server.wait_until(
        "the metrics to count six successes",
        Duration::from_secs(10),
        || {
            t = server.metrics();
            metric(
                &t,
                "lampyr_async_events_total",
                &format!("{m},outcome=\"succeeded\""),
            ) == Some(6.0)
        },
    );
    let count = |outcome: &str| {
        metric(
            &t,
            "lampyr_async_events_total",
            &format!("{m},outcome=\"{outcome}\""),
        )
    };
    assert_eq!(count("accepted"), Some(6.0), "{t}");
    assert_eq!(count("retried"), Some(3.0), "{t}");
    assert_eq!(count("dead_lettered"), Some(3.0), "{t}");
    assert_eq!(count("succeeded"), Some(6.0), "{t}");
}

/// Accepted events survive SIGKILL. Client threads keep queueing events
/// while the server is killed (with accepts in flight) and restarted on
/// the same data, a few times. Every event that got a 202 ends succeeded
/// or dead-lettered, and ran (as the ledger on the host counted, which
/// the kills do not touch) at least once per attempt and no more than its
/// attempts plus its crash rescues.
#[test]
fn no_accepted_event_is_lost_when_the_server_is_killed() {
    const CLIENTS: usize = 4;
    const KILLS: usize = 4;
    let data = tempfile::tempdir().unwrap();
    // The depth bounds what the clients get accepted (the rest is 429).
    let (_cfg, path) = config_file("[async]\nretry_base = \"100ms\"\nmax_queue_depth = 150\n");
    let extra = ["--config", path.as_str()];
    let mut server = Server::start_in(data.path(), &extra);
    let ledger = Ledger::start();
    // n % 4 == 0 fails for good; n % 4 == 1 fails its first run and
    // succeeds when retried (or rescued); the rest succeed, some after a
    // while, so that kills find events running.
    let code = format!(
        "{LEDGER_JS}
exports.handler = async (e, context) => {{
  const {{ run }} = await ledger(e, context);
  if (e.n % 4 === 0) throw new Error('fails ' + e.n);
  if (e.n % 4 === 1 && run === 1) throw new Error('fails its first run ' + e.n);
  await new Promise((r) => setTimeout(r, (e.n % 5) * 20));
  return {{ n: e.n, run }};
}};"
    );
    server.deploy(
        Fixture::node(
            "steady",
            "network = \"host\"\nconcurrency = 8\nmax_instances = 2\nretries = 2\n",
            &code,
        )
        .path(),
    );
    let retries = 2;
    let token = server.token();

    // Where the clients send: the live server's URL, None while it is
    // being killed and restarted.
    let target: Arc<(Mutex<Option<String>>, Condvar)> =
        Arc::new((Mutex::new(Some(server.url.clone())), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (target, stop, next, in_flight, accepted_count, cut, token) = (
                target.clone(),
                stop.clone(),
                next.clone(),
                in_flight.clone(),
                accepted_count.clone(),
                cut.clone(),
                token.clone(),
            );
            let port = ledger.port;
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                let mut accepted: Vec<(u64, String)> = Vec::new();
                loop {
                    let url = {
                        let (lock, cv) = &*target;
                        let mut t = lock.lock().unwrap();
                        while t.is_none() && !stop.load(Ordering::SeqCst) {
                            t = cv.wait(t).unwrap();
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        t.clone().unwrap()
                    };
                    let n = next.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = format!("{{\"n\": {n}, \"port\": {port}}}");
                    let r = try_request(
                        "POST",
                        &format!("{url}/api/v1/functions/steady/invoke"),
                        Some(body.as_bytes()),
                        &[
                            ("authorization", auth.as_str()),
                            ("x-lampyr-invocation-type", "event"),
                        ],
                    );
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    match r {
                        Ok(r) if r.status == 202 => {
                            let id = r.header("x-lampyr-request-id").unwrap().to_string();
                            accepted.push((n, id));
                            accepted_count.fetch_add(1, Ordering::SeqCst);
                        }
                        // Refused (the queue at its depth): not accepted.
                        Ok(_) => {}
                        // No answer: the server died under it.
                        Err(_) => {
                            cut.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                accepted
            })
        })
        .collect();

    for round in 0..KILLS {
        // Mid-stream: accepts in flight, events queued, running and
        // waiting for their retries.
        let (accepts, runs) = (accepted_count.load(Ordering::SeqCst), ledger.total());
        common::wait_until(
            &format!("accepts and runs before kill {}", round + 1),
            Duration::from_secs(30),
            &mut || {
                accepted_count.load(Ordering::SeqCst) >= accepts + 40
                    && ledger.total() >= runs + 10
                    && in_flight.load(Ordering::SeqCst) > 0
            },
        );
        *target.0.lock().unwrap() = None;
        server.kill();
        server = Server::start_in(data.path(), &extra);
        *target.0.lock().unwrap() = Some(server.url.clone());
        target.1.notify_all();
    }
    // Accepts after the last restart, then the clients stop.
    let accepts = accepted_count.load(Ordering::SeqCst);
    common::wait_until(
        "accepts after the last restart",
        Duration::from_secs(30),
        &mut || accepted_count.load(Ordering::SeqCst) >= accepts + 40,
    );
    stop.store(true, Ordering::SeqCst);
    target.1.notify_all();
    let accepted: Vec<(u64, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let cut = cut.load(Ordering::SeqCst);
    assert!(cut > 0, "no kill found an accept in flight");

    // Every accepted event ends.
    let mut states: HashMap<String, Value> = HashMap::new();
    server.wait_until(
        "every accepted event to end",
        Duration::from_secs(60),
        || {
            for (_, id) in &accepted {
                if states.contains_key(id) {
                    continue;
                }
                let r = server.api("GET", &format!("/invocations/{id}"), None);
                assert_ne!(r.status, 404, "accepted event {id} is lost");
                if r.status != 200 {
                    return false;
                }
                let v = r.json();
                if matches!(v["state"].as_str(), Some("succeeded" | "dead_lettered")) {
                    states.insert(id.clone(), v);
                } else {
                    return false;
                }
            }
            true
        },
    );
    let mut rescued = 0;
    for (n, id) in &accepted {
        let e = &states[id];
        let attempts = e["attempts"].as_u64().unwrap();
        let rescues = e["rescues"].as_u64().unwrap();
        rescued += rescues;
        let runs = u64::from(ledger.runs(id));
        if n % 4 == 0 {
            assert_eq!(e["state"], "dead_lettered", "event {n}: {e}");
            assert_eq!(e["dead_reason"], "RetriesExhausted", "event {n}: {e}");
            assert_eq!(attempts, 1 + retries, "event {n}: {e}");
        } else {
            assert_eq!(e["state"], "succeeded", "event {n}: {e}");
        }
        if n % 4 == 1 {
            assert!(runs >= 2, "event {n} succeeded after {runs} run(s): {e}");
        }
        assert!(
            runs >= attempts,
            "event {n} ran {runs} times for {attempts} attempts: {e}"
        );
        assert!(
            runs <= attempts + rescues && runs <= 1 + retries + rescues,
            "event {n} ran {runs} times with {attempts} attempts and {rescues} rescues: {e}"
        );
    }
    eprintln!(
        "{} events accepted across {KILLS} kills ({cut} accepts cut), {} runs, {rescued} crash rescues",
        accepted.len(),
        ledger.total()
    );
}
