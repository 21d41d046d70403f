//! The clock being disciplined.
//!
//! The sync engine never touches a clock; it emits [`ClockCommand`]s and something that
//! implements [`Clock`] applies them:
//!
//! * [`SoftwareClock`] in `observe` mode: the system clock is left alone and a corrected
//!   time scale is kept on top of it in software, as `chronyd -x` does. Needs no
//!   privilege; the server role serves the corrected time.
//! * [`SoftwareClock`] in `simulated` mode: the same, plus a configurable initial offset
//!   and frequency error, so the daemon has something to pull in (tests, `ntimed demo`).
//! * [`model::ClockModel`]: the arithmetic both use, driven by simulated true time in the
//!   offline simulator ([`crate::sim`]).
//! * [`system::SystemClock`]: the kernel clock through `adjtimex`/`clock_adjtime`.
//!
//! Commands are plain data so that (issue 5) they can cross a process boundary to a
//! small privileged process that checks them against policy.

pub mod model;
pub mod system;

use std::sync::Mutex;
use std::time::SystemTime;

use crate::wire::{Leap, NtpTimestamp};
use model::ClockModel;

/// The fastest a slew may run, seconds per second on top of the frequency correction:
/// chrony's default `maxslewrate`, 83 333 ppm (the kernel's tick can go to ±10 %). The
/// clock process's policy holds every slew to it.
pub const MAX_SLEW_RATE: f64 = 1.0 / 12.0;

/// The largest offset one slew may carry, seconds: the clock refuses more, and the
/// engine slews a larger offset away over several updates (or steps it at start-up).
pub const MAX_SLEW_OFFSET: f64 = 0.512;

/// What the sync engine asks of the clock. Offsets are seconds, positive meaning "move
/// the clock forward"; frequencies are parts per million, positive meaning "run faster".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockCommand {
    /// Jump the clock by `offset`.
    Step { offset: f64 },
    /// Move the clock by `offset` gradually, over about `duration` seconds (or longer,
    /// at the clock's maximum slew rate). Replaces any slew still in progress.
    Slew { offset: f64, duration: f64 },
    /// Set the frequency correction (absolute, not relative to the last one).
    SetFrequency { ppm: f64 },
    /// Announce a leap second at the end of the current UTC day (or cancel one).
    SetLeap(Leap),
    /// Report how good the clock is (the kernel passes this on to other programs).
    SetStatus {
        synchronized: bool,
        estimated_error: f64,
        max_error: f64,
    },
}

/// A command in words, for logs.
impl std::fmt::Display for ClockCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Step { offset } => write!(f, "step by {offset:+.6} s"),
            Self::Slew { offset, duration } => {
                write!(f, "slew by {offset:+.6} s over {duration:.0} s")
            }
            Self::SetFrequency { ppm } => write!(f, "set frequency to {ppm:+.3} ppm"),
            Self::SetLeap(leap) => write!(f, "set leap indicator to {leap:?}"),
            Self::SetStatus {
                synchronized,
                estimated_error,
                max_error,
            } => write!(
                f,
                "set status: {}, estimated error {estimated_error:.6} s, maximum error {max_error:.6} s",
                if *synchronized {
                    "synchronized"
                } else {
                    "unsynchronized"
                }
            ),
        }
    }
}

/// A command the clock would not or could not apply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClockError {
    #[error("{0} is not a finite number")]
    NotFinite(&'static str),
    #[error("the system refused: {0}")]
    System(String),
    /// The privileged clock process said no ([`crate::privsep::policy`]).
    #[error("the clock process refused: {0}")]
    Refused(String),
    /// The link to the clock process failed (silence, a closed link, a malformed reply
    /// or one to another request): what it did is unknown, and every later command
    /// fails the same way ([`crate::privsep::remote::RemoteClock`]).
    #[error("the clock process is gone: {0}")]
    Lost(String),
}

/// What the clock reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClockStatus {
    /// The frequency correction in force, ppm.
    pub frequency_ppm: f64,
    /// Part of the last slew not yet applied, seconds.
    pub pending_slew: f64,
    /// The fastest the clock can slew, seconds per second.
    pub max_slew_rate: f64,
    pub leap: Leap,
    pub synchronized: bool,
    /// Steps applied since start.
    pub steps: u64,
}

