//! The stateless NTP responder: request bytes and receive time in, reply bytes or a
//! reason to stay silent out.
//!
//! It answers client-mode (3) requests of versions 1 to 4, echoing the version, and
//! (unless configured not to) symmetric-active (1) packets from addresses that are not
//! configured peers, statelessly in symmetric-passive mode as chrony does: such a
//! packet never creates an association, so it cannot steer our clock (ADVERSARIAL 21).
//! A request with a MAC is answered under the same key if that key is in the store and
//! the MAC verifies; otherwise it is dropped, or answered with a crypto-NAK if so
//! configured. A reply is never larger than its request, so ntimed cannot amplify.
//! With an [`InterleaveTable`], a client request that names the receive timestamp of
//! the same client's last reply is answered in interleaved mode (RFC 9769), carrying
//! that reply's transmit time as the caller reported it after the send.

use arc_swap::ArcSwap;
use rand::CryptoRng;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::auth::nts::{self, cookie::CookieKeys, cookie::SessionKeys, ntp::ServerNts};
use crate::auth::{KeyStore, SymmetricKey, mac};
use crate::proto::interleave::InterleaveTable;
use crate::wire::{
    Header, Leap, Mode, NtpShort, NtpTimestamp, Packet, PacketError, ReferenceId, Trailer,
};

/// What the server says about its own clock in every reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncState {
    pub leap: Leap,
    pub stratum: u8,
    pub reference_id: ReferenceId,
    pub reference_time: NtpTimestamp,
    /// Round-trip delay to the primary reference, seconds.
    pub root_delay: f64,
    /// Error bound relative to the primary reference, seconds.
    pub root_dispersion: f64,
    /// log2 seconds.
    pub precision: i8,
}

impl SyncState {
    /// Not synchronized to anything: clients must not use these replies.
    pub fn unsynchronized(precision: i8) -> Self {
        Self {
            leap: Leap::Unsynchronized,
            stratum: 16,
            reference_id: ReferenceId::from_ascii(b"INIT"),
            reference_time: NtpTimestamp::ZERO,
            root_delay: 0.0,
            root_dispersion: 0.0,
            precision,
        }
    }

    /// Serving the local clock as a reference at `stratum` (chrony's `local stratum N`).
    /// The reference time is `now`: the local clock is its own reference.
    pub fn local_reference(stratum: u8, now: NtpTimestamp, precision: i8) -> Self {
        Self {
            leap: Leap::NoWarning,
            stratum,
            reference_id: ReferenceId::from_ascii(b"LOCL"),
            reference_time: now,
            root_delay: 0.0,
            root_dispersion: 2f64.powi(precision.into()),
            precision,
        }
    }
}

/// Why a request got no answer. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("malformed: {0}")]
    Malformed(PacketError),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Only client mode (and, if enabled, symmetric active) is answered here.
    #[error("not a client request ({0:?})")]
    NotClientMode(Mode),
    /// A crypto-NAK is a server's answer, never a request.
    #[error("a crypto-NAK as a request")]
    CryptoNakRequest,
    #[error("unknown key {0}")]
    UnknownKey(u32),
    #[error("MAC under key {0} does not verify")]
    BadMac(u32),
    /// Symmetric active under a `[[peer]]`'s key from an address that is not that
    /// peer: answering would sign packets the peer's association accepts (a reflected
    /// packet of ours would come back as an answer to ourselves).
    #[error("symmetric active under peer key {0} from an address that is not the peer")]
    PeerKey(u32),
    /// NTS fields that are not a well-formed NTS request (ADVERSARIAL 11, 13).
    #[error("bad NTS request: {0}")]
    BadNts(&'static str),
    /// The NTS reply fields could not be written; never expected.
    #[error("internal error writing the NTS reply")]
    Internal,
    /// Would have been larger than the request (never expected; a last guard).
    #[error("the answer would be larger than the request")]
    WouldAmplify,
    /// Over the source's rate limit, and not answered with a kiss.
    #[error("rate limited")]
    RateLimited,
    /// The access list refuses the source, and no DENY kiss was sent.
    #[error("denied by the access list")]
    Denied,
    /// Neither a MAC nor NTS, where `require-auth` is set.
    #[error("unauthenticated, and authentication is required")]
    Unauthenticated,
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Plain,
    /// Signed with this key id.
    Keyed(u32),
    /// The request's MAC failed; a crypto-NAK went back.
    CryptoNak,
    /// Authenticated with NTS; new cookies went back.
    Nts,
    /// The NTS cookie or authenticator failed; an NTSN kiss went back.
    NtsNak,
    /// Over the rate limit; a RATE kiss went back.
    RateKiss,
    /// Refused by the access list; a DENY kiss went back.
    DenyKiss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// Answer requests whose MAC fails with a crypto-NAK instead of dropping them.
    /// Off by default: a NAK is unauthenticated and tells an attacker nothing useful
    /// to a client, but it costs a reply.
    pub crypto_nak: bool,
    /// Answer symmetric-active packets from unconfigured peers in passive mode (as a
    /// server answers a client) rather than dropping them. On by default.
    pub answer_unknown_peers: bool,
    /// Drop requests with neither a MAC nor NTS. Off by default.
    pub require_auth: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            crypto_nak: false,
            answer_unknown_peers: true,
            require_auth: false,
        }
    }
}

