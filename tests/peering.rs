//! Keyed peering between sites (`[[peer]]`, symmetric modes 1 and 2), against real
//! chronyd and between two ntimed sites, all on loopback. Each daemon has its own
//! address in 127/8 so that reference ids (the loop check) mean what they would on a
//! real network:
//!
//! * 127.0.0.1: ntimed site A        * 127.0.0.3: A's upstream (ntimed, `[local]` 1)
//! * 127.0.0.2: site B (ntimed/chrony) * 127.0.0.4: B's upstream (ntimed, `[local]` 1)
//!
//! Every daemon runs with CAP_SYS_TIME out of its bounding set; sites use simulated
//! clocks, chronyd runs with `-x`.

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::chrony::spawn_chronyd_x;
use common::files::tempdir;
use common::keys::{KEY_AES128, KEY_SHA256, TestKeys};
use common::net::{free_port, sntp_probe};
use common::ntimed_cli::{QueryArgs, ntimed_query};
use common::ntimed_run::{NtimedRun, toml_path};
use common::process::{Daemon, wait_until};
use common::require::require_chrony;
use serde_json::Value;
use tempfile::TempDir;

const SITE_A: [u8; 4] = [127, 0, 0, 1];
const SITE_B: [u8; 4] = [127, 0, 0, 2];
const UPSTREAM_A: [u8; 4] = [127, 0, 0, 3];
const UPSTREAM_B: [u8; 4] = [127, 0, 0, 4];
/// How close a site's served time must come to the truth (the system clock).
const PULLED_IN: f64 = 2e-3;

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    (ip, port).into()
}

/// An ntimed serving its local clock at stratum 1 on `listen`: a site's upstream.
fn upstream(listen: SocketAddr) -> NtimedRun {
    let toml = format!("[local]\nstratum = 1\n\n[[server]]\nlisten = \"{listen}\"\n");
    NtimedRun::config(toml).wait_for_ntp(listen.port()).start()
}

/// A site: a simulated clock `offset` seconds off, its upstream, and a keyed peer.
fn site_toml(keys: &Path, listen: SocketAddr, upstream: SocketAddr, peer: SocketAddr) -> String {
    site_toml_with(keys, listen, upstream, peer, KEY_SHA256, 0.3)
}

fn site_toml_with(
    keys: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    peer: SocketAddr,
    key: u32,
    offset: f64,
) -> String {
    format!(
        "[keys]\nfile = {keys}\n\n\
         [clock]\nmode = \"simulated\"\nsimulated-offset = {offset}\nsimulated-frequency = 15\n\n\
         [[server]]\nlisten = \"{listen}\"\n\n\
         [[source]]\naddress = \"{upstream}\"\ninsecure = true\niburst = true\nmin-poll = 0\nmax-poll = 1\n\n\
         [[peer]]\naddress = \"{peer}\"\nkey = {key}\nmin-poll = 0\nmax-poll = 1\n",
        keys = toml_path(keys),
    )
}

/// What `server` says, if it answers.
fn served(server: SocketAddr) -> Option<Value> {
    let args = QueryArgs::new(server.to_string()).timeout(1.0);
    ntimed_query(&args).ok()?.into_iter().next()
}

/// Waits until `site` serves synchronized time near the truth from `reference` at
/// `stratum`.
fn wait_following(site: SocketAddr, reference: [u8; 4], stratum: u64, run: &NtimedRun) {
    let refid = SocketAddr::from((reference, 0)).ip().to_string();
    let mut last = None;
    let ok = wait_until(Duration::from_secs(60), || {
        last = served(site);
        last.as_ref().is_some_and(|r| {
            r["refid"] == refid.as_str()
                && r["stratum"] == stratum
                && r["offset"].as_f64().is_some_and(|o| o.abs() < PULLED_IN)
        })
    });
    assert!(
        ok,
        "{site} never served time from {refid} at stratum {stratum}; last reply {last:?}\nlog:\n{}",
        run.log()
    );
}

