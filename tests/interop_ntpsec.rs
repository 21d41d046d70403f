//! Interoperability with NTPsec 1.2.2 (symmetric-key MACs: SHA1 and AES-128-CMAC, the
//! latter written `AES` in ntp.keys).
//!
//! ntpd and ntpdig only use port 123, so every test runs in its own network namespace.
//!
//! * `ntimed query` against NTPsec's ntpd (orphan mode, stratum 5): the reply is accepted
//!   as authenticated and its offset agrees with `chronyd -Q` against the same ntpd; with
//!   the wrong secret (same key id) the query fails.
//! * NTPsec's ntpdig against `ntimed run` on 127.0.0.1:123: ntpdig accepts ntimed's
//!   signed answers with the right key (offset within 1 ms: same clock) and rejects them
//!   with the wrong key.
//!
//! Skipped when NTPsec (or, for the offset comparison, chrony) is missing, except under
//! `CI=true`, where that fails.

mod common;

use std::net::SocketAddr;

use common::chrony::ChronydQuery;
use common::keys::{KEY_AES128, KEY_SHA1, TestKeys};
use common::netns::NetNs;
use common::ntimed_cli::{QueryArgs, best_reply, json_f64, ntimed_query};
use common::ntimed_run::NtimedRun;
use common::ntpsec::{NtpsecServer, ntpdig, ntpdig_with};
use common::require::{require_chrony, require_ntpsec};
use serde_json::Value;

/// Two clients measuring one server on loopback (the same clock) must agree this well:
/// loose enough for a 2-core machine under load, far tighter than any wrong timestamp.
const AGREEMENT: f64 = 10e-3;
/// ntpd's orphan stratum in [`NtpsecServer`]'s configuration.
const NTPD_STRATUM: u64 = 5;

/// `ntimed run` serving `keys` in a new network namespace on 127.0.0.1:123 (for ntpdig,
/// which has no port option).
fn ntimed_in_netns(keys: &std::path::Path) -> NtimedRun {
    let listen: SocketAddr = ([127, 0, 0, 1], 123).into();
    NtimedRun::local_server(listen, Some(keys))
        .netns(NetNs::new())
        .start()
}

fn query_ntpd(key_id: u32) {
    if !require_ntpsec() || !require_chrony() {
        return;
    }
    let keys = TestKeys::new();
    let ntpd = NtpsecServer::start(&keys.ntp, &[KEY_AES128, KEY_SHA1]);
    let server = "127.0.0.1:123";
    let replies = ntimed_query(
        &QueryArgs::new(server)
            .key(&keys.ntp, key_id)
            .count(4)
            .interval(0.05)
            .netns(ntpd.netns()),
    )
    .unwrap_or_else(|e| panic!("ntimed query ntpd with key {key_id}: {e}\n{}", ntpd.log()));
    assert_eq!(replies.len(), 4, "one JSON line per exchange: {replies:?}");
    for r in &replies {
        assert_eq!(r["authenticated"], Value::Bool(true), "{r}");
        assert_eq!(r["key_id"], Value::from(key_id), "{r}");
        assert_eq!(r["stratum"], Value::from(NTPD_STRATUM), "{r}");
        assert_eq!(r["leap"], Value::from("none"), "{r}");
        assert!(r["unusable"].is_null(), "{r}");
        let delay = json_f64(r, "delay");
        assert!((0.0..0.05).contains(&delay), "loopback delay: {r}");
    }
    let reply = best_reply(&replies);
    let ours = json_f64(reply, "offset");
    let theirs = ChronydQuery::new("127.0.0.1", 123)
        .key(&keys.chrony, key_id)
        .netns(ntpd.netns())
        .run()
        .expect("chronyd -Q against the same ntpd")
        .offset;
    assert!(
        (ours - theirs).abs() < AGREEMENT,
        "ntimed offset {ours} s vs chronyd -Q offset {theirs} s (key {key_id}); reply {reply}"
    );
    assert!(ours.abs() < AGREEMENT, "same clock on both ends: {reply}");
}

fn query_ntpd_wrong_key(key_id: u32) {
    if !require_ntpsec() {
        return;
    }
    let keys = TestKeys::new();
    let ntpd = NtpsecServer::start(&keys.ntp, &[KEY_AES128, KEY_SHA1]);
    let query = |file| {
        ntimed_query(
            &QueryArgs::new("127.0.0.1:123")
                .key(file, key_id)
                .timeout(1.0)
                .netns(ntpd.netns()),
        )
    };
    let err = query(&keys.ntp_wrong)
        .expect_err("a reply from a server with another secret must not be accepted");
    assert!(
        err.contains("exit status: 1") && err.contains("127.0.0.1:123"),
        "expected the exchange to fail: {err}"
    );
    // The same server is fine with the right secret: the failure is the key's.
    let ok = query(&keys.ntp).unwrap_or_else(|e| panic!("right key: {e}"));
    assert_eq!(ok[0]["authenticated"], Value::Bool(true), "{}", ok[0]);
}

#[test]
fn ntimed_query_ntpd_sha1() {
    query_ntpd(KEY_SHA1);
}

#[test]
fn ntimed_query_ntpd_aes128() {
    query_ntpd(KEY_AES128);
}

#[test]
fn ntimed_query_ntpd_wrong_key_sha1() {
    query_ntpd_wrong_key(KEY_SHA1);
}

#[test]
fn ntimed_query_ntpd_wrong_key_aes128() {
    query_ntpd_wrong_key(KEY_AES128);
}

fn ntpdig_against_ntimed(key_id: u32) {
    if !require_ntpsec() {
        return;
    }
    let keys = TestKeys::new();
    let ntimed = ntimed_in_netns(&keys.ntp);
    let ns = ntimed.netns().expect("ntimed runs in a namespace");
    let reply = ntpdig(ns, key_id, &keys.ntp).unwrap_or_else(|e| {
        panic!(
            "ntpdig rejected ntimed's answers with key {key_id}: {e}\nntimed log:\n{}",
            ntimed.log()
        )
    });
    assert_eq!(reply.stratum, 1, "{reply:?}");
    assert_eq!(reply.leap, "no-leap", "{reply:?}");
    assert!(
        reply.offset.abs() < AGREEMENT,
        "ntpdig measured {} s against ntimed on the same clock: {reply:?}",
        reply.offset
    );
}

fn ntpdig_wrong_key_against_ntimed(key_id: u32) {
    if !require_ntpsec() {
        return;
    }
    let keys = TestKeys::new();
    let ntimed = ntimed_in_netns(&keys.ntp);
    let ns = ntimed.netns().expect("ntimed runs in a namespace");
    let result = ntpdig_with(ns, Some(key_id), Some(&keys.ntp_wrong), 1, 1);
    let err = result.expect_err("ntpdig with the wrong secret must not accept ntimed");
    assert!(err.contains("no eligible servers"), "{err}");
}

#[test]
fn ntpdig_accepts_ntimed_sha1() {
    ntpdig_against_ntimed(KEY_SHA1);
}

#[test]
fn ntpdig_accepts_ntimed_aes128() {
    ntpdig_against_ntimed(KEY_AES128);
}

#[test]
fn ntpdig_rejects_ntimed_wrong_key_sha1() {
    ntpdig_wrong_key_against_ntimed(KEY_SHA1);
}

#[test]
fn ntpdig_rejects_ntimed_wrong_key_aes128() {
    ntpdig_wrong_key_against_ntimed(KEY_AES128);
}
