//! Custom runtimes (`runtime = "provided"`) over the Lambda Runtime API,
//! against a real server and real sandboxes, with the official runtime
//! clients: a shell `bootstrap` with curl (AWS's tutorial), `awslambdaric`
//! (PyPI), `aws-lambda-ric` (npm) and `lambda_runtime` (crates.io). Each
//! function answers with what it saw (its event, request id, deadline,
//! function ARN, client context, environment) so one check fits all.
//! The clients are installed by `scripts/test` into `target/test-deps`.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Fixture, Server};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provided")
}

/// A provided function `name` whose `bootstrap` is `bootstrap` (made
/// executable), with more manifest lines (`extra`), variables (`env`)
/// and files.
fn provided(
    name: &str,
    extra: &str,
    env: &str,
    bootstrap: &str,
    files: &[(&str, &str)],
) -> Fixture {
    let mut all = vec![("bootstrap", bootstrap)];
    all.extend_from_slice(files);
    let f = Fixture::new(
        &format!(
            "name = \"{name}\"\nruntime = \"provided.al2023\"\nhandler = \"function.handler\"\n{extra}[env]\nGREETING = \"hello\"\n{env}"
        ),
        &all,
    );
    let b = f.path().join("bootstrap");
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    f
}

/// Copies the tree `from` into `to` (modes kept).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A provided function `name` from the fixture directory `fixture` (its
/// `bootstrap` and code), with `handler`, more manifest lines and
/// variables, and `vendor` (a directory of packages) copied in as
/// `vendor/`.
fn from_fixture(
    name: &str,
    fixture: &str,
    handler: &str,
    env: &str,
    vendor: Option<&Path>,
) -> Fixture {
    let f = Fixture::new(
        &format!(
            "name = \"{name}\"\nruntime = \"provided\"\nhandler = \"{handler}\"\n[env]\nGREETING = \"hello\"\n{env}"
        ),
        &[],
    );
    copy_tree(&fixtures().join(fixture), f.path());
    if let Some(v) = vendor {
        copy_tree(v, &f.path().join("vendor"));
    }
    f
}

fn shell_bootstrap() -> String {
    std::fs::read_to_string(fixtures().join("shell/bootstrap")).unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Invokes `name` with a raw event through the management API.
fn invoke(server: &Server, name: &str, event: &Value) -> common::Resp {
    server.api(
        "POST",
        &format!("/functions/{name}/invoke"),
        Some(event.to_string().as_bytes()),
    )
}

/// Checks what a function reported seeing for one invocation of `event`.
fn check_seen(
    name: &str,
    handler: &str,
    seen: &Value,
    event: &Value,
    request_id: &str,
    timeout_ms: u64,
) {
    assert_eq!(&seen["event"], event, "{seen}");
    assert_eq!(seen["request_id"], request_id, "{seen}");
    assert_eq!(
        seen["arn"],
        format!("arn:aws:lambda:local:000000000000:function:{name}"),
        "{seen}"
    );
    // The deadline is the function's timeout after the call started.
    let deadline = seen["deadline_ms"].as_u64().expect("an integer deadline");
    let at = seen["now_ms"].as_u64().unwrap_or_else(now_ms);
    assert!(
        deadline > at && deadline <= at + timeout_ms,
        "deadline {deadline} vs now {at}: {seen}"
    );
    let env = &seen["env"];
    for (k, v) in [
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("_HANDLER", handler),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
        ("AWS_LAMBDA_FUNCTION_NAME", name),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_REGION", "local"),
        ("AWS_DEFAULT_REGION", "local"),
        ("GREETING", "hello"),
    ] {
        assert_eq!(env[k], v, "{k}: {seen}");
    }
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], format!("/lampyr/{name}"));
    let stream = env["AWS_LAMBDA_LOG_STREAM_NAME"].as_str().unwrap();
    assert!(stream.contains("/[1]"), "{stream}");
}

