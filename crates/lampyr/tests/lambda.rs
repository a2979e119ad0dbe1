//! The Lambda Invoke API (`POST /2015-03-31/functions/NAME/invocations`)
//! called by the real clients: boto3 and the AWS CLI, signing with an
//! access key from `lampyr keys create`, against a real server and real
//! Node.js instances. Everything talks to 127.0.0.1 only (the clients get
//! the endpoint, credentials from the environment, no AWS configuration and
//! no instance metadata).

mod common;

use std::time::Duration;

use common::{request, Fixture, Server};
use serde_json::Value;

const ECHO: &str = r#"
exports.handler = async (event, context) => {
  console.log("hello from echo " + event.n);
  return { got: event, fn: context.functionName };
};
"#;

const BOOM: &str = r#"
exports.handler = async () => { throw new Error("kaput"); };
"#;

fn deploy(server: &Server) {
    server.deploy(Fixture::node("echo", "", ECHO).path());
    server.deploy(Fixture::node("boom", "", BOOM).path());
}

/// Runs tests/fixtures/lambda/boto3_client.py against `server` with a new
/// access key and `args`; returns what it printed.
fn boto3(server: &Server, args: &[&str]) -> Value {
    let (id, secret) = common::aws::new_key(server);
    let mut all = vec![server.url.as_str(), id.as_str(), secret.as_str()];
    all.extend_from_slice(args);
    common::aws::boto3_fixture("boto3_client.py", &all)
}

