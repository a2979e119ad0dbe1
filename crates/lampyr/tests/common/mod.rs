//! The integration-test harness: starts the real `lampyr` binary on a free
//! port with its own data directory, and talks to it over HTTP.
#![allow(dead_code)]

pub mod aws;
pub mod nats;
pub mod net;
pub mod pg;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_lampyr");
/// The sandbox init executable built beside [`BIN`].
pub const INIT_BIN: &str = env!("CARGO_BIN_EXE_lampyr-init");

/// The `lampyr` executable the tests run: this build's, or the one
/// `LAMPYR_TEST_BIN` names (to check that a test catches what an earlier
/// build got wrong).
pub fn bin() -> PathBuf {
    std::env::var_os("LAMPYR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

/// The parent of process `pid`, while it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) state ": the comm may hold spaces, so split after ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|&p| parent_of(p) == Some(pid))
                .collect()
        })
        .unwrap_or_default()
}

pub struct Server {
    pub url: String,
    pub data: PathBuf,
    child: Child,
    _tmp: Option<tempfile::TempDir>,
    /// The server's stderr (its log), line by line, the latest
    /// [`LOG_LINES`] kept; and whether the pipe has closed.
    log: std::sync::Arc<std::sync::Mutex<(std::collections::VecDeque<String>, bool)>>,
}

