//! Shared harness for the interoperability tests against real peers
//! (chrony 4.3 and NTPsec 1.2.2), following /work/shared/LAB.md.
//!
//! Safety rules enforced here for every process the tests start:
//! * it runs under `setpriv --pdeathsig KILL --bounding-set -sys_time -- …`, so it can
//!   never set the clock and dies with the test thread that spawned it;
//! * chronyd always runs with `-x` (server) or `-Q` (one-shot client);
//! * ntpd's configuration always contains `disable ntp`;
//! * traffic stays on 127.0.0.1 or inside network namespaces created here, which are
//!   deleted by a Drop guard (also when a test panics).
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Peer locations and install hints
// ---------------------------------------------------------------------------

pub const CHRONYD: &str = "/usr/sbin/chronyd";
pub const NTPD: &str = "/opt/ntpsec/usr/sbin/ntpd";
pub const NTPDIG: &str = "/opt/ntpsec/usr/bin/ntpdig";
pub const NTPSEC_LD_LIBRARY_PATH: &str = "/opt/ntpsec/usr/lib/x86_64-linux-gnu/ntp";
pub const NTPSEC_PYTHONPATH: &str = "/opt/ntpsec/usr/lib/python3/dist-packages";
/// ntpdig's own shebang (not whatever `python3` is first on PATH, e.g. a pyenv shim).
const SYSTEM_PYTHON3: &str = "/usr/bin/python3";

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
    eprintln!("SKIPPING interop test: {msg}");
    false
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

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

const PORT_LOW: u32 = 10_000;
/// Stay below the Linux ephemeral range (32768–60999) used by the clients' source ports.
const PORT_SPAN: u32 = 22_000;
static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback port that is currently free for both UDP and TCP and that no other caller in
/// this process gets. The starting point depends on the process id, so concurrently running
/// test binaries start far apart; the bind check catches the rest.
pub fn free_port() -> u16 {
    let base = (std::process::id() % 1_000) * 20;
    for _ in 0..PORT_SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(PORT_LOW + (base + n) % PORT_SPAN).expect("port fits in u16");
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found");
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Key ids shared by all peers in these tests.
pub const KEY_SHA256: u32 = 1;
pub const KEY_AES128: u32 = 2;
pub const KEY_SHA1: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Sha256,
    Aes128,
    Sha1,
}

impl KeyType {
    /// Type name in chrony's keyfile.
    pub fn chrony_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES128",
            KeyType::Sha1 => "SHA1",
        }
    }

    /// Type name in ntp.keys. NTPsec 1.2.2 accepts `AES`, `AES-128` and `aes-128` for
    /// AES-128-CMAC (ntpkeygen writes `AES`) and rejects `AES128` ("unknown auth type").
    pub fn ntp_keys_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES",
            KeyType::Sha1 => "SHA1",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TestKey {
    pub id: u32,
    pub kind: KeyType,
    /// Secret as hex. These are obviously fake test secrets.
    pub hex: &'static str,
}

/// The keys every peer shares in these tests.
pub const GOOD_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "000102030405060708090a0b0c0d0e0f",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "0123456789abcdef0123456789abcdef01234567",
    },
];

/// Same ids and types as [`GOOD_KEYS`], different secrets.
pub const WRONG_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "deadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
];

fn write_secret_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 0600 {}: {e}", path.display()));
}

/// chrony keyfile: `ID TYPE HEX:<hex>`.
pub fn write_chrony_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} HEX:{}", k.id, k.kind.chrony_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// ntp.keys: `ID TYPE <hex>` (keys longer than 20 characters are hex for NTPsec).
pub fn write_ntp_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} {}", k.id, k.kind.ntp_keys_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// Keys other than SHA-256: NTPsec truncates digests longer than 20 bytes (its SHA256 MAC
/// is not chrony's), so ntp.keys files for NTPsec hold only SHA1 and AES keys.
pub fn ntpsec_compatible(keys: &[TestKey]) -> Vec<TestKey> {
    keys.iter()
        .copied()
        .filter(|k| k.kind != KeyType::Sha256)
        .collect()
}

