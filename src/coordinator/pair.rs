//! A deterministic in-memory test pair, in the manner of quinn's `Pair`: one
//! [`Coordinator`] with a modelled clock, and [`proto::server::Server`]s behind a
//! modelled network, driven on one manual timeline. Unit tests and `ntimed sim` use it,
//! so they exercise the very contract the daemon's driver does.
//!
//! Knobs: each server's clock offset from the truth, the one-way latency (a base plus
//! exponentially distributed jitter, optionally asymmetric), loss, and the wander of
//! the client's oscillator. Everything random comes from one seeded generator.
//!
//! [`proto::server::Server`]: crate::proto::server::Server

use std::net::{Ipv4Addr, SocketAddr};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

use super::{AssociationId, Coordinator, CoordinatorConfig, Event, Request, Resolved, Via};
use crate::clock::model::ClockModel;
use crate::clock::{ClockCommand, check_finite};
use crate::proto::server::{Server, SyncState};
use crate::wire::NtpTimestamp;

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
}

impl FarServer {
    pub fn new(server: Server, offset: f64) -> Self {
        Self {
            server,
            offset,
            stratum: 1,
            up: true,
            rate_kisses: false,
        }
    }

    /// Where the coordinator finds server `index`.
    pub fn address(index: usize) -> SocketAddr {
        let last = u8::try_from(index % 250).unwrap_or(0) + 1;
        SocketAddr::new(Ipv4Addr::new(10, 0, 0, last).into(), 123)
    }
}

struct InFlight {
    arrives: f64,
    association: AssociationId,
    bytes: Vec<u8>,
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
    pub network: Network,
    /// Random walk of the client's oscillator per second, as a fraction.
    pub wander: f64,
    /// Seconds since the start, on the true timeline.
    pub now: f64,
    /// Requests each association sent, by association number.
    pub requests: Vec<u64>,
    /// Every event the coordinator reported, oldest first.
    pub events: Vec<Event>,
    /// Every clock command applied.
    pub commands: Vec<ClockCommand>,
    /// Association → server it talks to (set when the test adds a source).
    routes: Vec<Option<usize>>,
    in_flight: Vec<InFlight>,
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
            network: Network::default(),
            wander: 0.0,
            now: 0.0,
            requests: Vec::new(),
            events: Vec::new(),
            commands: Vec::new(),
            routes: Vec::new(),
            in_flight: Vec::new(),
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
        if self.routes.len() <= id.0 {
            self.routes.resize(id.0 + 1, None);
            self.requests.resize(id.0 + 1, 0);
        }
        if let Some(route) = self.routes.get_mut(id.0) {
            *route = Some(server);
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
            let t = [
                Some(self.next_tick),
                Some(self.coordinator.poll_timeout()),
                next_arrival.map(|a| a.0),
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
                each_second(self);
            } else if let Some((_, i)) = next_arrival.filter(|a| a.0 == t) {
                let flight = self.in_flight.swap_remove(i);
                let received = self.local(t);
                let pending = self.clock.status(t).pending_slew;
                self.coordinator.handle_datagram(
                    flight.association,
                    &flight.bytes,
                    received,
                    t,
                    pending,
                );
            } else {
                let local = self.local(t);
                self.coordinator.handle_timeout(t, local);
            }
            self.drain();
        }
    }

    /// Carries out every output of the coordinator.
    fn drain(&mut self) {
        let t = self.now;
        while let Some(request) = self.coordinator.poll_request() {
            if let Request::Resolve(id) = request {
                let result = match self.routes.get(id.0).copied().flatten() {
                    Some(server) => Ok(Resolved {
                        address: FarServer::address(server),
                        local_ip: None,
                    }),
                    None => Err("no such host".to_string()),
                };
                self.coordinator.handle_resolved(id, result, t);
            }
        }
        while let Some(transmit) = self.coordinator.poll_transmit() {
            if transmit.via != Via::FreshSocket {
                continue;
            }
            let id = transmit.association;
            if let Some(count) = self.requests.get_mut(id.0) {
                *count += 1;
            }
            self.exchange(id, &transmit.bytes);
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

    /// A request crosses the network to its server; the answer (if any) is put in
    /// flight back.
    fn exchange(&mut self, id: AssociationId, request: &[u8]) {
        let Some(index) = self.routes.get(id.0).copied().flatten() else {
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
            far.server
                .handle_request(
                    request,
                    at_server,
                    &state,
                    || at_server,
                    &mut self.rng,
                    &mut self.reply,
                )
                .is_ok()
        };
        if answered && !self.lost() {
            self.in_flight.push(InFlight {
                arrives: self.now + up + down,
                association: id,
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
