//! One client association's request/response exchange with the RFC 5905 on-wire checks.
//!
//! The request carries a random transmit timestamp (RFC 9109 §4 / chrony): it tells an
//! observer nothing about our clock, and an off-path attacker must guess 64 bits to
//! forge a reply. The real send time stays here.
//!
//! A response is checked in this order before anything changes: it parses; it is mode
//! 4; transmit ≠ 0; transmit ≠ the last accepted one; origin == our transmit, all 64
//! bits; receive ≠ 0; authenticated as configured. Only then does the exchange record
//! it, so forged or replayed packets cannot clear or move the expected origin.
//!
//! With interleaved mode on (RFC 9769, docs/PROTOCOL.md#interleaved-mode), a request
//! also names the server's receive timestamp of the last accepted reply as its origin,
//! and carries a second random value in its receive field. A reply echoing that value
//! is interleaved: its transmit time completes the previous exchange, which is the one
//! measured. A reply echoing the transmit field is basic and measured as always. Only
//! an accepted (so authenticated, where the source is) reply to an interleaved request
//! can be interleaved, and only accepted replies move the state it builds on.

use rand::CryptoRng;

use crate::auth::nts::ntp::{NtsReject, NtsSession};
use crate::auth::{MacError, SymmetricKey, mac};
use crate::wire::{
    Header, KissCode, Leap, Mode, NtpTimestamp, Packet, PacketError, ReferenceId, Trailer,
};

/// Root distance at or beyond which a source is never used (RFC 5905's MAXDIST is
/// lower; this is the hard limit of docs/PROTOCOL.md, "Unusable servers").
pub const MAX_ROOT_DISTANCE: f64 = 16.0;

/// Whether `reply` echoes `request`'s transmit field in its origin field, or for an
/// interleaved request (non-zero origin) its receive field: a cheap first test for a
/// driver that forwards datagrams, so that junk from off the path cannot crowd out the
/// genuine reply. [`ClientExchange::handle_response`] still makes every check.
pub fn echoes_request(request: &[u8], reply: &[u8]) -> bool {
    fn field(packet: &[u8], at: usize) -> Option<&[u8]> {
        packet.get(at..at + 8).filter(|f| f != &[0; 8])
    }
    match (field(reply, 24), field(request, 40)) {
        (Some(origin), Some(transmit)) if origin == transmit => true,
        (Some(origin), _) => field(request, 24).is_some() && field(request, 32) == Some(origin),
        _ => false,
    }
}

/// A response that was not accepted. The exchange's state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed: {0}")]
    Malformed(PacketError),
    #[error("not a server-mode reply ({0:?})")]
    WrongMode(Mode),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("transmit timestamp is zero")]
    ZeroTransmit,
    #[error("duplicate of an accepted reply")]
    Duplicate,
    #[error("no request outstanding")]
    NotExpected,
    #[error("origin timestamp does not match our request")]
    BogusOrigin,
    #[error("receive timestamp is zero")]
    ZeroReceive,
    #[error("authentication failed: {0}")]
    Authentication(MacError),
    #[error("NTS: {0}")]
    Nts(NtsReject),
}

/// How replies must prove they come from the server.
#[derive(Debug)]
pub enum ClientAuth {
    /// Nothing: anyone on the path can forge replies.
    None,
    /// Signed with this key, and only this key (RFC 5905 / RFC 8573).
    Key(SymmetricKey),
    /// NTS (RFC 8915), with keys and cookies from NTS-KE.
    Nts(NtsSession),
}

/// How a reply was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    No,
    Key(u32),
    Nts,
}

/// A request could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no NTS cookies left: run NTS-KE again")]
    NoCookies,
}

/// A server's answer that passed every check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Response {
    Sample(Sample),
    /// A kiss-o'-death (stratum 0). Authenticated if the exchange is keyed.
    Kiss(KissCode),
}

/// One measurement of a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Server clock minus ours, seconds.
    pub offset: f64,
    /// Round trip less the server's processing time, seconds.
    pub delay: f64,
    pub leap: Leap,
    pub version: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub reference_id: ReferenceId,
    pub root_delay: f64,
    pub root_dispersion: f64,
    /// Our clock when the reply arrived.
    pub received: NtpTimestamp,
    /// How the reply proved where it came from.
    pub authenticated: Authenticated,
}