/// The shared test keys in both formats, good and wrong, in a private tempdir.
pub struct TestKeys {
    /// chrony format, all three keys.
    pub chrony: PathBuf,
    /// chrony format, same ids/types, different secrets.
    pub chrony_wrong: PathBuf,
    /// ntp.keys format, SHA1 (3) and AES (2) only.
    pub ntp: PathBuf,
    /// ntp.keys format, same ids/types, different secrets.
    pub ntp_wrong: PathBuf,
    _dir: TempDir,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let dir = tempdir("keys");
        let p = |n: &str| dir.path().join(n);
        let keys = TestKeys {
            chrony: p("chrony.keys"),
            chrony_wrong: p("chrony-wrong.keys"),
            ntp: p("ntp.keys"),
            ntp_wrong: p("ntp-wrong.keys"),
            _dir: dir,
        };
        write_chrony_keys(&keys.chrony, &GOOD_KEYS);
        write_chrony_keys(&keys.chrony_wrong, &WRONG_KEYS);
        write_ntp_keys(&keys.ntp, &ntpsec_compatible(&GOOD_KEYS));
        write_ntp_keys(&keys.ntp_wrong, &ntpsec_compatible(&WRONG_KEYS));
        keys
    }
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// Test directories live here: owned by root (when the tests run as root) and writable
/// by nobody else, so that a test's own directory can serve as `ntimed run`'s state
/// directory, whose parent must be root's alone.
pub const TEST_ROOT: &str = "/tmp/ntimed-tests";

/// A fresh directory under [`TEST_ROOT`], mode 0755 (the engine's user must be able to
/// enter its jail).
pub fn tempdir(what: &str) -> TempDir {
    fs::create_dir_all(TEST_ROOT).expect("create the tests' root directory");
    let dir = tempfile::Builder::new()
        .prefix(&format!("ntimed-interop-{what}-"))
        .tempdir_in(TEST_ROOT)
        .expect("create tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

/// Added to every configuration `ntimed run` gets in the tests: started as root (as in
/// CI), ntimed separates privileges; its engine and clock process run as `nobody`,
/// jailed in the directory holding the configuration. Ignored without root.
pub const SANDBOX_TOML: &str = "\n[sandbox]\nuser = \"nobody\"\nstate-dir = \".\"\n";

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

/// `ntimed run --config CONF` under [`safe_command`], with [`SANDBOX_TOML`] appended to
/// CONF unless it has a `[sandbox]` of its own.
pub fn ntimed_run(netns: Option<&NetNs>, conf: &Path) -> Command {
    let text = fs::read_to_string(conf).expect("read the config");
    if !text.contains("[sandbox]") {
        fs::write(conf, text + SANDBOX_TOML).expect("write the config");
    }
    let mut cmd = safe_command(netns, ntimed_bin());
    cmd.arg("run").arg("--config").arg(conf);
    cmd
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// `[ip netns exec NS] setpriv --pdeathsig KILL --bounding-set -sys_time -- PROGRAM`.
/// `ip netns exec` and `setpriv` both exec, so the child's pid is PROGRAM's.
pub fn safe_command(netns: Option<&NetNs>, program: &str) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), "setpriv"]);
            c
        }
        None => Command::new("setpriv"),
    };
    cmd.args(["--pdeathsig", "KILL", "--bounding-set", "-sys_time", "--"])
        .arg(program);
    cmd
}

fn with_ntpsec_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LD_LIBRARY_PATH", NTPSEC_LD_LIBRARY_PATH)
        .env("PYTHONPATH", NTPSEC_PYTHONPATH)
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

/// Is some socket bound to UDP `port` (in the namespace, if given)?
pub fn udp_port_bound(netns: Option<&NetNs>, port: u16) -> bool {
    ss_finds(netns, "-Hlun", port)
}

/// Is some socket listening on TCP `port` (in the namespace, if given)?
pub fn tcp_port_listening(netns: Option<&NetNs>, port: u16) -> bool {
    ss_finds(netns, "-Hltn", port)
}

/// Whether `ss FLAGS sport = :PORT` lists any socket.
fn ss_finds(netns: Option<&NetNs>, flags: &str, port: u16) -> bool {
    let mut cmd = match netns {
        Some(ns) => ns.command("ss"),
        None => Command::new("ss"),
    };
    cmd.args([flags, &format!("sport = :{port}")]);
    match run_with_deadline(cmd, Duration::from_secs(5)) {
        Ok(o) => o.status.success() && !o.stdout.trim().is_empty(),
        Err(_) => false,
    }
}

