//! One symmetric association (RFC 5905 modes 1 and 2) with a configured peer, as a
//! sans-IO state machine: both ends send on their own schedule, and each packet both
//! answers the other's last one and asks for an answer.
//!
//! A packet is checked in this order, and nothing changes before the last check:
//! it parses; it is mode 1 or 2 of versions 1 to 4; transmit ≠ 0; its MAC verifies
//! under exactly the configured key id (a crypto-NAK is not a MAC); it is not one of
//! our own packets sent back to us (both ends sign with one key, so a reflected packet
//! verifies: its transmit must not be one of our last [`REMEMBERED`]); it is not a copy
//! of one of the last [`REMEMBERED`] packets accepted; and it is *fresh*: later than
//! every packet accepted, or the answer to one of our own packets still unanswered.
//! Only a later packet moves what we echo back, so a replayed or delayed old packet
//! cannot (the DoS of ntpd's CVE-2015-7704/7705 class), and an unauthenticated one
//! cannot touch anything (CVE-2015-1799, CVE-2016-1548).
//!
//! A measurement needs an answer to one of our last [`OUTSTANDING`] packets: origin ==
//! its transmit field, all 64 bits, receive ≠ 0. Each of our packets is answered at
//! most once. A zero origin (the peer's first packet, or one after a restart) only
//! starts the association.
//!
//! Each side answers the other's poll promptly ([`PROMPT_SPACING`] apart at most), so
//! that the peer's measurement does not include a long wait at our end, during which
//! both clocks drift and get slewed. A peer that holds its answer (chrony waits up to a
//! poll interval) still gives samples; the wait adds [`HOLD_DISPERSION_RATE`] of
//! dispersion per second, so prompt samples win in the filter.
//!
//! Loop avoidance: a sample whose reference id names one of our own addresses comes
//! from a peer synchronized to us; it keeps the peer reachable but is never used.

use rand::CryptoRng;

use crate::auth::{MacError, SymmetricKey, mac};
use crate::proto::client::{Authenticated, Sample};
use crate::proto::polling::{Action, Reach, poll_exponent};
use crate::proto::server::SyncState;
use crate::wire::{
    Header, Mode, NtpShort, NtpTimestamp, Packet, PacketError, ReferenceId, Trailer,
};

/// Our packets that may still be answered: the latest and the one before (a poll and
/// a prompt reply can cross the peer's packets).
pub const OUTSTANDING: usize = 2;
/// Transmit timestamps remembered, of our packets (reflections) and of the peer's
/// (duplicates).
pub const REMEMBERED: usize = 8;
/// Least time between our packets, seconds: prompt replies never come faster.
pub const PROMPT_SPACING: f64 = 1.0;
/// A packet held longer than this (its transmit minus receive, seconds) was not a
/// prompt answer, so it gets one from us.
pub const PROMPT_HOLD: f64 = 0.5;
/// Dispersion per second of hold time: RFC 5905's PHI, the frequency tolerance.
pub const HOLD_DISPERSION_RATE: f64 = 15e-6;

/// How the peer's packets must authenticate.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// Explicitly configured `insecure = true`.
    Insecure,
    /// Both ends use this key id and secret.
    Key(SymmetricKey),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerOptions {
    pub min_poll: i8,
    pub max_poll: i8,
    /// Our clock's precision (log2 s): transmit timestamps get random bits below it.
    pub precision: i8,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            min_poll: 6,
            max_poll: 10,
            precision: -20,
        }
    }
}

/// A packet that was not accepted. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerReject {
    #[error("malformed: {0}")]
    Malformed(PacketError),
    #[error("not a symmetric-mode packet ({0:?})")]
    WrongMode(Mode),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("transmit timestamp is zero")]
    ZeroTransmit,
    #[error("authentication failed: {0}")]
    Authentication(MacError),
    #[error("one of our own packets, sent back")]
    Reflected,
    #[error("duplicate of an accepted packet")]
    Duplicate,
    #[error("older than the last accepted packet and answers nothing of ours (a replay)")]
    Stale,
}

