//! The `ntimed` command line, one-shot: `ntimed query` (JSON replies) and `ntimed ke`.
//! The daemon, `ntimed run`, is started with [`NtimedRun`](super::ntimed_run::NtimedRun).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::netns::NetNs;
use super::process::{RunOutput, run_with_deadline, safe_command};

pub fn ntimed_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ntimed")
}

/// `ntimed` under [`safe_command`] (in `netns`, if given); add the subcommand and its
/// arguments.
pub fn ntimed_command(netns: Option<&NetNs>) -> Command {
    safe_command(netns, ntimed_bin())
}

/// Arguments of `ntimed query`.
#[derive(Clone, Debug, Default)]
pub struct QueryArgs<'a> {
    /// HOST:PORT
    pub server: String,
    pub key: Option<(&'a Path, u32)>,
    pub count: Option<u32>,
    /// `--timeout`: seconds to wait for each reply (ntimed's default is 2).
    pub timeout_secs: Option<f64>,
    /// `--interval`: seconds between exchanges (ntimed's default is 1).
    pub interval_secs: Option<f64>,
    pub netns: Option<&'a NetNs>,
    /// `--nts`: SERVER is the NTS-KE server.
    pub nts: bool,
    /// `--ca FILE` (with `--nts`).
    pub ca: Option<&'a Path>,
}

impl<'a> QueryArgs<'a> {
    pub fn new(server: impl Into<String>) -> Self {
        QueryArgs {
            server: server.into(),
            ..Default::default()
        }
    }

    pub fn key(mut self, file: &'a Path, id: u32) -> Self {
        self.key = Some((file, id));
        self
    }

    pub fn count(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    pub fn timeout(mut self, secs: f64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    pub fn interval(mut self, secs: f64) -> Self {
        self.interval_secs = Some(secs);
        self
    }

    pub fn netns(mut self, ns: &'a NetNs) -> Self {
        self.netns = Some(ns);
        self
    }

    /// `--nts [--ca FILE]`.
    pub fn nts(mut self, ca: Option<&'a Path>) -> Self {
        self.nts = true;
        self.ca = ca;
        self
    }
}

/// Runs `ntimed query SERVER [--key-file F --key-id N] [--count N] [--timeout S]
/// [--interval S] --json`
/// and returns one JSON object per reply line. Err (with stderr) on a non-zero exit.
pub fn ntimed_query(args: &QueryArgs) -> Result<Vec<Value>, String> {
    let mut cmd = ntimed_command(args.netns);
    cmd.arg("query").arg(&args.server);
    if args.nts {
        cmd.arg("--nts");
    }
    if let Some(ca) = args.ca {
        cmd.arg("--ca").arg(ca);
    }
    if let Some((file, id)) = args.key {
        cmd.arg("--key-file").arg(file);
        cmd.args(["--key-id", &id.to_string()]);
    }
    if let Some(n) = args.count {
        cmd.args(["--count", &n.to_string()]);
    }
    if let Some(t) = args.timeout_secs {
        cmd.args(["--timeout", &t.to_string()]);
    }
    if let Some(i) = args.interval_secs {
        cmd.args(["--interval", &i.to_string()]);
    }
    cmd.arg("--json");
    let count = f64::from(args.count.unwrap_or(1));
    let budget = (args.timeout_secs.unwrap_or(2.0) + args.interval_secs.unwrap_or(1.0)) * count;
    let out = run_with_deadline(cmd, Duration::from_secs_f64(budget + 15.0))?;
    if !out.status.success() {
        return Err(format!("ntimed query failed: {}", out.describe()));
    }
    let mut replies = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("ntimed query JSON {line:?}: {e}\n{}", out.describe()))?;
        replies.push(v);
    }
    if replies.is_empty() {
        return Err(format!(
            "ntimed query exited 0 without output: {}",
            out.describe()
        ));
    }
    Ok(replies)
}

/// The reply with the smallest round-trip delay (least disturbed by scheduling).
pub fn best_reply(replies: &[Value]) -> &Value {
    replies
        .iter()
        .min_by(|a, b| {
            let d = |v: &Value| v.get("delay").and_then(Value::as_f64).unwrap_or(f64::MAX);
            d(a).total_cmp(&d(b))
        })
        .expect("at least one reply")
}

pub fn json_f64(v: &Value, field: &str) -> f64 {
    v.get(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("reply lacks numeric {field:?}: {v}"))
}

/// Runs `ntimed ke SERVER [--ca CA] [--export]` (in `netns`, if given).
pub fn ntimed_ke(
    netns: Option<&NetNs>,
    server: &str,
    ca: Option<&Path>,
    export: bool,
) -> Result<RunOutput, String> {
    let mut cmd = ntimed_command(netns);
    cmd.arg("ke").arg(server);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    if export {
        cmd.arg("--export");
    }
    run_with_deadline(cmd, Duration::from_secs(20))
}
