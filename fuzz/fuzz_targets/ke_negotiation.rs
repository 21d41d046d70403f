//! Any message as a KE request (server side) and as a KE response (client side): the
//! server's answer always parses and obeys RFC 8915 (≤ 1 AEAD, ≤ 8 cookies, NTPv4 only
//! if offered); the client accepts only responses with cookies and one known AEAD.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::nts::ke::{self, KeDecision, NtpEndpoint};
use ntimed::wire::ke::{RecordBody, parse_message};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((records, used))) = parse_message(data) else {
        return;
    };
    let decision = ke::evaluate_request(&records, used < data.len());
    let cookies = vec![vec![7u8; 104]; 8];
    let mut out = Vec::new();
    ke::write_response(&decision, &cookies, &NtpEndpoint::default(), &mut out);
    let Ok(Some((answer, _))) = parse_message(&out) else {
        panic!("unparsable response");
    };
    let aeads = answer
        .iter()
        .filter(|r| matches!(r.body, RecordBody::AeadAlgorithm(_)))
        .count();
    let sent = answer
        .iter()
        .filter(|r| matches!(r.body, RecordBody::NewCookie(_)))
        .count();
    assert!(aeads <= 1 && sent <= 8);
    if matches!(decision, KeDecision::Accept { .. }) {
        assert!(ke::handle_response(&answer).is_ok());
    } else {
        assert_eq!(sent, 0);
    }
    if let Ok(response) = ke::handle_response(&records) {
        assert!(!response.cookies.is_empty() && response.cookies.len() <= 8);
    }
});
