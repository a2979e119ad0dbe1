//! An instance's own network for `network = "egress"`: a network namespace
//! made by the host before the instance starts, holding loopback and a TUN
//! device `eth0` whose other end is a descriptor the host keeps. Every
//! packet the instance sends off its loopback reaches lampyr through that
//! descriptor, and lampyr decides what to do with it (the egress crate):
//! there is no route, bridge or NAT rule on the host at all.
//!
//! Addresses inside, the same in every instance (no two instances share a
//! network, so they never meet):
//!
//! | address | what |
//! | --- | --- |
//! | `10.0.2.15/24` | the instance, on `eth0` |
//! | `10.0.2.2` | its gateway, lampyr; `host.lampyr.internal` (the host's loopback, where allowed) |
//! | `10.0.2.3` | its DNS server, lampyr relaying to the host's resolvers |
//!
//! The namespace is made on a short-lived thread of its own (a thread's
//! network namespace is its own to change), so no thread of the server
//! ever leaves the host's namespace. The sandbox init joins it with
//! `setns` instead of creating a namespace of its own.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The instance's address.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Its gateway: lampyr, and the host's loopback as `host.lampyr.internal`.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Its DNS server: lampyr, relaying to the host's resolvers.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The prefix length of the instance's network.
pub const PREFIX: u8 = 24;
/// The name the host's loopback has inside.
pub const HOST_NAME: &str = "host.lampyr.internal";
/// The MTU of `eth0`.
pub const MTU: u32 = 9000;

/// A network namespace and the host's end of its `eth0`.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace (`/proc/thread-self/ns/net` of its maker).
    pub ns: OwnedFd,
    /// The TUN device's descriptor, non-blocking: one IP packet per read
    /// or write. Closing it removes `eth0`, leaving loopback only.
    pub tun: OwnedFd,
}

/// The host's end of an instance's TUN device, registered with the async
/// runtime: one IPv4 packet per read or write.
///
/// Closing it removes `eth0`, and the kernel's unregistering of a network
/// device waits for grace periods (tens of milliseconds): so the
/// descriptor is closed on a thread of its own, never on the thread that
/// drops the `Tun` (an async worker serving requests).
#[derive(Debug)]
pub struct Tun {
    fd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
}

impl Drop for Tun {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            close_later(fd.into_inner());
        }
    }
}

/// Whether the network namespace of process `pid` still routes anything
/// through `eth0`. Closing an instance's TUN device takes `eth0` down, and
/// its routes with it, some time after the close begins (the kernel waits
/// for grace periods first): until then a connection would wait for a
/// device nobody reads, not fail at once.
pub fn routes_through_eth0(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/net/route"))
        .map(|table| table.lines().skip(1).any(|l| l.starts_with("eth0\t")))
        .unwrap_or(false)
}

/// Closes `fd` on the closer thread (started on first use).
fn close_later(fd: OwnedFd) {
    static CLOSER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<OwnedFd>>> =
        std::sync::OnceLock::new();
    let tx = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
        std::thread::Builder::new()
            .name("lampyr-netclose".into())
            .spawn(move || {
                for fd in rx {
                    drop(fd);
                }
            })
            .ok()
            .map(|_| tx)
    });
    match tx {
        Some(tx) => {
            if let Err(e) = tx.send(fd) {
                drop(e.0);
            }
        }
        None => drop(fd),
    }
}

impl Tun {
    /// Registers a TUN descriptor with the current tokio runtime.
    pub fn new(fd: OwnedFd) -> std::io::Result<Tun> {
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same descriptor until the AsyncFd is dropped.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Tun { fd: Some(fd) })
    }

    fn fd(&self) -> &tokio::io::unix::AsyncFd<OwnedFd> {
        self.fd.as_ref().expect("present until dropped")
    }

    /// Reads one packet if one is waiting (`WouldBlock` if none is).
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        nix::unistd::read(self.fd().get_ref(), buf).map_err(std::io::Error::from)
    }

    /// Waits until a packet can be read.
    pub async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.fd().readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Writes one packet to the instance. A full device queue drops it, as
    /// a congested link would: TCP sends it again, UDP is unreliable.
    pub fn send(&self, packet: &[u8]) {
        let _ = nix::unistd::write(self.fd().get_ref(), packet);
    }
}

fn os_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Makes a network namespace with loopback up and `eth0` on a TUN device.
pub fn make_egress_netns() -> std::io::Result<NetNs> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("creating a network namespace: {e}"),
                )
            })?;
            let ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")?.into();
            let sock = inet_socket()?;
            interface_up(&sock, "lo")?;
            let tun = open_tun("eth0")?;
            set_addr(&sock, "eth0", libc::SIOCSIFADDR, GUEST_ADDR)?;
            set_addr(
                &sock,
                "eth0",
                libc::SIOCSIFNETMASK,
                Ipv4Addr::from(u32::MAX << (32 - u32::from(PREFIX))),
            )?;
            set_mtu(&sock, "eth0", MTU)?;
            interface_up(&sock, "eth0")?;
            default_route(&sock, GATEWAY_ADDR)?;
            Ok(NetNs { ns, tun })
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the network set-up thread panicked")))
    })
}

fn inet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket"));
    }
    // SAFETY: fd is a new, valid descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming interface `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux, and
    // every bit pattern is a valid sockaddr (plain bytes).
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets interface `name` up (and running).
pub(crate) fn interface_up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into `req`; the pointer is valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(os_err(&format!("reading the flags of {name}")));
    }
    // SAFETY: the union field written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, which is valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(os_err(&format!("bringing {name} up")));
    }
    Ok(())
}

fn set_addr(
    sock: &OwnedFd,
    name: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR / SIOCSIFNETMASK read `req` (name and address),
    // valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &req) } < 0 {
        return Err(os_err(&format!("setting an address of {name}")));
    }
    Ok(())
}

fn set_mtu(sock: &OwnedFd, name: &str, mtu: u32) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads `req`, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) } < 0 {
        return Err(os_err(&format!("setting the MTU of {name}")));
    }
    Ok(())
}

fn default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads `rt`, valid for the call; rt_dev is null
    // (the kernel picks the interface the gateway is on).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
        return Err(os_err("adding the default route"));
    }
    Ok(())
}

/// Creates TUN device `name` in the calling thread's network namespace.
fn open_tun(name: &str) -> std::io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open() reads the NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(os_err("opening /dev/net/tun"));
    }
    // SAFETY: fd is a new, valid descriptor owned by nobody else.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads `req` (name and flags), valid for the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(os_err("creating the TUN device"));
    }
    Ok(tun)
}

/// Whether this host can make egress networks (has `/dev/net/tun`).
pub fn egress_available() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/net/tun: {e}")),
    }
}