/// Minimal unauthenticated SNTP request on the host's loopback: returns (leap, stratum) of a
/// valid mode-4 answer that echoes our transmit timestamp.
pub fn sntp_probe(addr: SocketAddr, timeout: Duration) -> Option<(u8, u8)> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut req = [0u8; 48];
    req[0] = 0x23; // LI 0, VN 4, mode 3
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let xmt = (nanos as u64) | 1;
    req[40..48].copy_from_slice(&xmt.to_be_bytes());
    sock.send_to(&req, addr).ok()?;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if from == addr && n >= 48 && buf[0] & 7 == 4 && buf[24..32] == req[40..48] {
            return Some((buf[0] >> 6, buf[1]));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

const NETNS_PREFIX: &str = "ntimed-t-";

/// A private network namespace with `lo` up; deleted on Drop. Drop every process running in
/// it first (the server structs below do that by field order).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        remove_stale_netns();
        let name = format!("{NETNS_PREFIX}{}", unique_suffix());
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        let ns = NetNs { name };
        let mut up = ns.command("ip");
        up.args(["link", "set", "lo", "up"]);
        match run_with_deadline(up, Duration::from_secs(10)) {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip link set lo up in {}: {}", ns.name, o.describe()),
            Err(e) => panic!("ip link set lo up in {}: {e}", ns.name),
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program` (no privilege dropping: use [`safe_command`] for
    /// anything NTP-related).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
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

impl Drop for NetNs {
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

// ---------------------------------------------------------------------------
// chrony
// ---------------------------------------------------------------------------

/// `chronyd -x -d` serving time on 127.0.0.1:port as `local stratum 1`, with a keyfile.
pub struct ChronyServer {
    daemon: Daemon,
    port: u16,
    dir: TempDir,
}

impl ChronyServer {
    /// Starts the server and waits until it answers a plain SNTP request with a
    /// synchronised reply.
    pub fn start(keyfile: &Path) -> ChronyServer {
        let dir = tempdir("chronyd");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "port {port}\n\
             bindaddress 127.0.0.1\n\
             keyfile {keyfile}\n\
             local stratum 1\n\
             allow 127.0.0.1\n\
             cmdport 0\n\
             bindcmdaddress /\n\
             pidfile {d}/chronyd.pid\n\
             driftfile {d}/drift\n",
            keyfile = keyfile.display(),
        );
        let conf_path = dir.path().join("chronyd.conf");
        fs::write(&conf_path, conf).expect("write chronyd.conf");
        let mut cmd = safe_command(None, CHRONYD);
        cmd.args(["-x", "-d", "-u", "root", "-L", "0", "-f"])
            .arg(&conf_path);
        let daemon = Daemon::spawn("chronyd server", cmd, dir.path().join("chronyd.log"));
        let mut server = ChronyServer { daemon, port, dir };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ready = wait_until(Duration::from_secs(15), || {
            server.daemon.assert_running();
            matches!(sntp_probe(addr, Duration::from_millis(300)),
                     Some((leap, stratum)) if leap != 3 && (1..16).contains(&stratum))
        });
        assert!(
            ready,
            "chronyd server on port {port} never answered; log:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// `chronyd -Q` one-shot measurement against 127.0.0.1:`port` with `key_id` from the
/// chrony-format `keyfile`. Returns chrony's offset (seconds, "System clock wrong by").
pub fn chrony_query(port: u16, key_id: Option<u32>, keyfile: &Path) -> Result<f64, String> {
    chrony_query_with(None, port, key_id, keyfile, 10)
}

/// Like [`chrony_query`], optionally inside a network namespace, with chronyd's `-t`
/// timeout in seconds (keep it short, e.g. 3, when no valid answer is expected: four
/// samples normally take ~0.3 s with the fast polling used here).
pub fn chrony_query_with(
    netns: Option<&NetNs>,
    port: u16,
    key_id: Option<u32>,
    keyfile: &Path,
    timeout_secs: u32,
) -> Result<f64, String> {
    let key = key_id.map(|k| format!(" key {k}")).unwrap_or_default();
    // minpoll/maxpoll -4: a sample every 1/16 s instead of iburst's 2 s spacing.
    let conf = format!(
        "server 127.0.0.1 port {port}{key} minpoll -4 maxpoll -4 iburst maxsamples 4\n\
         keyfile {keyfile}\n",
        keyfile = keyfile.display(),
    );
    chronyd_q(netns, &conf, timeout_secs).map(|q| q.offset)
}

// ---------------------------------------------------------------------------
// NTPsec
// ---------------------------------------------------------------------------

/// NTPsec's ntpd in its own network namespace on 127.0.0.1:123 (orphan mode, stratum 5).
///
/// NTPsec's built-in `restrict default` has `limited` (rate limiting: after a few quick
/// chronyd -Q runs ntpd silently drops 127.0.0.1's requests) and `noquery`; the test
/// configuration turns both off with `unrestrict default noquery limited`.
pub struct NtpsecServer {
    // Field order matters: the daemon is killed before the namespace is deleted.
    daemon: Daemon,
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
        assert!(conf.contains("disable ntp"));
        let conf_path = dir.path().join("ntp.conf");
        fs::write(&conf_path, conf).expect("write ntp.conf");
        let mut cmd = safe_command(Some(&netns), NTPD);
        with_ntpsec_env(&mut cmd)
            .args(["-n", "-c"])
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path().join("ntpd.pid"));
        let daemon = Daemon::spawn("ntpd", cmd, dir.path().join("ntpd.out"));
        let mut server = NtpsecServer { daemon, netns, dir };
        let ready = {
            let NtpsecServer { daemon, netns, .. } = &mut server;
            wait_until(Duration::from_secs(20), || {
                daemon.assert_running();
                ntpdig_with(netns, None, None, 1, 1).is_ok()
            })
        };
        assert!(ready, "ntpd never served time; log:\n{}", server.log());
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn log(&self) -> String {
        let file = fs::read_to_string(self.dir.path().join("ntpd.log")).unwrap_or_default();
        format!("{}{}", self.daemon.log(), file)
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

// ---------------------------------------------------------------------------
// ntimed
// ---------------------------------------------------------------------------

pub fn ntimed_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ntimed")
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

/// `ntimed run --config FILE` as a local stratum-1 server; killed on Drop.
pub struct NtimedServer {
    // Field order matters: the daemon is killed before the namespace is deleted.
    daemon: Daemon,
    netns: Option<NetNs>,
    listen: SocketAddr,
    dir: TempDir,
}

impl NtimedServer {
    /// On the host's loopback, on a fresh port.
    pub fn start(keys_file: Option<&Path>) -> NtimedServer {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_with(None, addr, keys_file, "")
    }

    /// In a new network namespace on 127.0.0.1:123 (for ntpdig, which has no port option).
    pub fn start_in_netns(keys_file: Option<&Path>) -> NtimedServer {
        let ns = NetNs::new();
        Self::start_with(Some(ns), ([127, 0, 0, 1], 123).into(), keys_file, "")
    }

    /// General form; `extra_toml` is appended to the generated configuration.
    pub fn start_with(
        netns: Option<NetNs>,
        listen: SocketAddr,
        keys_file: Option<&Path>,
        extra_toml: &str,
    ) -> NtimedServer {
        let dir = tempdir("ntimed");
        let mut conf = String::new();
        if let Some(k) = keys_file {
            let k = k.to_str().expect("UTF-8 key path");
            writeln!(conf, "[keys]\nfile = {}\n", toml_string(k)).expect("write to String");
        }
        writeln!(
            conf,
            "[local]\nstratum = 1\n\n[[server]]\nlisten = {}\n",
            toml_string(&listen.to_string())
        )
        .expect("write to String");
        conf.push_str(extra_toml);
        let conf_path = dir.path().join("ntimed.toml");
        fs::write(&conf_path, &conf).expect("write ntimed.toml");
        let cmd = ntimed_run(netns.as_ref(), &conf_path);
        let daemon = Daemon::spawn("ntimed run", cmd, dir.path().join("ntimed.log"));
        let mut server = NtimedServer {
            daemon,
            netns,
            listen,
            dir,
        };
        let ready = {
            let NtimedServer { daemon, netns, .. } = &mut server;
            wait_until(Duration::from_secs(15), || {
                daemon.assert_running();
                udp_port_bound(netns.as_ref(), listen.port())
            })
        };
        assert!(
            ready,
            "ntimed run never bound {listen}; config:\n{conf}\nlog:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }
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
    let mut cmd = safe_command(args.netns, ntimed_bin());
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

// ---------------------------------------------------------------------------
// NTS (RFC 8915): certificates, `ntimed run` with NTS, chrony's NTS server and client,
// `ntimed ke --export`, and hand-made NTS NTP packets
// ---------------------------------------------------------------------------

/// The test PKI in certs/ (see certs/README.md).
pub fn certs_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A private copy of certs/ with every `*.key` chmod 0600 (git checks them out 0644,
/// which ntimed rightly refuses).
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = tempdir("certs");
        let src = certs_source_dir();
        let entries =
            fs::read_dir(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".pem") || name.ends_with(".key")) {
                continue;
            }
            let to = dir.path().join(&name);
            fs::copy(e.path(), &to).unwrap_or_else(|err| panic!("copy {name}: {err}"));
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|err| panic!("chmod {name}: {err}"));
        }
        TestCerts { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` (e.g. "srv-chain.pem") inside the private copy.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(p.exists(), "{} is not in certs/", p.display());
        p
    }

    /// The test CA every client trusts.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
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

/// `ntimed run --config FILE` with a configuration given as TOML text (NTS servers,
/// KE-only and NTP-only hosts); killed on Drop, and restartable with the same files.
pub struct NtimedRun {
    // Field order matters: the daemon is killed before the namespace is deleted.
    daemon: Option<Daemon>,
    netns: Option<NetNs>,
    conf_path: PathBuf,
    /// UDP port `[[server]]` listens on, if any (readiness check).
    ntp_port: Option<u16>,
    /// TCP port `[[nts-ke-server]]` listens on, if any (readiness check).
    ke_port: Option<u16>,
    starts: u32,
    dir: TempDir,
}

impl NtimedRun {
    /// Writes `toml` to ntimed.toml in a new tempdir (relative paths in it are relative to
    /// that directory: see [`NtimedRun::dir`]), starts `ntimed run` and waits until the
    /// given ports are bound.
    pub fn start(
        netns: Option<NetNs>,
        toml: &str,
        ntp_port: Option<u16>,
        ke_port: Option<u16>,
    ) -> NtimedRun {
        Self::start_in(tempdir("ntimed-nts"), netns, toml, ntp_port, ke_port)
    }

    /// Like [`NtimedRun::start`], in a directory the caller prepared (e.g. with files the
    /// configuration names relative to it).
    pub fn start_in(
        dir: TempDir,
        netns: Option<NetNs>,
        toml: &str,
        ntp_port: Option<u16>,
        ke_port: Option<u16>,
    ) -> NtimedRun {
        let conf_path = dir.path().join("ntimed.toml");
        fs::write(&conf_path, toml).expect("write ntimed.toml");
        let mut run = NtimedRun {
            daemon: None,
            netns,
            conf_path,
            ntp_port,
            ke_port,
            starts: 0,
            dir,
        };
        run.restart();
        run
    }

    /// Stops the daemon (SIGKILL: nothing is saved on the way out).
    pub fn stop(&mut self) {
        self.daemon = None;
    }

    /// Stops the daemon if it runs, starts it again with the same configuration and
    /// files, and waits until it serves.
    pub fn restart(&mut self) {
        self.stop();
        self.starts += 1;
        let cmd = ntimed_run(self.netns.as_ref(), &self.conf_path);
        let log = self.dir.path().join(format!("ntimed-{}.log", self.starts));
        let mut daemon = Daemon::spawn("ntimed run (NTS)", cmd, log);
        let (netns, ntp, ke) = (self.netns.as_ref(), self.ntp_port, self.ke_port);
        let ready = wait_until(Duration::from_secs(15), || {
            daemon.assert_running();
            ntp.is_none_or(|p| udp_port_bound(netns, p))
                && ke.is_none_or(|p| tcp_port_listening(netns, p))
        });
        assert!(
            ready,
            "ntimed run never bound NTP {ntp:?} / NTS-KE {ke:?}; config:\n{}\nlog:\n{}",
            fs::read_to_string(&self.conf_path).unwrap_or_default(),
            daemon.log()
        );
        daemon.assert_cannot_set_clock();
        self.daemon = Some(daemon);
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("ntimed run is running").pid()
    }

    /// Panics (with the log) if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.assert_running();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

/// A path as a TOML string.
pub fn toml_path(path: &Path) -> String {
    toml_string(path.to_str().expect("UTF-8 path"))
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
        chain = toml_string(certs.path("srv-chain.pem").to_str().expect("UTF-8 path")),
        key = toml_string(certs.path("srv.key").to_str().expect("UTF-8 path")),
        dir = toml_string(key_dir.to_str().expect("UTF-8 path")),
    )
}

/// [`nts_server_toml`] started on fresh loopback ports, cookie keys in `<dir>/state`.
pub struct NtsNtimed {
    pub run: NtimedRun,
    pub ntp_port: u16,
    pub ke_port: u16,
}

impl NtsNtimed {
    pub fn start(certs: &TestCerts) -> NtsNtimed {
        let (ntp_port, ke_port) = (free_port(), free_port());
        let dir = tempdir("ntimed-nts");
        let toml = nts_server_toml(certs, ntp_port, ke_port, &dir.path().join("state"));
        let run = NtimedRun::start_in(dir, None, &toml, Some(ntp_port), Some(ke_port));
        NtsNtimed {
            run,
            ntp_port,
            ke_port,
        }
    }

    pub fn ntp_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.ntp_port).into()
    }

    /// `localhost:KEPORT`, the name the certificate carries.
    pub fn ke_server(&self) -> String {
        format!("localhost:{}", self.ke_port)
    }
}

