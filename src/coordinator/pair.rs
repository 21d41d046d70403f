//! A deterministic in-memory test pair, in the manner of quinn's `Pair`: one
//! [`Coordinator`] with a modelled clock, and [`proto::server::Server`]s behind a
//! modelled network, driven on one manual timeline. Unit tests and `ntimed sim` use it,
//! so they exercise the very contract the daemon's driver does.
//!
//! The far side can also hold symmetric peers ([`FarPeer`]: a [`Peer`] association
//! with a clock of its own and whatever it says about its synchronization) and NTS
//! servers, whose key exchanges the pair answers in memory with cookies the server
//! opens.
//!
//! Knobs: each server's clock offset from the truth, the one-way latency (a base plus
//! exponentially distributed jitter, optionally asymmetric), loss, and the wander of
//! the client's oscillator. Everything random comes from one seeded generator.
//!
//! [`proto::server::Server`]: crate::proto::server::Server

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

use super::{AssociationId, Coordinator, CoordinatorConfig, Event, Request, Resolved, Via};
use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
use crate::auth::nts::cookie::SessionKeys;
use crate::auth::nts::ntp::NtsSession;
use crate::clock::model::ClockModel;
use crate::clock::{ClockCommand, check_finite};
use crate::proto::client::Sample;
use crate::proto::peer::{Peer, PeerEvent};
use crate::proto::polling::Action;
use crate::proto::server::{Server, SharedCookieKeys, SyncState};
use crate::wire::NtpTimestamp;

/// Our own address, as far peers see it.
pub const OUR_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 9));
/// Cookies a key exchange hands out.
const COOKIES: usize = 8;

/// The network between the coordinator and its servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Network {
    /// One-way latency floor, seconds.
    pub base_delay: f64,
    /// Mean of the exponential jitter added to each direction, seconds.
    pub jitter: f64,
    /// Share of the jitter moved from the request's direction to the reply's, in
    /// -0.5..=0.5 (0: symmetric).
    pub asymmetry: f64,
    /// Probability that any one datagram is lost.
    pub loss: f64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            base_delay: 1e-4,
            jitter: 1e-4,
            asymmetry: 0.0,
            loss: 0.0,
        }
    }
}

/// One server on the far side: a real responder whose clock is `offset` seconds off
/// the truth, answering as `stratum`.
pub struct FarServer {
    pub server: Server,
    pub offset: f64,
    pub stratum: u8,
    /// Answers nothing while false (a server that went away).
    pub up: bool,
    /// Answers plain requests with a RATE kiss instead of the time (a server over its
    /// rate limit).
    pub rate_kisses: bool,
    /// The cookie keys of an NTS server (the same ones its `server` opens cookies
    /// with): key exchanges with it succeed.
    pub nts: Option<SharedCookieKeys>,
}

impl FarServer {
    pub fn new(server: Server, offset: f64) -> Self {
        Self {
            server,
            offset,
            stratum: 1,
            up: true,
            rate_kisses: false,
            nts: None,
        }
    }

    /// An NTS server: `server` must open cookies under `cookie_keys`.
    pub fn with_nts(server: Server, cookie_keys: SharedCookieKeys, offset: f64) -> Self {
        Self {
            nts: Some(cookie_keys),
            ..Self::new(server, offset)
        }
    }

    /// Where the coordinator finds server `index`.
    pub fn address(index: usize) -> SocketAddr {
        let last = u8::try_from(index % 250).unwrap_or(0) + 1;
        SocketAddr::new(Ipv4Addr::new(10, 0, 0, last).into(), 123)
    }
}

/// A symmetric peer on the far side, with a clock `offset` seconds off the truth,
/// announcing `state` about its synchronization.
pub struct FarPeer {
    pub peer: Peer,
    pub offset: f64,
    pub state: SyncState,
    /// The association on our side it talks to.
    pub association: AssociationId,
    /// What it measured of us.
    pub samples: Vec<Sample>,
    /// Everything its association reported, oldest first.
    pub events: Vec<PeerEvent>,
}

impl FarPeer {
    /// Where the coordinator finds far peer `index`.
    pub fn address(index: usize) -> SocketAddr {
        let last = u8::try_from(index % 250).unwrap_or(0) + 1;
        SocketAddr::new(Ipv4Addr::new(10, 0, 1, last).into(), 123)
    }
}

/// Who a datagram in flight is for.
#[derive(Clone, Copy)]
enum Recipient {
    Us(AssociationId),
    FarPeer(usize),
}

