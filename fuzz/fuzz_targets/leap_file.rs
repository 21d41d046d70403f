//! Any text as a leap-seconds.list: no panic; an accepted file has entries in order,
//! announces nothing once expired, and only ever a leap within a day of an entry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::sync::leap_file::{ANNOUNCE_BEFORE, LeapFile};
use ntimed::wire::Leap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = LeapFile::parse(text) else {
        return;
    };
    assert_eq!(file.announcement(file.expires), None);
    if let Some(last) = file.last_leap() {
        for now in [last.saturating_sub(ANNOUNCE_BEFORE + 1), last, last + 1] {
            if !file.is_expired(now) {
                assert_eq!(file.announcement(now), Some(Leap::NoWarning));
            }
        }
    }
});
