//! Python functions import what a fresh interpreter imports, whether their
//! instance was forked from the zygote (pooled) or started from scratch,
//! wherever the host's Python is installed (here: outside `/usr`).

mod common;

use std::process::Command;

use common::{Fixture, Server};

/// Lists, with the interpreter lampyr runs, the standard library's modules
/// (and every codec the host knows) that import in a fresh interpreter on the host. Left
/// out: modules that need a display or act when imported.
const LIST: &str = r#"
import importlib, json, pkgutil, sys, encodings.aliases
skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
        "lib2to3", "ensurepip", "pydoc_data", "__phello__", "__hello__", "msilib",
        "winreg", "winsound", "_winapi", "msvcrt", "nt", "_msi", "_overlapped",
        "xxsubtype", "xxlimited", "xxlimited_35", "_xxtestfuzz", "_testcapi"}
names = set()
for top in sorted(sys.stdlib_module_names):
    if top in skip or top.startswith("_test"):
        continue
    names.add(top)
    try:
        m = importlib.import_module(top)
    except Exception:
        continue
    for info in pkgutil.walk_packages(getattr(m, "__path__", []) or [], top + "."):
        if not any(part in skip or part == "tests" for part in info.name.split(".")):
            names.add(info.name)
import codecs as _codecs
def _known(c):
    try:
        _codecs.lookup(c)
        return True
    except LookupError:
        return False
codecs = sorted(c for c in set(encodings.aliases.aliases.values()) if _known(c))
print(json.dumps({"modules": sorted(names), "codecs": codecs}))
"#;

/// Imports each module named in the event (each in order, in this one
/// process, as a function would) and looks up each codec; returns what
/// failed.
const PROBE: &str = r#"
import codecs, importlib, json, sys
def handler(event, context):
    failed = []
    for name in event["modules"]:
        try:
            importlib.import_module(name)
        except BaseException as e:
            failed.append(name)
    bad_codecs = []
    for c in event["codecs"]:
        try:
            codecs.lookup(c)
        except BaseException:
            bad_codecs.append(c)
    try:
        "bücher.example".encode("idna")
    except BaseException:
        bad_codecs.append("idna encode")
    return {"failed": failed, "codecs": bad_codecs, "prefix": sys.prefix,
            "importlib": importlib.__file__}
"#;

