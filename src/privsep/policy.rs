//! What the clock process lets the engine do, decided from the configuration it read
//! before the split, whatever the engine says. Sans-IO: times are passed in.
//!
//! The limits bound what even a fully compromised engine can do to the clock:
//! * steps: none (`never`); one, before the first slew (`startup`, the default); or any
//!   (`always`); each within the panic threshold, and all of them together too;
//! * slews: at most 0.512 s per command ([`MAX_SLEW`]), at most [`MAX_SLEW_RATE`]
//!   (83 333 ppm, chrony's default `maxslewrate`) faster than the frequency: a slew is
//!   a temporary change of the clock's rate, and each replaces the one before, so the
//!   rate bound holds however many there are (the kernel clock also never slews faster);
//! * frequency: within `max-frequency` (at most the kernel's 500 ppm);
//! * leap seconds: announced only on the last day of June or December (UTC), when the
//!   kernel inserts one at the right midnight, and counted as a 1 s step;
//! * all of this per boot, not per process: what was stepped survives a restart of the
//!   daemon ([`PolicyState`], kept by the clock process in its state directory), so a
//!   crash loop cannot turn into a series of start-up steps;
//! * commands: a token bucket, so a runaway engine cannot keep the process busy.
//!
//! A compromised engine can therefore make the clock's rate wrong by at most the slew
//! rate plus the frequency limit, 83 833 ppm (about 84 ms/s, 5 min an hour), and never
//! move it by a jump after start-up.

use crate::clock::ClockCommand;
use crate::sync::StepPolicy;
use crate::wire::Leap;

use super::ipc::Refusal;

/// Largest slew per command, seconds.
pub const MAX_SLEW: f64 = crate::clock::MAX_SLEW_OFFSET;
/// Fastest slew, seconds per second on top of the frequency correction.
pub const MAX_SLEW_RATE: f64 = crate::clock::MAX_SLEW_RATE;
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

/// What must outlive a clock process within one boot.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PolicyState {
    /// |steps| (and leap seconds) applied so far this boot, seconds.
    pub stepped: f64,
    /// The start-up step was used, or the clock was slewed: no start-up step any more.
    pub startup_over: bool,
}

impl PolicyState {
    /// Nothing left to step this boot (what an unreadable record means).
    pub fn spent() -> Self {
        Self {
            stepped: f64::INFINITY,
            startup_over: true,
        }
    }

