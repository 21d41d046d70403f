//! Any bytes at the server and at a waiting client: no panic, no reply larger than
//! the request, and the client accepts nothing that does not echo its request.
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
});
