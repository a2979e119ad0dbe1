//! Python packages of the AWS world (moto, boto3, the AWS CLI) that
//! scripts/test installs under target/test-deps, and a Python that uses
//! them against loopback endpoints only.

use std::path::{Path, PathBuf};

use std::process::Command;

/// Where scripts/test installed `what` (`pip install --target`); the
/// environment variable `LAMPYR_TEST_<WHAT>` overrides it.
pub fn test_deps(what: &str, packages: &str) -> PathBuf {
    super::test_dep(
        what,
        &format!("pip install --target target/test-deps/{what} {packages}"),
    )
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
