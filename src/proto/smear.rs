//! Leap smearing for served time (`[leap] smear-window`). Around a leap second the
//! timestamps a server hands out run slightly slow (or fast, for a deleted second) so
//! that they absorb the whole second over a window centred on the leap, instead of
//! repeating (or skipping) one. The local clock itself passes the leap as the kernel
//! does: only served time is smeared.
//!
//! Smeared time is not UTC (it is up to 0.5 s off at the leap), so it suits only a site
//! whose clients all take time from smearing servers; never a public server.
//!
//! During the repeated second the clock reads the same as in the second before it, so a
//! reading alone cannot say how far into the smear it is. A leap steps the clock but
//! not a monotonic one, so the server keeps the clock minus the monotonic clock at
//! every reading near the leap: a drop of a second as the clock reaches midnight means
//! it has passed the leap, and that is kept for the rest of the window (later steps
//! are the sync engine's, not the leap's). A clock that crosses midnight without the
//! step (no one told its kernel) is smeared as it reads: it ends the window a second
//! from it, and is served as read after. A server first reading the clock after
//! midnight takes the kernel to have passed the leap.

use crate::wire::NtpTimestamp;

/// Shortest window: spreads a second at 500 ppm, the most any RFC 5905 client slews.
pub const MIN_WINDOW: f64 = 2000.0;
/// Longest window: a day, noon to noon around a midnight leap.
pub const MAX_WINDOW: f64 = 86_400.0;

/// A leap second to smear: the midnight it happens at (NTP seconds, as the leap file
/// and the clock count them) and whether a second is inserted or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledLeap {
    pub at: u64,
    pub insert: bool,
}

/// How long after midnight a clock that has not stepped is taken never to: the kernel
/// steps at its first tick after midnight, so a reading may show a few milliseconds
/// past it first.
const SETTLED: f64 = 1.0;

/// Where the clock stands against the leap being smeared, as seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passage {
    /// Not passed yet, as far as the readings show.
    Before,
    /// The clock stepped by the leap as it crossed midnight (or was first read after
    /// midnight, when the kernel is taken to have done so).
    Passed,
    /// The clock went on a second past midnight without stepping: no one told its
    /// kernel.
    NotPassed,
}

/// What the smear has seen of one leap: the clock minus the monotonic clock at the last
/// reading, and the passage it shows.
#[derive(Debug, Clone, Copy)]
struct Watch {
    leap: ScheduledLeap,
    last: f64,
    passage: Passage,
}

/// A server's smearing state, shared by its threads: the window, and what the readings
/// have shown of the leap in it. Every reading in the window should go through
/// [`view`](Self::view), idle ones too, so that the step is seen as it happens.
#[derive(Debug, Clone)]
pub struct LeapSmear {
    window: f64,
    watch: Option<Watch>,
}

impl LeapSmear {
    /// `window` seconds, [`MIN_WINDOW`] to [`MAX_WINDOW`] (the configuration checks).
    pub fn new(window: f64) -> Self {
        Self {
            window: window.clamp(MIN_WINDOW, MAX_WINDOW),
            watch: None,
        }
    }

    /// Half the window: how far from a leap the smear reaches.
    pub fn reach(&self) -> f64 {
        self.window / 2.0
    }

    /// Reads the clock for a batch of requests: `leap` is the leap nearest to
    /// `reading`, if any, and `monotonic` seconds on a clock leaps do not step (one
    /// origin for every caller). `None` when no smear is under way: time is served as
    /// read.
    pub fn view(
        &mut self,
        leap: Option<ScheduledLeap>,
        reading: NtpTimestamp,
        monotonic: f64,
    ) -> Option<SmearView> {
        let Some(leap) = leap else {
            self.watch = None;
            return None;
        };
        let since = since_leap(reading, leap);
        // One second of slack past the reach: the clock reads a second less for a
        // second's worth of real time after an inserted leap.
        if since.abs() > self.reach() + 1.0 {
            self.watch = None;
            return None;
        }
        let offset = since - monotonic;
        let passage = match self.watch.filter(|watch| watch.leap == leap) {
            None if since >= 0.0 => Passage::Passed,
            None => Passage::Before,
            Some(watch) => watch.next(since, offset),
        };
        self.watch = Some(Watch {
            leap,
            last: offset,
            passage,
        });
        Some(SmearView {
            leap,
            window: self.window,
            since,
            last: offset,
            passage,
        })
    }
}

