//! Storage-event triggers on the real server and runtimes: bucket
//! notifications from a real S3 implementation (moto's S3 + SNS, on
//! loopback) reach the function in Lambda's S3 shape; filters drop what
//! they do not take; the webhook's token, body checks, MinIO's payloads
//! (fixtures), SNS subscription confirmation (allowed and refused hosts),
//! deduplication by idempotency key, retries and dead letters; and that no
//! notification answered 200 is lost when the server is SIGKILLed.
//! Notifications published to NATS (MinIO's NATS target), over core NATS
//! and from a JetStream stream, against a real `nats-server` each test
//! starts: the same shapes, filters and keys; a message delivered again
//! after a SIGKILL is not queued twice, and none is lost.
//!
//! Everything runs on 127.0.0.1: moto and its client are pointed there,
//! with dummy credentials.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::nats::NatsServer;
use common::{config_file, request, try_request, Fixture, Resp, Server};
use serde_json::{json, Value};

/// A small HTTP server on 127.0.0.1 that records every request (method,
/// path, body) and answers 200 `{}`: the functions' ledger (they POST
/// `{id, event}` to `/run`), and the SNS confirmation endpoints.
struct Sink {
    port: u16,
    seen: Arc<Seen>,
}

/// Requests received: method, path, body.
type Seen = Mutex<Vec<(String, String, Vec<u8>)>>;

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Seen> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || Sink::answer(conn, &s));
            }
        });
        Sink { port, seen }
    }

    fn answer(conn: TcpStream, seen: &Seen) {
        let mut reader = BufReader::new(&conn);
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        let mut length = 0usize;
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            line.clear();
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        seen.lock().unwrap().push((method, path, body));
        let _ = (&conn).write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
    }

    fn requests(&self) -> Vec<(String, String)> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect()
    }

    /// The runs the functions reported: `{id, event}` each.
    fn runs(&self) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(m, p, _)| m == "POST" && p == "/run")
            .filter_map(|(_, _, b)| serde_json::from_slice(b).ok())
            .collect()
    }

    /// Runs per object key (as the event sends it).
    fn runs_by_key(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for r in self.runs() {
            *out.entry(key_of(&r)).or_default() += 1;
        }
        out
    }

    /// Asserts that every record was queued once: all runs of a record
    /// are runs of one event (one request id), even across kills.
    fn assert_queued_once(&self) {
        let mut events: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for r in self.runs() {
            events
                .entry(key_of(&r))
                .or_default()
                .insert(r["id"].as_str().unwrap().to_string());
        }
        let twice: Vec<_> = events.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "records queued as more than one event: {twice:?}"
        );
    }
}

/// The object key of a run's record, as the event sends it.
fn key_of(run: &Value) -> String {
    run["event"]["Records"][0]["s3"]["object"]["key"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A Node.js handler that tells the ledger (on `LEDGER_PORT`) it ran, with
/// its event, then fails if `FAIL` is set.
const HANDLER: &str = r#"
const http = require("http");
exports.handler = async (event, context) => {
  const body = JSON.stringify({ id: context.awsRequestId, event });
  await new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: Number(process.env.LEDGER_PORT), path: "/run",
      method: "POST", agent: false,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (r) => {
      r.resume();
      r.on("end", resolve);
    });
    req.on("error", reject);
    req.end(body);
  });
  if (process.env.FAIL) throw new Error("told to fail");
  return "ok";
};
"#;

/// A function `name` running [`HANDLER`] with `triggers` (TOML tables).
fn function(name: &str, ledger: &Sink, extra: &str, env: &str, triggers: &str) -> Fixture {
    Fixture::node(
        name,
        &format!(
            "network = \"host\"\n{extra}[env]\nLEDGER_PORT = \"{}\"\n{env}{triggers}",
            ledger.port
        ),
        HANDLER,
    )
}

fn webhook(server: &Server, function: &str, trigger: &str) -> String {
    format!("{}/sources/storage/{function}/{trigger}", server.url)
}

fn post(server: &Server, function: &str, trigger: &str, auth: Option<&str>, body: &[u8]) -> Resp {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    request(
        "POST",
        &webhook(server, function, trigger),
        Some(body),
        &headers,
    )
}

/// An S3 event record (AWS's shape).
fn record(bucket: &str, key: &str, event: &str, etag: &str) -> Value {
    json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-05T10:00:00.000Z", "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "lampyr",
               "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": key, "size": 1, "eTag": etag, "sequencer": format!("00{etag}")}}
    })
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/storage")
            .join(name),
    )
    .unwrap()
}

/// Waits until the function has no pending event.
fn drained(server: &Server, name: &str) {
    server.wait_until(
        &format!("{name}'s events to finish"),
        Duration::from_secs(60),
        || server.info(name)["events"]["pending"].as_u64() == Some(0),
    );
}

