//! Runtimes named as the clouds name them (`nodejs20.x`, `python3.11`,
//! Function Compute's `nodejs20`): a function asking for the version this
//! host runs deploys and runs, on the interpreter of that version when
//! several are installed side by side; one asking for a version that is not
//! installed is refused at deploy, naming what is.

mod common;

use common::{installed, Fixture, Server};
use serde_json::Value;

/// `major.minor` of a version.
fn minor(v: &str) -> String {
    v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// Every Python `lampyr doctor` lists: (version, path), the default first.
fn pythons(server: &Server) -> Vec<(String, String)> {
    let out = server.cli(&["doctor", "--json"]);
    assert!(out.status.success());
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let py = d["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["runtime"] == "python")
        .unwrap_or_else(|| panic!("doctor found no python: {d}"))
        .clone();
    let mut all = vec![(
        py["version"].as_str().unwrap().to_string(),
        py["path"].as_str().unwrap().to_string(),
    )];
    for o in py["others"].as_array().into_iter().flatten() {
        all.push((
            o["version"].as_str().unwrap().to_string(),
            o["path"].as_str().unwrap().to_string(),
        ));
    }
    all
}

#[test]
fn cloud_runtime_identifiers_run_on_the_matching_interpreter() {
    let server = Server::start();
    let (node, python) = installed(&server);
    for (name, runtime, file, code) in [
        (
            "lambda-node",
            format!("nodejs{node}.x"),
            "index.js",
            "exports.handler = async () => process.versions.node;\n",
        ),
        (
            "fc-node",
            format!("nodejs{node}"),
            "index.js",
            "exports.handler = async () => process.versions.node;\n",
        ),
        (
            "lambda-python",
            format!("python{python}"),
            "index.py",
            "import platform\ndef handler(event, context):\n    return platform.python_version()\n",
        ),
    ] {
        let f = Fixture::new(
            &format!("name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"index.handler\"\n"),
            &[(file, code)],
        );
        server.deploy(f.path());
        let r = server.call("POST", name, Some(b"{}"));
        assert_eq!(r.status, 200, "{runtime}: {}", r.text());
        let ran = r.text();
        let ran = ran.trim_matches('"');
        let want = runtime
            .trim_start_matches("nodejs")
            .trim_start_matches("python")
            .trim_end_matches(".x");
        assert!(
            ran == want || ran.starts_with(&format!("{want}.")),
            "{runtime} ran on {ran}"
        );
        let info = server.info(name);
        assert_eq!(info["spec"]["runtime_version"], want, "{info}");
    }
}

#[test]
fn a_version_this_host_does_not_have_is_refused_at_deploy_naming_the_installed_one() {
    let server = Server::start();
    let (node, python) = installed(&server);
    let other_node = format!("nodejs{}.x", node.parse::<u32>().unwrap() + 2);
    let minors: Vec<String> = pythons(&server).iter().map(|(v, _)| minor(v)).collect();
    let other_python = (9..40)
        .map(|m| format!("python3.{m}"))
        .find(|p| !minors.contains(&p["python".len()..].to_string()))
        .unwrap();
    let other_python = other_python.as_str();
    for (runtime, file, code, installed) in [
        (
            other_node.as_str(),
            "index.js",
            "exports.handler = async () => 1;\n",
            node.as_str(),
        ),
        (
            other_python,
            "index.py",
            "def handler(e, c):\n    return 1\n",
            python.as_str(),
        ),
    ] {
        let f = Fixture::new(
            &format!("name = \"wrong\"\nruntime = \"{runtime}\"\nhandler = \"index.handler\"\n"),
            &[(file, code)],
        );
        let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
        assert!(!out.status.success(), "{runtime} deployed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                runtime
                    .trim_start_matches("nodejs")
                    .trim_end_matches(".x")
                    .trim_start_matches("python")
            ) && err.contains("installed")
                && err.contains(installed),
            "{runtime}: {err}"
        );
        assert!(err.contains("lampyr doctor"), "{err}");
    }
    // A name that is no runtime at all is refused by the manifest check.
    let f = Fixture::new(
        "name = \"wrong\"\nruntime = \"java21\"\nhandler = \"index.handler\"\n",
        &[("index.js", "")],
    );
    let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nodejs20.x"));
}

/// A function that runs on `runtime` and returns the Python version it ran
/// on.
fn python_version_fixture(name: &str, runtime: &str) -> Fixture {
    Fixture::new(
        &format!("name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"index.handler\"\n"),
        &[(
            "index.py",
            "import platform\ndef handler(event, context):\n    return platform.python_version()\n",
        )],
    )
}

fn ran_on(server: &Server, name: &str) -> String {
    let r = server.call("POST", name, Some(b"{}"));
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    r.text().trim_matches('"').to_string()
}

#[test]
fn several_python_versions_run_side_by_side_each_on_its_own_interpreter() {
    let server = Server::start();
    let all = pythons(&server);
    // One interpreter per minor version, the default's first.
    let mut minors: Vec<String> = Vec::new();
    for (v, _) in &all {
        if !minors.contains(&minor(v)) {
            minors.push(minor(v));
        }
    }
    assert!(
        minors.len() >= 2,
        "this test needs two Python minor versions installed side by side (pyenv, /usr/bin/python3.N); lampyr doctor found {all:?}"
    );
    // The default and up to two others, each its own function.
    let picked: Vec<&String> = minors.iter().take(3).collect();
    for m in &picked {
        let name = format!("py{}", m.replace('.', ""));
        server.deploy(python_version_fixture(&name, &format!("python{m}")).path());
    }
    // Called in turn twice: the instances of every version live side by side.
    for _ in 0..2 {
        for m in &picked {
            let name = format!("py{}", m.replace('.', ""));
            let ran = ran_on(&server, &name);
            assert_eq!(&minor(&ran), *m, "{name} ran on {ran}");
        }
    }
    // A version other than the default's starts from scratch (the pools
    // and the zygote run the default interpreter); then it is warm.
    let name = "fresh";
    server.deploy(python_version_fixture(name, &format!("python{}", picked[1])).path());
    let first = server.call("POST", name, Some(b"{}"));
    assert_eq!(
        first.header("x-lampyr-start"),
        Some("cold"),
        "{}",
        first.text()
    );
    let again = server.call("POST", name, Some(b"{}"));
    assert_eq!(again.header("x-lampyr-start"), Some("warm"));
}

#[test]
fn the_server_config_names_the_interpreters() {
    let probe = Server::start();
    let all = pythons(&probe);
    drop(probe);
    let default_minor = minor(&all[0].0);
    let others: Vec<&(String, String)> = all
        .iter()
        .filter(|(v, _)| minor(v) != default_minor)
        .collect();
    assert!(
        others.len() >= 2,
        "this test needs three Python minor versions installed side by side; lampyr doctor found {all:?}"
    );
    // Only the configured one besides the default: no scan.
    let (chosen_version, chosen_path) = others[0];
    let (left_out, _) = others
        .iter()
        .find(|(v, _)| minor(v) != minor(chosen_version))
        .unwrap();
    let (_cfg, path) = common::config_file(&format!(
        "[runtimes.python]\nscan = false\ninterpreters = [\"{chosen_path}\"]\n"
    ));
    let server = Server::start_with(&["--config", &path]);
    let m = minor(chosen_version);
    server.deploy(python_version_fixture("configured", &format!("python{m}")).path());
    assert_eq!(minor(&ran_on(&server, "configured")), m);
    let f = python_version_fixture("not-configured", &format!("python{}", minor(left_out)));
    let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "{left_out} deployed without being configured"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(chosen_version)
            && err.contains(&all[0].0)
            && err.contains("[runtimes.python]"),
        "{err}"
    );
}
