//! The coordinator's contract, exercised through the in-memory pair.

use super::pair::{FarServer, Pair};
use super::*;
use crate::proto::server::{Server, ServerOptions};
use crate::wire::{KissCode, Leap};
use std::net::SocketAddr;

fn keys() -> crate::auth::KeyStore {
    crate::proto::test_keys()
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        sync: SyncConfig::default(),
        local: None,
        precision: -20,
    }
}

fn options() -> SourceOptions {
    SourceOptions {
        min_poll: 4,
        max_poll: 6,
        iburst: true,
        xleave: false,
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
fn a_name_that_does_not_resolve_is_looked_up_again() {
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
            local: Some(LocalReference::at_stratum(7)),
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

fn peer_options() -> PeerOptions {
    PeerOptions {
        min_poll: 4,
        max_poll: 6,
        precision: -20,
    }
}

fn keyed_peer() -> PeerAuth {
    PeerAuth::Key(keys().get(1).cloned().unwrap())
}

/// A far peer at stratum 1 whose clock is `offset` s off the truth, for association
/// `id`.
fn far_peer(pair: &mut Pair, id: AssociationId, offset: f64, state: SyncState) -> usize {
    let peer = Peer::new(keyed_peer(), peer_options(), 1.0);
    pair.add_peer(id, peer, offset, state)
}

fn stratum_one() -> SyncState {
    SyncState::local_reference(1, pair::epoch(), -20)
}

/// The coordinator and a far peer, keyed, on a path with no jitter: each measures the
/// other's offset exactly, and prompt replies keep the hold (and the dispersion it
/// adds) negligible.
#[test]
fn a_peer_and_the_coordinator_measure_each_other() {
    let mut pair = Pair::new(config(), 0.0, 0.0, 11);
    pair.network.base_delay = 0.010;
    pair.network.jitter = 0.0;
    let id = pair
        .coordinator
        .add_peer("peer far:123", keyed_peer(), peer_options(), 0.0);
    let far = far_peer(&mut pair, id, 0.25, stratum_one());
    pair.run_until(600.0, |_| {});
    let ours: Vec<(f64, f64)> = pair
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Sample { offset, delay, .. } => Some((offset, delay)),
            _ => None,
        })
        .collect();
    assert!(ours.len() >= 8, "{ours:?}");
    let (first_offset, first_delay) = ours[0];
    assert!((first_offset - 0.25).abs() < 1e-6, "{ours:?}");
    assert!((first_delay - 0.020).abs() < 1e-6, "{ours:?}");
    assert!(
        !pair
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Dropped(_))),
        "every packet authenticated and fresh"
    );
    let theirs = &pair.peers[far].samples;
    assert!(theirs.len() >= 8, "{}", theirs.len());
    assert!((theirs[0].offset + 0.25).abs() < 1e-6, "{:?}", theirs[0]);
    let prompt = theirs.iter().filter(|s| s.root_dispersion < 1e-3).count();
    assert!(2 * prompt > theirs.len());
    // With only peers, the peers vote: the clock followed this one.
    assert!(pair.coordinator.is_synchronized());
    assert!((pair.phase() - 0.25).abs() < 1e-3, "{}", pair.phase());
}

/// A peer that names us as its reference is synchronized to us: its samples are never
/// used (or the two would steer each other), though it stays reachable.
#[test]
fn a_peer_synchronized_to_us_is_never_used() {
    let mut pair = Pair::new(config(), 0.0, 0.0, 12);
    let id = pair
        .coordinator
        .add_peer("peer far:123", keyed_peer(), peer_options(), 0.0);
    let looped = SyncState {
        stratum: 3,
        reference_id: reference_id(SocketAddr::new(pair::OUR_ADDRESS, 0)),
        ..stratum_one()
    };
    far_peer(&mut pair, id, 0.5, looped);
    pair.run_until(600.0, |_| {});
    assert!(
        pair.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Loop(_)))
    );
    assert!(
        !pair
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Sample { .. }))
    );
    assert!(!pair.coordinator.is_synchronized());
    assert!(
        pair.commands
            .iter()
            .all(|c| !matches!(c, ClockCommand::Step { .. }))
    );
    assert_eq!(pair.phase(), 0.0);
}

