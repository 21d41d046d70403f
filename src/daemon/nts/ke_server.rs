//! The NTS-KE server: accepts TLS connections and answers each with keys and cookies.
//!
//! Its admission policy (ADVERSARIAL 5) keeps held-open and drip-fed connections from
//! locking anyone out without ever stopping an exchange that is getting somewhere:
//! each source (an IPv4 address or IPv6 /64) may start handshakes at a bounded rate
//! and hold a bounded number of exchanges; when there is no room for a newcomer, the
//! exchange that has gone longest without progress makes room if it has stalled, and
//! otherwise the newcomer is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::exchange::{ALPN, CLOSED_EARLY, export_keys, read_message};
use crate::auth::nts::ke::{self, KeDecision, NtpEndpoint};
use crate::proto::ratelimit::{RateLimit, RateLimiter, SourceKey, Verdict, source_key};
use crate::proto::server::SharedCookieKeys;
use crate::util::LogLimit;
use crate::wire::ke::parse_message;

/// Limits that keep NTS-KE load from starving anything else (ADVERSARIAL 5).
#[derive(Debug, Clone, Copy)]
pub struct KeLimits {
    /// Exchanges in progress at once.
    pub max_concurrent: usize,
    /// Exchanges in progress at once from one source (IPv4 address or IPv6 /64): room
    /// for many clients behind one NAT, not for one source to take every slot.
    pub max_per_source: usize,
    /// New connections per source: `burst` at once, then one per `interval` seconds;
    /// more are closed unanswered while another source's exchange is in progress
    /// (fairness among sources, not a cap on a crowd behind one address that no one
    /// else is waiting behind).
    pub handshakes: RateLimit,
    /// New connections per source even when no other source waits: a crowd behind
    /// one address gets this much, and one address never more (each handshake costs
    /// about half a millisecond of CPU).
    pub handshakes_alone: RateLimit,
    /// An exchange that has not reached its next stage (TLS handshake done, request
    /// read) for this long has stalled, and may be ended to make room. An honest client
    /// gets through each stage within a round trip or two.
    pub stalled_after: Duration,
    /// Whole exchange, handshake included.
    pub timeout: Duration,
}

impl Default for KeLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 512,
            max_per_source: 64,
            handshakes: RateLimit {
                interval: 1.0 / 16.0,
                burst: 64,
                kiss_one_in: 0,
            },
            handshakes_alone: RateLimit {
                interval: 1.0 / 400.0,
                burst: 400,
                kiss_one_in: 0,
            },
            stalled_after: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// Counters, readable while the server runs (`ntimed ctl server`, `/metrics`). Every
/// connection accepted ends in exactly one of `completed` or a failure; `refused`
/// connections never start.
#[derive(Debug, Default)]
pub struct KeStats {
    /// Exchanges answered with keys and cookies.
    pub completed: AtomicU64,
    /// The TLS handshake failed, or the client did not offer ALPN ntske/1.
    pub tls_failed: AtomicU64,
    /// The request was malformed or refused (an NTS-KE error record went back), or
    /// the client closed before sending it whole.
    pub bad_request: AtomicU64,
    /// The exchange did not finish within the whole-exchange timeout.
    pub timed_out: AtomicU64,
    /// Ended, stalled, to make room for a newcomer.
    pub evicted: AtomicU64,
    /// Closed at admission: over the source's handshake rate, or no room.
    pub refused: AtomicU64,
    /// Writing the answer failed (the client went away, say).
    pub io_failed: AtomicU64,
    /// Exchanges in progress now (a gauge).
    pub in_progress: AtomicU64,
}

impl KeStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How an exchange failed, for its counter.
#[derive(Debug)]
enum Failure {
    Tls(String),
    BadRequest(String),
    Io(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(e) | Self::BadRequest(e) | Self::Io(e) => f.write_str(e),
        }
    }
}

/// Sources whose handshake rates are tracked at once.
const HANDSHAKE_RATE_SLOTS: usize = 1 << 12;
/// At most one log line per interval about refused or evicted connections.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How far an exchange has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Accepted; the TLS handshake is not done.
    Handshake,
    /// Handshake done (with ALPN ntske/1); the request is not read in full.
    Request,
    /// The request is read: the answer is being made and sent. Never evicted.
    Answer,
}

