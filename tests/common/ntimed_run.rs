//! Starting the daemon, `ntimed run`: the one way every test does it.
//!
//! ```ignore
//! // A configuration given as text, written to ntimed.toml in a fresh directory;
//! // start() waits until UDP `port` is bound and panics if it never is.
//! let run = NtimedRun::config(toml).wait_for_ntp(port).start();
//! // Presets for the common servers (they return the same builder).
//! let server = NtimedRun::local_server(loopback(free_port()), Some(&keys.chrony)).start();
//! let nts = NtimedRun::nts_server(&certs).start();
//! // A configuration that must be refused: exits on its own, output captured.
//! let out = NtimedRun::config_file(&path).run_to_exit(Duration::from_secs(10));
//! ```
//!
//! Whatever the options, ntimed runs under [`safe_command`] (no CAP_SYS_TIME, killed
//! with the test), and [`SANDBOX_TOML`] is added to its configuration unless it has a
//! `[sandbox]` of its own or runs [`run_as_nobody`](NtimedRunBuilder::run_as_nobody);
//! [`CONTROL_TOML`] likewise unless it has a `[control]`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tempfile::TempDir;

use super::files::tempdir;
use super::net::{free_port, loopback, sntp_probe, tcp_port_listening, udp_port_bound};
use super::netns::NetNs;
use super::ntimed_cli::ntimed_bin;
use super::nts::TestCerts;
use super::process::{Daemon, RunOutput, run_with_deadline, safe_command_as, wait_until};

/// Added to every configuration `ntimed run` gets in the tests: started as root (as in
/// CI), ntimed separates privileges; its engine and clock process run as `nobody`,
/// jailed in the directory holding the configuration. Ignored without root.
pub const SANDBOX_TOML: &str = "\n[sandbox]\nuser = \"nobody\"\nstate-dir = \".\"\n";

/// Added to every configuration without a `[control]` of its own (unless run as
/// nobody): a control socket in the run's directory.
pub const CONTROL_TOML: &str = "\n[control]\nsocket = \"control.sock\"\n";

