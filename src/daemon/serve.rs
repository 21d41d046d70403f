//! The UDP server loop: answers NTP requests on one address, one OS thread per core
//! (or as configured), each reading a socket of its own that shares the address
//! through SO_REUSEPORT, with an optional access list and per-source rate limits;
//! `[[peer]]` packets are handed to their association. Each thread reads a batch of
//! requests with one `recvmmsg`, each stamped by the kernel on arrival, and sends the
//! batch's replies with one `sendmmsg`. Clients may ask for interleaved mode (RFC
//! 9769): the clock is read again right after a batch is sent, and the responder keeps
//! that time for each client's next request. A reply in interleaved mode also asks
//! the kernel for the time it left, which replaces that estimate when the kernel
//! reports it (on the socket's error queue, read after the batch, or when poll says a
//! report came later). Around a leap second, served times may be smeared
//! (`crate::proto::smear`), and the late estimate is kept.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;

use super::leap::SharedLeapFile;
use super::peer::PeerRoutes;
use super::sent_replies::SentReplies;
use crate::clock::Clock;
use crate::proto::access::AccessList;
use crate::proto::ratelimit::{KissThrottle, RateLimit, RateLimiter, Verdict};
use crate::proto::server::{Answer, DropReason, Server, SyncState};
use crate::proto::smear::{LeapSmear, ScheduledLeap, SmearView};
use crate::sys::{ReceiveBatch, SendBatch};
use crate::wire::{Leap, NtpTimestamp};

/// Largest datagram read: all of any UDP payload, so that even an NTS request with 100
/// cookie placeholders is seen whole (and answered with at most 8 cookies).
const MAX_REQUEST_LEN: usize = 65_536;
/// Requests read (and replies sent) with one system call: enough to amortise the call
/// at full load, few enough that the first reply of a batch is not held up for long.
const BATCH: usize = 32;
/// Room kept for each reply; an NTS reply with 8 cookies fits.
const REPLY_CAPACITY: usize = 2048;
/// Room for a reply as the kernel loops it back with its transmit time: the reply and
/// its link, IPv6 and UDP headers.
const LOOPED_CAPACITY: usize = REPLY_CAPACITY + 128;
/// Replies remembered while their transmit time is on its way: reports are read after
/// each batch that asked, so a few batches' worth.
const AWAITING_TRANSMIT_TIMES: usize = 4 * BATCH;
/// A kernel transmit time more than this after the request's arrival is not believed
/// (the clock was stepped in between, say); the late estimate stays.
const MAX_TRANSMIT_DELAY: f64 = 1.0;
/// Pause after a receive error before trying again.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long an idle worker waits before it looks whether the server was stopped.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
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

    /// The state to serve now: read once per batch, not per request.
    fn state(&self, precision: i8, now: NtpTimestamp) -> SyncState {
        match self {
            Self::Unsynchronized => SyncState::unsynchronized(precision),
            Self::Local { stratum } => SyncState::local_reference(*stratum, now, precision),
            Self::Engine(state) => *state.read().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// A server answering on one socket. Dropping it stops the server (its threads end
/// within [`STOP_CHECK_INTERVAL`]).
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub server: Arc<Server>,
    /// A tokio copy of the socket for `[[peer]]`s to send from; only with peers, as a
    /// socket registered with tokio wakes its reactor on every datagram.
    pub socket: Option<Arc<UdpSocket>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Threads answering requests, one per socket.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Clients a `[[server]]` remembers unless configured: each client's last timestamps
/// for interleaved mode (about 48 bytes each) and, with a rate limit, its request rate
/// (about 40 bytes each); a quarter as many refused sources' last DENY kiss.
pub const DEFAULT_CLIENTS: usize = 1 << 16;
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
    /// Clients remembered (see [`DEFAULT_CLIENTS`], the default); the tables are
    /// allocated whole at the start, so memory does not grow with a flood.
    pub clients: Option<usize>,
    /// The `[leap] file`: its leaps are announced as well as the clock's own.
    pub leap_file: SharedLeapFile,
    /// `[leap] smear-window`: the file's leaps are smeared over this many seconds in
    /// served time, and never announced.
    pub smear_window: Option<f64>,
}

/// Threads (and sockets) per `[[server]]` unless configured: one per core, at most
/// [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_WORKERS))
}

