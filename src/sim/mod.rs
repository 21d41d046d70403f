//! The offline simulator behind `ntimed sim`: the real sources, engine and servers
//! exchanging real (keyed) packets in simulated time, with the clock model of
//! clknetsim, the harness chrony's own tests use.
//!
//! * True time `t` runs in seconds. The local clock's frequency error starts at `f0`
//!   and takes a random walk, `wander · N(0,1)` per second; its phase integrates that
//!   plus whatever the engine commands ([`ClockModel`]).
//! * Each packet's delay is `base + jitter · Exp(1)` per direction; asymmetry `a`
//!   scales the jitter up by `1 − 2a` and down by `1 + 2a`. Packets are lost with
//!   probability `loss`, each direction on its own.
//! * Servers are perfect, except that falseticker `i` (counting from 1) is `i` seconds
//!   off.
//!
//! Metrics are taken once a second from the scenario's `metrics_from` to the end.

pub mod plot;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp1, StandardNormal};
use serde::Serialize;

use crate::auth::{KeyFileFormat, KeyStore};
use crate::clock::model::ClockModel;
use crate::clock::{ClockCommand, check_finite};
use crate::proto::server::{Server, ServerOptions, SyncState};
use crate::proto::source::{Action, Event, Source, SourceAuth, SourceOptions};
use crate::sync::{SourceId, StepPolicy, SyncConfig, SyncEngine};
use crate::wire::{NtpTimestamp, ReferenceId};

/// One simulated set-up, with the parameters of chrony's simulation tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub servers: usize,
    pub falsetickers: usize,
    pub base_delay: f64,
    pub jitter: f64,
    pub asymmetry: f64,
    pub f0: f64,
    pub wander: f64,
    pub start_offset: f64,
    pub length: f64,
    pub loss: f64,
    pub iburst: bool,
    /// Frequency correction from a drift file, ppm.
    pub drift_file_ppm: Option<f64>,
    pub step_threshold: Option<f64>,
    pub metrics_from: f64,
}

const BASE: Scenario = Scenario {
    name: "defaults",
    servers: 1,
    falsetickers: 0,
    base_delay: 1e-4,
    jitter: 1e-4,
    asymmetry: 0.0,
    f0: 1e-4,
    wander: 1e-9,
    start_offset: 0.1,
    length: 10_000.0,
    loss: 0.0,
    iburst: false,
    drift_file_ppm: None,
    step_threshold: None,
    metrics_from: 420.0,
};

/// The scenarios of the issue, in its order.
pub const SCENARIOS: [Scenario; 7] = [
    BASE,
    Scenario {
        name: "large-jitter",
        jitter: 1e-1,
        start_offset: 1.0,
        ..BASE
    },
    Scenario {
        name: "large-wander",
        wander: 1e-7,
        ..BASE
    },
    Scenario {
        name: "asym-jitter",
        jitter: 5e-4,
        asymmetry: 0.47,
        length: 100_000.0,
        ..BASE
    },
    Scenario {
        name: "falsetickers",
        servers: 5,
        falsetickers: 2,
        base_delay: 1e-3,
        ..BASE
    },
    Scenario {
        name: "iburst",
        iburst: true,
        drift_file_ppm: Some(-100.0),
        step_threshold: Some(0.01),
        ..BASE
    },
    Scenario {
        name: "packet-loss",
        jitter: 1e-5,
        loss: 0.33,
        length: 20_000.0,
        metrics_from: 2000.0,
        ..BASE
    },
];

pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// What one run measured. Seconds, and fractions for frequencies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub rms_offset: f64,
    pub max_offset: f64,
    pub rms_freq: f64,
    /// When |phase| < 1 ms and |frequency| < 500 ppm from then on (NaN: never).
    pub sync_time: f64,
    /// Mean seconds between requests, per source.
    pub mean_poll_interval: f64,
    /// Whether a falseticker was ever among the selected sources.
    pub falseticker_selected: bool,
}

/// Phase and frequency error once a second, for plots.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub time: Vec<f64>,
    pub phase: Vec<f64>,
    pub frequency: Vec<f64>,
}

