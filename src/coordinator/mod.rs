//! The client role's core. Sources, peers and the sync engine meet in one
//! sans-IO [`Coordinator`], which makes every protocol decision of the client role:
//! when each association polls and at what interval, what reachability means, what
//! each kiss means, which reference id we announce (RFC 5905 §7.3), loop avoidance
//! between peers, and when a peer's failed resolution is retried. Time and randomness
//! come in from the caller; nothing here reads a clock or a socket.
//!
//! # Driver contract
//!
//! In the manner of quinn-proto's `Connection`:
//!
//! 1. Build it with [`Coordinator::new`], then [`add_source`] and [`add_peer`] for
//!    each association (the returned [`AssociationId`] names it in every input and
//!    output).
//! 2. Drain the outputs, in any order, until each returns `None`:
//!    * [`poll_transmit`]: datagrams to send ([`Via`] says from which socket);
//!    * [`poll_request`]: name resolutions and NTS key exchanges to run;
//!    * [`poll_command`]: clock commands, each applied in order; a refusal goes back
//!      through [`handle_clock_refused`];
//!    * [`poll_event`]: what happened, for logs.
//! 3. Sleep until [`poll_timeout`] or an input, whichever comes first; feed the input
//!    ([`handle_datagram`], [`handle_resolved`], [`handle_key_exchange`]) or, at the
//!    deadline, [`handle_timeout`]; then go back to 2.
//! 4. Whenever convenient, publish [`sync_state`] to the server role.
//!
//! `now` is the caller's monotonic seconds (it never goes back); `local` is the
//! disciplined clock's reading as an NTP timestamp.
//!
//! [`add_source`]: Coordinator::add_source
//! [`add_peer`]: Coordinator::add_peer
//! [`poll_transmit`]: Coordinator::poll_transmit
//! [`poll_request`]: Coordinator::poll_request
//! [`poll_command`]: Coordinator::poll_command
//! [`poll_event`]: Coordinator::poll_event
//! [`handle_clock_refused`]: Coordinator::handle_clock_refused
//! [`poll_timeout`]: Coordinator::poll_timeout
//! [`handle_datagram`]: Coordinator::handle_datagram
//! [`handle_resolved`]: Coordinator::handle_resolved
//! [`handle_key_exchange`]: Coordinator::handle_key_exchange
//! [`handle_timeout`]: Coordinator::handle_timeout
//! [`sync_state`]: Coordinator::sync_state

mod event;
mod local;
pub mod pair;
mod refclock;
mod refid;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::auth::KeyStore;
use crate::auth::nts::ntp::NtsSession;
use crate::clock::ClockCommand;
use crate::proto::client::Authenticated;
use crate::proto::client::Sample;
use crate::proto::peer::{Peer, PeerAuth, PeerEvent, PeerOptions};
use crate::proto::polling::Action;
use crate::proto::server::SyncState;
use crate::proto::source::{Event as SourceEvent, Source, SourceAuth, SourceOptions};
use crate::refclock::{RefclockDrop, RefclockOptions, RefclockSample};
use crate::sync::leap_file::LeapFile;
use crate::sync::{SourceId, SourceReport, SyncConfig, SyncEngine};
use crate::wire::{Leap, NtpTimestamp, ReferenceId};

pub use event::{Event, EventKind, Level};
pub use local::LocalReference;
use refclock::RefclockState;
pub use refclock::UNREACHABLE_POLLS;
pub use refid::reference_id;

/// How often the engine's holdover is checked and state changes are reported.
pub const HOUSEKEEPING: f64 = 1.0;
/// A source or peer whose address could not be resolved (or routed) is tried again
/// after this long.
pub const RESOLVE_RETRY: f64 = 30.0;
/// Events kept for the driver at most; older ones are dropped (and counted) if it does
/// not drain them.
const EVENT_QUEUE: usize = 1024;

/// Names one source or peer in every input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssociationId(pub usize);

/// Which socket a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A fresh socket on a random port (RFC 9109); what arrives on it for a while is
    /// handed back with [`Coordinator::handle_datagram`] under the same association.
    FreshSocket,
    /// The `[[server]]` socket that reaches the peer: peers send from and to their NTP
    /// server port.
    ServerSocket,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub association: AssociationId,
    pub destination: SocketAddr,
    pub via: Via,
    pub bytes: Vec<u8>,
}