/// `chronyd -x -d` as an NTS server (`local stratum 1`) on 127.0.0.1, NTP on `ntp_port`,
/// NTS-KE on `ke_port`, with srv-chain.pem / srv.key; `ntsprocesses 0` keeps NTS-KE in
/// the one process the Drop guard kills.
pub struct ChronyNtsServer {
    daemon: Daemon,
    pub ntp_port: u16,
    pub ke_port: u16,
    dir: TempDir,
}

impl ChronyNtsServer {
    pub fn start(certs: &TestCerts) -> ChronyNtsServer {
        let dir = tempdir("chronyd-nts");
        let (ntp_port, ke_port) = (free_port(), free_port());
        let d = dir.path().display();
        fs::create_dir(dir.path().join("dump")).expect("mkdir dump");
        let conf = format!(
            "port {ntp_port}\n\
             ntsport {ke_port}\n\
             bindaddress 127.0.0.1\n\
             ntsservercert {chain}\n\
             ntsserverkey {key}\n\
             ntsdumpdir {d}/dump\n\
             ntsprocesses 0\n\
             local stratum 1\n\
             allow 127.0.0.1\n\
             cmdport 0\n\
             bindcmdaddress /\n\
             pidfile {d}/chronyd.pid\n\
             driftfile {d}/drift\n",
            chain = certs.path("srv-chain.pem").display(),
            key = certs.path("srv.key").display(),
        );
        let conf_path = dir.path().join("chronyd.conf");
        fs::write(&conf_path, &conf).expect("write chronyd.conf");
        let mut cmd = safe_command(None, CHRONYD);
        cmd.args(["-x", "-d", "-u", "root", "-L", "0", "-f"])
            .arg(&conf_path);
        let daemon = Daemon::spawn("chronyd NTS server", cmd, dir.path().join("chronyd.log"));
        let mut server = ChronyNtsServer {
            daemon,
            ntp_port,
            ke_port,
            dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], ntp_port).into();
        let ready = wait_until(Duration::from_secs(15), || {
            server.daemon.assert_running();
            tcp_port_listening(None, ke_port)
                && matches!(sntp_probe(addr, Duration::from_millis(300)),
                            Some((leap, stratum)) if leap != 3 && (1..16).contains(&stratum))
        });
        assert!(
            ready,
            "chronyd NTS server (NTP {ntp_port}, NTS-KE {ke_port}) never served; config:\n{conf}\nlog:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What a `chronyd -Q` run measured.
#[derive(Debug)]
pub struct ChronyQ {
    /// "System clock wrong by X seconds": positive when the server is ahead of us.
    pub offset: f64,
    pub output: String,
}

/// `chronyd -Q -t TIMEOUT -f FILE` with the given configuration (pidfile, cmdport 0 and
/// bindcmdaddress / are added); Err with the output when it measured nothing.
pub fn chronyd_q(netns: Option<&NetNs>, conf: &str, timeout_secs: u32) -> Result<ChronyQ, String> {
    let dir = tempdir("chronyq-nts");
    let conf = format!(
        "{conf}cmdport 0\nbindcmdaddress /\npidfile {}/client.pid\n",
        dir.path().display()
    );
    let conf_path = dir.path().join("client.conf");
    fs::write(&conf_path, &conf).map_err(|e| format!("write client.conf: {e}"))?;
    let mut cmd = safe_command(netns, CHRONYD);
    cmd.args(["-u", "root", "-Q", "-t", &timeout_secs.to_string(), "-f"])
        .arg(&conf_path);
    let out = run_with_deadline(cmd, Duration::from_secs(u64::from(timeout_secs) + 10))?;
    let all = format!("{}{}", out.stdout, out.stderr);
    for line in all.lines() {
        if let Some(rest) = line.split("System clock wrong by ").nth(1) {
            let num = rest.split_whitespace().next().unwrap_or("");
            let offset = num
                .parse::<f64>()
                .map_err(|e| format!("cannot parse chronyd offset {num:?}: {e}\n{all}"))?;
            return Ok(ChronyQ {
                offset,
                output: all,
            });
        }
    }
    let reason = if all.contains("No suitable source") {
        "no suitable source"
    } else if all.contains("Timeout reached") {
        "timeout reached"
    } else {
        "no measurement"
    };
    Err(format!(
        "chronyd -Q: {reason} (config:\n{conf}){}",
        out.describe()
    ))
}

/// `chronyd -Q` as an NTS client: `server HOST port NTP nts ntsport KE` trusting `ca`,
/// four samples 1/16 s apart.
pub fn chrony_nts_query(
    netns: Option<&NetNs>,
    host: &str,
    ntp_port: u16,
    ke_port: u16,
    ca: &Path,
    timeout_secs: u32,
) -> Result<ChronyQ, String> {
    let conf = format!(
        "server {host} port {ntp_port} nts ntsport {ke_port} iburst maxsamples 4 minpoll -4 maxpoll -4\n\
         ntstrustedcerts {}\n",
        ca.display()
    );
    chronyd_q(netns, &conf, timeout_secs)
}

/// Runs `ntimed ke SERVER [--ca CA] [--export]` (in `netns`, if given).
pub fn ntimed_ke(
    netns: Option<&NetNs>,
    server: &str,
    ca: Option<&Path>,
    export: bool,
) -> Result<RunOutput, String> {
    let mut cmd = safe_command(netns, ntimed_bin());
    cmd.arg("ke").arg(server);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    if export {
        cmd.arg("--export");
    }
    run_with_deadline(cmd, Duration::from_secs(20))
}

/// What `ntimed ke --export` printed.
#[derive(Debug, Clone)]
pub struct KeExport {
    pub aead_id: u16,
    pub ntp_host: String,
    pub ntp_port: u16,
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
    pub cookies: Vec<Vec<u8>>,
}

fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex {s:?}"))
        })
        .collect()
}

