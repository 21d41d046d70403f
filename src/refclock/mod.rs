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
