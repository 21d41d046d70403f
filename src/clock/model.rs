//! The arithmetic of a clock steered by [`ClockCommand`]s, against a reference time
//! passed in: true time in the simulator, the system clock in `observe` and `simulated`
//! modes.
//!
//! The clock's phase (its reading minus the reference) changes at the rate of its
//! oscillator error plus the frequency correction, plus the slew in progress; steps add
//! to it at once. This is how the kernel clock behaves, and how clknetsim models it.

use super::{ClockCommand, ClockStatus};
use crate::wire::Leap;

/// The fastest slew: 83 333 ppm, as chrony (and Linux's tick adjustment) allow, and
/// as [`super::system::SystemClock`] slews.
pub const DEFAULT_MAX_SLEW_RATE: f64 = super::MAX_SLEW_RATE;

#[derive(Debug, Clone)]
pub struct ClockModel {
    /// Reference time of the last update, seconds.
    at: f64,
    /// Clock minus reference at `at`.
    phase: f64,
    /// The oscillator's own frequency error (fraction; the simulator's wander moves it).
    oscillator: f64,
    /// The commanded frequency correction (fraction).
    correction: f64,
    /// Slew still to apply, and the rate it goes at (same sign).
    slew_left: f64,
    slew_rate: f64,
    max_slew_rate: f64,
    leap: Leap,
    synchronized: bool,
    steps: u64,
}

impl ClockModel {
    /// A clock `phase` seconds off its reference whose oscillator runs `oscillator`
    /// (a fraction, e.g. 1e-4 = 100 ppm) fast.
    pub fn new(phase: f64, oscillator: f64) -> Self {
        Self {
            at: 0.0,
            phase,
            oscillator,
            correction: 0.0,
            slew_left: 0.0,
            slew_rate: 0.0,
            max_slew_rate: DEFAULT_MAX_SLEW_RATE,
            leap: Leap::NoWarning,
            synchronized: false,
            steps: 0,
        }
    }

    /// How much of the slew in progress is done by `t` (signed like the slew).
    fn slewed(&self, t: f64) -> f64 {
        let dt = (t - self.at).max(0.0);
        (self.slew_rate * dt)
            .abs()
            .min(self.slew_left.abs())
            .copysign(self.slew_left)
    }

    /// Clock minus reference at reference time `t` (not before the last update).
    pub fn phase(&self, t: f64) -> f64 {
        let dt = (t - self.at).max(0.0);
        self.phase + (self.oscillator + self.correction) * dt + self.slewed(t)
    }

    /// Folds everything up to `t` into the state, so that a change applies from `t`.
    pub fn advance(&mut self, t: f64) {
        if t <= self.at {
            return;
        }
        let slewed = self.slewed(t);
        self.phase = self.phase(t);
        self.slew_left -= slewed;
        if self.slew_left == 0.0 {
            self.slew_rate = 0.0;
        }
        self.at = t;
    }

    /// Sets the oscillator's frequency error from `t` on (the simulator's wander).
    pub fn set_oscillator(&mut self, t: f64, oscillator: f64) {
        self.advance(t);
        self.oscillator = oscillator;
    }

    /// Applies `command` at reference time `t`. Numbers must be finite (checked by
    /// the caller, [`super::check_finite`]).
    pub fn apply(&mut self, t: f64, command: ClockCommand) {
        self.advance(t);
        match command {
            ClockCommand::Step { offset } => {
                self.phase += offset;
                self.steps += 1;
            }
            ClockCommand::Slew { offset, duration } => {
                self.slew_left = offset;
                let rate = if duration > 0.0 {
                    (offset / duration).abs()
                } else {
                    self.max_slew_rate
                };
                self.slew_rate = rate.min(self.max_slew_rate).copysign(offset);
            }
            ClockCommand::SetFrequency { ppm } => self.correction = ppm * 1e-6,
            ClockCommand::SetLeap(leap) => self.leap = leap,
            ClockCommand::SetStatus { synchronized, .. } => self.synchronized = synchronized,
        }
    }

    pub fn status(&self, t: f64) -> ClockStatus {
        ClockStatus {
            frequency_ppm: self.correction * 1e6,
            pending_slew: self.slew_left - self.slewed(t),
            max_slew_rate: self.max_slew_rate,
            leap: self.leap,
            synchronized: self.synchronized,
            steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oscillator_error_accumulates_and_correction_cancels_it() {
        let mut clock = ClockModel::new(0.0, 100e-6);
        assert!((clock.phase(10.0) - 1e-3).abs() < 1e-12);
        clock.apply(10.0, ClockCommand::SetFrequency { ppm: -100.0 });
        assert!((clock.phase(1000.0) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn slew_runs_at_its_rate_then_stops() {
        let mut clock = ClockModel::new(0.0, 0.0);
        clock.apply(
            0.0,
            ClockCommand::Slew {
                offset: -0.01,
                duration: 10.0,
            },
        );
        assert!((clock.phase(5.0) + 0.005).abs() < 1e-12);
        assert!((clock.status(5.0).pending_slew + 0.005).abs() < 1e-12);
        assert!((clock.phase(100.0) + 0.01).abs() < 1e-12);
        clock.advance(100.0);
        assert_eq!(clock.status(100.0).pending_slew, 0.0);
        assert!((clock.phase(200.0) + 0.01).abs() < 1e-12);
    }

    #[test]
    fn slew_is_capped_at_the_maximum_rate_and_a_new_one_replaces_it() {
        let mut clock = ClockModel::new(0.0, 0.0);
        clock.apply(
            0.0,
            ClockCommand::Slew {
                offset: 1.0,
                duration: 0.0,
            },
        );
        assert!((clock.phase(1.2) - 0.1).abs() < 1e-9);
        clock.apply(
            1.2,
            ClockCommand::Slew {
                offset: 0.0,
                duration: 1.0,
            },
        );
        assert!((clock.phase(50.0) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn step_moves_the_phase_at_once() {
        let mut clock = ClockModel::new(0.5, 0.0);
        clock.apply(3.0, ClockCommand::Step { offset: -0.5 });
        assert_eq!(clock.phase(3.0), 0.0);
        assert_eq!(clock.status(3.0).steps, 1);
    }
}
