//! A throwaway PostgreSQL cluster for a test: `initdb` and `pg_ctl` from
//! the installed PostgreSQL (Debian's `/usr/lib/postgresql/N/bin`), with
//! `wal_level = logical`, listening on 127.0.0.1 only (a free port) and on
//! a Unix socket in its own temporary directory, a password for TCP
//! logins. PostgreSQL refuses to run as root, so as root the cluster runs
//! as the `postgres` user (Debian's package creates it). It is stopped
//! when dropped, a failing test included.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    pub port: u16,
    pub password: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/N/bin/initdb): scripts/test installs postgresql and its wal2json plugin")
    })
}

fn as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `program args…`, as the `postgres` user when we are root.
fn pg_command(program: &Path, dir: &Path) -> Command {
    let mut c = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.current_dir(dir).env_remove("PGPASSWORD");
    c
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// One with `ssl = on`, presenting `cert` (TLS and plain connections
    /// are both allowed, as `host` lines allow them).
    pub fn start_tls(cert: &super::tls::Issued) -> Postgres {
        Postgres::start_with(Some(cert))
    }

    fn start_with(cert: Option<&super::tls::Issued>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let password = format!("pw-{}", std::process::id() as u64 * 7919 + 13);
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        let mut owned = vec![dir.path().to_path_buf(), pwfile.clone()];
        let mut ssl = String::new();
        if let Some(cert) = cert {
            let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&crt, &cert.cert_pem).unwrap();
            std::fs::write(&key, &cert.key_pem).unwrap();
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            );
            owned.extend([crt, key]);
        }
        if as_root() {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("a postgres user (Debian's postgresql package creates it)");
            for p in &owned {
                nix::unistd::chown(p, Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        let mut init = pg_command(&bin.join("initdb"), dir.path());
        init.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(init, "initdb").unwrap();
        // A free port: asked of the kernel, then given to PostgreSQL (tried
        // again should another process take it in between).
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut ctl = pg_command(&bin.join("pg_ctl"), dir.path());
            ctl.arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-c wal_level=logical -c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c max_replication_slots=16 -c fsync=off -c shared_buffers=16MB -c max_connections=40{ssl}",
                    dir.path().display()
                ))
                .arg("start");
            match run(ctl, "pg_ctl start") {
                Ok(_) => {
                    return Postgres {
                        port,
                        password,
                        bin,
                        dir,
                    }
                }
                Err(e) => last = e,
            }
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start: {last}\n{log}");
    }

    /// A DSN for the superuser over TCP on 127.0.0.1, with its password.
    pub fn dsn(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// Runs `sql` with psql over the Unix socket; its output, tuples only.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        run(c, &format!("psql -c {sql:?}")).map(|s| s.trim().to_string())
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// How many connections to it use TLS now.
    pub fn tls_connections(&self) -> usize {
        self.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
            .parse()
            .unwrap()
    }

    /// Whether the replication slot `name` exists.
    pub fn has_slot(&self, name: &str) -> bool {
        self.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
        )) == "1"
    }

    /// How many bytes of WAL the slot `name` holds back from the end.
    pub fn slot_lag(&self, name: &str) -> Option<i64> {
        self.psql(&format!(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .parse()
        .ok()
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut ctl = pg_command(&self.bin.join("pg_ctl"), self.dir.path());
        ctl.arg("-D").arg(self.dir.path().join("data")).args([
            "-w",
            "-t",
            "30",
            "-m",
            "immediate",
            "stop",
        ]);
        if let Err(e) = run(ctl, "pg_ctl stop") {
            eprintln!("{e}");
        }
    }
}
