//! The client commands. Each prints for people, or one JSON document with
//! `--json`, and returns an error carrying what to do next.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use lampyr_api::{
    DeployResult, FunctionInfo, FunctionList, FunctionSpec, FunctionStats, InvocationList, LogList,
    LogRecord,
};

impl CommandError {
    /// The error as the API would give it: a stable code and a message.
    pub fn body(&self) -> lampyr_api::ErrorBody {
        let code = match self {
            CommandError::Client(ClientError::Server { code, .. }) => code.as_str(),
            CommandError::Client(ClientError::Connect { .. }) => "unreachable",
            CommandError::Client(ClientError::Decode(_)) => "bad_answer",
            CommandError::Manifest(_) => "invalid_manifest",
            CommandError::Package { .. } => "invalid_package",
            CommandError::Template(_) => "invalid_template",
            CommandError::Input(_) => "invalid_input",
            CommandError::FunctionFailed => "function_error",
        };
        lampyr_api::ErrorBody::new(code, self.to_string())
    }
}

use crate::client::{Client, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Manifest(String),
    #[error("packaging {dir}: {source}")]
    Package {
        dir: String,
        #[source]
        source: lampyr_package::PackageError,
    },
    #[error("{0}")]
    Input(String),
    /// A template that cannot be deployed as written.
    #[error(transparent)]
    Template(#[from] lampyr_import::ImportError),
    /// The function ran and failed; the details are already printed.
    #[error("the function returned an error")]
    FunctionFailed,
}

pub(crate) fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    let _ = writeln!(
        out(),
        "{}",
        serde_json::to_string_pretty(v).expect("serialises")
    );
}

fn progress(json: bool, msg: &str) {
    if !json {
        eprintln!("{msg}");
    }
}

/// What `lampyr deploy` was asked to do.
#[derive(Debug, Clone)]
pub struct DeployArgs {
    /// The function's directory, or its `lampyr.toml`.
    pub path: std::path::PathBuf,
    /// List what would be shipped; upload nothing.
    pub dry_run: bool,
    /// Let the server check that the code loads before it takes traffic.
    pub verify: bool,
    /// Recorded with the new version (`lampyr versions` shows it).
    pub description: Option<String>,
    /// Point this alias at the new version.
    pub alias: Option<String>,
    /// With `alias`: `PERCENT%/INTERVAL`, a canary first.
    pub canary: Option<String>,
    /// With a template: deploy only this function (its name in the
    /// template or in lampyr).
    pub function: Option<String>,
}

/// The function directory and manifest a `deploy` path names.
fn function_dir(path: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), CommandError> {
    if path.is_dir() {
        return Ok((path.to_path_buf(), path.join("lampyr.toml")));
    }
    if path.file_name().is_some_and(|n| n == "lampyr.toml") {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        return Ok((dir, path.to_path_buf()));
    }
    Err(CommandError::Input(format!(
        "{} is neither a function directory nor a lampyr.toml: pass the directory that holds lampyr.toml (default: the current one), the lampyr.toml itself, or a template (template.yaml, template.yml, s.yaml)",
        path.display()
    )))
}

/// `lampyr deploy [DIR | DIR/lampyr.toml | TEMPLATE]`.
pub fn deploy(client: &Client, args: &DeployArgs, json: bool) -> Result<(), CommandError> {
    if lampyr_import::is_template_path(&args.path) {
        return crate::templates::deploy(client, args, json);
    }
    if args.function.is_some() {
        return Err(CommandError::Input(format!(
            "--function picks one function of a template (template.yaml, template.yml, s.yaml), and {} is not one: drop --function",
            args.path.display()
        )));
    }
    let (dir, manifest_path) = function_dir(&args.path)?;
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        CommandError::Manifest(format!(
            "cannot read {} ({e}): create one with `lampyr init {} --runtime nodejs|python`",
            manifest_path.display(),
            dir.display()
        ))
    })?;
    let spec = FunctionSpec::from_toml(&text)
        .map_err(|e| CommandError::Manifest(format!("{}: {e}", manifest_path.display())))?;
    let package_err = |source| CommandError::Package {
        dir: dir.display().to_string(),
        source,
    };
    if args.dry_run {
        let plan = lampyr_package::plan(&dir).map_err(package_err)?;
        let pkg = lampyr_package::pack_dir(&dir).map_err(package_err)?;
        return dry_run(&dir, &spec, &plan, pkg.len() as u64, json);
    }
    let t = Instant::now();
    progress(
        json,
        &format!(
            "[1/3] packaging {} ({} runtime)",
            dir.display(),
            spec.runtime
        ),
    );
    let pkg = lampyr_package::pack_dir(&dir).map_err(package_err)?;
    let res = upload(client, &spec.name, &pkg, args, args.alias.as_deref(), json)?;
    if json {
        print_json(&res);
    } else {
        report(&res, t);
    }
    Ok(())
}

