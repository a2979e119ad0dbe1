//! The NATS JetStream trigger against a real `nats-server -js` that each
//! test starts on loopback: the event's shape, batches and partial batch
//! failures, retries with backoff ending on the dead-letter subject, in-
//! progress acks for a slow function, a broker that is down at deploy, and
//! a SIGKILL of the server while messages flow.
//!
//! The functions tell a witness in the test process what they received
//! (it survives a SIGKILL of the server) and it answers how they should
//! behave.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::nats::{free_port, NatsServer};
use common::{request, Fixture, Server};
use serde_json::{json, Value};

/// One record a function received.
#[derive(Clone, Debug)]
struct Seen {
    seq: u64,
    delivery: u64,
    at: Instant,
    /// Which batch (invocation) it came in, counting from 0.
    batch: usize,
    record: Value,
}

/// How the functions behave, as the test says.
#[derive(Default, Clone)]
struct Policy {
    /// Every invocation throws.
    throw_all: bool,
    /// These sequences are reported in `batchItemFailures` on their first
    /// delivery.
    fail_first: HashSet<u64>,
    sleep_ms: u64,
}

#[derive(Default)]
struct WitnessState {
    seen: Vec<Seen>,
    batches: usize,
    policy: Policy,
}

/// The functions' witness: `POST /batch` with the event records what came
/// and answers `{"throw", "fail": [SEQ], "sleep_ms"}`.
struct Witness {
    port: u16,
    state: Arc<Mutex<WitnessState>>,
}

impl Witness {
    fn start(policy: Policy) -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(WitnessState {
            policy,
            ..Default::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || Witness::answer(conn, &st));
            }
        });
        Witness { port, state }
    }

    fn answer(conn: TcpStream, st: &Mutex<WitnessState>) {
        let mut reader = BufReader::new(&conn);
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let at = Instant::now();
        let reply = {
            let mut s = st.lock().unwrap();
            let batch = s.batches;
            s.batches += 1;
            let mut fail = Vec::new();
            for r in event["Records"].as_array().cloned().unwrap_or_default() {
                let seq = r["streamSequence"].as_u64().unwrap_or(0);
                let delivery = r["deliveryCount"].as_u64().unwrap_or(0);
                if delivery == 1 && s.policy.fail_first.contains(&seq) {
                    fail.push(seq);
                }
                s.seen.push(Seen {
                    seq,
                    delivery,
                    at,
                    batch,
                    record: r,
                });
            }
            json!({ "throw": s.policy.throw_all, "fail": fail, "sleep_ms": s.policy.sleep_ms })
                .to_string()
        };
        let _ = (&conn).write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .as_bytes(),
        );
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Deliveries of each sequence.
    fn deliveries(&self) -> HashMap<u64, Vec<Seen>> {
        let mut m: HashMap<u64, Vec<Seen>> = HashMap::new();
        for s in self.seen() {
            m.entry(s.seq).or_default().push(s);
        }
        m
    }
}

/// A function that reports every event to the witness and does what it
/// answers.
fn function(name: &str, witness: &Witness, manifest: &str) -> Fixture {
    let code = format!(
        r#"
const http = require("http");
const post = (body) => new Promise((resolve, reject) => {{
  const req = http.request({{ host: "127.0.0.1", port: {port}, path: "/batch", method: "POST", agent: false,
    headers: {{ "content-type": "application/json", "content-length": Buffer.byteLength(body) }} }}, (res) => {{
    let b = "";
    res.on("data", (c) => (b += c));
    res.on("end", () => resolve(JSON.parse(b)));
  }});
  req.on("error", reject);
  req.end(body);
}});
exports.handler = async (event) => {{
  const reply = await post(JSON.stringify(event));
  if (reply.sleep_ms) await new Promise((r) => setTimeout(r, reply.sleep_ms));
  if (reply.throw) throw new Error("refused by the test");
  if (reply.fail.length) return {{ batchItemFailures: reply.fail.map((s) => ({{ itemIdentifier: String(s) }})) }};
  return {{ ok: event.Records.length }};
}};
"#,
        port = witness.port
    );
    Fixture::node(name, &format!("network = \"host\"\n{manifest}"), &code)
}