/// Two sites, each with its own upstream, peering under a SHA256 key. When A loses its
/// upstream it follows B (and B, seeing A synchronized to it, does not use A); when
/// the upstream returns, A goes back to it.
#[test]
fn two_sites_back_each_other_up() {
    let keys = TestKeys::new();
    let (pa, pb, pua, pub_) = (free_port(), free_port(), free_port(), free_port());
    let (a, b) = (addr(SITE_A, pa), addr(SITE_B, pb));
    let (ua, ub) = (addr(UPSTREAM_A, pua), addr(UPSTREAM_B, pub_));
    let mut upstream_a = upstream(ua);
    let _upstream_b = upstream(ub);
    let site_a = NtimedRun::config(site_toml(&keys.chrony, a, ua, b))
        .wait_for_ntp(pa)
        .start();
    let site_b = NtimedRun::config(site_toml(&keys.chrony, b, ub, a))
        .wait_for_ntp(pb)
        .start();
    wait_following(a, UPSTREAM_A, 2, &site_a);
    wait_following(b, UPSTREAM_B, 2, &site_b);
    let peer_b = format!("peer {b}: reachable, selected");
    assert!(
        wait_until(Duration::from_secs(20), || site_a.log().contains(&peer_b)),
        "A never selected its peer:\n{}",
        site_a.log()
    );

    upstream_a.stop();
    wait_following(a, SITE_B, 3, &site_a);
    assert!(
        wait_until(Duration::from_secs(20), || site_b
            .log()
            .contains("synchronized to us")),
        "B did not notice A follows it:\n{}",
        site_b.log()
    );
    // B still follows its own upstream, never A.
    wait_following(b, UPSTREAM_B, 2, &site_b);

    upstream_a.restart();
    wait_following(a, UPSTREAM_A, 2, &site_a);
    wait_following(b, UPSTREAM_B, 2, &site_b);
}

/// A site whose upstream and peer are both silent: nothing it serves may come from
/// anywhere else.
fn isolated_site(keys: &TestKeys) -> (NtimedRun, SocketAddr, UdpSocket) {
    let port = free_port();
    let site = addr(SITE_A, port);
    let dead_upstream = addr(UPSTREAM_A, free_port());
    // The peer's address, held by the test: nothing there answers unless the test does.
    let peer = UdpSocket::bind(addr(SITE_B, 0)).expect("bind 127.0.0.2");
    let peer_addr = peer.local_addr().expect("address");
    let toml = site_toml(&keys.chrony, site, dead_upstream, peer_addr);
    (
        NtimedRun::config(toml).wait_for_ntp(port).start(),
        site,
        peer,
    )
}

fn assert_unsynchronized(site: SocketAddr, run: &NtimedRun, why: &str) {
    let probe = sntp_probe(site, Duration::from_secs(1));
    assert_eq!(probe, Some((3, 16)), "{why}; log:\n{}", run.log());
}

/// A symmetric-active packet at time `at` (stratum 1), signed with `key`.
fn symmetric_active(at: ntimed::wire::NtpTimestamp, key: &ntimed::auth::SymmetricKey) -> Vec<u8> {
    let header = ntimed::wire::Header {
        mode: ntimed::wire::Mode::SymmetricActive,
        stratum: 1,
        reference_id: ntimed::wire::ReferenceId(*b"GPS\0"),
        reference_time: at,
        ..ntimed::wire::Header::client_request(0, at)
    };
    let mut packet = Vec::new();
    header.write(&mut packet);
    ntimed::auth::mac::append_mac(key, &mut packet);
    packet
}

/// ADVERSARIAL 21: symmetric-active packets from an address that is no `[[peer]]`, with
/// good stratum-1 time, get a stateless passive answer no larger than themselves under a
/// key the site has (none under the peer's key, nor with `unknown-peers = "drop"`), and
/// never synchronize a site that has nothing else.
#[test]
fn unconfigured_symmetric_packets_never_steer() {
    let keys = TestKeys::new();
    let (site, a, _peer) = isolated_site(&keys);
    let store = ntimed::auth::KeyStore::load(&keys.chrony, ntimed::auth::KeyFileFormat::Chrony)
        .expect("test keys");
    let (peer_key, other_key) = (
        store.get(KEY_SHA256).expect("key 1"),
        store.get(KEY_AES128).expect("key 2"),
    );
    let attacker = UdpSocket::bind(("127.0.0.9", 0)).expect("bind 127.0.0.9");
    attacker
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let (mut answered, mut answered_under_peer_key) = (0, 0);
    // Two kinds of packet: under a key the site has, and under the peer's. Each answer
    // is told apart by its origin (our transmit), not by when it came.
    let mut sent_under = std::collections::HashMap::new();
    for _ in 0..60 {
        for (key, peer) in [(other_key, false), (peer_key, true)] {
            let packet = symmetric_active(ntimed::daemon::now(), key);
            sent_under.insert(packet[40..48].to_vec(), (peer, packet.len()));
            attacker.send_to(&packet, a).expect("send");
        }
        while let Ok((len, _)) = attacker.recv_from(&mut buf) {
            let reply = ntimed::wire::Header::parse(&buf[..len]).expect("a packet");
            assert_eq!(reply.mode, ntimed::wire::Mode::SymmetricPassive);
            let origin = reply.origin_time.to_bits().to_be_bytes();
            let &(peer, request_len) = sent_under
                .get(&origin[..])
                .expect("answers a packet we sent");
            assert!(len <= request_len, "amplified: {len} > {request_len}");
            if peer {
                answered_under_peer_key += 1;
            } else {
                answered += 1;
            }
        }
    }
    assert!(answered > 0, "no stateless answers at all");
    assert_eq!(answered_under_peer_key, 0, "answered under the peer's key");
    assert_unsynchronized(a, &site, "unconfigured peers steered the clock");

    // The same with unknown-peers = "drop": silence.
    let pd = free_port();
    let d = addr(SITE_A, pd);
    let toml = site_toml(
        &keys.chrony,
        d,
        addr(UPSTREAM_A, free_port()),
        addr(SITE_B, free_port()),
    )
    .replace(
        &format!("listen = \"{d}\"\n"),
        &format!("listen = \"{d}\"\nunknown-peers = \"drop\"\n"),
    );
    let _dropping = NtimedRun::config(toml).wait_for_ntp(pd).start();
    for _ in 0..5 {
        attacker
            .send_to(&symmetric_active(ntimed::daemon::now(), other_key), d)
            .expect("send");
        assert!(
            attacker.recv_from(&mut buf).is_err(),
            "answered despite drop"
        );
    }
}

