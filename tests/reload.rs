//! Reload without restart (ADVERSARIAL 34): `ntimed ctl reload` and SIGHUP swap in a
//! new key file and NTS-KE certificate in a running privilege-separated daemon, while
//! it keeps answering; a bad key file or certificate keeps every old one, and the
//! reason comes back to `ctl reload`.

mod common;

use common::require::require_root;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::files::write_secret_file;
use common::net::{free_port, loopback, sntp_probe};
use common::ntimed_cli::{QueryArgs, ntimed_command, ntimed_ke, ntimed_query};
use common::ntimed_run::{NtimedRun, toml_path};
use common::nts::TestCerts;
use common::process::{RunOutput, run_with_deadline, wait_until};

fn key_line(hex_byte: &str) -> String {
    format!("1 AES128 HEX:{}\n", hex_byte.repeat(16))
}

fn ctl(socket: &Path, args: &[&str]) -> RunOutput {
    let mut command = ntimed_command(None);
    command.arg("ctl").arg("--socket").arg(socket).args(args);
    run_with_deadline(command, Duration::from_secs(20)).expect("ntimed ctl ran")
}

/// Whether a request signed with key 1 from `keys` is answered.
fn keyed_answer(port: u16, keys: &Path) -> bool {
    let args = QueryArgs::new(format!("127.0.0.1:{port}"))
        .key(keys, 1)
        .timeout(1.0);
    ntimed_query(&args).is_ok()
}

fn ke_succeeds(port: u16, ca: &Path) -> bool {
    ntimed_ke(None, &format!("localhost:{port}"), Some(ca), false)
        .is_ok_and(|out| out.status.success())
}

