//! Any bytes: parsing never panics, and whatever parses serializes back to exactly the
//! same bytes and parses again to the same packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::wire::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::parse(data) {
        let bytes = packet.to_vec();
        assert_eq!(bytes, data);
        assert_eq!(packet.encoded_len(), data.len());
        assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&packet));
    }
});
