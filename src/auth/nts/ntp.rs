//! NTS extension fields in NTP packets (RFC 8915 §5): the server's checks and reply
//! fields, and the client's session (keys, cookie jar, outstanding unique id).

use std::collections::VecDeque;

use super::aead::{AeadKey, TAG_LEN};
use super::cookie::{CookieKeys, SessionKeys, cookie_len};
use super::ke::{MAX_COOKIE_LEN, MAX_COOKIES};
use crate::wire::Reader;
use crate::wire::packet::{ExtensionField, ExtensionType, HEADER_LEN, Packet};

/// Length of the unique identifiers ntimed sends; shorter ones are refused.
pub const UID_LEN: usize = 32;

fn pad4(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Writes one extension field whose body is `body` zero-padded to a multiple of 4
/// (and to the 16-byte minimum).
fn write_field(out: &mut Vec<u8>, field_type: ExtensionType, body: &[u8]) {
    let padded = pad4(body.len()).max(12);
    out.extend_from_slice(&field_type.to_u16().to_be_bytes());
    out.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// Appends an authenticator field sealing `plaintext` under `key`, with everything
/// already in `packet` as associated data. The ciphertext is written in place, so a
/// reply costs no buffer of its own. On failure `packet` is left as it was.
fn write_authenticator(
    packet: &mut Vec<u8>,
    key: &AeadKey,
    plaintext: &[u8],
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Option<()> {
    let mut nonce_bytes = [0u8; 16];
    let nonce = nonce_bytes.get_mut(..key.algorithm().nonce_len())?;
    rng.fill_bytes(nonce);
    let sealed_len = plaintext.len().checked_add(TAG_LEN)?;
    let body_len = 4 + pad4(nonce.len()) + pad4(sealed_len);
    let lengths = [4 + body_len, nonce.len(), sealed_len].map(u16::try_from);
    let [Ok(field_len), Ok(nonce_len), Ok(sealed_len16)] = lengths else {
        return None;
    };
    let start = packet.len();
    packet.extend_from_slice(&ExtensionType::NtsAuthenticator.to_u16().to_be_bytes());
    for length in [field_len, nonce_len, sealed_len16] {
        packet.extend_from_slice(&length.to_be_bytes());
    }
    packet.extend_from_slice(nonce);
    // The ciphertext's place in the field: after type, length, the two lengths and
    // the padded nonce.
    let sealed_from = 8 + pad4(nonce.len());
    packet.resize(start + 4 + body_len, 0);
    let (associated, field) = packet.split_at_mut(start);
    let sealed = field
        .get_mut(sealed_from..sealed_from + sealed_len)
        .and_then(|sealed| key.seal_into(nonce, plaintext, associated, sealed));
    if sealed.is_none() {
        packet.truncate(start);
    }
    sealed
}

/// The nonce and ciphertext of an authenticator body, bounds-checked (ADVERSARIAL 13).
fn parse_authenticator<'a>(body: &'a [u8], key: &AeadKey) -> Option<(&'a [u8], &'a [u8])> {
    let mut r = Reader::new(body);
    let nonce_len = usize::from(r.u16()?);
    let ct_len = usize::from(r.u16()?);
    let alg = key.algorithm();
    if nonce_len < alg.nonce_len() || (alg.nonce_len() == 12 && nonce_len != 12) {
        return None;
    }
    if ct_len < TAG_LEN {
        return None;
    }
    let nonce = r.take(pad4(nonce_len))?.get(..nonce_len)?;
    let ciphertext = r.take(pad4(ct_len))?.get(..ct_len)?;
    Some((nonce, ciphertext))
}

/// The NTS fields of a packet, located and counted (no allocation: every request
/// is read this way).
#[derive(Default)]
struct Fields<'a> {
    uid: Option<&'a [u8]>,
    uids: usize,
    cookie: Option<&'a [u8]>,
    cookies: usize,
    placeholders: usize,
    /// The shortest and longest placeholder.
    placeholder_lengths: Option<(usize, usize)>,
    /// Authenticator body and the length of what it authenticates.
    authenticator: Option<(&'a [u8], usize)>,
    authenticators: usize,
}

impl<'a> Fields<'a> {
    /// Collects the fields before the first authenticator; later ones are ignored, as
    /// they are not authenticated.
    fn collect(packet: &Packet<'a>) -> Self {
        let mut fields = Fields::default();
        let mut offset = HEADER_LEN;
        for ef in &packet.extensions {
            match ef.field_type {
                ExtensionType::NtsAuthenticator => {
                    fields.authenticators += 1;
                    if fields.authenticator.is_none() {
                        fields.authenticator = Some((ef.body, offset));
                    }
                }
                _ if fields.authenticator.is_some() => {}
                ExtensionType::UniqueIdentifier => {
                    fields.uids += 1;
                    fields.uid.get_or_insert(ef.body);
                }
                ExtensionType::NtsCookie => {
                    fields.cookies += 1;
                    fields.cookie.get_or_insert(ef.body);
                }
                ExtensionType::NtsCookiePlaceholder => {
                    let len = ef.body.len();
                    fields.placeholders += 1;
                    let (shortest, longest) = fields.placeholder_lengths.unwrap_or((len, len));
                    fields.placeholder_lengths = Some((shortest.min(len), longest.max(len)));
                }
                ExtensionType::Unknown(_) => {}
            }
            offset += ef.encoded_len();
        }
        fields
    }

    fn is_nts(&self) -> bool {
        self.uids > 0 || self.cookies > 0 || self.authenticators > 0
    }

    /// The unique identifier, if there is exactly one.
    fn only_uid(&self) -> Option<&'a [u8]> {
        self.uid.filter(|_| self.uids == 1)
    }

    /// The cookie, if there is exactly one.
    fn only_cookie(&self) -> Option<&'a [u8]> {
        self.cookie.filter(|_| self.cookies == 1)
    }
}

