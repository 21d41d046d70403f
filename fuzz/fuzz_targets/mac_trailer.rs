//! A 48-byte header plus any trailer: trailer parsing never panics, and a MAC check
//! under a fixed key accepts nothing but a digest computed with that key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::{KeyType, SymmetricKey, mac};
use ntimed::wire::{Packet, Trailer};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = SymmetricKey::new(7, KeyType::Sha256, vec![0x42; 32]) else {
        return;
    };
    if let Some(&first) = data.first()
        && data.len() >= 48
    {
        if let Ok(trailer) = Trailer::parse(&data[48..], 48, first >> 3 & 7) {
            let mut out = data[..48].to_vec();
            trailer.write(&mut out);
            assert_eq!(out, data);
        }
    }
    if let Ok(packet) = Packet::parse(data) {
        if mac::check_packet(&key, &packet, data).is_ok() {
            let covered = &data[..packet.authenticated_len()];
            let mut signed = covered.to_vec();
            mac::append_mac(&key, &mut signed);
            assert_eq!(signed, data, "accepted a MAC that was not ours");
        }
    }
});