/// Uploads package `pkg` of function `name` as `args` say (pointing
/// `alias` at the new version, if given), with the progress lines.
pub(crate) fn upload(
    client: &Client,
    name: &str,
    pkg: &[u8],
    args: &DeployArgs,
    alias: Option<&str>,
    json: bool,
) -> Result<DeployResult, CommandError> {
    // The server's limit, checked here so the answer names it instead of
    // a connection the server cut mid-upload.
    if let Ok(limits) = client.get_json::<lampyr_api::DoctorReport>("/api/v1/doctor") {
        if let Some(max) = limits.limits.map(|l| l.max_package) {
            if pkg.len() as u64 > max {
                return Err(CommandError::Input(too_big(pkg.len() as u64, max)));
            }
        }
    }
    progress(
        json,
        &format!(
            "[2/3] uploading {} to {}",
            lampyr_package::size(pkg.len() as u64),
            client.base()
        ),
    );
    let mut query = Vec::new();
    if !args.verify {
        query.push("verify=false".to_string());
    }
    if let Some(d) = &args.description {
        query.push(format!(
            "description={}",
            crate::versions::encode_component(d)
        ));
    }
    if let Some(a) = alias {
        query.push(format!("alias={}", crate::versions::encode_component(a)));
    }
    if let Some(c) = &args.canary {
        lampyr_api::versions::parse_canary(c)
            .map_err(|m| CommandError::Input(format!("--canary: {m}")))?;
        query.push(format!("canary={}", crate::versions::encode_component(c)));
    }
    let mut path = format!("/api/v1/functions/{name}");
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let reply = match client.call("PUT", &path, Some(pkg)) {
        Ok(r) => r,
        Err(ClientError::Server { status: 413, code, message }) => {
            // A server names the limit and its setting; for one that does
            // not, the settings it may be.
            let raise = if message.contains("[limits]") {
                ""
            } else {
                ": raise [limits] max_package (or max_unpacked, max_entries) in the server configuration"
            };
            return Err(ClientError::Server {
                status: 413,
                code,
                message: format!("{message}{raise}; or leave files out with .lampyrignore (`lampyr deploy --dry-run` lists what is shipped)"),
            }
            .into())
        }
        Err(ClientError::Connect { url, detail }) if pkg.len() > 1 << 20 => {
            return Err(CommandError::Input(format!(
                "the server at {url} closed the connection during the upload of a {} package ({detail}): the package may be over its size limit ([limits] max_package in its configuration)",
                lampyr_package::size(pkg.len() as u64)
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let res: DeployResult = reply.json()?;
    let checked = match res.check_ms {
        Some(ms) => format!("; checked that it loads in {ms:.1} ms"),
        None if res.changed && !args.verify => "; not checked (--no-verify)".into(),
        None => String::new(),
    };
    progress(
        json,
        &format!(
            "[3/3] built version {} (verified and unpacked in {:.1} ms{checked})",
            res.version, res.build_ms
        ),
    );
    Ok(res)
}

/// What `lampyr deploy` prints for people once a function is deployed.
pub(crate) fn report(res: &DeployResult, t: Instant) {
    let what = if res.changed {
        "deployed"
    } else {
        "unchanged, still"
    };
    let _ = writeln!(
        out(),
        "{} {what} version {} in {:.0} ms\n{}",
        res.name,
        res.version,
        t.elapsed().as_secs_f64() * 1000.0,
        res.url
    );
    if let Some(a) = &res.alias {
        let _ = writeln!(out(), "alias {} → {}", a.alias, a.target);
        if let Some(c) = &a.canary {
            let _ = writeln!(
                out(),
                "canary: version {} on {:.0}% until {}, then promoted unless its error rate is more than {:.1} points above version {}'s (`lampyr alias ls {}`)",
                c.to,
                c.weight * 100.0,
                c.decide_at,
                c.threshold * 100.0,
                c.from,
                res.name
            );
        }
    }
}

fn too_big(size: u64, max: u64) -> String {
    format!(
        "the package is {}, over the server's limit of {} ([limits] max_package in the server configuration): leave files out with .lampyrignore (`lampyr deploy --dry-run` lists what is shipped)",
        lampyr_package::size(size),
        lampyr_package::size(max)
    )
}

/// `lampyr deploy --dry-run`: what would be shipped, and how big it is.
fn dry_run(
    dir: &Path,
    spec: &FunctionSpec,
    plan: &lampyr_package::Plan,
    package_bytes: u64,
    json: bool,
) -> Result<(), CommandError> {
    if json {
        print_json(&plan_json(&spec.name, dir, plan, package_bytes));
        return Ok(());
    }
    let mut o = out();
    for e in &plan.entries {
        let mark = match e.kind {
            lampyr_package::EntryKind::Dir => "/",
            lampyr_package::EntryKind::Link => " ->",
            lampyr_package::EntryKind::File => "",
        };
        let _ = writeln!(
            o,
            "{:>10}  {}{mark}",
            lampyr_package::size(e.size),
            e.path.display()
        );
    }
    let _ = writeln!(
        o,
        "{} would ship {}; nothing was uploaded",
        spec.name,
        shipped(dir, plan, package_bytes)
    );
    Ok(())
}

/// What a package holds, for people: "N file(s), SIZE (SIZE packed); left
/// out by RULES".
pub(crate) fn shipped(dir: &Path, plan: &lampyr_package::Plan, package_bytes: u64) -> String {
    let rules = if plan.from_ignore_file {
        format!("{}/{}", dir.display(), lampyr_package::IGNORE_FILE)
    } else {
        format!(
            "the defaults ({}; write a {} to choose)",
            lampyr_package::DEFAULT_IGNORE.join(", "),
            lampyr_package::IGNORE_FILE
        )
    };
    let files = plan
        .entries
        .iter()
        .filter(|e| e.kind == lampyr_package::EntryKind::File)
        .count();
    format!(
        "{files} file(s), {} ({} packed); left out by {rules}",
        lampyr_package::size(plan.bytes()),
        lampyr_package::size(package_bytes)
    )
}

/// What a package holds, for scripts.
pub(crate) fn plan_json(
    name: &str,
    dir: &Path,
    plan: &lampyr_package::Plan,
    package_bytes: u64,
) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = plan
        .entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "path": e.path,
                "size": e.size,
                "kind": match e.kind {
                    lampyr_package::EntryKind::File => "file",
                    lampyr_package::EntryKind::Dir => "dir",
                    lampyr_package::EntryKind::Link => "link",
                },
            })
        })
        .collect();
    serde_json::json!({
        "name": name,
        "dir": dir,
        "entries": entries,
        "bytes": plan.bytes(),
        "package_bytes": package_bytes,
        "ignore_file": plan.from_ignore_file,
    })
}