/// What a packet from the peer amounted to.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A measurement for the sync engine.
    Sample(Sample),
    /// Authentic and fresh, but no measurement: the association starting, or packets
    /// that crossed ours. The peer counts as reachable.
    Accepted,
    /// An authentic measurement from a peer synchronized to us (its reference id is
    /// ours): never used, or the two would steer each other.
    Loop(ReferenceId),
    Rejected(PeerReject),
}

/// One of our packets, until answered.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// What we put in the transmit field; the answer's origin must match.
    transmit_field: NtpTimestamp,
    /// Our clock when it left.
    sent_at: NtpTimestamp,
}

/// What our next packet echoes: the peer's last transmit and when we received it.
#[derive(Debug, Clone, Copy)]
struct Echo {
    peer_transmit: NtpTimestamp,
    received: NtpTimestamp,
}

#[derive(Debug)]
pub struct Peer {
    auth: PeerAuth,
    options: PeerOptions,
    /// Reference ids that mean "synchronized to us" (our addresses as the peer sees them).
    own_ids: Vec<ReferenceId>,
    /// Newest first.
    outstanding: [Option<Sent>; OUTSTANDING],
    echo: Option<Echo>,
    /// Transmit fields of our last packets and of the peer's last accepted ones,
    /// newest first.
    sent: [Option<NtpTimestamp>; REMEMBERED],
    accepted: [Option<NtpTimestamp>; REMEMBERED],
    next_poll: f64,
    /// When a prompt reply is due, if one is.
    reply_due: Option<f64>,
    last_sent: Option<f64>,
    system_poll: i8,
    reach: Reach,
}

impl Peer {
    pub fn new(auth: PeerAuth, options: PeerOptions, now: f64) -> Self {
        Self {
            auth,
            options,
            own_ids: Vec::new(),
            outstanding: [None; OUTSTANDING],
            echo: None,
            sent: [None; REMEMBERED],
            accepted: [None; REMEMBERED],
            next_poll: now,
            reply_due: None,
            last_sent: None,
            system_poll: options.min_poll,
            reach: Reach::default(),
        }
    }

    /// Adds a reference id that names us (the address the peer sends to).
    pub fn add_own_reference_id(&mut self, id: ReferenceId) {
        if !self.own_ids.contains(&id) {
            self.own_ids.push(id);
        }
    }

    /// The poll interval in force (log2 seconds).
    /// Uses `key` from now on if this peer is keyed under its id (a reload).
    pub fn replace_key(&mut self, key: &SymmetricKey) -> bool {
        match &mut self.auth {
            PeerAuth::Key(old) if old.id() == key.id() => {
                *old = key.clone();
                true
            }
            PeerAuth::Key(_) | PeerAuth::Insecure => false,
        }
    }

    pub fn poll(&self) -> i8 {
        poll_exponent(
            self.options.min_poll,
            self.options.max_poll,
            self.system_poll,
            0,
            &self.reach,
        )
    }

    /// The engine's wish for the poll interval.
    pub fn set_system_poll(&mut self, poll: i8) {
        self.system_poll = poll;
    }

    /// Whether any of the last 8 polls was followed by an authentic packet.
    pub fn is_reachable(&self) -> bool {
        self.reach.any()
    }

    /// The reach register (newest poll in the low bit).
    pub fn reach(&self) -> u8 {
        self.reach.register()
    }

    /// When the driver must next call [`Peer::handle_timeout`] (always `Some`: a peer
    /// never stops; the type is the one sources use).
    pub fn poll_timeout(&self) -> Option<f64> {
        Some(
            self.reply_due
                .map_or(self.next_poll, |t| t.min(self.next_poll)),
        )
    }

    /// Time has reached `now` (local clock `local`): if a packet is due, writes it into
    /// `out` (cleared first) and returns [`Action::Transmit`]. `state` is what we say
    /// about our clock.
    pub fn handle_timeout(
        &mut self,
        now: f64,
        local: NtpTimestamp,
        state: &SyncState,
        rng: &mut (impl CryptoRng + ?Sized),
        out: &mut Vec<u8>,
    ) -> Option<Action> {
        if now >= self.next_poll {
            // The register shifts at every poll; a packet from the peer sets the low bit.
            self.reach.on_poll();
            self.next_poll = now + 2f64.powi(i32::from(self.poll()));
        } else if !self.reply_due.is_some_and(|due| now >= due) {
            return None;
        }
        self.reply_due = None;
        self.last_sent = Some(now);
        self.write_packet(local, state, rng, out);
        Some(Action::Transmit)
    }

