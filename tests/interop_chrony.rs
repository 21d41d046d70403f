//! Interoperability with chrony 4.3 (symmetric-key MACs: SHA1, SHA256, AES128-CMAC).
//!
//! * `ntimed query` against `chronyd -x` serving `local stratum 1`: the reply is accepted
//!   as authenticated and its offset agrees with `chronyd -Q` against the same server;
//!   with the wrong secret (same key id) the query fails.
//! * `chronyd -Q` against `ntimed run`: chrony accepts ntimed's signed answers with the
//!   right key (offset within 1 ms of this machine's clock, which both sides use) and
//!   rejects them with the wrong key.
//!
//! Skipped when chronyd is missing, except under `CI=true`, where that fails.

mod common;

use common::chrony::{ChronyServer, ChronydQuery};
use common::keys::{KEY_AES128, KEY_SHA1, KEY_SHA256, TestKeys};
use common::net::{free_port, loopback};
use common::ntimed_cli::{QueryArgs, best_reply, json_f64, ntimed_query};
use common::ntimed_run::NtimedRun;
use common::require::require_chrony;
use serde_json::Value;

/// Two clients measuring one server on loopback (the same clock) must agree this well:
/// loose enough for a 2-core machine under load (3 ms was seen while fuzzers ran), and
/// still far tighter than any wrong timestamp or era.
const AGREEMENT: f64 = 10e-3;

/// Queries `server` with `ntimed query` (4 quick exchanges) and returns the reply with the
/// smallest delay after checking the fields every authenticated reply must have.
fn ntimed_authenticated_reply(server: &str, keyfile: &std::path::Path, key_id: u32) -> Value {
    let replies = ntimed_query(
        &QueryArgs::new(server)
            .key(keyfile, key_id)
            .count(4)
            .interval(0.05),
    )
    .unwrap_or_else(|e| panic!("ntimed query {server} with key {key_id}: {e}"));
    assert_eq!(replies.len(), 4, "one JSON line per exchange: {replies:?}");
    for r in &replies {
        assert_eq!(r["authenticated"], Value::Bool(true), "{r}");
        assert_eq!(r["key_id"], Value::from(key_id), "{r}");
        assert_eq!(r["server"], Value::from(server), "{r}");
        assert_eq!(
            r["stratum"],
            Value::from(1),
            "chronyd serves local stratum 1: {r}"
        );
        assert_eq!(r["leap"], Value::from("none"), "{r}");
        assert!(r["unusable"].is_null(), "{r}");
        let delay = json_f64(r, "delay");
        assert!((0.0..0.05).contains(&delay), "loopback delay: {r}");
        assert!(json_f64(r, "root_distance") >= delay / 2.0 - 1e-9, "{r}");
    }
    best_reply(&replies).clone()
}

fn query_chronyd(key_id: u32) {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let server = format!("127.0.0.1:{}", chronyd.port());

    let reply = ntimed_authenticated_reply(&server, &keys.chrony, key_id);
    let ours = json_f64(&reply, "offset");
    let theirs = ChronydQuery::new("127.0.0.1", chronyd.port())
        .key(&keys.chrony, key_id)
        .run()
        .expect("chronyd -Q against the same chronyd")
        .offset;
    assert!(
        (ours - theirs).abs() < AGREEMENT,
        "ntimed offset {ours} s vs chronyd -Q offset {theirs} s (key {key_id}); reply {reply}"
    );
    assert!(ours.abs() < AGREEMENT, "same clock on both ends: {reply}");
}

fn query_chronyd_wrong_key(key_id: u32) {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let server = format!("127.0.0.1:{}", chronyd.port());
    let result = ntimed_query(
        &QueryArgs::new(&server)
            .key(&keys.chrony_wrong, key_id)
            .timeout(1.0),
    );
    let err = result.expect_err("a reply signed with another secret must not be accepted");
    // A failed exchange (exit 1, naming the server), not a setup error (exit 2).
    assert!(
        err.contains("exit status: 1") && err.contains(&server),
        "expected the exchange to fail: {err}"
    );
    // The same server is fine with the right secret: the failure is the key's.
    ntimed_authenticated_reply(&server, &keys.chrony, key_id);
}

#[test]
fn ntimed_query_chronyd_sha256() {
    query_chronyd(KEY_SHA256);
}

