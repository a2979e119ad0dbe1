//! The PostgreSQL trigger, end to end: a throwaway PostgreSQL cluster
//! (wal_level = logical, wal2json) on 127.0.0.1, the real server, and
//! Node.js functions that report every record they get to a ledger the
//! test runs on 127.0.0.1. Row changes arrive in the documented shape, in
//! commit order, a transaction whole; filters hold; failures retry and
//! dead-letter; a killed server replays from its slot and the idempotency
//! keys drop what was queued before; slots go with their trigger; the
//! DSN's password is never shown.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::Postgres;
use common::{config_file, Fixture, Server};
use serde_json::{json, Value};

/// What the functions told the test: one entry per invocation.
#[derive(Clone, Default)]
struct Ledger {
    port: u16,
    state: Arc<Mutex<LedgerState>>,
}

#[derive(Default)]
struct LedgerState {
    /// (function, request id, records), in the order they came.
    runs: Vec<(String, String, Vec<Value>)>,
    fail: bool,
}

impl Ledger {
    fn start() -> Ledger {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ledger = Ledger {
            port: listener.local_addr().unwrap().port(),
            state: Arc::default(),
        };
        let st = ledger.state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || Ledger::answer(conn, &st));
            }
        });
        ledger
    }

    fn answer(conn: TcpStream, st: &Mutex<LedgerState>) {
        let mut reader = BufReader::new(&conn);
        let mut line = String::new();
        let mut length = 0usize;
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.trim_end().is_empty() {
                break;
            }
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
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let fail = {
            let mut s = st.lock().unwrap();
            s.runs.push((
                v["function"].as_str().unwrap_or_default().to_string(),
                v["requestId"].as_str().unwrap_or_default().to_string(),
                v["records"].as_array().cloned().unwrap_or_default(),
            ));
            s.fail
        };
        let body = json!({ "fail": fail }).to_string();
        let _ = (&conn).write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }

    /// Every invocation of `function` so far: (request id, records).
    fn runs(&self, function: &str) -> Vec<(String, Vec<Value>)> {
        self.state
            .lock()
            .unwrap()
            .runs
            .iter()
            .filter(|r| r.0 == function)
            .map(|r| (r.1.clone(), r.2.clone()))
            .collect()
    }

    /// Every record `function` got, in the order it got them.
    fn records(&self, function: &str) -> Vec<Value> {
        self.runs(function).into_iter().flat_map(|r| r.1).collect()
    }
}

/// A function that tells the ledger what it got, and fails when told to.
const HANDLER: &str = r#"
const http = require("http");
const post = (body) => new Promise((resolve, reject) => {
  const req = http.request({ host: "127.0.0.1", port: Number(process.env.LEDGER_PORT), path: "/", method: "POST",
    agent: false, headers: { "content-type": "application/json" } }, (res) => {
    let b = "";
    res.on("data", (c) => (b += c));
    res.on("end", () => resolve(JSON.parse(b)));
  });
  req.on("error", reject);
  req.end(JSON.stringify(body));
});
exports.handler = async (event, context) => {
  const answer = await post({ function: context.functionName, requestId: context.awsRequestId, records: event.Records });
  if (answer.fail) throw new Error("the ledger refused");
  return "ok";
};
"#;

/// The manifest lines of a function reporting to `ledger` with one
/// postgres trigger (`trigger`: its extra keys).
fn function(name: &str, ledger: &Ledger, dsn: &str, extra: &str, trigger: &str) -> Fixture {
    Fixture::node(
        name,
        &format!(
            "network = \"host\"\n{extra}[env]\nLEDGER_PORT = \"{}\"\n[[triggers]]\ntype = \"postgres\"\ndsn = \"{dsn}\"\npoll_interval = \"20ms\"\n{trigger}",
            ledger.port
        ),
        HANDLER,
    )
}

fn wait_slot(pg: &Postgres, slot: &str) {
    common::wait_until(
        &format!("the slot {slot}"),
        Duration::from_secs(30),
        &mut || pg.has_slot(slot),
    );
}

/// A record's (eventName, id of the row).
fn change(r: &Value) -> (String, i64) {
    let db = &r["dbChange"];
    (
        r["eventName"].as_str().unwrap().to_string(),
        db["Keys"]["id"].as_i64().unwrap(),
    )
}