/// The event behind `id`, once its state is one of `states` and its
/// attempts' records are written.
fn wait_state(server: &Server, id: &str, states: &[&str]) -> Value {
    let mut last = Value::Null;
    server.wait_until(
        &format!("event {id} in {states:?}"),
        Duration::from_secs(60),
        || {
            let r = server.api("GET", &format!("/invocations/{id}"), None);
            if r.status != 200 {
                return false;
            }
            last = r.json();
            last["state"].as_str().is_some_and(|s| states.contains(&s))
                && last["records"].as_array().map(Vec::len)
                    == last["attempts"].as_u64().map(|n| n as usize)
        },
    );
    last
}

/// The webhook's token, MinIO's bodies, SNS envelopes and confirmations,
/// filters, deduplication, and retries ending in a dead letter, with
/// notifications posted straight to the webhook.
#[test]
fn webhook_checks_tokens_and_bodies_and_deduplicates_minio_and_sns_notifications() {
    let (_cfg, path) = config_file("[async]\nretry_base = \"100ms\"\n");
    let server = Server::start_with(&["--config", &path]);
    let ledger = Sink::start();
    let confirm = Sink::start();
    let stranger = Sink::start();
    let own = "minio-secret-0123456789";
    server.deploy(
        function(
            "ingest",
            &ledger,
            "",
            "",
            &format!(
                "[[triggers]]\ntype = \"storage\"\nname = \"minio\"\ntoken = \"{own}\"\nevents = [\"ObjectCreated:*\"]\n\
                 [[triggers]]\ntype = \"storage\"\nname = \"sns\"\nbucket = \"photos\"\nsns_confirm_hosts = [\"127.0.0.1:{}\"]\n",
                confirm.port
            ),
        )
        .path(),
    );
    server.deploy(
        function(
            "flaky",
            &ledger,
            "retries = 1\n",
            "FAIL = \"1\"\n",
            "[[triggers]]\ntype = \"storage\"\n",
        )
        .path(),
    );
    // The function's trigger token serves triggers that set none, and
    // `lampyr info` shows it.
    let info = server.info("ingest");
    let token = info["trigger_token"].as_str().unwrap().to_string();
    let out = server.cli(&["info", "ingest"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("trigger token: {token}")),
        "{out:?}"
    );
    let bearer = format!("Bearer {token}");
    let own_bearer = format!("Bearer {own}");
    let put = fixture("minio-put.json");

    // Tokens: missing, wrong, another trigger's.
    for auth in [None, Some("Bearer nope"), Some(bearer.as_str())] {
        let r = post(&server, "ingest", "minio", auth, &put);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = post(&server, "ingest", "nope", Some(&bearer), &put);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(&server, "nobody", "minio", Some(&bearer), &put);
    assert_eq!(r.status, 404, "{}", r.text());

    // Malformed bodies: 400 with the error body, naming the field.
    for (body, want) in [
        (&b"not json"[..], "not JSON"),
        (
            br#"{"Records":[{"eventName":"x"}]}"#,
            "Records[0].s3.bucket.name",
        ),
        (br#"{"hello":1}"#, "`Records` is missing"),
    ] {
        let r = post(&server, "ingest", "minio", Some(&own_bearer), body);
        assert_eq!(r.status, 400, "{}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["code"], "bad_notification");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{e}"
        );
    }

    // MinIO's webhook body, with its bearer token: one event; sent again
    // (MinIO's queue_dir replays), it is a duplicate.
    let r = post(&server, "ingest", "minio", Some(&own_bearer), &put);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    let r = post(&server, "ingest", "minio", Some(&own_bearer), &put);
    let again = r.json();
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(again["request_ids"][0], first["request_ids"][0]);
    // Its delete is not an event type this trigger takes.
    let r = post(
        &server,
        "ingest",
        "minio",
        Some(&own_bearer),
        &fixture("minio-delete.json"),
    );
    assert_eq!((r.status, r.json()["filtered"].as_u64()), (200, Some(1)));

    // Ten records in one raw S3 body, two of another bucket; then one in
    // an SNS envelope (Basic credentials, as SNS sends an endpoint's
    // user:password).
    let records: Vec<Value> = (0..10)
        .map(|i| {
            let bucket = if i < 8 { "photos" } else { "other" };
            record(
                bucket,
                &format!("batch/{i}.jpg"),
                "ObjectCreated:Put",
                &format!("e{i}"),
            )
        })
        .collect();
    let body = json!({ "Records": records }).to_string();
    let r = post(&server, "ingest", "sns", Some(&bearer), body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["accepted"].as_u64(), r.json()["filtered"].as_u64()),
        (Some(8), Some(2))
    );
    let message =
        json!({ "Records": [record("photos", "sns/one.jpg", "ObjectRemoved:Delete", "s1")] });
    let envelope = json!({
        "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:123456789012:lampyr",
        "Message": message.to_string(), "Timestamp": "2026-12-05T10:00:00.000Z",
    });
    let basic = format!("Basic {}", base64_encode(format!("sns:{token}").as_bytes()));
    let r = post(
        &server,
        "ingest",
        "sns",
        Some(&basic),
        envelope.to_string().as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["accepted"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );

    // A sender that sets no header (Ceph RGW's HTTP endpoint) puts the
    // token in the query.
    let one = json!({ "Records": [record("photos", "rgw/one.jpg", "ObjectCreated:Put", "r1")] });
    let r = request(
        "POST",
        &format!("{}?token={token}", webhook(&server, "ingest", "sns")),
        Some(one.to_string().as_bytes()),
        &[],
    );
    assert_eq!(
        (r.status, r.json()["accepted"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    let r = request(
        "POST",
        &format!("{}?token=nope", webhook(&server, "ingest", "sns")),
        Some(one.to_string().as_bytes()),
        &[],
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // SNS subscription confirmations: a GET of the SubscribeURL for an
    // allowed host; another host is refused, and logged.
    let confirmation = |port: u16| {
        sns_confirmation(&format!(
            "http://127.0.0.1:{port}/?Action=ConfirmSubscription&Token=tok"
        ))
    };
    let r = post(
        &server,
        "ingest",
        "sns",
        Some(&bearer),
        confirmation(confirm.port).as_bytes(),
    );
    assert_confirmed(&r);
    assert_eq!(
        confirm.requests(),
        [(
            "GET".to_string(),
            "/?Action=ConfirmSubscription&Token=tok".to_string()
        )]
    );
    let r = post(
        &server,
        "ingest",
        "sns",
        Some(&bearer),
        confirmation(stranger.port).as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "sns_host_refused");
    assert!(stranger.requests().is_empty());
    server.wait_until("the refusal in the log", Duration::from_secs(10), || {
        server
            .log()
            .iter()
            .any(|l| l.contains("not in the trigger's sns_confirm_hosts"))
    });

    // Every accepted record ran once, in Lambda's S3 shape, as `storage`.
    drained(&server, "ingest");
    let runs = ledger.runs_by_key();
    assert_eq!(runs.len(), 11, "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    let minio = ledger
        .runs()
        .into_iter()
        .find(|r| r["event"]["Records"][0]["eventSource"] == "minio:s3")
        .unwrap();
    let rec = &minio["event"]["Records"][0];
    assert_eq!(minio["event"]["Records"].as_array().unwrap().len(), 1);
    assert_eq!(rec["eventName"], "ObjectCreated:Put");
    assert_eq!(rec["s3"]["object"]["key"], "in%2Fred+flower.jpg");
    assert_eq!(rec["s3"]["bucket"]["name"], "photos");
    let detail = wait_state(&server, minio["id"].as_str().unwrap(), &["succeeded"]);
    assert_eq!(detail["records"][0]["trigger"], "storage", "{detail}");

    // A function that fails: retried, then dead-lettered.
    let body = json!({ "Records": [record("photos", "fails.jpg", "ObjectCreated:Put", "f1")] });
    let r = post(
        &server,
        "flaky",
        "storage",
        Some(&format!(
            "Bearer {}",
            server.info("flaky")["trigger_token"].as_str().unwrap()
        )),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["request_ids"][0].as_str().unwrap().to_string();
    let e = wait_state(&server, &id, &["dead_lettered"]);
    assert_eq!(e["attempts"], 2, "{e}");
    assert_eq!(e["dead_reason"], "RetriesExhausted", "{e}");
    assert_eq!(ledger.runs_by_key()["fails.jpg"], 2);

    // No token in the log.
    let log = server.log().join("\n");
    assert!(!log.contains(own) && !log.contains(&token));
}

/// The webhook's answer to a confirmation it made.
fn assert_confirmed(r: &Resp) {
    assert_eq!(
        (r.status, r.json()["confirmed"].as_bool()),
        (200, Some(true)),
        "{}",
        r.text()
    );
}

/// An SNS `SubscriptionConfirmation` whose `SubscribeURL` is `url`.
fn sns_confirmation(url: &str) -> String {
    json!({
        "Type": "SubscriptionConfirmation", "MessageId": "m-9", "Token": "tok",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:lampyr",
        "SubscribeURL": url,
    })
    .to_string()
}

/// SNS as AWS sends it: an https `SubscribeURL`. With `SSL_CERT_FILE`
/// naming the test's CA, the confirmation's GET reaches an allowed HTTPS
/// server; a host that is not allowed is not contacted at all; a server
/// whose certificate another CA signed is refused, 502 with a message
/// that says why and what lampyr trusts, in the log and the status.
#[test]
fn sns_subscriptions_are_confirmed_over_https_with_the_trusted_cas() {
    use common::tls::{Ca, HttpsServer};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lampyr test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let allowed = HttpsServer::start(&ca.issue(&["127.0.0.1"]));
    let unlisted = HttpsServer::start(&ca.issue(&["127.0.0.1"]));
    let stranger_ca = Ca::new("a CA nobody trusts");
    let untrusted = HttpsServer::start(&stranger_ca.issue(&["127.0.0.1"]));
    let server = Server::start_with_env(&[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    let ledger = Sink::start();
    let token = "sns-https-token-0123456789";
    server.deploy(
        function(
            "topic",
            &ledger,
            "",
            "",
            &format!(
                "[[triggers]]\ntype = \"storage\"\ntoken = \"{token}\"\nsns_confirm_hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
                allowed.port, untrusted.port
            ),
        )
        .path(),
    );
    let bearer = format!("Bearer {token}");
    let confirm = |port: u16| {
        let url =
            format!("https://127.0.0.1:{port}/?Action=ConfirmSubscription&TopicArn=t&Token=tok");
        post(
            &server,
            "topic",
            "storage",
            Some(&bearer),
            sns_confirmation(&url).as_bytes(),
        )
    };

    let r = confirm(allowed.port);
    assert_confirmed(&r);
    assert_eq!(
        allowed.requests(),
        [(
            "GET".to_string(),
            "/?Action=ConfirmSubscription&TopicArn=t&Token=tok".to_string()
        )]
    );

    let r = confirm(unlisted.port);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "sns_host_refused");
    assert!(unlisted.requests().is_empty() && unlisted.refused().is_empty());

    let r = confirm(untrusted.port);
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "sns_certificate_refused", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("https server 127.0.0.1 presented a certificate")
            && message.contains("signed by a CA lampyr does not trust")
            && message.contains("SSL_CERT_FILE"),
        "{message}"
    );
    assert!(untrusted.requests().is_empty());
    server.wait_until("the refusal in the log", Duration::from_secs(10), || {
        server
            .log()
            .iter()
            .any(|l| l.contains("not confirmed") && l.contains("does not trust"))
    });
    let status = storage_source(&server, "topic");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not trust")),
        "{status}"
    );
}

fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// moto's S3 + SNS server on 127.0.0.1, and a driver (boto3) for it.
struct Moto {
    server: Child,
    driver: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Moto {
    fn start() -> Moto {
        let deps = common::aws::test_deps("moto", "'moto[s3,sns,server]' boto3");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = common::aws::python(&deps)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let endpoint = format!("http://127.0.0.1:{port}");
        common::wait_until("moto to listen", Duration::from_secs(60), &mut || {
            try_request("GET", &format!("{endpoint}/moto-api/"), None, &[]).is_ok()
        });
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/storage/moto_driver.py");
        let mut driver = common::aws::python(&deps)
            .arg(script)
            .arg(&endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the moto driver");
        let stdin = driver.stdin.take().unwrap();
        let stdout = BufReader::new(driver.stdout.take().unwrap());
        Moto {
            server,
            driver,
            stdin,
            stdout,
        }
    }

    fn cmd(&mut self, c: Value) -> Value {
        writeln!(self.stdin, "{c}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{c}: {line:?}"));
        assert_eq!(v["ok"], true, "{c}: {v}");
        v
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.server.kill();
        let _ = self.driver.wait();
        let _ = self.server.wait();
    }
}

/// moto's bucket notifications, through an SNS topic with an HTTP
/// subscription, reach the function: a put as `ObjectCreated:Put`, a
/// delete as `ObjectRemoved:Delete`, keys URL-encoded as sent; objects of
/// another bucket, prefix or suffix are dropped.
#[test]
fn bucket_notifications_from_moto_reach_the_function_through_sns() {
    let mut moto = Moto::start();
    let server = Server::start();
    let ledger = Sink::start();
    server.deploy(
        function(
            "thumbs",
            &ledger,
            "",
            "",
            "[[triggers]]\ntype = \"storage\"\nname = \"uploads\"\nbucket = \"photos\"\nevents = [\"ObjectCreated:*\", \"ObjectRemoved:*\"]\nprefix = \"in/\"\nsuffix = \".jpg\"\n",
        )
        .path(),
    );
    let token = server.info("thumbs")["trigger_token"]
        .as_str()
        .unwrap()
        .to_string();
    let port = server.port();
    // SNS sends an endpoint's user:password as Basic credentials.
    let endpoint = format!("http://sns:{token}@127.0.0.1:{port}/sources/storage/thumbs/uploads");
    moto.cmd(json!({"op": "setup", "endpoint": endpoint, "buckets": ["photos", "other"]}));

    let key = "in/red flower/ä 1.jpg";
    let put = moto.cmd(json!({"op": "put", "bucket": "photos", "key": key, "body": "pixels"}));
    server.wait_until("the put's event to run", Duration::from_secs(60), || {
        ledger.runs().len() == 1
    });
    let run = &ledger.runs()[0];
    let records = run["event"]["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{run}");
    let rec = &records[0];
    assert_eq!(rec["eventSource"], "aws:s3");
    assert_eq!(rec["eventName"], "ObjectCreated:Put");
    assert_eq!(rec["s3"]["bucket"]["name"], "photos");
    // moto encodes keys with Python's quote_plus.
    assert_eq!(rec["s3"]["object"]["key"], "in%2Fred+flower%2F%C3%A4+1.jpg");
    assert_eq!(rec["s3"]["object"]["eTag"], put["etag"]);
    let detail = wait_state(&server, run["id"].as_str().unwrap(), &["succeeded"]);
    assert_eq!(detail["records"][0]["trigger"], "storage", "{detail}");

    // Not taken: another suffix, another prefix, another bucket.
    moto.cmd(json!({"op": "put", "bucket": "photos", "key": "in/skip.png"}));
    moto.cmd(json!({"op": "put", "bucket": "photos", "key": "out/skip.jpg"}));
    moto.cmd(json!({"op": "put", "bucket": "other", "key": "in/skip.jpg"}));
    moto.cmd(json!({"op": "delete", "bucket": "photos", "key": key}));
    // moto delivers before it answers: every notification is in.
    drained(&server, "thumbs");
    let runs = ledger.runs();
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["event"]["Records"][0]["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ObjectCreated:Put", "ObjectRemoved:Delete"],
        "{runs:?}"
    );
    assert_eq!(
        runs[1]["event"]["Records"][0]["s3"]["object"]["key"],
        "in%2Fred+flower%2F%C3%A4+1.jpg"
    );
}

/// Senders post notifications (1 to 3 records each) straight to the
/// webhook while the server is SIGKILLed and restarted on the same data a
/// few times; like MinIO and SNS, a sender sends a notification again
/// until it is answered 200. Every record of every notification ran at
/// least once (the ledger on the host counted), as one event (a
/// notification sent again is deduplicated), and the duplicate runs,
/// counted, are only those of events a kill interrupted.
#[test]
fn no_notification_answered_200_is_lost_when_the_server_is_killed() {
    const SENDERS: usize = 3;
    const KILLS: usize = 3;
    const IN_FLIGHT: usize = 2 * 8;
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let ledger = Sink::start();
    server.deploy(
        function(
            "ingest",
            &ledger,
            "concurrency = 8\nmax_instances = 2\n",
            "",
            "[[triggers]]\ntype = \"storage\"\n",
        )
        .path(),
    );
    let token = server.info("ingest")["trigger_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The live server's webhook, None while it is killed and restarted.
    let target: Arc<(Mutex<Option<String>>, Condvar)> = Arc::new((
        Mutex::new(Some(webhook(&server, "ingest", "storage"))),
        Condvar::new(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (target, stop, next, answered, cut) = (
                target.clone(),
                stop.clone(),
                next.clone(),
                answered.clone(),
                cut.clone(),
            );
            let auth = format!("Bearer {token}");
            std::thread::spawn(move || {
                let mut keys: Vec<String> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let batch: Vec<String> = (0..=(n % 3)).map(|j| format!("obj-{n}-{j}")).collect();
                    let body = json!({
                        "Records": batch.iter().map(|k| record("photos", k, "ObjectCreated:Put", k)).collect::<Vec<_>>()
                    })
                    .to_string();
                    // Sent again until answered 200, as senders do.
                    loop {
                        let url = {
                            let (lock, cv) = &*target;
                            let mut t = lock.lock().unwrap();
                            while t.is_none() {
                                t = cv.wait(t).unwrap();
                            }
                            t.clone().unwrap()
                        };
                        match try_request(
                            "POST",
                            &url,
                            Some(body.as_bytes()),
                            &[("authorization", auth.as_str())],
                        ) {
                            Ok(r) if r.status == 200 => break,
                            // Starting or stopping: sent again.
                            Ok(r) => assert_eq!(r.status, 503, "{}", r.text()),
                            Err(_) => {
                                cut.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    keys.extend(batch);
                }
                keys
            })
        })
        .collect();

    for round in 0..KILLS {
        let (done, runs) = (answered.load(Ordering::SeqCst), ledger.runs().len());
        common::wait_until(
            &format!("notifications and runs before kill {}", round + 1),
            Duration::from_secs(60),
            &mut || {
                answered.load(Ordering::SeqCst) >= done + 30 && ledger.runs().len() >= runs + 10
            },
        );
        *target.0.lock().unwrap() = None;
        server.kill();
        server = Server::start_in(data.path(), &[]);
        *target.0.lock().unwrap() = Some(webhook(&server, "ingest", "storage"));
        target.1.notify_all();
    }
    let done = answered.load(Ordering::SeqCst);
    common::wait_until(
        "notifications after the last restart",
        Duration::from_secs(60),
        &mut || answered.load(Ordering::SeqCst) >= done + 30,
    );
    stop.store(true, Ordering::SeqCst);
    let keys: Vec<String> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    drained(&server, "ingest");
    let runs = ledger.runs_by_key();
    let lost: Vec<&String> = keys.iter().filter(|k| !runs.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "records answered 200 and never run: {lost:?}"
    );
    // A record sent again (its answer cut by a kill) was not queued twice:
    // all runs of a record are runs of one event, again after a kill.
    ledger.assert_queued_once();
    let duplicates: usize = runs.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= KILLS * IN_FLIGHT,
        "{duplicates} duplicate runs for {KILLS} kills of at most {IN_FLIGHT} runs each: {runs:?}"
    );
    eprintln!(
        "{} records in {} notifications across {KILLS} kills ({} sends cut), {} runs, {duplicates} duplicate runs",
        keys.len(),
        answered.load(Ordering::SeqCst),
        cut.load(Ordering::SeqCst),
        runs.values().sum::<usize>()
    );
}

/// A storage webhook body over `[limits] max_request_body` is 413 with the
/// API's error body, naming the limit and its setting.
#[test]
fn a_webhook_body_over_the_limit_is_refused_with_the_error_body() {
    let (_cfg, path) = config_file("[limits]\nmax_request_body = 2000\n");
    let server = Server::start_with(&["--config", &path]);
    let ledger = Sink::start();
    server.deploy(function("big", &ledger, "", "", "[[triggers]]\ntype = \"storage\"\n").path());
    let auth = format!(
        "Bearer {}",
        server.info("big")["trigger_token"].as_str().unwrap()
    );
    let records: Vec<Value> = (0..20)
        .map(|i| {
            record(
                "photos",
                &format!("k{i}.jpg"),
                "ObjectCreated:Put",
                &format!("e{i}"),
            )
        })
        .collect();
    let body = json!({ "Records": records }).to_string();
    assert!(body.len() > 2000);
    let r = post(&server, "big", "storage", Some(&auth), body.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(e["error"]["code"], "payload_too_large", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2000 bytes") && message.contains("max_request_body"),
        "{message}"
    );
    // Under the limit it is taken.
    let one = json!({ "Records": [record("photos", "k.jpg", "ObjectCreated:Put", "e")] });
    let r = post(
        &server,
        "big",
        "storage",
        Some(&auth),
        one.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The storage trigger's first source status.
fn storage_source(server: &Server, name: &str) -> Value {
    server.info(name)["sources"][0].clone()
}

/// MinIO's NATS target without JetStream: notifications published on core
/// NATS reach the function, one event per record the filters take, in
/// Lambda's S3 shape, recorded as `storage`; the trigger authenticates
/// with `nats_token`, shows its state in `lampyr info`, the API and
/// `/metrics`, reports a malformed notification, and its webhook still
/// works.
#[test]
fn notifications_on_core_nats_reach_the_function() {
    const NATS_TOKEN: &str = "nats-t0ken-not-shown";
    let nats = NatsServer::start_with_token(NATS_TOKEN);
    let server = Server::start();
    let ledger = Sink::start();
    server.deploy(
        function(
            "minio",
            &ledger,
            "",
            "",
            &format!(
                "[[triggers]]\ntype = \"storage\"\nname = \"uploads\"\nbucket = \"photos\"\nevents = [\"ObjectCreated:*\"]\nprefix = \"in/\"\n\
                 nats_servers = [\"{}\"]\nnats_subject = \"minio.events\"\nnats_token = \"{NATS_TOKEN}\"\n",
                nats.url()
            ),
        )
        .path(),
    );
    server.wait_until("the subscription", LIMIT, || {
        storage_source(&server, "minio")["state"] == "connected"
    });
    // MinIO's put: taken; its delete: not an event type the trigger takes.
    nats.publish_core("minio.events", &fixture("minio-put.json"));
    nats.publish_core("minio.events", &fixture("minio-delete.json"));
    // A raw S3 body: one of its three records is taken.
    let body = json!({ "Records": [
        record("photos", "in/a.jpg", "ObjectCreated:Put", "a1"),
        record("other", "in/b.jpg", "ObjectCreated:Put", "b1"),
        record("photos", "out/c.jpg", "ObjectCreated:Put", "c1"),
    ]});
    nats.publish_core("minio.events", body.to_string().as_bytes());
    // Another subject: not read.
    nats.publish_core(
        "other.events",
        json!({ "Records": [record("photos", "in/z.jpg", "ObjectCreated:Put", "z1")] })
            .to_string()
            .as_bytes(),
    );
    nats.publish_core("minio.events", b"not json");
    server.wait_until("the two runs", LIMIT, || ledger.runs().len() >= 2);
    server.wait_until("the malformed one reported", LIMIT, || {
        storage_source(&server, "minio")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed notification on minio.events"))
    });
    drained(&server, "minio");
    let runs = ledger.runs_by_key();
    assert_eq!(
        runs,
        HashMap::from([
            ("in%2Fred+flower.jpg".to_string(), 1),
            ("in/a.jpg".to_string(), 1)
        ]),
        "{:?}",
        ledger.runs()
    );
    let minio = ledger
        .runs()
        .into_iter()
        .find(|r| r["event"]["Records"][0]["eventSource"] == "minio:s3")
        .unwrap();
    let records = minio["event"]["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{minio}");
    assert_eq!(records[0]["eventName"], "ObjectCreated:Put");
    assert_eq!(records[0]["s3"]["bucket"]["name"], "photos");
    assert_eq!(records[0]["s3"]["object"]["key"], "in%2Fred+flower.jpg");
    let detail = wait_state(&server, minio["id"].as_str().unwrap(), &["succeeded"]);
    assert_eq!(detail["records"][0]["trigger"], "storage", "{detail}");

    // The webhook is still there.
    let auth = format!(
        "Bearer {}",
        server.info("minio")["trigger_token"].as_str().unwrap()
    );
    let hook = json!({ "Records": [record("photos", "in/hook.jpg", "ObjectCreated:Put", "h1")] });
    let r = post(
        &server,
        "minio",
        "uploads",
        Some(&auth),
        hook.to_string().as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["accepted"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    server.wait_until("the webhook's run", LIMIT, || {
        ledger.runs_by_key().contains_key("in/hook.jpg")
    });

    // How it shows.
    let src = storage_source(&server, "minio");
    assert_eq!(
        (src["trigger"].as_str(), src["kind"].as_str()),
        (Some("uploads"), Some("storage"))
    );
    assert_eq!(src["delivered"], 3, "{src}");
    assert_eq!(src["detail"]["nats_subject"], "minio.events");
    assert!(
        src["detail"]["delivery"]
            .as_str()
            .unwrap()
            .starts_with("at most once"),
        "{src}"
    );
    let info = server.api("GET", "/functions/minio", None).text();
    assert!(!info.contains(NATS_TOKEN), "{info}");
    let out = server.cli(&["info", "minio"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source uploads (storage): connected"),
        "{text}"
    );
    assert!(!text.contains(NATS_TOKEN), "{text}");
    let m = server.metrics();
    assert!(
        m.contains("lampyr_source_state{function=\"minio\",trigger=\"uploads\",kind=\"storage\",state=\"connected\"} 1"),
        "{m}"
    );
    let log = server.log().join("\n");
    assert!(!log.contains(NATS_TOKEN));
}

const LIMIT: Duration = Duration::from_secs(90);

/// A storage trigger of bucket `photos` reading JetStream stream `MINIO`
/// on the NATS server at `url`.
fn jetstream_trigger(url: &str, extra: &str) -> String {
    format!(
        "[[triggers]]\ntype = \"storage\"\nbucket = \"photos\"\nnats_servers = [\"{url}\"]\nnats_subject = \"minio.events\"\nnats_stream = \"MINIO\"\n{extra}"
    )
}

/// MinIO's NATS target with `jetstream = on`: notifications stored in a
/// stream before the function was deployed, and after, reach it once per
/// record; a notification published twice (as MinIO's queue_dir replays
/// one) is not queued twice; every message is acked once queued, a
/// malformed one terminated; a server that is down at deploy is retried
/// and reported.
#[test]
fn notifications_from_a_jetstream_stream_are_acked_once_queued_and_never_queued_twice() {
    let port = common::nats::free_port();
    let server = Server::start();
    let ledger = Sink::start();
    let url = format!("nats://127.0.0.1:{port}");
    // The broker is down: the trigger retries and says why.
    server.deploy(function("js", &ledger, "", "", &jetstream_trigger(&url, "")).path());
    server.wait_until("the trigger retries", LIMIT, || {
        let s = storage_source(&server, "js");
        s["state"] == "retrying" && s["last_error"].as_str().is_some_and(|e| e.contains(&url))
    });
    assert!(server.metrics().contains(
        "lampyr_source_state{function=\"js\",trigger=\"storage\",kind=\"storage\",state=\"retrying\"} 1"
    ));
    let nats = common::nats::NatsServer::start_on(port, None);
    nats.stream("MINIO", &["minio.events"]);
    let put = fixture("minio-put.json");
    nats.publish("minio.events", &[], &put);
    server.wait_until("the trigger connects", LIMIT, || {
        storage_source(&server, "js")["state"] == "connected"
    });
    server.wait_until("the first run", LIMIT, || ledger.runs().len() == 1);
    // The same notification again, a delete, one of another bucket, and
    // one that is not a notification.
    nats.publish("minio.events", &[], &put);
    nats.publish("minio.events", &[], &fixture("minio-delete.json"));
    let other = json!({ "Records": [record("other", "x.jpg", "ObjectCreated:Put", "x1")] });
    nats.publish("minio.events", &[], other.to_string().as_bytes());
    nats.publish("minio.events", &[], b"{\"hello\": 1}");
    server.wait_until("every message settled", LIMIT, || {
        nats.consumer("MINIO", "lampyr-js-storage-storage") == (0, 0, 5)
    });
    drained(&server, "js");
    let runs = ledger.runs_by_key();
    assert_eq!(runs.len(), 1, "{:?}", ledger.runs());
    let events: Vec<String> = ledger
        .runs()
        .iter()
        .map(|r| {
            r["event"]["Records"][0]["eventName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(events, ["ObjectCreated:Put", "ObjectRemoved:Delete"]);
    let src = storage_source(&server, "js");
    assert_eq!(src["delivered"], 2, "{src}");
    assert_eq!(src["detail"]["duplicates"], "1", "{src}");
    assert_eq!(src["detail"]["filtered"], "1", "{src}");
    assert_eq!(src["lag"], 0, "{src}");
    assert_eq!(src["lag_unit"], "messages", "{src}");
    assert!(
        src["last_error"]
            .as_str()
            .unwrap()
            .contains("`Records` is missing")
            && src["last_error"].as_str().unwrap().contains("terminated"),
        "{src}"
    );

    // A deploy that names another consumer replaces the NATS side: the new
    // consumer gets every message again and queues nothing twice; the old
    // one is read no more.
    let before = ledger.runs().len();
    server.deploy(
        function(
            "js",
            &ledger,
            "",
            "",
            &jetstream_trigger(&url, "nats_durable = \"renamed\"\n"),
        )
        .path(),
    );
    server.wait_until("the new consumer", LIMIT, || {
        let s = storage_source(&server, "js");
        s["detail"]["consumer"] == "renamed" && s["state"] == "connected"
    });
    let new = json!({ "Records": [record("photos", "new.jpg", "ObjectCreated:Put", "n1")] });
    nats.publish("minio.events", &[], new.to_string().as_bytes());
    server.wait_until("the new consumer's acks", LIMIT, || {
        nats.consumer("MINIO", "renamed") == (0, 0, 6)
    });
    drained(&server, "js");
    let runs = ledger.runs();
    assert_eq!(runs.len(), before + 1, "{runs:?}");
    assert_eq!(key_of(&runs[before]), "new.jpg");
    // The old consumer, which lampyr named, is deleted from the broker (it
    // would keep messages for nobody); one the manifest named is kept when
    // its function is deleted.
    server.wait_until("the old consumer deleted", LIMIT, || {
        !nats.has_consumer("MINIO", "lampyr-js-storage-storage")
    });
    let r = server.api("DELETE", "/functions/js", None);
    assert!(r.status < 300, "{}", r.text());
    let late = json!({ "Records": [record("photos", "late.jpg", "ObjectCreated:Put", "l1")] });
    nats.publish("minio.events", &[], late.to_string().as_bytes());
    server.wait_until("the message kept for the named consumer", LIMIT, || {
        assert!(
            nats.has_consumer("MINIO", "renamed"),
            "the named consumer was deleted"
        );
        let (pending, ack_pending, _) = nats.consumer("MINIO", "renamed");
        // Not acked: waiting, or held by a pull of the stopped side until
        // its ack_wait runs out.
        pending + ack_pending as u64 == 1
    });
}

/// Notifications published to a JetStream stream while `lampyr serve` is
/// SIGKILLed and restarted: every record runs, each as one event (a
/// message the broker delivers again after the kill is not queued again),
/// and the only repeated runs are those of events the kill interrupted.
/// Then, SIGKILLed again, its consumer deleted (the broker forgets the
/// acks) and restarted: the broker delivers every message again, and none
/// runs again.
#[test]
fn jetstream_notifications_survive_a_sigkill_and_are_not_queued_twice() {
    const N: usize = 150;
    let nats = Arc::new(NatsServer::start());
    nats.stream("MINIO", &["minio.events"]);
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    let ledger = Sink::start();
    server.deploy(
        function(
            "steady",
            &ledger,
            "concurrency = 8\nmax_instances = 2\n",
            "",
            &jetstream_trigger(&nats.url(), ""),
        )
        .path(),
    );
    let publisher = {
        let nats = nats.clone();
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            for n in 0..N {
                let batch: Vec<String> = (0..=(n % 2)).map(|j| format!("obj-{n}-{j}")).collect();
                let body = json!({
                    "EventName": "s3:ObjectCreated:Put",
                    "Key": format!("photos/{}", batch[0]),
                    "Records": batch.iter().map(|k| record("photos", k, "s3:ObjectCreated:Put", k)).collect::<Vec<_>>()
                });
                nats.publish("minio.events", &[], body.to_string().as_bytes());
                keys.extend(batch);
            }
            keys
        })
    };
    server.wait_until("runs before the kill", LIMIT, || ledger.runs().len() >= 30);
    server.kill();
    let server = Server::start_in(data.path(), &[]);
    let keys = publisher.join().unwrap();
    server.wait_until("every record run", Duration::from_secs(180), || {
        let runs = ledger.runs_by_key();
        keys.iter().all(|k| runs.contains_key(k))
    });
    server.wait_until("every message acked", LIMIT, || {
        let (pending, ack_pending, _) = nats.consumer("MINIO", "lampyr-steady-storage-storage");
        pending == 0 && ack_pending == 0
    });
    drained(&server, "steady");
    ledger.assert_queued_once();
    let runs = ledger.runs_by_key();
    let duplicates: usize = runs.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= 16,
        "{duplicates} repeated runs for one kill of at most 16 running events: {runs:?}"
    );
    let (_, _, deliveries) = nats.consumer("MINIO", "lampyr-steady-storage-storage");
    eprintln!(
        "{} records in {N} messages, {deliveries} deliveries ({} again after the kill), {duplicates} repeated runs",
        keys.len(),
        deliveries.saturating_sub(N as u64)
    );

    // Every message delivered again, after a restart: nothing runs again.
    let mut server = server;
    let before = ledger.runs().len();
    server.kill();
    nats.delete_consumer("MINIO", "lampyr-steady-storage-storage");
    let server = Server::start_in(data.path(), &[]);
    server.wait_until("the consumer made again", LIMIT, || {
        storage_source(&server, "steady")["state"] == "connected"
    });
    server.wait_until("every message delivered and acked again", LIMIT, || {
        nats.consumer("MINIO", "lampyr-steady-storage-storage") == (0, 0, N as u64)
    });
    drained(&server, "steady");
    let src = storage_source(&server, "steady");
    assert_eq!(src["detail"]["duplicates"], keys.len().to_string(), "{src}");
    assert_eq!(src["delivered"], 0, "{src}");
    assert_eq!(ledger.runs().len(), before, "runs after the redelivery");
}