/// Someone on the path at the peer's address, without the key, sends the site's own
/// packets back (they verify: both ends sign with one key), and bounces them off the
/// site's server for signed answers. The peer never becomes reachable and the site,
/// with nothing else to follow, stays unsynchronized: it never measures itself.
#[test]
fn reflected_packets_never_make_a_peer() {
    let keys = TestKeys::new();
    let (site, a, peer) = isolated_site(&keys);
    let bouncer = UdpSocket::bind(("127.0.0.9", 0)).expect("bind 127.0.0.9");
    bouncer
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let mut reflected = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let Ok((len, from)) = peer.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from, a, "peer packets come from the site's server socket");
        let packet = buf[..len].to_vec();
        peer.send_to(&packet, a).expect("reflect");
        reflected += 1;
        bouncer.send_to(&packet, a).expect("bounce");
        if let Ok((len, _)) = bouncer.recv_from(&mut buf) {
            peer.send_to(&buf[..len], a).expect("forward the answer");
        }
    }
    assert!(
        reflected >= 5,
        "the site sent only {reflected} packets to its peer"
    );
    assert!(
        !site.log().contains("reachable, selected"),
        "{}",
        site.log()
    );
    assert!(
        !site.log().contains(&format!(
            "peer {}: reachable",
            peer.local_addr().expect("addr")
        )),
        "{}",
        site.log()
    );
    assert_unsynchronized(a, &site, "reflections steered the clock");
}

// ---------------------------------------------------------------------------
// chronyd as site B
// ---------------------------------------------------------------------------

/// chronyd at 127.0.0.2 following its own upstream and peering with site A.
struct ChronyPeer {
    daemon: Daemon,
    socket: std::path::PathBuf,
    _dir: TempDir,
}

impl ChronyPeer {
    fn start(keyfile: &Path, port: u16, upstream: SocketAddr, peer: SocketAddr, key: u32) -> Self {
        let dir = tempdir("chrony-peer");
        let d = dir.path().display();
        // chronyc's socket must be in a directory only its owner can enter.
        let cmd_dir = dir.path().join("cmd");
        fs::create_dir(&cmd_dir).expect("mkdir cmd");
        fs::set_permissions(
            &cmd_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod cmd");
        let socket = cmd_dir.join("chronyd.sock");
        let conf = format!(
            "port {port}\n\
             bindaddress 127.0.0.2\n\
             keyfile {keyfile}\n\
             server {} port {} iburst minpoll 0 maxpoll 1\n\
             peer {} port {} key {key} minpoll 0 maxpoll 1\n\
             cmdport 0\n\
             bindcmdaddress {}\n\
             pidfile {d}/chronyd.pid\n\
             driftfile {d}/drift\n",
            upstream.ip(),
            upstream.port(),
            peer.ip(),
            peer.port(),
            socket.display(),
            keyfile = keyfile.display(),
        );
        let mut daemon = spawn_chronyd_x("chronyd peer", dir.path(), &conf);
        let up = wait_until(Duration::from_secs(15), || {
            daemon.assert_running();
            socket.exists()
        });
        assert!(
            up,
            "chronyd never opened its command socket:\n{}",
            daemon.log()
        );
        daemon.assert_cannot_set_clock();
        ChronyPeer {
            daemon,
            socket,
            _dir: dir,
        }
    }

    /// chronyd's packet counts for `peer` (`chronyc ntpdata`): sent, received, and
    /// received and valid.
    fn counts(&self, peer: &str) -> Option<(u64, u64, u64)> {
        let out = std::process::Command::new("chronyc")
            .arg("-h")
            .arg(&self.socket)
            .args(["-n", "ntpdata", peer])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
        };
        Some((
            field("Total TX")?,
            field("Total RX")?,
            field("Total valid RX")?,
        ))
    }

