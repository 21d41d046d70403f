//! From samples to clock commands. Deterministic and sans-IO: time comes in as
//! arguments (the engine's own monotonic seconds), commands go out through
//! [`SyncEngine::poll_command`].
//!
//! * [`filter`]: each source's history and how noisy each sample is.
//! * [`select`]: which sources agree (intersection, majority, falsetickers out).
//! * [`discipline`]: the Kalman filter that turns agreeing samples into corrections.
//! * [`leap_file`]: the IERS/NIST `leap-seconds.list`, and when it announces a leap.
//!
//! Policy lives here too: a sample that is unusable (ADVERSARIAL 19), unauthenticated
//! where authentication is required, or beyond the panic threshold never reaches the
//! discipline; the clock is stepped only at start-up (unless configured otherwise) and
//! only when a majority of *configured* sources agree (ADVERSARIAL 24), so an attacker
//! who silences the others cannot step it through one.

pub mod discipline;
pub mod filter;
pub mod leap_file;
pub mod select;

use std::collections::VecDeque;

use crate::clock::ClockCommand;
use crate::proto::client::{Authenticated, Sample};
use crate::proto::server::SyncState;
use crate::wire::{Leap, NtpTimestamp, ReferenceId};
use discipline::Discipline;
use filter::{DISPERSION_RATE, FilteredSample, SourceFilter};
use select::{Candidate, select};

/// How the local clock passes a leap second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeapMode {
    /// The kernel inserts or deletes the second at midnight (told in advance).
    #[default]
    Kernel,
    /// The kernel is never told; after midnight the second is slewed away.
    Slew,
}

/// When the clock may be stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepPolicy {
    /// Only the first correction after start-up (the default).
    Startup,
    /// Whenever the offset exceeds the step threshold.
    Always,
    /// Never: large offsets are slewed away.
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Sources that must agree before the clock is steered.
    pub min_sources: usize,
    /// Offsets beyond this (seconds) are stepped when the policy allows.
    pub step_threshold: f64,
    pub steps: StepPolicy,
    /// Offsets beyond this (seconds) are never acted on, and steps may never add up
    /// to more than it.
    pub panic_threshold: f64,
    /// Largest frequency correction, ppm.
    pub max_frequency_ppm: f64,
    /// The frequency correction saved by a previous run (drift file), ppm.
    pub initial_frequency_ppm: Option<f64>,
    /// Bounds on the poll interval the engine suggests (log2 seconds).
    pub min_poll: i8,
    pub max_poll: i8,
    /// `[local] orphan`: sources at this stratum serve a local clock, not real time;
    /// they are used only when nothing else is and their id is below ours (RFC 5905
    /// orphan mode, chrony's `local orphan`), so a site follows one of its servers.
    pub orphan_stratum: Option<u8>,
    pub leap_mode: LeapMode,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            min_sources: 1,
            step_threshold: 0.128,
            steps: StepPolicy::Startup,
            panic_threshold: 1000.0,
            max_frequency_ppm: 500.0,
            initial_frequency_ppm: None,
            min_poll: 6,
            max_poll: 10,
            orphan_stratum: None,
            leap_mode: LeapMode::Kernel,
        }
    }
}

/// Samples a source needs before it can be selected.
const MIN_SAMPLES: usize = 2;
/// Poll growth budget: the unpredictable drift over one interval may reach this many
/// times what a typical sample resolves (tuned under clknetsim: 0.5 keeps the mean
/// interval near chronyd's and halves the steady RMS of 1.0 in defaults).
const POLL_RATIO: f64 = 0.5;
/// How long a slew takes, as chrony's `corrtimeratio`: an offset as large as its
/// standard deviation is removed over 1.5 update intervals, a larger one faster (the
/// time shrinks as the offset grows), so a precise estimate is acted on at once and a
/// noisy one gently, which keeps the frequency error small.
const CORRECTION_TIME_RATIO: f64 = 3.0;
/// The longest slew, seconds (a bound the clock process's link also keeps).
const MAX_SLEW_DURATION: f64 = 1e6;

/// How long to take over slewing `offset`, whose estimate has standard deviation
/// `sd`, with `interval` seconds between updates: at most as fast as the clock may
/// slew ([`crate::clock::MAX_SLEW_RATE`], which its policy holds it to).
fn slew_duration(offset: f64, sd: f64, interval: f64) -> f64 {
    let fastest = offset.abs() / crate::clock::MAX_SLEW_RATE;
    let chosen = CORRECTION_TIME_RATIO * 0.5 * sd * interval / offset.abs();
    // An unknown sd (infinite, or 0/0) falls to the fastest allowed.
    let chosen = if chosen.is_finite() { chosen } else { 0.0 };
    chosen.max(fastest).min(MAX_SLEW_DURATION)
}
/// A sample this many standard deviations from the prediction is held back...
const OUTLIER_SD: f64 = 6.0;
/// ...unless this many in a row say the same: then the clock really has moved.
const OUTLIER_RUN: u32 = 3;
/// How much tighter (seconds of root distance) another agreeing source must be before
/// it replaces the reference: chrony's `reselectdist` default.
pub const RESELECT_DISTANCE: f64 = 100e-6;

/// Seconds after start during which the first correction waits for a majority of all
/// configured sources.
const STARTUP_GRACE: f64 = 300.0;
/// Maximum poll intervals without an update before the clock counts as
/// unsynchronized.
pub const HOLDOVER_POLLS: f64 = 16.0;
/// Frequency uncertainty with a drift file, fraction.
const DRIFT_FILE_SD: f64 = 5e-6;

/// How well the frequency is known before any measurement, as a fraction.
fn initial_rate_sd(config: &SyncConfig) -> f64 {
    match config.initial_frequency_ppm {
        Some(_) => DRIFT_FILE_SD,
        None => config.max_frequency_ppm * 1e-6,
    }
}

/// Handle for a source registered with the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(usize);

/// Why the engine did not use a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("unusable: {0}")]
    Unusable(&'static str),
    #[error("not authenticated")]
    NotAuthenticated,
    #[error("beyond the panic threshold")]
    BeyondPanicThreshold,
    #[error("not a finite number")]
    NotFinite,
    #[error("unknown source")]
    UnknownSource,
    #[error("synchronized to us (its reference id is our address)")]
    SynchronizedToUs,
}

/// What the engine knows about one source.
#[derive(Debug, Clone)]
struct SourceEntry {
    name: String,
    /// The reference id we announce when this source is our reference.
    reference_id: ReferenceId,
    requires_authentication: bool,
    /// A peer: it may join a majority, but neither its silence nor its being
    /// unsynchronized holds up the start (two sites starting together would wait for
    /// each other).
    backup: bool,
    /// A reference clock: its samples are stratum 0 (the device is the reference).
    reference_clock: bool,
    filter: SourceFilter,
    last: Option<Sample>,
    reachable: bool,
    selected: bool,
    outliers: u32,
    /// What the last selection made of it.
    verdict: Verdict,
    /// Why its last sample was not used, until one is.
    ignored: Option<Ignored>,
    /// How much each sample is expected to wander beyond what its delay says (s): a
    /// reference clock's combined sample has no delay to judge it by.
    noise: f64,
    /// Our own reference id as this source sees us (our address on its path): a
    /// source announcing it is synchronized to us, and in orphan mode the lower id wins.
    own_id: Option<ReferenceId>,
}

/// What a selection made of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not a candidate (unreachable or no sample), or no selection has run yet.
    None,
    /// Fewer agreed than selection needs: nobody is chosen.
    NoMajority,
    Truechimer,
    Falseticker,
}

/// A source's part in synchronization, for reports (`ntimed ctl sources`, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Steers the clock.
    Reference,
    /// Agrees with the majority and may become the reference.
    Selectable,
    /// Disagrees with the majority (see `why`).
    Falseticker,
    /// Not heard from (or not usable by its protocol: stopped by a kiss, no keys).
    Unreachable,
    /// Heard from, but not used (see `why`).
    Refused,
}

impl SourceState {
    pub const ALL: [Self; 5] = [
        Self::Reference,
        Self::Selectable,
        Self::Falseticker,
        Self::Unreachable,
        Self::Refused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Selectable => "selectable",
            Self::Falseticker => "falseticker",
            Self::Unreachable => "unreachable",
            Self::Refused => "refused",
        }
    }
}

/// A source's state for reports (`ntimed run` logs, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReport {
    pub name: String,
    pub samples: usize,
    pub reachable: bool,
    pub selected: bool,
    /// Offset of its best sample now, and that sample's error bound.
    pub offset: Option<f64>,
    pub bound: Option<f64>,
    /// The round-trip delay of its last sample used, seconds.
    pub delay: Option<f64>,
    pub state: SourceState,
    /// A few words on why, for `Refused` and `Falseticker`.
    pub why: Option<String>,
}

