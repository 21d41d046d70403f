//! The NTP shared-memory segment (`struct shmTime` of ntpd, gpsd and chrony's SHM
//! driver): a writer (gpsd) puts the reference time and its own receive time in it,
//! and a reader takes them out.
//!
//! Layout on x86_64 (96 bytes, native byte order; `time_t` is 8 bytes, 8-aligned):
//!
//! ```text
//!  0 mode            4 count            8 clockTimeStampSec (time_t)
//! 16 clockTimeStampUSec                24 receiveTimeStampSec (time_t)
//! 32 receiveTimeStampUSec  36 leap  40 precision  44 nsamples  48 valid
//! 52 clockTimeStampNSec    56 receiveTimeStampNSec  60 dummy[8]  92 padding
//! ```
//!
//! Protocol: the writer sets `valid` once a sample is complete, and the reader clears
//! it after taking one. In mode 1 the writer also bumps `count` before and after
//! writing, so a reader that sees `count` change while copying knows it copied half
//! of two samples (a torn read) and drops the copy.
//!
//! Here the segment arrives as a byte snapshot (see `crate::sys::ShmSegment`): pure
//! parsing, shared by the daemon and the fuzzer.

use crate::wire::Leap;

/// The segment's size on x86_64 (what `shmget` is asked for).
pub const SEGMENT_LEN: usize = 96;
/// Unit 0's key, "NTP0"; unit N is at `KEY_BASE + N` (ntpd, gpsd and chrony agree).
pub const KEY_BASE: i32 = 0x4e54_5030;
/// Units below this are root's by convention (mode 0600); the others are 0666.
pub const FIRST_PUBLIC_UNIT: u32 = 2;
/// Units a config may name (gpsd writes 0 to 7 at most; ntpd allows 256).
pub const MAX_UNIT: u32 = 255;

const MODE: usize = 0;
/// Where `count` is: read again after the copy (mode 1).
pub const COUNT: usize = 4;
const CLOCK_SEC: usize = 8;
const CLOCK_USEC: usize = 16;
const RECEIVE_SEC: usize = 24;
const RECEIVE_USEC: usize = 32;
const LEAP: usize = 36;
const PRECISION: usize = 40;
/// Where `valid` is: the reader writes 0 there after a read.
pub const VALID: usize = 48;
const CLOCK_NSEC: usize = 52;
const RECEIVE_NSEC: usize = 56;

/// Seconds since 1970 a timestamp may hold: up to the year 2500 (anything later is a
/// writer's garbage, and would overflow on the way to nanoseconds).
const MAX_SECONDS: i64 = 16_725_225_600;

/// One complete sample from the segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShmReading {
    /// Reference time minus the writer's receive time (on the system clock), seconds.
    pub offset: f64,
    /// When the writer received it, Unix seconds and nanoseconds (system clock).
    pub receive: (i64, u32),
    pub leap: Leap,
    /// The writer's stated precision, log2 seconds.
    pub precision: i8,
}

