//! NTPsec 1.2.2 (unpacked in /opt/ntpsec): ntpd as a server or NTS client, and the
//! ntpdig and ntpq clients. ntpd only ever binds port 123, so it always runs in a network
//! namespace, and its configuration always contains `disable ntp`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::files::tempdir;
use super::netns::NetNs;
use super::process::{Daemon, run_with_deadline, safe_command, wait_until};

pub const NTPD: &str = "/opt/ntpsec/usr/sbin/ntpd";
pub const NTPDIG: &str = "/opt/ntpsec/usr/bin/ntpdig";
pub const NTPQ: &str = "/opt/ntpsec/usr/bin/ntpq";
pub const NTPSEC_LD_LIBRARY_PATH: &str = "/opt/ntpsec/usr/lib/x86_64-linux-gnu/ntp";
pub const NTPSEC_PYTHONPATH: &str = "/opt/ntpsec/usr/lib/python3/dist-packages";
/// ntpdig's and ntpq's own shebang (not whatever `python3` is first on PATH, e.g. a
/// pyenv shim).
pub const SYSTEM_PYTHON3: &str = "/usr/bin/python3";

fn with_ntpsec_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LD_LIBRARY_PATH", NTPSEC_LD_LIBRARY_PATH)
        .env("PYTHONPATH", NTPSEC_PYTHONPATH)
}

/// `ntpd -n -c DIR/ntp.conf` in `netns` with `conf` (which must contain `disable ntp`):
/// the one way the tests start ntpd. Killed on Drop, before the caller's namespace goes.
pub struct Ntpd {
    daemon: Daemon,
    log: PathBuf,
}

impl Ntpd {
    /// Writes `conf` to `dir`/ntp.conf and starts ntpd with it; its output goes to
    /// `dir`/ntpd.out (add `logfile DIR/ntpd.log` to `conf` for the rest).
    pub fn start(netns: &NetNs, dir: &Path, conf: &str) -> Ntpd {
        assert!(
            conf.contains("disable ntp"),
            "ntpd must never steer the clock"
        );
        let conf_path = dir.join("ntp.conf");
        fs::write(&conf_path, conf).expect("write ntp.conf");
        let mut cmd = safe_command(Some(netns), NTPD);
        with_ntpsec_env(&mut cmd)
            .args(["-n", "-c"])
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.join("ntpd.pid"));
        let mut daemon = Daemon::spawn("ntpd", cmd, dir.join("ntpd.out"));
        // ntpd binds its sockets right away; CapBnd is only meaningful after the exec.
        std::thread::sleep(Duration::from_millis(300));
        daemon.assert_running();
        daemon.assert_cannot_set_clock();
        Ntpd {
            daemon,
            log: dir.join("ntpd.log"),
        }
    }

    /// Panics (with the log) if ntpd has exited.
    pub fn assert_running(&mut self) {
        self.daemon.assert_running();
    }

    /// ntpd's output and its `logfile` DIR/ntpd.log.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            self.daemon.log(),
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

/// NTPsec's ntpd in its own network namespace on 127.0.0.1:123 (orphan mode, stratum 5).
///
/// NTPsec's built-in `restrict default` has `limited` (rate limiting: after a few quick
/// chronyd -Q runs ntpd silently drops 127.0.0.1's requests) and `noquery`; the test
/// configuration turns both off with `unrestrict default noquery limited`.
pub struct NtpsecServer {
    // Field order matters: the daemon is killed before the namespace is deleted.
    ntpd: Ntpd,
    netns: NetNs,
    dir: TempDir,
}