/// The engine: sources in, clock commands out.
#[derive(Debug)]
pub struct SyncEngine {
    config: SyncConfig,
    sources: Vec<SourceEntry>,
    kalman: Discipline,
    commands: VecDeque<ClockCommand>,
    /// Sum of all offsets commanded (steps and slews); samples are stored relative to it
    /// so that they stay comparable across corrections.
    corrected_total: f64,
    stepped_total: f64,
    frequency_ppm: f64,
    synchronized: bool,
    /// Whether the clock was ever synchronized (a start-up step happens only before).
    ever_synchronized: bool,
    /// The slew the clock still had to apply when the current sample arrived.
    pending_slew: f64,
    last_update: Option<f64>,
    created: f64,
    /// The leap indicator the selected sources agree on (served to our clients).
    leap: Leap,
    /// What a usable `[leap] file` says now (it decides over the sources); `None`
    /// without one.
    file_leap: Option<Leap>,
    /// What most agreeing sources announced at the last update.
    voted_leap: Leap,
    /// Whether the sources' vote may be believed now (June or December).
    leap_month: bool,
    /// What the clock was last told about leap seconds (`None`: it refused, ask again).
    clock_leap: Option<Leap>,
    poll: i8,
    /// The source our time comes from (the best of the agreeing ones).
    reference: Option<usize>,
    /// When a slew cut to what one slew may carry ends, and the rest is due.
    slew_rest_at: Option<f64>,
}

impl SyncEngine {
    pub fn new(mut config: SyncConfig, now: f64) -> Self {
        let limit = config.max_frequency_ppm;
        if !(limit.is_finite() && limit > 0.0) {
            config.max_frequency_ppm = SyncConfig::default().max_frequency_ppm;
        }
        let frequency_ppm = config
            .initial_frequency_ppm
            .filter(|ppm| ppm.is_finite())
            .map_or(0.0, |ppm| {
                ppm.clamp(-config.max_frequency_ppm, config.max_frequency_ppm)
            });
        let rate_sd = initial_rate_sd(&config);
        let mut commands = VecDeque::new();
        commands.push_back(ClockCommand::SetFrequency { ppm: frequency_ppm });
        commands.push_back(ClockCommand::SetStatus {
            synchronized: false,
            estimated_error: 16.0,
            max_error: 16.0,
        });
        Self {
            poll: config.min_poll,
            config,
            sources: Vec::new(),
            kalman: Discipline::new(now, rate_sd),
            commands,
            corrected_total: 0.0,
            stepped_total: 0.0,
            frequency_ppm,
            synchronized: false,
            ever_synchronized: false,
            pending_slew: 0.0,
            last_update: None,
            created: now,
            leap: Leap::NoWarning,
            file_leap: None,
            voted_leap: Leap::NoWarning,
            leap_month: true,
            clock_leap: Some(Leap::NoWarning),
            reference: None,
            slew_rest_at: None,
        }
    }

    /// Registers a source; `reference_id` is what we announce downstream when it is our
    /// reference (its IPv4 address, or a hash of its IPv6 address).
    pub fn add_source(
        &mut self,
        name: impl Into<String>,
        reference_id: ReferenceId,
        requires_authentication: bool,
    ) -> SourceId {
        self.sources.push(SourceEntry {
            name: name.into(),
            reference_id,
            requires_authentication,
            backup: false,
            reference_clock: false,
            filter: SourceFilter::default(),
            last: None,
            reachable: false,
            selected: false,
            outliers: 0,
            verdict: Verdict::None,
            ignored: None,
            noise: 0.0,
            own_id: None,
        });
        SourceId(self.sources.len() - 1)
    }

    /// Registers a peer: a source that does not count towards the majority start-up
    /// waits for (it can still be part of one).
    pub fn add_peer(
        &mut self,
        name: impl Into<String>,
        reference_id: ReferenceId,
        requires_authentication: bool,
    ) -> SourceId {
        let id = self.add_source(name, reference_id, requires_authentication);
        if let Some(source) = self.sources.get_mut(id.0) {
            source.backup = true;
        }
        id
    }

    /// Registers a reference clock: its samples come at stratum 0 (so we serve at
    /// stratum 1), its reference id is the configured one, and its trust is the
    /// configuration's (it carries no authentication to check).
    pub fn add_reference_clock(
        &mut self,
        name: impl Into<String>,
        reference_id: ReferenceId,
    ) -> SourceId {
        let id = self.add_source(name, reference_id, false);
        if let Some(source) = self.sources.get_mut(id.0) {
            source.reference_clock = true;
        }
        id
    }

    /// Changes what we announce when `id` is our reference (NTS learns the address late).
    pub fn set_reference_id(&mut self, id: SourceId, reference_id: ReferenceId) {
        if let Some(source) = self.sources.get_mut(id.0) {
            source.reference_id = reference_id;
        }
    }

    /// The standard error of the samples source `id` gives next (a reference clock's
    /// spread of readings), which weighs them against the others and the prediction.
    pub fn set_measurement_noise(&mut self, id: SourceId, sd: f64) {
        if let Some(source) = self.sources.get_mut(id.0) {
            source.noise = if sd.is_finite() { sd.max(0.0) } else { 0.0 };
        }
    }

    /// Our reference id as source `id` sees us (the address it is reached from).
    pub fn set_own_reference_id(&mut self, id: SourceId, ours: ReferenceId) {
        if let Some(source) = self.sources.get_mut(id.0) {
            source.own_id = Some(ours);
        }
    }

    /// Marks a source unreachable (or reachable again); an unreachable source is not a
    /// candidate for selection.
    pub fn handle_reachability(&mut self, id: SourceId, reachable: bool) {
        if let Some(source) = self.sources.get_mut(id.0) {
            source.reachable = reachable;
            if !reachable {
                source.selected = false;
            }
        }
    }

    /// What a usable `[leap] file` says now: `AddSecond`/`DeleteSecond` during the day
    /// before a leap, else `NoWarning`; `None` without a file (or with an expired one).
    /// A file decides over the sources' vote, at once: once synchronized, a change is
    /// announced and told to the clock without waiting for the next update (which may
    /// be hours away at a long poll).
    pub fn set_file_leap(&mut self, leap: Option<Leap>) {
        let leap = leap.map(|l| match l {
            Leap::AddSecond | Leap::DeleteSecond => l,
            Leap::NoWarning | Leap::Unsynchronized => Leap::NoWarning,
        });
        if leap == self.file_leap {
            return;
        }
        self.file_leap = leap;
        if self.last_update.is_some() {
            self.announce_leap();
        }
    }

    /// Whether it is June or December now (UTC): outside them a leap second the
    /// sources announce is for a date that cannot have one, and is not passed on.
    pub fn set_leap_month(&mut self, leap_month: bool) {
        if leap_month != self.leap_month {
            self.leap_month = leap_month;
            if self.last_update.is_some() {
                self.announce_leap();
            }
        }
    }

    /// The leap to announce, from the file if there is one, else from the vote (in
    /// June and December only); the clock is told of a change.
    fn announce_leap(&mut self) {
        let voted = match self.leap_month {
            true => self.voted_leap,
            false => Leap::NoWarning,
        };
        let leap = self.file_leap.unwrap_or(voted);
        self.leap = leap;
        // In slew mode the kernel never hears of it: `handle_leap` does the work.
        let for_clock = match self.config.leap_mode {
            LeapMode::Kernel => leap,
            LeapMode::Slew => Leap::NoWarning,
        };
        if Some(for_clock) != self.clock_leap {
            self.clock_leap = Some(for_clock);
            self.commands.push_back(ClockCommand::SetLeap(for_clock));
        }
    }

    /// The leap second announced is now (UTC midnight has just passed): the
    /// announcement ends (the kernel, in kernel mode, has already inserted or deleted
    /// it); in slew mode UTC has just moved by a second against the clock, which the
    /// engine's books take in at once and a slew starts to remove.
    pub fn handle_leap(&mut self, leap: Leap, now: f64) {
        let shift = match leap {
            Leap::AddSecond => 1.0,
            Leap::DeleteSecond => -1.0,
            Leap::NoWarning | Leap::Unsynchronized => return,
        };
        self.voted_leap = Leap::NoWarning;
        for source in &mut self.sources {
            if let Some(last) = &mut source.last {
                last.leap = Leap::NoWarning;
            }
        }
        self.announce_leap();
        if self.config.leap_mode == LeapMode::Slew && self.synchronized {
            // As if the clock had been moved by `shift`: every stored sample stays
            // comparable, and the estimate now says the clock is a second off.
            self.corrected_total += shift;
            self.kalman.corrected(now, shift, 0.0);
            self.continue_slew(now, false);
        }
    }

    /// Everything commanded so far (steps and slews), seconds: a caller holding a
    /// measurement from before the latest corrections takes them out of it.
    pub fn corrections(&self) -> f64 {
        self.corrected_total
    }