impl Sample {
    /// The measurement an exchange makes (RFC 5905 §8): our packet left at `sent` (T1),
    /// the other end's `header` says when it arrived (T2) and when the answer left (T3),
    /// and the answer arrived at `received` (T4).
    pub fn from_exchange(
        header: &Header,
        sent: NtpTimestamp,
        received: NtpTimestamp,
        authenticated: Authenticated,
    ) -> Self {
        let times = [sent, header.receive_time, header.transmit_time, received];
        Self::from_timestamps(header, times, authenticated)
    }

    /// The measurement from the four timestamps T1..T4 of one exchange (which for an
    /// interleaved reply are not all in `header`), with the server's other fields
    /// from `header`.
    pub fn from_timestamps(
        header: &Header,
        [t1, t2, t3, t4]: [NtpTimestamp; 4],
        authenticated: Authenticated,
    ) -> Self {
        Self {
            offset: (t2.seconds_since(t1) + t3.seconds_since(t4)) / 2.0,
            delay: t4.seconds_since(t1) - t3.seconds_since(t2),
            leap: header.leap,
            version: header.version,
            stratum: header.stratum,
            poll: header.poll,
            precision: header.precision,
            reference_id: header.reference_id,
            root_delay: header.root_delay.to_seconds(),
            root_dispersion: header.root_dispersion.to_seconds(),
            received: t4,
            authenticated,
        }
    }

    /// Upper bound on the server's error relative to its primary reference, as seen
    /// from here (RFC 5905 §11.2.1, without our own dispersion).
    pub fn root_distance(&self) -> f64 {
        (self.root_delay + self.delay.max(0.0)) / 2.0 + self.root_dispersion
    }

    /// Why this sample must never be used to steer a clock, if it must not
    /// (ADVERSARIAL 19).
    pub fn unusable_reason(&self) -> Option<&'static str> {
        if self.leap == Leap::Unsynchronized {
            Some("server is unsynchronized (leap indicator 3)")
        } else if self.stratum == 0 || self.stratum >= 16 {
            Some("server stratum is 0 or 16+")
        } else if self.root_distance() >= MAX_ROOT_DISTANCE {
            Some("root distance is 16 s or more")
        } else {
            None
        }
    }
}

/// What a request is waiting for.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// The random value we put in the transmit field; a basic reply's origin matches.
    transmit_field: NtpTimestamp,
    /// Our clock when the request left.
    sent_at: NtpTimestamp,
    /// For an interleaved request: the random value in its receive field, which an
    /// interleaved reply's origin matches, and the exchange such a reply completes.
    interleaved: Option<(NtpTimestamp, Completed)>,
}

/// An accepted exchange, which an interleaved reply to the next request completes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Completed {
    /// Our clock when the request left (T1).
    sent_at: NtpTimestamp,
    /// The server's receive timestamp (T2), which the next request names.
    server_received: NtpTimestamp,
    /// Our clock when the reply arrived (T4).
    received: NtpTimestamp,
}

/// The client side of NTP exchanges with one server.
#[derive(Debug)]
pub struct ClientExchange {
    auth: ClientAuth,
    poll: i8,
    outstanding: Option<Outstanding>,
    /// The receive and transmit timestamps of the last accepted reply.
    last_accepted: Option<(NtpTimestamp, NtpTimestamp)>,
    /// Whether requests ask for interleaved mode.
    xleave: bool,
    /// The last accepted exchange that measured time, with interleaved mode on.
    completed: Option<Completed>,
    /// Whether the last sample was measured in interleaved mode.
    last_interleaved: bool,
}

impl ClientExchange {
    pub fn new(auth: ClientAuth, poll: i8) -> Self {
        Self {
            auth,
            poll,
            outstanding: None,
            last_accepted: None,
            xleave: false,
            completed: None,
            last_interleaved: false,
        }
    }

    /// Asks the server for interleaved mode from the second request on.
    pub fn with_xleave(mut self) -> Self {
        self.xleave = true;
        self
    }

    /// The poll interval (log2 seconds) announced in requests.
    pub fn set_poll(&mut self, poll: i8) {
        self.poll = poll;
    }

    /// Whether the last sample came from an interleaved reply (and so measured the
    /// exchange before it).
    pub fn last_sample_interleaved(&self) -> bool {
        self.last_interleaved
    }