impl Watch {
    /// The passage after a reading `since` seconds from the leap, the clock then
    /// `offset` seconds from the monotonic clock. Once decided, it stays.
    fn next(&self, since: f64, offset: f64) -> Passage {
        if self.passage != Passage::Before {
            return self.passage;
        }
        let (earliest, stepped) = if self.leap.insert {
            (-1.0, offset < self.last - 0.5)
        } else {
            (0.0, offset > self.last + 0.5)
        };
        if stepped && since >= earliest {
            Passage::Passed
        } else if since >= SETTLED {
            Passage::NotPassed
        } else {
            Passage::Before
        }
    }
}

/// How to smear the readings of one batch (see [`LeapSmear::view`]).
#[derive(Debug, Clone, Copy)]
pub struct SmearView {
    leap: ScheduledLeap,
    window: f64,
    /// The batch's reading, seconds from the leap.
    since: f64,
    /// The clock minus the monotonic clock at the batch's reading.
    last: f64,
    passage: Passage,
}

impl SmearView {
    /// Served time for a reading taken no later than the batch's: a receive time. A
    /// request is taken to have waited less than a second in the socket's queue.
    pub fn served_before(&self, reading: NtpTimestamp) -> NtpTimestamp {
        let since = since_leap(reading, self.leap);
        let passed = self.passage == Passage::Passed
            && if self.leap.insert {
                // A reading in the repeated second but later than the batch's, though
                // taken before it, was taken before the clock went back.
                since >= 0.0 || (since >= -1.0 && since <= self.since)
            } else {
                since >= 0.0
            };
        reading.add_seconds(self.correction(since, passed))
    }

    /// Served time for a reading taken now, after the batch's (a transmit time), with
    /// the monotonic clock read with it: the clock may have stepped since.
    pub fn served_now(&self, reading: NtpTimestamp, monotonic: f64) -> NtpTimestamp {
        let since = since_leap(reading, self.leap);
        let watch = Watch {
            leap: self.leap,
            last: self.last,
            passage: self.passage,
        };
        let passed = watch.next(since, since - monotonic) == Passage::Passed;
        reading.add_seconds(self.correction(since, passed && since >= self.earliest()))
    }

    /// Served minus read time at the batch's reading, seconds.
    pub fn offset(&self) -> f64 {
        let passed = self.passage == Passage::Passed && self.since >= self.earliest();
        self.correction(self.since, passed)
    }

    /// The earliest reading after the leap: the repeated second's start, or midnight.
    fn earliest(&self) -> f64 {
        if self.leap.insert { -1.0 } else { 0.0 }
    }

    /// What to add to a reading `since` seconds from the leap: the second the clock
    /// took back (or skipped), if it has, less the smear's share of the leap so far.
    fn correction(&self, since: f64, passed: bool) -> f64 {
        // On a continuous scale, an inserted leap is at midnight; a deleted one at
        // 23:59:59, where the clock jumps to midnight.
        let (step, centre) = if self.leap.insert {
            (1.0, 0.0)
        } else {
            (-1.0, -1.0)
        };
        let taken = if passed { step } else { 0.0 };
        let continuous = since + taken;
        let share = ((continuous - centre + self.window / 2.0) / self.window).clamp(0.0, 1.0);
        taken - step * share
    }
}

