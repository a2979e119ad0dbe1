//! The function service: reuse, concurrency, queueing and 429, scale to
//! zero, reserved instances and redeploys under load.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{parent_of, Fixture, Server};

/// A Node.js handler that sleeps for `?ms=N` and reports its instance.
const SLEEPER: &str = r#"
const id = Math.random().toString(36).slice(2);
exports.handler = async (e) => {
  const ms = Number((e.queryStringParameters || {}).ms || 0);
  await new Promise((r) => setTimeout(r, ms));
  return { statusCode: 200, body: id };
};
"#;

fn busy(server: &Server, name: &str) -> u64 {
    server.info(name)["instance_states"]["busy"]
        .as_u64()
        .unwrap()
}

/// Processes of `server` whose sandbox specification names instance `id`'s
/// code slot (instance ids are only unique within one server).
fn instance_processes(server: &Server, id: &str) -> usize {
    let needle = format!("/slots/{id}\"");
    let descends = |mut pid: u32| {
        while pid > 1 {
            match parent_of(pid) {
                Some(p) if p == server.pid() => return true,
                Some(p) => pid = p,
                None => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|&pid| {
                    std::fs::read(format!("/proc/{pid}/environ"))
                        .map(|env| String::from_utf8_lossy(&env).contains(&needle))
                        .unwrap_or(false)
                        && descends(pid)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn idle_instances_stop_and_the_function_scales_to_zero() {
    let server = Server::start();
    server.deploy(Fixture::node("napper", "idle_timeout = \"1s\"\n", SLEEPER).path());
    server.deploy(
        Fixture::python(
            "napper-py",
            "idle_timeout = \"1s\"\n",
            "def handler(e, c):\n    return 'hi'\n",
        )
        .path(),
    );
    for name in ["napper", "napper-py"] {
        assert_eq!(
            server.instances(name),
            0,
            "no instances before the first request"
        );
        let first = server.get(name);
        assert_eq!(first.status, 200);
        assert_eq!(server.instances(name), 1);
        // The instance that served it, from its invocation record.
        let rid = first.header("x-lampyr-request-id").unwrap().to_string();
        let mut instance = String::new();
        server.wait_until("the invocation record", Duration::from_secs(10), || {
            let r = server.api("GET", &format!("/invocations/{rid}"), None);
            if r.status != 200 {
                return false;
            }
            instance = r.json()["instance"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            true
        });
        let alive_before = instance_processes(&server, &instance);
        server.wait_until("scale to zero", Duration::from_secs(15), || {
            server.instances(name) == 0
        });
        // Zero means gone: no process of the instance is left (where its
        // processes can be told apart: jailed instances name their code slot).
        if alive_before > 0 {
            assert_eq!(
                instance_processes(&server, &instance),
                0,
                "instance {instance} still has processes at zero instances"
            );
        }
        let r = server.get(name);
        assert!(
            common::fresh(&r),
            "a new instance served it: {:?}",
            r.header("x-lampyr-start")
        );
    }
}

#[test]
fn reserved_instances_are_warm_before_the_first_request() {
    let server = Server::start();
    server.deploy(
        Fixture::python(
            "reserved",
            "min_instances = 2\nidle_timeout = \"200ms\"\n",
            "def handler(e, c):\n    return 'ready'\n",
        )
        .path(),
    );
    server.wait_until("two reserved instances", Duration::from_secs(20), || {
        server.info("reserved")["instance_states"]["idle"] == 2
    });
    let r = server.get("reserved");
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    // They outlive the idle timeout.
    let before = std::time::Instant::now();
    server.wait_until(
        "several idle timeouts to pass",
        Duration::from_secs(5),
        || before.elapsed() > Duration::from_secs(1),
    );
    assert_eq!(server.instances("reserved"), 2);
}

#[test]
fn concurrency_and_max_instances_bound_the_work() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "pair",
            "concurrency = 2\nmax_instances = 1\nqueue_timeout = \"20s\"\n",
            SLEEPER,
        )
        .path(),
    );
    let server = Arc::new(server);
    // Three slow requests: two share the one instance, the third waits.
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let s = server.clone();
            std::thread::spawn(move || s.get("pair?ms=700"))
        })
        .collect();
    server.wait_until("two requests running", Duration::from_secs(20), || {
        busy(&server, "pair") == 1
    });
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|r| r.status == 200));
    let ids: std::collections::HashSet<_> = results.iter().map(|r| r.text()).collect();
    assert_eq!(ids.len(), 1, "one instance served all three");
    assert_eq!(server.instances("pair"), 1);
    assert!(
        results.iter().any(|r| {
            let t = r.header("server-timing").unwrap();
            let q: f64 = t
                .split("queue;dur=")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            q > 100.0
        }),
        "the third request queued"
    );
}

