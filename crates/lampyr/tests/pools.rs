//! Runtime pools: pre-started generic instances specialised on demand.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, Server};

fn pool(server: &Server, runtime: &str) -> serde_json::Value {
    let pools = server.api("GET", "/pools", None).json();
    pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["runtime"] == runtime)
        .unwrap()
        .clone()
}

#[test]
fn a_cold_start_takes_a_pooled_instance_and_the_pool_refills() {
    let server = Server::start();
    server.wait_pools_ready();
    server.deploy(Fixture::node("quick", "", "exports.handler = async () => 'quick';").path());
    server
        .deploy(Fixture::python("quick-py", "", "def handler(e, c):\n    return 'quick'\n").path());
    for (name, runtime) in [("quick", "nodejs"), ("quick-py", "python")] {
        let r = server.get(name);
        assert_eq!(r.text(), "quick");
        assert_eq!(r.header("x-lampyr-start"), Some("pooled"));
        let timing = r.header("server-timing").unwrap();
        assert!(
            !timing.contains("runtime;"),
            "the runtime was already up: {timing}"
        );
        assert!(
            timing.contains("init;") && timing.contains("sandbox;"),
            "{timing}"
        );
        server.wait_until("the pool to refill", Duration::from_secs(30), || {
            pool(&server, runtime)["ready"] == 1
        });
        // The refilled instance is generic: another function gets it.
        assert_eq!(server.get(name).header("x-lampyr-start"), Some("warm"));
    }
}

#[test]
fn pools_can_be_turned_off() {
    let server = Server::start_with(&["--pools", "off"]);
    assert!(server
        .api("GET", "/pools", None)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["enabled"] == false && p["ready"] == 0));
    server.deploy(Fixture::node("slow-start", "", "exports.handler = async () => 1;").path());
    let r = server.get("slow-start");
    assert_eq!(r.header("x-lampyr-start"), Some("cold"));
    assert!(r.header("server-timing").unwrap().contains("runtime;"));
}

#[test]
fn pools_grow_under_bursts_of_cold_starts_within_their_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("lampyr-server.toml");
    std::fs::write(
        &cfg,
        "[pools]\nnodejs_min = 1\nnodejs_max = 3\npython_min = 0\npython_max = 0\n",
    )
    .unwrap();
    let server = Arc::new(Server::start_in(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    ));
    server.wait_pools_ready();
    assert_eq!(pool(&server, "python")["enabled"], false);
    for i in 0..4 {
        server.deploy(
            Fixture::node(
                &format!("burst-{i}"),
                "",
                "exports.handler = async () => 'ok';",
            )
            .path(),
        );
    }
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let s = server.clone();
            std::thread::spawn(move || s.get(&format!("burst-{i}")))
        })
        .collect();
    let kinds: Vec<String> = calls
        .into_iter()
        .map(|c| {
            c.join()
                .unwrap()
                .header("x-lampyr-start")
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "pooled"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "cold"),
        "the burst outran the pool: {kinds:?}"
    );
    // The misses raised the pool's target to its maximum, and it fills up.
    server.wait_until(
        "the pool to grow to its max",
        Duration::from_secs(60),
        || {
            let p = pool(&server, "nodejs");
            p["target"] == 3 && p["ready"] == 3
        },
    );
}

#[test]
fn reserved_instances_and_host_network_functions() {
    let server = Server::start();
    server.wait_pools_ready();
    server.deploy(
        Fixture::node(
            "kept",
            "min_instances = 1\n",
            "exports.handler = async () => 'kept';",
        )
        .path(),
    );
    server.wait_until("the reserved instance", Duration::from_secs(20), || {
        server.info("kept")["instance_states"]["idle"] == 1
    });
    assert_eq!(server.get("kept").header("x-lampyr-start"), Some("warm"));
    server.deploy(
        Fixture::node(
            "hosted",
            "network = \"host\"\n",
            "exports.handler = async () => 'hosted';",
        )
        .path(),
    );
    assert_eq!(
        server.get("hosted").header("x-lampyr-start"),
        Some("cold"),
        "host-network functions never take pooled instances"
    );
}

#[test]
fn python_instances_are_forked_from_the_zygote_with_fresh_state() {
    let server = Server::start();
    let code = "import os, random\nSEED = random.random()\ndef handler(e, c):\n    if e['rawPath'] == '/exit':\n        os._exit(3)\n    if e['rawPath'] == '/kill':\n        os.kill(os.getpid(), 9)\n    cmd = open('/proc/self/cmdline').read().split('\\0')\n    return {'cmd': cmd, 'pid': os.getpid(), 'uid': os.getuid(), 'seed': SEED, 'now': random.random(), 'own_group': os.getpgid(0) == os.getpid() and os.getsid(0) == os.getpid()}\n";
    let mut seeds = Vec::new();
    for i in 0..2 {
        let name = format!("forked-{i}");
        server.deploy(Fixture::python(&name, "", code).path());
        server.wait_pools_ready();
        let r = server.get(&name);
        assert_eq!(r.header("x-lampyr-start"), Some("pooled"));
        let v = r.json();
        let cmd = v["cmd"].as_array().unwrap();
        assert!(
            cmd.iter()
                .any(|a| a.as_str().unwrap().ends_with("zygote.py")),
            "forked from the zygote: {v}"
        );
        assert_eq!(v["pid"], 2, "PID 2 of its own sandbox");
        assert_ne!(v["uid"], 0);
        assert_eq!(
            v["own_group"], true,
            "its own session: no group signal reaches other instances"
        );
        seeds.push(v["now"].as_f64().unwrap());
    }
    assert_ne!(
        seeds[0], seeds[1],
        "random state is reseeded in every instance"
    );
    // A forked instance's end is reported like any other's.
    server.deploy(Fixture::python("forked-exit", "", code).path());
    for (path, reason) in [("exit", "exit code 3"), ("kill", "signal 9")] {
        server.wait_pools_ready();
        let r = server.get(&format!("forked-exit/{path}"));
        assert_eq!(r.status, 502, "{}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(reason), "{msg}");
    }
}

#[test]
fn a_reserved_instance_that_dies_is_replaced_at_once() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "keeper",
            "min_instances = 1\n",
            "exports.handler = async (e) => { if (e.rawPath === '/die') process.exit(7); return 'kept'; };",
        )
        .path(),
    );
    server.wait_until("the reserved instance", Duration::from_secs(20), || {
        server.info("keeper")["instance_states"]["idle"] == 1
    });
    let r = server.get("keeper/die");
    assert_eq!(r.status, 502);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exit code 7"));
    server.wait_until(
        "a replacement reserved instance",
        Duration::from_secs(20),
        || server.info("keeper")["instance_states"]["idle"] == 1,
    );
    assert_eq!(server.get("keeper").header("x-lampyr-start"), Some("warm"));
}