/// Counters, readable while the server runs.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub plain: AtomicU64,
    pub keyed: AtomicU64,
    pub nts: AtomicU64,
    /// Of the `plain`, `keyed` and `nts` answers, those in interleaved mode.
    pub interleaved: AtomicU64,
    /// Replies whose transmit time the kernel reported, kept for the client's next
    /// interleaved answer in place of the late estimate.
    pub kernel_transmit_times: AtomicU64,
    /// Of the `plain` and `keyed` answers, those to symmetric-active packets (in
    /// symmetric-passive mode): unconfigured peers.
    pub peer: AtomicU64,
    pub crypto_naks_sent: AtomicU64,
    pub nts_naks_sent: AtomicU64,
    pub rate_kisses_sent: AtomicU64,
    pub rate_limited: AtomicU64,
    pub deny_kisses_sent: AtomicU64,
    pub denied: AtomicU64,
    pub unauthenticated_dropped: AtomicU64,
    pub malformed: AtomicU64,
    pub refused: AtomicU64,
    pub auth_failed: AtomicU64,
}

/// The stateless responder. Share it between sockets and threads.
#[derive(Debug)]
pub struct Server {
    /// Swapped whole by a reload; a request in progress keeps the set it started with.
    keys: ArcSwap<KeyStore>,
    /// Key ids of configured peers: never used for stateless symmetric answers.
    peer_keys: Vec<u32>,
    nts: Option<SharedCookieKeys>,
    /// Per-client timestamps for interleaved mode; without it every reply is basic.
    interleave: Option<Mutex<InterleaveTable>>,
    options: ServerOptions,
    pub stats: ServerStats,
}

/// Cookie master keys shared with the NTS-KE server and the rotation timer.
pub type SharedCookieKeys = Arc<RwLock<CookieKeys>>;

/// How a request authenticated, and what its reply needs.
enum Auth<'a> {
    Plain,
    Mac(&'a SymmetricKey),
    CryptoNak,
    Nts {
        uid: &'a [u8],
        keys: SessionKeys,
        /// The new cookies, framed as fields: the reply's encrypted plaintext.
        cookie_fields: Vec<u8>,
    },
    NtsNak {
        uid: &'a [u8],
    },
}

impl Server {
    pub fn new(keys: KeyStore, options: ServerOptions) -> Self {
        Self {
            keys: ArcSwap::from_pointee(keys),
            peer_keys: Vec::new(),
            nts: None,
            interleave: None,
            options,
            stats: ServerStats::default(),
        }
    }

    /// Never answers symmetric-active packets under these key ids (the `[[peer]]`s'):
    /// those belong to the peers' associations.
    pub fn with_peer_keys(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.peer_keys = ids.into_iter().collect();
        self
    }

    /// Answers keyed requests with `keys` from now on (a reload): the next request
    /// sees the new set whole.
    pub fn replace_keys(&self, keys: KeyStore) {
        self.keys.store(Arc::new(keys));
    }

    /// Also answers NTS requests whose cookies open under `cookie_keys`.
    pub fn with_nts(mut self, cookie_keys: SharedCookieKeys) -> Self {
        self.nts = Some(cookie_keys);
        self
    }

    /// Answers client requests in interleaved mode when they ask for it, remembering
    /// up to `slots` clients (see [`InterleaveTable`]). Only
    /// [`handle_request_from`](Self::handle_request_from) uses it.
    pub fn with_interleave(mut self, slots: usize) -> Self {
        self.interleave = Some(Mutex::new(InterleaveTable::new(slots)));
        self
    }

    /// Whether replies may be interleaved, so that the caller should report when each
    /// reply left ([`handle_sent`](Self::handle_sent)).
    pub fn interleaves(&self) -> bool {
        self.interleave.is_some()
    }

    /// Handles one request received at `received`, always in basic mode. On success
    /// the reply is in `reply` (cleared first). `now` is read as late as possible, just
    /// before the transmit timestamp is written; `state` describes this server's clock;
    /// `rng` draws NTS nonces (the caller's cryptographic generator).
    pub fn handle_request(
        &self,
        request: &[u8],
        received: NtpTimestamp,
        state: &SyncState,
        now: impl FnOnce() -> NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        reply: &mut Vec<u8>,
    ) -> Result<Answer, DropReason> {
        self.handle(None, request, received, state, now, rng, reply)
    }