fn nats_trigger(nats: &NatsServer, extra: &str) -> String {
    format!(
        "[[triggers]]\ntype = \"nats\"\nservers = [\"{}\"]\nstream = \"ORDERS\"\n{extra}",
        nats.url()
    )
}

const LIMIT: Duration = Duration::from_secs(90);

fn info_json(server: &Server, name: &str) -> Value {
    let out = server.cli(&["info", name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn source_state(server: &Server, name: &str) -> String {
    info_json(server, name)["sources"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until `name`'s first source is retrying; its `lampyr info --json`
/// and last error.
fn retrying(server: &Server, name: &str) -> (Value, String) {
    server.wait_until("the source retries", LIMIT, || {
        source_state(server, name) == "retrying"
    });
    let info = info_json(server, name);
    let err = info["sources"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (info, err)
}

/// Messages reach the function as `{"Records": [...]}` with every field
/// the README documents; the invocations are recorded as `nats`; `lampyr
/// info`, the API and `/metrics` show the source connected, and the
/// trigger's token never shows.
#[test]
fn messages_reach_the_function_in_the_documented_shape() {
    const TOKEN: &str = "t0ken-not-to-be-shown";
    let nats = NatsServer::start_with_token(TOKEN);
    nats.stream("ORDERS", &["orders.>"]);
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let f = function(
        "shape",
        &witness,
        &nats_trigger(
            &nats,
            &format!("subject = \"orders.created\"\ntoken = \"{TOKEN}\"\n"),
        ),
    );
    server.deploy(f.path());
    server.wait_until("the source connects", LIMIT, || {
        source_state(&server, "shape") == "connected"
    });
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(nats.publish(
            "orders.created",
            &[("X-Order", &i.to_string())],
            format!("order {i}").as_bytes(),
        ));
    }
    // Not matched by the filter: never delivered.
    nats.publish("orders.deleted", &[], b"other");
    server.wait_until("three deliveries", LIMIT, || witness.seen().len() >= 3);
    server.wait_until("the acks", LIMIT, || {
        nats.consumer("ORDERS", "lampyr-shape-nats") == (0, 0, 3)
    });
    let seen = witness.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (i, s) in seen.iter().enumerate() {
        let r = &s.record;
        assert_eq!(r["eventSource"], "lampyr:nats");
        assert_eq!(r["subject"], "orders.created");
        assert_eq!(r["stream"], "ORDERS");
        assert_eq!(r["streamSequence"], seqs[i]);
        assert_eq!(r["deliveryCount"], 1);
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, format!("order {i}").as_bytes());
        assert_eq!(r["headers"]["X-Order"], json!([i.to_string()]), "{r}");
        let at = r["publishedAt"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    }
    // Records carry the trigger kind (they are written in batches, a
    // moment after the invocations).
    server.wait_until("the invocation records", LIMIT, || {
        server
            .api("GET", "/functions/shape/invocations", None)
            .json()["invocations"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let inv = server
        .api("GET", "/functions/shape/invocations", None)
        .json();
    let recs = inv["invocations"].as_array().cloned().unwrap_or_default();
    assert!(recs.iter().all(|r| r["trigger"] == "nats"), "{inv}");
    // The source as the API, the CLI and /metrics show it.
    server.wait_until("the lag and the count", LIMIT, || {
        let s = &info_json(&server, "shape")["sources"][0];
        s["delivered"] == 3 && s["lag"] == 0
    });
    let info = info_json(&server, "shape");
    let src = &info["sources"][0];
    assert_eq!(src["trigger"], "nats");
    assert_eq!(src["kind"], "nats");
    assert_eq!(src["detail"]["consumer"], "lampyr-shape-nats");
    assert!(!info.to_string().contains(TOKEN), "{info}");
    let api = server.api("GET", "/functions/shape", None).text();
    assert!(!api.contains(TOKEN), "{api}");
    let out = server.cli(&["info", "shape"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source nats (nats): connected, lag 0 messages, 3 delivered"),
        "{text}"
    );
    let m = server.metrics();
    assert!(
        m.contains("lampyr_source_state{function=\"shape\",trigger=\"nats\",kind=\"nats\",state=\"connected\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("lampyr_source_delivered{function=\"shape\",trigger=\"nats\",kind=\"nats\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("lampyr_source_lag{function=\"shape\",trigger=\"nats\",kind=\"nats\",unit=\"messages\"} 0"),
        "{m}"
    );
}

/// With `batch_size = 10`, ten waiting messages come in one invocation;
/// the two it names in `batchItemFailures` come again (delivery 2), the
/// others never.
#[test]
fn a_batch_with_partial_failures_retries_only_the_failed_messages() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let seqs: Vec<u64> = (0..10)
        .map(|i| nats.publish("orders.new", &[], format!("{i}").as_bytes()))
        .collect();
    let server = Server::start();
    let witness = Witness::start(Policy {
        fail_first: HashSet::from([seqs[3], seqs[7]]),
        ..Default::default()
    });
    let f = function(
        "batches",
        &witness,
        &nats_trigger(&nats, "batch_size = 10\nretry_backoff = \"100ms\"\n"),
    );
    server.deploy(f.path());
    server.wait_until("the retries", LIMIT, || witness.seen().len() >= 12);
    server.wait_until("the acks", LIMIT, || {
        let (pending, ack_pending, _) = nats.consumer("ORDERS", "lampyr-batches-nats");
        pending == 0 && ack_pending == 0
    });
    let seen = witness.seen();
    let first: Vec<u64> = seen
        .iter()
        .filter(|s| s.batch == 0)
        .map(|s| s.seq)
        .collect();
    assert_eq!(first, seqs, "the first invocation had the whole batch");
    let d = witness.deliveries();
    for (i, seq) in seqs.iter().enumerate() {
        let n: Vec<u64> = d[seq].iter().map(|s| s.delivery).collect();
        if i == 3 || i == 7 {
            assert_eq!(n, [1, 2], "message {i}");
        } else {
            assert_eq!(n, [1], "message {i}");
        }
    }
}

/// A function that always fails: each message is delivered
/// `max_retries + 1` times, no sooner than its backoff, then published to
/// the dead-letter subject (with why) and never delivered again.
#[test]
fn failures_retry_with_backoff_then_go_to_the_dead_letter_subject() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    nats.stream("DEAD", &["dead.>"]);
    let server = Server::start();
    let witness = Witness::start(Policy {
        throw_all: true,
        ..Default::default()
    });
    let f = function(
        "failing",
        &witness,
        &nats_trigger(
            &nats,
            "max_retries = 2\nretry_backoff = [\"300ms\", \"600ms\"]\ndead_letter_subject = \"dead.orders\"\n",
        ),
    );
    server.deploy(f.path());
    let a = nats.publish("orders.new", &[("X-Tag", "a")], b"first");
    let b = nats.publish("orders.new", &[], b"second");
    server.wait_until("two dead letters", LIMIT, || {
        nats.messages("DEAD").len() == 2
    });
    server.wait_until("nothing left to deliver", LIMIT, || {
        let (pending, ack_pending, _) = nats.consumer("ORDERS", "lampyr-failing-nats");
        pending == 0 && ack_pending == 0
    });
    let d = witness.deliveries();
    for seq in [a, b] {
        let runs = &d[&seq];
        let counts: Vec<u64> = runs.iter().map(|s| s.delivery).collect();
        assert_eq!(counts, [1, 2, 3], "message {seq}");
        assert!(runs[1].at - runs[0].at >= Duration::from_millis(300));
        assert!(runs[2].at - runs[1].at >= Duration::from_millis(600));
    }
    let dead = nats.messages("DEAD");
    let (subject, headers, payload) = &dead[0];
    assert_eq!(subject, "dead.orders");
    assert_eq!(payload, b"first");
    let h = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {headers:?}"))
    };
    assert_eq!(h("X-Tag"), "a");
    assert_eq!(h("Lampyr-Function"), "failing");
    assert_eq!(h("Lampyr-Original-Subject"), "orders.new");
    assert_eq!(h("Lampyr-Stream-Sequence"), a.to_string());
    assert_eq!(h("Lampyr-Deliveries"), "3");
    assert!(
        h("Lampyr-Error").contains("refused by the test"),
        "{headers:?}"
    );
    assert_eq!(dead[1].2, b"second");
    // The runs were recorded as failed nats invocations.
    let invocations = || {
        let inv = server
            .api("GET", "/functions/failing/invocations", None)
            .json();
        inv["invocations"].as_array().cloned().unwrap_or_default()
    };
    server.wait_until("six records", LIMIT, || invocations().len() >= 6);
    let recs = invocations();
    assert_eq!(recs.len(), 6, "{recs:?}");
    let inv = json!(recs);
    assert!(recs.iter().all(|r| r["trigger"] == "nats"), "{inv}");
}

/// A function that runs longer than the consumer's `ack_wait` (half its
/// timeout): in-progress acks keep the broker from handing the message to
/// another worker meanwhile.
#[test]
fn a_slow_function_is_not_redelivered() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let server = Server::start();
    // timeout 4 s: ack_wait 2 s; the function takes 3 s.
    let witness = Witness::start(Policy {
        sleep_ms: 3000,
        ..Default::default()
    });
    let f = function(
        "slow",
        &witness,
        &format!(
            "timeout = \"4s\"\n{}",
            nats_trigger(&nats, "concurrency = 2\n")
        ),
    );
    server.deploy(f.path());
    nats.publish("orders.new", &[], b"slow");
    server.wait_until("the delivery", LIMIT, || !witness.seen().is_empty());
    server.wait_until("the ack", LIMIT, || {
        let (pending, ack_pending, _) = nats.consumer("ORDERS", "lampyr-slow-nats");
        pending == 0 && ack_pending == 0
    });
    // One delivery by the broker's own count: no redelivery.
    let (_, _, deliveries) = nats.consumer("ORDERS", "lampyr-slow-nats");
    assert_eq!(deliveries, 1);
    let seen = witness.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// A broker that is down when the function is deployed: the source says
/// `retrying` with why (the CLI, the API, /metrics), the server serves on,
/// and once the broker is up the source connects and delivers.
#[test]
fn a_source_that_is_down_retries_and_connects_when_it_comes_up() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let f = function(
        "later",
        &witness,
        &format!("[[triggers]]\ntype = \"nats\"\nservers = [\"{url}\"]\nstream = \"ORDERS\"\n"),
    );
    server.deploy(f.path());
    server.wait_until("the source retries", LIMIT, || {
        let s = &info_json(&server, "later")["sources"][0];
        s["state"] == "retrying" && s["last_error"].is_string()
    });
    let info = info_json(&server, "later");
    let err = info["sources"][0]["last_error"].as_str().unwrap();
    assert!(err.contains(&url), "{err}");
    let out = server.cli(&["info", "later"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source nats (nats): retrying") && text.contains("last error: "),
        "{text}"
    );
    assert!(server.metrics().contains(
        "lampyr_source_state{function=\"later\",trigger=\"nats\",kind=\"nats\",state=\"retrying\"} 1"
    ));
    assert_eq!(
        request("GET", &format!("{}/healthz", server.url), None, &[]).status,
        200
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("NATS trigger not consuming") && l.contains(&url)),
        "the log says why"
    );
    let nats = NatsServer::start_on(port, None);
    nats.stream("ORDERS", &["orders.>"]);
    server.wait_until("the source connects", LIMIT, || {
        source_state(&server, "later") == "connected"
    });
    nats.publish("orders.new", &[], b"hello");
    server.wait_until("the delivery", LIMIT, || witness.seen().len() == 1);
}

/// SIGKILL of `lampyr serve` while messages flow, and a restart: every
/// message is processed at least once, and the only duplicates are
/// messages that were in flight at the kill (first delivered before it,
/// delivered again by the broker: delivery count 2 or more), at most
/// `concurrency × batch_size` of them.
#[test]
fn sigkill_while_messages_flow_loses_nothing() {
    const N: usize = 300;
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let witness = Witness::start(Policy::default());
    let f = function(
        "steady",
        &witness,
        &format!(
            "timeout = \"4s\"\n{}",
            nats_trigger(&nats, "batch_size = 5\nconcurrency = 2\n")
        ),
    );
    server.deploy(f.path());
    let nats = Arc::new(nats);
    let publisher = {
        let nats = nats.clone();
        std::thread::spawn(move || {
            (0..N)
                .map(|i| nats.publish("orders.new", &[], format!("{i}").as_bytes()))
                .collect::<Vec<u64>>()
        })
    };
    server.wait_until("deliveries before the kill", LIMIT, || {
        witness.seen().len() >= 40
    });
    server.kill();
    let killed_at = Instant::now();
    let before: HashSet<u64> = witness
        .seen()
        .iter()
        .filter(|s| s.at < killed_at)
        .map(|s| s.seq)
        .collect();
    let server = Server::start_in(data.path(), &[]);
    let seqs = publisher.join().unwrap();
    server.wait_until("every message processed", Duration::from_secs(180), || {
        let d = witness.deliveries();
        seqs.iter().all(|s| d.contains_key(s))
    });
    server.wait_until("nothing left to deliver", LIMIT, || {
        let (pending, ack_pending, _) = nats.consumer("ORDERS", "lampyr-steady-nats");
        pending == 0 && ack_pending == 0
    });
    let d = witness.deliveries();
    let mut duplicates = 0;
    for (seq, runs) in &d {
        if runs.len() > 1 {
            duplicates += runs.len() - 1;
            assert!(
                before.contains(seq),
                "message {seq} was delivered again but was not in flight at the kill: {runs:?}"
            );
            assert!(
                runs[1..].iter().all(|r| r.delivery >= 2),
                "message {seq}: a duplicate that the broker did not count as a redelivery: {runs:?}"
            );
        }
    }
    eprintln!(
        "{} of {N} messages seen before the kill; {duplicates} delivered again after it",
        before.len()
    );
    assert!(
        duplicates <= 10,
        "{duplicates} duplicates, more than were in flight"
    );
    drop(server);
}

/// A deploy that changes the trigger replaces its source (the durable
/// consumer carries on where it was); a deploy without it, or a delete,
/// stops it and deletes the consumer lampyr created from the broker (it
/// would keep messages for nobody); a consumer the manifest named is kept.
#[test]
fn deploys_and_deletes_replace_and_stop_sources() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let f = function("moving", &witness, &nats_trigger(&nats, ""));
    server.deploy(f.path());
    nats.publish("orders.new", &[], b"one");
    server.wait_until("the first delivery", LIMIT, || witness.seen().len() == 1);
    // A new setting: a new source on the same consumer.
    let f = function("moving", &witness, &nats_trigger(&nats, "batch_size = 5\n"));
    server.deploy(f.path());
    nats.publish("orders.new", &[], b"two");
    server.wait_until("the second delivery", LIMIT, || witness.seen().len() == 2);
    let seqs: Vec<u64> = witness.seen().iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert!(nats.has_consumer("ORDERS", "lampyr-moving-nats"));
    // Another trigger beside it, on a consumer the manifest names.
    let both = format!(
        "{}{}",
        nats_trigger(&nats, ""),
        nats_trigger(&nats, "name = \"named\"\ndurable = \"mine\"\n")
    );
    let f = function("moving", &witness, &both);
    server.deploy(f.path());
    server.wait_until("the named consumer", LIMIT, || {
        nats.has_consumer("ORDERS", "mine")
    });
    // Without the triggers: stopped, no longer shown, lampyr's consumer
    // deleted, the named one kept.
    let f = function("moving", &witness, "triggers = []\n");
    server.deploy(f.path());
    server.wait_until("no source", LIMIT, || {
        info_json(&server, "moving")["sources"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    });
    server.wait_until("lampyr's consumer deleted", LIMIT, || {
        !nats.has_consumer("ORDERS", "lampyr-moving-nats")
    });
    assert!(nats.has_consumer("ORDERS", "mine"));
    let log = server.log().join("\n");
    assert!(
        log.contains("NATS consumer of a removed trigger deleted")
            && log.contains("lampyr-moving-nats"),
        "{log}"
    );
    nats.delete_consumer("ORDERS", "mine");
    // Back, then the function deleted: its consumer goes with it.
    let f = function("moving", &witness, &nats_trigger(&nats, ""));
    server.deploy(f.path());
    server.wait_until("the consumer again", LIMIT, || {
        nats.has_consumer("ORDERS", "lampyr-moving-nats")
    });
    let r = server.api("DELETE", "/functions/moving", None);
    assert!(r.status < 300, "{}", r.text());
    server.wait_until("the consumer deleted with its function", LIMIT, || {
        !nats.has_consumer("ORDERS", "lampyr-moving-nats")
    });
}

#[test]
fn a_trigger_that_names_an_alias_calls_the_alias_version() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let f = function(
        "aliased",
        &witness,
        &nats_trigger(&nats, "alias = \"live\"\n"),
    );
    let deploy = |query: &str| {
        let pkg = lampyr_store::pack_dir(f.path()).unwrap();
        let r = server.api("PUT", &format!("/functions/aliased{query}"), Some(&pkg));
        assert_eq!(r.status, 200, "{}", r.text());
    };
    deploy("?alias=live");
    // Version 2: the alias still points at 1, and so do the batches.
    f.write("version.txt", "2");
    deploy("");
    nats.publish("orders.new", &[], b"one");
    server.wait_until("the delivery", LIMIT, || witness.seen().len() == 1);
    let mut recs = Vec::new();
    server.wait_until("its record", LIMIT, || {
        let r = server.api("GET", "/functions/aliased/invocations?limit=10", None);
        recs = r.json()["invocations"].as_array().unwrap().clone();
        recs.iter().any(|i| i["trigger"] == "nats")
    });
    let nats_recs: Vec<_> = recs.iter().filter(|i| i["trigger"] == "nats").collect();
    assert!(nats_recs.iter().all(|i| i["version"] == 1), "{nats_recs:?}");
}

/// SIGTERM while a batch runs: the server stops fetching, the running
/// invocation finishes and its message is acked, not redelivered.
#[test]
fn shutdown_lets_running_batches_finish_and_ack() {
    let nats = NatsServer::start();
    nats.stream("ORDERS", &["orders.>"]);
    let mut server = Server::start();
    let witness = Witness::start(Policy {
        sleep_ms: 1500,
        ..Default::default()
    });
    let f = function("draining", &witness, &nats_trigger(&nats, ""));
    server.deploy(f.path());
    nats.publish("orders.new", &[], b"one");
    server.wait_until("the delivery", LIMIT, || witness.seen().len() == 1);
    assert!(server.stop().success());
    assert_eq!(nats.consumer("ORDERS", "lampyr-draining-nats"), (0, 0, 1));
}

/// User and password: the right ones connect; a wrong password leaves the
/// source retrying with the server's reason, and neither password shows
/// in the CLI, the API or the log.
#[test]
fn user_and_password_connect_and_a_wrong_one_is_reported_without_it() {
    let nats = NatsServer::start_with_user("app", "right-pass-1");
    nats.stream("ORDERS", &["orders.>"]);
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let good = function(
        "userpass",
        &witness,
        &nats_trigger(&nats, "user = \"app\"\npassword = \"right-pass-1\"\n"),
    );
    server.deploy(good.path());
    nats.publish("orders.new", &[], b"hi");
    server.wait_until("the delivery", LIMIT, || witness.seen().len() == 1);
    let bad = function(
        "wrongpass",
        &witness,
        &nats_trigger(&nats, "user = \"app\"\npassword = \"wrong-pass-2\"\n"),
    );
    server.deploy(bad.path());
    let (info, err) = retrying(&server, "wrongpass");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    let shown = format!(
        "{info}{}{}",
        server.api("GET", "/functions/userpass", None).text(),
        server.log().join("\n")
    );
    assert!(
        !shown.contains("right-pass-1") && !shown.contains("wrong-pass-2"),
        "{shown}"
    );
}

/// An S3 notification as MinIO publishes it to NATS, for a storage
/// trigger reading JetStream stream `MINIO`.
fn minio_put(key: &str) -> Vec<u8> {
    json!({"EventName": "s3:ObjectCreated:Put", "Key": format!("photos/{key}"), "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {"bucket": {"name": "photos"}, "object": {"key": key, "eTag": "e1", "sequencer": "17"}}}]})
    .to_string()
    .into_bytes()
}

/// A server that admits only an nkey user made in the test: a NATS
/// trigger with `nkey_file` and a storage trigger reading JetStream with
/// `nats_nkey_file` connect and deliver; another user's seed leaves the
/// source retrying with the server's reason; no seed shows in the API,
/// `lampyr info` or the log.
#[test]
fn nkey_users_connect_and_a_wrong_seed_is_reported() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let nats = NatsServer::start_with_nkey(&user.public_key(), &seed);
    nats.stream("ORDERS", &["orders.>"]);
    nats.stream("MINIO", &["minio.events"]);
    let dir = tempfile::tempdir().unwrap();
    let right = dir.path().join("user.nk");
    std::fs::write(&right, format!("{seed}\n")).unwrap();
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let wrong = dir.path().join("stranger.nk");
    std::fs::write(&wrong, &stranger).unwrap();
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let queue = nats_trigger(&nats, &format!("nkey_file = \"{}\"\n", right.display()));
    let storage = format!(
        "[[triggers]]\ntype = \"storage\"\nnats_servers = [\"{}\"]\nnats_subject = \"minio.events\"\nnats_stream = \"MINIO\"\nnats_nkey_file = \"{}\"\n",
        nats.url(),
        right.display()
    );
    server.deploy(function("nkeyed", &witness, &format!("{queue}{storage}")).path());
    nats.publish("orders.new", &[], b"hi");
    nats.publish("minio.events", &[], &minio_put("a.jpg"));
    server.wait_until("both deliveries", LIMIT, || {
        let seen = witness.seen();
        seen.iter()
            .any(|s| s.record["eventSource"] == "lampyr:nats")
            && seen.iter().any(|s| s.record["eventSource"] == "minio:s3")
    });
    let info = info_json(&server, "nkeyed");
    for s in info["sources"].as_array().unwrap() {
        assert_eq!(s["state"], "connected", "{info}");
    }

    let bad = function(
        "wrongseed",
        &witness,
        &nats_trigger(&nats, &format!("nkey_file = \"{}\"\n", wrong.display())),
    );
    server.deploy(bad.path());
    let (info, err) = retrying(&server, "wrongseed");
    assert!(
        err.to_lowercase().contains("authorization") && err.contains(&nats.url()),
        "{err}"
    );
    let shown = format!(
        "{info}{}{}",
        server.api("GET", "/functions/nkeyed", None).text(),
        server.log().join("\n")
    );
    assert!(
        !shown.contains(&seed) && !shown.contains(&stranger),
        "{shown}"
    );
}

/// A decentralised (JWT) server, as `nsc` sets one up (the operator,
/// account and user JWTs made here with nkeys): a NATS trigger with
/// `creds_file` connects and delivers; creds whose JWT the server does
/// not know are refused, and the source says so.
#[test]
fn a_creds_file_connects_to_a_server_in_operator_mode() {
    let d = common::nats::Decentralized::new();
    let nats = NatsServer::start_decentralized(&d);
    nats.stream("ORDERS", &["orders.>"]);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, &d.creds).unwrap();
    // Another operator's user: a JWT this server cannot trust.
    let foreign = dir.path().join("foreign.creds");
    std::fs::write(&foreign, &common::nats::Decentralized::new().creds).unwrap();
    let server = Server::start();
    let witness = Witness::start(Policy::default());
    let f = function(
        "jwt",
        &witness,
        &nats_trigger(&nats, &format!("creds_file = \"{}\"\n", creds.display())),
    );
    server.deploy(f.path());
    nats.publish("orders.new", &[], b"signed");
    server.wait_until("the delivery", LIMIT, || witness.seen().len() == 1);
    let f = function(
        "foreign",
        &witness,
        &nats_trigger(&nats, &format!("creds_file = \"{}\"\n", foreign.display())),
    );
    server.deploy(f.path());
    let (_, err) = retrying(&server, "foreign");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
}
