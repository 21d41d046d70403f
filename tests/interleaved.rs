//! Interleaved mode (RFC 9769) with chrony 4.3:
//!
//! * `chronyd -x` as a client with `xleave` polling `ntimed run` 16 times a second: its
//!   measurements log marks the samples after the first exchanges interleaved ("I").
//!   Skipped when chronyd is missing, except under `CI=true`, where that fails.
//! * `ntimed run` with `xleave = true` on a `[[source]]` (observing the clock only,
//!   polling every second) polling another `ntimed run` through a relay in the test that reads every packet:
//!   from the second request on the requests ask for interleaved mode, and the server's
//!   replies are interleaved; the same against `chronyd -x` as the server (interleaved
//!   from the third request, as chrony does).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::chrony::{ChronyServer, spawn_chronyd_x};
use common::files::tempdir;
use common::keys::TestKeys;
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

/// The 8 bytes of an NTP packet's field at `offset` (24 origin, 32 receive, 40 transmit).
fn field(packet: &[u8], offset: usize) -> [u8; 8] {
    packet
        .get(offset..offset + 8)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 8])
}

/// Starts `ntimed run` with an `xleave` source polling (every second) a relay that
/// forwards to 127.0.0.1:`upstream`, and returns for each of 8 exchanges whether the
/// request asked for interleaving and whether the reply was interleaved.
fn xleave_exchanges_through_a_relay(upstream: u16) -> Vec<(bool, bool)> {
    let relay = UdpSocket::bind("127.0.0.1:0").expect("bind the relay");
    let forward = UdpSocket::bind("127.0.0.1:0").expect("bind the relay's upstream side");
    forward
        .connect(loopback(upstream))
        .expect("connect upstream");
    relay
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    forward
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let client = NtimedRun::config(format!(
        "[clock]\nmode = \"observe\"\n\n[[source]]\naddress = \"{}\"\ninsecure = true\n\
         xleave = true\nmin-poll = 0\nmax-poll = 0\n",
        relay.local_addr().expect("relay address")
    ))
    .start();
    let mut exchanges = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while exchanges.len() < 8 && Instant::now() < deadline {
        let Ok((len, from)) = relay.recv_from(&mut buf) else {
            continue;
        };
        let request = buf[..len].to_vec();
        forward.send(&request).expect("forward the request");
        let Ok(len) = forward.recv(&mut buf) else {
            continue;
        };
        relay.send_to(&buf[..len], from).expect("return the reply");
        let asked = field(&request, 24) != [0; 8];
        let interleaved = field(&buf[..len], 24) == field(&request, 32);
        exchanges.push((asked, interleaved));
    }
    assert!(
        exchanges.len() >= 8,
        "too few exchanges: {exchanges:?}\nclient log:\n{}",
        client.log()
    );
    exchanges
}

#[test]
fn an_xleave_source_gets_interleaved_replies_from_ntimed() {
    let port = free_port();
    let _server = NtimedRun::local_server(loopback(port), None)
        .wait_for_ntp_answer(port)
        .start();
    let exchanges = xleave_exchanges_through_a_relay(port);
    assert_eq!(exchanges[0], (false, false), "the first request is basic");
    assert!(
        exchanges.iter().skip(1).all(|&e| e == (true, true)),
        "every later request asks for interleaving and gets it: {exchanges:?}"
    );
}

#[test]
fn an_xleave_source_gets_interleaved_replies_from_chronyd() {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let exchanges = xleave_exchanges_through_a_relay(chronyd.port());
    assert_eq!(exchanges[0], (false, false), "the first request is basic");
    // chronyd saves a client's receive timestamp once it asks for interleaving, so its
    // second reply is basic and the rest interleaved.
    assert_eq!(exchanges[1], (true, false), "{exchanges:?}");
    assert!(
        exchanges.iter().skip(2).all(|&e| e == (true, true)),
        "from the third request on, interleaved: {exchanges:?}\n{}",
        chronyd.log()
    );
}
