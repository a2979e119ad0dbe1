//! `lampyr init`: a new function directory with a manifest and a handler.

use std::path::Path;

use lampyr_api::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0} already has a lampyr.toml: pick a new directory, or edit it and run `lampyr deploy {0}`")]
    Exists(String),
    #[error("cannot derive a function name from {dir}: {why}; pass --name")]
    BadName { dir: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The manifest `init` writes, with every key and its default spelled out.
pub fn manifest(name: &str, runtime: Runtime) -> String {
    format!(
        r#"# lampyr function manifest
name = "{name}"
runtime = "{runtime}"          # {runtimes}
{handler}

# memory_mb = 128             # memory limit of one instance
# timeout = "10s"             # longest one invocation may run
# concurrency = 1             # invocations one instance runs at once
# min_instances = 0           # reserved instances, kept warm at all times
# max_instances = 10          # most instances at once
# idle_timeout = "5m"         # an idle instance is stopped after this
# max_queue = 100             # requests that may wait for a free instance
# queue_timeout = "10s"       # how long a request may wait before a 429
# auth = "public"             # "token": callers need a bearer token
# handler_type = "event"      # "http": Function Compute's HTTP handler ((req, resp, context); Python: WSGI)
# initializer = "index.init"  # run once per instance, before its first invocation
# initialization_timeout = "3s"  # how long the initializer may run
# network = "egress"          # outbound internet; "none": loopback only; "host": the host's network
# allow = []                  # private or host destinations "egress" may reach, e.g. ["10.0.0.5:5432"]

[env]
# GREETING = "hello"
"#,
        handler = match runtime.extensions().first() {
            Some(ext) => format!(
                "handler = \"index.handler\"     # FILE.EXPORT: index.{ext}, export `handler`"
            ),
            // A custom runtime: the executable `bootstrap` reads it as $_HANDLER.
            None => "handler = \"function.handler\"  # given to ./bootstrap as $_HANDLER".into(),
        },
        runtimes = Runtime::ALL
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(" or "),
    )
}

/// Creates `dir` with `lampyr.toml` and a hello-world handler. Returns the
/// function name.
pub fn init(dir: &Path, runtime: Runtime, name: Option<&str>) -> Result<String, ScaffoldError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| ScaffoldError::Io { path, source }
    };
    if dir.join("lampyr.toml").exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let abs = std::path::absolute(dir).map_err(io(dir))?;
            abs.file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default()
        }
    };
    lampyr_api::manifest::validate_name(&name).map_err(|e| ScaffoldError::BadName {
        dir: dir.display().to_string(),
        why: e.to_string(),
    })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (file, body) = runtime.descriptor().template;
    let m = dir.join("lampyr.toml");
    std::fs::write(&m, manifest(&name, runtime)).map_err(io(&m))?;
    let h = dir.join(file);
    if !h.exists() {
        std::fs::write(&h, body).map_err(io(&h))?;
        if runtime.is_custom() {
            // A custom runtime's bootstrap is the program lampyr starts.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).map_err(io(&h))?;
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaffolds_valid_functions() {
        for rt in Runtime::ALL {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("my-fn");
            let name = init(&dir, rt, None).unwrap();
            assert_eq!(name, "my-fn");
            let spec = lampyr_api::FunctionSpec::from_toml(
                &std::fs::read_to_string(dir.join("lampyr.toml")).unwrap(),
            )
            .unwrap();
            assert_eq!(spec.runtime, rt);
            let (file, _) = rt.descriptor().template;
            lampyr_package::check_handler(&dir, &spec).unwrap();
            assert!(dir.join(file).is_file());
            assert!(matches!(
                init(&dir, rt, None),
                Err(ScaffoldError::Exists(_))
            ));
        }
    }
}