/// Reads `--data`: inline JSON, or `@file`.
pub fn read_data(data: Option<&str>) -> Result<Vec<u8>, CommandError> {
    let raw = match data {
        None => return Ok(b"{}".to_vec()),
        Some(d) if d.starts_with('@') => {
            let p = &d[1..];
            if p == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                    .map_err(|e| CommandError::Input(format!("reading stdin: {e}")))?;
                v
            } else {
                std::fs::read(p)
                    .map_err(|e| CommandError::Input(format!("cannot read --data file {p}: {e}")))?
            }
        }
        Some(d) => d.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&raw).map_err(|e| {
        CommandError::Input(format!(
            "--data is not valid JSON ({e}); quote it, e.g. --data '{{\"name\":\"x\"}}'"
        ))
    })?;
    Ok(raw)
}

/// `lampyr invoke NAME`.
pub fn invoke(
    client: &Client,
    name: &str,
    data: Option<&str>,
    json: bool,
) -> Result<(), CommandError> {
    let event = read_data(data)?;
    let reply = client.call(
        "POST",
        &format!("/api/v1/functions/{name}/invoke"),
        Some(&event),
    )?;
    let failed = reply.header("x-lampyr-function-error").is_some();
    let result: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&reply.body).into_owned())
    });
    if json {
        print_json(&serde_json::json!({
            "request_id": reply.header("x-lampyr-request-id"),
            "version": reply.header("x-lampyr-version").and_then(|v| v.parse::<u64>().ok()),
            "alias": reply.header("x-lampyr-alias"),
            "start": reply.header("x-lampyr-start"),
            "server_timing": reply.header("server-timing"),
            "error": failed,
            "result": result,
        }));
    } else if failed {
        let e = lampyr_api::FunctionError::parse(&reply.body, "Error");
        eprintln!("error: {name} failed with {}", e.summary());
        if let Some(rid) = reply.header("x-lampyr-request-id") {
            eprintln!("see its log: lampyr logs {name} --request-id {rid}");
        }
    } else {
        let _ = writeln!(
            out(),
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        if let (Some(start), Some(timing)) = (
            reply.header("x-lampyr-start"),
            reply.header("server-timing"),
        ) {
            let version = match (
                reply.header("x-lampyr-version"),
                reply.header("x-lampyr-alias"),
            ) {
                (Some(v), Some(a)) => format!("version {v} via {a}; "),
                (Some(v), None) => format!("version {v}; "),
                _ => String::new(),
            };
            eprintln!("({version}{start} start; {timing})");
        }
    }
    if failed {
        return Err(CommandError::FunctionFailed);
    }
    Ok(())
}

