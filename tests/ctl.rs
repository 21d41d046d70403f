//! The control socket and `ntimed ctl` (ADVERSARIAL 32), against a running daemon: as
//! root, privilege-separated, with a simulated clock and one upstream ntimed server.
//! The replies parse and say what the README's schema says; who may ask what follows
//! the socket's mode and the caller's uid; idle, oversized and garbage connections
//! neither stop the daemon nor keep it from answering for long.

mod common;

use common::require::require_root;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::net::{free_port, loopback};
use common::ntimed_cli::ntimed_command;
use common::ntimed_run::{NtimedRun, toml_path};
use common::process::{RunOutput, run_with_deadline, safe_command_as, wait_until};
use serde_json::Value;

/// A privilege-separated client of `upstream`, serving on its own port, with the
/// control socket `control` (TOML lines) in its directory.
fn start_client(control: &str) -> (NtimedRun, NtimedRun, PathBuf) {
    let upstream = NtimedRun::local_server(loopback(free_port()), None).start();
    let port = free_port();
    let dir = common::files::tempdir("ctl");
    let socket = dir.path().join("ctl.sock");
    let toml = format!(
        "[clock]\nmode = \"simulated\"\nsimulated-offset = 0.1\n\n\
         [[source]]\naddress = \"127.0.0.1:{}\"\ninsecure = true\niburst = true\n\
         min-poll = 0\nmax-poll = 1\n\n\
         [[server]]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [control]\nsocket = {}\n{control}",
        upstream.ntp_port(),
        toml_path(&socket),
    );
    let run = NtimedRun::config(toml)
        .in_dir(dir)
        .wait_for_ntp_answer(port)
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "no control socket:\n{}",
        run.log()
    );
    (run, upstream, socket)
}

fn ctl(socket: &Path, args: &[&str]) -> RunOutput {
    let mut command = ntimed_command(None);
    command.arg("ctl").arg("--socket").arg(socket).args(args);
    run_with_deadline(command, Duration::from_secs(10)).expect("ntimed ctl ran")
}

fn ctl_as_nobody(socket: &Path, args: &[&str]) -> RunOutput {
    let mut command = safe_command_as(
        None,
        Some(("65534", "65534")),
        common::ntimed_cli::ntimed_bin(),
    );
    command.arg("ctl").arg("--socket").arg(socket).args(args);
    run_with_deadline(command, Duration::from_secs(10)).expect("ntimed ctl ran")
}

