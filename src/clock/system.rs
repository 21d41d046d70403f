//! The kernel clock, steered through `adjtimex` ([`crate::sys`] holds the syscalls).
//!
//! The kernel PLL is switched off whenever we set the frequency, as chrony does: the
//! sync engine is the only loop, and a second one in the kernel would fight it.
//!
//! A slew of `offset` over `duration` is a change of frequency, as chrony makes it: the
//! clock runs `offset / duration` faster (at most [`MAX_SLEW_RATE`], through the tick
//! length beyond the frequency's ±500 ppm) until the offset is in, then goes back to
//! the commanded frequency. Someone must end it on time: a timer task when the clock
//! lives in an async runtime (the daemon without privilege separation, clknetsim), the
//! clock process's receive loop otherwise ([`SystemClock::slew_deadline`]), and every
//! command and status read ends one that is due. Whatever the ending misses by (a late
//! timer) is exact in the books and reported as pending, so the next slew carries it.
//!
//! Every change needs `CAP_SYS_TIME`; without it each command fails with
//! [`ClockError::System`] and the clock is left alone. Reads need no privilege.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{
    Clock, ClockCommand, ClockError, ClockStatus, MAX_SLEW_OFFSET, MAX_SLEW_RATE, check_finite,
};
use crate::sys::{self, KernelAdjust, KernelClock, KernelClockChange, StatusFlags};
use crate::wire::{Leap, NtpTimestamp};

/// The longest a slew runs, seconds: keeps deadlines representable; a slower slew
/// than this allows just runs faster.
const MAX_SLEW_SECONDS: f64 = 1e7;

/// The kernel clock. The kernel holds the time and the frequency; what a slew in
/// progress still owes is kept here. The engine's read-only view in another process
/// keeps the same books from the commands the clock process applied
/// ([`Self::record_applied`]), so both report the same pending slew.
#[derive(Debug)]
pub struct SystemClock {
    steps: AtomicU64,
    /// Shared with the timer task that ends a slew.
    steering: Arc<Mutex<Steering>>,
    /// `USER_HZ`: one µs of tick is this many ppm.
    hz: i64,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            steps: AtomicU64::new(0),
            steering: Arc::default(),
            hz: sys::clock_ticks_per_second(),
        }
    }
}

/// A slew in progress: the clock runs `rate` (fraction, signed like `offset`) faster
/// than the commanded frequency from `started` to `until` (`CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slew {
    offset: f64,
    rate: f64,
    started: Instant,
    until: Instant,
}

/// The books of the frequency and the slew; no syscalls, so that tests can drive it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Steering {
    /// The commanded frequency correction (ppm), without the slew's extra rate;
    /// `None` before the first `SetFrequency` (the kernel's is then taken as it is).
    base_ppm: Option<f64>,
    slew: Option<Slew>,
    /// What the last slew ended without applying (negative: it went past), seconds.
    residual: f64,
    /// Whether this instance put a slew's rate into the kernel (and must take it out).
    owns_kernel: bool,
    /// Counts slews, so that a stale timer ends nothing.
    generation: u64,
}

/// The extra rate (fraction, signed like `offset`) and how long it runs (seconds) to
/// slew `offset` over `duration`, no faster than `max_rate`: a duration of 0 or less
/// means as fast as allowed.
fn slew_plan(offset: f64, duration: f64, max_rate: f64) -> (f64, f64) {
    if offset == 0.0 || !offset.is_finite() || max_rate.is_nan() || max_rate <= 0.0 {
        return (0.0, 0.0);
    }
    let asked = if duration > 0.0 {
        (offset / duration).abs()
    } else {
        max_rate
    };
    let rate = asked.min(max_rate).max(offset.abs() / MAX_SLEW_SECONDS);
    (rate.copysign(offset), offset.abs() / rate)
}

/// How far a slew at `rate` has moved the clock after `monotonic` seconds of
/// `CLOCK_MONOTONIC`, which the kernel runs `rate` fast meanwhile too. (The commanded
/// frequency and the oscillator's error cancel once the clock is disciplined.)
fn slewed(rate: f64, monotonic: f64) -> f64 {
    rate * monotonic.max(0.0) / (1.0 + rate)
}