    /// [`handle_request`](Self::handle_request) for a request from `client`: with
    /// [`with_interleave`](Self::with_interleave), a plain, keyed or NTS client
    /// request naming the receive timestamp of this client's last reply gets an
    /// interleaved one. Report when the reply left with [`handle_sent`](Self::handle_sent).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_request_from(
        &self,
        client: IpAddr,
        request: &[u8],
        received: NtpTimestamp,
        state: &SyncState,
        now: impl FnOnce() -> NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        reply: &mut Vec<u8>,
    ) -> Result<Answer, DropReason> {
        self.handle(Some(client), request, received, state, now, rng, reply)
    }

    /// The reply to `client`'s request received at `received` left at `transmitted`
    /// (read right after the send returned): an interleaved reply to the client's next
    /// request carries it.
    pub fn handle_sent(&self, client: IpAddr, received: NtpTimestamp, transmitted: NtpTimestamp) {
        if let Some(table) = &self.interleave {
            table
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .handle_sent(client, received, transmitted);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        client: Option<IpAddr>,
        request: &[u8],
        received: NtpTimestamp,
        state: &SyncState,
        now: impl FnOnce() -> NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        reply: &mut Vec<u8>,
    ) -> Result<Answer, DropReason> {
        reply.clear();
        let mut interleaved = false;
        let result = self.respond(
            client,
            request,
            received,
            state,
            now,
            rng,
            reply,
            &mut interleaved,
        );
        if interleaved && result.is_ok() {
            self.stats.interleaved.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match &result {
            Ok(Answer::Plain) => &self.stats.plain,
            Ok(Answer::Keyed(_)) => &self.stats.keyed,
            Ok(Answer::CryptoNak) => &self.stats.crypto_naks_sent,
            Ok(Answer::Nts) => &self.stats.nts,
            Ok(Answer::NtsNak) => &self.stats.nts_naks_sent,
            Ok(Answer::RateKiss) => &self.stats.rate_kisses_sent,
            Ok(Answer::DenyKiss) => &self.stats.deny_kisses_sent,
            Err(DropReason::RateLimited) => &self.stats.rate_limited,
            Err(DropReason::Denied) => &self.stats.denied,
            Err(DropReason::Unauthenticated) => &self.stats.unauthenticated_dropped,
            Err(DropReason::Malformed(_)) => &self.stats.malformed,
            Err(
                DropReason::UnknownKey(_)
                | DropReason::BadMac(_)
                | DropReason::BadNts(_)
                | DropReason::PeerKey(_),
            ) => &self.stats.auth_failed,
            Err(_) => &self.stats.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if matches!(result, Ok(Answer::Plain | Answer::Keyed(_)))
            && reply.first().map(|b| Mode::from_bits(b & 0x07)) == Some(Mode::SymmetricPassive)
        {
            self.stats.peer.fetch_add(1, Ordering::Relaxed);
        }
        if result.is_err() {
            reply.clear();
        }
        result
    }

    /// Handles a request over its source's rate limit. If the limiter grants it a
    /// `kiss`, a plain client request gets a RATE kiss (an authenticated client would
    /// rightly ignore an unauthenticated one, so those get nothing); everything else is
    /// dropped, and counted.
    pub fn handle_rate_limited(
        &self,
        request: &[u8],
        kiss: bool,
        received: NtpTimestamp,
        now: impl FnOnce() -> NtpTimestamp,
        reply: &mut Vec<u8>,
    ) -> Result<Answer, DropReason> {
        let result = self.kiss(request, kiss, b"RATE", received, now, reply);
        let (counter, result) = match result {
            true => (&self.stats.rate_kisses_sent, Ok(Answer::RateKiss)),
            false => (&self.stats.rate_limited, Err(DropReason::RateLimited)),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Handles a request from a source the access list refuses, as
    /// [`handle_rate_limited`](Self::handle_rate_limited) does but with a DENY kiss
    /// (ADVERSARIAL 37).
    pub fn handle_denied(
        &self,
        request: &[u8],
        kiss: bool,
        received: NtpTimestamp,
        now: impl FnOnce() -> NtpTimestamp,
        reply: &mut Vec<u8>,
    ) -> Result<Answer, DropReason> {
        let result = self.kiss(request, kiss, b"DENY", received, now, reply);
        let (counter, result) = match result {
            true => (&self.stats.deny_kisses_sent, Ok(Answer::DenyKiss)),
            false => (&self.stats.denied, Err(DropReason::Denied)),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Writes a `code` kiss-o'-death into `reply` if `kiss` is granted and the request
    /// is a plain client request (no MAC, no extension fields, and `require-auth` off),
    /// and says whether it did. A kiss is a bare header, never larger than the request.
    fn kiss(
        &self,
        request: &[u8],
        kiss: bool,
        code: &[u8; 4],
        received: NtpTimestamp,
        now: impl FnOnce() -> NtpTimestamp,
        reply: &mut Vec<u8>,
    ) -> bool {
        reply.clear();
        match Packet::parse(request) {
            Ok(p)
                if kiss
                    && !self.options.require_auth
                    && (1..=4).contains(&p.header.version)
                    && p.header.mode == Mode::Client
                    && p.trailer.is_none()
                    && p.extensions.is_empty() =>
            {
                let kiss = Header {
                    leap: Leap::Unsynchronized,
                    version: p.header.version,
                    mode: Mode::Server,
                    stratum: 0,
                    poll: p.header.poll,
                    precision: 0,
                    root_delay: NtpShort::default(),
                    root_dispersion: NtpShort::default(),
                    reference_id: ReferenceId::from_ascii(code),
                    reference_time: NtpTimestamp::ZERO,
                    origin_time: p.header.transmit_time,
                    receive_time: received,
                    transmit_time: now(),
                };
                kiss.write(reply);
                true
            }
            _ => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        client: Option<IpAddr>,
        request: &[u8],
        received: NtpTimestamp,
        state: &SyncState,
        now: impl FnOnce() -> NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        reply: &mut Vec<u8>,
        interleaved: &mut bool,
    ) -> Result<Answer, DropReason> {
        let packet = Packet::parse(request).map_err(DropReason::Malformed)?;
        let symmetric_keys = self.keys.load();
        let header = &packet.header;
        if !(1..=4).contains(&header.version) {
            return Err(DropReason::UnsupportedVersion(header.version));
        }
        let reply_mode = match header.mode {
            Mode::Client => Mode::Server,
            Mode::SymmetricActive if self.options.answer_unknown_peers => Mode::SymmetricPassive,
            mode => return Err(DropReason::NotClientMode(mode)),
        };
        let symmetric = reply_mode == Mode::SymmetricPassive;
        let nts_fields = nts::ntp::has_nts_fields(&packet);
        if symmetric && nts_fields {
            return Err(DropReason::BadNts("NTS is not defined for symmetric mode"));
        }
        if let (true, Some(Trailer::Mac { key_id, .. })) = (symmetric, packet.trailer)
            && self.peer_keys.contains(&key_id)
        {
            return Err(DropReason::PeerKey(key_id));
        }
        // Authenticate before anything else is decided.
        // A poisoned lock still holds valid keys: a panic elsewhere must not stop NTP.
        let cookie_keys = self.nts.as_ref().map(|shared| {
            shared
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let nts_check = cookie_keys
            .as_deref()
            .map(|keys| nts::ntp::check_request(&packet, request, keys));
        // Without NTS configured, an NTS request gets nothing: a plain answer would only
        // be thrown away by the client.
        if self.nts.is_none() && nts_fields {
            return Err(DropReason::BadNts("NTS is not enabled here"));
        }
        let auth = match (nts_check, cookie_keys.as_deref()) {
            (Some(ServerNts::Drop(why)), _) => return Err(DropReason::BadNts(why)),
            (Some(ServerNts::Nak { uid }), _) => Auth::NtsNak { uid },
            (Some(ServerNts::Valid { uid, keys, cookies }), Some(cookie_keys)) => {
                // Sealed before the clock is read, to keep the transmit time late.
                let mut cookie_fields = Vec::new();
                nts::ntp::write_cookie_fields(&mut cookie_fields, cookie_keys, &keys, cookies, rng);
                Auth::Nts {
                    uid,
                    keys,
                    cookie_fields,
                }
            }
            _ => match packet.trailer {
                None if self.options.require_auth => return Err(DropReason::Unauthenticated),
                None => Auth::Plain,
                Some(Trailer::CryptoNak) => return Err(DropReason::CryptoNakRequest),
                Some(Trailer::Mac { key_id, .. }) => match symmetric_keys.get(key_id) {
                    None if self.options.crypto_nak && !symmetric => Auth::CryptoNak,
                    None => return Err(DropReason::UnknownKey(key_id)),
                    Some(key) => match mac::check_packet(key, &packet, request) {
                        Ok(()) => Auth::Mac(key),
                        Err(_) if self.options.crypto_nak && !symmetric => Auth::CryptoNak,
                        Err(_) => return Err(DropReason::BadMac(key_id)),
                    },
                },
            },
        };
        let mut response = Header {
            leap: state.leap,
            version: header.version,
            mode: reply_mode,
            stratum: state.stratum,
            poll: header.poll,
            precision: state.precision,
            root_delay: NtpShort::from_seconds(state.root_delay),
            root_dispersion: NtpShort::from_seconds(state.root_dispersion),
            reference_id: state.reference_id,
            reference_time: state.reference_time,
            origin_time: header.transmit_time,
            receive_time: received,
            transmit_time: NtpTimestamp::ZERO,
        };
        if let Auth::NtsNak { .. } = auth {
            // A kiss-o'-death: "your cookie or authenticator failed; re-key".
            response.leap = Leap::Unsynchronized;
            response.stratum = 0;
            response.reference_id = ReferenceId::from_ascii(b"NTSN");
        }
        let transmit = now();
        response.transmit_time = transmit;
        // Only a client request that passed every check reaches the table, and only
        // answers that carry time (not NAKs) take part (docs/PROTOCOL.md#interleaved-mode).
        let table = match (&auth, client, &self.interleave) {
            (Auth::Plain | Auth::Mac(_) | Auth::Nts { .. }, Some(client), Some(table))
                if !symmetric =>
            {
                Some((client, table))
            }
            _ => None,
        };
        let mut planned = None;
        if let Some((client, table)) = table {
            let exchange = table
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .plan(
                    client,
                    header.origin_time,
                    header.receive_time,
                    header.transmit_time,
                    received,
                    transmit,
                );
            response.receive_time = exchange.received;
            response.transmit_time = exchange.transmit;
            if let Some(previous) = exchange.previous_transmit {
                // RFC 9769 §2: the origin echoes the request's receive field, and the
                // transmit field is the previous reply's.
                response.origin_time = header.receive_time;
                response.transmit_time = previous;
                *interleaved = true;
            }
            planned = Some((table, exchange));
        }
        response.write(reply);
        let answer = match auth {
            Auth::Plain => Answer::Plain,
            Auth::Mac(key) => {
                mac::append_mac(key, reply);
                Answer::Keyed(key.id())
            }
            Auth::CryptoNak => {
                Trailer::CryptoNak.write(reply);
                Answer::CryptoNak
            }
            Auth::Nts {
                uid,
                keys,
                cookie_fields,
            } => {
                nts::ntp::write_response_fields(reply, uid, &keys.s2c, &cookie_fields, rng)
                    .ok_or(DropReason::Internal)?;
                Answer::Nts
            }
            Auth::NtsNak { uid } => {
                nts::ntp::write_nak_fields(reply, uid);
                Answer::NtsNak
            }
        };
        if reply.len() > request.len() {
            return Err(DropReason::WouldAmplify);
        }
        // The reply goes out: only now is it the client's last (ADVERSARIAL 36).
        if let Some((table, exchange)) = planned {
            table
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .commit(&exchange);
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyFileFormat;

    const RX: NtpTimestamp = NtpTimestamp::from_bits(0x1111_0000_0000_0000);
    const TX: NtpTimestamp = NtpTimestamp::from_bits(0x1111_0000_0100_0000);
    const CLIENT_TX: NtpTimestamp = NtpTimestamp::from_bits(0x0123_4567_89ab_cdef);

    fn keys() -> KeyStore {
        KeyStore::parse(
            "t",
            "1 SHA256 HEX:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
             2 AES128 HEX:000102030405060708090a0b0c0d0e0f\n\
             3 MD5 ASCII:md5secret\n",
            KeyFileFormat::Chrony,
        )
        .unwrap()
    }

    fn request(version: u8, mode: Mode) -> Vec<u8> {
        let header = Header {
            version,
            mode,
            ..Header::client_request(6, CLIENT_TX)
        };
        let mut out = Vec::new();
        header.write(&mut out);
        out
    }

    fn answer(server: &Server, req: &[u8]) -> (Result<Answer, DropReason>, Vec<u8>) {
        let state = SyncState::local_reference(1, RX, -20);
        let mut reply = Vec::new();
        let result = server.handle_request(req, RX, &state, || TX, &mut rand::rng(), &mut reply);
        (result, reply)
    }

    #[test]
    fn plain_request_gets_a_server_reply_echoing_version_and_transmit() {
        let server = Server::new(keys(), ServerOptions::default());
        for version in 1..=4 {
            let (result, reply) = answer(&server, &request(version, Mode::Client));
            assert_eq!(result, Ok(Answer::Plain));
            let p = Packet::parse(&reply).unwrap();
            assert_eq!(p.header.version, version);
            assert_eq!(p.header.mode, Mode::Server);
            assert_eq!(p.header.stratum, 1);
            assert_eq!(p.header.leap, Leap::NoWarning);
            assert_eq!(p.header.reference_id, ReferenceId::from_ascii(b"LOCL"));
            assert_eq!(p.header.origin_time, CLIENT_TX);
            assert_eq!(p.header.receive_time, RX);
            assert_eq!(p.header.transmit_time, TX);
            assert_eq!(p.header.poll, 6);
            assert_eq!(p.trailer, None);
        }
        assert_eq!(server.stats.plain.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn unsynchronized_state_is_announced() {
        let server = Server::new(keys(), ServerOptions::default());
        let mut reply = Vec::new();
        let state = SyncState::unsynchronized(-20);
        server
            .handle_request(
                &request(4, Mode::Client),
                RX,
                &state,
                || TX,
                &mut rand::rng(),
                &mut reply,
            )
            .unwrap();
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(
            (p.header.leap, p.header.stratum),
            (Leap::Unsynchronized, 16)
        );
    }

    #[test]
    fn keyed_request_is_answered_under_the_same_key() {
        let server = Server::new(keys(), ServerOptions::default());
        let store = keys();
        for id in [1, 2, 3] {
            let key = store.get(id).unwrap();
            let mut req = request(4, Mode::Client);
            mac::append_mac(key, &mut req);
            let (result, reply) = answer(&server, &req);
            assert_eq!(result, Ok(Answer::Keyed(id)));
            assert_eq!(reply.len(), req.len(), "same key, same trailer length");
            let p = Packet::parse(&reply).unwrap();
            assert_eq!(mac::check_packet(key, &p, &reply), Ok(()));
        }
    }

    /// chrony signs with SHA-256 and longer keys as NTPv3 with the whole digest.
    #[test]
    fn ntpv3_request_with_a_full_sha256_digest_gets_one_back() {
        let server = Server::new(keys(), ServerOptions::default());
        let store = keys();
        let key = store.get(1).unwrap();
        let mut req = request(3, Mode::Client);
        mac::append_mac(key, &mut req);
        assert_eq!(req.len(), 48 + 4 + 32);
        let (result, reply) = answer(&server, &req);
        assert_eq!(result, Ok(Answer::Keyed(1)));
        assert_eq!(reply.len(), 84);
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(p.header.version, 3);
        assert_eq!(mac::check_packet(key, &p, &reply), Ok(()));
    }

    #[test]
    fn failed_mac_is_dropped_or_nakked_as_configured() {
        let store = keys();
        let mut req = request(4, Mode::Client);
        mac::append_mac(store.get(1).unwrap(), &mut req);
        let last = req.len() - 1;
        req[last] ^= 0x80;
        let mut unknown = request(4, Mode::Client);
        unknown.extend_from_slice(&99u32.to_be_bytes());
        unknown.extend_from_slice(&[0; 20]);

        let quiet = Server::new(keys(), ServerOptions::default());
        assert_eq!(answer(&quiet, &req), (Err(DropReason::BadMac(1)), vec![]));
        assert_eq!(
            answer(&quiet, &unknown),
            (Err(DropReason::UnknownKey(99)), vec![])
        );
        assert_eq!(quiet.stats.auth_failed.load(Ordering::Relaxed), 2);

        let nak = Server::new(
            keys(),
            ServerOptions {
                crypto_nak: true,
                ..ServerOptions::default()
            },
        );
        for r in [&req, &unknown] {
            let (result, reply) = answer(&nak, r);
            assert_eq!(result, Ok(Answer::CryptoNak));
            assert_eq!(reply.len(), 52);
            assert_eq!(
                Packet::parse(&reply).unwrap().trailer,
                Some(Trailer::CryptoNak)
            );
        }
    }

    #[test]
    fn only_client_mode_is_answered() {
        // ADVERSARIAL 25: modes 0, 2 (unconfigured), 4, 5, 6, 7 get no reply; so does 1
        // when unknown peers are not answered.
        let server = Server::new(
            keys(),
            ServerOptions {
                answer_unknown_peers: false,
                ..ServerOptions::default()
            },
        );
        for bits in [0u8, 1, 2, 4, 5, 6, 7] {
            let mode = Mode::from_bits(bits);
            let (result, reply) = answer(&server, &request(4, mode));
            assert_eq!(result, Err(DropReason::NotClientMode(mode)));
            assert!(reply.is_empty());
        }
        // A valid MAC does not make a symmetric or broadcast packet answerable.
        let store = keys();
        for bits in [1u8, 2, 5] {
            let mut signed = request(4, Mode::from_bits(bits));
            mac::append_mac(store.get(1).unwrap(), &mut signed);
            assert_eq!(
                answer(&server, &signed),
                (
                    Err(DropReason::NotClientMode(Mode::from_bits(bits))),
                    vec![]
                )
            );
        }
        for version in [0, 5, 6, 7] {
            let (result, _) = answer(&server, &request(version, Mode::Client));
            assert_eq!(result, Err(DropReason::UnsupportedVersion(version)));
        }
        let mut nak = request(4, Mode::Client);
        nak.extend_from_slice(&[0; 4]);
        assert_eq!(answer(&server, &nak).0, Err(DropReason::CryptoNakRequest));
        assert!(matches!(
            answer(&server, &[0x23; 47]).0,
            Err(DropReason::Malformed(_))
        ));
    }

    #[test]
    fn rate_limited_plain_requests_get_a_rate_kiss_and_others_nothing() {
        let server = Server::new(keys(), ServerOptions::default());
        let mut reply = Vec::new();
        let req = request(4, Mode::Client);
        assert_eq!(
            server.handle_rate_limited(&req, true, RX, || TX, &mut reply),
            Ok(Answer::RateKiss)
        );
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(
            (p.header.stratum, p.header.reference_id),
            (0, ReferenceId::from_ascii(b"RATE"))
        );
        assert_eq!(p.header.origin_time, CLIENT_TX);
        assert_eq!(reply.len(), 48);
        let mut keyed = req.clone();
        mac::append_mac(keys().get(1).unwrap(), &mut keyed);
        for r in [keyed, request(4, Mode::SymmetricActive), vec![0x23; 20]] {
            assert_eq!(
                server.handle_rate_limited(&r, true, RX, || TX, &mut reply),
                Err(DropReason::RateLimited)
            );
            assert!(reply.is_empty());
        }
        // Without a kiss granted, even a plain request is dropped, and counted.
        assert_eq!(
            server.handle_rate_limited(&req, false, RX, || TX, &mut reply),
            Err(DropReason::RateLimited)
        );
        assert!(reply.is_empty());
        assert_eq!(server.stats.rate_kisses_sent.load(Ordering::Relaxed), 1);
        assert_eq!(server.stats.rate_limited.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn reply_is_never_larger_than_request() {
        let server = Server::new(
            keys(),
            ServerOptions {
                crypto_nak: true,
                ..ServerOptions::default()
            },
        );
        // A request with extension fields is answered with the bare header.
        let mut req = request(4, Mode::Client);
        req.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
        req.extend_from_slice(&[0; 12]);
        let (result, reply) = answer(&server, &req);
        assert_eq!(result, Ok(Answer::Plain));
        assert_eq!(reply.len(), 48);
    }

    /// ADVERSARIAL 21: an unconfigured symmetric-active packet gets a stateless passive
    /// answer (signed under the key it used, if we have that key) that is no larger than
    /// it, or nothing; never an association. Mode 2 is never answered.
    #[test]
    fn unknown_symmetric_active_gets_a_stateless_passive_answer() {
        let server = Server::new(keys(), ServerOptions::default());
        let (result, reply) = answer(&server, &request(4, Mode::SymmetricActive));
        assert_eq!(result, Ok(Answer::Plain));
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(p.header.mode, Mode::SymmetricPassive);
        assert_eq!(p.header.origin_time, CLIENT_TX);
        assert_eq!(reply.len(), 48);
        let key = keys().get(2).cloned().unwrap();
        let mut signed = request(4, Mode::SymmetricActive);
        mac::append_mac(&key, &mut signed);
        let (result, reply) = answer(&server, &signed);
        assert_eq!(result, Ok(Answer::Keyed(2)));
        assert!(reply.len() <= signed.len());
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(mac::check_packet(&key, &p, &reply), Ok(()));
        // Both answers are counted as peers' too (and as plain and keyed); a client's
        // is not.
        let _ = answer(&server, &request(4, Mode::Client));
        let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        assert_eq!(count(&server.stats.peer), 2);
        assert_eq!(count(&server.stats.plain), 2);
        assert_eq!(count(&server.stats.keyed), 1);
        // Never under a peer's key: that would sign what the peer's association takes.
        let with_peers = Server::new(keys(), ServerOptions::default()).with_peer_keys([2]);
        assert_eq!(
            answer(&with_peers, &signed),
            (Err(DropReason::PeerKey(2)), vec![])
        );
        // A bad MAC gets nothing, even where clients get crypto-NAKs.
        let naks = Server::new(
            keys(),
            ServerOptions {
                crypto_nak: true,
                ..ServerOptions::default()
            },
        );
        *signed.last_mut().unwrap() ^= 1;
        assert_eq!(answer(&naks, &signed), (Err(DropReason::BadMac(2)), vec![]));
        // Under a key we do not have: nothing, not a NAK.
        let mut unknown_key = request(4, Mode::SymmetricActive);
        mac::append_mac(
            &crate::auth::SymmetricKey::new(9, crate::auth::KeyType::Aes128Cmac, vec![1; 16])
                .unwrap(),
            &mut unknown_key,
        );
        assert_eq!(
            answer(&naks, &unknown_key),
            (Err(DropReason::UnknownKey(9)), vec![])
        );
        // NTS is not defined for peering.
        let mut nts = request(4, Mode::SymmetricActive);
        nts.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]);
        nts.extend_from_slice(&[7; 32]);
        assert!(matches!(
            answer(&server, &nts).0,
            Err(DropReason::BadNts(_))
        ));
        assert_eq!(
            answer(&server, &request(4, Mode::SymmetricPassive)).0,
            Err(DropReason::NotClientMode(Mode::SymmetricPassive))
        );
    }

    /// ADVERSARIAL 37: under `require-auth`, a plain request (client or symmetric) is
    /// dropped and counted, and never kissed; keyed and NTS requests are answered.
    #[test]
    fn require_auth_drops_plain_requests_and_answers_keyed_and_nts() {
        use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
        use crate::auth::nts::cookie::{CookieKeys, Rotation};
        use crate::auth::nts::ntp::NtsSession;
        use crate::proto::client::{ClientAuth, ClientExchange};

        let mut cookie_keys = CookieKeys::random(Rotation::default(), vec![]);
        cookie_keys.update(1_800_000_000, &mut rand::rng());
        let session_keys = || {
            let alg = AeadAlgorithm::AesSivCmac256;
            SessionKeys {
                c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
            }
        };
        let cookies = (0..2)
            .map(|_| cookie_keys.seal(&session_keys(), &mut rand::rng()).unwrap())
            .collect();
        let options = ServerOptions {
            require_auth: true,
            ..ServerOptions::default()
        };
        let server = Server::new(keys(), options).with_nts(Arc::new(RwLock::new(cookie_keys)));

        for plain in [request(4, Mode::Client), request(4, Mode::SymmetricActive)] {
            assert_eq!(
                answer(&server, &plain),
                (Err(DropReason::Unauthenticated), vec![])
            );
        }
        assert_eq!(
            server.stats.unauthenticated_dropped.load(Ordering::Relaxed),
            2
        );
        // Not even a kiss: a plain request gets nothing at all.
        let mut reply = Vec::new();
        let plain = request(4, Mode::Client);
        assert_eq!(
            server.handle_rate_limited(&plain, true, RX, || TX, &mut reply),
            Err(DropReason::RateLimited)
        );
        assert_eq!(
            server.handle_denied(&plain, true, RX, || TX, &mut reply),
            Err(DropReason::Denied)
        );
        assert!(reply.is_empty());

        let mut keyed = request(4, Mode::Client);
        mac::append_mac(keys().get(2).unwrap(), &mut keyed);
        assert_eq!(answer(&server, &keyed).0, Ok(Answer::Keyed(2)));

        let session = NtsSession::new(session_keys(), cookies);
        let mut client = ClientExchange::new(ClientAuth::Nts(session), 6);
        let mut nts_request = Vec::new();
        client
            .poll_request(RX, &mut rand::rng(), &mut nts_request)
            .unwrap();
        assert_eq!(answer(&server, &nts_request).0, Ok(Answer::Nts));
        assert_eq!(server.stats.plain.load(Ordering::Relaxed), 0);
    }

    /// ADVERSARIAL 37: a refused plain client request gets a DENY kiss when one is
    /// granted (the worker grants one per source and interval), never larger than the
    /// request; keyed, NTS-looking and non-client requests get nothing. All counted.
    #[test]
    fn denied_plain_requests_get_a_deny_kiss_and_others_nothing() {
        let server = Server::new(keys(), ServerOptions::default());
        let mut reply = Vec::new();
        let req = request(3, Mode::Client);
        assert_eq!(
            server.handle_denied(&req, true, RX, || TX, &mut reply),
            Ok(Answer::DenyKiss)
        );
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(
            (p.header.leap, p.header.stratum, p.header.reference_id),
            (Leap::Unsynchronized, 0, ReferenceId::from_ascii(b"DENY"))
        );
        assert_eq!((p.header.version, p.header.mode), (3, Mode::Server));
        assert_eq!(p.header.origin_time, CLIENT_TX);
        assert!(reply.len() <= req.len());
        let mut keyed = req.clone();
        mac::append_mac(keys().get(1).unwrap(), &mut keyed);
        let mut with_field = req.clone();
        with_field.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]);
        with_field.extend_from_slice(&[7; 32]);
        for r in [
            keyed,
            with_field,
            request(4, Mode::SymmetricActive),
            vec![0x23; 20],
        ] {
            assert_eq!(
                server.handle_denied(&r, true, RX, || TX, &mut reply),
                Err(DropReason::Denied)
            );
            assert!(reply.is_empty());
        }
        // No kiss granted (the source had its kiss this interval): nothing.
        assert_eq!(
            server.handle_denied(&req, false, RX, || TX, &mut reply),
            Err(DropReason::Denied)
        );
        assert!(reply.is_empty());
        assert_eq!(server.stats.deny_kisses_sent.load(Ordering::Relaxed), 1);
        assert_eq!(server.stats.denied.load(Ordering::Relaxed), 5);
        assert_eq!(server.stats.plain.load(Ordering::Relaxed), 0);
    }

    /// ADVERSARIAL 11/17: an NTS request to a server without NTS gets nothing (a plain
    /// answer would only be thrown away), and is counted as failed authentication.
    #[test]
    fn nts_requests_without_nts_get_nothing() {
        let server = Server::new(keys(), ServerOptions::default());
        let mut req = request(4, Mode::Client);
        req.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]);
        req.extend_from_slice(&[7; 32]);
        assert_eq!(
            answer(&server, &req),
            (Err(DropReason::BadNts("NTS is not enabled here")), vec![])
        );
        assert_eq!(server.stats.auth_failed.load(Ordering::Relaxed), 1);
    }

    /// A request with the given origin, receive and transmit fields.
    fn request_fields(origin: NtpTimestamp, rx: NtpTimestamp, tx: NtpTimestamp) -> Vec<u8> {
        let header = Header {
            origin_time: origin,
            receive_time: rx,
            ..Header::client_request(6, tx)
        };
        let mut out = Vec::new();
        header.write(&mut out);
        out
    }

    fn answer_from(
        server: &Server,
        client: std::net::IpAddr,
        req: &[u8],
        rx: NtpTimestamp,
        tx: NtpTimestamp,
    ) -> (Result<Answer, DropReason>, Vec<u8>) {
        let state = SyncState::local_reference(1, rx, -20);
        let mut reply = Vec::new();
        let result = server.handle_request_from(
            client,
            req,
            rx,
            &state,
            || tx,
            &mut rand::rng(),
            &mut reply,
        );
        (result, reply)
    }

    const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OTHER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));

    fn ts(ms: u64) -> NtpTimestamp {
        RX.add_seconds(ms as f64 / 1000.0)
    }

    /// RFC 9769 §2, the exchange of its figure: a basic request and reply, then a
    /// request naming that reply's receive timestamp, answered with the origin echoing
    /// the request's receive field, this request's receive time and the first reply's
    /// transmit time as reported after the send. Plain, keyed and NTS alike.
    #[test]
    fn a_request_naming_the_last_receive_timestamp_gets_an_interleaved_reply() {
        let keyed = |mut r: Vec<u8>| {
            mac::append_mac(keys().get(2).unwrap(), &mut r);
            r
        };
        let plain = |r: Vec<u8>| r;
        for (sign, expected) in [
            (&plain as &dyn Fn(Vec<u8>) -> Vec<u8>, Answer::Plain),
            (&keyed, Answer::Keyed(2)),
        ] {
            let server = Server::new(keys(), ServerOptions::default()).with_interleave(64);
            let first = sign(request_fields(
                NtpTimestamp::ZERO,
                NtpTimestamp::ZERO,
                ts(1),
            ));
            let (result, reply) = answer_from(&server, CLIENT, &first, ts(10), ts(11));
            assert_eq!(result, Ok(expected));
            let basic = Packet::parse(&reply).unwrap().header;
            assert_eq!(
                (basic.origin_time, basic.receive_time, basic.transmit_time),
                (ts(1), ts(10), ts(11))
            );
            server.handle_sent(CLIENT, ts(10), ts(12));
            let second = sign(request_fields(basic.receive_time, ts(13), ts(14)));
            let (result, reply) = answer_from(&server, CLIENT, &second, ts(20), ts(21));
            assert_eq!(result, Ok(expected));
            let p = Packet::parse(&reply).unwrap();
            assert_eq!(
                (
                    p.header.origin_time,
                    p.header.receive_time,
                    p.header.transmit_time
                ),
                (ts(13), ts(20), ts(12))
            );
            if let Answer::Keyed(id) = expected {
                assert_eq!(
                    mac::check_packet(keys().get(id).unwrap(), &p, &reply),
                    Ok(())
                );
            }
            assert_eq!(server.stats.interleaved.load(Ordering::Relaxed), 1);
            // The same request again: its receive timestamp was used; a basic reply.
            let (_, reply) = answer_from(&server, CLIENT, &second, ts(30), ts(31));
            assert_eq!(Packet::parse(&reply).unwrap().header.origin_time, ts(14));
        }
    }

    /// ADVERSARIAL 36: another address naming a client's receive timestamp, a request
    /// naming a timestamp never issued, a symmetric packet, a request without a client
    /// address, and a request to a server without a table all get basic replies.
    #[test]
    fn interleaved_replies_go_only_to_the_client_that_asked_correctly() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(64);
        let first = request_fields(NtpTimestamp::ZERO, NtpTimestamp::ZERO, ts(1));
        assert!(
            answer_from(&server, CLIENT, &first, ts(10), ts(11))
                .0
                .is_ok()
        );
        let basic = |reply: &[u8], tx| {
            let h = Packet::parse(reply).unwrap().header;
            h.origin_time == tx && h.transmit_time != ts(11)
        };
        let stolen = request_fields(ts(10), ts(13), ts(14));
        let (_, reply) = answer_from(&server, OTHER, &stolen, ts(20), ts(21));
        assert!(basic(&reply, ts(14)));
        let unknown = request_fields(ts(9), ts(13), ts(15));
        let (_, reply) = answer_from(&server, CLIENT, &unknown, ts(30), ts(31));
        assert!(basic(&reply, ts(15)));
        let mut symmetric = request_fields(ts(30), ts(13), ts(16));
        symmetric[0] = (symmetric[0] & !7) | 1;
        let (result, reply) = answer_from(&server, CLIENT, &symmetric, ts(40), ts(41));
        assert_eq!(result, Ok(Answer::Plain));
        assert!(basic(&reply, ts(16)));
        // The symmetric packet was not recorded: the client's last request is still the
        // one received at 30 ms.
        let (_, reply) = answer(&server, &request_fields(ts(30), ts(13), ts(17)));
        assert!(basic(&reply, ts(17)));
        let without = Server::new(keys(), ServerOptions::default());
        assert!(
            answer_from(&without, CLIENT, &first, ts(10), ts(11))
                .0
                .is_ok()
        );
        let (_, reply) = answer_from(&without, CLIENT, &stolen, ts(20), ts(21));
        assert!(basic(&reply, ts(14)));
        assert_eq!(server.stats.interleaved.load(Ordering::Relaxed), 0);
    }

    /// A request that fails authentication changes nothing: the client's next genuine
    /// interleaved request is still answered in interleaved mode.
    #[test]
    fn a_forged_request_does_not_touch_the_table() {
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(64);
        let key = keys().get(1).cloned().unwrap();
        let mut first = request_fields(NtpTimestamp::ZERO, NtpTimestamp::ZERO, ts(1));
        mac::append_mac(&key, &mut first);
        assert!(
            answer_from(&server, CLIENT, &first, ts(10), ts(11))
                .0
                .is_ok()
        );
        let mut forged = request_fields(NtpTimestamp::ZERO, ts(2), ts(3));
        mac::append_mac(&key, &mut forged);
        *forged.last_mut().unwrap() ^= 1;
        let (result, _) = answer_from(&server, CLIENT, &forged, ts(15), ts(16));
        assert_eq!(result, Err(DropReason::BadMac(1)));
        let mut second = request_fields(ts(10), ts(13), ts(14));
        mac::append_mac(&key, &mut second);
        let (_, reply) = answer_from(&server, CLIENT, &second, ts(20), ts(21));
        let h = Packet::parse(&reply).unwrap().header;
        assert_eq!((h.origin_time, h.transmit_time), (ts(13), ts(11)));
    }
}