/// Work with I/O the coordinator needs done; the result comes back through a
/// `handle_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Resolve the association's configured host; answer with
    /// [`Coordinator::handle_resolved`].
    Resolve(AssociationId),
    /// Run NTS-KE for the source; answer with [`Coordinator::handle_key_exchange`].
    KeyExchange(AssociationId),
}

/// Where a resolved association is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub address: SocketAddr,
    /// For a peer: our own address as the peer sees it (the socket that reaches it),
    /// so that a peer synchronized to us is recognised.
    pub local_ip: Option<IpAddr>,
}

/// What the coordinator needs beyond the engine's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    pub sync: SyncConfig,
    /// `[local]`: when the local clock is served instead of the sources' time.
    pub local: Option<LocalReference>,
    /// Our clock's precision (log2 s), announced in packets.
    pub precision: i8,
}

/// How an association authenticates, for reports.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthReport {
    None,
    /// A symmetric key, by id (never the secret).
    Key {
        id: u32,
    },
    Nts {
        /// The AEAD algorithm of the last successful key exchange.
        aead: Option<&'static str>,
        last_key_exchange: Option<KeyExchangeReport>,
    },
    /// A reference clock: trusted because the config says so (`authenticated = true`).
    Configured,
}

/// The last NTS key exchange of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyExchangeReport {
    /// Seconds ago.
    pub age: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// What [`AuthReport::Nts`] is made from: kept by the association.
#[derive(Debug, Clone, Default)]
struct NtsRecord {
    aead: Option<&'static str>,
    /// When the last key exchange ended, and its error if it failed.
    last: Option<(f64, Option<String>)>,
}

enum Kind {
    Source {
        source: Box<Source>,
        /// Keyed sources' key id.
        key_id: Option<u32>,
        /// NTS sources' key exchanges.
        nts_record: NtsRecord,
        /// NTS sources learn their address from the key exchange; the others from a
        /// resolution, and are not polled before it (a poll nobody hears would only
        /// push the first request a whole interval back).
        nts: bool,
        /// A resolution is under way.
        resolving: bool,
        /// When to ask for its address again after a failure.
        retry_resolve_at: Option<f64>,
        /// Where the books stood when its last reply was taken: an interleaved sample
        /// measures that exchange, not this one.
        books: Option<Books>,
    },
    Peer {
        peer: Box<Peer>,
        key_id: Option<u32>,
        /// Its last measurement named us as its reference: not used until it stops.
        looped: bool,
        /// When to ask for its address again after a failure.
        retry_resolve_at: Option<f64>,
    },
    Refclock(Box<RefclockState>),
}

/// Where the engine's books stood when a reply was taken.
#[derive(Debug, Clone, Copy)]
struct Books {
    /// [`SyncEngine::corrections`] then.
    corrections: f64,
    /// The clock's slew still to apply then.
    pending_slew: f64,
    /// The caller's seconds then.
    at: f64,
}

struct Association {
    name: String,
    engine_id: SourceId,
    address: Option<SocketAddr>,
    kind: Kind,
    /// What was last reported: reachable, selected.
    reported: (bool, bool),
}

impl Association {
    /// Whether the engine may count on it.
    fn usable(&self) -> bool {
        match &self.kind {
            Kind::Source { source, .. } => source.is_reachable(),
            Kind::Peer { peer, looped, .. } => peer.is_reachable() && !looped,
            Kind::Refclock(refclock) => refclock.is_reachable(),
        }
    }

    fn poll_timeout(&self) -> Option<f64> {
        match (&self.kind, self.address) {
            (Kind::Refclock(refclock), _) => Some(refclock.poll_timeout()),
            (
                Kind::Source {
                    source, nts: true, ..
                },
                _,
            ) => source.poll_timeout(),
            (Kind::Source { source, .. }, Some(_)) => source.poll_timeout(),
            (Kind::Peer { peer, .. }, Some(_)) => peer.poll_timeout(),
            // Not polled before the address is known: a poll nobody hears would only
            // count against it. Asked again after a failed resolution.
            (
                Kind::Source {
                    retry_resolve_at, ..
                }
                | Kind::Peer {
                    retry_resolve_at, ..
                },
                None,
            ) => *retry_resolve_at,
        }
    }

