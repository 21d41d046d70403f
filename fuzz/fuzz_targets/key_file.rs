//! Any text as a key file, in every format: an error or a store, never a panic; every
//! key in a store has a valid id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::{KeyFileFormat, KeyStore};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [
        KeyFileFormat::Auto,
        KeyFileFormat::Ntp,
        KeyFileFormat::Chrony,
    ] {
        match KeyStore::parse("fuzz.keys", text, format) {
            Ok(store) => assert!(store.iter().all(|k| k.id() != 0)),
            Err(e) => assert!(e.to_string().starts_with("fuzz.keys")),
        }
    }
});
