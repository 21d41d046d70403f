//! Addresses and sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
