//! `ntimed generate --out DIR` (hidden; for packagers): man pages and shell completions
//! made from the clap definitions themselves, so they always list the options this very
//! binary takes. Writes `DIR/man/ntimed.8`, one `ntimed-SUBCOMMAND.8` per visible
//! subcommand, and `DIR/completions/{ntimed.bash,_ntimed,ntimed.fish}`.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Section 8: a daemon and its administration commands.
const SECTION: &str = "8";

/// What the main page says beyond the options: where a packaged ntimed keeps things.
const FILES: &str = "FILES:
  /etc/ntimed/ntimed.toml: the configuration
  /var/lib/ntimed: the state directory (engine's chroot, drift file, NTS keys)
  /run/ntimed/ntimed.sock: the control socket `ntimed ctl` asks

SEE ALSO:
  systemctl status ntimed; journalctl -u ntimed;
  /usr/share/doc/ntimed/README.md (configuration by role, security model)";

/// Writes the man pages and completions for `cmd` under `out`; returns the files written.
pub fn generate(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>, String> {
    let fail = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    for dir in [&man_dir, &completion_dir] {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    }
    let mut written = Vec::new();
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let top = cmd.clone().after_long_help(FILES);
    written.push(man_page(top, &man_dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(man_page(sub.clone(), &man_dir)?);
    }
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, &name, &completion_dir)
            .map_err(|e| fail(&completion_dir, e))?;
        written.push(path);
    }
    Ok(written)
}

/// One page, named as man(1) looks for it: `ntimed.8`, `ntimed-ctl.8`, ...
fn man_page(cmd: clap::Command, dir: &Path) -> Result<PathBuf, String> {
    let man = clap_mangen::Man::new(cmd)
        .section(SECTION)
        .manual("ntimed manual");
    man.generate_to(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}
