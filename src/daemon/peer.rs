//! Plumbing for `[[peer]]`s: their packets share the `[[server]]` sockets (peers send
//! from and to their NTP server port), so the server tasks hand symmetric-mode packets
//! from configured peer addresses to the client task, which owns the associations and
//! sends on the same sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::proto::peer::{PeerAuth, PeerOptions};
use crate::wire::NtpTimestamp;

/// Packets from peers waiting for the client task; more are dropped (a flood with a
/// peer's forged address must not grow a queue).
const INBOUND_QUEUE: usize = 64;

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
    pub fn new() -> (Arc<Self>, mpsc::Receiver<PeerDatagram>) {
        let (inbound, rx) = mpsc::channel(INBOUND_QUEUE);
        let routes = Self {
            addresses: RwLock::new(HashMap::new()),
            inbound,
        };
        (Arc::new(routes), rx)
    }

    /// Packets from `address` (IP and port exactly) in mode 1 or 2 go to peer `peer`.
    pub fn set(&self, address: SocketAddr, peer: usize) {
        let mut map = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, p| *p != peer);
        map.insert(canonical(address), peer);
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
        let datagram = PeerDatagram {
            peer,
            bytes: bytes.to_vec(),
            local,
            at: Instant::now(),
        };
        // Full: dropped, as the network might have.
        let _ = self.inbound.try_send(datagram);
        true
    }
}

/// The server socket to reach `peer` from: the first of its address family, or a
/// dual-stack one for IPv4.
pub fn socket_for(
    sockets: &[Arc<tokio::net::UdpSocket>],
    peer: SocketAddr,
) -> Option<Arc<tokio::net::UdpSocket>> {
    let family = |s: &&Arc<tokio::net::UdpSocket>| {
        s.local_addr().is_ok_and(|a| a.is_ipv4() == peer.is_ipv4())
    };
    let dual_stack = |s: &&Arc<tokio::net::UdpSocket>| {
        s.local_addr()
            .is_ok_and(|a| a.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED))
    };
    sockets
        .iter()
        .find(family)
        .or_else(|| sockets.iter().find(dual_stack))
        .cloned()
}

/// The address `peer` sees our packets come from (what it names as its reference
/// when synchronized to us): the socket's own address, or the one the routing table
/// picks for a wildcard socket.
pub fn our_address(socket: &tokio::net::UdpSocket, peer: SocketAddr) -> Option<IpAddr> {
    let local = socket.local_addr().ok()?;
    if !local.ip().is_unspecified() {
        return Some(local.ip().to_canonical());
    }
    let any: IpAddr = match peer {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    // Connecting a UDP socket sends nothing; it only asks the routing table.
    let probe = std::net::UdpSocket::bind((any, 0)).ok()?;
    probe.connect(peer).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_symmetric_packets_from_configured_peers_are_routed() {
        let (routes, mut rx) = PeerRoutes::new();
        let peer: SocketAddr = "192.0.2.7:123".parse().unwrap();
        routes.set(peer, 3);
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

    /// A flood from a peer's (forged) address fills a bounded queue; the rest is
    /// dropped.
    #[tokio::test]
    async fn the_queue_is_bounded() {
        let (routes, mut rx) = PeerRoutes::new();
        let peer: SocketAddr = "192.0.2.7:123".parse().unwrap();
        routes.set(peer, 0);
        let packet = [0x21u8; 48];
        for _ in 0..10_000 {
            routes.route(peer, &packet, NtpTimestamp::ZERO);
        }
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, INBOUND_QUEUE);
    }
}
