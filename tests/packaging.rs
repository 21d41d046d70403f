//! What the Debian package ships and the demo shows of it: the man pages and shell
//! completions `ntimed generate` makes from the command line's own definitions, the
//! example client config `packaging/ntimed.toml` passing `ntimed check`, and the
//! demo's `ntimed ctl` step.

use std::path::Path;
use std::time::Duration;

mod common;

use common::files::tempdir;
use common::ntimed_cli::ntimed_command;
use common::process::{RunOutput, run_with_deadline};

fn ntimed(args: &[&str], limit: Duration) -> RunOutput {
    let mut cmd = ntimed_command(None);
    cmd.args(args);
    run_with_deadline(cmd, limit).expect("ntimed exits")
}

/// The subcommands `ntimed --help` lists (so, not the hidden ones).
fn visible_subcommands() -> Vec<String> {
    let out = ntimed(&["--help"], Duration::from_secs(10));
    assert!(out.status.success(), "{}", out.describe());
    out.stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn generate_writes_a_man_page_per_subcommand_and_completions() {
    let dir = tempdir("generate");
    let out_dir = dir.path().join("assets");
    let out = ntimed(
        &["generate", "--out", out_dir.to_str().expect("UTF-8 path")],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", out.describe());
    let read = |path: &Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let main_page = read(&out_dir.join("man/ntimed.8"));
    assert!(
        main_page.starts_with(".ie") || main_page.contains(".TH ntimed 8"),
        "{main_page}"
    );
    let subcommands = visible_subcommands();
    for name in [
        "run", "check", "ctl", "query", "ke", "keygen", "demo", "sim",
    ] {
        assert!(subcommands.iter().any(|s| s == name), "{subcommands:?}");
    }
    for name in &subcommands {
        // The main page names each one (as its own page, ntimed-NAME(8)), and that page exists.
        assert!(
            main_page.contains(&format!("ntimed\\-{name}(8)")),
            "ntimed.8 does not name {name}:\n{main_page}"
        );
        let page = read(&out_dir.join(format!("man/ntimed-{name}.8")));
        assert!(page.contains(".SH SYNOPSIS"), "{page}");
    }
    // Internal subcommands stay out of the manual.
    for hidden in ["privsep", "generate"] {
        assert!(!main_page.contains(hidden), "{hidden} in:\n{main_page}");
    }
    assert!(main_page.contains("/etc/ntimed/ntimed.toml"), "{main_page}");
    let bash = read(&out_dir.join("completions/ntimed.bash"));
    assert!(bash.contains("ntimed,ctl)"), "{bash}");
    assert!(bash.contains("complete -F _ntimed"), "{bash}");
    let zsh = read(&out_dir.join("completions/_ntimed"));
    assert!(zsh.starts_with("#compdef ntimed"), "{zsh}");
    let fish = read(&out_dir.join("completions/ntimed.fish"));
    assert!(fish.contains("complete -c ntimed"), "{fish}");
    assert!(fish.contains("\"ctl\""), "{fish}");
}

/// `packaging/ntimed.toml`, with the test's sandbox user and state directory in place of
/// the package's (`ntimed`, /var/lib/ntimed, which this machine need not have), passes
/// `ntimed check`. Unprivileged, `mode = "system"` is refused, and that must be all.
#[test]
fn packaged_client_config_passes_check() {
    let shipped = include_str!("../packaging/ntimed.toml");
    // What the substitution below replaces must be in the file as shipped.
    for default in [
        "mode = \"system\"",
        "user = \"ntimed\"",
        "state-dir = \"/var/lib/ntimed\"",
        "drift-file = \"/var/lib/ntimed/drift\"",
    ] {
        assert!(
            shipped.contains(default),
            "{default} not in packaging/ntimed.toml"
        );
    }
    let text = shipped
        .replace("user = \"ntimed\"", "user = \"nobody\"")
        .replace("\"/var/lib/ntimed/drift\"", "\"drift\"")
        .replace("\"/var/lib/ntimed\"", "\".\"");
    let dir = tempdir("packaged-config");
    let config = dir.path().join("ntimed.toml");
    std::fs::write(&config, text).expect("write the config");
    let out = ntimed(
        &["check", "--config", config.to_str().expect("UTF-8 path")],
        Duration::from_secs(10),
    );
    let as_root = ntimed::sys::effective_uid() == 0;
    if as_root {
        assert_eq!(out.status.code(), Some(0), "{}", out.describe());
        assert_eq!(out.stdout, format!("{}: ok\n", config.display()));
    } else {
        let errors: Vec<_> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", out.describe());
        assert!(
            errors[0].contains("needs ntimed started as root"),
            "{}",
            out.describe()
        );
    }
}

/// `ntimed demo`'s step 8 asks its own running client role, over a control socket,
/// what `ntimed ctl status` and `ntimed ctl sources` print; its step 11 makes a
/// stratum-1 server of a reference clock on a SOCK socket.
#[test]
fn demo_shows_ctl_of_its_own_client_and_a_refclock_master() {
    let out = ntimed(&["demo"], Duration::from_secs(300));
    let text = &out.stdout;
    let step: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("8. ntimed ctl"))
        .take_while(|l| !l.starts_with("9. "))
        .collect();
    let step = step.join("\n");
    assert!(
        step.contains("   $ ntimed ctl status"),
        "{}",
        out.describe()
    );
    assert!(step.contains("   synchronized    yes"), "{step}");
    assert!(step.contains("   stratum         2"), "{step}");
    assert!(step.contains("   $ ntimed ctl sources"), "{step}");
    assert!(step.contains("   name "), "{step}");
    // The three NTS sources of step 7, each on loopback and with cookies.
    let rows = step
        .lines()
        .filter(|l| l.starts_with("   127.0.0.1:"))
        .count();
    assert_eq!(rows, 3, "{step}");
    assert!(!step.contains("UNEXPECTED"), "{step}");

    let master: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("11. The master role"))
        .take_while(|l| !l.starts_with("Server counters"))
        .collect();
    let master = master.join("\n");
    assert!(
        master.contains("stratum 1  refid GPS"),
        "{}",
        out.describe()
    );
    assert!(!master.contains("UNEXPECTED"), "{master}");
}