/// An exchange in progress.
struct Connection {
    id: u64,
    source: SourceKey,
    stage: Stage,
    /// When it was admitted or last reached a new stage.
    progressed: Instant,
    /// Ends the exchange (sent on eviction; dropped only when it is finished).
    evict: oneshot::Sender<()>,
}

/// Why a new connection is closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Its source is starting handshakes faster than `handshakes` allows.
    Rate,
    /// No room, and every exchange in the way is making progress or being answered.
    Busy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rate => "over its source's handshake rate",
            Self::Busy => "no room without ending an exchange in progress",
        })
    }
}

/// A connection let in: its id, what ends it early, and whether a stalled exchange
/// was evicted to make room.
struct Admitted {
    id: u64,
    evicted: oneshot::Receiver<()>,
    made_room: bool,
}

/// Exchanges in progress (at most `max_concurrent`) and each source's handshake rate
/// (a fixed table): memory is bounded whatever the traffic.
struct InFlight {
    limits: KeLimits,
    next_id: u64,
    connections: Vec<Connection>,
    handshakes: RateLimiter,
    handshakes_alone: RateLimiter,
    /// The origin of the rate limiter's clock.
    epoch: Instant,
}

impl InFlight {
    fn new(limits: KeLimits, now: Instant) -> Self {
        Self {
            limits,
            next_id: 0,
            connections: Vec::new(),
            handshakes: RateLimiter::new(limits.handshakes, HANDSHAKE_RATE_SLOTS),
            handshakes_alone: RateLimiter::new(limits.handshakes_alone, HANDSHAKE_RATE_SLOTS),
            epoch: now,
        }
    }

    /// Decides on a new connection from `peer` at `now`. Over its source's handshake
    /// rate it is refused if another source has an exchange in progress, and over the
    /// higher rate for a source alone in any case. If its source is at
    /// `max_per_source`, or the server at
    /// `max_concurrent`, the exchange (of that source, or of any) that has gone
    /// longest without progress is evicted, provided it has stalled; if none has, the
    /// newcomer is refused: a working exchange is never ended for it.
    fn admit(&mut self, peer: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let seconds = now.saturating_duration_since(self.epoch).as_secs_f64();
        let over_rate = self.handshakes.check(peer, seconds) != Verdict::Allow;
        let over_alone = self.handshakes_alone.check(peer, seconds) != Verdict::Allow;
        let source = source_key(peer);
        if over_alone || (over_rate && self.connections.iter().any(|c| c.source != source)) {
            return Err(Refusal::Rate);
        }
        let from_source = self
            .connections
            .iter()
            .filter(|c| c.source == source)
            .count();
        let source_full = from_source >= self.limits.max_per_source.max(1);
        let server_full = self.connections.len() >= self.limits.max_concurrent.max(1);
        let made_room = source_full || server_full;
        if made_room {
            // Room from the source's own exchanges if it is at its cap, else from any.
            let victim = self
                .most_stalled(now, |c| !source_full || c.source == source)
                .ok_or(Refusal::Busy)?;
            let evicted = self.connections.swap_remove(victim);
            let _ = evicted.evict.send(());
        }
        let (evict, evicted) = oneshot::channel();
        self.next_id += 1;
        self.connections.push(Connection {
            id: self.next_id,
            source,
            stage: Stage::Handshake,
            progressed: now,
            evict,
        });
        Ok(Admitted {
            id: self.next_id,
            evicted,
            made_room,
        })
    }