/// What the server makes of a request's NTS fields.
#[derive(Debug)]
pub enum ServerNts<'a> {
    /// No NTS fields: a plain or MAC request.
    NotNts,
    /// Malformed NTS (ADVERSARIAL 11, 13): drop without reply.
    Drop(&'static str),
    /// Cookie or authenticator failed (ADVERSARIAL 12): answer NTSN with the UID.
    Nak { uid: &'a [u8] },
    /// Authenticated: answer under `keys.s2c` with `cookies` new cookies.
    Valid {
        uid: &'a [u8],
        keys: SessionKeys,
        cookies: usize,
    },
}

/// Whether a packet carries NTS fields at all.
pub fn has_nts_fields(packet: &Packet<'_>) -> bool {
    Fields::collect(packet).is_nts()
}

/// Checks a request's NTS fields against `cookie_keys`.
pub fn check_request<'a>(
    packet: &Packet<'a>,
    bytes: &[u8],
    cookie_keys: &CookieKeys,
) -> ServerNts<'a> {
    let fields = Fields::collect(packet);
    if !fields.is_nts() {
        return ServerNts::NotNts;
    }
    let (Some(uid), Some(cookie), Some((auth, ad_len))) = (
        fields.only_uid(),
        fields.only_cookie(),
        fields.authenticator,
    ) else {
        return ServerNts::Drop("not exactly one unique id, cookie and authenticator");
    };
    if uid.len() < UID_LEN {
        return ServerNts::Drop("unique id shorter than 32 bytes");
    }
    if fields
        .placeholder_lengths
        .is_some_and(|lengths| lengths != (cookie.len(), cookie.len()))
    {
        return ServerNts::Drop("placeholder length differs from the cookie's");
    }
    let Some(keys) = cookie_keys.open(cookie) else {
        return ServerNts::Nak { uid };
    };
    let Some((nonce, ciphertext)) = parse_authenticator(auth, &keys.c2s) else {
        return ServerNts::Drop("malformed authenticator");
    };
    let Some(associated) = bytes.get(..ad_len) else {
        return ServerNts::Drop("authenticator outside the packet");
    };
    if keys.c2s.open(nonce, ciphertext, associated).is_none() {
        return ServerNts::Nak { uid };
    }
    ServerNts::Valid {
        uid,
        keys,
        cookies: (1 + fields.placeholders).min(MAX_COOKIES),
    }
}

/// Appends `count` new cookies holding `keys`, each in a cookie field of its own:
/// the plaintext of a reply's authenticator. A cookie that cannot be sealed is left
/// out.
pub fn write_cookie_fields(
    out: &mut Vec<u8>,
    cookie_keys: &CookieKeys,
    keys: &SessionKeys,
    count: usize,
    rng: &mut (impl rand::CryptoRng + ?Sized),
) {
    // Every cookie is a multiple of 4 bytes and longer than 16: it fills its field.
    let Ok(field_len) = u16::try_from(4 + cookie_len(keys.algorithm())) else {
        return;
    };
    out.reserve(count * usize::from(field_len));
    for _ in 0..count {
        let start = out.len();
        out.extend_from_slice(&ExtensionType::NtsCookie.to_u16().to_be_bytes());
        out.extend_from_slice(&field_len.to_be_bytes());
        if cookie_keys.seal_into(keys, rng, out).is_none() {
            out.truncate(start);
        }
    }
}

