//! The operator commands: `ntimed check` on good and broken configs (every problem at
//! once, each naming its file and line), and `ntimed keygen`'s key files read by
//! ntimed, chronyd and NTPsec's ntpdig.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod common;

use common::chrony::ChronydQuery;
use common::files::tempdir;
use common::net::{free_port, loopback};
use common::netns::NetNs;
use common::ntimed_cli::ntimed_command;
use common::ntimed_run::{NtimedRun, SANDBOX_TOML, toml_path};
use common::ntpsec::ntpdig;
use common::nts::TestCerts;
use common::process::{RunOutput, run_with_deadline};
use common::require::{require_chrony, require_ntpsec};
use ntimed::auth::{KeyFileFormat, KeyStore, KeyType};

/// `ntimed ARGS` (without CAP_SYS_TIME), which must exit within 10 s.
fn ntimed(args: &[&str]) -> RunOutput {
    let mut cmd = ntimed_command(None);
    cmd.args(args);
    run_with_deadline(cmd, Duration::from_secs(10)).expect("ntimed exits")
}

fn check(config: &Path) -> RunOutput {
    ntimed(&["check", "--config", config.to_str().expect("UTF-8 path")])
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write test file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

const KEYS: &str = "1 AES128 HEX:fa4efa4efa4efa4efa4efa4efa4efa4e\n";

/// The civil date (y, m, d) `days` after 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

/// A self-signed certificate for localhost that expires `days` from today (at 00:00
/// UTC), written as `NAME.pem` and `NAME.key` (0600) in `dir`.
fn expiring_cert(dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf) {
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
        / 86_400;
    let (y, m, d) = civil_from_days(today + days);
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("cert params");
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed");
    let (pem, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write(&pem, &cert.pem(), 0o644);
    write(&key_path, &key.serialize_pem(), 0o600);
    (pem, key_path)
}

fn nts_ke_server(chain: &Path, key: &Path) -> String {
    format!(
        "[[nts-ke-server]]\nlisten = \"127.0.0.1:{}\"\ncertificate-chain = {}\nprivate-key = {}\nname = \"localhost\"\n",
        free_port(),
        toml_path(chain),
        toml_path(key)
    )
}

#[test]
fn check_passes_a_good_config() {
    let dir = tempdir("check");
    let certs = TestCerts::new();
    write(&dir.path().join("test.keys"), KEYS, 0o600);
    let config = dir.path().join("ntimed.toml");
    let text = format!(
        "[keys]\nfile = \"test.keys\"\n[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{}\"\n\
         [nts]\nkey-dir = \"nts-keys\"\n{}\
         [clock]\nmode = \"observe\"\ndrift-file = \"drift\"\n\
         [[source]]\naddress = \"127.0.0.1:{}\"\nkey = 1\n{SANDBOX_TOML}",
        free_port(),
        nts_ke_server(&certs.path("srv-chain.pem"), &certs.path("srv.key")),
        free_port()
    );
    write(&config, &text, 0o644);
    let out = check(&config);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        format!("{}: ok\n", config.display()),
        "{}",
        out.describe()
    );
    // It changed nothing: the key directory `run` would create is not there.
    assert!(!dir.path().join("nts-keys").exists());
}

/// `[metrics]` on an address beyond loopback is a warning (it has no authentication),
/// not an error; on loopback, nothing to say.
#[test]
fn check_warns_about_metrics_beyond_loopback() {
    let dir = tempdir("check-metrics");
    let config = dir.path().join("ntimed.toml");
    let base = format!(
        "[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{}\"\n{SANDBOX_TOML}",
        free_port()
    );
    write(
        &config,
        &format!("{base}[metrics]\nlisten = \"0.0.0.0:9975\"\n"),
        0o644,
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    let shown = config.display();
    assert!(
        out.stdout
            .contains("warning: [metrics] listen 0.0.0.0:9975 is not a loopback address"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.ends_with(&format!("{shown}: ok, 1 warning\n")),
        "{}",
        out.describe()
    );
    write(
        &config,
        &format!("{base}[metrics]\nlisten = \"127.0.0.1:9975\"\n"),
        0o644,
    );
    let out = check(&config);
    assert_eq!(out.stdout, format!("{shown}: ok\n"), "{}", out.describe());
}

/// A config error, a readable key file, a missing certificate, an expired one and one
/// about to expire: all reported in one run, each with its file (and line).
#[test]
fn check_reports_every_problem_at_once() {
    let dir = tempdir("check");
    let certs = TestCerts::new();
    let keys = dir.path().join("test.keys");
    write(&keys, KEYS, 0o640);
    let (soon, soon_key) = expiring_cert(dir.path(), "soon", 5);
    let missing = dir.path().join("missing.pem");
    let config = dir.path().join("ntimed.toml");
    let text = format!(
        "[keys]\nfile = \"test.keys\"\n[local]\nstratum = 16\n[[server]]\nlisten = \"127.0.0.1:{}\"\n\
         [nts]\nkey-dir = \"nts-keys\"\n{}{}{}{SANDBOX_TOML}",
        free_port(),
        nts_ke_server(&soon, &soon_key),
        nts_ke_server(&certs.path("expired.pem"), &certs.path("expired.key")),
        nts_ke_server(&missing, &certs.path("srv.key")),
    );
    write(&config, &text, 0o644);
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let has = |prefix: String, rest: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&prefix) && l.contains(rest))
    };
    let config = config.display();
    assert!(
        has(
            format!("error: {config}:4: "),
            "[local] stratum must be 1 to 15"
        ),
        "{lines:#?}"
    );
    let keys = keys.display();
    assert!(
        has(format!("error: {keys}: mode 0640"), "chmod 600"),
        "{lines:#?}"
    );
    let soon = soon.display();
    assert!(
        has(format!("warning: {soon}: certificate expires on"), " days)"),
        "{lines:#?}"
    );
    let expired = certs.path("expired.pem");
    let expired = expired.display();
    assert!(
        has(
            format!("error: {expired}: certificate expired on"),
            "days ago)"
        ),
        "{lines:#?}"
    );
    let missing = missing.display();
    assert!(has(format!("error: {missing}: "), ""), "{lines:#?}");
    assert_eq!(
        lines.last().copied(),
        Some(format!("{config}: 4 errors, 1 warning").as_str()),
        "{lines:#?}"
    );
    assert_eq!(lines.len(), 6, "{lines:#?}");
}