/// `CLOCK_MONOTONIC` seconds a slew at `rate` needs for `seconds` of true time.
fn monotonic_span(rate: f64, seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds * (1.0 + rate)).unwrap_or(Duration::ZERO)
}

/// Splits a frequency correction (ppm) into the kernel's tick (µs per 1/`hz` s) and
/// frequency (ppm), as chrony's sys_linux does: within ±500 ppm the tick stays
/// nominal; beyond, whole µs of tick (`hz` ppm each) take the bulk and the frequency
/// the rest. `None` beyond the kernel's ±10 % of tick.
fn split_frequency(ppm: f64, hz: i64) -> Option<(i64, f64)> {
    let nominal = sys::nominal_tick_us(hz);
    if !ppm.is_finite() {
        return None;
    }
    if ppm.abs() <= sys::MAX_FREQUENCY_PPM {
        return Some((nominal, ppm));
    }
    let per_tick = hz as f64;
    let ticks = (ppm / per_tick).round();
    if ticks.abs() > (nominal / 10) as f64 {
        return None;
    }
    Some((nominal + ticks as i64, ppm - ticks * per_tick))
}

impl Steering {
    /// The slew still to apply at `now`, seconds. A slew past its deadline that this
    /// instance has not ended yet is still running (it goes past); one recorded from
    /// another process was ended there, on time.
    fn pending(&self, now: Instant) -> f64 {
        match self.slew {
            None => self.residual,
            Some(s) => {
                let end = if self.owns_kernel {
                    now
                } else {
                    now.min(s.until)
                };
                s.offset
                    - slewed(
                        s.rate,
                        end.saturating_duration_since(s.started).as_secs_f64(),
                    )
            }
        }
    }

    /// Books a slew of `offset` over `duration` starting at `now`, replacing any in
    /// progress (its remainder is the caller's to carry); returns its extra rate.
    fn start(&mut self, offset: f64, duration: f64, now: Instant) -> f64 {
        let (rate, seconds) = slew_plan(offset, duration, MAX_SLEW_RATE);
        self.generation = self.generation.wrapping_add(1);
        if rate == 0.0 {
            self.slew = None;
            self.residual = offset;
        } else {
            self.residual = 0.0;
            self.slew = Some(Slew {
                offset,
                rate,
                started: now,
                until: now + monotonic_span(rate, seconds),
            });
        }
        rate
    }

    /// Books the end of the slew at `now` (the rate was taken out of the kernel then).
    fn finish(&mut self, now: Instant) {
        if self.slew.is_some() {
            self.residual = self.pending(now);
            self.slew = None;
        }
    }

    /// The extra rate in force, fraction.
    fn extra_rate(&self) -> f64 {
        self.slew.map_or(0.0, |s| s.rate)
    }
}

/// Sets the kernel's rate to `base_ppm` plus `extra` (fraction), tick and frequency
/// together, with the kernel PLL off.
fn set_rate(operation: &str, hz: i64, base_ppm: f64, extra: f64) -> Result<(), ClockError> {
    let total = base_ppm + extra * 1e6;
    let (tick, freq) = split_frequency(total, hz).ok_or_else(|| {
        ClockError::System(format!(
            "{operation}: {total} ppm is beyond the kernel's tick range"
        ))
    })?;
    adjust(
        operation,
        KernelAdjust {
            frequency_ppm: Some(freq),
            tick_us: Some(tick),
            clear_status: StatusFlags::PLL,
            ..KernelAdjust::default()
        },
    )
}

/// Takes a slew that is due (or any, with `force`) out of the kernel and books it.
/// With `generation`, only that slew (a timer's). Failures are logged and retried at
/// the next chance.
fn end_slew(steering: &Mutex<Steering>, hz: i64, force: bool, generation: Option<u64>) {
    let mut st = lock(steering);
    let Some(slew) = st.slew else { return };
    let now = Instant::now();
    if !st.owns_kernel
        || (!force && now < slew.until)
        || generation.is_some_and(|g| g != st.generation)
    {
        return;
    }
    let base = match st.base_ppm {
        Some(base) => base,
        None => match kernel_frequency(hz) {
            Ok(ppm) => ppm - slew.rate * 1e6,
            Err(e) => {
                tracing::warn!("ending a slew: {e}");
                return;
            }
        },
    };
    match set_rate("end slew", hz, base, 0.0) {
        // Booked as of the moment after the call, when the kernel's rate changed.
        Ok(()) => st.finish(Instant::now()),
        Err(e) => tracing::warn!("{e}"),
    }
}