/// What fails to import on the host itself, each in a fresh interpreter.
fn host_failures(python: &str, modules: &[serde_json::Value]) -> Vec<String> {
    let names: Vec<&str> = modules.iter().map(|m| m.as_str().unwrap()).collect();
    let script = format!(
        "import importlib, json\nfailed = []\nfor n in {names:?}:\n    try:\n        importlib.import_module(n)\n    except BaseException:\n        failed.append(n)\nprint(json.dumps(failed))\n"
    );
    let out = Command::new(python)
        .args(["-s", "-c", &script])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pooled_python_imports_what_a_fresh_interpreter_does() {
    let server = Server::start();
    let doctor = server.api("GET", "/doctor", None).json();
    let python = doctor["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["runtime"] == "python")
        .and_then(|r| r["path"].as_str())
        .expect("a Python runtime")
        .to_string();
    let out = Command::new(&python)
        .args(["-s", "-c", LIST])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let modules = list["modules"].as_array().unwrap().clone();
    assert!(modules.len() > 500, "only {} modules listed", modules.len());
    let host_failed = host_failures(&python, &modules);
    let event = serde_json::to_vec(&serde_json::json!({
        "modules": modules,
        "codecs": list["codecs"],
    }))
    .unwrap();
    server
        .deploy(Fixture::python("stdlib", "timeout = \"120s\"\nmemory_mb = 1024\n", PROBE).path());
    let host_prefix = {
        let out = Command::new(&python)
            .args(["-s", "-c", "import sys; print(sys.prefix)"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut results = Vec::new();
    let mut homes = Vec::new();
    for pooled in [true, false] {
        let mut s = None;
        let server = if pooled {
            &server
        } else {
            s = Some(Server::start_with(&["--pools", "off"]));
            let s = s.as_ref().unwrap();
            s.deploy(
                Fixture::python("stdlib", "timeout = \"120s\"\nmemory_mb = 1024\n", PROBE).path(),
            );
            s
        };
        if pooled {
            server.wait_pools_ready();
        }
        let r = server.api("POST", "/functions/stdlib/invoke", Some(&event));
        assert_eq!(r.status, 200, "{}", r.text());
        if pooled {
            assert_eq!(r.header("x-lampyr-start"), Some("pooled"));
        } else {
            assert_eq!(r.header("x-lampyr-start"), Some("cold"));
        }
        let v = r.json();
        assert_eq!(v["codecs"], serde_json::json!([]), "pooled: {pooled}");
        let failed: Vec<String> = v["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        // A module that fails in the jail fails on the host too: the jail
        // shows the runtime, its libraries and what they open (the modules
        // that need a display are left out of the list above).
        let only_here: Vec<&String> = failed.iter().filter(|f| !host_failed.contains(f)).collect();
        eprintln!("pooled {pooled}: {} of {} modules fail to import in the jail ({} on the host); jail only: {only_here:?}", failed.len(), modules.len(), host_failed.len());
        let prefix = v["prefix"].as_str().unwrap().to_string();
        let importlib = v["importlib"].as_str().unwrap().to_string();
        eprintln!("pooled {pooled}: sys.prefix {prefix}, importlib {importlib}");
        results.push(failed);
        homes.push((prefix, importlib));
        drop(s);
    }
    assert_eq!(
        results[0], results[1],
        "a pooled instance imports exactly what a fresh one does"
    );
    // Both load the standard library from the same place: the runtime as
    // the jail shows it, never the host's path to it.
    assert_eq!(homes[0], homes[1], "pooled, then unpooled");
    let (prefix, importlib) = &homes[0];
    let expected = if host_prefix.starts_with("/usr") {
        host_prefix.clone()
    } else {
        lampyr_sandbox::GUEST_RUNTIME_PREFIX.to_string()
    };
    assert_eq!(prefix, &expected, "the host's prefix is {host_prefix}");
    assert!(
        importlib.starts_with(&format!("{expected}/lib/python3"))
            && importlib.ends_with("/importlib/__init__.py"),
        "{importlib}"
    );
    if !host_prefix.starts_with("/usr") {
        assert!(
            !importlib.starts_with(&host_prefix),
            "the jail shows the host's path {host_prefix}: {importlib}"
        );
    }
    let only_in_the_jail: Vec<&String> = results[0]
        .iter()
        .filter(|f| !host_failed.contains(f))
        .collect();
    assert!(
        only_in_the_jail.is_empty(),
        "modules that import on the host fail in the jail: {only_in_the_jail:?}"
    );
}

/// pydantic, requests and numpy, installed with `pip install --target` into
/// the function, import and work in pooled and unpooled instances; requests
/// reaches a server of the test's own through the egress network.
#[test]
fn real_packages_work_pooled_and_unpooled() {
    let deps = std::env::var("LAMPYR_TEST_PYDEPS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/python")
        });
    assert!(
        deps.join(".complete").exists(),
        "{} has no packages: run the tests with scripts/test, which installs them (pip install --target {} pydantic requests numpy)",
        deps.display(),
        deps.display()
    );
    let net = common::net::FakeInternet::start();
    let (_d, cfg) = common::config_file(&net.config());
    let code = r#"import json
import numpy as np
import pydantic
import requests

class Order(pydantic.BaseModel):
    item: str
    quantity: int

def handler(event, context):
    order = Order.model_validate({"item": "tea", "quantity": "3"})
    page = requests.get("http://example.test/", timeout=10)
    return {
        "statusCode": 200,
        "body": json.dumps({
            "order": order.model_dump(),
            "sum": int(np.arange(10).sum()),
            "page": page.text,
            "versions": [np.__version__, pydantic.VERSION, requests.__version__],
            "files": [np.__file__, pydantic.__file__],
        }),
    }
"#;
    let f = Fixture::python("real", "memory_mb = 512\ntimeout = \"60s\"\n", code);
    common::copy_tree(&deps, f.path());
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    for pools in ["on", "off"] {
        let server = Server::start_with(&["--config", &cfg, "--pools", pools]);
        if pools == "on" {
            server.wait_pools_ready();
        }
        // The deploy's check loads it, in a pooled instance with pools on,
        // one started from scratch without; that instance serves.
        let r = server.deploy_package("real", &pkg);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = server.get("real");
        assert_eq!(r.header("x-lampyr-start"), Some("warm"));
        assert_eq!(r.status, 200, "pools {pools}: {}", r.text());
        let v = r.json();
        assert_eq!(
            v["order"],
            serde_json::json!({"item": "tea", "quantity": 3})
        );
        assert_eq!(v["sum"], 45);
        assert_eq!(v["page"], common::net::PAGE);
        for file in v["files"].as_array().unwrap() {
            assert!(
                file.as_str().unwrap().starts_with("/var/task/"),
                "{file}: the function's own copy"
            );
        }
    }
}
