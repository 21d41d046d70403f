//! One upstream source as a sans-IO state machine: when to poll, what to send, what a
//! reply means, when NTS needs a new key exchange.
//!
//! Driven by the daemon (sockets, TLS) or the simulator; time comes in as arguments:
//! `now` is the caller's monotonic seconds, `local` the disciplined clock's reading.
//!
//! * Poll interval: the sync engine's wish ([`Source::set_system_poll`]) within
//!   `min_poll..=max_poll`, raised by RATE kisses; `iburst` sends the first
//!   [`IBURST_COUNT`] requests after the first at most [`IBURST_INTERVAL`] apart.
//! * Reachability: an 8-bit register, shifted at every poll, set by every accepted
//!   reply. A source silent for 8 polls polls at `max_poll`.
//! * Kisses (only those that passed the on-wire and authentication checks of
//!   [`ClientExchange`]): DENY and RSTR stop the source for good; RATE doubles the
//!   interval until good samples bring it back; NTSNs for two requests in a row, no
//!   cookies left, or 8 silent polls mean a new NTS-KE at the next poll, retried with
//!   backoff (10 s × 1.5ⁿ, at most 5 days) while it fails.

use rand::CryptoRng;

use crate::auth::SymmetricKey;
use crate::auth::nts::ntp::NtsSession;
use crate::proto::client::{ClientAuth, ClientExchange, Reject, RequestError, Response, Sample};
pub use crate::proto::polling::Action;
use crate::proto::polling::{Reach, poll_exponent};
use crate::wire::{KissCode, NtpTimestamp};

/// Requests sent quickly at start with `iburst`.
pub const IBURST_COUNT: u32 = 4;
/// Seconds between them.
pub const IBURST_INTERVAL: f64 = 2.0;
/// First wait before retrying a failed NTS-KE, seconds; it grows by half each time up
/// to five days (docs/PROTOCOL.md, "NTS-KE retries"), and only a good sample resets it.
const KE_RETRY_FIRST: f64 = 10.0;
const KE_RETRY_GROWTH: f64 = 1.5;
const KE_RETRY_MAX: f64 = 5.0 * 86_400.0;
/// A key exchange not reported back within this long counts as failed.
pub const KE_DEADLINE: f64 = 30.0;
/// NTSNs (for different requests) in a row that mean the server has lost our keys.
const NTSN_REKEY: u32 = 2;

/// How a source must authenticate its replies.
#[derive(Debug, Clone)]
pub enum SourceAuth {
    /// Explicitly configured `insecure = true`.
    Insecure,
    Key(SymmetricKey),
    /// NTS: the daemon runs NTS-KE when the source asks for it.
    Nts,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceOptions {
    pub min_poll: i8,
    pub max_poll: i8,
    pub iburst: bool,
    /// Ask for interleaved mode (RFC 9769).
    pub xleave: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            min_poll: 6,
            max_poll: 10,
            iburst: false,
            xleave: false,
        }
    }
}

/// What a reply amounted to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A measurement for the sync engine.
    Sample(Sample),
    /// An authentic kiss-o'-death, already acted on.
    Kiss(KissCode),
    /// Dropped: forged, replayed, unauthenticated or malformed. Nothing changed.
    Rejected(Reject),
}

#[derive(Debug)]
enum State {
    /// Waiting for keys (NTS), or for the next attempt at them.
    NeedsKeys {
        retry_at: f64,
    },
    /// A key exchange is running; past the deadline it counts as failed.
    KeyExchanging {
        deadline: f64,
    },
    Polling(Box<ClientExchange>),
    /// Denied by the server (DENY/RSTR): never polled again.
    Stopped(KissCode),
}

#[derive(Debug)]
pub struct Source {
    nts: bool,
    options: SourceOptions,
    state: State,
    next_poll: f64,
    system_poll: i8,
    /// Extra poll exponent from RATE kisses; each good sample takes one back.
    rate_backoff: i8,
    reach: Reach,
    /// NTSNs for different requests in a row, and the request the last one answered.
    naks: u32,
    last_nak_poll: Option<u64>,
    /// Set when the next poll must run NTS-KE instead (the current request stays
    /// answerable until then).
    rekey_due: bool,
    ke_backoff: f64,
    iburst_left: u32,
}

