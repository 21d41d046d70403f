//! The `ntimed` binary end to end on loopback: what it refuses to start with
//! (ADVERSARIAL 30), what its server refuses to answer (ADVERSARIAL 25), its rate
//! limits (ADVERSARIAL 26) and access lists (ADVERSARIAL 37), and IPv4 and IPv6
//! wildcard listeners side by side.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::files::tempdir;
use common::net::free_port;
use common::netns::NetNs;
use common::ntimed_cli::{QueryArgs, ntimed_command, ntimed_ke, ntimed_query};
use common::ntimed_run::{NtimedRun, SANDBOX_TOML, toml_path};
use common::nts::TestCerts;
use common::process::{RunOutput, run_with_deadline};

const KEYS: &str = "1 SHA256 HEX:fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e\n\
                    2 AES128 HEX:fa4efa4efa4efa4efa4efa4efa4efa4e\n";

/// `ntimed ARGS`, without CAP_SYS_TIME so that no bug can touch this machine's clock.
fn ntimed(args: &[&str]) -> Command {
    let mut cmd = ntimed_command(None);
    cmd.args(args);
    cmd
}

/// Runs a command that must exit on its own; kills it and fails after 10 s.
fn run_to_exit(cmd: Command) -> RunOutput {
    let desc = format!("{cmd:?}");
    run_with_deadline(cmd, Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!("{desc} did not exit: it started when it should have refused ({e})")
    })
}

/// `ntimed run --config CONFIG`, which must refuse to start within 10 s.
fn run_refused(config: &Path) -> RunOutput {
    NtimedRun::config_file(config)
        .run_to_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: it started when it should have refused"))
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write test file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Writes keys and a config serving on `port`; returns the config path.
fn setup(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    write(&dir.join("test.keys"), KEYS, 0o600);
    let config = dir.join("ntimed.toml");
    write(
        &config,
        &format!(
            "[keys]\nfile = \"test.keys\"\n[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{port}\"\n{extra}{SANDBOX_TOML}"
        ),
        0o644,
    );
    config
}

/// `ntimed run` with `config`, once it answers a client request on `port`; killed when
/// the test ends, however it ends.
fn start(config: &Path, port: u16) -> NtimedRun {
    NtimedRun::config_file(config)
        .wait_for_ntp_answer(port)
        .start()
}

fn client_request(mode: u8) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 4 << 3 | mode;
    p[40..48].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    p
}

/// Sends `request`, returns the reply if one comes within 300 ms.
fn exchange(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.send_to(request, server).ok()?;
    let mut buf = [0u8; 2048];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    Some(buf[..len].to_vec())
}

#[test]
fn server_answers_client_and_unknown_symmetric_modes_and_never_amplifies() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let _daemon = start(&setup(dir.path(), port, ""), port);

    let reply = exchange(port, &client_request(3)).expect("mode 3 is answered");
    assert_eq!(reply.len(), 48);
    assert_eq!(reply[0] & 7, 4, "server mode");
    assert_eq!(
        &reply[24..32],
        &client_request(3)[40..48],
        "origin echoes transmit"
    );

    for mode in [0, 2, 4, 5, 6, 7] {
        assert_eq!(
            exchange(port, &client_request(mode)),
            None,
            "mode {mode} got a reply"
        );
    }
    // Symmetric active from an address that is no [[peer]]: a stateless passive answer
    // (unknown-peers = "reply", the default), no larger than the request.
    let passive = exchange(port, &client_request(1)).expect("mode 1 is answered");
    assert_eq!((passive.len(), passive[0] & 7), (48, 2));
    assert_eq!(&passive[24..32], &client_request(1)[40..48]);
    // Short, truncated and MAC-failing requests get nothing either.
    assert_eq!(exchange(port, &client_request(3)[..47]), None);
    let mut bad_mac = client_request(3);
    bad_mac.extend_from_slice(&1u32.to_be_bytes());
    bad_mac.extend_from_slice(&[0xab; 20]);
    assert_eq!(exchange(port, &bad_mac), None);
    // An NTPv4 request padded with an unknown extension field is answered with no more
    // than the bare header.
    let mut padded = client_request(3);
    padded.extend_from_slice(&[0x20, 0x05, 0x00, 0x10]);
    padded.extend_from_slice(&[0; 12]);
    assert_eq!(exchange(port, &padded).map(|r| r.len()), Some(48));
}