/// `ntimed ke --export` parsed. Its output looks like
/// ```text
/// NTS-KE with localhost:24460
///   AEAD        AES-SIV-CMAC-256 (15)
///   NTP server  localhost:21123
///   cookies     8 of 104 bytes
///   C2S key     59c0…
///   S2C key     35b7…
///   cookie 0    0000512a…
/// ```
pub fn ntimed_ke_export(
    netns: Option<&NetNs>,
    server: &str,
    ca: Option<&Path>,
) -> Result<KeExport, String> {
    let out = ntimed_ke(netns, server, ca, true)?;
    if !out.status.success() {
        return Err(format!("ntimed ke --export failed: {}", out.describe()));
    }
    let bad = |what: &str| format!("ntimed ke --export: {what}: {}", out.describe());
    let mut export = KeExport {
        aead_id: 0,
        ntp_host: String::new(),
        ntp_port: 0,
        c2s: vec![],
        s2c: vec![],
        cookies: vec![],
    };
    for line in out.stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("AEAD") {
            let id = rest
                .rsplit_once('(')
                .and_then(|(_, id)| id.strip_suffix(')'))
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| bad("AEAD line"))?;
            export.aead_id = id;
        } else if let Some(rest) = line.strip_prefix("NTP server") {
            let (host, port) = rest
                .trim()
                .rsplit_once(':')
                .ok_or_else(|| bad("NTP server line"))?;
            export.ntp_host = host.trim_matches(['[', ']']).to_string();
            export.ntp_port = port.parse().map_err(|_| bad("NTP port"))?;
        } else if let Some(rest) = line.strip_prefix("C2S key") {
            export.c2s = from_hex(rest.trim()).map_err(|e| bad(&e))?;
        } else if let Some(rest) = line.strip_prefix("S2C key") {
            export.s2c = from_hex(rest.trim()).map_err(|e| bad(&e))?;
        } else if let Some(rest) = line.strip_prefix("cookie ") {
            let hex = rest
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| bad("cookie"))?;
            export.cookies.push(from_hex(hex).map_err(|e| bad(&e))?);
        }
    }
    if export.aead_id == 0 || export.c2s.is_empty() || export.s2c.is_empty() {
        return Err(bad("no AEAD or keys"));
    }
    Ok(export)
}

