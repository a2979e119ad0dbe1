//! Python packages of the AWS world (moto, boto3, the AWS CLI) that
//! scripts/test installs under target/test-deps, and a Python that uses
//! them against loopback endpoints only.

use std::path::{Path, PathBuf};

use std::process::Command;

/// Where scripts/test installed `what` (`pip install --target`); the
/// environment variable `LAMPYR_TEST_<WHAT>` overrides it.
pub fn test_deps(what: &str, packages: &str) -> PathBuf {
    super::test_deps(what, &format!("pip install --target DIR {packages}"))
}

/// A Python process that sees the packages in `deps`, no AWS configuration
/// or instance metadata, and dummy AWS credentials (a test sets real ones
/// where it needs them), and no proxy.
pub fn python(deps: &Path) -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", deps)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

/// An access key from `lampyr keys create --json`: its id and secret.
pub fn new_key(server: &super::Server) -> (String, String) {
    let out = server.cli(&["keys", "create", "--name", "tests", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        key["id"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    )
}

/// Runs `tests/fixtures/lambda/SCRIPT` (a boto3 client) with `args` and
/// returns the JSON it prints.
pub fn boto3_fixture(script: &str, args: &[&str]) -> serde_json::Value {
    let deps = test_deps("moto", "'moto[s3,sns,server]' boto3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lambda")
        .join(script);
    let out = python(&deps)
        .arg(&script)
        .args(args)
        .output()
        .expect("run boto3");
    assert!(
        out.status.success(),
        "boto3 client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
