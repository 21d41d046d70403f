//! `ntimed bench` smoke tests (1 s, low rates, a few clients from distinct 127.101.x.y
//! addresses): answers arrive, and are checked, in every mode. No performance figure is
//! asserted; the README reports those.
//!
//! * plain with `--xleave` against `ntimed run`: answered, and interleaved after each
//!   client's first exchange (ntimed's server and client together);
//! * NTS with the keys and a cookie of `ntimed ke --export` against `ntimed run`;
//! * keyed with `--xleave` against `chronyd -x` (chrony's server with ntimed's client);
//!   skipped when chronyd is missing, except under `CI=true`, where that fails.

mod common;

use std::time::Duration;

use common::chrony::spawn_chronyd_x;
use common::files::tempdir;
use common::keys::{KEY_AES128, TestKeys};
use common::net::{free_port, loopback, sntp_probe};
use common::ntimed_cli::ntimed_command;
use common::ntimed_run::NtimedRun;
use common::nts::{TestCerts, ntimed_ke_export};
use common::process::{run_with_deadline, wait_until};
use common::require::require_chrony;
use serde_json::Value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `ntimed bench SERVER --duration 1 --clients 10 --json ARGS` and returns one
/// object per rate step.
fn bench(server: &str, args: &[&str]) -> Vec<Value> {
    let mut cmd = ntimed_command(None);
    cmd.args([
        "bench",
        server,
        "--duration",
        "1",
        "--clients",
        "10",
        "--json",
    ])
    .args(args);
    let out = run_with_deadline(cmd, Duration::from_secs(30)).expect("ntimed bench");
    assert!(out.status.success(), "{}", out.describe());
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn number(step: &Value, key: &str) -> f64 {
    step[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key}: {step}"))
}

#[test]
fn plain_and_interleaved_requests_are_answered_by_ntimed() {
    let port = free_port();
    let server = NtimedRun::local_server(loopback(port), None).start();
    let steps = bench(
        &format!("127.0.0.1:{port}"),
        &["--rate", "50,100", "--xleave"],
    );
    assert_eq!(steps.len(), 2, "{steps:?}");
    for (step, rate) in steps.iter().zip([50.0, 100.0]) {
        assert_eq!(number(step, "rate"), rate);
        assert!(number(step, "sent") >= rate * 0.5, "{step}");
        assert!(
            number(step, "answered_percent") > 50.0,
            "{step}\n{}",
            server.log()
        );
        assert!(number(step, "p50_us") > 0.0, "{step}");
        // Each client's first request of a step is basic; ntimed's server answers the
        // rest interleaved.
        assert!(number(step, "interleaved_percent") > 50.0, "{step}");
    }
}

#[test]
fn nts_requests_with_exported_keys_are_answered_by_ntimed() {
    let certs = TestCerts::new();
    let server = NtimedRun::nts_server(&certs).start();
    let ke = ntimed_ke_export(None, &server.ke_server(), Some(&certs.ca()))
        .unwrap_or_else(|e| panic!("{e}\nntimed log:\n{}", server.log()));
    let (c2s, s2c, cookie) = (hex(&ke.c2s), hex(&ke.s2c), hex(&ke.cookies[0]));
    let steps = bench(
        &format!("127.0.0.1:{}", server.ntp_port()),
        &[
            "--rate",
            "50",
            "--nts-c2s",
            &c2s,
            "--nts-s2c",
            &s2c,
            "--nts-cookie",
            &cookie,
        ],
    );
    let step = &steps[0];
    assert!(
        number(step, "answered_percent") > 50.0,
        "{step}\n{}",
        server.log()
    );
    assert!(step["interleaved_percent"].is_null(), "{step}");
}

#[test]
fn keyed_interleaved_requests_are_answered_by_chronyd() {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let dir = tempdir("chronyd-bench");
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        "port {port}\n\
         bindaddress 127.0.0.1\n\
         keyfile {keyfile}\n\
         local stratum 1\n\
         allow 127.0.0.0/8\n\
         cmdport 0\n\
         bindcmdaddress /\n\
         pidfile {d}/chronyd.pid\n\
         driftfile {d}/drift\n",
        keyfile = keys.chrony.display(),
    );
    let mut chronyd = spawn_chronyd_x("chronyd server", dir.path(), &conf);
    let ready = wait_until(Duration::from_secs(15), || {
        chronyd.assert_running();
        matches!(sntp_probe(loopback(port), Duration::from_millis(300)),
                 Some((leap, stratum)) if leap != 3 && (1..16).contains(&stratum))
    });
    assert!(ready, "chronyd never served:\n{}", chronyd.log());
    let key_file = keys.chrony.display().to_string();
    let key_id = KEY_AES128.to_string();
    let steps = bench(
        &format!("127.0.0.1:{port}"),
        &[
            "--rate", "50", "--xleave", "--key", &key_file, "--key-id", &key_id,
        ],
    );
    let step = &steps[0];
    assert!(
        number(step, "answered_percent") > 50.0,
        "{step}\n{}",
        chronyd.log()
    );
    // chronyd answers interleaved from a client's third request on.
    assert!(number(step, "interleaved_percent") > 30.0, "{step}");
}