#[test]
fn check_names_the_line_of_a_config_that_does_not_parse() {
    let dir = tempdir("check");
    let config = dir.path().join("ntimed.toml");
    write(
        &config,
        "[[server]]\nlisten = \"127.0.0.1:123\"\nlisen = 1\n",
        0o644,
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let config = config.display();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with(&format!(
            "error: {config}:3: unknown field `lisen`, expected one of `listen`, "
        )),
        "{}",
        out.stdout
    );
    assert_eq!(lines[1], format!("{config}: 1 error"));
}

/// `ntimed keygen ARGS` to standard output.
fn keygen(args: &[&str]) -> String {
    let out = ntimed(&[&["keygen"], args].concat());
    assert!(out.status.success(), "{}", out.describe());
    out.stdout
}

#[test]
fn keygen_files_are_read_by_ntimed_and_never_overwritten() {
    for (format, key_type, name) in [
        ("ntp", KeyType::Aes128Cmac, "AES-128"),
        ("chrony", KeyType::Aes128Cmac, "AES128 HEX:"),
    ] {
        let text = keygen(&["--format", format, "--count", "3", "--id-start", "7"]);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with(&format!("7 {name}"))),
            "{text}"
        );
        let store = KeyStore::parse("generated", &text, KeyFileFormat::Auto).expect("parses");
        assert_eq!(store.len(), 3);
        assert!((7..=9).all(|id| store.get(id).is_some_and(|k| k.key_type() == key_type)));
    }
    let sha1 = keygen(&["--type", "sha1", "--format", "ntp"]);
    let store = KeyStore::parse("generated", &sha1, KeyFileFormat::Ntp).expect("parses");
    assert_eq!(store.get(1).map(|k| k.key_type()), Some(KeyType::Sha1));
    assert_ne!(keygen(&[]), keygen(&[]), "fresh secrets every time");

    let dir = tempdir("keygen");
    let path = dir.path().join("new.keys");
    let path_arg = path.to_str().expect("UTF-8 path");
    let out = ntimed(&["keygen", "--output", path_arg]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        out.describe()
    );
    let mode = std::fs::metadata(&path)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let written = std::fs::read_to_string(&path).expect("read back");
    let out = ntimed(&["keygen", "--output", path_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("does not overwrite"),
        "{}",
        out.describe()
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read back"), written);
    let out = ntimed(&["keygen", "--id-start", "65535", "--count", "2"]);
    assert!(
        !out.status.success() && out.stderr.contains("65535"),
        "{}",
        out.describe()
    );
}

/// chrony keyfiles from `ntimed keygen` (the default type, AES128-CMAC, and AES256):
/// an ntimed server reads each and `chronyd -Q` accepts that server's answers under it.
#[test]
fn keygen_chrony_keys_work_between_ntimed_and_chronyd() {
    if !require_chrony() {
        return;
    }
    let dir = tempdir("keygen");
    for key_type in ["AES128", "AES256"] {
        let keys = dir.path().join(format!("{key_type}.keys"));
        let path = keys.to_str().expect("UTF-8");
        let out = ntimed(&[
            "keygen", "--format", "chrony", "--type", key_type, "--output", path,
        ]);
        assert!(out.status.success(), "{}", out.describe());
        let server = NtimedRun::local_server(loopback(free_port()), Some(&keys)).start();
        let offset = ChronydQuery::new("127.0.0.1", server.ntp_port())
            .key(&keys, 1)
            .run()
            .unwrap_or_else(|e| {
                panic!("chronyd -Q, {key_type}: {e}\nntimed log:\n{}", server.log())
            })
            .offset;
        assert!(offset.abs() < 1e-3, "same clock on both ends: {offset}");
    }
}

/// ntp.keys files from `ntimed keygen` (AES-128 and AES-256, ids at the top of the
/// range): an ntimed server reads each and NTPsec's ntpdig accepts its answers under
/// key 65535.
#[test]
fn keygen_ntp_keys_work_between_ntimed_and_ntpdig() {
    if !require_ntpsec() {
        return;
    }
    let dir = tempdir("keygen");
    for key_type in ["AES128", "AES256"] {
        let keys = dir.path().join(format!("{key_type}.keys"));
        let path = keys.to_str().expect("UTF-8");
        let args = [
            "keygen",
            "--type",
            key_type,
            "--id-start",
            "65534",
            "--count",
            "2",
            "--output",
            path,
        ];
        let out = ntimed(&args);
        assert!(out.status.success(), "{}", out.describe());
        let listen = "127.0.0.1:123".parse().expect("address");
        let server = NtimedRun::local_server(listen, Some(&keys))
            .netns(NetNs::new())
            .start();
        let ns = server.netns().expect("in a namespace");
        let reply = ntpdig(ns, 65_535, &keys)
            .unwrap_or_else(|e| panic!("ntpdig, {key_type}: {e}\nntimed log:\n{}", server.log()));
        assert!(reply.offset.abs() < 1e-2, "{reply:?}");
    }
}