impl Source {
    pub fn new(auth: SourceAuth, options: SourceOptions, now: f64) -> Self {
        let (nts, state) = match auth {
            SourceAuth::Nts => (true, State::NeedsKeys { retry_at: now }),
            SourceAuth::Insecure => (false, State::Polling(exchange(ClientAuth::None, options))),
            SourceAuth::Key(key) => (
                false,
                State::Polling(exchange(ClientAuth::Key(key), options)),
            ),
        };
        Self {
            nts,
            options,
            state,
            next_poll: now,
            system_poll: options.min_poll,
            rate_backoff: 0,
            reach: Reach::default(),
            naks: 0,
            last_nak_poll: None,
            rekey_due: false,
            ke_backoff: KE_RETRY_FIRST,
            iburst_left: if options.iburst { IBURST_COUNT } else { 0 },
        }
    }

    /// The poll interval in force (log2 seconds).
    pub fn poll(&self) -> i8 {
        poll_exponent(
            self.options.min_poll,
            self.options.max_poll,
            self.system_poll,
            self.rate_backoff,
            &self.reach,
        )
    }

    /// The engine's wish for the poll interval.
    pub fn set_system_poll(&mut self, poll: i8) {
        self.system_poll = poll;
    }

    /// Whether the source answered any of its last 8 polls and is still being polled.
    pub fn is_reachable(&self) -> bool {
        self.reach.any() && matches!(self.state, State::Polling(_))
    }

    /// The reach register (newest poll in the low bit).
    pub fn reach(&self) -> u8 {
        self.reach.register()
    }

    /// Uses `key` from now on if this source is keyed under its id (a reload).
    pub fn replace_key(&mut self, key: &SymmetricKey) -> bool {
        match &mut self.state {
            State::Polling(exchange) => exchange.replace_key(key),
            _ => false,
        }
    }

    /// NTS cookies left (`None` without NTS or before keys).
    /// Whether the last sample measured the exchange before the last reply (an
    /// interleaved reply, `xleave`): the caller takes it as of that exchange.
    pub fn last_sample_interleaved(&self) -> bool {
        match &self.state {
            State::Polling(exchange) => exchange.last_sample_interleaved(),
            _ => false,
        }
    }

    pub fn nts_cookies(&self) -> Option<usize> {
        match &self.state {
            State::Polling(exchange) => exchange.nts_cookies(),
            _ => None,
        }
    }

    /// The kiss that stopped this source, if one did.
    pub fn stopped(&self) -> Option<KissCode> {
        match self.state {
            State::Stopped(code) => Some(code),
            _ => None,
        }
    }

    /// When the driver must next call [`Source::handle_timeout`] (`None`: never).
    pub fn poll_timeout(&self) -> Option<f64> {
        match self.state {
            State::NeedsKeys { retry_at } => Some(retry_at),
            State::KeyExchanging { deadline } => Some(deadline),
            State::Stopped(_) => None,
            State::Polling(_) => Some(self.next_poll),
        }
    }

    /// Time has reached `now` (local clock `local`): returns what to do. For
    /// [`Action::Transmit`] the request is in `out`.
    pub fn handle_timeout(
        &mut self,
        now: f64,
        local: NtpTimestamp,
        rng: &mut (impl CryptoRng + ?Sized),
        out: &mut Vec<u8>,
    ) -> Option<Action> {
        let poll = self.poll();
        match &mut self.state {
            State::NeedsKeys { retry_at } if now >= *retry_at => Some(self.start_key_exchange(now)),
            State::KeyExchanging { deadline } if now >= *deadline => {
                self.key_exchange_failed(now);
                None
            }
            State::Polling(_)
                if now >= self.next_poll
                    && (self.rekey_due || self.nts && self.reach.is_silent()) =>
            {
                Some(self.start_key_exchange(now))
            }
            State::Polling(exchange) if now >= self.next_poll => {
                exchange.set_poll(poll);
                if let Err(RequestError::NoCookies) = exchange.poll_request(local, rng, out) {
                    return Some(self.start_key_exchange(now));
                }
                // The register shifts at every poll; a reply sets the new low bit.
                self.reach.on_poll();
                let mut interval = 2f64.powi(i32::from(poll));
                if self.iburst_left > 0 {
                    self.iburst_left -= 1;
                    interval = interval.min(IBURST_INTERVAL);
                }
                self.next_poll = now + interval;
                Some(Action::Transmit)
            }
            _ => None,
        }
    }

