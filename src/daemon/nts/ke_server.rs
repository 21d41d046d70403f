//! The NTS-KE server: accepts TLS connections, answers each with keys and cookies, and
//! limits connections in progress so that a flood from one source evicts only itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::exchange::{ALPN, CLOSED_EARLY, export_keys, read_message};
use crate::auth::nts::ke::{self, KeDecision, NtpEndpoint};
use crate::proto::ratelimit::{SourceKey, source_key};
use crate::proto::server::SharedCookieKeys;
use crate::wire::ke::parse_message;

/// Limits that keep NTS-KE load from starving anything else (ADVERSARIAL 5).
#[derive(Debug, Clone, Copy)]
pub struct KeLimits {
    /// Connections served at once. When full, a new connection evicts the oldest one
    /// still in progress: a legitimate exchange takes milliseconds, so connections
    /// held open on purpose are the ones that go, and nobody is locked out.
    pub max_concurrent: usize,
    /// Connections served at once from one IPv4 address or IPv6 /64.
    pub max_per_source: usize,
    /// Whole exchange, handshake included.
    pub timeout: Duration,
}

impl Default for KeLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 512,
            max_per_source: 8,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Connections in progress, oldest first, each with its source and a way to end it.
#[derive(Default)]
struct InFlight {
    next_id: u64,
    connections: std::collections::VecDeque<(u64, SourceKey, tokio::sync::oneshot::Sender<()>)>,
}

impl InFlight {
    /// Registers a connection from `source`. A source already at `per_source` loses its
    /// own oldest connection; when `cap` are in progress, the source with the most
    /// loses its oldest. So a flood from one place only ever evicts itself, and an
    /// honest client, finishing in milliseconds, is not the oldest of anyone's.
    fn admit(
        &mut self,
        source: SourceKey,
        cap: usize,
        per_source: usize,
    ) -> (u64, tokio::sync::oneshot::Receiver<()>, bool) {
        let from_source = self
            .connections
            .iter()
            .filter(|(_, s, _)| *s == source)
            .count();
        let victim_source = if from_source >= per_source {
            Some(source)
        } else if self.connections.len() >= cap {
            self.busiest_source()
        } else {
            None
        };
        let evicted = match victim_source
            .and_then(|v| self.connections.iter().position(|(_, s, _)| *s == v))
        {
            Some(i) => {
                if let Some((_, _, cancel)) = self.connections.remove(i) {
                    let _ = cancel.send(());
                }
                true
            }
            None => false,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.next_id += 1;
        self.connections.push_back((self.next_id, source, tx));
        (self.next_id, rx, evicted)
    }

    fn busiest_source(&self) -> Option<SourceKey> {
        let mut counts: std::collections::HashMap<SourceKey, usize> =
            std::collections::HashMap::new();
        for (_, s, _) in &self.connections {
            *counts.entry(*s).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
    }

    fn finish(&mut self, id: u64) {
        if let Some(i) = self.connections.iter().position(|(c, _, _)| *c == id) {
            self.connections.remove(i);
        }
    }
}

/// An NTS-KE server. Dropping it stops accepting.
pub struct RunningKeServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RunningKeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves NTS-KE on `listen`.
pub async fn start_ke_server(
    listen: SocketAddr,
    tls: Arc<ServerConfig>,
    cookie_keys: SharedCookieKeys,
    endpoint: NtpEndpoint,
    limits: KeLimits,
) -> std::io::Result<RunningKeServer> {
    let listener = crate::daemon::net::bind_tcp(listen)?;
    start_ke_server_on(listener, tls, cookie_keys, endpoint, limits)
}

/// [`start_ke_server`] on a listener bound already (by the supervisor, before
/// privileges were dropped). Must be called within the runtime.
pub fn start_ke_server_on(
    listener: std::net::TcpListener,
    tls: Arc<ServerConfig>,
    cookie_keys: SharedCookieKeys,
    endpoint: NtpEndpoint,
    limits: KeLimits,
) -> std::io::Result<RunningKeServer> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let in_flight = Arc::new(std::sync::Mutex::new(InFlight::default()));
    let endpoint = Arc::new(endpoint);
    let task = tokio::spawn(async move {
        let mut evictions = 0u64;
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mut registry = in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (id, cancelled, evicted) = registry.admit(
                source_key(peer.ip()),
                limits.max_concurrent.max(1),
                limits.max_per_source.max(1),
            );
            drop(registry);
            if evicted {
                evictions += 1;
                if evictions.is_power_of_two() {
                    tracing::warn!(
                        "NTS-KE: evicted an old connection to admit {peer} ({evictions} so far)"
                    );
                }
            }
            let (acceptor, cookie_keys, endpoint, in_flight) = (
                acceptor.clone(),
                cookie_keys.clone(),
                endpoint.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                let exchange = serve_one(acceptor, tcp, &cookie_keys, &endpoint);
                tokio::select! {
                    result = tokio::time::timeout(limits.timeout, exchange) => match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!("NTS-KE with {peer}: {e}"),
                        Err(_) => tracing::debug!("NTS-KE with {peer}: timed out"),
                    },
                    _ = cancelled => tracing::debug!("NTS-KE with {peer}: evicted"),
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .finish(id);
            });
        }
    });
    Ok(RunningKeServer { local_addr, task })
}