    /// Needs a resolution before it can poll.
    fn needs_address(&self) -> bool {
        self.address.is_none()
            && !matches!(
                self.kind,
                Kind::Source { nts: true, .. } | Kind::Refclock(_)
            )
    }
}

/// One row of [`Coordinator::report`].
#[derive(Debug, Clone, PartialEq)]
pub struct AssociationReport {
    pub association: AssociationId,
    pub name: String,
    pub peer: bool,
    pub address: Option<SocketAddr>,
    pub reach: u8,
    pub poll: i8,
    /// NTS cookies left, for NTS sources with keys.
    pub nts_cookies: Option<usize>,
    pub auth: AuthReport,
    /// The engine's view: samples, reachable, selected, offset, error bound and state.
    pub engine: SourceReport,
    /// Reference clocks: readings dropped (bad input), and why the last one was.
    pub drops: Option<(u64, Option<RefclockDrop>)>,
}

/// The client role's core (see the module's driver contract).
pub struct Coordinator {
    config: CoordinatorConfig,
    engine: SyncEngine,
    associations: Vec<Association>,
    rng: StdRng,
    transmits: VecDeque<Transmit>,
    requests: VecDeque<Request>,
    events: VecDeque<Event>,
    events_dropped: u64,
    next_housekeeping: f64,
    /// Reused for every packet written.
    buffer: Vec<u8>,
    leap_file: Option<Arc<LeapFile>>,
    /// When it was created (`[local] wait` counts from here).
    started: f64,
    /// The leap second announced, and the midnight (NTP seconds) it happens at.
    leap_due: Option<(u64, Leap)>,
    /// The midnight of the last leap second passed.
    leap_passed: Option<u64>,
}

impl Coordinator {
    /// A coordinator at time `now`, drawing its randomness (transmit timestamps, NTS
    /// nonces and unique ids) from a generator seeded with `seed`: the daemon seeds it
    /// from the OS, simulations and tests with a fixed number.
    pub fn new(config: CoordinatorConfig, seed: [u8; 32], now: f64) -> Self {
        Self {
            engine: SyncEngine::new(config.sync.clone(), now),
            config,
            associations: Vec::new(),
            rng: StdRng::from_seed(seed),
            transmits: VecDeque::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            next_housekeeping: now,
            buffer: Vec::new(),
            leap_file: None,
            started: now,
            leap_due: None,
            leap_passed: None,
        }
    }

    /// Adds an upstream source (`[[source]]`). Its address comes from a resolution the
    /// coordinator asks for at its first poll, or from NTS-KE.
    pub fn add_source(
        &mut self,
        name: impl Into<String>,
        auth: SourceAuth,
        options: SourceOptions,
        now: f64,
    ) -> AssociationId {
        let name = name.into();
        let nts = matches!(auth, SourceAuth::Nts);
        let key_id = match &auth {
            SourceAuth::Key(key) => Some(key.id()),
            _ => None,
        };
        let requires_auth = !matches!(auth, SourceAuth::Insecure);
        // The reference id is the address once known.
        let engine_id = self
            .engine
            .add_source(name.clone(), ReferenceId(*b"INIT"), requires_auth);
        let id = AssociationId(self.associations.len());
        if !nts {
            self.requests.push_back(Request::Resolve(id));
        }
        self.associations.push(Association {
            name,
            engine_id,
            address: None,
            kind: Kind::Source {
                source: Box::new(Source::new(auth, options, now)),
                key_id,
                nts_record: NtsRecord::default(),
                nts,
                resolving: !nts,
                retry_resolve_at: None,
                books: None,
            },
            reported: (false, false),
        });
        id
    }

    /// Adds a symmetric peer (`[[peer]]`); it is polled once its address is resolved.
    pub fn add_peer(
        &mut self,
        name: impl Into<String>,
        auth: PeerAuth,
        options: PeerOptions,
        now: f64,
    ) -> AssociationId {
        let name = name.into();
        let requires_auth = !matches!(auth, PeerAuth::Insecure);
        let key_id = match &auth {
            PeerAuth::Key(key) => Some(key.id()),
            PeerAuth::Insecure => None,
        };
        let engine_id = self
            .engine
            .add_peer(name.clone(), ReferenceId(*b"INIT"), requires_auth);
        let id = AssociationId(self.associations.len());
        self.requests.push_back(Request::Resolve(id));
        let options = PeerOptions {
            precision: self.config.precision,
            ..options
        };
        self.associations.push(Association {
            name,
            engine_id,
            address: None,
            kind: Kind::Peer {
                peer: Box::new(Peer::new(auth, options, now)),
                key_id,
                looped: false,
                retry_resolve_at: None,
            },
            reported: (false, false),
        });
        id
    }

