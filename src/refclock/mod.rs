//! Reference clocks (`[[refclock]]`): local devices and programs that tell the time
//! directly — a GPS receiver through gpsd's shared memory (SHM) or chrony's socket
//! protocol (SOCK), a PTP hardware clock (PHC), a kernel PPS device (PPS).
//!
//! Each driver turns what its device gives into [`RefclockSample`]s; the coordinator
//! feeds them to the same filter and selection as network sources, at stratum 0.
//! Parsing here is pure (bytes or ioctl results in, samples or a counted drop reason
//! out), so recorded data and fuzzers take the same path as the device.

use crate::wire::{Leap, NtpTimestamp};

pub mod phc;
pub mod pps;

/// One reading of a reference clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefclockSample {
    /// The local (disciplined) clock's reading when the reference was read.
    pub local: NtpTimestamp,
    /// Reference time minus local time at `local`, in seconds.
    pub offset: f64,
    /// Error bound of this one reading, in seconds (the read's delay, the device's
    /// precision).
    pub dispersion: f64,
    /// The leap second the device announces.
    pub leap: Leap,
}

pub mod filter;
pub mod shm;
pub mod sock;

/// Which kind of device a `[[refclock]]` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverKind {
    /// An NTP shared-memory segment, by unit number (key `shm::KEY_BASE + unit`).
    Shm { unit: u32 },
    /// chrony's refclock socket protocol on a Unix datagram socket at this path.
    Sock { path: std::path::PathBuf },
    /// A PTP hardware clock device (`/dev/ptp0`).
    Phc { device: std::path::PathBuf },
    /// A kernel PPS device (`/dev/pps0`).
    Pps { device: std::path::PathBuf },
}

impl DriverKind {
    /// How reports name it: `shm:2`, `sock:/run/ntimed/gps.sock`.
    pub fn describe(&self) -> String {
        match self {
            Self::Shm { unit } => format!("shm:{unit}"),
            Self::Sock { path } => format!("sock:{}", path.display()),
            Self::Phc { device } => format!("phc:{}", device.display()),
            Self::Pps { device } => format!("pps:{}", device.display()),
        }
    }
}

/// What the coordinator needs of a `[[refclock]]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefclockOptions {
    /// The reference id announced downstream while it is our reference ("GPS").
    pub refid: [u8; 4],
    /// Added to every sample (a receiver's known delay, say), seconds.
    pub offset: f64,
    /// Counted as each sample's round-trip delay, seconds (half of it goes into the
    /// root distance).
    pub delay: f64,
    /// The device's precision, seconds: a floor under every sample's error bound.
    pub precision: f64,
    /// Samples are combined and fed once per 2^poll seconds.
    pub poll: i8,
    /// Never given to selection: the clock only serves as another one's PPS lock.
    pub noselect: bool,
}

impl Default for RefclockOptions {
    fn default() -> Self {
        Self {
            refid: *b"REF\0",
            offset: 0.0,
            delay: 0.0,
            precision: 1e-6,
            poll: 4,
            noselect: false,
        }
    }
}

