//! A stand-in for the internet, made by a test: a network namespace joined
//! to the host by a veth pair, with an HTTP server and a DNS server of the
//! test's own in it. Every address a network test uses is on loopback or
//! in such a namespace; nothing is ever sent anywhere else, and the host's
//! own resolver is never asked (the server under test is configured with
//! this DNS server).

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The HTTP server's page.
pub const PAGE: &str = "hello from the internet";

pub struct FakeInternet {
    ns: String,
    host_if: String,
    /// The host's end of the veth: one of the host's own addresses.
    pub host_addr: Ipv4Addr,
    /// The "public" server address, in the namespace.
    pub public: Ipv4Addr,
    /// A private address (10.254.K.2), also in the namespace.
    pub private: Ipv4Addr,
    /// The namespace's DNS server: `example.test` is `public`,
    /// `private.test` is `private`.
    pub dns: SocketAddr,
    procs: Vec<Child>,
    _www: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    pub fn start() -> FakeInternet {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let k = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 62 + 1;
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let ns = format!("lampyr-t{tag}");
        let (host_if, peer_if) = (format!("lt{tag}h"), format!("lt{tag}i"));
        let host_addr = Ipv4Addr::new(198, 51, 100, (4 * k + 1) as u8);
        let public = Ipv4Addr::new(198, 51, 100, (4 * k + 2) as u8);
        let private = Ipv4Addr::new(10, 254, k as u8, 2);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{public}/30"), "dev", &peer_if]);
        inside(&["addr", "add", &format!("{private}/24"), "dev", &peer_if]);
        inside(&["link", "set", &peer_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ip(&[
            "route",
            "add",
            &format!("10.254.{k}.0/24"),
            "via",
            &public.to_string(),
        ]);
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), PAGE).unwrap();
        let in_ns = |program: &str| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns, program])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let http = in_ns("python3")
            .args([
                "-m",
                "http.server",
                "80",
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(www.path())
            .spawn()
            .unwrap();
        let dns_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/net/dns.py");
        let dns = in_ns("python3")
            .arg(dns_py)
            .arg(public.to_string())
            .arg(format!("example.test={public}"))
            .arg(format!("private.test={private}"))
            .spawn()
            .unwrap();
        let net = FakeInternet {
            ns,
            host_if,
            host_addr,
            public,
            private,
            dns: SocketAddr::from((public, 53)),
            procs: vec![http, dns],
            _www: www,
        };
        super::wait_until(
            "the fake internet's servers",
            Duration::from_secs(20),
            &mut || {
                TcpStream::connect_timeout(
                    &SocketAddr::from((public, 80)),
                    Duration::from_millis(200),
                )
                .is_ok()
                    && net.resolve("example.test") == Some(public)
            },
        );
        net
    }

    /// Asks the namespace's DNS server for `name`'s A record.
    pub fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        sock.send_to(&q, self.dns).ok()?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).ok()?;
        (n >= 4 && buf[7] == 1)
            .then(|| Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]))
    }

    /// The server configuration that sends instances' DNS queries here.
    pub fn config(&self) -> String {
        format!("[network]\ndns = [\"{}\"]\n", self.dns)
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
