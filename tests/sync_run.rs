//! `ntimed run` as a client: a simulated clock that starts 0.5 s off and 20 ppm fast is
//! pulled in from real chronyd and NTPsec servers under symmetric keys, and the server
//! role then answers from it (stratum = upstream + 1, refid = the source). With the
//! wrong secret the clock is never synchronized and the server says so.
//!
//! The system clock is the truth on both sides, so `ntimed query` against ntimed's own
//! server measures the simulated clock's remaining error directly.

mod common;

use std::path::Path;
use std::time::Duration;

use common::chrony::ChronyServer;
use common::keys::{KEY_AES128, KEY_SHA1, KEY_SHA256, TestKeys};
use common::net::{free_port, sntp_probe};
use common::netns::NetNs;
use common::ntimed_cli::{QueryArgs, ntimed_query};
use common::ntimed_run::{NtimedRun, toml_path};
use common::ntpsec::NtpsecServer;
use common::process::wait_until;
use common::require::{require_chrony, require_ntpsec};
use serde_json::Value;

/// Where the simulated clock starts, and how fast it drifts.
const START_OFFSET: f64 = 0.5;
/// How close the served time must come to the truth. Loopback measurements are good
/// to tens of microseconds; this leaves room for a busy CI machine.
const PULLED_IN: f64 = 2e-3;

fn client_toml(keys: &Path, source: &str, key: u32, listen_port: u16) -> String {
    format!(
        "[keys]\nfile = {keys}\n\n\
         [clock]\nmode = \"simulated\"\nsimulated-offset = {START_OFFSET}\nsimulated-frequency = 20\n\n\
         [[source]]\naddress = \"{source}\"\nkey = {key}\niburst = true\nmin-poll = 0\nmax-poll = 0\n\n\
         [[server]]\nlisten = \"127.0.0.1:{listen_port}\"\n",
        keys = toml_path(keys),
    )
}

/// What ntimed's own server says, if it answers with a usable reply.
fn served(port: u16, netns: Option<&NetNs>) -> Option<Value> {
    let mut args = QueryArgs::new(format!("127.0.0.1:{port}")).timeout(1.0);
    args.netns = netns;
    ntimed_query(&args).ok()?.into_iter().next()
}

fn json_f64(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

/// Waits until ntimed serves synchronized time within [`PULLED_IN`] of the truth at
/// `stratum`; returns the last reply.
fn wait_pulled_in(
    port: u16,
    netns: Option<&NetNs>,
    stratum: u64,
    log: impl Fn() -> String,
) -> Value {
    let mut last = None;
    let synced = wait_until(Duration::from_secs(40), || {
        last = served(port, netns);
        last.as_ref()
            .is_some_and(|r| r["stratum"] == stratum && json_f64(r, "offset").abs() < PULLED_IN)
    });
    assert!(
        synced,
        "ntimed never served time within {PULLED_IN} s at stratum {stratum}; last reply {last:?}\nlog:\n{}",
        log()
    );
    last.unwrap_or_default()
}

fn syncs_from_chronyd(key: u32) {
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let port = free_port();
    let toml = client_toml(
        &keys.chrony,
        &format!("127.0.0.1:{}", chronyd.port()),
        key,
        port,
    );
    let run = NtimedRun::config(toml).wait_for_ntp(port).start();
    let reply = wait_pulled_in(port, None, 2, || run.log());
    assert_eq!(reply["refid"], Value::from("127.0.0.1"), "{reply}");
    assert_eq!(reply["leap"], Value::from("none"), "{reply}");
    assert!(json_f64(&reply, "root_distance") < 0.1, "{reply}");
}

#[test]
fn run_syncs_a_simulated_clock_from_chronyd_sha256() {
    if require_chrony() {
        syncs_from_chronyd(KEY_SHA256);
    }
}

#[test]
fn run_syncs_a_simulated_clock_from_chronyd_aes128() {
    if require_chrony() {
        syncs_from_chronyd(KEY_AES128);
    }
}

/// The same key id with another secret: every reply fails authentication, the clock is
/// never steered, and the server keeps saying "unsynchronized".
#[test]
fn run_never_syncs_from_a_source_that_fails_authentication() {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let port = free_port();
    let toml = client_toml(
        &keys.chrony_wrong,
        &format!("127.0.0.1:{}", chronyd.port()),
        KEY_SHA256,
        port,
    );
    let mut run = NtimedRun::config(toml).wait_for_ntp(port).start();
    // Long enough for the iburst and several 1 s polls.
    std::thread::sleep(Duration::from_secs(8));
    run.assert_running();
    let probe = sntp_probe(([127, 0, 0, 1], port).into(), Duration::from_secs(1));
    assert_eq!(
        probe,
        Some((3, 16)),
        "unauthenticated replies must not synchronize the clock; log:\n{}",
        run.log()
    );
}

#[test]
fn run_syncs_a_simulated_clock_from_ntpsec() {
    if !require_ntpsec() {
        return;
    }
    let keys = TestKeys::new();
    let ntpd = NtpsecServer::start(&keys.ntp, &[KEY_AES128, KEY_SHA1]);
    let port = 11123;
    let run = NtimedRun::config(client_toml(&keys.ntp, "127.0.0.1:123", KEY_AES128, port))
        .netns(ntpd.netns().clone())
        .start();
    // NTPsec serves orphan stratum 5: ntimed serves 6.
    let reply = wait_pulled_in(port, Some(ntpd.netns()), 6, || {
        format!("{}\nntpd:\n{}", run.log(), ntpd.log())
    });
    run.assert_cannot_set_clock();
    assert_eq!(reply["refid"], Value::from("127.0.0.1"), "{reply}");
}
