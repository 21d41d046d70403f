//! Interleaved mode (RFC 9769) with chrony 4.3:
//!
//! * `chronyd -x` as a client with `xleave` polling `ntimed run` 16 times a second: its
//!   measurements log marks the samples after the first exchanges interleaved ("I").
//!
//! Skipped when chronyd is missing, except under `CI=true`, where that fails.

mod common;

use std::time::Duration;

use common::chrony::spawn_chronyd_x;
use common::files::tempdir;
use common::net::{free_port, loopback};
use common::ntimed_run::NtimedRun;
use common::process::wait_until;
use common::require::require_chrony;

/// The mode column (`MTxRx`: "4I" for an NTPv4 sample in interleaved mode) and the
/// peer delay of each sample in chronyd's measurements log.
fn sample_modes(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let mode = fields.get(fields.len().checked_sub(3)?)?;
            Some((mode.to_string(), fields.get(12)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn chronyd_with_xleave_gets_interleaved_replies_from_ntimed() {
    if !require_chrony() {
        return;
    }
    let port = free_port();
    let server = NtimedRun::local_server(loopback(port), None)
        .wait_for_ntp_answer(port)
        .start();
    let dir = tempdir("chronyd-xleave");
    let d = dir.path().display();
    let conf = format!(
        "server 127.0.0.1 port {port} minpoll -4 maxpoll -4 xleave\n\
         cmdport 0\n\
         bindcmdaddress /\n\
         pidfile {d}/chronyd.pid\n\
         driftfile {d}/drift\n\
         logdir {d}\n\
         log measurements\n"
    );
    let mut chronyd = spawn_chronyd_x("chronyd xleave client", dir.path(), &conf);
    let log_path = dir.path().join("measurements.log");
    let enough = wait_until(Duration::from_secs(20), || {
        chronyd.assert_running();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        sample_modes(&log).len() >= 20
    });
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        enough,
        "chronyd logged too few samples:\n{log}\nchronyd log:\n{}\nntimed log:\n{}",
        chronyd.log(),
        server.log()
    );
    let modes = sample_modes(&log);
    // The first reply to a new client can only be basic; after that every sample on an
    // idle loopback should be interleaved.
    let interleaved: Vec<f64> = modes
        .iter()
        .skip(2)
        .filter(|(m, _)| m.ends_with('I'))
        .map(|&(_, delay)| delay)
        .collect();
    assert!(
        interleaved.len() * 10 >= (modes.len() - 2) * 9,
        "only {} of {} samples after the first two interleaved:\n{log}",
        interleaved.len(),
        modes.len() - 2
    );
    // A reply pairing the wrong receive and transmit timestamps shows up as a delay of
    // a whole poll interval (62.5 ms here).
    assert!(
        interleaved.iter().all(|d| (0.0..0.03).contains(d)),
        "interleaved delays on loopback: {interleaved:?}\n{log}"
    );
}
