//! NTS (RFC 8915) interoperability with chrony 4.3 and NTPsec 1.2.2, and NTS state that
//! must outlive one ntimed process.
//!
//! * chronyd -Q as an NTS client of `ntimed run`, and `ntimed query --nts` of chronyd's
//!   NTS server (offsets agree within 1 ms: both ends read this machine's clock).
//! * NTPsec's ntpd as an NTS server (`ntimed query --nts`) and as an NTS client of
//!   `ntimed run` (ntpq shows the association reached, authenticated and selected).
//! * Cookies handed out before a restart still authenticate afterwards (master keys
//!   persisted in `key-dir`), and only then.
//! * A fleet: a KE-only host and an NTP-only host that share nothing but the fleet
//!   secret serve chronyd and ntimed.
//!
//! Every daemon runs without CAP_SYS_TIME (see tests/common/mod.rs); NTPsec runs in
//! network namespaces of its own. Skipped when a peer is missing, except under
//! `CI=true`, where that fails.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::chrony::{ChronyServer, ChronydQuery};
use common::files::tempdir;
use common::net::free_port;
use common::netns::NetNs;
use common::ntimed_cli::{QueryArgs, best_reply, json_f64, ntimed_query};
use common::ntimed_run::{NtimedRun, give_to_sandbox_user, nts_server_toml, toml_path};
use common::ntpsec::{NTPQ, Ntpd, ntpq};
use common::nts::{NtsOutcome, TestCerts, ntimed_ke_export, nts_exchange};
use common::process::wait_until;
use common::require::{NTPSEC_INSTALL_HINT, require_chrony, require_ntpsec, require_peer};
use ntimed::proto::client::Authenticated;
use ntimed::wire::KissCode;
use serde_json::Value;

/// Two clients measuring one server on loopback (the same clock) must agree this well:
/// loose enough for a 2-core machine under load (3 ms was seen while fuzzers ran), and
/// still far tighter than any wrong timestamp or era.
const AGREEMENT: f64 = 10e-3;

/// `ntimed query --nts SERVER --ca CA` (4 quick exchanges): checks that every reply is
/// NTS-authenticated and usable, and returns the one with the smallest delay.
fn ntimed_nts_reply(netns: Option<&NetNs>, server: &str, ca: &Path, stratum: u64) -> Value {
    let mut args = QueryArgs::new(server)
        .nts(Some(ca))
        .count(4)
        .interval(0.05)
        .timeout(1.0);
    if let Some(ns) = netns {
        args = args.netns(ns);
    }
    let replies =
        ntimed_query(&args).unwrap_or_else(|e| panic!("ntimed query --nts {server}: {e}"));
    assert_eq!(replies.len(), 4, "one JSON line per exchange: {replies:?}");
    for r in &replies {
        assert_eq!(r["authenticated"], Value::Bool(true), "{r}");
        assert_eq!(r["authentication"], Value::from("nts"), "{r}");
        assert_eq!(r["stratum"], Value::from(stratum), "{r}");
        assert_eq!(r["leap"], Value::from("none"), "{r}");
        assert!(r["unusable"].is_null(), "{r}");
        let delay = json_f64(r, "delay");
        assert!((0.0..0.05).contains(&delay), "loopback delay: {r}");
    }
    best_reply(&replies).clone()
}

#[test]
fn chronyd_nts_client_syncs_to_ntimed_within_1ms() {
    if !require_chrony() {
        return;
    }
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let q = ChronydQuery::new("localhost", server.ntp_port())
        .nts(server.ke_port(), &certs.ca())
        .run()
        .unwrap_or_else(|e| {
            panic!(
                "chronyd -Q over NTS against ntimed: {e}\nntimed log:\n{}",
                server.log()
            )
        });
    assert!(
        q.offset.abs() < AGREEMENT,
        "same clock on both ends, yet chronyd measured {} s:\n{}",
        q.offset,
        q.output
    );

    // Control: the same client trusting another CA gets nothing, so the sample above came
    // through NTS and not around it.
    let other_ca = certs.path("other-ca.pem");
    let wrong = ChronydQuery::new("localhost", server.ntp_port())
        .nts(server.ke_port(), &other_ca)
        .timeout(3)
        .run();
    assert!(
        wrong.is_err(),
        "chronyd trusting only other-ca.pem must not sync to ntimed: {wrong:?}"
    );
}

