//! Starting and stopping processes safely: every program the tests start goes through
//! [`safe_command`] (no CAP_SYS_TIME, dies with the test), one-shot commands through
//! [`run_with_deadline`], long-running ones as a [`Daemon`] (killed by pid on Drop).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::NetNs;

/// `[ip netns exec NS] setpriv --pdeathsig KILL --bounding-set -sys_time -- PROGRAM`.
/// `ip netns exec` and `setpriv` both exec, so the child's pid is PROGRAM's.
pub fn safe_command(netns: Option<&NetNs>, program: &str) -> Command {
    safe_command_as(netns, None, program)
}

/// [`safe_command`], and with `Some((user, group))` PROGRAM also runs as that user
/// (`setpriv --reuid USER --regid GROUP --clear-groups --pdeathsig KILL …`).
pub fn safe_command_as(
    netns: Option<&NetNs>,
    user: Option<(&str, &str)>,
    program: &str,
) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), "setpriv"]);
            c
        }
        None => Command::new("setpriv"),
    };
    if let Some((user, group)) = user {
        cmd.args(["--reuid", user, "--regid", group, "--clear-groups"]);
    }
    cmd.args(["--pdeathsig", "KILL", "--bounding-set", "-sys_time", "--"])
        .arg(program);
    cmd
}

#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a one-shot command with captured output, killing it after `limit`.
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Result<RunOutput, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot spawn {desc}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} did not finish within {limit:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    Ok(RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A long-running child process whose output goes to a log file; killed on Drop.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Daemon {
        let file = fs::File::create(&log).expect("create daemon log");
        let file2 = file.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics unless the running process has CAP_SYS_TIME out of its bounding set (call
    /// once it is up: before setpriv has exec'd the daemon the check would be meaningless).
    pub fn assert_cannot_set_clock(&self) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("reading /proc status of {}: {e}", self.name));
        let bnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no CapBnd for {}", self.name));
        let mask = u64::from_str_radix(bnd, 16).expect("CapBnd is hex");
        const CAP_SYS_TIME: u32 = 25;
        assert_eq!(
            mask & (1 << CAP_SYS_TIME),
            0,
            "{} (pid {}) still has CAP_SYS_TIME in its bounding set ({bnd})",
            self.name,
            self.pid()
        );
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited early ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for a child")
    }

    /// Waits up to `limit` for the process to exit on its own; None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }
}

/// The pids of `parent`'s children (from /proc: each stat's fourth field).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether `pid` is still a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // ntimed run as root has an engine and a clock process under it: they die with
        // it, and the next test on the same port must not find them still there.
        let children = children_of(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