/// Beyond this many cores, more threads are asked for with `workers`: each costs a
/// descriptor, and a large host rarely serves NTP on all its cores.
const MAX_DEFAULT_WORKERS: usize = 16;

/// Binds `listen` and answers requests on it with one thread per core, each on a
/// socket of its own, as `admission` allows. Timestamps come from `clock`.
pub async fn start(
    listen: SocketAddr,
    server: Server,
    reference: Reference,
    admission: Admission,
    clock: Arc<dyn Clock>,
) -> std::io::Result<RunningServer> {
    let sockets = super::net::bind_udp_group(listen, default_workers())?;
    start_on(sockets, server, reference, admission, clock, None)
}

/// [`start`] on sockets bound already (by the supervisor, before privileges were
/// dropped; one thread reads each, so they should share one address through
/// SO_REUSEPORT), handing symmetric packets from configured peers to `peers`. Must
/// be called within the runtime.
pub fn start_on(
    sockets: Vec<std::net::UdpSocket>,
    server: Server,
    reference: Reference,
    admission: Admission,
    clock: Arc<dyn Clock>,
    peers: Option<Arc<PeerRoutes>>,
) -> std::io::Result<RunningServer> {
    let Some(first) = sockets.first() else {
        return Err(std::io::Error::other("no socket to serve on"));
    };
    let local_addr = first.local_addr()?;
    let mut transmit_times = Vec::with_capacity(sockets.len());
    for socket in &sockets {
        socket.set_nonblocking(true)?;
        crate::sys::enable_receive_timestamps(socket.as_fd())?;
        // Without kernel transmit times, interleaved replies carry the late estimate.
        let enabled = crate::sys::enable_transmit_timestamps(socket.as_fd());
        if let Err(e) = &enabled {
            tracing::debug!("no kernel transmit timestamps on {local_addr}: {e}");
        }
        transmit_times.push(enabled.is_ok());
    }
    // The workers read on their own threads; tokio's copy only sends (for peers).
    let tokio_socket = match peers {
        Some(_) => Some(Arc::new(UdpSocket::from_std(first.try_clone()?)?)),
        None => None,
    };
    let clients = admission.clients.unwrap_or(DEFAULT_CLIENTS).max(1);
    let server = Arc::new(server.with_interleave(clients));
    let precision = super::measure_precision();
    let limiter = admission
        .rate_limit
        .map(|limit| Arc::new(Mutex::new(RateLimiter::new(limit, clients))));
    let deny_kisses = admission.deny_kiss.then(|| {
        Arc::new(Mutex::new(KissThrottle::new(
            DENY_KISS_INTERVAL,
            (clients / 4).max(1),
        )))
    });
    let access = Arc::new(admission.access);
    let leap_file = admission.leap_file;
    let smear = admission.smear_window.map(|window| {
        Arc::new(SharedSmear {
            epoch: Instant::now(),
            state: Mutex::new(LeapSmear::new(window)),
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(sockets.len());
    for (index, (socket, transmit_times)) in sockets.into_iter().zip(transmit_times).enumerate() {
        let worker = Worker {
            socket,
            transmit_times,
            server: server.clone(),
            limiter: limiter.clone(),
            access: access.clone(),
            deny_kisses: deny_kisses.clone(),
            reference: reference.clone(),
            precision,
            clock: clock.clone(),
            peers: peers.clone(),
            leap_file: leap_file.clone(),
            smear: smear.clone(),
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("ntp-serve-{index}"))
            .spawn(move || worker.answer_requests());
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(e);
            }
        }
    }
    Ok(RunningServer {
        local_addr,
        server,
        socket: tokio_socket,
        stop,
        threads,
    })
}

/// Whether `reply` answered `request` in interleaved mode: its origin echoes the
/// request's receive field, where a basic reply's echoes the transmit field (RFC 9769
/// §2; the server answers interleaved only when the two differ).
fn answered_interleaved(request: &[u8], reply: &[u8]) -> bool {
    match (request.get(40..48), reply.get(24..32)) {
        (Some(transmit), Some(origin)) => transmit != origin,
        _ => false,
    }
}

/// One thread answering requests on a shared socket.
struct Worker {
    socket: std::net::UdpSocket,
    /// The socket reports when each reply left (`sys::enable_transmit_timestamps`).
    transmit_times: bool,
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
    /// Set when leaps are smeared in served time.
    smear: Option<Arc<SharedSmear>>,
    stop: Arc<AtomicBool>,
}

/// A server's smearing state, shared by its threads so that each sees what any of them
/// read (see `crate::proto::smear`), with the origin of the monotonic time they share.
struct SharedSmear {
    epoch: Instant,
    state: Mutex<LeapSmear>,
}

/// What one batch needs to know about the clock, read once for all its requests.
struct BatchClock {
    /// The disciplined clock minus the system clock, as a 32.32 difference: turns the
    /// kernel's receive times (system clock) into the disciplined clock's.
    offset: u64,
    /// The disciplined clock when the batch was read: the receive time of a request
    /// the kernel did not stamp.
    now: NtpTimestamp,
    state: SyncState,
    /// How to smear this batch's times, when a leap is being smeared.
    smear: Option<SmearView>,
}

impl BatchClock {
    /// The disciplined clock's reading for a kernel time (Unix seconds and nanoseconds
    /// of the system clock).
    fn kernel_reading(&self, (seconds, nanos): (i64, u32)) -> NtpTimestamp {
        let system = NtpTimestamp::from_unix(seconds, nanos);
        NtpTimestamp::from_bits(system.to_bits().wrapping_add(self.offset))
    }

    /// The time to serve for `reading`, a receive time taken before the batch's.
    fn served_before(&self, reading: NtpTimestamp) -> NtpTimestamp {
        self.smear
            .map_or(reading, |smear| smear.served_before(reading))
    }
}

impl Worker {
    fn answer_requests(self) {
        let mut requests = ReceiveBatch::new(BATCH, MAX_REQUEST_LEN);
        let mut replies = SendBatch::new(BATCH, REPLY_CAPACITY);
        // For each queued reply the responder answered (not a kiss): who and when its
        // request arrived, for interleaved mode.
        let mut answered: Vec<Option<(IpAddr, NtpTimestamp)>> = Vec::with_capacity(BATCH);
        // Replies waiting for their kernel transmit time, and room to read the reports.
        let mut awaiting = self.transmit_times.then(|| {
            (
                SentReplies::new(AWAITING_TRANSMIT_TIMES),
                ReceiveBatch::new(BATCH, LOOPED_CAPACITY),
            )
        });
        let mut drop_log = crate::util::LogLimit::new(DROP_LOG_INTERVAL);
        let started = Instant::now();
        let fd = self.socket.as_fd();
        // poll said the socket was ready and no request has been read since: a
        // transmit time was.
        let mut woken = false;
        while !self.stop.load(Ordering::Relaxed) {
            match requests.receive(fd) {
                Ok(_) => woken = false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some((sent, reports)) = &mut awaiting
                        && woken
                    {
                        // A report that came after its batch's were read: an error queue
                        // that is not empty makes poll return at once (POLLERR).
                        let clock = self.batch_clock();
                        if let Err(e) = self.read_transmit_times(sent, reports, &clock) {
                            // Reading dequeues even on failure; never spin on one.
                            tracing::debug!("transmit times: {e}");
                            std::thread::sleep(RECV_ERROR_PAUSE);
                        }
                    }
                    woken = match crate::sys::wait_readable(fd, STOP_CHECK_INTERVAL) {
                        Ok(ready) => ready,
                        Err(e) => {
                            tracing::debug!("poll: {e}");
                            std::thread::sleep(RECV_ERROR_PAUSE);
                            false
                        }
                    };
                    // Idle too, the smear must see the clock step at the leap.
                    self.smear_view(self.clock.now());
                    continue;
                }
                Err(e) => {
                    // ICMP errors from earlier replies surface here; a persistent error
                    // must not spin the CPU.
                    tracing::debug!("recv: {e}");
                    std::thread::sleep(RECV_ERROR_PAUSE);
                    continue;
                }
            }
            let clock = self.batch_clock();
            answered.clear();
            let mut asked = false;
            for request in requests.datagrams() {
                let received = request
                    .kernel_time
                    .map_or(clock.now, |time| clock.kernel_reading(time));
                if request.truncated {
                    // Larger than any request we answer (ADVERSARIAL 36).
                    self.server.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.log_drop(&mut drop_log, request.from, "truncated datagram");
                    continue;
                }
                let Some(reply) = replies.next_reply() else {
                    break;
                };
                let (result, answered_at) =
                    self.answer(request.from, request.data, received, &clock, started, reply);
                match result {
                    Ok(_) => {
                        let answered_at = answered_at.map(|at| (request.from.ip(), at));
                        // Only answers to clients in interleaved mode ask: the kernel's
                        // report costs about 1.5 µs a reply, which a basic client would
                        // never use. A smeared time is not the kernel's.
                        let timestamped = match (&mut awaiting, answered_at) {
                            (Some((sent, _)), Some((client, at)))
                                if clock.smear.is_none()
                                    && answered_interleaved(request.data, reply) =>
                            {
                                sent.handle_sent(client, at, reply);
                                asked = true;
                                true
                            }
                            _ => false,
                        };
                        replies.queue(request.from, timestamped);
                        answered.push(answered_at);
                    }
                    Err(Some(reason)) => {
                        self.log_drop(&mut drop_log, request.from, &reason.to_string());
                    }
                    Err(None) => {}
                }
            }
            if replies.is_empty() {
                continue;
            }
            let (_, error) = replies.send(fd);
            if let Some(e) = error {
                tracing::debug!("send: {e}");
            }
            // The late transmit time: when the batch left, for each answered client.
            let transmitted = self.served_now(&clock);
            for (client, received) in answered.iter().flatten() {
                self.server.handle_sent(*client, *received, transmitted);
            }
            // Only when a reply of this batch asked: a system call that finds nothing
            // costs as much as a small reply. A report that comes later wakes poll.
            if let Some((sent, reports)) = &mut awaiting
                && asked
            {
                let _ = self.read_transmit_times(sent, reports, &clock);
            }
        }
    }

    /// Reads the kernel's transmit times waiting on the error queue and gives each to
    /// the responder for its reply's client, in place of the late estimate. A reply
    /// whose report never comes (its send failed, the kernel dropped the report) stays
    /// among the waiting until newer ones push it out; it matches nothing else.
    fn read_transmit_times(
        &self,
        sent: &mut SentReplies,
        reports: &mut ReceiveBatch,
        clock: &BatchClock,
    ) -> std::io::Result<()> {
        let fd = self.socket.as_fd();
        loop {
            let count = match reports.receive_transmit_times(fd) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            for (packet, kernel_time) in reports.transmit_times() {
                let Some((client, received)) = sent.handle_report(packet) else {
                    continue;
                };
                let transmitted = clock.kernel_reading(kernel_time);
                if (0.0..MAX_TRANSMIT_DELAY).contains(&transmitted.seconds_since(received)) {
                    self.server.handle_sent(client, received, transmitted);
                    self.server
                        .stats
                        .kernel_transmit_times
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            if count < reports.capacity() {
                return Ok(());
            }
        }
    }

    /// Reads the clocks for a batch.
    fn batch_clock(&self) -> BatchClock {
        let system = NtpTimestamp::from_system_time(SystemTime::now());
        let now = self.clock.now();
        let smear = self.smear_view(now);
        let mut state = self.reference.state(self.precision, now);
        state.leap = super::leap::served(state.leap, &self.leap_file, now);
        if self.smears_announced_leap(now) && state.leap != Leap::Unsynchronized {
            // The leap is smeared: announced, clients would take the second again.
            state.leap = Leap::NoWarning;
        }
        if let Some(smear) = smear
            && !state.reference_time.is_zero()
        {
            state.reference_time = smear.served_before(state.reference_time);
        }
        BatchClock {
            offset: now.to_bits().wrapping_sub(system.to_bits()),
            now,
            state,
            smear,
        }
    }

    /// The smear for a clock reading `now` (taken just before), if leaps are smeared
    /// and one is near.
    fn smear_view(&self, now: NtpTimestamp) -> Option<SmearView> {
        let smear = self.smear.as_ref()?;
        let monotonic = smear.epoch.elapsed().as_secs_f64();
        let mut state = smear.state.lock().unwrap_or_else(|p| p.into_inner());
        let reach = state.reach() as u64 + 2;
        let leap = self.smeared_leap(now, reach);
        state.view(leap, now, monotonic)
    }

    /// The file's leap within `reach` seconds of `now`, when leaps are smeared.
    fn smeared_leap(&self, now: NtpTimestamp, reach: u64) -> Option<ScheduledLeap> {
        self.smear.as_ref()?;
        let seconds = crate::sync::leap_file::ntp_seconds(now);
        let (at, insert) = self
            .leap_file
            .load()
            .as_deref()?
            .leap_near(seconds, reach)?;
        Some(ScheduledLeap { at, insert })
    }

    /// Whether the leap announced now is one this server smears: from the day before
    /// it to the end of its window. Other leaps (from sources, without a usable file)
    /// are announced as usual, since the clock will step for them.
    fn smears_announced_leap(&self, now: NtpTimestamp) -> bool {
        self.smear.as_ref().is_some_and(|smear| {
            let reach = smear
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reach();
            let announced = crate::sync::leap_file::ANNOUNCE_BEFORE;
            self.smeared_leap(now, reach as u64 + announced).is_some()
        })
    }

    /// The time to serve now: the clock, smeared as `clock` says.
    fn served_now(&self, clock: &BatchClock) -> NtpTimestamp {
        let now = self.clock.now();
        match (clock.smear, &self.smear) {
            (Some(view), Some(smear)) => view.served_now(now, smear.epoch.elapsed().as_secs_f64()),
            _ => now,
        }
    }

    /// Decides one request: the reply is in `reply` on success. Alongside, when the
    /// responder answered it (not a kiss), its receive time for interleaved mode. An
    /// error is a drop to log, or none for a packet routed to a peer.
    fn answer(
        &self,
        peer: SocketAddr,
        bytes: &[u8],
        received: NtpTimestamp,
        clock: &BatchClock,
        started: Instant,
        reply: &mut Vec<u8>,
    ) -> (Result<Answer, Option<DropReason>>, Option<NtpTimestamp>) {
        // A configured peer's packets go to its association, not to the responder, and
        // with the clock's own time: smearing is for clients only.
        if let Some(routes) = &self.peers
            && routes.route(peer, bytes, received)
        {
            return (Err(None), None);
        }
        let received = clock.served_before(received);
        let state = &clock.state;
        let now = || self.served_now(clock);
        // The access list first (ADVERSARIAL 37): a refused source spends no tokens.
        if !self.access.allows_all() && !self.access.allows(peer.ip()) {
            let kiss = self.deny_kisses.as_ref().is_some_and(|throttle| {
                throttle
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .allow(peer.ip(), started.elapsed().as_secs_f64())
            });
            let result = self.server.handle_denied(bytes, kiss, received, now, reply);
            return (result.map_err(Some), None);
        }
        let verdict = match &self.limiter {
            Some(limiter) => limiter
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .check(peer.ip(), started.elapsed().as_secs_f64()),
            None => Verdict::Allow,
        };
        let result = match verdict {
            Verdict::Allow => self.server.handle_request_from(
                peer.ip(),
                bytes,
                received,
                state,
                now,
                &mut rand::rng(),
                reply,
            ),
            over => {
                self.server
                    .handle_rate_limited(bytes, over == Verdict::Kiss, received, now, reply)
            }
        };
        let answered = (verdict == Verdict::Allow).then_some(received);
        (result.map_err(Some), answered)
    }

    /// Logs a dropped request, at most once per interval.
    fn log_drop(&self, drop_log: &mut crate::util::LogLimit, peer: SocketAddr, reason: &str) {
        if let Some(more) = drop_log.allow() {
            tracing::info!(
                "dropped request from {peer}: {reason} ({more} more dropped since the last report)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyStore;
    use crate::clock::SoftwareClock;
    use crate::proto::server::ServerOptions;
    use crate::wire::packet::Header;

    /// A server whose clock runs `offset` seconds ahead of the system clock.
    async fn server(offset: f64, admission: Admission) -> RunningServer {
        let clock = Arc::new(SoftwareClock::simulated(offset, 0.0));
        let server = Server::new(KeyStore::default(), ServerOptions::default());
        let listen = "127.0.0.1:0".parse().unwrap();
        start(
            listen,
            server,
            Reference::Local { stratum: 1 },
            admission,
            clock,
        )
        .await
        .unwrap()
    }

    fn request(transmit: u64) -> Vec<u8> {
        let mut request = Vec::new();
        Header::client_request(6, NtpTimestamp::from_bits(transmit)).write(&mut request);
        request
    }

    fn client() -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn reply(socket: &std::net::UdpSocket) -> Option<Header> {
        let mut buffer = [0u8; 1024];
        let len = socket.recv(&mut buffer).ok()?;
        Header::parse(buffer.get(..len)?).ok()
    }

    fn system_now() -> NtpTimestamp {
        NtpTimestamp::from_system_time(SystemTime::now())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_clients_get_kernel_receive_times_on_the_servers_clock() {
        let offset = 1000.0;
        let running = server(offset, Admission::default()).await;
        let clients: Vec<_> = (0..50).map(|_| client()).collect();
        let sent = system_now().add_seconds(offset);
        for (i, socket) in clients.iter().enumerate() {
            socket
                .send_to(&request(i as u64 + 1), running.local_addr)
                .unwrap();
        }
        for (i, socket) in clients.iter().enumerate() {
            let header = reply(socket).expect("an answer");
            assert_eq!(header.origin_time.to_bits(), i as u64 + 1);
            let received = header.receive_time.seconds_since(sent);
            assert!(
                (0.0..1.0).contains(&received),
                "receive {received} s after sending"
            );
            assert!(header.transmit_time.seconds_since(header.receive_time) >= 0.0);
        }
        assert_eq!(running.server.stats.plain.load(Ordering::Relaxed), 50);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn malformed_datagrams_in_a_batch_are_counted_and_the_rest_answered() {
        let running = server(0.0, Admission::default()).await;
        let socket = client();
        socket.send_to(&[0x23; 20], running.local_addr).unwrap();
        socket.send_to(&request(1), running.local_addr).unwrap();
        socket.send_to(&[0x24; 48], running.local_addr).unwrap();
        socket.send_to(&request(2), running.local_addr).unwrap();
        assert_eq!(reply(&socket).unwrap().origin_time.to_bits(), 1);
        assert_eq!(reply(&socket).unwrap().origin_time.to_bits(), 2);
        let stats = &running.server.stats;
        let dropped = [&stats.malformed, &stats.refused, &stats.auth_failed];
        let dropped: u64 = dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!((stats.plain.load(Ordering::Relaxed), dropped), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_limiter_counts_a_source_across_ports_and_workers() {
        let admission = Admission {
            rate_limit: Some(RateLimit {
                interval: 1000.0,
                burst: 3,
                kiss_one_in: 0,
            }),
            ..Admission::default()
        };
        let running = server(0.0, admission).await;
        // A new source port per request, as chrony's clients use.
        let answered = (0..10u64)
            .filter(|&i| {
                let socket = client();
                socket
                    .set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                socket.send_to(&request(i + 1), running.local_addr).unwrap();
                reply(&socket).is_some()
            })
            .count();
        assert_eq!(answered, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn interleaved_mode_follows_a_client_whose_port_changes() {
        let running = server(0.0, Admission::default()).await;
        let first = client();
        first.send_to(&request(1), running.local_addr).unwrap();
        let basic = reply(&first).unwrap();
        // Interleaved: the origin names the last receive time, receive and transmit
        // differ (RFC 9769).
        let mut header = Header::parse(&request(2)).unwrap();
        header.origin_time = basic.receive_time;
        header.receive_time = NtpTimestamp::from_bits(7);
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        let second = client();
        second.send_to(&bytes, running.local_addr).unwrap();
        let interleaved = reply(&second).unwrap();
        assert_eq!(interleaved.origin_time, NtpTimestamp::from_bits(7));
        assert_eq!(running.server.stats.interleaved.load(Ordering::Relaxed), 1);
        // The transmit time is the one read after the first reply left.
        assert!(interleaved.transmit_time.seconds_since(basic.transmit_time) >= 0.0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn interleaved_answers_carry_the_kernels_transmit_time_on_the_servers_clock() {
        let offset = 1000.0;
        let running = server(offset, Admission::default()).await;
        let socket = client();
        let reported = || {
            (running.server.stats)
                .kernel_transmit_times
                .load(Ordering::Relaxed)
        };
        let interleaved_after = |previous: &Header, n: u64| {
            let mut header = Header::parse(&request(n)).unwrap();
            header.origin_time = previous.receive_time;
            header.receive_time = NtpTimestamp::from_bits(n + 100);
            let mut bytes = Vec::new();
            header.write(&mut bytes);
            socket.send_to(&bytes, running.local_addr).unwrap();
            let answer = reply(&socket).unwrap();
            assert_eq!(answer.origin_time, NtpTimestamp::from_bits(n + 100));
            answer
        };
        socket.send_to(&request(1), running.local_addr).unwrap();
        let basic = reply(&socket).unwrap();
        // A basic client's reply does not ask for the kernel's time.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(reported(), 0);
        let first = interleaved_after(&basic, 2);
        let got_first = system_now().add_seconds(offset);
        let waited = Instant::now();
        while reported() == 0 && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reported(), 1);
        let second = interleaved_after(&first, 3);
        // The kernel's time of the first interleaved reply, on the server's clock: after
        // that reply's own transmit timestamp (written before the send) and before it
        // arrived.
        let after_written = second.transmit_time.seconds_since(first.transmit_time);
        assert!((0.0..0.1).contains(&after_written), "{after_written}");
        assert!(got_first.seconds_since(second.transmit_time) >= 0.0);
        assert_eq!(running.server.stats.interleaved.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dropping_the_server_stops_its_threads() {
        let running = server(0.0, Admission::default()).await;
        let address = running.local_addr;
        drop(running);
        let socket = client();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket.send_to(&request(1), address).unwrap();
        assert!(reply(&socket).is_none());
    }
}