/// `lampyr ls`.
pub fn list(client: &Client, json: bool) -> Result<(), CommandError> {
    let list: FunctionList = client.get_json("/api/v1/functions")?;
    if json {
        print_json(&list);
        return Ok(());
    }
    if list.functions.is_empty() {
        let _ = writeln!(
            out(),
            "no functions yet: `lampyr init hello --runtime nodejs && lampyr deploy hello`"
        );
        return Ok(());
    }
    let w = list
        .functions
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<w$}  {:<7}  {:>7}  {:>9}  URL",
        "NAME", "RUNTIME", "VERSION", "INSTANCES"
    );
    for f in &list.functions {
        let _ = writeln!(
            o,
            "{:<w$}  {:<7}  {:>7}  {:>9}  {}",
            f.name, f.runtime, f.version, f.instances, f.url
        );
    }
    Ok(())
}

/// `lampyr info NAME`.
pub fn info(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let f: FunctionInfo = client.get_json(&format!("/api/v1/functions/{name}"))?;
    if json {
        print_json(&f);
        return Ok(());
    }
    let s = &f.spec;
    let c = f.instance_states;
    let mut o = out();
    let _ = writeln!(o, "name:          {}", f.name);
    if s.has_http_trigger() {
        let _ = writeln!(o, "url:           {}", f.url);
    } else {
        let _ = writeln!(
            o,
            "url:           none (no HTTP trigger: call it with `lampyr invoke {}`)",
            f.name
        );
    }
    if let Some(e) = &f.events {
        if e.pending > 0 || e.dead_letters > 0 {
            let _ = writeln!(
                o,
                "async:         {} pending{}, {} dead letter(s){}",
                e.pending,
                e.oldest_age_s
                    .map(|a| format!(" (oldest {a:.0} s)"))
                    .unwrap_or_default(),
                e.dead_letters,
                if e.dead_letters > 0 {
                    format!(" (`lampyr dlq {}`)", f.name)
                } else {
                    String::new()
                }
            );
        }
    }
    for t in &f.timers {
        let state = if t.enabled { "" } else { " (disabled)" };
        let _ = writeln!(o, "timer {}:{state} {} ({})", t.name, t.cron, t.timezone);
        if !t.next.is_empty() {
            let _ = writeln!(o, "    next:      {}", t.next.join(", "));
        }
        if let Some(l) = &t.last {
            let st = l
                .state
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                o,
                "    last:      {} → {st} ({})",
                l.scheduled_at, l.request_id
            );
        }
    }
    for src in &f.sources {
        let lag = src
            .lag
            .map(|l| format!(", lag {l} {}", src.lag_unit.as_deref().unwrap_or("")))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "source {} ({}): {}{lag}, {} delivered",
            src.trigger,
            src.kind,
            src.state.as_str(),
            src.delivered
        );
        if let Some(e) = &src.last_error {
            let at = src.last_error_at.as_deref().unwrap_or("?");
            let _ = writeln!(o, "    last error: {e} ({at})");
        }
    }
    if !lampyr_api::manifest::TriggerSpec::is_default(&s.triggers) {
        let kinds: Vec<&str> = s.triggers.iter().map(|t| t.kind().as_str()).collect();
        let _ = writeln!(
            o,
            "triggers:      {}",
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            }
        );
    }
    let _ = writeln!(o, "runtime:       {}  handler: {}", f.runtime, f.handler);
    let _ = writeln!(
        o,
        "version:       {}  (code sha256 {}, {})",
        f.version,
        &f.code_sha256[..12.min(f.code_sha256.len())],
        lampyr_package::size(f.code_size)
    );
    for a in &f.aliases {
        let canary = a
            .canary
            .as_ref()
            .map(|c| format!("  (canary until {})", c.decide_at))
            .unwrap_or_default();
        let _ = writeln!(o, "alias:         {} → {}{canary}", a.alias, a.target);
    }
    let _ = writeln!(
        o,
        "instances:     {} (starting {}, idle {}, busy {}, draining {}, stopping {})",
        f.instances, c.starting, c.idle, c.busy, c.draining, c.stopping
    );
    let _ = writeln!(
        o,
        "memory:        {} MB  timeout: {} ms",
        s.memory_mb, s.timeout_ms
    );
    let _ = writeln!(
        o,
        "scaling:       concurrency {}, min {}, max {}, idle timeout {} ms",
        s.concurrency, s.min_instances, s.max_instances, s.idle_timeout_ms
    );
    let _ = writeln!(
        o,
        "queue:         {} requests, {} ms",
        s.max_queue, s.queue_timeout_ms
    );
    let _ = writeln!(o, "auth:          {:?}", s.auth);
    if let Some(t) = &f.trigger_token {
        let _ = writeln!(o, "trigger token: {t}");
    }
    let _ = writeln!(o, "updated:       {}", f.updated_at);
    Ok(())
}

