//! `[metrics]` (ADVERSARIAL 33) and the richer `ntimed ctl` replies, against running
//! daemons: as root, privilege-separated (the listener is bound by the supervisor and
//! handed to the sandboxed engine), with a simulated clock. An NTS server with
//! `[metrics]` and a client of it with `[metrics]`; the exposition parses, every
//! sample has its `# TYPE`, counters move with traffic, the NTS-KE counters and the
//! sources' new fields say what happened, and no key or cookie key shows anywhere.
//! Idle connections are capped while a scrape still answers; oversized, slow,
//! wrong-method and wrong-path requests are refused.

mod common;

use common::require::require_root;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::net::{free_port, loopback, sntp_probe};
use common::ntimed_cli::ntimed_command;
use common::ntimed_run::{NtimedRun, nts_server_toml, toml_path};
use common::nts::TestCerts;
use common::process::{RunOutput, run_with_deadline, wait_until};
use serde_json::Value;

/// A whole HTTP exchange: `request` sent, everything read until the server closes.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may close before reading everything (an oversized request).
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// The body of a 200 answer to `GET /metrics`.
fn scrape(addr: SocketAddr) -> String {
    let reply = get(addr, "/metrics");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Samples by `name{labels}`, checking the exposition's shape on the way: every line
/// is a `# HELP`, a `# TYPE` or a `name{labels} value` sample whose name has a
/// `# TYPE` (and a `# HELP`) above it; counters end in `_total`; names start
/// `ntimed_`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            typed.insert(name.to_string(), kind.to_string());
        } else {
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{line}: value: {e}"));
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line}"
                );
            }
            assert!(name.starts_with("ntimed_"), "{line}");
            assert!(typed.contains_key(name), "no # TYPE for {line}");
            assert!(helped.contains(name), "no # HELP for {line}");
            samples.insert(series.to_string(), value);
        }
    }
    samples
}

fn ctl_json(socket: &Path, query: &str) -> Value {
    let mut command = ntimed_command(None);
    command
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args([query, "--json"]);
    let out: RunOutput =
        run_with_deadline(command, Duration::from_secs(10)).expect("ntimed ctl ran");
    assert!(out.status.success(), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

/// Every secret the daemons hold, as they could leak: the key file's and the cookie
/// key file's contents, whole and line by line, and each line's longest word.
fn secrets(files: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(word) = line.split_whitespace().max_by_key(|w| w.len())
                && word.len() >= 16
            {
                out.push(word.to_string());
            }
        }
    }
    assert!(!out.is_empty(), "no secrets found to look for in {files:?}");
    out
}