fn ctl_json(socket: &Path, query: &str) -> Value {
    let out = ctl(socket, &[query, "--json"]);
    assert!(out.status.success(), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

/// Sends raw bytes, returns what came back before the daemon closed.
fn raw(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The daemon may close before reading everything (an oversized request).
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn status_sources_and_server_say_what_the_schema_says() {
    if !require_root("the control socket tests") {
        return;
    }
    let (run, upstream, socket) = start_client("");
    let meta = std::fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "default mode");

    let reached = wait_until(Duration::from_secs(10), || {
        let sources = ctl_json(&socket, "sources");
        sources["sources"][0]["reach"].as_u64().unwrap_or(0) != 0
    });
    assert!(reached, "the source never became reachable:\n{}", run.log());
    let sources = ctl_json(&socket, "sources");
    let rows = sources["sources"].as_array().expect("sources array");
    assert_eq!(rows.len(), 1, "{sources}");
    let row = &rows[0];
    assert_eq!(row["name"], format!("127.0.0.1:{}", upstream.ntp_port()));
    assert_eq!(row["address"], format!("127.0.0.1:{}", upstream.ntp_port()));
    assert_eq!(row["peer"], false);
    for field in ["poll", "samples", "reach"] {
        assert!(row[field].is_i64() || row[field].is_u64(), "{field}: {row}");
    }
    for field in ["reachable", "selected"] {
        assert!(row[field].is_boolean(), "{field}: {row}");
    }
    for field in ["nts_cookies", "offset", "bound", "delay", "why"] {
        assert!(row.get(field).is_some(), "{field}: {row}");
    }
    // An insecure source: no NTS or key fields, and one of the documented states.
    assert_eq!(row["auth"], "none", "{row}");
    for field in ["aead", "key_exchange_age", "key_exchange_result", "key_id"] {
        assert!(row[field].is_null(), "{field}: {row}");
    }
    let states = [
        "reference",
        "selectable",
        "falseticker",
        "unreachable",
        "refused",
    ];
    assert!(
        states.contains(&row["state"].as_str().unwrap_or_default()),
        "{row}"
    );

    let synced = wait_until(Duration::from_secs(15), || {
        ctl_json(&socket, "status")["synchronized"] == true
    });
    assert!(synced, "never synchronized:\n{}", run.log());
    let status = ctl_json(&socket, "status");
    assert_eq!(status["stratum"], 2, "{status}");
    let sources = ctl_json(&socket, "sources");
    assert_eq!(sources["sources"][0]["state"], "reference", "{sources}");
    assert!(sources["sources"][0]["why"].is_null(), "{sources}");
    assert_eq!(status["reference_id"], "127.0.0.1", "{status}");
    assert_eq!(status["leap"], "none", "{status}");
    let number = |field: &str| {
        status[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {status}"))
    };
    assert!(number("offset").abs() < 1.0, "{status}");
    assert!(number("offset_error") >= 0.0, "{status}");
    assert!(number("frequency_ppm").abs() < 500.0, "{status}");
    assert!(number("root_delay") >= 0.0 && number("root_dispersion") >= 0.0);
    assert!(status["poll"].is_i64(), "{status}");

    let server = ctl_json(&socket, "server");
    // wait_for_ntp_answer sent plain requests.
    assert!(
        server["answered"]["plain"].as_u64().unwrap_or(0) >= 1,
        "{server}"
    );
    for field in ["keyed", "nts", "peer"] {
        assert_eq!(server["answered"][field], 0, "{server}");
    }
    // No [[nts-ke-server]]: the object is there, with nothing in it.
    let ke = &server["nts_ke"];
    assert_eq!(ke["servers"], 0, "{server}");
    assert_eq!(ke["completed"], 0, "{server}");
    assert!(ke["cookie_key_epoch"].is_null(), "{server}");
    for reason in ["tls", "bad_request", "timeout", "evicted", "refused", "io"] {
        assert_eq!(ke["failed"][reason], 0, "{reason}: {server}");
    }
    for field in [
        "nts_naks",
        "crypto_naks",
        "rate_kisses",
        "rate_limited",
        "deny_kisses",
    ] {
        assert!(server[field].is_u64(), "{field}: {server}");
    }
    for field in [
        "malformed",
        "refused",
        "auth_failed",
        "denied",
        "unauthenticated",
    ] {
        assert!(server["dropped"][field].is_u64(), "{field}: {server}");
    }

    // The tables come from the same JSON.
    let table = ctl(&socket, &["status"]);
    assert!(table.status.success(), "{}", table.describe());
    assert!(
        table.stdout.contains("synchronized    yes"),
        "{}",
        table.stdout
    );
    let table = ctl(&socket, &["sources"]);
    assert!(table.stdout.contains("127.0.0.1:"), "{}", table.stdout);
    // Root may ask for a reload; this config names no key file, certificate or
    // fleet secret (tests/reload.rs reloads some).
    let reload = ctl(&socket, &["reload"]);
    assert_eq!(
        reload.stdout,
        "reloaded: nothing (no key file, certificate, fleet secret or leap file)\n",
        "{}",
        reload.describe()
    );
}

#[test]
fn the_socket_mode_and_the_callers_uid_decide_who_may_do_what() {
    if !require_root("the control socket tests") {
        return;
    }
    // Default 0660, root's group (or ntimed's): nobody cannot connect.
    let (_run, _upstream, socket) = start_client("");
    let out = ctl_as_nobody(&socket, &["status"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("Permission denied"),
        "{}",
        out.describe()
    );

    // 0666: nobody may read status, but not reload.
    let (_run, _upstream, socket) = start_client("mode = 0o666\n");
    let out = ctl_as_nobody(&socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", out.describe());
    let status: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(status["stratum"].is_u64(), "{status}");
    let out = ctl_as_nobody(&socket, &["reload"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains("reload is for root only (you are uid 65534)"),
        "{}",
        out.describe()
    );
}

#[test]
fn idle_oversized_and_garbage_connections_do_not_stop_the_daemon() {
    if !require_root("the control socket tests") {
        return;
    }
    let (mut run, _upstream, socket) = start_client("");
    // 100 connections that send nothing: 16 hold the slots until the 2 s read timeout,
    // the rest are closed at once.
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    let mut closed = 0;
    for mut stream in &idle {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 100 - 16, "only {closed} of 100 closed at once");
    let answered = wait_until(Duration::from_secs(6), || {
        ctl(&socket, &["status"]).status.success()
    });
    assert!(answered, "status never answered:\n{}", run.log());
    drop(idle);

    // Oversized: no request is more than 256 bytes.
    let reply = raw(&socket, &[b'x'; 100_000]);
    assert!(reply.is_empty() || reply.starts_with("error: "), "{reply}");
    // Garbage, and a request cut short.
    let reply = raw(&socket, b"\x00\xff\xfe garbage\n");
    assert!(reply.starts_with("error: "), "{reply}");
    let reply = raw(&socket, b"status");
    assert!(reply.is_empty() || reply.starts_with("error: "), "{reply}");
    let reply = raw(&socket, b"stats json\n");
    assert!(reply.starts_with("error: unknown request"), "{reply}");

    run.assert_running();
    let out = ctl(&socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", out.describe());
}

#[test]
fn a_stale_socket_is_replaced_and_a_file_is_not() {
    if !require_root("the control socket tests") {
        return;
    }
    let (mut run, _upstream, socket) = start_client("");
    run.stop();
    // The socket file stays behind after the daemon is gone: a restart replaces it.
    let gone = wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&socket).is_err()
    });
    assert!(gone && socket.exists());
    run.restart();
    let answered = wait_until(Duration::from_secs(10), || {
        ctl(&socket, &["status"]).status.success()
    });
    assert!(answered, "no answer after a restart:\n{}", run.log());
    run.stop();

    std::fs::remove_file(&socket).expect("remove the socket");
    std::fs::write(&socket, "not a socket").expect("write a file");
    let out = NtimedRun::config_file(&run.dir().join("ntimed.toml"))
        .run_to_exit(Duration::from_secs(10))
        .expect("ran");
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stderr.contains("not a socket"), "{}", out.describe());
    assert_eq!(
        std::fs::read_to_string(&socket).expect("still there"),
        "not a socket"
    );
}

#[test]
fn check_reports_a_bad_control_mode_and_group() {
    let dir = common::files::tempdir("ctl-check");
    let config = dir.path().join("ntimed.toml");
    for (control, error) in [
        (
            "mode = 0o4777\n",
            "[control] mode 0o4777 is more than the permission bits",
        ),
        (
            "group = \"no-such-group-ntimed\"\n",
            "[control] no group \"no-such-group-ntimed\"",
        ),
    ] {
        let text = format!(
            "[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{}\"\n\
             [sandbox]\nuser = \"nobody\"\nstate-dir = \".\"\n[control]\nsocket = \"ctl.sock\"\n{control}",
            free_port()
        );
        std::fs::write(&config, text).expect("write the config");
        let mut command = ntimed_command(None);
        command.arg("check").arg("--config").arg(&config);
        let out = run_with_deadline(command, Duration::from_secs(10)).expect("ran");
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        assert!(out.stdout.contains(error), "{}", out.describe());
    }
}
