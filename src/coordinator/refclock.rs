//! A reference clock as the coordinator keeps it: samples gathered over one poll
//! interval, combined by the refclock filter and handed to the engine once per poll;
//! a reach register of polls with and without a usable sample; drop counters.
//!
//! Offsets are gathered as the clock *will* read once the slew in progress is done
//! (`offset - pending_slew`): the engine issues no command between two feeds of this
//! clock, so those values stay comparable across the interval, however far the slew
//! went meanwhile.

use crate::refclock::filter::{self, Combined, FilterInput, MAX_SAMPLES};
use crate::refclock::pps::LockEstimate;
use crate::refclock::{RefclockDrop, RefclockOptions, RefclockSample};
use crate::wire::NtpTimestamp;

/// Polls without a usable sample after which a reference clock is unreachable.
pub const UNREACHABLE_POLLS: u32 = 4;

/// One interval's result, ready for the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Closed {
    pub combined: Combined,
    /// The newest sample's local time and the slew pending then.
    pub local: NtpTimestamp,
    pub pending_slew: f64,
    /// The mean time of the interval's samples (caller's seconds): what the combined
    /// offset is a measurement of. Taken as of the interval's end, it would lag by half
    /// an interval times the frequency error, and the loop would chase its own lag.
    pub at: f64,
}

#[derive(Debug)]
pub(super) struct RefclockState {
    pub options: RefclockOptions,
    samples: Vec<FilterInput>,
    newest: Option<(NtpTimestamp, f64)>,
    /// The sum of the interval's sample times, for their mean.
    times: f64,
    /// The newest usable reading's offset (slew taken out) and time.
    latest: Option<LockEstimate>,
    interval_end: f64,
    reach: u8,
    pub drops: u64,
    pub last_drop: Option<RefclockDrop>,
}

impl RefclockState {
    pub fn new(options: RefclockOptions, now: f64) -> Self {
        let mut state = Self {
            options,
            samples: Vec::new(),
            newest: None,
            times: 0.0,
            latest: None,
            interval_end: now,
            reach: 0,
            drops: 0,
            last_drop: None,
        };
        state.interval_end = now + state.period();
        state
    }

    pub fn period(&self) -> f64 {
        2f64.powi(i32::from(self.options.poll.clamp(0, 17)))
    }

    /// When an interval must be closed even without a sample to close it: a quarter
    /// period late (samples normally close it, at most a device period late).
    pub fn poll_timeout(&self) -> f64 {
        self.interval_end + self.period() / 4.0
    }

    pub fn reach(&self) -> u8 {
        self.reach
    }

    /// The newest usable reading, for a PPS refclock locked to this one: it only has to
    /// name the second, and unlike a combined interval it follows a correction of the
    /// clock within a reading.
    pub fn latest(&self) -> Option<LockEstimate> {
        self.latest
    }

    pub fn is_reachable(&self) -> bool {
        self.reach & ((1 << UNREACHABLE_POLLS) - 1) != 0
    }

    pub fn count_drop(&mut self, why: RefclockDrop) {
        self.drops = self.drops.saturating_add(1);
        self.last_drop = Some(why);
    }

    /// Whether a sample at `now` belongs to a later interval than the one gathering.
    pub fn is_due(&self, now: f64) -> bool {
        now >= self.interval_end
    }

