//! Kernel PPS (`/dev/ppsN`, RFC 2783) samples: pulses in, one [`RefclockSample`] per
//! usable pulse out.
//!
//! A pulse says exactly *when* a second began, never *which* second: that comes from a
//! lock source (a GPS refclock, or the system's own synchronized clock), whose offset
//! only has to be right to ±0.4 s. The pulse's offset is then the distance from the
//! edge to the nearest whole second of reference time. Edges are checked first on
//! their own: a sequence number that did not advance is the same event fetched again,
//! and a pulse a whole number of seconds after none of the recent edges is noise.

use std::collections::VecDeque;

use super::RefclockSample;
use super::phc::realtime_to_ntp;
use crate::sys::{DeviceTime, PpsEdge, PpsFetch};
use crate::wire::{Leap, NtpTimestamp};

/// How far (s) the lock source's offset may be from the pulse's. Beyond it the lock
/// could be naming the wrong second; 0.4 leaves a margin below the 0.5 where it would.
pub const LOCK_TOLERANCE: f64 = 0.4;

/// Edges remembered for the spacing check. Four lets one good pulse through even when
/// a spurious train alternates with the real one.
const RECENT_EDGES: usize = 4;

/// Edges older than this (s) no longer vouch for a new one: over a longer gap the
/// local clock's drift blurs what "a whole number of seconds" means.
const MAX_SPACING: f64 = 16.0;

/// Spacing tolerance: a fixed part for the edges' own timestamping jitter (interrupt
/// latency), plus the kernel's 500 ppm frequency limit over the gap.
const SPACING_JITTER: f64 = 1e-3;
const SPACING_DRIFT: f64 = 500e-6;

/// How pulses become samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpsSettings {
    /// The edge that marks the second.
    pub edge: PpsEdge,
    /// Added to every sample's offset, seconds: how late the pulse reaches the capture
    /// (cable, receiver), positive for late. Within ±0.5 s.
    pub offset: f64,
    /// The oldest lock estimate used, seconds between it and the pulse. The lock only
    /// has to be right to 0.4 s, which even a free-running clock at 500 ppm stays for
    /// 800 s; this bound is about not trusting a lock source that has gone silent.
    pub max_lock_age: f64,
    /// The timestamps' error, seconds: each sample's dispersion.
    pub precision: f64,
}

impl Default for PpsSettings {
    fn default() -> Self {
        Self {
            edge: PpsEdge::Assert,
            offset: 0.0,
            max_lock_age: 60.0,
            precision: 1e-6,
        }
    }
}

/// A setting [`PpsCombiner::new`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PpsSettingsError {
    #[error("offset must be a number of seconds within ±0.5")]
    Offset,
    #[error("max-lock-age must be a positive number of seconds")]
    MaxLockAge,
    #[error("precision must be a non-negative number of seconds")]
    Precision,
}

/// The lock source's latest estimate: reference minus local clock (s), and the local
/// time it was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LockEstimate {
    pub offset: f64,
    pub when: NtpTimestamp,
}

/// Why an edge gave no sample. Each is counted in [`PpsCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PpsDrop {
    /// Sequence 0 at time 0: the device has seen no edge yet.
    #[error("no pulse yet")]
    NoPulse,
    #[error("the edge's nanoseconds are outside 0..1e9")]
    BadTime,
    /// The sequence number did not advance: the same event, fetched again.
    #[error("the same pulse again")]
    Duplicate,
    /// No recent edge to check the spacing against (the first pulse, or the first
    /// after a silence or a clock step); it will vouch for the next one.
    #[error("no recent edge to check the spacing against")]
    Unconfirmed,
    /// Not a whole number of seconds after any recent edge: noise, or the other edge.
    #[error("not a whole number of seconds after any recent edge")]
    Spurious,
    /// No lock estimate, or one that is not a number.
    #[error("no lock source")]
    NoLock,
    #[error("the lock source's estimate is too old")]
    LockTooOld,
    /// The lock's offset is more than 0.4 s from the pulse's: it cannot say which
    /// second this is.
    #[error("the lock source is more than 0.4 s from the pulse")]
    FarFromLock,
}