    fn start_key_exchange(&mut self, now: f64) -> Action {
        self.rekey_due = false;
        self.state = State::KeyExchanging {
            deadline: now + KE_DEADLINE,
        };
        Action::KeyExchange
    }

    fn key_exchange_failed(&mut self, now: f64) {
        self.state = State::NeedsKeys {
            retry_at: now + self.ke_backoff,
        };
        self.ke_backoff = (self.ke_backoff * KE_RETRY_GROWTH).min(KE_RETRY_MAX);
    }

    /// The outcome of NTS-KE: a fresh session, or why it failed.
    pub fn handle_key_exchange(&mut self, result: Result<NtsSession, String>, now: f64) {
        if !matches!(self.state, State::KeyExchanging { .. }) {
            return;
        }
        match result {
            Ok(session) => {
                self.naks = 0;
                self.last_nak_poll = None;
                self.reach.clear_silence();
                self.next_poll = now;
                self.state = State::Polling(exchange(ClientAuth::Nts(session), self.options));
            }
            Err(_) => self.key_exchange_failed(now),
        }
    }

    /// A datagram arrived on the socket of the current request at local time `local`.
    pub fn handle_response(&mut self, bytes: &[u8], local: NtpTimestamp, now: f64) -> Event {
        let State::Polling(exchange) = &mut self.state else {
            return Event::Rejected(Reject::NotExpected);
        };
        match exchange.handle_response(bytes, local) {
            Err(reject) => Event::Rejected(reject),
            // An NTSN is unauthenticated and stays answerable until the next request:
            // copies of one count once, and the re-key waits for the next poll.
            Ok(Response::Kiss(KissCode::NtsNak))
                if self.last_nak_poll == Some(self.reach.polls_sent()) =>
            {
                Event::Rejected(Reject::Duplicate)
            }
            Ok(Response::Kiss(KissCode::NtsNak)) => {
                self.last_nak_poll = Some(self.reach.polls_sent());
                self.naks += 1;
                if self.naks >= NTSN_REKEY {
                    self.rekey_due = true;
                }
                Event::Kiss(KissCode::NtsNak)
            }
            Ok(Response::Kiss(code)) => {
                self.reached();
                match code {
                    KissCode::Deny | KissCode::Restrict => self.state = State::Stopped(code),
                    KissCode::Rate => {
                        self.rate_backoff = self.rate_backoff.saturating_add(1).min(8);
                        self.next_poll =
                            self.next_poll.max(now + 2f64.powi(i32::from(self.poll())));
                    }
                    _ => {}
                }
                Event::Kiss(code)
            }
            Ok(Response::Sample(sample)) => {
                self.reached();
                self.naks = 0;
                self.rekey_due = false;
                self.ke_backoff = KE_RETRY_FIRST;
                self.rate_backoff = (self.rate_backoff - 1).max(0);
                Event::Sample(sample)
            }
        }
    }

    fn reached(&mut self) {
        self.reach.on_answer();
    }
}

