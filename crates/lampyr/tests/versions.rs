//! Versions and aliases on a real server: calling versions by number,
//! aliases (weighted, sticky by routing key), rollback, the HTTP trigger's
//! alias, retention, and everything surviving a restart.

mod common;

use std::time::Duration;

use common::{config_file, request, Fixture, Server};

/// A function whose answer says which code ran.
fn versioned(name: &str, extra: &str, tag: &str) -> Fixture {
    Fixture::node(
        name,
        extra,
        &format!("exports.handler = async () => ({{ statusCode: 200, body: '{tag}' }});"),
    )
}

/// Deploys `tag`'s code of `name` with the CLI; returns the version.
fn deploy_cli(server: &Server, name: &str, extra: &str, tag: &str, args: &[&str]) -> u64 {
    let f = versioned(name, extra, tag);
    let mut all = vec!["--json", "deploy", f.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    assert!(
        out.status.success(),
        "deploy {tag}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["version"].as_u64().unwrap()
}

fn cli_json(server: &Server, args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    let text = if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    let v = serde_json::from_slice(text).unwrap_or_else(|_| {
        panic!(
            "lampyr {args:?} did not print JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// Runs `lampyr --json ARGS`, which must succeed; returns what it printed.
fn cli_ok(server: &Server, args: &[&str]) -> serde_json::Value {
    let (ok, v) = cli_json(server, args);
    assert!(ok, "lampyr {args:?}: {v}");
    v
}

/// Calls `/fn/TARGET` and returns (body, version, alias).
fn call(server: &Server, target: &str, key: Option<&str>) -> (String, u64, Option<String>) {
    let headers: Vec<(&str, &str)> = key
        .map(|k| ("x-lampyr-routing-key", k))
        .into_iter()
        .collect();
    let r = request(
        "GET",
        &format!("{}/fn/{target}", server.url),
        None,
        &headers,
    );
    assert_eq!(r.status, 200, "{target}: {}", r.text());
    (
        r.text(),
        r.header("x-lampyr-version").unwrap().parse().unwrap(),
        r.header("x-lampyr-alias").map(str::to_string),
    )
}

fn error_code(r: &common::Resp) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn versions_are_called_by_number_and_aliases_route_weigh_and_roll_back() {
    let server = Server::start();
    for (i, d) in ["first", "second", "third"].iter().enumerate() {
        let v = deploy_cli(
            &server,
            "f",
            "",
            &format!("v{}", i + 1),
            &["--description", d],
        );
        assert_eq!(v, i as u64 + 1);
    }
    let list = cli_ok(&server, &["versions", "f"]);
    let versions = list["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[1]["description"], "second");
    assert_eq!(versions[2]["latest"], true);
    assert_eq!(versions[0]["code_sha256"].as_str().unwrap().len(), 64);
    assert!(versions[0]["created_at"].as_str().unwrap().ends_with('Z'));

    // Each version by number; $LATEST and the bare name are the newest.
    for n in 1..=3u64 {
        let (body, v, alias) = call(&server, &format!("f@{n}"), None);
        assert_eq!((body, v, alias), (format!("v{n}"), n, None));
    }
    assert_eq!(call(&server, "f@$LATEST", None).1, 3);
    assert_eq!(call(&server, "f/some/path", None).1, 3);

    // An alias.
    let a = cli_ok(&server, &["alias", "set", "f", "live", "2"]);
    assert_eq!(a["version"], 2);
    assert_eq!(server.info("f")["aliases"][0]["alias"], "live");
    let text = server.cli(&["info", "f"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("live → version 2"));
    assert_eq!(
        call(&server, "f@live/x", None),
        ("v2".into(), 2, Some("live".into()))
    );

    // Errors name what is wrong.
    let r = server.api(
        "PUT",
        "/functions/f/aliases/live",
        Some(br#"{"version": 9}"#),
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "version_not_found")
    );
    assert!(r.text().contains("version 9"), "{}", r.text());
    let r = server.api(
        "PUT",
        "/functions/f/aliases/live",
        Some(br#"{"version": 1, "weight": [2, 1.5]}"#),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_weight"));
    assert!(r.text().contains("1.5"), "{}", r.text());
    let r = server.api(
        "PUT",
        "/functions/f/aliases/Live",
        Some(br#"{"version": 1}"#),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_alias"));
    let r = request("GET", &format!("{}/fn/f@nope", server.url), None, &[]);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "alias_not_found")
    );
    assert!(r.text().contains("'nope'"), "{}", r.text());
    let (ok, e) = cli_json(&server, &["versions", "rm", "f", "2"]);
    assert!(!ok);
    assert_eq!(e["error"]["code"], "version_in_use");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("'live'"),
        "{e}"
    );
    let (ok, e) = cli_json(
        &server,
        &["alias", "set", "f", "live", "1", "--weight", "3=2"],
    );
    assert!(!ok);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("weight 2"),
        "{e}"
    );

    // Weighted: version 3 on 30% of callers, each caller on one version.
    cli_ok(
        &server,
        &["alias", "set", "f", "live", "1", "--weight", "3=0.3"],
    );
    let calls = 300;
    let mut on_three = 0;
    for i in 0..calls {
        let key = format!("caller-{i}");
        let (_, v, _) = call(&server, "f@live", Some(&key));
        assert!(v == 1 || v == 3, "{v}");
        if v == 3 {
            on_three += 1;
        }
    }
    let share = on_three as f64 / calls as f64;
    assert!(
        (share - 0.3).abs() < 0.08,
        "version 3 got {share} of the calls"
    );
    for key in ["caller-7", "caller-8", "someone"] {
        let first = call(&server, "f@live", Some(key)).1;
        for _ in 0..10 {
            assert_eq!(call(&server, "f@live", Some(key)).1, first, "{key}");
        }
    }

    // The API's invoke and `lampyr invoke` take qualifiers too.
    let r = server.api("POST", "/functions/f@1/invoke", Some(b"{}"));
    assert_eq!(r.header("x-lampyr-version"), Some("1"), "{}", r.text());
    let r = server.api("POST", "/functions/f/invoke?qualifier=2", Some(b"{}"));
    assert_eq!(r.header("x-lampyr-version"), Some("2"), "{}", r.text());
    let inv = cli_ok(&server, &["invoke", "f@live"]);
    assert_eq!(inv["alias"], "live");

    // Rollback is immediate: every next call is on the earlier target.
    let a = cli_ok(&server, &["rollback", "f", "live"]);
    assert_eq!((a["version"].as_u64(), a.get("weight")), (Some(2), None));
    for i in 0..20 {
        assert_eq!(call(&server, "f@live", Some(&format!("caller-{i}"))).1, 2);
    }
    let (_, list) = cli_json(&server, &["alias", "ls", "f"]);
    assert_eq!(list["aliases"][0]["alias"], "live");
    // Rolled back to where it started: nothing earlier to go back to.
    assert!(list["aliases"][0].get("previous").is_none(), "{list}");

    // Version 1 is no alias's any more: it can go, and is gone.
    cli_ok(&server, &["versions", "rm", "f", "1"]);
    let r = request("GET", &format!("{}/fn/f@1", server.url), None, &[]);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "version_not_found")
    );
    let (ok, e) = cli_json(&server, &["versions", "rm", "f", "3"]);
    assert!(!ok);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("$LATEST"),
        "{e}"
    );
    // With two aliases and no HTTP alias, rollback must be told which.
    cli_ok(&server, &["alias", "set", "f", "beta", "3"]);
    let (ok, e) = cli_json(&server, &["rollback", "f"]);
    assert!(!ok);
    assert_eq!(e["error"]["code"], "alias_required", "{e}");
    cli_ok(&server, &["alias", "rm", "f", "beta"]);
    cli_ok(&server, &["alias", "rm", "f", "live"]);
    let r = request("GET", &format!("{}/fn/f@live", server.url), None, &[]);
    assert_eq!(r.status, 404);
}

#[test]
fn rollback_leaves_calls_in_flight_on_their_version() {
    let server = Server::start();
    let slow = |tag: &str| {
        Fixture::node(
            "slow",
            "timeout = \"20s\"\n",
            &format!(
                "exports.handler = async (e) => {{ if (e.rawQueryString === 'wait') await new Promise(r => setTimeout(r, 1500)); return {{ statusCode: 200, body: '{tag}' }}; }};"
            ),
        )
    };
    server.deploy_checked(slow("v1").path());
    server.deploy_checked(slow("v2").path());
    cli_ok(&server, &["alias", "set", "slow", "live", "1"]);
    cli_ok(&server, &["alias", "set", "slow", "live", "2"]);
    let url = format!("{}/fn/slow@live?wait", server.url);
    let in_flight = std::thread::spawn(move || request("GET", &url, None, &[]));
    // The slow call has reached version 2's instance.
    server.wait_until(
        "the slow call to be running",
        Duration::from_secs(20),
        || {
            server.instances("slow") > 0
                && server.info("slow")["instance_states"]["busy"].as_u64() == Some(1)
        },
    );
    cli_ok(&server, &["rollback", "slow"]);
    assert_eq!(call(&server, "slow@live", None).0, "v1");
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "v2"));
    assert_eq!(r.header("x-lampyr-version"), Some("2"));
}

#[test]
fn the_http_trigger_serves_its_alias_and_everything_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (_cfg, path) = config_file("[versions]\nkeep = 1\n");
    let extra = ["--config", path.as_str()];
    let mut server = Server::start_in(data.path(), &extra);
    let http_live = "[[triggers]]\ntype = \"http\"\nalias = \"live\"\n";
    // The alias must exist, or be made by the deploy.
    let f = versioned("web", http_live, "v1");
    let out = server.cli(&["--json", "deploy", f.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["code"], "invalid_alias");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("'live'"),
        "{e}"
    );
    // A bad alias name is refused before anything is recorded.
    let out = server.cli(&[
        "--json",
        "deploy",
        f.path().to_str().unwrap(),
        "--alias",
        "Live!",
    ]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["code"], "invalid_alias", "{e}");
    assert_eq!(
        server.api("GET", "/functions/web/versions", None).status,
        404
    );
    assert_eq!(
        deploy_cli(&server, "web", http_live, "v1", &["--alias", "live"]),
        1
    );
    for i in 2..=5 {
        assert_eq!(
            deploy_cli(&server, "web", http_live, &format!("v{i}"), &[]),
            i
        );
    }
    // /fn/web is the alias's (still version 1), the newest is 5.
    assert_eq!(
        call(&server, "web", None),
        ("v1".into(), 1, Some("live".into()))
    );
    assert_eq!(call(&server, "web@$LATEST", None).1, 5);
    // Retention: one unaliased old version besides the newest.
    let (_, list) = cli_json(&server, &["versions", "web"]);
    let left: Vec<u64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(left, vec![1, 4, 5]);
    let r = server.api("DELETE", "/functions/web/aliases/live", None);
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_alias"));

    cli_ok(
        &server,
        &["alias", "set", "web", "live", "4", "--weight", "5=0.25"],
    );
    // The same package again: no new version, but the alias it names.
    assert_eq!(
        deploy_cli(&server, "web", http_live, "v5", &["--alias", "beta"]),
        5
    );
    assert_eq!(alias_of(&server, "web", "beta")["version"], 5);
    server.stop();
    let server = Server::start_in(data.path(), &extra);
    let (_, list) = cli_json(&server, &["alias", "ls", "web"]);
    let aliases = list["aliases"].as_array().unwrap();
    assert_eq!(aliases.len(), 2);
    let live = aliases.iter().find(|a| a["alias"] == "live").unwrap();
    assert_eq!(live["version"], 4);
    assert_eq!(live["weight"], serde_json::json!([5, 0.25]));
    assert_eq!(live["previous"]["version"], 1);
    let v = call(&server, "web", Some("k")).1;
    assert!(v == 4 || v == 5, "{v}");
    // The history survived too.
    cli_ok(&server, &["rollback", "web", "live"]);
    assert_eq!(
        call(&server, "web", None),
        ("v1".into(), 1, Some("live".into()))
    );
}

/// The alias `alias` of `name` as `lampyr alias ls --json` shows it.
fn alias_of(server: &Server, name: &str, alias: &str) -> serde_json::Value {
    let list = cli_ok(server, &["alias", "ls", name]);
    list["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alias"] == alias)
        .cloned()
        .unwrap_or_else(|| panic!("no alias {alias}: {list}"))
}

/// Calls `name@alias` (each call a new routing key) until its canary is
/// decided; returns the alias then.
fn call_until_decided(server: &Server, name: &str, alias: &str) -> serde_json::Value {
    let mut i = 0;
    let mut decided = None;
    server.wait_until("the canary to be decided", Duration::from_secs(60), || {
        for _ in 0..5 {
            i += 1;
            let key = format!("k{i}");
            request(
                "GET",
                &format!("{}/fn/{name}@{alias}", server.url),
                None,
                &[("x-lampyr-routing-key", key.as_str())],
            );
        }
        let a = alias_of(server, name, alias);
        let done = a.get("canary").is_none();
        decided = Some(a);
        done
    });
    decided.unwrap()
}

#[test]
fn a_canary_that_fails_rolls_back_and_one_that_works_is_promoted_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    assert_eq!(
        deploy_cli(&server, "can", "", "v1", &["--alias", "live"]),
        1
    );
    // Version 2 fails every call: rolled back on its own, saying why.
    let broken = Fixture::node(
        "can",
        "",
        "exports.handler = async () => { throw new Error('broken'); };",
    );
    let out = server.cli(&[
        "--json",
        "deploy",
        broken.path().to_str().unwrap(),
        "--alias",
        "live",
        "--canary",
        "50%/2s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["alias"]["weight"], serde_json::json!([2, 0.5]));
    assert_eq!(d["alias"]["canary"]["to"], 2);
    let a = call_until_decided(&server, "can", "live");
    assert_eq!(
        (a["version"].as_u64(), a.get("weight")),
        (Some(1), None),
        "{a}"
    );
    let note = a["note"].as_str().unwrap();
    assert!(
        note.contains("rolled back to version 1") && note.contains("version 2 had"),
        "{note}"
    );
    let text = server.cli(&["alias", "ls", "can"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("rolled back"));
    assert!(server
        .log()
        .iter()
        .any(|l| l.contains("canary rolled back")));

    // Version 3 works: promoted, even with a restart in the middle.
    assert_eq!(
        deploy_cli(
            &server,
            "can",
            "",
            "v3",
            &["--alias", "live", "--canary", "50%/3s"]
        ),
        3
    );
    server.stop();
    let server = Server::start_in(data.path(), &[]);
    let a = alias_of(&server, "can", "live");
    assert_eq!(a["canary"]["to"], 3, "the canary survived the restart: {a}");
    let a = call_until_decided(&server, "can", "live");
    assert_eq!(
        (a["version"].as_u64(), a.get("weight")),
        (Some(3), None),
        "{a}"
    );
    assert!(
        a["note"].as_str().unwrap().contains("promoted version 3"),
        "{a}"
    );
    assert_eq!(call(&server, "can@live", None).0, "v3");
    // A canary needs an alias.
    let pkg = lampyr_store::pack_dir(broken.path()).unwrap();
    let r = server.api("PUT", "/functions/can?canary=5%25/1m", Some(&pkg));
    assert_eq!((r.status, error_code(&r).as_str()), (400, "alias_required"));
    let out = server.cli(&[
        "deploy",
        broken.path().to_str().unwrap(),
        "--canary",
        "5%/1m",
    ]);
    assert!(!out.status.success());
}

/// `version`'s instances as `lampyr versions --json` shows them.
fn instances_of(server: &Server, name: &str, version: u64) -> serde_json::Value {
    let list = cli_ok(server, &["versions", name]);
    list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .map(|v| v["instances"].clone())
        .unwrap_or_else(|| panic!("no version {version}: {list}"))
}

fn total(c: &serde_json::Value) -> u64 {
    ["starting", "idle", "busy", "draining", "stopping"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn reserved_instances_per_alias_are_ready_first_and_move_with_the_alias() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path(), &[]);
    // Unchecked deploys: no instance until something asks for one.
    server.deploy(versioned("res", "", "v1").path());
    server.deploy(versioned("res", "", "v2").path());
    server.deploy(versioned("res", "", "v3").path());
    assert_eq!(server.instances("res"), 0);
    let a = cli_ok(
        &server,
        &["alias", "set", "res", "live", "1", "--min-instances", "2"],
    );
    assert_eq!(a["min_instances"], 2);
    server.wait_until(
        "two idle instances of version 1",
        Duration::from_secs(30),
        || instances_of(&server, "res", 1)["idle"] == 2,
    );
    // The first call finds one ready.
    let r = request("GET", &format!("{}/fn/res@live", server.url), None, &[]);
    assert_eq!((r.status, r.header("x-lampyr-start")), (200, Some("warm")));

    // The alias moves: so do its reserved instances.
    cli_ok(&server, &["alias", "set", "res", "live", "2"]);
    server.wait_until(
        "version 2 reserved, version 1 gone",
        Duration::from_secs(30),
        || {
            instances_of(&server, "res", 2)["idle"] == 2
                && total(&instances_of(&server, "res", 1)) == 0
        },
    );
    let r = request("GET", &format!("{}/fn/res@live", server.url), None, &[]);
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    assert_eq!(r.text(), "v2");

    // They come back after a restart, before any call.
    server.stop();
    let server = Server::start_in(data.path(), &[]);
    server.wait_until(
        "version 2 reserved after the restart",
        Duration::from_secs(30),
        || instances_of(&server, "res", 2)["idle"] == 2,
    );
    assert_eq!(total(&instances_of(&server, "res", 3)), 0);
    cli_ok(&server, &["alias", "rm", "res", "live"]);
    server.wait_until(
        "version 2's reserved instances to stop",
        Duration::from_secs(30),
        || total(&instances_of(&server, "res", 2)) == 0,
    );
}

#[test]
fn logs_and_stats_are_split_by_version() {
    let server = Server::start();
    for tag in ["one", "two"] {
        server.deploy(
            Fixture::node(
                "split",
                "",
                &format!(
                    "exports.handler = async () => {{ console.log('ran {tag}'); return {{ statusCode: 200, body: '{tag}' }}; }};"
                ),
            )
            .path(),
        );
    }
    for _ in 0..3 {
        assert_eq!(call(&server, "split@1", None).0, "one");
    }
    assert_eq!(call(&server, "split@2", None).0, "two");
    let mut lines = Vec::new();
    server.wait_until("version 1's log", Duration::from_secs(20), || {
        let v = cli_ok(&server, &["logs", "split", "--version", "1"]);
        lines = v["records"].as_array().unwrap().clone();
        lines.iter().filter(|l| l["message"] == "ran one").count() == 3
    });
    assert!(lines.iter().all(|l| l["version"] == 1), "{lines:?}");
    let mut stats = serde_json::Value::Null;
    server.wait_until("both versions' records", Duration::from_secs(20), || {
        let v = cli_ok(&server, &["stats", "split"]);
        stats = v;
        stats["by_version"]["1"]["count"] == 3 && stats["by_version"]["2"]["count"] == 1
    });
    assert_eq!(stats["count"], 4);
    assert_eq!(stats["by_version"]["2"]["errors"], 0);
    let text = server.cli(&["stats", "split"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("version"));
}

#[test]
fn a_deploy_leaves_an_aliased_version_its_warm_instances() {
    let server = Server::start();
    server.deploy_checked(versioned("warm", "", "v1").path());
    cli_ok(&server, &["alias", "set", "warm", "live", "1"]);
    let r = request("GET", &format!("{}/fn/warm@live", server.url), None, &[]);
    assert_eq!(
        (r.text().as_str(), r.header("x-lampyr-start")),
        ("v1", Some("warm"))
    );
    server.deploy_checked(versioned("warm", "", "v2").path());
    // Version 1 kept its instance: the alias's next call is warm.
    let r = request("GET", &format!("{}/fn/warm@live", server.url), None, &[]);
    assert_eq!(
        (r.text().as_str(), r.header("x-lampyr-start")),
        ("v1", Some("warm"))
    );
    assert_eq!(call(&server, "warm", None).0, "v2");
    // Once no alias routes to it, its idle instances stop.
    cli_ok(&server, &["alias", "set", "warm", "live", "2"]);
    server.wait_until(
        "version 1's instances to stop",
        Duration::from_secs(30),
        || total(&instances_of(&server, "warm", 1)) == 0,
    );
}

#[test]
fn a_timer_that_names_an_alias_fires_on_the_alias_version() {
    let server = Server::start();
    let timer = |alias: &str| {
        format!("[[triggers]]\ntype = \"timer\"\ncron = \"@every 1s\"\nalias = \"{alias}\"\n")
    };
    // The alias must exist (or be made by the deploy), named by its key.
    let f = versioned("tick", &timer("nope"), "v1");
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let r = server.api("PUT", "/functions/tick", Some(&pkg));
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_alias"));
    assert!(r.text().contains("triggers[0].alias"), "{}", r.text());
    assert_eq!(
        deploy_cli(&server, "tick", &timer("live"), "v1", &["--alias", "live"]),
        1
    );
    assert_eq!(deploy_cli(&server, "tick", &timer("live"), "v2", &[]), 2);
    let deployed = lampyr_store::rfc3339(std::time::SystemTime::now());
    // Firings after version 2 was deployed still run version 1, the alias's.
    let mut fired = Vec::new();
    server.wait_until(
        "two firings after the deploy",
        Duration::from_secs(30),
        || {
            let r = server.api("GET", "/functions/tick/invocations?limit=50", None);
            fired = r.json()["invocations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| {
                    i["trigger"] == "timer" && i["start_time"].as_str().unwrap() > deployed.as_str()
                })
                .cloned()
                .collect();
            fired.len() >= 2
        },
    );
    assert!(fired.iter().all(|i| i["version"] == 1), "{fired:?}");
    // The alias cannot go while the timer calls it.
    let r = server.api("DELETE", "/functions/tick/aliases/live", None);
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_alias"));
    assert!(r.text().contains("triggers[0].alias"), "{}", r.text());
}
