//! The container layer, attacked from inside: each test deploys a real
//! function that tries to escape or exhaust its sandbox, and asserts that it
//! fails. These need root, namespaces and cgroups, as in CI.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{children_of, request, Fixture, Server};

fn require_full_isolation(server: &Server) {
    let doctor = server.api("GET", "/doctor", None).json();
    let off: Vec<String> = doctor["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["enabled"] == false)
        .map(|f| format!("{}: {}", f["feature"], f["detail"]))
        .collect();
    assert!(off.is_empty(), "the sandbox tests need full isolation (run them as root on Linux with namespaces and cgroups); off here: {off:#?}");
}

/// A Python probe: `index.py` runs `code` with `event` and `json` in scope
/// and returns whatever `result` it sets.
fn py_probe(name: &str, extra: &str, code: &str) -> Fixture {
    let body = format!(
        "import json, os, sys, errno, ctypes, socket, signal, time\n\ndef handler(event, context):\n    result = None\n{}\n    return {{'statusCode': 200, 'body': json.dumps(result)}}\n",
        code.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    );
    Fixture::python(name, extra, &body)
}

/// A server with runtime pools (each probe's first call is then served by a
/// pooled instance), then one without (every instance built from scratch).
fn both_modes() -> impl Iterator<Item = Server> {
    [true, false].into_iter().map(|pooled| {
        let server = if pooled {
            Server::start()
        } else {
            Server::start_with(&["--pools", "off"])
        };
        require_full_isolation(&server);
        assert_eq!(server.pools_enabled(), pooled);
        server
    })
}

fn probe(server: &Server, name: &str, query: &str) -> serde_json::Value {
    let expect_pooled = server.pools_enabled() && server.instances(name) == 0;
    if expect_pooled {
        server.wait_pools_ready();
    }
    let r = server.get(&format!("{name}?{query}"));
    if expect_pooled {
        assert_eq!(
            r.header("x-lampyr-start"),
            Some("pooled"),
            "{name} ran on a pooled instance"
        );
    }
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

const TRY_OPEN: &str = r#"
def attempt(path, mode='r'):
    try:
        with open(path, mode) as f:
            if 'w' in mode:
                f.write('x')
            else:
                f.read(1)
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

#[test]
fn functions_cannot_read_other_code_the_data_dir_or_secrets() {
    for server in both_modes() {
        let victim = Fixture::new(
            "name = \"victim\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n",
            &[
                ("index.js", "exports.handler = async () => 'v';"),
                ("secret.txt", "the victim's secret"),
            ],
        );
        let sha = server.deploy(victim.path())["code_sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let code = format!(
        "{TRY_OPEN}\nq = event['queryStringParameters']\nresult = {{p: attempt(p) for p in q['paths'].split(',')}}\nresult['task'] = sorted(os.listdir('/var/task'))\nresult['root_exists'] = os.path.exists('/root')\nresult['home'] = os.path.exists('/home')\nresult['etc'] = sorted(os.listdir('/etc'))"
    );
        let f = py_probe("snoop", "", &code);
        server.deploy(f.path());
        let data = server.data.display().to_string();
        let victim_code = format!("{data}/code/{sha}/secret.txt");
        let paths = [
            victim_code.clone(),
            format!("{data}/lampyr.db"),
            format!("{data}/token"),
            "/etc/shadow".into(),
            "/root/.bash_history".into(),
        ];
        let v = probe(&server, "snoop", &format!("paths={}", paths.join(",")));
        for p in &paths {
            assert!(
                v[p] == "ENOENT" || v[p] == "EACCES",
                "{p} must be unreachable, got {}",
                v[p]
            );
        }
        assert_eq!(
            v["task"],
            // With its bytecode, compiled when it was deployed.
            serde_json::json!(["__pycache__", "index.py", "lampyr.toml"]),
            "only its own code is at /var/task"
        );
        assert_eq!(v["root_exists"], false);
        assert_eq!(v["home"], false);
        let etc: Vec<&str> = v["etc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            !etc.contains(&"shadow") && etc.contains(&"passwd"),
            "{etc:?}"
        );
    }
}

#[test]
fn the_filesystem_is_read_only_outside_a_bounded_tmp() {
    for server in both_modes() {
        let code = format!(
        "{TRY_OPEN}\nresult = {{p: attempt(p, 'w') for p in ['/var/task/x', '/etc/x', '/x', '/usr/x', '/var/runtime/x', '/dev/x', '/tmp/ok']}}\nwritten = 0\ntry:\n    with open('/tmp/fill', 'wb') as fh:\n        chunk = b'x' * (1 << 20)\n        for _ in range(200):\n            fh.write(chunk)\n            fh.flush()\n            written += 1\nexcept OSError as e:\n    result['fill_error'] = errno.errorcode.get(e.errno)\nresult['fill_mb'] = written\nos.remove('/tmp/fill')"
    );
        server.deploy(py_probe("scribble", "memory_mb = 256\n", &code).path());
        let v = probe(&server, "scribble", "");
        for p in [
            "/var/task/x",
            "/etc/x",
            "/x",
            "/usr/x",
            "/var/runtime/x",
            "/dev/x",
        ] {
            assert!(
                v[p] == "EROFS" || v[p] == "EACCES",
                "{p} must not be writable, got {}",
                v[p]
            );
        }
        assert_eq!(v["/tmp/ok"], "ok");
        assert_eq!(v["fill_error"], "ENOSPC", "{v}");
        assert!(v["fill_mb"].as_u64().unwrap() <= 64, "/tmp is bounded: {v}");
    }
}

#[test]
fn host_processes_are_invisible_and_out_of_reach() {
    for server in both_modes() {
        let code = "pid = int(event['queryStringParameters']['pid'])\nresult = {'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), 'me': os.getpid()}\ntry:\n    os.kill(pid, signal.SIGKILL)\n    result['kill'] = 'ok'\nexcept OSError as e:\n    result['kill'] = errno.errorcode.get(e.errno)\nresult['hostname'] = socket.gethostname()\nresult['uid'] = os.getuid()";
        server.deploy(py_probe("peek", "", code).path());
        let v = probe(&server, "peek", &format!("pid={}", server.pid()));
        assert_eq!(
            v["kill"], "ESRCH",
            "the server's pid does not exist in the sandbox: {v}"
        );
        let procs = v["procs"].as_array().unwrap();
        assert!(
            procs.len() <= 3,
            "only the sandbox's own processes are visible: {procs:?}"
        );
        assert_eq!(v["me"], 2, "the runtime is PID 2 under the sandbox's init");
        assert_eq!(v["hostname"], "lampyr");
        assert_ne!(v["uid"], 0);
        assert_eq!(server.get("peek?pid=1").status, 200, "the server survived");
    }
}

#[test]
fn a_fork_bomb_hits_the_pids_limit_and_the_server_stays_responsive() {
    for server in both_modes() {
        let code = "children = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        result = {'forked': children, 'error': errno.errorcode.get(e.errno)}\n        break\n    if pid == 0:\n        time.sleep(3600)\n        os._exit(0)\n    children += 1";
        server.deploy(py_probe("bomb", "timeout = \"20s\"\nmemory_mb = 2048\n", code).path());
        server.deploy(
            Fixture::node(
                "bystander",
                "",
                "exports.handler = async () => 'still here';",
            )
            .path(),
        );
        let server = Arc::new(server);
        let s = server.clone();
        let bomb = std::thread::spawn(move || probe(&s, "bomb", ""));
        // The server answers while the bomb goes off.
        let t = Instant::now();
        assert_eq!(
            request("GET", &format!("{}/healthz", server.url), None, &[]).status,
            200
        );
        assert_eq!(server.get("bystander").text(), "still here");
        assert!(t.elapsed() < Duration::from_secs(15));
        let v = bomb.join().unwrap();
        assert_eq!(v["error"], "EAGAIN", "{v}");
        assert!(
            v["forked"].as_u64().unwrap() < 256,
            "the pids limit holds: {v}"
        );
        // Deleting the function kills the whole tree.
        server.api("DELETE", "/functions/bomb", None);
        server.wait_until("the bomb's instance to go", Duration::from_secs(10), || {
            server.api("GET", "/functions", None).json()["functions"]
                .as_array()
                .unwrap()
                .len()
                == 1
        });
        assert_eq!(server.get("bystander").text(), "still here");
    }
}

#[test]
fn exceeding_memory_gives_out_of_memory_for_that_invocation_only() {
    for server in both_modes() {
        let hog = Fixture::node(
        "resize",
        "memory_mb = 64\n",
        "const held = [];\nexports.handler = async (e) => {\n  if (e.rawPath === '/hog') { for (let i = 0; i < 64; i++) held.push(Buffer.alloc(8 << 20, 1)); }\n  return 'fine';\n};",
    );
        server.deploy(hog.path());
        let py = py_probe("resize-py", "memory_mb = 48\n", "if event['rawPath'] == '/hog':\n    hold = [b'x' * (8 << 20) for _ in range(64)]\nresult = 'fine'");
        server.deploy(py.path());
        for name in ["resize", "resize-py"] {
            let r = server.get(&format!("{name}/hog"));
            assert_eq!(r.status, 502, "{}", r.text());
            let v = r.json();
            assert_eq!(v["error"]["code"], "out_of_memory");
            let msg = v["error"]["message"].as_str().unwrap();
            let limit = if name == "resize" { 64 } else { 48 };
            assert!(
                msg.contains(&format!(
                    "function '{name}' exceeded its memory limit of {limit} MiB"
                )),
                "{msg}"
            );
            let rid = r.header("x-lampyr-request-id").unwrap().to_string();
            server.wait_until(
                "the out-of-memory line in the function's log",
                Duration::from_secs(10),
                || {
                    server
                        .logs(name, &format!("request_id={rid}"))
                        .iter()
                        .any(|l| {
                            l["message"]
                                .as_str()
                                .unwrap()
                                .contains("exceeded its memory limit")
                        })
                },
            );
            let r = server.get(name);
            assert_eq!(r.status, 200, "the next invocation succeeds: {}", r.text());
            assert!(r.text().contains("fine"));
            assert!(
                common::fresh(&r),
                "a new instance served it: {:?}",
                r.header("x-lampyr-start")
            );
        }
    }
}

#[test]
fn the_default_network_cannot_reach_the_hosts_loopback_and_host_is_opt_in() {
    for server in both_modes() {
        let code = "port = int(event['queryStringParameters']['port'])\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', port))\n    result = 'connected'\nexcept OSError as e:\n    result = errno.errorcode.get(e.errno, str(e))\nfinally:\n    s.close()";
        server.deploy(py_probe("isolated", "", code).path());
        server.deploy(py_probe("hostnet", "network = \"host\"\n", code).path());
        let port = server.url.rsplit(':').next().unwrap().to_string();
        assert_eq!(
            probe(&server, "isolated", &format!("port={port}")),
            "ECONNREFUSED"
        );
        let r = server.get(&format!("hostnet?port={port}"));
        assert_eq!(
            r.header("x-lampyr-start"),
            Some("cold"),
            "host-network functions are never pooled"
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
            "connected"
        );
    }
}

#[test]
fn privileged_system_calls_fail_with_eperm() {
    for server in both_modes() {
        let code = "libc = ctypes.CDLL('libc.so.6', use_errno=True)\ndef call(f, *args):\n    r = f(*args)\n    return 'ok' if r == 0 else errno.errorcode.get(ctypes.get_errno())\nresult = {\n  'mount': call(libc.mount, b'tmpfs', b'/tmp', b'tmpfs', 0, None),\n  'umount': call(libc.umount2, b'/proc', 2),\n  'unshare_user': call(libc.unshare, 0x10000000),\n  'unshare_ns': call(libc.unshare, 0x00020000),\n  'ptrace': call(libc.ptrace, 0, 0, None, None),\n  'chroot': call(libc.chroot, b'/tmp'),\n  'setuid0': call(libc.setuid, 0),\n}";
        server.deploy(py_probe("escalate", "", code).path());
        let v = probe(&server, "escalate", "");
        for call in [
            "mount",
            "umount",
            "unshare_user",
            "unshare_ns",
            "ptrace",
            "chroot",
            "setuid0",
        ] {
            assert_eq!(v[call], "EPERM", "{call}: {v}");
        }
    }
}

#[test]
fn a_timeout_kills_the_functions_own_children_too() {
    for server in both_modes() {
        let code = "import subprocess\nif event['rawPath'] == '/spawn':\n    subprocess.Popen(['/bin/sleep', '3600'])\n    time.sleep(60)\nresult = len([p for p in os.listdir('/proc') if p.isdigit()])";
        server.deploy(py_probe("spawner", "timeout = \"1s\"\n", code).path());
        assert_eq!(server.get("spawner/spawn").status, 504);
        server.wait_until(
            "the timed-out instance to go",
            Duration::from_secs(10),
            || server.instances("spawner") == 0,
        );
        // No sleep 3600 survives anywhere on the host.
        let leftovers = std::process::Command::new("pgrep")
            .args(["-f", "^/bin/sleep 3600$"])
            .output()
            .unwrap();
        assert!(
            leftovers.stdout.is_empty(),
            "the function's child outlived its instance: {}",
            String::from_utf8_lossy(&leftovers.stdout)
        );
    }
}

#[test]
fn nothing_is_left_behind_after_a_sigkill_once_the_server_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start_in(&data, &["--pools", "off"]);
    require_full_isolation(&server);
    server.deploy(Fixture::node("linger", "", "exports.handler = async () => 'x';").path());
    assert_eq!(server.get("linger").status, 200);
    let tag_dirs = |data: &std::path::Path| -> Vec<std::path::PathBuf> {
        let tag = lampyr_sandbox::path_tag(data);
        let mut out = Vec::new();
        for hier in ["memory", "pids", "cpu"] {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let path = own
                .lines()
                .find_map(|l| {
                    let mut it = l.splitn(3, ':');
                    let (_, c, p) = (it.next()?, it.next()?, it.next()?);
                    c.split(',').any(|x| x == hier).then(|| p.to_string())
                })
                .unwrap_or_else(|| "/".into());
            let parent = std::path::Path::new("/sys/fs/cgroup")
                .join(hier)
                .join(path.trim_start_matches('/'))
                .join(format!("lampyr-{tag}"));
            if let Ok(entries) = std::fs::read_dir(&parent) {
                out.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().unwrap().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        out
    };
    assert!(!tag_dirs(&data).is_empty(), "the instance has cgroups");
    server.kill();
    let server = Server::start_in(&data, &["--pools", "off"]);
    assert!(
        tag_dirs(&data).is_empty(),
        "stale instance cgroups are removed at start: {:?}",
        tag_dirs(&data)
    );
    assert_eq!(server.get("linger").text(), "x");
    assert!(!tag_dirs(&data).is_empty());
    server.api("DELETE", "/functions/linger", None);
    server.wait_until(
        "the stopped instance's cgroup to go",
        Duration::from_secs(10),
        || tag_dirs(&data).is_empty(),
    );
    assert_eq!(server.get("linger").status, 404);
    drop(server);
    assert!(tag_dirs(&data).is_empty(), "a clean stop leaves no cgroups");
}

#[test]
fn strict_isolation_starts_here_and_off_is_reported_as_off() {
    let tmp = tempfile::tempdir().unwrap();
    let strict = Server::start_in(&tmp.path().join("strict"), &["--isolation", "strict"]);
    require_full_isolation(&strict);
    drop(strict);
    let plain = Server::start_in(&tmp.path().join("plain"), &["--isolation", "off"]);
    let doctor = plain.api("GET", "/doctor", None).json();
    let namespaces = doctor["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "namespaces")
        .unwrap()
        .clone();
    assert_eq!(namespaces["enabled"], false);
    // Functions still run, as plain processes.
    plain.deploy(
        Fixture::python(
            "plain-fn",
            "",
            "import os\ndef handler(e, c):\n    return os.getuid()\n",
        )
        .path(),
    );
    assert_eq!(plain.get("plain-fn").text(), "0");
}

/// Every jailed instance begins as the small `lampyr-init` installed beside
/// `lampyr`. A `lampyr` without it (as `cargo run` builds it), or with one
/// from another build, starts its instances as `lampyr __sandbox-init`,
/// jailed just the same.
#[test]
fn instances_start_from_lampyr_init_or_else_from_lampyr_itself() {
    use std::os::unix::fs::PermissionsExt;
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("lampyr");
    std::fs::copy(common::BIN, &copy).unwrap();
    let stale_dir = tempfile::tempdir().unwrap();
    let beside_stale = stale_dir.path().join("lampyr");
    std::fs::copy(common::BIN, &beside_stale).unwrap();
    let stale = stale_dir.path().join("lampyr-init");
    std::fs::write(&stale, "#!/bin/sh\necho 0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o755)).unwrap();
    let installed = std::path::PathBuf::from(common::BIN);
    let init = std::path::PathBuf::from(common::INIT_BIN);
    assert_eq!(
        init.parent(),
        installed.parent(),
        "lampyr-init is built beside lampyr"
    );
    let code = "const os = require('os');\nexports.handler = async () => ({ hostname: os.hostname(), uid: process.getuid() });\n";
    for (exe, expected_init) in [
        (installed, init),
        (copy.clone(), copy),
        (beside_stale.clone(), beside_stale),
    ] {
        let server = Server::start_exe(&exe, &["--pools", "off"]);
        require_full_isolation(&server);
        server.deploy(Fixture::node("who", "idle_timeout = \"1m\"\n", code).path());
        let r = server.get("who");
        assert_eq!(r.status, 200, "{}: {}", exe.display(), r.text());
        let v = r.json();
        assert_eq!(v["hostname"], "lampyr", "{}: jailed", exe.display());
        assert_ne!(v["uid"], 0, "{}: unprivileged", exe.display());
        // The instance's outer init process stays the server's child for
        // the instance's lifetime.
        let inits: Vec<std::path::PathBuf> = children_of(server.pid())
            .into_iter()
            .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .collect();
        assert!(
            inits.contains(&expected_init),
            "{}: an instance runs {} (the server's children run {inits:?})",
            exe.display(),
            expected_init.display()
        );
    }
}

/// Instances run under `SCHED_BATCH` (see `lampyr_sandbox::batch_scheduling`),
/// every thread of them, whichever way they were started: pooled, from
/// scratch, or as plain processes.
#[test]
fn instances_and_their_threads_run_as_batch_tasks() {
    const SCHED_BATCH: &str = "3";
    let node = r#"
const fs = require('fs');
exports.handler = async () => {
  // Field 41 of /proc/PID/task/TID/stat is the scheduling policy.
  const policy = (p) => fs.readFileSync(p, 'utf8').split(') ')[1].split(' ')[38];
  const dir = '/proc/self/task';
  return fs.readdirSync(dir).map((t) => policy(`${dir}/${t}/stat`));
};
"#;
    let py = "import os\ndef handler(e, c):\n    return [str(os.sched_getscheduler(0))]\n";
    let tmp = tempfile::tempdir().unwrap();
    let servers = both_modes().chain(std::iter::once_with(|| {
        Server::start_in(&tmp.path().join("plain"), &["--isolation", "off"])
    }));
    for server in servers {
        server.deploy(Fixture::node("batch-node", "", node).path());
        server.deploy(Fixture::python("batch-py", "", py).path());
        for name in ["batch-node", "batch-py"] {
            if server.pools_enabled() {
                server.wait_pools_ready();
            }
            let r = server.get(name);
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            let policies: Vec<String> = serde_json::from_slice(&r.body).unwrap();
            assert!(
                !policies.is_empty() && policies.iter().all(|p| p == SCHED_BATCH),
                "{name} ({:?} start): thread policies {policies:?}",
                r.header("x-lampyr-start")
            );
        }
    }
}
