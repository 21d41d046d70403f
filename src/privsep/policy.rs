//! What the clock process lets the engine do, decided from the configuration it read
//! before the split, whatever the engine says. Sans-IO: times are passed in.
//!
//! The limits bound what even a fully compromised engine can do to the clock:
//! * steps: none (`never`); one, before the first slew (`startup`, the default); or any
//!   (`always`); each within the panic threshold, and all of them together too;
//! * slews: at most the kernel's single-shot limit, 0.512 s, per command (the kernel
//!   slews at 500 ppm whatever is asked);
//! * frequency: within `max-frequency` (at most the kernel's 500 ppm);
//! * leap seconds: announced only on the last day of a month (UTC), the only day the
//!   kernel can act on one without inserting it at the wrong midnight;
//! * commands: a token bucket, so a runaway engine cannot keep the process busy.
//!
//! A compromised engine can therefore move the clock by at most the slew rate plus the
//! frequency limit, about 1 ms/s, and never by a jump after start-up.

use crate::clock::ClockCommand;
use crate::sync::StepPolicy;
use crate::wire::Leap;

use super::ipc::Refusal;

/// Largest slew per command, seconds: `ADJ_OFFSET_SINGLESHOT`'s limit.
pub const MAX_SLEW: f64 = crate::sys::MAX_SINGLESHOT_US as f64 * 1e-6;
/// Commands allowed at once, and per second after that.
pub const COMMAND_BURST: f64 = 64.0;
pub const COMMANDS_PER_SECOND: f64 = 8.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// Whether `[clock]` is configured at all; without it every command is refused.
    pub clock_configured: bool,
    pub steps: StepPolicy,
    /// Seconds; no step may exceed it, nor may all steps together.
    pub panic_threshold: f64,
    /// ppm.
    pub max_frequency: f64,
}

impl Default for PolicyConfig {
    /// A clock configured with the engine's defaults: one start-up step, 1000 s panic
    /// threshold, 500 ppm.
    fn default() -> Self {
        let defaults = crate::sync::SyncConfig::default();
        Self {
            clock_configured: true,
            steps: defaults.steps,
            panic_threshold: defaults.panic_threshold,
            max_frequency: defaults.max_frequency_ppm,
        }
    }
}