    /// chronyc's view of `name`: (mode, state, reach), from `sources -c`.
    fn source(&self, name: &str) -> Option<(String, String, u32)> {
        let out = std::process::Command::new("chronyc")
            .arg("-h")
            .arg(&self.socket)
            .args(["-n", "-c", "sources"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            match fields[..] {
                [mode, state, n, _, _, reach, ..] if n == name => Some((
                    mode.to_string(),
                    state.to_string(),
                    u32::from_str_radix(reach, 8).ok()?,
                )),
                _ => None,
            }
        })
    }
}

/// ntimed (site A) and chronyd (site B) peer under `key`: each follows its own
/// upstream, and each reports the other reachable and valid (chrony: mode `=`,
/// selectable; ntimed: reachable and selected).
fn peers_with_chrony(key: u32) {
    let keys = TestKeys::new();
    let (pa, pb, pua, pub_) = (free_port(), free_port(), free_port(), free_port());
    let (a, b) = (addr(SITE_A, pa), addr(SITE_B, pb));
    let (ua, ub) = (addr(UPSTREAM_A, pua), addr(UPSTREAM_B, pub_));
    let _upstream_a = upstream(ua);
    let _upstream_b = upstream(ub);
    let toml = site_toml_with(&keys.chrony, a, ua, b, key, 0.3);
    let site = NtimedRun::config(toml).wait_for_ntp(pa).start();
    let chrony = ChronyPeer::start(&keys.chrony, pb, ub, a, key);
    wait_following(a, UPSTREAM_A, 2, &site);
    let mut seen = None;
    let valid = wait_until(Duration::from_secs(40), || {
        seen = chrony.source(&a.ip().to_string());
        // '*' synchronized to it, '+' combined, '-' selectable but not combined.
        seen.as_ref().is_some_and(|(mode, state, reach)| {
            mode == "=" && "*+-".contains(state.as_str()) && *reach != 0
        })
    });
    assert!(
        valid,
        "chronyd never found ntimed a valid peer: {seen:?}\nchronyd:\n{}\nntimed:\n{}",
        chrony.daemon.log(),
        site.log()
    );
    let line = format!("peer {b}: reachable, selected");
    assert!(
        wait_until(Duration::from_secs(30), || site.log().contains(&line)),
        "ntimed never selected chronyd:\n{}\nchronyd:\n{}",
        site.log(),
        chrony.daemon.log()
    );
    // Both still follow their own upstreams: neither is steered by the other.
    wait_following(a, UPSTREAM_A, 2, &site);
}

#[test]
fn peers_with_chronyd_sha256() {
    if require_chrony() {
        peers_with_chrony(KEY_SHA256);
    }
}

#[test]
fn peers_with_chronyd_aes128() {
    if require_chrony() {
        peers_with_chrony(KEY_AES128);
    }
}

/// The same key id with another secret, on either side: neither end ever uses the
/// other. ntimed serves from its upstream throughout; chrony never marks ntimed
/// reachable.
#[test]
fn a_wrong_key_on_either_side_is_never_used() {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    for (ntimed_keys, chrony_keys) in [
        (&keys.chrony_wrong, &keys.chrony),
        (&keys.chrony, &keys.chrony_wrong),
    ] {
        let (pa, pb, pua, pub_) = (free_port(), free_port(), free_port(), free_port());
        let (a, b) = (addr(SITE_A, pa), addr(SITE_B, pb));
        let (ua, ub) = (addr(UPSTREAM_A, pua), addr(UPSTREAM_B, pub_));
        let _upstream_a = upstream(ua);
        let _upstream_b = upstream(ub);
        let toml = site_toml_with(ntimed_keys, a, ua, b, KEY_AES128, 0.3);
        let site = NtimedRun::config(toml).wait_for_ntp(pa).start();
        let chrony = ChronyPeer::start(chrony_keys, pb, ub, a, KEY_AES128);
        wait_following(a, UPSTREAM_A, 2, &site);
        // Many 1 s polls on both sides.
        std::thread::sleep(Duration::from_secs(10));
        let seen = chrony.source(&a.ip().to_string());
        assert!(
            seen.as_ref()
                .is_some_and(|(mode, _, reach)| mode == "=" && *reach == 0),
            "chronyd heard from ntimed under the wrong key: {seen:?}\n{}",
            chrony.daemon.log()
        );
        let peer = format!("peer {b}: reachable");
        assert!(!site.log().contains(&peer), "{}", site.log());
        // Packets did flow both ways: each side heard the other and refused it.
        let counts = chrony.counts(&a.ip().to_string());
        assert!(
            counts.is_some_and(|(sent, received, valid)| sent > 3 && received > 3 && valid == 0),
            "chronyd counts (sent, received, valid): {counts:?}"
        );
        wait_following(a, UPSTREAM_A, 2, &site);
    }
}