/// `lampyr rm NAME`.
pub fn remove(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let reply = client.call("DELETE", &format!("/api/v1/functions/{name}"), None)?;
    if json {
        let v: serde_json::Value = reply.json()?;
        print_json(&v);
    } else {
        let _ = writeln!(out(), "deleted {name}");
    }
    Ok(())
}

/// `lampyr invocations NAME`.
pub fn invocations(
    client: &Client,
    name: &str,
    limit: usize,
    status: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> Result<(), CommandError> {
    let mut q = format!("/api/v1/functions/{name}/invocations?limit={limit}");
    if let Some(s) = status {
        q.push_str(&format!("&status={s}"));
    }
    if let Some(s) = since {
        q.push_str(&format!("&since={s}"));
    }
    let list: InvocationList = client.get_json(&q)?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<24}  {:<36}  {:<7}  {:>7}  {:<6}  {:<13}  {:>10}  {:>6}  {:>7}",
        "START",
        "REQUEST ID",
        "TRIGGER",
        "ATTEMPT",
        "KIND",
        "STATUS",
        "DURATION",
        "BILLED",
        "MEMORY"
    );
    for r in &list.invocations {
        let mem = r
            .max_memory_used_mb
            .map(|m| format!("{m:.0} MB"))
            .unwrap_or_else(|| "-".into());
        // Attempts of an asynchronous event share its request id.
        let attempt = r
            .attempt
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "{:<24}  {:<36}  {:<7}  {:>7}  {:<6}  {:<13}  {:>7.2} ms  {:>3} ms  {:>7}",
            r.start_time,
            r.request_id,
            r.trigger,
            attempt,
            r.start,
            r.status,
            r.duration_ms,
            r.billed_ms,
            mem
        );
    }
    Ok(())
}