#[test]
fn boto3_invokes_functions_with_an_issued_key() {
    let server = Server::start();
    deploy(&server);
    let alias = server.cli(&["alias", "set", "echo", "live", "1"]);
    assert!(
        alias.status.success(),
        "{}",
        String::from_utf8_lossy(&alias.stderr)
    );
    let (id, secret) = common::aws::new_key(&server);
    let r = common::aws::boto3_fixture("boto3_client.py", &[server.url.as_str(), &id, &secret]);

    // RequestResponse: the raw result, the version that ran, the log tail.
    let sync = &r["sync"];
    assert_eq!(sync["status"], 200, "{sync}");
    assert!(sync["function_error"].is_null(), "{sync}");
    assert_eq!(sync["version"], "1");
    let payload: Value = serde_json::from_str(sync["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["got"]["n"], 1);
    assert_eq!(payload["fn"], "echo");
    let log = sync["log"].as_str().expect("LogResult with LogType=Tail");
    assert!(log.contains("hello from echo 1"), "{log}");

    // A function error: still 200, FunctionError and Lambda's error body.
    let err = &r["error"];
    assert_eq!(err["status"], 200, "{err}");
    assert_eq!(err["function_error"], "Unhandled");
    let body: Value = serde_json::from_str(err["payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["errorMessage"], "kaput");
    assert_eq!(body["errorType"], "Error");
    assert!(body["stackTrace"].is_array());

    // Event and DryRun.
    assert_eq!(r["event"]["status"], 202, "{}", r["event"]);
    assert_eq!(r["event"]["payload"], "");
    assert_eq!(r["dry_run"]["status"], 204, "{}", r["dry_run"]);

    // Qualifiers (a version, an alias, $LATEST) and ARNs.
    for (k, n) in [("latest", 2), ("numbered", 3), ("arn", 4), ("alias", 6)] {
        assert_eq!(r[k]["status"], 200, "{k}: {}", r[k]);
        let p: Value = serde_json::from_str(r[k]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(p["got"]["n"], n, "{k}");
    }

    // Platform errors, as Lambda's clients know them.
    for (k, code, status) in [
        ("no_version", "ResourceNotFoundException", 404),
        ("missing", "ResourceNotFoundException", 404),
        ("not_json", "InvalidRequestContentException", 400),
        ("wrong_secret", "InvalidSignatureException", 403),
    ] {
        assert_eq!(r[k]["error"], code, "{k}: {}", r[k]);
        assert_eq!(r[k]["status"], status, "{k}: {}", r[k]);
    }
    assert!(
        r["missing"]["message"]
            .as_str()
            .unwrap()
            .contains("lampyr deploy"),
        "{}",
        r["missing"]
    );

    // The event ran, recorded as an asynchronous invocation.
    server.wait_until(
        "the Event invocation to run",
        Duration::from_secs(30),
        || {
            server.logs("echo", "").iter().any(|l| {
                l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("hello from echo async")
            })
        },
    );
}

#[test]
fn bearer_tokens_and_revoked_keys_on_the_invoke_api() {
    let server = Server::start();
    deploy(&server);
    let url = format!("{}/2015-03-31/functions/echo/invocations", server.url);
    // lampyr's own token works as it does on the management API.
    let token = format!("Bearer {}", server.token());
    let ok = request(
        "POST",
        &url,
        Some(br#"{"n": 5}"#),
        &[("authorization", &token)],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["got"]["n"], 5);
    assert_eq!(ok.header("x-amz-executed-version"), Some("1"));
    // Unsigned: refused, saying how to sign.
    let unsigned = request("POST", &url, Some(b"{}"), &[]);
    assert_eq!(unsigned.status, 403);
    assert_eq!(
        unsigned.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );
    assert!(
        unsigned.text().contains("lampyr keys create"),
        "{}",
        unsigned.text()
    );
    // A key that was revoked no longer signs.
    let (id, _) = common::aws::new_key(&server);
    let listed = server.cli(&["keys", "ls", "--json"]);
    let keys: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(keys
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id.as_str()));
    assert!(
        keys.to_string().find("secret").is_none(),
        "no secrets listed"
    );
    let rm = server.cli(&["keys", "rm", &id]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={id}/20261206/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
        "0".repeat(64)
    );
    let revoked = request(
        "POST",
        &url,
        Some(b"{}"),
        &[("authorization", &auth), ("x-amz-date", "20261206T000000Z")],
    );
    assert_eq!(revoked.status, 403);
    assert_eq!(
        revoked.header("x-amzn-errortype"),
        Some("UnrecognizedClientException")
    );
    let again = server.cli(&["keys", "rm", &id]);
    assert!(!again.status.success());
}

#[test]
fn the_aws_cli_invokes_a_function() {
    let server = Server::start();
    deploy(&server);
    let (id, secret) = common::aws::new_key(&server);
    let deps = common::aws::test_deps("awscli", "awscli");
    let out_dir = tempfile::tempdir().unwrap();
    let out_file = out_dir.path().join("out.json");
    let aws_invoke = |function: &str, extra: &[&str]| {
        common::aws::python(&deps)
            .env("AWS_ACCESS_KEY_ID", &id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .arg(deps.join("bin/aws"))
            .args(["lambda", "invoke", "--endpoint-url", server.url.as_str()])
            .args(["--function-name", function])
            .args(extra)
            .arg(&out_file)
            .output()
            .expect("run the AWS CLI")
    };
    let out = aws_invoke(
        "echo",
        &["--payload", r#"{"n": "cli"}"#, "--log-type", "Tail"],
    );
    assert!(
        out.status.success(),
        "aws lambda invoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["StatusCode"], 200, "{meta}");
    assert_eq!(meta["ExecutedVersion"], "1");
    let result: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(result["got"]["n"], "cli");
    // A function error makes the CLI report it, as against Lambda.
    let out = aws_invoke("boom", &[]);
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["FunctionError"], "Unhandled", "{meta}");
}

/// boto3's `ClientContext=` reaches `context.clientContext` (Node.js) and
/// `context.client_context` (Python), as on Lambda.
#[test]
fn boto3_client_context_reaches_the_handlers_context() {
    let server = Server::start();
    server.deploy(
        Fixture::node(
            "ctx-node",
            "",
            "exports.handler = async (e, c) => ({ cc: c.clientContext, identity: c.identity === undefined ? null : c.identity });",
        )
        .path(),
    );
    server.deploy(
        Fixture::python(
            "ctx-py",
            "",
            "def handler(e, c):\n    cc = c.client_context\n    return {'cc': {'custom': cc.custom, 'env': cc.env, 'app_title': cc.client.app_title}, 'identity': c.identity}\n",
        )
        .path(),
    );
    let r = boto3(&server, &["context", "ctx-node", "ctx-py"]);
    let node = &r["ctx-node"];
    assert_eq!(node["cc"]["custom"]["user"], "ada", "{r}");
    assert_eq!(node["cc"]["env"]["locale"], "en", "{r}");
    assert_eq!(node["cc"]["client"]["app_title"], "boto3 test", "{r}");
    assert!(node["identity"].is_null(), "{r}");
    let py = &r["ctx-py"];
    assert_eq!(py["cc"]["custom"]["user"], "ada", "{r}");
    assert_eq!(py["cc"]["env"]["locale"], "en", "{r}");
    assert_eq!(py["cc"]["app_title"], "boto3 test", "{r}");
    assert!(py["identity"].is_null(), "{r}");
    // Without one, nothing rides along.
    let token = format!("Bearer {}", server.token());
    let plain = request(
        "POST",
        &format!("{}/2015-03-31/functions/ctx-node/invocations", server.url),
        Some(b"{}"),
        &[("authorization", &token)],
    );
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert!(plain.json()["cc"].is_null(), "{}", plain.text());
    // A client context that is not base64 JSON is the SDK's error.
    let bad = request(
        "POST",
        &format!("{}/2015-03-31/functions/ctx-node/invocations", server.url),
        Some(b"{}"),
        &[
            ("authorization", &token),
            ("x-amz-client-context", "not base64!"),
        ],
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        bad.header("x-amzn-errortype"),
        Some("InvalidRequestContentException")
    );
}
