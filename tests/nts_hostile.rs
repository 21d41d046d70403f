//! Hostile TLS, NTS-KE and NTS-on-NTP input against a live `ntimed run`, end to end
//! (ADVERSARIAL.md items 1, 5, 9-10 and 11-14; record-level cases are unit tests).
//!
//! * NTS-KE server: TLS 1.2, no ALPN, another ALPN and resumption (the way to 0-RTT) are
//!   all refused; slowloris, drip-fed handshakes and 64 KiB of junk records are cut off
//!   by the server's timeout and size cap, with memory bounded, while a legitimate
//!   client still gets keys within 1 s and UDP NTP keeps answering; 1000 connections
//!   held open from one address lock out neither another address nor, once they have
//!   stalled, their own; 64 exchanges at once from one address all complete.
//! * NTS-KE client (`ntimed ke`, `ntimed query --nts`): expired, not yet valid,
//!   wrong-name, wrong-purpose and untrusted certificates abort with a message naming
//!   the problem; `ntimed run` refuses to start with a bad certificate, a key that does
//!   not match it, a name it does not carry or a private key others can read.
//! * NTS on NTP: malformed NTS requests get no reply; a bad cookie, tag or header byte
//!   gets an NTSN that echoes the unique id and nothing else; a request for many
//!   cookies gets at most 8 and never a reply larger than itself.
//!
//! Every `ntimed run` here runs without CAP_SYS_TIME, on 127.0.0.1.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::net::{free_port, sntp_probe, udp_roundtrip};
use common::ntimed_cli::{ntimed_command, ntimed_ke};
use common::ntimed_run::{NtimedRun, toml_path};
use common::nts::{
    EF_AUTHENTICATOR, EF_COOKIE, EF_COOKIE_PLACEHOLDER, EF_UNIQUE_ID, KeExport, NtsOutcome,
    TestCerts, extension_fields, ntimed_ke_export, ntp_client_header, nts_exchange,
    open_authenticator, push_authenticator, push_ef,
};
use common::process::{run_with_deadline, vm_rss_kib};
use ntimed::auth::nts::aead::AeadKey;
use ntimed::daemon::nts::KeLimits;
use ntimed::proto::client::Authenticated;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The server's whole-exchange NTS-KE timeout (`KeLimits::default().timeout`).
const KE_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on the server's resident memory under these attacks.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

// ---------------------------------------------------------------------------
// A raw NTS-KE client (rustls, blocking)
// ---------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 client trusting only `ca`, offering `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// A well-formed NTS-KE request: Next Protocol NTPv4, AEAD AES-SIV-CMAC-256, End.
fn ke_request() -> Vec<u8> {
    vec![
        0x80, 0x01, 0x00, 0x02, 0x00, 0x00, // critical Next Protocol: NTPv4
        0x80, 0x04, 0x00, 0x02, 0x00, 0x0f, // critical AEAD: 15
        0x80, 0x00, 0x00, 0x00, // critical End of Message
    ]
}