    /// Signs with `key` from now on if this exchange is keyed under the same id (a
    /// reload of the key file); says whether it was.
    pub fn replace_key(&mut self, key: &SymmetricKey) -> bool {
        match &mut self.auth {
            ClientAuth::Key(old) if old.id() == key.id() => {
                *old = key.clone();
                true
            }
            _ => false,
        }
    }

    /// Cookies left, for NTS; `None` for other authentication.
    pub fn nts_cookies(&self) -> Option<usize> {
        match &self.auth {
            ClientAuth::Nts(session) => Some(session.cookies()),
            _ => None,
        }
    }

    /// Writes a new request, sent at local time `now`, into `out` (cleared first).
    /// A reply to any earlier request is no longer accepted.
    pub fn poll_request(
        &mut self,
        now: NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        out: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let transmit_field = nonzero_random(rng);
        let mut header = Header::client_request(self.poll, transmit_field);
        let interleaved = match self.completed {
            Some(completed) if self.xleave => {
                // Differs from the transmit field, or the server must answer basic.
                let receive_field = loop {
                    let t = nonzero_random(rng);
                    if t != transmit_field {
                        break t;
                    }
                };
                header.origin_time = completed.server_received;
                header.receive_time = receive_field;
                Some((receive_field, completed))
            }
            _ => None,
        };
        out.clear();
        header.write(out);
        match &mut self.auth {
            ClientAuth::None => {}
            ClientAuth::Key(key) => mac::append_mac(key, out),
            ClientAuth::Nts(session) => {
                if session.write_request_fields(rng, out).is_none() {
                    out.clear();
                    return Err(RequestError::NoCookies);
                }
            }
        }
        self.outstanding = Some(Outstanding {
            transmit_field,
            sent_at: now,
            interleaved,
        });
        Ok(())
    }

    /// Checks a reply that arrived at local time `received`.
    pub fn handle_response(
        &mut self,
        bytes: &[u8],
        received: NtpTimestamp,
    ) -> Result<Response, Reject> {
        let packet = Packet::parse(bytes).map_err(Reject::Malformed)?;
        let h = &packet.header;
        if h.mode != Mode::Server {
            return Err(Reject::WrongMode(h.mode));
        }
        if !(1..=4).contains(&h.version) {
            return Err(Reject::UnsupportedVersion(h.version));
        }
        if h.transmit_time.is_zero() {
            return Err(Reject::ZeroTransmit);
        }
        // In interleaved mode a reply may rightly repeat the last transmit time (the
        // server had no later one for it): then only both timestamps make a duplicate.
        let duplicate = match self.last_accepted {
            Some((rx, tx)) if self.xleave => (rx, tx) == (h.receive_time, h.transmit_time),
            Some((_, tx)) => tx == h.transmit_time,
            None => false,
        };
        if duplicate {
            return Err(Reject::Duplicate);
        }
        let outstanding = self.outstanding.ok_or(Reject::NotExpected)?;
        let completes = match outstanding.interleaved {
            _ if h.origin_time == outstanding.transmit_field => None,
            Some((receive_field, previous)) if h.origin_time == receive_field => Some(previous),
            _ => return Err(Reject::BogusOrigin),
        };
        if h.receive_time.is_zero() {
            return Err(Reject::ZeroReceive);
        }
        let authenticated = match &mut self.auth {
            ClientAuth::Key(key) => {
                mac::check_packet(key, &packet, bytes).map_err(Reject::Authentication)?;
                Authenticated::Key(key.id())
            }
            // An NTSN cannot be authenticated (RFC 8915 §5.7); echoing our unique id
            // and origin is the most it can show. It changes nothing here: the request
            // stays outstanding, so a genuine reply that follows a forged NTSN is still
            // accepted, and the caller decides whether to re-key (ADVERSARIAL 16).
            ClientAuth::Nts(session)
                if h.stratum == 0
                    && h.reference_id.0 == *b"NTSN"
                    && session.nak_matches(&packet) =>
            {
                return Ok(Response::Kiss(KissCode::NtsNak));
            }
            ClientAuth::Nts(session) => {
                session
                    .check_response(&packet, bytes)
                    .map_err(Reject::Nts)?;
                Authenticated::Nts
            }
            ClientAuth::None if packet.trailer == Some(Trailer::CryptoNak) => {
                return Err(Reject::Authentication(MacError::CryptoNak));
            }
            ClientAuth::None => Authenticated::No,
        };

        // Accepted: from here on the exchange may change.
        self.outstanding = None;
        self.last_accepted = Some((h.receive_time, h.transmit_time));
        // Stratum 0 with an ASCII code is a kiss-o'-death; stratum 0 without one is how
        // chrony and ntpd say "unsynchronized", an ordinary (unusable) sample.
        if h.stratum == 0 && h.reference_id.0.iter().all(u8::is_ascii_uppercase) {
            return Ok(Response::Kiss(KissCode::from_reference_id(h.reference_id)));
        }
        self.last_interleaved = completes.is_some();
        if self.xleave {
            self.completed = Some(Completed {
                sent_at: outstanding.sent_at,
                server_received: h.receive_time,
                received,
            });
        }
        Ok(Response::Sample(match completes {
            None => Sample::from_exchange(h, outstanding.sent_at, received, authenticated),
            // RFC 9769 §2: T1, T2 and T4 of the previous exchange, T3 from this reply.
            Some(previous) => Sample::from_timestamps(
                h,
                [
                    previous.sent_at,
                    previous.server_received,
                    h.transmit_time,
                    previous.received,
                ],
                authenticated,
            ),
        }))
    }
}