    /// Adds a reference clock (`[[refclock]]`) named `name` (`refclock GPS shm:2`):
    /// its samples come in through [`Coordinator::handle_refclock_sample`],
    /// and are combined and given to the engine once per poll.
    pub fn add_refclock(
        &mut self,
        name: impl Into<String>,
        options: RefclockOptions,
        now: f64,
    ) -> AssociationId {
        let name = name.into();
        // A noselect refclock never gives the engine a sample: registered as a backup
        // (as peers are), so the start-up majority does not wait for it.
        let engine_id = if options.noselect {
            self.engine
                .add_peer(name.clone(), ReferenceId(options.refid), false)
        } else {
            self.engine
                .add_reference_clock(name.clone(), ReferenceId(options.refid))
        };
        let id = AssociationId(self.associations.len());
        self.associations.push(Association {
            name,
            engine_id,
            address: None,
            kind: Kind::Refclock(Box::new(RefclockState::new(options, now))),
            reported: (false, false),
        });
        id
    }

    /// A reading of reference clock `id` (see `crate::refclock::sample_from`), taken
    /// while the clock still had `pending_slew` seconds of an earlier correction to
    /// apply. A reading that starts a new poll interval first closes the one before:
    /// its samples, combined, go to the engine.
    pub fn handle_refclock_sample(
        &mut self,
        id: AssociationId,
        sample: &RefclockSample,
        now: f64,
        pending_slew: f64,
    ) {
        let Some(Kind::Refclock(refclock)) = self.associations.get_mut(id.0).map(|a| &mut a.kind)
        else {
            return;
        };
        if !pending_slew.is_finite() {
            refclock.count_drop(RefclockDrop::NotFinite);
            return;
        }
        if refclock.is_due(now) {
            self.close_refclock(id, now);
        }
        if let Some(Kind::Refclock(refclock)) = self.associations.get_mut(id.0).map(|a| &mut a.kind)
        {
            refclock.add(sample, pending_slew, now);
        }
    }

    /// Reference clock `id`'s newest usable reading (offset, slew taken out, and when):
    /// what a PPS refclock locked to it takes to name each pulse's second.
    pub fn refclock_estimate(
        &self,
        id: AssociationId,
    ) -> Option<crate::refclock::pps::LockEstimate> {
        match self.associations.get(id.0).map(|a| &a.kind) {
            Some(Kind::Refclock(refclock)) => refclock.latest(),
            _ => None,
        }
    }

    /// A reading of reference clock `id` that was not a sample (see
    /// [`RefclockDrop`]): counted, and the last reason kept for reports.
    pub fn handle_refclock_drop(&mut self, id: AssociationId, why: RefclockDrop) {
        if let Some(Kind::Refclock(refclock)) = self.associations.get_mut(id.0).map(|a| &mut a.kind)
        {
            refclock.count_drop(why);
        }
    }

    /// Ends a reference clock's poll interval: its combined sample (if any) goes to the
    /// engine as a stratum-0 measurement, and its reachability is updated.
    fn close_refclock(&mut self, id: AssociationId, now: f64) {
        let Some(a) = self.associations.get_mut(id.0) else {
            return;
        };
        let Kind::Refclock(refclock) = &mut a.kind else {
            return;
        };
        let closed = refclock.close(now);
        let options = refclock.options;
        let usable = a.usable();
        self.engine.handle_reachability(a.engine_id, usable);
        let Some(closed) = closed else {
            return;
        };
        if options.noselect {
            return;
        }
        self.engine
            .set_measurement_noise(a.engine_id, closed.combined.error);
        // The precision's log2, as packets state it (1e-6 s is -20).
        let precision = options.precision.log2().round().clamp(-30.0, 0.0) as i8;
        let sample = Sample {
            // Back to "as measured": the engine takes the pending slew out itself.
            offset: closed.combined.offset + closed.pending_slew,
            delay: options.delay,
            leap: closed.combined.leap,
            version: 4,
            stratum: 0,
            poll: options.poll,
            precision,
            reference_id: ReferenceId(options.refid),
            root_delay: 0.0,
            root_dispersion: closed.combined.dispersion,
            received: closed.local,
            // Trusted by configuration: the engine does not ask a refclock for proof.
            authenticated: Authenticated::No,
        };
        self.take_sample(id, &sample, closed.at.min(now), now, closed.pending_slew);
    }