#[test]
fn row_changes_arrive_whole_in_commit_order_filtered_and_slots_go_with_their_trigger() {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY, item text, qty int, meta jsonb); ALTER TABLE orders REPLICA IDENTITY FULL; CREATE TABLE notes (id int PRIMARY KEY, body text)");
    let server = Server::start();
    let ledger = Ledger::start();
    server.deploy(
        function(
            "orders",
            &ledger,
            &pg.dsn(),
            // One at a time: events run in the order they were queued.
            "max_instances = 1\n",
            "tables = [\"orders\"]\nbatch_size = 10\n",
        )
        .path(),
    );
    server.deploy(
        function(
            "removals",
            &ledger,
            &pg.dsn(),
            "max_instances = 1\n",
            "slot = \"removals\"\nevents = [\"REMOVE\"]\n",
        )
        .path(),
    );
    wait_slot(&pg, "lampyr_orders_postgres");
    wait_slot(&pg, "removals");

    pg.psql("INSERT INTO orders VALUES (1, 'apple', 1, '{\"gift\": true}')");
    pg.psql("UPDATE orders SET qty = 5 WHERE id = 1");
    pg.psql("DELETE FROM orders WHERE id = 1");
    pg.psql("BEGIN; INSERT INTO orders VALUES (2, 'pear', 2, NULL); INSERT INTO notes VALUES (1, 'n'); INSERT INTO orders VALUES (3, 'fig', 3, NULL); UPDATE orders SET qty = 30 WHERE id = 3; COMMIT");
    pg.psql("INSERT INTO notes VALUES (2, 'm'); DELETE FROM notes WHERE id = 1");

    server.wait_until("orders' six changes", Duration::from_secs(60), || {
        ledger.records("orders").len() >= 6
    });
    let got = ledger.records("orders");
    let changes: Vec<(String, i64)> = got.iter().map(change).collect();
    assert_eq!(
        changes,
        [
            ("INSERT".to_string(), 1),
            ("MODIFY".to_string(), 1),
            ("REMOVE".to_string(), 1),
            ("INSERT".to_string(), 2),
            ("INSERT".to_string(), 3),
            ("MODIFY".to_string(), 3),
        ],
        "in commit order, notes left out: {got:#?}"
    );
    // The shape: DynamoDB-Streams-like, plain JSON values.
    let insert = &got[0];
    assert_eq!(insert["eventSource"], "lampyr:postgres");
    assert_eq!(insert["eventVersion"], "1.0");
    assert_eq!(
        insert["eventSourceARN"],
        "lampyr:postgres:postgres/public.orders"
    );
    let db = &insert["dbChange"];
    assert_eq!(db["Keys"], json!({"id": 1}));
    assert_eq!(
        db["NewImage"],
        json!({"id": 1, "item": "apple", "qty": 1, "meta": {"gift": true}})
    );
    assert!(db.get("OldImage").is_none(), "{db}");
    assert_eq!(
        (db["Schema"].as_str(), db["Table"].as_str()),
        (Some("public"), Some("orders"))
    );
    assert!(db["TransactionId"].as_u64().is_some(), "{db}");
    assert!(db["ApproximateCreationDateTime"].as_f64().is_some(), "{db}");
    let lsn = db["SequenceNumber"].as_str().unwrap();
    assert!(
        lsn.contains('/') && lsn.chars().all(|c| c == '/' || c.is_ascii_hexdigit()),
        "{lsn}"
    );
    assert_eq!(
        insert["eventID"],
        format!("{}-0", db["CommitSequenceNumber"].as_str().unwrap())
    );
    let update = &got[1]["dbChange"];
    assert_eq!(
        update["OldImage"]["qty"], 1,
        "REPLICA IDENTITY FULL: the old row"
    );
    assert_eq!(update["NewImage"]["qty"], 5);
    let delete = &got[2]["dbChange"];
    assert_eq!(delete["Keys"], json!({"id": 1}));
    assert_eq!(delete["OldImage"]["item"], "apple");
    assert!(delete.get("NewImage").is_none());
    // The multi-row transaction: whole in one invocation (with whatever
    // else fit in the batch), its changes together and in order.
    let runs = ledger.runs("orders");
    let tx = runs
        .iter()
        .find(|(_, r)| r.iter().any(|r| r["dbChange"]["Keys"]["id"] == 2))
        .unwrap();
    let xid =
        tx.1.iter()
            .find(|r| r["dbChange"]["Keys"]["id"] == 2)
            .unwrap()["dbChange"]["TransactionId"]
            .clone();
    let at: Vec<usize> = (0..tx.1.len())
        .filter(|&i| tx.1[i]["dbChange"]["TransactionId"] == xid)
        .collect();
    assert_eq!(at.len(), 3, "{:#?}", tx.1);
    assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{:#?}", tx.1);
    let seq: Vec<&str> = at
        .iter()
        .map(|&i| tx.1[i]["dbChange"]["SequenceNumber"].as_str().unwrap())
        .collect();
    assert!(
        seq.windows(2).all(|w| lsn_num(w[0]) < lsn_num(w[1])),
        "{seq:?}"
    );
    assert!(runs.iter().all(|(_, r)| r.len() <= 10), "batch_size = 10");
    // Recorded as the postgres trigger's invocations.
    let mut rec = Value::Null;
    server.wait_until("the invocation's record", Duration::from_secs(10), || {
        rec = server
            .api("GET", &format!("/invocations/{}", tx.0), None)
            .json();
        rec["records"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(rec["records"][0]["trigger"], "postgres", "{rec}");

    // Only removals, of every table.
    server.wait_until("removals' two changes", Duration::from_secs(60), || {
        ledger.records("removals").len() >= 2
    });
    let removals: Vec<(String, String)> = ledger
        .records("removals")
        .iter()
        .map(|r| {
            (
                r["eventName"].as_str().unwrap().to_string(),
                r["dbChange"]["Table"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        removals,
        [
            ("REMOVE".to_string(), "orders".to_string()),
            ("REMOVE".to_string(), "notes".to_string())
        ]
    );
    // Everything read, the slots keep nothing back.
    server.wait_until("the slots to catch up", Duration::from_secs(30), || {
        pg.psql("SELECT 1");
        pg.slot_lag("removals").is_some_and(|l| l == 0)
    });

    // The password is never shown: not by `lampyr info --json`, not in
    // the log.
    let out = server.cli(&["info", "orders", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("postgres://postgres:***@127.0.0.1"), "{info}");
    assert!(!info.contains(&pg.password), "{info}");

    // Deleting the trigger drops its slot; deleting the function drops its.
    server.deploy(
        Fixture::node(
            "orders",
            &format!(
                "network = \"host\"\n[env]\nLEDGER_PORT = \"{}\"\n",
                ledger.port
            ),
            HANDLER,
        )
        .path(),
    );
    common::wait_until(
        "the removed trigger's slot to go",
        Duration::from_secs(30),
        &mut || !pg.has_slot("lampyr_orders_postgres"),
    );
    // A second reader of a slot is refused, and its removal leaves the
    // slot to its reader.
    server.deploy(function("copycat", &ledger, &pg.dsn(), "", "slot = \"removals\"\n").path());
    server.wait_until(
        "the second reader to be refused",
        Duration::from_secs(10),
        || {
            server.log().join("\n").contains(
                "the replication slot removals is read by a trigger of the function removals",
            )
        },
    );
    let r = server.api("DELETE", "/functions/copycat", None);
    assert!(r.status < 300, "{}", r.text());
    let r = server.api("DELETE", "/functions/removals", None);
    assert!(r.status < 300, "{}", r.text());
    common::wait_until(
        "the deleted function's slot to go",
        Duration::from_secs(30),
        &mut || !pg.has_slot("removals"),
    );
    let log = server.log().join("\n");
    assert!(log.contains("replication slot dropped"), "{log}");
    assert!(
        !server
            .log()
            .iter()
            .any(|l| l.contains("replication slot dropped") && l.contains("copycat")),
        "{log}"
    );
    assert!(!log.contains(&pg.password), "the log shows the password");
}

fn lsn_num(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Failed invocations are retried and dead-lettered as the function's
/// `retries` says, and the slot moves on; a database that cannot be
/// reached, or that refuses the password, does not stop the server, and
/// the log says why without the password.
#[test]
fn failures_retry_and_dead_letter_and_an_unreachable_database_is_retried() {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE jobs (id int PRIMARY KEY, what text)");
    let (_cfg, path) = config_file("[async]\nretry_base = \"100ms\"\n");
    let server = Server::start_with(&["--config", &path]);
    let ledger = Ledger::start();
    ledger.state.lock().unwrap().fail = true;
    server.deploy(function("flaky", &ledger, &pg.dsn(), "retries = 1\n", "").path());
    // A closed port on loopback, and a wrong password.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    server.deploy(
        function(
            "nowhere",
            &ledger,
            &format!("postgres://postgres:closed-port-pw@127.0.0.1:{closed}/postgres"),
            "",
            "",
        )
        .path(),
    );
    let wrong = "Wr0ng-pass-word";
    server.deploy(
        function(
            "refused",
            &ledger,
            &format!("postgres://postgres:{wrong}@127.0.0.1:{}/postgres", pg.port),
            "",
            "",
        )
        .path(),
    );
    wait_slot(&pg, "lampyr_flaky_postgres");
    pg.psql("INSERT INTO jobs VALUES (7, 'x')");

    server.wait_until("two runs of the change", Duration::from_secs(60), || {
        ledger.runs("flaky").len() >= 2
    });
    let mut dlq = Value::Null;
    server.wait_until("the dead letter", Duration::from_secs(30), || {
        dlq = server.api("GET", "/functions/flaky/dlq", None).json();
        dlq["events"].as_array().is_some_and(|e| !e.is_empty())
    });
    let runs = ledger.runs("flaky");
    assert_eq!(runs.len(), 2, "1 + retries");
    assert_eq!(runs[0].0, runs[1].0, "one event, tried twice");
    let dead = &dlq["events"][0];
    assert_eq!(dead["request_id"], runs[0].0.as_str());
    assert_eq!(
        dead["payload"]["Records"][0]["dbChange"]["NewImage"],
        json!({"id": 7, "what": "x"}),
        "{dead}"
    );
    server.wait_until("the slot to move on", Duration::from_secs(30), || {
        pg.slot_lag("lampyr_flaky_postgres") == Some(0)
    });

    // The server serves on, and says why the others wait.
    server.wait_until("the log to say why", Duration::from_secs(30), || {
        let log = server.log().join("\n");
        log.contains("cannot connect to postgres@127.0.0.1")
            && log.contains("password authentication failed")
    });
    let r = common::request("GET", &format!("{}/healthz", server.url), None, &[]);
    assert_eq!(r.status, 200);
    let log = server.log().join("\n");
    assert!(log.contains("trying again in"), "{log}");
    for secret in [wrong, "closed-port-pw", &pg.password] {
        assert!(!log.contains(secret), "the log shows a password");
    }
    let info = server.cli(&["info", "refused", "--json"]);
    assert!(!String::from_utf8_lossy(&info.stdout).contains(wrong));
}

/// A database that requires TLS, as cloud databases do: PostgreSQL with
/// `ssl = on` and a certificate the test's CA signed. `sslmode=verify-full`
/// with that CA as `sslrootcert` connects over TLS and delivers changes;
/// `sslmode=require` encrypts without checking the certificate; another CA
/// is refused, and the status says so and what to set; no password shows.
#[test]
fn a_database_over_tls_is_checked_against_sslrootcert() {
    use common::tls::Ca;
    let ca = Ca::new("lampyr test database CA");
    let pg = Postgres::start_tls(&ca.issue(&["127.0.0.1", "localhost"]));
    pg.psql("CREATE TABLE items (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let root = ca.write(dir.path(), "root.crt");
    let other = Ca::new("another CA").write(dir.path(), "other.crt");
    let server = Server::start();
    let ledger = Ledger::start();
    let with = |query: &str| format!("{}?{query}", pg.dsn());
    let verified = with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        root.display()
    ));
    server.deploy(function("verified", &ledger, &verified, "", "").path());
    server.deploy(function("encrypted", &ledger, &with("sslmode=require"), "", "").path());
    let wrong = with(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        other.display()
    ));
    server.deploy(function("wrongca", &ledger, &wrong, "", "").path());
    wait_slot(&pg, "lampyr_verified_postgres");
    wait_slot(&pg, "lampyr_encrypted_postgres");
    pg.psql("INSERT INTO items VALUES (1)");
    server.wait_until("the change, over TLS", Duration::from_secs(60), || {
        ledger.records("verified").len() == 1 && ledger.records("encrypted").len() == 1
    });
    assert_eq!(
        change(&ledger.records("verified")[0]),
        ("INSERT".to_string(), 1)
    );
    server.wait_until("TLS connections", Duration::from_secs(30), || {
        pg.tls_connections() >= 2
    });

    let mut source = Value::Null;
    server.wait_until("the refusal in the status", Duration::from_secs(60), || {
        source = server.info("wrongca")["sources"][0].clone();
        source["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate is refused"))
    });
    let e = source["last_error"].as_str().unwrap();
    assert!(
        e.contains("signed by a CA lampyr does not trust")
            && e.contains(&format!("sslrootcert ({})", other.display()))
            && e.contains(
                "set sslrootcert in the DSN to the CA that signed the server's certificate"
            ),
        "{e}"
    );
    assert!(!pg.has_slot("lampyr_wrongca_postgres"));
    let shown = format!(
        "{}{}{}",
        server.log().join("\n"),
        server.api("GET", "/functions/verified", None).text(),
        String::from_utf8_lossy(&server.cli(&["info", "wrongca", "--json"]).stdout)
    );
    assert!(!shown.contains(&pg.password), "a password shows: {shown}");
}

/// SIGKILL between queueing and the slot's advance, made certain: the
/// slot is put back where it was before the changes (a copy kept by the
/// test), so the restarted server reads every one of them again; their
/// idempotency keys drop them all. Then a kill while changes flow: every
/// change is processed at least once, and the only duplicates are events
/// the killed server was running.
#[test]
fn a_killed_server_goes_on_from_its_slot_and_queues_nothing_twice() {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE items (id int PRIMARY KEY)");
    let slot = "lampyr_counter_postgres";
    // The test makes the slot (the trigger uses it as it is), and a copy
    // at the same position.
    pg.psql(&format!(
        "SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'wal2json')"
    ));
    pg.psql(&format!(
        "SELECT 1 FROM pg_copy_logical_replication_slot('{slot}', 'rewind')"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ledger = Ledger::start();
    let fixture = function(
        "counter",
        &ledger,
        &pg.dsn(),
        "max_instances = 1\n",
        "tables = [\"items\"]\n",
    );
    let mut server = Server::start_in(&data, &[]);
    server.deploy(fixture.path());
    for t in 0..5 {
        let values: Vec<String> = (1..=4).map(|i| format!("({})", t * 4 + i)).collect();
        pg.psql(&format!("INSERT INTO items VALUES {}", values.join(", ")));
    }
    let ids = |ledger: &Ledger| -> Vec<i64> {
        ledger
            .records("counter")
            .iter()
            .map(|r| r["dbChange"]["Keys"]["id"].as_i64().unwrap())
            .collect()
    };
    server.wait_until("twenty changes", Duration::from_secs(60), || {
        ids(&ledger).len() >= 20
    });
    server.wait_until(
        "the queue to empty and the slot to move",
        Duration::from_secs(30),
        || server.info("counter")["events"]["pending"] == 0 && pg.slot_lag(slot) == Some(0),
    );
    server.kill();
    // As if the kill had come after the queueing, before the advance.
    pg.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    pg.psql(&format!(
        "SELECT 1 FROM pg_copy_logical_replication_slot('rewind', '{slot}')"
    ));
    pg.psql("SELECT pg_drop_replication_slot('rewind')");
    assert!(pg.slot_lag(slot).unwrap() > 0);
    let mut server = Server::start_in(&data, &[]);
    pg.psql("INSERT INTO items VALUES (21)");
    server.wait_until(
        "the change made after the restart",
        Duration::from_secs(60),
        || ids(&ledger).contains(&21),
    );
    server.wait_until(
        "the slot to catch up again",
        Duration::from_secs(30),
        || pg.slot_lag(slot) == Some(0),
    );
    let mut got = ids(&ledger);
    got.sort();
    assert_eq!(
        got,
        (1..=21).collect::<Vec<_>>(),
        "every change once, none twice"
    );
    let log = server.log().join("\n");
    assert!(
        log.contains("were queued before: not queued twice"),
        "{log}"
    );

    // A kill while changes flow, one transaction per change.
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for id in 100..160 {
                pg.psql(&format!("INSERT INTO items VALUES ({id})"));
            }
        });
        server.wait_until("changes to flow", Duration::from_secs(60), || {
            ids(&ledger).iter().filter(|&&i| i >= 100).count() >= 10
        });
        server.kill();
        writer.join().unwrap();
    });
    let server = Server::start_in(&data, &[]);
    server.wait_until("every change", Duration::from_secs(90), || {
        let got = ids(&ledger);
        (100..160).all(|i| got.contains(&i))
    });
    server.wait_until("the queue to empty", Duration::from_secs(30), || {
        server.info("counter")["events"]["pending"] == 0
    });
    let got = ids(&ledger);
    let extra = got.len() - 81;
    // max_instances = 1: the killed server was running at most one event.
    assert!(extra <= 1, "{extra} duplicates: {got:?}");
}