#[test]
fn ntimed_query_chronyd_aes128() {
    query_chronyd(KEY_AES128);
}

#[test]
fn ntimed_query_chronyd_sha1() {
    query_chronyd(KEY_SHA1);
}

#[test]
fn ntimed_query_chronyd_wrong_key_sha256() {
    query_chronyd_wrong_key(KEY_SHA256);
}

#[test]
fn ntimed_query_chronyd_wrong_key_aes128() {
    query_chronyd_wrong_key(KEY_AES128);
}

#[test]
fn ntimed_query_chronyd_wrong_key_sha1() {
    query_chronyd_wrong_key(KEY_SHA1);
}

/// The same secrets in ntp.keys format (`SHA1`, `AES`) work against chronyd's keyfile.
#[test]
fn ntimed_query_chronyd_with_ntp_keys_file() {
    if !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let chronyd = ChronyServer::start(&keys.chrony);
    let server = format!("127.0.0.1:{}", chronyd.port());
    for key_id in [KEY_AES128, KEY_SHA1] {
        let reply = ntimed_authenticated_reply(&server, &keys.ntp, key_id);
        assert!(json_f64(&reply, "offset").abs() < AGREEMENT, "{reply}");
    }
}

fn chronyd_against_ntimed(ntimed_keys: &std::path::Path, key_id: u32) {
    let keys = TestKeys::new();
    let ntimed = NtimedRun::local_server(loopback(free_port()), Some(ntimed_keys)).start();
    let offset = ChronydQuery::new("127.0.0.1", ntimed.ntp_port())
        .key(&keys.chrony, key_id)
        .run()
        .unwrap_or_else(|e| {
            panic!(
                "chronyd -Q rejected ntimed's answers with key {key_id}: {e}\nntimed log:\n{}",
                ntimed.log()
            )
        })
        .offset;
    assert!(
        offset.abs() < AGREEMENT,
        "chronyd measured {offset} s against ntimed on the same clock (key {key_id})"
    );
}

fn chronyd_wrong_key_against_ntimed(key_id: u32) {
    let keys = TestKeys::new();
    let ntimed = NtimedRun::local_server(loopback(free_port()), Some(&keys.chrony)).start();
    let result = ChronydQuery::new("127.0.0.1", ntimed.ntp_port())
        .key(&keys.chrony_wrong, key_id)
        .timeout(2)
        .run();
    let err = result.expect_err("chronyd -Q with the wrong secret must not accept ntimed");
    // chronyd ran and measured nothing (rather than failing to start).
    assert!(
        err.contains("no suitable source") || err.contains("timeout reached"),
        "{err}"
    );
}

#[test]
fn chronyd_accepts_ntimed_sha256() {
    if require_chrony() {
        let keys = TestKeys::new();
        chronyd_against_ntimed(&keys.chrony, KEY_SHA256);
    }
}

#[test]
fn chronyd_accepts_ntimed_aes128() {
    if require_chrony() {
        let keys = TestKeys::new();
        chronyd_against_ntimed(&keys.chrony, KEY_AES128);
    }
}

#[test]
fn chronyd_accepts_ntimed_sha1() {
    if require_chrony() {
        let keys = TestKeys::new();
        chronyd_against_ntimed(&keys.chrony, KEY_SHA1);
    }
}

/// ntimed serving from an ntp.keys file (`AES`, `SHA1`) signs what chrony expects.
#[test]
fn chronyd_accepts_ntimed_with_ntp_keys_file() {
    if require_chrony() {
        let keys = TestKeys::new();
        chronyd_against_ntimed(&keys.ntp, KEY_AES128);
        chronyd_against_ntimed(&keys.ntp, KEY_SHA1);
    }
}

#[test]
fn chronyd_rejects_ntimed_wrong_key_sha256() {
    if require_chrony() {
        chronyd_wrong_key_against_ntimed(KEY_SHA256);
    }
}

#[test]
fn chronyd_rejects_ntimed_wrong_key_aes128() {
    if require_chrony() {
        chronyd_wrong_key_against_ntimed(KEY_AES128);
    }
}

#[test]
fn chronyd_rejects_ntimed_wrong_key_sha1() {
    if require_chrony() {
        chronyd_wrong_key_against_ntimed(KEY_SHA1);
    }
}