    /// The configured name of an association (`host:port`, `peer host:port`).
    pub fn name(&self, id: AssociationId) -> &str {
        self.associations.get(id.0).map_or("?", |a| a.name.as_str())
    }

    /// Whether the association is a peer.
    pub fn is_peer(&self, id: AssociationId) -> bool {
        self.associations
            .get(id.0)
            .is_some_and(|a| matches!(a.kind, Kind::Peer { .. }))
    }

    /// Time has reached `now` (local clock `local`): polls what is due, and checks the
    /// engine's holdover once a [`HOUSEKEEPING`] interval. Calling it early is harmless.
    /// The `[leap] file` to consult (a reload may swap it): its leap seconds are
    /// announced whatever the sources say.
    pub fn set_leap_file(&mut self, file: Option<Arc<LeapFile>>) {
        self.leap_file = file;
    }

    pub fn handle_timeout(&mut self, now: f64, local: NtpTimestamp) {
        self.pass_leap(now, local);
        let file_leap = self
            .leap_file
            .as_ref()
            .and_then(|f| f.announcement_at(local));
        self.engine.set_file_leap(file_leap);
        self.engine
            .set_leap_month(crate::sync::leap_file::in_leap_month(local));
        // What we say about our clock, for peers' packets: worked out only when one is due
        // (this runs at every wake of the driver).
        let peer_due = self.associations.iter().any(|a| {
            matches!(a.kind, Kind::Peer { .. }) && a.poll_timeout().is_some_and(|t| t <= now)
        });
        let ours = peer_due.then(|| self.sync_state(now, local));
        for index in 0..self.associations.len() {
            let Some(a) = self.associations.get_mut(index) else {
                continue;
            };
            if a.poll_timeout().is_none_or(|t| t > now) {
                continue;
            }
            let id = AssociationId(index);
            if matches!(a.kind, Kind::Refclock(_)) {
                // No sample came to close the interval on time: close it here, with
                // the slew that was pending at its newest sample.
                self.close_refclock(id, now);
                continue;
            }
            let address = a.address;
            if a.needs_address() {
                match &mut a.kind {
                    Kind::Source {
                        resolving,
                        retry_resolve_at,
                        ..
                    } => {
                        *resolving = true;
                        *retry_resolve_at = None;
                    }
                    Kind::Peer {
                        retry_resolve_at, ..
                    } => *retry_resolve_at = None,
                    Kind::Refclock(_) => {}
                }
                self.requests.push_back(Request::Resolve(id));
                continue;
            }
            let action = match &mut a.kind {
                Kind::Source { source, .. } => {
                    source.handle_timeout(now, local, &mut self.rng, &mut self.buffer)
                }
                Kind::Peer { peer, .. } => match &ours {
                    Some(ours) => {
                        peer.handle_timeout(now, local, ours, &mut self.rng, &mut self.buffer)
                    }
                    None => None,
                },
                Kind::Refclock(_) => None,
            };
            match (action, address, &mut a.kind) {
                (Some(Action::Transmit), Some(destination), kind) => {
                    let via = match kind {
                        Kind::Peer { .. } => Via::ServerSocket,
                        _ => Via::FreshSocket,
                    };
                    self.transmits.push_back(Transmit {
                        association: id,
                        destination,
                        via,
                        bytes: self.buffer.clone(),
                    });
                }
                (Some(Action::KeyExchange), _, _) => {
                    self.requests.push_back(Request::KeyExchange(id));
                }
                _ => {}
            }
            let usable = a.usable();
            self.engine.handle_reachability(a.engine_id, usable);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.engine.handle_timeout(now);
            self.report_changes(now);
        }
    }

