//! Any datagrams at a symmetric association: no panic; a keyed peer accepts nothing
//! (nothing is reachable, nothing is echoed); an insecure one never measures, since no
//! input can guess our transmit timestamp's 32 random bits (precision 0 makes the whole
//! fraction random).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::{KeyFileFormat, KeyStore};
use ntimed::proto::peer::{Peer, PeerAuth, PeerEvent, PeerOptions};
use ntimed::proto::server::SyncState;
use ntimed::wire::{Header, NtpTimestamp};
use std::sync::LazyLock;

/// Parsed once, not for every input.
static KEYS: LazyLock<KeyStore> = LazyLock::new(|| {
    KeyStore::parse(
        "k",
        "1 AES128 HEX:000102030405060708090a0b0c0d0e0f",
        KeyFileFormat::Chrony,
    )
    .expect("test key")
});

fuzz_target!(|data: &[u8]| {
    let Some(key) = KEYS.get(1).cloned() else {
        return;
    };
    let now = NtpTimestamp::from_bits(0xe000_0000_0000_0000);
    let state = SyncState::local_reference(2, now, -20);
    let options = PeerOptions {
        precision: 0,
        ..PeerOptions::default()
    };
    for keyed in [true, false] {
        let auth = if keyed {
            PeerAuth::Key(key.clone())
        } else {
            PeerAuth::Insecure
        };
        let mut peer = Peer::new(auth, options, 0.0);
        let mut out = Vec::new();
        assert!(
            peer.handle_timeout(0.0, now, &state, &mut rand::rng(), &mut out)
                .is_some()
        );
        // Datagrams: a length byte, then that many bytes.
        let mut rest = data;
        let mut t = 0.0;
        while let Some((&len, tail)) = rest.split_first() {
            let (datagram, tail) = tail.split_at(usize::from(len).min(tail.len()));
            rest = tail;
            t += 0.1;
            let event = peer.handle_packet(datagram, now.add_seconds(t), t);
            assert!(!matches!(event, PeerEvent::Sample(_)), "{event:?}");
            if keyed {
                assert!(matches!(event, PeerEvent::Rejected(_)), "{event:?}");
            }
        }
        if keyed {
            assert!(!peer.is_reachable());
            let mut next = Vec::new();
            if peer
                .handle_timeout(1e6, now, &state, &mut rand::rng(), &mut next)
                .is_some()
            {
                let header = Header::parse(&next).expect("our own packet");
                assert!(
                    header.origin_time.is_zero(),
                    "echoed an unauthenticated packet"
                );
            }
        }
    }
});
