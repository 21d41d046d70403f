//! Prerequisites: which peers and tools a test needs, and what to do when one is
//! missing (skip with a message, or fail under `CI=true`, with install instructions).

use std::fs;
use std::path::{Path, PathBuf};

use super::chrony::CHRONYD;
use super::ntpsec::{NTPD, NTPDIG, NTPSEC_PYTHONPATH, SYSTEM_PYTHON3};

pub const CHRONY_INSTALL_HINT: &str = "chrony 4.3 is needed for this interop test: \
     `apt-get update && apt-get install -y --no-install-recommends chrony` \
     (no service is started in a container)";

pub const NTPSEC_INSTALL_HINT: &str = "NTPsec 1.2.2 is needed for this interop test; it \
     conflicts with chrony as a package, so unpack it into /opt/ntpsec: \
     `cd $(mktemp -d) && apt-get download ntpsec ntpsec-ntpdig python3-ntp && \
     for f in *.deb; do dpkg -x \"$f\" /opt/ntpsec; done && \
     ln -sf /opt/ntpsec/usr/lib/x86_64-linux-gnu/ntp/libntpc.so.1 \
     /opt/ntpsec/usr/lib/python3/dist-packages/ntp/libntpc.so` \
     (ntpsec-ntpdig needs python3 installed)";

pub const NETNS_HINT: &str = "this interop test needs root and iproute2 (`ip netns`, `ss`) \
     to create a private network namespace: run the tests as root and \
     `apt-get install -y --no-install-recommends iproute2`";

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skip (or, under `CI=true`, fail) a test whose prerequisite is missing.
fn missing(what: &str, install_hint: &str) -> bool {
    let msg = format!("{what} is missing. {install_hint}");
    if on_ci() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING test: {msg}");
    false
}

/// True when the tests run as root, which splitting privileges needs (CI runs as
/// root); otherwise skipped, or a failure under `CI=true`. `what` names the tests.
pub fn require_root(what: &str) -> bool {
    if ntimed::sys::effective_uid() == 0 {
        return true;
    }
    missing("root", &format!("{what} need root: run them as root"))
}

/// Returns true when `bin_path` exists. Otherwise fails under `CI=true` (with the install
/// instructions) and prints a skip message and returns false elsewhere, so the test can
/// `return` early.
pub fn require_peer(bin_path: &str, install_hint: &str) -> bool {
    if Path::new(bin_path).exists() {
        true
    } else {
        missing(bin_path, install_hint)
    }
}

/// chronyd (which refuses to start unless run as root) and setpriv.
pub fn require_chrony() -> bool {
    require_peer(CHRONYD, CHRONY_INSTALL_HINT)
        && require_setpriv()
        && (is_root() || missing("root privileges", "chronyd only runs as root"))
}

/// ntpd, ntpdig, the python `ntp` package and its libntpc.so link, plus netns support
/// (ntpd only ever binds port 123).
pub fn require_ntpsec() -> bool {
    require_peer(NTPD, NTPSEC_INSTALL_HINT)
        && require_peer(NTPDIG, NTPSEC_INSTALL_HINT)
        && require_peer(
            &format!("{NTPSEC_PYTHONPATH}/ntp/libntpc.so"),
            NTPSEC_INSTALL_HINT,
        )
        && require_peer(
            SYSTEM_PYTHON3,
            "ntpdig is a python3 script: `apt-get install -y --no-install-recommends python3`",
        )
        && require_setpriv()
        && require_netns()
}

pub fn require_setpriv() -> bool {
    require_peer(
        "/usr/bin/setpriv",
        "setpriv (util-linux) is needed to drop CAP_SYS_TIME: `apt-get install -y util-linux`",
    )
}

pub const BUILD_TOOLS_HINT: &str = "gcc, g++ and make are needed to build clknetsim: \
     `apt-get update && apt-get install -y --no-install-recommends gcc g++ make`";

/// clknetsim's source beside the checkout (`../shared/clknetsim`), and gcc, g++ and
/// make to build it. Returns the source directory, or `None` to skip (outside CI).
pub fn require_clknetsim() -> Option<PathBuf> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let source = shared.join("clknetsim");
    if !source.join("run.sh").exists() {
        let hint = if shared.exists() {
            "../shared has no clknetsim/run.sh"
        } else {
            "the simulator test needs ../shared (with clknetsim/) beside the checkout"
        };
        missing(&source.display().to_string(), hint);
        return None;
    }
    for tool in ["gcc", "g++", "make"] {
        if !on_path(tool) {
            missing(tool, BUILD_TOOLS_HINT);
            return None;
        }
    }
    Some(source)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Root and `ip`/`ss` are needed to create network namespaces.
pub fn require_netns() -> bool {
    if !is_root() {
        return missing("root privileges", NETNS_HINT);
    }
    for tool in ["ip", "ss"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return missing(tool, NETNS_HINT);
        }
    }
    true
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