/// Appends the reply's NTS fields after its header: the unique id, then an
/// authenticator encrypting `cookie_fields` (from [`write_cookie_fields`]).
pub fn write_response_fields(
    reply: &mut Vec<u8>,
    uid: &[u8],
    s2c: &AeadKey,
    cookie_fields: &[u8],
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Option<()> {
    write_field(reply, ExtensionType::UniqueIdentifier, uid);
    write_authenticator(reply, s2c, cookie_fields, rng)
}

/// Appends the fields of an NTSN kiss: the unique id only.
pub fn write_nak_fields(reply: &mut Vec<u8>, uid: &[u8]) {
    write_field(reply, ExtensionType::UniqueIdentifier, uid);
}

/// Why a client did not accept a reply's NTS fields (ADVERSARIAL 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NtsReject {
    #[error("no request outstanding")]
    NotExpected,
    #[error("unique id missing or not ours")]
    WrongUid,
    #[error("no authenticator")]
    Unauthenticated,
    #[error("authenticator does not verify")]
    BadAuthenticator,
}

/// A client's NTS state for one server: keys, cookies, and the request in flight.
pub struct NtsSession {
    keys: SessionKeys,
    cookies: VecDeque<Vec<u8>>,
    outstanding_uid: Option<[u8; UID_LEN]>,
}

impl std::fmt::Debug for NtsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NtsSession({}, {} cookies)",
            self.keys.algorithm().name(),
            self.cookies.len()
        )
    }
}

impl NtsSession {
    pub fn new(keys: SessionKeys, cookies: Vec<Vec<u8>>) -> Self {
        Self {
            keys,
            cookies: cookies.into_iter().take(MAX_COOKIES).collect(),
            outstanding_uid: None,
        }
    }

    pub fn cookies(&self) -> usize {
        self.cookies.len()
    }

    /// The AEAD algorithm the key exchange agreed on.
    pub fn algorithm(&self) -> crate::auth::nts::aead::AeadAlgorithm {
        self.keys.algorithm()
    }

    /// Appends the request's NTS fields after its header, spending one cookie and
    /// asking for enough new ones to refill the jar. `None` when the jar is empty:
    /// run NTS-KE again; never fall back to plain NTP.
    pub fn write_request_fields(
        &mut self,
        rng: &mut (impl rand::CryptoRng + ?Sized),
        request: &mut Vec<u8>,
    ) -> Option<()> {
        let cookie = self.cookies.pop_front()?;
        let mut uid = [0u8; UID_LEN];
        rng.fill_bytes(&mut uid);
        write_field(request, ExtensionType::UniqueIdentifier, &uid);
        write_field(request, ExtensionType::NtsCookie, &cookie);
        let wanted = MAX_COOKIES - 1 - self.cookies.len().min(MAX_COOKIES - 1);
        for _ in 0..wanted {
            write_field(
                request,
                ExtensionType::NtsCookiePlaceholder,
                &vec![0; cookie.len()],
            );
        }
        write_authenticator(request, &self.keys.c2s, &[], rng)?;
        self.outstanding_uid = Some(uid);
        Some(())
    }

    /// Whether an NTSN kiss carries the unique id of the request in flight, the most
    /// an unauthenticated NTSN can prove.
    pub fn nak_matches(&self, packet: &Packet<'_>) -> bool {
        let uid = Fields::collect(packet).only_uid();
        matches!((uid, self.outstanding_uid), (Some(uid), Some(ours)) if *uid == ours)
    }