/// A packet on its way back to a source.
struct InFlight {
    arrives: f64,
    source: usize,
    bytes: Vec<u8>,
}

struct SimSource {
    source: Source,
    id: SourceId,
    /// The server's clock error (falsetickers).
    server_offset: f64,
    requests: u64,
}

const KEY: &str = "1 SHA256 HEX:5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed0";

/// True time 0 on the NTP time scale (any instant would do; this one is in era 0).
fn epoch() -> NtpTimestamp {
    NtpTimestamp::from_unix(1_800_000_000, 0)
}

/// Runs `scenario` with random numbers from `seed`; `trace` collects the per-second
/// errors if given.
pub fn run(scenario: &Scenario, seed: u64, trace: Option<&mut Trace>) -> Metrics {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = KeyStore::parse("sim", KEY, KeyFileFormat::Chrony).unwrap_or_default();
    let key = keys.get(1).cloned();
    let server = Server::new(keys.clone(), ServerOptions::default());
    let mut clock = ClockModel::new(scenario.start_offset, scenario.f0);
    let defaults = SyncConfig::default();
    let mut engine = SyncEngine::new(
        SyncConfig {
            initial_frequency_ppm: scenario.drift_file_ppm,
            step_threshold: scenario.step_threshold.unwrap_or(defaults.step_threshold),
            steps: StepPolicy::Startup,
            ..defaults
        },
        0.0,
    );
    let options = SourceOptions {
        iburst: scenario.iburst,
        ..SourceOptions::default()
    };
    let mut sources: Vec<SimSource> = (0..scenario.servers)
        .map(|i| {
            let falseticker = (i + scenario.falsetickers + 1).saturating_sub(scenario.servers);
            let auth = key.clone().map_or(SourceAuth::Insecure, SourceAuth::Key);
            SimSource {
                source: Source::new(auth, options, 0.0),
                id: engine.add_source(format!("server{i}"), ReferenceId([10, 0, 0, i as u8]), true),
                server_offset: falseticker as f64,
                requests: 0,
            }
        })
        .collect();
    let local = |clock: &ClockModel, t: f64| epoch().add_seconds(t + clock.phase(t));
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut request = Vec::new();
    let mut reply = Vec::new();
    let (mut oscillator, mut next_tick) = (scenario.f0, 1.0);
    let mut last_phase = clock.phase(0.0);
    let mut errors: Vec<(f64, f64, f64)> = Vec::new();
    let mut falseticker_selected = false;
    drain(&mut engine, &mut clock, 0.0);

    loop {
        let next_poll = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.source.poll_timeout().map(|t| (t, i)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let next_arrival = in_flight
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.arrives.total_cmp(&b.1.arrives))
            .map(|(i, f)| (f.arrives, i));
        let t = [
            Some(next_tick),
            next_poll.map(|p| p.0),
            next_arrival.map(|a| a.0),
        ]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
        if t > scenario.length {
            break;
        }
        if t == next_tick {
            let normal: f64 = StandardNormal.sample(&mut rng);
            oscillator += scenario.wander * normal;
            clock.set_oscillator(t, oscillator);
            let phase = clock.phase(t);
            errors.push((t, phase, phase - last_phase));
            last_phase = phase;
            next_tick += 1.0;
        } else if let Some((_, i)) = next_arrival.filter(|a| a.0 == t) {
            let flight = in_flight.swap_remove(i);
            let Some(sim) = sources.get_mut(flight.source) else {
                continue;
            };
            let received = local(&clock, t);
            if let Event::Sample(sample) = sim.source.handle_response(&flight.bytes, received, t) {
                let pending = clock.status(t).pending_slew;
                let _ = engine.handle_sample(sim.id, &sample, t, pending);
                drain(&mut engine, &mut clock, t);
                let poll = engine.poll_interval();
                for s in &mut sources {
                    s.source.set_system_poll(poll);
                }
                falseticker_selected |= engine
                    .report(t)
                    .iter()
                    .zip(&sources)
                    .any(|(report, s)| report.selected && s.server_offset != 0.0);
            }
        } else if let Some((_, i)) = next_poll {
            let Some(sim) = sources.get_mut(i) else {
                break;
            };
            let action = sim.source.handle_timeout(t, local(&clock, t), &mut request);
            if action != Some(Action::Transmit) {
                continue;
            }
            sim.requests += 1;
            if lost(&mut rng, scenario.loss) {
                continue;
            }
            let (up, down) = delays(&mut rng, scenario);
            let at_server = epoch().add_seconds(t + up + sim.server_offset);
            let state = SyncState::local_reference(1, at_server, -20);
            reply.clear();
            if server
                .handle_request(&request, at_server, &state, || at_server, &mut reply)
                .is_ok()
                && !lost(&mut rng, scenario.loss)
            {
                in_flight.push(InFlight {
                    arrives: t + up + down,
                    source: i,
                    bytes: reply.clone(),
                });
            }
        }
    }

    if let Some(trace) = trace {
        for &(t, phase, frequency) in &errors {
            trace.time.push(t);
            trace.phase.push(phase);
            trace.frequency.push(frequency);
        }
    }
    let requests: u64 = sources.iter().map(|s| s.requests).sum();
    let per_source = requests as f64 / sources.len().max(1) as f64;
    metrics(scenario, &errors, per_source, falseticker_selected)
}

