//! The UDP server loop: answers NTP requests on one socket, one task per core, with
//! an optional access list and per-source rate limits; `[[peer]]` packets are handed to
//! their association. Clients may ask for interleaved mode (RFC 9769): the clock is
//! read again right after each reply is sent, and the responder keeps that time for
//! the client's next request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::leap::SharedLeapFile;
use super::peer::PeerRoutes;
use crate::clock::Clock;
use crate::proto::access::AccessList;
use crate::proto::interleave;
use crate::proto::ratelimit::{KissThrottle, RateLimit, RateLimiter, Verdict};
use crate::proto::server::{Answer, DropReason, Server, SyncState};
use crate::wire::NtpTimestamp;

/// Largest datagram read: all of any UDP payload, so that even an NTS request with 100
/// cookie placeholders is seen whole (and answered with at most 8 cookies).
const MAX_REQUEST_LEN: usize = 65_536;
/// Pause after a receive error before trying again.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// At most one log line about dropped requests per socket and interval.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the server reports about its clock.
#[derive(Debug, Clone)]
pub enum Reference {
    /// Nothing to serve from: replies say LI 3, stratum 16.
    Unsynchronized,
    /// The local clock as a reference at this stratum (`[local]`).
    Local { stratum: u8 },
    /// Whatever the sync engine last published.
    Engine(Arc<RwLock<SyncState>>),
}

impl Reference {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Unsynchronized => "unsynchronized".into(),
            Self::Local { stratum } => format!("local clock at stratum {stratum}"),
            Self::Engine(_) => "time from the sync engine".into(),
        }
    }

    fn state(&self, precision: i8, now: NtpTimestamp) -> SyncState {
        match self {
            Self::Unsynchronized => SyncState::unsynchronized(precision),
            Self::Local { stratum } => SyncState::local_reference(*stratum, now, precision),
            Self::Engine(state) => *state.read().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// A server answering on one socket. Dropping it stops the server.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub server: Arc<Server>,
    /// Peers send from it too.
    pub socket: Arc<UdpSocket>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Sources whose request rates are tracked at once (about 40 bytes each).
const RATE_LIMIT_SLOTS: usize = 1 << 16;
/// Sources whose last DENY kiss is remembered (about 24 bytes each).
const DENY_KISS_SLOTS: usize = 1 << 14;
/// A denied source gets at most one DENY kiss per this many seconds.
const DENY_KISS_INTERVAL: f64 = 1.0;

/// Which requests a server answers: its access list, what the sources it refuses get,
/// and the per-source rate limit.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub access: AccessList,
    /// A refused plain request gets a DENY kiss (a source at most one per second);
    /// otherwise refused requests get nothing.
    pub deny_kiss: bool,
    pub rate_limit: Option<RateLimit>,
    /// The `[leap] file`: its leaps are announced as well as the clock's own.
    pub leap_file: SharedLeapFile,
}

/// Binds `listen` and answers requests on it with one task per core, as `admission`
/// allows. Timestamps come from `clock`.
pub async fn start(
    listen: SocketAddr,
    server: Server,
    reference: Reference,
    admission: Admission,
    clock: Arc<dyn Clock>,
) -> std::io::Result<RunningServer> {
    let socket = super::net::bind_udp(listen)?;
    start_on(socket, server, reference, admission, clock, None)
}

/// [`start`] on a socket bound already (by the supervisor, before privileges were
/// dropped), handing symmetric packets from configured peers to `peers`. Must be
/// called within the runtime.
pub fn start_on(
    socket: std::net::UdpSocket,
    server: Server,
    reference: Reference,
    admission: Admission,
    clock: Arc<dyn Clock>,
    peers: Option<Arc<PeerRoutes>>,
) -> std::io::Result<RunningServer> {
    socket.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(socket)?);
    let local_addr = socket.local_addr()?;
    // Each client's last timestamps: about 48 bytes a client, 3 MiB per socket.
    let server = Arc::new(server.with_interleave(interleave::DEFAULT_SLOTS));
    let precision = super::measure_precision();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limiter = admission
        .rate_limit
        .map(|limit| Arc::new(Mutex::new(RateLimiter::new(limit, RATE_LIMIT_SLOTS))));
    let deny_kisses = admission.deny_kiss.then(|| {
        Arc::new(Mutex::new(KissThrottle::new(
            DENY_KISS_INTERVAL,
            DENY_KISS_SLOTS,
        )))
    });
    let access = Arc::new(admission.access);
    let leap_file = admission.leap_file;
    let tasks = (0..workers)
        .map(|_| {
            let worker = Worker {
                socket: socket.clone(),
                server: server.clone(),
                limiter: limiter.clone(),
                access: access.clone(),
                deny_kisses: deny_kisses.clone(),
                reference: reference.clone(),
                precision,
                clock: clock.clone(),
                peers: peers.clone(),
                leap_file: leap_file.clone(),
            };
            tokio::spawn(worker.answer_requests())
        })
        .collect();
    Ok(RunningServer {
        local_addr,
        server,
        socket,
        tasks,
    })
}

