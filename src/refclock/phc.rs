//! PTP hardware clock (`/dev/ptpN`) samples: what one offset ioctl returned (see
//! [`crate::sys::PhcReader`]) in, one [`RefclockSample`] or a named reason out.
//!
//! A bracketing read gives triples (system before, PHC, system after); the triple read
//! fastest is the one least disturbed (an interrupt, a slow bus cycle), so it alone is
//! used, and the PHC is taken to have been read at the midpoint of its brackets. A
//! cross-timestamp has no brackets: both clocks were latched at one instant.

use super::RefclockSample;
use crate::sys::{DeviceTime, PhcReadings};
use crate::wire::{Leap, NtpTimestamp};

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// How readings become samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhcSettings {
    /// Seconds the PHC runs ahead of UTC, subtracted from its readings: 37 for a PHC on
    /// TAI (what ptp4l keeps), 0 for one on UTC.
    pub utc_offset: i64,
    /// The longest bracket (system after − system before) trusted, seconds; a read that
    /// took longer was disturbed too much to say when the PHC was read.
    pub max_delay: f64,
    /// The readings' own resolution, seconds: added to every sample's dispersion.
    pub precision: f64,
}

impl Default for PhcSettings {
    fn default() -> Self {
        Self {
            utc_offset: 0,
            max_delay: 1e-3,
            precision: 1e-9,
        }
    }
}

/// Why a reading gave no sample. Each is meant to be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhcReject {
    #[error("the ioctl returned no readings")]
    NoReadings,
    #[error("a reading's nanoseconds are outside 0..1e9")]
    BadNanoseconds,
    /// Exactly zero: nothing was filled in.
    #[error("a reading is zero")]
    ZeroTime,
    /// The system clock read later is earlier than the one read before.
    #[error("the system readings around the PHC go backwards")]
    Reversed,
    #[error("even the fastest read took longer than the maximum delay")]
    DelayTooLong,
}

/// One sample from what one offset ioctl returned.
pub fn sample_from_readings(
    readings: &PhcReadings,
    settings: &PhcSettings,
) -> Result<RefclockSample, PhcReject> {
    match readings {
        PhcReadings::CrossTimestamp { phc, system } => {
            sample_from_cross_timestamp(*phc, *system, settings)
        }
        PhcReadings::Triples(triples) => sample_from_triples(triples, settings),
    }
}

/// A sample from `[system before, PHC, system after]` triples: the one with the
/// shortest delay, offset = PHC − midpoint, dispersion = delay / 2 + precision.
/// Malformed triples are skipped; if none is left, the first one's reason is returned.
pub fn sample_from_triples(
    triples: &[[DeviceTime; 3]],
    settings: &PhcSettings,
) -> Result<RefclockSample, PhcReject> {
    let mut first_reject = PhcReject::NoReadings;
    let mut best: Option<(i128, i128, i128)> = None; // (delay, before, phc), ns
    for (index, &[before, phc, after]) in triples.iter().enumerate() {
        match checked_triple(before, phc, after) {
            Ok(triple) => {
                if best.is_none_or(|(delay, _, _)| triple.0 < delay) {
                    best = Some(triple);
                }
            }
            Err(reason) if index == 0 => first_reject = reason,
            Err(_) => {}
        }
    }
    let (delay, before, phc) = best.ok_or(first_reject)?;
    let delay_seconds = delay as f64 / NANOS_PER_SECOND as f64;
    // Also refuses a NaN maximum, so a bad setting cannot let everything through.
    if delay_seconds > settings.max_delay || settings.max_delay.is_nan() {
        return Err(PhcReject::DelayTooLong);
    }
    let midpoint = before + delay / 2;
    // PHC − midpoint, to the half nanosecond the integer midpoint loses.
    let offset_half_ns = 2 * (phc - tai_correction(settings)) - 2 * before - delay;
    Ok(RefclockSample {
        local: ntp_from_nanos(midpoint),
        offset: offset_half_ns as f64 / (2 * NANOS_PER_SECOND) as f64,
        dispersion: delay_seconds / 2.0 + settings.precision,
        leap: Leap::NoWarning,
    })
}

/// A sample from a cross-timestamp: both clocks at one instant, so the dispersion is
/// the precision alone.
pub fn sample_from_cross_timestamp(
    phc: DeviceTime,
    system: DeviceTime,
    settings: &PhcSettings,
) -> Result<RefclockSample, PhcReject> {
    let phc = checked_nanos(phc)?;
    let system = checked_nanos(system)?;
    let offset_ns = phc - tai_correction(settings) - system;
    Ok(RefclockSample {
        local: ntp_from_nanos(system),
        offset: offset_ns as f64 / NANOS_PER_SECOND as f64,
        dispersion: settings.precision,
        leap: Leap::NoWarning,
    })
}