fn lock(steering: &Mutex<Steering>) -> MutexGuard<'_, Steering> {
    steering.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kernel's whole frequency correction, tick included, ppm.
fn kernel_frequency(hz: i64) -> io::Result<f64> {
    let kernel = sys::adjtimex_read()?;
    Ok(kernel.freq_ppm + ((kernel.tick - sys::nominal_tick_us(hz)) * hz) as f64)
}

impl SystemClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Books a command the clock process applied, for the engine's read-only view of
    /// the kernel clock: steps are counted, the frequency and the slew kept as there.
    pub fn record_applied(&self, command: &ClockCommand) {
        match *command {
            ClockCommand::Step { .. } => {
                self.steps.fetch_add(1, Ordering::Relaxed);
            }
            ClockCommand::SetFrequency { ppm } => lock(&self.steering).base_ppm = Some(ppm),
            ClockCommand::Slew { offset, duration } => {
                lock(&self.steering).start(offset, duration, Instant::now());
            }
            _ => {}
        }
    }

    /// When the slew in progress must end, if this clock runs one in the kernel: the
    /// clock process wakes then and calls [`Self::end_due_slew`].
    pub fn slew_deadline(&self) -> Option<Instant> {
        let st = lock(&self.steering);
        st.slew.filter(|_| st.owns_kernel).map(|s| s.until)
    }

    /// Ends the slew in progress if it is due.
    pub fn end_due_slew(&self) {
        end_slew(&self.steering, self.hz, false, None);
    }

    /// Everything `adjtimex` reports, for diagnostics. Read-only, needs no privilege.
    pub fn read_kernel() -> io::Result<KernelClock> {
        sys::adjtimex_read()
    }

    fn slew(&self, offset: f64, duration: f64) -> Result<(), ClockError> {
        if offset.abs() > MAX_SLEW_OFFSET {
            return Err(ClockError::System(format!(
                "slew: {offset} s is outside ±{MAX_SLEW_OFFSET} s; step instead"
            )));
        }
        let mut st = lock(&self.steering);
        // Without a frequency commanded yet (a slew only ever sets one here), the
        // kernel's is the base.
        let base = match st.base_ppm {
            Some(base) => base,
            None => kernel_frequency(self.hz).map_err(|e| refused("slew", e))?,
        };
        let (rate, _) = slew_plan(offset, duration, MAX_SLEW_RATE);
        set_rate("slew", self.hz, base, rate)?;
        // The rate changed during the call; the books start after it (a few µs late at
        // most, so off by at most MAX_SLEW_RATE times that).
        st.start(offset, duration, Instant::now());
        st.owns_kernel = true;
        st.base_ppm = Some(base);
        if let Some(slew) = st.slew {
            self.schedule_end(st.generation, slew.until);
        }
        Ok(())
    }

    /// In an async runtime, a task ends the slew at its deadline; elsewhere (the clock
    /// process) the caller's loop does, from [`Self::slew_deadline`].
    fn schedule_end(&self, generation: u64, until: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let steering = Arc::clone(&self.steering);
        let hz = self.hz;
        runtime.spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            end_slew(&steering, hz, false, Some(generation));
        });
    }
}