/// One task answering requests on a shared socket.
struct Worker {
    socket: Arc<UdpSocket>,
    server: Arc<Server>,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
    access: Arc<AccessList>,
    /// Set when refused requests may get a DENY kiss.
    deny_kisses: Option<Arc<Mutex<KissThrottle>>>,
    reference: Reference,
    precision: i8,
    clock: Arc<dyn Clock>,
    peers: Option<Arc<PeerRoutes>>,
    leap_file: SharedLeapFile,
}

impl Worker {
    async fn answer_requests(self) {
        let mut request = vec![0u8; MAX_REQUEST_LEN];
        let mut reply = Vec::with_capacity(2048);
        let mut drop_log = crate::util::LogLimit::new(DROP_LOG_INTERVAL);
        let started = Instant::now();
        loop {
            let (len, peer) = match self.socket.recv_from(&mut request).await {
                Ok(received) => received,
                Err(e) => {
                    // ICMP errors from earlier replies surface here; a persistent error
                    // must not spin the CPU.
                    tracing::debug!("recv: {e}");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
            };
            let received = self.clock.now();
            let bytes = request.get(..len).unwrap_or_default();
            // A configured peer's packets go to its association, not to the responder.
            if let Some(routes) = &self.peers
                && routes.route(peer, bytes, received)
            {
                continue;
            }
            let now = || self.clock.now();
            // The access list first (ADVERSARIAL 37): a refused source spends no tokens.
            if !self.access.allows_all() && !self.access.allows(peer.ip()) {
                let kiss = self.deny_kisses.as_ref().is_some_and(|throttle| {
                    throttle
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .allow(peer.ip(), started.elapsed().as_secs_f64())
                });
                let result = self
                    .server
                    .handle_denied(bytes, kiss, received, now, &mut reply);
                self.finish(result, &reply, peer, None, &mut drop_log).await;
                continue;
            }
            let verdict = match &self.limiter {
                Some(limiter) => limiter
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .check(peer.ip(), started.elapsed().as_secs_f64()),
                None => Verdict::Allow,
            };
            let result = match verdict {
                Verdict::Allow => {
                    let mut state = self.reference.state(self.precision, received);
                    state.leap = super::leap::served(state.leap, &self.leap_file, received);
                    self.server.handle_request_from(
                        peer.ip(),
                        bytes,
                        received,
                        &state,
                        now,
                        &mut rand::rng(),
                        &mut reply,
                    )
                }
                over => self.server.handle_rate_limited(
                    bytes,
                    over == Verdict::Kiss,
                    received,
                    now,
                    &mut reply,
                ),
            };
            let answered = (verdict == Verdict::Allow).then_some(received);
            self.finish(result, &reply, peer, answered, &mut drop_log)
                .await;
        }
    }

    /// Sends the reply, or logs the drop (at most once per interval). For a request
    /// the responder answered (not a kiss), `received` is when it arrived: the time the
    /// reply left goes back to the responder for interleaved mode.
    async fn finish(
        &self,
        result: Result<Answer, DropReason>,
        reply: &[u8],
        peer: SocketAddr,
        received: Option<NtpTimestamp>,
        drop_log: &mut crate::util::LogLimit,
    ) {
        match result {
            Ok(_) => match self.socket.send_to(reply, peer).await {
                Ok(_) => {
                    if let Some(received) = received {
                        self.server
                            .handle_sent(peer.ip(), received, self.clock.now());
                    }
                }
                Err(e) => tracing::debug!("send to {peer}: {e}"),
            },
            Err(reason) => {
                if let Some(more) = drop_log.allow() {
                    tracing::info!(
                        "dropped request from {peer}: {reason} ({more} more dropped since the last report)"
                    );
                }
            }
        }
    }
}