    /// The index of the exchange among `candidates` that has gone longest without
    /// progress, if it has stalled (and is not being answered).
    fn most_stalled(
        &self,
        now: Instant,
        candidates: impl Fn(&Connection) -> bool,
    ) -> Option<usize> {
        let stalled_after = self.limits.stalled_after;
        self.connections
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                candidates(c)
                    && c.stage != Stage::Answer
                    && now.saturating_duration_since(c.progressed) >= stalled_after
            })
            .min_by_key(|(_, c)| c.progressed)
            .map(|(i, _)| i)
    }

    /// Exchange `id` has reached `stage` at `now`.
    fn progress(&mut self, id: u64, stage: Stage, now: Instant) {
        if let Some(c) = self.connections.iter_mut().find(|c| c.id == id) {
            c.stage = stage;
            c.progressed = now;
        }
    }

    fn finish(&mut self, id: u64) {
        if let Some(i) = self.connections.iter().position(|c| c.id == id) {
            self.connections.swap_remove(i);
        }
    }
}

fn lock(in_flight: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    in_flight
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An NTS-KE server. Dropping it stops accepting.
pub struct RunningKeServer {
    pub local_addr: SocketAddr,
    pub stats: Arc<KeStats>,
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
    let tls = Arc::new(ArcSwap::new(tls));
    start_ke_server_on(listener, tls, cookie_keys, endpoint, limits)
}

/// The TLS settings a KE server takes each new connection's from: a reload swaps in a
/// new certificate, and exchanges in progress finish under the one they started with.
pub type SharedTls = Arc<ArcSwap<ServerConfig>>;

/// [`start_ke_server`] on a listener bound already (by the supervisor, before
/// privileges were dropped). Must be called within the runtime.
pub fn start_ke_server_on(
    listener: std::net::TcpListener,
    tls: SharedTls,
    cookie_keys: SharedCookieKeys,
    endpoint: NtpEndpoint,
    limits: KeLimits,
) -> std::io::Result<RunningKeServer> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let in_flight = Arc::new(Mutex::new(InFlight::new(limits, Instant::now())));
    let endpoint = Arc::new(endpoint);
    let stats = Arc::new(KeStats::default());
    let counters = stats.clone();
    let task = tokio::spawn(async move {
        let stats = counters;
        let mut refusals = LogLimit::new(LOG_INTERVAL);
        let mut evictions = LogLimit::new(LOG_INTERVAL);
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let admitted = lock(&in_flight).admit(peer.ip(), Instant::now());
            let Admitted {
                id,
                evicted,
                made_room,
            } = match admitted {
                Ok(admitted) => admitted,
                Err(why) => {
                    drop(tcp);
                    KeStats::count(&stats.refused);
                    if let Some(more) = refusals.allow() {
                        tracing::warn!(
                            "NTS-KE: closed a connection from {peer}: {why} ({more} more since the last report)"
                        );
                    }
                    continue;
                }
            };
            if made_room {
                KeStats::count(&stats.evicted);
            }
            if made_room && let Some(more) = evictions.allow() {
                tracing::warn!(
                    "NTS-KE: ended a stalled exchange to admit {peer} ({more} more since the last report)"
                );
            }
            let (acceptor, cookie_keys, endpoint, in_flight, stats) = (
                tokio_rustls::TlsAcceptor::from(tls.load_full()),
                cookie_keys.clone(),
                endpoint.clone(),
                in_flight.clone(),
                stats.clone(),
            );
            stats.in_progress.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let progress = |stage| lock(&in_flight).progress(id, stage, Instant::now());
                let exchange = serve_one(acceptor, tcp, &cookie_keys, &endpoint, progress);
                // Counted under `evicted` at admission already.
                let counter = tokio::select! {
                    result = tokio::time::timeout(limits.timeout, exchange) => match result {
                        Ok(Ok(())) => Some(&stats.completed),
                        Ok(Err(e)) => {
                            tracing::debug!("NTS-KE with {peer}: {e}");
                            Some(match e {
                                Failure::Tls(_) => &stats.tls_failed,
                                Failure::BadRequest(_) => &stats.bad_request,
                                Failure::Io(_) => &stats.io_failed,
                            })
                        }
                        Err(_) => {
                            tracing::debug!("NTS-KE with {peer}: timed out");
                            Some(&stats.timed_out)
                        }
                    },
                    _ = evicted => {
                        tracing::debug!("NTS-KE with {peer}: evicted, stalled");
                        None
                    }
                };
                if let Some(counter) = counter {
                    KeStats::count(counter);
                }
                stats.in_progress.fetch_sub(1, Ordering::Relaxed);
                lock(&in_flight).finish(id);
            });
        }
    });
    Ok(RunningKeServer {
        local_addr,
        stats,
        task,
    })
}

