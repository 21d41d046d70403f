//! Any bytes at the server (basic and interleaving) and at a waiting client (basic and
//! interleaved): no panic, no reply larger than the request, and the client accepts
//! nothing that does not echo its request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::KeyStore;
use ntimed::proto::client::{ClientAuth, ClientExchange};
use ntimed::proto::server::{Server, ServerOptions, SyncState};
use ntimed::wire::NtpTimestamp;

fuzz_target!(|data: &[u8]| {
    let server = Server::new(
        KeyStore::default(),
        ServerOptions {
            crypto_nak: true,
            ..ServerOptions::default()
        },
    );
    let now = NtpTimestamp::from_bits(0xe000_0000_0000_0000);
    let state = SyncState::local_reference(1, now, -20);
    let mut reply = Vec::new();
    if server
        .handle_request(data, now, &state, || now, &mut rand::rng(), &mut reply)
        .is_ok()
    {
        assert!(reply.len() <= data.len());
    }
    // The same bytes twice from one client of an interleaving server: the second may
    // name the first's receive time (RFC 9769); still never larger than the request.
    let interleaving =
        Server::new(KeyStore::default(), ServerOptions::default()).with_interleave(8);
    let peer = std::net::IpAddr::from([192, 0, 2, 1]);
    for step in 0..2u64 {
        let at = NtpTimestamp::from_bits(now.to_bits() + step);
        if interleaving
            .handle_request_from(peer, data, at, &state, || at, &mut rand::rng(), &mut reply)
            .is_ok()
        {
            assert!(reply.len() <= data.len());
            interleaving.handle_sent(peer, at, at);
        }
    }
    let mut client = ClientExchange::new(ClientAuth::None, 6);
    let mut request = Vec::new();
    if client
        .poll_request(now, &mut rand::rng(), &mut request)
        .is_err()
    {
        return;
    }
    // Random bytes cannot guess the random 64-bit origin.
    assert!(client.handle_response(data, now).is_err());
    // Nor, after a genuine exchange, the random receive field of an interleaved request.
    let mut xleave = ClientExchange::new(ClientAuth::None, 6).with_xleave();
    let mut answer = Vec::new();
    let later = NtpTimestamp::from_bits(now.to_bits() + 1000);
    if xleave
        .poll_request(now, &mut rand::rng(), &mut request)
        .is_ok()
        && interleaving
            .handle_request_from(
                peer,
                &request,
                later,
                &state,
                || later,
                &mut rand::rng(),
                &mut answer,
            )
            .is_ok()
        && xleave.handle_response(&answer, later).is_ok()
        && xleave
            .poll_request(later, &mut rand::rng(), &mut request)
            .is_ok()
    {
        assert!(xleave.handle_response(data, later).is_err());
    }
});