async fn serve_one(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    cookie_keys: &SharedCookieKeys,
    endpoint: &NtpEndpoint,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err("client did not offer ALPN ntske/1".into());
    }
    let decision = match read_message(&mut tls).await {
        Ok((bytes, used)) => match parse_message(bytes.get(..used).unwrap_or_default()) {
            Ok(Some((records, _))) => ke::evaluate_request(&records, used < bytes.len()),
            _ => bad_request(),
        },
        Err(e) if e == CLOSED_EARLY => return Err(e),
        Err(_) => bad_request(),
    };
    let cookies = match decision {
        KeDecision::Accept { aead, .. } => {
            let keys = export_keys(tls.get_ref().1, aead)?;
            let master = cookie_keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (0..ke::COOKIES_PER_RESPONSE)
                .filter_map(|_| master.seal(&keys))
                .collect()
        }
        _ => Vec::new(),
    };
    let mut response = Vec::with_capacity(1024);
    ke::write_response(&decision, &cookies, endpoint, &mut response);
    tls.write_all(&response).await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    if let KeDecision::Refuse { why, .. } = decision {
        return Err(format!("refused: {why}"));
    }
    Ok(())
}

fn bad_request() -> KeDecision {
    KeDecision::Refuse {
        code: ke::ERROR_BAD_REQUEST,
        why: "malformed records",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> SourceKey {
        source_key(std::net::IpAddr::from([192, 0, 2, last]))
    }

    /// ADVERSARIAL 5: a flood from one source evicts only its own connections.
    #[test]
    fn a_flooding_source_evicts_only_itself() {
        let mut in_flight = InFlight::default();
        let (honest, mut honest_rx, _) = in_flight.admit(key(1), 4, 2);
        for _ in 0..100 {
            in_flight.admit(key(66), 4, 2);
        }
        assert!(
            honest_rx.try_recv().is_err(),
            "the honest client was evicted"
        );
        assert_eq!(
            in_flight.connections.len(),
            3,
            "one honest, two from the flood"
        );
        in_flight.finish(honest);
        assert_eq!(in_flight.connections.len(), 2);
    }

    #[test]
    fn when_full_the_busiest_source_gives_way() {
        let mut in_flight = InFlight::default();
        let (_, mut a, _) = in_flight.admit(key(1), 3, 3);
        let (_, mut b, _) = in_flight.admit(key(2), 3, 3);
        let (_, mut c, _) = in_flight.admit(key(2), 3, 3);
        let (_, _, evicted) = in_flight.admit(key(3), 3, 3);
        assert!(evicted);
        assert!(a.try_recv().is_err(), "source 1 has fewest");
        assert!(
            b.try_recv().is_ok(),
            "the oldest of the busiest source goes"
        );
        assert!(c.try_recv().is_err());
    }

    /// An IPv4 client on a dual-stack socket (`::ffff:a.b.c.d`) counts against its own
    /// IPv4 address, not against the one /64 all mapped addresses share.
    #[test]
    fn ipv4_mapped_clients_count_as_their_ipv4_address() {
        let mapped = |last: u8| {
            source_key(std::net::IpAddr::from(
                std::net::Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped(),
            ))
        };
        let mut in_flight = InFlight::default();
        let (_, mut first, _) = in_flight.admit(key(1), 8, 2);
        in_flight.admit(mapped(1), 8, 2);
        let (_, mut other, evicted_other) = in_flight.admit(mapped(2), 8, 2);
        assert!(!evicted_other, "192.0.2.2 is a source of its own");
        let (_, _, evicted) = in_flight.admit(mapped(1), 8, 2);
        assert!(
            evicted && first.try_recv().is_ok(),
            "192.0.2.1 was at its cap"
        );
        assert!(other.try_recv().is_err());
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_ne!(
            source_key("0.0.0.1".parse().unwrap()),
            source_key("::1".parse().unwrap())
        );
    }
}
