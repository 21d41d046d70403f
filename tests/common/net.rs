//! Loopback networking: free ports, whether something listens on a port, and raw UDP
//! probes (a plain SNTP request, or any datagram and its first answer).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::netns::NetNs;
use super::process::run_with_deadline;

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

const PORT_LOW: u32 = 10_000;
/// Stay below the Linux ephemeral range (32768–60999) used by the clients' source ports.
const PORT_SPAN: u32 = 22_000;
static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback port that is currently free for both UDP and TCP and that no other caller in
/// this process gets. The starting point depends on the process id, so concurrently running
/// test binaries start far apart; the bind check catches the rest.
pub fn free_port() -> u16 {
    let base = (std::process::id() % 1_000) * 20;
    for _ in 0..PORT_SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(PORT_LOW + (base + n) % PORT_SPAN).expect("port fits in u16");
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// Is some socket bound to UDP `port` (in the namespace, if given)?
pub fn udp_port_bound(netns: Option<&NetNs>, port: u16) -> bool {
    ss_finds(netns, "-Hlun", port)
}

/// Is some socket listening on TCP `port` (in the namespace, if given)?
pub fn tcp_port_listening(netns: Option<&NetNs>, port: u16) -> bool {
    ss_finds(netns, "-Hltn", port)
}

/// Whether `ss FLAGS sport = :PORT` lists any socket.
fn ss_finds(netns: Option<&NetNs>, flags: &str, port: u16) -> bool {
    let mut cmd = match netns {
        Some(ns) => ns.command("ss"),
        None => Command::new("ss"),
    };
    cmd.args([flags, &format!("sport = :{port}")]);
    match run_with_deadline(cmd, Duration::from_secs(5)) {
        Ok(o) => o.status.success() && !o.stdout.trim().is_empty(),
        Err(_) => false,
    }
}

/// Minimal unauthenticated SNTP request on the host's loopback: returns (leap, stratum) of a
/// valid mode-4 answer that echoes our transmit timestamp.
pub fn sntp_probe(addr: SocketAddr, timeout: Duration) -> Option<(u8, u8)> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut req = [0u8; 48];
    req[0] = 0x23; // LI 0, VN 4, mode 3
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let xmt = (nanos as u64) | 1;
    req[40..48].copy_from_slice(&xmt.to_be_bytes());
    sock.send_to(&req, addr).ok()?;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if from == addr && n >= 48 && buf[0] & 7 == 4 && buf[24..32] == req[40..48] {
            return Some((buf[0] >> 6, buf[1]));
        }
    }
    None
}

/// Sends `request` to `server` from a fresh socket and returns the first datagram that
/// comes back within `timeout`.
pub fn udp_roundtrip(server: SocketAddr, request: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    sock.set_read_timeout(Some(timeout)).expect("set timeout");
    sock.send_to(request, server).expect("send");
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}