#[test]
fn crypto_nak_is_sent_only_when_configured() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let config = setup(dir.path(), port, "crypto-nak = true\n");
    let _daemon = start(&config, port);
    let mut bad_mac = client_request(3);
    bad_mac.extend_from_slice(&1u32.to_be_bytes());
    bad_mac.extend_from_slice(&[0xab; 20]);
    let reply = exchange(port, &bad_mac).expect("a crypto-NAK");
    assert_eq!(reply.len(), 52);
    assert_eq!(&reply[48..], &[0; 4]);
}

#[test]
fn query_authenticates_and_rejects_a_wrong_secret() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let _daemon = start(&setup(dir.path(), port, ""), port);
    let server = format!("127.0.0.1:{port}");
    let keys = dir.path().join("test.keys");
    let keys = keys.to_str().expect("utf-8 path");
    let out = ntimed(&[
        "query",
        &server,
        "--key-file",
        keys,
        "--key-id",
        "2",
        "--json",
    ])
    .output()
    .expect("run query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["authenticated"], true);
    assert_eq!(report["key_id"], 2);
    assert_eq!(report["stratum"], 1);
    assert!(report["offset"].as_f64().expect("offset").abs() < 0.01);

    let wrong = dir.path().join("wrong.keys");
    write(
        &wrong,
        "2 AES128 HEX:00000000000000000000000000000000\n",
        0o600,
    );
    let out = ntimed(&[
        "query",
        &server,
        "--key-file",
        wrong.to_str().expect("utf-8"),
        "--key-id",
        "2",
        "--timeout",
        "0.5",
    ])
    .output()
    .expect("run query");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no valid reply"));
}

/// ADVERSARIAL 30: each bad config or key file stops the start with file, line and
/// problem, and nothing is bound.
#[test]
fn bad_config_or_key_file_stops_the_start() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let cases: [(&str, &str, u32, &str); 6] = [
        (
            "[[server]]\nlisten = \"127.0.0.1:PORT\"\nlisten-typo = 1\n",
            KEYS,
            0o600,
            "ntimed.toml:3: unknown field `listen-typo`",
        ),
        (
            "[local]\nstratum = 0\n[[server]]\nlisten = \"127.0.0.1:PORT\"\n",
            KEYS,
            0o600,
            "ntimed.toml:2: [local] stratum must be 1 to 15",
        ),
        (
            "[keys]\nfile = \"test.keys\"\n[[server]]\nlisten = \"127.0.0.1:PORT\"\n",
            KEYS,
            0o644,
            "chmod 600",
        ),
        (
            "[keys]\nfile = \"test.keys\"\n[[server]]\nlisten = \"127.0.0.1:PORT\"\n",
            "1 SHA256 HEX:00\n2 SHA1 HEX:zz\n",
            0o600,
            "test.keys:2: hex key has a non-hex digit",
        ),
        (
            "[keys]\nfile = \"missing.keys\"\n[[server]]\nlisten = \"127.0.0.1:PORT\"\n",
            KEYS,
            0o600,
            "missing.keys: cannot open",
        ),
        (
            "[[server]]\nlisten = \"127.0.0.1:PORT\"\n[[server]]\nlisten = \"127.0.0.1:PORT\"\n",
            KEYS,
            0o600,
            "listed twice",
        ),
    ];
    for (config, keys, key_mode, expected) in cases {
        write(&dir.path().join("test.keys"), keys, key_mode);
        let path = dir.path().join("ntimed.toml");
        let config = config.replace("PORT", &port.to_string()) + SANDBOX_TOML;
        write(&path, &config, 0o644);
        let out = run_refused(&path);
        let stderr = &out.stderr;
        assert!(!out.status.success(), "{config:?} started");
        assert!(stderr.contains(expected), "{config:?}: {stderr}");
        assert!(
            UdpSocket::bind(("127.0.0.1", port)).is_ok(),
            "port left bound"
        );
    }
}