struct Files {
    keys: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

impl Files {
    fn certificate(&self, certs: &TestCerts, chain: &str, key: &str) {
        std::fs::copy(certs.path(chain), &self.chain).expect("copy chain");
        let pem = std::fs::read_to_string(certs.path(key)).expect("read key");
        write_secret_file(&self.key, &pem);
    }
}

#[test]
fn reload_swaps_keys_and_certificates_and_a_bad_file_keeps_the_old_ones() {
    if !require_root("the reload tests") {
        return;
    }
    let certs = TestCerts::new();
    let dir = common::files::tempdir("reload");
    let files = Files {
        keys: dir.path().join("ntp.keys"),
        chain: dir.path().join("ke.pem"),
        key: dir.path().join("ke.key"),
    };
    write_secret_file(&files.keys, &key_line("aa"));
    files.certificate(&certs, "srv-chain.pem", "srv.key");
    let old_keys = dir.path().join("old.keys");
    write_secret_file(&old_keys, &key_line("aa"));
    let new_keys = dir.path().join("new.keys");
    write_secret_file(&new_keys, &key_line("bb"));
    let socket = dir.path().join("ctl.sock");
    let (ntp_port, ke_port) = (free_port(), free_port());
    let toml = format!(
        "[keys]\nfile = {keys}\n\n[local]\nstratum = 1\n\n\
         [[server]]\nlisten = \"127.0.0.1:{ntp_port}\"\n\n\
         [[nts-ke-server]]\nlisten = \"127.0.0.1:{ke_port}\"\n\
         certificate-chain = {chain}\nprivate-key = {key}\nname = \"localhost\"\n\n\
         [nts]\nkey-dir = {state}\n\n[control]\nsocket = {socket}\n",
        keys = toml_path(&files.keys),
        chain = toml_path(&files.chain),
        key = toml_path(&files.key),
        state = toml_path(&dir.path().join("state")),
        socket = toml_path(&socket),
    );
    let mut run = NtimedRun::config(toml)
        .in_dir(dir)
        .wait_for_ntp_answer(ntp_port)
        .wait_for_ke(ke_port)
        .start();
    let served = || sntp_probe(loopback(ntp_port), Duration::from_secs(2)).is_some();
    assert!(keyed_answer(ntp_port, &old_keys), "{}", run.log());
    assert!(ke_succeeds(ke_port, &certs.ca()), "{}", run.log());

    // A new key and a certificate from another CA: both swapped in at once.
    write_secret_file(&files.keys, &key_line("bb"));
    files.certificate(&certs, "untrusted.pem", "untrusted.key");
    let reload = ctl(&socket, &["reload"]);
    assert!(
        reload.status.success(),
        "{}\n{}",
        reload.describe(),
        run.log()
    );
    assert_eq!(
        reload.stdout,
        "reloaded: key file (1 keys), 1 certificate(s)\n",
        "{}",
        reload.describe()
    );
    assert!(keyed_answer(ntp_port, &new_keys), "{}", run.log());
    assert!(
        !keyed_answer(ntp_port, &old_keys),
        "the old key still answers"
    );
    assert!(ke_succeeds(ke_port, &certs.path("other-ca.pem")));
    assert!(
        !ke_succeeds(ke_port, &certs.ca()),
        "the old certificate is still served"
    );
    assert!(served());

    // Each bad file is refused with its reason, and everything old stays.
    let refused = |what: &str, expect: &str| {
        let reload = ctl(&socket, &["reload"]);
        assert!(!reload.status.success(), "{what}: {}", reload.describe());
        assert!(
            reload.stderr.contains(expect),
            "{what}: {}\n{}",
            reload.describe(),
            run.log()
        );
        assert!(keyed_answer(ntp_port, &new_keys), "{what}: the key changed");
        assert!(
            ke_succeeds(ke_port, &certs.path("other-ca.pem")),
            "{what}: the certificate changed"
        );
        assert!(served(), "{what}: not serving");
    };
    // A broken key file, together with a good certificate: neither is taken.
    std::fs::write(&files.keys, "1 AES128 HEX:zz\n").expect("write");
    files.certificate(&certs, "srv-chain.pem", "srv.key");
    refused("broken key file", "ntp.keys:1");
    assert!(!ke_succeeds(ke_port, &certs.ca()), "half applied");
    write_secret_file(&files.keys, &key_line("bb"));
    std::fs::set_permissions(&files.keys, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    refused("readable key file", "ntp.keys");
    write_secret_file(&files.keys, &key_line("bb"));
    files.certificate(&certs, "expired.pem", "expired.key");
    refused("expired certificate", "ke.pem");
    files.certificate(&certs, "untrusted.pem", "srv.key");
    refused("mismatched key", "ke.key");
    files.certificate(&certs, "wrong-name.pem", "wrong-name.key");
    refused("wrong name", "ke.pem");

    // SIGHUP to the supervisor reloads too (and the JSON reply has its schema).
    files.certificate(&certs, "untrusted.pem", "untrusted.key");
    let json = ctl(&socket, &["reload", "--json"]);
    let value: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.describe()));
    assert!(
        value["reloaded"].is_array() && value["warnings"].is_array(),
        "{value}"
    );
    write_secret_file(&files.keys, &key_line("aa"));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &run.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    assert!(
        wait_until(Duration::from_secs(10), || keyed_answer(
            ntp_port, &old_keys
        )),
        "SIGHUP did not reload:\n{}",
        run.log()
    );
    run.assert_running();
    assert!(run.log().contains("SIGHUP: reloading"), "{}", run.log());

    // A SIGHUP to every process (as `pkill -HUP ntimed` or a group-wide signal sends)
    // stops none: the clock process ignores it, the engine leaves it to the supervisor.
    let children = std::process::Command::new("pgrep")
        .args(["-P", &run.pid().to_string()])
        .output()
        .expect("pgrep");
    let children = String::from_utf8_lossy(&children.stdout).into_owned();
    assert_eq!(
        children.lines().count(),
        2,
        "clock process and engine: {children}"
    );
    for pid in children.lines() {
        let hup = std::process::Command::new("kill")
            .args(["-HUP", pid.trim()])
            .status();
        assert!(hup.is_ok_and(|s| s.success()));
    }
    std::thread::sleep(Duration::from_millis(500));
    run.assert_running();
    assert!(
        served(),
        "not serving after a SIGHUP to the children:\n{}",
        run.log()
    );
    assert!(keyed_answer(ntp_port, &old_keys), "{}", run.log());
}
