//! A run of extension fields on its own: each field read is bounded, consumes exactly
//! its declared length, and writes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::wire::{ExtensionField, Reader};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    while !r.is_empty() {
        let start = r.position();
        match ExtensionField::read(&mut r, start) {
            Ok(field) => {
                assert_eq!(r.position() - start, field.encoded_len());
                assert!(field.encoded_len() >= 16 && field.encoded_len() % 4 == 0);
                field.write(&mut out);
            }
            Err(_) => break,
        }
    }
    assert_eq!(out, &data[..out.len()]);
});