/// Events, results and context through the Runtime API: a raw event and an
/// HTTP request, the second warm on the same instance.
fn check_invocations(server: &Server, name: &str, handler: &str) {
    let event = serde_json::json!({"n": 1, "text": "hi there"});
    let r = invoke(server, name, &event);
    assert_eq!(r.status, 200, "{}", r.text());
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    check_seen(name, handler, &r.json(), &event, &rid, 10_000);
    let event = serde_json::json!({"n": 2});
    let r = invoke(server, name, &event);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    check_seen(name, handler, &r.json(), &event, &rid, 10_000);
    // Through Lambda's Invoke API, with a client context (base64 JSON, as
    // the SDKs send it).
    // The mobile SDKs' shape, which Rust's client requires in full.
    let cc = serde_json::json!({
        "client": {"installation_id": "i-1", "app_title": "t", "app_version_name": "1.0",
                   "app_version_code": "1", "app_package_name": "com.example"},
        "custom": {"user": "ada"},
        "env": {"platform": "test"},
    });
    let encoded =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cc.to_string());
    let auth = format!("Bearer {}", server.token());
    let event = serde_json::json!({"n": 3});
    let r = common::request(
        "POST",
        &format!("{}/2015-03-31/functions/{name}/invocations", server.url),
        Some(event.to_string().as_bytes()),
        &[
            ("authorization", &auth),
            ("x-amz-client-context", &encoded),
            (
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            ),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["event"], event, "{seen}");
    assert_eq!(seen["client_context"]["custom"]["user"], "ada", "{seen}");
    // Rust's lambda_runtime reads `environment` where the SDKs send `env`.
    let env = &seen["client_context"]["env"];
    assert!(
        env["platform"] == "test" || env == &serde_json::json!({}),
        "{seen}"
    );
    if let Some(t) = seen.get("trace_id") {
        assert_eq!(t, "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1");
    }
    // Through the HTTP trigger, the event is a payload-2.0 request.
    let r = server.call("POST", &format!("{name}/some/path"), Some(b"{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["event"]["rawPath"], "/some/path");
}

/// The client's report of a handler error through the Invoke API: its
/// type, its message and a stack.
fn check_handler_error(server: &Server, name: &str, error_type: Option<&str>, message: &str) {
    let r = invoke(
        server,
        name,
        &serde_json::json!({"action": "provided-fail"}),
    );
    assert_eq!(r.header("x-lampyr-function-error"), Some("Unhandled"));
    let v = r.json();
    match error_type {
        Some(t) => assert_eq!(v["errorType"], t, "{v}"),
        None => assert!(
            v["errorType"].as_str().is_some_and(|t| !t.is_empty()),
            "{v}"
        ),
    }
    assert_eq!(v["errorMessage"], message, "{v}");
}

/// Waits until the function's log has a line containing `text`.
fn wait_for_log(server: &Server, name: &str, text: &str) {
    server.wait_until(
        &format!("{text:?} in the log"),
        Duration::from_secs(10),
        || {
            server
                .logs(name, "")
                .iter()
                .any(|l| l["message"].as_str().unwrap_or("").contains(text))
        },
    );
}

#[test]
fn a_shell_bootstrap_with_curl_serves_events_and_sees_the_lambda_environment() {
    let server = Server::start();
    let f = provided("shell", "", "", &shell_bootstrap(), &[]);
    server.deploy(f.path());
    check_invocations(&server, "shell", "function.handler");
    // Its output is the function's log, attributed to the invocation.
    let r = invoke(&server, "shell", &serde_json::json!({}));
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    server.wait_until(
        "the bootstrap's line in the log",
        Duration::from_secs(10),
        || {
            server
                .logs("shell", &format!("request_id={rid}"))
                .iter()
                .any(|l| l["message"] == format!("handling {rid}"))
        },
    );
}

#[test]
fn a_provided_handler_error_and_init_errors_are_lampyrs_function_and_init_errors() {
    let server = Server::start();
    server.deploy(provided("sh-errors", "", "", &shell_bootstrap(), &[]).path());
    let r = server.get("sh-errors/provided-fail");
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "function_error");
    assert_eq!(v["errorType"], "HandlerError");
    assert_eq!(v["errorMessage"], "it broke");
    // As on Lambda's Invoke API: 200, the error, X-Amz-Function-Error.
    let r = invoke(
        &server,
        "sh-errors",
        &serde_json::json!({"a": "provided-fail"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-lampyr-function-error"), Some("Unhandled"));
    let v = r.json();
    assert_eq!(v["errorType"], "HandlerError");
    assert_eq!(v["stackTrace"][0], "bootstrap: the case for provided-fail");
    // The instance survives a handled error.
    let r = server.get("sh-errors");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-lampyr-start"), Some("warm"));

    // init/error, and a bootstrap that exits before asking for an event.
    server.deploy(
        provided(
            "sh-initerr",
            "",
            "FAIL_INIT = \"the configuration is missing\"\n",
            &shell_bootstrap(),
            &[],
        )
        .path(),
    );
    server.deploy(
        provided(
            "sh-exits",
            "",
            "EXIT_AT_INIT = \"1\"\n",
            &shell_bootstrap(),
            &[],
        )
        .path(),
    );
    for (name, text) in [
        ("sh-initerr", "the configuration is missing"),
        ("sh-exits", "Runtime exited with error: exit status 7"),
    ] {
        let r = server.get(name);
        assert_eq!(r.status, 502, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "init_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(text), "{msg}");
        assert_eq!(server.instances(name), 0);
    }
}

#[test]
fn a_bootstrap_that_is_missing_or_not_executable_is_refused_at_deploy() {
    let server = Server::start();
    let f = provided("no-exec", "", "", &shell_bootstrap(), &[]);
    std::fs::set_permissions(
        f.path().join("bootstrap"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not executable") && err.contains("chmod +x bootstrap"),
        "{err}"
    );
    std::fs::remove_file(f.path().join("bootstrap")).unwrap();
    let out = server.cli(&["deploy", f.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no `bootstrap`"), "{err}");
}

/// Crash, timeout and OOM: a provided function gets the status and error
/// code a Node.js function gets for the same failure.
#[test]
fn crashes_timeouts_and_oom_are_the_same_errors_as_the_built_in_runtimes() {
    let server = Server::start();
    let extra = "timeout = \"1s\"\nmemory_mb = 64\n";
    server.deploy(provided("sh-fails", extra, "", &shell_bootstrap(), &[]).path());
    server.deploy(
        Fixture::node(
            "node-fails",
            extra,
            r#"exports.handler = async (e) => {
  if (e.rawPath === '/provided-crash') { console.log('last words'); process.exit(3); }
  if (e.rawPath === '/provided-hang') { await new Promise(() => {}); }
  if (e.rawPath === '/provided-oom') { const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1)); }
  return 'alive';
};"#,
        )
        .path(),
    );
    for (path, status, code) in [
        ("provided-crash", 502, "runtime_exited"),
        ("provided-hang", 504, "timeout"),
        ("provided-oom", 502, "out_of_memory"),
    ] {
        let mut got = Vec::new();
        for name in ["node-fails", "sh-fails"] {
            let r = server.get(&format!("{name}/{path}"));
            let v = r.json();
            assert_eq!(
                (r.status, v["error"]["code"].as_str()),
                (status, Some(code)),
                "{name}/{path}: {v}"
            );
            let msg = v["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains(name), "{msg}");
            got.push(msg.replace(name, "NAME"));
            server.wait_until("the failed instance to go", Duration::from_secs(10), || {
                server.instances(name) == 0
            });
            // A new instance serves the next call.
            let r = server.get(name);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Word for word, but for the exit code of a crash.
        if code != "runtime_exited" {
            assert_eq!(got[0], got[1]);
        } else {
            assert!(got[1].contains("exit code 3"), "{}", got[1]);
        }
    }
}

/// The Runtime API is on the instance's own loopback: the host's
/// 127.0.0.1:9001 is not it.
#[test]
fn the_host_cannot_reach_an_instances_runtime_api() {
    let server = Server::start();
    server.deploy(provided("sh-private", "", "", &shell_bootstrap(), &[]).path());
    let r = invoke(&server, "sh-private", &serde_json::json!({}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["env"]["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(server.instances("sh-private"), 1);
    match std::net::TcpStream::connect_timeout(
        &"127.0.0.1:9001".parse().unwrap(),
        Duration::from_secs(2),
    ) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut s) => {
            // Something else of this host listens there: it is not the
            // instance's Runtime API.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ =
                s.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(!text.contains("lambda-runtime-aws-request-id"), "{text}");
        }
    }
}

#[test]
fn awslambdaric_from_pypi_runs_under_the_runtime_api() {
    let deps = common::aws::test_deps("awslambdaric", "awslambdaric");
    let server = Server::start();
    server.deploy(from_fixture("py-ric", "python", "app.handler", "", Some(&deps)).path());
    check_invocations(&server, "py-ric", "app.handler");
    check_handler_error(&server, "py-ric", Some("ValueError"), "it broke in python");
    // Its prints are the function's log.
    wait_for_log(&server, "py-ric", "awslambdaric app loaded");
    // A module that does not import: awslambdaric posts init/error.
    server.deploy(from_fixture("py-ric-bad", "python", "missing.handler", "", Some(&deps)).path());
    let r = server.get("py-ric-bad");
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "init_error", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("py-ric-bad") && msg.contains("missing"),
        "{msg}"
    );
}

/// Custom runtimes have a pool like the built-in ones: the shim is up in a
/// built jail, waiting for LOAD; a cold start only starts the bootstrap.
#[test]
fn a_cold_start_takes_a_pooled_provided_instance_and_the_pool_refills() {
    // The pool of custom runtimes starts empty unless configured.
    let (_dir, config) = common::config_file("[pools.provided]\nmin = 1\n");
    let server = Server::start_with(&["--config", &config]);
    server.wait_pools_ready();
    server.deploy(provided("sh-pooled", "", "", &shell_bootstrap(), &[]).path());
    let r = invoke(&server, "sh-pooled", &serde_json::json!({"n": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lampyr-start"), Some("pooled"));
    let timing = r.header("server-timing").unwrap();
    assert!(
        !timing.contains("runtime;"),
        "the shim was already up: {timing}"
    );
    let rid = r.header("x-lampyr-request-id").unwrap().to_string();
    check_seen(
        "sh-pooled",
        "function.handler",
        &r.json(),
        &serde_json::json!({"n": 1}),
        &rid,
        10_000,
    );
    server.wait_until("the pool to refill", Duration::from_secs(30), || {
        let pools = server.api("GET", "/pools", None).json();
        pools
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["runtime"] == "provided" && p["ready"] == 1)
    });
    assert_eq!(
        invoke(&server, "sh-pooled", &serde_json::json!({})).header("x-lampyr-start"),
        Some("warm")
    );
}

#[test]
fn aws_lambda_ric_from_npm_runs_under_the_runtime_api() {
    let deps = common::test_deps(
        "aws-lambda-ric",
        "npm install --prefix DIR aws-lambda-ric@4.0.2",
    );
    let server = Server::start();
    let f = from_fixture("node-ric", "nodejs", "index.handler", "", None);
    // The client and what it loads, vendored as npm installed them.
    for m in ["aws-lambda-ric", "@aws"] {
        copy_tree(
            &deps.join("node_modules").join(m),
            &f.path().join("node_modules").join(m),
        );
    }
    server.deploy(f.path());
    check_invocations(&server, "node-ric", "index.handler");
    check_handler_error(&server, "node-ric", Some("BadThing"), "it broke in node");
    wait_for_log(&server, "node-ric", "aws-lambda-ric app loaded");
}

/// The Rust functions scripts/test builds from fixtures/provided/rust.
fn rust_function(name: &str, binary: &str) -> Fixture {
    let built = common::test_deps(
        "lambda-runtime",
        "cargo build --release of crates/lampyr/tests/fixtures/provided/rust",
    );
    let f = Fixture::new(
        &format!(
            "name = \"{name}\"\nruntime = \"provided.al2023\"\nhandler = \"function.handler\"\n[env]\nGREETING = \"hello\"\n"
        ),
        &[],
    );
    std::fs::copy(built.join(binary), f.path().join("bootstrap")).unwrap();
    f
}

#[test]
fn lambda_runtime_from_crates_io_runs_under_the_runtime_api() {
    let server = Server::start();
    server.deploy(rust_function("rust-fn", "buffered").path());
    check_invocations(&server, "rust-fn", "function.handler");
    check_handler_error(&server, "rust-fn", None, "it broke in rust");
    wait_for_log(&server, "rust-fn", "rust runtime starting");
}

/// A streamed HTTP response from `lambda_http::run_with_streaming_response`
/// through `/fn/NAME`: the prelude's status, headers and cookie, then the
/// body as it was written.
#[test]
fn a_streamed_response_from_lambda_http_reaches_the_caller() {
    let server = Server::start();
    server.deploy(rust_function("rust-stream", "streaming").path());
    let r = server.get("rust-stream/hello");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-streamed"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("flavour=rust")),
        "{:?}",
        r.header("set-cookie")
    );
    assert_eq!(r.text(), "one two three");
}

/// Without the sandbox the Runtime API would be on the host's loopback:
/// provided functions are refused, saying why and what to do.
#[test]
fn provided_functions_need_the_sandbox() {
    let server = Server::start_with(&["--isolation", "off"]);
    let f = provided("sh-plain", "", "", &shell_bootstrap(), &[]);
    let deployed = server.cli(&["deploy", f.path().to_str().unwrap()]);
    let said = if deployed.status.success() {
        let r = server.get("sh-plain");
        assert!(r.status >= 500, "{}", r.text());
        r.text()
    } else {
        String::from_utf8_lossy(&deployed.stderr).into_owned()
    };
    assert!(
        said.contains("Runtime API") && said.contains("--isolation auto"),
        "{said}"
    );
}