/// An NTS source keys, synchronizes, and when its server restarts with new cookie
/// keys (so it answers every request with an NTSN), runs NTS-KE again after two and
/// goes on.
#[test]
fn an_nts_source_re_keys_when_the_server_loses_its_keys() {
    use crate::auth::nts::cookie::{CookieKeys, Rotation};
    use std::sync::{Arc, RwLock};
    let fresh_keys = || {
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(1_800_000_000, &mut rand::rng());
        Arc::new(RwLock::new(keys))
    };
    let mut pair = Pair::new(config(), 0.2, 0.0, 13);
    let cookie_keys = fresh_keys();
    let server = Server::new(keys(), ServerOptions::default()).with_nts(cookie_keys.clone());
    let index = pair.add_server(FarServer::with_nts(server, cookie_keys, 0.0));
    let id = pair
        .coordinator
        .add_source("nts:123", SourceAuth::Nts, options(), 0.0);
    pair.connect(id, index);
    pair.run_until(300.0, |_| {});
    assert_eq!(pair.key_exchanges[id.0], 1);
    assert!(pair.coordinator.is_synchronized());
    assert!(pair.coordinator.report(pair.now)[0].nts_cookies.is_some());
    // The server restarts with keys of its own: our cookies no longer open.
    let restarted = fresh_keys();
    let server = Server::new(keys(), ServerOptions::default()).with_nts(restarted.clone());
    pair.servers[index] = FarServer::with_nts(server, restarted, 0.0);
    let samples_before = pair
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Sample { .. }))
        .count();
    pair.run_until(900.0, |_| {});
    assert_eq!(pair.key_exchanges[id.0], 2, "re-keyed once");
    assert!(
        pair.events
            .iter()
            .any(|e| e.kind == EventKind::Kiss(KissCode::NtsNak))
    );
    let samples_after = pair
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Sample { .. }))
        .count();
    assert!(samples_after > samples_before + 3, "samples resumed");
    assert!(pair.phase().abs() < 1e-3);
}

/// The first request goes out as soon as the name resolves, however long that takes:
/// a poll before it would only push the first request a whole interval back.
#[test]
fn the_first_request_goes_out_once_the_name_resolves() {
    let (mut pair, ids) = pair_with(&[0.0], 0.0, 14);
    pair.resolve_delay = 0.5;
    let id = ids[0];
    pair.run_until(0.4, |_| {});
    assert_eq!(pair.requests[id.0], 0);
    pair.run_until(0.6, |_| {});
    assert_eq!(pair.requests[id.0], 1);
}

/// A reloaded key file: a keyed source whose server changed its key goes silent, and
/// answers again once the coordinator has the new key too.
#[test]
fn a_keyed_source_takes_the_new_key_of_a_reload() {
    let (mut pair, ids) = pair_with(&[0.0], 0.0, 14);
    pair.run_until(120.0, |_| {});
    let reachable = |pair: &Pair| pair.coordinator.report(pair.now)[ids[0].0].reach != 0;
    assert!(reachable(&pair));
    let rotated = crate::auth::KeyStore::parse(
        "rotated",
        "1 AES128 HEX:0f0e0d0c0b0a09080706050403020100\n",
        crate::auth::KeyFileFormat::Chrony,
    )
    .unwrap();
    pair.servers[0].server.replace_keys(rotated.clone());
    pair.run_until(2000.0, |_| {});
    assert!(
        !reachable(&pair),
        "answers signed with the old key are refused"
    );
    assert_eq!(pair.coordinator.replace_keys(&rotated), 1);
    pair.run_until(2600.0, |_| {});
    assert!(reachable(&pair), "the new key is used");
}

/// A pair whose only time source is a reference clock with `error` seconds of its own.
fn refclock_pair(offset: f64, error: f64, delay: f64) -> (Pair, AssociationId) {
    let mut pair = Pair::new(config(), offset, 20e-6, 11);
    let options = crate::refclock::RefclockOptions {
        refid: *b"GPS\0",
        delay,
        ..Default::default()
    };
    let id = pair
        .coordinator
        .add_refclock("refclock GPS shm:2", options, 0.0);
    pair.refclocks.push((id, error));
    (pair, id)
}

