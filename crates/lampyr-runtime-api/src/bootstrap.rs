//! The function's `bootstrap`: started on LOAD at the task root with the
//! Lambda environment, its output going where the shim's goes (the
//! instance's log pipes), and watched: an exit before its first `next` is
//! the function's init error, an exit later ends the instance with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;

use crate::host::{Load, Phase, State};

/// The executable a custom runtime's code has at its root.
pub const BOOTSTRAP: &str = "bootstrap";

/// The bootstrap's environment: the instance's own (`PATH`, `LANG`, `TZ`,
/// `HOME`, `TMPDIR`, library paths; lampyr's protocol variables left out),
/// the function's, then the platform's (which win, as on the built-in
/// runtimes). `log_stream` is the instance's log stream name.
pub fn environment(
    inherited: impl Iterator<Item = (String, String)>,
    load: &Load,
    api: SocketAddr,
    log_stream: &str,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = inherited
        .filter(|(k, _)| !k.starts_with("LAMPYR_"))
        .collect();
    env.extend(load.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let version = load
        .function_version
        .clone()
        .unwrap_or_else(|| "$LATEST".into());
    let region = env
        .get("AWS_REGION")
        .filter(|r| !r.is_empty())
        .cloned()
        .unwrap_or_else(|| "local".into());
    let default_region = env
        .get("AWS_DEFAULT_REGION")
        .filter(|r| !r.is_empty())
        .cloned()
        .unwrap_or_else(|| region.clone());
    let runtime_dir = load
        .runtime_dir
        .clone()
        .unwrap_or_else(|| lampyr_sandbox::GUEST_RUNTIME_DIR.into());
    for (k, v) in [
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("_HANDLER", load.handler.clone()),
        ("LAMBDA_TASK_ROOT", load.task_root.clone()),
        ("LAMBDA_RUNTIME_DIR", runtime_dir),
        ("AWS_LAMBDA_FUNCTION_NAME", load.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", version),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            load.memory_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/lampyr/{}", load.function_name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream.to_string()),
        ("AWS_REGION", region),
        ("AWS_DEFAULT_REGION", default_region),
    ] {
        env.insert(k.into(), v);
    }
    env
}

/// A log stream name as the built-in runtimes make them:
/// `YYYY/MM/DD/[VERSION]` and 32 random hex digits.
fn log_stream(version: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_date(secs / 86_400);
    let mut suffix = String::with_capacity(32);
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        bytes = (u128::from(secs) ^ u128::from(std::process::id()) << 64).to_be_bytes();
    }
    for b in bytes {
        suffix.push_str(&format!("{b:02x}"));
    }
    format!("{y:04}/{m:02}/{d:02}/[{version}]{suffix}")
}

/// The calendar date of a day counted from 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Starts the bootstrap of `load` and watches it.
pub fn start(load: Load, api: SocketAddr, state: Arc<State>) {
    let path = Path::new(&load.task_root).join(BOOTSTRAP);
    let version = load
        .function_version
        .clone()
        .unwrap_or_else(|| "$LATEST".into());
    let env = environment(std::env::vars(), &load, api, &log_stream(&version));
    let child = tokio::process::Command::new(&path)
        .env_clear()
        .envs(&env)
        .current_dir(&load.task_root)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "Couldn't find valid bootstrap(s): [{}] (the code needs an executable named `{BOOTSTRAP}` at its root)",
                    path.display()
                ),
                _ => format!("cannot start {}: {e}", path.display()),
            };
            state.load_failed(&crate::api::error_object("Runtime.InvalidEntrypoint", &why));
            return;
        }
    };
    tokio::spawn(async move {
        let status = child.wait().await;
        let code = exited(&state, status);
        // Whatever the bootstrap answered before it exited reaches lampyr.
        state.flushed().await;
        std::process::exit(code);
    });
}

/// What the bootstrap's exit means: before its first `next` it is the
/// function's init error (LOAD_ERROR), later the instance ends with it.
/// Returns the shim's exit status.
fn exited(state: &State, status: std::io::Result<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let (described, code) = match &status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (format!("exit status {c}"), c),
            (None, Some(sig)) => (format!("signal {sig}"), 128 + sig),
            _ => ("an unknown status".into(), 1),
        },
        Err(e) => (format!("an error waiting for it ({e})"), 1),
    };
    match state.phase() {
        Phase::Initialising | Phase::Waiting => {
            state.load_failed(&crate::api::error_object(
                "Runtime.ExitError",
                &format!(
                    "Runtime exited with error: {described} (the bootstrap ended before it asked for an invocation)"
                ),
            ));
            1
        }
        Phase::Failed => 1,
        Phase::Ready => {
            eprintln!("lampyr-runtime-api: the bootstrap exited ({described})");
            if code == 0 {
                1
            } else {
                code
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_gets_the_lambda_environment_over_the_functions_own() {
        let load: Load = serde_json::from_str(
            r#"{"handler":"function.handler","task_root":"/var/task","runtime_dir":"/var/runtime",
                "function_name":"fn","function_version":"3","memory_mb":256,
                "env":{"GREETING":"hi","AWS_LAMBDA_FUNCTION_NAME":"spoof","AWS_REGION":"eu-west-1"}}"#,
        )
        .unwrap();
        let inherited = [
            ("PATH", "/usr/bin:/bin"),
            ("LAMPYR_FD", "3"),
            ("LAMPYR_INSTANCE_ID", "i-1"),
            ("TZ", "UTC"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = environment(inherited, &load, "127.0.0.1:9001".parse().unwrap(), "s");
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
        assert_eq!(get("_HANDLER"), Some("function.handler"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some("/var/task"));
        assert_eq!(get("LAMBDA_RUNTIME_DIR"), Some("/var/runtime"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("fn"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("3"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_LAMBDA_LOG_GROUP_NAME"), Some("/lampyr/fn"));
        assert_eq!(get("AWS_LAMBDA_LOG_STREAM_NAME"), Some("s"));
        assert_eq!(get("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("eu-west-1"));
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(get("PATH"), Some("/usr/bin:/bin"));
        assert_eq!(get("TZ"), Some("UTC"));
        assert!(env.keys().all(|k| !k.starts_with("LAMPYR_")));
    }

    #[test]
    fn log_streams_are_named_like_the_built_in_runtimes_names() {
        let s = log_stream("$LATEST");
        let (date, rest) = s.split_at(11);
        assert_eq!(date.len(), 11);
        assert!(date.ends_with('/') && date.matches('/').count() == 3, "{s}");
        assert!(rest.starts_with("[$LATEST]"), "{s}");
        assert_eq!(rest.len(), "[$LATEST]".len() + 32);
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
    }
}