    /// The leap second announced now (to clients, and in kernel mode to the clock).
    pub fn announced_leap(&self) -> Leap {
        self.leap
    }

    /// Slews what the estimate says is left, once the slew before it is done.
    /// `finished`: the slew before it has run its course (nothing of it is pending).
    fn continue_slew(&mut self, now: f64, finished: bool) {
        if finished {
            self.pending_slew = 0.0;
        }
        self.slew_rest_at = None;
        let (offset, _) = self.kalman.estimate(now);
        if offset.is_finite() {
            self.correct(offset, 0.0, false, now);
        }
    }

    /// Takes a sample from source `id` that arrived at `now`, while the clock still had
    /// `pending_slew` seconds of an earlier correction to apply.
    pub fn handle_sample(
        &mut self,
        id: SourceId,
        sample: &Sample,
        now: f64,
        pending_slew: f64,
    ) -> Result<(), Ignored> {
        self.handle_sample_of(id, sample, now, now, pending_slew)
    }

    /// [`Self::handle_sample`] for a sample that measures the clock as it was at
    /// `measured_at`, before `now` (an interleaved exchange completed a poll later),
    /// with the corrections made since already taken out of its offset.
    pub fn handle_sample_of(
        &mut self,
        id: SourceId,
        sample: &Sample,
        measured_at: f64,
        now: f64,
        pending_slew: f64,
    ) -> Result<(), Ignored> {
        let result = self.take_sample(id, sample, measured_at.min(now), now, pending_slew);
        if let Some(source) = self.sources.get_mut(id.0) {
            source.ignored = result.err();
        }
        result
    }

    fn take_sample(
        &mut self,
        id: SourceId,
        sample: &Sample,
        measured_at: f64,
        now: f64,
        pending_slew: f64,
    ) -> Result<(), Ignored> {
        let panic_threshold = self.config.panic_threshold;
        let source = self.sources.get_mut(id.0).ok_or(Ignored::UnknownSource)?;
        // Stratum 0 is a server's "unspecified", but a reference clock's very stratum;
        // everything else (leap 3, root distance) is checked as for a server.
        let checked = match source.reference_clock && sample.stratum == 0 {
            true => Sample {
                stratum: 1,
                ..*sample
            },
            false => *sample,
        };
        if let Some(reason) = checked.unusable_reason() {
            return Err(Ignored::Unusable(reason));
        }
        if source.requires_authentication && sample.authenticated == Authenticated::No {
            return Err(Ignored::NotAuthenticated);
        }
        // Following a source that follows us would only add each other's errors.
        // Its earlier samples go too: they may be from before it followed us. ntpd's
        // orphan and local clocks announce 127.0.0.1, which names no address.
        if source.own_id == Some(sample.reference_id)
            && sample.reference_id != ReferenceId([127, 0, 0, 1])
            && sample.stratum > 1
        {
            source.filter = SourceFilter::default();
            source.last = Some(*sample);
            return Err(Ignored::SynchronizedToUs);
        }
        let numbers = [sample.offset, sample.delay, pending_slew, now];
        if !numbers.iter().all(|n| n.is_finite()) {
            return Err(Ignored::NotFinite);
        }
        let precision = 2f64.powi(i32::from(sample.precision.clamp(-30, 0)));
        // A round trip shorter than nothing: the server's timestamps are wrong.
        if sample.delay < -2.0 * precision {
            return Err(Ignored::Unusable("negative round-trip delay"));
        }
        // The clock will still move by the pending slew: count it as done.
        let offset = sample.offset - pending_slew;
        if offset.abs() > panic_threshold {
            return Err(Ignored::BeyondPanicThreshold);
        }
        let server_distance = sample.root_delay / 2.0 + sample.root_dispersion + precision;
        let filtered = source.filter.add(
            measured_at,
            offset + self.corrected_total,
            sample.delay.max(precision),
            server_distance,
            precision + source.noise,
        );
        self.pending_slew = pending_slew;
        source.last = Some(*sample);
        source.reachable = true;

        let Some(truechimers) = self.select(now) else {
            return Ok(());
        };
        let usable = |i: &usize| {
            self.sources
                .get(*i)
                .is_some_and(|s| s.filter.len() >= MIN_SAMPLES)
        };
        let truechimers: Vec<usize> = truechimers.into_iter().filter(usable).collect();
        // At start, wait for a majority of all configured sources to agree, so that the
        // first (and largest) correction cannot come from a minority that happened to
        // answer first; after a grace period, settle for the sources that answer.
        // Peers are backups: the majority is of the configured sources, counting only
        // sources, so that neither an unsynchronized peer holds up the start nor a bad
        // peer helps a bad source to one; with nothing but peers, of the peers.
        let sources = self.sources.iter().filter(|s| !s.backup).count();
        let majority = if sources > 0 {
            let agreeing = truechimers
                .iter()
                .filter(|&&i| self.sources.get(i).is_some_and(|s| !s.backup))
                .count();
            2 * agreeing > sources
        } else {
            2 * truechimers.len() > self.sources.len()
        };
        if !self.synchronized && !majority && now - self.created < STARTUP_GRACE {
            return Ok(());
        }
        for &i in &truechimers {
            if let Some(source) = self.sources.get_mut(i) {
                source.selected = true;
            }
        }
        self.choose_reference(&truechimers, now);
        // Only the reference steers: sources differ by their paths' asymmetries, and
        // mixing them would turn those biases into apparent frequency changes.
        if self.reference != Some(id.0) {
            return Ok(());
        }
        if self.synchronized {
            self.track(id.0, &filtered, now, majority);
        } else {
            self.start(id.0, majority, now);
        }
        self.after_update(&truechimers, now);
        Ok(())
    }

    /// Takes the agreeing source with the tightest bound (its root distance: half its
    /// delay plus its server's distance, grown with age), sources before peers, so a
    /// long or asymmetric path never steers while a tight one agrees with it. The
    /// current reference is kept while it agrees and is within [`RESELECT_DISTANCE`] of
    /// the best (switching costs a jump by the difference of two paths' biases, so not
    /// for noise), and is not a peer standing in for a source that agrees again: a site
    /// that followed its peer returns to its own upstream as soon as that agrees.
    fn choose_reference(&mut self, truechimers: &[usize], now: f64) {
        let backup = |i: usize| self.sources.get(i).is_none_or(|s| s.backup);
        let bound = |i: usize| Some(self.sources.get(i)?.filter.best(now)?.1);
        let best = truechimers
            .iter()
            .copied()
            .filter_map(|i| Some((i, backup(i), bound(i)?)))
            .min_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
        if let Some(current) = self.reference
            && truechimers.contains(&current)
            && (!backup(current) || best.is_none_or(|(_, b, _)| b))
            && best.is_none_or(|(_, b, tightest)| {
                b != backup(current)
                    || bound(current).is_some_and(|c| c <= tightest + RESELECT_DISTANCE)
            })
        {
            return;
        }
        self.reference = best.map(|(i, _, _)| i);
    }

    /// Runs selection over the reachable sources; returns the truechimers (and clears
    /// every source's mark: `handle_sample` sets them on the sources it uses).
    fn select(&mut self, now: f64) -> Option<Vec<usize>> {
        let mut indices = Vec::new();
        let mut candidates = Vec::new();
        // Samples of different ages are compared at `now`: each moves by the estimated
        // rate, and its bound grows by how uncertain that rate is.
        let (_, rate) = self.kalman.estimate(now);
        let rate_sd = self.kalman.rate_sd();
        let orphans_only = self
            .sources
            .iter()
            .all(|s| !self.counts(s) || self.is_orphan(s));
        for (i, source) in self.sources.iter().enumerate() {
            // Every source heard from counts towards the majority, even before it has
            // enough samples to be used itself.
            if !self.counts(source) {
                continue;
            }
            if self.is_orphan(source) && !(orphans_only && self.orphan_outranks_us(source)) {
                continue;
            }
            if let Some((best, bound)) = source.filter.best(now) {
                let age = (now - best.at).max(0.0);
                indices.push(i);
                candidates.push(Candidate {
                    offset: best.normalized_offset - self.corrected_total + rate * age,
                    bound: bound + rate_sd * age,
                });
            }
        }
        let selection = select(&candidates, self.config.min_sources);
        for source in &mut self.sources {
            source.selected = false;
            source.verdict = Verdict::None;
        }
        let truechimers: Option<Vec<usize>> = selection.map(|s| {
            s.truechimers
                .iter()
                .filter_map(|&i| indices.get(i).copied())
                .collect()
        });
        for &i in &indices {
            if let Some(source) = self.sources.get_mut(i) {
                source.verdict = match &truechimers {
                    None => Verdict::NoMajority,
                    Some(t) if t.contains(&i) => Verdict::Truechimer,
                    Some(_) => Verdict::Falseticker,
                };
            }
        }
        truechimers
    }

