//! Addresses and sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

/// Splits `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if text.parse::<IpAddr>().is_ok() {
        return Ok((text.to_string(), default_port));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']'"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{text:?}: unexpected text after ']'")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?}: empty host name"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: port must be 1 to 65535"))?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

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
pub async fn client_socket(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut last_error = None;
    for _ in 0..16 {
        let port = rand::random_range(EPHEMERAL);
        match UdpSocket::bind((any, port)).await {
            Ok(socket) => {
                socket.connect(server).await?;
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
            let socket = client_socket(server).await.unwrap();
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
