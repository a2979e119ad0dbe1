//! One instance's link: the task that reads its packets from the TUN
//! device and answers them.
//!
//! TCP ends in a userspace TCP endpoint (smoltcp) that answers for every
//! destination. A new connection's SYN is held while lampyr connects to
//! the destination from the host; only when that succeeds is the SYN given
//! to the endpoint, which completes the instance's handshake. So the
//! instance's `connect` succeeds, is refused, or times out as the real
//! destination's would. A refused destination gets a reset at once.
//!
//! Each connection is then relayed through two small tasks (one per
//! direction) and bounded channels: memory per connection is its two
//! socket buffers and a few chunks, and a slow side slows the other down
//! (the endpoint's receive window closes) instead of piling data up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, TcpPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::policy::{Refusal, GATEWAY, GUEST};
use crate::udp::Flows;
use crate::{Egress, LinkShared};
use lampyr_sandbox::net::Tun;

/// The largest packet the link carries (the instance's `eth0` MTU).
const MTU: usize = 9000;
/// Each direction's buffer in the endpoint, per connection.
const SOCKET_BUFFER: usize = 64 * 1024;
/// Chunks in flight between a connection's endpoint and its host socket.
const CHUNKS: usize = 4;
const CHUNK: usize = 16 * 1024;

/// Packets between the TUN device and the endpoint.
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

/// A TCP connection: the instance's port and where it connected.
type Key = (u16, SocketAddrV4);

/// A relayed connection.
struct Conn {
    key: Key,
    /// To the task writing to the host socket; dropped once the instance
    /// has closed its side.
    up: Option<mpsc::Sender<Bytes>>,
    /// From the task reading the host socket; closed at its end.
    down: mpsc::Receiver<Bytes>,
    /// Part of a chunk not yet taken by the endpoint.
    out: Option<Bytes>,
    /// The host socket's end was seen (and passed on as a FIN).
    down_done: bool,
    /// The host socket failed: reset the instance's connection.
    failed: Arc<AtomicBool>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The result of connecting out for a held SYN.
struct Connected {
    key: Key,
    syn: Vec<u8>,
    stream: std::io::Result<tokio::net::TcpStream>,
}

fn now(start: std::time::Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64)
}