/// `lampyr stats NAME`.
pub fn stats(client: &Client, name: &str, since: &str, json: bool) -> Result<(), CommandError> {
    let s: FunctionStats =
        client.get_json(&format!("/api/v1/functions/{name}/stats?since={since}"))?;
    if json {
        print_json(&s);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(o, "{name} since {} ({since})", s.since);
    let _ = writeln!(
        o,
        "invocations:  {}  (errors {}, {:.1}%)",
        s.count,
        s.errors,
        s.error_rate * 100.0
    );
    let _ = writeln!(
        o,
        "cold starts:  {}  ({:.1}% of invocations)",
        s.cold_starts,
        s.cold_start_rate * 100.0
    );
    let kinds: Vec<String> = s.by_start.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let statuses: Vec<String> = s
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(o, "start kinds:  {}", kinds.join(", "));
    let _ = writeln!(o, "statuses:     {}", statuses.join(", "));
    let _ = writeln!(o, "billed:       {:.6} GB-s", s.gb_seconds);
    let _ = writeln!(
        o,
        "\n{:<10} {:>7} {:>10} {:>10} {:>10}",
        "ms", "count", "p50", "p95", "p99"
    );
    let row = |o: &mut std::io::StdoutLock<'_>, label: &str, p: &lampyr_api::Percentiles| {
        if p.count > 0 {
            let _ = writeln!(
                o,
                "{:<10} {:>7} {:>10.3} {:>10.3} {:>10.3}",
                label, p.count, p.p50, p.p95, p.p99
            );
        }
    };
    row(&mut o, "duration", &s.duration);
    for phase in ["queue", "code", "sandbox", "runtime", "init", "exec"] {
        if let Some(p) = s.phases.get(phase) {
            row(&mut o, phase, p);
        }
    }
    if s.by_version.len() > 1 {
        let _ = writeln!(
            o,
            "\n{:<10} {:>7} {:>9} {:>9} {:>10} {:>10}",
            "version", "count", "errors", "cold", "p50 ms", "p99 ms"
        );
        for (v, vs) in &s.by_version {
            let _ = writeln!(
                o,
                "{:<10} {:>7} {:>8.1}% {:>8.1}% {:>10.3} {:>10.3}",
                v,
                vs.count,
                vs.error_rate * 100.0,
                vs.cold_start_rate * 100.0,
                vs.duration.p50,
                vs.duration.p99
            );
        }
    }
    Ok(())
}

/// `lampyr logs NAME`: the stored records, or with `follow` a stream of
/// them as the server writes them.
#[allow(clippy::too_many_arguments)]
/// Which of a function's log lines `lampyr logs` prints.
#[derive(Debug, Clone, Default)]
pub struct LogsArgs<'a> {
    /// Only lines of this invocation.
    pub request_id: Option<&'a str>,
    /// Only lines newer than this, e.g. `10m`.
    pub since: Option<&'a str>,
    /// At most this many of the newest lines.
    pub tail: usize,
    /// Only lines of this version.
    pub version: Option<u64>,
    /// Keep printing new lines.
    pub follow: bool,
}

pub fn logs(
    client: &Client,
    name: &str,
    args: &LogsArgs<'_>,
    json: bool,
) -> Result<(), CommandError> {
    let LogsArgs {
        request_id,
        since,
        tail,
        version,
        follow,
    } = *args;
    let mut q = format!("/api/v1/functions/{name}/logs?tail={tail}");
    if let Some(v) = version {
        q.push_str(&format!("&version={v}"));
    }
    if let Some(r) = request_id {
        q.push_str(&format!("&request_id={r}"));
    }
    if let Some(s) = since {
        q.push_str(&format!("&since={s}"));
    }
    if follow {
        q.push_str("&follow=1");
        return follow_logs(client, &q, json);
    }
    let list: LogList = client.get_json(&q)?;
    if json {
        print_json(&list);
        return Ok(());
    }
    if list.records.is_empty() {
        match request_id {
            Some(r) => eprintln!("no log lines of request {r} (yet)"),
            None => eprintln!("no log lines (yet)"),
        }
    }
    let mut o = out();
    for r in &list.records {
        let _ = writeln!(o, "{}", format_record(r));
    }
    Ok(())
}

/// Prints records as the server streams them (server-sent events).
fn follow_logs(client: &Client, q: &str, json: bool) -> Result<(), CommandError> {
    use std::io::BufRead;
    let body = client.stream(q)?;
    for line in std::io::BufReader::new(body).lines() {
        let line = line.map_err(|e| CommandError::Input(format!("the log stream broke: {e}")))?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim_start();
        let mut o = out();
        if json {
            let _ = writeln!(o, "{data}");
        } else if let Ok(r) = serde_json::from_str::<LogRecord>(data) {
            let _ = writeln!(o, "{}", format_record(&r));
        } else {
            let _ = writeln!(o, "{data}");
        }
        let _ = o.flush();
    }
    Ok(())
}

