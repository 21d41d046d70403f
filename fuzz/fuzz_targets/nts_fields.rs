//! Any packet as an NTS request to a server and as a reply to a waiting NTS client:
//! no panic, the client accepts nothing it cannot authenticate, and a reply built for
//! a valid request is never larger than it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::nts::aead::{AeadAlgorithm, AeadKey};
use ntimed::auth::nts::cookie::{CookieKeys, Rotation, SessionKeys};
use ntimed::auth::nts::ntp::{NtsSession, ServerNts, check_request};
use ntimed::wire::{Header, NtpTimestamp, Packet};

fn keys() -> Option<SessionKeys> {
    let alg = AeadAlgorithm::AesSivCmac256;
    Some(SessionKeys {
        c2s: AeadKey::new(alg, &[1; 32])?,
        s2c: AeadKey::new(alg, &[2; 32])?,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::parse(data) else {
        return;
    };
    let mut cookie_keys = CookieKeys::fleet(Rotation::default(), &[3; 32]).expect("secret");
    cookie_keys.update(1_800_000_000, &mut rand::rng());
    if let ServerNts::Valid { cookies, .. } = check_request(&packet, data, &cookie_keys) {
        assert!((1..=8).contains(&cookies));
    }
    let Some(session_keys) = keys() else { return };
    let cookie = cookie_keys
        .seal(&session_keys, &mut rand::rng())
        .expect("seal");
    let mut session = NtsSession::new(session_keys, vec![cookie]);
    let mut request = Vec::new();
    Header::client_request(6, NtpTimestamp::from_bits(1)).write(&mut request);
    session
        .write_request_fields(&mut rand::rng(), &mut request)
        .expect("request");
    assert!(session.check_response(&packet, data).is_err());
});