/// How many of the server's latest log lines a test can read.
const LOG_LINES: usize = 10_000;

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Sends a request; panics if no answer comes (the connection failed).
pub fn request(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
    try_request(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Sends a request; `Err` says why no answer came (the connection failed
/// or broke before the response's head).
pub fn try_request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let a = agent();
    let result = match method {
        "GET" | "DELETE" | "HEAD" => {
            let mut r = match method {
                "GET" => a.get(url),
                "HEAD" => a.head(url),
                _ => a.delete(url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "PUT" => a.put(url),
                "PATCH" => a.patch(url),
                _ => a.post(url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or_default())
        }
    };
    let mut resp = result.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_default();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

impl Server {
    /// Starts a server with a fresh data directory.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with a fresh data directory and extra arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_exe(&bin(), extra)
    }

    /// Starts the `lampyr` executable `exe` with a fresh data directory and
    /// extra arguments.
    pub fn start_exe(exe: &Path, extra: &[&str]) -> Server {
        Server::start_exe_env(exe, extra, &[])
    }

    /// Starts a server with a fresh data directory and `env` set in its
    /// environment.
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        Server::start_exe_env(&bin(), &[], env)
    }

    fn start_exe_env(exe: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Server::start_exe_in(exe, &data, extra, env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data` with extra arguments, waiting until it
    /// announces its address.
    pub fn start_in(data: &Path, extra: &[&str]) -> Server {
        Server::start_exe_in(&bin(), data, extra, &[])
    }

    fn start_exe_in(exe: &Path, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .env("LAMPYR_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lampyr serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let log = std::sync::Arc::new(std::sync::Mutex::new((
            std::collections::VecDeque::new(),
            false,
        )));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    seen2.lock().unwrap().push(line.clone());
                }
                {
                    let mut log = log2.lock().unwrap();
                    if log.0.len() >= LOG_LINES {
                        log.0.pop_front();
                    }
                    log.0.push_back(line.clone());
                }
                if !sent {
                    if let Some(i) = line.find("lampyr listening on ") {
                        let rest = &line[i + "lampyr listening on ".len()..];
                        let url: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        let _ = tx.send(url);
                        sent = true;
                    }
                }
                if std::env::var_os("LAMPYR_TEST_VERBOSE").is_some() {
                    eprintln!("[server] {line}");
                }
            }
            log2.lock().unwrap().1 = true;
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not announce its address; it said:\n{}",
                    seen.lock().unwrap().join("\n")
                )
            });
        Server {
            url,
            data: data.to_path_buf(),
            child,
            _tmp: None,
            log,
        }
    }

    /// The server's log (its stderr) so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().0.iter().cloned().collect()
    }

    /// The server's whole log once it has exited: waits (boundedly) until
    /// the last line is read.
    pub fn final_log(&mut self) -> Vec<String> {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "the server is still running"
        );
        wait_until(
            "the server's stderr to close",
            Duration::from_secs(10),
            &mut || self.log.lock().unwrap().1,
        );
        self.log()
    }

    /// Sends the server SIGTERM, without waiting for it to stop.
    pub fn terminate(&self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).unwrap();
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until every enabled runtime pool has its target of instances
    /// ready.
    pub fn wait_pools_ready(&self) {
        self.wait_until("the runtime pools to fill", Duration::from_secs(30), || {
            let pools = self.api("GET", "/pools", None).json();
            pools.as_array().unwrap().iter().all(|p| {
                p["enabled"] == false
                    || p["ready"].as_u64().unwrap() >= p["target"].as_u64().unwrap()
            })
        });
    }

    /// True when this server keeps runtime pools.
    pub fn pools_enabled(&self) -> bool {
        let pools = self.api("GET", "/pools", None).json();
        pools
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["enabled"] == true)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Calls the management API with the token.
    pub fn api(&self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        let auth = format!("Bearer {}", self.token());
        request(
            method,
            &format!("{}/api/v1{path}", self.url),
            body,
            &[("authorization", &auth)],
        )
    }

    /// Calls a function's HTTP trigger.
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        request(method, &format!("{}/fn/{path}", self.url), body, &[])
    }

    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    /// Deploys a directory through the API, without the load check (so
    /// that its first call starts an instance, as the tests of cold starts
    /// need); panics unless it succeeds.
    pub fn deploy(&self, dir: &Path) -> serde_json::Value {
        self.deploy_with(dir, "?verify=false")
    }

    /// Deploys a directory as `lampyr deploy` does: checked that it loads,
    /// the checked instance kept warm.
    pub fn deploy_checked(&self, dir: &Path) -> serde_json::Value {
        self.deploy_with(dir, "")
    }

    fn deploy_with(&self, dir: &Path, query: &str) -> serde_json::Value {
        let name = manifest_name(dir);
        let pkg = lampyr_store::pack_dir(dir).unwrap();
        let r = self.api("PUT", &format!("/functions/{name}{query}"), Some(&pkg));
        assert_eq!(r.status, 200, "deploy {name}: {}", r.text());
        r.json()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("LAMPYR_URL", &self.url)
            .env("LAMPYR_DATA_DIR", &self.data)
            .env_remove("LAMPYR_TOKEN")
            .output()
            .expect("run lampyr")
    }

    pub fn info(&self, name: &str) -> serde_json::Value {
        let r = self.api("GET", &format!("/functions/{name}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn instances(&self, name: &str) -> u64 {
        self.info(name)["instances"].as_u64().unwrap()
    }

    /// Polls `cond` until it holds, failing the test after `limit`.
    pub fn wait_until(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        wait_until(what, limit, &mut cond)
    }

    pub fn logs(&self, name: &str, query: &str) -> Vec<serde_json::Value> {
        let r = self.api("GET", &format!("/functions/{name}/logs?{query}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["records"].as_array().unwrap().clone()
    }

    /// Stops the server with SIGKILL, the harshest way.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and waits for it to finish cleanly.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.kill();
                panic!("the server did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// `GET /metrics`, as Prometheus reads it.
    pub fn metrics(&self) -> String {
        let r = request("GET", &format!("{}/metrics", self.url), None, &[]);
        assert_eq!(r.status, 200);
        r.text()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Deploys a raw package; returns the response whatever it is.
    pub fn deploy_package(&self, name: &str, package: &[u8]) -> Resp {
        self.api("PUT", &format!("/functions/{name}"), Some(package))
    }
}

/// A field of `/proc/PID/status` in KiB (0 if absent).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Writes `text` to a fresh config file and returns its path (kept as
/// long as the returned directory lives).
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("lampyr-server.toml");
    std::fs::write(&p, text).unwrap();
    let s = p.to_str().unwrap().to_string();
    (d, s)
}

/// A package built entry by entry, for what `lampyr deploy` would never
/// make: links, caches, odd entries, data after the archive's end.
pub struct RawPackage {
    tar: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Default for RawPackage {
    fn default() -> Self {
        Self::new()
    }
}

impl RawPackage {
    pub fn new() -> RawPackage {
        RawPackage {
            tar: tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::best(),
            )),
        }
    }

    pub fn file(mut self, name: &str, body: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        self.tar.append_data(&mut h, name, body).unwrap();
        self
    }

    pub fn dir(mut self, name: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        self.tar
            .append_data(&mut h, name, std::io::empty())
            .unwrap();
        self
    }

    pub fn link(mut self, name: &str, target: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        self.tar.append_link(&mut h, name, target).unwrap();
        self
    }

    /// Ends the archive, then appends `trailing` zero bytes inside the
    /// gzip stream.
    pub fn finish(mut self, trailing: usize) -> Vec<u8> {
        self.tar.finish().unwrap();
        let mut gz = self.tar.into_inner().unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = trailing;
        while left > 0 {
            let n = left.min(zeros.len());
            std::io::Write::write_all(&mut gz, &zeros[..n]).unwrap();
            left -= n;
        }
        gz.finish().unwrap()
    }
}

/// Where scripts/test installed `what` under target/test-deps (`install`
/// says how, for the message when it is missing); the environment variable
/// `LAMPYR_TEST_<WHAT>` (`-` as `_`) overrides it.
pub fn test_deps(what: &str, install: &str) -> PathBuf {
    let var = format!("LAMPYR_TEST_{}", what.to_uppercase().replace('-', "_"));
    let dir = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/test-deps")
            .join(what)
    });
    assert!(
        dir.join(".complete").exists(),
        "{} has no {what}: run the tests with scripts/test, which installs it ({})",
        dir.display(),
        install.replace("DIR", &dir.display().to_string())
    );
    dir
}

/// Copies `from` into `to` (a function's directory, say), skipping
/// bytecode caches, scripts and the `.complete` marker of scripts/test.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "__pycache__" || name == "bin" || name == ".complete" {
            continue;
        }
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// The manifest of a Node.js function `name`.
pub fn node_manifest(name: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n")
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if !std::thread::panicking() {
                self.stop();
            } else {
                self.kill();
            }
        }
        // A server that was killed leaves its sandbox's mounts (views of
        // host directories, the slots' tmpfs) under its data directory,
        // which its temporary directory cannot be removed through.
        if self._tmp.is_some() {
            detach_mounts_under(&self.data);
        }
    }
}

/// Detaches every mount at or under `dir`, deepest first.
pub fn detach_mounts_under(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // The mount point is the fifth field (spaces escaped as \040).
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

pub fn wait_until(what: &str, limit: Duration, cond: &mut dyn FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

fn manifest_name(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("lampyr.toml")).unwrap();
    let v: toml_lite::Value = toml_lite::parse(&text);
    v.name
}

/// Just enough TOML reading to get a manifest's name.
mod toml_lite {
    pub struct Value {
        pub name: String,
    }
    pub fn parse(text: &str) -> Value {
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name") {
                let rest = rest.trim_start();
                if let Some(v) = rest.strip_prefix('=') {
                    return Value {
                        name: v.trim().trim_matches('"').to_string(),
                    };
                }
            }
        }
        panic!("manifest has no name");
    }
}

/// A function directory built from (file, content) pairs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(manifest: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lampyr.toml"), manifest).unwrap();
        for (f, body) in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        Fixture { dir }
    }

    /// A Node.js function `name` with `index.js` = `code` and extra manifest lines.
    pub fn node(name: &str, extra: &str, code: &str) -> Fixture {
        Fixture::new(
            &format!(
                "name = \"{name}\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n{extra}"
            ),
            &[("index.js", code)],
        )
    }

    /// A Python function `name` with `index.py` = `code`.
    pub fn python(name: &str, extra: &str, code: &str) -> Fixture {
        Fixture::new(
            &format!(
                "name = \"{name}\"\nruntime = \"python\"\nhandler = \"index.handler\"\n{extra}"
            ),
            &[("index.py", code)],
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, file: &str, body: &str) {
        std::fs::write(self.dir.path().join(file), body).unwrap();
    }
}

/// True when a response came from a newly started instance (cold, or
/// specialised from a pool) rather than a warm one.
pub fn fresh(r: &Resp) -> bool {
    matches!(r.header("x-lampyr-start"), Some("cold") | Some("pooled"))
}

/// `major` and `major.minor` of each runtime `lampyr doctor` found.
pub fn installed(server: &Server) -> (String, String) {
    let out = server.cli(&["doctor", "--json"]);
    assert!(out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |rt: &str| {
        d["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["runtime"] == rt)
            .and_then(|r| r["version"].as_str())
            .unwrap_or_else(|| panic!("doctor found no {rt}: {d}"))
            .to_string()
    };
    let node = version("nodejs");
    let python = version("python");
    let node_major = node.split('.').next().unwrap().to_string();
    let python_minor = python.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    (node_major, python_minor)
}
