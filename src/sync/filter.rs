//! Per-source sample history: how noisy each sample is likely to be, and which one best
//! bounds the source's offset for selection.
//!
//! Queueing only ever adds delay, and a packet that waited on one leg of the trip moves
//! the measured offset by at most half of the extra delay. So a sample's delay above the
//! smallest delay recently seen (its *excess*) bounds its error: with the error uniform
//! in ±excess/2, its variance is excess²/12. The discipline weighs every sample by that,
//! which lets quiet samples dominate and makes a delayed one nearly harmless.

use std::collections::VecDeque;

/// RFC 5905's PHI: how fast an old sample's error bound grows, 15 ppm.
pub const DISPERSION_RATE: f64 = 15e-6;
/// Samples kept for selection and start-up replay.
pub const HISTORY: usize = 8;
/// Delays kept to find the minimum (a path can change: the minimum must be able to rise).
const DELAY_HISTORY: usize = 64;
/// The minimum seen lies above the true one by this fraction of the median excess.
const MIN_DELAY_GAP: f64 = 0.05;
/// Noise that remains in the best sample: timestamping and the server's own jitter.
const NOISE_FLOOR: f64 = 1e-6;

/// One sample as the engine keeps it. `offset` is normalized: corrections the engine
/// commanded after the sample arrived are added back by the engine when it reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilteredSample {
    /// When it arrived (the engine's monotonic seconds).
    pub at: f64,
    /// Offset plus the engine's correction total when it arrived.
    pub normalized_offset: f64,
    pub delay: f64,
    /// Root delay / 2 + root dispersion of the server, plus both precisions.
    pub server_distance: f64,
    /// Estimated error variance (seconds²).
    pub variance: f64,
}

#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    samples: VecDeque<FilteredSample>,
    delays: VecDeque<f64>,
}

impl SourceFilter {
    /// Records a sample; returns it with its variance filled in.
    pub fn add(
        &mut self,
        at: f64,
        normalized_offset: f64,
        delay: f64,
        server_distance: f64,
        precision: f64,
    ) -> FilteredSample {
        let delay = delay.max(0.0);
        if self.delays.len() == DELAY_HISTORY {
            self.delays.pop_front();
        }
        self.delays.push_back(delay);
        let excess = delay - self.min_delay();
        let floor = NOISE_FLOOR + precision;
        let gap = self.min_delay_uncertainty();
        let sample = FilteredSample {
            at,
            normalized_offset,
            delay,
            server_distance,
            variance: (excess + gap).powi(2) / 12.0 + floor * floor,
        };
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        sample
    }

    /// The smallest delay in recent history.
    pub fn min_delay(&self) -> f64 {
        self.delays.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// How far above the path's true minimum the smallest delay seen may still be: a
    /// fraction of the spread between the minimum and the median (few samples rarely
    /// catch the minimum, so the excess of a sample is uncertain by about this much).
    pub fn min_delay_uncertainty(&self) -> f64 {
        let mut sorted: Vec<f64> = self.delays.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let (Some(min), Some(median)) = (sorted.first(), sorted.get(sorted.len() / 2)) else {
            return 0.0;
        };
        // With few samples the minimum itself is poorly known: up to all of it may be
        // queueing, and every sample's error is bounded only by half its delay.
        ((median - min) * MIN_DELAY_GAP).max(min / sorted.len() as f64)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn samples(&self) -> impl Iterator<Item = &FilteredSample> {
        self.samples.iter()
    }

    /// The sample that bounds the source's offset most tightly now, with that bound
    /// (RFC 5905's clock filter: delay/2 + server distance, growing with age).
    pub fn best(&self, now: f64) -> Option<(FilteredSample, f64)> {
        self.samples
            .iter()
            .map(|s| (*s, bound(s, now)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Half the round trip bounds a sample's error; its server's own distance adds to it,
/// and so does our clock's possible drift since it arrived.
fn bound(sample: &FilteredSample, now: f64) -> f64 {
    sample.delay / 2.0 + sample.server_distance + DISPERSION_RATE * (now - sample.at).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_samples_get_large_variance() {
        let mut filter = SourceFilter::default();
        let first = filter.add(0.0, 0.0, 0.010, 0.0, 0.0);
        // One sample: its delay may be all queueing, so its error is up to half of it.
        assert!((first.variance.sqrt() - 0.010 / 12f64.sqrt()).abs() < 1e-5);
        let mut quiet = first;
        for i in 1..DELAY_HISTORY {
            quiet = filter.add(f64::from(i as u32), 0.0, 0.010, 0.0, 0.0);
        }
        assert!(quiet.variance < 1e-8, "{}", quiet.variance);
        let delayed = filter.add(100.0, 0.0, 0.030, 0.0, 0.0);
        // 20 ms excess: error within ±10 ms, standard deviation 5.8 ms, a little more
        // as the minimum is uncertain.
        let sd = delayed.variance.sqrt();
        assert!(
            sd > 0.020 / 12f64.sqrt() && sd < 0.021 / 12f64.sqrt(),
            "{sd}"
        );
    }

    #[test]
    fn history_is_bounded_and_best_prefers_short_delay() {
        let mut filter = SourceFilter::default();
        for i in 0..100 {
            let delay = if i == 95 { 0.001 } else { 0.010 };
            filter.add(f64::from(i), 0.0, delay, 0.0, 0.0);
        }
        assert_eq!(filter.len(), HISTORY);
        let (best, bound) = filter.best(100.0).unwrap();
        assert_eq!(best.at, 95.0);
        assert!((bound - (0.0005 + 5.0 * DISPERSION_RATE)).abs() < 1e-12);
    }
}