    /// Tells the engine when the leap second it announces is reached: the midnight
    /// ending the day it was announced on (30 June or 31 December only).
    fn pass_leap(&mut self, now: f64, local: NtpTimestamp) {
        let seconds = crate::sync::leap_file::ntp_seconds(local);
        if let Some((at, leap)) = self.leap_due
            && seconds >= at
        {
            self.leap_due = None;
            self.leap_passed = Some(at);
            self.engine.handle_leap(leap, now);
        }
        // A clock set back over the midnight (a step) meets the same announcement
        // again: that midnight is never booked twice.
        let next = || {
            crate::sync::leap_file::leap_midnight_after(local)
                .filter(|&at| Some(at) != self.leap_passed)
        };
        self.leap_due = match self.engine.announced_leap() {
            leap @ (Leap::AddSecond | Leap::DeleteSecond) => {
                self.leap_due.or_else(|| Some((next()?, leap)))
            }
            Leap::NoWarning | Leap::Unsynchronized => None,
        };
    }

    /// A datagram for `id` arrived at local time `received` (`now` in the caller's
    /// seconds), while the clock still had `pending_slew` seconds of an earlier
    /// correction to apply. For a source: anything that arrived on the socket of its
    /// request; for a peer: a symmetric-mode packet from its address.
    pub fn handle_datagram(
        &mut self,
        id: AssociationId,
        bytes: &[u8],
        received: NtpTimestamp,
        now: f64,
        pending_slew: f64,
    ) {
        let Some(a) = self.associations.get_mut(id.0) else {
            return;
        };
        let sample = match &mut a.kind {
            Kind::Source { source, books, .. } => {
                match source.handle_response(bytes, received, now) {
                    SourceEvent::Sample(mut sample) => {
                        let these = Books {
                            corrections: self.engine.corrections(),
                            pending_slew,
                            at: now,
                        };
                        // An interleaved sample measures the exchange before: it is given
                        // as of then, without the corrections commanded since (they are in
                        // the engine's books but not in that exchange's clock readings).
                        let at = match *books {
                            Some(then) if source.last_sample_interleaved() => {
                                sample.offset += then.corrections - these.corrections
                                    + these.pending_slew
                                    - then.pending_slew;
                                then.at
                            }
                            _ => now,
                        };
                        *books = Some(these);
                        Some((sample, at))
                    }
                    SourceEvent::Kiss(code) => {
                        push_event(
                            &mut self.events,
                            &mut self.events_dropped,
                            Event::new(id, &a.name, EventKind::Kiss(code)),
                        );
                        None
                    }
                    SourceEvent::Rejected(why) => {
                        push_event(
                            &mut self.events,
                            &mut self.events_dropped,
                            Event::new(id, &a.name, EventKind::Dropped(why.to_string())),
                        );
                        None
                    }
                }
            }
            Kind::Peer { peer, looped, .. } => match peer.handle_packet(bytes, received, now) {
                PeerEvent::Sample(sample) => {
                    *looped = false;
                    Some((sample, now))
                }
                PeerEvent::Loop(reference_id) => {
                    if !*looped {
                        push_event(
                            &mut self.events,
                            &mut self.events_dropped,
                            Event::new(id, &a.name, EventKind::Loop(reference_id)),
                        );
                    }
                    *looped = true;
                    None
                }
                PeerEvent::Accepted => None,
                PeerEvent::Rejected(why) => {
                    push_event(
                        &mut self.events,
                        &mut self.events_dropped,
                        Event::new(id, &a.name, EventKind::Dropped(why.to_string())),
                    );
                    None
                }
            },
            Kind::Refclock(_) => return,
        };
        let usable = a.usable();
        let engine_id = a.engine_id;
        self.engine.handle_reachability(engine_id, usable);
        if let Some((sample, at)) = sample {
            self.take_sample(id, &sample, at, now, pending_slew);
        }
    }