    /// Checks a reply and, only if it verifies, takes its cookies and retires the
    /// unique id so no second reply to it is accepted.
    pub fn check_response(&mut self, packet: &Packet<'_>, bytes: &[u8]) -> Result<(), NtsReject> {
        let ours = self.outstanding_uid.ok_or(NtsReject::NotExpected)?;
        let fields = Fields::collect(packet);
        if fields.only_uid() != Some(&ours[..]) {
            return Err(NtsReject::WrongUid);
        }
        let (auth, ad_len) = fields.authenticator.ok_or(NtsReject::Unauthenticated)?;
        let (nonce, ciphertext) =
            parse_authenticator(auth, &self.keys.s2c).ok_or(NtsReject::BadAuthenticator)?;
        let associated = bytes.get(..ad_len).ok_or(NtsReject::BadAuthenticator)?;
        let plaintext = self
            .keys
            .s2c
            .open(nonce, ciphertext, associated)
            .ok_or(NtsReject::BadAuthenticator)?;
        // Verified: now the state may change.
        self.outstanding_uid = None;
        let mut r = Reader::new(&plaintext);
        while !r.is_empty() {
            let Ok(ef) = ExtensionField::read(&mut r, 0) else {
                break;
            };
            let size_ok = (1..=MAX_COOKIE_LEN).contains(&ef.body.len());
            if ef.field_type == ExtensionType::NtsCookie
                && size_ok
                && self.cookies.len() < MAX_COOKIES
            {
                self.cookies.push_back(ef.body.to_vec());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::nts::aead::AeadAlgorithm;
    use crate::auth::nts::cookie::Rotation;
    use crate::wire::Header;
    use crate::wire::NtpTimestamp;

    fn cookie_keys() -> CookieKeys {
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(1_800_000_000, &mut rand::rng());
        keys
    }

    fn session_keys() -> SessionKeys {
        let alg = AeadAlgorithm::AesSivCmac256;
        SessionKeys {
            c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
            s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
        }
    }

    /// A client with `n` cookies and the request it sends.
    fn client_request(server: &CookieKeys, n: usize) -> (NtsSession, Vec<u8>) {
        let cookies = (0..n)
            .map(|_| server.seal(&session_keys(), &mut rand::rng()).unwrap())
            .collect();
        let mut session = NtsSession::new(session_keys(), cookies);
        let mut request = Vec::new();
        Header::client_request(6, NtpTimestamp::from_bits(77)).write(&mut request);
        session
            .write_request_fields(&mut rand::rng(), &mut request)
            .unwrap();
        (session, request)
    }

    fn server_reply(server: &CookieKeys, request: &[u8]) -> Vec<u8> {
        let packet = Packet::parse(request).unwrap();
        let result = check_request(&packet, request, server);
        let ServerNts::Valid { uid, keys, cookies } = result else {
            panic!("request refused: {result:?}")
        };
        let mut new = Vec::new();
        write_cookie_fields(&mut new, server, &keys, cookies, &mut rand::rng());
        let mut reply = request[..48].to_vec();
        write_response_fields(&mut reply, uid, &keys.s2c, &new, &mut rand::rng()).unwrap();
        reply
    }

    #[test]
    fn a_request_refills_the_jar_and_the_reply_is_no_larger() {
        let server = cookie_keys();
        for n in [1, 3, 8] {
            let (mut session, request) = client_request(&server, n);
            assert_eq!(session.cookies(), n - 1);
            let reply = server_reply(&server, &request);
            assert_eq!(reply.len(), request.len(), "{n} cookies");
            session
                .check_response(&Packet::parse(&reply).unwrap(), &reply)
                .unwrap();
            assert_eq!(session.cookies(), 8);
            // A second copy of the same reply is refused: its unique id is retired.
            assert_eq!(
                session.check_response(&Packet::parse(&reply).unwrap(), &reply),
                Err(NtsReject::NotExpected)
            );
        }
    }

    /// ADVERSARIAL 11: missing or doubled fields, and NTS in plain packets, are drops.
    #[test]
    fn malformed_nts_requests_are_dropped() {
        let server = cookie_keys();
        let (_, request) = client_request(&server, 8);
        let packet = Packet::parse(&request).unwrap();
        let rebuild = |keep: &dyn Fn(usize, &ExtensionField) -> Vec<ExtensionField<'static>>| {
            let mut out = request[..48].to_vec();
            for (i, ef) in packet.extensions.iter().enumerate() {
                for e in keep(i, ef) {
                    e.write(&mut out);
                }
            }
            out
        };
        let leak = |ef: &ExtensionField| ExtensionField {
            field_type: ef.field_type,
            body: Box::leak(ef.body.to_vec().into_boxed_slice()),
        };
        for drop_index in 0..3 {
            let bytes = rebuild(&|i, ef| {
                if i == drop_index {
                    vec![]
                } else {
                    vec![leak(ef)]
                }
            });
            let p = Packet::parse(&bytes).unwrap();
            assert!(
                matches!(check_request(&p, &bytes, &server), ServerNts::Drop(_)),
                "without field {drop_index}"
            );
        }
        let two_cookies = rebuild(&|i, ef| {
            if i == 1 {
                vec![leak(ef), leak(ef)]
            } else {
                vec![leak(ef)]
            }
        });
        let p = Packet::parse(&two_cookies).unwrap();
        assert!(matches!(
            check_request(&p, &two_cookies, &server),
            ServerNts::Drop(_)
        ));
    }

    /// ADVERSARIAL 12: a bad cookie or a changed byte gets an NTSN, nothing else.
    #[test]
    fn bad_cookies_and_tampering_get_a_nak() {
        let server = cookie_keys();
        let (_, request) = client_request(&server, 8);
        let mut flipped_header = request.clone();
        flipped_header[2] ^= 1;
        let mut bad_cookie = request.clone();
        bad_cookie[48 + 36 + 10] ^= 1; // inside the cookie
        let mut bad_tag = request.clone();
        let last = bad_tag.len() - 1;
        bad_tag[last - 4] ^= 1; // inside the ciphertext
        for bytes in [flipped_header, bad_cookie, bad_tag] {
            let p = Packet::parse(&bytes).unwrap();
            assert!(
                matches!(check_request(&p, &bytes, &server), ServerNts::Nak { uid } if uid.len() == 32)
            );
        }
        let other = cookie_keys();
        let p = Packet::parse(&request).unwrap();
        assert!(matches!(
            check_request(&p, &request, &other),
            ServerNts::Nak { .. }
        ));
    }

    /// ADVERSARIAL 13: authenticator bodies that lie about their lengths.
    #[test]
    fn lying_authenticators_are_dropped_without_reading_out_of_bounds() {
        let key = session_keys().c2s;
        let mut body = vec![0, 16, 0, 16];
        body.extend_from_slice(&[0; 32]);
        assert!(parse_authenticator(&body, &key).is_some());
        let cases: [&[u8]; 5] = [
            &[0, 0, 0, 16],               // nonce length 0
            &[0, 16, 0, 200, 0, 0, 0, 0], // overruns
            &[0, 16, 0, 8],               // ciphertext shorter than the tag
            &[0xff, 0xff, 0xff, 0xff],    // huge
            &[0, 16],                     // truncated
        ];
        for case in cases {
            assert!(parse_authenticator(case, &key).is_none(), "{case:?}");
        }
    }

    /// ADVERSARIAL 14: 100 placeholders get at most 8 cookies, reply ≤ request.
    #[test]
    fn placeholder_floods_get_at_most_eight_cookies() {
        let server = cookie_keys();
        let (_, request) = client_request(&server, 8);
        let packet = Packet::parse(&request).unwrap();
        let cookie_len = packet.extensions[1].body.len();
        let mut flood = request[..48].to_vec();
        packet.extensions[0].write(&mut flood);
        packet.extensions[1].write(&mut flood);
        for _ in 0..100 {
            write_field(
                &mut flood,
                ExtensionType::NtsCookiePlaceholder,
                &vec![0; cookie_len],
            );
        }
        write_authenticator(&mut flood, &session_keys().c2s, &[], &mut rand::rng()).unwrap();
        let p = Packet::parse(&flood).unwrap();
        let ServerNts::Valid { cookies, .. } = check_request(&p, &flood, &server) else {
            panic!()
        };
        assert_eq!(cookies, 8);
        assert!(server_reply(&server, &flood).len() < flood.len());
    }

    /// ADVERSARIAL 15: unknown unique id, bad or missing authentication → drop.
    #[test]
    fn clients_accept_only_authenticated_replies_to_their_uid() {
        let server = cookie_keys();
        let (mut session, request) = client_request(&server, 8);
        let good = server_reply(&server, &request);
        let mut wrong_uid = good.clone();
        wrong_uid[52] ^= 1;
        let mut bad_tag = good.clone();
        let last = bad_tag.len() - 1;
        bad_tag[last - 2] ^= 1;
        let mut unauthenticated = good[..48].to_vec();
        write_nak_fields(&mut unauthenticated, &good[52..84]);
        for (bytes, why) in [
            (wrong_uid, NtsReject::WrongUid),
            (bad_tag, NtsReject::BadAuthenticator),
            (unauthenticated.clone(), NtsReject::Unauthenticated),
        ] {
            let p = Packet::parse(&bytes).unwrap();
            assert_eq!(session.check_response(&p, &bytes), Err(why));
        }
        assert!(session.nak_matches(&Packet::parse(&unauthenticated).unwrap()));
        assert!(
            session
                .check_response(&Packet::parse(&good).unwrap(), &good)
                .is_ok()
        );
    }

    #[test]
    fn an_empty_jar_means_no_request() {
        let mut session = NtsSession::new(session_keys(), vec![]);
        let mut request = vec![0; 48];
        assert!(
            session
                .write_request_fields(&mut rand::rng(), &mut request)
                .is_none()
        );
        assert_eq!(
            request.len(),
            48,
            "nothing written: never plain NTP in its place"
        );
    }
}
