//! Any bytes as an NTP SHM segment snapshot (the first four bytes are `count` as read
//! again after the copy): a reading or a named drop, never a panic. A reading has a
//! finite offset, nanoseconds below a second and a precision in range; the refclock
//! filter's result over readings lies within their offsets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::refclock::filter::{FilterInput, combine};
use ntimed::refclock::shm;

fuzz_target!(|data: &[u8]| {
    let Some((count, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let count_after = i32::from_ne_bytes(*count);
    let mut inputs = Vec::new();
    for segment in rest.chunks(shm::SEGMENT_LEN) {
        match shm::parse(segment, count_after) {
            Ok(Some(reading)) => {
                assert!(reading.offset.is_finite() && reading.offset.abs() < 2e10, "{reading:?}");
                assert!(reading.receive.1 < 1_000_000_000, "{reading:?}");
                assert!((-30..=0).contains(&reading.precision), "{reading:?}");
                inputs.push(FilterInput {
                    offset: reading.offset,
                    dispersion: 2f64.powi(i32::from(reading.precision)),
                    leap: reading.leap,
                });
            }
            Ok(None) => {}
            Err(why) => assert!(!why.to_string().is_empty()),
        }
    }
    if let Some(combined) = combine(&inputs) {
        let low = inputs.iter().map(|i| i.offset).fold(f64::INFINITY, f64::min);
        let high = inputs.iter().map(|i| i.offset).fold(f64::NEG_INFINITY, f64::max);
        let slack = 1e-9 * high.abs().max(low.abs()).max(1.0);
        assert!(combined.offset >= low - slack && combined.offset <= high + slack, "{combined:?}");
        assert!(combined.dispersion.is_finite() && combined.dispersion >= 0.0);
        assert!(combined.kept >= 1 && combined.kept <= inputs.len());
    }
});