/// Serves one instance's link until its TUN device goes away.
pub(crate) async fn run(egress: Arc<Egress>, link: Arc<LinkShared>, tun: Arc<Tun>) {
    let start = std::time::Instant::now();
    let mut dev = Queue {
        rx: VecDeque::new(),
        tx: VecDeque::new(),
    };
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, now(start));
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(GATEWAY.into(), 24));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
    iface.set_any_ip(true);
    let mut sockets = SocketSet::new(Vec::new());
    let wake = Arc::new(Notify::new());
    let mut conns: HashMap<SocketHandle, Conn> = HashMap::new();
    let mut by_key: HashMap<Key, SocketHandle> = HashMap::new();
    let mut held: HashSet<Key> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Connected>();
    let mut flows = Flows::new(egress.cfg.max_udp_flows);
    let mut buf = vec![0u8; 65536];
    loop {
        // Packets from the instance.
        for _ in 0..512 {
            let n = match tun.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            };
            let packet = &buf[..n];
            let Ok(ip) = Ipv4Packet::new_checked(packet) else {
                continue; // IPv6 and malformed packets go nowhere.
            };
            if ip.src_addr() != GUEST {
                continue;
            }
            match ip.next_header() {
                IpProtocol::Tcp => {
                    let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
                        continue;
                    };
                    let key: Key = (
                        seg.src_port(),
                        SocketAddrV4::new(ip.dst_addr(), seg.dst_port()),
                    );
                    let new = seg.syn() && !seg.ack() && !by_key.contains_key(&key);
                    if !new {
                        dev.rx.push_back(packet.to_vec());
                        continue;
                    }
                    if held.contains(&key) {
                        continue; // The instance sent its SYN again; still connecting.
                    }
                    let verdict = if conns.len() + held.len() >= egress.cfg.max_tcp {
                        Err(Refusal::TooMany)
                    } else {
                        link.decide(&egress, key.1)
                    };
                    match verdict {
                        Err(why) => {
                            link.refused("TCP", key.1, why);
                            // Nothing listens: the endpoint answers with a reset.
                            dev.rx.push_back(packet.to_vec());
                        }
                        Ok(upstream) => {
                            held.insert(key);
                            let syn = packet.to_vec();
                            let done = done_tx.clone();
                            let wake = wake.clone();
                            let limit = egress.cfg.connect_timeout;
                            tokio::spawn(async move {
                                let stream = match tokio::time::timeout(
                                    limit,
                                    tokio::net::TcpStream::connect(upstream),
                                )
                                .await
                                {
                                    Ok(r) => r,
                                    Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                                };
                                let _ = done.send(Connected { key, syn, stream });
                                wake.notify_one();
                            });
                        }
                    }
                }
                IpProtocol::Udp => {
                    let Ok(dgram) = smoltcp::wire::UdpPacket::new_checked(ip.payload()) else {
                        continue;
                    };
                    let dst = SocketAddrV4::new(ip.dst_addr(), dgram.dst_port());
                    let port = dgram.src_port();
                    let upstream = if flows.has(port, dst) {
                        link.decide(&egress, dst)
                    } else if !flows.room() {
                        Err(Refusal::TooMany)
                    } else {
                        link.decide(&egress, dst)
                    };
                    match upstream {
                        Ok(to) => flows.send(&tun, port, dst, to, dgram.payload()),
                        Err(why) => link.refused("UDP", dst, why),
                    }
                }
                IpProtocol::Icmp if ip.dst_addr() == GATEWAY => {
                    dev.rx.push_back(packet.to_vec());
                }
                _ => {}
            }
        }
        // Connections that finished connecting out.
        while let Ok(c) = done_rx.try_recv() {
            held.remove(&c.key);
            match c.stream {
                Ok(stream) => {
                    let mut sock = tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                    );
                    sock.set_nagle_enabled(false);
                    sock.set_ack_delay(None);
                    let listen = IpListenEndpoint {
                        addr: Some((*c.key.1.ip()).into()),
                        port: c.key.1.port(),
                    };
                    if sock.listen(listen).is_err() {
                        continue;
                    }
                    let handle = sockets.add(sock);
                    dev.rx.push_back(c.syn);
                    // The SYN meets its own listener before any other.
                    iface.poll(now(start), &mut dev, &mut sockets);
                    if sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
                        // The SYN did not take (a malformed one): forget it.
                        sockets.remove(handle);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    conns.insert(handle, Conn::relay(c.key, stream, wake.clone()));
                    by_key.insert(c.key, handle);
                }
                Err(e) => {
                    tracing::debug!(dst = %c.key.1, "egress connection failed: {e}");
                    // No listener: the instance's connect is refused.
                    dev.rx.push_back(c.syn);
                }
            }
        }
        iface.poll(now(start), &mut dev, &mut sockets);
        let mut moved = false;
        let mut gone = Vec::new();
        for (&handle, conn) in conns.iter_mut() {
            let sock = sockets.get_mut::<tcp::Socket>(handle);
            match conn.pump(sock) {
                Pumped::Idle => {}
                Pumped::Moved => moved = true,
                Pumped::Done => gone.push(handle),
            }
        }
        for handle in gone {
            if let Some(conn) = conns.remove(&handle) {
                by_key.remove(&conn.key);
            }
            sockets.remove(handle);
        }
        if moved {
            iface.poll(now(start), &mut dev, &mut sockets);
        }
        while let Some(p) = dev.tx.pop_front() {
            tun.send(&p);
        }
        let delay = iface
            .poll_delay(now(start), &sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            r = tun.readable() => if r.is_err() { return },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum Pumped {
    Idle,
    Moved,
    Done,
}

impl Conn {
    /// Starts relaying `stream`, the host's side of a connection.
    fn relay(key: Key, stream: tokio::net::TcpStream, wake: Arc<Notify>) -> Conn {
        let (mut rd, mut wr) = stream.into_split();
        let failed = Arc::new(AtomicBool::new(false));
        let (up_tx, mut up_rx) = mpsc::channel::<Bytes>(CHUNKS);
        let (down_tx, down_rx) = mpsc::channel::<Bytes>(CHUNKS);
        let reader = {
            let (failed, wake) = (failed.clone(), wake.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(CHUNK);
                loop {
                    buf.reserve(CHUNK);
                    match rd.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {
                            if down_tx.send(buf.split().freeze()).await.is_err() {
                                return;
                            }
                            wake.notify_one();
                        }
                        Err(_) => {
                            failed.store(true, Ordering::Release);
                            break;
                        }
                    }
                }
                drop(down_tx);
                wake.notify_one();
            })
        };
        let writer = {
            let (failed, wake) = (failed.clone(), wake.clone());
            tokio::spawn(async move {
                while let Some(chunk) = up_rx.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        failed.store(true, Ordering::Release);
                        wake.notify_one();
                        return;
                    }
                    // Room in the channel again.
                    wake.notify_one();
                }
                let _ = wr.shutdown().await;
            })
        };
        Conn {
            key,
            up: Some(up_tx),
            down: down_rx,
            out: None,
            down_done: false,
            failed,
            tasks: [reader, writer],
        }
    }

    /// Moves what can move between the endpoint's socket and the host's.
    fn pump(&mut self, sock: &mut tcp::Socket<'_>) -> Pumped {
        use tcp::State;
        if matches!(sock.state(), State::Closed | State::TimeWait) {
            return Pumped::Done;
        }
        if self.failed.load(Ordering::Acquire) {
            sock.abort();
            return Pumped::Moved;
        }
        let mut moved = false;
        // The instance's bytes, to the host.
        if let Some(up) = &self.up {
            while sock.can_recv() {
                let Ok(permit) = up.try_reserve() else { break };
                let Ok(chunk) = sock.recv(|b| {
                    let n = b.len().min(CHUNK);
                    (n, Bytes::copy_from_slice(&b[..n]))
                }) else {
                    break;
                };
                permit.send(chunk);
                moved = true;
            }
            let instance_closed = matches!(
                sock.state(),
                State::CloseWait | State::LastAck | State::Closing
            );
            if instance_closed && sock.recv_queue() == 0 {
                // The instance closed its side: so does the host's.
                self.up = None;
            }
        }
        // The host's bytes, to the instance.
        loop {
            if let Some(out) = &mut self.out {
                if !sock.can_send() {
                    break;
                }
                match sock.send_slice(out) {
                    Ok(n) if n > 0 => {
                        out.advance(n);
                        moved = true;
                    }
                    _ => break,
                }
                if out.is_empty() {
                    self.out = None;
                } else {
                    break;
                }
                continue;
            }
            match self.down.try_recv() {
                Ok(chunk) => self.out = Some(chunk),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if !self.down_done && !self.failed.load(Ordering::Acquire) {
                        self.down_done = true;
                        sock.close();
                        moved = true;
                    }
                    break;
                }
            }
        }
        if moved {
            Pumped::Moved
        } else {
            Pumped::Idle
        }
    }
}