    /// The answer to [`Request::Resolve`]. A name that did not resolve is asked for
    /// again after [`RESOLVE_RETRY`]; a source's first request goes out as soon as its
    /// address is known.
    pub fn handle_resolved(
        &mut self,
        id: AssociationId,
        result: Result<Resolved, String>,
        now: f64,
    ) {
        let Some(a) = self.associations.get_mut(id.0) else {
            return;
        };
        let kind = match (result, &mut a.kind) {
            (_, Kind::Refclock(_)) => return,
            (Ok(resolved), kind) => {
                a.address = Some(resolved.address);
                self.engine
                    .set_reference_id(a.engine_id, reference_id(resolved.address));
                if let Some(ours) = resolved.local_ip {
                    let ours = reference_id(SocketAddr::new(ours, 0));
                    self.engine.set_own_reference_id(a.engine_id, ours);
                }
                match kind {
                    Kind::Source { resolving, .. } => *resolving = false,
                    Kind::Peer { peer, .. } => {
                        if let Some(ours) = resolved.local_ip {
                            peer.add_own_reference_id(reference_id(SocketAddr::new(ours, 0)));
                        }
                    }
                    Kind::Refclock(_) => {}
                }
                EventKind::Resolved(resolved.address)
            }
            (
                Err(error),
                Kind::Source {
                    resolving,
                    retry_resolve_at,
                    ..
                },
            ) => {
                *resolving = false;
                *retry_resolve_at = Some(now + RESOLVE_RETRY);
                EventKind::ResolveFailed {
                    error,
                    retry: Some(RESOLVE_RETRY),
                }
            }
            (
                Err(error),
                Kind::Peer {
                    retry_resolve_at, ..
                },
            ) => {
                *retry_resolve_at = Some(now + RESOLVE_RETRY);
                EventKind::ResolveFailed {
                    error,
                    retry: Some(RESOLVE_RETRY),
                }
            }
        };
        push_event(
            &mut self.events,
            &mut self.events_dropped,
            Event::new(id, &a.name, kind),
        );
    }

    /// Our own address as source `id` (an NTS source, whose address comes from its key
    /// exchange) sees us: for loop detection and orphan mode, as
    /// [`Resolved::local_ip`] is for the others.
    pub fn set_own_address(&mut self, id: AssociationId, ours: IpAddr) {
        if let Some(a) = self.associations.get(id.0) {
            let ours = reference_id(SocketAddr::new(ours, 0));
            self.engine.set_own_reference_id(a.engine_id, ours);
        }
    }

    /// The answer to [`Request::KeyExchange`]: a session and the NTP server's address,
    /// or why it failed.
    pub fn handle_key_exchange(
        &mut self,
        id: AssociationId,
        result: Result<(NtsSession, SocketAddr), String>,
        now: f64,
    ) {
        let Some(a) = self.associations.get_mut(id.0) else {
            return;
        };
        let Kind::Source {
            source, nts_record, ..
        } = &mut a.kind
        else {
            return;
        };
        let kind = match result {
            Ok((session, address)) => {
                nts_record.aead = Some(session.algorithm().name());
                nts_record.last = Some((now, None));
                a.address = Some(address);
                self.engine
                    .set_reference_id(a.engine_id, reference_id(address));
                source.handle_key_exchange(Ok(session), now);
                EventKind::KeyExchanged(address)
            }
            Err(error) => {
                nts_record.last = Some((now, Some(error.clone())));
                source.handle_key_exchange(Err(error.clone()), now);
                EventKind::KeyExchangeFailed(error)
            }
        };
        let usable = a.usable();
        self.engine.handle_reachability(a.engine_id, usable);
        push_event(
            &mut self.events,
            &mut self.events_dropped,
            Event::new(id, &a.name, kind),
        );
    }

    /// The clock refused `command`: the engine no longer counts on it.
    pub fn handle_clock_refused(&mut self, command: &ClockCommand) {
        self.engine.handle_clock_refused(command);
    }

