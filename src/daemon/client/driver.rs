//! The client role's event loop: it moves datagrams, name resolutions, key exchanges,
//! clock commands and time between the OS and the [`Coordinator`], which decides
//! everything (see its driver contract).
//!
//! Each source request goes out from a fresh socket on a random port (RFC 9109); a
//! short-lived task forwards what arrives on it. Peers' packets use the `[[server]]`
//! sockets: the server tasks route them here ([`super::super::peer`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::clock_worker::{ClockWorker, Outcome};
use super::{ClientRole, SourceKind, SourceSpec};
use crate::auth::KeyStore;
use crate::auth::nts::ntp::NtsSession;
use crate::clock::{Clock, ClockError};
use crate::coordinator::{
    AssociationId, Coordinator, CoordinatorConfig, Event, Level, LocalReference, Request, Resolved,
    Transmit, Via,
};
use crate::daemon::control::{self, SnapshotRequest};
use crate::daemon::leap::SharedLeapFile;
use crate::daemon::peer::{PeerDatagram, PeerLink, PeerRoutes, PeerSpec};
use crate::daemon::refclock::{Pulse, Read, Reading, RefclockSpec};
use crate::proto::client::echoes_request;
use crate::proto::server::SyncState;
use crate::proto::source::SourceAuth;
use crate::refclock::pps::{LockEstimate, PpsCombiner};
use crate::wire::NtpTimestamp;

/// How long a request's socket stays open for the reply.
const REPLY_WAIT: Duration = Duration::from_secs(4);
/// Datagrams echoing our request forwarded per request at most (copies from the path
/// must not grow a queue).
const DATAGRAMS_PER_REQUEST: usize = 8;
/// Whole datagrams are read: an NTS reply with 8 large cookies exceeds 2 KiB.
const MAX_REPLY_LEN: usize = 65_536;
/// NTS-KE, and resolving the NTP server it names, may take this long.
const KE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the state the server role answers from is published.
const STATE_REFRESH: Duration = Duration::from_secs(1);
const DRIFT_SAVE: Duration = Duration::from_secs(3600);

/// What the I/O tasks hand back to the loop.
enum Input {
    Datagram {
        id: AssociationId,
        bytes: Vec<u8>,
        local: NtpTimestamp,
        at: Instant,
    },
    Resolved {
        id: AssociationId,
        result: Result<SocketAddr, String>,
    },
    Keys {
        id: AssociationId,
        result: Result<(NtsSession, SocketAddr), String>,
    },
}

