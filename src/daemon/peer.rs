//! Plumbing for `[[peer]]`s: their packets share the `[[server]]` sockets (peers send
//! from and to their NTP server port), so the server tasks hand symmetric-mode packets
//! from configured peer addresses to the client task, which owns the associations and
//! sends on the same sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::proto::peer::{PeerAuth, PeerOptions};
use crate::wire::NtpTimestamp;

/// Packets from one peer waiting for the client task; more are dropped, so that a flood
/// with one peer's forged address neither grows a queue nor crowds out the others.
const PER_PEER_QUEUE: usize = 16;

/// A configured peer, checked and ready.
#[derive(Clone)]
pub struct PeerSpec {
    pub host: String,
    pub port: u16,
    pub auth: PeerAuth,
    pub options: PeerOptions,
}

/// A datagram for peer number `peer`, with its receive time.
pub struct PeerDatagram {
    pub peer: usize,
    pub bytes: Vec<u8>,
    pub local: NtpTimestamp,
    pub at: Instant,
}

/// Which source addresses are peers, shared by every server task.
pub struct PeerRoutes {
    addresses: RwLock<HashMap<SocketAddr, usize>>,
    /// Datagrams queued per peer.
    queued: Vec<AtomicUsize>,
    inbound: mpsc::Sender<PeerDatagram>,
}

/// What the client task needs to run peers: the server sockets to send from, and the
/// packets the server tasks routed to it.
pub struct PeerLink {
    pub routes: Arc<PeerRoutes>,
    pub inbound: mpsc::Receiver<PeerDatagram>,
    pub sockets: Vec<Arc<tokio::net::UdpSocket>>,
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4) as plain IPv4.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

impl PeerRoutes {
    /// Routes for peers numbered `0..peers`.
    pub fn new(peers: usize) -> (Arc<Self>, mpsc::Receiver<PeerDatagram>) {
        let (inbound, rx) = mpsc::channel(PER_PEER_QUEUE * peers.max(1));
        let routes = Self {
            addresses: RwLock::new(HashMap::new()),
            queued: (0..peers).map(|_| AtomicUsize::new(0)).collect(),
            inbound,
        };
        (Arc::new(routes), rx)
    }

    /// Packets from `address` (IP and port exactly) in mode 1 or 2 go to peer `peer`.
    /// False if another peer has that address already (two names for one host).
    pub fn set(&self, address: SocketAddr, peer: usize) -> bool {
        let mut map = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        let address = canonical(address);
        if map.get(&address).is_some_and(|&p| p != peer) {
            return false;
        }
        map.retain(|_, p| *p != peer);
        map.insert(address, peer);
        true
    }

    /// The client task took a datagram of `peer`'s off the queue.
    pub fn taken(&self, peer: usize) {
        if let Some(queued) = self.queued.get(peer) {
            let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Takes `bytes` if it is a symmetric-mode packet from a configured peer (true);
    /// anything else is left to the server (false). Only the mode bits are looked at:
    /// the association checks everything.
    pub fn route(&self, from: SocketAddr, bytes: &[u8], local: NtpTimestamp) -> bool {
        let symmetric = bytes.first().is_some_and(|b| matches!(b & 7, 1 | 2));
        if !symmetric {
            return false;
        }
        let peer = self
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&canonical(from))
            .copied();
        let Some(peer) = peer else {
            return false;
        };
        let Some(queued) = self.queued.get(peer) else {
            return true;
        };
        // Over this peer's share: dropped, as the network might have.
        if queued.fetch_add(1, Ordering::Relaxed) >= PER_PEER_QUEUE {
            queued.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        let datagram = PeerDatagram {
            peer,
            bytes: bytes.to_vec(),
            local,
            at: Instant::now(),
        };
        if self.inbound.try_send(datagram).is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }
}

/// The server socket to reach `peer` from, and our address as the peer sees it (what
/// it names as its reference when synchronized to us): the socket bound to the
/// address the routing table picks for `peer`, else a wildcard one of its family, else
/// any of its family (or a dual-stack one, for IPv4).
pub fn socket_for(
    sockets: &[Arc<tokio::net::UdpSocket>],
    peer: SocketAddr,
) -> Option<(Arc<tokio::net::UdpSocket>, IpAddr)> {
    let route = route_source(peer);
    let local = |s: &Arc<tokio::net::UdpSocket>| s.local_addr().ok().map(|a| a.ip().to_canonical());
    let bound_to_route = sockets
        .iter()
        .find(|s| route.is_some() && local(s) == route);
    let wildcard = |v4: bool| {
        sockets.iter().find(move |s| {
            s.local_addr()
                .is_ok_and(|a| a.ip().is_unspecified() && a.is_ipv4() == v4)
        })
    };
    let same_family = sockets
        .iter()
        .find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == peer.is_ipv4()));
    let socket = bound_to_route
        .or_else(|| wildcard(peer.is_ipv4()))
        .or(same_family)
        .or_else(|| peer.is_ipv4().then(|| wildcard(false)).flatten())?;
    let ours = match local(socket) {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => route?,
    };
    Some((socket.clone(), ours))
}

