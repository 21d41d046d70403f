//! Any packet of any length 0..2048 and any content: neither the server nor a waiting
//! client panics, the server never answers with more bytes than it got, and the client
//! accepts nothing (random bytes cannot echo its random transmit timestamp).

use ntimed::auth::{KeyFileFormat, KeyStore};
use ntimed::proto::client::{ClientAuth, ClientExchange};
use ntimed::proto::server::{Server, ServerOptions, SyncState};
use ntimed::wire::{NtpTimestamp, Packet};
use proptest::prelude::*;

fn keys() -> KeyStore {
    KeyStore::parse(
        "t",
        "1 SHA256 HEX:0011223344556677\n2 AES128 HEX:000102030405060708090a0b0c0d0e0f\n",
        KeyFileFormat::Chrony,
    )
    .expect("test keys")
}

/// Random bytes, and random bytes behind a plausible client-mode header, so that the
/// search also reaches the extension-field and MAC paths.
fn packets() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|tail| {
            let mut p = vec![0x23u8];
            p.resize(48, 0);
            p.extend(tail);
            p
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn server_and_client_survive_any_packet(data in packets()) {
        let now = NtpTimestamp::from_bits(0xe000_0000_0000_0000);
        let state = SyncState::local_reference(1, now, -20);
        for crypto_nak in [false, true] {
            let server = Server::new(keys(), ServerOptions { crypto_nak, ..ServerOptions::default() });
            let mut reply = Vec::new();
            if server.handle_request(&data, now, &state, || now, &mut rand::rng(), &mut reply).is_ok() {
                prop_assert!(reply.len() <= data.len());
            } else {
                prop_assert!(reply.is_empty());
            }
        }
        let key = keys().get(1).cloned().expect("key 1");
        let mut client = ClientExchange::new(ClientAuth::Key(key), 6);
        let mut request = Vec::new();
        client.poll_request(now, &mut rand::rng(), &mut request).expect("request");
        prop_assert!(client.handle_response(&data, now).is_err());
    }

    #[test]
    fn whatever_parses_round_trips_exactly(data in packets()) {
        if let Ok(packet) = Packet::parse(&data) {
            prop_assert_eq!(packet.to_vec(), data);
        }
    }
}