fn exchange(auth: ClientAuth, options: SourceOptions) -> Box<ClientExchange> {
    let exchange = ClientExchange::new(auth, 0);
    Box::new(if options.xleave {
        exchange.with_xleave()
    } else {
        exchange
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyStore, mac};
    use crate::proto::client::Reject;
    use crate::wire::{Header, Mode, ReferenceId};

    const LOCAL: NtpTimestamp = NtpTimestamp::from_bits(0xe000_0000_0000_0000);

    fn key() -> SymmetricKey {
        crate::proto::test_keys().get(1).cloned().unwrap()
    }

    /// Sends the first request; returns its transmit field (what a reply must echo).
    fn first_request(source: &mut Source) -> NtpTimestamp {
        let mut out = Vec::new();
        assert_eq!(
            source.handle_timeout(0.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::Transmit)
        );
        Header::parse(&out).unwrap().transmit_time
    }

    fn kiss(code: &[u8; 4], origin: NtpTimestamp) -> Vec<u8> {
        let mut header = Header::client_request(6, LOCAL.add_seconds(0.001));
        header.mode = Mode::Server;
        header.stratum = 0;
        header.reference_id = ReferenceId(*code);
        header.origin_time = origin;
        header.receive_time = LOCAL;
        let mut out = Vec::new();
        header.write(&mut out);
        out
    }

    /// ADVERSARIAL 22: an off-path kiss (wrong origin) is dropped and changes nothing.
    #[test]
    fn off_path_kiss_is_dropped() {
        let mut source = Source::new(SourceAuth::Insecure, SourceOptions::default(), 0.0);
        let origin = first_request(&mut source);
        let forged = kiss(b"DENY", origin.add_seconds(1.0));
        let event = source.handle_response(&forged, LOCAL, 0.01);
        assert_eq!(event, Event::Rejected(Reject::BogusOrigin));
        assert_eq!(source.stopped(), None);
        // The genuine kiss that follows is still honoured.
        let event = source.handle_response(&kiss(b"DENY", origin), LOCAL, 0.02);
        assert_eq!(event, Event::Kiss(KissCode::Deny));
        assert_eq!(source.stopped(), Some(KissCode::Deny));
        assert_eq!(source.poll_timeout(), None);
    }

    /// ADVERSARIAL 22: a kiss with the right origin but no MAC, for a keyed source, is
    /// dropped; the same kiss signed with the source's key is honoured.
    #[test]
    fn unauthenticated_kiss_for_a_keyed_source_is_dropped() {
        let mut source = Source::new(SourceAuth::Key(key()), SourceOptions::default(), 0.0);
        let origin = first_request(&mut source);
        let event = source.handle_response(&kiss(b"RSTR", origin), LOCAL, 0.01);
        assert!(
            matches!(event, Event::Rejected(Reject::Authentication(_))),
            "{event:?}"
        );
        assert_eq!(source.stopped(), None);
        let mut signed = kiss(b"RSTR", origin);
        mac::append_mac(&key(), &mut signed);
        assert_eq!(
            source.handle_response(&signed, LOCAL, 0.02),
            Event::Kiss(KissCode::Restrict)
        );
        assert_eq!(source.stopped(), Some(KissCode::Restrict));
    }

    #[test]
    fn rate_kiss_doubles_the_interval() {
        let mut source = Source::new(SourceAuth::Insecure, SourceOptions::default(), 0.0);
        let origin = first_request(&mut source);
        assert_eq!(source.poll(), 6);
        assert_eq!(
            source.handle_response(&kiss(b"RATE", origin), LOCAL, 0.01),
            Event::Kiss(KissCode::Rate)
        );
        assert_eq!(source.poll(), 7);
        assert!(source.poll_timeout().unwrap() >= 128.0);
    }

    #[test]
    fn iburst_then_the_poll_interval_and_reach() {
        let options = SourceOptions {
            iburst: true,
            ..SourceOptions::default()
        };
        let mut source = Source::new(SourceAuth::Insecure, options, 0.0);
        let mut out = Vec::new();
        let mut sent = Vec::new();
        let mut now = 0.0;
        while now < 200.0 {
            if source.handle_timeout(now, LOCAL, &mut rand::rng(), &mut out)
                == Some(Action::Transmit)
            {
                sent.push(now);
            }
            now = source.poll_timeout().unwrap();
        }
        assert_eq!(sent, [0.0, 2.0, 4.0, 6.0, 8.0, 72.0, 136.0]);
        // Never answered: the register is empty.
        assert!(!source.is_reachable());
    }

    /// NTS: no keys at first; a failed key exchange (or one that never reports back)
    /// is retried later, each time later than the last.
    #[test]
    fn nts_source_asks_for_key_exchange_and_backs_off() {
        let mut source = Source::new(SourceAuth::Nts, SourceOptions::default(), 0.0);
        let mut out = Vec::new();
        assert_eq!(
            source.handle_timeout(0.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::KeyExchange)
        );
        assert_eq!(source.poll_timeout(), Some(KE_DEADLINE));
        source.handle_key_exchange(Err("refused".into()), 1.0);
        assert_eq!(source.poll_timeout(), Some(11.0));
        assert_eq!(
            source.handle_timeout(11.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::KeyExchange)
        );
        source.handle_key_exchange(Err("refused".into()), 12.0);
        assert_eq!(source.poll_timeout(), Some(27.0));
        assert_eq!(
            source.handle_timeout(27.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::KeyExchange)
        );
        assert_eq!(
            source.handle_timeout(27.0 + KE_DEADLINE, LOCAL, &mut rand::rng(), &mut out),
            None
        );
        assert_eq!(source.poll_timeout(), Some(27.0 + KE_DEADLINE + 22.5));
    }

    /// ADVERSARIAL 16: copies of one NTSN count once, and even two NTSNs for two
    /// requests leave the session until the next poll, which then re-keys.
    #[test]
    fn ntsn_copies_count_once_and_rekeying_waits_for_the_next_poll() {
        use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
        use crate::auth::nts::cookie::{CookieKeys, Rotation, SessionKeys};
        use crate::proto::server::{Server, ServerOptions, SyncState};
        use std::sync::{Arc, RwLock};

        let session_keys = || {
            let alg = AeadAlgorithm::AesSivCmac256;
            SessionKeys {
                c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
            }
        };
        let cookie_keys = || {
            let mut keys = CookieKeys::random(Rotation::default(), vec![]);
            keys.update(1_800_000_000, &mut rand::rng());
            keys
        };
        // Cookies from one server, requests to another that cannot open them.
        let issuer = cookie_keys();
        let cookies = (0..8)
            .map(|_| issuer.seal(&session_keys(), &mut rand::rng()).unwrap())
            .collect();
        let server = Server::new(KeyStore::default(), ServerOptions::default())
            .with_nts(Arc::new(RwLock::new(cookie_keys())));
        let nak = |request: &[u8]| {
            let mut reply = Vec::new();
            let state = SyncState::local_reference(1, LOCAL, -20);
            server
                .handle_request(
                    request,
                    LOCAL,
                    &state,
                    || LOCAL,
                    &mut rand::rng(),
                    &mut reply,
                )
                .expect("an NTSN");
            reply
        };

        let mut source = Source::new(SourceAuth::Nts, SourceOptions::default(), 0.0);
        let mut out = Vec::new();
        assert_eq!(
            source.handle_timeout(0.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::KeyExchange)
        );
        source.handle_key_exchange(Ok(NtsSession::new(session_keys(), cookies)), 1.0);
        assert_eq!(
            source.handle_timeout(1.0, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::Transmit)
        );
        let first = nak(&out);
        assert_eq!(
            source.handle_response(&first, LOCAL, 1.1),
            Event::Kiss(KissCode::NtsNak)
        );
        assert_eq!(
            source.handle_response(&first, LOCAL, 1.2),
            Event::Rejected(Reject::Duplicate)
        );
        // One NTSN: the next poll is an ordinary request.
        let next = source.poll_timeout().unwrap();
        assert_eq!(
            source.handle_timeout(next, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::Transmit)
        );
        let second = nak(&out);
        assert_eq!(
            source.handle_response(&second, LOCAL, next + 0.1),
            Event::Kiss(KissCode::NtsNak)
        );
        // Two: still polling until the next poll, which re-keys.
        assert_eq!(source.stopped(), None);
        let next = source.poll_timeout().unwrap();
        assert!(next > 2.0 * 64.0 - 1.0, "{next}");
        assert_eq!(
            source.handle_timeout(next, LOCAL, &mut rand::rng(), &mut out),
            Some(Action::KeyExchange)
        );
    }
}