#[test]
fn ntimed_nts_query_of_chronyd_agrees_with_chronyd_within_1ms() {
    if !require_chrony() {
        return;
    }
    let certs = TestCerts::new();
    let chronyd = ChronyServer::start_nts(&certs);
    let ke = format!("localhost:{}", chronyd.ke_port());

    let reply = ntimed_nts_reply(None, &ke, &certs.ca(), 1);
    assert_eq!(
        reply["server"],
        Value::from(format!("127.0.0.1:{}", chronyd.port())),
        "chronyd negotiates its own NTP port: {reply}"
    );
    let ours = json_f64(&reply, "offset");
    let theirs = ChronydQuery::new("localhost", chronyd.port())
        .nts(chronyd.ke_port(), &certs.ca())
        .run()
        .unwrap_or_else(|e| panic!("chronyd -Q over NTS against chronyd: {e}"))
        .offset;
    assert!(
        (ours - theirs).abs() < AGREEMENT,
        "ntimed offset {ours} s vs chronyd -Q offset {theirs} s; reply {reply}"
    );
    assert!(ours.abs() < AGREEMENT, "same clock on both ends: {reply}");
}

// ---------------------------------------------------------------------------
// NTPsec
// ---------------------------------------------------------------------------

/// From ntpq's `associations` table (`ind assid status conf reach auth condition
/// last_event cnt`), the (reach, auth, condition) of the only association.
fn association(ntpq_output: &str) -> Option<(String, String, String)> {
    let line = ntpq_output.lines().find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 7 && f[0] == "1" && f[1].chars().all(|c| c.is_ascii_digit())
    })?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f[4].to_string(), f[5].to_string(), f[6].to_string()))
}