/// The source address the routing table picks for packets to `peer`. Connecting a UDP
/// socket sends nothing; it only asks the routing table.
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = match peer {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let probe = std::net::UdpSocket::bind((any, 0)).ok()?;
    probe.connect(peer).ok()?;
    Some(probe.local_addr().ok()?.ip().to_canonical())
}

/// Sends `bytes` to `peer` now, as an IPv4-mapped address from an IPv6 socket.
pub fn send(
    socket: &tokio::net::UdpSocket,
    bytes: &[u8],
    peer: SocketAddr,
) -> std::io::Result<usize> {
    let to = match (socket.local_addr()?, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => peer,
    };
    socket.try_send_to(bytes, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_for_a_peer_and_our_address_as_it_sees_us() {
        let bind = |a: &str| {
            Arc::new(
                tokio::net::UdpSocket::from_std({
                    let s = std::net::UdpSocket::bind(a).unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .unwrap(),
            )
        };
        let specific = bind("127.0.0.2:0");
        let wildcard = bind("0.0.0.0:0");
        let peer: SocketAddr = "127.0.0.1:123".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Bound to another address than the route's: a wildcard socket is preferred,
        // and the route's address is ours.
        let (s, ours) = socket_for(&[specific.clone(), wildcard.clone()], peer).unwrap();
        assert!(Arc::ptr_eq(&s, &wildcard));
        assert_eq!(ours, ip("127.0.0.1"));
        // Only a specific socket: it is used, and its address is ours.
        let (s, ours) = socket_for(std::slice::from_ref(&specific), peer).unwrap();
        assert!(Arc::ptr_eq(&s, &specific));
        assert_eq!(ours, ip("127.0.0.2"));
        // No IPv6 socket for an IPv6 peer.
        assert!(socket_for(&[specific], "[::1]:123".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn only_symmetric_packets_from_configured_peers_are_routed() {
        let (routes, mut rx) = PeerRoutes::new(4);
        let peer: SocketAddr = "192.0.2.7:123".parse().unwrap();
        assert!(routes.set(peer, 3));
        assert!(!routes.set(peer, 2), "one address, two peers");
        let mut packet = vec![0u8; 48];
        packet[0] = 0x21; // v4, mode 1
        let t = NtpTimestamp::from_bits(1);
        assert!(routes.route(peer, &packet, t));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:123".parse().unwrap();
        assert!(routes.route(mapped, &packet, t));
        assert!(!routes.route("192.0.2.7:124".parse().unwrap(), &packet, t));
        assert!(!routes.route("192.0.2.8:123".parse().unwrap(), &packet, t));
        packet[0] = 0x23; // client mode: the server answers it
        assert!(!routes.route(peer, &packet, t));
        assert!(!routes.route(peer, &[], t));
        assert_eq!(rx.recv().await.map(|d| d.peer), Some(3));
        assert_eq!(rx.recv().await.map(|d| d.peer), Some(3));
        assert!(rx.try_recv().is_err());
    }

    /// A flood from one peer's (forged) address fills that peer's share of a bounded
    /// queue; the rest is dropped, and the other peer's packets still get through.
    #[tokio::test]
    async fn each_peer_has_a_bounded_share_of_the_queue() {
        let (routes, mut rx) = PeerRoutes::new(2);
        let (flooded, other): (SocketAddr, SocketAddr) = (
            "192.0.2.7:123".parse().unwrap(),
            "192.0.2.8:123".parse().unwrap(),
        );
        routes.set(flooded, 0);
        routes.set(other, 1);
        let packet = [0x21u8; 48];
        for _ in 0..10_000 {
            routes.route(flooded, &packet, NtpTimestamp::ZERO);
        }
        routes.route(other, &packet, NtpTimestamp::ZERO);
        let mut queued = [0, 0];
        while let Ok(d) = rx.try_recv() {
            queued[d.peer] += 1;
            routes.taken(d.peer);
        }
        assert_eq!(queued, [PER_PEER_QUEUE, 1]);
        // Taken off the queue, the share is free again.
        routes.route(flooded, &packet, NtpTimestamp::ZERO);
        assert_eq!(rx.try_recv().map(|d| d.peer).ok(), Some(0));
    }
}