/// A `CLOCK_REALTIME` reading as an NTP timestamp; `None` if its nanoseconds are not
/// below one second.
pub fn realtime_to_ntp(time: DeviceTime) -> Option<NtpTimestamp> {
    let nanos = u32::try_from(time.nanos)
        .ok()
        .filter(|&n| n < 1_000_000_000)?;
    Some(NtpTimestamp::from_unix(time.seconds, nanos))
}

/// (delay, system before, PHC) in ns, or why the triple is unusable.
fn checked_triple(
    before: DeviceTime,
    phc: DeviceTime,
    after: DeviceTime,
) -> Result<(i128, i128, i128), PhcReject> {
    let before = checked_nanos(before)?;
    let phc = checked_nanos(phc)?;
    let after = checked_nanos(after)?;
    let delay = after - before;
    if delay < 0 {
        return Err(PhcReject::Reversed);
    }
    Ok((delay, before, phc))
}

/// Nanoseconds since the epoch, in i128 so no reading can overflow: f64 seconds would
/// lose the nanoseconds at today's ~1.8e9 s.
fn checked_nanos(time: DeviceTime) -> Result<i128, PhcReject> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(PhcReject::BadNanoseconds);
    }
    if time.seconds == 0 && time.nanos == 0 {
        return Err(PhcReject::ZeroTime);
    }
    Ok(i128::from(time.seconds) * NANOS_PER_SECOND + i128::from(time.nanos))
}

fn tai_correction(settings: &PhcSettings) -> i128 {
    i128::from(settings.utc_offset) * NANOS_PER_SECOND
}