async fn serve_one(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    cookie_keys: &SharedCookieKeys,
    endpoint: &NtpEndpoint,
    progress: impl Fn(Stage),
) -> Result<(), Failure> {
    let _ = tcp.set_nodelay(true);
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| Failure::Tls(format!("handshake: {e}")))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(Failure::Tls("client did not offer ALPN ntske/1".into()));
    }
    progress(Stage::Request);
    let message = read_message(&mut tls).await;
    progress(Stage::Answer);
    let decision = match message {
        Ok((bytes, used)) => match parse_message(bytes.get(..used).unwrap_or_default()) {
            Ok(Some((records, _))) => ke::evaluate_request(&records, used < bytes.len()),
            _ => bad_request(),
        },
        Err(e) if e == CLOSED_EARLY => return Err(Failure::BadRequest(e)),
        Err(_) => bad_request(),
    };
    let cookies = match decision {
        KeDecision::Accept { aead, .. } => {
            let keys = export_keys(tls.get_ref().1, aead).map_err(Failure::Io)?;
            let master = cookie_keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (0..ke::COOKIES_PER_RESPONSE)
                .filter_map(|_| master.seal(&keys, &mut rand::rng()))
                .collect()
        }
        _ => Vec::new(),
    };
    let mut response = Vec::with_capacity(1024);
    ke::write_response(&decision, &cookies, endpoint, &mut response);
    let io = |e: std::io::Error| Failure::Io(e.to_string());
    // The answer and close_notify leave in one write, one TCP segment fewer per
    // exchange.
    std::io::Write::write_all(&mut tls.get_mut().1.writer(), &response).map_err(io)?;
    tls.shutdown().await.map_err(io)?;
    if let KeDecision::Refuse { why, .. } = decision {
        return Err(Failure::BadRequest(format!("refused: {why}")));
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

    const STALLED: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Limits small enough to fill by hand: `per_source` of `total`, a handshake rate
    /// that does not get in the way unless a test says so.
    fn limits(total: usize, per_source: usize) -> KeLimits {
        KeLimits {
            max_concurrent: total,
            max_per_source: per_source,
            handshakes: RateLimit {
                interval: 1e-3,
                burst: 1000,
                kiss_one_in: 0,
            },
            handshakes_alone: RateLimit {
                interval: 1e-3,
                burst: 1000,
                kiss_one_in: 0,
            },
            stalled_after: STALLED,
            timeout: Duration::from_secs(3),
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// ADVERSARIAL 5: many exchanges at once from one address (a NAT, say) are all
    /// kept; a newcomer over the source's cap is refused, never let in by ending one of
    /// them. (Before, each newcomer over 8 evicted one in progress, so 12 at once from
    /// one address could all fail.)
    #[test]
    fn working_exchanges_are_never_evicted_for_a_newcomer() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(512, 8), t0);
        let mut working: Vec<Admitted> = (0..8)
            .map(|i| in_flight.admit(ip(1), ms(t0, i)).unwrap())
            .collect();
        for i in 0..4 {
            let refused = in_flight.admit(ip(1), ms(t0, 10 + i)).map(|a| a.id);
            assert_eq!(refused, Err(Refusal::Busy));
        }
        assert!(working.iter_mut().all(|a| a.evicted.try_recv().is_err()));
        assert!(in_flight.admit(ip(2), ms(t0, 20)).is_ok(), "another source");
        in_flight.finish(working[0].id);
        assert!(in_flight.admit(ip(1), ms(t0, 30)).is_ok(), "room again");
    }

    /// Held-open and drip-fed connections make no progress: once stalled, the one that
    /// has gone longest without any makes room for a newcomer from its source.
    #[test]
    fn the_longest_stalled_exchange_of_the_source_makes_room() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(512, 3), t0);
        let mut first = in_flight.admit(ip(1), t0).unwrap();
        let mut second = in_flight.admit(ip(1), ms(t0, 100)).unwrap();
        let mut third = in_flight.admit(ip(1), ms(t0, 500)).unwrap();
        let mut other = in_flight.admit(ip(2), t0).unwrap();
        // The first finished its handshake later than the second was admitted.
        in_flight.progress(first.id, Stage::Request, ms(t0, 300));
        let newcomer = in_flight.admit(ip(1), ms(t0, 1200)).unwrap();
        assert!(newcomer.made_room);
        assert!(second.evicted.try_recv().is_ok(), "stalled longest");
        assert!(first.evicted.try_recv().is_err());
        assert!(third.evicted.try_recv().is_err());
        assert!(other.evicted.try_recv().is_err(), "another source's");
        let refused = in_flight.admit(ip(1), ms(t0, 1210)).map(|a| a.id);
        assert_eq!(refused, Err(Refusal::Busy), "the rest made progress lately");
    }

    /// An exchange whose request has been read is completing: it is never evicted.
    #[test]
    fn an_exchange_being_answered_is_never_evicted() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(512, 1), t0);
        let mut answering = in_flight.admit(ip(1), t0).unwrap();
        in_flight.progress(answering.id, Stage::Answer, ms(t0, 10));
        let refused = in_flight.admit(ip(1), ms(t0, 60_000)).map(|a| a.id);
        assert_eq!(refused, Err(Refusal::Busy));
        assert!(answering.evicted.try_recv().is_err());
    }

    /// When the server is full, the most stalled exchange of any source makes room;
    /// with none stalled, the newcomer is refused.
    #[test]
    fn when_full_the_most_stalled_anywhere_makes_room() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(3, 3), t0);
        let mut a = in_flight.admit(ip(1), ms(t0, 100)).unwrap();
        let mut b = in_flight.admit(ip(2), t0).unwrap();
        let mut c = in_flight.admit(ip(2), ms(t0, 200)).unwrap();
        let refused = in_flight.admit(ip(3), ms(t0, 500)).map(|a| a.id);
        assert_eq!(refused, Err(Refusal::Busy), "none stalled yet");
        assert!(in_flight.admit(ip(3), ms(t0, 1050)).unwrap().made_room);
        assert!(b.evicted.try_recv().is_ok(), "stalled longest");
        assert!(a.evicted.try_recv().is_err());
        assert!(c.evicted.try_recv().is_err());
        assert_eq!(in_flight.connections.len(), 3);
    }

    /// Each source may start `burst` handshakes at once, then one per `interval` while
    /// another source's exchange is in progress; others are not held back by it.
    #[test]
    fn a_source_over_its_handshake_rate_is_refused_until_tokens_come_back() {
        let t0 = Instant::now();
        let mut slow = limits(512, 64);
        slow.handshakes = RateLimit {
            interval: 0.25,
            burst: 4,
            kiss_one_in: 0,
        };
        slow.handshakes_alone = RateLimit {
            interval: 0.125,
            burst: 6,
            kiss_one_in: 0,
        };
        let mut in_flight = InFlight::new(slow, t0);
        for id in 0..4 {
            let admitted = in_flight.admit(ip(1), t0).unwrap();
            in_flight.finish(admitted.id);
            assert_eq!(admitted.id, id + 1);
        }
        // Alone, the source is not held to its rate: no one else is waiting. It is
        // held to the higher rate for a source alone (here 6 at once).
        let alone = in_flight.admit(ip(1), ms(t0, 5)).unwrap();
        in_flight.finish(alone.id);
        let alone = in_flight.admit(ip(1), ms(t0, 5)).unwrap();
        in_flight.finish(alone.id);
        let capped = in_flight.admit(ip(1), ms(t0, 5)).map(|a| a.id);
        assert_eq!(
            capped,
            Err(Refusal::Rate),
            "over the rate for a source alone"
        );
        assert!(in_flight.admit(ip(2), ms(t0, 10)).is_ok(), "another source");
        let refused = in_flight.admit(ip(1), ms(t0, 10)).map(|a| a.id);
        assert_eq!(
            refused,
            Err(Refusal::Rate),
            "while another source is served"
        );
        assert!(
            in_flight.admit(ip(1), ms(t0, 260)).is_ok(),
            "a token came back"
        );
    }

    /// However many connections arrive, no more than `max_concurrent` are kept.
    #[test]
    fn exchanges_in_progress_are_bounded() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(16, 4), t0);
        for i in 0..10_000u32 {
            let _ = in_flight.admit(IpAddr::from(i.to_be_bytes()), t0 + STALLED * i);
            assert!(in_flight.connections.len() <= 16);
        }
    }

    /// An IPv4 client on a dual-stack socket (`::ffff:a.b.c.d`) counts against its own
    /// IPv4 address, not against the one /64 all mapped addresses share.
    #[test]
    fn ipv4_mapped_clients_count_as_their_ipv4_address() {
        let mapped =
            |last: u8| IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped());
        let t0 = Instant::now();
        let mut in_flight = InFlight::new(limits(512, 2), t0);
        in_flight.admit(ip(1), t0).unwrap();
        in_flight.admit(mapped(1), t0).unwrap();
        assert!(
            in_flight.admit(mapped(2), t0).is_ok(),
            "192.0.2.2: its own source"
        );
        let refused = in_flight.admit(mapped(1), t0).map(|a| a.id);
        assert_eq!(refused, Err(Refusal::Busy), "192.0.2.1 is at its cap");
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_ne!(
            source_key("0.0.0.1".parse().unwrap()),
            source_key("::1".parse().unwrap())
        );
    }

    /// The counters say how each connection ended: a completed exchange, a TLS
    /// handshake that failed, a request whose records do not parse; none stays in
    /// progress.
    #[tokio::test]
    async fn stats_count_each_connection_by_how_it_ended() {
        use crate::auth::nts::cookie::{CookieKeys, Rotation};
        use crate::daemon::nts::test_pki::ThrowawayPki;
        use std::sync::RwLock;
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::AsyncReadExt;

        let pki = ThrowawayPki::new(&["localhost"]).expect("pki");
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(1_700_000_000, &mut rand::rng());
        let epoch = keys.current_epoch();
        let server = start_ke_server(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            pki.server_config().expect("server config"),
            Arc::new(RwLock::new(keys)),
            NtpEndpoint {
                server: None,
                port: Some(123),
            },
            KeLimits::default(),
        )
        .await
        .expect("KE server");
        let port = server.local_addr.port();
        let client = pki.client_config().expect("client config");
        let ok = super::super::ke_client::key_exchange(
            "localhost",
            port,
            client.clone(),
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.is_ok(), "{:?}", ok.err());

        // Not TLS at all.
        let mut plain = TcpStream::connect(server.local_addr)
            .await
            .expect("connect");
        plain
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let _ = plain.read_to_end(&mut Vec::new()).await;

        // TLS with ALPN ntske/1, then records that do not parse.
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tcp = TcpStream::connect(server.local_addr)
            .await
            .expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .expect("TLS");
        tls.write_all(&[0x80, 0x00, 0x00, 0x01, 0xff])
            .await
            .expect("write");
        tls.write_all(&[0x80, 0x00, 0x00, 0x00])
            .await
            .expect("write");
        let _ = tls.read_to_end(&mut Vec::new()).await;

        let stats = server.stats.clone();
        let done = async {
            while stats.tls_failed.load(Relaxed) < 1
                || stats.bad_request.load(Relaxed) < 1
                || stats.in_progress.load(Relaxed) != 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), done)
                .await
                .is_ok()
        );
        assert_eq!(stats.completed.load(Relaxed), 1);
        assert_eq!(stats.tls_failed.load(Relaxed), 1);
        assert_eq!(stats.bad_request.load(Relaxed), 1);
        for other in [
            &stats.timed_out,
            &stats.evicted,
            &stats.refused,
            &stats.io_failed,
        ] {
            assert_eq!(other.load(Relaxed), 0);
        }
        assert_ne!(epoch, 0);
    }
}