#[test]
fn past_the_queue_limit_requests_get_429_naming_the_function() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "narrow",
            "max_instances = 1\nmax_queue = 1\nqueue_timeout = \"1s\"\n",
            SLEEPER,
        )
        .path(),
    );
    let server = Arc::new(server);
    let s = server.clone();
    let first = std::thread::spawn(move || s.get("narrow?ms=4000"));
    server.wait_until("the instance to be busy", Duration::from_secs(20), || {
        busy(&server, "narrow") == 1
    });
    // One request may wait...
    let s = server.clone();
    let waiting = std::thread::spawn(move || s.get("narrow"));
    server.wait_until("a request in the queue", Duration::from_secs(20), || {
        server.info("narrow")["instance_states"]["queued"] == 1
    });
    // ...the next one is refused at once: the queue is full.
    let r = server.get("narrow");
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "throttled");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("'narrow'") && msg.contains("1 instance") && msg.contains("max_queue = 1"),
        "{msg}"
    );
    // The waiting one gives up after queue_timeout.
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 429);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("'narrow'") && msg.contains("queue_timeout"),
        "{msg}"
    );
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(server.get("narrow").status, 200, "free again afterwards");
}

#[test]
fn a_redeploy_lets_in_flight_requests_finish_on_the_old_version() {
    let server = Server::start();
    let f = Fixture::node("rolling", "", "exports.handler = async (e) => { await new Promise((r) => setTimeout(r, Number((e.queryStringParameters||{}).ms||0))); return 'v1'; };");
    server.deploy(f.path());
    let server = Arc::new(server);
    let s = server.clone();
    let old = std::thread::spawn(move || s.get("rolling?ms=1500"));
    server.wait_until("v1 to be busy", Duration::from_secs(20), || {
        busy(&server, "rolling") == 1
    });
    f.write("index.js", "exports.handler = async () => 'v2';");
    assert_eq!(server.deploy(f.path())["version"], 2);
    let r = server.get("rolling");
    assert_eq!(r.text(), "v2", "new requests go to the new version");
    assert_eq!(r.header("x-lampyr-version"), Some("2"));
    assert_eq!(server.info("rolling")["instance_states"]["draining"], 1);
    let r = old.join().unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "v1"),
        "the in-flight request finished on v1"
    );
    assert_eq!(r.header("x-lampyr-version"), Some("1"));
    server.wait_until("the old instance to stop", Duration::from_secs(10), || {
        server.instances("rolling") == 1
    });
    assert_eq!(server.get("rolling").header("x-lampyr-start"), Some("warm"));
}

#[test]
fn identical_redeploys_make_no_new_version() {
    let server = Server::start();
    let f = Fixture::python("same", "", "def handler(e, c):\n    return 1\n");
    assert_eq!(server.deploy(f.path())["changed"], true);
    let again = server.deploy(f.path());
    assert_eq!(
        (again["changed"].as_bool(), again["version"].as_u64()),
        (Some(false), Some(1))
    );
}

#[test]
fn an_abandoned_request_still_holds_its_slot_until_it_finishes() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "patient",
            "max_instances = 1\nqueue_timeout = \"20s\"\n",
            SLEEPER,
        )
        .path(),
    );
    assert_eq!(server.get("patient").status, 200);
    // A client that gives up after 100 ms on a 1.5 s invocation.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(100)))
        .build()
        .into();
    assert!(agent
        .get(&format!("{}/fn/patient?ms=1500", server.url))
        .call()
        .is_err());
    // The invocation goes on, holding the instance's only slot, so the next
    // request waits for it instead of sharing the instance past its
    // concurrency of 1.
    assert_eq!(server.info("patient")["instance_states"]["busy"], 1);
    let r = server.get("patient");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    assert_eq!(server.instances("patient"), 1);
}