/// The master role: a reference clock steers the clock, and the server role answers
/// at stratum 1 with its refid, root delay the configured delay; it needs no address,
/// is trusted by configuration and shows as the reference.
#[test]
fn a_refclock_makes_a_stratum_one_server_with_its_refid() {
    let (mut pair, id) = refclock_pair(0.05, 0.0, 2e-3);
    pair.run_until(600.0, |_| {});
    assert!(pair.coordinator.is_synchronized());
    assert!(pair.phase().abs() < 1e-4, "still {} s off", pair.phase());
    let state = pair.coordinator.sync_state(pair.now, pair.local(pair.now));
    assert_eq!(state.stratum, 1);
    assert_eq!(state.reference_id, ReferenceId(*b"GPS\0"));
    assert_eq!(state.reference_id.describe(state.stratum), "GPS");
    assert!((state.root_delay - 2e-3).abs() < 1e-9, "{state:?}");
    assert!(state.root_dispersion < 1e-3, "{state:?}");
    let report = pair.coordinator.report(pair.now);
    let row = report.iter().find(|r| r.association == id).unwrap();
    assert_eq!(row.name, "refclock GPS shm:2");
    assert_eq!(row.auth, AuthReport::Configured);
    assert_eq!(row.engine.state, crate::sync::SourceState::Reference);
    assert_eq!(row.reach, 0xff);
    assert_eq!(row.poll, 4);
    assert_eq!(row.drops, Some((0, None)));
    // One sample a poll reaches the engine, not one a second.
    let samples = pair
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Sample { .. }))
        .count();
    assert!((30..=40).contains(&samples), "{samples} samples in 600 s");
    assert!(
        pair.requests.iter().all(|&n| n == 0),
        "a refclock sends nothing"
    );
}

/// A refclock that falls silent is unreachable after a few polls, and the server
/// role stops claiming stratum 1 only through the engine's usual holdover.
#[test]
fn a_silent_refclock_becomes_unreachable() {
    let (mut pair, id) = refclock_pair(0.0, 0.0, 0.0);
    pair.run_until(200.0, |_| {});
    assert!(pair.coordinator.is_synchronized());
    pair.refclocks.clear();
    pair.run_until(200.0 + 16.0 * f64::from(UNREACHABLE_POLLS) - 8.0, |_| {});
    let reachable = |pair: &Pair| {
        pair.coordinator
            .report(pair.now)
            .iter()
            .find(|r| r.association == id)
            .map(|r| r.engine.reachable)
    };
    assert_eq!(reachable(&pair), Some(true));
    pair.run_until(200.0 + 16.0 * f64::from(UNREACHABLE_POLLS + 2), |_| {});
    assert_eq!(reachable(&pair), Some(false));
    let row = pair.coordinator.report(pair.now);
    assert_eq!(row[0].reach & 0x0f, 0);
}

/// ADVERSARIAL 38: bad readings are counted against the refclock (the last reason
/// kept), and never reach the engine; a non-finite reading is a drop too.
#[test]
fn refclock_drops_are_counted() {
    let (mut pair, id) = refclock_pair(0.0, 0.0, 0.0);
    pair.coordinator.handle_refclock_drop(
        id,
        crate::refclock::RefclockDrop::Shm(crate::refclock::shm::ShmDrop::Torn),
    );
    let bad = crate::refclock::RefclockSample {
        local: pair.local(0.0),
        offset: f64::NAN,
        dispersion: 0.0,
        leap: Leap::NoWarning,
    };
    pair.coordinator.handle_refclock_sample(id, &bad, 0.5, 0.0);
    pair.coordinator
        .handle_refclock_sample(id, &bad, 0.6, f64::INFINITY);
    let report = pair.coordinator.report(0.7);
    let (count, last) = report[0].drops.unwrap();
    assert_eq!(count, 3);
    assert_eq!(last, Some(crate::refclock::RefclockDrop::NotFinite));
    pair.coordinator.handle_refclock_drop(
        id,
        crate::refclock::RefclockDrop::Shm(crate::refclock::shm::ShmDrop::Torn),
    );
    let report = pair.coordinator.report(0.8);
    let (count, last) = report[0].drops.unwrap();
    assert_eq!(count, 4);
    assert_eq!(
        last.map(|l| l.to_string()).as_deref(),
        Some("SHM: torn read (count changed while copying)")
    );
    // Not an association of another kind: ignored.
    let (mut other, _) = pair_with(&[0.0], 0.0, 1);
    other
        .coordinator
        .handle_refclock_sample(AssociationId(0), &bad, 0.0, 0.0);
    assert_eq!(other.coordinator.report(0.0)[0].drops, None);
}