/// ADVERSARIAL 26: a flood from one address is limited, kissed sparingly (RATE), and
/// another address is still served.
#[test]
fn request_flood_is_rate_limited_and_others_are_still_served() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let config = setup(
        dir.path(),
        port,
        "rate-limit = { interval = 10, burst = 4, kiss-one-in = 4 }\n",
    );
    let _daemon = start(&config, port);
    // `start` spent some of 127.0.0.1's burst probing; a fresh source floods.
    let flood = UdpSocket::bind("127.0.0.3:0").expect("bind 127.0.0.3");
    flood
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..40 {
        flood.send_to(&client_request(3), server).expect("send");
    }
    let (mut answers, mut kisses) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok((len, _)) = flood.recv_from(&mut buf) {
        assert_eq!(len, 48, "never larger than the request");
        if buf[1] == 0 && &buf[12..16] == b"RATE" {
            kisses += 1;
        } else {
            answers += 1;
        }
    }
    assert_eq!(answers, 4, "the burst is answered");
    assert_eq!(kisses, 1, "at most one RATE kiss per source and interval");
    // Another address is unaffected.
    let other = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    other
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    other.send_to(&client_request(3), server).expect("send");
    let (len, _) = other.recv_from(&mut buf).expect("served");
    assert_eq!((len, buf[1]), (48, 1), "a normal stratum-1 answer");
}

/// ADVERSARIAL 37: with `allow = ["127.0.0.0/8"]` and `deny = ["127.0.0.2"]`, the
/// more specific deny wins for 127.0.0.2, which gets nothing; `ntimed query` from
/// 127.0.0.1 and a request from 127.0.0.3 are answered.
#[test]
fn denied_addresses_get_no_answer_and_allowed_ones_do() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let config = setup(
        dir.path(),
        port,
        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2\"]\n",
    );
    let _daemon = start(&config, port);
    let replies = ntimed_query(&QueryArgs::new(format!("127.0.0.1:{port}")))
        .unwrap_or_else(|e| panic!("query from 127.0.0.1: {e}"));
    assert_eq!(replies[0]["stratum"], 1, "{}", replies[0]);
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let from = |ip: [u8; 4]| {
        let socket = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        socket.send_to(&client_request(3), server).expect("send");
        let mut buf = [0u8; 2048];
        socket
            .recv_from(&mut buf)
            .ok()
            .map(|(len, _)| buf[..len].to_vec())
    };
    assert_eq!(from([127, 0, 0, 2]), None, "127.0.0.2 is denied");
    let allowed = from([127, 0, 0, 3]).expect("127.0.0.3 is allowed");
    assert_eq!((allowed.len(), allowed[1]), (48, 1), "a stratum-1 answer");
}

/// ADVERSARIAL 37: with `deny-action = "kiss"`, a denied source flooding plain
/// requests gets one DENY kiss (no larger than its request) per second.
#[test]
fn a_denied_source_gets_one_deny_kiss_per_second() {
    let dir = tempdir("cli");
    let port = free_udp_port();
    let config = setup(
        dir.path(),
        port,
        "deny = [\"127.0.0.2\"]\ndeny-action = \"kiss\"\n",
    );
    let _daemon = start(&config, port);
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let denied = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    denied
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for _ in 0..20 {
        denied.send_to(&client_request(3), server).expect("send");
    }
    let mut buf = [0u8; 2048];
    let mut kisses = 0;
    while let Ok((len, _)) = denied.recv_from(&mut buf) {
        assert_eq!(len, 48, "never larger than the request");
        assert_eq!((buf[1], &buf[12..16]), (0, &b"DENY"[..]), "only kisses");
        kisses += 1;
    }
    assert_eq!(kisses, 1, "one DENY kiss per source and second");
}

fn sim_json(scenario: &str, seeds: &str) -> serde_json::Value {
    let out = run_to_exit(ntimed(&["sim", scenario, "--seeds", seeds, "--json"]));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_str(&out.stdout).expect("one JSON object")
}

#[test]
fn sim_json_reports_every_metric_and_never_selects_a_falseticker() {
    let m = sim_json("falsetickers", "5");
    for key in [
        "rms_offset",
        "max_offset",
        "rms_freq",
        "sync_time",
        "mean_poll_interval",
    ] {
        assert!(m[key].as_f64().is_some(), "{key} missing: {m}");
    }
    assert_eq!(m["falseticker_selected"], false, "{m}");
    assert_eq!(m["seeds"], 5, "{m}");
    // Three agreeing servers, 1 ms away with 0.1 ms jitter: well inside a millisecond.
    assert!(m["rms_offset"].as_f64().unwrap() < 5e-4, "{m}");
}