/// A random timestamp other than zero, which would match a zero origin (p = 2^-64).
fn nonzero_random(rng: &mut (impl CryptoRng + ?Sized)) -> NtpTimestamp {
    loop {
        let t = NtpTimestamp::from_bits(rng.next_u64());
        if !t.is_zero() {
            break t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server::{Server, ServerOptions, SyncState};

    const T1: NtpTimestamp = NtpTimestamp::from_bits(0x1000_0000_0000_0000);

    use crate::proto::test_keys as keys;

    /// A server whose clock is 0.25 s ahead, answering after 10 ms in flight each way.
    fn serve(server: &Server, request: &[u8]) -> Vec<u8> {
        let rx = T1.add_seconds(0.010 + 0.25);
        let state = SyncState::local_reference(2, rx, -20);
        let mut reply = Vec::new();
        server
            .handle_request(
                request,
                rx,
                &state,
                || rx.add_seconds(0.001),
                &mut rand::rng(),
                &mut reply,
            )
            .unwrap();
        reply
    }

    const T4: NtpTimestamp = NtpTimestamp::from_bits(0x1000_0000_0000_0000 + (21 << 32) / 1000);

    fn exchange(key_id: Option<u32>) -> (ClientExchange, Vec<u8>, Server) {
        let auth = match key_id.and_then(|id| keys().get(id).cloned()) {
            Some(key) => ClientAuth::Key(key),
            None => ClientAuth::None,
        };
        let mut client = ClientExchange::new(auth, 6);
        let mut request = Vec::new();
        client
            .poll_request(T1, &mut rand::rng(), &mut request)
            .unwrap();
        let server = Server::new(keys(), ServerOptions::default());
        let reply = serve(&server, &request);
        (client, reply, server)
    }

    #[test]
    fn offset_and_delay_follow_rfc5905() {
        let (mut client, reply, _) = exchange(None);
        let Ok(Response::Sample(s)) = client.handle_response(&reply, T4) else {
            panic!("rejected")
        };
        assert!((s.offset - 0.25).abs() < 1e-6, "{}", s.offset);
        assert!((s.delay - 0.020).abs() < 1e-6, "{}", s.delay);
        assert_eq!((s.stratum, s.authenticated), (2, Authenticated::No));
        assert_eq!(s.unusable_reason(), None);
    }

    #[test]
    fn keyed_replies_verify_for_every_key_type() {
        for id in [1, 2, 3] {
            let (mut client, reply, _) = exchange(Some(id));
            let Ok(Response::Sample(s)) = client.handle_response(&reply, T4) else {
                panic!("key {id} rejected")
            };
            assert_eq!(s.authenticated, Authenticated::Key(id));
        }
    }

    /// ADVERSARIAL 18: each bogus reply is dropped and the expected origin survives, so
    /// the genuine reply that follows is still accepted.
    #[test]
    fn on_wire_checks_drop_without_changing_state() {
        let (mut client, good, _) = exchange(None);
        let tweak = |offset: usize, value: u64| {
            let mut b = good.clone();
            b[offset..offset + 8].copy_from_slice(&value.to_be_bytes());
            b
        };
        let origin = u64::from_be_bytes(good[24..32].try_into().unwrap());
        let cases = [
            (tweak(24, origin ^ 1), Reject::BogusOrigin),
            (tweak(24, 0), Reject::BogusOrigin),
            (tweak(40, 0), Reject::ZeroTransmit),
            (tweak(32, 0), Reject::ZeroReceive),
        ];
        for (bad, why) in cases {
            assert_eq!(client.handle_response(&bad, T4), Err(why));
        }
        assert!(client.handle_response(&good, T4).is_ok());
        // The same reply again: a duplicate, and nothing is outstanding any more.
        assert_eq!(client.handle_response(&good, T4), Err(Reject::Duplicate));
        let mut later = good.clone();
        later[47] ^= 1;
        assert_eq!(client.handle_response(&later, T4), Err(Reject::NotExpected));
    }

    #[test]
    fn duplicate_transmit_is_dropped_even_with_a_new_request_outstanding() {
        let (mut client, first, server) = exchange(None);
        client.handle_response(&first, T4).unwrap();
        let mut request = Vec::new();
        client
            .poll_request(T1, &mut rand::rng(), &mut request)
            .unwrap();
        let mut replay = serve(&server, &request); // matching origin ...
        replay[40..48].copy_from_slice(&first[40..48]); // ... but an old transmit
        assert_eq!(client.handle_response(&replay, T4), Err(Reject::Duplicate));
        let mut fresh = serve(&server, &request);
        fresh[47] ^= 1; // a later transmit time than the first reply's
        assert!(client.handle_response(&fresh, T4).is_ok());
    }

    /// ADVERSARIAL 20: a keyed exchange accepts only a valid MAC under its own key id.
    #[test]
    fn keyed_exchange_drops_anything_not_signed_with_its_key() {
        let (mut client, good, _) = exchange(Some(1));
        let plain = good[..48].to_vec();
        let mut nak = plain.clone();
        nak.extend_from_slice(&[0; 4]);
        let mut other_key = plain.clone();
        mac::append_mac(keys().get(2).unwrap(), &mut other_key);
        let mut wrong_digest = good.clone();
        let last = wrong_digest.len() - 1;
        wrong_digest[last] ^= 1;
        let truncated = good[..good.len() - 1].to_vec();
        let cases = [
            (plain, Reject::Authentication(MacError::Missing)),
            (nak, Reject::Authentication(MacError::CryptoNak)),
            (
                other_key,
                Reject::Authentication(MacError::WrongKeyId {
                    got: 2,
                    expected: 1,
                }),
            ),
            (wrong_digest, Reject::Authentication(MacError::BadDigest)),
            (truncated, Reject::Authentication(MacError::BadDigest)),
        ];
        for (bad, why) in cases {
            assert_eq!(client.handle_response(&bad, T4), Err(why));
        }
        assert!(client.handle_response(&good, T4).is_ok(), "state survived");
    }

    #[test]
    fn md5_reply_with_appended_extension_field_is_dropped() {
        let (mut client, good, _) = exchange(Some(3));
        assert_eq!(good.len(), 48 + 20);
        let mut appended = good.clone();
        appended.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
        appended.extend_from_slice(&[0; 12]);
        // The MAC's key id (3) now reads as an extension field of length 3.
        assert!(matches!(
            client.handle_response(&appended, T4),
            Err(Reject::Malformed(PacketError::ExtensionLength {
                offset: 48,
                ..
            }))
        ));
        // An extension field slipped in before the MAC breaks the digest.
        let mut inserted = good[..48].to_vec();
        inserted.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
        inserted.extend_from_slice(&[0; 12]);
        inserted.extend_from_slice(&good[48..]);
        assert_eq!(
            client.handle_response(&inserted, T4),
            Err(Reject::Authentication(MacError::BadDigest))
        );
        assert!(client.handle_response(&good, T4).is_ok());
    }

    /// ADVERSARIAL 19, through the wire: an unsynchronized server's reply (LI 3,
    /// stratum 16; or stratum 0 with no kiss code, as chrony sends) is a sample that
    /// says it must not be used, never a usable one and never a kiss.
    #[test]
    fn unsynchronized_server_replies_are_flagged_unusable() {
        let mut client = ClientExchange::new(ClientAuth::None, 6);
        let mut request = Vec::new();
        let server = Server::new(keys(), ServerOptions::default());
        let state = SyncState::unsynchronized(-20);
        for stratum in [16, 0] {
            client
                .poll_request(T1, &mut rand::rng(), &mut request)
                .unwrap();
            let mut reply = Vec::new();
            let rx = T1.add_seconds(0.01 + stratum as f64);
            let s = SyncState {
                stratum,
                reference_id: ReferenceId([0; 4]),
                ..state
            };
            server
                .handle_request(&request, rx, &s, || rx, &mut rand::rng(), &mut reply)
                .unwrap();
            let Ok(Response::Sample(sample)) = client.handle_response(&reply, T4) else {
                panic!("stratum {stratum}: not a sample")
            };
            assert!(sample.unusable_reason().is_some(), "stratum {stratum}");
        }
    }

    /// ADVERSARIAL 20: digests of the wrong length for the packet's version fail:
    /// SHA1 cut to 16 bytes, and SHA256 whole in NTPv4 or cut to 20 in NTPv3.
    #[test]
    fn digests_must_have_the_length_the_version_implies() {
        let (mut client, good, _) = exchange(Some(1)); // SHA256, NTPv4: 20 bytes
        let sha256 = keys().get(1).cloned().unwrap();
        let full = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(sha256.secret());
            h.update(&good[..48]);
            h.finalize()
        };
        let mut v4_full = good[..52].to_vec();
        v4_full.extend_from_slice(&full);
        assert!(matches!(
            client.handle_response(&v4_full, T4),
            Err(Reject::Malformed(_))
        ));
        let mut v3_cut = good.clone();
        v3_cut[0] = v3_cut[0] & !0x38 | 3 << 3;
        assert_eq!(
            client.handle_response(&v3_cut, T4),
            Err(Reject::Authentication(MacError::BadDigest))
        );
        assert!(client.handle_response(&good, T4).is_ok());

        let (mut client, good, _) = exchange(Some(4)); // SHA1
        let cut = good[..good.len() - 4].to_vec();
        assert_eq!(
            client.handle_response(&cut, T4),
            Err(Reject::Authentication(MacError::BadDigest))
        );
    }

    /// ADVERSARIAL 19: replies from unsynchronized or distant servers are flagged.
    #[test]
    fn unsynchronized_and_distant_servers_are_unusable() {
        let (mut client, good, _) = exchange(None);
        let Ok(Response::Sample(s)) = client.handle_response(&good, T4) else {
            panic!()
        };
        let check = |f: &dyn Fn(&mut Sample)| {
            let mut bad = s;
            f(&mut bad);
            bad.unusable_reason()
        };
        assert!(check(&|s| s.leap = Leap::Unsynchronized).is_some());
        assert!(check(&|s| s.stratum = 16).is_some());
        assert!(check(&|s| s.stratum = 0).is_some());
        assert!(check(&|s| s.root_dispersion = 16.0).is_some());
        assert!(check(&|s| s.root_delay = 32.0).is_some());
        assert!(check(&|s| s.stratum = 15).is_none());
    }

    #[test]
    fn kiss_codes_pass_the_same_checks() {
        let (mut client, good, _) = exchange(None);
        let mut kiss = good.clone();
        kiss[1] = 0;
        kiss[12..16].copy_from_slice(b"RATE");
        let mut forged = kiss.clone();
        forged[24] ^= 1;
        assert_eq!(
            client.handle_response(&forged, T4),
            Err(Reject::BogusOrigin)
        );
        assert_eq!(
            client.handle_response(&kiss, T4),
            Ok(Response::Kiss(KissCode::Rate))
        );
    }

    /// ADVERSARIAL 23: the transmit field is random, not the clock.
    #[test]
    fn transmit_timestamps_show_no_pattern() {
        let mut client = ClientExchange::new(ClientAuth::None, 6);
        let mut seen = std::collections::HashSet::new();
        let mut ones = [0u32; 64];
        let mut request = Vec::new();
        for i in 0..1000u64 {
            client
                .poll_request(T1.add_seconds(i as f64), &mut rand::rng(), &mut request)
                .unwrap();
            let t = u64::from_be_bytes(request[40..48].try_into().unwrap());
            assert!(seen.insert(t), "repeated transmit timestamp");
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += (t >> bit & 1) as u32;
            }
        }
        // Each bit is set in about half of the requests (binomial, 1000 draws:
        // 350..650 is beyond 9 standard deviations).
        for (bit, count) in ones.iter().enumerate() {
            assert!((350..650).contains(count), "bit {bit} set {count} times");
        }
    }

    const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));

    /// One exchange with an interleaving server whose clock is 0.25 s ahead: 10 ms in
    /// flight each way, the reply written 1 ms after the request arrived but sent 3 ms
    /// after (reported with `handle_sent`). The request leaves at `t1`; returns the reply
    /// and when it arrives.
    fn interleaved_exchange(
        server: &Server,
        client: &mut ClientExchange,
        t1: NtpTimestamp,
    ) -> (Vec<u8>, NtpTimestamp) {
        let mut request = Vec::new();
        client
            .poll_request(t1, &mut rand::rng(), &mut request)
            .unwrap();
        let rx = t1.add_seconds(0.010 + 0.25);
        let state = SyncState::local_reference(2, rx, -20);
        let mut reply = Vec::new();
        server
            .handle_request_from(
                PEER,
                &request,
                rx,
                &state,
                || rx.add_seconds(0.001),
                &mut rand::rng(),
                &mut reply,
            )
            .unwrap();
        server.handle_sent(PEER, rx, rx.add_seconds(0.003));
        (reply, t1.add_seconds(0.023))
    }

    /// The sample a reply gives, and whether it was interleaved.
    fn sample(client: &mut ClientExchange, reply: &[u8], t4: NtpTimestamp) -> (Sample, bool) {
        match client.handle_response(reply, t4) {
            Ok(Response::Sample(s)) => (s, client.last_sample_interleaved()),
            other => panic!("{other:?}"),
        }
    }

    /// RFC 9769 §2 with a synthetic exchange: the first sample is basic and carries
    /// the server's 2 ms send latency as error; every later one is interleaved and
    /// measures the exchange before it with the precise transmit time, exactly.
    #[test]
    fn interleaved_samples_use_the_previous_exchange_and_the_precise_transmit_time() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(16);
        let mut client = ClientExchange::new(ClientAuth::None, 6).with_xleave();
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        let (first, interleaved) = sample(&mut client, &reply, t4);
        assert!(!interleaved);
        assert!((first.offset - 0.249).abs() < 1e-6, "{}", first.offset);
        assert!((first.delay - 0.022).abs() < 1e-6, "{}", first.delay);
        for i in 1..4 {
            let t1 = T1.add_seconds(f64::from(i));
            let (reply, t4) = interleaved_exchange(&server, &mut client, t1);
            let (s, interleaved) = sample(&mut client, &reply, t4);
            assert!(interleaved, "exchange {i}");
            assert!((s.offset - 0.25).abs() < 1e-6, "{}", s.offset);
            assert!((s.delay - 0.020).abs() < 1e-6, "{}", s.delay);
            // It measures the exchange before: that reply arrived a second earlier.
            assert!((t4.seconds_since(s.received) - 1.0).abs() < 1e-6);
        }
        // A server that does not interleave: basic samples, measured as always.
        let basic = Server::new(keys(), ServerOptions::default());
        let (reply, t4) = interleaved_exchange(&basic, &mut client, T1.add_seconds(9.0));
        let (s, interleaved) = sample(&mut client, &reply, t4);
        assert!(!interleaved);
        assert!((s.offset - 0.249).abs() < 1e-6, "{}", s.offset);
    }

    /// The driver's first filter lets an interleaved reply through to an interleaved
    /// request only, and never a zero origin.
    #[test]
    fn echoes_request_knows_interleaved_replies() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(16);
        let mut client = ClientExchange::new(ClientAuth::None, 6).with_xleave();
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        sample(&mut client, &reply, t4);
        let mut request = Vec::new();
        client
            .poll_request(T1, &mut rand::rng(), &mut request)
            .unwrap();
        let mut reply = request.clone();
        for (origin_from, echoes) in [(40, true), (32, true), (24, false)] {
            reply[24..32].copy_from_slice(&request[origin_from..origin_from + 8]);
            assert_eq!(echoes_request(&request, &reply), echoes, "{origin_from}");
        }
        let mut basic = request.clone();
        basic[24..32].fill(0);
        reply[24..32].copy_from_slice(&basic[32..40]);
        assert!(!echoes_request(&basic, &reply));
        reply[24..32].fill(0);
        basic[40..48].fill(0);
        assert!(!echoes_request(&basic, &reply));
    }

    /// Interleaved replies are accepted only to interleaved requests: the first
    /// request (and any request without xleave) asks for none, so a reply echoing its
    /// receive field is bogus; and an interleaved request's reply must echo one of its
    /// two random fields.
    #[test]
    fn interleaved_replies_only_to_interleaved_requests() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(16);
        for mut client in [
            ClientExchange::new(ClientAuth::None, 6),
            ClientExchange::new(ClientAuth::None, 6).with_xleave(),
        ] {
            let mut request = Vec::new();
            client
                .poll_request(T1, &mut rand::rng(), &mut request)
                .unwrap();
            assert_eq!(
                Header::parse(&request).unwrap().origin_time,
                NtpTimestamp::ZERO
            );
            let mut reply = serve(&server, &request);
            reply[24..32].copy_from_slice(&request[32..40]);
            assert_eq!(client.handle_response(&reply, T4), Err(Reject::BogusOrigin));
        }
        let mut client = ClientExchange::new(ClientAuth::None, 6).with_xleave();
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        sample(&mut client, &reply, t4);
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1.add_seconds(1.0));
        let mut forged = reply.clone();
        forged[24] ^= 1;
        assert_eq!(
            client.handle_response(&forged, t4),
            Err(Reject::BogusOrigin)
        );
        assert!(sample(&mut client, &reply, t4).1);
    }

    /// ADVERSARIAL 36: for a keyed source, an unsigned reply (a forgery with the right
    /// origin) is rejected and moves nothing: the next request is still basic. A forged
    /// interleaved reply is rejected and the genuine one that follows is measured.
    #[test]
    fn an_unauthenticated_reply_never_switches_to_interleaved_mode() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(16);
        let key = keys().get(1).cloned().unwrap();
        let mut client = ClientExchange::new(ClientAuth::Key(key), 6).with_xleave();
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        let unsigned = reply[..48].to_vec();
        assert!(matches!(
            client.handle_response(&unsigned, t4),
            Err(Reject::Authentication(_))
        ));
        let mut request = Vec::new();
        client
            .poll_request(T1, &mut rand::rng(), &mut request)
            .unwrap();
        assert_eq!(
            Header::parse(&request).unwrap().origin_time,
            NtpTimestamp::ZERO
        );

        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        assert_eq!(
            sample(&mut client, &reply, t4).0.authenticated,
            Authenticated::Key(1)
        );
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1.add_seconds(1.0));
        let mut forged = reply.clone();
        forged[40..48].copy_from_slice(&T1.to_bits().to_be_bytes());
        assert!(matches!(
            client.handle_response(&forged, t4),
            Err(Reject::Authentication(_))
        ));
        let (s, interleaved) = sample(&mut client, &reply, t4);
        assert!(interleaved && (s.offset - 0.25).abs() < 1e-6, "{s:?}");
    }

    /// NTS requests are answered interleaved too, and the replies verify.
    #[test]
    fn nts_exchanges_interleave() {
        use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
        use crate::auth::nts::cookie::{CookieKeys, Rotation, SessionKeys};
        use std::sync::{Arc, RwLock};

        let session_keys = || {
            let alg = AeadAlgorithm::AesSivCmac256;
            SessionKeys {
                c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
            }
        };
        let mut cookie_keys = CookieKeys::random(Rotation::default(), vec![]);
        cookie_keys.update(1_800_000_000, &mut rand::rng());
        let cookies = (0..8)
            .map(|_| cookie_keys.seal(&session_keys(), &mut rand::rng()).unwrap())
            .collect();
        let server = Server::new(keys(), ServerOptions::default())
            .with_nts(Arc::new(RwLock::new(cookie_keys)))
            .with_interleave(16);
        let session = NtsSession::new(session_keys(), cookies);
        let mut client = ClientExchange::new(ClientAuth::Nts(session), 6).with_xleave();
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1);
        assert!(!sample(&mut client, &reply, t4).1);
        let (reply, t4) = interleaved_exchange(&server, &mut client, T1.add_seconds(1.0));
        let (s, interleaved) = sample(&mut client, &reply, t4);
        assert_eq!(s.authenticated, Authenticated::Nts);
        assert!(interleaved && (s.offset - 0.25).abs() < 1e-6, "{s:?}");
    }
}