    /// Keyed sources and peers take their key's new secret from `keys` (a reload of
    /// the key file); an id missing from `keys` keeps its old one. Returns how many
    /// changed hands.
    pub fn replace_keys(&mut self, keys: &KeyStore) -> usize {
        let mut replaced = 0;
        for a in &mut self.associations {
            for key in keys.iter() {
                let taken = match &mut a.kind {
                    Kind::Source { source, .. } => source.replace_key(key),
                    Kind::Peer { peer, .. } => peer.replace_key(key),
                    Kind::Refclock(_) => false,
                };
                replaced += usize::from(taken);
            }
        }
        replaced
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    pub fn poll_command(&mut self) -> Option<ClockCommand> {
        self.engine.poll_command()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> f64 {
        self.associations
            .iter()
            .filter_map(Association::poll_timeout)
            .fold(self.next_housekeeping, f64::min)
    }

    /// What the server role answers with: the engine's state, or the `[local]` clock
    /// when that stands in for it (see [`LocalReference::replaces`]).
    pub fn sync_state(&self, now: f64, local: NtpTimestamp) -> SyncState {
        let engine = self.engine.sync_state(now, local, self.config.precision);
        match self.config.local {
            Some(l) if l.replaces(&engine, now - self.started) => {
                SyncState::local_reference(l.stratum, local, self.config.precision)
            }
            _ => engine,
        }
    }

    pub fn is_synchronized(&self) -> bool {
        self.engine.is_synchronized()
    }

    /// The frequency correction in force, ppm (for the drift file).
    pub fn frequency_ppm(&self) -> f64 {
        self.engine.frequency_ppm()
    }

    /// The system poll interval, log2 seconds.
    pub fn poll_interval(&self) -> i8 {
        self.engine.poll_interval()
    }

    /// Events dropped because the driver did not drain them.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// One row per source and peer, in the order they were added.
    pub fn report(&self, now: f64) -> Vec<AssociationReport> {
        self.associations
            .iter()
            .zip(self.engine.report(now))
            .enumerate()
            .map(|(i, (a, engine))| {
                let (peer, reach, poll, nts_cookies) = match &a.kind {
                    Kind::Source { source, .. } => {
                        (false, source.reach(), source.poll(), source.nts_cookies())
                    }
                    Kind::Peer { peer, .. } => (true, peer.reach(), peer.poll(), None),
                    Kind::Refclock(refclock) => {
                        (false, refclock.reach(), refclock.options.poll, None)
                    }
                };
                let auth = match &a.kind {
                    Kind::Source {
                        nts: true,
                        nts_record,
                        ..
                    } => AuthReport::Nts {
                        aead: nts_record.aead,
                        last_key_exchange: nts_record.last.as_ref().map(|(at, error)| {
                            KeyExchangeReport {
                                age: (now - at).max(0.0),
                                error: error.clone(),
                            }
                        }),
                    },
                    Kind::Source {
                        key_id: Some(id), ..
                    }
                    | Kind::Peer {
                        key_id: Some(id), ..
                    } => AuthReport::Key { id: *id },
                    Kind::Refclock(_) => AuthReport::Configured,
                    _ => AuthReport::None,
                };
                let drops = match &a.kind {
                    Kind::Refclock(refclock) => Some((refclock.drops, refclock.last_drop)),
                    _ => None,
                };
                AssociationReport {
                    association: AssociationId(i),
                    name: a.name.clone(),
                    peer,
                    address: a.address,
                    reach,
                    poll,
                    nts_cookies,
                    auth,
                    engine,
                    drops,
                }
            })
            .collect()
    }

    /// Gives a measurement to the engine, and the engine's poll interval to everyone.
    /// Gives the engine `sample`, a measurement of the clock as it was at
    /// `measured_at` (`now` but for interleaved samples).
    fn take_sample(
        &mut self,
        id: AssociationId,
        sample: &Sample,
        measured_at: f64,
        now: f64,
        pending_slew: f64,
    ) {
        let Some(a) = self.associations.get(id.0) else {
            return;
        };
        let ignored = self
            .engine
            .handle_sample_of(a.engine_id, sample, measured_at, now, pending_slew)
            .err();
        push_event(
            &mut self.events,
            &mut self.events_dropped,
            Event::new(
                id,
                &a.name,
                EventKind::Sample {
                    offset: sample.offset,
                    delay: sample.delay,
                    ignored,
                },
            ),
        );
        let poll = self.engine.poll_interval();
        for a in &mut self.associations {
            match &mut a.kind {
                Kind::Source { source, .. } => source.set_system_poll(poll),
                Kind::Peer { peer, .. } => peer.set_system_poll(poll),
                Kind::Refclock(_) => {}
            }
        }
    }

    /// An event for each source or peer that became reachable or unreachable,
    /// selected or not.
    fn report_changes(&mut self, now: f64) {
        let reports = self.engine.report(now);
        for (i, (a, report)) in self.associations.iter_mut().zip(reports).enumerate() {
            let state = (report.reachable, report.selected);
            if state != a.reported {
                a.reported = state;
                push_event(
                    &mut self.events,
                    &mut self.events_dropped,
                    Event::new(
                        AssociationId(i),
                        &a.name,
                        EventKind::StateChanged {
                            reachable: report.reachable,
                            selected: report.selected,
                        },
                    ),
                );
            }
        }
    }
}

fn push_event(events: &mut VecDeque<Event>, dropped: &mut u64, event: Event) {
    if events.len() >= EVENT_QUEUE {
        events.pop_front();
        *dropped += 1;
    }
    events.push_back(event);
}

#[cfg(test)]
mod tests;
