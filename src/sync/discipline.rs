//! The discipline: a Kalman filter over the clock's phase and frequency error.
//!
//! Why a Kalman filter: the simulator's clock (and a real quartz oscillator) is a phase
//! that integrates a frequency doing a random walk, measured through noise whose size
//! each sample's delay tells us. For that model the Kalman filter is the optimal
//! estimator, and it says in closed form how much to trust each sample (its variance
//! from [`super::filter`]) and how far ahead the estimate stays good (which sets the
//! poll interval). chrony's regression and ntpd's PLL/FLL each fix one of those by rule
//! of thumb; the simulator's figures in the README compare them.
//!
//! The state is the offset (true time minus ours, seconds) and the rate at which it
//! grows (fraction). When the engine corrects the clock by the estimate it calls
//! [`Kalman::corrected`]: the estimate restarts from zero and only its covariance
//! carries over.
//!
//! The frequency wander (the random walk's strength) is not known in advance, and
//! innovations over short intervals say little about it. So a bank of filters runs side
//! by side, one per decade of wander from a good TCXO to a clock under thermal stress,
//! and the one whose predictions have recently been the most likely steers
//! (multiple-model adaptive estimation). At short poll intervals the candidates differ
//! little, so it matters little which one wins; at long ones the data tell them apart.

/// Wander of the first and last filter of the bank, (s/s)²/s.
const MIN_WANDER: f64 = 1e-20;
const WANDER_DECADES: i32 = 10;
/// How much of the previous log-likelihood carries over at each measurement.
const LIKELIHOOD_MEMORY: f64 = 0.9;

/// The bank of filters: all take every measurement, the most likely one steers.
#[derive(Debug, Clone)]
pub struct Discipline {
    filters: Vec<(Kalman, f64)>,
    best: usize,
}

impl Discipline {
    pub fn new(at: f64, rate_sd: f64) -> Self {
        let filters = (0..WANDER_DECADES)
            .map(|i| (Kalman::new(at, rate_sd, MIN_WANDER * 10f64.powi(i)), 0.0))
            .collect();
        Self { filters, best: 0 }
    }

    fn best(&self) -> Option<&Kalman> {
        self.filters.get(self.best).map(|f| &f.0)
    }

    pub fn innovation(&self, at: f64, offset: f64, variance: f64) -> Innovation {
        self.best().map_or(
            Innovation {
                value: offset,
                sd: f64::INFINITY,
            },
            |k| k.innovation(at, offset, variance),
        )
    }

    pub fn update(&mut self, at: f64, offset: f64, variance: f64) {
        for (kalman, likelihood) in &mut self.filters {
            let innovation = kalman.innovation(at, offset, variance);
            if innovation.sd.is_finite() && innovation.sd > 0.0 {
                let s = innovation.sd * innovation.sd;
                let log = -0.5 * (innovation.value * innovation.value / s + s.ln());
                *likelihood = LIKELIHOOD_MEMORY * *likelihood + log;
            }
            kalman.update(at, offset, variance);
        }
        self.best = self
            .filters
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .map_or(0, |(i, _)| i);
    }

    pub fn estimate(&self, at: f64) -> (f64, f64) {
        self.best().map_or((0.0, 0.0), |k| k.estimate(at))
    }

    /// The clock was corrected by `offset` and `rate` at `at`.
    pub fn corrected(&mut self, at: f64, offset: f64, rate: f64) {
        for (kalman, _) in &mut self.filters {
            kalman.corrected(at, offset, rate);
        }
    }

    pub fn offset_sd(&self, at: f64) -> f64 {
        self.best().map_or(f64::INFINITY, |k| k.offset_sd(at))
    }

    /// Standard deviation of the rate estimate (fraction).
    pub fn rate_sd(&self) -> f64 {
        self.best().map_or(f64::INFINITY, Kalman::rate_sd)
    }

    pub fn poll_interval(&self, min: i8, max: i8, ratio: f64) -> i8 {
        self.best()
            .map_or(min, |k| k.poll_interval(min, max, ratio))
    }