    /// Whether a source is heard from and has a sample to select with.
    fn counts(&self, source: &SourceEntry) -> bool {
        source.reachable && !source.filter.is_empty()
    }

    /// In orphan mode, a source serving its local clock at the orphan stratum.
    /// At the orphan stratum or below it (a site server following another site
    /// server is no more real time than the one it follows), as ntpd and chrony count
    /// it: a site then only ever follows lower ids, which cannot loop.
    fn is_orphan(&self, source: &SourceEntry) -> bool {
        match (self.config.orphan_stratum, source.last) {
            (Some(orphan), Some(last)) => last.stratum >= orphan,
            _ => false,
        }
    }

    /// Whether an orphan source's id is below ours (ids compare as numbers, as in
    /// chrony and ntpd): the lowest id of a site serves and the others follow it.
    fn orphan_outranks_us(&self, source: &SourceEntry) -> bool {
        source.own_id.is_some_and(|ours| {
            u32::from_be_bytes(source.reference_id.0) < u32::from_be_bytes(ours.0)
        })
    }

    /// The first correction (and the first after losing synchronization): the
    /// reference's history through a fresh filter (frequency and offset together), then
    /// one step or slew.
    fn start(&mut self, reference: usize, majority: bool, now: f64) {
        let history: Vec<FilteredSample> = self
            .sources
            .get(reference)
            .map(|s| s.filter.samples().copied().collect())
            .unwrap_or_default();
        let rate_sd = initial_rate_sd(&self.config);
        let mut kalman = Discipline::new(history.first().map_or(now, |s| s.at), rate_sd);
        for s in &history {
            kalman.update(s.at, s.normalized_offset - self.corrected_total, s.variance);
        }
        self.kalman = kalman;
        let (offset, rate) = self.kalman.estimate(now);
        let may_step = majority
            && match self.config.steps {
                StepPolicy::Always => true,
                StepPolicy::Startup => !self.ever_synchronized,
                StepPolicy::Never => false,
            };
        self.correct(offset, rate, may_step, now);
        self.synchronized = true;
        self.ever_synchronized = true;
    }

    /// Every later sample from an agreeing source: one filter update and a correction.
    fn track(&mut self, index: usize, sample: &FilteredSample, now: f64, majority: bool) {
        let Some(source) = self.sources.get_mut(index) else {
            return;
        };
        let offset = sample.normalized_offset - self.corrected_total;
        let innovation = self.kalman.innovation(sample.at, offset, sample.variance);
        if innovation.value.abs() > OUTLIER_SD * innovation.sd {
            source.outliers += 1;
            if source.outliers < OUTLIER_RUN {
                return;
            }
            // Several in a row: the offset really changed. Start the offset afresh.
            self.kalman.reset_offset();
        }
        source.outliers = 0;
        self.kalman.update(sample.at, offset, sample.variance);
        let (offset, rate) = self.kalman.estimate(now);
        let may_step = self.config.steps == StepPolicy::Always && majority;
        self.correct(offset, rate, may_step, now);
    }

    /// Queues the commands that take `offset` and `rate` out of the clock.
    fn correct(&mut self, offset: f64, rate: f64, may_step: bool, now: f64) {
        let limit = self.config.max_frequency_ppm;
        let frequency = (self.frequency_ppm + rate * 1e6).clamp(-limit, limit);
        let applied_rate = (frequency - self.frequency_ppm) * 1e-6;
        // Not while a slew cut to one slew's worth is being worked off (a leap second
        // slewed away, `[leap] mode = "slew"`, is never stepped).
        let step = may_step
            && self.slew_rest_at.is_none()
            && offset.abs() > self.config.step_threshold
            && self.stepped_total + offset.abs() <= self.config.panic_threshold;
        let corrected = if step {
            // The slew in progress goes on: the offset was measured as if it were done.
            self.stepped_total += offset.abs();
            self.commands.push_back(ClockCommand::Step { offset });
            offset
        } else {
            // A slew replaces the one in progress, so it carries what that one had left.
            // One slew carries at most what the clock accepts; a larger offset (a
            // missed leap second, a long outage) is slewed away over several updates
            // rather than asked for, refused and measured afresh forever.
            let limit = crate::clock::MAX_SLEW_OFFSET;
            let slew = (offset + self.pending_slew).clamp(-limit, limit);
            let poll = 2f64.powi(i32::from(self.poll));
            let interval = self
                .last_update
                .map_or(poll, |t| (now - t).clamp(poll.min(1.0), poll));
            let sd = self.kalman.offset_sd(now);
            let duration = slew_duration(slew, sd, interval);
            self.commands.push_back(ClockCommand::Slew {
                offset: slew,
                duration,
            });
            // A clamped slew goes on from where it ends, not only at the next update
            // (which may be 17 minutes away).
            self.slew_rest_at = (slew.abs() >= limit).then_some(now + duration);
            slew - self.pending_slew
        };
        if frequency != self.frequency_ppm {
            self.commands
                .push_back(ClockCommand::SetFrequency { ppm: frequency });
        }
        self.frequency_ppm = frequency;
        self.corrected_total += corrected;
        self.kalman.corrected(now, corrected, applied_rate);
    }

    fn after_update(&mut self, truechimers: &[usize], now: f64) {
        self.last_update = Some(now);
        self.poll =
            self.kalman
                .poll_interval(self.config.min_poll, self.config.max_poll, POLL_RATIO);
        // Leap warnings: only when most agreeing sources announce the same one.
        let votes = |leap: Leap| {
            truechimers
                .iter()
                .filter(|&&i| {
                    self.sources
                        .get(i)
                        .and_then(|s| s.last)
                        .is_some_and(|s| s.leap == leap)
                })
                .count()
        };
        self.voted_leap = [Leap::AddSecond, Leap::DeleteSecond]
            .into_iter()
            .find(|&l| 2 * votes(l) > truechimers.len())
            .unwrap_or(Leap::NoWarning);
        self.announce_leap();
        let estimated_error = self.kalman.offset_sd(now);
        self.commands.push_back(ClockCommand::SetStatus {
            synchronized: true,
            estimated_error: if estimated_error.is_finite() {
                estimated_error
            } else {
                16.0
            },
            max_error: self.root_distance(now).min(16.0),
        });
    }

    /// The clock refused `command` (policy, or a limit of the kernel's): the engine no
    /// longer counts on the correction and measures the offset afresh.
    pub fn handle_clock_refused(&mut self, command: &ClockCommand) {
        let offset = match *command {
            // Asked again at the next update (a clock process takes leap seconds only
            // on the last day of the month, while sources announce them earlier).
            ClockCommand::SetLeap(_) => {
                self.clock_leap = None;
                return;
            }
            ClockCommand::Step { offset } => {
                self.stepped_total -= offset.abs();
                offset
            }
            // A slew carries what the one before it had left (`pending_slew`, which
            // was never added to `corrected_total` again); refused, that one runs on.
            ClockCommand::Slew { offset, .. } => offset - self.pending_slew,
            _ => return,
        };
        self.corrected_total -= offset;
        self.kalman.reset_offset();
    }

    /// Time passes without samples: after [`HOLDOVER_POLLS`] maximum poll intervals
    /// without an update the clock counts as unsynchronized again (and says so), and
    /// the next correction starts afresh (without a step, under the default policy).
    pub fn handle_timeout(&mut self, now: f64) {
        if self.slew_rest_at.is_some_and(|at| now >= at) {
            self.continue_slew(now, true);
        }
        let limit = HOLDOVER_POLLS * 2f64.powi(i32::from(self.config.max_poll));
        if self.synchronized && self.last_update.is_some_and(|t| now - t > limit) {
            self.synchronized = false;
            self.commands.push_back(ClockCommand::SetStatus {
                synchronized: false,
                estimated_error: 16.0,
                max_error: 16.0,
            });
        }
    }

    /// The next command for the clock, if any.
    pub fn poll_command(&mut self) -> Option<ClockCommand> {
        self.commands.pop_front()
    }

    /// The poll interval (log2 seconds) the engine wants from its sources now.
    pub fn poll_interval(&self) -> i8 {
        self.poll
    }

    pub fn is_synchronized(&self) -> bool {
        self.synchronized
    }

    /// The frequency correction in force, ppm (for the drift file).
    pub fn frequency_ppm(&self) -> f64 {
        self.frequency_ppm
    }

    fn root_distance(&self, now: f64) -> f64 {
        let Some(source) = self.reference.and_then(|i| self.sources.get(i)) else {
            return 16.0;
        };
        let (Some(last), Some((best, _))) = (source.last, source.filter.best(now)) else {
            return 16.0;
        };
        (last.root_delay + best.delay) / 2.0 + self.root_dispersion(now, &last)
    }