/// Why a snapshot was not taken as a sample. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShmDrop {
    #[error("segment shorter than {SEGMENT_LEN} bytes")]
    Short,
    #[error("mode {0} (only 0 and 1 exist)")]
    Mode(i32),
    #[error("torn read (count changed while copying)")]
    Torn,
    #[error("{0}: seconds out of range")]
    Seconds(&'static str),
    #[error("{0}: microseconds not in 0..1000000")]
    Microseconds(&'static str),
    #[error("precision {0} is not -30 to 0")]
    Precision(i32),
    #[error("leap {0} is not 0 to 3")]
    Leap(i32),
}

fn int(bytes: &[u8], at: usize) -> Result<i32, ShmDrop> {
    let field: [u8; 4] = bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or(ShmDrop::Short)?;
    Ok(i32::from_ne_bytes(field))
}

fn time_t(bytes: &[u8], at: usize) -> Result<i64, ShmDrop> {
    let field: [u8; 8] = bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or(ShmDrop::Short)?;
    Ok(i64::from_ne_bytes(field))
}

/// One timestamp: seconds, and nanoseconds from the `NSec` field when it agrees with
/// the `USec` one (old writers leave `NSec` zero or stale), else from `USec`.
fn timestamp(
    bytes: &[u8],
    what: &'static str,
    (sec, usec, nsec): (usize, usize, usize),
) -> Result<(i64, u32), ShmDrop> {
    let seconds = time_t(bytes, sec)?;
    if !(0..=MAX_SECONDS).contains(&seconds) {
        return Err(ShmDrop::Seconds(what));
    }
    let micros = u32::try_from(int(bytes, usec)?)
        .ok()
        .filter(|&us| us < 1_000_000)
        .ok_or(ShmDrop::Microseconds(what))?;
    let nanos = u32::try_from(int(bytes, nsec)?)
        .ok()
        .filter(|&ns| ns / 1000 == micros)
        .unwrap_or(micros * 1000);
    Ok((seconds, nanos))
}

/// Parses a snapshot of the segment; `count_after` is `count` read again once the copy
/// was made. `Ok(None)`: nothing new (`valid` is 0), which is no fault.
pub fn parse(bytes: &[u8], count_after: i32) -> Result<Option<ShmReading>, ShmDrop> {
    if bytes.len() < SEGMENT_LEN {
        return Err(ShmDrop::Short);
    }
    // `valid` first: garbage the reader has already cleared is not counted again.
    if int(bytes, VALID)? == 0 {
        return Ok(None);
    }
    let mode = int(bytes, MODE)?;
    if mode != 0 && mode != 1 {
        return Err(ShmDrop::Mode(mode));
    }
    if mode == 1 && int(bytes, COUNT)? != count_after {
        return Err(ShmDrop::Torn);
    }
    let clock = timestamp(bytes, "clock time", (CLOCK_SEC, CLOCK_USEC, CLOCK_NSEC))?;
    let receive = timestamp(
        bytes,
        "receive time",
        (RECEIVE_SEC, RECEIVE_USEC, RECEIVE_NSEC),
    )?;
    let leap = match int(bytes, LEAP)? {
        0 => Leap::NoWarning,
        1 => Leap::AddSecond,
        2 => Leap::DeleteSecond,
        3 => Leap::Unsynchronized,
        other => return Err(ShmDrop::Leap(other)),
    };
    let precision = int(bytes, PRECISION)?;
    let precision = i8::try_from(precision)
        .ok()
        .filter(|p| (-30..=0).contains(p))
        .ok_or(ShmDrop::Precision(precision))?;
    // Both within 0..MAX_SECONDS: the difference is exact in f64 to well below 1 ns.
    let offset = (clock.0 - receive.0) as f64 + (f64::from(clock.1) - f64::from(receive.1)) * 1e-9;
    Ok(Some(ShmReading {
        offset,
        receive,
        leap,
        precision,
    }))
}

/// A segment as a writer fills it (for tests and the fuzzer's seeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShmFields {
    pub mode: i32,
    pub count: i32,
    pub clock: (i64, i32, i32),
    pub receive: (i64, i32, i32),
    pub leap: i32,
    pub precision: i32,
    pub valid: i32,
}