#[test]
fn scrapes_and_ctl_say_what_the_daemons_do_and_no_secret() {
    if !require_root("the metrics tests") {
        return;
    }
    let certs = TestCerts::new();
    // The NTS server, with [metrics] and a [keys] file (whose secrets must not show).
    let keys = common::keys::TestKeys::new();
    let (ntp_port, ke_port, server_metrics) = (free_port(), free_port(), loopback(free_port()));
    let server_dir = common::files::tempdir("metrics-server");
    let key_dir = server_dir.path().join("state");
    let server_socket = server_dir.path().join("ctl.sock");
    let toml = format!(
        "{}\n[keys]\nfile = {}\n\n[metrics]\nlisten = \"{server_metrics}\"\n\n\
         [control]\nsocket = {}\n",
        nts_server_toml(&certs, ntp_port, ke_port, &key_dir),
        toml_path(&keys.chrony),
        toml_path(&server_socket),
    );
    let server = NtimedRun::config(toml)
        .in_dir(server_dir)
        .wait_for_ntp(ntp_port)
        .wait_for_ke(ke_port)
        .start();

    // Its client: one NTS source, serving NTP itself, with [metrics].
    let (client_port, client_metrics) = (free_port(), loopback(free_port()));
    let client_dir = common::files::tempdir("metrics-client");
    let client_socket = client_dir.path().join("ctl.sock");
    let toml = format!(
        "[clock]\nmode = \"simulated\"\nsimulated-offset = 0.1\n\n\
         [[source]]\naddress = \"localhost:{ntp_port}\"\n\
         nts = {{ ke = \"localhost:{ke_port}\", ca = {} }}\n\
         iburst = true\nmin-poll = 0\nmax-poll = 1\n\n\
         [[server]]\nlisten = \"127.0.0.1:{client_port}\"\n\n\
         [metrics]\nlisten = \"{client_metrics}\"\n\n\
         [control]\nsocket = {}\n",
        toml_path(&certs.ca()),
        toml_path(&client_socket),
    );
    let client = NtimedRun::config(toml)
        .in_dir(client_dir)
        .wait_for_ntp(client_port)
        .start();

    // The client's source comes to be used; its row says how it authenticates.
    let selected = wait_until(Duration::from_secs(20), || {
        let text = scrape(client_metrics);
        parse(&text).iter().any(|(series, value)| {
            series.starts_with("ntimed_source_state{")
                && series.contains("state=\"reference\"")
                && *value == 1.0
        })
    });
    assert!(
        selected,
        "the source never became the reference:\n{}\n{}",
        scrape(client_metrics),
        client.log()
    );
    let samples = parse(&scrape(client_metrics));
    let source = samples
        .keys()
        .find(|k| k.starts_with("ntimed_source_reach{"))
        .expect("a source reach sample")
        .clone();
    assert!(samples[&source] > 0.0, "{source}");
    assert_eq!(
        samples.get("ntimed_synchronized"),
        Some(&1.0),
        "{samples:?}"
    );
    assert_eq!(samples.get("ntimed_stratum"), Some(&2.0), "{samples:?}");
    for name in [
        "ntimed_offset_seconds",
        "ntimed_offset_error_seconds",
        "ntimed_frequency_ppm",
        "ntimed_root_delay_seconds",
        "ntimed_root_dispersion_seconds",
    ] {
        assert!(samples.contains_key(name), "{name}: {samples:?}");
    }
    // Exactly one state per source is 1.
    let states: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("ntimed_source_state{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(states, 1.0, "{samples:?}");
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("ntimed_source_nts_cookies{"))
    );
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("ntimed_source_delay_seconds{"))
    );

    let sources = ctl_json(&client_socket, "sources");
    let row = &sources["sources"][0];
    assert_eq!(row["auth"], "nts", "{row}");
    assert_eq!(row["state"], "reference", "{row}");
    assert!(row["why"].is_null(), "{row}");
    assert_eq!(row["key_exchange_result"], "ok", "{row}");
    assert!(
        row["key_exchange_age"].as_f64().is_some_and(|a| a >= 0.0),
        "{row}"
    );
    let aead = row["aead"].as_str().expect("aead");
    assert!(aead.starts_with("AES-"), "{row}");
    assert!(row["key_id"].is_null(), "{row}");
    assert!(row["delay"].as_f64().is_some_and(|d| d >= 0.0), "{row}");

    // The server counted the client's key exchange and NTS requests.
    let before = parse(&scrape(server_metrics));
    assert!(
        before["ntimed_nts_ke_exchanges_total"] >= 1.0,
        "{before:?}\n{}",
        server.log()
    );
    assert!(before["ntimed_server_requests_total{kind=\"nts\"}"] >= 1.0);
    assert!(
        before.contains_key("ntimed_nts_cookie_key_epoch"),
        "{before:?}"
    );
    assert_eq!(before["ntimed_nts_ke_in_progress"], 0.0);
    for reason in ["tls", "bad_request", "timeout", "evicted", "refused", "io"] {
        assert!(
            before.contains_key(&format!(
                "ntimed_nts_ke_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {before:?}"
        );
    }
    // Without a client role: what `ctl status` says ([local] stratum 1), no sources.
    assert_eq!(before.get("ntimed_stratum"), Some(&1.0), "{before:?}");
    assert!(
        !before.keys().any(|k| k.starts_with("ntimed_source_")),
        "{before:?}"
    );

    // A plain request moves the plain counter by one.
    let plain = "ntimed_server_requests_total{kind=\"plain\"}";
    let plain_before = before[plain];
    assert!(sntp_probe(loopback(ntp_port), Duration::from_secs(2)).is_some());
    let after = parse(&scrape(server_metrics));
    assert_eq!(after[plain], plain_before + 1.0, "{after:?}");

    // ctl server: the nts_ke object, in the README's schema.
    let counters = ctl_json(&server_socket, "server");
    let ke = &counters["nts_ke"];
    assert_eq!(ke["servers"], 1, "{counters}");
    assert!(
        ke["completed"].as_u64().is_some_and(|n| n >= 1),
        "{counters}"
    );
    assert!(ke["in_progress"].is_u64(), "{counters}");
    assert!(ke["cookie_key_epoch"].is_u64(), "{counters}");
    for reason in ["tls", "bad_request", "timeout", "evicted", "refused", "io"] {
        assert!(ke["failed"][reason].is_u64(), "{reason}: {counters}");
    }
    assert!(counters["answered"]["peer"].is_u64(), "{counters}");
    assert_eq!(
        ke["cookie_key_epoch"].as_f64(),
        after.get("ntimed_nts_cookie_key_epoch").copied()
    );

    // No secret anywhere: neither the [keys] secrets nor the cookie master keys.
    let cookie_keys = key_dir.join(ntimed::daemon::nts::COOKIE_KEY_FILE);
    let secrets = secrets(&[&keys.chrony, &cookie_keys]);
    let outputs = [
        scrape(server_metrics),
        scrape(client_metrics),
        counters.to_string(),
        sources.to_string(),
        ctl_json(&server_socket, "status").to_string(),
    ];
    for output in &outputs {
        for secret in &secrets {
            assert!(
                !output
                    .to_ascii_lowercase()
                    .contains(&secret.to_ascii_lowercase()),
                "a secret shows: {secret}"
            );
        }
    }

    // Anything but GET /metrics is refused.
    let reply = get(server_metrics, "/");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    let reply = get(server_metrics, "/metrics/../keys");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    let reply = http(
        server_metrics,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("allow: get"), "{reply}");
}

#[test]
fn idle_slow_and_oversized_connections_do_not_keep_a_scrape_out() {
    if !require_root("the metrics tests") {
        return;
    }
    let (port, metrics) = (free_port(), loopback(free_port()));
    let toml = format!(
        "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n"
    );
    let mut run = NtimedRun::config(toml).wait_for_ntp(port).start();
    let _ = parse(&scrape(metrics));

    // 48 connections that send nothing: 16 are kept, each newcomer ending the oldest
    // idle one, so at least 32 are closed at once (well before the 2 s a head may take).
    let idle: Vec<TcpStream> = (0..48)
        .map(|_| TcpStream::connect_timeout(&metrics, Duration::from_secs(2)).expect("connect"))
        .collect();
    let started = Instant::now();
    let mut closed = vec![false; idle.len()];
    for stream in &idle {
        stream.set_nonblocking(true).expect("nonblocking");
    }
    let count = |closed: &[bool]| closed.iter().filter(|c| **c).count();
    while started.elapsed() < Duration::from_millis(1500) && count(&closed) < 32 {
        for (stream, closed) in idle.iter().zip(closed.iter_mut()) {
            if !*closed {
                *closed = matches!((&mut &*stream).read(&mut [0u8; 1]), Ok(0));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        count(&closed) >= 32,
        "only {} of 48 idle connections were closed at once",
        count(&closed)
    );
    // With 16 idle ones still open, a scrape answers at once: it ends the oldest.
    let started = Instant::now();
    let _ = parse(&scrape(metrics));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(idle);

    // A request head dripped too slowly is cut off.
    let mut slow = TcpStream::connect(metrics).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "a slow head was kept {:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&reply).contains(" 200 "),
        "{reply:?}"
    );

    // An oversized head gets 431 (or is closed), never metrics.
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    let reply = http(metrics, &big);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    run.assert_running();
    let _ = parse(&scrape(metrics));
}