    pub fn reset_offset(&mut self) {
        for (kalman, _) in &mut self.filters {
            kalman.reset_offset();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Kalman {
    /// Estimated (offset, rate), relative to the corrections already applied.
    x: [f64; 2],
    /// Covariance of (offset, rate).
    p: [[f64; 2]; 2],
    /// Frequency wander estimate, (s/s)²/s.
    wander: f64,
    /// When the state was last updated (engine seconds).
    at: f64,
    /// The harmonic mean of recent measurement variances: what one sample is worth.
    typical_variance: f64,
}

/// How far a measurement was from the prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Innovation {
    pub value: f64,
    /// Its predicted standard deviation (infinite for the first measurement).
    pub sd: f64,
}

impl Kalman {
    /// A filter knowing nothing yet about the offset and the frequency to within
    /// `rate_sd` (e.g. 500 ppm without a drift file).
    pub fn new(at: f64, rate_sd: f64, wander: f64) -> Self {
        Self {
            x: [0.0, 0.0],
            p: [[f64::INFINITY, 0.0], [0.0, rate_sd * rate_sd]],
            wander,
            at,
            typical_variance: f64::NAN,
        }
    }

    /// Propagates the covariance to `at`: a random-walk frequency integrated into phase.
    /// Time never goes back: a measurement from before `self.at` is taken as one of the
    /// past (see [`Kalman::update`]).
    fn predict(&mut self, at: f64) {
        if at <= self.at {
            return;
        }
        let dt = at - self.at;
        let [[p00, p01], [p10, p11]] = self.p;
        let q = self.wander;
        self.x[0] += self.x[1] * dt;
        self.p = [
            [
                p00 + dt * (p01 + p10) + dt * dt * p11 + q * dt * dt * dt / 3.0,
                p01 + dt * p11 + q * dt * dt / 2.0,
            ],
            [p10 + dt * p11 + q * dt * dt / 2.0, p11 + q * dt],
        ];
        self.at = at;
    }

    /// The prediction of a measurement at `at`, without taking it.
    pub fn innovation(&self, at: f64, offset: f64, variance: f64) -> Innovation {
        let mut copy = self.clone();
        copy.predict(at);
        let (h, ph) = copy.measurement(at);
        Innovation {
            value: offset - (copy.x[0] + h * copy.x[1]),
            sd: (ph[0] + h * ph[1] + variance).sqrt(),
        }
    }

    /// How a measurement at `at` sees the state (after [`Self::predict`]): the offset
    /// then is `x0 + h·x1`, `h` zero unless `at` is in the past (an interleaved exchange
    /// measures the one a poll before); and `P·Hᵀ` for that `H = [1, h]`.
    fn measurement(&self, at: f64) -> (f64, [f64; 2]) {
        let h = (at - self.at).min(0.0);
        let [[p00, p01], [p10, p11]] = self.p;
        (h, [p00 + h * p01, p10 + h * p11])
    }

    /// Takes a measurement `offset` (true minus ours, on the clock as corrected so
    /// far) of variance `variance` at time `at`.
    pub fn update(&mut self, at: f64, offset: f64, variance: f64) {
        self.predict(at);
        let [[p00, p01], [_, p11]] = self.p;
        if !p00.is_finite() {
            // The first measurement: the offset is what it says.
            self.x[0] = offset;
            self.p = [[variance, 0.0], [0.0, p11]];
            self.typical_variance = variance;
            return;
        }
        let (h, ph) = self.measurement(at);
        let nu = offset - (self.x[0] + h * self.x[1]);
        let s = ph[0] + h * ph[1] + variance;
        let (k0, k1) = (ph[0] / s, ph[1] / s);
        self.x[0] += k0 * nu;
        self.x[1] += k1 * nu;
        // P − K·H·P (H·P is P·Hᵀ transposed, P being symmetric); kept symmetric, with a
        // non-negative diagonal, whatever rounding does.
        let cross = p01 - k0 * ph[1];
        self.p = [
            [(p00 - k0 * ph[0]).max(0.0), cross],
            [cross, (p11 - k1 * ph[1]).max(0.0)],
        ];
        self.typical_variance = if self.typical_variance.is_finite() {
            1.0 / (0.9 / self.typical_variance + 0.1 / variance)
        } else {
            variance
        };
    }

    /// The estimated (offset, rate) at `at`.
    pub fn estimate(&self, at: f64) -> (f64, f64) {
        let dt = (at - self.at).max(0.0);
        (self.x[0] + self.x[1] * dt, self.x[1])
    }

    /// The clock was corrected by `offset` and `rate` at `at`.
    pub fn corrected(&mut self, at: f64, offset: f64, rate: f64) {
        self.predict(at);
        self.x[0] -= offset;
        self.x[1] -= rate;
    }

    /// Standard deviation of the offset estimate now.
    pub fn offset_sd(&self, at: f64) -> f64 {
        let mut copy = self.clone();
        copy.predict(at);
        copy.p[0][0].sqrt()
    }

    pub fn rate_sd(&self) -> f64 {
        self.p[1][1].sqrt()
    }

    /// The longest interval (log2 seconds, within the bounds) over which the clock's
    /// unpredictable drift stays below `ratio` times what one sample can resolve.
    pub fn poll_interval(&self, min: i8, max: i8, ratio: f64) -> i8 {
        if !self.typical_variance.is_finite() {
            return min;
        }
        let budget = ratio * self.typical_variance;
        let mut poll = min;
        while poll < max {
            let tau = 2f64.powi(i32::from(poll) + 1);
            let growth = self.wander * tau * tau * tau / 3.0 + self.p[1][1] * tau * tau;
            if growth > budget {
                break;
            }
            poll += 1;
        }
        poll
    }

    /// Forgets the offset (after a step, or when the clock was moved by others).
    pub fn reset_offset(&mut self) {
        self.x[0] = 0.0;
        self.p[0][0] = f64::INFINITY;
        self.p[0][1] = 0.0;
        self.p[1][0] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock 100 ppm slow measured without noise: two samples give the frequency.
    #[test]
    fn learns_frequency_from_two_samples() {
        let mut k = Kalman::new(0.0, 500e-6, 1e-18);
        k.update(0.0, 0.01, 1e-12);
        assert!((k.estimate(0.0).0 - 0.01).abs() < 1e-9);
        k.corrected(0.0, 0.01, 0.0);
        // Corrected to zero; 64 s later the offset has grown by 6.4 ms.
        k.update(64.0, 0.0064, 1e-12);
        let (offset, rate) = k.estimate(64.0);
        assert!((rate - 100e-6).abs() < 1e-7, "{rate}");
        assert!((offset - 0.0064).abs() < 1e-6);
        // Uncorrected, the estimate keeps growing at that rate.
        assert!((k.estimate(128.0).0 - 0.0128).abs() < 1e-6);
    }

    #[test]
    fn noisy_sample_moves_the_estimate_less() {
        let mut a = Kalman::new(0.0, 1e-6, 1e-18);
        let mut b = a.clone();
        a.update(0.0, 0.0, 1e-10);
        b.update(0.0, 0.0, 1e-10);
        a.update(64.0, 1e-3, 1e-10);
        b.update(64.0, 1e-3, 1e-4);
        assert!(b.estimate(64.0).0.abs() < a.estimate(64.0).0.abs() / 100.0);
    }

    #[test]
    fn poll_interval_shrinks_with_wander() {
        let mut k = Kalman::new(0.0, 1e-9, 1e-18);
        k.update(0.0, 0.0, 1e-9);
        k.wander = 1e-18;
        let calm = k.poll_interval(4, 12, 1.0);
        k.wander = 1e-13;
        let wandering = k.poll_interval(4, 12, 1.0);
        assert!(calm > wandering, "{calm} {wandering}");
    }
}
