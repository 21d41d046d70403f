//! The client role of `ntimed run`: drives every `[[source]]`'s state machine and the
//! sync engine, applies the engine's commands to the clock, and publishes the sync
//! state the server role answers from.
//!
//! One task owns the sources and the engine, so nothing here is shared but the clock
//! and the published state. Each request goes out from a fresh socket on a random port
//! (RFC 9109); a short-lived task forwards whatever arrives on it, and the source's
//! on-wire and authentication checks decide what it is worth.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::nts::ntp::NtsSession;
use crate::clock::Clock;
use crate::config::Loaded;
use crate::proto::client::{Sample, echoes_request};
use crate::proto::peer::{Peer, PeerAuth, PeerEvent, PeerOptions};
use crate::proto::server::SyncState;
use crate::proto::source::{Action, Event, Source, SourceAuth, SourceOptions};
use crate::sync::{SourceId, SyncConfig, SyncEngine};
use crate::wire::{KissCode, NtpTimestamp, ReferenceId};

use super::peer::{PeerDatagram, PeerLink, PeerSpec};

/// How long a request's socket stays open for the reply.
const REPLY_WAIT: Duration = Duration::from_secs(4);
/// Datagrams echoing our request forwarded per request at most (copies from the path
/// must not grow a queue).
const DATAGRAMS_PER_REQUEST: usize = 8;
/// Whole datagrams are read: an NTS reply with 8 large cookies exceeds 2 KiB.
const MAX_REPLY_LEN: usize = 65_536;
/// NTS-KE, and resolving the NTP server it names, may take this long.
const KE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the published state and the drift file are refreshed.
const STATE_REFRESH: Duration = Duration::from_secs(1);
const DRIFT_SAVE: Duration = Duration::from_secs(3600);
/// A peer whose name did not resolve is tried again after this long.
const RESOLVE_RETRY: Duration = Duration::from_secs(30);

/// How a configured source authenticates, with what it needs at run time.
#[derive(Clone)]
pub enum SourceKind {
    Insecure,
    Key(crate::auth::SymmetricKey),
    Nts {
        ke_host: String,
        ke_port: u16,
        tls: Arc<rustls::ClientConfig>,
    },
}

#[derive(Clone)]
pub struct SourceSpec {
    pub host: String,
    pub port: u16,
    pub kind: SourceKind,
    pub options: SourceOptions,
}

enum Input {
    Datagram {
        source: usize,
        bytes: Vec<u8>,
        local: NtpTimestamp,
        at: Instant,
    },
    Resolved {
        source: usize,
        result: Result<SocketAddr, String>,
    },
    PeerResolved {
        peer: usize,
        result: Result<SocketAddr, String>,
    },
    Keys {
        source: usize,
        result: Result<(NtsSession, SocketAddr), String>,
    },
}

struct Running {
    spec: SourceSpec,
    /// `host:port`, for logs.
    name: String,
    source: Source,
    id: SourceId,
    /// Where NTP requests go (resolved, or told by NTS-KE).
    address: Option<SocketAddr>,
    resolving: bool,
}

/// A `[[peer]]` association while it runs.
struct RunningPeer {
    spec: PeerSpec,
    /// `peer host:port`, for logs.
    name: String,
    peer: Peer,
    id: SourceId,
    /// Where it is, and the server socket that reaches it, once resolved.
    route: Option<(SocketAddr, Arc<tokio::net::UdpSocket>)>,
    /// Its last measurement named us as its reference: not used until it stops.
    looped: bool,
}

impl RunningPeer {
    /// Whether the engine may count on it.
    fn usable(&self) -> bool {
        self.peer.is_reachable() && !self.looped
    }
}

/// The reference id announced when `address` is our reference (RFC 5905 §7.3: the
/// IPv4 address, or the first four bytes of the MD5 of the IPv6 address).
pub fn reference_id(address: SocketAddr) -> ReferenceId {
    match address {
        SocketAddr::V4(v4) => ReferenceId(v4.ip().octets()),
        SocketAddr::V6(v6) => {
            use md5::Digest;
            let digest = md5::Md5::digest(v6.ip().octets());
            let mut id = [0; 4];
            id.copy_from_slice(digest.get(..4).unwrap_or(&[0; 4]));
            ReferenceId(id)
        }
    }
}