    /// `stepped startup_over` on one line (the boot id is the caller's business);
    /// short whatever the number (`1e300`, not 301 digits).
    pub fn encode(&self) -> String {
        format!("{:?} {}", self.stepped, u8::from(self.startup_over))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let stepped: f64 = fields.next()?.parse().ok()?;
        let startup_over = match fields.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        (fields.next().is_none() && stepped.is_finite() && stepped >= 0.0).then_some(Self {
            stepped,
            startup_over,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    state: PolicyState,
    tokens: f64,
    /// When the bucket was last filled, seconds (any monotonic scale).
    filled_at: f64,
}

impl Policy {
    pub fn new(config: PolicyConfig, now: f64) -> Self {
        Self::resume(config, now, PolicyState::default())
    }

    /// Carries on from what an earlier clock process of this boot left.
    pub fn resume(config: PolicyConfig, now: f64, state: PolicyState) -> Self {
        Self {
            config,
            state,
            tokens: COMMAND_BURST,
            filled_at: now,
        }
    }

    pub fn state(&self) -> PolicyState {
        self.state
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
            ClockCommand::Slew { offset, duration } if !slew_allowed(offset, duration) => {
                Err(Refusal::SlewTooLarge)
            }
            ClockCommand::SetFrequency { ppm } if ppm.abs() > self.config.max_frequency => {
                Err(Refusal::FrequencyTooLarge)
            }
            ClockCommand::SetLeap(Leap::AddSecond | Leap::DeleteSecond) => {
                if !is_leap_second_day(unix_time) {
                    Err(Refusal::LeapNotAtMonthEnd)
                } else if self.state.stepped + 1.0 > self.config.panic_threshold {
                    Err(Refusal::StepBudgetSpent)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn check_step(&self, offset: f64) -> Result<(), Refusal> {
        match self.config.steps {
            StepPolicy::Never => return Err(Refusal::StepsNotAllowed),
            StepPolicy::Startup if self.state.startup_over => {
                return Err(Refusal::StartupOver);
            }
            _ => {}
        }
        if offset.abs() > self.config.panic_threshold {
            return Err(Refusal::StepTooLarge);
        }
        if self.state.stepped + offset.abs() > self.config.panic_threshold {
            return Err(Refusal::StepBudgetSpent);
        }
        Ok(())
    }

    /// The per-boot state `command` would leave once applied, if it changes it: what
    /// the clock process records durably *before* applying the command, so that no
    /// crash or restart between the two can forget it.
    pub fn state_after(&self, command: &ClockCommand) -> Option<PolicyState> {
        let mut after = self.state;
        match *command {
            ClockCommand::Step { offset } => {
                after.startup_over = true;
                after.stepped += offset.abs();
            }
            ClockCommand::Slew { .. } => after.startup_over = true,
            ClockCommand::SetLeap(Leap::AddSecond | Leap::DeleteSecond) => {
                after.stepped += 1.0;
            }
            _ => {}
        }
        (after != self.state).then_some(after)
    }

    /// Records a command the clock applied; true if [`Self::state`] changed.
    pub fn applied(&mut self, command: &ClockCommand) -> bool {
        match self.state_after(command) {
            Some(after) => {
                self.state = after;
                true
            }
            None => false,
        }
    }
}

/// Whether a slew of `offset` over `duration` stays within [`MAX_SLEW`] and
/// [`MAX_SLEW_RATE`] (with room for the rounding of a duration computed from the rate).
pub fn slew_allowed(offset: f64, duration: f64) -> bool {
    offset.abs() <= MAX_SLEW && offset.abs() <= MAX_SLEW_RATE * duration.max(0.0) * (1.0 + 1e-9)
}

/// Whether the UTC day holding `unix_time` is 30 June or 31 December, the days at
/// whose end leap seconds are inserted (IERS Bulletin C; none has ever been elsewhere).
pub fn is_leap_second_day(unix_time: i64) -> bool {
    let today = unix_time.div_euclid(86_400);
    let (month, day) = month_and_day(today);
    let tomorrow = month_and_day(today + 1).1;
    tomorrow == 1 && (month == 6 || month == 12) && day >= 30
}

/// The month (1–12) and day of the month (1–31) of `days` since 1970-01-01, by the
/// days-from-civil arithmetic of H. Hinnant's algorithms.
fn month_and_day(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (month, day)
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

    /// A restart within the boot carries on where the last clock process stopped: no
    /// second start-up step, and the budget stays spent.
    #[test]
    fn the_step_budget_and_the_start_up_step_survive_a_restart() {
        let mut p = policy(StepPolicy::Startup);
        assert_eq!(
            apply(&mut p, ClockCommand::Step { offset: 900.0 }, 0.0),
            Ok(())
        );
        let saved = PolicyState::decode(&p.state().encode()).unwrap();
        assert_eq!(saved, p.state());
        let mut after = Policy::resume(PolicyConfig::default(), 0.0, saved);
        let step = ClockCommand::Step { offset: 50.0 };
        assert_eq!(apply(&mut after, step, 1.0), Err(Refusal::StartupOver));
        let always = PolicyConfig {
            steps: StepPolicy::Always,
            ..PolicyConfig::default()
        };
        let mut after = Policy::resume(always, 0.0, saved);
        assert_eq!(
            apply(&mut after, ClockCommand::Step { offset: 200.0 }, 1.0),
            Err(Refusal::StepBudgetSpent)
        );
        for bad in ["", "1 2", "nan 0", "-1 0", "5 0 x", "inf 1"] {
            assert_eq!(PolicyState::decode(bad), None, "{bad:?}");
        }
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

    /// A slew is a bounded change of rate: 83 333 ppm at most, whatever its size, and
    /// 0.512 s at most however slowly.
    #[test]
    fn slews_faster_than_the_rate_bound_are_refused() {
        let mut p = policy(StepPolicy::Startup);
        let slew = |offset: f64, duration: f64| ClockCommand::Slew { offset, duration };
        // 0.1 s over 1.2 s is exactly 1/12; over 1.1 s it is too fast.
        assert_eq!(apply(&mut p, slew(0.1, 1.2), 0.0), Ok(()));
        assert_eq!(
            apply(&mut p, slew(-0.1, 1.1), 1.0),
            Err(Refusal::SlewTooLarge)
        );
        // At once: only nothing.
        assert_eq!(apply(&mut p, slew(0.0, 0.0), 2.0), Ok(()));
        assert_eq!(
            apply(&mut p, slew(1e-6, 0.0), 3.0),
            Err(Refusal::SlewTooLarge)
        );
        // Slowly, but more than a command may carry.
        assert_eq!(
            apply(&mut p, slew(0.6, 3600.0), 4.0),
            Err(Refusal::SlewTooLarge)
        );
        assert_eq!(apply(&mut p, slew(0.5, 3600.0), 5.0), Ok(()));
        assert!(slew_allowed(MAX_SLEW, MAX_SLEW / MAX_SLEW_RATE));
        assert!(!slew_allowed(MAX_SLEW, 0.99 * MAX_SLEW / MAX_SLEW_RATE));
    }

    #[test]
    fn leap_seconds_only_at_the_end_of_june_or_december_and_they_count() {
        let mut p = policy(StepPolicy::Startup);
        let add = ClockCommand::SetLeap(Leap::AddSecond);
        assert_eq!(
            p.check(&add, 0.0, MID_MONTH),
            Err(Refusal::LeapNotAtMonthEnd)
        );
        assert_eq!(p.check(&add, 0.0, JUNE_30), Ok(()));
        assert!(p.applied(&add));
        assert_eq!(p.state().stepped, 1.0);
        let cancel = ClockCommand::SetLeap(Leap::NoWarning);
        assert_eq!(p.check(&cancel, 0.0, MID_MONTH), Ok(()));
        // 1972-02-29 and 2100-02-28 end a month, but not June or December; 2026-12-31
        // does; 2026-12-30 does not end a month.
        for (noon, leap_day) in [
            (68_212_800, false),
            (4_107_499_200, false),
            (1_798_718_400, true),
            (1_798_632_000, false),
            (JUNE_30, true),
        ] {
            assert_eq!(is_leap_second_day(noon), leap_day, "{noon}");
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