struct InFlight {
    arrives: f64,
    to: Recipient,
    bytes: Vec<u8>,
}

/// What an association's name resolves to.
#[derive(Clone, Copy)]
enum Route {
    Server(usize),
    Peer(usize),
}

/// The epoch of the pair's timeline: the truth at t = 0.
pub fn epoch() -> NtpTimestamp {
    NtpTimestamp::from_unix(1_800_000_000, 0)
}

pub struct Pair {
    pub coordinator: Coordinator,
    /// The client's clock, steered only by the coordinator's commands.
    pub clock: ClockModel,
    pub servers: Vec<FarServer>,
    pub peers: Vec<FarPeer>,
    pub network: Network,
    /// Random walk of the client's oscillator per second, as a fraction.
    pub wander: f64,
    /// How long a name takes to resolve, seconds.
    pub resolve_delay: f64,
    /// Seconds since the start, on the true timeline.
    pub now: f64,
    /// Requests each association sent, by association number.
    pub requests: Vec<u64>,
    /// Key exchanges each association ran, by association number.
    pub key_exchanges: Vec<u64>,
    /// Every event the coordinator reported, oldest first.
    pub events: Vec<Event>,
    /// Every clock command applied.
    pub commands: Vec<ClockCommand>,
    /// Reference clocks read once a second: association, and the device's own error
    /// (its time minus the truth), seconds.
    pub refclocks: Vec<(AssociationId, f64)>,
    /// Association → what its name resolves to.
    routes: Vec<Option<Route>>,
    in_flight: Vec<InFlight>,
    /// Resolutions under way: when each answers.
    resolving: Vec<(f64, AssociationId)>,
    rng: StdRng,
    oscillator: f64,
    next_tick: f64,
    reply: Vec<u8>,
}

impl Pair {
    /// A pair whose client clock starts `offset` seconds off and `frequency` (fraction)
    /// fast; `seed` makes every run with the same inputs identical.
    pub fn new(config: CoordinatorConfig, offset: f64, frequency: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let coordinator = Coordinator::new(config, rng.random(), 0.0);
        Self {
            coordinator,
            clock: ClockModel::new(offset, frequency),
            servers: Vec::new(),
            peers: Vec::new(),
            network: Network::default(),
            wander: 0.0,
            resolve_delay: 0.0,
            now: 0.0,
            requests: Vec::new(),
            key_exchanges: Vec::new(),
            events: Vec::new(),
            commands: Vec::new(),
            refclocks: Vec::new(),
            routes: Vec::new(),
            in_flight: Vec::new(),
            resolving: Vec::new(),
            rng,
            oscillator: frequency,
            next_tick: 1.0,
            reply: Vec::new(),
        }
    }

    /// Adds a server; returns its index.
    pub fn add_server(&mut self, server: FarServer) -> usize {
        self.servers.push(server);
        self.servers.len() - 1
    }

    /// Says which server association `id` reaches (its name resolves to it).
    pub fn connect(&mut self, id: AssociationId, server: usize) {
        self.set_route(id, Route::Server(server));
    }

    /// Adds a far peer for the coordinator's peer association `id`; returns its index.
    pub fn add_peer(
        &mut self,
        id: AssociationId,
        peer: Peer,
        offset: f64,
        state: SyncState,
    ) -> usize {
        self.peers.push(FarPeer {
            peer,
            offset,
            state,
            association: id,
            samples: Vec::new(),
            events: Vec::new(),
        });
        let index = self.peers.len() - 1;
        self.set_route(id, Route::Peer(index));
        index
    }

    fn set_route(&mut self, id: AssociationId, route: Route) {
        if self.routes.len() <= id.0 {
            self.routes.resize(id.0 + 1, None);
            self.requests.resize(id.0 + 1, 0);
            self.key_exchanges.resize(id.0 + 1, 0);
        }
        if let Some(slot) = self.routes.get_mut(id.0) {
            *slot = Some(route);
        }
    }

    /// The client clock's reading at true time `t`.
    pub fn local(&self, t: f64) -> NtpTimestamp {
        epoch().add_seconds(t + self.clock.phase(t))
    }

    /// The client clock's error (clock − truth) now.
    pub fn phase(&self) -> f64 {
        self.clock.phase(self.now)
    }

