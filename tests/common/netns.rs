//! Private network namespaces for peers that only use port 123 (NTPsec): created with
//! `lo` up, deleted on Drop, and those left behind by killed test runs are cleaned up.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::process::{RunOutput, run_with_deadline};

const NETNS_PREFIX: &str = "ntimed-t-";

/// A private network namespace with `lo` up; deleted when the last handle to it is
/// dropped (clones share one namespace). Drop every process running in it first (the
/// structs holding a daemon and a `NetNs` do that by field order).
#[derive(Clone, Debug)]
pub struct NetNs {
    inner: Arc<Named>,
}

/// The namespace itself: `ip netns del` on Drop.
#[derive(Debug)]
struct Named {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        remove_stale_netns();
        let name = format!("{NETNS_PREFIX}{}", unique_suffix());
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        let ns = NetNs {
            inner: Arc::new(Named { name }),
        };
        let mut up = ns.command("ip");
        up.args(["link", "set", "lo", "up"]);
        match run_with_deadline(up, Duration::from_secs(10)) {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip link set lo up in {}: {}", ns.name(), o.describe()),
            Err(e) => panic!("ip link set lo up in {}: {e}", ns.name()),
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `ip netns exec NAME program` (no privilege dropping: use
    /// [`safe_command`](super::process::safe_command) for anything NTP-related).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    /// Runs `args[0] args[1..]` inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> Result<RunOutput, String> {
        let (program, rest) = args.split_first().ok_or("empty command")?;
        let mut c = self.command(program);
        c.args(rest);
        run_with_deadline(c, Duration::from_secs(30))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: ip netns del {}: {e}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut c = Command::new("ip");
    c.args(args);
    let o = run_with_deadline(c, Duration::from_secs(10))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(o.describe())
    }
}

/// Deletes namespaces left behind by test processes that were killed (name carries the pid).
fn remove_stale_netns() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next() else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    });
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
