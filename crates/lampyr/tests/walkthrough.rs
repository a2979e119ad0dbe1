//! The user's path: init, deploy, call; the demo; the CLI; persistence
//! across restarts; access control; manifest validation.

mod common;

use std::time::Duration;

use common::{request, Fixture, Server};

#[test]
fn three_steps_from_nothing_to_a_url() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    for (dir, runtime) in [("hello", "nodejs"), ("hello-py", "python")] {
        let path = work.path().join(dir);
        let out = server.cli(&["init", path.to_str().unwrap(), "--runtime", runtime]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = server.cli(&["deploy", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = format!("{}/fn/{dir}", server.url);
        assert!(stdout.contains(&url), "deploy prints the URL: {stdout}");
        assert!(stdout.contains("deployed version 1"), "{stdout}");
        let r = request("GET", &url, None, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Hello World\n");
        // The instance that passed the deploy's load check serves the first
        // request: warm.
        assert_eq!(r.header("x-lampyr-start"), Some("warm"));
        assert!(r.header("x-lampyr-request-id").is_some());
        let timing = r.header("server-timing").unwrap();
        assert!(timing.contains("exec;dur="), "{timing}");
        let r = request("GET", &format!("{url}?name=lampyr"), None, &[]);
        assert_eq!(r.text(), "Hello lampyr\n");
        assert_eq!(r.header("x-lampyr-start"), Some("warm"));
        assert!(r.header("server-timing").unwrap().contains("exec;dur="));
    }

    // The management commands, for people and for scripts.
    let out = server.cli(&["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "hello-py"]);
    let out = server.cli(&["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello-py"));
    let out = server.cli(&["info", "hello", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "hello");
    assert_eq!(v["runtime"], "nodejs");
    assert_eq!(v["version"], 1);
    assert_eq!(v["instances"], 1);

    let out = server.cli(&[
        "invoke",
        "hello",
        "--data",
        r#"{"queryStringParameters":{"name":"cli"}}"#,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["body"], "Hello cli\n");
    let rid = v["request_id"].as_str().unwrap().to_string();

    // The scaffold logs a line per call, tagged with the request id.
    server.wait_until("the invocation's log line", Duration::from_secs(10), || {
        let out = server.cli(&["logs", "hello", "--request-id", &rid, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["message"] == "greeting cli")
    });

    let out = server.cli(&["rm", "hello"]);
    assert!(out.status.success());
    assert_eq!(server.get("hello").status, 404);
    let out = server.cli(&["info", "hello"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'hello' does not exist"));
}

#[test]
fn demo_serves_the_bundled_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &["--demo"]);
    assert_eq!(server.get("hello-node").text(), "Hello World\n");
    assert_eq!(server.get("hello-python").text(), "Hello World\n");
}

#[test]
fn functions_versions_and_code_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let f = Fixture::node(
        "keep",
        "min_instances = 1\n",
        "exports.handler = async () => 'v1';",
    );
    let mut server = Server::start_in(&data, &[]);
    server.deploy(f.path());
    f.write("index.js", "exports.handler = async () => 'v2';");
    assert_eq!(server.deploy(f.path())["version"], 2);
    let token = server.token();
    server.kill();

    let server = Server::start_in(&data, &[]);
    assert_eq!(server.token(), token, "the token is kept");
    let info = server.info("keep");
    assert_eq!(info["version"], 2);
    // Reserved instances come back by themselves after a restart.
    server.wait_until("the reserved instance", Duration::from_secs(20), || {
        server.info("keep")["instance_states"]["idle"] == 1
    });
    let r = server.get("keep");
    assert_eq!(r.text(), "v2");
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
}

#[test]
fn management_api_needs_the_token() {
    let server = Server::start();
    let f = Fixture::node("guarded", "", "exports.handler = async () => 'ok';");
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let url = format!("{}/api/v1/functions/guarded", server.url);
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let r = request("PUT", &url, Some(&pkg), &headers);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        assert_eq!(request("DELETE", &url, None, &headers).status, 401);
        assert_eq!(
            request(
                "GET",
                &format!("{}/api/v1/functions", server.url),
                None,
                &headers
            )
            .status,
            401
        );
    }
    assert_eq!(server.get("guarded").status, 404, "nothing was deployed");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data.join("token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // LAMPYR_TOKEN overrides the token file.
    let out = std::process::Command::new(common::BIN)
        .args(["ls"])
        .env("LAMPYR_URL", &server.url)
        .env("LAMPYR_DATA_DIR", &server.data)
        .env("LAMPYR_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

#[test]
fn a_function_can_require_a_token_on_its_trigger() {
    let server = Server::start();
    let f = Fixture::python(
        "private",
        "auth = \"token\"\n",
        "def handler(e, c):\n    return 'secret'\n",
    );
    server.deploy(f.path());
    let r = server.get("private");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("private"));
    let token = server.info("private")["trigger_token"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/fn/private", server.url);
    let r = request(
        "GET",
        &url,
        None,
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "secret");
    let r = request("GET", &url, None, &[("authorization", "Bearer nope")]);
    assert_eq!(r.status, 401);
}

#[test]
fn bad_manifests_and_packages_are_refused_by_name() {
    let server = Server::start();
    let cases = [
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nmemroy_mb = 64\n", "memroy_mb"),
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nmemory_mb = 5\n", "memory_mb"),
        ("name = \"bad\"\nruntime = \"cobol\"\nhandler = \"index.handler\"\n", "runtime"),
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\ntimeout = \"forever\"\n", "timeout"),
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nidle_timeout = \"-1s\"\n", "idle_timeout"),
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"missing.handler\"\n", "missing.js"),
        ("name = \"bad\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n[env]\nAWS_LAMBDA_FUNCTION_NAME = \"x\"\n", "env.AWS_LAMBDA_FUNCTION_NAME"),
    ];
    for (manifest, key) in cases {
        let f = Fixture::new(
            manifest,
            &[("index.js", "exports.handler = async () => 1;")],
        );
        let pkg = lampyr_store::pack_dir(f.path()).unwrap();
        let r = server.api("PUT", "/functions/bad", Some(&pkg));
        assert_eq!(r.status, 400, "{manifest}: {}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(key),
            "{manifest}: message {msg:?} should name {key}"
        );
        // The CLI refuses it too, before uploading, naming the key.
        let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The URL's name and the manifest's must agree.
    let f = Fixture::node("right", "", "exports.handler = async () => 1;");
    let pkg = lampyr_store::pack_dir(f.path()).unwrap();
    let r = server.api("PUT", "/functions/wrong", Some(&pkg));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "name_mismatch");
    // Not an archive at all.
    let r = server.api("PUT", "/functions/bad", Some(b"hello"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_package");
    assert_eq!(
        server.api("GET", "/functions", None).json()["functions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn doctor_reports_runtimes_isolation_and_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["doctor", "--json", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rts = v["runtimes"].as_array().unwrap();
    assert!(rts.iter().all(|r| r["found"] == true), "{v}");
    assert!(!v["isolation"].as_array().unwrap().is_empty());
    assert_eq!(v["data_dir"], tmp.path().to_str().unwrap());
}