/// A refclock that disagrees with two agreeing network sources is a falseticker:
/// the configured trust does not outvote a majority.
/// A `noselect` refclock 0.5 s off never reaches selection (the servers steer, and
/// it is no falseticker), yet its combined offset is there for a PPS lock.
#[test]
fn a_noselect_refclock_only_serves_as_a_lock() {
    let (mut pair, servers) = pair_with(&[0.0, 0.0], 0.0, 12);
    let options = crate::refclock::RefclockOptions {
        refid: *b"NMEA",
        noselect: true,
        ..Default::default()
    };
    let id = pair
        .coordinator
        .add_refclock("refclock NMEA shm:0", options, 0.0);
    pair.refclocks.push((id, 0.5));
    pair.run_until(900.0, |_| {});
    let report = pair.coordinator.report(pair.now);
    let state = |a: AssociationId| {
        report
            .iter()
            .find(|r| r.association == a)
            .unwrap()
            .engine
            .state
    };
    assert!(!matches!(
        state(id),
        crate::sync::SourceState::Reference
            | crate::sync::SourceState::Selectable
            | crate::sync::SourceState::Falseticker
    ));
    assert_ne!(state(servers[0]), crate::sync::SourceState::Falseticker);
    assert!(pair.phase().abs() < 1e-3);
    let lock = pair.coordinator.refclock_estimate(id).unwrap();
    assert!((lock.offset - 0.5).abs() < 0.01, "{lock:?}");
    assert!(pair.coordinator.refclock_estimate(servers[0]).is_none());
}

#[test]
fn a_refclock_is_selected_like_any_source() {
    let (mut pair, servers) = pair_with(&[0.0, 0.0], 0.0, 12);
    let options = crate::refclock::RefclockOptions {
        refid: *b"GPS\0",
        ..Default::default()
    };
    let id = pair
        .coordinator
        .add_refclock("refclock GPS shm:2", options, 0.0);
    pair.refclocks.push((id, 0.5));
    pair.run_until(900.0, |_| {});
    let report = pair.coordinator.report(pair.now);
    let state = |a: AssociationId| {
        report
            .iter()
            .find(|r| r.association == a)
            .unwrap()
            .engine
            .state
    };
    assert_eq!(state(id), crate::sync::SourceState::Falseticker);
    assert_ne!(state(servers[0]), crate::sync::SourceState::Falseticker);
    assert!(pair.phase().abs() < 1e-3);
}

/// An interleaved source (`xleave`) against an interleaving server: each sample
/// measures the exchange a poll before the reply that completes it, so it is taken as
/// of then, without the corrections made since; taken as of now, the clock swung around
/// the truth by more each time (46 ms after 30 minutes). A clock 50 ms off settles as
/// closely as with basic replies.
#[test]
fn an_interleaved_source_is_taken_as_of_the_exchange_it_measures() {
    let run = |xleave: bool| -> (f64, u64) {
        let mut pair = Pair::new(config(), 0.05, 20e-6, 7);
        let server = Server::new(keys(), ServerOptions::default()).with_interleave(64);
        let index = pair.add_server(FarServer::new(server, 0.0));
        let key = keys().get(1).cloned().unwrap();
        let options = SourceOptions {
            xleave,
            ..options()
        };
        let id = pair
            .coordinator
            .add_source("server:123", SourceAuth::Key(key), options, 0.0);
        pair.connect(id, index);
        let mut worst = 0.0f64;
        pair.run_until(1800.0, |pair| {
            if pair.now > 900.0 {
                worst = worst.max(pair.phase().abs());
            }
        });
        let interleaved = pair.servers.get(index).map_or(0, |s| {
            s.server
                .stats
                .interleaved
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        (worst, interleaved)
    };
    let (basic, none) = run(false);
    let (interleaved, answers) = run(true);
    assert_eq!(none, 0);
    assert!(answers > 10, "{answers} interleaved answers");
    assert!(
        interleaved < 3.0 * basic.max(20e-6),
        "interleaved {interleaved} s off after 900 s, basic {basic} s"
    );
}