/// Why a reading was not taken as a sample, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefclockDrop {
    #[error("SHM: {0}")]
    Shm(#[from] shm::ShmDrop),
    #[error("SOCK: {0}")]
    Sock(#[from] sock::SockDrop),
    #[error("PHC: {0}")]
    Phc(#[from] phc::PhcReject),
    #[error("PPS: {0}")]
    Pps(#[from] pps::PpsDrop),
    /// The device refused the read (an ioctl's error).
    #[error("device: {0}")]
    Device(std::io::ErrorKind),
    /// A reading that parsed but cannot be used: an offset, error bound or pending
    /// slew that is not a finite number.
    #[error("not a finite number")]
    NotFinite,
    /// A sample received more than [`MAX_SAMPLE_AGE`] before it was read: its writer
    /// stalled, or it sat in a queue.
    #[error("received more than {MAX_SAMPLE_AGE} s before it was read")]
    Stale,
    /// A sample received after it was read, by the system clock.
    #[error("received after it was read")]
    Ahead,
}

/// The oldest an SHM or SOCK sample's receive time may be when it is read. Writers
/// such as gpsd update once a second; a sample much older is left from one that
/// stalled (chrony allows twice its poll, 32 s by default; we read every second).
pub const MAX_SAMPLE_AGE: f64 = 8.0;
/// How far past the system clock's reading a receive time may be, for the writer's
/// rounding: it was taken on the same clock, earlier.
const MAX_SAMPLE_LEAD: f64 = 0.001;

/// Checks a sample's receive time (Unix seconds and nanoseconds on the system clock)
/// against `system_now`, the system clock read after the sample was.
pub fn check_fresh(receive: (i64, u32), system_now: NtpTimestamp) -> Result<(), RefclockDrop> {
    // The system clock's era is the one around 2023; so is any honest receive time.
    let (now_seconds, now_nanos) = system_now.to_unix(1_700_000_000);
    let whole = i128::from(now_seconds) - i128::from(receive.0);
    let age = whole as f64 + (f64::from(now_nanos) - f64::from(receive.1)) * 1e-9;
    if age > MAX_SAMPLE_AGE {
        Err(RefclockDrop::Stale)
    } else if age < -MAX_SAMPLE_LEAD {
        Err(RefclockDrop::Ahead)
    } else {
        Ok(())
    }
}

/// A device's reading turned into a sample of the disciplined clock. Devices state
/// `offset` (reference minus receive time) against the *system* clock; the disciplined
/// clock may differ from it (the `observe` and `simulated` clocks), by `local_now`
/// minus `system_now` read together, which is taken out. `precision` is the larger of
/// the device's stated one and the configured one.
pub fn sample_from(
    offset: f64,
    leap: Leap,
    precision: f64,
    local_now: NtpTimestamp,
    system_now: NtpTimestamp,
) -> RefclockSample {
    RefclockSample {
        local: local_now,
        offset: offset - local_now.seconds_since(system_now),
        dispersion: precision,
        leap,
    }
}

/// Checks a `refid` as the config gives it: 1 to 4 printable ASCII characters,
/// padded with zero bytes.
pub fn parse_refid(text: &str) -> Result<[u8; 4], String> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "refid {text:?} must be 1 to 4 printable ASCII characters"
        ));
    }
    let mut refid = [0u8; 4];
    for (slot, byte) in refid.iter_mut().zip(text.bytes()) {
        *slot = byte;
    }
    Ok(refid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refids_are_short_ascii() {
        assert_eq!(parse_refid("GPS"), Ok(*b"GPS\0"));
        assert_eq!(parse_refid("PPS1"), Ok(*b"PPS1"));
        for bad in ["", "GPSPPS", "G S", "Ä"] {
            assert!(parse_refid(bad).is_err(), "{bad:?}");
        }
    }

    /// The software clock reads 0.25 s ahead of the system clock: a device 1 ms ahead
    /// of the system clock is 0.249 s behind the disciplined one.
    #[test]
    fn samples_are_against_the_disciplined_clock() {
        let system = NtpTimestamp::from_unix(1_800_000_000, 0);
        let local = system.add_seconds(0.25);
        let sample = sample_from(0.001, Leap::NoWarning, 1e-6, local, system);
        assert!((sample.offset + 0.249).abs() < 1e-9, "{sample:?}");
        assert_eq!(sample.local, local);
        assert_eq!(sample.dispersion, 1e-6);
    }

    #[test]
    fn samples_received_long_before_or_after_the_read_are_dropped() {
        let now = NtpTimestamp::from_unix(1_800_000_000, 500_000_000);
        assert_eq!(check_fresh((1_800_000_000, 0), now), Ok(()));
        assert_eq!(check_fresh((1_799_999_992, 600_000_000), now), Ok(()));
        assert_eq!(
            check_fresh((1_799_999_992, 400_000_000), now),
            Err(RefclockDrop::Stale)
        );
        assert_eq!(
            check_fresh((1_800_000_000, 502_000_000), now),
            Err(RefclockDrop::Ahead)
        );
        // Another era, or nonsense, is stale or ahead: never taken.
        assert_eq!(
            check_fresh((1_800_000_000 - (1 << 32), 0), now),
            Err(RefclockDrop::Stale)
        );
        assert_eq!(
            check_fresh((1_800_000_000 + (1 << 32), 0), now),
            Err(RefclockDrop::Ahead)
        );
        assert_eq!(check_fresh((i64::MIN, 0), now), Err(RefclockDrop::Stale));
        assert_eq!(
            check_fresh((i64::MAX, 999_999_999), now),
            Err(RefclockDrop::Ahead)
        );
    }
}