impl KeExport {
    pub fn algorithm(&self) -> ntimed::auth::nts::aead::AeadAlgorithm {
        ntimed::auth::nts::aead::AeadAlgorithm::from_id(self.aead_id)
            .unwrap_or_else(|| panic!("unknown AEAD {}", self.aead_id))
    }

    pub fn c2s_key(&self) -> ntimed::auth::nts::aead::AeadKey {
        ntimed::auth::nts::aead::AeadKey::new(self.algorithm(), &self.c2s).expect("C2S key")
    }

    pub fn s2c_key(&self) -> ntimed::auth::nts::aead::AeadKey {
        ntimed::auth::nts::aead::AeadKey::new(self.algorithm(), &self.s2c).expect("S2C key")
    }

    pub fn session_keys(&self) -> ntimed::auth::nts::cookie::SessionKeys {
        ntimed::auth::nts::cookie::SessionKeys {
            c2s: self.c2s_key(),
            s2c: self.s2c_key(),
        }
    }

    /// An NTS client exchange (ntimed's own) holding these keys and `cookies`.
    pub fn exchange(&self, cookies: Vec<Vec<u8>>) -> ntimed::proto::client::ClientExchange {
        use ntimed::auth::nts::ntp::NtsSession;
        use ntimed::proto::client::{ClientAuth, ClientExchange};
        ClientExchange::new(
            ClientAuth::Nts(NtsSession::new(self.session_keys(), cookies)),
            4,
        )
    }
}

