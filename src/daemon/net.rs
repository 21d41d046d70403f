//! Addresses and sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

pub use crate::config::split_host_port;

/// Resolves `host:port`, preferring the first address the resolver gives.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// Pending connections the kernel holds for a listener before they are accepted.
const LISTEN_BACKLOG: i32 = 1024;

/// A socket for `listen`; an IPv6 one is IPv6 only (IPV6_V6ONLY), so that `[::]:123`
/// does not also claim IPv4's port 123 and `0.0.0.0:123` can be configured beside it.
fn server_socket(listen: SocketAddr, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(listen), kind, Some(protocol))?;
    if listen.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// `count` UDP server sockets on `listen` (at least one; IPv6 only if `listen` is
/// IPv6), sharing its port with SO_REUSEPORT: the kernel spreads clients over them,
/// each client (by its address and port) always to the same one, so each server thread
/// reads a queue of its own. The address must be free: a second daemon on it is
/// refused ("Address already in use") rather than silently given half the clients.
/// When `listen`'s port is 0, a free one is chosen for the group.
pub fn bind_udp_group(
    listen: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    // A socket without SO_REUSEPORT binds only to an address no one holds.
    let probe = server_socket(listen, Type::DGRAM, Protocol::UDP)?;
    probe.bind(&SockAddr::from(listen))?;
    let address = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
    drop(probe);
    (0..count.max(1))
        .map(|_| {
            let socket = server_socket(address, Type::DGRAM, Protocol::UDP)?;
            socket.set_reuse_port(true)?;
            socket.bind(&SockAddr::from(address))?;
            Ok(socket.into())
        })
        .collect()
}

/// Sockets handed over in a row, grouped as [`bind_udp_group`] made them: each run of
/// sockets with the same local address is one group.
pub fn group_by_address(sockets: Vec<std::net::UdpSocket>) -> Vec<Vec<std::net::UdpSocket>> {
    let mut groups: Vec<Vec<std::net::UdpSocket>> = Vec::new();
    for socket in sockets {
        let address = socket.local_addr().ok();
        match groups.last_mut() {
            Some(group) if group.first().and_then(|s| s.local_addr().ok()) == address => {
                group.push(socket)
            }
            _ => groups.push(vec![socket]),
        }
    }
    groups
}

/// A TCP listener on `listen` (IPv6 only if `listen` is IPv6), with SO_REUSEADDR as
/// std's listeners have, so a restart does not wait for old connections' TIME_WAIT.
pub fn bind_tcp(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = server_socket(listen, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(listen))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Dynamic port range of RFC 6335, where client ports are drawn from.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A UDP socket connected to `server` from a randomly chosen source port (RFC 9109),
/// so an off-path attacker must guess the port as well as the transmit timestamp.
/// Needs a tokio runtime.
pub fn client_socket(server: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(client_socket_std(server)?)
}

/// [`client_socket`] as a non-blocking std socket: made and sent on synchronously, so
/// that a request is timestamped right before it leaves.
pub fn client_socket_std(server: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let any: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut last_error = None;
    for _ in 0..16 {
        let port = rand::random_range(EPHEMERAL);
        match std::net::UdpSocket::bind((any, port)) {
            Ok(socket) => {
                socket.connect(server)?;
                socket.set_nonblocking(true)?;
                return Ok(socket);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free source port")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let ok = |t: &str| split_host_port(t, 123).unwrap();
        assert_eq!(ok("time.example"), ("time.example".into(), 123));
        assert_eq!(ok("time.example:4123"), ("time.example".into(), 4123));
        assert_eq!(ok("127.0.0.1:11123"), ("127.0.0.1".into(), 11123));
        assert_eq!(ok("::1"), ("::1".into(), 123));
        assert_eq!(ok("[::1]:11123"), ("::1".into(), 11123));
        assert_eq!(ok("[fe80::1]"), ("fe80::1".into(), 123));
        for bad in [
            "",
            ":123",
            "host:0",
            "host:99999",
            "[::1",
            "[::1]x",
            "h:port",
        ] {
            assert!(split_host_port(bad, 123).is_err(), "{bad:?}");
        }
    }

    /// `[::]` and `0.0.0.0` on one port side by side, for UDP and TCP: the IPv6 socket
    /// is IPv6 only, and sees IPv6 clients alone.
    #[test]
    fn ipv6_wildcard_and_ipv4_wildcard_bind_the_same_port() {
        let v4 = bind_udp_group("0.0.0.0:0".parse().unwrap(), 2).unwrap();
        let port = v4[0].local_addr().unwrap().port();
        let v6 = bind_udp_group(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), 2).unwrap();
        assert!(socket2::SockRef::from(&v6[1]).only_v6().unwrap());
        let v4 = bind_tcp("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = bind_tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).unwrap();
        assert!(socket2::SockRef::from(&v6).only_v6().unwrap());
    }

    /// A group shares one address; a second group on it is refused, and sockets
    /// handed over in a row are regrouped by address.
    #[test]
    fn worker_sockets_share_an_address_that_no_one_else_gets() {
        let group = bind_udp_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let address = group[0].local_addr().unwrap();
        assert!(group.iter().all(|s| s.local_addr().unwrap() == address));
        let again = bind_udp_group(address, 2).map(|_| ()).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        let other = bind_udp_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let flat: Vec<_> = group.into_iter().chain(other).collect();
        let sizes: Vec<usize> = group_by_address(flat).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 1]);
    }

    /// ADVERSARIAL 23: source ports of ~1000 requests show no usable pattern.
    #[tokio::test]
    async fn source_ports_are_random() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut ports = Vec::new();
        for _ in 0..1000 {
            let socket = client_socket(server).unwrap();
            ports.push(socket.local_addr().unwrap().port());
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        // 1000 draws from 16384 ports repeat about 30 times by chance.
        assert!(distinct.len() > 900, "{} distinct ports", distinct.len());
        assert!(ports.iter().all(|p| EPHEMERAL.contains(p)));
        let ascending = ports
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(ascending < 10, "{ascending} sequential ports");
        let spread = ports.iter().max().unwrap() - ports.iter().min().unwrap();
        assert!(spread > 15000, "ports span only {spread}");
    }
}