    fn write_packet(
        &mut self,
        local: NtpTimestamp,
        state: &SyncState,
        rng: &mut (impl CryptoRng + ?Sized),
        out: &mut Vec<u8>,
    ) {
        // Random bits below our precision: unique, and nothing finer than the clock.
        let fuzz_bits = u32::try_from(32 + i32::from(self.options.precision))
            .unwrap_or(0)
            .min(32);
        let mask = (1u64 << fuzz_bits) - 1;
        let mut transmit_field =
            NtpTimestamp::from_bits(local.to_bits() & !mask | rng.next_u64() & mask);
        if transmit_field.is_zero()
            || self
                .outstanding
                .iter()
                .flatten()
                .any(|s| s.transmit_field == transmit_field)
        {
            transmit_field = NtpTimestamp::from_bits(transmit_field.to_bits() ^ 1);
        }
        let echo = self.echo.unwrap_or(Echo {
            peer_transmit: NtpTimestamp::ZERO,
            received: NtpTimestamp::ZERO,
        });
        let header = Header {
            leap: state.leap,
            version: 4,
            mode: Mode::SymmetricActive,
            stratum: state.stratum,
            poll: self.poll(),
            precision: state.precision,
            root_delay: NtpShort::from_seconds(state.root_delay),
            root_dispersion: NtpShort::from_seconds(state.root_dispersion),
            reference_id: state.reference_id,
            reference_time: state.reference_time,
            origin_time: echo.peer_transmit,
            receive_time: echo.received,
            transmit_time: transmit_field,
        };
        out.clear();
        header.write(out);
        if let PeerAuth::Key(key) = &self.auth {
            mac::append_mac(key, out);
        }
        self.outstanding.rotate_right(1);
        self.outstanding[0] = Some(Sent {
            transmit_field,
            sent_at: local,
        });
        self.sent.rotate_right(1);
        self.sent[0] = Some(transmit_field);
    }

    /// A datagram from the peer's address arrived at local time `received` (`now` in
    /// the driver's seconds).
    pub fn handle_packet(&mut self, bytes: &[u8], received: NtpTimestamp, now: f64) -> PeerEvent {
        match self.check(bytes, received, now) {
            Ok(event) => event,
            Err(reject) => PeerEvent::Rejected(reject),
        }
    }

