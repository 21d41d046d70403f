//! The kernel clock, steered through `adjtimex` ([`crate::sys`] holds the syscalls).
//!
//! The kernel PLL is switched off whenever we set the frequency, as chrony does: the
//! sync engine is the only loop, and a second one in the kernel would fight it. Slews
//! use the kernel's old `adjtime` mechanism (`ADJ_OFFSET_SINGLESHOT`), which runs at a
//! fixed 500 ppm whatever duration the engine asks for.
//!
//! Every change needs `CAP_SYS_TIME`; without it each command fails with
//! [`ClockError::System`] and the clock is left alone. Reads need no privilege.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::{Clock, ClockCommand, ClockError, ClockStatus, check_finite};
use crate::sys::{self, KernelAdjust, KernelClock, KernelClockChange, StatusFlags};
use crate::wire::{Leap, NtpTimestamp};

/// The rate of a singleshot slew: the kernel's `MAX_TICKADJ`, 500 µs per second.
pub const SINGLESHOT_SLEW_RATE: f64 = 500e-6;

/// The kernel clock. Holds no state of its own beyond a step counter: the kernel is
/// the truth, so two of these (or a restart) see the same clock.
#[derive(Debug, Default)]
pub struct SystemClock {
    steps: AtomicU64,
}

impl SystemClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a step applied elsewhere (by the clock process, for the engine's
    /// read-only view of the kernel clock).
    pub fn record_step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything `adjtimex` reports, for diagnostics. Read-only, needs no privilege.
    pub fn read_kernel() -> io::Result<KernelClock> {
        sys::adjtimex_read()
    }
}

/// Maps a refusal to a [`ClockError`] that says what was being done and why it failed
/// (`EPERM` without `CAP_SYS_TIME`).
fn refused(operation: &str, err: io::Error) -> ClockError {
    ClockError::System(format!("{operation}: {err}"))
}

/// Splits `offset` seconds into whole seconds (rounded down) and nanoseconds in
/// `0..1e9`, the form `ADJ_SETOFFSET` requires: −0.3 s is (−1, 700 000 000). `None`
/// if it is not finite or the seconds do not fit an i64.
fn split_seconds(offset: f64) -> Option<(i64, u32)> {
    // 2^63 is exactly representable in f64; NaN is in no range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let whole = offset.floor();
    if !(-LIMIT..LIMIT).contains(&whole) {
        return None;
    }
    let mut seconds = whole as i64;
    let mut nanos = ((offset - whole) * 1e9).round() as u32; // 0..=1e9
    if nanos >= 1_000_000_000 {
        seconds = seconds.checked_add(1)?;
        nanos = 0;
    }
    Some((seconds, nanos))
}

/// Converts an error estimate in seconds to the kernel's µs, clamped to what it keeps.
fn error_us(seconds: f64) -> i64 {
    // Clamp in f64 so the cast cannot saturate surprisingly; NaN (already refused by
    // check_finite) would become 0.
    (seconds * 1e6).round().clamp(0.0, sys::MAX_ERROR_US as f64) as i64
}

/// The status bits to set and clear for a leap announcement. `Unsynchronized` is
/// NTP's "alarm" leap indicator, which the kernel spells `STA_UNSYNC`.
fn leap_flags(leap: Leap) -> (StatusFlags, StatusFlags) {
    let both = StatusFlags::INS.union(StatusFlags::DEL);
    match leap {
        Leap::NoWarning => (StatusFlags::NONE, both),
        Leap::AddSecond => (StatusFlags::INS, StatusFlags::DEL),
        Leap::DeleteSecond => (StatusFlags::DEL, StatusFlags::INS),
        Leap::Unsynchronized => (StatusFlags::UNSYNC, both),
    }
}

/// The leap indicator the kernel's status bits amount to: a pending leap second
/// first, else `Unsynchronized` if `STA_UNSYNC`, which is what NTP would send.
fn leap_from(kernel: &KernelClock) -> Leap {
    if kernel.has(StatusFlags::INS) {
        Leap::AddSecond
    } else if kernel.has(StatusFlags::DEL) {
        Leap::DeleteSecond
    } else if kernel.has(StatusFlags::UNSYNC) {
        Leap::Unsynchronized
    } else {
        Leap::NoWarning
    }
}

fn adjust(operation: &str, adjust: KernelAdjust) -> Result<(), ClockError> {
    sys::adjtimex_apply(&KernelClockChange::Adjust(adjust))
        .map(drop)
        .map_err(|e| refused(operation, e))
}

impl Clock for SystemClock {
    fn now(&self) -> NtpTimestamp {
        NtpTimestamp::from_system_time(SystemTime::now())
    }