impl NtpsecServer {
    /// Starts ntpd with `ntp_keys` trusting `trusted_keys`, and waits until it serves
    /// synchronised time (ntpdig gets an answer; ~2 s for orphan mode).
    pub fn start(ntp_keys: &Path, trusted_keys: &[u32]) -> NtpsecServer {
        let netns = NetNs::new();
        let dir = tempdir("ntpd");
        let d = dir.path().display();
        let trusted: Vec<String> = trusted_keys.iter().map(u32::to_string).collect();
        let conf = format!(
            "tos orphan 5 orphanwait 1\n\
             keys {keys}\n\
             trustedkey {trusted}\n\
             disable ntp\n\
             unrestrict default noquery limited\n\
             statsdir {d}/\n\
             logfile {d}/ntpd.log\n\
             driftfile {d}/ntp.drift\n",
            keys = ntp_keys.display(),
            trusted = trusted.join(" "),
        );
        let ntpd = Ntpd::start(&netns, dir.path(), &conf);
        let mut server = NtpsecServer { ntpd, netns, dir };
        let ready = {
            let NtpsecServer { ntpd, netns, .. } = &mut server;
            wait_until(Duration::from_secs(20), || {
                ntpd.assert_running();
                ntpdig_with(netns, None, None, 1, 1).is_ok()
            })
        };
        assert!(ready, "ntpd never served time; log:\n{}", server.log());
        server
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn log(&self) -> String {
        self.ntpd.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Clone, Debug)]
pub struct NtpdigReply {
    /// Offset in seconds (ntpdig prints microsecond resolution).
    pub offset: f64,
    /// ntpdig's "+/-" error bound (synchronisation distance) in seconds.
    pub error: f64,
    pub stratum: u8,
    /// "no-leap", "add-leap", "del-leap" or "unsync".
    pub leap: String,
}

/// Keyed ntpdig query (key id `key_id` from ntp.keys-format `keyfile`) of 127.0.0.1:123
/// inside `netns`: 4 samples, ntpdig reports the best one.
pub fn ntpdig(netns: &NetNs, key_id: u32, keyfile: &Path) -> Result<NtpdigReply, String> {
    ntpdig_with(netns, Some(key_id), Some(keyfile), 2, 4)
}

/// `python3 ntpdig -j [-a K -k FILE] -t TIMEOUT -p SAMPLES -g 10 127.0.0.1` in `netns`.
/// A run without a valid answer takes about `samples * timeout_secs`.
///
/// ntpdig -j prints one line like
/// `{"time":"2026-11-21T12:18:51.789651+0000","offset":0.000178,"precision":0.000337,
///   "host":"127.0.0.1","ip":"127.0.0.1","stratum":5,"leap":"no-leap","adjusted":false}`
/// (plain output: `2026-11-21 12:18:43.426169 (+0000) +0.000228 +/- 0.000513 127.0.0.1 s5
/// no-leap`) and exits 0; without a valid answer it prints `ntpdig: no eligible servers`
/// on stderr and exits 1.
pub fn ntpdig_with(
    netns: &NetNs,
    key_id: Option<u32>,
    keyfile: Option<&Path>,
    timeout_secs: u32,
    samples: u32,
) -> Result<NtpdigReply, String> {
    let mut cmd = safe_command(Some(netns), SYSTEM_PYTHON3);
    with_ntpsec_env(&mut cmd).arg(NTPDIG).arg("-j");
    if let Some(k) = key_id {
        cmd.args(["-a", &k.to_string()]);
    }
    if let Some(f) = keyfile {
        cmd.arg("-k").arg(f);
    }
    cmd.args(["-t", &timeout_secs.to_string()])
        .args(["-p", &samples.to_string(), "-g", "10"])
        .arg("127.0.0.1");
    let limit = Duration::from_secs(u64::from(timeout_secs * samples) + 15);
    let out = run_with_deadline(cmd, limit)?;
    if !out.status.success() {
        return Err(format!("ntpdig failed: {}", out.describe()));
    }
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("ntpdig printed no JSON: {}", out.describe()))?;
    let v: Value = serde_json::from_str(line)
        .map_err(|e| format!("ntpdig JSON {line:?}: {e}\n{}", out.describe()))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("ntpdig JSON lacks numeric {name}: {line}"))
    };
    let stratum = field("stratum")?;
    Ok(NtpdigReply {
        offset: field("offset")?,
        error: field("precision")?,
        stratum: u8::try_from(stratum as u64).map_err(|e| format!("stratum {stratum}: {e}"))?,
        leap: v
            .get("leap")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// `ntpq -n -c peers -c associations 127.0.0.1` inside `netns`: its output, or why it
/// failed.
pub fn ntpq(netns: &NetNs) -> String {
    let mut cmd = safe_command(Some(netns), SYSTEM_PYTHON3);
    with_ntpsec_env(&mut cmd).args([NTPQ, "-n", "-c", "peers", "-c", "associations", "127.0.0.1"]);
    match run_with_deadline(cmd, Duration::from_secs(10)) {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e,
    }
}