/// Seconds from the leap's midnight to `reading` (negative before it).
fn since_leap(reading: NtpTimestamp, leap: ScheduledLeap) -> f64 {
    // NTP timestamps wrap every 2^32 s: the low 32 bits of the midnight are its time.
    reading.seconds_since(NtpTimestamp::from_bits(leap.at << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2017-01-01 00:00:00 UTC, after the last leap second so far.
    const LEAP: u64 = 3_692_217_600;
    const DAY: f64 = 86_400.0;

    fn at(seconds: f64) -> NtpTimestamp {
        NtpTimestamp::from_bits(LEAP << 32).add_seconds(seconds)
    }

    /// What a kernel clock reads `t` seconds (real time) after the leap's midnight:
    /// an inserted second is read twice, a deleted one never.
    fn kernel_clock(t: f64, insert: bool) -> f64 {
        match (insert, t >= 0.0, t >= -1.0) {
            (true, true, _) => t - 1.0,
            (false, _, true) => t + 1.0,
            _ => t,
        }
    }

    /// Serves readings of a kernel clock every `step` seconds across the window, as a
    /// server thread would (one batch per reading), and returns (real time, served
    /// time since the leap).
    fn smear_across(insert: bool, window: f64, step: f64) -> Vec<(f64, f64)> {
        let leap = ScheduledLeap { at: LEAP, insert };
        let mut smear = LeapSmear::new(window);
        let mut served = Vec::new();
        let mut t = -window / 2.0 - 10.0;
        while t < window / 2.0 + 10.0 {
            let reading = at(kernel_clock(t, insert));
            let monotonic = t + 1000.0;
            let shown = match smear.view(Some(leap), reading, monotonic) {
                Some(view) => view.served_now(reading, monotonic),
                None => reading,
            };
            served.push((t, shown.seconds_since(at(0.0))));
            t += step;
        }
        served
    }

    #[test]
    fn an_inserted_second_is_spread_evenly_over_the_window() {
        let window = DAY;
        let served = smear_across(true, window, 0.125);
        for &(t, shown) in &served {
            // Real time less the leap's share so far: continuous, never repeated.
            let share = ((t + window / 2.0) / window).clamp(0.0, 1.0);
            assert!((shown - (t - share)).abs() < 1e-6, "at {t}: {shown}");
        }
        for pair in served.windows(2) {
            let rate = (pair[1].1 - pair[0].1) / (pair[1].0 - pair[0].0);
            assert!(
                rate > 1.0 - 1.0 / window - 1e-6 && rate <= 1.0 + 1e-6,
                "{pair:?}"
            );
        }
        let middle = served.iter().find(|(t, _)| *t >= 0.0).unwrap();
        assert!(
            (middle.1 - middle.0 + 0.5).abs() < 1e-3,
            "half a second off at the leap"
        );
    }

    #[test]
    fn a_deleted_second_is_spread_evenly_over_the_window() {
        let window = 7200.0;
        let served = smear_across(false, window, 0.125);
        for &(t, shown) in &served {
            let share = ((t + 1.0 + window / 2.0) / window).clamp(0.0, 1.0);
            assert!((shown - (t + share)).abs() < 1e-6, "at {t}: {shown}");
        }
        for pair in served.windows(2) {
            assert!(pair[1].1 > pair[0].1, "{pair:?}");
        }
    }

    #[test]
    fn outside_the_window_time_is_served_as_read() {
        let mut smear = LeapSmear::new(DAY);
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        assert!(smear.view(leap, at(-DAY / 2.0 - 2.0), 0.0).is_none());
        assert!(smear.view(leap, at(DAY / 2.0 + 2.0), 0.0).is_none());
        assert!(smear.view(None, at(0.0), 0.0).is_none());
        // Just inside, the served time is the clock's (to within the smear so far).
        let view = smear.view(leap, at(-DAY / 2.0 + 1.0), 0.0).unwrap();
        assert!(view.offset().abs() < 1e-4);
        // A day later, the clock having taken the second back.
        let view = smear.view(leap, at(DAY / 2.0 - 1.0), DAY - 1.0).unwrap();
        assert!(view.offset().abs() < 1e-4);
    }

    #[test]
    fn a_receive_time_from_before_the_insertion_is_served_as_before_it() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-2.0), 0.0);
        // A request stamped 1 ms before midnight is read 2 ms later, after the kernel
        // took the second back: the batch reads -0.999 s.
        let view = smear.view(leap, at(-0.999), 2.001).unwrap();
        let received = view.served_before(at(-0.001));
        let transmitted = view.served_now(at(-0.9985), 2.0015);
        assert!((received.seconds_since(at(-0.5)) + 0.001).abs() < 1e-5);
        assert!(transmitted.seconds_since(received) > 0.0);
        assert!(transmitted.seconds_since(received) < 0.003);
    }

    #[test]
    fn a_clock_that_never_passes_the_leap_is_smeared_as_it_reads() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        let mut t = -DAY / 2.0;
        while t < DAY / 2.0 {
            let view = smear.view(leap, at(t), t).unwrap();
            let share = (t + DAY / 2.0) / DAY;
            assert!((view.offset() + share).abs() < 1e-6, "at {t}");
            t += 0.25;
        }
    }

    #[test]
    fn the_passage_is_kept_whatever_the_clock_does_later() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-2.0), 100.0);
        let view = smear.view(leap, at(-0.9), 102.1).unwrap();
        assert!(
            (view.offset() - 0.5).abs() < 1e-4,
            "passed: {}",
            view.offset()
        );
        // An hour later the sync engine steps the clock 0.7 s forward: still passed.
        let view = smear.view(leap, at(3600.7), 3702.0).unwrap();
        let share = (3601.7 + DAY / 2.0) / DAY;
        assert!((view.offset() - (1.0 - share)).abs() < 1e-6);
        // A clock seen crossing midnight without the step is not taken to pass later.
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-0.2), 100.0);
        smear.view(leap, at(0.3), 100.5);
        let view = smear.view(leap, at(5.0), 104.2).unwrap();
        assert!((view.offset() + (5.0 + DAY / 2.0) / DAY).abs() < 1e-6);
        // Nor is a deleted second.
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: false,
        });
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-1.5), 0.0);
        let view = smear.view(leap, at(0.5), 2.0).unwrap();
        assert!(
            (view.offset() - (1.5 + DAY / 2.0) / DAY).abs() < 1e-6,
            "not deleted"
        );
    }

    #[test]
    fn a_reading_just_past_midnight_before_the_kernel_steps_is_no_verdict() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-0.5), 10.0);
        let early = smear.view(leap, at(0.004), 10.504).unwrap();
        assert!(
            (early.offset() + 0.5).abs() < 1e-4,
            "as read: not stepped yet"
        );
        let view = smear.view(leap, at(-0.99), 10.51).unwrap();
        assert!((view.offset() - 0.5).abs() < 1e-4, "then the step: passed");
    }

    #[test]
    fn a_transmit_time_after_the_step_is_seen_as_after_it() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        smear.view(leap, at(-3.0), 0.0);
        // A request arrives 3 ms before midnight, the batch reads 2 ms before it, and
        // the reply leaves 1 ms after: 4 ms from arrival to reply.
        let view = smear.view(leap, at(-0.002), 2.998).unwrap();
        let received = view.served_before(at(-0.003));
        let transmitted = view.served_now(at(-0.999), 3.001);
        let sent = transmitted.seconds_since(received);
        assert!((sent - 0.004).abs() < 1e-5, "{sent}");
    }

    #[test]
    fn without_a_reading_before_the_leap_the_repeated_second_counts_as_the_first() {
        let leap = Some(ScheduledLeap {
            at: LEAP,
            insert: true,
        });
        let mut smear = LeapSmear::new(DAY);
        let view = smear.view(leap, at(-0.5), 0.0).unwrap();
        assert!((view.offset() + 0.5).abs() < 1e-4);
        // Started after midnight, it takes the kernel to have inserted the second.
        let mut restarted = LeapSmear::new(DAY);
        let view = restarted.view(leap, at(10.0), 0.0).unwrap();
        assert!((view.offset() - (1.0 - (10.0 + 1.0 + DAY / 2.0) / DAY)).abs() < 1e-6);
        // A new leap forgets the old one's baseline.
        smear.view(leap, at(-5.0), 0.0);
        let other = Some(ScheduledLeap {
            at: LEAP + 86_400 * 181,
            insert: true,
        });
        let view = smear.view(other, at(86_400.0 * 181.0 - 0.5), 10.0).unwrap();
        assert!((view.offset() + 0.5).abs() < 1e-4);
    }
}