/// How a server answered one NTS request made by [`nts_exchange`].
#[derive(Debug)]
pub enum NtsOutcome {
    /// Authenticated (NTS) sample.
    Sample(ntimed::proto::client::Sample),
    /// A kiss; for NTS, an NTSN echoing our unique id.
    Kiss(ntimed::wire::KissCode),
    NoReply,
    /// A reply ntimed's client refused.
    Rejected(String),
}

/// One request from `exchange` to `server` over UDP, waiting up to `timeout` for an
/// answer ntimed's client accepts.
pub fn nts_exchange(
    exchange: &mut ntimed::proto::client::ClientExchange,
    server: SocketAddr,
    timeout: Duration,
) -> NtsOutcome {
    use ntimed::proto::client::Response;
    use ntimed::wire::NtpTimestamp;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let mut request = Vec::new();
    let sent = NtpTimestamp::from_system_time(SystemTime::now());
    if let Err(e) = exchange.poll_request(sent, &mut rand::rng(), &mut request) {
        return NtsOutcome::Rejected(format!("no request: {e}"));
    }
    sock.send_to(&request, server).expect("send NTS request");
    let deadline = Instant::now() + timeout;
    let mut last_reject = None;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            break;
        };
        if from != server {
            continue;
        }
        let received = NtpTimestamp::from_system_time(SystemTime::now());
        match exchange.handle_response(&buf[..n], received) {
            Ok(Response::Sample(s)) => return NtsOutcome::Sample(s),
            Ok(Response::Kiss(k)) => return NtsOutcome::Kiss(k),
            Err(e) => last_reject = Some(e.to_string()),
        }
    }
    match last_reject {
        Some(e) => NtsOutcome::Rejected(e),
        None => NtsOutcome::NoReply,
    }
}