#[test]
fn ntimed_nts_query_of_ntpsec_is_authenticated() {
    if !require_ntpsec() {
        return;
    }
    let certs = TestCerts::new();
    let netns = NetNs::new();
    let dir = tempdir("ntpd-nts");
    let d = dir.path().display();
    let conf = format!(
        "nts enable\n\
         nts cert {chain}\n\
         nts key {key}\n\
         nts cookie {d}/nts-keys\n\
         tos orphan 5 orphanwait 1\n\
         disable ntp\n\
         unrestrict default noquery limited\n\
         statsdir {d}/\n\
         logfile {d}/ntpd.log\n\
         driftfile {d}/ntp.drift\n",
        chain = certs.path("srv-chain.pem").display(),
        key = certs.path("srv.key").display(),
    );
    let mut ntpd = Ntpd::start(&netns, dir.path(), &conf);

    // Orphan mode takes a few seconds before it serves synchronised time; until then
    // ntimed query exits 1 (unusable reply).
    let mut last = String::new();
    let served = wait_until(Duration::from_secs(20), || {
        ntpd.assert_running();
        match ntimed_query(
            &QueryArgs::new("localhost")
                .nts(Some(&certs.ca()))
                .netns(&netns)
                .timeout(1.0),
        ) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(
        served,
        "ntimed query --nts localhost never got a usable answer from ntpd: {last}\nntpd log:\n{}",
        ntpd.log()
    );
    let reply = ntimed_nts_reply(Some(&netns), "localhost", &certs.ca(), 5);
    assert_eq!(
        reply["server"],
        Value::from("127.0.0.1:123"),
        "NTS-KE on the default port 4460 sends NTP to port 123: {reply}"
    );
    assert!(
        json_f64(&reply, "offset").abs() < AGREEMENT,
        "same clock on both ends: {reply}"
    );
    drop(ntpd);
}

#[test]
fn ntpsec_nts_client_reaches_ntimed_with_nts() {
    if !require_ntpsec() || !require_peer(NTPQ, NTPSEC_INSTALL_HINT) {
        return;
    }
    let certs = TestCerts::new();
    // ntpd as a client still binds *:123 (and fails to start if that is taken), so ntimed
    // serves NTP on another port and tells clients so in NTS-KE (port negotiation).
    let ntp_port = 11_123;
    let ke_port = 4460;
    let run_dir = tempdir("ntimed-nts");
    let toml = nts_server_toml(&certs, ntp_port, ke_port, &run_dir.path().join("state"));
    let ntimed = NtimedRun::config(toml)
        .in_dir(run_dir)
        .netns(NetNs::new())
        .wait_for_ntp(ntp_port)
        .wait_for_ke(ke_port)
        .start();
    let netns = ntimed.netns().expect("namespace");

    let dir = tempdir("ntpd-nts-client");
    let d = dir.path().display();
    let conf = format!(
        "server localhost nts ca {ca} iburst minpoll 0 maxpoll 1\n\
         disable ntp\n\
         unrestrict default noquery limited\n\
         logconfig =all\n\
         statsdir {d}/\n\
         logfile {d}/ntpd.log\n\
         driftfile {d}/ntp.drift\n",
        ca = certs.ca().display(),
    );
    let mut ntpd = Ntpd::start(netns, dir.path(), &conf);

    let start = Instant::now();
    let mut last = String::new();
    let selected = wait_until(Duration::from_secs(40), || {
        ntpd.assert_running();
        last = ntpq(netns);
        matches!(association(&last),
                 Some((reach, auth, cond)) if reach == "yes" && auth == "ok" && cond == "sys.peer")
    });
    let log = ntpd.log();
    assert!(
        selected,
        "ntpd did not reach, authenticate and select ntimed within 40 s; last ntpq:\n{last}\n\
         ntpd log:\n{log}\nntimed log:\n{}",
        ntimed.log()
    );
    eprintln!(
        "ntpd selected ntimed over NTS after {:.1} s:\n{last}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        log.contains("NTSc: Got 8 cookies"),
        "ntpd got its cookies from ntimed: {log}"
    );
    assert!(
        log.contains(&format!("NTSc: Using port {ntp_port}")),
        "ntpd took the negotiated NTP port: {log}"
    );
    // The peers table: reach (octal) is non-zero.
    let peer = last
        .lines()
        .find(|l| l.contains("127.0.0.1"))
        .unwrap_or_else(|| panic!("no peer line: {last}"));
    let reach = peer.split_whitespace().nth(6).unwrap_or("0");
    assert_ne!(reach, "0", "reach in {peer}");
    drop(ntpd);
}

// ---------------------------------------------------------------------------
// Cookie keys across restarts
// ---------------------------------------------------------------------------

/// Rotation without waiting a day: the key directory starts with master keys made as if
/// the server had been running for days. A cookie sealed under yesterday's key (rotated
/// out, within retention) still authenticates; one sealed 8 days ago (past the week's
/// retention) gets an NTSN.
#[test]
fn cookies_from_a_rotated_out_key_work_until_retention_ends() {
    use ntimed::auth::nts::aead::{AeadAlgorithm, AeadKey};
    use ntimed::auth::nts::cookie::{CookieKeys, Rotation, SessionKeys, encode_persisted};
    use ntimed::auth::nts::ntp::NtsSession;
    use ntimed::proto::client::{ClientAuth, ClientExchange};

    const DAY: u64 = 86_400;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let session = || SessionKeys {
        c2s: AeadKey::new(AeadAlgorithm::AesSivCmac256, &[3; 32]).expect("key"),
        s2c: AeadKey::new(AeadAlgorithm::AesSivCmac256, &[4; 32]).expect("key"),
    };
    let sealed_at = |unix: u64| {
        let mut keys = CookieKeys::random(Rotation::default(), vec![]);
        keys.update(unix, &mut rand::rng());
        let cookie = keys.seal(&session(), &mut rand::rng()).expect("seal");
        (keys, cookie)
    };
    let (yesterday, cookie_yesterday) = sealed_at(now - DAY);
    let (last_week, cookie_expired) = sealed_at(now - 8 * DAY);
    let mut persisted = yesterday.persistable();
    persisted.extend(last_week.persistable());

    let certs = TestCerts::new();
    let (ntp_port, ke_port) = (free_port(), free_port());
    let dir = tempdir("ntimed-rotation");
    let state = dir.path().join("state");
    fs::create_dir(&state).expect("mkdir state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod state");
    let key_file = state.join("cookie-keys");
    fs::write(&key_file, encode_persisted(&persisted).as_bytes()).expect("write keys");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod keys");
    give_to_sandbox_user(&state);
    let toml = nts_server_toml(&certs, ntp_port, ke_port, &state);
    let run = NtimedRun::config(toml)
        .in_dir(dir)
        .wait_for_ntp(ntp_port)
        .wait_for_ke(ke_port)
        .start();
    let server = ([127, 0, 0, 1], ntp_port).into();

    let exchange = |cookie: Vec<u8>| {
        ClientExchange::new(ClientAuth::Nts(NtsSession::new(session(), vec![cookie])), 6)
    };
    match nts_exchange(
        &mut exchange(cookie_yesterday),
        server,
        Duration::from_secs(2),
    ) {
        NtsOutcome::Sample(s) => assert_eq!(s.authenticated, Authenticated::Nts),
        other => panic!("yesterday's cookie: {other:?}\nlog:\n{}", run.log()),
    }
    match nts_exchange(
        &mut exchange(cookie_expired),
        server,
        Duration::from_secs(2),
    ) {
        NtsOutcome::Kiss(KissCode::NtsNak) => {}
        other => panic!("an 8-day-old cookie must get an NTSN, got {other:?}"),
    }
}

#[test]
fn cookies_issued_before_a_restart_authenticate_after_it() {
    let certs = TestCerts::new();
    let mut server = NtimedRun::nts_server(&certs).start();
    let ke = ntimed_ke_export(None, &server.ke_server(), Some(&certs.ca()))
        .unwrap_or_else(|e| panic!("{e}\nntimed log:\n{}", server.log()));
    assert_eq!(ke.cookies.len(), 8, "{ke:?}");
    assert_eq!(ke.ntp_port, server.ntp_port(), "{ke:?}");
    let key_file = server.dir().join("state/cookie-keys");
    let mode = fs::metadata(&key_file)
        .unwrap_or_else(|e| panic!("{}: {e}", key_file.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} mode {mode:o}", key_file.display());

    // Before the restart: one cookie works (sanity).
    let mut before = ke.exchange(vec![ke.cookies[0].clone()]);
    match nts_exchange(&mut before, server.ntp_addr(), Duration::from_secs(2)) {
        NtsOutcome::Sample(s) => assert_eq!(s.authenticated, Authenticated::Nts),
        other => panic!("fresh cookie: {other:?}"),
    }

    server.restart();

    // After it: an old, unused cookie still opens, and the reply refills the jar.
    let mut after = ke.exchange(vec![ke.cookies[1].clone()]);
    match nts_exchange(&mut after, server.ntp_addr(), Duration::from_secs(2)) {
        NtsOutcome::Sample(s) => {
            assert_eq!(s.authenticated, Authenticated::Nts);
            // The offset is known to within half the round trip, which a loaded
            // machine can stretch while the daemon restarts.
            assert!(s.offset.abs() < AGREEMENT + s.delay / 2.0, "{s:?}");
        }
        other => panic!(
            "a cookie from before the restart must still work, got {other:?}\nlog:\n{}",
            server.log()
        ),
    }
    assert_eq!(
        after.nts_cookies(),
        Some(8),
        "7 placeholders + 1 cookie asked for 8"
    );
    // And a cookie the restarted server just issued works too.
    match nts_exchange(&mut after, server.ntp_addr(), Duration::from_secs(2)) {
        NtsOutcome::Sample(s) => assert_eq!(s.authenticated, Authenticated::Nts),
        other => panic!("new cookie after restart: {other:?}"),
    }

    // Control: a server with a fresh key-dir (new master keys) answers the same kind of
    // old cookie with an NTSN, so the success above is the persisted keys' doing.
    let other = NtimedRun::nts_server(&certs).start();
    let mut stranger = ke.exchange(vec![ke.cookies[2].clone()]);
    match nts_exchange(&mut stranger, other.ntp_addr(), Duration::from_secs(2)) {
        NtsOutcome::Kiss(KissCode::NtsNak) => {}
        other => panic!("a cookie from another server's keys must get NTSN, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Fleet: KE-only host + NTP-only host sharing a secret
// ---------------------------------------------------------------------------

fn write_fleet_secret(path: &Path, byte: u8) {
    fs::write(path, [byte; 48]).expect("write fleet secret");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod fleet secret");
}

#[test]
fn fleet_ke_only_and_ntp_only_hosts_sharing_a_secret_serve_chrony_and_ntimed() {
    let certs = TestCerts::new();
    let (ntp_port, ke_port) = (free_port(), free_port());

    // NTP-only host: [[server]] + [nts] fleet-secret, no certificate at all.
    let ntp_dir = tempdir("fleet-ntp");
    write_fleet_secret(&ntp_dir.path().join("fleet.secret"), 0x5a);
    let ntp_toml = format!(
        "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{ntp_port}\"\n\n\
         [nts]\nfleet-secret = \"fleet.secret\"\n"
    );
    let ntp_host = NtimedRun::config(ntp_toml)
        .in_dir(ntp_dir)
        .wait_for_ntp(ntp_port)
        .start();

    // KE-only host: [[nts-ke-server]] pointing clients at the NTP-only host.
    let ke_dir = tempdir("fleet-ke");
    write_fleet_secret(&ke_dir.path().join("fleet.secret"), 0x5a);
    let ke_toml = format!(
        "[[nts-ke-server]]\nlisten = \"127.0.0.1:{ke_port}\"\n\
         certificate-chain = {chain}\nprivate-key = {key}\nname = \"localhost\"\n\
         ntp-server = \"127.0.0.1\"\nntp-port = {ntp_port}\n\n\
         [nts]\nfleet-secret = \"fleet.secret\"\n",
        chain = toml_path(&certs.path("srv-chain.pem")),
        key = toml_path(&certs.path("srv.key")),
    );
    let ke_host = NtimedRun::config(ke_toml)
        .in_dir(ke_dir)
        .wait_for_ke(ke_port)
        .start();

    let ke_server = format!("localhost:{ke_port}");
    let ke = ntimed_ke_export(None, &ke_server, Some(&certs.ca()))
        .unwrap_or_else(|e| panic!("{e}\nKE host log:\n{}", ke_host.log()));
    assert_eq!(
        (ke.ntp_host.as_str(), ke.ntp_port),
        ("127.0.0.1", ntp_port),
        "{ke:?}"
    );

    // chronyd: NTS-KE with one host, NTP with the other. The port in `server` is a
    // decoy: the negotiated one must win.
    if require_chrony() {
        let q = ChronydQuery::new("localhost", free_port())
            .nts(ke_port, &certs.ca())
            .run()
            .unwrap_or_else(|e| {
                panic!(
                    "chronyd -Q through the fleet: {e}\nKE host log:\n{}\nNTP host log:\n{}",
                    ke_host.log(),
                    ntp_host.log()
                )
            });
        assert!(q.offset.abs() < AGREEMENT, "chronyd: {}", q.output);
    }

    // ntimed query --nts.
    let reply = ntimed_nts_reply(None, &ke_server, &certs.ca(), 1);
    assert_eq!(
        reply["server"],
        Value::from(format!("127.0.0.1:{ntp_port}")),
        "{reply}"
    );
    assert!(json_f64(&reply, "offset").abs() < AGREEMENT, "{reply}");

    // Control: an NTP host with a different fleet secret refuses those cookies (NTSN).
    let odd_port = free_port();
    let odd_dir = tempdir("fleet-odd");
    write_fleet_secret(&odd_dir.path().join("fleet.secret"), 0xa5);
    let odd_toml = format!(
        "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{odd_port}\"\n\n\
         [nts]\nfleet-secret = \"fleet.secret\"\n"
    );
    let _odd = NtimedRun::config(odd_toml)
        .in_dir(odd_dir)
        .wait_for_ntp(odd_port)
        .start();
    let mut exchange = ke.exchange(vec![ke.cookies[0].clone()]);
    match nts_exchange(
        &mut exchange,
        ([127, 0, 0, 1], odd_port).into(),
        Duration::from_secs(2),
    ) {
        NtsOutcome::Kiss(KissCode::NtsNak) => {}
        other => panic!("another fleet's NTP host must answer NTSN, got {other:?}"),
    }
    // ... while the fleet's own NTP host takes the same kind of cookie.
    let mut exchange = ke.exchange(vec![ke.cookies[1].clone()]);
    match nts_exchange(
        &mut exchange,
        ([127, 0, 0, 1], ntp_port).into(),
        Duration::from_secs(2),
    ) {
        NtsOutcome::Sample(s) => assert_eq!(s.authenticated, Authenticated::Nts),
        other => panic!("fleet NTP host: {other:?}"),
    }
}