impl Drop for SystemClock {
    /// A slew must not outlive its owner: the clock would run fast for good.
    fn drop(&mut self) {
        end_slew(&self.steering, self.hz, true, None);
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
            ClockCommand::Slew { offset, duration } => {
                self.end_due_slew();
                self.slew(offset, duration)
            }
            ClockCommand::SetFrequency { ppm } => {
                if ppm.is_nan() || ppm.abs() > sys::MAX_FREQUENCY_PPM {
                    return Err(ClockError::System(format!(
                        "set frequency: {ppm} ppm is outside the kernel's ±{} ppm",
                        sys::MAX_FREQUENCY_PPM
                    )));
                }
                self.end_due_slew();
                let mut st = lock(&self.steering);
                // A slew in progress keeps its extra rate on top of the new frequency.
                let extra = if st.owns_kernel { st.extra_rate() } else { 0.0 };
                set_rate("set frequency", self.hz, ppm, extra)?;
                st.base_ppm = Some(ppm);
                Ok(())
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
        self.end_due_slew();
        let steps = self.steps.load(Ordering::Relaxed);
        let st = *lock(&self.steering);
        let base = ClockStatus {
            max_slew_rate: MAX_SLEW_RATE,
            pending_slew: st.pending(Instant::now()),
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
        let kernel_ppm =
            kernel.freq_ppm + ((kernel.tick - sys::nominal_tick_us(self.hz)) * self.hz) as f64;
        ClockStatus {
            frequency_ppm: st.base_ppm.unwrap_or(kernel_ppm),
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
        assert_eq!(status.max_slew_rate, MAX_SLEW_RATE);
        assert_eq!(status.pending_slew, 0.0);
        assert_eq!(status.steps, 0);
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
        // A refused slew leaves nothing booked and nothing to end.
        let slew = ClockCommand::Slew {
            offset: 0.01,
            duration: 1.0,
        };
        assert!(matches!(clock.apply(slew), Err(ClockError::System(_))));
        assert_eq!(clock.slew_deadline(), None);
        assert_eq!(clock.status().pending_slew, 0.0);
        // Out of range: refused before the kernel is asked.
        for command in [
            ClockCommand::SetFrequency { ppm: 500.1 },
            ClockCommand::Slew {
                offset: 0.6,
                duration: 100.0,
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
    fn frequencies_beyond_500_ppm_go_into_the_tick() {
        // Within ±500 ppm the tick stays nominal, as it always was.
        assert_eq!(split_frequency(0.0, 100), Some((10_000, 0.0)));
        assert_eq!(split_frequency(-499.5, 100), Some((10_000, -499.5)));
        // Beyond, whole µs of tick (100 ppm each at USER_HZ 100), the rest in freq.
        assert_eq!(split_frequency(1234.5, 100), Some((10_012, 34.5)));
        assert_eq!(split_frequency(-1260.0, 100), Some((9_987, 40.0)));
        let (tick, freq) = split_frequency(-1e6 / 12.0, 100).unwrap();
        assert_eq!(tick, 9_167);
        assert!(
            (freq - (-1e6 / 12.0 + 833.0 * 100.0)).abs() < 1e-9,
            "{freq}"
        );
        // The kernel's ±10 % of tick, and nothing that is not a number.
        assert_eq!(split_frequency(100_000.0, 100), Some((11_000, 0.0)));
        assert_eq!(split_frequency(100_100.0, 100), None);
        assert_eq!(split_frequency(f64::NAN, 100), None);
        // Tick and frequency add up to what was asked, at any rate up to the cap.
        for ppm in [-83_833.0, -600.0, 501.0, 777.7, 83_833.0] {
            let (tick, freq) = split_frequency(ppm, 100).unwrap();
            assert!(freq.abs() <= 50.0, "{ppm}: {freq}");
            assert!(((tick - 10_000) as f64 * 100.0 + freq - ppm).abs() < 1e-9);
        }
    }

    #[test]
    fn a_slew_runs_at_offset_over_duration_up_to_the_cap() {
        assert_eq!(slew_plan(0.01, 4.0, MAX_SLEW_RATE), (0.0025, 4.0));
        assert_eq!(slew_plan(-0.01, 4.0, MAX_SLEW_RATE), (-0.0025, 4.0));
        // 0.1 s asked over 0.1 s goes at 83 333 ppm, over 1.2 s.
        let (rate, seconds) = slew_plan(0.1, 0.1, MAX_SLEW_RATE);
        assert_eq!(rate, MAX_SLEW_RATE);
        assert!((seconds - 1.2).abs() < 1e-12);
        assert_eq!(slew_plan(0.1, 0.0, MAX_SLEW_RATE).0, MAX_SLEW_RATE);
        assert_eq!(slew_plan(0.0, 4.0, MAX_SLEW_RATE), (0.0, 0.0));
        // Never longer than MAX_SLEW_SECONDS: a slower one runs faster.
        let (rate, seconds) = slew_plan(0.5, 1e300, MAX_SLEW_RATE);
        assert_eq!(seconds, MAX_SLEW_SECONDS);
        assert!((rate - 0.5 / MAX_SLEW_SECONDS).abs() < 1e-20);
    }

    /// The books: what a slew has done follows CLOCK_MONOTONIC (which runs fast during
    /// it), it ends exactly at its deadline, a late end is booked as a negative
    /// remainder, and a new slew replaces whatever was left.
    #[test]
    fn slew_bookkeeping_counts_what_was_applied() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut st = Steering {
            owns_kernel: true,
            ..Steering::default()
        };
        assert_eq!(st.pending(t0), 0.0);
        let rate = st.start(0.01, 4.0, t0);
        assert_eq!(rate, 0.0025);
        let slew = st.slew.unwrap();
        // 4 s of true time is 4.01 s of a clock running 2500 ppm fast.
        assert_eq!(slew.until, at(4.0 * 1.0025));
        assert!((st.pending(at(2.0 * 1.0025)) - 0.005).abs() < 1e-12);
        assert!(st.pending(slew.until).abs() < 1e-12);
        // Ended 10 ms late: 25 µs too far, carried by the next slew.
        st.finish(at(4.0 * 1.0025 + 0.01));
        assert_eq!(st.slew, None);
        let late = 0.0025 * 0.01 / 1.0025;
        assert!((st.pending(at(100.0)) + late).abs() < 1e-12, "{st:?}");
        // A new slew replaces the remainder (the engine added it to its offset).
        let generation = st.generation;
        st.start(-0.002, 1.0, at(100.0));
        assert_eq!(st.generation, generation + 1);
        assert!((st.pending(at(100.0)) + 0.002).abs() < 1e-12);
        assert_eq!(st.extra_rate(), -0.002);
        // Nothing to slew: no rate, nothing pending.
        st.start(0.0, 1.0, at(101.0));
        assert_eq!(
            (st.slew, st.pending(at(101.0)), st.extra_rate()),
            (None, 0.0, 0.0)
        );
    }

    /// A view that only records what the clock process applied assumes it ended the
    /// slew on time; the owner sees a late end as it happens.
    #[test]
    fn a_recorded_slew_ends_on_time_in_the_view() {
        let t0 = Instant::now();
        let mut view = Steering::default();
        view.start(0.001, 1.0, t0);
        let late = t0 + Duration::from_secs(5);
        assert!(view.pending(late).abs() < 1e-12);
        let owner = Steering {
            owns_kernel: true,
            ..view
        };
        assert!(owner.pending(late) < -0.003);
    }

    /// The engine's read-only view books what the clock process applied without
    /// touching the kernel: its pending slew and frequency follow the commands.
    #[test]
    fn the_view_keeps_the_books_without_the_kernel() {
        let view = SystemClock::new();
        view.record_applied(&ClockCommand::SetFrequency { ppm: 12.5 });
        view.record_applied(&ClockCommand::Slew {
            offset: 0.2,
            duration: 1000.0,
        });
        view.record_applied(&ClockCommand::Step { offset: 1.0 });
        let status = view.status();
        assert_eq!(status.frequency_ppm, 12.5);
        assert_eq!(status.steps, 1);
        assert!(
            status.pending_slew > 0.19 && status.pending_slew <= 0.2,
            "{status:?}"
        );
        // It never ran a slew in the kernel, so it has none to end.
        assert_eq!(view.slew_deadline(), None);
        drop(view);
    }

    #[test]
    fn error_estimates_are_clamped_microseconds() {
        assert_eq!(error_us(0.0015), 1500);
        assert_eq!(error_us(-1.0), 0);
        assert_eq!(error_us(1e6), sys::MAX_ERROR_US);
    }
}