impl ShmFields {
    /// The 96 bytes a writer leaves.
    pub fn to_bytes(self) -> [u8; SEGMENT_LEN] {
        let mut bytes = [0u8; SEGMENT_LEN];
        let mut put = |at: usize, field: &[u8]| {
            if let Some(slot) = bytes.get_mut(at..at + field.len()) {
                slot.copy_from_slice(field);
            }
        };
        put(MODE, &self.mode.to_ne_bytes());
        put(COUNT, &self.count.to_ne_bytes());
        put(CLOCK_SEC, &self.clock.0.to_ne_bytes());
        put(CLOCK_USEC, &self.clock.1.to_ne_bytes());
        put(CLOCK_NSEC, &self.clock.2.to_ne_bytes());
        put(RECEIVE_SEC, &self.receive.0.to_ne_bytes());
        put(RECEIVE_USEC, &self.receive.1.to_ne_bytes());
        put(RECEIVE_NSEC, &self.receive.2.to_ne_bytes());
        put(LEAP, &self.leap.to_ne_bytes());
        put(PRECISION, &self.precision.to_ne_bytes());
        put(VALID, &self.valid.to_ne_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A good mode-1 sample: the reference 1.5 ms ahead of the receive time.
    fn good() -> ShmFields {
        ShmFields {
            mode: 1,
            count: 7,
            clock: (1_800_000_000, 501_500, 501_500_123),
            receive: (1_800_000_000, 500_000, 500_000_000),
            leap: 0,
            precision: -20,
            valid: 1,
        }
    }

    #[test]
    fn a_good_sample_parses_with_nanoseconds() {
        let reading = parse(&good().to_bytes(), 7).unwrap().unwrap();
        assert!(
            (reading.offset - 0.001_500_123).abs() < 1e-12,
            "{reading:?}"
        );
        assert_eq!(reading.receive, (1_800_000_000, 500_000_000));
        assert_eq!(reading.leap, Leap::NoWarning);
        assert_eq!(reading.precision, -20);
    }

    /// Writers that leave `NSec` zero (or stale) are read by their microseconds.
    #[test]
    fn nanoseconds_that_disagree_fall_back_to_microseconds() {
        let mut fields = good();
        fields.clock.2 = 0;
        let reading = parse(&fields.to_bytes(), 7).unwrap().unwrap();
        assert!((reading.offset - 0.0015).abs() < 1e-12, "{reading:?}");
    }

    #[test]
    fn mode_zero_ignores_the_count() {
        let mut fields = good();
        fields.mode = 0;
        assert!(parse(&fields.to_bytes(), 999).unwrap().is_some());
    }

    /// ADVERSARIAL 38: each bad segment gets its named drop, and `valid == 0` is
    /// nothing new.
    #[test]
    fn bad_segments_are_dropped_with_a_reason() {
        assert_eq!(parse(&good().to_bytes(), 7).map(|r| r.is_some()), Ok(true));
        type Case = (fn(&mut ShmFields), i32, Result<(), ShmDrop>);
        let cases: [Case; 10] = [
            (|f| f.valid = 0, 7, Ok(())),
            (|_| {}, 8, Err(ShmDrop::Torn)),
            (|f| f.mode = 2, 7, Err(ShmDrop::Mode(2))),
            (|f| f.mode = -1, 7, Err(ShmDrop::Mode(-1))),
            (
                |f| f.clock.1 = 1_000_000,
                7,
                Err(ShmDrop::Microseconds("clock time")),
            ),
            (
                |f| f.receive.1 = -1,
                7,
                Err(ShmDrop::Microseconds("receive time")),
            ),
            (|f| f.clock.0 = -5, 7, Err(ShmDrop::Seconds("clock time"))),
            (
                |f| f.receive.0 = i64::MAX,
                7,
                Err(ShmDrop::Seconds("receive time")),
            ),
            (|f| f.leap = 4, 7, Err(ShmDrop::Leap(4))),
            (|f| f.precision = 3, 7, Err(ShmDrop::Precision(3))),
        ];
        for (spoil, count_after, expected) in cases {
            let mut fields = good();
            spoil(&mut fields);
            let got = parse(&fields.to_bytes(), count_after).map(|_| ());
            assert_eq!(got, expected, "{fields:?}");
            if expected.is_ok() {
                assert_eq!(parse(&fields.to_bytes(), count_after), Ok(None));
            }
        }
        assert_eq!(parse(&[0u8; 95], 0), Err(ShmDrop::Short));
    }

    #[test]
    fn leap_values_map_to_the_ntp_ones() {
        for (value, leap) in [
            (1, Leap::AddSecond),
            (2, Leap::DeleteSecond),
            (3, Leap::Unsynchronized),
        ] {
            let mut fields = good();
            fields.leap = value;
            let reading = parse(&fields.to_bytes(), 7).unwrap().unwrap();
            assert_eq!(reading.leap, leap);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut bytes = [0u8; SEGMENT_LEN];
        let mut state = 0x1234_5678_u32;
        for _ in 0..2000 {
            for b in &mut bytes {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let _ = parse(&bytes, int(&bytes, COUNT).unwrap_or(0));
        }
    }
}