/// Reads a drift file: one number, the frequency correction in ppm. A missing or
/// unreadable file is no error (the engine starts without it); a bad one is reported.
pub fn read_drift_file(path: &std::path::Path, limit: f64) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse::<f64>() {
        // Just created (by the clock process, before the first save).
        _ if text.trim().is_empty() => None,
        Ok(ppm) if ppm.is_finite() && ppm.abs() <= limit => Some(ppm),
        _ => {
            tracing::warn!("{}: not a frequency in ppm; ignored", path.display());
            None
        }
    }
}

/// Saves the frequency correction (atomically, off the async workers).
fn save_drift_file(path: &std::path::Path, ppm: f64) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::util::write_atomic(&path, &format!("{ppm:.6}\n")) {
            tracing::warn!("cannot write drift file {}: {e}", path.display());
        }
    });
}

/// The client role, checked and ready to run.
pub struct ClientRole {
    pub specs: Vec<SourceSpec>,
    pub peers: Vec<PeerSpec>,
    pub config: SyncConfig,
    pub drift_file: Option<PathBuf>,
    /// What the server role answers from.
    pub state: Arc<RwLock<SyncState>>,
}

/// Builds the client role from `[[source]]` and `[clock]` (`None` without sources).
/// TLS settings, keys and the drift file are read here, before anything runs.
pub fn prepare(loaded: &Loaded) -> Result<Option<ClientRole>, String> {
    let config = &loaded.config;
    let Some(clock) = config.clock.as_ref().map(|c| c.get_ref()) else {
        return Ok(None);
    };
    if config.sources.is_empty() && config.peers.is_empty() {
        return Ok(None);
    }
    let mut specs = Vec::new();
    for section in &config.sources {
        let s = section.get_ref();
        let (host, port) = super::net::split_host_port(&s.address, 123)?;
        let kind = if let Some(nts) = &s.nts {
            let (ke_host, ke_port) =
                super::net::split_host_port(&nts.ke, super::nts::DEFAULT_KE_PORT)?;
            let ca = nts.ca.as_ref().map(|p| loaded.path(p));
            SourceKind::Nts {
                ke_host,
                ke_port,
                tls: super::nts::client_config(ca.as_deref())?,
            }
        } else if let Some(id) = s.key {
            let key = loaded
                .keys
                .get(id)
                .ok_or_else(|| format!("source {}: no key {id}", s.address))?;
            SourceKind::Key(key.clone())
        } else {
            SourceKind::Insecure
        };
        let defaults = SourceOptions::default();
        specs.push(SourceSpec {
            host,
            port,
            kind,
            options: SourceOptions {
                min_poll: s.min_poll.unwrap_or(defaults.min_poll),
                max_poll: s.max_poll.unwrap_or(defaults.max_poll),
                iburst: s.iburst,
            },
        });
    }
    let mut peers = Vec::new();
    for section in &config.peers {
        let p = section.get_ref();
        let (host, port) = super::net::split_host_port(&p.address, 123)?;
        let auth = match p.key {
            Some(id) => PeerAuth::Key(
                loaded
                    .keys
                    .get(id)
                    .ok_or_else(|| format!("peer {}: no key {id}", p.address))?
                    .clone(),
            ),
            None => PeerAuth::Insecure,
        };
        let defaults = PeerOptions::default();
        peers.push(PeerSpec {
            host,
            port,
            auth,
            options: PeerOptions {
                min_poll: p.min_poll.unwrap_or(defaults.min_poll),
                max_poll: p.max_poll.unwrap_or(defaults.max_poll),
                precision: defaults.precision,
            },
        });
    }
    let defaults = SyncConfig::default();
    let max_frequency_ppm = clock.max_frequency.unwrap_or(defaults.max_frequency_ppm);
    let drift_file = clock.drift_file.as_ref().map(|p| loaded.path(p));
    let sync = SyncConfig {
        min_sources: clock.min_sources.unwrap_or(defaults.min_sources),
        step_threshold: clock.step_threshold.unwrap_or(defaults.step_threshold),
        steps: clock.steps.unwrap_or(defaults.steps),
        panic_threshold: clock.panic_threshold.unwrap_or(defaults.panic_threshold),
        max_frequency_ppm,
        initial_frequency_ppm: drift_file
            .as_deref()
            .and_then(|p| read_drift_file(p, max_frequency_ppm)),
        min_poll: specs
            .iter()
            .map(|s| s.options.min_poll)
            .chain(peers.iter().map(|p| p.options.min_poll))
            .min()
            .unwrap_or(defaults.min_poll),
        max_poll: specs
            .iter()
            .map(|s| s.options.max_poll)
            .chain(peers.iter().map(|p| p.options.max_poll))
            .max()
            .unwrap_or(defaults.max_poll),
    };
    Ok(Some(ClientRole {
        specs,
        peers,
        config: sync,
        drift_file,
        state: Arc::new(RwLock::new(SyncState::unsynchronized(-20))),
    }))
}