    /// Takes one sample into the interval; a non-finite one is a counted drop.
    pub fn add(&mut self, sample: &RefclockSample, pending_slew: f64, now: f64) -> bool {
        let offset = sample.offset + self.options.offset - pending_slew;
        if !(offset.is_finite() && sample.dispersion.is_finite() && sample.dispersion >= 0.0) {
            self.count_drop(RefclockDrop::NotFinite);
            return false;
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(FilterInput {
            offset,
            dispersion: sample.dispersion.max(self.options.precision),
            leap: sample.leap,
        });
        self.newest = Some((sample.local, pending_slew));
        self.times += now;
        self.latest = Some(LockEstimate {
            offset,
            when: sample.local,
        });
        true
    }

    /// Ends the gathering interval (and any wholly missed after it) at `now`: one
    /// reach bit per interval, and the combined sample if there was any.
    pub fn close(&mut self, now: f64) -> Option<Closed> {
        let combined = filter::combine(&self.samples);
        let at = self.times / self.samples.len().max(1) as f64;
        self.times = 0.0;
        self.samples.clear();
        let newest = self.newest.take();
        let period = self.period();
        self.reach = self.reach << 1 | u8::from(combined.is_some());
        self.interval_end += period;
        // Intervals in which nothing arrived at all (a stalled device, a suspended host).
        let mut missed = 0;
        while self.interval_end <= now && missed < 8 {
            self.reach <<= 1;
            self.interval_end += period;
            missed += 1;
        }
        if self.interval_end <= now {
            self.interval_end = now + period;
        }
        let (combined, (local, pending_slew)) = (combined?, newest?);
        Some(Closed {
            combined,
            local,
            pending_slew,
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Leap;

    fn sample(offset: f64) -> RefclockSample {
        RefclockSample {
            local: NtpTimestamp::from_unix(1_800_000_000, 0),
            offset,
            dispersion: 1e-7,
            leap: Leap::NoWarning,
        }
    }

    /// The configured offset is added, the pending slew taken out, and the precision
    /// is a floor under each sample's error bound.
    #[test]
    fn an_interval_combines_its_samples() {
        let options = RefclockOptions {
            offset: 0.01,
            precision: 1e-6,
            ..Default::default()
        };
        let mut state = RefclockState::new(options, 0.0);
        for i in 0..15 {
            assert!(!state.is_due(f64::from(i)));
            assert!(state.add(&sample(0.001), 0.0005, 0.0));
        }
        assert!(state.is_due(16.0));
        let closed = state.close(16.0).unwrap();
        assert!(
            (closed.combined.offset - 0.0105).abs() < 1e-12,
            "{closed:?}"
        );
        assert!((closed.combined.dispersion - 1e-6).abs() < 1e-12);
        assert_eq!(closed.pending_slew, 0.0005);
        assert_eq!(state.reach(), 1);
        assert!(state.is_reachable());
        assert!(!state.is_due(17.0) && state.is_due(32.0));
    }

    /// Unreachable after four polls without a sample, reachable again at the next.
    #[test]
    fn silence_makes_it_unreachable() {
        let mut state = RefclockState::new(RefclockOptions::default(), 0.0);
        state.add(&sample(0.0), 0.0, 0.0);
        assert!(state.close(16.0).is_some());
        for poll in 2..=4 {
            assert!(state.close(f64::from(poll) * 16.0).is_none());
            assert!(state.is_reachable(), "poll {poll}");
        }
        assert!(state.close(80.0).is_none());
        assert!(!state.is_reachable());
        assert!(!state.add(&sample(f64::NAN), 0.0, 0.0));
        assert_eq!(state.drops, 1);
        state.add(&sample(0.0), 0.0, 0.0);
        assert!(state.close(96.0).is_some());
        assert!(state.is_reachable());
    }

    /// A long silence counts each missed interval, and the next interval starts now.
    #[test]
    fn missed_intervals_shift_the_register() {
        let mut state = RefclockState::new(RefclockOptions::default(), 0.0);
        state.add(&sample(0.0), 0.0, 0.0);
        assert!(state.close(16.0 * 3.5).is_some());
        assert_eq!(state.reach(), 0b100);
        assert!(!state.is_due(16.0 * 3.9) && state.is_due(64.0));
        assert!(state.close(1e6).is_none());
        assert!(!state.is_reachable());
        assert!(!state.is_due(1e6 + 15.0) && state.is_due(1e6 + 16.0));
    }
}
