//! The first run as root on a fresh machine: the README's example server starts as
//! written from a checkout (its jail is made for it), and a configuration with several
//! problems gets all of them at once, before anything is bound or split.

mod common;

use common::require::require_root;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::files::write_secret_file;
use common::net::free_port;
use common::ntimed_cli::ntimed_ke;
use common::ntimed_run::NtimedRun;
use common::nts::TestCerts;

fn copy(from: &Path, to: &Path, mode: u32) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// examples/server.toml, keys/ and certs/ laid out as in the repository (with
/// `target/` as cargo leaves it), the ports changed to free ones and nothing else.
#[test]
fn the_example_server_starts_as_root_from_a_checkout() {
    if !require_root("the first-run tests") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkout = common::files::tempdir("checkout");
    let root = checkout.path();
    for dir in ["examples", "keys", "certs", "target"] {
        std::fs::create_dir(root.join(dir)).expect("mkdir");
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    copy(
        &repo.join("keys/example.keys"),
        &root.join("keys/example.keys"),
        0o600,
    );
    let certs = TestCerts::new();
    copy(
        &certs.path("srv-chain.pem"),
        &root.join("certs/srv-chain.pem"),
        0o644,
    );
    copy(&certs.path("srv.key"), &root.join("certs/srv.key"), 0o600);
    let (ntp_port, ke_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(repo.join("examples/server.toml")).expect("example");
    assert!(text.contains("[sandbox]"), "the example names its own jail");
    let text = text
        .replace("11123", &ntp_port.to_string())
        .replace("14460", &ke_port.to_string());
    let config = root.join("examples/server.toml");
    std::fs::write(&config, text).expect("write");
    let jail = root.join("target/ntimed-jail");
    assert!(!jail.exists());

    let run = NtimedRun::config_file(&config)
        .wait_for_ntp_answer(ntp_port)
        .wait_for_ke(ke_port)
        .start();
    let meta = std::fs::metadata(&jail).expect("the state directory was made");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o755),
        "{}",
        run.log()
    );
    let nobody = ntimed::sys::lookup_user("nobody")
        .ok()
        .flatten()
        .expect("nobody");
    let keys = std::fs::metadata(jail.join("nts")).expect("key-dir");
    assert_eq!(keys.uid(), nobody.uid, "the engine's cookie-key directory");
    let ke = ntimed_ke(
        None,
        &format!("localhost:{ke_port}"),
        Some(&certs.ca()),
        false,
    )
    .expect("ntimed ke ran");
    assert!(ke.status.success(), "{}\n{}", ke.describe(), run.log());
    assert!(run.log().contains("privilege separation"), "{}", run.log());
}

#[test]
fn every_problem_is_reported_at_once_before_the_split() {
    if !require_root("the first-run tests") {
        return;
    }
    let dir = common::files::tempdir("first-run");
    let keys = dir.path().join("ntp.keys");
    write_secret_file(&keys, "1 AES128 HEX:00112233445566778899aabbccddeeff\n");
    // A parent anyone may write: the state directory may not be made in it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let port = free_port();
    let toml = format!(
        "[local]\nstratum = 1\n\n[[server]]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [nts]\nkey-dir = \"elsewhere\"\n\n\
         [sandbox]\nuser = \"ntimed-no-such-user\"\nstate-dir = \"open/jail\"\n"
    );
    let out = NtimedRun::config(toml)
        .in_dir(dir)
        .run_to_exit(Duration::from_secs(20))
        .expect("it exits on its own");
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    for problem in [
        "2 problems stop the start",
        "user \"ntimed-no-such-user\" does not exist",
        "open/jail: cannot be created safely",
    ] {
        assert!(
            out.stderr.contains(problem),
            "{problem}: {}",
            out.describe()
        );
    }
    assert!(
        !out.stderr.contains("privilege separation"),
        "{}",
        out.describe()
    );
    assert!(!open.join("jail").exists(), "nothing was made");
}