/// Makes `path` the sandbox user's (`nobody`), as `[nts] key-dir` must be when ntimed
/// separates privileges (only when the tests run as root).
pub fn give_to_sandbox_user(path: &Path) {
    if ntimed::sys::effective_uid() != 0 {
        return;
    }
    let nobody = ntimed::sys::lookup_user("nobody")
        .expect("look up nobody")
        .expect("user nobody exists");
    std::os::unix::fs::chown(path, Some(nobody.uid), Some(nobody.gid)).expect("chown to nobody");
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a TOML string.
pub fn toml_path(path: &Path) -> String {
    toml_string(path.to_str().expect("UTF-8 path"))
}

/// TOML for a local stratum-1 server on `listen`, with `[keys] file = keys_file` if given.
pub fn local_server_toml(listen: SocketAddr, keys_file: Option<&Path>) -> String {
    let mut conf = String::new();
    if let Some(k) = keys_file {
        writeln!(conf, "[keys]\nfile = {}\n", toml_path(k)).expect("write to String");
    }
    writeln!(
        conf,
        "[local]\nstratum = 1\n\n[[server]]\nlisten = {}\n",
        toml_string(&listen.to_string())
    )
    .expect("write to String");
    conf
}

/// TOML for `ntimed run` as a complete NTS server on 127.0.0.1: `[local]` stratum 1,
/// `[[server]]` on `ntp_port`, `[[nts-ke-server]]` on `ke_port` with srv-chain.pem /
/// srv.key from `certs` and `name = "localhost"`, and `[nts] key-dir = key_dir`.
pub fn nts_server_toml(certs: &TestCerts, ntp_port: u16, ke_port: u16, key_dir: &Path) -> String {
    format!(
        "[local]\nstratum = 1\n\n\
         [[server]]\nlisten = \"127.0.0.1:{ntp_port}\"\n\n\
         [[nts-ke-server]]\nlisten = \"127.0.0.1:{ke_port}\"\n\
         certificate-chain = {chain}\nprivate-key = {key}\nname = \"localhost\"\n\n\
         [nts]\nkey-dir = {dir}\n",
        chain = toml_path(&certs.path("srv-chain.pem")),
        key = toml_path(&certs.path("srv.key")),
        dir = toml_path(key_dir),
    )
}

enum Config {
    /// Written to ntimed.toml in the run's directory.
    Text(String),
    /// A file the test wrote (its directory is the run's directory).
    File(PathBuf),
}

/// How to start `ntimed run`: made by [`NtimedRun::config`], [`NtimedRun::config_file`]
/// or a preset, finished by [`start`](Self::start) or [`run_to_exit`](Self::run_to_exit).
#[must_use = "nothing runs until start() or run_to_exit()"]
pub struct NtimedRunBuilder {
    config: Config,
    dir: Option<TempDir>,
    netns: Option<NetNs>,
    ready: Readiness,
    as_nobody: bool,
    env: Vec<(String, OsString)>,
}

/// What [`NtimedRunBuilder::start`] (and [`NtimedRun::restart`]) wait for.
#[derive(Clone, Copy, Default)]
struct Readiness {
    /// UDP port `[[server]]` listens on: bound (in the namespace, if any).
    ntp_port: Option<u16>,
    /// ... and answering a plain SNTP request on 127.0.0.1.
    ntp_answers: bool,
    /// TCP port `[[nts-ke-server]]` listens on: listening.
    ke_port: Option<u16>,
}

impl Readiness {
    fn any(&self) -> bool {
        self.ntp_port.is_some() || self.ke_port.is_some()
    }
}

impl NtimedRunBuilder {
    fn new(config: Config) -> Self {
        NtimedRunBuilder {
            config,
            dir: None,
            netns: None,
            ready: Readiness::default(),
            as_nobody: false,
            env: Vec::new(),
        }
    }

    /// Runs in `dir` (a directory the caller prepared, e.g. with files the configuration
    /// names relative to it) instead of a fresh one.
    pub fn in_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Runs inside `netns` (the run keeps a handle: the namespace outlives the daemon).
    pub fn netns(mut self, netns: NetNs) -> Self {
        self.netns = Some(netns);
        self
    }

    /// `start()` waits until UDP `port` is bound (and panics, with the log, if it never
    /// is within 15 s).
    pub fn wait_for_ntp(mut self, port: u16) -> Self {
        self.ready.ntp_port = Some(port);
        self
    }

    /// `start()` waits until 127.0.0.1:`port` answers a plain SNTP request (on the
    /// host's loopback only).
    pub fn wait_for_ntp_answer(mut self, port: u16) -> Self {
        self.ready.ntp_port = Some(port);
        self.ready.ntp_answers = true;
        self
    }

    /// `start()` waits until TCP `port` (NTS-KE) is listening.
    pub fn wait_for_ke(mut self, port: u16) -> Self {
        self.ready.ke_port = Some(port);
        self
    }

    /// Starts ntimed as `nobody` (`setpriv --reuid nobody --regid nogroup
    /// --clear-groups …`): nothing to separate, so no `[sandbox]` section is added.
    pub fn run_as_nobody(mut self) -> Self {
        self.as_nobody = true;
        self
    }

    /// Sets an environment variable for ntimed (e.g. `NOTIFY_SOCKET`).
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Writes the configuration; returns (its path, the directory kept for the run).
    fn write_config(&mut self) -> (PathBuf, Option<TempDir>) {
        let (path, dir) = match &self.config {
            Config::Text(text) => {
                let dir = self.dir.take().unwrap_or_else(|| tempdir("ntimed"));
                let path = dir.path().join("ntimed.toml");
                fs::write(&path, text).expect("write ntimed.toml");
                (path, Some(dir))
            }
            Config::File(path) => (path.clone(), self.dir.take()),
        };
        if !self.as_nobody {
            let text = fs::read_to_string(&path).expect("read the config");
            let mut text = text;
            if !text.contains("[sandbox]") {
                text += SANDBOX_TOML;
            }
            // As root the control socket is on by default, at one path for the whole
            // machine: each test's daemon gets its own.
            if !text.contains("[control]") {
                text += CONTROL_TOML;
            }
            fs::write(&path, text).expect("write the config");
        }
        (path, dir)
    }

    /// Starts the daemon and waits as told (`wait_for_*`; without any, returns at once
    /// and the test does its own waiting). Once it is up, checks that it cannot set the
    /// clock. Killed on Drop.
    pub fn start(mut self) -> NtimedRun {
        let (conf_path, dir) = self.write_config();
        let dir_path = match &dir {
            Some(d) => d.path().to_path_buf(),
            None => conf_path
                .parent()
                .expect("the config is in a directory")
                .to_path_buf(),
        };
        let mut run = NtimedRun {
            daemon: None,
            netns: self.netns,
            log: dir_path.join("ntimed-0.log"),
            conf_path,
            ready: self.ready,
            as_nobody: self.as_nobody,
            env: self.env,
            starts: 0,
            dir_path,
            _dir: dir,
        };
        run.restart();
        run
    }

    /// Runs ntimed with this configuration and expects it to exit on its own within
    /// `limit` (a configuration it must refuse); Err if it does not.
    pub fn run_to_exit(mut self, limit: Duration) -> Result<RunOutput, String> {
        let (conf_path, _dir) = self.write_config();
        let cmd = launch_command(self.netns.as_ref(), self.as_nobody, &self.env, &conf_path);
        run_with_deadline(cmd, limit)
    }
}

/// `ntimed run --config CONF` under [`safe_command_as`].
fn launch_command(
    netns: Option<&NetNs>,
    as_nobody: bool,
    env: &[(String, OsString)],
    conf: &Path,
) -> Command {
    let user = as_nobody.then_some(("nobody", "nogroup"));
    let mut cmd = safe_command_as(netns, user, ntimed_bin());
    cmd.arg("run").arg("--config").arg(conf);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// A running `ntimed run`; killed (SIGKILL, by pid) on Drop, and restartable with the
/// same configuration and files.
pub struct NtimedRun {
    // Field order matters: the daemon is killed before the namespace is deleted and its
    // directory removed.
    daemon: Option<Daemon>,
    netns: Option<NetNs>,
    conf_path: PathBuf,
    /// The log of the latest start.
    log: PathBuf,
    ready: Readiness,
    as_nobody: bool,
    env: Vec<(String, OsString)>,
    starts: u32,
    dir_path: PathBuf,
    _dir: Option<TempDir>,
}

impl NtimedRun {
    /// `ntimed run` with `toml`, written to ntimed.toml in a fresh directory (relative
    /// paths in it are relative to that directory: see [`NtimedRun::dir`]).
    pub fn config(toml: impl Into<String>) -> NtimedRunBuilder {
        NtimedRunBuilder::new(Config::Text(toml.into()))
    }

    /// `ntimed run` with a configuration file the test wrote (its name shows in
    /// ntimed's messages); the run's directory is the file's.
    pub fn config_file(path: &Path) -> NtimedRunBuilder {
        NtimedRunBuilder::new(Config::File(path.to_path_buf()))
    }

    /// A local stratum-1 server on `listen` ([`local_server_toml`]), ready once bound.
    pub fn local_server(listen: SocketAddr, keys_file: Option<&Path>) -> NtimedRunBuilder {
        Self::config(local_server_toml(listen, keys_file)).wait_for_ntp(listen.port())
    }

    /// A complete NTS server on fresh loopback ports ([`nts_server_toml`]), cookie keys
    /// in `<dir>/state`; ready once both ports are bound.
    pub fn nts_server(certs: &TestCerts) -> NtimedRunBuilder {
        let (ntp_port, ke_port) = (free_port(), free_port());
        let dir = tempdir("ntimed-nts");
        let toml = nts_server_toml(certs, ntp_port, ke_port, &dir.path().join("state"));
        Self::config(toml)
            .in_dir(dir)
            .wait_for_ntp(ntp_port)
            .wait_for_ke(ke_port)
    }

    /// Stops the daemon (SIGKILL: nothing is saved on the way out).
    pub fn stop(&mut self) {
        self.daemon = None;
    }

    /// Stops the daemon if it runs, starts it again with the same configuration and
    /// files, and waits as the first start did.
    pub fn restart(&mut self) {
        self.stop();
        self.starts += 1;
        let cmd = launch_command(
            self.netns.as_ref(),
            self.as_nobody,
            &self.env,
            &self.conf_path,
        );
        self.log = self.dir_path.join(format!("ntimed-{}.log", self.starts));
        let mut daemon = Daemon::spawn("ntimed run", cmd, self.log.clone());
        let netns = self.netns.as_ref();
        let Readiness {
            ntp_port,
            ntp_answers,
            ke_port,
        } = self.ready;
        if self.ready.any() {
            let ready = wait_until(Duration::from_secs(15), || {
                daemon.assert_running();
                ntp_port.is_none_or(|p| {
                    udp_port_bound(netns, p)
                        && (!ntp_answers
                            || sntp_probe(loopback(p), Duration::from_millis(300)).is_some())
                }) && ke_port.is_none_or(|p| tcp_port_listening(netns, p))
            });
            assert!(
                ready,
                "ntimed run never served NTP {ntp_port:?} / NTS-KE {ke_port:?}; config:\n{}\nlog:\n{}",
                fs::read_to_string(&self.conf_path).unwrap_or_default(),
                daemon.log()
            );
            daemon.assert_cannot_set_clock();
        }
        self.daemon = Some(daemon);
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("ntimed run is running")
    }

    pub fn pid(&self) -> u32 {
        self.daemon().pid()
    }

    /// Panics (with the log) if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.assert_running();
        }
    }

    /// Panics unless the daemon has CAP_SYS_TIME out of its bounding set.
    pub fn assert_cannot_set_clock(&self) {
        self.daemon().assert_cannot_set_clock();
    }

    /// Waits up to `limit` for the daemon to exit on its own; None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.daemon
            .as_mut()
            .expect("ntimed run was started")
            .wait_exit(limit)
    }

    /// The directory holding the configuration (and the logs).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// The log of the latest start (also after [`stop`](Self::stop)).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The UDP port start() waited for.
    pub fn ntp_port(&self) -> u16 {
        self.ready.ntp_port.expect("started with wait_for_ntp")
    }

    /// 127.0.0.1:[`ntp_port`](Self::ntp_port).
    pub fn ntp_addr(&self) -> SocketAddr {
        loopback(self.ntp_port())
    }

    /// The NTS-KE port start() waited for.
    pub fn ke_port(&self) -> u16 {
        self.ready.ke_port.expect("started with wait_for_ke")
    }

    /// `localhost:KEPORT`, the name the test certificate carries.
    pub fn ke_server(&self) -> String {
        format!("localhost:{}", self.ke_port())
    }
}
