//! The coordinator's contract, exercised through the in-memory pair.

use super::pair::{FarServer, Pair};
use super::*;
use crate::proto::server::{Server, ServerOptions};
use crate::wire::KissCode;

fn keys() -> crate::auth::KeyStore {
    crate::proto::test_keys()
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        sync: SyncConfig::default(),
        fallback_stratum: None,
        precision: -20,
    }
}

fn options() -> SourceOptions {
    SourceOptions {
        min_poll: 4,
        max_poll: 6,
        iburst: true,
    }
}

/// A pair with one keyed source per server offset, client clock `offset` s off.
fn pair_with(servers: &[f64], offset: f64, seed: u64) -> (Pair, Vec<AssociationId>) {
    let mut pair = Pair::new(config(), offset, 20e-6, seed);
    let key = keys().get(1).cloned().unwrap();
    let ids = servers
        .iter()
        .enumerate()
        .map(|(i, &server_offset)| {
            let server = Server::new(keys(), ServerOptions::default());
            let index = pair.add_server(FarServer::new(server, server_offset));
            let id = pair.coordinator.add_source(
                format!("server{i}:123"),
                SourceAuth::Key(key.clone()),
                options(),
                0.0,
            );
            pair.connect(id, index);
            id
        })
        .collect();
    (pair, ids)
}

fn steps(pair: &Pair) -> Vec<f64> {
    pair.commands
        .iter()
        .filter_map(|c| match c {
            ClockCommand::Step { offset } => Some(*offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_clock_a_quarter_second_off_is_stepped_once_then_tracked() {
    let (mut pair, _) = pair_with(&[0.0], 0.25, 1);
    pair.run_until(900.0, |_| {});
    let steps = steps(&pair);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!((steps[0] + 0.25).abs() < 0.01, "{steps:?}");
    assert!(pair.phase().abs() < 1e-3, "still {} s off", pair.phase());
    assert!(pair.coordinator.is_synchronized());
}

#[test]
fn the_reference_id_is_the_address_of_the_source_it_follows() {
    let (mut pair, _) = pair_with(&[0.0], 0.01, 2);
    pair.run_until(300.0, |_| {});
    let state = pair.coordinator.sync_state(pair.now, pair.local(pair.now));
    assert_eq!(state.stratum, 2);
    assert_eq!(
        state.reference_id,
        reference_id(FarServer::address(0)),
        "RFC 5905 §7.3: the IPv4 address of the reference"
    );
}

#[test]
fn a_majority_steps_the_clock_and_the_falseticker_is_never_selected() {
    // Two servers agree on the truth; the third is 5 s off.
    let (mut pair, ids) = pair_with(&[0.0, 0.0, 5.0], 0.5, 3);
    let bad = ids[2];
    let mut bad_selected = false;
    pair.run_until(600.0, |pair| {
        bad_selected |= pair
            .coordinator
            .report(pair.now)
            .iter()
            .any(|r| r.association == bad && r.engine.selected);
    });
    assert!(!bad_selected);
    assert_eq!(steps(&pair).len(), 1);
    assert!(pair.phase().abs() < 1e-3, "{} s off", pair.phase());
}

#[test]
fn one_of_two_sources_cannot_step_the_clock_at_start_up() {
    // Only one of two configured sources answers, and it says the clock is 0.5 s off:
    // start-up waits for a majority of the configured sources before a step.
    let (mut pair, _) = pair_with(&[0.0, 0.0], 0.5, 4);
    if let Some(server) = pair.servers.get_mut(1) {
        server.up = false;
    }
    pair.run_until(200.0, |_| {});
    assert!(steps(&pair).is_empty(), "{:?}", pair.commands);
}

#[test]
fn reachability_is_reported_as_it_changes() {
    let (mut pair, ids) = pair_with(&[0.0], 0.0, 5);
    pair.run_until(120.0, |_| {});
    if let Some(server) = pair.servers.get_mut(0) {
        server.up = false;
    }
    pair.run_until(2000.0, |_| {});
    let changes: Vec<_> = pair
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StateChanged { reachable, .. } if e.association == ids[0] => Some(reachable),
            _ => None,
        })
        .collect();
    assert_eq!(changes.first(), Some(&true), "{changes:?}");
    assert_eq!(changes.last(), Some(&false), "{changes:?}");
    let report = &pair.coordinator.report(pair.now)[0];
    assert_eq!(report.reach, 0);
    assert_eq!(
        report.poll,
        options().max_poll,
        "a silent source polls at max-poll"
    );
}

#[test]
fn a_rate_kiss_makes_the_source_poll_less_often() {
    let mut pair = Pair::new(config(), 0.0, 0.0, 6);
    let server = Server::new(keys(), ServerOptions::default());
    let index = pair.add_server(FarServer::new(server, 0.0));
    let id = pair.coordinator.add_source(
        "kisser:123",
        SourceAuth::Insecure,
        SourceOptions {
            iburst: false,
            ..options()
        },
        0.0,
    );
    pair.connect(id, index);
    pair.run_until(100.0, |_| {});
    let before = pair.requests[id.0];
    pair.servers[index].rate_kisses = true;
    pair.run_until(1000.0, |_| {});
    assert!(
        pair.events
            .iter()
            .any(|e| e.kind == EventKind::Kiss(KissCode::Rate))
    );
    let sent = pair.requests[id.0] - before;
    // 900 s at min-poll (16 s) would be 56 requests; RATE doubles the interval.
    assert!(sent <= 900 / 32 + 1, "{sent} requests while kissed");
    assert!(!pair.coordinator.is_synchronized() || pair.coordinator.report(pair.now)[0].poll > 4);
}

#[test]
fn a_name_that_does_not_resolve_is_looked_up_again_at_the_next_poll() {
    let mut pair = Pair::new(config(), 0.0, 0.0, 7);
    let id = pair
        .coordinator
        .add_source("nowhere:123", SourceAuth::Insecure, options(), 0.0);
    pair.run_until(100.0, |_| {});
    let failures = pair
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ResolveFailed { .. }) && e.association == id)
        .count();
    assert!(failures >= 2, "{failures}");
    assert_eq!(pair.requests.get(id.0).copied().unwrap_or(0), 0);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let (mut pair, _) = pair_with(&[0.0, 0.0, 0.0], 0.05, seed);
        pair.network.jitter = 1e-3;
        pair.run_until(600.0, |_| {});
        let phase = pair.phase();
        (pair.commands, phase)
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).1, run(10).1);
}

#[test]
fn an_unsynchronized_coordinator_serves_its_local_stratum_only_when_configured() {
    let pair = Pair::new(
        CoordinatorConfig {
            fallback_stratum: Some(7),
            ..config()
        },
        0.0,
        0.0,
        8,
    );
    let state = pair.coordinator.sync_state(0.0, pair.local(0.0));
    assert_eq!(state.stratum, 7);
    let (pair, _) = pair_with(&[0.0], 0.0, 8);
    assert_eq!(
        pair.coordinator.sync_state(0.0, pair.local(0.0)).stratum,
        16
    );
}