    fn root_dispersion(&self, now: f64, last: &Sample) -> f64 {
        let sd = self.kalman.offset_sd(now);
        let age = self.last_update.map_or(0.0, |t| (now - t).max(0.0));
        last.root_dispersion + if sd.is_finite() { sd } else { 0.0 } + DISPERSION_RATE * age
    }

    /// What a server answering from this clock tells its clients: stratum, reference and
    /// error bounds from our reference source, or "unsynchronized".
    pub fn sync_state(&self, now: f64, local_now: NtpTimestamp, precision: i8) -> SyncState {
        let reference = self.reference.and_then(|i| self.sources.get(i));
        let (Some(source), Some(last), Some(updated), true) = (
            reference,
            reference.and_then(|s| s.last),
            self.last_update,
            self.synchronized,
        ) else {
            return SyncState::unsynchronized(precision);
        };
        let delay = source.filter.best(now).map_or(last.delay, |(s, _)| s.delay);
        SyncState {
            leap: self.leap,
            stratum: last.stratum.saturating_add(1).min(15),
            reference_id: source.reference_id,
            reference_time: local_now.add_seconds(-(now - updated).max(0.0)),
            root_delay: last.root_delay + delay.max(0.0),
            root_dispersion: self.root_dispersion(now, &last),
            precision,
        }
    }

