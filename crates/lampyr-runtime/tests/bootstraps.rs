//! Runs the bootstraps' own protocol test driver (`runtimes/test_bootstraps.py`)
//! against the real Node.js and Python interpreters.

use std::process::Command;

#[test]
fn bootstraps_speak_the_instance_protocol() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let runtimes = lampyr_runtime::Runtimes::discover();
    let python = runtimes
        .get(lampyr_api::Runtime::Python)
        .expect("python is installed");
    let out = Command::new(&python.path)
        .arg(format!("{root}/runtimes/test_bootstraps.py"))
        .current_dir(root)
        .output()
        .expect("run the bootstrap test driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bootstrap tests failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.ends_with("0 failed") && !last.starts_with("0 passed"),
        "{last}"
    );
}
