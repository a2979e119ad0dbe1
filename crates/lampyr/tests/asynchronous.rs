//! Asynchronous invocation, on the real server and runtimes: 202 and a run
//! later, retries, dead letters, redrive, destinations, idempotency keys,
//! the limits, and that no accepted event is lost when the server is
//! killed.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{config_file, request, Fixture, Resp, Server};
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

/// Accepted events survive SIGKILL: under a stream of accepts and retries
/// the server is killed and restarted; every event that got a 202 ends
/// succeeded or dead-lettered, none runs more than its attempts plus its
/// crash rescues.
#[test]
fn no_accepted_event_is_lost_when_the_server_is_killed() {
    let data = tempfile::tempdir().unwrap();
    let (_cfg, path) = config_file("[async]\nretry_base = \"100ms\"\n");
    let extra = ["--config", path.as_str()];
    let mut server = Server::start_in(data.path(), &extra);
    // Every third event fails for good; the rest succeed, some after a
    // while (so that kills find events running).
    server.deploy(
        Fixture::node(
            "steady",
            "concurrency = 8\nmax_instances = 2\n",
            r#"exports.handler = async (e) => {
                 if (e.n % 3 === 0) throw new Error("fails " + e.n);
                 await new Promise(r => setTimeout(r, e.n % 5 * 20));
                 return { n: e.n };
               };"#,
        )
        .path(),
    );
    let mut accepted: Vec<(u64, String)> = Vec::new();
    let mut n = 0u64;
    for round in 0..3 {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            n += 1;
            let r = queue(
                &server,
                "steady",
                format!("{{\"n\": {n}}}").as_bytes(),
                None,
            );
            if r.status == 202 {
                accepted.push((n, r.json()["request_id"].as_str().unwrap().to_string()));
            }
        }
        // Mid-stream: events queued, running and waiting for retries.
        server.kill();
        server = Server::start_in(data.path(), &extra);
        let _ = round;
    }
    assert!(
        accepted.len() > 50,
        "only {} events were accepted",
        accepted.len()
    );
    // Every accepted event ends.
    let mut states: HashMap<String, Value> = HashMap::new();
    server.wait_until(
        "every accepted event to end",
        Duration::from_secs(120),
        || {
            for (_, id) in &accepted {
                if states.contains_key(id) {
                    continue;
                }
                let r = server.api("GET", &format!("/invocations/{id}"), None);
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
        let want = if n % 3 == 0 {
            "dead_lettered"
        } else {
            "succeeded"
        };
        assert_eq!(e["state"], want, "event {n}: {e}");
        let attempts = e["attempts"].as_u64().unwrap();
        let rescues = e["rescues"].as_u64().unwrap();
        rescued += rescues;
        if n % 3 == 0 {
            assert_eq!(
                attempts, 3,
                "event {n} failed for good after its attempts: {e}"
            );
        } else {
            assert_eq!(attempts, 1, "event {n}: {e}");
        }
        // Runs, from the records: no more than its attempts and rescues.
        let runs = e["records"].as_array().map_or(0, |r| r.len()) as u64;
        assert!(
            runs <= attempts + rescues,
            "event {n} ran {runs} times with {attempts} attempts and {rescues} rescues: {e}"
        );
        let numbers: HashSet<u64> = e["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["attempt"].as_u64())
            .collect();
        assert!(numbers.iter().all(|a| *a <= 3), "event {n}: {e}");
    }
    eprintln!(
        "{} events accepted across 3 kills, {rescued} crash rescues",
        accepted.len()
    );
}