#[test]
fn sim_iburst_with_a_drift_file_syncs_within_six_seconds() {
    let m = sim_json("iburst", "10");
    assert!(m["sync_time"].as_f64().unwrap() <= 6.0, "{m}");
}

#[test]
fn sim_plot_writes_an_svg_and_unknown_scenarios_are_refused() {
    let dir = tempdir("cli");
    let svg = dir.path().join("plot.svg");
    let out = run_to_exit(ntimed(&[
        "sim",
        "defaults",
        "--seeds",
        "1",
        "--plot",
        svg.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("phase error"),
        "{}",
        &text[..200.min(text.len())]
    );
    let out = run_to_exit(ntimed(&["sim", "no-such"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("unknown scenario"));
}

#[test]
fn run_refuses_sources_without_a_clock_or_an_authentication_choice() {
    let dir = tempdir("cli");
    let cases = [
        (
            "[[source]]\naddress = \"127.0.0.1:123\"\ninsecure = true\n",
            "needs a [clock] section",
        ),
        (
            "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"127.0.0.1:123\"\n",
            "exactly one of",
        ),
        (
            "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"127.0.0.1:123\"\nkey = 7\ninsecure = true\n",
            "exactly one of",
        ),
        (
            "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"127.0.0.1:123\"\nkey = 7\n",
            "key 7 needs a [keys] section",
        ),
        (
            "[clock]\nmode = \"observe\"\nsimulated-offset = 1.0\n[[source]]\naddress = \"127.0.0.1:123\"\ninsecure = true\n",
            "need mode = \"simulated\"",
        ),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, format!("{toml}{SANDBOX_TOML}")).unwrap();
        let out = run_refused(&path);
        let stderr = &out.stderr;
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        // ADVERSARIAL 30: the error names the file and the line.
        let after_name = stderr
            .split(&format!("c{i}.toml:"))
            .nth(1)
            .unwrap_or_default();
        assert!(
            after_name.starts_with(|c: char| c.is_ascii_digit()),
            "{toml}: {stderr}"
        );
    }
}

/// The README's dual-stack example: `0.0.0.0` and `[::]` on the same ports, for NTP and
/// NTS-KE. Both start (an IPv6 wildcard that also took IPv4 would make the second bind
/// fail with "Address already in use") and both answer. In a network namespace of the
/// test's own, since wildcard addresses would listen on the host's interfaces too.
#[test]
fn ipv4_and_ipv6_wildcard_listeners_share_their_ports() {
    let certs = TestCerts::new();
    let netns = NetNs::new();
    let (ntp, ke) = (free_port(), free_port());
    let dir = tempdir("dual-stack");
    let ke_server = |listen: &str| {
        format!(
            "[[nts-ke-server]]\nlisten = \"{listen}:{ke}\"\ncertificate-chain = {chain}\n\
             private-key = {key}\nname = \"localhost\"\n",
            chain = toml_path(&certs.path("srv-chain.pem")),
            key = toml_path(&certs.path("srv.key")),
        )
    };
    let toml = format!(
        "[local]\nstratum = 1\n\
         [[server]]\nlisten = \"0.0.0.0:{ntp}\"\n[[server]]\nlisten = \"[::]:{ntp}\"\n\
         {v4}{v6}[nts]\nkey-dir = {state}\n",
        v4 = ke_server("0.0.0.0"),
        v6 = ke_server("[::]"),
        state = toml_path(&dir.path().join("state")),
    );
    let run = NtimedRun::config(toml)
        .in_dir(dir)
        .netns(netns.clone())
        .wait_for_ntp(ntp)
        .wait_for_ke(ke)
        .start();
    for host in ["127.0.0.1", "[::1]"] {
        let replies = ntimed_query(&QueryArgs::new(format!("{host}:{ntp}")).netns(&netns))
            .unwrap_or_else(|e| panic!("NTP over {host}: {e}\n{}", run.log()));
        assert_eq!(replies[0]["stratum"], 1, "{host}: {}", replies[0]);
        let out = ntimed_ke(
            Some(&netns),
            &format!("{host}:{ke}"),
            Some(&certs.ca()),
            false,
        )
        .unwrap_or_else(|e| panic!("NTS-KE over {host}: {e}"));
        assert!(
            out.status.success() && out.stdout.contains("cookies     8"),
            "NTS-KE over {host}: {}\n{}",
            out.describe(),
            run.log()
        );
    }
}