/// Pulses seen, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PpsCounters {
    pub used: u64,
    /// `PPS_FETCH` waited and no pulse came ([`PpsCombiner::handle_timeout`]).
    pub timeouts: u64,
    pub no_pulse: u64,
    pub bad_time: u64,
    pub duplicate: u64,
    pub unconfirmed: u64,
    pub spurious: u64,
    pub no_lock: u64,
    pub lock_too_old: u64,
    pub far_from_lock: u64,
}

impl PpsCounters {
    fn count(&mut self, outcome: Result<(), PpsDrop>) {
        let counter = match outcome {
            Ok(()) => &mut self.used,
            Err(PpsDrop::NoPulse) => &mut self.no_pulse,
            Err(PpsDrop::BadTime) => &mut self.bad_time,
            Err(PpsDrop::Duplicate) => &mut self.duplicate,
            Err(PpsDrop::Unconfirmed) => &mut self.unconfirmed,
            Err(PpsDrop::Spurious) => &mut self.spurious,
            Err(PpsDrop::NoLock) => &mut self.no_lock,
            Err(PpsDrop::LockTooOld) => &mut self.lock_too_old,
            Err(PpsDrop::FarFromLock) => &mut self.far_from_lock,
        };
        *counter = counter.saturating_add(1);
    }
}

/// Turns a PPS device's edges and a lock source's offset into samples (sans-IO).
#[derive(Debug, Clone)]
pub struct PpsCombiner {
    settings: PpsSettings,
    last_sequence: Option<u32>,
    /// Local times of the latest edges, oldest first, at most [`RECENT_EDGES`].
    recent: VecDeque<NtpTimestamp>,
    counters: PpsCounters,
}

impl PpsCombiner {
    pub fn new(settings: PpsSettings) -> Result<Self, PpsSettingsError> {
        if !(-0.5..=0.5).contains(&settings.offset) {
            return Err(PpsSettingsError::Offset);
        }
        if !(settings.max_lock_age > 0.0 && settings.max_lock_age.is_finite()) {
            return Err(PpsSettingsError::MaxLockAge);
        }
        if !(settings.precision >= 0.0 && settings.precision.is_finite()) {
            return Err(PpsSettingsError::Precision);
        }
        Ok(Self {
            settings,
            last_sequence: None,
            recent: VecDeque::with_capacity(RECENT_EDGES),
            counters: PpsCounters::default(),
        })
    }

    /// One `PPS_FETCH` result, with the lock source's latest estimate (if any).
    pub fn handle_edge(
        &mut self,
        fetched: &PpsFetch,
        lock: Option<LockEstimate>,
    ) -> Result<RefclockSample, PpsDrop> {
        let (sequence, time) = match self.settings.edge {
            PpsEdge::Assert => (fetched.assert_sequence, fetched.assert),
            PpsEdge::Clear => (fetched.clear_sequence, fetched.clear),
        };
        let outcome = self.judge(sequence, time, lock);
        self.counters.count(outcome.map(|_| ()));
        outcome
    }

    /// `PPS_FETCH` waited and no pulse came: nothing to do but count it.
    pub fn handle_timeout(&mut self) {
        self.counters.timeouts = self.counters.timeouts.saturating_add(1);
    }

    pub fn counters(&self) -> &PpsCounters {
        &self.counters
    }

    fn judge(
        &mut self,
        sequence: u32,
        time: DeviceTime,
        lock: Option<LockEstimate>,
    ) -> Result<RefclockSample, PpsDrop> {
        if sequence == 0 && time == DeviceTime::default() {
            return Err(PpsDrop::NoPulse);
        }
        let local = realtime_to_ntp(time).ok_or(PpsDrop::BadTime)?;
        if self.last_sequence == Some(sequence) {
            return Err(PpsDrop::Duplicate);
        }
        // A new, well-formed edge: it joins the history whatever becomes of it, so a
        // spurious first edge cannot block the real ones after it for long.
        let spacing = self.check_spacing(local);
        self.last_sequence = Some(sequence);
        if self.recent.len() == RECENT_EDGES {
            self.recent.pop_front();
        }
        self.recent.push_back(local);
        spacing?;
        let offset = self.offset_against_lock(local, lock)?;
        Ok(RefclockSample {
            local,
            offset,
            dispersion: self.settings.precision,
            leap: Leap::NoWarning,
        })
    }