impl ClientRole {
    /// Runs the sources and peers until `shutdown` fires; `fallback` is the `[local]`
    /// stratum served while unsynchronized. Peers need `link` (the server sockets).
    pub async fn run(
        self,
        clock: Arc<dyn Clock>,
        fallback: Option<u8>,
        precision: i8,
        link: Option<PeerLink>,
        mut shutdown: tokio::sync::oneshot::Receiver<()>,
    ) {
        let ClientRole {
            specs,
            peers: peer_specs,
            mut config,
            drift_file,
            state,
        } = self;
        // Without a drift file, start from the frequency the clock already has rather
        // than throwing away what the kernel (or a previous run) learned.
        if config.initial_frequency_ppm.is_none() {
            config.initial_frequency_ppm = Some(clock.status().frequency_ppm);
        }
        let started = Instant::now();
        let seconds = |at: Instant| at.duration_since(started).as_secs_f64();
        let (tx, mut rx) = mpsc::channel::<Input>(256);
        let mut engine = SyncEngine::new(config, 0.0);
        let mut sources: Vec<Running> = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let auth = match &spec.kind {
                SourceKind::Insecure => SourceAuth::Insecure,
                SourceKind::Key(key) => SourceAuth::Key(key.clone()),
                SourceKind::Nts { .. } => SourceAuth::Nts,
            };
            let name = format!("{}:{}", spec.host, spec.port);
            let requires_auth = !matches!(spec.kind, SourceKind::Insecure);
            // The reference id is the address once known.
            let id = engine.add_source(name.clone(), ReferenceId(*b"INIT"), requires_auth);
            let nts = matches!(spec.kind, SourceKind::Nts { .. });
            if !nts {
                spawn_resolve(i, &spec, tx.clone());
            }
            sources.push(Running {
                source: Source::new(auth, spec.options, 0.0),
                name,
                spec,
                id,
                address: None,
                resolving: !nts,
            });
        }
        let (routes, mut inbound, server_sockets) = match link {
            Some(link) => (Some(link.routes), Some(link.inbound), link.sockets),
            None => (None, None, Vec::new()),
        };
        let mut peers: Vec<RunningPeer> = Vec::new();
        for (i, spec) in peer_specs.into_iter().enumerate() {
            let name = format!("peer {}:{}", spec.host, spec.port);
            let requires_auth = !matches!(spec.auth, PeerAuth::Insecure);
            let id = engine.add_peer(name.clone(), ReferenceId(*b"INIT"), requires_auth);
            spawn_resolve_peer(i, &spec, Duration::ZERO, tx.clone());
            let options = PeerOptions {
                precision,
                ..spec.options
            };
            peers.push(RunningPeer {
                peer: Peer::new(spec.auth.clone(), options, 0.0),
                spec,
                name,
                id,
                route: None,
                looped: false,
            });
        }
        let mut request = Vec::new();
        let mut last_report: Vec<(bool, bool)> = Vec::new();
        let mut next_refresh = Instant::now();
        let mut next_drift_save = Instant::now() + DRIFT_SAVE;
        apply_commands(&mut engine, clock.as_ref());
        loop {
            let now = seconds(Instant::now());
            for (i, running) in sources.iter_mut().enumerate() {
                if running.source.poll_timeout().is_none_or(|t| t > now) {
                    continue;
                }
                // The socket first: the request is timestamped right before it leaves.
                let socket = running.address.map(super::net::client_socket_std);
                let action = running
                    .source
                    .handle_timeout(now, clock.now(), &mut request);
                match (action, socket) {
                    (Some(Action::Transmit), Some(Ok(socket))) => {
                        spawn_request(i, socket, &request, clock.clone(), tx.clone());
                    }
                    (Some(Action::Transmit), Some(Err(e))) => {
                        tracing::warn!("{}: cannot open a socket: {e}", running.name);
                    }
                    // Not resolved yet: this poll counts as unanswered.
                    (Some(Action::Transmit), None) if !running.resolving => {
                        running.resolving = true;
                        spawn_resolve(i, &running.spec, tx.clone());
                    }
                    (Some(Action::KeyExchange), _) => {
                        spawn_key_exchange(i, &running.spec, tx.clone());
                    }
                    _ => {}
                }
                engine.handle_reachability(running.id, running.source.is_reachable());
            }
            for running in &mut peers {
                // Not polled before its address is known: a poll nobody hears would only
                // count against it.
                let Some((address, socket)) = &running.route else {
                    continue;
                };
                if running.peer.poll_timeout() > now {
                    continue;
                }
                let ours = *state.read().unwrap_or_else(|p| p.into_inner());
                if running
                    .peer
                    .handle_timeout(now, clock.now(), &ours, &mut request)
                    && let Err(e) = super::peer::send(socket, &request, *address)
                {
                    tracing::debug!("{}: send: {e}", running.name);
                }
                engine.handle_reachability(running.id, running.usable());
            }
            if Instant::now() >= next_refresh {
                next_refresh = Instant::now() + STATE_REFRESH;
                engine.handle_timeout(seconds(Instant::now()));
                apply_commands(&mut engine, clock.as_ref());
                let published = match (engine.is_synchronized(), fallback) {
                    (false, Some(stratum)) => {
                        SyncState::local_reference(stratum, clock.now(), precision)
                    }
                    _ => engine.sync_state(seconds(Instant::now()), clock.now(), precision),
                };
                *state.write().unwrap_or_else(|p| p.into_inner()) = published;
                log_changes(&engine, seconds(Instant::now()), &mut last_report);
            }
            if let Some(path) = &drift_file
                && Instant::now() >= next_drift_save
            {
                next_drift_save = Instant::now() + DRIFT_SAVE;
                if engine.is_synchronized() {
                    save_drift_file(path, engine.frequency_ppm());
                }
            }
            let wake = sources
                .iter()
                .filter_map(|r| r.source.poll_timeout())
                .chain(
                    peers
                        .iter()
                        .filter(|p| p.route.is_some())
                        .map(|p| p.peer.poll_timeout()),
                )
                .fold(seconds(next_refresh), f64::min);
            let deadline = started + Duration::from_secs_f64(wake.max(0.0));
            let from_peer = async {
                match inbound.as_mut() {
                    Some(inbound) => inbound.recv().await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                input = rx.recv() => input,
                Some(datagram) = from_peer => {
                    let PeerDatagram { peer, bytes, local, at } = datagram;
                    if let Some(routes) = &routes {
                        routes.taken(peer);
                    }
                    let Some(running) = peers.get_mut(peer) else { continue };
                    let event = running.peer.handle_packet(&bytes, local, seconds(at));
                    match event {
                        PeerEvent::Sample(sample) => {
                            running.looped = false;
                            engine.handle_reachability(running.id, running.usable());
                            take_sample(&mut engine, clock.as_ref(), running.id, &running.name, &sample, seconds(at));
                            set_poll(&engine, &mut sources, &mut peers);
                        }
                        PeerEvent::Loop(id) => {
                            if !running.looped {
                                tracing::info!("{}: synchronized to us (reference id {id:?}); not used", running.name);
                            }
                            running.looped = true;
                            engine.handle_reachability(running.id, false);
                        }
                        PeerEvent::Accepted => engine.handle_reachability(running.id, running.usable()),
                        PeerEvent::Rejected(why) => tracing::debug!("{}: dropped packet: {why}", running.name),
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => continue,
                _ = &mut shutdown => {
                    if let Some(path) = &drift_file && engine.is_synchronized() {
                        save_drift_file(path, engine.frequency_ppm());
                    }
                    return;
                }
            };
            let Some(input) = input else { return };
            let now = seconds(Instant::now());
            match input {
                Input::Datagram {
                    source,
                    bytes,
                    local,
                    at,
                } => {
                    let Some(running) = sources.get_mut(source) else {
                        continue;
                    };
                    let name = &running.name;
                    match running.source.handle_response(&bytes, local, seconds(at)) {
                        Event::Sample(sample) => {
                            let id = running.id;
                            take_sample(
                                &mut engine,
                                clock.as_ref(),
                                id,
                                name,
                                &sample,
                                seconds(at),
                            );
                            set_poll(&engine, &mut sources, &mut peers);
                        }
                        Event::Kiss(code) => {
                            let what = match code {
                                KissCode::Deny | KissCode::Restrict => "source stopped",
                                KissCode::Rate => "polling less often",
                                KissCode::NtsNak => "cookies refused",
                                KissCode::Other(_) => "ignored",
                            };
                            tracing::info!("{name}: kiss-o'-death {code:?}: {what}");
                            engine.handle_reachability(running.id, running.source.is_reachable());
                        }
                        Event::Rejected(why) => tracing::debug!("{name}: dropped reply: {why}"),
                    }
                }
                Input::Resolved { source, result } => {
                    let Some(running) = sources.get_mut(source) else {
                        continue;
                    };
                    running.resolving = false;
                    match result {
                        Ok(address) => {
                            running.address = Some(address);
                            engine.set_reference_id(running.id, reference_id(address));
                        }
                        Err(e) => tracing::warn!("{}: {e}", running.name),
                    }
                }
                Input::PeerResolved { peer, result } => {
                    let Some(running) = peers.get_mut(peer) else {
                        continue;
                    };
                    let address = match result {
                        Ok(address) => address,
                        Err(e) => {
                            tracing::warn!(
                                "{}: {e}; trying again in {} s",
                                running.name,
                                RESOLVE_RETRY.as_secs()
                            );
                            spawn_resolve_peer(peer, &running.spec, RESOLVE_RETRY, tx.clone());
                            continue;
                        }
                    };
                    let Some((socket, ours)) = super::peer::socket_for(&server_sockets, address)
                    else {
                        tracing::warn!(
                            "{}: no [[server]] socket can reach {address}; not used",
                            running.name
                        );
                        continue;
                    };
                    if routes.as_ref().is_some_and(|r| !r.set(address, peer)) {
                        tracing::warn!(
                            "{}: {address} is another peer's address too; not used",
                            running.name
                        );
                        continue;
                    }
                    running
                        .peer
                        .add_own_reference_id(reference_id(SocketAddr::new(ours, 0)));
                    engine.set_reference_id(running.id, reference_id(address));
                    running.route = Some((address, socket));
                }
                Input::Keys { source, result } => {
                    let Some(running) = sources.get_mut(source) else {
                        continue;
                    };
                    match result {
                        Ok((session, address)) => {
                            tracing::info!("{}: NTS-KE done, NTP at {address}", running.name);
                            running.address = Some(address);
                            engine.set_reference_id(running.id, reference_id(address));
                            running.source.handle_key_exchange(Ok(session), now);
                        }
                        Err(e) => {
                            tracing::warn!("{}: NTS-KE failed: {e}", running.name);
                            running.source.handle_key_exchange(Err(e), now);
                        }
                    }
                    engine.handle_reachability(running.id, running.source.is_reachable());
                }
            }
        }
    }
}

/// Gives a measurement to the engine, and the engine's commands to the clock.
fn take_sample(
    engine: &mut SyncEngine,
    clock: &dyn Clock,
    id: SourceId,
    name: &str,
    sample: &Sample,
    at: f64,
) {
    let pending = clock.status().pending_slew;
    let result = engine.handle_sample(id, sample, at, pending);
    tracing::debug!(
        "{name}: offset {:+.6} s delay {:.6} s{}",
        sample.offset,
        sample.delay,
        result
            .err()
            .map(|why| format!(" (not used: {why:?})"))
            .unwrap_or_default()
    );
    apply_commands(engine, clock);
}

/// Tells every source and peer the poll interval the engine wants now.
fn set_poll(engine: &SyncEngine, sources: &mut [Running], peers: &mut [RunningPeer]) {
    let poll = engine.poll_interval();
    for r in sources {
        r.source.set_system_poll(poll);
    }
    for p in peers {
        p.peer.set_system_poll(poll);
    }
}

/// Logs each source or peer that became reachable or unreachable, selected or not.
fn log_changes(engine: &SyncEngine, now: f64, last: &mut Vec<(bool, bool)>) {
    let report = engine.report(now);
    last.resize(report.len(), (false, false));
    for (source, seen) in report.iter().zip(last.iter_mut()) {
        let state = (source.reachable, source.selected);
        if state != *seen {
            *seen = state;
            tracing::info!(
                "{}: {}, {}",
                source.name,
                if source.reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                if source.selected {
                    "selected"
                } else {
                    "not selected"
                }
            );
        }
    }
}

/// Hands every queued command to the clock. A refusal is logged and handed back to the
/// engine, which then no longer counts on it.
fn apply_commands(engine: &mut SyncEngine, clock: &dyn Clock) {
    while let Some(command) = engine.poll_command() {
        tracing::debug!("clock: {command:?}");
        if let Err(e) = clock.apply(command) {
            tracing::warn!("clock refused {command:?}: {e}");
            engine.handle_clock_refused(&command);
        }
    }
}

/// Sends `request` on `socket` now, then forwards what arrives for a while. Only
/// datagrams that echo the request's transmit field are forwarded (and at most a few),
/// so junk from off the path can neither crowd out the reply nor fill the queue.
fn spawn_request(
    source: usize,
    socket: std::net::UdpSocket,
    request: &[u8],
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Input>,
) {
    let socket = match socket
        .send(request)
        .and_then(|_| tokio::net::UdpSocket::from_std(socket))
    {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!("send: {e}");
            return;
        }
    };
    let request = request.to_vec();
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
            let bytes = bytes.to_vec();
            if tx
                .send(Input::Datagram {
                    source,
                    bytes,
                    local,
                    at,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// Resolves a peer's address after `delay`.
fn spawn_resolve_peer(peer: usize, spec: &PeerSpec, delay: Duration, tx: mpsc::Sender<Input>) {
    let (host, port) = (spec.host.clone(), spec.port);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let result = super::net::resolve(&host, port).await;
        let _ = tx.send(Input::PeerResolved { peer, result }).await;
    });
}

fn spawn_resolve(source: usize, spec: &SourceSpec, tx: mpsc::Sender<Input>) {
    let (host, port) = (spec.host.clone(), spec.port);
    tokio::spawn(async move {
        let result = super::net::resolve(&host, port).await;
        let _ = tx.send(Input::Resolved { source, result }).await;
    });
}

/// NTS-KE; NTP then goes where the KE server says, else to the source's `address`.
fn spawn_key_exchange(source: usize, spec: &SourceSpec, tx: mpsc::Sender<Input>) {
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
        let result = super::nts::establish(&ke_host, ke_port, tls, KE_TIMEOUT, (&host, port)).await;
        let _ = tx.send(Input::Keys { source, result }).await;
    });
}
