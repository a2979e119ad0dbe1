//! Every failure gets a clear status and error, and touches nothing else.

mod common;

use std::time::Duration;

use common::{Fixture, Server};

#[test]
fn a_throwing_handler_gives_500_with_its_error() {
    let server = Server::start();
    server.deploy(Fixture::node("throws-node", "", "class BadThing extends Error { constructor(m) { super(m); this.name = 'BadThing'; } }\nexports.handler = async () => { throw new BadThing('it broke'); };").path());
    server.deploy(
        Fixture::python(
            "throws-py",
            "",
            "def handler(e, c):\n    raise ValueError('it broke too')\n",
        )
        .path(),
    );
    for (name, etype, emsg) in [
        ("throws-node", "BadThing", "it broke"),
        ("throws-py", "ValueError", "it broke too"),
    ] {
        let r = server.get(name);
        assert_eq!(r.status, 500);
        let v = r.json();
        assert_eq!(v["errorType"], etype);
        assert_eq!(v["errorMessage"], emsg);
        assert_eq!(v["error"]["code"], "function_error");
        let rid = r.header("x-lampyr-request-id").unwrap().to_string();
        server.wait_until(
            "the stack trace in the log",
            Duration::from_secs(10),
            || {
                server
                    .logs(name, &format!("request_id={rid}"))
                    .iter()
                    .any(|r| {
                        let m = r["message"].as_str().unwrap();
                        m.contains(emsg) && (m.contains("index.js") || m.contains("index.py"))
                    })
            },
        );
        // The instance survives a handled error.
        let r = server.get(name);
        assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    }
}

#[test]
fn a_handler_past_its_timeout_gets_504_and_its_instance_is_killed() {
    let server = Server::start();
    server.deploy(Fixture::node("slow-node", "timeout = \"300ms\"\n", "exports.handler = async (e) => { if (e.rawPath === '/hang') { while (true) {} } return 'fine'; };").path());
    server.deploy(Fixture::python("slow-py", "timeout = \"300ms\"\n", "import time\ndef handler(e, c):\n    if e['rawPath'] == '/hang':\n        time.sleep(60)\n    return 'fine'\n").path());
    for name in ["slow-node", "slow-py"] {
        let r = server.get(&format!("{name}/hang"));
        assert_eq!(r.status, 504, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "timeout");
        assert!(v["error"]["message"].as_str().unwrap().contains(name));
        server.wait_until(
            "the timed-out instance to go",
            Duration::from_secs(10),
            || server.instances(name) == 0,
        );
        let r = server.get(name);
        assert_eq!(r.status, 200);
        assert!(
            common::fresh(&r),
            "a fresh instance replaced the killed one"
        );
        let rid = r.header("x-lampyr-request-id").unwrap().to_string();
        assert!(!rid.is_empty());
        server.wait_until("the timeout in the log", Duration::from_secs(10), || {
            server.logs(name, "").iter().any(|r| {
                r["message"]
                    .as_str()
                    .unwrap()
                    .contains("Task timed out after 0.30 seconds")
            })
        });
    }
}

#[test]
fn a_dying_runtime_gives_502_naming_the_function_and_is_replaced() {
    let server = Server::start();
    server.deploy(Fixture::node("dies-node", "", "exports.handler = async (e) => { if (e.rawPath === '/die') { console.log('last words'); process.exit(3); } return 'alive'; };").path());
    server.deploy(Fixture::python("dies-py", "", "import os\ndef handler(e, c):\n    if e['rawPath'] == '/die':\n        print('last words', flush=True)\n        os.kill(os.getpid(), 9)\n    return 'alive'\n").path());
    for (name, reason) in [("dies-node", "exit code 3"), ("dies-py", "signal 9")] {
        assert_eq!(server.get(name).text(), "alive");
        let r = server.get(&format!("{name}/die"));
        assert_eq!(r.status, 502, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "runtime_exited");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(reason), "{msg}");
        let rid = r.header("x-lampyr-request-id").unwrap().to_string();
        server.wait_until("the last words in the log", Duration::from_secs(10), || {
            server
                .logs(name, &format!("request_id={rid}"))
                .iter()
                .any(|r| r["message"] == "last words")
        });
        let r = server.get(name);
        assert_eq!(r.text(), "alive");
        assert!(
            common::fresh(&r),
            "a new instance served it: {:?}",
            r.header("x-lampyr-start")
        );
    }
}

#[test]
fn a_module_that_fails_to_load_gives_a_clear_error() {
    let server = Server::start();
    server.deploy(Fixture::node("badinit", "", "throw new Error('cannot start');").path());
    server.deploy(
        Fixture::python(
            "badinit-py",
            "",
            "import no_such_module_here\ndef handler(e, c):\n    return 1\n",
        )
        .path(),
    );
    for (name, text) in [
        ("badinit", "cannot start"),
        ("badinit-py", "no_such_module_here"),
    ] {
        let r = server.get(name);
        assert_eq!(r.status, 502, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "init_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(text), "{msg}");
        assert_eq!(server.instances(name), 0);
    }
}

/// A package the load check refused, deployed again unchecked, runs its own
/// code: nothing of the refused deploy (the sandbox's view of its code
/// directory, removed with it) is left to hide the code.
#[test]
fn a_refused_package_deployed_again_unchecked_runs_its_code() {
    let server = Server::start();
    let f = Fixture::python(
        "refused-py",
        "",
        "raise KeyError('FROM_THE_MODULE')

def handler(event, context):
    return 'ok'
",
    );
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let r = server.api("PUT", "/functions/refused-py", Some(&pkg));
    assert_eq!(r.status, 422, "{}", r.text());
    server.deploy(f.path());
    let r = server.get("refused-py");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("FROM_THE_MODULE"), "{}", r.text());
}

#[test]
fn unknown_functions_and_oversized_bodies() {
    let server = Server::start();
    let r = server.get("nobody");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "function_not_found");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'nobody'"));

    server.deploy(
        Fixture::node(
            "sink",
            "",
            "exports.handler = async (e) => String((e.body || '').length);",
        )
        .path(),
    );
    let big = vec![b'x'; 6 * 1000 * 1000 + 1];
    let r = server.call("POST", "sink", Some(&big));
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    let ok = vec![b'x'; 5 * 1000 * 1000];
    let r = server.call("POST", "sink", Some(&ok));
    assert_eq!(r.text(), "5000000");
}

#[test]
fn one_functions_failure_does_not_touch_another() {
    let server = Server::start();
    server.deploy(Fixture::node("steady", "", "exports.handler = async () => 'steady';").path());
    server.deploy(
        Fixture::node(
            "crashy",
            "",
            "exports.handler = async () => { process.exit(1); };",
        )
        .path(),
    );
    assert_eq!(server.get("steady").text(), "steady");
    for _ in 0..3 {
        assert_eq!(server.get("crashy").status, 502);
        let r = server.get("steady");
        assert_eq!(r.text(), "steady");
        assert_eq!(
            r.header("x-lampyr-start"),
            Some("warm"),
            "the other function's instance is untouched"
        );
    }
}