// Hand-made NTS extension fields (RFC 8915 §5.3-5.6), written here independently of
// ntimed's encoder so that malformed variants can be built.

pub const EF_UNIQUE_ID: u16 = 0x0104;
pub const EF_COOKIE: u16 = 0x0204;
pub const EF_COOKIE_PLACEHOLDER: u16 = 0x0304;
pub const EF_AUTHENTICATOR: u16 = 0x0404;

/// A 48-byte NTPv4 client (mode 3) header with `transmit` in the transmit field.
pub fn ntp_client_header(transmit: u64) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = 0x23; // LI 0, VN 4, mode 3
    h[2] = 4; // poll
    h[3] = 0xec; // precision -20
    h[40..48].copy_from_slice(&transmit.to_be_bytes());
    h
}

/// Appends an extension field: type, length, `body` zero-padded to a multiple of 4 and
/// to the 16-byte minimum field size.
pub fn push_ef(out: &mut Vec<u8>, field_type: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4).max(3) * 4;
    out.extend_from_slice(&field_type.to_be_bytes());
    out.extend_from_slice(&u16::try_from(4 + padded).expect("field fits").to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// Appends an authenticator sealing `plaintext` under `key` with a random nonce of
/// `nonce_len` bytes and everything already in `packet` as associated data.
pub fn push_authenticator(
    packet: &mut Vec<u8>,
    key: &ntimed::auth::nts::aead::AeadKey,
    nonce_len: usize,
    plaintext: &[u8],
) {
    let nonce: Vec<u8> = (0..nonce_len).map(|_| rand::random::<u8>()).collect();
    let sealed = key.seal(&nonce, plaintext, packet).expect("seal");
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(nonce.len()).expect("nonce").to_be_bytes());
    body.extend_from_slice(&u16::try_from(sealed.len()).expect("ct").to_be_bytes());
    body.extend_from_slice(&nonce);
    body.resize(4 + nonce.len().div_ceil(4) * 4, 0);
    body.extend_from_slice(&sealed);
    body.resize(body.len().div_ceil(4) * 4, 0);
    push_ef(packet, EF_AUTHENTICATOR, &body);
}

/// The extension fields after the 48-byte header: (type, offset of the field, body with
/// its padding). Stops at anything that is not a well-formed field.
pub fn extension_fields(packet: &[u8]) -> Vec<(u16, usize, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut at = 48;
    while packet.len() >= at + 4 {
        let t = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        if len < 4 || !len.is_multiple_of(4) || at + len > packet.len() {
            break;
        }
        fields.push((t, at, packet[at + 4..at + len].to_vec()));
        at += len;
    }
    fields
}

/// Opens the first authenticator of a reply with `s2c`; returns the plaintext (the
/// encrypted extension fields), or None when absent or not authentic.
pub fn open_authenticator(reply: &[u8], s2c: &ntimed::auth::nts::aead::AeadKey) -> Option<Vec<u8>> {
    let (_, offset, body) = extension_fields(reply)
        .into_iter()
        .find(|(t, _, _)| *t == EF_AUTHENTICATOR)?;
    let nonce_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let ct_len = usize::from(u16::from_be_bytes([*body.get(2)?, *body.get(3)?]));
    let nonce = body.get(4..4 + nonce_len)?;
    let ct_at = 4 + nonce_len.div_ceil(4) * 4;
    let ct = body.get(ct_at..ct_at + ct_len)?;
    s2c.open(nonce, ct, reply.get(..offset)?)
        .map(|p| p.to_vec())
}

/// Sends `request` to `server` from a fresh socket and returns the first datagram that
/// comes back within `timeout`.
pub fn udp_roundtrip(server: SocketAddr, request: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    sock.set_read_timeout(Some(timeout)).expect("set timeout");
    sock.send_to(request, server).expect("send");
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}