    /// Whether `local` is a whole number of seconds after one of the recent edges.
    fn check_spacing(&self, local: NtpTimestamp) -> Result<(), PpsDrop> {
        let mut any_recent = false;
        for &earlier in &self.recent {
            let gap = local.seconds_since(earlier);
            // A negative gap means the clock was stepped back: that edge says nothing.
            if !(0.0..=MAX_SPACING).contains(&gap) {
                continue;
            }
            any_recent = true;
            let whole = gap.round();
            if whole >= 1.0 && (gap - whole).abs() <= SPACING_JITTER + SPACING_DRIFT * gap {
                return Ok(());
            }
        }
        Err(if any_recent {
            PpsDrop::Spurious
        } else {
            PpsDrop::Unconfirmed
        })
    }

    /// The pulse's offset: from the edge to the whole second of reference time the
    /// lock source puts nearest it.
    fn offset_against_lock(
        &self,
        local: NtpTimestamp,
        lock: Option<LockEstimate>,
    ) -> Result<f64, PpsDrop> {
        let lock = lock
            .filter(|lock| lock.offset.is_finite())
            .ok_or(PpsDrop::NoLock)?;
        if local.seconds_since(lock.when).abs() > self.settings.max_lock_age {
            return Err(PpsDrop::LockTooOld);
        }
        // Only the edge's fraction of a second matters; working from it keeps every
        // term small, so no precision is lost to the seconds since 1900.
        let fraction = (local.to_bits() & 0xffff_ffff) as f64 / 4_294_967_296.0;
        let reference = fraction + lock.offset - self.settings.offset;
        let second = reference.round();
        if (reference - second).abs() > LOCK_TOLERANCE {
            return Err(PpsDrop::FarFromLock);
        }
        Ok(second + self.settings.offset - fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-11-28 08:00:00 UTC.
    const T0: i64 = 1_764_316_800;

    /// What `PPS_FETCH` returned over 60 s (assert sequence, assert seconds and
    /// nanoseconds), generated for this test rather than captured: the local clock runs
    /// 0.7 s ahead of the reference and 10 ppm fast, each edge with up to ±2 µs of
    /// timestamping jitter. The pulse of T0 + 20 was never fetched (sequence 21 is
    /// missing), the one of T0 + 30 was fetched twice, and a spurious edge came 0.3 s
    /// after the one of T0 + 40 (sequence 42).
    const EDGES: [(u32, i64, i64); 61] = [
        (1, 1_764_316_800, 699_998_859),
        (2, 1_764_316_801, 700_009_063),
        (3, 1_764_316_802, 700_019_578),
        (4, 1_764_316_803, 700_028_106),
        (5, 1_764_316_804, 700_038_798),
        (6, 1_764_316_805, 700_048_903),
        (7, 1_764_316_806, 700_059_620),
        (8, 1_764_316_807, 700_070_985),
        (9, 1_764_316_808, 700_080_304),
        (10, 1_764_316_809, 700_088_021),
        (11, 1_764_316_810, 700_100_645),
        (12, 1_764_316_811, 700_111_272),
        (13, 1_764_316_812, 700_119_043),
        (14, 1_764_316_813, 700_130_771),
        (15, 1_764_316_814, 700_139_458),
        (16, 1_764_316_815, 700_150_909),
        (17, 1_764_316_816, 700_158_730),
        (18, 1_764_316_817, 700_171_927),
        (19, 1_764_316_818, 700_181_336),
        (20, 1_764_316_819, 700_188_111),
        // Sequence 21, the pulse of T0 + 20, was never fetched.
        (22, 1_764_316_821, 700_210_763),
        (23, 1_764_316_822, 700_221_615),
        (24, 1_764_316_823, 700_231_471),
        (25, 1_764_316_824, 700_238_301),
        (26, 1_764_316_825, 700_249_500),
        (27, 1_764_316_826, 700_258_035),
        (28, 1_764_316_827, 700_268_442),
        (29, 1_764_316_828, 700_279_736),
        (30, 1_764_316_829, 700_289_424),
        (31, 1_764_316_830, 700_299_729),
        (31, 1_764_316_830, 700_299_729), // the same event, fetched again
        (32, 1_764_316_831, 700_311_236),
        (33, 1_764_316_832, 700_321_081),
        (34, 1_764_316_833, 700_328_397),
        (35, 1_764_316_834, 700_341_552),
        (36, 1_764_316_835, 700_349_604),
        (37, 1_764_316_836, 700_360_102),
        (38, 1_764_316_837, 700_370_377),
        (39, 1_764_316_838, 700_379_227),
        (40, 1_764_316_839, 700_389_093),
        (41, 1_764_316_840, 700_400_933),
        (42, 1_764_316_841, 400_933), // spurious: 0.3 s after the pulse before
        (43, 1_764_316_841, 700_408_272),
        (44, 1_764_316_842, 700_419_884),
        (45, 1_764_316_843, 700_429_764),
        (46, 1_764_316_844, 700_439_054),
        (47, 1_764_316_845, 700_450_366),
        (48, 1_764_316_846, 700_459_313),
        (49, 1_764_316_847, 700_470_315),
        (50, 1_764_316_848, 700_478_002),
        (51, 1_764_316_849, 700_490_967),
        (52, 1_764_316_850, 700_500_903),
        (53, 1_764_316_851, 700_511_540),
        (54, 1_764_316_852, 700_518_186),
        (55, 1_764_316_853, 700_530_669),
        (56, 1_764_316_854, 700_538_770),
        (57, 1_764_316_855, 700_551_758),
        (58, 1_764_316_856, 700_560_538),
        (59, 1_764_316_857, 700_571_681),
        (60, 1_764_316_858, 700_580_539),
        (61, 1_764_316_859, 700_589_970),
    ];

    fn fetch(sequence: u32, seconds: i64, nanos: i64) -> PpsFetch {
        PpsFetch {
            assert_sequence: sequence,
            assert: DeviceTime { seconds, nanos },
            ..PpsFetch::default()
        }
    }

    fn local_of(fetched: &PpsFetch) -> NtpTimestamp {
        realtime_to_ntp(fetched.assert).unwrap()
    }

    /// A lock estimate of `offset`, made `age` seconds before the edge.
    fn lock(offset: f64, fetched: &PpsFetch, age: f64) -> Option<LockEstimate> {
        Some(LockEstimate {
            offset,
            when: local_of(fetched).add_seconds(-age),
        })
    }

    /// The recorded edges through a combiner, with a lock of `lock_offset` made half
    /// a second before each edge (`None`: no lock source).
    fn replay(
        settings: PpsSettings,
        lock_offset: Option<f64>,
    ) -> (Vec<Result<RefclockSample, PpsDrop>>, PpsCounters) {
        let mut combiner = PpsCombiner::new(settings).unwrap();
        let outcomes = EDGES
            .iter()
            .map(|&(sequence, seconds, nanos)| {
                let fetched = fetch(sequence, seconds, nanos);
                let estimate = lock_offset.and_then(|offset| lock(offset, &fetched, 0.5));
                combiner.handle_edge(&fetched, estimate)
            })
            .collect();
        (outcomes, *combiner.counters())
    }

    /// The true offset of a pulse in the recording: 0.7 s plus 10 ppm since T0, behind.
    fn true_offset(sample: &RefclockSample) -> f64 {
        let since = sample.local.seconds_since(NtpTimestamp::from_unix(T0, 0));
        -(0.7 + 10e-6 * (since - 0.7).round())
    }

    #[test]
    fn sixty_seconds_of_pulses_give_offsets_within_their_jitter() {
        let (outcomes, counters) = replay(PpsSettings::default(), Some(-0.7));
        let mut used = 0;
        for (outcome, &(sequence, _, _)) in outcomes.iter().zip(&EDGES) {
            match outcome {
                Ok(sample) => {
                    used += 1;
                    let error = sample.offset - true_offset(sample);
                    assert!(error.abs() <= 2.001e-6, "sequence {sequence}: {error}");
                    assert_eq!(sample.dispersion, 1e-6);
                    assert_eq!(sample.leap, Leap::NoWarning);
                }
                Err(reason) => {
                    let expected = match sequence {
                        1 => PpsDrop::Unconfirmed,
                        31 => PpsDrop::Duplicate,
                        42 => PpsDrop::Spurious,
                        _ => panic!("sequence {sequence} dropped: {reason}"),
                    };
                    assert_eq!(*reason, expected);
                }
            }
        }
        // The pulse after the missing one (22) and the one after the spurious edge (43)
        // were used.
        assert!(outcomes[20].is_ok() && outcomes[42].is_ok());
        assert_eq!(used, 58);
        let expected = PpsCounters {
            used: 58,
            unconfirmed: 1,
            duplicate: 1,
            spurious: 1,
            ..PpsCounters::default()
        };
        assert_eq!(counters, expected);
    }

    #[test]
    fn without_a_lock_source_no_pulse_is_used() {
        let (outcomes, counters) = replay(PpsSettings::default(), None);
        assert!(outcomes.iter().all(Result::is_err));
        assert_eq!(counters.used, 0);
        assert_eq!(counters.no_lock, 58);
        let (_, counters) = replay(PpsSettings::default(), Some(f64::NAN));
        assert_eq!(counters.no_lock, 58);
    }

    #[test]
    fn the_lock_names_the_second_and_the_pulse_its_phase() {
        // 0.3 s off: still the right second, and the offsets are the pulses'.
        let (outcomes, _) = replay(PpsSettings::default(), Some(-0.4));
        let samples: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(samples.len(), 58);
        assert!(
            samples
                .iter()
                .all(|s| (s.offset - true_offset(s)).abs() < 2.001e-6)
        );
        // A whole second off: every sample a second off. The pulse cannot tell; the
        // lock source is trusted for the second, and selection judges the result.
        let (outcomes, _) = replay(PpsSettings::default(), Some(-1.7));
        let samples: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(samples.len(), 58);
        assert!(
            samples
                .iter()
                .all(|s| (s.offset - true_offset(s) + 1.0).abs() < 2.001e-6)
        );
        // 0.45 s and 0.5 s off: the lock could be naming either second.
        for lock_offset in [-0.25, -0.2, -1.15] {
            let (outcomes, counters) = replay(PpsSettings::default(), Some(lock_offset));
            assert!(outcomes.iter().all(Result::is_err), "{lock_offset}");
            assert_eq!(counters.far_from_lock, 58, "{lock_offset}");
        }
    }

    #[test]
    fn a_lock_estimate_older_than_the_limit_is_not_used() {
        let settings = PpsSettings {
            max_lock_age: 10.0,
            ..PpsSettings::default()
        };
        let mut combiner = PpsCombiner::new(settings).unwrap();
        let first = fetch(1, T0, 700_000_000);
        let _ = combiner.handle_edge(&first, lock(-0.7, &first, 0.5));
        for (sequence, age, expected) in [
            (2, 10.5, Err(PpsDrop::LockTooOld)),
            (3, -10.5, Err(PpsDrop::LockTooOld)),
            (4, 9.5, Ok(())),
        ] {
            let edge = fetch(sequence, T0 + i64::from(sequence) - 1, 700_000_000);
            let outcome = combiner.handle_edge(&edge, lock(-0.7, &edge, age));
            assert_eq!(outcome.map(|_| ()), expected, "age {age}");
        }
        assert_eq!(combiner.counters().lock_too_old, 2);
    }

    #[test]
    fn the_offset_setting_moves_every_sample_by_the_cable_delay() {
        let settings = PpsSettings {
            offset: 150e-6,
            ..PpsSettings::default()
        };
        let (outcomes, _) = replay(settings, Some(-0.7));
        let samples: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(samples.len(), 58);
        for s in samples {
            assert!((s.offset - true_offset(s) - 150e-6).abs() < 2.001e-6);
        }
    }

    #[test]
    fn the_clear_edge_is_read_when_configured() {
        let settings = PpsSettings {
            edge: PpsEdge::Clear,
            ..PpsSettings::default()
        };
        let mut combiner = PpsCombiner::new(settings).unwrap();
        let mut sample = None;
        for sequence in 1..=3 {
            let seconds = T0 + i64::from(sequence);
            let fetched = PpsFetch {
                // The assert edge is stale and 0.3 s away: were it read, nothing fits.
                assert_sequence: 7,
                assert: DeviceTime {
                    seconds: T0,
                    nanos: 0,
                },
                clear_sequence: sequence,
                clear: DeviceTime {
                    seconds,
                    nanos: 300_000_100,
                },
            };
            let estimate = Some(LockEstimate {
                offset: -0.3,
                when: NtpTimestamp::from_unix(seconds, 0),
            });
            sample = combiner.handle_edge(&fetched, estimate).ok();
        }
        let sample = sample.unwrap();
        assert!((sample.offset + 0.300_000_1).abs() < 1e-9);
        assert_eq!(combiner.counters().used, 2);
    }

    #[test]
    fn empty_and_malformed_fetches_change_nothing() {
        let mut combiner = PpsCombiner::new(PpsSettings::default()).unwrap();
        assert_eq!(
            combiner.handle_edge(&PpsFetch::default(), None),
            Err(PpsDrop::NoPulse)
        );
        let bad = fetch(5, T0, 1_000_000_000);
        assert_eq!(combiner.handle_edge(&bad, None), Err(PpsDrop::BadTime));
        assert_eq!(
            combiner.handle_edge(&fetch(6, T0, -1), None),
            Err(PpsDrop::BadTime)
        );
        // Neither the bad sequence nor its time was remembered.
        let good = fetch(5, T0, 700_000_000);
        assert_eq!(
            combiner.handle_edge(&good, lock(-0.7, &good, 0.0)),
            Err(PpsDrop::Unconfirmed)
        );
        combiner.handle_timeout();
        let counters = combiner.counters();
        assert_eq!(
            (counters.no_pulse, counters.bad_time, counters.timeouts),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_spurious_first_edge_holds_up_only_the_next_pulse() {
        let mut combiner = PpsCombiner::new(PpsSettings::default()).unwrap();
        let edges = [
            (1, T0, 0),               // spurious, 0.3 s before the pulses
            (2, T0, 300_000_000),     // 0.3 s after it: not a whole second
            (3, T0 + 1, 300_000_000), // a whole second after the last
        ];
        let outcomes: Vec<_> = edges
            .iter()
            .map(|&(sequence, seconds, nanos)| {
                let edge = fetch(sequence, seconds, nanos);
                combiner
                    .handle_edge(&edge, lock(-0.3, &edge, 0.0))
                    .map(|s| s.offset)
            })
            .collect();
        assert_eq!(outcomes[0], Err(PpsDrop::Unconfirmed));
        assert_eq!(outcomes[1], Err(PpsDrop::Spurious));
        assert!((outcomes[2].unwrap() + 0.3).abs() < 1e-9);
    }

    #[test]
    fn after_a_clock_step_or_a_silence_the_spacing_starts_over() {
        let mut combiner = PpsCombiner::new(PpsSettings::default()).unwrap();
        let mut feed = |sequence: u32, seconds: i64| {
            let edge = fetch(sequence, seconds, 500_000_000);
            combiner
                .handle_edge(&edge, lock(0.5, &edge, 0.0))
                .map(|_| ())
        };
        assert_eq!(feed(1, T0), Err(PpsDrop::Unconfirmed));
        assert_eq!(feed(2, T0 + 1), Ok(()));
        // Stepped back by 10 s: earlier edges are in the future and say nothing.
        assert_eq!(feed(3, T0 - 8), Err(PpsDrop::Unconfirmed));
        assert_eq!(feed(4, T0 - 7), Ok(()));
        // 19 s of silence, longer than any edge vouches for (and a wrapped sequence
        // number is just another number).
        assert_eq!(feed(u32::MAX, T0 + 20), Err(PpsDrop::Unconfirmed));
        assert_eq!(feed(0, T0 + 21), Ok(()));
        assert_eq!(feed(1, T0 + 23), Ok(()));
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        let with = |change: fn(&mut PpsSettings)| {
            let mut settings = PpsSettings::default();
            change(&mut settings);
            PpsCombiner::new(settings).map(|_| ())
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|s| s.offset = 0.6), Err(PpsSettingsError::Offset));
        assert_eq!(with(|s| s.offset = f64::NAN), Err(PpsSettingsError::Offset));
        assert_eq!(
            with(|s| s.max_lock_age = 0.0),
            Err(PpsSettingsError::MaxLockAge)
        );
        assert_eq!(
            with(|s| s.max_lock_age = f64::INFINITY),
            Err(PpsSettingsError::MaxLockAge)
        );
        assert_eq!(
            with(|s| s.precision = -1e-6),
            Err(PpsSettingsError::Precision)
        );
    }
}