    pub fn report(&self, now: f64) -> Vec<SourceReport> {
        self.sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let best = s.filter.best(now);
                let (state, why) = self.state_of(i, s);
                SourceReport {
                    name: s.name.clone(),
                    samples: s.filter.len(),
                    reachable: s.reachable,
                    selected: s.selected,
                    offset: best.map(|(b, _)| b.normalized_offset - self.corrected_total),
                    bound: best.map(|(_, bound)| bound),
                    delay: s.last.map(|l| l.delay),
                    state,
                    why,
                }
            })
            .collect()
    }

    /// Source `i`'s state, and why when it is refused or a falseticker.
    fn state_of(&self, i: usize, s: &SourceEntry) -> (SourceState, Option<String>) {
        if !s.reachable {
            return (SourceState::Unreachable, None);
        }
        if s.selected {
            let state = if self.reference == Some(i) {
                SourceState::Reference
            } else {
                SourceState::Selectable
            };
            return (state, None);
        }
        let refused = |why: String| (SourceState::Refused, Some(why));
        if let Some(ignored) = s.ignored {
            return refused(format!("last sample {ignored}"));
        }
        if self.is_orphan(s) && s.verdict == Verdict::None {
            let why = match self.orphan_outranks_us(s) {
                true => "orphan: used only while no other source is",
                false => "orphan: our id is lower, so we serve and it follows",
            };
            return refused(why.into());
        }
        match s.verdict {
            Verdict::Falseticker => (
                SourceState::Falseticker,
                Some("outside the interval the majority agrees on".into()),
            ),
            Verdict::NoMajority => refused("no majority of sources agrees".into()),
            _ if s.filter.len() < MIN_SAMPLES => refused(format!(
                "{} of the {MIN_SAMPLES} samples needed",
                s.filter.len()
            )),
            _ => refused("waiting for a majority of the configured sources".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Leap;

    fn sample(offset: f64, delay: f64) -> Sample {
        Sample {
            offset,
            delay,
            leap: Leap::NoWarning,
            version: 4,
            stratum: 1,
            poll: 6,
            precision: -20,
            reference_id: ReferenceId(*b"GPS\0"),
            root_delay: 0.0,
            root_dispersion: 0.0,
            received: NtpTimestamp::ZERO,
            authenticated: Authenticated::Key(1),
        }
    }

    fn engine(sources: usize) -> (SyncEngine, Vec<SourceId>) {
        let mut engine = SyncEngine::new(SyncConfig::default(), 0.0);
        let ids = (0..sources)
            .map(|i| engine.add_source(format!("s{i}"), ReferenceId([10, 0, 0, i as u8]), true))
            .collect();
        while engine.poll_command().is_some() {}
        (engine, ids)
    }

    fn commands(engine: &mut SyncEngine) -> Vec<ClockCommand> {
        std::iter::from_fn(|| engine.poll_command()).collect()
    }

    fn steps(commands: &[ClockCommand]) -> Vec<f64> {
        commands
            .iter()
            .filter_map(|c| match c {
                ClockCommand::Step { offset } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    /// Two sites starting together: each has its upstream and a peer that is not yet
    /// synchronized. The peer does not hold up the start.
    #[test]
    fn an_unsynchronized_peer_does_not_hold_up_the_start() {
        let mut engine = SyncEngine::new(SyncConfig::default(), 0.0);
        let upstream = engine.add_source("up", ReferenceId([10, 0, 0, 9]), true);
        let peer = engine.add_peer("peer", ReferenceId([10, 0, 0, 8]), true);
        let unsynchronized = Sample {
            leap: Leap::Unsynchronized,
            stratum: 16,
            ..sample(0.0, 0.001)
        };
        for i in 0..3 {
            let now = f64::from(i) * 16.0;
            let _ = engine.handle_sample(peer, &unsynchronized, now, 0.0);
            engine
                .handle_sample(upstream, &sample(0.2, 0.001), now + 1.0, 0.0)
                .unwrap();
        }
        assert!(engine.is_synchronized());
        assert_eq!(steps(&commands(&mut engine)).len(), 1, "the start-up step");
    }

    /// A refused slew takes back exactly the correction it added: not the remainder
    /// of the slew before it, which it carried and which keeps running.
    #[test]
    fn a_refused_slew_takes_back_only_its_own_correction() {
        let (mut engine, ids) = engine(1);
        for i in 0..3 {
            let _ = engine.handle_sample(ids[0], &sample(0.01, 0.001), f64::from(i) * 16.0, 0.0);
        }
        while engine.poll_command().is_some() {}
        let before = engine.corrected_total;
        engine
            .handle_sample(ids[0], &sample(0.004, 0.001), 48.0, 0.003)
            .unwrap();
        let slew = commands(&mut engine)
            .into_iter()
            .find(|c| matches!(c, ClockCommand::Slew { .. }))
            .expect("a slew");
        engine.handle_clock_refused(&slew);
        assert!(
            (engine.corrected_total - before).abs() < 1e-12,
            "{} vs {before}",
            engine.corrected_total
        );
    }

    /// ADVERSARIAL 24 with peers: a bad source and a bad peer, the other sources
    /// silenced, are no majority of three sources: the start waits, and when it settles
    /// for them it slews instead of stepping. With nothing but peers, the peers vote.
    #[test]
    fn peers_do_not_help_a_minority_of_sources_step() {
        let mut engine = SyncEngine::new(SyncConfig::default(), 0.0);
        let sources: Vec<SourceId> = (0..3)
            .map(|i| engine.add_source(format!("s{i}"), ReferenceId([10, 0, 0, i]), true))
            .collect();
        let peers: Vec<SourceId> = (0..2)
            .map(|i| engine.add_peer(format!("p{i}"), ReferenceId([10, 0, 1, i]), true))
            .collect();
        while engine.poll_command().is_some() {}
        let mut now = 0.0;
        while now < 270.0 {
            now += 16.0;
            engine
                .handle_sample(sources[0], &sample(0.5, 0.001), now, 0.0)
                .unwrap();
            engine
                .handle_sample(peers[0], &sample(0.5, 0.001), now + 1.0, 0.0)
                .unwrap();
        }
        assert!(!engine.is_synchronized(), "no majority of sources yet");
        while now < 400.0 {
            now += 16.0;
            engine
                .handle_sample(sources[0], &sample(0.5, 0.001), now, 0.0)
                .unwrap();
        }
        assert!(engine.is_synchronized());
        assert!(
            steps(&commands(&mut engine)).is_empty(),
            "slewed, not stepped"
        );

        let mut only_peers = SyncEngine::new(SyncConfig::default(), 0.0);
        let p: Vec<SourceId> = (0..2)
            .map(|i| only_peers.add_peer(format!("p{i}"), ReferenceId([10, 0, 1, i]), true))
            .collect();
        while only_peers.poll_command().is_some() {}
        for i in 0..3 {
            let t = f64::from(i) * 16.0;
            only_peers
                .handle_sample(p[0], &sample(0.5, 0.001), t, 0.0)
                .unwrap();
            only_peers
                .handle_sample(p[1], &sample(0.5, 0.001), t + 1.0, 0.0)
                .unwrap();
        }
        assert!(only_peers.is_synchronized());
        assert_eq!(steps(&commands(&mut only_peers)).len(), 1);
    }

    /// A site's own upstream is its reference while it answers; when it is lost the
    /// site follows its peer, and it returns to the upstream when that answers again,
    /// although the peer still agrees (and has the tighter bound).
    #[test]
    fn a_peer_stands_in_for_a_lost_upstream_only() {
        let mut engine = SyncEngine::new(SyncConfig::default(), 0.0);
        let upstream = engine.add_source("up", ReferenceId([10, 0, 0, 0]), true);
        let peer = engine.add_peer("peer", ReferenceId([10, 0, 0, 1]), true);
        let from_peer = |offset| Sample {
            stratum: 2,
            ..sample(offset, 0.002)
        };
        let reference =
            |engine: &SyncEngine, now| engine.sync_state(now, NtpTimestamp::ZERO, -20).reference_id;
        let mut now = 0.0;
        for _ in 0..6 {
            now += 16.0;
            engine
                .handle_sample(peer, &from_peer(0.0), now, 0.0)
                .unwrap();
            engine
                .handle_sample(upstream, &sample(0.0, 0.004), now + 1.0, 0.0)
                .unwrap();
        }
        assert_eq!(reference(&engine, now), ReferenceId([10, 0, 0, 0]));
        engine.handle_reachability(upstream, false);
        for _ in 0..4 {
            now += 16.0;
            engine
                .handle_sample(peer, &from_peer(0.0), now, 0.0)
                .unwrap();
        }
        assert_eq!(reference(&engine, now), ReferenceId([10, 0, 0, 1]));
        for _ in 0..4 {
            now += 16.0;
            engine
                .handle_sample(upstream, &sample(0.0, 0.004), now, 0.0)
                .unwrap();
            engine
                .handle_sample(peer, &from_peer(0.0), now + 1.0, 0.0)
                .unwrap();
        }
        assert_eq!(reference(&engine, now), ReferenceId([10, 0, 0, 0]));
        assert!(engine.is_synchronized());
    }

    /// ADVERSARIAL 19: LI 3, stratum 0 or 16+, and a root distance of 16 s or more are
    /// never used, however often they come.
    #[test]
    fn unusable_samples_never_reach_the_clock() {
        let (mut engine, ids) = engine(1);
        let id = ids[0];
        let mut bad = vec![
            Sample {
                leap: Leap::Unsynchronized,
                ..sample(0.5, 0.001)
            },
            Sample {
                stratum: 0,
                ..sample(0.5, 0.001)
            },
            Sample {
                stratum: 16,
                ..sample(0.5, 0.001)
            },
            Sample {
                root_dispersion: 16.0,
                ..sample(0.5, 0.001)
            },
        ];
        bad.push(Sample {
            root_delay: 40.0,
            ..sample(0.5, 0.001)
        });
        for (i, s) in bad.iter().cycle().take(40).enumerate() {
            let result = engine.handle_sample(id, s, i as f64, 0.0);
            assert!(matches!(result, Err(Ignored::Unusable(_))), "{s:?}");
        }
        assert!(commands(&mut engine).is_empty());
        assert!(!engine.is_synchronized());
    }

    /// A source configured with a key or NTS never moves the clock with an
    /// unauthenticated sample, even if one got this far.
    #[test]
    fn unauthenticated_samples_are_refused_where_authentication_is_required() {
        let (mut engine, ids) = engine(1);
        for i in 0..10 {
            let s = Sample {
                authenticated: Authenticated::No,
                ..sample(0.5, 0.001)
            };
            assert_eq!(
                engine.handle_sample(ids[0], &s, f64::from(i), 0.0),
                Err(Ignored::NotAuthenticated)
            );
        }
        assert!(commands(&mut engine).is_empty());
    }

    /// ADVERSARIAL 24: one source beyond the panic threshold is never acted on.
    #[test]
    fn a_sample_beyond_the_panic_threshold_is_ignored() {
        let (mut engine, ids) = engine(1);
        for i in 0..10 {
            let result = engine.handle_sample(ids[0], &sample(3600.0, 0.001), f64::from(i), 0.0);
            assert_eq!(result, Err(Ignored::BeyondPanicThreshold));
        }
        assert!(commands(&mut engine).is_empty());
    }

    /// ADVERSARIAL 24: with three sources configured, one that answers alone cannot
    /// step the clock: the first correction waits for a majority of the configured
    /// sources, and after the grace period it slews instead of stepping.
    #[test]
    fn one_of_three_sources_cannot_step_the_clock() {
        let (mut engine, ids) = engine(3);
        for i in 0..4 {
            let _ = engine.handle_sample(ids[0], &sample(0.9, 0.001), f64::from(i) * 64.0, 0.0);
        }
        assert!(!engine.is_synchronized(), "acted within the grace period");
        for i in 4..10 {
            let _ = engine.handle_sample(ids[0], &sample(0.9, 0.001), f64::from(i) * 64.0, 0.0);
        }
        let applied = commands(&mut engine);
        assert!(steps(&applied).is_empty(), "{applied:?}");
    }

    /// ADVERSARIAL 24: after start-up, a run of offsets above the step threshold is
    /// slewed, never stepped; steps cannot be built up from small ones.
    #[test]
    fn after_start_large_offsets_are_slewed_not_stepped() {
        let (mut engine, ids) = engine(1);
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), 0.0, 0.0);
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), 64.0, 0.0);
        assert_eq!(steps(&commands(&mut engine)), vec![0.5]);
        // Now the source moves 0.2 s at a time.
        let mut applied = Vec::new();
        for i in 2..20 {
            let _ = engine.handle_sample(ids[0], &sample(0.2, 0.001), f64::from(i) * 64.0, 0.0);
            applied.extend(commands(&mut engine));
        }
        assert!(steps(&applied).is_empty(), "{applied:?}");
    }

    /// Five sources polled three times: three agree, two are one and two seconds off.
    fn three_agree_two_falsetickers() -> (SyncEngine, Vec<SourceId>) {
        let (mut engine, ids) = engine(5);
        let offsets = [0.0002, -0.0001, 0.0, 1.0, 2.0];
        for round in 0..3 {
            for (id, offset) in ids.iter().zip(offsets) {
                let at = f64::from(round) * 64.0;
                let _ = engine.handle_sample(*id, &sample(offset, 0.001), at, 0.0);
            }
        }
        (engine, ids)
    }

    /// Falsetickers: two sources a second off against three that agree are never
    /// selected, and the clock follows the three.
    #[test]
    fn falsetickers_are_not_followed() {
        let (mut engine, _) = three_agree_two_falsetickers();
        let report = engine.report(192.0);
        let selected: Vec<bool> = report.iter().map(|r| r.selected).collect();
        assert_eq!(selected, [true, true, true, false, false]);
        let applied = commands(&mut engine);
        assert!(steps(&applied).is_empty(), "{applied:?}");
        assert!(engine.is_synchronized());
    }

    /// Reports say what each source is to synchronization, and why it is not used.
    #[test]
    fn reports_name_the_reference_the_falsetickers_and_why() {
        let (mut engine, ids) = three_agree_two_falsetickers();
        let report = engine.report(192.0);
        let states: Vec<SourceState> = report.iter().map(|r| r.state).collect();
        assert_eq!(
            states
                .iter()
                .filter(|s| **s == SourceState::Reference)
                .count(),
            1,
            "{report:?}"
        );
        assert!(
            states[..3]
                .iter()
                .all(|s| matches!(s, SourceState::Reference | SourceState::Selectable)),
            "{report:?}"
        );
        for falseticker in &report[3..5] {
            assert_eq!(falseticker.state, SourceState::Falseticker, "{report:?}");
            assert!(falseticker.why.is_some(), "{report:?}");
        }
        assert_eq!(report[0].delay, Some(0.001));
        // No longer heard from.
        if let Some(&last) = ids.last() {
            engine.handle_reachability(last, false);
        }
        let report = engine.report(192.0);
        assert_eq!(report[4].state, SourceState::Unreachable);
        assert_eq!(report[4].why, None);

        // A sample the engine will not take from a source it does not use: refused, and
        // why. (A selected source stays selected on the samples it gave before.)
        let Some(&falseticker) = ids.get(3) else {
            panic!("no source 3")
        };
        let mut bad = sample(0.0, 0.001);
        bad.offset = f64::NAN;
        assert!(engine.handle_sample(falseticker, &bad, 200.0, 0.0).is_err());
        let report = engine.report(200.0);
        assert_eq!(report[3].state, SourceState::Refused, "{report:?}");
        assert_eq!(
            report[3].why.as_deref(),
            Some("last sample not a finite number")
        );
    }

    /// After a long silence the clock is unsynchronized again (and says so), and the
    /// correction that follows is slewed: the start-up step happens once.
    #[test]
    fn holdover_ends_in_unsynchronized_and_no_second_step() {
        let (mut engine, ids) = engine(1);
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), 0.0, 0.0);
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), 64.0, 0.0);
        assert_eq!(steps(&commands(&mut engine)), vec![0.5]);
        engine.handle_timeout(64.0 + HOLDOVER_POLLS * 1024.0 + 1.0);
        assert!(!engine.is_synchronized());
        assert!(commands(&mut engine).iter().any(|c| matches!(
            c,
            ClockCommand::SetStatus {
                synchronized: false,
                ..
            }
        )));
        let later = 64.0 + HOLDOVER_POLLS * 1024.0 + 10.0;
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), later, 0.0);
        let _ = engine.handle_sample(ids[0], &sample(0.5, 0.001), later + 64.0, 0.0);
        assert!(engine.is_synchronized());
        assert!(steps(&commands(&mut engine)).is_empty());
    }

    /// A negative round trip means the server's timestamps are wrong.
    #[test]
    fn negative_delay_is_unusable() {
        let (mut engine, ids) = engine(1);
        assert_eq!(
            engine.handle_sample(ids[0], &sample(0.0, -0.01), 0.0, 0.0),
            Err(Ignored::Unusable("negative round-trip delay"))
        );
        assert_eq!(
            engine.handle_sample(ids[0], &sample(0.0, 0.001), f64::INFINITY, 0.0),
            Err(Ignored::NotFinite)
        );
    }

    /// Perfect sources polled every `interval` at the given phases (seconds into each
    /// interval) steer a model clock; returns its error at the end.
    fn drive(start_offset: f64, f0: f64, phases: &[f64], interval: f64, intervals: u32) -> f64 {
        use crate::clock::model::ClockModel;
        let (mut engine, ids) = engine(phases.len());
        let mut clock = ClockModel::new(start_offset, f0);
        let mut events: Vec<(f64, SourceId)> = (0..intervals)
            .flat_map(|k| {
                ids.iter()
                    .zip(phases)
                    .map(move |(id, p)| (f64::from(k) * interval + p, *id))
            })
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (t, id) in events {
            let pending = clock.status(t).pending_slew;
            let _ = engine.handle_sample(id, &sample(-clock.phase(t), 0.001), t, pending);
            while let Some(command) = engine.poll_command() {
                clock.apply(t, command);
            }
        }
        clock.phase(f64::from(intervals) * interval)
    }

    /// Without a drift file the frequency is unknown to ±500 ppm, and two clean samples
    /// 64 s apart give it; the 0.11 s offset is slewed as fast as the clock may, and
    /// a later small one over about the update interval.
    #[test]
    fn the_first_correction_takes_the_frequency_from_the_data_and_slews_fast() {
        let (mut engine, ids) = engine(1);
        let id = ids[0];
        engine
            .handle_sample(id, &sample(-0.106429, 0.000366), 64.0, 0.0)
            .unwrap();
        engine
            .handle_sample(id, &sample(-0.112808, 0.000236), 128.0, 0.0)
            .unwrap();
        let first = commands(&mut engine);
        let ppm = first.iter().find_map(|c| match c {
            ClockCommand::SetFrequency { ppm } => Some(*ppm),
            _ => None,
        });
        let ppm = ppm.expect("a frequency");
        assert!((ppm + 99.67).abs() < 0.1, "{ppm}");
        let Some(&ClockCommand::Slew { offset, duration }) = first.first() else {
            panic!("{first:?}");
        };
        assert!((offset + 0.1128).abs() < 1e-5, "{offset}");
        assert!(
            (duration - offset.abs() / crate::clock::MAX_SLEW_RATE).abs() < 1.0,
            "{duration}"
        );
        engine
            .handle_sample(id, &sample(0.000_02, 0.000236), 192.0, 0.0)
            .unwrap();
        let Some(&ClockCommand::Slew { offset, duration }) = commands(&mut engine).first() else {
            panic!("no slew");
        };
        assert!(offset.abs() < 1e-4, "{offset}");
        assert!(duration > 10.0, "{duration}");
    }

    #[test]
    fn slew_durations_follow_the_error_and_respect_the_rate_bound() {
        // As large as its sd: 1.5 update intervals.
        assert!((slew_duration(1e-4, 1e-4, 64.0) - 96.0).abs() < 1e-9);
        // Ten times larger: ten times faster.
        assert!((slew_duration(1e-3, 1e-4, 64.0) - 9.6).abs() < 1e-9);
        // Never faster than the clock may slew, whatever the estimate says.
        assert!((slew_duration(0.1, 1e-6, 64.0) - 1.2).abs() < 1e-9);
        assert!((slew_duration(0.1, f64::INFINITY, 64.0) - 1.2).abs() < 1e-9);
        // Nothing to slew: at once (which the rate bound allows), never NaN.
        assert_eq!(slew_duration(0.0, 1e-4, 64.0), 0.0);
        assert_eq!(slew_duration(0.0, 0.0, 64.0), 0.0);
        // A tiny offset with a noisy estimate: long, but bounded.
        assert_eq!(slew_duration(1e-12, 1.0, 1024.0), MAX_SLEW_DURATION);
    }

    /// A new slew replaces the one in progress: it must carry what that one had left,
    /// or a sample arriving mid-slew cancels the rest of the correction.
    #[test]
    fn a_slew_in_progress_is_not_cancelled_by_the_next_correction() {
        // Slews take a 16th of the 64 s poll interval; samples come every second.
        let error = drive(0.05, 0.0, &[0.0], 1.0, 20);
        assert!(error.abs() < 1e-3, "{error}");
        let error = drive(0.05, 0.0, &[0.0, 0.001, 0.002], 64.0, 4);
        assert!(error.abs() < 1e-3, "{error}");
    }

    /// Samples taken at different times are compared with the clock's drift allowed
    /// for: a clock 100 ms off and 100 ppm fast still finds its majority.
    #[test]
    fn sources_polled_apart_agree_despite_the_drift_between_them() {
        let error = drive(0.1, 100e-6, &[0.0, 20.0, 40.0], 64.0, 12);
        assert!(error.abs() < 1e-3, "{error}");
    }

    /// Leap warnings are passed on only when most selected sources announce one.
    #[test]
    fn leap_second_follows_the_majority() {
        let (mut engine, ids) = engine(3);
        for round in 0..3 {
            for (i, id) in ids.iter().enumerate() {
                let leap = if i < 2 {
                    Leap::AddSecond
                } else {
                    Leap::NoWarning
                };
                let s = Sample {
                    leap,
                    ..sample(0.0, 0.001)
                };
                let _ = engine.handle_sample(*id, &s, f64::from(round) * 64.0, 0.0);
            }
        }
        let add = ClockCommand::SetLeap(Leap::AddSecond);
        assert!(commands(&mut engine).contains(&add));
        let state = engine.sync_state(192.0, NtpTimestamp::from_unix(1_800_000_000, 0), -20);
        assert_eq!((state.leap, state.stratum), (Leap::AddSecond, 2));
        // Refused (too early in the month for the clock process): asked again at the
        // next update, while our clients keep hearing the announcement.
        engine.handle_clock_refused(&add);
        let s = Sample {
            leap: Leap::AddSecond,
            ..sample(0.0, 0.001)
        };
        let _ = engine.handle_sample(ids[0], &s, 256.0, 0.0);
        assert!(commands(&mut engine).contains(&add));
        let _ = engine.handle_sample(ids[1], &s, 260.0, 0.0);
        assert!(!commands(&mut engine).contains(&add), "asked twice");
    }

    /// A reference on a long path gives way once a source whose root distance is
    /// tighter by more than the reselect distance agrees with it (issue 13).
    #[test]
    fn a_wide_reference_gives_way_to_a_tight_source_that_agrees() {
        let (mut engine, ids) = engine(3);
        let reference = |engine: &SyncEngine, now: f64| -> Vec<bool> {
            let report = engine.report(now);
            report
                .iter()
                .map(|r| r.state == SourceState::Reference)
                .collect()
        };
        // Sources 0 and 2 answer first, over 20 ms and 30 ms paths: 0 steers.
        for round in 0..4 {
            let at = f64::from(round) * 16.0;
            let _ = engine.handle_sample(ids[0], &sample(0.0, 0.020), at, 0.0);
            let _ = engine.handle_sample(ids[2], &sample(0.0, 0.030), at + 1.0, 0.0);
        }
        assert_eq!(reference(&engine, 64.0), [true, false, false]);
        // Then source 1, over 0.5 ms, agrees: it takes over.
        for round in 4..8 {
            let at = f64::from(round) * 16.0;
            let _ = engine.handle_sample(ids[1], &sample(0.0, 0.0005), at, 0.0);
            let _ = engine.handle_sample(ids[0], &sample(0.0, 0.020), at + 1.0, 0.0);
        }
        assert_eq!(reference(&engine, 128.0), [false, true, false]);
    }

    /// Orphan mode (`[local] orphan`, stratum 10): sources at stratum 10 serve their
    /// own clocks. Of two site servers the lower id is followed, the higher never is,
    /// and neither while a source with real time (any other stratum) answers.
    #[test]
    fn an_orphan_is_followed_only_when_its_id_is_lower_and_nothing_else_answers() {
        let orphan = |offset: f64| Sample {
            stratum: 10,
            reference_id: ReferenceId(*b"LOCL"),
            ..sample(offset, 0.001)
        };
        let run_with = |ours: [u8; 4], upstream: bool, site_sample: Sample| -> Vec<SourceState> {
            let config = SyncConfig {
                orphan_stratum: Some(10),
                ..SyncConfig::default()
            };
            let mut engine = SyncEngine::new(config, 0.0);
            let site = engine.add_source("site", ReferenceId([10, 0, 0, 5]), true);
            let real = engine.add_source("real", ReferenceId([192, 0, 2, 1]), true);
            engine.set_own_reference_id(site, ReferenceId(ours));
            engine.set_own_reference_id(real, ReferenceId(ours));
            // Past the start-up grace: one of two configured sources is no majority.
            for round in 0..8 {
                let at = f64::from(round) * 64.0;
                let _ = engine.handle_sample(site, &site_sample, at, 0.0);
                if upstream {
                    let _ = engine.handle_sample(real, &sample(0.0, 0.002), at + 1.0, 0.0);
                }
            }
            engine.report(460.0).iter().map(|r| r.state).collect()
        };
        let run = |ours: [u8; 4], upstream: bool| run_with(ours, upstream, orphan(0.3));
        use SourceState::{Reference, Refused, Unreachable};
        assert_eq!(run([10, 0, 0, 9], false), [Reference, Unreachable]);
        assert_eq!(run([10, 0, 0, 2], false), [Refused, Unreachable]);
        assert_eq!(run([10, 0, 0, 9], true), [Refused, Reference]);
        // A site server following another (stratum 11) is no real time either: the
        // lowest of three never follows its followers, so the site cannot loop.
        let follower = Sample {
            stratum: 11,
            reference_id: ReferenceId([10, 0, 0, 1]),
            ..sample(0.3, 0.001)
        };
        assert_eq!(
            run_with([10, 0, 0, 2], false, follower),
            [Refused, Unreachable]
        );
        assert_eq!(
            run_with([10, 0, 0, 9], false, follower),
            [Reference, Unreachable]
        );
    }

    /// A source whose reference id is our own address is synchronized to us:
    /// following it would make a loop.
    #[test]
    fn a_source_synchronized_to_us_is_refused() {
        let (mut engine, ids) = engine(1);
        engine.set_own_reference_id(ids[0], ReferenceId([10, 0, 0, 9]));
        let follower = Sample {
            stratum: 3,
            reference_id: ReferenceId([10, 0, 0, 9]),
            ..sample(0.0, 0.001)
        };
        assert_eq!(
            engine.handle_sample(ids[0], &follower, 0.0, 0.0),
            Err(Ignored::SynchronizedToUs)
        );
        // ntpd in orphan mode announces 127.0.0.1 whoever it is: no loop, even on a
        // machine whose own address towards it is 127.0.0.1.
        engine.set_own_reference_id(ids[0], ReferenceId([127, 0, 0, 1]));
        let orphan_ntpd = Sample {
            stratum: 5,
            reference_id: ReferenceId([127, 0, 0, 1]),
            ..sample(0.0, 0.001)
        };
        assert_eq!(engine.handle_sample(ids[0], &orphan_ntpd, 1.0, 0.0), Ok(()));
    }

    /// `[leap] mode = "slew"`: the clock never hears of the leap second; at midnight
    /// the engine takes it as a 1 s offset and slews it away, at most 0.512 s a slew,
    /// the next starting when the one before ends.
    #[test]
    fn in_slew_mode_a_leap_second_is_slewed_away_after_midnight() {
        let config = SyncConfig {
            leap_mode: LeapMode::Slew,
            ..SyncConfig::default()
        };
        let mut engine = SyncEngine::new(config, 0.0);
        let id = engine.add_source("s", ReferenceId([10, 0, 0, 1]), true);
        let announcing = Sample {
            leap: Leap::AddSecond,
            ..sample(0.0, 0.001)
        };
        let mut told = Vec::new();
        for round in 0..6 {
            let _ = engine.handle_sample(id, &announcing, f64::from(round) * 64.0, 0.0);
            told.extend(commands(&mut engine));
        }
        assert_eq!(
            engine.announced_leap(),
            Leap::AddSecond,
            "served to clients"
        );
        assert!(
            !told.contains(&ClockCommand::SetLeap(Leap::AddSecond)),
            "the kernel was told: {told:?}"
        );
        engine.handle_leap(Leap::AddSecond, 400.0);
        let slews = |commands: Vec<ClockCommand>| -> Vec<(f64, f64)> {
            commands
                .into_iter()
                .filter_map(|c| match c {
                    ClockCommand::Slew { offset, duration } => Some((offset, duration)),
                    _ => None,
                })
                .collect()
        };
        let first = slews(commands(&mut engine));
        let [(offset, duration)] = first[..] else {
            panic!("{first:?}");
        };
        assert!(
            (offset + crate::clock::MAX_SLEW_OFFSET).abs() < 1e-9,
            "{offset}"
        );
        assert_eq!(engine.announced_leap(), Leap::NoWarning);
        engine.handle_timeout(400.0 + duration);
        let rest = slews(commands(&mut engine));
        let [(offset, _)] = rest[..] else {
            panic!("{rest:?}");
        };
        assert!(
            (offset + 1.0 - crate::clock::MAX_SLEW_OFFSET).abs() < 1e-3,
            "{offset}"
        );
    }

    /// With `steps = "always"` too, what is left of a leap second being slewed away is
    /// never stepped when a sample measures it before the next slew starts.
    #[test]
    fn a_leap_second_being_slewed_is_never_stepped() {
        let config = SyncConfig {
            leap_mode: LeapMode::Slew,
            steps: StepPolicy::Always,
            ..SyncConfig::default()
        };
        let mut engine = SyncEngine::new(config, 0.0);
        let id = engine.add_source("s", ReferenceId([10, 0, 0, 1]), true);
        let announcing = Sample {
            leap: Leap::AddSecond,
            ..sample(0.0, 0.001)
        };
        for round in 0..6 {
            let _ = engine.handle_sample(id, &announcing, f64::from(round) * 64.0, 0.0);
        }
        engine.handle_leap(Leap::AddSecond, 400.0);
        let _ = commands(&mut engine);
        let rest = -(1.0 - crate::clock::MAX_SLEW_OFFSET);
        let _ = engine.handle_sample(id, &sample(rest, 0.001), 401.0, 0.0);
        let after = commands(&mut engine);
        assert!(steps(&after).is_empty(), "{after:?}");
    }

    /// Outside June and December the sources' announcement is for a date that cannot
    /// have a leap second: neither served nor told to the clock (ADVERSARIAL 40).
    #[test]
    fn a_leap_announced_outside_june_and_december_is_ignored() {
        let (mut engine, ids) = engine(3);
        engine.set_leap_month(false);
        let s = Sample {
            leap: Leap::AddSecond,
            ..sample(0.0, 0.001)
        };
        for round in 0..3 {
            for id in &ids {
                let _ = engine.handle_sample(*id, &s, f64::from(round) * 64.0, 0.0);
            }
        }
        let add = ClockCommand::SetLeap(Leap::AddSecond);
        assert!(!commands(&mut engine).contains(&add));
        let now = NtpTimestamp::from_unix(1_800_000_000, 0);
        assert_eq!(engine.sync_state(192.0, now, -20).leap, Leap::NoWarning);
        // June comes: the same vote is believed at once.
        engine.set_leap_month(true);
        assert!(commands(&mut engine).contains(&add));
        assert_eq!(engine.sync_state(200.0, now, -20).leap, Leap::AddSecond);
    }

    /// The leap-seconds file decides over the sources: announced (and told to the
    /// clock) though none of them says so, and withdrawn at once, without waiting for
    /// an update, when the file stops announcing.
    #[test]
    fn the_leap_file_is_believed_over_the_sources() {
        let (mut engine, ids) = engine(3);
        engine.set_file_leap(Some(Leap::AddSecond));
        for round in 0..3 {
            for id in &ids {
                let _ =
                    engine.handle_sample(*id, &sample(0.0, 0.001), f64::from(round) * 64.0, 0.0);
            }
        }
        assert!(commands(&mut engine).contains(&ClockCommand::SetLeap(Leap::AddSecond)));
        let now = NtpTimestamp::from_unix(1_800_000_000, 0);
        assert_eq!(engine.sync_state(192.0, now, -20).leap, Leap::AddSecond);
        engine.set_file_leap(Some(Leap::NoWarning));
        assert!(commands(&mut engine).contains(&ClockCommand::SetLeap(Leap::NoWarning)));
        assert_eq!(engine.sync_state(260.0, now, -20).leap, Leap::NoWarning);
    }
}
