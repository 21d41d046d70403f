//! Any bytes as a datagram on a SOCK refclock's socket: a reading or a named drop,
//! never a panic. A reading has a finite offset under 1e9 s and whole microseconds
//! below a second, and encodes back to a datagram that parses to the same reading.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::refclock::sock;
use ntimed::wire::Leap;

fuzz_target!(|data: &[u8]| {
    match sock::parse(data) {
        Ok(reading) => {
            assert_eq!(data.len(), sock::SAMPLE_LEN);
            assert!(reading.offset.is_finite() && reading.offset.abs() < 1e9, "{reading:?}");
            let (seconds, nanos) = reading.receive;
            assert!(seconds >= 0 && nanos < 1_000_000_000 && nanos % 1000 == 0, "{reading:?}");
            let leap = match reading.leap {
                Leap::NoWarning => 0,
                Leap::AddSecond => 1,
                Leap::DeleteSecond => 2,
                Leap::Unsynchronized => 3,
            };
            let again = sock::encode((seconds, i64::from(nanos / 1000)), reading.offset, 0, leap);
            assert_eq!(sock::parse(&again), Ok(reading));
        }
        Err(why) => assert!(!why.to_string().is_empty()),
    }
});