    fn apply(&self, command: ClockCommand) -> Result<(), ClockError> {
        check_finite(&command)?;
        match command {
            ClockCommand::Step { offset } => {
                let (seconds, nanos) = split_seconds(offset).ok_or_else(|| {
                    ClockError::System(format!("step: {offset} s is out of range"))
                })?;
                sys::adjtimex_apply(&KernelClockChange::Step { seconds, nanos })
                    .map_err(|e| refused("step", e))?;
                self.steps.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            ClockCommand::Slew { offset, .. } => {
                // `duration` is advisory: the kernel slews at its own fixed rate.
                let micros = (offset * 1e6).round();
                if micros.is_nan() || micros.abs() > sys::MAX_SINGLESHOT_US as f64 {
                    return Err(ClockError::System(format!(
                        "slew: {offset} s is outside ±{} s; step instead",
                        sys::MAX_SINGLESHOT_US as f64 * 1e-6
                    )));
                }
                sys::adjtimex_apply(&KernelClockChange::SlewOnce {
                    micros: micros as i64,
                })
                .map(drop)
                .map_err(|e| refused("slew", e))
            }
            ClockCommand::SetFrequency { ppm } => {
                if ppm.is_nan() || ppm.abs() > sys::MAX_FREQUENCY_PPM {
                    return Err(ClockError::System(format!(
                        "set frequency: {ppm} ppm is outside the kernel's ±{} ppm",
                        sys::MAX_FREQUENCY_PPM
                    )));
                }
                adjust(
                    "set frequency",
                    KernelAdjust {
                        frequency_ppm: Some(ppm),
                        clear_status: StatusFlags::PLL,
                        ..KernelAdjust::default()
                    },
                )
            }
            ClockCommand::SetLeap(leap) => {
                let (set_status, clear_status) = leap_flags(leap);
                adjust(
                    "set leap",
                    KernelAdjust {
                        set_status,
                        clear_status,
                        ..KernelAdjust::default()
                    },
                )
            }
            ClockCommand::SetStatus {
                synchronized,
                estimated_error,
                max_error,
            } => {
                let (set_status, clear_status) = if synchronized {
                    (StatusFlags::NONE, StatusFlags::UNSYNC)
                } else {
                    (StatusFlags::UNSYNC, StatusFlags::NONE)
                };
                adjust(
                    "set status",
                    KernelAdjust {
                        set_status,
                        clear_status,
                        estimated_error_us: Some(error_us(estimated_error)),
                        max_error_us: Some(error_us(max_error)),
                        ..KernelAdjust::default()
                    },
                )
            }
        }
    }

    fn status(&self) -> ClockStatus {
        let steps = self.steps.load(Ordering::Relaxed);
        let base = ClockStatus {
            max_slew_rate: SINGLESHOT_SLEW_RATE,
            steps,
            ..ClockStatus::default()
        };
        let kernel = match sys::adjtimex_read() {
            Ok(kernel) => kernel,
            Err(e) => {
                tracing::debug!("reading the kernel clock: {e}");
                return base;
            }
        };
        // Read-only (ADJ_OFFSET_SS_READ); 0 if even that is refused.
        let pending_us = sys::pending_singleshot_us().unwrap_or(0);
        ClockStatus {
            frequency_ppm: kernel.freq_ppm,
            pending_slew: pending_us as f64 * 1e-6,
            leap: leap_from(&kernel),
            synchronized: !kernel.has(StatusFlags::UNSYNC),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    //! Read-only: nothing here may change this machine's clock. The one test that
    //! asks for a change runs only when `CAP_SYS_TIME` is provably absent, so the
    //! kernel must refuse it.

    use super::*;

    /// Whether this thread certainly lacks `CAP_SYS_TIME` (bit 25 of CapEff). Any
    /// doubt counts as "has it".
    fn lacks_cap_sys_time() -> bool {
        const CAP_SYS_TIME: u32 = 25;
        let status = std::fs::read_to_string("/proc/thread-self/status")
            .or_else(|_| std::fs::read_to_string("/proc/self/status"));
        let Ok(status) = status else { return false };
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_TIME) == 0)
    }

    #[test]
    fn kernel_read_is_sane() {
        let kernel = SystemClock::read_kernel().expect("adjtimex with modes 0");
        assert!(kernel.freq_ppm.abs() <= 500.0, "{kernel:?}");
        assert_eq!(kernel.freq_ppm, kernel.freq as f64 / 65536.0);
        assert!(
            (9_000..=11_000).contains(&kernel.tick),
            "tick {}",
            kernel.tick
        );
        assert!(kernel.time_nanos < 1_000_000_000);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let kernel_time = kernel.time_secs as f64 + f64::from(kernel.time_nanos) * 1e-9;
        assert!((kernel_time - now).abs() < 1.0, "{kernel_time} vs {now}");
        // Any of the six is valid; from_raw maps nothing else in.
        assert!(matches!(
            kernel.state,
            sys::ClockState::Ok
                | sys::ClockState::Insert
                | sys::ClockState::Delete
                | sys::ClockState::InProgress
                | sys::ClockState::Wait
                | sys::ClockState::Error
        ));
        sys::pending_singleshot_us().expect("ADJ_OFFSET_SS_READ is unprivileged");
    }

    #[test]
    fn now_is_the_system_clock() {
        let clock = SystemClock::new();
        let ours = clock.now();
        let system = NtpTimestamp::from_system_time(SystemTime::now());
        let diff = system.seconds_since(ours);
        assert!(diff.abs() < 1.0, "{diff}");
    }

    #[test]
    fn status_reads_the_kernel() {
        let status = SystemClock::new().status();
        assert!(status.frequency_ppm.abs() <= 500.0, "{status:?}");
        assert_eq!(status.max_slew_rate, 500e-6);
        assert_eq!(status.steps, 0);
        assert!(status.pending_slew.abs() <= 2200.0, "{status:?}");
    }

    #[test]
    fn non_finite_commands_are_refused_before_the_kernel() {
        let clock = SystemClock::new();
        let cases = [
            (ClockCommand::Step { offset: f64::NAN }, "offset"),
            (
                ClockCommand::Slew {
                    offset: f64::INFINITY,
                    duration: 1.0,
                },
                "offset",
            ),
            (
                ClockCommand::Slew {
                    offset: 0.0,
                    duration: f64::NAN,
                },
                "duration",
            ),
            (
                ClockCommand::SetFrequency {
                    ppm: f64::NEG_INFINITY,
                },
                "ppm",
            ),
            (
                ClockCommand::SetStatus {
                    synchronized: true,
                    estimated_error: f64::NAN,
                    max_error: 1.0,
                },
                "estimated_error",
            ),
        ];
        for (command, field) in cases {
            assert_eq!(
                clock.apply(command),
                Err(ClockError::NotFinite(field)),
                "{command:?}"
            );
        }
        assert_eq!(clock.status().steps, 0);
    }

    #[test]
    fn changes_without_privilege_are_refused() {
        if !lacks_cap_sys_time() {
            eprintln!("skipped: CAP_SYS_TIME may be present, and this would change the clock");
            return;
        }
        let clock = SystemClock::new();
        match clock.apply(ClockCommand::SetFrequency { ppm: 0.0 }) {
            Err(ClockError::System(message)) => {
                assert!(message.starts_with("set frequency:"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Out of range: refused before the kernel is asked.
        for command in [
            ClockCommand::SetFrequency { ppm: 500.1 },
            ClockCommand::Slew {
                offset: 0.6,
                duration: 1.0,
            },
        ] {
            assert!(
                matches!(clock.apply(command), Err(ClockError::System(_))),
                "{command:?}"
            );
        }
        assert_eq!(clock.status().steps, 0);
    }

    #[test]
    fn offsets_split_into_seconds_and_positive_nanoseconds() {
        assert_eq!(split_seconds(1.5), Some((1, 500_000_000)));
        assert_eq!(split_seconds(-0.3), Some((-1, 700_000_000)));
        assert_eq!(split_seconds(-2.0), Some((-2, 0)));
        assert_eq!(split_seconds(0.999_999_999_9), Some((1, 0)));
        assert_eq!(split_seconds(f64::NAN), None);
        assert_eq!(split_seconds(1e19), None);
    }

    #[test]
    fn leap_bits_round_trip() {
        for leap in [
            Leap::NoWarning,
            Leap::AddSecond,
            Leap::DeleteSecond,
            Leap::Unsynchronized,
        ] {
            let (set, clear) = leap_flags(leap);
            assert_eq!(set.bits() & clear.bits(), 0);
            let kernel = KernelClock {
                offset: 0,
                freq: 0,
                freq_ppm: 0.0,
                maxerror: 0,
                esterror: 0,
                status: set.bits(),
                tick: 10_000,
                time_secs: 0,
                time_nanos: 0,
                state: sys::ClockState::Ok,
            };
            assert_eq!(leap_from(&kernel), leap);
        }
    }

    #[test]
    fn error_estimates_are_clamped_microseconds() {
        assert_eq!(error_us(0.0015), 1500);
        assert_eq!(error_us(-1.0), 0);
        assert_eq!(error_us(1e6), sys::MAX_ERROR_US);
    }
}