/// A clock the engine can read and steer.
pub trait Clock: Send + Sync {
    /// The time the disciplined clock shows now.
    fn now(&self) -> NtpTimestamp;
    fn apply(&self, command: ClockCommand) -> Result<(), ClockError>;
    fn status(&self) -> ClockStatus;
    /// Whether `apply` waits on another process (the privileged clock process): the
    /// daemon then applies commands on a thread of their own, off its async runtime.
    fn applies_remotely(&self) -> bool {
        false
    }
}

/// Checks that every number in a command is finite: NaN or infinity must never reach
/// clock arithmetic (ADVERSARIAL 27–29 for the IPC version of this).
pub fn check_finite(command: &ClockCommand) -> Result<(), ClockError> {
    let fields: &[(&'static str, f64)] = match command {
        ClockCommand::Step { offset } => &[("offset", *offset)],
        ClockCommand::Slew { offset, duration } => &[("offset", *offset), ("duration", *duration)],
        ClockCommand::SetFrequency { ppm } => &[("ppm", *ppm)],
        ClockCommand::SetLeap(_) => &[],
        ClockCommand::SetStatus {
            estimated_error,
            max_error,
            ..
        } => &[
            ("estimated_error", *estimated_error),
            ("max_error", *max_error),
        ],
    };
    match fields.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, _)) => Err(ClockError::NotFinite(name)),
        None => Ok(()),
    }
}

/// A corrected time scale kept in software on top of the system clock: `observe` and
/// `simulated` modes. The system clock is never changed.
pub struct SoftwareClock {
    /// System time when the clock was made; the model counts seconds from here, which
    /// keeps f64 arithmetic at sub-nanosecond resolution for years.
    epoch: NtpTimestamp,
    started: SystemTime,
    model: Mutex<ClockModel>,
}

impl SoftwareClock {
    /// The system clock as it is, corrected by whatever the engine commands.
    pub fn observe() -> Self {
        Self::simulated(0.0, 0.0)
    }

    /// A clock that starts `offset` seconds off the system clock and drifts from it by
    /// `frequency_ppm` until the engine corrects it.
    pub fn simulated(offset: f64, frequency_ppm: f64) -> Self {
        Self::with_epoch(SystemTime::now(), offset, frequency_ppm)
    }

    /// A simulated clock whose model counts from `started`: the clock process and the
    /// engine's mirror of it share one, so the same commands applied at the same
    /// [`Self::elapsed`] give the same clock in both.
    pub fn with_epoch(started: SystemTime, offset: f64, frequency_ppm: f64) -> Self {
        Self {
            epoch: NtpTimestamp::from_system_time(started),
            started,
            model: Mutex::new(ClockModel::new(offset, frequency_ppm * 1e-6)),
        }
    }

    /// Seconds of system time since the epoch the model counts from.
    pub fn elapsed(&self) -> f64 {
        // A system clock stepped back before our start reads as time standing still.
        SystemTime::now()
            .duration_since(self.started)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn model(&self) -> std::sync::MutexGuard<'_, ClockModel> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `command` as of `elapsed` seconds after the epoch (see
    /// [`Self::with_epoch`]); numbers must be finite.
    pub fn apply_at(&self, elapsed: f64, command: ClockCommand) -> Result<(), ClockError> {
        check_finite(&command)?;
        self.model().apply(elapsed, command);
        Ok(())
    }

    /// How far this clock is from the system clock now, seconds.
    pub fn offset_from_system(&self) -> f64 {
        self.offset_at(self.elapsed())
    }

    /// How far this clock is (or was) from the system clock `elapsed` seconds after
    /// its epoch, given the commands applied so far.
    pub fn offset_at(&self, elapsed: f64) -> f64 {
        self.model().phase(elapsed)
    }
}

impl Clock for SoftwareClock {
    fn now(&self) -> NtpTimestamp {
        let t = self.elapsed();
        let phase = self.model().phase(t);
        self.epoch.add_seconds(t + phase)
    }

    fn apply(&self, command: ClockCommand) -> Result<(), ClockError> {
        self.apply_at(self.elapsed(), command)
    }

    fn status(&self) -> ClockStatus {
        let t = self.elapsed();
        self.model().status(t)
    }
}