/// Reference clocks' readings, and the tasks that make them (stopped with the loop).
struct Refclocks {
    readings: mpsc::Receiver<Reading>,
    _tasks: Vec<AbortOnDrop>,
    /// Each PPS refclock's combiner and the refclock that names its seconds (`None`:
    /// the system clock, while synchronized).
    pulses: Vec<(AssociationId, PpsCombiner, Option<AssociationId>)>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the loop woke up for.
enum Wake {
    Input(Input),
    Refclock(Reading),
    Peer(PeerDatagram),
    Clock(Outcome),
    Control(SnapshotRequest),
    Keys(KeyStore),
    Timer,
    Shutdown,
}

/// What the driver keeps per association to do its I/O.
enum Target {
    Source(SourceSpec),
    Peer {
        spec: PeerSpec,
        /// Its number in the peer routes.
        index: usize,
        /// The server socket that reaches it, once resolved.
        socket: Option<Arc<tokio::net::UdpSocket>>,
    },
}

/// The `[[server]]` sockets and routes peers use.
struct PeerPlumbing {
    routes: Arc<PeerRoutes>,
    inbound: mpsc::Receiver<PeerDatagram>,
    sockets: Vec<Arc<tokio::net::UdpSocket>>,
}

/// What reaches the driver from the control socket and reloads.
#[derive(Default)]
pub struct ControlInputs {
    pub snapshots: Option<mpsc::Receiver<SnapshotRequest>>,
    pub new_keys: Option<mpsc::Receiver<KeyStore>>,
}

pub struct Driver {
    coordinator: Coordinator,
    clock: Arc<dyn Clock>,
    worker: ClockWorker,
    outcomes: mpsc::Receiver<Outcome>,
    targets: Vec<Target>,
    peer_ids: Vec<AssociationId>,
    peers: Option<PeerPlumbing>,
    /// Snapshot requests from the control socket.
    control: Option<mpsc::Receiver<SnapshotRequest>>,
    /// A reloaded key file, for keyed sources and peers.
    new_keys: Option<mpsc::Receiver<KeyStore>>,
    leap_file: SharedLeapFile,
    own_addresses: Vec<IpAddr>,
    /// Reference clocks to start reading once the loop runs (in a runtime).
    refclock_specs: Vec<(AssociationId, RefclockSpec)>,
    refclock_sockets: Vec<std::os::unix::net::UnixDatagram>,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    state: Arc<RwLock<SyncState>>,
    drift_file: Option<PathBuf>,
    next_publish: Instant,
    next_drift_save: Instant,
    started: Instant,
}

impl Driver {
    pub fn new(
        role: ClientRole,
        clock: Arc<dyn Clock>,
        local: Option<LocalReference>,
        precision: i8,
        link: Option<PeerLink>,
        control: ControlInputs,
    ) -> Self {
        let ClientRole {
            specs,
            peers,
            mut config,
            drift_file,
            state,
            leap_file,
            own_addresses,
            refclocks,
            refclock_sockets,
        } = role;
        // Without a drift file, start from the frequency the clock already has rather
        // than throwing away what the kernel (or a previous run) learned. Exactly 0 is
        // a clock nobody set (a fresh boot): it is no drift file's 5 ppm, and trusting
        // it that much made the first correction extrapolate a wrong rate (by 40 % of
        // a 100 ppm error, under clknetsim).
        if config.initial_frequency_ppm.is_none() {
            let ppm = clock.status().frequency_ppm;
            config.initial_frequency_ppm = (ppm != 0.0).then_some(ppm);
        }
        let config = CoordinatorConfig {
            sync: config,
            local,
            precision,
        };
        let mut coordinator = Coordinator::new(config, rand::rng().random(), 0.0);
        let mut targets = Vec::new();
        for spec in specs {
            let auth = match &spec.kind {
                SourceKind::Insecure => SourceAuth::Insecure,
                SourceKind::Key(key) => SourceAuth::Key(key.clone()),
                SourceKind::Nts { .. } => SourceAuth::Nts,
            };
            let name = format!("{}:{}", spec.host, spec.port);
            coordinator.add_source(name, auth, spec.options, 0.0);
            targets.push(Target::Source(spec));
        }
        let mut peer_ids = Vec::new();
        for (index, spec) in peers.into_iter().enumerate() {
            let name = format!("peer {}:{}", spec.host, spec.port);
            peer_ids.push(coordinator.add_peer(name, spec.auth.clone(), spec.options, 0.0));
            targets.push(Target::Peer {
                spec,
                index,
                socket: None,
            });
        }
        let refclock_specs = refclocks
            .into_iter()
            .map(|spec| {
                let id = coordinator.add_refclock(spec.name.clone(), spec.options, 0.0);
                (id, spec)
            })
            .collect();
        let (outcome_tx, outcomes) = mpsc::channel(64);
        let worker = ClockWorker::new(clock.clone(), outcome_tx)
            .unwrap_or_else(|_| ClockWorker::Inline(clock.clone()));
        let (tx, rx) = mpsc::channel(256);
        let now = Instant::now();
        Self {
            coordinator,
            clock,
            worker,
            outcomes,
            targets,
            peer_ids,
            peers: link.map(|link| PeerPlumbing {
                routes: link.routes,
                inbound: link.inbound,
                sockets: link.sockets,
            }),
            control: control.snapshots,
            new_keys: control.new_keys,
            leap_file,
            own_addresses,
            refclock_specs,
            refclock_sockets,
            tx,
            rx,
            state,
            drift_file,
            next_publish: now,
            next_drift_save: now + DRIFT_SAVE,
            started: now,
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.duration_since(self.started).as_secs_f64()
    }

    /// Runs until `shutdown` fires (the drift file is saved then), or until the clock
    /// process is lost (`Err`): the engine cannot know what the clock did, and the
    /// caller decides what follows.
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let mut refclocks = self.start_refclocks()?;
        loop {
            let now = self.seconds(Instant::now());
            // A reload may have swapped the file; the coordinator asks it the time.
            self.coordinator.set_leap_file(self.leap_file.load_full());
            self.coordinator.handle_timeout(now, self.clock.now());
            self.flush()?;
            let wake_at = self.coordinator.poll_timeout().max(0.0);
            let deadline = (self.started + Duration::from_secs_f64(wake_at)).min(self.next_publish);
            let from_peers = async {
                match self.peers.as_mut() {
                    Some(peers) => peers.inbound.recv().await,
                    None => std::future::pending().await,
                }
            };
            let from_control = async {
                match self.control.as_mut() {
                    Some(control) => control.recv().await,
                    None => std::future::pending().await,
                }
            };
            let from_reload = async {
                match self.new_keys.as_mut() {
                    Some(keys) => keys.recv().await,
                    None => std::future::pending().await,
                }
            };
            let from_refclocks = async {
                match refclocks.as_mut() {
                    Some(refclocks) => refclocks.readings.recv().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                Some(input) = self.rx.recv() => Wake::Input(input),
                Some(reading) = from_refclocks => Wake::Refclock(reading),
                Some(datagram) = from_peers => Wake::Peer(datagram),
                Some(outcome) = self.outcomes.recv() => Wake::Clock(outcome),
                Some(reply) = from_control => Wake::Control(reply),
                Some(keys) = from_reload => Wake::Keys(keys),
                () = tokio::time::sleep_until(deadline) => Wake::Timer,
                _ = &mut shutdown => Wake::Shutdown,
            };
            match wake {
                Wake::Input(input) => self.handle_input(input),
                Wake::Refclock(reading) => self.handle_reading(reading, refclocks.as_mut()),
                Wake::Peer(datagram) => self.handle_peer_datagram(datagram),
                Wake::Clock(outcome) => self.handle_outcome(outcome)?,
                Wake::Control(reply) => {
                    let now = self.seconds(Instant::now());
                    let _ = reply.send(control::snapshot(&self.coordinator, now, self.clock.now()));
                }
                Wake::Keys(keys) => {
                    let replaced = self.coordinator.replace_keys(&keys);
                    tracing::debug!("reload: {replaced} sources and peers took their new key");
                }
                Wake::Timer => {}
                Wake::Shutdown => {
                    self.save_drift();
                    return Ok(());
                }
            }
        }
    }

    /// Starts reading every reference clock: SHM segments on a timer, SOCK sockets as
    /// datagrams come (the sockets pair with the SOCK refclocks in config order).
    fn start_refclocks(&mut self) -> Result<Option<Refclocks>, String> {
        if self.refclock_specs.is_empty() {
            return Ok(None);
        }
        let (tx, readings) = mpsc::channel(256);
        let mut tasks = Vec::new();
        let mut pulses = Vec::new();
        let specs = std::mem::take(&mut self.refclock_specs);
        let refids: Vec<(AssociationId, [u8; 4])> =
            specs.iter().map(|(id, s)| (*id, s.options.refid)).collect();
        let mut sockets = std::mem::take(&mut self.refclock_sockets).into_iter();
        for (id, spec) in specs {
            let clock = self.clock.clone();
            let unopened = || format!("{}: its device is not open", spec.name);
            let task = match (&spec.kind, spec.segment) {
                (crate::refclock::DriverKind::Shm { .. }, Some(segment)) => {
                    crate::daemon::refclock::spawn_shm(id, segment, clock, tx.clone())
                }
                (crate::refclock::DriverKind::Sock { path }, _) => {
                    let socket = sockets
                        .next()
                        .ok_or_else(|| format!("{}: no socket bound", spec.name))?;
                    crate::daemon::refclock::spawn_sock(id, socket, clock, tx.clone())
                        .map_err(|e| format!("{} ({}): {e}", spec.name, path.display()))?
                }
                (crate::refclock::DriverKind::Shm { .. }, None) => {
                    return Err(format!("{}: its SHM segment is not attached", spec.name));
                }
                (crate::refclock::DriverKind::Phc { .. }, _) => {
                    let fd = spec.device.ok_or_else(unopened)?;
                    crate::daemon::refclock::spawn_phc(id, fd, spec.phc, clock, tx.clone())
                }
                (crate::refclock::DriverKind::Pps { .. }, _) => {
                    let fd = spec.device.ok_or_else(unopened)?;
                    let combiner =
                        PpsCombiner::new(spec.pps).map_err(|e| format!("{}: {e}", spec.name))?;
                    // The config checked that the lock names another refclock.
                    let lock = spec.lock.and_then(|refid| {
                        refids
                            .iter()
                            .find(|(other, r)| *r == refid && *other != id)
                            .map(|(other, _)| *other)
                    });
                    pulses.push((id, combiner, lock));
                    crate::daemon::refclock::spawn_pps(id, fd, clock, tx.clone())
                }
            };
            tasks.push(AbortOnDrop(task));
        }
        Ok(Some(Refclocks {
            readings,
            _tasks: tasks,
            pulses,
        }))
    }

    /// A reference clock's reading (or why it was dropped) goes to the coordinator; a
    /// PPS device's edges are first judged against their lock.
    fn handle_reading(&mut self, reading: Reading, refclocks: Option<&mut Refclocks>) {
        let Reading { id, what, at } = reading;
        let result = match what {
            Read::Sample(result) => result,
            Read::Pulse(pulse) => {
                let Some((_, combiner, lock)) =
                    refclocks.and_then(|r| r.pulses.iter_mut().find(|(pps, _, _)| *pps == id))
                else {
                    return;
                };
                judge_pulse(&self.coordinator, combiner, *lock, &pulse)
            }
        };
        match result {
            Ok(sample) => {
                let pending = self.clock.status().pending_slew;
                let at = self.seconds(at);
                self.coordinator
                    .handle_refclock_sample(id, &sample, at, pending);
            }
            Err(why) => {
                tracing::debug!("{}: dropped: {why}", self.coordinator.name(id));
                self.coordinator.handle_refclock_drop(id, why);
            }
        }
    }

    /// Drains the coordinator's outputs and publishes what the server role answers.
    fn flush(&mut self) -> Result<(), String> {
        while let Some(transmit) = self.coordinator.poll_transmit() {
            self.transmit(transmit);
        }
        while let Some(request) = self.coordinator.poll_request() {
            self.start(request);
        }
        while let Some(command) = self.coordinator.poll_command() {
            tracing::debug!("clock: {command}");
            if let Some(outcome) = self.worker.apply(command) {
                self.handle_outcome(outcome)?;
            }
        }
        while let Some(event) = self.coordinator.poll_event() {
            log(&event);
        }
        let now = Instant::now();
        if now >= self.next_publish {
            self.next_publish = now + STATE_REFRESH;
            let published = self
                .coordinator
                .sync_state(self.seconds(now), self.clock.now());
            *self.state.write().unwrap_or_else(|p| p.into_inner()) = published;
        }
        if now >= self.next_drift_save {
            self.next_drift_save = now + DRIFT_SAVE;
            self.save_drift();
        }
        Ok(())
    }

    /// A refusal goes back to the coordinator; a lost clock process ends the loop.
    fn handle_outcome(&mut self, outcome: Outcome) -> Result<(), String> {
        match outcome.result {
            Ok(()) => Ok(()),
            Err(ClockError::Lost(why)) => Err(why),
            Err(e) => {
                tracing::warn!("clock refused {}: {e}", outcome.command);
                self.coordinator.handle_clock_refused(&outcome.command);
                Ok(())
            }
        }
    }

    fn transmit(&mut self, transmit: Transmit) {
        let Transmit {
            association,
            destination,
            via,
            bytes,
        } = transmit;
        match (via, self.targets.get(association.0)) {
            (Via::FreshSocket, _) => match super::super::net::client_socket_std(destination) {
                Ok(socket) => spawn_reply_reader(
                    association,
                    socket,
                    bytes,
                    self.clock.clone(),
                    self.tx.clone(),
                ),
                Err(e) => tracing::warn!(
                    "{}: cannot open a socket: {e}",
                    self.coordinator.name(association)
                ),
            },
            (
                Via::ServerSocket,
                Some(Target::Peer {
                    socket: Some(socket),
                    ..
                }),
            ) => {
                if let Err(e) = super::super::peer::send(socket, &bytes, destination) {
                    tracing::debug!("{}: send: {e}", self.coordinator.name(association));
                }
            }
            (Via::ServerSocket, _) => {}
        }
    }

    /// Starts the I/O a request asks for; its result comes back as an [`Input`].
    fn start(&self, request: Request) {
        let tx = self.tx.clone();
        match request {
            Request::Resolve(id) => {
                let (host, port) = match self.targets.get(id.0) {
                    Some(Target::Source(spec)) => (spec.host.clone(), spec.port),
                    Some(Target::Peer { spec, .. }) => (spec.host.clone(), spec.port),
                    None => return,
                };
                tokio::spawn(async move {
                    let result = super::super::net::resolve(&host, port).await;
                    let _ = tx.send(Input::Resolved { id, result }).await;
                });
            }
            Request::KeyExchange(id) => {
                let Some(Target::Source(spec)) = self.targets.get(id.0) else {
                    return;
                };
                let SourceKind::Nts {
                    ke_host,
                    ke_port,
                    tls,
                } = spec.kind.clone()
                else {
                    return;
                };
                let (host, port) = (spec.host.clone(), spec.port);
                tokio::spawn(async move {
                    let result = super::super::nts::establish(
                        &ke_host,
                        ke_port,
                        tls,
                        KE_TIMEOUT,
                        (&host, port),
                    )
                    .await;
                    let _ = tx.send(Input::Keys { id, result }).await;
                });
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Datagram {
                id,
                bytes,
                local,
                at,
            } => {
                let pending = self.clock.status().pending_slew;
                let at = self.seconds(at);
                self.coordinator
                    .handle_datagram(id, &bytes, local, at, pending);
            }
            Input::Resolved { id, result } => {
                let result = result.and_then(|address| self.route(id, address));
                let now = self.seconds(Instant::now());
                self.coordinator.handle_resolved(id, result, now);
            }
            Input::Keys { id, result } => {
                if let Ok((_, address)) = &result
                    && let Some(ours) = self.own_address_towards(*address)
                {
                    self.coordinator.set_own_address(id, ours);
                }
                let now = self.seconds(Instant::now());
                self.coordinator.handle_key_exchange(id, result, now);
            }
        }
    }

    /// A resolved address; for a peer, also the server socket that reaches it and the
    /// route that brings its packets here.
    fn route(&mut self, id: AssociationId, address: SocketAddr) -> Result<Resolved, String> {
        let Some(Target::Peer { index, socket, .. }) = self.targets.get_mut(id.0) else {
            return Ok(Resolved {
                address,
                local_ip: self.own_address_towards(address),
            });
        };
        let Some(peers) = &self.peers else {
            return Err("peers need a [[server]]".into());
        };
        let Some((chosen, ours)) = super::super::peer::socket_for(&peers.sockets, address) else {
            return Err(format!("no [[server]] socket can reach {address}"));
        };
        if !peers.routes.set(address, *index) {
            return Err(format!("{address} is another peer's address too"));
        }
        *socket = Some(chosen);
        Ok(Resolved {
            address,
            local_ip: Some(ours),
        })
    }

    /// How a source knows us: the address one of our servers listens on (what the
    /// site's other servers poll), else the one the route to it leaves from.
    fn own_address_towards(&self, address: SocketAddr) -> Option<IpAddr> {
        let listened = self
            .own_addresses
            .iter()
            .find(|ip| ip.is_ipv4() == address.is_ipv4());
        let routed = || {
            super::super::net::client_socket_std(address)
                .ok()?
                .local_addr()
                .ok()
        };
        listened.copied().or_else(|| routed().map(|a| a.ip()))
    }

    fn handle_peer_datagram(&mut self, datagram: PeerDatagram) {
        let PeerDatagram {
            peer,
            bytes,
            local,
            at,
        } = datagram;
        if let Some(peers) = &self.peers {
            peers.routes.taken(peer);
        }
        let Some(&id) = self.peer_ids.get(peer) else {
            return;
        };
        let pending = self.clock.status().pending_slew;
        let at = self.seconds(at);
        self.coordinator
            .handle_datagram(id, &bytes, local, at, pending);
    }

    /// Saves the frequency correction, if there is one worth keeping. A small file,
    /// once an hour: written in place of waiting on a blocking pool, which a
    /// single-threaded runtime does not have.
    fn save_drift(&self) {
        let Some(path) = &self.drift_file else {
            return;
        };
        if !self.coordinator.is_synchronized() {
            return;
        }
        let ppm = self.coordinator.frequency_ppm();
        if let Err(e) = crate::util::write_atomic(path, &format!("{ppm:.6}\n")) {
            tracing::warn!("cannot write drift file {}: {e}", path.display());
        }
    }
}

/// A PPS fetch judged against its lock: the lock refclock's latest combined offset, or
/// with no lock configured the system clock's own time (offset 0, now), only while the
/// engine is synchronized to something.
fn judge_pulse(
    coordinator: &Coordinator,
    combiner: &mut PpsCombiner,
    lock: Option<AssociationId>,
    pulse: &Pulse,
) -> Result<crate::refclock::RefclockSample, crate::refclock::RefclockDrop> {
    let estimate = match lock {
        Some(lock) => coordinator.refclock_estimate(lock),
        None => coordinator.is_synchronized().then_some(LockEstimate {
            offset: 0.0,
            when: pulse.local,
        }),
    };
    crate::daemon::refclock::pulse_sample(combiner, pulse, estimate)
}

fn log(event: &Event) {
    match event.level() {
        Level::Debug => tracing::debug!("{event}"),
        Level::Info => tracing::info!("{event}"),
        Level::Warn => tracing::warn!("{event}"),
    }
}

/// Sends `request` on `socket` now, then forwards what arrives for a while. Only
/// datagrams that echo the request's transmit field are forwarded (and at most a few),
/// so junk from off the path can neither crowd out the reply nor fill the queue.
fn spawn_reply_reader(
    id: AssociationId,
    socket: std::net::UdpSocket,
    request: Vec<u8>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Input>,
) {
    let socket = match socket
        .send(&request)
        .and_then(|_| tokio::net::UdpSocket::from_std(socket))
    {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!("send: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let deadline = Instant::now() + REPLY_WAIT;
        let mut buf = vec![0u8; MAX_REPLY_LEN];
        let mut forwarded = 0;
        while forwarded < DATAGRAMS_PER_REQUEST {
            let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await
            else {
                return;
            };
            // Read the clock first: everything after this adds to the measured delay.
            let local = clock.now();
            let at = Instant::now();
            // ICMP errors (anyone can forge one) and junk do not count.
            let Some(bytes) = received.ok().and_then(|len| buf.get(..len)) else {
                continue;
            };
            if !echoes_request(&request, bytes) {
                continue;
            }
            forwarded += 1;
            let input = Input::Datagram {
                id,
                bytes: bytes.to_vec(),
                local,
                at,
            };
            if tx.send(input).await.is_err() {
                return;
            }
        }
    });
}
