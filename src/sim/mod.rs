//! The offline simulator behind `ntimed sim`: the coordinator (the daemon's own core)
//! and real servers exchanging real (keyed) packets in simulated time through the
//! coordinator's test pair ([`crate::coordinator::pair`]), with the clock model of
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

use serde::Serialize;

use crate::auth::{KeyFileFormat, KeyStore};
use crate::coordinator::CoordinatorConfig;
use crate::coordinator::pair::{FarServer, Network, Pair};
use crate::proto::server::{Server, ServerOptions};
use crate::proto::source::{SourceAuth, SourceOptions};
use crate::sync::{StepPolicy, SyncConfig};

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
const KEY: &str = "1 SHA256 HEX:5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed5e11ec7ed0";

/// Runs one scenario with `seed` through the coordinator's test pair (the daemon's own
/// core and contract); `trace` gets the clock's error once a second.
pub fn run(scenario: &Scenario, seed: u64, trace: Option<&mut Trace>) -> Metrics {
    let keys = KeyStore::parse("sim", KEY, KeyFileFormat::Chrony).unwrap_or_default();
    let key = keys.get(1).cloned();
    let defaults = SyncConfig::default();
    let config = CoordinatorConfig {
        sync: SyncConfig {
            initial_frequency_ppm: scenario.drift_file_ppm,
            step_threshold: scenario.step_threshold.unwrap_or(defaults.step_threshold),
            steps: StepPolicy::Startup,
            ..defaults
        },
        local: None,
        precision: -20,
    };
    let mut pair = Pair::new(config, scenario.start_offset, scenario.f0, seed);
    pair.wander = scenario.wander;
    pair.network = Network {
        base_delay: scenario.base_delay,
        jitter: scenario.jitter,
        asymmetry: scenario.asymmetry,
        loss: scenario.loss,
    };
    let options = SourceOptions {
        iburst: scenario.iburst,
        ..SourceOptions::default()
    };
    let mut falsetickers = Vec::new();
    for i in 0..scenario.servers {
        // Falseticker `n` (counting from 1) is `n` seconds off.
        let falseticker = (i + scenario.falsetickers + 1).saturating_sub(scenario.servers);
        let server = Server::new(keys.clone(), ServerOptions::default());
        let index = pair.add_server(FarServer::new(server, falseticker as f64));
        let auth = key.clone().map_or(SourceAuth::Insecure, SourceAuth::Key);
        let id = pair
            .coordinator
            .add_source(format!("server{i}"), auth, options, 0.0);
        pair.connect(id, index);
        falsetickers.push(falseticker != 0);
    }
    let mut errors: Vec<(f64, f64, f64)> = Vec::new();
    let mut last_phase = pair.phase();
    let mut falseticker_selected = false;
    pair.run_until(scenario.length, |pair| {
        let phase = pair.phase();
        errors.push((pair.now, phase, phase - last_phase));
        last_phase = phase;
        falseticker_selected |= pair
            .coordinator
            .report(pair.now)
            .iter()
            .zip(&falsetickers)
            .any(|(report, &bad)| bad && report.engine.selected);
    });
    if let Some(trace) = trace {
        for &(t, phase, frequency) in &errors {
            trace.time.push(t);
            trace.phase.push(phase);
            trace.frequency.push(frequency);
        }
    }
    let requests: u64 = pair.requests.iter().sum();
    let per_source = requests as f64 / scenario.servers.max(1) as f64;
    metrics(scenario, &errors, per_source, falseticker_selected)
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