/// Applies every command the engine has queued.
fn drain(engine: &mut SyncEngine, clock: &mut ClockModel, t: f64) {
    while let Some(command) = engine.poll_command() {
        if check_finite(&command).is_ok() {
            clock.apply(t, command);
        }
        debug_assert!(!matches!(command, ClockCommand::Step { offset } if offset.abs() > 1e3));
    }
}

fn lost(rng: &mut StdRng, loss: f64) -> bool {
    loss > 0.0 && rand::RngExt::random::<f64>(rng) < loss
}

/// One-way delays (up, down) for one exchange.
fn delays(rng: &mut StdRng, s: &Scenario) -> (f64, f64) {
    let up: f64 = Exp1.sample(rng);
    let down: f64 = Exp1.sample(rng);
    (
        s.base_delay + s.jitter * (1.0 - 2.0 * s.asymmetry) * up,
        s.base_delay + s.jitter * (1.0 + 2.0 * s.asymmetry) * down,
    )
}

fn metrics(
    scenario: &Scenario,
    errors: &[(f64, f64, f64)],
    requests_per_source: f64,
    falseticker_selected: bool,
) -> Metrics {
    let measured: Vec<_> = errors
        .iter()
        .filter(|e| e.0 >= scenario.metrics_from)
        .collect();
    let n = measured.len().max(1) as f64;
    let rms = |f: fn(&(f64, f64, f64)) -> f64| {
        (measured.iter().map(|e| f(e).powi(2)).sum::<f64>() / n).sqrt()
    };
    let last_bad = errors
        .iter()
        .rev()
        .find(|e| e.1.abs() >= 1e-3 || e.2.abs() >= 500e-6)
        .map_or(0.0, |e| e.0);
    Metrics {
        rms_offset: rms(|e| e.1),
        max_offset: measured.iter().map(|e| e.1.abs()).fold(0.0, f64::max),
        rms_freq: rms(|e| e.2),
        sync_time: if errors.last().is_some_and(|e| e.0 <= last_bad) {
            f64::NAN
        } else {
            last_bad
        },
        mean_poll_interval: scenario.length / requests_per_source.max(1.0),
        falseticker_selected,
    }
}

/// Medians over seeds `0..seeds` (`falseticker_selected` if any run selected one).
pub fn run_seeds(scenario: &Scenario, seeds: u64) -> Metrics {
    let runs: Vec<Metrics> = (0..seeds).map(|seed| run(scenario, seed, None)).collect();
    let median = |f: fn(&Metrics) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Metrics {
        rms_offset: median(|m| m.rms_offset),
        max_offset: median(|m| m.max_offset),
        rms_freq: median(|m| m.rms_freq),
        sync_time: median(|m| m.sync_time),
        mean_poll_interval: median(|m| m.mean_poll_interval),
        falseticker_selected: runs.iter().any(|m| m.falseticker_selected),
    }
}
