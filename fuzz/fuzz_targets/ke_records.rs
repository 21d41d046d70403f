//! Any bytes as an NTS-KE message: no panic; a parsed message writes back to exactly
//! the bytes it took.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::wire::ke::{parse_message, write_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((records, used))) = parse_message(data) {
        let mut out = Vec::new();
        write_message(&records, &mut out);
        assert_eq!(out, &data[..used]);
    }
});
