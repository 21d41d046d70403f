//! What one poll interval's samples of a reference clock come to, as chrony's refclock
//! filter does: a device reads many times a poll (once a second for gpsd), and one
//! combined sample per poll goes on to the sync engine. The samples farthest from the
//! median are dropped (a reading delayed by a busy system, a serial line glitch), and
//! the rest averaged; the spread of those that remain says how far to trust the
//! result.

use crate::wire::Leap;

/// Samples kept per poll interval at most (chrony's default filter length); older
/// ones make room for newer.
pub const MAX_SAMPLES: usize = 64;
/// The fraction of samples kept, those nearest the median.
const KEPT_FRACTION: f64 = 0.6;

/// One sample as the filter takes it: offset already made comparable across the
/// interval (see `crate::coordinator`), with its own error bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterInput {
    pub offset: f64,
    pub dispersion: f64,
    pub leap: Leap,
}

/// The interval's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    pub offset: f64,
    /// The kept samples' standard deviation plus their mean error bound.
    pub dispersion: f64,
    /// The standard error of `offset` (the kept samples' standard deviation over the
    /// square root of their number): how much the result itself is expected to wander.
    pub error: f64,
    /// The leap of the newest sample (an announcement, not a measurement to filter).
    pub leap: Leap,
    /// How many samples went in, and how many were kept.
    pub samples: usize,
    pub kept: usize,
}

/// Combines an interval's samples (oldest first); `None` without any.
pub fn combine(samples: &[FilterInput]) -> Option<Combined> {
    let finite: Vec<FilterInput> = samples
        .iter()
        .copied()
        .filter(|s| s.offset.is_finite() && s.dispersion.is_finite())
        .collect();
    let mut offsets: Vec<f64> = finite.iter().map(|s| s.offset).collect();
    offsets.sort_by(f64::total_cmp);
    let median = match offsets.len() {
        0 => return None,
        n if n % 2 == 1 => *offsets.get(n / 2)?,
        n => (*offsets.get(n / 2 - 1)? + *offsets.get(n / 2)?) / 2.0,
    };
    let keep = ((finite.len() as f64 * KEPT_FRACTION).ceil() as usize).clamp(1, finite.len());
    // Nearest the median first; ties keep their order (stable sort), newest last.
    let mut by_distance: Vec<(usize, f64)> = finite
        .iter()
        .enumerate()
        .map(|(i, s)| (i, (s.offset - median).abs()))
        .collect();
    by_distance.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut kept: Vec<usize> = by_distance.iter().take(keep).map(|(i, _)| *i).collect();
    kept.sort_unstable();
    let kept: Vec<FilterInput> = kept
        .iter()
        .filter_map(|&i| finite.get(i))
        .copied()
        .collect();
    let n = kept.len() as f64;
    let mean = kept.iter().map(|s| s.offset).sum::<f64>() / n;
    let variance = kept.iter().map(|s| (s.offset - mean).powi(2)).sum::<f64>() / n;
    let bound = kept.iter().map(|s| s.dispersion).sum::<f64>() / n;
    Some(Combined {
        offset: mean,
        dispersion: variance.sqrt() + bound,
        error: spread(&offsets, median) / n.sqrt(),
        leap: finite.last()?.leap,
        samples: samples.len(),
        kept: kept.len(),
    })
}

/// The readings' standard deviation, estimated robustly from all of them (1.4826 times
/// the median absolute deviation from the median, which is the standard deviation for
/// normal noise): the kept ones' own spread would understate it by half, as only the
/// middle 60 % are kept.
fn spread(sorted: &[f64], median: f64) -> f64 {
    let mut deviations: Vec<f64> = sorted.iter().map(|o| (o - median).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let n = deviations.len();
    let mad = match n {
        0 => return 0.0,
        n if n % 2 == 1 => deviations.get(n / 2).copied().unwrap_or(0.0),
        n => {
            let low = deviations.get(n / 2 - 1).copied().unwrap_or(0.0);
            let high = deviations.get(n / 2).copied().unwrap_or(0.0);
            (low + high) / 2.0
        }
    };
    1.4826 * mad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(offset: f64) -> FilterInput {
        FilterInput {
            offset,
            dispersion: 1e-6,
            leap: Leap::NoWarning,
        }
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert_eq!(combine(&[]), None);
        assert_eq!(combine(&[input(f64::NAN)]), None);
    }

    #[test]
    fn one_sample_is_itself() {
        let c = combine(&[input(0.25)]).unwrap();
        assert_eq!((c.offset, c.kept, c.samples), (0.25, 1, 1));
        assert!((c.dispersion - 1e-6).abs() < 1e-15);
    }

    /// Outliers are dropped: 16 samples within ±2 µs of 10 µs, and 4 far off.
    #[test]
    fn outliers_do_not_move_the_result() {
        let mut samples: Vec<FilterInput> = (0..16)
            .map(|i| input(10e-6 + f64::from(i % 5 - 2) * 1e-6))
            .collect();
        samples.extend([input(0.5), input(-0.3), input(1e-3), input(0.2)]);
        let c = combine(&samples).unwrap();
        assert_eq!((c.samples, c.kept), (20, 12));
        assert!((c.offset - 10e-6).abs() < 1.5e-6, "{c:?}");
        assert!(c.dispersion < 5e-6, "{c:?}");
    }

    /// The spread of what is kept widens the bound.
    /// Readings 0.1 ms either side of the truth: the result's standard error is
    /// judged from all of them (1.4826 × 0.1 ms), over the square root of the 10 kept,
    /// not from the kept ones' own (smaller) spread.
    #[test]
    fn the_error_is_judged_from_every_reading() {
        let samples: Vec<FilterInput> = (0..16)
            .map(|i| input(if i % 2 == 0 { 1e-4 } else { -1e-4 }))
            .collect();
        let c = combine(&samples).unwrap();
        assert_eq!(c.kept, 10);
        let expected = 1.4826e-4 / 10f64.sqrt();
        assert!((c.error - expected).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn spread_adds_to_dispersion() {
        let tight = combine(&[input(0.0), input(1e-6), input(2e-6)]).unwrap();
        let loose = combine(&[input(0.0), input(1e-4), input(2e-4)]).unwrap();
        assert!(
            loose.dispersion > tight.dispersion + 4e-5,
            "{tight:?} {loose:?}"
        );
    }

    #[test]
    fn leap_is_the_newest_samples() {
        let mut samples = vec![input(0.0), input(0.0)];
        samples.push(FilterInput {
            leap: Leap::AddSecond,
            ..input(0.0)
        });
        assert_eq!(combine(&samples).unwrap().leap, Leap::AddSecond);
    }
}
