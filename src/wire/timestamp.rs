//! NTP time formats (RFC 5905 §6): the 64-bit timestamp and the 32-bit short format.
//!
//! A timestamp holds 32 bits of seconds and 32 bits of fraction since the start of its
//! era; era 0 began in 1900 and era 1 begins on 2036-02-07. Arithmetic on timestamps is
//! done modulo 2^64, which gives the right difference between any two instants less than
//! 68 years apart, whichever side of an era boundary they fall on. Turning a timestamp
//! into a calendar time needs a pivot (the local clock) to pick the era.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 (the NTP epoch) to 1970-01-01 (the Unix epoch).
pub const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

const FRACTION_PER_SECOND: f64 = 4_294_967_296.0; // 2^32

/// A 64-bit NTP timestamp (32.32 fixed point, era-relative).
/// Deliberately not `Ord`: raw order is wrong across an era boundary; compare with
/// [`NtpTimestamp::seconds_since`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NtpTimestamp(u64);

impl NtpTimestamp {
    /// The all-zero value, which NTP uses to mean "unknown".
    pub const ZERO: Self = Self(0);

    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    pub const fn to_bits(self) -> u64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Converts a Unix time (seconds may be negative, nanoseconds in 0..1e9) to NTP,
    /// wrapping into the right era.
    pub fn from_unix(seconds: i64, nanos: u32) -> Self {
        let ntp_seconds = seconds.wrapping_add(NTP_UNIX_OFFSET) as u64 & 0xffff_ffff;
        let fraction = ((u64::from(nanos) << 32) / 1_000_000_000) & 0xffff_ffff;
        Self(ntp_seconds << 32 | fraction)
    }

    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(d) => Self::from_unix(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                // Before 1970: go back from the epoch.
                Self::from_unix(0, 0).add_seconds(-e.duration().as_secs_f64())
            }
        }
    }

    /// Unix time (seconds, nanoseconds) of this timestamp in the era that puts it
    /// closest to `pivot_unix_seconds` (normally the local clock).
    pub fn to_unix(self, pivot_unix_seconds: i64) -> (i64, u32) {
        let pivot = Self::from_unix(pivot_unix_seconds, 0);
        let delta = self.0.wrapping_sub(pivot.0) as i64; // 32.32, within ±68 years
        let whole = delta >> 32; // floor division keeps the fraction positive
        let fraction = (delta as u64) & 0xffff_ffff;
        let nanos = ((fraction * 1_000_000_000) >> 32) as u32;
        (pivot_unix_seconds.saturating_add(whole), nanos)
    }

    /// `self - earlier` in seconds, correct across era boundaries.
    pub fn seconds_since(self, earlier: Self) -> f64 {
        self.0.wrapping_sub(earlier.0) as i64 as f64 / FRACTION_PER_SECOND
    }

    /// This timestamp moved by `seconds` (may be negative).
    pub fn add_seconds(self, seconds: f64) -> Self {
        let delta = (seconds * FRACTION_PER_SECOND) as i64;
        Self(self.0.wrapping_add(delta as u64))
    }
}

impl std::fmt::Debug for NtpTimestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NtpTimestamp({:08x}.{:08x})",
            self.0 >> 32,
            self.0 & 0xffff_ffff
        )
    }
}

/// The 32-bit short format (16.16 fixed point, unsigned), used for root delay and
/// root dispersion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct NtpShort(u32);

impl NtpShort {
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Saturates at 0 and at the largest value (just under 65536 s); NaN becomes 0.
    pub fn from_seconds(seconds: f64) -> Self {
        Self((seconds * 65536.0).clamp(0.0, u32::MAX as f64) as u32)
    }

    pub fn to_seconds(self) -> f64 {
        f64::from(self.0) / 65536.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        let t = NtpTimestamp::from_unix(0, 0);
        assert_eq!(t.to_bits() >> 32, 2_208_988_800);
        assert_eq!(t.to_unix(0), (0, 0));
    }

    #[test]
    fn fraction_round_trips_to_the_nanosecond() {
        let t = NtpTimestamp::from_unix(1_700_000_000, 123_456_789);
        let (s, ns) = t.to_unix(1_700_000_000);
        assert_eq!(s, 1_700_000_000);
        assert!((i64::from(ns) - 123_456_789).abs() <= 1, "{ns}");
    }

    #[test]
    fn era_1_begins_2036_02_07() {
        // 2036-02-07T06:28:16Z is the first second of era 1.
        let wrap_unix = (1u64 << 32) as i64 - NTP_UNIX_OFFSET;
        assert_eq!(wrap_unix, 2_085_978_496);
        let t = NtpTimestamp::from_unix(wrap_unix, 0);
        assert_eq!(t.to_bits(), 0, "era 1 starts at raw zero");
        // With a pivot in 2036, raw zero is read as 2036, not 1900.
        assert_eq!(t.to_unix(wrap_unix - 1000).0, wrap_unix);
        let just_before = NtpTimestamp::from_unix(wrap_unix - 1, 500_000_000);
        assert_eq!(
            just_before.to_unix(wrap_unix + 1000),
            (wrap_unix - 1, 500_000_000)
        );
    }

    #[test]
    fn differences_are_right_across_the_wrap() {
        let wrap_unix = (1u64 << 32) as i64 - NTP_UNIX_OFFSET;
        let before = NtpTimestamp::from_unix(wrap_unix - 1, 0);
        let after = NtpTimestamp::from_unix(wrap_unix + 2, 250_000_000);
        assert!((after.seconds_since(before) - 3.25).abs() < 1e-9);
        assert!((before.seconds_since(after) + 3.25).abs() < 1e-9);
        assert_eq!(before.add_seconds(3.25), after);
    }

    #[test]
    fn short_format_saturates() {
        assert_eq!(NtpShort::from_seconds(-1.0).to_bits(), 0);
        assert_eq!(NtpShort::from_seconds(f64::NAN).to_bits(), 0);
        assert_eq!(NtpShort::from_seconds(1e9).to_bits(), u32::MAX);
        assert_eq!(NtpShort::from_seconds(1.5).to_bits(), 0x0001_8000);
        assert_eq!(NtpShort::from_bits(0x0001_8000).to_seconds(), 1.5);
    }
}