/// Nanoseconds since the Unix epoch (from [`checked_nanos`], so the seconds fit i64)
/// as an NTP timestamp.
fn ntp_from_nanos(nanos: i128) -> NtpTimestamp {
    let seconds = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).unwrap_or(i64::MAX);
    let sub = u32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).unwrap_or(0);
    NtpTimestamp::from_unix(seconds, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-11-28 08:00:00 UTC, where the recorded readings sit.
    const T0: i64 = 1_764_316_800;

    fn at(seconds: i64, nanos: i64) -> DeviceTime {
        DeviceTime { seconds, nanos }
    }

    /// Five `PTP_SYS_OFFSET_EXTENDED` samples shaped like a NIC's (made up for this
    /// table, not captured): a PHC on TAI, 37 s and about 1.3 µs ahead of the system
    /// clock, read in 1.5 to 29 µs. (before ns, PHC ns, after ns), all within second
    /// T0 (the PHC's within T0 + 37).
    const EXTENDED: [(i64, i64, i64); 5] = [
        (100_000_000, 100_003_010, 100_003_620),
        (100_005_000, 100_007_600, 100_006_700),
        (100_008_000, 100_010_150, 100_009_800),
        (100_011_000, 100_020_900, 100_040_000),
        (100_042_000, 100_044_100, 100_043_500),
    ];

    fn extended() -> Vec<[DeviceTime; 3]> {
        EXTENDED
            .iter()
            .map(|&(b, p, a)| [at(T0, b), at(T0 + 37, p), at(T0, a)])
            .collect()
    }

    fn tai() -> PhcSettings {
        PhcSettings {
            utc_offset: 37,
            ..PhcSettings::default()
        }
    }

    /// The offset (ns, against the chosen triple's midpoint) and delay (ns) expected,
    /// or the reason for no sample.
    type Expected = Result<(i64, i64), PhcReject>;

    /// Each row: what was read, the settings, and what is expected.
    #[test]
    fn recorded_readings_give_the_sample_of_the_fastest_read() {
        let good = extended();
        let mut one_bad = good.clone();
        one_bad[2] = [
            at(T0, 100_008_500),
            at(T0 + 37, 100_010_150),
            at(T0, 100_008_000),
        ];
        let mut reversed = good.clone();
        for triple in &mut reversed {
            triple.swap(0, 2);
        }
        let huge: Vec<_> = good
            .iter()
            .map(|&[b, p, _]| [b, p, at(b.seconds, b.nanos + 2_000_000)])
            .collect();
        let bad_nanos = vec![[at(T0, 1_000_000_000), at(T0 + 37, 5), at(T0 + 1, 0)]];
        let zeros = vec![[at(0, 0); 3]; 5];
        let utc = PhcSettings::default();
        let rows: Vec<(&str, Vec<[DeviceTime; 3]>, PhcSettings, Expected)> = vec![
            // Fastest: the fifth (1 500 ns), midpoint 100_042_750 → +1 350 ns.
            ("good, TAI", good.clone(), tai(), Ok((1_350, 1_500))),
            (
                "good, read as UTC",
                good.clone(),
                utc,
                Ok((37_000_001_350, 1_500)),
            ),
            // The third, 500 ns backwards, would win if its sign were ignored.
            ("one bad triple", one_bad, tai(), Ok((1_350, 1_500))),
            ("reversed", reversed, tai(), Err(PhcReject::Reversed)),
            ("huge delay", huge, tai(), Err(PhcReject::DelayTooLong)),
            (
                "bad nanoseconds",
                bad_nanos,
                tai(),
                Err(PhcReject::BadNanoseconds),
            ),
            ("all zero", zeros, tai(), Err(PhcReject::ZeroTime)),
            ("empty", Vec::new(), tai(), Err(PhcReject::NoReadings)),
        ];
        for (name, triples, settings, expected) in rows {
            let got = sample_from_triples(&triples, &settings);
            match (got, expected) {
                (Ok(sample), Ok((offset_ns, delay_ns))) => {
                    let offset = offset_ns as f64 * 1e-9;
                    assert!((sample.offset - offset).abs() < 1e-12, "{name}: {sample:?}");
                    let dispersion = delay_ns as f64 * 0.5e-9 + settings.precision;
                    assert!((sample.dispersion - dispersion).abs() < 1e-15, "{name}");
                    assert_eq!(
                        sample.local,
                        NtpTimestamp::from_unix(T0, 100_042_750),
                        "{name}"
                    );
                    assert_eq!(sample.leap, Leap::NoWarning);
                }
                (got, expected) => assert_eq!(got.map(|_| ()), expected.map(|_| ()), "{name}"),
            }
        }
    }

    #[test]
    fn the_maximum_delay_is_a_setting() {
        let loose = PhcSettings {
            max_delay: 0.01,
            ..tai()
        };
        let slow = vec![[at(T0, 0), at(T0 + 37, 2_000_000), at(T0, 4_000_000)]];
        let sample = sample_from_triples(&slow, &loose).unwrap();
        assert!(sample.offset.abs() < 1e-12);
        assert!((sample.dispersion - 2e-3 - 1e-9).abs() < 1e-12);
        assert_eq!(
            sample_from_triples(&slow, &tai()),
            Err(PhcReject::DelayTooLong)
        );
        let nan = PhcSettings {
            max_delay: f64::NAN,
            ..tai()
        };
        assert_eq!(
            sample_from_triples(&slow, &nan),
            Err(PhcReject::DelayTooLong)
        );
    }

    #[test]
    fn a_midpoint_across_a_second_boundary_keeps_its_nanoseconds() {
        // Before 999_999_000, after 1 µs into the next second: midpoint exactly T0 + 1.
        let triple = [[
            at(T0, 999_999_000),
            at(T0 + 37, 999_999_990),
            at(T0 + 1, 1_000),
        ]];
        let sample = sample_from_triples(&triple, &tai()).unwrap();
        assert_eq!(sample.local, NtpTimestamp::from_unix(T0 + 1, 0));
        assert!((sample.offset + 10e-9).abs() < 1e-15);
    }

    #[test]
    fn a_cross_timestamp_has_no_delay() {
        let readings = PhcReadings::CrossTimestamp {
            phc: at(T0 + 37, 500_000_250),
            system: at(T0, 500_000_000),
        };
        let sample = sample_from_readings(&readings, &tai()).unwrap();
        assert_eq!(sample.local, NtpTimestamp::from_unix(T0, 500_000_000));
        assert!((sample.offset - 250e-9).abs() < 1e-15);
        assert_eq!(sample.dispersion, 1e-9);
        let zero = PhcReadings::CrossTimestamp {
            phc: at(0, 0),
            system: at(T0, 0),
        };
        assert_eq!(
            sample_from_readings(&zero, &tai()),
            Err(PhcReject::ZeroTime)
        );
        let negative = PhcReadings::CrossTimestamp {
            phc: at(T0, -1),
            system: at(T0, 0),
        };
        assert_eq!(
            sample_from_readings(&negative, &tai()),
            Err(PhcReject::BadNanoseconds)
        );
    }

    #[test]
    fn extreme_readings_give_finite_offsets_or_a_reason() {
        let wild = vec![[at(i64::MIN, 0), at(i64::MAX, 999_999_999), at(i64::MIN, 1)]];
        let sample = sample_from_triples(&wild, &tai()).unwrap();
        assert!(sample.offset.is_finite() && sample.offset > 1e18);
        let settings = PhcSettings {
            utc_offset: i64::MIN,
            ..tai()
        };
        let sample = sample_from_triples(&wild, &settings).unwrap();
        assert!(sample.offset.is_finite());
    }

    #[test]
    fn realtime_readings_convert_to_ntp_only_with_valid_nanoseconds() {
        assert_eq!(
            realtime_to_ntp(at(T0, 250_000_000)),
            Some(NtpTimestamp::from_unix(T0, 250_000_000))
        );
        assert_eq!(realtime_to_ntp(at(T0, 1_000_000_000)), None);
        assert_eq!(realtime_to_ntp(at(T0, -1)), None);
    }
}