/// One log record as a line for people: time, short request id, who wrote
/// it (`lampyr` for the platform's own lines, `fn` for the function's
/// output, which cannot pass for them), level and message. Control
/// characters in what a function wrote are shown escaped, never sent to
/// the terminal; a message's own lines are indented under it.
pub fn format_record(r: &LogRecord) -> String {
    let rid = r
        .request_id
        .as_deref()
        .map(lampyr_api::short_request_id)
        .unwrap_or_else(|| "-".into());
    let level = r.level.as_deref().unwrap_or(match r.stream.as_str() {
        "stderr" => "ERROR",
        _ => "INFO",
    });
    let source = if r.stream == "platform" {
        "lampyr"
    } else {
        "fn"
    };
    format!(
        "{} {:<8} {:<6} {:<5} {}",
        r.ts,
        printable(&rid),
        source,
        printable(level),
        printable(&r.message).replace('\n', "\n    ")
    )
}

/// `s` with every control character but newline and tab escaped, so that
/// what a function wrote cannot drive the terminal it is shown on.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// `lampyr doctor`: what this host offers a server on `data_dir`.
pub fn print_doctor(report: &lampyr_api::DoctorReport, data_dir: &Path, json: bool) {
    if json {
        print_json(report);
        return;
    }
    let mut o = out();
    let _ = writeln!(o, "runtimes:");
    for r in &report.runtimes {
        match (&r.path, &r.version) {
            (Some(p), Some(v)) => {
                let default = if r.others.is_empty() {
                    ""
                } else {
                    " (default)"
                };
                let _ = writeln!(o, "  {:<8} ok   {v} at {p}{default}", r.runtime);
            }
            _ => {
                let _ = writeln!(
                    o,
                    "  {:<8} MISSING  {}",
                    r.runtime,
                    r.problem.as_deref().unwrap_or("")
                );
            }
        }
        for i in &r.others {
            let _ = writeln!(o, "  {:<8} ok   {} at {}", "", i.version, i.path);
        }
        for p in &r.problems {
            let _ = writeln!(o, "  {:<8} BAD  {p}", "");
        }
    }
    let _ = writeln!(o, "isolation:");
    for f in &report.isolation {
        let _ = writeln!(
            o,
            "  {:<18} {:<4} {}",
            f.feature,
            if f.enabled { "on" } else { "off" },
            f.detail
        );
    }
    let writable = std::fs::create_dir_all(data_dir).is_ok() && {
        let p = data_dir.join(".doctor-probe");
        let ok = std::fs::write(&p, b"x").is_ok();
        let _ = std::fs::remove_file(&p);
        ok
    };
    let _ = writeln!(
        o,
        "data directory:\n  {} ({})",
        report.data_dir,
        if writable { "writable" } else { "NOT writable" }
    );
}

#[cfg(test)]
mod format_tests {
    use super::*;

    fn record(stream: &str, rid: Option<&str>, message: &str) -> LogRecord {
        LogRecord {
            ts: "2026-12-04T20:00:00.000Z".into(),
            function: "f".into(),
            version: 1,
            request_id: rid.map(str::to_string),
            instance: "f-1".into(),
            stream: stream.into(),
            level: Some("INFO".into()),
            message: message.into(),
        }
    }

    #[test]
    fn function_output_cannot_drive_the_terminal_or_pose_as_lampyr() {
        let line = format_record(&record(
            "stdout",
            Some("ééééééééééé"),
            "\u{1b}]0;owned\u{7}\u{1b}[2J END RequestId: x\r\nnext",
        ));
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\n'),
            "{line:?}"
        );
        assert!(line.contains(" fn "), "{line}");
        assert!(line.contains("\\u{1b}"), "{line}");
        assert!(line.contains("\n    next"), "{line}");
        let platform = format_record(&record("platform", None, "START RequestId: y"));
        assert!(platform.contains(" lampyr "), "{platform}");
    }
}
