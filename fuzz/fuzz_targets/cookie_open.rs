//! Any bytes as a cookie under a fixed master key: opening never panics, and only
//! cookies this server sealed open.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::auth::nts::cookie::{CookieKeys, Rotation};

fuzz_target!(|data: &[u8]| {
    let mut keys = CookieKeys::fleet(Rotation::default(), &[5; 32]).expect("secret");
    keys.update(1_800_000_000, &mut rand::rng());
    assert!(keys.open(data).is_none(), "a random cookie opened");
});