    /// Runs the timeline until `until` (true seconds); `each_second` sees the pair once
    /// a second (after the oscillator's step), for measurements.
    pub fn run_until(&mut self, until: f64, mut each_second: impl FnMut(&Pair)) {
        self.drain();
        loop {
            let next_arrival = self
                .in_flight
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.arrives.total_cmp(&b.1.arrives))
                .map(|(i, f)| (f.arrives, i));
            let next_far_peer = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.peer.poll_timeout().map(|t| (t, i)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let next_resolution = self
                .resolving
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
                .map(|(i, r)| (r.0, i));
            let t = [
                Some(self.next_tick),
                Some(self.coordinator.poll_timeout()),
                next_arrival.map(|a| a.0),
                next_far_peer.map(|p| p.0),
                next_resolution.map(|r| r.0),
            ]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min)
            .max(self.now);
            if t > until {
                self.now = until;
                return;
            }
            self.now = t;
            if t == self.next_tick {
                let normal: f64 = StandardNormal.sample(&mut self.rng);
                self.oscillator += self.wander * normal;
                self.clock.set_oscillator(t, self.oscillator);
                self.next_tick += 1.0;
                self.read_refclocks(t);
                each_second(self);
            } else if let Some((_, i)) = next_arrival.filter(|a| a.0 == t) {
                let flight = self.in_flight.swap_remove(i);
                self.deliver(flight);
            } else if let Some((_, i)) = next_far_peer.filter(|p| p.0 <= t) {
                self.far_peer_timeout(i);
            } else if let Some((_, i)) = next_resolution.filter(|r| r.0 <= t) {
                let (_, id) = self.resolving.swap_remove(i);
                self.resolve(id);
            } else {
                let local = self.local(t);
                self.coordinator.handle_timeout(t, local);
            }
            self.drain();
        }
    }

    fn deliver(&mut self, flight: InFlight) {
        let t = flight.arrives;
        match flight.to {
            Recipient::Us(id) => {
                let received = self.local(t);
                let pending = self.clock.status(t).pending_slew;
                self.coordinator
                    .handle_datagram(id, &flight.bytes, received, t, pending);
            }
            Recipient::FarPeer(i) => {
                let Some(far) = self.peers.get_mut(i) else {
                    return;
                };
                let received = epoch().add_seconds(t + far.offset);
                let event = far.peer.handle_packet(&flight.bytes, received, t);
                if let PeerEvent::Sample(sample) = &event {
                    far.samples.push(*sample);
                }
                far.events.push(event);
            }
        }
    }

    /// Each reference clock gives a reading of the truth (plus its own error) against
    /// the client clock.
    fn read_refclocks(&mut self, t: f64) {
        let local = self.local(t);
        let pending = self.clock.status(t).pending_slew;
        for &(id, error) in &self.refclocks {
            let sample = crate::refclock::RefclockSample {
                local,
                offset: epoch().add_seconds(t + error).seconds_since(local),
                dispersion: 1e-7,
                leap: crate::wire::Leap::NoWarning,
            };
            self.coordinator
                .handle_refclock_sample(id, &sample, t, pending);
        }
    }

    /// A far peer's own poll (or prompt reply) goes out.
    fn far_peer_timeout(&mut self, i: usize) {
        let t = self.now;
        let Some(far) = self.peers.get_mut(i) else {
            return;
        };
        let local = epoch().add_seconds(t + far.offset);
        let mut out = Vec::new();
        let sent = far
            .peer
            .handle_timeout(t, local, &far.state, &mut self.rng, &mut out);
        let to = Recipient::Us(far.association);
        if sent == Some(Action::Transmit) && !self.lost() {
            let (up, _) = self.delays();
            self.in_flight.push(InFlight {
                arrives: t + up,
                to,
                bytes: out,
            });
        }
    }

    /// Carries out every output of the coordinator.
    fn drain(&mut self) {
        let t = self.now;
        while let Some(request) = self.coordinator.poll_request() {
            match request {
                Request::Resolve(id) if self.resolve_delay > 0.0 => {
                    self.resolving.push((t + self.resolve_delay, id));
                }
                Request::Resolve(id) => self.resolve(id),
                Request::KeyExchange(id) => {
                    if let Some(count) = self.key_exchanges.get_mut(id.0) {
                        *count += 1;
                    }
                    let result = self.key_exchange(id);
                    self.coordinator.handle_key_exchange(id, result, t);
                }
            }
        }
        while let Some(transmit) = self.coordinator.poll_transmit() {
            let id = transmit.association;
            match (transmit.via, self.routes.get(id.0).copied().flatten()) {
                (Via::FreshSocket, _) => {
                    if let Some(count) = self.requests.get_mut(id.0) {
                        *count += 1;
                    }
                    self.exchange(id, &transmit.bytes);
                }
                (Via::ServerSocket, Some(Route::Peer(peer))) if !self.lost() => {
                    let (up, _) = self.delays();
                    self.in_flight.push(InFlight {
                        arrives: t + up,
                        to: Recipient::FarPeer(peer),
                        bytes: transmit.bytes,
                    });
                }
                _ => {}
            }
        }
        while let Some(command) = self.coordinator.poll_command() {
            if check_finite(&command).is_ok() {
                self.clock.apply(t, command);
            }
            self.commands.push(command);
        }
        while let Some(event) = self.coordinator.poll_event() {
            self.events.push(event);
        }
    }

    /// Answers a resolution: the far server's or peer's address, or "no such host".
    fn resolve(&mut self, id: AssociationId) {
        let result = match self.routes.get(id.0).copied().flatten() {
            Some(Route::Server(server)) => Ok(Resolved {
                address: FarServer::address(server),
                local_ip: None,
            }),
            Some(Route::Peer(peer)) => Ok(Resolved {
                address: FarPeer::address(peer),
                local_ip: Some(OUR_ADDRESS),
            }),
            None => Err("no such host".to_string()),
        };
        self.coordinator.handle_resolved(id, result, self.now);
    }

    /// NTS-KE with the association's server, in memory: fresh session keys, and
    /// cookies sealed under the server's current master key.
    fn key_exchange(&mut self, id: AssociationId) -> Result<(NtsSession, SocketAddr), String> {
        let Some(Route::Server(index)) = self.routes.get(id.0).copied().flatten() else {
            return Err("no such host".into());
        };
        let Some(cookie_keys) = self
            .servers
            .get(index)
            .filter(|s| s.up)
            .and_then(|s| s.nts.clone())
        else {
            return Err("connection refused".into());
        };
        let key = |rng: &mut StdRng| {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes);
            AeadKey::new(AeadAlgorithm::AesSivCmac256, &bytes).ok_or("no key")
        };
        let keys = SessionKeys {
            c2s: key(&mut self.rng)?,
            s2c: key(&mut self.rng)?,
        };
        let master = cookie_keys.read().map_err(|_| "cookie keys poisoned")?;
        let cookies: Vec<Vec<u8>> = (0..COOKIES)
            .filter_map(|_| master.seal(&keys, &mut self.rng))
            .collect();
        drop(master);
        Ok((NtsSession::new(keys, cookies), FarServer::address(index)))
    }

    /// A request crosses the network to its server; the answer (if any) is put in
    /// flight back.
    fn exchange(&mut self, id: AssociationId, request: &[u8]) {
        let Some(Route::Server(index)) = self.routes.get(id.0).copied().flatten() else {
            return;
        };
        if self.lost() {
            return;
        }
        let (up, down) = self.delays();
        let Some(far) = self.servers.get(index).filter(|s| s.up) else {
            return;
        };
        let at_server = epoch().add_seconds(self.now + up + far.offset);
        let state = SyncState::local_reference(far.stratum, at_server, -20);
        let answered = if far.rate_kisses {
            far.server
                .handle_rate_limited(request, true, at_server, || at_server, &mut self.reply)
                .is_ok()
        } else {
            // As the daemon answers: a server with an interleave table (RFC 9769)
            // answers an interleaved request with the previous reply's transmit time.
            let answered = far
                .server
                .handle_request_from(
                    OUR_ADDRESS,
                    request,
                    at_server,
                    &state,
                    || at_server,
                    &mut self.rng,
                    &mut self.reply,
                )
                .is_ok();
            if answered {
                far.server.handle_sent(OUR_ADDRESS, at_server, at_server);
            }
            answered
        };
        if answered && !self.lost() {
            self.in_flight.push(InFlight {
                arrives: self.now + up + down,
                to: Recipient::Us(id),
                bytes: self.reply.clone(),
            });
        }
    }

    fn lost(&mut self) -> bool {
        self.network.loss > 0.0 && self.rng.random::<f64>() < self.network.loss
    }

    /// One-way delays (up, down) for one exchange.
    fn delays(&mut self) -> (f64, f64) {
        let up: f64 = Exp1.sample(&mut self.rng);
        let down: f64 = Exp1.sample(&mut self.rng);
        let n = self.network;
        (
            n.base_delay + n.jitter * (1.0 - 2.0 * n.asymmetry) * up,
            n.base_delay + n.jitter * (1.0 + 2.0 * n.asymmetry) * down,
        )
    }
}
