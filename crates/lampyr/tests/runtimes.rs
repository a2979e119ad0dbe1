//! Runtimes named as the clouds name them (`nodejs20.x`, `python3.11`,
//! Function Compute's `nodejs20`): a function asking for the version this
//! host runs deploys and runs; one asking for another is refused at deploy,
//! naming what is installed.

mod common;

use common::{installed, Fixture, Server};

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
    let other_python = if python == "3.9" {
        "python3.12"
    } else {
        "python3.9"
    };
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
            ) && err.contains("runs ")
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