impl PolicyConfig {
    /// From `[clock]`, with the engine's defaults (`None`: no `[clock]`).
    pub fn from_config(section: Option<&crate::config::ClockSection>) -> Self {
        let defaults = Self::default();
        match section {
            None => Self {
                clock_configured: false,
                steps: StepPolicy::Never,
                panic_threshold: 0.0,
                max_frequency: 0.0,
            },
            Some(c) => Self {
                clock_configured: true,
                steps: c.steps.unwrap_or(defaults.steps),
                panic_threshold: c.panic_threshold.unwrap_or(defaults.panic_threshold),
                max_frequency: c
                    .max_frequency
                    .unwrap_or(defaults.max_frequency)
                    .min(crate::sys::MAX_FREQUENCY_PPM),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    /// |steps| applied so far, seconds.
    stepped: f64,
    steps: u64,
    slewed: bool,
    tokens: f64,
    /// When the bucket was last filled, seconds (any monotonic scale).
    filled_at: f64,
}

impl Policy {
    pub fn new(config: PolicyConfig, now: f64) -> Self {
        Self {
            config,
            stepped: 0.0,
            steps: 0,
            slewed: false,
            tokens: COMMAND_BURST,
            filled_at: now,
        }
    }

    /// Whether `command` may be applied now (`now`: monotonic seconds; `unix_time`:
    /// the system clock, for the leap-second date). Each call spends a token, allowed
    /// or not. Commands must already be decoded (finite, coarsely bounded).
    pub fn check(
        &mut self,
        command: &ClockCommand,
        now: f64,
        unix_time: i64,
    ) -> Result<(), Refusal> {
        self.tokens = (self.tokens + (now - self.filled_at).max(0.0) * COMMANDS_PER_SECOND)
            .min(COMMAND_BURST);
        self.filled_at = now;
        if self.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        self.tokens -= 1.0;
        if !self.config.clock_configured {
            return Err(Refusal::NoClock);
        }
        match *command {
            ClockCommand::Step { offset } => self.check_step(offset),
            ClockCommand::Slew { offset, .. } if offset.abs() > MAX_SLEW => {
                Err(Refusal::SlewTooLarge)
            }
            ClockCommand::SetFrequency { ppm } if ppm.abs() > self.config.max_frequency => {
                Err(Refusal::FrequencyTooLarge)
            }
            ClockCommand::SetLeap(Leap::AddSecond | Leap::DeleteSecond)
                if !is_last_day_of_month(unix_time) =>
            {
                Err(Refusal::LeapNotAtMonthEnd)
            }
            _ => Ok(()),
        }
    }

    fn check_step(&self, offset: f64) -> Result<(), Refusal> {
        match self.config.steps {
            StepPolicy::Never => return Err(Refusal::StepsNotAllowed),
            StepPolicy::Startup if self.steps > 0 || self.slewed => {
                return Err(Refusal::StartupOver);
            }
            _ => {}
        }
        if offset.abs() > self.config.panic_threshold {
            return Err(Refusal::StepTooLarge);
        }
        if self.stepped + offset.abs() > self.config.panic_threshold {
            return Err(Refusal::StepBudgetSpent);
        }
        Ok(())
    }

    /// Records a command the clock applied.
    pub fn applied(&mut self, command: &ClockCommand) {
        match *command {
            ClockCommand::Step { offset } => {
                self.steps += 1;
                self.stepped += offset.abs();
            }
            ClockCommand::Slew { .. } => self.slewed = true,
            _ => {}
        }
    }
}

/// Whether the UTC day holding `unix_time` is the last of its month (tomorrow is the
/// 1st), by the days-from-civil arithmetic of H. Hinnant's `chrono`-compatible
/// algorithms.
pub fn is_last_day_of_month(unix_time: i64) -> bool {
    let tomorrow = unix_time.div_euclid(86_400) + 1;
    day_of_month(tomorrow) == 1
}

/// The day of the month (1–31) of `days` since 1970-01-01.
fn day_of_month(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    doy - (153 * mp + 2) / 5 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID_MONTH: i64 = 1_781_000_000; // 2026-06-09
    const JUNE_30: i64 = 1_782_820_800; // 2026-06-30 12:00 UTC

    fn policy(steps: StepPolicy) -> Policy {
        Policy::new(
            PolicyConfig {
                steps,
                ..PolicyConfig::default()
            },
            0.0,
        )
    }

    fn apply(p: &mut Policy, command: ClockCommand, now: f64) -> Result<(), Refusal> {
        p.check(&command, now, MID_MONTH)?;
        p.applied(&command);
        Ok(())
    }

    #[test]
    fn startup_allows_one_step_before_the_first_slew_and_never_an_hour() {
        let mut p = policy(StepPolicy::Startup);
        let hour = ClockCommand::Step { offset: 3600.0 };
        assert_eq!(apply(&mut p, hour, 0.0), Err(Refusal::StepTooLarge));
        assert_eq!(
            apply(&mut p, ClockCommand::Step { offset: -0.4 }, 1.0),
            Ok(())
        );
        assert_eq!(
            apply(&mut p, ClockCommand::Step { offset: 0.2 }, 2.0),
            Err(Refusal::StartupOver)
        );
        // A slew also ends start-up, even without a step.
        let mut p = policy(StepPolicy::Startup);
        let slew = ClockCommand::Slew {
            offset: 0.001,
            duration: 4.0,
        };
        assert_eq!(apply(&mut p, slew, 0.0), Ok(()));
        assert_eq!(apply(&mut p, hour, 10.0), Err(Refusal::StartupOver));
    }

    #[test]
    fn steps_add_up_to_at_most_the_panic_threshold() {
        let mut p = policy(StepPolicy::Always);
        assert_eq!(
            apply(&mut p, ClockCommand::Step { offset: 600.0 }, 0.0),
            Ok(())
        );
        assert_eq!(
            apply(&mut p, ClockCommand::Step { offset: -600.0 }, 1.0),
            Err(Refusal::StepBudgetSpent)
        );
        let mut never = policy(StepPolicy::Never);
        assert_eq!(
            apply(&mut never, ClockCommand::Step { offset: 0.5 }, 0.0),
            Err(Refusal::StepsNotAllowed)
        );
    }

    #[test]
    fn slews_and_frequencies_beyond_the_limits_are_refused() {
        let mut p = policy(StepPolicy::Startup);
        let big = ClockCommand::Slew {
            offset: -0.6,
            duration: 1.0,
        };
        assert_eq!(apply(&mut p, big, 0.0), Err(Refusal::SlewTooLarge));
        let fast = ClockCommand::SetFrequency { ppm: 500.1 };
        assert_eq!(apply(&mut p, fast, 0.0), Err(Refusal::FrequencyTooLarge));
        assert_eq!(
            apply(&mut p, ClockCommand::SetFrequency { ppm: -499.0 }, 0.0),
            Ok(())
        );
    }

    #[test]
    fn leap_seconds_only_on_the_last_day_of_a_month() {
        let mut p = policy(StepPolicy::Startup);
        let add = ClockCommand::SetLeap(Leap::AddSecond);
        assert_eq!(
            p.check(&add, 0.0, MID_MONTH),
            Err(Refusal::LeapNotAtMonthEnd)
        );
        assert_eq!(p.check(&add, 0.0, JUNE_30), Ok(()));
        let cancel = ClockCommand::SetLeap(Leap::NoWarning);
        assert_eq!(p.check(&cancel, 0.0, MID_MONTH), Ok(()));
        // Month ends: 1972-02-29 (leap year), 2100-02-28 (not one), 2026-12-31.
        for (y_m_d_noon, last) in [
            (68_212_800, true),
            (4_107_499_200, true),
            (1_798_718_400, true),
            (1_798_632_000, false),
        ] {
            assert_eq!(is_last_day_of_month(y_m_d_noon), last, "{y_m_d_noon}");
        }
    }

    #[test]
    fn a_flood_of_commands_is_rate_limited_and_recovers() {
        let mut p = policy(StepPolicy::Startup);
        let status = ClockCommand::SetStatus {
            synchronized: true,
            estimated_error: 0.0,
            max_error: 0.0,
        };
        let allowed = (0..1000)
            .filter(|_| apply(&mut p, status, 5.0).is_ok())
            .count();
        assert_eq!(allowed, COMMAND_BURST as usize);
        assert_eq!(apply(&mut p, status, 5.0), Err(Refusal::RateLimited));
        assert_eq!(apply(&mut p, status, 6.0), Ok(()));
    }

    #[test]
    fn without_a_clock_section_everything_is_refused() {
        let mut p = Policy::new(PolicyConfig::from_config(None), 0.0);
        let cmd = ClockCommand::SetFrequency { ppm: 0.0 };
        assert_eq!(p.check(&cmd, 0.0, MID_MONTH), Err(Refusal::NoClock));
    }
}