/// Record types of an NTS-KE message (as far as it parses).
fn ke_record_types(bytes: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 4 {
        let t = u16::from_be_bytes([bytes[at], bytes[at + 1]]) & 0x7fff;
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        types.push(t);
        at += 4 + len;
    }
    types
}
const KE_NEW_COOKIE: u16 = 5;
const KE_ERROR: u16 = 2;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The address attackers connect from in the tests of limits per source; honest
/// clients use 127.0.0.1, another source.
const ATTACKER: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from` (each address
/// is a source of its own to the server's limits).
fn tcp_connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(socket.into())
}

/// TCP connect and a complete TLS handshake with `localhost` at `port`.
fn tls_connect(port: u16, config: Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    tls_connect_from([127, 0, 0, 1], port, config)
}

/// [`tls_connect`] from the loopback address `from`.
fn tls_connect_from(
    from: [u8; 4],
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<Tls, String> {
    let tcp = tcp_connect_from(from, port).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// Reads until the server closes (or errors, or `limit` passes); returns what came and
/// how it ended.
fn read_until_closed(tls: &mut Tls, limit: Duration) -> (Vec<u8>, String) {
    tls.sock.set_read_timeout(Some(limit)).ok();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (got, "closed".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, "still open (timed out)".into());
            }
            Err(e) => return (got, format!("error: {e}")),
        }
    }
}

/// One NTS-KE exchange with `config`; the server's answer bytes.
fn ke_exchange(port: u16, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    ke_exchange_from([127, 0, 0, 1], port, config)
}

/// [`ke_exchange`] from the loopback address `from`.
fn ke_exchange_from(
    from: [u8; 4],
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let mut tls = tls_connect_from(from, port, config)?;
    tls.write_all(&ke_request())
        .and_then(|_| tls.flush())
        .map_err(|e| format!("write: {e}"))?;
    let (got, how) = read_until_closed(&mut tls, Duration::from_secs(5));
    if how.starts_with("still open") {
        return Err(format!("server kept the connection open after {got:?}"));
    }
    Ok(got)
}

// ---------------------------------------------------------------------------
// ADVERSARIAL 1: TLS version, ALPN, 0-RTT
// ---------------------------------------------------------------------------

#[test]
fn ke_server_answers_a_correct_tls13_ntske_client_with_8_cookies() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let answer = ke_exchange(server.ke_port(), client_config(&certs.ca(), &[b"ntske/1"]))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let types = ke_record_types(&answer);
    assert_eq!(
        types.iter().filter(|&&t| t == KE_NEW_COOKIE).count(),
        8,
        "{types:?}"
    );
    assert_eq!(
        types.last(),
        Some(&0),
        "ends with End of Message: {types:?}"
    );
}

#[test]
fn ke_server_refuses_tls12() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-tls1_2", "-alpn", "ntske/1", "-connect"])
        .arg(format!("127.0.0.1:{}", server.ke_port()))
        .arg("-CAfile")
        .arg(certs.ca());
    let out = run_with_deadline(cmd, Duration::from_secs(10)).expect("openssl s_client");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("alert protocol version") || all.contains("alert number 70"),
        "a TLS 1.2 ClientHello must be answered with a protocol_version alert:\n{all}"
    );
    assert!(
        all.contains("Cipher is (NONE)"),
        "no TLS 1.2 session: {all}"
    );
}

#[test]
fn ke_server_sends_nothing_to_a_client_without_alpn() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    // rustls completes a handshake without ALPN; ntimed must then close without an
    // NTS-KE answer.
    match ke_exchange(server.ke_port(), client_config(&certs.ca(), &[])) {
        Ok(answer) => assert!(
            answer.is_empty(),
            "no ALPN, yet the server answered {:?}",
            ke_record_types(&answer)
        ),
        Err(e) => assert!(!e.contains("kept the connection open"), "{e}"),
    }
}

#[test]
fn ke_server_refuses_another_alpn() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    for alpn in [&b"http/1.1"[..], b"ntske/2", b"ntske/10"] {
        match tls_connect(server.ke_port(), client_config(&certs.ca(), &[alpn])) {
            Err(e) => assert!(
                e.contains("NoApplicationProtocol")
                    || e.contains("no_application_protocol")
                    || e.contains("handshake"),
                "{e}"
            ),
            Ok(mut tls) => {
                tls.write_all(&ke_request()).ok();
                let (answer, _) = read_until_closed(&mut tls, Duration::from_secs(5));
                panic!(
                    "ALPN {:?} accepted; answer {:?}",
                    String::from_utf8_lossy(alpn),
                    ke_record_types(&answer)
                );
            }
        }
    }
}

#[test]
fn ke_server_offers_no_resumption_so_no_early_data() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let mut config = (*client_config(&certs.ca(), &[b"ntske/1"])).clone();
    config.enable_early_data = true;
    let config = Arc::new(config);
    for round in 0..2 {
        let mut tls = tls_connect(server.ke_port(), config.clone()).expect("handshake");
        assert_eq!(
            tls.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "round {round}: no session tickets, so never a resumed (0-RTT capable) handshake"
        );
        assert!(!tls.conn.is_early_data_accepted(), "round {round}");
        tls.write_all(&ke_request()).expect("write");
        let (answer, _) = read_until_closed(&mut tls, Duration::from_secs(5));
        assert!(ke_record_types(&answer).contains(&KE_NEW_COOKIE));
    }
}

// ---------------------------------------------------------------------------
// ADVERSARIAL 5: slowloris, drip-feeding, junk, resource bounds
// ---------------------------------------------------------------------------

/// The start of a TLS ClientHello record that announces 512 bytes and sends 11.
const PARTIAL_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03,
];

/// `ntimed ke` against `server`; panics unless it gets keys within `limit`.
fn legitimate_ke_within(server: &NtimedRun, certs: &TestCerts, limit: Duration) -> Duration {
    let start = Instant::now();
    let out = ntimed_ke(None, &server.ke_server(), Some(&certs.ca()), false).expect("ntimed ke");
    let took = start.elapsed();
    assert!(
        out.status.success() && out.stdout.contains("cookies     8"),
        "legitimate NTS-KE failed: {}",
        out.describe()
    );
    assert!(took < limit, "legitimate NTS-KE took {took:?}");
    took
}

/// Waits until every socket has been closed by the server; returns when the last one was.
fn wait_all_closed(socks: &mut [TcpStream], limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    for (i, s) in socks.iter_mut().enumerate() {
        let left = limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).ok();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // an alert, then the close
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => {
                    return Err(format!(
                        "connection {i} still open after {:?}: {e}",
                        start.elapsed()
                    ));
                }
            }
        }
    }
    Ok(start.elapsed())
}

#[test]
fn slowloris_does_not_delay_a_legitimate_ke_or_udp_ntp_and_is_timed_out() {
    let certs = TestCerts::new();
    let mut server = NtimedRun::nts_server(&certs).start();
    let rss_before = vm_rss_kib(server.pid()).expect("VmRSS");
    let opened = Instant::now();
    let mut socks: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = tcp_connect_from(ATTACKER, server.ke_port()).expect("connect");
            s.write_all(&PARTIAL_CLIENT_HELLO).expect("partial hello");
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    let took = legitimate_ke_within(&server, &certs, Duration::from_secs(1));
    assert!(
        matches!(
            sntp_probe(server.ntp_addr(), Duration::from_secs(1)),
            Some((0, 1))
        ),
        "UDP NTP must keep answering during the attack"
    );
    let rss = vm_rss_kib(server.pid()).expect("VmRSS");
    assert!(
        rss < RSS_LIMIT_KIB,
        "VmRSS {rss} KiB with 200 idle handshakes"
    );

    // The server, not the client, ends every idle connection after its 3 s timeout.
    let closed = wait_all_closed(&mut socks, KE_TIMEOUT + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    let since_open = opened.elapsed();
    assert!(
        since_open >= KE_TIMEOUT - Duration::from_millis(500),
        "closed before the timeout ({since_open:?}): not by the timeout"
    );
    server.assert_running();
    eprintln!(
        "legitimate KE took {took:?}; VmRSS {rss_before} -> {rss} KiB; all 200 closed \
         {:?} after opening ({closed:?} of waiting)",
        since_open
    );
}

#[test]
fn drip_fed_handshake_is_cut_off_by_the_overall_timeout() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    // One byte every 200 ms: never idle, never finished.
    let mut s = TcpStream::connect(("127.0.0.1", server.ke_port())).expect("connect");
    let start = Instant::now();
    let mut closed_at = None;
    for byte in PARTIAL_CLIENT_HELLO.iter().chain([0u8; 60].iter()).cycle() {
        if start.elapsed() > KE_TIMEOUT + Duration::from_secs(3) {
            break;
        }
        if s.write_all(&[*byte]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(start.elapsed());
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                closed_at = Some(start.elapsed());
                break;
            }
            _ => {}
        }
    }
    let closed_at = closed_at.expect("the server never closed a drip-fed handshake");
    assert!(
        closed_at >= KE_TIMEOUT - Duration::from_millis(500)
            && closed_at <= KE_TIMEOUT + Duration::from_secs(2),
        "closed after {closed_at:?}, expected about {KE_TIMEOUT:?}"
    );
}

/// Completes a handshake with ALPN ntske/1 and writes `junk` as application data
/// (ignoring write errors: the server may close early), then reads what comes back.
fn send_junk_after_handshake(port: u16, ca: &Path, junk: &[u8]) -> (Vec<u8>, String, Duration) {
    let mut tls = tls_connect(port, client_config(ca, &[b"ntske/1"])).expect("handshake");
    let start = Instant::now();
    for chunk in junk.chunks(4096) {
        if tls.write_all(chunk).and_then(|_| tls.flush()).is_err() {
            break;
        }
    }
    let (got, how) = read_until_closed(&mut tls, KE_TIMEOUT + Duration::from_secs(3));
    (got, how, start.elapsed())
}

/// 64 KiB of unknown non-critical records (type 0x0fff, 1020-byte bodies) and never an
/// End of Message.
fn endless_records() -> Vec<u8> {
    let mut junk = Vec::new();
    while junk.len() < 64 * 1024 {
        junk.extend_from_slice(&[0x0f, 0xff, 0x03, 0xfc]);
        junk.extend(std::iter::repeat_n(0x41, 1020));
    }
    junk
}

/// One record header announcing 65535 bytes, then 64 KiB of junk.
fn one_huge_record() -> Vec<u8> {
    let mut junk = vec![0x0f, 0xff, 0xff, 0xff];
    junk.extend(std::iter::repeat_n(0x42, 64 * 1024));
    junk
}

#[test]
fn junk_records_after_the_handshake_get_no_cookies_and_bounded_memory() {
    let certs = TestCerts::new();
    let mut server = NtimedRun::nts_server(&certs).start();
    let ca = certs.ca();
    for (what, junk) in [
        (
            "64 KiB of records without End of Message",
            endless_records(),
        ),
        ("a 65535-byte record and 64 KiB of junk", one_huge_record()),
    ] {
        let (got, how, took) = send_junk_after_handshake(server.ke_port(), &ca, &junk);
        let types = ke_record_types(&got);
        assert!(
            !types.contains(&KE_NEW_COOKIE),
            "{what}: cookies handed out: {types:?}"
        );
        assert!(
            got.is_empty() || types.contains(&KE_ERROR),
            "{what}: anything sent back must be an Error: {types:?}"
        );
        assert!(
            !how.starts_with("still open"),
            "{what}: {how} after {took:?}"
        );
        eprintln!("{what}: server sent records {types:?}, then {how} after {took:?}");
    }

    // Twenty at once: memory stays bounded and legitimate clients keep being served.
    let port = server.ke_port();
    let attackers: Vec<_> = (0..20)
        .map(|i| {
            let ca = ca.clone();
            let junk = if i % 2 == 0 {
                endless_records()
            } else {
                one_huge_record()
            };
            thread::spawn(move || send_junk_after_handshake(port, &ca, &junk))
        })
        .collect();
    let mut peak = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(vm_rss_kib(server.pid()).expect("VmRSS"));
        thread::sleep(Duration::from_millis(50));
    }
    legitimate_ke_within(&server, &certs, Duration::from_secs(1));
    for a in attackers {
        let (got, how, _) = a.join().expect("attacker thread");
        assert!(!ke_record_types(&got).contains(&KE_NEW_COOKIE));
        assert!(!how.starts_with("still open"), "{how}");
    }
    assert!(peak < RSS_LIMIT_KIB, "VmRSS peaked at {peak} KiB");
    server.assert_running();
}

/// A connection the server has not closed (nothing to read yet).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    matches!(s.read(&mut [0u8; 64]), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// ADVERSARIAL 5: 1000 connections held open from one address lock out neither a
/// client at another address (at once) nor one at the same address (once the held
/// connections have stalled): a stalled connection makes room, and no honest exchange
/// waits for the timeout of the held ones.
#[test]
fn legitimate_ke_is_served_while_1000_idle_connections_are_held() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let mut socks: Vec<TcpStream> = (0..1000)
        .filter_map(|_| {
            let mut s = tcp_connect_from(ATTACKER, server.ke_port()).ok()?;
            s.write_all(&PARTIAL_CLIENT_HELLO).ok();
            Some(s)
        })
        .collect();
    let opened = Instant::now();
    legitimate_ke_within(&server, &certs, Duration::from_secs(1));

    // The same address, after a fair wait: the held connections have stalled.
    thread::sleep(KeLimits::default().stalled_after + Duration::from_millis(300));
    let config = client_config(&certs.ca(), &[b"ntske/1"]);
    let answer = ke_exchange_from(ATTACKER, server.ke_port(), config)
        .unwrap_or_else(|e| panic!("NTS-KE from the attacked address: {e}\n{}", server.log()));
    let types = ke_record_types(&answer);
    assert_eq!(
        types.iter().filter(|t| **t == KE_NEW_COOKIE).count(),
        8,
        "{types:?}"
    );
    let held = socks
        .iter_mut()
        .map(still_open)
        .filter(|open| *open)
        .count();
    assert!(
        held > 0,
        "the server had closed every held connection ({:?} after opening): the client \
         only got in once they timed out",
        opened.elapsed()
    );
    eprintln!("{held} held connections still open when the same address got its keys");
}

/// `clients` threads from 127.0.0.1, started together, each running `rounds` key
/// exchanges in a row against a fresh NTS server: the failures, and the server's log.
fn exchanges_from_one_address(clients: usize, rounds: usize) -> (Vec<String>, String) {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let config = client_config(&certs.ca(), &[b"ntske/1"]);
    let port = server.ke_port();
    let start = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (config, start) = (config.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                (0..rounds)
                    .map(|_| ke_exchange(port, config.clone()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, client) in threads.into_iter().enumerate() {
        for (round, result) in client
            .join()
            .expect("client thread")
            .into_iter()
            .enumerate()
        {
            match result {
                Ok(answer) => {
                    let types = ke_record_types(&answer);
                    let cookies = types.iter().filter(|t| **t == KE_NEW_COOKIE).count();
                    if cookies != 8 {
                        failures.push(format!("client {i}, round {round}: records {types:?}"));
                    }
                }
                Err(e) => failures.push(format!("client {i}, round {round}: {e}")),
            }
        }
    }
    (failures, server.log())
}

/// ADVERSARIAL 5: 64 honest key exchanges at once from one address (clients behind a
/// NAT) all complete: none is ended to admit another. (Before, each connection over 8
/// from one source evicted one still in progress.)
#[test]
fn sixty_four_concurrent_exchanges_from_one_address_all_complete() {
    let (failures, log) = exchanges_from_one_address(64, 1);
    assert!(
        failures.is_empty(),
        "{} of 64 exchanges failed:\n{}\n{log}",
        failures.len(),
        failures.join("\n"),
    );
}

/// ADVERSARIAL 5: 32 clients behind one address, six exchanges each in a row: 192,
/// three times the source's handshake burst, all complete, since the source's rate
/// holds it back only while another source waits. (Before, 24 of 1000 completed.)
#[test]
fn a_crowd_behind_one_address_is_not_held_to_its_rate_when_alone() {
    let (failures, log) = exchanges_from_one_address(32, 6);
    assert!(
        failures.is_empty(),
        "{} of 192 exchanges failed:\n{}\n{log}",
        failures.len(),
        failures.join("\n"),
    );
}

// ---------------------------------------------------------------------------
// ADVERSARIAL 10 (client): bad certificates abort; ADVERSARIAL 31 (server): refuse
// ---------------------------------------------------------------------------

/// A TLS 1.3 server with ALPN ntske/1 presenting `chain`/`key` (no checks of its own)
/// for one connection; the thread ends after it or after 15 s.
fn one_shot_tls_server(chain: &Path, key: &Path) -> (u16, thread::JoinHandle<()>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
        .expect("chain")
        .map(|c| c.expect("PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    config.alpn_protocols = vec![b"ntske/1".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            match listener.accept() {
                Ok((mut tcp, _)) => {
                    tcp.set_nonblocking(false).ok();
                    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                        return;
                    };
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            return;
                        }
                    }
                    // A client that accepted this certificate gets no cookies anyway.
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, handle)
}

#[test]
fn ke_client_aborts_on_bad_certificates_and_names_the_problem() {
    let certs = TestCerts::new();
    let chain_untrusted = certs.dir().join("untrusted-chain.pem");
    fs::write(
        &chain_untrusted,
        format!(
            "{}{}",
            fs::read_to_string(certs.path("untrusted.pem")).expect("read"),
            fs::read_to_string(certs.path("other-ca.pem")).expect("read")
        ),
    )
    .expect("write chain");
    let cases: [(&str, &Path, &str, &[&str]); 5] = [
        (
            "expired",
            &certs.path("expired.pem"),
            "expired.key",
            &["expired"],
        ),
        (
            "not yet valid",
            &certs.path("not-yet-valid.pem"),
            "not-yet-valid.key",
            &["not valid yet"],
        ),
        (
            "wrong name",
            &certs.path("wrong-name.pem"),
            "wrong-name.key",
            &["not valid for name", "localhost"],
        ),
        (
            "wrong purpose (clientAuth only)",
            &certs.path("wrong-eku.pem"),
            "wrong-eku.key",
            &["extended key usage", "server"],
        ),
        (
            "untrusted issuer",
            &chain_untrusted,
            "untrusted.key",
            &["UnknownIssuer"],
        ),
    ];
    for (what, chain, key, expected) in cases {
        for command in ["ke", "query"] {
            let (port, server) = one_shot_tls_server(chain, &certs.path(key));
            let target = format!("localhost:{port}");
            let mut cmd = ntimed_command(None);
            cmd.arg(command);
            if command == "query" {
                cmd.args(["--nts", "--timeout", "1"]);
            }
            cmd.arg(&target).arg("--ca").arg(certs.ca());
            let out = run_with_deadline(cmd, Duration::from_secs(20)).expect("ntimed");
            server.join().expect("server thread");
            assert!(
                !out.status.success(),
                "ntimed {command} accepted a certificate that is {what}: {}",
                out.describe()
            );
            for word in expected {
                assert!(
                    out.stderr.contains(word),
                    "ntimed {command}, certificate {what}: the message should say {word:?}: {}",
                    out.describe()
                );
            }
            eprintln!("ntimed {command}, {what}: {}", out.stderr.trim());
            assert!(
                !out.stdout.contains("cookies") && !out.stdout.contains("offset"),
                "ntimed {command}, {what}: nothing negotiated or measured: {}",
                out.describe()
            );
        }
    }
}

/// Runs `ntimed run` with `toml` in `dir` and expects it to exit non-zero at once,
/// with a message containing every string in `expected`.
fn expect_refusal(dir: &Path, toml: &str, what: &str, expected: &[&str]) {
    let conf = dir.join(format!("{}.toml", what.replace(' ', "-")));
    fs::write(&conf, toml).expect("write config");
    let out = NtimedRun::config_file(&conf)
        .run_to_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ntimed run with {what} did not refuse to start: {e}"));
    assert!(
        !out.status.success(),
        "ntimed run started with {what}: {}",
        out.describe()
    );
    eprintln!("ntimed run with {what}: {}", out.stderr.trim());
    for word in expected {
        assert!(
            out.stderr.to_lowercase().contains(&word.to_lowercase()),
            "ntimed run with {what}: the message should name {word:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn ntimed_run_refuses_bad_certificates_mismatched_keys_wrong_names_and_exposed_keys() {
    let certs = TestCerts::new();
    let dir = certs.dir();
    let toml = |chain: &str, key: &str, name: Option<&str>| {
        format!(
            "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{}\"\n\n\
             [[nts-ke-server]]\nlisten = \"127.0.0.1:{}\"\n\
             certificate-chain = \"{chain}\"\nprivate-key = \"{key}\"\n{}\n\
             [nts]\nkey-dir = \"state\"\n",
            free_port(),
            free_port(),
            name.map(|n| format!("name = \"{n}\"\n"))
                .unwrap_or_default(),
        )
    };
    expect_refusal(
        dir,
        &toml("expired.pem", "expired.key", None),
        "an expired certificate",
        &["expired.pem", "expired"],
    );
    expect_refusal(
        dir,
        &toml("not-yet-valid.pem", "not-yet-valid.key", None),
        "a certificate not yet valid",
        &["not-yet-valid.pem", "not valid before"],
    );
    expect_refusal(
        dir,
        &toml("srv.pem", "wrong-name.key", None),
        "a key that does not match the certificate",
        // rustls' own check words it "keys may not be consistent: KeyMismatch".
        &["wrong-name.key", "match"],
    );
    expect_refusal(
        dir,
        &toml("srv-chain.pem", "srv.key", Some("other.example")),
        "a name the certificate does not carry",
        &["srv-chain.pem", "other.example"],
    );
    let exposed = dir.join("exposed.key");
    fs::copy(certs.path("srv.key"), &exposed).expect("copy key");
    for mode in [0o644, 0o604, 0o640] {
        fs::set_permissions(&exposed, fs::Permissions::from_mode(mode)).expect("chmod");
        expect_refusal(
            dir,
            &toml("srv-chain.pem", "exposed.key", None),
            &format!("a private key of mode {mode:o}"),
            &["exposed.key"],
        );
    }
    // Control: the same configuration with good files starts.
    let ke_port = free_port();
    let ntp_port = free_port();
    let good = format!(
        "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{ntp_port}\"\n\n\
         [[nts-ke-server]]\nlisten = \"127.0.0.1:{ke_port}\"\n\
         certificate-chain = {}\nprivate-key = {}\nname = \"localhost\"\n\n\
         [nts]\nkey-dir = \"state\"\n",
        toml_path(&certs.path("srv-chain.pem")),
        toml_path(&certs.path("srv.key")),
    );
    let _run = NtimedRun::config(good)
        .wait_for_ntp(ntp_port)
        .wait_for_ke(ke_port)
        .start();
}

// ---------------------------------------------------------------------------
// ADVERSARIAL 11-14: NTS fields in NTP requests
// ---------------------------------------------------------------------------

/// How long to wait before concluding "no reply" (replies on loopback take < 10 ms).
const NO_REPLY_WAIT: Duration = Duration::from_millis(500);

struct Fixture {
    server: NtimedRun,
    ke: KeExport,
    c2s: AeadKey,
    s2c: AeadKey,
    _certs: TestCerts,
}

impl Fixture {
    fn new() -> Fixture {
        let certs = TestCerts::new();
        let server = NtimedRun::nts_server(&certs).start();
        let ke = ntimed_ke_export(None, &server.ke_server(), Some(&certs.ca()))
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert_eq!(ke.cookies.len(), 8);
        Fixture {
            c2s: ke.c2s_key(),
            s2c: ke.s2c_key(),
            server,
            ke,
            _certs: certs,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.ntp_addr()
    }

    fn cookie(&self) -> Vec<u8> {
        self.ke.cookies[0].clone()
    }

    fn send(&self, request: &[u8]) -> Option<Vec<u8>> {
        udp_roundtrip(self.addr(), request, NO_REPLY_WAIT)
    }
}

fn random_uid() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

fn random_transmit() -> u64 {
    rand::random::<u64>() | 1
}

/// Header, unique id, cookie and `placeholders` placeholders, without authenticator.
fn unsealed(uid: &[u8], cookie: &[u8], placeholders: usize, transmit: u64) -> Vec<u8> {
    let mut p = ntp_client_header(transmit);
    push_ef(&mut p, EF_UNIQUE_ID, uid);
    push_ef(&mut p, EF_COOKIE, cookie);
    for _ in 0..placeholders {
        push_ef(&mut p, EF_COOKIE_PLACEHOLDER, &vec![0; cookie.len()]);
    }
    p
}

/// A well-formed NTS request.
fn sealed(f: &Fixture, uid: &[u8], cookie: &[u8], placeholders: usize, transmit: u64) -> Vec<u8> {
    let mut p = unsealed(uid, cookie, placeholders, transmit);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    p
}

/// Checks an authenticated NTS reply: mode 4, our origin, our unique id, the cookies
/// inside the authenticator; returns how many cookies it carried.
fn check_authentic_reply(f: &Fixture, request: &[u8], reply: &[u8], uid: &[u8]) -> usize {
    assert!(reply.len() >= 48, "reply of {} bytes", reply.len());
    assert_eq!(reply[0] & 7, 4, "mode 4");
    assert_eq!(reply[24..32], request[40..48], "origin echoes our transmit");
    let fields = extension_fields(reply);
    let uids: Vec<_> = fields
        .iter()
        .filter(|(t, _, _)| *t == EF_UNIQUE_ID)
        .collect();
    assert_eq!(uids.len(), 1, "{fields:?}");
    assert_eq!(
        &uids[0].2[..uid.len()],
        uid,
        "the reply echoes our unique id"
    );
    let plaintext = open_authenticator(reply, &f.s2c).expect("authenticator opens under S2C");
    let mut padded = vec![0u8; 48];
    padded.extend_from_slice(&plaintext);
    let inner = extension_fields(&padded);
    assert!(inner.iter().all(|(t, _, _)| *t == EF_COOKIE), "{inner:?}");
    inner.len()
}

/// Checks an NTSN: mode 4, stratum 0, refid NTSN, our origin, exactly our unique id and
/// no cookie or authenticator, no larger than the request.
fn check_ntsn(request: &[u8], reply: &[u8], uid: &[u8], what: &str) {
    assert!(reply.len() >= 48, "{what}: reply of {} bytes", reply.len());
    assert_eq!(reply[0] & 7, 4, "{what}: mode 4");
    assert_eq!(reply[1], 0, "{what}: stratum 0 (kiss)");
    assert_eq!(&reply[12..16], b"NTSN", "{what}: refid");
    assert_eq!(
        reply[24..32],
        request[40..48],
        "{what}: origin echoes our transmit"
    );
    let fields = extension_fields(reply);
    let types: Vec<u16> = fields.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(
        types,
        vec![EF_UNIQUE_ID],
        "{what}: only the unique id comes back"
    );
    assert_eq!(
        &fields[0].2[..uid.len()],
        uid,
        "{what}: the NTSN echoes our unique id"
    );
    assert_eq!(
        48 + fields.iter().map(|(_, _, b)| 4 + b.len()).sum::<usize>(),
        reply.len(),
        "{what}: nothing after the fields"
    );
    assert!(
        reply.len() <= request.len(),
        "{what}: NTSN of {} bytes for a {}-byte request",
        reply.len(),
        request.len()
    );
}

#[test]
fn nts_request_well_formed_gets_an_authenticated_reply_with_fresh_cookies() {
    let f = Fixture::new();
    let uid = random_uid();
    let request = sealed(&f, &uid, &f.cookie(), 3, random_transmit());
    let reply = f
        .send(&request)
        .expect("a reply to a well-formed NTS request");
    assert_eq!(check_authentic_reply(&f, &request, &reply, &uid), 4);
    assert!(
        reply.len() <= request.len(),
        "{} > {}",
        reply.len(),
        request.len()
    );
}

#[test]
fn nts_requests_missing_or_duplicating_fields_get_no_reply() {
    let f = Fixture::new();
    let cookie = f.cookie();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    cases.push((
        "no authenticator",
        unsealed(&random_uid(), &cookie, 0, random_transmit()),
    ));

    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_COOKIE, &cookie);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("no unique id", p));

    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid());
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("no cookie", p));

    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid());
    push_ef(&mut p, EF_COOKIE, &cookie);
    push_ef(&mut p, EF_COOKIE, &f.ke.cookies[1]);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("two cookies", p));

    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid());
    push_ef(&mut p, EF_COOKIE, &cookie);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("two unique ids", p));

    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid()[..16]);
    push_ef(&mut p, EF_COOKIE, &cookie);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("a 16-byte unique id", p));

    for mode in [1u8, 2, 4, 5] {
        let mut p = unsealed(&random_uid(), &cookie, 0, random_transmit());
        p[0] = 0x20 | mode;
        push_authenticator(&mut p, &f.c2s, 16, &[]);
        let name: &'static str = Box::leak(format!("NTS fields in mode {mode}").into_boxed_str());
        cases.push((name, p));
    }

    for (what, request) in &cases {
        let reply = f.send(request);
        assert!(
            reply.is_none(),
            "{what}: expected no reply, got {} bytes",
            reply.map_or(0, |r| r.len())
        );
    }
    // Nothing changed: the same cookie still works.
    let uid = random_uid();
    let request = sealed(&f, &uid, &cookie, 0, random_transmit());
    let reply = f
        .send(&request)
        .expect("well-formed request after the malformed ones");
    assert_eq!(check_authentic_reply(&f, &request, &reply, &uid), 1);
}

#[test]
fn nts_requests_with_malformed_authenticators_get_no_reply() {
    let f = Fixture::new();
    let cookie = f.cookie();
    let with_auth_body = |body: &[u8]| {
        let mut p = unsealed(&random_uid(), &cookie, 0, random_transmit());
        push_ef(&mut p, EF_AUTHENTICATOR, body);
        p
    };
    let sealed_auth_body = |nonce_len: usize| {
        // A real sealed authenticator body, for tampering with its lengths.
        let mut p = unsealed(&random_uid(), &cookie, 0, random_transmit());
        let start = p.len();
        push_authenticator(&mut p, &f.c2s, nonce_len, &[]);
        (p.clone(), start)
    };

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Nonce length 0, ciphertext of one tag.
    let mut body = vec![0, 0, 0, 16];
    body.extend_from_slice(&[0xaa; 16]);
    cases.push(("nonce length 0", with_auth_body(&body)));
    // Nonce + ciphertext longer than the field.
    let (mut p, at) = sealed_auth_body(16);
    p[at + 6..at + 8].copy_from_slice(&500u16.to_be_bytes());
    cases.push(("ciphertext overrunning the field", p));
    let (mut p, at) = sealed_auth_body(16);
    p[at + 4..at + 6].copy_from_slice(&400u16.to_be_bytes());
    cases.push(("nonce overrunning the field", p));
    // Ciphertext shorter than the tag.
    let (mut p, at) = sealed_auth_body(16);
    p[at + 6..at + 8].copy_from_slice(&8u16.to_be_bytes());
    cases.push(("ciphertext shorter than the tag", p));
    // Authenticator field too short to hold its own lengths.
    cases.push(("empty authenticator", with_auth_body(&[])));
    // Placeholder of another length than the cookie.
    let mut p = ntp_client_header(random_transmit());
    push_ef(&mut p, EF_UNIQUE_ID, &random_uid());
    push_ef(&mut p, EF_COOKIE, &cookie);
    push_ef(&mut p, EF_COOKIE_PLACEHOLDER, &vec![0; cookie.len() + 4]);
    push_authenticator(&mut p, &f.c2s, 16, &[]);
    cases.push(("placeholder longer than the cookie", p));

    for (what, request) in &cases {
        let reply = f.send(request);
        assert!(
            reply.is_none(),
            "{what}: expected no reply, got {} bytes",
            reply.map_or(0, |r| r.len())
        );
    }
    assert_cookie_still_works(&f, &cookie);
}

/// Nothing a refused request did changed the server: `cookie` still gets an
/// authenticated reply with one fresh cookie.
fn assert_cookie_still_works(f: &Fixture, cookie: &[u8]) {
    let uid = random_uid();
    let request = sealed(f, &uid, cookie, 0, random_transmit());
    let reply = f.send(&request).expect("server still answers");
    assert_eq!(check_authentic_reply(f, &request, &reply, &uid), 1);
}

#[test]
fn nts_requests_with_bad_cookie_tag_or_header_get_an_ntsn_echoing_the_uid() {
    let f = Fixture::new();
    let cookie = f.cookie();

    // Corrupted cookie (a byte of its ciphertext), authenticator valid.
    let uid = random_uid();
    let mut bad = cookie.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let request = sealed(&f, &uid, &bad, 0, random_transmit());
    let reply = f.send(&request).expect("NTSN for a corrupted cookie");
    check_ntsn(&request, &reply, &uid, "corrupted cookie");

    // Unknown master key id (the cookie's first 4 bytes).
    let uid = random_uid();
    let mut bad = cookie.clone();
    for b in &mut bad[..4] {
        *b ^= 0xff;
    }
    let request = sealed(&f, &uid, &bad, 0, random_transmit());
    let reply = f.send(&request).expect("NTSN for an unknown cookie key id");
    check_ntsn(&request, &reply, &uid, "unknown cookie key id");

    // One flipped header byte after sealing (the header is associated data).
    for byte in [2usize, 3, 16, 47] {
        let uid = random_uid();
        let mut request = sealed(&f, &uid, &cookie, 0, random_transmit());
        request[byte] ^= 0x01;
        let reply = f
            .send(&request)
            .unwrap_or_else(|| panic!("NTSN for header byte {byte} flipped"));
        check_ntsn(
            &request,
            &reply,
            &uid,
            &format!("header byte {byte} flipped"),
        );
    }

    // Wrong tag: the last ciphertext byte of the authenticator.
    let uid = random_uid();
    let mut request = sealed(&f, &uid, &cookie, 2, random_transmit());
    let (_, at, body) = extension_fields(&request)
        .into_iter()
        .find(|(t, _, _)| *t == EF_AUTHENTICATOR)
        .expect("authenticator");
    let ct_len = usize::from(u16::from_be_bytes([body[2], body[3]]));
    let nonce_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let last = at + 4 + 4 + nonce_len.div_ceil(4) * 4 + ct_len - 1;
    request[last] ^= 0x80;
    let reply = f.send(&request).expect("NTSN for a wrong tag");
    check_ntsn(&request, &reply, &uid, "wrong tag");

    // A placeholder-laden request with a bad cookie gets no cookies either.
    let uid = random_uid();
    let request = sealed(&f, &uid, &bad, 7, random_transmit());
    let reply = f.send(&request).expect("NTSN");
    check_ntsn(&request, &reply, &uid, "bad cookie with 7 placeholders");

    // No state changed: the good cookie still works.
    assert_cookie_still_works(&f, &cookie);
}

#[test]
fn nts_requests_for_many_cookies_get_at_most_8_and_no_amplification() {
    let f = Fixture::new();
    let cookie = f.cookie();
    // 30 placeholders fit in one request the server reads whole: exactly 8 come back.
    let uid = random_uid();
    let request = sealed(&f, &uid, &cookie, 30, random_transmit());
    let reply = f.send(&request).expect("reply to 30 placeholders");
    assert_eq!(check_authentic_reply(&f, &request, &reply, &uid), 8);
    assert!(
        reply.len() <= request.len(),
        "{} > {}",
        reply.len(),
        request.len()
    );

    // ADVERSARIAL 14: 100 placeholders (about 10 KiB) are read whole and get 8 cookies
    // in a reply far smaller than the request.
    let uid = random_uid();
    let request = sealed(&f, &uid, &cookie, 100, random_transmit());
    let reply = f.send(&request).expect("reply to 100 placeholders");
    assert_eq!(check_authentic_reply(&f, &request, &reply, &uid), 8);
    assert!(
        reply.len() < request.len() / 4,
        "{} vs {}",
        reply.len(),
        request.len()
    );

    // The client jar side: ntimed's client takes at most 8 from any reply.
    let mut exchange = f.ke.exchange(vec![cookie]);
    match nts_exchange(&mut exchange, f.addr(), Duration::from_secs(2)) {
        NtsOutcome::Sample(s) => assert_eq!(s.authenticated, Authenticated::Nts),
        other => panic!("{other:?}"),
    }
    assert_eq!(exchange.nts_cookies(), Some(8));
}
