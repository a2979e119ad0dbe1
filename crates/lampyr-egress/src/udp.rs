//! UDP from an instance: each flow (the instance's port and a destination)
//! gets a socket of its own on the host, connected to where the policy
//! says; datagrams are relayed both ways. DNS to the instance's resolver
//! address is such a flow to the host's resolver. Flows end after a minute
//! without traffic; an instance has a bounded number of them.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
use tokio::net::UdpSocket;

use crate::policy::GUEST;
use lampyr_sandbox::net::Tun;

const IDLE: Duration = Duration::from_secs(60);

struct Flow {
    /// The flow's socket, for sending without waiting (a datagram that
    /// does not fit in its buffer is dropped, as UDP may).
    send: std::net::UdpSocket,
    last: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The flows of one instance, by (instance port, destination as the
/// instance addressed it).
pub(crate) struct Flows {
    flows: HashMap<(u16, SocketAddrV4), Flow>,
    max: usize,
    swept: Instant,
}

impl Flows {
    pub(crate) fn new(max: usize) -> Flows {
        Flows {
            flows: HashMap::new(),
            max,
            swept: Instant::now(),
        }
    }

    /// Whether a datagram from `src_port` to `dst` belongs to a live flow.
    pub(crate) fn has(&self, src_port: u16, dst: SocketAddrV4) -> bool {
        self.flows.contains_key(&(src_port, dst))
    }

    /// Whether another flow may open (the oldest idle one makes room).
    pub(crate) fn room(&mut self) -> bool {
        self.sweep();
        if self.flows.len() < self.max {
            return true;
        }
        let oldest = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.flows.remove(&k);
        }
        self.flows.len() < self.max
    }

    /// Sends `payload` from the instance's `src_port` to `dst`, which goes
    /// to `upstream` on the host; opens the flow if it is new.
    pub(crate) fn send(
        &mut self,
        tun: &Arc<Tun>,
        src_port: u16,
        dst: SocketAddrV4,
        upstream: SocketAddr,
        payload: &[u8],
    ) {
        let key = (src_port, dst);
        let flow = match self.flows.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Some(flow) = open_flow(tun, src_port, dst, upstream) else {
                    return;
                };
                e.insert(flow)
            }
        };
        flow.last = Instant::now();
        // A full socket buffer drops the datagram, as UDP may.
        let _ = flow.send.send(payload);
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.swept) < Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        self.flows.retain(|_, f| now.duration_since(f.last) < IDLE);
    }
}

/// A socket for a new flow, connected to `upstream`, with its task relaying
/// replies to the instance.
fn open_flow(
    tun: &Arc<Tun>,
    src_port: u16,
    dst: SocketAddrV4,
    upstream: SocketAddr,
) -> Option<Flow> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let std = std::net::UdpSocket::bind(bind).ok()?;
    std.set_nonblocking(true).ok()?;
    std.connect(upstream).ok()?;
    let send = std.try_clone().ok()?;
    let sock = UdpSocket::from_std(std).ok()?;
    let task = tokio::spawn(replies(sock, tun.clone(), src_port, dst));
    Some(Flow {
        send,
        last: Instant::now(),
        task,
    })
}

/// Relays what comes back on a flow's socket to the instance, as from the
/// address it sent to.
async fn replies(sock: UdpSocket, tun: Arc<Tun>, port: u16, from: SocketAddrV4) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = sock.recv(&mut buf).await else {
            return;
        };
        if let Some(packet) = datagram(from, SocketAddrV4::new(GUEST, port), &buf[..n]) {
            tun.send(&packet);
        }
    }
}

/// An IPv4 UDP packet carrying `payload` from `src` to `dst`.
pub(crate) fn datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let total = ip.buffer_len() + ip.payload_len;
    if total > 65535 {
        return None;
    }
    let mut out = vec![0u8; total];
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut out[..]);
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &caps,
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_parse_back_with_valid_checksums() {
        let src: SocketAddrV4 = "10.0.2.3:53".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.15:40000".parse().unwrap();
        let p = datagram(src, dst, b"answer").unwrap();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(udp.payload(), b"answer");
        assert_eq!((udp.src_port(), udp.dst_port()), (53, 40000));
    }
}