    fn check(
        &mut self,
        bytes: &[u8],
        received: NtpTimestamp,
        now: f64,
    ) -> Result<PeerEvent, PeerReject> {
        let packet = Packet::parse(bytes).map_err(PeerReject::Malformed)?;
        let h = &packet.header;
        if !matches!(h.mode, Mode::SymmetricActive | Mode::SymmetricPassive) {
            return Err(PeerReject::WrongMode(h.mode));
        }
        if !(1..=4).contains(&h.version) {
            return Err(PeerReject::UnsupportedVersion(h.version));
        }
        if h.transmit_time.is_zero() {
            return Err(PeerReject::ZeroTransmit);
        }
        let authenticated = match &self.auth {
            PeerAuth::Key(key) => {
                mac::check_packet(key, &packet, bytes).map_err(PeerReject::Authentication)?;
                Authenticated::Key(key.id())
            }
            PeerAuth::Insecure if packet.trailer == Some(Trailer::CryptoNak) => {
                return Err(PeerReject::Authentication(MacError::CryptoNak));
            }
            PeerAuth::Insecure => Authenticated::No,
        };
        if self.sent.contains(&Some(h.transmit_time)) {
            return Err(PeerReject::Reflected);
        }
        if self.accepted.contains(&Some(h.transmit_time)) {
            return Err(PeerReject::Duplicate);
        }
        let answered = self
            .outstanding
            .iter()
            .position(|s| s.is_some_and(|s| s.transmit_field == h.origin_time));
        let later =
            self.accepted[0].is_none_or(|newest| h.transmit_time.seconds_since(newest) > 0.0);
        if answered.is_none() && !later {
            return Err(PeerReject::Stale);
        }

        // Accepted: from here on the association changes.
        self.accepted.rotate_right(1);
        self.accepted[0] = Some(h.transmit_time);
        if later {
            self.echo = Some(Echo {
                peer_transmit: h.transmit_time,
                received,
            });
        } else {
            // An older answer measures, but the newest stays first: it is what we echo
            // and what freshness is judged by.
            self.accepted.swap(0, 1);
        }
        self.reach.on_answer();
        let hold = h.transmit_time.seconds_since(h.receive_time);
        let prompt_answer = answered.is_some() && hold.abs() < PROMPT_HOLD;
        if later && h.mode == Mode::SymmetricActive && !prompt_answer {
            let earliest = self.last_sent.map_or(now, |t| t + PROMPT_SPACING);
            self.reply_due = Some(now.max(earliest));
        }
        let sent = match answered.and_then(|i| self.outstanding.get_mut(i)) {
            Some(slot) if !h.receive_time.is_zero() => slot.take(),
            _ => None,
        };
        let Some(sent) = sent else {
            return Ok(PeerEvent::Accepted);
        };
        let mut sample = Sample::from_exchange(h, sent.sent_at, received, authenticated);
        sample.root_dispersion += hold.abs() * HOLD_DISPERSION_RATE;
        if h.stratum > 1 && self.own_ids.contains(&h.reference_id) {
            return Ok(PeerEvent::Loop(h.reference_id));
        }
        Ok(PeerEvent::Sample(sample))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Leap;

    const START: NtpTimestamp = NtpTimestamp::from_bits(0xe000_0000_0000_0000);

    use crate::proto::test_keys as keys;

    fn keyed(id: u32) -> PeerAuth {
        PeerAuth::Key(keys().get(id).cloned().unwrap())
    }

    fn synced(stratum: u8, reference_id: [u8; 4]) -> SyncState {
        SyncState {
            reference_id: ReferenceId(reference_id),
            ..SyncState::local_reference(stratum, START, -20)
        }
    }

    /// One exchange by hand: A polls, B answers promptly. Returns (A, B, A's packet,
    /// B's answer).
    fn exchange(auth: PeerAuth) -> (Peer, Peer, Vec<u8>, Vec<u8>) {
        let mut a = Peer::new(auth.clone(), PeerOptions::default(), 0.0);
        let mut b = Peer::new(auth, PeerOptions::default(), 100.0);
        let state = synced(2, *b"GPS\0");
        let mut poll = Vec::new();
        assert!(
            a.handle_timeout(0.0, START, &state, &mut rand::rng(), &mut poll)
                .is_some()
        );
        assert_eq!(
            b.handle_packet(&poll, START.add_seconds(0.01), 0.01),
            PeerEvent::Accepted
        );
        // A's packet was not an answer: B answers it at once.
        assert_eq!(b.poll_timeout().unwrap(), 0.01);
        let mut answer = Vec::new();
        assert!(
            b.handle_timeout(
                0.01,
                START.add_seconds(0.011),
                &state,
                &mut rand::rng(),
                &mut answer
            )
            .is_some()
        );
        (a, b, poll, answer)
    }

    /// The origin field of the next packet `peer` sends: what it echoes.
    fn next_origin(peer: &mut Peer, now: f64) -> NtpTimestamp {
        let mut out = Vec::new();
        let state = synced(2, *b"GPS\0");
        peer.next_poll = now;
        assert!(
            peer.handle_timeout(
                now,
                START.add_seconds(now),
                &state,
                &mut rand::rng(),
                &mut out
            )
            .is_some()
        );
        Header::parse(&out).unwrap().origin_time
    }

    /// ADVERSARIAL 20: a keyed peer drops anything not signed with its own key, and
    /// none of it changes the association: the genuine packet still measures.
    #[test]
    fn keyed_peer_drops_anything_not_signed_with_its_key() {
        let (mut a, _, _, good) = exchange(keyed(1));
        let plain = good[..48].to_vec();
        let mut nak = plain.clone();
        nak.extend_from_slice(&[0; 4]);
        let mut other_key = plain.clone();
        mac::append_mac(keys().get(2).unwrap(), &mut other_key);
        let mut wrong_digest = good.clone();
        *wrong_digest.last_mut().unwrap() ^= 1;
        let truncated = good[..good.len() - 1].to_vec();
        let auth = |e| PeerEvent::Rejected(PeerReject::Authentication(e));
        let cases = [
            (plain, auth(MacError::Missing)),
            (nak, auth(MacError::CryptoNak)),
            (
                other_key,
                auth(MacError::WrongKeyId {
                    got: 2,
                    expected: 1,
                }),
            ),
            (wrong_digest, auth(MacError::BadDigest)),
            (truncated, auth(MacError::BadDigest)),
        ];
        for (bad, why) in cases {
            assert_eq!(a.handle_packet(&bad, START.add_seconds(0.02), 0.02), why);
        }
        assert!(!a.is_reachable());
        let PeerEvent::Sample(s) = a.handle_packet(&good, START.add_seconds(0.02), 0.02) else {
            panic!("the genuine answer was not taken");
        };
        assert_eq!(s.authenticated, Authenticated::Key(1));
        assert!(a.is_reachable());
    }

    /// ADVERSARIAL 18: a zero transmit, a mode other than 1 or 2, a version outside
    /// 1..=4, and (for an insecure peer) a crypto-NAK are dropped, and change nothing.
    #[test]
    fn malformed_and_off_mode_packets_change_nothing() {
        let (mut a, _, _, good) = exchange(PeerAuth::Insecure);
        let tweak = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good[..48].to_vec();
            f(&mut p);
            p
        };
        let cases = [
            (tweak(&|p| p[40..48].fill(0)), PeerReject::ZeroTransmit),
            (
                tweak(&|p| p[0] = p[0] & !7 | 4),
                PeerReject::WrongMode(Mode::Server),
            ),
            (
                tweak(&|p| p[0] = p[0] & !0x38 | 5 << 3),
                PeerReject::UnsupportedVersion(5),
            ),
            (
                tweak(&|p| p.extend_from_slice(&[0; 4])),
                PeerReject::Authentication(MacError::CryptoNak),
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(
                a.handle_packet(&bad, START.add_seconds(0.02), 0.02),
                PeerEvent::Rejected(why)
            );
        }
        assert!(!a.is_reachable() && a.reply_due.is_none());
        assert_eq!(
            next_origin(&mut a, 1.0),
            NtpTimestamp::ZERO,
            "echo unchanged"
        );
    }

    /// ADVERSARIAL 20: an MD5-keyed packet with an extension field appended (or slipped
    /// in before the MAC) is dropped.
    #[test]
    fn md5_keyed_packet_with_extension_fields_is_dropped() {
        let (mut a, _, _, good) = exchange(keyed(3));
        let mut appended = good.clone();
        appended.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
        appended.extend_from_slice(&[0; 12]);
        assert!(matches!(
            a.handle_packet(&appended, START, 0.02),
            PeerEvent::Rejected(PeerReject::Malformed(_))
        ));
        let mut inserted = good[..48].to_vec();
        inserted.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
        inserted.extend_from_slice(&[0; 12]);
        inserted.extend_from_slice(&good[48..]);
        assert_eq!(
            a.handle_packet(&inserted, START, 0.02),
            PeerEvent::Rejected(PeerReject::Authentication(MacError::BadDigest))
        );
        assert!(matches!(
            a.handle_packet(&good, START.add_seconds(0.02), 0.02),
            PeerEvent::Sample(_)
        ));
    }

    /// The classic CVE class: a forged packet with the right origin and a fresh
    /// transmit time but no valid MAC must not change what we echo (nor be measured).
    #[test]
    fn no_state_changes_before_authentication() {
        let (mut a, _, _, good) = exchange(keyed(2));
        let mut forged = good.clone();
        forged[40..48].copy_from_slice(
            &(u64::from_be_bytes(good[40..48].try_into().unwrap()) + (10 << 32)).to_be_bytes(),
        );
        assert_eq!(
            a.handle_packet(&forged, START.add_seconds(0.02), 0.02),
            PeerEvent::Rejected(PeerReject::Authentication(MacError::BadDigest))
        );
        assert_eq!(
            next_origin(&mut a, 1.0),
            NtpTimestamp::ZERO,
            "echo unchanged"
        );
        assert!(a.reply_due.is_none());
        assert!(!a.is_reachable());
    }

    /// Replays: the same packet again is a duplicate; an older authentic packet that
    /// answers nothing of ours is stale. Neither changes what we echo.
    #[test]
    fn replayed_packets_change_nothing() {
        let (mut a, mut b, _, first) = exchange(keyed(1));
        assert!(matches!(
            a.handle_packet(&first, START.add_seconds(0.02), 0.02),
            PeerEvent::Sample(_)
        ));
        assert_eq!(
            a.handle_packet(&first, START.add_seconds(0.03), 0.03),
            PeerEvent::Rejected(PeerReject::Duplicate)
        );
        // B's next poll (a later packet) is accepted and echoed ...
        // B polls twice; the first poll is held back on the path, the second is
        // accepted and echoed ...
        let state = synced(2, *b"GPS\0");
        let (mut held, mut second) = (Vec::new(), Vec::new());
        b.next_poll = 64.0;
        assert!(
            b.handle_timeout(
                64.0,
                START.add_seconds(64.0),
                &state,
                &mut rand::rng(),
                &mut held
            )
            .is_some()
        );
        b.next_poll = 128.0;
        assert!(
            b.handle_timeout(
                128.0,
                START.add_seconds(128.0),
                &state,
                &mut rand::rng(),
                &mut second
            )
            .is_some()
        );
        assert!(!matches!(
            a.handle_packet(&second, START.add_seconds(128.01), 128.01),
            PeerEvent::Rejected(_)
        ));
        let second_transmit = Header::parse(&second).unwrap().transmit_time;
        // ... and the held one, released now, is older and answers nothing of ours.
        assert_eq!(
            a.handle_packet(&held, START.add_seconds(129.0), 129.0),
            PeerEvent::Rejected(PeerReject::Stale)
        );
        assert_eq!(
            a.handle_packet(&second, START.add_seconds(129.5), 129.5),
            PeerEvent::Rejected(PeerReject::Duplicate)
        );
        assert_eq!(next_origin(&mut a, 130.0), second_transmit);
    }

    /// Both ends sign with one key, so our own packets verify. Sent back to us (from the
    /// peer's address, by someone on the path) they are dropped, so they can neither
    /// make a dead peer look alive nor, answering each other, make us measure our own
    /// clock.
    #[test]
    fn our_own_packets_sent_back_are_dropped() {
        let (mut a, _, poll, good) = exchange(keyed(1));
        assert_eq!(
            a.handle_packet(&poll, START.add_seconds(0.02), 0.02),
            PeerEvent::Rejected(PeerReject::Reflected)
        );
        assert!(!a.is_reachable() && a.reply_due.is_none());
        // Once the genuine answer is in, A answers B's packet; that answer, sent back,
        // names A's outstanding poll nowhere but its transmit is A's own: dropped.
        assert!(matches!(
            a.handle_packet(&good, START.add_seconds(0.02), 0.02),
            PeerEvent::Sample(_)
        ));
        let state = synced(2, *b"GPS\0");
        let mut reply = Vec::new();
        a.next_poll = 1.0;
        assert!(
            a.handle_timeout(
                1.0,
                START.add_seconds(1.0),
                &state,
                &mut rand::rng(),
                &mut reply
            )
            .is_some()
        );
        assert_eq!(
            a.handle_packet(&reply, START.add_seconds(1.01), 1.01),
            PeerEvent::Rejected(PeerReject::Reflected)
        );
    }

    /// Answers delivered out of order both measure, but the older one does not move
    /// what we echo, and neither can be replayed afterwards.
    #[test]
    fn answers_out_of_order_measure_once_and_do_not_move_the_echo() {
        let state = synced(2, *b"GPS\0");
        let mut a = Peer::new(keyed(1), PeerOptions::default(), 0.0);
        let mut b = Peer::new(keyed(1), PeerOptions::default(), 1000.0);
        let (mut x, mut y, mut p1, mut p2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        assert!(
            a.handle_timeout(0.0, START, &state, &mut rand::rng(), &mut x)
                .is_some()
        );
        a.next_poll = 5.0;
        assert!(
            a.handle_timeout(
                5.0,
                START.add_seconds(5.0),
                &state,
                &mut rand::rng(),
                &mut y
            )
            .is_some()
        );
        b.handle_packet(&x, START.add_seconds(0.01), 0.01);
        assert!(
            b.handle_timeout(
                0.01,
                START.add_seconds(0.01),
                &state,
                &mut rand::rng(),
                &mut p1
            )
            .is_some()
        );
        b.handle_packet(&y, START.add_seconds(5.01), 5.01);
        assert!(
            b.handle_timeout(
                5.01,
                START.add_seconds(5.01),
                &state,
                &mut rand::rng(),
                &mut p2
            )
            .is_some()
        );
        assert!(matches!(
            a.handle_packet(&p2, START.add_seconds(5.02), 5.02),
            PeerEvent::Sample(_)
        ));
        assert!(matches!(
            a.handle_packet(&p1, START.add_seconds(5.03), 5.03),
            PeerEvent::Sample(_)
        ));
        for replay in [&p1, &p2] {
            assert_eq!(
                a.handle_packet(replay, START.add_seconds(6.0), 6.0),
                PeerEvent::Rejected(PeerReject::Duplicate)
            );
        }
        assert_eq!(
            next_origin(&mut a, 7.0),
            Header::parse(&p2).unwrap().transmit_time
        );
    }

    /// Origin games: a zero origin, an origin we never sent and an origin already
    /// answered start or continue the association but never measure.
    #[test]
    fn only_an_answer_to_an_unanswered_packet_of_ours_measures() {
        let (mut a, _, poll, good) = exchange(keyed(1));
        let key = keys().get(1).cloned().unwrap();
        let resign = |origin: u64, transmit_bump: u64| {
            let mut p = good[..48].to_vec();
            p[24..32].copy_from_slice(&origin.to_be_bytes());
            let t = u64::from_be_bytes(p[40..48].try_into().unwrap()) + transmit_bump;
            p[40..48].copy_from_slice(&t.to_be_bytes());
            mac::append_mac(&key, &mut p);
            p
        };
        let our = u64::from_be_bytes(poll[40..48].try_into().unwrap());
        assert_eq!(
            a.handle_packet(&resign(0, 1), START, 0.02),
            PeerEvent::Accepted
        );
        assert_eq!(
            a.handle_packet(&resign(our ^ 1, 2), START, 0.03),
            PeerEvent::Accepted
        );
        assert!(matches!(
            a.handle_packet(&resign(our, 3), START.add_seconds(0.02), 0.04),
            PeerEvent::Sample(_)
        ));
        // Answered once: the same origin again measures nothing.
        assert_eq!(
            a.handle_packet(&resign(our, 4), START, 0.05),
            PeerEvent::Accepted
        );
    }

    /// A zero receive timestamp never measures, even with the right origin.
    #[test]
    fn zero_receive_never_measures() {
        let (mut a, _, _, good) = exchange(keyed(1));
        let key = keys().get(1).cloned().unwrap();
        let mut p = good[..48].to_vec();
        p[32..40].fill(0);
        mac::append_mac(&key, &mut p);
        assert_eq!(a.handle_packet(&p, START, 0.02), PeerEvent::Accepted);
    }

    /// A peer announcing one of our addresses as its reference is synchronized to us.
    #[test]
    fn a_peer_synchronized_to_us_is_never_used() {
        let (mut a, _, poll, _) = exchange(keyed(1));
        a.add_own_reference_id(ReferenceId([192, 0, 2, 1]));
        let mut b = Peer::new(keyed(1), PeerOptions::default(), 100.0);
        b.handle_packet(&poll, START.add_seconds(0.01), 0.01);
        let mut answer = Vec::new();
        let state = synced(3, [192, 0, 2, 1]);
        assert!(
            b.handle_timeout(
                0.01,
                START.add_seconds(0.011),
                &state,
                &mut rand::rng(),
                &mut answer
            )
            .is_some()
        );
        assert_eq!(
            a.handle_packet(&answer, START.add_seconds(0.02), 0.02),
            PeerEvent::Loop(ReferenceId([192, 0, 2, 1]))
        );
        assert!(a.is_reachable());
    }

    /// An answer held for a while (as chrony holds them) still measures, with the hold
    /// counted as dispersion, and gets a prompt answer so the peer measures well.
    #[test]
    fn held_answers_measure_with_dispersion_and_get_a_prompt_reply() {
        let mut a = Peer::new(keyed(1), PeerOptions::default(), 0.0);
        let mut b = Peer::new(keyed(1), PeerOptions::default(), 1000.0);
        let state = synced(2, *b"GPS\0");
        let mut poll = Vec::new();
        assert!(
            a.handle_timeout(0.0, START, &state, &mut rand::rng(), &mut poll)
                .is_some()
        );
        b.handle_packet(&poll, START.add_seconds(0.01), 0.01);
        b.reply_due = None; // B holds its answer until its own poll
        b.next_poll = 32.0;
        let mut held = Vec::new();
        assert!(
            b.handle_timeout(
                32.0,
                START.add_seconds(32.0),
                &state,
                &mut rand::rng(),
                &mut held
            )
            .is_some()
        );
        let PeerEvent::Sample(s) = a.handle_packet(&held, START.add_seconds(32.01), 32.01) else {
            panic!("held answer not measured");
        };
        assert!(
            s.offset.abs() < 1e-6 && (s.delay - 0.02).abs() < 1e-6,
            "{s:?}"
        );
        assert!(
            (s.root_dispersion - 32.0 * HOLD_DISPERSION_RATE).abs() < 1e-4,
            "{s:?}"
        );
        assert_eq!(a.poll_timeout().unwrap(), 32.01);
    }

    /// A flood of authentic, fresh packets (a misbehaving key holder) gets prompt
    /// replies no faster than one per PROMPT_SPACING.
    #[test]
    fn prompt_replies_are_spaced() {
        let (mut a, _, _, good) = exchange(keyed(1));
        let key = keys().get(1).cloned().unwrap();
        let state = synced(2, *b"GPS\0");
        let mut sent = 0;
        let mut out = Vec::new();
        for i in 1..=100u64 {
            let now = i as f64 * 0.01;
            let mut p = good[..48].to_vec();
            p[24..32].fill(0);
            let t = u64::from_be_bytes(p[40..48].try_into().unwrap()) + i;
            p[40..48].copy_from_slice(&t.to_be_bytes());
            mac::append_mac(&key, &mut p);
            a.handle_packet(&p, START, now);
            if a.handle_timeout(
                now,
                START.add_seconds(now),
                &state,
                &mut rand::rng(),
                &mut out,
            )
            .is_some()
            {
                sent += 1;
            }
        }
        // 1 s of flood: the poll at 0 (already sent), then one prompt reply at 1 s.
        assert_eq!(sent, 1);
    }

    /// Unsynchronized ends say so, and their samples are flagged unusable.
    #[test]
    fn unsynchronized_peers_are_flagged() {
        let (mut a, mut b, poll, _) = exchange(PeerAuth::Insecure);
        let _ = poll;
        let mut answer = Vec::new();
        b.reply_due = Some(0.02);
        assert!(
            b.handle_timeout(
                0.02,
                START.add_seconds(0.02),
                &SyncState::unsynchronized(-20),
                &mut rand::rng(),
                &mut answer
            )
            .is_some()
        );
        let PeerEvent::Sample(s) = a.handle_packet(&answer, START.add_seconds(0.03), 0.03) else {
            panic!()
        };
        assert_eq!(s.leap, Leap::Unsynchronized);
        assert!(s.unusable_reason().is_some());
        assert_eq!(s.authenticated, Authenticated::No);
    }
}
